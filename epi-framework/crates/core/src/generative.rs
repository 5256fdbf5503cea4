//! Generative multiple-choice prompts: how a question and its few-shot examples are put to a
//! server that can only generate text (no log-probabilities, e.g. distributed-llama), so that the
//! answer is a letter the strict parser (`epi_run::eval::parse_answer`) reads.
//!
//! A suite gives each item a [`GenerativeForm`]: a description, the **same few-shot examples as
//! log-likelihood mode** (the suites' few-shot planning) and the question, each as a
//! [`LetteredQuestion`] (its text, its choice texts, its gold index). [`GenerativeForm::render`]
//! writes lm-evaluation-harness's generative MMLU format (`mmlu_*_generative`, `generate_until`):
//!
//! ```text
//! <description>
//! <example question>
//! A. <choice 0>
//! B. <choice 1>
//! …
//! Answer: <gold letter>
//!
//! … (one block per example)
//! <question>
//! A. <choice 0>
//! …
//! Answer:
//! ```
//!
//! For MMLU this is byte for byte lm-eval's generative prompt (which equals its log-likelihood
//! context, the choices being the letters). The prompt sends exactly `examples.len()` shots:
//! [`shots_sent`] says how many, so a run's label can never claim examples it did not send.
//!
//! An item without a form (one built by hand, not by a suite) falls back to a zero-shot prompt:
//! [`GENERATIVE_INSTRUCTION`], the question, its choices lettered (not when the question already
//! lists them — also when the choices are the letters themselves, as MMLU's are), `Answer:`.
//! Nothing here fails: rendering is total.

use crate::suite::SuiteItem;
use serde::{Deserialize, Serialize};

/// The instruction that starts a zero-shot prompt of an item without a [`GenerativeForm`].
pub const GENERATIVE_INSTRUCTION: &str =
    "Answer the following multiple choice question with the letter of the correct choice only.\n\n";

/// One multiple-choice question as a generative prompt shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LetteredQuestion {
    /// The question without its choices and without `Answer:` (MMLU: the stripped question;
    /// ARC: `Question: <stem>`; HellaSwag: the context to complete).
    pub question: String,
    /// The choice texts, shown as `A. <text>` lines (MMLU: the four answers, not the letters).
    pub choices: Vec<String>,
    /// Index of the correct choice (shown after `Answer:` when the question is an example).
    pub gold: usize,
}

impl LetteredQuestion {
    /// `<question>\nA. <choice 0>\nB. <choice 1>…\nAnswer:`.
    pub fn render(&self) -> String {
        let mut s = self.question.clone();
        for (i, c) in self.choices.iter().enumerate() {
            s.push('\n');
            s.push(choice_letter(i));
            s.push_str(". ");
            s.push_str(c);
        }
        s.push_str("\nAnswer:");
        s
    }

    /// The rendered question followed by its answer, as a few-shot example:
    /// `<render()> <gold letter>\n\n`.
    pub fn render_example(&self) -> String {
        format!("{} {}\n\n", self.render(), choice_letter(self.gold))
    }
}

/// How an item is asked generatively: a description, the few-shot examples, the question.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerativeForm {
    /// Text before the first example (MMLU: `The following are multiple choice questions (with
    /// answers) about <subject>.\n\n`).
    pub description: String,
    /// The few-shot examples, in prompt order (the log-likelihood mode's draws).
    pub examples: Vec<LetteredQuestion>,
    /// The question asked.
    pub question: LetteredQuestion,
}

impl GenerativeForm {
    /// The prompt: description, each example with its answer letter, the question (module
    /// documentation).
    pub fn render(&self) -> String {
        let mut s = self.description.clone();
        for e in &self.examples {
            s.push_str(&e.render_example());
        }
        s.push_str(&self.question.render());
        s
    }
}

/// The generative prompt of an item: its [`GenerativeForm`] rendered, or, for an item without
/// one, the zero-shot fallback (module documentation).
pub fn generative_prompt(item: &SuiteItem) -> String {
    match &item.generative {
        Some(form) => form.render(),
        None => zero_shot_fallback(item),
    }
}

/// How many few-shot examples [`generative_prompt`] sends for `item`.
pub fn shots_sent(item: &SuiteItem) -> usize {
    item.generative.as_ref().map_or(0, |f| f.examples.len())
}

