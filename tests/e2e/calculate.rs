//! `epi calculate`: known answers through the CLI, the pandas cross-check, weights, bad input.

use crate::support::{epi, have_tool, repo_root, stderr, stdout};
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

const HEADER: &str = "timestamp_ms,node_id,watts_rms,volts_rms,amps_rms,power_factor\n";

fn bench_json(dir: &Path, tokens: u64, scores: &[(&str, f64)]) -> std::path::PathBuf {
    let b: serde_json::Map<String, serde_json::Value> = scores
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
        .collect();
    let v = serde_json::json!({
        "model": "m", "quantization": "Q4_K_M", "surgery": "none (baseline)",
        "benchmarks": b, "total_tokens": tokens, "duration_seconds": 20.0,
        "timestamp_utc": "2026-05-15T10:00:00Z", "hardware": "2x test node",
        "inference_engine": "distributed-llama", "inference_engine_version": "0.16.4"
    });
    let p = dir.join("benchmark.json");
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    p
}

/// `epi calculate --trace T --benchmark B EXTRA...` in `dir`.
fn calculate(dir: &Path, trace: &str, benchmark: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["calculate", "--trace", trace, "--benchmark", benchmark];
    args.extend_from_slice(extra);
    epi(dir, &args)
}

fn rel(a: f64, b: f64) -> f64 {
    ((a - b) / b).abs()
}

fn json_out(o: &std::process::Output) -> serde_json::Value {
    assert!(
        o.status.success(),
        "epi failed: {}\n{}",
        stdout(o),
        stderr(o)
    );
    serde_json::from_slice(&o.stdout).expect("JSON on stdout")
}

#[test]
fn known_answer_piecewise_linear_two_nodes_irregular_and_offset() {
    // Node 0: w = 10 + t/1000 over 0..20 s sampled irregularly; ∫ = 200 + 200 = 400 J.
    // Node 1: 6 W constant, sampled every 300 ms from 150 ms to 19 950 ms: 6 × 19.8 = 118.8 J.
    let dir = tempfile::tempdir().unwrap();
    let mut rows: Vec<(f64, String)> = Vec::new();
    let mut t = 0.0f64;
    let steps = [170.0, 230.0, 400.0, 200.0]; // 1000 ms per cycle, irregular within
    for i in 0..=80 {
        rows.push((t, format!("{t},0,{},230,0.05,0.99\n", 10.0 + t / 1000.0)));
        t += steps[i % 4];
    }
    for k in 0..67 {
        let t1 = 150.0 + 300.0 * k as f64;
        rows.push((t1, format!("{t1},1,6,230,0.026,0.99\n")));
    }
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut s = String::from(HEADER);
    for (_, r) in rows {
        s += &r;
    }
    assert!(
        s.contains("\n20000,0,30,"),
        "the ramp must end exactly at 20 s"
    );
    std::fs::write(dir.path().join("trace.csv"), &s).unwrap();
    bench_json(
        dir.path(),
        1000,
        &[("mmlu_5shot", 0.6), ("arc_challenge_25shot", 0.4)],
    );
    let o = calculate(
        dir.path(),
        "trace.csv",
        "benchmark.json",
        &["--json", "--gap-limit-ms", "2000"],
    );
    let r = json_out(&o);
    let energy = 400.0 + 118.8;
    assert!(
        rel(r["energy"]["total_joules"].as_f64().unwrap(), energy) < 1e-9,
        "{}",
        r["energy"]
    );
    assert!(rel(r["energy"]["per_node_joules"]["0"].as_f64().unwrap(), 400.0) < 1e-9);
    assert!(rel(r["energy"]["per_node_joules"]["1"].as_f64().unwrap(), 118.8) < 1e-9);
    assert_eq!(r["energy"]["duration_seconds"].as_f64().unwrap(), 20.0);
    assert!(rel(r["accuracy_composite"].as_f64().unwrap(), 0.5) < 1e-12);
    assert!(rel(r["joules_per_token"].as_f64().unwrap(), energy / 1000.0) < 1e-9);
    assert!(rel(r["epi"].as_f64().unwrap(), energy / 1000.0 / 0.5) < 1e-9);
    // Peak: both channels cover 150..19950; the largest sum is at the last instant both cover.
    let peak = r["energy"]["peak_watts"].as_f64().unwrap();
    assert!(peak > 29.0 && peak <= 30.0 + 6.0, "{peak}");
}

