//! `epi-meter`: the epi-meter board (RP2350 + one metering IC per cluster node) on a serial line,
//! speaking the UART protocol v1 of `epi-meter-uart.md`: one JSON object per line, `hello`,
//! `sample` and `error` lines.
//!
//! What the source does with the stream:
//!
//! - **Bad lines** (a partial first line, garbage, malformed JSON, a missing field, a wrong type, an
//!   out-of-range value such as negative watts, a power factor outside [0, 1], a duplicate node)
//!   are counted in [`SourceStats::bad_lines`] and skipped; the first ones are also reported as
//!   events. A sample line with one bad channel is skipped whole. Unknown line types and unknown
//!   fields are ignored.
//! - **Field names** live in one table, [`FieldNames`] (`[power.epi-meter.fields]`), so a firmware
//!   variant is mapped by configuration, not code.
//! - **Lost samples**: a jump of `seq` (modulo 2^32) by more than one counts the missing numbers as
//!   lost. A line that could not be parsed far enough to read its `seq` is both a bad line and,
//!   when it was a sample, a lost sample.
//! - **Timeline**: samples are integrated on the meter's clock. `t_ms` is made continuous (its
//!   2^32 ms wrap is unwrapped) and placed on the session timeline: the first sample sits at its
//!   host arrival time (whole ms), later ones follow the meter's clock exactly. After a meter
//!   **reboot** (`seq` or `t_ms` going back, usually with a new `hello`) the new boot continues the
//!   timeline after the gap measured on the host clock (at least the meter's time since boot).
//!   Every sample also carries its host arrival time (monotonic and UTC) and the meter's raw `t_ms`.
//! - **Energy counter**: when a channel sends `wh`, the sample carries `energy_j`, the IC counter in
//!   joules made continuous: across a reboot (or an IC counter reset) the counter restarts at zero,
//!   and the gap is bridged with the trapezoid of the two bounding power readings, exactly as the
//!   integrated energy bridges it.
//! - **Unplug**: when the port fails or vanishes the source records a `disconnected` event,
//!   reopens the port with exponential back-off, and records `reconnected` with the gap
//!   ([`SourceStats::reconnects`], [`SourceStats::disconnected_ms`]).

use crate::host_time::{Arrival, HostClock};
use epi_core::power::PowerError;
use epi_core::registry::{Factory, PluginConfig, PluginRegistration};
use epi_core::sample::{
    ChannelInfo, EnergyMethod, PowerSample, SampleBatch, SourceEvent, SourceInfo, SourceStats,
};
use epi_core::PowerSource;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::AsyncReadExt;

const KEY: &str = "epi-meter";

/// Bad lines reported one by one as events; later ones are only counted.
const MAX_LINE_EVENTS: u64 = 50;

/// A meter clock that runs ahead of the host clock by more than this between two samples is taken
/// for a reboot (the uptime before the reboot was long enough that `t_ms` going back looks like a
/// step forward modulo 2^32).
const MAX_CLOCK_LEAD_MS: f64 = 60_000.0;

/// The wire names of the protocol's fields and line types: one table, so a firmware variant maps
/// without code changes (`[power.epi-meter.fields]`). An empty name means the firmware does not
/// send that (optional) field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FieldNames {
    /// The key telling the kind of line (`type`).
    #[serde(rename = "type")]
    pub kind: String,
    /// The `type` value of a hello line (`hello`).
    pub type_hello: String,
    /// The `type` value of a sample line (`sample`).
    pub type_sample: String,
    /// The `type` value of an error line (`error`).
    pub type_error: String,
    /// Sample sequence number, u32 (`seq`).
    pub seq: String,
    /// Meter clock, ms since boot, u32 (`t_ms`); also used by error lines.
    pub t_ms: String,
    /// The array of channel readings (`ch`).
    pub ch: String,
    /// Node index of a channel reading (`node`); also used by error lines.
    pub node: String,
    /// Real power, W (`w`).
    pub w: String,
    /// RMS voltage, V (`v`).
    pub v: String,
    /// RMS current, A (`a`).
    pub a: String,
    /// Power factor, 0–1 (`pf`).
    pub pf: String,
    /// Reactive power, VAR, optional (`var`).
    pub var: String,
    /// The IC's accumulated energy since boot, Wh, optional (`wh`).
    pub wh: String,
    /// Firmware version in hello (`fw`).
    pub fw: String,
    /// Board name in hello (`board`).
    pub board: String,
    /// Channel count in hello (`channels`).
    pub channels: String,
    /// Sample rate in hello, Hz (`rate_hz`).
    pub rate_hz: String,
    /// Metering IC in hello (`ic`).
    pub ic: String,
    /// Error code in error lines (`code`).
    pub code: String,
    /// Error message in error lines (`msg`).
    pub msg: String,
}

impl Default for FieldNames {
    fn default() -> Self {
        let s = |x: &str| x.to_string();
        FieldNames {
            kind: s("type"),
            type_hello: s("hello"),
            type_sample: s("sample"),
            type_error: s("error"),
            seq: s("seq"),
            t_ms: s("t_ms"),
            ch: s("ch"),
            node: s("node"),
            w: s("w"),
            v: s("v"),
            a: s("a"),
            pf: s("pf"),
            var: s("var"),
            wh: s("wh"),
            fw: s("fw"),
            board: s("board"),
            channels: s("channels"),
            rate_hz: s("rate_hz"),
            ic: s("ic"),
            code: s("code"),
            msg: s("msg"),
        }
    }
}

impl FieldNames {
    fn validate(&self) -> Result<(), String> {
        for (key, name) in [
            ("type", &self.kind),
            ("type_hello", &self.type_hello),
            ("type_sample", &self.type_sample),
            ("type_error", &self.type_error),
            ("seq", &self.seq),
            ("t_ms", &self.t_ms),
            ("ch", &self.ch),
            ("node", &self.node),
            ("w", &self.w),
        ] {
            if name.is_empty() {
                return Err(format!(
                    "fields.{key}: a required field needs a wire name (found an empty string)"
                ));
            }
        }
        Ok(())
    }
}

/// Parity of the serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    /// No parity bit (the protocol's default).
    None,
    /// Odd parity.
    Odd,
    /// Even parity.
    Even,
}

/// Flow control of the serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FlowControl {
    /// None (the protocol's default).
    None,
    /// XON/XOFF.
    Software,
    /// RTS/CTS.
    Hardware,
}

fn default_baud() -> u32 {
    115_200
}
fn default_data_bits() -> u8 {
    8
}
fn default_parity() -> Parity {
    Parity::None
}
fn default_stop_bits() -> u8 {
    1
}
fn default_flow_control() -> FlowControl {
    FlowControl::None
}
fn default_open_timeout_ms() -> u64 {
    5_000
}
fn default_reconnect_initial_ms() -> u64 {
    100
}
fn default_reconnect_max_ms() -> u64 {
    2_000
}
fn default_accuracy() -> Option<f64> {
    Some(0.02)
}
fn default_max_line_bytes() -> usize {
    64 * 1024
}

