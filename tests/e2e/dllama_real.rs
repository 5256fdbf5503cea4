//! `epi eval --backend distributed-llama` against the **real** distributed-llama (v0.16.4 built
//! from `tests/engines/distributed-llama`, SmolLM2-135M-Instruct, one node) through a real `sshd`:
//! ARC-Challenge and MMLU with the paper's shot counts (generative: few-shot examples as lettered
//! questions with their answers), a zero-shot run labelled as such, the `inference` mode cut at
//! `--max-tokens`, Ctrl-C and `kill -9` mid-run (nothing left running on the node, records
//! readable). The engine comes from `EPI_DLLAMA_DIR` (`.ci/prepare-engines`); without it the tests
//! skip, and fail when `EPI_REQUIRE_SYSTEM_TOOLS` is set.
//!
//! And `epi profile` with the epi-meter emulator on a pty against the real engine: the hardware
//! label read over SSH, the trace's phases, energy that adds up, a run that validates.
//!
//! The tests print what they measured (seconds per item, replies parsed, the answer letters) on
//! stderr: `cargo test -p epi-cli --test e2e dllama_real -- --nocapture`.

use crate::support::{
    epi, epi_bin, have_python, have_tool, repo_root, stderr, stdout, wait_for, Emulator,
};
use epi_framework::records::{
    read_arrow_records, read_jsonl_records, QueryRecord, RECORDS_ARROW, RECORDS_JSONL,
};
use epi_framework::BenchmarkResult;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Instant;

