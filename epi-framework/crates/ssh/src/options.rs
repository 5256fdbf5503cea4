//! How to reach one server: [`SshOptions`] (host, port, user, identity, agent, known_hosts, host
//! key policy, timeouts). Building options does no I/O and cannot fail; only
//! [`SshOptions::known_hosts_path`] fails, when no home directory holds the default file.

use crate::known_hosts;
use crate::SshError;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
