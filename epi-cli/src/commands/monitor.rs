//! `epi monitor`: watch a power source live, optionally recording it as a trace CSV.
//!
//! ```text
//! epi monitor --power epi-meter --port /dev/ttyUSB0 [--baud 115200] [--live] [--record F.csv] [--duration SECS]
//! epi monitor --power rapl|nvml [--set KEY=VALUE ...] ...
//! epi monitor --power csv --file trace.csv [--set pace="recorded"] ...
//! epi monitor --host orchestrator.local --user pi [--ssh-port 22] [--identity KEY] [--known-hosts F] [--accept-new-host-key] ...
//! ```
//!
//! Every source is built through the registry (`ctx.registry.power(key, &config)`). The flags are
//! aliases of settings (`--port` → `port`, `--baud` → `baud`, `--file` → `path`, `--host` →
//! `host`, `--user` → `user`, `--ssh-port` → `port`, `--identity` → `identity`, `--known-hosts` →
//! `known_hosts`, `--accept-new-host-key` → `accept_new_host_key`; a bare `--set K=V` → `K`),
//! applied over the source's table in the configuration file (`[power.<key>]`, or a table the
//! source declares as its alias) and checked against the source's own description: a setting it
//! does not have is refused, naming the flag. Without `--power`, the one source that has every
//! setting the flags give is used (`--host` picks the Orchestrator, the one with a `host`).
//!
//! `--record` writes the trace CSV and its `.meta.json` sidecar through the framework's
//! [`TraceRecorder`] — the recorder every run uses (rows flushed at least every second, so a kill
//! loses at most one second; the sidecar at the start, every 10 s and at the end, marked
//! `complete: false` until then). Ctrl-C (or SIGTERM) stops cleanly, writes everything and exits
//! 130.

use crate::context::Context;
use anyhow::{Context as _, Result};
use clap::Args;
use epi_framework::config::Override;
use epi_framework::energy::{wms2_to_joules, Interval};
use epi_framework::power::PowerError;
use epi_framework::registry::PluginKind;
use epi_framework::run::recorder::TraceRecorder;
use epi_framework::sample::{PowerSample, SampleBatch, SourceEvent, SourceInfo, SourceStats};
use epi_framework::trace::TraceMeta;
use epi_framework::PowerSource;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Events kept for the summary; later ones are counted.
const MAX_EVENTS: usize = epi_framework::run::recorder::MAX_EVENTS;

/// Options of `epi monitor`.
#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// Power source (registry key: epi-meter, rapl, nvml, csv, orchestrator, ...). With --host and
    /// no --power: orchestrator.
    #[arg(long, value_name = "KEY")]
    pub power: Option<String>,
    /// Serial device of the meter (source setting `port`).
    #[arg(long, value_name = "DEVICE")]
    pub port: Option<String>,
    /// Baud rate of the serial line (source setting `baud`; the meter's default is 115200).
    #[arg(long)]
    pub baud: Option<u32>,
    /// Trace file to replay with --power csv (source setting `path`).
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Orchestrator host (source setting `host`).
    #[arg(long)]
    pub host: Option<String>,
    /// SSH user on the orchestrator (source setting `user`).
    #[arg(long)]
    pub user: Option<String>,
    /// SSH port of the orchestrator (source setting `port`).
    #[arg(long = "ssh-port", value_name = "PORT")]
    pub ssh_port: Option<u16>,
    /// SSH private key (source setting `identity`).
    #[arg(long, value_name = "KEY")]
    pub identity: Option<PathBuf>,
    /// known_hosts file to verify the orchestrator's host key against (source setting `known_hosts`).
    #[arg(long = "known-hosts", value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// Accept and remember the orchestrator's host key when known_hosts has none for it (source
    /// setting `accept_new_host_key`); a changed key is still refused.
    #[arg(long = "accept-new-host-key")]
    pub accept_new_host_key: bool,
    /// Redraw a table per channel in place (W, V, A, PF, energy, sample rate, lost and bad lines).
    #[arg(long)]
    pub live: bool,
    /// Record the samples to this trace CSV (and FILE.meta.json with the provenance).
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Stop after this many seconds (default: until Ctrl-C, or the end of a replay).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Seconds between summary lines (and live redraws).
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub every: f64,
    /// Print the final summary as JSON on stdout (and no periodic lines).
    #[arg(long)]
    pub json: bool,
}