/// Settings of the `epi-meter` source (`[power.epi-meter]`, `--port`, `--baud`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EpiMeterConfig {
    /// The serial device (`/dev/ttyUSB0`; prefer a stable `/dev/serial/by-id/...` path).
    pub port: String,
    /// Baud rate (115200).
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// Data bits, 5–8 (8).
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// Parity (`none`).
    #[serde(default = "default_parity")]
    pub parity: Parity,
    /// Stop bits, 1 or 2 (1).
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// Flow control (`none`).
    #[serde(default = "default_flow_control")]
    pub flow_control: FlowControl,
    /// How long `open` waits for the first valid sample line before saying the meter is not
    /// there (wrong port, wrong baud rate), ms.
    #[serde(default = "default_open_timeout_ms")]
    pub open_timeout_ms: u64,
    /// First reconnection delay after the port vanished, ms; doubled up to `reconnect_max_ms`.
    #[serde(default = "default_reconnect_initial_ms")]
    pub reconnect_initial_ms: u64,
    /// Longest reconnection delay, ms.
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// Stated relative accuracy of the measurement chain (CT clamps: 0.02).
    #[serde(default = "default_accuracy")]
    pub accuracy_rel: Option<f64>,
    /// A line longer than this without a newline is garbage, bytes.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// Wire names of the protocol's fields.
    #[serde(default)]
    pub fields: FieldNames,
}

impl EpiMeterConfig {
    fn validate(&self) -> Result<(), String> {
        if self.port.trim().is_empty() {
            return Err("port: expected a serial device path such as /dev/ttyUSB0".into());
        }
        if self.baud == 0 {
            return Err("baud: expected a baud rate > 0 (the protocol's default is 115200)".into());
        }
        if !(5..=8).contains(&self.data_bits) {
            return Err(format!(
                "data_bits: expected 5, 6, 7 or 8, found {}",
                self.data_bits
            ));
        }
        if !(1..=2).contains(&self.stop_bits) {
            return Err(format!(
                "stop_bits: expected 1 or 2, found {}",
                self.stop_bits
            ));
        }
        if self.reconnect_initial_ms == 0 || self.reconnect_max_ms < self.reconnect_initial_ms {
            return Err(
                "reconnect_initial_ms / reconnect_max_ms: expected 0 < initial ≤ max".into(),
            );
        }
        if let Some(a) = self.accuracy_rel {
            if !(a.is_finite() && a >= 0.0) {
                return Err(format!(
                    "accuracy_rel: expected a relative accuracy ≥ 0 (0.02 for ±2 %), found {a}"
                ));
            }
        }
        if self.max_line_bytes < 64 {
            return Err(format!(
                "max_line_bytes: expected at least 64, found {}",
                self.max_line_bytes
            ));
        }
        self.fields.validate()
    }
}

// ---------------------------------------------------------------------------------------------
// Line parsing
// ---------------------------------------------------------------------------------------------

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
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
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

// ---------------------------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// The stream state machine (no I/O: fed lines and arrival times)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct LastSample {
    seq: u32,
    t_raw: u32,
    /// Meter time made continuous within the boot, ms.
    t_cont: i64,
    /// Timeline time, ms.
    timeline: f64,
    host_mono: f64,
}

#[derive(Debug, Clone, Copy)]
struct NodeState {
    last_timeline: f64,
    last_w: f64,
    /// Continuous counter: joules = offset_j + wh × 3600.
    counter: Option<CounterState>,
}

#[derive(Debug, Clone, Copy)]
struct CounterState {
    offset_j: f64,
    last_wh: f64,
    last_j: f64,
    /// The boot the offset belongs to.
    boot: u64,
}

/// Turns parsed lines into samples and events. Pure: the caller supplies arrival times.
#[derive(Debug)]
pub(crate) struct MeterStream {
    parser: LineParser,
    /// The next complete line may be the tail of a line sent before the port was opened.
    first_line: bool,
    last: Option<LastSample>,
    /// Timeline and continuous meter time of the first sample of the current boot.
    boot_anchor: (f64, i64),
    boot: u64,
    hello_since_sample: bool,
    pub hello: Option<Hello>,
    nodes: BTreeMap<u32, NodeState>,
    pub stats: SourceStats,
    pub events: Vec<SourceEvent>,
    line_events: u64,
    ignored_types: Vec<String>,
    /// Nodes of the first valid sample, and whether all of them carried `wh`.
    pub first_sample: Option<(Vec<u32>, bool)>,
}

impl MeterStream {
    pub fn new(names: FieldNames) -> MeterStream {
        MeterStream {
            parser: LineParser::new(names),
            first_line: true,
            last: None,
            boot_anchor: (0.0, 0),
            boot: 0,
            hello_since_sample: false,
            hello: None,
            nodes: BTreeMap::new(),
            stats: SourceStats::default(),
            events: Vec::new(),
            line_events: 0,
            ignored_types: Vec::new(),
            first_sample: None,
        }
    }

    /// The port was (re)opened: the next line may be partial.
    pub fn connected(&mut self) {
        self.first_line = true;
    }

    fn event(&mut self, at: f64, kind: &str, detail: String) {
        self.events.push(SourceEvent {
            host_mono_ms: at,
            kind: kind.to_string(),
            detail,
        });
    }

    fn bad_line(&mut self, at: f64, kind: &str, reason: String) {
        self.stats.bad_lines += 1;
        self.line_events += 1;
        if self.line_events < MAX_LINE_EVENTS {
            self.event(at, kind, reason);
        } else if self.line_events == MAX_LINE_EVENTS {
            self.event(
                at,
                kind,
                format!("{reason} (further bad lines are only counted)"),
            );
        }
    }

    /// An over-long line.
    pub fn too_long(&mut self, at: Arrival, max: usize) {
        self.first_line = false;
        self.bad_line(
            at.mono_ms,
            "bad-line",
            format!("line longer than {max} bytes without a newline (garbage?)"),
        );
    }

