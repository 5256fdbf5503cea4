//! Entry points for the fuzz targets (`fuzz/targets`, cargo feature `fuzzing`): the epi-meter
//! stream — line framing, the line parser and the stream state machine — fed bytes with arrival
//! times, exactly as [`crate::epi_meter::EpiMeter`] feeds them from its serial port, but with no
//! port. Nothing here fails: every outcome is in the returned [`MeterRun`].

use crate::epi_meter::{framing, stream::MeterStream, FieldNames};
use crate::host_time::Arrival;
use epi_core::sample::{PowerSample, SourceEvent, SourceStats};

/// What the meter's stream delivers, one step at a time.
#[derive(Debug, Clone, PartialEq)]
pub enum Feed<'a> {
    /// Bytes read from the port, arrived at host monotonic `mono_ms` and UTC `utc_ms`.
    Bytes {
        /// The bytes.
        data: &'a [u8],
        /// Host monotonic time, ms since the session started.
        mono_ms: f64,
        /// Host UTC, Unix epoch ms.
        utc_ms: i64,
    },
    /// The port was lost and reopened (a partial line is forgotten; the next line may be partial).
    Reconnect,
}

/// Everything the stream produced.
#[derive(Debug, Clone, PartialEq)]
pub struct MeterRun {
    /// Samples, in the order they were produced.
    pub samples: Vec<PowerSample>,
    /// Events (hello, reboots, bad lines, lost samples...).
    pub events: Vec<SourceEvent>,
    /// Stream health counters.
    pub stats: SourceStats,
}

/// Runs the epi-meter stream over `feeds` with the field table `names` and line limit `max_line`.
pub fn epi_meter(names: FieldNames, max_line: usize, feeds: &[Feed<'_>]) -> MeterRun {
    let mut splitter = framing::splitter(max_line);
    let mut stream = MeterStream::new(names);
    let mut samples = Vec::new();
    stream.connected();
    for feed in feeds {
        match *feed {
            Feed::Bytes {
                data,
                mono_ms,
                utc_ms,
            } => {
                let at = Arrival { mono_ms, utc_ms };
                framing::feed(&mut splitter, &mut stream, data, at, &mut samples);
            }
            Feed::Reconnect => {
                splitter.reset();
                stream.connected();
            }
        }
    }
    MeterRun {
        samples,
        events: std::mem::take(&mut stream.events),
        stats: stream.stats.clone(),
    }
}
