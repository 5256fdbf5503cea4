//! `timeline`: per-node watts over time and the cluster total — the `PowerTimeline` of the spec.
//!
//! The trace is streamed row by row ([`TraceReader`]), never loaded whole: each sample goes into
//! one of a fixed number of equal time buckets (by default one per pixel column of the plot), which
//! keep the minimum, maximum, sum and count of their samples. Each column is drawn as a band from
//! its minimum to its maximum with the mean as a line, so a one-sample spike among millions stays
//! visible. Memory is the bucket array, whatever the trace's length.
//!
//! The time range is read from the first row and the file's last line; a row outside it (a file not
//! in time order) doubles the bucket width, merging neighbouring buckets, which keeps every
//! minimum and maximum exact.
//!
//! The cluster total at a sample instant is the sum of each node's latest sample, counting a node
//! only while its latest sample is younger than the gap limit. With the epi-meter's layout (every
//! node sampled at the same timestamps) that is the exact instant total. A file not in time order
//! has no total (a warning says so).

use crate::style::{self, err, Canvas, Figure, Mark, Palette};
use epi_core::plot::{Plot, PlotError, PlotInput, PlotReport, PlotSpec};
use epi_core::registry::{parse_config, Factory, PluginConfig, PluginRegistration};
use epi_core::Error;
use epi_trace::{parse_f64, Column, TraceReader};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

const KEY: &str = "timeline";

/// Options of the timeline (`[plot.timeline]`, overridden by flags).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TimelineOptions {
    /// Time buckets (default: one per pixel column of the plot area).
    pub buckets: Option<usize>,
    /// A node whose latest sample is older than this (ms) no longer counts in the total.
    pub gap_limit_ms: f64,
}

impl Default for TimelineOptions {
    fn default() -> Self {
        TimelineOptions {
            buckets: None,
            gap_limit_ms: 1000.0,
        }
    }
}

/// Samples of one time bucket.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bucket {
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Sum of values.
    pub sum: f64,
    /// Number of values.
    pub count: u64,
}

impl Bucket {
    /// No samples.
    pub const EMPTY: Bucket = Bucket {
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
        sum: 0.0,
        count: 0,
    };

    fn add(&mut self, v: f64) {
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.sum += v;
        self.count += 1;
    }

    fn merge(&mut self, o: &Bucket) {
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        self.sum += o.sum;
        self.count += o.count;
    }

    /// Mean of the values (NaN when empty).
    pub fn mean(&self) -> f64 {
        self.sum / self.count as f64
    }
}

/// A fixed number of equal-width time buckets for several series, over a range that grows by
/// doubling the width to take any timestamp (extremes stay exact).
#[derive(Debug, Clone)]
pub struct BucketGrid {
    t0: f64,
    width: f64,
    n: usize,
    series: Vec<Vec<Bucket>>,
}

impl BucketGrid {
    /// `n` buckets (rounded up to even, at least 2) over `[start, end]`.
    pub fn new(start: f64, end: f64, n: usize) -> BucketGrid {
        let n = n.max(2).div_ceil(2) * 2;
        let span = end - start;
        // A little wider than the span, so `end` falls into the last bucket.
        let width = if span > 0.0 && span.is_finite() {
            span / n as f64 * (1.0 + 1e-9)
        } else {
            1.0
        };
        BucketGrid {
            t0: start,
            width,
            n,
            series: Vec::new(),
        }
    }

    /// Adds a series; returns its index.
    pub fn add_series(&mut self) -> usize {
        self.series.push(vec![Bucket::EMPTY; self.n]);
        self.series.len() - 1
    }

    /// Adds value `v` at time `t` to series `s`.
    pub fn push(&mut self, s: usize, t: f64, v: f64) {
        let i = self.index(t);
        self.series[s][i].add(v);
    }

