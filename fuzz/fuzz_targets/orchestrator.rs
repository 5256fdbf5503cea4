//! cargo-fuzz binary of target `orchestrator`: the body is `epi_fuzz_targets::orchestrator::run`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| epi_fuzz_targets::orchestrator::run(data));
