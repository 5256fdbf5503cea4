//! Streaming energy integration of a trace CSV (`measurement-methodology.md` §2).
//!
//! The file is cut into fixed-size blocks that worker threads read (with positional reads, so no
//! block is shared) and parse in parallel; one consumer takes the parsed blocks back in file order
//! and integrates them. At most a few blocks are in flight, so memory does not grow with the size
//! of the trace.

use super::parse::{parse_row, Header};
use super::reader::TraceReader;
use epi_core::energy::{ChannelIntegral, Interval};
use epi_core::error::{Error, InputError, Location};
use epi_core::result::Gap;
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

/// A worker's reusable read buffer (no allocation or page faults per block).
#[derive(Default)]
struct Scratch {
    buf: Vec<u8>,
}

/// Reads the lines that start in `[start, end)`, and parses and integrates each row as it is read
/// (no row is stored, except the few near the block's edges that the merger needs).
#[allow(clippy::too_many_arguments)]
fn process_block(
    file: &File,
    mapping: Option<&Mapping>,
    header: &Header,
    scratch: &mut Scratch,
    index: usize,
    start: u64,
    end: u64,
    len: u64,
    gap_limit: f64,
    max_gaps: usize,
) -> Block {
    let mut b = Block::empty(index);
    if header.has(super::parse::Column::EnergyCounter) {
        integrate_range::<true>(
            file, mapping, header, scratch, &mut b, start, end, len, gap_limit, max_gaps,
        );
    } else {
        integrate_range::<false>(
            file, mapping, header, scratch, &mut b, start, end, len, gap_limit, max_gaps,
        );
    }
    b
}

/// [`process_block`] for a file with (`COUNTER`) or without an energy counter column.
#[allow(clippy::too_many_arguments)]
fn integrate_range<const COUNTER: bool>(
    file: &File,
    mapping: Option<&Mapping>,
    header: &Header,
    scratch: &mut Scratch,
    b: &mut Block,
    start: u64,
    end: u64,
    len: u64,
    gap_limit: f64,
    max_gaps: usize,
) {
    match mapping {
        Some(m) => {
            m.populate(start as usize, end as usize + 4096);
            let data = m.data();
            let Some(pos) = first_line_start(data, start as usize, end as usize) else {
                return;
            };
            let last_t = last_row_t(header, data, pos, end as usize);
            let mut sink = BlockIntegrator::<COUNTER>::new(gap_limit, max_gaps, last_t);
            let piece = Piece {
                padded: data,
                data_len: data.len(),
                pos,
                owned_end: end as usize,
                header,
            };
            parse_lines(&piece, b, &mut sink);
            sink.finish(b);
        }
        None => {
            let last_t = match last_row_t_read(file, header, &mut scratch.buf, start, end, len) {
                Ok(t) => t,
                Err(e) => {
                    b.io_error = Some(e);
                    return;
                }
            };
            let mut sink = BlockIntegrator::<COUNTER>::new(gap_limit, max_gaps, last_t);
            if let Err(e) = read_in_pieces(
                file,
                header,
                &mut scratch.buf,
                b,
                &mut sink,
                start,
                end,
                len,
            ) {
                b.io_error = Some(e);
                return;
            }
            sink.finish(b);
        }
    }
}

/// Bytes per positional read: small enough that a piece is still in the core's cache when it is
/// parsed.
const READ_PIECE: u64 = 128 << 10;

/// Reads the lines that start in `[start, end)` piece by piece into `buf` and parses them into
/// `sink`. A line cut by a piece's end is carried over to the next piece.
#[allow(clippy::too_many_arguments)]
fn read_in_pieces<const COUNTER: bool>(
    file: &File,
    header: &Header,
    buf: &mut Vec<u8>,
    b: &mut Block,
    sink: &mut BlockIntegrator<COUNTER>,
    start: u64,
    end: u64,
    len: u64,
) -> std::io::Result<()> {
    let pad = super::parse::SIMD_PADDING;
    // `buf[..filled]` holds the file's bytes from `buf_off`; one byte before `start` is read to
    // know whether `start` begins a line.
    let mut buf_off = start.saturating_sub(1);
    let mut filled = 0usize;
    let mut cursor = usize::MAX; // next line start in `buf`, once known
    loop {
        let file_pos = buf_off + filled as u64;
        let want = if file_pos < end {
            (end - file_pos).min(READ_PIECE)
        } else {
            (len - file_pos).min(64 << 10)
        } as usize;
        if buf.len() < filled + want + pad {
            buf.resize(filled + want + pad, 0);
        }
        file.read_exact_at(&mut buf[filled..filled + want], file_pos)?;
        filled += want;
        buf[filled..filled + pad].fill(0);
        if cursor == usize::MAX {
            cursor = if start == 0 {
                0
            } else {
                match memchr::memchr(b'\n', &buf[..filled]) {
                    Some(p) => p + 1,
                    None if buf_off + (filled as u64) < len => continue,
                    None => return Ok(()),
                }
            };
            if buf_off + cursor as u64 >= end {
                return Ok(()); // no line starts in the block
            }
        }
        let at_eof = buf_off + filled as u64 >= len;
        let data_len = if at_eof {
            filled
        } else {
            match memchr::memrchr(b'\n', &buf[cursor..filled]) {
                Some(p) => cursor + p + 1,
                None => cursor,
            }
        };
        let owned_end = ((end - buf_off) as usize).min(data_len);
        if cursor < owned_end {
            let piece = Piece {
                padded: &buf[..filled + pad],
                data_len,
                pos: cursor,
                owned_end,
                header,
            };
            parse_lines(&piece, b, sink);
            if b.error.is_some() || sink.error.is_some() {
                return Ok(());
            }
            cursor = data_len;
        }
        if at_eof || buf_off + cursor as u64 >= end {
            return Ok(());
        }
        // Keep the cut line, read the next piece after it.
        buf.copy_within(cursor..filled, 0);
        buf_off += cursor as u64;
        filled -= cursor;
        cursor = 0;
    }
}