    fn index(&mut self, t: f64) -> usize {
        loop {
            let k = ((t - self.t0) / self.width).floor();
            if k >= self.n as f64 {
                self.grow_right();
            } else if k < 0.0 {
                self.grow_left();
            } else {
                return k as usize;
            }
        }
    }

    /// Doubles the width, keeping the start: bucket k takes old buckets 2k and 2k+1.
    fn grow_right(&mut self) {
        let half = self.n / 2;
        for s in &mut self.series {
            for k in 0..half {
                let mut b = s[2 * k];
                b.merge(&s[2 * k + 1]);
                s[k] = b;
            }
            for b in &mut s[half..] {
                *b = Bucket::EMPTY;
            }
        }
        self.width *= 2.0;
    }

    /// Doubles the width, keeping the end: old bucket k goes to (k + n) / 2.
    fn grow_left(&mut self) {
        let half = self.n / 2;
        for s in &mut self.series {
            for k in (half..self.n).rev() {
                let mut b = s[2 * k - self.n];
                b.merge(&s[2 * k + 1 - self.n]);
                s[k] = b;
            }
            for b in &mut s[..half] {
                *b = Bucket::EMPTY;
            }
        }
        self.t0 -= self.n as f64 * self.width;
        self.width *= 2.0;
    }

    /// Bucket width (time units of the input).
    pub fn width(&self) -> f64 {
        self.width
    }

    /// Start of bucket `i`.
    pub fn start_of(&self, i: usize) -> f64 {
        self.t0 + self.width * i as f64
    }

    /// The buckets of series `s`.
    pub fn buckets(&self, s: usize) -> &[Bucket] {
        &self.series[s]
    }

    /// Number of buckets.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Never empty (at least 2 buckets).
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// The largest value of a series and when it was.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Peak {
    /// Watts.
    pub watts: f64,
    /// When, ms on the trace's timeline.
    pub at_ms: f64,
}

/// A trace reduced for drawing.
#[derive(Debug, Clone)]
pub struct ReducedTrace {
    /// The buckets: one series per node, then the total (when there is one).
    pub grid: BucketGrid,
    /// Node ids, in series order.
    pub nodes: Vec<u32>,
    /// The series index of the cluster total (None for a file not in time order).
    pub total: Option<usize>,
    /// Rows read.
    pub samples: u64,
    /// First and last timestamp, ms.
    pub span_ms: (f64, f64),
    /// Peak of each node (series order).
    pub node_peaks: Vec<Peak>,
    /// Peak of the total.
    pub total_peak: Option<Peak>,
}

/// The timestamp of the last parsable row of `path` (read from its tail).
fn last_timestamp(path: &Path, ts_col: usize) -> Option<f64> {
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let from = len.saturating_sub(64 * 1024);
    f.seek(SeekFrom::Start(from)).ok()?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).ok()?;
    tail.split(|&b| b == b'\n')
        .rev()
        .filter_map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            line.split(|&b| b == b',').nth(ts_col).and_then(parse_f64)
        })
        .next()
}

