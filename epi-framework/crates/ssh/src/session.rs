//! [`SshSession`]: one verified, authenticated connection — connecting (host key check, then
//! authentication, within the connect timeout), opening exec channels, closing.
//!
//! Connecting fails with the host key errors, [`SshError::Auth`], [`SshError::Connect`] or
//! [`SshError::Timeout`].

use crate::auth::authenticate;
use crate::host_key::{preferred_for, HandlerError, HostKeyCheck};
use crate::known_hosts;
use crate::process::ProcShared;
use crate::{HostKeyInfo, SshError, SshOptions};
use russh::{client, Disconnect};
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::timeout_at;

/// One authenticated SSH connection. Cheap to clone (all clones share the connection); the
/// connection closes when the last clone is dropped or [`SshSession::close`] is called.
#[derive(Clone)]
pub struct SshSession {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) handle: client::Handle<HostKeyCheck>,
    pub(crate) destination: String,
    pub(crate) host_key: HostKeyInfo,
    pub(crate) next_id: AtomicU64,
    pub(crate) live: Mutex<HashMap<u64, Arc<ProcShared>>>,
}

impl fmt::Debug for SshSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshSession")
            .field("destination", &self.inner.destination)
            .field("host_key", &self.inner.host_key)
            .finish()
    }
}

impl SshSession {
    /// Connects, verifies the host key and authenticates. See the crate documentation for the
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

    pub(crate) fn protocol(&self, what: &str, e: impl fmt::Display) -> SshError {
        SshError::Protocol {
            destination: self.inner.destination.clone(),
            message: format!("{what}: {e}"),
        }
    }

    pub(crate) fn timeout(&self, what: impl Into<String>, limit: Duration) -> SshError {
        SshError::Timeout {
            destination: self.inner.destination.clone(),
            what: what.into(),
            limit,
        }
    }

    pub(crate) async fn open_exec(
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

    /// Stops every spawned process (2 s grace) and disconnects.
    pub async fn close(&self) {
        self.stop_all(Duration::from_secs(2)).await;
        let _ = self
            .inner
            .handle
            .disconnect(Disconnect::ByApplication, "", "en")
            .await;
    }
}
