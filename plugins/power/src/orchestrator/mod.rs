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

use crate::host_time::HostClock;
use epi_core::power::PowerError;
use epi_core::registry::{parse_config, Factory, PluginConfig, PluginRegistration};
use epi_core::sample::{
    ChannelInfo, EnergyMethod, PowerSample, SampleBatch, SourceEvent, SourceInfo, SourceStats,
};
use epi_core::PowerSource;
use epi_ssh::{ClockOffset, RemoteExit, SshError, SshOptions, SshSession};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const KEY: &str = "orchestrator";

/// How the source reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// Per-node stream state.
#[derive(Debug, Default, Clone)]
struct NodeState {
    last_seq: Option<u32>,
    last_meter_t: Option<i64>,
    last_wh_j: Option<f64>,
    /// Joules added to the counter so it stays continuous across resets.
    base_j: f64,
}

/// One row as read.
#[derive(Debug, Clone, PartialEq)]
struct DbRow {
    id: i64,
    ts: i64,
    node: u32,
    watts: f64,
    volts: Option<f64>,
    amps: Option<f64>,
    pf: Option<f64>,
    wh: Option<f64>,
    meter_t: Option<i64>,
    seq: Option<i64>,
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

/// A connection-level failure that a later poll may get past.
fn transient(e: &SshError) -> bool {
    match e {
        SshError::Connect { .. } | SshError::Timeout { .. } | SshError::Protocol { .. } => true,
        // The channel closed without an exit status: the connection dropped (sshd or the
        // machine went away) while the query ran.
        SshError::RemoteFailed {
            status: RemoteExit::Unknown,
            ..
        } => true,
        SshError::RemoteFailed { stderr, .. } => {
            let s = stderr.to_ascii_lowercase();
            s.contains("database is locked") || s.contains("busy")
        }
        _ => false,
    }
}

/// Parses one number cell: `N` is NULL, `X` a value of the wrong type.
fn cell_f64(cell: &str, field: &str) -> Result<Option<f64>, String> {
    match cell {
        "N" => Ok(None),
        "X" => Err(format!("{field}: not a number (text or blob)")),
        c => c
            .parse::<f64>()
            .map(Some)
            .map_err(|_| format!("{field}: `{c}` is not a number")),
    }
}

fn cell_i64(cell: &str, field: &str) -> Result<Option<i64>, String> {
    if let Ok(v) = cell.parse::<i64>() {
        return Ok(Some(v));
    }
    match cell_f64(cell, field)? {
        None => Ok(None),
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(f as i64)),
        Some(f) => Err(format!("{field}: expected an integer, found {f}")),
    }
}

fn required<T>(v: Option<T>, field: &str) -> Result<T, String> {
    v.ok_or_else(|| format!("{field}: NULL in a required column"))
}

/// Parses the cells after the `R` tag.
fn parse_row(cells: &[&str]) -> Result<DbRow, String> {
    if cells.len() != 10 {
        return Err(format!("expected 10 fields, found {}", cells.len()));
    }
    let id = required(cell_i64(cells[0], "id")?, "id")?;
    let ts = required(cell_i64(cells[1], "ts_utc_ms")?, "ts_utc_ms")?;
    let node = required(cell_i64(cells[2], "node_id")?, "node_id")?;
    let node = u32::try_from(node).map_err(|_| format!("node_id: {node} is not a node index"))?;
    let watts = required(cell_f64(cells[3], "watts_rms")?, "watts_rms")?;
    if !(watts.is_finite() && watts >= 0.0) {
        return Err(format!("watts_rms: {watts} is not a power (finite, ≥ 0)"));
    }
    let volts = cell_f64(cells[4], "volts_rms")?;
    let amps = cell_f64(cells[5], "amps_rms")?;
    // What the trace format accepts (a recorded trace must read back).
    for (field, v) in [("volts_rms", volts), ("amps_rms", amps)] {
        if let Some(v) = v.filter(|v| !(v.is_finite() && *v >= 0.0)) {
            return Err(format!("{field}: {v} is not a value ≥ 0 (finite)"));
        }
    }
    let pf = cell_f64(cells[6], "power_factor")?;
    if let Some(p) = pf {
        if !(0.0..=1.0).contains(&p) {
            return Err(format!("power_factor: {p} is outside 0 to 1"));
        }
    }
    let wh = cell_f64(cells[7], "wh")?;
    if let Some(w) = wh {
        // A counter reading: never negative, and finite in joules too.
        if !(w.is_finite() && w >= 0.0 && (w * 3600.0).is_finite()) {
            return Err(format!("wh: {w} is not an energy (finite, ≥ 0)"));
        }
    }
    Ok(DbRow {
        id,
        ts,
        node,
        watts,
        volts,
        amps,
        pf,
        wh,
        meter_t: cell_i64(cells[8], "meter_t_ms")?,
        seq: cell_i64(cells[9], "seq")?,
    })
}

