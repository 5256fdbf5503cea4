//! cargo-fuzz binary of target `dynamic_plugin`: the body is `epi_fuzz_targets::dynamic_plugin::run`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| epi_fuzz_targets::dynamic_plugin::run(data));
