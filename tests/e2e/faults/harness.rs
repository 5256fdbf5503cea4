//! The fault suite's harness: the real components it runs `epi` against and the means to break
//! them at a chosen moment — [`Board`] (the epi-meter board written into a real socat pty pair:
//! unplugged, replugged, stalled, fed garbage), [`Double`] (the replaying llama-server double,
//! frozen with SIGSTOP), [`FaultProxy`] (an HTTP proxy that answers llama-server's recorded 500,
//! cuts replies, or holds a request so the run waits mid-query), [`SmallDisk`] (a 256 KiB tmpfs
//! filled on demand), [`Orchestrator`] (OpenSSH on loopback over the Orchestrator's SQLite
//! database: sshd killed with SIGKILL and restarted), [`EpiRun`] (`epi` in the background, killed
//! if the test fails) and the process checks that nothing is left running.
//!
//! Every wait is on an observable event with a deadline that bounds a hang, never an expected
//! speed. A helper that cannot start its component fails the test, naming it.
//!
//! The parts: `processes` (signals, the process table, [`EpiRun`]), `board` ([`Socat`],
//! [`Board`]), `servers` ([`Double`], [`FaultProxy`]), `disk` ([`SmallDisk`]), `orchestrator`
//! ([`Orchestrator`], [`MeterLogger`], SQLite's WAL).

mod board;
mod disk;
mod orchestrator;
mod processes;
mod servers;

pub(super) use board::*;
pub(super) use disk::*;
pub(super) use orchestrator::*;
pub(super) use processes::*;
pub(super) use servers::*;
use std::sync::Mutex;

/// Locks `m`, also when a panicking thread poisoned it.
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
