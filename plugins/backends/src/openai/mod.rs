//! `openai`: any OpenAI-compatible HTTP server — llama.cpp's `llama-server`, vLLM, Ollama's `/v1`,
//! distributed-llama's `dllama-api`.
//!
//! Generation goes through `/v1/completions` or `/v1/chat/completions` (streamed for time to first
//! token). Log-likelihoods follow lm-evaluation-harness exactly (see [`crate::loglik`]) through the
//! first method the server really has, found by probing at [`start`](InferenceBackend::start):
//!
//! 1. **echo** — `/v1/completions` with `echo: true, logprobs: 1` on token ids, read from the legacy
//!    `tokens`/`token_logprobs` arrays (vLLM). Trusted only when the probe of a known prompt really
//!    returned one log-probability per prompt token: llama.cpp's `llama-server` silently ignores
//!    `echo` (recorded), older builds reject it.
//! 2. **top-n** — llama.cpp's native `/completion` with a token-id prompt, `n_predict: 1`,
//!    `n_probs: N`, teacher-forced token by token; exact per item only when every continuation token
//!    was within the top N ([`ContinuationScore::exact`](epi_core::backend::ContinuationScore::exact)) and the value is the single-pass one. In
//!    the default [`TopNMode::SinglePass`] every request evaluates its whole prompt afresh
//!    (`cache_prompt: false`), one request at a time, so the same command on the same server gives
//!    the same numbers; [`TopNMode::Cached`] reuses the prompt cache across slots (faster, not
//!    reproducible, never exact).
//! 3. otherwise none: generative scoring only.
//!
//! Every request body is validated before it is sent (valid JSON, message `content` a string),
//! headers go out in title case (`Content-Length`: dllama-api reads no other spelling and dies on a
//! lower-case one), at most `max_concurrency` requests are in flight and, on llama-server, never
//! more prompt tokens than its shared context holds (see [`transport`]); every request has a
//! timeout and retries with exponential back-off. A server that refuses connections, or stops
//! accepting new ones while a request is pending, is reported as unavailable, never waited on.

//!
//! Layout: `server` holds each server's quirks (the one table of how the servers differ),
//! `detect` finds out which server answers, `session` builds the state at start, `transport`
//! sends requests (retries, streams, admission, liveness), `generate` generates and `scoring`
//! computes log-likelihoods (echo, top-n, single-pass); `replies` reads what servers answer.

mod detect;
mod generate;
mod replies;
mod scoring;
mod server;
mod session;
mod transport;

pub use transport::validate_body;

use epi_core::backend::{
    BackendCapabilities, BackendError, BackendInfo, GenerateRequest, GenerateResponse,
    InferenceBackend, LoglikelihoodRequest, LoglikelihoodResponse, LoglikelihoodSupport,
};
use epi_core::registry::{parse_config, Factory, PluginConfig, PluginRegistration};
use epi_core::Error;
use serde::{Deserialize, Serialize};
use server::Profile;
use session::Session;
use std::sync::Arc;

/// The text probed at start to find out whether the server returns prompt log-probabilities
/// (the prompt of the llama-server recordings, plus its continuation).
pub const PROBE_TEXT: &str = "Question: What is the capital of France?\nAnswer: Paris";

/// Which server software is behind the URL. `auto` asks the server (`/props`, `/version`,
/// `/api/version`); naming it skips the probes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum ServerKind {
    /// Detect at start.
    #[default]
    #[serde(rename = "auto")]
    Auto,
    /// llama.cpp `llama-server`: `/tokenize`, native `/completion` with `n_probs`, `/props`.
    #[serde(rename = "llama.cpp")]
    LlamaCpp,
    /// vLLM: `/tokenize`, `echo` with prompt log-probabilities, `/version`.
    #[serde(rename = "vllm")]
    Vllm,
    /// Ollama's OpenAI-compatible `/v1`: no tokenizer, no log-probabilities.
    #[serde(rename = "ollama")]
    Ollama,
    /// distributed-llama `dllama-api`: chat only, one request at a time, `Connection: close`,
    /// no log-probabilities, no usage in streams.
    #[serde(rename = "dllama-api")]
    DllamaApi,
    /// Any other OpenAI-compatible server: completions and chat, nothing else assumed.
    #[serde(rename = "generic")]
    Generic,
}

