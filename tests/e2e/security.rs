//! Security properties of `docs/security.md`, end to end:
//!
//! - a planted API key (openai backend, `api_key_env`) reaches the server as a bearer token and
//!   nowhere else: not the command lines of `epi` or its children (read from `/proc` while the run
//!   is held mid-request by a gate in front of the server), not stdout/stderr, not the run
//!   directory, not the results database — on a successful run and on a failed one;
//! - hostile model paths, tokenizer and program file names reach the remote side through a real
//!   `sshd` as one literal argument each (the distributed-llama double opens them: the run only
//!   succeeds if they arrive intact), and nothing in them is executed; a hostile database path
//!   does the same for `epi trace pull`; hostile time strings are refused before anything runs;
//! - SQL is parameterised: hostile labels and tags round-trip through the results database;
//! - plugin libraries in a world-writable directory, or owned by another user, are refused.
//!
//! The servers are the repository's doubles (`plugins/backends/tests/doubles`), run for real.

use crate::support::{epi, epi_bin, have_tool, repo_root, stderr, stdout, wait_for, wait_output};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

fn doubles() -> PathBuf {
    repo_root().join("plugins/backends/tests/doubles")
}

fn data_dir() -> String {
    repo_root()
        .join("plugins/suites/testdata")
        .display()
        .to_string()
}

/// python3 with numpy (the doubles' language); in CI its absence is a failure.
fn have_python() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import numpy"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("EPI_REQUIRE_SYSTEM_TOOLS").is_none(),
            "python3 with numpy is required (EPI_REQUIRE_SYSTEM_TOOLS is set): run .ci/setup"
        );
        eprintln!("skipping: python3 with numpy is not available");
    }
    ok
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A secret no one could guess, different in every run.
fn planted_key() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("sk-epi-planted-{:x}{:x}", t, std::process::id())
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
            {
                out.push(p);
            }
        }
    }
    out
}

/// A process and all its descendants, from `/proc/*/stat`.
fn process_tree(root: u32) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may contain spaces and parentheses.
        let after = &stat[stat.rfind(')').unwrap_or(0) + 1..];
        if let Some(ppid) = after.split_whitespace().nth(1).and_then(|x| x.parse().ok()) {
            parent_of.push((pid, ppid));
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree
}

/// A TCP forwarder in front of a server that holds every connection's bytes until opened: the
/// test can look at `epi` while it is mid-request, without depending on timing.
struct Gate {
    port: u16,
    connections: Arc<AtomicUsize>,
    open: Arc<(Mutex<bool>, Condvar)>,
}

impl Gate {
    fn start(upstream: u16) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let open = Arc::new((Mutex::new(false), Condvar::new()));
        let (c, o) = (connections.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                c.fetch_add(1, Ordering::SeqCst);
                let o = o.clone();
                std::thread::spawn(move || {
                    {
                        let (m, cv) = &*o;
                        let mut g = m.lock().unwrap();
                        while !*g {
                            g = cv.wait(g).unwrap();
                        }
                    }
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                        return;
                    };
                    let pipe = |mut from: TcpStream, mut to: TcpStream| {
                        std::thread::spawn(move || {
                            let mut buf = [0u8; 16384];
                            while let Ok(n) = from.read(&mut buf) {
                                if n == 0 || to.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                            let _ = to.shutdown(std::net::Shutdown::Write);
                        })
                    };
                    pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                    pipe(server, client);
                });
            }
        });
        Gate {
            port,
            connections,
            open,
        }
    }

    fn open(&self) {
        let (m, cv) = &*self.open;
        *m.lock().unwrap() = true;
        cv.notify_all();
    }
}

/// The llama-server double (`--log` keeps every request, headers included); killed on drop.
struct LlamaServer {
    child: std::process::Child,
    port: u16,
    log: PathBuf,
}

