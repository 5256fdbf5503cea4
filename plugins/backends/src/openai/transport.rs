//! HTTP transport of the `openai` backend: one request with retries and exponential back-off,
//! plain or streamed (Server-Sent Events), and two guards around every request in flight:
//!
//! - **Admission.** A request first takes a concurrency permit (at most `max_concurrency` in
//!   flight) and, when the server's context is known and shared, its share of the **KV budget**:
//!   as many tokens as it will occupy (prompt + tokens to generate). llama-server's slots share one
//!   KV pool (unified cache, its default), so requests whose prompts together exceed the context
//!   fail with `HTTP 500: Context size has been exceeded` or are retried by the server with ever
//!   smaller batches; the budget never sends more than the pool holds.
//! - **Liveness.** While a request is pending, a new TCP connection to the server is tried every
//!   `liveness_interval_s`. A server that stopped listening (llama-server on SIGTERM closes its
//!   listener but keeps open connections waiting) refuses it: the request is abandoned at once
//!   with [`BackendError::Unavailable`] instead of waiting for the whole-request timeout.
//!
//! Every request body is validated before it is sent ([`validate_body`]: valid JSON, chat message
//! `content` a string, `stop` a list of strings), and headers go out in title case
//! (`Content-Length`: dllama-api reads no other spelling and dies on a lower-case one).
//!
//! Failures: a refused connection (after the retries) or a refused liveness probe is
//! `Unavailable`, a timeout `Timeout`, anything else (5xx after the retries, a broken stream) a
//! `BadReply` with the server's own message.

use super::replies::{error_message, finish_reason, snippet, usage_counts};
use super::{OpenAiBackend, Session};
use crate::sse::SseReader;
use epi_core::backend::BackendError;
use serde_json::Value;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, SemaphorePermit};

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

/// One HTTP exchange's outcome, kept for errors and statistics.
pub(super) struct Reply {
    pub(super) status: u16,
    pub(super) body: Vec<u8>,
}

/// What a streamed or plain generation returned: text, finish reason, `(prompt, cached,
/// completion)` token counts, time to first token.
pub(super) type Generated = (
    String,
    Option<String>,
    (Option<u64>, Option<u64>, Option<u64>),
    Option<f64>,
);

/// The KV budget: how many tokens the server's shared context holds, as permits.
pub(super) struct KvBudget {
    pub(super) tokens: u32,
    pub(super) permits: Semaphore,
}

impl KvBudget {
    pub(super) fn new(tokens: u32) -> KvBudget {
        KvBudget {
            tokens,
            permits: Semaphore::new(tokens as usize),
        }
    }
}

/// Where and how often to check that the server still accepts connections.
#[derive(Debug, Clone)]
pub(super) struct Liveness {
    pub(super) addrs: Vec<SocketAddr>,
    pub(super) interval: Duration,
    pub(super) connect_timeout: Duration,
}

impl Liveness {
    /// Resolves the host and port of `root` (`http://host:port[/prefix]`).
    pub(super) async fn resolve(
        root: &str,
        interval: Duration,
        connect_timeout: Duration,
    ) -> Result<Liveness, String> {
        let url =
            reqwest::Url::parse(root).map_err(|e| format!("url: `{root}` is not a URL: {e}"))?;
        let host = url
            .host_str()
            .ok_or_else(|| format!("url: `{root}` has no host"))?;
        let port = url
            .port_or_known_default()
            .ok_or_else(|| format!("url: `{root}` has no port"))?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = match bare.parse::<std::net::IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((bare, port))
                .await
                .map_err(|e| format!("cannot resolve {bare}: {e}"))?
                .collect(),
        };
        if addrs.is_empty() {
            return Err(format!("{bare} resolves to no address"));
        }
        Ok(Liveness {
            addrs,
            interval,
            connect_timeout,
        })
    }

    /// Resolves only once a new connection to every address was refused: the server stopped
    /// listening. Other outcomes (accepted, timed out, unreachable) say nothing and are retried.
    pub(super) async fn refused(&self) -> String {
        loop {
            tokio::time::sleep(self.interval).await;
            let mut refused = Vec::new();
            for a in &self.addrs {
                match tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(a))
                    .await
                {
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        refused.push(a.to_string())
                    }
                    _ => break,
                }
            }
            if refused.len() == self.addrs.len() {
                return refused.join(", ");
            }
        }
    }
}

/// What a request holds while it is in flight.
struct Admission<'a> {
    _permit: SemaphorePermit<'a>,
    _kv: Option<SemaphorePermit<'a>>,
}

