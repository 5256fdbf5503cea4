//! llama-server's **single-pass** top-N scoring: every distribution is computed as one forward
//! pass over the scored sequence computes it, the same on every run, without evaluating the whole
//! context again for each request.
//!
//! Why. llama.cpp's numbers depend on how many tokens one batch (ubatch) holds. On the CPU, ggml's
//! flash attention runs a tiled F32 kernel for batches of 64 or more tokens and a vector kernel
//! with F16 queries below that (`GGML_FA_TILE_Q`). A prompt-cache hit evaluates the new tokens
//! alone, in the small-batch kernels: measured on SmolLM2-135M Q4_1, the distribution after a
//! 711-token prompt differed by up to 0.35 nats from a full evaluation, and re-evaluating 63
//! tokens on top of the cached rest by 0.53 nats, while re-evaluating 64 gave the full
//! evaluation's numbers bit for bit. `cache_prompt: false` alone is not single-pass either: the
//! server splits a prompt into ubatches of `-ub` tokens (512), and a last ubatch of 1–63 tokens
//! takes the small-batch kernels.
//!
//! How. One server slot is pinned (`id_slot`) and what it holds is tracked here, with how much of it
//! was evaluated in large batches. Every request evaluates between `min_batch_tokens` and
//! `max_batch_tokens` new tokens, so each is one ubatch in the large-batch kernels: a long context
//! is sent in steps (`n_predict: 0`) and, when the slot already holds more of a prompt than its
//! length minus `min_batch_tokens`, a one-token request first cuts the slot's cache there. A prompt
//! shorter than `min_batch_tokens` is evaluated whole, in one small batch: single-pass only for a
//! scored sequence that short ([`Fidelity::SmallBatch`]). Every reply's `timings.cache_n` is checked
//! against the plan; a slot that was not in the planned state (another client, a purge) is
//! re-planned once, and a value that still cannot be vouched for is marked approximate.
//!
//! Requires `-ub` ≥ `max_batch_tokens` (llama-server's default is 512), a server that honours
//! `id_slot` and `cache_prompt`, and `--cache-ram 0`: llama-server's RAM prompt cache (on by
//! default) restores earlier prompts into a slot whenever less than half of what the slot holds is
//! kept, including states computed in small batches, and re-evaluates the last token of a fully
//! restored prompt alone. [`OpenAiBackend::check_single_pass`] verifies at start that the method
//! gives a full evaluation's numbers on this server and that no prompt is restored.

use crate::loglik::{Fidelity, TopN};
use crate::openai::{OpenAiBackend, Session, TopNMode, PROBE_TEXT};
use epi_core::backend::{BackendError, LoglikelihoodSupport};
use serde_json::{json, Value};

/// Largest difference (nats) between the single-pass method and a full evaluation that the start-up
/// check accepts.
pub(super) const CHECK_TOLERANCE: f64 = 1e-4;

/// The pinned slot and what it holds.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct SlotState {
    /// Its `id_slot`.
    pub(super) id: u32,
    /// The tokens in its cache.
    pub(super) held: Vec<u32>,
    /// How many leading tokens of `held` were evaluated in batches of at least the minimum.
    pub(super) valid: usize,
}

/// The single-pass state of a session.
pub(in crate::openai) struct SinglePass {
    /// `min_batch_tokens`.
    pub(super) min: usize,
    /// `max_batch_tokens`.
    pub(super) max: usize,
    /// The pinned slot (locked only between awaits).
    pub(super) slot: std::sync::Mutex<SlotState>,
    /// Held for the scoring of one item, so that items never interleave on the slot.
    pub(super) item: tokio::sync::Mutex<()>,
    /// Whether the start-up check passed; when not, no value is marked single-pass.
    pub(super) trusted: bool,
}

/// The requests that evaluate `prompt` on a slot holding `held` (the first `valid` tokens
/// evaluated in large batches).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Plan {
    /// Cut the slot's cache to `prompt[..cut]` first (a request for `prompt[..cut]` and one
    /// other token).
    pub(super) cut: Option<usize>,
    /// Where the server starts evaluating after the cut (the tokens it reuses).
    pub(super) from: usize,
    /// Then evaluate these prefix lengths of `prompt`, in order (`n_predict: 0`).
    pub(super) steps: Vec<usize>,
    /// The cached tokens the final request starts from (its `timings.cache_n`).
    pub(super) start: usize,
}

