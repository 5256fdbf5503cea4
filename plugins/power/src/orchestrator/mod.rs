//! `orchestrator`: power samples from the Orchestrator Pi's SQLite telemetry database, read over
//! SSH with the `sqlite3` command line tool (`orchestrator-sqlite.md`).
//!
//! Two modes:
//!
//! - **`tail`** (default; `epi monitor --host`): from the newest row at `open`, polls every
//!   `poll_interval_ms` for rows with a larger `id` and delivers them as they are written.
//! - **`window`** (`epi trace pull`): the rows whose `ts_utc_ms` lies in `[start, end)`, in pages
//!   of `batch_rows`, then the source ends.
//!
//! The database is live (WAL). Every read is one `sqlite3 -readonly` invocation whose statements
//! run inside one read transaction (`BEGIN; …; COMMIT;`), so it sees one consistent snapshot and
//! never a torn page; the file's bytes are never copied. Table and column names are checked to be
//! plain identifiers (`[A-Za-z_][A-Za-z0-9_]*`) and double-quoted; the only other values in the
//! SQL are integers this module formatted itself. Every argument of the remote command is quoted
//! by [`epi_ssh`], which also verifies the host key against known_hosts.
//!
//! Clocks (`measurement-methodology.md` §5): the Orchestrator's clock offset is measured at
//! `open` and at the end (round-trip midpoint of a remote `date +%s%N`, the tightest of
//! `clock_probes` tries), recorded in [`SourceInfo::details`] (`clock_offset_start`,
//! `clock_offset_end`, `clock_drift_ms`) and as `clock-offset` events, and the start offset is
//! applied: a sample's timeline time is `t_ms = ts_utc_ms − offset − timeline_zero_utc_ms`, where
//! the zero is the window start (window) or the host UTC at `open` (tail). `source_t_ms` keeps the
//! Orchestrator's own `ts_utc_ms`; `host_mono_ms`/`host_utc_ms` are when the row reached this
//! host. `energy_j` is the meter's `wh` counter in joules, made continuous across counter resets.
//! `seq` gaps count lost samples per node; `seq` and `meter_t_ms` going back count a reboot.
//!
//! Layout: this module holds the configuration, its checks and the registration; `query` the
//! `sqlite3` command, the SQL and the parsing of its output; `samples` rows into samples (loss,
//! reboots, the energy counter); `source` the running source (open, window pages, tail polls,
//! clock offsets, [`SourceInfo`]).

use crate::host_time::HostClock;
use epi_core::power::PowerError;
use epi_core::registry::{parse_config, Factory, PluginConfig, PluginRegistration};
use epi_core::sample::{SourceEvent, SourceInfo, SourceStats};
use epi_core::PowerSource;
use epi_ssh::{ClockOffset, SshOptions, SshSession};
use samples::NodeState;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const KEY: &str = "orchestrator";

/// How the source reads.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Follow new rows as they are written (by `id`).
    #[default]
    Tail,
    /// Read the rows of `[start, end)` of `ts_utc_ms`, then end.
    Window,
}

/// A time given in the configuration: an RFC 3339 string (`2026-05-15T10:00:00Z`) or Unix epoch
/// milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum TimeSpec {
    /// Unix epoch milliseconds.
    EpochMs(i64),
    /// RFC 3339 text.
    Text(String),
}

impl TimeSpec {
    /// Unix epoch milliseconds; `field` names the key in the error.
    pub fn epoch_ms(&self, field: &str) -> Result<i64, String> {
        match self {
            TimeSpec::EpochMs(ms) => Ok(*ms),
            TimeSpec::Text(s) => parse_utc_ms(s).map_err(|e| format!("{field}: {e}")),
        }
    }
}

/// Parses an RFC 3339 time with a zone (`2026-05-15T10:00:00Z`, `2026-05-15T12:00:00+02:00`,
/// fractional seconds allowed) to Unix epoch milliseconds.
pub fn parse_utc_ms(text: &str) -> Result<i64, String> {
    let t = text.trim();
    chrono::DateTime::parse_from_rfc3339(t)
        .map(|d| d.timestamp_millis())
        .map_err(|e| {
            format!(
                "expected an RFC 3339 time with a zone, like 2026-05-15T10:00:00Z, found `{text}` ({e})"
            )
        })
}

