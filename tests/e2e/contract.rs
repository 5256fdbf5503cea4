//! The contract tests: every registered power source, backend and suite — and the example
//! dynamic plugin — built from its own example configuration and driven through its trait's
//! life cycle by `epi_framework::contract` (`check_power_source`, `check_backend`,
//! `check_suite`). The registry is iterated, so a new plugin is checked without being named here.
//!
//! Where a plugin needs something real to talk to, the test provides it here and overrides the
//! example's address: a trace file (`csv`), a powercap tree (`rapl`), this machine's `/proc`
//! (`cpu-model`), the epi-meter emulator on a real pty (`epi-meter`), a real sshd and SQLite file
//! (`orchestrator`), the llama-server double (`openai`), the real distributed-llama behind a real
//! sshd (`distributed-llama`, where `EPI_DLLAMA_DIR` holds the prepared engine: always in CI), the
//! suites' bundled data. Without it — no GPU for `nvml` — the contract is that the plugin refuses
//! with an error naming itself. The printed table lists the outcome of every plugin.

use crate::support::{data_dir, free_port, have_python, have_tool, Emulator, LlamaServer};
use epi_framework::contract::{check_backend, check_power_source, check_suite, Outcome};
use epi_framework::registry::{PluginKind, Registry};
use epi_framework::testing::Sshd;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

fn registry() -> Registry {
    epi_power::link();
    epi_backends::link();
    epi_suites::link();
    Registry::builtin()
}

/// The example configuration of `key`, with `env` over it.
fn example(reg: &Registry, kind: PluginKind, key: &str, env: Value) -> Value {
    let e = reg.get(kind, key).unwrap();
    let mut v = e
        .settings()
        .map(|s| s.example().clone())
        .unwrap_or(Value::Null);
    if let (Value::Object(m), Value::Object(over)) = (&mut v, env) {
        for (k, x) in over {
            m.insert(k, x);
        }
    }
    v
}

fn table(kind: &str, rows: &[(String, Result<Outcome, String>)]) -> String {
    rows.iter()
        .map(|(k, r)| format!("  {kind} {k:<18} {r:?}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn fake_powercap(root: &Path) {
    for (dir, name, e) in [
        ("intel-rapl:0", "package-0", 1_000_000u64),
        ("intel-rapl:0:0", "dram", 5_000),
    ] {
        let d = root.join(dir);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("name"), format!("{name}\n")).unwrap();
        std::fs::write(d.join("energy_uj"), format!("{e}\n")).unwrap();
        std::fs::write(d.join("max_energy_range_uj"), "262143328850\n").unwrap();
    }
}

/// A window of 4 nodes at 10 Hz in the Orchestrator's table; returns (start, end) epoch ms.
fn orchestrator_db(path: &Path) -> (i64, i64) {
    let db = rusqlite::Connection::open(path).unwrap();
    db.execute_batch(
        "CREATE TABLE epi_power_traces (
           id INTEGER PRIMARY KEY, ts_utc_ms INTEGER NOT NULL, meter_t_ms INTEGER, seq INTEGER,
           node_id INTEGER NOT NULL, watts_rms REAL NOT NULL, volts_rms REAL, amps_rms REAL,
           power_factor REAL, wh REAL);",
    )
    .unwrap();
    let t0 = 1_778_839_200_000i64;
    for seq in 0..50i64 {
        for node in 0..4i64 {
            db.execute(
                "INSERT INTO epi_power_traces (ts_utc_ms, meter_t_ms, seq, node_id, watts_rms, volts_rms, amps_rms, power_factor, wh)
                 VALUES (?1, ?2, ?3, ?4, ?5, 230.0, 0.05, 0.99, NULL)",
                rusqlite::params![t0 + seq * 100 + node, seq * 100, seq, node, 8.0 + node as f64],
            )
            .unwrap();
        }
    }
    (t0, t0 + 5_000)
}

