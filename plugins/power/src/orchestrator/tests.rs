//! Tests of the `orchestrator` source: configuration checks, row parsing, and end to end against
//! a real `sshd` on 127.0.0.1 and a real SQLite database in WAL mode being written while it is read.

use super::query::{parse_row, DbRow};
use super::*;
use epi_core::sample::{EnergyMethod, PowerSample};
use epi_ssh::testing::{require_tool, Sshd};
use rusqlite::Connection;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const SCHEMA: &str = "CREATE TABLE epi_power_traces (
  id            INTEGER PRIMARY KEY,
  ts_utc_ms     INTEGER NOT NULL,
  meter_t_ms    INTEGER,
  seq           INTEGER,
  node_id       INTEGER NOT NULL,
  watts_rms     REAL NOT NULL,
  volts_rms     REAL,
  amps_rms      REAL,
  power_factor  REAL,
  wh            REAL
);
CREATE INDEX epi_power_traces_ts ON epi_power_traces(ts_utc_ms);";

fn base_config() -> Value {
    json!({"host": "orchestrator.local", "user": "pi"})
}

fn config_error(v: Value) -> String {
    match build(&v) {
        Ok(_) => panic!("accepted {v}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn configuration_is_checked_without_io() {
    // The defaults of the spec.
    let c: OrchestratorConfig = parse_config(KEY, &base_config()).unwrap();
    assert_eq!(c.port, 22);
    assert_eq!(c.db_path, "/home/pi/factory/telemetry.db");
    assert_eq!(c.power_table, "epi_power_traces");
    assert_eq!(c.columns.ts_utc_ms, "ts_utc_ms");
    assert_eq!(c.mode, Mode::Tail);
    assert!(build(&base_config()).is_ok());

    let mut v = base_config();
    v["hots"] = json!("x");
    assert!(config_error(v).contains("unknown field `hots`"));
    let mut v = base_config();
    v["columns"] = json!({"watt": "w"});
    assert!(config_error(v).contains("unknown field `watt`"));
}

#[test]
fn injection_attempts_in_names_and_paths_are_refused() {
    for table in [
        "epi_power_traces; DROP TABLE epi_power_traces",
        "t\"",
        "a b",
        "1abc",
        "",
        "t--",
        "x)",
    ] {
        let mut v = base_config();
        v["power_table"] = json!(table);
        let e = config_error(v);
        assert!(
            e.contains("power_table") && e.contains("not a plain SQL identifier"),
            "{table:?}: {e}"
        );
    }
    let mut v = base_config();
    v["columns"] = json!({"watts_rms": "watts_rms FROM sqlite_master --"});
    assert!(config_error(v).contains("columns.watts_rms"));
    let mut v = base_config();
    v["columns"] = json!({"id": ""});
    assert!(config_error(v).contains("columns.id"));
    // An optional column may be absent.
    let mut v = base_config();
    v["columns"] = json!({"wh": "", "seq": ""});
    assert!(build(&v).is_ok());

    for (key, value) in [
        ("db_path", "/tmp/x.db\n.shell touch /tmp/pwned"),
        ("db_path", "-cmd"),
        ("db_path", ""),
        ("host", "-oProxyCommand=touch /tmp/pwned"),
        ("host", "a b"),
        ("user", "pi\nx"),
        ("sqlite3", "-x"),
    ] {
        let mut v = base_config();
        v[key] = json!(value);
        let e = config_error(v);
        assert!(e.contains(key), "{key}={value:?}: {e}");
    }
}

#[test]
fn windows_are_checked() {
    let mut v = base_config();
    v["mode"] = json!("window");
    assert!(config_error(v.clone()).contains("needs both `start` and `end`"));
    v["start"] = json!("2026-05-15T10:00:00Z");
    v["end"] = json!("2026-05-15T10:30:00Z");
    let c: OrchestratorConfig = parse_config(KEY, &v).unwrap();
    let plan = c.plan().unwrap();
    assert_eq!(plan.window, Some((1_778_839_200_000, 1_778_841_000_000)));
    v["end"] = json!("2026-05-15T09:00:00Z");
    assert!(config_error(v.clone()).contains("window is empty"));
    v["end"] = json!("2026-05-15 10:30");
    let e = config_error(v.clone());
    assert!(e.contains("end: expected an RFC 3339 time"), "{e}");
    v["end"] = json!(1_778_841_000_000i64);
    assert!(build(&v).is_ok());
    let mut t = base_config();
    t["start"] = json!("2026-05-15T10:00:00Z");
    assert!(config_error(t).contains("only used with mode = \"window\""));
    assert_eq!(
        parse_utc_ms("2026-05-15T12:00:00.5+02:00").unwrap(),
        1_778_839_200_500
    );
    assert_eq!(format_utc_ms(1_778_839_200_500), "2026-05-15T10:00:00.500Z");
}

#[test]
fn rows_parse_and_bad_rows_say_why() {
    let ok = parse_row(&[
        "7",
        "1700000000123",
        "2",
        "1.23456789012345673488e+01",
        "121.3",
        "N",
        "0.99",
        "3.5",
        "104200",
        "1042",
    ])
    .unwrap();
    assert_eq!(ok.id, 7);
    assert_eq!(ok.node, 2);
    assert_eq!(ok.watts, 12.345678901234567);
    assert_eq!(ok.amps, None);
    assert_eq!(ok.seq, Some(1042));
    let bad = |cells: [&str; 10]| parse_row(&cells).unwrap_err();
    assert!(
        bad(["1", "2", "3", "X", "N", "N", "N", "N", "N", "N"]).contains("watts_rms: not a number")
    );
    assert!(bad(["1", "2", "3", "-1.0", "N", "N", "N", "N", "N", "N"]).contains("watts_rms"));
    assert!(bad(["1", "N", "3", "1.0", "N", "N", "N", "N", "N", "N"]).contains("ts_utc_ms: NULL"));
    assert!(bad(["1", "2", "-3", "1.0", "N", "N", "N", "N", "N", "N"]).contains("node_id"));
    assert!(bad(["1", "2", "3", "1.0", "N", "N", "1.5", "N", "N", "N"]).contains("power_factor"));
    assert!(
        bad(["1", "2.5", "3", "1.0", "N", "N", "N", "N", "N", "N"]).contains("expected an integer")
    );
    assert!(parse_row(&["1"])
        .unwrap_err()
        .contains("expected 10 fields"));
}

// --- against a real sshd and a live SQLite database ------------------------------------------

/// One row as written, with what the source must report.
#[derive(Debug, Clone, PartialEq)]
struct Written {
    id: i64,
    ts: i64,
    node: u32,
    watts: f64,
    volts: f64,
    amps: f64,
    pf: f64,
    wh: f64,
}

fn create_db(path: &Path) -> Connection {
    let db = Connection::open(path).unwrap();
    db.pragma_update(None, "journal_mode", "WAL").unwrap();
    db.execute_batch(SCHEMA).unwrap();
    db
}

/// Inserts one sample line (four nodes) at `ts`; returns the rows.
fn insert_sample(db: &Connection, seq: u32, ts: i64) -> Vec<Written> {
    let mut rows = Vec::new();
    for node in 0..4u32 {
        let k = seq as f64 * 4.0 + node as f64;
        let w = Written {
            id: 0,
            ts: ts + node as i64,
            node,
            // Values with all 17 significant digits, to prove they arrive bit for bit.
            watts: 10.0 + k / 3.0 + 1e-9 * k,
            volts: 121.3 + k / 7.0,
            amps: 0.1 + k / 11.0,
            pf: 0.9 + (k % 10.0) / 100.0 + 1.0 / 3.0e5,
            wh: seq as f64 / 36.0 + node as f64 / 7.0,
        };
        db.execute(
            "INSERT INTO epi_power_traces (ts_utc_ms, meter_t_ms, seq, node_id, watts_rms, volts_rms, amps_rms, power_factor, wh)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            rusqlite::params![w.ts, seq as i64 * 100, seq as i64, node, w.watts, w.volts, w.amps, w.pf, w.wh],
        )
        .unwrap();
        rows.push(Written {
            id: db.last_insert_rowid(),
            ..w
        });
    }
    rows
}

fn sshd_or_skip() -> Option<Sshd> {
    if !require_tool("sshd") || !require_tool("ssh-keygen") || !require_tool("sqlite3") {
        return None;
    }
    Some(Sshd::start().expect("start sshd"))
}

fn config_for(sshd: &Sshd, db: &Path) -> Value {
    json!({
        "host": sshd.host(),
        "port": sshd.port(),
        "user": sshd.user(),
        "identity": sshd.user_key(),
        "known_hosts": sshd.known_hosts(),
        "db_path": db.to_str().unwrap(),
        "clock_probes": 4,
    })
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn drain(source: &mut Box<dyn PowerSource>) -> (Vec<PowerSample>, Vec<SourceEvent>) {
    let mut samples = Vec::new();
    let mut events = Vec::new();
    while let Some(b) = source.next_batch().await.unwrap() {
        samples.extend(b.samples);
        events.extend(b.events);
    }
    (samples, events)
}

#[test]
fn a_window_pull_returns_exactly_the_rows_of_the_window_while_the_database_is_written() {
    let Some(sshd) = sshd_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    // A directory name a shell would love to interpret.
    let sub = dir.path().join("it's a $(dir) ; `x`");
    std::fs::create_dir_all(&sub).unwrap();
    let path = sub.join("telemetry.db");
    let db = create_db(&path);
    let t0 = 1_778_839_200_000i64; // 2026-05-15T10:00:00Z
    let mut all = Vec::new();
    for seq in 0..600u32 {
        all.extend(insert_sample(&db, seq + 1, t0 - 5_000 + seq as i64 * 100));
    }
    // Keep writing (rows after the window) the whole time the pull runs.
    let stop = Arc::new(AtomicBool::new(false));
    let (writing_tx, writing) = std::sync::mpsc::channel();
    let writer = {
        let stop = stop.clone();
        let path = path.clone();
        std::thread::spawn(move || {
            let db = Connection::open(&path).unwrap();
            db.busy_timeout(Duration::from_secs(5)).unwrap();
            let mut seq = 601u32;
            let mut n = 0;
            // The pull starts once the writer is writing, however the threads are scheduled.
            insert_sample(&db, seq, t0 + 3_600_000 + seq as i64 * 100);
            seq += 1;
            n += 1;
            let _ = writing_tx.send(());
            while !stop.load(Ordering::Relaxed) {
                insert_sample(&db, seq, t0 + 3_600_000 + seq as i64 * 100);
                seq += 1;
                n += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            n
        })
    };
    writing
        .recv_timeout(Duration::from_secs(60))
        .expect("the writer started");
    let (start, end) = (t0, t0 + 40_000);
    let expected: Vec<&Written> = all.iter().filter(|w| w.ts >= start && w.ts < end).collect();
    assert_eq!(expected.len(), 1600);

    let mut v = config_for(&sshd, &path);
    v["mode"] = json!("window");
    v["start"] = json!("2026-05-15T10:00:00Z");
    v["end"] = json!("2026-05-15T10:00:40Z");
    v["batch_rows"] = json!(333);
    let (info, samples, events, stats, final_info) = rt().block_on(async {
        let mut s = build(&v).unwrap();
        let info = s
            .open()
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", sshd.log()));
        let (samples, events) = drain(&mut s).await;
        s.close().await.unwrap();
        (info, samples, events, s.stats(), s.current_info().unwrap())
    });
    stop.store(true, Ordering::Relaxed);
    assert!(
        writer.join().unwrap() > 0,
        "the writer wrote during the pull"
    );

    assert_eq!(samples.len(), expected.len());
    let offset = info.details["clock_offset_start"]["offset_ms"]
        .as_f64()
        .unwrap();
    for (s, w) in samples.iter().zip(&expected) {
        assert_eq!(s.source_t_ms, Some(w.ts as f64));
        assert_eq!(s.channel, w.node);
        assert_eq!(s.watts.to_bits(), w.watts.to_bits(), "{s:?} vs {w:?}");
        assert_eq!(s.volts.map(f64::to_bits), Some(w.volts.to_bits()));
        assert_eq!(s.amps.map(f64::to_bits), Some(w.amps.to_bits()));
        assert_eq!(s.power_factor.map(f64::to_bits), Some(w.pf.to_bits()));
        assert_eq!(s.energy_j, Some(w.wh * 3600.0));
        assert_eq!(s.t_ms, w.ts as f64 - offset - start as f64);
        assert!(s.host_utc_ms > 0);
    }
    assert_eq!(stats.samples, 1600);
    assert_eq!(stats.lost_samples, 0);
    assert_eq!(stats.bad_lines, 0);

    assert_eq!(info.source, "orchestrator");
    assert_eq!(info.method, EnergyMethod::Counter);
    assert!(info.replay);
    assert_eq!(info.channels.len(), 4);
    assert_eq!(info.details["rows_in_window"], json!(1600));
    assert_eq!(info.details["timeline_zero_utc_ms"], json!(start));
    let c = &info.details["clock_offset_start"];
    assert!(c["uncertainty_ms"].as_f64().unwrap() > 0.0);
    // Same machine: the true offset (0) lies within the measured bound.
    assert!(offset.abs() <= c["uncertainty_ms"].as_f64().unwrap() + 0.001);
    assert!(final_info.details.contains_key("clock_offset_end"));
    assert!(final_info.details.contains_key("clock_drift_ms"));
    let offsets: Vec<&SourceEvent> = events.iter().filter(|e| e.kind == "clock-offset").collect();
    assert_eq!(offsets.len(), 2, "{events:?}");
    assert!(offsets[0].detail.starts_with("start:") && offsets[1].detail.starts_with("end:"));
}

#[test]
fn tail_sees_rows_as_they_are_written_and_counts_gaps_and_reboots() {
    let Some(sshd) = sshd_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("telemetry.db");
    let db = create_db(&path);
    // Rows written before `open` are not delivered.
    for seq in 1..=10 {
        insert_sample(&db, seq, 1_000 + seq as i64 * 100);
    }
    let mut v = config_for(&sshd, &path);
    v["poll_interval_ms"] = json!(50);
    let written = Arc::new(std::sync::Mutex::new(Vec::<Written>::new()));
    let writer_done = Arc::new(AtomicBool::new(false));
    // The reader's progress, so the writer can hold back its later rows until the first ones have
    // been tailed: "rows arrive while the writer is still writing" then holds however slow the
    // machine is.
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    rt().block_on(async {
        let mut s = build(&v).unwrap();
        let info = s
            .open()
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", sshd.log()));
        assert!(!info.replay);
        assert_eq!(info.details["first_id_after"], json!(40));

        let writer = {
            let written = written.clone();
            let done = writer_done.clone();
            let seen = seen.clone();
            let path = path.clone();
            std::thread::spawn(move || {
                let db = Connection::open(&path).unwrap();
                db.busy_timeout(Duration::from_secs(5)).unwrap();
                let now = epi_framework_now_ms();
                // seq 11..=40, then a gap (41, 42 lost), then 43..=50, then a reboot at seq 1.
                let seqs: Vec<u32> = (11..=40).chain(43..=50).chain(1..=5).collect();
                for (i, seq) in seqs.into_iter().enumerate() {
                    if i == 5 {
                        // Wait (bounded) until the tail has delivered something.
                        let until = Instant::now() + Duration::from_secs(60);
                        while seen.load(Ordering::SeqCst) == 0 && Instant::now() < until {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                    let mut rows = insert_sample(&db, seq, now + i as i64 * 20);
                    written.lock().unwrap().append(&mut rows);
                    std::thread::sleep(Duration::from_millis(20));
                }
                done.store(true, Ordering::SeqCst);
            })
        };
        let mut samples: Vec<PowerSample> = Vec::new();
        let mut events = Vec::new();
        let mut first_seen_while_writing = None;
        let deadline = Instant::now() + Duration::from_secs(120);
        while samples.len() < 43 * 4 {
            assert!(
                Instant::now() < deadline,
                "only {} samples arrived",
                samples.len()
            );
            let b = s.next_batch().await.unwrap().expect("tail never ends");
            if !b.samples.is_empty() && first_seen_while_writing.is_none() {
                first_seen_while_writing = Some(!writer_done.load(Ordering::SeqCst));
            }
            samples.extend(b.samples);
            seen.store(samples.len(), Ordering::SeqCst);
            events.extend(b.events);
        }
        writer.join().unwrap();
        assert_eq!(
            first_seen_while_writing,
            Some(true),
            "rows arrived only after the writer finished"
        );
        let written = written.lock().unwrap().clone();
        assert_eq!(samples.len(), written.len());
        for (s, w) in samples.iter().zip(&written) {
            assert_eq!(s.source_t_ms, Some(w.ts as f64));
            assert_eq!(s.channel, w.node);
            assert_eq!(s.watts.to_bits(), w.watts.to_bits());
        }
        let stats = s.stats();
        assert_eq!(stats.lost_samples, 2 * 4, "{events:?}");
        assert_eq!(stats.reboots, 4, "{events:?}");
        assert!(events
            .iter()
            .any(|e| e.kind == "lost-samples" && e.detail.contains("seq 40 → 43")));
        // The counter stays continuous across the reboot: energy never goes back.
        for node in 0..4 {
            let e: Vec<f64> = samples
                .iter()
                .filter(|s| s.channel == node)
                .filter_map(|s| s.energy_j)
                .collect();
            assert!(e.windows(2).all(|p| p[1] >= p[0]), "node {node}: {e:?}");
        }
        s.close().await.unwrap();
        let info = s.current_info().unwrap();
        assert!(info.details.contains_key("clock_offset_end"));
    });
}

fn epi_framework_now_ms() -> i64 {
    crate::host_time::utc_now_ms()
}

#[test]
fn a_missing_table_or_column_or_database_is_a_clear_error_and_nothing_runs() {
    let Some(sshd) = sshd_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("telemetry.db");
    let db = create_db(&path);
    insert_sample(&db, 1, 1000);
    rt().block_on(async {
        let mut v = config_for(&sshd, &path);
        v["power_table"] = json!("power");
        let e = build(&v).unwrap().open().await.unwrap_err().to_string();
        assert!(e.contains("no table `power`") && e.contains("epi_power_traces"), "{e}");

        let mut v = config_for(&sshd, &path);
        v["columns"] = json!({"wh": "energy_wh"});
        let e = build(&v).unwrap().open().await.unwrap_err().to_string();
        assert!(e.contains("columns.wh") && e.contains("no column `energy_wh`"), "{e}");

        // A hostile database path is one argument: sqlite3 cannot open it, nothing is executed.
        let marker = dir.path().join("pwned");
        let hostile = format!("{}/x.db'; touch {}; echo '", dir.path().display(), marker.display());
        let mut v = config_for(&sshd, &path);
        v["db_path"] = json!(hostile);
        let e = build(&v).unwrap().open().await.unwrap_err().to_string();
        assert!(e.contains("unable to open database"), "{e}");
        let mut v = config_for(&sshd, &path);
        v["db_path"] = json!(format!("$(touch {})", marker.display()));
        assert!(build(&v).unwrap().open().await.is_err());
        assert!(!marker.exists(), "an injected command ran");

        let mut v = config_for(&sshd, &path);
        v["sqlite3"] = json!("/nonexistent/sqlite3");
        let e = build(&v).unwrap().open().await.unwrap_err().to_string();
        assert!(e.contains("cannot run `/nonexistent/sqlite3`"), "{e}");

        // Optional columns the table lacks can be switched off.
        db.execute_batch(
            "CREATE TABLE lean (id INTEGER PRIMARY KEY, ts_utc_ms INTEGER, node_id INTEGER, watts_rms REAL);
             INSERT INTO lean (ts_utc_ms, node_id, watts_rms) VALUES (5000, 1, 7.5), (5100, 1, 8.5);",
        )
        .unwrap();
        let mut v = config_for(&sshd, &path);
        v["power_table"] = json!("lean");
        v["columns"] = json!({"meter_t_ms": "", "seq": "", "volts_rms": "", "amps_rms": "", "power_factor": "", "wh": ""});
        v["mode"] = json!("window");
        v["start"] = json!(0);
        v["end"] = json!(10_000);
        let mut s = build(&v).unwrap();
        let info = s.open().await.unwrap();
        assert_eq!(info.method, EnergyMethod::Integrated);
        let (samples, _) = drain(&mut s).await;
        s.close().await.unwrap();
        assert_eq!(samples.iter().map(|s| s.watts).collect::<Vec<_>>(), vec![7.5, 8.5]);
        assert!(samples.iter().all(|s| s.energy_j.is_none() && s.volts.is_none()));
    });
    let text = std::fs::metadata(&path).unwrap();
    assert!(text.len() > 0);
}

#[test]
fn host_key_and_user_key_are_checked() {
    let Some(sshd) = sshd_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("telemetry.db");
    create_db(&path);
    rt().block_on(async {
        let mut v = config_for(&sshd, &path);
        v["known_hosts"] = json!(dir.path().join("empty_known_hosts"));
        let e = build(&v).unwrap().open().await.unwrap_err().to_string();
        assert!(e.contains("host key verification failed"), "{e}");
        assert!(e.contains(&sshd.host_key_fingerprint().unwrap()), "{e}");
        v["accept_new_host_key"] = json!(true);
        let mut s = build(&v).unwrap();
        s.open().await.unwrap();
        s.close().await.unwrap();

        let wrong = dir.path().join("wrong_key");
        epi_ssh::testing::generate_key(&wrong, epi_ssh::testing::KeyType::Ed25519).unwrap();
        let mut v = config_for(&sshd, &path);
        v["identity"] = json!(wrong);
        let e = build(&v).unwrap().open().await.unwrap_err().to_string();
        assert!(e.contains("authentication failed"), "{e}");
    });
}

fn row(id: i64, node: u32, seq: i64, meter_t: i64, wh: f64) -> Result<DbRow, String> {
    Ok(DbRow {
        id,
        ts: 1000 + id * 100,
        node,
        watts: 5.0,
        volts: None,
        amps: None,
        pf: None,
        wh: Some(wh),
        meter_t: Some(meter_t),
        seq: Some(seq),
    })
}

#[test]
fn sequence_gaps_wraps_reboots_and_counter_glitches() {
    let mut s = OrchestratorSource::new(parse_config(KEY, &base_config()).unwrap()).unwrap();
    let max = u32::MAX as i64;
    let b = s.rows_to_samples(vec![
        row(1, 0, max - 1, 100, 1.0),
        row(2, 0, max, 200, 2.0),
        row(3, 0, 0, 300, 3.0),   // u32 wrap: nothing lost, no reboot
        row(4, 0, 3, 400, 2.999), // seq 1, 2 lost; counter glitch: held
        row(5, 0, 4, 500, 4.0),
        row(6, 0, 1, 10, 0.5), // reboot: seq and t_ms back, counter restarts
        row(7, 0, 2, 20, 0.75),
        Err("watts_rms: not a number (text or blob)".into()),
    ]);
    let e: Vec<f64> = b.samples.iter().map(|x| x.energy_j.unwrap()).collect();
    assert_eq!(
        e,
        vec![
            3600.0,
            7200.0,
            10800.0,
            10800.0,
            14400.0,
            14400.0 + 1800.0,
            14400.0 + 2700.0
        ]
    );
    let st = s.stats();
    assert_eq!(st.lost_samples, 2);
    assert_eq!(st.reboots, 1);
    assert_eq!(st.bad_lines, 1);
    assert_eq!(st.samples, 7);
    let kinds: Vec<&str> = b.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        vec!["lost-samples", "counter-went-back", "reboot", "bad-line"],
        "{:?}",
        b.events
    );
    // Without a clock offset measured, t_ms is ts − zero.
    assert_eq!(b.samples[0].t_ms, 1100.0);
    assert_eq!(b.samples[0].source_t_ms, Some(1100.0));
}
