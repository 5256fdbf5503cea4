//! The epi-meter board on a real pseudo-terminal: [`Socat`] (the pty pair, as the emulator
//! starts it) and [`Board`] (protocol v1 lines written by the test; unplugged, replugged, stalled,
//! fed garbage). A board whose socat cannot start fails the test.

use super::lock;
use super::processes::signal_pid;
use crate::support::{have_python, have_tool, wait_for};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// socat relaying `links/meter` (the board's side) to `links/host` (what epi opens), started as
/// the emulator starts it; `transferring` turns true once the host side is open.
pub(crate) struct Socat {
    child: Child,
    transferring: Arc<AtomicBool>,
}

impl Socat {
    pub(crate) fn start(links: &Path) -> Socat {
        let mut child = Command::new("socat")
            .arg("-d")
            .arg("-d")
            .arg(format!(
                "pty,raw,echo=0,link={}",
                links.join("meter").display()
            ))
            .arg(format!(
                "pty,raw,echo=0,link={},wait-slave,pty-interval=0.02",
                links.join("host").display()
            ))
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start socat");
        let transferring = Arc::new(AtomicBool::new(false));
        let err = child.stderr.take().expect("socat stderr");
        let flag = transferring.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if line.contains("starting data transfer loop") {
                    flag.store(true, Ordering::SeqCst);
                }
            }
        });
        wait_for("socat's pty links", 60, || {
            (links.join("meter").exists() && links.join("host").exists()).then_some(())
        });
        Socat {
            child,
            transferring,
        }
    }

    pub(crate) fn stop(mut self) {
        signal_pid(self.child.id(), libc::SIGTERM);
        let _ = wait_for("socat to exit", 30, || self.child.try_wait().ok().flatten());
    }
}

/// What the board does at each 100 ms tick of its clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum BoardMode {
    /// Sends a sample line.
    Sampling,
    /// Its USB link is gone: it keeps sampling, and those samples are lost.
    Unplugged,
    /// Its firmware hangs: the port stays open and nothing more comes.
    Stalled,
}

#[derive(Default)]
pub(crate) struct BoardState {
    mode: Option<BoardMode>,
    port: Option<std::fs::File>,
    seq: u32,
    wh: [f64; 4],
    /// The watts of each channel of every sample written, in order.
    delivered: Vec<[f64; 4]>,
    /// Samples taken and never written (unplugged, or not reopened yet).
    lost: u64,
    quit: bool,
}

/// The epi-meter board (UART protocol v1, `epi-meter-uart.md`), written by the test into a real
/// pty pair from socat: a hello line, then every 100 ms of its clock a sample of 4 channels (w,
/// v, a, pf, var, wh with the IC's counter), the lines the emulator writes. Its clock starts when
/// the host opens the link. The test unplugs it (socat killed: the device node vanishes; the
/// board keeps sampling and those samples are lost), replugs it (socat started again on the same
/// path), stalls it (the port stays open, nothing more comes) or sends garbage.
pub(crate) struct Board {
    links: PathBuf,
    state: Arc<Mutex<BoardState>>,
    socat: Arc<Mutex<Option<Socat>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub(crate) const BOARD_PERIOD_MS: u64 = 100;

impl Board {
    pub(crate) fn start(dir: &Path) -> Board {
        let links = dir.join("link");
        std::fs::create_dir_all(&links).unwrap();
        let socat = Arc::new(Mutex::new(Some(Socat::start(&links))));
        let state = Arc::new(Mutex::new(BoardState {
            mode: Some(BoardMode::Sampling),
            wh: [0.35, 0.70, 1.05, 1.40],
            ..Default::default()
        }));
        let thread = {
            let (state, socat, meter) = (state.clone(), socat.clone(), links.join("meter"));
            std::thread::spawn(move || Board::run(&state, &socat, &meter))
        };
        Board {
            links,
            state,
            socat,
            thread: Some(thread),
        }
    }

    pub(crate) fn transferring(socat: &Mutex<Option<Socat>>) -> bool {
        lock(socat)
            .as_ref()
            .is_some_and(|s| s.transferring.load(Ordering::SeqCst))
    }

