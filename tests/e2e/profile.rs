//! `epi profile` end to end: the epi-meter emulator on a real pseudo-terminal (socat) and the
//! replayed llama.cpp `llama-server` on loopback, the real ARC-Challenge and MMLU suites on the
//! repository's test data. The run validates; its per-query energies plus `between_queries` are
//! the trace's energy over each repetition's window (1e-9) and the emulator's ground truth
//! (1e-6); so with `--concurrency 4`; `kill -9` leaves readable files marked incomplete; the
//! records are read by pyarrow and polars; a modelled source is labelled and refused as a
//! measurement; `--power auto` never falls back to a model.

use crate::support::{
    complete_lines, data_dir, epi, epi_bin, have_python, have_tool, send_signal, stderr, stdout,
    wait_for, wait_output, Emulator, LlamaServer,
};
use epi_framework::energy::{window_energy, ChannelSeries};
use epi_framework::records::{read_arrow_records, read_jsonl_records, QueryRecord};
use epi_framework::trace::{summarize_window, TraceMeta, TraceReader};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

fn ready() -> bool {
    have_tool("socat") && have_python()
}

fn summary(run: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-300)
}

/// The emulator for a run whose length the test cannot know: until SIGUSR1, no faults, 4
/// channels at 10 Hz, a meter clock far from its wrap.
fn emulator(dir: &Path) -> Emulator {
    let truth = dir.join("truth.csv");
    Emulator::start(
        dir,
        &[
            "--until-signal",
            "--duration",
            "3600",
            "--rate",
            "10",
            "--faults",
            "none",
            "--t0-ms",
            "1000",
            "--seq0",
            "0",
            "--linger-s",
            "5",
            "--truth",
            truth.to_str().unwrap(),
        ],
    )
}

