//! The summary of one window `[a, b]` of a trace (ms on the trace's timeline): what `epi profile`
//! measured a repetition over, and what `epi calculate` / `epi validate` recompute when a
//! benchmark JSON names its `energy_window_ms`.
//!
//! Per channel the rows become [`ChannelSeries`] (the trapezoid between consecutive samples, the
//! same series the run engine attributes to queries) and the window's energy is their exact
//! integral with the edges interpolated, so a run's per-query energies and `between_queries` add
//! up to what this function returns. Rows are read by the streaming [`TraceReader`] (every row
//! checked as in the full-file path); a window is at most a run long, so this path favours
//! exactness over the full-file reader's speed.
//!
//! The window's `samples` are the rows its energy rests on: those inside it and the two that
//! bracket it on each channel.
//!
//! Errors: the reader's (file, line, field), and a window that is empty, inverted or holds no
//! samples.

use super::summarize::{ChannelSummary, TraceSummary};
use super::TraceReader;
use epi_core::energy::ChannelSeries;
use epi_core::error::{Error, InputError, Location};
use epi_core::result::Gap;
use std::collections::BTreeMap;
use std::path::Path;

/// Integrates `path` over `[a, b]` (trace ms) with the given gap limit.
pub fn summarize_window(
    path: &Path,
    window: (f64, f64),
    gap_limit_ms: f64,
    max_gaps_listed: usize,
) -> Result<TraceSummary, Error> {
    let (a, b) = window;
    if !(a.is_finite() && b.is_finite() && b > a) {
        return Err(Error::Invalid(format!(
            "{}: energy window [{a}, {b}] ms: expected two finite times, start before end",
            path.display()
        )));
    }
    let mut reader = TraceReader::open(path)?;
    let columns = reader
        .header()
        .names
        .iter()
        .map(|c| c.to_string())
        .collect();
    // Per channel: (t, watts, counter) in file order.
    let mut rows: BTreeMap<u32, Vec<(f64, f64, Option<f64>)>> = BTreeMap::new();
    let mut sorted = true;
    let mut last_t = f64::NEG_INFINITY;
    while let Some((line, r)) = reader.next_row()? {
        if r.t_ms < last_t {
            sorted = false;
        }
        last_t = r.t_ms;
        let pts = rows.entry(r.node).or_default();
        // What the full-file reader refuses, refused here too (same line, field and message).
        if let Some(&(t0, _, e0)) = pts.last() {
            let refuse = |field: &str, message: String| {
                Err(
                    InputError::new(Location::file(path).at_line(line).field(field), message)
                        .into(),
                )
            };
            if r.t_ms < t0 {
                return refuse(
                    "timestamp_ms",
                    format!(
                        "{} is earlier than node {}'s previous sample at {} ms; expected timestamps that never decrease within a node",
                        r.t_ms, r.node, t0
                    ),
                );
            }
            if let (Some(e0), Some(e1)) = (e0, r.energy_j) {
                if e1 < e0 {
                    return refuse(
                        "energy_j",
                        format!(
                            "energy counter of node {} went down from {e0} J to {e1} J; expected a cumulative counter",
                            r.node
                        ),
                    );
                }
            }
        }
        pts.push((r.t_ms, r.watts, r.energy_j));
    }
    let mut channels = BTreeMap::new();
    let mut series = Vec::new();
    let mut gaps = Vec::new();
    let mut gap_count = 0u64;
    let mut samples = 0u64;
    for (&node, pts) in rows.iter_mut() {
        pts.sort_by(|x, y| x.0.total_cmp(&y.0));
        let power: Vec<(f64, f64)> = pts.iter().map(|p| (p.0, p.1)).collect();
        let s = ChannelSeries::from_power(node, &power, gap_limit_ms);
        // A channel whose samples all lie before or after the window gives it nothing.
        let (Some(first), Some(last)) = (pts.first(), pts.last()) else {
            continue;
        };
        if last.0 < a || first.0 > b {
            continue;
        }
        // The samples the window's energy rests on: those inside it and the two that bracket it
        // (the edges are interpolated between them).
        let lo = pts.partition_point(|p| p.0 <= a).saturating_sub(1);
        let hi = (pts.partition_point(|p| p.0 < b) + 1).min(pts.len());
        let inside: Vec<&(f64, f64, Option<f64>)> = pts[lo..hi].iter().collect();
        if s.segments.iter().all(|g| g.t1 <= a || g.t0 >= b) && inside.is_empty() {
            continue; // the channel has nothing in the window
        }
        let mut ch_gaps = 0u64;
        let mut max_dt = 0.0f64;
        for g in s.segments.iter().filter(|g| g.t1 > a && g.t0 < b) {
            max_dt = max_dt.max(g.t1 - g.t0);
            if g.gap {
                ch_gaps += 1;
                if gaps.len() < max_gaps_listed {
                    gaps.push(Gap {
                        node_id: node,
                        start_ms: g.t0,
                        end_ms: g.t1,
                    });
                }
            }
        }
        gap_count += ch_gaps;
        samples += inside.len() as u64;
        let counter_joules = if pts.iter().all(|p| p.2.is_some()) && pts.len() > 1 {
            let e: Vec<(f64, f64)> = pts.iter().map(|p| (p.0, p.2.unwrap_or(0.0))).collect();
            match (interpolate(&e, a), interpolate(&e, b)) {
                (Some(x), Some(y)) => Some(y - x),
                _ => None,
            }
        } else {
            None
        };
        channels.insert(
            node,
            ChannelSummary {
                samples: inside.len() as u64,
                first_ms: inside.first().map_or(a, |p| p.0),
                last_ms: inside.last().map_or(b, |p| p.0),
                joules: s.joules_between(a, b),
                covered_ms: s.covered_between(a, b),
                gaps: ch_gaps,
                max_interval_ms: max_dt,
                // Within the window: its samples and the power at its edges.
                peak_watts: inside
                    .iter()
                    .filter(|p| p.0 >= a && p.0 <= b)
                    .map(|p| p.1)
                    .chain([power_at(&s, a), power_at(&s, b)].into_iter().flatten())
                    .fold(0.0, f64::max),
                counter_joules,
            },
        );
        series.push(s);
    }
    if samples == 0 && channels.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no samples in the energy window [{a}, {b}] ms",
            path.display()
        )));
    }
    // Peak cluster power at the sample instants inside the window.
    let (mut peak, mut peak_at) = (0.0f64, a);
    for pts in rows.values() {
        for &(t, _, _) in pts.iter().filter(|p| p.0 >= a && p.0 <= b) {
            let p: f64 = series.iter().filter_map(|s| power_at(s, t)).sum();
            if p > peak {
                peak = p;
                peak_at = t;
            }
        }
    }
    Ok(TraceSummary {
        path: path.to_path_buf(),
        columns,
        samples,
        channels,
        start_ms: a,
        end_ms: b,
        peak_watts: peak,
        peak_at_ms: peak_at,
        gaps,
        gap_count,
        gap_limit_ms,
        time_sorted: sorted,
    })
}