#[test]
fn a_gap_is_reported_in_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = String::from(HEADER);
    for t in [0, 1000, 2000, 9000, 10000] {
        let _ = writeln!(s, "{t},0,20,230,0.09,0.99");
    }
    std::fs::write(dir.path().join("trace.csv"), &s).unwrap();
    bench_json(dir.path(), 100, &[("mmlu_5shot", 0.5)]);
    let r = json_out(&calculate(
        dir.path(),
        "trace.csv",
        "benchmark.json",
        &["--json"],
    ));
    assert_eq!(r["energy"]["gap_count"], 1);
    assert_eq!(r["energy"]["gaps"][0]["start_ms"], 2000.0);
    assert_eq!(r["energy"]["gaps"][0]["end_ms"], 9000.0);
    assert!(r["energy"]["flags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "gaps"));
    assert!(rel(r["energy"]["total_joules"].as_f64().unwrap(), 200.0) < 1e-12);
}

#[test]
fn weights_change_the_composite() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("trace.csv"),
        format!("{HEADER}0,0,10,230,0.04,0.99\n1000,0,10,230,0.04,0.99\n"),
    )
    .unwrap();
    bench_json(
        dir.path(),
        10,
        &[("mmlu_5shot", 0.8), ("arc_challenge_25shot", 0.4)],
    );
    let r = json_out(&calculate(
        dir.path(),
        "trace.csv",
        "benchmark.json",
        &["--weights", "mmlu=3,arc_challenge=1", "--json"],
    ));
    assert!(rel(r["accuracy_composite"].as_f64().unwrap(), 0.7) < 1e-12);
    assert!(rel(r["epi"].as_f64().unwrap(), 1.0 / 0.7) < 1e-12);
    let o = calculate(
        dir.path(),
        "trace.csv",
        "benchmark.json",
        &["--weights", "mmlu=1"],
    );
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no weight for suite `arc_challenge`"),
        "{}",
        stderr(&o)
    );
}

/// A directory with `trace.csv` (one node, 10 W then 12 W one second later: 11 J) and
/// `benchmark.json` (11 tokens, accuracy 0.5), so EPI is exactly 2.
fn one_node_one_second() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("trace.csv"),
        format!("{HEADER}0,0,10,230,0.04,0.99\n1000,0,12,230,0.05,0.99\n"),
    )
    .unwrap();
    bench_json(dir.path(), 11, &[("hellaswag_10shot", 0.5)]);
    dir
}

#[test]
fn output_file_is_written_and_summary_printed() {
    let dir = one_node_one_second();
    let o = calculate(
        dir.path(),
        "trace.csv",
        "benchmark.json",
        &["--model", "override", "--output", "out/epi.json"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("EPI: 2.0000"), "{}", stdout(&o));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("out/epi.json")).unwrap())
            .unwrap();
    assert_eq!(r["model"], "override");
    assert_eq!(r["epi"], 2.0);
}

#[test]
fn calculate_logs_into_the_results_database() {
    let dir = one_node_one_second();
    let o = calculate(
        dir.path(),
        "trace.csv",
        "benchmark.json",
        &["--db", "r.db", "--tags", "a,b"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("logged as #1 in r.db"),
        "{}",
        stdout(&o)
    );
    let o = epi(
        dir.path(),
        &["results", "list", "--db", "r.db", "--tag", "b", "--json"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().map(|a| a.len()), Some(1), "{v}");
    assert_eq!(
        v[0]["result"]["epi"].as_f64().or(v[0]["epi"].as_f64()),
        Some(2.0),
        "{v}"
    );
}

#[test]
fn bad_inputs_exit_3_naming_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("trace.csv"),
        format!("{HEADER}0,0,10,230,0.04,0.99\n1000,0,-1,230,0.04,0.99\n"),
    )
    .unwrap();
    bench_json(dir.path(), 10, &[("mmlu_5shot", 0.5)]);
    let o = calculate(dir.path(), "trace.csv", "benchmark.json", &[]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).contains("trace.csv:3: watts_rms: expected watts ≥ 0"),
        "{}",
        stderr(&o)
    );

    std::fs::write(
        dir.path().join("trace.csv"),
        format!("{HEADER}0,0,10,230,0.04,0.99\n1000,0,10,230,0.04,0.99\n"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("benchmark.json"),
        "{\n  \"model\": \"m\",\n  \"benchmarks\": {\"mmlu_5shot\": \"high\"}\n}\n",
    )
    .unwrap();
    let o = calculate(dir.path(), "trace.csv", "benchmark.json", &[]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).contains("benchmark.json:3: benchmarks.mmlu_5shot: invalid type"),
        "{}",
        stderr(&o)
    );

    let o = calculate(dir.path(), "missing.csv", "benchmark.json", &[]);
    assert_eq!(o.status.code(), Some(4));
    assert!(stderr(&o).contains("missing.csv"), "{}", stderr(&o));
}

