//! `bars`: EPI per configuration as horizontal bars, with 95 % interval whiskers where the results
//! carry them (`uncertainty.epi_ci95`) — the `EPIBarChart` of the spec.
//!
//! A configuration is (model, quantization, surgery, hardware). Its bar is the median EPI of its
//! results (the paper reports the median of the repetitions); each repetition is drawn as a dot on
//! the bar, and the whisker is the interval of the median result (for an even count, the envelope of
//! the two middle results' intervals).

use crate::style::{self, err, Canvas, Figure, Mark, Palette};
use epi_core::plot::{Plot, PlotError, PlotInput, PlotReport, PlotSpec};
use epi_core::registry::{parse_config, Factory, PluginConfig, PluginRegistration};
use epi_core::{EpiResult, Error};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::{Deserialize, Serialize};

const KEY: &str = "bars";

/// Bar order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SortBy {
    /// Lowest (best) EPI first.
    Epi,
    /// Highest accuracy first.
    Accuracy,
    /// Lowest J/token first.
    JoulesPerToken,
    /// By label, alphabetically.
    Label,
    /// As the results came.
    None,
}

/// Options of the bar chart (`[plot.bars]`, overridden by flags).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BarsOptions {
    /// Bar order.
    pub sort_by: SortBy,
}

impl Default for BarsOptions {
    fn default() -> Self {
        BarsOptions {
            sort_by: SortBy::Epi,
        }
    }
}

/// One bar: a configuration's median and its spread.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bar {
    /// Configuration label (the fields that differ between configurations).
    pub label: String,
    /// Median EPI.
    pub epi: f64,
    /// Median accuracy.
    pub accuracy: f64,
    /// Median J/token.
    pub joules_per_token: f64,
    /// 95 % interval of the median result, when it has one.
    pub ci95: Option<(f64, f64)>,
    /// EPI of every repetition.
    pub repetitions: Vec<f64>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Groups results into bars (in first-seen order) and sorts them.
pub fn bars(results: &[&EpiResult], sort_by: SortBy) -> Vec<Bar> {
    let (varying, _) = style::describe(results);
    let label_of = |r: &EpiResult| -> String {
        let parts: Vec<&str> = varying
            .iter()
            .map(|f| match *f {
                "model" => r.model.as_str(),
                "quantization" => r.quantization.as_str(),
                "hardware" => r.hardware.as_str(),
                _ => r.surgery.as_str(),
            })
            .collect();
        if parts.is_empty() {
            r.surgery.clone()
        } else {
            parts.join(" · ")
        }
    };
    let key = |r: &EpiResult| {
        (
            r.model.clone(),
            r.quantization.clone(),
            r.surgery.clone(),
            r.hardware.clone(),
        )
    };
    type Key = (String, String, String, String);
    let mut groups: Vec<(Key, Vec<&EpiResult>)> = Vec::new();
    for r in results {
        let k = key(r);
        match groups.iter_mut().find(|(g, _)| *g == k) {
            Some((_, v)) => v.push(r),
            None => groups.push((k, vec![r])),
        }
    }
    let mut out: Vec<Bar> = groups
        .into_iter()
        .map(|(_, mut rs)| {
            rs.sort_by(|a, b| a.epi.total_cmp(&b.epi));
            let n = rs.len();
            let ci = |r: &EpiResult| r.uncertainty.as_ref().and_then(|u| u.epi_ci95);
            let ci95 = if n % 2 == 1 {
                ci(rs[n / 2])
            } else {
                match (ci(rs[n / 2 - 1]), ci(rs[n / 2])) {
                    (Some(a), Some(b)) => Some((a.0.min(b.0), a.1.max(b.1))),
                    _ => None,
                }
            };
            Bar {
                label: label_of(rs[0]),
                epi: median(&mut rs.iter().map(|r| r.epi).collect::<Vec<_>>()),
                accuracy: median(&mut rs.iter().map(|r| r.accuracy_composite).collect::<Vec<_>>()),
                joules_per_token: median(
                    &mut rs.iter().map(|r| r.joules_per_token).collect::<Vec<_>>(),
                ),
                ci95,
                repetitions: rs.iter().map(|r| r.epi).collect(),
            }
        })
        .collect();
    match sort_by {
        SortBy::Epi => out.sort_by(|a, b| a.epi.total_cmp(&b.epi)),
        SortBy::Accuracy => out.sort_by(|a, b| b.accuracy.total_cmp(&a.accuracy)),
        SortBy::JoulesPerToken => {
            out.sort_by(|a, b| a.joules_per_token.total_cmp(&b.joules_per_token))
        }
        SortBy::Label => out.sort_by(|a, b| a.label.cmp(&b.label)),
        SortBy::None => {}
    }
    out
}

/// The EPI bar chart.
#[derive(Debug)]
pub struct BarsPlot {
    options: BarsOptions,
}

fn build(config: &PluginConfig) -> Result<Box<dyn Plot>, Error> {
    let options: BarsOptions = parse_config(KEY, config)?;
    Ok(Box::new(BarsPlot { options }))
}