impl LlamaServer {
    fn start(dir: &Path) -> LlamaServer {
        let log = dir.join("server-requests.jsonl");
        let mut child = Command::new("python3")
            .arg(doubles().join("llama_server.py"))
            .args(["--port", "0", "--log"])
            .arg(&log)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().rsplit(':').next().unwrap().parse().unwrap();
        LlamaServer { child, port, log }
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const KEY_VAR: &str = "EPI_TEST_PLANTED_API_KEY";

fn eval_args(url: &str, out: &Path) -> Vec<String> {
    [
        "eval",
        "--backend",
        "openai",
        "--url",
        url,
        "--suite",
        "arc-challenge,mmlu",
        "--limit",
        "4",
        "--data-dir",
        &data_dir(),
        "-S",
        "mmlu.subjects=[\"abstract_algebra\"]",
        "-O",
        &format!("api_key_env=\"{KEY_VAR}\""),
        "--output",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn a_planted_api_key_reaches_the_server_and_nothing_else() {
    if !have_python() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let key = planted_key();
    let server = LlamaServer::start(tmp.path());
    let gate = Gate::start(server.port);
    let run = tmp.path().join("run");
    let child = Command::new(epi_bin())
        .args(eval_args(&format!("http://127.0.0.1:{}", gate.port), &run))
        .current_dir(tmp.path())
        .env("NO_COLOR", "1")
        .env("XDG_CONFIG_HOME", tmp.path().join(".cfg"))
        .env(KEY_VAR, &key)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Mid-run (a request is held at the gate): the key is in epi's environment, where it was
    // put, and on no command line of epi or any process it started.
    wait_for("epi to connect to the server", 120, || {
        (gate.connections.load(Ordering::SeqCst) > 0).then_some(())
    });
    let environ = std::fs::read(format!("/proc/{}/environ", child.id())).unwrap();
    assert!(
        environ.windows(key.len()).any(|w| w == key.as_bytes()),
        "the planted key is not in epi's environment: the test looks at the wrong process"
    );
    let tree = process_tree(child.id());
    for pid in &tree {
        if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            assert!(
                !cmdline.windows(key.len()).any(|w| w == key.as_bytes()),
                "the key is on the command line of pid {pid}: {}",
                String::from_utf8_lossy(&cmdline)
            );
        }
    }
    gate.open();
    let o = wait_output(child, 300);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));

    // It was used: every request carried it as a bearer token.
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(
        log.contains(&format!("Bearer {key}")),
        "the key never reached the server: {log}"
    );
    for (what, text) in [("stdout", stdout(&o)), ("stderr", stderr(&o))] {
        assert!(!text.contains(&key), "the key is in {what}: {text}");
    }
    assert!(run.join("benchmark.json").is_file());
    assert_eq!(
        files_containing(&run, key.as_bytes()),
        Vec::<PathBuf>::new()
    );

    // On into the results database, with the key still in the environment.
    let trace = tmp.path().join("trace.csv");
    std::fs::write(
        &trace,
        "timestamp_ms,node_id,watts_rms,volts_rms,amps_rms,power_factor\n0,0,10,,,\n1000,0,12,,,\n",
    )
    .unwrap();
    let db = tmp.path().join("db");
    std::fs::create_dir(&db).unwrap();
    let o = Command::new(epi_bin())
        .args(["calculate", "--trace"])
        .arg(&trace)
        .arg("--benchmark")
        .arg(run.join("benchmark.json"))
        .arg("--db")
        .arg(db.join("results.db"))
        .args(["--output"])
        .arg(run.join("epi.json"))
        .current_dir(tmp.path())
        .env("NO_COLOR", "1")
        .env("XDG_CONFIG_HOME", tmp.path().join(".cfg"))
        .env(KEY_VAR, &key)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(db.join("results.db").is_file());
    assert_eq!(files_containing(&db, key.as_bytes()), Vec::<PathBuf>::new());
    assert_eq!(
        files_containing(&run, key.as_bytes()),
        Vec::<PathBuf>::new()
    );

    // A failed run (nothing listening) does not print it either.
    let run2 = tmp.path().join("run2");
    let o = Command::new(epi_bin())
        .args(eval_args(
            &format!("http://127.0.0.1:{}", free_port()),
            &run2,
        ))
        .current_dir(tmp.path())
        .env("NO_COLOR", "1")
        .env("XDG_CONFIG_HOME", tmp.path().join(".cfg"))
        .env(KEY_VAR, &key)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(4), "{}{}", stdout(&o), stderr(&o));
    let text = stdout(&o) + &stderr(&o);
    assert!(!text.contains(&key), "{text}");
    if run2.exists() {
        assert_eq!(
            files_containing(&run2, key.as_bytes()),
            Vec::<PathBuf>::new()
        );
    }
}

