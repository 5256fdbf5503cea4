//! `distributed-llama`: a [distributed-llama](https://github.com/b4rtaz/distributed-llama) cluster
//! driven over SSH ([`epi_framework::ssh`]).
//!
//! **API mode** (default): [`start`](InferenceBackend::start) connects to every host (host keys
//! verified against known_hosts), starts `dllama worker --port P --nthreads N` on each worker host
//! and waits for `Listening on`, then starts `dllama-api` on the root (`hosts[0]`) with the model,
//! tokenizer, buffer type, threads, sequence length, `--temperature 0` and `--workers`, and waits for
//! `Server URL:` — printed once the weights have been sent to every worker, so weight transfer is
//! never inside a measured window. Requests then go through the [`openai`](crate::openai) client
//! in its `dllama-api` profile: chat only, one request at a time, a fresh connection each time
//! (`Connection: close`), title-case headers, validated bodies (the server dies on a lower-case
//! `content-length`, a body that is not JSON, array `content`, a `stop` that is not a list), no
//! usage in streams, garbage `index` and empty `finish_reason` tolerated. It has no
//! log-probabilities: scoring is generative only.
//!
//! **Inference mode** (`mode = "inference"`, throughput-only runs): workers as above; each
//! [`generate`](InferenceBackend::generate) runs `dllama inference --prompt P --steps S` on the root
//! (a new root each time: it sends the weights again) and parses its output
//! ([`inference_log`]; all three formats). `--steps` counts the prompt too and generation does not
//! stop at end-of-sequence: `S` is `inference_steps` when set, else the prompt's UTF-8 length
//! plus 1 plus `max_tokens` (an upper bound of its token count plus the tokens asked for), capped
//! at `max_seq_len`.
//!
//! [`stop`](InferenceBackend::stop) stops every remote process this backend started (TERM, then
//! KILL after `stop_grace_s`) and closes the connections; the SSH supervisor also stops them when a
//! connection drops, so Ctrl-C or a crash leaves nothing running.

pub mod inference_log;

use crate::openai::{OpenAiBackend, OpenAiConfig, ServerKind};
use epi_framework::backend::{
    BackendCapabilities, BackendError, BackendInfo, GenerateRequest, GenerateResponse,
    InferenceBackend, LoglikelihoodRequest, LoglikelihoodResponse, LoglikelihoodSupport,
    TokenCountSource,
};
use epi_framework::registry::{parse_config, Factory, PluginConfig, PluginRegistration};
use epi_framework::ssh::{ProcessEvent, RemoteProcess, SshError, SshOptions, SshSession};
use epi_framework::Error;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Registry key.
pub const KEY: &str = "distributed-llama";

/// Lines of each remote process's output kept for error reports.
const KEEP_LINES: usize = 200;

/// How the cluster is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DllamaMode {
    /// `dllama-api` on the root, queried over HTTP.
    #[default]
    Api,
    /// `dllama inference` per request, its output parsed (throughput only).
    Inference,
}

fn default_ssh_port() -> u16 {
    22
}
fn default_dllama() -> String {
    "dllama".into()
}
fn default_dllama_api() -> String {
    "dllama-api".into()
}
fn default_buffer() -> String {
    "q80".into()
}
fn default_nthreads() -> u32 {
    4
}
fn default_max_seq_len() -> u32 {
    4096
}
fn default_worker_port() -> u16 {
    9999
}
fn default_api_port() -> u16 {
    9990
}
fn default_startup_timeout() -> f64 {
    900.0
}
fn default_timeout() -> f64 {
    600.0
}
fn default_retries() -> u32 {
    2
}
fn default_grace() -> f64 {
    5.0
}

