//! `nvml`: NVIDIA GPU energy through NVML (`nvml-wrapper`, which loads `libnvidia-ml` at run
//! time, so the binary runs on machines without a driver).
//!
//! One channel per GPU. On GPUs with a total-energy counter (Volta and newer,
//! `nvmlDeviceGetTotalEnergyConsumption`, mJ) the source delivers the counter as `energy_j`
//! (method `counter`), with the mean power since the counter last moved as watts; a sample is
//! delivered when the counter moves (it updates every ~20–100 ms, so a poll in between has nothing
//! new, and is not turned into a zero-watt sample). On older GPUs it polls
//! `nvmlDeviceGetPowerUsage` and the framework integrates the watts (method `integrated`).
//!
//! A GPU that reports no energy (a counter that does not move, or 0 W) for longer than
//! `stall_limit_ms` — longer than any counter update period — is an error, never a silent zero. A
//! failed read is missing data (an event, [`SourceStats::bad_lines`]). No library, no driver or no
//! GPU makes `open` fail with [`PowerError::NotAvailable`] saying which.
//!
//! The logic (`sampler`) sits behind a small internal trait, `GpuApi` (`device`), implemented by
//! NVML and, in the tests, by a double that behaves as NVIDIA documents (a counter updated only every update period, no counter
//! before Volta, lost GPUs). `EPI_NVML_TEST=1 cargo test -p epi-power nvml` also runs a test against
//! the real GPUs of the machine.

mod device;
mod sampler;

use crate::host_time::HostClock;
use device::{GpuApi, RealNvml};
use epi_core::power::PowerError;
use epi_core::registry::{Factory, PluginConfig, PluginRegistration};
use epi_core::sample::{SampleBatch, SourceInfo, SourceStats};
use epi_core::PowerSource;
use sampler::Sampler;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

const KEY: &str = "nvml";

fn default_interval_ms() -> u64 {
    50
}
fn default_stall_limit_ms() -> u64 {
    1_000
}

/// How energy is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NvmlMode {
    /// The energy counter where the GPU has one, polled power otherwise (default).
    Auto,
    /// Polled power on every GPU (integrated), e.g. to compare with the counter.
    Power,
}

fn default_mode() -> NvmlMode {
    NvmlMode::Auto
}

/// Settings of the `nvml` source (`[power.nvml]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NvmlConfig {
    /// Polling period, ms (50).
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// NVML device indices to measure (all by default).
    #[serde(default)]
    pub devices: Option<Vec<u32>>,
    /// `auto` (counter where available) or `power` (always poll power).
    #[serde(default = "default_mode")]
    pub mode: NvmlMode,
    /// A GPU reporting no energy (or no reading) for longer than this is an error, ms; keep it
    /// above the counter update period (≤ 100 ms on current GPUs).
    #[serde(default = "default_stall_limit_ms")]
    pub stall_limit_ms: u64,
    /// The NVML library to load (default `libnvidia-ml.so.1`, then `libnvidia-ml.so`).
    #[serde(default)]
    pub library_path: Option<String>,
    /// Stated relative accuracy, when you have one for these GPUs (none by default).
    #[serde(default)]
    pub accuracy_rel: Option<f64>,
}

impl NvmlConfig {
    fn validate(&self) -> Result<(), String> {
        if self.interval_ms == 0 {
            return Err("interval_ms: expected a polling period > 0 ms".into());
        }
        if self.stall_limit_ms <= self.interval_ms.max(100) {
            return Err(format!(
                "stall_limit_ms: expected more than the polling period and the counter update period (100 ms), found {}",
                self.stall_limit_ms
            ));
        }
        if let Some(d) = &self.devices {
            if d.is_empty() {
                return Err(
                    "devices: expected at least one device index (or leave it out for all GPUs)"
                        .into(),
                );
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The source
// ---------------------------------------------------------------------------------------------

/// The `nvml` power source.
pub struct NvmlSource {
    config: NvmlConfig,
    clock: Option<HostClock>,
    sampler: Option<Sampler>,
    ticker: Option<tokio::time::Interval>,
}

impl std::fmt::Debug for NvmlSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlSource")
            .field("config", &self.config)
            .finish()
    }
}

impl NvmlSource {
    /// A source for `config` (no I/O until [`PowerSource::open`]).
    pub fn new(config: NvmlConfig) -> Result<NvmlSource, PowerError> {
        config.validate().map_err(|message| PowerError::Config {
            source_key: KEY.into(),
            message,
        })?;
        Ok(NvmlSource {
            config,
            clock: None,
            sampler: None,
            ticker: None,
        })
    }

    async fn open_with(&mut self, api: Box<dyn GpuApi>) -> Result<SourceInfo, PowerError> {
        let clock = HostClock::start();
        let (sampler, mut info) = Sampler::open(api, &self.config, || clock.now())?;
        info.details.insert(
            "timeline_zero_utc_ms".into(),
            Value::from(clock.zero_utc_ms()),
        );
        let mut ticker = tokio::time::interval(Duration::from_millis(self.config.interval_ms));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        self.clock = Some(clock);
        self.sampler = Some(sampler);
        self.ticker = Some(ticker);
        Ok(info)
    }
}

#[epi_core::async_trait]
impl PowerSource for NvmlSource {
    async fn open(&mut self) -> Result<SourceInfo, PowerError> {
        let api = RealNvml::init(self.config.library_path.as_deref())?;
        self.open_with(Box::new(api)).await
    }

    async fn next_batch(&mut self) -> Result<Option<SampleBatch>, PowerError> {
        let (Some(clock), Some(sampler), Some(ticker)) =
            (self.clock, self.sampler.as_mut(), self.ticker.as_mut())
        else {
            return Err(PowerError::Io {
                source_key: KEY.into(),
                message: "next_batch called before open or after close".into(),
            });
        };
        let mut samples = Vec::new();
        loop {
            ticker.tick().await;
            sampler.poll(|| clock.now(), &mut samples)?;
            if !samples.is_empty() || !sampler.events.is_empty() {
                return Ok(Some(SampleBatch {
                    samples,
                    events: std::mem::take(&mut sampler.events),
                }));
            }
        }
    }

    fn stats(&self) -> SourceStats {
        self.sampler
            .as_ref()
            .map(|s| s.stats.clone())
            .unwrap_or_default()
    }

    async fn close(&mut self) -> Result<(), PowerError> {
        self.sampler = None;
        self.ticker = None;
        Ok(())
    }
}

fn build(config: &PluginConfig) -> Result<Box<dyn PowerSource>, epi_core::Error> {
    crate::build_source(KEY, config, NvmlSource::new)
}

impl epi_core::settings::PluginSettings for NvmlConfig {
    fn example() -> Self {
        epi_core::settings::example_from(serde_json::json!({}))
    }
}

epi_core::inventory::submit! {
    PluginRegistration {
        key: KEY,
        description: "NVIDIA GPUs through NVML: total-energy counter (Volta+), polled power otherwise",
        factory: Factory::Power(build),
        settings: epi_core::settings::Settings::of::<NvmlConfig>,
        toml_aliases: &[],
        capabilities: &[epi_core::registry::Capability::AutoDetect { rank: 10 }],
    }
}

#[cfg(test)]
mod tests;
