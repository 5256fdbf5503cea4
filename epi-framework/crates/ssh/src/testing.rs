//! Test support (cargo feature `test-support`): a real OpenSSH `sshd` on 127.0.0.1.
//!
//! [`Sshd::start`] generates a throw-away host key and user key with `ssh-keygen`, writes an
//! `sshd_config` (key authentication only, `StrictModes no`, `UsePAM no`), an `authorized_keys`
//! file and a `known_hosts` file for the client, and runs `/usr/sbin/sshd -D -e -f CONFIG` on a
//! free port as the current user (root included: `/run/sshd` is created when missing). Dropping
//! the `Sshd` kills the server and deletes its files.
//!
//! ```no_run
//! # async fn demo() {
//! use epi_ssh::testing::{require_tool, Sshd};
//! if !require_tool("sshd") { return; }
//! let sshd = Sshd::start().expect("start sshd");
//! let ssh = epi_ssh::SshSession::connect(&sshd.options()).await.unwrap();
//! # }
//! ```
//!
//! Plugin crates enable it as a dev-dependency:
//! `epi-framework = { workspace = true, features = ["test-support"] }`.

use crate::SshOptions;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The sshd binary used.
pub const SSHD: &str = "/usr/sbin/sshd";

/// Whether a system tool is installed (on `PATH`, or in `/usr/sbin`). When the environment
/// variable `EPI_REQUIRE_SYSTEM_TOOLS` is set (CI), a missing tool panics instead of returning
/// false, so that a test can never be skipped silently there.
pub fn require_tool(name: &str) -> bool {
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    let found = on_path || Path::new("/usr/sbin").join(name).is_file();
    if !found {
        assert!(
            std::env::var_os("EPI_REQUIRE_SYSTEM_TOOLS").is_none(),
            "{name} is required (EPI_REQUIRE_SYSTEM_TOOLS is set) but not installed: run .ci/setup"
        );
        eprintln!("skipping: {name} is not installed (run .ci/setup)");
    }
    found
}

/// The key types [`generate_key`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// ssh-ed25519.
    Ed25519,
    /// RSA, 3072 bits.
    Rsa,
}

