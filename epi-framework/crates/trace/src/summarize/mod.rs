//! Streaming energy integration of a trace CSV (`measurement-methodology.md` §2).
//!
//! The file is cut into fixed-size blocks that worker threads read (with positional reads, so no
//! block is shared) and parse in parallel; one consumer takes the parsed blocks back in file order
//! and integrates them. At most a few blocks are in flight, so memory does not grow with the size
//! of the trace. Every interval's energy, coverage and gap status comes from the energy kernel
//! (`epi_core::energy::kernel`), here as everywhere else.
//!
//! - this module: the options and the summary types, and the driver ([`summarize`]): workers,
//!   in-flight limit, blocks merged in order;
//! - `read`: one block's bytes (positional reads in pieces, or `mmap`), handed to
//! - `lines`: the line loop (portable / AVX2 / AVX-512 canonical-line parsers, general parser);
//! - `integrator`: each row through the kernel, per row or in the steady fast path;
//! - `merge`: blocks joined in file order, the summary assembled;
//! - `peak`: the cluster peak power (streaming sweep, and the second pass for unsorted files).
//!
//! Errors name the file, line and field (input), or the file (I/O).

use crate::parse::Header;
use epi_core::energy::ChannelIntegral;
use epi_core::error::{Error, InputError, Location};
use epi_core::result::Gap;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Condvar, Mutex};

mod integrator;
mod lines;
mod merge;
mod mmap;
mod peak;
mod read;

#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use lines::{LineParser, LINE_PARSER_FOR_TESTS};
#[cfg(test)]
pub(crate) use peak::peak_by_merge_for_tests;

use merge::Merger;
use mmap::Mapping;
use read::{process_block, Scratch};

/// Options of trace integration.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceOptions {
    /// Two consecutive samples of a channel further apart than this (ms) are a gap: reported, and
    /// not counted as covered (the trapezoid still bridges it).
    pub gap_limit_ms: f64,
    /// Worker threads for parsing (0: one per available core).
    pub threads: usize,
    /// Bytes per block.
    pub block_bytes: usize,
    /// Gaps listed individually (all are counted).
    pub max_gaps_listed: usize,
    /// Read through a memory map when the input allows it, instead of positional reads in
    /// pieces of 128 KiB (about as fast; the reads keep the resident memory lower).
    pub mmap: bool,
}

impl Default for TraceOptions {
    fn default() -> Self {
        TraceOptions {
            gap_limit_ms: 1000.0,
            threads: 0,
            block_bytes: 4 << 20,
            max_gaps_listed: 100,
            mmap: false,
        }
    }
}

/// Per-channel results.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelSummary {
    /// Samples.
    pub samples: u64,
    /// First timestamp, ms.
    pub first_ms: f64,
    /// Last timestamp, ms.
    pub last_ms: f64,
    /// Trapezoidal energy, J.
    pub joules: f64,
    /// Time between consecutive samples closer than the gap limit, ms.
    pub covered_ms: f64,
    /// Gaps.
    pub gaps: u64,
    /// Largest spacing between samples, ms.
    pub max_interval_ms: f64,
    /// Highest watts of this channel.
    pub peak_watts: f64,
    /// Counter energy (last − first of `energy_j`), J, when the column is present for this channel.
    pub counter_joules: Option<f64>,
}

/// The integrated summary of a trace file.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSummary {
    /// The file.
    pub path: PathBuf,
    /// Column names of the header.
    pub columns: Vec<String>,
    /// Data rows.
    pub samples: u64,
    /// Per channel, by node id.
    pub channels: BTreeMap<u32, ChannelSummary>,
    /// Earliest timestamp, ms.
    pub start_ms: f64,
    /// Latest timestamp, ms.
    pub end_ms: f64,
    /// Highest cluster power at a sample instant, W (channels not sampled at that instant are
    /// interpolated; a channel inside a gap, or outside its own span, does not contribute).
    pub peak_watts: f64,
    /// When the peak was, ms.
    pub peak_at_ms: f64,
    /// Gaps (the first `max_gaps_listed`).
    pub gaps: Vec<Gap>,
    /// All gaps.
    pub gap_count: u64,
    /// The gap limit used, ms.
    pub gap_limit_ms: f64,
    /// Whether rows were in global time order (if not, the peak needed a second pass).
    pub time_sorted: bool,
}

