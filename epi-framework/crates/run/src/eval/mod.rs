//! The evaluation runner: runs a [`Suite`]'s items through an [`InferenceBackend`] in one
//! [`ScoringMode`], writes a [`QueryRecord`] per item as it finishes, and aggregates per-suite
//! [`SuiteScore`]s.
//!
//! - **Mode.** [`choose_mode`]: log-likelihood when the backend supports it, else generative; a
//!   forced mode the backend cannot do is an error. One run uses one mode for every suite, so
//!   numbers from different modes are never mixed.
//! - **Log-likelihood.** One [`LoglikelihoodRequest`] per item (the rendered context and
//!   `target_delimiter + choice` for each choice); `acc` from the largest summed log-probability,
//!   `acc_norm` from the largest log-probability per character ([`SuiteItem::loglikelihood_predictions`]).
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
//! - **Interruption.** Records are pushed to the [`RecordSink`] as each item finishes. The future
//!   returned by [`Evaluator::run_suite`] can be dropped at any await point (Ctrl-C): everything
//!   finished is on disk and in [`Evaluator::runs`], and [`Evaluator::partial_score`] aggregates it.
//! - **Concurrency.** Up to the backend's `max_concurrency` items are in flight at once (or fewer
//!   if [`EvalOptions::max_concurrency`] says so).

use epi_core::backend::{
    BackendCapabilities, BackendError, GenerateRequest, InferenceBackend, LoglikelihoodRequest,
    LoglikelihoodSupport, ScoringMode, TokenCountSource,
};
use epi_core::suite::{ItemOutcome, Suite, SuiteError, SuiteInfo, SuiteItem, SuiteScore};
use epi_records::{QueryRecord, RecordSink};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Instant;

pub use epi_core::generative::{generative_prompt, shots_sent, GENERATIVE_INSTRUCTION};

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

pub use epi_core::generative::choice_letter;

/// Reads a generated answer strictly; `None` when it is not one of these forms (letters are
/// upper case and must name one of the `n_choices` choices):
///
/// - optional leading white space;
/// - optionally one of `The correct answer is`, `The answer is`, `Correct answer:`, `Answer:`
///   (any case), followed by an optional `:` and white space;
/// - optionally `(` or `**` or `[`;
/// - the letter;
/// - then the end of the text, or white space up to the end or a new line, or one of
///   `.` `)` `]` `:` `,` `**` (anything may follow those).
///
/// So `B`, ` B.`, `(C)`, `**D**`, `Answer: A`, `The answer is B, because…`, `B) Paris` are read;
/// `A good question`, `I think B`, `b`, a letter past the last choice, and the empty reply are not.
pub fn parse_answer(text: &str, n_choices: usize) -> Option<usize> {
    let mut s = text.trim_start();
    const PREFIXES: [&str; 4] = [
        "the correct answer is",
        "the answer is",
        "correct answer:",
        "answer:",
    ];
    for p in PREFIXES {
        if s.len() >= p.len() && s.is_char_boundary(p.len()) && s[..p.len()].eq_ignore_ascii_case(p)
        {
            s = s[p.len()..].trim_start();
            s = s.strip_prefix(':').unwrap_or(s).trim_start();
            break;
        }
    }
    for open in ["**", "(", "["] {
        if let Some(r) = s.strip_prefix(open) {
            s = r;
            break;
        }
    }
    let mut chars = s.chars();
    let letter = chars.next()?;
    if !letter.is_ascii_uppercase() {
        return None;
    }
    let idx = (letter as u8 - b'A') as usize;
    if idx >= n_choices {
        return None;
    }
    let rest = chars.as_str();
    let ok = rest.is_empty()
        || rest.starts_with(['.', ')', ']', ':', ','])
        || rest.starts_with("**")
        || {
            let after_ws = rest.trim_start_matches([' ', '\t', '\r']);
            rest.starts_with(char::is_whitespace)
                && (after_ws.is_empty() || after_ws.starts_with('\n'))
        };
    ok.then_some(idx)
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

/// Runs suites through one backend in one scoring mode.
pub struct Evaluator<'a> {
    backend: &'a dyn InferenceBackend,
    caps: BackendCapabilities,
    mode: ScoringMode,
    opts: EvalOptions,
    origin: Instant,
    concurrency: usize,
    windows: Vec<QueryWindow>,
    runs: Vec<SuiteRun>,
    observer: Option<&'a dyn crate::observe::RunObserver>,
}