/// Generates an unencrypted key pair with `ssh-keygen` at `path` (private) and `path.pub`.
pub fn generate_key(path: &Path, kind: KeyType) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(path.with_extension("pub"));
    let (t, bits): (&str, &[&str]) = match kind {
        KeyType::Ed25519 => ("ed25519", &[]),
        KeyType::Rsa => ("rsa", &["-b", "3072"]),
    };
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", t])
        .args(bits)
        .args(["-N", "", "-C", "epi-bench-test", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "ssh-keygen -t {t} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// The public key line (`type base64`) of a `.pub` file, without its comment.
pub fn public_key_line(pub_path: &Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(pub_path)?;
    let mut fields = text.split_ascii_whitespace();
    match (fields.next(), fields.next()) {
        (Some(t), Some(b)) => Ok(format!("{t} {b}")),
        _ => Err(std::io::Error::other(format!(
            "{}: not a public key",
            pub_path.display()
        ))),
    }
}

/// The current user's name.
pub fn current_user() -> std::io::Result<String> {
    let out = Command::new("id").arg("-un").output()?;
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || name.is_empty() {
        return Err(std::io::Error::other("`id -un` did not print a user name"));
    }
    Ok(name)
}

/// A running OpenSSH server on 127.0.0.1 that accepts the current user with [`Sshd::user_key`].
pub struct Sshd {
    dir: tempfile::TempDir,
    port: u16,
    user: String,
    child: Option<Child>,
}

impl Sshd {
    /// Generates keys (ed25519 host and user keys) and starts the server.
    pub fn start() -> std::io::Result<Sshd> {
        Sshd::start_with(KeyType::Ed25519, KeyType::Ed25519)
    }

    /// Generates a `host` key and a `user` key of the given types and starts the server.
    pub fn start_with(host: KeyType, user: KeyType) -> std::io::Result<Sshd> {
        let dir = tempfile::Builder::new().prefix("epi-sshd-").tempdir()?;
        let user_name = current_user()?;
        generate_key(&dir.path().join("host_key"), host)?;
        generate_key(&dir.path().join("user_key"), user)?;
        std::fs::copy(
            dir.path().join("user_key.pub"),
            dir.path().join("authorized_keys"),
        )?;
        ensure_privsep_dir()?;
        let mut sshd = Sshd {
            dir,
            port: 0,
            user: user_name,
            child: None,
        };
        sshd.launch(None)?;
        sshd.write_known_hosts()?;
        Ok(sshd)
    }

    fn config_text(&self, port: u16) -> String {
        let d = self.dir.path();
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nPidFile none\nAuthorizedKeysFile {ak}\n\
             StrictModes no\nUsePAM no\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nUseDNS no\nPrintMotd no\n\
             MaxSessions 64\nMaxStartups 64\nLogLevel VERBOSE\nAllowUsers {user}\n",
            host = d.join("host_key").display(),
            ak = d.join("authorized_keys").display(),
            user = self.user,
        )
    }

    /// Starts sshd on `port`, or on a free port (five tries, as another process may take it
    /// between the check and sshd's bind).
    fn launch(&mut self, port: Option<u16>) -> std::io::Result<()> {
        let mut last_err = String::new();
        let tries = if port.is_some() { 1 } else { 5 };
        for _ in 0..tries {
            let port = match port {
                Some(p) => p,
                None => free_port()?,
            };
            let config = self.dir.path().join("sshd_config");
            std::fs::write(&config, self.config_text(port))?;
            let log = std::fs::File::create(self.log_path())?;
            let mut child = Command::new(SSHD)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?;
            // A bound on a hang, not an expected speed: a loaded machine may take seconds.
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Some(status) = child.try_wait()? {
                    last_err = format!("sshd exited with {status}: {}", self.log());
                    break;
                }
                if TcpStream::connect_timeout(
                    &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                    Duration::from_millis(200),
                )
                .is_ok()
                    && self.log().contains("Server listening")
                {
                    self.port = port;
                    self.child = Some(child);
                    return Ok(());
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_err = format!("sshd did not listen within 60 s: {}", self.log());
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Err(std::io::Error::other(last_err))
    }

    fn write_known_hosts(&self) -> std::io::Result<()> {
        let line = public_key_line(&self.dir.path().join("host_key.pub"))?;
        std::fs::write(
            self.known_hosts(),
            format!("[127.0.0.1]:{} {line}\n", self.port),
        )
    }

    /// Stops the server, replaces its host key with a new one of type `kind`, and starts it
    /// again on the same port. The known_hosts file still records the old key, so clients now
    /// see a changed host key — the man-in-the-middle case.
    pub fn restart_with_new_host_key(&mut self, kind: KeyType) -> std::io::Result<()> {
        let port = self.port;
        self.kill();
        generate_key(&self.dir.path().join("host_key"), kind)?;
        self.launch(Some(port))
    }

    /// `127.0.0.1`.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user it accepts (the current user).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The directory holding its files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The private key that is authorized.
    pub fn user_key(&self) -> PathBuf {
        self.dir.path().join("user_key")
    }

    /// A known_hosts file that records this server's host key.
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    /// The server's public host key line (`type base64`).
    pub fn host_public_key(&self) -> std::io::Result<String> {
        public_key_line(&self.dir.path().join("host_key.pub"))
    }

    /// The host key's `SHA256:…` fingerprint, as `ssh-keygen -l` prints it.
    pub fn host_key_fingerprint(&self) -> std::io::Result<String> {
        let out = Command::new("ssh-keygen")
            .arg("-l")
            .arg("-f")
            .arg(self.dir.path().join("host_key.pub"))
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split_ascii_whitespace()
            .nth(1)
            .map(str::to_string)
            .ok_or_else(|| std::io::Error::other(format!("ssh-keygen -l printed `{text}`")))
    }

    /// Client options for this server: the user key, the known_hosts file, no agent.
    pub fn options(&self) -> SshOptions {
        let mut o = SshOptions::new(self.host(), self.user.clone())
            .port(self.port)
            .identity(self.user_key())
            .known_hosts(self.known_hosts());
        o.keepalive_interval = None;
        o
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("sshd.log")
    }

    /// What sshd logged so far (for assertion messages).
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.log_path()) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM: the listener exits; connections in progress end with their clients.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> std::io::Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(l.local_addr()?.port())
}

/// sshd needs its privilege-separation directory (`/run/sshd`) when it runs as root.
fn ensure_privsep_dir() -> std::io::Result<()> {
    let dir = Path::new("/run/sshd");
    if dir.is_dir() {
        return Ok(());
    }
    match std::fs::create_dir_all(dir) {
        Ok(()) => {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        }
        // Not root: sshd does not need it then.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Ok(()),
        Err(e) => Err(e),
    }
}
