//! Finding and reading data files: the data directory, JSON Lines, CSV and Hugging Face parquet
//! exports. Every problem is reported with the file, the line (or parquet row) and the field.

use arrow::array::{Array, AsArray};
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type,
    UInt32Type, UInt64Type, UInt8Type,
};
use epi_core::error::{InputError, Location};
use epi_core::suite::SuiteError;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Where data is looked for when no `data_dir` is configured: `$XDG_DATA_HOME/epi-bench/datasets`
/// (`~/.local/share/epi-bench/datasets` on Linux). `epi datasets fetch` writes there by default.
pub fn default_data_dir() -> Option<PathBuf> {
    dirs::data_dir().map(|d| d.join("epi-bench").join("datasets"))
}

/// The directories a suite searches, best first: `<data_dir>/<subdir>` and `<data_dir>` itself
/// (so `data_dir` may name the suite's own directory), or `<default>/<subdir>` when no data
/// directory is configured.
pub fn search_dirs(configured: Option<&Path>, subdir: &str) -> Vec<PathBuf> {
    match configured {
        Some(d) => vec![d.join(subdir), d.to_path_buf()],
        None => default_data_dir()
            .map(|d| vec![d.join(subdir)])
            .unwrap_or_default(),
    }
}

/// The error for data that is not there: every place looked in, and how to get the data.
pub fn missing(suite: &str, tried: &[String], configured: Option<&Path>) -> SuiteError {
    let mut message = String::from("looked for:\n");
    for t in tried {
        message.push_str("  ");
        message.push_str(t);
        message.push('\n');
    }
    if configured.is_none() {
        message.push_str(
            "  (no data directory configured: pass --data-dir DIR, or set `data_dir` in [suite.<key>] or [general])\n",
        );
    }
    message.push_str(&format!(
        "Get the data with `epi datasets fetch --suite {suite} --dest DIR` and point --data-dir at DIR \
         (layout: docs/suites.md)."
    ));
    SuiteError::MissingData {
        suite: suite.to_string(),
        message,
    }
}

/// An I/O error on `path`.
pub fn io_error(suite: &str, path: &Path, e: impl std::fmt::Display) -> SuiteError {
    SuiteError::Other {
        suite: suite.to_string(),
        message: format!("{}: {e}", path.display()),
    }
}

/// Parquet shards of `split` in `dir`, in shard order: the Hub layout `<split>-00000-of-00001.parquet`
/// or the converted layout `<split>/0000.parquet`. Empty when there are none.
pub fn parquet_shards(dir: &Path, split: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = list_dir(dir)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{split}-")) && n.ends_with(".parquet"))
        })
        .collect();
    if found.is_empty() {
        found = list_dir(&dir.join(split))
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .collect();
    }
    found.sort();
    found
}

