//! A run's energy, attributed to its queries (`measurement-methodology.md` §3, §4).
//!
//! Each repetition's window (trace time) is partitioned by [`energy::attribute`]: at every instant
//! the cluster power is shared equally among the queries in flight, instants with none go to
//! `between_queries`; so the queries' energies plus `between_queries` are the window's energy
//! exactly, sequential or concurrent. Net energy subtracts the idle baseline over the same shares
//! of time: a query's net energy is its gross energy minus `idle_watts` × its *share-seconds*
//! (the integral of 1/queries-in-flight over its window), so net energies add up to the window's
//! net energy too.
//!
//! The series are built from the recorded samples exactly as [`epi_trace::summarize_window`]
//! builds them from the trace file, so `epi calculate` / `epi validate` on the run's trace and
//! benchmark JSON find the same energy.

use epi_core::energy::{self, ChannelSeries, Segment};
use epi_core::sample::PowerSample;
use epi_records::QueryRecord;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One repetition's energy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepetitionEnergy {
    /// Repetition (1-based).
    pub repetition: u32,
    /// The window, ms on the trace's timeline.
    pub window_trace_ms: (f64, f64),
    /// Window length, s.
    pub duration_s: f64,
    /// Gross energy of the window, J.
    pub total_j: f64,
    /// Σ of the queries' gross energies, J.
    pub queries_j: f64,
    /// Energy of instants with no query in flight, J.
    pub between_queries_j: f64,
    /// Net energy of the window (gross − idle × duration), J, with an idle baseline.
    pub net_total_j: Option<f64>,
    /// Smallest coverage of the window over channels.
    pub coverage: f64,
    /// Queries attributed.
    pub queries: usize,
}

/// Per-channel series of the samples (trapezoid between consecutive readings, sorted by time).
pub fn series_of(samples: &[PowerSample], gap_limit_ms: f64) -> Vec<ChannelSeries> {
    let mut by: BTreeMap<u32, Vec<(f64, f64)>> = BTreeMap::new();
    for s in samples {
        by.entry(s.channel).or_default().push((s.t_ms, s.watts));
    }
    by.into_iter()
        .map(|(ch, mut pts)| {
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            ChannelSeries::from_power(ch, &pts, gap_limit_ms)
        })
        .collect()
}

/// Attributes each repetition's window to its records (those with that `repetition`), filling
/// `energy_j`, `energy_net_j` (with `idle_watts`) and `energy_coverage`. `offset_ms` maps trace
/// time to run time (`run = trace + offset`); `windows_run_ms` are the repetitions' windows on the
/// run clock. Records whose repetition has no window are left alone.
pub fn attribute_run(
    series: &[ChannelSeries],
    offset_ms: f64,
    windows_run_ms: &[(u32, (f64, f64))],
    records: &mut [QueryRecord],
    idle_watts: Option<f64>,
) -> Vec<RepetitionEnergy> {
    let mut out = Vec::new();
    for &(rep, (a_run, b_run)) in windows_run_ms {
        let span = (a_run - offset_ms, b_run - offset_ms);
        let idx: Vec<usize> = records
            .iter()
            .enumerate()
            .filter(|(_, r)| r.repetition == Some(rep))
            .map(|(i, _)| i)
            .collect();
        let windows: Vec<(f64, f64)> = idx
            .iter()
            .map(|&i| {
                let r = &records[i];
                (
                    (r.start_s * 1000.0 - offset_ms).max(span.0),
                    (r.end_s * 1000.0 - offset_ms).min(span.1),
                )
            })
            .collect();
        let att = energy::attribute(series, &windows, span);
        // Share-seconds: the same partition of a constant 1 W.
        let unit = [ChannelSeries {
            channel: 0,
            segments: vec![Segment {
                t0: span.0,
                t1: span.1,
                p0: 1.0,
                p1: 1.0,
                gap: false,
            }],
        }];
        let shares = energy::attribute(&unit, &windows, span);
        for (k, &i) in idx.iter().enumerate() {
            let r = &mut records[i];
            r.energy_j = Some(att.per_query_j[k]);
            r.energy_coverage = Some(att.per_query_coverage[k]);
            r.energy_net_j = idle_watts.map(|w| att.per_query_j[k] - w * shares.per_query_j[k]);
        }
        let duration_s = (span.1 - span.0) / 1000.0;
        out.push(RepetitionEnergy {
            repetition: rep,
            window_trace_ms: span,
            duration_s,
            total_j: att.total_j,
            queries_j: att.per_query_j.iter().sum(),
            between_queries_j: att.between_queries_j,
            net_total_j: idle_watts
                .map(|w| epi_core::metrics::net_energy(att.total_j, w, duration_s)),
            coverage: energy::window_energy(series, span.0, span.1).coverage,
            queries: idx.len(),
        });
    }
    out
}

/// Mean power over `[a, b]` (trace ms), W: the idle baseline.
pub fn mean_watts(series: &[ChannelSeries], a: f64, b: f64) -> Option<f64> {
    (b > a).then(|| energy::window_energy(series, a, b).joules / ((b - a) / 1000.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(rep: u32, a: f64, b: f64) -> QueryRecord {
        QueryRecord {
            repetition: Some(rep),
            start_s: a,
            end_s: b,
            ..Default::default()
        }
    }

    #[test]
    fn gross_and_net_add_up_for_overlapping_queries() {
        // Two channels, 100 W and a 40 → 60 W ramp over 0..10 s of trace time.
        let series = vec![
            ChannelSeries::from_power(0, &[(0.0, 100.0), (10_000.0, 100.0)], 20_000.0),
            ChannelSeries::from_power(1, &[(0.0, 40.0), (10_000.0, 60.0)], 20_000.0),
        ];
        // Run time = trace time + 500 ms. Queries overlap (concurrency 2).
        let mut recs = vec![
            rec(1, 1.5, 4.5),
            rec(1, 2.5, 6.5),
            rec(1, 7.0, 8.0),
            rec(2, 1.0, 2.0),
        ];
        let out = attribute_run(
            &series,
            500.0,
            &[(1, (1000.0, 9000.0))],
            &mut recs,
            Some(30.0),
        );
        let e = &out[0];
        assert_eq!(e.window_trace_ms, (500.0, 8500.0));
        let direct = energy::window_energy(&series, 500.0, 8500.0).joules;
        assert!((e.total_j - direct).abs() < 1e-9 * direct);
        assert!((e.queries_j + e.between_queries_j - e.total_j).abs() < 1e-9 * e.total_j);
        let net: f64 = recs[..3].iter().map(|r| r.energy_net_j.unwrap()).sum();
        let between_net = e.between_queries_j
            - 30.0
                * (e.duration_s - recs[..3].iter().map(|r| r.end_s - r.start_s).sum::<f64>() + 2.0); // the 2 s when both queries run count once
        assert!(
            (net + between_net - e.net_total_j.unwrap()).abs() < 1e-9 * e.total_j,
            "{net} + {between_net} vs {:?}",
            e.net_total_j
        );
        // The query of repetition 2 has no window: untouched.
        assert_eq!(recs[3].energy_j, None);
        // A query alone in flight takes all of the power: 7.0..8.0 s run = 6.5..7.5 s trace.
        let alone = energy::window_energy(&series, 6500.0, 7500.0).joules;
        assert!((recs[2].energy_j.unwrap() - alone).abs() < 1e-9);
    }
}
