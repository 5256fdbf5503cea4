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
//!    was within the top N ([`ContinuationScore::exact`]) and the value is the single-pass one. In
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

mod replies;
mod single_pass;
mod transport;

use crate::loglik::{self, ScoringStats, TopN};
use epi_core::backend::{
    BackendCapabilities, BackendError, BackendInfo, ContinuationScore, GenerateRequest,
    GenerateResponse, InferenceBackend, LoglikelihoodRequest, LoglikelihoodResponse,
    LoglikelihoodSupport, TokenCountSource,
};
use epi_core::registry::{parse_config, Factory, PluginConfig, PluginRegistration};
use epi_core::Error;
use replies::usage_counts;
use replies::{error_message, finish_reason, parse_echo, parse_token_ids, snippet};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use single_pass::{SinglePass, SlotState, CHECK_TOLERANCE};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use transport::{Generated, KvBudget, Liveness};

/// The text probed at start to find out whether the server returns prompt log-probabilities
/// (the prompt of the llama-server recordings, plus its continuation).
pub const PROBE_TEXT: &str = "Question: What is the capital of France?\nAnswer: Paris";

/// Which server software is behind the URL. `auto` asks the server (`/props`, `/version`,
/// `/api/version`); naming it skips the probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
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

impl ServerKind {
    fn name(self) -> &'static str {
        match self {
            ServerKind::Auto => "auto",
            ServerKind::LlamaCpp => "llama.cpp llama-server",
            ServerKind::Vllm => "vLLM",
            ServerKind::Ollama => "Ollama",
            ServerKind::DllamaApi => "dllama-api",
            ServerKind::Generic => "OpenAI-compatible server",
        }
    }
}

/// Which log-likelihood method to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// Checks a request body before it is sent: it must serialise to valid JSON, and every chat
/// message must have a string `role` and a string `content` (dllama-api dies on array content).
pub fn validate_body(body: &Value) -> Result<Vec<u8>, String> {
    let bytes =
        serde_json::to_vec(body).map_err(|e| format!("the request cannot be serialised: {e}"))?;
    let back: Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("the request does not serialise to valid JSON: {e}"))?;
    if !back.is_object() {
        return Err("the request body must be a JSON object".into());
    }
    // dllama-api reads `stop` as a list of strings and `stream` as a boolean and dies otherwise.
    if let Some(stop) = back.get("stop") {
        if !stop
            .as_array()
            .is_some_and(|a| a.iter().all(Value::is_string))
        {
            return Err("`stop` must be an array of strings".into());
        }
    }
    if back.get("stream").is_some_and(|s| !s.is_boolean()) {
        return Err("`stream` must be a boolean".into());
    }
    if let Some(messages) = back.get("messages") {
        let list = messages.as_array().ok_or("`messages` must be an array")?;
        if list.is_empty() {
            return Err("`messages` is empty".into());
        }
        for (i, m) in list.iter().enumerate() {
            if !m.get("role").is_some_and(Value::is_string) {
                return Err(format!("messages[{i}].role must be a string"));
            }
            if !m.get("content").is_some_and(Value::is_string) {
                return Err(format!(
                    "messages[{i}].content must be a string (some servers die on arrays)"
                ));
            }
        }
    }
    Ok(bytes)
}

/// What the server was found to be at start.
#[derive(Debug, Clone)]
pub(crate) struct Profile {
    kind: ServerKind,
    version: Option<String>,
    completions: bool,
    tokenizer: bool,
    /// Send `stream_options.include_usage` (not to dllama-api, which reads a fixed set of keys).
    stream_usage: bool,
    n_ctx: Option<u64>,
    slots: Option<usize>,
}

impl Profile {
    fn for_kind(kind: ServerKind) -> Profile {
        Profile {
            kind,
            version: None,
            completions: kind != ServerKind::DllamaApi,
            tokenizer: matches!(kind, ServerKind::LlamaCpp | ServerKind::Vllm),
            stream_usage: kind != ServerKind::DllamaApi,
            n_ctx: None,
            slots: if kind == ServerKind::DllamaApi {
                Some(1)
            } else {
                None
            },
        }
    }
}

/// The state built by `start`.
struct Session {
    http: reqwest::Client,
    root: String,
    model: Option<String>,
    api_key: Option<String>,
    profile: Profile,
    ll: LoglikelihoodSupport,
    permits: Arc<Semaphore>,
    max_concurrency: usize,
    /// llama-server's shared context, as a budget of tokens in flight.
    kv: Option<KvBudget>,
    /// The liveness check of pending requests.
    liveness: Option<Liveness>,
    /// The single-pass top-N state (llama-server in the single-pass mode).
    single_pass: Option<SinglePass>,
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

