//! [`Evaluator`]: runs a suite's items through the backend, up to its concurrency at once,
//! pushing each finished item's record to the [`RecordSink`] and folding it into the suite's
//! [`SuiteRun`]; also the unrecorded warm-up. A lost server ends the run with
//! [`EvalError::ServerLost`] after recording the item that found it; a record that cannot be
//! written is [`EvalError::Records`]. The futures can be dropped at any await point: what
//! finished stays recorded.

use super::item::{run_item, Done};
use super::{choose_mode, EvalError, EvalOptions, QueryWindow, SuiteRun};
use epi_core::backend::{BackendCapabilities, InferenceBackend, ScoringMode, TokenCountSource};
use epi_core::suite::{ItemOutcome, Suite, SuiteItem, SuiteScore};
use epi_records::RecordSink;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Instant;

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
