//! `csv`: replays a recorded power trace (the trace CSV format, e.g. written by
//! `epi monitor --record`) as a power source, labelled as a replay (`SourceInfo::replay`).
//!
//! The file is read row by row ([`TraceReader`], constant memory). Provenance comes from the
//! `<trace>.meta.json` sidecar when there is one (method, instrument, channels, accuracy of the
//! original recording); without it the channels are those seen in the first rows and the method is
//! `counter` only if those rows all carry `energy_j`. `pace = "fast"` (default) delivers rows as
//! fast as they are read; `pace = "recorded"` delivers them at the recorded speed (times `speed`).
//! A bad row ends the replay with an error naming the file, line and field.

use epi_core::power::PowerError;
use epi_core::registry::{Factory, PluginConfig, PluginRegistration};
use epi_core::sample::{
    ChannelInfo, EnergyMethod, PowerSample, SampleBatch, SourceInfo, SourceStats,
};
use epi_core::PowerSource;
use epi_trace::{Row, TraceMeta, TraceReader};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

const KEY: &str = "csv";

/// Rows scanned at open to list the channels of a trace without a sidecar.
const SCAN_ROWS: usize = 100_000;

/// How fast rows are delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Pace {
    /// As fast as they are read.
    Fast,
    /// At the recorded speed (scaled by `speed`).
    Recorded,
}

fn default_pace() -> Pace {
    Pace::Fast
}
fn default_speed() -> f64 {
    1.0
}
fn default_batch_rows() -> usize {
    4096
}

/// Settings of the `csv` source (`[power.csv]`, `--file`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CsvConfig {
    /// The trace file.
    pub path: PathBuf,
    /// `fast` (default) or `recorded`.
    #[serde(default = "default_pace")]
    pub pace: Pace,
    /// With `pace = "recorded"`: 2.0 replays twice as fast.
    #[serde(default = "default_speed")]
    pub speed: f64,
    /// Most rows per batch.
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
}

impl CsvConfig {
    fn validate(&self) -> Result<(), String> {
        if self.path.as_os_str().is_empty() {
            return Err("path: expected a trace CSV file".into());
        }
        if !(self.speed.is_finite() && self.speed > 0.0) {
            return Err(format!(
                "speed: expected a factor > 0, found {}",
                self.speed
            ));
        }
        if self.batch_rows == 0 {
            return Err("batch_rows: expected at least 1".into());
        }
        Ok(())
    }
}

fn to_sample(row: &Row) -> PowerSample {
    PowerSample {
        channel: row.node,
        t_ms: row.t_ms,
        // A replay has no arrival: the recorded timeline stands in for it.
        host_mono_ms: row.t_ms,
        host_utc_ms: row.utc_ms.unwrap_or(0),
        source_t_ms: row.source_t_ms,
        watts: row.watts,
        volts: row.volts,
        amps: row.amps,
        power_factor: row.power_factor,
        energy_j: row.energy_j,
    }
}

fn io_error(e: epi_core::Error) -> PowerError {
    PowerError::Io {
        source_key: KEY.into(),
        message: e.to_string(),
    }
}

/// The `csv` replay source.
pub struct CsvReplay {
    config: CsvConfig,
    reader: Option<TraceReader>,
    /// A row read but not yet due (recorded pace).
    held: Option<Row>,
    /// Recorded time of the first row and the instant it was delivered.
    start: Option<(f64, tokio::time::Instant)>,
    stats: SourceStats,
    ended: bool,
}

impl std::fmt::Debug for CsvReplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsvReplay")
            .field("config", &self.config)
            .finish()
    }
}

impl CsvReplay {
    /// A replay of `config.path` (no I/O until [`PowerSource::open`]).
    pub fn new(config: CsvConfig) -> Result<CsvReplay, PowerError> {
        config.validate().map_err(|message| PowerError::Config {
            source_key: KEY.into(),
            message,
        })?;
        Ok(CsvReplay {
            config,
            reader: None,
            held: None,
            start: None,
            stats: SourceStats::default(),
            ended: false,
        })
    }