fn zero_shot_fallback(item: &SuiteItem) -> String {
    let mut stem = item.question.trim_end();
    if let Some(s) = stem.strip_suffix("Answer:") {
        stem = s.trim_end();
    }
    // Choices that are their own letters (MMLU's `doc_to_choice`) are listed when the stem has
    // a line for each letter; other choices when the stem has `X. <choice>` for each.
    let letters_only = item
        .choices
        .iter()
        .enumerate()
        .all(|(i, c)| c.len() == 1 && c.starts_with(choice_letter(i)));
    let listed = !item.choices.is_empty()
        && item.choices.iter().enumerate().all(|(i, c)| {
            let letter = choice_letter(i);
            if letters_only {
                stem.starts_with(&format!("{letter}. ")) || stem.contains(&format!("\n{letter}. "))
            } else {
                stem.contains(&format!("{letter}. {c}"))
            }
        });
    let mut p = String::from(GENERATIVE_INSTRUCTION);
    p.push_str(stem);
    if !listed {
        for (i, c) in item.choices.iter().enumerate() {
            p.push_str(&format!("\n{}. {}", choice_letter(i), c));
        }
    }
    p.push_str("\nAnswer:");
    p
}

/// The letter of choice `i` (`A`, `B`, …).
pub fn choice_letter(i: usize) -> char {
    (b'A' + (i % 26) as u8) as char
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(question: &str, choices: &[&str], gold: usize) -> LetteredQuestion {
        LetteredQuestion {
            question: question.into(),
            choices: choices.iter().map(|c| c.to_string()).collect(),
            gold,
        }
    }

    fn item(question: &str, choices: &[&str], form: Option<GenerativeForm>) -> SuiteItem {
        SuiteItem {
            suite: "t".into(),
            doc_id: "test/0".into(),
            subject: None,
            context: question.into(),
            question: question.into(),
            choices: choices.iter().map(|c| c.to_string()).collect(),
            target_delimiter: " ".into(),
            gold: Some(0),
            generative: form,
        }
    }

    #[test]
    fn examples_carry_their_answer_letters_and_the_question_ends_with_answer() {
        let form = GenerativeForm {
            description: "The following are multiple choice questions (with answers) about x.\n\n"
                .into(),
            examples: vec![q("Q1?", &["a", "b"], 1), q("Q2?", &["c", "d", "e"], 2)],
            question: q("Q3?", &["f", "g"], 0),
        };
        assert_eq!(
            form.render(),
            "The following are multiple choice questions (with answers) about x.\n\n\
             Q1?\nA. a\nB. b\nAnswer: B\n\n\
             Q2?\nA. c\nB. d\nC. e\nAnswer: C\n\n\
             Q3?\nA. f\nB. g\nAnswer:"
        );
        let it = item("Q3?", &["f", "g"], Some(form.clone()));
        assert_eq!(generative_prompt(&it), form.render());
        assert_eq!(shots_sent(&it), 2);
        assert!(!generative_prompt(&it).contains(GENERATIVE_INSTRUCTION));
    }

    /// The bug the real engine showed: MMLU's choices are the letters, so `A. A` was appended
    /// under the question that already lists `A. 0 … D. 6`.
    #[test]
    fn mmlu_shaped_items_list_their_choices_once() {
        let question = "Find the degree of Q(sqrt(2)) over Q.\nA. 0\nB. 4\nC. 2\nD. 6\nAnswer:";
        let it = item(question, &["A", "B", "C", "D"], None);
        let p = generative_prompt(&it);
        assert!(!p.contains("A. A"), "{p}");
        assert_eq!(p.matches("\nA. ").count(), 1, "{p}");
        assert!(p.ends_with("D. 6\nAnswer:"), "{p}");
        assert_eq!(shots_sent(&it), 0);
        // Letter choices that the question does not list are still shown.
        let bare = item("Which letter?\nAnswer:", &["A", "B"], None);
        assert!(generative_prompt(&bare).ends_with("Which letter?\nA. A\nB. B\nAnswer:"));
        // Text choices are listed under a question without them, and not twice with them.
        let arc = item("Question: Which gas?\nAnswer:", &["oxygen", "neon"], None);
        assert_eq!(
            generative_prompt(&arc),
            format!("{GENERATIVE_INSTRUCTION}Question: Which gas?\nA. oxygen\nB. neon\nAnswer:")
        );
        let listed = item(
            "Which gas?\nA. oxygen\nB. neon\nAnswer:",
            &["oxygen", "neon"],
            None,
        );
        assert_eq!(generative_prompt(&listed).matches("A. oxygen").count(), 1);
    }

    #[test]
    fn a_form_survives_json_and_old_items_read_without_one() {
        let it = item(
            "Q?",
            &["x", "y"],
            Some(GenerativeForm {
                description: String::new(),
                examples: vec![q("E?", &["p", "q"], 1)],
                question: q("Q?", &["x", "y"], 0),
            }),
        );
        let back: SuiteItem = serde_json::from_str(&serde_json::to_string(&it).unwrap()).unwrap();
        assert_eq!(back, it);
        let mut v = serde_json::to_value(&it).unwrap();
        v.as_object_mut().unwrap().remove("generative");
        let old: SuiteItem = serde_json::from_value(v).unwrap();
        assert_eq!(old.generative, None);
    }
}