/// The timestamp of the last data row that starts in `[start, end)`, from a small read of the
/// block's tail (NaN when it cannot be read there; the block is then handled as a short one).
fn last_row_t_read(
    file: &File,
    header: &Header,
    buf: &mut Vec<u8>,
    start: u64,
    end: u64,
    len: u64,
) -> std::io::Result<f64> {
    let from = end.saturating_sub(4096).max(start.saturating_sub(1));
    let to = (end + 4096).min(len);
    let n = (to - from) as usize;
    if buf.len() < n {
        buf.resize(n, 0);
    }
    file.read_exact_at(&mut buf[..n], from)?;
    let tail = &buf[..n];
    let pos = if start == 0 && from == 0 {
        0
    } else {
        match memchr::memchr(b'\n', tail) {
            Some(p) => p + 1,
            None => return Ok(f64::NAN),
        }
    };
    let owned_end = (end - from) as usize;
    if pos >= owned_end {
        return Ok(f64::NAN);
    }
    // The last owned line must end inside the tail (or at the end of the file).
    if to < len && memchr::memchr(b'\n', &tail[owned_end - 1..]).is_none() {
        return Ok(f64::NAN);
    }
    Ok(last_row_t(header, tail, pos, owned_end))
}

/// The first line that starts in `[start, end)` of `data` (a line starts at 0 or after a `\n`).
fn first_line_start(data: &[u8], start: usize, end: usize) -> Option<usize> {
    if start == 0 || data[start - 1] == b'\n' {
        return Some(start);
    }
    match memchr::memchr(b'\n', &data[start..end]) {
        Some(p) if start + p + 1 < end => Some(start + p + 1),
        _ => None,
    }
}

/// The timestamp of the last data row among the lines of `data` that start in `[pos, owned_end)`,
/// read before the block is integrated (the integrator needs to know where the block ends); NaN
/// when that row cannot be read here (the general parser then reports it in order).
fn last_row_t(header: &Header, data: &[u8], pos: usize, owned_end: usize) -> f64 {
    let mut line_end = memchr::memchr(b'\n', &data[owned_end.saturating_sub(1).max(pos)..])
        .map(|p| owned_end.saturating_sub(1).max(pos) + p)
        .unwrap_or(data.len());
    // Step back over blank lines (a few at most; more and the block is treated as short).
    for _ in 0..4 {
        let line_start = match memchr::memrchr(b'\n', &data[pos..line_end]) {
            Some(p) => pos + p + 1,
            None => pos,
        };
        let line = &data[line_start..line_end];
        if line.is_empty() || line == b"\r" {
            if line_start == pos {
                return f64::NAN;
            }
            line_end = line_start - 1;
            continue;
        }
        return parse_row(header, line).map_or(f64::NAN, |r| r.t_ms);
    }
    f64::NAN
}

/// The canonical-line parsers, from the plainest.
#[cfg_attr(not(any(test, feature = "fuzzing")), allow(dead_code))]
#[derive(Clone, Copy, Debug)]
pub(super) enum LineParser {
    Portable = 0,
    Avx2 = 1,
    Avx512 = 2,
}

/// The most advanced [`LineParser`] the workers may use (the CPU permitting); tests lower it to
/// check that every path gives the same results (and so do the fuzz targets, feature `fuzzing`).
#[cfg(any(test, feature = "fuzzing"))]
pub(super) static LINE_PARSER_FOR_TESTS: std::sync::atomic::AtomicU8 =
    std::sync::atomic::AtomicU8::new(LineParser::Avx512 as u8);

/// Lines to parse: those of `padded[..data_len]` that start in `[pos, owned_end)`. `padded` has
/// [`super::parse::SIMD_PADDING`] readable bytes after `data_len` where it can.
struct Piece<'a> {
    padded: &'a [u8],
    data_len: usize,
    pos: usize,
    owned_end: usize,
    header: &'a Header,
}

/// Parses the lines of `piece` into `sink`, with the code compiled for the CPU's extensions when it
/// has them (AVX2 or AVX-512BW, with POPCNT/BMI for the bit handling); the result is the same.
fn parse_lines<const COUNTER: bool>(
    piece: &Piece,
    b: &mut Block,
    sink: &mut BlockIntegrator<COUNTER>,
) {
    #[cfg(target_arch = "x86_64")]
    {
        #[cfg(any(test, feature = "fuzzing"))]
        let most = LINE_PARSER_FOR_TESTS.load(Ordering::Relaxed);
        #[cfg(not(any(test, feature = "fuzzing")))]
        let most = LineParser::Avx512 as u8;
        if most >= LineParser::Avx512 as u8 && super::fast_x86::available_avx512() {
            // SAFETY: the CPU has every feature the function is compiled for (checked above).
            unsafe { parse_lines_x86_v4(piece, b, sink) };
            return;
        }
        if most >= LineParser::Avx2 as u8 && super::fast_x86::available() {
            // SAFETY: the CPU has every feature the function is compiled for (checked above).
            unsafe { parse_lines_x86_v3(piece, b, sink) };
            return;
        }
    }
    parse_lines_generic(piece, b, sink, &mut PortableLines)
}

