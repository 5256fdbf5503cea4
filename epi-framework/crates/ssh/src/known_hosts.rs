//! OpenSSH `known_hosts` files: lookup (plain, wildcard, negated, hashed `|1|salt|hash` and
//! `[host]:port` entries, `@revoked` markers) and appending a newly accepted key.
//!
//! The format is the one `sshd(8)` documents under "SSH_KNOWN_HOSTS FILE FORMAT": one key per
//! line, `[marker] patterns keytype base64 [comment]`, fields separated by spaces or tabs,
//! `#` comments. A host on a port other than 22 is looked up as `[host]:port`.

use hmac::{Hmac, KeyInit, Mac};
use russh::keys::ssh_encoding::base64::{Base64, Encoding};
use russh::keys::PublicKey;
use sha1::Sha1;
use std::io::Write;
use std::path::{Path, PathBuf};

/// One `known_hosts` line that applies to the host looked up.
#[derive(Debug, Clone, PartialEq)]
pub struct KnownKey {
    /// 1-based line number in the file.
    pub line: u64,
    /// The recorded key.
    pub key: PublicKey,
    /// True for a `@revoked` line: this key must never be accepted.
    pub revoked: bool,
}

/// The name a host is recorded under: `host` on port 22, `[host]:port` otherwise (lower case, as
/// OpenSSH writes it).
pub fn host_pattern(host: &str, port: u16) -> String {
    let host = host.to_ascii_lowercase();
    if port == 22 {
        host
    } else {
        format!("[{host}]:{port}")
    }
}

/// The keys `path` records for `host`:`port`. A missing file records nothing; an unreadable one
/// is an error. Lines whose key cannot be parsed (an unknown key type) are skipped, as OpenSSH
/// does; `@cert-authority` lines are ignored (host certificates are not used).
pub fn lookup(path: &Path, host: &str, port: u16) -> std::io::Result<Vec<KnownKey>> {
    let text = match std::fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(lookup_in(&text, host, port))
}

/// [`lookup`] on the text of a file.
pub fn lookup_in(text: &str, host: &str, port: u16) -> Vec<KnownKey> {
    let name = host_pattern(host, port);
    let mut found = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_ascii_whitespace();
        let Some(mut first) = fields.next() else {
            continue;
        };
        let mut revoked = false;
        if first.starts_with('@') {
            match first {
                "@revoked" => revoked = true,
                _ => continue, // @cert-authority and unknown markers
            }
            let Some(next) = fields.next() else { continue };
            first = next;
        }
        let (Some(kind), Some(blob)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !patterns_match(first, &name) {
            continue;
        }
        let Ok(key) = PublicKey::from_openssh(&format!("{kind} {blob}")) else {
            continue;
        };
        found.push(KnownKey {
            line: i as u64 + 1,
            key,
            revoked,
        });
    }
    found
}

/// Whether a comma-separated pattern list matches `name`: a negated pattern (`!pat`) that matches
/// excludes the host whatever else matches; otherwise any matching pattern (with `*` and `?`
/// wildcards, or a hashed `|1|salt|hash`) makes it match.
fn patterns_match(list: &str, name: &str) -> bool {
    let mut matched = false;
    for pattern in list.split(',') {
        if let Some(negated) = pattern.strip_prefix('!') {
            if wildcard_match(&negated.to_ascii_lowercase(), name) {
                return false;
            }
        } else if let Some(hashed) = pattern.strip_prefix("|1|") {
            matched |= hashed_match(hashed, name);
        } else {
            matched |= wildcard_match(&pattern.to_ascii_lowercase(), name);
        }
    }
    matched
}

/// `salt|hash` (both base64) matches when HMAC-SHA1(salt, name) = hash.
fn hashed_match(salt_and_hash: &str, name: &str) -> bool {
    let Some((salt, hash)) = salt_and_hash.split_once('|') else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (Base64::decode_vec(salt), Base64::decode_vec(hash)) else {
        return false;
    };
    let Ok(mac) = <Hmac<Sha1> as KeyInit>::new_from_slice(&salt) else {
        return false;
    };
    mac.chain_update(name.as_bytes())
        .verify_slice(&hash)
        .is_ok()
}

