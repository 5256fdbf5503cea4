//! An SSH client for reaching other machines of a cluster: the Orchestrator Pi whose SQLite
//! database holds the power trace, and the nodes the distributed-llama backend starts workers on.
//!
//! Built on [`russh`]. What it guarantees:
//!
//! - **Host keys are verified** against an OpenSSH `known_hosts` file (default
//!   `~/.ssh/known_hosts`; plain, wildcard, hashed `|1|…` and `[host]:port` entries, `@revoked`
//!   markers). An unknown key is refused with a message naming the host, the key type and its
//!   SHA256 fingerprint, unless the caller set [`SshOptions::accept_new_host_key`] — then the key
//!   is appended to the file. A key that differs from a recorded one is **always** refused.
//! - **Key authentication** with an OpenSSH private key file (ed25519, ECDSA, RSA; unencrypted —
//!   load an encrypted key into `ssh-agent`) or with the keys of `ssh-agent` (`SSH_AUTH_SOCK`),
//!   then the default files `~/.ssh/id_ed25519`, `id_ecdsa`, `id_rsa`. No passwords.
//! - **Commands are argv, never strings**: every argument is POSIX-quoted with [`shell_quote`], so
//!   no argument can be split, expanded or turned into a second command by the remote shell.
//! - **Every remote process can be stopped**: commands run under a small POSIX `sh` supervisor
//!   that puts the process in its own process group (with `setsid` where the remote has it),
//!   reports its pid, forwards `TERM`/`INT`/`HUP`, and kills the group (TERM, then KILL after 5 s)
//!   as soon as the channel closes — whether the client closed it, timed out, was dropped, or
//!   the connection died. [`RemoteProcess::stop`] and [`SshSession::stop_all`] stop them
//!   explicitly; a `RemoteProcess` dropped while running is stopped in the background.
//! - **Remote clock offset** by the round-trip midpoint of `date +%s%N`
//!   ([`SshSession::clock_offset`]), the tightest of several tries, with its uncertainty.
//!
//! The remote side needs a POSIX login shell (sh, bash, dash, zsh — not fish or csh), `sh`,
//! `kill`, `cat` and `sleep`; `setsid` (util-linux) is used when present. One connection carries
//! at most `MaxSessions` (OpenSSH default 10) commands and processes at a time.
//!
//! ```no_run
//! # async fn demo() -> Result<(), epi_ssh::SshError> {
//! use epi_ssh::{SshOptions, SshSession};
//! use std::time::Duration;
//!
//! let opts = SshOptions::new("orchestrator.local", "pi").identity("/home/me/.ssh/id_ed25519");
//! let ssh = SshSession::connect(&opts).await?;
//! let out = ssh.run_checked(&["sqlite3", "-readonly", "/home/pi/factory/telemetry.db", "SELECT 1"],
//!                           Duration::from_secs(30)).await?;
//! assert_eq!(out.stdout_text().trim(), "1");
//!
//! let mut worker = ssh.spawn(&["dllama", "worker", "--port", "9998"]).await?;
//! while let Some(line) = worker.next_line().await {
//!     if line.contains("listening") { break; }
//! }
//! let offset = ssh.clock_offset(8).await?;   // remote − local, ms
//! worker.stop(Duration::from_secs(5)).await?; // TERM, then KILL after 5 s
//! ssh.close().await;
//! # let _ = offset; Ok(()) }
//! ```
#![deny(missing_docs)]

#[cfg(any(test, feature = "test-support"))]
pub mod testing;

pub mod known_hosts;

use epi_core::lines::{trim_cr, LineSplitter, Overlong, Piece};
use russh::client;
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey};
use russh::{ChannelMsg, Disconnect};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};
use tokio::time::timeout_at;

/// How to reach and authenticate to one SSH server.
#[derive(Debug, Clone, PartialEq)]
pub struct SshOptions {
    /// Host name or address.
    pub host: String,
    /// TCP port (22).
    pub port: u16,
    /// Remote user name.
    pub user: String,
    /// Private key file. When set, only this key is offered; when not, the agent's keys and
    /// then the default key files are.
    pub identity: Option<PathBuf>,
    /// The ssh-agent socket; `None`: `$SSH_AUTH_SOCK` when set.
    pub agent_socket: Option<PathBuf>,
    /// The known_hosts file; `None`: `~/.ssh/known_hosts`.
    pub known_hosts: Option<PathBuf>,
    /// Trust and record a host key the known_hosts file does not have yet. A key that differs
    /// from a recorded one is refused regardless.
    pub accept_new_host_key: bool,
    /// Limit for TCP connect, key exchange and authentication together.
    pub connect_timeout: Duration,
    /// Keep-alive interval (the connection is dropped after 3 unanswered); `None`: none.
    pub keepalive_interval: Option<Duration>,
}

