//! cargo-fuzz binary of target `openai_reply`: the body is `epi_fuzz_targets::openai_reply::run`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| epi_fuzz_targets::openai_reply::run(data));