/// Settings of `[backend.distributed-llama]` (`--hosts`, `--ssh-*`, `--model`, or
/// `--backend-option key=value`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DllamaConfig {
    /// The nodes, root first: `host` or `host:worker_port` (the worker port defaults to
    /// `worker_port`). Their number must be a power of two.
    pub hosts: Vec<String>,
    /// SSH user; default: the local user (`$USER`).
    #[serde(default)]
    pub ssh_user: Option<String>,
    /// SSH port of every host.
    #[serde(default = "default_ssh_port")]
    pub ssh_port: u16,
    /// Private key file; default: ssh-agent, then `~/.ssh/id_*`.
    #[serde(default)]
    pub ssh_key: Option<PathBuf>,
    /// known_hosts file; default `~/.ssh/known_hosts`.
    #[serde(default)]
    pub known_hosts: Option<PathBuf>,
    /// Record unknown host keys instead of refusing them (a changed key is always refused).
    #[serde(default)]
    pub accept_new_host_key: bool,
    /// The `dllama` program on the hosts (name on `PATH` or a path).
    #[serde(default = "default_dllama")]
    pub dllama: String,
    /// The `dllama-api` program on the root.
    #[serde(default = "default_dllama_api")]
    pub dllama_api: String,
    /// Model file (`.m`) on the root.
    pub model: String,
    /// Tokenizer file (`.t`) on the root.
    pub tokenizer: String,
    /// `--buffer-float-type` (`q80` for q40 models, or `f32`).
    #[serde(default = "default_buffer")]
    pub buffer_float_type: String,
    /// `--nthreads` on every node.
    #[serde(default = "default_nthreads")]
    pub nthreads: u32,
    /// `--max-seq-len`.
    #[serde(default = "default_max_seq_len")]
    pub max_seq_len: u32,
    /// Default worker port.
    #[serde(default = "default_worker_port")]
    pub worker_port: u16,
    /// `dllama-api --port`.
    #[serde(default = "default_api_port")]
    pub api_port: u16,
    /// Address the API is reached at; default: the root host.
    #[serde(default)]
    pub api_host: Option<String>,
    /// `--seed` (dllama-api keeps one seed for all requests; with temperature 0 it does not matter).
    #[serde(default)]
    pub seed: Option<u64>,
    /// `api` or `inference`.
    #[serde(default)]
    pub mode: DllamaMode,
    /// Inference mode: `--steps` for every run (default: see the module documentation).
    #[serde(default)]
    pub inference_steps: Option<u32>,
    /// The distributed-llama version, recorded with results (it prints none itself).
    #[serde(default)]
    pub version: Option<String>,
    /// Seconds to wait for the workers and for `Server URL:` (weights are sent meanwhile).
    #[serde(default = "default_startup_timeout")]
    pub startup_timeout_s: f64,
    /// Whole-request timeout, s (also the limit of one `dllama inference` run).
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    /// HTTP retries after a failed attempt.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Seconds between TERM and KILL when stopping remote processes.
    #[serde(default = "default_grace")]
    pub stop_grace_s: f64,
}

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    /// SSH host (also the address the root connects workers at).
    pub host: String,
    /// Worker port (unused for the root).
    pub worker_port: u16,
}

