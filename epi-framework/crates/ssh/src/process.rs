//! Long-running remote processes ([`SshSession::spawn`], [`RemoteProcess`]): output lines
//! streamed back as they come, the pid reported by the supervisor, signals sent out of band
//! (`kill` over the same connection), and stopping — TERM, then KILL after a grace period, for
//! one process, for all of a connection's ([`SshSession::stop_all`]), or in the background for
//! one dropped while running.
//!
//! Starting fails with [`SshError::Protocol`] (no channel, the channel closed before the process
//! started) or [`SshError::Timeout`]; once started, the end is an event
//! ([`ProcessEvent::Exited`]), not an error.

use crate::exec::{command_line, sig_name, supervised_command_line, PID_MARKER};
use crate::session::Inner;
use crate::{RemoteExit, SshError, SshSession};
use epi_core::lines::{trim_cr, LineSplitter, Overlong, Piece};
use russh::client;
use russh::ChannelMsg;
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::timeout_at;

/// A signal for [`RemoteProcess::signal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// SIGTERM: ask to stop.
    Term,
    /// SIGINT: as Ctrl-C.
    Int,
    /// SIGHUP.
    Hup,
    /// SIGKILL: stop now.
    Kill,
    /// SIGQUIT.
    Quit,
    /// SIGUSR1.
    Usr1,
    /// SIGUSR2.
    Usr2,
}

impl Signal {
    /// The name without `SIG` (`TERM`).
    pub fn name(self) -> &'static str {
        match self {
            Signal::Term => "TERM",
            Signal::Int => "INT",
            Signal::Hup => "HUP",
            Signal::Kill => "KILL",
            Signal::Quit => "QUIT",
            Signal::Usr1 => "USR1",
            Signal::Usr2 => "USR2",
        }
    }
}

/// Something a [`RemoteProcess`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessEvent {
    /// A line of standard output (without its `\n` or `\r\n`).
    Stdout(String),
    /// A line of standard error.
    Stderr(String),
    /// The process ended; no events follow.
    Exited(RemoteExit),
}

impl SshSession {
    /// Starts `argv` as a long-running remote process whose output lines stream back. Returns
    /// once the process has started (its pid is known). Stop it with [`RemoteProcess::stop`]
    /// (or [`SshSession::stop_all`]); a `RemoteProcess` dropped while running is stopped in the
    /// background, and the remote supervisor stops it if the connection is lost.
    pub async fn spawn<S: AsRef<str>>(&self, argv: &[S]) -> Result<RemoteProcess, SshError> {
        let limit = Duration::from_secs(30);
        let command = supervised_command_line(argv)?;
        let shown = command_line(argv)?;
        let deadline = tokio::time::Instant::now() + limit;
        let channel = self.open_exec(command, deadline, limit).await?;
        let (read, write) = channel.split();
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (done_tx, done_rx) = watch::channel(false);
        let (pid_tx, mut pid_rx) = watch::channel(None::<u32>);
        let shared = Arc::new(ProcShared {
            id,
            command: shown.clone(),
            pid: Mutex::new(None),
            exit: Mutex::new(None),
            stderr_tail: Mutex::new(VecDeque::new()),
            writer: write,
            done: done_rx,
            closed_locally: watch::channel(false).0,
        });
        if let Ok(mut live) = self.inner.live.lock() {
            live.insert(id, shared.clone());
        }
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(read_process(
            read,
            shared.clone(),
            Arc::downgrade(&self.inner),
            tx,
            pid_tx,
            done_tx,
        ));
        let process = RemoteProcess {
            session: self.clone(),
            shared,
            events: rx,
            finished: false,
        };
        // Wait for the pid line (or the end: a command that could not start still ends cleanly).
        let started = timeout_at(deadline, async {
            let mut done = process.shared.done.clone();
            tokio::select! {
                r = pid_rx.wait_for(|p| p.is_some()) => r.is_ok(),
                _ = done.wait_for(|d| *d) => true,
            }
        })
        .await;
        match started {
            Ok(true) => Ok(process),
            Ok(false) => Err(self.protocol(
                &format!("`{shown}`"),
                "the channel closed before the process started",
            )),
            Err(_) => Err(self.timeout(format!("starting `{shown}`"), limit)),
        }
    }

    /// How many processes started with [`SshSession::spawn`] on this connection are still
    /// running (their end not yet reported).
    pub fn running(&self) -> usize {
        self.inner.live.lock().map(|l| l.len()).unwrap_or(0)
    }

