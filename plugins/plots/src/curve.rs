//! `curve`: EPI against a surgery parameter (experts dropped, heads removed, ...) with the knee
//! marked — the `SurgeryCurve` of the spec.
//!
//! **Series.** The x value of a result is `EpiResult::surgery_param(x_param)` (from
//! `surgery_params`, `run_metadata`, or a `name=value` pair in the surgery string); results without
//! it are skipped with a warning. Results form one series when they agree on model, quantization,
//! hardware and every *other* surgery parameter (e.g. `method`). A result that lacks a parameter the
//! others of its model have (the unmodified baseline has no `method`) belongs to every series it
//! does not contradict, so each method's curve starts at the shared baseline. Several results at
//! one x (repetitions) are reduced to their median.
//!
//! **Knee.** Both axes are scaled to [0, 1] over the series, and the knee is the point farthest
//! (perpendicular distance) from the chord joining the first and last points — the
//! "maximum distance to chord" form of Kneedle (Satopää et al., 2011). For an EPI curve that falls
//! slowly and then climbs steeply, that is where the climb starts. A series needs at least three
//! x values and a curve that leaves the chord; otherwise it has no knee.

use crate::pareto::draw_dashed;
use crate::style::{self, err, Canvas, Figure, Mark, Palette};
use epi_core::plot::{Plot, PlotError, PlotInput, PlotReport, PlotSpec};
use epi_core::registry::{parse_config, Factory, PluginConfig, PluginRegistration};
use epi_core::{EpiResult, Error};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const KEY: &str = "curve";

/// Options of the surgery curve (`[plot.curve]`, overridden by flags).
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CurveOptions {
    /// The surgery parameter on the x axis (`experts_dropped`). Required.
    pub x_param: Option<String>,
}

/// The knee of a curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Knee {
    /// Index of the knee point.
    pub index: usize,
    /// Its x.
    pub x: f64,
    /// Its y.
    pub y: f64,
    /// Its distance from the chord in the unit square.
    pub distance: f64,
}

/// The knee of the curve through `points` (sorted by x, distinct x): the point farthest from the
/// chord joining the first and last points, both axes scaled to [0, 1]. `None` with fewer than
/// three points, or when every point lies on the chord (to 1e-9).
pub fn knee(points: &[(f64, f64)]) -> Option<Knee> {
    if points.len() < 3 {
        return None;
    }
    let (x0, x1) = (points[0].0, points[points.len() - 1].0);
    let (ymin, ymax) = points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.1), hi.max(p.1))
        });
    let spread = x1 > x0 && ymax > ymin;
    if !spread {
        return None;
    }
    let norm = |p: (f64, f64)| ((p.0 - x0) / (x1 - x0), (p.1 - ymin) / (ymax - ymin));
    let a = norm(points[0]);
    let b = norm(points[points.len() - 1]);
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len = (dx * dx + dy * dy).sqrt();
    let mut best: Option<Knee> = None;
    for (i, p) in points.iter().enumerate().take(points.len() - 1).skip(1) {
        let q = norm(*p);
        let d = ((q.0 - a.0) * dy - (q.1 - a.1) * dx).abs() / len;
        if best.is_none_or(|k| d > k.distance) {
            best = Some(Knee {
                index: i,
                x: p.0,
                y: p.1,
                distance: d,
            });
        }
    }
    best.filter(|k| k.distance > 1e-9)
}

/// One series of the curve.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// (x, median EPI) sorted by x.
    pub points: Vec<(f64, f64)>,
    /// Every result's (x, EPI), repetitions included.
    pub all: Vec<(f64, f64)>,
    /// The knee, when there is one.
    pub knee: Option<Knee>,
}

