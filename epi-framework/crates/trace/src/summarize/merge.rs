//! Joining blocks in file order: each channel's integral continues across the block boundary
//! through the kernel ([`epi_core::energy::ChannelIntegral::join`]), gaps are listed, the cluster
//! peak is swept over the rows near block edges, and the summary is assembled. Errors: the
//! earliest of a block's own and those found at its joins (timestamp or counter going back), with
//! file, line and field; a block's I/O error.

use super::peak::{peak_by_merge, PeakSweep};
use super::{Block, ChannelSummary, NodePart, TraceOptions, TraceSummary};
use crate::parse::Header;
use epi_core::energy::Interval;
use epi_core::error::{Error, InputError, Location};
use epi_core::result::Gap;
use std::collections::BTreeMap;
use std::path::Path;

/// Joins blocks in file order.
pub(super) struct Merger<'a> {
    path: &'a Path,
    gap_limit: f64,
    max_gaps: usize,
    nodes: BTreeMap<u32, NodePart>,
    samples: u64,
    start: f64,
    end: f64,
    gaps: Vec<Gap>,
    gap_count: u64,
    sweep: PeakSweep,
    local_peak: Option<(f64, f64)>,
    last_t: f64,
    sorted: bool,
}

impl<'a> Merger<'a> {
    pub(super) fn new(path: &'a Path, opts: &TraceOptions) -> Self {
        Merger {
            path,
            gap_limit: opts.gap_limit_ms,
            max_gaps: opts.max_gaps_listed,
            nodes: BTreeMap::new(),
            samples: 0,
            start: f64::INFINITY,
            end: f64::NEG_INFINITY,
            gaps: Vec::new(),
            gap_count: 0,
            sweep: PeakSweep::new(opts.gap_limit_ms, None),
            local_peak: None,
            last_t: f64::NEG_INFINITY,
            sorted: true,
        }
    }

    pub(super) fn merge(&mut self, b: &Block, first_line: u64) -> Result<(), Error> {
        if let Some(e) = &b.io_error {
            return Err(Error::io(
                self.path,
                std::io::Error::new(e.kind(), e.to_string()),
            ));
        }
        // The earliest error among the block's own and the joins with earlier blocks.
        let mut err: Option<(u64, String, String)> = b.error.clone();
        let mut note = |line: u64, field: &str, msg: String| {
            if err.as_ref().is_none_or(|(l, _, _)| line < *l) {
                err = Some((line, field.to_string(), msg));
            }
        };
        let gap_limit = self.gap_limit;
        for part in &b.parts {
            match self.nodes.get_mut(&part.node) {
                None => {
                    self.nodes.insert(part.node, part.clone());
                    self.gap_count += part.sum.gaps;
                    for g in &part.gap_list {
                        if self.gaps.len() < self.max_gaps {
                            self.gaps.push(g.clone());
                        }
                    }
                }
                Some(acc) => {
                    // The interval from the last reading before the block to its first.
                    let bridge =
                        Interval::power(acc.last.t, acc.last.w, part.first.t, part.first.w);
                    let line = part.first_line;
                    if bridge.dt() < 0.0 {
                        note(
                            line,
                            "timestamp_ms",
                            format!(
                                "{} is earlier than node {}'s previous sample at {} ms; expected timestamps that never decrease within a node",
                                part.first.t, part.node, acc.last.t
                            ),
                        );
                        continue;
                    }
                    if part.first.e < acc.last.e {
                        note(
                            line,
                            "energy_j",
                            format!(
                                "energy counter of node {} went down from {} J to {} J; expected a cumulative counter",
                                part.node, acc.last.e, part.first.e
                            ),
                        );
                        continue;
                    }
                    if acc.sum.join(&bridge, &part.sum, gap_limit) {
                        self.gap_count += 1;
                        if self.gaps.len() < self.max_gaps {
                            self.gaps.push(Gap {
                                node_id: part.node,
                                start_ms: acc.last.t,
                                end_ms: part.first.t,
                            });
                        }
                    }
                    self.gap_count += part.sum.gaps;
                    for g in &part.gap_list {
                        if self.gaps.len() < self.max_gaps {
                            self.gaps.push(g.clone());
                        }
                    }
                    acc.peak_w = acc.peak_w.max(part.peak_w);
                    acc.counter_all = acc.counter_all && part.counter_all;
                    acc.samples += part.samples;
                    acc.last = part.last;
                }
            }
        }
        if let Some((idx, field, msg)) = err {
            return Err(InputError::new(
                Location::file(self.path)
                    .at_line(first_line + idx)
                    .field(field),
                msg,
            )
            .into());
        }
        self.samples += b.rows;
        if b.rows > 0 {
            self.start = self.start.min(b.min_t);
            self.end = self.end.max(b.max_t);
            if !b.sorted || b.first_t < self.last_t {
                self.sorted = false;
            }
            self.last_t = b.last_t;
        }
        if self.sorted {
            for r in &b.boundary {
                self.sweep.push(r.node, r.t, r.w);
            }
            if let Some(p) = b.local_peak {
                self.local_peak = better(self.local_peak, Some(p));
            }
        }
        Ok(())
    }

    pub(super) fn finish(self, path: &Path, header: &Header) -> Result<TraceSummary, Error> {
        let mut channels = BTreeMap::new();
        for (id, p) in &self.nodes {
            channels.insert(
                *id,
                ChannelSummary {
                    samples: p.samples,
                    first_ms: p.first.t,
                    last_ms: p.last.t,
                    joules: p.sum.joules(),
                    covered_ms: p.sum.covered_ms,
                    gaps: p.sum.gaps,
                    max_interval_ms: p.sum.max_dt_ms,
                    peak_watts: p.peak_w,
                    counter_joules: if p.counter_all {
                        Some(p.last.e - p.first.e)
                    } else {
                        None
                    },
                },
            );
        }
        let time_sorted = self.sorted && !self.sweep.unsorted;
        let (peak, at) = if time_sorted {
            better(self.sweep.finish_opt(), self.local_peak).unwrap_or((0.0, 0.0))
        } else {
            peak_by_merge(path, &channels, self.gap_limit)?
        };
        let empty = self.samples == 0;
        Ok(TraceSummary {
            path: path.to_path_buf(),
            columns: header.names.clone(),
            samples: self.samples,
            channels,
            start_ms: if empty { 0.0 } else { self.start },
            end_ms: if empty { 0.0 } else { self.end },
            peak_watts: peak,
            peak_at_ms: at,
            gaps: self.gaps,
            gap_count: self.gap_count,
            gap_limit_ms: self.gap_limit,
            time_sorted,
        })
    }
}

/// The larger peak; on a tie, the earlier instant.
fn better(a: Option<(f64, f64)>, b: Option<(f64, f64)>) -> Option<(f64, f64)> {
    match (a, b) {
        (None, x) | (x, None) => x,
        (Some(x), Some(y)) => {
            if y.0 > x.0 || (y.0 == x.0 && y.1 < x.1) {
                Some(y)
            } else {
                Some(x)
            }
        }
    }
}
