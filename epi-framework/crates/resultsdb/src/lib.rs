//! The results database: EPI results in one SQLite file (default `results.db`, `[general]
//! results_db` in the configuration), tagged, queryable and exportable — the `ResultsLogger` of
//! `epi-bench-readme.txt`.
//!
//! ```no_run
//! # fn demo(result: &epi_core::EpiResult) -> Result<(), epi_core::Error> {
//! use epi_resultsdb::{ResultFilter, ResultsDb};
//! let mut db = ResultsDb::open("results.db")?;
//! let id = db.log(result, &["baseline", "qwen3-30b"])?;        // log with tags
//! let baselines = db.query(&ResultFilter::tagged("baseline"))?; // query by tags
//! let best = db.best_epi("qwen3-30b-a3b")?;                      // best EPI of a model
//! db.export_json(id, "data/baseline/qwen3-30b-a3b_q4km/epi_001.json")?;
//! # Ok(()) }
//! ```
//!
//! Every result is stored whole, as its JSON (so [`ResultsDb::export_json`] gives back exactly the
//! result that was logged), beside the columns queries filter and sort on. Several processes may
//! write at once: the file is in WAL mode, every connection waits up to [`BUSY_TIMEOUT`] for a lock,
//! and writes take the write lock up front (`BEGIN IMMEDIATE`), so no write is lost and none fails
//! for a lock held briefly by another writer. Every value reaches SQL as a bound parameter.
//!
//! The schema is versioned with `PRAGMA user_version`; [`ResultsDb::open`] upgrades an older file
//! in place, in one transaction, and refuses a file made by a newer epi-bench.
#![deny(missing_docs)]

use epi_core::error::Error;
use epi_core::result::{write_community_csv, CommunityRow, EpiResult};
use rusqlite::{
    params, params_from_iter, Connection, OpenFlags, OptionalExtension, TransactionBehavior,
};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a connection waits for another process's lock before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

/// The schema version this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Schema migrations: entry *i* upgrades a version-*i* file to version *i*+1.
///
/// - v1: one `results` table; tags in a comma-separated `tags` column.
/// - v2: tags in their own table (`result_tags`, one row per tag, indexed), indexes on the
///   columns queries filter on and on `run_id`.
const MIGRATIONS: [&str; 2] = [
    // v0 -> v1
    "CREATE TABLE results (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        logged_utc TEXT NOT NULL,
        run_id TEXT NOT NULL,
        model TEXT NOT NULL,
        quantization TEXT NOT NULL,
        surgery TEXT NOT NULL,
        hardware TEXT NOT NULL,
        epi REAL NOT NULL,
        joules_per_token REAL NOT NULL,
        accuracy REAL NOT NULL,
        tags TEXT NOT NULL DEFAULT '',
        json TEXT NOT NULL
    );",
    // v1 -> v2
    "CREATE TABLE result_tags (
        result_id INTEGER NOT NULL REFERENCES results(id) ON DELETE CASCADE,
        tag TEXT NOT NULL,
        PRIMARY KEY (tag, result_id)
    ) WITHOUT ROWID;
    CREATE INDEX result_tags_by_result ON result_tags(result_id, tag);
    WITH RECURSIVE split(id, tag, rest) AS (
        SELECT id, '', tags || ',' FROM results
        UNION ALL
        SELECT id, trim(substr(rest, 1, instr(rest, ',') - 1)), substr(rest, instr(rest, ',') + 1)
        FROM split WHERE rest <> ''
    )
    INSERT OR IGNORE INTO result_tags(result_id, tag) SELECT id, tag FROM split WHERE tag <> '';
    ALTER TABLE results DROP COLUMN tags;
    CREATE INDEX results_by_model ON results(model, epi);
    CREATE INDEX results_by_quantization ON results(quantization);
    CREATE INDEX results_by_surgery ON results(surgery);
    CREATE INDEX results_by_hardware ON results(hardware);
    CREATE INDEX results_by_run ON results(run_id);",
];

