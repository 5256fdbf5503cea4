//! `epi trace pull` end to end: a real OpenSSH `sshd` on 127.0.0.1 (throw-away host and user
//! keys) and a real SQLite database in WAL mode that a writer thread keeps writing while the pull
//! reads it; the remote side is the `sqlite3` command line tool.

use crate::support::{epi, epi_bin, have_tool, stderr, stdout};
use epi_framework::testing::Sshd;
use epi_framework::trace::{TraceMeta, TraceReader};
use rusqlite::Connection;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SCHEMA: &str = "CREATE TABLE epi_power_traces (
  id INTEGER PRIMARY KEY, ts_utc_ms INTEGER NOT NULL, meter_t_ms INTEGER, seq INTEGER,
  node_id INTEGER NOT NULL, watts_rms REAL NOT NULL, volts_rms REAL, amps_rms REAL,
  power_factor REAL, wh REAL);
CREATE INDEX epi_power_traces_ts ON epi_power_traces(ts_utc_ms);";

/// 2026-05-15T10:00:00Z.
const T0: i64 = 1_778_839_200_000;

#[derive(Debug, Clone)]
struct Written {
    ts: i64,
    node: u32,
    watts: f64,
    wh: f64,
}

fn insert(db: &Connection, seq: i64, ts: i64) -> Vec<Written> {
    (0..4u32)
        .map(|node| {
            let k = (seq * 4 + node as i64) as f64;
            let w = Written { ts: ts + node as i64, node, watts: 8.0 + node as f64 * 2.0 + (k / 13.0).sin() + 1e-7 * k, wh: seq as f64 / 360.0 };
            db.execute(
                "INSERT INTO epi_power_traces (ts_utc_ms, meter_t_ms, seq, node_id, watts_rms, volts_rms, amps_rms, power_factor, wh)
                 VALUES (?1, ?2, ?3, ?4, ?5, 121.0, 0.1, 0.99, ?6)",
                rusqlite::params![w.ts, seq * 100, seq, node, w.watts, w.wh],
            )
            .unwrap();
            w
        })
        .collect()
}

/// A database with 10 Hz samples of 4 nodes from T0 − 10 s to T0 + 70 s.
fn make_db(path: &Path) -> Vec<Written> {
    let db = Connection::open(path).unwrap();
    db.pragma_update(None, "journal_mode", "WAL").unwrap();
    db.execute_batch(SCHEMA).unwrap();
    let mut all = Vec::new();
    for seq in 0..800i64 {
        all.extend(insert(&db, seq + 1, T0 - 10_000 + seq * 100));
    }
    all
}

/// Keeps inserting rows (far after the window) until stopped; returns how many samples it wrote.
fn spawn_writer(path: &Path, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let db = Connection::open(&path).unwrap();
        db.busy_timeout(Duration::from_secs(5)).unwrap();
        let mut seq = 10_000i64;
        while !stop.load(Ordering::Relaxed) {
            insert(&db, seq, T0 + 3_600_000 + seq * 100);
            seq += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        (seq - 10_000) as u64
    })
}

fn setup() -> Option<(Sshd, tempfile::TempDir)> {
    if !have_tool("sshd") || !have_tool("ssh-keygen") || !have_tool("sqlite3") {
        return None;
    }
    let sshd = Sshd::start().expect("start sshd");
    let dir = tempfile::tempdir().unwrap();
    Some((sshd, dir))
}

/// epi-bench.toml with the database settings in `[orchestrator]`; the flags give the rest.
fn write_config(dir: &Path, db: &Path, extra: &str) {
    std::fs::write(
        dir.join("epi-bench.toml"),
        format!(
            "[orchestrator]\ndb_path = {:?}\npower_table = \"epi_power_traces\"\n{extra}",
            db.to_str().unwrap()
        ),
    )
    .unwrap();
}

fn ssh_flags(sshd: &Sshd) -> Vec<String> {
    vec![
        "--host".into(),
        sshd.host().into(),
        "--user".into(),
        sshd.user().into(),
        "--ssh-port".into(),
        sshd.port().to_string(),
        "--identity".into(),
        sshd.user_key().display().to_string(),
        "--known-hosts".into(),
        sshd.known_hosts().display().to_string(),
    ]
}

