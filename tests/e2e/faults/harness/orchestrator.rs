//! The Orchestrator's side: [`Orchestrator`] (OpenSSH on loopback over its SQLite database,
//! killed with SIGKILL and restarted), [`MeterLogger`] (a thread logging samples into that
//! database as the Orchestrator does) and the check of SQLite's WAL for an open write
//! transaction. A component that cannot start fails the test, naming it.

use super::lock;
use super::processes::{argv, pgrep, process_tree, signal_pid};
use crate::support::{have_tool, wait_for};
use epi_framework::testing::Sshd;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub(crate) const ORCH_SCHEMA: &str = "CREATE TABLE epi_power_traces (
  id INTEGER PRIMARY KEY, ts_utc_ms INTEGER NOT NULL, meter_t_ms INTEGER, seq INTEGER,
  node_id INTEGER NOT NULL, watts_rms REAL NOT NULL, volts_rms REAL, amps_rms REAL,
  power_factor REAL, wh REAL);
CREATE INDEX epi_power_traces_ts ON epi_power_traces(ts_utc_ms);";

/// The watts a logged row carries: its sample's `seq`, readable back from the trace.
pub(crate) fn seq_watts(seq: i64, node: i64) -> f64 {
    10.0 + node as f64 + seq as f64 * 0.001
}

pub(crate) fn insert_sample(db: &rusqlite::Connection, seq: i64, ts: i64) {
    for node in 0..2i64 {
        db.execute(
            "INSERT INTO epi_power_traces (ts_utc_ms, meter_t_ms, seq, node_id, watts_rms, volts_rms, amps_rms, power_factor, wh)
             VALUES (?1, ?2, ?3, ?4, ?5, 121.0, 0.1, 0.99, ?6)",
            rusqlite::params![ts, seq * 100, seq, node, seq_watts(seq, node), seq as f64 / 36_000.0],
        )
        .unwrap();
    }
}

/// A real sshd on loopback and the Orchestrator's database (WAL) in `dir`, with the
/// `[orchestrator]` settings in `dir/epi-bench.toml`.
pub(crate) struct Orchestrator {
    sshd: Sshd,
    pub(crate) db: PathBuf,
    restarted: Mutex<Option<Child>>,
}

impl Orchestrator {
    pub(crate) fn start(dir: &Path, settings: &str) -> Option<Orchestrator> {
        if !have_tool("sshd") || !have_tool("ssh-keygen") || !have_tool("sqlite3") {
            return None;
        }
        let sshd = Sshd::start().expect("start sshd");
        let db = dir.join("telemetry.db");
        let c = rusqlite::Connection::open(&db).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.execute_batch(ORCH_SCHEMA).unwrap();
        std::fs::write(
            dir.join("epi-bench.toml"),
            format!(
                "[orchestrator]\ndb_path = {:?}\npower_table = \"epi_power_traces\"\n{settings}",
                db.to_str().unwrap()
            ),
        )
        .unwrap();
        Some(Orchestrator {
            sshd,
            db,
            restarted: Mutex::new(None),
        })
    }

    pub(crate) fn ssh_flags(&self) -> Vec<String> {
        argv(&[
            "--host",
            self.sshd.host(),
            "--user",
            self.sshd.user(),
            "--ssh-port",
            &self.sshd.port().to_string(),
            "--identity",
            self.sshd.user_key().to_str().unwrap(),
            "--known-hosts",
            self.sshd.known_hosts().to_str().unwrap(),
        ])
    }

    /// SIGKILL to every sshd process of this server: the listener and each connection's
    /// session process. The commands they started are left to what happens to them when their
    /// channel dies.
    pub(crate) fn kill_sshd(&self) {
        let config = self.sshd.dir().join("sshd_config");
        let listener: Vec<u32> = pgrep(config.to_str().unwrap())
            .iter()
            .filter_map(|l| l.split(':').next().and_then(|p| p.parse().ok()))
            .collect();
        assert!(!listener.is_empty(), "sshd is running");
        for root in listener {
            for (pid, comm) in process_tree(root) {
                if comm.starts_with("sshd") {
                    signal_pid(pid, libc::SIGKILL);
                }
            }
        }
        let port = self.sshd.port();
        wait_for("sshd to stop listening", 30, || {
            TcpStream::connect(("127.0.0.1", port))
                .is_err()
                .then_some(())
        });
    }

    /// sshd again, with its own configuration (same port, same host key): the machine is back.
    pub(crate) fn restart_sshd(&self) {
        let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("sshd");
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(self.sshd.dir().join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("restart sshd");
        let port = self.sshd.port();
        wait_for("sshd to listen again", 60, || {
            TcpStream::connect(("127.0.0.1", port))
                .is_ok()
                .then_some(())
        });
        *lock(&self.restarted) = Some(child);
    }

    /// Stops the sshd [`restart_sshd`](Self::restart_sshd) started.
    pub(crate) fn stop_restarted_sshd(&self) {
        if let Some(mut c) = lock(&self.restarted).take() {
            signal_pid(c.id(), libc::SIGTERM);
            let _ = c.wait();
        }
    }
}

impl Drop for Orchestrator {
    fn drop(&mut self) {
        if let Some(mut c) = lock(&self.restarted).take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The Orchestrator logging the meter into its database: a sample of 2 nodes every 100 ms, each
/// row's watts telling its `seq` ([`seq_watts`]); stopped on drop.
pub(crate) struct MeterLogger {
    stop: Arc<AtomicBool>,
    written: Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MeterLogger {
    pub(crate) fn start(db: &Path) -> MeterLogger {
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let thread = {
            let (db, stop, written) = (db.to_path_buf(), stop.clone(), written.clone());
            std::thread::spawn(move || {
                let c = rusqlite::Connection::open(&db).unwrap();
                c.busy_timeout(Duration::from_secs(10)).unwrap();
                let mut seq = 0i64;
                while !stop.load(Ordering::SeqCst) {
                    insert_sample(&c, seq, chrono::Utc::now().timestamp_millis());
                    seq += 1;
                    written.store(seq as usize, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        MeterLogger {
            stop,
            written,
            thread: Some(thread),
        }
    }

    /// Samples logged so far.
    pub(crate) fn written(&self) -> usize {
        self.written.load(Ordering::SeqCst)
    }

    /// Stops logging (and fails the test if the logger failed).
    pub(crate) fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("the logger thread");
        }
    }
}

impl Drop for MeterLogger {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The WAL file of `db` holds frames written after its last commit: a transaction is open and
/// has written pages (SQLite's WAL format: a 32-byte header, then frames of a 24-byte header,
/// whose bytes 4..8 are the database size after a commit frame and 0 otherwise, and a page).
pub(crate) fn wal_has_uncommitted_frames(db: &Path) -> bool {
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    let Ok(bytes) = std::fs::read(&wal) else {
        return false;
    };
    if bytes.len() < 32 {
        return false;
    }
    let page = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    let salt = &bytes[16..24];
    let mut at = 32;
    let mut uncommitted = false;
    while at + 24 + page <= bytes.len() {
        let frame = &bytes[at..at + 24];
        if &frame[8..16] != salt {
            break;
        }
        uncommitted = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]) == 0;
        at += 24 + page;
    }
    uncommitted
}
