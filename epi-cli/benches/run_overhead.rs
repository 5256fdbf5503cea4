//! Benchmark of the run harness (`epi eval` / `epi profile`'s engine) against a loopback server
//! that answers at once: the time it adds per query, and the concurrency at which it saturates
//! the server.
//!
//! ```text
//! cargo bench -p epi-cli --bench run_overhead            # 1000 queries per measurement
//! cargo bench -p epi-cli --bench run_overhead -- --quick # 200
//! ```
//!
//! The server (in this process, its own thread and runtime) answers every `POST` with a fixed
//! completion (usage included) and every `GET` with a model list, over keep-alive HTTP/1.1. Three
//! clients send the same zero-shot generative ARC-Challenge prompts (the repository's test data):
//!
//! - **raw**: a bare keep-alive HTTP/1.1 exchange on one socket — the floor of any client;
//! - **backend**: the `openai` backend's `generate`, one at a time;
//! - **engine**: the whole run engine (`RunEngine`, no power source): the backend, answer
//!   parsing, records written as JSON Lines and Arrow, scoring, the summary.
//!
//! Reported: µs per query of each (median of 3 runs) and the differences (the harness's added time,
//! target < 1 ms); then queries/s of the engine and of raw clients at concurrency 1, 2, 4, ... 64
//! (median of 3 each), and the smallest concurrency at which the engine comes within 5 % of its
//! best throughput (where it saturates the server).

use epi_framework::backend::{GenerateRequest, InferenceBackend};
use epi_framework::eval::EvalOptions;
use epi_framework::registry::Registry;
use epi_framework::run::observe::NullObserver;
use epi_framework::run::{RunDir, RunEngine, RunOptions, SuiteSpec};
use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Instant;

const REPLY: &str = r#"{"id":"c","object":"text_completion","created":0,"model":"bench-model","choices":[{"index":0,"text":" B","finish_reason":"length","logprobs":null}],"usage":{"prompt_tokens":64,"completion_tokens":1,"total_tokens":65}}"#;
const MODELS: &str =
    r#"{"object":"list","data":[{"id":"bench-model","object":"model","owned_by":"bench"}]}"#;

/// The instant server: a thread with its own runtime; returns its port.
fn start_server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve(sock));
            }
        });
    });
    port
}

async fn serve(sock: tokio::net::TcpStream) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let _ = sock.set_nodelay(true);
    let mut r = tokio::io::BufReader::new(sock);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let post = line.starts_with("POST");
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).await.unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" || h == "\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).await.is_err() {
            return;
        }
        let reply = if post { REPLY } else { MODELS };
        let msg = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{reply}",
            reply.len()
        );
        if r.get_mut().write_all(msg.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// One keep-alive exchange on a plain socket.
fn raw_query(conn: &mut BufReader<TcpStream>, port: u16, prompt: &str) {
    let body =
        json!({"model": "bench-model", "prompt": prompt, "max_tokens": 16, "temperature": 0.0})
            .to_string();
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.get_mut().write_all(req.as_bytes()).expect("write");
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        conn.read_line(&mut h).expect("read");
        if h == "\r\n" {
            break;
        }
        if let Some(v) = h.strip_prefix("Content-Length:") {
            len = v.trim().parse().expect("length");
        }
    }
    let mut b = vec![0u8; len];
    conn.read_exact(&mut b).expect("body");
}

fn raw_qps(port: u16, prompts: &[String], concurrency: usize) -> f64 {
    let t = Instant::now();
    std::thread::scope(|s| {
        for k in 0..concurrency {
            s.spawn(move || {
                let sock = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                sock.set_nodelay(true).expect("nodelay");
                let mut conn = BufReader::new(sock);
                for p in prompts.iter().skip(k).step_by(concurrency) {
                    raw_query(&mut conn, port, p);
                }
            });
        }
    });
    prompts.len() as f64 / t.elapsed().as_secs_f64()
}

fn suite(registry: &Registry, n: usize) -> SuiteSpec {
    let data = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .join("plugins/suites/testdata");
    let s = registry
        .suite(
            "arc-challenge",
            &json!({"data_dir": data, "limit": n, "shots": 0}),
        )
        .expect("suite");
    let items = s.items().expect("items");
    assert!(
        items.len() >= n,
        "{} ARC items in the test data",
        items.len()
    );
    SuiteSpec { suite: s, items }
}

fn backend(registry: &Registry, port: u16) -> Box<dyn InferenceBackend> {
    registry
        .backend(
            "openai",
            &json!({"url": format!("http://127.0.0.1:{port}"), "server": "generic", "max_concurrency": 64}),
        )
        .expect("backend")
}

