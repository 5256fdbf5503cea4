//! The remote clock's offset from the local one ([`SshSession::clock_offset`]): the round-trip
//! midpoint of a remote `date +%s%N`, the tightest of several probes, with its uncertainty.
//!
//! Fails with [`SshError::Protocol`] when the remote `date` does not print nanoseconds (BusyBox)
//! or the probe loop ends, and [`SshError::Timeout`].

use crate::exec::command_line;
use crate::{SshError, SshSession};
use epi_core::lines::{LineSplitter, Overlong, Piece};
use russh::ChannelMsg;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::time::timeout_at;

/// The offset of a remote clock from the local one, measured over SSH.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClockOffset {
    /// Remote UTC minus local UTC, ms. A remote timestamp `r` is local time `r - offset_ms`.
    pub offset_ms: f64,
    /// Half the round trip of the probe used: the true offset lies within
    /// `offset_ms ± uncertainty_ms` (assuming the remote read its clock during the round trip).
    pub uncertainty_ms: f64,
    /// Round trip of the probe used, ms.
    pub round_trip_ms: f64,
    /// Probes made; the one with the shortest round trip was kept.
    pub probes: usize,
    /// Local UTC of the kept probe's midpoint, Unix epoch ms.
    pub measured_utc_ms: i64,
}

impl ClockOffset {
    /// Converts a remote UTC timestamp (ms) to local UTC (ms).
    pub fn to_local_ms(&self, remote_ms: f64) -> f64 {
        remote_ms - self.offset_ms
    }
}

impl SshSession {
    /// Measures the remote clock's offset: `probes` round trips of a remote `date +%s%N` over one
    /// channel, keeping the one with the shortest round trip; its midpoint is taken as the instant
    /// the remote read its clock. Needs GNU `date` (`%N`) on the remote.
    pub async fn clock_offset(&self, probes: usize) -> Result<ClockOffset, SshError> {
        let probes = probes.max(1);
        let limit = Duration::from_secs(10) + Duration::from_millis(500) * probes as u32;
        let deadline = tokio::time::Instant::now() + limit;
        let script = "while read -r _; do date +%s%N; done";
        let command = format!("exec {}", command_line(&["sh", "-c", script])?);
        let mut channel = self.open_exec(command, deadline, limit).await?;
        let mut best: Option<ClockOffset> = None;
        // Lines as they came, none cut: the probe fails on a line that is not a number.
        let mut splitter = LineSplitter::new(usize::MAX, Overlong::Cut);
        let mut lines: VecDeque<String> = VecDeque::new();
        let result: Result<(), SshError> = async {
            for _ in 0..probes {
                let t0_utc = utc_ns_now();
                let t0 = Instant::now();
                channel.data_bytes(&b"\n"[..]).await.map_err(|e| self.protocol("clock probe", e))?;
                let line = loop {
                    if let Some(line) = lines.pop_front() {
                        break line;
                    }
                    match timeout_at(deadline, channel.wait()).await {
                        Err(_) => return Err(self.timeout("measuring the clock offset", limit)),
                        Ok(None) | Ok(Some(ChannelMsg::Close)) | Ok(Some(ChannelMsg::Eof)) => {
                            return Err(self.protocol("clock probe", "the remote `date` loop ended"))
                        }
                        Ok(Some(ChannelMsg::Data { data })) => splitter.feed(&data, |piece| {
                            if let Piece::Line(line) | Piece::Cut(line) = piece {
                                lines.push_back(String::from_utf8_lossy(line).trim().to_string());
                            }
                        }),
                        Ok(Some(_)) => {}
                    }
                };
                let rtt_ns = t0.elapsed().as_nanos() as f64;
                let remote_ns: i128 = match line.parse::<i128>() {
                    Ok(v) if line.len() >= 19 && line.bytes().all(|b| b.is_ascii_digit()) => v,
                    _ => {
                        return Err(self.protocol(
                            "clock probe",
                            format!("remote `date +%s%N` printed `{line}`, not nanoseconds since the epoch (GNU date is needed; BusyBox date lacks %N)"),
                        ))
                    }
                };
                let mid_ns = t0_utc as f64 + rtt_ns / 2.0;
                let offset_ms = (remote_ns as f64 - mid_ns) / 1e6;
                let candidate = ClockOffset {
                    offset_ms,
                    uncertainty_ms: rtt_ns / 2e6,
                    round_trip_ms: rtt_ns / 1e6,
                    probes,
                    measured_utc_ms: (mid_ns / 1e6).round() as i64,
                };
                if best.is_none_or(|b| candidate.round_trip_ms < b.round_trip_ms) {
                    best = Some(candidate);
                }
            }
            Ok(())
        }
        .await;
        let _ = channel.eof().await;
        let _ = channel.close().await;
        result?;
        best.ok_or_else(|| self.protocol("clock probe", "no probe completed"))
    }
}

pub(crate) fn utc_ns_now() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}
