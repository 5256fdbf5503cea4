//! Power samples, channels and the provenance every energy figure carries
//! (`measurement-methodology.md` §1).

use serde::{Deserialize, Serialize};

/// How an energy value was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EnergyMethod {
    /// Difference of a cumulative energy counter (NVML total energy, RAPL `energy_uj`, the
    /// meter IC's Wh register).
    Counter,
    /// Trapezoidal integral of sampled power.
    Integrated,
    /// An estimate. Never presented as a measurement.
    Modelled,
}

impl EnergyMethod {
    /// The lower-case name used in files (`counter`, `integrated`, `modelled`).
    pub fn as_str(self) -> &'static str {
        match self {
            EnergyMethod::Counter => "counter",
            EnergyMethod::Integrated => "integrated",
            EnergyMethod::Modelled => "modelled",
        }
    }
}

impl std::fmt::Display for EnergyMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One measured channel of a source: a cluster node's AC inlet, a GPU, a RAPL domain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelInfo {
    /// The channel index written as `node_id` in trace files.
    pub id: u32,
    /// A readable name (`node 0`, `GPU 0 NVIDIA H100`, `package-0`, `package-0/dram`).
    pub name: String,
    /// What the channel measures (`ac-inlet`, `gpu`, `cpu-package`, `dram`, ...).
    pub scope: String,
}

/// What a power source is and how it measures: the provenance of everything it produces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// Registry key of the source (`epi-meter`, `orchestrator`, `rapl`, `nvml`, `csv`, ...).
    pub source: String,
    /// How energy is obtained from this source.
    pub method: EnergyMethod,
    /// Instrument description (`epi-meter v1.0 fw 0.1.0, ATM90E26`, `NVIDIA H100 80GB HBM3`).
    pub instrument: String,
    /// Nominal sample rate in Hz, when the source has one.
    pub sample_rate_hz: Option<f64>,
    /// The instrument's stated relative accuracy (0.02 for ±2 %), used for uncertainty.
    pub accuracy_rel: Option<f64>,
    /// The channels, in the order samples refer to them.
    pub channels: Vec<ChannelInfo>,
    /// True when the samples replay a recording rather than measure now.
    #[serde(default)]
    pub replay: bool,
    /// Free-form details (firmware, driver version, sysfs paths, clock offset, ...).
    #[serde(default)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// One power reading of one channel.
///
/// `t_ms` is the session timeline used for integration: milliseconds on one continuous clock
/// (for a meter with its own clock, its time made continuous across reboots; otherwise the host
/// monotonic clock). The host's arrival times and the source's own time are kept beside it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PowerSample {
    /// Channel id (see [`ChannelInfo::id`]).
    pub channel: u32,
    /// Timeline timestamp in milliseconds, used for integration.
    pub t_ms: f64,
    /// Host monotonic arrival time in milliseconds since the session started.
    pub host_mono_ms: f64,
    /// Host UTC arrival time, Unix epoch milliseconds.
    pub host_utc_ms: i64,
    /// The source's own timestamp in milliseconds, when it has one.
    pub source_t_ms: Option<f64>,
    /// Real power in watts.
    pub watts: f64,
    /// RMS voltage, when measured.
    pub volts: Option<f64>,
    /// RMS current, when measured.
    pub amps: Option<f64>,
    /// Power factor in [0, 1], when measured.
    pub power_factor: Option<f64>,
    /// Cumulative energy counter in joules, already unwrapped, when the source has a counter.
    pub energy_j: Option<f64>,
}

impl PowerSample {
    /// A sample with only the timeline time, channel and watts set.
    pub fn new(channel: u32, t_ms: f64, watts: f64) -> Self {
        PowerSample {
            channel,
            t_ms,
            host_mono_ms: t_ms,
            host_utc_ms: 0,
            source_t_ms: None,
            watts,
            volts: None,
            amps: None,
            power_factor: None,
            energy_j: None,
        }
    }
}

/// Something a source noticed that is not a sample: a lost stretch, a reboot, a reconnect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceEvent {
    /// Host monotonic time of the event, ms since the session started.
    pub host_mono_ms: f64,
    /// Kind of event (`lost-samples`, `reboot`, `disconnected`, `reconnected`, `bad-line`,
    /// `device-error`, ...).
    pub kind: String,
    /// Human-readable details.
    pub detail: String,
}

/// Counters a source keeps about the health of its stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceStats {
    /// Samples delivered (one per channel reading).
    pub samples: u64,
    /// Lines or readings that were malformed or out of range and skipped.
    pub bad_lines: u64,
    /// Samples known to be lost (sequence gaps).
    pub lost_samples: u64,
    /// Times the source's device rebooted.
    pub reboots: u64,
    /// Times the connection dropped and came back.
    pub reconnects: u64,
    /// Milliseconds without data because of disconnections.
    pub disconnected_ms: f64,
}

/// What one call to [`crate::PowerSource::next_batch`] returns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SampleBatch {
    /// New samples, in timeline order within each channel.
    pub samples: Vec<PowerSample>,
    /// Events noticed since the last batch.
    pub events: Vec<SourceEvent>,
}

/// Source detail (bool): the source's `t_ms` is host UTC minus `timeline_zero_utc_ms` (a remote
/// clock corrected by a measured offset), so runs map it to their clock through UTC.
pub const TIMELINE_IS_HOST_UTC: &str = "timeline_is_host_utc";
