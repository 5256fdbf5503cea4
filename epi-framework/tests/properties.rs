//! Property tests (proptest) of the framework's measurement invariants, on generated inputs:
//!
//! - integrating a trace split at any point adds up: over windows (`energy::window_energy`) for
//!   any split instant, and through the trace reader (`trace::summarize`) for a trace file cut in
//!   two at any sample instant;
//! - attribution is additive for any set of windows, overlapping or not: the queries' shares and
//!   the energy between queries add up to the run's energy;
//! - the counter unwrapper never goes backwards, and counts each step as the counter's range says;
//! - a trace written by epi (`TraceWriter`) reads back identical (`TraceReader`).
//!
//! A failing case is shrunk and printed by proptest (and kept in `properties.proptest-regressions`
//! for the next run). Case counts are kept so that each property runs in seconds in a debug build.

use epi_framework::energy::{attribute, window_energy, ChannelSeries, CounterUnwrapper};
use epi_framework::sample::PowerSample;
use epi_framework::trace::{summarize, TraceOptions, TraceReader, TraceWriter};
use proptest::prelude::*;
use std::time::Duration;

/// `a` and `b` agree to 1e-9 relative (or 1e-9 absolutely, around zero).
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// A channel's samples: strictly increasing times from `start`, steps of `dts`, and watts.
fn channel(max_samples: usize) -> impl Strategy<Value = Vec<(f64, f64)>> {
    (
        -1e6..1e6f64,
        prop::collection::vec((0.001..5_000.0f64, 0.0..5_000.0f64), 1..max_samples),
    )
        .prop_map(|(start, steps)| {
            let mut t = start;
            steps
                .into_iter()
                .map(|(dt, w)| {
                    t += dt;
                    (t, w)
                })
                .collect()
        })
}

