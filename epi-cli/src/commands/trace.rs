//! `epi trace`: power traces from other machines.
//!
//! ```text
//! epi trace pull --host H --user U [--ssh-port P] [--identity KEY] [--known-hosts F] [--accept-new-host-key]
//!                --start 2026-05-15T10:00:00Z --end 2026-05-15T10:30:00Z --output F.csv [--set KEY=VALUE ...] [--json]
//! ```
//!
//! `pull` reads the rows of `[start, end)` from a stored power log with the power source that
//! declares the [`Capability::PastWindow`] ability (the Orchestrator's SQLite database over SSH;
//! `--power KEY` when several do), built through the registry (`ctx.registry.power`) from its
//! table in epi-bench.toml with the flags over it, as aliases of its settings (`--host` →
//! `host`, `--user` → `user`, `--ssh-port` → `port`, `--identity` → `identity`, `--known-hosts` →
//! `known_hosts`, `--accept-new-host-key` → `accept_new_host_key`, a bare `--set K=V` → `K`;
//! `mode = "window"`, `start`, `end`: the ability's settings), each checked against the source's
//! description. It writes the trace CSV ([`TraceWriter`]) and its `.meta.json` sidecar
//! ([`TraceMeta`], with the clock offsets measured at the start and end), integrates the file
//! ([`summarize`]) and prints rows, nodes, window, clock offset and energy. Ctrl-C stops cleanly:
//! what was pulled is on disk, exit 130.

use crate::context::Context;
use anyhow::{anyhow, Context as _, Result};
use clap::{Args, Subcommand};
use epi_framework::config::Override;
use epi_framework::error::{InputError, Location};
use epi_framework::registry::{Capability, PluginKind};
use epi_framework::sample::{SourceEvent, SourceInfo, SourceStats};
use epi_framework::trace::{summarize, TraceMeta, TraceOptions, TraceSummary, TraceWriter};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Events kept in the sidecar; later ones are only counted.
const MAX_EVENTS: usize = 10_000;

/// `epi trace` subcommands.
#[derive(Debug, Subcommand)]
pub enum TraceCommand {
    /// Pull a UTC window of the Orchestrator's power log over SSH into a trace CSV (+ .meta.json).
    Pull(PullArgs),
}

/// Options of `epi trace pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// Orchestrator host (setting `host`; default from [orchestrator] in epi-bench.toml).
    #[arg(long)]
    pub host: Option<String>,
    /// SSH user (setting `user`; default: [orchestrator] user, then $USER).
    #[arg(long)]
    pub user: Option<String>,
    /// SSH port (setting `port`, 22).
    #[arg(long = "ssh-port", value_name = "PORT")]
    pub ssh_port: Option<u16>,
    /// SSH private key (setting `identity`; default: ssh-agent, then ~/.ssh/id_*).
    #[arg(long, value_name = "KEY")]
    pub identity: Option<PathBuf>,
    /// known_hosts file to check the host key against (setting `known_hosts`; ~/.ssh/known_hosts).
    #[arg(long = "known-hosts", value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// Record the host key if known_hosts has none for the host (a changed key is still refused).
    #[arg(long = "accept-new-host-key")]
    pub accept_new_host_key: bool,
    /// Window start, inclusive: RFC 3339 with a zone (2026-05-15T10:00:00Z).
    #[arg(long, value_name = "TIME")]
    pub start: String,
    /// Window end, exclusive: RFC 3339 with a zone (2026-05-15T10:30:00Z).
    #[arg(long, value_name = "TIME")]
    pub end: String,
    /// The trace CSV to write (its sidecar is FILE.meta.json).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: PathBuf,
    /// The power source to read with (default: the one that can read a past window).
    #[arg(long, value_name = "KEY")]
    pub power: Option<String>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `epi trace`.
pub fn run(ctx: &Context, cmd: &TraceCommand) -> Result<ExitCode> {
    match cmd {
        TraceCommand::Pull(a) => pull(ctx, a),
    }
}

fn input_error(field: &str, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(InputError::new(Location::default().field(field), message))
}

