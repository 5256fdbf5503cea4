//! epi-bench publication plots: Pareto frontier, EPI bars, power timeline, surgery curve.
//!
//! Each plot is a [`Plot`](epi_framework::Plot) plugin registered under its key (`pareto`,
//! `bars`, `timeline`, `curve`). They draw with `plotters` on PNG (at the spec's dpi, resolution
//! recorded in the file) or SVG (when the output name ends in `.svg`), with a bundled DejaVu Sans
//! font so a machine without fonts draws the same text. The computed content (frontier members,
//! knees, bucket counts) comes back in the [`PlotReport`](epi_framework::plot::PlotReport).
#![deny(missing_docs)]

pub mod bars;
pub mod curve;
pub mod pareto;
mod style;
pub mod timeline;

use epi_framework::config::merge_config;
use epi_framework::plot::{PlotError, PlotInput, PlotSpec};
use epi_framework::registry::parse_config;
use epi_framework::EpiResult;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Forces this crate's plugin registrations into a binary that links it (linkers drop archive
/// members nothing refers to, and `inventory` registrations are referred to by nothing).
#[inline(never)]
pub fn link() {
    std::hint::black_box(module_path!());
}

/// A plot's configured options with the spec's per-render options laid over them, parsed.
pub(crate) fn render_options<T: Serialize + DeserializeOwned>(
    plot: &str,
    base: &T,
    spec: &PlotSpec,
) -> Result<T, PlotError> {
    let base = serde_json::to_value(base).map_err(|e| style::err(plot, format!("options: {e}")))?;
    let merged = merge_config(&base, &serde_json::Value::Object(spec.options.clone()));
    parse_config(plot, &merged).map_err(|e| style::err(plot, e.to_string()))
}

/// The EPI results a results plot draws, or the error for a trace input.
pub(crate) fn results_input<'a>(
    plot: &str,
    input: &'a PlotInput,
) -> Result<&'a [EpiResult], PlotError> {
    match input {
        PlotInput::Results(results) => Ok(results),
        PlotInput::Trace(_) => Err(style::err(
            plot,
            "needs EPI results (--results-dir or --db), not a trace",
        )),
    }
}
