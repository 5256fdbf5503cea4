//! Reading one block: the lines that start in the block's byte range, by positional reads in
//! pieces (or from the memory map), parsed and integrated as they are read. An I/O error is kept in
//! the block (the merger reports it in order); parse errors are the line parsers'.

use super::integrator::BlockIntegrator;
use super::lines::{parse_lines, Piece};
use super::mmap::Mapping;
use super::Block;
use crate::parse::{parse_row, Header};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// A worker's reusable read buffer (no allocation or page faults per block).
#[derive(Default)]
pub(super) struct Scratch {
    buf: Vec<u8>,
}

/// Reads the lines that start in `[start, end)`, and parses and integrates each row as it is read
/// (no row is stored, except the few near the block's edges that the merger needs).
#[allow(clippy::too_many_arguments)]
pub(super) fn process_block(
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
    if header.has(crate::parse::Column::EnergyCounter) {
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
    let pad = crate::parse::SIMD_PADDING;
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
