//! What a run tells whoever watches it: phases, backend start-up, each finished query, live
//! power. `epi eval`, `epi profile` and `epi monitor` render these with one progress display
//! (bars on a terminal, plain lines otherwise); a library user can ignore them
//! ([`NullObserver`]) or log them. Observers must not block: they are called from the run.

use epi_core::backend::StartupProgress;

/// One thing that happened in a run.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEvent {
    /// A phase began (`power-source`, `backend-start`, `warmup`, `idle`, `measured`,
    /// `attribution`); `detail` says what it does.
    Phase {
        /// Phase name.
        name: String,
        /// What it does, for a status line.
        detail: String,
    },
    /// The backend is starting and waits for something.
    BackendWaiting(StartupProgress),
    /// A suite's items are about to run.
    SuiteStarted {
        /// Suite key.
        suite: String,
        /// Repetition (1-based), `None` outside profile runs.
        repetition: Option<u32>,
        /// Items planned.
        items: usize,
        /// `loglikelihood` or `generative`.
        mode: String,
        /// Queries in flight at once.
        concurrency: usize,
    },
    /// A query of the current suite finished.
    QueryDone {
        /// Suite key.
        suite: String,
        /// Items finished so far.
        done: usize,
        /// Items planned.
        total: usize,
        /// Correct so far (headline prediction).
        correct: usize,
        /// Answered so far (not failed).
        answered: usize,
        /// Failed so far.
        failed: usize,
    },
    /// A suite finished.
    SuiteDone {
        /// Suite key.
        suite: String,
        /// Headline accuracy, when the suite has one.
        accuracy: Option<f64>,
    },
    /// Live power: cluster watts now and joules since the recording began.
    Power {
        /// W.
        watts: f64,
        /// J.
        joules: f64,
    },
    /// Something the user should know that does not stop the run.
    Warning(String),
}

/// Receives [`RunEvent`]s.
pub trait RunObserver: Send + Sync {
    /// One event.
    fn event(&self, e: RunEvent);
}

/// Ignores every event.
pub struct NullObserver;

impl RunObserver for NullObserver {
    fn event(&self, _: RunEvent) {}
}
