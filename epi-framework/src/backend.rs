//! The [`InferenceBackend`] trait: an inference engine that answers prompts and, where it can,
//! scores continuations by log-likelihood.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// How accuracy is computed. Numbers from different modes are never mixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScoringMode {
    /// lm-evaluation-harness semantics: summed log-probability of each continuation.
    Loglikelihood,
    /// Greedy generation of a letter answer, parsed strictly (for servers without
    /// log-probabilities). Not comparable with published lm-eval numbers.
    Generative,
}

impl ScoringMode {
    /// `loglikelihood` or `generative`.
    pub fn as_str(self) -> &'static str {
        match self {
            ScoringMode::Loglikelihood => "loglikelihood",
            ScoringMode::Generative => "generative",
        }
    }
}

/// How a backend can return log-probabilities of a given continuation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum LoglikelihoodSupport {
    /// No log-probabilities at all: only generative scoring.
    None,
    /// Prompt log-probabilities through `echo` + `logprobs` (vLLM): exact.
    Echo,
    /// Top-N next-token probabilities, teacher-forced token by token: exact only when every
    /// continuation token is within the top N; each item says whether it was.
    TopN {
        /// N.
        n: u32,
    },
}

/// What a backend can do, declared before a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendCapabilities {
    /// Log-likelihood support.
    pub loglikelihood: LoglikelihoodSupport,
    /// Plain-text completion (`/v1/completions`).
    pub completions: bool,
    /// Chat completion (`/v1/chat/completions`).
    pub chat: bool,
    /// Streaming, for time to first token.
    pub streaming: bool,
    /// The server can tokenize text (token counts without `usage`, continuation splitting).
    pub tokenizer: bool,
    /// Requests the server serves at once (1 for one-request-at-a-time servers).
    pub max_concurrency: usize,
}

/// What the backend is talking to, recorded with every run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BackendInfo {
    /// Backend registry key (`openai`, `distributed-llama`).
    pub backend: String,
    /// The server software (`llama.cpp llama-server`, `vLLM`, `dllama-api`).
    pub server: String,
    /// The server's version, when it says.
    pub version: Option<String>,
    /// The model served.
    pub model: Option<String>,
    /// Anything else worth recording (cluster layout, BOS policy, endpoints).
    #[serde(default)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// A generation request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    /// The prompt text (for chat, the single user message).
    pub prompt: String,
    /// Send as a chat message rather than a raw completion.
    pub chat: bool,
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// Stop strings (servers that ignore them are truncated client-side).
    #[serde(default)]
    pub stop: Vec<String>,
    /// Stream the reply (measures time to first token).
    pub stream: bool,
}

/// Where a token count came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenCountSource {
    /// The server's `usage` object.
    Usage,
    /// The server's tokenizer applied to the text.
    Tokenizer,
    /// Not known.
    Unknown,
}

/// A generation reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateResponse {
    /// The generated text.
    pub text: String,
    /// Prompt tokens processed, when known.
    pub tokens_in: Option<u64>,
    /// Tokens generated, when known.
    pub tokens_out: Option<u64>,
    /// Where the counts came from.
    pub token_count_source: TokenCountSource,
    /// Prompt tokens served from a prefix cache, when the server says.
    pub cached_tokens: Option<u64>,
    /// Seconds to the first streamed token.
    pub ttft_s: Option<f64>,
    /// Seconds from request to complete reply.
    pub latency_s: f64,
    /// The server's finish reason, as given.
    pub finish_reason: Option<String>,
}

/// A log-likelihood request: one context, several continuations (each already starting with the
/// target delimiter, e.g. `" Paris"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoglikelihoodRequest {
    /// The context.
    pub context: String,
    /// The continuations to score.
    pub continuations: Vec<String>,
}

/// The score of one continuation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContinuationScore {
    /// Σ log P(continuation tokens | context).
    pub logprob: f64,
    /// Number of continuation tokens.
    pub n_tokens: u32,
    /// False when the method could not obtain the exact value (a token outside the top N).
    pub exact: bool,
    /// True when every continuation token was the greedy choice, when known.
    pub is_greedy: Option<bool>,
}

/// A log-likelihood reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoglikelihoodResponse {
    /// One score per continuation, in order.
    pub scores: Vec<ContinuationScore>,
    /// The method used (`echo`, `top-n`).
    pub method: String,
    /// Prompt tokens processed over all requests this took.
    pub tokens_in: u64,
    /// Tokens generated over all requests this took.
    pub tokens_out: u64,
    /// Requests sent to the server.
    pub requests: u32,
    /// Seconds from first request to last reply.
    pub latency_s: f64,
    /// Prompt tokens served from the server's prefix cache over all requests, when it says.
    #[serde(default)]
    pub cached_tokens: Option<u64>,
}

/// Why a backend call failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend cannot do this (e.g. log-likelihood on a server without log-probabilities).
    #[error("{backend}: unsupported: {message}")]
    Unsupported {
        /// Backend key.
        backend: String,
        /// What is not supported, and what to use instead.
        message: String,
    },
    /// The server died or is unreachable.
    #[error("{backend}: server unavailable: {message}")]
    Unavailable {
        /// Backend key.
        backend: String,
        /// What happened.
        message: String,
    },
    /// The server answered with an error or something unparseable.
    #[error("{backend}: bad reply: {message}")]
    BadReply {
        /// Backend key.
        backend: String,
        /// What was wrong.
        message: String,
    },
    /// A request timed out after all retries.
    #[error("{backend}: timed out after {attempts} attempt(s): {message}")]
    Timeout {
        /// Backend key.
        backend: String,
        /// Attempts made.
        attempts: u32,
        /// Details.
        message: String,
    },
    /// The request itself is invalid (validated before sending).
    #[error("{backend}: invalid request: {message}")]
    InvalidRequest {
        /// Backend key.
        backend: String,
        /// What was wrong.
        message: String,
    },
    /// Configuration or start-up failed (SSH, remote processes).
    #[error("{backend}: {message}")]
    Setup {
        /// Backend key.
        backend: String,
        /// What failed.
        message: String,
    },
}

/// An inference engine.
///
/// [`start`](InferenceBackend::start) prepares it (for distributed-llama: starts the remote
/// processes and waits until weights are loaded) and returns what it is;
/// [`stop`](InferenceBackend::stop) releases everything `start` created, and must be called on
/// every exit path.
#[async_trait]
pub trait InferenceBackend: Send + Sync {
    /// Prepares the backend and returns what it is talking to.
    async fn start(&mut self) -> Result<BackendInfo, BackendError>;

    /// What this backend can do (valid after `start`).
    fn capabilities(&self) -> BackendCapabilities;

    /// Generates text.
    async fn generate(&self, request: &GenerateRequest) -> Result<GenerateResponse, BackendError>;

    /// Scores continuations by log-likelihood.
    async fn loglikelihood(
        &self,
        request: &LoglikelihoodRequest,
    ) -> Result<LoglikelihoodResponse, BackendError>;

    /// Stops whatever `start` started. Safe to call twice.
    async fn stop(&mut self) -> Result<(), BackendError>;
}
