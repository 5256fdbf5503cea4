//! Settings of the `distributed-llama` backend (`[backend.distributed-llama]`), checked without
//! I/O: [`DllamaConfig::nodes`] turns them into the cluster's [`Node`]s or a message naming the key
//! that is wrong and what was expected.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// How the cluster is used.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
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
    /// Inference mode: `--steps` for every run (default: the prompt's UTF-8 length + 1 +
    /// `max_tokens`, capped at `max_seq_len`; generation is cut at `max_tokens` either way).
    #[serde(default)]
    pub inference_steps: Option<u32>,
    /// The distributed-llama version, recorded with results (it prints none itself).
    #[serde(default)]
    pub version: Option<String>,
    /// Seconds to wait for each worker to listen and for `dllama-api` to answer (the model is
    /// loaded and its weights sent to the workers meanwhile).
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