fn profile_args<'a>(emu: &'a Emulator, url: &'a str, run: &'a Path) -> Vec<String> {
    [
        "profile",
        "--power",
        "epi-meter",
        "--port",
        emu.port.to_str().unwrap(),
        "--backend",
        "openai",
        "--url",
        url,
        "--suite",
        "arc-challenge,mmlu",
        "--data-dir",
        &data_dir(),
        "-S",
        "mmlu.subjects=[\"abstract_algebra\"]",
        "-O",
        "top_n=20",
        "--warmup",
        "0",
        "--output",
        run.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn run_epi(dir: &Path, args: &[String]) -> std::process::Output {
    epi(dir, &args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Every repetition: Σ per-query energy + between_queries = the repetition's energy = the trace's
/// energy over its window (1e-9 relative); net likewise. Returns the repetitions.
fn check_additivity(run: &Path) -> Vec<Value> {
    let s = summary(run);
    let recs: Vec<QueryRecord> = read_jsonl_records(&run.join("records.jsonl")).unwrap();
    let idle = s["idle"]["watts"].as_f64();
    let reps = s["repetitions"].as_array().unwrap().clone();
    assert!(!reps.is_empty());
    for r in &reps {
        let n = r["repetition"].as_u64().unwrap() as u32;
        let e = &r["energy"];
        let total = e["total_j"].as_f64().unwrap();
        let between = e["between_queries_j"].as_f64().unwrap();
        let mine: Vec<&QueryRecord> = recs.iter().filter(|q| q.repetition == Some(n)).collect();
        assert_eq!(mine.len() as u64, e["queries"].as_u64().unwrap());
        let sum: f64 = mine.iter().map(|q| q.energy_j.unwrap()).sum();
        assert!(
            rel(sum + between, total) < 1e-9,
            "repetition {n}: Σ queries {sum} + between {between} vs {total}"
        );
        assert!(mine.iter().all(|q| q.energy_coverage.unwrap() > 0.0));
        let w = e["window_trace_ms"].as_array().unwrap();
        let window = (w[0].as_f64().unwrap(), w[1].as_f64().unwrap());
        let trace = summarize_window(&run.join("power_trace.csv"), window, 1000.0, 10).unwrap();
        assert!(
            rel(trace.total_joules(), total) < 1e-9,
            "repetition {n}: trace {} J vs attributed {total} J",
            trace.total_joules()
        );
        if let Some(idle) = idle {
            let net: f64 = mine.iter().map(|q| q.energy_net_j.unwrap()).sum();
            let net_total = e["net_total_j"].as_f64().unwrap();
            assert!(rel(net_total, total - idle * e["duration_s"].as_f64().unwrap()) < 1e-9);
            // Net per query subtracts idle over its share of time only: Σ net < Σ gross.
            assert!(net < sum);
        }
    }
    reps
}

/// The emulator's ground truth over a window of the recorded trace: every recorded row is the
/// truth's row (the meter clock plus one offset), and the window's energy from the truth's values
/// equals the attributed energy to 1e-6.
fn check_ground_truth(run: &Path, truth: &Path, window: (f64, f64), attributed: f64) {
    let truth_text = std::fs::read_to_string(truth).unwrap();
    let truth: Vec<(f64, u32, f64)> = truth_text
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
                f[4].parse().unwrap(),
            )
        })
        .collect();
    let mut reader = TraceReader::open(run.join("power_trace.csv")).unwrap();
    let mut rows = Vec::new();
    while let Some((_, r)) = reader.next_row().unwrap() {
        rows.push(r);
    }
    assert!(!rows.is_empty() && rows.len() <= truth.len());
    let offset = rows[0].t_ms - truth[0].0;
    for (i, (r, t)) in rows.iter().zip(&truth).enumerate() {
        assert_eq!((r.node, r.watts), (t.1, t.2), "row {i}");
        assert!(
            (r.t_ms - (t.0 + offset)).abs() < 1e-6,
            "row {i}: meter clock"
        );
    }
    let mut by: BTreeMap<u32, Vec<(f64, f64)>> = BTreeMap::new();
    for t in &truth {
        by.entry(t.1).or_default().push((t.0 + offset, t.2));
    }
    let series: Vec<ChannelSeries> = by
        .into_iter()
        .map(|(ch, pts)| ChannelSeries::from_power(ch, &pts, 1000.0))
        .collect();
    let expected = window_energy(&series, window.0, window.1).joules;
    assert!(
        rel(attributed, expected) < 1e-6,
        "attributed {attributed} J vs the emulator's {expected} J"
    );
}

#[test]
fn a_profile_validates_adds_up_and_equals_the_meters_ground_truth() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let mut emu = emulator(d);
    let server = LlamaServer::start(d);
    let run = d.join("run");
    let db = d.join("results.db");
    let url = server.url();
    let mut args = profile_args(&emu, &url, &run);
    args.extend(
        [
            // Two examples per item instead of 25 / 5: the scoring path is the same, the
            // contexts short enough for a loaded machine.
            "--num-fewshot",
            "2",
            "--limit",
            "2",
            "--warmup-queries",
            "2",
            "--idle",
            "1",
            "--repetitions",
            "3",
            "--db",
            db.to_str().unwrap(),
            "--tags",
            "ci,emulated",
        ]
        .map(String::from),
    );
    let o = run_epi(d, &args);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    emu.end_run();
    let truth = d.join("truth.csv");
    wait_for("the emulator's ground truth", 120, || {
        truth.exists().then_some(())
    });
    emu.wait(60);
    let out = stdout(&o);
    assert!(out.contains("EPI ") && out.contains("(median)"), "{out}");
    assert!(out.contains("EPI token basis: processed"), "{out}");

    let s = summary(&run);
    assert_eq!(s["status"], "complete");
    assert_eq!(s["command"], "profile");
    assert_eq!(s["power"]["source"], "epi-meter");
    assert_eq!(s["power"]["method"], "counter");
    assert_eq!(s["scoring_mode"], "loglikelihood");
    assert_eq!(s["token_basis"], "processed");
    assert_eq!(s["warmup"]["queries"], 2);
    assert!(s["idle"]["watts"].as_f64().unwrap() > 0.0);
    assert_eq!(s["clock"]["method"], "arrival");
    assert!(s["labels"]["hardware_source"]
        .as_str()
        .unwrap()
        .starts_with("detected"));
    assert_ne!(s["labels"]["hardware"], "unknown");
    assert_eq!(s["spread"]["epi"]["values"].as_array().unwrap().len(), 3);
    let median = s["median_repetition"].as_u64().unwrap();
    for k in ["epi", "ept_in", "ept_out", "ept_total", "ipj", "ipw"] {
        assert!(
            s["metrics"][k].as_f64().unwrap() > 0.0,
            "{k}: {}",
            s["metrics"]
        );
    }
    // The interval holds EPI (its upper end is null, unbounded, when an accuracy interval
    // reaches 0).
    let ci = s["metrics"]["epi_ci95"].as_array().unwrap();
    let epi_value = s["metrics"]["epi"].as_f64().unwrap();
    assert!(ci[0].as_f64().unwrap() <= epi_value);
    assert!(ci[1].is_null() || ci[1].as_f64().unwrap() >= epi_value);

    let reps = check_additivity(&run);
    let m = reps
        .iter()
        .find(|r| r["repetition"].as_u64() == Some(median))
        .unwrap();
    let w = m["energy"]["window_trace_ms"].as_array().unwrap();
    let window = (w[0].as_f64().unwrap(), w[1].as_f64().unwrap());

    // The EPI JSON is what `epi calculate` gives for the trace and benchmark of the median
    // repetition, and the submission validates.
    let epi_json: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("epi.json")).unwrap()).unwrap();
    let attributed = m["energy"]["total_j"].as_f64().unwrap();
    assert!(
        rel(
            epi_json["energy"]["total_joules"].as_f64().unwrap(),
            attributed
        ) < 1e-9
    );
    assert_eq!(epi_json["energy"]["token_basis"], "processed");
    assert_eq!(epi_json["energy"]["method"], "counter");
    check_ground_truth(&run, &truth, window, attributed);
    // `epi validate <run dir>`, as the issue writes it.
    let v = epi(d, &["validate", run.to_str().unwrap()]);
    assert_eq!(v.status.code(), Some(0), "{}{}", stdout(&v), stderr(&v));

    // Everything outside the measured windows is marked in the sidecar.
    let meta = TraceMeta::read_for(&run.join("power_trace.csv"))
        .unwrap()
        .unwrap();
    assert_eq!(meta.extra["complete"], true);
    let phases: Vec<&str> = meta.extra["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        phases,
        [
            "backend-start",
            "warmup",
            "idle",
            "measured-1",
            "measured-2",
            "measured-3"
        ]
    );

    // Logged into the results database with its tags.
    let l = epi(
        d,
        &["results", "list", "--db", db.to_str().unwrap(), "--json"],
    );
    assert!(l.status.success(), "{}", stderr(&l));
    assert!(stdout(&l).contains("emulated"), "{}", stdout(&l));
}

