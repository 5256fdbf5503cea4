//! `epi calculate`: EPI from a power trace and a benchmark result.
//!
//! Besides the numbers, the result records what identifies its inputs, so that `epi validate`
//! can tell a submission's files from the ones the result was computed from:
//! `run_metadata.input_digests` (XXH3-128 of the trace, its `.meta.json` sidecar when there is
//! one, and the benchmark JSON; the trace is hashed while it is integrated) and
//! `run_metadata.label_overrides` (labels given with `--model`, `--hardware`, ... that differ from
//! the benchmark's or the sidecar's). Errors name the file, line and field of bad input.

use crate::context::Context;
use anyhow::{bail, Context as _, Result};
use clap::Args;
use epi_framework::calculator::{CompositeScorer, EpiCalculator, ResultLabels};
use epi_framework::registry::PluginKind;
use epi_framework::result::{file_digest, INPUT_DIGESTS};
use epi_framework::trace::{PowerTrace, TraceOptions};
use epi_framework::{BenchmarkResult, EpiResult};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `epi calculate`.
#[derive(Debug, Args)]
pub struct CalculateArgs {
    /// Power trace CSV (`timestamp_ms,node_id,watts_rms,volts_rms,amps_rms,power_factor`).
    #[arg(long, value_name = "FILE")]
    pub trace: PathBuf,
    /// Benchmark result JSON.
    #[arg(long, value_name = "FILE")]
    pub benchmark: PathBuf,
    /// Model identifier (default: the benchmark's).
    #[arg(long)]
    pub model: Option<String>,
    /// Quantization (default: the benchmark's).
    #[arg(long)]
    pub quantization: Option<String>,
    /// Surgery applied (default: the benchmark's).
    #[arg(long)]
    pub surgery: Option<String>,
    /// Hardware (default: the benchmark's).
    #[arg(long)]
    pub hardware: Option<String>,
    /// Instrument (default: the trace's provenance, then the configuration).
    #[arg(long)]
    pub instrument: Option<String>,
    /// Composite weights, e.g. `mmlu=0.4,arc_challenge=0.3,hellaswag=0.3` (default: equal).
    #[arg(long, value_name = "SUITE=W,...")]
    pub weights: Option<String>,
    /// Mean idle power measured before the run, W: net energy is reported beside gross.
    #[arg(long, value_name = "W")]
    pub idle_watts: Option<f64>,
    /// Samples further apart than this are a gap, ms (default: configuration, 1000).
    #[arg(long, value_name = "MS")]
    pub gap_limit_ms: Option<f64>,
    /// The instrument's relative accuracy, e.g. 0.02 for ±2 % (default: trace provenance, then configuration).
    #[arg(long, value_name = "REL")]
    pub energy_accuracy: Option<f64>,
    /// Numeric surgery parameter for surgery curves, e.g. `experts_dropped=8` (repeatable).
    #[arg(long = "surgery-param", value_name = "NAME=VALUE")]
    pub surgery_params: Vec<String>,
    /// Repetition number of this run.
    #[arg(long, default_value_t = 1)]
    pub repetition: u32,
    /// Write the EPI result JSON here.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Also log the result into this results database (SQLite).
    #[arg(long, value_name = "FILE")]
    pub db: Option<PathBuf>,
    /// Tags for the database entry, comma-separated (with --db).
    #[arg(long, value_name = "A,B", requires = "db")]
    pub tags: Option<String>,
    /// Print the result JSON instead of the summary.
    #[arg(long)]
    pub json: bool,
}

/// Parses `a=1,b=2`.
pub fn parse_weights(s: &str) -> Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("--weights: `{part}` is not SUITE=WEIGHT (e.g. mmlu=0.4)"))?;
        let w: f64 = v.trim().parse().with_context(|| {
            format!(
                "--weights: weight of `{}` is `{v}`, expected a number",
                k.trim()
            )
        })?;
        if !(w.is_finite() && w >= 0.0) {
            bail!(
                "--weights: weight of `{}` is {w}, expected a number ≥ 0",
                k.trim()
            );
        }
        out.insert(k.trim().to_string(), w);
    }
    if out.is_empty() {
        bail!("--weights is empty; expected SUITE=WEIGHT,...");
    }
    Ok(out)
}

