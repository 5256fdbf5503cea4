//! Line framing of a byte stream that arrives in chunks (a serial port, an SSH channel): the one
//! line splitter of epi-bench.
//!
//! [`LineSplitter::feed`] takes each chunk as it arrives and hands over every line it completes,
//! without its `\n`, as bytes: a line split across chunks (a multi-byte UTF-8 character included)
//! is joined before it is handed over, and nothing is decoded, so non-UTF-8 bytes pass through for
//! the caller to refuse ([`std::str::from_utf8`]) or replace ([`String::from_utf8_lossy`]). A `\r`
//! before the `\n` is kept; [`trim_cr`] removes it.
//!
//! The bytes held for an unfinished line are bounded by a maximum; what happens to a line longer
//! than that is the caller's choice ([`Overlong`]). Nothing here fails.

/// What [`LineSplitter`] does with a line longer than its maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlong {
    /// Report it once as [`Piece::TooLong`] and drop its bytes up to the next newline: for lines
    /// that are only useful whole (a JSON record). A complete line longer than the maximum is
    /// reported the same way.
    Skip,
    /// When a chunk leaves more than the maximum held without a newline, hand the bytes held over
    /// as a [`Piece::Cut`] and go on with the rest of the line as a new one: for text shown as it
    /// arrives (a remote process's output). A line whose newline arrives in the chunk that
    /// completes it is handed over whole, whatever its length; the bytes held stay below the
    /// maximum plus one chunk.
    Cut,
}

/// What [`LineSplitter::feed`] hands over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    /// A complete line, without its `\n` (a `\r` before it is kept).
    Line(&'a [u8]),
    /// A line longer than the maximum, dropped ([`Overlong::Skip`] only).
    TooLong,
    /// The start of a line longer than the maximum, handed over as it stands; the rest of the line
    /// follows as another piece ([`Overlong::Cut`] only).
    Cut(&'a [u8]),
}

/// Splits a byte stream fed in chunks into lines (see the [module](self) documentation).
#[derive(Debug, Clone)]
pub struct LineSplitter {
    /// The unfinished line.
    buf: Vec<u8>,
    /// Inside an over-long line ([`Overlong::Skip`]): drop bytes up to the next newline.
    discarding: bool,
    max: usize,
    overlong: Overlong,
}

impl LineSplitter {
    /// A splitter holding at most `max` bytes of an unfinished line, treating longer lines as
    /// `overlong` says.
    pub fn new(max: usize, overlong: Overlong) -> LineSplitter {
        LineSplitter {
            buf: Vec::new(),
            discarding: false,
            max,
            overlong,
        }
    }

    /// The most bytes of an unfinished line held.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Feeds one chunk and calls `f` with each piece it completes, in order.
    pub fn feed(&mut self, data: &[u8], mut f: impl FnMut(Piece<'_>)) {
        let skip = self.overlong == Overlong::Skip;
        let mut rest = data;
        while let Some(p) = rest.iter().position(|&b| b == b'\n') {
            let head = &rest[..p];
            rest = &rest[p + 1..];
            if self.discarding {
                self.discarding = false;
                continue;
            }
            let line: &[u8] = if self.buf.is_empty() {
                head
            } else {
                self.buf.extend_from_slice(head);
                &self.buf
            };
            if skip && line.len() > self.max {
                f(Piece::TooLong);
            } else {
                f(Piece::Line(line));
            }
            self.buf.clear();
        }
        if self.discarding || rest.is_empty() {
            return;
        }
        self.buf.extend_from_slice(rest);
        if self.buf.len() > self.max {
            if skip {
                f(Piece::TooLong);
                self.discarding = true;
            } else {
                f(Piece::Cut(&self.buf));
            }
            self.buf.clear();
        }
    }

    /// Ends the stream: the last line when it had no newline (`None` when nothing is held), and
    /// the splitter is empty again.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        self.discarding = false;
        if self.buf.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.buf))
        }
    }

    /// Forgets an unfinished line (the connection dropped; what comes next starts a new line).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.discarding = false;
    }
}

