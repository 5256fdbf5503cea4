//! The `openai` backend against the replaying llama-server double (and its vLLM flavour): probes,
//! the single-pass and cached top-N modes, the KV budget, a server that stops listening, requests.

mod common;

use common::{have_python, Double};
use epi_backends::openai::{OpenAiBackend, OpenAiConfig};
use epi_core::backend::{
    BackendError, GenerateRequest, InferenceBackend, LoglikelihoodRequest, LoglikelihoodSupport,
    TokenCountSource,
};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const CONTEXT: &str = "Question: What is the capital of France?\nAnswer:";

/// A few-shot context of well over 64 tokens for the double's tokenizer.
fn long_context() -> String {
    let mut c = String::new();
    for (q, a) in [
        ("Which gas do plants take in?", "carbon dioxide"),
        ("What do bees make from nectar?", "honey and wax"),
        (
            "Which planet is closest to the sun?",
            "Mercury, the small one",
        ),
        ("What is frozen water called?", "ice, in the cold"),
        (
            "Which organ pumps blood around the body?",
            "the heart muscle",
        ),
    ] {
        c.push_str(&format!("Question: {q}\nAnswer: {a}\n\n"));
    }
    c.push_str("Question: Which gas do plants give off?\nAnswer:");
    c
}

fn backend(url: &str, extra: Value) -> OpenAiBackend {
    let mut v = json!({"url": url, "retry_backoff_s": 0.05});
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, x) in e {
            o.insert(k.clone(), x.clone());
        }
    }
    let c: OpenAiConfig = epi_core::registry::parse_config("openai", &v).unwrap();
    OpenAiBackend::new("openai", c)
}

fn bodies(d: &Double, path: &str) -> Vec<Value> {
    d.requests()
        .into_iter()
        .filter(|r| r["path"] == path)
        .map(|r| serde_json::from_str(r["body"].as_str().unwrap()).unwrap())
        .collect()
}

#[tokio::test]
async fn the_ignored_echo_is_detected_and_top_n_is_used() {
    if !have_python() {
        return;
    }
    // Without the RAM prompt cache (`--cache-ram 0`), as the single-pass mode needs.
    let d = Double::llama_server(&["--cache-ram", "0"]);
    let mut b = backend(&d.url(), json!({"top_n": 20}));
    let info = b.start().await.unwrap();
    assert_eq!(info.server, "llama.cpp llama-server");
    assert_eq!(info.version.as_deref(), Some("b0-unknown"));
    assert_eq!(
        info.model.as_deref(),
        Some("SmolLM2-135M-Instruct.Q4_1.gguf")
    );
    let echo = info.details["echo_probe"].as_str().unwrap();
    assert!(echo.starts_with("ignored"), "{echo}");
    assert_eq!(info.details["loglikelihood_method"], "top-n");
    assert_eq!(info.details["bos_policy"], "none");
    assert_eq!(info.details["model_adds_bos"], false);
    assert_eq!(info.details["top_n_mode"], "single-pass");
    assert_eq!(info.details["reproducible"], true);
    assert_eq!(
        info.details["single_pass_check"]["passed"], true,
        "{info:?}"
    );
    assert_eq!(
        info.details["slots_n_ctx"],
        json!([2048, 2048]),
        "read from /slots"
    );
    assert_eq!(info.details["n_ctx"], 2048);
    assert_eq!(info.details["kv_budget_tokens"], 2048);
    let caps = b.capabilities();
    assert_eq!(caps.loglikelihood, LoglikelihoodSupport::TopN { n: 20 });
    assert_eq!(
        caps.max_concurrency, 1,
        "single-pass: one at a time by default"
    );
    let before = bodies(&d, "/completion").len();

    let r = b
        .loglikelihood(&LoglikelihoodRequest {
            context: CONTEXT.into(),
            continuations: vec![" Paris".into(), " France".into(), " Zzyzx".into()],
        })
        .await
        .unwrap();
    assert_eq!(r.method, "top-n");
    // The recorded top 20 (completion_n_probs.http) give the exact values.
    assert_eq!(r.scores[0].logprob, -4.173124313354492);
    assert!(r.scores[0].exact);
    assert_eq!(r.scores[0].n_tokens, 1);
    assert_eq!(r.scores[1].logprob, -3.0791518688201904);
    assert!(r.scores[1].exact);
    assert_eq!(r.scores[1].is_greedy, Some(false));
    // Outside the recorded top 20: inexact, bounded by the smallest recorded value.
    assert!(!r.scores[2].exact);
    assert!(r.scores[2].logprob <= -5.459781169891357);
    // One top-N request for the three one-token continuations (they share the context). The
    // pinned slot holds the start-up check's prompt, which starts with this 12-token context: a
    // prompt shorter than 64 tokens is evaluated whole, so the slot's cache is cut to nothing first.
    let scoring = &bodies(&d, "/completion")[before..];
    assert_eq!(scoring.len(), 2, "{scoring:?}");
    assert_eq!(r.requests, 2, "tokenize calls are not scoring requests");
    assert_eq!(scoring[0]["prompt"], json!([0]), "the cut");
    assert_eq!(scoring[0]["n_predict"], 0);
    for x in scoring {
        assert_eq!(x["id_slot"], 0);
        assert_eq!(x["cache_prompt"], true);
    }
    assert_eq!(scoring[1]["n_probs"], 20);
    // Echo was sent once, by the probe, and never relied on.
    let echoes: Vec<Value> = bodies(&d, "/v1/completions")
        .into_iter()
        .filter(|b| b["echo"] == true)
        .collect();
    assert_eq!(echoes.len(), 1);
    for req in bodies(&d, "/completion") {
        assert!(
            req["prompt"].is_array(),
            "token ids, so the server adds no BOS: {req}"
        );
        assert!(req["n_predict"] == 1 || req["n_predict"] == 0, "{req}");
    }
    b.stop().await.unwrap();
}

