//! Target `trace_csv`: the trace CSV reader ([`summarize`]) with each line parser (portable, AVX2,
//! AVX-512, those the CPU has) and several block/read settings, against an oracle built on the
//! plain row-by-row reader ([`TraceReader`]): the same error (file, line, field and message) or the
//! same results — samples, per-channel sums, gaps, window, order — with energies to 1e-9 relative
//! and the cluster peak to 1e-9 of the watts summed at that instant.
//!
//! Input: one options byte, then the file's bytes. Options: bits 0–2 pick the gap limit; bit 3
//! puts 128 KiB of blank lines before the data (less bits 6–7 × 2 KiB), so that lines are cut
//! between the reader's 128 KiB positional reads. Each parser reads the file in one block with
//! positional reads, and with a second setting picked by bits 4–5: one block through a memory map,
//! or several threads with small blocks (4 KiB and up), through reads or a memory map.

use crate::support::{close, ScratchFile};
use epi_framework::error::{Error, InputError};
use epi_framework::result::Gap;
use epi_framework::trace::fuzzing::{available, set_line_parser, LineParser};
use epi_framework::trace::{summarize, summarize_window, TraceOptions, TraceReader, TraceSummary};
use std::collections::BTreeMap;
use std::path::Path;

const GAP_LIMITS: [f64; 8] = [1000.0, 150.0, 20.0, 1.0, 0.0, f64::INFINITY, 1000.0, 5000.0];

/// Bytes per positional read of the block reader (`summarize.rs` `READ_PIECE`).
const READ_PIECE: usize = 128 << 10;

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&opts, body)) = data.split_first() else {
        return;
    };
    let gap = GAP_LIMITS[usize::from(opts & 7)];
    let mut file = Vec::with_capacity(body.len() + READ_PIECE);
    let padded = opts & 8 != 0;
    if padded {
        // Blank lines after the header, so that the data straddles the first read's end.
        let (header, rest) = match body.iter().position(|&b| b == b'\n') {
            Some(p) => body.split_at(p + 1),
            None => return, // the padding would be part of the header
        };
        file.extend_from_slice(header);
        let blank = READ_PIECE.saturating_sub(usize::from(opts >> 6) * 2048 + header.len());
        file.resize(file.len() + blank, b'\n');
        file.extend_from_slice(rest);
    } else {
        file.extend_from_slice(body);
    }
    let f = ScratchFile::with("trace.csv", &file);
    let expected = oracle(&f.0, gap);
    // (threads, block bytes, memory map): the plain one-block read, and one more.
    let more: [(usize, usize, bool); 4] = if padded {
        [
            (1, 1 << 30, true),
            (2, 1 << 16, false),
            (3, 1 << 15, true),
            (2, 100_000, false),
        ]
    } else {
        [
            (1, 1 << 30, true),
            (2, 4096, false),
            (3, 4096, true),
            (2, 5000, false),
        ]
    };
    let settings = [(1, 1 << 30, false), more[usize::from((opts >> 4) & 3)]];
    for parser in LineParser::ALL {
        if !available(parser) {
            continue;
        }
        set_line_parser(parser);
        for &(threads, block_bytes, mmap) in &settings {
            let opts = TraceOptions {
                gap_limit_ms: gap,
                threads,
                block_bytes,
                mmap,
                max_gaps_listed: 100,
            };
            let got = summarize(&f.0, &opts);
            let what =
                format!("{parser:?} threads {threads} block {block_bytes} mmap {mmap} gap {gap}");
            check(&what, &expected, got, gap);
        }
    }
    set_line_parser(LineParser::Avx512);
    check_window(&f.0, &expected, gap);
}