/// Which log-likelihood method to use.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum LoglikelihoodMethod {
    /// The first that the probes confirm: echo, then top-n, else none.
    #[default]
    Auto,
    /// Only echo; start fails if the probe shows the server ignores or rejects it.
    Echo,
    /// Only top-n through llama.cpp's `/completion`; start fails if it is not there.
    TopN,
    /// No log-likelihoods (generative scoring only).
    None,
}

/// Whether token ids sent for scoring start with the model's BOS token.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum BosPolicy {
    /// No BOS: lm-eval's API models (`local-completions`, `add_bos_token=False`) and the Open LLM
    /// Leaderboard v1 (`add_special_tokens=False`). The default.
    #[default]
    None,
    /// Whatever the model's tokenizer adds by default (`/tokenize` with `add_special`), like
    /// current lm-eval's HF backend.
    ModelDefault,
}

impl BosPolicy {
    fn as_str(self) -> &'static str {
        match self {
            BosPolicy::None => "none",
            BosPolicy::ModelDefault => "model-default",
        }
    }
}

/// How llama.cpp's top-N requests evaluate their prompts.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum TopNMode {
    /// Every request evaluates its whole prompt afresh (`cache_prompt: false`) in one pass, and
    /// requests go one at a time: each value is the single-pass value (logits of one forward pass
    /// over the prompt) and the same command on the same server gives the same numbers. The
    /// default.
    #[default]
    SinglePass,
    /// The prompt cache reuses the shared context; continuation tokens are evaluated one at a
    /// time, slots in parallel. Fewer tokens evaluated, but llama.cpp's numbers then depend on
    /// batch shapes and on what other slots do: not reproducible, and no value is marked exact.
    Cached,
}

impl TopNMode {
    fn as_str(self) -> &'static str {
        match self {
            TopNMode::SinglePass => "single-pass",
            TopNMode::Cached => "cached",
        }
    }
}

fn default_top_n() -> u32 {
    100
}
fn default_liveness_interval_s() -> f64 {
    1.0
}
fn default_min_batch_tokens() -> usize {
    64
}
fn default_max_batch_tokens() -> usize {
    256
}
fn default_timeout_s() -> f64 {
    600.0
}
fn default_connect_timeout_s() -> f64 {
    10.0
}
fn default_retries() -> u32 {
    2
}
fn default_backoff_s() -> f64 {
    0.5
}

/// Settings of the `openai` backend (`[backend.openai]`, or `--url`, `--model`, `--api-key-env`,
/// `--backend-option key=value`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenAiConfig {
    /// Base URL of the server, with or without `/v1` (`http://127.0.0.1:8080`).
    pub url: String,
    /// Model name sent with requests; default: the first model `/v1/models` lists.
    #[serde(default)]
    pub model: Option<String>,
    /// Name of the environment variable holding the API key (sent as a bearer token).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Server software (`auto`, `llama.cpp`, `vllm`, `ollama`, `dllama-api`, `generic`).
    #[serde(default)]
    pub server: ServerKind,
    /// Log-likelihood method (`auto`, `echo`, `top-n`, `none`).
    #[serde(default)]
    pub loglikelihood: LoglikelihoodMethod,
    /// N of the top-n method (llama.cpp `n_probs`).
    #[serde(default = "default_top_n")]
    pub top_n: u32,
    /// How top-N requests evaluate their prompts (`single-pass`, `cached`).
    #[serde(default)]
    pub top_n_mode: TopNMode,
    /// Single-pass mode: the fewest tokens one request evaluates together (below it llama.cpp's
    /// CPU kernels differ: ggml's flash-attention tile of 64 query rows).
    #[serde(default = "default_min_batch_tokens")]
    pub min_batch_tokens: usize,
    /// Single-pass mode: the most tokens one request evaluates (at most the server's `-ub`).
    #[serde(default = "default_max_batch_tokens")]
    pub max_batch_tokens: usize,
    /// BOS policy for scored token sequences (`none`, `model-default`).
    #[serde(default)]
    pub bos: BosPolicy,
    /// Requests in flight at once; default: 1, or llama.cpp's slot count in the `cached` top-N
    /// mode (and never more prompt tokens at once than llama.cpp's context holds).
    #[serde(default)]
    pub max_concurrency: Option<usize>,
    /// Whole-request timeout, s.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
    /// Connection timeout, s.
    #[serde(default = "default_connect_timeout_s")]
    pub connect_timeout_s: f64,
    /// Retries after a failed attempt (timeouts, connection errors, 429 and 5xx replies).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// First back-off before a retry, s; doubled for each further retry.
    #[serde(default = "default_backoff_s")]
    pub retry_backoff_s: f64,
    /// While a request is pending, try a new connection to the server this often (s) and give up
    /// at once when it is refused (the server stopped listening); 0 turns the check off. Never
    /// done with dllama-api, which would read the probe as a request.
    #[serde(default = "default_liveness_interval_s")]
    pub liveness_interval_s: f64,
}

