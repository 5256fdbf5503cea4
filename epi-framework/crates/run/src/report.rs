//! What a run reports: per repetition the suites' scores (over answered items), the composite
//! accuracy with its interval, the token counts and the energy metrics (EPI with its interval,
//! EPT_in/out/total, IPJ, IPW), every formula from [`epi_core::metrics`]; the median repetition and
//! the spread of all of them; the benchmark JSON of the median repetition.
//!
//! **Token basis.** Generative scoring divides by the generated tokens (the paper's EPI).
//! Log-likelihood scoring generates nothing useful (one throw-away token per scoring request),
//! so its EPI divides by the **processed** tokens — the prompt tokens the engine evaluated
//! (`tokens_in` less those served from its prefix cache, where the server says) — and says
//! `token_basis: processed` everywhere it appears.

use super::attribution::RepetitionEnergy;
use crate::eval::SuiteRun;
use epi_core::backend::ScoringMode;
use epi_core::metrics;
use epi_core::suite::SuiteScore;
use epi_records::QueryRecord;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Still running — or killed (`kill -9`): treat as incomplete.
    Running,
    /// Every item of every repetition answered (or failures allowed).
    Complete,
    /// Finished, but some queries failed (no benchmark result unless failures are allowed).
    Incomplete,
    /// Ctrl-C / SIGTERM.
    Interrupted,
    /// Stopped by a fault (backend lost, power source lost, I/O).
    Failed,
}

impl RunStatus {
    /// `running`, `complete`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Complete => "complete",
            RunStatus::Incomplete => "incomplete",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Failed => "failed",
        }
    }
}

/// The token count EPI divides by.
pub fn token_basis(mode: ScoringMode) -> &'static str {
    match mode {
        ScoringMode::Generative => "generated",
        ScoringMode::Loglikelihood => "processed",
    }
}

/// The token count EPI divides by: generated tokens, or the prompt tokens evaluated (those
/// served from the prefix cache left out).
pub fn basis_tokens(r: &RepetitionReport, mode: ScoringMode) -> u64 {
    match mode {
        ScoringMode::Generative => r.tokens_out,
        ScoringMode::Loglikelihood => r.tokens_in.saturating_sub(r.tokens_cached),
    }
}

/// Energy metrics of one repetition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnergyMetrics {
    /// EPI = (E / T) / A, T on `token_basis`.
    pub epi: f64,
    /// EPI's interval (energy accuracy × accuracy interval).
    pub epi_ci95: Option<(f64, f64)>,
    /// EPI on net energy.
    pub epi_net: Option<f64>,
    /// E / T.
    pub joules_per_token: f64,
    /// `generated` or `processed`.
    pub token_basis: String,
    /// T.
    pub tokens: u64,
    /// E / T_in.
    pub ept_in: Option<f64>,
    /// E / T_out.
    pub ept_out: Option<f64>,
    /// E / (T_in + T_out).
    pub ept_total: Option<f64>,
    /// A / mean energy per query.
    pub ipj: Option<f64>,
    /// A / mean power per query.
    pub ipw: Option<f64>,
    /// Mean cluster power over the window, W.
    pub avg_watts: f64,
}

/// One repetition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepetitionReport {
    /// Repetition (1-based).
    pub repetition: u32,
    /// Every suite ran to its end.
    pub finished: bool,
    /// Queries that failed.
    pub failed: usize,
    /// Generative answers that could not be read.
    pub unparseable: usize,
    /// Headline score per benchmark key (answered items).
    pub scores: BTreeMap<String, f64>,
    /// Answered items per benchmark key.
    pub items: BTreeMap<String, u64>,
    /// Interval per benchmark key.
    pub ci95: BTreeMap<String, (f64, f64)>,
    /// Composite accuracy (equal weights).
    pub accuracy: Option<f64>,
    /// Its interval.
    pub accuracy_ci95: Option<(f64, f64)>,
    /// Prompt tokens.
    pub tokens_in: u64,
    /// Generated tokens.
    pub tokens_out: u64,
    /// Prompt tokens served from the server's prefix cache (where it says).
    #[serde(default)]
    pub tokens_cached: u64,
    /// Queries whose generated-token count is unknown.
    pub tokens_unknown: usize,
    /// First and last instants of its queries, s on the run clock.
    pub span_s: Option<(f64, f64)>,
    /// Energy of its window.
    pub energy: Option<RepetitionEnergy>,
    /// Energy metrics.
    pub metrics: Option<EnergyMetrics>,
    /// Per suite, as `summary.json` shows it.
    pub suites: Vec<Value>,
}

