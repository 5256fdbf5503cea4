//! `epi datasets fetch [--suite mmlu,arc-challenge,hellaswag] [--dest DIR] [--source hf|github]`
//! and `epi datasets list [--data-dir DIR]`.
//!
//! `fetch` downloads each suite's data set, verifies every file (git blob id of the pinned
//! original, or the row count of the Hugging Face parquet), and writes it in the layout the
//! suites read (`docs/suites.md`), with a `SOURCE.md` beside it. A file already present and
//! verified is kept. `list` reads what is there and counts rows per split.

use crate::context::Context;
use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Args, Subcommand};
use epi_suites::datasets::{self, Found, RemoteFile, Source};
use futures_util::StreamExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tokio::io::AsyncWriteExt;

/// What to do with data sets.
#[derive(Debug, Subcommand)]
pub enum DatasetsCommand {
    /// Download the data sets, verify them, and write them where the suites look.
    Fetch(FetchArgs),
    /// Show which data sets are found where, with row counts (exit 1 if one is missing or incomplete).
    List(ListArgs),
}

/// Options of `epi datasets fetch`.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Suites whose data to fetch, comma-separated (default: mmlu, arc-challenge, hellaswag).
    #[arg(long = "suite", value_name = "SUITE,...", value_delimiter = ',')]
    pub suites: Vec<String>,
    /// Data directory to write into (default: `[general] data_dir`, else
    /// ~/.local/share/epi-bench/datasets).
    #[arg(long, value_name = "DIR")]
    pub dest: Option<PathBuf>,
    /// `hf`: the Hugging Face parquet exports lm-eval loads (checked by row count); `github`: the
    /// original files at pinned commits (checked by git blob id). Default: hf for mmlu and
    /// arc-challenge, github for hellaswag.
    #[arg(long, value_parser = ["hf", "github"])]
    pub source: Option<String>,
    /// Fetch through a mirror that serves every original URL `https://HOST/PATH` as `URL/HOST/PATH`.
    #[arg(long, value_name = "URL")]
    pub mirror: Option<String>,
    /// Download again even when a verified copy is present.
    #[arg(long)]
    pub force: bool,
}

/// Options of `epi datasets list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Data directory to look in (default: `[general] data_dir`, else the suites' default).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs `epi datasets`.
pub fn run(ctx: &Context, cmd: &DatasetsCommand) -> Result<ExitCode> {
    match cmd {
        DatasetsCommand::Fetch(a) => fetch(ctx, a),
        DatasetsCommand::List(a) => list(ctx, a),
    }
}

/// The data directory a command uses, and where that choice came from.
fn data_dir(ctx: &Context, flag: Option<&Path>) -> (Option<PathBuf>, &'static str) {
    match (flag, &ctx.config.general.data_dir) {
        (Some(d), _) => (Some(d.to_path_buf()), "--data-dir"),
        (None, Some(d)) => (Some(d.clone()), "[general] data_dir"),
        (None, None) => (None, "default"),
    }
}