#[test]
fn concurrent_queries_share_the_power_and_still_add_up() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let mut emu = emulator(d);
    // Each prompt token takes 2 ms: queries of tenths of a second that overlap.
    let server = LlamaServer::start_with(d, &["--slots", "4", "--delay-ms", "2"]);
    let run = d.join("run");
    let url = server.url();
    let mut args = profile_args(&emu, &url, &run);
    args.extend(
        [
            "--num-fewshot",
            "2",
            "--limit",
            "3",
            "--idle",
            "0",
            "--repetitions",
            "1",
            "--concurrency",
            "4",
            // Single-pass top-N pins one slot; the cached mode uses the double's 4 slots.
            "-O",
            "top_n_mode=\"cached\"",
            "-O",
            "max_concurrency=4",
        ]
        .map(String::from),
    );
    let o = run_epi(d, &args);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    emu.end_run();
    let s = summary(&run);
    assert_eq!(s["concurrency"], 4);
    check_additivity(&run);
    // Queries really overlapped: at some instant more than one was in flight.
    let recs = read_jsonl_records(&run.join("records.jsonl")).unwrap();
    let most = recs
        .iter()
        .map(|a| {
            recs.iter()
                .filter(|b| b.start_s <= a.start_s && a.start_s < b.end_s)
                .count()
        })
        .max()
        .unwrap();
    assert!(most >= 2, "at most {most} query in flight");
    let v = epi(d, &["validate", "--submission", run.to_str().unwrap()]);
    assert_eq!(v.status.code(), Some(0), "{}{}", stdout(&v), stderr(&v));
}

