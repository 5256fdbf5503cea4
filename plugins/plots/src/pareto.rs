//! `pareto`: accuracy against energy per token, every point labelled, with the Pareto frontier
//! (maximum accuracy, minimum J/token) computed and drawn — the `ParetoPlotter` of the spec.

use crate::style::{self, err, Canvas, Corner, Figure, Mark, Palette};
use epi_core::plot::{Plot, PlotError, PlotInput, PlotReport, PlotSpec};
use epi_core::registry::{parse_config, Factory, PluginConfig, PluginRegistration};
use epi_core::{EpiResult, Error};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::{Deserialize, Serialize};

const KEY: &str = "pareto";

/// Which quantity runs along the x axis (the other is on y).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum XAxis {
    /// Composite accuracy on x, J/token on y (the spec's `x="accuracy_composite"`).
    Accuracy,
    /// J/token on x, accuracy on y.
    JoulesPerToken,
}

/// Options of the Pareto plot (`[plot.pareto]`, overridden by flags).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ParetoOptions {
    /// The x-axis quantity.
    pub x_axis: XAxis,
    /// The result field each point is labelled with (`surgery`, `model`, `quantization`, ...).
    pub labels: String,
}

impl Default for ParetoOptions {
    fn default() -> Self {
        ParetoOptions {
            x_axis: XAxis::Accuracy,
            labels: "surgery".into(),
        }
    }
}

/// Which points are on the Pareto frontier of (`higher_better`, `lower_better`) pairs: a point is
/// on it when no other point is at least as good in both and strictly better in one. Equal points
/// do not dominate each other (both are on the frontier); a point equal in one quantity and worse
/// in the other is dominated. O(n log n).
pub fn pareto_frontier(points: &[(f64, f64)]) -> Vec<bool> {
    let mut order: Vec<usize> = (0..points.len()).collect();
    // Cheapest first; among equal cost, most accurate first.
    order.sort_by(|&a, &b| {
        let (pa, pb) = (points[a], points[b]);
        pa.1.total_cmp(&pb.1).then(pb.0.total_cmp(&pa.0))
    });
    let mut on = vec![false; points.len()];
    let mut best_cheaper = f64::NEG_INFINITY; // best accuracy among strictly cheaper points
    let mut i = 0;
    while i < order.len() {
        let cost = points[order[i]].1;
        let mut j = i;
        while j < order.len() && points[order[j]].1 == cost {
            j += 1;
        }
        let group_best = points[order[i]].0; // sorted: first is the most accurate
        for &k in &order[i..j] {
            let acc = points[k].0;
            on[k] = acc == group_best && acc > best_cheaper;
        }
        best_cheaper = best_cheaper.max(group_best);
        i = j;
    }
    on
}