    /// Stops every process started with [`SshSession::spawn`] on this connection that is still
    /// running: TERM, then KILL for those still running after `grace`, then closes their
    /// channels. Returns how many were running. For Ctrl-C and error paths.
    pub async fn stop_all(&self, grace: Duration) -> usize {
        let live: Vec<Arc<ProcShared>> = match self.inner.live.lock() {
            Ok(l) => l.values().cloned().collect(),
            Err(_) => Vec::new(),
        };
        let n = live.len();
        stop_shared(self, &live, grace).await;
        n
    }
}

pub(crate) struct ProcShared {
    id: u64,
    pub(crate) command: String,
    pid: Mutex<Option<u32>>,
    exit: Mutex<Option<RemoteExit>>,
    stderr_tail: Mutex<VecDeque<String>>,
    writer: russh::ChannelWriteHalf<client::Msg>,
    done: watch::Receiver<bool>,
    /// Set when this side closed the channel: russh then forwards nothing more for it, so the
    /// reader must stop waiting.
    closed_locally: watch::Sender<bool>,
}

impl ProcShared {
    fn pid(&self) -> Option<u32> {
        self.pid.lock().ok().and_then(|p| *p)
    }
    fn finished(&self) -> bool {
        *self.done.borrow()
    }

    /// Closes the channel from this side; the reader then reports the end.
    async fn close_channel(&self) {
        let _ = self.writer.close().await;
        self.closed_locally.send_replace(true);
    }
}

const STDERR_TAIL_LINES: usize = 50;
const MAX_LINE_BYTES: usize = 1 << 20;

/// The lines of a remote process's stdout or stderr: the one line splitter
/// ([`epi_core::lines`]), a line that grows beyond [`MAX_LINE_BYTES`] without a newline handed
/// over as it stands; a `\r\n` ending is removed, invalid UTF-8 replaced.
struct TextLines(LineSplitter);

impl TextLines {
    fn new() -> TextLines {
        TextLines(LineSplitter::new(MAX_LINE_BYTES, Overlong::Cut))
    }

    fn push(&mut self, data: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        self.0.feed(data, |piece| match piece {
            Piece::Line(line) => lines.push(String::from_utf8_lossy(trim_cr(line)).into_owned()),
            Piece::Cut(part) => lines.push(String::from_utf8_lossy(part).into_owned()),
            // Not produced under `Overlong::Cut`.
            Piece::TooLong => {}
        });
        lines
    }

    fn finish(&mut self) -> Option<String> {
        self.0
            .finish()
            .map(|line| String::from_utf8_lossy(&line).into_owned())
    }
}

