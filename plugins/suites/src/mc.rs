//! What the multiple-choice suites share: the rendered document, lm-eval's prompt assembly, and
//! the scoring of outcomes.

use crate::fewshot::Planned;
use epi_core::backend::ScoringMode;
use epi_core::generative::{GenerativeForm, LetteredQuestion};
use epi_core::metrics::wilson_ci95;
use epi_core::suite::{ItemOutcome, MetricValue, SuiteItem, SuiteScore};
use std::collections::BTreeMap;

/// lm-eval's `target_delimiter`: put between the context and each choice.
pub const TARGET_DELIMITER: &str = " ";

/// lm-eval's `fewshot_delimiter`: put after each few-shot example.
pub const FEWSHOT_DELIMITER: &str = "\n\n";

/// A document as the task template renders it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McDoc {
    /// `doc_to_text`.
    pub text: String,
    /// `doc_to_choice`.
    pub choices: Vec<String>,
    /// `doc_to_target`: the index of the correct choice.
    pub gold: usize,
    /// The document as a generative prompt letters it (its question and choice texts).
    pub lettered: LetteredQuestion,
}

impl McDoc {
    /// A document whose choices are answer texts (ARC, HellaSwag): its generative form is its text,
    /// less a trailing `\nAnswer:`, over those choices.
    pub fn with_text_choices(text: String, choices: Vec<String>, gold: usize) -> McDoc {
        let question = text.strip_suffix("\nAnswer:").unwrap_or(&text).to_string();
        McDoc {
            lettered: LetteredQuestion {
                question,
                choices: choices.clone(),
                gold,
            },
            text,
            choices,
            gold,
        }
    }

    /// The correct choice's text (what a few-shot example shows after the delimiter).
    pub fn target(&self) -> &str {
        self.choices
            .get(self.gold)
            .map(String::as_str)
            .unwrap_or("")
    }
}

/// lm-eval's plain-text context: the description, then for each example
/// `text + " " + target + "\n\n"`, then the document's text.
pub fn render_context<'a>(
    description: &str,
    shots: impl IntoIterator<Item = &'a McDoc>,
    doc: &McDoc,
) -> String {
    let mut out = String::from(description);
    for s in shots {
        out.push_str(&s.text);
        out.push_str(TARGET_DELIMITER);
        out.push_str(s.target());
        out.push_str(FEWSHOT_DELIMITER);
    }
    out.push_str(&doc.text);
    out
}

/// How many outcomes failed and how many were unparseable.
pub fn count_problems(outcomes: &[ItemOutcome]) -> (usize, usize) {
    (
        outcomes.iter().filter(|o| o.failed).count(),
        outcomes.iter().filter(|o| o.unparseable).count(),
    )
}

/// 1 when the outcome's prediction (`acc`) or normalised prediction (`acc_norm`) is the gold
/// answer, else 0. Failed and unparseable items, and items without a gold answer, are wrong.
pub fn correct(o: &ItemOutcome, normalised: bool) -> f64 {
    if o.failed || o.unparseable {
        return 0.0;
    }
    let p = if normalised {
        o.prediction_norm
    } else {
        o.prediction
    };
    match (p, o.gold) {
        (Some(p), Some(g)) if p == g => 1.0,
        _ => 0.0,
    }
}

/// The share of correct items (`values` are 0 or 1) with its 95 % Wilson score interval (it does
/// not collapse at 0 or all correct, as a bootstrap does); `None` for no values.
pub fn mean_metric(values: &[f64], label: String) -> Option<MetricValue> {
    if values.is_empty() {
        return None;
    }
    let value = values.iter().sum::<f64>() / values.len() as f64;
    let ci95 = Some(wilson_ci95(value, values.len() as f64));
    Some(MetricValue {
        value,
        ci95,
        label: format!("{label}; 95 % Wilson score interval"),
    })
}