impl epi_core::settings::PluginSettings for BarsOptions {
    fn example() -> Self {
        epi_core::settings::example_from(serde_json::json!({}))
    }
}

epi_core::inventory::submit! {
    PluginRegistration {
        key: KEY,
        description: "EPI per configuration as bars, with 95% interval whiskers where results carry them",
        factory: Factory::Plot(build),
        settings: epi_core::settings::Settings::of::<BarsOptions>,
        toml_aliases: &[],
        capabilities: &[],
    }
}

struct BarsFigure {
    title: String,
    subtitle: String,
    /// `J/token`, or the unit of the results' token basis.
    unit: String,
    bars: Vec<Bar>,
}

impl Plot for BarsPlot {
    fn render(&self, input: &PlotInput, spec: &PlotSpec) -> Result<PlotReport, PlotError> {
        let options: BarsOptions = crate::render_options(KEY, &self.options, spec)?;
        let results = crate::results_input(KEY, input)?;
        let unit = crate::per_token_unit(&crate::token_basis(KEY, results)?);
        let (canvas, pal) = style::canvas_and_palette(KEY, spec)?;
        let mut warnings = Vec::new();
        let kept: Vec<&EpiResult> = results
            .iter()
            .filter(|r| {
                let ok = r.epi.is_finite() && r.epi >= 0.0;
                if !ok {
                    warnings.push(format!(
                        "{}: EPI {} is not plottable; skipped",
                        r.run_metadata.run_id, r.epi
                    ));
                }
                ok
            })
            .collect();
        if kept.is_empty() {
            return Err(err(KEY, "no results to plot"));
        }
        let (_, common) = style::describe(&kept);
        let fig = BarsFigure {
            title: spec
                .title
                .clone()
                .unwrap_or_else(|| "Energy Per Intelligence by Configuration".into()),
            subtitle: common.join(" · "),
            unit,
            bars: bars(&kept, options.sort_by),
        };
        style::render(KEY, spec, &canvas, &pal, &fig)?;
        Ok(PlotReport {
            output: spec.output.clone(),
            content: serde_json::json!({ "bars": fig.bars }),
            warnings,
        })
    }
}

