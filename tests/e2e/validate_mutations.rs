//! `epi validate` against a generated mutation set.
//!
//! Good submissions are made here with `epi calculate` from generated traces and benchmarks
//! (deterministic seeds; 1–4 nodes, staggered sampling, gaps, counter columns, sidecars of
//! several sources, idle baselines, custom weights, label overrides): every one must be accepted.
//! Corrupted copies of them — every recomputed number nudged by 0.2 % (twice the default
//! tolerance) or a count off by one, fields dropped, units swapped, traces spliced or truncated at
//! a line boundary, rows duplicated, nodes reordered, tokens changed, a modelled trace presented
//! as measured, benchmarks and sidecars edited — must every one be rejected (exit status 1). The
//! test prints the table of mutation kinds, counts and rejections.
//!
//! Which numbers are nudged is not listed here: every numeric field of the EPI JSON is, except
//! the few that [`MAY_BE_UNCHECKED`] allows `validate` to report as unchecked metadata — and the
//! test fails if `validate` leaves any other field unchecked.

use crate::support::{epi, stderr, stdout};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Fields `validate` may leave unchecked: what the trace and the benchmark do not determine.
const MAY_BE_UNCHECKED: &[&str] = &[
    "environment",
    "surgery_params",
    "measurement_point",
    "instrument", // only without a sidecar: then it comes from the configuration
    "run_metadata.run_id",
    "run_metadata.epi_bench_version",
    "run_metadata.trace_file",
    "run_metadata.benchmark_file",
    "run_metadata.repetition",
    "energy.idle_watts",
    "uncertainty.energy_rel_accuracy",
    "uncertainty.note",
];

/// xorshift64*: deterministic test data.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// How one good submission is made.
#[derive(Debug, Clone)]
struct Spec {
    seed: u64,
    nodes: u32,
    interval_ms: u64,
    instants: u64,
    stagger: bool,
    gap: bool,
    counter: bool,
    /// Sidecar `(source, method)`.
    sidecar: Option<(&'static str, &'static str)>,
    suites: usize,
    tokens_in: bool,
    items: bool,
    ci95: bool,
    idle_watts: Option<f64>,
    weights: Option<&'static str>,
    model_override: bool,
    repetition: u32,
}

impl Spec {
    fn from_seed(i: u64) -> Spec {
        let mut r = Rng::new(1000 + i);
        let sidecars = [
            None,
            Some(("epi-meter", "integrated")),
            Some(("rapl", "counter")),
            Some(("nvml", "integrated")),
        ];
        Spec {
            seed: i,
            nodes: 1 + r.below(4) as u32,
            interval_ms: [250, 500, 1000][r.below(3) as usize],
            instants: 40 + r.below(120),
            stagger: i % 3 == 1,
            gap: i % 4 == 2,
            counter: i % 5 == 3,
            sidecar: sidecars[(i % 4) as usize],
            suites: 1 + (i % 3) as usize,
            tokens_in: i.is_multiple_of(2),
            items: i.is_multiple_of(3),
            ci95: i % 3 == 2,
            idle_watts: (i % 4 == 1).then(|| 2.0 + r.unit() * 3.0),
            weights: (i % 6 == 5).then_some("mmlu=0.5,arc_challenge=0.3,hellaswag=0.2"),
            model_override: i % 7 == 4,
            repetition: 1 + (i % 3) as u32,
        }
    }
}

/// The data lines of a generated trace (the header apart). `variant` changes the watts only
/// (another "recording" of the same run, for splices).
fn trace_lines(s: &Spec, variant: u64) -> (String, Vec<String>) {
    let mut r = Rng::new(s.seed * 7919 + variant);
    let mut header = "timestamp_ms,node_id,watts_rms,volts_rms,amps_rms,power_factor".to_string();
    if s.counter {
        header += ",energy_j";
    }
    let mut rows: Vec<(u64, u32, String)> = Vec::new();
    let mut energy = vec![0.0f64; s.nodes as usize];
    let mut last: Vec<Option<(u64, f64)>> = vec![None; s.nodes as usize];
    for i in 0..s.instants {
        // A gap: three missing instants, longer than the 1000 ms limit at every interval.
        if s.gap && (s.instants / 2..s.instants / 2 + 3).contains(&i) {
            continue;
        }
        for n in 0..s.nodes {
            let t = i * s.interval_ms
                + if s.stagger {
                    n as u64 * s.interval_ms / (s.nodes as u64 + 1)
                } else {
                    0
                };
            let base = 8.0 + 6.5 * n as f64;
            let w = base + 3.0 * ((i as f64) / 7.0 + n as f64).sin() + r.unit();
            let w = (w * 1000.0).round() / 1000.0;
            let v = 120.0 + r.unit();
            let mut line = format!("{t},{n},{w:.3},{v:.3},{:.4},0.9950", w / v);
            if s.counter {
                if let Some((t0, w0)) = last[n as usize] {
                    energy[n as usize] += (w + w0) / 2.0 * (t - t0) as f64 / 1000.0;
                }
                line += &format!(",{:.3}", energy[n as usize]);
            }
            last[n as usize] = Some((t, w));
            rows.push((t, n, line));
        }
    }
    rows.sort_by_key(|(t, n, _)| (*t, *n));
    (header, rows.into_iter().map(|(_, _, l)| l).collect())
}

