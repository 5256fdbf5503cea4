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

// By concern: how to reach a server (options), connecting (session, host_key, auth), one-shot
// commands and their quoting (exec), long-running processes (process), the clock offset (clock).
mod auth;
mod clock;
mod error;
mod exec;
mod host_key;
pub mod known_hosts;
mod options;
mod process;
mod session;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;

pub use auth::load_private_key;
pub use clock::ClockOffset;
pub use error::{ChangedHostKey, SshError};
pub use exec::{command_line, shell_quote, CommandOutput, RemoteExit, MAX_OUTPUT_BYTES};
pub use host_key::HostKeyInfo;
pub use options::{expand_home, SshOptions};
pub use process::{ProcessEvent, RemoteProcess, Signal};
pub use session::SshSession;

#[cfg(test)]
mod tests;
