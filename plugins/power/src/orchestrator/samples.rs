//! Rows into samples for the Orchestrator source: timeline time from the Orchestrator's
//! `ts_utc_ms` and the measured clock offset, per-node `seq` gaps counted as lost samples, `seq` or
//! `meter_t_ms` going back counted as a reboot, and the `wh` counter made continuous (in joules)
//! across resets and held when it goes back. A row that could not be read is a `bad-line` event;
//! nothing here fails.

use super::query::DbRow;
use super::OrchestratorSource;
use epi_core::sample::{PowerSample, SampleBatch, SourceEvent};

/// Per-node stream state.
#[derive(Debug, Default, Clone)]
pub(super) struct NodeState {
    last_seq: Option<u32>,
    last_meter_t: Option<i64>,
    last_wh_j: Option<f64>,
    /// Joules added to the counter so it stays continuous across resets.
    base_j: f64,
}

impl OrchestratorSource {
    /// Turns rows into samples, updating loss, reboot and counter state.
    pub(super) fn rows_to_samples(&mut self, rows: Vec<Result<DbRow, String>>) -> SampleBatch {
        let arrival = self.clock.map(|c| c.now());
        let offset = self.offset_start.map(|o| o.offset_ms).unwrap_or(0.0);
        let mut batch = SampleBatch::default();
        for row in rows {
            let row = match row {
                Ok(r) => r,
                Err(message) => {
                    self.stats.bad_lines += 1;
                    batch
                        .events
                        .push(self.event("bad-line", format!("row skipped: {message}")));
                    continue;
                }
            };
            let state = self.nodes.entry(row.node).or_default();
            let mut reboot = false;
            if let Some(seq) = row.seq {
                let seq = seq as u32; // the meter's u32, stored as an integer
                if let Some(last) = state.last_seq {
                    let diff = seq.wrapping_sub(last);
                    let back_in_time =
                        matches!((row.meter_t, state.last_meter_t), (Some(t), Some(l)) if t < l);
                    if diff == 0 {
                        // The same sample again: nothing lost.
                    } else if diff < (1 << 31) && !back_in_time {
                        let lost = u64::from(diff - 1);
                        if lost > 0 {
                            self.stats.lost_samples += lost;
                            batch.events.push(SourceEvent {
                                host_mono_ms: arrival.map(|a| a.mono_ms).unwrap_or(0.0),
                                kind: "lost-samples".into(),
                                detail: format!(
                                    "node {}: seq {last} → {seq}: {lost} sample(s) lost (row id {})",
                                    row.node, row.id
                                ),
                            });
                        }
                    } else {
                        reboot = true;
                    }
                }
                state.last_seq = Some(seq);
            }
            if let Some(t) = row.meter_t {
                if !reboot && row.seq.is_none() {
                    reboot = state.last_meter_t.is_some_and(|l| t < l);
                }
                state.last_meter_t = Some(t);
            }
            let mut counter_back = None;
            let energy_j = match (row.wh, state.last_wh_j) {
                (None, _) => None,
                (Some(wh), None) => {
                    state.last_wh_j = Some(wh * 3600.0);
                    Some(state.base_j + wh * 3600.0)
                }
                (Some(wh), Some(last)) => {
                    let j = wh * 3600.0;
                    if reboot || j < last * 0.5 {
                        // The counter restarted (meter reboot or reset): continue from where it was.
                        state.base_j += last;
                        state.last_wh_j = Some(j);
                        Some(state.base_j + j)
                    } else if j < last {
                        // A counter must not go back: this reading is held at the last value
                        // (the counter's monotone envelope) and reported.
                        counter_back = Some((last, j));
                        Some(state.base_j + last)
                    } else {
                        state.last_wh_j = Some(j);
                        Some(state.base_j + j)
                    }
                }
            };
            if let Some((last, j)) = counter_back {
                batch.events.push(SourceEvent {
                    host_mono_ms: arrival.map(|a| a.mono_ms).unwrap_or(0.0),
                    kind: "counter-went-back".into(),
                    detail: format!(
                        "node {}: wh went back from {} J to {j} J (row id {}); energy_j held at the last value",
                        row.node, last, row.id
                    ),
                });
            }
            if reboot {
                self.stats.reboots += 1;
                batch.events.push(SourceEvent {
                    host_mono_ms: arrival.map(|a| a.mono_ms).unwrap_or(0.0),
                    kind: "reboot".into(),
                    detail: format!(
                        "node {}: the meter's seq/t_ms went back (row id {}); energy counter continued",
                        row.node, row.id
                    ),
                });
            }
            self.channels.insert(row.node);
            batch.samples.push(PowerSample {
                channel: row.node,
                t_ms: row.ts as f64 - offset - self.zero_utc_ms as f64,
                host_mono_ms: arrival.map(|a| a.mono_ms).unwrap_or(0.0),
                host_utc_ms: arrival.map(|a| a.utc_ms).unwrap_or(0),
                source_t_ms: Some(row.ts as f64),
                watts: row.watts,
                volts: row.volts,
                amps: row.amps,
                power_factor: row.pf,
                energy_j,
            });
            self.stats.samples += 1;
        }
        batch
    }
}