    /// Processes one line; samples go to `out`, events to `self.events`.
    pub fn line(&mut self, raw: &[u8], at: Arrival, out: &mut Vec<PowerSample>) {
        let first = std::mem::replace(&mut self.first_line, false);
        match self.parser.parse(raw) {
            Ok(Line::Sample(s)) => self.sample(s, at, out),
            Ok(Line::Hello(h)) => self.hello(h, at),
            Ok(Line::Error(e)) => {
                let mut d = String::new();
                if let Some(n) = e.node {
                    d.push_str(&format!("node {n}: "));
                }
                d.push_str(e.code.as_deref().unwrap_or("error"));
                if let Some(m) = &e.msg {
                    d.push_str(&format!(": {m}"));
                }
                if let Some(t) = e.t_ms {
                    d.push_str(&format!(" (meter t_ms {t})"));
                }
                self.event(at.mono_ms, "meter-error", d);
            }
            Ok(Line::Other(kind)) => {
                if self.ignored_types.len() < 16 && !self.ignored_types.contains(&kind) {
                    self.ignored_types.push(kind.clone());
                    self.event(
                        at.mono_ms,
                        "ignored-line",
                        format!("unknown line type `{kind}` ignored"),
                    );
                }
            }
            Err(b) => {
                let (kind, reason) = if first {
                    (
                        "partial-line",
                        format!(
                            "first line after opening the port skipped (partial line): {}",
                            b.reason
                        ),
                    )
                } else {
                    ("bad-line", b.reason)
                };
                self.bad_line(at.mono_ms, kind, reason);
                if let (Some(seq), Some(last)) = (b.seq, self.last.as_mut()) {
                    // The line was a sample whose number we know: not a lost sample.
                    let d = seq.wrapping_sub(last.seq) as i32;
                    if d > 0 {
                        self.stats.lost_samples += (d - 1) as u64;
                        last.seq = seq;
                    }
                }
            }
        }
    }

    fn hello(&mut self, h: Hello, at: Arrival) {
        if self.hello.as_ref() != Some(&h) {
            let what = if self.hello.is_none() {
                "meter says hello"
            } else {
                "meter hello changed"
            };
            let detail = format!(
                "{what}: board {}, fw {}, {} channels, {} Hz, IC {}",
                h.board.as_deref().unwrap_or("?"),
                h.fw.as_deref().unwrap_or("?"),
                h.channels
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "?".into()),
                h.rate_hz
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "?".into()),
                h.ic.as_deref().unwrap_or("?"),
            );
            self.event(at.mono_ms, "hello", detail);
            self.hello = Some(h);
        }
        self.hello_since_sample = true;
    }

    fn sample(&mut self, s: SampleLine, at: Arrival, out: &mut Vec<PowerSample>) {
        let hello_seen = std::mem::replace(&mut self.hello_since_sample, false);
        let (t_cont, timeline, rebooted) = match self.last {
            None => {
                let timeline = at.mono_ms.round().max(0.0);
                self.boot_anchor = (timeline, s.t_ms as i64);
                (s.t_ms as i64, timeline, false)
            }
            Some(last) => {
                let dseq = s.seq.wrapping_sub(last.seq) as i32;
                let dt = s.t_ms.wrapping_sub(last.t_raw) as i32;
                let host_elapsed = (at.mono_ms - last.host_mono).max(0.0);
                if dseq == 0 {
                    self.bad_line(
                        at.mono_ms,
                        "bad-line",
                        format!("duplicate sample: seq {} repeated", s.seq),
                    );
                    self.hello_since_sample = hello_seen;
                    return;
                }
                let reboot = dseq < 0 || dt < 0 || (dt as f64) > host_elapsed + MAX_CLOCK_LEAD_MS;
                if reboot {
                    // The new boot continues after the gap measured on the host, which is at least
                    // the meter's time since boot.
                    let gap = host_elapsed.round().max(s.t_ms as f64);
                    let timeline = last.timeline + gap;
                    self.boot += 1;
                    self.stats.reboots += 1;
                    self.boot_anchor = (timeline, s.t_ms as i64);
                    self.event(
                        at.mono_ms,
                        "reboot",
                        format!(
                            "meter rebooted ({}): seq {} → {}, t_ms {} → {}; timeline continues after a {gap} ms gap measured on the host clock",
                            if hello_seen { "new hello" } else { "no hello seen" },
                            last.seq,
                            s.seq,
                            last.t_raw,
                            s.t_ms
                        ),
                    );
                    (s.t_ms as i64, timeline, true)
                } else {
                    if dseq > 1 {
                        let lost = (dseq - 1) as u64;
                        self.stats.lost_samples += lost;
                        self.event(
                            at.mono_ms,
                            "lost-samples",
                            format!("{lost} sample(s) lost: seq {} → {}", last.seq, s.seq),
                        );
                    }
                    let t_cont = last.t_cont + dt as i64;
                    (
                        t_cont,
                        self.boot_anchor.0 + (t_cont - self.boot_anchor.1) as f64,
                        false,
                    )
                }
            }
        };
        self.last = Some(LastSample {
            seq: s.seq,
            t_raw: s.t_ms,
            t_cont,
            timeline,
            host_mono: at.mono_ms,
        });
        if self.first_sample.is_none() {
            let nodes = s.ch.iter().map(|r| r.node).collect();
            let all_wh = s.ch.iter().all(|r| r.wh.is_some());
            self.first_sample = Some((nodes, all_wh));
        }
        for r in &s.ch {
            let energy_j = self.counter(r, timeline, at, rebooted);
            self.nodes
                .entry(r.node)
                .and_modify(|n| {
                    n.last_timeline = timeline;
                    n.last_w = r.w;
                })
                .or_insert(NodeState {
                    last_timeline: timeline,
                    last_w: r.w,
                    counter: None,
                });
            out.push(PowerSample {
                channel: r.node,
                t_ms: timeline,
                host_mono_ms: at.mono_ms,
                host_utc_ms: at.utc_ms,
                source_t_ms: Some(s.t_ms as f64),
                watts: r.w,
                volts: r.v,
                amps: r.a,
                power_factor: r.pf,
                energy_j,
            });
            self.stats.samples += 1;
        }
    }

    /// The continuous counter of one reading (updates the node's counter state).
    fn counter(&mut self, r: &Reading, timeline: f64, at: Arrival, rebooted: bool) -> Option<f64> {
        let wh = r.wh?;
        let here = wh * 3600.0;
        let boot = self.boot;
        let node = self.nodes.get(&r.node).copied();
        let (state, reset) = match node.and_then(|n| n.counter.map(|c| (n, c))) {
            None => (
                CounterState {
                    offset_j: 0.0,
                    last_wh: wh,
                    last_j: here,
                    boot,
                },
                false,
            ),
            Some((n, c)) => {
                let restarted = rebooted || c.boot != boot || wh < c.last_wh;
                if restarted {
                    // Bridge the gap with the trapezoid of the bounding power readings.
                    let bridge = (timeline - n.last_timeline).max(0.0) * (n.last_w + r.w) / 2000.0;
                    let j = c.last_j + bridge;
                    (
                        CounterState {
                            offset_j: j - here,
                            last_wh: wh,
                            last_j: j,
                            boot,
                        },
                        !rebooted && c.boot == boot,
                    )
                } else {
                    let j = c.offset_j + here;
                    (
                        CounterState {
                            last_wh: wh,
                            last_j: j,
                            ..c
                        },
                        false,
                    )
                }
            }
        };
        if reset {
            self.event(
                at.mono_ms,
                "counter-reset",
                format!("node {}: the IC energy counter went back without a reboot; bridged with integrated power", r.node),
            );
        }
        if let Some(n) = self.nodes.get_mut(&r.node) {
            n.counter = Some(state);
        } else {
            self.nodes.insert(
                r.node,
                NodeState {
                    last_timeline: timeline,
                    last_w: r.w,
                    counter: Some(state),
                },
            );
        }
        Some(state.last_j)
    }
}

