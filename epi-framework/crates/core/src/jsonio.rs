//! Reading and writing JSON files with errors that name file, line and field.

use crate::error::{Error, InputError, Location};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;

/// Reads `path` as JSON into `T`. Errors name the file, the line and the field path
/// (`benchmark.json:7: benchmarks.mmlu_5shot: invalid type: string "x", expected f64`).
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_json(path, &text)
}

/// Parses `text` (read from `path`) as JSON into `T`, with located errors.
pub fn parse_json<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let result: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    match result {
        Ok(v) => {
            de.end().map_err(|e| located(path, None, &e))?;
            Ok(v)
        }
        Err(e) => {
            let field = e.path().to_string();
            let inner = e.into_inner();
            Err(located(path, Some(field), &inner))
        }
    }
}

fn located(path: &Path, field: Option<String>, e: &serde_json::Error) -> Error {
    let mut loc = Location::file(path);
    if e.line() > 0 {
        loc = loc.at_line(e.line() as u64);
    }
    // serde_json messages end with " at line L column C": the location already says it.
    let msg = e.to_string();
    let msg = match msg.rfind(" at line ") {
        Some(p) => msg[..p].to_string(),
        None => msg,
    };
    // A missing field is reported at the enclosing object: name the field itself.
    let missing = msg
        .strip_prefix("missing field `")
        .and_then(|r| r.split('`').next())
        .map(|s| s.to_string());
    let field = match (field.filter(|f| f != "." && !f.is_empty()), missing) {
        (Some(parent), Some(m)) => Some(format!("{parent}.{m}")),
        (None, Some(m)) => Some(m),
        (f, None) => f,
    };
    if let Some(f) = field {
        loc = loc.field(f);
    }
    Error::Input(InputError::new(loc, msg))
}

/// Writes `value` as pretty JSON to `path`, atomically (a temporary file renamed into place), so
/// an interruption never leaves a half-written file.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), Error> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::Invalid(format!("cannot serialise {}: {e}", path.display())))?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// Writes bytes to `path` through a temporary file in the same directory and a rename. When
/// either fails (a full disk), the temporary file is removed and `path` is left as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let written = std::fs::write(&tmp, bytes)
        .map_err(|e| Error::io(&tmp, e))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        score: f64,
    }
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        inner: Inner,
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let p = Path::new("b.json");
        let e = parse_json::<Outer>(
            p,
            "{\n \"name\": \"x\",\n \"inner\": {\"score\": \"high\"}\n}",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("b.json:3: inner.score: invalid type"), "{e}");
        let e = parse_json::<Outer>(p, "{\n \"name\": \"x\",\n \"inner\": {}\n}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("b.json:3: inner.score: missing field"), "{e}");
        let e = parse_json::<Outer>(p, "{\n \"name\": \"x\"\n}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("b.json:3: inner: missing field"), "{e}");
        let e = parse_json::<Outer>(p, "{\n \"name\": \"x\",")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("b.json:2"), "{e}");
    }
}