/// What one item's query gave.
struct Done {
    index: usize,
    record: QueryRecord,
    outcome: ItemOutcome,
    inexact: bool,
    source: Option<TokenCountSource>,
    method: Option<String>,
    lost: Option<BackendError>,
}

impl<'a> Evaluator<'a> {
    /// An evaluator for a started backend. `origin` is the run's time zero (host monotonic).
    pub fn new(
        backend: &'a dyn InferenceBackend,
        opts: EvalOptions,
        origin: Instant,
    ) -> Result<Evaluator<'a>, EvalError> {
        let caps = backend.capabilities();
        let mode = choose_mode(opts.mode, &caps)?;
        let concurrency = opts
            .max_concurrency
            .unwrap_or(usize::MAX)
            .min(caps.max_concurrency)
            .max(1);
        Ok(Evaluator {
            backend,
            caps,
            mode,
            opts,
            origin,
            concurrency,
            windows: Vec::new(),
            runs: Vec::new(),
            observer: None,
        })
    }

    /// Reports every finished query to `observer` (progress displays).
    pub fn set_observer(&mut self, observer: &'a dyn crate::observe::RunObserver) {
        self.observer = Some(observer);
    }

    /// Runs items through the backend without recording them, cycling through `items`, until
    /// `queries` have finished and `seconds` have passed (warm-up: outside every energy window).
    /// Returns the queries run and how many failed; stops early when the server is lost.
    pub async fn warm_up(
        &self,
        items: &[SuiteItem],
        queries: usize,
        seconds: f64,
    ) -> Result<(usize, usize), EvalError> {
        if items.is_empty() || (queries == 0 && seconds <= 0.0) {
            return Ok((0, 0));
        }
        let chat = self.opts.generative.chat.unwrap_or(!self.caps.completions);
        let t0 = Instant::now();
        let (mut n, mut failed) = (0usize, 0usize);
        while n < queries || t0.elapsed().as_secs_f64() < seconds {
            let item = items[n % items.len()].clone();
            let done = run_item(
                self.backend,
                self.mode,
                chat,
                self.opts.generative.clone(),
                self.opts.run_id.clone(),
                self.origin,
                None,
                n,
                item,
            )
            .await;
            n += 1;
            if done.record.error.is_some() {
                failed += 1;
            }
            if let Some(source) = done.lost {
                return Err(EvalError::ServerLost {
                    suite: "warm-up".into(),
                    done: n,
                    total: queries.max(n),
                    source,
                });
            }
        }
        Ok((n, failed))
    }

    /// The scoring mode of every suite of this run.
    pub fn mode(&self) -> ScoringMode {
        self.mode
    }

    /// Items in flight at once.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// Every finished query's window, in finishing order.
    pub fn windows(&self) -> &[QueryWindow] {
        &self.windows
    }

    /// The suites run so far (the last one possibly unfinished).
    pub fn runs(&self) -> &[SuiteRun] {
        &self.runs
    }

    /// The aggregate of whatever finished of the last suite (for interrupted runs).
    pub fn partial_score(&self, suite: &dyn Suite) -> Option<SuiteScore> {
        let run = self
            .runs
            .iter()
            .rev()
            .find(|r| r.info.key == suite.info().key)?;
        if run.outcomes.is_empty() {
            return None;
        }
        run.score.clone().or_else(|| run.answered_score(suite))
    }

    /// Runs `items` of `suite`, writing one record per item to `sink` as it finishes.
    pub async fn run_suite(
        &mut self,
        suite: &dyn Suite,
        items: Vec<SuiteItem>,
        sink: &mut RecordSink,
    ) -> Result<&SuiteRun, EvalError> {
        let info = suite.info();
        let key = info.key.clone();
        self.runs.push(SuiteRun {
            info,
            mode: self.mode,
            n_planned: items.len(),
            outcomes: Vec::new(),
            score: None,
            tokens_in: 0,
            tokens_out: 0,
            cached_tokens: 0,
            requests: 0,
            inexact_items: 0,
            token_count_sources: BTreeMap::new(),
            method: None,
            span_s: None,
            tokens_unknown: 0,
            errors: BTreeMap::new(),
        });
        let run_index = self.runs.len() - 1;
        let total = items.len();
        let backend = self.backend;
        let mode = self.mode;
        let chat = self.opts.generative.chat.unwrap_or(!self.caps.completions);
        let gen = self.opts.generative.clone();
        let run_id = self.opts.run_id.clone();
        let repetition = self.opts.repetition;
        let origin = self.origin;
        if let Some(o) = self.observer {
            o.event(crate::observe::RunEvent::SuiteStarted {
                suite: key.clone(),
                repetition,
                items: total,
                mode: mode.as_str().into(),
                concurrency: self.concurrency,
            });
        }
        let mut indexed: Vec<(usize, ItemOutcome)> = Vec::with_capacity(total);
        let mut queue = items.into_iter().enumerate();
        let mut in_flight: Vec<Pin<Box<dyn Future<Output = Done> + Send + 'a>>> = Vec::new();
        loop {
            while in_flight.len() < self.concurrency {
                match queue.next() {
                    Some((index, item)) => in_flight.push(Box::pin(run_item(
                        backend,
                        mode,
                        chat,
                        gen.clone(),
                        run_id.clone(),
                        origin,
                        repetition,
                        index,
                        item,
                    ))),
                    None => break,
                }
            }
            if in_flight.is_empty() {
                break;
            }
            let done = std::future::poll_fn(|cx| {
                for i in 0..in_flight.len() {
                    if let Poll::Ready(d) = in_flight[i].as_mut().poll(cx) {
                        drop(in_flight.swap_remove(i));
                        return Poll::Ready(d);
                    }
                }
                Poll::Pending
            })
            .await;
            let run = &mut self.runs[run_index];
            self.windows.push(QueryWindow {
                suite: key.clone(),
                doc_id: done.record.doc_id.clone(),
                start_s: done.record.start_s,
                end_s: done.record.end_s,
            });
            run.tokens_in += done.record.tokens_in.unwrap_or(0);
            run.tokens_out += done.record.tokens_out.unwrap_or(0);
            run.cached_tokens += done.record.cached_tokens.unwrap_or(0);
            run.requests += done.record.requests as u64;
            if done.inexact {
                run.inexact_items += 1;
            }
            if let Some(src) = done.source {
                let name = match src {
                    TokenCountSource::Usage => "usage",
                    TokenCountSource::Tokenizer => "tokenizer",
                    TokenCountSource::Unknown => "unknown",
                };
                *run.token_count_sources.entry(name.to_string()).or_default() += 1;
            }
            if run.method.is_none() {
                run.method = done.method.clone();
            }
            run.span_s = Some(match run.span_s {
                None => (done.record.start_s, done.record.end_s),
                Some((a, b)) => (a.min(done.record.start_s), b.max(done.record.end_s)),
            });
            if done.record.error.is_none() && done.record.tokens_out.is_none() {
                run.tokens_unknown += 1;
            }
            if let Some(e) = &done.record.error {
                if run.errors.len() < 20 || run.errors.contains_key(e) {
                    *run.errors.entry(e.clone()).or_default() += 1;
                }
            }
            sink.push(done.record)?;
            let pos = indexed.partition_point(|(i, _)| *i < done.index);
            indexed.insert(pos, (done.index, done.outcome));
            run.outcomes = indexed.iter().map(|(_, o)| o.clone()).collect();
            if let Some(o) = self.observer {
                let answered = run.outcomes.iter().filter(|x| !x.failed).count();
                o.event(crate::observe::RunEvent::QueryDone {
                    suite: key.clone(),
                    done: run.outcomes.len(),
                    total,
                    correct: run
                        .outcomes
                        .iter()
                        .filter(|x| x.prediction.is_some() && x.prediction == x.gold)
                        .count(),
                    answered,
                    failed: run.outcomes.len() - answered,
                });
            }
            if let Some(source) = done.lost {
                sink.flush()?;
                return Err(EvalError::ServerLost {
                    suite: key,
                    done: indexed.len(),
                    total,
                    source,
                });
            }
        }
        sink.flush()?;
        let run = &mut self.runs[run_index];
        run.score = run.answered_score(suite);
        if let Some(o) = self.observer {
            o.event(crate::observe::RunEvent::SuiteDone {
                suite: key.clone(),
                accuracy: run.score.as_ref().and_then(|s| s.headline_value()),
            });
        }
        Ok(&self.runs[run_index])
    }
}

