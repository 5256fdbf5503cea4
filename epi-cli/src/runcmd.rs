//! What `epi eval` and `epi profile` share: the backend, suite and label flags, their
//! configuration (flags over `[run]`, `[backend.<key>]`, `[suite.<key>]`), running the framework's
//! [`RunEngine`] with Ctrl-C handling and the progress display, the summary table and the exit
//! code (0 complete, 3 bad configuration, 4 failed or incomplete, 130 interrupted).

use crate::context::Context;
use crate::progress::Progress;
use anyhow::{anyhow, bail, Context as _, Result};
use clap::Args;
use epi_framework::backend::{InferenceBackend, ScoringMode};
use epi_framework::config::Override;
use epi_framework::registry::{PluginConfig, PluginKind};
use epi_framework::run::report::RepetitionReport;
use epi_framework::run::{
    FailureKind, RunDir, RunEngine, RunLabels, RunOptions, RunOutcome, RunPower, RunStatus,
    SuiteSpec,
};
use epi_framework::settings::parse_assignment;
use serde_json::{json, Value};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// The inference backend and how to reach it.
#[derive(Debug, Args)]
pub struct BackendArgs {
    /// Inference backend: `openai`, `distributed-llama` (see `epi list plugins --kind backend`).
    #[arg(long)]
    pub backend: Option<String>,
    /// Server URL (alias of the backend setting `url`: openai).
    #[arg(long)]
    pub url: Option<String>,
    /// Alias of the backend setting `model`: the model name sent to the server (openai), or the
    /// model file (distributed-llama).
    #[arg(long)]
    pub model: Option<String>,
    /// Environment variable holding the API key (openai; the key itself never goes on a command
    /// line or into a file).
    #[arg(long, value_name = "VAR")]
    pub api_key_env: Option<String>,
    /// Cluster hosts, root first (distributed-llama): `host[:worker_port],...`.
    #[arg(long, value_name = "HOST,...", value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// SSH user (distributed-llama).
    #[arg(long, value_name = "USER")]
    pub ssh_user: Option<String>,
    /// SSH port (distributed-llama).
    #[arg(long, value_name = "PORT")]
    pub ssh_port: Option<u16>,
    /// SSH private key file (distributed-llama; default: ssh-agent, then ~/.ssh/id_*).
    #[arg(long, value_name = "FILE")]
    pub ssh_key: Option<PathBuf>,
    /// known_hosts file (distributed-llama; default ~/.ssh/known_hosts).
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// Record unknown host keys in known_hosts instead of refusing them (distributed-llama).
    #[arg(long)]
    pub accept_new_host_key: bool,
    /// Any other backend setting, `KEY=VALUE` (a TOML value, or a bare string); repeatable. The
    /// same as `--set backend.<key>.KEY=VALUE`; `epi list plugins --details <key>` lists them.
    #[arg(long = "backend-option", short = 'O', value_name = "KEY=VALUE")]
    pub backend_options: Vec<String>,
}

/// The suites and how they are scored.
#[derive(Debug, Args)]
pub struct SuiteArgs {
    /// Suites to run, comma-separated: `arc-challenge,mmlu` (see `epi list plugins --kind suite`).
    #[arg(long = "suite", value_name = "SUITE,...", value_delimiter = ',')]
    pub suites: Vec<String>,
    /// Any other suite setting, `SUITE.KEY=VALUE` (a TOML value, or a bare string); repeatable,
    /// e.g. `mmlu.subjects=["abstract_algebra"]`.
    #[arg(long = "suite-option", short = 'S', value_name = "SUITE.KEY=VALUE")]
    pub suite_options: Vec<String>,
    /// Evaluate only the first N items of each suite (lm-eval `--limit`; per subject for MMLU).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Few-shot examples per item, every suite (default: each suite's own: MMLU 5, ARC 25,
    /// HellaSwag 10); the benchmark key says the shots actually sent.
    #[arg(long, value_name = "N")]
    pub num_fewshot: Option<usize>,
    /// Directory of benchmark data files (default: configuration, then the suites' default).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Scoring mode: `loglikelihood` (lm-eval's) or `generative` (letter answers, for servers
    /// without log-probabilities). Default: loglikelihood when the backend supports it.
    #[arg(long, value_parser = ["loglikelihood", "generative"])]
    pub mode: Option<String>,
    /// Generative mode: most tokens per answer.
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<u32>,
    /// Generative mode: send chat requests (default: completions when the server has them).
    #[arg(long)]
    pub chat: bool,
    /// Generative mode: stream replies (time to first token; some servers omit usage in streams).
    #[arg(long)]
    pub stream: bool,
    /// At most this many queries in flight (never more than the backend allows).
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,
    /// Give a benchmark result even when some queries failed: accuracy over the answered items,
    /// with the failures counted beside it (default: such a run is incomplete).
    #[arg(long)]
    pub allow_failures: bool,
}

