//! `epi list plugins [--kind K] [--json] [--details KEY] [--markdown]`: every registered plugin,
//! and what each one describes about itself (its settings: keys, types, defaults, an example).
//! `--markdown` writes the reference that `docs/plugins.md` is (a test fails when they differ).
//! An unknown kind or key is an error that lists the known ones.

use crate::context::Context;
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use epi_framework::registry::{Capability, Entry, Origin, PluginKind};
use epi_framework::settings::{toml_value, Setting};
use std::fmt::Write as _;
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
    /// Describe the plugin KEY: its settings (key, type, default, meaning) and an example.
    #[arg(long, value_name = "KEY")]
    pub details: Option<String>,
    /// Print the settings reference of every plugin as Markdown (`docs/plugins.md`).
    #[arg(long, conflicts_with_all = ["json", "details"])]
    pub markdown: bool,
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
            let mut entries = ctx.registry.list(kind);
            if a.markdown {
                print!("{}", markdown(&entries));
                return Ok(ExitCode::SUCCESS);
            }
            if let Some(key) = &a.details {
                entries.retain(|e| &e.key == key);
                if entries.is_empty() {
                    let known: Vec<String> = ctx
                        .registry
                        .list(kind)
                        .iter()
                        .map(|e| format!("{} {}", e.kind, e.key))
                        .collect();
                    bail!("no plugin `{key}`; registered: {}", known.join(", "));
                }
                if !a.json {
                    for (i, e) in entries.iter().enumerate() {
                        if i > 0 {
                            println!();
                        }
                        print!("{}", details_text(ctx, e));
                    }
                    return Ok(ExitCode::SUCCESS);
                }
            }
            if a.json {
                let v: Vec<serde_json::Value> = entries
                    .iter()
                    .map(|e| {
                        let mut j = serde_json::json!({
                            "key": e.key, "kind": e.kind, "description": e.description, "origin": e.origin,
                            "capabilities": e.capabilities, "toml_aliases": e.toml_aliases,
                        });
                        if a.details.is_some() {
                            if let Some(s) = e.settings() {
                                j["settings"] = serde_json::to_value(s.fields()).unwrap_or_default();
                                j["example"] = s.example().clone();
                                j["schema"] = s.schema().clone();
                            }
                        }
                        j
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

fn capability_words(c: &Capability) -> String {
    match c {
        Capability::AutoDetect { rank } => format!("tried by `--power auto` (rank {rank})"),
        Capability::PastWindow => "reads a past window of a stored log (`epi trace pull`)".into(),
    }
}

fn default_words(s: &Setting) -> String {
    if s.ty == "table" {
        return "(below)".into();
    }
    match &s.default {
        Some(serde_json::Value::Null) | None if s.required => "required".into(),
        Some(serde_json::Value::Null) | None => "none".into(),
        Some(v) => toml_value(v),
    }
}

/// The text of `--details KEY`.
fn details_text(ctx: &Context, e: &Entry) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{} {}: {}", e.kind, ctx.bold(&e.key), e.description);
    let table = format!("[{}.{}]", e.kind, e.key);
    let _ = writeln!(
        o,
        "  configure with {table} in epi-bench.toml, or --set {}.{}.KEY=VALUE",
        e.kind, e.key
    );
    for a in &e.toml_aliases {
        let _ = writeln!(o, "  also read from [{a}]");
    }
    for c in &e.capabilities {
        let _ = writeln!(o, "  {}", capability_words(c));
    }
    let Some(settings) = e.settings() else {
        let _ = writeln!(
            o,
            "  settings: not described (a dynamic library: the C ABI passes the table as JSON)"
        );
        return o;
    };
    let fields = settings.fields();
    if fields.is_empty() {
        let _ = writeln!(o, "  settings: none");
        return o;
    }
    let rows: Vec<[String; 4]> = fields
        .iter()
        .map(|s| [s.key.clone(), s.ty.clone(), default_words(s), s.doc.clone()])
        .collect();
    let head = ["setting", "type", "default", "meaning"];
    let w: Vec<usize> = (0..3)
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([head[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let _ = writeln!(o);
    let line = |o: &mut String, r: [&str; 4]| {
        let _ = writeln!(
            o,
            "  {:<w0$}  {:<w1$}  {:<w2$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2]
        );
    };
    line(&mut o, head);
    for r in &rows {
        line(&mut o, [&r[0], &r[1], &r[2], &r[3]]);
    }
    let _ = writeln!(o, "\n  example:\n    {table}");
    for l in settings.example_toml().lines() {
        let _ = writeln!(o, "    {l}");
    }
    o
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// The Markdown reference of `entries` (what `docs/plugins.md` holds).
pub fn markdown(entries: &[&Entry]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# Plugin settings\n\n<!-- Generated by `epi list plugins --markdown` from the plugins' own descriptions\n     (their config structs). Do not edit: `EPI_BLESS=1 cargo test -p epi-cli --test e2e docs_` rewrites it,\n     and the test fails when it differs. -->\n\nEvery plugin is configured by its table in `epi-bench.toml` (`[<kind>.<key>]`) or on the\ncommand line with `--set <kind>.<key>.<setting>=<value>` (a TOML value, or a bare string);\n`epi list plugins --details KEY` prints the same on the terminal. A setting without a default\nmust be given; `none` means absent unless set."
    );
    let mut last = None;
    for e in entries {
        if last != Some(e.kind) {
            let _ = writeln!(o, "\n## {}\n", e.kind);
            last = Some(e.kind);
        }
        let _ = writeln!(o, "### `{}` ({})\n\n{}\n", e.key, e.kind, e.description);
        for a in &e.toml_aliases {
            let _ = writeln!(o, "Also read from `[{a}]`.\n");
        }
        for c in &e.capabilities {
            let _ = writeln!(o, "Capability: {}.\n", capability_words(c));
        }
        let Some(settings) = e.settings() else {
            let _ = writeln!(o, "Settings: not described (a dynamic library).\n");
            continue;
        };
        let fields = settings.fields();
        if fields.is_empty() {
            let _ = writeln!(o, "Settings: none.\n");
            continue;
        }
        let _ = writeln!(
            o,
            "| setting | type | default | meaning |\n|---|---|---|---|"
        );
        for s in &fields {
            let _ = writeln!(
                o,
                "| `{}` | {} | {} | {} |",
                s.key,
                md_cell(&s.ty),
                md_cell(&format!("`{}`", default_words(s))),
                md_cell(&s.doc)
            );
        }
        let _ = writeln!(
            o,
            "\nExample:\n\n```toml\n[{}.{}]\n{}```\n",
            e.kind,
            e.key,
            settings.example_toml()
        );
    }
    o
}