/// `"name"`, for a name [`is_identifier`] accepted.
fn q(name: &str) -> String {
    format!("\"{name}\"")
}

/// The select list of a row: `'R'` and each column as a number, `'N'` (NULL) or `'X'` (wrong type).
fn select_list(columns: &Columns) -> String {
    let mut parts = vec!["'R'".to_string()];
    for (_, name, _) in columns.roles() {
        if name.is_empty() {
            parts.push("'N'".into());
        } else {
            let c = q(name);
            parts.push(format!(
                "CASE WHEN typeof({c}) IN ('integer','real') THEN quote({c}) WHEN typeof({c}) = 'null' THEN 'N' ELSE 'X' END"
            ));
        }
    }
    parts.join(", ")
}

/// What one read returned, by tag.
#[derive(Debug, Default)]
struct Reply {
    rows: Vec<Result<DbRow, String>>,
    tagged: BTreeMap<String, Vec<Vec<String>>>,
}

fn parse_reply(text: &str) -> Reply {
    let mut reply = Reply::default();
    for line in text.lines() {
        let cells: Vec<&str> = line.split(',').collect();
        match cells.split_first() {
            Some((&"R", rest)) => reply.rows.push(parse_row(rest)),
            Some((tag, rest)) => reply
                .tagged
                .entry(tag.to_string())
                .or_default()
                .push(rest.iter().map(|s| s.to_string()).collect()),
            None => {}
        }
    }
    reply
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

    fn mono_ms(&self) -> f64 {
        self.clock.map(|c| c.now().mono_ms).unwrap_or(0.0)
    }

    fn event(&self, kind: &str, detail: String) -> SourceEvent {
        SourceEvent {
            host_mono_ms: self.mono_ms(),
            kind: kind.into(),
            detail,
        }
    }

    fn ssh_err(&self, e: SshError) -> PowerError {
        io_err(e.to_string())
    }

    /// Runs `sql` in the remote sqlite3 (read-only; 5 s busy timeout) and returns its stdout.
    async fn query(&self, session: &SshSession, sql: &str) -> Result<String, SshError> {
        let argv = [
            self.config.sqlite3.as_str(),
            "-batch",
            "-bail",
            "-readonly",
            "-noheader",
            "-list",
            "-separator",
            ",",
            "-cmd",
            ".timeout 5000",
            self.config.db_path.as_str(),
            sql,
        ];
        let out = session.run_checked(&argv, self.plan.timeout).await?;
        Ok(out.stdout_text())
    }

    async fn connect(&self) -> Result<SshSession, SshError> {
        SshSession::connect(&self.plan.ssh).await
    }

    async fn measure_offset(&self, session: &SshSession) -> Result<ClockOffset, PowerError> {
        session
            .clock_offset(self.config.clock_probes)
            .await
            .map_err(|e| io_err(format!("measuring the Orchestrator's clock offset: {e}")))
    }

    fn table_clause(&self) -> String {
        q(&self.config.power_table)
    }

    /// Checks the table and columns exist; returns the absent optional columns (none: all
    /// configured ones must exist).
    fn check_schema(&self, reply: &Reply) -> Result<(), PowerError> {
        let have: BTreeSet<String> = reply
            .tagged
            .get("P")
            .map(|rows| rows.iter().filter_map(|r| r.first().cloned()).collect())
            .unwrap_or_default();
        let table = &self.config.power_table;
        let db = format!("{}:{}", self.plan.ssh.destination(), self.config.db_path);
        if have.is_empty() {
            let tables: Vec<String> = reply
                .tagged
                .get("S")
                .map(|rows| rows.iter().filter_map(|r| r.first().cloned()).collect())
                .unwrap_or_default();
            return Err(PowerError::Measurement {
                source_key: KEY.into(),
                message: format!(
                    "{db}: power_table: no table `{table}` (tables: {})",
                    if tables.is_empty() {
                        "none".to_string()
                    } else {
                        tables.join(", ")
                    }
                ),
            });
        }
        for (key, name, required) in self.config.columns.roles() {
            if name.is_empty() || have.contains(name) {
                continue;
            }
            return Err(PowerError::Measurement {
                source_key: KEY.into(),
                message: format!(
                    "{db}: columns.{key}: table `{table}` has no column `{name}` (columns: {}){}",
                    have.iter().cloned().collect::<Vec<_>>().join(", "),
                    if required {
                        ""
                    } else {
                        "; set it to \"\" if the table does not record it"
                    }
                ),
            });
        }
        Ok(())
    }

    fn build_info(&self, method: EnergyMethod, sqlite_version: &str, extra: Value) -> SourceInfo {
        let mut details = serde_json::Map::new();
        details.insert("destination".into(), json!(self.plan.ssh.destination()));
        details.insert("db_path".into(), json!(self.config.db_path));
        details.insert("power_table".into(), json!(self.config.power_table));
        details.insert(
            "columns".into(),
            serde_json::to_value(&self.config.columns).unwrap_or(Value::Null),
        );
        details.insert("mode".into(), json!(self.config.mode));
        details.insert("sqlite3_version".into(), json!(sqlite_version));
        if let Some(s) = &self.session {
            details.insert("host_key".into(), json!(s.host_key().fingerprint));
            details.insert("host_key_type".into(), json!(s.host_key().key_type));
        }
        if let Some((s, e)) = self.plan.window {
            details.insert("window_start".into(), json!(format_utc_ms(s)));
            details.insert("window_end".into(), json!(format_utc_ms(e)));
            details.insert("window_start_utc_ms".into(), json!(s));
            details.insert("window_end_utc_ms".into(), json!(e));
        }
        details.insert("timeline_zero_utc_ms".into(), json!(self.zero_utc_ms));
        // t_ms is host UTC (the Orchestrator's clock corrected by the measured offset) minus the
        // zero: runs map it to their clock through UTC, not through arrival times (polls lag).
        details.insert(epi_core::sample::TIMELINE_IS_HOST_UTC.into(), json!(true));
        if let Some(o) = &self.offset_start {
            details.insert("clock_offset_start".into(), json!(o));
            details.insert("clock_offset_applied_ms".into(), json!(o.offset_ms));
        }
        if let Some(o) = &self.offset_end {
            details.insert("clock_offset_end".into(), json!(o));
            if let Some(s) = &self.offset_start {
                details.insert("clock_drift_ms".into(), json!(o.offset_ms - s.offset_ms));
            }
        }
        if let Value::Object(m) = extra {
            details.extend(m);
        }
        SourceInfo {
            source: KEY.into(),
            method,
            instrument: format!(
                "epi-meter via Orchestrator SQLite ({}:{} table {})",
                self.plan.ssh.destination(),
                self.config.db_path,
                self.config.power_table
            ),
            sample_rate_hz: None,
            accuracy_rel: None,
            channels: self
                .channels
                .iter()
                .map(|n| ChannelInfo {
                    id: *n,
                    name: format!("node {n}"),
                    scope: "ac-inlet".into(),
                })
                .collect(),
            replay: self.config.mode == Mode::Window,
            details,
        }
    }

    /// Refreshes the info's offsets and channels (kept from `open` otherwise).
    fn refresh_info(&mut self) {
        let Some(old) = self.info.clone() else { return };
        let mut info = old.clone();
        info.channels = self
            .channels
            .iter()
            .map(|n| ChannelInfo {
                id: *n,
                name: format!("node {n}"),
                scope: "ac-inlet".into(),
            })
            .collect();
        if let Some(o) = &self.offset_end {
            info.details.insert("clock_offset_end".into(), json!(o));
            if let Some(s) = &self.offset_start {
                info.details
                    .insert("clock_drift_ms".into(), json!(o.offset_ms - s.offset_ms));
            }
        }
        self.info = Some(info);
    }

    fn offset_event(&self, which: &str, o: &ClockOffset) -> SourceEvent {
        self.event(
            "clock-offset",
            format!(
                "{which}: Orchestrator clock {:+.3} ms ± {:.3} ms from the host (round trip {:.3} ms, best of {})",
                o.offset_ms, o.uncertainty_ms, o.round_trip_ms, o.probes
            ),
        )
    }

    /// Turns rows into samples, updating loss, reboot and counter state.
    fn rows_to_samples(&mut self, rows: Vec<Result<DbRow, String>>) -> SampleBatch {
        let arrival = self.clock.map(|c| c.now());
        let offset = self.offset_start.map(|o| o.offset_ms).unwrap_or(0.0);
        let mut batch = SampleBatch::default();
        for row in rows {
            let row = match row {
                Ok(r) => r,
                Err(message) => {
                    self.stats.bad_lines += 1;
                    batch
                        .events
                        .push(self.event("bad-line", format!("row skipped: {message}")));
                    continue;
                }
            };
            let state = self.nodes.entry(row.node).or_default();
            let mut reboot = false;
            if let Some(seq) = row.seq {
                let seq = seq as u32; // the meter's u32, stored as an integer
                if let Some(last) = state.last_seq {
                    let diff = seq.wrapping_sub(last);
                    let back_in_time =
                        matches!((row.meter_t, state.last_meter_t), (Some(t), Some(l)) if t < l);
                    if diff == 0 {
                        // The same sample again: nothing lost.
                    } else if diff < (1 << 31) && !back_in_time {
                        let lost = u64::from(diff - 1);
                        if lost > 0 {
                            self.stats.lost_samples += lost;
                            batch.events.push(SourceEvent {
                                host_mono_ms: arrival.map(|a| a.mono_ms).unwrap_or(0.0),
                                kind: "lost-samples".into(),
                                detail: format!(
                                    "node {}: seq {last} → {seq}: {lost} sample(s) lost (row id {})",
                                    row.node, row.id
                                ),
                            });
                        }
                    } else {
                        reboot = true;
                    }
                }
                state.last_seq = Some(seq);
            }
            if let Some(t) = row.meter_t {
                if !reboot && row.seq.is_none() {
                    reboot = state.last_meter_t.is_some_and(|l| t < l);
                }
                state.last_meter_t = Some(t);
            }
            let mut counter_back = None;
            let energy_j = match (row.wh, state.last_wh_j) {
                (None, _) => None,
                (Some(wh), None) => {
                    state.last_wh_j = Some(wh * 3600.0);
                    Some(state.base_j + wh * 3600.0)
                }
                (Some(wh), Some(last)) => {
                    let j = wh * 3600.0;
                    if reboot || j < last * 0.5 {
                        // The counter restarted (meter reboot or reset): continue from where it was.
                        state.base_j += last;
                        state.last_wh_j = Some(j);
                        Some(state.base_j + j)
                    } else if j < last {
                        // A counter must not go back: this reading is held at the last value
                        // (the counter's monotone envelope) and reported.
                        counter_back = Some((last, j));
                        Some(state.base_j + last)
                    } else {
                        state.last_wh_j = Some(j);
                        Some(state.base_j + j)
                    }
                }
            };
            if let Some((last, j)) = counter_back {
                batch.events.push(SourceEvent {
                    host_mono_ms: arrival.map(|a| a.mono_ms).unwrap_or(0.0),
                    kind: "counter-went-back".into(),
                    detail: format!(
                        "node {}: wh went back from {} J to {j} J (row id {}); energy_j held at the last value",
                        row.node, last, row.id
                    ),
                });
            }
            if reboot {
                self.stats.reboots += 1;
                batch.events.push(SourceEvent {
                    host_mono_ms: arrival.map(|a| a.mono_ms).unwrap_or(0.0),
                    kind: "reboot".into(),
                    detail: format!(
                        "node {}: the meter's seq/t_ms went back (row id {}); energy counter continued",
                        row.node, row.id
                    ),
                });
            }
            self.channels.insert(row.node);
            batch.samples.push(PowerSample {
                channel: row.node,
                t_ms: row.ts as f64 - offset - self.zero_utc_ms as f64,
                host_mono_ms: arrival.map(|a| a.mono_ms).unwrap_or(0.0),
                host_utc_ms: arrival.map(|a| a.utc_ms).unwrap_or(0),
                source_t_ms: Some(row.ts as f64),
                watts: row.watts,
                volts: row.volts,
                amps: row.amps,
                power_factor: row.pf,
                energy_j,
            });
            self.stats.samples += 1;
        }
        batch
    }

    async fn open_inner(&mut self) -> Result<SourceInfo, PowerError> {
        let clock = HostClock::start();
        self.clock = Some(clock);
        let session = self.connect().await.map_err(|e| self.ssh_err(e))?;
        self.session = Some(session.clone());
        let offset = self.measure_offset(&session).await?;
        self.offset_start = Some(offset);
        self.pending_events
            .push(self.offset_event("start", &offset));

        let t = self.table_clause();
        let table_lit = format!("'{}'", self.config.power_table);
        let id = q(&self.config.columns.id);
        let ts = q(&self.config.columns.ts_utc_ms);
        let node = q(&self.config.columns.node_id);
        let schema = format!(
            "SELECT 'V', sqlite_version(); SELECT 'S', name FROM sqlite_master WHERE type = 'table'; \
             SELECT 'P', name FROM pragma_table_info({table_lit});"
        );
        let first = match self.query(&session, &format!("BEGIN; {schema} COMMIT;")).await {
            Ok(text) => parse_reply(&text),
            Err(SshError::RemoteFailed {
                status: RemoteExit::Code(126 | 127),
                stderr,
                ..
            }) => {
                return Err(io_err(format!(
                    "{}: cannot run `{}`: {} — install it on the Orchestrator (apt install sqlite3) or set `sqlite3` to its path",
                    self.plan.ssh.destination(),
                    self.config.sqlite3,
                    stderr.trim()
                )))
            }
            Err(e) => return Err(self.ssh_err(e)),
        };
        self.check_schema(&first)?;
        let sqlite_version = first
            .tagged
            .get("V")
            .and_then(|r| r.first())
            .and_then(|r| r.first())
            .cloned()
            .unwrap_or_default();

        let wh_present = !self.config.columns.wh.is_empty();
        let (sql, zero) = match self.plan.window {
            Some((s, e)) => {
                let wh_count = if wh_present {
                    format!("count({})", q(&self.config.columns.wh))
                } else {
                    "0".into()
                };
                (
                    format!(
                        "BEGIN; SELECT 'C', count(*), {wh_count} FROM {t} WHERE {ts} >= {s} AND {ts} < {e}; \
                         SELECT 'N', {node} FROM {t} WHERE {ts} >= {s} AND {ts} < {e} GROUP BY {node}; COMMIT;"
                    ),
                    s,
                )
            }
            None => {
                let wh_recent = if wh_present {
                    format!("count({})", q(&self.config.columns.wh))
                } else {
                    "0".into()
                };
                (
                    format!(
                        "BEGIN; SELECT 'M', coalesce(max({id}), 0) FROM {t}; \
                         SELECT 'C', count(*), {wh_recent} FROM (SELECT * FROM {t} ORDER BY {id} DESC LIMIT 1000); \
                         SELECT 'N', {node} FROM (SELECT {node} FROM {t} ORDER BY {id} DESC LIMIT 1000) GROUP BY {node}; COMMIT;"
                    ),
                    clock.zero_utc_ms(),
                )
            }
        };
        self.zero_utc_ms = zero;
        let reply = parse_reply(
            &self
                .query(&session, &sql)
                .await
                .map_err(|e| self.ssh_err(e))?,
        );
        let num = |tag: &str, i: usize| -> Option<i64> {
            reply
                .tagged
                .get(tag)
                .and_then(|r| r.first())
                .and_then(|r| r.get(i))
                .and_then(|c| c.parse().ok())
        };
        for row in reply.tagged.get("N").into_iter().flatten() {
            if let Some(n) = row.first().and_then(|c| c.parse::<u32>().ok()) {
                self.channels.insert(n);
            }
        }
        let rows = num("C", 0).unwrap_or(0);
        let wh_rows = num("C", 1).unwrap_or(0);
        let mut extra = serde_json::Map::new();
        match self.plan.window {
            Some((s, _)) => {
                // `ts > s − 1 OR (ts = s − 1 AND id > MAX)` is `ts >= s`: the first page.
                self.cursor = (s - 1, i64::MAX);
                extra.insert("rows_in_window".into(), json!(rows));
            }
            None => {
                self.cursor = (num("M", 0).unwrap_or(0), 0);
                extra.insert("first_id_after".into(), json!(self.cursor.0));
            }
        }
        let method = if wh_present && wh_rows > 0 && wh_rows == rows {
            EnergyMethod::Counter
        } else {
            EnergyMethod::Integrated
        };
        let info = self.build_info(method, &sqlite_version, Value::Object(extra));
        self.info = Some(info.clone());
        Ok(info)
    }

    async fn window_page(&mut self) -> Result<SampleBatch, PowerError> {
        let Some((s, e)) = self.plan.window else {
            return Ok(SampleBatch::default());
        };
        let session = match &self.session {
            Some(s) => s.clone(),
            None => return Err(io_err("not open")),
        };
        let t = self.table_clause();
        let ts = q(&self.config.columns.ts_utc_ms);
        let id = q(&self.config.columns.id);
        let (lt, lid) = self.cursor;
        let n = self.config.batch_rows;
        let sql = format!(
            "BEGIN; SELECT {} FROM {t} WHERE {ts} >= {s} AND {ts} < {e} AND ({ts} > {lt} OR ({ts} = {lt} AND {id} > {lid})) \
             ORDER BY {ts}, {id} LIMIT {n}; COMMIT;",
            select_list(&self.config.columns)
        );
        let reply = parse_reply(
            &self
                .query(&session, &sql)
                .await
                .map_err(|e| self.ssh_err(e))?,
        );
        let count = reply.rows.len();
        if let Some(Ok(last)) = reply.rows.iter().rev().find(|r| r.is_ok()) {
            self.cursor = (last.ts, last.id);
        } else if count > 0 {
            // A page of bad rows only: its ids are unknown, so stop rather than loop.
            return Err(PowerError::Measurement {
                source_key: KEY.into(),
                message: format!("{count} unreadable rows in a row; giving up"),
            });
        }
        let mut batch = self.rows_to_samples(reply.rows);
        if count < n {
            self.window_done = true;
            let end = self.measure_offset(&session).await?;
            self.offset_end = Some(end);
            batch.events.push(self.offset_event("end", &end));
            self.refresh_info();
        }
        Ok(batch)
    }

    async fn tail_poll(&mut self) -> Result<SampleBatch, PowerError> {
        let session = match &self.session {
            Some(s) => s.clone(),
            None => match self.connect().await {
                Ok(s) => {
                    self.session = Some(s.clone());
                    self.stats.reconnects += 1;
                    let gap = self
                        .disconnected_since
                        .take()
                        .map(|t| t.elapsed().as_secs_f64() * 1000.0)
                        .unwrap_or(0.0);
                    self.pending_events.push(self.event(
                        "reconnected",
                        format!(
                            "{} again after {gap:.0} ms; rows written meanwhile are read from the database, none lost",
                            self.plan.ssh.destination()
                        ),
                    ));
                    s
                }
                Err(e) if transient(&e) => {
                    return Ok(SampleBatch::default());
                }
                Err(e) => return Err(self.ssh_err(e)),
            },
        };
        let t = self.table_clause();
        let id = q(&self.config.columns.id);
        let last = self.cursor.0;
        let n = self.config.batch_rows;
        let sql = format!(
            "BEGIN; SELECT {} FROM {t} WHERE {id} > {last} ORDER BY {id} LIMIT {n}; COMMIT;",
            select_list(&self.config.columns)
        );
        match self.query(&session, &sql).await {
            Ok(text) => {
                let reply = parse_reply(&text);
                if let Some(Ok(r)) = reply.rows.iter().rev().find(|r| r.is_ok()) {
                    self.cursor.0 = r.id;
                } else if !reply.rows.is_empty() {
                    return Err(PowerError::Measurement {
                        source_key: KEY.into(),
                        message: format!(
                            "{} unreadable rows in a row; giving up",
                            reply.rows.len()
                        ),
                    });
                }
                Ok(self.rows_to_samples(reply.rows))
            }
            Err(e) if transient(&e) => {
                self.session = None;
                self.disconnected_since = Some(Instant::now());
                self.pending_events
                    .push(self.event("disconnected", format!("{e}; retrying")));
                Ok(SampleBatch::default())
            }
            Err(e) => Err(self.ssh_err(e)),
        }
    }
}

