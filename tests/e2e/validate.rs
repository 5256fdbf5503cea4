//! `epi validate` on the bundled submission and on broken copies of it; `epi export`.

use crate::support::{epi, repo_root, stderr, stdout};
use std::path::{Path, PathBuf};

fn copy_submission() -> (tempfile::TempDir, PathBuf) {
    let src = repo_root().join("examples/data/submission");
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("sub");
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
        }
    }
    (dir, dst)
}

fn validate(cwd: &Path, sub: &Path) -> (Option<i32>, String) {
    let o = epi(cwd, &["validate", "--submission", sub.to_str().unwrap()]);
    (o.status.code(), format!("{}{}", stdout(&o), stderr(&o)))
}

fn line<'a>(out: &'a str, check: &str) -> &'a str {
    out.lines()
        .find(|l| l.contains(&format!(" {check}:")))
        .unwrap_or_else(|| panic!("no {check} line in:\n{out}"))
}

fn edit_json(p: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[test]
fn the_bundled_example_validates() {
    let (dir, sub) = copy_submission();
    let (code, out) = validate(dir.path(), &sub);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        line(&out, "Power trace CSV").starts_with("✓")
            && out.contains("14,400 samples, 4 channels"),
        "{out}"
    );
    for c in ["Structure", "Benchmark JSON", "EPI JSON", "Metadata"] {
        assert!(line(&out, c).starts_with("✓"), "{out}");
    }
    assert!(out.contains("✓ Ready for submission"), "{out}");
}

#[test]
fn a_tampered_epi_value_fails_the_epi_check() {
    let (dir, sub) = copy_submission();
    edit_json(&sub.join("epi_001.json"), |v| {
        let e = v["epi"].as_f64().unwrap();
        v["epi"] = serde_json::json!(e * 0.9);
    });
    let (code, out) = validate(dir.path(), &sub);
    assert_eq!(code, Some(1), "{out}");
    let l = line(&out, "EPI JSON");
    assert!(
        l.starts_with("✗")
            && l.contains("epi")
            && l.contains("joules_per_token / accuracy_composite"),
        "{out}"
    );
    assert!(out.contains("✗ Not ready"), "{out}");

    // Consistent but wrong: every number scaled, so only recomputation catches it.
    let (dir, sub) = copy_submission();
    edit_json(&sub.join("epi_001.json"), |v| {
        for k in ["epi", "joules_per_token"] {
            let x = v[k].as_f64().unwrap();
            v[k] = serde_json::json!(x * 0.8);
        }
        let j = v["energy"]["total_joules"].as_f64().unwrap();
        v["energy"]["total_joules"] = serde_json::json!(j * 0.8);
    });
    let (code, out) = validate(dir.path(), &sub);
    assert_eq!(code, Some(1), "{out}");
    let l = line(&out, "EPI JSON");
    assert!(
        l.contains("energy.total_joules") && l.contains("the trace and benchmark give"),
        "{out}"
    );
}

#[test]
fn a_missing_file_fails_the_structure_check() {
    let (dir, sub) = copy_submission();
    std::fs::remove_file(sub.join("benchmark_001.json")).unwrap();
    let (code, out) = validate(dir.path(), &sub);
    assert_eq!(code, Some(1), "{out}");
    let l = line(&out, "Structure");
    assert!(
        l.starts_with("✗") && l.contains("missing benchmark JSON"),
        "{out}"
    );
}

#[test]
fn a_truncated_trace_fails() {
    // Cut mid-line: the trace check names the line.
    let (dir, sub) = copy_submission();
    let p = sub.join("power_trace_001.csv");
    let text = std::fs::read_to_string(&p).unwrap();
    let cut = text.len() * 2 / 3;
    let cut = cut + text[cut..].find(',').unwrap() + 1;
    std::fs::write(&p, &text[..cut]).unwrap();
    let (code, out) = validate(dir.path(), &sub);
    assert_eq!(code, Some(1), "{out}");
    let l = line(&out, "Power trace CSV");
    assert!(
        l.starts_with("✗") && l.contains("power_trace_001.csv:") && l.contains("truncated"),
        "{out}"
    );
    assert!(line(&out, "EPI JSON").starts_with("✗"), "{out}");

    // Cut at a line boundary: the trace parses, but its energy no longer matches the EPI JSON.
    let (dir, sub) = copy_submission();
    let p = sub.join("power_trace_001.csv");
    let text = std::fs::read_to_string(&p).unwrap();
    let keep: String = text
        .lines()
        .take(10_001)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&p, keep).unwrap();
    let (code, out) = validate(dir.path(), &sub);
    assert_eq!(code, Some(1), "{out}");
    assert!(line(&out, "Power trace CSV").starts_with("✓"), "{out}");
    let l = line(&out, "EPI JSON");
    assert!(
        l.starts_with("✗") && l.contains("energy.total_joules"),
        "{out}"
    );
}