impl SshOptions {
    /// Options for `user@host` on port 22 with the defaults: known_hosts checked, no new keys
    /// accepted, agent and default key files, 15 s connect timeout, 15 s keep-alive.
    pub fn new(host: impl Into<String>, user: impl Into<String>) -> SshOptions {
        SshOptions {
            host: host.into(),
            port: 22,
            user: user.into(),
            identity: None,
            agent_socket: None,
            known_hosts: None,
            accept_new_host_key: false,
            connect_timeout: Duration::from_secs(15),
            keepalive_interval: Some(Duration::from_secs(15)),
        }
    }

    /// Sets the port.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Authenticates with this private key file only (`~/` is expanded).
    pub fn identity(mut self, path: impl AsRef<Path>) -> Self {
        self.identity = Some(expand_home(path.as_ref()));
        self
    }

    /// Uses this ssh-agent socket instead of `$SSH_AUTH_SOCK`.
    pub fn agent_socket(mut self, path: impl AsRef<Path>) -> Self {
        self.agent_socket = Some(path.as_ref().to_path_buf());
        self
    }

    /// Checks host keys against this file (`~/` is expanded).
    pub fn known_hosts(mut self, path: impl AsRef<Path>) -> Self {
        self.known_hosts = Some(expand_home(path.as_ref()));
        self
    }

    /// Accepts (and records) a host key that is not yet known.
    pub fn accept_new_host_key(mut self, yes: bool) -> Self {
        self.accept_new_host_key = yes;
        self
    }

    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, limit: Duration) -> Self {
        self.connect_timeout = limit;
        self
    }

    /// `user@host:port`, as messages name the server.
    pub fn destination(&self) -> String {
        if self.host.contains(':') {
            format!("{}@[{}]:{}", self.user, self.host, self.port)
        } else {
            format!("{}@{}:{}", self.user, self.host, self.port)
        }
    }

    /// The known_hosts file that will be used.
    pub fn known_hosts_path(&self) -> Result<PathBuf, SshError> {
        match &self.known_hosts {
            Some(p) => Ok(p.clone()),
            None => known_hosts::default_path().ok_or_else(|| SshError::KnownHosts {
                path: PathBuf::from("~/.ssh/known_hosts"),
                message: "no home directory to find it in; give the known_hosts file explicitly"
                    .into(),
            }),
        }
    }
}

/// Expands a leading `~/` to the home directory.
pub fn expand_home(path: &Path) -> PathBuf {
    match (path.strip_prefix("~"), dirs::home_dir()) {
        (Ok(rest), Some(home)) => home.join(rest),
        _ => path.to_path_buf(),
    }
}

/// Why an SSH operation failed. Every variant names the server as `user@host:port`.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// The server could not be reached or the SSH handshake failed.
    #[error("{destination}: cannot connect: {message}")]
    Connect {
        /// `user@host:port`.
        destination: String,
        /// What failed.
        message: String,
    },
    /// The server's host key is not in the known_hosts file (and new keys are not accepted).
    #[error(
        "{destination}: host key verification failed: the server's {key_type} key {fingerprint} is not \
         in {known_hosts}. Check the fingerprint with the server's administrator (on the server: \
         `ssh-keygen -lf /etc/ssh/ssh_host_{short_type}_key.pub`), then pass the accept-new-host-key \
         option (`--accept-new-host-key`, `accept_new_host_key = true`) once to record it"
    )]
    HostKeyUnknown {
        /// `user@host:port`.
        destination: String,
        /// The key type (`ssh-ed25519`).
        key_type: String,
        /// Short type name for the server's file name (`ed25519`, `rsa`, `ecdsa`).
        short_type: String,
        /// `SHA256:…`.
        fingerprint: String,
        /// The file consulted.
        known_hosts: PathBuf,
    },
    /// The server presented a key different from the one recorded: refused always.
    #[error("{0}")]
    HostKeyChanged(Box<ChangedHostKey>),
    /// The presented key is marked `@revoked`.
    #[error("{destination}: the server's {key_type} key {fingerprint} is marked @revoked in {known_hosts}:{line}; refusing to connect")]
    HostKeyRevoked {
        /// `user@host:port`.
        destination: String,
        /// The key type.
        key_type: String,
        /// The key's fingerprint.
        fingerprint: String,
        /// The file.
        known_hosts: PathBuf,
        /// The `@revoked` line.
        line: u64,
    },
    /// The known_hosts file could not be read or written.
    #[error("known_hosts file {path}: {message}")]
    KnownHosts {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// A private key file could not be used.
    #[error("private key {path}: {message}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// The server accepted none of the keys offered.
    #[error("{destination}: authentication failed: the server accepted none of: {tried}")]
    Auth {
        /// `user@host:port`.
        destination: String,
        /// What was offered (key files and agent keys with their fingerprints), or why nothing was.
        tried: String,
    },
    /// An operation did not finish in time.
    #[error("{destination}: {what} did not finish within {limit:?}")]
    Timeout {
        /// `user@host:port`.
        destination: String,
        /// What was being done.
        what: String,
        /// The limit.
        limit: Duration,
    },
    /// A remote command could not be built from its arguments.
    #[error("remote command: {0}")]
    Command(String),
    /// A remote command ran and failed.
    #[error("{destination}: `{command}` failed ({status}){}", stderr_suffix(.stderr))]
    RemoteFailed {
        /// `user@host:port`.
        destination: String,
        /// The command, quoted as it was sent.
        command: String,
        /// How it ended.
        status: RemoteExit,
        /// The end of its standard error.
        stderr: String,
    },
    /// The connection or a channel failed.
    #[error("{destination}: {message}")]
    Protocol {
        /// `user@host:port`.
        destination: String,
        /// What failed.
        message: String,
    },
}

