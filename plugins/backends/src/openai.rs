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
//!    was within the top N ([`ContinuationScore::exact`]).
//! 3. otherwise none: generative scoring only.
//!
//! Every request body is validated before it is sent (valid JSON, message `content` a string),
//! headers go out in title case (`Content-Length`: dllama-api reads no other spelling and dies on a
//! lower-case one), a semaphore keeps at most `max_concurrency` requests in flight, and every
//! request has a timeout and retries with exponential back-off. A server that refuses connections
//! is reported as unavailable, never waited on.

use crate::loglik::{self, ScoringStats, TopN};
use crate::sse::SseReader;
use epi_framework::backend::{
    BackendCapabilities, BackendError, BackendInfo, ContinuationScore, GenerateRequest,
    GenerateResponse, InferenceBackend, LoglikelihoodRequest, LoglikelihoodResponse,
    LoglikelihoodSupport, TokenCountSource,
};
use epi_framework::registry::{parse_config, Factory, PluginConfig, PluginRegistration};
use epi_framework::Error;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

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

fn default_top_n() -> u32 {
    100
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
    /// BOS policy for scored token sequences (`none`, `model-default`).
    #[serde(default)]
    pub bos: BosPolicy,
    /// Requests in flight at once; default: llama.cpp's slot count, else 1.
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
            bos: BosPolicy::None,
            max_concurrency: None,
            timeout_s: default_timeout_s(),
            connect_timeout_s: default_connect_timeout_s(),
            retries: default_retries(),
            retry_backoff_s: default_backoff_s(),
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
        for (name, v) in [
            ("timeout_s", self.timeout_s),
            ("connect_timeout_s", self.connect_timeout_s),
            ("retry_backoff_s", self.retry_backoff_s),
        ] {
            if !(v.is_finite() && v >= 0.0) || (name != "retry_backoff_s" && v == 0.0) {
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

/// One HTTP exchange's outcome, kept for errors and statistics.
struct Reply {
    status: u16,
    body: Vec<u8>,
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

    /// Sends one request with retries; returns the reply of the last attempt that got one.
    async fn send(
        &self,
        s: &Session,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(Reply, Duration), BackendError> {
        let bytes = match body {
            Some(b) => {
                Some(validate_body(b).map_err(|m| self.err_invalid(format!("{path}: {m}")))?)
            }
            None => None,
        };
        let url = format!("{}{}", s.root, path);
        let attempts = self.config.retries + 1;
        let mut last_err = String::new();
        let mut last = Failure::Http;
        for attempt in 0..attempts {
            if attempt > 0 {
                let wait = self.config.retry_backoff_s * 2f64.powi(attempt as i32 - 1);
                tokio::time::sleep(Duration::from_secs_f64(wait)).await;
            }
            let _permit = s
                .permits
                .acquire()
                .await
                .map_err(|_| self.err_setup("the backend was stopped".into()))?;
            let t0 = Instant::now();
            let mut req = s.http.request(method.clone(), &url);
            if let Some(b) = &bytes {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(b.clone());
            }
            if let Some(k) = &s.api_key {
                req = req.bearer_auth(k);
            }
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    match resp.bytes().await {
                        Ok(body) => {
                            let reply = Reply {
                                status,
                                body: body.to_vec(),
                            };
                            if status == 429 || status >= 500 {
                                last = Failure::Http;
                                last_err = format!(
                                    "{path}: HTTP {status}: {}",
                                    error_message(&reply.body)
                                );
                                continue;
                            }
                            return Ok((reply, t0.elapsed()));
                        }
                        Err(e) => {
                            last = Failure::of(&e);
                            last_err = format!("{path}: reading the reply: {}", describe(&e));
                        }
                    }
                }
                Err(e) => {
                    last = Failure::of(&e);
                    last_err = format!("{path}: {}", describe(&e));
                }
            }
        }
        Err(self.give_up(s, last, attempts, last_err))
    }

    /// The error after the last attempt failed: a server that refuses connections is
    /// unavailable (dead), a timeout is a timeout, anything else a bad reply.
    fn give_up(&self, s: &Session, last: Failure, attempts: u32, message: String) -> BackendError {
        match last {
            Failure::Connect => self.err_unavailable(format!(
                "{} cannot be reached after {attempts} attempt(s) (did the server die?): {message}",
                s.root
            )),
            Failure::Timeout => BackendError::Timeout {
                backend: self.key.clone(),
                attempts,
                message,
            },
            Failure::Http | Failure::Broken => self.err_bad(format!(
                "no usable reply after {attempts} attempt(s): {message}"
            )),
        }
    }

    /// POSTs JSON and parses a JSON reply; non-2xx replies are errors with the server's message.
    async fn post_json(
        &self,
        s: &Session,
        path: &str,
        body: &Value,
    ) -> Result<(Value, Duration), BackendError> {
        let (reply, dt) = self
            .send(s, reqwest::Method::POST, path, Some(body))
            .await?;
        self.json_reply(path, reply).map(|v| (v, dt))
    }

    async fn get_json(&self, s: &Session, path: &str) -> Result<Value, BackendError> {
        let (reply, _) = self.send(s, reqwest::Method::GET, path, None).await?;
        self.json_reply(path, reply)
    }

    fn json_reply(&self, path: &str, reply: Reply) -> Result<Value, BackendError> {
        if !(200..300).contains(&reply.status) {
            return Err(self.err_bad(format!(
                "{path}: HTTP {}: {}",
                reply.status,
                error_message(&reply.body)
            )));
        }
        serde_json::from_slice(&reply.body).map_err(|e| {
            self.err_bad(format!(
                "{path}: the reply is not JSON ({e}): {}",
                snippet(&reply.body)
            ))
        })
    }

    /// GETs a JSON object, or `None` when the route is absent or not JSON (detection probes).
    async fn try_get_json(&self, s: &Session, path: &str) -> Result<Option<Value>, BackendError> {
        match self.send(s, reqwest::Method::GET, path, None).await {
            Ok((reply, _)) if (200..300).contains(&reply.status) => {
                Ok(serde_json::from_slice::<Value>(&reply.body)
                    .ok()
                    .filter(Value::is_object))
            }
            Ok(_) => Ok(None),
            Err(e @ BackendError::Unavailable { .. }) => Err(e),
            Err(_) => Ok(None),
        }
    }

    /// The server's token ids for `text`, following the BOS policy.
    async fn tokenize(
        &self,
        s: &Session,
        text: &str,
        stats: &mut ScoringStats,
    ) -> Result<Vec<u32>, BackendError> {
        self.tokenize_with(s, text, self.config.bos == BosPolicy::ModelDefault, stats)
            .await
    }

    async fn tokenize_with(
        &self,
        s: &Session,
        text: &str,
        add_special: bool,
        stats: &mut ScoringStats,
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
        let (v, _) = self.post_json(s, "/tokenize", &body).await?;
        stats.requests += 1;
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
        let mut stats = ScoringStats::default();
        let ids = self.tokenize(s, PROBE_TEXT, &mut stats).await?;
        let mut body = json!({"prompt": ids, "max_tokens": 1, "temperature": 0.0, "logprobs": 1, "echo": true});
        if let Some(m) = &s.model {
            body["model"] = json!(m);
        }
        let (reply, _) = self
            .send(s, reqwest::Method::POST, "/v1/completions", Some(&body))
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
        let mut stats = ScoringStats::default();
        let ids = self.tokenize(s, PROBE_TEXT, &mut stats).await?;
        match self.top_n_query(s, ids).await {
            Ok(t) if !t.entries.is_empty() => Ok(Ok(())),
            Ok(_) => Ok(Err("no top-N log-probabilities in the reply".into())),
            Err(e @ BackendError::Unavailable { .. }) => Err(e),
            Err(e) => Ok(Err(e.to_string())),
        }
    }

    /// One top-N request: the `n` most likely next tokens after `prompt` (token ids, no BOS added
    /// by the server).
    async fn top_n_query(&self, s: &Session, prompt: Vec<u32>) -> Result<TopN, BackendError> {
        let body = json!({
            "prompt": prompt,
            "n_predict": 1,
            "n_probs": self.config.top_n,
            "temperature": 0.0,
            "cache_prompt": true,
            "post_sampling_probs": false,
        });
        let (v, _) = self.post_json(s, "/completion", &body).await?;
        parse_top_n(&v, prompt.len() as u64).map_err(|m| self.err_bad(format!("/completion: {m}")))
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
        let (v, _) = self.post_json(s, "/v1/completions", &body).await?;
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
        let t0 = Instant::now();
        let (mut text, finish, usage, ttft) = if req.stream {
            self.stream(s, path, &body, chat, t0).await?
        } else {
            self.once(s, path, &body, chat).await?
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
            let mut st = ScoringStats::default();
            tokens_in = Some(
                self.tokenize_with(s, &req.prompt, false, &mut st)
                    .await?
                    .len() as u64,
            );
            tokens_out = Some(self.tokenize_with(s, &text, false, &mut st).await?.len() as u64);
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

    #[allow(clippy::type_complexity)]
    async fn once(
        &self,
        s: &Session,
        path: &str,
        body: &Value,
        chat: bool,
    ) -> Result<
        (
            String,
            Option<String>,
            (Option<u64>, Option<u64>, Option<u64>),
            Option<f64>,
        ),
        BackendError,
    > {
        let (v, _) = self.post_json(s, path, body).await?;
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

    #[allow(clippy::type_complexity)]
    async fn stream(
        &self,
        s: &Session,
        path: &str,
        body: &Value,
        chat: bool,
        t0: Instant,
    ) -> Result<
        (
            String,
            Option<String>,
            (Option<u64>, Option<u64>, Option<u64>),
            Option<f64>,
        ),
        BackendError,
    > {
        use futures_util::StreamExt;
        let bytes = validate_body(body).map_err(|m| self.err_invalid(format!("{path}: {m}")))?;
        let url = format!("{}{}", s.root, path);
        let attempts = self.config.retries + 1;
        let mut last = String::new();
        let mut last_kind = Failure::Http;
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs_f64(
                    self.config.retry_backoff_s * 2f64.powi(attempt as i32 - 1),
                ))
                .await;
            }
            let _permit = s
                .permits
                .acquire()
                .await
                .map_err(|_| self.err_setup("the backend was stopped".into()))?;
            let mut req = s
                .http
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(reqwest::header::ACCEPT, "text/event-stream")
                .body(bytes.clone());
            if let Some(k) = &s.api_key {
                req = req.bearer_auth(k);
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    last_kind = Failure::of(&e);
                    last = format!("{path}: {}", describe(&e));
                    continue;
                }
            };
            let status = resp.status().as_u16();
            if !(200..300).contains(&status) {
                let body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
                last = format!("{path}: HTTP {status}: {}", error_message(&body));
                if status == 429 || status >= 500 {
                    last_kind = Failure::Http;
                    continue;
                }
                return Err(self.err_bad(last));
            }
            let mut reader = SseReader::new();
            let mut stream = resp.bytes_stream();
            let mut text = String::new();
            let mut finish = None;
            let mut usage = (None, None, None);
            let mut ttft = None;
            let mut done = false;
            let mut failed = None;
            loop {
                let (events, ended) = match stream.next().await {
                    Some(Ok(chunk)) => (reader.push(&chunk), false),
                    Some(Err(e)) => {
                        last_kind = Failure::of(&e);
                        failed = Some(format!("{path}: the stream broke: {}", describe(&e)));
                        break;
                    }
                    // The body ended: a last event without a blank line (dllama-api's `[DONE]`).
                    None => (reader.finish(), true),
                };
                for data in events {
                    if data.trim() == "[DONE]" {
                        done = true;
                        break;
                    }
                    let v: Value = serde_json::from_str(&data).map_err(|e| {
                        self.err_bad(format!(
                            "{path}: a stream event is not JSON ({e}): {}",
                            snippet(data.as_bytes())
                        ))
                    })?;
                    if let Some(choice) = v
                        .get("choices")
                        .and_then(Value::as_array)
                        .and_then(|c| c.first())
                    {
                        let piece = if chat {
                            choice.pointer("/delta/content").and_then(Value::as_str)
                        } else {
                            choice.get("text").and_then(Value::as_str)
                        };
                        if let Some(p) = piece {
                            if !p.is_empty() && ttft.is_none() {
                                ttft = Some(t0.elapsed().as_secs_f64());
                            }
                            text.push_str(p);
                        }
                        if let Some(f) = finish_reason(choice) {
                            finish = Some(f);
                        }
                    }
                    let u = usage_counts(&v);
                    if u.0.is_some() || u.2.is_some() {
                        usage = u;
                    }
                }
                if done || ended {
                    break;
                }
            }
            if let Some(f) = failed {
                last = f;
                continue;
            }
            return Ok((text, finish, usage, ttft));
        }
        Err(self.give_up(s, last_kind, attempts, last))
    }
}

/// How an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// No connection (refused, unreachable).
    Connect,
    /// No reply in time.
    Timeout,
    /// An HTTP 429 or 5xx reply.
    Http,
    /// The connection broke before the reply was complete.
    Broken,
}

