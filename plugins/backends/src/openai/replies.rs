//! Reading the replies of OpenAI-compatible servers: `usage` counts, `/tokenize` ids, llama.cpp's
//! top-N lists, legacy `echo` log-probabilities, error messages. Each parser returns a message
//! saying what was missing or malformed instead of guessing.

use crate::loglik::{Fidelity, TopN};
use epi_core::backend::ContinuationScore;
use serde_json::Value;

pub(super) fn finish_reason(choice: &Value) -> Option<String> {
    choice
        .get("finish_reason")
        .and_then(Value::as_str)
        .filter(|f| !f.is_empty())
        .map(str::to_string)
}

/// `(prompt_tokens, cached_tokens, completion_tokens)` from `usage` (and llama.cpp's `timings`).
pub(super) fn usage_counts(v: &Value) -> (Option<u64>, Option<u64>, Option<u64>) {
    let u = v.get("usage").filter(|u| u.is_object());
    let tin = u
        .and_then(|u| u.get("prompt_tokens"))
        .and_then(Value::as_u64);
    let tout = u
        .and_then(|u| u.get("completion_tokens"))
        .and_then(Value::as_u64);
    let cached = u
        .and_then(|u| u.pointer("/prompt_tokens_details/cached_tokens"))
        .and_then(Value::as_u64)
        .or_else(|| v.pointer("/timings/cache_n").and_then(Value::as_u64));
    (tin, cached, tout)
}

/// Token ids from a `/tokenize` reply: `{"tokens": [ids]}` or `{"tokens": [{"id", "piece"}]}`.
pub(super) fn parse_token_ids(v: &Value) -> Result<Vec<u32>, String> {
    let toks = v
        .get("tokens")
        .and_then(Value::as_array)
        .ok_or("no `tokens` array in the reply")?;
    toks.iter()
        .map(|t| {
            t.as_u64()
                .or_else(|| t.get("id").and_then(Value::as_u64))
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(|| format!("`{t}` is not a token id"))
        })
        .collect()
}

/// The top-N list of llama.cpp's `/completion` reply
/// (`completion_probabilities[0].top_logprobs[{id, logprob}]`).
pub(super) fn parse_top_n(v: &Value, prompt_len: u64, fidelity: Fidelity) -> Result<TopN, String> {
    let first = v
        .get("completion_probabilities")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .ok_or("no `completion_probabilities` in the reply (is n_probs supported?)")?;
    let top = first.get("top_logprobs").and_then(Value::as_array).ok_or(
        "`completion_probabilities[0]` has no `top_logprobs` with token ids (llama.cpp builds before the \
         logprob format change are not supported)",
    )?;
    let mut entries = Vec::with_capacity(top.len());
    for e in top {
        let id = e
            .get("id")
            .and_then(Value::as_u64)
            .and_then(|x| u32::try_from(x).ok());
        let lp = e.get("logprob").and_then(Value::as_f64);
        match (id, lp) {
            (Some(id), Some(lp)) if lp.is_finite() || lp == f64::NEG_INFINITY => {
                entries.push((id, lp))
            }
            _ => return Err(format!("a top_logprobs entry lacks `id` or `logprob`: {e}")),
        }
    }
    entries.sort_by(|a, b| b.1.total_cmp(&a.1));
    let tokens_in = v
        .get("tokens_evaluated")
        .and_then(Value::as_u64)
        .unwrap_or(prompt_len);
    let cached = v.pointer("/timings/cache_n").and_then(Value::as_u64);
    let tokens_out = v
        .get("tokens_predicted")
        .and_then(Value::as_u64)
        .unwrap_or(1);
    Ok(TopN {
        entries,
        tokens_in,
        cached_tokens: cached,
        tokens_out,
        fidelity,
        requests: 1,
    })
}