#[test]
fn every_power_source_keeps_the_power_source_contract() {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry();
    let trace = dir.path().join("trace.csv");
    std::fs::write(
        &trace,
        "timestamp_ms,node_id,watts_rms,volts_rms,amps_rms,power_factor\n\
         0,0,10,230,0.05,0.9\n0,1,20,230,0.1,0.9\n100,0,11,230,0.05,0.9\n100,1,21,230,0.1,0.9\n",
    )
    .unwrap();
    let powercap = dir.path().join("powercap");
    fake_powercap(&powercap);
    // A counter that moves, as a real one does (a frozen one is refused as not working).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticker = {
        let (stop, zone) = (stop.clone(), powercap.join("intel-rapl:0"));
        std::thread::spawn(move || {
            let mut uj = 1_000_000u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                uj += 2_000; // 2 mJ per 10 ms: 0.2 W
                let tmp = zone.join("energy_uj.tmp");
                std::fs::write(&tmp, format!("{uj}\n")).unwrap();
                std::fs::rename(&tmp, zone.join("energy_uj")).unwrap();
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let meter = (have_python() && have_tool("socat")).then(|| {
        Emulator::start(
            dir.path(),
            &[
                "--until-signal",
                "--duration",
                "3600",
                "--rate",
                "10",
                "--faults",
                "none",
            ],
        )
    });
    let sshd = (have_tool("sshd") && have_tool("ssh-keygen") && have_tool("sqlite3"))
        .then(|| Sshd::start().expect("start sshd"));
    let orchestrator = match &sshd {
        Some(sshd) => {
            let db = dir.path().join("telemetry.db");
            let (start, end) = orchestrator_db(&db);
            json!({"host": sshd.host(), "user": sshd.user(), "port": sshd.port(),
                   "identity": sshd.user_key(), "known_hosts": sshd.known_hosts(),
                   "db_path": db, "mode": "window", "start": start, "end": end})
        }
        None => json!({"host": "127.0.0.1", "port": free_port(), "timeout_s": 5.0}),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut rows = Vec::new();
    for key in reg.keys(PluginKind::Power) {
        let env = match key.as_str() {
            "csv" => json!({"path": trace}),
            "rapl" => json!({"sysfs_root": powercap, "domains": ["package"]}),
            "cpu-model" => json!({"programs": []}),
            "epi-meter" => match &meter {
                Some(m) => json!({"port": m.port}),
                None => json!({}),
            },
            "orchestrator" => orchestrator.clone(),
            _ => json!({}),
        };
        let config = example(&reg, PluginKind::Power, &key, env);
        let source = reg
            .power(&key, &config)
            .unwrap_or_else(|e| panic!("{key}: its example does not build: {e}"));
        let r = rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(120),
                check_power_source(&key, source, 3),
            )
            .await
            .unwrap_or_else(|_| Err(format!("{key}: no end within 120 s")))
        });
        rows.push((key, r));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    ticker.join().unwrap();
    eprintln!("power source contract:\n{}", table("power", &rows));
    for (k, r) in &rows {
        assert!(r.is_ok(), "{k}: {r:?}");
    }
    // What can run here must have run its whole life cycle.
    let mut must_run = vec!["csv", "rapl", "cpu-model"];
    if meter.is_some() {
        must_run.push("epi-meter");
    }
    if sshd.is_some() {
        must_run.push("orchestrator");
    }
    for k in must_run {
        let r = &rows.iter().find(|(key, _)| key == k).unwrap().1;
        assert!(matches!(r, Ok(Outcome::Ran(_))), "{k}: {r:?}");
    }
}

#[test]
fn the_example_dynamic_plugin_keeps_the_power_source_contract() {
    let Some(lib) = crate::dynamic_plugin::example_plugin() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sensor = dir.path().join("power1_input");
    std::fs::write(&sensor, "12500000\n").unwrap();
    let mut reg = Registry::builtin();
    epi_framework::dynamic::load_into(&mut reg, &lib).unwrap();
    let key = "hwmon";
    let source = reg
        .power(key, &json!({"path": sensor, "interval_ms": 20}))
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let r = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), check_power_source(key, source, 3))
            .await
            .unwrap_or_else(|_| Err("no end within 60 s".into()))
    });
    eprintln!("dynamic power source contract: {key} {r:?}");
    assert!(matches!(r, Ok(Outcome::Ran(_))), "{r:?}");
    // Not there: refused with its name.
    let source = reg
        .power(key, &json!({"path": dir.path().join("missing")}))
        .unwrap();
    let r = rt.block_on(check_power_source(key, source, 3));
    assert!(matches!(r, Ok(Outcome::Unavailable(_))), "{r:?}");
}