/// Length of the common prefix.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Plans the requests so that each evaluates between `min` and `max` new tokens (`max` ≥ 2 ×
/// `min`), except a prompt shorter than `min`, evaluated whole. The server reuses the longest
/// common prefix of what the slot holds and the prompt; only its first `valid` tokens may be kept.
pub(super) fn plan(held: &[u32], valid: usize, prompt: &[u32], min: usize, max: usize) -> Plan {
    let n = prompt.len();
    let reused = common_prefix(held, prompt);
    // The final request evaluates at least `min` tokens (all of a shorter prompt).
    let mut start = reused.min(valid).min(n.saturating_sub(min));
    let cut = (reused > start).then_some(start);
    let from = start;
    let mut steps = Vec::new();
    while n - start > max {
        start += (n - start - min).min(max);
        steps.push(start);
    }
    Plan {
        cut,
        from,
        steps,
        start,
    }
}

impl OpenAiBackend {
    /// The slot that start-up probes are pinned to: the single-pass slot on llama-server in the
    /// single-pass mode, so that no other slot places KV cells (see `kv_cells`).
    pub(super) fn probe_slot(&self, s: &Session) -> Option<u32> {
        (s.profile.quirks().native_top_n && self.config.top_n_mode == TopNMode::SinglePass)
            .then_some(0)
    }

    /// Sets up single-pass scoring when the session scores by top-N on a server with llama.cpp's
    /// native `/completion` in the single-pass mode: pins slot 0 and checks the method on this
    /// server, recording the check in `details` (and a warning when it failed). Returns whether
    /// single-pass values can be trusted (true when there is nothing to set up).
    pub(in crate::openai) async fn start_single_pass(
        &self,
        s: &mut Session,
        details: &mut serde_json::Map<String, Value>,
        warnings: &mut Vec<String>,
    ) -> Result<bool, BackendError> {
        if !(s.profile.quirks().native_top_n
            && matches!(s.ll, LoglikelihoodSupport::TopN { .. })
            && self.config.top_n_mode == TopNMode::SinglePass)
        {
            return Ok(true);
        }
        let sp = SinglePass {
            min: self.config.min_batch_tokens,
            max: self.config.max_batch_tokens,
            slot: std::sync::Mutex::new(SlotState {
                id: 0,
                held: Vec::new(),
                valid: 0,
            }),
            item: tokio::sync::Mutex::new(()),
            trusted: true,
        };
        let unit = self.tokenize(s, PROBE_TEXT).await?;
        // The pinned slot's sequence must start at KV cell 0 for values equal to a single-pass
        // reference (see `kv_cells`); the check's resets then place it there.
        let layout = self.clear_other_slots(s, 0, &unit).await?;
        details.insert("kv_cache".into(), layout.details.clone());
        let check = self.check_single_pass(s, &sp, &unit).await?;
        let trusted = matches!(check, Ok(d) if d <= CHECK_TOLERANCE);
        details.insert(
            "single_pass_check".into(),
            match &check {
                Ok(d) => json!({
                    "max_abs_diff_nats": d,
                    "tolerance_nats": CHECK_TOLERANCE,
                    "passed": trusted,
                }),
                Err(why) => json!({"passed": false, "why": why}),
            },
        );
        if !trusted {
            warnings.push(format!(
                "the single-pass check failed ({}): log-likelihoods are approximate (none \
                 marked exact) and may differ between runs of the same command",
                match &check {
                    Ok(d) => format!(
                        "the method differs from a full evaluation by {d:.3} nats; \
                         tolerance {CHECK_TOLERANCE}"
                    ),
                    Err(why) => why.clone(),
                }
            ));
        }
        if trusted {
            details.insert(
                "exact_means".into(),
                json!(if layout.at_cell_0 {
                    "equal to a single-pass evaluation (the pinned slot's sequence starts at KV cell 0)"
                } else {
                    "reproducible on this server; restart it with --no-kv-unified (or -np 1) for \
                     values equal to a single-pass reference"
                }),
            );
            warnings.extend(layout.warning);
        }
        details.insert("slot".into(), json!(0));
        details.insert("min_batch_tokens".into(), json!(sp.min));
        details.insert("max_batch_tokens".into(), json!(sp.max));
        s.single_pass = Some(SinglePass { trusted, ..sp });
        Ok(trusted)
    }
}

