//! An Arrow IPC **file** (`.arrow`, the format `pyarrow.ipc.open_file`, `pyarrow.feather` and
//! `polars.read_ipc` read) that is complete after every appended batch, so a run killed at any
//! moment leaves a file those readers open.
//!
//! The file format is the stream format between a leading `ARROW1` magic and a trailing footer
//! (the schema and the offset of every batch). [`ArrowFileAppender::append`] cuts the previous
//! footer off, writes the new batch where it began and writes a new footer after it. Between two
//! appends the file is a valid, finished Arrow file; only a kill *during* an append (a few
//! microseconds of writes) leaves it without its footer, and [`read_arrow_file_tolerant`] then
//! reads every complete batch as a stream. Nothing here needs `fsync`: a killed process loses
//! nothing the kernel already has.
//!
//! Failures are I/O or Arrow encoding errors, returned as [`ArrowError`].

use arrow::datatypes::{Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::ipc::convert::IpcSchemaEncoder;
use arrow::ipc::writer::{
    write_message, DictionaryTracker, IpcDataGenerator, IpcWriteContext, IpcWriteOptions,
};
use arrow::ipc::{Block, FooterBuilder, MetadataVersion};
use arrow::record_batch::RecordBatch;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;

/// `ARROW1`, the magic at both ends of an Arrow file.
const MAGIC: &[u8; 6] = b"ARROW1";
/// The magic padded to the 8-byte alignment: where the stream part begins.
const HEADER_LEN: usize = 8;
/// The IPC metadata version written (V5, current Arrow).
const METADATA_VERSION: MetadataVersion = MetadataVersion::V5;

/// Appends record batches to an Arrow IPC file, leaving a complete file after each one.
pub struct ArrowFileAppender {
    file: File,
    schema: SchemaRef,
    options: IpcWriteOptions,
    generator: IpcDataGenerator,
    tracker: DictionaryTracker,
    context: IpcWriteContext,
    /// End of the last batch: where the footer starts.
    data_end: u64,
    blocks: Vec<Block>,
    rows: u64,
}

impl ArrowFileAppender {
    /// Creates (truncates) `path` and writes the header, the schema and an empty footer.
    pub fn create(path: &Path, schema: &Schema) -> Result<ArrowFileAppender, ArrowError> {
        let mut file = File::create(path)?;
        let options = IpcWriteOptions::try_new(8, false, METADATA_VERSION)?;
        let generator = IpcDataGenerator::default();
        let mut tracker = DictionaryTracker::new(true);
        file.write_all(MAGIC)?;
        file.write_all(&[0u8; HEADER_LEN - 6])?;
        let encoded =
            generator.schema_to_bytes_with_dictionary_tracker(schema, &mut tracker, &options);
        let (meta, body) = write_message(&mut file, encoded, &options)?;
        let mut appender = ArrowFileAppender {
            file,
            schema: Arc::new(schema.clone()),
            options,
            generator,
            tracker,
            context: IpcWriteContext::default(),
            data_end: (HEADER_LEN + meta + body) as u64,
            blocks: Vec::new(),
            rows: 0,
        };
        appender.write_footer()?;
        Ok(appender)
    }

    /// Appends one batch; the file is complete again when this returns.
    pub fn append(&mut self, batch: &RecordBatch) -> Result<(), ArrowError> {
        if batch.schema().fields() != self.schema.fields() {
            return Err(ArrowError::SchemaError(
                "the batch's schema is not the file's".into(),
            ));
        }
        self.file.set_len(self.data_end)?;
        self.file.seek(SeekFrom::Start(self.data_end))?;
        let (dictionaries, encoded) =
            self.generator
                .encode(batch, &mut self.tracker, &self.options, &mut self.context)?;
        if !dictionaries.is_empty() {
            return Err(ArrowError::NotYetImplemented(
                "dictionary columns in an appended Arrow file".into(),
            ));
        }
        let (meta, body) = write_message(&mut self.file, encoded, &self.options)?;
        self.blocks
            .push(Block::new(self.data_end as i64, meta as i32, body as i64));
        self.data_end += (meta + body) as u64;
        self.rows += batch.num_rows() as u64;
        self.write_footer()
    }

    /// Rows appended so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// End-of-stream marker, footer, footer length and magic, after the last batch.
    fn write_footer(&mut self) -> Result<(), ArrowError> {
        let mut fbb = flatbuffers::FlatBufferBuilder::new();
        let dictionaries = fbb.create_vector::<Block>(&[]);
        let record_batches = fbb.create_vector(&self.blocks);
        let schema = IpcSchemaEncoder::new().schema_to_fb_offset(&mut fbb, &self.schema);
        let root = {
            let mut footer = FooterBuilder::new(&mut fbb);
            footer.add_version(METADATA_VERSION);
            footer.add_schema(schema);
            footer.add_dictionaries(dictionaries);
            footer.add_recordBatches(record_batches);
            footer.finish()
        };
        fbb.finish(root, None);
        let footer = fbb.finished_data();
        let mut tail = Vec::with_capacity(footer.len() + 24);
        // End of stream: continuation marker and a zero length.
        tail.extend_from_slice(&0xFFFF_FFFFu32.to_le_bytes());
        tail.extend_from_slice(&0u32.to_le_bytes());
        tail.extend_from_slice(footer);
        tail.extend_from_slice(&(footer.len() as i32).to_le_bytes());
        tail.extend_from_slice(MAGIC);
        self.file.write_all(&tail)?;
        self.file.flush()?;
        Ok(())
    }
}

/// Reads the batches of an Arrow file: through its footer when it has one, else (a writer killed
/// mid-append) as a stream after the magic, keeping every complete batch. Also reads a plain
/// Arrow IPC stream (the `records.arrows` of epi-bench 0.1 runs).
pub fn read_arrow_file_tolerant(path: &Path) -> Result<Vec<RecordBatch>, ArrowError> {
    let mut f = File::open(path)?;
    let mut head = [0u8; HEADER_LEN];
    let n = read_up_to(&mut f, &mut head)?;
    if n < 6 || &head[..6] != MAGIC {
        f.seek(SeekFrom::Start(0))?;
        return read_stream(BufReader::new(f));
    }
    f.seek(SeekFrom::Start(0))?;
    if let Ok(reader) = arrow::ipc::reader::FileReader::try_new(BufReader::new(&mut f), None) {
        if let Ok(batches) = reader.collect::<Result<Vec<_>, _>>() {
            return Ok(batches);
        }
    }
    f.seek(SeekFrom::Start(HEADER_LEN as u64))?;
    read_stream(BufReader::new(f))
}

fn read_stream(r: impl Read) -> Result<Vec<RecordBatch>, ArrowError> {
    let reader = arrow::ipc::reader::StreamReader::try_new(r, None)?;
    let mut out = Vec::new();
    for b in reader {
        match b {
            Ok(b) => out.push(b),
            // Cut mid-batch: keep the complete ones.
            Err(_) => break,
        }
    }
    Ok(out)
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field};

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
        ])
    }

    fn batch(from: i64, len: i64) -> RecordBatch {
        let n: Vec<i64> = (from..from + len).collect();
        let s: Vec<Option<String>> = n
            .iter()
            .map(|i| (i % 3 != 0).then(|| format!("row {i}")))
            .collect();
        RecordBatch::try_new(
            Arc::new(schema()),
            vec![
                Arc::new(Int64Array::from(n)),
                Arc::new(StringArray::from(s)),
            ],
        )
        .unwrap()
    }

    fn rows(batches: &[RecordBatch]) -> Vec<i64> {
        batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect()
    }

    #[test]
    fn the_file_is_complete_after_every_append() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.arrow");
        let mut w = ArrowFileAppender::create(&path, &schema()).unwrap();
        // Empty: a valid file with no batches.
        let r = arrow::ipc::reader::FileReader::try_new(File::open(&path).unwrap(), None).unwrap();
        assert_eq!(r.num_batches(), 0);
        let mut expect = Vec::new();
        for k in 0..5 {
            w.append(&batch(k * 10, k + 1)).unwrap();
            expect.extend(k * 10..k * 10 + k + 1);
            // The strict reader (footer required) sees every batch so far.
            let r =
                arrow::ipc::reader::FileReader::try_new(File::open(&path).unwrap(), None).unwrap();
            let got: Vec<RecordBatch> = r.collect::<Result<_, _>>().unwrap();
            assert_eq!(rows(&got), expect);
        }
        assert_eq!(w.rows(), 15);
    }

    #[test]
    fn a_file_cut_anywhere_keeps_its_complete_batches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.arrow");
        let mut w = ArrowFileAppender::create(&path, &schema()).unwrap();
        let mut ends = Vec::new();
        for k in 0..3 {
            w.append(&batch(k * 100, 7)).unwrap();
            ends.push(w.data_end);
        }
        let full = std::fs::read(&path).unwrap();
        // Cut at every byte of the data part (as a kill mid-append leaves it, footer gone).
        for cut in HEADER_LEN..=ends[2] as usize {
            let p = dir.path().join("cut.arrow");
            std::fs::write(&p, &full[..cut]).unwrap();
            let got = read_arrow_file_tolerant(&p);
            let complete = ends.iter().filter(|&&e| e as usize <= cut).count();
            match got {
                Ok(b) => assert_eq!(rows(&b).len(), complete * 7, "cut at {cut}"),
                // Cut inside the schema message: nothing to read, and it says so.
                Err(_) => assert_eq!(complete, 0, "cut at {cut}"),
            }
        }
        // The complete file reads through its footer.
        assert_eq!(rows(&read_arrow_file_tolerant(&path).unwrap()).len(), 21);
    }

    #[test]
    fn a_batch_of_another_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ArrowFileAppender::create(&dir.path().join("r.arrow"), &schema()).unwrap();
        let other = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)])),
            vec![Arc::new(Int64Array::from(vec![1]))],
        )
        .unwrap();
        assert!(w.append(&other).is_err());
    }
}
