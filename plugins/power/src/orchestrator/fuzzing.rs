//! Entry point for the fuzz targets (`fuzz/targets`, cargo feature `fuzzing`): the Orchestrator
//! source's reading of `sqlite3` output — [`parse_reply`], the schema check and the conversion of
//! rows into samples — on text given here instead of read over SSH. Nothing here does I/O.

use super::query::parse_reply;
use super::{OrchestratorConfig, OrchestratorSource};
use epi_core::power::PowerError;
use epi_core::sample::{PowerSample, SourceEvent, SourceStats};

/// What the source made of a sequence of `sqlite3` replies.
#[derive(Debug, Clone, PartialEq)]
pub struct Replies {
    /// Samples of every reply, in order.
    pub samples: Vec<PowerSample>,
    /// Events of every reply, in order.
    pub events: Vec<SourceEvent>,
    /// `R` rows seen (each became a sample or a bad line).
    pub rows: u64,
    /// The schema check of each reply (what `open` would say of it as the schema query's reply).
    pub schema: Vec<Result<(), String>>,
    /// Stream health counters at the end.
    pub stats: SourceStats,
}

/// Builds the source from `config` (no I/O) and feeds it `replies` as successive query outputs.
pub fn replies(config: OrchestratorConfig, replies: &[&str]) -> Result<Replies, PowerError> {
    let mut source = OrchestratorSource::new(config)?;
    let mut out = Replies {
        samples: Vec::new(),
        events: Vec::new(),
        rows: 0,
        schema: Vec::new(),
        stats: SourceStats::default(),
    };
    for text in replies {
        let reply = parse_reply(text);
        out.schema
            .push(source.check_schema(&reply).map_err(|e| e.to_string()));
        out.rows += reply.rows.len() as u64;
        let batch = source.rows_to_samples(reply.rows);
        out.samples.extend(batch.samples);
        out.events.extend(batch.events);
    }
    out.stats = source.stats.clone();
    Ok(out)
}