/// Parses an RFC 3339 time with a zone to Unix epoch ms.
fn parse_time(flag: &str, text: &str) -> Result<i64> {
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .map(|d| d.timestamp_millis())
        .map_err(|e| {
            input_error(
                flag,
                format!("expected an RFC 3339 time with a zone, like 2026-05-15T10:00:00Z, found `{text}` ({e})"),
            )
        })
}

fn utc_text(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// The flags as the source's settings (only those given), and the window.
fn overrides(a: &PullArgs, start: i64, end: i64) -> Vec<Override> {
    let path = |p: &PathBuf| Value::from(p.display().to_string());
    Override::given(vec![
        ("--host", "host", a.host.clone().map(Value::from)),
        ("--user", "user", a.user.clone().map(Value::from)),
        ("--ssh-port", "port", a.ssh_port.map(Value::from)),
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
        ("--start", "mode", Some(json!("window"))),
        ("--start", "start", Some(json!(start))),
        ("--end", "end", Some(json!(end))),
    ])
}

/// The source that reads past windows: `--power`, else the one registered with that ability.
fn window_source(ctx: &Context, a: &PullArgs) -> Result<String> {
    if let Some(k) = &a.power {
        return Ok(k.clone());
    }
    let keys = ctx
        .registry
        .with_capability(PluginKind::Power, Capability::PastWindow);
    match keys.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(anyhow!(crate::runcmd::Usage(
            "no power source here can read a past window of a stored log".into()
        ))),
        many => Err(anyhow!(crate::runcmd::Usage(format!(
            "several power sources can read a past window ({}): choose one with --power KEY",
            many.join(", ")
        )))),
    }
}

/// What the pull gathered, for the sidecar.
struct Pulled {
    info: SourceInfo,
    stats: SourceStats,
    events: Vec<SourceEvent>,
    dropped_events: u64,
    rows: u64,
    interrupted: bool,
    /// The whole window was read (false until then: a kill, a failure or Ctrl-C leaves it so).
    complete: bool,
}

fn write_meta(
    output: &Path,
    pulled: &Pulled,
    started: &str,
    zero: i64,
    start: i64,
    end: i64,
) -> Result<()> {
    let mut extra = Map::new();
    extra.insert("epi_bench_version".into(), json!(epi_framework::VERSION));
    extra.insert("command".into(), json!("trace pull"));
    extra.insert("window_start".into(), json!(utc_text(start)));
    extra.insert("window_end".into(), json!(utc_text(end)));
    extra.insert("rows".into(), json!(pulled.rows));
    extra.insert("complete".into(), json!(pulled.complete));
    for key in [
        "clock_offset_start",
        "clock_offset_end",
        "clock_drift_ms",
        "clock_offset_applied_ms",
    ] {
        if let Some(v) = pulled.info.details.get(key) {
            extra.insert(key.into(), v.clone());
        }
    }
    if pulled.dropped_events > 0 {
        extra.insert("events_not_listed".into(), json!(pulled.dropped_events));
    }
    let meta = TraceMeta {
        format_version: 1,
        source: pulled.info.clone(),
        started_utc: started.to_string(),
        timeline_zero_utc_ms: Some(zero),
        stats: pulled.stats.clone(),
        events: pulled.events.clone(),
        extra,
    };
    meta.write_for(output)
        .with_context(|| format!("writing {}", TraceMeta::path_for(output).display()))
}

