//! Known-answer and rejection tests of trace integration.

use super::*;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

const HEADER: &str = "timestamp_ms,node_id,watts_rms,volts_rms,amps_rms,power_factor\n";

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn row(t: f64, node: u32, w: f64) -> String {
    format!("{t},{node},{w},230.0,{:.4},0.99\n", w / 230.0 / 0.99)
}

fn rel(a: f64, b: f64) -> f64 {
    ((a - b) / b).abs()
}

#[test]
fn piecewise_linear_synchronous_is_exact() {
    // Node 0 ramps 10 → 20 W over 0..10 s then holds 20 W: energy 150 + 200 = 350 J.
    // Node 1 holds 5 W over 0..20 s: 100 J. Samples every 500 ms; the trapezoid rule is exact.
    let dir = tempfile::tempdir().unwrap();
    let mut s = String::from(HEADER);
    for i in 0..=40 {
        let t = i as f64 * 500.0;
        let w0 = if t <= 10_000.0 {
            10.0 + t / 1000.0
        } else {
            20.0
        };
        s += &row(t, 0, w0);
        s += &row(t, 1, 5.0);
    }
    let p = write(&dir, "t.csv", &s);
    let sum = summarize(&p, &TraceOptions::default()).unwrap();
    assert!(
        rel(sum.channels[&0].joules, 350.0) < 1e-12,
        "{}",
        sum.channels[&0].joules
    );
    assert!(rel(sum.channels[&1].joules, 100.0) < 1e-12);
    assert!(rel(sum.total_joules(), 450.0) < 1e-12);
    assert_eq!(sum.duration_seconds(), 20.0);
    assert!(rel(sum.avg_watts(), 22.5) < 1e-12);
    assert!(rel(sum.peak_watts, 25.0) < 1e-12);
    assert!(sum.peak_at_ms >= 10_000.0);
    assert_eq!(sum.samples, 82);
    assert_eq!(sum.coverage(), 1.0);
    assert!(sum.time_sorted);
    assert!(rel(sum.kwh(), 450.0 / 3.6e6) < 1e-12);
}

