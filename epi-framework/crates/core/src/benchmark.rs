//! Benchmark result JSON (the input of `epi calculate`), as `epi-bench-readme.txt` shows it.

use crate::error::Error;
use crate::jsonio;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// A benchmark run's results: accuracies per suite and the token count.
///
/// The fields of the spec are required; the optional ones add provenance epi-bench writes itself
/// (`tokens_in`, `scoring_mode`, item counts and intervals). Unknown fields are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchmarkResult {
    /// Model identifier.
    pub model: String,
    /// Quantization method.
    pub quantization: String,
    /// Surgery applied (`none (baseline)`, `experts_dropped=8`).
    pub surgery: String,
    /// Accuracy in [0, 1] per benchmark key (`mmlu_5shot`, `arc_challenge_25shot`, ...).
    pub benchmarks: BTreeMap<String, f64>,
    /// Tokens generated over the run (the EPI denominator's token count).
    pub total_tokens: u64,
    /// Wall-clock duration of the run, s.
    pub duration_seconds: f64,
    /// When the run started, UTC (`2026-05-15T10:00:00Z`).
    pub timestamp_utc: String,
    /// Hardware description.
    pub hardware: String,
    /// Inference engine (`distributed-llama`, `llama.cpp`).
    pub inference_engine: String,
    /// Its version.
    pub inference_engine_version: String,
    /// Prompt tokens, when known (for EPT_in and EPT_total).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_in: Option<u64>,
    /// Which token count `total_tokens` is (`generated`, the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_basis: Option<String>,
    /// Scoring mode (`loglikelihood` or `generative`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scoring_mode: Option<String>,
    /// Items scored per benchmark key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub benchmark_items: BTreeMap<String, u64>,
    /// 95 % bootstrap interval per benchmark key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub benchmark_ci95: BTreeMap<String, (f64, f64)>,
    /// The stretch of the power trace this benchmark ran in, `[start, end]` in ms on the trace's
    /// timeline (`epi profile` records start-up, warm-up and the idle baseline too); the energy
    /// is integrated over it. `None`: the whole trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_window_ms: Option<(f64, f64)>,
    /// Any other fields, kept as they were.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl BenchmarkResult {
    /// Reads and checks a benchmark JSON file.
    pub fn from_json(path: impl AsRef<Path>) -> Result<BenchmarkResult, Error> {
        let path = path.as_ref();
        let b: BenchmarkResult = jsonio::read_json(path)?;
        b.check().map_err(|(field, msg)| {
            Error::Input(crate::error::InputError::new(
                crate::error::Location::file(path).field(field),
                msg,
            ))
        })?;
        Ok(b)
    }

    /// Checks value ranges; on failure returns the field path and what was expected.
    pub fn check(&self) -> Result<(), (String, String)> {
        if self.benchmarks.is_empty() {
            return Err((
                "benchmarks".into(),
                "expected at least one benchmark score".into(),
            ));
        }
        for (k, v) in &self.benchmarks {
            if !(v.is_finite() && (0.0..=1.0).contains(v)) {
                return Err((
                    format!("benchmarks.{k}"),
                    format!("score {v} is outside [0, 1]"),
                ));
            }
        }
        if !(self.duration_seconds.is_finite() && self.duration_seconds >= 0.0) {
            return Err((
                "duration_seconds".into(),
                format!("{} is not a duration ≥ 0", self.duration_seconds),
            ));
        }
        for (k, (lo, hi)) in &self.benchmark_ci95 {
            if !(0.0 <= *lo && lo <= hi && *hi <= 1.0) {
                return Err((
                    format!("benchmark_ci95.{k}"),
                    format!("[{lo}, {hi}] is not an interval in [0, 1]"),
                ));
            }
        }
        if let Some((a, b)) = self.energy_window_ms {
            if !(a.is_finite() && b.is_finite() && a < b) {
                return Err((
                    "energy_window_ms".into(),
                    format!("[{a}, {b}] is not a window: expected [start, end] ms, start < end"),
                ));
            }
        }
        Ok(())
    }

    /// Writes the JSON file.
    pub fn to_json(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        jsonio::write_json_atomic(path.as_ref(), self)
    }
}