impl OpenAiConfig {
    /// A configuration with every default and `url`.
    pub fn new(url: impl Into<String>) -> OpenAiConfig {
        OpenAiConfig {
            url: url.into(),
            model: None,
            api_key_env: None,
            server: ServerKind::Auto,
            loglikelihood: LoglikelihoodMethod::Auto,
            top_n: default_top_n(),
            top_n_mode: TopNMode::SinglePass,
            min_batch_tokens: default_min_batch_tokens(),
            max_batch_tokens: default_max_batch_tokens(),
            bos: BosPolicy::None,
            max_concurrency: None,
            timeout_s: default_timeout_s(),
            connect_timeout_s: default_connect_timeout_s(),
            retries: default_retries(),
            retry_backoff_s: default_backoff_s(),
            liveness_interval_s: default_liveness_interval_s(),
        }
    }

    /// Checks values without I/O; the message names the key.
    pub fn check(&self) -> Result<(), String> {
        root_url(&self.url)?;
        if self.top_n == 0 {
            return Err("top_n: expected at least 1".into());
        }
        if self.max_concurrency == Some(0) {
            return Err("max_concurrency: expected at least 1".into());
        }
        if self.min_batch_tokens == 0 {
            return Err("min_batch_tokens: expected at least 1".into());
        }
        if self.max_batch_tokens < 2 * self.min_batch_tokens {
            return Err(format!(
                "max_batch_tokens: {} is less than twice min_batch_tokens ({})",
                self.max_batch_tokens, self.min_batch_tokens
            ));
        }
        for (name, v) in [
            ("timeout_s", self.timeout_s),
            ("connect_timeout_s", self.connect_timeout_s),
            ("retry_backoff_s", self.retry_backoff_s),
            ("liveness_interval_s", self.liveness_interval_s),
        ] {
            let zero_ok = matches!(name, "retry_backoff_s" | "liveness_interval_s");
            if !(v.is_finite() && v >= 0.0) || (!zero_ok && v == 0.0) {
                return Err(format!("{name}: {v} is not a positive number of seconds"));
            }
        }
        if let Some(env) = &self.api_key_env {
            if env.is_empty() {
                return Err("api_key_env: expected the name of an environment variable".into());
            }
        }
        Ok(())
    }
}

/// The server root: the URL without a trailing `/` or `/v1`.
fn root_url(url: &str) -> Result<String, String> {
    let u = url.trim();
    if !(u.starts_with("http://") || u.starts_with("https://")) {
        return Err(format!("url: `{url}` is not an http:// or https:// URL"));
    }
    let mut root = u.trim_end_matches('/').to_string();
    if root.ends_with("/v1") {
        root.truncate(root.len() - 3);
    }
    if root.len() <= "https://".len() {
        return Err(format!("url: `{url}` has no host"));
    }
    Ok(root)
}

/// The `openai` backend. Also the HTTP client of the `distributed-llama` backend.
pub struct OpenAiBackend {
    key: String,
    config: OpenAiConfig,
    session: Option<Arc<Session>>,
}

impl OpenAiBackend {
    /// A backend for `config` (no I/O until `start`). `key` names it in errors.
    pub fn new(key: &str, config: OpenAiConfig) -> OpenAiBackend {
        OpenAiBackend {
            key: key.to_string(),
            config,
            session: None,
        }
    }

