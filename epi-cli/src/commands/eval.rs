//! `epi eval`: accuracy alone, like lm-eval — the run engine without a power source: suites
//! through a backend, one record per query (`records.jsonl`, `records.arrow`), `summary.json`
//! and, for a complete run, `benchmark.json`, in the run directory layout `epi profile` uses.
//!
//! ```text
//! epi eval --backend openai --url http://127.0.0.1:8080 --suite arc-challenge,mmlu --limit 20
//! ```

use crate::context::Context;
use crate::progress::Progress;
use crate::runcmd::{self, BackendArgs, LabelArgs, SuiteArgs};
use anyhow::{Context as _, Result};
use clap::Args;
use epi_framework::run::{RunDir, RunOptions};
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `epi eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub backend: BackendArgs,
    #[command(flatten)]
    pub suites: SuiteArgs,
    #[command(flatten)]
    pub labels: LabelArgs,
    /// The run directory (default: `<output-dir>/<run id>`, or `eval-<UTC time>` without one).
    #[arg(long, short, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Where run directories go (`runs/`; default: configuration `[run] output_dir`).
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Print the summary JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Runs `epi eval`.
pub fn run(ctx: &Context, a: &EvalArgs) -> Result<ExitCode> {
    // Build everything first (no I/O): a configuration error costs nothing.
    let key = runcmd::backend_key(ctx, &a.backend)?;
    let backend = ctx
        .registry
        .backend(&key, &runcmd::backend_config(ctx, &key, &a.backend)?)
        .with_context(|| format!("backend `{key}`"))?;
    let suites = runcmd::load_suites(ctx, &a.suites)?;
    let run_id = epi_framework::run::new_run_id();
    let dir = match (
        &a.output,
        a.output_dir.as_ref().or(ctx.config.run.output_dir.as_ref()),
    ) {
        (Some(d), _) => RunDir::create(d),
        (None, Some(parent)) => RunDir::under(parent, &run_id),
        (None, None) => RunDir::create(format!(
            "eval-{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
        )),
    }
    .context("the run directory")?;
    let mut options = RunOptions::eval(&run_id);
    options.eval = runcmd::eval_options(ctx, &a.suites, &run_id);
    options.allow_failures = a.suites.allow_failures || ctx.config.run.allow_failures == Some(true);
    options.labels = runcmd::labels(ctx, &a.labels);
    let progress = Progress::new(a.json);
    let outcome = runcmd::execute(dir, options, backend, None, &suites, &progress)?;
    runcmd::print(ctx, &outcome, a.json)?;
    Ok(runcmd::exit_code(&outcome))
}
