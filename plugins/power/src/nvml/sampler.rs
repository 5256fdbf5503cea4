//! Sampling logic of the `nvml` source, independent of NVML: which GPUs are measured and how
//! (energy counter or polled power), counter resets, stalls and lost GPUs. A GPU that reports no
//! energy for longer than `stall_limit_ms` is a [`PowerError`]; a failed read is missing data (an
//! event and [`SourceStats::bad_lines`]), reported one by one up to a limit, then only counted.

use super::device::{GpuApi, GpuError};
use super::{NvmlConfig, NvmlMode, KEY};
use crate::host_time::Arrival;
use epi_core::power::PowerError;
use epi_core::sample::{
    ChannelInfo, EnergyMethod, PowerSample, SourceEvent, SourceInfo, SourceStats,
};
use serde_json::{Map, Value};

/// Read errors reported one by one as events; later ones are only counted.
const MAX_ERROR_EVENTS: u64 = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Counter,
    Power,
}

#[derive(Debug)]
struct Gpu {
    channel: u32,
    index: u32,
    label: String,
    mode: Mode,
    /// Counter mode: first and last raw counter values, mJ, and energy added by resets, mJ.
    first_mj: u64,
    last_mj: u64,
    carried_mj: f64,
    last_watts: f64,
    last_t: f64,
    /// When the GPU last reported energy (counter moved, or power > 0).
    last_change_t: f64,
    baseline: Option<PowerSample>,
}

/// The GPUs being measured and their state.
pub(crate) struct Sampler {
    api: Box<dyn GpuApi>,
    gpus: Vec<Gpu>,
    stall_ms: f64,
    pub stats: SourceStats,
    pub events: Vec<SourceEvent>,
    error_events: u64,
}

fn sample(channel: u32, at: Arrival, watts: f64, energy_j: Option<f64>) -> PowerSample {
    PowerSample {
        channel,
        t_ms: at.mono_ms,
        host_mono_ms: at.mono_ms,
        host_utc_ms: at.utc_ms,
        source_t_ms: None,
        watts,
        volts: None,
        amps: None,
        power_factor: None,
        energy_j,
    }
}

impl Sampler {
    /// Probes the GPUs (which have a counter) and takes the first readings.
    pub fn open(
        api: Box<dyn GpuApi>,
        config: &NvmlConfig,
        now: impl Fn() -> Arrival,
    ) -> Result<(Sampler, SourceInfo), PowerError> {
        let na = |reason: String| PowerError::NotAvailable {
            source_key: KEY.into(),
            reason,
        };
        let count = api
            .device_count()
            .map_err(|e| na(format!("NVML cannot count the GPUs: {e}")))?;
        if count == 0 {
            return Err(na("NVML is installed but sees no NVIDIA GPU".into()));
        }
        let indices: Vec<u32> = match &config.devices {
            Some(d) => {
                if let Some(bad) = d.iter().find(|&&i| i >= count) {
                    return Err(PowerError::Config {
                        source_key: KEY.into(),
                        message: format!("devices: GPU index {bad} does not exist (this machine has {count} GPU(s): 0…{})", count - 1),
                    });
                }
                d.clone()
            }
            None => (0..count).collect(),
        };
        let mut gpus = Vec::new();
        let mut channels = Vec::new();
        let mut gpu_details = Vec::new();
        for (channel, &index) in indices.iter().enumerate() {
            let channel = channel as u32;
            let desc = api
                .describe(index)
                .map_err(|e| na(format!("GPU {index}: cannot read its name: {e}")))?;
            let counter = match config.mode {
                NvmlMode::Power => None,
                NvmlMode::Auto => match api.total_energy_mj(index) {
                    Ok(v) => Some(v),
                    Err(GpuError::NotSupported) => None,
                    Err(e) => {
                        return Err(na(format!(
                            "GPU {index} ({}): cannot read its energy counter: {e}",
                            desc.name
                        )))
                    }
                },
            };
            if counter.is_none() {
                // Power must work then.
                api.power_mw(index).map_err(|e| {
                    na(format!(
                        "GPU {index} ({}) has no energy counter and cannot report power: {e}",
                        desc.name
                    ))
                })?;
            }
            let at = now();
            let mode = if counter.is_some() {
                Mode::Counter
            } else {
                Mode::Power
            };
            let label = format!("GPU {index} {}", desc.name);
            gpu_details.push(serde_json::json!({
                "channel": channel, "index": index, "name": desc.name, "uuid": desc.uuid,
                "architecture": desc.architecture,
                "method": if mode == Mode::Counter { "counter" } else { "integrated" },
            }));
            channels.push(ChannelInfo {
                id: channel,
                name: label.clone(),
                scope: "gpu".into(),
            });
            gpus.push(Gpu {
                channel,
                index,
                label,
                mode,
                first_mj: counter.unwrap_or(0),
                last_mj: counter.unwrap_or(0),
                carried_mj: 0.0,
                last_watts: 0.0,
                last_t: at.mono_ms,
                last_change_t: at.mono_ms,
                baseline: counter.map(|_| sample(channel, at, 0.0, Some(0.0))),
            });
        }
        let all_counter = gpus.iter().all(|g| g.mode == Mode::Counter);
        let driver = api.driver_version();
        let names: Vec<&str> = gpus.iter().map(|g| g.label.as_str()).collect();
        let mut details = Map::new();
        details.insert("gpus".into(), Value::Array(gpu_details));
        details.insert(
            "driver_version".into(),
            driver.clone().map(Value::from).unwrap_or(Value::Null),
        );
        details.insert("interval_ms".into(), Value::from(config.interval_ms));
        details.insert(
            "timeline".into(),
            Value::from("host monotonic clock (read time)"),
        );
        details.insert(
            "energy".into(),
            Value::from(if all_counter {
                "counter: nvmlDeviceGetTotalEnergyConsumption (mJ); watts are the mean power since the counter last moved"
            } else {
                "integrated: nvmlDeviceGetPowerUsage polled and integrated (trapezoid) on GPUs without an energy counter; note that on Ampere (except GA100) and newer it is a 1 s average"
            }),
        );
        let info = SourceInfo {
            source: KEY.into(),
            method: if all_counter {
                EnergyMethod::Counter
            } else {
                EnergyMethod::Integrated
            },
            instrument: format!(
                "NVIDIA NVML: {}{}",
                names.join(", "),
                driver.map(|d| format!(" (driver {d})")).unwrap_or_default()
            ),
            sample_rate_hz: Some(1000.0 / config.interval_ms as f64),
            accuracy_rel: config.accuracy_rel,
            channels,
            replay: false,
            details,
        };
        let sampler = Sampler {
            api,
            gpus,
            stall_ms: config.stall_limit_ms as f64,
            stats: SourceStats::default(),
            events: Vec::new(),
            error_events: 0,
        };
        Ok((sampler, info))
    }

