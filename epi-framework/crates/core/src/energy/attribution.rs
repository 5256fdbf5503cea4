//! Attribution of a run's energy to its queries (`measurement-methodology.md` §3): at every
//! instant the cluster power is shared equally among the queries in flight; instants with none go
//! to `between_queries`, so the parts add up to the run's energy. The energy of each elementary
//! stretch is the kernel's, through [`Segment::joules_between`]. Nothing here fails.

#[cfg(doc)]
use super::Segment;
use super::{window_energy, ChannelSeries};
use serde::{Deserialize, Serialize};

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

#[cfg(test)]
mod tests {
    use super::*;

    fn series(ch: u32, pts: &[(f64, f64)]) -> ChannelSeries {
        ChannelSeries::from_power(ch, pts, 1e9)
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
}