// ---------------------------------------------------------------------------------------------
// The source
// ---------------------------------------------------------------------------------------------

/// The `epi-meter` power source.
pub struct EpiMeter {
    config: EpiMeterConfig,
    clock: Option<HostClock>,
    port: Option<tokio_serial::SerialStream>,
    stream: MeterStream,
    splitter: LineSplitter,
    buf: Vec<u8>,
    pending: Vec<PowerSample>,
    disconnected_since: Option<f64>,
    backoff_ms: u64,
    closed: bool,
    /// The hello known when `open` returned (to tell whether the info changed since).
    opened_hello: Option<Hello>,
}

impl std::fmt::Debug for EpiMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpiMeter")
            .field("config", &self.config)
            .finish()
    }
}

impl EpiMeter {
    /// A source for `config` (no I/O until [`PowerSource::open`]).
    pub fn new(config: EpiMeterConfig) -> Result<EpiMeter, PowerError> {
        config.validate().map_err(|message| PowerError::Config {
            source_key: KEY.into(),
            message,
        })?;
        Ok(EpiMeter {
            stream: MeterStream::new(config.fields.clone()),
            backoff_ms: config.reconnect_initial_ms,
            config,
            clock: None,
            port: None,
            splitter: LineSplitter::default(),
            buf: vec![0; 8192],
            pending: Vec::new(),
            disconnected_since: None,
            closed: false,
            opened_hello: None,
        })
    }

    fn open_port(&self) -> Result<tokio_serial::SerialStream, tokio_serial::Error> {
        use tokio_serial::SerialPortBuilderExt;
        let c = &self.config;
        let data_bits = match c.data_bits {
            5 => tokio_serial::DataBits::Five,
            6 => tokio_serial::DataBits::Six,
            7 => tokio_serial::DataBits::Seven,
            _ => tokio_serial::DataBits::Eight,
        };
        let parity = match c.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Odd => tokio_serial::Parity::Odd,
            Parity::Even => tokio_serial::Parity::Even,
        };
        let stop_bits = if c.stop_bits == 2 {
            tokio_serial::StopBits::Two
        } else {
            tokio_serial::StopBits::One
        };
        let flow = match c.flow_control {
            FlowControl::None => tokio_serial::FlowControl::None,
            FlowControl::Software => tokio_serial::FlowControl::Software,
            FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
        };
        tokio_serial::new(&c.port, c.baud)
            .data_bits(data_bits)
            .parity(parity)
            .stop_bits(stop_bits)
            .flow_control(flow)
            .open_native_async()
    }

    fn open_error(&self, e: &tokio_serial::Error) -> PowerError {
        let port = &self.config.port;
        let reason = match e.kind() {
            tokio_serial::ErrorKind::Io(std::io::ErrorKind::NotFound) => format!(
                "serial port {port} does not exist: is the meter plugged in? (ls /dev/serial/by-id/ lists USB serial devices)"
            ),
            tokio_serial::ErrorKind::Io(std::io::ErrorKind::PermissionDenied) => format!(
                "no permission to open {port}: add your user to the group owning it (usually `dialout`: sudo usermod -aG dialout $USER, then log in again)"
            ),
            tokio_serial::ErrorKind::NoDevice => {
                format!("serial port {port} is busy or not a device: {e} (is another program using it?)")
            }
            _ => format!("cannot open serial port {port}: {e}"),
        };
        PowerError::NotAvailable {
            source_key: KEY.into(),
            reason,
        }
    }

    fn clock(&self) -> HostClock {
        self.clock.unwrap_or_else(HostClock::start)
    }

    /// Feeds bytes that arrived at `at`; samples go to `self.pending`.
    fn feed(&mut self, n: usize, at: Arrival) {
        let max = self.config.max_line_bytes;
        let (splitter, stream, pending, buf) = (
            &mut self.splitter,
            &mut self.stream,
            &mut self.pending,
            &self.buf,
        );
        splitter.feed(&buf[..n], max, |f| match f {
            Framed::Line(line) => stream.line(line, at, pending),
            Framed::TooLong => stream.too_long(at, max),
        });
    }

    fn take_batch(&mut self) -> SampleBatch {
        SampleBatch {
            samples: std::mem::take(&mut self.pending),
            events: std::mem::take(&mut self.stream.events),
        }
    }

    fn info(&self, clock: &HostClock) -> SourceInfo {
        let hello = self.stream.hello.clone();
        let (nodes, all_wh) = self.stream.first_sample.clone().unwrap_or_default();
        let mut ids: Vec<u32> = nodes;
        if let Some(c) = hello.as_ref().and_then(|h| h.channels) {
            ids.extend(0..c.min(4096));
        }
        ids.sort_unstable();
        ids.dedup();
        let instrument = match &hello {
            Some(h) => format!(
                "{} fw {}, {}",
                h.board.as_deref().unwrap_or("epi-meter"),
                h.fw.as_deref().unwrap_or("?"),
                h.ic.as_deref().unwrap_or("metering IC not stated")
            ),
            None => "epi-meter (no hello line received yet)".to_string(),
        };
        let mut details = Map::new();
        details.insert("port".into(), Value::from(self.config.port.clone()));
        details.insert("baud".into(), Value::from(self.config.baud));
        details.insert("protocol".into(), Value::from("epi-meter UART v1"));
        if self.config.fields != FieldNames::default() {
            details.insert(
                "fields".into(),
                serde_json::to_value(&self.config.fields).unwrap_or(Value::Null),
            );
        }
        details.insert(
            "hello".into(),
            serde_json::to_value(&hello).unwrap_or(Value::Null),
        );
        details.insert(
            "timeline".into(),
            Value::from("meter clock (t_ms unwrapped), anchored at the first sample's host arrival; reboots bridged on the host clock"),
        );
        details.insert(
            "timeline_zero_utc_ms".into(),
            Value::from(clock.zero_utc_ms()),
        );
        details.insert(
            "energy".into(),
            Value::from(if all_wh {
                "counter: the metering IC's Wh register (energy_j), bridged across reboots; integrated watts kept beside it"
            } else {
                "integrated: trapezoid of the meter's watts (no wh field)"
            }),
        );
        SourceInfo {
            source: KEY.into(),
            method: if all_wh {
                EnergyMethod::Counter
            } else {
                EnergyMethod::Integrated
            },
            instrument,
            sample_rate_hz: hello.as_ref().and_then(|h| h.rate_hz),
            accuracy_rel: self.config.accuracy_rel,
            channels: ids
                .into_iter()
                .map(|id| ChannelInfo {
                    id,
                    name: format!("node {id}"),
                    scope: "ac-inlet".into(),
                })
                .collect(),
            replay: false,
            details,
        }
    }

    fn disconnect(&mut self, why: String) {
        let clock = self.clock();
        let at = clock.now().mono_ms;
        self.port = None;
        self.splitter.reset();
        self.disconnected_since = Some(at);
        self.backoff_ms = self.config.reconnect_initial_ms;
        self.stream.events.push(SourceEvent {
            host_mono_ms: at,
            kind: "disconnected".into(),
            detail: format!("{}: {why}; reconnecting", self.config.port),
        });
    }

    /// Tries to reopen the port until it succeeds (with back-off).
    async fn reconnect(&mut self) {
        let clock = self.clock();
        loop {
            tokio::time::sleep(Duration::from_millis(self.backoff_ms)).await;
            self.backoff_ms = (self.backoff_ms * 2).min(self.config.reconnect_max_ms);
            if let Ok(port) = self.open_port() {
                let at = clock.now().mono_ms;
                let since = self.disconnected_since.take().unwrap_or(at);
                let gap = at - since;
                self.stats_add_gap(gap);
                self.port = Some(port);
                self.stream.connected();
                self.backoff_ms = self.config.reconnect_initial_ms;
                self.stream.events.push(SourceEvent {
                    host_mono_ms: at,
                    kind: "reconnected".into(),
                    detail: format!("{} back after {:.0} ms without data", self.config.port, gap),
                });
                return;
            }
        }
    }

    fn stats_add_gap(&mut self, gap: f64) {
        self.stream.stats.reconnects += 1;
        self.stream.stats.disconnected_ms += gap;
    }
}

