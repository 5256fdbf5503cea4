//! Target `result_json`: benchmark result JSON (`BenchmarkResult::from_json`, the input of
//! `epi calculate`) and EPI result JSON (`EpiResult::from_json`, what `validate`, `export` and the
//! plots read). A file is either refused with an input error naming it, or read; what was read is
//! written back (`to_json`) and must read back equal, and a benchmark must pass its own checks again.
//!
//! Input: one byte (even: benchmark, odd: EPI result), then the file's bytes.

use crate::support::{scratch, ScratchFile};
use epi_framework::error::Error;
use epi_framework::{BenchmarkResult, EpiResult};
use std::path::Path;

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let f = ScratchFile::with("result.json", body);
    let back = ScratchFile(scratch("result-back.json"));
    if kind % 2 == 0 {
        if let Some(b) = read("benchmark", &f.0, body, |p| BenchmarkResult::from_json(p)) {
            b.to_json(&back.0)
                .unwrap_or_else(|e| panic!("benchmark: writing what was read: {e}"));
            let again = BenchmarkResult::from_json(&back.0)
                .unwrap_or_else(|e| panic!("benchmark: what was written does not read back: {e}"));
            assert_eq!(again, b, "benchmark: round trip");
        }
    } else if let Some(r) = read("EPI result", &f.0, body, |p| EpiResult::from_json(p)) {
        r.to_json(&back.0)
            .unwrap_or_else(|e| panic!("EPI result: writing what was read: {e}"));
        let again = EpiResult::from_json(&back.0)
            .unwrap_or_else(|e| panic!("EPI result: what was written does not read back: {e}"));
        assert_eq!(again, r, "EPI result: round trip");
    }
}

/// Reads `path` with `read`: `Some` when accepted; `None` after checking that a refusal is an input
/// error naming the file (or, for bytes that are not UTF-8, an I/O error naming it).
fn read<T>(
    what: &str,
    path: &Path,
    body: &[u8],
    read: impl Fn(&Path) -> Result<T, Error>,
) -> Option<T> {
    match read(path) {
        Ok(v) => Some(v),
        Err(Error::Input(e)) => {
            assert_eq!(
                e.location.file.as_deref(),
                Some(path),
                "{what}: the error does not name the file: {e}"
            );
            assert!(!e.message.is_empty(), "{what}: an empty message: {e}");
            None
        }
        Err(Error::Io { path: p, source }) if std::str::from_utf8(body).is_err() && p == path => {
            assert_eq!(
                source.kind(),
                std::io::ErrorKind::InvalidData,
                "{what}: {source}"
            );
            None
        }
        Err(e) => panic!("{what}: an error of the wrong kind: {e:?}"),
    }
}
