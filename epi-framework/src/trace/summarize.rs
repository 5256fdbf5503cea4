//! Streaming energy integration of a trace CSV (`measurement-methodology.md` §2).
//!
//! The file is cut into fixed-size blocks that worker threads read (with positional reads, so no
//! block is shared) and parse in parallel; one consumer takes the parsed blocks back in file order
//! and integrates them. At most a few blocks are in flight, so memory does not grow with the size
//! of the trace.

use super::parse::{parse_row, Header, RowError};
use super::reader::TraceReader;
use crate::error::{Error, InputError, Location};
use crate::result::Gap;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Condvar, Mutex};

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
}

impl Default for TraceOptions {
    fn default() -> Self {
        TraceOptions { gap_limit_ms: 1000.0, threads: 0, block_bytes: 1 << 20, max_gaps_listed: 100 }
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
        self.channels.values().map(|c| c.covered_ms / window).fold(f64::INFINITY, f64::min).min(1.0)
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
#[derive(Clone, Copy)]
struct Rec {
    t: f64,
    w: f64,
    e: f64, // NaN when absent
    node: u32,
}

struct Block {
    index: usize,
    /// Lines owned by the block (data and blank).
    lines: u64,
    rows: Vec<Rec>,
    /// Line indices (within the block) of blank lines.
    blanks: Vec<u64>,
    /// First error: line index within the block and what.
    error: Option<(u64, RowError)>,
    io_error: Option<std::io::Error>,
}

impl Block {
    /// Line index within the block of row `r`.
    fn line_of_row(&self, r: usize) -> u64 {
        let mut line = r as u64;
        for &b in &self.blanks {
            if b <= line {
                line += 1;
            } else {
                break;
            }
        }
        line
    }
}

/// Integrates a trace CSV file. Errors name the file, line and field.
pub fn summarize(path: &Path, opts: &TraceOptions) -> Result<TraceSummary, Error> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    // Header: the first line.
    let mut head = vec![0u8; 4096.min(len as usize)];
    file.read_exact_at(&mut head, 0).map_err(|e| Error::io(path, e))?;
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
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    } else {
        opts.threads
    }
    .clamp(1, 16);
    let block = opts.block_bytes.max(4096) as u64;
    let n_blocks = (len - data_start).div_ceil(block) as usize;

    let mut integ = Integrator::new(path, opts);
    let in_flight_limit = threads * 2 + 1;
    let gate = (Mutex::new((0usize, 0usize)), Condvar::new()); // (next to hand out, consumed)
    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel::<Block>();

