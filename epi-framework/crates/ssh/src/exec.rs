//! Remote commands: argv quoted for a POSIX shell ([`shell_quote`], [`command_line`]), the
//! supervisor every command runs under (it stops the remote process when the channel closes), and
//! [`SshSession::run`] / [`SshSession::run_checked`], which run one command to its end and collect
//! its output.
//!
//! Fails with [`SshError::Command`] (an argument that cannot be passed, too much output),
//! [`SshError::Timeout`] (the command is then killed), [`SshError::Protocol`] and, for
//! `run_checked`, [`SshError::RemoteFailed`].

use crate::{SshError, SshSession};
use russh::ChannelMsg;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;
use tokio::time::timeout_at;

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

pub(crate) const PID_MARKER: &str = "EPI-SSH-PID ";

/// The command line that runs `argv` under the supervisor.
pub(crate) fn supervised_command_line<S: AsRef<str>>(argv: &[S]) -> Result<String, SshError> {
    if argv.is_empty() {
        return Err(SshError::Command("empty argument list".into()));
    }
    let mut full: Vec<&str> = vec!["sh", "-c", SUPERVISOR, "epi-ssh"];
    full.extend(argv.iter().map(|a| a.as_ref()));
    Ok(format!("exec {}", command_line(&full)?))
}

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

impl SshSession {
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
}

pub(crate) fn sig_name(sig: &russh::Sig) -> String {
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
