//! Processes: signals, the process table from `/proc` (trees, `pgrep -f`), the check that
//! nothing was left running, and [`EpiRun`] (`epi` in the background, killed on drop). A check
//! that finds a process left running fails the test, naming it.

use crate::support::{epi_bin, wait_for};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Sends `sig` to `pid` (no error when it is already gone).
pub(crate) fn signal_pid(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a pid this test started (or found as a child of one) and a valid signal.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// `(pid, parent pid, command name)` of every process, from `/proc/*/stat`.
pub(crate) fn processes() -> Vec<(u32, u32, String)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        if let Some(ppid) = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|x| x.parse().ok())
        {
            out.push((pid, ppid, comm));
        }
    }
    out
}

/// A process and all its descendants.
pub(crate) fn process_tree(root: u32) -> Vec<(u32, String)> {
    let all = processes();
    let mut tree: Vec<(u32, String)> = all
        .iter()
        .filter(|(p, _, _)| *p == root)
        .map(|(p, _, c)| (*p, c.clone()))
        .collect();
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i].0;
        tree.extend(
            all.iter()
                .filter(|(_, pp, _)| *pp == parent)
                .map(|(p, _, c)| (*p, c.clone())),
        );
        i += 1;
    }
    tree
}

/// The processes whose command line contains `needle` (`pgrep -f`), this test process excluded.
pub(crate) fn pgrep(needle: &str) -> Vec<String> {
    let me = std::process::id();
    let mut found = Vec::new();
    for (pid, _, _) in processes() {
        if pid == me {
            continue;
        }
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) {
            found.push(format!("{pid}: {cmd}"));
        }
    }
    found
}

/// Waits (at most 30 s) until no process's command line contains `needle`: nothing was left
/// running on the "remote" side.
pub(crate) fn assert_none_left(needle: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = pgrep(needle);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} still running 30 s after the fault: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `epi` running in the background (stdout and stderr to files in its directory, so a long run
/// never blocks on a full pipe); killed on drop, so a failing test leaves nothing running.
pub(crate) struct EpiRun {
    child: Option<Child>,
    dir: PathBuf,
}

/// Starts `epi` with `args` in `dir`.
pub(crate) fn spawn_epi(dir: &Path, args: &[String]) -> EpiRun {
    let child = Command::new(epi_bin())
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env("XDG_CONFIG_HOME", dir.join(".no-user-config"))
        .stdout(std::fs::File::create(dir.join("epi.out")).unwrap())
        .stderr(std::fs::File::create(dir.join("epi.err")).unwrap())
        .spawn()
        .expect("run epi");
    EpiRun {
        child: Some(child),
        dir: dir.to_path_buf(),
    }
}

impl EpiRun {
    pub(crate) fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("epi was started")
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    pub(crate) fn printed(&self) -> (String, String) {
        (
            std::fs::read_to_string(self.dir.join("epi.out")).unwrap_or_default(),
            std::fs::read_to_string(self.dir.join("epi.err")).unwrap_or_default(),
        )
    }

    /// Like `wait_for`, but fails at once, with what `epi` printed, when it has exited.
    pub(crate) fn wait_running<T>(
        &mut self,
        what: &str,
        secs: u64,
        mut check: impl FnMut() -> Option<T>,
    ) -> T {
        wait_for(what, secs, || {
            if let Some(v) = check() {
                return Some(v);
            }
            if let Ok(Some(status)) = self.child().try_wait() {
                let (out, err) = self.printed();
                panic!("epi exited ({status}) while the test waited for {what}:\n{out}{err}");
            }
            None
        })
    }

    /// Waits (at most `secs`) for it to exit: its exit code and what it printed.
    pub(crate) fn finish(mut self, secs: u64) -> (Option<i32>, String, String) {
        let child = self.child();
        let status = wait_for("epi to exit", secs, || child.try_wait().expect("try_wait"));
        self.child = None;
        let (out, err) = self.printed();
        (status.code(), out, err)
    }
}

impl Drop for EpiRun {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Strings as an argument vector.
pub(crate) fn argv(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}
