//! `epi eval` end to end: against the replayed llama.cpp `llama-server` (log-likelihood, top-N)
//! and against the distributed-llama double run through a real `sshd` (generative), with the real
//! ARC-Challenge and MMLU suites on the repository's test data; dead servers and Ctrl-C.

use crate::support::{
    closed_soon, data_dir, doubles, epi, epi_bin, free_port, have_python, have_tool, stderr,
    stdout, LlamaServer,
};
use epi_framework::records::{read_arrow_records, read_jsonl_records};
use epi_framework::BenchmarkResult;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn records(dir: &Path) -> Vec<epi_framework::records::QueryRecord> {
    read_jsonl_records(&dir.join("records.jsonl")).unwrap()
}

fn summary(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn arc_and_mmlu_through_the_replayed_llama_server_use_top_n() {
    if !have_python() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let server = LlamaServer::start(tmp.path());
    let out = tmp.path().join("run");
    let url = format!("http://127.0.0.1:{}", server.port);
    let o = epi(
        tmp.path(),
        &[
            "eval",
            "--backend",
            "openai",
            "--url",
            &url,
            "--suite",
            "arc-challenge,mmlu",
            "--limit",
            "3",
            "--data-dir",
            &data_dir(),
            "-S",
            "mmlu.subjects=[\"abstract_algebra\"]",
            "-O",
            "top_n=20",
            "--output",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let text = stdout(&o);
    // The double keeps llama-server's default RAM prompt cache: the single-pass check fails, the
    // scoring line says so and a warning says why.
    assert!(
        text.contains("scoring: loglikelihood (method top-n, single-pass, not reproducible)"),
        "{text}"
    );
    let err = stderr(&o);
    assert!(
        err.contains("single-pass check failed") && err.contains("--cache-ram 0"),
        "{err}"
    );
    assert!(
        text.contains("arc-challenge") && text.contains("mmlu"),
        "{text}"
    );

    let recs = records(&out);
    assert_eq!(
        recs.iter().filter(|r| r.suite == "arc-challenge").count(),
        3
    );
    assert_eq!(recs.iter().filter(|r| r.suite == "mmlu").count(), 3);
    for r in &recs {
        assert_eq!(r.scoring_mode, "loglikelihood");
        assert_eq!(r.error, None);
        assert_eq!(r.choice_logprobs.len(), r.choices.len());
        assert_eq!(
            r.choice_exact.len(),
            r.choices.len(),
            "exactness is said per choice"
        );
        assert!(r.end_s >= r.start_s && r.requests >= 1);
        assert!(r.gold.is_some() && r.correct.is_some());
    }
    // MMLU's one-token continuations: one top-N request per question, after tokenizing.
    let arrow: usize = read_arrow_records(&out.join("records.arrow"))
        .unwrap()
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(arrow, 6);

    let s = summary(&out);
    assert_eq!(s["status"], "complete");
    assert_eq!(s["scoring_mode"], "loglikelihood");
    assert!(s["backend"]["details"]["echo_probe"]
        .as_str()
        .unwrap()
        .starts_with("ignored"));
    assert_eq!(s["suites"][0]["loglikelihood_method"], "top-n");
    let inexact: u64 = s["suites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["inexact_items"].as_u64().unwrap())
        .sum();
    let exact_flags = recs
        .iter()
        .filter(|r| r.choice_exact.iter().any(|e| !e))
        .count() as u64;
    assert_eq!(inexact, exact_flags);

    let b = BenchmarkResult::from_json(out.join("benchmark.json")).unwrap();
    assert_eq!(b.scoring_mode.as_deref(), Some("loglikelihood"));
    assert_eq!(b.benchmark_items.get("arc_challenge_25shot"), Some(&3));
    assert_eq!(b.benchmark_items.get("mmlu_5shot"), Some(&3));
    assert_eq!(b.inference_engine, "llama.cpp llama-server");
    assert_eq!(b.inference_engine_version, "b0-unknown");
    assert_eq!(b.model, "SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(b.tokens_in.unwrap() > 0);

    // The ignored echo was asked once (the probe) and never relied on; scoring used top-N.
    let reqs = server.requests();
    let echo = reqs
        .iter()
        .filter(|r| {
            r["body"]
                .as_str()
                .is_some_and(|b| b.contains("\"echo\":true"))
        })
        .count();
    assert_eq!(echo, 1);
    assert!(reqs.iter().filter(|r| r["path"] == "/completion").count() >= 6);
}

#[test]
fn a_dead_server_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}", free_port());
    let t0 = Instant::now();
    let o = epi(
        tmp.path(),
        &[
            "eval",
            "--backend",
            "openai",
            "--url",
            &url,
            "--suite",
            "arc-challenge",
            "--limit",
            "1",
            "--data-dir",
            &data_dir(),
        ],
    );
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot be reached"), "{}", stderr(&o));
    assert!(t0.elapsed() < Duration::from_secs(30));
}

#[test]
fn bad_options_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let o = epi(
        tmp.path(),
        &[
            "eval",
            "--backend",
            "openai",
            "--url",
            "http://x:1",
            "--suite",
            "arc-challenge",
            "-O",
            "topn=3",
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(3),
        "a configuration error is bad input"
    );
    assert!(
        stderr(&o).contains("unknown field `topn`"),
        "{}",
        stderr(&o)
    );
    let o = epi(
        tmp.path(),
        &[
            "eval",
            "--backend",
            "openai",
            "--url",
            "http://x:1",
            "--suite",
            "arc-challenge",
            "-S",
            "mmlu.limit=3",
        ],
    );
    assert!(
        stderr(&o).contains("not one of the suites run"),
        "{}",
        stderr(&o)
    );
    let o = epi(
        tmp.path(),
        &["eval", "--backend", "nope", "--suite", "arc-challenge"],
    );
    assert_eq!(
        o.status.code(),
        Some(2),
        "an unknown plugin is a usage error"
    );
    assert!(
        stderr(&o).contains("no backend plugin named `nope`"),
        "{}",
        stderr(&o)
    );
}

/// A real sshd with the distributed-llama double installed as `dllama` and `dllama-api`.
struct Cluster {
    sshd: epi_framework::testing::Sshd,
    dir: tempfile::TempDir,
    worker_port: u16,
    api_port: u16,
}

impl Cluster {
    fn new(delay_ms: u32) -> Option<Cluster> {
        if !have_tool("sshd") || !have_tool("ssh-keygen") || !have_python() {
            return None;
        }
        let sshd = epi_framework::testing::Sshd::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let script = doubles().join("dllama.py");
        let log = dir.path().join("api-requests.jsonl");
        for (name, mode) in [("dllama", ""), ("dllama-api", "api ")] {
            let p = dir.path().join(name);
            std::fs::write(
                &p,
                format!(
                    "#!/bin/sh\nexport DLLAMA_DOUBLE_LOG='{}'\nexport DLLAMA_DOUBLE_DELAY_MS={delay_ms}\nexec python3 '{}' {mode}\"$@\"\n",
                    log.display(),
                    script.display()
                ),
            )
            .unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::write(dir.path().join("model.m"), b"weights").unwrap();
        std::fs::write(dir.path().join("tokenizer.t"), b"tokenizer").unwrap();
        Some(Cluster {
            sshd,
            dir,
            worker_port: free_port(),
            api_port: free_port(),
        })
    }

    fn p(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn args(&self, out: &Path) -> Vec<String> {
        let mut v: Vec<String> = [
            "eval",
            "--backend",
            "distributed-llama",
            "--suite",
            "arc-challenge,mmlu",
            "--limit",
            "3",
            "--data-dir",
            &data_dir(),
            "-S",
            "mmlu.subjects=[\"abstract_algebra\"]",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend([
            "--hosts".into(),
            format!("127.0.0.1,127.0.0.1:{}", self.worker_port),
            "--ssh-user".into(),
            self.sshd.user().to_string(),
            "--ssh-port".into(),
            self.sshd.port().to_string(),
            "--ssh-key".into(),
            self.sshd.user_key().display().to_string(),
            "--known-hosts".into(),
            self.sshd.known_hosts().display().to_string(),
            "--model".into(),
            self.p("model.m"),
            "-O".into(),
            format!("tokenizer={}", self.p("tokenizer.t")),
            "-O".into(),
            format!("dllama={}", self.p("dllama")),
            "-O".into(),
            format!("dllama_api={}", self.p("dllama-api")),
            "-O".into(),
            format!("api_port={}", self.api_port),
            "-O".into(),
            "version=\"0.16.4\"".into(),
            "-O".into(),
            "stop_grace_s=2".into(),
            "--output".into(),
            out.display().to_string(),
        ]);
        v
    }

    fn api_requests(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("api-requests.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

#[test]
fn arc_and_mmlu_through_distributed_llama_are_generative() {
    let Some(c) = Cluster::new(0) else { return };
    let out = c.dir.path().join("run");
    let args = c.args(&out);
    let o = epi(
        c.dir.path(),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("scoring: generative (not comparable with lm-eval numbers)"),
        "{text}"
    );
    assert!(
        text.contains("backend: dllama-api (0.16.4), dllama_model_smollm2b_q40.m"),
        "{text}"
    );

    let recs = records(&out);
    assert_eq!(recs.len(), 6);
    let mut unparseable = 0;
    for r in &recs {
        assert_eq!(r.scoring_mode, "generative");
        assert_eq!(r.error, None);
        assert!(
            r.context.contains("\nA. ") && r.context.ends_with("\nAnswer:"),
            "{}",
            r.context
        );
        assert!(r.generated_text.as_deref().is_some_and(|t| !t.is_empty()));
        assert!(r.tokens_out.is_some(), "usage of non-streamed replies");
        if r.prediction.is_none() {
            unparseable += 1;
            assert_eq!(
                r.correct,
                Some(false),
                "an unparseable answer counts as wrong"
            );
        }
    }
    let s = summary(&out);
    assert_eq!(s["scoring_mode"], "generative");
    assert_eq!(s["backend"]["details"]["nodes"], 2);
    let counted: u64 = s["suites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["unparseable"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, unparseable);
    let b = BenchmarkResult::from_json(out.join("benchmark.json")).unwrap();
    assert_eq!(b.scoring_mode.as_deref(), Some("generative"));
    assert_eq!(b.inference_engine, "dllama-api");
    assert_eq!(b.inference_engine_version, "0.16.4");
    assert_eq!(b.benchmark_items.len(), 2);

    // Every request reached the server whole: title-case Content-Length, JSON, string contents.
    let reqs = c.api_requests();
    assert!(reqs.iter().filter(|r| r["method"] == "POST").count() >= 6);
    for r in reqs.iter().filter(|r| r["method"] == "POST") {
        assert!(
            r["headers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h[0] == "Content-Length"),
            "{r}"
        );
        let body: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
        assert!(body["messages"][0]["content"].is_string());
    }
    // Everything started on the cluster is stopped.
    assert!(closed_soon(c.api_port) && closed_soon(c.worker_port));
}

#[test]
fn streamed_dllama_replies_have_no_token_counts_so_no_benchmark_json() {
    let Some(c) = Cluster::new(0) else { return };
    let out = c.dir.path().join("run");
    let mut args = c.args(&out);
    args.push("--stream".into());
    let o = epi(
        c.dir.path(),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("no benchmark result"), "{}", stderr(&o));
    assert!(!out.join("benchmark.json").exists());
    let recs = records(&out);
    assert!(recs
        .iter()
        .all(|r| r.tokens_out.is_none() && r.ttft_s.is_some()));
    let s = summary(&out);
    assert_eq!(s["suites"][0]["tokens_unknown"], 3);
    assert_eq!(s["suites"][0]["token_count_sources"]["unknown"], 3);
}

#[test]
fn forcing_loglikelihood_on_distributed_llama_fails_and_stops_the_cluster() {
    let Some(c) = Cluster::new(0) else { return };
    let out = c.dir.path().join("run");
    let mut args = c.args(&out);
    args.extend(["--mode".into(), "loglikelihood".into()]);
    let o = epi(
        c.dir.path(),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    // A setting the backend cannot honour: a configuration error (exit 3), found once it started.
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("log-likelihood scoring is impossible"),
        "{}",
        stderr(&o)
    );
    assert!(closed_soon(c.api_port) && closed_soon(c.worker_port));
}

fn spawn_eval(c: &Cluster, out: &Path) -> Child {
    Command::new(epi_bin())
        .args(c.args(out))
        .current_dir(c.dir.path())
        .env("NO_COLOR", "1")
        .env("XDG_CONFIG_HOME", c.dir.path().join(".no-user-config"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_for_records(out: &Path, n: usize, child: &mut Child) {
    let t0 = Instant::now();
    loop {
        let have = std::fs::read_to_string(out.join("records.jsonl"))
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if have >= n {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("epi ended early ({status})");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no records after 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn finish(mut child: Child) -> (Option<i32>, String) {
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.code(), err);
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("epi did not end within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ctrl_c_keeps_finished_records_and_stops_the_cluster() {
    let Some(c) = Cluster::new(300) else { return };
    let out = c.dir.path().join("run");
    let mut child = spawn_eval(&c, &out);
    wait_for_records(&out, 1, &mut child);
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let (code, err) = finish(child);
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    let recs = records(&out);
    assert!(!recs.is_empty() && recs.len() < 6, "{}", recs.len());
    let arrow: usize = read_arrow_records(&out.join("records.arrow"))
        .unwrap()
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(
        arrow,
        recs.len(),
        "the Arrow stream holds every finished record"
    );
    let s = summary(&out);
    assert_eq!(s["status"], "interrupted");
    assert!(
        !out.join("benchmark.json").exists(),
        "no benchmark result from a partial run"
    );
    assert!(closed_soon(c.api_port), "dllama-api stopped");
    assert!(closed_soon(c.worker_port), "the worker stopped");
}

#[test]
fn a_server_dying_mid_run_is_reported_and_records_are_kept() {
    let Some(c) = Cluster::new(200) else { return };
    let out = c.dir.path().join("run");
    let mut child = spawn_eval(&c, &out);
    wait_for_records(&out, 1, &mut child);
    // Kill dllama-api the way the recordings show it dies: a lower-case content-length.
    let mut s = TcpStream::connect(("127.0.0.1", c.api_port)).unwrap();
    let body = r#"{"messages":[{"role":"user","content":"x"}]}"#;
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    let (code, err) = finish(child);
    assert_eq!(code, Some(4), "{err}");
    assert!(
        err.contains("the server died or became unreachable"),
        "{err}"
    );
    let recs = records(&out);
    assert!(!recs.is_empty());
    assert!(
        recs.iter().any(|r| r
            .error
            .as_deref()
            .is_some_and(|e| e.contains("dllama-api exited"))),
        "{recs:?}"
    );
    assert_eq!(summary(&out)["status"], "failed");
    assert!(closed_soon(c.worker_port), "the worker stopped");
}