/// `line` without one trailing `\r` (a `\r\n` line ending).
pub fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` and writes each piece as text (`<too long>` for [`Piece::TooLong`], `<cut>`
    /// before a [`Piece::Cut`]), then the rest from `finish` as `<end>…`.
    fn run(max: usize, overlong: Overlong, chunks: &[&[u8]]) -> Vec<String> {
        let mut s = LineSplitter::new(max, overlong);
        let mut got = Vec::new();
        for c in chunks {
            s.feed(c, |p| {
                got.push(match p {
                    Piece::Line(l) => String::from_utf8_lossy(l).into_owned(),
                    Piece::TooLong => "<too long>".into(),
                    Piece::Cut(l) => format!("<cut>{}", String::from_utf8_lossy(l)),
                })
            });
        }
        if let Some(rest) = s.finish() {
            got.push(format!("<end>{}", String::from_utf8_lossy(&rest)));
        }
        got
    }

    #[test]
    fn lines_are_joined_across_chunks() {
        for overlong in [Overlong::Skip, Overlong::Cut] {
            assert_eq!(
                run(64, overlong, &[b"ab", b"c\nde\n", b"", b"f", b"\n\n", b"g"]),
                ["abc", "de", "f", "", "<end>g"]
            );
            // One byte at a time.
            let text = b"one\ntwo\n\nthree\n";
            let chunks: Vec<&[u8]> = text.chunks(1).collect();
            assert_eq!(run(64, overlong, &chunks), ["one", "two", "", "three"]);
        }
    }

    #[test]
    fn skip_gives_the_same_pieces_however_the_stream_is_cut() {
        let text: &[u8] = b"{\"a\":1}\r\n\nlonger than ten\nshort\n0123456789\n01234567890\ntail";
        let whole = run(10, Overlong::Skip, &[text]);
        assert_eq!(
            whole,
            [
                "{\"a\":1}\r",
                "",
                "<too long>",
                "short",
                "0123456789",
                "<too long>",
                "<end>tail"
            ]
        );
        for i in 0..=text.len() {
            for j in i..=text.len() {
                let (a, rest) = text.split_at(i);
                let (b, c) = rest.split_at(j - i);
                assert_eq!(
                    run(10, Overlong::Skip, &[a, b, c]),
                    whole,
                    "cut at {i} and {j}"
                );
            }
        }
    }

    #[test]
    fn cr_is_kept_for_the_caller_to_trim() {
        let got = run(64, Overlong::Cut, &[b"a\r\nb\r", b"\n\r\r\nc\r"]);
        assert_eq!(got, ["a\r", "b\r", "\r\r", "<end>c\r"]);
        assert_eq!(trim_cr(b"a\r"), b"a");
        assert_eq!(trim_cr(b"\r\r"), b"\r");
        assert_eq!(trim_cr(b"a"), b"a");
        assert_eq!(trim_cr(b""), b"");
    }

    #[test]
    fn bytes_are_not_decoded() {
        // "é" (C3 A9) split across chunks, and bytes that are not UTF-8 at all.
        let mut s = LineSplitter::new(64, Overlong::Skip);
        let mut got: Vec<Vec<u8>> = Vec::new();
        for c in [&b"caf\xc3"[..], b"\xa9\n\xff\xfe", b"\x00\n"] {
            s.feed(c, |p| {
                if let Piece::Line(l) = p {
                    got.push(l.to_vec())
                }
            });
        }
        assert_eq!(got, [b"caf\xc3\xa9".to_vec(), b"\xff\xfe\x00".to_vec()]);
        assert_eq!(String::from_utf8_lossy(&got[0]), "café");
    }

    #[test]
    fn skip_reports_an_over_long_line_once_and_drops_it() {
        let got = run(
            8,
            Overlong::Skip,
            &[
                b"ab",
                b"c\nde\n",
                b"0123456789",
                b"0123\nok\n",
                b"0123456789abc\nz\n",
            ],
        );
        assert_eq!(got, ["abc", "de", "<too long>", "ok", "<too long>", "z"]);
        // Exactly the maximum is a line; one more byte is not, held or complete.
        assert_eq!(
            run(4, Overlong::Skip, &[b"abcd\n", b"ab", b"cd\n"]),
            ["abcd", "abcd"]
        );
        assert_eq!(run(4, Overlong::Skip, &[b"abcde\n"]), ["<too long>"]);
        assert_eq!(run(4, Overlong::Skip, &[b"ab", b"cde\n"]), ["<too long>"]);
        // Dropping goes on across chunks up to the newline, and `finish` has nothing left.
        assert_eq!(
            run(
                4,
                Overlong::Skip,
                &[b"abcdef", b"gh", b"ij\nk\n", b"abcdefgh"]
            ),
            ["<too long>", "k", "<too long>"]
        );
    }

    #[test]
    fn cut_hands_over_what_is_held_and_goes_on() {
        let got = run(4, Overlong::Cut, &[b"abcdef", b"gh", b"ij\nk\n"]);
        assert_eq!(got, ["<cut>abcdef", "ghij", "k"]);
        // A line completed within its chunk is whole, whatever its length; only the held rest is
        // bounded. The cut piece keeps a `\r` it ends with.
        let got = run(4, Overlong::Cut, &[b"abcdefgh\nxyz", b"uvw\r", b"\n"]);
        assert_eq!(got, ["abcdefgh", "<cut>xyzuvw\r", ""]);
    }

    #[test]
    fn reset_forgets_the_unfinished_line() {
        for overlong in [Overlong::Skip, Overlong::Cut] {
            let mut s = LineSplitter::new(4, overlong);
            let mut got = Vec::new();
            s.feed(b"ab", |_| unreachable!());
            s.reset();
            s.feed(b"cd\n", |p| got.push(format!("{p:?}")));
            s.feed(b"abcdefgh", |_| {});
            s.reset();
            s.feed(b"x\n", |p| got.push(format!("{p:?}")));
            assert_eq!(got, ["Line([99, 100])", "Line([120])"]);
            assert_eq!(s.finish(), None);
        }
    }
}
