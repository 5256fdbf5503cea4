//! `epi results log|list|best|export`: the results database (`epi_framework::resultsdb`).

use crate::context::Context;
use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use epi_framework::resultsdb::{Logged, ResultFilter, ResultRow, ResultsDb};
use epi_framework::EpiResult;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// What to do with the results database.
#[derive(Debug, Subcommand)]
pub enum ResultsCommand {
    /// Log EPI result JSON files into the database, with tags.
    Log(LogArgs),
    /// List stored results (all, or those matching every filter given).
    List(ListArgs),
    /// The result with the lowest EPI of a model, or of every model.
    Best(BestArgs),
    /// Export one result as EPI JSON (`--id N --output F.json`) or results as community CSV
    /// (`--output F.csv` with filters or `--id`).
    Export(ExportArgs),
}

/// The database file.
#[derive(Debug, Args)]
pub struct DbArg {
    /// Results database file (default: `[general] results_db` of the configuration, `results.db`).
    #[arg(long, value_name = "FILE")]
    pub db: Option<PathBuf>,
}

impl DbArg {
    /// The file to use: the flag, else the configuration's.
    pub fn path(&self, ctx: &Context) -> PathBuf {
        self.db
            .clone()
            .unwrap_or_else(|| ctx.config.general.results_db.clone())
    }
}

/// Filters shared by `list`, `export` and the plot commands.
#[derive(Debug, Args, Default)]
pub struct FilterArgs {
    /// Only results carrying this tag (repeatable, or comma-separated: all must match).
    #[arg(long = "tag", value_name = "TAG", value_delimiter = ',')]
    pub tags: Vec<String>,
    /// Only this model (exact).
    #[arg(long, value_name = "M")]
    pub model: Option<String>,
    /// Only this quantization (exact).
    #[arg(long, value_name = "Q")]
    pub quantization: Option<String>,
    /// Only this surgery (exact).
    #[arg(long, value_name = "S")]
    pub surgery: Option<String>,
    /// Only this hardware (exact).
    #[arg(long, value_name = "H")]
    pub hardware: Option<String>,
}

impl FilterArgs {
    /// The database filter.
    pub fn filter(&self) -> ResultFilter {
        ResultFilter {
            tags: self
                .tags
                .iter()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect(),
            model: self.model.clone(),
            quantization: self.quantization.clone(),
            surgery: self.surgery.clone(),
            hardware: self.hardware.clone(),
        }
    }

    /// Whether any filter was given.
    pub fn any(&self) -> bool {
        self.filter() != ResultFilter::all()
    }
}

/// Options of `epi results log`.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// EPI result JSON files (as `epi calculate` writes them).
    #[arg(required = true, value_name = "FILE.json")]
    pub files: Vec<PathBuf>,
    /// Tags to attach, comma-separated (`--tags baseline,qwen3-30b`).
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    pub tags: Vec<String>,
    #[command(flatten)]
    pub db: DbArg,
}

/// Options of `epi results list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Print JSON (an array of rows) instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub db: DbArg,
}

/// Options of `epi results best`.
#[derive(Debug, Args)]
pub struct BestArgs {
    /// The model; without it, the best result of every model.
    #[arg(long, value_name = "M")]
    pub model: Option<String>,
    /// Print JSON: the whole stored result with `--model`, else an array of rows.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub db: DbArg,
}

/// Options of `epi results export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The stored result to export (required for `.json`).
    #[arg(long, value_name = "N")]
    pub id: Option<i64>,
    /// Output file: `.json` writes one EPI result, `.csv` the community CSV.
    #[arg(long, value_name = "FILE")]
    pub output: PathBuf,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Contributor column of the CSV (default: $USER).
    #[arg(long, value_name = "NAME")]
    pub contributor: Option<String>,
    #[command(flatten)]
    pub db: DbArg,
}

/// A usage error: printed, exit code 2.
fn usage(msg: &str) -> Result<ExitCode> {
    eprintln!("error: {msg}");
    Ok(ExitCode::from(2))
}

/// Runs `epi results ...`.
pub fn run(ctx: &Context, cmd: &ResultsCommand) -> Result<ExitCode> {
    match cmd {
        ResultsCommand::Log(a) => log(ctx, a),
        ResultsCommand::List(a) => list(ctx, a),
        ResultsCommand::Best(a) => best(ctx, a),
        ResultsCommand::Export(a) => export(ctx, a),
    }
}