    /// Provenance for a trace without a sidecar, from its first rows.
    fn scan(&self) -> Result<SourceInfo, PowerError> {
        let mut r = TraceReader::open(&self.config.path).map_err(io_error)?;
        let mut nodes = std::collections::BTreeSet::new();
        let mut all_counter = true;
        let mut rows = 0usize;
        while rows < SCAN_ROWS {
            match r.next_row().map_err(io_error)? {
                Some((_, row)) => {
                    nodes.insert(row.node);
                    all_counter &= row.energy_j.is_some();
                    rows += 1;
                }
                None => break,
            }
        }
        let mut details = serde_json::Map::new();
        details.insert(
            "provenance".into(),
            Value::from(format!(
                "no {} sidecar: channels from the first {rows} rows, instrument unknown",
                TraceMeta::path_for(&self.config.path).display()
            )),
        );
        Ok(SourceInfo {
            source: KEY.into(),
            method: if all_counter && rows > 0 {
                EnergyMethod::Counter
            } else {
                EnergyMethod::Integrated
            },
            instrument: "unknown (trace file without a .meta.json sidecar)".into(),
            sample_rate_hz: None,
            accuracy_rel: None,
            channels: nodes
                .into_iter()
                .map(|id| ChannelInfo {
                    id,
                    name: format!("node {id}"),
                    scope: "unknown".into(),
                })
                .collect(),
            replay: true,
            details,
        })
    }

    fn next_row(&mut self) -> Result<Option<Row>, PowerError> {
        if let Some(r) = self.held.take() {
            return Ok(Some(r));
        }
        let Some(reader) = self.reader.as_mut() else {
            return Ok(None);
        };
        Ok(reader.next_row().map_err(io_error)?.map(|(_, row)| row))
    }
}

#[epi_core::async_trait]
impl PowerSource for CsvReplay {
    async fn open(&mut self) -> Result<SourceInfo, PowerError> {
        let path = &self.config.path;
        let reader = TraceReader::open(path).map_err(io_error)?;
        let meta = TraceMeta::read_for(path).map_err(io_error)?;
        let mut info = match &meta {
            Some(m) => {
                let mut info = m.source.clone();
                info.details.insert(
                    "recorded_source".into(),
                    Value::from(m.source.source.clone()),
                );
                info.details.insert(
                    "recorded_started_utc".into(),
                    Value::from(m.started_utc.clone()),
                );
                info.details.insert(
                    "recorded_stats".into(),
                    serde_json::to_value(&m.stats).unwrap_or(Value::Null),
                );
                if let Some(z) = m.timeline_zero_utc_ms {
                    info.details
                        .insert("timeline_zero_utc_ms".into(), Value::from(z));
                }
                info.source = KEY.into();
                info
            }
            None => self.scan()?,
        };
        info.replay = true;
        info.details
            .insert("file".into(), Value::from(path.display().to_string()));
        info.details.insert(
            "pace".into(),
            Value::from(match self.config.pace {
                Pace::Fast => "fast".to_string(),
                Pace::Recorded => format!("recorded ×{}", self.config.speed),
            }),
        );
        self.reader = Some(reader);
        Ok(info)
    }

    async fn next_batch(&mut self) -> Result<Option<SampleBatch>, PowerError> {
        if self.ended {
            return Ok(None);
        }
        if self.reader.is_none() {
            return Err(PowerError::Io {
                source_key: KEY.into(),
                message: "next_batch called before open or after close".into(),
            });
        }
        let mut samples = Vec::new();
        while samples.len() < self.config.batch_rows {
            let Some(mut row) = self.next_row()? else {
                self.ended = true;
                break;
            };
            if self.config.pace == Pace::Recorded {
                let (t0, started) = *self
                    .start
                    .get_or_insert((row.t_ms, tokio::time::Instant::now()));
                let due_ms = ((row.t_ms - t0) / self.config.speed).max(0.0);
                let due = started + Duration::from_secs_f64(due_ms / 1000.0);
                if due > tokio::time::Instant::now() {
                    // Held across the wait, so a caller dropping this call loses nothing.
                    self.held = Some(row);
                    if !samples.is_empty() {
                        break;
                    }
                    tokio::time::sleep_until(due).await;
                    let Some(r) = self.held.take() else { break };
                    row = r;
                }
            }
            samples.push(to_sample(&row));
        }
        if samples.is_empty() && self.ended {
            return Ok(None);
        }
        self.stats.samples += samples.len() as u64;
        Ok(Some(SampleBatch {
            samples,
            events: Vec::new(),
        }))
    }

