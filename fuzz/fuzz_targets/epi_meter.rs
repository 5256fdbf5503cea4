//! cargo-fuzz binary of target `epi_meter`: the body is `epi_fuzz_targets::epi_meter::run`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| epi_fuzz_targets::epi_meter::run(data));