#[test]
fn a_score_above_one_fails_the_benchmark_check() {
    let (dir, sub) = copy_submission();
    edit_json(&sub.join("benchmark_001.json"), |v| {
        v["benchmarks"]["mmlu_5shot"] = serde_json::json!(1.2)
    });
    let (code, out) = validate(dir.path(), &sub);
    assert_eq!(code, Some(1), "{out}");
    let l = line(&out, "Benchmark JSON");
    assert!(
        l.starts_with("✗") && l.contains("benchmarks.mmlu_5shot") && l.contains("outside [0, 1]"),
        "{out}"
    );
}

#[test]
fn a_missing_metadata_field_fails_the_metadata_check() {
    let (dir, sub) = copy_submission();
    edit_json(&sub.join("epi_001.json"), |v| {
        v.as_object_mut().unwrap().remove("hardware");
        v["run_metadata"].as_object_mut().unwrap().remove("run_id");
    });
    let (code, out) = validate(dir.path(), &sub);
    assert_eq!(code, Some(1), "{out}");
    let l = line(&out, "Metadata");
    assert!(
        l.starts_with("✗") && l.contains("hardware") && l.contains("run_metadata.run_id"),
        "{out}"
    );
    assert!(line(&out, "EPI JSON").starts_with("✓"), "{out}");
}

#[test]
fn validate_json_output() {
    let (dir, sub) = copy_submission();
    let o = epi(
        dir.path(),
        &["validate", "--submission", sub.to_str().unwrap(), "--json"],
    );
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ready"], true);
    let names: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "Structure",
            "Power trace CSV",
            "Benchmark JSON",
            "Measurement",
            "EPI JSON",
            "Metadata"
        ]
    );
    let recomputed: Vec<&str> = v["recomputed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    for f in [
        "energy.avg_watts",
        "energy.peak_watts",
        "energy.kwh",
        "energy.duration_seconds",
        "energy.samples",
        "energy.channels",
        "energy.coverage",
        "energy.per_node_joules.3",
        "accuracy.mmlu_5shot",
        "accuracy.weights.mmlu",
        "metrics.ept_out",
        "run_metadata.input_digests.trace",
    ] {
        assert!(
            recomputed.contains(&f),
            "{f} not recomputed: {recomputed:?}"
        );
    }
    let unchecked: Vec<&str> = v["unchecked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["field"].as_str().unwrap())
        .collect();
    assert!(
        unchecked.contains(&"run_metadata.run_id") && unchecked.contains(&"environment"),
        "{unchecked:?}"
    );
}

/// `epi calculate` of the bundled trace and benchmark into the submission, with `extra` flags.
fn recalculate(sub: &Path, extra: &[&str]) {
    let mut args = vec![
        "calculate",
        "--trace",
        "power_trace_001.csv",
        "--benchmark",
        "benchmark_001.json",
        "--output",
        "epi_001.json",
    ];
    args.extend_from_slice(extra);
    let o = epi(sub, &args);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_label_overridden_by_calculate_is_recorded_and_accepted() {
    let (dir, sub) = copy_submission();
    recalculate(
        &sub,
        &[
            "--model",
            "qwen3-30b-a3b-pruned",
            "--hardware",
            "4x Pi 5 8GB",
        ],
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sub.join("epi_001.json")).unwrap()).unwrap();
    assert_eq!(
        v["run_metadata"]["label_overrides"],
        serde_json::json!({
            "model": {"from": "benchmark", "was": "qwen3-30b-a3b"},
            "hardware": {"from": "benchmark", "was": "4x Pi 5 16GB (distributed-llama)"}
        })
    );
    let (code, out) = validate(dir.path(), &sub);
    assert_eq!(code, Some(0), "{out}");
    let l = line(&out, "Metadata");
    assert!(
        l.contains("model \"qwen3-30b-a3b-pruned\" (was \"qwen3-30b-a3b\" from benchmark)"),
        "{out}"
    );

    // The same label changed by hand, with no record: refused, naming both values.
    let (dir, sub) = copy_submission();
    recalculate(&sub, &[]);
    edit_json(&sub.join("epi_001.json"), |v| {
        v["model"] = serde_json::json!("qwen3-30b-a3b-pruned")
    });
    let (code, out) = validate(dir.path(), &sub);
    assert_eq!(code, Some(1), "{out}");
    let l = line(&out, "Metadata");
    assert!(
        l.starts_with("✗")
            && l.contains("`model` is \"qwen3-30b-a3b-pruned\" in the EPI JSON but \"qwen3-30b-a3b\" in the benchmark JSON")
            && l.contains("no override is recorded"),
        "{out}"
    );

    // A recorded override whose benchmark changed afterwards: refused.
    let (dir, sub) = copy_submission();
    recalculate(&sub, &["--model", "x"]);
    edit_json(&sub.join("benchmark_001.json"), |v| {
        v["model"] = serde_json::json!("y")
    });
    let (code, out) = validate(dir.path(), &sub);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        line(&out, "Metadata").contains("benchmark JSON says \"y\""),
        "{out}"
    );
}