    fn err_unavailable(&self, message: String) -> BackendError {
        BackendError::Unavailable {
            backend: self.key.clone(),
            message,
        }
    }
    fn err_bad(&self, message: String) -> BackendError {
        BackendError::BadReply {
            backend: self.key.clone(),
            message,
        }
    }
    fn err_setup(&self, message: String) -> BackendError {
        BackendError::Setup {
            backend: self.key.clone(),
            message,
        }
    }
    fn err_invalid(&self, message: String) -> BackendError {
        BackendError::InvalidRequest {
            backend: self.key.clone(),
            message,
        }
    }

    fn session(&self) -> Result<&Arc<Session>, BackendError> {
        self.session
            .as_ref()
            .ok_or_else(|| self.err_setup("the backend was not started".into()))
    }
}

#[epi_core::async_trait]
impl InferenceBackend for OpenAiBackend {
    async fn start(&mut self) -> Result<BackendInfo, BackendError> {
        let (s, info) = self.open().await?;
        self.session = Some(Arc::new(s));
        Ok(info)
    }

    fn capabilities(&self) -> BackendCapabilities {
        match &self.session {
            Some(s) => BackendCapabilities {
                loglikelihood: s.ll.clone(),
                completions: s.profile.completions,
                chat: true,
                streaming: true,
                tokenizer: s.profile.tokenizer,
                max_concurrency: s.max_concurrency,
            },
            None => {
                let p = Profile::for_kind(self.config.server);
                BackendCapabilities {
                    loglikelihood: LoglikelihoodSupport::None,
                    completions: p.completions,
                    chat: true,
                    streaming: true,
                    tokenizer: p.tokenizer,
                    max_concurrency: self.config.max_concurrency.or(p.slots).unwrap_or(1).max(1),
                }
            }
        }
    }

    async fn generate(&self, request: &GenerateRequest) -> Result<GenerateResponse, BackendError> {
        let s = self.session()?.clone();
        self.generate_inner(&s, request).await
    }

    async fn loglikelihood(
        &self,
        request: &LoglikelihoodRequest,
    ) -> Result<LoglikelihoodResponse, BackendError> {
        let s = self.session()?.clone();
        self.score(&s, request).await
    }

    async fn stop(&mut self) -> Result<(), BackendError> {
        if let Some(s) = self.session.take() {
            s.permits.close();
        }
        Ok(())
    }
}

fn build(config: &PluginConfig) -> Result<Box<dyn InferenceBackend>, Error> {
    let c: OpenAiConfig = parse_config("openai", config)?;
    c.check().map_err(|message| Error::Plugin {
        plugin: "openai".into(),
        message: format!("configuration: {message}"),
    })?;
    Ok(Box::new(OpenAiBackend::new("openai", c)))
}

impl epi_core::settings::PluginSettings for OpenAiConfig {
    fn example() -> Self {
        epi_core::settings::example_from(serde_json::json!({"url": "http://127.0.0.1:8080"}))
    }
}

epi_core::inventory::submit! {
    PluginRegistration {
        key: "openai",
        description: "OpenAI-compatible HTTP server (llama.cpp llama-server, vLLM, Ollama /v1, dllama-api)",
        factory: Factory::Backend(build),
        settings: epi_core::settings::Settings::of::<OpenAiConfig>,
        toml_aliases: &[],
        capabilities: &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn urls_are_reduced_to_the_server_root() {
        assert_eq!(
            root_url("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            root_url("http://127.0.0.1:8080/v1/").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(root_url("https://h/llm/v1").unwrap(), "https://h/llm");
        assert!(root_url("127.0.0.1:8080").is_err());
        assert!(root_url("http://").is_err());
    }

    #[test]
    fn config_keys_are_checked_without_io() {
        let c: OpenAiConfig =
            parse_config("openai", &json!({"url": "http://x:1", "top_n": 0})).unwrap();
        assert!(c.check().unwrap_err().starts_with("top_n"));
        let e = parse_config::<OpenAiConfig>("openai", &json!({"url": "http://x:1", "topn": 5}))
            .unwrap_err();
        assert!(e.to_string().contains("unknown field `topn`"), "{e}");
        let c: OpenAiConfig = parse_config(
            "openai",
            &json!({"url": "http://x:1", "server": "llama.cpp", "bos": "model-default"}),
        )
        .unwrap();
        assert_eq!(c.server, ServerKind::LlamaCpp);
        assert_eq!(c.bos, BosPolicy::ModelDefault);
        assert!(build(&json!({"url": "ftp://x"})).is_err());
    }
}
