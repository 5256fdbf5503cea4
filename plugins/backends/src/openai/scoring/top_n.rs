//! The **top-n** method: llama.cpp's native `/completion` with a token-id prompt, `n_predict: 1`,
//! `n_probs: N`, teacher-forced token by token ([`crate::loglik::score_top_n`]). Exact per item
//! only when every continuation token was within the top N and the value is the single-pass one
//! ([`super::single_pass`]); the cached mode reuses the prompt cache across slots (faster, not
//! reproducible, never exact). A reply without the top-N list is a [`BackendError::BadReply`].

use crate::loglik::{Fidelity, TopN};
use crate::openai::replies::parse_top_n;
use crate::openai::{OpenAiBackend, Session, PROBE_TEXT};
use epi_core::backend::BackendError;
use serde_json::json;

impl OpenAiBackend {
    /// Asks llama.cpp's `/completion` for the top N after the probe prompt.
    pub(super) async fn probe_top_n(
        &self,
        s: &Session,
    ) -> Result<Result<(), String>, BackendError> {
        if !s.profile.quirks().native_top_n {
            return Ok(Err(format!(
                "{} has no native /completion with n_probs",
                s.profile.kind.name()
            )));
        }
        let ids = self.tokenize(s, PROBE_TEXT).await?;
        match self.top_n_request(s, &ids, self.probe_slot(s), false).await {
            Ok(t) if !t.entries.is_empty() => Ok(Ok(())),
            Ok(_) => Ok(Err("no top-N log-probabilities in the reply".into())),
            Err(e @ BackendError::Unavailable { .. }) => Err(e),
            Err(e) => Ok(Err(e.to_string())),
        }
    }

    /// One top-N request of the cached mode: the `n` most likely next tokens after `prompt` (token
    /// ids, no BOS added by the server), the prompt cache reused by whichever slot gets it.
    pub(super) async fn top_n_cached(
        &self,
        s: &Session,
        prompt: Vec<u32>,
    ) -> Result<TopN, BackendError> {
        self.top_n_request(s, &prompt, None, true).await
    }

    /// One top-N request for `prompt`: on `slot` when given, with or without the prompt cache.
    pub(super) async fn top_n_request(
        &self,
        s: &Session,
        prompt: &[u32],
        slot: Option<u32>,
        cache_prompt: bool,
    ) -> Result<TopN, BackendError> {
        let mut body = json!({
            "prompt": prompt,
            "n_predict": 1,
            "n_probs": self.config.top_n,
            "temperature": 0.0,
            "cache_prompt": cache_prompt,
            "post_sampling_probs": false,
        });
        if let Some(id) = slot {
            body["id_slot"] = json!(id);
        }
        let kv_tokens = prompt.len() as u64 + 1;
        let (v, _) = self
            .post_json(s, "/completion", &body, Some(kv_tokens))
            .await?;
        parse_top_n(&v, prompt.len() as u64, Fidelity::Approximate)
            .map_err(|m| self.err_bad(format!("/completion: {m}")))
    }
}
