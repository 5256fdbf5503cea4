//! [`RunEngine::execute`]: the run's first steps (opening the power source, which must deliver
//! samples within a few seconds; starting the backend, a marked phase outside every energy
//! window), then the measurement and the end. A source or backend that refuses its configuration
//! fails the run as [`FailureKind::Configuration`], any other fault as
//! [`FailureKind::Runtime`]; Ctrl-C interrupts it; every path goes through `finish`.

use super::hardware::hardware_label;
use super::state::State;
use super::{cancelled, FailureKind, RunEngine, RunError, RunOutcome, RunPower, Stop, SuiteSpec};
use crate::observe::RunEvent;
use crate::recorder::{PowerRecorder, RecorderError};
use crate::report::RunStatus;
use epi_core::backend::{BackendError, InferenceBackend};
use epi_core::power::PowerError;
use epi_records::RecordSink;
use std::time::Duration;
use tokio::sync::watch;

impl RunEngine<'_> {
    /// Carries out the run. `cancel` turning `true` (Ctrl-C) ends it early, keeping everything.
    pub async fn execute(
        &self,
        backend: &mut dyn InferenceBackend,
        power: Option<RunPower>,
        suites: &[SuiteSpec],
        mut cancel: watch::Receiver<bool>,
    ) -> Result<RunOutcome, RunError> {
        let o = &self.options;
        let mut state = State::new(o);
        self.write_summary(&self.summary(&state, RunStatus::Running))?;
        self.log(&format!(
            "epi {} {} — run {} in {}",
            o.command,
            epi_core::VERSION,
            o.eval.run_id,
            self.dir.path.display()
        ));
        let mut sink = RecordSink::create(&self.dir.path, 1024)?;

        // 1. The power source: open, check it measures, record from here to the end.
        let mut recorder: Option<PowerRecorder> = None;
        if let Some(p) = power {
            self.event(RunEvent::Phase {
                name: "power-source".into(),
                detail: format!("opening {} and waiting for its first samples", p.key),
            });
            let trace = self.dir.trace();
            let recorded_by = format!("epi {}", o.command);
            let start = PowerRecorder::start(
                &p.key,
                p.source,
                &trace,
                self.origin,
                self.origin_utc_ms,
                Duration::from_secs_f64(o.first_sample_timeout_s.max(0.1)),
                &recorded_by,
            );
            match self.guarded(start, &mut cancel, None).await {
                Ok(Ok(r)) => {
                    state.power_info = Some(r.info().clone());
                    self.log(&format!(
                        "power source {}: {} ({})",
                        p.key,
                        r.info().instrument,
                        r.info().method
                    ));
                    recorder = Some(r);
                }
                Ok(Err(e)) => {
                    let kind = match &e {
                        RecorderError::Power(PowerError::Config { .. }) => {
                            FailureKind::Configuration
                        }
                        _ => FailureKind::Runtime,
                    };
                    state.fail(kind, e.to_string());
                    return self.finish(state, sink, None, backend, false).await;
                }
                Err(_) => {
                    state.status = Some(RunStatus::Interrupted);
                    return self.finish(state, sink, None, backend, false).await;
                }
            }
        }

        // 2. The backend: started outside every energy window (a marked phase of the trace).
        self.event(RunEvent::Phase {
            name: "backend-start".into(),
            detail: "starting the backend (model loading is outside every energy window)".into(),
        });
        let phase = recorder.as_ref().map(|r| r.begin_phase("backend-start"));
        let mut progress = backend.startup_progress();
        let started = {
            let fut = backend.start();
            tokio::pin!(fut);
            let rec = recorder.as_ref();
            loop {
                let changed = async {
                    match progress.as_mut() {
                        Some(p) => {
                            if p.changed().await.is_err() {
                                std::future::pending::<()>().await;
                            }
                            p.borrow().clone()
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    r = &mut fut => break Ok(r),
                    _ = cancelled(&mut cancel) => break Err(Stop::Cancelled),
                    p = changed => if let Some(p) = p { self.observer.event(RunEvent::BackendWaiting(p)) },
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {
                        if let Some(e) = rec.and_then(|r| r.failed()) {
                            break Err(Stop::PowerLost(e));
                        }
                    }
                }
            }
        };
        if let (Some(r), Some(i)) = (recorder.as_ref(), phase) {
            r.end_phase(i);
        }
        let info = match started {
            Ok(Ok(info)) => info,
            Ok(Err(e)) => {
                let kind = match &e {
                    BackendError::InvalidRequest { .. } => FailureKind::Configuration,
                    _ => FailureKind::Runtime,
                };
                state.fail(kind, format!("starting the backend: {e}"));
                return self.finish(state, sink, recorder, backend, false).await;
            }
            Err(stop) => {
                state.stop(stop);
                return self.finish(state, sink, recorder, backend, true).await;
            }
        };
        self.log(&format!(
            "backend: {} {} ({}), model {}",
            info.backend,
            info.server,
            info.version.as_deref().unwrap_or("version unknown"),
            info.model.as_deref().unwrap_or("unknown")
        ));
        for w in &info.warnings {
            self.event(RunEvent::Warning(format!("backend: {w}")));
        }
        state.hardware = hardware_label(&o.labels, &info);
        state.backend = Some(info);
        self.write_summary(&self.summary(&state, RunStatus::Running))?;

        let stopped = self
            .measure(
                &mut state,
                &*backend,
                recorder.as_ref(),
                suites,
                &mut sink,
                &mut cancel,
            )
            .await;
        if let Err(stop) = stopped {
            state.stop(stop);
        }
        self.finish(state, sink, recorder, backend, true).await
    }
}
