//! epi-bench power sources: epi-meter UART, Orchestrator SQLite over SSH, RAPL, NVML, CSV replay,
//! and the `cpu-model` estimate (labelled modelled).
#![deny(missing_docs)]

pub mod cpu_model;
pub mod csv;
pub mod epi_meter;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod host_time;
pub mod nvml;
pub mod orchestrator;
pub mod rapl;

/// Forces this crate's plugin registrations into a binary that links it (linkers drop archive
/// members nothing refers to, and `inventory` registrations are referred to by nothing).
#[inline(never)]
pub fn link() {
    std::hint::black_box(module_path!());
}

/// A registry factory's body: the key's settings parsed into the source's config struct, then the
/// running source built from it; a build error becomes a plugin error naming the key.
pub(crate) fn build_source<C, S, E>(
    key: &str,
    config: &epi_core::registry::PluginConfig,
    new: impl FnOnce(C) -> Result<S, E>,
) -> Result<Box<dyn epi_core::power::PowerSource>, epi_core::Error>
where
    C: serde::de::DeserializeOwned,
    S: epi_core::power::PowerSource + 'static,
    E: std::fmt::Display,
{
    let c: C = epi_core::registry::parse_config(key, config)?;
    let source = new(c).map_err(|e| epi_core::Error::Configuration {
        plugin: key.into(),
        message: e.to_string(),
    })?;
    Ok(Box::new(source))
}
