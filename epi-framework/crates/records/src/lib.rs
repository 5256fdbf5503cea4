//! Per-query records, written as JSON Lines (`records.jsonl`) and as an Arrow IPC file
//! (`records.arrow`) while a run goes on, so an interrupted run — Ctrl-C, a fault, `kill -9` —
//! leaves every finished query on disk, readable: every JSON line as soon as its query ends, and
//! the Arrow file complete (footer included) after each batch ([`arrow_file`]). One schema for
//! `epi eval` and `epi profile`; the columns are documented in `docs/formats.md`.
//!
//! Failures are I/O and encoding errors ([`Error`]), naming the file.
#![deny(missing_docs)]

pub mod arrow_file;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, ListBuilder, StringBuilder, UInt32Builder,
    UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow_file::ArrowFileAppender;
use epi_core::error::Error;
pub use epi_core::records::{read_jsonl_records, QueryRecord, RECORDS_ARROW, RECORDS_JSONL};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The Arrow schema of the records.
pub fn schema() -> SchemaRef {
    let list_f64 = DataType::List(Arc::new(Field::new("item", DataType::Float64, true)));
    let list_bool = DataType::List(Arc::new(Field::new("item", DataType::Boolean, true)));
    let list_str = DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)));
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("suite", DataType::Utf8, false),
        Field::new("doc_id", DataType::Utf8, false),
        Field::new("repetition", DataType::UInt32, true),
        Field::new("subject", DataType::Utf8, true),
        Field::new("scoring_mode", DataType::Utf8, false),
        Field::new("context", DataType::Utf8, false),
        Field::new("choices", list_str, true),
        Field::new("choice_logprobs", list_f64, true),
        Field::new("choice_exact", list_bool, true),
        Field::new("prediction", DataType::UInt32, true),
        Field::new("prediction_norm", DataType::UInt32, true),
        Field::new("gold", DataType::UInt32, true),
        Field::new("correct", DataType::Boolean, true),
        Field::new("correct_norm", DataType::Boolean, true),
        Field::new("generated_text", DataType::Utf8, true),
        Field::new("tokens_in", DataType::UInt64, true),
        Field::new("tokens_out", DataType::UInt64, true),
        Field::new("cached_tokens", DataType::UInt64, true),
        Field::new("requests", DataType::UInt32, false),
        Field::new("start_s", DataType::Float64, false),
        Field::new("end_s", DataType::Float64, false),
        Field::new("latency_s", DataType::Float64, false),
        Field::new("ttft_s", DataType::Float64, true),
        Field::new("energy_j", DataType::Float64, true),
        Field::new("energy_net_j", DataType::Float64, true),
        Field::new("energy_coverage", DataType::Float64, true),
        Field::new("error", DataType::Utf8, true),
    ]))
}

