//! Process measurement shared by the bench binaries: warm page cache, wall time and peak RSS
//! of a child (`wait4`), medians.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// Reads the file once so every program starts from a warm page cache.
pub fn warm(p: &Path) {
    use std::io::Read;
    let mut f = std::fs::File::open(p).expect("open trace");
    let mut buf = vec![0u8; 1 << 20];
    while f.read(&mut buf).expect("read") > 0 {}
}

/// Runs a command; returns (wall seconds, peak RSS KiB, stdout). The child is reaped with
/// `wait4` (for its rusage), not `Child::wait`.
#[allow(clippy::zombie_processes)]
pub fn run_measured(cmd: &mut Command) -> (f64, i64, String) {
    use std::io::Read;
    let start = Instant::now();
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read stdout");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(r, pid, "wait4");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "command failed: {cmd:?}"
    );
    (secs, ru.ru_maxrss, out)
}

/// Median time, largest RSS.
pub fn median(v: &[(f64, i64)]) -> (f64, i64) {
    let mut t: Vec<f64> = v.iter().map(|x| x.0).collect();
    t.sort_by(|a, b| a.total_cmp(b));
    let rss = v.iter().map(|x| x.1).max().unwrap_or(0);
    (t[t.len() / 2], rss)
}
