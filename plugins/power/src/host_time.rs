//! The host clock every power source of this crate stamps samples with: monotonic milliseconds
//! since the source was opened (the session), and UTC milliseconds since the Unix epoch.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// When something arrived, on both host clocks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Arrival {
    /// Host monotonic milliseconds since the session started.
    pub mono_ms: f64,
    /// Host UTC, Unix epoch milliseconds.
    pub utc_ms: i64,
}

/// The session's host clock: a monotonic zero and the UTC time at that zero.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HostClock {
    start: Instant,
    zero_utc_ms: i64,
}

impl HostClock {
    /// Starts the session clock now.
    pub fn start() -> HostClock {
        HostClock {
            start: Instant::now(),
            zero_utc_ms: utc_now_ms(),
        }
    }

    /// The time now.
    pub fn now(&self) -> Arrival {
        Arrival {
            mono_ms: self.start.elapsed().as_secs_f64() * 1000.0,
            utc_ms: utc_now_ms(),
        }
    }

    /// Host UTC (epoch ms) at monotonic zero.
    pub fn zero_utc_ms(&self) -> i64 {
        self.zero_utc_ms
    }
}

/// Host UTC now, Unix epoch milliseconds.
pub(crate) fn utc_now_ms() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}