/// Which results a query selects: every condition given must hold (tags: all of them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResultFilter {
    /// Tags the result must all carry.
    pub tags: Vec<String>,
    /// Exact model identifier.
    pub model: Option<String>,
    /// Exact quantization.
    pub quantization: Option<String>,
    /// Exact surgery string.
    pub surgery: Option<String>,
    /// Exact hardware string.
    pub hardware: Option<String>,
}

impl ResultFilter {
    /// Every result.
    pub fn all() -> Self {
        ResultFilter::default()
    }
    /// Results carrying `tag`.
    pub fn tagged(tag: impl Into<String>) -> Self {
        ResultFilter {
            tags: vec![tag.into()],
            ..Default::default()
        }
    }
    /// Results of `model`.
    pub fn model(model: impl Into<String>) -> Self {
        ResultFilter {
            model: Some(model.into()),
            ..Default::default()
        }
    }

    /// The `WHERE` clause (over `results r`) and its parameters.
    fn to_sql(&self) -> (String, Vec<String>) {
        let mut conds: Vec<&str> = Vec::new();
        let mut values: Vec<String> = Vec::new();
        for (col, v) in [
            ("r.model = ?", &self.model),
            ("r.quantization = ?", &self.quantization),
            ("r.surgery = ?", &self.surgery),
            ("r.hardware = ?", &self.hardware),
        ] {
            if let Some(v) = v {
                conds.push(col);
                values.push(v.clone());
            }
        }
        for t in &self.tags {
            conds.push("r.id IN (SELECT result_id FROM result_tags WHERE tag = ?)");
            values.push(t.clone());
        }
        if conds.is_empty() {
            (String::new(), values)
        } else {
            (format!("WHERE {}", conds.join(" AND ")), values)
        }
    }
}

/// A stored result's summary (the indexed columns and its tags), as `epi results list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResultRow {
    /// Database id.
    pub id: i64,
    /// When it was logged, UTC (RFC 3339).
    pub logged_utc: String,
    /// `run_metadata.run_id`.
    pub run_id: String,
    /// Model.
    pub model: String,
    /// Quantization.
    pub quantization: String,
    /// Surgery.
    pub surgery: String,
    /// Hardware.
    pub hardware: String,
    /// EPI.
    pub epi: f64,
    /// J/token.
    pub joules_per_token: f64,
    /// Composite accuracy.
    pub accuracy: f64,
    /// Tags, sorted.
    pub tags: Vec<String>,
    /// The token count its EPI divides by (`generated`, `processed`): EPIs on different bases
    /// are not comparable.
    pub token_basis: String,
}

/// A stored result, whole.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredResult {
    /// Database id.
    pub id: i64,
    /// When it was logged, UTC (RFC 3339).
    pub logged_utc: String,
    /// Tags, sorted.
    pub tags: Vec<String>,
    /// The result as it was logged.
    pub result: EpiResult,
}

/// What [`ResultsDb::log`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logged {
    /// A new row.
    New(i64),
    /// The same result (same `run_id`, same content) was already stored under this id; the tags
    /// given were added to it.
    Existing(i64),
}

impl Logged {
    /// The row id, new or existing.
    pub fn id(self) -> i64 {
        match self {
            Logged::New(id) | Logged::Existing(id) => id,
        }
    }
}

/// An open results database. Each process (or thread) opens its own.
pub struct ResultsDb {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for ResultsDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultsDb")
            .field("path", &self.path)
            .finish()
    }
}

const ROW_COLUMNS: &str =
    "r.id, r.logged_utc, r.run_id, r.model, r.quantization, r.surgery, r.hardware, \
     r.epi, r.joules_per_token, r.accuracy, '[]', \
     coalesce(json_extract(r.json, '$.energy.token_basis'), 'generated')";