/// Labels of the result.
#[derive(Debug, Args)]
pub struct LabelArgs {
    /// Model identifier written into the results (default: what the server reports).
    #[arg(long)]
    pub model_name: Option<String>,
    /// Quantization written into the results (default: `unknown`).
    #[arg(long)]
    pub quantization: Option<String>,
    /// Surgery written into the results (default: `none (baseline)`).
    #[arg(long)]
    pub surgery: Option<String>,
    /// Hardware written into the results (default: detected on every host; `unknown` when it
    /// cannot be).
    #[arg(long)]
    pub hardware: Option<String>,
}

/// Parses `KEY=VALUE`: the value as TOML (`50`, `true`, `"x"`, `[1, 2]`), else as a string.
pub fn parse_option(s: &str, flag: &str) -> Result<Override> {
    let (path, value) = parse_assignment(s).map_err(|m| anyhow!(Usage(format!("{flag} {m}"))))?;
    Ok(Override {
        flag: format!("{flag} {s}"),
        path,
        value,
    })
}

/// A usage error (exit 2) with its message.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Usage {}

/// The backend key: the flag, else `[run] backend`.
pub fn backend_key(ctx: &Context, a: &BackendArgs) -> Result<String> {
    a.backend
        .clone()
        .or_else(|| ctx.config.run.backend.clone())
        .ok_or_else(|| {
            anyhow::Error::new(Usage(format!(
                "choose a backend with --backend KEY (one of: {})",
                ctx.registry.keys(PluginKind::Backend).join(", ")
            )))
        })
}

/// The backend's configuration: its `[backend.<key>]` table (and `--set`), with the flags that
/// alias its settings over it, checked against the backend's description (`--url` to a backend
/// without a `url` is refused, naming both).
pub fn backend_config(ctx: &Context, key: &str, a: &BackendArgs) -> Result<PluginConfig> {
    let mut o = Override::given(vec![
        ("--url", "url", a.url.clone().map(Value::String)),
        ("--model", "model", a.model.clone().map(Value::String)),
        (
            "--api-key-env",
            "api_key_env",
            a.api_key_env.clone().map(Value::String),
        ),
        (
            "--hosts",
            "hosts",
            (!a.hosts.is_empty()).then(|| json!(a.hosts)),
        ),
        (
            "--ssh-user",
            "ssh_user",
            a.ssh_user.clone().map(Value::String),
        ),
        ("--ssh-port", "ssh_port", a.ssh_port.map(|p| json!(p))),
        ("--ssh-key", "ssh_key", a.ssh_key.as_ref().map(|p| json!(p))),
        (
            "--known-hosts",
            "known_hosts",
            a.known_hosts.as_ref().map(|p| json!(p)),
        ),
        (
            "--accept-new-host-key",
            "accept_new_host_key",
            a.accept_new_host_key.then_some(Value::Bool(true)),
        ),
    ]);
    for opt in &a.backend_options {
        o.push(parse_option(opt, "--backend-option")?);
    }
    ctx.plugin_settings(PluginKind::Backend, key, &o)
}