impl Failure {
    fn of(e: &reqwest::Error) -> Failure {
        if e.is_connect() {
            Failure::Connect
        } else if e.is_timeout() {
            Failure::Timeout
        } else {
            Failure::Broken
        }
    }
}

fn finish_reason(choice: &Value) -> Option<String> {
    choice
        .get("finish_reason")
        .and_then(Value::as_str)
        .filter(|f| !f.is_empty())
        .map(str::to_string)
}

/// `(prompt_tokens, cached_tokens, completion_tokens)` from `usage` (and llama.cpp's `timings`).
fn usage_counts(v: &Value) -> (Option<u64>, Option<u64>, Option<u64>) {
    let u = v.get("usage").filter(|u| u.is_object());
    let tin = u
        .and_then(|u| u.get("prompt_tokens"))
        .and_then(Value::as_u64);
    let tout = u
        .and_then(|u| u.get("completion_tokens"))
        .and_then(Value::as_u64);
    let cached = u
        .and_then(|u| u.pointer("/prompt_tokens_details/cached_tokens"))
        .and_then(Value::as_u64)
        .or_else(|| v.pointer("/timings/cache_n").and_then(Value::as_u64));
    (tin, cached, tout)
}

/// Token ids from a `/tokenize` reply: `{"tokens": [ids]}` or `{"tokens": [{"id", "piece"}]}`.
fn parse_token_ids(v: &Value) -> Result<Vec<u32>, String> {
    let toks = v
        .get("tokens")
        .and_then(Value::as_array)
        .ok_or("no `tokens` array in the reply")?;
    toks.iter()
        .map(|t| {
            t.as_u64()
                .or_else(|| t.get("id").and_then(Value::as_u64))
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(|| format!("`{t}` is not a token id"))
        })
        .collect()
}

