//! Writing trace CSV files while recording, so that an interruption loses at most the last flush
//! interval.

use super::parse::REQUIRED_COLUMNS;
use epi_core::error::Error;
use epi_core::sample::PowerSample;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Writes samples as trace CSV rows, flushing to the OS at least every `flush_every`.
///
/// Columns: the six of the spec, then `utc_ms,source_t_ms,energy_j`. Numbers are written in their
/// shortest exact form, so reading the file back gives the same values bit for bit.
pub struct TraceWriter {
    path: PathBuf,
    out: BufWriter<File>,
    last_flush: Instant,
    flush_every: Duration,
    rows: u64,
}

impl TraceWriter {
    /// Creates (truncates) `path` and writes the header.
    pub fn create(path: impl AsRef<Path>, flush_every: Duration) -> Result<TraceWriter, Error> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut out = BufWriter::with_capacity(64 * 1024, file);
        writeln!(
            out,
            "{},utc_ms,source_t_ms,energy_j",
            REQUIRED_COLUMNS.join(",")
        )
        .map_err(|e| Error::io(&path, e))?;
        out.flush().map_err(|e| Error::io(&path, e))?;
        Ok(TraceWriter {
            path,
            out,
            last_flush: Instant::now(),
            flush_every,
            rows: 0,
        })
    }

    /// Appends samples; flushes when the interval has passed.
    pub fn write(&mut self, samples: &[PowerSample]) -> Result<(), Error> {
        for s in samples {
            write_row(&mut self.out, s).map_err(|e| Error::io(&self.path, e))?;
            self.rows += 1;
        }
        if self.last_flush.elapsed() >= self.flush_every {
            self.flush()?;
        }
        Ok(())
    }

    /// Flushes buffered rows to the file.
    pub fn flush(&mut self) -> Result<(), Error> {
        self.out.flush().map_err(|e| Error::io(&self.path, e))?;
        self.last_flush = Instant::now();
        Ok(())
    }

    /// Rows written.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Flushes and closes, syncing to disk.
    pub fn finish(mut self) -> Result<PathBuf, Error> {
        self.flush()?;
        self.out
            .get_ref()
            .sync_all()
            .map_err(|e| Error::io(&self.path, e))?;
        Ok(self.path)
    }
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

fn write_row(out: &mut impl Write, s: &PowerSample) -> std::io::Result<()> {
    writeln!(
        out,
        "{},{},{},{},{},{},{},{},{}",
        s.t_ms,
        s.channel,
        s.watts,
        opt(s.volts),
        opt(s.amps),
        opt(s.power_factor),
        if s.host_utc_ms != 0 {
            s.host_utc_ms.to_string()
        } else {
            String::new()
        },
        opt(s.source_t_ms),
        opt(s.energy_j),
    )
}
