//! Per-query records: one [`QueryRecord`] per query (one benchmark document, or one prompt) with
//! everything measured about it, and the JSON Lines reader. The files (`records.jsonl`,
//! `records.arrow`) are written by the `epi-records` crate; the columns are documented in
//! `docs/formats.md`.
//!
//! Failures are I/O and parse errors ([`Error`]), naming the file and line.

use crate::error::Error;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// File name of the JSON Lines records.
pub const RECORDS_JSONL: &str = "records.jsonl";
/// File name of the Arrow records.
pub const RECORDS_ARROW: &str = "records.arrow";

/// One query (one benchmark document, or one prompt) and everything measured about it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueryRecord {
    /// Run id.
    pub run_id: String,
    /// Suite key.
    pub suite: String,
    /// Document id within the suite.
    pub doc_id: String,
    /// Repetition of the measured part (1-based; `None` outside `epi profile`).
    #[serde(default)]
    pub repetition: Option<u32>,
    /// Sub-task (MMLU subject).
    pub subject: Option<String>,
    /// `loglikelihood` or `generative`.
    pub scoring_mode: String,
    /// The rendered context (or prompt) sent.
    pub context: String,
    /// Choice texts.
    pub choices: Vec<String>,
    /// Σ log-probability per choice (loglikelihood mode).
    pub choice_logprobs: Vec<f64>,
    /// Whether each choice's log-probability is exact (top-N method can be inexact).
    pub choice_exact: Vec<bool>,
    /// Predicted choice (argmax of log-probability, or the parsed generative answer).
    pub prediction: Option<u32>,
    /// Predicted choice by log-probability per character (`acc_norm`).
    pub prediction_norm: Option<u32>,
    /// Gold choice.
    pub gold: Option<u32>,
    /// prediction == gold.
    pub correct: Option<bool>,
    /// prediction_norm == gold.
    pub correct_norm: Option<bool>,
    /// Generated text (generative mode, prompt runs).
    pub generated_text: Option<String>,
    /// Prompt tokens processed.
    pub tokens_in: Option<u64>,
    /// Tokens generated.
    pub tokens_out: Option<u64>,
    /// Prompt tokens served from cache.
    pub cached_tokens: Option<u64>,
    /// Server requests this query took.
    pub requests: u32,
    /// Start on the run's host monotonic timeline, s.
    pub start_s: f64,
    /// End on the run's host monotonic timeline, s.
    pub end_s: f64,
    /// Latency, s.
    pub latency_s: f64,
    /// Time to first token, s.
    pub ttft_s: Option<f64>,
    /// Attributed energy, gross (what the meter saw), J (profile runs).
    pub energy_j: Option<f64>,
    /// Attributed energy net of the idle baseline, J (profile runs with an idle baseline).
    #[serde(default)]
    pub energy_net_j: Option<f64>,
    /// Coverage of the query's window by power samples.
    pub energy_coverage: Option<f64>,
    /// The error, when the query failed (it is counted as wrong, never dropped).
    pub error: Option<String>,
}

/// Reads a JSON Lines record file (complete lines only).
pub fn read_jsonl_records(path: &Path) -> Result<Vec<QueryRecord>, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(r) => out.push(r),
            Err(e) if i + 1 == text.lines().count() && !text.ends_with('\n') => {
                let _ = e; // a last line cut mid-write
                break;
            }
            Err(e) => {
                return Err(Error::Input(crate::error::InputError::new(
                    crate::error::Location::file(path).at_line(i as u64 + 1),
                    e.to_string(),
                )))
            }
        }
    }
    Ok(out)
}