/// Streams the trace at `path` into `buckets` time buckets per node and for the cluster total.
pub fn reduce_trace(path: &Path, buckets: usize, gap_limit_ms: f64) -> Result<ReducedTrace, Error> {
    let mut reader = TraceReader::open(path)?;
    let ts_col = reader
        .header()
        .columns
        .iter()
        .position(|c| *c == Column::Timestamp)
        .unwrap_or(0);
    let Some((_, first)) = reader.next_row()? else {
        return Err(Error::Invalid(format!(
            "{}: the trace has no samples",
            path.display()
        )));
    };
    let end_guess = last_timestamp(path, ts_col)
        .filter(|e| *e >= first.t_ms)
        .unwrap_or(first.t_ms);
    let mut grid = BucketGrid::new(first.t_ms, end_guess, buckets);
    let mut nodes: Vec<u32> = Vec::new();
    let mut node_series: Vec<usize> = Vec::new();
    let mut last: Vec<(f64, f64)> = Vec::new(); // per node: (t, watts) of its latest sample
    let mut node_peaks: Vec<Peak> = Vec::new();
    let total = grid.add_series();
    let mut total_peak = Peak {
        watts: f64::NEG_INFINITY,
        at_ms: 0.0,
    };
    let mut sorted = true;
    let mut cur_t = first.t_ms;
    let (mut t_min, mut t_max) = (first.t_ms, first.t_ms);
    let mut samples = 0u64;
    let mut pending = Some(first);
    loop {
        let row = match pending.take() {
            Some(r) => r,
            None => match reader.next_row()? {
                Some((_, r)) => r,
                None => break,
            },
        };
        samples += 1;
        t_min = t_min.min(row.t_ms);
        t_max = t_max.max(row.t_ms);
        if row.t_ms != cur_t {
            if row.t_ms < cur_t {
                sorted = false;
            }
            if sorted {
                close_instant(
                    &mut grid,
                    total,
                    &last,
                    cur_t,
                    gap_limit_ms,
                    &mut total_peak,
                );
            }
            cur_t = row.t_ms;
        }
        let i = match nodes.iter().position(|&n| n == row.node) {
            Some(i) => i,
            None => {
                nodes.push(row.node);
                node_series.push(grid.add_series());
                last.push((f64::NEG_INFINITY, 0.0));
                node_peaks.push(Peak {
                    watts: f64::NEG_INFINITY,
                    at_ms: 0.0,
                });
                nodes.len() - 1
            }
        };
        grid.push(node_series[i], row.t_ms, row.watts);
        last[i] = (row.t_ms, row.watts);
        if row.watts > node_peaks[i].watts {
            node_peaks[i] = Peak {
                watts: row.watts,
                at_ms: row.t_ms,
            };
        }
    }
    if sorted {
        close_instant(
            &mut grid,
            total,
            &last,
            cur_t,
            gap_limit_ms,
            &mut total_peak,
        );
    }
    Ok(ReducedTrace {
        total: sorted.then_some(total),
        total_peak: sorted.then_some(total_peak),
        grid,
        nodes,
        samples,
        span_ms: (t_min, t_max),
        node_peaks,
    })
}

/// Adds the cluster total at instant `t` (every node's latest sample, if fresh).
fn close_instant(
    grid: &mut BucketGrid,
    total: usize,
    last: &[(f64, f64)],
    t: f64,
    gap: f64,
    peak: &mut Peak,
) {
    let mut sum = 0.0;
    let mut any = false;
    for &(lt, w) in last {
        if lt <= t && t - lt <= gap {
            sum += w;
            any = true;
        }
    }
    if any {
        grid.push(total, t, sum);
        if sum > peak.watts {
            *peak = Peak {
                watts: sum,
                at_ms: t,
            };
        }
    }
}

/// The timeline plot.
#[derive(Debug)]
pub struct TimelinePlot {
    options: TimelineOptions,
}

fn build(config: &PluginConfig) -> Result<Box<dyn Plot>, Error> {
    let options: TimelineOptions = parse_config(KEY, config)?;
    Ok(Box::new(TimelinePlot { options }))
}

impl epi_core::settings::PluginSettings for TimelineOptions {
    fn example() -> Self {
        epi_core::settings::example_from(serde_json::json!({}))
    }
}

epi_core::inventory::submit! {
    PluginRegistration {
        key: KEY,
        description: "Per-node watts over time and the cluster total, min/max per pixel column (streamed)",
        factory: Factory::Plot(build),
        settings: epi_core::settings::Settings::of::<TimelineOptions>,
        toml_aliases: &[],
        capabilities: &[],
    }
}

/// The time unit of the x axis.
fn time_unit(span_ms: f64) -> (f64, &'static str) {
    if span_ms <= 180_000.0 {
        (1000.0, "s")
    } else if span_ms <= 3.0 * 3_600_000.0 {
        (60_000.0, "min")
    } else {
        (3_600_000.0, "h")
    }
}