    fn build_client(&self, kind: ServerKind) -> Result<reqwest::Client, BackendError> {
        // reqwest is built without a default TLS crypto provider; install ring once per process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = reqwest::Client::builder()
            .http1_title_case_headers()
            .http1_only()
            .timeout(Duration::from_secs_f64(self.config.timeout_s))
            .connect_timeout(Duration::from_secs_f64(self.config.connect_timeout_s))
            .user_agent(concat!("epi-bench/", env!("CARGO_PKG_VERSION")));
        if kind == ServerKind::DllamaApi {
            // It closes every connection: never keep one for reuse.
            b = b.pool_max_idle_per_host(0);
        }
        b.build()
            .map_err(|e| self.err_setup(format!("cannot build the HTTP client: {e}")))
    }

    /// The server's token ids for `text`, following the BOS policy.
    /// Tokenize calls are not scoring requests: no [`ScoringStats`] counts them.
    async fn tokenize(&self, s: &Session, text: &str) -> Result<Vec<u32>, BackendError> {
        self.tokenize_with(s, text, self.config.bos == BosPolicy::ModelDefault)
            .await
    }

    async fn tokenize_with(
        &self,
        s: &Session,
        text: &str,
        add_special: bool,
    ) -> Result<Vec<u32>, BackendError> {
        let body = match s.profile.kind {
            ServerKind::LlamaCpp => json!({"content": text, "add_special": add_special}),
            ServerKind::Vllm => {
                let mut b = json!({"prompt": text, "add_special_tokens": add_special});
                if let Some(m) = &s.model {
                    b["model"] = json!(m);
                }
                b
            }
            _ => {
                return Err(BackendError::Unsupported {
                    backend: self.key.clone(),
                    message: format!("{} has no tokenizer endpoint", s.profile.kind.name()),
                })
            }
        };
        let (v, _) = self.post_json(s, "/tokenize", &body, None).await?;
        parse_token_ids(&v).map_err(|m| self.err_bad(format!("/tokenize: {m}")))
    }

    /// Detects the server and its features.
    async fn detect(
        &self,
        s: &mut Session,
    ) -> Result<serde_json::Map<String, Value>, BackendError> {
        let mut details = serde_json::Map::new();
        let mut kind = self.config.server;
        if kind == ServerKind::Auto {
            kind = ServerKind::Generic;
            let props = self.try_get_json(s, "/props").await?;
            if let Some(p) = props.filter(|p| {
                p.get("default_generation_settings").is_some() || p.get("build_info").is_some()
            }) {
                kind = ServerKind::LlamaCpp;
                s.profile = Profile::for_kind(kind);
                self.read_llama_props(s, &p, &mut details);
            } else if let Some(v) = self.try_get_json(s, "/version").await? {
                if let Some(ver) = v.get("version").and_then(Value::as_str) {
                    kind = ServerKind::Vllm;
                    s.profile = Profile::for_kind(kind);
                    s.profile.version = Some(ver.to_string());
                }
            }
            if kind == ServerKind::Generic {
                if let Some(v) = self.try_get_json(s, "/api/version").await? {
                    if let Some(ver) = v.get("version").and_then(Value::as_str) {
                        kind = ServerKind::Ollama;
                        s.profile = Profile::for_kind(kind);
                        s.profile.version = Some(ver.to_string());
                    }
                }
            }
            if kind == ServerKind::Generic {
                s.profile = Profile::for_kind(kind);
            }
        } else {
            s.profile = Profile::for_kind(kind);
            if kind == ServerKind::LlamaCpp {
                if let Some(p) = self.try_get_json(s, "/props").await? {
                    self.read_llama_props(s, &p, &mut details);
                }
            } else if kind == ServerKind::Vllm {
                if let Some(v) = self.try_get_json(s, "/version").await? {
                    s.profile.version =
                        v.get("version").and_then(Value::as_str).map(str::to_string);
                }
            }
        }
        if kind == ServerKind::LlamaCpp {
            self.read_llama_slots(s, &mut details).await?;
        }
        details.insert(
            "server_kind".into(),
            serde_json::to_value(kind).unwrap_or(Value::Null),
        );
        // The model: configured, else the first one the server lists.
        if s.model.is_none() {
            let models = self.get_json(s, "/v1/models").await?;
            s.model = models
                .get("data")
                .and_then(Value::as_array)
                .and_then(|d| d.first())
                .and_then(|m| m.get("id"))
                .and_then(Value::as_str)
                .map(str::to_string);
        }
        Ok(details)
    }

