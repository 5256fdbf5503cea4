//! epi-bench power sources: epi-meter UART, Orchestrator SQLite over SSH, RAPL, NVML, CSV replay.
#![deny(missing_docs)]

pub mod csv;
pub mod epi_meter;
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
