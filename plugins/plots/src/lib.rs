//! epi-bench publication plots: Pareto frontier, EPI bars, power timeline, surgery curve.
//!
//! Each plot is a [`Plot`](epi_core::Plot) plugin registered under its key (`pareto`,
//! `bars`, `timeline`, `curve`). They draw with `plotters` on PNG (at the spec's dpi, resolution
//! recorded in the file) or SVG (when the output name ends in `.svg`), with a bundled DejaVu Sans
//! font so a machine without fonts draws the same text. The computed content (frontier members,
//! knees, bucket counts) comes back in the [`PlotReport`](epi_core::plot::PlotReport).
#![deny(missing_docs)]

pub mod bars;
pub mod curve;
pub mod pareto;
mod style;
pub mod timeline;

use epi_core::config::merge_config;
use epi_core::plot::{PlotError, PlotInput, PlotSpec};
use epi_core::registry::parse_config;
use epi_core::EpiResult;
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

/// The token basis every result divides by (`generated`, `processed`): EPIs on different bases are
/// never drawn on one axis — a mix is refused, naming the bases and how many results use each.
pub(crate) fn token_basis(plot: &str, results: &[EpiResult]) -> Result<String, PlotError> {
    let mut bases: std::collections::BTreeMap<&str, usize> = Default::default();
    for r in results {
        *bases.entry(r.energy.token_basis.as_str()).or_default() += 1;
    }
    match bases.len() {
        0 => Ok("generated".into()),
        1 => Ok(bases
            .keys()
            .next()
            .map(|b| b.to_string())
            .unwrap_or_default()),
        _ => Err(style::err(
            plot,
            format!(
                "the results divide energy by different token counts ({}): EPIs on different token \
                 bases are not comparable; plot each basis separately (a results directory or a \
                 --tag per basis)",
                bases
                    .iter()
                    .map(|(b, n)| format!("{b}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// The unit of the energy per token on an axis: `J/token` on the paper's basis (generated
/// tokens), `J/processed token` etc. otherwise.
pub(crate) fn per_token_unit(basis: &str) -> String {
    if basis == "generated" {
        "J/token".into()
    } else {
        format!("J/{basis} token")
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn result(basis: &str) -> EpiResult {
        let mut r: EpiResult = serde_json::from_str(include_str!(
            "../../../epi-framework/tests/data/epi_result_min.json"
        ))
        .unwrap();
        r.energy.token_basis = basis.into();
        r
    }

    #[test]
    fn epis_on_different_token_bases_are_never_drawn_together() {
        let same = [result("processed"), result("processed")];
        assert_eq!(token_basis("bars", &same).unwrap(), "processed");
        assert_eq!(per_token_unit("processed"), "J/processed token");
        assert_eq!(per_token_unit("generated"), "J/token");
        let mixed = [
            result("generated"),
            result("processed"),
            result("generated"),
        ];
        let e = token_basis("pareto", &mixed).unwrap_err().to_string();
        assert!(
            e.contains("generated: 2")
                && e.contains("processed: 1")
                && e.contains("not comparable"),
            "{e}"
        );
    }
}