#[test]
fn kill_9_midway_leaves_readable_records_and_trace_marked_incomplete() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let _emu = emulator(d);
    // Each prompt token takes 20 ms: a zero-shot generative query takes a second or two.
    let server = LlamaServer::start_with(d, &["--delay-ms", "20"]);
    let run = d.join("run");
    let url = server.url();
    let mut args = profile_args(&_emu, &url, &run);
    args.extend(
        [
            "--mode",
            "generative",
            "--num-fewshot",
            "0",
            "--limit",
            "5",
            "--idle",
            "0",
            "--repetitions",
            "1",
        ]
        .map(String::from),
    );
    let child = Command::new(epi_bin())
        .args(&args)
        .current_dir(d)
        .env("NO_COLOR", "1")
        .env("XDG_CONFIG_HOME", d.join(".no-user-config"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Killed once a query is in the Arrow file (its batches are written at least every second).
    let arrow = run.join("records.arrow");
    let rows_before = wait_for("a record in records.arrow", 120, || {
        let n: usize = read_arrow_records(&arrow)
            .map(|b| b.iter().map(|b| b.num_rows()).sum())
            .unwrap_or(0);
        (n > 0).then_some(n)
    });
    send_signal(&child, "KILL");
    let o = wait_output(child, 60);
    assert_eq!(o.status.code(), None, "killed by a signal");

    // Marked incomplete: the summary still says running, the sidecar says incomplete.
    assert_eq!(summary(&run)["status"], "running");
    let meta = TraceMeta::read_for(&run.join("power_trace.csv"))
        .unwrap()
        .expect("the sidecar written at the start");
    assert_eq!(meta.extra["complete"], false);
    // Every record is readable, in both files.
    let jsonl = read_jsonl_records(&run.join("records.jsonl")).unwrap();
    let arrow_rows: usize = read_arrow_records(&arrow)
        .unwrap()
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert!(arrow_rows >= rows_before && arrow_rows <= jsonl.len());
    assert!(jsonl.len() < 10, "the run was cut: {} records", jsonl.len());
    // The trace's complete lines read back (the row being written at the kill may be cut).
    let lines = complete_lines(&run.join("power_trace.csv"));
    assert!(lines.len() > 1, "rows on disk");
    let copy = d.join("complete.csv");
    std::fs::write(&copy, lines.join("\n") + "\n").unwrap();
    let mut r = TraceReader::open(&copy).unwrap();
    let mut n = 0;
    while r.next_row().unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, lines.len() - 1);
}

