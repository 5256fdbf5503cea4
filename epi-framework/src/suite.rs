//! The [`Suite`] trait: a benchmark that yields rendered items and aggregates their outcomes.

use crate::backend::ScoringMode;
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
}

impl SuiteItem {
    /// The continuations lm-eval scores: `target_delimiter + choice`.
    pub fn continuations(&self) -> Vec<String> {
        self.choices.iter().map(|c| format!("{}{}", self.target_delimiter, c)).collect()
    }
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
