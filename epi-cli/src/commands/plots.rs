//! `epi pareto`, `epi bars`, `epi timeline`, `epi curve`: the publication plots. Each command
//! builds its plot plugin from the registry (`[plot.<key>]` settings, flags over them) and draws
//! from a results directory, the results database, or a trace.

use crate::commands::results::FilterArgs;
use crate::context::Context;
use anyhow::{bail, Context as _, Result};
use clap::Args;
use epi_framework::plot::{PlotInput, PlotSpec};
use epi_framework::registry::PluginKind;
use epi_framework::result::load_results_dir;
use epi_framework::resultsdb::ResultsDb;
use epi_framework::EpiResult;
use std::path::PathBuf;
use std::process::ExitCode;

/// Where the results come from: a directory of EPI JSON files or the results database.
#[derive(Debug, Args)]
pub struct ResultsSource {
    /// Directory of EPI result JSON files (searched recursively).
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "db",
        conflicts_with = "db"
    )]
    pub results_dir: Option<PathBuf>,
    /// Results database file (see `epi results`); filters select from it.
    #[arg(long, value_name = "FILE")]
    pub db: Option<PathBuf>,
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// Output and look, shared by every plot.
#[derive(Debug, Args)]
pub struct FigureArgs {
    /// Output file: `.png`, or `.svg` for SVG (no extension: `[plotting] format`).
    #[arg(long, value_name = "FILE")]
    pub output: PathBuf,
    /// Title (default: a description of the plot).
    #[arg(long, value_name = "T")]
    pub title: Option<String>,
    /// `dark` (YOSO-YAi, the default) or `light` for print (default: `[plotting] theme`).
    #[arg(long, value_name = "THEME", value_parser = ["dark", "light"])]
    pub theme: Option<String>,
    /// PNG resolution (default: `[plotting] dpi`, 300).
    #[arg(long, value_name = "N")]
    pub dpi: Option<u32>,
    /// Figure size in inches, `WxH` (default: `[plotting] figsize`, 12x8).
    #[arg(long, value_name = "WxH")]
    pub figsize: Option<String>,
    /// Print what was computed (frontier members, knees, bucket counts) as JSON.
    #[arg(long)]
    pub report: bool,
}

/// Options of `epi pareto`.
#[derive(Debug, Args)]
pub struct ParetoArgs {
    #[command(flatten)]
    pub source: ResultsSource,
    #[command(flatten)]
    pub figure: FigureArgs,
    /// Quantity on the x axis (the other goes on y): `accuracy` (the spec's layout) or
    /// `joules-per-token`.
    #[arg(long, value_name = "Q", value_parser = ["accuracy", "joules-per-token"])]
    pub x_axis: Option<String>,
    /// Result field to label points with (default `surgery`).
    #[arg(long, value_name = "FIELD")]
    pub labels: Option<String>,
}

/// Options of `epi bars`.
#[derive(Debug, Args)]
pub struct BarsArgs {
    #[command(flatten)]
    pub source: ResultsSource,
    #[command(flatten)]
    pub figure: FigureArgs,
    /// Bar order: `epi` (lowest first, the default), `accuracy` (highest first),
    /// `joules-per-token`, `label` or `none`.
    #[arg(long, value_name = "KEY", value_parser = ["epi", "accuracy", "joules-per-token", "label", "none"])]
    pub sort_by: Option<String>,
}

/// Options of `epi timeline`.
#[derive(Debug, Args)]
pub struct TimelineArgs {
    /// Power trace CSV (streamed; any size).
    #[arg(long, value_name = "FILE")]
    pub trace: PathBuf,
    #[command(flatten)]
    pub figure: FigureArgs,
    /// Time buckets to reduce the trace to (default: one per pixel column).
    #[arg(long, value_name = "N")]
    pub buckets: Option<usize>,
}

/// Options of `epi curve`.
#[derive(Debug, Args)]
pub struct CurveArgs {
    #[command(flatten)]
    pub source: ResultsSource,
    #[command(flatten)]
    pub figure: FigureArgs,
    /// Surgery parameter on the x axis (`experts_dropped`): from `surgery_params`, run metadata,
    /// or a `name=value` pair in the surgery string.
    #[arg(long, value_name = "NAME")]
    pub x_param: String,
}

/// `epi pareto`.
pub fn pareto(ctx: &Context, a: &ParetoArgs) -> Result<ExitCode> {
    let mut o = serde_json::Map::new();
    if let Some(x) = &a.x_axis {
        o.insert("x_axis".into(), x.replace('-', "_").into());
    }
    if let Some(l) = &a.labels {
        o.insert("labels".into(), l.clone().into());
    }
    let Some(input) = load_results(&a.source)? else {
        return Ok(ExitCode::from(2));
    };
    draw(ctx, "pareto", input, &a.figure, o)
}