fn value_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Builds the series of `results` against `x_param`; also returns warnings for skipped results.
pub fn series(results: &[&EpiResult], x_param: &str) -> (Vec<Series>, Vec<String>) {
    let mut warnings = Vec::new();
    // (base key, other params, x, epi)
    type Item = ((String, String, String), BTreeMap<String, String>, f64, f64);
    let mut items: Vec<Item> = Vec::new();
    for r in results {
        let Some(x) = r.surgery_param(x_param).filter(|x| x.is_finite()) else {
            warnings.push(format!(
                "{} ({}): no numeric surgery parameter `{x_param}`; skipped",
                r.run_metadata.run_id, r.surgery
            ));
            continue;
        };
        if !r.epi.is_finite() {
            warnings.push(format!(
                "{}: EPI is not a number; skipped",
                r.run_metadata.run_id
            ));
            continue;
        }
        let others: BTreeMap<String, String> = r
            .surgery_params
            .iter()
            .filter(|(k, _)| k.as_str() != x_param)
            .map(|(k, v)| (k.clone(), value_text(v)))
            .collect();
        items.push((
            (r.model.clone(), r.quantization.clone(), r.hardware.clone()),
            others,
            x,
            r.epi,
        ));
    }
    let bases: Vec<(String, String, String)> = {
        let mut v: Vec<_> = Vec::new();
        for it in &items {
            if !v.contains(&it.0) {
                v.push(it.0.clone());
            }
        }
        v
    };
    let base_varies =
        |f: fn(&(String, String, String)) -> &String| bases.iter().any(|b| f(b) != f(&bases[0]));
    let (m_var, q_var, h_var) = (
        base_varies(|b| &b.0),
        base_varies(|b| &b.1),
        base_varies(|b| &b.2),
    );
    let mut out = Vec::new();
    for base in &bases {
        let mine: Vec<&Item> = items.iter().filter(|it| &it.0 == base).collect();
        let keys: Vec<String> = {
            let mut k: Vec<String> = mine.iter().flat_map(|it| it.1.keys().cloned()).collect();
            k.sort();
            k.dedup();
            k
        };
        // Full series: distinct complete parameter sets.
        let mut sets: Vec<BTreeMap<String, String>> = Vec::new();
        for it in &mine {
            if keys.iter().all(|k| it.1.contains_key(k)) && !sets.contains(&it.1) {
                sets.push(it.1.clone());
            }
        }
        // Partial results join each set they agree with; none matching: their own series.
        let agrees = |partial: &BTreeMap<String, String>, full: &BTreeMap<String, String>| {
            partial.iter().all(|(k, v)| full.get(k) == Some(v))
        };
        for it in &mine {
            if !keys.iter().all(|k| it.1.contains_key(k))
                && !sets.iter().any(|s| agrees(&it.1, s))
                && !sets.contains(&it.1)
            {
                sets.push(it.1.clone());
            }
        }
        for set in &sets {
            let members: Vec<&&Item> = mine
                .iter()
                .filter(|it| it.1 == *set || agrees(&it.1, set))
                .collect();
            let mut by_x: BTreeMap<u64, (f64, Vec<f64>)> = BTreeMap::new();
            for it in &members {
                by_x.entry(order_key(it.2))
                    .or_insert((it.2, Vec::new()))
                    .1
                    .push(it.3);
            }
            let points: Vec<(f64, f64)> = by_x
                .values()
                .map(|(x, ys)| {
                    let mut ys = ys.clone();
                    ys.sort_by(f64::total_cmp);
                    let n = ys.len();
                    let m = if n % 2 == 1 {
                        ys[n / 2]
                    } else {
                        (ys[n / 2 - 1] + ys[n / 2]) / 2.0
                    };
                    (*x, m)
                })
                .collect();
            let mut label_parts: Vec<String> = Vec::new();
            if m_var {
                label_parts.push(base.0.clone());
            }
            if q_var {
                label_parts.push(base.1.clone());
            }
            if h_var {
                label_parts.push(base.2.clone());
            }
            label_parts.extend(set.iter().map(|(k, v)| format!("{k}={v}")));
            let label = if label_parts.is_empty() {
                base.0.clone()
            } else {
                label_parts.join(" · ")
            };
            out.push(Series {
                label,
                knee: knee(&points),
                all: members.iter().map(|it| (it.2, it.3)).collect(),
                points,
            });
        }
    }
    (out, warnings)
}

/// A key that sorts f64 values in numeric order (finite values).
fn order_key(x: f64) -> u64 {
    let b = x.to_bits();
    if b >> 63 == 1 {
        !b
    } else {
        b | (1 << 63)
    }
}

/// The surgery curve.
#[derive(Debug)]
pub struct CurvePlot {
    options: CurveOptions,
}