impl OpenAiBackend {
    /// Evaluates `tokens` on the pinned slot without generating (`n_predict: 0`); returns the
    /// tokens the server reused from the slot's cache (`u64::MAX` when the reply does not say).
    async fn evaluate_on_slot(
        &self,
        s: &Session,
        slot: u32,
        tokens: &[u32],
    ) -> Result<(u64, TopN), BackendError> {
        let body = json!({
            "prompt": tokens,
            "n_predict": 0,
            "temperature": 0.0,
            "cache_prompt": true,
            "id_slot": slot,
        });
        let (v, _) = self
            .post_json(s, "/completion", &body, Some(tokens.len() as u64))
            .await?;
        let cached = v
            .pointer("/timings/cache_n")
            .and_then(Value::as_u64)
            .unwrap_or(u64::MAX);
        let counts = TopN {
            entries: Vec::new(),
            tokens_in: v
                .get("tokens_evaluated")
                .and_then(Value::as_u64)
                .unwrap_or(tokens.len() as u64),
            cached_tokens: (cached != u64::MAX).then_some(cached),
            tokens_out: 0,
            fidelity: Fidelity::Approximate,
            requests: 1,
        };
        Ok((cached, counts))
    }

    /// The top N after `prompt`, computed as one forward pass computes it (see the module
    /// documentation). The returned counts cover every request it took.
    pub(super) async fn single_pass_top_n(
        &self,
        s: &Session,
        sp: &SinglePass,
        prompt: Vec<u32>,
    ) -> Result<TopN, BackendError> {
        let mut spent = Spent::default();
        let mut retried = false;
        loop {
            let (slot, p) = {
                let st = lock(&sp.slot);
                (st.id, plan(&st.held, st.valid, &prompt, sp.min, sp.max))
            };
            let mut planned = true;
            if let Some(c) = p.cut {
                let mut cut = prompt[..c].to_vec();
                cut.push(if prompt.get(c) == Some(&0) { 1 } else { 0 });
                let (reused, counts) = self.evaluate_on_slot(s, slot, &cut).await?;
                spent.add(&counts);
                // The cut token itself was evaluated alone: only what precedes it stays valid.
                planned &= reused as usize >= c;
                let st = &mut *lock(&sp.slot);
                st.valid = c.min(reused as usize).min(st.valid);
                st.held = cut;
            }
            let mut from = p.from;
            for &upto in &p.steps {
                let (reused, counts) = self.evaluate_on_slot(s, slot, &prompt[..upto]).await?;
                spent.add(&counts);
                let ok = reused as usize == from;
                planned &= ok;
                let st = &mut *lock(&sp.slot);
                st.valid = if ok {
                    upto
                } else {
                    st.valid.min(reused as usize)
                };
                st.held = prompt[..upto].to_vec();
                from = upto;
            }
            let mut top = self.top_n_request(s, &prompt, Some(slot), true).await?;
            let reused = top.cached_tokens.unwrap_or(u64::MAX) as usize;
            planned &= reused == p.start;
            let rows = prompt.len().saturating_sub(reused);
            {
                let st = &mut *lock(&sp.slot);
                st.valid = if planned && rows >= sp.min {
                    prompt.len()
                } else {
                    st.valid.min(reused)
                };
                st.held = prompt.clone();
            }
            spent.add(&top);
            if !planned && !retried {
                retried = true;
                continue;
            }
            top.fidelity = if !planned || !sp.trusted {
                Fidelity::Approximate
            } else if rows >= sp.min {
                Fidelity::SinglePass
            } else {
                Fidelity::SmallBatch(sp.min)
            };
            spent.apply(&mut top);
            return Ok(top);
        }
    }

    /// Resets the pinned slot to a known state: it holds the one token `token`, evaluated alone.
    pub(super) async fn reset_slot(
        &self,
        s: &Session,
        sp: &SinglePass,
        token: u32,
    ) -> Result<(), BackendError> {
        let id = lock(&sp.slot).id;
        self.evaluate_on_slot(s, id, &[token]).await?;
        let st = &mut *lock(&sp.slot);
        st.held = vec![token];
        st.valid = 0;
        Ok(())
    }

