//! # epi-framework
//!
//! The core of epi-bench, which measures **Energy Per Intelligence**: how many joules one unit of
//! useful LLM output costs. This crate defines
//!
//! - the plugin traits — [`PowerSource`], [`InferenceBackend`], [`Suite`], [`Scorer`], [`Plot`] —
//!   and the string-keyed [`registry`] every plugin registers in;
//! - the data model: power samples with provenance ([`sample`]), traces ([`trace`]), benchmark
//!   results ([`benchmark`]), EPI results ([`result`]) and per-query records ([`records`]);
//! - energy integration and attribution ([`energy`], [`trace`]) and every metric formula
//!   ([`metrics`]), each defined once as `measurement-methodology.md` states it;
//! - the EPI calculator ([`calculator`]);
//! - the run engine ([`run`]): `epi profile` and `epi eval` — a power source and a backend side by
//!   side, every query timed, recorded and attributed its energy;
//! - the results database ([`resultsdb`]): tagged EPI results in SQLite, queries, exports.
#![deny(missing_docs)]

pub mod backend;
pub mod benchmark;
pub mod calculator;
pub mod config;
pub mod dynamic;
pub mod energy;
pub mod error;
pub mod eval;
pub mod generative;
pub mod jsonio;
pub mod metrics;
pub mod plot;
pub mod power;
pub mod records;
pub mod registry;
pub mod result;
pub mod resultsdb;
pub mod run;
pub mod sample;
pub mod scorer;
pub mod ssh;
pub mod suite;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
pub mod trace;

pub use backend::InferenceBackend;
pub use benchmark::BenchmarkResult;
pub use error::{Error, InputError, Location};
pub use plot::Plot;
pub use power::PowerSource;
pub use registry::Registry;
pub use result::EpiResult;
pub use scorer::Scorer;
pub use suite::Suite;
pub use trace::PowerTrace;

/// Re-exported for plugins implementing the async traits.
pub use async_trait::async_trait;
/// Re-exported so plugins register with the same `inventory` the framework collects from.
pub use inventory;

/// The version of epi-bench, as written into results.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