fn to_batch(
    schema: &SchemaRef,
    recs: &[QueryRecord],
) -> Result<RecordBatch, arrow::error::ArrowError> {
    macro_rules! strings {
        ($f:expr) => {{
            let mut b = StringBuilder::new();
            for r in recs {
                b.append_option($f(r));
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    macro_rules! prim {
        ($builder:ty, $f:expr) => {{
            let mut b = <$builder>::new();
            for r in recs {
                b.append_option($f(r));
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    let mut choices = ListBuilder::new(StringBuilder::new());
    let mut lps = ListBuilder::new(Float64Builder::new());
    let mut exact = ListBuilder::new(BooleanBuilder::new());
    for r in recs {
        for c in &r.choices {
            choices.values().append_value(c);
        }
        choices.append(true);
        for v in &r.choice_logprobs {
            lps.values().append_value(*v);
        }
        lps.append(true);
        for v in &r.choice_exact {
            exact.values().append_value(*v);
        }
        exact.append(true);
    }
    let cols: Vec<ArrayRef> = vec![
        strings!(|r: &QueryRecord| Some(r.run_id.clone())),
        strings!(|r: &QueryRecord| Some(r.suite.clone())),
        strings!(|r: &QueryRecord| Some(r.doc_id.clone())),
        prim!(UInt32Builder, |r: &QueryRecord| r.repetition),
        strings!(|r: &QueryRecord| r.subject.clone()),
        strings!(|r: &QueryRecord| Some(r.scoring_mode.clone())),
        strings!(|r: &QueryRecord| Some(r.context.clone())),
        Arc::new(choices.finish()),
        Arc::new(lps.finish()),
        Arc::new(exact.finish()),
        prim!(UInt32Builder, |r: &QueryRecord| r.prediction),
        prim!(UInt32Builder, |r: &QueryRecord| r.prediction_norm),
        prim!(UInt32Builder, |r: &QueryRecord| r.gold),
        prim!(BooleanBuilder, |r: &QueryRecord| r.correct),
        prim!(BooleanBuilder, |r: &QueryRecord| r.correct_norm),
        strings!(|r: &QueryRecord| r.generated_text.clone()),
        prim!(UInt64Builder, |r: &QueryRecord| r.tokens_in),
        prim!(UInt64Builder, |r: &QueryRecord| r.tokens_out),
        prim!(UInt64Builder, |r: &QueryRecord| r.cached_tokens),
        prim!(UInt32Builder, |r: &QueryRecord| Some(r.requests)),
        prim!(Float64Builder, |r: &QueryRecord| Some(r.start_s)),
        prim!(Float64Builder, |r: &QueryRecord| Some(r.end_s)),
        prim!(Float64Builder, |r: &QueryRecord| Some(r.latency_s)),
        prim!(Float64Builder, |r: &QueryRecord| r.ttft_s),
        prim!(Float64Builder, |r: &QueryRecord| r.energy_j),
        prim!(Float64Builder, |r: &QueryRecord| r.energy_net_j),
        prim!(Float64Builder, |r: &QueryRecord| r.energy_coverage),
        strings!(|r: &QueryRecord| r.error.clone()),
    ];
    RecordBatch::try_new(schema.clone(), cols)
}

/// Writes records to `<dir>/records.jsonl` (one line per record, flushed at once) and
/// `<dir>/records.arrow` (an Arrow IPC file, complete after every batch).
///
/// A batch goes to the Arrow file when `batch_size` records are pending, or on the first record
/// that finds the last batch older than the flush interval (1 s, growing by 10 ms per batch
/// already written, so the footer rewritten at each batch stays a small share of the writes on
/// runs of hours), and at [`flush`](RecordSink::flush) / [`finish`](RecordSink::finish).
pub struct RecordSink {
    jsonl_path: PathBuf,
    arrow_path: PathBuf,
    jsonl: BufWriter<File>,
    arrow: ArrowFileAppender,
    schema: SchemaRef,
    pending: Vec<QueryRecord>,
    batch_size: usize,
    written: u64,
    batches: u32,
    last_flush: Instant,
}

impl RecordSink {
    /// Creates the two files in `dir`.
    pub fn create(dir: impl AsRef<Path>, batch_size: usize) -> Result<RecordSink, Error> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let jsonl_path = dir.join(RECORDS_JSONL);
        let arrow_path = dir.join(RECORDS_ARROW);
        let jsonl =
            BufWriter::new(File::create(&jsonl_path).map_err(|e| Error::io(&jsonl_path, e))?);
        let schema = schema();
        let arrow = ArrowFileAppender::create(&arrow_path, &schema)
            .map_err(|e| Error::Invalid(format!("{}: {e}", arrow_path.display())))?;
        Ok(RecordSink {
            jsonl_path,
            arrow_path,
            jsonl,
            arrow,
            schema,
            pending: Vec::new(),
            batch_size: batch_size.max(1),
            written: 0,
            batches: 0,
            last_flush: Instant::now(),
        })
    }

    /// Appends one record.
    pub fn push(&mut self, rec: QueryRecord) -> Result<(), Error> {
        let line = serde_json::to_string(&rec).map_err(|e| Error::Invalid(e.to_string()))?;
        writeln!(self.jsonl, "{line}").map_err(|e| Error::io(&self.jsonl_path, e))?;
        self.jsonl
            .flush()
            .map_err(|e| Error::io(&self.jsonl_path, e))?;
        self.pending.push(rec);
        self.written += 1;
        let interval = Duration::from_secs(1) + Duration::from_millis(10) * self.batches;
        if self.pending.len() >= self.batch_size || self.last_flush.elapsed() >= interval {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes pending records as an Arrow batch (the file is complete afterwards).
    pub fn flush(&mut self) -> Result<(), Error> {
        self.last_flush = Instant::now();
        if self.pending.is_empty() {
            return Ok(());
        }
        let err = |e: arrow::error::ArrowError| {
            Error::Invalid(format!("{}: {e}", self.arrow_path.display()))
        };
        let batch = to_batch(&self.schema, &self.pending).map_err(err)?;
        self.arrow.append(&batch).map_err(err)?;
        self.pending.clear();
        self.batches += 1;
        Ok(())
    }

    /// Records written.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Flushes and closes both files.
    pub fn finish(mut self) -> Result<(PathBuf, PathBuf), Error> {
        self.flush()?;
        Ok((self.jsonl_path, self.arrow_path))
    }
}

/// Replaces `<dir>/records.jsonl` and `<dir>/records.arrow` with `records` (each file written
/// beside its target and renamed over it, so a reader sees the old or the new file, never half
/// of one). Used to add the attributed energy once a run's trace is complete.
pub fn rewrite_records(dir: &Path, records: &[QueryRecord]) -> Result<(), Error> {
    let tmp = dir.join(".records.rewrite");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    let mut sink = RecordSink::create(&tmp, 4096)?;
    for r in records {
        sink.push(r.clone())?;
    }
    let (jsonl, arrow) = sink.finish()?;
    for (from, name) in [(jsonl, RECORDS_JSONL), (arrow, RECORDS_ARROW)] {
        let to = dir.join(name);
        std::fs::rename(&from, &to).map_err(|e| Error::io(&to, e))?;
    }
    std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    Ok(())
}

/// Reads the records' Arrow file back: every complete batch, with or without its footer (an
/// interrupted run). Also reads the Arrow IPC stream `records.arrows` of earlier versions.
pub fn read_arrow_records(path: &Path) -> Result<Vec<RecordBatch>, Error> {
    arrow_file::read_arrow_file_tolerant(path)
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_readable_before_and_after_finish() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = RecordSink::create(dir.path(), 2).unwrap();
        for i in 0..5 {
            sink.push(QueryRecord {
                run_id: "r".into(),
                suite: "arc-challenge".into(),
                doc_id: format!("test/{i}"),
                choices: vec!["a".into(), "b".into()],
                choice_logprobs: vec![-1.0, -2.0],
                choice_exact: vec![true, false],
                prediction: Some(0),
                gold: Some(i % 2),
                ..Default::default()
            })
            .unwrap();
        }
        // Interrupted here: two complete batches (4 rows) and five JSON lines are on disk.
        let batches = read_arrow_records(&dir.path().join("records.arrow")).unwrap();
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 4);
        assert_eq!(
            read_jsonl_records(&dir.path().join("records.jsonl"))
                .unwrap()
                .len(),
            5
        );
        sink.finish().unwrap();
        let batches = read_arrow_records(&dir.path().join("records.arrow")).unwrap();
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 5);
    }
}
