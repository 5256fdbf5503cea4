//! Recording a power source: the trace CSV and its `.meta.json` sidecar ([`TraceRecorder`], used
//! by `epi monitor --record` and by every run), and the task that drives a [`PowerSource`] for a
//! run ([`PowerRecorder`]): it opens the source, checks that it measures, writes every sample to
//! disk as it arrives, keeps the samples for attribution and shows live power.
//!
//! **Crash safety.** Rows are flushed at least every second and the sidecar rewritten (atomically)
//! every 10 s with `extra.complete = false`, so `kill -9` loses at most a second of samples and
//! leaves a sidecar that says the recording is incomplete. [`TraceRecorder::finish`] writes
//! `complete` and the row count.
//!
//! **Clocks.** A sample's `t_ms` is its source's own timeline. Each batch is stamped on arrival
//! with the run's host monotonic clock, and [`ClockMap`] turns trace time into run time: for a
//! source whose timeline is host UTC (a remote clock already corrected by a measured offset, such
//! as the Orchestrator's; detail [`TIMELINE_IS_HOST_UTC`]) through the UTC anchor; for every other
//! source through the smallest arrival lag seen (a sample is read at or before its arrival, so the
//! smallest `arrival − t_ms` is the offset, up to the fastest delivery).
//!
//! Failures: the source's own errors ([`PowerError`], naming the source), no sample within the
//! configured time ([`RecorderError::NoSamples`]), I/O on the trace files. While a run goes on,
//! [`PowerRecorder::failed`] reports what ended the recording, so the run stops instead of going
//! on unmeasured: the source's error, a trace that can no longer be written (a full disk), or a
//! source that fell **silent** — no sample for longer than it had for its first ones (at least
//! four sample periods): a stalled meter, or one unplugged and not back.

use epi_core::energy::Interval;
use epi_core::error::Error;
use epi_core::power::{PowerError, PowerSource};
use epi_core::sample::{PowerSample, SampleBatch, SourceEvent, SourceInfo, SourceStats};
use epi_trace::{TraceMeta, TraceWriter};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Events kept in the sidecar; later ones are counted.
pub const MAX_EVENTS: usize = 10_000;

pub use epi_core::sample::TIMELINE_IS_HOST_UTC;

/// Writes a trace CSV and its sidecar while samples arrive.
pub struct TraceRecorder {
    path: PathBuf,
    writer: Option<TraceWriter>,
    info: SourceInfo,
    started_utc: String,
    stats: SourceStats,
    events: Vec<SourceEvent>,
    events_dropped: u64,
    extra: Map<String, Value>,
    last_meta: Instant,
    last_flush: Instant,
    rows_final: u64,
}

impl TraceRecorder {
    /// Creates (truncates) the trace and writes its sidecar, marked incomplete. `recorded_by`
    /// names the command (`epi monitor`, `epi profile`).
    pub fn create(
        path: impl AsRef<Path>,
        info: SourceInfo,
        recorded_by: &str,
    ) -> Result<TraceRecorder, Error> {
        let path = path.as_ref().to_path_buf();
        let writer = TraceWriter::create(&path, Duration::from_secs(1))?;
        let mut extra = Map::new();
        extra.insert("epi_bench_version".into(), Value::from(epi_core::VERSION));
        extra.insert("recorded_by".into(), Value::from(recorded_by));
        let mut r = TraceRecorder {
            path,
            writer: Some(writer),
            info,
            started_utc: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            stats: SourceStats::default(),
            events: Vec::new(),
            events_dropped: 0,
            extra,
            last_meta: Instant::now(),
            last_flush: Instant::now(),
            rows_final: 0,
        };
        r.write_meta(false)?;
        Ok(r)
    }

    /// The trace path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends a batch's samples and events; `stats` are the source's counters now.
    pub fn push(&mut self, batch: &SampleBatch, stats: SourceStats) -> Result<(), Error> {
        if let Some(w) = self.writer.as_mut() {
            w.write(&batch.samples)?;
        }
        self.stats = stats;
        for e in &batch.events {
            if self.events.len() < MAX_EVENTS {
                self.events.push(e.clone());
            } else {
                self.events_dropped += 1;
            }
        }
        self.tick()
    }

