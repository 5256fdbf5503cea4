//! The running Orchestrator source: `open` (connect, measure the clock offset, check the schema,
//! find the starting point of the tail or the size of the window), the window's pages and the
//! tail's polls (reconnecting after transient failures, none lost: rows stay in the database), the
//! end's clock offset, and the [`SourceInfo`] that records all of it.
//!
//! Failures: no `sqlite3` on the Orchestrator, a missing table or column, or pages of unreadable
//! rows only are [`PowerError`]s; in the tail, connection-level failures become
//! `disconnected`/`reconnected` events and the next poll tries again.

use super::query::{parse_reply, q, select_list, transient};
use super::{format_utc_ms, io_err, Mode, OrchestratorSource, KEY};
use crate::host_time::HostClock;
use epi_core::power::PowerError;
use epi_core::sample::{
    ChannelInfo, EnergyMethod, SampleBatch, SourceEvent, SourceInfo, SourceStats,
};
use epi_core::PowerSource;
use epi_ssh::{ClockOffset, RemoteExit, SshError, SshSession};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

impl OrchestratorSource {
    fn mono_ms(&self) -> f64 {
        self.clock.map(|c| c.now().mono_ms).unwrap_or(0.0)
    }

    pub(super) fn event(&self, kind: &str, detail: String) -> SourceEvent {
        SourceEvent {
            host_mono_ms: self.mono_ms(),
            kind: kind.into(),
            detail,
        }
    }

    fn ssh_err(&self, e: SshError) -> PowerError {
        io_err(e.to_string())
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