impl DllamaConfig {
    /// Checks the settings without I/O and returns the nodes; messages name the key.
    pub fn nodes(&self) -> Result<Vec<Node>, String> {
        if self.hosts.is_empty() {
            return Err(
                "hosts: expected at least the root host (`--hosts root[,worker:port,...]`)".into(),
            );
        }
        if !self.hosts.len().is_power_of_two() {
            return Err(format!(
                "hosts: {} nodes given; distributed-llama needs 1, 2, 4, 8, … nodes (a power of two)",
                self.hosts.len()
            ));
        }
        let mut nodes = Vec::new();
        for (i, h) in self.hosts.iter().enumerate() {
            let h = h.trim();
            let (host, port) = split_host_port(h).map_err(|m| format!("hosts[{i}]: {m}"))?;
            if i == 0 && port.is_some() {
                return Err(format!(
                    "hosts[0]: `{h}` is the root; give it without a port (the API port is `api_port`)"
                ));
            }
            nodes.push(Node {
                host,
                worker_port: port.unwrap_or(self.worker_port),
            });
        }
        for (i, a) in nodes.iter().enumerate().skip(1) {
            if nodes
                .iter()
                .skip(i + 1)
                .any(|b| b.host == a.host && b.worker_port == a.worker_port)
            {
                return Err(format!(
                    "hosts: two workers on {}:{}",
                    a.host, a.worker_port
                ));
            }
        }
        if !["q80", "f32", "f16", "q40"].contains(&self.buffer_float_type.as_str()) {
            return Err(format!(
                "buffer_float_type: `{}`; expected q80, f32, f16 or q40",
                self.buffer_float_type
            ));
        }
        if self.model.trim().is_empty() {
            return Err("model: expected the model file (.m) on the root".into());
        }
        if self.tokenizer.trim().is_empty() {
            return Err("tokenizer: expected the tokenizer file (.t) on the root".into());
        }
        if self.nthreads == 0 {
            return Err("nthreads: expected at least 1".into());
        }
        for (name, v) in [
            ("startup_timeout_s", self.startup_timeout_s),
            ("timeout_s", self.timeout_s),
            ("stop_grace_s", self.stop_grace_s),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{name}: {v} is not a positive number of seconds"));
            }
        }
        if self.inference_steps == Some(0) {
            return Err("inference_steps: expected at least 1".into());
        }
        Ok(nodes)
    }
}

fn split_host_port(s: &str) -> Result<(String, Option<u16>), String> {
    if s.is_empty() {
        return Err("empty host".into());
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, r) = rest
            .split_once(']')
            .ok_or_else(|| format!("`{s}`: missing `]`"))?;
        (h.to_string(), r.strip_prefix(':'))
    } else if s.matches(':').count() == 1 {
        let (h, p) = s.split_once(':').unwrap_or((s, ""));
        (h.to_string(), Some(p))
    } else {
        (s.to_string(), None)
    };
    let port = match port {
        Some(p) => Some(
            p.parse::<u16>()
                .map_err(|_| format!("`{s}`: the port `{p}` is not a number"))?,
        ),
        None => None,
    };
    if host.is_empty() {
        return Err(format!("`{s}`: no host"));
    }
    Ok((host, port))
}

/// A remote process whose output is read continuously (so it never blocks on a full SSH window)
/// into a ring of recent lines.
struct Drained {
    name: String,
    stop: Option<oneshot::Sender<Duration>>,
    task: Option<tokio::task::JoinHandle<()>>,
    lines: Arc<Mutex<VecDeque<String>>>,
    exit: Arc<Mutex<Option<String>>>,
}

impl Drained {
    fn spawn(name: String, mut process: RemoteProcess) -> Drained {
        let lines = Arc::new(Mutex::new(VecDeque::new()));
        let exit = Arc::new(Mutex::new(None));
        let (tx, mut rx) = oneshot::channel::<Duration>();
        let (l, x) = (lines.clone(), exit.clone());
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    grace = &mut rx => {
                        let grace = grace.unwrap_or(Duration::from_secs(2));
                        let status = process.stop(grace).await;
                        if let Ok(mut e) = x.lock() {
                            if e.is_none() {
                                *e = Some(match status {
                                    Ok(s) => format!("stopped ({s})"),
                                    Err(err) => format!("stopping failed: {err}"),
                                });
                            }
                        }
                        return;
                    }
                    ev = process.next_event() => match ev {
                        Some(ProcessEvent::Stdout(s)) | Some(ProcessEvent::Stderr(s)) => push_line(&l, s),
                        Some(ProcessEvent::Exited(status)) => {
                            if let Ok(mut e) = x.lock() {
                                *e = Some(format!("exited ({status})"));
                            }
                        }
                        None => {
                            // Ended: wait for a stop request so `stop` finds the task.
                            let _ = rx.await;
                            return;
                        }
                    },
                }
            }
        });
        Drained {
            name,
            stop: Some(tx),
            task: Some(task),
            lines,
            exit,
        }
    }

    fn exited(&self) -> Option<String> {
        self.exit.lock().ok().and_then(|e| e.clone())
    }

    fn tail(&self, n: usize) -> String {
        let lines = self
            .lines
            .lock()
            .map(|l| l.iter().cloned().collect::<Vec<_>>())
            .unwrap_or_default();
        let start = lines.len().saturating_sub(n);
        lines[start..].join("\n")
    }

    async fn stop(&mut self, grace: Duration) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(grace);
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(grace + Duration::from_secs(10), t).await;
        }
    }
}