/// The token basis of a stored result, in SQL (results before `token_basis` were generated).
const BASIS_SQL: &str = "coalesce(json_extract(r.json, '$.energy.token_basis'), 'generated')";

impl ResultsDb {
    /// Opens the database at `path`, creating it if it does not exist and upgrading an older
    /// schema. This is the call `epi calculate --db FILE` makes before [`ResultsDb::log`].
    pub fn open(path: impl AsRef<Path>) -> Result<ResultsDb, Error> {
        let path = path.as_ref();
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        Self::open_with(path, flags)
    }

    /// Opens an existing database (upgrading an older schema); a missing file is an error, not a
    /// new empty database. For commands that only read.
    pub fn open_existing(path: impl AsRef<Path>) -> Result<ResultsDb, Error> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(Error::Database {
                path: path.to_path_buf(),
                message: "no such database file (log a result first: `epi results log FILE.json --db FILE`)".into(),
            });
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        Self::open_with(path, flags)
    }

    fn open_with(path: &Path, flags: OpenFlags) -> Result<ResultsDb, Error> {
        let conn = Connection::open_with_flags(path, flags).map_err(|e| db_err(path, e))?;
        let mut db = ResultsDb {
            conn,
            path: path.to_path_buf(),
        };
        db.conn
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| db_err(path, e))?;
        db.set_wal()?;
        db.conn
            .pragma_update(None, "foreign_keys", true)
            .map_err(|e| db_err(path, e))?;
        db.migrate(SCHEMA_VERSION)?;
        Ok(db)
    }

    /// Switches to WAL. Changing the journal mode needs a moment of exclusive access, which SQLite
    /// does not wait for with the busy handler while another process opens the same new file, so
    /// this retries until [`BUSY_TIMEOUT`].
    fn set_wal(&self) -> Result<(), Error> {
        let start = std::time::Instant::now();
        loop {
            let r: rusqlite::Result<String> =
                self.conn
                    .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0));
            match r {
                Ok(mode) if mode.eq_ignore_ascii_case("wal") => return Ok(()),
                Ok(mode) => {
                    return Err(Error::Database {
                        path: self.path.clone(),
                        message: format!(
                            "cannot use WAL journal mode (the file system gave `{mode}`)"
                        ),
                    })
                }
                Err(e) if is_busy(&e) && start.elapsed() < BUSY_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(db_err(&self.path, e)),
            }
        }
    }

    /// Applies the migrations up to `target` in one transaction.
    fn migrate(&mut self, target: u32) -> Result<(), Error> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| db_err(&path, e))?;
        let version: u32 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| db_err(&path, e))?;
        if version > SCHEMA_VERSION {
            return Err(Error::Database {
                path,
                message: format!(
                    "schema version {version} is newer than this epi-bench understands ({SCHEMA_VERSION}); \
                     upgrade epi-bench"
                ),
            });
        }
        if version >= target {
            return Ok(());
        }
        for (i, sql) in MIGRATIONS
            .iter()
            .enumerate()
            .take(target as usize)
            .skip(version as usize)
        {
            tx.execute_batch(sql).map_err(|e| Error::Database {
                path: path.clone(),
                message: format!("upgrading to schema v{}: {e}", i + 1),
            })?;
        }
        tx.pragma_update(None, "user_version", target)
            .map_err(|e| db_err(&path, e))?;
        tx.commit().map_err(|e| db_err(&path, e))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version of the open file.
    pub fn schema_version(&self) -> Result<u32, Error> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// Logs `result` with `tags` and returns its id. Logging the same result again (same
    /// `run_id`, same content) adds the tags to the stored one; a different result under a
    /// `run_id` already stored is an error.
    pub fn log<S: AsRef<str>>(&mut self, result: &EpiResult, tags: &[S]) -> Result<i64, Error> {
        self.log_all(std::iter::once((result, tags)))
            .map(|v| v[0].id())
    }

    /// Logs several results in one transaction (all or none), each with its tags.
    pub fn log_all<'a, S: AsRef<str> + 'a>(
        &mut self,
        items: impl IntoIterator<Item = (&'a EpiResult, &'a [S])>,
    ) -> Result<Vec<Logged>, Error> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| db_err(&path, e))?;
        let mut out = Vec::new();
        {
            let mut find = tx
                .prepare("SELECT id, json FROM results WHERE run_id = ?")
                .map_err(|e| db_err(&path, e))?;
            let mut insert = tx
                .prepare(
                    "INSERT INTO results (logged_utc, run_id, model, quantization, surgery, hardware, epi, \
                     joules_per_token, accuracy, json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .map_err(|e| db_err(&path, e))?;
            let mut tag = tx
                .prepare("INSERT OR IGNORE INTO result_tags (result_id, tag) VALUES (?, ?)")
                .map_err(|e| db_err(&path, e))?;
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            for (result, tags) in items {
                let tags = clean_tags(tags)?;
                check_numbers(result)?;
                let json = serde_json::to_string(result)
                    .map_err(|e| Error::Invalid(format!("cannot serialise result: {e}")))?;
                let run_id = &result.run_metadata.run_id;
                let existing: Option<(i64, String)> = find
                    .query_row([run_id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
                    .map_err(|e| db_err(&path, e))?;
                let logged = match existing {
                    Some((id, stored)) if stored == json => Logged::Existing(id),
                    Some((id, _)) => {
                        return Err(Error::Database {
                            path,
                            message: format!(
                                "run_id {run_id} is already stored as result #{id} with different content \
                                 (a recalculated result needs a new run_id)"
                            ),
                        })
                    }
                    None => {
                        insert
                            .execute(params![
                                now,
                                run_id,
                                result.model,
                                result.quantization,
                                result.surgery,
                                result.hardware,
                                result.epi,
                                result.joules_per_token,
                                result.accuracy_composite,
                                json
                            ])
                            .map_err(|e| db_err(&path, e))?;
                        Logged::New(tx.last_insert_rowid())
                    }
                };
                for t in &tags {
                    tag.execute(params![logged.id(), t])
                        .map_err(|e| db_err(&path, e))?;
                }
                out.push(logged);
            }
        }
        tx.commit().map_err(|e| db_err(&path, e))?;
        Ok(out)
    }

    /// Adds tags to a stored result.
    pub fn add_tags<S: AsRef<str>>(&mut self, id: i64, tags: &[S]) -> Result<(), Error> {
        let tags = clean_tags(tags)?;
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| db_err(&path, e))?;
        let exists: Option<i64> = tx
            .query_row("SELECT id FROM results WHERE id = ?", [id], |r| r.get(0))
            .optional()
            .map_err(|e| db_err(&path, e))?;
        if exists.is_none() {
            return Err(Error::Database {
                path,
                message: format!("no result #{id}"),
            });
        }
        for t in &tags {
            tx.execute(
                "INSERT OR IGNORE INTO result_tags (result_id, tag) VALUES (?, ?)",
                params![id, t],
            )
            .map_err(|e| db_err(&path, e))?;
        }
        tx.commit().map_err(|e| db_err(&path, e))
    }

    /// Number of stored results.
    pub fn count(&self) -> Result<u64, Error> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM results", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        Ok(n.max(0) as u64)
    }

    /// Summaries of the results `filter` selects, in logging order (by id).
    pub fn query_rows(&self, filter: &ResultFilter) -> Result<Vec<ResultRow>, Error> {
        let (where_sql, values) = filter.to_sql();
        let sql = format!("SELECT {ROW_COLUMNS} FROM results r {where_sql} ORDER BY r.id");
        self.rows(&sql, &values)
    }

    /// The results `filter` selects, whole, in logging order (by id).
    pub fn query(&self, filter: &ResultFilter) -> Result<Vec<StoredResult>, Error> {
        let (where_sql, values) = filter.to_sql();
        let sql = format!(
            "SELECT r.id, r.logged_utc, '[]', r.json FROM results r {where_sql} ORDER BY r.id"
        );
        self.stored(&sql, &values)
    }

    /// One stored result by id.
    pub fn get(&self, id: i64) -> Result<Option<StoredResult>, Error> {
        let sql = "SELECT r.id, r.logged_utc, '[]', r.json FROM results r WHERE r.id = ?";
        Ok(self.stored(sql, &[id.to_string()])?.into_iter().next())
    }

    /// The result of `model` with the lowest EPI (the first logged among equals). With results on
    /// several token bases this compares across them: ask [`ResultsDb::best_per_model`] for one
    /// best per basis.
    pub fn best_epi(&self, model: &str) -> Result<Option<StoredResult>, Error> {
        let best = self.best_per_model(&ResultFilter::model(model))?;
        match best.first() {
            Some(row) => self.get(row.id),
            None => Ok(None),
        }
    }

    /// For each model among the results `filter` selects, its result with the lowest EPI (the first
    /// logged among equals) — per token basis, since EPIs on different bases are not compared;
    /// sorted by EPI.
    pub fn best_per_model(&self, filter: &ResultFilter) -> Result<Vec<ResultRow>, Error> {
        let (where_sql, values) = filter.to_sql();
        let sql = format!(
            "SELECT {ROW_COLUMNS} FROM results r WHERE r.id IN (
                SELECT id FROM (
                    SELECT r.id AS id, row_number() OVER (PARTITION BY r.model, {BASIS_SQL} ORDER BY r.epi, r.id) AS rank
                    FROM results r {where_sql}
                ) WHERE rank = 1
             ) ORDER BY r.epi, r.id"
        );
        self.rows(&sql, &values)
    }

    /// Writes stored result `id` as an EPI result JSON file (atomically); the file reads back as
    /// the result that was logged.
    pub fn export_json(&self, id: i64, path: impl AsRef<Path>) -> Result<(), Error> {
        match self.get(id)? {
            Some(s) => s.result.to_json(path),
            None => Err(Error::Database {
                path: self.path.clone(),
                message: format!("no result #{id}"),
            }),
        }
    }

    /// Writes the results `filter` selects as community CSV rows (`write_community_csv`) credited
    /// to `contributor`; returns how many.
    pub fn export_community_csv(
        &self,
        filter: &ResultFilter,
        contributor: &str,
        path: impl AsRef<Path>,
    ) -> Result<usize, Error> {
        let rows: Vec<CommunityRow> = self
            .query(filter)?
            .iter()
            .map(|s| CommunityRow::from_result(&s.result, contributor))
            .collect();
        write_community_csv(path.as_ref(), &rows)?;
        Ok(rows.len())
    }

    fn rows(&self, sql: &str, values: &[String]) -> Result<Vec<ResultRow>, Error> {
        let mut stmt = self.conn.prepare(sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params_from_iter(values.iter()), |r| {
                Ok((
                    ResultRow {
                        id: r.get(0)?,
                        logged_utc: r.get(1)?,
                        run_id: r.get(2)?,
                        model: r.get(3)?,
                        quantization: r.get(4)?,
                        surgery: r.get(5)?,
                        hardware: r.get(6)?,
                        epi: r.get(7)?,
                        joules_per_token: r.get(8)?,
                        accuracy: r.get(9)?,
                        tags: Vec::new(),
                        token_basis: r.get(11)?,
                    },
                    r.get::<_, String>(10)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (mut row, tags) = row.map_err(|e| self.err(e))?;
            row.tags = self.parse_tags(row.id, &tags)?;
            out.push(row);
        }
        let mut tags = self.tags_of(out.iter().map(|r| r.id))?;
        for r in &mut out {
            r.tags = tags.remove(&r.id).unwrap_or_default();
        }
        Ok(out)
    }

    fn stored(&self, sql: &str, values: &[String]) -> Result<Vec<StoredResult>, Error> {
        let mut stmt = self.conn.prepare(sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params_from_iter(values.iter()), |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, logged_utc, tags, json) = row.map_err(|e| self.err(e))?;
            let result: EpiResult = serde_json::from_str(&json).map_err(|e| Error::Database {
                path: self.path.clone(),
                message: format!("result #{id}: stored JSON is not an EPI result: {e}"),
            })?;
            out.push(StoredResult {
                id,
                logged_utc,
                tags: self.parse_tags(id, &tags)?,
                result,
            });
        }
        let mut tags = self.tags_of(out.iter().map(|r| r.id))?;
        for r in &mut out {
            r.tags = tags.remove(&r.id).unwrap_or_default();
        }
        Ok(out)
    }

    /// The tags of the results `ids`, sorted, in one query (the ids travel as one JSON array
    /// parameter).
    fn tags_of(
        &self,
        ids: impl Iterator<Item = i64>,
    ) -> Result<std::collections::HashMap<i64, Vec<String>>, Error> {
        let ids: Vec<i64> = ids.collect();
        let mut map: std::collections::HashMap<i64, Vec<String>> = std::collections::HashMap::new();
        if ids.is_empty() {
            return Ok(map);
        }
        let list = serde_json::to_string(&ids).map_err(|e| Error::Invalid(e.to_string()))?;
        let mut stmt = self
            .conn
            .prepare(
                "SELECT result_id, tag FROM result_tags WHERE result_id IN (SELECT value FROM json_each(?)) \
                 ORDER BY result_id, tag",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([list], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(|e| self.err(e))?;
        for row in rows {
            let (id, tag) = row.map_err(|e| self.err(e))?;
            map.entry(id).or_default().push(tag);
        }
        Ok(map)
    }

    fn parse_tags(&self, id: i64, json: &str) -> Result<Vec<String>, Error> {
        serde_json::from_str(json).map_err(|e| Error::Database {
            path: self.path.clone(),
            message: format!("result #{id}: tags: {e}"),
        })
    }

    fn err(&self, e: rusqlite::Error) -> Error {
        db_err(&self.path, e)
    }
}

/// Trims tags, drops duplicates, and refuses empty ones.
fn clean_tags<S: AsRef<str>>(tags: &[S]) -> Result<Vec<String>, Error> {
    let mut out: Vec<String> = Vec::new();
    for t in tags {
        let t = t.as_ref().trim();
        if t.is_empty() {
            return Err(Error::Invalid(
                "a tag is empty; tags are non-empty words (`baseline`, `qwen3-30b`)".into(),
            ));
        }
        if t.contains(',') {
            return Err(Error::Invalid(format!(
                "tag `{t}` contains a comma; give several tags separately"
            )));
        }
        if !out.iter().any(|o| o == t) {
            out.push(t.to_string());
        }
    }
    Ok(out)
}

/// The columns that are sorted on must be numbers (SQLite would store NaN as NULL).
fn check_numbers(r: &EpiResult) -> Result<(), Error> {
    for (name, v) in [
        ("epi", r.epi),
        ("joules_per_token", r.joules_per_token),
        ("accuracy_composite", r.accuracy_composite),
    ] {
        if !v.is_finite() {
            return Err(Error::Invalid(format!(
                "result {}: {name} is {v}; a finite number is expected",
                r.run_metadata.run_id
            )));
        }
    }
    Ok(())
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy) | Some(rusqlite::ErrorCode::DatabaseLocked)
    )
}

fn db_err(path: &Path, e: rusqlite::Error) -> Error {
    Error::Database {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(run_id: &str, model: &str, surgery: &str, epi: f64) -> EpiResult {
        let mut r: EpiResult =
            serde_json::from_str(include_str!("../../../tests/data/epi_result_min.json")).unwrap();
        r.run_metadata.run_id = run_id.into();
        r.model = model.into();
        r.surgery = surgery.into();
        r.epi = epi;
        r
    }

    #[test]
    fn log_query_best_and_export_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.db");
        let mut db = ResultsDb::open(&path).unwrap();
        assert_eq!(db.schema_version().unwrap(), SCHEMA_VERSION);
        let a = db
            .log(&sample("a", "m1", "none", 0.05), &["baseline", "qwen"])
            .unwrap();
        let b = db
            .log(&sample("b", "m1", "drop=8", 0.04), &["sweep"])
            .unwrap();
        let c = db
            .log(&sample("c", "m2", "none", 0.07), &["baseline"])
            .unwrap();
        let tags: &[&str] = &[];
        let d = db.log(&sample("d", "m2", "drop=8", 0.07), tags).unwrap();
        assert_eq!(db.count().unwrap(), 4);

        let ids = |f: &ResultFilter| {
            db.query_rows(f)
                .unwrap()
                .iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&ResultFilter::tagged("baseline")), vec![a, c]);
        assert_eq!(
            ids(&ResultFilter {
                tags: vec!["baseline".into(), "qwen".into()],
                ..Default::default()
            }),
            vec![a]
        );
        assert_eq!(ids(&ResultFilter::model("m1")), vec![a, b]);
        assert_eq!(
            ids(&ResultFilter {
                surgery: Some("drop=8".into()),
                ..Default::default()
            }),
            vec![b, d]
        );
        assert_eq!(
            ids(&ResultFilter {
                hardware: Some("nope".into()),
                ..Default::default()
            }),
            Vec::<i64>::new()
        );
        assert_eq!(
            db.query_rows(&ResultFilter::all()).unwrap()[0].tags,
            vec!["baseline", "qwen"]
        );

        assert_eq!(db.best_epi("m1").unwrap().unwrap().id, b);
        // equal EPI: the first logged wins
        assert_eq!(db.best_epi("m2").unwrap().unwrap().id, c);
        assert!(db.best_epi("m3").unwrap().is_none());
        let best: Vec<i64> = db
            .best_per_model(&ResultFilter::all())
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(best, vec![b, c]);

        // export round-trips: the file reads back as the logged result, field for field
        let original = sample("a", "m1", "none", 0.05);
        let out = dir.path().join("out/epi_a.json");
        db.export_json(a, &out).unwrap();
        let back = EpiResult::from_json(&out).unwrap();
        assert_eq!(back, original);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&out).unwrap())
                .unwrap(),
            serde_json::to_value(&original).unwrap()
        );
        assert!(db
            .export_json(999, &out)
            .unwrap_err()
            .to_string()
            .contains("no result #999"));

        let csv = dir.path().join("c.csv");
        assert_eq!(
            db.export_community_csv(&ResultFilter::tagged("baseline"), "franz", &csv)
                .unwrap(),
            2
        );
        let text = std::fs::read_to_string(&csv).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("model,quantization,surgery"));
        assert!(
            lines[1].starts_with("m1,Q4_K_M,none,") && lines[1].ends_with(",franz"),
            "{}",
            lines[1]
        );
    }

    #[test]
    fn relogging_the_same_result_adds_tags_and_a_conflict_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = ResultsDb::open(dir.path().join("r.db")).unwrap();
        let r = sample("x", "m", "none", 0.05);
        let id = db.log(&r, &["one"]).unwrap();
        assert_eq!(db.log(&r, &["two", "one"]).unwrap(), id);
        assert_eq!(db.count().unwrap(), 1);
        assert_eq!(db.get(id).unwrap().unwrap().tags, vec!["one", "two"]);
        let mut changed = r.clone();
        changed.epi = 0.06;
        let e = db.log(&changed, &["t"]).unwrap_err().to_string();
        assert!(e.contains("run_id x is already stored as result #1"), "{e}");
        assert!(db.log(&sample("y", "m", "none", 0.05), &[" "]).is_err());
        assert!(db.log(&sample("y", "m", "none", 0.05), &["a,b"]).is_err());
        let mut nan = sample("z", "m", "none", 0.05);
        nan.epi = f64::NAN;
        assert!(db
            .log(&nan, &["t"])
            .unwrap_err()
            .to_string()
            .contains("epi is NaN"));
        assert_eq!(db.count().unwrap(), 1);
    }

    #[test]
    fn sql_metacharacters_in_values_are_data() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = ResultsDb::open(dir.path().join("r.db")).unwrap();
        let evil = "x'; DROP TABLE results; --";
        let id = db.log(&sample("q", evil, "none", 0.05), &[evil]).unwrap();
        let rows = db
            .query_rows(&ResultFilter {
                tags: vec![evil.into()],
                model: Some(evil.into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].id, id);
        assert_eq!(rows[0].model, evil);
        assert_eq!(db.count().unwrap(), 1);
    }

    #[test]
    fn upgrades_a_version_1_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        // A file as the version-1 schema left it: tags in a comma-separated column.
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            for (run, model, epi, tags) in [
                ("r1", "m1", 0.05, "baseline, qwen"),
                ("r2", "m1", 0.04, ""),
                ("r3", "m2", 0.06, "baseline"),
            ] {
                let json = serde_json::to_string(&sample(run, model, "none", epi)).unwrap();
                conn.execute(
                    "INSERT INTO results (logged_utc, run_id, model, quantization, surgery, hardware, epi, \
                     joules_per_token, accuracy, tags, json) VALUES ('2026-05-15T10:00:00Z', ?, ?, 'Q4_K_M', 'none', \
                     'hw', ?, 0.038, 0.74, ?, ?)",
                    params![run, model, epi, tags, json],
                )
                .unwrap();
            }
        }
        let mut db = ResultsDb::open(&path).unwrap();
        assert_eq!(db.schema_version().unwrap(), 2);
        assert_eq!(db.count().unwrap(), 3);
        let rows = db.query_rows(&ResultFilter::tagged("baseline")).unwrap();
        assert_eq!(
            rows.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(),
            vec!["r1", "r3"]
        );
        assert_eq!(rows[0].tags, vec!["baseline", "qwen"]);
        assert!(db.get(2).unwrap().unwrap().tags.is_empty());
        assert_eq!(
            db.best_epi("m1")
                .unwrap()
                .unwrap()
                .result
                .run_metadata
                .run_id,
            "r2"
        );
        // and it takes new results
        db.log(&sample("r4", "m1", "none", 0.03), &["new"]).unwrap();
        assert_eq!(
            db.best_epi("m1")
                .unwrap()
                .unwrap()
                .result
                .run_metadata
                .run_id,
            "r4"
        );
        drop(db);
        // a file from a newer epi-bench is refused
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let e = ResultsDb::open(&path).unwrap_err().to_string();
        assert!(e.contains("newer than this epi-bench understands"), "{e}");
    }

    #[test]
    fn open_existing_refuses_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = ResultsDb::open_existing(dir.path().join("none.db"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no such database file"), "{e}");
        assert!(!dir.path().join("none.db").exists());
    }

    #[test]
    fn concurrent_writers_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("busy.db");
        const THREADS: usize = 8;
        const EACH: usize = 40;
        // Every thread opens the (not yet existing) file itself, as separate processes would.
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let mut db = ResultsDb::open(&path).unwrap();
                    for i in 0..EACH {
                        let r = sample(&format!("t{t}-{i}"), &format!("m{t}"), "none", 0.05);
                        db.log(&r, &[format!("thread{t}")]).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let db = ResultsDb::open(&path).unwrap();
        assert_eq!(db.count().unwrap(), (THREADS * EACH) as u64);
        for t in 0..THREADS {
            assert_eq!(
                db.query_rows(&ResultFilter::tagged(format!("thread{t}")))
                    .unwrap()
                    .len(),
                EACH
            );
        }
    }
}