    /// Reads llama-server's `/slots` (when the endpoint is on): each slot's context. The smallest
    /// bounds what one request may hold.
    async fn read_llama_slots(
        &self,
        s: &mut Session,
        details: &mut serde_json::Map<String, Value>,
    ) -> Result<(), BackendError> {
        let Some(slots) = self.try_get_json(s, "/slots").await? else {
            details.insert("slots_endpoint".into(), json!("unavailable"));
            return Ok(());
        };
        let Some(list) = slots.as_array() else {
            details.insert("slots_endpoint".into(), json!("not a list"));
            return Ok(());
        };
        let n_ctx: Vec<u64> = list
            .iter()
            .filter_map(|x| x.get("n_ctx").and_then(Value::as_u64))
            .collect();
        if !list.is_empty() && n_ctx.len() == list.len() {
            s.profile.slots = Some(list.len());
            let min = n_ctx.iter().copied().min().unwrap_or(0);
            s.profile.n_ctx = Some(s.profile.n_ctx.map_or(min, |n| n.min(min)));
            details.insert("slots_n_ctx".into(), json!(n_ctx));
        }
        Ok(())
    }

    fn read_llama_props(
        &self,
        s: &mut Session,
        p: &Value,
        details: &mut serde_json::Map<String, Value>,
    ) {
        s.profile.version = p
            .get("build_info")
            .and_then(Value::as_str)
            .map(str::to_string);
        s.profile.slots = p
            .get("total_slots")
            .and_then(Value::as_u64)
            .map(|n| n as usize);
        s.profile.n_ctx = p
            .get("default_generation_settings")
            .and_then(|g| g.get("n_ctx"))
            .and_then(Value::as_u64);
        for key in ["model_path", "bos_token", "eos_token", "total_slots"] {
            if let Some(v) = p.get(key) {
                details.insert(format!("llama_{key}"), v.clone());
            }
        }
        if let Some(n) = s.profile.n_ctx {
            details.insert("n_ctx".into(), json!(n));
        }
    }

    /// Asks for prompt log-probabilities of [`PROBE_TEXT`] and says whether they really came back.
    async fn probe_echo(&self, s: &Session) -> Result<Result<(), String>, BackendError> {
        let ids = self.tokenize(s, PROBE_TEXT).await?;
        let mut body = json!({"prompt": ids, "max_tokens": 1, "temperature": 0.0, "logprobs": 1, "echo": true});
        if let Some(m) = &s.model {
            body["model"] = json!(m);
        }
        let (reply, _) = self
            .send(
                s,
                reqwest::Method::POST,
                "/v1/completions",
                Some(&body),
                None,
            )
            .await?;
        if !(200..300).contains(&reply.status) {
            return Ok(Err(format!(
                "rejected: HTTP {}: {}",
                reply.status,
                error_message(&reply.body)
            )));
        }
        let v: Value = match serde_json::from_slice(&reply.body) {
            Ok(v) => v,
            Err(e) => return Ok(Err(format!("the reply is not JSON: {e}"))),
        };
        let lp = v
            .pointer("/choices/0/logprobs")
            .cloned()
            .unwrap_or(Value::Null);
        if let Some(tl) = lp.get("token_logprobs").and_then(Value::as_array) {
            let numbers = tl
                .iter()
                .skip(1)
                .take(ids.len().saturating_sub(1))
                .filter(|x| x.is_number())
                .count();
            if tl.len() >= ids.len() && numbers + 1 >= ids.len() {
                return Ok(Ok(()));
            }
            return Ok(Err(format!(
                "ignored: {} log-probabilities came back for a prompt of {} tokens",
                tl.len(),
                ids.len()
            )));
        }
        if let Some(content) = lp.get("content").and_then(Value::as_array) {
            return Ok(Err(format!(
                "ignored: `logprobs.content` holds {} entr{} (generated tokens only) for a prompt of {} tokens",
                content.len(),
                if content.len() == 1 { "y" } else { "ies" },
                ids.len()
            )));
        }
        Ok(Err("ignored: no log-probabilities in the reply".into()))
    }

