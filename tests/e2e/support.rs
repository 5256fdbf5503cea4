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