/// Glob match with `*` (any run) and `?` (one character).
fn wildcard_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(c) if *c == '?' || *c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Appends `host`:`port` with `key` to `path` (created with mode 0600, its directory with 0700,
/// when missing), as one plain line `[host]:port keytype base64`.
pub fn append(path: &Path, host: &str, port: u16, key: &PublicKey) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let existing = std::fs::read(path).unwrap_or_default();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    let mut key = key.clone();
    key.set_comment("");
    let encoded = key
        .to_openssh()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut line = String::new();
    if existing.last().is_some_and(|b| *b != b'\n') {
        line.push('\n');
    }
    line.push_str(&host_pattern(host, port));
    line.push(' ');
    line.push_str(encoded.trim());
    line.push('\n');
    // One write call: O_APPEND keeps concurrent appenders from interleaving inside a line.
    file.write_all(line.as_bytes())?;
    file.sync_all()
}

/// `~/.ssh/known_hosts`, when there is a home directory.
pub fn default_path() -> Option<PathBuf> {
    dirs::home_dir().map(|h| h.join(".ssh").join("known_hosts"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED1: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
    const ED2: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA6rWI3G1sz07DnfFlrouTcysQlj2P+jpNSOEWD9OJ3X";

    fn key(s: &str) -> PublicKey {
        PublicKey::from_openssh(s).unwrap()
    }

    #[test]
    fn plain_and_port_entries_match_only_their_port() {
        let text = format!("example.org {ED1}\n[example.org]:2222 {ED2}\n");
        let k22 = lookup_in(&text, "Example.ORG", 22);
        assert_eq!(k22.len(), 1);
        assert_eq!(k22[0].key.key_data(), key(ED1).key_data());
        assert_eq!(k22[0].line, 1);
        let k2222 = lookup_in(&text, "example.org", 2222);
        assert_eq!(k2222.len(), 1);
        assert_eq!(k2222[0].key.key_data(), key(ED2).key_data());
        assert_eq!(k2222[0].line, 2);
        assert!(lookup_in(&text, "example.org", 2223).is_empty());
        assert!(lookup_in(&text, "other.org", 22).is_empty());
    }

    #[test]
    fn hashed_entries_match() {
        // The form `ssh-keygen -H` writes: |1|base64(salt)|base64(HMAC-SHA1(salt, name)).
        let name = "[127.0.0.1]:2222";
        let salt = [7u8; 20];
        let mac = <Hmac<Sha1> as KeyInit>::new_from_slice(&salt)
            .unwrap()
            .chain_update(name.as_bytes());
        let hash = mac.finalize().into_bytes();
        let entry = format!(
            "|1|{}|{} {ED1}\n",
            Base64::encode_string(&salt),
            Base64::encode_string(&hash)
        );
        assert_eq!(lookup_in(&entry, "127.0.0.1", 2222).len(), 1);
        assert!(lookup_in(&entry, "127.0.0.1", 22).is_empty());
        assert!(lookup_in(&entry, "127.0.0.2", 2222).is_empty());
    }

    #[test]
    fn wildcards_negation_markers_and_comments() {
        let text = format!(
            "# comment\n\n*.lab,!bad.lab {ED1}\n@revoked  host.x\t{ED2} comment here\n@cert-authority * {ED2}\n"
        );
        assert_eq!(lookup_in(&text, "pi1.lab", 22).len(), 1);
        assert!(lookup_in(&text, "bad.lab", 22).is_empty());
        let r = lookup_in(&text, "host.x", 22);
        assert_eq!(r.len(), 1);
        assert!(r[0].revoked);
        assert_eq!(r[0].line, 4);
        assert!(wildcard_match("pi?.lab", "pi3.lab"));
        assert!(!wildcard_match("pi?.lab", "pi10.lab"));
        assert!(wildcard_match("*", ""));
        assert!(wildcard_match("a*b*c", "aXXbYYc"));
        assert!(!wildcard_match("a*b*c", "aXXbYY"));
    }

    #[test]
    fn unparsable_lines_are_skipped_not_fatal() {
        let text = format!("h ssh-ed25519 not-base64!!\nh {ED1}\nh\n");
        let k = lookup_in(&text, "h", 22);
        assert_eq!(k.len(), 1);
        assert_eq!(k[0].line, 2);
    }

    #[test]
    fn append_writes_a_line_lookup_finds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/known_hosts");
        append(&path, "127.0.0.1", 2200, &key(ED1)).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"# no newline")
            .unwrap();
        append(&path, "Host.Example", 22, &key(ED2)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with(&format!("[127.0.0.1]:2200 {ED1}\n")),
            "{text}"
        );
        assert!(
            text.ends_with(&format!("# no newline\nhost.example {ED2}\n")),
            "{text}"
        );
        assert_eq!(lookup(&path, "127.0.0.1", 2200).unwrap().len(), 1);
        assert_eq!(lookup(&path, "host.example", 22).unwrap().len(), 1);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(lookup(&dir.path().join("missing"), "h", 22)
            .unwrap()
            .is_empty());
    }
}
