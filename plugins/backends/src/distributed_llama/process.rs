//! The remote processes of a distributed-llama cluster: read continuously ([`Drained`]) and
//! waited for by **polling**, never by their output.
//!
//! `dllama worker` prints `Listening on …` and `dllama-api` prints `Server URL: …` with `printf` and
//! no `fflush`: started over an SSH exec channel (no terminal) their stdout is block-buffered, so
//! those lines arrive only when 4 KiB have gathered or the process exits normally. Readiness is
//! therefore polled ([`wait_ready`]):
//!
//! - **its own listening socket**: over the same SSH connection, the host's `/proc/net/tcp{,6}`
//!   must show a socket in `LISTEN` state on the port whose inode is one of the process's own
//!   file descriptors (`/proc/PID/fd`), or, where there is no `/proc/net/tcp`, `lsof` must show
//!   the pid listening on the port ([`LISTEN_PROBE`]). A TCP connection to a worker's port is
//!   **not** an option: the worker takes the first connection for its root, and one that closes
//!   without a configuration kills it (`🚨 Critical error: Socket closed`, seen on the real
//!   engine). Owning the socket also means a stale server on the same port is never mistaken for
//!   ours;
//! - **for `dllama-api`, an answer from here**: `GET /v1/models` at the address the client will use
//!   must answer `200` ([`get_models`]), once the socket is its own.
//!
//! Meanwhile the output is still read: a process that exits, or prints a fatal line (`🚨 …`, a C++
//! `terminate called …`), fails the wait at once with its last lines. Each second the wait
//! publishes what it waits for and for how long ([`StartupProgress`], through a `watch` channel the
//! CLI displays). A process that neither gets ready nor fails is stopped after the limit, and the
//! error says what was checked and what it printed (noting that unflushed output is missing).

use epi_core::backend::StartupProgress;
use epi_ssh::{ProcessEvent, RemoteProcess, SshSession};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{oneshot, watch};

/// Lines of each remote process's output kept for error reports.
const KEEP_LINES: usize = 200;

/// How often readiness is polled.
const POLL_EVERY: Duration = Duration::from_millis(250);

/// Limit of one probe (an SSH command, or one HTTP request).
const PROBE_LIMIT: Duration = Duration::from_secs(10);

