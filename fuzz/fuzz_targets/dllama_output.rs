//! cargo-fuzz binary of target `dllama_output`: the body is `epi_fuzz_targets::dllama_output::run`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| epi_fuzz_targets::dllama_output::run(data));