    /// Flushes rows at least every second and rewrites the sidecar every 10 s; call it from a
    /// timer too, so a quiet source still has its rows on disk.
    pub fn tick(&mut self) -> Result<(), Error> {
        if self.last_flush.elapsed() >= Duration::from_secs(1) {
            if let Some(w) = self.writer.as_mut() {
                w.flush()?;
            }
            self.last_flush = Instant::now();
        }
        if self.last_meta.elapsed() >= Duration::from_secs(10) {
            self.write_meta(false)?;
        }
        Ok(())
    }

    /// Sets a sidecar `extra` field (written with the next sidecar).
    pub fn set_extra(&mut self, key: &str, value: Value) {
        self.extra.insert(key.to_string(), value);
    }

    /// Replaces the source's provenance (a source that learnt more since it opened).
    pub fn set_info(&mut self, info: SourceInfo) {
        self.info = info;
    }

    /// Sets the source's counters (the final ones, after it closed).
    pub fn set_stats(&mut self, stats: SourceStats) {
        self.stats = stats;
    }

    /// The source's counters as last given.
    pub fn stats(&self) -> &SourceStats {
        &self.stats
    }

    /// Events kept, and how many more were dropped.
    pub fn events(&self) -> (&[SourceEvent], u64) {
        (&self.events, self.events_dropped)
    }

    /// Rows written.
    pub fn rows(&self) -> u64 {
        self.writer
            .as_ref()
            .map(|w| w.rows())
            .unwrap_or(self.rows_final)
    }

    /// The sidecar as it stands.
    pub fn meta(&self, complete: bool) -> TraceMeta {
        let mut extra = self.extra.clone();
        extra.insert("events_dropped".into(), Value::from(self.events_dropped));
        extra.insert("complete".into(), Value::from(complete));
        extra.insert("rows".into(), Value::from(self.rows()));
        TraceMeta {
            format_version: 1,
            source: self.info.clone(),
            started_utc: self.started_utc.clone(),
            timeline_zero_utc_ms: self
                .info
                .details
                .get("timeline_zero_utc_ms")
                .and_then(Value::as_i64),
            stats: self.stats.clone(),
            events: self.events.clone(),
            extra,
        }
    }

    fn write_meta(&mut self, complete: bool) -> Result<(), Error> {
        self.last_meta = Instant::now();
        self.meta(complete).write_for(&self.path)
    }

    /// Flushes and syncs the rows and writes the final sidecar (`complete` as given: false when
    /// the recording was cut short).
    pub fn finish(mut self, complete: bool) -> Result<TraceMeta, Error> {
        if let Some(w) = self.writer.take() {
            self.rows_final = w.rows();
            w.finish()?;
        }
        self.write_meta(complete)?;
        Ok(self.meta(complete))
    }
}

/// How trace time (`t_ms` of the source) maps to the run's clock: `run_ms = t_ms + offset_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClockMap {
    /// `run_ms − t_ms`.
    pub offset_ms: f64,
    /// `host-utc` (the source's timeline is host UTC) or `arrival` (smallest arrival lag).
    pub method: String,
    /// For `arrival`: the largest arrival lag seen beyond the smallest, ms (how late samples
    /// came; an upper bound of how much later than measured a sample could be placed).
    pub lag_spread_ms: Option<f64>,
    /// Batches the estimate used.
    pub batches: u64,
}

/// Live figures for a progress display.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LivePower {
    /// Cluster power at the latest samples, W.
    pub watts: f64,
    /// Energy integrated since the first sample, J.
    pub joules: f64,
    /// Samples so far.
    pub samples: u64,
}