#[test]
fn a_trace_edited_after_calculate_fails_its_digest() {
    let (dir, sub) = copy_submission();
    recalculate(&sub, &[]);
    // One voltage changed: no recomputed number moves, the digest does.
    let p = sub.join("power_trace_001.csv");
    let text = std::fs::read_to_string(&p).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut f: Vec<String> = lines[5].split(',').map(str::to_string).collect();
    f[3] = format!("{}1", f[3]);
    lines[5] = f.join(",");
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    let (code, out) = validate(dir.path(), &sub);
    assert_eq!(code, Some(1), "{out}");
    let l = line(&out, "EPI JSON");
    assert!(
        l.starts_with("✗")
            && l.contains("run_metadata.input_digests.trace")
            && l.contains("not the file the result was computed from"),
        "{out}"
    );
}

#[test]
fn a_modelled_trace_is_refused_and_so_is_one_presented_as_measured() {
    let (dir, sub) = copy_submission();
    let sidecar = serde_json::json!({
        "format_version": 1,
        "source": {"source": "cpu-model", "method": "modelled", "instrument": "CPU power model",
                   "sample_rate_hz": 4.0, "accuracy_rel": null, "channels": []},
        "started_utc": "2026-05-15T10:00:00Z"
    });
    std::fs::write(
        sub.join("power_trace_001.csv.meta.json"),
        sidecar.to_string(),
    )
    .unwrap();
    recalculate(&sub, &[]);
    // Honestly labelled: consistent, but not a measurement.
    let (code, out) = validate(dir.path(), &sub);
    assert_eq!(code, Some(1), "{out}");
    assert!(line(&out, "EPI JSON").starts_with("✓"), "{out}");
    let l = line(&out, "Measurement");
    assert!(
        l.starts_with("✗") && l.contains("`modelled`") && l.contains("not a measurement"),
        "{out}"
    );
    // Presented as measured.
    edit_json(&sub.join("epi_001.json"), |v| {
        v["energy"]["method"] = serde_json::json!("integrated");
        v["energy"]["source"] = serde_json::json!("epi-meter");
    });
    let (code, out) = validate(dir.path(), &sub);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        line(&out, "Measurement").contains("a modelled trace presented as measured"),
        "{out}"
    );
    assert!(line(&out, "EPI JSON").contains("energy.method"), "{out}");
}

#[test]
fn export_writes_the_community_csv() {
    let (dir, sub) = copy_submission();
    let o = epi(
        dir.path(),
        &[
            "export",
            "--results-dir",
            sub.to_str().unwrap(),
            "--output",
            "community.csv",
            "--contributor",
            "Franzabner",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(dir.path().join("community.csv")).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "model,quantization,surgery,hardware,instrument,epi,joules_per_token,accuracy,total_joules,total_tokens,contributor"
    );
    let row = lines.next().unwrap();
    assert!(
        row.starts_with(
            "qwen3-30b-a3b,Q4_K_M,none (baseline),4x Pi 5 16GB (distributed-llama),epi-meter v1.0,"
        ),
        "{row}"
    );
    assert!(row.ends_with(",24576,Franzabner"), "{row}");
    let epi: f64 = row.split(',').nth(5).unwrap().parse().unwrap();
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sub.join("epi_001.json")).unwrap()).unwrap();
    assert_eq!(epi, r["epi"].as_f64().unwrap());
    assert!(lines.next().is_none());
}

#[test]
fn a_benchmark_energy_window_is_what_validate_recomputes_over() {
    let (dir, sub) = copy_submission();
    edit_json(&sub.join("benchmark_001.json"), |v| {
        v["energy_window_ms"] = serde_json::json!([600_000.0, 1_800_000.0])
    });
    recalculate(&sub, &[]);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sub.join("epi_001.json")).unwrap()).unwrap();
    assert_eq!(v["energy"]["duration_seconds"], 1200.0, "{v:#}");
    let (code, out) = validate(dir.path(), &sub);
    assert_eq!(code, Some(0), "{out}");

    // The window moved after the fact: the energy no longer matches.
    edit_json(&sub.join("benchmark_001.json"), |v| {
        v["energy_window_ms"] = serde_json::json!([600_000.0, 1_900_000.0])
    });
    let (code, out) = validate(dir.path(), &sub);
    assert_eq!(code, Some(1), "{out}");
    let l = line(&out, "EPI JSON");
    assert!(
        l.contains("energy.duration_seconds is 1200.0, but the trace and benchmark give 1300"),
        "{out}"
    );
}
