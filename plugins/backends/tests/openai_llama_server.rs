//! The `openai` backend against the replaying llama-server double (and its vLLM flavour).

mod common;

use common::{have_python, Double};
use epi_backends::openai::{OpenAiBackend, OpenAiConfig};
use epi_framework::backend::{
    BackendError, GenerateRequest, InferenceBackend, LoglikelihoodRequest, LoglikelihoodSupport,
    TokenCountSource,
};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const CONTEXT: &str = "Question: What is the capital of France?\nAnswer:";

fn backend(url: &str, extra: Value) -> OpenAiBackend {
    let mut v = json!({"url": url, "retry_backoff_s": 0.05});
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, x) in e {
            o.insert(k.clone(), x.clone());
        }
    }
    let c: OpenAiConfig = epi_framework::registry::parse_config("openai", &v).unwrap();
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
    let d = Double::llama_server(&[]);
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
    let caps = b.capabilities();
    assert_eq!(caps.loglikelihood, LoglikelihoodSupport::TopN { n: 20 });
    assert_eq!(caps.max_concurrency, 2, "llama-server's total_slots");

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
    // One top-N request for the three one-token continuations (they share the context).
    assert_eq!(
        bodies(&d, "/completion").len(),
        1 + 1,
        "probe + one scoring request"
    );
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
        assert_eq!(req["n_predict"], 1);
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
    let llama = Double::llama_server(&[]);
    let vllm = Double::llama_server(&["--flavour", "vllm"]);
    let mut a = backend(&llama.url(), json!({"top_n": 49152}));
    let mut b = backend(&vllm.url(), json!({}));
    a.start().await.unwrap();
    let info = b.start().await.unwrap();
    assert_eq!(info.server, "vLLM");
    assert_eq!(
        info.details["echo_probe"],
        "prompt log-probabilities returned"
    );
    assert_eq!(b.capabilities().loglikelihood, LoglikelihoodSupport::Echo);
    let req = LoglikelihoodRequest {
        context: "Question: Which gas do plants take in?\nAnswer: carbon dioxide\n\nQuestion: Which gas do plants give off?\nAnswer:".into(),
        continuations: vec![" oxygen gas".into(), " carbon dioxide".into(), " water vapour".into()],
    };
    let x = a.loglikelihood(&req).await.unwrap();
    let y = b.loglikelihood(&req).await.unwrap();
    assert_eq!(y.method, "echo");
    assert_eq!(
        y.requests, 5,
        "tokenize the context once and each context + continuation, then one batched echo request"
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