/// What [`SshError::HostKeyChanged`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedHostKey {
    /// `user@host:port`.
    pub destination: String,
    /// The presented key's type.
    pub key_type: String,
    /// The presented key's fingerprint.
    pub fingerprint: String,
    /// The file consulted.
    pub known_hosts: PathBuf,
    /// The line of the recorded key.
    pub line: u64,
    /// The recorded key's type.
    pub known_type: String,
    /// The recorded key's fingerprint.
    pub known_fingerprint: String,
    /// The host's name in known_hosts (`host` or `[host]:port`).
    pub pattern: String,
}

impl fmt::Display for ChangedHostKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: REMOTE HOST KEY CHANGED — refusing to connect. The server presented the {} key {}, but \
             {}:{} records the {} key {} for this host. Someone may be intercepting the connection, or \
             the host was reinstalled; if you are sure it was, remove the old entry with \
             `ssh-keygen -R '{}' -f {}` and connect again",
            self.destination,
            self.key_type,
            self.fingerprint,
            self.known_hosts.display(),
            self.line,
            self.known_type,
            self.known_fingerprint,
            self.pattern,
            self.known_hosts.display()
        )
    }
}

fn stderr_suffix(stderr: &str) -> String {
    let s = stderr.trim();
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

// ---------------------------------------------------------------------------------------------
// Quoting

/// Quotes one argument for a POSIX shell: returned unchanged when it consists only of characters
/// no shell treats specially (`A-Za-z0-9` and `_ - . / : @ % + ,`), otherwise wrapped in single
/// quotes with each `'` written as `'\''`. The empty string becomes `''`.
///
/// A NUL byte cannot be passed in an argument at all; [`command_line`] refuses it.
pub fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./:@%+,".contains(&b));
    if plain {
        return arg.to_string();
    }
    let mut out = String::with_capacity(arg.len() + 2);
    out.push('\'');
    for c in arg.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// Joins `argv` into one command line for a POSIX shell, each argument quoted with
/// [`shell_quote`]. Refuses an empty argv and arguments containing NUL.
pub fn command_line<S: AsRef<str>>(argv: &[S]) -> Result<String, SshError> {
    if argv.is_empty() {
        return Err(SshError::Command("empty argument list".into()));
    }
    let mut parts = Vec::with_capacity(argv.len());
    for (i, a) in argv.iter().enumerate() {
        let a = a.as_ref();
        if a.contains('\0') {
            return Err(SshError::Command(format!(
                "argument {i} contains a NUL byte, which cannot be passed"
            )));
        }
        parts.push(shell_quote(a));
    }
    Ok(parts.join(" "))
}

/// The supervisor every command runs under (`sh -c SUPERVISOR epi-ssh ARGV...`). It starts the
/// command in the background in its own session (`setsid`) with stdin from /dev/null, after the
/// child printed `EPI-SSH-PID <pid>` on stderr; forwards TERM/INT/HUP to the child's process
/// group; watches its own stdin (the SSH channel) and, when that ends, sends the group TERM and
/// 5 s later KILL; and exits with the child's status.
const SUPERVISOR: &str = r#"exec 3<&0
child='printf "EPI-SSH-PID %s\n" "$$" >&2; exec "$@"'
if command -v setsid >/dev/null 2>&1; then
  setsid sh -c "$child" epi-ssh-child "$@" </dev/null 3<&- &
else
  sh -c "$child" epi-ssh-child "$@" </dev/null 3<&- &
fi
c=$!
k() { kill -s "$1" -- "-$c" 2>/dev/null || kill -s "$1" "$c" 2>/dev/null; }
trap 'k TERM' TERM
trap 'k INT' INT
trap 'k HUP' HUP
{ cat <&3 >/dev/null 2>&1; k TERM; sleep 5; k KILL; } >/dev/null 2>&1 &
w=$!
exec 3<&-
wait "$c"; s=$?
while kill -0 "$c" 2>/dev/null; do wait "$c"; s=$?; done
kill "$w" 2>/dev/null
exit "$s""#;

const PID_MARKER: &str = "EPI-SSH-PID ";

/// The command line that runs `argv` under the supervisor.
pub(crate) fn supervised_command_line<S: AsRef<str>>(argv: &[S]) -> Result<String, SshError> {
    if argv.is_empty() {
        return Err(SshError::Command("empty argument list".into()));
    }
    let mut full: Vec<&str> = vec!["sh", "-c", SUPERVISOR, "epi-ssh"];
    full.extend(argv.iter().map(|a| a.as_ref()));
    Ok(format!("exec {}", command_line(&full)?))
}

// ---------------------------------------------------------------------------------------------
// Results

/// How a remote command ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoteExit {
    /// It exited with this status. A process killed by signal N shows as 128 + N, as in a shell.
    Code(u32),
    /// The remote shell itself was killed by a signal.
    Signal {
        /// Signal name (`TERM`, `KILL`, ...).
        name: String,
        /// Whether it dumped core.
        core_dumped: bool,
    },
    /// The channel closed without an exit status (the connection dropped, or the server refused
    /// to run the command).
    Unknown,
}