    /// Checks on this server that the single-pass method gives a full evaluation's numbers:
    /// the top N after a probe prompt of `3 × min_batch_tokens` tokens or more, evaluated whole on
    /// the pinned slot (from nothing, one ubatch) and by the method on the same slot (a step, then
    /// the last `min_batch_tokens` on top of the cached rest). Both on the pinned slot: with
    /// llama-server's default KV buffer, unified across its slots, the same full evaluation gives
    /// other numbers on another slot (measured on the real server, 4 slots: up to 0.43 nats in the
    /// top 100 of a 192-token prompt, different again on a second try, while slot 0 after a reset
    /// gave the same numbers bit for bit whatever the other slots held). Returns the largest
    /// difference, or why the check could not be made.
    pub(super) async fn check_single_pass(
        &self,
        s: &Session,
        sp: &SinglePass,
        unit: &[u32],
    ) -> Result<Result<f64, String>, BackendError> {
        if unit.is_empty() {
            return Ok(Err("the probe text has no tokens".into()));
        }
        let want = (3 * sp.min).min(sp.max);
        let probe: Vec<u32> = unit.iter().copied().cycle().take(want).collect();
        let id = lock(&sp.slot).id;
        let other = u32::from(probe[0] == 0);
        // The full evaluation: the pinned slot holds one other token, so nothing is reused.
        self.reset_slot(s, sp, other).await?;
        let whole = self.top_n_request(s, &probe, Some(id), true).await?;
        if let Some(n) = whole.cached_tokens.filter(|&n| n != 0) {
            return Ok(Err(format!(
                "the full evaluation on the pinned slot reused {n} cached tokens after a reset \
                 (expected 0): a RAM prompt cache? start llama-server with --cache-ram 0 for \
                 single-pass values"
            )));
        }
        // A step of the first `want - min` tokens, then the method evaluates the last `min` on
        // top of them.
        self.reset_slot(s, sp, other).await?;
        let head = probe[..want - sp.min].to_vec();
        let (reused, _) = self.evaluate_on_slot(s, id, &head).await?;
        if reused == u64::MAX {
            return Ok(Err(
                "no `timings.cache_n` in the /completion replies: the slot's cache cannot be followed"
                    .into(),
            ));
        }
        if reused != 0 {
            return Ok(Err(format!(
                "the pinned slot reused {reused} tokens after a reset (expected 0): a RAM prompt cache? \
                 start llama-server with --cache-ram 0 for single-pass values"
            )));
        }
        {
            let st = &mut *lock(&sp.slot);
            st.held = head.clone();
            st.valid = head.len();
        }
        let by_method = self.single_pass_top_n(s, sp, probe).await?;
        if by_method.fidelity == Fidelity::Approximate && sp.trusted {
            return Ok(Err(format!(
                "the pinned slot was not in the planned state ({:?})",
                by_method.fidelity
            )));
        }
        // A server that restores prompts from its RAM cache (llama-server's `--cache-ram`, on by
        // default) swaps in a cache the plan knows nothing about, and re-evaluates the last token
        // of a fully restored prompt alone: evaluate something else on the slot, then the head
        // again, which must then be evaluated from the start.
        self.reset_slot(s, sp, other).await?;
        let (restored, _) = self.evaluate_on_slot(s, id, &head).await?;
        {
            let st = &mut *lock(&sp.slot);
            st.held = head.clone();
            st.valid = if restored == 0 { head.len() } else { 0 };
        }
        if restored != 0 {
            return Ok(Err(format!(
                "the server restored {restored} tokens of an earlier prompt into the pinned slot from its \
                 RAM prompt cache: start llama-server with --cache-ram 0 for single-pass values"
            )));
        }
        Ok(Ok(max_abs_diff(&whole, &by_method)))
    }
}

/// The largest difference between two top-N lists: an entry of `a` missing from `b` counts as at
/// least as far as `b`'s smallest entry.
fn max_abs_diff(a: &TopN, b: &TopN) -> f64 {
    let floor = b.entries.iter().map(|e| e.1).fold(f64::INFINITY, f64::min);
    a.entries
        .iter()
        .map(|(id, lp)| match b.entries.iter().find(|e| e.0 == *id) {
            Some((_, other)) => (lp - other).abs(),
            None => (lp - floor).abs().max(f64::MIN_POSITIVE),
        })
        .fold(0.0, f64::max)
}

/// Counts of the requests before the final one.
#[derive(Default)]
struct Spent {
    requests: u32,
    tokens_in: u64,
    cached: u64,
}

impl Spent {
    fn add(&mut self, t: &TopN) {
        self.requests += t.requests;
        self.tokens_in += t.tokens_in;
        self.cached += t.cached_tokens.unwrap_or(0);
    }

