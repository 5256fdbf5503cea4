//! [`RunEngine::execute`]: the run, step by step (see the module documentation of
//! [`crate`]). Every exit path stops the backend and the power source and writes what was
//! measured; the [`RunOutcome`] says how the run ended, and why.
//!
//! The engine's parts, in the order a run goes through them:
//! - here: the public types, the engine's log and events, and the guarded wait that ends on
//!   Ctrl-C or a lost power source;
//! - `start`: [`RunEngine::execute`], opening the power source and starting the backend
//!   (steps 1–2);
//! - `measure`: warm-up, idle baseline and the measured repetitions (steps 3–4);
//! - `finish`: stopping everything, attribution, scores and the run's status (steps 5–6);
//! - `output`: the files written at the end (`benchmark.json`, `epi.json`, the trace sidecar,
//!   `summary.json`);
//! - `state`: what the run knows as it goes; `hardware`: the hardware label.

mod finish;
mod hardware;
mod measure;
mod output;
mod start;
mod state;

use super::observe::{RunEvent, RunObserver};
use super::recorder::PowerRecorder;
use super::report::{RepetitionReport, RunStatus};
use super::{RunDir, RunOptions};
use epi_core::error::Error;
use epi_core::power::PowerSource;
use epi_core::result::EpiResult;
use epi_core::suite::{Suite, SuiteItem};
use serde_json::Value;
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A suite with its items, loaded before anything starts.
pub struct SuiteSpec {
    /// The suite.
    pub suite: Box<dyn Suite>,
    /// Its items, in order.
    pub items: Vec<SuiteItem>,
}

/// The power source of a run.
pub struct RunPower {
    /// Registry key.
    pub key: String,
    /// The source, not yet opened.
    pub source: Box<dyn PowerSource>,
}

/// Why a run could not be carried out at all (nothing to report).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Writing the run directory failed.
    #[error(transparent)]
    Io(#[from] Error),
}

/// What kind of fault ended a failed run (the CLI's exit code: configuration 3, others 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// A setting is wrong (a source or backend refused its configuration).
    Configuration,
    /// A device, server or file failed.
    Runtime,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// The run directory.
    pub dir: RunDir,
    /// Final status.
    pub status: RunStatus,
    /// Why it failed or is incomplete.
    pub error: Option<String>,
    /// The kind of fault, when it failed.
    pub failure: Option<FailureKind>,
    /// `summary.json`'s content.
    pub summary: Value,
    /// The median repetition, when one stands for the run.
    pub median: Option<RepetitionReport>,
    /// Every repetition run (the last possibly cut short).
    pub repetitions: Vec<RepetitionReport>,
    /// `benchmark.json`, when written.
    pub benchmark: Option<PathBuf>,
    /// The EPI result (`epi.json`), when written.
    pub epi: Option<EpiResult>,
}

/// Runs suites through a backend, with or without a power source.
pub struct RunEngine<'a> {
    dir: RunDir,
    options: RunOptions,
    observer: &'a dyn RunObserver,
    log: Mutex<Option<std::fs::File>>,
    origin: Instant,
    origin_utc_ms: i64,
    started_utc: String,
}

/// Why a guarded wait ended early.
enum Stop {
    Cancelled,
    PowerLost(String),
}

fn utc_now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn rfc3339_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Waits for a cancel signal (never, when the sender is gone).
async fn cancelled(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl<'a> RunEngine<'a> {
    /// An engine writing into `dir`.
    pub fn new(dir: RunDir, options: RunOptions, observer: &'a dyn RunObserver) -> RunEngine<'a> {
        let log = std::fs::File::create(dir.log()).ok();
        RunEngine {
            dir,
            options,
            observer,
            log: Mutex::new(log),
            origin: Instant::now(),
            origin_utc_ms: utc_now_ms(),
            started_utc: rfc3339_now(),
        }
    }

    /// The run directory.
    pub fn dir(&self) -> &RunDir {
        &self.dir
    }

    fn log(&self, msg: &str) {
        if let Ok(mut g) = self.log.lock() {
            if let Some(f) = g.as_mut() {
                let _ = writeln!(
                    f,
                    "{} [{:9.3} s] {msg}",
                    rfc3339_now(),
                    self.origin.elapsed().as_secs_f64()
                );
            }
        }
    }

    fn event(&self, e: RunEvent) {
        match &e {
            RunEvent::Phase { name, detail } => self.log(&format!("phase {name}: {detail}")),
            RunEvent::Warning(w) => self.log(&format!("warning: {w}")),
            RunEvent::SuiteStarted {
                suite,
                repetition,
                items,
                mode,
                concurrency,
            } => self.log(&format!(
                "suite {suite} (repetition {}): {items} items, {mode}, {concurrency} at a time",
                repetition.map_or("-".into(), |r| r.to_string())
            )),
            RunEvent::SuiteDone { suite, accuracy } => {
                self.log(&format!("suite {suite} done: accuracy {accuracy:?}"))
            }
            _ => {}
        }
        self.observer.event(e);
    }

    /// Runs `fut` until it ends, the run is cancelled or the power source is lost; sends live
    /// power to the observer every second meanwhile.
    async fn guarded<F: Future>(
        &self,
        fut: F,
        cancel: &mut watch::Receiver<bool>,
        rec: Option<&PowerRecorder>,
    ) -> Result<F::Output, Stop> {
        tokio::pin!(fut);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n = 0u64;
        loop {
            tokio::select! {
                r = &mut fut => return Ok(r),
                _ = cancelled(cancel) => return Err(Stop::Cancelled),
                _ = tick.tick() => {
                    if let Some(r) = rec {
                        if let Some(e) = r.failed() {
                            return Err(Stop::PowerLost(format!("{}: {e}", r.key())));
                        }
                        n += 1;
                        if n.is_multiple_of(2) {
                            let live = r.live();
                            self.observer.event(RunEvent::Power { watts: live.watts, joules: live.joules });
                        }
                    }
                }
            }
        }
    }

    fn write_summary(&self, v: &Value) -> Result<(), Error> {
        epi_core::jsonio::write_json_atomic(&self.dir.summary(), v)
    }
}
