//! Where the pinned slot's sequence lies in llama-server's KV cache, and making it start at cell 0.
//!
//! Why. llama-server's default KV cache is **unified**: its slots share one buffer of cells. The
//! cell where a sequence starts depends on what the other slots hold, and ggml's CPU flash
//! attention processes the cells in 64-cell tiles, so the same prompt evaluated from another cell
//! gives other numbers (measured on SmolLM2-135M Q4_1, 4 slots: up to 0.71 nats on a
//! continuation; offsets 0, 64 and 192 gave the single-pass reference's numbers). Exact values
//! equal to a single-pass reference therefore need the pinned slot's sequence to start at cell 0.
//!
//! How (llama.cpp `src/llama-kv-cache.cpp`). Cells are searched from the cache's `head`
//! (`find_slot`), `head` moves to the end of what was placed (`apply_ubatch`), and removing a
//! sequence's cells moves `head` back to the first freed cell when that is lower (`seq_rm`): so
//! every cell below `head` is in use, and once the cache is empty, `head` is 0 and the next
//! sequence starts at cell 0, contiguous. A slot keeps its common prefix and removes the rest, so
//! the pinned slot then stays at cell 0 as long as no other slot places cells. The server frees a
//! slot's cells on `POST /slots/N?action=erase` only when started with `--slot-save-path`, but it
//! also **purges idle slots** when a batch finds no room (`try_clear_idle_slots` in
//! `tools/server/server-context.cpp`, unified cache only). So, when `/slots` shows tokens in
//! other idle slots, the pinned slot evaluates a *fill* prompt (`cache_prompt: false`) too long to
//! fit beside the smallest of them: the server purges them one by one. `/slots` is read again:
//! other slots emptied means a unified cache, now empty but for the pinned slot (whose next reset
//! empties it); other slots untouched means a cache per slot (`--no-kv-unified`), where they do
//! not matter. This module's caller pins every start-up request to the slot too.
//!
//! Fails only with the transport's errors; what could not be established is returned as a
//! warning (values then reproducible on this server, not necessarily equal to a reference).

use crate::openai::{OpenAiBackend, Session};
use epi_core::backend::BackendError;
use serde_json::{json, Value};

/// What `/slots` says about one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SlotUse {
    /// Its id.
    pub(super) id: u64,
    /// The tokens it holds (`n_prompt_tokens`; absent before its first task: 0).
    pub(super) tokens: u64,
    /// It is serving a request.
    pub(super) busy: bool,
}

/// What the start-up found about the KV layout, for `details` and the warnings.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct KvLayout {
    /// `details.kv_cache`.
    pub(super) details: Value,
    /// Whether the pinned slot's sequence will start at cell 0 (the values then equal a
    /// single-pass reference's).
    pub(super) at_cell_0: bool,
    /// Why not, when not.
    pub(super) warning: Option<String>,
}

/// Reads `/slots`: each slot's use, or `None` when the endpoint is off or says something else.
pub(super) fn parse_slots(v: &Value) -> Option<Vec<SlotUse>> {
    v.as_array()?
        .iter()
        .map(|x| {
            Some(SlotUse {
                id: x.get("id")?.as_u64()?,
                tokens: x
                    .get("n_prompt_tokens")
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
                busy: x
                    .get("is_processing")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            })
        })
        .collect()
}

/// The length of a fill prompt that cannot fit beside any one of the `others` slots' tokens in a
/// unified cache of `n_ctx` cells (longest allowed prompt: `n_ctx - 1`), so that the server must
/// purge every one of them; `None` when no prompt is long enough (a slot holding a single token).
pub(super) fn fill_len(n_ctx: u64, others: &[SlotUse]) -> Option<u64> {
    let smallest = others.iter().map(|o| o.tokens).filter(|&t| t > 0).min()?;
    let len = n_ctx.checked_sub(smallest)? + 1;
    (len < n_ctx).then_some(len)
}

/// The advice that goes with every layout that is not at cell 0.
const ADVICE: &str =
    "log-likelihoods marked exact are reproducible on this server, but may differ \
    from a single-pass reference by up to tenths of a nat: llama-server's KV cache, unified across \
    its slots by default, places the pinned slot's sequence after what other slots hold; restart \
    it with --no-kv-unified (or -np 1), or leave its other slots unused, for values equal to a \
    single-pass reference";

impl OpenAiBackend {
    /// Reads `/slots` (`None`: not available).
    async fn slot_uses(&self, s: &Session) -> Result<Option<Vec<SlotUse>>, BackendError> {
        Ok(self
            .try_get_json(s, "/slots")
            .await?
            .as_ref()
            .and_then(parse_slots))
    }