/// Formats Unix epoch milliseconds as RFC 3339 UTC (`2026-05-15T10:00:00.000Z`).
pub fn format_utc_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// The names of the table's columns. Optional columns may be set to `""`: the table has none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Columns {
    /// Row id, increasing with every insert (`id`).
    pub id: String,
    /// Orchestrator UTC when the line arrived, epoch ms (`ts_utc_ms`).
    pub ts_utc_ms: String,
    /// The meter's `t_ms` (`meter_t_ms`; optional).
    pub meter_t_ms: String,
    /// The meter's `seq` (`seq`; optional).
    pub seq: String,
    /// Cluster node index (`node_id`).
    pub node_id: String,
    /// Real power, W (`watts_rms`).
    pub watts_rms: String,
    /// RMS voltage (`volts_rms`; optional).
    pub volts_rms: String,
    /// RMS current (`amps_rms`; optional).
    pub amps_rms: String,
    /// Power factor (`power_factor`; optional).
    pub power_factor: String,
    /// The IC's energy counter, Wh (`wh`; optional, values may be NULL).
    pub wh: String,
}

impl Default for Columns {
    fn default() -> Self {
        Columns {
            id: "id".into(),
            ts_utc_ms: "ts_utc_ms".into(),
            meter_t_ms: "meter_t_ms".into(),
            seq: "seq".into(),
            node_id: "node_id".into(),
            watts_rms: "watts_rms".into(),
            volts_rms: "volts_rms".into(),
            amps_rms: "amps_rms".into(),
            power_factor: "power_factor".into(),
            wh: "wh".into(),
        }
    }
}

impl Columns {
    /// (config key, column name, required), in the order rows are selected.
    fn roles(&self) -> [(&'static str, &str, bool); 10] {
        [
            ("id", &self.id, true),
            ("ts_utc_ms", &self.ts_utc_ms, true),
            ("node_id", &self.node_id, true),
            ("watts_rms", &self.watts_rms, true),
            ("volts_rms", &self.volts_rms, false),
            ("amps_rms", &self.amps_rms, false),
            ("power_factor", &self.power_factor, false),
            ("wh", &self.wh, false),
            ("meter_t_ms", &self.meter_t_ms, false),
            ("seq", &self.seq, false),
        ]
    }
}

fn default_port() -> u16 {
    22
}
fn default_db_path() -> String {
    "/home/pi/factory/telemetry.db".into()
}
fn default_table() -> String {
    "epi_power_traces".into()
}
fn default_poll_ms() -> u64 {
    500
}
fn default_batch_rows() -> usize {
    20_000
}
fn default_timeout_s() -> f64 {
    60.0
}
fn default_probes() -> usize {
    8
}
fn default_sqlite3() -> String {
    "sqlite3".into()
}

/// Settings of the `orchestrator` source (`[orchestrator]` in epi-bench.toml, or flags).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrchestratorConfig {
    /// The Orchestrator's host name or address.
    pub host: String,
    /// SSH user (default: `$USER`).
    #[serde(default)]
    pub user: Option<String>,
    /// SSH port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Private key file (default: ssh-agent, then `~/.ssh/id_*`).
    #[serde(default)]
    pub identity: Option<PathBuf>,
    /// known_hosts file (default `~/.ssh/known_hosts`).
    #[serde(default)]
    pub known_hosts: Option<PathBuf>,
    /// Record the Orchestrator's host key if known_hosts does not have it yet (a changed key is
    /// refused regardless).
    #[serde(default)]
    pub accept_new_host_key: bool,
    /// The database file on the Orchestrator.
    #[serde(default = "default_db_path")]
    pub db_path: String,
    /// The table of power rows.
    #[serde(default = "default_table")]
    pub power_table: String,
    /// Column names.
    #[serde(default)]
    pub columns: Columns,
    /// `tail` (default) or `window`.
    #[serde(default)]
    pub mode: Mode,
    /// Window start (inclusive), `window` mode.
    #[serde(default)]
    pub start: Option<TimeSpec>,
    /// Window end (exclusive), `window` mode.
    #[serde(default)]
    pub end: Option<TimeSpec>,
    /// How often `tail` asks for new rows, ms.
    #[serde(default = "default_poll_ms")]
    pub poll_interval_ms: u64,
    /// Most rows per query.
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
    /// Limit for one remote query, s.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
    /// Round trips per clock offset measurement.
    #[serde(default = "default_probes")]
    pub clock_probes: usize,
    /// The `sqlite3` program on the Orchestrator.
    #[serde(default = "default_sqlite3")]
    pub sqlite3: String,
}