/// Computes the result (shared with `validate`, which recomputes submissions).
pub fn compute(ctx: &Context, a: &CalculateArgs) -> Result<EpiResult> {
    let general = &ctx.config.general;
    let opts = TraceOptions {
        gap_limit_ms: a.gap_limit_ms.unwrap_or(general.gap_limit_ms),
        ..Default::default()
    };
    // A trace that cannot be opened is named before anything else is read.
    std::fs::File::open(&a.trace).map_err(|e| epi_framework::Error::io(&a.trace, e))?;
    let bench = BenchmarkResult::from_json(&a.benchmark)?;
    // Integrated over the benchmark's energy window when it names one, else whole; the file is
    // hashed on a second thread meanwhile (the page cache serves both).
    let (trace, trace_digest) = std::thread::scope(|s| {
        let digest = s.spawn(|| file_digest(&a.trace));
        let trace = PowerTrace::for_benchmark(&a.trace, &bench, &opts);
        (trace, digest.join())
    });
    let trace = trace?;
    let trace_digest =
        trace_digest.map_err(|_| anyhow::anyhow!("hashing {} failed", a.trace.display()))??;
    let mut digests = serde_json::Map::new();
    digests.insert("trace".into(), trace_digest.into());
    let sidecar = epi_framework::trace::TraceMeta::path_for(&a.trace);
    if trace.meta.is_some() {
        let d = file_digest(&sidecar)?;
        digests.insert("trace_meta".into(), d.into());
    }
    let d = file_digest(&a.benchmark)?;
    digests.insert("benchmark".into(), d.into());
    let weights = match &a.weights {
        Some(w) => Some(parse_weights(w)?),
        None if ctx.config.source.is_some() => Some(ctx.config.benchmarks.default_weights.clone()),
        None => None,
    };
    let scorer = match weights {
        Some(w) => CompositeScorer { weights: Some(w) },
        None => CompositeScorer::equal(),
    };
    let mut calc = EpiCalculator::new()
        .with_scorer(scorer)
        .with_defaults(
            general.default_instrument.clone(),
            general.measurement_point.clone(),
        )
        .with_labels(ResultLabels {
            model: a.model.clone(),
            quantization: a.quantization.clone(),
            surgery: a.surgery.clone(),
            hardware: a.hardware.clone(),
            instrument: a.instrument.clone(),
            measurement_point: None,
        })
        .with_repetition(a.repetition);
    let has_meta_accuracy = trace
        .meta
        .as_ref()
        .and_then(|m| m.source.accuracy_rel)
        .is_some();
    if let Some(r) = a.energy_accuracy {
        calc = calc.with_energy_accuracy(r);
    } else if !has_meta_accuracy {
        calc = calc.with_energy_accuracy(general.energy_accuracy);
    }
    if let Some(w) = a.idle_watts {
        if !(w.is_finite() && w >= 0.0) {
            bail!("--idle-watts is {w}, expected watts ≥ 0");
        }
        calc = calc.with_idle_watts(w);
    }
    // EPT beside EPI (the scorer is looked up, so a build without it simply omits the metrics).
    if ctx.registry.get(PluginKind::Scorer, "ept").is_ok() {
        let cfg = ctx.config.plugin_config(PluginKind::Scorer, "ept");
        calc = calc.with_extra_scorer("ept", ctx.registry.scorer("ept", &cfg)?);
    }
    let mut result = calc.calculate(&trace, &bench)?;
    for p in &a.surgery_params {
        let (k, v) = p
            .split_once('=')
            .with_context(|| format!("--surgery-param `{p}` is not NAME=VALUE"))?;
        let v: f64 = v
            .trim()
            .parse()
            .with_context(|| format!("--surgery-param `{p}`: value is not a number"))?;
        result
            .surgery_params
            .insert(k.trim().to_string(), serde_json::json!(v));
    }
    result.run_metadata.extra.insert(
        "benchmark_file".into(),
        serde_json::Value::String(
            a.benchmark
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default(),
        ),
    );
    result
        .run_metadata
        .extra
        .insert(INPUT_DIGESTS.into(), serde_json::Value::Object(digests));
    Ok(result)
}

