//! Generation through `/v1/completions` or `/v1/chat/completions`, plain or streamed (for the
//! time to first token), greedy (`temperature: 0`). Stop strings are applied again to the text
//! (servers that ignore `stop`, like dllama-api, are cut here), and token counts come from the
//! reply's `usage`, else from the server's tokenizer, else are unknown.
//!
//! Fails with [`BackendError::Unsupported`] for a completion request to a chat-only server, and
//! with the transport's errors ([`super::transport`]); a reply without a choice or its text is a
//! [`BackendError::BadReply`].

use super::replies::{finish_reason, snippet, usage_counts};
use super::transport::Generated;
use super::{OpenAiBackend, Session};
use epi_core::backend::{BackendError, GenerateRequest, GenerateResponse, TokenCountSource};
use serde_json::{json, Value};
use std::time::Instant;

impl OpenAiBackend {
    pub(super) async fn generate_inner(
        &self,
        s: &Session,
        req: &GenerateRequest,
    ) -> Result<GenerateResponse, BackendError> {
        let chat = req.chat;
        if !chat && !s.profile.completions {
            return Err(BackendError::Unsupported {
                backend: self.key.clone(),
                message: format!(
                    "{} has no /v1/completions: send chat requests",
                    s.profile.kind.name()
                ),
            });
        }
        let mut body = if chat {
            json!({"messages": [{"role": "user", "content": req.prompt}]})
        } else {
            json!({"prompt": req.prompt})
        };
        if let Some(m) = &s.model {
            body["model"] = json!(m);
        }
        body["max_tokens"] = json!(req.max_tokens);
        body["temperature"] = json!(0.0);
        body["stream"] = json!(req.stream);
        if !req.stop.is_empty() {
            body["stop"] = json!(req.stop);
        }
        if req.stream && s.profile.stream_usage {
            body["stream_options"] = json!({"include_usage": true});
        }
        let path = if chat {
            "/v1/chat/completions"
        } else {
            "/v1/completions"
        };
        // The tokens it will hold in the server's context: at most one per byte of the prompt
        // (plus a chat template's), plus what it may generate.
        let kv_tokens =
            req.prompt.len() as u64 + if chat { 64 } else { 1 } + u64::from(req.max_tokens);
        let t0 = Instant::now();
        let (mut text, finish, usage, ttft) = if req.stream {
            self.stream(s, path, &body, chat, t0, Some(kv_tokens))
                .await?
        } else {
            self.once(s, path, &body, chat, Some(kv_tokens)).await?
        };
        let latency_s = t0.elapsed().as_secs_f64();
        // Servers that ignore `stop` (dllama-api) are cut here; the tokens were generated anyway.
        if let Some(cut) = req
            .stop
            .iter()
            .filter(|x| !x.is_empty())
            .filter_map(|x| text.find(x.as_str()))
            .min()
        {
            text.truncate(cut);
        }
        let (mut tokens_in, cached, mut tokens_out) = usage;
        let source = if tokens_in.is_some() || tokens_out.is_some() {
            TokenCountSource::Usage
        } else if s.profile.tokenizer {
            tokens_in = Some(self.tokenize_with(s, &req.prompt, false).await?.len() as u64);
            tokens_out = Some(self.tokenize_with(s, &text, false).await?.len() as u64);
            TokenCountSource::Tokenizer
        } else {
            TokenCountSource::Unknown
        };
        Ok(GenerateResponse {
            text,
            tokens_in,
            tokens_out,
            token_count_source: source,
            cached_tokens: cached,
            ttft_s: ttft,
            latency_s,
            finish_reason: finish,
        })
    }

    async fn once(
        &self,
        s: &Session,
        path: &str,
        body: &Value,
        chat: bool,
        kv_tokens: Option<u64>,
    ) -> Result<Generated, BackendError> {
        let (v, _) = self.post_json(s, path, body, kv_tokens).await?;
        let choice = v
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|c| c.first())
            .ok_or_else(|| {
                self.err_bad(format!(
                    "{path}: no `choices` in the reply: {}",
                    snippet(v.to_string().as_bytes())
                ))
            })?;
        // `index` is not read: dllama-api fills it with garbage.
        let text = if chat {
            choice.pointer("/message/content").and_then(Value::as_str)
        } else {
            choice.get("text").and_then(Value::as_str)
        }
        .ok_or_else(|| {
            self.err_bad(format!(
                "{path}: the choice has no text: {}",
                snippet(choice.to_string().as_bytes())
            ))
        })?
        .to_string();
        let finish = finish_reason(choice);
        Ok((text, finish, usage_counts(&v), None))
    }
}