struct TimelineFigure {
    title: String,
    subtitle: String,
    data: ReducedTrace,
    gap_limit_ms: f64,
}

/// Number of plot-area pixel columns of a canvas (the default bucket count).
fn plot_columns(c: &Canvas) -> usize {
    (c.width as f64 - c.pt(8.0 + 18.0 + 70.0)).max(2.0) as usize
}

impl Plot for TimelinePlot {
    fn render(&self, input: &PlotInput, spec: &PlotSpec) -> Result<PlotReport, PlotError> {
        let options: TimelineOptions = crate::render_options(KEY, &self.options, spec)?;
        let PlotInput::Trace(path) = input else {
            return Err(err(KEY, "needs a power trace (--trace FILE)"));
        };
        let (canvas, pal) = style::canvas_and_palette(KEY, spec)?;
        let buckets = options.buckets.unwrap_or_else(|| plot_columns(&canvas));
        if !(2..=1_000_000).contains(&buckets) {
            return Err(err(
                KEY,
                format!("buckets = {buckets}: expected 2 to 1000000"),
            ));
        }
        let data = reduce_trace(path, buckets, options.gap_limit_ms)
            .map_err(|e| err(KEY, e.to_string()))?;
        let mut warnings = Vec::new();
        if data.total.is_none() {
            warnings.push(format!(
                "{}: rows are not in time order; the cluster total is not drawn",
                path.display()
            ));
        }
        let span = data.span_ms.1 - data.span_ms.0;
        let (unit, uname) = time_unit(span);
        let subtitle = format!(
            "{} node{} · {} samples · {:.1} {uname} · bands: min–max per pixel column, lines: mean",
            data.nodes.len(),
            if data.nodes.len() == 1 { "" } else { "s" },
            group_thousands(data.samples),
            span / unit,
        );
        let fig = TimelineFigure {
            title: spec
                .title
                .clone()
                .unwrap_or_else(|| "Power Draw per Node".into()),
            subtitle,
            data,
            gap_limit_ms: options.gap_limit_ms,
        };
        style::render(KEY, spec, &canvas, &pal, &fig)?;
        let d = &fig.data;
        Ok(PlotReport {
            output: spec.output.clone(),
            content: serde_json::json!({
                "samples": d.samples,
                "nodes": d.nodes,
                "buckets": d.grid.len(),
                "bucket_ms": d.grid.width(),
                "start_ms": d.span_ms.0,
                "end_ms": d.span_ms.1,
                "time_sorted": d.total.is_some(),
                "node_peaks": d.node_peaks,
                "total_peak": d.total_peak,
            }),
            warnings,
        })
    }
}

fn group_thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

