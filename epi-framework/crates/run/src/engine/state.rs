//! [`State`]: what the run knows as it goes, filled in by each step and read by `finish` and
//! `summary.json`. The first failure recorded is the one reported.

use super::{FailureKind, Stop};
use crate::eval::SuiteRun;
use crate::report::{RepetitionReport, RunStatus};
use crate::RunOptions;
use epi_core::backend::{BackendInfo, ScoringMode};
use serde_json::Value;

/// What the run knows as it goes.
pub(super) struct State {
    pub(super) status: Option<RunStatus>,
    pub(super) error: Option<String>,
    pub(super) failure: Option<FailureKind>,
    pub(super) mode: Option<ScoringMode>,
    pub(super) concurrency: usize,
    pub(super) backend: Option<BackendInfo>,
    pub(super) power_info: Option<epi_core::sample::SourceInfo>,
    pub(super) hardware: (String, &'static str),
    pub(super) warmup: Value,
    pub(super) idle_run_ms: Option<(f64, f64)>,
    pub(super) idle_window_trace_ms: Option<(f64, f64)>,
    pub(super) idle_watts: Option<f64>,
    pub(super) windows_run_ms: Vec<(u32, (f64, f64))>,
    pub(super) runs: Vec<(u32, Vec<SuiteRun>, usize)>,
    pub(super) reps: Vec<RepetitionReport>,
    pub(super) median: Option<u32>,
    pub(super) clock: Option<Value>,
}

impl State {
    pub(super) fn new(o: &RunOptions) -> State {
        State {
            status: None,
            error: None,
            failure: None,
            mode: None,
            concurrency: 0,
            backend: None,
            power_info: None,
            hardware: (
                o.labels
                    .hardware
                    .clone()
                    .unwrap_or_else(|| "unknown".into()),
                if o.labels.hardware.is_some() {
                    "user"
                } else {
                    "unknown"
                },
            ),
            warmup: Value::Null,
            idle_run_ms: None,
            idle_window_trace_ms: None,
            idle_watts: None,
            windows_run_ms: Vec::new(),
            runs: Vec::new(),
            reps: Vec::new(),
            median: None,
            clock: None,
        }
    }

    pub(super) fn fail(&mut self, kind: FailureKind, msg: String) {
        if self.failure.is_none() {
            self.failure = Some(kind);
            self.error = Some(msg);
        }
    }

    pub(super) fn stop(&mut self, s: Stop) {
        match s {
            Stop::Cancelled => self.status = Some(RunStatus::Interrupted),
            Stop::PowerLost(e) => {
                self.fail(FailureKind::Runtime, format!("power source lost: {e}"))
            }
        }
    }
}