/// The windowed reader (`summarize_window`, what `epi calculate` uses when a benchmark names its
/// energy window) over the whole span of the trace: it reads the same file, so it must refuse
/// what the full reader refuses (same line and field) and otherwise find the same energy per
/// channel.
fn check_window(path: &Path, expected: &Expected, gap: f64) {
    let span = match expected {
        Expected::Summary(o) if o.end_ms > o.start_ms => Some((o.start_ms, o.end_ms)),
        Expected::Summary(_) => return, // no span: nothing to integrate over
        // The full reader's own limit (it takes the header from the first 4 KiB).
        Expected::Refused {
            field: "header", ..
        } => return,
        _ => None,
    };
    let got = summarize_window(path, span.unwrap_or((0.0, 1.0)), gap, 100);
    let what = format!("summarize_window gap {gap}");
    match (expected, got) {
        (Expected::Summary(o), Ok(s)) => {
            for (node, want) in &o.channels {
                let have = s
                    .channels
                    .get(node)
                    .unwrap_or_else(|| panic!("{what}: node {node} missing"));
                assert!(
                    close(have.joules, want.joules, 1e-9, 1e-12),
                    "{what}: node {node}: {} J, the row-by-row sum is {} J",
                    have.joules,
                    want.joules
                );
            }
        }
        (Expected::Summary(_), Err(e)) => {
            panic!("{what}: refused a trace the full reader reads: {e}")
        }
        (Expected::Error(want), Err(Error::Input(have))) => {
            assert_eq!(
                &have, want,
                "{what}: a different error than the row-by-row reader's"
            )
        }
        (Expected::Refused { line, field }, Err(Error::Input(have))) => assert_eq!(
            (have.location.line, have.location.field.as_deref()),
            (Some(*line), Some(*field)),
            "{what}: refused at a different place: {have}"
        ),
        (want, got) => panic!("{what}: expected {want:?}, got {got:?}"),
    }
}

/// What the oracle expects: an input error, or these results.
#[derive(Debug)]
enum Expected {
    Error(InputError),
    /// An error the oracle finds itself (line and field; the message is the reader's own).
    Refused {
        line: u64,
        field: &'static str,
    },
    Summary(Box<Oracle>),
}

/// Per-channel sums, the plainest way.
#[derive(Debug, Clone)]
struct Channel {
    samples: u64,
    first_ms: f64,
    last_ms: f64,
    last_w: f64,
    joules: f64,
    covered_ms: f64,
    gaps: u64,
    max_interval_ms: f64,
    peak_watts: f64,
    counter_all: bool,
    first_e: Option<f64>,
    last_e: Option<f64>,
    /// Every sample, in file order.
    rows: Vec<(f64, f64)>,
}

#[derive(Debug)]
struct Oracle {
    columns: Vec<String>,
    samples: u64,
    channels: BTreeMap<u32, Channel>,
    start_ms: f64,
    end_ms: f64,
    gaps: Vec<Gap>,
    time_sorted: bool,
}

fn oracle(path: &Path, gap: f64) -> Expected {
    // The block reader takes the header from the file's first 4 KiB.
    let head = std::fs::read(path).unwrap_or_default();
    let head_len = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    if head_len >= 4096 && head.len() > 4096 {
        return Expected::Refused {
            line: 1,
            field: "header",
        };
    }
    let mut reader = match TraceReader::open(path) {
        Ok(r) => r,
        Err(Error::Input(e)) => return Expected::Error(e),
        Err(e) => panic!("oracle: {e}"),
    };
    let columns = reader.header().names.clone();
    let mut o = Oracle {
        columns,
        samples: 0,
        channels: BTreeMap::new(),
        start_ms: f64::INFINITY,
        end_ms: f64::NEG_INFINITY,
        gaps: Vec::new(),
        time_sorted: true,
    };
    let mut prev_t = f64::NEG_INFINITY;
    loop {
        let (line, r) = match reader.next_row() {
            Ok(Some(x)) => x,
            Ok(None) => break,
            Err(Error::Input(e)) => return Expected::Error(e),
            Err(e) => panic!("oracle: {e}"),
        };
        let e = r.energy_j;
        match o.channels.get_mut(&r.node) {
            None => {
                o.channels.insert(
                    r.node,
                    Channel {
                        samples: 1,
                        first_ms: r.t_ms,
                        last_ms: r.t_ms,
                        last_w: r.watts,
                        joules: 0.0,
                        covered_ms: 0.0,
                        gaps: 0,
                        max_interval_ms: 0.0,
                        peak_watts: r.watts,
                        counter_all: e.is_some(),
                        first_e: e,
                        last_e: e,
                        rows: vec![(r.t_ms, r.watts)],
                    },
                );
            }
            Some(c) => {
                let dt = r.t_ms - c.last_ms;
                if dt < 0.0 {
                    return Expected::Refused {
                        line,
                        field: "timestamp_ms",
                    };
                }
                // The energy counter never decreases between two consecutive rows of a node
                // that both carry it (whatever came before); it is the channel's counter energy
                // only when every row carries it.
                if let (Some(e0), Some(e1)) = (c.last_e, e) {
                    if e1 < e0 {
                        return Expected::Refused {
                            line,
                            field: "energy_j",
                        };
                    }
                }
                c.counter_all &= e.is_some();
                c.last_e = e;
                c.joules += dt * (r.watts + c.last_w) / 2000.0;
                if dt > gap {
                    c.gaps += 1;
                    o.gaps.push(Gap {
                        node_id: r.node,
                        start_ms: c.last_ms,
                        end_ms: r.t_ms,
                    });
                } else {
                    c.covered_ms += dt;
                }
                c.max_interval_ms = c.max_interval_ms.max(dt);
                c.peak_watts = c.peak_watts.max(r.watts);
                c.samples += 1;
                c.last_ms = r.t_ms;
                c.last_w = r.watts;
                c.rows.push((r.t_ms, r.watts));
            }
        }
        if r.t_ms < prev_t {
            o.time_sorted = false;
        }
        prev_t = r.t_ms;
        o.samples += 1;
        o.start_ms = o.start_ms.min(r.t_ms);
        o.end_ms = o.end_ms.max(r.t_ms);
    }
    if o.samples == 0 {
        o.start_ms = 0.0;
        o.end_ms = 0.0;
    }
    Expected::Summary(Box::new(o))
}

