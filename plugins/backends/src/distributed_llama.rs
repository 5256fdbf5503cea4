//! `distributed-llama`: a [distributed-llama](https://github.com/b4rtaz/distributed-llama) cluster
//! driven over SSH ([`epi_ssh`]).
//!
//! **API mode** (default): [`start`](InferenceBackend::start) connects to every host (host keys
//! verified against known_hosts), starts `dllama worker --port P --nthreads N` on each worker host
//! and waits until it listens, then starts `dllama-api` on the root (`hosts[0]`) with the model,
//! tokenizer, buffer type, threads, sequence length, `--temperature 0` and `--workers`, and waits
//! until it answers — it listens only once the weights have been sent to every worker, so weight
//! transfer is never inside a measured window. Neither program flushes its readiness line
//! (`Listening on`, `Server URL:`) when it is not at a terminal, so readiness is **polled**
//! ([`process`]: the process's own listening socket, then `GET /v1/models`), the output is still
//! read for errors, and [`startup_progress`](InferenceBackend::startup_progress) says what is
//! waited for and for how long. Requests then go through the [`openai`](crate::openai) client in
//! its `dllama-api` profile: chat only, one request at a time, a fresh connection each time
//! (`Connection: close`), title-case headers, validated bodies (the server dies on a lower-case
//! `content-length`, a body that is not JSON, array `content`, a `stop` that is not a list), no
//! usage in streams, garbage `index` and empty `finish_reason` tolerated. It has no
//! log-probabilities: scoring is generative only.
//!
//! **Inference mode** (`mode = "inference"`, throughput-only runs): workers as above; each
//! [`generate`](InferenceBackend::generate) runs `dllama inference --prompt P --steps S` on the root
//! (a new root each time: it sends the weights again; the workers are first waited for until they
//! listen again) and reads its output as it comes ([`inference`], [`inference_log`]; all three
//! formats). `--steps` counts the prompt too and generation does not stop at end-of-sequence: `S`
//! is `inference_steps` when set, else the prompt's UTF-8 length plus 1 plus `max_tokens` (an upper
//! bound of its token count plus the tokens asked for), capped at `max_seq_len`; the run is
//! **stopped once `max_tokens` tokens have been generated**, and only those are counted.
//!
//! [`stop`](InferenceBackend::stop) stops every remote process this backend started (TERM, then
//! KILL after `stop_grace_s`) and closes the connections; the SSH supervisor also stops them when a
//! connection drops, so Ctrl-C or a crash leaves nothing running.

pub mod config;
pub mod inference;
pub mod inference_log;
pub mod process;

pub use config::{DllamaConfig, DllamaMode, Node};

use crate::openai::{OpenAiBackend, OpenAiConfig, ServerKind};
use epi_core::backend::{
    BackendCapabilities, BackendError, BackendInfo, GenerateRequest, GenerateResponse,
    InferenceBackend, LoglikelihoodRequest, LoglikelihoodResponse, LoglikelihoodSupport,
    StartupProgress,
};
use epi_core::registry::{parse_config, Factory, PluginConfig, PluginRegistration};
use epi_core::Error;
use epi_ssh::{SshError, SshOptions, SshSession};
use process::{wait_ready, Drained, Readiness};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::sync::watch;

/// Registry key.
pub const KEY: &str = "distributed-llama";

/// The `distributed-llama` backend.
pub struct DllamaBackend {
    config: DllamaConfig,
    nodes: Vec<Node>,
    sessions: Vec<(String, SshSession)>,
    workers: Vec<(Node, Drained)>,
    root: Option<Drained>,
    client: Option<OpenAiBackend>,
    inference_lock: tokio::sync::Mutex<()>,
    started: bool,
    progress: watch::Sender<Option<StartupProgress>>,
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
            progress: watch::channel(None).0,
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

