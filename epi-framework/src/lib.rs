//! # epi-framework
//!
//! The facade of epi-bench, which measures **Energy Per Intelligence**: how many joules one unit
//! of useful LLM output costs. It re-exports, under the paths existing users import, the crates
//! the framework is made of (ripgrep's `grep` facade over `grep-matcher` and friends):
//!
//! | module | crate | what |
//! |---|---|---|
//! | [`backend`], [`power`], [`suite`], [`scorer`], [`plot`], [`registry`], [`settings`], [`sample`], [`records`] (types), [`benchmark`], [`result`], [`energy`], [`metrics`], [`error`], [`config`], [`generative`], [`jsonio`] | `epi-core` | the contract: traits, data model, registry, the energy kernel, metric formulas |
//! | [`trace`] | `epi-trace` | the trace CSV reader (SIMD), streaming integration, windows, writer |
//! | [`records`] (files) | `epi-records` | `records.jsonl` and `records.arrow` |
//! | [`ssh`], [`testing`] | `epi-ssh` | the SSH client; a real sshd for tests |
//! | [`resultsdb`] | `epi-resultsdb` | the results database (SQLite) |
//! | [`run`], [`eval`], [`calculator`] | `epi-run` | the run engine (`epi profile`, `epi eval`) and the EPI calculator |
//! | [`dynamic`] | `epi-dynamic` | third-party plugins behind the C ABI |
//!
//! A plugin depends on `epi-core` and on the crates it uses; an application depends on this
//! facade.
#![deny(missing_docs)]

pub use epi_core::{
    async_trait, inventory, BenchmarkResult, EpiResult, Error, InferenceBackend, InputError,
    Location, Plot, PowerSource, Registry, Scorer, Suite, VERSION,
};
pub use epi_core::{
    backend, benchmark, config, contract, energy, error, generative, jsonio, metrics, plot, power,
    registry, result, sample, scorer, settings, suite,
};
pub use epi_dynamic as dynamic;
pub use epi_resultsdb as resultsdb;
pub use epi_run::{calculator, eval};
pub use epi_ssh as ssh;
#[cfg(feature = "test-support")]
pub use epi_ssh::testing;
pub use epi_trace as trace;
pub use epi_trace::PowerTrace;

/// The run engine (`epi-run`), with the detected hardware (`epi-core`) at its old path.
pub mod run {
    pub use epi_run::*;
}

/// Per-query records: the type ([`QueryRecord`], `epi-core`) and its files (`epi-records`).
pub mod records {
    pub use epi_records::*;
}