fn write_trace(path: &Path, header: &str, lines: &[String]) {
    let mut text = String::with_capacity(lines.len() * 48);
    text.push_str(header);
    text.push('\n');
    for l in lines {
        text.push_str(l);
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

fn sidecar_json(s: &Spec, source: &str, method: &str) -> Value {
    let channels: Vec<Value> = (0..s.nodes)
        .map(|n| json!({"id": n, "name": format!("node {n}"), "scope": "ac-inlet"}))
        .collect();
    json!({
        "format_version": 1,
        "source": {
            "source": source, "method": method,
            "instrument": format!("{source} instrument #{}", s.seed),
            "sample_rate_hz": 1000.0 / s.interval_ms as f64,
            "accuracy_rel": 0.01 + 0.001 * s.seed as f64,
            "channels": channels, "replay": false,
            "details": {"firmware": format!("0.{}.0", s.seed)}
        },
        "started_utc": "2026-05-15T10:00:00Z",
        "stats": {"samples": 0, "bad_lines": 0, "lost_samples": 0, "reboots": 0, "reconnects": 0, "disconnected_ms": 0.0},
        "events": [], "extra": {}
    })
}

fn benchmark_json(s: &Spec) -> Value {
    let mut r = Rng::new(s.seed * 31 + 5);
    let keys = ["mmlu_5shot", "arc_challenge_25shot", "hellaswag_10shot"];
    let mut scores = serde_json::Map::new();
    let mut items = serde_json::Map::new();
    let mut ci = serde_json::Map::new();
    for k in keys.iter().take(s.suites) {
        let a = ((0.3 + 0.6 * r.unit()) * 1000.0).round() / 1000.0;
        scores.insert(k.to_string(), json!(a));
        items.insert(k.to_string(), json!(100 + r.below(900)));
        ci.insert(k.to_string(), json!([a - 0.02, (a + 0.02f64).min(1.0)]));
    }
    let duration = (s.instants * s.interval_ms) as f64 / 1000.0;
    let mut b = json!({
        "model": format!("model-{}", s.seed), "quantization": "Q4_K_M",
        "surgery": if s.seed.is_multiple_of(2) { "none (baseline)".to_string() } else { format!("experts_dropped={}", s.seed) },
        "benchmarks": scores, "total_tokens": 1000 + r.below(40_000),
        "duration_seconds": duration, "timestamp_utc": format!("2026-05-{:02}T10:00:00Z", 1 + s.seed % 28),
        "hardware": format!("{}x test node", s.nodes),
        "inference_engine": "llama.cpp", "inference_engine_version": "b4500"
    });
    if s.tokens_in {
        b["tokens_in"] = json!(5000 + r.below(90_000));
        b["scoring_mode"] = json!("loglikelihood");
    }
    if s.items {
        b["benchmark_items"] = Value::Object(items);
    }
    if s.ci95 {
        b["benchmark_ci95"] = Value::Object(ci);
    }
    b
}

const TRACE: &str = "power_trace.csv";
const SIDECAR: &str = "power_trace.csv.meta.json";
const BENCH: &str = "benchmark.json";
const EPI: &str = "epi_result.json";

/// A good submission: its directory and the flags `validate` needs (the weights it used).
struct Good {
    spec: Spec,
    dir: PathBuf,
    validate_args: Vec<String>,
    /// validate --json of the good submission.
    report: Value,
}

fn make_good(root: &Path, s: &Spec) -> Good {
    let dir = root.join(format!("good-{:02}", s.seed));
    std::fs::create_dir_all(&dir).unwrap();
    let (header, lines) = trace_lines(s, 0);
    write_trace(&dir.join(TRACE), &header, &lines);
    if let Some((source, method)) = s.sidecar {
        let v = sidecar_json(s, source, method);
        std::fs::write(dir.join(SIDECAR), serde_json::to_string_pretty(&v).unwrap()).unwrap();
    }
    let b = benchmark_json(s);
    std::fs::write(dir.join(BENCH), serde_json::to_string_pretty(&b).unwrap()).unwrap();
    let mut args: Vec<String> = [
        "calculate",
        "--trace",
        TRACE,
        "--benchmark",
        BENCH,
        "--output",
        EPI,
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    let rep = s.repetition.to_string();
    args.extend(["--repetition".to_string(), rep]);
    if let Some(w) = s.idle_watts {
        args.extend(["--idle-watts".to_string(), format!("{w:.3}")]);
    }
    let mut validate_args = Vec::new();
    if let Some(w) = s.weights {
        args.extend(["--weights".to_string(), w.to_string()]);
        validate_args.extend(["--weights".to_string(), w.to_string()]);
    }
    if s.model_override {
        args.extend(["--model".to_string(), format!("renamed-model-{}", s.seed)]);
    }
    if s.seed.is_multiple_of(5) {
        args.extend([
            "--surgery-param".to_string(),
            format!("experts_dropped={}", s.seed),
        ]);
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = epi(&dir, &argv);
    assert!(
        o.status.success(),
        "calculate {s:?}: {}{}",
        stdout(&o),
        stderr(&o)
    );
    let report = validate_json(&dir, &validate_args);
    Good {
        spec: s.clone(),
        dir,
        validate_args,
        report,
    }
}

fn validate_json(dir: &Path, extra: &[String]) -> Value {
    let d = dir.to_str().unwrap().to_string();
    let mut argv = vec!["validate", "--json", "--submission", d.as_str()];
    argv.extend(extra.iter().map(String::as_str));
    let o = epi(dir, &argv);
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("validate --json: {e}: {}{}", stdout(&o), stderr(&o)))
}

// ---------------------------------------------------------------------------------------------
// Paths into JSON values: `a.b[2].c`.

fn segments(path: &str) -> Vec<(String, Option<usize>)> {
    path.split('.')
        .map(|seg| match seg.find('[') {
            Some(p) => (seg[..p].to_string(), seg[p + 1..seg.len() - 1].parse().ok()),
            None => (seg.to_string(), None),
        })
        .collect()
}

fn get_mut<'a>(v: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    let mut cur = v;
    for (k, i) in segments(path) {
        cur = cur.get_mut(&k)?;
        if let Some(i) = i {
            cur = cur.get_mut(i)?;
        }
    }
    Some(cur)
}

fn remove(v: &mut Value, path: &str) -> bool {
    let (parent, last) = match path.rfind('.') {
        Some(p) => (&path[..p], &path[p + 1..]),
        None => ("", path),
    };
    let obj = if parent.is_empty() {
        Some(v)
    } else {
        get_mut(v, parent)
    };
    let Some(obj) = obj else { return false };
    let (key, idx) = segments(last).remove(0);
    match idx {
        Some(i) => match obj.get_mut(&key) {
            Some(Value::Array(a)) if i < a.len() => {
                a.remove(i);
                true
            }
            _ => false,
        },
        None => obj.as_object_mut().and_then(|o| o.remove(&key)).is_some(),
    }
}

/// Every numeric leaf of `v`, by path.
fn numeric_leaves(v: &Value, path: &str, out: &mut Vec<String>) {
    match v {
        Value::Number(_) => out.push(path.to_string()),
        Value::Object(o) => {
            for (k, x) in o {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                numeric_leaves(x, &p, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                numeric_leaves(x, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// A path with its map keys and indices made generic, to cover each kind of field once.
fn pattern(path: &str) -> String {
    let mut out = String::new();
    for (n, seg) in path.split('.').enumerate() {
        if n > 0 {
            out.push('.');
        }
        let (name, idx) = match seg.find('[') {
            Some(p) => (&seg[..p], "[]"),
            None => (seg, ""),
        };
        let generic = name.chars().all(|c| c.is_ascii_digit())
            || name.ends_with("shot")
            || ["mmlu", "arc_challenge", "hellaswag"].contains(&name);
        out.push_str(if generic { "*" } else { name });
        out.push_str(idx);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Mutations.

type Edit = Box<dyn Fn(&Path) + Send + Sync>;

struct Mutation {
    kind: &'static str,
    what: String,
    good: usize,
    edit: Edit,
}

fn edit_json(p: &Path, f: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

fn edit_trace(dir: &Path, f: impl FnOnce(&mut Vec<String>)) {
    let text = std::fs::read_to_string(dir.join(TRACE)).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    f(&mut lines);
    let mut out = lines.join("\n");
    out.push('\n');
    std::fs::write(dir.join(TRACE), out).unwrap();
}

/// A numeric value nudged: floats by `rel`, integers by one.
fn nudge(v: &Value, up: bool) -> Value {
    if let Some(n) = v.as_u64() {
        return json!(if up || n == 0 { n + 1 } else { n - 1 });
    }
    let x = v.as_f64().unwrap();
    let f = if up { 1.002 } else { 0.998 };
    if x == 0.0 {
        json!(if up { 0.002 } else { -0.002 })
    } else {
        json!(x * f)
    }
}

fn field_of_csv(line: &str, i: usize) -> &str {
    line.split(',').nth(i).unwrap_or("")
}

fn with_csv_field(line: &str, i: usize, f: impl Fn(&str) -> String) -> String {
    line.split(',')
        .enumerate()
        .map(|(n, x)| if n == i { f(x) } else { x.to_string() })
        .collect::<Vec<_>>()
        .join(",")
}

fn mutations(goods: &[Good]) -> Vec<Mutation> {
    let mut out: Vec<Mutation> = Vec::new();
    let n = goods.len();
    let mut rot = 0usize;
    let mut next_good = |pred: &dyn Fn(&Good) -> bool| -> Option<usize> {
        for k in 0..n {
            let g = (rot + k) % n;
            if pred(&goods[g]) {
                rot = g + 1;
                return Some(g);
            }
        }
        None
    };

    // Every recomputed number nudged (up and down, by 0.2 % or one count), each kind of field in
    // two submissions.
    let mut patterns: BTreeMap<String, Vec<(usize, String)>> = BTreeMap::new();
    for (g, good) in goods.iter().enumerate() {
        let epi_v: Value =
            serde_json::from_str(&std::fs::read_to_string(good.dir.join(EPI)).unwrap()).unwrap();
        for p in good.report["recomputed"].as_array().unwrap() {
            let p = p.as_str().unwrap();
            let mut probe = epi_v.clone();
            if get_mut(&mut probe, p).is_some_and(|x| x.is_number()) {
                patterns
                    .entry(pattern(p))
                    .or_default()
                    .push((g, p.to_string()));
            }
        }
    }
    let mut seen: BTreeSet<(usize, String, bool)> = BTreeSet::new();
    for (pat, cands) in &patterns {
        let l = cands.len();
        for (k, up) in [
            (0usize, true),
            (l / 2 + 1, false),
            (l / 4 + 1, false),
            (3 * l / 4 + 1, true),
        ] {
            let (g, path) = cands[(k + pat.len()) % l].clone();
            if !seen.insert((g, path.clone(), up)) {
                continue;
            }
            let kind = if pat.contains("tokens") {
                "token count off by one"
            } else {
                "number nudged 0.2 % / count ±1"
            };
            let p2 = path.clone();
            out.push(Mutation {
                kind,
                what: format!("{path} {}", if up { "up" } else { "down" }),
                good: g,
                edit: Box::new(move |d| {
                    edit_json(&d.join(EPI), |v| {
                        let x = get_mut(v, &p2).unwrap();
                        *x = nudge(x, up);
                    })
                }),
            });
        }
    }

    // Fields dropped: each kind of recomputed field, and whole sections.
    let mut dropped: BTreeSet<String> = BTreeSet::new();
    for (g, good) in goods.iter().enumerate() {
        for p in good.report["recomputed"].as_array().unwrap() {
            let p = p.as_str().unwrap().to_string();
            if dropped.insert(pattern(&p)) {
                out.push(Mutation {
                    kind: "field dropped",
                    what: p.clone(),
                    good: g,
                    edit: Box::new(move |d| {
                        edit_json(&d.join(EPI), |v| assert!(remove(v, &p), "{p}"))
                    }),
                });
            }
        }
    }
    for section in [
        "energy",
        "accuracy",
        "uncertainty",
        "energy.per_node_joules",
        "accuracy.weights",
        "energy.idle_watts",
        "uncertainty.energy_rel_accuracy",
    ] {
        let needs_idle = section == "energy.idle_watts";
        let Some(g) = next_good(&|x| !needs_idle || x.spec.idle_watts.is_some()) else {
            continue;
        };
        out.push(Mutation {
            kind: "field dropped",
            what: section.to_string(),
            good: g,
            edit: Box::new(move |d| {
                edit_json(&d.join(EPI), |v| assert!(remove(v, section), "{section}"))
            }),
        });
    }

    // Units swapped.
    type JsonEdit = fn(&mut Value);
    let unit_swaps: [(&str, JsonEdit); 6] = [
        ("kwh and total_joules swapped", |v| {
            let e = &mut v["energy"];
            let (j, k) = (e["total_joules"].clone(), e["kwh"].clone());
            e["total_joules"] = k;
            e["kwh"] = j;
        }),
        ("avg_watts in kW", |v| {
            let w = v["energy"]["avg_watts"].as_f64().unwrap();
            v["energy"]["avg_watts"] = json!(w / 1000.0);
        }),
        ("peak_watts in mW", |v| {
            let w = v["energy"]["peak_watts"].as_f64().unwrap();
            v["energy"]["peak_watts"] = json!(w * 1000.0);
        }),
        ("duration in ms", |v| {
            let d = v["energy"]["duration_seconds"].as_f64().unwrap();
            v["energy"]["duration_seconds"] = json!(d * 1000.0);
        }),
        ("per-node energy in kWh", |v| {
            for (_, x) in v["energy"]["per_node_joules"].as_object_mut().unwrap() {
                *x = json!(x.as_f64().unwrap() / 3.6e6);
            }
        }),
        ("accuracy in percent", |v| {
            let a = v["accuracy"]["composite"].as_f64().unwrap();
            v["accuracy"]["composite"] = json!(a * 100.0);
        }),
    ];
    for (what, f) in unit_swaps {
        for _ in 0..2 {
            let g = next_good(&|_| true).unwrap();
            out.push(Mutation {
                kind: "units swapped",
                what: what.to_string(),
                good: g,
                edit: Box::new(move |d| edit_json(&d.join(EPI), f)),
            });
        }
    }
    for _ in 0..3 {
        let g = next_good(&|_| true).unwrap();
        out.push(Mutation {
            kind: "units swapped",
            what: "trace watts in mW".into(),
            good: g,
            edit: Box::new(|d| {
                edit_trace(d, |lines| {
                    for l in lines.iter_mut().skip(1) {
                        *l = with_csv_field(l, 2, |w| {
                            format!("{:.3}", w.parse::<f64>().unwrap() * 1000.0)
                        });
                    }
                })
            }),
        });
        let g = next_good(&|_| true).unwrap();
        out.push(Mutation {
            kind: "units swapped",
            what: "trace timestamps in s".into(),
            good: g,
            edit: Box::new(|d| {
                edit_trace(d, |lines| {
                    for l in lines.iter_mut().skip(1) {
                        *l = with_csv_field(l, 0, |t| {
                            format!("{}", t.parse::<f64>().unwrap() / 1000.0)
                        });
                    }
                })
            }),
        });
    }

    // Traces truncated at a line boundary: the last rows, the first rows, one instant.
    for k in [1usize, 2, 3, 7] {
        let g = next_good(&|_| true).unwrap();
        out.push(Mutation {
            kind: "trace truncated at a line",
            what: format!("last {k} row(s) cut"),
            good: g,
            edit: Box::new(move |d| edit_trace(d, |l| l.truncate(l.len() - k))),
        });
        let g = next_good(&|_| true).unwrap();
        out.push(Mutation {
            kind: "trace truncated at a line",
            what: format!("first {k} row(s) cut"),
            good: g,
            edit: Box::new(move |d| {
                edit_trace(d, |l| {
                    l.drain(1..1 + k);
                })
            }),
        });
    }

    // Traces spliced: a stretch replaced by the same stretch of another recording (same rows,
    // other watts); two recordings joined; the second half of the trace cut out and the end
    // kept (a hole).
    for span in [1usize, 3, 12, 40] {
        let g = next_good(&|_| true).unwrap();
        let spec = goods[g].spec.clone();
        out.push(Mutation {
            kind: "trace spliced",
            what: format!("{span} row(s) from another recording"),
            good: g,
            edit: Box::new(move |d| {
                let (_, other) = trace_lines(&spec, 1);
                edit_trace(d, |l| {
                    let at = 1 + (l.len() - 1) / 3;
                    let end = (at + span).min(l.len());
                    l[at..end].clone_from_slice(&other[at - 1..end - 1]);
                })
            }),
        });
    }
    for _ in 0..3 {
        let g = next_good(&|_| true).unwrap();
        let spec = goods[g].spec.clone();
        out.push(Mutation {
            kind: "trace spliced",
            what: "another recording appended, shifted in time".into(),
            good: g,
            edit: Box::new(move |d| {
                let (_, other) = trace_lines(&spec, 2);
                let shift = (spec.instants + 10) * spec.interval_ms;
                edit_trace(d, |l| {
                    l.extend(other.iter().map(|r| {
                        with_csv_field(r, 0, |t| (t.parse::<u64>().unwrap() + shift).to_string())
                    }))
                })
            }),
        });
        let g = next_good(&|_| true).unwrap();
        out.push(Mutation {
            kind: "trace spliced",
            what: "a middle stretch cut out".into(),
            good: g,
            edit: Box::new(|d| {
                edit_trace(d, |l| {
                    let a = l.len() / 3;
                    l.drain(a..a + l.len() / 4);
                })
            }),
        });
    }

    // Rows duplicated: one row, the last row, a row of every node at one instant.
    for (what, at) in [
        ("a middle row", 2usize),
        ("the last row", 0),
        ("the first row", 1),
    ] {
        for _ in 0..3 {
            let g = next_good(&|_| true).unwrap();
            out.push(Mutation {
                kind: "rows duplicated",
                what: what.to_string(),
                good: g,
                edit: Box::new(move |d| {
                    edit_trace(d, |l| {
                        let i = match at {
                            0 => l.len() - 1,
                            1 => 1,
                            _ => l.len() / 2,
                        };
                        let row = l[i].clone();
                        l.insert(i, row);
                    })
                }),
            });
        }
    }

    // Nodes reordered: ids swapped in the trace, rows of one instant reversed (no number changes:
    // only the digest sees it), per-node energies swapped in the EPI JSON.
    for _ in 0..4 {
        let g = next_good(&|x| x.spec.nodes >= 2).unwrap();
        out.push(Mutation {
            kind: "nodes reordered",
            what: "node ids 0 and 1 swapped in the trace".into(),
            good: g,
            edit: Box::new(|d| {
                edit_trace(d, |l| {
                    for r in l.iter_mut().skip(1) {
                        *r = with_csv_field(r, 1, |n| match n {
                            "0" => "1".into(),
                            "1" => "0".into(),
                            x => x.into(),
                        });
                    }
                })
            }),
        });
        let g = next_good(&|x| x.spec.nodes >= 2 && !x.spec.stagger).unwrap();
        out.push(Mutation {
            kind: "nodes reordered",
            what: "rows of each instant in reverse node order".into(),
            good: g,
            edit: Box::new(|d| {
                edit_trace(d, |l| {
                    let mut rows: Vec<String> = l.drain(1..).collect();
                    rows.sort_by_key(|r| {
                        (
                            field_of_csv(r, 0).parse::<u64>().unwrap(),
                            std::cmp::Reverse(field_of_csv(r, 1).parse::<u32>().unwrap()),
                        )
                    });
                    l.extend(rows);
                })
            }),
        });
        let g = next_good(&|x| x.spec.nodes >= 2).unwrap();
        out.push(Mutation {
            kind: "nodes reordered",
            what: "per_node_joules of nodes 0 and 1 swapped".into(),
            good: g,
            edit: Box::new(|d| {
                edit_json(&d.join(EPI), |v| {
                    let p = &mut v["energy"]["per_node_joules"];
                    let (a, b) = (p["0"].clone(), p["1"].clone());
                    p["0"] = b;
                    p["1"] = a;
                })
            }),
        });
    }

    // Tokens changed in the benchmark (the EPI JSON's own counts are nudged above).
    for (what, field, delta) in [
        ("benchmark total_tokens + 1", "total_tokens", 1i64),
        ("benchmark total_tokens − 1", "total_tokens", -1),
        ("benchmark tokens_in + 1", "tokens_in", 1),
        ("benchmark tokens_in − 1", "tokens_in", -1),
    ] {
        for _ in 0..3 {
            let g = next_good(&|x| field == "total_tokens" || x.spec.tokens_in).unwrap();
            out.push(Mutation {
                kind: "tokens changed",
                what: what.to_string(),
                good: g,
                edit: Box::new(move |d| {
                    edit_json(&d.join(BENCH), |v| {
                        let t = v[field].as_i64().unwrap();
                        v[field] = json!(t + delta);
                    })
                }),
            });
        }
    }

    // Benchmark edited after the fact.
    for _ in 0..3 {
        let g = next_good(&|_| true).unwrap();
        out.push(Mutation {
            kind: "benchmark edited",
            what: "a score nudged 0.2 %".into(),
            good: g,
            edit: Box::new(|d| {
                edit_json(&d.join(BENCH), |v| {
                    for (_, x) in v["benchmarks"].as_object_mut().unwrap().iter_mut().take(1) {
                        *x = json!(x.as_f64().unwrap() * 0.998);
                    }
                })
            }),
        });
        let g = next_good(&|_| true).unwrap();
        out.push(Mutation {
            kind: "labels changed",
            what: "hardware label changed in the EPI JSON".into(),
            good: g,
            edit: Box::new(|d| {
                edit_json(&d.join(EPI), |v| v["hardware"] = json!("a faster machine"))
            }),
        });
        let g = next_good(&|_| true).unwrap();
        out.push(Mutation {
            kind: "labels changed",
            what: "model label changed in the benchmark JSON".into(),
            good: g,
            edit: Box::new(|d| edit_json(&d.join(BENCH), |v| v["model"] = json!("another-model"))),
        });
        let g = next_good(&|_| true).unwrap();
        out.push(Mutation {
            kind: "benchmark edited",
            what: "a benchmark key renamed".into(),
            good: g,
            edit: Box::new(|d| {
                edit_json(&d.join(BENCH), |v| {
                    let b = v["benchmarks"].as_object_mut().unwrap();
                    let k = b.keys().next().unwrap().clone();
                    let x = b.remove(&k).unwrap();
                    b.insert(format!("{k}_v2"), x);
                })
            }),
        });
    }

    // A modelled trace presented as measured: the sidecar says modelled, the result integrated;
    // or a modelled sidecar put beside a trace that had none.
    for _ in 0..4 {
        let g = next_good(&|x| x.spec.sidecar.is_some()).unwrap();
        out.push(Mutation {
            kind: "modelled presented as measured",
            what: "sidecar method changed to modelled".into(),
            good: g,
            edit: Box::new(|d| {
                edit_json(&d.join(SIDECAR), |v| {
                    v["source"]["method"] = json!("modelled");
                    v["source"]["source"] = json!("cpu-model");
                })
            }),
        });
        let g = next_good(&|x| x.spec.sidecar.is_none()).unwrap();
        let spec = goods[g].spec.clone();
        out.push(Mutation {
            kind: "modelled presented as measured",
            what: "a cpu-model sidecar beside the trace".into(),
            good: g,
            edit: Box::new(move |d| {
                let v = sidecar_json(&spec, "cpu-model", "modelled");
                std::fs::write(d.join(SIDECAR), serde_json::to_string(&v).unwrap()).unwrap();
            }),
        });
        let g = next_good(&|x| x.spec.sidecar.is_some()).unwrap();
        out.push(Mutation {
            kind: "modelled presented as measured",
            what: "the result says modelled".into(),
            good: g,
            edit: Box::new(|d| {
                edit_json(&d.join(EPI), |v| v["energy"]["method"] = json!("modelled"))
            }),
        });
    }

    // Sidecar edited or removed.
    for _ in 0..3 {
        let g = next_good(&|x| x.spec.sidecar.is_some()).unwrap();
        out.push(Mutation {
            kind: "sidecar edited or removed",
            what: "sidecar removed".into(),
            good: g,
            edit: Box::new(|d| std::fs::remove_file(d.join(SIDECAR)).unwrap()),
        });
        let g = next_good(&|x| x.spec.sidecar.is_some()).unwrap();
        out.push(Mutation {
            kind: "sidecar edited or removed",
            what: "sidecar instrument changed".into(),
            good: g,
            edit: Box::new(|d| {
                edit_json(&d.join(SIDECAR), |v| {
                    v["source"]["instrument"] = json!("a better meter")
                })
            }),
        });
    }
    out
}

/// Copies a submission directory (files only).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
}

fn dir_bytes(d: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().to_string(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

/// Runs `jobs` on a few threads; returns their results in order.
fn parallel<T: Send, R: Send>(jobs: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let n = jobs.len();
    let jobs: Vec<Mutex<Option<T>>> = jobs.into_iter().map(|j| Mutex::new(Some(j))).collect();
    let results: Vec<Mutex<Option<R>>> = (0..n).map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let job = jobs[i].lock().unwrap().take().unwrap();
                *results[i].lock().unwrap() = Some(f(job));
            });
        }
    });
    results
        .into_iter()
        .map(|r| r.into_inner().unwrap().unwrap())
        .collect()
}

#[test]
fn validate_accepts_every_good_submission_and_rejects_every_mutation() {
    let root = tempfile::tempdir().unwrap();
    let specs: Vec<Spec> = (0..24).map(Spec::from_seed).collect();
    let goods = parallel(specs, |s| make_good(root.path(), &s));

    // Every good submission is accepted, and leaves unchecked only what it may.
    let mut numeric_fields = 0;
    for g in &goods {
        assert_eq!(g.report["ready"], true, "{:?}: {:#}", g.spec, g.report);
        let unchecked: Vec<&str> = g.report["unchecked"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["field"].as_str().unwrap())
            .collect();
        for u in &unchecked {
            assert!(
                MAY_BE_UNCHECKED.contains(u),
                "{:?}: `{u}` left unchecked: {:#}",
                g.spec,
                g.report["unchecked"]
            );
        }
        if g.spec.sidecar.is_some() {
            assert!(!unchecked.contains(&"instrument"), "{:#}", g.report);
        }
        // Every numeric field is recomputed, or one of the allowed unchecked ones.
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(g.dir.join(EPI)).unwrap()).unwrap();
        let mut leaves = Vec::new();
        numeric_leaves(&v, "", &mut leaves);
        let recomputed: BTreeSet<&str> = g.report["recomputed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap())
            .collect();
        for leaf in &leaves {
            let covered = recomputed.contains(leaf.as_str())
                || unchecked
                    .iter()
                    .any(|u| leaf == u || leaf.starts_with(&format!("{u}.")));
            assert!(
                covered,
                "{:?}: numeric field {leaf} is neither recomputed nor reported",
                g.spec
            );
        }
        numeric_fields += leaves.len();
        if g.spec.model_override {
            assert_eq!(
                g.report["overridden_labels"][0]["field"], "model",
                "{:#}",
                g.report
            );
        }
    }

    // The mutation set.
    let muts = mutations(&goods);
    let work = root.path().join("mutated");
    let jobs: Vec<(usize, Mutation)> = muts.into_iter().enumerate().collect();
    let outcomes = parallel(jobs, |(i, m)| {
        let good = &goods[m.good];
        let dir = work.join(format!("m{i:03}"));
        copy_dir(&good.dir, &dir);
        let before = dir_bytes(&dir);
        (m.edit)(&dir);
        assert_ne!(
            before,
            dir_bytes(&dir),
            "{} / {}: the mutation changed nothing",
            m.kind,
            m.what
        );
        let d = dir.to_str().unwrap().to_string();
        let mut argv = vec!["validate", "--submission", d.as_str()];
        argv.extend(good.validate_args.iter().map(String::as_str));
        let o = epi(&dir, &argv);
        (
            m.kind,
            m.what,
            m.good,
            o.status.code(),
            stdout(&o) + &stderr(&o),
        )
    });

    // A rejection of one changed field must name it (the internal consistency check, which runs
    // first, names the quantities of `epi = J/T ÷ A` with `≠`).
    const CONSISTENCY: &[&str] = &[
        "epi",
        "joules_per_token",
        "accuracy_composite",
        "energy.total_joules",
        "energy.total_tokens",
    ];
    let mut table: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut accepted = Vec::new();
    let mut unnamed = Vec::new();
    for (kind, what, good, code, out) in &outcomes {
        let e = table.entry(kind).or_default();
        e.0 += 1;
        if *code == Some(1) {
            e.1 += 1;
        } else {
            accepted.push(format!(
                "{kind} / {what} (good-{good:02}): exit {code:?}\n{out}"
            ));
        }
        if kind.starts_with("number") || kind.starts_with("token count") || *kind == "field dropped"
        {
            let field = what.split(' ').next().unwrap_or("");
            let field = field.split('[').next().unwrap_or(field);
            // Without idle_watts, what is left over is the net energy computed from it.
            let field = if field == "energy.idle_watts" {
                "energy.net_joules"
            } else {
                field
            };
            let named = [" ", "[", "`"]
                .iter()
                .any(|end| out.contains(&format!("{field}{end}")))
                || (CONSISTENCY.contains(&field) && out.contains('≠'));
            if !named {
                unnamed.push(format!(
                    "{kind} / {what}: the rejection does not name `{field}`:\n{out}"
                ));
            }
        }
    }
    println!("\n{:<34} {:>6} {:>9}", "mutation kind", "count", "rejected");
    for (k, (n, r)) in &table {
        println!("{k:<34} {n:>6} {r:>9}");
    }
    let total = outcomes.len();
    let rejected: usize = table.values().map(|x| x.1).sum();
    println!("{:<34} {total:>6} {rejected:>9}", "all");
    println!(
        "good submissions: {} made with epi calculate, {} accepted ({numeric_fields} numeric fields)",
        goods.len(),
        goods.iter().filter(|g| g.report["ready"] == true).count()
    );
    assert!(goods.len() >= 20);
    assert!(total >= 200, "only {total} mutations");
    assert!(
        accepted.is_empty(),
        "{} mutation(s) accepted:\n{}",
        accepted.len(),
        accepted.join("\n")
    );
    assert!(unnamed.is_empty(), "{}", unnamed.join("\n"));
}

#[test]
fn without_digests_the_numbers_still_catch_truncation_duplication_and_relabelled_nodes() {
    // A result written before input digests existed: validate says the digests are not checked,
    // and the recomputed numbers alone still catch these corruptions.
    let root = tempfile::tempdir().unwrap();
    let specs: Vec<Spec> = (0..24)
        .map(Spec::from_seed)
        .filter(|s| s.nodes >= 2 && !s.stagger && !s.counter)
        .take(3)
        .collect();
    assert_eq!(specs.len(), 3);
    let goods = parallel(specs, |s| make_good(root.path(), &s));
    type TraceEdit = fn(&mut Vec<String>);
    let edits: [(&str, TraceEdit, bool); 5] = [
        ("none", |_| {}, true),
        (
            "last row cut",
            |l| {
                l.pop();
            },
            false,
        ),
        (
            "a middle row duplicated",
            |l| {
                let r = l[l.len() / 2].clone();
                l.insert(l.len() / 2, r);
            },
            false,
        ),
        (
            "node ids 0 and 1 swapped",
            |l| {
                for r in l.iter_mut().skip(1) {
                    *r = with_csv_field(r, 1, |n| match n {
                        "0" => "1".into(),
                        "1" => "0".into(),
                        x => x.into(),
                    });
                }
            },
            false,
        ),
        // Same rows, same numbers: only a digest could see this.
        (
            "rows of each instant in reverse node order",
            |l| {
                let mut rows: Vec<String> = l.drain(1..).collect();
                rows.sort_by_key(|r| {
                    (
                        field_of_csv(r, 0).parse::<u64>().unwrap(),
                        std::cmp::Reverse(field_of_csv(r, 1).parse::<u32>().unwrap()),
                    )
                });
                l.extend(rows);
            },
            true,
        ),
    ];
    for (gi, g) in goods.iter().enumerate() {
        for (ei, (what, f, accepted)) in edits.iter().enumerate() {
            let dir = root.path().join(format!("old-{gi}-{ei}"));
            copy_dir(&g.dir, &dir);
            edit_json(&dir.join(EPI), |v| {
                assert!(remove(v, "run_metadata.input_digests"));
            });
            edit_trace(&dir, f);
            let report = validate_json(&dir, &g.validate_args);
            assert_eq!(report["ready"], *accepted, "{what}: {report:#}");
            assert!(
                report["unchecked"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|u| u["field"] == "run_metadata.input_digests" && u["kind"] == "absent"),
                "{report:#}"
            );
        }
    }
}