    fn read_error(&mut self, at: f64, detail: String) {
        self.stats.bad_lines += 1;
        self.error_events += 1;
        if self.error_events <= MAX_ERROR_EVENTS {
            self.events.push(SourceEvent {
                host_mono_ms: at,
                kind: "read-error".into(),
                detail,
            });
        }
    }

    fn no_energy(&self, g: &Gpu, at: f64, what: &str) -> PowerError {
        PowerError::Measurement {
            source_key: KEY.into(),
            message: format!(
                "{} (index {}) {what} for {:.0} ms, longer than its energy update period (≤ 100 ms): refusing to report zero energy",
                g.label,
                g.index,
                at - g.last_change_t
            ),
        }
    }

    /// Reads every GPU once; samples go to `out`.
    pub fn poll(
        &mut self,
        now: impl Fn() -> Arrival,
        out: &mut Vec<PowerSample>,
    ) -> Result<(), PowerError> {
        let before = out.len();
        for i in 0..self.gpus.len() {
            let (index, mode) = (self.gpus[i].index, self.gpus[i].mode);
            let read = match mode {
                Mode::Counter => self.api.total_energy_mj(index).map(|v| v as f64),
                Mode::Power => self.api.power_mw(index).map(|v| v as f64),
            };
            let at = now();
            let stalled = at.mono_ms - self.gpus[i].last_change_t > self.stall_ms;
            let value = match read {
                Ok(v) => v,
                Err(e) => {
                    if stalled {
                        return Err(self.no_energy(
                            &self.gpus[i],
                            at.mono_ms,
                            &format!("could not be read ({e})"),
                        ));
                    }
                    let label = self.gpus[i].label.clone();
                    self.read_error(
                        at.mono_ms,
                        format!("{label}: read failed: {e}; this interval is missing, not zero"),
                    );
                    continue;
                }
            };
            let g = &mut self.gpus[i];
            match g.mode {
                Mode::Power => {
                    if value <= 0.0 {
                        if stalled {
                            return Err(self.no_energy(&self.gpus[i], at.mono_ms, "reported 0 W"));
                        }
                        continue;
                    }
                    g.last_change_t = at.mono_ms;
                    g.last_t = at.mono_ms;
                    out.push(sample(g.channel, at, value / 1000.0, None));
                }
                Mode::Counter => {
                    let raw = value as u64;
                    if raw == g.last_mj {
                        if stalled {
                            return Err(self.no_energy(
                                &self.gpus[i],
                                at.mono_ms,
                                "reported no energy (its counter did not move)",
                            ));
                        }
                        continue;
                    }
                    let dt = (at.mono_ms - g.last_t).max(1e-6);
                    if raw < g.last_mj {
                        // The counter restarted (driver reload): bridge the interval with the last power.
                        let bridge = g.last_watts * dt;
                        g.carried_mj += g.last_mj as f64 - g.first_mj as f64 + bridge;
                        g.first_mj = raw;
                        g.last_mj = raw;
                        g.last_t = at.mono_ms;
                        g.last_change_t = at.mono_ms;
                        let detail = format!(
                            "{}: energy counter went back; the {dt:.0} ms interval is bridged with the last power ({:.1} W)",
                            g.label, g.last_watts
                        );
                        let e = (g.carried_mj) / 1000.0;
                        let (ch, w) = (g.channel, g.last_watts);
                        out.push(sample(ch, at, w, Some(e)));
                        self.events.push(SourceEvent {
                            host_mono_ms: at.mono_ms,
                            kind: "counter-reset".into(),
                            detail,
                        });
                        continue;
                    }
                    let watts = (raw - g.last_mj) as f64 / dt; // mJ per ms = W
                    g.last_mj = raw;
                    g.last_t = at.mono_ms;
                    g.last_change_t = at.mono_ms;
                    g.last_watts = watts;
                    if let Some(mut b) = g.baseline.take() {
                        b.watts = watts;
                        out.push(b);
                    }
                    let e = (g.carried_mj + (raw - g.first_mj) as f64) / 1000.0;
                    out.push(sample(g.channel, at, watts, Some(e)));
                }
            }
        }
        self.stats.samples += (out.len() - before) as u64;
        Ok(())
    }
}