/// Why a recording could not go on.
#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    /// The source failed.
    #[error(transparent)]
    Power(#[from] PowerError),
    /// The source delivered nothing in time.
    #[error("{source_key}: no samples within {seconds} s of opening: is it measuring? ({detail})")]
    NoSamples {
        /// The source's key.
        source_key: String,
        /// Seconds waited.
        seconds: f64,
        /// What it said when opened.
        detail: String,
    },
    /// Writing the trace failed.
    #[error(transparent)]
    Io(#[from] Error),
}

/// What the recorder keeps while it runs.
#[derive(Default)]
struct Shared {
    samples: Vec<PowerSample>,
    live: LivePower,
    last_by_channel: BTreeMap<u32, (f64, f64)>,
    min_lag_ms: Option<f64>,
    max_lag_ms: Option<f64>,
    batches: u64,
    phases: Vec<Phase>,
    error: Option<String>,
    ended: bool,
    /// When the last batch with samples arrived.
    last_sample: Option<Instant>,
}

/// A marked stretch of the run on the trace (`backend-start`, `warmup`, `idle`,
/// `measured-1`, ...), in run-clock ms (converted to trace time in the sidecar).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    /// Name.
    pub name: String,
    /// Start, run-clock ms.
    pub start_ms: f64,
    /// End, run-clock ms (`None` while open).
    pub end_ms: Option<f64>,
}

/// Drives a [`PowerSource`] in its own task for a run.
pub struct PowerRecorder {
    key: String,
    info: SourceInfo,
    origin: Instant,
    origin_utc_ms: i64,
    shared: Arc<Mutex<Shared>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<TraceMeta, RecorderError>>>,
}

/// The result of a finished recording.
pub struct Recording {
    /// Every sample, in arrival order.
    pub samples: Vec<PowerSample>,
    /// The final sidecar.
    pub meta: TraceMeta,
    /// Trace time → run time.
    pub clock: Option<ClockMap>,
    /// Marked phases, run-clock ms.
    pub phases: Vec<Phase>,
    /// The source's error, when it stopped with one.
    pub error: Option<String>,
}