impl OpenAiBackend {
    /// Waits for a concurrency permit and `kv_tokens` of the KV budget (clamped to the budget:
    /// a request longer than the whole context runs alone, and the server says why it fails).
    async fn admit<'a>(
        &self,
        s: &'a Session,
        kv_tokens: Option<u64>,
    ) -> Result<Admission<'a>, BackendError> {
        let stopped = || self.err_setup("the backend was stopped".into());
        let permit = s.permits.acquire().await.map_err(|_| stopped())?;
        let kv = match (&s.kv, kv_tokens) {
            (Some(b), Some(n)) => {
                let n = n.clamp(1, u64::from(b.tokens)) as u32;
                Some(b.permits.acquire_many(n).await.map_err(|_| stopped())?)
            }
            _ => None,
        };
        Ok(Admission {
            _permit: permit,
            _kv: kv,
        })
    }

    /// Runs `attempt` unless the server stops listening first.
    async fn guarded<T>(
        &self,
        s: &Session,
        path: &str,
        attempt: impl Future<Output = T>,
    ) -> Result<T, BackendError> {
        let Some(live) = &s.liveness else {
            return Ok(attempt.await);
        };
        tokio::select! {
            r = attempt => Ok(r),
            addr = live.refused() => Err(self.err_unavailable(format!(
                "{} stopped accepting connections while {path} was pending (a new connection to {addr} \
                 was refused): the server is shutting down or died",
                s.root
            ))),
        }
    }

    /// Sends one request with retries; returns the reply of the last attempt that got one.
    /// `kv_tokens`: the tokens the request occupies in the server's context (KV budget), if known.
    pub(super) async fn send(
        &self,
        s: &Session,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        kv_tokens: Option<u64>,
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
            let _admitted = self.admit(s, kv_tokens).await?;
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
            let exchange = async {
                let resp = req.send().await?;
                let status = resp.status().as_u16();
                resp.bytes().await.map(|b| (status, b.to_vec()))
            };
            match self.guarded(s, path, exchange).await? {
                Ok((status, body)) => {
                    let reply = Reply { status, body };
                    if status == 429 || status >= 500 {
                        last = Failure::Http;
                        last_err = format!("{path}: HTTP {status}: {}", error_message(&reply.body));
                        continue;
                    }
                    return Ok((reply, t0.elapsed()));
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
    pub(super) async fn post_json(
        &self,
        s: &Session,
        path: &str,
        body: &Value,
        kv_tokens: Option<u64>,
    ) -> Result<(Value, Duration), BackendError> {
        let (reply, dt) = self
            .send(s, reqwest::Method::POST, path, Some(body), kv_tokens)
            .await?;
        self.json_reply(path, reply).map(|v| (v, dt))
    }

    pub(super) async fn get_json(&self, s: &Session, path: &str) -> Result<Value, BackendError> {
        let (reply, _) = self.send(s, reqwest::Method::GET, path, None, None).await?;
        self.json_reply(path, reply)
    }

    pub(super) fn json_reply(&self, path: &str, reply: Reply) -> Result<Value, BackendError> {
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

    /// GETs a JSON value, or `None` when the route is absent or not JSON (detection probes).
    pub(super) async fn try_get_json(
        &self,
        s: &Session,
        path: &str,
    ) -> Result<Option<Value>, BackendError> {
        match self.send(s, reqwest::Method::GET, path, None, None).await {
            Ok((reply, _)) if (200..300).contains(&reply.status) => {
                Ok(serde_json::from_slice::<Value>(&reply.body).ok())
            }
            Ok(_) => Ok(None),
            Err(e @ BackendError::Unavailable { .. }) => Err(e),
            Err(_) => Ok(None),
        }
    }

    /// POSTs a streamed request and reads its Server-Sent Events, with retries.
    pub(super) async fn stream(
        &self,
        s: &Session,
        path: &str,
        body: &Value,
        chat: bool,
        t0: Instant,
        kv_tokens: Option<u64>,
    ) -> Result<Generated, BackendError> {
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
            let _admitted = self.admit(s, kv_tokens).await?;
            let mut req = s
                .http
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(reqwest::header::ACCEPT, "text/event-stream")
                .body(bytes.clone());
            if let Some(k) = &s.api_key {
                req = req.bearer_auth(k);
            }
            match self
                .guarded(s, path, self.read_stream(req, path, chat, t0))
                .await?
            {
                StreamOutcome::Done(g) => return Ok(g),
                StreamOutcome::Fatal(e) => return Err(e),
                StreamOutcome::Retry(kind, message) => {
                    last_kind = kind;
                    last = message;
                }
            }
        }
        Err(self.give_up(s, last_kind, attempts, last))
    }

    /// One attempt of [`stream`](Self::stream).
    async fn read_stream(
        &self,
        req: reqwest::RequestBuilder,
        path: &str,
        chat: bool,
        t0: Instant,
    ) -> StreamOutcome {
        use futures_util::StreamExt;
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                return StreamOutcome::Retry(Failure::of(&e), format!("{path}: {}", describe(&e)))
            }
        };
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
            let message = format!("{path}: HTTP {status}: {}", error_message(&body));
            if status == 429 || status >= 500 {
                return StreamOutcome::Retry(Failure::Http, message);
            }
            return StreamOutcome::Fatal(self.err_bad(message));
        }
        let mut reader = SseReader::new();
        let mut stream = resp.bytes_stream();
        let mut text = String::new();
        let mut finish = None;
        let mut usage = (None, None, None);
        let mut ttft = None;
        loop {
            let (events, ended) = match stream.next().await {
                Some(Ok(chunk)) => (reader.push(&chunk), false),
                Some(Err(e)) => {
                    return StreamOutcome::Retry(
                        Failure::of(&e),
                        format!("{path}: the stream broke: {}", describe(&e)),
                    )
                }
                // The body ended: a last event without a blank line (dllama-api's `[DONE]`).
                None => (reader.finish(), true),
            };
            for data in events {
                if data.trim() == "[DONE]" {
                    return StreamOutcome::Done((text, finish, usage, ttft));
                }
                let v: Value = match serde_json::from_str(&data) {
                    Ok(v) => v,
                    Err(e) => {
                        return StreamOutcome::Fatal(self.err_bad(format!(
                            "{path}: a stream event is not JSON ({e}): {}",
                            snippet(data.as_bytes())
                        )))
                    }
                };
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
            if ended {
                return StreamOutcome::Done((text, finish, usage, ttft));
            }
        }
    }
}

/// How one streamed attempt ended.
enum StreamOutcome {
    Done(Generated),
    Retry(Failure, String),
    Fatal(BackendError),
}

/// How an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
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

/// A reqwest error with its chain of causes.
pub(super) fn describe(e: &reqwest::Error) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::{OpenAiConfig, ServerKind};
    use epi_core::backend::{GenerateRequest, InferenceBackend};
    use serde_json::json;

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