#[test]
fn config_file_is_read_and_unknown_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("trace.csv"),
        format!("{HEADER}0,0,10,230,0.04,0.99\n1000,0,10,230,0.04,0.99\n"),
    )
    .unwrap();
    bench_json(
        dir.path(),
        10,
        &[("mmlu_5shot", 0.8), ("arc_challenge_25shot", 0.4)],
    );
    std::fs::write(
        dir.path().join("epi-bench.toml"),
        "[general]\ndefault_instrument = \"bench meter\"\n\n[benchmarks]\ndefault_weights = { mmlu = 1.0, arc_challenge = 3.0 }\n",
    )
    .unwrap();
    let r = json_out(&calculate(
        dir.path(),
        "trace.csv",
        "benchmark.json",
        &["--json"],
    ));
    assert!(rel(r["accuracy_composite"].as_f64().unwrap(), 0.5) < 1e-12);
    assert_eq!(r["instrument"], "bench meter");
    std::fs::write(
        dir.path().join("epi-bench.toml"),
        "[general]\ndefault_instrument = \"x\"\ngap_limit = 5\n",
    )
    .unwrap();
    let o = calculate(dir.path(), "trace.csv", "benchmark.json", &[]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).contains("epi-bench.toml:3: general.gap_limit: unknown field `gap_limit`"),
        "{}",
        stderr(&o)
    );
}

/// `epi calculate` agrees with the pandas reference to 1e-9 relative on a generated trace.
#[test]
fn matches_the_pandas_reference() {
    if !have_tool("python3") {
        return;
    }
    let has_pandas = Command::new("python3")
        .args(["-c", "import pandas, numpy"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !has_pandas {
        assert!(
            std::env::var_os("EPI_REQUIRE_SYSTEM_TOOLS").is_none(),
            "pandas is required: run .ci/setup"
        );
        eprintln!("skipping: pandas not installed");
        return;
    }
    let refdir = repo_root().join("epi-cli/benches/reference");
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.csv");
    let st = Command::new("python3")
        .arg(refdir.join("gen_trace.py"))
        .arg(&trace)
        .args([
            "--nodes",
            "4",
            "--hz",
            "50",
            "--seconds",
            "120",
            "--seed",
            "7",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let bench = bench_json(
        dir.path(),
        123_456,
        &[
            ("mmlu_5shot", 0.781),
            ("arc_challenge_25shot", 0.642),
            ("hellaswag_10shot", 0.805),
        ],
    );
    let py = Command::new("python3")
        .arg(refdir.join("pandas_epi_reference.py"))
        .arg(&trace)
        .arg(&bench)
        .output()
        .unwrap();
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let p: serde_json::Value = serde_json::from_slice(&py.stdout).unwrap();
    let r = json_out(&calculate(
        dir.path(),
        "trace.csv",
        "benchmark.json",
        &["--json"],
    ));
    for (ours, theirs) in [
        (&r["energy"]["total_joules"], &p["total_joules"]),
        (&r["energy"]["duration_seconds"], &p["duration_seconds"]),
        (&r["energy"]["avg_watts"], &p["avg_watts"]),
        (&r["energy"]["peak_watts"], &p["peak_watts"]),
        (&r["joules_per_token"], &p["joules_per_token"]),
        (&r["accuracy_composite"], &p["accuracy_composite"]),
        (&r["epi"], &p["epi"]),
    ] {
        let (a, b) = (ours.as_f64().unwrap(), theirs.as_f64().unwrap());
        assert!(rel(a, b) < 1e-9, "ours {a} vs pandas {b}");
    }
    assert_eq!(r["energy"]["samples"], p["samples"]);
    assert_eq!(r["energy"]["channels"], p["nodes"]);
}