    /// Asks llama.cpp's `/completion` for the top N after the probe prompt.
    async fn probe_top_n(&self, s: &Session) -> Result<Result<(), String>, BackendError> {
        if s.profile.kind != ServerKind::LlamaCpp {
            return Ok(Err(format!(
                "{} has no native /completion with n_probs",
                s.profile.kind.name()
            )));
        }
        let ids = self.tokenize(s, PROBE_TEXT).await?;
        match self.top_n_request(s, &ids, None, false).await {
            Ok(t) if !t.entries.is_empty() => Ok(Ok(())),
            Ok(_) => Ok(Err("no top-N log-probabilities in the reply".into())),
            Err(e @ BackendError::Unavailable { .. }) => Err(e),
            Err(e) => Ok(Err(e.to_string())),
        }
    }

    /// One top-N request of the cached mode: the `n` most likely next tokens after `prompt` (token
    /// ids, no BOS added by the server), the prompt cache reused by whichever slot gets it.
    async fn top_n_cached(&self, s: &Session, prompt: Vec<u32>) -> Result<TopN, BackendError> {
        self.top_n_request(s, &prompt, None, true).await
    }

    async fn score_echo(
        &self,
        s: &Session,
        ctx: &[u32],
        conts: &[Vec<u32>],
        stats: &mut ScoringStats,
    ) -> Result<Vec<ContinuationScore>, BackendError> {
        let prompts: Vec<Vec<u32>> = conts
            .iter()
            .map(|c| {
                let mut p = ctx.to_vec();
                p.extend_from_slice(c);
                p
            })
            .collect();
        let mut body = json!({"prompt": prompts, "max_tokens": 1, "temperature": 0.0, "logprobs": 1, "echo": true});
        if let Some(m) = &s.model {
            body["model"] = json!(m);
        }
        let (v, _) = self.post_json(s, "/v1/completions", &body, None).await?;
        let (tin, cached, tout) = usage_counts(&v);
        stats.add(tin.unwrap_or(0), cached, tout.unwrap_or(0));
        parse_echo(&v, ctx.len(), conts)
            .map_err(|m| self.err_bad(format!("/v1/completions (echo): {m}")))
    }

    async fn generate_inner(
        &self,
        s: &Session,
        req: &GenerateRequest,
    ) -> Result<GenerateResponse, BackendError> {
        let chat = req.chat;
        if !chat && !s.profile.completions {
            return Err(BackendError::Unsupported {
                backend: self.key.clone(),
                message: format!(
                    "{} has no /v1/completions: send chat requests",
                    s.profile.kind.name()
                ),
            });
        }
        let mut body = if chat {
            json!({"messages": [{"role": "user", "content": req.prompt}]})
        } else {
            json!({"prompt": req.prompt})
        };
        if let Some(m) = &s.model {
            body["model"] = json!(m);
        }
        body["max_tokens"] = json!(req.max_tokens);
        body["temperature"] = json!(0.0);
        body["stream"] = json!(req.stream);
        if !req.stop.is_empty() {
            body["stop"] = json!(req.stop);
        }
        if req.stream && s.profile.stream_usage {
            body["stream_options"] = json!({"include_usage": true});
        }
        let path = if chat {
            "/v1/chat/completions"
        } else {
            "/v1/completions"
        };
        // The tokens it will hold in the server's context: at most one per byte of the prompt
        // (plus a chat template's), plus what it may generate.
        let kv_tokens =
            req.prompt.len() as u64 + if chat { 64 } else { 1 } + u64::from(req.max_tokens);
        let t0 = Instant::now();
        let (mut text, finish, usage, ttft) = if req.stream {
            self.stream(s, path, &body, chat, t0, Some(kv_tokens))
                .await?
        } else {
            self.once(s, path, &body, chat, Some(kv_tokens)).await?
        };
        let latency_s = t0.elapsed().as_secs_f64();
        // Servers that ignore `stop` (dllama-api) are cut here; the tokens were generated anyway.
        if let Some(cut) = req
            .stop
            .iter()
            .filter(|x| !x.is_empty())
            .filter_map(|x| text.find(x.as_str()))
            .min()
        {
            text.truncate(cut);
        }
        let (mut tokens_in, cached, mut tokens_out) = usage;
        let source = if tokens_in.is_some() || tokens_out.is_some() {
            TokenCountSource::Usage
        } else if s.profile.tokenizer {
            tokens_in = Some(self.tokenize_with(s, &req.prompt, false).await?.len() as u64);
            tokens_out = Some(self.tokenize_with(s, &text, false).await?.len() as u64);
            TokenCountSource::Tokenizer
        } else {
            TokenCountSource::Unknown
        };
        Ok(GenerateResponse {
            text,
            tokens_in,
            tokens_out,
            token_count_source: source,
            cached_tokens: cached,
            ttft_s: ttft,
            latency_s,
            finish_reason: finish,
        })
    }