/// The cluster power at every sample instant, the plainest way: `(instant, watts, Σ|terms|)`.
///
/// A channel sampled at the instant contributes its last sample there; one that is not contributes
/// the linear interpolation between its last sample before and its first sample after, if those are
/// no further apart than the gap limit; otherwise (before its first sample, after its last, in a
/// gap) nothing.
fn cluster_power(o: &Oracle, gap: f64) -> Vec<(f64, f64, f64)> {
    let mut instants: Vec<f64> = o
        .channels
        .values()
        .flat_map(|c| c.rows.iter().map(|r| r.0))
        .collect();
    instants.sort_by(f64::total_cmp);
    instants.dedup();
    instants
        .into_iter()
        .map(|t| {
            let (mut sum, mut scale) = (0.0, 0.0);
            for c in o.channels.values() {
                let rows = &c.rows;
                let at = rows.partition_point(|r| r.0 < t);
                let upto = rows.partition_point(|r| r.0 <= t);
                if upto > at {
                    let w = rows[upto - 1].1;
                    sum += w;
                    scale += rows[at..upto].iter().map(|r| r.1.abs()).sum::<f64>();
                } else if at > 0 && at < rows.len() {
                    let (t0, w0) = rows[at - 1];
                    let (t1, w1) = rows[at];
                    if t1 - t0 <= gap && t1 > t0 {
                        let w = w0 + (w1 - w0) * (t - t0) / (t1 - t0);
                        sum += w;
                        scale += w0.abs().max(w1.abs());
                    }
                }
            }
            (t, sum, scale)
        })
        .collect()
}

fn check(what: &str, expected: &Expected, got: Result<TraceSummary, Error>, gap: f64) {
    match (expected, got) {
        (Expected::Error(want), Err(Error::Input(have))) => {
            assert_eq!(
                &have, want,
                "{what}: a different error than the row-by-row reader's"
            );
        }
        (Expected::Refused { line, field }, Err(Error::Input(have))) => {
            assert_eq!(
                (have.location.line, have.location.field.as_deref()),
                (Some(*line), Some(*field)),
                "{what}: refused at a different place: {have}"
            );
        }
        (Expected::Summary(o), Ok(s)) => check_summary(what, o, &s, gap),
        (want, got) => panic!("{what}: expected {want:?}, got {got:?}"),
    }
}

