//! cargo-fuzz binary of target `result_json`: the body is `epi_fuzz_targets::result_json::run`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| epi_fuzz_targets::result_json::run(data));