fn build(config: &PluginConfig) -> Result<Box<dyn Plot>, Error> {
    let options: CurveOptions = parse_config(KEY, config)?;
    Ok(Box::new(CurvePlot { options }))
}

impl epi_core::settings::PluginSettings for CurveOptions {
    fn example() -> Self {
        epi_core::settings::example_from(serde_json::json!({"x_param": "ffn_dim"}))
    }
}

epi_core::inventory::submit! {
    PluginRegistration {
        key: KEY,
        description: "EPI against a surgery parameter (experts dropped, ...) with the knee marked",
        factory: Factory::Plot(build),
        settings: epi_core::settings::Settings::of::<CurveOptions>,
        toml_aliases: &[],
        capabilities: &[],
    }
}

struct CurveFigure {
    title: String,
    subtitle: String,
    /// `J/token`, or the unit of the results' token basis.
    unit: String,
    x_param: String,
    series: Vec<Series>,
}

impl Plot for CurvePlot {
    fn render(&self, input: &PlotInput, spec: &PlotSpec) -> Result<PlotReport, PlotError> {
        let options: CurveOptions = crate::render_options(KEY, &self.options, spec)?;
        let Some(x_param) = options.x_param.filter(|p| !p.trim().is_empty()) else {
            return Err(err(
                KEY,
                "no x parameter: give --x-param NAME (a surgery parameter, e.g. experts_dropped)",
            ));
        };
        let results = crate::results_input(KEY, input)?;
        let unit = crate::per_token_unit(&crate::token_basis(KEY, results)?);
        let (canvas, pal) = style::canvas_and_palette(KEY, spec)?;
        let refs: Vec<&EpiResult> = results.iter().collect();
        let (series, warnings) = series(&refs, &x_param);
        if series.is_empty() {
            return Err(err(
                KEY,
                format!("no result has a numeric surgery parameter `{x_param}`"),
            ));
        }
        let (_, common) = style::describe(&refs);
        let fig = CurveFigure {
            title: spec
                .title
                .clone()
                .unwrap_or_else(|| format!("EPI vs {}", x_param.replace('_', " "))),
            subtitle: common.join(" · "),
            unit,
            x_param,
            series,
        };
        style::render(KEY, spec, &canvas, &pal, &fig)?;
        Ok(PlotReport {
            output: spec.output.clone(),
            content: serde_json::json!({ "x_param": fig.x_param, "series": fig.series }),
            warnings,
        })
    }
}