fn suite_config(
    ctx: &Context,
    a: &SuiteArgs,
    suites: &[String],
    key: &str,
) -> Result<PluginConfig> {
    let base = ctx.config.plugin_config(PluginKind::Suite, key);
    let mut o = Vec::new();
    for opt in &a.suite_options {
        let mut over = parse_option(opt, "--suite-option")?;
        if over.path.len() < 2 {
            bail!("--suite-option `{opt}`: expected SUITE.KEY=VALUE (e.g. mmlu.subjects=[\"anatomy\"])");
        }
        let suite = over.path.remove(0);
        if !suites.iter().any(|s| s.trim() == suite) {
            bail!(
                "--suite-option `{opt}`: `{suite}` is not one of the suites run ({})",
                suites.join(", ")
            );
        }
        if suite == key {
            o.push(over);
        }
    }
    if let Some(n) = a.limit.or(ctx.config.run.limit) {
        o.push(Override::flag("--limit", "limit", n));
    }
    if let Some(n) = a.num_fewshot.or(ctx.config.run.num_fewshot) {
        o.push(Override::flag("--num-fewshot", "shots", n));
    }
    let has_dir = base.get("data_dir").is_some_and(|d| !d.is_null());
    match (&a.data_dir, &ctx.config.general.data_dir) {
        (Some(d), _) => o.push(Override::flag("--data-dir", "data_dir", json!(d))),
        (None, Some(d)) if !has_dir => o.push(Override::flag("--data-dir", "data_dir", json!(d))),
        _ => {}
    }
    ctx.plugin_settings(PluginKind::Suite, key, &o)
}

/// Builds the suites and loads their items (before anything starts on a cluster).
pub fn load_suites(ctx: &Context, a: &SuiteArgs) -> Result<Vec<SuiteSpec>> {
    let names: Vec<String> = if a.suites.is_empty() {
        ctx.config.run.suites.clone().unwrap_or_default()
    } else {
        a.suites.clone()
    };
    let mut out: Vec<SuiteSpec> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for key in &names {
        let key = key.trim();
        if key.is_empty() || seen.iter().any(|k| k == key) {
            continue;
        }
        let s = ctx
            .registry
            .suite(key, &suite_config(ctx, a, &names, key)?)
            .with_context(|| format!("suite `{key}`"))?;
        let items = s.items().map_err(|e| match e {
            epi_framework::suite::SuiteError::Input(i) => anyhow::Error::new(i),
            other => anyhow!("suite `{key}`: {other}"),
        })?;
        if items.is_empty() {
            bail!("suite `{key}` has no items to run");
        }
        seen.push(key.to_string());
        out.push(SuiteSpec { suite: s, items });
    }
    if out.is_empty() {
        return Err(anyhow::Error::new(Usage(format!(
            "--suite: name at least one suite (one of: {})",
            ctx.registry.keys(PluginKind::Suite).join(", ")
        ))));
    }
    Ok(out)
}

/// Scoring and generation options from the flags and `[run]`.
pub fn eval_options(
    ctx: &Context,
    a: &SuiteArgs,
    run_id: &str,
) -> epi_framework::eval::EvalOptions {
    let mut e = epi_framework::eval::EvalOptions::new(run_id);
    e.mode = match a.mode.as_deref().or(ctx.config.run.mode.as_deref()) {
        Some("loglikelihood") => Some(ScoringMode::Loglikelihood),
        Some("generative") => Some(ScoringMode::Generative),
        _ => None,
    };
    if let Some(n) = a.max_tokens.or(ctx.config.run.max_tokens) {
        e.generative.max_tokens = n;
    }
    if a.chat {
        e.generative.chat = Some(true);
    }
    e.generative.stream = a.stream;
    e.max_concurrency = a.concurrency.or(ctx.config.run.concurrency);
    e
}

/// Labels from the flags, then `[run]`, then `[general] default_hardware` when the user set one.
pub fn labels(ctx: &Context, a: &LabelArgs) -> RunLabels {
    let r = &ctx.config.run;
    let configured_hw = Some(ctx.config.general.default_hardware.clone())
        .filter(|h| !h.is_empty() && h != "unknown");
    RunLabels {
        model: a.model_name.clone().or_else(|| r.model_name.clone()),
        quantization: a.quantization.clone().or_else(|| r.quantization.clone()),
        surgery: a.surgery.clone().or_else(|| r.surgery.clone()),
        hardware: a
            .hardware
            .clone()
            .or_else(|| r.hardware.clone())
            .or(configured_hw),
    }
}

