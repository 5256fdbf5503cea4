//! `epi datasets list` on the repository's test data, and `epi datasets fetch` through `--mirror`
//! from a real HTTP server on 127.0.0.1 serving the pinned original ARC files (the network is not
//! used; the mirror maps every upstream URL onto the local server).

use crate::support::{epi, repo_root, stderr, stdout};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

fn testdata() -> PathBuf {
    repo_root().join("plugins/suites/testdata")
}

/// A minimal HTTP/1.1 server: `GET /<anything>/<name>` answers the bytes `files` holds for `name`
/// (the last path segment), else 404. Records the paths asked for. Serves until the test ends.
struct Server {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
}

fn serve(files: Vec<(String, Vec<u8>)>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).map(|n| n == 0).unwrap_or(true) || h == "\r\n" {
                    break;
                }
            }
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or("")
                .to_string();
            seen.lock().unwrap().push(path.clone());
            let name = path.rsplit('/').next().unwrap_or("");
            let response = match files.iter().find(|(n, _)| n == name) {
                Some((_, body)) => {
                    let mut r = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(body);
                    r
                }
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_vec(),
            };
            let _ = stream.write_all(&response);
        }
    });
    Server { url, requests }
}

fn arc_files() -> Vec<(String, Vec<u8>)> {
    ["Train", "Dev", "Test"]
        .iter()
        .map(|s| {
            let name = format!("ARC-Challenge-{s}.jsonl");
            let body =
                std::fs::read(testdata().join("arc_challenge").join(&name)).expect("read ARC");
            (name, body)
        })
        .collect()
}

fn run(cwd: &Path, args: &[&str]) -> (i32, String, String) {
    let o = epi(cwd, args);
    (o.status.code().unwrap_or(-1), stdout(&o), stderr(&o))
}

#[test]
fn list_shows_what_is_found_where_with_row_counts() {
    let dir = tempfile::tempdir().unwrap();
    let data = testdata();
    let (code, out, err) = run(
        dir.path(),
        &["datasets", "list", "--data-dir", data.to_str().unwrap()],
    );
    assert_eq!(
        code, 1,
        "MMLU is partial and HellaSwag absent in the test data: {out}{err}"
    );
    assert!(out.contains("(from --data-dir)"), "{out}");
    assert!(
        out.contains("✓ arc-challenge  train 1119, test 1172"),
        "{out}"
    );
    assert!(out.contains("✗ mmlu           dev 10, test 265"), "{out}");
    assert!(
        out.contains("2 of 57 subjects (present: abstract_algebra, high_school_european_history)"),
        "{out}"
    );
    assert!(out.contains("✗ hellaswag      not found"), "{out}");
    assert!(
        out.contains("epi datasets fetch --suite hellaswag"),
        "{out}"
    );

    let (_, json, _) = run(
        dir.path(),
        &[
            "datasets",
            "list",
            "--data-dir",
            data.to_str().unwrap(),
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let arc = v["datasets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["suite"] == "arc-challenge")
        .unwrap();
    assert_eq!(arc["status"], "present");
    assert_eq!(arc["splits"][1]["rows"], 1172);
    assert_eq!(arc["splits"][1]["complete"], true);

    // `[general] data_dir` is used when no flag is given.
    std::fs::write(
        dir.path().join("epi-bench.toml"),
        format!("[general]\ndata_dir = {:?}\n", data.to_str().unwrap()),
    )
    .unwrap();
    let (_, out, _) = run(dir.path(), &["datasets", "list"]);
    assert!(
        out.contains("(from [general] data_dir)") && out.contains("✓ arc-challenge"),
        "{out}"
    );
}

#[test]
fn fetch_through_a_mirror_verifies_and_writes_the_suite_layout() {
    let server = serve(arc_files());
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("data");
    let args = [
        "datasets",
        "fetch",
        "--suite",
        "arc-challenge",
        "--source",
        "github",
        "--mirror",
        &server.url,
        "--dest",
        dest.to_str().unwrap(),
    ];
    let (code, out, err) = run(dir.path(), &args);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("ARC-Challenge-Test.jsonl (git blob 682d744c6f6d matches"),
        "{out}"
    );
    assert!(
        out.contains("arc-challenge reads: train 1119, test 1172"),
        "{out}"
    );
    let asked = server.requests.lock().unwrap().clone();
    assert!(
        asked.iter().any(|p| p.starts_with(
            "/raw.githubusercontent.com/pbevan1/introspection_self_prediction/af20e26a"
        )),
        "{asked:?}"
    );
    let note = std::fs::read_to_string(dest.join("arc_challenge/SOURCE.md")).unwrap();
    assert!(
        note.contains("CC BY-SA 4.0") && note.contains("ARC-Challenge-Dev.jsonl"),
        "{note}"
    );
    assert_eq!(
        std::fs::read(dest.join("arc_challenge/ARC-Challenge-Train.jsonl")).unwrap(),
        std::fs::read(testdata().join("arc_challenge/ARC-Challenge-Train.jsonl")).unwrap()
    );

    // A second fetch keeps the verified files and downloads nothing.
    let before = server.requests.lock().unwrap().len();
    let (code, out, _) = run(dir.path(), &args);
    assert_eq!(code, 0);
    assert!(out.contains("(present: git blob"), "{out}");
    assert_eq!(server.requests.lock().unwrap().len(), before);
}

#[test]
fn fetch_discards_a_file_that_fails_verification() {
    let mut files = arc_files();
    files[2].1[100] ^= 0x20; // one changed byte in the test split
    let server = serve(files);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("data");
    let (code, out, err) = run(
        dir.path(),
        &[
            "datasets",
            "fetch",
            "--suite",
            "arc-challenge",
            "--source",
            "github",
            "--mirror",
            &server.url,
            "--dest",
            dest.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 4, "{out}{err}");
    assert!(err.contains("verification failed, file discarded"), "{err}");
    assert!(
        err.contains("expected 682d744c6f6d72f4a41d67baf8638cb1d924d22f"),
        "{err}"
    );
    assert!(!dest.join("arc_challenge/ARC-Challenge-Test.jsonl").exists());
    assert!(!dest
        .join("arc_challenge/ARC-Challenge-Test.jsonl.part")
        .exists());
}

#[test]
fn fetch_reports_missing_files_and_unknown_suites() {
    let server = serve(Vec::new());
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("data");
    let (code, _, err) = run(
        dir.path(),
        &[
            "datasets",
            "fetch",
            "--suite",
            "hellaswag",
            "--mirror",
            &server.url,
            "--dest",
            dest.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("fetching hellaswag/hellaswag_train.jsonl") && err.contains("404"),
        "{err}"
    );
    let (code, _, err) = run(
        dir.path(),
        &[
            "datasets",
            "fetch",
            "--suite",
            "prompts",
            "--dest",
            dest.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(
            "`prompts` has no data set to fetch (those with one: mmlu, arc-challenge, hellaswag)"
        ),
        "{err}"
    );
}
