//! The [`Suite`] trait: a benchmark that yields rendered items and aggregates their outcomes.

use crate::backend::ScoringMode;
use crate::generative::GenerativeForm;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One multiple-choice document, rendered exactly as lm-evaluation-harness renders it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuiteItem {
    /// Suite registry key (`mmlu`, `arc-challenge`, `hellaswag`, `prompts`).
    pub suite: String,
    /// Stable id of the document within the suite (`abstract_algebra/test/0`, `test/17`).
    pub doc_id: String,
    /// Sub-task, for grouped suites (MMLU subject).
    pub subject: Option<String>,
    /// The full few-shot context, ending where the continuation starts (`...Answer:`).
    pub context: String,
    /// The question alone (no few-shot examples), for generative prompts.
    pub question: String,
    /// Choice texts, without the target delimiter.
    pub choices: Vec<String>,
    /// The delimiter put before each choice to make a continuation (`" "`).
    pub target_delimiter: String,
    /// Index of the correct choice; `None` for prompt-only suites.
    pub gold: Option<usize>,
    /// How the item is asked in generative mode (the few-shot examples and the question as
    /// lettered questions, [`crate::generative`]); `None` for prompt-only items (and hand-built
    /// items, which then get a zero-shot prompt).
    #[serde(default)]
    pub generative: Option<GenerativeForm>,
}

impl SuiteItem {
    /// The continuations lm-eval scores: `target_delimiter + choice`.
    pub fn continuations(&self) -> Vec<String> {
        self.choices
            .iter()
            .map(|c| format!("{}{}", self.target_delimiter, c))
            .collect()
    }

    /// lm-eval's predictions from the summed log-likelihood of each continuation, given in the
    /// order of `choices`: `(acc, acc_norm)` indices. `acc` is the argmax of the log-likelihoods;
    /// `acc_norm` the argmax of each log-likelihood divided by its choice's length in characters
    /// (Python `len(choice)`, the choice text without the delimiter). Ties go to the first index
    /// (numpy `argmax`). `None` when the number of scores is not the number of choices.
    pub fn loglikelihood_predictions(&self, logprobs: &[f64]) -> Option<(usize, usize)> {
        if logprobs.len() != self.choices.len() {
            return None;
        }
        let normalised: Vec<f64> = logprobs
            .iter()
            .zip(&self.choices)
            .map(|(ll, c)| ll / c.chars().count() as f64)
            .collect();
        Some((argmax_first(logprobs)?, argmax_first(&normalised)?))
    }
}

/// numpy `argmax`: the index of the largest value, the first one on ties; a NaN counts as larger
/// than every number (numpy returns the first NaN). `None` for an empty slice.
pub fn argmax_first(values: &[f64]) -> Option<usize> {
    if let Some(i) = values.iter().position(|v| v.is_nan()) {
        return Some(i);
    }
    let mut best: Option<usize> = None;
    for (i, v) in values.iter().enumerate() {
        if best.is_none_or(|b| *v > values[b]) {
            best = Some(i);
        }
    }
    best
}

/// What happened to one item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemOutcome {
    /// Document id.
    pub doc_id: String,
    /// Sub-task, when any.
    pub subject: Option<String>,
    /// Gold index.
    pub gold: Option<usize>,
    /// Predicted index by summed log-probability (or the parsed generative answer).
    pub prediction: Option<usize>,
    /// Predicted index by log-probability per character (`acc_norm`), loglikelihood mode only.
    pub prediction_norm: Option<usize>,
    /// The query failed (server error after retries); counts as wrong, and is counted.
    pub failed: bool,
    /// A generative answer that the parser could not read; counts as wrong, and is counted.
    pub unparseable: bool,
}

/// A metric value with its 95 % bootstrap interval over items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricValue {
    /// The value.
    pub value: f64,
    /// 95 % interval (low, high), when computed.
    pub ci95: Option<(f64, f64)>,
    /// What the number is (e.g. "unweighted mean of 57 subjects (Open LLM Leaderboard v1)").
    pub label: String,
}

