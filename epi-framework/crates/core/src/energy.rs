//! Energy over windows, attribution to queries, and counter unwrapping
//! (`measurement-methodology.md` §2 and §3).
//!
//! Every channel is turned into [`Segment`]s on which its power is linear in time: between two
//! power samples the segment runs from one reading to the other (the trapezoid rule); between two
//! counter readings the power is the constant ΔE/Δt (so the integral is exactly the counter
//! difference). The cluster power is the sum of the channels' segments. Any window's energy — a
//! query, the gaps between queries, the whole run — is the exact integral of that piecewise-linear
//! function, with window edges interpolated.

use crate::sample::PowerSample;
use serde::{Deserialize, Serialize};

/// A stretch of one channel's power, linear from `(t0, p0)` to `(t1, p1)`. Times in ms, W.
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
    /// Power at `t` (clamped to the segment).
    #[inline]
    pub fn power_at(&self, t: f64) -> f64 {
        if self.t1 <= self.t0 {
            return self.p1;
        }
        let f = ((t - self.t0) / (self.t1 - self.t0)).clamp(0.0, 1.0);
        self.p0 + (self.p1 - self.p0) * f
    }

    /// Energy in joules over `[a, b] ∩ [t0, t1]`.
    #[inline]
    pub fn joules_between(&self, a: f64, b: f64) -> f64 {
        let lo = a.max(self.t0);
        let hi = b.min(self.t1);
        if hi <= lo {
            return 0.0;
        }
        (hi - lo) * (self.power_at(lo) + self.power_at(hi)) / 2000.0
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
            .filter(|w| w[1].0 > w[0].0)
            .map(|w| Segment {
                t0: w[0].0,
                t1: w[1].0,
                p0: w[0].1,
                p1: w[1].1,
                gap: w[1].0 - w[0].0 > gap_limit_ms,
            })
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
                let p = (w[1].1 - w[0].1) * 1000.0 / (w[1].0 - w[0].0);
                Segment {
                    t0: w[0].0,
                    t1: w[1].0,
                    p0: p,
                    p1: p,
                    gap: w[1].0 - w[0].0 > gap_limit_ms,
                }
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
            .map(|s| (b.min(s.t1) - a.max(s.t0)).max(0.0))
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

/// The result of attributing a run's energy to its queries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attribution {
    /// Energy attributed to each query, J, in the order the windows were given.
    pub per_query_j: Vec<f64>,
    /// Coverage of each query's window.
    pub per_query_coverage: Vec<f64>,
    /// Energy of instants with no query in flight, J.
    pub between_queries_j: f64,
    /// Energy of the whole run window, J (= Σ per-query + between-queries).
    pub total_j: f64,
    /// The run window, ms.
    pub span: (f64, f64),
}

/// Partitions the run window `span` (ms): at every instant the cluster power is shared equally
/// among the queries in flight; instants with none go to `between_queries_j`. `windows` are the
/// queries' `(start, end)` in ms on the same timeline; they may overlap (concurrent queries).
pub fn attribute(
    series: &[ChannelSeries],
    windows: &[(f64, f64)],
    span: (f64, f64),
) -> Attribution {
    let (s0, s1) = span;
    // Breakpoints: every segment end and every window edge inside the span.
    let mut bps: Vec<f64> = Vec::new();
    bps.push(s0);
    bps.push(s1);
    for ch in series {
        for seg in &ch.segments {
            if seg.t0 > s0 && seg.t0 < s1 {
                bps.push(seg.t0);
            }
            if seg.t1 > s0 && seg.t1 < s1 {
                bps.push(seg.t1);
            }
        }
    }
    for &(a, b) in windows {
        for t in [a, b] {
            if t > s0 && t < s1 {
                bps.push(t);
            }
        }
    }
    bps.sort_by(|a, b| a.total_cmp(b));
    bps.dedup();

    // Windows sorted by start for a sweep; active set of indices.
    let mut order: Vec<usize> = (0..windows.len()).collect();
    order.sort_by(|&i, &j| windows[i].0.total_cmp(&windows[j].0));
    let mut next_w = 0;
    let mut active: Vec<usize> = Vec::new();
    let mut per_query = vec![0.0; windows.len()];
    let mut between = 0.0;
    let mut cursors = vec![0usize; series.len()];

    for pair in bps.windows(2) {
        let (u, v) = (pair[0], pair[1]);
        if v <= u {
            continue;
        }
        // Cluster energy on [u, v]: each channel's current segment is linear there.
        let mut e = 0.0;
        for (k, ch) in series.iter().enumerate() {
            let segs = &ch.segments;
            let c = &mut cursors[k];
            while *c < segs.len() && segs[*c].t1 <= u {
                *c += 1;
            }
            if *c < segs.len() && segs[*c].t0 <= u {
                e += segs[*c].joules_between(u, v);
            }
        }
        while next_w < order.len() && windows[order[next_w]].0 <= u {
            active.push(order[next_w]);
            next_w += 1;
        }
        active.retain(|&i| windows[i].1 > u);
        let inflight: Vec<usize> = active
            .iter()
            .copied()
            .filter(|&i| windows[i].1 >= v)
            .collect();
        if inflight.is_empty() {
            between += e;
        } else {
            let share = e / inflight.len() as f64;
            for i in inflight {
                per_query[i] += share;
            }
        }
    }
    let per_query_coverage = windows
        .iter()
        .map(|&(a, b)| window_energy(series, a, b).coverage)
        .collect();
    let total = per_query.iter().sum::<f64>() + between;
    Attribution {
        per_query_j: per_query,
        per_query_coverage,
        between_queries_j: between,
        total_j: total,
        span,
    }
}