/// Continuation scores from an echo reply in the legacy shape (`choices[i].logprobs.token_logprobs`,
/// one per prompt token then the generated one): Σ `token_logprobs[ctx_len .. ctx_len + len(cont)]`
/// (lm-eval: `[ctxlen:-1]`).
pub(super) fn parse_echo(
    v: &Value,
    ctx_len: usize,
    conts: &[Vec<u32>],
) -> Result<Vec<ContinuationScore>, String> {
    let choices = v
        .get("choices")
        .and_then(Value::as_array)
        .ok_or("no `choices`")?;
    let mut out = Vec::with_capacity(conts.len());
    for (i, cont) in conts.iter().enumerate() {
        let choice = choices
            .iter()
            .find(|c| c.get("index").and_then(Value::as_u64) == Some(i as u64))
            .or_else(|| choices.get(i))
            .ok_or_else(|| format!("no choice for prompt {i}"))?;
        let lp = choice
            .get("logprobs")
            .ok_or_else(|| format!("choice {i} has no logprobs"))?;
        let tl = lp.get("token_logprobs").and_then(Value::as_array).ok_or_else(|| {
            format!("choice {i}: no legacy `token_logprobs` array (the server did not echo the prompt)")
        })?;
        let end = ctx_len + cont.len();
        if tl.len() < end {
            return Err(format!(
                "choice {i}: {} log-probabilities for a prompt of {end} tokens: the prompt was not echoed",
                tl.len()
            ));
        }
        let top = lp.get("top_logprobs").and_then(Value::as_array);
        let mut sum = 0.0;
        let mut greedy = true;
        for (k, entry) in tl.iter().enumerate().take(end).skip(ctx_len) {
            let x = entry
                .as_f64()
                .ok_or_else(|| format!("choice {i}: token_logprobs[{k}] is `{entry}`"))?;
            sum += x;
            if let Some(best) = top.and_then(|t| t.get(k)).and_then(Value::as_object) {
                let max = best
                    .values()
                    .filter_map(Value::as_f64)
                    .fold(f64::NEG_INFINITY, f64::max);
                if x < max {
                    greedy = false;
                }
            }
        }
        out.push(ContinuationScore {
            logprob: sum,
            n_tokens: cont.len() as u32,
            exact: true,
            is_greedy: top.map(|_| greedy),
        });
    }
    Ok(out)
}

/// The `error.message` of an error body, else the body's start.
pub(super) fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.get("error"))
                .or_else(|| v.get("message"))
                .or_else(|| v.get("detail"))
                .map(|m| {
                    m.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| m.to_string())
                })
        })
        .unwrap_or_else(|| snippet(body))
}

pub(super) fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    let s = s.trim();
    if s.chars().count() > 300 {
        format!("{}…", s.chars().take(300).collect::<String>())
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn top_n_reply_of_the_recording_parses() {
        let text = include_str!("../../tests/fixtures/llama-server/completion_n_probs.http");
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        let v: Value = serde_json::from_str(body).unwrap();
        let t = parse_top_n(&v, 12, Fidelity::SinglePass).unwrap();
        assert_eq!(t.entries.len(), 20);
        assert_eq!(t.entries[0], (2, -1.4404237270355225));
        assert!(
            t.entries.contains(&(7042, -4.173124313354492)),
            "` Paris` is in the recorded top 20"
        );
        assert_eq!(t.tokens_in, 12);
        assert_eq!(t.cached_tokens, Some(11));
    }

    #[test]
    fn echo_reply_in_the_legacy_shape_is_sliced_like_lm_eval() {
        // vLLM: one log-probability per prompt token (the first is null), then the generated one.
        let v = json!({"choices": [
            {"index": 0, "logprobs": {"token_logprobs": [null, -1.0, -2.0, -0.5, -0.25, -9.0],
             "top_logprobs": [null, {"a": -1.0}, {"b": -2.0}, {"c": -0.5}, {"d": -0.1, "e": -0.25}, {"f": -9.0}]}},
            {"index": 1, "logprobs": {"token_logprobs": [null, -1.0, -2.0, -3.0, -7.0],
             "top_logprobs": [null, {"a": -1.0}, {"b": -2.0}, {"c": -3.0}, {"f": -7.0}]}}
        ]});
        let s = parse_echo(&v, 3, &[vec![7, 8], vec![9]]).unwrap();
        assert_eq!(s[0].logprob, -0.75);
        assert_eq!(s[0].is_greedy, Some(false));
        assert_eq!(s[1].logprob, -3.0);
        assert_eq!(s[1].is_greedy, Some(true));
        assert!(s.iter().all(|x| x.exact));
        // llama-server's reply to echo: generated tokens only, in the new shape: refused.
        let text = include_str!("../../tests/fixtures/llama-server/v1_completions_echo.http");
        let v: Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert!(parse_echo(&v, 12, &[vec![7042]])
            .unwrap_err()
            .contains("legacy"));
    }

    #[test]
    fn usage_and_cache_counts() {
        let v = json!({"usage": {"prompt_tokens": 34, "completion_tokens": 8, "prompt_tokens_details": {"cached_tokens": 24}}});
        assert_eq!(usage_counts(&v), (Some(34), Some(24), Some(8)));
        let v = json!({"usage": {"prompt_tokens": 3, "completion_tokens": 1}, "timings": {"cache_n": 2}});
        assert_eq!(usage_counts(&v), (Some(3), Some(2), Some(1)));
        assert_eq!(usage_counts(&json!({})), (None, None, None));
    }
}
