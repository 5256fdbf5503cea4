//! End-to-end tests: the `epi` binary run as a user runs it, against real files, a real `sshd`,
//! a real pseudo-terminal and real SQLite databases.

mod support;
mod calculate;
mod validate;
mod schemas;
mod plots;
mod results;
mod dynamic_plugin;
mod monitor;
mod trace_pull;
mod datasets;
mod eval;