fn pull(ctx: &Context, a: &PullArgs) -> Result<ExitCode> {
    let start = parse_time("--start", &a.start)?;
    let end = parse_time("--end", &a.end)?;
    if end <= start {
        return Err(input_error(
            "--end",
            format!(
                "the window is empty: --end {} is not after --start {}",
                a.end, a.start
            ),
        ));
    }
    let source_key = window_source(ctx, a)?;
    let config =
        ctx.own_plugin_settings(PluginKind::Power, &source_key, &overrides(a, start, end))?;
    // Factories do no I/O: whatever they refuse (a missing `host`, a bad value) is configuration.
    let mut source = ctx.registry.power(&source_key, &config).map_err(|e| {
        let table = format!("[power.{source_key}]");
        let loc = match &ctx.config.source {
            Some(f) => Location::file(f).field(table),
            None => Location::default().field(format!("{table} (flags and --set)")),
        };
        anyhow::Error::new(InputError::new(loc, e.to_string()))
    })?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let started = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);

    let (pulled, failure) = runtime.block_on(async {
        let info = source.open().await.map_err(|e| anyhow!(e))?;
        let zero = info
            .details
            .get("timeline_zero_utc_ms")
            .and_then(Value::as_i64)
            .unwrap_or(start);
        let mut writer = TraceWriter::create(&a.output, Duration::from_secs(1))?;
        let mut pulled = Pulled {
            info,
            stats: SourceStats::default(),
            events: Vec::new(),
            dropped_events: 0,
            rows: 0,
            interrupted: false,
            complete: false,
        };
        write_meta(&a.output, &pulled, &started, zero, start, end)?;
        let mut failure: Option<anyhow::Error> = None;
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            let batch = tokio::select! {
                b = source.next_batch() => b,
                _ = &mut ctrl_c => { pulled.interrupted = true; break; }
            };
            match batch {
                Ok(Some(b)) => {
                    if let Err(e) = writer.write(&b.samples) {
                        failure = Some(e.into());
                        break;
                    }
                    pulled.rows += b.samples.len() as u64;
                    for ev in b.events {
                        if pulled.events.len() < MAX_EVENTS {
                            pulled.events.push(ev);
                        } else {
                            pulled.dropped_events += 1;
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    failure = Some(anyhow!(e));
                    break;
                }
            }
        }
        writer.finish()?;
        if let Err(e) = source.close().await {
            if failure.is_none() && !pulled.interrupted {
                failure =
                    Some(anyhow!(e).context("closing the connection (end-of-pull clock offset)"));
            }
        }
        pulled.stats = source.stats();
        if let Some(i) = source.current_info() {
            pulled.info = i;
        }
        pulled.complete = failure.is_none() && !pulled.interrupted;
        write_meta(&a.output, &pulled, &started, zero, start, end)?;
        Ok::<_, anyhow::Error>((pulled, failure))
    })?;

    if let Some(e) = failure {
        eprintln!(
            "{} {} rows pulled before the failure are in {}",
            ctx.fail_mark(),
            pulled.rows,
            a.output.display()
        );
        return Err(e);
    }
    if pulled.interrupted {
        eprintln!(
            "interrupted: {} rows pulled so far are in {} (sidecar marks it incomplete)",
            pulled.rows,
            a.output.display()
        );
        return Ok(ExitCode::from(130));
    }
    if pulled.rows == 0 {
        return Err(anyhow!(
            "no rows in [{}, {}) on {}: nothing was measured in that window (check the times, the table, and the Orchestrator's clock)",
            utc_text(start),
            utc_text(end),
            pulled.info.instrument
        ));
    }
    let opts = TraceOptions {
        gap_limit_ms: ctx.config.general.gap_limit_ms,
        ..TraceOptions::default()
    };
    let summary = summarize(&a.output, &opts)
        .with_context(|| format!("integrating {}", a.output.display()))?;
    print_summary(ctx, a, &pulled, &summary, start, end)?;
    Ok(ExitCode::SUCCESS)
}

fn offset_text(v: Option<&Value>) -> String {
    match v {
        Some(o) => format!(
            "{:+.3} ms ± {:.3} ms",
            o["offset_ms"].as_f64().unwrap_or(f64::NAN),
            o["uncertainty_ms"].as_f64().unwrap_or(f64::NAN)
        ),
        None => "not measured".into(),
    }
}

