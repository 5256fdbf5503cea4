//! # epi-core
//!
//! The contract of epi-bench, which measures **Energy Per Intelligence**: what a plugin implements
//! and what every other crate speaks. It holds
//!
//! - the plugin traits — [`PowerSource`], [`InferenceBackend`], [`Suite`], [`Scorer`], [`Plot`] —
//!   and the string-keyed [`registry`] every plugin registers in, with its self-description;
//! - the data model: power samples with provenance ([`sample`]), per-query records
//!   ([`records`]), benchmark results ([`benchmark`]), EPI results ([`result`]), the detected
//!   hardware ([`hardware`]), errors that name file, line and field ([`error`]);
//! - the energy rule ([`energy`]: the one integration kernel, attribution, counter unwrapping) and
//!   every metric formula ([`metrics`]), each defined once as `measurement-methodology.md` states
//!   it;
//! - the configuration file and plugin settings ([`config`]);
//! - the one line splitter for byte streams that arrive in chunks ([`lines`]).
//!
//! It depends on serde, tokio's `sync` and little else: a plugin author who needs only
//! [`PowerSource`] compiles no Arrow, SQLite, SSH or dynamic loader. The heavy parts live in their
//! own crates (`epi-trace`, `epi-ssh`, `epi-records`, `epi-resultsdb`, `epi-run`,
//! `epi-dynamic`); `epi-framework` re-exports them all.
#![deny(missing_docs)]

pub mod backend;
pub mod benchmark;
pub mod config;
pub mod contract;
pub mod energy;
pub mod error;
pub mod generative;
pub mod hardware;
pub mod jsonio;
pub mod lines;
pub mod metrics;
pub mod plot;
pub mod power;
pub mod records;
pub mod registry;
pub mod result;
pub mod sample;
pub mod scorer;
pub mod settings;
pub mod suite;

pub use backend::InferenceBackend;
pub use benchmark::BenchmarkResult;
pub use error::{Error, InputError, Location};
pub use plot::Plot;
pub use power::PowerSource;
pub use registry::Registry;
pub use result::EpiResult;
pub use scorer::Scorer;
pub use suite::Suite;

/// Re-exported for plugins implementing the async traits.
pub use async_trait::async_trait;
/// Re-exported so plugins register with the same `inventory` the framework collects from.
pub use inventory;

/// The version of epi-bench, as written into results.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
