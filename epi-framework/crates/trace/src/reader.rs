//! A sequential, streaming reader of trace CSV rows (constant memory), for replay and plotting.

use super::parse::{parse_row, Header, Row};
use epi_core::error::{Error, InputError, Location};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// Reads a trace file row by row, validating each row.
pub struct TraceReader {
    path: PathBuf,
    reader: BufReader<File>,
    header: Header,
    line_no: u64,
    buf: Vec<u8>,
}

impl TraceReader {
    /// Opens `path` and reads its header.
    pub fn open(path: impl AsRef<Path>) -> Result<TraceReader, Error> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let mut reader = BufReader::with_capacity(256 * 1024, file);
        let mut buf = Vec::new();
        reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| Error::io(&path, e))?;
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        let header = Header::parse(&path, &buf)?;
        Ok(TraceReader {
            path,
            reader,
            header,
            line_no: 1,
            buf,
        })
    }

    /// The file's columns.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The next row and its 1-based line number; `None` at the end. Blank lines are skipped.
    pub fn next_row(&mut self) -> Result<Option<(u64, Row)>, Error> {
        loop {
            self.buf.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut self.buf)
                .map_err(|e| Error::io(&self.path, e))?;
            if n == 0 {
                return Ok(None);
            }
            self.line_no += 1;
            let mut line: &[u8] = &self.buf;
            let terminated = line.last() == Some(&b'\n');
            if terminated {
                line = &line[..line.len() - 1];
            }
            if line.is_empty() || line == b"\r" {
                continue;
            }
            let parsed = if terminated {
                parse_row(&self.header, line)
            } else {
                super::parse::check_unterminated_last_line(&self.header, line)
                    .and_then(|_| parse_row(&self.header, line))
            };
            return match parsed {
                Ok(row) => Ok(Some((self.line_no, row))),
                Err(e) => Err(Error::Input(InputError::new(
                    Location::file(&self.path)
                        .at_line(self.line_no)
                        .field(e.field),
                    e.message,
                ))),
            };
        }
    }
}

impl Iterator for TraceReader {
    type Item = Result<(u64, Row), Error>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_row().transpose()
    }
}
