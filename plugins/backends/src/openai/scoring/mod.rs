//! Log-likelihood scoring of the `openai` backend, following lm-evaluation-harness exactly (see
//! [`crate::loglik`]): the server's tokenizer splits context and continuation as lm-eval does, and
//! each continuation is scored by the first method the server really has ([`echo`], else
//! llama.cpp's [`top_n`], in the [`single_pass`] mode by default). At start, probes of a known
//! prompt decide which method is trusted ([`OpenAiBackend::start_scoring`]).
//!
//! Fails with [`BackendError::Unsupported`] when no method is there (or the configured one is
//! not), [`BackendError::InvalidRequest`] for requests lm-eval would not score as given (an empty
//! context, more tokens than the server's context), and [`BackendError::BadReply`] for replies
//! without the log-probabilities asked for.

mod echo;
mod kv_cells;
mod single_pass;
mod top_n;

pub(super) use single_pass::SinglePass;

use super::replies::parse_token_ids;
use super::{BosPolicy, LoglikelihoodMethod, OpenAiBackend, Session, PROBE_TEXT};
use crate::loglik::{self, ScoringStats};
use epi_core::backend::{
    BackendError, LoglikelihoodRequest, LoglikelihoodResponse, LoglikelihoodSupport,
};
use serde_json::{json, Value};
use std::time::Instant;

impl OpenAiBackend {
    /// The server's token ids for `text`, following the BOS policy.
    /// Tokenize calls are not scoring requests: no [`ScoringStats`] counts them.
    pub(in crate::openai) async fn tokenize(
        &self,
        s: &Session,
        text: &str,
    ) -> Result<Vec<u32>, BackendError> {
        self.tokenize_with(s, text, self.config.bos == BosPolicy::ModelDefault)
            .await
    }

    pub(in crate::openai) async fn tokenize_with(
        &self,
        s: &Session,
        text: &str,
        add_special: bool,
    ) -> Result<Vec<u32>, BackendError> {
        let Some(tokenizer) = s.profile.quirks().tokenizer else {
            return Err(BackendError::Unsupported {
                backend: self.key.clone(),
                message: format!("{} has no tokenizer endpoint", s.profile.kind.name()),
            });
        };
        let body = tokenizer.body(text, add_special, s.model.as_deref());
        let (v, _) = self.post_json(s, "/tokenize", &body, None).await?;
        parse_token_ids(&v).map_err(|m| self.err_bad(format!("/tokenize: {m}")))
    }

    /// Decides the log-likelihood method (trusting only what a probe confirms) and records in
    /// `details` what the probes found and what the BOS policy does with this model.
    pub(in crate::openai) async fn start_scoring(
        &self,
        s: &mut Session,
        details: &mut serde_json::Map<String, Value>,
    ) -> Result<(), BackendError> {
        let want = self.config.loglikelihood;
        let mut ll = LoglikelihoodSupport::None;
        if want != LoglikelihoodMethod::None && s.profile.tokenizer {
            if matches!(want, LoglikelihoodMethod::Auto | LoglikelihoodMethod::Echo)
                && s.profile.completions
            {
                match self.probe_echo(s).await? {
                    Ok(()) => {
                        ll = LoglikelihoodSupport::Echo;
                        details.insert(
                            "echo_probe".into(),
                            json!("prompt log-probabilities returned"),
                        );
                    }
                    Err(why) => {
                        details.insert("echo_probe".into(), json!(why));
                        if want == LoglikelihoodMethod::Echo {
                            return Err(BackendError::Unsupported {
                                backend: self.key.clone(),
                                message: format!(
                                    "loglikelihood = \"echo\", but the server does not return prompt \
                                     log-probabilities for echo ({why}); use \"top-n\" or \"auto\""
                                ),
                            });
                        }
                    }
                }
            }
            if ll == LoglikelihoodSupport::None
                && matches!(want, LoglikelihoodMethod::Auto | LoglikelihoodMethod::TopN)
            {
                match self.probe_top_n(s).await? {
                    Ok(()) => {
                        ll = LoglikelihoodSupport::TopN {
                            n: self.config.top_n,
                        };
                        details.insert(
                            "top_n_probe".into(),
                            json!("top-N log-probabilities returned"),
                        );
                    }
                    Err(why) => {
                        details.insert("top_n_probe".into(), json!(why.clone()));
                        if want == LoglikelihoodMethod::TopN {
                            return Err(BackendError::Unsupported {
                                backend: self.key.clone(),
                                message: format!("loglikelihood = \"top-n\", but {why}"),
                            });
                        }
                    }
                }
            }
        } else if matches!(want, LoglikelihoodMethod::Echo | LoglikelihoodMethod::TopN) {
            return Err(BackendError::Unsupported {
                backend: self.key.clone(),
                message: format!(
                    "{} has no tokenizer endpoint, so log-likelihoods cannot be split as lm-eval does",
                    s.profile.kind.name()
                ),
            });
        }
        s.ll = ll.clone();
        if s.profile.tokenizer && ll != LoglikelihoodSupport::None {
            // Record what the BOS policy does with this model.
            let plain = self.tokenize_with(s, PROBE_TEXT, false).await?;
            let special = self.tokenize_with(s, PROBE_TEXT, true).await?;
            details.insert("model_adds_bos".into(), json!(special.len() > plain.len()));
        }
        Ok(())
    }