    /// Each node's hardware, read over its SSH session with
    /// [`epi_core::hardware::DETECT_SCRIPT`]; a host that cannot be read gives an entry
    /// with nothing known (the label then says less, never something assumed).
    async fn detect_hardware(&self) -> Vec<Value> {
        use epi_core::hardware::{HostHardware, DETECT_SCRIPT};
        let mut by_host: std::collections::BTreeMap<String, Value> = Default::default();
        for (host, s) in &self.sessions {
            let h = match s
                .run(&["sh", "-c", DETECT_SCRIPT], Duration::from_secs(30))
                .await
            {
                Ok(out) => HostHardware::parse(&out.stdout_text()),
                Err(_) => HostHardware::default(),
            };
            by_host.insert(host.clone(), serde_json::to_value(h).unwrap_or(Value::Null));
        }
        self.nodes
            .iter()
            .map(|n| by_host.get(&n.host).cloned().unwrap_or(Value::Null))
            .collect()
    }

    fn grace(&self) -> Duration {
        Duration::from_secs_f64(self.config.stop_grace_s)
    }

    fn limit(&self) -> Duration {
        Duration::from_secs_f64(self.config.startup_timeout_s)
    }

    /// Starts `argv` on `host`, its output drained in the background.
    async fn spawn(
        &self,
        host: &str,
        name: String,
        argv: &[String],
    ) -> Result<Drained, BackendError> {
        let p = self
            .session(host)?
            .spawn(argv)
            .await
            .map_err(|e| self.ssh_err(e))?;
        Ok(Drained::spawn(name, p))
    }

    /// Waits until `d` is `ready`; on failure stops it and says why.
    async fn ready_or_stop(
        &self,
        mut d: Drained,
        ready: &Readiness,
    ) -> Result<(Drained, f64), BackendError> {
        let session = self.session(&ready.host)?.clone();
        match wait_ready(&session, &d, ready, self.limit(), &self.progress).await {
            Ok(secs) => Ok((d, secs)),
            Err(message) => {
                d.stop(self.grace()).await;
                Err(self.setup(message))
            }
        }
    }

    /// Waits until every worker listens again (it takes a new root only then: after a root ends,
    /// a worker needs a moment to listen again). A dead worker is [`BackendError::Unavailable`].
    async fn workers_listening(&self) -> Result<(), BackendError> {
        for (node, w) in &self.workers {
            let session = self.session(&node.host)?.clone();
            let ready = Readiness {
                host: node.host.clone(),
                port: node.worker_port,
                http: None,
                doing: "waiting for the next root".into(),
            };
            wait_ready(&session, w, &ready, self.limit(), &self.progress)
                .await
                .map_err(|message| BackendError::Unavailable {
                    backend: KEY.into(),
                    message,
                })?;
        }
        Ok(())
    }

