//! What each server software is, in one place: [`ServerKind::quirks`] is the only `match` on
//! [`ServerKind`], a table of [`Quirks`] (routes, capabilities and oddities) that the rest of the
//! backend reads instead of asking which server it talks to. Adding a server is adding its variant
//! to [`ServerKind`], its row here and, when `auto` should recognise it, its place in
//! [`DETECTION_ORDER`].
//!
//! [`Profile`] is what start found the server to be: its kind's quirks plus what the server said
//! about itself (version, context, slots). Nothing here does I/O or fails.

use super::ServerKind;
use serde_json::{json, Value};

/// The kinds `auto` asks for, in order: the first whose [`Identity`] the server confirms is taken,
/// else [`ServerKind::Generic`].
pub(super) const DETECTION_ORDER: [ServerKind; 3] =
    [ServerKind::LlamaCpp, ServerKind::Vllm, ServerKind::Ollama];

/// How a server says what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Identity {
    /// llama-server's `/props`: recognised by `default_generation_settings` or `build_info`; gives
    /// the build, the slot count and the context (always read when the kind is named).
    LlamaProps,
    /// A JSON object with a string `version` at `path`. `when_named`: also read when the kind is
    /// configured rather than detected.
    Version {
        /// The route (`/version`, `/api/version`).
        path: &'static str,
        /// Read it when the kind is named too.
        when_named: bool,
    },
}

/// How a server's `/tokenize` wants its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Tokenizer {
    /// The key of the text (`content`, `prompt`).
    pub(super) text_key: &'static str,
    /// The key of the add-special-tokens flag.
    pub(super) special_key: &'static str,
    /// Whether the model name goes with the request.
    pub(super) sends_model: bool,
}

impl Tokenizer {
    /// The `/tokenize` request body for `text`.
    pub(super) fn body(&self, text: &str, add_special: bool, model: Option<&str>) -> Value {
        let mut b = json!({});
        b[self.text_key] = json!(text);
        b[self.special_key] = json!(add_special);
        if let Some(m) = model.filter(|_| self.sends_model) {
            b["model"] = json!(m);
        }
        b
    }
}

/// Everything the backend does differently for one server kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Quirks {
    /// The name used in messages and in the backend info.
    pub(super) name: &'static str,
    /// How `auto` recognises it (and what is read about it when named); `None`: never detected.
    pub(super) identity: Option<Identity>,
    /// `/v1/completions` is there (else chat only).
    pub(super) completions: bool,
    /// Its `/tokenize` endpoint, if it has one.
    pub(super) tokenizer: Option<Tokenizer>,
    /// It accepts `stream_options.include_usage` (dllama-api reads a fixed set of keys).
    pub(super) stream_usage: bool,
    /// A fixed number of requests it serves at once (dllama-api: one).
    pub(super) slots: Option<usize>,
    /// Connections may be kept for reuse (dllama-api closes every one).
    pub(super) keep_alive: bool,
    /// A spare connection may be opened to check that it still listens (dllama-api's
    /// one-at-a-time accept loop would take it for a request).
    pub(super) liveness_probe: bool,
    /// `/slots` lists its slots and their contexts.
    pub(super) slots_endpoint: bool,
    /// llama.cpp's native `/completion` with `n_probs`, `id_slot` and `cache_prompt`: the top-N
    /// method, single-pass scoring, and one request per slot in the cached top-N mode.
    pub(super) native_top_n: bool,
    /// Its slots share one KV pool of the context it reports: requests in flight never hold more
    /// tokens than that (the KV budget).
    pub(super) shared_kv: bool,
}

/// What every OpenAI-compatible server is assumed to have: completions and chat, nothing else.
const GENERIC: Quirks = Quirks {
    name: "OpenAI-compatible server",
    identity: None,
    completions: true,
    tokenizer: None,
    stream_usage: true,
    slots: None,
    keep_alive: true,
    liveness_probe: true,
    slots_endpoint: false,
    native_top_n: false,
    shared_kv: false,
};

