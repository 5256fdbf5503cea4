//! Against a live llama.cpp `llama-server` (never in CI): set `EPI_LLAMA_SERVER=http://host:port`.
//!
//! ```text
//! EPI_LLAMA_SERVER=http://127.0.0.1:8080 cargo test -p epi-backends --test live_llama_server -- --nocapture
//! ```
//!
//! Checks what the recordings say the server does: `echo` is not trusted, the single-pass top-N
//! check passes, the same item scored twice (with another item between) gives the same numbers,
//! the cached mode's numbers are never marked exact, tokenize calls are not counted as requests,
//! and a streamed generation reports its first token.

use epi_backends::openai::{OpenAiBackend, OpenAiConfig, TopNMode};
use epi_core::backend::{
    GenerateRequest, InferenceBackend, LoglikelihoodRequest, LoglikelihoodSupport,
};

/// A few-shot context of a few hundred tokens.
fn context(topic: &str) -> String {
    let mut c = String::new();
    for (q, a) in [
        ("Which gas do plants take in?", "carbon dioxide"),
        ("What do bees make from nectar?", "honey"),
        ("Which planet is closest to the sun?", "Mercury"),
        ("What is frozen water called?", "ice"),
        ("Which organ pumps blood around the body?", "the heart"),
        ("What force pulls objects toward the Earth?", "gravity"),
        ("Which instrument measures temperature?", "a thermometer"),
        ("What do caterpillars turn into?", "butterflies or moths"),
    ] {
        c.push_str(&format!("Question: {q}\nAnswer: {a}\n\n"));
    }
    c.push_str(&format!(
        "Question: Which gas do {topic} give off?\nAnswer:"
    ));
    c
}

fn item(topic: &str) -> LoglikelihoodRequest {
    LoglikelihoodRequest {
        context: context(topic),
        continuations: vec![
            " oxygen".into(),
            " carbon dioxide".into(),
            " nitrogen and argon".into(),
            " water vapour".into(),
        ],
    }
}

#[tokio::test]
async fn a_live_llama_server() {
    let Ok(url) = std::env::var("EPI_LLAMA_SERVER") else {
        eprintln!("skipping: EPI_LLAMA_SERVER is not set (a live llama-server URL)");
        return;
    };
    let mut c = OpenAiConfig::new(url.clone());
    c.top_n = 100;
    let mut b = OpenAiBackend::new("openai", c);
    let info = b.start().await.expect("start");
    println!("{}", serde_json::to_string_pretty(&info).unwrap());
    // The recorded behaviour: echo is not trusted, the top-N method is used.
    assert!(info.details["echo_probe"].as_str().is_some());
    assert_eq!(
        b.capabilities().loglikelihood,
        LoglikelihoodSupport::TopN { n: 100 }
    );
    assert_eq!(info.details["top_n_mode"], "single-pass");
    assert_eq!(
        info.details["single_pass_check"]["passed"], true,
        "{}",
        info.details["single_pass_check"]
    );
    assert_eq!(info.details["reproducible"], true);
    assert!(info.details["kv_budget_tokens"].as_u64().is_some());

    let first = b
        .loglikelihood(&item("plants"))
        .await
        .expect("loglikelihood");
    println!("{first:#?}");
    assert_eq!(first.scores.len(), 4);
    assert!(first
        .scores
        .iter()
        .all(|s| s.logprob < 0.0 && s.n_tokens >= 1));
    assert!(first.scores.iter().any(|s| s.exact));
    let n_tokens: u32 = first.scores.iter().map(|s| s.n_tokens).sum();
    assert!(
        first.requests >= n_tokens - 3,
        "at least one scoring request per distinct prefix: {}",
        first.requests
    );
    b.loglikelihood(&item("trees")).await.expect("another item");
    let again = b.loglikelihood(&item("plants")).await.expect("again");
    for (x, y) in first.scores.iter().zip(&again.scores) {
        assert_eq!(x.logprob, y.logprob, "the same item, the same numbers");
        assert_eq!(x.exact, y.exact);
    }

    // The cached mode: faster, never marked exact.
    let mut c = OpenAiConfig::new(url);
    c.top_n = 100;
    c.top_n_mode = TopNMode::Cached;
    let mut cached = OpenAiBackend::new("openai", c);
    let info = cached.start().await.expect("start (cached)");
    assert_eq!(info.details["reproducible"], false);
    let r = cached.loglikelihood(&item("plants")).await.expect("cached");
    println!("cached: {r:#?}");
    assert!(r.scores.iter().all(|s| !s.exact));
    let worst = r
        .scores
        .iter()
        .zip(&first.scores)
        .map(|(x, y)| (x.logprob - y.logprob).abs())
        .fold(0.0, f64::max);
    println!("cached vs single-pass: largest difference {worst:.6} nats");

    let g = b
        .generate(&GenerateRequest {
            prompt: "The capital of France is".into(),
            chat: false,
            max_tokens: 8,
            stop: vec![],
            stream: true,
        })
        .await
        .expect("generate");
    println!("{g:#?}");
    assert!(g.ttft_s.is_some());
    b.stop().await.unwrap();
    cached.stop().await.unwrap();
}