    async fn once(
        &self,
        s: &Session,
        path: &str,
        body: &Value,
        chat: bool,
        kv_tokens: Option<u64>,
    ) -> Result<Generated, BackendError> {
        let (v, _) = self.post_json(s, path, body, kv_tokens).await?;
        let choice = v
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|c| c.first())
            .ok_or_else(|| {
                self.err_bad(format!(
                    "{path}: no `choices` in the reply: {}",
                    snippet(v.to_string().as_bytes())
                ))
            })?;
        // `index` is not read: dllama-api fills it with garbage.
        let text = if chat {
            choice.pointer("/message/content").and_then(Value::as_str)
        } else {
            choice.get("text").and_then(Value::as_str)
        }
        .ok_or_else(|| {
            self.err_bad(format!(
                "{path}: the choice has no text: {}",
                snippet(choice.to_string().as_bytes())
            ))
        })?
        .to_string();
        let finish = finish_reason(choice);
        Ok((text, finish, usage_counts(&v), None))
    }
}

#[epi_core::async_trait]
impl InferenceBackend for OpenAiBackend {
    async fn start(&mut self) -> Result<BackendInfo, BackendError> {
        self.config.check().map_err(|m| self.err_setup(m))?;
        let root = root_url(&self.config.url).map_err(|m| self.err_setup(m))?;
        let api_key = match &self.config.api_key_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                self.err_setup(format!(
                    "api_key_env: the environment variable {var} is not set"
                ))
            })?),
            None => None,
        };
        let http = self.build_client(self.config.server)?;
        let mut s = Session {
            http,
            root: root.clone(),
            model: self.config.model.clone(),
            api_key,
            profile: Profile::for_kind(self.config.server),
            ll: LoglikelihoodSupport::None,
            permits: Arc::new(Semaphore::new(1)),
            max_concurrency: 1,
            kv: None,
            liveness: None,
            single_pass: None,
        };
        let mut details = serde_json::Map::new();
        // The liveness check (not with dllama-api: its one-at-a-time accept loop would take the
        // probe connection for a request).
        let interval = self.config.liveness_interval_s;
        if self.config.server == ServerKind::DllamaApi || interval == 0.0 {
            details.insert("liveness_check".into(), json!("off"));
        } else {
            match Liveness::resolve(
                &root,
                Duration::from_secs_f64(interval),
                Duration::from_secs_f64(self.config.connect_timeout_s),
            )
            .await
            {
                Ok(l) => {
                    details.insert("liveness_check_s".into(), json!(interval));
                    s.liveness = Some(l);
                }
                Err(why) => {
                    details.insert("liveness_check".into(), json!(format!("off: {why}")));
                }
            }
        }
        details.extend(self.detect(&mut s).await?);
        let kind = s.profile.kind;

        // Log-likelihood: trust only what a probe confirms.
        let want = self.config.loglikelihood;
        let mut ll = LoglikelihoodSupport::None;
        if want != LoglikelihoodMethod::None && s.profile.tokenizer {
            if matches!(want, LoglikelihoodMethod::Auto | LoglikelihoodMethod::Echo)
                && s.profile.completions
            {
                match self.probe_echo(&s).await? {
                    Ok(()) => {
                        ll = LoglikelihoodSupport::Echo;
                        details.insert(
                            "echo_probe".into(),
                            json!("prompt log-probabilities returned"),
                        );
                    }
                    Err(why) => {
                        details.insert("echo_probe".into(), json!(why));
                        if want == LoglikelihoodMethod::Echo {
                            return Err(BackendError::Unsupported {
                                backend: self.key.clone(),
                                message: format!(
                                    "loglikelihood = \"echo\", but the server does not return prompt \
                                     log-probabilities for echo ({why}); use \"top-n\" or \"auto\""
                                ),
                            });
                        }
                    }
                }
            }
            if ll == LoglikelihoodSupport::None
                && matches!(want, LoglikelihoodMethod::Auto | LoglikelihoodMethod::TopN)
            {
                match self.probe_top_n(&s).await? {
                    Ok(()) => {
                        ll = LoglikelihoodSupport::TopN {
                            n: self.config.top_n,
                        };
                        details.insert(
                            "top_n_probe".into(),
                            json!("top-N log-probabilities returned"),
                        );
                    }
                    Err(why) => {
                        details.insert("top_n_probe".into(), json!(why.clone()));
                        if want == LoglikelihoodMethod::TopN {
                            return Err(BackendError::Unsupported {
                                backend: self.key.clone(),
                                message: format!("loglikelihood = \"top-n\", but {why}"),
                            });
                        }
                    }
                }
            }
        } else if matches!(want, LoglikelihoodMethod::Echo | LoglikelihoodMethod::TopN) {
            return Err(BackendError::Unsupported {
                backend: self.key.clone(),
                message: format!(
                    "{} has no tokenizer endpoint, so log-likelihoods cannot be split as lm-eval does",
                    kind.name()
                ),
            });
        }
        s.ll = ll.clone();
        if s.profile.tokenizer && ll != LoglikelihoodSupport::None {
            // Record what the BOS policy does with this model.
            let plain = self.tokenize_with(&s, PROBE_TEXT, false).await?;
            let special = self.tokenize_with(&s, PROBE_TEXT, true).await?;
            details.insert("model_adds_bos".into(), json!(special.len() > plain.len()));
        }
        // Concurrency: one at a time unless configured, except llama-server's cached top-N mode
        // (its slots). On llama-server the requests in flight never hold more tokens than its
        // context: its slots share one KV pool (the unified cache, its default; the API does not
        // say, so a pool per slot is treated the same way: safe, possibly slower).
        let top_n_mode = self.config.top_n_mode;
        let default_concurrency = match (kind, top_n_mode) {
            (ServerKind::LlamaCpp, TopNMode::Cached) => s.profile.slots.unwrap_or(1),
            _ => 1,
        };
        let max_concurrency = self
            .config
            .max_concurrency
            .unwrap_or(default_concurrency)
            .max(1);
        s.max_concurrency = max_concurrency;
        s.permits = Arc::new(Semaphore::new(max_concurrency));
        if kind == ServerKind::LlamaCpp {
            if let Some(n) = s.profile.n_ctx.and_then(|n| u32::try_from(n).ok()) {
                s.kv = Some(KvBudget::new(n));
                details.insert("kv_budget_tokens".into(), json!(n));
            }
        }
        let mut trusted = true;
        let mut warnings = Vec::new();
        if kind == ServerKind::LlamaCpp
            && matches!(ll, LoglikelihoodSupport::TopN { .. })
            && top_n_mode == TopNMode::SinglePass
        {
            let sp = SinglePass {
                min: self.config.min_batch_tokens,
                max: self.config.max_batch_tokens,
                slot: std::sync::Mutex::new(SlotState {
                    id: 0,
                    held: Vec::new(),
                    valid: 0,
                }),
                item: tokio::sync::Mutex::new(()),
                trusted: true,
            };
            let unit = self.tokenize(&s, PROBE_TEXT).await?;
            let check = self.check_single_pass(&s, &sp, &unit).await?;
            trusted = matches!(check, Ok(d) if d <= CHECK_TOLERANCE);
            details.insert(
                "single_pass_check".into(),
                match &check {
                    Ok(d) => json!({
                        "max_abs_diff_nats": d,
                        "tolerance_nats": CHECK_TOLERANCE,
                        "passed": trusted,
                    }),
                    Err(why) => json!({"passed": false, "why": why}),
                },
            );
            if !trusted {
                warnings.push(format!(
                    "the single-pass check failed ({}): log-likelihoods are approximate (none \
                     marked exact) and may differ between runs of the same command",
                    match &check {
                        Ok(d) => format!(
                            "the method differs from a full evaluation by {d:.3} nats; \
                             tolerance {CHECK_TOLERANCE}"
                        ),
                        Err(why) => why.clone(),
                    }
                ));
            }
            details.insert("slot".into(), json!(0));
            details.insert("min_batch_tokens".into(), json!(sp.min));
            details.insert("max_batch_tokens".into(), json!(sp.max));
            s.single_pass = Some(SinglePass { trusted, ..sp });
        }

        details.insert("url".into(), json!(root));
        details.insert(
            "loglikelihood_method".into(),
            json!(match &ll {
                LoglikelihoodSupport::None => "none",
                LoglikelihoodSupport::Echo => "echo",
                LoglikelihoodSupport::TopN { .. } => "top-n",
            }),
        );
        if let LoglikelihoodSupport::TopN { n } = ll {
            details.insert("top_n".into(), json!(n));
            details.insert("top_n_mode".into(), json!(top_n_mode.as_str()));
            // Reproducible: every value computed as one forward pass computes it.
            details.insert(
                "reproducible".into(),
                json!(top_n_mode == TopNMode::SinglePass && trusted),
            );
        }
        details.insert("bos_policy".into(), json!(self.config.bos.as_str()));
        details.insert("max_concurrency".into(), json!(max_concurrency));
        details.insert("timeout_s".into(), json!(self.config.timeout_s));
        details.insert("retries".into(), json!(self.config.retries));
        let info = BackendInfo {
            backend: self.key.clone(),
            server: kind.name().to_string(),
            version: s.profile.version.clone(),
            model: s.model.clone(),
            details,
            warnings,
        };
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
        let t0 = Instant::now();
        let method = match &s.ll {
            LoglikelihoodSupport::None => {
                return Err(BackendError::Unsupported {
                    backend: self.key.clone(),
                    message: format!(
                        "{} returns no usable log-probabilities (see the probes in the backend details): use \
                         generative scoring",
                        s.profile.kind.name()
                    ),
                })
            }
            LoglikelihoodSupport::Echo => "echo",
            LoglikelihoodSupport::TopN { .. } => "top-n",
        };
        if request.continuations.is_empty() {
            return Err(self.err_invalid("no continuations to score".into()));
        }
        if request.context.is_empty() {
            return Err(self.err_invalid(
                "an empty context is not supported (lm-eval would score it after the BOS/EOS token)".into(),
            ));
        }
        let mut stats = ScoringStats::default();
        // lm-eval's _encode_pair, for each continuation; the context is tokenized once per
        // distinct (moved-whitespace) context.
        let mut ctx_cache: Vec<(String, Vec<u32>)> = Vec::new();
        let mut pairs: Vec<(Vec<u32>, Vec<u32>)> = Vec::new();
        for cont in &request.continuations {
            let (context, continuation) = loglik::split_trailing_whitespace(&request.context, cont);
            let ctx_ids = match ctx_cache.iter().find(|(c, _)| *c == context) {
                Some((_, ids)) => ids.clone(),
                None => {
                    let ids = self.tokenize(&s, &context).await?;
                    ctx_cache.push((context.clone(), ids.clone()));
                    ids
                }
            };
            let whole = self
                .tokenize(&s, &format!("{context}{continuation}"))
                .await?;
            let cont_ids = loglik::encode_pair(&ctx_ids, &whole)
                .map_err(|m| self.err_invalid(format!("continuation {cont:?}: {m}")))?;
            if let Some(n_ctx) = s.profile.n_ctx {
                let total = (ctx_ids.len() + cont_ids.len()) as u64;
                if total + 1 > n_ctx {
                    return Err(self.err_invalid(format!(
                        "context + continuation are {total} tokens, more than the server's context of {n_ctx} \
                         (lm-eval would truncate; start the server with a larger -c)"
                    )));
                }
            }
            pairs.push((ctx_ids, cont_ids));
        }
        let mut scores = Vec::with_capacity(pairs.len());
        match &s.ll {
            LoglikelihoodSupport::Echo => {
                // One batched request per distinct context (almost always exactly one).
                let mut i = 0;
                while i < pairs.len() {
                    let ctx = pairs[i].0.clone();
                    let group: Vec<Vec<u32>> = pairs[i..]
                        .iter()
                        .take_while(|(c, _)| *c == ctx)
                        .map(|(_, k)| k.clone())
                        .collect();
                    let n = group.len();
                    scores.extend(self.score_echo(&s, &ctx, &group, &mut stats).await?);
                    i += n;
                }
            }
            LoglikelihoodSupport::TopN { .. } => {
                let mut i = 0;
                while i < pairs.len() {
                    let ctx = pairs[i].0.clone();
                    let group: Vec<Vec<u32>> = pairs[i..]
                        .iter()
                        .take_while(|(c, _)| *c == ctx)
                        .map(|(_, k)| k.clone())
                        .collect();
                    let n = group.len();
                    let scored = match &s.single_pass {
                        Some(sp) => {
                            // One item at a time on the pinned slot.
                            let _item = sp.item.lock().await;
                            loglik::score_top_n(&ctx, &group, |p| self.single_pass_top_n(&s, sp, p))
                                .await
                        }
                        None => {
                            loglik::score_top_n(&ctx, &group, |p| self.top_n_cached(&s, p)).await
                        }
                    };
                    let (sc, st) = scored.map_err(|e| match e {
                        BackendError::BadReply { message, .. } => self.err_bad(message),
                        other => other,
                    })?;
                    stats.requests += st.requests;
                    stats.tokens_in += st.tokens_in;
                    stats.tokens_out += st.tokens_out;
                    if let Some(c) = st.cached_tokens {
                        stats.cached_tokens = Some(stats.cached_tokens.unwrap_or(0) + c);
                    }
                    scores.extend(sc);
                    i += n;
                }
            }
            LoglikelihoodSupport::None => unreachable!("handled above"),
        }
        Ok(LoglikelihoodResponse {
            scores,
            method: method.to_string(),
            tokens_in: stats.tokens_in,
            tokens_out: stats.tokens_out,
            requests: stats.requests,
            latency_s: t0.elapsed().as_secs_f64(),
            cached_tokens: stats.cached_tokens,
        })
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

