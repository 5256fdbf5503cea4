//! The line parser: one line of the UART protocol (a JSON object) into a [`Line`] — `hello`,
//! `sample`, `error` or a type this host does not know — read through the [`FieldNames`] table.
//!
//! Fails with a [`BadLine`] that says why (not UTF-8, not a JSON object, a missing field, a wrong
//! type, a value out of range, a node twice in one sample) and carries the line's `seq` when it
//! could still be read, so that the stream can tell a bad sample from a lost one.

use super::FieldNames;
use serde::Serialize;
use serde_json::{Map, Value};

/// A `hello` line.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct Hello {
    pub fw: Option<String>,
    pub board: Option<String>,
    pub channels: Option<u32>,
    pub rate_hz: Option<f64>,
    pub ic: Option<String>,
}

/// One channel of a `sample` line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Reading {
    pub node: u32,
    pub w: f64,
    pub v: Option<f64>,
    pub a: Option<f64>,
    pub pf: Option<f64>,
    pub wh: Option<f64>,
}

/// A `sample` line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SampleLine {
    pub seq: u32,
    pub t_ms: u32,
    pub ch: Vec<Reading>,
}

/// An `error` line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ErrorLine {
    pub t_ms: Option<u32>,
    pub node: Option<u32>,
    pub code: Option<String>,
    pub msg: Option<String>,
}

/// A parsed line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Line {
    Hello(Hello),
    Sample(SampleLine),
    Error(ErrorLine),
    /// A line of a type this host does not know (ignored).
    Other(String),
}

/// Why a line was skipped, and its `seq` when that could still be read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BadLine {
    pub reason: String,
    pub seq: Option<u32>,
}

fn bad(reason: impl Into<String>) -> BadLine {
    BadLine {
        reason: reason.into(),
        seq: None,
    }
}

fn describe(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s
    }
}

fn get<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if name.is_empty() {
        None
    } else {
        obj.get(name)
    }
}

fn req_u32(obj: &Map<String, Value>, name: &str, what: &str) -> Result<u32, String> {
    match get(obj, name) {
        None => Err(format!("missing field `{name}` ({what})")),
        Some(v) => as_u32(v).ok_or_else(|| {
            format!(
                "field `{name}`: expected an integer 0…4294967295, found {}",
                describe(v)
            )
        }),
    }
}

fn as_u32(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|x| u32::try_from(x).ok())
}

fn opt_u32(obj: &Map<String, Value>, name: &str) -> Result<Option<u32>, String> {
    match get(obj, name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => as_u32(v).map(Some).ok_or_else(|| {
            format!(
                "field `{name}`: expected an integer 0…4294967295, found {}",
                describe(v)
            )
        }),
    }
}

fn opt_str(obj: &Map<String, Value>, name: &str) -> Result<Option<String>, String> {
    match get(obj, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(format!(
            "field `{name}`: expected a string, found {}",
            describe(v)
        )),
    }
}

/// A finite number in `range` (inclusive); `what` says what was expected.
fn number(v: &Value, name: &str, lo: f64, hi: f64, what: &str) -> Result<f64, String> {
    match v.as_f64() {
        Some(x) if x.is_finite() && x >= lo && x <= hi => Ok(x),
        Some(x) if x.is_finite() => Err(format!(
            "field `{name}`: expected {what}, found {x} (out of range)"
        )),
        _ => Err(format!(
            "field `{name}`: expected {what}, found {}",
            describe(v)
        )),
    }
}

/// Parses the protocol's lines with a [`FieldNames`] table.
#[derive(Debug, Clone)]
pub(crate) struct LineParser {
    names: FieldNames,
}

impl LineParser {
    pub fn new(names: FieldNames) -> LineParser {
        LineParser { names }
    }

    /// Parses one line (without its `\n`; a trailing `\r` is ignored).
    pub fn parse(&self, raw: &[u8]) -> Result<Line, BadLine> {
        let raw = epi_core::lines::trim_cr(raw);
        if raw.iter().all(|b| b.is_ascii_whitespace()) {
            return Err(bad("empty line"));
        }
        let text = std::str::from_utf8(raw).map_err(|_| bad("not UTF-8 text"))?;
        let value: Value =
            serde_json::from_str(text).map_err(|e| bad(format!("not a JSON object: {e}")))?;
        let Value::Object(obj) = value else {
            return Err(bad(format!(
                "expected a JSON object, found {}",
                describe(&value)
            )));
        };
        let n = &self.names;
        let kind = match obj.get(&n.kind) {
            Some(Value::String(s)) => s.as_str(),
            Some(v) => {
                return Err(bad(format!(
                    "field `{}`: expected a string, found {}",
                    n.kind,
                    describe(v)
                )))
            }
            None => {
                return Err(bad(format!(
                    "missing field `{}` (the kind of line)",
                    n.kind
                )))
            }
        };
        if kind == n.type_sample {
            self.sample(&obj).map(Line::Sample)
        } else if kind == n.type_hello {
            self.hello(&obj).map(Line::Hello).map_err(bad)
        } else if kind == n.type_error {
            self.error(&obj).map(Line::Error).map_err(bad)
        } else {
            Ok(Line::Other(kind.to_string()))
        }
    }