/// A usage or configuration problem: message and exit code.
struct Refusal(u8, String);

/// The flags that alias settings of the source (`--port` → `port`, `--file` → `path`, ...): only
/// those given. Which source has which setting is the source's own description's business.
fn overrides(a: &MonitorArgs) -> Result<Vec<Override>, Refusal> {
    if a.port.is_some() && a.ssh_port.is_some() {
        return Err(Refusal(2, "--port (a serial device) and --ssh-port (an SSH port) both set the source's `port`: give one".into()));
    }
    let path = |p: &PathBuf| Value::from(p.display().to_string());
    Ok(Override::given(vec![
        ("--port", "port", a.port.clone().map(Value::from)),
        ("--ssh-port", "port", a.ssh_port.map(Value::from)),
        ("--baud", "baud", a.baud.map(Value::from)),
        ("--file", "path", a.file.as_ref().map(path)),
        ("--host", "host", a.host.clone().map(Value::from)),
        ("--user", "user", a.user.clone().map(Value::from)),
        ("--identity", "identity", a.identity.as_ref().map(path)),
        (
            "--known-hosts",
            "known_hosts",
            a.known_hosts.as_ref().map(path),
        ),
        (
            "--accept-new-host-key",
            "accept_new_host_key",
            a.accept_new_host_key.then_some(Value::Bool(true)),
        ),
    ]))
}

/// Without `--power`: the one source that has every setting the flags give (`--host` → the
/// source with a `host`; `--file` → the one with a `path`).
fn source_for_flags(ctx: &Context, flags: &[Override]) -> Result<String, String> {
    let keys = ctx.registry.keys(PluginKind::Power);
    if flags.is_empty() {
        return Err(format!(
            "choose a power source with --power KEY (one of: {})",
            keys.join(", ")
        ));
    }
    let fits: Vec<String> = ctx
        .registry
        .list(Some(PluginKind::Power))
        .into_iter()
        .filter(|e| {
            e.settings().is_some_and(|s| {
                flags.iter().all(|o| {
                    let p: Vec<&str> = o.path.iter().map(String::as_str).collect();
                    s.has(&p)
                })
            })
        })
        .map(|e| e.key.clone())
        .collect();
    let given: Vec<&str> = flags.iter().map(|o| o.flag.as_str()).collect();
    match fits.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!(
            "no power source takes {}: choose one with --power KEY (one of: {})",
            given.join(" "),
            keys.join(", ")
        )),
        many => Err(format!(
            "{} fit several power sources ({}): choose one with --power KEY",
            given.join(" "),
            many.join(", ")
        )),
    }
}

/// One channel as the monitor sees it.
#[derive(Debug, Clone)]
struct ChannelView {
    name: String,
    last: Option<PowerSample>,
    samples: u64,
    /// Trapezoid energy in W·ms ×2 (halved when shown), on the source's timeline.
    wms2: f64,
    /// First and last counter readings, while every sample has carried one.
    counter: Option<(f64, f64)>,
    counter_complete: bool,
    window_samples: u64,
    rate_hz: f64,
}

impl ChannelView {
    fn new(name: String) -> ChannelView {
        ChannelView {
            name,
            last: None,
            samples: 0,
            wms2: 0.0,
            counter: None,
            counter_complete: true,
            window_samples: 0,
            rate_hz: 0.0,
        }
    }

    fn push(&mut self, s: &PowerSample) {
        if let Some(l) = &self.last {
            if let Some(iv) = Interval::forward(l.t_ms, l.watts, s.t_ms, s.watts) {
                self.wms2 += iv.wms2();
            }
        }
        match (s.energy_j, self.counter) {
            (Some(e), Some((first, _))) if self.counter_complete => self.counter = Some((first, e)),
            (Some(e), None) if self.counter_complete && self.samples == 0 => {
                self.counter = Some((e, e))
            }
            _ => {
                self.counter_complete = false;
                self.counter = None;
            }
        }
        self.samples += 1;
        self.window_samples += 1;
        self.last = Some(*s);
    }

