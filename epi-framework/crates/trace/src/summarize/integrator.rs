//! The per-block integrator: each row of a block, in file order, goes through the energy kernel
//! ([`epi_core::energy::ChannelIntegral`]) for its channel — the per-row path ([`BlockIntegrator::row`])
//! and the steady fast path ([`BlockIntegrator::steady`]) that keeps the common case in registers
//! and calls the same kernel. It also sweeps the cluster peak over the block's interior and keeps
//! the rows near the block's edges for the merger. Errors (a timestamp or counter going back) are
//! recorded with their line and stop the block.

use super::lines::CanonicalLines;
use super::peak::PeakSweep;
use super::{Block, NodePart, Rec};
use epi_core::energy::{ChannelIntegral, Interval};
use epi_core::result::Gap;
use std::collections::BTreeMap;

/// Dense per-block index of node ids.
pub(super) struct NodeIndex {
    small: Box<[u32; NodeIndex::SMALL]>, // node id → index + 1 (0: unseen), for ids < SMALL
    big: BTreeMap<u32, usize>,
}

impl NodeIndex {
    /// Node ids below this are looked up in a table.
    const SMALL: usize = 4096;

    pub(super) fn new() -> Self {
        NodeIndex {
            small: Box::new([0; NodeIndex::SMALL]),
            big: BTreeMap::new(),
        }
    }
    #[inline(always)]
    pub(super) fn get_or_insert(&mut self, node: u32, next: usize) -> (usize, bool) {
        if let Some(slot) = self.small.get_mut(node as usize) {
            if *slot == 0 {
                *slot = next as u32 + 1;
                (next, true)
            } else {
                (*slot as usize - 1, false)
            }
        } else {
            match self.big.get(&node) {
                Some(&i) => (i, false),
                None => {
                    self.big.insert(node, next);
                    (next, true)
                }
            }
        }
    }
}

/// The per-row state of one channel within a block (kept small: it is updated for every row).
#[derive(Clone, Copy)]
struct Hot {
    last_t: f64,
    last_w: f64,
    sum: ChannelIntegral,
    peak_w: f64,
    samples: u64,
}

/// Integrates one block's rows in file order as they are parsed. `COUNTER`: the file has an
/// energy counter column (else every `e` is NaN and the counter checks are compiled out).
///
/// Each channel's trapezoids, coverage and gaps are summed here; the cluster peak is swept over
/// the block's interior instants, and the rows near the block's edges are handed to the merger,
/// which joins neighbouring blocks.
pub(super) struct BlockIntegrator<const COUNTER: bool> {
    gap_limit: f64,
    max_gaps: usize,
    /// Timestamp of the block's last row, read before the block (NaN: unknown, the block is
    /// then handled as a short one).
    last_t: f64,
    rows: u64,
    first_t: f64,
    /// All rows go to the merger (a block spanning few gap limits, or an unknown end).
    short: bool,
    edge_lo: f64,
    edge_hi: f64,
    idx: NodeIndex,
    parts: Vec<NodePart>,
    hot: Vec<Hot>,
    prev_t: f64,
    sorted: bool,
    min_t: f64,
    max_t: f64,
    sweep: PeakSweep,
    boundary: Vec<Rec>,
    pub(super) error: Option<(u64, &'static str, String)>,
}

impl<const COUNTER: bool> BlockIntegrator<COUNTER> {
    pub(super) fn new(gap_limit: f64, max_gaps: usize, last_t: f64) -> Self {
        BlockIntegrator {
            gap_limit,
            max_gaps,
            last_t,
            rows: 0,
            first_t: f64::NAN,
            short: true,
            edge_lo: f64::NAN,
            edge_hi: f64::NAN,
            idx: NodeIndex::new(),
            parts: Vec::new(),
            hot: Vec::new(),
            prev_t: f64::NEG_INFINITY,
            sorted: true,
            min_t: f64::INFINITY,
            max_t: f64::NEG_INFINITY,
            sweep: PeakSweep::new(gap_limit, None),
            boundary: Vec::new(),
            error: None,
        }
    }

    /// Sets up the edges from the first row's timestamp and the block's last.
    #[cold]
    fn begin(&mut self, t: f64) {
        let gap = self.gap_limit;
        let span = self.last_t - t;
        self.first_t = t;
        self.short = span.is_nan() || span <= 5.0 * gap || !gap.is_finite();
        self.edge_lo = t + 2.0 * gap;
        self.edge_hi = self.last_t - 2.0 * gap;
        if !self.short {
            self.sweep.accept = Some((t + gap, self.last_t - gap));
        }
    }

