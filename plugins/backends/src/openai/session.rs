//! Start of the `openai` backend: the HTTP client (shaped by the server's quirks), the liveness
//! check, detection, the log-likelihood method, concurrency and the KV budget, and the
//! [`BackendInfo`] that records what was found. The resulting [`Session`] is what every request
//! uses.
//!
//! Fails with [`BackendError::Setup`] on a bad configuration or a missing API key variable,
//! [`BackendError::Unavailable`] when the server cannot be reached, and
//! [`BackendError::Unsupported`] when a configured log-likelihood method is not there.

use super::scoring::SinglePass;
use super::server::Profile;
use super::transport::{KvBudget, Liveness};
use super::{root_url, OpenAiBackend, TopNMode};
use epi_core::backend::{BackendError, BackendInfo, LoglikelihoodSupport};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// The state built by `start`.
pub(super) struct Session {
    pub(super) http: reqwest::Client,
    pub(super) root: String,
    pub(super) model: Option<String>,
    pub(super) api_key: Option<String>,
    pub(super) profile: Profile,
    pub(super) ll: LoglikelihoodSupport,
    pub(super) permits: Arc<Semaphore>,
    pub(super) max_concurrency: usize,
    /// llama-server's shared context, as a budget of tokens in flight.
    pub(super) kv: Option<KvBudget>,
    /// The liveness check of pending requests.
    pub(super) liveness: Option<Liveness>,
    /// The single-pass top-N state (llama-server in the single-pass mode).
    pub(super) single_pass: Option<SinglePass>,
}

impl OpenAiBackend {
    fn build_client(&self) -> Result<reqwest::Client, BackendError> {
        // reqwest is built without a default TLS crypto provider; install ring once per process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = reqwest::Client::builder()
            .http1_title_case_headers()
            .http1_only()
            .timeout(Duration::from_secs_f64(self.config.timeout_s))
            .connect_timeout(Duration::from_secs_f64(self.config.connect_timeout_s))
            .user_agent(concat!("epi-bench/", env!("CARGO_PKG_VERSION")));
        if !self.config.server.quirks().keep_alive {
            // It closes every connection: never keep one for reuse.
            b = b.pool_max_idle_per_host(0);
        }
        b.build()
            .map_err(|e| self.err_setup(format!("cannot build the HTTP client: {e}")))
    }

    /// Connects to the server, finds out what it is and can do, and builds the session.
    pub(super) async fn open(&self) -> Result<(Session, BackendInfo), BackendError> {
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
        let http = self.build_client()?;
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
        if !self.config.server.quirks().liveness_probe || interval == 0.0 {
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

        self.start_scoring(&mut s, &mut details).await?;
        let ll = s.ll.clone();
        // Concurrency: one at a time unless configured, except llama-server's cached top-N mode
        // (its slots). On llama-server the requests in flight never hold more tokens than its
        // context: its slots share one KV pool (the unified cache, its default; the API does not
        // say, so a pool per slot is treated the same way: safe, possibly slower).
        let top_n_mode = self.config.top_n_mode;
        let default_concurrency = if kind.quirks().native_top_n && top_n_mode == TopNMode::Cached {
            s.profile.slots.unwrap_or(1)
        } else {
            1
        };
        let max_concurrency = self
            .config
            .max_concurrency
            .unwrap_or(default_concurrency)
            .max(1);
        s.max_concurrency = max_concurrency;
        s.permits = Arc::new(Semaphore::new(max_concurrency));
        if kind.quirks().shared_kv {
            if let Some(n) = s.profile.n_ctx.and_then(|n| u32::try_from(n).ok()) {
                s.kv = Some(KvBudget::new(n));
                details.insert("kv_budget_tokens".into(), json!(n));
            }
        }
        let mut warnings = Vec::new();
        let trusted = self
            .start_single_pass(&mut s, &mut details, &mut warnings)
            .await?;

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
        Ok((s, info))
    }
}