/// Runs the engine on a multi-threaded runtime with Ctrl-C / SIGTERM turned into a cancel.
pub fn execute(
    dir: RunDir,
    options: RunOptions,
    mut backend: Box<dyn InferenceBackend>,
    power: Option<RunPower>,
    suites: &[SuiteSpec],
    progress: &Progress,
) -> Result<RunOutcome> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let outcome = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut int = signal(SignalKind::interrupt()).context("installing the Ctrl-C handler")?;
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let watcher = tokio::spawn(async move {
            tokio::select! {
                _ = int.recv() => {},
                _ = term.recv() => {},
            }
            let _ = tx.send(true);
        });
        let engine = RunEngine::new(dir, options, progress);
        let r = engine.execute(&mut *backend, power, suites, rx).await;
        watcher.abort();
        r.map_err(anyhow::Error::new)
    });
    progress.finish();
    outcome
}

/// The exit code of an outcome (0 complete, 3 configuration, 4 failed or incomplete, 130
/// interrupted), with its message on stderr.
pub fn exit_code(o: &RunOutcome) -> ExitCode {
    let dir = o.dir.path.display();
    match o.status {
        RunStatus::Complete => ExitCode::SUCCESS,
        RunStatus::Interrupted => {
            eprintln!("interrupted: everything measured so far is in {dir}");
            ExitCode::from(130)
        }
        RunStatus::Incomplete | RunStatus::Failed | RunStatus::Running => {
            if let Some(e) = &o.error {
                eprintln!("error: {e}");
            }
            eprintln!(
                "the run is {}: what was measured is in {dir}",
                o.status.as_str()
            );
            ExitCode::from(if o.failure == Some(FailureKind::Configuration) {
                3
            } else {
                4
            })
        }
    }
}

/// Prints the outcome: the summary JSON with `--json`, else a table.
pub fn print(ctx: &Context, o: &RunOutcome, json_out: bool) -> Result<()> {
    if json_out {
        // A closed pipe (`| head`) is not an error of the run: the files are written.
        let _ = writeln!(
            std::io::stdout(),
            "{}",
            serde_json::to_string_pretty(&o.summary)?
        );
        return Ok(());
    }
    let s = &o.summary;
    let backend = &s["backend"];
    if !backend.is_null() {
        println!(
            "{} {} ({}), {}",
            ctx.bold("backend:"),
            backend["server"].as_str().unwrap_or("?"),
            backend["version"].as_str().unwrap_or("version unknown"),
            backend["model"].as_str().unwrap_or("model unknown"),
        );
    }
    println!(
        "{} {}",
        ctx.bold("hardware:"),
        s["labels"]["hardware"].as_str().unwrap_or("unknown")
    );
    if let Some(mode) = s["scoring_mode"].as_str() {
        let d = &backend["details"];
        let mut method = d["loglikelihood_method"]
            .as_str()
            .unwrap_or("none")
            .to_string();
        if let Some(m) = d["top_n_mode"].as_str() {
            method.push_str(&format!(
                ", {m}, {}",
                if d["reproducible"] == Value::Bool(true) {
                    "reproducible"
                } else {
                    "not reproducible"
                }
            ));
        }
        println!(
            "{} {}{}; EPI token basis: {}",
            ctx.bold("scoring:"),
            mode,
            if mode == "loglikelihood" {
                format!(" (method {method})")
            } else {
                " (not comparable with lm-eval numbers)".into()
            },
            s["token_basis"].as_str().unwrap_or("?")
        );
    }
    if let Some(p) = s["power"].as_object() {
        println!(
            "{} {} — {} ({}){}",
            ctx.bold("power:"),
            p.get("source").and_then(Value::as_str).unwrap_or("?"),
            p.get("instrument").and_then(Value::as_str).unwrap_or("?"),
            p.get("method").and_then(Value::as_str).unwrap_or("?"),
            if p.get("method").and_then(Value::as_str) == Some("modelled") {
                " — an ESTIMATE, not a measurement"
            } else {
                ""
            }
        );
    }
    let reps: &[RepetitionReport] = &o.repetitions;
    let median = o.median.as_ref().map(|m| m.repetition);
    for r in reps {
        let mark = if Some(r.repetition) == median && reps.len() > 1 {
            " (median)"
        } else {
            ""
        };
        if reps.len() > 1 {
            println!(
                "{}{mark}",
                ctx.bold(&format!("repetition {}:", r.repetition))
            );
        }
        for suite in &r.suites {
            print_suite(suite);
        }
        if let (Some(e), Some(m)) = (&r.energy, &r.metrics) {
            println!(
                "  EPI {:.6} J/token ÷ accuracy{}  ({} basis, {} tokens)",
                m.epi,
                m.epi_ci95
                    .map(|(lo, hi)| if hi.is_finite() {
                        format!(" [{lo:.6}, {hi:.6}]")
                    } else {
                        format!(" [{lo:.6}, unbounded: an accuracy interval reaches 0]")
                    })
                    .unwrap_or_default(),
                m.token_basis,
                m.tokens
            );
            println!(
                "  energy {:.3} J gross{} over {:.1} s, {:.2} W avg; queries {:.3} J + between {:.3} J; coverage {:.4}",
                e.total_j,
                e.net_total_j.map(|n| format!(", {n:.3} J net")).unwrap_or_default(),
                e.duration_s,
                m.avg_watts,
                e.queries_j,
                e.between_queries_j,
                e.coverage
            );
            println!(
                "  EPT_in {}  EPT_out {}  EPT_total {}  IPJ {}  IPW {}",
                fmt(m.ept_in),
                fmt(m.ept_out),
                fmt(m.ept_total),
                fmt(m.ipj),
                fmt(m.ipw)
            );
        } else if let Some(e) = &r.energy {
            println!(
                "  energy {:.3} J over {:.1} s (no EPI: no accuracy or no tokens)",
                e.total_j, e.duration_s
            );
        }
    }
    if reps.len() > 1 {
        if let Some(sp) = s["spread"]["epi"].as_object() {
            println!(
                "  EPI over {} repetitions: {} – {}",
                reps.len(),
                sp.get("min")
                    .and_then(Value::as_f64)
                    .map_or("?".into(), |v| format!("{v:.6}")),
                sp.get("max")
                    .and_then(Value::as_f64)
                    .map_or("?".into(), |v| format!("{v:.6}")),
            );
        }
    }
    if let Some(w) = s["idle"]["watts"].as_f64() {
        println!("  idle baseline {w:.2} W");
    }
    println!("run: {}", o.dir.path.display());
    if let Some(b) = &o.benchmark {
        println!("benchmark: {}", b.display());
    }
    if o.epi.is_some() {
        println!("epi: {}", o.dir.epi().display());
    }
    Ok(())
}