/// The channel's power at `t`: on its segment (none inside a gap or outside its span).
fn power_at(s: &ChannelSeries, t: f64) -> Option<f64> {
    let i = s.segments.partition_point(|g| g.t1 < t);
    let g = s.segments.get(i)?;
    (g.t0 <= t && t <= g.t1 && !g.gap).then(|| g.power_at(t))
}

/// Linear interpolation of `(t, v)` points (sorted by t) at `t`; `None` outside their span.
fn interpolate(pts: &[(f64, f64)], t: f64) -> Option<f64> {
    let i = pts.partition_point(|p| p.0 < t);
    if i < pts.len() && pts[i].0 == t {
        return Some(pts[i].1);
    }
    if i == 0 || i == pts.len() {
        return None;
    }
    let (t0, v0) = pts[i - 1];
    let (t1, v1) = pts[i];
    Some(v0 + (v1 - v0) * (t - t0) / (t1 - t0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use epi_core::energy::{attribute, window_energy};

    fn write(dir: &Path, text: &str) -> std::path::PathBuf {
        let p = dir.join("t.csv");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn a_window_is_the_exact_integral_with_interpolated_edges() {
        let dir = tempfile::tempdir().unwrap();
        // Node 0: 10 W → 20 W over 0..1000; node 1: 5 W flat, sampled at other instants.
        let p = write(
            dir.path(),
            "timestamp_ms,node_id,watts_rms,volts_rms,amps_rms,power_factor\n\
             0,0,10,,,\n100,1,5,,,\n1000,0,20,,,\n1100,1,5,,,\n2000,0,20,,,\n2100,1,5,,,\n",
        );
        let s = summarize_window(&p, (250.0, 1050.0), 5000.0, 10).unwrap();
        // Node 0: 12.5 → 20 W over 250..1000 (12.1875 J), 20 W over 1000..1050 (1 J);
        // node 1: 5 W × 0.8 s = 4 J.
        assert!(
            (s.total_joules() - 17.1875).abs() < 1e-12,
            "{}",
            s.total_joules()
        );
        assert!((s.duration_seconds() - 0.8).abs() < 1e-12);
        // Node 0: 0 and 2000 bracket, 1000 inside; node 1: 100 and 1100 bracket.
        assert_eq!(s.samples, 5);
        assert_eq!(s.coverage(), 1.0);
        // The same as the run engine's attribution over the same series.
        let series = vec![
            ChannelSeries::from_power(0, &[(0.0, 10.0), (1000.0, 20.0), (2000.0, 20.0)], 5000.0),
            ChannelSeries::from_power(1, &[(100.0, 5.0), (1100.0, 5.0), (2100.0, 5.0)], 5000.0),
        ];
        let att = attribute(&series, &[(300.0, 400.0), (350.0, 600.0)], (250.0, 1050.0));
        assert!((att.total_j - s.total_joules()).abs() < 1e-12);
        assert!((window_energy(&series, 250.0, 1050.0).joules - s.total_joules()).abs() < 1e-12);
        let s = summarize_window(&p, (0.0, 2000.0), 5000.0, 10).unwrap();
        assert_eq!(s.samples, 6);
        assert_eq!(s.channels[&1].samples, 3);
        assert!(
            s.peak_watts > 24.9 && s.peak_watts <= 25.0,
            "{}",
            s.peak_watts
        );
    }

    #[test]
    fn windows_outside_the_samples_or_inverted_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "timestamp_ms,node_id,watts_rms,volts_rms,amps_rms,power_factor\n0,0,10,,,\n1000,0,20,,,\n",
        );
        assert!(summarize_window(&p, (500.0, 100.0), 1000.0, 10).is_err());
        assert!(summarize_window(&p, (5000.0, 6000.0), 1000.0, 10).is_err());
        assert!(summarize_window(&p, (f64::NAN, 6000.0), 1000.0, 10).is_err());
    }
}
