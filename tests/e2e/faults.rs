//! Fault injection on loopback with real components (issue 12, "Faults"): each test runs `epi` as a
//! user does, injects one fault at a moment it chooses by watching an observable event (a record
//! on disk, a trace row, a phase in `run.log`), never after a sleep that assumes a speed, and then
//! checks four things: what was measured before the fault is on disk and readable (trace rows
//! through `TraceReader`, records through `read_jsonl_records` / `read_arrow_records`, database
//! rows), the message names the fault, the exit code is the documented one, and no process is
//! left running (remote ones included).
//!
//! The components are real wherever they can run here: the epi-meter board is written by the
//! test on a real pseudo-terminal pair from `socat` ([`Board`]: protocol v1 lines, unplugged by
//! killing socat, replugged by starting it again on the same path, stalled, fed garbage); the
//! llama-server double replays a real server's recordings and is frozen with SIGSTOP to hang it;
//! a fault-injecting HTTP proxy ([`FaultProxy`]) in front of it answers 500 or cuts replies the
//! way a crashing server or a cut network does; sshd is OpenSSH on 127.0.0.1 (killed with
//! SIGKILL, restarted with its own configuration); the distributed-llama double dies on the
//! request that kills dllama-api; the disk is a 256 KiB tmpfs filled by the test; the results
//! database is SQLite. The table of faults is `docs/reliability.md`.
//!
//! A test that needs a tool (socat, sshd, sqlite3, python3 with numpy, mount) skips when it is
//! missing, and fails instead when `EPI_REQUIRE_SYSTEM_TOOLS` is set (CI).