    /// Makes the pinned slot `pinned` the only slot holding KV cells (see the module
    /// documentation); `unit` are the tokens a fill prompt repeats.
    pub(super) async fn clear_other_slots(
        &self,
        s: &Session,
        pinned: u32,
        unit: &[u32],
    ) -> Result<KvLayout, BackendError> {
        let not_at_0 = |details: Value, why: String| KvLayout {
            details,
            at_cell_0: false,
            warning: Some(format!("{why}: {ADVICE}")),
        };
        let Some(before) = self.slot_uses(s).await? else {
            return Ok(not_at_0(
                json!({"kv_unified": null, "other_slots": "unknown: no /slots endpoint"}),
                "llama-server's /slots endpoint is off, so what its other slots hold is unknown"
                    .into(),
            ));
        };
        let others: Vec<SlotUse> = before
            .iter()
            .copied()
            .filter(|u| u.id != u64::from(pinned))
            .collect();
        if others.is_empty() {
            return Ok(KvLayout {
                details: json!({"kv_unified": null, "other_slots": "none (one slot)"}),
                at_cell_0: true,
                warning: None,
            });
        }
        if others.iter().any(|o| o.busy) {
            return Ok(not_at_0(
                json!({"kv_unified": null, "other_slots": "in use by another client"}),
                "another client is using llama-server's other slots".into(),
            ));
        }
        let held: Vec<u64> = others.iter().map(|o| o.tokens).collect();
        if held.iter().all(|&t| t == 0) {
            return Ok(KvLayout {
                details: json!({"kv_unified": null, "other_slots": "empty", "other_slots_tokens": held}),
                at_cell_0: true,
                warning: None,
            });
        }
        let (Some(n_ctx), false) = (s.profile.n_ctx, unit.is_empty()) else {
            return Ok(not_at_0(
                json!({"kv_unified": null, "other_slots_tokens": held}),
                "llama-server's other slots hold tokens and its context is unknown".into(),
            ));
        };
        let Some(len) = fill_len(n_ctx, &others) else {
            return Ok(not_at_0(
                json!({"kv_unified": null, "other_slots_tokens": held}),
                "one of llama-server's other slots holds a single token, which no prompt can \
                 make the server purge"
                    .into(),
            ));
        };
        let fill: Vec<u32> = unit.iter().copied().cycle().take(len as usize).collect();
        let body = json!({
            "prompt": fill,
            "n_predict": 0,
            "temperature": 0.0,
            "cache_prompt": false,
            "id_slot": pinned,
        });
        self.post_json(s, "/completion", &body, Some(len)).await?;
        let after = self.slot_uses(s).await?.unwrap_or_default();
        let after_held: Vec<u64> = after
            .iter()
            .filter(|u| u.id != u64::from(pinned))
            .map(|u| u.tokens)
            .collect();
        let details = |unified: Value, what: &str| {
            json!({
                "kv_unified": unified,
                "other_slots": what,
                "other_slots_tokens": held,
                "fill_tokens": len,
                "other_slots_tokens_after": after_held,
            })
        };
        if after_held.len() == held.len() && after_held.iter().all(|&t| t == 0) {
            Ok(KvLayout {
                details: details(
                    json!(true),
                    "purged by the server to make room for a fill prompt",
                ),
                at_cell_0: true,
                warning: None,
            })
        } else if after_held == held {
            // Nothing purged: the fill fitted beside them, so each slot has its own cells.
            Ok(KvLayout {
                details: details(json!(false), "kept (a KV cache per slot)"),
                at_cell_0: true,
                warning: None,
            })
        } else {
            Ok(not_at_0(
                details(json!(true), "partly purged"),
                format!(
                    "llama-server's other slots still hold {after_held:?} tokens after a fill prompt \
                     of {len}"
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uses(t: &[u64]) -> Vec<SlotUse> {
        t.iter()
            .enumerate()
            .map(|(i, &tokens)| SlotUse {
                id: i as u64 + 1,
                tokens,
                busy: false,
            })
            .collect()
    }

    #[test]
    fn the_fill_cannot_fit_beside_any_other_slot() {
        // 4096 cells; the smallest holder has 77 tokens: 4020 + 77 > 4096.
        assert_eq!(fill_len(4096, &uses(&[300, 77, 0, 398])), Some(4020));
        assert_eq!(fill_len(4096, &uses(&[2])), Some(4095));
        // A single token: the longest prompt (n_ctx - 1) fits beside it.
        assert_eq!(fill_len(4096, &uses(&[1, 500])), None);
        assert_eq!(fill_len(4096, &uses(&[0, 0])), None);
        assert_eq!(fill_len(10, &uses(&[20])), None);
    }

    #[test]
    fn slots_are_read_as_llama_server_lists_them() {
        let v = json!([
            {"id": 0, "n_ctx": 4096, "is_processing": false},
            {"id": 1, "n_ctx": 4096, "is_processing": true, "n_prompt_tokens": 12},
        ]);
        assert_eq!(
            parse_slots(&v),
            Some(vec![
                SlotUse {
                    id: 0,
                    tokens: 0,
                    busy: false
                },
                SlotUse {
                    id: 1,
                    tokens: 12,
                    busy: true
                }
            ])
        );
        assert_eq!(parse_slots(&json!({"error": 1})), None);
        assert_eq!(parse_slots(&json!([{"n_ctx": 1}])), None);
    }
}
