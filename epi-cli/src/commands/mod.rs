//! One module per `epi` subcommand.

pub mod calculate;
pub mod export;
pub mod list;
pub mod validate;