    pub(crate) fn run(state: &Mutex<BoardState>, socat: &Mutex<Option<Socat>>, meter: &Path) {
        // The clock starts when the host opens its side.
        loop {
            if lock(state).quit {
                return;
            }
            if Board::transferring(socat) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let start = Instant::now();
        let mut first = true;
        for k in 0u64.. {
            let due = start + Duration::from_millis(k * BOARD_PERIOD_MS);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let mut s = lock(state);
            if s.quit {
                return;
            }
            let watts: [f64; 4] = std::array::from_fn(|c| {
                let base = [12.5, 11.9, 30.2, 8.7][c];
                (base * (1.0 + 0.3 * ((k as f64) / (7.0 + c as f64)).sin()) * 100.0).round() / 100.0
            });
            for (wh, w) in s.wh.iter_mut().zip(watts) {
                *wh += w * BOARD_PERIOD_MS as f64 / 3.6e6;
            }
            let t_ms = 1000 + k * BOARD_PERIOD_MS;
            let seq = s.seq;
            s.seq = s.seq.wrapping_add(1);
            match s.mode {
                Some(BoardMode::Sampling) => {}
                Some(BoardMode::Unplugged) => {
                    s.lost += 1;
                    continue;
                }
                _ => continue,
            }
            if s.port.is_none() && Board::transferring(socat) {
                s.port = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NOCTTY)
                    .open(meter)
                    .ok();
            }
            let ch: Vec<String> = (0..4)
                .map(|c| {
                    let (w, v, pf) = (watts[c], 121.3, 0.99 - 0.01 * c as f64);
                    format!(
                        "{{\"node\":{c},\"w\":{w:.2},\"v\":{v:.2},\"a\":{:.4},\"pf\":{pf:.4},\"var\":{:.2},\"wh\":{:.6}}}",
                        w / (v * pf),
                        w * 0.07,
                        s.wh[c]
                    )
                })
                .collect();
            let mut text = String::new();
            if first {
                text.push_str("{\"type\":\"hello\",\"fw\":\"0.1.0\",\"board\":\"epi-meter v1.0\",\"channels\":4,\"rate_hz\":10,\"ic\":\"ATM90E26\"}\n");
            }
            text.push_str(&format!(
                "{{\"type\":\"sample\",\"seq\":{seq},\"t_ms\":{t_ms},\"ch\":[{}]}}\n",
                ch.join(",")
            ));
            let written = match s.port.as_mut() {
                Some(p) => p.write_all(text.as_bytes()).is_ok(),
                None => false,
            };
            if written {
                first = false;
                s.delivered.push(watts);
            } else {
                // Not open again yet after a replug, or gone (the host closed it at the end of a
                // run): the sample is lost.
                s.port = None;
                s.lost += 1;
            }
        }
    }

    /// The host side: what epi opens.
    pub(crate) fn port(&self) -> PathBuf {
        self.links.join("host")
    }

    /// Samples written so far.
    pub(crate) fn delivered(&self) -> usize {
        lock(&self.state).delivered.len()
    }

    /// The watts of every sample written so far.
    pub(crate) fn delivered_watts(&self) -> Vec<[f64; 4]> {
        lock(&self.state).delivered.clone()
    }

    /// Samples taken and never written (unplugged, or not reopened yet).
    pub(crate) fn lost(&self) -> u64 {
        lock(&self.state).lost
    }

    /// Unplugs the USB link. The board stops writing (what it samples from now on is lost),
    /// `host_read(n)` waits until the host has read the `n` samples written so far (the test
    /// watches the trace), then socat is killed and the device node vanishes.
    pub(crate) fn unplug(&self, host_read: impl FnOnce(usize)) {
        let written = {
            let mut s = lock(&self.state);
            s.mode = Some(BoardMode::Unplugged);
            s.delivered.len()
        };
        host_read(written);
        lock(&self.state).port = None;
        if let Some(socat) = lock(&self.socat).take() {
            socat.stop();
        }
        let host = self.port();
        wait_for("the device node to vanish", 30, || {
            (!host.exists()).then_some(())
        });
    }

    /// Plugs it back: socat again on the same path; the board writes once the host reopened it.
    pub(crate) fn replug(&self) {
        let socat = Socat::start(&self.links);
        *lock(&self.socat) = Some(socat);
        lock(&self.state).mode = Some(BoardMode::Sampling);
    }

    /// The firmware hangs: nothing more is written, the port stays open.
    pub(crate) fn stall(&self) {
        lock(&self.state).mode = Some(BoardMode::Stalled);
    }

    /// Writes `lines` lines of random bytes (some not UTF-8) and one line longer than the
    /// source's 64 KiB limit, between two samples; returns how many bad lines that is.
    pub(crate) fn garbage(&self, lines: usize) -> u64 {
        let mut s = lock(&self.state);
        let port = s.port.as_mut().expect("the board is connected");
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut burst = Vec::new();
        for _ in 0..lines {
            for _ in 0..40 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let b = (x >> 24) as u8;
                burst.push(if b == b'\n' { b'?' } else { b });
            }
            burst.extend_from_slice(b"\xff\xfe garbage\n");
        }
        burst.extend(std::iter::repeat_n(b'#', 100 * 1024));
        burst.push(b'\n');
        port.write_all(&burst).expect("write the garbage");
        lines as u64 + 1
    }
}

impl Drop for Board {
    fn drop(&mut self) {
        lock(&self.state).quit = true;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(s) = lock(&self.socat).take() {
            s.stop();
        }
    }
}

/// Whether the meter tests can run (socat and the Python doubles).
pub(crate) fn meter_ready() -> bool {
    have_tool("socat") && have_python()
}