impl TraceSummary {
    /// Window length, s.
    pub fn duration_seconds(&self) -> f64 {
        if self.samples == 0 {
            0.0
        } else {
            (self.end_ms - self.start_ms) / 1000.0
        }
    }
    /// Cluster energy, J (sum over channels).
    pub fn total_joules(&self) -> f64 {
        self.channels.values().map(|c| c.joules).sum()
    }
    /// Mean cluster power, W.
    pub fn avg_watts(&self) -> f64 {
        let d = self.duration_seconds();
        if d > 0.0 {
            self.total_joules() / d
        } else {
            0.0
        }
    }
    /// Energy in kWh.
    pub fn kwh(&self) -> f64 {
        self.total_joules() / 3.6e6
    }
    /// Coverage: the smallest share, over channels, of the window that lies between two samples
    /// closer than the gap limit.
    pub fn coverage(&self) -> f64 {
        let window = self.end_ms - self.start_ms;
        if window <= 0.0 {
            return 0.0;
        }
        self.channels
            .values()
            .map(|c| c.covered_ms / window)
            .fold(f64::INFINITY, f64::min)
            .min(1.0)
    }
    /// Counter energy summed over channels, when every channel has a counter.
    pub fn counter_joules(&self) -> Option<f64> {
        self.channels.values().map(|c| c.counter_joules).sum()
    }
    /// Observed sample rate per channel, Hz (median-free estimate: samples over span).
    pub fn sample_rate_hz(&self) -> Option<f64> {
        let rates: Vec<f64> = self
            .channels
            .values()
            .filter(|c| c.samples > 1 && c.last_ms > c.first_ms)
            .map(|c| (c.samples - 1) as f64 / ((c.last_ms - c.first_ms) / 1000.0))
            .collect();
        if rates.is_empty() {
            None
        } else {
            Some(rates.iter().sum::<f64>() / rates.len() as f64)
        }
    }
    /// Quality flags of `measurement-methodology.md` §1.
    pub fn flags(&self) -> Vec<String> {
        let mut f = Vec::new();
        if self.coverage() < 1.0 {
            f.push("coverage-below-1".to_string());
        }
        if self.gap_count > 0 {
            f.push("gaps".to_string());
        }
        if self.channels.values().any(|c| c.samples < 2) {
            f.push("channel-with-fewer-than-2-samples".to_string());
        }
        f
    }
}

/// A parsed row as the integrator needs it.
#[derive(Clone, Copy, Debug)]
struct Rec {
    t: f64,
    w: f64,
    e: f64, // NaN when absent
    node: u32,
}

/// One channel's results within one block.
#[derive(Clone, Debug)]
struct NodePart {
    node: u32,
    first: Rec,
    /// Line of the channel's first row, within the block.
    first_line: u64,
    last: Rec,
    samples: u64,
    /// Energy (in the kernel's accumulation form), covered time, gaps, longest interval.
    sum: ChannelIntegral,
    gap_list: Vec<Gap>,
    peak_w: f64,
    counter_all: bool,
}

/// What a worker returns for one block.
struct Block {
    index: usize,
    /// Lines owned by the block (data and blank).
    lines: u64,
    /// First error by line index within the block: (line index, field, message).
    error: Option<(u64, String, String)>,
    io_error: Option<std::io::Error>,
    rows: u64,
    parts: Vec<NodePart>,
    first_t: f64,
    last_t: f64,
    min_t: f64,
    max_t: f64,
    sorted: bool,
    /// Peak over the block's interior instants (exact there), with its time.
    local_peak: Option<(f64, f64)>,
    /// Records the merger needs for instants near the block's edges (all records of a short block).
    boundary: Vec<Rec>,
}

impl Block {
    fn empty(index: usize) -> Block {
        Block {
            index,
            lines: 0,
            error: None,
            io_error: None,
            rows: 0,
            parts: Vec::new(),
            first_t: f64::NAN,
            last_t: f64::NAN,
            min_t: f64::INFINITY,
            max_t: f64::NEG_INFINITY,
            sorted: true,
            local_peak: None,
            boundary: Vec::new(),
        }
    }