/// The top-N list of llama.cpp's `/completion` reply
/// (`completion_probabilities[0].top_logprobs[{id, logprob}]`).
fn parse_top_n(v: &Value, prompt_len: u64) -> Result<TopN, String> {
    let first = v
        .get("completion_probabilities")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .ok_or("no `completion_probabilities` in the reply (is n_probs supported?)")?;
    let top = first.get("top_logprobs").and_then(Value::as_array).ok_or(
        "`completion_probabilities[0]` has no `top_logprobs` with token ids (llama.cpp builds before the \
         logprob format change are not supported)",
    )?;
    let mut entries = Vec::with_capacity(top.len());
    for e in top {
        let id = e
            .get("id")
            .and_then(Value::as_u64)
            .and_then(|x| u32::try_from(x).ok());
        let lp = e.get("logprob").and_then(Value::as_f64);
        match (id, lp) {
            (Some(id), Some(lp)) if lp.is_finite() || lp == f64::NEG_INFINITY => {
                entries.push((id, lp))
            }
            _ => return Err(format!("a top_logprobs entry lacks `id` or `logprob`: {e}")),
        }
    }
    entries.sort_by(|a, b| b.1.total_cmp(&a.1));
    let tokens_in = v
        .get("tokens_evaluated")
        .and_then(Value::as_u64)
        .unwrap_or(prompt_len);
    let cached = v.pointer("/timings/cache_n").and_then(Value::as_u64);
    let tokens_out = v
        .get("tokens_predicted")
        .and_then(Value::as_u64)
        .unwrap_or(1);
    Ok(TopN {
        entries,
        tokens_in,
        cached_tokens: cached,
        tokens_out,
    })
}