impl Figure for CurveFigure {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        c: &Canvas,
        pal: &Palette,
    ) -> Result<(), String> {
        let top = style::draw_title(root, c, pal, &self.title, Some(&self.subtitle))?;
        let (_, body) = root.split_vertically(top);
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        let all = self.series.iter().flat_map(|s| s.all.iter());
        let (mut x0, mut x1, mut y0, mut y1) = (
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
        );
        for &(x, y) in all {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        let xr = style::padded(x0, x1, 0.05);
        let yr = style::padded(y0, y1, 0.12);
        let axes = style::Axes {
            x: xr,
            y: yr,
            x_desc: &self.x_param.replace('_', " "),
            y_desc: &format!("EPI = ({}) ÷ accuracy  (lower is better)", self.unit),
            y_label_px: c.px(78.0),
            x_labels: true,
            y_labels: true,
        };
        let chart = style::panel(&body, c, pal, &axes)?;
        let rect = style::plot_rect(&chart);
        let mut legend: Vec<(String, Mark)> = Vec::new();
        let mut occupied: Vec<(i32, i32)> = Vec::new();
        for (i, s) in self.series.iter().enumerate() {
            let colour = pal.series(i);
            let px: Vec<(i32, i32)> = s.points.iter().map(|p| chart.backend_coord(p)).collect();
            // dense samples along the line, for legend placement
            for w in px.windows(2) {
                for k in 0..=10 {
                    let t = k as f64 / 10.0;
                    occupied.push((
                        (w[0].0 as f64 + (w[1].0 - w[0].0) as f64 * t) as i32,
                        (w[0].1 as f64 + (w[1].1 - w[0].1) as f64 * t) as i32,
                    ));
                }
            }
            root.draw(&PathElement::new(
                px.clone(),
                colour.stroke_width(c.upx(2.2)),
            ))
            .map_err(e)?;
            // repetitions (when several results share an x): small dots
            if s.all.len() > s.points.len() {
                for p in &s.all {
                    root.draw(&Circle::new(
                        chart.backend_coord(p),
                        c.px(2.5),
                        colour.mix(0.6).filled(),
                    ))
                    .map_err(e)?;
                }
            }
            for &p in &px {
                root.draw(&Circle::new(p, c.px(4.5), colour.filled()))
                    .map_err(e)?;
                root.draw(&Circle::new(
                    p,
                    c.px(4.5),
                    pal.panel.stroke_width(c.upx(1.0)),
                ))
                .map_err(e)?;
            }
            legend.push((
                s.label.clone(),
                Mark::Line {
                    color: colour,
                    width_pt: 2.2,
                    dashed: false,
                },
            ));
        }
        // Knees: a ring, a dashed drop line to the axis and a label.
        let mut any_knee = false;
        for (i, s) in self.series.iter().enumerate() {
            let Some(k) = s.knee else { continue };
            any_knee = true;
            let colour = pal.series(i);
            let at = chart.backend_coord(&(k.x, k.y));
            let bottom = chart.backend_coord(&(k.x, yr.0));
            draw_dashed(
                root,
                &[at, bottom],
                c.pt(5.0),
                c.pt(4.0),
                colour.mix(0.8).stroke_width(c.upx(1.2)),
            )
            .map_err(e)?;
            root.draw(&Circle::new(
                at,
                c.px(9.0),
                pal.text.stroke_width(c.upx(2.0)),
            ))
            .map_err(e)?;
            let text = format!(
                "knee: {} = {}, EPI {}",
                self.x_param.replace('_', " "),
                style::short_num(k.x),
                style::sig4(k.y)
            );
            // Drop line samples count as occupied too.
            for t in 0..=20 {
                let y = at.1 + (bottom.1 - at.1) * t / 20;
                occupied.push((at.0, y));
            }
            // The candidate box (left, top) around the ring that covers the fewest line points
            // and stays inside the plot.
            let (tw, th) = c.text_size(&text, 11.0);
            let (tw, th) = (tw.round() as i32, th.round() as i32);
            let d = c.px(12.0);
            let candidates = [
                (at.0 + d, at.1 - d - th),
                (at.0 - d - tw, at.1 - d - th),
                (at.0 + d, at.1 + d),
                (at.0 - d - tw, at.1 + d),
                (at.0 + d, at.1 - 3 * d - th),
                (at.0 - d - tw, at.1 - 3 * d - th),
                (at.0 - tw / 2, at.1 - 2 * d - th),
                (at.0 - tw / 2, at.1 + 2 * d),
            ];
            let cost = |&(x, y): &(i32, i32)| -> i64 {
                let pad = c.px(3.0);
                let inside = x >= rect.0 && x + tw <= rect.2 && y >= rect.1 && y + th <= rect.3;
                let hits = occupied
                    .iter()
                    .filter(|p| {
                        p.0 >= x - pad
                            && p.0 <= x + tw + pad
                            && p.1 >= y - pad
                            && p.1 <= y + th + pad
                    })
                    .count() as i64;
                hits + if inside { 0 } else { 1_000_000 }
            };
            let (tx, ty) = candidates
                .iter()
                .min_by_key(|cand| cost(cand))
                .copied()
                .unwrap_or((at.0 + d, at.1 - d - th));
            let style = c
                .font(11.0)
                .color(&pal.text)
                .pos(Pos::new(HPos::Left, VPos::Top));
            root.draw(&Text::new(text, (tx, ty), style)).map_err(e)?;
            for fx in 0..=8 {
                for fy in 0..=2 {
                    occupied.push((tx + tw * fx / 8, ty + th * fy / 2));
                }
            }
        }
        if any_knee {
            legend.push((
                "knee (max distance to chord)".into(),
                Mark::Ring { color: pal.text },
            ));
        }
        let lsize = style::legend_size(c, &legend);
        let corner = style::emptiest_corner(
            rect,
            (lsize.0 + c.px(16.0), lsize.1 + c.px(16.0)),
            &occupied,
        );
        style::draw_legend(root, c, pal, rect, corner, &legend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knee_golden() {
        // EPI flat-ish, then climbing steeply after x = 32.
        let pts = [
            (0.0, 5.30),
            (8.0, 5.22),
            (16.0, 5.15),
            (24.0, 5.10),
            (32.0, 5.09),
            (48.0, 6.80),
            (64.0, 9.00),
        ];
        let k = knee(&pts).unwrap();
        assert_eq!(k.x, 32.0);
        assert_eq!(k.index, 4);
        // By hand: x scaled by 64, y by (9.00 − 5.09); chord from (0, 0.0537) to (1, 1). At x = 48 the
        // point is 0.326 below the chord (vertically), at x = 32 it is 0.527: the knee is x = 32.
        let (ny, chord) = ((5.09 - 5.09) / 3.91, (5.30 - 5.09) / 3.91);
        let (dx, dy): (f64, f64) = (1.0, 1.0 - chord);
        let d = ((0.5 - 0.0) * dy - (ny - chord) * dx).abs() / (dx * dx + dy * dy).sqrt();
        assert!((k.distance - d).abs() < 1e-12, "{} vs {d}", k.distance);
    }

    #[test]
    fn knee_of_a_concave_curve_and_none_cases() {
        // Accuracy-like: fast rise then plateau; knee at the bend (x = 2).
        let pts = [
            (0.0, 0.0),
            (1.0, 0.6),
            (2.0, 0.9),
            (3.0, 0.95),
            (4.0, 0.97),
            (5.0, 1.0),
        ];
        // scaled: x/5; distances to the diagonal |x − y|/√2: 0.28, 0.35, 0.25, 0.12 → x = 2
        assert_eq!(knee(&pts).unwrap().x, 2.0);
        // straight line: no knee; two points: no knee; flat: no knee
        assert_eq!(
            knee(&[(0.0, 0.0), (1.0, 1.0), (2.0, 2.0), (3.0, 3.0)]),
            None
        );
        assert_eq!(knee(&[(0.0, 0.0), (1.0, 1.0)]), None);
        assert_eq!(knee(&[(0.0, 1.0), (1.0, 1.0), (2.0, 1.0)]), None);
    }

    fn result(surgery: &str, params: serde_json::Value, epi: f64) -> EpiResult {
        let mut r: EpiResult = serde_json::from_str(include_str!(
            "../../../epi-framework/tests/data/epi_result_min.json"
        ))
        .unwrap();
        r.surgery = surgery.into();
        r.surgery_params = params.as_object().cloned().unwrap_or_default();
        r.epi = epi;
        r.run_metadata.run_id = surgery.into();
        r
    }

    #[test]
    fn series_share_the_baseline_and_take_medians() {
        use serde_json::json;
        let rs = [
            result("none (baseline)", json!({"experts_dropped": 0}), 5.0),
            result(
                "f8",
                json!({"experts_dropped": 8, "method": "frequency"}),
                4.8,
            ),
            result(
                "f8b",
                json!({"experts_dropped": 8, "method": "frequency"}),
                5.2,
            ),
            result(
                "f8c",
                json!({"experts_dropped": 8, "method": "frequency"}),
                4.9,
            ),
            result(
                "f16",
                json!({"experts_dropped": 16, "method": "frequency"}),
                4.7,
            ),
            result("r8", json!({"experts_dropped": 8, "method": "random"}), 5.6),
            result(
                "experts_dropped=24, method=random",
                json!({"method": "random"}),
                6.5,
            ),
            result("no param", json!({}), 9.9),
        ];
        let refs: Vec<&EpiResult> = rs.iter().collect();
        let (s, warnings) = series(&refs, "experts_dropped");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("no param"));
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].label, "method=frequency");
        assert_eq!(s[0].points, vec![(0.0, 5.0), (8.0, 4.9), (16.0, 4.7)]);
        assert_eq!(s[1].label, "method=random");
        // the x of the last random result comes from its surgery string
        assert_eq!(s[1].points, vec![(0.0, 5.0), (8.0, 5.6), (24.0, 6.5)]);
    }
}