epi_core::inventory::submit! {
    PluginRegistration {
        key: "openai",
        description: "OpenAI-compatible HTTP server (llama.cpp llama-server, vLLM, Ollama /v1, dllama-api)",
        factory: Factory::Backend(build),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn bodies_with_array_content_are_refused() {
        let ok = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3});
        let bytes = validate_body(&ok).unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap(), ok);
        let bad =
            json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]});
        assert!(validate_body(&bad)
            .unwrap_err()
            .contains("messages[0].content must be a string"));
        assert!(validate_body(&json!({"messages": []})).is_err());
        assert!(validate_body(&json!({"prompt": "x", "stop": "\n"})).is_err());
        assert!(validate_body(&json!({"prompt": "x", "stop": ["\n"], "stream": false})).is_ok());
        assert!(validate_body(&json!({"prompt": "x", "stream": "yes"})).is_err());
        assert!(validate_body(&json!([1, 2])).is_err());
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

    /// A server that answers every request with `reply` and keeps the raw requests it read.
    async fn canned(
        reply: &'static str,
    ) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut c, _)) = l.accept().await else {
                    return;
                };
                let mut buf = vec![0u8; 65536];
                let n = c.read(&mut buf).await.unwrap_or(0);
                keep.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                let _ = c.write_all(reply.as_bytes()).await;
                let _ = c.shutdown().await;
            }
        });
        (url, seen)
    }

    fn generic(url: &str) -> OpenAiBackend {
        let mut c = OpenAiConfig::new(url);
        c.server = ServerKind::Generic;
        c.model = Some("m".into());
        c.retry_backoff_s = 0.01;
        OpenAiBackend::new("openai", c)
    }

    #[tokio::test]
    async fn persistent_server_errors_fail_the_query_not_the_run() {
        let (url, seen) =
            canned("HTTP/1.1 500 Internal Server Error\r\nContent-Length: 28\r\nConnection: close\r\n\r\n{\"error\":{\"message\":\"boom\"}}").await;
        let mut b = generic(&url);
        b.start().await.unwrap();
        let req = GenerateRequest {
            prompt: "hi".into(),
            chat: true,
            max_tokens: 2,
            stop: vec![],
            stream: false,
        };
        let e = b.generate(&req).await.unwrap_err();
        assert!(matches!(e, BackendError::BadReply { .. }), "{e}");
        assert!(e.to_string().contains("HTTP 500: boom"), "{e}");
        assert_eq!(seen.lock().unwrap().len(), 3, "one attempt and two retries");
    }

    #[tokio::test]
    async fn content_length_goes_out_in_title_case() {
        let body =
            r#"{"choices":[{"message":{"role":"assistant","content":"ok"},"finish_reason":""}]}"#;
        let reply: &'static str = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_boxed_str(),
        );
        let (url, seen) = canned(reply).await;
        let mut b = generic(&url);
        b.start().await.unwrap();
        let req = GenerateRequest {
            prompt: "hi".into(),
            chat: true,
            max_tokens: 2,
            stop: vec![],
            stream: false,
        };
        assert_eq!(b.generate(&req).await.unwrap().text, "ok");
        let raw = seen.lock().unwrap().last().cloned().unwrap();
        assert!(
            raw.starts_with("POST /v1/chat/completions HTTP/1.1\r\n"),
            "{raw}"
        );
        assert!(raw.contains("\r\nContent-Length: "), "{raw}");
        assert!(!raw.contains("content-length"), "{raw}");
        assert!(
            raw.contains("\r\nContent-Type: application/json\r\n"),
            "{raw}"
        );
    }
}
