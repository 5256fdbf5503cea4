//! The GPU interface of the `nvml` source: the few NVML calls it makes, as a small trait
//! ([`GpuApi`]) implemented by NVML itself ([`RealNvml`]) and, in the tests, by a double. Loading
//! NVML fails with [`PowerError::NotAvailable`] saying which of library, driver or permission is
//! missing; a failed call is a [`GpuError`] (not supported by this GPU, or NVML's own words).

use super::KEY;
use epi_core::power::PowerError;

/// What a GPU call can fail with.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum GpuError {
    /// The GPU does not have this (no energy counter before Volta).
    NotSupported,
    /// Anything else, with NVML's words.
    Failed(String),
}

impl std::fmt::Display for GpuError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GpuError::NotSupported => f.write_str("not supported by this GPU"),
            GpuError::Failed(m) => f.write_str(m),
        }
    }
}

/// A GPU as NVML describes it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GpuDescription {
    pub name: String,
    pub uuid: Option<String>,
    pub architecture: Option<String>,
}

/// The few NVML calls the source makes.
pub(crate) trait GpuApi: Send {
    fn device_count(&self) -> Result<u32, GpuError>;
    fn describe(&self, index: u32) -> Result<GpuDescription, GpuError>;
    /// Energy since the driver loaded, mJ.
    fn total_energy_mj(&self, index: u32) -> Result<u64, GpuError>;
    /// Power, mW.
    fn power_mw(&self, index: u32) -> Result<u32, GpuError>;
    fn driver_version(&self) -> Option<String>;
}

/// NVML itself.
pub(super) struct RealNvml {
    nvml: nvml_wrapper::Nvml,
}

fn gpu_error(e: nvml_wrapper::error::NvmlError) -> GpuError {
    match e {
        nvml_wrapper::error::NvmlError::NotSupported => GpuError::NotSupported,
        other => GpuError::Failed(other.to_string()),
    }
}

impl RealNvml {
    /// Loads and initialises NVML, or says clearly why it is not there.
    pub(super) fn init(library_path: Option<&str>) -> Result<RealNvml, PowerError> {
        use nvml_wrapper::error::NvmlError as E;
        let candidates: Vec<&str> = match library_path {
            Some(p) => vec![p],
            None => vec!["libnvidia-ml.so.1", "libnvidia-ml.so"],
        };
        let mut last = None;
        for lib in &candidates {
            match nvml_wrapper::Nvml::builder()
                .lib_path(std::ffi::OsStr::new(lib))
                .init()
            {
                Ok(nvml) => return Ok(RealNvml { nvml }),
                Err(e) => last = Some((lib.to_string(), e)),
            }
        }
        let (lib, e) = last.unwrap_or_else(|| (String::new(), E::Unknown));
        let reason = match &e {
            E::LibloadingError(err) => format!(
                "cannot load the NVML library ({}): {err}. No NVIDIA driver is installed here (NVML comes with the driver), or set library_path",
                candidates.join(", ")
            ),
            E::DriverNotLoaded => "the NVIDIA kernel driver is not loaded (nvidia-smi would say the same): no NVIDIA GPU, or the driver failed to start".into(),
            E::NoPermission => "NVML has no permission to talk to the driver (check /dev/nvidia* permissions)".into(),
            E::LibraryNotFound => format!("NVML library {lib} not found"),
            E::FailedToLoadSymbol(s) => format!("{lib} is not a usable NVML library (missing symbol {s}): driver too old?"),
            other => format!("NVML failed to start: {other}"),
        };
        Err(PowerError::NotAvailable {
            source_key: KEY.into(),
            reason,
        })
    }
}

impl GpuApi for RealNvml {
    fn device_count(&self) -> Result<u32, GpuError> {
        self.nvml.device_count().map_err(gpu_error)
    }
    fn describe(&self, index: u32) -> Result<GpuDescription, GpuError> {
        let d = self.nvml.device_by_index(index).map_err(gpu_error)?;
        Ok(GpuDescription {
            name: d.name().map_err(gpu_error)?,
            uuid: d.uuid().ok(),
            architecture: d.architecture().ok().map(|a| format!("{a:?}")),
        })
    }
    fn total_energy_mj(&self, index: u32) -> Result<u64, GpuError> {
        self.nvml
            .device_by_index(index)
            .and_then(|d| d.total_energy_consumption())
            .map_err(gpu_error)
    }
    fn power_mw(&self, index: u32) -> Result<u32, GpuError> {
        self.nvml
            .device_by_index(index)
            .and_then(|d| d.power_usage())
            .map_err(gpu_error)
    }
    fn driver_version(&self) -> Option<String> {
        self.nvml.sys_driver_version().ok()
    }
}
