//! Server detection at start: which software answers (`auto` asks each kind of
//! [`DETECTION_ORDER`] in turn through its [`Identity`]: `/props`, `/version`, `/api/version`),
//! what it says about itself (llama-server's build, slots and context), and the model to send.
//!
//! A probe that gets no answer, a non-2xx status or a body that is not JSON just does not
//! recognise the server; only a server that refuses connections fails start
//! ([`BackendError::Unavailable`]), as does a `/v1/models` that cannot be read when no model was
//! configured.

use super::server::{Identity, Profile, DETECTION_ORDER};
use super::{OpenAiBackend, ServerKind, Session};
use epi_core::backend::BackendError;
use serde_json::{json, Value};

impl OpenAiBackend {
    /// Detects the server and its features.
    pub(super) async fn detect(
        &self,
        s: &mut Session,
    ) -> Result<serde_json::Map<String, Value>, BackendError> {
        let mut details = serde_json::Map::new();
        let kind = if self.config.server == ServerKind::Auto {
            let mut found = None;
            for candidate in DETECTION_ORDER {
                s.profile = Profile::for_kind(candidate);
                if let Some(identity) = candidate.quirks().identity {
                    if self.identify(s, identity, true, &mut details).await? {
                        found = Some(candidate);
                        break;
                    }
                }
            }
            found.unwrap_or_else(|| {
                s.profile = Profile::for_kind(ServerKind::Generic);
                ServerKind::Generic
            })
        } else {
            let kind = self.config.server;
            s.profile = Profile::for_kind(kind);
            if let Some(identity) = kind.quirks().identity {
                self.identify(s, identity, false, &mut details).await?;
            }
            kind
        };
        if kind.quirks().slots_endpoint {
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

    /// Asks the server through `identity` and records what it says in `s.profile`. Detecting
    /// (`auto`), returns whether the server is of that kind; for a named kind, reads what there
    /// is without judging (`when_named` routes only).
    async fn identify(
        &self,
        s: &mut Session,
        identity: Identity,
        auto: bool,
        details: &mut serde_json::Map<String, Value>,
    ) -> Result<bool, BackendError> {
        match identity {
            Identity::LlamaProps => {
                let Some(p) = self.try_get_json(s, "/props").await? else {
                    return Ok(false);
                };
                if auto
                    && p.get("default_generation_settings").is_none()
                    && p.get("build_info").is_none()
                {
                    return Ok(false);
                }
                self.read_llama_props(s, &p, details);
                Ok(true)
            }
            Identity::Version { path, when_named } => {
                if !auto && !when_named {
                    return Ok(false);
                }
                let Some(v) = self.try_get_json(s, path).await? else {
                    return Ok(false);
                };
                let version = v.get("version").and_then(Value::as_str);
                if auto && version.is_none() {
                    return Ok(false);
                }
                s.profile.version = version.map(str::to_string);
                Ok(true)
            }
        }
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
}