#[epi_core::async_trait]
impl PowerSource for OrchestratorSource {
    async fn open(&mut self) -> Result<SourceInfo, PowerError> {
        let r = self.open_inner().await;
        if r.is_err() {
            if let Some(s) = self.session.take() {
                s.close().await;
            }
        }
        r
    }

    async fn next_batch(&mut self) -> Result<Option<SampleBatch>, PowerError> {
        if self.info.is_none() {
            return Err(io_err("next_batch before open"));
        }
        if self.ended {
            return Ok(None);
        }
        if self.plan.window.is_some() {
            if self.window_done {
                self.ended = true;
                return Ok(None);
            }
            let mut batch = self.window_page().await?;
            let mut events = std::mem::take(&mut self.pending_events);
            events.append(&mut batch.events);
            batch.events = events;
            return Ok(Some(batch));
        }
        // Tail: poll until rows arrive, returning at least once a second (an empty batch) so a
        // caller without a select loop still gets control back.
        let give_back = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            let now = tokio::time::Instant::now();
            let due = self.next_poll.unwrap_or(now);
            if due > now {
                tokio::time::sleep_until(due.min(give_back)).await;
                if due > give_back {
                    let events = std::mem::take(&mut self.pending_events);
                    return Ok(Some(SampleBatch {
                        samples: Vec::new(),
                        events,
                    }));
                }
            }
            self.next_poll = Some(
                tokio::time::Instant::now() + Duration::from_millis(self.config.poll_interval_ms),
            );
            let mut batch = self.tail_poll().await?;
            // A full page: more are waiting, ask again at once.
            if batch.samples.len() >= self.config.batch_rows {
                self.next_poll = None;
            }
            if !batch.samples.is_empty()
                || !batch.events.is_empty()
                || !self.pending_events.is_empty()
                || tokio::time::Instant::now() >= give_back
            {
                let mut events = std::mem::take(&mut self.pending_events);
                events.append(&mut batch.events);
                batch.events = events;
                return Ok(Some(batch));
            }
        }
    }

    fn stats(&self) -> SourceStats {
        self.stats.clone()
    }

    fn current_info(&self) -> Option<SourceInfo> {
        self.info.clone()
    }

    async fn close(&mut self) -> Result<(), PowerError> {
        let mut result = Ok(());
        if let Some(session) = self.session.take() {
            if self.offset_end.is_none() {
                match self.measure_offset(&session).await {
                    Ok(o) => {
                        self.offset_end = Some(o);
                        self.refresh_info();
                    }
                    Err(e) => result = Err(e),
                }
            }
            session.close().await;
        }
        self.ended = true;
        result
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

epi_core::inventory::submit! {
    PluginRegistration {
        key: KEY,
        description: "Orchestrator Pi's SQLite telemetry over SSH (sqlite3 CLI, read transactions): tail live rows or pull a UTC window; clock offset measured and applied",
        factory: Factory::Power(build),
    }
}

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(test)]
mod tests;