/// Continuation scores from an echo reply in the legacy shape (`choices[i].logprobs.token_logprobs`,
/// one per prompt token then the generated one): Σ `token_logprobs[ctx_len .. ctx_len + len(cont)]`
/// (lm-eval: `[ctxlen:-1]`).
fn parse_echo(
    v: &Value,
    ctx_len: usize,
    conts: &[Vec<u32>],
) -> Result<Vec<ContinuationScore>, String> {
    let choices = v
        .get("choices")
        .and_then(Value::as_array)
        .ok_or("no `choices`")?;
    let mut out = Vec::with_capacity(conts.len());
    for (i, cont) in conts.iter().enumerate() {
        let choice = choices
            .iter()
            .find(|c| c.get("index").and_then(Value::as_u64) == Some(i as u64))
            .or_else(|| choices.get(i))
            .ok_or_else(|| format!("no choice for prompt {i}"))?;
        let lp = choice
            .get("logprobs")
            .ok_or_else(|| format!("choice {i} has no logprobs"))?;
        let tl = lp.get("token_logprobs").and_then(Value::as_array).ok_or_else(|| {
            format!("choice {i}: no legacy `token_logprobs` array (the server did not echo the prompt)")
        })?;
        let end = ctx_len + cont.len();
        if tl.len() < end {
            return Err(format!(
                "choice {i}: {} log-probabilities for a prompt of {end} tokens: the prompt was not echoed",
                tl.len()
            ));
        }
        let top = lp.get("top_logprobs").and_then(Value::as_array);
        let mut sum = 0.0;
        let mut greedy = true;
        for (k, entry) in tl.iter().enumerate().take(end).skip(ctx_len) {
            let x = entry
                .as_f64()
                .ok_or_else(|| format!("choice {i}: token_logprobs[{k}] is `{entry}`"))?;
            sum += x;
            if let Some(best) = top.and_then(|t| t.get(k)).and_then(Value::as_object) {
                let max = best
                    .values()
                    .filter_map(Value::as_f64)
                    .fold(f64::NEG_INFINITY, f64::max);
                if x < max {
                    greedy = false;
                }
            }
        }
        out.push(ContinuationScore {
            logprob: sum,
            n_tokens: cont.len() as u32,
            exact: true,
            is_greedy: top.map(|_| greedy),
        });
    }
    Ok(out)
}