impl RemoteExit {
    /// Exited with status 0.
    pub fn success(&self) -> bool {
        matches!(self, RemoteExit::Code(0))
    }

    /// The exit code, when it exited.
    pub fn code(&self) -> Option<u32> {
        match self {
            RemoteExit::Code(c) => Some(*c),
            _ => None,
        }
    }
}

impl fmt::Display for RemoteExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoteExit::Code(c) if *c > 128 && *c < 160 => {
                write!(f, "exit status {c}, i.e. signal {}", c - 128)
            }
            RemoteExit::Code(c) => write!(f, "exit status {c}"),
            RemoteExit::Signal { name, core_dumped } => {
                write!(
                    f,
                    "killed by signal {name}{}",
                    if *core_dumped { " (core dumped)" } else { "" }
                )
            }
            RemoteExit::Unknown => write!(f, "no exit status: the channel closed"),
        }
    }
}

/// What a finished command printed, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// Standard output, raw.
    pub stdout: Vec<u8>,
    /// Standard error, raw (without the supervisor's pid line).
    pub stderr: Vec<u8>,
    /// How it ended.
    pub status: RemoteExit,
}

impl CommandOutput {
    /// Standard output as text (invalid UTF-8 replaced).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// Standard error as text (invalid UTF-8 replaced).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// The largest output [`SshSession::run`] collects from one command (stdout and stderr together).
pub const MAX_OUTPUT_BYTES: usize = 1 << 30;

/// The offset of a remote clock from the local one, measured over SSH.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClockOffset {
    /// Remote UTC minus local UTC, ms. A remote timestamp `r` is local time `r - offset_ms`.
    pub offset_ms: f64,
    /// Half the round trip of the probe used: the true offset lies within
    /// `offset_ms ± uncertainty_ms` (assuming the remote read its clock during the round trip).
    pub uncertainty_ms: f64,
    /// Round trip of the probe used, ms.
    pub round_trip_ms: f64,
    /// Probes made; the one with the shortest round trip was kept.
    pub probes: usize,
    /// Local UTC of the kept probe's midpoint, Unix epoch ms.
    pub measured_utc_ms: i64,
}

impl ClockOffset {
    /// Converts a remote UTC timestamp (ms) to local UTC (ms).
    pub fn to_local_ms(&self, remote_ms: f64) -> f64 {
        remote_ms - self.offset_ms
    }
}

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

/// The host key the server presented, as verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostKeyInfo {
    /// Key type (`ssh-ed25519`).
    pub key_type: String,
    /// `SHA256:…` fingerprint.
    pub fingerprint: String,
    /// True when the key was new and has just been recorded (accept-new-host-key).
    pub newly_recorded: bool,
}

// ---------------------------------------------------------------------------------------------
// Host key checking

#[derive(Debug)]
enum HandlerError {
    Ssh(russh::Error),
    Rejected(Box<SshError>),
}

impl From<russh::Error> for HandlerError {
    fn from(e: russh::Error) -> Self {
        HandlerError::Ssh(e)
    }
}

struct HostKeyCheck {
    host: String,
    port: u16,
    known_hosts: PathBuf,
    accept_new: bool,
    destination: String,
    verified: Arc<Mutex<Option<HostKeyInfo>>>,
}

fn short_type(key: &PublicKey) -> String {
    let t = key.algorithm().as_str().to_string();
    if t.contains("ed25519") {
        "ed25519".into()
    } else if t.contains("ecdsa") {
        "ecdsa".into()
    } else if t.contains("rsa") {
        "rsa".into()
    } else {
        t
    }
}

