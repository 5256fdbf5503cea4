//! Fault injection on loopback with real components (issue 12, "Faults"): each test runs `epi` as a
//! user does, injects one fault at a moment it chooses by watching an observable event (a record
//! on disk, a trace row, a phase in `run.log`), never after a sleep that assumes a speed, and then
//! checks four things: what was measured before the fault is on disk and readable (trace rows
//! through `TraceReader`, records through `read_jsonl_records` / `read_arrow_records`, database
//! rows), the message names the fault, the exit code is the documented one, and no process is
//! left running (remote ones included).
//!
//! The components are real wherever they can run here: the epi-meter board is written by the
//! test on a real pseudo-terminal pair from `socat` ([`Board`]: protocol v1 lines, unplugged by
//! killing socat, replugged by starting it again on the same path, stalled, fed garbage); the
//! llama-server double replays a real server's recordings and is frozen with SIGSTOP to hang it;
//! a fault-injecting HTTP proxy ([`FaultProxy`]) in front of it answers 500 or cuts replies the
//! way a crashing server or a cut network does; sshd is OpenSSH on 127.0.0.1 (killed with
//! SIGKILL, restarted with its own configuration); the distributed-llama double dies on the
//! request that kills dllama-api; the disk is a 256 KiB tmpfs filled by the test; the results
//! database is SQLite. The harness is in `faults/harness.rs`; the table of faults is
//! `docs/reliability.md`.
//!
//! A test that needs a tool (socat, sshd, sqlite3, python3 with numpy, mount) skips when it is
//! missing, and fails instead when `EPI_REQUIRE_SYSTEM_TOOLS` is set (CI).

mod harness;

use crate::support::{
    closed_soon, complete_lines, data_dir, doubles, epi, free_port, have_python, have_tool,
    repo_root, stderr, stdout, wait_for,
};
use epi_framework::records::{read_arrow_records, read_jsonl_records, QueryRecord};
use epi_framework::testing::Sshd;
use epi_framework::trace::{summarize_window, TraceMeta, TraceReader};
use harness::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

/// Trace rows readable from the complete lines of `trace` (a row being written when the fault
/// struck may be cut; it is not counted): `(node, watts)` in file order.
fn readable_rows(trace: &Path, scratch: &Path) -> Vec<(u32, f64)> {
    let lines = complete_lines(trace);
    assert!(!lines.is_empty(), "{}: no header on disk", trace.display());
    std::fs::write(scratch, lines.join("\n") + "\n").unwrap();
    let mut r = TraceReader::open(scratch).unwrap_or_else(|e| panic!("{}: {e}", trace.display()));
    let mut rows = Vec::new();
    while let Some((_, row)) = r
        .next_row()
        .unwrap_or_else(|e| panic!("{}: {e}", trace.display()))
    {
        rows.push((row.node, row.watts));
    }
    rows
}

fn summary(run: &Path) -> Value {
    let text = std::fs::read_to_string(run.join("summary.json")).expect("summary.json on disk");
    serde_json::from_str(&text).expect("summary.json is JSON")
}

fn sidecar(trace: &Path) -> TraceMeta {
    TraceMeta::read_for(trace)
        .expect("the sidecar is readable")
        .expect("the sidecar exists")
}

fn records(run: &Path) -> Vec<QueryRecord> {
    read_jsonl_records(&run.join("records.jsonl")).expect("records.jsonl is readable")
}

fn arrow_rows(run: &Path) -> usize {
    read_arrow_records(&run.join("records.arrow"))
        .expect("records.arrow is readable")
        .iter()
        .map(|b| b.num_rows())
        .sum()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-300)
}

