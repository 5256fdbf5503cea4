//! The run engine: `epi profile` (a power source and a backend side by side, the paper's
//! protocol) and `epi eval` (the same without a power source) are one [`RunEngine`].
//!
//! In order ([`RunEngine::execute`], `measurement-methodology.md` §1–§8):
//! 1. the power source is opened and must deliver samples within a few seconds; from here to the
//!    end every sample goes to `power_trace.csv` as it arrives ([`recorder`]);
//! 2. the backend starts (model loading, weights sent to workers) — a marked phase of the trace,
//!    outside every energy window;
//! 3. warm-up queries (time and/or count), then the idle baseline: mean watts over `idle_s`;
//! 4. the suites, `repetitions` times; each query timed on the host monotonic clock and recorded
//!    as it finishes (`records.jsonl`, `records.arrow`);
//! 5. the trace is closed and every repetition's window attributed to its queries
//!    ([`attribution`]): gross and net, with coverage and the clock mapping;
//! 6. accuracy per suite and composite with 95 % intervals, EPI with its interval, EPT, IPJ, IPW
//!    per repetition; the median repetition is reported with the spread of all
//!    ([`report`]); `benchmark.json` and `epi.json` (what `epi calculate` writes for them) for
//!    the median repetition, so `epi validate <run dir>` passes.
//!
//! **The run directory** ([`RunDir`]): `power_trace.csv` (+ `.meta.json`), `records.jsonl`,
//! `records.arrow`, `benchmark.json`, `epi.json`, `summary.json`, `run.log`. `summary.json` is
//! written at the start with `status: running` and rewritten at the end; a run killed with
//! `kill -9` keeps `running`, which every reader treats as incomplete. Ctrl-C, a lost power source
//! or a dead backend end the run early: what was measured is attributed and written, the status
//! says `interrupted` / `failed`, and no benchmark result is written for it.
//!
//! **Failed queries** are not wrong answers: a suite's accuracy is over the answered items and
//! the failures are counted beside it; a run with failures is `incomplete` and gives no
//! benchmark result unless [`RunOptions::allow_failures`] says so.
#![deny(missing_docs)]

pub mod attribution;
pub mod calculator;
mod engine;
pub mod eval;
pub use epi_core::hardware;
pub mod observe;
pub mod recorder;
pub mod report;

pub use engine::{FailureKind, RunEngine, RunError, RunOutcome, RunPower, SuiteSpec};
pub use report::RunStatus;

use epi_core::error::Error;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The files of a run directory.
#[derive(Debug, Clone, PartialEq)]
pub struct RunDir {
    /// The directory.
    pub path: PathBuf,
}

impl RunDir {
    /// Creates the directory; refuses one that already holds a run (`summary.json`).
    pub fn create(path: impl AsRef<Path>) -> Result<RunDir, Error> {
        let path = path.as_ref().to_path_buf();
        if path.join("summary.json").exists() {
            return Err(Error::Invalid(format!(
                "{} already holds a run (summary.json): choose another output directory",
                path.display()
            )));
        }
        std::fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        Ok(RunDir { path })
    }

    /// `runs/<run-id>` under `parent`.
    pub fn under(parent: impl AsRef<Path>, run_id: &str) -> Result<RunDir, Error> {
        RunDir::create(parent.as_ref().join(run_id))
    }

    /// `power_trace.csv`.
    pub fn trace(&self) -> PathBuf {
        self.path.join("power_trace.csv")
    }
    /// `summary.json`.
    pub fn summary(&self) -> PathBuf {
        self.path.join("summary.json")
    }
    /// `benchmark.json`.
    pub fn benchmark(&self) -> PathBuf {
        self.path.join("benchmark.json")
    }
    /// `epi.json`.
    pub fn epi(&self) -> PathBuf {
        self.path.join("epi.json")
    }
    /// `run.log`.
    pub fn log(&self) -> PathBuf {
        self.path.join("run.log")
    }
    /// `records.jsonl`.
    pub fn records_jsonl(&self) -> PathBuf {
        self.path.join(epi_records::RECORDS_JSONL)
    }
    /// `records.arrow`.
    pub fn records_arrow(&self) -> PathBuf {
        self.path.join(epi_records::RECORDS_ARROW)
    }
}

/// A run id: UTC time and a short random suffix (`20261206T013000Z-3f2a9c`), sortable and unique.
pub fn new_run_id() -> String {
    let u = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        &u[..6]
    )
}

/// Warm-up before the measured part: queries and/or seconds (both reached when both are set).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Warmup {
    /// Seconds of warm-up queries (the paper: 300 s of thermal stabilisation).
    pub seconds: f64,
    /// At least this many warm-up queries.
    pub queries: usize,
}

/// Labels of the result: what the user says, or what was detected, or `unknown`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunLabels {
    /// Model identifier (default: what the server reports, else `unknown`).
    pub model: Option<String>,
    /// Quantization (default `unknown`).
    pub quantization: Option<String>,
    /// Surgery (default `none (baseline)`).
    pub surgery: Option<String>,
    /// Hardware (default: detected).
    pub hardware: Option<String>,
}

/// How a run goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunOptions {
    /// The command, for the files (`profile`, `eval`).
    pub command: String,
    /// Scoring and generation settings (its `run_id` is the run's).
    pub eval: crate::eval::EvalOptions,
    /// Repetitions of the measured part (≥ 1; the median is reported).
    pub repetitions: u32,
    /// Warm-up.
    pub warmup: Warmup,
    /// Idle baseline, s (0: none; needs a power source).
    pub idle_s: f64,
    /// Seconds the power source has to deliver its first samples, and the longest it may then
    /// stay silent before the run stops (a stalled or unplugged meter).
    pub first_sample_timeout_s: f64,
    /// Gap limit of the energy integration, ms.
    pub gap_limit_ms: f64,
    /// The energy's relative accuracy (`None`: the source's stated accuracy, else 2 %).
    pub energy_accuracy: Option<f64>,
    /// Give a benchmark result even when some queries failed (accuracy over the answered ones).
    pub allow_failures: bool,
    /// Labels.
    pub labels: RunLabels,
}

impl RunOptions {
    /// The paper's protocol (`measurement-methodology.md` §6): 3 repetitions, 300 s of
    /// warm-up, 30 s idle baseline.
    pub fn profile(run_id: &str) -> RunOptions {
        RunOptions {
            command: "profile".into(),
            eval: crate::eval::EvalOptions::new(run_id),
            repetitions: 3,
            warmup: Warmup {
                seconds: 300.0,
                queries: 0,
            },
            idle_s: 30.0,
            first_sample_timeout_s: 10.0,
            gap_limit_ms: 1000.0,
            energy_accuracy: None,
            allow_failures: false,
            labels: RunLabels::default(),
        }
    }

    /// An evaluation: one pass, no warm-up, no power.
    pub fn eval(run_id: &str) -> RunOptions {
        RunOptions {
            command: "eval".into(),
            repetitions: 1,
            warmup: Warmup {
                seconds: 0.0,
                queries: 0,
            },
            idle_s: 0.0,
            ..RunOptions::profile(run_id)
        }
    }
}