fn push_line(lines: &Arc<Mutex<VecDeque<String>>>, s: String) {
    if let Ok(mut l) = lines.lock() {
        if l.len() == KEEP_LINES {
            l.pop_front();
        }
        l.push_back(s);
    }
}

/// The `distributed-llama` backend.
pub struct DllamaBackend {
    config: DllamaConfig,
    nodes: Vec<Node>,
    sessions: Vec<(String, SshSession)>,
    workers: Vec<Drained>,
    root: Option<Drained>,
    client: Option<OpenAiBackend>,
    inference_lock: tokio::sync::Mutex<()>,
    started: bool,
}

impl DllamaBackend {
    /// A backend for `config` (checked; no I/O).
    pub fn new(config: DllamaConfig) -> Result<DllamaBackend, String> {
        let nodes = config.nodes()?;
        Ok(DllamaBackend {
            config,
            nodes,
            sessions: Vec::new(),
            workers: Vec::new(),
            root: None,
            client: None,
            inference_lock: tokio::sync::Mutex::new(()),
            started: false,
        })
    }

    fn setup(&self, message: String) -> BackendError {
        BackendError::Setup {
            backend: KEY.into(),
            message,
        }
    }

    fn ssh_err(&self, e: SshError) -> BackendError {
        self.setup(format!("ssh: {e}"))
    }

    fn session(&self, host: &str) -> Result<&SshSession, BackendError> {
        self.sessions
            .iter()
            .find(|(h, _)| h == host)
            .map(|(_, s)| s)
            .ok_or_else(|| self.setup(format!("no SSH connection to {host}")))
    }

    fn worker_args(&self) -> Vec<String> {
        self.nodes
            .iter()
            .skip(1)
            .map(|n| format!("{}:{}", n.host, n.worker_port))
            .collect()
    }

    /// The root's common arguments: model, tokenizer, buffer type, threads, sequence length,
    /// temperature 0, seed.
    fn root_args(&self) -> Vec<String> {
        let c = &self.config;
        let mut v = vec![
            "--model".to_string(),
            c.model.clone(),
            "--tokenizer".into(),
            c.tokenizer.clone(),
            "--buffer-float-type".into(),
            c.buffer_float_type.clone(),
            "--nthreads".into(),
            c.nthreads.to_string(),
            "--max-seq-len".into(),
            c.max_seq_len.to_string(),
            "--temperature".into(),
            "0".into(),
        ];
        if let Some(s) = c.seed {
            v.push("--seed".into());
            v.push(s.to_string());
        }
        v
    }

    async fn connect(&mut self) -> Result<(), BackendError> {
        let user = match &self.config.ssh_user {
            Some(u) => u.clone(),
            None => std::env::var("USER")
                .or_else(|_| std::env::var("LOGNAME"))
                .map_err(|_| self.setup("ssh_user: not set and $USER is not set".into()))?,
        };
        let mut hosts: Vec<String> = Vec::new();
        for n in &self.nodes {
            if !hosts.contains(&n.host) {
                hosts.push(n.host.clone());
            }
        }
        for host in hosts {
            let mut o = SshOptions::new(host.clone(), user.clone())
                .port(self.config.ssh_port)
                .accept_new_host_key(self.config.accept_new_host_key);
            if let Some(k) = &self.config.ssh_key {
                o = o.identity(k);
            }
            if let Some(k) = &self.config.known_hosts {
                o = o.known_hosts(k);
            }
            let s = SshSession::connect(&o).await.map_err(|e| self.ssh_err(e))?;
            self.sessions.push((host, s));
        }
        Ok(())
    }