/// Reads one canonical line: `(timestamp, node, watts, line length)`, or `None` for a line the
/// general parser must read. Implementations are inlined into the parse loop.
trait CanonicalLines {
    fn parse(&mut self, buf: &[u8], pos: usize) -> Option<(f64, u32, f64, usize)>;
}

/// The portable canonical-line parser.
struct PortableLines;

impl CanonicalLines for PortableLines {
    #[inline(always)]
    fn parse(&mut self, buf: &[u8], pos: usize) -> Option<(f64, u32, f64, usize)> {
        super::parse::parse_canonical_at(buf, pos)
    }
}

/// The SIMD canonical-line parser, with its cache of line shapes, classifying with `C`; only
/// made (by [`SimdLines::new`]) in functions compiled for `C`'s features, where the CPU has them.
#[cfg(target_arch = "x86_64")]
struct SimdLines<C> {
    shapes: super::fast_x86::ShapeCache,
    classify: std::marker::PhantomData<C>,
}

#[cfg(target_arch = "x86_64")]
impl<C: super::fast_x86::Classify> SimdLines<C> {
    /// # Safety
    /// The CPU must have `C`'s features, and the value may only be used in functions compiled
    /// for them.
    unsafe fn new() -> Self {
        SimdLines {
            shapes: super::fast_x86::ShapeCache::new(),
            classify: std::marker::PhantomData,
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl<C: super::fast_x86::Classify> CanonicalLines for SimdLines<C> {
    #[inline(always)]
    fn parse(&mut self, buf: &[u8], pos: usize) -> Option<(f64, u32, f64, usize)> {
        // SAFETY: a `SimdLines<C>` exists only where the CPU has `C`'s features (see `new`).
        unsafe { self.shapes.parse::<C>(buf, pos) }
    }
}

/// Defines `$name`: [`parse_lines_generic`] with [`SimdLines`] classifying by `$classify`,
/// compiled for the CPU features `$features` (which the caller must have checked).
macro_rules! simd_parse_lines {
    ($name:ident, $features:literal, $classify:ty) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name<const COUNTER: bool>(
            piece: &Piece,
            b: &mut Block,
            sink: &mut BlockIntegrator<COUNTER>,
        ) {
            // SAFETY: the caller checked that the CPU has the features.
            let mut lines = unsafe { SimdLines::<$classify>::new() };
            parse_lines_generic(piece, b, sink, &mut lines)
        }
    };
}

simd_parse_lines!(
    parse_lines_x86_v3,
    "avx2,bmi1,bmi2,popcnt,lzcnt,sse4.1,ssse3",
    super::fast_x86::Avx2
);
simd_parse_lines!(
    parse_lines_x86_v4,
    "avx512f,avx512bw,avx2,bmi1,bmi2,popcnt,lzcnt,sse4.1,ssse3",
    super::fast_x86::Avx512
);

/// Parses the lines of `piece` into `sink`. The fast path (`fast`) is used wherever `padded` has
/// its padding after the line start. Stops at the first error (recorded in `b`, or in the sink for
/// errors it finds).
#[inline(always)]
fn parse_lines_generic<const COUNTER: bool>(
    piece: &Piece,
    b: &mut Block,
    sink: &mut BlockIntegrator<COUNTER>,
    fast: &mut impl CanonicalLines,
) {
    let &Piece {
        padded,
        data_len,
        mut pos,
        owned_end,
        header,
    } = piece;
    let canonical = super::parse::is_canonical(header);
    let data = &padded[..data_len];
    let mut line_idx = b.lines;
    while pos < owned_end {
        if canonical {
            if sink.steady_ready() {
                (pos, line_idx) = sink.steady(padded, pos, owned_end, line_idx, fast);
                if pos >= owned_end {
                    break;
                }
            }
            if let Some((t, node, w, n)) = fast.parse(padded, pos) {
                pos += n + 1;
                let rec = Rec {
                    t,
                    w,
                    e: f64::NAN,
                    node,
                };
                let go_on = sink.row(line_idx, rec);
                line_idx += 1;
                if !go_on {
                    break;
                }
                continue;
            }
        }
        let nl = memchr::memchr(b'\n', &data[pos..])
            .map(|p| pos + p)
            .unwrap_or(data.len());
        let line = &data[pos..nl];
        let this_line = line_idx;
        line_idx += 1;
        pos = nl + 1;
        if line.is_empty() || line == b"\r" {
            continue;
        }
        let parsed = if nl == data.len() && data.last() != Some(&b'\n') {
            super::parse::check_unterminated_last_line(header, line)
                .and_then(|_| parse_row(header, line))
        } else {
            parse_row(header, line)
        };
        match parsed {
            Ok(r) => {
                let rec = Rec {
                    t: r.t_ms,
                    w: r.watts,
                    e: r.energy_j.unwrap_or(f64::NAN),
                    node: r.node,
                };
                if !sink.row(this_line, rec) {
                    break;
                }
            }
            Err(e) => {
                b.set_error(this_line, e.field, e.message);
                break;
            }
        }
    }
    b.lines = line_idx;
}

/// A read-only memory map of the whole trace. Pages are dropped from the process (not from the
/// page cache) once their blocks are merged, so resident memory stays at a few blocks.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

// The mapping is read-only and outlives every reference handed out.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(file: &File, len: u64) -> Option<Mapping> {
        use std::os::fd::AsRawFd;
        let len = usize::try_from(len).ok().filter(|&l| l > 0)?;
        // SAFETY: a fresh private read-only mapping of an open file; checked for failure.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return None;
        }
        // SAFETY: advice on our own mapping.
        unsafe { libc::madvise(ptr, len, libc::MADV_SEQUENTIAL) };
        Some(Mapping { ptr, len })
    }

    fn data(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` is mapped readable for the life of `self`. The file could be
        // truncated by another process meanwhile (SIGBUS), as with any mmap reader; epi-bench
        // reads finished traces.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }

    /// Maps the pages of `[from, to)` in one call (`MADV_POPULATE_READ`, Linux 5.14) instead of
    /// one page fault per few pages; a kernel without it just leaves them to the faults.
    fn populate(&self, from: usize, to: usize) {
        const MADV_POPULATE_READ: libc::c_int = 22;
        let page = 4096usize;
        let start = (from / page) * page;
        let end = to.min(self.len);
        if end > start {
            // SAFETY: advice on a range inside our own mapping; failure is harmless.
            unsafe {
                libc::madvise(
                    (self.ptr as *mut u8).add(start) as *mut libc::c_void,
                    end - start,
                    MADV_POPULATE_READ,
                )
            };
        }
        // Ask for the next few MiB to be read ahead (a no-op where they are cached already), so
        // a file partly evicted from the page cache is not read one block at a time.
        // Only the newest MiB of that window: each page is looked up once, not eight times.
        let ahead_end = (end + (8 << 20)).min(self.len);
        let ahead_start = (end + (7 << 20)).div_ceil(page) * page;
        if ahead_end > ahead_start {
            // SAFETY: as above.
            unsafe {
                libc::madvise(
                    (self.ptr as *mut u8).add(ahead_start) as *mut libc::c_void,
                    ahead_end - ahead_start,
                    libc::MADV_WILLNEED,
                )
            };
        }
    }

    /// Drops the pages of `[0, upto)` from this process.
    fn release_before(&self, upto: usize) {
        let page = 4096usize;
        let end = (upto.min(self.len) / page) * page;
        if end > 0 {
            // SAFETY: a page-aligned range inside our mapping; later reads fault pages back in.
            unsafe { libc::madvise(self.ptr, end, libc::MADV_DONTNEED) };
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping what `new` mapped.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// Dense per-block index of node ids.
struct NodeIndex {
    small: Box<[u32; NodeIndex::SMALL]>, // node id → index + 1 (0: unseen), for ids < SMALL
    big: BTreeMap<u32, usize>,
}

impl NodeIndex {
    /// Node ids below this are looked up in a table.
    const SMALL: usize = 4096;

    fn new() -> Self {
        NodeIndex {
            small: Box::new([0; NodeIndex::SMALL]),
            big: BTreeMap::new(),
        }
    }
    #[inline(always)]
    fn get_or_insert(&mut self, node: u32, next: usize) -> (usize, bool) {
        if let Some(slot) = self.small.get_mut(node as usize) {
            if *slot == 0 {
                *slot = next as u32 + 1;
                (next, true)
            } else {
                (*slot as usize - 1, false)
            }
        } else {
            match self.big.get(&node) {
                Some(&i) => (i, false),
                None => {
                    self.big.insert(node, next);
                    (next, true)
                }
            }
        }
    }
}

/// The per-row state of one channel within a block (kept small: it is updated for every row).
#[derive(Clone, Copy)]
struct Hot {
    last_t: f64,
    last_w: f64,
    sum: ChannelIntegral,
    peak_w: f64,
    samples: u64,
}

/// Integrates one block's rows in file order as they are parsed. `COUNTER`: the file has an
/// energy counter column (else every `e` is NaN and the counter checks are compiled out).
///
/// Each channel's trapezoids, coverage and gaps are summed here; the cluster peak is swept over
/// the block's interior instants, and the rows near the block's edges are handed to the merger,
/// which joins neighbouring blocks.
struct BlockIntegrator<const COUNTER: bool> {
    gap_limit: f64,
    max_gaps: usize,
    /// Timestamp of the block's last row, read before the block (NaN: unknown, the block is
    /// then handled as a short one).
    last_t: f64,
    rows: u64,
    first_t: f64,
    /// All rows go to the merger (a block spanning few gap limits, or an unknown end).
    short: bool,
    edge_lo: f64,
    edge_hi: f64,
    idx: NodeIndex,
    parts: Vec<NodePart>,
    hot: Vec<Hot>,
    prev_t: f64,
    sorted: bool,
    min_t: f64,
    max_t: f64,
    sweep: PeakSweep,
    boundary: Vec<Rec>,
    error: Option<(u64, &'static str, String)>,
}

impl<const COUNTER: bool> BlockIntegrator<COUNTER> {
    fn new(gap_limit: f64, max_gaps: usize, last_t: f64) -> Self {
        BlockIntegrator {
            gap_limit,
            max_gaps,
            last_t,
            rows: 0,
            first_t: f64::NAN,
            short: true,
            edge_lo: f64::NAN,
            edge_hi: f64::NAN,
            idx: NodeIndex::new(),
            parts: Vec::new(),
            hot: Vec::new(),
            prev_t: f64::NEG_INFINITY,
            sorted: true,
            min_t: f64::INFINITY,
            max_t: f64::NEG_INFINITY,
            sweep: PeakSweep::new(gap_limit, None),
            boundary: Vec::new(),
            error: None,
        }
    }

    /// Sets up the edges from the first row's timestamp and the block's last.
    #[cold]
    fn begin(&mut self, t: f64) {
        let gap = self.gap_limit;
        let span = self.last_t - t;
        self.first_t = t;
        self.short = span.is_nan() || span <= 5.0 * gap || !gap.is_finite();
        self.edge_lo = t + 2.0 * gap;
        self.edge_hi = self.last_t - 2.0 * gap;
        if !self.short {
            self.sweep.accept = Some((t + gap, self.last_t - gap));
        }
    }

    /// The first row out of order: from here on the extremes are tracked row by row.
    #[cold]
    fn out_of_order(&mut self, t: f64) {
        if self.sorted {
            self.sorted = false;
            self.min_t = self.first_t;
            self.max_t = self.prev_t;
        }
        self.min_t = self.min_t.min(t);
        self.max_t = self.max_t.max(t);
    }

    #[cold]
    fn new_channel(&mut self, line: u64, r: Rec) {
        self.parts.push(NodePart {
            node: r.node,
            first: r,
            first_line: line,
            last: r,
            samples: 1,
            sum: ChannelIntegral::default(),
            gap_list: Vec::new(),
            peak_w: r.w,
            counter_all: !r.e.is_nan(),
        });
        self.hot.push(Hot {
            last_t: r.t,
            last_w: r.w,
            sum: ChannelIntegral::default(),
            peak_w: r.w,
            samples: 1,
        });
    }

    /// Lists a gap (the channel's integral counts it).
    #[cold]
    fn gap(&mut self, i: usize, r: Rec, from: f64) {
        let p = &mut self.parts[i];
        if p.gap_list.len() < self.max_gaps {
            p.gap_list.push(Gap {
                node_id: r.node,
                start_ms: from,
                end_ms: r.t,
            });
        }
    }

    #[cold]
    fn fail(&mut self, line: u64, field: &'static str, msg: String) -> bool {
        self.error = Some((line, field, msg));
        false
    }

    /// Takes the row on line `line` (within the block); false when it is an error (recorded).
    #[inline(always)]
    fn row(&mut self, line: u64, r: Rec) -> bool {
        if self.rows == 0 {
            self.begin(r.t);
        }
        self.rows += 1;
        if !self.sorted || r.t < self.prev_t {
            self.out_of_order(r.t);
        }
        self.prev_t = r.t;
        let (i, new) = self.idx.get_or_insert(r.node, self.parts.len());
        if new {
            self.new_channel(line, r);
        } else {
            let gap_limit = self.gap_limit;
            let Some(h) = self.hot.get_mut(i) else {
                unreachable!("the node index hands out indices of existing channels")
            };
            let last_t = h.last_t;
            let iv = Interval::power(last_t, h.last_w, r.t, r.w);
            if iv.dt() < 0.0 {
                let msg = format!(
                    "{} is earlier than node {}'s previous sample at {} ms; expected timestamps that never decrease within a node",
                    r.t, r.node, last_t
                );
                return self.fail(line, "timestamp_ms", msg);
            }
            let is_gap = h.sum.add(&iv, gap_limit);
            if r.w > h.peak_w {
                h.peak_w = r.w;
            }
            h.samples += 1;
            h.last_t = r.t;
            h.last_w = r.w;
            if is_gap {
                self.gap(i, r, last_t);
            }
            if COUNTER {
                // Checked between consecutive rows that both carry the counter (NaN compares
                // false), whatever came before: so the answer does not depend on where blocks
                // start (the merger checks each block's first row the same way).
                let p = &mut self.parts[i];
                if r.e < p.last.e {
                    let msg = format!(
                        "energy counter of node {} went down from {} J to {} J; expected a cumulative counter",
                        r.node, p.last.e, r.e
                    );
                    return self.fail(line, "energy_j", msg);
                }
                if r.e.is_nan() {
                    p.counter_all = false;
                }
                p.last.e = r.e;
            }
        }
        if !self.short {
            if self.sorted {
                self.sweep.push_sorted(i, r.t, r.w);
            }
            if r.t < self.edge_lo || r.t > self.edge_hi {
                self.boundary.push(r);
            }
        } else {
            self.boundary.push(r);
        }
        true
    }

    /// Whether [`Self::steady`] may take rows now: a block spanning several gap limits, its rows
    /// in time order so far, at most 64 channels, all known to the peak sweep, and no instant
    /// waiting in the sweep for interpolation.
    #[inline(always)]
    fn steady_ready(&self) -> bool {
        !COUNTER
            && self.rows > 0
            && !self.short
            && self.sorted
            && self.error.is_none()
            && self.hot.len() <= 64
            && self.sweep.steady_ready(self.hot.len())
    }

    /// Takes the rows from `pos` on for as long as each is the common case, with the state that
    /// changes per row kept in registers: a canonical line (`parse`), in time order, away from
    /// the block's edges, of a known channel, no gap and no duplicate timestamp, and each instant
    /// complete (every channel sampled) when the next begins. Stops before the first row that is
    /// not (for [`Self::row`] to take) and returns where it stopped: the position and line index.
    /// The sums are the same, in the same order, as [`Self::row`] would make them.
    #[inline(always)]
    fn steady(
        &mut self,
        padded: &[u8],
        mut pos: usize,
        owned_end: usize,
        mut line_idx: u64,
        lines: &mut impl CanonicalLines,
    ) -> (usize, u64) {
        let small = &*self.idx.small;
        let hot = &mut self.hot[..];
        let sweep = &mut self.sweep;
        let n_chan = hot.len();
        let (lo, hi) = sweep.accept.unwrap_or((f64::NEG_INFINITY, f64::INFINITY));
        let (gap, edge_lo, edge_hi) = (self.gap_limit, self.edge_lo, self.edge_hi);
        // The lowest timestamp the next row may have: the previous row's, and not inside the
        // leading edge.
        let mut floor = self.prev_t.max(edge_lo);
        let mut group_t = sweep.group_t;
        let mut group_sum = sweep.group_sum;
        let mut group_bits = sweep.group_bits;
        let mut group_len = sweep.group_len;
        let mut best = sweep.best;
        let first_line = line_idx;
        while pos < owned_end {
            let Some((t, node, w, n)) = lines.parse(padded, pos) else {
                break;
            };
            if !(t >= floor && t <= edge_hi) {
                break;
            }
            let Some(&slot) = small.get(node as usize) else {
                break;
            };
            let c = (slot as usize).wrapping_sub(1);
            let Some(h) = hot.get_mut(c) else {
                break;
            };
            // At least 0 long: the channel's last sample is no later than the previous row.
            let iv = Interval::power(h.last_t, h.last_w, t, w);
            if iv.is_gap(gap) {
                break;
            }
            let bit = 1u64 << (c & 63);
            if t > group_t {
                if group_len != n_chan {
                    break;
                }
                if group_t >= lo && group_t <= hi && best.is_none_or(|(b, _)| group_sum > b) {
                    best = Some((group_sum, group_t));
                }
                group_t = t;
                group_sum = 0.0;
                group_bits = 0;
                group_len = 0;
            } else if group_bits & bit != 0 {
                break;
            }
            // Nothing below can stop the row.
            group_bits |= bit;
            group_len += 1;
            group_sum += w;
            h.sum.add(&iv, gap);
            if w > h.peak_w {
                h.peak_w = w;
            }
            h.samples += 1;
            h.last_t = t;
            h.last_w = w;
            floor = t;
            pos += n + 1;
            line_idx += 1;
        }
        if line_idx > first_line {
            self.rows += line_idx - first_line;
            self.prev_t = floor;
            sweep.group_t = group_t;
            sweep.group_sum = group_sum;
            sweep.group_bits = group_bits;
            sweep.group_len = group_len;
            sweep.best = best;
            for (p, h) in sweep.prev.iter_mut().zip(hot.iter()) {
                *p = Some((h.last_t, h.last_w));
            }
        }
        (pos, line_idx)
    }

    /// Writes the block's results into `b`.
    fn finish(self, b: &mut Block) {
        let BlockIntegrator {
            rows,
            first_t,
            short,
            mut parts,
            hot,
            prev_t,
            sorted,
            min_t,
            max_t,
            sweep,
            boundary,
            error,
            ..
        } = self;
        if let Some((line, field, msg)) = error {
            b.set_error(line, field, msg);
        }
        if rows == 0 {
            return;
        }
        for (p, h) in parts.iter_mut().zip(&hot) {
            p.sum = h.sum;
            p.peak_w = h.peak_w;
            p.samples = h.samples;
            p.last.t = h.last_t;
            p.last.w = h.last_w;
        }
        b.rows = rows;
        b.first_t = first_t;
        b.last_t = prev_t;
        b.sorted = sorted;
        if sorted {
            b.min_t = first_t;
            b.max_t = prev_t;
        } else {
            b.min_t = min_t;
            b.max_t = max_t;
        }
        b.parts = parts;
        b.boundary = boundary;
        if b.error.is_none() && sorted && !short {
            b.local_peak = sweep.finish_opt();
        }
    }
}

/// Joins blocks in file order.
struct Merger<'a> {
    path: &'a Path,
    gap_limit: f64,
    max_gaps: usize,
    nodes: BTreeMap<u32, NodePart>,
    samples: u64,
    start: f64,
    end: f64,
    gaps: Vec<Gap>,
    gap_count: u64,
    sweep: PeakSweep,
    local_peak: Option<(f64, f64)>,
    last_t: f64,
    sorted: bool,
}

impl<'a> Merger<'a> {
    fn new(path: &'a Path, opts: &TraceOptions) -> Self {
        Merger {
            path,
            gap_limit: opts.gap_limit_ms,
            max_gaps: opts.max_gaps_listed,
            nodes: BTreeMap::new(),
            samples: 0,
            start: f64::INFINITY,
            end: f64::NEG_INFINITY,
            gaps: Vec::new(),
            gap_count: 0,
            sweep: PeakSweep::new(opts.gap_limit_ms, None),
            local_peak: None,
            last_t: f64::NEG_INFINITY,
            sorted: true,
        }
    }

    fn merge(&mut self, b: &Block, first_line: u64) -> Result<(), Error> {
        if let Some(e) = &b.io_error {
            return Err(Error::io(
                self.path,
                std::io::Error::new(e.kind(), e.to_string()),
            ));
        }
        // The earliest error among the block's own and the joins with earlier blocks.
        let mut err: Option<(u64, String, String)> = b.error.clone();
        let mut note = |line: u64, field: &str, msg: String| {
            if err.as_ref().is_none_or(|(l, _, _)| line < *l) {
                err = Some((line, field.to_string(), msg));
            }
        };
        let gap_limit = self.gap_limit;
        for part in &b.parts {
            match self.nodes.get_mut(&part.node) {
                None => {
                    self.nodes.insert(part.node, part.clone());
                    self.gap_count += part.sum.gaps;
                    for g in &part.gap_list {
                        if self.gaps.len() < self.max_gaps {
                            self.gaps.push(g.clone());
                        }
                    }
                }
                Some(acc) => {
                    // The interval from the last reading before the block to its first.
                    let bridge =
                        Interval::power(acc.last.t, acc.last.w, part.first.t, part.first.w);
                    let line = part.first_line;
                    if bridge.dt() < 0.0 {
                        note(
                            line,
                            "timestamp_ms",
                            format!(
                                "{} is earlier than node {}'s previous sample at {} ms; expected timestamps that never decrease within a node",
                                part.first.t, part.node, acc.last.t
                            ),
                        );
                        continue;
                    }
                    if part.first.e < acc.last.e {
                        note(
                            line,
                            "energy_j",
                            format!(
                                "energy counter of node {} went down from {} J to {} J; expected a cumulative counter",
                                part.node, acc.last.e, part.first.e
                            ),
                        );
                        continue;
                    }
                    if acc.sum.join(&bridge, &part.sum, gap_limit) {
                        self.gap_count += 1;
                        if self.gaps.len() < self.max_gaps {
                            self.gaps.push(Gap {
                                node_id: part.node,
                                start_ms: acc.last.t,
                                end_ms: part.first.t,
                            });
                        }
                    }
                    self.gap_count += part.sum.gaps;
                    for g in &part.gap_list {
                        if self.gaps.len() < self.max_gaps {
                            self.gaps.push(g.clone());
                        }
                    }
                    acc.peak_w = acc.peak_w.max(part.peak_w);
                    acc.counter_all = acc.counter_all && part.counter_all;
                    acc.samples += part.samples;
                    acc.last = part.last;
                }
            }
        }
        if let Some((idx, field, msg)) = err {
            return Err(InputError::new(
                Location::file(self.path)
                    .at_line(first_line + idx)
                    .field(field),
                msg,
            )
            .into());
        }
        self.samples += b.rows;
        if b.rows > 0 {
            self.start = self.start.min(b.min_t);
            self.end = self.end.max(b.max_t);
            if !b.sorted || b.first_t < self.last_t {
                self.sorted = false;
            }
            self.last_t = b.last_t;
        }
        if self.sorted {
            for r in &b.boundary {
                self.sweep.push(r.node, r.t, r.w);
            }
            if let Some(p) = b.local_peak {
                self.local_peak = better(self.local_peak, Some(p));
            }
        }
        Ok(())
    }

    fn finish(self, path: &Path, header: &Header) -> Result<TraceSummary, Error> {
        let mut channels = BTreeMap::new();
        for (id, p) in &self.nodes {
            channels.insert(
                *id,
                ChannelSummary {
                    samples: p.samples,
                    first_ms: p.first.t,
                    last_ms: p.last.t,
                    joules: p.sum.joules(),
                    covered_ms: p.sum.covered_ms,
                    gaps: p.sum.gaps,
                    max_interval_ms: p.sum.max_dt_ms,
                    peak_watts: p.peak_w,
                    counter_joules: if p.counter_all {
                        Some(p.last.e - p.first.e)
                    } else {
                        None
                    },
                },
            );
        }
        let time_sorted = self.sorted && !self.sweep.unsorted;
        let (peak, at) = if time_sorted {
            better(self.sweep.finish_opt(), self.local_peak).unwrap_or((0.0, 0.0))
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

/// The larger peak; on a tie, the earlier instant.
fn better(a: Option<(f64, f64)>, b: Option<(f64, f64)>) -> Option<(f64, f64)> {
    match (a, b) {
        (None, x) | (x, None) => x,
        (Some(x), Some(y)) => {
            if y.0 > x.0 || (y.0 == x.0 && y.1 < x.1) {
                Some(y)
            } else {
                Some(x)
            }
        }
    }
}

/// Second pass for files whose rows are not in global time order (e.g. one block per node):
/// one sequential reader per channel, merged by time. Constant memory, one parse per channel.
fn peak_by_merge(
    path: &Path,
    channels: &BTreeMap<u32, ChannelSummary>,
    gap_limit: f64,
) -> Result<(f64, f64), Error> {
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
            heap.push(Head {
                t,
                node: r.0,
                w,
                reader: i,
            });
        }
    }
    let mut sweep = PeakSweep::new(gap_limit, None);
    while let Some(h) = heap.pop() {
        sweep.push(h.node, h.t, h.w);
        if let Some((t, w)) = next_of(&mut readers[h.reader])? {
            heap.push(Head {
                t,
                node: h.node,
                w,
                reader: h.reader,
            });
        }
    }
    Ok(sweep.finish_opt().unwrap_or((0.0, 0.0)))
}

/// Streaming peak of cluster power over sample instants, for rows in global time order.
///
/// At each distinct timestamp the cluster power is the sum over channels: a channel sampled at that
/// instant contributes its sample; one that is not is interpolated between its neighbouring samples
/// once its next sample arrives (if those are no further apart than the gap limit); a channel
/// before its first sample, after its last, or inside a gap contributes nothing. Only instants
/// inside `accept` (when given) count.
struct PeakSweep {
    gap_limit: f64,
    accept: Option<(f64, f64)>,
    prev: Vec<Option<(f64, f64)>>, // by dense channel index
    dense: NodeIndex,
    group_t: f64,
    group_sum: f64,
    /// Members of the current group with dense index < 64, as bits.
    group_bits: u64,
    /// Members with dense index ≥ 64.
    group_members: Vec<usize>,
    group_len: usize,
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
    fn new(gap_limit: f64, accept: Option<(f64, f64)>) -> Self {
        PeakSweep {
            gap_limit,
            accept,
            prev: Vec::new(),
            dense: NodeIndex::new(),
            group_t: f64::NEG_INFINITY,
            group_sum: 0.0,
            group_bits: 0,
            group_members: Vec::new(),
            group_len: 0,
            pending: VecDeque::new(),
            best: None,
            unsorted: false,
        }
    }

    #[inline]
    fn push(&mut self, node: u32, t: f64, w: f64) {
        let (c, _) = self.dense.get_or_insert(node, self.prev.len());
        self.push_dense(c, t, w);
    }

    /// `push` with the channel's dense index given by the caller (indices are assigned in order
    /// of first appearance: `c` is at most the number of channels seen so far).
    #[inline(always)]
    fn push_dense(&mut self, c: usize, t: f64, w: f64) {
        if self.unsorted {
            return;
        }
        if t < self.group_t {
            self.unsorted = true;
            return;
        }
        self.push_sorted(c, t, w);
    }

    /// `push_dense` for a caller that feeds timestamps that never decrease.
    #[inline(always)]
    fn push_sorted(&mut self, c: usize, t: f64, w: f64) {
        if t > self.group_t {
            self.close_group();
            self.group_t = t;
        }
        // The common case: a channel's first sample at this instant, nothing waiting.
        let bit = 1u64 << (c & 63);
        if c < 64 && c < self.prev.len() && self.group_bits & bit == 0 && self.pending.is_empty() {
            self.group_bits |= bit;
            self.group_len += 1;
            self.group_sum += w;
            self.prev[c] = Some((t, w));
            return;
        }
        self.push_general(c, t, w);
    }

    /// The rest of `push_sorted`: a new channel, a duplicate timestamp, waiting instants, or a
    /// channel index beyond 63.
    #[inline(never)]
    fn push_general(&mut self, c: usize, t: f64, w: f64) {
        if c >= self.prev.len() {
            self.prev.resize(c + 1, None);
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
        if self.is_member(c) {
            // A duplicate timestamp for this channel: the later sample replaces the earlier.
            if let Some((_, w_old)) = self.prev[c] {
                self.group_sum -= w_old;
            }
        } else {
            if c < 64 {
                self.group_bits |= 1 << c;
            } else {
                self.group_members.push(c);
            }
            self.group_len += 1;
        }
        self.group_sum += w;
        self.prev[c] = Some((t, w));
    }

    /// Whether the integrator's steady loop may stand in for this sweep: time order so far, the
    /// `n_chan` channels all known, none beyond index 63, nothing waiting.
    #[inline(always)]
    fn steady_ready(&self, n_chan: usize) -> bool {
        !self.unsorted
            && self.accept.is_some()
            && self.pending.is_empty()
            && self.group_members.is_empty()
            && self.prev.len() == n_chan
    }

    #[inline(always)]
    fn is_member(&self, c: usize) -> bool {
        if c < 64 {
            self.group_bits & (1 << c) != 0
        } else {
            self.group_members.contains(&c)
        }
    }

    #[inline(always)]
    fn close_group(&mut self) {
        if self.group_len == self.prev.len() && self.pending.is_empty() && self.group_len > 0 {
            // Every channel was sampled at this instant: nothing to interpolate.
            let (t, sum) = (self.group_t, self.group_sum);
            self.group_sum = 0.0;
            self.group_bits = 0;
            self.group_members.clear();
            self.group_len = 0;
            self.finalize(t, sum);
        } else {
            self.close_group_general();
        }
    }

    fn close_group_general(&mut self) {
        if self.group_len == 0 {
            return;
        }
        let t = self.group_t;
        let mut need = Vec::new();
        if self.group_len < self.prev.len() {
            for (c, p) in self.prev.iter().enumerate() {
                if let Some((pt, _)) = p {
                    if !self.is_member(c) && t - pt <= self.gap_limit {
                        need.push(c);
                    }
                }
            }
        }
        let sum = self.group_sum;
        self.group_sum = 0.0;
        self.group_bits = 0;
        self.group_members.clear();
        self.group_len = 0;
        if need.is_empty() && self.pending.is_empty() {
            self.finalize(t, sum);
            return;
        }
        self.pending.push_back(Pending { t, sum, need });
        // Channels silent for longer than the gap limit no longer cover older instants.
        let prev = &self.prev;
        let gap = self.gap_limit;
        for p in self.pending.iter_mut() {
            p.need
                .retain(|&c| prev[c].is_some_and(|(pt, _)| t - pt <= gap));
        }
        while self.pending.front().is_some_and(|p| p.need.is_empty()) {
            let p = self.pending.pop_front().expect("front exists");
            self.finalize(p.t, p.sum);
        }
    }

    #[inline]
    fn finalize(&mut self, t: f64, sum: f64) {
        if let Some((lo, hi)) = self.accept {
            if t < lo || t > hi {
                return;
            }
        }
        if self.best.is_none_or(|(b, _)| sum > b) {
            self.best = Some((sum, t));
        }
    }

    fn finish_opt(mut self) -> Option<(f64, f64)> {
        self.close_group();
        while let Some(p) = self.pending.pop_front() {
            self.finalize(p.t, p.sum);
        }
        self.best
    }
}

/// The whole-file sequential peak (the fallback pass), exposed to tests as the reference.
#[cfg(test)]
pub(super) fn peak_by_merge_for_tests(
    path: &Path,
    channels: &BTreeMap<u32, ChannelSummary>,
    gap_limit: f64,
) -> Result<(f64, f64), Error> {
    peak_by_merge(path, channels, gap_limit)
}
