//! Target `sse`: the Server-Sent Events reader of streamed replies (`epi_backends::sse`). The
//! payloads of a stream must not depend on how it was cut into chunks: the whole stream at once,
//! a few bytes at a time, and chunks of the lengths the input picks all give the same events, and
//! the same as a plain line-by-line reading of the event-stream format.
//!
//! Input: one byte picking the chunk lengths, then the stream's bytes.

use epi_backends::sse::SseReader;

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let whole = {
        let mut r = SseReader::new();
        let mut out = r.push(stream);
        out.extend(r.finish());
        out
    };
    assert_eq!(
        whole,
        reference(stream),
        "the reader and a plain reading disagree"
    );
    // One byte at a time (every line cut everywhere); for long streams, pieces of 1 to 8 bytes
    // (the reader rescans its pending bytes on each push: bytes one by one would be quadratic).
    let small = {
        let mut r = SseReader::new();
        let mut out = Vec::new();
        let step = if stream.len() <= 512 { 1 } else { 8 };
        for (i, piece) in stream.chunks(step).enumerate() {
            let cut = (i % step + 1).min(piece.len());
            out.extend(r.push(&piece[..cut]));
            out.extend(r.push(&piece[cut..]));
        }
        out.extend(r.finish());
        out
    };
    assert_eq!(small, whole, "in pieces of a few bytes");
    let chunked = {
        let mut r = SseReader::new();
        let mut out = Vec::new();
        let mut rest = stream;
        let mut k = usize::from(cut);
        while !rest.is_empty() {
            let n = (k % 97 + 1).min(rest.len());
            out.extend(r.push(&rest[..n]));
            rest = &rest[n..];
            k = k.wrapping_mul(31).wrapping_add(7);
        }
        out.extend(r.finish());
        out
    };
    assert_eq!(chunked, whole, "in chunks");
}

/// The event-stream format read plainly: lines end at `\n` (a `\r` before it is dropped); a blank
/// line ends an event; `:` starts a comment; `data:` lines (one space after the colon dropped)
/// make the event's payload, joined with `\n`; the end of the stream ends the last event.
fn reference(stream: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut data: Option<Vec<String>> = None;
    let mut lines: Vec<&[u8]> = stream.split(|&b| b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if let Some(d) = data.take() {
                out.push(d.join("\n"));
            }
            continue;
        }
        if line[0] == b':' {
            continue;
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = text.split_once(':').unwrap_or((&text, ""));
        if field == "data" {
            let value = value.strip_prefix(' ').unwrap_or(value);
            data.get_or_insert_with(Vec::new).push(value.to_string());
        }
    }
    if let Some(d) = data {
        out.push(d.join("\n"));
    }
    out
}