#[test]
fn every_backend_keeps_the_backend_contract() {
    if !have_python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = LlamaServer::start(dir.path());
    let reg = registry();
    // The real engine on one node behind a real sshd, when it is prepared (always in CI).
    let node = crate::dllama_real::real_engine().map(|engine| {
        let sshd = Sshd::start().expect("start sshd");
        let files = tempfile::tempdir().unwrap();
        for f in ["dllama", "dllama-api", "smollm2_q40.m", "smollm2.t"] {
            std::os::unix::fs::symlink(engine.join(f), files.path().join(f)).unwrap();
        }
        (sshd, files)
    });
    let dllama = match &node {
        Some((sshd, files)) => {
            let p = |f: &str| files.path().join(f);
            json!({"hosts": ["127.0.0.1"], "ssh_user": sshd.user(), "ssh_port": sshd.port(),
                   "ssh_key": sshd.user_key(), "known_hosts": sshd.known_hosts(),
                   "model": p("smollm2_q40.m"), "tokenizer": p("smollm2.t"),
                   "dllama": p("dllama"), "dllama_api": p("dllama-api"), "api_port": free_port(),
                   "nthreads": 2, "max_seq_len": 4096, "stop_grace_s": 5.0})
        }
        None => json!({"hosts": ["127.0.0.1"], "ssh_port": free_port(), "startup_timeout_s": 10.0}),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut rows = Vec::new();
    for key in reg.keys(PluginKind::Backend) {
        let env = match key.as_str() {
            "openai" => json!({"url": server.url()}),
            "distributed-llama" => dllama.clone(),
            _ => json!({}),
        };
        let config = example(&reg, PluginKind::Backend, &key, env);
        let backend = reg
            .backend(&key, &config)
            .unwrap_or_else(|e| panic!("{key}: its example does not build: {e}"));
        let r = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(600), check_backend(&key, backend))
                .await
                .unwrap_or_else(|_| Err(format!("{key}: no end within 600 s")))
        });
        rows.push((key, r));
    }
    eprintln!("backend contract:\n{}", table("backend", &rows));
    for (k, r) in &rows {
        assert!(r.is_ok(), "{k}: {r:?}");
    }
    let mut must_run = vec!["openai"];
    if node.is_some() {
        must_run.push("distributed-llama");
    }
    for k in must_run {
        let r = &rows.iter().find(|(key, _)| key == k).unwrap().1;
        assert!(matches!(r, Ok(Outcome::Ran(_))), "{k}: {r:?}");
    }
}

#[test]
fn every_suite_keeps_the_suite_contract() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "Write a haiku about power.\nName three primes.\n").unwrap();
    let data = data_dir();
    let synthetic = Path::new(&data).join("synthetic");
    let reg = registry();
    let mut rows = Vec::new();
    for key in reg.keys(PluginKind::Suite) {
        let env = match key.as_str() {
            "prompts" => json!({"file": prompts}),
            "mmlu" => json!({"data_dir": data, "limit": 3, "subjects": ["abstract_algebra"]}),
            "hellaswag" => json!({"data_dir": synthetic, "limit": 5}),
            _ => json!({"data_dir": data, "limit": 5}),
        };
        let config = example(&reg, PluginKind::Suite, &key, env);
        let suite = reg
            .suite(&key, &config)
            .unwrap_or_else(|e| panic!("{key}: its example does not build: {e}"));
        rows.push((key.clone(), check_suite(&key, suite.as_ref())));
    }
    eprintln!("suite contract:\n{}", table("suite", &rows));
    for (k, r) in &rows {
        assert!(matches!(r, Ok(Outcome::Ran(_))), "{k}: {r:?}");
    }
}
