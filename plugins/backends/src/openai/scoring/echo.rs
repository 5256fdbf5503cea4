//! The **echo** method: `/v1/completions` with `echo: true, logprobs: 1` on token ids, read from
//! the legacy `tokens`/`token_logprobs` arrays (vLLM). Trusted only when the probe of a known
//! prompt really returned one log-probability per prompt token: llama.cpp's `llama-server`
//! silently ignores `echo`, older builds reject it. A reply without them is a
//! [`BackendError::BadReply`].

use crate::loglik::ScoringStats;
use crate::openai::replies::{error_message, parse_echo, usage_counts};
use crate::openai::{OpenAiBackend, Session, PROBE_TEXT};
use epi_core::backend::{BackendError, ContinuationScore};
use serde_json::{json, Value};

impl OpenAiBackend {
    /// Asks for prompt log-probabilities of [`PROBE_TEXT`] and says whether they really came back.
    pub(super) async fn probe_echo(&self, s: &Session) -> Result<Result<(), String>, BackendError> {
        let ids = self.tokenize(s, PROBE_TEXT).await?;
        let mut body = json!({"prompt": ids, "max_tokens": 1, "temperature": 0.0, "logprobs": 1, "echo": true});
        if let Some(m) = &s.model {
            body["model"] = json!(m);
        }
        if let Some(slot) = self.probe_slot(s) {
            body["id_slot"] = json!(slot);
        }
        let (reply, _) = self
            .send(
                s,
                reqwest::Method::POST,
                "/v1/completions",
                Some(&body),
                None,
            )
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

    /// Scores the continuations `conts` of `ctx` in one batched echo request.
    pub(super) async fn score_echo(
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
        let (v, _) = self.post_json(s, "/v1/completions", &body, None).await?;
        let (tin, cached, tout) = usage_counts(&v);
        stats.add(tin.unwrap_or(0), cached, tout.unwrap_or(0));
        parse_echo(&v, ctx.len(), conts)
            .map_err(|m| self.err_bad(format!("/v1/completions (echo): {m}")))
    }
}