impl TimelineFigure {
    /// Draws one series' min–max band and mean line, broken at gaps.
    fn draw_series<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        chart: &style::Chart<'_, DB>,
        c: &Canvas,
        s: usize,
        colour: RGBColor,
        unit: f64,
    ) -> Result<(), String> {
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        let g = &self.data.grid;
        let t0 = self.data.span_ms.0;
        let x_of = |i: usize| (g.start_of(i) + g.width() / 2.0 - t0) / unit;
        let mut runs: Vec<Vec<usize>> = Vec::new();
        let mut last: Option<usize> = None;
        for (i, b) in g.buckets(s).iter().enumerate() {
            if b.count == 0 {
                continue;
            }
            let joined =
                last.is_some_and(|l| (i - l) as f64 * g.width() <= self.gap_limit_ms + g.width());
            if joined {
                if let Some(run) = runs.last_mut() {
                    run.push(i);
                }
            } else {
                runs.push(vec![i]);
            }
            last = Some(i);
        }
        let b = g.buckets(s);
        // Each bucket: a filled column from its minimum to its maximum, one bucket wide (at least
        // one pixel). The mean: separate two-point segments (a long polyline with a stroke width
        // gets mitre joins that spike at the zig-zags of noisy data).
        let band = colour.mix(0.35).filled();
        let line = colour.stroke_width(c.upx(1.0));
        for run in &runs {
            for &i in run {
                let (x0, y_hi) = chart.backend_coord(&((g.start_of(i) - t0) / unit, b[i].max));
                let (x1, y_lo) = chart.backend_coord(&((g.start_of(i + 1) - t0) / unit, b[i].min));
                let x1 = x1.max(x0 + 1);
                root.draw(&Rectangle::new(
                    [(x0, y_hi), (x1, y_lo.max(y_hi + 1))],
                    band,
                ))
                .map_err(e)?;
            }
            for w in run.windows(2) {
                let a = chart.backend_coord(&(x_of(w[0]), b[w[0]].mean()));
                let z = chart.backend_coord(&(x_of(w[1]), b[w[1]].mean()));
                root.draw(&PathElement::new(vec![a, z], line)).map_err(e)?;
            }
        }
        Ok(())
    }

    fn y_range(&self, series: &[usize]) -> (f64, f64) {
        let mut lo = f64::INFINITY;
        let mut hi = f64::NEG_INFINITY;
        for &s in series {
            for b in self.data.grid.buckets(s) {
                if b.count > 0 {
                    lo = lo.min(b.min);
                    hi = hi.max(b.max);
                }
            }
        }
        let (a, b) = style::padded(lo.min(hi), hi, 0.08);
        (if lo >= 0.0 { a.max(0.0) } else { a }, b)
    }
}