impl HostKeyCheck {
    fn decide(&self, key: &PublicKey) -> Result<HostKeyInfo, SshError> {
        let key_type = key.algorithm().as_str().to_string();
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let known = known_hosts::lookup(&self.known_hosts, &self.host, self.port).map_err(|e| {
            SshError::KnownHosts {
                path: self.known_hosts.clone(),
                message: e.to_string(),
            }
        })?;
        if let Some(r) = known
            .iter()
            .find(|k| k.revoked && k.key.key_data() == key.key_data())
        {
            return Err(SshError::HostKeyRevoked {
                destination: self.destination.clone(),
                key_type,
                fingerprint,
                known_hosts: self.known_hosts.clone(),
                line: r.line,
            });
        }
        let recorded: Vec<_> = known.iter().filter(|k| !k.revoked).collect();
        if recorded.iter().any(|k| k.key.key_data() == key.key_data()) {
            return Ok(HostKeyInfo {
                key_type,
                fingerprint,
                newly_recorded: false,
            });
        }
        if let Some(old) = recorded
            .iter()
            .find(|k| k.key.algorithm().as_str() == key_type)
            .or_else(|| recorded.first())
        {
            return Err(SshError::HostKeyChanged(Box::new(ChangedHostKey {
                destination: self.destination.clone(),
                key_type,
                fingerprint,
                known_hosts: self.known_hosts.clone(),
                line: old.line,
                known_type: old.key.algorithm().as_str().to_string(),
                known_fingerprint: old.key.fingerprint(HashAlg::Sha256).to_string(),
                pattern: known_hosts::host_pattern(&self.host, self.port),
            })));
        }
        if !self.accept_new {
            return Err(SshError::HostKeyUnknown {
                destination: self.destination.clone(),
                key_type,
                short_type: short_type(key),
                fingerprint,
                known_hosts: self.known_hosts.clone(),
            });
        }
        known_hosts::append(&self.known_hosts, &self.host, self.port, key).map_err(|e| {
            SshError::KnownHosts {
                path: self.known_hosts.clone(),
                message: format!("cannot record the new host key: {e}"),
            }
        })?;
        Ok(HostKeyInfo {
            key_type,
            fingerprint,
            newly_recorded: true,
        })
    }
}

impl client::Handler for HostKeyCheck {
    type Error = HandlerError;

    async fn check_server_key(
        &mut self,
        server_key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = match server_key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => key,
            russh::keys::PublicKeyOrCertificate::Certificate(_) => {
                return Err(HandlerError::Rejected(Box::new(SshError::Connect {
                    destination: self.destination.clone(),
                    message: "the server presented a host certificate; only plain host keys are supported".into(),
                })))
            }
        };
        match self.decide(key) {
            Ok(info) => {
                if let Ok(mut v) = self.verified.lock() {
                    *v = Some(info);
                }
                Ok(true)
            }
            Err(e) => Err(HandlerError::Rejected(Box::new(e))),
        }
    }
}

/// The preferred host key algorithms with those of the recorded keys first, so that a server
/// with several host keys presents the one known_hosts has (as OpenSSH does).
fn preferred_for(known: &[known_hosts::KnownKey]) -> russh::Preferred {
    use russh::keys::Algorithm;
    let mut preferred = russh::Preferred::default();
    let mut first: Vec<Algorithm> = Vec::new();
    for k in known.iter().filter(|k| !k.revoked) {
        let alg = k.key.algorithm();
        let candidates: Vec<Algorithm> = if alg.clone().is_rsa() {
            vec![
                Algorithm::Rsa {
                    hash: Some(HashAlg::Sha512),
                },
                Algorithm::Rsa {
                    hash: Some(HashAlg::Sha256),
                },
            ]
        } else {
            vec![alg]
        };
        for c in candidates {
            if preferred.key.contains(&c) && !first.contains(&c) {
                first.push(c);
            }
        }
    }
    if !first.is_empty() {
        let rest: Vec<Algorithm> = preferred
            .key
            .iter()
            .filter(|a| !first.contains(a))
            .cloned()
            .collect();
        first.extend(rest);
        preferred.key = first.into();
    }
    preferred
}

// ---------------------------------------------------------------------------------------------
// Session

/// One authenticated SSH connection. Cheap to clone (all clones share the connection); the
/// connection closes when the last clone is dropped or [`SshSession::close`] is called.
#[derive(Clone)]
pub struct SshSession {
    inner: Arc<Inner>,
}

struct Inner {
    handle: client::Handle<HostKeyCheck>,
    destination: String,
    host_key: HostKeyInfo,
    next_id: AtomicU64,
    live: Mutex<HashMap<u64, Arc<ProcShared>>>,
}

impl fmt::Debug for SshSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshSession")
            .field("destination", &self.inner.destination)
            .field("host_key", &self.inner.host_key)
            .finish()
    }
}

fn default_key_files() -> Vec<PathBuf> {
    match dirs::home_dir() {
        Some(h) => ["id_ed25519", "id_ecdsa", "id_rsa"]
            .iter()
            .map(|n| h.join(".ssh").join(n))
            .collect(),
        None => Vec::new(),
    }
}