/// Whether `name` is a plain SQL identifier: `[A-Za-z_][A-Za-z0-9_]*`, at most 64 characters.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 64
}

fn check_text(field: &str, value: &str, what: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{field}: expected {what}, found an empty string"));
    }
    if value.starts_with('-') {
        return Err(format!(
            "{field}: `{value}` starts with `-`, which a command would take for an option"
        ));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(format!(
            "{field}: {value:?} contains a control character (newline, tab, NUL, ...)"
        ));
    }
    Ok(())
}

/// The validated, resolved form of a configuration.
#[derive(Debug, Clone)]
struct Plan {
    ssh: SshOptions,
    window: Option<(i64, i64)>,
    timeout: Duration,
}

impl OrchestratorConfig {
    /// Checks every value and resolves the SSH options and window. No I/O.
    fn plan(&self) -> Result<Plan, String> {
        check_text("host", &self.host, "the Orchestrator's host name")?;
        if self.host.chars().any(char::is_whitespace) {
            return Err(format!("host: `{}` contains whitespace", self.host));
        }
        let user = match &self.user {
            Some(u) => u.clone(),
            None => std::env::var("USER")
                .ok()
                .filter(|u| !u.is_empty())
                .ok_or("user: not given and $USER is not set")?,
        };
        check_text("user", &user, "a user name")?;
        if self.port == 0 {
            return Err("port: expected 1-65535, found 0".into());
        }
        check_text("db_path", &self.db_path, "the database file's path")?;
        check_text("sqlite3", &self.sqlite3, "the sqlite3 program")?;
        if !is_identifier(&self.power_table) {
            return Err(format!(
                "power_table: `{}` is not a plain SQL identifier (letters, digits, _; not starting with a digit)",
                self.power_table
            ));
        }
        for (key, name, required) in self.columns.roles() {
            if name.is_empty() && !required {
                continue;
            }
            if !is_identifier(name) {
                return Err(format!(
                    "columns.{key}: `{name}` is not a plain SQL identifier (letters, digits, _; not starting with a digit){}",
                    if required { "" } else { "; use \"\" for a column the table does not have" }
                ));
            }
        }
        if self.poll_interval_ms < 50 {
            return Err(format!(
                "poll_interval_ms: expected at least 50, found {}",
                self.poll_interval_ms
            ));
        }
        if !(1..=1_000_000).contains(&self.batch_rows) {
            return Err(format!(
                "batch_rows: expected 1 to 1000000, found {}",
                self.batch_rows
            ));
        }
        if !(self.timeout_s.is_finite() && self.timeout_s > 0.0 && self.timeout_s <= 86_400.0) {
            return Err(format!(
                "timeout_s: expected seconds > 0, found {}",
                self.timeout_s
            ));
        }
        if !(1..=100).contains(&self.clock_probes) {
            return Err(format!(
                "clock_probes: expected 1 to 100, found {}",
                self.clock_probes
            ));
        }
        let window = match (self.mode, &self.start, &self.end) {
            (Mode::Window, Some(s), Some(e)) => {
                let (s, e) = (s.epoch_ms("start")?, e.epoch_ms("end")?);
                if s >= e {
                    return Err(format!(
                        "end: the window is empty: end {} is not after start {}",
                        format_utc_ms(e),
                        format_utc_ms(s)
                    ));
                }
                Some((s, e))
            }
            (Mode::Window, _, _) => {
                return Err("mode = \"window\" needs both `start` and `end`".into())
            }
            (Mode::Tail, None, None) => None,
            (Mode::Tail, _, _) => {
                return Err(
                    "start/end: only used with mode = \"window\" (tail follows new rows)".into(),
                )
            }
        };
        let mut ssh = SshOptions::new(self.host.clone(), user)
            .port(self.port)
            .accept_new_host_key(self.accept_new_host_key);
        if let Some(i) = &self.identity {
            ssh = ssh.identity(i);
        }
        if let Some(k) = &self.known_hosts {
            ssh = ssh.known_hosts(k);
        }
        Ok(Plan {
            ssh,
            window,
            timeout: Duration::from_secs_f64(self.timeout_s),
        })
    }
}

