//! Helpers for the backend tests: the Python test doubles of the inference servers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The directory of the doubles.
pub fn doubles_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/doubles")
}

/// Whether `python3` with numpy is there. In CI (`EPI_REQUIRE_SYSTEM_TOOLS`) its absence fails the
/// test instead of skipping it.
pub fn have_python() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import numpy"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var_os("EPI_REQUIRE_SYSTEM_TOOLS").is_none(),
            "python3 with numpy is required (EPI_REQUIRE_SYSTEM_TOOLS is set): run .ci/setup"
        );
        eprintln!("skipping: python3 with numpy is not available");
    }
    ok
}

/// A running double; killed on drop.
pub struct Double {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The request log (one JSON line per request).
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Double {
    /// Starts `llama_server.py` with `args`.
    pub fn llama_server(args: &[&str]) -> Double {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("requests.jsonl");
        let mut child = Command::new("python3")
            .arg(doubles_dir().join("llama_server.py"))
            .args(["--port", "0", "--log"])
            .arg(&log)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the llama-server double");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the port");
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("`listening on` line");
        Double {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("log line"))
            .collect()
    }

    /// Sends SIGTERM (the llama-server double then stops listening but keeps its connections).
    pub fn terminate(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -TERM {}", self.child.id());
    }

    /// Kills the server (a dead server for the tests).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Double {
    fn drop(&mut self) {
        self.kill();
    }
}