fn run(dir: &Path, args: &[String]) -> std::process::Output {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    epi(dir, &a)
}

/// Trapezoidal energy per node of the rows, J (independent of any constant clock offset).
fn trapezoid_joules(rows: &[&Written]) -> f64 {
    let mut total = 0.0;
    for node in 0..4 {
        let r: Vec<&&Written> = rows.iter().filter(|w| w.node == node).collect();
        for p in r.windows(2) {
            total += 0.5 * (p[0].watts + p[1].watts) * (p[1].ts - p[0].ts) as f64 / 1000.0;
        }
    }
    total
}

#[test]
fn pull_writes_exactly_the_window_its_sidecar_and_the_energy() {
    let Some((sshd, dir)) = setup() else { return };
    let db = dir.path().join("telemetry.db");
    let all = make_db(&db);
    write_config(dir.path(), &db, "batch_rows = 500\n");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(&db, stop.clone());

    let out_csv = dir.path().join("out/pulled.csv");
    let mut args: Vec<String> = vec!["trace".into(), "pull".into()];
    args.extend(ssh_flags(&sshd));
    args.extend(
        [
            "--start",
            "2026-05-15T10:00:00Z",
            "--end",
            "2026-05-15T10:00:30.5Z",
            "--output",
            out_csv.to_str().unwrap(),
            "--json",
        ]
        .map(String::from),
    );
    let o = run(dir.path(), &args);
    stop.store(true, Ordering::Relaxed);
    assert!(
        writer.join().unwrap() > 0,
        "the writer wrote during the pull"
    );
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}\nsshd: {}",
        stdout(&o),
        stderr(&o),
        sshd.log()
    );

    let (start, end) = (T0, T0 + 30_500);
    let expected: Vec<&Written> = all.iter().filter(|w| w.ts >= start && w.ts < end).collect();
    assert_eq!(expected.len(), 305 * 4);

    // The CSV: exactly the rows of the window, in time order, values bit for bit.
    let mut reader = TraceReader::open(&out_csv).unwrap();
    let mut rows = Vec::new();
    while let Some((_, row)) = reader.next_row().unwrap() {
        rows.push(row);
    }
    assert_eq!(rows.len(), expected.len());
    let meta = TraceMeta::read_for(&out_csv).unwrap().expect("sidecar");
    let offset = meta.extra["clock_offset_start"]["offset_ms"]
        .as_f64()
        .unwrap();
    for (r, w) in rows.iter().zip(&expected) {
        assert_eq!(r.source_t_ms, Some(w.ts as f64));
        assert_eq!(r.node, w.node);
        assert_eq!(r.watts.to_bits(), w.watts.to_bits());
        assert_eq!(r.energy_j, Some(w.wh * 3600.0));
        assert_eq!(r.t_ms, w.ts as f64 - offset - start as f64);
        assert!(r.utc_ms.is_some());
    }

    // The sidecar: provenance, both clock offsets, the timeline zero.
    assert_eq!(meta.source.source, "orchestrator");
    assert_eq!(meta.timeline_zero_utc_ms, Some(start));
    assert_eq!(meta.stats.samples, expected.len() as u64);
    assert_eq!(meta.extra["complete"], Value::Bool(true));
    assert_eq!(meta.extra["window_start"], "2026-05-15T10:00:00.000Z");
    for key in ["clock_offset_start", "clock_offset_end"] {
        let c = &meta.extra[key];
        assert!(c["uncertainty_ms"].as_f64().unwrap() > 0.0, "{key}: {c}");
        // Same machine: the true offset, 0, lies within the measured bound.
        assert!(
            c["offset_ms"].as_f64().unwrap().abs() <= c["uncertainty_ms"].as_f64().unwrap() + 0.001,
            "{key}: {c}"
        );
    }
    assert!(
        meta.events
            .iter()
            .filter(|e| e.kind == "clock-offset")
            .count()
            == 2,
        "{:?}",
        meta.events
    );

    // The printed summary.
    let v: Value =
        serde_json::from_str(&stdout(&o)).unwrap_or_else(|e| panic!("{e}: {}", stdout(&o)));
    assert_eq!(v["rows"], expected.len() as u64);
    assert_eq!(v["nodes"], serde_json::json!([0, 1, 2, 3]));
    let want = trapezoid_joules(&expected);
    let got = v["total_joules"].as_f64().unwrap();
    assert!(
        (got - want).abs() <= 1e-9 * want,
        "energy {got} J, expected {want} J"
    );
    let counter = v["counter_joules"].as_f64().unwrap();
    let want_counter: f64 = (0..4)
        .map(|n| {
            let r: Vec<&&Written> = expected.iter().filter(|w| w.node == n).collect();
            (r[r.len() - 1].wh - r[0].wh) * 3600.0
        })
        .sum();
    assert!(
        (counter - want_counter).abs() < 1e-6,
        "{counter} vs {want_counter}"
    );
    assert_eq!(v["lost_samples"], 0);

    // The human-readable form says the same.
    let args2: Vec<String> = args.iter().filter(|a| *a != "--json").cloned().collect();
    let o = run(dir.path(), &args2);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for needle in [
        "pulled 1220 rows",
        "nodes",
        "4 (0, 1, 2, 3)",
        "clock offset",
        "start +",
        "energy",
        &format!("{:.3} J", want),
    ] {
        assert!(text.contains(needle), "`{needle}` missing in:\n{text}");
    }
}