/// The names and labels of `acc` and, in log-likelihood mode, `acc_norm` for a suite whose
/// Leaderboard v1 metric is `acc_norm` (ARC, HellaSwag), and the headline metric.
pub fn acc_and_norm(
    outcomes: &[ItemOutcome],
    mode: ScoringMode,
) -> (std::collections::BTreeMap<String, MetricValue>, String) {
    let mut metrics = std::collections::BTreeMap::new();
    let acc: Vec<f64> = outcomes.iter().map(|o| correct(o, false)).collect();
    let acc_label = match mode {
        ScoringMode::Loglikelihood => "accuracy: argmax of summed log-likelihood (lm-eval acc)",
        ScoringMode::Generative => {
            "accuracy of generated letter answers (generative; not comparable with lm-eval)"
        }
    };
    if let Some(m) = mean_metric(&acc, acc_label.to_string()) {
        metrics.insert("acc".to_string(), m);
    }
    let headline = match mode {
        ScoringMode::Loglikelihood => {
            let norm: Vec<f64> = outcomes.iter().map(|o| correct(o, true)).collect();
            if let Some(m) = mean_metric(
                &norm,
                "accuracy: argmax of log-likelihood per character (lm-eval acc_norm; Open LLM Leaderboard v1)"
                    .to_string(),
            ) {
                metrics.insert("acc_norm".to_string(), m);
            }
            "acc_norm"
        }
        ScoringMode::Generative => "acc",
    };
    (metrics, headline.to_string())
}

/// The generative form of a document asked after `shots` (the same examples, in the same order,
/// as its log-likelihood context), below `description`.
pub fn generative_form<'a>(
    description: &str,
    shots: impl IntoIterator<Item = &'a McDoc>,
    doc: &McDoc,
) -> GenerativeForm {
    GenerativeForm {
        description: description.to_string(),
        examples: shots.into_iter().map(|s| s.lettered.clone()).collect(),
        question: doc.lettered.clone(),
    }
}

/// The items of a planned run: each evaluated document (`docs[p.doc]`, id `{split}/{index}`) with
/// its examples from `pool` rendered into lm-eval's context (no description), and into its
/// generative form below `generative_description`.
pub fn items_from_plan(
    suite: &str,
    split: &str,
    planned: Vec<Planned>,
    docs: &[McDoc],
    pool: &[McDoc],
    generative_description: &str,
) -> Vec<SuiteItem> {
    planned
        .into_iter()
        .map(|p| {
            let doc = &docs[p.doc];
            let shots = || p.shots.iter().map(|&i| &pool[i]);
            SuiteItem {
                suite: suite.to_string(),
                doc_id: format!("{split}/{}", p.doc),
                subject: None,
                context: render_context("", shots(), doc),
                question: doc.text.clone(),
                choices: doc.choices.clone(),
                target_delimiter: TARGET_DELIMITER.to_string(),
                gold: Some(doc.gold),
                generative: Some(generative_form(generative_description, shots(), doc)),
            }
        })
        .collect()
}

/// The score of a suite reported as `acc` and `acc_norm` (no subject groups).
pub fn acc_and_norm_score(
    suite: &str,
    benchmark_key: String,
    outcomes: &[ItemOutcome],
    mode: ScoringMode,
) -> SuiteScore {
    let (n_failed, n_unparseable) = count_problems(outcomes);
    let (metrics, headline) = acc_and_norm(outcomes, mode);
    SuiteScore {
        suite: suite.to_string(),
        benchmark_key,
        mode,
        n_items: outcomes.len(),
        n_failed,
        n_unparseable,
        metrics,
        headline,
        groups: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_is_description_examples_then_question() {
        let shot = McDoc::with_text_choices("Q1\nAnswer:".into(), vec!["x".into(), "y".into()], 1);
        let doc = McDoc::with_text_choices("Q2\nAnswer:".into(), vec!["a".into()], 0);
        assert_eq!(
            render_context("D\n\n", [&shot, &shot], &doc),
            "D\n\nQ1\nAnswer: y\n\nQ1\nAnswer: y\n\nQ2\nAnswer:"
        );
        assert_eq!(render_context("", [], &doc), "Q2\nAnswer:");
    }

    #[test]
    fn the_generative_form_has_the_same_examples_with_their_letters() {
        let shot = McDoc::with_text_choices(
            "Question: Q1\nAnswer:".into(),
            vec!["x".into(), "y".into()],
            1,
        );
        let doc = McDoc::with_text_choices(
            "Question: Q2\nAnswer:".into(),
            vec!["a".into(), "b".into()],
            0,
        );
        let form = generative_form("D\n\n", [&shot, &shot], &doc);
        assert_eq!(
            form.render(),
            "D\n\nQuestion: Q1\nA. x\nB. y\nAnswer: B\n\nQuestion: Q1\nA. x\nB. y\nAnswer: B\n\n\
             Question: Q2\nA. a\nB. b\nAnswer:"
        );
    }
}
