//! Host key checking during the handshake: the presented key against the known_hosts file
//! (see [`crate::known_hosts`]) — known: accepted; `@revoked`, or different from the recorded one:
//! refused always; unknown: refused unless new keys are accepted, then recorded. And the host key
//! algorithms offered with the recorded ones first.
//!
//! A refusal is [`SshError::HostKeyUnknown`], [`SshError::HostKeyChanged`] or
//! [`SshError::HostKeyRevoked`]; a known_hosts file that cannot be read or written is
//! [`SshError::KnownHosts`].

use crate::known_hosts;
use crate::{ChangedHostKey, SshError};
use russh::client;
use russh::keys::{HashAlg, PublicKey};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

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

#[derive(Debug)]
pub(crate) enum HandlerError {
    Ssh(russh::Error),
    Rejected(Box<SshError>),
}

impl From<russh::Error> for HandlerError {
    fn from(e: russh::Error) -> Self {
        HandlerError::Ssh(e)
    }
}

pub(crate) struct HostKeyCheck {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) known_hosts: PathBuf,
    pub(crate) accept_new: bool,
    pub(crate) destination: String,
    pub(crate) verified: Arc<Mutex<Option<HostKeyInfo>>>,
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
pub(crate) fn preferred_for(known: &[known_hosts::KnownKey]) -> russh::Preferred {
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
