//! `epi pareto|bars|timeline|curve`: every plot as PNG and SVG, from the bundled examples, the
//! results database and a trace written here.

use crate::support::{epi, repo_root, stderr, stdout};
use std::io::Write;
use std::path::Path;

fn examples() -> String {
    repo_root()
        .join("examples/data/expert-pruning")
        .to_string_lossy()
        .into_owned()
}

/// Checks the PNG signature and returns (width, height) from IHDR and the pHYs resolution (px/m).
fn png_info(path: &Path) -> (u32, u32, Option<u32>) {
    let b = std::fs::read(path).unwrap();
    assert!(
        b.len() > 10_000,
        "{} is only {} bytes",
        path.display(),
        b.len()
    );
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    assert_eq!(&b[12..16], b"IHDR");
    let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let phys = b.windows(4).position(|w| w == b"pHYs").map(|i| be(i + 4));
    (be(16), be(20), phys)
}

fn svg_text(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap();
    assert!(s.starts_with("<svg"), "not an SVG");
    assert!(s.contains("</svg>"));
    s
}

fn run(d: &Path, args: &[&str]) {
    let o = epi(d, args);
    assert!(
        o.status.success(),
        "epi {args:?}: {}\n{}",
        stderr(&o),
        stdout(&o)
    );
}

