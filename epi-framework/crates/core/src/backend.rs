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
    /// What the user must know before trusting the numbers (a start-up check that failed, a
    /// setting the server ignores): the run shows each on screen and in its log.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
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

    /// What [`start`](InferenceBackend::start) is waiting for, for a progress display: take the
    /// receiver before calling `start` and show each change ([`StartupProgress`] implements
    /// `Display`). `None` (the default) for backends that start at once.
    fn startup_progress(&self) -> Option<tokio::sync::watch::Receiver<Option<StartupProgress>>> {
        None
    }
}

/// What a starting backend is waiting for (set by the backend about once a second while it waits;
/// `None` in the channel when it waits for nothing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartupProgress {
    /// What it waits for: `dllama-api on 127.0.0.1:9990 (loading the model)`.
    pub waiting_for: String,
    /// Seconds waited so far for it.
    pub elapsed_s: f64,
    /// The most it will wait, s.
    pub limit_s: f64,
}

impl std::fmt::Display for StartupProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "waiting for {}, {:.0} s of {:.0} s",
            self.waiting_for, self.elapsed_s, self.limit_s
        )
    }
}

/// Which progress updates are worth a line on a plain (non-redrawing) output: the first of each
/// new thing waited for, then one every `every_s` seconds while it lasts.
#[derive(Debug, Clone)]
pub struct ProgressLines {
    every_s: f64,
    last: Option<(String, f64)>,
}

impl ProgressLines {
    /// A filter printing at most one line per `every_s` seconds of the same wait.
    pub fn new(every_s: f64) -> ProgressLines {
        ProgressLines {
            every_s,
            last: None,
        }
    }

    /// Whether `p` deserves a line (and, if so, remembers it).
    pub fn offer(&mut self, p: &StartupProgress) -> bool {
        let due = match &self.last {
            Some((what, at)) => *what != p.waiting_for || p.elapsed_s >= at + self.every_s,
            None => true,
        };
        if due {
            self.last = Some((p.waiting_for.clone(), p.elapsed_s));
        }
        due
    }
}

/// Calls `show` with the updates [`ProgressLines`] lets through until the channel closes (the
/// backend was dropped); meant to run beside `start` in a `select!`.
pub async fn follow_startup_progress(
    mut rx: tokio::sync::watch::Receiver<Option<StartupProgress>>,
    every_s: f64,
    mut show: impl FnMut(&StartupProgress),
) {
    let mut lines = ProgressLines::new(every_s);
    loop {
        let current = rx.borrow_and_update().clone();
        if let Some(p) = current {
            if lines.offer(&p) {
                show(&p);
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(what: &str, s: f64) -> Option<StartupProgress> {
        Some(StartupProgress {
            waiting_for: what.into(),
            elapsed_s: s,
            limit_s: 900.0,
        })
    }

    #[test]
    fn progress_lines_on_each_new_wait_and_every_interval() {
        let mut lines = ProgressLines::new(10.0);
        let shown: Vec<String> = [
            at("worker on a:1", 0.0),
            at("worker on a:1", 4.0),
            at("worker on a:1", 10.0),
            at("dllama-api on a:2 (loading the model)", 10.5),
            at("dllama-api on a:2 (loading the model)", 20.0),
            at("dllama-api on a:2 (loading the model)", 25.0),
        ]
        .into_iter()
        .flatten()
        .filter(|p| lines.offer(p))
        .map(|p| p.to_string())
        .collect();
        assert_eq!(
            shown,
            [
                "waiting for worker on a:1, 0 s of 900 s",
                "waiting for worker on a:1, 10 s of 900 s",
                "waiting for dllama-api on a:2 (loading the model), 10 s of 900 s",
                "waiting for dllama-api on a:2 (loading the model), 25 s of 900 s",
            ]
        );
    }

    #[tokio::test]
    async fn following_ends_when_the_backend_drops_its_sender() {
        let (tx, rx) = tokio::sync::watch::channel(at("x", 1.0));
        let follower = tokio::spawn(async move {
            let mut n = 0;
            follow_startup_progress(rx, 10.0, |_| n += 1).await;
            n
        });
        drop(tx);
        assert_eq!(follower.await.unwrap(), 1);
    }
}