    /// Starts `argv` on `host` and reads its output until a line contains `ready`; the lines read
    /// are returned. The process is then drained in the background.
    async fn start_until(
        &self,
        host: &str,
        name: String,
        argv: &[String],
        ready: &str,
        limit: Duration,
    ) -> Result<(Drained, Vec<String>), BackendError> {
        let session = self.session(host)?;
        let mut p = session.spawn(argv).await.map_err(|e| self.ssh_err(e))?;
        let mut seen: Vec<String> = Vec::new();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, p.next_event()).await {
                Ok(Some(ProcessEvent::Stdout(line))) => {
                    let done = line.contains(ready);
                    seen.push(line);
                    if done {
                        break;
                    }
                }
                Ok(Some(ProcessEvent::Stderr(line))) => seen.push(line),
                Ok(Some(ProcessEvent::Exited(status))) => {
                    return Err(self.setup(format!(
                        "{name} on {host} ended ({status}) before printing `{ready}`; its output:\n{}",
                        last_lines(&seen, 30)
                    )));
                }
                Ok(None) => {
                    return Err(self.setup(format!(
                        "{name} on {host} ended before printing `{ready}`; its output:\n{}",
                        last_lines(&seen, 30)
                    )));
                }
                Err(_) => {
                    let _ = p
                        .stop(Duration::from_secs_f64(self.config.stop_grace_s))
                        .await;
                    return Err(self.setup(format!(
                        "{name} on {host} did not print `{ready}` within {:.0} s; its output:\n{}",
                        limit.as_secs_f64(),
                        last_lines(&seen, 30)
                    )));
                }
            }
        }
        let d = Drained::spawn(name, p);
        for l in &seen {
            push_line(&d.lines, l.clone());
        }
        Ok((d, seen))
    }

    async fn start_inner(&mut self) -> Result<BackendInfo, BackendError> {
        self.connect().await?;
        let limit = Duration::from_secs_f64(self.config.startup_timeout_s);
        let mut layout = vec![json!({
            "role": "root",
            "host": self.nodes[0].host,
            "program": if self.config.mode == DllamaMode::Api { &self.config.dllama_api } else { &self.config.dllama },
        })];
        for n in self.nodes.clone().iter().skip(1) {
            let argv = vec![
                self.config.dllama.clone(),
                "worker".into(),
                "--port".into(),
                n.worker_port.to_string(),
                "--nthreads".into(),
                self.config.nthreads.to_string(),
            ];
            let name = format!("dllama worker {}:{}", n.host, n.worker_port);
            let (d, _) = self
                .start_until(&n.host, name, &argv, "Listening on", limit)
                .await?;
            self.workers.push(d);
            layout.push(json!({"role": "worker", "host": n.host, "port": n.worker_port}));
        }
        let mut details = serde_json::Map::new();
        details.insert(
            "mode".into(),
            serde_json::to_value(self.config.mode).unwrap_or(Value::Null),
        );
        details.insert("nodes".into(), json!(self.nodes.len()));
        details.insert("layout".into(), Value::Array(layout));
        details.insert("nthreads".into(), json!(self.config.nthreads));
        details.insert(
            "buffer_float_type".into(),
            json!(self.config.buffer_float_type),
        );
        details.insert("max_seq_len".into(), json!(self.config.max_seq_len));
        details.insert("temperature".into(), json!(0));
        details.insert("model_file".into(), json!(self.config.model));
        details.insert("tokenizer_file".into(), json!(self.config.tokenizer));
        if self.config.version.is_none() {
            details.insert(
                "version_note".into(),
                json!("distributed-llama prints no version: set `version` to record it"),
            );
        }
        let mut model = None;
        let mut server = "dllama inference".to_string();
        if self.config.mode == DllamaMode::Api {
            let mut argv = vec![self.config.dllama_api.clone()];
            argv.extend(self.root_args());
            argv.push("--port".into());
            argv.push(self.config.api_port.to_string());
            let workers = self.worker_args();
            if !workers.is_empty() {
                argv.push("--workers".into());
                argv.extend(workers);
            }
            let root_host = self.nodes[0].host.clone();
            let t0 = Instant::now();
            let (d, seen) = self
                .start_until(&root_host, "dllama-api".into(), &argv, "Server URL:", limit)
                .await?;
            self.root = Some(d);
            details.insert("startup_s".into(), json!(t0.elapsed().as_secs_f64()));
            details.insert("model_header".into(), Value::Object(model_header(&seen)));
            let host = self.config.api_host.clone().unwrap_or(root_host);
            let url = if host.contains(':') {
                format!("http://[{host}]:{}", self.config.api_port)
            } else {
                format!("http://{host}:{}", self.config.api_port)
            };
            let mut oc = OpenAiConfig::new(url.clone());
            oc.server = ServerKind::DllamaApi;
            oc.timeout_s = self.config.timeout_s;
            oc.retries = self.config.retries;
            oc.max_concurrency = Some(1);
            let mut client = OpenAiBackend::new(KEY, oc);
            let info = client.start().await?;
            model = info.model.clone();
            details.insert("url".into(), json!(url));
            self.client = Some(client);
            server = "dllama-api".into();
        }
        Ok(BackendInfo {
            backend: KEY.into(),
            server,
            version: self.config.version.clone(),
            model: model.or_else(|| Some(self.config.model.clone())),
            details,
        })
    }

    /// Adds what is known about a dead root to an error.
    fn explain(&self, e: BackendError) -> BackendError {
        match (&e, &self.root) {
            (BackendError::Unavailable { message, .. }, Some(root)) => match root.exited() {
                Some(how) => BackendError::Unavailable {
                    backend: KEY.into(),
                    message: format!(
                        "{message}; {} {how}; its last output:\n{}",
                        root.name,
                        root.tail(15)
                    ),
                },
                None => e,
            },
            _ => e,
        }
    }

    async fn run_inference(&self, req: &GenerateRequest) -> Result<GenerateResponse, BackendError> {
        let _one = self.inference_lock.lock().await;
        let steps = match self.config.inference_steps {
            Some(s) => s,
            None => {
                let bound = req.prompt.len() as u64 + 1 + req.max_tokens as u64;
                bound.min(self.config.max_seq_len as u64) as u32
            }
        };
        let mut argv = vec![self.config.dllama.clone(), "inference".into()];
        argv.extend(self.root_args());
        argv.extend([
            "--prompt".to_string(),
            req.prompt.clone(),
            "--steps".into(),
            steps.to_string(),
        ]);
        let workers = self.worker_args();
        if !workers.is_empty() {
            argv.push("--workers".into());
            argv.extend(workers);
        }
        let host = &self.nodes[0].host;
        let session = self.session(host)?;
        let t0 = Instant::now();
        let mut p = session.spawn(&argv).await.map_err(|e| self.ssh_err(e))?;
        let mut out = String::new();
        let mut err_tail: Vec<String> = Vec::new();
        let limit = Duration::from_secs_f64(self.config.timeout_s);
        let deadline = tokio::time::Instant::now() + limit;
        let status = loop {
            match tokio::time::timeout_at(deadline, p.next_event()).await {
                Ok(Some(ProcessEvent::Stdout(l))) => {
                    out.push_str(&l);
                    out.push('\n');
                }
                Ok(Some(ProcessEvent::Stderr(l))) => err_tail.push(l),
                Ok(Some(ProcessEvent::Exited(s))) => break Some(s),
                Ok(None) => break None,
                Err(_) => {
                    let _ = p
                        .stop(Duration::from_secs_f64(self.config.stop_grace_s))
                        .await;
                    return Err(BackendError::Timeout {
                        backend: KEY.into(),
                        attempts: 1,
                        message: format!(
                            "`dllama inference` ran longer than {:.0} s",
                            limit.as_secs_f64()
                        ),
                    });
                }
            }
        };
        let latency_s = t0.elapsed().as_secs_f64();
        if !status.as_ref().is_some_and(|s| s.success()) {
            let critical = out
                .lines()
                .find(|l| l.contains("Critical error"))
                .unwrap_or("")
                .to_string();
            return Err(BackendError::BadReply {
                backend: KEY.into(),
                message: format!(
                    "`dllama inference` ended ({}) {critical}; last output:\n{}",
                    status
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "connection lost".into()),
                    last_lines(
                        &out.lines()
                            .chain(err_tail.iter().map(String::as_str))
                            .map(str::to_string)
                            .collect::<Vec<_>>(),
                        15
                    )
                ),
            });
        }
        let log = inference_log::parse(&out).map_err(|m| BackendError::BadReply {
            backend: KEY.into(),
            message: format!("`dllama inference` output: {m}"),
        })?;
        let (tokens_in, tokens_out, source) = match log.format {
            inference_log::LogFormat::V0_11 => (None, None, TokenCountSource::Unknown),
            // The last prompt token is fed in the first prediction step: prompt = eval + 1.
            _ => (
                log.eval_tokens.map(|e| e + 1),
                Some(log.pred_tokens),
                TokenCountSource::Usage,
            ),
        };
        Ok(GenerateResponse {
            text: log.text,
            tokens_in,
            tokens_out,
            token_count_source: source,
            cached_tokens: None,
            ttft_s: None,
            latency_s,
            finish_reason: Some("length".into()),
        })
    }
}