#[test]
fn pareto_png_and_svg() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ex = examples();
    run(
        d,
        &[
            "pareto",
            "--results-dir",
            &ex,
            "--title",
            "Expert Pruning: Accuracy vs Energy",
            "--output",
            "p.png",
        ],
    );
    // the configured defaults: 12 x 8 in at 300 dpi
    assert_eq!(png_info(&d.join("p.png")), (3600, 2400, Some(11811)));
    run(
        d,
        &[
            "pareto",
            "--results-dir",
            &ex,
            "--title",
            "Expert Pruning: Accuracy vs Energy",
            "--output",
            "p.svg",
        ],
    );
    let svg = svg_text(&d.join("p.svg"));
    // what was computed: the random arm is dominated, everything else is on the frontier
    let o = epi(
        d,
        &[
            "pareto",
            "--results-dir",
            &ex,
            "--output",
            "q.svg",
            "--report",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let labels = |k: &str| -> Vec<String> {
        let mut v: Vec<String> = report["content"][k]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["label"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        labels("dominated"),
        vec![
            "drop 16 experts (random)",
            "drop 32 experts (random)",
            "drop 64 experts (random)"
        ]
    );
    assert_eq!(labels("frontier").len(), 9);
    assert!(labels("frontier").contains(&"none (baseline)".to_string()));
    for t in [
        "Expert Pruning: Accuracy vs Energy",
        "none (baseline)",
        "drop 48 experts (frequency)",
        "drop 64 experts (random)",
        "Pareto frontier",
        "dominated",
        "Composite accuracy",
    ] {
        assert!(svg.contains(t), "SVG lacks {t:?}");
    }
}

#[test]
fn bars_png_and_svg_with_config_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ex = examples();
    // [plotting] is honoured, flags override it
    std::fs::write(
        d.join("epi-bench.toml"),
        "[plotting]\ndpi = 100\nfigsize = [10, 5]\nformat = \"svg\"\n",
    )
    .unwrap();
    run(
        d,
        &[
            "bars",
            "--results-dir",
            &ex,
            "--sort-by",
            "epi",
            "--output",
            "b.png",
        ],
    );
    assert_eq!(png_info(&d.join("b.png")), (1000, 500, Some(3937)));
    run(
        d,
        &[
            "bars",
            "--results-dir",
            &ex,
            "--output",
            "b.png",
            "--dpi",
            "50",
            "--figsize",
            "8x6",
            "--theme",
            "light",
        ],
    );
    assert_eq!(png_info(&d.join("b.png")).0, 400);
    // no extension: the configured format
    run(
        d,
        &[
            "bars",
            "--results-dir",
            &ex,
            "--sort-by",
            "epi",
            "--output",
            "b",
        ],
    );
    let svg = svg_text(&d.join("b.svg"));
    for t in [
        "Energy Per Intelligence by Configuration",
        "drop 96 experts (frequency)",
        "95% interval",
        "7.187",
    ] {
        assert!(svg.contains(t), "SVG lacks {t:?}");
    }
    // lowest EPI first: the 48-experts bar's label comes before the baseline's
    assert!(
        svg.find("drop 48 experts (frequency)").unwrap() < svg.find("none (baseline)").unwrap()
    );
    let o = epi(d, &["bars", "--results-dir", &ex, "--output", "b.jpg"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn curve_png_and_svg_from_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ex = examples();
    let files: Vec<String> = std::fs::read_dir(&ex)
        .unwrap()
        .map(|e| e.unwrap().path().to_string_lossy().into_owned())
        .filter(|p| p.ends_with(".json"))
        .collect();
    let mut args = vec!["results", "log", "--tags", "sweep", "--db", "r.db"];
    args.extend(files.iter().map(|s| s.as_str()));
    run(d, &args);
    run(
        d,
        &[
            "curve",
            "--db",
            "r.db",
            "--tag",
            "sweep",
            "--x-param",
            "experts_dropped",
            "--output",
            "c.png",
        ],
    );
    let (w, h, _) = png_info(&d.join("c.png"));
    assert_eq!((w, h), (3600, 2400));
    run(
        d,
        &[
            "curve",
            "--results-dir",
            &ex,
            "--x-param",
            "experts_dropped",
            "--output",
            "c.svg",
        ],
    );
    let svg = svg_text(&d.join("c.svg"));
    for t in [
        "EPI vs experts dropped",
        "method=frequency",
        "method=random",
        "knee: experts dropped = 64, EPI 7.472",
    ] {
        assert!(svg.contains(t), "SVG lacks {t:?}");
    }
    // the same from the database, filtered to the frequency arm by surgery is not possible (one
    // surgery each); a missing parameter is an error
    let o = epi(
        d,
        &[
            "curve",
            "--results-dir",
            &ex,
            "--x-param",
            "heads_removed",
            "--output",
            "x.png",
        ],
    );
    assert_eq!(o.status.code(), Some(4));
    assert!(stderr(&o).contains("heads_removed"), "{}", stderr(&o));
    // pareto and bars from the database too
    run(
        d,
        &[
            "pareto",
            "--db",
            "r.db",
            "--model",
            "qwen3-30b-a3b",
            "--output",
            "p.svg",
        ],
    );
    assert!(svg_text(&d.join("p.svg")).contains("drop 8 experts (frequency)"));
}

#[test]
fn timeline_png_and_svg_keep_the_spike() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 4 nodes at 10 Hz for 5 minutes, one 60 W spike on node 2.
    let mut f = std::fs::File::create(d.join("trace.csv")).unwrap();
    writeln!(
        f,
        "timestamp_ms,node_id,watts_rms,volts_rms,amps_rms,power_factor"
    )
    .unwrap();
    for k in 0..3000u64 {
        for n in 0..4u32 {
            let w = if k == 1234 && n == 2 {
                60.0
            } else {
                9.0 + n as f64 * 0.5 + ((k as f64) / 40.0).sin()
            };
            writeln!(f, "{},{n},{w:.3},121.3,{:.4},0.997", k * 100, w / 121.3).unwrap();
        }
    }
    drop(f);
    run(
        d,
        &["timeline", "--trace", "trace.csv", "--output", "t.png"],
    );
    assert_eq!(png_info(&d.join("t.png")).0, 3600);
    run(
        d,
        &[
            "timeline",
            "--trace",
            "trace.csv",
            "--output",
            "t.svg",
            "--title",
            "Pi cluster",
        ],
    );
    let svg = svg_text(&d.join("t.svg"));
    for t in [
        "Pi cluster",
        "node 0",
        "node 3",
        "cluster total",
        "12,000 samples",
        "Time since trace start (min)",
    ] {
        assert!(svg.contains(t), "SVG lacks {t:?}");
    }
    // the spike is the cluster peak: 60 + the other three nodes at that instant
    let r3 = |x: f64| format!("{x:.3}").parse::<f64>().unwrap();
    let s = (1234.0f64 / 40.0).sin();
    let peak = 60.0 + r3(9.0 + s) + r3(9.5 + s) + r3(10.5 + s);
    let want = format!("peak {peak:.2} W");
    assert!(svg.contains(&want), "SVG lacks {want:?}");
    let o = epi(
        d,
        &["timeline", "--trace", "missing.csv", "--output", "t.png"],
    );
    assert!(!o.status.success());
}
