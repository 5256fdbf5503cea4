//! The published JSON Schemas (docs/schemas/) accept the bundled examples and what `epi` writes,
//! and reject what they should.

use crate::support::{epi, repo_root, stderr};
use std::path::Path;

fn schema(name: &str) -> jsonschema::Validator {
    let p = repo_root().join("docs/schemas").join(name);
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    jsonschema::validator_for(&v).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn load(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn assert_valid(v: &jsonschema::Validator, doc: &serde_json::Value, what: &str) {
    let errors: Vec<String> = v
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what} does not match its schema: {errors:#?}"
    );
}

fn json_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            json_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "json") {
            out.push(p);
        }
    }
}

#[test]
fn bundled_examples_match_the_schemas() {
    let bench = schema("benchmark-result.schema.json");
    let result = schema("epi-result.schema.json");
    let meta = schema("trace-meta.schema.json");
    let mut files = Vec::new();
    json_files(&repo_root().join("examples/data"), &mut files);
    let mut checked = 0;
    for f in files {
        let v = load(&f);
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with(".meta.json") {
            assert_valid(&meta, &v, &f.display().to_string());
        } else if v.get("epi").is_some() && v.get("energy").is_some() {
            assert_valid(&result, &v, &f.display().to_string());
        } else if v.get("benchmarks").is_some() && v.get("total_tokens").is_some() {
            assert_valid(&bench, &v, &f.display().to_string());
        } else {
            continue;
        }
        checked += 1;
    }
    assert!(
        checked >= 2,
        "expected the bundled submission's benchmark and EPI JSON at least"
    );
}

#[test]
fn calculate_output_matches_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let sub = repo_root().join("examples/data/submission");
    let out = dir.path().join("epi.json");
    let o = epi(
        dir.path(),
        &[
            "calculate",
            "--trace",
            sub.join("power_trace_001.csv").to_str().unwrap(),
            "--benchmark",
            sub.join("benchmark_001.json").to_str().unwrap(),
            "--idle-watts",
            "13.2",
            "--surgery-param",
            "experts_dropped=0",
            "--output",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_valid(
        &schema("epi-result.schema.json"),
        &load(&out),
        "epi calculate output",
    );
}

#[test]
fn the_schemas_reject_bad_documents() {
    let bench = schema("benchmark-result.schema.json");
    let mut v = load(&repo_root().join("examples/data/submission/benchmark_001.json"));
    v["benchmarks"]["mmlu_5shot"] = serde_json::json!(1.2);
    assert!(!bench.is_valid(&v));
    let mut v = load(&repo_root().join("examples/data/submission/benchmark_001.json"));
    v.as_object_mut().unwrap().remove("total_tokens");
    assert!(!bench.is_valid(&v));
    let result = schema("epi-result.schema.json");
    let mut v = load(&repo_root().join("examples/data/submission/epi_001.json"));
    v["energy"]["method"] = serde_json::json!("guessed");
    assert!(!result.is_valid(&v));
    let mut v = load(&repo_root().join("examples/data/submission/epi_001.json"));
    v["accuracy_composite"] = serde_json::json!(0.0);
    assert!(!result.is_valid(&v));
}
