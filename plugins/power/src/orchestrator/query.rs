//! The Orchestrator source's reads: the remote `sqlite3 -readonly` command (one read
//! transaction per invocation), the SQL it is given (quoted identifiers, integers formatted here),
//! and the parsing of its output — tagged lines, one `R` line per row, each cell a number, `N`
//! (NULL) or `X` (a value of the wrong type). A malformed row is an `Err` in the [`Reply`] (the
//! source counts it as a bad line); a missing table or column fails the schema check with
//! [`PowerError::Measurement`]; SSH failures are [`SshError`]s, [`transient`] ones retried by the
//! tail.

use super::{Columns, OrchestratorSource, KEY};
use epi_core::power::PowerError;
use epi_ssh::{RemoteExit, SshError, SshSession};
use std::collections::{BTreeMap, BTreeSet};

/// One row as read.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct DbRow {
    pub(super) id: i64,
    pub(super) ts: i64,
    pub(super) node: u32,
    pub(super) watts: f64,
    pub(super) volts: Option<f64>,
    pub(super) amps: Option<f64>,
    pub(super) pf: Option<f64>,
    pub(super) wh: Option<f64>,
    pub(super) meter_t: Option<i64>,
    pub(super) seq: Option<i64>,
}

/// A connection-level failure that a later poll may get past.
pub(super) fn transient(e: &SshError) -> bool {
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
pub(super) fn parse_row(cells: &[&str]) -> Result<DbRow, String> {
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
pub(super) fn q(name: &str) -> String {
    format!("\"{name}\"")
}

/// The select list of a row: `'R'` and each column as a number, `'N'` (NULL) or `'X'` (wrong type).
pub(super) fn select_list(columns: &Columns) -> String {
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
pub(super) struct Reply {
    pub(super) rows: Vec<Result<DbRow, String>>,
    pub(super) tagged: BTreeMap<String, Vec<Vec<String>>>,
}

pub(super) fn parse_reply(text: &str) -> Reply {
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
    /// Runs `sql` in the remote sqlite3 (read-only; 5 s busy timeout) and returns its stdout.
    pub(super) async fn query(&self, session: &SshSession, sql: &str) -> Result<String, SshError> {
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

    pub(super) fn table_clause(&self) -> String {
        q(&self.config.power_table)
    }

    /// Checks the table and columns exist; returns the absent optional columns (none: all
    /// configured ones must exist).
    pub(super) fn check_schema(&self, reply: &Reply) -> Result<(), PowerError> {
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
}