    fn integrated_j(&self) -> f64 {
        wms2_to_joules(self.wms2)
    }

    fn counter_j(&self) -> Option<f64> {
        self.counter
            .filter(|_| self.counter_complete)
            .map(|(a, b)| b - a)
    }
}

/// What the source task sends.
enum Msg {
    Batch(SampleBatch, SourceStats),
    /// The source ended (a replay reached its end) or failed; then it was closed.
    Closed {
        stats: SourceStats,
        info: Option<SourceInfo>,
        error: Option<PowerError>,
    },
}

/// Why the monitor stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Duration,
    SourceEnded,
    Interrupted,
    SourceFailed,
}

struct Monitor {
    key: String,
    info: SourceInfo,
    channels: BTreeMap<u32, ChannelView>,
    stats: SourceStats,
    events: Vec<SourceEvent>,
    events_dropped: u64,
    started: Instant,
    last_tick: Instant,
    recorder: Option<TraceRecorder>,
    record: Option<PathBuf>,
    /// Rows recorded, once the recorder is finished.
    rows_final: Option<u64>,
    live: bool,
    quiet: bool,
    drawn_lines: u16,
    recent_events: Vec<String>,
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map(|x| format!("{x:.prec$}"))
        .unwrap_or_else(|| "—".into())
}

fn counter_diff(integrated: f64, counter: Option<f64>) -> String {
    match counter {
        Some(c) if integrated > 0.0 => format!("{:+.2} %", (c - integrated) / integrated * 100.0),
        _ => "—".into(),
    }
}

impl Monitor {
    fn new(
        key: String,
        info: SourceInfo,
        record: Option<PathBuf>,
        live: bool,
        quiet: bool,
    ) -> Monitor {
        let channels = info
            .channels
            .iter()
            .map(|c| (c.id, ChannelView::new(c.name.clone())))
            .collect::<BTreeMap<_, _>>();
        Monitor {
            key,
            info,
            channels,
            stats: SourceStats::default(),
            events: Vec::new(),
            events_dropped: 0,
            started: Instant::now(),
            last_tick: Instant::now(),
            recorder: None,
            record,
            rows_final: None,
            live,
            quiet,
            drawn_lines: 0,
            recent_events: Vec::new(),
        }
    }

    fn rows(&self) -> Option<u64> {
        self.recorder.as_ref().map(|w| w.rows()).or(self.rows_final)
    }

    fn elapsed_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn start_recording(&mut self) -> Result<()> {
        if let Some(path) = &self.record {
            self.recorder = Some(
                TraceRecorder::create(path, self.info.clone(), "epi monitor")
                    .with_context(|| format!("recording to {}", path.display()))?,
            );
        }
        Ok(())
    }

    fn batch(&mut self, b: SampleBatch, stats: SourceStats) -> Result<()> {
        if let Some(r) = self.recorder.as_mut() {
            r.push(&b, stats.clone())?;
        }
        for s in &b.samples {
            self.channels
                .entry(s.channel)
                .or_insert_with(|| ChannelView::new(format!("channel {}", s.channel)))
                .push(s);
        }
        self.stats = stats;
        for e in b.events {
            let line = format!("[{:7.1} s] {}: {}", self.elapsed_s(), e.kind, e.detail);
            if self.live {
                self.recent_events.push(line);
                if self.recent_events.len() > 5 {
                    self.recent_events.remove(0);
                }
            } else if !self.quiet {
                eprintln!("{line}");
            }
            if self.events.len() < MAX_EVENTS {
                self.events.push(e);
            } else {
                self.events_dropped += 1;
            }
        }
        Ok(())
    }

