//! The `distributed-llama` backend through a real `sshd` on 127.0.0.1, starting the
//! distributed-llama test double (`tests/doubles/dllama.py`) as `dllama worker` and `dllama-api`
//! (multi-node, the requests that kill the server, older output formats), and the real engine
//! (`EPI_DLLAMA_DIR`, prepared by `.ci/prepare-engines`: one node, as the model allows): start-up
//! without the unflushed readiness lines, progress, inference mode cut at `max_tokens`, and what a
//! TCP connection does to a real worker.

mod common;

use common::{doubles_dir, have_python};
use epi_backends::distributed_llama::{DllamaBackend, DllamaConfig, KEY};
use epi_core::backend::{
    BackendError, GenerateRequest, InferenceBackend, LoglikelihoodRequest, LoglikelihoodSupport,
    StartupProgress, TokenCountSource,
};
use epi_ssh::testing::{require_tool, Sshd};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

struct Cluster {
    sshd: Sshd,
    dir: tempfile::TempDir,
    log: PathBuf,
}

impl Cluster {
    /// A real sshd and the double installed as `dllama` and `dllama-api`, or `None` (skipped)
    /// when sshd or python3 is missing outside CI.
    fn new(env: &[(&str, &str)]) -> Option<Cluster> {
        if !require_tool("sshd") || !require_tool("ssh-keygen") || !have_python() {
            return None;
        }
        let sshd = Sshd::start().expect("start sshd");
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("api-requests.jsonl");
        let script = doubles_dir().join("dllama.py");
        let mut exports = format!("export DLLAMA_DOUBLE_LOG='{}'\n", log.display());
        for (k, v) in env {
            exports.push_str(&format!("export {k}='{v}'\n"));
        }
        for (name, mode) in [("dllama", ""), ("dllama-api", "api ")] {
            let p = dir.path().join(name);
            std::fs::write(
                &p,
                format!(
                    "#!/bin/sh\n{exports}exec python3 '{}' {mode}\"$@\"\n",
                    script.display()
                ),
            )
            .unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::write(dir.path().join("model.m"), b"not really weights").unwrap();
        std::fs::write(dir.path().join("tokenizer.t"), b"not really a tokenizer").unwrap();
        Some(Cluster { sshd, dir, log })
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn config(&self, hosts: Vec<String>, api_port: u16, extra: Value) -> DllamaConfig {
        let mut v = json!({
            "hosts": hosts,
            "ssh_user": self.sshd.user(),
            "ssh_port": self.sshd.port(),
            "ssh_key": self.sshd.user_key(),
            "known_hosts": self.sshd.known_hosts(),
            "dllama": self.path("dllama"),
            "dllama_api": self.path("dllama-api"),
            "model": self.path("model.m"),
            "tokenizer": self.path("tokenizer.t"),
            "nthreads": 2,
            "max_seq_len": 2048,
            "api_port": api_port,
            "version": "0.16.4 (test double)",
            "startup_timeout_s": 60,
            "timeout_s": 60,
            "stop_grace_s": 2,
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        epi_core::registry::parse_config(KEY, &v).unwrap()
    }

    fn api_requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_secs(1),
    )
    .is_ok()
}

/// Waits until nothing listens on `port` (remote processes are stopped asynchronously).
fn closed_soon(port: u16) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(60) {
        if !listening(port) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn question() -> GenerateRequest {
    GenerateRequest {
        prompt: "Which gas do plants take in?\nA. oxygen\nB. carbon dioxide\nC. helium\nD. neon\nAnswer:".into(),
        chat: true,
        max_tokens: 16,
        stop: vec![],
        stream: false,
    }
}

#[tokio::test]
async fn api_mode_runs_a_two_node_cluster_and_stops_everything() {
    let Some(c) = Cluster::new(&[]) else { return };
    let (worker_port, api_port) = (free_port(), free_port());
    let cfg = c.config(
        vec!["127.0.0.1".into(), format!("127.0.0.1:{worker_port}")],
        api_port,
        json!({}),
    );
    let mut b = DllamaBackend::new(cfg).unwrap();
    let info = b.start().await.unwrap();
    assert_eq!(info.backend, "distributed-llama");
    assert_eq!(info.server, "dllama-api");
    assert_eq!(info.version.as_deref(), Some("0.16.4 (test double)"));
    assert_eq!(
        info.model.as_deref(),
        Some("dllama_model_smollm2b_q40.m"),
        "from /v1/models"
    );
    assert_eq!(info.details["nodes"], 2);
    assert_eq!(
        info.details["layout"][1],
        json!({"role": "worker", "host": "127.0.0.1", "port": worker_port})
    );
    // The double, like the real engine, does not flush `Listening on` / `Server URL:` (nor the
    // model header before them) when not at a terminal: start-up did not need them.
    assert!(
        info.details.get("model_header").is_none(),
        "{:?}",
        info.details
    );
    assert!(info.details["startup_s"].as_f64().unwrap() > 0.0);
    assert_eq!(
        info.details["worker_startup_s"].as_array().unwrap().len(),
        1
    );
    let caps = b.capabilities();
    assert_eq!(caps.loglikelihood, LoglikelihoodSupport::None);
    assert!(!caps.completions && caps.chat);
    assert_eq!(caps.max_concurrency, 1);
    assert!(listening(api_port));

    // Non-streamed: usage, garbage index and empty finish_reason survived.
    let r = b.generate(&question()).await.unwrap();
    assert!(!r.text.is_empty());
    assert_eq!(r.token_count_source, TokenCountSource::Usage);
    assert!(r.tokens_in.unwrap() > 10 && r.tokens_out.unwrap() > 0);
    assert_eq!(r.finish_reason, None);
    // Streamed: no usage, [DONE] without a blank line, several tokens per event.
    let mut q = question();
    q.stream = true;
    q.prompt = "Tell me something about the weather today.".into();
    q.max_tokens = 12;
    let s = b.generate(&q).await.unwrap();
    assert!(s.ttft_s.is_some());
    assert_eq!(s.token_count_source, TokenCountSource::Unknown);
    assert_eq!(s.tokens_out, None);
    assert!(!s.text.is_empty());
    // The recorded stream (one message, 12 tokens).
    q.prompt = "What color is the sky?".into();
    let rec = b.generate(&q).await.unwrap();
    assert_eq!(
        rec.text,
        "The color of the day is a day of endless sunshine and"
    );
    // Chat completions only.
    let mut raw = question();
    raw.chat = false;
    assert!(matches!(
        b.generate(&raw).await.unwrap_err(),
        BackendError::Unsupported { .. }
    ));
    let e = b
        .loglikelihood(&LoglikelihoodRequest {
            context: "a".into(),
            continuations: vec![" b".into()],
        })
        .await
        .unwrap_err();
    assert!(matches!(e, BackendError::Unsupported { .. }), "{e}");

    // None of the requests that kill dllama-api was sent: it is alive, and the log shows why.
    assert!(listening(api_port));
    let reqs = c.api_requests();
    assert!(reqs.len() >= 4, "{reqs:?}");
    for r in &reqs {
        let names: Vec<&str> = r["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h[0].as_str().unwrap())
            .collect();
        assert!(
            !names
                .iter()
                .any(|n| n.eq_ignore_ascii_case("content-length") && *n != "Content-Length"),
            "{names:?}"
        );
        if r["method"] == "POST" {
            assert!(names.contains(&"Content-Length"), "{names:?}");
            let body: Value =
                serde_json::from_str(r["body"].as_str().unwrap()).expect("valid JSON");
            for m in body["messages"].as_array().unwrap() {
                assert!(m["content"].is_string());
            }
        }
    }

    b.stop().await.unwrap();
    assert!(closed_soon(api_port), "dllama-api still listens after stop");
    assert!(
        closed_soon(worker_port),
        "the worker still listens after stop"
    );
    b.stop().await.unwrap(); // twice is fine
}

/// Sends one request that kills dllama-api (a lower-case `content-length`).
fn kill_api(port: u16) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let body = r#"{"messages":[{"role":"user","content":"hi"}]}"#;
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(
        out.is_empty(),
        "the double replied: {}",
        String::from_utf8_lossy(&out)
    );
}

#[tokio::test]
async fn a_dead_api_server_is_reported_with_its_exit() {
    let Some(c) = Cluster::new(&[]) else { return };
    let api_port = free_port();
    let cfg = c.config(vec!["127.0.0.1".into()], api_port, json!({"retries": 1}));
    let mut b = DllamaBackend::new(cfg).unwrap();
    b.start().await.unwrap();
    b.generate(&question()).await.unwrap();
    kill_api(api_port);
    let t0 = Instant::now();
    let e = b.generate(&question()).await.unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(20));
    assert!(matches!(e, BackendError::Unavailable { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("did the server die"), "{msg}");
    assert!(msg.contains("dllama-api exited"), "{msg}");
    assert!(
        msg.contains("terminate called"),
        "the server's last output is quoted: {msg}"
    );
    b.stop().await.unwrap();
}

#[tokio::test]
async fn a_worker_that_cannot_start_fails_the_start_and_nothing_is_left() {
    let Some(c) = Cluster::new(&[]) else { return };
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let worker_port = busy.local_addr().unwrap().port();
    let api_port = free_port();
    let cfg = c.config(
        vec!["127.0.0.1".into(), format!("127.0.0.1:{worker_port}")],
        api_port,
        json!({}),
    );
    let mut b = DllamaBackend::new(cfg).unwrap();
    let e = b.start().await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, BackendError::Setup { .. }), "{msg}");
    assert!(
        msg.contains(&format!("dllama worker on 127.0.0.1:{worker_port}")),
        "{msg}"
    );
    assert!(
        msg.contains("Address already in use"),
        "the worker's error is quoted: {msg}"
    );
    assert!(!listening(api_port), "the root was never started");
    drop(busy);
}

#[tokio::test]
async fn a_root_that_fails_is_reported_and_the_workers_are_stopped() {
    let Some(c) = Cluster::new(&[]) else { return };
    let (worker_port, api_port) = (free_port(), free_port());
    let mut cfg = c.config(
        vec!["127.0.0.1".into(), format!("127.0.0.1:{worker_port}")],
        api_port,
        json!({}),
    );
    cfg.model = c.path("missing.m");
    let mut b = DllamaBackend::new(cfg).unwrap();
    let t0 = Instant::now();
    let e = b.start().await.unwrap_err().to_string();
    // dllama-api has no handler: the C++ runtime's message on stderr, then abort.
    assert!(e.contains("terminate called"), "{e}");
    assert!(e.contains("what():  Cannot open model file"), "{e}");
    assert!(
        t0.elapsed() < Duration::from_secs(50),
        "failed at once, not after the start-up limit"
    );
    assert!(closed_soon(worker_port), "the worker was stopped");
}

#[tokio::test]
async fn unknown_host_keys_are_refused() {
    let Some(c) = Cluster::new(&[]) else { return };
    let empty = c.dir.path().join("empty_known_hosts");
    std::fs::write(&empty, b"").unwrap();
    let mut cfg = c.config(vec!["127.0.0.1".into()], free_port(), json!({}));
    cfg.known_hosts = Some(empty);
    let mut b = DllamaBackend::new(cfg).unwrap();
    let e = b.start().await.unwrap_err().to_string();
    assert!(e.contains("host key verification failed"), "{e}");
}

#[tokio::test]
async fn inference_mode_parses_the_recorded_log() {
    let Some(c) = Cluster::new(&[]) else { return };
    let cfg = c.config(
        vec!["127.0.0.1".into()],
        free_port(),
        json!({"mode": "inference", "inference_steps": 40}),
    );
    let mut b = DllamaBackend::new(cfg).unwrap();
    let info = b.start().await.unwrap();
    assert_eq!(info.server, "dllama inference");
    assert!(b.capabilities().completions && !b.capabilities().chat);
    let r = b
        .generate(&GenerateRequest {
            prompt: "Question: What is the capital of France?\nAnswer:".into(),
            chat: false,
            max_tokens: 28,
            stop: vec![],
            stream: false,
        })
        .await
        .unwrap();
    assert_eq!((r.tokens_in, r.tokens_out), (Some(13), Some(28)));
    assert!(
        r.text
            .starts_with(" The answer to this question is: what is the capital of f"),
        "{:?}",
        r.text
    );
    assert!(r.text.contains("~\n~assistant\n"), "{:?}", r.text);
    // The same run asked for 17 tokens: stopped after the 17th (a newline piece), 17 counted.
    let cut = b
        .generate(&GenerateRequest {
            prompt: "Question: What is the capital of France?\nAnswer:".into(),
            chat: false,
            max_tokens: 17,
            stop: vec![],
            stream: false,
        })
        .await
        .unwrap();
    assert_eq!((cut.tokens_in, cut.tokens_out), (Some(13), Some(17)));
    assert!(r.text.starts_with(&cut.text), "{:?}", cut.text);
    assert!(cut.text.ends_with("france?~\n"), "{:?}", cut.text);
    b.stop().await.unwrap();
}

#[tokio::test]
async fn inference_mode_with_a_worker_and_an_older_output_format() {
    let Some(c) = Cluster::new(&[("DLLAMA_DOUBLE_FORMAT", "v0.12.0")]) else {
        return;
    };
    let worker_port = free_port();
    let cfg = c.config(
        vec!["127.0.0.1".into(), format!("127.0.0.1:{worker_port}")],
        free_port(),
        json!({"mode": "inference"}),
    );
    let mut b = DllamaBackend::new(cfg).unwrap();
    b.start().await.unwrap();
    let prompt = "Hello there, tell me a story";
    // Twice: each run is a new root, and the worker must listen again before the next one.
    for max_tokens in [5, 7] {
        let r = b
            .generate(&GenerateRequest {
                prompt: prompt.into(),
                chat: false,
                max_tokens,
                stop: vec![],
                stream: false,
            })
            .await
            .unwrap();
        // The double's tokenizer gives 7 pieces + BOS = 8 prompt tokens; --steps is 28 bytes + 1
        // + max_tokens, so it would generate 34 - 7 tokens: stopped at max_tokens instead.
        assert_eq!(r.tokens_in, Some(8));
        assert_eq!(r.tokens_out, Some(u64::from(max_tokens)));
        assert!(
            r.text.contains('\n'),
            "pieces with newlines are kept: {:?}",
            r.text
        );
    }
    b.stop().await.unwrap();
    assert!(closed_soon(worker_port));
}

#[tokio::test]
async fn start_up_is_polled_and_its_progress_published() {
    // The root "loads the model" for 2.5 s; its readiness line never arrives (not flushed).
    let Some(c) = Cluster::new(&[("DLLAMA_DOUBLE_LOAD_MS", "2500")]) else {
        return;
    };
    let (worker_port, api_port) = (free_port(), free_port());
    let cfg = c.config(
        vec!["127.0.0.1".into(), format!("127.0.0.1:{worker_port}")],
        api_port,
        json!({}),
    );
    let mut b = DllamaBackend::new(cfg).unwrap();
    let mut rx = b.startup_progress().expect("a progress channel");
    let seen = tokio::spawn(async move {
        let mut seen: Vec<StartupProgress> = Vec::new();
        while rx.changed().await.is_ok() {
            if let Some(p) = rx.borrow_and_update().clone() {
                seen.push(p);
            }
        }
        seen
    });
    b.start().await.unwrap();
    let api = format!(
        "dllama-api on 127.0.0.1:{api_port} (loading the model and sending its weights to 1 worker(s))"
    );
    assert!(
        b.startup_progress().unwrap().borrow().is_none(),
        "cleared once started"
    );
    b.stop().await.unwrap();
    drop(b);
    let seen = seen.await.unwrap();
    let waits: Vec<&StartupProgress> = seen.iter().filter(|p| p.waiting_for == api).collect();
    assert!(waits.len() >= 2, "{seen:?}");
    assert!(
        waits.last().unwrap().elapsed_s >= 1.0,
        "published while it waited: {seen:?}"
    );
    assert!(waits.iter().all(|p| p.limit_s == 60.0));
    assert!(waits[0]
        .to_string()
        .starts_with(&format!("waiting for {api}, ")));
}

#[tokio::test]
async fn a_root_that_cannot_reach_its_worker_times_out_with_what_was_checked() {
    // dllama-api retries a worker it cannot connect to every 3 s, forever, and says so only in
    // its buffered output: the wait ends at the start-up limit and names what it checked.
    let Some(c) = Cluster::new(&[]) else { return };
    let api_port = free_port();
    let mut cfg = c.config(
        vec!["127.0.0.1".into()],
        api_port,
        json!({"startup_timeout_s": 4}),
    );
    // A worker nobody started, given to the root directly (hosts has only the root).
    cfg.dllama_api = c.path("dllama-api-to-dead-worker");
    let dead = free_port();
    std::fs::write(
        &cfg.dllama_api,
        format!(
            "#!/bin/sh\nexec '{}' \"$@\" --workers 127.0.0.1:{dead}\n",
            c.path("dllama-api")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cfg.dllama_api, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut b = DllamaBackend::new(cfg).unwrap();
    let e = b.start().await.unwrap_err().to_string();
    assert!(
        e.contains(&format!(
            "dllama-api on 127.0.0.1:{api_port} was not ready within 4 s"
        )),
        "{e}"
    );
    assert!(e.contains("does not listen on port"), "{e}");
    assert!(e.contains("does not flush its output"), "{e}");
    assert!(closed_soon(api_port));
}

// ---------------------------------------------------------------------------------------------
// The real engine

/// The prepared real distributed-llama (`EPI_DLLAMA_DIR`: dllama, dllama-api, smollm2_q40.m,
/// smollm2.t), or `None` (skipped) when it is not there outside CI.
fn real_engine() -> Option<PathBuf> {
    let dir = std::env::var_os("EPI_DLLAMA_DIR").map(PathBuf::from);
    let complete = dir.as_ref().is_some_and(|d| {
        ["dllama", "dllama-api", "smollm2_q40.m", "smollm2.t"]
            .iter()
            .all(|f| d.join(f).is_file())
    });
    if !complete {
        assert!(
            std::env::var_os("EPI_REQUIRE_SYSTEM_TOOLS").is_none(),
            "the real distributed-llama is required (EPI_REQUIRE_SYSTEM_TOOLS is set): \
             EPI_DLLAMA_DIR={dir:?} is not a prepared engine; run `eval \"$(bash .ci/prepare-engines)\"`"
        );
        eprintln!("skipping: EPI_DLLAMA_DIR is not set to a prepared distributed-llama");
        return None;
    }
    dir
}

/// A real sshd and the real engine linked into a directory of the test's own, so that its
/// processes are found by that path (`pgrep -f`).
struct RealCluster {
    sshd: Sshd,
    dir: tempfile::TempDir,
}

impl RealCluster {
    fn new() -> Option<RealCluster> {
        let engine = real_engine()?;
        if !require_tool("sshd") || !require_tool("ssh-keygen") || !require_tool("pgrep") {
            return None;
        }
        let sshd = Sshd::start().expect("start sshd");
        let dir = tempfile::tempdir().expect("tempdir");
        for f in ["dllama", "dllama-api", "smollm2_q40.m", "smollm2.t"] {
            std::os::unix::fs::symlink(engine.join(f), dir.path().join(f)).unwrap();
        }
        Some(RealCluster { sshd, dir })
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn config(&self, api_port: u16, extra: Value) -> DllamaConfig {
        let mut v = json!({
            "hosts": ["127.0.0.1"],
            "ssh_user": self.sshd.user(),
            "ssh_port": self.sshd.port(),
            "ssh_key": self.sshd.user_key(),
            "known_hosts": self.sshd.known_hosts(),
            "dllama": self.path("dllama"),
            "dllama_api": self.path("dllama-api"),
            "model": self.path("smollm2_q40.m"),
            "tokenizer": self.path("smollm2.t"),
            "nthreads": 2,
            "max_seq_len": 1024,
            "api_port": api_port,
            "version": "0.16.4 (8d624a7)",
            "startup_timeout_s": 300,
            "timeout_s": 300,
            "stop_grace_s": 5,
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        epi_core::registry::parse_config(KEY, &v).unwrap()
    }

    /// Processes started from this cluster's directory.
    fn processes(&self) -> String {
        let out = std::process::Command::new("pgrep")
            .args(["-a", "-f", &self.dir.path().display().to_string()])
            .output()
            .expect("pgrep");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until no process of this cluster is left (stopping is asynchronous).
    fn none_left_soon(&self) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(60) {
            if self.processes().trim().is_empty() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

#[tokio::test]
async fn the_real_engine_starts_over_ssh_without_its_unflushed_ready_line() {
    let Some(c) = RealCluster::new() else { return };
    let api_port = free_port();
    let mut b = DllamaBackend::new(c.config(api_port, json!({}))).unwrap();
    let t0 = Instant::now();
    let info = b.start().await.unwrap();
    let startup = t0.elapsed();
    assert_eq!(info.server, "dllama-api");
    assert_eq!(
        info.model.as_deref(),
        Some("smollm2_q40.m"),
        "from /v1/models"
    );
    let startup_s = info.details["startup_s"].as_f64().unwrap();
    assert!(startup_s > 0.0 && startup_s <= startup.as_secs_f64());
    eprintln!(
        "real dllama-api ready {startup_s:.2} s after it started ({:.2} s with SSH)",
        startup.as_secs_f64()
    );
    let r = b.generate(&question()).await.unwrap();
    assert!(!r.text.is_empty());
    assert_eq!(r.token_count_source, TokenCountSource::Usage);
    let out = r.tokens_out.unwrap();
    assert!((1..=16).contains(&out), "{out}");
    assert!(r.tokens_in.unwrap() > 20, "{:?}", r.tokens_in);
    assert!(!c.processes().trim().is_empty(), "dllama-api runs");
    b.stop().await.unwrap();
    assert!(c.none_left_soon(), "left running: {}", c.processes());
}

/// dllama-api evaluates at most `max_seq_len` positions of a longer prompt and then generates
/// nothing, without an error: the backend makes it one.
#[tokio::test]
async fn a_prompt_longer_than_the_real_sequence_is_an_error_not_an_empty_answer() {
    let Some(c) = RealCluster::new() else { return };
    let mut b = DllamaBackend::new(c.config(free_port(), json!({"max_seq_len": 64}))).unwrap();
    b.start().await.unwrap();
    let mut q = question();
    q.prompt = "Plants take in carbon dioxide and give off oxygen. ".repeat(8) + &q.prompt;
    let e = b.generate(&q).await.unwrap_err();
    assert!(matches!(e, BackendError::BadReply { .. }), "{e}");
    assert!(e.to_string().contains("more than max_seq_len 64"), "{e}");
    // A prompt that fits is answered.
    let r = b.generate(&question()).await.unwrap();
    assert!(r.tokens_in.unwrap() <= 64);
    b.stop().await.unwrap();
    assert!(c.none_left_soon(), "left running: {}", c.processes());
}

#[tokio::test]
async fn the_real_engine_in_inference_mode_stops_at_max_tokens() {
    let Some(c) = RealCluster::new() else { return };
    let mut b = DllamaBackend::new(c.config(free_port(), json!({"mode": "inference"}))).unwrap();
    b.start().await.unwrap();
    for max_tokens in [16, 3] {
        let r = b
            .generate(&GenerateRequest {
                prompt: "The capital of France is".into(),
                chat: false,
                max_tokens,
                stop: vec![],
                stream: false,
            })
            .await
            .unwrap();
        // The steps bound (24 bytes + 1 + max_tokens) would have generated about 20 more.
        assert_eq!(r.tokens_out, Some(u64::from(max_tokens)), "{:?}", r.text);
        let tokens_in = r.tokens_in.unwrap();
        assert!((4..=10).contains(&tokens_in), "{tokens_in}");
        assert!(!r.text.is_empty());
    }
    b.stop().await.unwrap();
    assert!(c.none_left_soon(), "left running: {}", c.processes());
}

/// Why readiness is never probed with a TCP connection: the real worker takes the first
/// connection for its root and exits when it closes without a configuration. The double does the
/// same (it is run through the same check).
#[tokio::test]
async fn a_tcp_connection_to_a_worker_kills_it_real_and_double_alike() {
    let mut programs: Vec<(String, Vec<String>)> = Vec::new();
    if let Some(engine) = real_engine() {
        programs.push((engine.join("dllama").display().to_string(), vec![]));
    }
    if have_python() {
        programs.push((
            "python3".into(),
            vec![doubles_dir().join("dllama.py").display().to_string()],
        ));
    }
    for (program, pre) in programs {
        let port = free_port();
        let mut child = std::process::Command::new(&program)
            .args(&pre)
            .args(["worker", "--port", &port.to_string(), "--nthreads", "1"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while !listening_quietly(port) {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "{program}: never listened"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // `listening_quietly` connected and closed: that was the probe.
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "{program}: survived"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(status.code(), Some(1), "{program}: {text}");
        assert!(text.contains("Listening on 0.0.0.0:"), "{program}: {text}");
        assert!(
            text.contains("🚨 Critical error: Socket closed"),
            "{program}: {text}"
        );
    }
}

/// Connects to `port` and closes at once; whether something listened.
fn listening_quietly(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}
