//! The [`PowerSource`] trait: anything that streams power samples.

use crate::sample::{SampleBatch, SourceInfo, SourceStats};
use async_trait::async_trait;

/// Why a power source could not deliver.
#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    /// The source cannot measure on this machine (no driver, no device, no permission). The
    /// message says why and what to do; it is never turned into a zero.
    #[error("{source_key}: not available: {reason}")]
    NotAvailable {
        /// The source's registry key.
        source_key: String,
        /// Why, and what would make it available.
        reason: String,
    },
    /// The source was reachable but reported something it must not (e.g. zero energy over a window
    /// longer than its update period).
    #[error("{source_key}: {message}")]
    Measurement {
        /// The source's registry key.
        source_key: String,
        /// What was wrong.
        message: String,
    },
    /// The device or connection failed.
    #[error("{source_key}: {message}")]
    Io {
        /// The source's registry key.
        source_key: String,
        /// What failed.
        message: String,
    },
    /// The source's configuration is wrong.
    #[error("{source_key}: configuration: {message}")]
    Config {
        /// The source's registry key.
        source_key: String,
        /// What was wrong.
        message: String,
    },
}

/// A stream of power samples with provenance.
///
/// Life cycle: [`open`](PowerSource::open) once, then [`next_batch`](PowerSource::next_batch)
/// until it returns `Ok(None)` (a finite source ended) or the caller stops, then
/// [`close`](PowerSource::close). A source that loses its device and recovers reports it through
/// [`SampleBatch::events`] and [`stats`](PowerSource::stats) rather than failing.
#[async_trait]
pub trait PowerSource: Send {
    /// Connects to the instrument and returns what it is.
    async fn open(&mut self) -> Result<SourceInfo, PowerError>;

    /// Waits for the next samples. `Ok(None)` means the source has ended (a replay reached the end
    /// of its file, a pull finished its window).
    async fn next_batch(&mut self) -> Result<Option<SampleBatch>, PowerError>;

    /// Stream health counters so far.
    fn stats(&self) -> SourceStats;

    /// The source's provenance as it stands now, when it has learnt more since
    /// [`open`](PowerSource::open) returned it — a measurement made at the end (the
    /// `orchestrator` source's end-of-run clock offset), channels that appeared later. Recorders
    /// call it after [`close`](PowerSource::close) and write it to the trace sidecar. The
    /// default, `None`, means the info from `open` still holds.
    fn current_info(&self) -> Option<crate::sample::SourceInfo> {
        None
    }

    /// Releases the instrument.
    async fn close(&mut self) -> Result<(), PowerError>;
}
