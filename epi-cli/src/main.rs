//! `epi`: the command line tool of epi-bench — Energy Per Intelligence.
//!
//! Exit codes: 0 success; 1 a check failed (`validate` found a ✗); 2 usage error; 3 bad input
//! (a file, line or field is wrong); 4 a run failed (device, server, plugin, I/O); 130 interrupted
//! (everything measured so far is on disk).

mod commands;
mod context;
mod plugins;
mod progress;
mod runcmd;

use clap::{Parser, Subcommand};
use context::Context;
use std::path::PathBuf;
use std::process::ExitCode;

/// epi-bench — measure Energy Per Intelligence: joules per token ÷ accuracy.
#[derive(Debug, Parser)]
#[command(name = "epi", version, about, long_about = None, after_help = EXIT_CODES)]
struct Cli {
    /// Configuration file (default: ./epi-bench.toml, then ~/.config/epi-bench/epi-bench.toml).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Load a dynamic plugin library (repeatable).
    #[arg(long = "plugin", global = true, value_name = "LIB")]
    plugins: Vec<PathBuf>,
    /// Set any configuration value by its dotted path in epi-bench.toml, e.g.
    /// `power.epi-meter.port=/dev/ttyUSB1`, `backend.openai.top_n=500`, `run.repetitions=5`
    /// (VALUE a TOML value, else a bare string; repeatable). A bare KEY is a setting of the
    /// command's own plugin (`epi monitor`, `epi trace pull`). `epi list plugins --details KEY`
    /// lists a plugin's settings.
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    sets: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

const EXIT_CODES: &str = "Exit codes: 0 success, 1 a check failed, 2 usage error, 3 bad input, 4 run failed, 130 interrupted.\nNO_COLOR=1 turns colour off.";

#[derive(Debug, Subcommand)]
enum Command {
    /// List registered plugins.
    #[command(subcommand)]
    List(commands::list::ListWhat),
    /// Watch a power source live (epi-meter, rapl, nvml, csv replay, orchestrator); record a trace.
    Monitor(commands::monitor::MonitorArgs),
    /// Run suites through a backend for accuracy alone (like lm-eval): records, summary, benchmark JSON.
    Eval(Box<commands::eval::EvalArgs>),
    /// The measured run: a power source and a backend side by side, the paper's protocol, EPI.
    Profile(Box<commands::profile::ProfileArgs>),
    /// Benchmark data sets: fetch (download and verify) and list (what is found where).
    #[command(subcommand)]
    Datasets(commands::datasets::DatasetsCommand),
    /// Calculate EPI from a power trace and benchmark results.
    Calculate(commands::calculate::CalculateArgs),
    /// Validate a community submission directory.
    Validate(commands::validate::ValidateArgs),
    /// Export EPI results to the community CSV.
    Export(commands::export::ExportArgs),
    /// The results database: log, list, best, export.
    #[command(subcommand)]
    Results(commands::results::ResultsCommand),
    /// Pareto frontier plot: accuracy vs J/token, points labelled by surgery.
    Pareto(commands::plots::ParetoArgs),
    /// EPI comparison bar chart, with interval whiskers.
    Bars(commands::plots::BarsArgs),
    /// Per-node power draw over time and the cluster total (any trace size).
    Timeline(commands::plots::TimelineArgs),
    /// EPI against a surgery parameter, with the knee marked.
    Curve(commands::plots::CurveArgs),
    /// Power traces from other machines: pull a UTC window of the Orchestrator's log over SSH.
    #[command(subcommand)]
    Trace(commands::trace::TraceCommand),
}

fn main() -> ExitCode {
    plugins::link_all();
    let cli = Cli::parse();
    let ctx = match Context::load(cli.config.as_ref(), &cli.plugins, &cli.sets) {
        Ok(c) => c,
        Err(e) => return report(e),
    };
    let result = match &cli.command {
        Command::List(w) => commands::list::run(&ctx, w),
        Command::Monitor(a) => commands::monitor::run(&ctx, a),
        Command::Eval(a) => commands::eval::run(&ctx, a),
        Command::Profile(a) => commands::profile::run(&ctx, a),
        Command::Datasets(c) => commands::datasets::run(&ctx, c),
        Command::Calculate(a) => commands::calculate::run(&ctx, a),
        Command::Validate(a) => commands::validate::run(&ctx, a),
        Command::Export(a) => commands::export::run(&ctx, a),
        Command::Results(c) => commands::results::run(&ctx, c),
        Command::Pareto(a) => commands::plots::pareto(&ctx, a),
        Command::Bars(a) => commands::plots::bars(&ctx, a),
        Command::Timeline(a) => commands::plots::timeline(&ctx, a),
        Command::Curve(a) => commands::plots::curve(&ctx, a),
        Command::Trace(c) => commands::trace::run(&ctx, c),
    };
    match result {
        Ok(code) => code,
        Err(e) => report(e),
    }
}

/// Prints an error with its causes and returns the exit code for it.
fn report(e: anyhow::Error) -> ExitCode {
    eprintln!("error: {e}");
    for cause in e.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    if e.chain().any(|c| {
        c.downcast_ref::<runcmd::Usage>().is_some()
            || matches!(
                c.downcast_ref::<epi_framework::Error>(),
                Some(epi_framework::Error::UnknownPlugin { .. })
            )
    }) {
        return ExitCode::from(2);
    }
    // A setting that is wrong (an unknown key, a bad value): bad input, like a bad file.
    if e.chain().any(|c| {
        matches!(
            c.downcast_ref::<epi_framework::Error>(),
            Some(epi_framework::Error::Configuration { .. })
        )
    }) {
        return ExitCode::from(3);
    }
    let input = e.chain().any(|c| {
        c.downcast_ref::<epi_framework::InputError>().is_some()
            || matches!(
                c.downcast_ref::<epi_framework::Error>(),
                Some(epi_framework::Error::Input(_))
            )
    });
    ExitCode::from(if input { 3 } else { 4 })
}
