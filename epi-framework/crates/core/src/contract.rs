//! Contract checks, one per plugin trait, as vector's component test utilities: each drives a
//! plugin through the life cycle its trait documents and asserts what every implementation
//! must do, whatever it measures or talks to.
//!
//! - [`check_power_source`]: `open` → `next_batch` until it ends or enough batches came → `close`;
//!   the info names the source's key, each channel's samples come in time order, the stats only
//!   grow, an error names the plugin.
//! - [`check_backend`]: `start` → one query of each kind the capabilities announce → `stop`;
//!   replies are well formed (one score per continuation, log-probabilities ≤ 0, token counts
//!   within the limit asked), an error names the plugin.
//! - [`check_suite`]: `info` and `items`: ids unique, golds within the choices, contexts and
//!   continuations present; `aggregate` of all-wrong and all-right outcomes gives 0 and 1.
//!
//! A plugin that cannot run here (no GPU, no server) passes when it says so with an error that
//! names it: the check then reports it as [`Outcome::Unavailable`]. Each check returns
//! `Err(what broke the contract)`; the callers (the contract tests of `tests/e2e/contract.rs`)
//! run them on every registered plugin, built from its example configuration.

use crate::backend::ScoringMode;
use crate::backend::{
    GenerateRequest, InferenceBackend, LoglikelihoodRequest, LoglikelihoodSupport,
};
use crate::power::PowerSource;
use crate::sample::SourceStats;
use crate::suite::{ItemOutcome, Suite};
use std::collections::{BTreeMap, HashSet};

/// How a plugin went through its check.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// It ran its whole life cycle; what it did, in words.
    Ran(String),
    /// It could not run here and said so, naming itself.
    Unavailable(String),
}

fn names(key: &str, message: &str) -> Result<(), String> {
    if message.contains(key) {
        Ok(())
    } else {
        Err(format!(
            "{key}: an error that does not name the plugin: {message}"
        ))
    }
}

fn stats_grew(key: &str, a: &SourceStats, b: &SourceStats) -> Result<(), String> {
    let pairs = [
        ("samples", a.samples as f64, b.samples as f64),
        ("bad_lines", a.bad_lines as f64, b.bad_lines as f64),
        ("lost_samples", a.lost_samples as f64, b.lost_samples as f64),
        ("reboots", a.reboots as f64, b.reboots as f64),
        ("reconnects", a.reconnects as f64, b.reconnects as f64),
        ("disconnected_ms", a.disconnected_ms, b.disconnected_ms),
    ];
    for (name, before, after) in pairs {
        if after < before {
            return Err(format!(
                "{key}: stats.{name} went back from {before} to {after}"
            ));
        }
    }
    Ok(())
}

/// Drives a power source: `open`, up to `max_batches` batches (or until it ends), `close`.
pub async fn check_power_source(
    key: &str,
    mut source: Box<dyn PowerSource>,
    max_batches: usize,
) -> Result<Outcome, String> {
    let info = match source.open().await {
        Ok(info) => info,
        Err(e) => {
            names(key, &e.to_string())?;
            return Ok(Outcome::Unavailable(e.to_string()));
        }
    };
    if info.source != key {
        return Err(format!(
            "{key}: open() says its source is `{}`",
            info.source
        ));
    }
    let mut last_t: BTreeMap<u32, f64> = BTreeMap::new();
    let mut stats = source.stats();
    let (mut batches, mut samples, mut ended) = (0usize, 0usize, false);
    while batches < max_batches {
        match source.next_batch().await {
            Ok(Some(b)) => {
                batches += 1;
                samples += b.samples.len();
                for s in &b.samples {
                    if let Some(t) = last_t.get(&s.channel) {
                        if s.t_ms < *t {
                            return Err(format!(
                                "{key}: channel {} went back in time: {} ms after {t} ms",
                                s.channel, s.t_ms
                            ));
                        }
                    }
                    last_t.insert(s.channel, s.t_ms);
                }
                let now = source.stats();
                stats_grew(key, &stats, &now)?;
                stats = now;
            }
            Ok(None) => {
                ended = true;
                break;
            }
            Err(e) => {
                names(key, &e.to_string())?;
                let _ = source.close().await;
                return Err(format!(
                    "{key}: next_batch failed after {batches} batch(es): {e}"
                ));
            }
        }
    }
    if samples == 0 {
        return Err(format!(
            "{key}: opened, but {batches} batch(es) held no sample"
        ));
    }
    source
        .close()
        .await
        .map_err(|e| format!("{key}: close failed: {e}"))?;
    stats_grew(key, &stats, &source.stats())?;
    Ok(Outcome::Ran(format!(
        "{batches} batch(es), {samples} sample(s) on {} channel(s){}",
        last_t.len(),
        if ended { ", then the end" } else { "" }
    )))
}

