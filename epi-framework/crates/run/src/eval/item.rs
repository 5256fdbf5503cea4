//! One item's query: [`run_item`] sends the log-likelihood request or the generative prompt,
//! times it on the host monotonic clock, and turns the reply into the item's [`QueryRecord`] and
//! [`ItemOutcome`]. It never fails: a backend error is recorded in the record (`error`) and the
//! outcome (`failed`), and an unavailable server is handed back in `Done::lost`.

use super::{parse_answer, GenerativeOptions};
use epi_core::backend::{
    BackendError, GenerateRequest, InferenceBackend, LoglikelihoodRequest, ScoringMode,
    TokenCountSource,
};
use epi_core::generative::generative_prompt;
use epi_core::suite::{ItemOutcome, SuiteItem};
use epi_records::QueryRecord;
use std::time::Instant;

/// What one item's query gave.
pub(super) struct Done {
    pub(super) index: usize,
    pub(super) record: QueryRecord,
    pub(super) outcome: ItemOutcome,
    pub(super) inexact: bool,
    pub(super) source: Option<TokenCountSource>,
    pub(super) method: Option<String>,
    pub(super) lost: Option<BackendError>,
}

fn secs_since(origin: Instant, t: Instant) -> f64 {
    t.saturating_duration_since(origin).as_secs_f64()
}

fn is_server_lost(e: &BackendError) -> bool {
    matches!(e, BackendError::Unavailable { .. })
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn run_item(
    backend: &dyn InferenceBackend,
    mode: ScoringMode,
    chat: bool,
    gen: GenerativeOptions,
    run_id: String,
    origin: Instant,
    repetition: Option<u32>,
    index: usize,
    item: SuiteItem,
) -> Done {
    let gold = item.gold.map(|g| g as u32);
    let mut record = QueryRecord {
        run_id,
        suite: item.suite.clone(),
        doc_id: item.doc_id.clone(),
        repetition,
        subject: item.subject.clone(),
        scoring_mode: mode.as_str().to_string(),
        context: item.context.clone(),
        choices: item.choices.clone(),
        gold,
        ..Default::default()
    };
    let mut outcome = ItemOutcome {
        doc_id: item.doc_id.clone(),
        subject: item.subject.clone(),
        gold: item.gold,
        prediction: None,
        prediction_norm: None,
        failed: false,
        unparseable: false,
    };
    let mut inexact = false;
    let mut source = None;
    let mut method = None;
    let mut lost = None;
    let prompt_only = item.choices.is_empty();
    let t0 = Instant::now();
    if mode == ScoringMode::Loglikelihood && !prompt_only {
        let req = LoglikelihoodRequest {
            context: item.context.clone(),
            continuations: item.continuations(),
        };
        let result = backend.loglikelihood(&req).await;
        let t1 = Instant::now();
        record.start_s = secs_since(origin, t0);
        record.end_s = secs_since(origin, t1);
        record.latency_s = (t1 - t0).as_secs_f64();
        match result {
            Ok(r) if r.scores.len() == item.choices.len() => {
                record.choice_logprobs = r.scores.iter().map(|s| s.logprob).collect();
                record.choice_exact = r.scores.iter().map(|s| s.exact).collect();
                inexact = r.scores.iter().any(|s| !s.exact);
                record.tokens_in = Some(r.tokens_in);
                record.tokens_out = Some(r.tokens_out);
                record.cached_tokens = r.cached_tokens;
                record.requests = r.requests;
                method = Some(r.method.clone());
                if let Some((acc, norm)) = item.loglikelihood_predictions(&record.choice_logprobs) {
                    outcome.prediction = Some(acc);
                    outcome.prediction_norm = Some(norm);
                    record.prediction = Some(acc as u32);
                    record.prediction_norm = Some(norm as u32);
                }
            }
            Ok(r) => {
                outcome.failed = true;
                record.error = Some(format!(
                    "the backend returned {} scores for {} choices",
                    r.scores.len(),
                    item.choices.len()
                ));
            }
            Err(e) => {
                outcome.failed = true;
                record.error = Some(e.to_string());
                if is_server_lost(&e) {
                    lost = Some(e);
                }
            }
        }
        record.correct = gold.map(|g| record.prediction == Some(g));
        record.correct_norm = gold.map(|g| record.prediction_norm == Some(g));
    } else {
        let (prompt, max_tokens) = if prompt_only {
            (item.context.clone(), gen.prompt_max_tokens)
        } else {
            (generative_prompt(&item), gen.max_tokens)
        };
        if !prompt_only {
            record.context = prompt.clone();
        }
        record.scoring_mode = ScoringMode::Generative.as_str().to_string();
        let req = GenerateRequest {
            prompt,
            chat,
            max_tokens,
            stop: Vec::new(),
            stream: gen.stream,
        };
        let result = backend.generate(&req).await;
        let t1 = Instant::now();
        record.start_s = secs_since(origin, t0);
        record.end_s = secs_since(origin, t1);
        record.latency_s = (t1 - t0).as_secs_f64();
        record.requests = 1;
        match result {
            Ok(r) => {
                record.tokens_in = r.tokens_in;
                record.tokens_out = r.tokens_out;
                record.cached_tokens = r.cached_tokens;
                record.ttft_s = r.ttft_s;
                source = Some(r.token_count_source);
                if !prompt_only {
                    match parse_answer(&r.text, item.choices.len()) {
                        Some(p) => {
                            outcome.prediction = Some(p);
                            record.prediction = Some(p as u32);
                        }
                        None => outcome.unparseable = true,
                    }
                }
                record.generated_text = Some(r.text);
            }
            Err(e) => {
                outcome.failed = true;
                record.error = Some(e.to_string());
                if is_server_lost(&e) {
                    lost = Some(e);
                }
            }
        }
        if !prompt_only {
            record.correct = gold.map(|g| record.prediction == Some(g));
        }
    }
    Done {
        index,
        record,
        outcome,
        inexact,
        source,
        method,
        lost,
    }
}