fn check_summary(what: &str, o: &Oracle, s: &TraceSummary, gap: f64) {
    assert_eq!(s.columns, o.columns, "{what}: columns");
    assert_eq!(s.samples, o.samples, "{what}: samples");
    assert_eq!(
        s.channels.keys().collect::<Vec<_>>(),
        o.channels.keys().collect::<Vec<_>>(),
        "{what}: channels"
    );
    for (node, want) in &o.channels {
        let have = &s.channels[node];
        assert_eq!(
            (have.samples, have.first_ms, have.last_ms, have.gaps),
            (want.samples, want.first_ms, want.last_ms, want.gaps),
            "{what}: node {node}: samples, first, last, gaps"
        );
        assert_eq!(
            (have.max_interval_ms, have.peak_watts),
            (want.max_interval_ms, want.peak_watts),
            "{what}: node {node}: largest interval, peak"
        );
        assert!(
            close(have.joules, want.joules, 1e-9, 0.0),
            "{what}: node {node}: {} J, the row-by-row sum is {} J",
            have.joules,
            want.joules
        );
        assert!(
            close(have.covered_ms, want.covered_ms, 1e-9, 0.0),
            "{what}: node {node}: covered {} ms, row by row {} ms",
            have.covered_ms,
            want.covered_ms
        );
        let counter = if want.counter_all {
            match (want.first_e, want.last_e) {
                (Some(a), Some(b)) => Some(b - a),
                _ => None,
            }
        } else {
            None
        };
        assert!(
            have.counter_joules == counter
                || matches!((have.counter_joules, counter), (Some(a), Some(b)) if a.is_nan() && b.is_nan()),
            "{what}: node {node}: counter {:?} J, row by row {counter:?}",
            have.counter_joules
        );
    }
    assert_eq!(
        (s.start_ms, s.end_ms),
        (o.start_ms, o.end_ms),
        "{what}: window"
    );
    assert_eq!(s.time_sorted, o.time_sorted, "{what}: time order");
    assert_eq!(s.gap_count, o.gaps.len() as u64, "{what}: gap count");
    assert_eq!(s.gap_limit_ms.to_bits(), gap.to_bits(), "{what}: gap limit");
    let key = |g: &Gap| (g.node_id, g.start_ms.to_bits(), g.end_ms.to_bits());
    let mut want: Vec<_> = o.gaps.iter().map(key).collect();
    want.sort_unstable();
    let mut have: Vec<_> = s.gaps.iter().map(key).collect();
    have.sort_unstable();
    if o.gaps.len() <= 100 {
        assert_eq!(have, want, "{what}: gaps listed");
    } else {
        assert_eq!(have.len(), 100, "{what}: gaps listed");
        assert!(
            have.iter().all(|g| want.binary_search(g).is_ok()),
            "{what}: a listed gap that is not one"
        );
    }
    // The cluster peak: the largest power over sample instants (the earliest of equal ones), to
    // 1e-9 of the watts summed there (the order of the additions differs), at an instant whose
    // power is that large.
    let power = cluster_power(o, gap);
    let Some(best) = power.iter().fold(None::<&(f64, f64, f64)>, |b, p| match b {
        // As the reader keeps its best: a later instant replaces it only when strictly larger
        // (so a NaN first stays, as it does there).
        Some(b) if p.1.partial_cmp(&b.1) != Some(std::cmp::Ordering::Greater) => Some(b),
        _ => Some(p),
    }) else {
        assert_eq!(
            (s.peak_watts, s.peak_at_ms),
            (0.0, 0.0),
            "{what}: peak of no samples"
        );
        return;
    };
    let tol = power.iter().map(|p| p.2).fold(0.0, f64::max) * 1e-9;
    assert!(
        close(s.peak_watts, best.1, 0.0, tol),
        "{what}: peak {} W, the largest cluster power is {} W (at {} ms)",
        s.peak_watts,
        best.1,
        best.0
    );
    let at = power
        .iter()
        .find(|p| p.0 == s.peak_at_ms)
        .unwrap_or_else(|| panic!("{what}: peak at {} ms, not a sample instant", s.peak_at_ms));
    assert!(
        close(at.1, best.1, 0.0, tol),
        "{what}: peak at {} ms where the cluster power is {} W, not the largest {} W (at {} ms)",
        s.peak_at_ms,
        at.1,
        best.1,
        best.0
    );
}