fn secs_since(origin: Instant, t: Instant) -> f64 {
    t.saturating_duration_since(origin).as_secs_f64()
}

fn is_server_lost(e: &BackendError) -> bool {
    matches!(e, BackendError::Unavailable { .. })
}

#[allow(clippy::too_many_arguments)]
async fn run_item(
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

#[cfg(test)]
mod tests {
    use super::*;
    use epi_core::backend::{
        BackendInfo, ContinuationScore, GenerateResponse, LoglikelihoodResponse,
    };
    use epi_core::suite::MetricValue;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    fn item(i: usize, gold: usize) -> SuiteItem {
        SuiteItem {
            suite: "toy".into(),
            doc_id: format!("test/{i}"),
            subject: None,
            context: format!("Question: q{i}?\nAnswer:"),
            question: format!("Question: q{i}?\nAnswer:"),
            choices: vec![
                "red".into(),
                "green".into(),
                "blue".into(),
                "yellowish".into(),
            ],
            target_delimiter: " ".into(),
            gold: Some(gold),
            generative: None,
        }
    }

    struct ToySuite;
    impl Suite for ToySuite {
        fn info(&self) -> SuiteInfo {
            SuiteInfo {
                key: "toy".into(),
                benchmark_key: "toy_0shot".into(),
                shots: 0,
                has_accuracy: true,
                data: "toy".into(),
            }
        }
        fn items(&self) -> Result<Vec<SuiteItem>, SuiteError> {
            Ok((0..6).map(|i| item(i, i % 4)).collect())
        }
        fn aggregate(&self, outcomes: &[ItemOutcome], mode: ScoringMode) -> SuiteScore {
            let acc = outcomes
                .iter()
                .filter(|o| o.prediction.is_some() && o.prediction == o.gold)
                .count() as f64
                / outcomes.len().max(1) as f64;
            let mut metrics = BTreeMap::new();
            metrics.insert(
                "acc".into(),
                MetricValue {
                    value: acc,
                    ci95: None,
                    label: "mean".into(),
                },
            );
            SuiteScore {
                suite: "toy".into(),
                benchmark_key: "toy_0shot".into(),
                mode,
                n_items: outcomes.len(),
                n_failed: outcomes.iter().filter(|o| o.failed).count(),
                n_unparseable: outcomes.iter().filter(|o| o.unparseable).count(),
                metrics,
                headline: "acc".into(),
                groups: BTreeMap::new(),
            }
        }
    }

    /// A backend whose answers are a function of the document number; item 3 fails; with
    /// `die_at`, that item reports the server unavailable.
    struct Toy {
        ll: bool,
        concurrency: usize,
        in_flight: AtomicUsize,
        peak: AtomicUsize,
        die_at: Option<usize>,
        prompts: Mutex<Vec<String>>,
    }

    fn doc_no(text: &str) -> usize {
        let p = text.find("Question: q").unwrap() + "Question: q".len();
        text[p..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect::<String>()
            .parse()
            .unwrap()
    }

    #[async_trait::async_trait]
    impl InferenceBackend for Toy {
        async fn start(&mut self) -> Result<BackendInfo, BackendError> {
            Ok(BackendInfo::default())
        }
        fn capabilities(&self) -> BackendCapabilities {
            BackendCapabilities {
                loglikelihood: if self.ll {
                    LoglikelihoodSupport::TopN { n: 5 }
                } else {
                    LoglikelihoodSupport::None
                },
                completions: true,
                chat: true,
                streaming: false,
                tokenizer: false,
                max_concurrency: self.concurrency,
            }
        }
        async fn generate(&self, r: &GenerateRequest) -> Result<GenerateResponse, BackendError> {
            self.prompts.lock().unwrap().push(r.prompt.clone());
            let n = doc_no(&r.prompt);
            let text = match n {
                0 => " A.".to_string(),
                1 => "The answer is B".to_string(),
                2 => "I think C".to_string(),
                3 => {
                    return Err(BackendError::Timeout {
                        backend: "toy".into(),
                        attempts: 3,
                        message: "slow".into(),
                    })
                }
                _ => format!("{}", choice_letter(n % 4)),
            };
            Ok(GenerateResponse {
                text,
                tokens_in: Some(10),
                tokens_out: Some(2),
                token_count_source: TokenCountSource::Usage,
                cached_tokens: None,
                ttft_s: None,
                latency_s: 0.0,
                finish_reason: None,
            })
        }
        async fn loglikelihood(
            &self,
            r: &LoglikelihoodRequest,
        ) -> Result<LoglikelihoodResponse, BackendError> {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            let n = doc_no(&r.context);
            if Some(n) == self.die_at {
                return Err(BackendError::Unavailable {
                    backend: "toy".into(),
                    message: "connection refused".into(),
                });
            }
            if n == 3 {
                return Err(BackendError::BadReply {
                    backend: "toy".into(),
                    message: "HTTP 500".into(),
                });
            }
            // Choice (n % 4) gets the best total; choice 3 (long) the best per character for odd n.
            let scores = (0..4)
                .map(|c| {
                    let lp = if c == n % 4 {
                        -1.0
                    } else if c == 3 && n % 2 == 1 {
                        -1.5
                    } else {
                        -5.0
                    };
                    ContinuationScore {
                        logprob: lp,
                        n_tokens: 1,
                        exact: c != 2,
                        is_greedy: None,
                    }
                })
                .collect();
            Ok(LoglikelihoodResponse {
                scores,
                method: "top-n".into(),
                tokens_in: 100,
                tokens_out: 1,
                requests: 2,
                latency_s: 0.0,
                cached_tokens: Some(90),
            })
        }
        async fn stop(&mut self) -> Result<(), BackendError> {
            Ok(())
        }
    }

    fn toy(ll: bool, concurrency: usize, die_at: Option<usize>) -> Toy {
        Toy {
            ll,
            concurrency,
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            die_at,
            prompts: Mutex::new(Vec::new()),
        }
    }

    #[test]
    fn answers_are_parsed_strictly() {
        for (text, want) in [
            ("B", Some(1)),
            (" B.", Some(1)),
            ("(C)", Some(2)),
            ("**D**", Some(3)),
            ("Answer: A", Some(0)),
            ("answer:B", Some(1)),
            ("The answer is B, because", Some(1)),
            ("The correct answer is: C", Some(2)),
            ("B) Paris", Some(1)),
            ("D\nExplanation", Some(3)),
            ("C  \n", Some(2)),
            ("A good question", None),
            ("I think B", None),
            ("b", None),
            ("E", None),
            ("", None),
            ("   ", None),
            ("Bees", None),
        ] {
            assert_eq!(parse_answer(text, 4), want, "{text:?}");
        }
        assert_eq!(parse_answer("E.", 5), Some(4));
    }

    #[test]
    fn generative_prompt_lists_choices_once() {
        let it = item(7, 0);
        let p = generative_prompt(&it);
        assert!(p.starts_with(GENERATIVE_INSTRUCTION));
        assert!(
            p.ends_with("Question: q7?\nA. red\nB. green\nC. blue\nD. yellowish\nAnswer:"),
            "{p}"
        );
        let mut mmlu = it.clone();
        mmlu.question = "What?\nA. red\nB. green\nC. blue\nD. yellowish\nAnswer:".into();
        let p = generative_prompt(&mmlu);
        assert_eq!(p.matches("A. red").count(), 1, "{p}");
        assert!(p.ends_with("D. yellowish\nAnswer:"));
    }

    #[test]
    fn forced_loglikelihood_without_support_is_refused() {
        let caps = toy(false, 1, None).capabilities();
        assert!(choose_mode(Some(ScoringMode::Loglikelihood), &caps).is_err());
        assert_eq!(choose_mode(None, &caps).unwrap(), ScoringMode::Generative);
        let caps = toy(true, 1, None).capabilities();
        assert_eq!(
            choose_mode(None, &caps).unwrap(),
            ScoringMode::Loglikelihood
        );
        assert_eq!(
            choose_mode(Some(ScoringMode::Generative), &caps).unwrap(),
            ScoringMode::Generative
        );
    }

    #[tokio::test]
    async fn loglikelihood_run_records_every_item_and_honours_concurrency() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = RecordSink::create(dir.path(), 4).unwrap();
        let backend = toy(true, 3, None);
        let origin = Instant::now();
        let mut ev = Evaluator::new(&backend, EvalOptions::new("r1"), origin).unwrap();
        assert_eq!(ev.mode(), ScoringMode::Loglikelihood);
        let items = ToySuite.items().unwrap();
        let run = ev
            .run_suite(&ToySuite, items, &mut sink)
            .await
            .unwrap()
            .clone();
        sink.finish().unwrap();
        assert_eq!(run.done(), 6);
        assert_eq!(run.failed(), 1);
        assert_eq!(
            run.inexact_items, 5,
            "choice 2 is inexact in every successful item"
        );
        assert_eq!(run.tokens_in, 500);
        assert_eq!(run.cached_tokens, 450);
        assert_eq!(run.requests, 10);
        assert_eq!(run.method.as_deref(), Some("top-n"));
        assert_eq!(run.errors.len(), 1);
        assert!(run.errors.keys().next().unwrap().contains("HTTP 500"));
        let score = run.score.unwrap();
        // Every answered item predicts its gold; item 3 failed: left out, counted beside.
        assert!((score.metrics["acc"].value - 1.0).abs() < 1e-12);
        assert_eq!(score.n_items, 5);
        assert_eq!(score.n_failed, 1);
        assert_eq!(backend.peak.load(Ordering::SeqCst), 3);
        let recs = epi_records::read_jsonl_records(&dir.path().join("records.jsonl")).unwrap();
        assert_eq!(recs.len(), 6);
        let r1 = recs.iter().find(|r| r.doc_id == "test/1").unwrap();
        assert_eq!(r1.prediction, Some(1));
        assert_eq!(r1.prediction_norm, Some(3), "yellowish wins per character");
        assert_eq!(r1.correct_norm, Some(false));
        assert_eq!(r1.choice_exact, vec![true, true, false, true]);
        assert!(r1.end_s >= r1.start_s && r1.start_s >= 0.0);
        let r3 = recs.iter().find(|r| r.doc_id == "test/3").unwrap();
        assert!(r3.error.as_deref().unwrap().contains("HTTP 500"));
        assert_eq!(r3.correct, Some(false));
        assert_eq!(ev.windows().len(), 6);
    }

    #[tokio::test]
    async fn generative_run_counts_unparseable_and_failures() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = RecordSink::create(dir.path(), 1).unwrap();
        let backend = toy(false, 1, None);
        let mut ev = Evaluator::new(&backend, EvalOptions::new("r2"), Instant::now()).unwrap();
        let run = ev
            .run_suite(&ToySuite, ToySuite.items().unwrap(), &mut sink)
            .await
            .unwrap()
            .clone();
        assert_eq!(run.unparseable(), 1, "item 2 says `I think C`");
        assert_eq!(run.failed(), 1, "item 3 timed out");
        // 0 → A (gold 0) ok, 1 → B ok, 4 → A (gold 0) ok, 5 → B (gold 1) ok; 2 is wrong
        // (unparseable), 3 failed (not counted as an answer).
        assert!((run.score.unwrap().metrics["acc"].value - 4.0 / 5.0).abs() < 1e-12);
        assert_eq!(run.token_count_sources.get("usage"), Some(&5));
        assert_eq!(run.tokens_unknown, 0);
        let prompts = backend.prompts.lock().unwrap();
        assert!(prompts[0].ends_with("D. yellowish\nAnswer:"));
        let recs = epi_records::read_jsonl_records(&dir.path().join("records.jsonl")).unwrap();
        assert!(recs.iter().all(|r| r.scoring_mode == "generative"));
        let r2 = recs.iter().find(|r| r.doc_id == "test/2").unwrap();
        assert_eq!(r2.generated_text.as_deref(), Some("I think C"));
        assert_eq!(r2.prediction, None);
        assert_eq!(r2.correct, Some(false));
    }

    #[tokio::test]
    async fn a_dead_server_stops_the_run_and_keeps_what_finished() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = RecordSink::create(dir.path(), 100).unwrap();
        let backend = toy(true, 1, Some(2));
        let mut ev = Evaluator::new(&backend, EvalOptions::new("r3"), Instant::now()).unwrap();
        let err = ev
            .run_suite(&ToySuite, ToySuite.items().unwrap(), &mut sink)
            .await
            .unwrap_err();
        match &err {
            EvalError::ServerLost { done, total, .. } => assert_eq!((*done, *total), (3, 6)),
            other => panic!("{other}"),
        }
        assert!(err.to_string().contains("connection refused"), "{err}");
        // Flushed: the Arrow stream holds the three records although the batch size is 100.
        let batches = epi_records::read_arrow_records(&dir.path().join("records.arrow")).unwrap();
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
        let partial = ev.partial_score(&ToySuite).unwrap();
        assert_eq!((partial.n_items, partial.n_failed), (2, 1), "item 2 failed");
    }

    #[tokio::test]
    async fn a_dropped_run_keeps_finished_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = RecordSink::create(dir.path(), 1).unwrap();
        let backend = toy(true, 1, None);
        let mut ev = Evaluator::new(&backend, EvalOptions::new("r4"), Instant::now()).unwrap();
        let items = ToySuite.items().unwrap();
        // Each item takes at least 5 ms: cut the run before all six can finish (as Ctrl-C does).
        let cut = tokio::time::timeout(
            std::time::Duration::from_millis(12),
            ev.run_suite(&ToySuite, items, &mut sink),
        );
        assert!(cut.await.is_err(), "the run was cut");
        let n = ev.runs()[0].done();
        assert!(n < 6, "{n}");
        assert_eq!(
            epi_records::read_jsonl_records(&dir.path().join("records.jsonl"))
                .unwrap()
                .len(),
            n
        );
        if n > 0 {
            let p = ev.partial_score(&ToySuite).unwrap();
            assert_eq!(p.n_items + p.n_failed, n);
        }
    }
}
