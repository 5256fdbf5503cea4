//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `epi` binary under test.
pub fn epi_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_epi"))
}

/// Runs `epi` with `args` in `cwd`, with colour off and no user configuration.
pub fn epi(cwd: &Path, args: &[&str]) -> Output {
    Command::new(epi_bin())
        .args(args)
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .env("XDG_CONFIG_HOME", cwd.join(".no-user-config"))
        .output()
        .expect("run epi")
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `../shared` beside the repository, when present (local development only; CI tests must not
/// need it).
pub fn shared_dir() -> Option<PathBuf> {
    let p = repo_root().join("../shared");
    p.is_dir().then_some(p)
}

/// Whether a system tool is on PATH. When `EPI_REQUIRE_SYSTEM_TOOLS` is set (CI), a missing tool
/// is a failure, never a silent skip.
pub fn have_tool(name: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(name).is_file();
    if !found && std::env::var_os("EPI_REQUIRE_SYSTEM_TOOLS").is_some() {
        panic!(
            "{name} is required (EPI_REQUIRE_SYSTEM_TOOLS is set) but not installed: run .ci/setup"
        );
    }
    if !found {
        eprintln!("skipping: {name} not installed (run .ci/setup)");
    }
    found
}

/// stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Polls `check` every 20 ms until it gives `Some`, and returns that. Fails the test, naming `what`
/// it waited for, after `secs` seconds: the deadline is a bound on a hang, never an expected speed
/// (tests wait on observable events, so they pass on a busy machine as on an idle one).
pub fn wait_for<T>(what: &str, secs: u64, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "waited {secs} s for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The complete lines of a file (those ending in a newline; a line being written is not counted),
/// or none when the file does not exist yet.
pub fn complete_lines(path: &Path) -> Vec<String> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    let end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    String::from_utf8_lossy(&bytes[..end])
        .lines()
        .map(str::to_string)
        .collect()
}

/// Sends `signal` (`INT`, `TERM`, `KILL`) to a child process.
pub fn send_signal(child: &std::process::Child, signal: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -{signal} {} failed", child.id());
}

/// Waits for a child to exit (failing the test after `secs` seconds) and returns its output.
pub fn wait_output(mut child: std::process::Child, secs: u64) -> Output {
    wait_for("the process to exit", secs, || {
        child.try_wait().expect("try_wait").map(|_| ())
    });
    child.wait_with_output().expect("wait_with_output")
}

/// The test doubles of the backends crate.
pub fn doubles() -> PathBuf {
    repo_root().join("plugins/backends/tests/doubles")
}

/// The suites' bundled test data.
pub fn data_dir() -> String {
    repo_root()
        .join("plugins/suites/testdata")
        .display()
        .to_string()
}

/// python3 with numpy (the doubles' language); in CI its absence is a failure.
pub fn have_python() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import numpy"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("EPI_REQUIRE_SYSTEM_TOOLS").is_none(),
            "python3 with numpy is required (EPI_REQUIRE_SYSTEM_TOOLS is set): run .ci/setup"
        );
        eprintln!("skipping: python3 with numpy is not available");
    }
    ok
}

/// A port nothing listens on (at the moment of the call).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether something accepts connections on a loopback port.
pub fn listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().unwrap(),
        std::time::Duration::from_secs(1),
    )
    .is_ok()
}

/// Waits (at most 60 s) until nothing listens on `port`.
pub fn closed_soon(port: u16) -> bool {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < std::time::Duration::from_secs(60) {
        if !listening(port) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    false
}

/// The replaying llama-server double on a loopback port; killed on drop.
pub struct LlamaServer {
    child: std::process::Child,
    /// Its port.
    pub port: u16,
    log: PathBuf,
}

impl LlamaServer {
    /// Starts it with the default settings.
    pub fn start(dir: &Path) -> LlamaServer {
        LlamaServer::start_with(dir, &[])
    }

    /// Starts it with extra arguments (`--slots 4`, `--delay-ms 50`).
    pub fn start_with(dir: &Path, args: &[&str]) -> LlamaServer {
        use std::io::BufRead;
        let log = dir.join("llama-requests.jsonl");
        let mut child = Command::new("python3")
            .arg(doubles().join("llama_server.py"))
            .args(["--port", "0", "--log"])
            .arg(&log)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().rsplit(':').next().unwrap().parse().unwrap();
        LlamaServer { child, port, log }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The requests it logged.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The epi-meter board emulator (`tests/tools/epi_meter_emulator.py`) on a socat pty pair under
/// `dir/link`; stopped on drop.
pub struct Emulator {
    child: Option<std::process::Child>,
    /// The host side of the link: what epi opens.
    pub port: PathBuf,
}

impl Emulator {
    /// Starts it with `args` and returns once its pty pair exists.
    pub fn start(dir: &Path, args: &[&str]) -> Emulator {
        use std::io::BufRead;
        let mut child = Command::new("python3")
            .arg(repo_root().join("tests/tools/epi_meter_emulator.py"))
            .arg("--dir")
            .arg(dir.join("link"))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("start the emulator");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("emulator stdout"))
            .read_line(&mut line)
            .expect("emulator says READY");
        assert_eq!(line.trim(), "READY", "emulator did not start");
        Emulator {
            child: Some(child),
            port: dir.join("link/host"),
        }
    }

    /// Ends a `--until-signal` run (SIGUSR1): it writes its ground truth and exits.
    pub fn end_run(&mut self) {
        if let Some(c) = &self.child {
            send_signal(c, "USR1");
        }
    }

    /// Waits (at most `secs`) for it to exit.
    pub fn wait(&mut self, secs: u64) {
        if let Some(mut c) = self.child.take() {
            wait_for("the emulator to exit", secs, || {
                c.try_wait().expect("try_wait").map(|_| ())
            });
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