fn describe(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// The `error.message` of an error body, else the body's start.
fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.get("error"))
                .or_else(|| v.get("message"))
                .or_else(|| v.get("detail"))
                .map(|m| {
                    m.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| m.to_string())
                })
        })
        .unwrap_or_else(|| snippet(body))
}

fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    let s = s.trim();
    if s.chars().count() > 300 {
        format!("{}…", s.chars().take(300).collect::<String>())
    } else {
        s.to_string()
    }
}

#[epi_framework::async_trait]
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
        };
        let mut details = self.detect(&mut s).await?;
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
            let mut st = ScoringStats::default();
            let plain = self.tokenize_with(&s, PROBE_TEXT, false, &mut st).await?;
            let special = self.tokenize_with(&s, PROBE_TEXT, true, &mut st).await?;
            details.insert("model_adds_bos".into(), json!(special.len() > plain.len()));
        }
        let max_concurrency = self
            .config
            .max_concurrency
            .or(s.profile.slots)
            .unwrap_or(1)
            .max(1);
        s.max_concurrency = max_concurrency;
        s.permits = Arc::new(Semaphore::new(max_concurrency));

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
                    max_concurrency: self.config.max_concurrency.or(p.slots).unwrap_or(1),
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
                    let ids = self.tokenize(&s, &context, &mut stats).await?;
                    ctx_cache.push((context.clone(), ids.clone()));
                    ids
                }
            };
            let whole = self
                .tokenize(&s, &format!("{context}{continuation}"), &mut stats)
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
                    let (sc, st) = loglik::score_top_n(&ctx, &group, |p| self.top_n_query(&s, p))
                        .await
                        .map_err(|e| match e {
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

epi_framework::inventory::submit! {
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

    #[test]
    fn top_n_reply_of_the_recording_parses() {
        let text = include_str!("../tests/fixtures/llama-server/completion_n_probs.http");
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        let v: Value = serde_json::from_str(body).unwrap();
        let t = parse_top_n(&v, 12).unwrap();
        assert_eq!(t.entries.len(), 20);
        assert_eq!(t.entries[0], (2, -1.4404237270355225));
        assert!(
            t.entries.contains(&(7042, -4.173124313354492)),
            "` Paris` is in the recorded top 20"
        );
        assert_eq!(t.tokens_in, 12);
        assert_eq!(t.cached_tokens, Some(11));
    }

    #[test]
    fn echo_reply_in_the_legacy_shape_is_sliced_like_lm_eval() {
        // vLLM: one log-probability per prompt token (the first is null), then the generated one.
        let v = json!({"choices": [
            {"index": 0, "logprobs": {"token_logprobs": [null, -1.0, -2.0, -0.5, -0.25, -9.0],
             "top_logprobs": [null, {"a": -1.0}, {"b": -2.0}, {"c": -0.5}, {"d": -0.1, "e": -0.25}, {"f": -9.0}]}},
            {"index": 1, "logprobs": {"token_logprobs": [null, -1.0, -2.0, -3.0, -7.0],
             "top_logprobs": [null, {"a": -1.0}, {"b": -2.0}, {"c": -3.0}, {"f": -7.0}]}}
        ]});
        let s = parse_echo(&v, 3, &[vec![7, 8], vec![9]]).unwrap();
        assert_eq!(s[0].logprob, -0.75);
        assert_eq!(s[0].is_greedy, Some(false));
        assert_eq!(s[1].logprob, -3.0);
        assert_eq!(s[1].is_greedy, Some(true));
        assert!(s.iter().all(|x| x.exact));
        // llama-server's reply to echo: generated tokens only, in the new shape: refused.
        let text = include_str!("../tests/fixtures/llama-server/v1_completions_echo.http");
        let v: Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert!(parse_echo(&v, 12, &[vec![7042]])
            .unwrap_err()
            .contains("legacy"));
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

    #[test]
    fn usage_and_cache_counts() {
        let v = json!({"usage": {"prompt_tokens": 34, "completion_tokens": 8, "prompt_tokens_details": {"cached_tokens": 24}}});
        assert_eq!(usage_counts(&v), (Some(34), Some(24), Some(8)));
        let v = json!({"usage": {"prompt_tokens": 3, "completion_tokens": 1}, "timings": {"cache_n": 2}});
        assert_eq!(usage_counts(&v), (Some(3), Some(2), Some(1)));
        assert_eq!(usage_counts(&json!({})), (None, None, None));
    }
}
