//! The measurement (steps 3–4): warm-up queries outside every energy window, the idle baseline,
//! then the repetitions, each a window from its first query to its last, closed by waiting for
//! the samples after it. A failed suite stops the repetitions with the failure recorded in the
//! run's state; Ctrl-C or a lost power source comes back as a `Stop`.

use super::state::State;
use super::{FailureKind, RunEngine, Stop, SuiteSpec};
use crate::eval::{EvalError, Evaluator};
use crate::observe::RunEvent;
use crate::recorder::PowerRecorder;
use epi_core::backend::InferenceBackend;
use epi_core::suite::SuiteItem;
use epi_records::RecordSink;
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::sync::watch;

impl RunEngine<'_> {
    /// Warm-up, idle baseline and the measured repetitions.
    pub(super) async fn measure(
        &self,
        state: &mut State,
        backend: &dyn InferenceBackend,
        rec: Option<&PowerRecorder>,
        suites: &[SuiteSpec],
        sink: &mut RecordSink,
        cancel: &mut watch::Receiver<bool>,
    ) -> Result<(), Stop> {
        let o = &self.options;
        let ev = match Evaluator::new(backend, o.eval.clone(), self.origin) {
            Ok(e) => e,
            Err(e) => {
                state.fail(FailureKind::Configuration, e.to_string());
                return Ok(());
            }
        };
        state.mode = Some(ev.mode());
        state.concurrency = ev.concurrency();

        // 3a. Warm-up: queries outside every energy window.
        if o.warmup.queries > 0 || o.warmup.seconds > 0.0 {
            self.event(RunEvent::Phase {
                name: "warmup".into(),
                detail: format!(
                    "warm-up: {} s, at least {} queries (not measured)",
                    o.warmup.seconds, o.warmup.queries
                ),
            });
            let items: Vec<SuiteItem> = suites.iter().flat_map(|s| s.items.clone()).collect();
            let phase = rec.map(|r| r.begin_phase("warmup"));
            let t0 = Instant::now();
            let r = self
                .guarded(
                    ev.warm_up(&items, o.warmup.queries, o.warmup.seconds),
                    cancel,
                    rec,
                )
                .await;
            if let (Some(r), Some(i)) = (rec, phase) {
                r.end_phase(i);
            }
            match r? {
                Ok((n, failed)) => {
                    state.warmup = json!({"queries": n, "failed": failed, "seconds": t0.elapsed().as_secs_f64()});
                }
                Err(e) => {
                    state.fail(FailureKind::Runtime, format!("warm-up: {e}"));
                    return Ok(());
                }
            }
        }
        drop(ev);

        // 3b. Idle baseline.
        if let Some(r) = rec.filter(|_| o.idle_s > 0.0) {
            self.event(RunEvent::Phase {
                name: "idle".into(),
                detail: format!("idle baseline: {} s with nothing running", o.idle_s),
            });
            let i = r.begin_phase("idle");
            let a = r.now_ms();
            self.guarded(
                tokio::time::sleep(Duration::from_secs_f64(o.idle_s)),
                cancel,
                rec,
            )
            .await?;
            let b = r.now_ms();
            r.end_phase(i);
            self.guarded(r.wait_past(b, bracket_limit(r)), cancel, rec)
                .await?;
            power_lost(r)?;
            state.idle_run_ms = Some((a, b));
        }

        // 4. The measured repetitions.
        for rep in 1..=o.repetitions.max(1) {
            let mut opts = o.eval.clone();
            opts.repetition = (o.command == "profile").then_some(rep);
            let mut ev = match Evaluator::new(backend, opts, self.origin) {
                Ok(e) => e,
                Err(e) => {
                    state.fail(FailureKind::Configuration, e.to_string());
                    return Ok(());
                }
            };
            ev.set_observer(self.observer);
            self.event(RunEvent::Phase {
                name: "measured".into(),
                detail: format!("repetition {rep} of {}", o.repetitions.max(1)),
            });
            let phase = rec.map(|r| r.begin_phase(&format!("measured-{rep}")));
            let a = rec.map_or(0.0, |r| r.now_ms());
            let mut stop = None;
            for s in suites {
                let r = self
                    .guarded(ev.run_suite(&*s.suite, s.items.clone(), sink), cancel, rec)
                    .await;
                match r {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        let msg = match &e {
                            EvalError::ServerLost { .. } => {
                                format!("{e} (the server died or became unreachable)")
                            }
                            _ => e.to_string(),
                        };
                        state.fail(FailureKind::Runtime, msg);
                        break;
                    }
                    Err(s) => {
                        stop = Some(s);
                        break;
                    }
                }
            }
            let _ = sink.flush();
            let mut b = rec.map_or(0.0, |r| r.now_ms());
            if let (Some(r), Some(i)) = (rec, phase) {
                r.end_phase(i);
            }
            // The repetition's window ends with its last query (or the interruption).
            if let Some(end) = ev
                .runs()
                .iter()
                .filter_map(|x| x.span_s)
                .map(|(_, e)| e * 1000.0)
                .reduce(f64::max)
            {
                b = b.max(end);
            }
            state.runs.push((rep, ev.runs().to_vec(), suites.len()));
            if rec.is_some() {
                state.windows_run_ms.push((rep, (a, b)));
            }
            if let Some(s) = stop {
                return Err(s);
            }
            if state.failure.is_some() {
                return Ok(());
            }
            if let Some(r) = rec {
                // Samples after the window's end, so its last stretch is measured, not guessed.
                if !self
                    .guarded(r.wait_past(b, bracket_limit(r)), cancel, rec)
                    .await?
                {
                    // It may have stopped since the last check (a stalled source, a full disk).
                    power_lost(r)?;
                    self.event(RunEvent::Warning(format!(
                        "{}: no sample after the end of repetition {rep}: its last stretch is not covered",
                        r.key()
                    )));
                }
            }
        }
        Ok(())
    }
}

/// The recording's failure as a stop, once it has failed.
pub(super) fn power_lost(r: &PowerRecorder) -> Result<(), Stop> {
    match r.failed() {
        Some(e) => Err(Stop::PowerLost(format!("{}: {e}", r.key()))),
        None => Ok(()),
    }
}

/// How long to wait for the samples that close a window: a few sampling periods, at least 5 s.
pub(super) fn bracket_limit(r: &PowerRecorder) -> Duration {
    let period = r
        .info()
        .sample_rate_hz
        .filter(|h| *h > 0.0)
        .map_or(1.0, |h| 1.0 / h);
    Duration::from_secs_f64((4.0 * period).max(5.0))
}
