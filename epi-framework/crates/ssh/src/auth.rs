//! Authentication: the keys of ssh-agent, then the default key files — or only the named
//! identity — offered in turn ([`load_private_key`] reads one). No passwords.
//!
//! Fails with [`SshError::Auth`] listing every key offered, or [`SshError::Key`] when the named
//! identity cannot be used (encrypted: load it into ssh-agent).

use crate::host_key::HostKeyCheck;
use crate::{SshError, SshOptions};
use russh::client;
use russh::keys::{HashAlg, PrivateKeyWithHashAlg};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

pub(crate) async fn authenticate(
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