    fn set_error(&mut self, line_idx: u64, field: impl Into<String>, msg: impl Into<String>) {
        if self.error.as_ref().is_none_or(|(l, _, _)| line_idx < *l) {
            self.error = Some((line_idx, field.into(), msg.into()));
        }
    }
}

/// Integrates a trace CSV file. Errors name the file, line and field.
///
/// Workers parse blocks and integrate each block's interior themselves; the consumer only joins
/// neighbouring blocks (one trapezoid per channel per block boundary) and evaluates the cluster
/// power at instants near block edges from the few records each block hands over.
pub fn summarize(path: &Path, opts: &TraceOptions) -> Result<TraceSummary, Error> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut head = vec![0u8; 4096.min(len as usize)];
    file.read_exact_at(&mut head, 0)
        .map_err(|e| Error::io(path, e))?;
    let header_end = match memchr::memchr(b'\n', &head) {
        Some(p) => p,
        None if (len as usize) <= head.len() => head.len(),
        None => {
            return Err(InputError::new(
                Location::file(path).at_line(1).field("header"),
                "header line longer than 4096 bytes",
            )
            .into())
        }
    };
    let header = Header::parse(path, &head[..header_end])?;
    let data_start = (header_end as u64 + 1).min(len);

    let threads = if opts.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        opts.threads
    }
    .clamp(1, 16);
    let block = opts.block_bytes.max(4096) as u64;
    let n_blocks = (len - data_start).div_ceil(block) as usize;
    let gap_limit = opts.gap_limit_ms;

    let mapping = if opts.mmap {
        Mapping::new(&file, len)
    } else {
        None
    };
    let mut merger = Merger::new(path, opts);
    let in_flight_limit = threads * 2 + 1;
    let gate = (Mutex::new((0usize, 0usize)), Condvar::new()); // (next to hand out, consumed)
    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel::<Block>();

    let result: Result<(), Error> = std::thread::scope(|s| {
        for _ in 0..threads {
            let tx = tx.clone();
            let (gate, stop, file, header) = (&gate, &stop, &file, &header);
            let mapping = mapping.as_ref();
            let max_gaps = opts.max_gaps_listed;
            s.spawn(move || {
                let mut scratch = Scratch::default();
                loop {
                    let index = {
                        let (lock, cv) = gate;
                        let mut g = lock.lock().unwrap_or_else(|p| p.into_inner());
                        while g.0 < n_blocks
                            && g.0 >= g.1 + in_flight_limit
                            && !stop.load(Ordering::Relaxed)
                        {
                            g = cv.wait(g).unwrap_or_else(|p| p.into_inner());
                        }
                        if g.0 >= n_blocks || stop.load(Ordering::Relaxed) {
                            return;
                        }
                        g.0 += 1;
                        g.0 - 1
                    };
                    let start = data_start + index as u64 * block;
                    let end = (start + block).min(len);
                    let b = process_block(
                        file,
                        mapping,
                        header,
                        &mut scratch,
                        index,
                        start,
                        end,
                        len,
                        gap_limit,
                        max_gaps,
                    );
                    if tx.send(b).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        let mut pending: BTreeMap<usize, Block> = BTreeMap::new();
        let mut next = 0usize;
        let mut first_line = 2u64; // line 1 is the header
        while next < n_blocks {
            let b = match pending.remove(&next) {
                Some(b) => b,
                None => match rx.recv() {
                    Ok(b) => {
                        pending.insert(b.index, b);
                        continue;
                    }
                    Err(_) => break,
                },
            };
            let outcome = merger.merge(&b, first_line);
            first_line += b.lines;
            next += 1;
            if let Some(m) = &mapping {
                // Every block before the next one is done: its pages can go.
                m.release_before((data_start + next as u64 * block).saturating_sub(1) as usize);
            }
            {
                let (lock, cv) = &gate;
                let mut g = lock.lock().unwrap_or_else(|p| p.into_inner());
                g.1 = next;
                cv.notify_all();
            }
            if let Err(e) = outcome {
                stop.store(true, Ordering::Relaxed);
                gate.1.notify_all();
                return Err(e);
            }
        }
        Ok(())
    });
    result?;
    merger.finish(path, &header)
}