#[epi_core::async_trait]
impl PowerSource for EpiMeter {
    async fn open(&mut self) -> Result<SourceInfo, PowerError> {
        let clock = HostClock::start();
        self.clock = Some(clock);
        let mut port = self.open_port().map_err(|e| self.open_error(&e))?;
        self.stream.connected();
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.config.open_timeout_ms);
        while self.stream.first_sample.is_none() {
            let read = tokio::time::timeout_at(deadline, port.read(&mut self.buf)).await;
            match read {
                Err(_) => {
                    let bad = self.stream.stats.bad_lines;
                    return Err(PowerError::NotAvailable {
                        source_key: KEY.into(),
                        reason: format!(
                            "no valid epi-meter sample line on {} within {} ms ({bad} unreadable line(s)){}",
                            self.config.port,
                            self.config.open_timeout_ms,
                            if bad > 0 {
                                format!(": wrong baud rate (configured {}) or not an epi-meter?", self.config.baud)
                            } else {
                                ": is the meter powered and streaming? is this the right port?".to_string()
                            }
                        ),
                    });
                }
                Ok(Ok(0)) => {
                    return Err(PowerError::Io {
                        source_key: KEY.into(),
                        message: format!(
                            "{}: the port closed while waiting for the first sample",
                            self.config.port
                        ),
                    })
                }
                Ok(Err(e)) => {
                    return Err(PowerError::Io {
                        source_key: KEY.into(),
                        message: format!(
                            "{}: read failed while waiting for the first sample: {e}",
                            self.config.port
                        ),
                    })
                }
                Ok(Ok(n)) => self.feed(n, clock.now()),
            }
        }
        self.port = Some(port);
        self.opened_hello = self.stream.hello.clone();
        Ok(self.info(&clock))
    }

    async fn next_batch(&mut self) -> Result<Option<SampleBatch>, PowerError> {
        if self.closed || self.clock.is_none() {
            return Err(PowerError::Io {
                source_key: KEY.into(),
                message: "next_batch called before open or after close".into(),
            });
        }
        let clock = self.clock();
        loop {
            if !self.pending.is_empty() || !self.stream.events.is_empty() {
                return Ok(Some(self.take_batch()));
            }
            let Some(port) = self.port.as_mut() else {
                self.reconnect().await;
                continue;
            };
            match port.read(&mut self.buf).await {
                Ok(0) => self.disconnect("the port closed (end of file)".into()),
                Err(e) => self.disconnect(format!("read failed: {e}")),
                Ok(n) => self.feed(n, clock.now()),
            }
        }
    }

    fn stats(&self) -> SourceStats {
        let mut s = self.stream.stats.clone();
        if let (Some(since), Some(clock)) = (self.disconnected_since, self.clock) {
            s.disconnected_ms += (clock.now().mono_ms - since).max(0.0);
        }
        s
    }

    /// The info with the meter's latest `hello` when one arrived (or changed) after `open`.
    fn current_info(&self) -> Option<SourceInfo> {
        match self.clock {
            Some(clock) if self.stream.hello != self.opened_hello => Some(self.info(&clock)),
            _ => None,
        }
    }

    async fn close(&mut self) -> Result<(), PowerError> {
        self.port = None;
        self.closed = true;
        Ok(())
    }
}

fn build(config: &PluginConfig) -> Result<Box<dyn PowerSource>, epi_core::Error> {
    crate::build_source(KEY, config, EpiMeter::new)
}

impl epi_core::settings::PluginSettings for EpiMeterConfig {
    fn example() -> Self {
        epi_core::settings::example_from(serde_json::json!({"port": "/dev/ttyUSB0"}))
    }
}