    /// The first row out of order: from here on the extremes are tracked row by row.
    #[cold]
    fn out_of_order(&mut self, t: f64) {
        if self.sorted {
            self.sorted = false;
            self.min_t = self.first_t;
            self.max_t = self.prev_t;
        }
        self.min_t = self.min_t.min(t);
        self.max_t = self.max_t.max(t);
    }

    #[cold]
    fn new_channel(&mut self, line: u64, r: Rec) {
        self.parts.push(NodePart {
            node: r.node,
            first: r,
            first_line: line,
            last: r,
            samples: 1,
            sum: ChannelIntegral::default(),
            gap_list: Vec::new(),
            peak_w: r.w,
            counter_all: !r.e.is_nan(),
        });
        self.hot.push(Hot {
            last_t: r.t,
            last_w: r.w,
            sum: ChannelIntegral::default(),
            peak_w: r.w,
            samples: 1,
        });
    }

    /// Lists a gap (the channel's integral counts it).
    #[cold]
    fn gap(&mut self, i: usize, r: Rec, from: f64) {
        let p = &mut self.parts[i];
        if p.gap_list.len() < self.max_gaps {
            p.gap_list.push(Gap {
                node_id: r.node,
                start_ms: from,
                end_ms: r.t,
            });
        }
    }

    #[cold]
    fn fail(&mut self, line: u64, field: &'static str, msg: String) -> bool {
        self.error = Some((line, field, msg));
        false
    }

    /// Takes the row on line `line` (within the block); false when it is an error (recorded).
    #[inline(always)]
    pub(super) fn row(&mut self, line: u64, r: Rec) -> bool {
        if self.rows == 0 {
            self.begin(r.t);
        }
        self.rows += 1;
        if !self.sorted || r.t < self.prev_t {
            self.out_of_order(r.t);
        }
        self.prev_t = r.t;
        let (i, new) = self.idx.get_or_insert(r.node, self.parts.len());
        if new {
            self.new_channel(line, r);
        } else {
            let gap_limit = self.gap_limit;
            let Some(h) = self.hot.get_mut(i) else {
                unreachable!("the node index hands out indices of existing channels")
            };
            let last_t = h.last_t;
            let iv = Interval::power(last_t, h.last_w, r.t, r.w);
            if iv.dt() < 0.0 {
                let msg = format!(
                    "{} is earlier than node {}'s previous sample at {} ms; expected timestamps that never decrease within a node",
                    r.t, r.node, last_t
                );
                return self.fail(line, "timestamp_ms", msg);
            }
            let is_gap = h.sum.add(&iv, gap_limit);
            if r.w > h.peak_w {
                h.peak_w = r.w;
            }
            h.samples += 1;
            h.last_t = r.t;
            h.last_w = r.w;
            if is_gap {
                self.gap(i, r, last_t);
            }
            if COUNTER {
                // Checked between consecutive rows that both carry the counter (NaN compares
                // false), whatever came before: so the answer does not depend on where blocks
                // start (the merger checks each block's first row the same way).
                let p = &mut self.parts[i];
                if r.e < p.last.e {
                    let msg = format!(
                        "energy counter of node {} went down from {} J to {} J; expected a cumulative counter",
                        r.node, p.last.e, r.e
                    );
                    return self.fail(line, "energy_j", msg);
                }
                if r.e.is_nan() {
                    p.counter_all = false;
                }
                p.last.e = r.e;
            }
        }
        if !self.short {
            if self.sorted {
                self.sweep.push_sorted(i, r.t, r.w);
            }
            if r.t < self.edge_lo || r.t > self.edge_hi {
                self.boundary.push(r);
            }
        } else {
            self.boundary.push(r);
        }
        true
    }

    /// Whether [`Self::steady`] may take rows now: a block spanning several gap limits, its rows
    /// in time order so far, at most 64 channels, all known to the peak sweep, and no instant
    /// waiting in the sweep for interpolation.
    #[inline(always)]
    pub(super) fn steady_ready(&self) -> bool {
        !COUNTER
            && self.rows > 0
            && !self.short
            && self.sorted
            && self.error.is_none()
            && self.hot.len() <= 64
            && self.sweep.steady_ready(self.hot.len())
    }

