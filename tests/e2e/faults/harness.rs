//! The fault suite's harness: the real components it runs `epi` against and the means to break
//! them at a chosen moment — [`Board`] (the epi-meter board written into a real socat pty pair:
//! unplugged, replugged, stalled, fed garbage), [`Double`] (the replaying llama-server double,
//! frozen with SIGSTOP), [`FaultProxy`] (an HTTP proxy that answers llama-server's recorded 500,
//! cuts replies, or holds a request so the run waits mid-query), [`SmallDisk`] (a 256 KiB tmpfs
//! filled on demand), [`Orchestrator`] (OpenSSH on loopback over the Orchestrator's SQLite
//! database: sshd killed with SIGKILL and restarted), [`EpiRun`] (`epi` in the background, killed
//! if the test fails) and the process checks that nothing is left running.
//!
//! Every wait is on an observable event with a deadline that bounds a hang, never an expected
//! speed. A helper that cannot start its component fails the test, naming it.

use crate::support::{
    complete_lines, doubles, epi_bin, have_python, have_tool, repo_root, wait_for,
};
use epi_framework::testing::Sshd;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// Sends `sig` to `pid` (no error when it is already gone).
pub(super) fn signal_pid(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a pid this test started (or found as a child of one) and a valid signal.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// `(pid, parent pid, command name)` of every process, from `/proc/*/stat`.
pub(super) fn processes() -> Vec<(u32, u32, String)> {
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
pub(super) fn process_tree(root: u32) -> Vec<(u32, String)> {
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
pub(super) fn pgrep(needle: &str) -> Vec<String> {
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
pub(super) fn assert_none_left(needle: &str, what: &str) {
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
pub(super) struct EpiRun {
    child: Option<Child>,
    dir: PathBuf,
}

/// Starts `epi` with `args` in `dir`.
pub(super) fn spawn_epi(dir: &Path, args: &[String]) -> EpiRun {
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
    pub(super) fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("epi was started")
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    pub(super) fn printed(&self) -> (String, String) {
        (
            std::fs::read_to_string(self.dir.join("epi.out")).unwrap_or_default(),
            std::fs::read_to_string(self.dir.join("epi.err")).unwrap_or_default(),
        )
    }

    /// Like `wait_for`, but fails at once, with what `epi` printed, when it has exited.
    pub(super) fn wait_running<T>(
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
    pub(super) fn finish(mut self, secs: u64) -> (Option<i32>, String, String) {
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
pub(super) fn argv(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// The epi-meter board on a real pseudo-terminal
// ---------------------------------------------------------------------------------------------

/// socat relaying `links/meter` (the board's side) to `links/host` (what epi opens), started as
/// the emulator starts it; `transferring` turns true once the host side is open.
pub(super) struct Socat {
    child: Child,
    transferring: Arc<AtomicBool>,
}

impl Socat {
    pub(super) fn start(links: &Path) -> Socat {
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

    pub(super) fn stop(mut self) {
        signal_pid(self.child.id(), libc::SIGTERM);
        let _ = wait_for("socat to exit", 30, || self.child.try_wait().ok().flatten());
    }
}

/// What the board does at each 100 ms tick of its clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum BoardMode {
    /// Sends a sample line.
    Sampling,
    /// Its USB link is gone: it keeps sampling, and those samples are lost.
    Unplugged,
    /// Its firmware hangs: the port stays open and nothing more comes.
    Stalled,
}

#[derive(Default)]
pub(super) struct BoardState {
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
pub(super) struct Board {
    links: PathBuf,
    state: Arc<Mutex<BoardState>>,
    socat: Arc<Mutex<Option<Socat>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub(super) const BOARD_PERIOD_MS: u64 = 100;

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Board {
    pub(super) fn start(dir: &Path) -> Board {
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

    pub(super) fn transferring(socat: &Mutex<Option<Socat>>) -> bool {
        lock(socat)
            .as_ref()
            .is_some_and(|s| s.transferring.load(Ordering::SeqCst))
    }

    pub(super) fn run(state: &Mutex<BoardState>, socat: &Mutex<Option<Socat>>, meter: &Path) {
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
    pub(super) fn port(&self) -> PathBuf {
        self.links.join("host")
    }

    /// Samples written so far.
    pub(super) fn delivered(&self) -> usize {
        lock(&self.state).delivered.len()
    }

    /// The watts of every sample written so far.
    pub(super) fn delivered_watts(&self) -> Vec<[f64; 4]> {
        lock(&self.state).delivered.clone()
    }

    /// Samples taken and never written (unplugged, or not reopened yet).
    pub(super) fn lost(&self) -> u64 {
        lock(&self.state).lost
    }

    /// Unplugs the USB link. The board stops writing (what it samples from now on is lost),
    /// `host_read(n)` waits until the host has read the `n` samples written so far (the test
    /// watches the trace), then socat is killed and the device node vanishes.
    pub(super) fn unplug(&self, host_read: impl FnOnce(usize)) {
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
    pub(super) fn replug(&self) {
        let socat = Socat::start(&self.links);
        *lock(&self.socat) = Some(socat);
        lock(&self.state).mode = Some(BoardMode::Sampling);
    }

    /// The firmware hangs: nothing more is written, the port stays open.
    pub(super) fn stall(&self) {
        lock(&self.state).mode = Some(BoardMode::Stalled);
    }

    /// Writes `lines` lines of random bytes (some not UTF-8) and one line longer than the
    /// source's 64 KiB limit, between two samples; returns how many bad lines that is.
    pub(super) fn garbage(&self, lines: usize) -> u64 {
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
pub(super) fn meter_ready() -> bool {
    have_tool("socat") && have_python()
}

// ---------------------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------------------

/// The replaying llama-server double (`plugins/backends/tests/doubles/llama_server.py`) on a
/// loopback port. `freeze` (SIGSTOP) hangs it the way a deadlocked server hangs: the kernel still
/// accepts connections, nothing answers. Killed on drop.
pub(super) struct Double {
    child: Child,
    pub(super) port: u16,
}

impl Double {
    pub(super) fn start(dir: &Path, args: &[&str]) -> Double {
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

    pub(super) fn freeze(&self) {
        signal_pid(self.child.id(), libc::SIGSTOP);
    }

    pub(super) fn thaw(&self) {
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
pub(super) enum Fault {
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
pub(super) struct ProxyState {
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
pub(super) struct FaultProxy {
    port: u16,
    state: Arc<Mutex<ProxyState>>,
}

/// `head` (a request or reply head, up to the blank line) without its `Connection` and
/// `Keep-Alive` headers and with `Connection: close`.
pub(super) fn closing_head(head: &[u8]) -> Vec<u8> {
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

pub(super) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One request from `conn` (head, body), or none when the client closed.
pub(super) fn read_http_request(conn: &mut TcpStream) -> Option<(Vec<u8>, Vec<u8>)> {
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
    pub(super) fn start(upstream: u16) -> FaultProxy {
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

    pub(super) fn exchange(
        mut conn: TcpStream,
        upstream: u16,
        st: &Mutex<ProxyState>,
        r500: &[u8],
    ) {
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

    pub(super) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `fault` for every request that arrives once `run`'s first record is on disk.
    pub(super) fn arm(&self, fault: Fault, run: &Path) {
        lock(&self.state).armed = Some((fault, run.join("records.jsonl")));
    }

    /// Waits until a request is held: the run is mid-query, waiting for the test.
    pub(super) fn wait_held(&self) {
        wait_for("a request held mid-run", 180, || {
            (lock(&self.state).held > 0).then_some(())
        });
    }

    /// Lets held requests (and all later ones) through.
    pub(super) fn release(&self) {
        let mut s = lock(&self.state);
        s.released = true;
        s.armed = None;
    }

    /// Requests that got the fault.
    pub(super) fn faulted(&self) -> usize {
        lock(&self.state).faulted
    }

    /// Requests forwarded to the server.
    pub(super) fn forwarded(&self) -> usize {
        lock(&self.state).forwarded
    }
}

// ---------------------------------------------------------------------------------------------
// A full disk
// ---------------------------------------------------------------------------------------------

/// A 256 KiB tmpfs mounted for the test (as root; CI runs as root), unmounted on drop.
pub(super) struct SmallDisk {
    pub(super) path: PathBuf,
}

impl SmallDisk {
    /// `None` (the test skips, saying why) when mounting is not permitted here, unless
    /// `EPI_REQUIRE_SYSTEM_TOOLS` is set: then the test fails.
    pub(super) fn mount(dir: &Path) -> Option<SmallDisk> {
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
    pub(super) fn fill(&self) {
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
    pub(super) fn stray_temporaries(&self) -> Vec<String> {
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

// ---------------------------------------------------------------------------------------------
// The Orchestrator's sshd
// ---------------------------------------------------------------------------------------------

pub(super) const ORCH_SCHEMA: &str = "CREATE TABLE epi_power_traces (
  id INTEGER PRIMARY KEY, ts_utc_ms INTEGER NOT NULL, meter_t_ms INTEGER, seq INTEGER,
  node_id INTEGER NOT NULL, watts_rms REAL NOT NULL, volts_rms REAL, amps_rms REAL,
  power_factor REAL, wh REAL);
CREATE INDEX epi_power_traces_ts ON epi_power_traces(ts_utc_ms);";

/// The watts a logged row carries: its sample's `seq`, readable back from the trace.
pub(super) fn seq_watts(seq: i64, node: i64) -> f64 {
    10.0 + node as f64 + seq as f64 * 0.001
}

pub(super) fn insert_sample(db: &rusqlite::Connection, seq: i64, ts: i64) {
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
pub(super) struct Orchestrator {
    sshd: Sshd,
    pub(super) db: PathBuf,
    restarted: Mutex<Option<Child>>,
}

impl Orchestrator {
    pub(super) fn start(dir: &Path, settings: &str) -> Option<Orchestrator> {
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
        Some(Orchestrator {
            sshd,
            db,
            restarted: Mutex::new(None),
        })
    }

    pub(super) fn ssh_flags(&self) -> Vec<String> {
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
    pub(super) fn kill_sshd(&self) {
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
    pub(super) fn restart_sshd(&self) {
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
        *lock(&self.restarted) = Some(child);
    }

    /// Stops the sshd [`restart_sshd`](Self::restart_sshd) started.
    pub(super) fn stop_restarted_sshd(&self) {
        if let Some(mut c) = lock(&self.restarted).take() {
            signal_pid(c.id(), libc::SIGTERM);
            let _ = c.wait();
        }
    }
}

impl Drop for Orchestrator {
    fn drop(&mut self) {
        if let Some(mut c) = lock(&self.restarted).take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The Orchestrator logging the meter into its database: a sample of 2 nodes every 100 ms, each
/// row's watts telling its `seq` ([`seq_watts`]); stopped on drop.
pub(super) struct MeterLogger {
    stop: Arc<AtomicBool>,
    written: Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MeterLogger {
    pub(super) fn start(db: &Path) -> MeterLogger {
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let thread = {
            let (db, stop, written) = (db.to_path_buf(), stop.clone(), written.clone());
            std::thread::spawn(move || {
                let c = rusqlite::Connection::open(&db).unwrap();
                c.busy_timeout(Duration::from_secs(10)).unwrap();
                let mut seq = 0i64;
                while !stop.load(Ordering::SeqCst) {
                    insert_sample(&c, seq, chrono::Utc::now().timestamp_millis());
                    seq += 1;
                    written.store(seq as usize, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        MeterLogger {
            stop,
            written,
            thread: Some(thread),
        }
    }

    /// Samples logged so far.
    pub(super) fn written(&self) -> usize {
        self.written.load(Ordering::SeqCst)
    }

    /// Stops logging (and fails the test if the logger failed).
    pub(super) fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("the logger thread");
        }
    }
}

impl Drop for MeterLogger {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// SQLite
// ---------------------------------------------------------------------------------------------

/// The WAL file of `db` holds frames written after its last commit: a transaction is open and
/// has written pages (SQLite's WAL format: a 32-byte header, then frames of a 24-byte header,
/// whose bytes 4..8 are the database size after a commit frame and 0 otherwise, and a page).
pub(super) fn wal_has_uncommitted_frames(db: &Path) -> bool {
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