    /// Once per `--every`: flush the recording, update the rates, print.
    fn tick(&mut self) -> Result<()> {
        if let Some(r) = self.recorder.as_mut() {
            r.tick()?;
        }
        let dt = self.last_tick.elapsed().as_secs_f64().max(1e-3);
        self.last_tick = Instant::now();
        for c in self.channels.values_mut() {
            c.rate_hz = c.window_samples as f64 / dt;
            c.window_samples = 0;
        }
        if self.quiet {
            return Ok(());
        }
        if self.live {
            self.draw()?;
        } else {
            println!("{}", self.summary_line());
        }
        Ok(())
    }

    fn totals(&self) -> (f64, f64, Option<f64>, f64) {
        let watts = self
            .channels
            .values()
            .filter_map(|c| c.last.map(|s| s.watts))
            .sum();
        let integrated = self.channels.values().map(|c| c.integrated_j()).sum();
        let counter = self
            .channels
            .values()
            .map(|c| c.counter_j())
            .sum::<Option<f64>>();
        let rate = self.channels.values().map(|c| c.rate_hz).sum();
        (watts, integrated, counter, rate)
    }

    fn summary_line(&self) -> String {
        let (watts, integrated, counter, rate) = self.totals();
        let s = &self.stats;
        format!(
            "[{:7.1} s] cluster {watts:.2} W | energy {integrated:.3} J integrated, {} J counter | {rate:.1} samples/s | lost {} | bad lines {} | reboots {} | reconnects {}",
            self.elapsed_s(),
            fmt_opt(counter, 3),
            s.lost_samples,
            s.bad_lines,
            s.reboots,
            s.reconnects
        )
    }

    fn table(&self) -> Vec<String> {
        let mut lines = Vec::new();
        lines.push(format!(
            "epi monitor — {} — {}{}   {:.1} s",
            self.key,
            self.info.instrument,
            if self.info.replay { " (replay)" } else { "" },
            self.elapsed_s()
        ));
        lines.push(format!(
            "{:<24} {:>9} {:>8} {:>7} {:>6} {:>12} {:>12} {:>7} {:>8}",
            "channel", "W", "V", "A", "PF", "energy J", "counter J", "Hz", "samples"
        ));
        for c in self.channels.values() {
            let l = c.last.as_ref();
            lines.push(format!(
                "{:<24} {:>9} {:>8} {:>7} {:>6} {:>12.3} {:>12} {:>7.1} {:>8}",
                c.name.chars().take(24).collect::<String>(),
                fmt_opt(l.map(|s| s.watts), 2),
                fmt_opt(l.and_then(|s| s.volts), 1),
                fmt_opt(l.and_then(|s| s.amps), 3),
                fmt_opt(l.and_then(|s| s.power_factor), 3),
                c.integrated_j(),
                fmt_opt(c.counter_j(), 3),
                c.rate_hz,
                c.samples
            ));
        }
        let (watts, integrated, counter, rate) = self.totals();
        lines.push(format!(
            "{:<24} {:>9.2} {:>8} {:>7} {:>6} {:>12.3} {:>12} {:>7.1} {:>8}",
            "cluster",
            watts,
            "",
            "",
            "",
            integrated,
            fmt_opt(counter, 3),
            rate,
            self.stats.samples
        ));
        let s = &self.stats;
        lines.push(format!(
            "lost samples {}   bad lines {}   reboots {}   reconnects {} ({:.1} s without data){}",
            s.lost_samples,
            s.bad_lines,
            s.reboots,
            s.reconnects,
            s.disconnected_ms / 1000.0,
            self.recorder
                .as_ref()
                .map(|w| format!("   recording {} rows", w.rows()))
                .unwrap_or_default()
        ));
        lines.extend(self.recent_events.iter().cloned());
        lines
    }

    fn draw(&mut self) -> Result<()> {
        use crossterm::{cursor, queue, terminal};
        let width = terminal::size()
            .map(|(w, _)| w as usize)
            .unwrap_or(120)
            .max(20);
        let mut out = std::io::stdout().lock();
        if self.drawn_lines > 0 {
            queue!(
                out,
                cursor::MoveToColumn(0),
                cursor::MoveUp(self.drawn_lines),
                terminal::Clear(terminal::ClearType::FromCursorDown)
            )?;
        } else {
            queue!(out, cursor::Hide)?;
        }
        let lines = self.table();
        for l in &lines {
            // Never wrap: a wrapped line would break the redraw.
            let l: String = l.chars().take(width - 1).collect();
            writeln!(out, "{l}")?;
        }
        out.flush()?;
        self.drawn_lines = lines.len() as u16;
        Ok(())
    }