    /// Takes the rows from `pos` on for as long as each is the common case, with the state that
    /// changes per row kept in registers: a canonical line (`parse`), in time order, away from
    /// the block's edges, of a known channel, no gap and no duplicate timestamp, and each instant
    /// complete (every channel sampled) when the next begins. Stops before the first row that is
    /// not (for [`Self::row`] to take) and returns where it stopped: the position and line index.
    /// The sums are the same, in the same order, as [`Self::row`] would make them.
    #[inline(always)]
    pub(super) fn steady(
        &mut self,
        padded: &[u8],
        mut pos: usize,
        owned_end: usize,
        mut line_idx: u64,
        lines: &mut impl CanonicalLines,
    ) -> (usize, u64) {
        let small = &*self.idx.small;
        let hot = &mut self.hot[..];
        let sweep = &mut self.sweep;
        let n_chan = hot.len();
        let (lo, hi) = sweep.accept.unwrap_or((f64::NEG_INFINITY, f64::INFINITY));
        let (gap, edge_lo, edge_hi) = (self.gap_limit, self.edge_lo, self.edge_hi);
        // The lowest timestamp the next row may have: the previous row's, and not inside the
        // leading edge.
        let mut floor = self.prev_t.max(edge_lo);
        let mut group_t = sweep.group_t;
        let mut group_sum = sweep.group_sum;
        let mut group_bits = sweep.group_bits;
        let mut group_len = sweep.group_len;
        let mut best = sweep.best;
        let first_line = line_idx;
        while pos < owned_end {
            let Some((t, node, w, n)) = lines.parse(padded, pos) else {
                break;
            };
            if !(t >= floor && t <= edge_hi) {
                break;
            }
            let Some(&slot) = small.get(node as usize) else {
                break;
            };
            let c = (slot as usize).wrapping_sub(1);
            let Some(h) = hot.get_mut(c) else {
                break;
            };
            // At least 0 long: the channel's last sample is no later than the previous row.
            let iv = Interval::power(h.last_t, h.last_w, t, w);
            if iv.is_gap(gap) {
                break;
            }
            let bit = 1u64 << (c & 63);
            if t > group_t {
                if group_len != n_chan {
                    break;
                }
                if group_t >= lo && group_t <= hi && best.is_none_or(|(b, _)| group_sum > b) {
                    best = Some((group_sum, group_t));
                }
                group_t = t;
                group_sum = 0.0;
                group_bits = 0;
                group_len = 0;
            } else if group_bits & bit != 0 {
                break;
            }
            // Nothing below can stop the row.
            group_bits |= bit;
            group_len += 1;
            group_sum += w;
            h.sum.add(&iv, gap);
            if w > h.peak_w {
                h.peak_w = w;
            }
            h.samples += 1;
            h.last_t = t;
            h.last_w = w;
            floor = t;
            pos += n + 1;
            line_idx += 1;
        }
        if line_idx > first_line {
            self.rows += line_idx - first_line;
            self.prev_t = floor;
            sweep.group_t = group_t;
            sweep.group_sum = group_sum;
            sweep.group_bits = group_bits;
            sweep.group_len = group_len;
            sweep.best = best;
            for (p, h) in sweep.prev.iter_mut().zip(hot.iter()) {
                *p = Some((h.last_t, h.last_w));
            }
        }
        (pos, line_idx)
    }

    /// Writes the block's results into `b`.
    pub(super) fn finish(self, b: &mut Block) {
        let BlockIntegrator {
            rows,
            first_t,
            short,
            mut parts,
            hot,
            prev_t,
            sorted,
            min_t,
            max_t,
            sweep,
            boundary,
            error,
            ..
        } = self;
        if let Some((line, field, msg)) = error {
            b.set_error(line, field, msg);
        }
        if rows == 0 {
            return;
        }
        for (p, h) in parts.iter_mut().zip(&hot) {
            p.sum = h.sum;
            p.peak_w = h.peak_w;
            p.samples = h.samples;
            p.last.t = h.last_t;
            p.last.w = h.last_w;
        }
        b.rows = rows;
        b.first_t = first_t;
        b.last_t = prev_t;
        b.sorted = sorted;
        if sorted {
            b.min_t = first_t;
            b.max_t = prev_t;
        } else {
            b.min_t = min_t;
            b.max_t = max_t;
        }
        b.parts = parts;
        b.boundary = boundary;
        if b.error.is_none() && sorted && !short {
            b.local_peak = sweep.finish_opt();
        }
    }
}