    /// Makes `top`'s counts those of every request (`top` itself included in `self`).
    fn apply(&self, top: &mut TopN) {
        top.requests = self.requests;
        top.tokens_in = self.tokens_in;
        top.cached_tokens = Some(self.cached);
    }
}

/// The slot state, also after a panic elsewhere (the state is re-planned from what it says).
fn lock(m: &std::sync::Mutex<SlotState>) -> std::sync::MutexGuard<'_, SlotState> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize, seed: u32) -> Vec<u32> {
        (0..n as u32).map(|i| i * 7 + seed).collect()
    }

    /// Follows a plan the way the server would, checking every request's batch.
    fn run(held: &[u32], valid: usize, prompt: &[u32], min: usize, max: usize) -> Plan {
        let p = plan(held, valid, prompt, min, max);
        let mut from = match p.cut {
            Some(c) => {
                assert!(
                    c <= common_prefix(held, prompt),
                    "a cut keeps only what is shared"
                );
                c
            }
            None => common_prefix(held, prompt),
        };
        for &s in &p.steps {
            let rows = s - from;
            assert!((min..=max).contains(&rows), "step of {rows} rows: {p:?}");
            from = s;
        }
        assert_eq!(from, p.start);
        assert_eq!(p.from, p.cut.unwrap_or(common_prefix(held, prompt)));
        assert!(
            p.from <= valid || p.from == 0,
            "only valid tokens are reused: {p:?}"
        );
        let rows = prompt.len() - p.start;
        if prompt.len() >= min {
            assert!((min..=max).contains(&rows), "final of {rows} rows: {p:?}");
        } else {
            assert_eq!(p.start, 0, "a short prompt is evaluated whole");
        }
        p
    }

    #[test]
    fn a_fresh_long_context_goes_in_steps_of_at_most_max() {
        let prompt = ids(1500, 3);
        let p = run(&[0], 0, &prompt, 64, 256);
        assert_eq!(p.cut, None);
        assert_eq!(p.steps, vec![256, 512, 768, 1024, 1280]);
        assert_eq!(p.start, 1280);
        // A remainder that would leave the final short is split so that it is not.
        let p = run(&[], 0, &ids(300, 1), 64, 256);
        assert_eq!(p.steps, vec![236]);
        assert_eq!(p.start, 236);
    }

    #[test]
    fn a_cached_context_is_cut_so_the_last_min_tokens_are_evaluated_together() {
        let ctx = ids(700, 5);
        let mut prompt = ctx.clone();
        prompt.push(9);
        // The slot holds the whole context, evaluated in large batches.
        let p = run(&ctx, ctx.len(), &prompt, 64, 256);
        assert_eq!(p.cut, Some(701 - 64));
        assert!(p.steps.is_empty());
        // The next continuation token: the same again.
        let mut next = prompt.clone();
        next.push(11);
        let p = run(&prompt, prompt.len(), &next, 64, 256);
        assert_eq!(p.cut, Some(702 - 64));
    }

    #[test]
    fn only_the_valid_part_of_the_slot_is_reused() {
        let prompt = ids(400, 2);
        // The slot holds the prompt, but only its first 100 tokens were evaluated in large
        // batches (a cut or a small batch after that).
        let p = run(&prompt, 100, &prompt, 64, 256);
        assert_eq!(p.cut, Some(100));
        assert_eq!(p.steps, vec![336]);
        assert_eq!(p.start, 336);
        // A slot sharing nothing: no cut needed.
        let p = run(&ids(50, 1000), 50, &prompt, 64, 256);
        assert_eq!(p.cut, None);
    }

    #[test]
    fn short_prompts_are_evaluated_whole() {
        let prompt = ids(20, 1);
        let p = run(&prompt[..10], 10, &prompt, 64, 256);
        assert_eq!(p.cut, Some(0));
        assert_eq!(p.start, 0);
        let p = run(&[], 0, &prompt, 64, 256);
        assert_eq!((p.cut, p.start), (None, 0));
    }

    #[test]
    fn every_plan_keeps_every_batch_in_bounds() {
        // Exhaustive over small sizes: held prefix length, valid length, prompt length.
        for (min, max) in [(4, 8), (4, 9), (5, 13)] {
            for n in 0..40 {
                let prompt = ids(n, 1);
                for shared in 0..=n {
                    let mut held = prompt[..shared].to_vec();
                    held.push(1_000_000);
                    for valid in 0..=shared + 1 {
                        run(&held, valid, &prompt, min, max);
                    }
                }
            }
        }
    }
}
