//! Energy over windows, attribution to queries, and counter unwrapping
//! (`measurement-methodology.md` §2 and §3).
//!
//! The per-interval rule — trapezoid between power samples, ΔE/Δt between counter readings, the
//! gap rule, window edges interpolated — is the [`kernel`], which every integrator calls (this
//! module, the trace summary, the run recorder, the live monitor).
//!
//! Every channel is turned into [`Segment`]s (kernel [`Interval`]s with their gap flag) on which
//! its power is linear in time. The cluster power is the sum of the channels' segments. Any
//! window's energy — a query, the gaps between queries, the whole run — is the exact integral of
//! that piecewise-linear function, with window edges interpolated ([`window_energy`]);
//! [`attribute`] shares it among concurrent queries; [`CounterUnwrapper`] turns a wrapping
//! hardware counter into a monotonic total. Nothing here fails: empty or reversed intervals are
//! skipped, empty inputs give zero energy and zero coverage.

mod attribution;
mod counter;
pub mod kernel;

pub use attribution::{attribute, Attribution};
pub use counter::CounterUnwrapper;
pub use kernel::{is_gap, wms2_to_joules, ChannelIntegral, Interval};

use crate::sample::PowerSample;
use serde::{Deserialize, Serialize};

/// A stretch of one channel's power, linear from `(t0, p0)` to `(t1, p1)`. Times in ms, W.
/// The [`Interval`] of the kernel, with its gap flag.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    /// Start, ms.
    pub t0: f64,
    /// End, ms.
    pub t1: f64,
    /// Power at the start, W.
    pub p0: f64,
    /// Power at the end, W.
    pub p1: f64,
    /// Longer than the gap limit: integrated, but not counted as covered.
    pub gap: bool,
}

impl Segment {
    /// The segment of `iv`, flagged as a gap by the kernel's gap rule.
    #[inline]
    pub fn new(iv: Interval, gap_limit_ms: f64) -> Segment {
        Segment {
            t0: iv.t0,
            t1: iv.t1,
            p0: iv.p0,
            p1: iv.p1,
            gap: iv.is_gap(gap_limit_ms),
        }
    }

    /// The kernel's interval of this segment.
    #[inline(always)]
    pub fn interval(&self) -> Interval {
        Interval {
            t0: self.t0,
            t1: self.t1,
            p0: self.p0,
            p1: self.p1,
        }
    }

    /// Power at `t` (clamped to the segment).
    #[inline]
    pub fn power_at(&self, t: f64) -> f64 {
        self.interval().power_at(t)
    }

    /// Energy in joules over `[a, b] ∩ [t0, t1]`.
    #[inline]
    pub fn joules_between(&self, a: f64, b: f64) -> f64 {
        self.interval().joules_between(a, b)
    }
}

/// One channel's power as segments, in time order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChannelSeries {
    /// Channel id.
    pub channel: u32,
    /// Segments in time order, not overlapping.
    pub segments: Vec<Segment>,
}

impl ChannelSeries {
    /// Linear segments between consecutive power samples `(t_ms, watts)` (the trapezoid rule).
    pub fn from_power(channel: u32, samples: &[(f64, f64)], gap_limit_ms: f64) -> Self {
        let segments = samples
            .windows(2)
            .filter_map(|w| Interval::forward(w[0].0, w[0].1, w[1].0, w[1].1))
            .map(|iv| Segment::new(iv, gap_limit_ms))
            .collect();
        ChannelSeries { channel, segments }
    }

    /// Constant-power segments between consecutive cumulative counter readings `(t_ms, joules)`:
    /// each segment's integral is exactly the counter difference.
    pub fn from_counter(channel: u32, readings: &[(f64, f64)], gap_limit_ms: f64) -> Self {
        let segments = readings
            .windows(2)
            .filter(|w| w[1].0 > w[0].0)
            .map(|w| {
                Segment::new(
                    Interval::counter(w[0].0, w[0].1, w[1].0, w[1].1),
                    gap_limit_ms,
                )
            })
            .collect();
        ChannelSeries { channel, segments }
    }