fn last_lines(lines: &[String], n: usize) -> String {
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

/// `💡 Arch: Llama`, `📄 BosId: …` lines of the startup output as a map.
fn model_header(lines: &[String]) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    for l in lines {
        let Some((_, rest)) = l.split_once(' ') else {
            continue;
        };
        if !(l.starts_with('💡') || l.starts_with('📄') || l.starts_with('📀')) {
            continue;
        }
        if let Some((k, v)) = rest.split_once(':') {
            m.insert(k.trim().to_string(), json!(v.trim()));
        }
    }
    m
}

#[epi_framework::async_trait]
impl InferenceBackend for DllamaBackend {
    async fn start(&mut self) -> Result<BackendInfo, BackendError> {
        if self.started {
            return Err(self.setup("already started".into()));
        }
        self.started = true;
        match self.start_inner().await {
            Ok(info) => Ok(info),
            Err(e) => {
                let _ = self.stop().await;
                Err(e)
            }
        }
    }

    fn capabilities(&self) -> BackendCapabilities {
        match (&self.config.mode, &self.client) {
            (DllamaMode::Api, Some(c)) => c.capabilities(),
            (DllamaMode::Api, None) => BackendCapabilities {
                loglikelihood: LoglikelihoodSupport::None,
                completions: false,
                chat: true,
                streaming: true,
                tokenizer: false,
                max_concurrency: 1,
            },
            (DllamaMode::Inference, _) => BackendCapabilities {
                loglikelihood: LoglikelihoodSupport::None,
                completions: true,
                chat: false,
                streaming: false,
                tokenizer: false,
                max_concurrency: 1,
            },
        }
    }