/// `epi bars`.
pub fn bars(ctx: &Context, a: &BarsArgs) -> Result<ExitCode> {
    let mut o = serde_json::Map::new();
    if let Some(s) = &a.sort_by {
        o.insert("sort_by".into(), s.replace('-', "_").into());
    }
    let Some(input) = load_results(&a.source)? else {
        return Ok(ExitCode::from(2));
    };
    draw(ctx, "bars", input, &a.figure, o)
}

/// `epi timeline`.
pub fn timeline(ctx: &Context, a: &TimelineArgs) -> Result<ExitCode> {
    let mut o = serde_json::Map::new();
    if let Some(b) = a.buckets {
        o.insert("buckets".into(), b.into());
    }
    // `[general] gap_limit_ms` unless `[plot.timeline]` sets its own.
    if ctx
        .config
        .plugin_config(PluginKind::Plot, "timeline")
        .get("gap_limit_ms")
        .is_none()
    {
        o.insert(
            "gap_limit_ms".into(),
            ctx.config.general.gap_limit_ms.into(),
        );
    }
    if !a.trace.is_file() {
        bail!("{}: no such trace file", a.trace.display());
    }
    draw(
        ctx,
        "timeline",
        PlotInput::Trace(a.trace.clone()),
        &a.figure,
        o,
    )
}

/// `epi curve`.
pub fn curve(ctx: &Context, a: &CurveArgs) -> Result<ExitCode> {
    let mut o = serde_json::Map::new();
    o.insert("x_param".into(), a.x_param.clone().into());
    let Some(input) = load_results(&a.source)? else {
        return Ok(ExitCode::from(2));
    };
    draw(ctx, "curve", input, &a.figure, o)
}

/// The results to draw, or `None` after printing a usage error.
fn load_results(s: &ResultsSource) -> Result<Option<PlotInput>> {
    let filter = s.filter.filter();
    let results: Vec<EpiResult> = match (&s.results_dir, &s.db) {
        (Some(dir), _) => {
            if !filter.tags.is_empty() {
                eprintln!("error: --tag selects from the database (--db FILE); result files carry no tags");
                return Ok(None);
            }
            let keep = |r: &EpiResult| {
                [
                    (&filter.model, &r.model),
                    (&filter.quantization, &r.quantization),
                    (&filter.surgery, &r.surgery),
                    (&filter.hardware, &r.hardware),
                ]
                .iter()
                .all(|(want, have)| want.as_ref().is_none_or(|w| w == *have))
            };
            let all = load_results_dir(dir)?;
            if all.is_empty() {
                bail!("{}: no EPI result JSON files found", dir.display());
            }
            all.into_iter().map(|(_, r)| r).filter(keep).collect()
        }
        (None, Some(db)) => ResultsDb::open_existing(db)?
            .query(&filter)?
            .into_iter()
            .map(|s| s.result)
            .collect(),
        (None, None) => {
            eprintln!("error: give --results-dir DIR or --db FILE");
            return Ok(None);
        }
    };
    if results.is_empty() {
        bail!("no results match the filters given");
    }
    Ok(Some(PlotInput::Results(results)))
}

fn parse_figsize(s: &str) -> Result<(f64, f64)> {
    let (w, h) = s
        .split_once(['x', 'X', ','])
        .with_context(|| format!("--figsize {s}: expected WIDTHxHEIGHT in inches, e.g. 12x8"))?;
    let num = |v: &str| -> Result<f64> {
        v.trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v > 0.0)
            .with_context(|| format!("--figsize {s}: `{v}` is not a positive number of inches"))
    };
    Ok((num(w)?, num(h)?))
}

/// Builds the plot `key` and draws `input` into the output file.
fn draw(
    ctx: &Context,
    key: &str,
    input: PlotInput,
    fig: &FigureArgs,
    options: serde_json::Map<String, serde_json::Value>,
) -> Result<ExitCode> {
    let plotting = &ctx.config.plotting;
    let mut output = fig.output.clone();
    match output
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
    {
        None => {
            output.set_extension(&plotting.format);
        }
        Some(e) if e == "png" || e == "svg" => {}
        Some(e) => {
            eprintln!(
                "error: --output {}: `.{e}` is not a plot format; use .png or .svg",
                fig.output.display()
            );
            return Ok(ExitCode::from(2));
        }
    }
    let figsize = match &fig.figsize {
        Some(s) => match parse_figsize(s) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(ExitCode::from(2));
            }
        },
        None => plotting.figsize,
    };
    let theme = plotting.theme_named(fig.theme.as_deref().unwrap_or(&plotting.theme))?;
    let config = ctx.config.plugin_config(PluginKind::Plot, key);
    let plot = ctx.registry.plot(key, &config)?;
    let spec = PlotSpec {
        output: output.clone(),
        title: fig.title.clone(),
        theme,
        dpi: fig.dpi.unwrap_or(plotting.dpi),
        figsize,
        options,
    };
    let report = plot.render(&input, &spec)?;
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    if fig.report {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{} {key} plot written to {}",
        ctx.ok_mark(),
        output.display()
    );
    Ok(ExitCode::SUCCESS)
}
