//! `epi results`: the results database, through the binary, on real SQLite files.

use crate::support::{epi, repo_root, stderr, stdout};
use std::path::{Path, PathBuf};

fn examples() -> PathBuf {
    repo_root().join("examples/data/expert-pruning")
}

fn example(name: &str) -> String {
    examples().join(name).to_string_lossy().into_owned()
}

fn rows(dir: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let mut a = vec!["results", "list", "--db", "r.db", "--json"];
    a.extend_from_slice(args);
    let o = epi(dir, &a);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_str::<Vec<serde_json::Value>>(&stdout(&o)).unwrap()
}

#[test]
fn log_list_best_export() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = epi(
        d,
        &[
            "results",
            "log",
            &example("epi_drop00_baseline.json"),
            &example("epi_drop32_frequency.json"),
            "--tags",
            "baseline,qwen3-30b",
            "--db",
            "r.db",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("logged as #1"), "{}", stdout(&o));
    let o = epi(
        d,
        &[
            "results",
            "log",
            &example("epi_drop48_frequency.json"),
            &example("epi_drop32_random.json"),
            "--tags",
            "sweep",
            "--db",
            "r.db",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // logging a file again adds tags, no new row
    let o = epi(
        d,
        &[
            "results",
            "log",
            &example("epi_drop48_frequency.json"),
            "--tags",
            "knee",
            "--db",
            "r.db",
        ],
    );
    assert!(
        stdout(&o).contains("already stored as #3"),
        "{}",
        stdout(&o)
    );

    assert_eq!(rows(d, &[]).len(), 4);
    let tagged = rows(d, &["--tag", "baseline"]);
    assert_eq!(
        tagged
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(rows(d, &["--tag", "sweep", "--tag", "knee"]).len(), 1);
    assert_eq!(rows(d, &["--surgery", "drop 32 experts (random)"]).len(), 1);
    assert_eq!(
        rows(
            d,
            &[
                "--model",
                "qwen3-30b-a3b",
                "--quantization",
                "Q4_K_M",
                "--hardware",
                "4x Pi 5 16GB (distributed-llama)"
            ]
        )
        .len(),
        4
    );
    assert_eq!(rows(d, &["--model", "llama"]).len(), 0);

    // the table
    let o = epi(d, &["results", "list", "--db", "r.db", "--tag", "sweep"]);
    let table = stdout(&o);
    assert!(table.lines().next().unwrap().starts_with("ID"), "{table}");
    assert!(
        table.contains("drop 48 experts (frequency)") && table.contains("knee,sweep"),
        "{table}"
    );

    // best: drop 48 has the lowest EPI of the four (7.187)
    let o = epi(
        d,
        &[
            "results",
            "best",
            "--model",
            "qwen3-30b-a3b",
            "--db",
            "r.db",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("#3 ") && stdout(&o).contains("EPI 7.187"),
        "{}",
        stdout(&o)
    );
    let o = epi(d, &["results", "best", "--model", "nope", "--db", "r.db"]);
    assert_eq!(o.status.code(), Some(1));
    let o = epi(d, &["results", "best", "--db", "r.db", "--json"]);
    let best: Vec<serde_json::Value> = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(best.len(), 1);
    assert_eq!(best[0]["id"], 3);

    // export one result: it reads back as the file that was logged
    let o = epi(
        d,
        &[
            "results",
            "export",
            "--id",
            "2",
            "--output",
            "out/epi.json",
            "--db",
            "r.db",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let exported: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("out/epi.json")).unwrap()).unwrap();
    let original: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(example("epi_drop32_frequency.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(exported, original);

    // community CSV of a filtered set
    let o = epi(
        d,
        &[
            "results",
            "export",
            "--output",
            "c.csv",
            "--tag",
            "sweep",
            "--contributor",
            "franz",
            "--db",
            "r.db",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let csv = std::fs::read_to_string(d.join("c.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "model,quantization,surgery,hardware,instrument,epi,joules_per_token,accuracy,total_joules,total_tokens,contributor");
    assert_eq!(lines.len(), 3);
    assert!(
        lines[1].starts_with("qwen3-30b-a3b,Q4_K_M,drop 48 experts (frequency),")
            && lines[1].ends_with(",franz"),
        "{}",
        lines[1]
    );

    // usage errors: exit 2
    let o = epi(
        d,
        &["results", "export", "--output", "x.json", "--db", "r.db"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--id"));
    let o = epi(
        d,
        &[
            "results", "export", "--id", "1", "--output", "x.txt", "--db", "r.db",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn bad_input_and_missing_database() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = epi(d, &["results", "list", "--db", "none.db"]);
    assert_eq!(o.status.code(), Some(4));
    assert!(
        stderr(&o).contains("no such database file"),
        "{}",
        stderr(&o)
    );
    assert!(!d.join("none.db").exists());
    std::fs::write(d.join("bad.json"), "{\n  \"epi\": \"high\"\n}\n").unwrap();
    let o = epi(d, &["results", "log", "bad.json", "--db", "r.db"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("bad.json:2"), "{}", stderr(&o));
}

#[test]
fn the_configured_database_is_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("epi-bench.toml"),
        "[general]\nresults_db = \"store/mine.db\"\n",
    )
    .unwrap();
    std::fs::create_dir(d.join("store")).unwrap();
    let o = epi(d, &["results", "log", &example("epi_drop00_baseline.json")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(d.join("store/mine.db").is_file());
}

#[test]
fn concurrent_processes_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(example("epi_drop16_frequency.json")).unwrap(),
    )
    .unwrap();
    const PROCS: usize = 8;
    const EACH: usize = 6;
    let mut files: Vec<Vec<String>> = Vec::new();
    for p in 0..PROCS {
        let mut mine = Vec::new();
        for i in 0..EACH {
            let mut v = base.clone();
            v["run_metadata"]["run_id"] = format!("proc{p}-{i}").into();
            let f = d.join(format!("p{p}_{i}.json"));
            std::fs::write(&f, serde_json::to_string(&v).unwrap()).unwrap();
            mine.push(f.to_string_lossy().into_owned());
        }
        files.push(mine);
    }
    // Every process logs its files one at a time (one transaction each), all at once, into a
    // database none of them has created yet.
    let children: Vec<std::process::Child> = files
        .iter()
        .enumerate()
        .map(|(p, mine)| {
            let script = mine
                .iter()
                .map(|f| {
                    format!(
                        "\"{}\" results log \"{f}\" --tags proc{p} --db r.db || exit 1",
                        crate::support::epi_bin().display()
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            std::process::Command::new("sh")
                .arg("-c")
                .arg(script)
                .current_dir(d)
                .env("XDG_CONFIG_HOME", d.join(".none"))
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    assert_eq!(rows(d, &[]).len(), PROCS * EACH);
    for p in 0..PROCS {
        assert_eq!(rows(d, &["--tag", &format!("proc{p}")]).len(), EACH);
    }
}
