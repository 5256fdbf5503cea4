//! `epi-meter`: the epi-meter board (RP2350 + one metering IC per cluster node) on a serial line,
//! speaking the UART protocol v1 of `epi-meter-uart.md`: one JSON object per line, `hello`,
//! `sample` and `error` lines.
//!
//! What the source does with the stream:
//!
//! - **Bad lines** (a partial first line, garbage, malformed JSON, a missing field, a wrong type, an
//!   out-of-range value such as negative watts, a power factor outside [0, 1], a duplicate node)
//!   are counted in [`SourceStats::bad_lines`](epi_core::sample::SourceStats::bad_lines) and
//!   skipped; the first ones are also reported as events. A sample line with one bad channel is
//!   skipped whole. Unknown line types and unknown fields are ignored.
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
//!   ([`SourceStats::reconnects`](epi_core::sample::SourceStats::reconnects),
//!   [`SourceStats::disconnected_ms`](epi_core::sample::SourceStats::disconnected_ms)).

//!
//! The layers, one file each: the configuration and the registration here; `parse` (one line
//! into a typed line), `framing` (bytes into lines), `stream` (the state machine: lines and
//! arrival times into samples and events, no I/O) and `source` (the serial port).

pub(crate) mod framing;
mod parse;
mod source;
pub(crate) mod stream;
#[cfg(test)]
mod tests;

pub use source::EpiMeter;

use epi_core::registry::{Factory, PluginConfig, PluginRegistration};
use epi_core::PowerSource;
use serde::{Deserialize, Serialize};

const KEY: &str = "epi-meter";

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
