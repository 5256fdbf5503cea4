//! `epi eval`: accuracy alone, like lm-eval — runs suites through a backend (no power source) and
//! writes per-query records (JSON Lines and Arrow), a summary JSON and a benchmark JSON.
//!
//! ```text
//! epi eval --backend openai --url http://127.0.0.1:8080 --suite arc-challenge,mmlu --limit 20
//! ```

use crate::context::Context;
use anyhow::{anyhow, bail, Context as _, Result};
use clap::Args;
use epi_framework::backend::{BackendInfo, InferenceBackend, ScoringMode};
use epi_framework::config::merge_config;
use epi_framework::eval::{EvalError, EvalOptions, Evaluator, GenerativeOptions, SuiteRun};
use epi_framework::records::RecordSink;
use epi_framework::registry::{PluginConfig, PluginKind};
use epi_framework::suite::{Suite, SuiteItem, SuiteScore};
use epi_framework::BenchmarkResult;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Options of `epi eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Inference backend: `openai`, `distributed-llama` (see `epi list plugins --kind backend`).
    #[arg(long)]
    pub backend: String,
    /// Server URL (openai backend).
    #[arg(long)]
    pub url: Option<String>,
    /// Model name sent to the server (openai), or the model file (distributed-llama).
    #[arg(long)]
    pub model: Option<String>,
    /// Environment variable holding the API key (openai).
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
    /// Any other backend setting, `KEY=VALUE` (a TOML value, or a bare string); repeatable.
    #[arg(long = "backend-option", short = 'O', value_name = "KEY=VALUE")]
    pub backend_options: Vec<String>,
    /// Suites to run, comma-separated: `arc-challenge,mmlu` (see `epi list plugins --kind suite`).
    #[arg(
        long = "suite",
        value_name = "SUITE,...",
        value_delimiter = ',',
        required = true
    )]
    pub suites: Vec<String>,
    /// Any other suite setting, `SUITE.KEY=VALUE` (a TOML value, or a bare string); repeatable,
    /// e.g. `mmlu.subjects=["abstract_algebra"]`.
    #[arg(long = "suite-option", short = 'S', value_name = "SUITE.KEY=VALUE")]
    pub suite_options: Vec<String>,
    /// Evaluate only the first N items of each suite (lm-eval `--limit`; per subject for MMLU).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Directory of benchmark data files (default: configuration, then the suites' default).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Scoring mode: `loglikelihood` (lm-eval's) or `generative` (letter answers, for servers
    /// without log-probabilities). Default: loglikelihood when the backend supports it.
    #[arg(long, value_parser = ["loglikelihood", "generative"])]
    pub mode: Option<String>,
    /// Generative mode: most tokens per answer.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub max_tokens: u32,
    /// Generative mode: send chat requests (default: completions when the server has them).
    #[arg(long)]
    pub chat: bool,
    /// Generative mode: stream replies (time to first token; some servers omit usage in streams).
    #[arg(long)]
    pub stream: bool,
    /// At most this many queries in flight (never more than the backend allows).
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,
    /// Output directory (default: `eval-<UTC time>`).
    #[arg(long, short, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Model identifier written into the benchmark JSON (default: what the server reports).
    #[arg(long)]
    pub model_name: Option<String>,
    /// Quantization written into the benchmark JSON.
    #[arg(long, default_value = "unknown")]
    pub quantization: String,
    /// Surgery written into the benchmark JSON.
    #[arg(long, default_value = "none (baseline)")]
    pub surgery: String,
    /// Hardware written into the benchmark JSON (default: configuration).
    #[arg(long)]
    pub hardware: Option<String>,
    /// Print the summary JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Parses `KEY=VALUE`: the value as TOML (`50`, `true`, `"x"`, `[1, 2]`), else as a string.
pub fn parse_option(s: &str) -> Result<(String, Value)> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| anyhow!("--backend-option `{s}`: expected KEY=VALUE (e.g. top_n=50)"))?;
    let key = k.trim();
    if key.is_empty() {
        bail!("--backend-option `{s}`: the key is empty");
    }
    let value = match toml::from_str::<toml::Table>(&format!("v = {}", v.trim())) {
        Ok(t) => serde_json::to_value(&t["v"]).unwrap_or(Value::String(v.trim().to_string())),
        Err(_) => Value::String(v.trim().to_string()),
    };
    Ok((key.to_string(), value))
}

/// The backend's configuration: its `[backend.<key>]` table, overridden by flags.
fn backend_config(ctx: &Context, a: &EvalArgs) -> Result<PluginConfig> {
    let mut o = Map::new();
    let mut set = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            o.insert(k.to_string(), v);
        }
    };
    set("url", a.url.clone().map(Value::String));
    set("model", a.model.clone().map(Value::String));
    set("api_key_env", a.api_key_env.clone().map(Value::String));
    set("hosts", (!a.hosts.is_empty()).then(|| json!(a.hosts)));
    set("ssh_user", a.ssh_user.clone().map(Value::String));
    set("ssh_port", a.ssh_port.map(|p| json!(p)));
    set("ssh_key", a.ssh_key.as_ref().map(|p| json!(p)));
    set("known_hosts", a.known_hosts.as_ref().map(|p| json!(p)));
    set(
        "accept_new_host_key",
        a.accept_new_host_key.then_some(Value::Bool(true)),
    );
    for opt in &a.backend_options {
        let (k, v) = parse_option(opt)?;
        o.insert(k, v);
    }
    let base = ctx.config.plugin_config(PluginKind::Backend, &a.backend);
    Ok(merge_config(&base, &Value::Object(o)))
}

fn suite_config(ctx: &Context, a: &EvalArgs, key: &str) -> Result<PluginConfig> {
    let base = ctx.config.plugin_config(PluginKind::Suite, key);
    let mut o = Map::new();
    for opt in &a.suite_options {
        let (k, v) = parse_option(opt).map_err(|e| {
            anyhow!(
                "{}",
                e.to_string().replace("--backend-option", "--suite-option")
            )
        })?;
        let (suite, k) = k
            .split_once('.')
            .ok_or_else(|| anyhow!("--suite-option `{opt}`: expected SUITE.KEY=VALUE (e.g. mmlu.subjects=[\"anatomy\"])"))?;
        if !a.suites.iter().any(|s| s.trim() == suite) {
            bail!(
                "--suite-option `{opt}`: `{suite}` is not one of the suites run ({})",
                a.suites.join(", ")
            );
        }
        if suite == key {
            o.insert(k.to_string(), v);
        }
    }
    if let Some(n) = a.limit {
        o.insert("limit".into(), json!(n));
    }
    let has_dir = base.get("data_dir").is_some_and(|d| !d.is_null());
    match (&a.data_dir, &ctx.config.general.data_dir) {
        (Some(d), _) => {
            o.insert("data_dir".into(), json!(d));
        }
        (None, Some(d)) if !has_dir => {
            o.insert("data_dir".into(), json!(d));
        }
        _ => {}
    }
    Ok(merge_config(&base, &Value::Object(o)))
}

/// Why the run ended.
enum Ending {
    Done,
    Interrupted,
    Failed(String),
}

/// Runs `epi eval`.
pub fn run(ctx: &Context, a: &EvalArgs) -> Result<ExitCode> {
    let mode = match a.mode.as_deref() {
        Some("loglikelihood") => Some(ScoringMode::Loglikelihood),
        Some("generative") => Some(ScoringMode::Generative),
        _ => None,
    };
    // Build everything first (no I/O): a configuration error costs nothing.
    let mut backend = ctx
        .registry
        .backend(&a.backend, &backend_config(ctx, a)?)
        .with_context(|| format!("backend `{}`", a.backend))?;
    let mut suites: Vec<(String, Box<dyn Suite>)> = Vec::new();
    for key in &a.suites {
        let key = key.trim();
        if key.is_empty() || suites.iter().any(|(k, _)| k == key) {
            continue;
        }
        let s = ctx
            .registry
            .suite(key, &suite_config(ctx, a, key)?)
            .with_context(|| format!("suite `{key}`"))?;
        suites.push((key.to_string(), s));
    }
    if suites.is_empty() {
        bail!("--suite: no suite named");
    }
    // Load the items before anything starts on the cluster.
    let mut items: Vec<Vec<SuiteItem>> = Vec::new();
    for (key, s) in &suites {
        let v = s.items().map_err(|e| match e {
            epi_framework::suite::SuiteError::Input(i) => anyhow::Error::new(i),
            other => anyhow!("suite `{key}`: {other}"),
        })?;
        if v.is_empty() {
            bail!("suite `{key}` has no items to run");
        }
        items.push(v);
    }

    let started_utc = chrono::Utc::now();
    let out_dir = a
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("eval-{}", started_utc.format("%Y%m%dT%H%M%SZ"))));
    let mut sink = RecordSink::create(&out_dir, 64)
        .with_context(|| format!("output directory {}", out_dir.display()))?;
    let run_id = uuid_v4();
    let opts = EvalOptions {
        run_id: run_id.clone(),
        mode,
        generative: GenerativeOptions {
            max_tokens: a.max_tokens,
            chat: a.chat.then_some(true),
            stream: a.stream,
            ..GenerativeOptions::default()
        },
        max_concurrency: a.concurrency,
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let origin = Instant::now();
    let outcome = rt.block_on(async {
        let mut interrupt = Interrupt::new()?;
        let started = tokio::select! {
            r = backend.start() => Some(r),
            _ = interrupt.wait() => None,
        };
        let info = match started {
            Some(Ok(i)) => i,
            None => {
                let _ = backend.stop().await;
                return Ok::<_, anyhow::Error>((
                    None,
                    Vec::new(),
                    Ending::Interrupted,
                    None,
                    BTreeMap::new(),
                ));
            }
            Some(Err(e)) => {
                let _ = backend.stop().await;
                return Err(
                    anyhow::Error::new(e).context(format!("starting backend `{}`", a.backend))
                );
            }
        };
        let (runs, ending, mode, partial) = run_suites(
            &*backend,
            opts,
            origin,
            &suites,
            items,
            &mut sink,
            &mut interrupt,
        )
        .await;
        if let Err(e) = backend.stop().await {
            eprintln!("warning: stopping the backend: {e}");
        }
        Ok((Some(info), runs, ending, mode, partial))
    })?;
    let (info, runs, ending, mode, partial) = outcome;
    let (jsonl, arrow) = sink.finish().context("closing the record files")?;
    let info = match info {
        Some(i) => i,
        None => {
            eprintln!("interrupted before the backend had started; nothing was run");
            return Ok(ExitCode::from(130));
        }
    };
    let mode = mode.unwrap_or(ScoringMode::Generative);
    let ended_utc = chrono::Utc::now();

    // Scores: complete suites have theirs; an unfinished suite is aggregated over what finished.
    let mut suite_rows = Vec::new();
    let mut complete = true;
    for run in &runs {
        let score = run
            .score
            .clone()
            .or_else(|| partial.get(&run.info.key).cloned());
        if run.score.is_none() {
            complete = false;
        }
        suite_rows.push((run, score));
    }
    if runs.len() < suites.len() {
        complete = false;
    }
    let tokens_in: u64 = runs.iter().map(|r| r.tokens_in).sum();
    let tokens_out: u64 = runs.iter().map(|r| r.tokens_out).sum();
    let span = runs.iter().filter_map(|r| r.span_s).fold(
        None,
        |acc: Option<(f64, f64)>, (s, e)| match acc {
            None => Some((s, e)),
            Some((a0, b0)) => Some((a0.min(s), b0.max(e))),
        },
    );
    let duration = span.map(|(s, e)| e - s).unwrap_or(0.0);

    // The benchmark JSON: complete runs only (a partial accuracy is not a benchmark result).
    let benchmark_path = out_dir.join("benchmark.json");
    let mut benchmark_written = false;
    let tokens_unknown: usize = runs.iter().map(|r| r.tokens_unknown).sum();
    if complete && tokens_unknown > 0 {
        eprintln!(
            "warning: no benchmark JSON: the generated-token count of {tokens_unknown} queries is unknown \
             (streamed replies without usage?), so total_tokens would be wrong; run without --stream"
        );
    }
    if complete && tokens_unknown == 0 {
        let mut b = BenchmarkResult {
            model: a
                .model_name
                .clone()
                .or_else(|| info.model.clone())
                .unwrap_or_else(|| "unknown".into()),
            quantization: a.quantization.clone(),
            surgery: a.surgery.clone(),
            benchmarks: BTreeMap::new(),
            total_tokens: tokens_out,
            duration_seconds: duration,
            timestamp_utc: started_utc.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            hardware: a
                .hardware
                .clone()
                .unwrap_or_else(|| ctx.config.general.default_hardware.clone()),
            inference_engine: info.server.clone(),
            inference_engine_version: info.version.clone().unwrap_or_else(|| "unknown".into()),
            tokens_in: Some(tokens_in),
            token_basis: Some("generated".into()),
            scoring_mode: Some(mode.as_str().into()),
            benchmark_items: BTreeMap::new(),
            benchmark_ci95: BTreeMap::new(),
            extra: Map::new(),
        };
        for (run, score) in &suite_rows {
            let Some(score) = score else { continue };
            if !run.info.has_accuracy {
                continue;
            }
            let Some(v) = score.headline_value() else {
                continue;
            };
            b.benchmarks.insert(score.benchmark_key.clone(), v);
            b.benchmark_items
                .insert(score.benchmark_key.clone(), score.n_items as u64);
            if let Some(ci) = score.metrics.get(&score.headline).and_then(|m| m.ci95) {
                b.benchmark_ci95.insert(score.benchmark_key.clone(), ci);
            }
        }
        b.extra.insert("run_id".into(), json!(run_id));
        b.extra.insert("backend".into(), json!(info.backend));
        if let Some(m) = info.details.get("loglikelihood_method") {
            b.extra.insert("loglikelihood_method".into(), m.clone());
        }
        if !b.benchmarks.is_empty() {
            b.to_json(&benchmark_path)
                .context("writing the benchmark JSON")?;
            benchmark_written = true;
        }
    }

    let (ending_name, error) = match &ending {
        Ending::Done => ("complete", None),
        Ending::Interrupted => ("interrupted", None),
        Ending::Failed(e) => ("failed", Some(e.clone())),
    };
    let summary = json!({
        "run_id": run_id,
        "status": ending_name,
        "error": error,
        "started_utc": started_utc.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "ended_utc": ended_utc.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "duration_seconds": duration,
        "scoring_mode": mode.as_str(),
        "backend": info,
        "suites": suite_rows.iter().map(|(r, s)| suite_json(r, s.as_ref())).collect::<Vec<_>>(),
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
        "files": {
            "records_jsonl": jsonl,
            "records_arrow": arrow,
            "benchmark": benchmark_written.then_some(&benchmark_path),
        },
    });
    let summary_path = out_dir.join("summary.json");
    epi_framework::jsonio::write_json_atomic(&summary_path, &summary)
        .context("writing the summary JSON")?;

    if a.json {
        // A closed pipe (`| head`) is not an error of the run: the files are written.
        let _ = writeln!(
            std::io::stdout(),
            "{}",
            serde_json::to_string_pretty(&summary)?
        );
    } else {
        print_table(ctx, &info, mode, &suite_rows, &ending);
        println!(
            "records: {} (+ {})",
            jsonl.display(),
            arrow
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        );
        println!("summary: {}", summary_path.display());
        if benchmark_written {
            println!("benchmark: {}", benchmark_path.display());
        }
    }
    match ending {
        Ending::Done => {
            let all_failed = runs.iter().all(|r| r.done() > 0 && r.failed() == r.done());
            if all_failed {
                eprintln!("error: every query failed (see the `error` field of the records)");
                return Ok(ExitCode::from(4));
            }
            Ok(ExitCode::SUCCESS)
        }
        Ending::Interrupted => {
            eprintln!(
                "interrupted: every finished query is recorded in {}",
                out_dir.display()
            );
            Ok(ExitCode::from(130))
        }
        Ending::Failed(e) => {
            eprintln!("error: {e}");
            eprintln!("every finished query is recorded in {}", out_dir.display());
            Ok(ExitCode::from(4))
        }
    }
}

type RunResult = (
    Vec<SuiteRun>,
    Ending,
    Option<ScoringMode>,
    BTreeMap<String, SuiteScore>,
);

async fn run_suites(
    backend: &dyn InferenceBackend,
    opts: EvalOptions,
    origin: Instant,
    suites: &[(String, Box<dyn Suite>)],
    items: Vec<Vec<SuiteItem>>,
    sink: &mut RecordSink,
    interrupt: &mut Interrupt,
) -> RunResult {
    let mut ev = match Evaluator::new(backend, opts, origin) {
        Ok(e) => e,
        Err(e) => {
            return (
                Vec::new(),
                Ending::Failed(e.to_string()),
                None,
                BTreeMap::new(),
            )
        }
    };
    let mode = ev.mode();
    let mut ending = Ending::Done;
    let mut partial = BTreeMap::new();
    for ((key, suite), its) in suites.iter().zip(items) {
        eprintln!(
            "{key}: {} items, {} scoring, {} at a time",
            its.len(),
            mode.as_str(),
            ev.concurrency()
        );
        let r = tokio::select! {
            r = ev.run_suite(&**suite, its, sink) => Some(r.map(|_| ())),
            _ = interrupt.wait() => None,
        };
        match r {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                if let Some(p) = ev.partial_score(&**suite) {
                    partial.insert(key.clone(), p);
                }
                ending = Ending::Failed(match &e {
                    EvalError::ServerLost { .. } => {
                        format!("{e} (the server died or became unreachable)")
                    }
                    _ => e.to_string(),
                });
                break;
            }
            None => {
                if let Some(p) = ev.partial_score(&**suite) {
                    partial.insert(key.clone(), p);
                }
                ending = Ending::Interrupted;
                break;
            }
        }
    }
    let _ = sink.flush();
    (ev.runs().to_vec(), ending, Some(mode), partial)
}

fn suite_json(run: &SuiteRun, score: Option<&SuiteScore>) -> Value {
    json!({
        "suite": run.info.key,
        "benchmark_key": run.info.benchmark_key,
        "complete": run.score.is_some(),
        "scoring_mode": run.mode.as_str(),
        "loglikelihood_method": run.method,
        "items_planned": run.n_planned,
        "items": run.done(),
        "failed": run.failed(),
        "unparseable": run.unparseable(),
        "inexact_items": run.inexact_items,
        "headline": score.map(|s| s.headline.clone()),
        "headline_value": score.and_then(|s| s.headline_value()),
        "metrics": score.map(|s| json!(s.metrics)),
        "groups": score.map(|s| json!(s.groups)),
        "tokens_in": run.tokens_in,
        "tokens_out": run.tokens_out,
        "cached_tokens": run.cached_tokens,
        "requests": run.requests,
        "token_count_sources": run.token_count_sources,
        "span_s": run.span_s,
        "errors": run.errors,
        "tokens_unknown": run.tokens_unknown,
        "data": run.info.data,
    })
}

fn print_table(
    ctx: &Context,
    info: &BackendInfo,
    mode: ScoringMode,
    rows: &[(&SuiteRun, Option<SuiteScore>)],
    ending: &Ending,
) {
    let version = info.version.as_deref().unwrap_or("version unknown");
    let model = info.model.as_deref().unwrap_or("model unknown");
    println!(
        "{} {} ({version}), {model}",
        ctx.bold("backend:"),
        info.server
    );
    let method = info
        .details
        .get("loglikelihood_method")
        .and_then(Value::as_str)
        .unwrap_or("none");
    println!(
        "{} {}{}",
        ctx.bold("scoring:"),
        mode.as_str(),
        if mode == ScoringMode::Loglikelihood {
            format!(" (method {method})")
        } else {
            " (not comparable with lm-eval numbers)".into()
        }
    );
    for (run, score) in rows {
        let mut line = format!("  {:<16}", run.info.key);
        match score {
            Some(s) => {
                for (name, m) in &s.metrics {
                    match m.ci95 {
                        Some((lo, hi)) => {
                            line.push_str(&format!(" {name} {:.4} [{lo:.4}, {hi:.4}]", m.value))
                        }
                        None => line.push_str(&format!(" {name} {:.4}", m.value)),
                    }
                }
                if s.metrics.is_empty() {
                    line.push_str(" no accuracy (prompt suite)");
                }
            }
            None => line.push_str(" no items finished"),
        }
        line.push_str(&format!(
            "  items {}{}  failed {}  unparseable {}",
            run.done(),
            if run.done() < run.n_planned {
                format!("/{}", run.n_planned)
            } else {
                String::new()
            },
            run.failed(),
            run.unparseable()
        ));
        if mode == ScoringMode::Loglikelihood && run.info.has_accuracy && run.done() > 0 {
            line.push_str(&format!(
                "  exact {}/{}",
                run.done() - run.failed() - run.inexact_items,
                run.done() - run.failed()
            ));
        }
        println!("{line}");
        for (e, n) in run.errors.iter().take(3) {
            println!("    {n}× {e}");
        }
    }
    if matches!(ending, Ending::Interrupted) {
        println!("  (interrupted: scores cover the finished items only)");
    }
}

fn uuid_v4() -> String {
    epi_framework::eval::new_run_id()
}

/// SIGINT / SIGTERM, registered once for the whole run.
struct Interrupt {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Interrupt {
    fn new() -> Result<Interrupt> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Interrupt {
            int: signal(SignalKind::interrupt()).context("installing the Ctrl-C handler")?,
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {},
            _ = self.term.recv() => {},
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_options_are_toml_values_or_strings() {
        assert_eq!(
            parse_option("top_n=50").unwrap(),
            ("top_n".into(), json!(50))
        );
        assert_eq!(
            parse_option("server=llama.cpp").unwrap(),
            ("server".into(), json!("llama.cpp"))
        );
        assert_eq!(
            parse_option("server=\"vllm\"").unwrap(),
            ("server".into(), json!("vllm"))
        );
        assert_eq!(
            parse_option("retry_backoff_s=0.5").unwrap(),
            ("retry_backoff_s".into(), json!(0.5))
        );
        assert_eq!(
            parse_option("hosts=[\"a\", \"b\"]").unwrap(),
            ("hosts".into(), json!(["a", "b"]))
        );
        assert!(parse_option("top_n").is_err());
        assert!(parse_option("=5").is_err());
    }
}