fn lock(s: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

impl PowerRecorder {
    /// Opens `source`, starts recording to `trace`, and waits until it has delivered samples of
    /// every channel it announced (at least one sample in all), at most `first_sample_timeout`.
    /// Later, the source may stay silent no longer than that (and at least four of its sample
    /// periods) before [`failed`](Self::failed) reports it. `origin` and `origin_utc_ms` are the
    /// run's clock zero on both host clocks.
    pub async fn start(
        key: &str,
        mut source: Box<dyn PowerSource>,
        trace: &Path,
        origin: Instant,
        origin_utc_ms: i64,
        first_sample_timeout: Duration,
        recorded_by: &str,
    ) -> Result<PowerRecorder, RecorderError> {
        let info = source.open().await?;
        let mut rec = TraceRecorder::create(trace, info.clone(), recorded_by)?;
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
        let want_channels = info.channels.len().max(1);
        let period_s = info
            .sample_rate_hz
            .filter(|h| *h > 0.0)
            .map_or(0.0, |h| 1.0 / h);
        let silence_limit = first_sample_timeout.max(Duration::from_secs_f64(4.0 * period_s));
        let task = {
            let shared = shared.clone();
            let key = key.to_string();
            let info_task = info.clone();
            tokio::spawn(async move {
                let mut first_tx = Some(first_tx);
                let mut tick = tokio::time::interval(Duration::from_millis(500));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut failure = None;
                let complete = loop {
                    tokio::select! {
                        biased;
                        _ = &mut stop_rx => break true,
                        _ = tick.tick() => {
                            // The phases and the clock so far, for a sidecar that a kill leaves.
                            let (phases, clock) = {
                                let s = lock(&shared);
                                (
                                    serde_json::to_value(&s.phases).unwrap_or(Value::Null),
                                    serde_json::to_value(clock_map(&s, &info_task, origin_utc_ms))
                                        .unwrap_or(Value::Null),
                                )
                            };
                            rec.set_extra("phases_run_ms", phases);
                            rec.set_extra("clock", clock);
                            if let Err(e) = rec.tick() {
                                failure = Some(format!("recording the trace: {e}"));
                                break false;
                            }
                            let silent = lock(&shared).last_sample.map(|t| t.elapsed());
                            if let Some(silent) = silent.filter(|d| *d > silence_limit) {
                                failure = Some(format!(
                                    "no samples for {:.1} s (at most {:.1} s allowed, \
                                     --first-sample-timeout): the source stopped delivering — a \
                                     stalled or unplugged device?",
                                    silent.as_secs_f64(),
                                    silence_limit.as_secs_f64()
                                ));
                                break false;
                            }
                        }
                        b = source.next_batch() => match b {
                            Ok(Some(batch)) => {
                                let arrival_ms = origin.elapsed().as_secs_f64() * 1000.0;
                                if let Err(e) = rec.push(&batch, source.stats()) {
                                    failure = Some(format!("recording the trace: {e}"));
                                    break false;
                                }
                                let mut s = lock(&shared);
                                absorb(&mut s, batch, arrival_ms);
                                if first_tx.is_some() && s.last_by_channel.len() >= want_channels {
                                    if let Some(tx) = first_tx.take() {
                                        let _ = tx.send(());
                                    }
                                }
                            }
                            Ok(None) => {
                                lock(&shared).ended = true;
                                break false;
                            }
                            Err(e) => {
                                failure = Some(e.to_string());
                                break false;
                            }
                        },
                    }
                };
                let close = source.close().await.err();
                rec.set_stats(source.stats());
                if let Some(info) = source.current_info() {
                    rec.set_info(info);
                }
                let error = failure.or(close.map(|e| e.to_string()));
                {
                    let mut s = lock(&shared);
                    s.error = error.clone();
                    let phases = serde_json::to_value(&s.phases).unwrap_or(Value::Null);
                    rec.set_extra("phases_run_ms", phases);
                    let clock = serde_json::to_value(clock_map(&s, &info_task, origin_utc_ms))
                        .unwrap_or(Value::Null);
                    rec.set_extra("clock", clock);
                }
                if let Some(e) = &error {
                    rec.set_extra("error", Value::from(format!("{key}: {e}")));
                }
                Ok(rec.finish(complete && error.is_none())?)
            })
        };
        let mut recorder = PowerRecorder {
            key: key.to_string(),
            info,
            origin,
            origin_utc_ms,
            shared,
            stop: Some(stop_tx),
            task: Some(task),
        };
        match tokio::time::timeout(first_sample_timeout, first_rx).await {
            Ok(Ok(())) => Ok(recorder),
            // The task ended (an error, or a finite source with nothing in it).
            Ok(Err(_)) => {
                let err = recorder.failure_now().await;
                Err(err)
            }
            Err(_) => {
                let detail = format!(
                    "{} channel(s) announced, {} delivered samples",
                    want_channels,
                    lock(&recorder.shared).last_by_channel.len()
                );
                let _ = recorder.stop().await;
                Err(RecorderError::NoSamples {
                    source_key: recorder.key.clone(),
                    seconds: first_sample_timeout.as_secs_f64(),
                    detail,
                })
            }
        }
    }

    async fn failure_now(&mut self) -> RecorderError {
        let r = match self.task.take() {
            Some(t) => t.await,
            None => return self.no_samples("the recorder had already stopped"),
        };
        let err = lock(&self.shared).error.clone();
        match (r, err) {
            (Ok(Err(e)), _) => e,
            (_, Some(e)) => RecorderError::Power(PowerError::Io {
                source_key: self.key.clone(),
                message: e,
            }),
            _ => self.no_samples("the source ended before delivering a sample"),
        }
    }

    fn no_samples(&self, detail: &str) -> RecorderError {
        RecorderError::NoSamples {
            source_key: self.key.clone(),
            seconds: 0.0,
            detail: detail.into(),
        }
    }

    /// The source's provenance from `open`.
    pub fn info(&self) -> &SourceInfo {
        &self.info
    }

    /// The source key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Live figures.
    pub fn live(&self) -> LivePower {
        lock(&self.shared).live.clone()
    }

    /// Why the recording stopped, once it did (the run decides what to do): the source's error,
    /// the trace no longer written, the source silent for longer than its limit, or the source
    /// ended.
    pub fn failed(&self) -> Option<String> {
        let s = lock(&self.shared);
        s.error.clone().or_else(|| {
            s.ended
                .then(|| "the source ended (a finite source ran out of samples)".to_string())
        })
    }

    /// Now on the run's clock, ms.
    pub fn now_ms(&self) -> f64 {
        self.origin.elapsed().as_secs_f64() * 1000.0
    }

    /// Opens a marked phase now; returns its index for [`end_phase`](Self::end_phase).
    pub fn begin_phase(&self, name: &str) -> usize {
        let start_ms = self.now_ms();
        let mut s = lock(&self.shared);
        s.phases.push(Phase {
            name: name.to_string(),
            start_ms,
            end_ms: None,
        });
        s.phases.len() - 1
    }

    /// Closes a phase now.
    pub fn end_phase(&self, index: usize) {
        let now = self.now_ms();
        if let Some(p) = lock(&self.shared).phases.get_mut(index) {
            p.end_ms = Some(now);
        }
    }

    /// Waits until the source has delivered a sample taken after `run_ms` on every channel seen
    /// (so the window up to `run_ms` is bracketed), at most `limit`. False when it did not.
    pub async fn wait_past(&self, run_ms: f64, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            {
                let s = lock(&self.shared);
                if let Some(off) = clock_offset(&s, &self.info, self.origin_utc_ms) {
                    let t = run_ms - off;
                    if !s.last_by_channel.is_empty()
                        && s.last_by_channel.values().all(|&(last_t, _)| last_t >= t)
                    {
                        return true;
                    }
                }
                if s.error.is_some() || s.ended {
                    return false;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the source, finishes the trace and returns what was recorded.
    pub async fn stop(&mut self) -> Result<Recording, RecorderError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let meta = match self.task.take() {
            Some(t) => match t.await {
                Ok(r) => r?,
                Err(e) => {
                    return Err(RecorderError::Io(Error::Invalid(format!(
                        "the recording task failed: {e}"
                    ))))
                }
            },
            None => {
                return Err(RecorderError::Io(Error::Invalid(
                    "the recording was already stopped".into(),
                )))
            }
        };
        let mut s = lock(&self.shared);
        let clock = clock_map(&s, &meta.source, self.origin_utc_ms);
        Ok(Recording {
            samples: std::mem::take(&mut s.samples),
            meta,
            clock,
            phases: s.phases.clone(),
            error: s.error.clone(),
        })
    }
}

/// Folds a batch into the shared state: samples, live power, arrival lags.
fn absorb(s: &mut Shared, batch: SampleBatch, arrival_ms: f64) {
    s.batches += 1;
    if !batch.samples.is_empty() {
        s.last_sample = Some(Instant::now());
    }
    for x in &batch.samples {
        let lag = arrival_ms - x.t_ms;
        s.min_lag_ms = Some(s.min_lag_ms.map_or(lag, |m| m.min(lag)));
        s.max_lag_ms = Some(s.max_lag_ms.map_or(lag, |m| m.max(lag)));
        if let Some(&(t0, w0)) = s.last_by_channel.get(&x.channel) {
            if let Some(iv) = Interval::forward(t0, w0, x.t_ms, x.watts) {
                s.live.joules += iv.joules();
            }
        }
        s.last_by_channel.insert(x.channel, (x.t_ms, x.watts));
    }
    s.live.watts = s.last_by_channel.values().map(|&(_, w)| w).sum();
    s.live.samples += batch.samples.len() as u64;
    s.samples.extend(batch.samples);
}

fn utc_anchored(info: &SourceInfo) -> Option<i64> {
    let flagged = info
        .details
        .get(TIMELINE_IS_HOST_UTC)
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if !flagged {
        return None;
    }
    info.details
        .get("timeline_zero_utc_ms")
        .and_then(Value::as_i64)
}

fn clock_offset(s: &Shared, info: &SourceInfo, origin_utc_ms: i64) -> Option<f64> {
    match utc_anchored(info) {
        Some(zero) => Some((zero - origin_utc_ms) as f64),
        None => s.min_lag_ms,
    }
}

fn clock_map(s: &Shared, info: &SourceInfo, origin_utc_ms: i64) -> Option<ClockMap> {
    match utc_anchored(info) {
        Some(zero) => Some(ClockMap {
            offset_ms: (zero - origin_utc_ms) as f64,
            method: "host-utc".into(),
            lag_spread_ms: None,
            batches: s.batches,
        }),
        None => s.min_lag_ms.map(|m| ClockMap {
            offset_ms: m,
            method: "arrival".into(),
            lag_spread_ms: s.max_lag_ms.map(|x| x - m),
            batches: s.batches,
        }),
    }
}
