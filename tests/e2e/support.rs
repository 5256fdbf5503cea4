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