/// The prepared engine, or `None` (skip) outside CI.
pub(crate) fn real_engine() -> Option<PathBuf> {
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real sshd, and the engine linked into a directory of this test's own (its processes are
/// found by that path with `pgrep -f`).
struct Node {
    sshd: epi_framework::testing::Sshd,
    dir: tempfile::TempDir,
    api_port: u16,
}

impl Node {
    fn new() -> Option<Node> {
        let engine = real_engine()?;
        if !have_tool("sshd") || !have_tool("ssh-keygen") || !have_tool("pgrep") {
            return None;
        }
        let sshd = epi_framework::testing::Sshd::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        for f in ["dllama", "dllama-api", "smollm2_q40.m", "smollm2.t"] {
            std::os::unix::fs::symlink(engine.join(f), dir.path().join(f)).unwrap();
        }
        Some(Node {
            sshd,
            dir,
            api_port: free_port(),
        })
    }

    fn p(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// `epi eval` on the node with `extra` arguments, writing to `out`.
    fn args(&self, out: &Path, extra: &[&str]) -> Vec<String> {
        let data = repo_root().join("plugins/suites/testdata");
        let mut v: Vec<String> = vec![
            "eval".into(),
            "--backend".into(),
            "distributed-llama".into(),
            "--data-dir".into(),
            data.display().to_string(),
            "--hosts".into(),
            "127.0.0.1".into(),
            "--ssh-user".into(),
            self.sshd.user().to_string(),
            "--ssh-port".into(),
            self.sshd.port().to_string(),
            "--ssh-key".into(),
            self.sshd.user_key().display().to_string(),
            "--known-hosts".into(),
            self.sshd.known_hosts().display().to_string(),
            "--model".into(),
            self.p("smollm2_q40.m"),
            "-O".into(),
            format!("tokenizer={}", self.p("smollm2.t")),
            "-O".into(),
            format!("dllama={}", self.p("dllama")),
            "-O".into(),
            format!("dllama_api={}", self.p("dllama-api")),
            "-O".into(),
            format!("api_port={}", self.api_port),
            "-O".into(),
            "nthreads=2".into(),
            "-O".into(),
            "max_seq_len=4096".into(),
            "-O".into(),
            "version=\"0.16.4 (8d624a7)\"".into(),
            "-O".into(),
            "stop_grace_s=5".into(),
            "--output".into(),
            out.display().to_string(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }

    fn command(&self, out: &Path, extra: &[&str]) -> Command {
        let mut c = Command::new(epi_bin());
        c.args(self.args(out, extra))
            .current_dir(self.dir.path())
            .env("NO_COLOR", "1")
            .env("XDG_CONFIG_HOME", self.dir.path().join(".no-user-config"));
        c
    }

    fn eval(&self, out: &Path, extra: &[&str]) -> Output {
        self.command(out, extra).output().expect("run epi")
    }

    fn spawn(&self, out: &Path, extra: &[&str]) -> Child {
        self.command(out, extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start epi")
    }

    /// The engine's processes still running (started from this node's directory).
    fn processes(&self) -> String {
        let out = Command::new("pgrep")
            .args(["-a", "-f", &self.dir.path().display().to_string()])
            .output()
            .expect("pgrep");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_none_left(&self) {
        wait_for("no dllama process left on the node", 60, || {
            self.processes().trim().is_empty().then_some(())
        });
    }
}

fn records(out: &Path) -> Vec<QueryRecord> {
    read_jsonl_records(&out.join(RECORDS_JSONL)).unwrap()
}

fn summary(out: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap()
}

/// Seconds per item, replies parsed, accuracy and the answer letters of one suite's records,
/// printed for the record (not asserted: they measure the model, not the code).
fn report(suite: &str, recs: &[&QueryRecord]) {
    let n = recs.len().max(1) as f64;
    let secs: f64 = recs.iter().map(|r| r.latency_s).sum::<f64>() / n;
    let parsed = recs.iter().filter(|r| r.prediction.is_some()).count();
    let correct = recs.iter().filter(|r| r.correct == Some(true)).count();
    let mut letters: BTreeMap<char, usize> = BTreeMap::new();
    for r in recs {
        if let Some(p) = r.prediction {
            *letters.entry((b'A' + p as u8) as char).or_default() += 1;
        }
    }
    let top = letters.values().max().copied().unwrap_or(0);
    let tokens_in: Vec<u64> = recs.iter().filter_map(|r| r.tokens_in).collect();
    eprintln!(
        "  prompt tokens {:?}..{:?}",
        tokens_in.iter().min(),
        tokens_in.iter().max()
    );
    for r in recs.iter().take(3) {
        eprintln!(
            "  {} gold {:?}: {:?}",
            r.doc_id,
            r.gold.map(|g| (b'A' + g as u8) as char),
            r.generated_text.as_deref().unwrap_or("")
        );
    }
    eprintln!(
        "real distributed-llama, {suite}: {} items, {secs:.1} s/item, parsed {parsed}/{}, \
         correct {correct}/{}, most common letter {top}/{} ({letters:?})",
        recs.len(),
        recs.len(),
        recs.len(),
        recs.len()
    );
}

/// The paper's runs through the engine that can only generate: ARC-Challenge 25-shot and MMLU
/// 5-shot, the examples sent as lettered questions with their answer letters. Two items each
/// (`EPI_DLLAMA_E2E_LIMIT=N` runs N, to measure the figures it prints).
#[test]
fn arc_25_shot_and_mmlu_5_shot_through_the_real_engine() {
    let Some(node) = Node::new() else { return };
    let limit: usize = std::env::var("EPI_DLLAMA_E2E_LIMIT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let out = node.dir.path().join("run");
    let t0 = Instant::now();
    let o = node.eval(
        &out,
        &[
            "--suite",
            "arc-challenge,mmlu",
            "--limit",
            &limit.to_string(),
            "-S",
            "mmlu.subjects=[\"abstract_algebra\"]",
        ],
    );
    let wall = t0.elapsed().as_secs_f64();
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    // Issue 11 (1): it starts although `Server URL:` never arrives, and says what it waits for.
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "waiting for dllama-api on 127.0.0.1:{} (loading the model), ",
            node.api_port
        )),
        "{err}"
    );
    let text = stdout(&o);
    assert!(
        text.contains("scoring: generative (not comparable with lm-eval numbers)"),
        "{text}"
    );
    let s = summary(&out);
    let startup = s["backend"]["details"]["startup_s"].as_f64().unwrap();
    assert!(startup > 0.0 && startup < wall, "{startup}");
    assert_eq!(s["backend"]["model"], "smollm2_q40.m");

    let recs = records(&out);
    let arc: Vec<&QueryRecord> = recs.iter().filter(|r| r.suite == "arc-challenge").collect();
    let mmlu: Vec<&QueryRecord> = recs.iter().filter(|r| r.suite == "mmlu").collect();
    eprintln!("real distributed-llama: dllama-api ready in {startup:.2} s; whole run {wall:.1} s");
    report("ARC-Challenge 25-shot", &arc);
    report("MMLU 5-shot", &mmlu);
    assert_eq!((arc.len(), mmlu.len()), (limit, limit));
    for r in &recs {
        assert_eq!(r.scoring_mode, "generative");
        assert_eq!(r.error, None, "{r:?}");
        // The reply is recorded (it may be empty: the model may end at once; that counts as
        // unparseable, and the end-of-sequence step as one generated token).
        assert!(r.generated_text.is_some(), "{r:?}");
        let out_tokens = r.tokens_out.expect("usage of non-streamed replies");
        assert!((1..=16).contains(&out_tokens), "{out_tokens}");
        assert!(r.context.ends_with("\nAnswer:"), "{}", r.context);
    }
    // Issue 11 (3): the examples are sent, each answered by its letter; the question last.
    for r in &arc {
        assert!(r.context.starts_with(
            "The following are multiple choice questions (with answers) about grade-school science.\n\n"
        ));
        assert_eq!(r.context.matches("\nAnswer: ").count(), 25, "{}", r.context);
        assert!(
            r.tokens_in.unwrap() > 1000,
            "25 examples: {:?}",
            r.tokens_in
        );
    }
    // Issue 11 (2): MMLU's choices are listed once (lm-eval's generative MMLU, byte for byte the
    // log-likelihood context), never `A. A … D. D` under them.
    for r in &mmlu {
        assert!(r.context.starts_with(
            "The following are multiple choice questions (with answers) about abstract algebra.\n\n\
             Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer: B\n\n"
        ));
        assert_eq!(r.context.matches("\nAnswer: ").count(), 5);
        assert_eq!(r.context.matches("\nA. ").count(), 6, "{}", r.context);
        assert!(!r.context.contains("\nA. A\n"), "{}", r.context);
    }
    let b = BenchmarkResult::from_json(out.join("benchmark.json")).unwrap();
    let keys: Vec<&str> = b.benchmarks.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["arc_challenge_25shot", "mmlu_5shot"],
        "the shots actually sent"
    );
    node.wait_none_left();
}

/// A zero-shot generative run is labelled by the shots it sent.
#[test]
fn a_zero_shot_run_is_labelled_0shot() {
    let Some(node) = Node::new() else { return };
    let out = node.dir.path().join("run");
    let o = node.eval(
        &out,
        &[
            "--suite",
            "arc-challenge",
            "--limit",
            "2",
            "-S",
            "arc-challenge.shots=0",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    for r in records(&out) {
        assert!(
            !r.context.contains("\nAnswer: "),
            "no examples: {}",
            r.context
        );
        assert!(r.context.contains("\nA. ") && r.context.ends_with("\nAnswer:"));
    }
    let b = BenchmarkResult::from_json(out.join("benchmark.json")).unwrap();
    assert_eq!(
        b.benchmarks.keys().collect::<Vec<_>>(),
        ["arc_challenge_0shot"]
    );
    node.wait_none_left();
}

/// `epi profile` against the real engine, with the emulated meter on a real pty: the run's
/// hardware label is read on the node over SSH, the trace marks start-up / warm-up / idle /
/// measured, the queries' energies add up to the repetition's, and the run validates when the
/// model got at least one answer right (EPI needs an accuracy above 0; this 135M model is near
/// chance).
#[test]
fn profile_with_an_emulated_meter_against_the_real_engine() {
    if !have_tool("socat") || !have_python() {
        return;
    }
    let Some(node) = Node::new() else { return };
    let emu = Emulator::start(
        node.dir.path(),
        &[
            "--until-signal",
            "--duration",
            "3600",
            "--faults",
            "none",
            "--t0-ms",
            "1000",
            "--seq0",
            "0",
            "--linger-s",
            "5",
        ],
    );
    let out = node.dir.path().join("run");
    let mut args = node.args(
        &out,
        &[
            "--power",
            "epi-meter",
            "--port",
            emu.port.to_str().unwrap(),
            "--suite",
            "mmlu",
            "-S",
            "mmlu.subjects=[\"abstract_algebra\"]",
            "--num-fewshot",
            "0",
            "--limit",
            "3",
            "--warmup",
            "0",
            "--warmup-queries",
            "1",
            "--idle",
            "1",
            "--repetitions",
            "1",
        ],
    );
    args[0] = "profile".into();
    let o = Command::new(epi_bin())
        .args(&args)
        .current_dir(node.dir.path())
        .env("NO_COLOR", "1")
        .env("XDG_CONFIG_HOME", node.dir.path().join(".no-user-config"))
        .output()
        .expect("run epi");
    drop(emu);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let s = summary(&out);
    assert_eq!(s["status"], "complete");
    assert_eq!(s["scoring_mode"], "generative");
    assert_eq!(s["token_basis"], "generated");
    assert_eq!(s["labels"]["hardware_source"], "detected");
    let hw = s["labels"]["hardware"].as_str().unwrap();
    assert!(
        hw.ends_with("(distributed-llama)") && hw.contains("cores"),
        "{hw}"
    );
    let meta = epi_framework::trace::TraceMeta::read_for(&out.join("power_trace.csv"))
        .unwrap()
        .unwrap();
    let phases: Vec<&str> = meta.extra["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["backend-start", "warmup", "idle", "measured-1"]);
    let rep = &s["repetitions"][0]["energy"];
    let recs = records(&out);
    let sum: f64 = recs.iter().map(|r| r.energy_j.unwrap()).sum();
    let total = rep["total_j"].as_f64().unwrap();
    assert!(
        ((sum + rep["between_queries_j"].as_f64().unwrap()) - total).abs() < 1e-9 * total,
        "{sum} + between vs {total}"
    );
    let accuracy = s["repetitions"][0]["accuracy"].as_f64().unwrap_or(0.0);
    eprintln!(
        "profile, real engine: {} queries, {total:.3} J, accuracy {accuracy}",
        recs.len()
    );
    if accuracy > 0.0 {
        let v = epi(node.dir.path(), &["validate", out.to_str().unwrap()]);
        assert_eq!(v.status.code(), Some(0), "{}{}", stdout(&v), stderr(&v));
    } else {
        assert!(!out.join("epi.json").exists(), "no EPI without an accuracy");
    }
    node.wait_none_left();
}

/// Issue 11 (4): `inference` mode generates `--max-tokens` tokens and counts only those.
#[test]
fn inference_mode_stops_at_max_tokens() {
    let Some(node) = Node::new() else { return };
    let out = node.dir.path().join("run");
    let o = node.eval(
        &out,
        &[
            "--suite",
            "arc-challenge",
            "--limit",
            "2",
            "-S",
            "arc-challenge.shots=0",
            "--max-tokens",
            "8",
            "-O",
            "mode=\"inference\"",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let recs = records(&out);
    assert_eq!(recs.len(), 2);
    for r in &recs {
        assert_eq!(r.error, None);
        assert_eq!(r.tokens_out, Some(8), "{:?}", r.generated_text);
        let tokens_in = r.tokens_in.unwrap();
        // The prompt's tokens, far fewer than its bytes (the --steps bound).
        assert!(
            tokens_in > 20 && (tokens_in as usize) < r.context.len(),
            "{tokens_in}"
        );
    }
    assert_eq!(summary(&out)["backend"]["server"], "dllama inference");
    node.wait_none_left();
}

/// Starts a 5-shot ARC run (items of seconds) and interrupts it with `signal` once one item is
/// recorded; returns the output of `epi` and the records on disk.
fn interrupted(node: &Node, signal: &str) -> (Output, PathBuf) {
    let out = node.dir.path().join("run");
    let child = node.spawn(
        &out,
        &[
            "--suite",
            "arc-challenge",
            "--limit",
            "6",
            "-S",
            "arc-challenge.shots=5",
        ],
    );
    let jsonl = out.join(RECORDS_JSONL);
    wait_for("the first record", 600, || {
        (!crate::support::complete_lines(&jsonl).is_empty()).then_some(())
    });
    assert!(
        !node.processes().trim().is_empty(),
        "dllama-api runs during the run"
    );
    crate::support::send_signal(&child, signal);
    (crate::support::wait_output(child, 120), out)
}

#[test]
fn ctrl_c_mid_run_keeps_the_records_and_leaves_nothing_running() {
    let Some(node) = Node::new() else { return };
    let (o, out) = interrupted(&node, "INT");
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    let recs = records(&out);
    assert!(!recs.is_empty() && recs.len() < 6, "{}", recs.len());
    assert_eq!(arrow_rows(&out), recs.len());
    assert_eq!(summary(&out)["status"], "interrupted");
    node.wait_none_left();
}

#[test]
fn kill_9_mid_run_leaves_nothing_running_and_the_records_readable() {
    let Some(node) = Node::new() else { return };
    let (o, out) = interrupted(&node, "KILL");
    assert_eq!(o.status.code(), None, "killed by a signal");
    // epi had no chance to clean up: the SSH connection dropped, and the remote supervisor
    // stopped the engine.
    node.wait_none_left();
    let recs = records(&out);
    assert!(!recs.is_empty() && recs.len() < 6, "{}", recs.len());
    assert!(recs
        .iter()
        .all(|r| r.suite == "arc-challenge" && r.error.is_none()));
    // The Arrow file is complete after each batch: readable, never more than the JSON lines.
    assert!(arrow_rows(&out) <= recs.len());
}

fn arrow_rows(out: &Path) -> usize {
    read_arrow_records(&out.join(RECORDS_ARROW))
        .unwrap()
        .iter()
        .map(|b| b.num_rows())
        .sum()
}