    async fn generate(&self, request: &GenerateRequest) -> Result<GenerateResponse, BackendError> {
        match self.config.mode {
            DllamaMode::Api => {
                let c = self
                    .client
                    .as_ref()
                    .ok_or_else(|| self.setup("the backend was not started".into()))?;
                c.generate(request).await.map_err(|e| self.explain(e))
            }
            DllamaMode::Inference => {
                if request.chat {
                    return Err(BackendError::Unsupported {
                        backend: KEY.into(),
                        message: "`dllama inference` takes a raw prompt: send completion requests (or use mode = \"api\" for chat)".into(),
                    });
                }
                if self.sessions.is_empty() {
                    return Err(self.setup("the backend was not started".into()));
                }
                self.run_inference(request).await
            }
        }
    }

    async fn loglikelihood(
        &self,
        _request: &LoglikelihoodRequest,
    ) -> Result<LoglikelihoodResponse, BackendError> {
        Err(BackendError::Unsupported {
            backend: KEY.into(),
            message: "dllama-api returns no log-probabilities (and `dllama perplexity` scores only whole prompts): \
                      use generative scoring"
                .into(),
        })
    }

    async fn stop(&mut self) -> Result<(), BackendError> {
        let grace = Duration::from_secs_f64(self.config.stop_grace_s);
        if let Some(mut c) = self.client.take() {
            let _ = c.stop().await;
        }
        if let Some(mut r) = self.root.take() {
            r.stop(grace).await;
        }
        for mut w in self.workers.drain(..) {
            w.stop(grace).await;
        }
        for (_, s) in self.sessions.drain(..) {
            s.close().await;
        }
        Ok(())
    }
}