/// Drives a backend: `start`, one generation and/or one log-likelihood request as its
/// capabilities announce, `stop`.
pub async fn check_backend(
    key: &str,
    mut backend: Box<dyn InferenceBackend>,
) -> Result<Outcome, String> {
    let info = match backend.start().await {
        Ok(info) => info,
        Err(e) => {
            names(key, &e.to_string())?;
            let _ = backend.stop().await;
            return Ok(Outcome::Unavailable(e.to_string()));
        }
    };
    let caps = backend.capabilities();
    let mut did = Vec::new();
    let result = async {
        if caps.completions || caps.chat {
            let req = GenerateRequest {
                prompt: "Question: What is 2 + 2?\nAnswer:".into(),
                chat: !caps.completions,
                max_tokens: 4,
                stop: vec!["\n".into()],
                stream: false,
            };
            let r = backend.generate(&req).await.map_err(|e| {
                names(key, &e.to_string())
                    .err()
                    .unwrap_or(format!("{key}: generate failed: {e}"))
            })?;
            if let Some(n) = r.tokens_out {
                if n > u64::from(req.max_tokens) {
                    return Err(format!("{key}: {n} tokens generated for max_tokens 4"));
                }
            }
            if r.latency_s.is_nan() || r.latency_s < 0.0 {
                return Err(format!("{key}: latency {} s", r.latency_s));
            }
            did.push("generate".to_string());
        }
        if !matches!(caps.loglikelihood, LoglikelihoodSupport::None) {
            let req = LoglikelihoodRequest {
                context: "Question: Which is a colour?\nAnswer:".into(),
                continuations: vec![" red".into(), " seven".into()],
            };
            let r = backend.loglikelihood(&req).await.map_err(|e| {
                names(key, &e.to_string())
                    .err()
                    .unwrap_or(format!("{key}: loglikelihood failed: {e}"))
            })?;
            if r.scores.len() != req.continuations.len() {
                return Err(format!(
                    "{key}: {} scores for 2 continuations",
                    r.scores.len()
                ));
            }
            for s in &r.scores {
                if (s.logprob.is_nan() && s.exact) || s.logprob > 0.0 || s.n_tokens == 0 {
                    return Err(format!(
                        "{key}: a score of {} over {} tokens",
                        s.logprob, s.n_tokens
                    ));
                }
            }
            did.push(format!("loglikelihood ({})", r.method));
        }
        Ok(())
    }
    .await;
    let stopped = backend.stop().await;
    result?;
    stopped.map_err(|e| format!("{key}: stop failed: {e}"))?;
    if did.is_empty() {
        return Err(format!(
            "{key}: started ({}), but announces no way to query it",
            info.server
        ));
    }
    Ok(Outcome::Ran(format!(
        "{} on {}",
        did.join(" and "),
        info.server
    )))
}

/// Checks a suite: its info and items, and that `aggregate` scores all-wrong as 0 and
/// all-right as 1.
pub fn check_suite(key: &str, suite: &dyn Suite) -> Result<Outcome, String> {
    let info = suite.info();
    let items = match suite.items() {
        Ok(items) => items,
        Err(e) => {
            names(key, &e.to_string())?;
            return Ok(Outcome::Unavailable(e.to_string()));
        }
    };
    if items.is_empty() {
        return Err(format!("{key}: no items"));
    }
    if info.key != key {
        return Err(format!("{key}: info() says its key is `{}`", info.key));
    }
    let mut ids = HashSet::new();
    for it in &items {
        if !ids.insert(it.doc_id.clone()) {
            return Err(format!("{key}: doc id `{}` twice", it.doc_id));
        }
        if it.suite != key {
            return Err(format!(
                "{key}: item `{}` says its suite is `{}`",
                it.doc_id, it.suite
            ));
        }
        if let Some(g) = it.gold {
            if g >= it.choices.len() {
                return Err(format!(
                    "{key}: item `{}` has gold {g} of {} choices",
                    it.doc_id,
                    it.choices.len()
                ));
            }
        }
        if it.context.is_empty() && it.question.is_empty() {
            return Err(format!("{key}: item `{}` has no text", it.doc_id));
        }
    }
    let graded: Vec<_> = items.iter().filter(|i| i.gold.is_some()).collect();
    if !graded.is_empty() {
        for (right, want) in [(false, 0.0), (true, 1.0)] {
            let outcomes: Vec<ItemOutcome> = graded
                .iter()
                .map(|i| {
                    let gold = i.gold.unwrap_or(0);
                    let p = if right {
                        gold
                    } else {
                        (gold + 1) % i.choices.len().max(1)
                    };
                    ItemOutcome {
                        doc_id: i.doc_id.clone(),
                        subject: i.subject.clone(),
                        gold: i.gold,
                        prediction: Some(p),
                        prediction_norm: Some(p),
                        failed: false,
                        unparseable: false,
                    }
                })
                .collect();
            let score = suite.aggregate(&outcomes, ScoringMode::Loglikelihood);
            let got = score.headline_value();
            let multi = info.has_accuracy && graded.iter().all(|i| i.choices.len() > 1);
            if multi && got != Some(want) {
                return Err(format!(
                    "{key}: all {} answers {}: headline {:?}, expected {want}",
                    outcomes.len(),
                    if right { "right" } else { "wrong" },
                    got
                ));
            }
            if score.n_items != outcomes.len() {
                return Err(format!(
                    "{key}: aggregate counted {} of {} items",
                    score.n_items,
                    outcomes.len()
                ));
            }
        }
    }
    Ok(Outcome::Ran(format!(
        "{} items ({}), {} graded",
        items.len(),
        info.benchmark_key,
        graded.len()
    )))
}
