//! cargo-fuzz binary of target `sse`: the body is `epi_fuzz_targets::sse::run`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| epi_fuzz_targets::sse::run(data));
