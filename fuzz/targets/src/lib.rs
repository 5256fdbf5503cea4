//! The bodies of epi-bench's fuzz targets, one module per parser of outside input.
//!
//! Each target is a function `fn(&[u8])` that feeds the bytes to a parser the way epi-bench does
//! and checks what came out against an oracle or a round trip; a wrong result, a panic in the
//! parser, or an error of the wrong kind is a panic here (a crash for the fuzzer). The same
//! functions run in two places:
//!
//! - `fuzz/` (cargo-fuzz, nightly, libFuzzer and AddressSanitizer): `cargo +nightly fuzz run <name>`;
//! - `tests/replay.rs` (stable, `cargo test --workspace`): every file of `fuzz/corpus/<name>/` and
//!   `fuzz/regressions/<name>/` through [`TARGETS`], in seconds.
//!
//! Targets write files only where the code under test reads files (trace CSV): under the system
//! temporary directory, one file per process, thread and target, removed after each input.
#![deny(missing_docs)]

pub mod config_toml;
pub mod dllama_output;
pub mod dynamic_plugin;
pub mod epi_meter;
pub mod openai_reply;
pub mod orchestrator;
pub mod result_json;
pub mod sse;
pub mod support;
pub mod trace_csv;

/// A fuzz target: its name (the directory of its corpus and the cargo-fuzz binary) and its body.
#[derive(Clone, Copy)]
pub struct Target {
    /// Name, as in `fuzz/corpus/<name>` and `cargo fuzz run <name>`.
    pub name: &'static str,
    /// The body: panics when the input shows a bug.
    pub run: fn(&[u8]),
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "trace_csv",
        run: trace_csv::run,
    },
    Target {
        name: "result_json",
        run: result_json::run,
    },
    Target {
        name: "epi_meter",
        run: epi_meter::run,
    },
    Target {
        name: "orchestrator",
        run: orchestrator::run,
    },
    Target {
        name: "dllama_output",
        run: dllama_output::run,
    },
    Target {
        name: "openai_reply",
        run: openai_reply::run,
    },
    Target {
        name: "sse",
        run: sse::run,
    },
    Target {
        name: "config_toml",
        run: config_toml::run,
    },
    Target {
        name: "dynamic_plugin",
        run: dynamic_plugin::run,
    },
];
