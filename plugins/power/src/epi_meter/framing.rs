//! Framing: the serial byte stream cut into lines by the one line splitter
//! ([`epi_core::lines`]); a line longer than `max_line_bytes` is reported once as a bad line and
//! skipped up to the next newline. A partial line is forgotten when the port is lost
//! ([`LineSplitter::reset`]).

use super::stream::MeterStream;
use crate::host_time::Arrival;
use epi_core::lines::{LineSplitter, Overlong, Piece};
use epi_core::sample::PowerSample;

/// The splitter for lines of at most `max_line` bytes.
pub(crate) fn splitter(max_line: usize) -> LineSplitter {
    LineSplitter::new(max_line, Overlong::Skip)
}

/// Feeds `data`, arrived at `at`, through `splitter` into `stream`; samples go to `out`.
pub(crate) fn feed(
    splitter: &mut LineSplitter,
    stream: &mut MeterStream,
    data: &[u8],
    at: Arrival,
    out: &mut Vec<PowerSample>,
) {
    let max = splitter.max();
    splitter.feed(data, |piece| match piece {
        Piece::Line(line) => stream.line(line, at, out),
        // `Cut` is not produced under `Overlong::Skip`.
        Piece::TooLong | Piece::Cut(_) => stream.too_long(at, max),
    });
}
