//! The `distributed-llama` backend through a real `sshd` on 127.0.0.1, starting the
//! distributed-llama test double (`tests/doubles/dllama.py`) as `dllama worker` and `dllama-api`.

mod common;

use common::{doubles_dir, have_python};
use epi_backends::distributed_llama::{DllamaBackend, DllamaConfig, KEY};
use epi_framework::backend::{
    BackendError, GenerateRequest, InferenceBackend, LoglikelihoodRequest, LoglikelihoodSupport,
    TokenCountSource,
};
use epi_framework::testing::{require_tool, Sshd};
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
        epi_framework::registry::parse_config(KEY, &v).unwrap()
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
    assert_eq!(info.details["model_header"]["Arch"], "Llama");
    assert_eq!(info.details["model_header"]["SeqLen"], "2048");
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
    assert!(msg.contains("dllama worker 127.0.0.1"), "{msg}");
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
    let e = b.start().await.unwrap_err().to_string();
    assert!(e.contains("Critical error: Cannot open file"), "{e}");
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
    let r = b
        .generate(&GenerateRequest {
            prompt: prompt.into(),
            chat: false,
            max_tokens: 5,
            stop: vec![],
            stream: false,
        })
        .await
        .unwrap();
    // The double's tokenizer gives 7 pieces + BOS = 8 prompt tokens; steps = 28 bytes + 1 + 5.
    assert_eq!(r.tokens_in, Some(8));
    assert_eq!(r.tokens_out, Some(34 - 7));
    assert!(
        r.text.contains('\n'),
        "pieces with newlines are kept: {:?}",
        r.text
    );
    b.stop().await.unwrap();
    assert!(closed_soon(worker_port));
}
