//! `epi list plugins [--kind K] [--json]`.

use crate::context::Context;
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use epi_framework::registry::{Origin, PluginKind};
use std::process::ExitCode;

/// What to list.
#[derive(Debug, Subcommand)]
pub enum ListWhat {
    /// Every registered plugin: power sources, backends, suites, scorers, plots.
    Plugins(ListPluginsArgs),
}

/// Options of `epi list plugins`.
#[derive(Debug, Args)]
pub struct ListPluginsArgs {
    /// Only this kind: power, backend, suite, scorer, plot.
    #[arg(long)]
    pub kind: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs `epi list`.
pub fn run(ctx: &Context, what: &ListWhat) -> Result<ExitCode> {
    match what {
        ListWhat::Plugins(a) => {
            let kind = match &a.kind {
                None => None,
                Some(k) => match PluginKind::parse(k) {
                    Some(k) => Some(k),
                    None => bail!("unknown plugin kind `{k}`; expected one of power, backend, suite, scorer, plot"),
                },
            };
            let entries = ctx.registry.list(kind);
            if a.json {
                let v: Vec<serde_json::Value> = entries
                    .iter()
                    .map(|e| {
                        serde_json::json!({
                            "key": e.key, "kind": e.kind, "description": e.description, "origin": e.origin,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let mut last = None;
                for e in entries {
                    if last != Some(e.kind) {
                        println!("{}", ctx.bold(&format!("{}:", e.kind)));
                        last = Some(e.kind);
                    }
                    let origin = match &e.origin {
                        Origin::Builtin => String::new(),
                        Origin::Dynamic { path, abi_version } => {
                            format!("  [dynamic, ABI v{abi_version}: {}]", path.display())
                        }
                    };
                    println!("  {:<18} {}{}", e.key, e.description, origin);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
