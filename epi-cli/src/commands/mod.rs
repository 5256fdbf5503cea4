//! One module per `epi` subcommand.

pub mod calculate;
pub mod datasets;
pub mod eval;
pub mod export;
pub mod list;
pub mod monitor;
pub mod plots;
pub mod profile;
pub mod results;
pub mod trace;
pub mod validate;
