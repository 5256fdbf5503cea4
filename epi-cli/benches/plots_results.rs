//! Benchmark of `epi timeline` on a long trace and `epi results list` on a large database.
//!
//! ```text
//! cargo bench -p epi-cli --bench plots_results            # 24 h trace (17.3 M rows), 100 000 results
//! cargo bench -p epi-cli --bench plots_results -- --quick # 1 h trace (0.72 M rows), 10 000 results
//! ```
//!
//! - `epi timeline` on a 50 Hz, 4-node trace (the layout of `gen_trace.py --nodes 4 --hz 50`,
//!   written by this program): wall time and peak RSS (`wait4`), against the time `wc -l` takes
//!   to read the same file (the I/O floor of any streaming reader), page cache warm for both.
//! - `epi results list` on a database of N results (printed table, and `--json`): wall time and
//!   peak RSS, against the in-process query (`ResultsDb::query_rows`) the command wraps.
//!
//! Data are generated once into `target/bench-data/`.

use epi_framework::resultsdb::{ResultFilter, ResultsDb};
use epi_framework::EpiResult;
use std::io::Write;
mod measure;

use measure::{median, run_measured, warm};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs bench targets without `--bench`: nothing to do then.
        println!("plots_results bench: run with `cargo bench -p epi-cli --bench plots_results [-- --quick]`");
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let (seconds, results, runs) = if quick {
        (3_600u64, 10_000usize, 3)
    } else {
        (86_400, 100_000, 3)
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf();
    let data = root.join("target/bench-data");
    std::fs::create_dir_all(&data).expect("create target/bench-data");
    let epi = PathBuf::from(env!("CARGO_BIN_EXE_epi"));

    // --- timeline ---
    let trace = data.join(format!("timeline_4n_50hz_{seconds}s.csv"));
    if !trace.exists() {
        println!("generating {} ...", trace.display());
        write_trace(&trace, 4, 50, seconds);
    }
    let bytes = std::fs::metadata(&trace).expect("trace").len();
    let rows = 4 * 50 * seconds;
    warm(&trace);
    let mut tl = Vec::new();
    let mut wc = Vec::new();
    let png = data.join("timeline_bench.png");
    for _ in 0..runs {
        let (t, rss, _) = run_measured(
            Command::new(&epi)
                .arg("timeline")
                .arg("--trace")
                .arg(&trace)
                .arg("--output")
                .arg(&png)
                .env("NO_COLOR", "1"),
        );
        tl.push((t, rss));
        let (t, rss, out) = run_measured(Command::new("wc").arg("-l").arg(&trace));
        assert_eq!(
            out.split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok()),
            Some(rows + 1),
            "wc -l"
        );
        wc.push((t, rss));
    }
    let (tt, trss) = median(&tl);
    let (wt, _) = median(&wc);
    println!("\nepi timeline, 4 nodes × 50 Hz × {seconds} s = {rows} rows, {:.0} MiB ({runs} runs, median):", bytes as f64 / 1048576.0);
    println!(
        "  epi timeline → PNG 3600×2400: {tt:.2} s, peak RSS {:.1} MiB, {:.1} M rows/s",
        trss as f64 / 1024.0,
        rows as f64 / tt / 1e6
    );
    println!("  wc -l (I/O floor):           {wt:.2} s  → timeline takes {:.1}× the time of reading the file", tt / wt);

    // --- results list ---
    let db_path = data.join(format!("results_{results}.db"));
    if !db_path.exists() {
        println!("\nlogging {results} results into {} ...", db_path.display());
        fill_db(&db_path, results);
    }
    let db = ResultsDb::open(&db_path).expect("open db");
    assert_eq!(db.count().expect("count") as usize, results);
    let mut q = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let n = db.query_rows(&ResultFilter::all()).expect("query").len();
        q.push((t.elapsed().as_secs_f64(), 0));
        assert_eq!(n, results);
    }
    let (qt, _) = median(&q);
    println!("\nepi results list on {results} results ({runs} runs, median):");
    println!(
        "  in-process ResultsDb::query_rows (reference): {:.3} s",
        qt
    );
    for extra in [&[][..], &["--json"][..], &["--tag", "sweep"][..]] {
        let mut r = Vec::new();
        let mut lines = 0;
        for _ in 0..runs {
            let (t, rss, out) = run_measured(
                Command::new(&epi)
                    .args(["results", "list", "--db"])
                    .arg(&db_path)
                    .args(extra)
                    .env("NO_COLOR", "1"),
            );
            lines = out.lines().count();
            r.push((t, rss));
        }
        let (t, rss) = median(&r);
        println!(
            "  epi results list {:<13} {t:.3} s ({:.1}× the query), peak RSS {:.1} MiB, {lines} lines",
            extra.join(" "),
            t / qt,
            rss as f64 / 1024.0
        );
    }
}

/// Writes a trace like `gen_trace.py`: every node at every timestamp, slow sine plus noise.
fn write_trace(path: &Path, nodes: u32, hz: u64, seconds: u64) {
    let tmp = path.with_extension("tmp");
    let mut w = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(&tmp).expect("create trace"),
    );
    writeln!(
        w,
        "timestamp_ms,node_id,watts_rms,volts_rms,amps_rms,power_factor"
    )
    .expect("write");
    let mut s: u64 = 0x2545F4914F6CDD1D;
    let mut noise = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    let dt = 1000.0 / hz as f64;
    for step in 0..hz * seconds {
        let t = (step as f64 * dt).round() as u64;
        for n in 0..nodes {
            let phase = (step as f64 / (hz as f64 * 7.0) + n as f64).sin();
            let watts = 9.0 + 3.0 * phase + 0.3 * noise();
            let volts = 121.3 + 0.1 * noise();
            let pf = 0.997 + 0.001 * noise();
            writeln!(
                w,
                "{t},{n},{watts:.3},{volts:.3},{:.4},{pf:.4}",
                watts / (volts * pf)
            )
            .expect("write");
        }
    }
    w.flush().expect("flush");
    drop(w);
    std::fs::rename(&tmp, path).expect("rename");
}

/// Logs `n` results (the bundled sweep, varied) in batches of 5 000.
fn fill_db(path: &Path, n: usize) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/data/expert-pruning");
    let base: Vec<EpiResult> = epi_framework::result::load_results_dir(&dir)
        .expect("examples")
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut db = ResultsDb::open(&tmp).expect("create db");
    let models = [
        "qwen3-30b-a3b",
        "llama-3.1-8b",
        "mistral-7b-v0.3",
        "phi-3-mini-4k",
        "gemma-2-9b",
    ];
    let mut i = 0;
    while i < n {
        let batch: Vec<(EpiResult, Vec<String>)> = (i..(i + 5000).min(n))
            .map(|k| {
                let mut r = base[k % base.len()].clone();
                r.run_metadata.run_id = format!("bench-{k}");
                r.model = models[k % models.len()].to_string();
                r.epi *= 1.0 + (k % 97) as f64 / 1000.0;
                let tags = if k % 10 == 0 {
                    vec!["sweep".to_string()]
                } else {
                    vec![format!("batch{}", k / 5000)]
                };
                (r, tags)
            })
            .collect();
        db.log_all(batch.iter().map(|(r, t)| (r, t.as_slice())))
            .expect("log");
        i += 5000;
    }
    drop(db);
    for ext in ["tmp-wal", "tmp-shm"] {
        let _ = std::fs::remove_file(path.with_extension(ext));
    }
    std::fs::rename(&tmp, path).expect("rename db");
}
