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
use epi_framework::plot::{PlotError, PlotSpec};
use epi_framework::registry::PluginConfig;
use serde::Serialize;

/// Forces this crate's plugin registrations into a binary that links it (linkers drop archive
/// members nothing refers to, and `inventory` registrations are referred to by nothing).
#[inline(never)]
pub fn link() {
    std::hint::black_box(module_path!());
}

/// A plot's configured options with the spec's per-render options laid over them.
pub(crate) fn merge_options<T: Serialize>(
    base: &T,
    spec: &PlotSpec,
) -> Result<PluginConfig, PlotError> {
    let base = serde_json::to_value(base).map_err(|e| PlotError {
        plot: "plot".into(),
        message: format!("options: {e}"),
    })?;
    Ok(merge_config(
        &base,
        &serde_json::Value::Object(spec.options.clone()),
    ))
}