impl Figure for BarsFigure {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        c: &Canvas,
        pal: &Palette,
    ) -> Result<(), String> {
        let top = style::draw_title(root, c, pal, &self.title, Some(&self.subtitle))?;
        let (_, body) = root.split_vertically(top);
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        let n = self.bars.len();
        let label_size = if n > 24 { 9.0 } else { 12.0 };
        let max_label_px = c.width as f64 * 0.36;
        let labels: Vec<String> = self
            .bars
            .iter()
            .map(|b| c.fit_text(&b.label, label_size, max_label_px))
            .collect();
        let label_px = labels
            .iter()
            .map(|l| c.text_size(l, label_size).0)
            .fold(0.0, f64::max)
            + c.pt(14.0);
        let hi = self
            .bars
            .iter()
            .map(|b| {
                b.ci95
                    .map(|ci| ci.1)
                    .unwrap_or(b.epi)
                    .max(b.epi)
                    .max(b.repetitions.iter().cloned().fold(0.0, f64::max))
            })
            .fold(0.0, f64::max);
        let xr = (0.0, if hi > 0.0 { hi * 1.16 } else { 1.0 });
        // Categories run top to bottom: slot i spans [n-1-i-0.5, n-1-i+0.5].
        let yr = (-0.6, n as f64 - 0.4);
        let axes = style::Axes {
            x: xr,
            y: yr,
            x_desc: &format!("EPI = ({}) ÷ accuracy  (lower is better)", self.unit),
            y_desc: "",
            y_label_px: label_px.round() as i32,
            x_labels: true,
            y_labels: false,
        };
        let chart = style::panel(&body, c, pal, &axes)?;
        let rect = style::plot_rect(&chart);
        // Category labels, drawn over the (blank) y tick labels.
        for (i, l) in labels.iter().enumerate() {
            let y = (n - 1 - i) as f64;
            let (_, py) = chart.backend_coord(&(0.0, y));
            let style = c
                .font(label_size)
                .color(&pal.text)
                .pos(Pos::new(HPos::Right, VPos::Center));
            root.draw(&Text::new(l.clone(), (rect.0 - c.px(8.0), py), style))
                .map_err(e)?;
        }
        let best = self
            .bars
            .iter()
            .map(|b| b.epi)
            .fold(f64::INFINITY, f64::min);
        let other = style::blend(pal.accent, pal.panel, 0.45);
        let half = 0.32;
        let value_size = if n > 24 { 8.0 } else { 11.0 };
        for (i, b) in self.bars.iter().enumerate() {
            let y = (n - 1 - i) as f64;
            let colour = if b.epi == best { pal.accent } else { other };
            let p0 = chart.backend_coord(&(0.0, y + half));
            let p1 = chart.backend_coord(&(b.epi, y - half));
            root.draw(&Rectangle::new([p0, p1], colour.filled()))
                .map_err(e)?;
            let mut end = p1.0;
            if let Some((lo, hi)) = b.ci95 {
                let st = pal.text.stroke_width(c.upx(1.4));
                let (l, cy) = chart.backend_coord(&(lo, y));
                let (h, _) = chart.backend_coord(&(hi, y));
                let cap = c.px(5.0);
                root.draw(&PathElement::new(vec![(l, cy), (h, cy)], st))
                    .map_err(e)?;
                root.draw(&PathElement::new(vec![(l, cy - cap), (l, cy + cap)], st))
                    .map_err(e)?;
                root.draw(&PathElement::new(vec![(h, cy - cap), (h, cy + cap)], st))
                    .map_err(e)?;
                end = end.max(h);
            }
            if b.repetitions.len() > 1 {
                for &v in &b.repetitions {
                    let at = chart.backend_coord(&(v, y));
                    root.draw(&Circle::new(at, c.px(3.0), pal.background.filled()))
                        .map_err(e)?;
                    root.draw(&Circle::new(
                        at,
                        c.px(3.0),
                        pal.text.stroke_width(c.upx(1.0)),
                    ))
                    .map_err(e)?;
                    end = end.max(at.0);
                }
            }
            let (_, cy) = chart.backend_coord(&(0.0, y));
            let style = c
                .font(value_size)
                .color(&pal.text)
                .pos(Pos::new(HPos::Left, VPos::Center));
            root.draw(&Text::new(style::sig4(b.epi), (end + c.px(6.0), cy), style))
                .map_err(e)?;
        }
        let mut legend = vec![("lowest EPI".to_string(), Mark::Bar { color: pal.accent })];
        if self.bars.iter().any(|b| b.ci95.is_some()) {
            legend.push(("95% interval".into(), Mark::Whisker { color: pal.text }));
        }
        if self.bars.iter().any(|b| b.repetitions.len() > 1) {
            legend.push((
                "repetition (bar: median)".into(),
                Mark::Marker {
                    color: pal.text,
                    filled: false,
                },
            ));
        }
        // Bars grow from the left; the lower right is the emptiest unless the last bars are long.
        let pixels: Vec<(i32, i32)> = self
            .bars
            .iter()
            .enumerate()
            .flat_map(|(i, b)| {
                let y = (n - 1 - i) as f64;
                let steps = 8;
                let hi = b.ci95.map(|ci| ci.1).unwrap_or(b.epi) * 1.12;
                (0..=steps).map(move |k| (hi * k as f64 / steps as f64, y))
            })
            .map(|p| chart.backend_coord(&p))
            .collect();
        let lsize = style::legend_size(c, &legend);
        let corner =
            style::emptiest_corner(rect, (lsize.0 + c.px(16.0), lsize.1 + c.px(16.0)), &pixels);
        style::draw_legend(root, c, pal, rect, corner, &legend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(surgery: &str, epi: f64, ci: Option<(f64, f64)>) -> EpiResult {
        let mut r: EpiResult = serde_json::from_str(include_str!(
            "../../../epi-framework/tests/data/epi_result_min.json"
        ))
        .unwrap();
        r.surgery = surgery.into();
        r.epi = epi;
        r.uncertainty = ci.map(|c| epi_core::result::Uncertainty {
            energy_rel_accuracy: 0.02,
            accuracy_ci95: None,
            epi_ci95: Some(c),
            note: String::new(),
        });
        r
    }

    #[test]
    fn median_bars_sorted_with_intervals() {
        let rs = [
            result("b", 5.0, Some((4.8, 5.2))),
            result("a", 6.0, None),
            result("b", 4.0, Some((3.9, 4.1))),
            result("b", 4.5, Some((4.4, 4.6))),
            result("c", 3.0, Some((2.9, 3.1))),
            result("c", 3.4, Some((3.3, 3.5))),
        ];
        let refs: Vec<&EpiResult> = rs.iter().collect();
        let b = bars(&refs, SortBy::Epi);
        assert_eq!(
            b.iter().map(|b| b.label.as_str()).collect::<Vec<_>>(),
            vec!["c", "b", "a"]
        );
        // c: even count → mean of the middles, envelope of their intervals
        assert!((b[0].epi - 3.2).abs() < 1e-12);
        assert_eq!(b[0].ci95, Some((2.9, 3.5)));
        // b: odd count → the median result's own interval
        assert_eq!(b[1].epi, 4.5);
        assert_eq!(b[1].ci95, Some((4.4, 4.6)));
        assert_eq!(b[1].repetitions, vec![4.0, 4.5, 5.0]);
        assert_eq!(b[2].ci95, None);
        let by_label = bars(&refs, SortBy::Label);
        assert_eq!(
            by_label
                .iter()
                .map(|b| b.label.as_str())
                .collect::<Vec<_>>(),
            vec!["a", "b", "c"]
        );
        let unsorted = bars(&refs, SortBy::None);
        assert_eq!(
            unsorted
                .iter()
                .map(|b| b.label.as_str())
                .collect::<Vec<_>>(),
            vec!["b", "a", "c"]
        );
    }
}