#[test]
fn pyarrow_and_polars_read_the_records_with_the_documented_columns() {
    if !ready() {
        return;
    }
    let have = Command::new("python3")
        .args(["-c", "import pyarrow, polars"])
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        assert!(
            std::env::var_os("EPI_REQUIRE_SYSTEM_TOOLS").is_none(),
            "pyarrow and polars are required (EPI_REQUIRE_SYSTEM_TOOLS is set): run .ci/setup"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let mut emu = emulator(d);
    let server = LlamaServer::start(d);
    let run = d.join("run");
    let url = server.url();
    let mut args = profile_args(&emu, &url, &run);
    args.extend(
        [
            "--num-fewshot",
            "2",
            "--limit",
            "2",
            "--idle",
            "1",
            "--repetitions",
            "2",
        ]
        .map(String::from),
    );
    let o = run_epi(d, &args);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    emu.end_run();
    // The columns docs/formats.md names for records.arrow.
    let doc = std::fs::read_to_string(crate::support::repo_root().join("docs/formats.md")).unwrap();
    let section = doc
        .split("<!-- records-columns -->")
        .nth(1)
        .and_then(|s| s.split("<!-- end records-columns -->").next())
        .expect("docs/formats.md marks the records columns");
    let documented: Vec<String> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(String::from)
        .collect();
    assert!(documented.len() > 20, "{documented:?}");
    let script = r#"
import json, sys, pyarrow.ipc as ipc, polars as pl
path, cols = sys.argv[1], json.loads(sys.argv[2])
t = ipc.open_file(path).read_all()
df = pl.read_ipc(path)
assert t.column_names == cols, (t.column_names, cols)
assert df.columns == cols
e = df["energy_j"]
assert e.null_count() == 0 and (e > 0).all()
print(json.dumps({"rows": t.num_rows, "repetitions": sorted(set(df["repetition"].to_list()))}))
"#;
    let p = Command::new("python3")
        .args(["-c", script])
        .arg(run.join("records.arrow"))
        .arg(serde_json::to_string(&documented).unwrap())
        .output()
        .unwrap();
    assert!(
        p.status.success(),
        "{}{}",
        String::from_utf8_lossy(&p.stdout),
        String::from_utf8_lossy(&p.stderr)
    );
    let r: Value = serde_json::from_slice(&p.stdout).unwrap();
    assert_eq!(r["rows"], 8);
    assert_eq!(r["repetitions"], serde_json::json!([1, 2]));
}

#[test]
fn a_modelled_source_is_labelled_and_refused_as_a_measurement() {
    if !have_python() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let server = LlamaServer::start(d);
    let run = d.join("run");
    let o = epi(
        d,
        &[
            "profile",
            "--power",
            "cpu-model",
            "-P",
            "idle_watts=8",
            "-P",
            "watts_per_core=4.5",
            "--backend",
            "openai",
            "--url",
            &server.url(),
            "--suite",
            "mmlu",
            "-S",
            "mmlu.subjects=[\"abstract_algebra\"]",
            "--num-fewshot",
            "2",
            "--limit",
            "3",
            "--data-dir",
            &data_dir(),
            "-O",
            "top_n=20",
            "--warmup",
            "0",
            "--idle",
            "1",
            "--repetitions",
            "1",
            "--output",
            run.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("an ESTIMATE, not a measurement"),
        "{}",
        stdout(&o)
    );
    let s = summary(&run);
    assert_eq!(s["power"]["method"], "modelled");
    let epi_json: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("epi.json")).unwrap()).unwrap();
    assert_eq!(epi_json["energy"]["method"], "modelled");
    let v = epi(d, &["validate", "--submission", run.to_str().unwrap()]);
    assert_eq!(v.status.code(), Some(1), "{}", stdout(&v));
    assert!(stdout(&v).contains("modelled"), "{}", stdout(&v));
}

#[test]
fn power_auto_never_falls_back_to_a_model_and_a_silent_source_stops_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // No RAPL zones here (an empty powercap tree) and an NVML library that does not exist.
    std::fs::create_dir_all(d.join("powercap")).unwrap();
    std::fs::write(
        d.join("epi-bench.toml"),
        format!(
            "[power.rapl]\nsysfs_root = {:?}\n\n[power.nvml]\nlibrary_path = \"/nonexistent/libnvidia-ml.so\"\n",
            d.join("powercap").to_str().unwrap()
        ),
    )
    .unwrap();
    let o = epi(
        d,
        &[
            "profile",
            "--power",
            "auto",
            "--backend",
            "openai",
            "--url",
            "http://127.0.0.1:9",
            "--suite",
            "arc-challenge",
            "--data-dir",
            &data_dir(),
            "--output-dir",
            "runs",
        ],
    );
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("no power source measures") && e.contains("nvml") && e.contains("rapl"),
        "{e}"
    );
    assert!(
        e.contains("--power cpu-model"),
        "the way to a model is named: {e}"
    );
    assert!(!d.join("runs").exists(), "nothing was run");

    // A meter that never sends a sample: the run stops, naming the source.
    if !have_tool("socat") {
        return;
    }
    let mut pty = Command::new("socat")
        .arg(format!("pty,raw,echo=0,link={}", d.join("meter").display()))
        .arg(format!("pty,raw,echo=0,link={}", d.join("host").display()))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the pty pair", 60, || d.join("host").exists().then_some(()));
    let run = d.join("run");
    let o = epi(
        d,
        &[
            "profile",
            "--power",
            "epi-meter",
            "--port",
            d.join("host").to_str().unwrap(),
            "-P",
            "open_timeout_ms=1000",
            "--first-sample-timeout",
            "1",
            "--backend",
            "openai",
            "--url",
            "http://127.0.0.1:9",
            "--suite",
            "arc-challenge",
            "--data-dir",
            &data_dir(),
            "--output",
            run.to_str().unwrap(),
        ],
    );
    let _ = pty.kill();
    let _ = pty.wait();
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains("epi-meter"), "{}", stderr(&o));
    assert_eq!(summary(&run)["status"], "failed");
}
