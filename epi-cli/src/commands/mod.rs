//! One module per `epi` subcommand.

pub mod list;
