//! cargo-fuzz binary of target `trace_csv`: the body is `epi_fuzz_targets::trace_csv::run`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| epi_fuzz_targets::trace_csv::run(data));