    fn end_live(&mut self) {
        if self.live && self.drawn_lines > 0 {
            let mut out = std::io::stdout();
            let _ = crossterm::execute!(out, crossterm::cursor::Show);
        }
    }

    fn summary_json(&self, stop: Stop, error: Option<&str>) -> Value {
        let (_, integrated, counter, _) = self.totals();
        let channels: Vec<Value> = self
            .channels
            .iter()
            .map(|(id, c)| {
                json!({
                    "channel": id, "name": c.name, "samples": c.samples,
                    "energy_integrated_j": c.integrated_j(), "energy_counter_j": c.counter_j(),
                })
            })
            .collect();
        json!({
            "source": self.key,
            "instrument": self.info.instrument,
            "method": self.info.method,
            "replay": self.info.replay,
            "seconds": self.elapsed_s(),
            "stopped": match stop { Stop::Duration => "duration", Stop::SourceEnded => "source-ended", Stop::Interrupted => "interrupted", Stop::SourceFailed => "source-failed" },
            "error": error,
            "energy_integrated_j": integrated,
            "energy_counter_j": counter,
            "channels": channels,
            "stats": self.stats,
            "events": self.events.len() as u64 + self.events_dropped,
            "record": self.record.as_ref().map(|p| p.display().to_string()),
            "rows": self.rows(),
        })
    }

    fn print_summary(&self, stop: Stop, error: Option<&str>) {
        let (_, integrated, counter, _) = self.totals();
        let s = &self.stats;
        println!(
            "epi monitor: {} — {} ({} energy, {} channel(s)){} — {:.1} s, {}",
            self.key,
            self.info.instrument,
            self.info.method,
            self.channels.len(),
            if self.info.replay { ", replay" } else { "" },
            self.elapsed_s(),
            match stop {
                Stop::Duration => "duration reached",
                Stop::SourceEnded => "source ended",
                Stop::Interrupted => "interrupted",
                Stop::SourceFailed => "source failed",
            }
        );
        println!(
            "  {:<24} {:>8} {:>14} {:>12} {:>10}",
            "channel", "samples", "integrated J", "counter J", "counter Δ"
        );
        for c in self.channels.values() {
            println!(
                "  {:<24} {:>8} {:>14.3} {:>12} {:>10}",
                c.name.chars().take(24).collect::<String>(),
                c.samples,
                c.integrated_j(),
                fmt_opt(c.counter_j(), 3),
                counter_diff(c.integrated_j(), c.counter_j())
            );
        }
        println!(
            "  {:<24} {:>8} {:>14.3} {:>12} {:>10}",
            "cluster",
            s.samples,
            integrated,
            fmt_opt(counter, 3),
            counter_diff(integrated, counter)
        );
        println!(
            "  samples {}, lost {}, bad lines {}, reboots {}, reconnects {} ({:.2} s without data)",
            s.samples,
            s.lost_samples,
            s.bad_lines,
            s.reboots,
            s.reconnects,
            s.disconnected_ms / 1000.0
        );
        if let (Some(p), Some(rows)) = (&self.record, self.rows()) {
            println!(
                "  recorded {} ({rows} rows) and {}",
                p.display(),
                TraceMeta::path_for(p).display()
            );
        }
        if let Some(e) = error {
            println!("  error: {e}");
        }
    }
}

/// Runs the source in its own task and forwards batches until told to stop.
fn spawn_source(
    mut source: Box<dyn PowerSource>,
    tx: tokio::sync::mpsc::Sender<Msg>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut error = None;
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                r = source.next_batch() => match r {
                    Ok(Some(b)) => {
                        if tx.send(Msg::Batch(b, source.stats())).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                },
            }
        }
        let close = source.close().await.err();
        let _ = tx
            .send(Msg::Closed {
                stats: source.stats(),
                info: source.current_info(),
                error: error.or(close),
            })
            .await;
    })
}

