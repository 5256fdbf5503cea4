//! Framing: the serial byte stream cut into lines, a line longer than `max_line_bytes` without a
//! newline reported once and skipped up to the next newline.

/// Splits a byte stream into lines, bounding the length of a line.
#[derive(Debug, Default)]
pub(crate) struct LineSplitter {
    buf: Vec<u8>,
    /// Inside an over-long line: drop bytes until the next newline.
    discarding: bool,
}

/// What the splitter produced.
#[derive(Debug, PartialEq)]
pub(crate) enum Framed<'a> {
    Line(&'a [u8]),
    TooLong,
}

impl LineSplitter {
    /// Feeds `data` and calls `f` with each complete line (and each over-long line).
    pub fn feed(&mut self, data: &[u8], max_line: usize, mut f: impl FnMut(Framed<'_>)) {
        let mut rest = data;
        while !rest.is_empty() {
            match memchr_nl(rest) {
                Some(p) => {
                    let (head, tail) = (&rest[..p], &rest[p + 1..]);
                    if self.discarding {
                        self.discarding = false;
                    } else if self.buf.is_empty() {
                        if head.len() > max_line {
                            f(Framed::TooLong);
                        } else {
                            f(Framed::Line(head));
                        }
                    } else {
                        self.buf.extend_from_slice(head);
                        if self.buf.len() > max_line {
                            f(Framed::TooLong);
                        } else {
                            f(Framed::Line(&self.buf));
                        }
                        self.buf.clear();
                    }
                    rest = tail;
                }
                None => {
                    if !self.discarding {
                        self.buf.extend_from_slice(rest);
                        if self.buf.len() > max_line {
                            f(Framed::TooLong);
                            self.buf.clear();
                            self.discarding = true;
                        }
                    }
                    rest = &[];
                }
            }
        }
    }

    /// Forgets a partial line (the connection dropped).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.discarding = false;
    }
}

fn memchr_nl(s: &[u8]) -> Option<usize> {
    s.iter().position(|&b| b == b'\n')
}
