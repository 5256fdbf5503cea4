//! [`RunEngine::execute`]: the run, step by step (see the module documentation of
//! [`crate`]). Every exit path stops the backend and the power source and writes what was
//! measured; the [`RunOutcome`] says how the run ended, and why.

use super::attribution::{self, RepetitionEnergy};
use super::observe::{RunEvent, RunObserver};
use super::recorder::{PowerRecorder, RecorderError, Recording};
use super::report::{self, RepetitionReport, RunStatus};
use super::{RunDir, RunOptions};
use crate::calculator::{EpiCalculator, ResultLabels};
use crate::eval::{EvalError, Evaluator, SuiteRun};
use epi_core::backend::{BackendError, BackendInfo, InferenceBackend, ScoringMode};
use epi_core::benchmark::BenchmarkResult;
use epi_core::error::Error;
use epi_core::hardware::{self, HostHardware};
use epi_core::power::{PowerError, PowerSource};
use epi_core::result::EpiResult;
use epi_core::suite::{Suite, SuiteItem};
use epi_records::{self as records, RecordSink};
use epi_trace::{PowerTrace, TraceOptions};
use serde_json::{json, Map, Value};
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

    /// Warm-up, idle baseline and the measured repetitions.
    async fn measure(
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

    /// Stops everything, attributes, scores, writes every file, returns the outcome.
    async fn finish(
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

    /// The benchmark JSON of the median repetition (`None`: token counts unknown or no score).
    fn benchmark_for(
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
    fn epi_for(
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
    fn write_trace_meta(&self, rec: &Recording, state: &State) -> Result<(), Error> {
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

    fn summary(&self, state: &State, status: RunStatus) -> Value {
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

/// The recording's failure as a stop, once it has failed.
fn power_lost(r: &PowerRecorder) -> Result<(), Stop> {
    match r.failed() {
        Some(e) => Err(Stop::PowerLost(format!("{}: {e}", r.key()))),
        None => Ok(()),
    }
}

/// What went wrong on the power source's side during a run that it survived (disconnections,
/// reboots, lost samples, bad lines), in one line; `None` when nothing did.
fn source_trouble(
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

/// How long to wait for the samples that close a window: a few sampling periods, at least 5 s.
fn bracket_limit(r: &PowerRecorder) -> Duration {
    let period = r
        .info()
        .sample_rate_hz
        .filter(|h| *h > 0.0)
        .map_or(1.0, |h| 1.0 / h);
    Duration::from_secs_f64((4.0 * period).max(5.0))
}

/// What the source measures, from its channels' scopes (`ac-inlet`, `gpu`, `cpu-package`).
fn measurement_point(info: &epi_core::sample::SourceInfo) -> String {
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

/// The hardware label and where it came from: the user's, the hosts the backend detected
/// (`details.hosts_hardware`), this machine when the backend is local (`details.url` on
/// loopback), else `unknown`.
fn hardware_label(labels: &super::RunLabels, info: &BackendInfo) -> (String, &'static str) {
    if let Some(h) = &labels.hardware {
        return (h.clone(), "user");
    }
    if let Some(hosts) = info.details.get("hosts_hardware") {
        if let Ok(hosts) = serde_json::from_value::<Vec<HostHardware>>(hosts.clone()) {
            if !hosts.is_empty() {
                return (hardware::label(&hosts, &info.backend), "detected");
            }
        }
    }
    let local = info
        .details
        .get("url")
        .and_then(Value::as_str)
        .is_some_and(is_loopback_url);
    if local {
        return (
            hardware::label(&[HostHardware::local()], &info.server),
            "detected (this machine; the server is on loopback)",
        );
    }
    ("unknown".into(), "unknown")
}

fn is_loopback_url(url: &str) -> bool {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = if let Some(h) = host.strip_prefix('[') {
        h.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    host == "localhost" || host == "::1" || host.starts_with("127.")
}

/// What the run knows as it goes.
struct State {
    status: Option<RunStatus>,
    error: Option<String>,
    failure: Option<FailureKind>,
    mode: Option<ScoringMode>,
    concurrency: usize,
    backend: Option<BackendInfo>,
    power_info: Option<epi_core::sample::SourceInfo>,
    hardware: (String, &'static str),
    warmup: Value,
    idle_run_ms: Option<(f64, f64)>,
    idle_window_trace_ms: Option<(f64, f64)>,
    idle_watts: Option<f64>,
    windows_run_ms: Vec<(u32, (f64, f64))>,
    runs: Vec<(u32, Vec<SuiteRun>, usize)>,
    reps: Vec<RepetitionReport>,
    median: Option<u32>,
    clock: Option<Value>,
}

impl State {
    fn new(o: &RunOptions) -> State {
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

    fn fail(&mut self, kind: FailureKind, msg: String) {
        if self.failure.is_none() {
            self.failure = Some(kind);
            self.error = Some(msg);
        }
    }

    fn stop(&mut self, s: Stop) {
        match s {
            Stop::Cancelled => self.status = Some(RunStatus::Interrupted),
            Stop::PowerLost(e) => {
                self.fail(FailureKind::Runtime, format!("power source lost: {e}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls_are_recognised() {
        for u in [
            "http://127.0.0.1:8080",
            "http://localhost/v1",
            "https://[::1]:8443/",
            "127.0.0.5:9",
        ] {
            assert!(is_loopback_url(u), "{u}");
        }
        for u in [
            "http://10.0.0.2:8080",
            "http://example.org",
            "http://127example.org",
        ] {
            assert!(!is_loopback_url(u), "{u}");
        }
    }
}