    fn stats(&self) -> SourceStats {
        self.stats.clone()
    }

    async fn close(&mut self) -> Result<(), PowerError> {
        self.reader = None;
        self.held = None;
        Ok(())
    }
}

fn build(config: &PluginConfig) -> Result<Box<dyn PowerSource>, epi_core::Error> {
    crate::build_source(KEY, config, CsvReplay::new)
}

impl epi_core::settings::PluginSettings for CsvConfig {
    fn example() -> Self {
        epi_core::settings::example_from(serde_json::json!({"path": "power_trace.csv"}))
    }
}

epi_core::inventory::submit! {
    PluginRegistration {
        key: KEY,
        description: "replay of a recorded trace CSV (with its .meta.json provenance), fast or at recorded speed",
        factory: Factory::Power(build),
        settings: epi_core::settings::Settings::of::<CsvConfig>,
        toml_aliases: &[],
        capabilities: &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use epi_core::sample::SourceEvent;
    use epi_trace::TraceWriter;

    fn write_trace(path: &std::path::Path, rows: usize) -> Vec<PowerSample> {
        let mut w = TraceWriter::create(path, Duration::from_secs(1)).unwrap();
        let mut all = Vec::new();
        for i in 0..rows {
            for ch in 0..2u32 {
                let mut s = PowerSample::new(
                    ch,
                    1000.0 + i as f64 * 100.0,
                    10.0 + ch as f64 + (i % 7) as f64 * 0.25,
                );
                s.host_utc_ms = 1_700_000_000_000 + i as i64 * 100;
                s.volts = Some(121.5);
                s.energy_j = Some(i as f64 * 1.5);
                all.push(s);
            }
        }
        w.write(&all).unwrap();
        w.finish().unwrap();
        all
    }

    async fn drain(s: &mut CsvReplay) -> Vec<PowerSample> {
        let mut v = Vec::new();
        while let Some(b) = s.next_batch().await.unwrap() {
            v.extend(b.samples);
        }
        v
    }

    fn cfg(path: &std::path::Path) -> CsvConfig {
        serde_json::from_value(serde_json::json!({ "path": path, "batch_rows": 7 })).unwrap()
    }

    #[tokio::test]
    async fn replays_every_row_and_takes_provenance_from_the_sidecar() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        let written = write_trace(&path, 50);
        // Without a sidecar: channels from the rows, labelled as a replay of unknown provenance.
        let mut s = CsvReplay::new(cfg(&path)).unwrap();
        let info = s.open().await.unwrap();
        assert!(info.replay);
        assert_eq!(info.method, EnergyMethod::Counter);
        assert_eq!(
            info.channels.iter().map(|c| c.id).collect::<Vec<_>>(),
            vec![0, 1]
        );
        assert!(info.instrument.contains("without a .meta.json"));
        let got = drain(&mut s).await;
        assert_eq!(got.len(), written.len());
        for (g, w) in got.iter().zip(&written) {
            assert_eq!(
                (
                    g.channel,
                    g.t_ms,
                    g.watts,
                    g.volts,
                    g.energy_j,
                    g.host_utc_ms
                ),
                (
                    w.channel,
                    w.t_ms,
                    w.watts,
                    w.volts,
                    w.energy_j,
                    w.host_utc_ms
                )
            );
        }
        assert_eq!(s.stats().samples, 100);
        assert!(s.next_batch().await.unwrap().is_none());

        // With a sidecar: the recording's provenance, still labelled as a replay.
        let meta = TraceMeta {
            format_version: 1,
            source: SourceInfo {
                source: "epi-meter".into(),
                method: EnergyMethod::Counter,
                instrument: "epi-meter v1.0 fw 0.1.0, ATM90E26".into(),
                sample_rate_hz: Some(10.0),
                accuracy_rel: Some(0.02),
                channels: vec![ChannelInfo {
                    id: 0,
                    name: "node 0".into(),
                    scope: "ac-inlet".into(),
                }],
                replay: false,
                details: Default::default(),
            },
            started_utc: "2026-01-01T00:00:00Z".into(),
            timeline_zero_utc_ms: Some(1_700_000_000_000),
            stats: SourceStats {
                samples: 100,
                lost_samples: 2,
                ..Default::default()
            },
            events: vec![SourceEvent {
                host_mono_ms: 1.0,
                kind: "reboot".into(),
                detail: String::new(),
            }],
            extra: Default::default(),
        };
        meta.write_for(&path).unwrap();
        let mut s = CsvReplay::new(cfg(&path)).unwrap();
        let info = s.open().await.unwrap();
        assert!(info.replay);
        assert_eq!(info.source, "csv");
        assert_eq!(info.details["recorded_source"], "epi-meter");
        assert_eq!(info.instrument, "epi-meter v1.0 fw 0.1.0, ATM90E26");
        assert_eq!(info.accuracy_rel, Some(0.02));
        assert_eq!(info.details["recorded_stats"]["lost_samples"], 2);
        assert_eq!(drain(&mut s).await.len(), 100);
    }

    #[tokio::test]
    async fn recorded_pace_takes_the_recorded_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        write_trace(&path, 6); // 500 ms of recording
        let mut c = cfg(&path);
        c.pace = Pace::Recorded;
        c.speed = 2.0; // → 250 ms
        let mut s = CsvReplay::new(c).unwrap();
        s.open().await.unwrap();
        let t = std::time::Instant::now();
        assert_eq!(drain(&mut s).await.len(), 12);
        // Paced: never sooner than the recording at ×2 (an upper bound would assume a speed).
        let ms = t.elapsed().as_millis();
        assert!(ms >= 240, "{ms} ms");
        // Unpaced: a minute of recording is read without waiting for it (a paced replay would
        // take 60 s).
        let long = dir.path().join("long.csv");
        write_trace(&long, 601);
        let mut s = CsvReplay::new(cfg(&long)).unwrap();
        s.open().await.unwrap();
        let t = std::time::Instant::now();
        assert_eq!(drain(&mut s).await.len(), 1202);
        assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    }

    #[tokio::test]
    async fn next_batch_is_cancel_safe() {
        // A caller that gives up waiting (a timeout) and asks again loses no row.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        write_trace(&path, 8); // rows every 100 ms
        let mut c = cfg(&path);
        c.pace = Pace::Recorded;
        let mut s = CsvReplay::new(c).unwrap();
        s.open().await.unwrap();
        let mut got = 0;
        let mut timeouts = 0;
        loop {
            match tokio::time::timeout(Duration::from_millis(30), s.next_batch()).await {
                Err(_) => timeouts += 1,
                Ok(r) => match r.unwrap() {
                    Some(b) => got += b.samples.len(),
                    None => break,
                },
            }
        }
        assert_eq!(got, 16);
        assert!(timeouts >= 1, "the cancel path ran: {timeouts} timeouts");
    }

    #[tokio::test]
    async fn a_bad_row_names_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.csv");
        std::fs::write(&path, "timestamp_ms,node_id,watts_rms,volts_rms,amps_rms,power_factor\n0,0,1.5,,,\n100,0,-2,,,\n").unwrap();
        let mut s =
            CsvReplay::new(serde_json::from_value(serde_json::json!({"path": path})).unwrap())
                .unwrap();
        let e = s.open().await.unwrap_err().to_string();
        assert!(
            e.contains("bad.csv:3: watts_rms") && e.contains("negative"),
            "{e}"
        );
        let e = CsvReplay::new(
            serde_json::from_value(serde_json::json!({"path": dir.path().join("none.csv")}))
                .unwrap(),
        )
        .unwrap()
        .open()
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("none.csv"), "{e}");
    }
}