fn build(config: &PluginConfig) -> Result<Box<dyn InferenceBackend>, Error> {
    let c: DllamaConfig = parse_config(KEY, config)?;
    let b = DllamaBackend::new(c).map_err(|message| Error::Plugin {
        plugin: KEY.into(),
        message: format!("configuration: {message}"),
    })?;
    Ok(Box::new(b))
}

epi_framework::inventory::submit! {
    PluginRegistration {
        key: KEY,
        description: "distributed-llama cluster over SSH: workers + dllama-api (generative), or dllama inference (throughput)",
        factory: Factory::Backend(build),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(hosts: &[&str]) -> Value {
        json!({"hosts": hosts, "model": "/m/model.m", "tokenizer": "/m/tok.t"})
    }

    #[test]
    fn nodes_are_checked_without_io() {
        let c: DllamaConfig =
            parse_config(KEY, &config(&["pi0", "pi1", "pi2:9000", "[fe80::1]:9001"])).unwrap();
        let n = c.nodes().unwrap();
        assert_eq!(
            n[0],
            Node {
                host: "pi0".into(),
                worker_port: 9999
            }
        );
        assert_eq!(
            n[2],
            Node {
                host: "pi2".into(),
                worker_port: 9000
            }
        );
        assert_eq!(
            n[3],
            Node {
                host: "fe80::1".into(),
                worker_port: 9001
            }
        );
        for (hosts, want) in [
            (vec!["a", "b", "c"], "power of two"),
            (vec![], "at least the root"),
            (vec!["a:9", "b"], "is the root"),
            (vec!["a", "b:x"], "not a number"),
        ] {
            let c: DllamaConfig = parse_config(KEY, &config(&hosts)).unwrap();
            let e = c.nodes().unwrap_err();
            assert!(e.contains(want), "{hosts:?}: {e}");
        }
        let mut v = config(&["a", "b:1", "b:1", "c"]);
        assert!(parse_config::<DllamaConfig>(KEY, &v)
            .unwrap()
            .nodes()
            .unwrap_err()
            .contains("two workers"));
        v = config(&["a"]);
        v["buffer_float_type"] = json!("q8");
        assert!(parse_config::<DllamaConfig>(KEY, &v)
            .unwrap()
            .nodes()
            .unwrap_err()
            .starts_with("buffer_float_type"));
        v["bogus"] = json!(1);
        assert!(build(&v)
            .err()
            .unwrap()
            .to_string()
            .contains("unknown field `bogus`"));
    }

    #[test]
    fn root_arguments_pin_temperature_zero() {
        let c: DllamaConfig = parse_config(KEY, &config(&["a", "b:9998"])).unwrap();
        let b = DllamaBackend::new(c).unwrap();
        let args = b.root_args();
        let t = args.iter().position(|a| a == "--temperature").unwrap();
        assert_eq!(args[t + 1], "0");
        assert_eq!(b.worker_args(), vec!["b:9998"]);
        assert_eq!(b.capabilities().loglikelihood, LoglikelihoodSupport::None);
        assert!(!b.capabilities().completions);
    }

    #[test]
    fn the_model_header_of_the_recorded_startup() {
        let text = include_str!("../tests/fixtures/distributed-llama/api_startup.log");
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        let h = model_header(&lines);
        assert_eq!(h["Arch"], "Llama");
        assert_eq!(h["nKvHeads"], "3");
        assert_eq!(h["RequiredMemory"], "290 MB");
    }
}