/// A name with everything a shell would act on. `marker` is what a command injection would
/// create (relative: in whatever directory the remote shell runs).
fn hostile(marker: &str) -> String {
    format!("it's \"q\" $(touch {marker}) `touch {marker}`; touch {marker} & $HOME * #")
}

fn marker_anywhere(marker: &str, dirs: &[&Path]) -> Vec<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    dirs.iter()
        .map(|d| d.to_path_buf())
        .chain(home)
        .chain(std::env::current_dir().ok())
        .map(|d| d.join(marker))
        .filter(|p| p.exists())
        .collect()
}

#[test]
fn hostile_model_and_program_paths_reach_the_remote_as_one_literal_argument() {
    if !have_tool("sshd") || !have_tool("ssh-keygen") || !have_python() {
        return;
    }
    let sshd = epi_framework::testing::Sshd::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let marker = format!("epi-pwned-{}", std::process::id());
    let dir = tmp.path().join(hostile(&marker));
    std::fs::create_dir(&dir).unwrap();
    let script = doubles().join("dllama.py");
    let log = tmp.path().join("api-requests.jsonl");
    // The programs, model and tokenizer live under the hostile directory, with hostile names of
    // their own; the double opens the model and tokenizer, so the run only works if each path
    // arrives byte for byte.
    let api = dir.join(format!("dllama-api {}", hostile(&marker)));
    let worker = dir.join("dllama");
    for (p, mode) in [(&api, "api "), (&worker, "")] {
        std::fs::write(
            p,
            format!(
                "#!/bin/sh\nexport DLLAMA_DOUBLE_LOG='{}'\nexec python3 '{}' {mode}\"$@\"\n",
                log.display(),
                script.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let model = dir.join(format!("model {}.m", hostile(&marker)));
    let tokenizer = dir.join("tok\ten\\izer 'x'.t");
    std::fs::write(&model, b"weights").unwrap();
    std::fs::write(&tokenizer, b"tokenizer").unwrap();
    let toml_str = |p: &Path| serde_json::to_string(p.to_str().unwrap()).unwrap();
    let out = tmp.path().join("run");
    let args: Vec<String> = [
        "eval",
        "--backend",
        "distributed-llama",
        "--suite",
        "arc-challenge",
        "--limit",
        "1",
        "--data-dir",
        &data_dir(),
        "--hosts",
        "127.0.0.1",
        "--ssh-user",
        sshd.user(),
        "--ssh-port",
        &sshd.port().to_string(),
        "--ssh-key",
        sshd.user_key().to_str().unwrap(),
        "--known-hosts",
        sshd.known_hosts().to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "-O",
        &format!("tokenizer={}", toml_str(&tokenizer)),
        "-O",
        &format!("dllama={}", toml_str(&worker)),
        "-O",
        &format!("dllama_api={}", toml_str(&api)),
        "-O",
        &format!("api_port={}", free_port()),
        "-O",
        "version=\"0.16.4\"",
        "-O",
        "stop_grace_s=2",
        "--output",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = epi(tmp.path(), &argv);
    assert!(
        o.status.success(),
        "{}{}\n{}",
        stdout(&o),
        stderr(&o),
        sshd.log()
    );
    assert!(out.join("records.jsonl").is_file());
    assert!(
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("/v1/chat/completions"),
        "the API server answered no question"
    );
    assert_eq!(
        marker_anywhere(&marker, &[tmp.path(), &dir, sshd.dir()]),
        Vec::<PathBuf>::new(),
        "a hostile name was executed"
    );
}

#[test]
fn hostile_time_strings_are_refused_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let marker = format!("epi-pwned-time-{}", std::process::id());
    for (flag, value) in [
        (
            "--start",
            format!("2026-05-15T10:00:00Z'; touch {marker}; '"),
        ),
        ("--start", format!("$(touch {marker})")),
        ("--end", format!("2026-05-15T10:30:00Z`touch {marker}`")),
        ("--end", "2026-05-15T10:30:00Z\nSELECT 1".to_string()),
    ] {
        let (start, end) = if flag == "--start" {
            (value.clone(), "2026-05-15T10:30:00Z".to_string())
        } else {
            ("2026-05-15T10:00:00Z".to_string(), value.clone())
        };
        // A host nobody can reach: the refusal must come before any connection is tried.
        let o = epi(
            tmp.path(),
            &[
                "trace",
                "pull",
                "--host",
                "host.invalid",
                "--user",
                "nobody",
                "--start",
                &start,
                "--end",
                &end,
                "--output",
                "t.csv",
            ],
        );
        assert_eq!(o.status.code(), Some(3), "{value:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.contains(flag) && !e.contains("host.invalid"),
            "{value:?}: {e}"
        );
        assert!(!tmp.path().join("t.csv").exists());
    }
    assert_eq!(
        marker_anywhere(&marker, &[tmp.path()]),
        Vec::<PathBuf>::new()
    );
}

#[test]
fn a_hostile_database_path_reaches_sqlite3_over_ssh_as_one_literal_argument() {
    if !have_tool("sshd") || !have_tool("ssh-keygen") || !have_tool("sqlite3") {
        return;
    }
    let sshd = epi_framework::testing::Sshd::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let marker = format!("epi-pwned-db-{}", std::process::id());
    let dir = tmp.path().join(hostile(&marker));
    std::fs::create_dir(&dir).unwrap();
    let db_path = dir.join(format!("telemetry {}.db", hostile(&marker)));
    // 2026-05-15T10:00:00Z, 10 Hz, one node, 20 s.
    const T0: i64 = 1_778_839_200_000;
    {
        let db = rusqlite::Connection::open(&db_path).unwrap();
        db.execute_batch(
            "CREATE TABLE epi_power_traces (id INTEGER PRIMARY KEY, ts_utc_ms INTEGER NOT NULL,
             meter_t_ms INTEGER, seq INTEGER, node_id INTEGER NOT NULL, watts_rms REAL NOT NULL,
             volts_rms REAL, amps_rms REAL, power_factor REAL, wh REAL);",
        )
        .unwrap();
        for seq in 0..200i64 {
            db.execute(
                "INSERT INTO epi_power_traces (ts_utc_ms, meter_t_ms, seq, node_id, watts_rms, volts_rms, amps_rms, power_factor, wh)
                 VALUES (?1, ?2, ?3, 0, 10.0, 121.0, 0.1, 0.99, ?4)",
                rusqlite::params![T0 + seq * 100, seq * 100, seq + 1, seq as f64 / 3600.0],
            )
            .unwrap();
        }
    }
    std::fs::write(
        tmp.path().join("epi-bench.toml"),
        format!(
            "[orchestrator]\ndb_path = {}\npower_table = \"epi_power_traces\"\n",
            serde_json::to_string(db_path.to_str().unwrap()).unwrap()
        ),
    )
    .unwrap();
    let o = epi(
        tmp.path(),
        &[
            "trace",
            "pull",
            "--host",
            sshd.host(),
            "--user",
            sshd.user(),
            "--ssh-port",
            &sshd.port().to_string(),
            "--identity",
            sshd.user_key().to_str().unwrap(),
            "--known-hosts",
            sshd.known_hosts().to_str().unwrap(),
            "--start",
            "2026-05-15T10:00:00Z",
            "--end",
            "2026-05-15T10:00:10Z",
            "--output",
            "t.csv",
        ],
    );
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let rows = std::fs::read_to_string(tmp.path().join("t.csv"))
        .unwrap()
        .lines()
        .count()
        - 1;
    assert_eq!(rows, 100, "the window's rows, read from the hostile path");
    assert_eq!(
        marker_anywhere(&marker, &[tmp.path(), &dir, sshd.dir()]),
        Vec::<PathBuf>::new()
    );
}

#[test]
fn hostile_labels_and_tags_round_trip_through_the_results_database() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("t.csv"),
        "timestamp_ms,node_id,watts_rms,volts_rms,amps_rms,power_factor\n0,0,10,,,\n1000,0,12,,,\n",
    )
    .unwrap();
    let model = "m'); DROP TABLE results; --";
    std::fs::write(
        tmp.path().join("b.json"),
        serde_json::json!({
            "model": model, "quantization": "q\" OR 1=1 --", "surgery": "none",
            "benchmarks": {"mmlu_5shot": 0.5}, "total_tokens": 10, "duration_seconds": 1.0,
            "timestamp_utc": "2026-05-15T10:00:00Z", "hardware": "h", "inference_engine": "e",
            "inference_engine_version": "1"
        })
        .to_string(),
    )
    .unwrap();
    let tags = "x' OR '1'='1,%,_";
    let o = epi(
        tmp.path(),
        &[
            "calculate",
            "--trace",
            "t.csv",
            "--benchmark",
            "b.json",
            "--db",
            "r.db",
            "--tags",
            tags,
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // A filter that would match everything if it were pasted into SQL matches nothing.
    let o = epi(
        tmp.path(),
        &[
            "results",
            "list",
            "--json",
            "--db",
            "r.db",
            "--tag",
            "' OR '1'='1",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().map(|a| a.len()), Some(0), "{v}");
    let o = epi(
        tmp.path(),
        &[
            "results",
            "list",
            "--json",
            "--db",
            "r.db",
            "--tag",
            "x' OR '1'='1",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{v}");
    assert_eq!(rows[0]["model"], model);
    let text = rows[0].to_string();
    for t in ["x' OR '1'='1", "%", "_"] {
        assert!(
            text.contains(&serde_json::to_string(t).unwrap()),
            "{t}: {text}"
        );
    }
}

/// Compiles a minimal epi-bench plugin (ABI v1) in C.
fn c_plugin(dir: &Path) -> PathBuf {
    let c = dir.join("p.c");
    std::fs::write(
        &c,
        r#"#include <stdint.h>
#include <stddef.h>
static void *create(const char *c, char **e) { return NULL; }
static char *open_(void *i, char **e) { return NULL; }
static char *next(void *i, uint32_t t, char **e) { return NULL; }
static void close_(void *i) {}
static void free_s(char *s) {}
typedef struct {
  uint32_t abi_version; uint32_t kind; const char *key; const char *description;
  void *(*create)(const char *, char **); char *(*open)(void *, char **);
  char *(*next_batch)(void *, uint32_t, char **); void (*close)(void *); void (*free_string)(char *);
} EpiPluginV1;
const uint32_t epi_plugin_abi_version = 1;
const EpiPluginV1 epi_plugin_v1 = { 1, 1, "sec-meter", "a plugin for the location checks", create, open_, next, close_, free_s };
"#,
    )
    .unwrap();
    let so = dir.join("libsec.so");
    let st = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(&c)
        .status()
        .unwrap();
    assert!(st.success(), "cc failed");
    so
}

#[test]
fn plugins_others_could_have_written_are_refused() {
    if !have_tool("cc") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let safe = tmp.path().join("safe");
    std::fs::create_dir(&safe).unwrap();
    std::fs::set_permissions(&safe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let so = c_plugin(&safe);
    let list = |lib: &Path| {
        epi(
            tmp.path(),
            &["--plugin", lib.to_str().unwrap(), "list", "plugins"],
        )
    };

    let o = list(&so);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("sec-meter"), "{}", stdout(&o));

    let open = tmp.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let so2 = open.join("libsec.so");
    std::fs::copy(&so, &so2).unwrap();
    let o = list(&so2);
    assert_eq!(o.status.code(), Some(4), "{}", stdout(&o));
    let e = stderr(&o);
    assert!(
        e.contains("writable by every user") && e.contains("refused, not loaded"),
        "{e}"
    );

    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var_os("EPI_REQUIRE_SYSTEM_TOOLS").is_none(),
            "the ownership check needs root to chown (EPI_REQUIRE_SYSTEM_TOOLS is set)"
        );
        eprintln!("skipping the ownership case: needs root");
        return;
    }
    std::os::unix::fs::chown(&so, Some(65534), Some(65534)).unwrap();
    let o = list(&so);
    assert_eq!(o.status.code(), Some(4), "{}", stdout(&o));
    let e = stderr(&o);
    assert!(
        e.contains("owned by uid 65534") && e.contains("not loaded"),
        "{e}"
    );
}