/// Turns readings of a wrapping counter (RAPL `energy_uj`) into a monotonic total, using the
/// counter's range (`max_energy_range_uj`), so a wrap is never a negative or huge jump.
#[derive(Debug, Clone, PartialEq)]
pub struct CounterUnwrapper {
    range: u64,
    last: Option<u64>,
    total: u128,
    wraps: u64,
}

impl CounterUnwrapper {
    /// A new unwrapper for a counter that wraps after `range` (its largest value).
    pub fn new(range: u64) -> Self {
        CounterUnwrapper {
            range,
            last: None,
            total: 0,
            wraps: 0,
        }
    }

    /// Adds a raw reading; returns the unwrapped total since the first reading.
    pub fn push(&mut self, raw: u64) -> u128 {
        if let Some(last) = self.last {
            let delta = if raw >= last {
                raw - last
            } else {
                self.wraps += 1;
                self.range.saturating_sub(last) + raw
            };
            self.total += delta as u128;
        }
        self.last = Some(raw);
        self.total
    }

    /// Wraps seen.
    pub fn wraps(&self) -> u64 {
        self.wraps
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
    fn attribution_is_additive_for_sequential_and_concurrent_queries() {
        let s = vec![
            series(0, &[(0.0, 10.0), (400.0, 30.0), (1000.0, 10.0)]),
            series(1, &[(50.0, 5.0), (950.0, 5.0)]),
        ];
        let total = window_energy(&s, 0.0, 1000.0).joules;
        // Sequential.
        let a = attribute(&s, &[(100.0, 300.0), (300.0, 700.0)], (0.0, 1000.0));
        assert!((a.total_j - total).abs() < 1e-9);
        assert!((a.per_query_j.iter().sum::<f64>() + a.between_queries_j - total).abs() < 1e-9);
        assert!((a.per_query_j[0] - window_energy(&s, 100.0, 300.0).joules).abs() < 1e-9);
        // Concurrent: overlap 200..400 shared by two.
        let c = attribute(&s, &[(100.0, 400.0), (200.0, 600.0)], (0.0, 1000.0));
        let overlap = window_energy(&s, 200.0, 400.0).joules;
        let q0 = window_energy(&s, 100.0, 200.0).joules + overlap / 2.0;
        let q1 = window_energy(&s, 400.0, 600.0).joules + overlap / 2.0;
        assert!((c.per_query_j[0] - q0).abs() < 1e-9, "{:?}", c);
        assert!((c.per_query_j[1] - q1).abs() < 1e-9);
        assert!((c.per_query_j.iter().sum::<f64>() + c.between_queries_j - total).abs() < 1e-9);
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

    #[test]
    fn counter_wrap_is_unwrapped() {
        let mut u = CounterUnwrapper::new(1000);
        assert_eq!(u.push(900), 0);
        assert_eq!(u.push(990), 90);
        assert_eq!(u.push(40), 140);
        assert_eq!(u.wraps(), 1);
    }
}
