//! [`SshError`]: why an SSH operation failed, each variant naming the server as `user@host:port`
//! and, where the user can act, saying what to do (the host key messages above all).

use crate::RemoteExit;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

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