/// Runs `epi calculate`.
pub fn run(ctx: &Context, a: &CalculateArgs) -> Result<ExitCode> {
    let result = compute(ctx, a)?;
    if let Some(out) = &a.output {
        result
            .to_json(out)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    let logged = match &a.db {
        Some(db) => {
            let tags: Vec<String> = a
                .tags
                .as_deref()
                .unwrap_or("")
                .split(',')
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect();
            let id = epi_framework::resultsdb::ResultsDb::open(db)
                .and_then(|mut d| d.log(&result, &tags))
                .with_context(|| format!("logging the result into {}", db.display()))?;
            Some((db, id))
        }
        None => None,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print_summary(ctx, &result);
        if let Some(out) = &a.output {
            println!("  written to {}", out.display());
        }
        if let Some((db, id)) = logged {
            println!("  logged as #{id} in {}", db.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_summary(ctx: &Context, r: &EpiResult) {
    let e = &r.energy;
    println!(
        "{}",
        ctx.bold(&format!("EPI: {:.4} J/token per unit accuracy", r.epi))
    );
    if let Some(ci) = r.uncertainty.as_ref().and_then(|u| u.epi_ci95) {
        println!("  95% interval     {:.4} – {:.4}", ci.0, ci.1);
    }
    println!(
        "  J/token          {:.4}   ({} tokens, {})",
        r.joules_per_token, e.total_tokens, e.token_basis
    );
    println!(
        "  accuracy         {:.4}   (composite of {})",
        r.accuracy_composite,
        {
            let mut parts: Vec<String> = r
                .accuracy
                .scores
                .iter()
                .map(|(k, v)| format!("{k} {v:.3}"))
                .collect();
            parts.sort();
            parts.join(", ")
        }
    );
    println!(
        "  energy           {:.2} J = {:.6} kWh over {:.1} s ({})",
        e.total_joules,
        e.kwh,
        e.duration_seconds,
        e.method.as_deref().unwrap_or("integrated")
    );
    println!(
        "  power            avg {:.2} W, peak {:.2} W",
        e.avg_watts, e.peak_watts
    );
    if let Some(net) = e.net_joules {
        println!(
            "  net energy       {:.2} J (idle {:.2} W subtracted)",
            net,
            e.idle_watts.unwrap_or(0.0)
        );
    }
    println!(
        "  trace            {} samples, {} channels, coverage {:.4}, {} gap(s)",
        e.samples.unwrap_or(0),
        e.channels.unwrap_or(0),
        e.coverage.unwrap_or(0.0),
        e.gap_count.unwrap_or(0)
    );
    for (k, v) in &r.metrics {
        println!("  {k:<16} {v:.6}");
    }
    if let Some(serde_json::Value::Object(o)) = r
        .run_metadata
        .extra
        .get(epi_framework::calculator::LABEL_OVERRIDES)
    {
        for (field, v) in o {
            println!(
                "  label            {field} given as {:?} (the {} says {})",
                label_value(r, field).unwrap_or_default(),
                match v.get("from").and_then(|x| x.as_str()) {
                    Some("benchmark") => "benchmark JSON",
                    Some("trace_meta") => "trace's sidecar",
                    Some("configuration") => "configuration",
                    _ => "input",
                },
                v.get("was").map(|x| x.to_string()).unwrap_or_default()
            );
        }
    }
    for f in &e.flags {
        println!("  warning: {f}");
    }
}

/// The value of a label field of a result, by name.
pub fn label_value(r: &EpiResult, field: &str) -> Option<String> {
    serde_json::to_value(r)
        .ok()?
        .get(field)?
        .as_str()
        .map(str::to_string)
}