/// Seconds per query of the engine over `n` items at `concurrency`.
fn engine_run(registry: &Registry, port: u16, n: usize, concurrency: usize, out: &Path) -> f64 {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let suites = [suite(registry, n)];
    let mut b = backend(registry, port);
    let id = epi_framework::run::new_run_id();
    let mut opts = RunOptions::eval(&id);
    let mut e = EvalOptions::new(&id);
    e.mode = Some(epi_framework::backend::ScoringMode::Generative);
    e.max_concurrency = Some(concurrency);
    opts.eval = e;
    let dir = RunDir::create(out.join(&id)).expect("run dir");
    let engine = RunEngine::new(dir, opts, &NullObserver);
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let o = rt
        .block_on(engine.execute(&mut *b, None, &suites, rx))
        .expect("run");
    assert_eq!(o.status.as_str(), "complete", "{:?}", o.error);
    let span = o.repetitions[0].span_s.expect("span");
    (span.1 - span.0) / n as f64
}

fn backend_run(registry: &Registry, port: u16, prompts: &[String]) -> f64 {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut b = backend(registry, port);
    rt.block_on(async {
        b.start().await.expect("start");
        let t = Instant::now();
        for p in prompts {
            b.generate(&GenerateRequest {
                prompt: p.clone(),
                chat: false,
                max_tokens: 16,
                stop: Vec::new(),
                stream: false,
            })
            .await
            .expect("generate");
        }
        let s = t.elapsed().as_secs_f64() / prompts.len() as f64;
        b.stop().await.expect("stop");
        s
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("run_overhead bench: run with `cargo bench -p epi-cli --bench run_overhead [-- --quick]`");
        return;
    }
    epi_backends::link();
    epi_suites::link();
    let quick = args.iter().any(|a| a == "--quick");
    let n = if quick { 200 } else { 1000 };
    let registry = Registry::builtin();
    let port = start_server();
    let out: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .join("target/bench-data/run-overhead");
    std::fs::create_dir_all(&out).expect("out dir");
    let prompts: Vec<String> = suite(&registry, n)
        .items
        .iter()
        .map(epi_framework::generative::generative_prompt)
        .collect();

    // Warm every path once.
    raw_qps(port, &prompts[..20], 1);
    backend_run(&registry, port, &prompts[..20]);
    engine_run(&registry, port, 20, 1, &out);

    let mut raw = Vec::new();
    let mut back = Vec::new();
    let mut eng = Vec::new();
    for _ in 0..3 {
        raw.push(1.0 / raw_qps(port, &prompts, 1));
        back.push(backend_run(&registry, port, &prompts));
        eng.push(engine_run(&registry, port, n, 1, &out));
    }
    let (raw, back, eng) = (median(raw), median(back), median(eng));
    println!("run harness against an instant loopback server, {n} zero-shot ARC queries, one at a time (median of 3)");
    println!("  raw keep-alive HTTP      {:8.1} µs/query", raw * 1e6);
    println!(
        "  openai backend           {:8.1} µs/query  (+{:.1} µs over raw)",
        back * 1e6,
        (back - raw) * 1e6
    );
    println!("  run engine (eval)        {:8.1} µs/query  (+{:.1} µs over raw, +{:.1} µs over the backend)",
        eng * 1e6, (eng - raw) * 1e6, (eng - back) * 1e6);
    println!(
        "  added time per query: {:.3} ms (target < 1 ms: {})",
        (eng - raw) * 1e3,
        if eng - raw < 1e-3 { "met" } else { "NOT met" }
    );

    println!("concurrency: queries/s, median of 3 (engine | raw clients, {n} queries each)");
    let levels = [1usize, 2, 4, 8, 16, 32, 64];
    let mut engine_qps = Vec::new();
    for c in levels {
        let e = median(
            (0..3)
                .map(|_| 1.0 / engine_run(&registry, port, n, c, &out))
                .collect(),
        );
        let r = median((0..3).map(|_| raw_qps(port, &prompts, c)).collect());
        println!("  {c:>3}: {e:9.0} | {r:9.0}");
        engine_qps.push(e);
    }
    // Saturation: the smallest concurrency within 5 % of the best throughput.
    let best = engine_qps.iter().cloned().fold(0.0f64, f64::max);
    let at = levels
        .iter()
        .zip(&engine_qps)
        .find(|(_, &q)| q >= best * 0.95)
        .map(|(c, _)| *c)
        .unwrap_or(1);
    println!(
        "the engine saturates the server at concurrency {at}: within 5 % of its best, {best:.0} queries/s"
    );
}