    async fn start_inner(&mut self) -> Result<BackendInfo, BackendError> {
        self.connect().await?;
        let mut layout = vec![json!({
            "role": "root",
            "host": self.nodes[0].host,
            "program": if self.config.mode == DllamaMode::Api { &self.config.dllama_api } else { &self.config.dllama },
        })];
        let mut worker_startup = Vec::new();
        for n in self.nodes.clone().iter().skip(1) {
            let argv = vec![
                self.config.dllama.clone(),
                "worker".into(),
                "--port".into(),
                n.worker_port.to_string(),
                "--nthreads".into(),
                self.config.nthreads.to_string(),
            ];
            let d = self.spawn(&n.host, "dllama worker".into(), &argv).await?;
            let ready = Readiness {
                host: n.host.clone(),
                port: n.worker_port,
                http: None,
                doing: "starting".into(),
            };
            let (d, secs) = self.ready_or_stop(d, &ready).await?;
            self.workers.push((n.clone(), d));
            worker_startup.push(json!(secs));
            layout.push(json!({"role": "worker", "host": n.host, "port": n.worker_port}));
        }
        let mut details = serde_json::Map::new();
        details.insert(
            "mode".into(),
            serde_json::to_value(self.config.mode).unwrap_or(Value::Null),
        );
        details.insert("nodes".into(), json!(self.nodes.len()));
        // What every node runs on, read there (CPU, cores, memory, accelerators): the run's
        // hardware label is composed from it, never assumed.
        details.insert(
            "hosts_hardware".into(),
            Value::Array(self.detect_hardware().await),
        );
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
        if !worker_startup.is_empty() {
            details.insert("worker_startup_s".into(), Value::Array(worker_startup));
        }
        details.insert(
            "readiness".into(),
            json!("polled: the process's own listening socket (/proc/net/tcp or lsof), then GET /v1/models for dllama-api"),
        );
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
                argv.extend(workers.clone());
            }
            let root_host = self.nodes[0].host.clone();
            let api_host = self.config.api_host.clone().unwrap_or(root_host.clone());
            let d = self.spawn(&root_host, "dllama-api".into(), &argv).await?;
            let ready = Readiness {
                host: root_host,
                port: self.config.api_port,
                http: Some((api_host.clone(), self.config.api_port)),
                doing: if workers.is_empty() {
                    "loading the model".into()
                } else {
                    format!(
                        "loading the model and sending its weights to {} worker(s)",
                        workers.len()
                    )
                },
            };
            let (d, secs) = self.ready_or_stop(d, &ready).await?;
            details.insert("startup_s".into(), json!(secs));
            // Printed at start-up but not flushed: present only if it has arrived.
            let header = model_header(&d.lines());
            if !header.is_empty() {
                details.insert("model_header".into(), Value::Object(header));
            }
            self.root = Some(d);
            let url = if api_host.contains(':') {
                format!("http://[{api_host}]:{}", self.config.api_port)
            } else {
                format!("http://{api_host}:{}", self.config.api_port)
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
        self.progress.send_replace(None);
        Ok(BackendInfo {
            backend: KEY.into(),
            server,
            version: self.config.version.clone(),
            model: model.or_else(|| Some(self.config.model.clone())),
            details,
            warnings: Vec::new(),
        })
    }

    /// dllama-api evaluates at most `max_seq_len` prompt positions and then generates nothing:
    /// a prompt that did not fit gets an empty reply and no error. Its usage still counts the
    /// whole prompt, so such a reply is turned into an error (a failed item, never a silent wrong
    /// answer).
    fn check_fits(&self, r: GenerateResponse) -> Result<GenerateResponse, BackendError> {
        match r.tokens_in {
            Some(n) if n > u64::from(self.config.max_seq_len) => Err(BackendError::BadReply {
                backend: KEY.into(),
                message: format!(
                    "the prompt is {n} tokens, more than max_seq_len {}: dllama-api cut it and \
                     generated nothing; raise `max_seq_len` (the model's own limit permitting) or \
                     send fewer few-shot examples",
                    self.config.max_seq_len
                ),
            }),
            _ => Ok(r),
        }
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

#[epi_core::async_trait]
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
                let r = c.generate(request).await.map_err(|e| self.explain(e))?;
                self.check_fits(r)
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

    fn startup_progress(&self) -> Option<watch::Receiver<Option<StartupProgress>>> {
        Some(self.progress.subscribe())
    }

    async fn stop(&mut self) -> Result<(), BackendError> {
        self.progress.send_replace(None);
        let grace = self.grace();
        if let Some(mut c) = self.client.take() {
            let _ = c.stop().await;
        }
        if let Some(mut r) = self.root.take() {
            r.stop(grace).await;
        }
        for (_, mut w) in self.workers.drain(..) {
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

impl epi_core::settings::PluginSettings for DllamaConfig {
    fn example() -> Self {
        epi_core::settings::example_from(
            serde_json::json!({"hosts": ["10.0.0.1", "10.0.0.2:9999"], "ssh_user": "pi", "model": "/models/dllama_model_qwen3_30b_a3b_q40.m", "tokenizer": "/models/dllama_tokenizer_qwen3_30b_a3b.t"}),
        )
    }
}

epi_core::inventory::submit! {
    PluginRegistration {
        key: KEY,
        description: "distributed-llama cluster over SSH: workers + dllama-api (generative), or dllama inference (throughput)",
        factory: Factory::Backend(build),
        settings: epi_core::settings::Settings::of::<DllamaConfig>,
        toml_aliases: &[],
        capabilities: &[],
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
