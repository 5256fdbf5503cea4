//! epi-bench publication plots: Pareto frontier, EPI bars, power timeline, surgery curve.
#![deny(missing_docs)]

/// Forces this crate's plugin registrations into a binary that links it (linkers drop archive
/// members nothing refers to, and `inventory` registrations are referred to by nothing).
#[inline(never)]
pub fn link() {
    std::hint::black_box(module_path!());
}
