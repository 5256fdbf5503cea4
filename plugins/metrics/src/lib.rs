//! epi-bench scorers: `epi`, `ept`, `ipj`, `ipw`. Each one file, each registered under its key.
//! Every formula comes from [`epi_core::metrics`]; these only choose inputs and say why a
//! metric cannot be computed.
#![deny(missing_docs)]

pub mod epi;
pub mod ept;
pub mod ipj;
pub mod ipw;

use epi_core::scorer::ScoreError;

pub(crate) fn err(scorer: &str, e: impl std::fmt::Display) -> ScoreError {
    ScoreError {
        scorer: scorer.to_string(),
        message: e.to_string(),
    }
}

/// The scorer keys this crate registers (used by tests to check registration).
pub const KEYS: [&str; 4] = ["epi", "ept", "ipj", "ipw"];

/// Forces this crate's plugin registrations into a binary that links it. Linkers drop archive
/// members nothing refers to, and `inventory` registrations are referred to by nothing, so the
/// binary calls this once.
#[inline(never)]
pub fn link() {
    std::hint::black_box(KEYS);
}
