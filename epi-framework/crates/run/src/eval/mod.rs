//! The evaluation runner: runs a [`Suite`]'s items through an [`InferenceBackend`](epi_core::backend::InferenceBackend) in one
//! [`ScoringMode`], writes a [`QueryRecord`](epi_records::QueryRecord) per item as it finishes, and aggregates per-suite
//! [`SuiteScore`]s.
//!
//! - **Mode.** [`choose_mode`]: log-likelihood when the backend supports it, else generative; a
//!   forced mode the backend cannot do is an error. One run uses one mode for every suite, so
//!   numbers from different modes are never mixed.
//! - **Log-likelihood.** One [`LoglikelihoodRequest`](epi_core::backend::LoglikelihoodRequest) per item (the rendered context and
//!   `target_delimiter + choice` for each choice); `acc` from the largest summed log-probability,
//!   `acc_norm` from the largest log-probability per character ([`SuiteItem::loglikelihood_predictions`](epi_core::suite::SuiteItem::loglikelihood_predictions)).
//!   Each choice's exactness is recorded (the top-N method can be inexact).
//! - **Generative.** [`generative_prompt`] ([`epi_core::generative`]) renders the item's few-shot
//!   examples (the log-likelihood mode's draws) and question as lettered questions, each example
//!   with its answer letter, `Answer:` last; decoding is greedy (temperature 0);
//!   [`parse_answer`] reads the reply strictly. An unparseable reply counts as wrong and is counted.
//!   Items without choices (prompt files) are generated and recorded, with no prediction.
//! - **Failures.** A query that fails after the backend's retries is recorded with its error and
//!   counted (`ItemOutcome::failed`); nothing is dropped, and it is **not** a wrong answer: a
//!   suite's score is over the answered items ([`SuiteRun::answered_score`]) with the failures
//!   counted beside it, and the run engine decides whether a run with failures may give a
//!   benchmark result. When the backend reports the server unavailable (it died: connections
//!   refused), the run stops with [`EvalError::ServerLost`] after recording that item.
//! - **Timeline.** Every record's `start_s`/`end_s` are seconds on the host monotonic clock since
//!   the `origin` instant the caller gives (the profile run's session start), and the runner keeps
//!   the list of [`QueryWindow`]s for energy attribution.
//! - **Interruption.** Records are pushed to the [`RecordSink`](epi_records::RecordSink) as each item finishes. The future
//!   returned by [`Evaluator::run_suite`] can be dropped at any await point (Ctrl-C): everything
//!   finished is on disk and in [`Evaluator::runs`], and [`Evaluator::partial_score`] aggregates it.
//! - **Concurrency.** Up to the backend's `max_concurrency` items are in flight at once (or fewer
//!   if [`EvalOptions::max_concurrency`] says so).

mod answer;
mod evaluator;
mod item;
#[cfg(test)]
mod tests;

use epi_core::backend::{BackendCapabilities, BackendError, LoglikelihoodSupport, ScoringMode};
use epi_core::suite::{ItemOutcome, Suite, SuiteError, SuiteInfo, SuiteScore};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use answer::{choice_letter, parse_answer};
pub use epi_core::generative::{generative_prompt, shots_sent, GENERATIVE_INSTRUCTION};
pub use evaluator::Evaluator;

/// A new random run id (UUID v4).
pub fn new_run_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Why a run could not go on.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The scoring mode asked for is not available.
    #[error("scoring mode: {0}")]
    Mode(String),
    /// The suite could not provide its items.
    #[error(transparent)]
    Suite(#[from] SuiteError),
    /// A record could not be written.
    #[error("writing records: {0}")]
    Records(#[from] epi_core::error::Error),
    /// The server became unavailable; the items done so far are recorded.
    #[error("{suite}: stopped after {done} of {total} items: {source}")]
    ServerLost {
        /// Suite key.
        suite: String,
        /// Items finished (recorded).
        done: usize,
        /// Items planned.
        total: usize,
        /// The backend's error.
        source: BackendError,
    },
}

/// Settings of generative scoring.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerativeOptions {
    /// Most tokens to generate for a multiple-choice answer.
    pub max_tokens: u32,
    /// Most tokens to generate for a prompt-only item.
    pub prompt_max_tokens: u32,
    /// Send chat requests: `None` = completions when the backend has them, else chat.
    pub chat: Option<bool>,
    /// Stream replies (measures time to first token; some servers give no token usage in streams).
    pub stream: bool,
}

impl Default for GenerativeOptions {
    fn default() -> Self {
        GenerativeOptions {
            max_tokens: 16,
            prompt_max_tokens: 256,
            chat: None,
            stream: false,
        }
    }
}

