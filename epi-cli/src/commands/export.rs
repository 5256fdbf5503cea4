//! `epi export --results-dir DIR --output F.csv [--contributor NAME]`: the community CSV.

use crate::context::Context;
use anyhow::{bail, Context as _, Result};
use clap::Args;
use epi_framework::result::{load_results_dir, write_community_csv, CommunityRow};
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `epi export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Directory of EPI result JSON files (searched recursively).
    #[arg(long, value_name = "DIR")]
    pub results_dir: PathBuf,
    /// The CSV to write.
    #[arg(long, short, value_name = "FILE")]
    pub output: PathBuf,
    /// Contributor name written in every row.
    #[arg(long, default_value = "anonymous")]
    pub contributor: String,
}

/// Runs `epi export`.
pub fn run(_ctx: &Context, a: &ExportArgs) -> Result<ExitCode> {
    let results = load_results_dir(&a.results_dir)
        .with_context(|| format!("reading results from {}", a.results_dir.display()))?;
    if results.is_empty() {
        bail!(
            "{}: no EPI result JSON files found",
            a.results_dir.display()
        );
    }
    let rows: Vec<CommunityRow> = results
        .iter()
        .map(|(_, r)| CommunityRow::from_result(r, &a.contributor))
        .collect();
    write_community_csv(&a.output, &rows)?;
    println!("{} row(s) written to {}", rows.len(), a.output.display());
    Ok(ExitCode::SUCCESS)
}