#[test]
fn irregular_sampling_is_exact_on_a_linear_signal() {
    // w(t) = 3 + 0.002 t (t in ms), sampled at irregular instants over 0..7000 ms:
    // ∫ = 3·7 + 0.002·7000²/2/1000 = 21 + 49 = 70 J.
    let dir = tempfile::tempdir().unwrap();
    let ts = [
        0.0, 13.0, 250.0, 251.0, 999.5, 2000.0, 2003.25, 4500.0, 6999.0, 7000.0,
    ];
    let mut s = String::from(HEADER);
    for t in ts {
        s += &row(t, 2, 3.0 + 0.002 * t);
    }
    let p = write(&dir, "t.csv", &s);
    let sum = summarize(
        &p,
        &TraceOptions {
            gap_limit_ms: 3000.0,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        rel(sum.total_joules(), 70.0) < 1e-12,
        "{}",
        sum.total_joules()
    );
    assert_eq!(sum.channels[&2].max_interval_ms, 2499.0);
}

#[test]
fn nodes_sampled_at_different_instants() {
    // Node 0 at 0, 100, 200, ... ms; node 1 at 50, 150, ... ms, both linear ramps.
    // Node 0: w = 10 + t/100 over 0..1000 → ∫ = 10 + 5 = 15 J.
    // Node 1: w = 20 − t/100 over 50..950 → ∫ over 0.9 s = 0.9·(20 − 5) = 13.5 J.
    let dir = tempfile::tempdir().unwrap();
    let mut s = String::from(HEADER);
    for i in 0..=10 {
        let t0 = i as f64 * 100.0;
        s += &row(t0, 0, 10.0 + t0 / 100.0);
        if i < 10 {
            let t1 = t0 + 50.0;
            s += &row(t1, 1, 20.0 - t1 / 100.0);
        }
    }
    let p = write(&dir, "t.csv", &s);
    let sum = summarize(&p, &TraceOptions::default()).unwrap();
    assert!(rel(sum.channels[&0].joules, 15.0) < 1e-12);
    assert!(rel(sum.channels[&1].joules, 13.5) < 1e-12);
    // Cluster power where both channels cover: node0 + node1 = 10 + t/100 + 20 − t/100 = 30 W,
    // constant; at instants outside node 1's span only node 0 counts (≤ 20 W).
    assert!(rel(sum.peak_watts, 30.0) < 1e-12, "{}", sum.peak_watts);
    // Window 0..1000; node 1 covers 900 ms of it.
    assert!(rel(sum.coverage(), 0.9) < 1e-12);
    assert!(sum.flags().contains(&"coverage-below-1".to_string()));
}

#[test]
fn gaps_are_reported_and_bridged() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = String::from(HEADER);
    for t in [0.0, 100.0, 200.0, 5200.0, 5300.0] {
        s += &row(t, 0, 10.0);
    }
    let p = write(&dir, "t.csv", &s);
    let sum = summarize(
        &p,
        &TraceOptions {
            gap_limit_ms: 1000.0,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(sum.gap_count, 1);
    assert_eq!(sum.gaps[0].node_id, 0);
    assert_eq!((sum.gaps[0].start_ms, sum.gaps[0].end_ms), (200.0, 5200.0));
    assert!(rel(sum.total_joules(), 53.0) < 1e-12); // 10 W × 5.3 s, bridged linearly
    assert!(rel(sum.coverage(), 300.0 / 5300.0) < 1e-12);
    assert!(sum.flags().contains(&"gaps".to_string()));
}

#[test]
fn node_blocked_files_give_the_same_results_as_interleaved_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut inter = String::from(HEADER);
    let mut blocked = String::from(HEADER);
    let mut per: Vec<String> = vec![String::new(); 3];
    for i in 0..200 {
        for n in 0..3u32 {
            let t = i as f64 * 20.0 + n as f64 * 7.0;
            let w = 5.0 + ((i * 7 + n as usize * 13) % 17) as f64;
            let r = row(t, n, w);
            inter += &r;
            per[n as usize] += &r;
        }
    }
    for p in &per {
        blocked += p;
    }
    let a = summarize(&write(&dir, "a.csv", &inter), &TraceOptions::default()).unwrap();
    let b = summarize(&write(&dir, "b.csv", &blocked), &TraceOptions::default()).unwrap();
    assert!(a.time_sorted && !b.time_sorted);
    assert_eq!(a.total_joules(), b.total_joules());
    assert_eq!(a.peak_watts, b.peak_watts);
    assert_eq!(a.peak_at_ms, b.peak_at_ms);
}

#[test]
fn block_boundaries_and_thread_counts_do_not_change_results() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = String::from(HEADER);
    for i in 0..20_000 {
        let t = i as f64 * 20.0;
        for n in 0..4u32 {
            let w = 8.0 + ((i * 31 + n as usize * 7) % 101) as f64 / 10.0;
            let _ = writeln!(s, "{t},{n},{w:.3},121.3,{:.4},0.997", w / 121.3);
        }
    }
    let p = write(&dir, "big.csv", &s);
    let one = summarize(
        &p,
        &TraceOptions {
            threads: 1,
            block_bytes: 1 << 30,
            ..Default::default()
        },
    )
    .unwrap();
    for (threads, block, mmap) in [
        (2, 4096, true),
        (3, 5000, false),
        (8, 65_536, true),
        (2, 7777, false),
        // Blocks larger than one positional read: lines cut between reads.
        (1, 1 << 30, false),
        (2, 1 << 20, false),
        (2, 300_001, false),
    ] {
        let other = summarize(
            &p,
            &TraceOptions {
                threads,
                block_bytes: block,
                mmap,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(other.samples, one.samples);
        assert!(rel(other.total_joules(), one.total_joules()) < 1e-12);
        assert_eq!(other.peak_watts, one.peak_watts);
        assert_eq!(
            other.channels.keys().collect::<Vec<_>>(),
            one.channels.keys().collect::<Vec<_>>()
        );
    }
    // And the streaming reader sees the same rows.
    let n = TraceReader::open(&p).unwrap().count();
    assert_eq!(n as u64, one.samples);
}

#[test]
fn crlf_bom_and_trailing_blank_lines_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let text = "\u{feff}timestamp_ms,node_id,watts_rms,volts_rms,amps_rms,power_factor\r\n0,0,1.0,120,0.01,1\r\n1000,0,3.0,120,0.03,1\r\n\r\n";
    let sum = summarize(&write(&dir, "t.csv", text), &TraceOptions::default()).unwrap();
    assert_eq!(sum.total_joules(), 2.0);
}

#[test]
fn optional_columns_and_counter_energy() {
    let dir = tempfile::tempdir().unwrap();
    let text = "timestamp_ms,node_id,watts_rms,volts_rms,amps_rms,power_factor,utc_ms,source_t_ms,energy_j\n\
                0,0,10,,,,1700000000000,5,100\n1000,0,10,,,,1700000001000,1005,110.5\n";
    let sum = summarize(&write(&dir, "t.csv", text), &TraceOptions::default()).unwrap();
    assert_eq!(sum.total_joules(), 10.0);
    assert_eq!(sum.counter_joules(), Some(10.5));
}

/// Runs `summarize` on `body` (after the standard header unless `raw`) and returns the error text.
fn reject(body: &str, raw: bool) -> String {
    let dir = tempfile::tempdir().unwrap();
    let text = if raw {
        body.to_string()
    } else {
        format!("{HEADER}{body}")
    };
    let p = write(&dir, "bad.csv", &text);
    let e = summarize(&p, &TraceOptions::default())
        .unwrap_err()
        .to_string();
    let name = p.display().to_string();
    assert!(e.starts_with(&name), "error does not name the file: {e}");
    e.replacen(&name, "bad.csv", 1)
}

#[test]
fn decreasing_timestamps_within_a_node_are_rejected() {
    let e = reject(
        "0,0,1,120,0.01,1\n1000,1,1,120,0.01,1\n2000,0,1,120,0.01,1\n1500,0,1,120,0.01,1\n",
        false,
    );
    assert!(
        e.starts_with(
            "bad.csv:5: timestamp_ms: 1500 is earlier than node 0's previous sample at 2000"
        ),
        "{e}"
    );
}

#[test]
fn nan_and_infinite_values_are_rejected() {
    let e = reject("0,0,NaN,120,0.01,1\n", false);
    assert!(
        e.starts_with("bad.csv:2: watts_rms: expected a finite number of watts"),
        "{e}"
    );
    let e = reject("0,0,1,120,0.01,1\n10,0,1,inf,0.01,1\n", false);
    assert!(
        e.starts_with("bad.csv:3: volts_rms: expected a finite number"),
        "{e}"
    );
    let e = reject("nan,0,1,120,0.01,1\n", false);
    assert!(
        e.starts_with("bad.csv:2: timestamp_ms: expected a time in milliseconds"),
        "{e}"
    );
}

#[test]
fn negative_watts_are_rejected() {
    let e = reject("0,0,1,120,0.01,1\n10,0,-0.5,120,0.01,1\n", false);
    assert!(
        e.starts_with("bad.csv:3: watts_rms: expected watts ≥ 0, found \"-0.5\""),
        "{e}"
    );
}

#[test]
fn power_factor_outside_unit_interval_is_rejected() {
    let e = reject("0,0,1,120,0.01,1.02\n", false);
    assert!(
        e.starts_with("bad.csv:2: power_factor: expected a power factor in [0, 1]"),
        "{e}"
    );
    let e = reject("0,0,1,120,0.01,-0.1\n", false);
    assert!(e.starts_with("bad.csv:2: power_factor:"), "{e}");
}

#[test]
fn unknown_columns_are_rejected() {
    let e = reject(
        "timestamp_ms,node_id,watts_rms,volts_rms,amps_rms,power_factor,temp_c\n0,0,1,1,1,1,30\n",
        true,
    );
    assert!(e.starts_with("bad.csv:1: column \"temp_c\": unknown column; expected the columns timestamp_ms,node_id"), "{e}");
}

#[test]
fn a_missing_header_is_rejected() {
    let e = reject("0,0,1,120,0.01,1\n", true);
    assert!(
        e.starts_with("bad.csv:1: header: missing header line (the first line is data)"),
        "{e}"
    );
    let e = reject("", true);
    assert!(
        e.starts_with("bad.csv:1: header: missing header line"),
        "{e}"
    );
    let e = reject("timestamp_ms,node_id,watts_rms\n0,0,1\n", true);
    assert!(
        e.starts_with("bad.csv:1: column \"volts_rms\": required column missing"),
        "{e}"
    );
}

#[test]
fn a_truncated_last_line_is_rejected() {
    let e = reject("0,0,1,120,0.01,1\n1000,0,1.2,120,0.0836,", false);
    assert!(
        e.starts_with("bad.csv:3: power_factor: empty field on the last line"),
        "{e}"
    );
    assert!(e.contains("truncated"), "{e}");
    let e = reject("0,0,1,120,0.01,1\n1000,0,1.2,12", false);
    assert!(e.starts_with("bad.csv:3: row: expected 6 fields"), "{e}");
    assert!(e.contains("truncated"), "{e}");
}

#[test]
fn other_malformed_fields_are_rejected() {
    let e = reject("0,zero,1,120,0.01,1\n", false);
    assert!(
        e.starts_with("bad.csv:2: node_id: expected a node index"),
        "{e}"
    );
    let e = reject("0,0,1,120,0.01,1,7\n", false);
    assert!(e.starts_with("bad.csv:2: row: expected 6 fields"), "{e}");
    let e = reject("0,0,1,120,-0.01,1\n", false);
    assert!(e.starts_with("bad.csv:2: amps_rms:"), "{e}");
}

#[test]
fn errors_deep_in_a_multi_block_file_name_the_right_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = String::from(HEADER);
    for i in 0..5000 {
        s += &row(i as f64 * 10.0, 0, 1.0);
    }
    s += "50000,0,1,120,0.01,7\n"; // line 5002
    for i in 0..100 {
        s += &row(50_010.0 + i as f64 * 10.0, 0, 1.0);
    }
    let p = write(&dir, "t.csv", &s);
    for (mmap, block) in [(true, 4096), (false, 4096), (false, 1 << 30)] {
        let e = summarize(
            &p,
            &TraceOptions {
                threads: 4,
                block_bytes: block,
                mmap,
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("t.csv:5002: power_factor"), "{e}");
    }
}

#[test]
fn blank_and_crlf_lines_between_positional_reads_are_handled() {
    // A file several reads long, with CRLF rows and blank lines scattered through it, and an error
    // far into it: every layout of blocks and reads gives the same results and the same line.
    let dir = tempfile::tempdir().unwrap();
    let mut s = String::from(HEADER);
    let mut line = 1;
    for i in 0..30_000 {
        let t = i as f64 * 20.0;
        for n in 0..3u32 {
            let w = 5.0 + ((i * 13 + n as usize * 5) % 97) as f64 / 10.0;
            if i % 997 == n as usize {
                s += "\r\n";
                line += 1;
            }
            if i % 1231 == 0 {
                s += &format!("{t},{n},{w:.3},121.3,0.05,0.997\r\n");
            } else {
                s += &row(t, n, w);
            }
            line += 1;
        }
    }
    let good = write(&dir, "good.csv", &s);
    let bad_line = line + 1;
    s += "600000,0,-1,121.3,0.05,0.997\n";
    let bad = write(&dir, "bad.csv", &s);
    let one = summarize(
        &good,
        &TraceOptions {
            threads: 1,
            block_bytes: 1 << 30,
            mmap: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(one.samples, 90_000);
    for (threads, block, mmap) in [(1, 1 << 30, false), (2, 1 << 20, false), (2, 4 << 20, true)] {
        let opts = TraceOptions {
            threads,
            block_bytes: block,
            mmap,
            ..Default::default()
        };
        let other = summarize(&good, &opts).unwrap();
        assert_eq!(other.samples, one.samples);
        assert!(rel(other.total_joules(), one.total_joules()) < 1e-12);
        assert_eq!(
            (other.peak_watts, other.peak_at_ms),
            (one.peak_watts, one.peak_at_ms)
        );
        let e = summarize(&bad, &opts).unwrap_err().to_string();
        assert!(e.contains(&format!("bad.csv:{bad_line}: watts_rms")), "{e}");
    }
}

/// [`summarize`] with these options (the rest default); panics on an error.
fn summarize_with(
    p: &std::path::Path,
    gap_limit_ms: f64,
    threads: usize,
    block_bytes: usize,
    mmap: bool,
) -> TraceSummary {
    let opts = TraceOptions {
        gap_limit_ms,
        threads,
        block_bytes,
        mmap,
        ..Default::default()
    };
    summarize(p, &opts).unwrap()
}

#[test]
fn block_local_peaks_agree_with_a_whole_file_sweep() {
    // Three nodes at different offsets, one of which stops early and one with a gap; blocks long
    // compared with the gap limit, so workers evaluate interior instants themselves.
    let dir = tempfile::tempdir().unwrap();
    let mut s = String::from(HEADER);
    let mut x: u64 = 99;
    for i in 0..6000u64 {
        for n in 0..3u32 {
            let t = i as f64 * 20.0 + n as f64 * 6.5;
            if n == 2 && i > 4000 {
                continue; // node 2 stops
            }
            if n == 1 && (2000..2010).contains(&i) {
                continue; // node 1 has a 200 ms gap
            }
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let w = 5.0 + ((x >> 40) % 1000) as f64 / 37.0;
            s += &row(t, n, w);
        }
    }
    let p = write(&dir, "t.csv", &s);
    let names: BTreeMap<u32, ChannelSummary> = [0u32, 1, 2]
        .into_iter()
        .map(|n| {
            (
                n,
                ChannelSummary {
                    samples: 0,
                    first_ms: 0.0,
                    last_ms: 0.0,
                    joules: 0.0,
                    covered_ms: 0.0,
                    gaps: 0,
                    max_interval_ms: 0.0,
                    peak_watts: 0.0,
                    counter_joules: None,
                },
            )
        })
        .collect();
    for gap in [50.0, 150.0] {
        let reference = super::summarize::peak_by_merge_for_tests(&p, &names, gap).unwrap();
        for (threads, block, mmap) in [
            (1, 1 << 30, true),
            (2, 4096, false),
            (4, 9000, true),
            (3, 30_000, false),
        ] {
            let sum = summarize_with(&p, gap, threads, block, mmap);
            assert_eq!(
                (sum.peak_watts, sum.peak_at_ms),
                reference,
                "gap {gap} threads {threads} block {block}"
            );
            assert!(sum.time_sorted);
        }
    }
}

/// Per-channel sums computed row by row from the streaming reader, the
/// plainest way: the reference for [`every_path_agrees_with_a_row_by_row_reference`].
fn row_by_row(path: &std::path::Path, gap: f64) -> BTreeMap<u32, ChannelSummary> {
    let mut out: BTreeMap<u32, ChannelSummary> = BTreeMap::new();
    let mut last_w: BTreeMap<u32, f64> = BTreeMap::new();
    for r in TraceReader::open(path).unwrap() {
        let (_, r) = r.unwrap();
        let c = out.entry(r.node).or_insert(ChannelSummary {
            samples: 0,
            first_ms: r.t_ms,
            last_ms: r.t_ms,
            joules: 0.0,
            covered_ms: 0.0,
            gaps: 0,
            max_interval_ms: 0.0,
            peak_watts: r.watts,
            counter_joules: None,
        });
        if let Some(&lw) = last_w.get(&r.node) {
            let dt = r.t_ms - c.last_ms;
            c.joules += dt * (r.watts + lw) / 2000.0;
            if dt > gap {
                c.gaps += 1;
            } else {
                c.covered_ms += dt;
            }
            c.max_interval_ms = c.max_interval_ms.max(dt);
        }
        c.samples += 1;
        c.last_ms = r.t_ms;
        c.peak_watts = c.peak_watts.max(r.watts);
        last_w.insert(r.node, r.watts);
    }
    out
}

/// A trace in phases (`phases`, `instants` each) that each take rows off the common path in
/// another way: 1 nodes sampled at different instants, 2 gaps, 3 duplicate timestamps, 5 lines
/// only the general parser reads (CRLF, long fields), 6 more than 64 channels and a node id beyond
/// the dense table; any other number is the common case. Phase `high` has higher watts, so that
/// the cluster peak is found there.
fn paths_trace(phases: &[u32], instants: u32, high: u32) -> String {
    let mut s = String::from(HEADER);
    let mut x: u64 = 5;
    let mut rnd = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) as f64 / (1u64 << 31) as f64
    };
    let mut t = 0.0;
    for &phase in phases {
        let boost = if phase == high { 5.0 } else { 0.0 };
        // Whole thousandths, divided last: at most three decimals when printed.
        let w = |r: f64| ((r * 20_000.0).round() + boost * 1000.0) / 1000.0;
        for i in 0..instants {
            t += 20.0;
            match phase {
                1 => {
                    for n in 0..4u32 {
                        s += &row(t + f64::from(n) * 3.0, n, w(rnd()));
                    }
                    t += 10.0;
                }
                2 if i % 500 < 70 => s += &row(t, 0, w(rnd())), // nodes 1..3 silent > 1 s
                3 if i % 97 == 0 => {
                    for n in 0..4u32 {
                        s += &row(t, n, w(rnd()));
                    }
                    s += &row(t, 2, w(rnd())); // node 2 twice at one instant
                }
                5 if i % 13 == 0 => {
                    for n in 0..4u32 {
                        s += &row(t, n, w(rnd())).replace('\n', "\r\n");
                    }
                    s += &format!("{t},1,{:.14},230.0,0.05,0.99\n", w(rnd()) + 1.0);
                }
                6 => {
                    for n in 0..70u32 {
                        s += &row(t, if n == 69 { 5000 } else { n }, w(rnd()) / 100.0);
                    }
                }
                _ => {
                    for n in 0..4u32 {
                        s += &row(t, n, w(rnd()));
                    }
                }
            }
        }
    }
    s
}

#[test]
fn every_path_agrees_with_a_row_by_row_reference() {
    let dir = tempfile::tempdir().unwrap();
    // Each unusual phase on its own between runs of the common case, with the peak in it; then
    // all of them in one trace with the peak in the common case; then the wide one.
    let mut traces: Vec<PathBuf> = [1, 2, 3, 5]
        .iter()
        .map(|&k| {
            write(
                &dir,
                &format!("phase{k}.csv"),
                &paths_trace(&[0, k, 0], 300, k),
            )
        })
        .collect();
    let all = [0, 1, 2, 3, 4, 5, 7];
    traces.push(write(&dir, "all.csv", &paths_trace(&all, 1500, 7)));
    traces.push(write(&dir, "wide.csv", &paths_trace(&[0, 6, 0], 300, 0)));
    // Every line parser this CPU has. (Other tests running meanwhile may get the parser set
    // here: all give the same results, which is the point.)
    use super::summarize::{LineParser, LINE_PARSER_FOR_TESTS};
    for parser in [LineParser::Portable, LineParser::Avx2, LineParser::Avx512] {
        LINE_PARSER_FOR_TESTS.store(parser as u8, std::sync::atomic::Ordering::Relaxed);
        every_path_with(&traces, parser);
    }
    LINE_PARSER_FOR_TESTS.store(
        LineParser::Avx512 as u8,
        std::sync::atomic::Ordering::Relaxed,
    );
}

fn every_path_with(traces: &[PathBuf], parser: super::summarize::LineParser) {
    for (p, gap) in traces.iter().flat_map(|p| [(p, 1000.0), (p, 150.0)]) {
        let reference = row_by_row(p, gap);
        let peak_reference = super::summarize::peak_by_merge_for_tests(p, &reference, gap).unwrap();
        for (threads, block, mmap) in [
            (1, 1 << 30, false),
            (2, 1 << 20, false),
            (2, 50_000, true),
            (3, 8192, false),
        ] {
            let got = summarize_with(p, gap, threads, block, mmap);
            let what = format!(
                "{parser:?}: {} gap {gap} threads {threads} block {block}",
                p.display()
            );
            assert_eq!(
                got.channels.keys().collect::<Vec<_>>(),
                reference.keys().collect::<Vec<_>>(),
                "{what}"
            );
            for (node, want) in &reference {
                let have = &got.channels[node];
                assert_eq!(
                    (have.samples, have.first_ms, have.last_ms, have.gaps),
                    (want.samples, want.first_ms, want.last_ms, want.gaps),
                    "{what} node {node}"
                );
                assert_eq!(
                    (have.max_interval_ms, have.peak_watts),
                    (want.max_interval_ms, want.peak_watts),
                    "{what} node {node}"
                );
                assert!(rel(have.joules, want.joules) < 1e-12, "{what} node {node}");
                assert!(
                    rel(have.covered_ms, want.covered_ms) < 1e-12,
                    "{what} node {node}"
                );
            }
            assert_eq!((got.peak_watts, got.peak_at_ms), peak_reference, "{what}");
            assert!(got.time_sorted, "{what}");
        }
    }
}