#[test]
fn bad_times_and_missing_settings_are_usage_errors() {
    let Some((sshd, dir)) = setup() else { return };
    let out = dir.path().join("x.csv");
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "--start",
                "2026-05-15 10:00",
                "--end",
                "2026-05-15T10:30:00Z",
            ],
            "--start: expected an RFC 3339 time",
        ),
        (
            &["--start", "2026-05-15T10:00:00Z", "--end", "tomorrow"],
            "--end: expected an RFC 3339 time",
        ),
        (
            &[
                "--start",
                "2026-05-15T10:00:00Z",
                "--end",
                "2026-05-15T10:00:00Z",
            ],
            "the window is empty",
        ),
        (
            &[
                "--start",
                "2026-05-15T10:00:00Z",
                "--end",
                "2026-05-15T09:00:00Z",
            ],
            "is not after --start",
        ),
    ];
    for (times, want) in cases {
        let mut args: Vec<String> = vec!["trace".into(), "pull".into()];
        args.extend(ssh_flags(&sshd));
        args.extend(times.iter().map(|s| s.to_string()));
        args.extend(["--output".to_string(), out.display().to_string()]);
        let o = run(dir.path(), &args);
        assert_eq!(o.status.code(), Some(3), "{times:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{times:?}: {}", stderr(&o));
        assert!(!out.exists());
    }
    // No host anywhere.
    let o = epi(
        dir.path(),
        &[
            "trace",
            "pull",
            "--start",
            "2026-05-15T10:00:00Z",
            "--end",
            "2026-05-15T10:01:00Z",
            "--output",
            "x.csv",
        ],
    );
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).contains("missing field `host`"),
        "{}",
        stderr(&o)
    );
    // A setting the source does not know, or an injection attempt in a table name.
    write_config(dir.path(), Path::new("/tmp/t.db"), "power_tabel = \"x\"\n");
    let mut args: Vec<String> = vec!["trace".into(), "pull".into()];
    args.extend(ssh_flags(&sshd));
    args.extend(
        [
            "--start",
            "2026-05-15T10:00:00Z",
            "--end",
            "2026-05-15T10:01:00Z",
            "--output",
            "x.csv",
        ]
        .map(String::from),
    );
    let o = run(dir.path(), &args);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("unknown field `power_tabel`"),
        "{}",
        stderr(&o)
    );
    write_config(dir.path(), Path::new("/tmp/t.db"), "");
    let mut a2 = args.clone();
    a2.extend(["--set", "power_table=t; DROP TABLE t"].map(String::from));
    let o = run(dir.path(), &a2);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("not a plain SQL identifier"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn an_unknown_host_key_is_refused_until_accepted_and_an_empty_window_is_an_error() {
    let Some((sshd, dir)) = setup() else { return };
    let db = dir.path().join("telemetry.db");
    make_db(&db);
    write_config(dir.path(), &db, "");
    let known = dir.path().join("known_hosts");
    let mut args: Vec<String> = vec!["trace".into(), "pull".into()];
    args.extend(ssh_flags(&sshd));
    let kh = args.iter().position(|a| a == "--known-hosts").unwrap();
    args[kh + 1] = known.display().to_string();
    args.extend(
        [
            "--start",
            "2026-05-15T10:00:00Z",
            "--end",
            "2026-05-15T10:00:01Z",
            "--output",
            "k.csv",
        ]
        .map(String::from),
    );
    let o = run(dir.path(), &args);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("host key verification failed"), "{err}");
    assert!(
        err.contains(&sshd.host_key_fingerprint().unwrap()) && err.contains("ssh-ed25519"),
        "{err}"
    );
    assert!(!known.exists());

    let mut accept = args.clone();
    accept.push("--accept-new-host-key".into());
    let o = run(dir.path(), &accept);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read_to_string(&known)
        .unwrap()
        .contains(&sshd.host_public_key().unwrap()));
    // Now known: no option needed.
    let o = run(dir.path(), &args);
    assert!(o.status.success(), "{}", stderr(&o));

    // A window with no rows: an error, not a zero.
    let mut empty = args.clone();
    let s = empty.iter().position(|a| a == "--start").unwrap();
    empty[s + 1] = "2020-01-01T00:00:00Z".into();
    empty[s + 3] = "2020-01-01T01:00:00Z".into();
    let o = run(dir.path(), &empty);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no rows in [2020-01-01T00:00:00.000Z"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn an_interrupted_pull_leaves_what_it_pulled_readable_and_no_remote_process() {
    let Some((sshd, dir)) = setup() else { return };
    let db = dir.path().join("telemetry.db");
    make_db(&db);
    // One row per query: slow enough to interrupt.
    write_config(dir.path(), &db, "batch_rows = 1\n");
    let out_csv = dir.path().join("partial.csv");
    let mut args: Vec<String> = vec!["trace".into(), "pull".into()];
    args.extend(ssh_flags(&sshd));
    args.extend(
        [
            "--start",
            "2026-05-15T10:00:00Z",
            "--end",
            "2026-05-15T10:01:00Z",
            "--output",
            out_csv.to_str().unwrap(),
        ]
        .map(String::from),
    );
    let mut child = Command::new(epi_bin())
        .args(&args)
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .env("XDG_CONFIG_HOME", dir.path().join(".no-user-config"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until rows are on disk (complete lines: the header and at least one row), then Ctrl-C.
    // What is asserted afterwards does not depend on how many rows arrive before or after the
    // signal: every row seen on disk before it stays readable, and the sidecar counts what is there.
    let deadline = Instant::now() + Duration::from_secs(60);
    let rows_before_signal = loop {
        let complete_lines = std::fs::read(&out_csv)
            .map(|t| t.iter().filter(|&&b| b == b'\n').count())
            .unwrap_or(0);
        if complete_lines >= 2 {
            break complete_lines as u64 - 1;
        }
        assert!(Instant::now() < deadline, "no rows were written");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the pull ended before it could be interrupted"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "epi did not stop after Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    };
    let o = child.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(130), "{}", stderr(&o));
    assert!(stderr(&o).contains("interrupted"), "{}", stderr(&o));

    let mut reader = TraceReader::open(&out_csv).unwrap();
    let mut n = 0u64;
    while reader.next_row().unwrap().is_some() {
        n += 1;
    }
    assert!(
        n >= rows_before_signal,
        "{n} rows readable, {rows_before_signal} were on disk before Ctrl-C"
    );
    assert!(n < 2400, "{n} rows: the pull was not interrupted");
    let meta = TraceMeta::read_for(&out_csv).unwrap().expect("sidecar");
    assert_eq!(meta.extra["complete"], Value::Bool(false));
    assert_eq!(meta.extra["rows"], n);
    // No sqlite3 left running on the "remote".
    if have_tool("pgrep") {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let p = Command::new("pgrep")
                .args(["-f", db.to_str().unwrap()])
                .output()
                .unwrap();
            if p.stdout.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "remote processes still run: {}",
                String::from_utf8_lossy(&p.stdout)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