fn fmt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.6}")).unwrap_or_else(|| "—".into())
}

fn print_suite(suite: &Value) {
    let mut line = format!("  {:<16}", suite["suite"].as_str().unwrap_or("?"));
    match suite["metrics"].as_object() {
        Some(m) if !m.is_empty() => {
            for (name, v) in m {
                let value = v["value"].as_f64().unwrap_or(f64::NAN);
                match v["ci95"].as_array() {
                    Some(ci) if ci.len() == 2 => line.push_str(&format!(
                        " {name} {value:.4} [{:.4}, {:.4}]",
                        ci[0].as_f64().unwrap_or(f64::NAN),
                        ci[1].as_f64().unwrap_or(f64::NAN)
                    )),
                    _ => line.push_str(&format!(" {name} {value:.4}")),
                }
            }
        }
        Some(_) => line.push_str(" no accuracy (prompt suite)"),
        None => line.push_str(" no items answered"),
    }
    let items = suite["items"].as_u64().unwrap_or(0);
    let planned = suite["items_planned"].as_u64().unwrap_or(0);
    line.push_str(&format!(
        "  items {items}{}  answered {}  failed {}  unparseable {}",
        if items < planned {
            format!("/{planned}")
        } else {
            String::new()
        },
        suite["answered"].as_u64().unwrap_or(0),
        suite["failed"].as_u64().unwrap_or(0),
        suite["unparseable"].as_u64().unwrap_or(0),
    ));
    if suite["scoring_mode"] == "loglikelihood" && suite["answered"].as_u64().unwrap_or(0) > 0 {
        let answered = suite["answered"].as_u64().unwrap_or(0);
        let inexact = suite["inexact_items"].as_u64().unwrap_or(0);
        line.push_str(&format!(
            "  exact {}/{answered}",
            answered.saturating_sub(inexact)
        ));
    }
    println!("{line}");
    if let Some(errors) = suite["errors"].as_object() {
        for (e, n) in errors.iter().take(3) {
            println!("    {}× {e}", n.as_u64().unwrap_or(0));
        }
    }
}