/// Σ per-query energy + between_queries = each repetition's energy = the trace's energy over its
/// window (1e-9 relative): the attribution still adds up after the fault.
fn check_additivity(run: &Path) {
    let s = summary(run);
    let recs = records(run);
    let reps = s["repetitions"].as_array().expect("repetitions");
    assert!(!reps.is_empty(), "a repetition was measured: {s}");
    for r in reps {
        let n = r["repetition"].as_u64().unwrap() as u32;
        let e = &r["energy"];
        let total = e["total_j"].as_f64().expect("total_j");
        let between = e["between_queries_j"].as_f64().unwrap();
        let sum: f64 = recs
            .iter()
            .filter(|q| q.repetition == Some(n))
            .map(|q| q.energy_j.expect("energy_j"))
            .sum();
        assert!(
            rel(sum + between, total) < 1e-9,
            "repetition {n}: Σ queries {sum} + between {between} vs {total}"
        );
        let w = e["window_trace_ms"].as_array().unwrap();
        let window = (w[0].as_f64().unwrap(), w[1].as_f64().unwrap());
        let trace = summarize_window(&run.join("power_trace.csv"), window, 1000.0, 10).unwrap();
        assert!(
            rel(trace.total_joules(), total) < 1e-9,
            "repetition {n}: trace {} J vs attributed {total} J",
            trace.total_joules()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The meter, mid-run
// ---------------------------------------------------------------------------------------------

/// `epi profile` with the board and the double: one MMLU subject, 4 items, log-likelihood
/// through top-N, no warm-up, no idle baseline unless `extra` asks, one repetition; the source
/// reconnects at most 200 ms apart.
fn profile_args(board: &Board, url: &str, run: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = argv(&[
        "profile",
        "--power",
        "epi-meter",
        "--port",
        board.port().to_str().unwrap(),
        "-P",
        "reconnect_max_ms=200",
        "--backend",
        "openai",
        "--url",
        url,
        "--suite",
        "mmlu",
        "-S",
        "mmlu.subjects=[\"abstract_algebra\"]",
        "--num-fewshot",
        "2",
        "--limit",
        "4",
        "--data-dir",
        &data_dir(),
        "-O",
        "top_n=20",
        "--warmup",
        "0",
        "--repetitions",
        "1",
        "--output",
        run.to_str().unwrap(),
    ]);
    if !extra.contains(&"--idle") {
        a.extend(argv(&["--idle", "0"]));
    }
    a.extend(argv(extra));
    a
}

fn wait_first_record(run: &Path) {
    wait_for("the first measured record", 180, || {
        (!complete_lines(&run.join("records.jsonl")).is_empty()).then_some(())
    });
}

/// Waits until the trace holds at least `samples` samples of the board's 4 channels.
fn wait_rows(trace: &Path, samples: usize) {
    wait_for(&format!("{samples} samples in the trace"), 60, || {
        (complete_lines(trace).len() > samples * 4).then_some(())
    });
}

#[test]
fn meter_unplugged_replugged_and_fed_garbage_mid_profile_is_survived_and_recorded() {
    if !meter_ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let board = Board::start(d);
    let server = Double::start(d, &[]);
    let proxy = FaultProxy::start(server.port);
    let run = d.join("run");
    let trace = run.join("power_trace.csv");
    // Mid-run: once the measured part has written a record, the next query is held, and the
    // run waits while the meter goes away and comes back.
    proxy.arm(Fault::Hold, &run);
    // An outage shorter than the silence a run tolerates (--first-sample-timeout) is survived.
    let child = spawn_epi(
        d,
        &profile_args(
            &board,
            &proxy.url(),
            &run,
            &["--first-sample-timeout", "60"],
        ),
    );
    proxy.wait_held();
    board.unplug(|written| wait_rows(&trace, written));
    wait_for("1.5 s of samples taken while unplugged", 60, || {
        (board.lost() >= 15).then_some(())
    });
    board.replug();
    let back = board.delivered();
    wait_for("samples after the replug", 60, || {
        (board.delivered() >= back + 5).then_some(())
    });
    let bad = board.garbage(200);
    let after = board.delivered();
    wait_for("samples after the garbage", 60, || {
        (board.delivered() >= after + 5).then_some(())
    });
    let seen = board.delivered();
    wait_rows(&trace, seen);
    // From here to the end of the run the host reads everything the board writes.
    let lost = board.lost();
    proxy.release();
    let (code, out, err) = child.finish(180);
    assert_eq!(code, Some(0), "{out}{err}");

    // The run completed; the gap is in its numbers, flagged, and the attribution adds up.
    let s = summary(&run);
    assert_eq!(s["status"], "complete", "{s}");
    let coverage = s["repetitions"][0]["energy"]["coverage"].as_f64().unwrap();
    assert!(
        coverage < 1.0 - 1e-6,
        "coverage {coverage} with an unplugged stretch"
    );
    let epi_json: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("epi.json")).unwrap()).unwrap();
    assert!(
        epi_json["energy"]["gap_count"].as_u64().unwrap() >= 1,
        "{}",
        epi_json["energy"]
    );
    assert!(
        epi_json["energy"]["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "gaps"),
        "{}",
        epi_json["energy"]
    );
    check_additivity(&run);

    // Every sample the host read is the board's, in order, the garbage skipped; the stream's
    // health says what happened, exactly.
    let rows = readable_rows(&trace, &d.join("complete.csv"));
    let delivered = board.delivered_watts();
    assert!(rows.len() >= seen * 4 && rows.len() <= delivered.len() * 4);
    for (i, (node, w)) in rows.iter().enumerate() {
        assert_eq!(
            (*node, *w),
            ((i % 4) as u32, delivered[i / 4][i % 4]),
            "row {i}"
        );
    }
    let meta = sidecar(&trace);
    assert_eq!(meta.stats.reconnects, 1, "{:?}", meta.stats);
    assert_eq!(meta.stats.lost_samples, lost, "{:?}", meta.stats);
    assert_eq!(meta.stats.bad_lines, bad, "{:?}", meta.stats);
    assert!(meta.stats.disconnected_ms > 0.0);
    let kinds: Vec<&str> = meta.events.iter().map(|e| e.kind.as_str()).collect();
    for k in ["disconnected", "reconnected", "bad-line", "lost-samples"] {
        assert!(kinds.contains(&k), "event {k}: {kinds:?}");
    }
    // The message names the faults survived.
    assert!(
        err.contains("disconnected 1 time") && err.contains("201 bad lines"),
        "{err}"
    );
}

#[test]
fn a_stalled_meter_stops_the_profile_run_and_names_the_stall() {
    if !meter_ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let board = Board::start(d);
    let server = Double::start(d, &[]);
    let proxy = FaultProxy::start(server.port);
    let run = d.join("run");
    let trace = run.join("power_trace.csv");
    proxy.arm(Fault::Hold, &run);
    // The source may stay silent 3 s (the time it has for its first samples, and at any moment).
    let child = spawn_epi(
        d,
        &profile_args(&board, &proxy.url(), &run, &["--first-sample-timeout", "3"]),
    );
    proxy.wait_held();
    board.stall();
    let written = board.delivered();
    wait_rows(&trace, written);
    proxy.release();
    let (code, out, err) = child.finish(180);
    assert_eq!(code, Some(4), "{out}{err}");
    assert!(
        err.contains("power source lost: epi-meter: no samples for"),
        "{err}"
    );
    let s = summary(&run);
    assert_eq!(s["status"], "failed");
    assert!(
        !run.join("epi.json").exists(),
        "no EPI from a stalled meter"
    );
    // What was measured before the stall is on disk and readable.
    let rows = readable_rows(&trace, &d.join("complete.csv"));
    assert_eq!(rows.len(), written * 4);
    let recs = records(&run);
    assert!(!recs.is_empty());
    assert_eq!(arrow_rows(&run), recs.len());
    assert_eq!(sidecar(&trace).extra["complete"], false);
}

// ---------------------------------------------------------------------------------------------
// The server, mid-run
// ---------------------------------------------------------------------------------------------

/// `epi eval` through `url`: one MMLU subject, 3 items, top-N log-likelihood, quick retries.
fn eval_args(url: &str, run: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = argv(&[
        "eval",
        "--backend",
        "openai",
        "--url",
        url,
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
        "-O",
        "retry_backoff_s=0.05",
        "--output",
        run.to_str().unwrap(),
    ]);
    a.extend(argv(extra));
    a
}

/// The records after a server fault: the first is answered, at least one failed naming
/// `fault`, all are readable in both files; the run is incomplete, exits 4 and says why.
fn check_server_fault(run: &Path, code: Option<i32>, err: &str, fault: &str) {
    assert_eq!(code, Some(4), "{err}");
    let recs = records(run);
    assert_eq!(recs.len(), 3, "every item is recorded, failed or not");
    assert_eq!(arrow_rows(run), 3);
    assert!(recs[0].error.is_none(), "{:?}", recs[0].error);
    assert!(recs[0].prediction.is_some());
    let failed: Vec<&str> = recs.iter().filter_map(|r| r.error.as_deref()).collect();
    assert!(
        !failed.is_empty() && failed.iter().all(|e| e.contains(fault)),
        "{failed:?}"
    );
    let s = summary(run);
    assert_eq!(s["status"], "incomplete");
    assert!(!run.join("benchmark.json").exists());
    assert!(
        err.contains(&format!("{} quer", failed.len())) && err.contains(fault),
        "the message names the fault: {err}"
    );
}

/// `epi eval` through the fault proxy armed with `fault` (extra arguments `extra`): at least one
/// attempt and two retries meet the fault, and the run keeps the rest, naming `expect`.
fn server_fault_run(fault: Fault, extra: &[&str], expect: &str) {
    if !have_python() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let server = Double::start(d, &[]);
    let proxy = FaultProxy::start(server.port);
    let run = d.join("run");
    proxy.arm(fault, &run);
    let child = spawn_epi(d, &eval_args(&proxy.url(), &run, extra));
    let (code, _, err) = child.finish(180);
    assert!(proxy.faulted() >= 3, "one attempt and two retries at least");
    check_server_fault(&run, code, &err, expect);
}

#[test]
fn a_server_answering_500_mid_run_fails_those_queries_and_keeps_the_rest() {
    server_fault_run(
        Fault::Http500,
        &[],
        "HTTP 500: Context size has been exceeded.",
    );
}

#[test]
fn a_server_closing_mid_reply_fails_those_queries_and_keeps_the_rest() {
    server_fault_run(Fault::CutReply, &[], "error decoding response body");
}

#[test]
fn a_server_closing_mid_stream_fails_those_queries_and_keeps_the_rest() {
    server_fault_run(
        Fault::CutReply,
        &["--mode", "generative", "--stream"],
        "the stream broke",
    );
}

#[test]
fn a_hanging_server_times_out_those_queries_and_keeps_the_rest() {
    if !have_python() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let server = Double::start(d, &[]);
    let proxy = FaultProxy::start(server.port);
    let run = d.join("run");
    proxy.arm(Fault::Hold, &run);
    let child = spawn_epi(
        d,
        &eval_args(
            &proxy.url(),
            &run,
            &["-O", "timeout_s=2", "-O", "retries=0"],
        ),
    );
    // The query held after the first record goes to a server that no longer answers.
    proxy.wait_held();
    server.freeze();
    proxy.release();
    let (code, _, err) = child.finish(180);
    check_server_fault(&run, code, &err, "timed out");
}

// ---------------------------------------------------------------------------------------------
// A full disk
// ---------------------------------------------------------------------------------------------

#[test]
fn a_full_disk_stops_a_monitor_recording_naming_it_and_keeps_the_rows() {
    if !meter_ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let board = Board::start(d);
    let Some(disk) = SmallDisk::mount(d) else {
        return;
    };
    let rec = disk.path.join("trace.csv");
    let child = spawn_epi(
        d,
        &argv(&[
            "monitor",
            "--power",
            "epi-meter",
            "--port",
            board.port().to_str().unwrap(),
            "--record",
            rec.to_str().unwrap(),
            "--duration",
            "300",
        ]),
    );
    wait_rows(&rec, 10);
    let before = complete_lines(&rec).len() - 1;
    disk.fill();
    let (code, out, err) = child.finish(120);
    assert_eq!(code, Some(4), "{out}{err}");
    assert!(
        err.contains("No space left on device") && err.contains(rec.to_str().unwrap()),
        "{err}"
    );
    let rows = readable_rows(&rec, &d.join("complete.csv"));
    assert!(
        rows.len() >= before,
        "{} rows, {before} before the disk filled",
        rows.len()
    );
    let delivered = board.delivered_watts();
    for (i, (node, w)) in rows.iter().enumerate() {
        assert_eq!(
            (*node, *w),
            ((i % 4) as u32, delivered[i / 4][i % 4]),
            "row {i}"
        );
    }
    assert_eq!(sidecar(&rec).extra["complete"], false);
    assert_eq!(disk.stray_temporaries(), Vec::<String>::new());
}

#[test]
fn a_full_disk_stops_a_profile_run_at_once_naming_it() {
    if !meter_ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let board = Board::start(d);
    let server = Double::start(d, &[]);
    let proxy = FaultProxy::start(server.port);
    let Some(disk) = SmallDisk::mount(d) else {
        return;
    };
    let run = disk.path.join("run");
    let trace = run.join("power_trace.csv");
    // A long idle baseline: the disk fills during it.
    let mut child = spawn_epi(
        d,
        &profile_args(&board, &proxy.url(), &run, &["--idle", "120"]),
    );
    child.wait_running("the idle phase", 180, || {
        std::fs::read_to_string(run.join("run.log"))
            .ok()
            .filter(|l| l.contains("phase idle"))
            .map(|_| ())
    });
    let sent = proxy.forwarded();
    disk.fill();
    let (code, out, err) = child.finish(120);
    assert_eq!(code, Some(4), "{out}{err}");
    assert!(
        err.contains("No space left on device") && err.contains("power_trace.csv"),
        "{err}"
    );
    assert_eq!(
        proxy.forwarded(),
        sent,
        "the run stopped when the trace could not be written; no query was measured after"
    );
    // What was measured before is readable.
    assert!(!readable_rows(&trace, &d.join("complete.csv")).is_empty());
    assert!(records(&run).is_empty());
    assert_ne!(summary(&run)["status"], "complete");
    assert_eq!(sidecar(&trace).extra["complete"], false);
    assert_eq!(disk.stray_temporaries(), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// The Orchestrator's sshd
// ---------------------------------------------------------------------------------------------

#[test]
fn sshd_killed_mid_pull_leaves_the_rows_pulled_marked_incomplete_and_no_remote_process() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // One row per query: slow enough to be cut.
    let Some(orch) = Orchestrator::start(d, "batch_rows = 1\n") else {
        return;
    };
    {
        let db = rusqlite::Connection::open(&orch.db).unwrap();
        db.execute_batch("BEGIN").unwrap();
        // 2026-05-15T10:00:00Z, 10 Hz, 60 s, 2 nodes.
        for seq in 0..600i64 {
            insert_sample(&db, seq, 1_778_839_200_000 + seq * 100);
        }
        db.execute_batch("COMMIT").unwrap();
    }
    let out_csv = d.join("pulled.csv");
    let mut args = argv(&["trace", "pull"]);
    args.extend(orch.ssh_flags());
    args.extend(argv(&[
        "--start",
        "2026-05-15T10:00:00Z",
        "--end",
        "2026-05-15T10:01:00Z",
        "--output",
        out_csv.to_str().unwrap(),
    ]));
    let child = spawn_epi(d, &args);
    wait_for("pulled rows on disk", 120, || {
        (complete_lines(&out_csv).len() >= 3).then_some(())
    });
    let before = complete_lines(&out_csv).len() - 1;
    orch.kill_sshd();
    let (code, out, err) = child.finish(120);
    assert_eq!(code, Some(4), "{out}{err}");
    assert!(err.contains("rows pulled before the failure"), "{err}");
    let rows = readable_rows(&out_csv, &d.join("complete.csv"));
    assert!(
        rows.len() >= before && rows.len() < 1200,
        "{} rows",
        rows.len()
    );
    for (i, (node, w)) in rows.iter().enumerate() {
        let (seq, n) = ((i / 2) as i64, (i % 2) as i64);
        assert_eq!((*node, *w), (n as u32, seq_watts(seq, n)), "row {i}");
    }
    let meta = sidecar(&out_csv);
    assert_eq!(
        meta.extra["complete"], false,
        "a failed pull is not complete"
    );
    assert_eq!(meta.extra["rows"], rows.len() as u64);
    assert_none_left(orch.db.to_str().unwrap(), "remote sqlite3");
}

/// `(seq, node)` of each tailed row, checked to follow one another — (k, 0), (k, 1), (k + 1, 0)
/// … from wherever the tail began — with no sample lost or repeated.
fn tailed_samples(rows: &[(u32, f64)]) -> Vec<(i64, u32)> {
    let v: Vec<(i64, u32)> = rows
        .iter()
        .map(|&(node, w)| {
            let seq = ((w - 10.0 - node as f64) / 0.001).round() as i64;
            assert_eq!(w, seq_watts(seq, node as i64), "row of node {node}");
            (seq, node)
        })
        .collect();
    for p in v.windows(2) {
        let next = if p[0].1 == 0 {
            (p[0].0, 1)
        } else {
            (p[0].0 + 1, 0)
        };
        assert_eq!(p[1], next, "no sample lost or repeated");
    }
    v
}

/// The `seq` of the last complete row of a tailed recording.
fn last_tailed_seq(rec: &Path) -> Option<i64> {
    let lines = complete_lines(rec);
    let f: Vec<&str> = lines.last()?.split(',').collect();
    let (node, w): (f64, f64) = (f.get(1)?.parse().ok()?, f.get(2)?.parse().ok()?);
    Some(((w - 10.0 - node) / 0.001).round() as i64)
}

fn monitor_host_args(orch: &Orchestrator, rec: &Path) -> Vec<String> {
    let mut args = argv(&["monitor"]);
    args.extend(orch.ssh_flags());
    args.extend(argv(&["--record", rec.to_str().unwrap()]));
    args
}

#[test]
fn sshd_killed_mid_tail_and_back_loses_no_row_and_leaves_no_remote_process() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let Some(orch) = Orchestrator::start(d, "poll_interval_ms = 100\n") else {
        return;
    };
    let logger = MeterLogger::start(&orch.db);
    let rec = d.join("tail.csv");
    let mut child = spawn_epi(d, &monitor_host_args(&orch, &rec));
    child.wait_running("20 tailed rows", 120, || {
        (complete_lines(&rec).len() > 20).then_some(())
    });
    orch.kill_sshd();
    // While it is down: no remote process is left, and the meter goes on being logged.
    assert_none_left(orch.db.to_str().unwrap(), "remote sqlite3");
    let at_kill = logger.written();
    wait_for("rows logged while sshd is down", 60, || {
        (logger.written() >= at_kill + 10).then_some(())
    });
    orch.restart_sshd();
    let at_restart = logger.written();
    child.wait_running("the samples logged meanwhile in the recording", 120, || {
        last_tailed_seq(&rec)
            .filter(|&s| s >= at_restart as i64)
            .map(|_| ())
    });
    signal_pid(child.pid(), libc::SIGINT);
    let (code, out, err) = child.finish(60);
    logger.stop();
    assert_eq!(code, Some(130), "{out}{err}");
    assert!(
        err.contains("disconnected") && err.contains("reconnected"),
        "the message names the fault: {err}"
    );
    // Every sample logged from the first one tailed is in the recording once, in order.
    let rows = readable_rows(&rec, &d.join("complete.csv"));
    let samples = tailed_samples(&rows);
    // The samples logged while sshd was down are among them.
    let (first, last) = (samples[0].0, samples[samples.len() - 1].0);
    assert!(
        first < at_kill as i64 && last >= at_restart as i64,
        "seq {first}..={last} vs down from {at_kill} to {at_restart}"
    );
    let meta = sidecar(&rec);
    assert_eq!(meta.stats.reconnects, 1, "{:?}", meta.stats);
    let kinds: Vec<&str> = meta.events.iter().map(|e| e.kind.as_str()).collect();
    assert!(
        kinds.contains(&"disconnected") && kinds.contains(&"reconnected"),
        "{kinds:?}"
    );
    orch.stop_restarted_sshd();
    assert_none_left(orch.db.to_str().unwrap(), "remote sqlite3");
}

// ---------------------------------------------------------------------------------------------
// SIGKILL of epi
// ---------------------------------------------------------------------------------------------

#[test]
fn sigkill_while_tailing_keeps_the_rows_and_leaves_no_remote_process() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let Some(orch) = Orchestrator::start(d, "poll_interval_ms = 100\n") else {
        return;
    };
    let logger = MeterLogger::start(&orch.db);
    let rec = d.join("tail.csv");
    let child = spawn_epi(d, &monitor_host_args(&orch, &rec));
    wait_for("20 tailed rows", 120, || {
        (complete_lines(&rec).len() > 20).then_some(())
    });
    let before = complete_lines(&rec).len() - 1;
    signal_pid(child.pid(), libc::SIGKILL);
    let (code, _, _) = child.finish(60);
    logger.stop();
    assert_eq!(code, None, "killed by a signal");
    let rows = readable_rows(&rec, &d.join("complete.csv"));
    assert!(rows.len() >= before);
    tailed_samples(&rows);
    assert_eq!(sidecar(&rec).extra["complete"], false);
    // The remote commands die with the connection.
    assert_none_left(orch.db.to_str().unwrap(), "remote sqlite3");
}

#[test]
fn sigkill_while_logging_to_the_results_database_loses_nothing_committed() {
    if !have_tool("sqlite3") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let example: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("examples/data/submission/epi_001.json"))
            .unwrap(),
    )
    .unwrap();
    let mut files = Vec::new();
    for i in 0..3000 {
        let mut r = example.clone();
        r["run_metadata"]["run_id"] = Value::from(format!("fault-{i:05}"));
        let f = d.join(format!("r{i:05}.json"));
        std::fs::write(&f, serde_json::to_vec(&r).unwrap()).unwrap();
        files.push(f.display().to_string());
    }
    let count = |db: &Path| -> i64 {
        let c = rusqlite::Connection::open(db).unwrap();
        let ok: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok", "the database is intact");
        c.query_row("SELECT count(*) FROM results", [], |r| r.get(0))
            .unwrap()
    };
    // Until a kill lands while the transaction logging the 3000 results is open (it is stopped,
    // looked at, and let go on, so what decides is the state seen, not a speed).
    for attempt in 0..10 {
        let db = d.join(format!("results-{attempt}.db"));
        let first = epi(
            d,
            &["results", "log", &files[0], "--db", db.to_str().unwrap()],
        );
        assert!(first.status.success(), "{}", stderr(&first));
        let mut args = argv(&["results", "log", "--tags", "fault", "--db"]);
        args.push(db.display().to_string());
        args.extend(files[1..].iter().cloned());
        let mut child = spawn_epi(d, &args);
        let mut killed_open = false;
        loop {
            if child.child().try_wait().unwrap().is_some() {
                break;
            }
            signal_pid(child.pid(), libc::SIGSTOP);
            if wal_has_uncommitted_frames(&db) {
                signal_pid(child.pid(), libc::SIGKILL);
                killed_open = true;
                break;
            }
            signal_pid(child.pid(), libc::SIGCONT);
            std::thread::sleep(Duration::from_millis(2));
        }
        let (code, out, err) = child.finish(60);
        if !killed_open {
            // It committed first: everything is there; try again with a fresh database.
            assert_eq!(code, Some(0), "{out}{err}");
            assert_eq!(count(&db), 3000);
            continue;
        }
        assert_eq!(code, None, "killed by a signal");
        // All or nothing: the open transaction is gone, what was committed before is there.
        assert_eq!(count(&db), 1);
        let l = epi(
            d,
            &["results", "list", "--json", "--db", db.to_str().unwrap()],
        );
        assert!(l.status.success(), "{}", stderr(&l));
        let rows: Value = serde_json::from_str(&stdout(&l)).unwrap();
        assert_eq!(rows.as_array().unwrap().len(), 1);
        // And the same log goes through afterwards.
        let again = epi(d, &args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(again.status.success(), "{}", stderr(&again));
        assert_eq!(count(&db), 3000);
        return;
    }
    panic!("in 10 attempts the kill never landed while the transaction was open");
}

