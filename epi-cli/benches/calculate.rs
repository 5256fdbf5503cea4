//! Benchmark of `epi calculate` against the pandas reference (`reference/pandas_epi_reference.py`)
//! on the same trace, in one invocation.
//!
//! ```text
//! cargo bench -p epi-cli --bench calculate            # ~1 GB trace (gen_trace.py --target-mb 1024)
//! cargo bench -p epi-cli --bench calculate -- --quick # 64 MB trace
//! ```
//!
//! Reports wall-clock time (median of 5 runs each, alternating, the file read through just before
//! every run so the page cache is warm for both), peak resident memory of each
//! process (`wait4` rusage), the speed ratio, and checks that both computed the same energy to 1e-9
//! relative. Targets: ≥ 20× faster than pandas, < 64 MiB peak memory whatever the trace size.
//! Traces are generated once into `target/bench-data/` (needs python3 with numpy and pandas).

mod measure;

use measure::{median, run_measured, warm};
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs bench targets without `--bench`: nothing to do then.
        println!(
            "calculate bench: run with `cargo bench -p epi-cli --bench calculate [-- --quick]`"
        );
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let runs = 5;
    let sizes: Vec<u64> = if quick { vec![64] } else { vec![64, 1024] };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf();
    let refdir = root.join("epi-cli/benches/reference");
    let data = root.join("target/bench-data");
    std::fs::create_dir_all(&data).expect("create target/bench-data");
    let bench_json = data.join("benchmark_sample.json");
    std::fs::write(&bench_json, BENCHMARK_SAMPLE).expect("write benchmark json");
    let epi = PathBuf::from(env!("CARGO_BIN_EXE_epi"));

    println!("epi calculate vs pandas reference ({runs} runs each, median; page cache warm)\n");
    let mut rows = Vec::new();
    for mb in sizes {
        let trace = data.join(format!("trace_{mb}mb.csv"));
        if !trace.exists() {
            println!(
                "generating {} with gen_trace.py --target-mb {mb} ...",
                trace.display()
            );
            let st = Command::new("python3")
                .arg(refdir.join("gen_trace.py"))
                .arg(&trace)
                .args(["--nodes", "4", "--hz", "50", "--target-mb", &mb.to_string()])
                .status()
                .expect("python3");
            assert!(st.success(), "gen_trace.py failed");
        }
        let bytes = std::fs::metadata(&trace).expect("trace").len();
        warm(&trace);
        let mut epi_runs = Vec::new();
        let mut pd_runs = Vec::new();
        let mut epi_out = String::new();
        let mut pd_out = String::new();
        for _ in 0..runs {
            warm(&trace);
            let (t, rss, out) = run_measured(
                Command::new(&epi)
                    .args(["calculate", "--json", "--trace"])
                    .arg(&trace)
                    .arg("--benchmark")
                    .arg(&bench_json)
                    .env("NO_COLOR", "1"),
            );
            epi_runs.push((t, rss));
            epi_out = out;
            warm(&trace);
            let (t, rss, out) = run_measured(
                Command::new("python3")
                    .arg(refdir.join("pandas_epi_reference.py"))
                    .arg(&trace)
                    .arg(&bench_json),
            );
            pd_runs.push((t, rss));
            pd_out = out;
        }
        let secs = |v: &[(f64, i64)]| {
            v.iter()
                .map(|(t, _)| format!("{t:.3}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "{mb} MB trace ({bytes} bytes) runs, s: epi [{}]  pandas [{}]",
            secs(&epi_runs),
            secs(&pd_runs)
        );
        let e: serde_json::Value = serde_json::from_str(&epi_out).expect("epi JSON");
        let p: serde_json::Value = serde_json::from_str(&pd_out).expect("pandas JSON");
        let ej = e["energy"]["total_joules"].as_f64().expect("energy");
        let pj = p["total_joules"].as_f64().expect("energy");
        let rel = ((ej - pj) / pj).abs();
        let epi_rel = ((e["epi"].as_f64().unwrap_or(f64::NAN)
            - p["epi"].as_f64().unwrap_or(f64::NAN))
            / p["epi"].as_f64().unwrap_or(f64::NAN))
        .abs();
        let peak_same = e["energy"]["peak_watts"] == p["peak_watts"];
        // Rows as each program counted them (they must agree).
        let samples = p["samples"].as_u64().unwrap_or(0);
        let samples_same = e["energy"]["samples"].as_u64() == Some(samples);
        let (et, erss) = median(&epi_runs);
        let (pt, prss) = median(&pd_runs);
        rows.push((
            mb,
            samples,
            et,
            erss,
            pt,
            prss,
            rel,
            epi_rel,
            peak_same && samples_same,
        ));
    }
    println!(
        "{:>9} {:>12} {:>10} {:>10} {:>10} {:>10} {:>8} {:>10} {:>10}",
        "trace",
        "rows",
        "epi s",
        "epi MiB",
        "pandas s",
        "pandas MiB",
        "speedup",
        "ΔE rel",
        "ΔEPI rel"
    );
    let mut ok = true;
    for (mb, samples, et, erss, pt, prss, rel, epi_rel, same) in &rows {
        let speed = pt / et;
        println!(
            "{:>7}MB {:>12} {:>10.3} {:>10.1} {:>10.3} {:>10.1} {:>7.1}× {:>10.1e} {:>10.1e}{}",
            mb,
            samples,
            et,
            *erss as f64 / 1024.0,
            pt,
            *prss as f64 / 1024.0,
            speed,
            rel,
            epi_rel,
            if *same {
                ""
            } else {
                "  (peak or row count differs)"
            }
        );
        ok &= *rel <= 1e-9 && *epi_rel <= 1e-9 && (*erss as f64 / 1024.0) < 64.0 && *same;
        if *mb >= 1024 {
            ok &= speed >= 20.0;
        }
    }
    println!("\n(rows: data rows, as both programs counted them)");
    println!(
        "targets: ≥ 20× pandas on ~1 GB, < 64 MiB peak RSS, energy and EPI equal to 1e-9: {}",
        if ok { "MET" } else { "NOT MET" }
    );
}

const BENCHMARK_SAMPLE: &str = r#"{
  "model": "qwen3-30b-a3b",
  "quantization": "Q4_K_M",
  "surgery": "none (baseline)",
  "benchmarks": {
    "mmlu_5shot": 0.781,
    "arc_challenge_25shot": 0.642,
    "hellaswag_10shot": 0.805
  },
  "total_tokens": 1843200,
  "duration_seconds": 3600.0,
  "timestamp_utc": "2026-05-15T10:00:00Z",
  "hardware": "4x Pi 5 16GB (distributed-llama)",
  "inference_engine": "distributed-llama",
  "inference_engine_version": "0.16.4"
}
"#;
