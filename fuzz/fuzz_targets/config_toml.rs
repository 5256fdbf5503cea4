//! cargo-fuzz binary of target `config_toml`: the body is `epi_fuzz_targets::config_toml::run`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| epi_fuzz_targets::config_toml::run(data));