    /// Series for every channel in `samples` (grouped by channel, time order kept). Channels whose
    /// samples all carry a counter use the counter; others use watts.
    pub fn from_samples(samples: &[PowerSample], gap_limit_ms: f64) -> Vec<ChannelSeries> {
        let mut by: std::collections::BTreeMap<u32, Vec<&PowerSample>> = Default::default();
        for s in samples {
            by.entry(s.channel).or_default().push(s);
        }
        by.into_iter()
            .map(|(ch, v)| {
                if v.iter().all(|s| s.energy_j.is_some()) && v.len() > 1 {
                    let r: Vec<(f64, f64)> = v
                        .iter()
                        .map(|s| (s.t_ms, s.energy_j.unwrap_or(0.0)))
                        .collect();
                    ChannelSeries::from_counter(ch, &r, gap_limit_ms)
                } else {
                    let r: Vec<(f64, f64)> = v.iter().map(|s| (s.t_ms, s.watts)).collect();
                    ChannelSeries::from_power(ch, &r, gap_limit_ms)
                }
            })
            .collect()
    }

    /// Energy over `[a, b]`, J.
    pub fn joules_between(&self, a: f64, b: f64) -> f64 {
        let start = self.segments.partition_point(|s| s.t1 <= a);
        self.segments[start..]
            .iter()
            .take_while(|s| s.t0 < b)
            .map(|s| s.joules_between(a, b))
            .sum()
    }

    /// Time within `[a, b]` covered by non-gap segments, ms.
    pub fn covered_between(&self, a: f64, b: f64) -> f64 {
        let start = self.segments.partition_point(|s| s.t1 <= a);
        self.segments[start..]
            .iter()
            .take_while(|s| s.t0 < b)
            .filter(|s| !s.gap)
            .map(|s| s.interval().overlap_ms(a, b))
            .sum()
    }
}

/// Energy of a window over all channels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WindowEnergy {
    /// Joules, summed over channels.
    pub joules: f64,
    /// Smallest share of the window covered, over channels (1 = fully covered).
    pub coverage: f64,
}

/// Energy of `[a, b]` (ms) summed over channels, with coverage.
pub fn window_energy(series: &[ChannelSeries], a: f64, b: f64) -> WindowEnergy {
    let joules = series.iter().map(|s| s.joules_between(a, b)).sum();
    let coverage = if b > a {
        series
            .iter()
            .map(|s| s.covered_between(a, b) / (b - a))
            .fold(1.0, f64::min)
    } else {
        0.0
    };
    WindowEnergy {
        joules,
        coverage: if series.is_empty() { 0.0 } else { coverage },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(ch: u32, pts: &[(f64, f64)]) -> ChannelSeries {
        ChannelSeries::from_power(ch, pts, 1e9)
    }

    #[test]
    fn window_edges_are_interpolated() {
        // 10 W → 20 W over 0..1000 ms: 15 J. Window 250..750: power 12.5 → 17.5, 7.5 J.
        let s = vec![series(0, &[(0.0, 10.0), (1000.0, 20.0)])];
        assert!((window_energy(&s, 0.0, 1000.0).joules - 15.0).abs() < 1e-12);
        assert!((window_energy(&s, 250.0, 750.0).joules - 7.5).abs() < 1e-12);
    }

    #[test]
    fn counter_segments_integrate_to_the_counter_difference() {
        let s = vec![ChannelSeries::from_counter(
            0,
            &[(0.0, 100.0), (100.0, 101.5), (300.0, 104.0)],
            1e9,
        )];
        assert!((window_energy(&s, 0.0, 300.0).joules - 4.0).abs() < 1e-12);
        // Half of the first interval: 0.75 J.
        assert!((window_energy(&s, 0.0, 50.0).joules - 0.75).abs() < 1e-12);
    }

    #[test]
    fn coverage_flags_gaps_and_edges() {
        let s = vec![ChannelSeries::from_power(
            0,
            &[(0.0, 1.0), (100.0, 1.0), (2000.0, 1.0)],
            500.0,
        )];
        let w = window_energy(&s, 0.0, 2000.0);
        assert!((w.coverage - 0.05).abs() < 1e-12);
        assert!((w.joules - 2.0).abs() < 1e-12);
        let w = window_energy(&s, -100.0, 100.0);
        assert!((w.coverage - 0.5).abs() < 1e-12);
    }
}
