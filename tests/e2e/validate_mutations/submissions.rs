//! The good submissions: generated traces (deterministic seeds; 1–4 nodes, staggered sampling,
//! gaps, counter columns), sidecars and benchmark JSON, turned into EPI results with
//! `epi calculate` and checked with `epi validate --json`; plus the helpers the tests use on
//! them (copying a submission, reading its bytes, running jobs on a few threads). Any failure
//! panics: it is a test harness.

use crate::support::{epi, stderr, stdout};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

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
pub(super) struct Spec {
    pub(super) seed: u64,
    pub(super) nodes: u32,
    pub(super) interval_ms: u64,
    pub(super) instants: u64,
    pub(super) stagger: bool,
    pub(super) gap: bool,
    pub(super) counter: bool,
    /// Sidecar `(source, method)`.
    pub(super) sidecar: Option<(&'static str, &'static str)>,
    pub(super) suites: usize,
    pub(super) tokens_in: bool,
    pub(super) items: bool,
    pub(super) ci95: bool,
    pub(super) idle_watts: Option<f64>,
    pub(super) weights: Option<&'static str>,
    pub(super) model_override: bool,
    pub(super) repetition: u32,
}

impl Spec {
    pub(super) fn from_seed(i: u64) -> Spec {
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
pub(super) fn trace_lines(s: &Spec, variant: u64) -> (String, Vec<String>) {
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

pub(super) fn write_trace(path: &Path, header: &str, lines: &[String]) {
    let mut text = String::with_capacity(lines.len() * 48);
    text.push_str(header);
    text.push('\n');
    for l in lines {
        text.push_str(l);
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

pub(super) fn sidecar_json(s: &Spec, source: &str, method: &str) -> Value {
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

pub(super) fn benchmark_json(s: &Spec) -> Value {
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

pub(super) const TRACE: &str = "power_trace.csv";
pub(super) const SIDECAR: &str = "power_trace.csv.meta.json";
pub(super) const BENCH: &str = "benchmark.json";
pub(super) const EPI: &str = "epi_result.json";

/// A good submission: its directory and the flags `validate` needs (the weights it used).
pub(super) struct Good {
    pub(super) spec: Spec,
    pub(super) dir: PathBuf,
    pub(super) validate_args: Vec<String>,
    /// validate --json of the good submission.
    pub(super) report: Value,
}

pub(super) fn make_good(root: &Path, s: &Spec) -> Good {
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

pub(super) fn validate_json(dir: &Path, extra: &[String]) -> Value {
    let d = dir.to_str().unwrap().to_string();
    let mut argv = vec!["validate", "--json", "--submission", d.as_str()];
    argv.extend(extra.iter().map(String::as_str));
    let o = epi(dir, &argv);
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("validate --json: {e}: {}{}", stdout(&o), stderr(&o)))
}

/// Copies a submission directory (files only).
pub(super) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
}

pub(super) fn dir_bytes(d: &Path) -> BTreeMap<String, Vec<u8>> {
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
pub(super) fn parallel<T: Send, R: Send>(jobs: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
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