fn list_dir(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Reads a JSON Lines file into `T`s, one per non-blank line; returns each with its 1-based line.
pub fn read_jsonl<T: DeserializeOwned>(
    suite: &str,
    path: &Path,
) -> Result<Vec<(u64, T)>, SuiteError> {
    let text = std::fs::read_to_string(path).map_err(|e| io_error(suite, path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        let mut de = serde_json::Deserializer::from_str(line);
        let r: Result<T, _> = serde_path_to_error::deserialize(&mut de);
        match r {
            Ok(v) => out.push((line_no, v)),
            Err(e) => {
                let field = e.path().to_string();
                let mut loc = Location::file(path).at_line(line_no);
                if !field.is_empty() && field != "." {
                    loc = loc.field(field);
                }
                return Err(InputError::new(loc, e.inner().to_string()).into());
            }
        }
    }
    Ok(out)
}

/// Reads the rows of a parquet file as `T`s: each row becomes a JSON object (strings, numbers,
/// lists, structs), deserialized like a JSON Lines record.
pub fn read_parquet<T: DeserializeOwned>(suite: &str, path: &Path) -> Result<Vec<T>, SuiteError> {
    let file = std::fs::File::open(path).map_err(|e| io_error(suite, path, e))?;
    let not_parquet = |e: &dyn std::fmt::Display| {
        SuiteError::Input(InputError::new(
            Location::file(path),
            format!("not a readable parquet file: {e}"),
        ))
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| not_parquet(&e))?
        .build()
        .map_err(|e| not_parquet(&e))?;
    let mut out = Vec::new();
    let mut row_base = 0usize;
    for batch in reader {
        let batch = batch.map_err(|e| not_parquet(&e))?;
        let schema = batch.schema();
        for row in 0..batch.num_rows() {
            let mut obj = serde_json::Map::new();
            for (col, field) in batch.columns().iter().zip(schema.fields()) {
                let v = cell(col.as_ref(), row).map_err(|m| {
                    InputError::new(
                        Location::file(path).field(format!(
                            "row {}: {}",
                            row_base + row,
                            field.name()
                        )),
                        m,
                    )
                })?;
                obj.insert(field.name().clone(), v);
            }
            let r: Result<T, _> = serde_path_to_error::deserialize(Value::Object(obj));
            match r {
                Ok(v) => out.push(v),
                Err(e) => {
                    return Err(InputError::new(
                        Location::file(path).field(format!("row {}: {}", row_base + row, e.path())),
                        e.inner().to_string(),
                    )
                    .into())
                }
            }
        }
        row_base += batch.num_rows();
    }
    Ok(out)
}

/// Reads several parquet shards, concatenated in order.
pub fn read_parquet_shards<T: DeserializeOwned>(
    suite: &str,
    paths: &[PathBuf],
) -> Result<Vec<T>, SuiteError> {
    let mut out = Vec::new();
    for p in paths {
        out.extend(read_parquet::<T>(suite, p)?);
    }
    Ok(out)
}

/// One value of an arrow array as JSON.
fn cell(array: &dyn Array, row: usize) -> Result<Value, String> {
    if array.is_null(row) {
        return Ok(Value::Null);
    }
    Ok(match array.data_type() {
        DataType::Null => Value::Null,
        DataType::Boolean => Value::Bool(array.as_boolean().value(row)),
        DataType::Utf8 => Value::String(array.as_string::<i32>().value(row).to_string()),
        DataType::LargeUtf8 => Value::String(array.as_string::<i64>().value(row).to_string()),
        DataType::Utf8View => Value::String(array.as_string_view().value(row).to_string()),
        DataType::Int8 => Value::from(array.as_primitive::<Int8Type>().value(row)),
        DataType::Int16 => Value::from(array.as_primitive::<Int16Type>().value(row)),
        DataType::Int32 => Value::from(array.as_primitive::<Int32Type>().value(row)),
        DataType::Int64 => Value::from(array.as_primitive::<Int64Type>().value(row)),
        DataType::UInt8 => Value::from(array.as_primitive::<UInt8Type>().value(row)),
        DataType::UInt16 => Value::from(array.as_primitive::<UInt16Type>().value(row)),
        DataType::UInt32 => Value::from(array.as_primitive::<UInt32Type>().value(row)),
        DataType::UInt64 => Value::from(array.as_primitive::<UInt64Type>().value(row)),
        DataType::Float32 => Value::from(f64::from(array.as_primitive::<Float32Type>().value(row))),
        DataType::Float64 => Value::from(array.as_primitive::<Float64Type>().value(row)),
        DataType::List(_) => list(array.as_list::<i32>().value(row).as_ref())?,
        DataType::LargeList(_) => list(array.as_list::<i64>().value(row).as_ref())?,
        DataType::Struct(fields) => {
            let s = array.as_struct();
            let mut obj = serde_json::Map::new();
            for (f, col) in fields.iter().zip(s.columns()) {
                obj.insert(f.name().clone(), cell(col.as_ref(), row)?);
            }
            Value::Object(obj)
        }
        DataType::Dictionary(_, value_type) => {
            let plain = arrow::compute::cast(&array.slice(row, 1), value_type)
                .map_err(|e| e.to_string())?;
            cell(plain.as_ref(), 0)?
        }
        other => return Err(format!("unsupported parquet column type {other}")),
    })
}

fn list(inner: &dyn Array) -> Result<Value, String> {
    (0..inner.len())
        .map(|i| cell(inner, i))
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

/// A display form of a list of candidate files for error messages.
pub fn describe(path: &Path, what: &str) -> String {
    format!("{} ({what})", path.display())
}

/// The parquet files [`parquet_shards`] accepts for `splits` in `dir`, for error messages.
pub fn describe_parquet(dir: &Path, splits: &str, what: &str) -> String {
    format!(
        "{}/{{{splits}}}{{-*.parquet,/*.parquet}} ({what})",
        dir.display()
    )
}

/// Writing small parquet files in the Hugging Face layouts, for tests.
#[cfg(test)]
pub(crate) mod testutil {
    use arrow::array::{
        ArrayRef, Int32Array, Int64Array, ListBuilder, StringArray, StringBuilder, StructArray,
    };
    use arrow::datatypes::Field;
    use arrow::record_batch::RecordBatch;
    use parquet::arrow::ArrowWriter;
    use std::path::Path;
    use std::sync::Arc;

    /// A string column.
    pub fn strings<S: AsRef<str>>(v: &[S]) -> ArrayRef {
        Arc::new(StringArray::from(
            v.iter().map(|s| s.as_ref()).collect::<Vec<_>>(),
        ))
    }

    /// A `list<string>` column.
    pub fn string_lists(v: &[Vec<String>]) -> ArrayRef {
        let mut b = ListBuilder::new(StringBuilder::new());
        for row in v {
            for s in row {
                b.values().append_value(s);
            }
            b.append(true);
        }
        Arc::new(b.finish())
    }

    /// An int64 column.
    pub fn int64s(v: &[i64]) -> ArrayRef {
        Arc::new(Int64Array::from(v.to_vec()))
    }

    /// An int32 column.
    pub fn int32s(v: &[i32]) -> ArrayRef {
        Arc::new(Int32Array::from(v.to_vec()))
    }

    /// A struct column.
    pub fn structs(fields: Vec<(&str, ArrayRef)>) -> ArrayRef {
        let parts: Vec<(Arc<Field>, ArrayRef)> = fields
            .into_iter()
            .map(|(n, a)| (Arc::new(Field::new(n, a.data_type().clone(), true)), a))
            .collect();
        Arc::new(StructArray::from(parts))
    }

    /// Writes one parquet file (creating its directory).
    pub fn write(path: &Path, columns: Vec<(&str, ArrayRef)>) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let batch = RecordBatch::try_from_iter(columns).unwrap();
        let file = std::fs::File::create(path).unwrap();
        let mut w = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Row {
        name: String,
        tags: Vec<String>,
        n: i64,
        inner: Inner,
    }

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Inner {
        label: Vec<String>,
    }

    #[test]
    fn parquet_rows_become_json_objects() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x/train-00000-of-00001.parquet");
        write(
            &p,
            vec![
                ("name", strings(&["a", "b"])),
                ("tags", string_lists(&[vec!["x".into()], vec![]])),
                ("n", int32s(&[1, -2])),
                (
                    "inner",
                    structs(vec![(
                        "label",
                        string_lists(&[vec!["A".into(), "B".into()], vec!["1".into()]]),
                    )]),
                ),
            ],
        );
        let rows: Vec<Row> = read_parquet("t", &p).unwrap();
        assert_eq!(
            rows[1],
            Row {
                name: "b".into(),
                tags: vec![],
                n: -2,
                inner: Inner {
                    label: vec!["1".into()]
                }
            }
        );
        assert_eq!(
            parquet_shards(&dir.path().join("x"), "train"),
            vec![p.clone()]
        );
        assert!(parquet_shards(&dir.path().join("x"), "test").is_empty());
        // A wrong type names the file, the row and the field.
        write(
            &p,
            vec![
                ("name", strings(&["a"])),
                ("tags", strings(&["x"])),
                ("n", int64s(&[1])),
            ],
        );
        let e = read_parquet::<Row>("t", &p).unwrap_err().to_string();
        assert!(
            e.contains("train-00000-of-00001.parquet: row 0: tags"),
            "{e}"
        );
        std::fs::write(&p, b"not parquet").unwrap();
        let e = read_parquet::<Row>("t", &p).unwrap_err().to_string();
        assert!(e.contains("not a readable parquet file"), "{e}");
    }

    #[test]
    fn converted_layout_shards_are_read_in_order() {
        let dir = tempfile::tempdir().unwrap();
        for (i, name) in ["0001.parquet", "0000.parquet"].iter().enumerate() {
            write(
                &dir.path().join("test").join(name),
                vec![("n", int64s(&[i as i64]))],
            );
        }
        let shards = parquet_shards(dir.path(), "test");
        assert!(
            shards[0].ends_with("test/0000.parquet") && shards[1].ends_with("test/0001.parquet")
        );
    }

    #[test]
    fn jsonl_errors_name_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.jsonl");
        std::fs::write(&p, "{\"n\": 1}\n\n{\"n\": \"x\"}\n").unwrap();
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct N {
            n: i64,
        }
        let e = read_jsonl::<N>("t", &p).unwrap_err().to_string();
        assert!(e.contains("a.jsonl:3: n: invalid type"), "{e}");
    }
}