/// Up to four channels, some with a cumulative counter (J) instead of watts.
fn series(max_samples: usize) -> impl Strategy<Value = Vec<ChannelSeries>> {
    prop::collection::vec((channel(max_samples), any::<bool>()), 1..5).prop_map(|chans| {
        chans
            .into_iter()
            .enumerate()
            .map(|(i, (samples, counter))| {
                if counter {
                    // The watts become a counter's increments: cumulative and never decreasing.
                    let mut e = 0.0;
                    let readings: Vec<(f64, f64)> = samples
                        .iter()
                        .map(|&(t, w)| {
                            e += w;
                            (t, e)
                        })
                        .collect();
                    ChannelSeries::from_counter(i as u32, &readings, 1000.0)
                } else {
                    ChannelSeries::from_power(i as u32, &samples, 1000.0)
                }
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Energy (and covered time) of [a, c] is that of [a, b] plus that of [b, c], for any b, with
    /// the window edges anywhere: inside segments, on samples, outside the data.
    #[test]
    fn integration_split_at_any_point_adds_up(
        s in series(40),
        a in -2e6..3e6f64,
        len in 0.0..3e6f64,
        at in 0.0..=1.0f64,
    ) {
        let (c, b) = (a + len, a + len * at);
        let whole = window_energy(&s, a, c).joules;
        let parts = window_energy(&s, a, b).joules + window_energy(&s, b, c).joules;
        prop_assert!(close(whole, parts), "[a, c] {whole} J, [a, b] + [b, c] {parts} J");
        for ch in &s {
            let whole = ch.covered_between(a, c);
            let parts = ch.covered_between(a, b) + ch.covered_between(b, c);
            prop_assert!(close(whole, parts), "covered {whole} ms, in two parts {parts} ms");
        }
    }

    /// However the windows overlap, nest, repeat or fall outside the run, the queries' shares plus
    /// the energy between queries are the run's energy, and no share is negative.
    #[test]
    fn attribution_is_additive_for_any_windows(
        s in series(30),
        windows in prop::collection::vec((-2e6..3e6f64, 0.0..1e6f64), 0..12),
        span in (-2e6..3e6f64, 0.0..4e6f64),
    ) {
        let windows: Vec<(f64, f64)> = windows.iter().map(|&(a, len)| (a, a + len)).collect();
        let span = (span.0, span.0 + span.1);
        let run = window_energy(&s, span.0, span.1).joules;
        let att = attribute(&s, &windows, span);
        let sum: f64 = att.per_query_j.iter().sum::<f64>() + att.between_queries_j;
        prop_assert_eq!(att.per_query_j.len(), windows.len());
        prop_assert!(close(sum, run), "shares + between {sum} J, run {run} J");
        prop_assert!(close(att.total_j, run), "total {} J, run {run} J", att.total_j);
        for (i, &q) in att.per_query_j.iter().enumerate() {
            prop_assert!(q >= 0.0, "query {i}: {q} J");
            // A query gets at most the energy of its own window.
            let own = window_energy(&s, windows[i].0.max(span.0), windows[i].1.min(span.1)).joules;
            prop_assert!(q <= own + 1e-9 * own.max(1.0), "query {i}: {q} J of its window's {own} J");
        }
    }

    /// A wrapping counter read in any order of wraps: the total never goes back, and each step adds
    /// the counter's increase, or across a wrap what was left to the range plus the new reading.
    #[test]
    fn counter_unwrapper_never_goes_backwards(
        range in 1..=u64::MAX,
        readings in prop::collection::vec(any::<u64>(), 1..200),
    ) {
        let readings: Vec<u64> = readings.iter().map(|r| r % range.saturating_add(1).max(1)).collect();
        let mut u = CounterUnwrapper::new(range);
        let mut total = u.push(readings[0]);
        prop_assert_eq!(total, 0);
        let mut wraps = 0;
        for w in readings.windows(2) {
            let (last, raw) = (w[0], w[1]);
            let next = u.push(raw);
            let step = if raw >= last {
                raw - last
            } else {
                wraps += 1;
                range - last + raw
            };
            prop_assert!(next >= total, "went back: {total} → {next}");
            prop_assert_eq!(next - total, u128::from(step), "{} → {}", last, raw);
            total = next;
        }
        prop_assert_eq!(u.wraps(), wraps);
    }
}

/// A sample any source could produce: finite values in the ranges the trace format accepts.
fn sample() -> impl Strategy<Value = PowerSample> {
    let finite = prop::num::f64::NORMAL
        | prop::num::f64::SUBNORMAL
        | prop::num::f64::ZERO
        | prop::num::f64::POSITIVE
        | prop::num::f64::NEGATIVE;
    let non_negative = prop::num::f64::POSITIVE | prop::num::f64::ZERO | prop::num::f64::SUBNORMAL;
    let non_negative = non_negative.prop_filter("finite", |v: &f64| v.is_finite() && *v >= 0.0);
    let finite = finite.prop_filter("finite", |v: &f64| v.is_finite());
    (
        (any::<u32>(), finite.clone(), any::<i64>()),
        (
            proptest::option::of(finite),
            non_negative.clone(),
            proptest::option::of(non_negative.clone()),
            proptest::option::of(non_negative.clone()),
            proptest::option::of(0.0..=1.0f64),
            proptest::option::of(non_negative),
        ),
    )
        .prop_map(
            |(
                (channel, t_ms, host_utc_ms),
                (source_t_ms, watts, volts, amps, power_factor, energy_j),
            )| {
                PowerSample {
                    channel,
                    t_ms,
                    host_mono_ms: t_ms,
                    host_utc_ms,
                    source_t_ms,
                    watts,
                    volts,
                    amps,
                    power_factor,
                    energy_j,
                }
            },
        )
}

/// The values bit for bit (so -0 and 0 differ, and every digit counts).
fn bits(v: Option<f64>) -> Option<u64> {
    v.map(f64::to_bits)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every value a trace row holds, written by `TraceWriter` and read by `TraceReader`, comes
    /// back bit for bit.
    #[test]
    fn a_written_trace_reads_back_identical(samples in prop::collection::vec(sample(), 0..60)) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("trace.csv");
        let mut w = TraceWriter::create(&path, Duration::from_secs(60)).expect("create");
        w.write(&samples).expect("write");
        w.finish().expect("finish");
        let rows: Vec<_> = TraceReader::open(&path)
            .expect("open")
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(rows.len(), samples.len());
        for ((line, r), s) in rows.iter().zip(&samples) {
            prop_assert_eq!(
                (r.t_ms.to_bits(), r.node, r.watts.to_bits()),
                (s.t_ms.to_bits(), s.channel, s.watts.to_bits()),
                "line {}", line
            );
            prop_assert_eq!(
                (bits(r.volts), bits(r.amps), bits(r.power_factor)),
                (bits(s.volts), bits(s.amps), bits(s.power_factor)),
                "line {}", line
            );
            prop_assert_eq!(
                (bits(r.source_t_ms), bits(r.energy_j), r.utc_ms),
                (bits(s.source_t_ms), bits(s.energy_j), (s.host_utc_ms != 0).then_some(s.host_utc_ms)),
                "line {}", line
            );
        }
    }

    /// A trace cut in two at any sample instant (the instant in both parts): each channel's energy
    /// over the two parts adds up to its energy over the whole, read by the trace reader with any
    /// block and thread settings, and equals the integral over windows of the same samples.
    #[test]
    fn a_trace_split_at_any_instant_adds_up(
        n_chan in 1u32..4,
        steps in prop::collection::vec((0.5..3_000.0f64, prop::collection::vec(0.0..2_000.0f64, 4)), 2..120),
        cut in 0.0..=1.0f64,
        small_blocks in any::<bool>(),
    ) {
        let mut t = 0.0;
        let instants: Vec<(f64, Vec<f64>)> = steps
            .into_iter()
            .map(|(dt, w)| {
                t += dt;
                (t, w)
            })
            .collect();
        let k = ((instants.len() - 1) as f64 * cut).round() as usize;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let write = |name: &str, part: &[(f64, Vec<f64>)]| {
            let path = dir.path().join(name);
            let mut w = TraceWriter::create(&path, Duration::from_secs(60)).expect("create");
            let rows: Vec<PowerSample> = part
                .iter()
                .flat_map(|(t, ws)| (0..n_chan).map(move |c| PowerSample::new(c, *t, ws[c as usize])))
                .collect();
            w.write(&rows).expect("write");
            w.finish().expect("finish")
        };
        let opts = if small_blocks {
            TraceOptions { threads: 3, block_bytes: 4096, ..Default::default() }
        } else {
            TraceOptions::default()
        };
        let read = |p: &std::path::Path| summarize(p, &opts).map_err(|e| TestCaseError::fail(e.to_string()));
        let whole = read(&write("whole.csv", &instants))?;
        let first = read(&write("first.csv", &instants[..=k]))?;
        let second = read(&write("second.csv", &instants[k..]))?;
        let (t0, tk, tn) = (instants[0].0, instants[k].0, instants[instants.len() - 1].0);
        for c in 0..n_chan {
            let samples: Vec<(f64, f64)> = instants.iter().map(|(t, w)| (*t, w[c as usize])).collect();
            let s = [ChannelSeries::from_power(c, &samples, 1000.0)];
            let all = whole.channels[&c].joules;
            let parts = first.channels[&c].joules + second.channels[&c].joules;
            prop_assert!(close(all, parts), "node {}: whole {} J, parts {} J", c, all, parts);
            let windows = window_energy(&s, t0, tk).joules + window_energy(&s, tk, tn).joules;
            prop_assert!(close(all, windows), "node {}: reader {} J, windows {} J", c, all, windows);
        }
    }
}
