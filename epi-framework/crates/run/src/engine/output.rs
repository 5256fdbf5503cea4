//! The files of a finished run built from its state: `benchmark.json` (the median repetition),
//! `epi.json` (what `epi calculate` gives for the trace and that benchmark JSON, checked against
//! the attributed energy to 1e-9), the trace's sidecar (phases, clock mapping) and
//! `summary.json`. Each fails with an [`Error`] that the caller turns into a warning or a
//! [`RunError`].

use super::state::State;
use super::{rfc3339_now, RunEngine};
use crate::calculator::{EpiCalculator, ResultLabels};
use crate::recorder::Recording;
use crate::report::{self, RepetitionReport, RunStatus};
use epi_core::backend::ScoringMode;
use epi_core::benchmark::BenchmarkResult;
use epi_core::error::Error;
use epi_core::result::EpiResult;
use epi_trace::{PowerTrace, TraceOptions};
use serde_json::{json, Map, Value};

impl RunEngine<'_> {
    /// The benchmark JSON of the median repetition (`None`: token counts unknown or no score).
    pub(super) fn benchmark_for(
        &self,
        state: &State,
        m: &RepetitionReport,
        mode: ScoringMode,
        recording: &Option<Recording>,
    ) -> Result<Option<BenchmarkResult>, Error> {
        if m.scores.is_empty() {
            return Ok(None);
        }
        if m.tokens_unknown > 0 && mode == ScoringMode::Generative {
            return Err(Error::Invalid(format!(
                "the generated-token count of {} queries is unknown (streamed replies without \
                 usage?), so total_tokens would undercount; run without --stream",
                m.tokens_unknown
            )));
        }
        let info = state.backend.clone().unwrap_or_default();
        let labels = &self.options.labels;
        let tokens = report::basis_tokens(m, mode);
        let mut extra = Map::new();
        extra.insert("run_id".into(), json!(self.options.eval.run_id));
        extra.insert("backend".into(), json!(info.backend));
        extra.insert("repetition".into(), json!(m.repetition));
        extra.insert("repetitions".into(), json!(self.options.repetitions));
        extra.insert("tokens_out".into(), json!(m.tokens_out));
        extra.insert("tokens_cached".into(), json!(m.tokens_cached));
        if let Some(meth) = info.details.get("loglikelihood_method") {
            extra.insert("loglikelihood_method".into(), meth.clone());
        }
        extra.insert("hardware_source".into(), json!(state.hardware.1));
        let duration = match (&m.energy, m.span_s) {
            (Some(e), _) => e.duration_s,
            (None, Some((a, b))) => b - a,
            _ => 0.0,
        };
        Ok(Some(BenchmarkResult {
            model: labels
                .model
                .clone()
                .or_else(|| info.model.clone())
                .unwrap_or_else(|| "unknown".into()),
            quantization: labels
                .quantization
                .clone()
                .unwrap_or_else(|| "unknown".into()),
            surgery: labels
                .surgery
                .clone()
                .unwrap_or_else(|| "none (baseline)".into()),
            benchmarks: m.scores.clone(),
            total_tokens: tokens,
            duration_seconds: duration,
            timestamp_utc: self.started_utc.clone(),
            hardware: state.hardware.0.clone(),
            inference_engine: if info.server.is_empty() {
                "unknown".into()
            } else {
                info.server.clone()
            },
            inference_engine_version: info.version.clone().unwrap_or_else(|| "unknown".into()),
            tokens_in: Some(m.tokens_in),
            token_basis: Some(report::token_basis(mode).into()),
            scoring_mode: Some(mode.as_str().into()),
            benchmark_items: m.items.clone(),
            benchmark_ci95: m.ci95.clone(),
            energy_window_ms: recording
                .as_ref()
                .and(m.energy.as_ref().map(|e| e.window_trace_ms)),
            extra,
        }))
    }

    /// `epi.json`: what `epi calculate` computes from the run's trace and benchmark JSON; its
    /// energy must be the attributed total (checked to 1e-9).
    pub(super) fn epi_for(
        &self,
        state: &State,
        bench: &BenchmarkResult,
        m: &RepetitionReport,
        rec: &Recording,
        energy_rel: f64,
    ) -> Result<EpiResult, Error> {
        let opts = TraceOptions {
            gap_limit_ms: self.options.gap_limit_ms,
            ..TraceOptions::default()
        };
        let trace = PowerTrace::for_benchmark(self.dir.trace(), bench, &opts)?;
        let mut calc = EpiCalculator::new()
            .with_labels(ResultLabels {
                measurement_point: Some(measurement_point(&rec.meta.source)),
                ..ResultLabels::default()
            })
            .with_energy_accuracy(energy_rel)
            .with_repetition(m.repetition);
        if let Some(w) = state.idle_watts {
            calc = calc.with_idle_watts(w);
        }
        // EPT beside EPI, as `epi calculate` adds it (when the scorer is registered).
        let registry = epi_core::registry::Registry::builtin();
        if registry
            .get(epi_core::registry::PluginKind::Scorer, "ept")
            .is_ok()
        {
            calc = calc.with_extra_scorer("ept", registry.scorer("ept", &Value::Null)?);
        }
        let mut r = calc.calculate(&trace, bench)?;
        // The files it was computed from, as `epi calculate` records them (`epi validate` checks).
        let mut digests = Map::new();
        digests.insert(
            "trace".into(),
            json!(epi_core::result::file_digest(&self.dir.trace())?),
        );
        if trace.meta.is_some() {
            let sidecar = epi_trace::TraceMeta::path_for(&self.dir.trace());
            digests.insert(
                "trace_meta".into(),
                json!(epi_core::result::file_digest(&sidecar)?),
            );
        }
        digests.insert(
            "benchmark".into(),
            json!(epi_core::result::file_digest(&self.dir.benchmark())?),
        );
        r.run_metadata
            .extra
            .insert("benchmark_file".into(), json!("benchmark.json"));
        r.run_metadata.extra.insert(
            epi_core::result::INPUT_DIGESTS.into(),
            Value::Object(digests),
        );
        if let Some(e) = &m.energy {
            let rel = (r.energy.total_joules - e.total_j).abs() / e.total_j.abs().max(1e-300);
            if rel > 1e-9 {
                return Err(Error::Invalid(format!(
                    "the trace gives {} J over the window, the attribution {} J (relative {rel:e})",
                    r.energy.total_joules, e.total_j
                )));
            }
        }
        r.run_metadata.run_id = self.options.eval.run_id.clone();
        Ok(r)
    }

    /// The sidecar with the phases and the clock mapping in trace time.
    pub(super) fn write_trace_meta(&self, rec: &Recording, state: &State) -> Result<(), Error> {
        let Some(clock) = &rec.clock else {
            return Ok(());
        };
        let mut meta = rec.meta.clone();
        let phases: Vec<Value> = rec
            .phases
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "start_ms": p.start_ms - clock.offset_ms,
                    "end_ms": p.end_ms.map(|e| e - clock.offset_ms),
                })
            })
            .collect();
        meta.extra.insert("phases".into(), json!(phases));
        meta.extra.insert("clock".into(), json!(clock));
        meta.extra
            .insert("run_id".into(), json!(self.options.eval.run_id));
        if let Some(w) = state.idle_watts {
            meta.extra.insert("idle_watts".into(), json!(w));
        }
        meta.write_for(&self.dir.trace())
    }

    pub(super) fn summary(&self, state: &State, status: RunStatus) -> Value {
        let o = &self.options;
        let median = state
            .median
            .and_then(|m| state.reps.iter().find(|r| r.repetition == m));
        let fig = |f: &dyn Fn(&RepetitionReport) -> Option<f64>| {
            report::spread(&state.reps.iter().filter_map(f).collect::<Vec<_>>())
        };
        let mode = state.mode.map(|m| m.as_str());
        json!({
            "format_version": 1,
            "command": o.command,
            "run_id": o.eval.run_id,
            "status": status.as_str(),
            "error": state.error,
            "started_utc": self.started_utc,
            "ended_utc": (status != RunStatus::Running).then(rfc3339_now),
            "epi_bench_version": epi_core::VERSION,
            "scoring_mode": mode,
            "token_basis": state.mode.map(report::token_basis),
            "concurrency": state.concurrency,
            "protocol": {
                "repetitions": o.repetitions,
                "warmup_s": o.warmup.seconds,
                "warmup_queries": o.warmup.queries,
                "idle_s": o.idle_s,
                "gap_limit_ms": o.gap_limit_ms,
                "allow_failures": o.allow_failures,
            },
            "labels": {
                "model": o.labels.model.clone().or_else(|| state.backend.as_ref().and_then(|b| b.model.clone())),
                "quantization": o.labels.quantization,
                "surgery": o.labels.surgery,
                "hardware": state.hardware.0,
                "hardware_source": state.hardware.1,
            },
            "backend": state.backend,
            "power": state.power_info,
            "clock": state.clock,
            "warmup": state.warmup,
            "idle": {
                "watts": state.idle_watts,
                "seconds": state.idle_run_ms.map(|(a, b)| (b - a) / 1000.0),
                "window_trace_ms": state.idle_window_trace_ms,
            },
            "repetitions": state.reps,
            "median_repetition": state.median,
            "spread": {
                "epi": fig(&|r| r.metrics.as_ref().map(|m| m.epi)),
                "energy_j": fig(&|r| r.energy.as_ref().map(|e| e.total_j)),
                "accuracy": fig(&|r| r.accuracy),
                "duration_s": fig(&|r| r.energy.as_ref().map(|e| e.duration_s)),
            },
            "suites": median.or(state.reps.last()).map(|r| r.suites.clone()).unwrap_or_default(),
            "tokens_in": state.reps.iter().map(|r| r.tokens_in).sum::<u64>(),
            "tokens_out": state.reps.iter().map(|r| r.tokens_out).sum::<u64>(),
            "metrics": median.and_then(|m| m.metrics.clone()),
            "accuracy": median.and_then(|m| m.accuracy),
            "accuracy_ci95": median.and_then(|m| m.accuracy_ci95),
        })
    }
}

/// What the source measures, from its channels' scopes (`ac-inlet`, `gpu`, `cpu-package`).
pub(super) fn measurement_point(info: &epi_core::sample::SourceInfo) -> String {
    let mut scopes: Vec<&str> = info.channels.iter().map(|c| c.scope.as_str()).collect();
    scopes.sort();
    scopes.dedup();
    let what = if scopes.is_empty() {
        "unknown".to_string()
    } else {
        scopes.join(" + ")
    };
    match info.method {
        epi_core::sample::EnergyMethod::Modelled => format!("modelled ({what}; {})", info.source),
        _ => what,
    }
}