/// Settings of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalOptions {
    /// Run id written into every record.
    pub run_id: String,
    /// Force a scoring mode (`None`: log-likelihood when the backend supports it).
    pub mode: Option<ScoringMode>,
    /// Generative settings.
    pub generative: GenerativeOptions,
    /// At most this many items in flight (never more than the backend's `max_concurrency`).
    pub max_concurrency: Option<usize>,
    /// Repetition written into every record (`epi profile`; `None` for a single evaluation).
    #[serde(default)]
    pub repetition: Option<u32>,
}

impl EvalOptions {
    /// Defaults with `run_id`.
    pub fn new(run_id: impl Into<String>) -> EvalOptions {
        EvalOptions {
            run_id: run_id.into(),
            mode: None,
            generative: GenerativeOptions::default(),
            max_concurrency: None,
            repetition: None,
        }
    }
}

/// Picks the scoring mode: the one asked for if the backend can do it, else log-likelihood when
/// supported, else generative.
pub fn choose_mode(
    requested: Option<ScoringMode>,
    caps: &BackendCapabilities,
) -> Result<ScoringMode, EvalError> {
    let has_ll = caps.loglikelihood != LoglikelihoodSupport::None;
    match requested {
        Some(ScoringMode::Loglikelihood) if !has_ll => Err(EvalError::Mode(
            "the backend returns no usable log-probabilities, so log-likelihood scoring is impossible; use \
             --mode generative (not comparable with lm-eval numbers)"
                .into(),
        )),
        Some(ScoringMode::Generative) if !caps.completions && !caps.chat => {
            Err(EvalError::Mode("the backend can neither complete nor chat".into()))
        }
        Some(m) => Ok(m),
        None if has_ll => Ok(ScoringMode::Loglikelihood),
        None => Ok(ScoringMode::Generative),
    }
}

/// One query's window on the run's timeline (for energy attribution).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryWindow {
    /// Suite key.
    pub suite: String,
    /// Document id.
    pub doc_id: String,
    /// Start, s since the run's origin.
    pub start_s: f64,
    /// End, s since the run's origin.
    pub end_s: f64,
}

/// What one suite's run produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuiteRun {
    /// Suite facts.
    pub info: SuiteInfo,
    /// The scoring mode.
    pub mode: ScoringMode,
    /// Items the suite gave.
    pub n_planned: usize,
    /// Outcomes of the finished items, in item order.
    pub outcomes: Vec<ItemOutcome>,
    /// The aggregate, once every item has finished.
    pub score: Option<SuiteScore>,
    /// Prompt tokens over all finished items.
    pub tokens_in: u64,
    /// Generated tokens over all finished items.
    pub tokens_out: u64,
    /// Prompt tokens served from cache, where the server said.
    pub cached_tokens: u64,
    /// Server requests.
    pub requests: u64,
    /// Items with at least one inexact choice score (top-N method).
    pub inexact_items: usize,
    /// Items whose token counts came from each source (`usage`, `tokenizer`, `unknown`).
    pub token_count_sources: BTreeMap<String, usize>,
    /// Log-likelihood method the backend reported (`echo`, `top-n`), loglikelihood mode only.
    pub method: Option<String>,
    /// First and last instants of the suite's queries, s since the origin.
    pub span_s: Option<(f64, f64)>,
    /// Finished queries whose generated-token count the backend could not give (e.g. streamed
    /// replies without usage and no tokenizer): token totals undercount by these.
    #[serde(default)]
    pub tokens_unknown: usize,
    /// Distinct errors of failed queries (up to 20) and how many queries each failed.
    #[serde(default)]
    pub errors: BTreeMap<String, usize>,
}

impl SuiteRun {
    /// Items finished.
    pub fn done(&self) -> usize {
        self.outcomes.len()
    }
    /// Items whose query failed.
    pub fn failed(&self) -> usize {
        self.outcomes.iter().filter(|o| o.failed).count()
    }
    /// Items whose generated answer could not be read.
    pub fn unparseable(&self) -> usize {
        self.outcomes.iter().filter(|o| o.unparseable).count()
    }

    /// The suite's score over the items that were answered: a failed query (a server error after
    /// the backend's retries) is not a wrong answer, so it is left out of the accuracy and counted
    /// beside it (`n_failed`). `None` when no item was answered.
    pub fn answered_score(&self, suite: &dyn Suite) -> Option<SuiteScore> {
        let answered: Vec<ItemOutcome> = self
            .outcomes
            .iter()
            .filter(|o| !o.failed)
            .cloned()
            .collect();
        if answered.is_empty() {
            return None;
        }
        let mut score = suite.aggregate(&answered, self.mode);
        score.n_failed = self.failed();
        Some(score)
    }
}
