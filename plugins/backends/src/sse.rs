//! A small Server-Sent Events reader for streamed completions.
//!
//! Tolerates what real servers send: `\n\n` or `\r\n\r\n` between events, `data:` with or without
//! a space, comment lines, and a last event with no blank line after it (dllama-api ends its stream
//! with `data: [DONE]` and closes the connection).

use epi_core::lines::{trim_cr, LineSplitter, Overlong, Piece};

/// Splits a byte stream into the `data` payloads of complete events (lines framed by the one line
/// splitter, [`epi_core::lines`]).
#[derive(Debug)]
pub struct SseReader {
    lines: LineSplitter,
    data: Vec<String>,
    has_data: bool,
}

impl Default for SseReader {
    fn default() -> Self {
        SseReader {
            // No limit: an event's data line is as long as the server makes it.
            lines: LineSplitter::new(usize::MAX, Overlong::Cut),
            data: Vec::new(),
            has_data: false,
        }
    }
}

impl SseReader {
    /// A reader with nothing buffered.
    pub fn new() -> SseReader {
        SseReader::default()
    }

    /// Feeds a chunk; returns the payloads of the events it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        let mut complete: Vec<Vec<u8>> = Vec::new();
        self.lines.feed(chunk, |p| match p {
            Piece::Line(l) | Piece::Cut(l) => complete.push(trim_cr(l).to_vec()),
            Piece::TooLong => {}
        });
        let mut out = Vec::new();
        for line in complete {
            self.line(&line, &mut out);
        }
        out
    }

    /// Ends the stream: a last line without a newline and a last event without a blank line are
    /// completed here.
    pub fn finish(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(rest) = self.lines.finish() {
            self.line(trim_cr(&rest), &mut out);
        }
        self.dispatch(&mut out);
        out
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<String>) {
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line.starts_with(b":") {
            return; // comment
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = match text.split_once(':') {
            Some((f, v)) => (f.to_string(), v.strip_prefix(' ').unwrap_or(v).to_string()),
            None => (text.to_string(), String::new()),
        };
        if field == "data" {
            self.data.push(value);
            self.has_data = true;
        }
    }

    fn dispatch(&mut self, out: &mut Vec<String>) {
        if self.has_data {
            out.push(self.data.join("\n"));
        }
        self.data.clear();
        self.has_data = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_and_crlf() {
        let mut r = SseReader::new();
        let mut got = r.push(b"data: {\"a\":1}\r\n\r\ndata: {\"b\"");
        got.extend(r.push(b":2}\r\n\r\n: comment\n\ndata:[DONE]"));
        got.extend(r.finish());
        assert_eq!(got, vec!["{\"a\":1}", "{\"b\":2}", "[DONE]"]);
    }

    #[test]
    fn multi_line_data_is_joined() {
        let mut r = SseReader::new();
        let got = r.push(b"data: a\ndata: b\n\n");
        assert_eq!(got, vec!["a\nb"]);
        assert!(r.finish().is_empty());
    }
}