use crate::support::{
    closed_soon, complete_lines, data_dir, doubles, epi, epi_bin, free_port, have_python,
    have_tool, repo_root, stderr, stdout, wait_for,
};
use epi_framework::records::{read_arrow_records, read_jsonl_records, QueryRecord};
use epi_framework::testing::Sshd;
use epi_framework::trace::{summarize_window, TraceMeta, TraceReader};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// Sends `sig` to `pid` (no error when it is already gone).
fn signal_pid(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a pid this test started (or found as a child of one) and a valid signal.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// `(pid, parent pid, command name)` of every process, from `/proc/*/stat`.
fn processes() -> Vec<(u32, u32, String)> {
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
fn process_tree(root: u32) -> Vec<(u32, String)> {
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
fn pgrep(needle: &str) -> Vec<String> {
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
fn assert_none_left(needle: &str, what: &str) {
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
struct EpiRun {
    child: Option<Child>,
    dir: PathBuf,
}

/// Starts `epi` with `args` in `dir`.
fn spawn_epi(dir: &Path, args: &[String]) -> EpiRun {
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
    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("epi was started")
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    fn printed(&self) -> (String, String) {
        (
            std::fs::read_to_string(self.dir.join("epi.out")).unwrap_or_default(),
            std::fs::read_to_string(self.dir.join("epi.err")).unwrap_or_default(),
        )
    }

    /// Like `wait_for`, but fails at once, with what `epi` printed, when it has exited.
    fn wait_running<T>(
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
    fn finish(mut self, secs: u64) -> (Option<i32>, String, String) {
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
fn argv(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

/// Trace rows readable from the complete lines of `trace` (a row being written when the fault
/// struck may be cut; it is not counted): `(node, watts)` in file order.
fn readable_rows(trace: &Path, scratch: &Path) -> Vec<(u32, f64)> {
    let lines = complete_lines(trace);
    assert!(!lines.is_empty(), "{}: no header on disk", trace.display());
    std::fs::write(scratch, lines.join("\n") + "\n").unwrap();
    let mut r = TraceReader::open(scratch).unwrap_or_else(|e| panic!("{}: {e}", trace.display()));
    let mut rows = Vec::new();
    while let Some((_, row)) = r
        .next_row()
        .unwrap_or_else(|e| panic!("{}: {e}", trace.display()))
    {
        rows.push((row.node, row.watts));
    }
    rows
}

fn summary(run: &Path) -> Value {
    let text = std::fs::read_to_string(run.join("summary.json")).expect("summary.json on disk");
    serde_json::from_str(&text).expect("summary.json is JSON")
}

fn sidecar(trace: &Path) -> TraceMeta {
    TraceMeta::read_for(trace)
        .expect("the sidecar is readable")
        .expect("the sidecar exists")
}

fn records(run: &Path) -> Vec<QueryRecord> {
    read_jsonl_records(&run.join("records.jsonl")).expect("records.jsonl is readable")
}

fn arrow_rows(run: &Path) -> usize {
    read_arrow_records(&run.join("records.arrow"))
        .expect("records.arrow is readable")
        .iter()
        .map(|b| b.num_rows())
        .sum()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-300)
}

/// Σ per-query energy + between_queries = each repetition's energy = the trace's energy over its
/// window (1e-9 relative): the attribution still adds up after the fault.
fn check_additivity(run: &Path) {
    let s = summary(run);
    let recs = records(run);
    for r in s["repetitions"].as_array().expect("repetitions") {
        let n = r["repetition"].as_u64().unwrap() as u32;
        let e = &r["energy"];
        let total = e["total_j"].as_f64().expect("total_j");
        let between = e["between_queries_j"].as_f64().unwrap();
        let sum: f64 = recs
            .iter()
            .filter(|q| q.repetition == Some(n))
            .map(|q| q.energy_j.expect("energy_j"))
            .sum();
        assert!(
            rel(sum + between, total) < 1e-9,
            "repetition {n}: Σ queries {sum} + between {between} vs {total}"
        );
        let w = e["window_trace_ms"].as_array().unwrap();
        let window = (w[0].as_f64().unwrap(), w[1].as_f64().unwrap());
        let trace = summarize_window(&run.join("power_trace.csv"), window, 1000.0, 10).unwrap();
        assert!(
            rel(trace.total_joules(), total) < 1e-9,
            "repetition {n}: trace {} J vs attributed {total} J",
            trace.total_joules()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The epi-meter board on a real pseudo-terminal
// ---------------------------------------------------------------------------------------------

/// socat relaying `links/meter` (the board's side) to `links/host` (what epi opens), started as
/// the emulator starts it; `transferring` turns true once the host side is open.
struct Socat {
    child: Child,
    transferring: Arc<AtomicBool>,
}

impl Socat {
    fn start(links: &Path) -> Socat {
        let mut child = Command::new("socat")
            .arg("-d")
            .arg("-d")
            .arg(format!(
                "pty,raw,echo=0,link={}",
                links.join("meter").display()
            ))
            .arg(format!(
                "pty,raw,echo=0,link={},wait-slave,pty-interval=0.02",
                links.join("host").display()
            ))
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start socat");
        let transferring = Arc::new(AtomicBool::new(false));
        let err = child.stderr.take().expect("socat stderr");
        let flag = transferring.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if line.contains("starting data transfer loop") {
                    flag.store(true, Ordering::SeqCst);
                }
            }
        });
        wait_for("socat's pty links", 60, || {
            (links.join("meter").exists() && links.join("host").exists()).then_some(())
        });
        Socat {
            child,
            transferring,
        }
    }

    fn stop(mut self) {
        signal_pid(self.child.id(), libc::SIGTERM);
        let _ = wait_for("socat to exit", 30, || self.child.try_wait().ok().flatten());
    }
}

/// What the board does at each 100 ms tick of its clock.
#[derive(Debug, Clone, Copy, PartialEq)]
enum BoardMode {
    /// Sends a sample line.
    Sampling,
    /// Its USB link is gone: it keeps sampling, and those samples are lost.
    Unplugged,
    /// Its firmware hangs: the port stays open and nothing more comes.
    Stalled,
}

#[derive(Default)]
struct BoardState {
    mode: Option<BoardMode>,
    port: Option<std::fs::File>,
    seq: u32,
    wh: [f64; 4],
    /// The watts of each channel of every sample written, in order.
    delivered: Vec<[f64; 4]>,
    /// Samples taken and never written (unplugged, or not reopened yet).
    lost: u64,
    quit: bool,
}

/// The epi-meter board (UART protocol v1, `epi-meter-uart.md`), written by the test into a real
/// pty pair from socat: a hello line, then every 100 ms of its clock a sample of 4 channels (w,
/// v, a, pf, var, wh with the IC's counter), the lines the emulator writes. Its clock starts when
/// the host opens the link. The test unplugs it (socat killed: the device node vanishes; the
/// board keeps sampling and those samples are lost), replugs it (socat started again on the same
/// path), stalls it (the port stays open, nothing more comes) or sends garbage.
struct Board {
    links: PathBuf,
    state: Arc<Mutex<BoardState>>,
    socat: Arc<Mutex<Option<Socat>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const BOARD_PERIOD_MS: u64 = 100;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Board {
    fn start(dir: &Path) -> Board {
        let links = dir.join("link");
        std::fs::create_dir_all(&links).unwrap();
        let socat = Arc::new(Mutex::new(Some(Socat::start(&links))));
        let state = Arc::new(Mutex::new(BoardState {
            mode: Some(BoardMode::Sampling),
            wh: [0.35, 0.70, 1.05, 1.40],
            ..Default::default()
        }));
        let thread = {
            let (state, socat, meter) = (state.clone(), socat.clone(), links.join("meter"));
            std::thread::spawn(move || Board::run(&state, &socat, &meter))
        };
        Board {
            links,
            state,
            socat,
            thread: Some(thread),
        }
    }

    fn transferring(socat: &Mutex<Option<Socat>>) -> bool {
        lock(socat)
            .as_ref()
            .is_some_and(|s| s.transferring.load(Ordering::SeqCst))
    }

    fn run(state: &Mutex<BoardState>, socat: &Mutex<Option<Socat>>, meter: &Path) {
        // The clock starts when the host opens its side.
        loop {
            if lock(state).quit {
                return;
            }
            if Board::transferring(socat) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let start = Instant::now();
        let mut first = true;
        for k in 0u64.. {
            let due = start + Duration::from_millis(k * BOARD_PERIOD_MS);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let mut s = lock(state);
            if s.quit {
                return;
            }
            let watts: [f64; 4] = std::array::from_fn(|c| {
                let base = [12.5, 11.9, 30.2, 8.7][c];
                (base * (1.0 + 0.3 * ((k as f64) / (7.0 + c as f64)).sin()) * 100.0).round() / 100.0
            });
            for (wh, w) in s.wh.iter_mut().zip(watts) {
                *wh += w * BOARD_PERIOD_MS as f64 / 3.6e6;
            }
            let t_ms = 1000 + k * BOARD_PERIOD_MS;
            let seq = s.seq;
            s.seq = s.seq.wrapping_add(1);
            match s.mode {
                Some(BoardMode::Sampling) => {}
                Some(BoardMode::Unplugged) => {
                    s.lost += 1;
                    continue;
                }
                _ => continue,
            }
            if s.port.is_none() && Board::transferring(socat) {
                s.port = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NOCTTY)
                    .open(meter)
                    .ok();
            }
            let ch: Vec<String> = (0..4)
                .map(|c| {
                    let (w, v, pf) = (watts[c], 121.3, 0.99 - 0.01 * c as f64);
                    format!(
                        "{{\"node\":{c},\"w\":{w:.2},\"v\":{v:.2},\"a\":{:.4},\"pf\":{pf:.4},\"var\":{:.2},\"wh\":{:.6}}}",
                        w / (v * pf),
                        w * 0.07,
                        s.wh[c]
                    )
                })
                .collect();
            let mut text = String::new();
            if first {
                text.push_str("{\"type\":\"hello\",\"fw\":\"0.1.0\",\"board\":\"epi-meter v1.0\",\"channels\":4,\"rate_hz\":10,\"ic\":\"ATM90E26\"}\n");
            }
            text.push_str(&format!(
                "{{\"type\":\"sample\",\"seq\":{seq},\"t_ms\":{t_ms},\"ch\":[{}]}}\n",
                ch.join(",")
            ));
            let written = match s.port.as_mut() {
                Some(p) => p.write_all(text.as_bytes()).is_ok(),
                None => false,
            };
            if written {
                first = false;
                s.delivered.push(watts);
            } else {
                // Not open again yet after a replug, or gone (the host closed it at the end of a
                // run): the sample is lost.
                s.port = None;
                s.lost += 1;
            }
        }
    }

    /// The host side: what epi opens.
    fn port(&self) -> PathBuf {
        self.links.join("host")
    }

    /// Samples written so far.
    fn delivered(&self) -> usize {
        lock(&self.state).delivered.len()
    }

    /// The watts of every sample written so far.
    fn delivered_watts(&self) -> Vec<[f64; 4]> {
        lock(&self.state).delivered.clone()
    }

    /// Samples taken and never written (unplugged, or not reopened yet).
    fn lost(&self) -> u64 {
        lock(&self.state).lost
    }

    /// Unplugs the USB link. The board stops writing (what it samples from now on is lost),
    /// `host_read(n)` waits until the host has read the `n` samples written so far (the test
    /// watches the trace), then socat is killed and the device node vanishes.
    fn unplug(&self, host_read: impl FnOnce(usize)) {
        let written = {
            let mut s = lock(&self.state);
            s.mode = Some(BoardMode::Unplugged);
            s.delivered.len()
        };
        host_read(written);
        lock(&self.state).port = None;
        if let Some(socat) = lock(&self.socat).take() {
            socat.stop();
        }
        let host = self.port();
        wait_for("the device node to vanish", 30, || {
            (!host.exists()).then_some(())
        });
    }

    /// Plugs it back: socat again on the same path; the board writes once the host reopened it.
    fn replug(&self) {
        let socat = Socat::start(&self.links);
        *lock(&self.socat) = Some(socat);
        lock(&self.state).mode = Some(BoardMode::Sampling);
    }

    /// The firmware hangs: nothing more is written, the port stays open.
    fn stall(&self) {
        lock(&self.state).mode = Some(BoardMode::Stalled);
    }

    /// Writes `lines` lines of random bytes (some not UTF-8) and one line longer than the
    /// source's 64 KiB limit, between two samples; returns how many bad lines that is.
    fn garbage(&self, lines: usize) -> u64 {
        let mut s = lock(&self.state);
        let port = s.port.as_mut().expect("the board is connected");
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut burst = Vec::new();
        for _ in 0..lines {
            for _ in 0..40 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let b = (x >> 24) as u8;
                burst.push(if b == b'\n' { b'?' } else { b });
            }
            burst.extend_from_slice(b"\xff\xfe garbage\n");
        }
        burst.extend(std::iter::repeat_n(b'#', 100 * 1024));
        burst.push(b'\n');
        port.write_all(&burst).expect("write the garbage");
        lines as u64 + 1
    }
}

impl Drop for Board {
    fn drop(&mut self) {
        lock(&self.state).quit = true;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(s) = lock(&self.socat).take() {
            s.stop();
        }
    }
}

/// Whether the meter tests can run (socat and the Python doubles).
fn meter_ready() -> bool {
    have_tool("socat") && have_python()
}

// ---------------------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------------------

/// The replaying llama-server double (`plugins/backends/tests/doubles/llama_server.py`) on a
/// loopback port. `freeze` (SIGSTOP) hangs it the way a deadlocked server hangs: the kernel still
/// accepts connections, nothing answers. Killed on drop.
struct Double {
    child: Child,
    port: u16,
}

impl Double {
    fn start(dir: &Path, args: &[&str]) -> Double {
        let mut child = Command::new("python3")
            .arg(doubles().join("llama_server.py"))
            .args(["--port", "0", "--log"])
            .arg(dir.join("llama-requests.jsonl"))
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the llama-server double");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the double says where it listens");
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the double printed `{line}`"));
        Double { child, port }
    }

    fn freeze(&self) {
        signal_pid(self.child.id(), libc::SIGSTOP);
    }

    fn thaw(&self) {
        signal_pid(self.child.id(), libc::SIGCONT);
    }
}

impl Drop for Double {
    fn drop(&mut self) {
        self.thaw();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What [`FaultProxy`] does with a request.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// Forwards the request to the double and its reply back.
    Pass,
    /// Holds the request until [`FaultProxy::release`], then forwards it: the run waits,
    /// mid-query, while the test injects another fault.
    Hold,
    /// Answers llama-server's recorded HTTP 500 (`completion_context_exceeded.http`, byte for
    /// byte: `{"error":{"code":500,"message":"Context size has been exceeded.",...}}`).
    Http500,
    /// Forwards the request, then sends the reply's head and the first half of its body and
    /// closes the connection: a server that crashes, or a network cut, mid-reply.
    CutReply,
}

#[derive(Default)]
struct ProxyState {
    /// The fault, and the records file whose first record arms it.
    armed: Option<(Fault, PathBuf)>,
    released: bool,
    held: usize,
    faulted: usize,
    forwarded: usize,
}

/// An HTTP proxy in front of the llama-server double that injects a [`Fault`] into every request
/// that arrives once the run's first record is on disk (`arm`): the requests of the items after
/// the first, whatever the speed of the machine (with one query at a time, the next item starts
/// after the record of the last is written). Requests and replies pass byte for byte, except
/// that each exchange gets its own connection (`Connection: close` both ways), so the fault
/// reaches the next request whatever connection pooling the client does.
struct FaultProxy {
    port: u16,
    state: Arc<Mutex<ProxyState>>,
}

/// `head` (a request or reply head, up to the blank line) without its `Connection` and
/// `Keep-Alive` headers and with `Connection: close`.
fn closing_head(head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut out = String::new();
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        let name = line
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if name != "connection" && name != "keep-alive" {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One request from `conn` (head, body), or none when the client closed.
fn read_http_request(conn: &mut TcpStream) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let end = loop {
        if let Some(p) = find(&buf, b"\r\n\r\n") {
            break p;
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = buf[..end + 4].to_vec();
    let length = String::from_utf8_lossy(&head)
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = buf[end + 4..].to_vec();
    while body.len() < length {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    Some((head, body))
}

impl FaultProxy {
    fn start(upstream: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let recorded_500 =
            std::fs::read(repo_root().join(
                "plugins/backends/tests/fixtures/llama-server/completion_context_exceeded.http",
            ))
            .expect("the recorded HTTP 500");
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (st, r500) = (st.clone(), recorded_500.clone());
                std::thread::spawn(move || FaultProxy::exchange(conn, upstream, &st, &r500));
            }
        });
        FaultProxy { port, state }
    }

    fn exchange(mut conn: TcpStream, upstream: u16, st: &Mutex<ProxyState>, r500: &[u8]) {
        let Some((head, body)) = read_http_request(&mut conn) else {
            return;
        };
        let fault = match &lock(st).armed {
            Some((f, records)) if !complete_lines(records).is_empty() => *f,
            _ => Fault::Pass,
        };
        match fault {
            Fault::Pass => {}
            Fault::Hold => {
                lock(st).held += 1;
                while !lock(st).released {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            Fault::Http500 | Fault::CutReply => lock(st).faulted += 1,
        }
        if fault == Fault::Http500 {
            let _ = conn.write_all(r500);
            return;
        }
        let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)) else {
            return;
        };
        lock(st).forwarded += 1;
        let mut req = closing_head(&head);
        req.extend_from_slice(&body);
        if up.write_all(&req).is_err() {
            return;
        }
        let mut reply = Vec::new();
        let _ = up.read_to_end(&mut reply);
        let Some(end) = find(&reply, b"\r\n\r\n") else {
            return;
        };
        let mut out = closing_head(&reply[..end + 4]);
        let body = &reply[end + 4..];
        if fault == Fault::CutReply {
            out.extend_from_slice(&body[..body.len() / 2]);
        } else {
            out.extend_from_slice(body);
        }
        let _ = conn.write_all(&out);
        let _ = conn.shutdown(std::net::Shutdown::Both);
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `fault` for every request that arrives once `run`'s first record is on disk.
    fn arm(&self, fault: Fault, run: &Path) {
        lock(&self.state).armed = Some((fault, run.join("records.jsonl")));
    }

    /// Waits until a request is held: the run is mid-query, waiting for the test.
    fn wait_held(&self) {
        wait_for("a request held mid-run", 180, || {
            (lock(&self.state).held > 0).then_some(())
        });
    }

    /// Lets held requests (and all later ones) through.
    fn release(&self) {
        let mut s = lock(&self.state);
        s.released = true;
        s.armed = None;
    }

    /// Requests that got the fault.
    fn faulted(&self) -> usize {
        lock(&self.state).faulted
    }

    /// Requests forwarded to the server.
    fn forwarded(&self) -> usize {
        lock(&self.state).forwarded
    }
}

// ---------------------------------------------------------------------------------------------
// The meter, mid-run
// ---------------------------------------------------------------------------------------------

/// `epi profile` with the board and the double: one MMLU subject, 4 items, log-likelihood
/// through top-N, no warm-up, no idle baseline unless `extra` asks, one repetition; the source
/// reconnects at most 200 ms apart.
fn profile_args(board: &Board, url: &str, run: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = argv(&[
        "profile",
        "--power",
        "epi-meter",
        "--port",
        board.port().to_str().unwrap(),
        "-P",
        "reconnect_max_ms=200",
        "--backend",
        "openai",
        "--url",
        url,
        "--suite",
        "mmlu",
        "-S",
        "mmlu.subjects=[\"abstract_algebra\"]",
        "--num-fewshot",
        "2",
        "--limit",
        "4",
        "--data-dir",
        &data_dir(),
        "-O",
        "top_n=20",
        "--warmup",
        "0",
        "--repetitions",
        "1",
        "--output",
        run.to_str().unwrap(),
    ]);
    if !extra.contains(&"--idle") {
        a.extend(argv(&["--idle", "0"]));
    }
    a.extend(argv(extra));
    a
}

fn wait_first_record(run: &Path) {
    wait_for("the first measured record", 180, || {
        (!complete_lines(&run.join("records.jsonl")).is_empty()).then_some(())
    });
}

/// Waits until the trace holds at least `samples` samples of the board's 4 channels.
fn wait_rows(trace: &Path, samples: usize) {
    wait_for(&format!("{samples} samples in the trace"), 60, || {
        (complete_lines(trace).len() > samples * 4).then_some(())
    });
}

#[test]
fn meter_unplugged_replugged_and_fed_garbage_mid_profile_is_survived_and_recorded() {
    if !meter_ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let board = Board::start(d);
    let server = Double::start(d, &[]);
    let proxy = FaultProxy::start(server.port);
    let run = d.join("run");
    let trace = run.join("power_trace.csv");
    // Mid-run: once the measured part has written a record, the next query is held, and the
    // run waits while the meter goes away and comes back.
    proxy.arm(Fault::Hold, &run);
    // An outage shorter than the silence a run tolerates (--first-sample-timeout) is survived.
    let child = spawn_epi(
        d,
        &profile_args(
            &board,
            &proxy.url(),
            &run,
            &["--first-sample-timeout", "60"],
        ),
    );
    proxy.wait_held();
    board.unplug(|written| wait_rows(&trace, written));
    wait_for("1.5 s of samples taken while unplugged", 60, || {
        (board.lost() >= 15).then_some(())
    });
    board.replug();
    let back = board.delivered();
    wait_for("samples after the replug", 60, || {
        (board.delivered() >= back + 5).then_some(())
    });
    let bad = board.garbage(200);
    let after = board.delivered();
    wait_for("samples after the garbage", 60, || {
        (board.delivered() >= after + 5).then_some(())
    });
    let seen = board.delivered();
    wait_rows(&trace, seen);
    proxy.release();
    let (code, out, err) = child.finish(180);
    assert_eq!(code, Some(0), "{out}{err}");

    // The run completed; the gap is in its numbers, flagged, and the attribution adds up.
    let s = summary(&run);
    assert_eq!(s["status"], "complete", "{s}");
    let coverage = s["repetitions"][0]["energy"]["coverage"].as_f64().unwrap();
    assert!(
        coverage < 1.0 - 1e-6,
        "coverage {coverage} with an unplugged stretch"
    );
    let epi_json: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("epi.json")).unwrap()).unwrap();
    assert!(
        epi_json["energy"]["gap_count"].as_u64().unwrap() >= 1,
        "{}",
        epi_json["energy"]
    );
    assert!(
        epi_json["energy"]["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "gaps"),
        "{}",
        epi_json["energy"]
    );
    check_additivity(&run);

    // Every sample the host read is the board's, in order, the garbage skipped; the stream's
    // health says what happened, exactly.
    let rows = readable_rows(&trace, &d.join("complete.csv"));
    let delivered = board.delivered_watts();
    assert!(rows.len() >= seen * 4 && rows.len() <= delivered.len() * 4);
    for (i, (node, w)) in rows.iter().enumerate() {
        assert_eq!(
            (*node, *w),
            ((i % 4) as u32, delivered[i / 4][i % 4]),
            "row {i}"
        );
    }
    let meta = sidecar(&trace);
    assert_eq!(meta.stats.reconnects, 1, "{:?}", meta.stats);
    assert_eq!(meta.stats.lost_samples, board.lost(), "{:?}", meta.stats);
    assert_eq!(meta.stats.bad_lines, bad, "{:?}", meta.stats);
    assert!(meta.stats.disconnected_ms > 0.0);
    let kinds: Vec<&str> = meta.events.iter().map(|e| e.kind.as_str()).collect();
    for k in ["disconnected", "reconnected", "bad-line", "lost-samples"] {
        assert!(kinds.contains(&k), "event {k}: {kinds:?}");
    }
    // The message names the faults survived.
    assert!(
        err.contains("disconnected 1 time") && err.contains("201 bad lines"),
        "{err}"
    );
}

#[test]
fn a_stalled_meter_stops_the_profile_run_and_names_the_stall() {
    if !meter_ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let board = Board::start(d);
    let server = Double::start(d, &[]);
    let proxy = FaultProxy::start(server.port);
    let run = d.join("run");
    let trace = run.join("power_trace.csv");
    proxy.arm(Fault::Hold, &run);
    // The source may stay silent 3 s (the time it has for its first samples, and at any moment).
    let child = spawn_epi(
        d,
        &profile_args(&board, &proxy.url(), &run, &["--first-sample-timeout", "3"]),
    );
    proxy.wait_held();
    board.stall();
    let written = board.delivered();
    wait_rows(&trace, written);
    proxy.release();
    let (code, out, err) = child.finish(180);
    assert_eq!(code, Some(4), "{out}{err}");
    assert!(
        err.contains("power source lost: epi-meter: no samples for"),
        "{err}"
    );
    let s = summary(&run);
    assert_eq!(s["status"], "failed");
    assert!(
        !run.join("epi.json").exists(),
        "no EPI from a stalled meter"
    );
    // What was measured before the stall is on disk and readable.
    let rows = readable_rows(&trace, &d.join("complete.csv"));
    assert_eq!(rows.len(), written * 4);
    let recs = records(&run);
    assert!(!recs.is_empty());
    assert_eq!(arrow_rows(&run), recs.len());
    assert_eq!(sidecar(&trace).extra["complete"], false);
}

// ---------------------------------------------------------------------------------------------
// The server, mid-run
// ---------------------------------------------------------------------------------------------

/// `epi eval` through `url`: one MMLU subject, 3 items, top-N log-likelihood, quick retries.
fn eval_args(url: &str, run: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = argv(&[
        "eval",
        "--backend",
        "openai",
        "--url",
        url,
        "--suite",
        "mmlu",
        "-S",
        "mmlu.subjects=[\"abstract_algebra\"]",
        "--num-fewshot",
        "2",
        "--limit",
        "3",
        "--data-dir",
        &data_dir(),
        "-O",
        "top_n=20",
        "-O",
        "retry_backoff_s=0.05",
        "--output",
        run.to_str().unwrap(),
    ]);
    a.extend(argv(extra));
    a
}

/// The records after a server fault: the first is answered, at least one failed naming
/// `fault`, all are readable in both files; the run is incomplete, exits 4 and says why.
fn check_server_fault(d: &Path, run: &Path, code: Option<i32>, err: &str, fault: &str) {
    assert_eq!(code, Some(4), "{err}");
    let recs = records(run);
    assert_eq!(recs.len(), 3, "every item is recorded, failed or not");
    assert_eq!(arrow_rows(run), 3);
    assert!(recs[0].error.is_none(), "{:?}", recs[0].error);
    assert!(recs[0].prediction.is_some());
    let failed: Vec<&str> = recs.iter().filter_map(|r| r.error.as_deref()).collect();
    assert!(
        !failed.is_empty() && failed.iter().all(|e| e.contains(fault)),
        "{failed:?}"
    );
    let s = summary(run);
    assert_eq!(s["status"], "incomplete");
    assert!(!run.join("benchmark.json").exists());
    assert!(
        err.contains(&format!("{} quer", failed.len())) && err.contains(fault),
        "the message names the fault: {err}"
    );
    let _ = d;
}

#[test]
fn a_server_answering_500_mid_run_fails_those_queries_and_keeps_the_rest() {
    if !have_python() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let server = Double::start(d, &[]);
    let proxy = FaultProxy::start(server.port);
    let run = d.join("run");
    proxy.arm(Fault::Http500, &run);
    let child = spawn_epi(d, &eval_args(&proxy.url(), &run, &[]));
    let (code, _, err) = child.finish(180);
    assert!(proxy.faulted() >= 3, "one attempt and two retries at least");
    check_server_fault(
        d,
        &run,
        code,
        &err,
        "HTTP 500: Context size has been exceeded.",
    );
}

#[test]
fn a_server_closing_mid_reply_fails_those_queries_and_keeps_the_rest() {
    if !have_python() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let server = Double::start(d, &[]);
    let proxy = FaultProxy::start(server.port);
    let run = d.join("run");
    proxy.arm(Fault::CutReply, &run);
    let child = spawn_epi(d, &eval_args(&proxy.url(), &run, &[]));
    let (code, _, err) = child.finish(180);
    assert!(proxy.faulted() >= 3);
    check_server_fault(d, &run, code, &err, "error decoding response body");
}

#[test]
fn a_hanging_server_times_out_those_queries_and_keeps_the_rest() {
    if !have_python() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let server = Double::start(d, &[]);
    let proxy = FaultProxy::start(server.port);
    let run = d.join("run");
    proxy.arm(Fault::Hold, &run);
    let child = spawn_epi(
        d,
        &eval_args(
            &proxy.url(),
            &run,
            &["-O", "timeout_s=2", "-O", "retries=0"],
        ),
    );
    // The query held after the first record goes to a server that no longer answers.
    proxy.wait_held();
    server.freeze();
    proxy.release();
    let (code, _, err) = child.finish(180);
    check_server_fault(d, &run, code, &err, "timed out");
}

// ---------------------------------------------------------------------------------------------
// A full disk
// ---------------------------------------------------------------------------------------------

/// A 256 KiB tmpfs mounted for the test (as root; CI runs as root), unmounted on drop.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    /// `None` (the test skips, saying why) when mounting is not permitted here, unless
    /// `EPI_REQUIRE_SYSTEM_TOOLS` is set: then the test fails.
    fn mount(dir: &Path) -> Option<SmallDisk> {
        let path = dir.join("disk");
        std::fs::create_dir_all(&path).unwrap();
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
            .arg(&path)
            .output();
        match o {
            Ok(o) if o.status.success() => Some(SmallDisk { path }),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                    Err(e) => e.to_string(),
                };
                assert!(
                    std::env::var_os("EPI_REQUIRE_SYSTEM_TOOLS").is_none(),
                    "mounting a 256 KiB tmpfs failed (EPI_REQUIRE_SYSTEM_TOOLS is set; the disk-full tests need root): {why}"
                );
                eprintln!("skipping: cannot mount a tmpfs here (needs root): {why}");
                None
            }
        }
    }

    /// Fills what is left with one file, until the file system says it is full.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.path.join("filler")).expect("create the filler");
        let block = vec![0u8; 4096];
        loop {
            match f.write_all(&block).and_then(|_| f.sync_all()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
    }

    /// Files a failed atomic write would leave behind (`.NAME.tmpPID`).
    fn stray_temporaries(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut dirs = vec![self.path.clone()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if e.path().is_dir() {
                    dirs.push(e.path());
                } else if name.starts_with('.') && name.contains(".tmp") {
                    out.push(e.path().display().to_string());
                }
            }
        }
        out
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[test]
fn a_full_disk_stops_a_monitor_recording_naming_it_and_keeps_the_rows() {
    if !meter_ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let board = Board::start(d);
    let Some(disk) = SmallDisk::mount(d) else {
        return;
    };
    let rec = disk.path.join("trace.csv");
    let child = spawn_epi(
        d,
        &argv(&[
            "monitor",
            "--power",
            "epi-meter",
            "--port",
            board.port().to_str().unwrap(),
            "--record",
            rec.to_str().unwrap(),
            "--duration",
            "300",
        ]),
    );
    wait_rows(&rec, 10);
    let before = complete_lines(&rec).len() - 1;
    disk.fill();
    let (code, out, err) = child.finish(120);
    assert_eq!(code, Some(4), "{out}{err}");
    assert!(
        err.contains("No space left on device") && err.contains(rec.to_str().unwrap()),
        "{err}"
    );
    let rows = readable_rows(&rec, &d.join("complete.csv"));
    assert!(
        rows.len() >= before,
        "{} rows, {before} before the disk filled",
        rows.len()
    );
    let delivered = board.delivered_watts();
    for (i, (node, w)) in rows.iter().enumerate() {
        assert_eq!(
            (*node, *w),
            ((i % 4) as u32, delivered[i / 4][i % 4]),
            "row {i}"
        );
    }
    assert_eq!(sidecar(&rec).extra["complete"], false);
    assert_eq!(disk.stray_temporaries(), Vec::<String>::new());
}

#[test]
fn a_full_disk_stops_a_profile_run_at_once_naming_it() {
    if !meter_ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let board = Board::start(d);
    let server = Double::start(d, &[]);
    let proxy = FaultProxy::start(server.port);
    let Some(disk) = SmallDisk::mount(d) else {
        return;
    };
    let run = disk.path.join("run");
    let trace = run.join("power_trace.csv");
    // A long idle baseline: the disk fills during it.
    let mut child = spawn_epi(
        d,
        &profile_args(&board, &proxy.url(), &run, &["--idle", "120"]),
    );
    child.wait_running("the idle phase", 180, || {
        std::fs::read_to_string(run.join("run.log"))
            .ok()
            .filter(|l| l.contains("phase idle"))
            .map(|_| ())
    });
    let sent = proxy.forwarded();
    disk.fill();
    let (code, out, err) = child.finish(120);
    assert_eq!(code, Some(4), "{out}{err}");
    assert!(
        err.contains("No space left on device") && err.contains("power_trace.csv"),
        "{err}"
    );
    assert_eq!(
        proxy.forwarded(),
        sent,
        "the run stopped when the trace could not be written; no query was measured after"
    );
    // What was measured before is readable.
    assert!(!readable_rows(&trace, &d.join("complete.csv")).is_empty());
    assert!(records(&run).is_empty());
    assert_ne!(summary(&run)["status"], "complete");
    assert_eq!(sidecar(&trace).extra["complete"], false);
    assert_eq!(disk.stray_temporaries(), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// The Orchestrator's sshd
// ---------------------------------------------------------------------------------------------

const ORCH_SCHEMA: &str = "CREATE TABLE epi_power_traces (
  id INTEGER PRIMARY KEY, ts_utc_ms INTEGER NOT NULL, meter_t_ms INTEGER, seq INTEGER,
  node_id INTEGER NOT NULL, watts_rms REAL NOT NULL, volts_rms REAL, amps_rms REAL,
  power_factor REAL, wh REAL);
CREATE INDEX epi_power_traces_ts ON epi_power_traces(ts_utc_ms);";

/// The watts a logged row carries: its sample's `seq`, readable back from the trace.
fn seq_watts(seq: i64, node: i64) -> f64 {
    10.0 + node as f64 + seq as f64 * 0.001
}

fn insert_sample(db: &rusqlite::Connection, seq: i64, ts: i64) {
    for node in 0..2i64 {
        db.execute(
            "INSERT INTO epi_power_traces (ts_utc_ms, meter_t_ms, seq, node_id, watts_rms, volts_rms, amps_rms, power_factor, wh)
             VALUES (?1, ?2, ?3, ?4, ?5, 121.0, 0.1, 0.99, ?6)",
            rusqlite::params![ts, seq * 100, seq, node, seq_watts(seq, node), seq as f64 / 36_000.0],
        )
        .unwrap();
    }
}

/// A real sshd on loopback and the Orchestrator's database (WAL) in `dir`, with the
/// `[orchestrator]` settings in `dir/epi-bench.toml`.
struct Orchestrator {
    sshd: Sshd,
    db: PathBuf,
}

impl Orchestrator {
    fn start(dir: &Path, settings: &str) -> Option<Orchestrator> {
        if !have_tool("sshd") || !have_tool("ssh-keygen") || !have_tool("sqlite3") {
            return None;
        }
        let sshd = Sshd::start().expect("start sshd");
        let db = dir.join("telemetry.db");
        let c = rusqlite::Connection::open(&db).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.execute_batch(ORCH_SCHEMA).unwrap();
        std::fs::write(
            dir.join("epi-bench.toml"),
            format!(
                "[orchestrator]\ndb_path = {:?}\npower_table = \"epi_power_traces\"\n{settings}",
                db.to_str().unwrap()
            ),
        )
        .unwrap();
        Some(Orchestrator { sshd, db })
    }

    fn ssh_flags(&self) -> Vec<String> {
        argv(&[
            "--host",
            self.sshd.host(),
            "--user",
            self.sshd.user(),
            "--ssh-port",
            &self.sshd.port().to_string(),
            "--identity",
            self.sshd.user_key().to_str().unwrap(),
            "--known-hosts",
            self.sshd.known_hosts().to_str().unwrap(),
        ])
    }

    /// SIGKILL to every sshd process of this server: the listener and each connection's
    /// session process. The commands they started are left to what happens to them when their
    /// channel dies.
    fn kill_sshd(&self) {
        let config = self.sshd.dir().join("sshd_config");
        let listener: Vec<u32> = pgrep(config.to_str().unwrap())
            .iter()
            .filter_map(|l| l.split(':').next().and_then(|p| p.parse().ok()))
            .collect();
        assert!(!listener.is_empty(), "sshd is running");
        for root in listener {
            for (pid, comm) in process_tree(root) {
                if comm.starts_with("sshd") {
                    signal_pid(pid, libc::SIGKILL);
                }
            }
        }
        let port = self.sshd.port();
        wait_for("sshd to stop listening", 30, || {
            TcpStream::connect(("127.0.0.1", port))
                .is_err()
                .then_some(())
        });
    }

    /// sshd again, with its own configuration (same port, same host key): the machine is back.
    fn restart_sshd(&self) -> Child {
        let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("sshd");
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(self.sshd.dir().join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("restart sshd");
        let port = self.sshd.port();
        wait_for("sshd to listen again", 60, || {
            TcpStream::connect(("127.0.0.1", port))
                .is_ok()
                .then_some(())
        });
        child
    }
}

#[test]
fn sshd_killed_mid_pull_leaves_the_rows_pulled_marked_incomplete_and_no_remote_process() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // One row per query: slow enough to be cut.
    let Some(orch) = Orchestrator::start(d, "batch_rows = 1\n") else {
        return;
    };
    {
        let db = rusqlite::Connection::open(&orch.db).unwrap();
        db.execute_batch("BEGIN").unwrap();
        // 2026-05-15T10:00:00Z, 10 Hz, 60 s, 2 nodes.
        for seq in 0..600i64 {
            insert_sample(&db, seq, 1_778_839_200_000 + seq * 100);
        }
        db.execute_batch("COMMIT").unwrap();
    }
    let out_csv = d.join("pulled.csv");
    let mut args = argv(&["trace", "pull"]);
    args.extend(orch.ssh_flags());
    args.extend(argv(&[
        "--start",
        "2026-05-15T10:00:00Z",
        "--end",
        "2026-05-15T10:01:00Z",
        "--output",
        out_csv.to_str().unwrap(),
    ]));
    let child = spawn_epi(d, &args);
    wait_for("pulled rows on disk", 120, || {
        (complete_lines(&out_csv).len() >= 3).then_some(())
    });
    let before = complete_lines(&out_csv).len() - 1;
    orch.kill_sshd();
    let (code, out, err) = child.finish(120);
    assert_eq!(code, Some(4), "{out}{err}");
    assert!(err.contains("rows pulled before the failure"), "{err}");
    let rows = readable_rows(&out_csv, &d.join("complete.csv"));
    assert!(
        rows.len() >= before && rows.len() < 1200,
        "{} rows",
        rows.len()
    );
    for (i, (node, w)) in rows.iter().enumerate() {
        let (seq, n) = ((i / 2) as i64, (i % 2) as i64);
        assert_eq!((*node, *w), (n as u32, seq_watts(seq, n)), "row {i}");
    }
    let meta = sidecar(&out_csv);
    assert_eq!(
        meta.extra["complete"], false,
        "a failed pull is not complete"
    );
    assert_eq!(meta.extra["rows"], rows.len() as u64);
    assert_none_left(orch.db.to_str().unwrap(), "remote sqlite3");
}

/// Starts a writer logging the meter at 10 Hz (2 nodes) into the Orchestrator's database until
/// `stop`; returns the last `seq` written.
fn orchestrator_writer(
    db: &Path,
    stop: Arc<AtomicBool>,
    written: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<()> {
    let db = db.to_path_buf();
    std::thread::spawn(move || {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        let mut seq = 0i64;
        while !stop.load(Ordering::SeqCst) {
            let now = chrono::Utc::now().timestamp_millis();
            insert_sample(&c, seq, now);
            seq += 1;
            written.store(seq as usize, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

/// The `seq`s of a tailed recording's rows, checked to be whole samples (both nodes).
fn tailed_seqs(rows: &[(u32, f64)]) -> Vec<i64> {
    rows.chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| {
            let seq = ((c[0].1 - 10.0) / 0.001).round() as i64;
            assert_eq!(c[0], (0, seq_watts(seq, 0)));
            assert_eq!(c[1], (1, seq_watts(seq, 1)));
            seq
        })
        .collect()
}

fn monitor_host_args(orch: &Orchestrator, rec: &Path) -> Vec<String> {
    let mut args = argv(&["monitor"]);
    args.extend(orch.ssh_flags());
    args.extend(argv(&["--record", rec.to_str().unwrap()]));
    args
}

#[test]
fn sshd_killed_mid_tail_and_back_loses_no_row_and_leaves_no_remote_process() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let Some(orch) = Orchestrator::start(d, "poll_interval_ms = 100\n") else {
        return;
    };
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicUsize::new(0));
    let writer = orchestrator_writer(&orch.db, stop.clone(), written.clone());
    let rec = d.join("tail.csv");
    let mut child = spawn_epi(d, &monitor_host_args(&orch, &rec));
    child.wait_running("20 tailed rows", 120, || {
        (complete_lines(&rec).len() > 20).then_some(())
    });
    orch.kill_sshd();
    // While it is down: no remote process is left, and the meter goes on being logged.
    assert_none_left(orch.db.to_str().unwrap(), "remote sqlite3");
    let at_kill = written.load(Ordering::SeqCst);
    wait_for("rows logged while sshd is down", 60, || {
        (written.load(Ordering::SeqCst) >= at_kill + 10).then_some(())
    });
    let mut sshd2 = orch.restart_sshd();
    let at_restart = written.load(Ordering::SeqCst);
    child.wait_running("the rows logged meanwhile in the recording", 120, || {
        let rows = complete_lines(&rec).len().saturating_sub(1);
        (rows / 2 >= at_restart).then_some(())
    });
    signal_pid(child.pid(), libc::SIGINT);
    let (code, out, err) = child.finish(60);
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    assert_eq!(code, Some(130), "{out}{err}");
    assert!(
        err.contains("disconnected") && err.contains("reconnected"),
        "the message names the fault: {err}"
    );
    // Every sample logged from the first one tailed is in the recording once, in order.
    let rows = readable_rows(&rec, &d.join("complete.csv"));
    let seqs = tailed_seqs(&rows);
    assert!(seqs.len() >= 20);
    for w in seqs.windows(2) {
        assert_eq!(
            w[1],
            w[0] + 1,
            "no sample lost or repeated across the reconnect"
        );
    }
    let meta = sidecar(&rec);
    assert_eq!(meta.stats.reconnects, 1, "{:?}", meta.stats);
    let kinds: Vec<&str> = meta.events.iter().map(|e| e.kind.as_str()).collect();
    assert!(
        kinds.contains(&"disconnected") && kinds.contains(&"reconnected"),
        "{kinds:?}"
    );
    signal_pid(sshd2.id(), libc::SIGTERM);
    let _ = sshd2.wait();
    assert_none_left(orch.db.to_str().unwrap(), "remote sqlite3");
}

// ---------------------------------------------------------------------------------------------
// SIGKILL of epi
// ---------------------------------------------------------------------------------------------

#[test]
fn sigkill_while_tailing_keeps_the_rows_and_leaves_no_remote_process() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let Some(orch) = Orchestrator::start(d, "poll_interval_ms = 100\n") else {
        return;
    };
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicUsize::new(0));
    let writer = orchestrator_writer(&orch.db, stop.clone(), written.clone());
    let rec = d.join("tail.csv");
    let child = spawn_epi(d, &monitor_host_args(&orch, &rec));
    wait_for("20 tailed rows", 120, || {
        (complete_lines(&rec).len() > 20).then_some(())
    });
    let before = complete_lines(&rec).len() - 1;
    signal_pid(child.pid(), libc::SIGKILL);
    let (code, _, _) = child.finish(60);
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    assert_eq!(code, None, "killed by a signal");
    let rows = readable_rows(&rec, &d.join("complete.csv"));
    assert!(rows.len() >= before);
    let seqs = tailed_seqs(&rows);
    for w in seqs.windows(2) {
        assert_eq!(w[1], w[0] + 1);
    }
    assert_eq!(sidecar(&rec).extra["complete"], false);
    // The remote commands die with the connection.
    assert_none_left(orch.db.to_str().unwrap(), "remote sqlite3");
}

/// The WAL file of `db` holds frames written after its last commit: a transaction is open and
/// has written pages (SQLite's WAL format: a 32-byte header, then frames of a 24-byte header,
/// whose bytes 4..8 are the database size after a commit frame and 0 otherwise, and a page).
fn wal_has_uncommitted_frames(db: &Path) -> bool {
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    let Ok(bytes) = std::fs::read(&wal) else {
        return false;
    };
    if bytes.len() < 32 {
        return false;
    }
    let page = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    let salt = &bytes[16..24];
    let mut at = 32;
    let mut uncommitted = false;
    while at + 24 + page <= bytes.len() {
        let frame = &bytes[at..at + 24];
        if &frame[8..16] != salt {
            break;
        }
        uncommitted = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]) == 0;
        at += 24 + page;
    }
    uncommitted
}

#[test]
fn sigkill_while_logging_to_the_results_database_loses_nothing_committed() {
    if !have_tool("sqlite3") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let example: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("examples/data/submission/epi_001.json"))
            .unwrap(),
    )
    .unwrap();
    let mut files = Vec::new();
    for i in 0..3000 {
        let mut r = example.clone();
        r["run_metadata"]["run_id"] = Value::from(format!("fault-{i:05}"));
        let f = d.join(format!("r{i:05}.json"));
        std::fs::write(&f, serde_json::to_vec(&r).unwrap()).unwrap();
        files.push(f.display().to_string());
    }
    let count = |db: &Path| -> i64 {
        let c = rusqlite::Connection::open(db).unwrap();
        let ok: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok", "the database is intact");
        c.query_row("SELECT count(*) FROM results", [], |r| r.get(0))
            .unwrap()
    };
    // Until a kill lands while the transaction logging the 3000 results is open (it is stopped,
    // looked at, and let go on, so what decides is the state seen, not a speed).
    for attempt in 0..10 {
        let db = d.join(format!("results-{attempt}.db"));
        let first = epi(
            d,
            &["results", "log", &files[0], "--db", db.to_str().unwrap()],
        );
        assert!(first.status.success(), "{}", stderr(&first));
        let mut args = argv(&["results", "log", "--tags", "fault", "--db"]);
        args.push(db.display().to_string());
        args.extend(files[1..].iter().cloned());
        let mut child = spawn_epi(d, &args);
        let mut killed_open = false;
        loop {
            if child.child().try_wait().unwrap().is_some() {
                break;
            }
            signal_pid(child.pid(), libc::SIGSTOP);
            if wal_has_uncommitted_frames(&db) {
                signal_pid(child.pid(), libc::SIGKILL);
                killed_open = true;
                break;
            }
            signal_pid(child.pid(), libc::SIGCONT);
            std::thread::sleep(Duration::from_millis(2));
        }
        let (code, out, err) = child.finish(60);
        if !killed_open {
            // It committed first: everything is there; try again with a fresh database.
            assert_eq!(code, Some(0), "{out}{err}");
            assert_eq!(count(&db), 3000);
            continue;
        }
        assert_eq!(code, None, "killed by a signal");
        // All or nothing: the open transaction is gone, what was committed before is there.
        assert_eq!(count(&db), 1);
        let l = epi(
            d,
            &["results", "list", "--json", "--db", db.to_str().unwrap()],
        );
        assert!(l.status.success(), "{}", stderr(&l));
        let rows: Value = serde_json::from_str(&stdout(&l)).unwrap();
        assert_eq!(rows.as_array().unwrap().len(), 1);
        // And the same log goes through afterwards.
        let again = epi(d, &args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(again.status.success(), "{}", stderr(&again));
        assert_eq!(count(&db), 3000);
        return;
    }
    panic!("in 10 attempts the kill never landed while the transaction was open");
}

// ---------------------------------------------------------------------------------------------
// distributed-llama: dllama-api dies
// ---------------------------------------------------------------------------------------------

#[test]
fn dllama_api_dying_mid_profile_keeps_what_was_measured_and_stops_the_cluster() {
    use std::os::unix::fs::PermissionsExt;
    if !meter_ready() || !have_tool("sshd") || !have_tool("ssh-keygen") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let sshd = Sshd::start().expect("start sshd");
    // The distributed-llama double installed as `dllama` and `dllama-api` on the "nodes".
    let cluster = d.join("cluster");
    std::fs::create_dir_all(&cluster).unwrap();
    for (name, mode) in [("dllama", ""), ("dllama-api", "api ")] {
        let p = cluster.join(name);
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\nexport DLLAMA_DOUBLE_LOG='{}'\nexport DLLAMA_DOUBLE_DELAY_MS=200\nexec python3 '{}' {mode}\"$@\"\n",
                cluster.join("api-requests.jsonl").display(),
                doubles().join("dllama.py").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(cluster.join("model.m"), b"weights").unwrap();
    std::fs::write(cluster.join("tokenizer.t"), b"tokenizer").unwrap();
    let (worker_port, api_port) = (free_port(), free_port());
    let board = Board::start(d);
    let run = d.join("run");
    let p = |n: &str| cluster.join(n).display().to_string();
    let args = argv(&[
        "profile",
        "--power",
        "epi-meter",
        "--port",
        board.port().to_str().unwrap(),
        "--backend",
        "distributed-llama",
        "--hosts",
        &format!("127.0.0.1,127.0.0.1:{worker_port}"),
        "--ssh-user",
        sshd.user(),
        "--ssh-port",
        &sshd.port().to_string(),
        "--ssh-key",
        sshd.user_key().to_str().unwrap(),
        "--known-hosts",
        sshd.known_hosts().to_str().unwrap(),
        "--model",
        &p("model.m"),
        "-O",
        &format!("tokenizer={}", p("tokenizer.t")),
        "-O",
        &format!("dllama={}", p("dllama")),
        "-O",
        &format!("dllama_api={}", p("dllama-api")),
        "-O",
        &format!("api_port={api_port}"),
        "-O",
        "version=\"0.16.4\"",
        "-O",
        "stop_grace_s=2",
        "--suite",
        "arc-challenge",
        "--limit",
        "5",
        "--data-dir",
        &data_dir(),
        "--warmup",
        "0",
        "--idle",
        "0",
        "--repetitions",
        "1",
        "--output",
        run.to_str().unwrap(),
    ]);
    let child = spawn_epi(d, &args);
    wait_first_record(&run);
    // Kill dllama-api the way the recordings show it dies: a lower-case content-length (its
    // one-at-a-time accept loop takes this request after the query in flight).
    let mut s = TcpStream::connect(("127.0.0.1", api_port)).unwrap();
    let body = r#"{"messages":[{"role":"user","content":"x"}]}"#;
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    let (code, out, err) = child.finish(180);
    assert_eq!(code, Some(4), "{out}{err}");
    assert!(
        err.contains("the server died or became unreachable"),
        "{err}"
    );
    // What was measured before is on disk, readable, attributed and marked failed.
    let recs = records(&run);
    assert!(
        recs.len() < 5 && recs.iter().any(|r| r.error.is_none()),
        "{recs:?}"
    );
    assert!(
        recs.iter().any(|r| r
            .error
            .as_deref()
            .is_some_and(|e| e.contains("dllama-api exited"))),
        "{recs:?}"
    );
    assert_eq!(arrow_rows(&run), recs.len());
    let s = summary(&run);
    assert_eq!(s["status"], "failed");
    check_additivity(&run);
    assert!(!readable_rows(&run.join("power_trace.csv"), &d.join("complete.csv")).is_empty());
    // Nothing is left on the cluster.
    assert!(closed_soon(worker_port), "the worker stopped");
    assert!(closed_soon(api_port), "dllama-api is gone");
    assert_none_left(
        &cluster.display().to_string(),
        "a distributed-llama process",
    );
}