/// A suite's aggregated score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuiteScore {
    /// Suite key.
    pub suite: String,
    /// The key used in benchmark JSON (`mmlu_5shot`).
    pub benchmark_key: String,
    /// Scoring mode of every item.
    pub mode: ScoringMode,
    /// Items scored.
    pub n_items: usize,
    /// Items whose query failed.
    pub n_failed: usize,
    /// Items whose generative answer could not be parsed.
    pub n_unparseable: usize,
    /// Metrics by name (`acc`, `acc_norm`, `acc_weighted`, ...).
    pub metrics: BTreeMap<String, MetricValue>,
    /// The metric that stands for this suite in the composite accuracy.
    pub headline: String,
    /// Per-group metrics (MMLU subjects), by group then metric.
    #[serde(default)]
    pub groups: BTreeMap<String, BTreeMap<String, MetricValue>>,
}

impl SuiteScore {
    /// The headline metric's value.
    pub fn headline_value(&self) -> Option<f64> {
        self.metrics.get(&self.headline).map(|m| m.value)
    }
}

/// Why a suite could not load.
#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    /// Data files are missing; the message says where they were looked for and how to get them.
    #[error("{suite}: data not found: {message}")]
    MissingData {
        /// Suite key.
        suite: String,
        /// Where it looked, what to do.
        message: String,
    },
    /// A data file is malformed.
    #[error(transparent)]
    Input(#[from] crate::error::InputError),
    /// Anything else.
    #[error("{suite}: {message}")]
    Other {
        /// Suite key.
        suite: String,
        /// What went wrong.
        message: String,
    },
}

/// Facts about a suite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuiteInfo {
    /// Registry key.
    pub key: String,
    /// Key used in benchmark JSON (`mmlu_5shot`, `arc_challenge_25shot`, `hellaswag_10shot`).
    pub benchmark_key: String,
    /// Few-shot examples per item.
    pub shots: usize,
    /// Whether the suite has gold answers (prompt files do not).
    pub has_accuracy: bool,
    /// Description of the data used (files, split, version).
    pub data: String,
}

/// A benchmark suite.
pub trait Suite: Send + Sync {
    /// What the suite is.
    fn info(&self) -> SuiteInfo;

    /// The items to run, in lm-eval order (limited if a limit was configured).
    fn items(&self) -> Result<Vec<SuiteItem>, SuiteError>;

    /// Aggregates outcomes into the suite's metrics.
    fn aggregate(&self, outcomes: &[ItemOutcome], mode: ScoringMode) -> SuiteScore;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(choices: &[&str]) -> SuiteItem {
        SuiteItem {
            suite: "t".into(),
            doc_id: "test/0".into(),
            subject: None,
            context: "Question: q\nAnswer:".into(),
            question: "Question: q\nAnswer:".into(),
            choices: choices.iter().map(|c| c.to_string()).collect(),
            target_delimiter: " ".into(),
            gold: Some(0),
            generative: None,
        }
    }

    #[test]
    fn argmax_takes_the_first_of_equal_values_and_nan_wins() {
        assert_eq!(argmax_first(&[-2.0, -1.0, -1.0]), Some(1));
        assert_eq!(argmax_first(&[-1.0, -3.0, -1.0]), Some(0));
        assert_eq!(argmax_first(&[-1.0, f64::NAN, 0.0, f64::NAN]), Some(1));
        assert_eq!(
            argmax_first(&[f64::NEG_INFINITY, f64::NEG_INFINITY]),
            Some(0)
        );
        assert_eq!(argmax_first(&[]), None);
    }

    #[test]
    fn acc_norm_divides_by_characters_not_bytes() {
        let it = item(&["ééé", "abcd"]);
        // by chars: -3.3/3 = -1.1, -4.0/4 = -1.0 -> 1; by bytes: -3.3/6 = -0.55 -> 0
        assert_eq!(it.loglikelihood_predictions(&[-3.3, -4.0]), Some((0, 1)));
        // Longer choices win acc_norm with the same total.
        let it = item(&["a", "abcdef"]);
        assert_eq!(it.loglikelihood_predictions(&[-2.0, -2.0]), Some((0, 1)));
        assert_eq!(it.loglikelihood_predictions(&[-2.0]), None);
    }
}