/// The `orchestrator` power source.
pub struct OrchestratorSource {
    config: OrchestratorConfig,
    plan: Plan,
    session: Option<SshSession>,
    clock: Option<HostClock>,
    offset_start: Option<ClockOffset>,
    offset_end: Option<ClockOffset>,
    zero_utc_ms: i64,
    info: Option<SourceInfo>,
    stats: SourceStats,
    nodes: BTreeMap<u32, NodeState>,
    channels: BTreeSet<u32>,
    /// Tail: the largest id delivered. Window: the (ts, id) of the last row delivered.
    cursor: (i64, i64),
    window_done: bool,
    ended: bool,
    next_poll: Option<tokio::time::Instant>,
    disconnected_since: Option<Instant>,
    pending_events: Vec<SourceEvent>,
}

impl std::fmt::Debug for OrchestratorSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrchestratorSource")
            .field("destination", &self.plan.ssh.destination())
            .field("db_path", &self.config.db_path)
            .field("mode", &self.config.mode)
            .finish()
    }
}

fn cfg_err(message: impl Into<String>) -> PowerError {
    PowerError::Config {
        source_key: KEY.into(),
        message: message.into(),
    }
}

fn io_err(message: impl Into<String>) -> PowerError {
    PowerError::Io {
        source_key: KEY.into(),
        message: message.into(),
    }
}

impl OrchestratorSource {
    /// Validates `config` (no I/O).
    pub fn new(config: OrchestratorConfig) -> Result<OrchestratorSource, PowerError> {
        let plan = config.plan().map_err(cfg_err)?;
        Ok(OrchestratorSource {
            config,
            plan,
            session: None,
            clock: None,
            offset_start: None,
            offset_end: None,
            zero_utc_ms: 0,
            info: None,
            stats: SourceStats::default(),
            nodes: BTreeMap::new(),
            channels: BTreeSet::new(),
            cursor: (0, 0),
            window_done: false,
            ended: false,
            next_poll: None,
            disconnected_since: None,
            pending_events: Vec::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &OrchestratorConfig {
        &self.config
    }

    /// Host UTC (epoch ms) at timeline zero: the window start, or the host time at `open`.
    pub fn timeline_zero_utc_ms(&self) -> i64 {
        self.zero_utc_ms
    }

    /// The clock offsets measured at the start and at the end (once measured).
    pub fn clock_offsets(&self) -> (Option<ClockOffset>, Option<ClockOffset>) {
        (self.offset_start, self.offset_end)
    }
}

fn build(config: &PluginConfig) -> Result<Box<dyn PowerSource>, epi_core::Error> {
    let c: OrchestratorConfig = parse_config(KEY, config)?;
    let source = OrchestratorSource::new(c).map_err(|e| epi_core::Error::Plugin {
        plugin: KEY.into(),
        message: match e {
            PowerError::Config { message, .. } => format!("configuration: {message}"),
            other => other.to_string(),
        },
    })?;
    Ok(Box::new(source))
}

impl epi_core::settings::PluginSettings for OrchestratorConfig {
    fn example() -> Self {
        epi_core::settings::example_from(
            serde_json::json!({"host": "orchestrator.local", "user": "pi", "db_path": "/home/pi/factory/telemetry.db"}),
        )
    }
}

epi_core::inventory::submit! {
    PluginRegistration {
        key: KEY,
        description: "Orchestrator Pi's SQLite telemetry over SSH (sqlite3 CLI, read transactions): tail live rows or pull a UTC window; clock offset measured and applied",
        factory: Factory::Power(build),
        settings: epi_core::settings::Settings::of::<OrchestratorConfig>,
        toml_aliases: &["orchestrator"],
        capabilities: &[epi_core::registry::Capability::PastWindow],
    }
}

mod query;
mod samples;
mod source;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(test)]
mod tests;