/// Reads an unencrypted private key file (OpenSSH, PKCS#1 RSA or PKCS#8).
pub fn load_private_key(path: &Path) -> Result<russh::keys::PrivateKey, SshError> {
    let text = std::fs::read_to_string(path).map_err(|e| SshError::Key {
        path: path.to_path_buf(),
        message: format!("cannot read: {e}"),
    })?;
    russh::keys::decode_secret_key(&text, None).map_err(|e| SshError::Key {
        path: path.to_path_buf(),
        message: match e {
            russh::keys::Error::KeyIsEncrypted => {
                "the key is encrypted with a passphrase; load it into ssh-agent (`ssh-add KEY`) and leave the identity unset".into()
            }
            other => format!("not a usable private key ({other}); expected an OpenSSH private key (ed25519, ECDSA or RSA)"),
        },
    })
}

impl SshSession {
    /// Connects, verifies the host key and authenticates. See the module documentation for the
    /// host key policy and the order keys are offered in.
    pub async fn connect(opts: &SshOptions) -> Result<SshSession, SshError> {
        let destination = opts.destination();
        let known_hosts_path = opts.known_hosts_path()?;
        let known = known_hosts::lookup(&known_hosts_path, &opts.host, opts.port).map_err(|e| {
            SshError::KnownHosts {
                path: known_hosts_path.clone(),
                message: e.to_string(),
            }
        })?;
        let config = client::Config {
            preferred: preferred_for(&known),
            keepalive_interval: opts.keepalive_interval,
            keepalive_max: 3,
            nodelay: true,
            ..Default::default()
        };
        let verified = Arc::new(Mutex::new(None));
        let handler = HostKeyCheck {
            host: opts.host.clone(),
            port: opts.port,
            known_hosts: known_hosts_path,
            accept_new: opts.accept_new_host_key,
            destination: destination.clone(),
            verified: verified.clone(),
        };
        let deadline = tokio::time::Instant::now() + opts.connect_timeout;
        let timeout_err = |what: &str| SshError::Timeout {
            destination: destination.clone(),
            what: what.to_string(),
            limit: opts.connect_timeout,
        };
        let connecting =
            client::connect(Arc::new(config), (opts.host.as_str(), opts.port), handler);
        let mut handle = match timeout_at(deadline, connecting).await {
            Err(_) => return Err(timeout_err("connecting")),
            Ok(Err(HandlerError::Rejected(e))) => return Err(*e),
            Ok(Err(HandlerError::Ssh(e))) => {
                return Err(SshError::Connect {
                    destination,
                    message: e.to_string(),
                });
            }
            Ok(Ok(h)) => h,
        };
        let host_key = verified
            .lock()
            .ok()
            .and_then(|v| v.clone())
            .ok_or_else(|| SshError::Connect {
                destination: destination.clone(),
                message: "the server's host key was never checked".into(),
            })?;
        match timeout_at(deadline, authenticate(&mut handle, opts, &destination)).await {
            Err(_) => return Err(timeout_err("authentication")),
            Ok(r) => r?,
        }
        Ok(SshSession {
            inner: Arc::new(Inner {
                handle,
                destination,
                host_key,
                next_id: AtomicU64::new(1),
                live: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// `user@host:port`.
    pub fn destination(&self) -> &str {
        &self.inner.destination
    }

    /// The verified host key.
    pub fn host_key(&self) -> &HostKeyInfo {
        &self.inner.host_key
    }

    fn protocol(&self, what: &str, e: impl fmt::Display) -> SshError {
        SshError::Protocol {
            destination: self.inner.destination.clone(),
            message: format!("{what}: {e}"),
        }
    }

    fn timeout(&self, what: impl Into<String>, limit: Duration) -> SshError {
        SshError::Timeout {
            destination: self.inner.destination.clone(),
            what: what.into(),
            limit,
        }
    }

    async fn open_exec(
        &self,
        command: String,
        deadline: tokio::time::Instant,
        limit: Duration,
    ) -> Result<russh::Channel<client::Msg>, SshError> {
        let channel = match timeout_at(deadline, self.inner.handle.channel_open_session()).await {
            Err(_) => return Err(self.timeout("opening a channel", limit)),
            Ok(Err(e)) => {
                return Err(self.protocol(
                    "cannot open a session channel (too many at once? sshd allows MaxSessions, 10 by default)",
                    e,
                ))
            }
            Ok(Ok(c)) => c,
        };
        channel
            .exec(true, command)
            .await
            .map_err(|e| self.protocol("exec", e))?;
        Ok(channel)
    }

    /// Runs `argv` and collects its output, failing with [`SshError::Timeout`] when it has not
    /// finished within `limit` (the remote process is then killed: closing the channel makes the
    /// supervisor stop it). A non-zero exit is not an error here; see [`SshSession::run_checked`].
    pub async fn run<S: AsRef<str>>(
        &self,
        argv: &[S],
        limit: Duration,
    ) -> Result<CommandOutput, SshError> {
        let command = supervised_command_line(argv)?;
        let shown = command_line(argv)?;
        let deadline = tokio::time::Instant::now() + limit;
        let mut channel = self.open_exec(command, deadline, limit).await?;
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let mut status = RemoteExit::Unknown;
        loop {
            let msg = match timeout_at(deadline, channel.wait()).await {
                Err(_) => {
                    let _ = channel.close().await;
                    return Err(self.timeout(format!("`{shown}`"), limit));
                }
                Ok(None) => break,
                Ok(Some(m)) => m,
            };
            match msg {
                ChannelMsg::Data { data } => stdout.extend_from_slice(&data),
                ChannelMsg::ExtendedData { data, ext: 1 } => stderr.extend_from_slice(&data),
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
                ChannelMsg::Failure => {
                    let _ = channel.close().await;
                    return Err(self.protocol(
                        &format!("`{shown}`"),
                        "the server refused to run the command",
                    ));
                }
                ChannelMsg::Close => break,
                _ => {}
            }
            if stdout.len() + stderr.len() > MAX_OUTPUT_BYTES {
                let _ = channel.close().await;
                return Err(SshError::Command(format!(
                    "`{shown}` printed more than {MAX_OUTPUT_BYTES} bytes; ask for less at a time"
                )));
            }
        }
        let _ = channel.close().await;
        Ok(CommandOutput {
            stdout,
            stderr: strip_pid_line(&stderr),
            status,
        })
    }

    /// [`SshSession::run`], and a non-zero exit (or none) is [`SshError::RemoteFailed`] with the
    /// end of its standard error.
    pub async fn run_checked<S: AsRef<str>>(
        &self,
        argv: &[S],
        limit: Duration,
    ) -> Result<CommandOutput, SshError> {
        let out = self.run(argv, limit).await?;
        if out.status.success() {
            return Ok(out);
        }
        let err = out.stderr_text();
        let tail: String = {
            let lines: Vec<&str> = err.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        };
        Err(SshError::RemoteFailed {
            destination: self.inner.destination.clone(),
            command: command_line(argv)?,
            status: out.status,
            stderr: tail,
        })
    }

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

    /// Stops every spawned process (2 s grace) and disconnects.
    pub async fn close(&self) {
        self.stop_all(Duration::from_secs(2)).await;
        let _ = self
            .inner
            .handle
            .disconnect(Disconnect::ByApplication, "", "en")
            .await;
    }

    /// Measures the remote clock's offset: `probes` round trips of a remote `date +%s%N` over one
    /// channel, keeping the one with the shortest round trip; its midpoint is taken as the instant
    /// the remote read its clock. Needs GNU `date` (`%N`) on the remote.
    pub async fn clock_offset(&self, probes: usize) -> Result<ClockOffset, SshError> {
        let probes = probes.max(1);
        let limit = Duration::from_secs(10) + Duration::from_millis(500) * probes as u32;
        let deadline = tokio::time::Instant::now() + limit;
        let script = "while read -r _; do date +%s%N; done";
        let command = format!("exec {}", command_line(&["sh", "-c", script])?);
        let mut channel = self.open_exec(command, deadline, limit).await?;
        let mut best: Option<ClockOffset> = None;
        // Lines as they came, none cut: the probe fails on a line that is not a number.
        let mut splitter = LineSplitter::new(usize::MAX, Overlong::Cut);
        let mut lines: VecDeque<String> = VecDeque::new();
        let result: Result<(), SshError> = async {
            for _ in 0..probes {
                let t0_utc = utc_ns_now();
                let t0 = Instant::now();
                channel.data_bytes(&b"\n"[..]).await.map_err(|e| self.protocol("clock probe", e))?;
                let line = loop {
                    if let Some(line) = lines.pop_front() {
                        break line;
                    }
                    match timeout_at(deadline, channel.wait()).await {
                        Err(_) => return Err(self.timeout("measuring the clock offset", limit)),
                        Ok(None) | Ok(Some(ChannelMsg::Close)) | Ok(Some(ChannelMsg::Eof)) => {
                            return Err(self.protocol("clock probe", "the remote `date` loop ended"))
                        }
                        Ok(Some(ChannelMsg::Data { data })) => splitter.feed(&data, |piece| {
                            if let Piece::Line(line) | Piece::Cut(line) = piece {
                                lines.push_back(String::from_utf8_lossy(line).trim().to_string());
                            }
                        }),
                        Ok(Some(_)) => {}
                    }
                };
                let rtt_ns = t0.elapsed().as_nanos() as f64;
                let remote_ns: i128 = match line.parse::<i128>() {
                    Ok(v) if line.len() >= 19 && line.bytes().all(|b| b.is_ascii_digit()) => v,
                    _ => {
                        return Err(self.protocol(
                            "clock probe",
                            format!("remote `date +%s%N` printed `{line}`, not nanoseconds since the epoch (GNU date is needed; BusyBox date lacks %N)"),
                        ))
                    }
                };
                let mid_ns = t0_utc as f64 + rtt_ns / 2.0;
                let offset_ms = (remote_ns as f64 - mid_ns) / 1e6;
                let candidate = ClockOffset {
                    offset_ms,
                    uncertainty_ms: rtt_ns / 2e6,
                    round_trip_ms: rtt_ns / 1e6,
                    probes,
                    measured_utc_ms: (mid_ns / 1e6).round() as i64,
                };
                if best.is_none_or(|b| candidate.round_trip_ms < b.round_trip_ms) {
                    best = Some(candidate);
                }
            }
            Ok(())
        }
        .await;
        let _ = channel.eof().await;
        let _ = channel.close().await;
        result?;
        best.ok_or_else(|| self.protocol("clock probe", "no probe completed"))
    }
}

fn utc_ns_now() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

fn sig_name(sig: &russh::Sig) -> String {
    let s = format!("{sig:?}");
    match s
        .strip_prefix("Custom(\"")
        .and_then(|r| r.strip_suffix("\")"))
    {
        Some(inner) => inner.to_string(),
        None => s,
    }
}

fn strip_pid_line(stderr: &[u8]) -> Vec<u8> {
    if stderr.starts_with(PID_MARKER.as_bytes()) {
        match stderr.iter().position(|b| *b == b'\n') {
            Some(p) => stderr[p + 1..].to_vec(),
            None => Vec::new(),
        }
    } else {
        stderr.to_vec()
    }
}

async fn authenticate(
    handle: &mut client::Handle<HostKeyCheck>,
    opts: &SshOptions,
    destination: &str,
) -> Result<(), SshError> {
    let proto = |what: &str, e: &dyn fmt::Display| SshError::Protocol {
        destination: destination.to_string(),
        message: format!("{what}: {e}"),
    };
    let mut tried: Vec<String> = Vec::new();
    let key_files: Vec<(PathBuf, bool)> = match &opts.identity {
        Some(p) => vec![(p.clone(), true)],
        None => default_key_files()
            .into_iter()
            .filter(|p| p.is_file())
            .map(|p| (p, false))
            .collect(),
    };

    // ssh-agent first, unless a key file was named.
    if opts.identity.is_none() {
        let socket = opts
            .agent_socket
            .clone()
            .or_else(|| std::env::var_os("SSH_AUTH_SOCK").map(PathBuf::from));
        match socket {
            None => tried.push("no ssh-agent (SSH_AUTH_SOCK unset)".into()),
            Some(sock) => match russh::keys::agent::client::AgentClient::connect_uds(&sock).await {
                Err(e) => tried.push(format!("ssh-agent at {} unreachable ({e})", sock.display())),
                Ok(mut agent) => {
                    let identities = agent
                        .request_identities()
                        .await
                        .map_err(|e| proto("ssh-agent", &e))?;
                    if identities.is_empty() {
                        tried.push(format!(
                            "ssh-agent at {} (it holds no keys)",
                            sock.display()
                        ));
                    }
                    for identity in identities {
                        let key = identity.public_key().into_owned();
                        let hash = if key.algorithm().is_rsa() {
                            rsa_hash(handle).await
                        } else {
                            None
                        };
                        let label = format!(
                            "agent key {} {}",
                            key.algorithm().as_str(),
                            key.fingerprint(HashAlg::Sha256)
                        );
                        match handle
                            .authenticate_publickey_with(opts.user.clone(), key, hash, &mut agent)
                            .await
                        {
                            Ok(r) if r.success() => return Ok(()),
                            Ok(_) => tried.push(label),
                            Err(e) => tried.push(format!("{label} (agent error: {e})")),
                        }
                    }
                }
            },
        }
    }

    for (path, named) in key_files {
        let key = match load_private_key(&path) {
            Ok(k) => Arc::new(k),
            Err(e) if named => return Err(e),
            Err(e) => {
                tried.push(format!("{e} (skipped)"));
                continue;
            }
        };
        let hash = if key.algorithm().is_rsa() {
            rsa_hash(handle).await
        } else {
            None
        };
        let label = format!(
            "key file {} ({} {})",
            path.display(),
            key.algorithm().as_str(),
            key.fingerprint(HashAlg::Sha256)
        );
        let r = handle
            .authenticate_publickey(opts.user.clone(), PrivateKeyWithHashAlg::new(key, hash))
            .await
            .map_err(|e| proto("authentication", &e))?;
        if r.success() {
            return Ok(());
        }
        tried.push(label);
    }
    if tried.is_empty() {
        tried.push("nothing: no identity given, no ssh-agent, no ~/.ssh/id_* key files".into());
    }
    Err(SshError::Auth {
        destination: destination.to_string(),
        tried: format!("{} (as user `{}`)", tried.join("; "), opts.user),
    })
}

async fn rsa_hash(handle: &client::Handle<HostKeyCheck>) -> Option<HashAlg> {
    match handle.best_supported_rsa_hash().await {
        Ok(Some(h)) => h,
        // The server did not say (no EXT_INFO): every current OpenSSH accepts rsa-sha2-512.
        _ => Some(HashAlg::Sha512),
    }
}

// ---------------------------------------------------------------------------------------------
// Remote processes

struct ProcShared {
    id: u64,
    command: String,
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

#[cfg(test)]
mod tests;
