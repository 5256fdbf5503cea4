//! Power traces: the trace CSV format (`timestamp_ms,node_id,watts_rms,volts_rms,amps_rms,power_factor`),
//! streaming integration, recording, and the provenance sidecar.
#![deny(missing_docs)]

#[cfg(target_arch = "x86_64")]
mod fast_x86;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod parse;
mod reader;
mod summarize;
mod window;
mod writer;

pub use parse::{
    parse_canonical_at, parse_f64, Column, Header, Row, OPTIONAL_COLUMNS, REQUIRED_COLUMNS,
};
pub use reader::TraceReader;
pub use summarize::{summarize, ChannelSummary, TraceOptions, TraceSummary};
pub use window::summarize_window;
pub use writer::TraceWriter;

use epi_core::error::Error;
use epi_core::sample::{SourceEvent, SourceInfo, SourceStats};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Provenance written beside a recorded trace as `<trace>.meta.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceMeta {
    /// Format version of this sidecar (1).
    pub format_version: u32,
    /// The source that produced the trace.
    pub source: SourceInfo,
    /// When recording started, UTC (RFC 3339).
    pub started_utc: String,
    /// Host UTC (epoch ms) at timeline zero.
    #[serde(default)]
    pub timeline_zero_utc_ms: Option<i64>,
    /// Stream health at the end.
    #[serde(default)]
    pub stats: SourceStats,
    /// Events during recording (lost samples, reboots, reconnects).
    #[serde(default)]
    pub events: Vec<SourceEvent>,
    /// Anything else (clock offset measurements, epi-bench version).
    #[serde(default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl TraceMeta {
    /// The sidecar path of a trace file.
    pub fn path_for(trace: &Path) -> PathBuf {
        let mut s = trace.as_os_str().to_os_string();
        s.push(".meta.json");
        PathBuf::from(s)
    }

    /// Reads the sidecar of `trace` if there is one.
    pub fn read_for(trace: &Path) -> Result<Option<TraceMeta>, Error> {
        let p = TraceMeta::path_for(trace);
        if !p.exists() {
            return Ok(None);
        }
        epi_core::jsonio::read_json(&p).map(Some)
    }

    /// Writes the sidecar of `trace` (atomically).
    pub fn write_for(&self, trace: &Path) -> Result<(), Error> {
        epi_core::jsonio::write_json_atomic(&TraceMeta::path_for(trace), self)
    }
}

/// A power trace file, integrated: the library API of the spec (`PowerTrace::from_csv`).
#[derive(Debug, Clone, PartialEq)]
pub struct PowerTrace {
    /// The integration results.
    pub summary: TraceSummary,
    /// Provenance from the sidecar, when the trace has one.
    pub meta: Option<TraceMeta>,
}

impl PowerTrace {
    /// Reads and integrates a trace CSV with default options.
    pub fn from_csv(path: impl AsRef<Path>) -> Result<PowerTrace, Error> {
        PowerTrace::from_csv_with(path, &TraceOptions::default())
    }

    /// Reads and integrates a trace CSV.
    pub fn from_csv_with(path: impl AsRef<Path>, opts: &TraceOptions) -> Result<PowerTrace, Error> {
        let path = path.as_ref();
        let summary = summarize(path, opts)?;
        let meta = TraceMeta::read_for(path)?;
        Ok(PowerTrace { summary, meta })
    }

    /// Reads a trace CSV and integrates it over `[a, b]` (ms on its timeline) only: the window a
    /// benchmark ran in (`energy_window_ms` of its JSON), with the same gap rule as `opts`.
    pub fn from_csv_window(
        path: impl AsRef<Path>,
        window: (f64, f64),
        opts: &TraceOptions,
    ) -> Result<PowerTrace, Error> {
        let path = path.as_ref();
        let summary = summarize_window(path, window, opts.gap_limit_ms, opts.max_gaps_listed)?;
        let meta = TraceMeta::read_for(path)?;
        Ok(PowerTrace { summary, meta })
    }

    /// Reads a trace for a benchmark result: over the benchmark's `energy_window_ms` when it
    /// names one (a run recorded more than the benchmark: start-up, warm-up, idle), else whole.
    pub fn for_benchmark(
        path: impl AsRef<Path>,
        bench: &epi_core::BenchmarkResult,
        opts: &TraceOptions,
    ) -> Result<PowerTrace, Error> {
        match bench.energy_window_ms {
            Some(w) => PowerTrace::from_csv_window(path, w, opts),
            None => PowerTrace::from_csv_with(path, opts),
        }
    }

    /// Window length, s.
    pub fn duration_seconds(&self) -> f64 {
        self.summary.duration_seconds()
    }
    /// Cluster energy, J.
    pub fn total_joules(&self) -> f64 {
        self.summary.total_joules()
    }
    /// Mean cluster power, W.
    pub fn avg_watts(&self) -> f64 {
        self.summary.avg_watts()
    }
    /// Peak cluster power, W.
    pub fn peak_watts(&self) -> f64 {
        self.summary.peak_watts
    }
    /// Samples (rows).
    pub fn num_samples(&self) -> u64 {
        self.summary.samples
    }
    /// Channels.
    pub fn num_channels(&self) -> usize {
        self.summary.channels.len()
    }
    /// Energy per node, J.
    pub fn per_node_joules(&self) -> BTreeMap<u32, f64> {
        self.summary
            .channels
            .iter()
            .map(|(k, c)| (*k, c.joules))
            .collect()
    }
}

#[cfg(test)]
mod tests;
