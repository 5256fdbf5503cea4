//! The cluster peak power over sample instants: a streaming sweep for rows in global time order
//! (channels not sampled at an instant interpolated, a channel in a gap contributing nothing), and
//! a second pass, one reader per channel merged by time, for files that are not in time order.
//! Errors: the second pass's reader errors.

use super::integrator::NodeIndex;
use super::ChannelSummary;
use crate::reader::TraceReader;
use epi_core::error::Error;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::path::Path;

/// Second pass for files whose rows are not in global time order (e.g. one block per node):
/// one sequential reader per channel, merged by time. Constant memory, one parse per channel.
pub(super) fn peak_by_merge(
    path: &Path,
    channels: &BTreeMap<u32, ChannelSummary>,
    gap_limit: f64,
) -> Result<(f64, f64), Error> {
    struct Head {
        t: f64,
        node: u32,
        w: f64,
        reader: usize,
    }
    impl PartialEq for Head {
        fn eq(&self, o: &Self) -> bool {
            self.t == o.t && self.node == o.node
        }
    }
    impl Eq for Head {}
    impl PartialOrd for Head {
        fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(o))
        }
    }
    impl Ord for Head {
        fn cmp(&self, o: &Self) -> std::cmp::Ordering {
            // Min-heap by (t, node).
            o.t.total_cmp(&self.t).then(o.node.cmp(&self.node))
        }
    }
    let mut readers: Vec<(u32, TraceReader)> = Vec::new();
    for &id in channels.keys() {
        readers.push((id, TraceReader::open(path)?));
    }
    let next_of = |r: &mut (u32, TraceReader)| -> Result<Option<(f64, f64)>, Error> {
        while let Some((_, row)) = r.1.next_row()? {
            if row.node == r.0 {
                return Ok(Some((row.t_ms, row.watts)));
            }
        }
        Ok(None)
    };
    let mut heap = BinaryHeap::new();
    for (i, r) in readers.iter_mut().enumerate() {
        if let Some((t, w)) = next_of(r)? {
            heap.push(Head {
                t,
                node: r.0,
                w,
                reader: i,
            });
        }
    }
    let mut sweep = PeakSweep::new(gap_limit, None);
    while let Some(h) = heap.pop() {
        sweep.push(h.node, h.t, h.w);
        if let Some((t, w)) = next_of(&mut readers[h.reader])? {
            heap.push(Head {
                t,
                node: h.node,
                w,
                reader: h.reader,
            });
        }
    }
    Ok(sweep.finish_opt().unwrap_or((0.0, 0.0)))
}

/// Streaming peak of cluster power over sample instants, for rows in global time order.
///
/// At each distinct timestamp the cluster power is the sum over channels: a channel sampled at that
/// instant contributes its sample; one that is not is interpolated between its neighbouring samples
/// once its next sample arrives (if those are no further apart than the gap limit); a channel
/// before its first sample, after its last, or inside a gap contributes nothing. Only instants
/// inside `accept` (when given) count.
pub(super) struct PeakSweep {
    gap_limit: f64,
    pub(super) accept: Option<(f64, f64)>,
    pub(super) prev: Vec<Option<(f64, f64)>>, // by dense channel index
    dense: NodeIndex,
    pub(super) group_t: f64,
    pub(super) group_sum: f64,
    /// Members of the current group with dense index < 64, as bits.
    pub(super) group_bits: u64,
    /// Members with dense index ≥ 64.
    group_members: Vec<usize>,
    pub(super) group_len: usize,
    pending: VecDeque<Pending>,
    pub(super) best: Option<(f64, f64)>,
    pub(super) unsorted: bool,
}

struct Pending {
    t: f64,
    sum: f64,
    need: Vec<usize>,
}

impl PeakSweep {
    pub(super) fn new(gap_limit: f64, accept: Option<(f64, f64)>) -> Self {
        PeakSweep {
            gap_limit,
            accept,
            prev: Vec::new(),
            dense: NodeIndex::new(),
            group_t: f64::NEG_INFINITY,
            group_sum: 0.0,
            group_bits: 0,
            group_members: Vec::new(),
            group_len: 0,
            pending: VecDeque::new(),
            best: None,
            unsorted: false,
        }
    }

    #[inline]
    pub(super) fn push(&mut self, node: u32, t: f64, w: f64) {
        let (c, _) = self.dense.get_or_insert(node, self.prev.len());
        self.push_dense(c, t, w);
    }

    /// `push` with the channel's dense index given by the caller (indices are assigned in order
    /// of first appearance: `c` is at most the number of channels seen so far).
    #[inline(always)]
    fn push_dense(&mut self, c: usize, t: f64, w: f64) {
        if self.unsorted {
            return;
        }
        if t < self.group_t {
            self.unsorted = true;
            return;
        }
        self.push_sorted(c, t, w);
    }

