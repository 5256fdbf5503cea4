//! The [`Scorer`] trait: turns a run's energy, tokens and accuracy into metrics.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One query's attributed energy and latency (for IPJ and IPW).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QueryEnergy {
    /// Attributed energy, J.
    pub energy_j: f64,
    /// Latency, s.
    pub latency_s: f64,
}

/// Everything a scorer may use.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScoreInput {
    /// Gross energy of the measured window, J.
    pub energy_j: f64,
    /// Net energy (gross − idle × duration), when an idle baseline was measured.
    pub net_energy_j: Option<f64>,
    /// The instrument's relative accuracy (0.02 for ±2 %).
    pub energy_rel_accuracy: Option<f64>,
    /// Prompt tokens, when known.
    pub tokens_in: Option<u64>,
    /// Generated tokens.
    pub tokens_out: u64,
    /// Per-suite scores by benchmark key (`mmlu_5shot` → 0.78).
    pub suite_scores: BTreeMap<String, f64>,
    /// Per-suite 95 % intervals by benchmark key, when known.
    pub suite_ci95: BTreeMap<String, (f64, f64)>,
    /// Weights by suite name (`mmlu` → 0.4); `None` means equal.
    pub weights: Option<BTreeMap<String, f64>>,
    /// The composite accuracy, once a composite scorer has computed it.
    pub accuracy: Option<f64>,
    /// Its 95 % interval.
    pub accuracy_ci95: Option<(f64, f64)>,
    /// Per-query energies, when queries were timed.
    pub queries: Vec<QueryEnergy>,
}

/// One computed metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// Name (`epi`, `ept_out`, `ipj`, `accuracy_composite`).
    pub name: String,
    /// Value.
    pub value: f64,
    /// Unit (`J/token`, `1/J`, `1/W`, ``).
    pub unit: String,
    /// 95 % interval, when known.
    pub ci95: Option<(f64, f64)>,
    /// What it was computed from (e.g. `gross energy, generated tokens`).
    pub basis: String,
}

/// Why a scorer could not score.
#[derive(Debug, thiserror::Error)]
#[error("{scorer}: {message}")]
pub struct ScoreError {
    /// Scorer key.
    pub scorer: String,
    /// Why (e.g. "EPI needs accuracy: this run used a prompt file, which has none").
    pub message: String,
}

/// A metric computation. Pure and synchronous.
pub trait Scorer: Send + Sync {
    /// Computes this scorer's metrics.
    fn score(&self, input: &ScoreInput) -> Result<Vec<Metric>, ScoreError>;
}