    let result: Result<(), Error> = std::thread::scope(|s| {
        for _ in 0..threads {
            let tx = tx.clone();
            let (gate, stop, file, header) = (&gate, &stop, &file, &header);
            s.spawn(move || loop {
                let index = {
                    let (lock, cv) = gate;
                    let mut g = lock.lock().unwrap_or_else(|p| p.into_inner());
                    while g.0 < n_blocks && g.0 >= g.1 + in_flight_limit && !stop.load(Ordering::Relaxed) {
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
                let b = parse_block(file, header, index, start, end, len);
                if tx.send(b).is_err() {
                    return;
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
            let outcome = integ.consume_block(&b, first_line);
            first_line += b.lines;
            next += 1;
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
    integ.finish(path, &header)
}

/// Reads and parses the lines that start in `[start, end)`.
fn parse_block(file: &File, header: &Header, index: usize, start: u64, end: u64, len: u64) -> Block {
    let mut b = Block { index, lines: 0, rows: Vec::new(), blanks: Vec::new(), error: None, io_error: None };
    // Read one byte before `start` to know whether `start` begins a line.
    let read_from = start.saturating_sub(1);
    let mut buf = vec![0u8; (end - read_from) as usize];
    if let Err(e) = file.read_exact_at(&mut buf, read_from) {
        b.io_error = Some(e);
        return b;
    }
    let mut pos = if start == read_from {
        0
    } else if buf[0] == b'\n' {
        1
    } else {
        match memchr::memchr(b'\n', &buf[1..]) {
            Some(p) => p + 2,
            None => {
                // No line starts in this block: the previous block's last line covers it.
                return b;
            }
        }
    };
    // Extend the buffer so the last line starting before `end` is complete.
    let owned_end = buf.len(); // lines starting before this index are ours
    if pos < owned_end {
        let mut file_pos = end;
        while file_pos < len && buf.last() != Some(&b'\n') {
            let more = (len - file_pos).min(64 * 1024) as usize;
            let old = buf.len();
            buf.resize(old + more, 0);
            if let Err(e) = file.read_exact_at(&mut buf[old..], file_pos) {
                b.io_error = Some(e);
                return b;
            }
            file_pos += more as u64;
            if let Some(p) = memchr::memchr(b'\n', &buf[old..]) {
                buf.truncate(old + p + 1);
                break;
            }
        }
    }
    b.rows.reserve(owned_end / 40);
    while pos < owned_end {
        let nl = memchr::memchr(b'\n', &buf[pos..]).map(|p| pos + p).unwrap_or(buf.len());
        let line = &buf[pos..nl];
        let line_idx = b.lines;
        b.lines += 1;
        pos = nl + 1;
        if line.is_empty() || line == b"\r" {
            b.blanks.push(line_idx);
            continue;
        }
        let parsed = if nl == buf.len() && buf.last() != Some(&b'\n') {
            super::parse::check_unterminated_last_line(header, line).and_then(|_| parse_row(header, line))
        } else {
            parse_row(header, line)
        };
        match parsed {
            Ok(r) => b.rows.push(Rec { t: r.t_ms, w: r.watts, e: r.energy_j.unwrap_or(f64::NAN), node: r.node }),
            Err(e) => {
                b.error = Some((line_idx, e));
                return b;
            }
        }
    }
    b
}

#[derive(Clone)]
struct NodeState {
    summary: ChannelSummary,
    last_w: f64,
    wms: f64, // energy in W·ms
    counter_first: f64,
    counter_last: f64,
    counter_all: bool,
}

struct Integrator<'a> {
    path: &'a Path,
    gap_limit: f64,
    max_gaps: usize,
    nodes: Vec<Option<NodeState>>, // by node id, for small ids
    big_nodes: BTreeMap<u32, NodeState>,
    samples: u64,
    start: f64,
    end: f64,
    gaps: Vec<Gap>,
    gap_count: u64,
    sweep: PeakSweep,
}

impl<'a> Integrator<'a> {
    fn new(path: &'a Path, opts: &TraceOptions) -> Self {
        Integrator {
            path,
            gap_limit: opts.gap_limit_ms,
            max_gaps: opts.max_gaps_listed,
            nodes: Vec::new(),
            big_nodes: BTreeMap::new(),
            samples: 0,
            start: f64::INFINITY,
            end: f64::NEG_INFINITY,
            gaps: Vec::new(),
            gap_count: 0,
            sweep: PeakSweep::new(opts.gap_limit_ms),
        }
    }

    fn consume_block(&mut self, b: &Block, first_line: u64) -> Result<(), Error> {
        if let Some(e) = &b.io_error {
            return Err(Error::io(self.path, std::io::Error::new(e.kind(), e.to_string())));
        }
        for (i, r) in b.rows.iter().enumerate() {
            if let Err((field, msg)) = self.push(r) {
                let line = first_line + b.line_of_row(i);
                return Err(InputError::new(Location::file(self.path).at_line(line).field(field), msg).into());
            }
        }
        if let Some((idx, e)) = &b.error {
            return Err(InputError::new(
                Location::file(self.path).at_line(first_line + idx).field(e.field.clone()),
                e.message.clone(),
            )
            .into());
        }
        Ok(())
    }

    #[inline]
    fn push(&mut self, r: &Rec) -> Result<(), (&'static str, String)> {
        let gap_limit = self.gap_limit;
        let st = if (r.node as usize) < 4096 {
            let i = r.node as usize;
            if i >= self.nodes.len() {
                self.nodes.resize(i + 1, None);
            }
            &mut self.nodes[i]
        } else {
            // Rare: large node ids live in a map; move through an Option slot.
            let e = self.big_nodes.remove(&r.node);
            self.nodes.push(e);
            let last = self.nodes.len() - 1;
            &mut self.nodes[last]
        };
        match st {
            None => {
                *st = Some(NodeState {
                    summary: ChannelSummary {
                        samples: 1,
                        first_ms: r.t,
                        last_ms: r.t,
                        joules: 0.0,
                        covered_ms: 0.0,
                        gaps: 0,
                        max_interval_ms: 0.0,
                        peak_watts: r.w,
                        counter_joules: None,
                    },
                    last_w: r.w,
                    wms: 0.0,
                    counter_first: r.e,
                    counter_last: r.e,
                    counter_all: !r.e.is_nan(),
                });
            }
            Some(s) => {
                let dt = r.t - s.summary.last_ms;
                if dt < 0.0 {
                    let msg = format!(
                        "{} is earlier than node {}'s previous sample at {} ms; expected timestamps that never decrease within a node",
                        r.t, r.node, s.summary.last_ms
                    );
                    self.restore_big(r.node);
                    return Err(("timestamp_ms", msg));
                }
                s.wms += dt * (r.w + s.last_w);
                if dt > gap_limit {
                    s.summary.gaps += 1;
                    self.gap_count += 1;
                    if self.gaps.len() < self.max_gaps {
                        self.gaps.push(Gap { node_id: r.node, start_ms: s.summary.last_ms, end_ms: r.t });
                    }
                } else {
                    s.summary.covered_ms += dt;
                }
                if dt > s.summary.max_interval_ms {
                    s.summary.max_interval_ms = dt;
                }
                if r.w > s.summary.peak_watts {
                    s.summary.peak_watts = r.w;
                }
                if s.counter_all {
                    if r.e.is_nan() {
                        s.counter_all = false;
                    } else if r.e < s.counter_last {
                        let msg = format!(
                            "energy counter of node {} went down from {} J to {} J; expected a cumulative counter",
                            r.node, s.counter_last, r.e
                        );
                        self.restore_big(r.node);
                        return Err(("energy_j", msg));
                    } else {
                        s.counter_last = r.e;
                    }
                }
                s.summary.samples += 1;
                s.summary.last_ms = r.t;
                s.last_w = r.w;
            }
        }
        self.restore_big(r.node);
        self.samples += 1;
        if r.t < self.start {
            self.start = r.t;
        }
        if r.t > self.end {
            self.end = r.t;
        }
        self.sweep.push(r.node, r.t, r.w);
        Ok(())
    }

    #[inline]
    fn restore_big(&mut self, node: u32) {
        if (node as usize) >= 4096 {
            if let Some(Some(s)) = self.nodes.pop() {
                self.big_nodes.insert(node, s);
            }
        }
    }

    fn finish(mut self, path: &Path, header: &Header) -> Result<TraceSummary, Error> {
        let mut channels = BTreeMap::new();
        let all = self
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.clone().map(|s| (i as u32, s)))
            .chain(std::mem::take(&mut self.big_nodes));
        for (id, mut s) in all {
            s.summary.joules = s.wms / 2000.0;
            if s.counter_all {
                s.summary.counter_joules = Some(s.counter_last - s.counter_first);
            }
            channels.insert(id, s.summary);
        }
        let time_sorted = !self.sweep.unsorted;
        let (peak, at) = if time_sorted {
            self.sweep.finish()
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

/// Second pass for files whose rows are not in global time order (e.g. one block per node):
/// one sequential reader per channel, merged by time. Constant memory, one parse per channel.
fn peak_by_merge(path: &Path, channels: &BTreeMap<u32, ChannelSummary>, gap_limit: f64) -> Result<(f64, f64), Error> {
    struct Head {
        t: f64,
        node: u32,
        w: f64,
        reader: usize,
    }
    impl PartialEq for Head {
        fn eq(&self, o: &Self) -> bool {
            self.t == o.t && self.node == o.node
        }
    }
    impl Eq for Head {}
    impl PartialOrd for Head {
        fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(o))
        }
    }
    impl Ord for Head {
        fn cmp(&self, o: &Self) -> std::cmp::Ordering {
            // Min-heap by (t, node).
            o.t.total_cmp(&self.t).then(o.node.cmp(&self.node))
        }
    }
    let mut readers: Vec<(u32, TraceReader)> = Vec::new();
    for &id in channels.keys() {
        readers.push((id, TraceReader::open(path)?));
    }
    let next_of = |r: &mut (u32, TraceReader)| -> Result<Option<(f64, f64)>, Error> {
        while let Some((_, row)) = r.1.next_row()? {
            if row.node == r.0 {
                return Ok(Some((row.t_ms, row.watts)));
            }
        }
        Ok(None)
    };
    let mut heap = BinaryHeap::new();
    for (i, r) in readers.iter_mut().enumerate() {
        if let Some((t, w)) = next_of(r)? {
            heap.push(Head { t, node: r.0, w, reader: i });
        }
    }
    let mut sweep = PeakSweep::new(gap_limit);
    while let Some(h) = heap.pop() {
        sweep.push(h.node, h.t, h.w);
        if let Some((t, w)) = next_of(&mut readers[h.reader])? {
            heap.push(Head { t, node: h.node, w, reader: h.reader });
        }
    }
    Ok(sweep.finish())
}

/// Streaming peak of cluster power over sample instants, for rows in global time order.
///
/// At each distinct timestamp the cluster power is the sum over channels: a channel sampled at that
/// instant contributes its sample; one that is not is interpolated between its neighbouring samples
/// once its next sample arrives (if those are no further apart than the gap limit); a channel
/// before its first sample, after its last, or inside a gap contributes nothing.
struct PeakSweep {
    gap_limit: f64,
    prev: Vec<Option<(f64, f64)>>, // by dense channel index
    dense: BTreeMap<u32, usize>,
    group_t: f64,
    group_sum: f64,
    group_members: Vec<usize>,
    pending: VecDeque<Pending>,
    best: Option<(f64, f64)>,
    unsorted: bool,
}

struct Pending {
    t: f64,
    sum: f64,
    need: Vec<usize>,
}

impl PeakSweep {
    fn new(gap_limit: f64) -> Self {
        PeakSweep {
            gap_limit,
            prev: Vec::new(),
            dense: BTreeMap::new(),
            group_t: f64::NEG_INFINITY,
            group_sum: 0.0,
            group_members: Vec::new(),
            pending: VecDeque::new(),
            best: None,
            unsorted: false,
        }
    }

    #[inline]
    fn push(&mut self, node: u32, t: f64, w: f64) {
        if self.unsorted {
            return;
        }
        if t < self.group_t {
            self.unsorted = true;
            return;
        }
        let c = match self.dense.get(&node) {
            Some(&c) => c,
            None => {
                let c = self.prev.len();
                self.dense.insert(node, c);
                self.prev.push(None);
                c
            }
        };
        if t > self.group_t {
            self.close_group();
            self.group_t = t;
        }
        // Resolve instants waiting for this channel's next sample.
        if !self.pending.is_empty() {
            if let Some((t0, w0)) = self.prev[c] {
                let covers = t - t0 <= self.gap_limit;
                for p in self.pending.iter_mut() {
                    if let Some(k) = p.need.iter().position(|&x| x == c) {
                        p.need.swap_remove(k);
                        if covers && t > t0 {
                            p.sum += w0 + (w - w0) * (p.t - t0) / (t - t0);
                        }
                    }
                }
            }
        }
        if self.group_members.contains(&c) {
            // A duplicate timestamp for this channel: the later sample replaces the earlier.
            if let Some((_, w_old)) = self.prev[c] {
                self.group_sum -= w_old;
            }
        } else {
            self.group_members.push(c);
        }
        self.group_sum += w;
        self.prev[c] = Some((t, w));
    }

    fn close_group(&mut self) {
        if self.group_members.is_empty() {
            return;
        }
        let t = self.group_t;
        let mut need = Vec::new();
        for (c, p) in self.prev.iter().enumerate() {
            if let Some((pt, _)) = p {
                if !self.group_members.contains(&c) && t - pt <= self.gap_limit {
                    need.push(c);
                }
            }
        }
        self.pending.push_back(Pending { t, sum: self.group_sum, need });
        self.group_sum = 0.0;
        self.group_members.clear();
        // Channels silent for longer than the gap limit no longer cover older instants.
        let now = t;
        let prev = &self.prev;
        let gap = self.gap_limit;
        for p in self.pending.iter_mut() {
            p.need.retain(|&c| prev[c].is_some_and(|(pt, _)| now - pt <= gap));
        }
        while self.pending.front().is_some_and(|p| p.need.is_empty()) {
            let p = self.pending.pop_front().expect("front exists");
            self.finalize(p.t, p.sum);
        }
    }

    fn finalize(&mut self, t: f64, sum: f64) {
        if self.best.is_none_or(|(b, _)| sum > b) {
            self.best = Some((sum, t));
        }
    }

    fn finish(mut self) -> (f64, f64) {
        self.close_group();
        while let Some(p) = self.pending.pop_front() {
            self.finalize(p.t, p.sum);
        }
        self.best.unwrap_or((0.0, 0.0))
    }
}
