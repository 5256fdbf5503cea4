//! Target `openai_reply`: the `openai` backend's reading of server replies — detection (`/props`,
//! `/version`, `/v1/models`), tokenizer and log-probability probes, completions and chat replies as
//! JSON and as Server-Sent Events streams, echo and top-N log-likelihood replies — for each server
//! kind, dllama-api's included (the `distributed-llama` backend talks to dllama-api through this
//! code). The backend talks HTTP to a real server on 127.0.0.1 that answers with the bodies the
//! input gives: every call ends in a reply or a typed [`BackendError`], never a panic or a hang,
//! and a reply agrees with its request (one score per continuation; no stop string left in the
//! text; counts from `usage` only when the server gave them).
//!
//! Input: one byte picking the server kind (bits 0–2), the call (bits 3–5) and the log-likelihood
//! method (bits 6–7); one byte for the chunk length of the replies (0: one piece with a
//! `Content-Length`, else chunked); then the replies, separated by NUL bytes. A reply whose first
//! line is `/path` or `/path status` answers that path (status 200 unless given), the others answer
//! any path; each is used once, in order; a request nothing answers gets a 404.

use crate::support::verbose;
use epi_backends::openai::{LoglikelihoodMethod, OpenAiBackend, OpenAiConfig, ServerKind};
use epi_framework::backend::{
    BackendError, GenerateRequest, InferenceBackend, LoglikelihoodRequest, TokenCountSource,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

const KINDS: [ServerKind; 8] = [
    ServerKind::Auto,
    ServerKind::LlamaCpp,
    ServerKind::Vllm,
    ServerKind::Ollama,
    ServerKind::DllamaApi,
    ServerKind::Generic,
    ServerKind::Auto,
    ServerKind::LlamaCpp,
];

const METHODS: [LoglikelihoodMethod; 4] = [
    LoglikelihoodMethod::Auto,
    LoglikelihoodMethod::Echo,
    LoglikelihoodMethod::TopN,
    LoglikelihoodMethod::None,
];

/// One scripted reply.
struct Reply {
    /// The path it answers (`None`: any).
    path: Option<String>,
    status: u16,
    body: Vec<u8>,
    used: bool,
}

fn script(replies: &[u8]) -> Vec<Reply> {
    replies
        .split(|&b| b == 0)
        .map(|seg| {
            if seg.first() == Some(&b'/') {
                let nl = seg.iter().position(|&b| b == b'\n').unwrap_or(seg.len());
                let head = String::from_utf8_lossy(&seg[..nl]);
                let mut words = head.split_whitespace();
                let path = words.next().unwrap_or("/").to_string();
                let status = words
                    .next()
                    .and_then(|s| s.parse::<u16>().ok())
                    .filter(|s| (200..600).contains(s))
                    .unwrap_or(200);
                Reply {
                    path: Some(path),
                    status,
                    body: seg.get(nl + 1..).unwrap_or_default().to_vec(),
                    used: false,
                }
            } else {
                Reply {
                    path: None,
                    status: 200,
                    body: seg.to_vec(),
                    used: false,
                }
            }
        })
        .collect()
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("a tokio runtime: {e}"))
    })
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let [opts, chunk, rest @ ..] = data else {
        return;
    };
    let kind = KINDS[usize::from(opts & 7)];
    let call = (opts >> 3) & 7;
    let method = METHODS[usize::from(opts >> 6)];
    let replies = Mutex::new(script(rest));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("local address: {e}"));
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (replies, stop, listener) = (&replies, &stop, &listener);
        scope.spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    scope.spawn(move || serve(conn, replies, usize::from(*chunk)));
                }
            }
        });
        let url = format!("http://{addr}");
        runtime().block_on(exercise(&url, kind, call, method));
        stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees `stop`.
        let _ = TcpStream::connect(addr);
    });
}