    /// `push_dense` for a caller that feeds timestamps that never decrease.
    #[inline(always)]
    pub(super) fn push_sorted(&mut self, c: usize, t: f64, w: f64) {
        if t > self.group_t {
            self.close_group();
            self.group_t = t;
        }
        // The common case: a channel's first sample at this instant, nothing waiting.
        let bit = 1u64 << (c & 63);
        if c < 64 && c < self.prev.len() && self.group_bits & bit == 0 && self.pending.is_empty() {
            self.group_bits |= bit;
            self.group_len += 1;
            self.group_sum += w;
            self.prev[c] = Some((t, w));
            return;
        }
        self.push_general(c, t, w);
    }

    /// The rest of `push_sorted`: a new channel, a duplicate timestamp, waiting instants, or a
    /// channel index beyond 63.
    #[inline(never)]
    fn push_general(&mut self, c: usize, t: f64, w: f64) {
        if c >= self.prev.len() {
            self.prev.resize(c + 1, None);
        }
        // Resolve instants waiting for this channel's next sample.
        if !self.pending.is_empty() {
            if let Some((t0, w0)) = self.prev[c] {
                let covers = t - t0 <= self.gap_limit;
                for p in self.pending.iter_mut() {
                    if let Some(k) = p.need.iter().position(|&x| x == c) {
                        p.need.swap_remove(k);
                        if covers && t > t0 {
                            p.sum += w0 + (w - w0) * (p.t - t0) / (t - t0);
                        }
                    }
                }
            }
        }
        if self.is_member(c) {
            // A duplicate timestamp for this channel: the later sample replaces the earlier.
            if let Some((_, w_old)) = self.prev[c] {
                self.group_sum -= w_old;
            }
        } else {
            if c < 64 {
                self.group_bits |= 1 << c;
            } else {
                self.group_members.push(c);
            }
            self.group_len += 1;
        }
        self.group_sum += w;
        self.prev[c] = Some((t, w));
    }

    /// Whether the integrator's steady loop may stand in for this sweep: time order so far, the
    /// `n_chan` channels all known, none beyond index 63, nothing waiting.
    #[inline(always)]
    pub(super) fn steady_ready(&self, n_chan: usize) -> bool {
        !self.unsorted
            && self.accept.is_some()
            && self.pending.is_empty()
            && self.group_members.is_empty()
            && self.prev.len() == n_chan
    }

    #[inline(always)]
    fn is_member(&self, c: usize) -> bool {
        if c < 64 {
            self.group_bits & (1 << c) != 0
        } else {
            self.group_members.contains(&c)
        }
    }

    #[inline(always)]
    fn close_group(&mut self) {
        if self.group_len == self.prev.len() && self.pending.is_empty() && self.group_len > 0 {
            // Every channel was sampled at this instant: nothing to interpolate.
            let (t, sum) = (self.group_t, self.group_sum);
            self.group_sum = 0.0;
            self.group_bits = 0;
            self.group_members.clear();
            self.group_len = 0;
            self.finalize(t, sum);
        } else {
            self.close_group_general();
        }
    }

    fn close_group_general(&mut self) {
        if self.group_len == 0 {
            return;
        }
        let t = self.group_t;
        let mut need = Vec::new();
        if self.group_len < self.prev.len() {
            for (c, p) in self.prev.iter().enumerate() {
                if let Some((pt, _)) = p {
                    if !self.is_member(c) && t - pt <= self.gap_limit {
                        need.push(c);
                    }
                }
            }
        }
        let sum = self.group_sum;
        self.group_sum = 0.0;
        self.group_bits = 0;
        self.group_members.clear();
        self.group_len = 0;
        if need.is_empty() && self.pending.is_empty() {
            self.finalize(t, sum);
            return;
        }
        self.pending.push_back(Pending { t, sum, need });
        // Channels silent for longer than the gap limit no longer cover older instants.
        let prev = &self.prev;
        let gap = self.gap_limit;
        for p in self.pending.iter_mut() {
            p.need
                .retain(|&c| prev[c].is_some_and(|(pt, _)| t - pt <= gap));
        }
        while self.pending.front().is_some_and(|p| p.need.is_empty()) {
            let p = self.pending.pop_front().expect("front exists");
            self.finalize(p.t, p.sum);
        }
    }

    #[inline]
    fn finalize(&mut self, t: f64, sum: f64) {
        if let Some((lo, hi)) = self.accept {
            if t < lo || t > hi {
                return;
            }
        }
        if self.best.is_none_or(|(b, _)| sum > b) {
            self.best = Some((sum, t));
        }
    }

    pub(super) fn finish_opt(mut self) -> Option<(f64, f64)> {
        self.close_group();
        while let Some(p) = self.pending.pop_front() {
            self.finalize(p.t, p.sum);
        }
        self.best
    }
}

/// The whole-file sequential peak (the fallback pass), exposed to tests as the reference.
#[cfg(test)]
pub(crate) fn peak_by_merge_for_tests(
    path: &Path,
    channels: &BTreeMap<u32, ChannelSummary>,
    gap_limit: f64,
) -> Result<(f64, f64), Error> {
    peak_by_merge(path, channels, gap_limit)
}