/// A suite's row of `summary.json`.
pub fn suite_json(run: &SuiteRun, score: Option<&SuiteScore>) -> Value {
    json!({
        "suite": run.info.key,
        "benchmark_key": score.map(|s| s.benchmark_key.clone()).unwrap_or_else(|| run.info.benchmark_key.clone()),
        "shots": run.info.shots,
        "complete": run.done() == run.n_planned,
        "scoring_mode": run.mode.as_str(),
        "loglikelihood_method": run.method,
        "items_planned": run.n_planned,
        "items": run.done(),
        "answered": run.done() - run.failed(),
        "failed": run.failed(),
        "unparseable": run.unparseable(),
        "inexact_items": run.inexact_items,
        "headline": score.map(|s| s.headline.clone()),
        "headline_value": score.and_then(|s| s.headline_value()),
        "metrics": score.map(|s| json!(s.metrics)),
        "groups": score.map(|s| json!(s.groups)),
        "tokens_in": run.tokens_in,
        "tokens_out": run.tokens_out,
        "cached_tokens": run.cached_tokens,
        "requests": run.requests,
        "token_count_sources": run.token_count_sources,
        "span_s": run.span_s,
        "errors": run.errors,
        "tokens_unknown": run.tokens_unknown,
        "data": run.info.data,
    })
}

/// The report of one repetition's suite runs (scores only; energy added by [`with_energy`]).
pub fn repetition_report(
    repetition: u32,
    runs: &[SuiteRun],
    planned_suites: usize,
) -> RepetitionReport {
    let mut r = RepetitionReport {
        repetition,
        finished: runs.len() == planned_suites && runs.iter().all(|x| x.done() == x.n_planned),
        failed: runs.iter().map(SuiteRun::failed).sum(),
        unparseable: runs.iter().map(SuiteRun::unparseable).sum(),
        scores: BTreeMap::new(),
        items: BTreeMap::new(),
        ci95: BTreeMap::new(),
        accuracy: None,
        accuracy_ci95: None,
        tokens_in: runs.iter().map(|x| x.tokens_in).sum(),
        tokens_out: runs.iter().map(|x| x.tokens_out).sum(),
        tokens_cached: runs.iter().map(|x| x.cached_tokens).sum(),
        tokens_unknown: runs.iter().map(|x| x.tokens_unknown).sum(),
        span_s: runs
            .iter()
            .filter_map(|x| x.span_s)
            .fold(None, |acc, (s, e)| {
                Some(match acc {
                    None => (s, e),
                    Some((a, b)) => (f64::min(a, s), f64::max(b, e)),
                })
            }),
        energy: None,
        metrics: None,
        suites: Vec::new(),
    };
    for run in runs {
        let score = run.score.clone();
        r.suites.push(suite_json(run, score.as_ref()));
        let Some(score) = score else { continue };
        if !run.info.has_accuracy {
            continue;
        }
        let Some(v) = score.headline_value() else {
            continue;
        };
        r.scores.insert(score.benchmark_key.clone(), v);
        r.items
            .insert(score.benchmark_key.clone(), score.n_items as u64);
        if let Some(ci) = score.metrics.get(&score.headline).and_then(|m| m.ci95) {
            r.ci95.insert(score.benchmark_key.clone(), ci);
        }
    }
    if !r.scores.is_empty() {
        r.accuracy = metrics::composite_accuracy(&r.scores, None).ok();
        // Equal weights: (weight, value, interval) per suite, when every suite has an interval.
        type Part = (f64, f64, (f64, f64));
        let parts: Option<Vec<Part>> = r
            .scores
            .iter()
            .map(|(k, v)| r.ci95.get(k).map(|ci| (1.0, *v, *ci)))
            .collect();
        r.accuracy_ci95 = parts.and_then(|p| metrics::composite_interval(&p));
    }
    r
}