fn log(ctx: &Context, a: &LogArgs) -> Result<ExitCode> {
    let results: Vec<EpiResult> = a
        .files
        .iter()
        .map(EpiResult::from_json)
        .collect::<Result<_, _>>()?;
    let tags: Vec<String> = a
        .tags
        .iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    let path = a.db.path(ctx);
    let mut db = ResultsDb::open(&path)?;
    let logged = db.log_all(results.iter().map(|r| (r, tags.as_slice())))?;
    for ((file, r), l) in a.files.iter().zip(&results).zip(&logged) {
        let what = match l {
            Logged::New(id) => format!("logged as #{id}"),
            Logged::Existing(id) => format!("already stored as #{id}; tags added"),
        };
        println!(
            "{} {}: {what} (model {}, surgery {}, EPI {})",
            ctx.ok_mark(),
            file.display(),
            r.model,
            r.surgery,
            fmt_num(r.epi)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn list(ctx: &Context, a: &ListArgs) -> Result<ExitCode> {
    let db = ResultsDb::open_existing(a.db.path(ctx))?;
    let rows = db.query_rows(&a.filter.filter())?;
    print_rows(ctx, &rows, a.json)?;
    Ok(ExitCode::SUCCESS)
}

fn best(ctx: &Context, a: &BestArgs) -> Result<ExitCode> {
    let path = a.db.path(ctx);
    let db = ResultsDb::open_existing(&path)?;
    match &a.model {
        // Runs of the model on different token bases: one best per basis, never one across them.
        Some(model) if db.best_per_model(&ResultFilter::model(model))?.len() > 1 => {
            let rows = db.best_per_model(&ResultFilter::model(model))?;
            if !a.json {
                eprintln!(
                    "note: `{model}` has results on different token bases; EPIs on different bases \
                     are not comparable, so each basis has its own best"
                );
            }
            print_rows(ctx, &rows, a.json)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(model) => match db.best_epi(model)? {
            Some(s) => {
                if a.json {
                    println!("{}", serde_json::to_string_pretty(&s)?);
                } else {
                    let r = &s.result;
                    println!(
                        "#{} {} · {} · {} · {}: EPI {} (J/token {}, {} tokens, accuracy {})",
                        s.id,
                        r.model,
                        r.quantization,
                        r.surgery,
                        r.hardware,
                        fmt_num(r.epi),
                        fmt_num(r.joules_per_token),
                        r.energy.token_basis,
                        fmt_num(r.accuracy_composite)
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            None => {
                eprintln!("no results for model `{model}` in {}", path.display());
                Ok(ExitCode::from(1))
            }
        },
        None => {
            let rows = db.best_per_model(&ResultFilter::all())?;
            print_rows(ctx, &rows, a.json)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn export(ctx: &Context, a: &ExportArgs) -> Result<ExitCode> {
    let ext = a
        .output
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    let path = a.db.path(ctx);
    match ext.as_deref() {
        Some("json") => {
            let Some(id) = a.id else {
                return usage("exporting JSON writes one result: give --id N (see `epi results list`)");
            };
            if a.filter.any() || a.contributor.is_some() {
                return usage("--id with a .json output takes no filters and no --contributor");
            }
            let db = ResultsDb::open_existing(&path)?;
            db.export_json(id, &a.output)?;
            println!("{} result #{id} written to {}", ctx.ok_mark(), a.output.display());
            Ok(ExitCode::SUCCESS)
        }
        Some("csv") => {
            if a.id.is_some() && a.filter.any() {
                return usage("give either --id or filters, not both");
            }
            let contributor = match &a.contributor {
                Some(c) => c.clone(),
                None => match std::env::var("USER").or_else(|_| std::env::var("LOGNAME")) {
                    Ok(u) if !u.is_empty() => u,
                    _ => return usage("no --contributor NAME given and $USER is not set"),
                },
            };
            let db = ResultsDb::open_existing(&path)?;
            let n = match a.id {
                Some(id) => export_one_csv(&db, id, &contributor, &a.output)?,
                None => db.export_community_csv(&a.filter.filter(), &contributor, &a.output)?,
            };
            println!("{} {n} result(s) written to {} (contributor {contributor})", ctx.ok_mark(), a.output.display());
            Ok(ExitCode::SUCCESS)
        }
        _ => usage(&format!(
            "--output {}: the name must end in .json (one result, with --id) or .csv (community CSV)",
            a.output.display()
        )),
    }
}

fn export_one_csv(db: &ResultsDb, id: i64, contributor: &str, output: &Path) -> Result<usize> {
    let s = db
        .get(id)?
        .with_context(|| format!("no result #{id} in {}", db.path().display()))?;
    let row = epi_framework::result::CommunityRow::from_result(&s.result, contributor);
    epi_framework::result::write_community_csv(output, &[row])?;
    Ok(1)
}

fn print_rows(ctx: &Context, rows: &[ResultRow], json: bool) -> Result<()> {
    use std::io::Write;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if json {
        serde_json::to_writer_pretty(&mut out, rows)?;
        writeln!(out)?;
        out.flush()?;
        return Ok(());
    }
    if rows.is_empty() {
        writeln!(out, "no results")?;
        out.flush()?;
        return Ok(());
    }
    // BASIS: the token count EPI and J/token divide by (`generated` or `processed`); EPIs on
    // different bases are not comparable.
    let headers = [
        "ID", "MODEL", "QUANT", "SURGERY", "HARDWARE", "EPI", "J/TOKEN", "BASIS", "ACCURACY",
        "TAGS",
    ];
    let cells: Vec<[String; 10]> = rows
        .iter()
        .map(|r| {
            [
                r.id.to_string(),
                r.model.clone(),
                r.quantization.clone(),
                r.surgery.clone(),
                r.hardware.clone(),
                fmt_num(r.epi),
                fmt_num(r.joules_per_token),
                r.token_basis.clone(),
                fmt_num(r.accuracy),
                r.tags.join(","),
            ]
        })
        .collect();
    let mut widths = headers.map(|h| h.chars().count());
    for c in &cells {
        for (w, s) in widths.iter_mut().zip(c.iter()) {
            *w = (*w).max(s.chars().count());
        }
    }
    let line = |cols: &[String]| -> String {
        let mut s = String::new();
        for (i, (c, w)) in cols.iter().zip(widths.iter()).enumerate() {
            let numeric = matches!(i, 0 | 5 | 6 | 8);
            if i + 1 == cols.len() {
                s.push_str(c);
            } else if numeric {
                s.push_str(&format!("{c:>w$}  "));
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.trim_end().to_string()
    };
    writeln!(out, "{}", ctx.bold(&line(&headers.map(String::from))))?;
    for c in &cells {
        writeln!(out, "{}", line(c))?;
    }
    out.flush()?;
    Ok(())
}

/// Four significant digits, without exponent for the usual ranges.
fn fmt_num(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let digits = (3 - v.abs().log10().floor() as i32).clamp(0, 8) as usize;
    format!("{v:.digits$}")
}