/// The probe run on a node (`sh -c LISTEN_PROBE epi-probe PID PORT`): the TCP socket tables and
/// the process's descriptors from `/proc`, else `lsof`'s pids listening on the port, else nothing.
pub const LISTEN_PROBE: &str = r#"pid=$1; port=$2
if [ -r /proc/net/tcp ]; then
  echo EPI-PROC
  cat /proc/net/tcp /proc/net/tcp6 2>/dev/null
  echo EPI-FDS
  for f in /proc/"$pid"/fd/*; do readlink "$f"; done 2>/dev/null
elif command -v lsof >/dev/null 2>&1; then
  echo EPI-LSOF
  lsof -nP -a -p "$pid" -iTCP:"$port" -sTCP:LISTEN -t 2>/dev/null
else
  echo EPI-NONE
fi
exit 0"#;

/// What [`LISTEN_PROBE`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listening {
    /// The process listens on the port.
    Yes,
    /// Not (yet).
    No,
    /// The node can tell neither way (no `/proc/net/tcp`, no `lsof`).
    Unknown,
}

/// Reads [`LISTEN_PROBE`]'s output: whether a `LISTEN` socket on `port` is one of the process's.
pub fn parse_listen_probe(output: &str, port: u16) -> Listening {
    let mut lines = output.lines();
    match lines.next().map(str::trim) {
        Some("EPI-PROC") => {}
        Some("EPI-LSOF") => {
            return if lines.any(|l| !l.trim().is_empty()) {
                Listening::Yes
            } else {
                Listening::No
            };
        }
        _ => return Listening::Unknown,
    }
    let mut inodes: Vec<&str> = Vec::new();
    let mut in_fds = false;
    let mut fds: Vec<&str> = Vec::new();
    for l in lines {
        if l.trim() == "EPI-FDS" {
            in_fds = true;
            continue;
        }
        if in_fds {
            if let Some(inode) = l
                .trim()
                .strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
            {
                fds.push(inode);
            }
            continue;
        }
        // `sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode`
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 10 || f[3] != "0A" {
            continue;
        }
        let local_port = f[1]
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        if local_port == Some(port) && f[9] != "0" {
            inodes.push(f[9]);
        }
    }
    if inodes.iter().any(|i| fds.contains(i)) {
        Listening::Yes
    } else {
        Listening::No
    }
}

/// Whether process `pid` on the node of `session` listens on `port`.
pub async fn probe_listening(
    session: &SshSession,
    pid: u32,
    port: u16,
) -> Result<Listening, String> {
    let argv = [
        "sh".to_string(),
        "-c".into(),
        LISTEN_PROBE.into(),
        "epi-probe".into(),
        pid.to_string(),
        port.to_string(),
    ];
    let out = session
        .run(&argv, PROBE_LIMIT)
        .await
        .map_err(|e| format!("probing the listening port: {e}"))?;
    Ok(parse_listen_probe(&out.stdout_text(), port))
}

/// `GET /v1/models` at `host:port` from here: `Ok` on an HTTP `200` answer, else why not.
pub async fn get_models(host: &str, port: u16) -> Result<(), String> {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        let shown = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let req = format!("GET /v1/models HTTP/1.1\r\nHost: {shown}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("sending: {e}"))?;
        let mut reply = Vec::new();
        s.read_to_end(&mut reply)
            .await
            .map_err(|e| format!("reading: {e}"))?;
        let head = String::from_utf8_lossy(&reply[..reply.len().min(64)]).into_owned();
        let status = head.lines().next().unwrap_or("").to_string();
        if status.starts_with("HTTP/1.1 200") || status.starts_with("HTTP/1.0 200") {
            Ok(())
        } else if status.is_empty() {
            Err("no reply".to_string())
        } else {
            Err(format!("answered `{status}`"))
        }
    };
    tokio::time::timeout(PROBE_LIMIT, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} s", PROBE_LIMIT.as_secs())))
}

/// Whether an output line says the process failed: `🚨 Critical error: …` (dllama, which then
/// exits), `🚨 Connection error: …` (dllama-api could not reach a worker; it retries every 3 s,
/// forever), or the C++ runtime's `terminate called …` (dllama-api has no handler for most
/// errors). A worker's `🚨 Network error` is not: it follows every root that ends abruptly (the
/// backend stops `dllama inference` runs), and the worker then listens again.
pub fn is_fatal_line(line: &str) -> bool {
    line.starts_with("🚨 Critical error")
        || line.starts_with("🚨 Connection error")
        || line.starts_with("terminate called")
}

/// What [`Drained`] has seen: recent lines, the first fatal line, the end.
#[derive(Debug, Default)]
struct Seen {
    lines: VecDeque<String>,
    fatal: Option<String>,
    exit: Option<String>,
}

/// A remote process whose output is read continuously (so it never blocks on a full SSH window)
/// into a ring of recent lines; its end and its first fatal line are noted.
pub struct Drained {
    /// What it is (`dllama-api`, `dllama worker 10.0.0.2:9998`).
    pub name: String,
    /// Its remote pid.
    pub pid: Option<u32>,
    stop: Option<oneshot::Sender<Duration>>,
    task: Option<tokio::task::JoinHandle<()>>,
    seen: Arc<Mutex<Seen>>,
    changed: watch::Receiver<u64>,
}

impl Drained {
    /// Starts reading `process`.
    pub fn spawn(name: String, mut process: RemoteProcess) -> Drained {
        let pid = process.pid();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (changed_tx, changed) = watch::channel(0u64);
        let (tx, mut rx) = oneshot::channel::<Duration>();
        let s = seen.clone();
        let note = move |f: &mut dyn FnMut(&mut Seen)| {
            if let Ok(mut g) = s.lock() {
                f(&mut g);
            }
            changed_tx.send_modify(|n| *n += 1);
        };
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    grace = &mut rx => {
                        let grace = grace.unwrap_or(Duration::from_secs(2));
                        let status = process.stop(grace).await;
                        note(&mut |g| {
                            if g.exit.is_none() {
                                g.exit = Some(match &status {
                                    Ok(s) => format!("stopped ({s})"),
                                    Err(err) => format!("stopping failed: {err}"),
                                });
                            }
                        });
                        return;
                    }
                    ev = process.next_event() => match ev {
                        Some(ProcessEvent::Stdout(line)) | Some(ProcessEvent::Stderr(line)) => {
                            note(&mut |g| {
                                if g.fatal.is_none() && is_fatal_line(&line) {
                                    g.fatal = Some(line.clone());
                                }
                                if g.lines.len() == KEEP_LINES {
                                    g.lines.pop_front();
                                }
                                g.lines.push_back(line.clone());
                            });
                        }
                        Some(ProcessEvent::Exited(status)) => {
                            note(&mut |g| g.exit = Some(format!("exited ({status})")));
                        }
                        None => {
                            note(&mut |g| {
                                if g.exit.is_none() {
                                    g.exit = Some("ended (connection lost)".into());
                                }
                            });
                            // Ended: wait for a stop request so `stop` finds the task.
                            let _ = rx.await;
                            return;
                        }
                    },
                }
            }
        });
        Drained {
            name,
            pid,
            stop: Some(tx),
            task: Some(task),
            seen,
            changed,
        }
    }

    /// How it ended, once it has (`exited (exit code 1)`, `stopped (…)`).
    pub fn exited(&self) -> Option<String> {
        self.seen.lock().ok().and_then(|g| g.exit.clone())
    }

    /// The first fatal line it printed.
    pub fn fatal(&self) -> Option<String> {
        self.seen.lock().ok().and_then(|g| g.fatal.clone())
    }

    /// Every line kept (the last [`KEEP_LINES`]).
    pub fn lines(&self) -> Vec<String> {
        self.seen
            .lock()
            .map(|g| g.lines.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The last `n` lines, joined.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.lines();
        let start = lines.len().saturating_sub(n);
        lines[start..].join("\n")
    }

    /// A receiver that changes whenever a line arrives or the process ends.
    fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.clone()
    }

    /// Stops the process (TERM, then KILL after `grace`) and the reading.
    pub async fn stop(&mut self, grace: Duration) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(grace);
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(grace + Duration::from_secs(10), t).await;
        }
    }
}

/// What makes a process ready.
#[derive(Debug, Clone)]
pub struct Readiness {
    /// Host the process runs on (for messages).
    pub host: String,
    /// The port it listens on once ready.
    pub port: u16,
    /// Also `GET /v1/models` from here at this address (dllama-api).
    pub http: Option<(String, u16)>,
    /// What it is doing meanwhile, for the progress display (`loading the model`).
    pub doing: String,
}

/// Why a wait failed: the message, ready for [`epi_core::backend::BackendError::Setup`].
pub type WaitError = String;

/// Polls until `d` is ready (module documentation), publishing progress on `progress`; returns
/// the seconds it took. On failure the process is left running: the caller stops it.
pub async fn wait_ready(
    session: &SshSession,
    d: &Drained,
    ready: &Readiness,
    limit: Duration,
    progress: &watch::Sender<Option<StartupProgress>>,
) -> Result<f64, WaitError> {
    let t0 = Instant::now();
    let what = format!("{} on {}:{}", d.name, ready.host, ready.port);
    let pid = d
        .pid
        .ok_or_else(|| format!("{what}: its remote pid is unknown"))?;
    let mut last_check = String::from("not checked yet");
    let mut next_probe = Instant::now();
    let mut changes = d.subscribe();
    loop {
        if let Some(line) = d.fatal() {
            return Err(format!(
                "{what} failed while starting: `{line}`; its last output:\n{}",
                d.tail(30)
            ));
        }
        if let Some(how) = d.exited() {
            return Err(format!(
                "{what} {how} before it was ready; its last output:\n{}",
                d.tail(30)
            ));
        }
        let elapsed = t0.elapsed();
        if elapsed >= limit {
            return Err(format!(
                "{what} was not ready within {:.0} s (last check: {last_check}); its output so far \
                 (distributed-llama does not flush its output when it is not at a terminal, so lines \
                 may be missing):\n{}",
                limit.as_secs_f64(),
                d.tail(30)
            ));
        }
        progress.send_replace(Some(StartupProgress {
            waiting_for: format!("{what} ({})", ready.doing),
            elapsed_s: elapsed.as_secs_f64(),
            limit_s: limit.as_secs_f64(),
        }));
        if Instant::now() >= next_probe {
            next_probe = Instant::now() + POLL_EVERY;
            match probe_listening(session, pid, ready.port).await? {
                Listening::Yes => match &ready.http {
                    None => return Ok(t0.elapsed().as_secs_f64()),
                    Some((host, port)) => match get_models(host, *port).await {
                        Ok(()) => return Ok(t0.elapsed().as_secs_f64()),
                        Err(e) => {
                            last_check = format!(
                                "it listens on port {}, but GET http://{host}:{port}/v1/models from here: {e}",
                                ready.port
                            )
                        }
                    },
                },
                Listening::No => {
                    last_check = format!("process {pid} does not listen on port {} yet", ready.port)
                }
                Listening::Unknown => {
                    return Err(format!(
                        "{what}: cannot tell when it listens: {} has neither /proc/net/tcp nor lsof \
                         (distributed-llama's `Listening on` line is not flushed, so it cannot be waited for)",
                        ready.host
                    ))
                }
            }
        }
        // Until the next probe, or at once when the process prints or ends.
        let until = next_probe.saturating_duration_since(Instant::now());
        let _ = tokio::time::timeout(until.min(Duration::from_secs(1)), async {
            if changes.changed().await.is_err() {
                // The reader has ended: nothing more will change.
                std::future::pending::<()>().await;
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/proc/net/tcp` as the probe prints it, with a worker listening on 9998 (0x270E) and a
    /// connection on the same port.
    const PROC: &str = "EPI-PROC
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:270E 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:270E 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 5151 1 0000000000000000 20 4 30 10 -1
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:2706 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 7777 1 0000000000000000 100 0 0 10 0
EPI-FDS
/dev/null
pipe:[99]
socket:[4242]
";

    #[test]
    fn the_probe_wants_the_process_own_listening_socket() {
        assert_eq!(parse_listen_probe(PROC, 9998), Listening::Yes);
        // IPv6 listener on 9990 (0x2706) not owned by the process.
        assert_eq!(parse_listen_probe(PROC, 9990), Listening::No);
        // Another process's listener on the port (a stale worker): not ours.
        let other = PROC.replace("socket:[4242]", "socket:[1]");
        assert_eq!(parse_listen_probe(&other, 9998), Listening::No);
        // A connection (state 01) on the port is not a listener.
        let conn_only = PROC.replace(
            " 0A 00000000:00000000 00:00000000 00000000  1000        0 4242",
            " 01 00000000:00000000 00:00000000 00000000  1000        0 4242",
        );
        assert_eq!(parse_listen_probe(&conn_only, 9998), Listening::No);
        assert_eq!(parse_listen_probe("EPI-LSOF\n4242\n", 9998), Listening::Yes);
        assert_eq!(parse_listen_probe("EPI-LSOF\n", 9998), Listening::No);
        assert_eq!(parse_listen_probe("EPI-NONE\n", 9998), Listening::Unknown);
        assert_eq!(parse_listen_probe("", 9998), Listening::Unknown);
    }

    #[test]
    fn fatal_lines() {
        assert!(is_fatal_line(
            "🚨 Critical error: Cannot bind port: Address already in use"
        ));
        assert!(is_fatal_line("🚨 Connection error: Cannot connect"));
        assert!(is_fatal_line(
            "terminate called after throwing an instance of 'std::runtime_error'"
        ));
        assert!(!is_fatal_line("💿 Loading weights..."));
        assert!(!is_fatal_line("🚨 Network error: Socket closed"));
        assert!(!is_fatal_line("Listening on 0.0.0.0:9998..."));
    }

    #[tokio::test]
    async fn get_models_wants_a_200() {
        use tokio::net::TcpListener;
        for (reply, ok) in [
            ("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", true),
            ("HTTP/1.1 404 Not Found\r\n\r\n", false),
            ("", false),
        ] {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = l.local_addr().unwrap().port();
            let server = tokio::spawn(async move {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap();
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                s.write_all(reply.as_bytes()).await.unwrap();
                req
            });
            let r = get_models("127.0.0.1", port).await;
            assert_eq!(r.is_ok(), ok, "{reply:?}: {r:?}");
            let req = server.await.unwrap();
            assert!(req.starts_with("GET /v1/models HTTP/1.1\r\n"), "{req}");
            assert!(req.contains("\r\nConnection: close\r\n"), "{req}");
        }
        // Nobody listening.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(get_models("127.0.0.1", port).await.is_err());
    }
}