/// Runs `epi monitor`.
pub fn run(ctx: &Context, a: &MonitorArgs) -> Result<ExitCode> {
    let over = match overrides(a) {
        Ok(o) => o,
        Err(Refusal(code, msg)) => {
            eprintln!("error: {msg}");
            return Ok(ExitCode::from(code));
        }
    };
    let key = match &a.power {
        Some(k) => k.clone(),
        None => match source_for_flags(ctx, &over) {
            Ok(k) => k,
            Err(msg) => {
                eprintln!("error: {msg}");
                return Ok(ExitCode::from(2));
            }
        },
    };
    if !(a.every.is_finite() && a.every > 0.0)
        || a.duration.is_some_and(|d| !(d.is_finite() && d > 0.0))
    {
        eprintln!("error: --every and --duration need a number of seconds > 0");
        return Ok(ExitCode::from(2));
    }
    let config = match ctx.config.plugin_settings(
        &ctx.registry,
        PluginKind::Power,
        &key,
        &over
            .iter()
            .chain(&ctx.plugin_sets)
            .cloned()
            .collect::<Vec<_>>(),
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            let code = if matches!(e, epi_framework::Error::UnknownPlugin { .. }) {
                2
            } else {
                3
            };
            return Ok(ExitCode::from(code));
        }
    };
    let source = match ctx.registry.power(&key, &config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            let code = if matches!(e, epi_framework::Error::UnknownPlugin { .. }) {
                2
            } else {
                3
            };
            return Ok(ExitCode::from(code));
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(monitor(key, source, a))
}