    /// Scores `request` with the session's method.
    pub(in crate::openai) async fn score(
        &self,
        s: &Session,
        request: &LoglikelihoodRequest,
    ) -> Result<LoglikelihoodResponse, BackendError> {
        let t0 = Instant::now();
        let method = match &s.ll {
            LoglikelihoodSupport::None => {
                return Err(BackendError::Unsupported {
                    backend: self.key.clone(),
                    message: format!(
                        "{} returns no usable log-probabilities (see the probes in the backend details): use \
                         generative scoring",
                        s.profile.kind.name()
                    ),
                })
            }
            LoglikelihoodSupport::Echo => "echo",
            LoglikelihoodSupport::TopN { .. } => "top-n",
        };
        if request.continuations.is_empty() {
            return Err(self.err_invalid("no continuations to score".into()));
        }
        if request.context.is_empty() {
            return Err(self.err_invalid(
                "an empty context is not supported (lm-eval would score it after the BOS/EOS token)".into(),
            ));
        }
        let mut stats = ScoringStats::default();
        // lm-eval's _encode_pair, for each continuation; the context is tokenized once per
        // distinct (moved-whitespace) context.
        let mut ctx_cache: Vec<(String, Vec<u32>)> = Vec::new();
        let mut pairs: Vec<(Vec<u32>, Vec<u32>)> = Vec::new();
        for cont in &request.continuations {
            let (context, continuation) = loglik::split_trailing_whitespace(&request.context, cont);
            let ctx_ids = match ctx_cache.iter().find(|(c, _)| *c == context) {
                Some((_, ids)) => ids.clone(),
                None => {
                    let ids = self.tokenize(s, &context).await?;
                    ctx_cache.push((context.clone(), ids.clone()));
                    ids
                }
            };
            let whole = self
                .tokenize(s, &format!("{context}{continuation}"))
                .await?;
            let cont_ids = loglik::encode_pair(&ctx_ids, &whole)
                .map_err(|m| self.err_invalid(format!("continuation {cont:?}: {m}")))?;
            if let Some(n_ctx) = s.profile.n_ctx {
                let total = (ctx_ids.len() + cont_ids.len()) as u64;
                if total + 1 > n_ctx {
                    return Err(self.err_invalid(format!(
                        "context + continuation are {total} tokens, more than the server's context of {n_ctx} \
                         (lm-eval would truncate; start the server with a larger -c)"
                    )));
                }
            }
            pairs.push((ctx_ids, cont_ids));
        }
        let mut scores = Vec::with_capacity(pairs.len());
        match &s.ll {
            LoglikelihoodSupport::Echo => {
                // One batched request per distinct context (almost always exactly one).
                for (ctx, group) in by_context(&pairs) {
                    scores.extend(self.score_echo(s, &ctx, &group, &mut stats).await?);
                }
            }
            LoglikelihoodSupport::TopN { .. } => {
                for (ctx, group) in by_context(&pairs) {
                    let scored = match &s.single_pass {
                        Some(sp) => {
                            // One item at a time on the pinned slot.
                            let _item = sp.item.lock().await;
                            loglik::score_top_n(&ctx, &group, |p| self.single_pass_top_n(s, sp, p))
                                .await
                        }
                        None => {
                            loglik::score_top_n(&ctx, &group, |p| self.top_n_cached(s, p)).await
                        }
                    };
                    let (sc, st) = scored.map_err(|e| match e {
                        BackendError::BadReply { message, .. } => self.err_bad(message),
                        other => other,
                    })?;
                    stats.requests += st.requests;
                    stats.tokens_in += st.tokens_in;
                    stats.tokens_out += st.tokens_out;
                    if let Some(c) = st.cached_tokens {
                        stats.cached_tokens = Some(stats.cached_tokens.unwrap_or(0) + c);
                    }
                    scores.extend(sc);
                }
            }
            LoglikelihoodSupport::None => unreachable!("handled above"),
        }
        Ok(LoglikelihoodResponse {
            scores,
            method: method.to_string(),
            tokens_in: stats.tokens_in,
            tokens_out: stats.tokens_out,
            requests: stats.requests,
            latency_s: t0.elapsed().as_secs_f64(),
            cached_tokens: stats.cached_tokens,
        })
    }
}

/// Consecutive (context, continuation) pairs grouped by context, in order: one group per run of
/// equal contexts.
fn by_context(pairs: &[(Vec<u32>, Vec<u32>)]) -> Vec<(Vec<u32>, Vec<Vec<u32>>)> {
    let mut groups: Vec<(Vec<u32>, Vec<Vec<u32>>)> = Vec::new();
    for (ctx, cont) in pairs {
        match groups.last_mut() {
            Some((c, g)) if c == ctx => g.push(cont.clone()),
            _ => groups.push((ctx.clone(), vec![cont.clone()])),
        }
    }
    groups
}