async fn read_process(
    mut read: russh::ChannelReadHalf,
    shared: Arc<ProcShared>,
    session: std::sync::Weak<Inner>,
    tx: mpsc::Sender<ProcessEvent>,
    pid_tx: watch::Sender<Option<u32>>,
    done_tx: watch::Sender<bool>,
) {
    let mut out = TextLines::new();
    let mut err = TextLines::new();
    let mut status = RemoteExit::Unknown;
    let mut pid_seen = false;
    // Events are forwarded while someone listens; once the receiver is gone they are dropped,
    // and the loop goes on so that the exit is still noticed.
    async fn send(tx: &mpsc::Sender<ProcessEvent>, ev: ProcessEvent) {
        let _ = tx.send(ev).await;
    }
    let tail = |line: &str| {
        if let Ok(mut t) = shared.stderr_tail.lock() {
            if t.len() == STDERR_TAIL_LINES {
                t.pop_front();
            }
            t.push_back(line.to_string());
        }
    };
    let mut closed_locally = shared.closed_locally.subscribe();
    loop {
        let msg = tokio::select! {
            m = read.wait() => match m {
                Some(m) => m,
                None => break,
            },
            _ = closed_locally.wait_for(|c| *c) => break,
        };
        match msg {
            ChannelMsg::Data { data } => {
                for line in out.push(&data) {
                    send(&tx, ProcessEvent::Stdout(line)).await;
                }
            }
            ChannelMsg::ExtendedData { data, ext: 1 } => {
                for line in err.push(&data) {
                    if !pid_seen {
                        if let Some(pid) = line
                            .strip_prefix(PID_MARKER)
                            .and_then(|p| p.trim().parse::<u32>().ok())
                        {
                            pid_seen = true;
                            if let Ok(mut p) = shared.pid.lock() {
                                *p = Some(pid);
                            }
                            let _ = pid_tx.send(Some(pid));
                            continue;
                        }
                    }
                    tail(&line);
                    send(&tx, ProcessEvent::Stderr(line)).await;
                }
            }
            ChannelMsg::ExitStatus { exit_status } => status = RemoteExit::Code(exit_status),
            ChannelMsg::ExitSignal {
                signal_name,
                core_dumped,
                ..
            } => {
                status = RemoteExit::Signal {
                    name: sig_name(&signal_name),
                    core_dumped,
                }
            }
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    if let Some(line) = out.finish() {
        send(&tx, ProcessEvent::Stdout(line)).await;
    }
    if let Some(line) = err.finish() {
        tail(&line);
        send(&tx, ProcessEvent::Stderr(line)).await;
    }
    if let Ok(mut e) = shared.exit.lock() {
        *e = Some(status.clone());
    }
    if let Some(inner) = session.upgrade() {
        if let Ok(mut live) = inner.live.lock() {
            live.remove(&shared.id);
        }
    }
    let _ = done_tx.send(true);
    send(&tx, ProcessEvent::Exited(status)).await;
}

/// Signals the process groups of `procs` (out of band: `kill` run over the same connection),
/// falling back to an SSH `signal` request where the pid is unknown.
async fn signal_shared(
    session: &SshSession,
    procs: &[Arc<ProcShared>],
    sig: Signal,
) -> Result<(), SshError> {
    let pids: Vec<String> = procs
        .iter()
        .filter(|p| !p.finished())
        .filter_map(|p| p.pid())
        .map(|p| p.to_string())
        .collect();
    for p in procs.iter().filter(|p| !p.finished() && p.pid().is_none()) {
        let _ = p.writer.signal(to_russh_sig(sig)).await;
    }
    if pids.is_empty() {
        return Ok(());
    }
    // For each pid: its process group (the supervisor starts it with setsid), else the process.
    let script = r#"s=$1; shift; for p in "$@"; do kill -s "$s" -- "-$p" 2>/dev/null || kill -s "$s" "$p" 2>/dev/null; done; exit 0"#;
    let mut argv: Vec<String> = vec![
        "sh".into(),
        "-c".into(),
        script.into(),
        "epi-kill".into(),
        sig.name().into(),
    ];
    argv.extend(pids);
    let command = format!("exec {}", command_line(&argv)?);
    let limit = Duration::from_secs(10);
    let deadline = tokio::time::Instant::now() + limit;
    let mut channel = session.open_exec(command, deadline, limit).await?;
    loop {
        match timeout_at(deadline, channel.wait()).await {
            Err(_) => {
                let _ = channel.close().await;
                return Err(
                    session.timeout(format!("sending {} to remote processes", sig.name()), limit)
                );
            }
            Ok(None) | Ok(Some(ChannelMsg::Close)) => break,
            Ok(Some(_)) => {}
        }
    }
    Ok(())
}

fn to_russh_sig(sig: Signal) -> russh::Sig {
    match sig {
        Signal::Term => russh::Sig::TERM,
        Signal::Int => russh::Sig::INT,
        Signal::Hup => russh::Sig::HUP,
        Signal::Kill => russh::Sig::KILL,
        Signal::Quit => russh::Sig::QUIT,
        Signal::Usr1 => russh::Sig::USR1,
        Signal::Usr2 => russh::Sig::Custom("USR2".into()),
    }
}

async fn wait_all_done(procs: &[Arc<ProcShared>], deadline: tokio::time::Instant) -> bool {
    for p in procs {
        let mut done = p.done.clone();
        if timeout_at(deadline, done.wait_for(|d| *d)).await.is_err() {
            return false;
        }
    }
    true
}

/// TERM, wait `grace`, KILL, close the channels; waits a little for the exits to be reported.
async fn stop_shared(session: &SshSession, procs: &[Arc<ProcShared>], grace: Duration) {
    if procs.iter().all(|p| p.finished()) {
        return;
    }
    let _ = signal_shared(session, procs, Signal::Term).await;
    if !wait_all_done(procs, tokio::time::Instant::now() + grace).await {
        let _ = signal_shared(session, procs, Signal::Kill).await;
        // Give the exit status a moment to arrive before closing the channels.
        wait_all_done(procs, tokio::time::Instant::now() + Duration::from_secs(2)).await;
    }
    for p in procs {
        if !p.finished() {
            p.close_channel().await;
        }
    }
    wait_all_done(procs, tokio::time::Instant::now() + Duration::from_secs(5)).await;
}

/// A process started with [`SshSession::spawn`]: its output lines stream back while it runs.
///
/// Read it with [`next_line`](RemoteProcess::next_line) (stdout; stderr lines are kept in
/// [`stderr_tail`](RemoteProcess::stderr_tail)) or [`next_event`](RemoteProcess::next_event)
/// (both, and the exit). Read it steadily: when nobody reads, the remote process blocks once its
/// output fills the SSH window (flow control), it is not buffered without bound.
pub struct RemoteProcess {
    session: SshSession,
    shared: Arc<ProcShared>,
    events: mpsc::Receiver<ProcessEvent>,
    finished: bool,
}

impl fmt::Debug for RemoteProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteProcess")
            .field("destination", &self.session.destination())
            .field("command", &self.shared.command)
            .field("pid", &self.shared.pid())
            .finish()
    }
}