fn print_summary(
    ctx: &Context,
    a: &PullArgs,
    pulled: &Pulled,
    s: &TraceSummary,
    start: i64,
    end: i64,
) -> Result<()> {
    let d = &pulled.info.details;
    let nodes: Vec<u32> = s.channels.keys().copied().collect();
    let per_node: Map<String, Value> = s
        .channels
        .iter()
        .map(|(n, c)| (n.to_string(), json!(c.joules)))
        .collect();
    let meta_path = TraceMeta::path_for(&a.output);
    if a.json {
        let v = json!({
            "output": a.output,
            "meta": meta_path,
            "rows": pulled.rows,
            "nodes": nodes,
            "window_start": utc_text(start),
            "window_end": utc_text(end),
            "clock_offset_start": d.get("clock_offset_start"),
            "clock_offset_end": d.get("clock_offset_end"),
            "clock_drift_ms": d.get("clock_drift_ms"),
            "total_joules": s.total_joules(),
            "counter_joules": s.counter_joules(),
            "per_node_joules": per_node,
            "duration_seconds": s.duration_seconds(),
            "avg_watts": s.avg_watts(),
            "peak_watts": s.peak_watts,
            "coverage": s.coverage(),
            "gaps": s.gap_count,
            "lost_samples": pulled.stats.lost_samples,
            "bad_rows": pulled.stats.bad_lines,
            "reboots": pulled.stats.reboots,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{} pulled {} rows from {}",
        ctx.ok_mark(),
        pulled.rows,
        d.get("destination")
            .and_then(Value::as_str)
            .unwrap_or("the Orchestrator")
    );
    println!("  {:<13} {}", "database", pulled.info.instrument);
    println!(
        "  {:<13} {} → {} ({:.1} s requested, {:.1} s of samples)",
        "window",
        utc_text(start),
        utc_text(end),
        (end - start) as f64 / 1000.0,
        s.duration_seconds()
    );
    println!(
        "  {:<13} {} ({})",
        "nodes",
        nodes.len(),
        nodes
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  {:<13} start {}, end {} (start offset applied to the timeline)",
        "clock offset",
        offset_text(d.get("clock_offset_start")),
        offset_text(d.get("clock_offset_end"))
    );
    println!(
        "  {:<13} {:.3} J ({:.6} Wh), mean {:.3} W, peak {:.3} W",
        "energy",
        s.total_joules(),
        s.total_joules() / 3600.0,
        s.avg_watts(),
        s.peak_watts
    );
    println!(
        "  {:<13} {}",
        "per node",
        s.channels
            .iter()
            .map(|(n, c)| format!("{n}: {:.3} J", c.joules))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(c) = s.counter_joules() {
        println!(
            "  {:<13} {:.3} J from the meters' Wh counters",
            "counter", c
        );
    }
    println!(
        "  {:<13} coverage {:.1} %, {} gap(s) > {} ms, {} lost sample(s), {} bad row(s), {} reboot(s)",
        "quality",
        s.coverage() * 100.0,
        s.gap_count,
        s.gap_limit_ms,
        pulled.stats.lost_samples,
        pulled.stats.bad_lines,
        pulled.stats.reboots
    );
    println!(
        "  {:<13} {}, {}",
        "wrote",
        a.output.display(),
        meta_path.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> PullArgs {
        PullArgs {
            host: Some("orch".into()),
            user: None,
            ssh_port: Some(2222),
            identity: None,
            known_hosts: Some(PathBuf::from("/k")),
            accept_new_host_key: false,
            start: "2026-05-15T10:00:00Z".into(),
            end: "2026-05-15T10:30:00Z".into(),
            output: PathBuf::from("o.csv"),
            power: None,
            json: false,
        }
    }

    #[test]
    fn flags_become_window_settings() {
        let a = args();
        let (s, e) = (
            parse_time("--start", &a.start).unwrap(),
            parse_time("--end", &a.end).unwrap(),
        );
        assert_eq!(e - s, 30 * 60 * 1000);
        let o = overrides(&a, s, e);
        let get = |k: &str| o.iter().find(|o| o.path == [k]).map(|o| o.value.clone());
        assert_eq!(get("host"), Some(json!("orch")));
        assert_eq!(
            get("user"),
            None,
            "a flag not given leaves the file's value"
        );
        assert_eq!(get("port"), Some(json!(2222)));
        assert_eq!(get("known_hosts"), Some(json!("/k")));
        assert_eq!(get("mode"), Some(json!("window")));
        assert_eq!(get("start"), Some(json!(s)));
        assert_eq!(get("end"), Some(json!(e)));
        assert_eq!(get("accept_new_host_key"), None);
    }

    #[test]
    fn bad_times_name_the_flag() {
        let e = parse_time("--start", "2026-05-15 10:00").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("--start: expected an RFC 3339 time"),
            "{msg}"
        );
        assert!(e.downcast_ref::<InputError>().is_some());
        assert!(
            parse_time("--end", "2026-05-15T10:00:00").is_err(),
            "a zone is required"
        );
        assert_eq!(
            parse_time("--end", "2026-05-15T12:00:00+02:00").unwrap(),
            1_778_839_200_000
        );
    }
}
