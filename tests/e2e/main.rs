//! End-to-end tests: the `epi` binary run as a user runs it, against real files, a real `sshd`,
//! a real pseudo-terminal and real SQLite databases.

mod calculate;
mod contract;
mod datasets;
mod dllama_real;
mod dynamic_plugin;
mod eval;
mod faults;
mod monitor;
mod plots;
mod plugins;
mod profile;
mod results;
mod schemas;
mod security;
mod support;
mod trace_pull;
mod validate;
mod validate_mutations;