fn list(ctx: &Context, a: &ListArgs) -> Result<ExitCode> {
    let (dir, origin) = data_dir(ctx, a.data_dir.as_deref());
    let shown = dir.clone().or_else(epi_suites::data::default_data_dir);
    let rows = datasets::inventory(dir.as_deref());
    let all_ok = rows.iter().all(|r| match &r.found {
        Found::Present { splits, note, .. } => {
            note.is_none() && splits.iter().all(|s| s.complete())
        }
        _ => false,
    });
    if a.json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| match &r.found {
                Found::Present { source, splits, note } => serde_json::json!({
                    "suite": r.suite, "status": "present", "source": source, "note": note,
                    "splits": splits.iter().map(|s| serde_json::json!({
                        "split": s.split, "rows": s.rows, "expected": s.expected, "complete": s.complete(),
                    })).collect::<Vec<_>>(),
                }),
                Found::Missing(m) => serde_json::json!({ "suite": r.suite, "status": "missing", "message": m }),
                Found::Invalid(m) => serde_json::json!({ "suite": r.suite, "status": "invalid", "message": m }),
            })
            .collect();
        let out = serde_json::json!({
            "data_dir": shown, "data_dir_from": origin, "datasets": v,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let where_ = shown
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| "(none)".into());
        println!("{} {where_} (from {origin})", ctx.bold("data directory:"));
        for r in &rows {
            match &r.found {
                Found::Present {
                    source,
                    splits,
                    note,
                } => {
                    let complete = note.is_none() && splits.iter().all(|s| s.complete());
                    let mark = if complete {
                        ctx.ok_mark()
                    } else {
                        ctx.fail_mark()
                    };
                    let counts: Vec<String> = splits
                        .iter()
                        .map(|s| match s.expected {
                            Some(e) if e != s.rows => {
                                format!("{} {} (full set: {e})", s.split, s.rows)
                            }
                            _ => format!("{} {}", s.split, s.rows),
                        })
                        .collect();
                    println!("{mark} {:<14} {}", r.suite, counts.join(", "));
                    println!("  {:<14} {source}", "");
                    if let Some(n) = note {
                        println!("  {:<14} {n}", "");
                    }
                }
                Found::Missing(m) | Found::Invalid(m) => {
                    let what = if matches!(r.found, Found::Missing(_)) {
                        "not found"
                    } else {
                        "unreadable"
                    };
                    println!("{} {:<14} {what}", ctx.fail_mark(), r.suite);
                    for line in m.lines() {
                        println!("  {:<14} {line}", "");
                    }
                }
            }
        }
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `https://HOST/PATH` through `mirror` as `MIRROR/HOST/PATH`.
pub fn mirrored(url: &str, mirror: Option<&str>) -> String {
    match mirror {
        None => url.to_string(),
        Some(m) => {
            let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
            format!("{}/{rest}", m.trim_end_matches('/'))
        }
    }
}

fn fetch(ctx: &Context, a: &FetchArgs) -> Result<ExitCode> {
    let keys: Vec<String> = if a.suites.is_empty() {
        datasets::DATASETS
            .iter()
            .map(|d| d.suite.to_string())
            .collect()
    } else {
        a.suites
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let mut plan: Vec<(&'static datasets::DatasetSpec, Source, Vec<RemoteFile>)> = Vec::new();
    for key in &keys {
        let Some(spec) = datasets::spec(key) else {
            let known: Vec<&str> = datasets::DATASETS.iter().map(|d| d.suite).collect();
            eprintln!(
                "error: --suite: `{key}` has no data set to fetch (those with one: {})",
                known.join(", ")
            );
            return Ok(ExitCode::from(2));
        };
        let source = match a.source.as_deref().map(|s| (s, Source::parse(s))) {
            None => spec.default_source,
            Some((_, Some(s))) => s,
            Some((s, None)) => {
                eprintln!("error: --source: `{s}`, expected hf or github");
                return Ok(ExitCode::from(2));
            }
        };
        let files = datasets::files(key, source).map_err(|e| anyhow!(e))?;
        plan.push((spec, source, files));
    }
    let dest =
        datasets::fetch_destination(a.dest.as_deref().or(ctx.config.general.data_dir.as_deref()))
            .ok_or_else(|| {
            anyhow!("no destination: pass --dest DIR (no user data directory on this system)")
        })?;
    std::fs::create_dir_all(&dest).with_context(|| format!("creating {}", dest.display()))?;
    println!("{} {}", ctx.bold("destination:"), dest.display());

    let client = http_client()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let fetched_at = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    for (spec, source, files) in &plan {
        println!(
            "{} ({}, source {})",
            ctx.bold(spec.suite),
            spec.title,
            source.as_str()
        );
        let mut done = Vec::new();
        for f in files {
            let target = dest.join(&f.dest);
            if target.is_file() && !a.force {
                if let Ok(check) = datasets::verify(&target, &f.check) {
                    println!("  {} {} (present: {check})", ctx.ok_mark(), f.dest);
                    done.push((f.clone(), "already present".to_string(), check));
                    continue;
                }
            }
            let (url, check) = rt
                .block_on(download(&client, f, &target, a.mirror.as_deref()))
                .with_context(|| format!("fetching {}", f.dest))?;
            println!("  {} {} ({check})", ctx.ok_mark(), f.dest);
            done.push((f.clone(), url, check));
        }
        let note = dest.join(spec.subdir).join("SOURCE.md");
        std::fs::write(
            &note,
            datasets::source_note(spec, *source, &done, &fetched_at),
        )
        .with_context(|| format!("writing {}", note.display()))?;
        match datasets::survey(spec.suite, Some(&dest)) {
            Found::Present { splits, .. } => {
                let counts: Vec<String> = splits
                    .iter()
                    .map(|s| format!("{} {}", s.split, s.rows))
                    .collect();
                println!(
                    "  {} {} reads: {}",
                    ctx.ok_mark(),
                    spec.suite,
                    counts.join(", ")
                );
            }
            Found::Missing(m) | Found::Invalid(m) => {
                bail!("{}: fetched, but the suite cannot read it: {m}", spec.suite)
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The HTTP client (rustls with the ring provider, installed once per process).
fn http_client() -> Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .user_agent(concat!("epi-bench/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(std::time::Duration::from_secs(30))
        .build()
        .context("building the HTTP client")
}

/// Downloads `f` to `target` through a `.part` file, trying its URLs in order (a 404 moves on to
/// the next), and verifies it before putting it in place. Returns the URL used and the check.
async fn download(
    client: &reqwest::Client,
    f: &RemoteFile,
    target: &Path,
    mirror: Option<&str>,
) -> Result<(String, String)> {
    let part = target.with_file_name(format!(
        "{}.part",
        target
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("download")
    ));
    if let Some(parent) = target.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut tried = Vec::new();
    for original in &f.urls {
        let url = mirrored(original, mirror);
        let mut req = client.get(&url);
        // The token goes to huggingface.co only, never to a mirror.
        if mirror.is_none() && original.starts_with("https://huggingface.co/") {
            if let Ok(token) = std::env::var("HF_TOKEN") {
                req = req.bearer_auth(token);
            }
        }
        let resp = req.send().await.with_context(|| format!("GET {url}"))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            tried.push(format!("{url}: 404"));
            continue;
        }
        if !resp.status().is_success() {
            bail!("GET {url}: HTTP {}", resp.status());
        }
        let mut out = tokio::fs::File::create(&part)
            .await
            .with_context(|| format!("creating {}", part.display()))?;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.with_context(|| format!("reading {url}"))?;
            out.write_all(&chunk)
                .await
                .with_context(|| format!("writing {}", part.display()))?;
        }
        out.flush().await?;
        drop(out);
        return match datasets::verify(&part, &f.check) {
            Ok(check) => {
                tokio::fs::rename(&part, target)
                    .await
                    .with_context(|| format!("moving into {}", target.display()))?;
                Ok((url, check))
            }
            Err(why) => {
                let _ = tokio::fs::remove_file(&part).await;
                Err(anyhow!(
                    "verification failed, file discarded: {why} (from {url})"
                ))
            }
        };
    }
    bail!("not found at any URL: {}", tried.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_rewrites_host_and_path() {
        let u = "https://huggingface.co/datasets/cais/mmlu/resolve/main/x.parquet";
        assert_eq!(mirrored(u, None), u);
        assert_eq!(
            mirrored(u, Some("http://127.0.0.1:8000/m/")),
            "http://127.0.0.1:8000/m/huggingface.co/datasets/cais/mmlu/resolve/main/x.parquet"
        );
    }

    /// A one-file HTTP server on 127.0.0.1: `/good/<name>` answers `body`, anything else 404.
    fn serve(body: &'static [u8]) -> String {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut stream = stream;
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).map(|n| n == 0).unwrap_or(true) || h == "\r\n" {
                        break;
                    }
                }
                let response = if line.contains(" /good/") {
                    let mut r = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(body);
                    r
                } else {
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_vec()
                };
                let _ = stream.write_all(&response);
            }
        });
        url
    }

    #[test]
    fn a_404_moves_on_to_the_next_url_and_the_file_lands_verified() {
        let url = serve(b"hello\n");
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("sub/hello.txt");
        let f = RemoteFile {
            urls: vec![
                format!("{url}/missing/hello.txt"),
                format!("{url}/good/hello.txt"),
            ],
            dest: "sub/hello.txt".into(),
            // `git hash-object` of "hello\n".
            check: datasets::Check::GitBlob("ce013625030ba8dba906f756967f9e9ca394464a"),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = http_client().unwrap();
        let (used, check) = rt.block_on(download(&client, &f, &target, None)).unwrap();
        assert!(used.ends_with("/good/hello.txt"), "{used}");
        assert!(
            check.starts_with("git blob ce013625030b matches"),
            "{check}"
        );
        assert_eq!(std::fs::read(&target).unwrap(), b"hello\n");
        let f = RemoteFile {
            urls: vec![format!("{url}/missing/a"), format!("{url}/missing/b")],
            ..f
        };
        let e = rt
            .block_on(download(&client, &f, &target, None))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not found at any URL") && e.contains("/missing/b: 404"),
            "{e}"
        );
    }
}
