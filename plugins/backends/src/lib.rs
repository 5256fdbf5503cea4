//! epi-bench inference backends: OpenAI-compatible HTTP servers and distributed-llama over SSH.
//!
//! - [`openai`]: any OpenAI-compatible server (llama.cpp `llama-server`, vLLM, Ollama, dllama-api),
//!   with lm-eval-exact log-likelihoods where the server really provides them.
//! - [`distributed_llama`]: a distributed-llama cluster over SSH (workers + `dllama-api`, or
//!   `dllama inference` for throughput-only runs).
//! - [`loglik`]: lm-eval's continuation split and the teacher-forced top-N method.
//! - [`sse`]: the Server-Sent Events reader used for streamed replies.
#![deny(missing_docs)]

pub mod distributed_llama;
pub mod loglik;
pub mod openai;
pub mod sse;

/// Forces this crate's plugin registrations into a binary that links it (linkers drop archive
/// members nothing refers to, and `inventory` registrations are referred to by nothing).
#[inline(never)]
pub fn link() {
    std::hint::black_box(module_path!());
}
