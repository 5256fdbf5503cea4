//! `epi validate --submission DIR`: checks a community submission.
//!
//! A submission directory holds exactly one power trace (`*.csv`), one benchmark result
//! (`benchmark*.json`) and one EPI result (`epi*.json`); see `docs/submission-format.md`.
//! Each check prints one ✓/✗ line; any ✗ makes the exit status 1.

use crate::commands::calculate::{compute, CalculateArgs};
use crate::context::Context;
use anyhow::Result;
use clap::Args;
use epi_framework::trace::{summarize, TraceOptions};
use epi_framework::BenchmarkResult;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Options of `epi validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The submission directory.
    #[arg(long, value_name = "DIR")]
    pub submission: PathBuf,
    /// Relative tolerance when comparing the submitted numbers with the recomputed ones.
    #[arg(long, default_value_t = 1e-3, value_name = "REL")]
    pub tolerance: f64,
    /// Print the checks as JSON.
    #[arg(long)]
    pub json: bool,
}

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Passed?
    pub ok: bool,
    /// The detail printed after the name.
    pub detail: String,
}

/// The files of a submission.
#[derive(Debug, Default)]
struct Files {
    trace: Vec<PathBuf>,
    benchmark: Vec<PathBuf>,
    epi: Vec<PathBuf>,
}

fn find_files(dir: &Path) -> std::io::Result<Files> {
    let mut f = Files::default();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        if !p.is_file() {
            continue;
        }
        if name.ends_with(".csv") {
            f.trace.push(p);
        } else if name.ends_with(".meta.json") {
            continue;
        } else if name.ends_with(".json") && name.starts_with("benchmark") {
            f.benchmark.push(p);
        } else if name.ends_with(".json") && name.starts_with("epi") {
            f.epi.push(p);
        }
    }
    Ok(f)
}

fn one<'a>(what: &str, pattern: &str, v: &'a [PathBuf]) -> Result<&'a PathBuf, String> {
    match v {
        [one] => Ok(one),
        [] => Err(format!("missing {what} (expected a file named {pattern})")),
        many => Err(format!(
            "{} {what} files ({}); expected exactly one",
            many.len(),
            many.iter()
                .map(|p| p
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

const METADATA_FIELDS: [&str; 6] = [
    "model",
    "quantization",
    "surgery",
    "hardware",
    "instrument",
    "measurement_point",
];
const RUN_METADATA_FIELDS: [&str; 4] =
    ["run_id", "timestamp_utc", "repetition", "epi_bench_version"];

/// Runs every check.
pub fn checks(ctx: &Context, a: &ValidateArgs) -> Vec<Check> {
    let mut out = Vec::new();
    let mut push = |name: &str, r: Result<String, String>| {
        let (ok, detail) = match r {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        out.push(Check {
            name: name.to_string(),
            ok,
            detail,
        });
    };
    let files = match find_files(&a.submission) {
        Ok(f) => f,
        Err(e) => {
            push(
                "Submission directory",
                Err(format!("{}: {e}", a.submission.display())),
            );
            return out;
        }
    };
    let trace = one("power trace CSV", "*.csv", &files.trace);
    let bench = one("benchmark JSON", "benchmark*.json", &files.benchmark);
    let epi = one("EPI JSON", "epi*.json", &files.epi);
    let structure = match (&trace, &bench, &epi) {
        (Ok(t), Ok(b), Ok(e)) => Ok(format!("valid ({}, {}, {})", name(t), name(b), name(e))),
        _ => Err([&trace, &bench, &epi]
            .iter()
            .filter_map(|r| r.as_ref().err().cloned())
            .collect::<Vec<_>>()
            .join("; ")),
    };
    push("Structure", structure);

    // Power trace.
    let gap_limit = ctx.config.general.gap_limit_ms;
    let trace_ok = match &trace {
        Ok(t) => match summarize(
            t,
            &TraceOptions {
                gap_limit_ms: gap_limit,
                ..Default::default()
            },
        ) {
            Ok(s) => {
                let mut d = format!(
                    "valid ({} samples, {} channels",
                    group(s.samples),
                    s.channels.len()
                );
                if s.gap_count > 0 {
                    d += &format!(", {} gap(s) over {} ms", s.gap_count, gap_limit);
                }
                d += ")";
                if s.samples < 2 {
                    Err(format!(
                        "{} has {} sample(s); expected at least two",
                        name(t),
                        s.samples
                    ))
                } else {
                    Ok(d)
                }
            }
            Err(e) => Err(e.to_string()),
        },
        Err(e) => Err(e.clone()),
    };
    let trace_valid = trace_ok.is_ok();
    push("Power trace CSV", trace_ok);

    // Benchmark.
    let bench_parsed = bench
        .as_ref()
        .map_err(|e| e.clone())
        .and_then(|b| BenchmarkResult::from_json(b).map_err(|e| e.to_string()));
    push(
        "Benchmark JSON",
        bench_parsed
            .as_ref()
            .map(|b| format!("valid ({} benchmarks, scores in range)", b.benchmarks.len()))
            .map_err(|e| e.clone()),
    );

    // EPI: internal consistency, then recomputation from the trace and benchmark.
    let epi_value = epi.as_ref().map_err(|e| e.clone()).and_then(|p| {
        let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        epi_framework::jsonio::parse_json::<serde_json::Value>(p, &text).map_err(|e| e.to_string())
    });
    let epi_check = match (&epi_value, &epi) {
        (Ok(v), Ok(p)) => check_epi(
            ctx,
            a,
            v,
            p,
            trace.as_ref().ok().copied(),
            bench.as_ref().ok().copied(),
            trace_valid && bench_parsed.is_ok(),
        ),
        (Err(e), _) => Err(e.clone()),
        (_, Err(e)) => Err(e.clone()),
    };
    push("EPI JSON", epi_check);

    // Metadata.
    let meta = match &epi_value {
        Ok(v) => check_metadata(v, bench_parsed.as_ref().ok()),
        Err(_) => Err("cannot check: the EPI JSON did not load".to_string()),
    };
    push("Metadata", meta);
    out
}

fn name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default()
}

fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn num(v: &serde_json::Value, path: &str) -> Result<f64, String> {
    let mut cur = v;
    for part in path.split('.') {
        cur = cur
            .get(part)
            .ok_or_else(|| format!("missing field `{path}`"))?;
    }
    cur.as_f64()
        .ok_or_else(|| format!("field `{path}` is not a number"))
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    a == b || ((a - b).abs() / a.abs().max(b.abs())) <= tol
}

fn check_epi(
    ctx: &Context,
    a: &ValidateArgs,
    v: &serde_json::Value,
    path: &Path,
    trace: Option<&PathBuf>,
    bench: Option<&PathBuf>,
    inputs_valid: bool,
) -> Result<String, String> {
    let f = name(path);
    let epi = num(v, "epi").map_err(|e| format!("{f}: {e}"))?;
    let jpt = num(v, "joules_per_token").map_err(|e| format!("{f}: {e}"))?;
    let acc = num(v, "accuracy_composite").map_err(|e| format!("{f}: {e}"))?;
    let joules = num(v, "energy.total_joules").map_err(|e| format!("{f}: {e}"))?;
    let tokens = num(v, "energy.total_tokens").map_err(|e| format!("{f}: {e}"))?;
    let tol = a.tolerance;
    if !(acc > 0.0 && acc <= 1.0) {
        return Err(format!("{f}: accuracy_composite {acc} is outside (0, 1]"));
    }
    if tokens <= 0.0 {
        return Err(format!("{f}: energy.total_tokens is {tokens}"));
    }
    if !close(jpt, joules / tokens, tol) {
        return Err(format!(
            "{f}: joules_per_token {jpt} ≠ total_joules / total_tokens = {}",
            joules / tokens
        ));
    }
    if !close(epi, jpt / acc, tol) {
        return Err(format!(
            "{f}: epi {epi} ≠ joules_per_token / accuracy_composite = {}",
            jpt / acc
        ));
    }
    let (Some(t), Some(b)) = (trace, bench) else {
        return Err("cannot recompute: trace or benchmark missing".into());
    };
    if !inputs_valid {
        return Err("cannot recompute EPI: the trace or the benchmark is invalid".into());
    }
    // Recompute with the submission's own weights.
    let weights = v
        .get("accuracy")
        .and_then(|x| x.get("weights"))
        .and_then(|w| w.as_object())
        .map(|w| {
            w.iter()
                .filter_map(|(k, x)| x.as_f64().map(|x| format!("{k}={x}")))
                .collect::<Vec<_>>()
                .join(",")
        });
    let args = CalculateArgs {
        trace: t.clone(),
        benchmark: b.clone(),
        model: None,
        quantization: None,
        surgery: None,
        hardware: None,
        instrument: None,
        weights: weights.filter(|w| !w.is_empty()),
        idle_watts: None,
        gap_limit_ms: None,
        energy_accuracy: None,
        surgery_params: Vec::new(),
        repetition: 1,
        output: None,
        db: None,
        tags: None,
        json: false,
    };
    let r = compute(ctx, &args).map_err(|e| format!("recomputing EPI failed: {e:#}"))?;
    for (label, submitted, recomputed) in [
        ("energy.total_joules", joules, r.energy.total_joules),
        ("energy.total_tokens", tokens, r.energy.total_tokens as f64),
        ("accuracy_composite", acc, r.accuracy_composite),
        ("joules_per_token", jpt, r.joules_per_token),
        ("epi", epi, r.epi),
    ] {
        if !close(submitted, recomputed, tol) {
            return Err(format!(
                "{f}: {label} is {submitted}, but the trace and benchmark give {recomputed} (tolerance {tol})"
            ));
        }
    }
    Ok(format!(
        "valid (EPI = J/T ÷ A checks out: {:.4} recomputed from {} and {})",
        r.epi,
        name(t),
        name(b)
    ))
}

fn check_metadata(
    v: &serde_json::Value,
    bench: Option<&BenchmarkResult>,
) -> Result<String, String> {
    let mut missing = Vec::new();
    for k in METADATA_FIELDS {
        match v.get(k).and_then(|x| x.as_str()) {
            Some(s) if !s.trim().is_empty() => {}
            _ => missing.push(k.to_string()),
        }
    }
    match v.get("run_metadata") {
        Some(rm) => {
            for k in RUN_METADATA_FIELDS {
                match rm.get(k) {
                    Some(x) if !x.is_null() && x.as_str() != Some("") => {}
                    _ => missing.push(format!("run_metadata.{k}")),
                }
            }
        }
        None => missing.push("run_metadata".into()),
    }
    if !missing.is_empty() {
        return Err(format!("incomplete: missing {}", missing.join(", ")));
    }
    if let Some(b) = bench {
        for (k, bv) in [("model", &b.model), ("quantization", &b.quantization)] {
            if v.get(k).and_then(|x| x.as_str()) != Some(bv.as_str()) {
                return Err(format!(
                    "`{k}` is {} in the EPI JSON but \"{bv}\" in the benchmark JSON",
                    v.get(k).map(|x| x.to_string()).unwrap_or_default()
                ));
            }
        }
    }
    Ok("complete".into())
}

/// Runs `epi validate`.
pub fn run(ctx: &Context, a: &ValidateArgs) -> Result<ExitCode> {
    let cs = checks(ctx, a);
    let ready = cs.iter().all(|c| c.ok);
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "checks": cs, "ready": ready }))?
        );
    } else {
        for c in &cs {
            let mark = if c.ok { ctx.ok_mark() } else { ctx.fail_mark() };
            println!("{mark} {}: {}", c.name, c.detail);
        }
        if ready {
            println!("{} Ready for submission", ctx.ok_mark());
        } else {
            let n = cs.iter().filter(|c| !c.ok).count();
            println!("{} Not ready: {n} check(s) failed", ctx.fail_mark());
        }
    }
    Ok(if ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