impl ServerKind {
    /// This kind's quirks: the one place that says how the servers differ.
    pub(super) fn quirks(self) -> &'static Quirks {
        const AUTO: Quirks = Quirks {
            name: "auto",
            ..GENERIC
        };
        const LLAMA_CPP: Quirks = Quirks {
            name: "llama.cpp llama-server",
            identity: Some(Identity::LlamaProps),
            tokenizer: Some(Tokenizer {
                text_key: "content",
                special_key: "add_special",
                sends_model: false,
            }),
            slots_endpoint: true,
            native_top_n: true,
            shared_kv: true,
            ..GENERIC
        };
        const VLLM: Quirks = Quirks {
            name: "vLLM",
            identity: Some(Identity::Version {
                path: "/version",
                when_named: true,
            }),
            tokenizer: Some(Tokenizer {
                text_key: "prompt",
                special_key: "add_special_tokens",
                sends_model: true,
            }),
            ..GENERIC
        };
        const OLLAMA: Quirks = Quirks {
            name: "Ollama",
            identity: Some(Identity::Version {
                path: "/api/version",
                when_named: false,
            }),
            ..GENERIC
        };
        const DLLAMA_API: Quirks = Quirks {
            name: "dllama-api",
            completions: false,
            stream_usage: false,
            slots: Some(1),
            keep_alive: false,
            liveness_probe: false,
            ..GENERIC
        };
        match self {
            ServerKind::Auto => &AUTO,
            ServerKind::LlamaCpp => &LLAMA_CPP,
            ServerKind::Vllm => &VLLM,
            ServerKind::Ollama => &OLLAMA,
            ServerKind::DllamaApi => &DLLAMA_API,
            ServerKind::Generic => &GENERIC,
        }
    }

    /// The name used in messages and in the backend info.
    pub(super) fn name(self) -> &'static str {
        self.quirks().name
    }
}

/// What the server was found to be at start.
#[derive(Debug, Clone)]
pub(crate) struct Profile {
    pub(super) kind: ServerKind,
    pub(super) version: Option<String>,
    pub(super) completions: bool,
    pub(super) tokenizer: bool,
    /// Send `stream_options.include_usage` (not to dllama-api, which reads a fixed set of keys).
    pub(super) stream_usage: bool,
    pub(super) n_ctx: Option<u64>,
    pub(super) slots: Option<usize>,
}

impl Profile {
    /// What is known of `kind` before asking the server.
    pub(super) fn for_kind(kind: ServerKind) -> Profile {
        let q = kind.quirks();
        Profile {
            kind,
            version: None,
            completions: q.completions,
            tokenizer: q.tokenizer.is_some(),
            stream_usage: q.stream_usage,
            n_ctx: None,
            slots: q.slots,
        }
    }

    /// The quirks of the server's kind.
    pub(super) fn quirks(&self) -> &'static Quirks {
        self.kind.quirks()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenize_bodies_follow_each_server() {
        let llama = ServerKind::LlamaCpp.quirks().tokenizer.unwrap();
        assert_eq!(
            llama.body("hi", true, Some("m")),
            json!({"content": "hi", "add_special": true})
        );
        let vllm = ServerKind::Vllm.quirks().tokenizer.unwrap();
        assert_eq!(
            vllm.body("hi", false, Some("m")),
            json!({"prompt": "hi", "add_special_tokens": false, "model": "m"})
        );
        assert_eq!(
            vllm.body("hi", false, None),
            json!({"prompt": "hi", "add_special_tokens": false})
        );
        for kind in [
            ServerKind::Auto,
            ServerKind::Ollama,
            ServerKind::DllamaApi,
            ServerKind::Generic,
        ] {
            assert!(kind.quirks().tokenizer.is_none(), "{kind:?}");
        }
    }

    #[test]
    fn profiles_before_detection() {
        let d = Profile::for_kind(ServerKind::DllamaApi);
        assert!(!d.completions && !d.tokenizer && !d.stream_usage);
        assert_eq!(d.slots, Some(1));
        let l = Profile::for_kind(ServerKind::LlamaCpp);
        assert!(l.completions && l.tokenizer && l.stream_usage);
        assert_eq!(l.slots, None);
        let a = Profile::for_kind(ServerKind::Auto);
        assert!(a.completions && !a.tokenizer && a.stream_usage);
        assert_eq!(ServerKind::Auto.name(), "auto");
        // Only detectable kinds are asked for, each once.
        for (i, k) in DETECTION_ORDER.iter().enumerate() {
            assert!(k.quirks().identity.is_some(), "{k:?}");
            assert!(!DETECTION_ORDER[..i].contains(k), "{k:?}");
        }
    }
}
