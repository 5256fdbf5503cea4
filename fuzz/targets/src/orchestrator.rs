//! Target `orchestrator`: the Orchestrator source's reading of `sqlite3` output
//! (`orchestrator-sqlite.md`): tagged lines, `R` rows of ten cells (numbers, `N` for NULL, `X` for
//! text), the schema check, and rows turned into samples with lost-sample, reboot and counter
//! handling. Every `R` row becomes a sample or a counted bad line; every sample survives the trace
//! recorder and reader unchanged, and each channel's energy counter never goes back (the source
//! holds a counter that goes back at its last value).
//!
//! Input: one byte picking the column table (bits 0–1: default, without `wh`, without `seq` and
//! `meter_t_ms`), then the output of successive queries, separated by NUL bytes.

use crate::support::{assert_recorded_trace_reads_back, Order};
use epi_power::orchestrator::fuzzing::replies;
use epi_power::orchestrator::OrchestratorConfig;

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&opts, rest)) = data.split_first() else {
        return;
    };
    let mut config: OrchestratorConfig = serde_json::from_value(serde_json::json!({
        "host": "orchestrator.invalid",
        "user": "pi",
    }))
    .unwrap_or_else(|e| panic!("the fuzz target's configuration: {e}"));
    match opts & 3 {
        1 => config.columns.wh = String::new(),
        2 => {
            config.columns.seq = String::new();
            config.columns.meter_t_ms = String::new();
        }
        _ => {}
    }
    let text = String::from_utf8_lossy(rest);
    let texts: Vec<&str> = text.split('\0').collect();
    let out = replies(config, &texts)
        .unwrap_or_else(|e| panic!("the source refused its configuration: {e}"));
    assert_eq!(
        out.rows,
        out.samples.len() as u64 + out.stats.bad_lines,
        "every row is a sample or a bad line"
    );
    assert_eq!(
        out.stats.samples,
        out.samples.len() as u64,
        "samples counted"
    );
    // Rows come in id order; a timestamp that goes back is the database's, passed through (the
    // reader would refuse the recorded trace): only the values and the counter are checked here.
    assert_recorded_trace_reads_back(
        "orchestrator",
        &out.samples,
        Order {
            time: false,
            counter: true,
        },
    );
}
