//! `epi profile`: the measured run — a power source and a backend side by side, the paper's
//! protocol (warm-up, idle baseline, the suites `--repetitions` times), every query timed against
//! the power it drew, and a validated EPI. The run engine is the framework's
//! ([`epi_framework::run`]); this is its command line.
//!
//! ```text
//! epi profile --power epi-meter --port /dev/ttyUSB0 --backend distributed-llama --hosts pi0,pi1,pi2,pi3 \
//!             --suite mmlu,arc-challenge,hellaswag
//! epi profile --power rapl --backend openai --url http://127.0.0.1:8080 --suite arc-challenge --limit 100
//! epi profile --power cpu-model --backend openai --url http://127.0.0.1:8080 --suite mmlu   # an estimate
//! ```
//!
//! `--power auto` tries the sources of `[run] auto_power` (default NVML, then RAPL) and stops with
//! what it looked for when none measures here; it never falls back to a model.

use crate::context::Context;
use crate::progress::Progress;
use crate::runcmd::{self, BackendArgs, LabelArgs, SuiteArgs, Usage};
use anyhow::{anyhow, Context as _, Result};
use clap::Args;
use epi_framework::config::Override;
use epi_framework::power::PowerError;
use epi_framework::registry::PluginKind;
use epi_framework::run::{RunDir, RunOptions, RunPower, Warmup};
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `epi profile`.
#[derive(Debug, Args)]
pub struct ProfileArgs {
    /// Power source: a registry key (`epi-meter`, `orchestrator`, `rapl`, `nvml`, `cpu-model`,
    /// `csv`, ...) or `auto` (NVML, then RAPL; see `epi list plugins --kind power`).
    #[arg(long, value_name = "KEY")]
    pub power: Option<String>,
    /// Serial device of the meter (source setting `port`).
    #[arg(long, value_name = "DEVICE")]
    pub port: Option<String>,
    /// Baud rate of the serial line (source setting `baud`).
    #[arg(long)]
    pub baud: Option<u32>,
    /// Any other power-source setting, `KEY=VALUE` (a TOML value, or a bare string); repeatable.
    #[arg(long = "power-option", short = 'P', value_name = "KEY=VALUE")]
    pub power_options: Vec<String>,
    #[command(flatten)]
    pub backend: BackendArgs,
    #[command(flatten)]
    pub suites: SuiteArgs,
    #[command(flatten)]
    pub labels: LabelArgs,
    /// Repetitions of the measured part; the median is reported with the spread (default 3).
    #[arg(long, value_name = "N")]
    pub repetitions: Option<u32>,
    /// Warm-up before the idle baseline, seconds of queries (default 300, the paper's thermal
    /// stabilisation; not measured).
    #[arg(long, value_name = "SECS")]
    pub warmup: Option<f64>,
    /// Warm-up: at least this many queries (with --warmup, both are reached).
    #[arg(long, value_name = "N")]
    pub warmup_queries: Option<usize>,
    /// Idle baseline before the measured part, s (default 30; 0: none).
    #[arg(long, value_name = "SECS")]
    pub idle: Option<f64>,
    /// Seconds the power source has to deliver its first samples, and the longest it may then
    /// stay silent: a stalled or unplugged meter stops the run (default 10).
    #[arg(long, value_name = "SECS")]
    pub first_sample_timeout: Option<f64>,
    /// Samples of a channel further apart than this are a gap, ms (default: configuration, 1000).
    #[arg(long, value_name = "MS")]
    pub gap_limit_ms: Option<f64>,
    /// The instrument's relative accuracy, e.g. 0.02 (default: the source's stated one, else 2 %).
    #[arg(long, value_name = "REL")]
    pub energy_accuracy: Option<f64>,
    /// Where run directories go: `<DIR>/<run id>/` (default `runs`).
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// The run directory itself (instead of `<output-dir>/<run id>`).
    #[arg(long, short, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Log the EPI result into this results database.
    #[arg(long, value_name = "FILE")]
    pub db: Option<PathBuf>,
    /// Tags of the database entry, comma-separated.
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    pub tags: Vec<String>,
    /// Print the summary JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// The source's configuration: its `[power.<key>]` table (and `--set`), with the flags that
/// alias its settings over it (`--port`, `--baud`, `--power-option K=V`), checked against the
/// source's description.
fn power_config(ctx: &Context, key: &str, a: &ProfileArgs) -> Result<Value> {
    let mut o = Override::given(vec![
        ("--port", "port", a.port.clone().map(Value::from)),
        ("--baud", "baud", a.baud.map(Value::from)),
    ]);
    for opt in &a.power_options {
        o.push(runcmd::parse_option(opt, "--power-option")?);
    }
    ctx.plugin_settings(PluginKind::Power, key, &o)
}

/// `--power auto`: the first source of the list that opens here (it is closed again; the run
/// opens it). An error lists every source tried and why it could not measure.
fn resolve_auto(ctx: &Context, a: &ProfileArgs) -> Result<String> {
    let candidates = ctx
        .config
        .run
        .auto_power
        .clone()
        .unwrap_or_else(|| ctx.registry.auto_power());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut tried = Vec::new();
    for key in &candidates {
        let mut source = match ctx.registry.power(key, &power_config(ctx, key, a)?) {
            Ok(s) => s,
            Err(e) => {
                tried.push(format!("{key}: {e}"));
                continue;
            }
        };
        match rt.block_on(source.open()) {
            Ok(_) => {
                let _ = rt.block_on(source.close());
                return Ok(key.clone());
            }
            Err(e @ PowerError::NotAvailable { .. }) | Err(e @ PowerError::Io { .. }) => {
                tried.push(e.to_string())
            }
            Err(e) => tried.push(e.to_string()),
        }
    }
    let others: Vec<String> = ctx
        .registry
        .list(Some(PluginKind::Power))
        .into_iter()
        .filter(|e| !candidates.contains(&e.key))
        .map(|e| format!("--power {}: {}", e.key, e.description))
        .collect();
    Err(anyhow!(
        "--power auto: no power source measures on this machine (tried, in order: {}).\n  {}\n\
         Name another source:\n  {}",
        candidates.join(", "),
        tried.join("\n  "),
        others.join("\n  ")
    ))
}

/// Runs `epi profile`.
pub fn run(ctx: &Context, a: &ProfileArgs) -> Result<ExitCode> {
    let r = &ctx.config.run;
    let Some(power_key) = a.power.clone().or_else(|| r.power.clone()) else {
        return Err(anyhow::Error::new(Usage(format!(
            "choose a power source with --power KEY (one of: {}, or auto)",
            ctx.registry.keys(PluginKind::Power).join(", ")
        ))));
    };
    // Build everything first (no I/O): a configuration error costs nothing.
    let backend_key = runcmd::backend_key(ctx, &a.backend)?;
    let backend = ctx
        .registry
        .backend(
            &backend_key,
            &runcmd::backend_config(ctx, &backend_key, &a.backend)?,
        )
        .with_context(|| format!("backend `{backend_key}`"))?;
    let suites = runcmd::load_suites(ctx, &a.suites)?;
    let power_key = if power_key == "auto" {
        resolve_auto(ctx, a)?
    } else {
        power_key
    };
    let source = ctx
        .registry
        .power(&power_key, &power_config(ctx, &power_key, a)?)
        .with_context(|| format!("power source `{power_key}`"))?;

    let run_id = epi_framework::run::new_run_id();
    let mut options = RunOptions::profile(&run_id);
    options.eval = runcmd::eval_options(ctx, &a.suites, &run_id);
    options.repetitions = a
        .repetitions
        .or(r.repetitions)
        .unwrap_or(ctx.config.general.repetitions)
        .max(1);
    options.warmup = Warmup {
        seconds: a
            .warmup
            .or(r.warmup_s)
            .unwrap_or(ctx.config.general.warmup_seconds),
        queries: a.warmup_queries.or(r.warmup_queries).unwrap_or(0),
    };
    options.idle_s = a
        .idle
        .or(r.idle_s)
        .unwrap_or(ctx.config.general.idle_seconds);
    options.first_sample_timeout_s = a
        .first_sample_timeout
        .or(r.first_sample_timeout_s)
        .unwrap_or(10.0);
    options.gap_limit_ms = a.gap_limit_ms.unwrap_or(ctx.config.general.gap_limit_ms);
    options.energy_accuracy = a.energy_accuracy;
    options.allow_failures = a.suites.allow_failures || r.allow_failures == Some(true);
    options.labels = runcmd::labels(ctx, &a.labels);
    for (name, v) in [
        ("--warmup", options.warmup.seconds),
        ("--idle", options.idle_s),
        ("--first-sample-timeout", options.first_sample_timeout_s),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(anyhow::Error::new(Usage(format!(
                "{name} {v}: expected a number of seconds ≥ 0"
            ))));
        }
    }
    let dir = match &a.output {
        Some(d) => RunDir::create(d),
        None => RunDir::under(
            a.output_dir
                .clone()
                .or_else(|| r.output_dir.clone())
                .unwrap_or_else(|| PathBuf::from("runs")),
            &run_id,
        ),
    }
    .context("the run directory")?;

    let progress = Progress::new(a.json);
    let power = RunPower {
        key: power_key,
        source,
    };
    let outcome = runcmd::execute(dir, options, backend, Some(power), &suites, &progress)?;
    runcmd::print(ctx, &outcome, a.json)?;
    let db = a.db.clone().or_else(|| r.db.clone());
    if let (Some(db), Some(result)) = (db, &outcome.epi) {
        let tags = if a.tags.is_empty() {
            r.tags.clone().unwrap_or_default()
        } else {
            a.tags.clone()
        };
        let id = epi_framework::resultsdb::ResultsDb::open(&db)
            .and_then(|mut d| d.log(result, &tags))
            .with_context(|| format!("logging the result into {}", db.display()))?;
        if !a.json {
            println!("logged as #{id} in {}", db.display());
        }
    }
    Ok(runcmd::exit_code(&outcome))
}
