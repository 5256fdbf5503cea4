//! The end of every run (steps 5–6): the backend and the recording are stopped, energy is
//! attributed to the queries, each repetition is scored, the status decided (a run with failed
//! queries is incomplete unless failures are allowed), the median repetition's result files
//! written and `summary.json` rewritten. A file that cannot be written is a [`RunError`]; a
//! result that cannot be computed is a warning and leaves that file out.

use super::state::State;
use super::{RunEngine, RunError, RunOutcome};
use crate::attribution::{self, RepetitionEnergy};
use crate::observe::RunEvent;
use crate::recorder::{PowerRecorder, Recording};
use crate::report::{self, RepetitionReport, RunStatus};
use epi_core::backend::{InferenceBackend, ScoringMode};
use epi_records::{self as records, RecordSink};
use serde_json::json;

impl RunEngine<'_> {
    /// Stops everything, attributes, scores, writes every file, returns the outcome.
    pub(super) async fn finish(
        &self,
        mut state: State,
        sink: RecordSink,
        recorder: Option<PowerRecorder>,
        backend: &mut dyn InferenceBackend,
        stop_backend: bool,
    ) -> Result<RunOutcome, RunError> {
        if stop_backend {
            if let Err(e) = backend.stop().await {
                self.event(RunEvent::Warning(format!("stopping the backend: {e}")));
            }
        }
        sink.finish()?;
        let mut recording: Option<Recording> = None;
        if let Some(mut r) = recorder {
            let key = r.key().to_string();
            match r.stop().await {
                Ok(rec) => {
                    if let Some(e) = &rec.error {
                        self.log(&format!("power source stopped with: {e}"));
                    }
                    if let Some(w) = source_trouble(&key, &rec.meta, &self.dir.trace()) {
                        self.event(RunEvent::Warning(w));
                    }
                    recording = Some(rec)
                }
                Err(e) => self.event(RunEvent::Warning(format!("closing the recording: {e}"))),
            }
        }
        self.event(RunEvent::Phase {
            name: "attribution".into(),
            detail: "attributing energy and scoring".into(),
        });
        let mut records = records::read_jsonl_records(&self.dir.records_jsonl())?;
        let mode = state.mode.unwrap_or(ScoringMode::Generative);

        // 5. Energy attributed to the queries; the idle baseline.
        let mut energies: Vec<RepetitionEnergy> = Vec::new();
        let energy_rel = self
            .options
            .energy_accuracy
            .or_else(|| recording.as_ref().and_then(|r| r.meta.source.accuracy_rel))
            .unwrap_or(0.02);
        if let Some(rec) = &recording {
            if let Some(clock) = &rec.clock {
                let series = attribution::series_of(&rec.samples, self.options.gap_limit_ms);
                if let Some((a, b)) = state.idle_run_ms {
                    state.idle_watts =
                        attribution::mean_watts(&series, a - clock.offset_ms, b - clock.offset_ms);
                    state.idle_window_trace_ms = Some((a - clock.offset_ms, b - clock.offset_ms));
                }
                energies = attribution::attribute_run(
                    &series,
                    clock.offset_ms,
                    &state.windows_run_ms,
                    &mut records,
                    state.idle_watts,
                );
                self.write_trace_meta(rec, &state)?;
            }
            state.clock = rec.clock.clone().map(|c| json!(c));
        }
        if !records.is_empty() {
            records::rewrite_records(&self.dir.path, &records)?;
        }

        // 6. Scores and metrics per repetition.
        let mut reps: Vec<RepetitionReport> = Vec::new();
        for (rep, runs, planned) in &state.runs {
            let mut r = report::repetition_report(*rep, runs, *planned);
            if let Some(e) = energies.iter().find(|e| e.repetition == *rep) {
                report::with_energy(&mut r, e.clone(), mode, energy_rel, &records);
            }
            reps.push(r);
        }
        let failed: usize = reps.iter().map(|r| r.failed).sum();
        let status = match state.status {
            Some(s) => s,
            None if state.failure.is_some() => RunStatus::Failed,
            None if reps.iter().any(|r| !r.finished) => RunStatus::Incomplete,
            None if failed > 0 && !self.options.allow_failures => {
                let first = records
                    .iter()
                    .find_map(|r| Some(format!("{} {}: {}", r.suite, r.doc_id, r.error.as_ref()?)))
                    .map(|f| format!("the first: {f}; "))
                    .unwrap_or_default();
                state.error = Some(format!(
                    "{failed} quer{} failed ({first}see the records' `error` field); no benchmark \
                     result without --allow-failures",
                    if failed == 1 { "y" } else { "ies" }
                ));
                RunStatus::Incomplete
            }
            None => RunStatus::Complete,
        };
        let median = report::median_repetition(&reps);
        state.median = median;
        let median_rep = median.and_then(|m| reps.iter().find(|r| r.repetition == m).cloned());

        let mut benchmark = None;
        let mut epi = None;
        if status == RunStatus::Complete {
            if let Some(m) = &median_rep {
                match self.benchmark_for(&state, m, mode, &recording) {
                    Ok(Some(b)) => {
                        b.to_json(self.dir.benchmark())?;
                        benchmark = Some(self.dir.benchmark());
                        if let Some(rec) = &recording {
                            match self.epi_for(&state, &b, m, rec, energy_rel) {
                                Ok(r) => {
                                    r.to_json(self.dir.epi())?;
                                    epi = Some(r);
                                }
                                Err(e) => {
                                    self.event(RunEvent::Warning(format!("no EPI result: {e}")))
                                }
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(e) => self.event(RunEvent::Warning(format!("no benchmark result: {e}"))),
                }
            }
        }
        state.reps = reps;
        let mut summary = self.summary(&state, status);
        summary["files"] = json!({
            "power_trace": recording.as_ref().map(|_| self.dir.trace()),
            "records_jsonl": self.dir.records_jsonl(),
            "records_arrow": self.dir.records_arrow(),
            "benchmark": benchmark,
            "epi": epi.as_ref().map(|_| self.dir.epi()),
            "log": self.dir.log(),
        });
        self.write_summary(&summary)?;
        self.log(&format!(
            "run {}: {}",
            status.as_str(),
            state.error.as_deref().unwrap_or("")
        ));
        Ok(RunOutcome {
            dir: self.dir.clone(),
            status,
            error: state.error.clone(),
            failure: state.failure,
            summary,
            median: median_rep,
            repetitions: state.reps.clone(),
            benchmark,
            epi,
        })
    }
}

/// What went wrong on the power source's side during a run that it survived (disconnections,
/// reboots, lost samples, bad lines), in one line; `None` when nothing did.
pub(super) fn source_trouble(
    key: &str,
    meta: &epi_trace::TraceMeta,
    trace: &std::path::Path,
) -> Option<String> {
    let st = &meta.stats;
    let n = |k: u64, one: &str, many: &str| format!("{k} {}", if k == 1 { one } else { many });
    let mut parts = Vec::new();
    if st.reconnects > 0 || st.disconnected_ms > 0.0 {
        parts.push(format!(
            "disconnected {} ({:.1} s without data)",
            n(st.reconnects.max(1), "time", "times"),
            st.disconnected_ms / 1000.0
        ));
    }
    if st.reboots > 0 {
        parts.push(format!("rebooted {}", n(st.reboots, "time", "times")));
    }
    if st.lost_samples > 0 {
        parts.push(format!("{} lost", n(st.lost_samples, "sample", "samples")));
    }
    if st.bad_lines > 0 {
        parts.push(n(st.bad_lines, "bad line", "bad lines"));
    }
    (!parts.is_empty()).then(|| {
        format!(
            "{key}: {}; the events are in {}",
            parts.join(", "),
            epi_trace::TraceMeta::path_for(trace).display()
        )
    })
}