/// Adds the energy metrics of a repetition from its energy and its records' attributed energy.
pub fn with_energy(
    r: &mut RepetitionReport,
    energy: RepetitionEnergy,
    mode: ScoringMode,
    energy_rel: f64,
    records: &[QueryRecord],
) {
    let basis = token_basis(mode);
    let tokens = basis_tokens(r, mode);
    let e = energy.total_j;
    let per_query: Vec<(f64, f64)> = records
        .iter()
        .filter(|q| q.repetition == Some(r.repetition) && q.error.is_none())
        .filter_map(|q| q.energy_j.map(|j| (j, q.latency_s)))
        .collect();
    let energies: Vec<f64> = per_query.iter().map(|p| p.0).collect();
    let positive = |v: f64| (v.is_finite() && v > 0.0).then_some(v);
    r.metrics = match (r.accuracy, metrics::joules_per_token(e, tokens)) {
        (Some(a), Ok(jpt)) if a > 0.0 => Some(EnergyMetrics {
            epi: jpt / a,
            epi_ci95: r
                .accuracy_ci95
                .and_then(|ci| epi_interval(e, energy_rel, tokens, ci)),
            epi_net: energy
                .net_total_j
                .and_then(|n| metrics::epi(n, tokens, a).ok()),
            joules_per_token: jpt,
            token_basis: basis.into(),
            tokens,
            ept_in: metrics::ept_in(e, r.tokens_in).ok(),
            ept_out: metrics::ept_out(e, r.tokens_out).ok(),
            ept_total: metrics::ept_total(e, r.tokens_in, r.tokens_out).ok(),
            ipj: metrics::ipj(a, &energies).ok(),
            ipw: metrics::ipw(a, &per_query).ok(),
            avg_watts: positive(energy.duration_s).map_or(0.0, |d| e / d),
        }),
        _ => None,
    };
    r.energy = Some(energy);
}

/// EPI's interval; when the accuracy interval reaches 0 the upper end is unbounded (infinite,
/// written `null` in JSON) while the lower end still holds.
fn epi_interval(e: f64, rel: f64, tokens: u64, ci: (f64, f64)) -> Option<(f64, f64)> {
    match metrics::epi_interval(e, rel, tokens, ci) {
        Ok(i) => Some(i),
        Err(_) if ci.1 > 0.0 => metrics::joules_per_token(e, tokens)
            .ok()
            .map(|jpt| (jpt * (1.0 - rel) / ci.1, f64::INFINITY)),
        Err(_) => None,
    }
}

/// The median repetition among those that may stand for the run (finished, with a score): by
/// EPI when there is energy, else by composite accuracy; the lower middle one for an even count.
pub fn median_repetition(reps: &[RepetitionReport]) -> Option<u32> {
    let mut cands: Vec<&RepetitionReport> = reps
        .iter()
        .filter(|r| r.finished && r.accuracy.is_some())
        .collect();
    if cands.is_empty() {
        return None;
    }
    let key = |r: &RepetitionReport| {
        r.metrics
            .as_ref()
            .map(|m| m.epi)
            .or(r.accuracy)
            .unwrap_or(f64::NAN)
    };
    cands.sort_by(|a, b| key(a).total_cmp(&key(b)));
    Some(cands[(cands.len() - 1) / 2].repetition)
}

/// Min, max and every value of one figure over the repetitions.
pub fn spread(values: &[f64]) -> Value {
    if values.is_empty() {
        return Value::Null;
    }
    let min = values.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = values.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    json!({"min": min, "max": max, "values": values})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rep(n: u32, epi: Option<f64>, acc: f64, finished: bool) -> RepetitionReport {
        RepetitionReport {
            repetition: n,
            finished,
            failed: 0,
            unparseable: 0,
            scores: BTreeMap::new(),
            items: BTreeMap::new(),
            ci95: BTreeMap::new(),
            accuracy: Some(acc),
            accuracy_ci95: None,
            tokens_in: 0,
            tokens_out: 0,
            tokens_cached: 0,
            tokens_unknown: 0,
            span_s: None,
            energy: None,
            metrics: epi.map(|e| EnergyMetrics {
                epi: e,
                epi_ci95: None,
                epi_net: None,
                joules_per_token: e,
                token_basis: "generated".into(),
                tokens: 1,
                ept_in: None,
                ept_out: None,
                ept_total: None,
                ipj: None,
                ipw: None,
                avg_watts: 0.0,
            }),
            suites: Vec::new(),
        }
    }

    #[test]
    fn the_median_is_by_epi_among_finished_repetitions() {
        let reps = vec![
            rep(1, Some(3.0), 0.5, true),
            rep(2, Some(1.0), 0.5, true),
            rep(3, Some(2.0), 0.5, true),
            rep(4, Some(0.1), 0.5, false),
        ];
        assert_eq!(median_repetition(&reps), Some(3));
        assert_eq!(
            median_repetition(&reps[..2]),
            Some(2),
            "lower middle of two"
        );
        let no_energy = vec![
            rep(1, None, 0.7, true),
            rep(2, None, 0.6, true),
            rep(3, None, 0.9, true),
        ];
        assert_eq!(median_repetition(&no_energy), Some(1));
        assert_eq!(median_repetition(&reps[3..]), None);
        assert_eq!(token_basis(ScoringMode::Loglikelihood), "processed");
    }
}