epi_core::inventory::submit! {
    PluginRegistration {
        key: KEY,
        description: "epi-meter board on a serial port (UART JSON lines v1): per-node AC W, V, A, PF, Wh",
        factory: Factory::Power(build),
        settings: epi_core::settings::Settings::of::<EpiMeterConfig>,
        toml_aliases: &[],
        capabilities: &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: f64) -> Arrival {
        Arrival {
            mono_ms: ms,
            utc_ms: 1_700_000_000_000 + ms as i64,
        }
    }

    fn sample_line(seq: u32, t: u32, ch: &[(u32, f64, Option<f64>)]) -> String {
        let chs: Vec<String> = ch
            .iter()
            .map(|(n, w, wh)| {
                let wh = wh.map(|x| format!(",\"wh\":{x}")).unwrap_or_default();
                format!(
                    "{{\"node\":{n},\"w\":{w},\"v\":121.3,\"a\":0.1,\"pf\":0.997,\"var\":0.9{wh}}}"
                )
            })
            .collect();
        format!(
            "{{\"type\":\"sample\",\"seq\":{seq},\"t_ms\":{t},\"ch\":[{}]}}",
            chs.join(",")
        )
    }

    fn feed(s: &mut MeterStream, line: &str, ms: f64) -> Vec<PowerSample> {
        let mut out = Vec::new();
        s.line(line.as_bytes(), at(ms), &mut out);
        out
    }

    #[test]
    fn parses_the_spec_examples() {
        let p = LineParser::new(FieldNames::default());
        let hello = r#"{"type":"hello","fw":"0.1.0","board":"epi-meter v1.0","channels":4,"rate_hz":10,"ic":"ATM90E26"}"#;
        match p.parse(hello.as_bytes()).unwrap() {
            Line::Hello(h) => {
                assert_eq!(h.fw.as_deref(), Some("0.1.0"));
                assert_eq!(h.channels, Some(4));
                assert_eq!(h.rate_hz, Some(10.0));
            }
            other => panic!("{other:?}"),
        }
        let sample = r#"{"type":"sample","seq":1042,"t_ms":104200,"ch":[{"node":0,"w":12.45,"v":121.30,"a":0.103,"pf":0.9970,"var":0.91,"wh":3.4521},{"node":1,"w":11.89,"v":121.28,"a":0.098,"pf":0.9965,"var":0.88,"wh":3.3017}]}"#;
        match p.parse(format!("{sample}\r").as_bytes()).unwrap() {
            Line::Sample(s) => {
                assert_eq!((s.seq, s.t_ms), (1042, 104200));
                assert_eq!(s.ch[1].w, 11.89);
                assert_eq!(s.ch[0].wh, Some(3.4521));
                assert_eq!(s.ch[0].pf, Some(0.997));
            }
            other => panic!("{other:?}"),
        }
        let err = r#"{"type":"error","t_ms":104250,"node":2,"code":"ct_open","msg":"CT clamp not detected"}"#;
        assert!(matches!(
            p.parse(err.as_bytes()).unwrap(),
            Line::Error(ErrorLine { node: Some(2), .. })
        ));
        // Unknown types and fields are ignored.
        assert_eq!(
            p.parse(br#"{"type":"debug","x":1}"#).unwrap(),
            Line::Other("debug".into())
        );
        let extra =
            sample_line(1, 2, &[(0, 1.0, None)]).replace("\"seq\"", "\"temp_c\":41.5,\"seq\"");
        assert!(matches!(
            p.parse(extra.as_bytes()).unwrap(),
            Line::Sample(_)
        ));
    }

    #[test]
    fn bad_lines_say_why_and_keep_the_seq_when_readable() {
        let p = LineParser::new(FieldNames::default());
        let cases: Vec<(String, &str, Option<u32>)> = vec![
            ("\u{1}\u{2}garbage".into(), "not a JSON object", None),
            (r#"{"type":"sample","seq":5,"t_ms":10,"ch":[{"node":0,"w":1"#.into(), "not a JSON object", None),
            (r#"{"type":"sample","seq":5,"t_ms":10,"ch":[{"node":0,"w":NaN,"v":1,"a":1,"pf":1}]}"#.into(), "not a JSON object", None),
            (sample_line(7, 10, &[(0, -3.5, None)]), "expected watts ≥ 0, found -3.5", Some(7)),
            (sample_line(8, 10, &[(0, 3.5, None)]).replace("0.997", "1.2"), "power factor in [0, 1]", Some(8)),
            (sample_line(9, 10, &[(0, 3.5, None)]).replace("\"w\":3.5", "\"w\":\"3.5\""), "field `w`: expected watts ≥ 0, found \"3.5\"", Some(9)),
            (sample_line(10, 10, &[(0, 3.5, None), (0, 1.0, None)]), "node 0 appears twice", Some(10)),
            (sample_line(11, 10, &[(0, 3.5, None)]).replace(",\"v\":121.3", ""), "missing field `v`", Some(11)),
            (r#"{"type":"sample","seq":-1,"t_ms":10,"ch":[]}"#.into(), "field `seq`: expected an integer", None),
            (r#"{"type":"sample","seq":4294967296,"t_ms":10,"ch":[]}"#.into(), "field `seq`", None),
            (r#"{"seq":1}"#.into(), "missing field `type`", None),
            ("[1,2]".into(), "expected a JSON object", None),
            (sample_line(12, 10, &[(0, 3.5, Some(-1.0))]), "field `wh`", Some(12)),
        ];
        for (line, want, seq) in cases {
            let e = p.parse(line.as_bytes()).unwrap_err();
            assert!(
                e.reason.contains(want),
                "{line}: {} (wanted {want})",
                e.reason
            );
            assert_eq!(e.seq, seq, "{line}");
        }
    }

    #[test]
    fn a_firmware_variant_maps_by_configuration() {
        let names: FieldNames = serde_json::from_value(serde_json::json!({
            "type": "kind", "type_sample": "s", "seq": "n", "t_ms": "ms", "ch": "chan", "node": "id",
            "w": "watts", "v": "", "a": "", "pf": "cosphi", "wh": "e_wh"
        }))
        .unwrap();
        let p = LineParser::new(names);
        let line = br#"{"kind":"s","n":3,"ms":300,"chan":[{"id":2,"watts":7.5,"cosphi":0.5,"e_wh":1.25}]}"#;
        match p.parse(line).unwrap() {
            Line::Sample(s) => {
                assert_eq!(
                    s.ch[0],
                    Reading {
                        node: 2,
                        w: 7.5,
                        v: None,
                        a: None,
                        pf: Some(0.5),
                        wh: Some(1.25)
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        // The default names no longer parse.
        assert!(p
            .parse(sample_line(1, 1, &[(0, 1.0, None)]).as_bytes())
            .is_err());
        let bad: Result<EpiMeterConfig, _> =
            serde_json::from_value(serde_json::json!({"port": "/dev/x", "fields": {"watt": "w"}}));
        assert!(bad
            .unwrap_err()
            .to_string()
            .contains("unknown field `watt`"));
        let empty = EpiMeterConfig {
            fields: FieldNames {
                w: String::new(),
                ..Default::default()
            },
            ..config("/dev/x")
        };
        assert!(empty.validate().unwrap_err().contains("fields.w"));
    }

    fn config(port: &str) -> EpiMeterConfig {
        serde_json::from_value(serde_json::json!({ "port": port })).unwrap()
    }

    #[test]
    fn splitter_handles_partial_and_over_long_lines() {
        let mut s = LineSplitter::default();
        let mut got: Vec<String> = Vec::new();
        let mut push = |f: Framed<'_>| {
            got.push(match f {
                Framed::Line(l) => String::from_utf8_lossy(l).into_owned(),
                Framed::TooLong => "<too long>".into(),
            })
        };
        s.feed(b"ab", 8, &mut push);
        s.feed(b"c\nde\n", 8, &mut push);
        s.feed(b"0123456789", 8, &mut push);
        s.feed(b"0123\nok\n", 8, &mut push);
        s.feed(b"0123456789abc\nz\n", 8, &mut push);
        assert_eq!(
            got,
            vec!["abc", "de", "<too long>", "ok", "<too long>", "z"]
        );
    }

    #[test]
    fn partial_first_line_and_bad_lines_are_counted_not_fatal() {
        let mut s = MeterStream::new(FieldNames::default());
        s.connected();
        assert!(feed(&mut s, "0.99,\"var\":0.9}]}", 0.0).is_empty());
        assert_eq!(s.events[0].kind, "partial-line");
        assert_eq!(
            feed(&mut s, &sample_line(1, 100, &[(0, 10.0, None)]), 10.0).len(),
            1
        );
        assert!(feed(&mut s, "%%garbage%%", 20.0).is_empty());
        assert_eq!(
            feed(&mut s, &sample_line(2, 200, &[(0, 10.0, None)]), 110.0).len(),
            1
        );
        // A bad sample whose seq is readable is not a lost sample.
        assert!(feed(&mut s, &sample_line(3, 300, &[(0, -1.0, None)]), 210.0).is_empty());
        assert_eq!(
            feed(&mut s, &sample_line(4, 400, &[(0, 10.0, None)]), 310.0).len(),
            1
        );
        assert_eq!(s.stats.bad_lines, 3);
        assert_eq!(s.stats.lost_samples, 0);
        assert_eq!(s.stats.samples, 3);
    }

    #[test]
    fn seq_gaps_count_lost_samples_across_the_u32_wrap() {
        let mut s = MeterStream::new(FieldNames::default());
        let max = u32::MAX;
        feed(&mut s, &sample_line(max - 1, 1000, &[(0, 1.0, None)]), 0.0);
        feed(&mut s, &sample_line(max, 1100, &[(0, 1.0, None)]), 100.0);
        feed(&mut s, &sample_line(0, 1200, &[(0, 1.0, None)]), 200.0);
        assert_eq!(s.stats.lost_samples, 0);
        feed(&mut s, &sample_line(4, 1600, &[(0, 1.0, None)]), 600.0);
        assert_eq!(s.stats.lost_samples, 3);
        assert_eq!(s.stats.reboots, 0);
        assert!(s
            .events
            .iter()
            .any(|e| e.kind == "lost-samples" && e.detail.contains("3 sample(s)")));
        // Duplicates are bad lines, not reboots.
        feed(&mut s, &sample_line(4, 1600, &[(0, 1.0, None)]), 610.0);
        assert_eq!((s.stats.bad_lines, s.stats.reboots), (1, 0));
    }

    #[test]
    fn t_ms_wrap_keeps_the_timeline_continuous_on_the_meter_clock() {
        let mut s = MeterStream::new(FieldNames::default());
        let t0 = u32::MAX - 150;
        let a = feed(&mut s, &sample_line(1, t0, &[(0, 1.0, None)]), 5000.4);
        let b = feed(
            &mut s,
            &sample_line(2, t0.wrapping_add(100), &[(0, 1.0, None)]),
            5103.0,
        );
        let c = feed(
            &mut s,
            &sample_line(3, t0.wrapping_add(200), &[(0, 1.0, None)]),
            5199.0,
        );
        assert_eq!(a[0].t_ms, 5000.0); // anchored at the host arrival, whole ms
        assert_eq!(b[0].t_ms, 5100.0); // then the meter's clock, not the host's
        assert_eq!(c[0].t_ms, 5200.0);
        assert_eq!(c[0].source_t_ms, Some(49.0));
        assert_eq!(c[0].host_mono_ms, 5199.0);
        assert_eq!(s.stats.reboots, 0);
    }

    #[test]
    fn reboot_continues_the_timeline_in_host_time_and_bridges_the_counter() {
        let mut s = MeterStream::new(FieldNames::default());
        feed(
            &mut s,
            r#"{"type":"hello","fw":"0.1.0","board":"epi-meter v1.0","channels":1,"rate_hz":10,"ic":"ATM90E26"}"#,
            0.0,
        );
        let a = feed(
            &mut s,
            &sample_line(500, 50_000, &[(0, 10.0, Some(1.0))]),
            1000.0,
        );
        let b = feed(
            &mut s,
            &sample_line(501, 50_100, &[(0, 20.0, Some(1.001))]),
            1100.0,
        );
        assert_eq!(a[0].energy_j, Some(3600.0));
        assert!((b[0].energy_j.unwrap() - 3603.6).abs() < 1e-9);
        feed(
            &mut s,
            r#"{"type":"hello","fw":"0.1.0","board":"epi-meter v1.0","channels":1,"rate_hz":10,"ic":"ATM90E26"}"#,
            1700.0,
        );
        // Rebooted: seq and t_ms restart. Host gap 1100 → 1800 ms.
        let c = feed(
            &mut s,
            &sample_line(0, 300, &[(0, 30.0, Some(0.0005))]),
            1800.2,
        );
        let d = feed(
            &mut s,
            &sample_line(1, 400, &[(0, 30.0, Some(0.0015))]),
            1901.0,
        );
        assert_eq!(s.stats.reboots, 1);
        assert_eq!(s.stats.lost_samples, 0);
        assert_eq!(c[0].t_ms, b[0].t_ms + 700.0);
        assert_eq!(d[0].t_ms, c[0].t_ms + 100.0);
        // Counter: bridged by the trapezoid (20 + 30)/2 W × 0.7 s = 17.5 J, then the new boot's Wh.
        let bridged = b[0].energy_j.unwrap() + 17.5;
        assert!((c[0].energy_j.unwrap() - bridged).abs() < 1e-9);
        assert!((d[0].energy_j.unwrap() - (bridged + 0.001 * 3600.0)).abs() < 1e-9);
        let ev = s.events.iter().find(|e| e.kind == "reboot").unwrap();
        assert!(
            ev.detail.contains("new hello") && ev.detail.contains("700 ms"),
            "{}",
            ev.detail
        );
    }

    #[test]
    fn reboot_gap_is_at_least_the_meters_uptime() {
        // Both lines read in one chunk (same arrival): the gap is the new boot's uptime.
        let mut s = MeterStream::new(FieldNames::default());
        let a = feed(&mut s, &sample_line(9, 90_000, &[(0, 1.0, None)]), 100.0);
        let b = feed(&mut s, &sample_line(0, 250, &[(0, 1.0, None)]), 100.0);
        assert_eq!(b[0].t_ms - a[0].t_ms, 250.0);
        assert_eq!(s.stats.reboots, 1);
    }

    #[test]
    fn a_long_uptime_reboot_is_detected_by_the_clock_lead() {
        // After 30 days, t_ms going back to 300 looks like a step forward modulo 2^32, and seq may
        // have wrapped to a similar value; the meter clock would lead the host by 19 days.
        let mut s = MeterStream::new(FieldNames::default());
        let t_old = 30 * 86_400_000u32;
        feed(&mut s, &sample_line(10, t_old, &[(0, 1.0, None)]), 0.0);
        feed(&mut s, &sample_line(11, 300, &[(0, 1.0, None)]), 1000.0);
        assert_eq!(s.stats.reboots, 1);
    }

    #[test]
    fn counter_reset_without_reboot_is_bridged() {
        let mut s = MeterStream::new(FieldNames::default());
        let a = feed(&mut s, &sample_line(1, 100, &[(0, 10.0, Some(5.0))]), 0.0);
        let b = feed(&mut s, &sample_line(2, 200, &[(0, 10.0, Some(0.0))]), 100.0);
        assert!((b[0].energy_j.unwrap() - (a[0].energy_j.unwrap() + 1.0)).abs() < 1e-9);
        assert!(s.events.iter().any(|e| e.kind == "counter-reset"));
    }

    #[test]
    fn factory_validates_without_io() {
        let r = Registry::builtin();
        assert!(r
            .power(KEY, &serde_json::json!({"port": "/dev/does-not-exist"}))
            .is_ok());
        let e = r
            .power(KEY, &serde_json::json!({"port": "/dev/x", "baud": 0}))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("baud"), "{e}");
        let e = r
            .power(KEY, &serde_json::json!({"port": "/dev/x", "bogus": 1}))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("unknown field `bogus`"), "{e}");
        let e = r
            .power(KEY, &serde_json::json!({}))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("missing field `port`"), "{e}");
    }

    use epi_core::Registry;

    #[tokio::test]
    async fn a_missing_port_is_not_available_with_a_hint() {
        let mut m = EpiMeter::new(config("/dev/epi-meter-test-does-not-exist")).unwrap();
        let e = m.open().await.unwrap_err();
        assert!(matches!(e, PowerError::NotAvailable { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("does not exist: is the meter plugged in?"),
            "{e}"
        );
    }

    /// Whether socat is installed (fails under `EPI_REQUIRE_SYSTEM_TOOLS`).
    fn have_socat() -> bool {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join("socat").is_file()))
            .unwrap_or(false);
        if !found && std::env::var_os("EPI_REQUIRE_SYSTEM_TOOLS").is_some() {
            panic!("socat is required (EPI_REQUIRE_SYSTEM_TOOLS is set) but not installed: run .ci/setup");
        }
        if !found {
            eprintln!("skipping: socat not installed (run .ci/setup)");
        }
        found
    }

    struct Socat(std::process::Child);
    impl Drop for Socat {
        fn drop(&mut self) {
            // SIGTERM, so socat removes its links as an unplugged device node disappears.
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &self.0.id().to_string()])
                .status();
            let _ = self.0.wait();
        }
    }

    fn socat(dir: &std::path::Path) -> Socat {
        let child = std::process::Command::new("socat")
            .arg(format!(
                "pty,raw,echo=0,link={}",
                dir.join("meter").display()
            ))
            .arg(format!(
                "pty,raw,echo=0,link={},wait-slave,pty-interval=0.02",
                dir.join("host").display()
            ))
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn socat");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !(dir.join("meter").exists() && dir.join("host").exists()) {
            assert!(
                std::time::Instant::now() < deadline,
                "socat made no pty pair in 60 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Socat(child)
    }

    #[tokio::test]
    async fn reads_a_real_pty_and_survives_the_port_vanishing() {
        if !have_socat() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("host");
        let mut cfg = config(link.to_str().unwrap());
        cfg.open_timeout_ms = 60_000; // a bound on a hang: the writer starts after 300 ms
        cfg.reconnect_initial_ms = 20;
        cfg.reconnect_max_ms = 100;
        let guard = socat(dir.path());
        let meter_path = dir.path().join("meter");
        let writer = std::thread::spawn({
            let meter_path = meter_path.clone();
            move || {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&meter_path)
                    .unwrap();
                std::thread::sleep(Duration::from_millis(300));
                f.write_all(b"ial\":0.9}]}\n").unwrap();
                for i in 0..5u32 {
                    f.write_all(
                        format!(
                            "{}\n",
                            sample_line(i, i * 100, &[(0, 5.0, Some(0.01)), (1, 6.0, None)])
                        )
                        .as_bytes(),
                    )
                    .unwrap();
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
        let mut m = EpiMeter::new(cfg).unwrap();
        let info = m.open().await.unwrap();
        assert_eq!(info.method, EnergyMethod::Integrated); // node 1 sends no wh
        assert_eq!(
            info.channels.iter().map(|c| c.id).collect::<Vec<_>>(),
            vec![0, 1]
        );
        writer.join().unwrap();
        let mut samples = Vec::new();
        while samples.len() < 10 {
            let b = tokio::time::timeout(Duration::from_secs(60), m.next_batch())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            samples.extend(b.samples);
        }
        assert_eq!(m.stats().bad_lines, 1); // the partial first line
                                            // Unplug: socat goes away (the link with it), then comes back on the same path.
        drop(guard);
        let b = tokio::time::timeout(Duration::from_secs(60), m.next_batch())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(b.events[0].kind, "disconnected");
        let _guard = socat(dir.path());
        let w = std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(&meter_path)
                .unwrap();
            let _ = f.write_all(b"{\"type\":\"hello\",\"fw\":\"0.2.0\",\"board\":\"epi-meter v1.0\",\"channels\":2,\"rate_hz\":50,\"ic\":\"ATM90E26\"}\n");
            for i in 7..40u32 {
                if f.write_all(
                    format!(
                        "{}\n",
                        sample_line(i, i * 100, &[(0, 5.0, None), (1, 6.0, None)])
                    )
                    .as_bytes(),
                )
                .is_err()
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let mut events = Vec::new();
        let mut after = Vec::new();
        while after.is_empty() {
            let b = tokio::time::timeout(Duration::from_secs(60), m.next_batch())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            events.extend(b.events);
            after.extend(b.samples);
        }
        assert!(events.iter().any(|e| e.kind == "reconnected"), "{events:?}");
        let st = m.stats();
        assert_eq!(st.reconnects, 1);
        assert!(st.disconnected_ms > 0.0);
        // The meter kept counting while unplugged: the seq gap is lost samples, and the timeline
        // follows the meter's clock across the gap.
        let first_after = after[0];
        let seq_after = first_after.source_t_ms.unwrap() as u32 / 100;
        assert_eq!(st.lost_samples, (seq_after - 5) as u64);
        assert_eq!(
            first_after.t_ms - samples[0].t_ms,
            first_after.source_t_ms.unwrap()
        );
        // The hello that came after open updates the provenance.
        let info = m.current_info().expect("a hello arrived after open");
        assert_eq!(info.instrument, "epi-meter v1.0 fw 0.2.0, ATM90E26");
        assert_eq!(info.sample_rate_hz, Some(50.0));
        m.close().await.unwrap();
        w.join().unwrap();
    }
}