// ---------------------------------------------------------------------------------------------
// distributed-llama: dllama-api dies
// ---------------------------------------------------------------------------------------------

#[test]
fn dllama_api_dying_mid_profile_keeps_what_was_measured_and_stops_the_cluster() {
    use std::os::unix::fs::PermissionsExt;
    if !meter_ready() || !have_tool("sshd") || !have_tool("ssh-keygen") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let sshd = Sshd::start().expect("start sshd");
    // The distributed-llama double installed as `dllama` and `dllama-api` on the "nodes".
    let cluster = d.join("cluster");
    std::fs::create_dir_all(&cluster).unwrap();
    for (name, mode) in [("dllama", ""), ("dllama-api", "api ")] {
        let p = cluster.join(name);
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\nexport DLLAMA_DOUBLE_LOG='{}'\nexport DLLAMA_DOUBLE_DELAY_MS=200\nexec python3 '{}' {mode}\"$@\"\n",
                cluster.join("api-requests.jsonl").display(),
                doubles().join("dllama.py").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(cluster.join("model.m"), b"weights").unwrap();
    std::fs::write(cluster.join("tokenizer.t"), b"tokenizer").unwrap();
    let (worker_port, api_port) = (free_port(), free_port());
    let board = Board::start(d);
    let run = d.join("run");
    let p = |n: &str| cluster.join(n).display().to_string();
    let args = argv(&[
        "profile",
        "--power",
        "epi-meter",
        "--port",
        board.port().to_str().unwrap(),
        "--backend",
        "distributed-llama",
        "--hosts",
        &format!("127.0.0.1,127.0.0.1:{worker_port}"),
        "--ssh-user",
        sshd.user(),
        "--ssh-port",
        &sshd.port().to_string(),
        "--ssh-key",
        sshd.user_key().to_str().unwrap(),
        "--known-hosts",
        sshd.known_hosts().to_str().unwrap(),
        "--model",
        &p("model.m"),
        "-O",
        &format!("tokenizer={}", p("tokenizer.t")),
        "-O",
        &format!("dllama={}", p("dllama")),
        "-O",
        &format!("dllama_api={}", p("dllama-api")),
        "-O",
        &format!("api_port={api_port}"),
        "-O",
        "version=\"0.16.4\"",
        "-O",
        "stop_grace_s=2",
        "--suite",
        "arc-challenge",
        "--limit",
        "5",
        "--data-dir",
        &data_dir(),
        "--warmup",
        "0",
        "--idle",
        "0",
        "--repetitions",
        "1",
        "--output",
        run.to_str().unwrap(),
    ]);
    let child = spawn_epi(d, &args);
    wait_first_record(&run);
    // Kill dllama-api the way the recordings show it dies: a lower-case content-length (its
    // one-at-a-time accept loop takes this request after the query in flight).
    let mut s = TcpStream::connect(("127.0.0.1", api_port)).unwrap();
    let body = r#"{"messages":[{"role":"user","content":"x"}]}"#;
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    let (code, out, err) = child.finish(180);
    assert_eq!(code, Some(4), "{out}{err}");
    assert!(
        err.contains("the server died or became unreachable"),
        "{err}"
    );
    // What was measured before is on disk, readable, attributed and marked failed.
    let recs = records(&run);
    assert!(
        recs.len() < 5 && recs.iter().any(|r| r.error.is_none()),
        "{recs:?}"
    );
    assert!(
        recs.iter().any(|r| r
            .error
            .as_deref()
            .is_some_and(|e| e.contains("dllama-api exited"))),
        "{recs:?}"
    );
    assert_eq!(arrow_rows(&run), recs.len());
    let s = summary(&run);
    assert_eq!(s["status"], "failed");
    check_additivity(&run);
    assert!(!readable_rows(&run.join("power_trace.csv"), &d.join("complete.csv")).is_empty());
    // Nothing is left on the cluster.
    assert!(closed_soon(worker_port), "the worker stopped");
    assert!(closed_soon(api_port), "dllama-api is gone");
    assert_none_left(
        &cluster.display().to_string(),
        "a distributed-llama process",
    );
}