#[tokio::test]
async fn forcing_echo_on_llama_server_is_refused() {
    if !have_python() {
        return;
    }
    let d = Double::llama_server(&[]);
    let mut b = backend(&d.url(), json!({"loglikelihood": "echo"}));
    let e = b.start().await.unwrap_err();
    assert!(matches!(e, BackendError::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains("ignored"), "{e}");
}

#[tokio::test]
async fn older_builds_that_reject_echo_fall_back_too() {
    if !have_python() {
        return;
    }
    let d = Double::llama_server(&["--echo", "reject"]);
    let mut b = backend(&d.url(), json!({}));
    let info = b.start().await.unwrap();
    let echo = info.details["echo_probe"].as_str().unwrap();
    assert!(echo.contains("Only no echo is supported"), "{echo}");
    assert_eq!(
        b.capabilities().loglikelihood,
        LoglikelihoodSupport::TopN { n: 100 }
    );
}

#[tokio::test]
async fn top_n_over_the_whole_vocabulary_equals_echo_prompt_logprobs() {
    if !have_python() {
        return;
    }
    // The same synthetic model behind both flavours: llama.cpp teacher-forced top-N with N = the
    // vocabulary (every token exact), and vLLM echo of the prompt.
    let llama = Double::llama_server(&["--cache-ram", "0"]);
    let vllm = Double::llama_server(&["--flavour", "vllm"]);
    let mut a = backend(&llama.url(), json!({"top_n": 49152}));
    let mut b = backend(&vllm.url(), json!({}));
    let info = a.start().await.unwrap();
    assert_eq!(info.details["reproducible"], true);
    let info = b.start().await.unwrap();
    assert_eq!(info.server, "vLLM");
    assert_eq!(
        info.details["echo_probe"],
        "prompt log-probabilities returned"
    );
    assert_eq!(b.capabilities().loglikelihood, LoglikelihoodSupport::Echo);
    // A context of more than 64 tokens: every llama.cpp value from a large batch (the vLLM double
    // has no small-batch numerics).
    let req = LoglikelihoodRequest {
        context: long_context(),
        continuations: vec![
            " oxygen gas".into(),
            " carbon dioxide".into(),
            " water vapour".into(),
        ],
    };
    let x = a.loglikelihood(&req).await.unwrap();
    let y = b.loglikelihood(&req).await.unwrap();
    assert_eq!(y.method, "echo");
    assert_eq!(
        y.requests, 1,
        "one batched echo request (the tokenize calls are not counted)"
    );
    for (p, q) in x.scores.iter().zip(&y.scores) {
        assert!(p.exact && q.exact);
        assert_eq!(p.n_tokens, q.n_tokens);
        assert!(p.n_tokens >= 2, "multi-token continuations");
        assert!(
            (p.logprob - q.logprob).abs() < 1e-9,
            "{} vs {}",
            p.logprob,
            q.logprob
        );
        assert_eq!(p.is_greedy, q.is_greedy);
    }
}

#[tokio::test]
async fn bos_policy_model_default_prepends_bos_to_scored_tokens() {
    if !have_python() {
        return;
    }
    let d = Double::llama_server(&["--add-bos"]);
    let mut b = backend(&d.url(), json!({"bos": "model-default", "top_n": 5}));
    let info = b.start().await.unwrap();
    assert_eq!(info.details["model_adds_bos"], true);
    assert_eq!(info.details["bos_policy"], "model-default");
    b.loglikelihood(&LoglikelihoodRequest {
        context: "Hello there".into(),
        continuations: vec![" friend".into()],
    })
    .await
    .unwrap();
    let last = bodies(&d, "/completion").pop().unwrap();
    assert_eq!(last["prompt"][0], 1, "BOS first: {last}");
}

#[tokio::test]
async fn generation_plain_and_streamed() {
    if !have_python() {
        return;
    }
    let d = Double::llama_server(&[]);
    let mut b = backend(&d.url(), json!({}));
    b.start().await.unwrap();
    // The recorded /v1/completions exchange: an immediate end of sequence.
    let r = b
        .generate(&GenerateRequest {
            prompt: CONTEXT.into(),
            chat: false,
            max_tokens: 8,
            stop: vec![],
            stream: false,
        })
        .await
        .unwrap();
    assert_eq!(r.text, "");
    assert_eq!((r.tokens_in, r.tokens_out), (Some(12), Some(1)));
    assert_eq!(r.token_count_source, TokenCountSource::Usage);
    assert_eq!(r.finish_reason.as_deref(), Some("stop"));
    // The recorded stream.
    let r = b
        .generate(&GenerateRequest {
            prompt: CONTEXT.into(),
            chat: false,
            max_tokens: 8,
            stop: vec![],
            stream: true,
        })
        .await
        .unwrap();
    assert_eq!(
        (r.tokens_in, r.cached_tokens, r.tokens_out),
        (Some(12), Some(11), Some(1))
    );
    // A synthesised chat stream with usage in a last event without choices.
    let r = b
        .generate(&GenerateRequest {
            prompt: "Say hello hello hello".into(),
            chat: true,
            max_tokens: 6,
            stop: vec![],
            stream: true,
        })
        .await
        .unwrap();
    assert!(r.ttft_s.is_some());
    assert_eq!(r.tokens_out, Some(6));
    assert!(r.tokens_in.unwrap() > 20, "the chat template counts");
    assert_eq!(r.token_count_source, TokenCountSource::Usage);
    assert!(!r.text.is_empty());
    let chat = bodies(&d, "/v1/chat/completions").pop().unwrap();
    assert_eq!(chat["stream_options"]["include_usage"], true);
    assert!(chat["messages"][0]["content"].is_string());
    // Client-side stop: the text is cut at the stop string.
    let full = b
        .generate(&GenerateRequest {
            prompt: "one two one two".into(),
            chat: false,
            max_tokens: 6,
            stop: vec![],
            stream: false,
        })
        .await
        .unwrap();
    let word = full.text.split_whitespace().nth(1).unwrap().to_string();
    let cut = b
        .generate(&GenerateRequest {
            prompt: "one two one two".into(),
            chat: false,
            max_tokens: 6,
            stop: vec![word.clone()],
            stream: false,
        })
        .await
        .unwrap();
    assert!(!cut.text.contains(&word), "{:?} cut at {word:?}", cut.text);
    assert!(full.text.starts_with(&cut.text));
}

#[tokio::test]
async fn headers_go_out_in_title_case() {
    if !have_python() {
        return;
    }
    let d = Double::llama_server(&[]);
    let mut b = backend(&d.url(), json!({"top_n": 5}));
    b.start().await.unwrap();
    b.loglikelihood(&LoglikelihoodRequest {
        context: CONTEXT.into(),
        continuations: vec![" Paris".into()],
    })
    .await
    .unwrap();
    let reqs = d.requests();
    assert!(reqs.len() > 5);
    for r in &reqs {
        let names: Vec<&str> = r["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h[0].as_str().unwrap())
            .collect();
        for n in &names {
            assert!(
                n.split('-')
                    .all(|w| w.chars().next().is_some_and(|c| c.is_ascii_uppercase())),
                "{n} in {names:?}"
            );
        }
        if r["method"] == "POST" {
            assert!(names.contains(&"Content-Length"), "{names:?}");
        }
    }
}

#[tokio::test]
async fn a_dead_server_is_reported_not_waited_on() {
    if !have_python() {
        return;
    }
    let mut d = Double::llama_server(&[]);
    let mut b = backend(&d.url(), json!({"top_n": 5, "retries": 2}));
    b.start().await.unwrap();
    d.kill();
    let t0 = Instant::now();
    let e = b
        .loglikelihood(&LoglikelihoodRequest {
            context: CONTEXT.into(),
            continuations: vec![" Paris".into()],
        })
        .await
        .unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(matches!(e, BackendError::Unavailable { .. }), "{e}");
    assert!(e.to_string().contains("did the server die"), "{e}");
    // Nothing listens at all: start itself reports it.
    let mut c = backend(&d.url(), json!({"retries": 0}));
    let e = c.start().await.unwrap_err();
    assert!(matches!(e, BackendError::Unavailable { .. }), "{e}");
}

/// Sends raw bytes and returns the raw reply (the double closes the connection on errors, and on
/// `Connection: close`).
fn raw(port: u16, request: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn the_double_answers_the_recorded_edge_cases_like_llama_server() {
    if !have_python() {
        return;
    }
    let d = Double::llama_server(&[]);
    let recorded = |name: &str| {
        let t = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/llama-server")
                .join(name),
        )
        .unwrap();
        t.split("\r\n\r\n").next().unwrap().to_string()
    };
    // Not JSON: 400 with an `error` object and `Connection: close`, headers as recorded.
    let body = r#"{"prompt": [1, 2"#;
    let r = raw(
        d.port,
        &format!(
            "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    let (head, reply) = r.split_once("\r\n\r\n").unwrap();
    let want = recorded("bad_json.http");
    let strip_len = |h: &str| {
        h.lines()
            .filter(|l| !l.starts_with("Content-Length"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip_len(head), strip_len(&want));
    let v: Value = serde_json::from_str(reply).unwrap();
    assert_eq!(v["error"]["code"], 400);
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("[json.exception.parse_error.101]"));
    // A lower-case content-length and array content are accepted (recorded).
    let body =
        r#"{"messages":[{"role":"user","content":[{"type":"text","text":"Hi"}]}],"max_tokens":4}"#;
    let r = raw(
        d.port,
        &format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(
        r.starts_with("HTTP/1.1 200 OK\r\nServer: llama.cpp\r\n"),
        "{r}"
    );
    let v: Value = serde_json::from_str(r.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["usage"]["completion_tokens"], 4);
    // The recorded health reply, byte for byte.
    let r = raw(
        d.port,
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let want = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/llama-server/health.http"),
    )
    .unwrap();
    assert_eq!(r, want);
}

/// A context of about `n` tokens for the double's tokenizer (one word, one token), unique per `tag`.
fn words(tag: &str, n: usize) -> String {
    let names = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"];
    let mut c = format!("Item {tag}:");
    for i in 0..n {
        c.push(' ');
        c.push_str(names[i % names.len()]);
    }
    c.push_str("\nAnswer:");
    c
}

fn plants() -> LoglikelihoodRequest {
    LoglikelihoodRequest {
        context: long_context(),
        continuations: vec![
            " oxygen gas".into(),
            " carbon dioxide".into(),
            " water vapour".into(),
            " O two".into(),
        ],
    }
}

#[tokio::test]
async fn single_pass_values_are_a_full_evaluation_and_repeat_while_cached_ones_are_never_exact() {
    if !have_python() {
        return;
    }
    let d = Double::llama_server(&["--cache-ram", "0"]);
    // The double's model without llama.cpp's small-batch numerics: vLLM's echo.
    let vllm = Double::llama_server(&["--flavour", "vllm"]);
    let mut t = backend(&vllm.url(), json!({}));
    t.start().await.unwrap();
    let truth = t.loglikelihood(&plants()).await.unwrap();

    let mut sp = backend(&d.url(), json!({"top_n": 49152}));
    sp.start().await.unwrap();
    let first = sp.loglikelihood(&plants()).await.unwrap();
    // Another item on the pinned slot, then the same item again.
    sp.loglikelihood(&LoglikelihoodRequest {
        context: long_context().replace("plants", "trees"),
        continuations: vec![" leaves".into()],
    })
    .await
    .unwrap();
    let again = sp.loglikelihood(&plants()).await.unwrap();
    for ((a, b), t) in first.scores.iter().zip(&again.scores).zip(&truth.scores) {
        assert!(a.exact && b.exact);
        assert_eq!(a.logprob, b.logprob, "the same command, the same numbers");
        assert!(
            (a.logprob - t.logprob).abs() < 1e-9,
            "{} vs {}",
            a.logprob,
            t.logprob
        );
    }
    // Every request evaluated at least 64 new tokens: cuts, steps and finals on slot 0, besides
    // the start-up check's evaluations on the neighbouring slot (no top N asked).
    assert!(bodies(&d, "/completion")
        .iter()
        .skip(1)
        .all(|b| b["id_slot"] == 0
            || b["cache_prompt"] == false
            || (b["id_slot"] == 1 && b["n_predict"] == 0)));

    // The cached mode: the prompt cache makes each continuation token a batch of one.
    let mut cached = backend(&d.url(), json!({"top_n": 49152, "top_n_mode": "cached"}));
    let info = cached.start().await.unwrap();
    assert_eq!(info.details["top_n_mode"], "cached");
    assert_eq!(info.details["reproducible"], false);
    assert!(info.details.get("single_pass_check").is_none());
    assert_eq!(cached.capabilities().max_concurrency, 2, "the slots");
    let c = cached.loglikelihood(&plants()).await.unwrap();
    assert!(c.scores.iter().all(|x| !x.exact), "never vouched for");
    let off = c
        .scores
        .iter()
        .zip(&truth.scores)
        .map(|(x, t)| (x.logprob - t.logprob).abs())
        .fold(0.0, f64::max);
    assert!(off > 1e-3, "small-batch numbers differ: {off}");
}

#[tokio::test]
async fn the_start_up_check_notices_kernels_that_switch_above_min_batch_tokens() {
    if !have_python() {
        return;
    }
    // A server whose large-batch kernels start at 128 rows.
    let d = Double::llama_server(&["--min-batch", "128", "--cache-ram", "0"]);
    let mut b = backend(&d.url(), json!({"top_n": 49152}));
    let info = b.start().await.unwrap();
    let check = &info.details["single_pass_check"];
    assert_eq!(check["passed"], false, "{check}");
    assert!(
        check["max_abs_diff_nats"].as_f64().unwrap() > 1e-3,
        "{check}"
    );
    assert_eq!(info.details["reproducible"], false);
    let r = b.loglikelihood(&plants()).await.unwrap();
    assert!(r.scores.iter().all(|s| !s.exact), "no value vouched for");
    // Told the size, the method holds again.
    let mut b = backend(&d.url(), json!({"top_n": 49152, "min_batch_tokens": 128}));
    let info = b.start().await.unwrap();
    assert_eq!(info.details["single_pass_check"]["passed"], true);
    assert_eq!(info.details["min_batch_tokens"], 128);
    let r = b.loglikelihood(&plants()).await.unwrap();
    assert!(r.scores.iter().all(|s| s.exact));
}

#[tokio::test]
async fn a_ram_prompt_cache_is_noticed_and_no_value_is_vouched_for() {
    if !have_python() {
        return;
    }
    // llama-server's default: a RAM prompt cache that restores earlier prompts into the slot.
    let d = Double::llama_server(&[]);
    let mut b = backend(&d.url(), json!({"top_n": 49152}));
    let info = b.start().await.unwrap();
    let check = &info.details["single_pass_check"];
    assert_eq!(check["passed"], false, "{check}");
    assert!(
        check["why"].as_str().unwrap().contains("--cache-ram 0"),
        "{check}"
    );
    assert_eq!(info.details["reproducible"], false);
    assert!(
        info.warnings
            .iter()
            .any(|w| w.contains("single-pass check failed") && w.contains("--cache-ram 0")),
        "said on screen: {:?}",
        info.warnings
    );
    let r = b.loglikelihood(&plants()).await.unwrap();
    assert!(r.scores.iter().all(|s| !s.exact));
}

#[tokio::test]
async fn on_a_kv_cache_unified_across_slots_every_single_pass_number_comes_from_one_slot() {
    if !have_python() {
        return;
    }
    // llama-server's default layout (-np auto: 4 slots, one KV buffer): the same full evaluation
    // gives other numbers on slots 1-3 than on slot 0 (measured on the real server: up to 0.43
    // nats). The start-up check once compared a full evaluation on whichever slot the server chose
    // with the method on slot 0, and failed on the real server whenever the server chose another
    // slot (every run after the first on a server that had served before).
    let d = Double::llama_server(&[
        "--slots",
        "4",
        "--unified",
        "--ctx",
        "4096",
        "--cache-ram",
        "0",
    ]);
    // Fill the other slots first, as earlier clients leave them.
    let mut cached = backend(&d.url(), json!({"top_n": 49152, "top_n_mode": "cached"}));
    cached.start().await.unwrap();
    let c = cached.loglikelihood(&plants()).await.unwrap();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let mut b = backend(&d.url(), json!({"top_n": 49152}));
        let info = b.start().await.unwrap();
        assert_eq!(
            info.details["single_pass_check"]["passed"], true,
            "{info:?}"
        );
        assert!(info.warnings.is_empty(), "{:?}", info.warnings);
        runs.push(b.loglikelihood(&plants()).await.unwrap());
    }
    for (a, b) in runs[0].scores.iter().zip(&runs[1].scores) {
        assert!(a.exact && b.exact);
        assert_eq!(a.logprob, b.logprob, "the same command, the same numbers");
    }
    assert!(
        bodies(&d, "/completion")
            .iter()
            .filter(|b| b["n_probs"].as_u64().unwrap_or(0) > 0 && b.get("id_slot").is_some())
            .all(|b| b["id_slot"] == 0),
        "every top-N request of the single-pass mode on slot 0"
    );
    // What another slot gives is not the same (the cached mode spreads over the slots).
    assert!(c.scores.iter().all(|x| !x.exact));
}

#[tokio::test]
async fn on_a_unified_kv_cache_with_history_single_pass_values_equal_a_full_evaluation() {
    if !have_python() {
        return;
    }
    // llama-server's default layout with other slots holding tokens (earlier clients): the pinned
    // slot's sequence would start after their cells, and the numbers move with the cell where it
    // starts (measured on the real server: up to 0.71 nats). The backend makes the server purge the
    // other slots (a fill prompt that cannot fit beside them) so that it starts at cell 0.
    let d = Double::llama_server(&[
        "--slots",
        "4",
        "--unified",
        "--ctx",
        "4096",
        "--cache-ram",
        "0",
    ]);
    let vllm = Double::llama_server(&["--flavour", "vllm"]);
    let mut t = backend(&vllm.url(), json!({}));
    t.start().await.unwrap();
    let truth = t.loglikelihood(&plants()).await.unwrap();
    // History: the cached mode spreads an item over the slots.
    let mut cached = backend(&d.url(), json!({"top_n": 49152, "top_n_mode": "cached"}));
    cached.start().await.unwrap();
    cached.loglikelihood(&plants()).await.unwrap();
    let mut b = backend(&d.url(), json!({"top_n": 49152}));
    let info = b.start().await.unwrap();
    let r = b.loglikelihood(&plants()).await.unwrap();
    for (a, t) in r.scores.iter().zip(&truth.scores) {
        assert!(a.exact);
        assert!(
            (a.logprob - t.logprob).abs() < 1e-9,
            "{} vs {}",
            a.logprob,
            t.logprob
        );
    }
    assert_eq!(info.details["kv_cache"]["kv_unified"], true, "{info:?}");
    assert!(info.details["kv_cache"]["fill_tokens"].as_u64().unwrap() > 0);
    assert!(info.details["exact_means"]
        .as_str()
        .unwrap()
        .starts_with("equal to a single-pass evaluation"));
    assert!(info.warnings.is_empty(), "{:?}", info.warnings);
    // A fresh start on the same server: the other slots stay empty, nothing to purge.
    let mut again = backend(&d.url(), json!({"top_n": 49152}));
    let info = again.start().await.unwrap();
    assert_eq!(info.details["kv_cache"]["other_slots"], "empty", "{info:?}");
    let r2 = again.loglikelihood(&plants()).await.unwrap();
    for (a, b) in r.scores.iter().zip(&r2.scores) {
        assert_eq!(a.logprob, b.logprob);
    }
}

#[tokio::test]
async fn a_unified_kv_cache_that_cannot_be_emptied_is_said_in_the_warnings() {
    if !have_python() {
        return;
    }
    // No /slots endpoint: what the other slots hold is unknown, and the label says so.
    let d = Double::llama_server(&[
        "--slots",
        "4",
        "--unified",
        "--ctx",
        "4096",
        "--cache-ram",
        "0",
        "--no-slots",
    ]);
    let mut b = backend(&d.url(), json!({"top_n": 49152}));
    let info = b.start().await.unwrap();
    assert_eq!(
        info.details["kv_cache"]["kv_unified"],
        Value::Null,
        "{info:?}"
    );
    assert!(info.details["exact_means"]
        .as_str()
        .unwrap()
        .contains("--no-kv-unified"));
    assert!(
        info.warnings.iter().any(|w| w.contains("--no-kv-unified")),
        "{:?}",
        info.warnings
    );
}

#[tokio::test]
async fn requests_in_flight_never_hold_more_tokens_than_the_shared_pool() {
    if !have_python() {
        return;
    }
    // Four slots sharing a 512-token KV pool (llama-server -c 512 -np 4 -kvu): two prompts of
    // about 300 tokens at once overflow it (HTTP 500, recorded).
    let d = Double::llama_server(&[
        "--slots",
        "4",
        "--ctx",
        "512",
        "--unified",
        "--delay-ms",
        "0.5",
    ]);
    let mut b = backend(
        &d.url(),
        json!({"top_n": 5, "top_n_mode": "cached", "retries": 0}),
    );
    let info = b.start().await.unwrap();
    assert_eq!(b.capabilities().max_concurrency, 4);
    assert_eq!(info.details["kv_budget_tokens"], 512);
    let reqs: Vec<LoglikelihoodRequest> = (0..6)
        .map(|i| LoglikelihoodRequest {
            context: words(&format!("{i}"), 300),
            continuations: vec![" alpha beta".into(), " gamma".into()],
        })
        .collect();
    let results = futures_util::future::join_all(reqs.iter().map(|r| b.loglikelihood(r))).await;
    for r in &results {
        assert!(r.is_ok(), "{r:?}");
    }
    let peak = d
        .requests()
        .iter()
        .filter(|r| r["event"] == "peak_pool")
        .map(|r| r["tokens"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(
        (300..=512).contains(&peak),
        "peak of prompt tokens in flight: {peak}"
    );
}

#[tokio::test]
async fn an_item_longer_than_a_slot_is_an_invalid_request_and_nothing_is_sent() {
    if !have_python() {
        return;
    }
    let d = Double::llama_server(&[]);
    let mut b = backend(&d.url(), json!({"top_n": 5}));
    b.start().await.unwrap();
    let before = bodies(&d, "/completion").len();
    let e = b
        .loglikelihood(&LoglikelihoodRequest {
            context: words("long", 2100),
            continuations: vec![" alpha".into()],
        })
        .await
        .unwrap_err();
    assert!(matches!(e, BackendError::InvalidRequest { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("more than the server's context of 2048"),
        "{e}"
    );
    assert_eq!(bodies(&d, "/completion").len(), before, "nothing sent");
}

#[tokio::test]
async fn a_server_that_stops_listening_is_given_up_within_seconds() {
    if !have_python() {
        return;
    }
    let d = Double::llama_server(&[]);
    let mut b = backend(
        &d.url(),
        json!({"top_n": 5, "liveness_interval_s": 0.2, "timeout_s": 600.0}),
    );
    let info = b.start().await.unwrap();
    assert_eq!(info.details["liveness_check_s"], 0.2);
    // SIGTERM: the double closes its listener but keeps the connection the client pooled, and
    // answers nothing more (llama-server's queued requests after SIGTERM, recorded).
    d.terminate();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", d.port)).is_ok() {
        assert!(Instant::now() < deadline, "the double still accepts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent = d.requests().len();
    let t0 = Instant::now();
    let e = b.loglikelihood(&plants()).await.unwrap_err();
    assert!(matches!(e, BackendError::Unavailable { .. }), "{e}");
    assert!(
        e.to_string().contains("stopped accepting connections"),
        "{e}"
    );
    assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", t0.elapsed());
    assert!(
        d.requests().len() > sent,
        "the request reached the server on the kept connection and was left pending"
    );
}

#[tokio::test]
async fn the_double_overflows_a_shared_pool_and_refuses_long_prompts_as_recorded() {
    if !have_python() {
        return;
    }
    let recorded = |name: &str| {
        std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/llama-server")
                .join(name),
        )
        .unwrap()
    };
    let post = |port: u16, ids: &[u32]| {
        let body = json!({"prompt": ids, "n_predict": 1, "n_probs": 1}).to_string();
        raw(
            port,
            &format!(
                "POST /completion HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    // A prompt as long as a slot's context (2048): the recorded 400, byte for byte.
    let d = Double::llama_server(&[]);
    let ids: Vec<u32> = (0..2053).map(|i| 100 + i % 500).collect();
    assert_eq!(post(d.port, &ids), recorded("completion_too_long.http"));
    // A second 400-token prompt while the first is evaluated, in a 512-token shared pool.
    let d = Double::llama_server(&[
        "--slots",
        "4",
        "--ctx",
        "512",
        "--unified",
        "--delay-ms",
        "50",
    ]);
    let port = d.port;
    let first = std::thread::spawn(move || post(port, &(100..500).collect::<Vec<u32>>()));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let slots = raw(
            d.port,
            "GET /slots HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        if slots.contains("\"is_processing\":true") {
            break;
        }
        assert!(Instant::now() < deadline, "the first request never started");
    }
    let second = post(d.port, &(600..1000).collect::<Vec<u32>>());
    assert_eq!(second, recorded("completion_context_exceeded.http"));
    drop(d);
    let _ = first.join();
}
