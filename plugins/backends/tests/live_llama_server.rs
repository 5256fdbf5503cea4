//! Against a live llama.cpp `llama-server` (never in CI): set `EPI_LLAMA_SERVER=http://host:port`.
//!
//! ```text
//! EPI_LLAMA_SERVER=http://127.0.0.1:8080 cargo test -p epi-backends --test live_llama_server -- --nocapture
//! ```

use epi_backends::openai::{OpenAiBackend, OpenAiConfig};
use epi_framework::backend::{
    GenerateRequest, InferenceBackend, LoglikelihoodRequest, LoglikelihoodSupport,
};

#[tokio::test]
async fn a_live_llama_server() {
    let Ok(url) = std::env::var("EPI_LLAMA_SERVER") else {
        eprintln!("skipping: EPI_LLAMA_SERVER is not set (a live llama-server URL)");
        return;
    };
    let mut c = OpenAiConfig::new(url);
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
    let r = b
        .loglikelihood(&LoglikelihoodRequest {
            context: "Question: What is the capital of France?\nAnswer:".into(),
            continuations: vec![
                " Paris".into(),
                " London".into(),
                " the city of Lyon".into(),
            ],
        })
        .await
        .expect("loglikelihood");
    println!("{r:#?}");
    assert_eq!(r.scores.len(), 3);
    assert!(r.scores.iter().all(|s| s.logprob < 0.0 && s.n_tokens >= 1));
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
}