impl Figure for TimelineFigure {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        c: &Canvas,
        pal: &Palette,
    ) -> Result<(), String> {
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        let node_series: Vec<usize> = (0..self.data.nodes.len()).map(|i| i + 1).collect();
        // The bands fill the plots' width, so the legend is a row above them.
        let mut legend: Vec<(String, Mark)> = Vec::new();
        if self.data.total.is_some() {
            legend.push(("cluster total".into(), Mark::Band { color: pal.accent }));
        }
        for (k, node) in self.data.nodes.iter().enumerate() {
            legend.push((
                format!("node {node}"),
                Mark::Band {
                    color: pal.series(k + 1),
                },
            ));
        }
        if self.data.total_peak.is_some() {
            legend.push(("peak".into(), Mark::Ring { color: pal.text }));
        }
        let top = style::draw_title(root, c, pal, &self.title, Some(&self.subtitle))?;
        style::draw_legend_row(root, c, pal, top, &legend)?;
        let (_, body) = root.split_vertically(top + c.px(18.0 + 6.0));

        let span = (self.data.span_ms.1 - self.data.span_ms.0).max(1.0);
        let (unit, uname) = time_unit(span);
        let xr = (0.0, span / unit);
        let x_desc = format!("Time since trace start ({uname})");
        let (total_area, node_area) = match self.data.total {
            Some(_) => {
                let h = body.dim_in_pixel().1;
                let (a, b) = body.split_vertically((h as f64 * 0.42) as i32);
                (Some(a), b)
            }
            None => (None, body),
        };
        let y_label_px = c.px(64.0);
        if let (Some(area), Some(ts)) = (total_area.as_ref(), self.data.total) {
            let axes = style::Axes {
                x: xr,
                y: self.y_range(&[ts]),
                x_desc: "",
                y_desc: "Cluster total (W)",
                y_label_px,
                x_labels: false,
                y_labels: true,
            };
            let chart = style::panel(area, c, pal, &axes)?;
            self.draw_series(root, &chart, c, ts, pal.accent, unit)?;
            let rect = style::plot_rect(&chart);
            if let Some(p) = self.data.total_peak {
                let at = chart.backend_coord(&((p.at_ms - self.data.span_ms.0) / unit, p.watts));
                root.draw(&Circle::new(
                    at,
                    c.px(6.0),
                    pal.text.stroke_width(c.upx(1.6)),
                ))
                .map_err(e)?;
                let text = format!("peak {} W", style::sig4(p.watts));
                let (tw, _) = c.text_size(&text, 11.0);
                let right = at.0 as f64 + c.pt(10.0) + tw < rect.2 as f64;
                let (hp, x) = if right {
                    (HPos::Left, at.0 + c.px(10.0))
                } else {
                    (HPos::Right, at.0 - c.px(10.0))
                };
                let style = c
                    .font(11.0)
                    .color(&pal.text)
                    .pos(Pos::new(hp, VPos::Bottom));
                root.draw(&Text::new(text, (x, at.1 - c.px(2.0)), style))
                    .map_err(e)?;
            }
        }
        let axes = style::Axes {
            x: xr,
            y: self.y_range(&node_series),
            x_desc: &x_desc,
            y_desc: "Node power (W)",
            y_label_px,
            x_labels: true,
            y_labels: true,
        };
        let chart = style::panel(&node_area, c, pal, &axes)?;
        for (k, &s) in node_series.iter().enumerate() {
            self.draw_series(root, &chart, c, s, pal.series(k + 1), unit)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn buckets_keep_extremes_golden() {
        // 1000 samples at 1 ms, value 10 except a spike of 99 at t = 517 and a dip of -5 at t = 3;
        // 10 buckets of 100 ms (to within rounding).
        let mut g = BucketGrid::new(0.0, 999.0, 10);
        let s = g.add_series();
        for t in 0..1000 {
            let v = match t {
                517 => 99.0,
                3 => -5.0,
                _ => 10.0,
            };
            g.push(s, t as f64, v);
        }
        let b = g.buckets(s);
        assert_eq!(b.iter().map(|b| b.count).sum::<u64>(), 1000);
        assert_eq!(b[5].max, 99.0);
        assert_eq!(b[0].min, -5.0);
        for (i, bk) in b.iter().enumerate() {
            if i != 5 {
                assert_eq!(bk.max, 10.0, "bucket {i}");
            }
            if i != 0 {
                assert_eq!(bk.min, 10.0, "bucket {i}");
            }
            assert_eq!(bk.count, 100, "bucket {i}");
        }
        assert!((b[5].mean() - (99.0 * 1.0 + 10.0 * 99.0) / 100.0).abs() < 1e-12);
    }

    #[test]
    fn growing_either_way_keeps_every_extreme() {
        // Out-of-range times force the grid to double both ways; compare with a brute force over
        // the final bucket boundaries.
        let samples: Vec<(f64, f64)> = (0..5000)
            .map(|i| {
                let t = ((i * 7919) % 5000) as f64 - 1000.0; // -1000..4000, shuffled
                let v = ((i * 31) % 97) as f64 + if i == 4242 { 1000.0 } else { 0.0 };
                (t, v)
            })
            .collect();
        let mut g = BucketGrid::new(0.0, 100.0, 16);
        let s = g.add_series();
        for &(t, v) in &samples {
            g.push(s, t, v);
        }
        assert!(g.start_of(0) <= -1000.0 && g.start_of(g.len()) > 3999.0);
        for i in 0..g.len() {
            let (a, z) = (g.start_of(i), g.start_of(i + 1));
            let inside: Vec<f64> = samples
                .iter()
                .filter(|(t, _)| *t >= a && *t < z)
                .map(|s| s.1)
                .collect();
            let b = g.buckets(s)[i];
            assert_eq!(b.count as usize, inside.len(), "bucket {i}");
            if !inside.is_empty() {
                assert_eq!(
                    b.max,
                    inside.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
                );
                assert_eq!(b.min, inside.iter().cloned().fold(f64::INFINITY, f64::min));
            }
        }
        let top = samples
            .iter()
            .map(|s| s.1)
            .fold(f64::NEG_INFINITY, f64::max);
        assert!(top >= 1000.0);
        assert_eq!(
            g.buckets(s)
                .iter()
                .map(|b| b.max)
                .fold(f64::NEG_INFINITY, f64::max),
            top
        );
    }

    fn write_trace(rows: &[(u64, u32, f64)]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            f,
            "timestamp_ms,node_id,watts_rms,volts_rms,amps_rms,power_factor"
        )
        .unwrap();
        for (t, n, w) in rows {
            writeln!(f, "{t},{n},{w:.3},121.3,{:.4},0.997", w / 121.3).unwrap();
        }
        f.flush().unwrap();
        f
    }

    #[test]
    fn reduce_trace_per_node_and_total() {
        // 2 nodes at 10 Hz for 10 s; node 1 has a single 40 W spike at t = 5000 ms.
        let mut rows = Vec::new();
        for k in 0..=100u64 {
            let t = k * 100;
            rows.push((t, 0, 10.0));
            rows.push((t, 1, if t == 5000 { 40.0 } else { 12.0 }));
        }
        let f = write_trace(&rows);
        let r = reduce_trace(f.path(), 8, 1000.0).unwrap();
        assert_eq!(r.samples, 202);
        assert_eq!(r.nodes, vec![0, 1]);
        assert_eq!(r.span_ms, (0.0, 10_000.0));
        assert_eq!(
            r.node_peaks[1],
            Peak {
                watts: 40.0,
                at_ms: 5000.0
            }
        );
        assert_eq!(
            r.total_peak,
            Some(Peak {
                watts: 50.0,
                at_ms: 5000.0
            })
        );
        let total = r.grid.buckets(r.total.unwrap());
        assert_eq!(total.iter().map(|b| b.count).sum::<u64>(), 101);
        assert_eq!(
            total
                .iter()
                .map(|b| b.max)
                .fold(f64::NEG_INFINITY, f64::max),
            50.0
        );
        assert_eq!(
            total
                .iter()
                .filter(|b| b.count > 0)
                .map(|b| b.min)
                .fold(f64::INFINITY, f64::min),
            22.0
        );
        // the spike survives in exactly one node-1 bucket
        let n1 = r.grid.buckets(2);
        assert_eq!(n1.iter().filter(|b| b.max == 40.0).count(), 1);
    }

    #[test]
    fn a_trace_out_of_time_order_has_no_total() {
        let f = write_trace(&[(0, 0, 10.0), (200, 0, 11.0), (100, 0, 30.0), (300, 0, 12.0)]);
        let r = reduce_trace(f.path(), 4, 1000.0).unwrap();
        assert!(r.total.is_none());
        assert_eq!(
            r.node_peaks[0],
            Peak {
                watts: 30.0,
                at_ms: 100.0
            }
        );
        let b = r.grid.buckets(1);
        assert_eq!(b.iter().map(|b| b.count).sum::<u64>(), 4);
    }

    #[test]
    fn stale_nodes_leave_the_total() {
        // node 1 stops at t = 100; after the 1000 ms gap limit it no longer counts.
        let f = write_trace(&[
            (0, 0, 10.0),
            (0, 1, 5.0),
            (100, 0, 10.0),
            (100, 1, 5.0),
            (900, 0, 10.0),
            (2000, 0, 10.0),
        ]);
        let r = reduce_trace(f.path(), 2, 1000.0).unwrap();
        let total: Vec<Bucket> = r.grid.buckets(r.total.unwrap()).to_vec();
        assert_eq!(total.iter().map(|b| b.count).sum::<u64>(), 4);
        assert_eq!(
            total
                .iter()
                .filter(|b| b.count > 0)
                .map(|b| b.max)
                .fold(f64::NEG_INFINITY, f64::max),
            15.0
        );
        assert_eq!(total[1].min, 10.0); // t = 2000: node 1 is 1900 ms stale
    }
}