/// Answers one request on `conn` with the next scripted reply for its path, then closes.
fn serve(conn: TcpStream, replies: &Mutex<Vec<Reply>>, chunk: usize) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return; // the wake-up connection, or a client that gave up
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .split('?')
        .next()
        .unwrap_or("/")
        .to_string();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; length.min(1 << 20)];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let (status, body) = {
        let mut replies = replies.lock().unwrap_or_else(|p| p.into_inner());
        let pick = replies
            .iter()
            .position(|r| !r.used && r.path.as_deref() == Some(path.as_str()))
            .or_else(|| replies.iter().position(|r| !r.used && r.path.is_none()));
        match pick {
            Some(i) => {
                replies[i].used = true;
                (replies[i].status, std::mem::take(&mut replies[i].body))
            }
            None => (404, b"{\"error\":{\"code\":404,\"message\":\"File Not Found\",\"type\":\"not_found_error\"}}".to_vec()),
        }
    };
    let mut out = Vec::with_capacity(body.len() + 200);
    let _ = write!(
        out,
        "HTTP/1.1 {status} Fuzz\r\nContent-Type: application/json\r\nConnection: close\r\n"
    );
    if chunk == 0 {
        let _ = write!(out, "Content-Length: {}\r\n\r\n", body.len());
        out.extend_from_slice(&body);
    } else {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
        for piece in body.chunks(chunk) {
            let _ = write!(out, "{:x}\r\n", piece.len());
            out.extend_from_slice(piece);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
    }
    let mut conn = conn;
    let _ = conn.write_all(&out);
    // The whole request was read: closing now cannot reset the reply.
    let _ = conn.shutdown(Shutdown::Both);
}

async fn exercise(url: &str, kind: ServerKind, call: u8, method: LoglikelihoodMethod) {
    let mut config = OpenAiConfig::new(url);
    config.server = kind;
    config.loglikelihood = method;
    config.top_n = 5;
    config.retries = 0;
    config.timeout_s = 20.0;
    config.connect_timeout_s = 20.0;
    let mut backend = OpenAiBackend::new("openai", config);
    match backend.start().await {
        Ok(info) => {
            verbose(|| {
                format!(
                    "started: {} {:?}",
                    info.server,
                    info.details.get("loglikelihood_method")
                )
            });
            assert_eq!(info.backend, "openai")
        }
        Err(e) => {
            typed(&e, "start");
            return;
        }
    }
    match call {
        0..=3 | 6 | 7 => {
            let stop = if call >= 6 {
                vec!["\n".to_string(), "Question:".to_string()]
            } else {
                Vec::new()
            };
            let request = GenerateRequest {
                prompt: "Question: What is the capital of France?\nAnswer:".into(),
                chat: call % 2 == 1,
                max_tokens: 8,
                stop: stop.clone(),
                stream: call == 2 || call == 3 || call == 6,
            };
            match backend.generate(&request).await {
                Ok(r) => {
                    verbose(|| format!("generated {:?} ({:?})", r.text, r.token_count_source));
                    for s in &stop {
                        assert!(
                            !r.text.contains(s.as_str()),
                            "the text still holds the stop string {s:?}: {:?}",
                            r.text
                        );
                    }
                    let counted = r.tokens_in.is_some() || r.tokens_out.is_some();
                    match r.token_count_source {
                        TokenCountSource::Usage | TokenCountSource::Tokenizer => {
                            assert!(
                                counted,
                                "counts from {:?} without counts",
                                r.token_count_source
                            )
                        }
                        TokenCountSource::Unknown => {
                            assert!(!counted, "counts of unknown origin: {r:?}")
                        }
                    }
                    assert!(r.latency_s >= 0.0 && r.ttft_s.is_none_or(|t| t >= 0.0));
                }
                Err(e) => typed(&e, "generate"),
            }
        }
        _ => {
            let request = LoglikelihoodRequest {
                context: "Question: What is the capital of France?\nAnswer:".into(),
                continuations: if call == 4 {
                    vec![" Paris".into(), " Lyon".into()]
                } else {
                    vec![" Paris".into(), "\n Lyon".into(), " Marseille ".into()]
                },
            };
            match backend.loglikelihood(&request).await {
                Ok(r) => {
                    verbose(|| format!("scored {:?}", r.scores));
                    assert_eq!(
                        r.scores.len(),
                        request.continuations.len(),
                        "one score per continuation"
                    );
                    for s in &r.scores {
                        assert!(
                            !s.logprob.is_nan(),
                            "a log-probability that is not a number"
                        );
                    }
                }
                Err(e) => typed(&e, "loglikelihood"),
            }
        }
    }
    let _ = backend.stop().await;
}

/// Every failure must be one of the backend's typed errors, naming the backend and saying what.
fn typed(e: &BackendError, call: &str) {
    verbose(|| format!("{call}: {e}"));
    let (backend, message) = match e {
        BackendError::Unsupported { backend, message }
        | BackendError::Unavailable { backend, message }
        | BackendError::BadReply { backend, message }
        | BackendError::InvalidRequest { backend, message }
        | BackendError::Setup { backend, message } => (backend, message),
        BackendError::Timeout { .. } => {
            panic!("{call}: a timeout from a server that always answers: {e}")
        }
    };
    assert_eq!(backend, "openai", "{call}: {e}");
    assert!(!message.is_empty(), "{call}: an empty message");
}