async fn monitor(
    key: String,
    mut source: Box<dyn PowerSource>,
    a: &MonitorArgs,
) -> Result<ExitCode> {
    let live = a.live && !a.json && std::io::stdout().is_terminal();
    if a.live && !live && !a.json {
        eprintln!("note: --live needs a terminal; printing summary lines instead");
    }
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);

    let info = tokio::select! {
        r = source.open() => match r {
            Ok(info) => info,
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(ExitCode::from(4));
            }
        },
        _ = &mut ctrl_c => return Ok(ExitCode::from(130)),
        _ = sigterm.recv() => return Ok(ExitCode::from(130)),
    };
    let mut m = Monitor::new(key, info, a.record.clone(), live, a.json);
    m.start_recording()?;
    if !a.json && !live {
        eprintln!(
            "monitoring {} — {} ({}, {} channel(s)){}",
            m.key,
            m.info.instrument,
            m.info.method,
            m.info.channels.len(),
            m.record
                .as_ref()
                .map(|p| format!("; recording to {}", p.display()))
                .unwrap_or_default()
        );
    }

    let (tx, mut rx) = tokio::sync::mpsc::channel::<Msg>(64);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = spawn_source(source, tx, stop_rx);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(a.every));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    // The recording is flushed at least every second whatever --every says.
    let mut flush = tokio::time::interval(Duration::from_secs(1));
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    flush.tick().await;
    let deadline = a
        .duration
        .map(|d| tokio::time::Instant::now() + Duration::from_secs_f64(d));
    let until = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(until);

    let mut closed: Option<(SourceStats, Option<SourceInfo>, Option<PowerError>)> = None;
    let mut stop = loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(Msg::Batch(b, st)) => m.batch(b, st)?,
                Some(Msg::Closed { stats, info, error }) => {
                    let failed = error.is_some();
                    closed = Some((stats, info, error));
                    break if failed { Stop::SourceFailed } else { Stop::SourceEnded };
                }
                None => break Stop::SourceEnded,
            },
            _ = tick.tick() => m.tick()?,
            _ = flush.tick() => {
                if let Some(r) = m.recorder.as_mut() {
                    r.tick()?;
                }
            }
            _ = &mut until => break Stop::Duration,
            _ = &mut ctrl_c => break Stop::Interrupted,
            _ = sigterm.recv() => break Stop::Interrupted,
        }
    };
    // Stop the source and take everything it had already measured.
    let _ = stop_tx.send(true);
    if closed.is_none() {
        let drain = async {
            while let Some(msg) = rx.recv().await {
                match msg {
                    Msg::Batch(b, st) => m.batch(b, st)?,
                    Msg::Closed { stats, info, error } => {
                        return Ok::<_, anyhow::Error>(Some((stats, info, error)))
                    }
                }
            }
            Ok(None)
        };
        match tokio::time::timeout(Duration::from_secs(5), drain).await {
            Ok(r) => closed = r?,
            Err(_) => eprintln!("warning: the source did not close within 5 s"),
        }
    }
    let _ = task.await;
    let mut error_text = None;
    if let Some((stats, info, error)) = closed {
        m.stats = stats;
        if let Some(info) = info {
            m.info = info;
        }
        if let Some(e) = error {
            error_text = Some(e.to_string());
            if stop != Stop::Interrupted {
                stop = Stop::SourceFailed;
            }
        }
    }
    m.end_live();
    let mut summary = m.summary_json(stop, error_text.as_deref());
    if let Some(mut r) = m.recorder.take() {
        m.rows_final = Some(r.rows());
        r.set_info(m.info.clone());
        r.set_stats(m.stats.clone());
        r.set_extra("summary", summary.clone());
        let path = r.path().to_path_buf();
        r.finish(stop != Stop::SourceFailed)
            .with_context(|| format!("finishing {}", path.display()))?;
        summary["rows"] = Value::from(m.rows_final);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        m.print_summary(stop, error_text.as_deref());
    }
    if let Some(e) = &error_text {
        eprintln!("error: {e}");
    }
    Ok(ExitCode::from(match stop {
        Stop::Duration | Stop::SourceEnded => 0,
        Stop::Interrupted => 130,
        Stop::SourceFailed => 4,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> MonitorArgs {
        MonitorArgs {
            power: None,
            port: None,
            baud: None,
            file: None,
            host: None,
            user: None,
            ssh_port: None,
            identity: None,
            known_hosts: None,
            accept_new_host_key: false,
            live: false,
            record: None,
            duration: None,
            every: 1.0,
            json: false,
        }
    }

    #[test]
    fn flags_become_the_settings_they_alias_and_conflicts_are_refused() {
        let mut a = args();
        a.host = Some("orchestrator.local".into());
        a.ssh_port = Some(2222);
        a.identity = Some("/k/id_ed25519".into());
        a.accept_new_host_key = true;
        let o = overrides(&a).ok().unwrap();
        let got: Vec<(String, Value)> = o
            .iter()
            .map(|o| (o.path.join("."), o.value.clone()))
            .collect();
        assert_eq!(
            got,
            [
                ("port".to_string(), json!(2222)),
                ("host".to_string(), json!("orchestrator.local")),
                ("identity".to_string(), json!("/k/id_ed25519")),
                ("accept_new_host_key".to_string(), json!(true)),
            ]
        );
        // Flags not given set nothing.
        assert!(overrides(&args()).ok().unwrap().is_empty());
        let mut a = args();
        a.port = Some("/dev/ttyUSB0".into());
        a.ssh_port = Some(22);
        assert!(matches!(overrides(&a), Err(Refusal(2, _))));
    }

    #[test]
    fn channel_energy_is_the_trapezoid_and_the_counter_difference() {
        let mut c = ChannelView::new("node 0".into());
        for (t, w, e) in [
            (0.0, 10.0, 100.0),
            (1000.0, 20.0, 115.5),
            (3000.0, 20.0, 155.0),
        ] {
            let mut s = PowerSample::new(0, t, w);
            s.energy_j = Some(e);
            c.push(&s);
        }
        assert_eq!(c.integrated_j(), 15.0 + 40.0);
        assert_eq!(c.counter_j(), Some(55.0));
        c.push(&PowerSample::new(0, 4000.0, 20.0));
        assert_eq!(c.counter_j(), None); // a sample without the counter: no counter total
    }
}