/// The label of a result: the string (or number) value of a top-level field.
pub(crate) fn field_label(r: &EpiResult, field: &str) -> Option<String> {
    match field {
        "surgery" => return Some(r.surgery.clone()),
        "model" => return Some(r.model.clone()),
        "quantization" => return Some(r.quantization.clone()),
        "hardware" => return Some(r.hardware.clone()),
        _ => {}
    }
    let v = serde_json::to_value(r).ok()?;
    let found = v
        .get(field)
        .or_else(|| v.get("run_metadata").and_then(|m| m.get(field)))?;
    match found {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The Pareto plot.
#[derive(Debug)]
pub struct ParetoPlot {
    options: ParetoOptions,
}

fn build(config: &PluginConfig) -> Result<Box<dyn Plot>, Error> {
    let options: ParetoOptions = parse_config(KEY, config)?;
    Ok(Box::new(ParetoPlot { options }))
}

impl epi_core::settings::PluginSettings for ParetoOptions {
    fn example() -> Self {
        epi_core::settings::example_from(serde_json::json!({}))
    }
}

epi_core::inventory::submit! {
    PluginRegistration {
        key: KEY,
        description: "Accuracy vs J/token scatter with the Pareto frontier (max accuracy, min J/token)",
        factory: Factory::Plot(build),
        settings: epi_core::settings::Settings::of::<ParetoOptions>,
        toml_aliases: &[],
        capabilities: &[],
    }
}

struct Point {
    acc: f64,
    jpt: f64,
    label: String,
    group: usize,
    on_frontier: bool,
}

struct ParetoFigure {
    title: String,
    subtitle: String,
    /// `J/token`, or the unit of the results' token basis.
    unit: String,
    x_axis: XAxis,
    points: Vec<Point>,
    groups: Vec<String>,
}

impl Plot for ParetoPlot {
    fn render(&self, input: &PlotInput, spec: &PlotSpec) -> Result<PlotReport, PlotError> {
        let options: ParetoOptions = crate::render_options(KEY, &self.options, spec)?;
        let results = crate::results_input(KEY, input)?;
        let unit = crate::per_token_unit(&crate::token_basis(KEY, results)?);
        let (canvas, pal) = style::canvas_and_palette(KEY, spec)?;
        let mut warnings = Vec::new();
        let mut kept: Vec<&EpiResult> = Vec::new();
        for r in results {
            if r.accuracy_composite.is_finite() && r.joules_per_token.is_finite() {
                kept.push(r);
            } else {
                warnings.push(format!(
                    "{}: accuracy or J/token is not a number; skipped",
                    r.run_metadata.run_id
                ));
            }
        }
        if kept.is_empty() {
            return Err(err(KEY, "no results to plot"));
        }
        let (varying, common) = style::describe(&kept);
        let mut groups: Vec<String> = Vec::new();
        let group_by_model = varying.contains(&"model");
        let pairs: Vec<(f64, f64)> = kept
            .iter()
            .map(|r| (r.accuracy_composite, r.joules_per_token))
            .collect();
        let on = pareto_frontier(&pairs);
        let mut points = Vec::new();
        for (i, r) in kept.iter().enumerate() {
            let label = field_label(r, &options.labels).unwrap_or_else(|| {
                warnings.push(format!(
                    "{}: no field `{}` to label with",
                    r.run_metadata.run_id, options.labels
                ));
                String::new()
            });
            let gname = if group_by_model {
                r.model.clone()
            } else {
                String::new()
            };
            let group = match groups.iter().position(|g| *g == gname) {
                Some(g) => g,
                None => {
                    groups.push(gname);
                    groups.len() - 1
                }
            };
            points.push(Point {
                acc: r.accuracy_composite,
                jpt: r.joules_per_token,
                label,
                group,
                on_frontier: on[i],
            });
        }
        let fig = ParetoFigure {
            title: spec
                .title
                .clone()
                .unwrap_or_else(|| "Accuracy vs Energy per Token".into()),
            subtitle: common.join(" · "),
            unit,
            x_axis: options.x_axis,
            points,
            groups,
        };
        style::render(KEY, spec, &canvas, &pal, &fig)?;
        let member = |p: &Point| serde_json::json!({"label": p.label, "accuracy": p.acc, "joules_per_token": p.jpt});
        let mut frontier: Vec<&Point> = fig.points.iter().filter(|p| p.on_frontier).collect();
        frontier.sort_by(|a, b| a.jpt.total_cmp(&b.jpt));
        Ok(PlotReport {
            output: spec.output.clone(),
            content: serde_json::json!({
                "points": fig.points.len(),
                "frontier": frontier.iter().map(|p| member(p)).collect::<Vec<_>>(),
                "dominated": fig.points.iter().filter(|p| !p.on_frontier).map(member).collect::<Vec<_>>(),
            }),
            warnings,
        })
    }
}

impl ParetoFigure {
    fn xy(&self, p: &Point) -> (f64, f64) {
        match self.x_axis {
            XAxis::Accuracy => (p.acc, p.jpt),
            XAxis::JoulesPerToken => (p.jpt, p.acc),
        }
    }
}

/// A placed rectangle, px.
type Rect = (f64, f64, f64, f64);

fn overlaps(a: Rect, b: Rect) -> bool {
    a.0 < b.2 && b.0 < a.2 && a.1 < b.3 && b.1 < a.3
}

fn overlap_area(a: Rect, b: Rect) -> f64 {
    let w = (a.2.min(b.2) - a.0.max(b.0)).max(0.0);
    let h = (a.3.min(b.3) - a.1.max(b.1)).max(0.0);
    w * h
}

impl Figure for ParetoFigure {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        c: &Canvas,
        pal: &Palette,
    ) -> Result<(), String> {
        let top = style::draw_title(root, c, pal, &self.title, Some(&self.subtitle))?;
        let (_, body) = root.split_vertically(top);
        let xs: Vec<f64> = self.points.iter().map(|p| self.xy(p).0).collect();
        let ys: Vec<f64> = self.points.iter().map(|p| self.xy(p).1).collect();
        let min = |v: &[f64]| v.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = |v: &[f64]| v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let xr = style::padded(min(&xs), max(&xs), 0.12);
        let yr = style::padded(min(&ys), max(&ys), 0.10);
        let jpt = format!("Energy per token, {}  (lower is better)", self.unit);
        let (acc_desc, jpt_desc) = ("Composite accuracy  (higher is better)", jpt.as_str());
        let (x_desc, y_desc) = match self.x_axis {
            XAxis::Accuracy => (acc_desc, jpt_desc),
            XAxis::JoulesPerToken => (jpt_desc, acc_desc),
        };
        let axes = style::Axes {
            x: xr,
            y: yr,
            x_desc,
            y_desc,
            y_label_px: c.px(78.0),
            x_labels: true,
            y_labels: true,
        };
        let chart = style::panel(&body, c, pal, &axes)?;
        let rect = style::plot_rect(&chart);
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        let colour = |p: &Point| {
            if self.groups.len() > 1 {
                pal.series(p.group)
            } else {
                pal.accent
            }
        };

        // The frontier, cheapest to dearest.
        let mut frontier: Vec<&Point> = self.points.iter().filter(|p| p.on_frontier).collect();
        frontier.sort_by(|a, b| a.jpt.total_cmp(&b.jpt).then(a.acc.total_cmp(&b.acc)));
        let line: Vec<(f64, f64)> = frontier.iter().map(|p| self.xy(p)).collect();
        if line.len() > 1 {
            let coords: Vec<(i32, i32)> = line.iter().map(|p| chart.backend_coord(p)).collect();
            let style = pal.accent.stroke_width(c.upx(2.0));
            draw_dashed(root, &coords, c.pt(7.0), c.pt(4.0), style).map_err(e)?;
        }

        // Points: dominated hollow, frontier filled.
        let r = c.px(5.5);
        for p in &self.points {
            let at = chart.backend_coord(&self.xy(p));
            if p.on_frontier {
                root.draw(&Circle::new(at, r, colour(p).filled()))
                    .map_err(e)?;
                root.draw(&Circle::new(at, r, pal.background.stroke_width(c.upx(1.0))))
                    .map_err(e)?;
            } else {
                root.draw(&Circle::new(at, r, pal.panel.filled()))
                    .map_err(e)?;
                root.draw(&Circle::new(
                    at,
                    r,
                    style::blend(colour(p), pal.panel, 0.25).stroke_width(c.upx(1.8)),
                ))
                .map_err(e)?;
            }
        }

        // Labels: for each point, the first candidate position that overlaps nothing placed so far
        // (points, earlier labels, the legend) and stays inside the plot; else the least overlap.
        let mut legend: Vec<(String, Mark)> = Vec::new();
        if self.groups.len() > 1 {
            for (i, g) in self.groups.iter().enumerate() {
                legend.push((
                    g.clone(),
                    Mark::Marker {
                        color: pal.series(i),
                        filled: true,
                    },
                ));
            }
        }
        legend.push((
            "Pareto frontier".into(),
            Mark::Line {
                color: pal.accent,
                width_pt: 2.0,
                dashed: true,
            },
        ));
        let any_colour = if self.groups.len() > 1 {
            pal.muted
        } else {
            pal.accent
        };
        legend.push((
            "on the frontier".into(),
            Mark::Marker {
                color: any_colour,
                filled: true,
            },
        ));
        if self.points.iter().any(|p| !p.on_frontier) {
            legend.push((
                "dominated".into(),
                Mark::Marker {
                    color: any_colour,
                    filled: false,
                },
            ));
        }
        let pixels: Vec<(i32, i32)> = self
            .points
            .iter()
            .map(|p| chart.backend_coord(&self.xy(p)))
            .collect();
        let lsize = style::legend_size(c, &legend);
        let corner =
            style::emptiest_corner(rect, (lsize.0 + c.px(16.0), lsize.1 + c.px(16.0)), &pixels);
        let inset = c.pt(8.0);
        let (lw, lh) = (lsize.0 as f64, lsize.1 as f64);
        let (x0, y0, x1, y1) = (rect.0 as f64, rect.1 as f64, rect.2 as f64, rect.3 as f64);
        let legend_rect: Rect = match corner {
            Corner::UpperLeft => (x0 + inset, y0 + inset, x0 + inset + lw, y0 + inset + lh),
            Corner::UpperRight => (x1 - inset - lw, y0 + inset, x1 - inset, y0 + inset + lh),
            Corner::LowerLeft => (x0 + inset, y1 - inset - lh, x0 + inset + lw, y1 - inset),
            Corner::LowerRight => (x1 - inset - lw, y1 - inset - lh, x1 - inset, y1 - inset),
        };
        let mut taken: Vec<Rect> = vec![legend_rect];
        let rr = r as f64 + c.pt(1.5);
        for &(px, py) in &pixels {
            taken.push((
                px as f64 - rr,
                py as f64 - rr,
                px as f64 + rr,
                py as f64 + rr,
            ));
        }
        // The frontier line, as small squares every few points along it.
        let line_px: Vec<(i32, i32)> = line.iter().map(|p| chart.backend_coord(p)).collect();
        let half = c.pt(1.5);
        for w in line_px.windows(2) {
            let (a, b) = (
                (w[0].0 as f64, w[0].1 as f64),
                (w[1].0 as f64, w[1].1 as f64),
            );
            let len = ((b.0 - a.0).powi(2) + (b.1 - a.1).powi(2)).sqrt();
            let steps = (len / c.pt(3.0)).ceil().max(1.0) as usize;
            for k in 0..=steps {
                let t = k as f64 / steps as f64;
                let (x, y) = (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
                taken.push((x - half, y - half, x + half, y + half));
            }
        }
        let size = 11.0;
        let gap = c.pt(4.0) + r as f64;
        for (p, &(px, py)) in self.points.iter().zip(&pixels) {
            if p.label.is_empty() {
                continue;
            }
            let (w, h) = c.text_size(&p.label, size);
            let (px, py) = (px as f64, py as f64);
            // (anchor x, anchor y, horizontal pos, vertical pos) candidates around the point.
            let candidates = [
                (px + gap, py, HPos::Left, VPos::Center),
                (px - gap, py, HPos::Right, VPos::Center),
                (px, py - gap, HPos::Center, VPos::Bottom),
                (px, py + gap, HPos::Center, VPos::Top),
                (px + gap * 0.8, py - gap * 0.8, HPos::Left, VPos::Bottom),
                (px + gap * 0.8, py + gap * 0.8, HPos::Left, VPos::Top),
                (px - gap * 0.8, py - gap * 0.8, HPos::Right, VPos::Bottom),
                (px - gap * 0.8, py + gap * 0.8, HPos::Right, VPos::Top),
                (px + gap * 2.2, py - gap * 1.6, HPos::Left, VPos::Bottom),
                (px - gap * 2.2, py + gap * 1.6, HPos::Right, VPos::Top),
            ];
            let rect_of = |&(ax, ay, hp, vp): &(f64, f64, HPos, VPos)| -> Rect {
                let lx = match hp {
                    HPos::Left => ax,
                    HPos::Center => ax - w / 2.0,
                    HPos::Right => ax - w,
                };
                let ty = match vp {
                    VPos::Top => ay,
                    VPos::Center => ay - h / 2.0,
                    VPos::Bottom => ay - h,
                };
                (lx - 2.0, ty - 2.0, lx + w + 2.0, ty + h + 2.0)
            };
            let inside = |b: Rect| b.0 >= x0 && b.2 <= x1 && b.1 >= y0 && b.3 <= y1;
            let cost = |b: Rect| -> f64 {
                let over: f64 = taken.iter().map(|t| overlap_area(*t, b)).sum();
                over + if inside(b) { 0.0 } else { 1e9 }
            };
            let chosen = candidates
                .iter()
                .find(|cand| {
                    let b = rect_of(cand);
                    inside(b) && !taken.iter().any(|t| overlaps(*t, b))
                })
                .or_else(|| {
                    candidates
                        .iter()
                        .min_by(|a, b| cost(rect_of(a)).total_cmp(&cost(rect_of(b))))
                })
                .copied();
            let Some(cand) = chosen else { continue };
            let b = rect_of(&cand);
            taken.push(b);
            // A leader line when the label sits away from its point: from the point's rim to the
            // nearest point of the label's box.
            let (nx, ny) = (px.clamp(b.0, b.2), py.clamp(b.1, b.3));
            let dist = ((nx - px).powi(2) + (ny - py).powi(2)).sqrt();
            if dist > gap * 1.6 {
                let rim = r as f64 + c.pt(1.5);
                let (ux, uy) = ((nx - px) / dist, (ny - py) / dist);
                let from = (
                    (px + ux * rim).round() as i32,
                    (py + uy * rim).round() as i32,
                );
                let to = (
                    (nx - ux * c.pt(1.5)).round() as i32,
                    (ny - uy * c.pt(1.5)).round() as i32,
                );
                root.draw(&PathElement::new(
                    vec![from, to],
                    pal.muted.stroke_width(c.upx(0.8)),
                ))
                .map_err(e)?;
            }
            let text_colour = if p.on_frontier { pal.text } else { pal.muted };
            let style = c
                .font(size)
                .color(&text_colour)
                .pos(Pos::new(cand.2, cand.3));
            root.draw(&Text::new(
                p.label.clone(),
                (cand.0.round() as i32, cand.1.round() as i32),
                style,
            ))
            .map_err(e)?;
        }

        // "better" toward the ideal corner.
        let better = match self.x_axis {
            XAxis::Accuracy => (
                "better ↘",
                (x1 - c.pt(10.0), y1 - c.pt(8.0)),
                HPos::Right,
                VPos::Bottom,
            ),
            XAxis::JoulesPerToken => (
                "↖ better",
                (x0 + c.pt(10.0), y0 + c.pt(8.0)),
                HPos::Left,
                VPos::Top,
            ),
        };
        let (bw, bh) = c.text_size(better.0, 11.0);
        let brect: Rect = match better.2 {
            HPos::Right => (better.1 .0 - bw, better.1 .1 - bh, better.1 .0, better.1 .1),
            _ => (better.1 .0, better.1 .1, better.1 .0 + bw, better.1 .1 + bh),
        };
        if !taken.iter().any(|t| overlaps(*t, brect)) {
            let style = c
                .font(11.0)
                .color(&pal.muted)
                .pos(Pos::new(better.2, better.3));
            let at = (better.1 .0.round() as i32, better.1 .1.round() as i32);
            root.draw(&Text::new(better.0, at, style)).map_err(e)?;
        }
        style::draw_legend(root, c, pal, rect, corner, &legend)
    }
}

/// Draws a dashed polyline through `pts` (px), the dash pattern continuing across vertices.
pub(crate) fn draw_dashed<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    pts: &[(i32, i32)],
    dash: f64,
    gap: f64,
    style: ShapeStyle,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let mut on = true;
    let mut left = dash;
    for w in pts.windows(2) {
        let (a, b) = (
            (w[0].0 as f64, w[0].1 as f64),
            (w[1].0 as f64, w[1].1 as f64),
        );
        let len = ((b.0 - a.0).powi(2) + (b.1 - a.1).powi(2)).sqrt();
        let mut t = 0.0;
        while t < len {
            let step = left.min(len - t);
            if on {
                let p0 = (a.0 + (b.0 - a.0) * t / len, a.1 + (b.1 - a.1) * t / len);
                let p1 = (
                    a.0 + (b.0 - a.0) * (t + step) / len,
                    a.1 + (b.1 - a.1) * (t + step) / len,
                );
                root.draw(&PathElement::new(
                    vec![
                        (p0.0.round() as i32, p0.1.round() as i32),
                        (p1.0.round() as i32, p1.1.round() as i32),
                    ],
                    style,
                ))?;
            }
            t += step;
            left -= step;
            if left <= 1e-9 {
                on = !on;
                left = if on { dash } else { gap };
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(points: &[(f64, f64)]) -> Vec<usize> {
        pareto_frontier(points)
            .iter()
            .enumerate()
            .filter(|(_, &b)| b)
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn frontier_golden() {
        // (accuracy, J/token)
        let pts = [
            (0.74, 4.0), // 0: most accurate → frontier
            (0.73, 3.6), // 1: cheaper, a bit less accurate → frontier
            (0.70, 3.7), // 2: dominated by 1 (less accurate, dearer)
            (0.60, 3.0), // 3: cheapest → frontier
            (0.60, 3.2), // 4: same accuracy as 3, dearer → dominated
            (0.65, 3.6), // 5: same cost as 1, less accurate → dominated
            (0.73, 3.6), // 6: identical to 1 → frontier too (a tie dominates nothing)
            (0.74, 4.2), // 7: same accuracy as 0, dearer → dominated
        ];
        assert_eq!(on(&pts), vec![0, 1, 3, 6]);
    }

    #[test]
    fn frontier_edge_cases() {
        assert_eq!(on(&[]), Vec::<usize>::new());
        assert_eq!(on(&[(0.5, 1.0)]), vec![0]);
        // all identical: all on the frontier
        assert_eq!(on(&[(0.5, 1.0), (0.5, 1.0), (0.5, 1.0)]), vec![0, 1, 2]);
        // a strict chain: only the best survives
        assert_eq!(on(&[(0.5, 2.0), (0.6, 1.5), (0.7, 1.0)]), vec![2]);
        // monotone trade-off: everything survives
        assert_eq!(on(&[(0.5, 1.0), (0.6, 1.5), (0.7, 2.0)]), vec![0, 1, 2]);
    }

    #[test]
    fn frontier_matches_brute_force() {
        // A deterministic pseudo-random cloud with many ties on a coarse grid.
        let mut s: u64 = 0x9E3779B97F4A7C15;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % 12) as f64
        };
        let pts: Vec<(f64, f64)> = (0..300).map(|_| (next() / 10.0, next())).collect();
        let fast = pareto_frontier(&pts);
        for (i, p) in pts.iter().enumerate() {
            let dominated = pts
                .iter()
                .any(|q| q.0 >= p.0 && q.1 <= p.1 && (q.0 > p.0 || q.1 < p.1));
            assert_eq!(fast[i], !dominated, "point {i} {p:?}");
        }
    }
}