impl RemoteProcess {
    /// The remote process id (also its process group id where the remote has `setsid`).
    pub fn pid(&self) -> Option<u32> {
        self.shared.pid()
    }

    /// The command, quoted as it was sent.
    pub fn command(&self) -> &str {
        &self.shared.command
    }

    /// How it ended, once it has.
    pub fn exit_status(&self) -> Option<RemoteExit> {
        self.shared.exit.lock().ok().and_then(|e| e.clone())
    }

    /// Whether it has ended.
    pub fn has_exited(&self) -> bool {
        self.shared.finished()
    }

    /// The last lines of standard error (up to 50).
    pub fn stderr_tail(&self) -> Vec<String> {
        self.shared
            .stderr_tail
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The next output line or the exit; `None` after the exit has been returned.
    pub async fn next_event(&mut self) -> Option<ProcessEvent> {
        let ev = self.events.recv().await;
        if matches!(ev, Some(ProcessEvent::Exited(_)) | None) {
            self.finished = true;
        }
        ev
    }

    /// The next line of standard output; `None` once the process has ended and every line has
    /// been read (then see [`exit_status`](RemoteProcess::exit_status)).
    pub async fn next_line(&mut self) -> Option<String> {
        loop {
            match self.next_event().await? {
                ProcessEvent::Stdout(line) => return Some(line),
                ProcessEvent::Stderr(_) => {}
                ProcessEvent::Exited(_) => return None,
            }
        }
    }

    /// Sends `sig` to the process's group (out of band, with a `kill` over the same connection).
    pub async fn signal(&self, sig: Signal) -> Result<(), SshError> {
        signal_shared(&self.session, std::slice::from_ref(&self.shared), sig).await
    }

    /// Waits for the end, discarding output not yet read.
    pub async fn wait(&mut self) -> RemoteExit {
        while let Some(ev) = self.next_event().await {
            if let ProcessEvent::Exited(s) = ev {
                return s;
            }
        }
        self.exit_status().unwrap_or(RemoteExit::Unknown)
    }

    /// Stops it: TERM to its process group; KILL if it is still running after `grace`; then
    /// closes the channel. Output not yet read is discarded. Returns how it ended.
    pub async fn stop(mut self, grace: Duration) -> Result<RemoteExit, SshError> {
        self.finished = true;
        let procs = [self.shared.clone()];
        let session = self.session.clone();
        let stopping = stop_shared(&session, &procs, grace);
        tokio::pin!(stopping);
        // Drain events meanwhile so the reader never blocks on a full queue.
        loop {
            tokio::select! {
                _ = &mut stopping => break,
                ev = self.events.recv() => if ev.is_none() { (&mut stopping).await; break; },
            }
        }
        Ok(self.exit_status().unwrap_or(RemoteExit::Unknown))
    }

    /// Closes the channel without signalling: the remote supervisor then sends TERM, and KILL
    /// 5 s later if needed. Returns at once.
    pub async fn close(mut self) {
        self.finished = true;
        self.shared.close_channel().await;
    }
}

impl Drop for RemoteProcess {
    fn drop(&mut self) {
        if self.finished || self.shared.finished() {
            return;
        }
        // Stop it in the background when a runtime is there; the supervisor stops it anyway
        // once the channel or the connection closes.
        let session = self.session.clone();
        let shared = self.shared.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { stop_shared(&session, &[shared], Duration::from_secs(2)).await });
        }
    }
}