    fn sample(&self, obj: &Map<String, Value>) -> Result<SampleLine, BadLine> {
        let n = &self.names;
        let seq = req_u32(obj, &n.seq, "sample sequence number").map_err(bad)?;
        let with_seq = |reason: String| BadLine {
            reason,
            seq: Some(seq),
        };
        let t_ms = req_u32(obj, &n.t_ms, "meter clock, ms").map_err(with_seq)?;
        let ch = match obj.get(&n.ch) {
            Some(Value::Array(a)) => a,
            Some(v) => {
                return Err(with_seq(format!(
                    "field `{}`: expected an array of channels, found {}",
                    n.ch,
                    describe(v)
                )))
            }
            None => {
                return Err(with_seq(format!(
                    "missing field `{}` (the channel readings)",
                    n.ch
                )))
            }
        };
        if ch.is_empty() {
            return Err(with_seq(format!(
                "field `{}`: expected at least one channel, found none",
                n.ch
            )));
        }
        let mut readings = Vec::with_capacity(ch.len());
        for (i, c) in ch.iter().enumerate() {
            let r = self
                .reading(c)
                .map_err(|m| with_seq(format!("{}[{i}]: {m}", n.ch)))?;
            if readings.iter().any(|x: &Reading| x.node == r.node) {
                return Err(with_seq(format!(
                    "{}[{i}]: node {} appears twice in one sample",
                    n.ch, r.node
                )));
            }
            readings.push(r);
        }
        Ok(SampleLine {
            seq,
            t_ms,
            ch: readings,
        })
    }

    fn reading(&self, c: &Value) -> Result<Reading, String> {
        let n = &self.names;
        let Value::Object(o) = c else {
            return Err(format!("expected an object, found {}", describe(c)));
        };
        let node = req_u32(o, &n.node, "node index")?;
        let w = match get(o, &n.w) {
            Some(v) => number(v, &n.w, 0.0, f64::MAX, "watts ≥ 0")?,
            None => return Err(format!("missing field `{}` (watts)", n.w)),
        };
        let required = |name: &str, lo: f64, hi: f64, what: &str| -> Result<Option<f64>, String> {
            if name.is_empty() {
                return Ok(None);
            }
            match o.get(name) {
                Some(v) => number(v, name, lo, hi, what).map(Some),
                None => Err(format!("missing field `{name}` ({what})")),
            }
        };
        let v = required(&n.v, 0.0, f64::MAX, "volts ≥ 0")?;
        let a = required(&n.a, 0.0, f64::MAX, "amps ≥ 0")?;
        let pf = required(&n.pf, 0.0, 1.0, "a power factor in [0, 1]")?;
        if let Some(x) = get(o, &n.var) {
            if !x.is_null() {
                number(
                    x,
                    &n.var,
                    f64::MIN,
                    f64::MAX,
                    "reactive power (a finite number)",
                )?;
            }
        }
        let wh = match get(o, &n.wh) {
            None | Some(Value::Null) => None,
            Some(x) => Some(number(
                x,
                &n.wh,
                0.0,
                f64::MAX,
                "accumulated energy in Wh ≥ 0",
            )?),
        };
        Ok(Reading {
            node,
            w,
            v,
            a,
            pf,
            wh,
        })
    }

    fn hello(&self, obj: &Map<String, Value>) -> Result<Hello, String> {
        let n = &self.names;
        let rate_hz = match get(obj, &n.rate_hz) {
            None | Some(Value::Null) => None,
            Some(v) => Some(number(
                v,
                &n.rate_hz,
                f64::MIN_POSITIVE,
                1e6,
                "a sample rate in Hz > 0",
            )?),
        };
        Ok(Hello {
            fw: opt_str(obj, &n.fw)?,
            board: opt_str(obj, &n.board)?,
            channels: opt_u32(obj, &n.channels)?,
            rate_hz,
            ic: opt_str(obj, &n.ic)?,
        })
    }

    fn error(&self, obj: &Map<String, Value>) -> Result<ErrorLine, String> {
        let n = &self.names;
        Ok(ErrorLine {
            t_ms: opt_u32(obj, &n.t_ms)?,
            node: opt_u32(obj, &n.node)?,
            code: opt_str(obj, &n.code)?,
            msg: opt_str(obj, &n.msg)?,
        })
    }
}
