//! `epi validate --submission DIR`: checks a community submission.
//!
//! A submission directory holds exactly one power trace (`*.csv`, with its `.meta.json`
//! sidecar when it has one), one benchmark result (`benchmark*.json`) and one EPI result
//! (`epi*.json`); see `docs/submission-format.md`. The EPI result is recomputed from the trace
//! and the benchmark exactly as `epi calculate` computes it, and compared field by field
//! ([`fields`]): every number the inputs determine must agree (counts exactly, other numbers
//! within `--tolerance`), the input digests must match the files, the labels must be the
//! benchmark's (or the sidecar's) unless recorded as overridden, and a modelled energy is
//! refused as a measurement. What the inputs do not determine is listed as unchecked.
//!
//! Each check prints one ✓/✗ line; any ✗ makes the exit status 1. A file that cannot be read or
//! parsed fails its check with the file, line and field named; it never aborts the others.

pub mod fields;

use crate::commands::calculate::{compute, CalculateArgs};
use crate::context::Context;
use anyhow::Result;
use clap::Args;
use epi_framework::calculator::LABEL_OVERRIDES;
use epi_framework::sample::EnergyMethod;
use epi_framework::trace::{summarize, TraceMeta, TraceOptions};
use epi_framework::BenchmarkResult;
use fields::{Comparison, Unchecked};
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Options of `epi validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The submission directory (an `epi profile` run directory is one).
    #[arg(
        long = "submission",
        value_name = "DIR",
        required_unless_present = "dir"
    )]
    pub submission_flag: Option<PathBuf>,
    /// The submission directory, given without `--submission` (`epi validate runs/<run-id>`).
    #[arg(value_name = "DIR", conflicts_with = "submission_flag")]
    pub dir: Option<PathBuf>,
    /// Relative tolerance when comparing the submitted numbers with the recomputed ones
    /// (counts, strings and digests must agree exactly).
    #[arg(long, default_value_t = 1e-3, value_name = "REL")]
    pub tolerance: f64,
    /// The composite weights the submission must use, as for `epi calculate` (default: the
    /// configuration's, equal when none).
    #[arg(long, value_name = "SUITE=W,...")]
    pub weights: Option<String>,
    /// The gap limit the submission must use, ms (default: the configuration's, 1000).
    #[arg(long, value_name = "MS")]
    pub gap_limit_ms: Option<f64>,
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

/// A label that differs from its input's value, accepted because the result records it.
#[derive(Debug, Clone, Serialize)]
pub struct Override {
    /// The label field (`model`, `hardware`, ...).
    pub field: String,
    /// Its value in the result.
    pub value: String,
    /// Where the default came from (`benchmark`, `trace_meta`, `configuration`).
    pub from: String,
    /// The default it replaced.
    pub was: String,
}

/// Everything `validate` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The checks, in order.
    pub checks: Vec<Check>,
    /// Whether every check passed.
    pub ready: bool,
    /// Fields recomputed from the trace and benchmark and found equal.
    pub recomputed: Vec<String>,
    /// Fields that disagree with the recomputation.
    pub mismatches: Vec<fields::Mismatch>,
    /// Fields left unchecked, and why.
    pub unchecked: Vec<Unchecked>,
    /// Labels accepted as recorded overrides.
    pub overridden_labels: Vec<Override>,
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
            many.iter().map(|p| name(p)).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// Fields every result must carry, non-empty.
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

/// What the submission's files gave.
struct Loaded {
    trace: Result<PathBuf, String>,
    bench_path: Result<PathBuf, String>,
    epi_path: Result<PathBuf, String>,
    trace_valid: bool,
    meta: Option<TraceMeta>,
    bench: Result<BenchmarkResult, String>,
    epi: Result<Value, String>,
}

/// Runs every check.
pub fn checks(ctx: &Context, a: &ValidateArgs) -> Report {
    let mut report = Report::default();
    let push = |report: &mut Report, name: &str, r: Result<String, String>| {
        let (ok, detail) = match r {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        report.checks.push(Check {
            name: name.to_string(),
            ok,
            detail,
        });
    };
    let submission = a
        .submission_flag
        .as_ref()
        .or(a.dir.as_ref())
        .cloned()
        .unwrap_or_default();
    let files = match find_files(&submission) {
        Ok(f) => f,
        Err(e) => {
            push(
                &mut report,
                "Submission directory",
                Err(format!("{}: {e}", submission.display())),
            );
            return report;
        }
    };
    let trace = one("power trace CSV", "*.csv", &files.trace).cloned();
    let bench_path = one("benchmark JSON", "benchmark*.json", &files.benchmark).cloned();
    let epi_path = one("EPI JSON", "epi*.json", &files.epi).cloned();
    let structure = match (&trace, &bench_path, &epi_path) {
        (Ok(t), Ok(b), Ok(e)) => {
            let sidecar = TraceMeta::path_for(t);
            let extra = if sidecar.is_file() {
                format!(", {}", name(&sidecar))
            } else {
                String::new()
            };
            Ok(format!(
                "valid ({}{extra}, {}, {})",
                name(t),
                name(b),
                name(e)
            ))
        }
        _ => Err([&trace, &bench_path, &epi_path]
            .iter()
            .filter_map(|r| r.as_ref().err().cloned())
            .collect::<Vec<_>>()
            .join("; ")),
    };
    push(&mut report, "Structure", structure);

    // Power trace and its sidecar.
    let gap_limit = a.gap_limit_ms.unwrap_or(ctx.config.general.gap_limit_ms);
    let mut meta = None;
    let trace_check = match &trace {
        Ok(t) => check_trace(t, gap_limit).map(|(d, m)| {
            meta = m;
            d
        }),
        Err(e) => Err(e.clone()),
    };
    let trace_valid = trace_check.is_ok();
    push(&mut report, "Power trace CSV", trace_check);

    // Benchmark.
    let bench = bench_path
        .clone()
        .and_then(|b| BenchmarkResult::from_json(&b).map_err(|e| e.to_string()));
    push(
        &mut report,
        "Benchmark JSON",
        bench
            .as_ref()
            .map(|b| format!("valid ({} benchmarks, scores in range)", b.benchmarks.len()))
            .map_err(|e| e.clone()),
    );

    let epi = epi_path.clone().and_then(|p| {
        let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        let v = epi_framework::jsonio::parse_json::<Value>(&p, &text).map_err(|e| e.to_string())?;
        if v.is_object() {
            Ok(v)
        } else {
            Err(format!("{}: expected a JSON object", p.display()))
        }
    });
    let loaded = Loaded {
        trace,
        bench_path,
        epi_path,
        trace_valid,
        meta,
        bench,
        epi,
    };

    push(&mut report, "Measurement", check_measurement(&loaded));

    // EPI: internal consistency, then every field recomputed from the trace and benchmark.
    let (epi_check, comparison) = check_epi(ctx, a, &loaded);
    push(&mut report, "EPI JSON", epi_check);
    if let Some(c) = comparison {
        report.recomputed = c.recomputed;
        report.mismatches = c.mismatches;
        report.unchecked = c.unchecked;
    }

    // Metadata and labels.
    let meta_check = match &loaded.epi {
        Ok(v) => check_metadata(v, &loaded, &mut report),
        Err(_) => Err("cannot check: the EPI JSON did not load".to_string()),
    };
    push(&mut report, "Metadata", meta_check);
    report.ready = report.checks.iter().all(|c| c.ok);
    report
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

/// The trace parses, has two samples or more, and its sidecar (when present) parses.
fn check_trace(t: &Path, gap_limit: f64) -> Result<(String, Option<TraceMeta>), String> {
    let s = summarize(
        t,
        &TraceOptions {
            gap_limit_ms: gap_limit,
            ..Default::default()
        },
    )
    .map_err(|e| e.to_string())?;
    if s.samples < 2 {
        return Err(format!(
            "{} has {} sample(s); expected at least two",
            name(t),
            s.samples
        ));
    }
    let meta = TraceMeta::read_for(t).map_err(|e| e.to_string())?;
    let mut d = format!(
        "valid ({} samples, {} channels",
        group(s.samples),
        s.channels.len()
    );
    if s.gap_count > 0 {
        d += &format!(", {} gap(s) over {} ms", s.gap_count, gap_limit);
    }
    if let Some(m) = &meta {
        d += &format!("; sidecar: {}, {}", m.source.source, m.source.method);
    }
    d += ")";
    Ok((d, meta))
}

/// Energy must be measured: a `modelled` method (in the sidecar or the EPI JSON) is refused,
/// and so is an EPI JSON that calls a modelled trace measured.
fn check_measurement(l: &Loaded) -> Result<String, String> {
    let claimed = l
        .epi
        .as_ref()
        .ok()
        .and_then(|v| v.get("energy"))
        .and_then(|e| e.get("method"))
        .and_then(|m| m.as_str());
    if let Some(m) = &l.meta {
        if m.source.method == EnergyMethod::Modelled {
            let sidecar = l
                .trace
                .as_ref()
                .map(|t| name(&TraceMeta::path_for(t)))
                .unwrap_or_default();
            return Err(match claimed {
                Some("modelled") | None => format!(
                    "{sidecar}: method is `modelled` (an estimate by `{}`), not a measurement; a submission must be measured (`counter` or `integrated`)",
                    m.source.source
                ),
                Some(c) => format!(
                    "{sidecar} says the trace is `modelled` (an estimate by `{}`), but the EPI JSON presents it as `{c}`: a modelled trace presented as measured",
                    m.source.source
                ),
            });
        }
    }
    let from = match &l.meta {
        Some(m) => format!("{}, source {}", m.source.method, m.source.source),
        None => "integrated from the trace CSV; no sidecar".to_string(),
    };
    match claimed {
        Some("modelled") => Err(
            "energy.method is `modelled` (an estimate), not a measurement; a submission must be measured (`counter` or `integrated`)"
                .into(),
        ),
        Some(c) if c == EnergyMethod::Counter.as_str() || c == EnergyMethod::Integrated.as_str() => {
            Ok(format!("measured ({from})"))
        }
        Some(c) => Err(format!(
            "energy.method is `{c}`; expected `counter` or `integrated`"
        )),
        None if l.epi.is_err() => Err("cannot check: the EPI JSON did not load".into()),
        None => Err("energy.method is missing: the result does not say how energy was obtained".into()),
    }
}

fn num(v: &Value, path: &str) -> Result<f64, String> {
    let mut cur = v;
    for part in path.split('.') {
        cur = cur
            .get(part)
            .ok_or_else(|| format!("missing field `{path}`"))?;
    }
    cur.as_f64()
        .ok_or_else(|| format!("field `{path}` is not a number"))
}

/// A parameter the submitter chose, as submitted (absent: `None`).
fn parameter(v: &Value, path: &str) -> Result<Option<f64>, String> {
    let mut cur = v;
    for part in path.split('.') {
        match cur.get(part) {
            Some(x) => cur = x,
            None => return Ok(None),
        }
    }
    cur.as_f64()
        .map(Some)
        .ok_or_else(|| format!("field `{path}` is {cur}, expected a number"))
}

fn check_epi(
    ctx: &Context,
    a: &ValidateArgs,
    l: &Loaded,
) -> (Result<String, String>, Option<Comparison>) {
    let (v, path) = match (&l.epi, &l.epi_path) {
        (Ok(v), Ok(p)) => (v, p),
        (Err(e), _) | (_, Err(e)) => return (Err(e.clone()), None),
    };
    let f = name(path);
    let internal = || -> Result<(), String> {
        let epi = num(v, "epi")?;
        let jpt = num(v, "joules_per_token")?;
        let acc = num(v, "accuracy_composite")?;
        let joules = num(v, "energy.total_joules")?;
        let tokens = num(v, "energy.total_tokens")?;
        let tol = a.tolerance;
        if !(acc > 0.0 && acc <= 1.0) {
            return Err(format!("accuracy_composite {acc} is outside (0, 1]"));
        }
        if tokens <= 0.0 {
            return Err(format!("energy.total_tokens is {tokens}"));
        }
        if !fields::close(jpt, joules / tokens, tol) {
            return Err(format!(
                "joules_per_token {jpt} ≠ total_joules / total_tokens = {}",
                joules / tokens
            ));
        }
        if !fields::close(epi, jpt / acc, tol) {
            return Err(format!(
                "epi {epi} ≠ joules_per_token / accuracy_composite = {}",
                jpt / acc
            ));
        }
        Ok(())
    };
    if let Err(e) = internal() {
        return (Err(format!("{f}: {e}")), None);
    }
    let (Ok(t), Ok(b)) = (&l.trace, &l.bench_path) else {
        return (
            Err("cannot recompute: trace or benchmark missing".into()),
            None,
        );
    };
    if !(l.trace_valid && l.bench.is_ok()) {
        return (
            Err("cannot recompute EPI: the trace or the benchmark is invalid".into()),
            None,
        );
    }
    // The submitter's own settings, taken as submitted (reported as parameters).
    let params = || -> Result<(Option<f64>, Option<f64>, u32), String> {
        let idle = parameter(v, "energy.idle_watts")?;
        let rel = parameter(v, "uncertainty.energy_rel_accuracy")?;
        let rep = match parameter(v, "run_metadata.repetition")? {
            None => 1,
            Some(r) if r >= 1.0 && r.fract() == 0.0 && r <= u32::MAX as f64 => r as u32,
            Some(r) => {
                return Err(format!(
                    "run_metadata.repetition is {r}, expected an integer ≥ 1"
                ))
            }
        };
        Ok((idle, rel, rep))
    };
    let (idle_watts, energy_accuracy, repetition) = match params() {
        Ok(p) => p,
        Err(e) => return (Err(format!("{f}: {e}")), None),
    };
    let args = CalculateArgs {
        trace: t.clone(),
        benchmark: b.clone(),
        model: None,
        quantization: None,
        surgery: None,
        hardware: None,
        instrument: None,
        weights: a.weights.clone(),
        idle_watts,
        gap_limit_ms: a.gap_limit_ms,
        energy_accuracy,
        surgery_params: Vec::new(),
        repetition,
        output: None,
        db: None,
        tags: None,
        json: false,
    };
    let r = match compute(ctx, &args) {
        Ok(r) => r,
        Err(e) => return (Err(format!("recomputing EPI failed: {e:#}")), None),
    };
    let rec = match serde_json::to_value(&r) {
        Ok(x) => x,
        Err(e) => return (Err(format!("recomputing EPI failed: {e}")), None),
    };
    let c = fields::compare(v, &rec, a.tolerance);
    let result = if c.mismatches.is_empty() {
        Ok(format!(
            "valid (EPI = J/T ÷ A checks out: {:.4} recomputed from {} and {}; {} fields agree)",
            r.epi,
            name(t),
            name(b),
            c.recomputed.len()
        ))
    } else {
        const SHOWN: usize = 6;
        let mut d = format!(
            "{f}: {}",
            c.mismatches
                .iter()
                .take(SHOWN)
                .map(|m| m.message.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        );
        if c.mismatches.len() > SHOWN {
            d += &format!("; and {} more (see --json)", c.mismatches.len() - SHOWN);
        }
        Err(d)
    };
    (result, Some(c))
}

/// Required metadata present; labels equal to the inputs' or recorded as overridden.
fn check_metadata(v: &Value, l: &Loaded, report: &mut Report) -> Result<String, String> {
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
    let overrides = match v.get("run_metadata").and_then(|rm| rm.get(LABEL_OVERRIDES)) {
        None => serde_json::Map::new(),
        Some(Value::Object(o)) => o.clone(),
        Some(other) => {
            return Err(format!(
                "run_metadata.{LABEL_OVERRIDES} is {other}, expected an object"
            ))
        }
    };
    // Where each label comes from when not overridden: the benchmark, the trace's sidecar, or
    // (not an input) the configuration of whoever ran epi calculate.
    let bench = l
        .bench
        .as_ref()
        .ok()
        .and_then(|b| serde_json::to_value(b).ok());
    let mut sources: Vec<(&str, &str, Option<String>)> = Vec::new();
    for field in ["model", "quantization", "surgery", "hardware"] {
        let was = bench
            .as_ref()
            .and_then(|b| b.get(field))
            .and_then(|x| x.as_str())
            .map(str::to_string);
        sources.push((field, "benchmark", was));
    }
    match &l.meta {
        Some(m) => sources.push((
            "instrument",
            "trace_meta",
            Some(m.source.instrument.clone()),
        )),
        None => sources.push(("instrument", "configuration", None)),
    }
    sources.push(("measurement_point", "configuration", None));
    let mut errors = Vec::new();
    for (field, from, expected) in &sources {
        let value = v.get(*field).and_then(|x| x.as_str()).unwrap_or_default();
        let recorded = overrides.get(*field);
        let rec_from = recorded
            .and_then(|r| r.get("from"))
            .and_then(|x| x.as_str());
        let rec_was = recorded.and_then(|r| r.get("was")).and_then(|x| x.as_str());
        let Some(expected) = expected else {
            if *from != "configuration" {
                errors.push(format!(
                    "cannot compare `{field}` with the {from}: it did not load"
                ));
                continue;
            }
            // Not an input: the value is the submitter's configuration or choice.
            report.unchecked.push(Unchecked {
                field: field.to_string(),
                kind: "metadata",
                reason: format!("from the configuration of whoever ran epi calculate ({from}), not from the trace or benchmark"),
            });
            if let (Some(rf), Some(rw)) = (rec_from, rec_was) {
                report.overridden_labels.push(Override {
                    field: field.to_string(),
                    value: value.to_string(),
                    from: rf.to_string(),
                    was: rw.to_string(),
                });
            }
            continue;
        };
        let what = if *from == "benchmark" {
            "the benchmark JSON"
        } else {
            "the trace's sidecar"
        };
        match (value == expected, rec_from, rec_was) {
            (true, None, _) => {}
            (true, Some(_), _) => errors.push(format!(
                "run_metadata.{LABEL_OVERRIDES}.{field} records an override, but `{field}` is \"{expected}\" as in {what}"
            )),
            (false, Some(rf), Some(rw)) if rf == *from && rw == expected => {
                report.overridden_labels.push(Override {
                    field: field.to_string(),
                    value: value.to_string(),
                    from: rf.to_string(),
                    was: rw.to_string(),
                });
            }
            (false, Some(rf), rw) => errors.push(format!(
                "`{field}` is \"{value}\", overriding \"{}\" from {rf} as recorded, but {what} says \"{expected}\"",
                rw.unwrap_or("?")
            )),
            (false, None, _) => errors.push(format!(
                "`{field}` is \"{value}\" in the EPI JSON but \"{expected}\" in {what}, and no override is recorded (run_metadata.{LABEL_OVERRIDES})"
            )),
        }
    }
    for k in overrides.keys() {
        if !sources.iter().any(|(f, _, _)| f == k) {
            errors.push(format!(
                "run_metadata.{LABEL_OVERRIDES}.{k}: `{k}` is not a label"
            ));
        }
    }
    if !errors.is_empty() {
        return Err(errors.join("; "));
    }
    let mut d = "complete".to_string();
    let shown: Vec<String> = report
        .overridden_labels
        .iter()
        .map(|o| {
            format!(
                "{} \"{}\" (was \"{}\" from {})",
                o.field, o.value, o.was, o.from
            )
        })
        .collect();
    if !shown.is_empty() {
        d += &format!("; overridden labels, as recorded: {}", shown.join(", "));
    }
    Ok(d)
}

/// Runs `epi validate`.
pub fn run(ctx: &Context, a: &ValidateArgs) -> Result<ExitCode> {
    let report = checks(ctx, a);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for c in &report.checks {
            let mark = if c.ok { ctx.ok_mark() } else { ctx.fail_mark() };
            println!("{mark} {}: {}", c.name, c.detail);
        }
        for (kind, title) in [
            ("parameter", "Taken as submitted (the submitter's settings)"),
            (
                "metadata",
                "Unchecked metadata (not determined by the trace and benchmark)",
            ),
            ("absent", "Not checked (absent from this result)"),
        ] {
            let list: Vec<&str> = report
                .unchecked
                .iter()
                .filter(|u| u.kind == kind)
                .map(|u| u.field.as_str())
                .collect();
            if !list.is_empty() {
                println!("- {title}: {}", list.join(", "));
            }
        }
        if report.ready {
            println!("{} Ready for submission", ctx.ok_mark());
        } else {
            let n = report.checks.iter().filter(|c| !c.ok).count();
            println!("{} Not ready: {n} check(s) failed", ctx.fail_mark());
        }
    }
    Ok(if report.ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
