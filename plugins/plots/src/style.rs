//! What every plot shares: the bundled font, theme colours, the canvas (PNG at the configured dpi
//! or SVG), titles, legends and number formatting.
//!
//! Sizes are given in points (1/72 in) and converted with the canvas resolution, so a figure looks
//! the same at any dpi. PNG files carry their resolution (`pHYs` chunk); SVG files are drawn at
//! 96 px per inch.

use epi_core::plot::{PlotError, PlotSpec, Theme};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::sync::OnceLock;

/// The family name the bundled DejaVu Sans is registered under (SVG files name it too, so a
/// viewer without DejaVu falls back to its own sans-serif).
pub(crate) const FONT_FAMILY: &str = "sans-serif";

static FONT_REGULAR: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
static FONT_BOLD: &[u8] = include_bytes!("../assets/fonts/DejaVuSans-Bold.ttf");
static FONTS: OnceLock<bool> = OnceLock::new();

/// Registers the bundled fonts with plotters (once per process).
pub(crate) fn register_fonts(plot: &str) -> Result<(), PlotError> {
    let ok = *FONTS.get_or_init(|| {
        plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT_REGULAR).is_ok()
            && plotters::style::register_font(FONT_FAMILY, FontStyle::Bold, FONT_BOLD).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(err(
            plot,
            "the bundled DejaVu Sans font could not be loaded",
        ))
    }
}

/// Fonts registered, the canvas of the spec and the palette of its theme: what every plot starts
/// drawing with.
pub(crate) fn canvas_and_palette(
    plot: &str,
    spec: &PlotSpec,
) -> Result<(Canvas, Palette), PlotError> {
    register_fonts(plot)?;
    Ok((
        Canvas::for_spec(plot, spec)?,
        Palette::from_theme(plot, &spec.theme)?,
    ))
}

/// A plot error.
pub(crate) fn err(plot: &str, message: impl Into<String>) -> PlotError {
    PlotError {
        plot: plot.to_string(),
        message: message.into(),
    }
}

/// Parses `#RRGGBB` (or `#RGB`).
pub(crate) fn parse_hex(s: &str) -> Option<RGBColor> {
    let h = s.trim().strip_prefix('#')?;
    let v = |i: usize, n: usize| u8::from_str_radix(h.get(i..i + n)?, 16).ok();
    match h.len() {
        6 => Some(RGBColor(v(0, 2)?, v(2, 2)?, v(4, 2)?)),
        3 => Some(RGBColor(v(0, 1)? * 17, v(1, 1)? * 17, v(2, 1)? * 17)),
        _ => None,
    }
}

/// `a` blended toward `b` by `t` (0: `a`, 1: `b`).
pub(crate) fn blend(a: RGBColor, b: RGBColor, t: f64) -> RGBColor {
    let m = |x: u8, y: u8| {
        (x as f64 + (y as f64 - x as f64) * t)
            .round()
            .clamp(0.0, 255.0) as u8
    };
    RGBColor(m(a.0, b.0), m(a.1, b.1), m(a.2, b.2))
}

fn luminance(c: RGBColor) -> f64 {
    (0.2126 * c.0 as f64 + 0.7152 * c.1 as f64 + 0.0722 * c.2 as f64) / 255.0
}

/// The colours of a figure.
#[derive(Debug, Clone)]
pub(crate) struct Palette {
    /// Figure background.
    pub background: RGBColor,
    /// Plot-area background.
    pub panel: RGBColor,
    /// Text.
    pub text: RGBColor,
    /// Secondary text (subtitles, annotations).
    pub muted: RGBColor,
    /// Grid lines.
    pub grid: RGBColor,
    /// Accent.
    pub accent: RGBColor,
    /// Series colours, the accent first.
    series: Vec<RGBColor>,
}

impl Palette {
    /// From a theme; a colour that is not `#RRGGBB` is an error naming it.
    pub fn from_theme(plot: &str, theme: &Theme) -> Result<Palette, PlotError> {
        let get = |name: &str, v: &str| {
            parse_hex(v).ok_or_else(|| {
                err(
                    plot,
                    format!("theme colour {name} = \"{v}\": expected #RRGGBB"),
                )
            })
        };
        let background = get("background", &theme.background)?;
        let panel = get("panel", &theme.panel)?;
        let text = get("text", &theme.text)?;
        let grid = get("grid", &theme.grid)?;
        let accent = get("accent", &theme.accent)?;
        let light = luminance(background) > 0.5;
        // Colour-blind-friendly hues, tuned for contrast on the background.
        let others: &[&str] = if light {
            &[
                "#1F5F8B", "#B23A48", "#2E7D5B", "#6A4C93", "#C4661F", "#3B8EA5", "#7A7A7A",
            ]
        } else {
            &[
                "#5DADE2", "#E07A5F", "#81C995", "#B39DDB", "#F2A65A", "#4DD0C4", "#BDBDBD",
            ]
        };
        let mut series = vec![accent];
        series.extend(others.iter().filter_map(|h| parse_hex(h)));
        Ok(Palette {
            background,
            panel,
            text,
            muted: blend(text, background, 0.35),
            grid,
            accent,
            series,
        })
    }

    /// The colour of series `i`.
    pub fn series(&self, i: usize) -> RGBColor {
        self.series[i % self.series.len()]
    }
}

/// Output format, from the file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// PNG at the spec's dpi.
    Png,
    /// SVG at 96 px per inch.
    Svg,
}

/// The drawing surface: its size in pixels and how many pixels a point is.
#[derive(Debug, Clone)]
pub(crate) struct Canvas {
    /// Width, px.
    pub width: u32,
    /// Height, px.
    pub height: u32,
    /// Pixels per point.
    pub px_per_pt: f64,
    /// PNG or SVG.
    pub format: Format,
    /// Resolution, px per inch.
    pub dpi: f64,
}

impl Canvas {
    /// The canvas a spec asks for.
    pub fn for_spec(plot: &str, spec: &PlotSpec) -> Result<Canvas, PlotError> {
        let (w_in, h_in) = spec.figsize;
        if !(w_in.is_finite()
            && h_in.is_finite()
            && (1.0..=100.0).contains(&w_in)
            && (1.0..=100.0).contains(&h_in))
        {
            return Err(err(
                plot,
                format!("figure size {w_in}×{h_in} in: expected 1 to 100 inches each way"),
            ));
        }
        let svg = spec
            .output
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("svg"));
        let (format, dpi) = if svg {
            (Format::Svg, 96.0)
        } else {
            (Format::Png, spec.dpi as f64)
        };
        if !(36.0..=1200.0).contains(&dpi) {
            return Err(err(plot, format!("dpi {dpi}: expected 36 to 1200")));
        }
        let width = (w_in * dpi).round() as u32;
        let height = (h_in * dpi).round() as u32;
        if (width as u64) * (height as u64) > 200_000_000 {
            return Err(err(
                plot,
                format!("{width}×{height} px is too large; lower the dpi or the figure size"),
            ));
        }
        Ok(Canvas {
            width,
            height,
            px_per_pt: dpi / 72.0,
            format,
            dpi,
        })
    }

    /// Points to pixels.
    pub fn pt(&self, v: f64) -> f64 {
        v * self.px_per_pt
    }

    /// Points to whole pixels (at least 1).
    pub fn px(&self, v: f64) -> i32 {
        (v * self.px_per_pt).round().max(1.0) as i32
    }

    /// Points to whole pixels, as `u32` (at least 1).
    pub fn upx(&self, v: f64) -> u32 {
        self.px(v) as u32
    }

    /// The regular font at `size` points. (plotters' font size is the ascent-to-descent height,
    /// 1.24 em for DejaVu Sans.)
    pub fn font(&self, size: f64) -> FontDesc<'static> {
        FontDesc::new(
            FontFamily::Name(FONT_FAMILY),
            self.pt(size) * 1.24,
            FontStyle::Normal,
        )
    }

    /// The bold font at `size` points.
    pub fn bold(&self, size: f64) -> FontDesc<'static> {
        FontDesc::new(
            FontFamily::Name(FONT_FAMILY),
            self.pt(size) * 1.24,
            FontStyle::Bold,
        )
    }

    /// Text extent in pixels (width, height) at `size` points.
    pub fn text_size(&self, text: &str, size: f64) -> (f64, f64) {
        match self.font(size).box_size(text) {
            Ok((w, h)) => (w as f64, h as f64),
            Err(_) => (
                self.pt(size) * 0.6 * text.chars().count() as f64,
                self.pt(size) * 1.24,
            ),
        }
    }

    /// `text` shortened with an ellipsis to fit `max_px` at `size` points.
    pub fn fit_text(&self, text: &str, size: f64, max_px: f64) -> String {
        if self.text_size(text, size).0 <= max_px {
            return text.to_string();
        }
        let chars: Vec<char> = text.chars().collect();
        let mut n = chars.len();
        while n > 1 {
            n -= 1;
            let s: String = chars[..n].iter().collect::<String>() + "…";
            if self.text_size(&s, size).0 <= max_px {
                return s;
            }
        }
        "…".into()
    }
}

/// A figure that can draw itself on any plotters backend.
pub(crate) trait Figure {
    /// Draws on `root` (the whole canvas).
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        canvas: &Canvas,
        pal: &Palette,
    ) -> Result<(), String>;
}

/// Draws `figure` into the spec's output file (PNG or SVG), atomically.
pub(crate) fn render<F: Figure>(
    plot: &str,
    spec: &PlotSpec,
    canvas: &Canvas,
    pal: &Palette,
    figure: &F,
) -> Result<(), PlotError> {
    let size = (canvas.width, canvas.height);
    let bytes = match canvas.format {
        Format::Svg => {
            let mut svg = String::new();
            {
                let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
                root.fill(&pal.background)
                    .map_err(|e| err(plot, e.to_string()))?;
                figure.draw(&root, canvas, pal).map_err(|e| err(plot, e))?;
                root.present().map_err(|e| err(plot, e.to_string()))?;
            }
            svg.into_bytes()
        }
        Format::Png => {
            let mut buf = vec![0u8; canvas.width as usize * canvas.height as usize * 3];
            {
                let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
                root.fill(&pal.background)
                    .map_err(|e| err(plot, e.to_string()))?;
                figure.draw(&root, canvas, pal).map_err(|e| err(plot, e))?;
                root.present().map_err(|e| err(plot, e.to_string()))?;
            }
            encode_png(&buf, canvas).map_err(|e| err(plot, format!("PNG encoding: {e}")))?
        }
    };
    epi_core::jsonio::write_atomic(&spec.output, &bytes).map_err(|e| err(plot, e.to_string()))
}

/// Encodes RGB pixels as PNG with the canvas resolution in a `pHYs` chunk.
fn encode_png(rgb: &[u8], canvas: &Canvas) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, canvas.width, canvas.height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Fast);
        let per_metre = (canvas.dpi / 0.0254).round() as u32;
        enc.set_pixel_dims(Some(png::PixelDimensions {
            xppu: per_metre,
            yppu: per_metre,
            unit: png::Unit::Meter,
        }));
        let mut w = enc.write_header()?;
        w.write_image_data(rgb)?;
        w.finish()?;
    }
    Ok(out)
}

/// Draws the title (bold) and an optional subtitle centred at the top; returns the height used, px.
pub(crate) fn draw_title<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    c: &Canvas,
    pal: &Palette,
    title: &str,
    subtitle: Option<&str>,
) -> Result<i32, String> {
    let cx = c.width as i32 / 2;
    let mut y = c.px(14.0);
    let max_w = c.width as f64 * 0.94;
    if !title.is_empty() {
        let t = c.fit_text(title, 20.0, max_w);
        let style = c
            .bold(20.0)
            .color(&pal.text)
            .pos(Pos::new(HPos::Center, VPos::Top));
        root.draw(&Text::new(t, (cx, y), style))
            .map_err(|e| e.to_string())?;
        y += c.px(20.0 * 1.3);
    }
    if let Some(s) = subtitle.filter(|s| !s.is_empty()) {
        let t = c.fit_text(s, 12.0, max_w);
        let style = c
            .font(12.0)
            .color(&pal.muted)
            .pos(Pos::new(HPos::Center, VPos::Top));
        root.draw(&Text::new(t, (cx, y), style))
            .map_err(|e| e.to_string())?;
        y += c.px(12.0 * 1.4);
    }
    Ok(y + c.px(6.0))
}

/// What a legend entry shows beside its text.
#[derive(Debug, Clone)]
pub(crate) enum Mark {
    /// A line, possibly dashed.
    Line {
        color: RGBColor,
        width_pt: f64,
        dashed: bool,
    },
    /// A circular marker, filled or hollow.
    Marker { color: RGBColor, filled: bool },
    /// A translucent band with a line through it.
    Band { color: RGBColor },
    /// A horizontal interval whisker.
    Whisker { color: RGBColor },
    /// A filled bar.
    Bar { color: RGBColor },
    /// A ring (knee, peak).
    Ring { color: RGBColor },
}

/// A corner of the plot area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Corner {
    /// Upper left.
    UpperLeft,
    /// Upper right.
    UpperRight,
    /// Lower left.
    LowerLeft,
    /// Lower right.
    LowerRight,
}

/// The corner of `area` (px: x0, y0, x1, y1) with the fewest `points` (px) in a legend-sized box.
pub(crate) fn emptiest_corner(
    area: (i32, i32, i32, i32),
    legend: (i32, i32),
    points: &[(i32, i32)],
) -> Corner {
    let (x0, y0, x1, y1) = area;
    let (w, h) = legend;
    let boxes = [
        (Corner::UpperRight, (x1 - w, y0, x1, y0 + h)),
        (Corner::UpperLeft, (x0, y0, x0 + w, y0 + h)),
        (Corner::LowerRight, (x1 - w, y1 - h, x1, y1)),
        (Corner::LowerLeft, (x0, y1 - h, x0 + w, y1)),
    ];
    let count = |b: (i32, i32, i32, i32)| {
        points
            .iter()
            .filter(|p| p.0 >= b.0 && p.0 <= b.2 && p.1 >= b.1 && p.1 <= b.3)
            .count()
    };
    boxes
        .iter()
        .min_by_key(|(_, b)| count(*b))
        .map(|(c, _)| *c)
        .unwrap_or(Corner::UpperRight)
}

/// The legend's size in px for `entries`.
pub(crate) fn legend_size(c: &Canvas, entries: &[(String, Mark)]) -> (i32, i32) {
    let text_w = entries
        .iter()
        .map(|(t, _)| c.text_size(t, 12.0).0)
        .fold(0.0, f64::max);
    let w = c.pt(10.0 + 26.0 + 8.0 + 10.0) + text_w;
    let h = c.pt(8.0 * 2.0) + c.pt(18.0) * entries.len() as f64;
    (w.round() as i32, h.round() as i32)
}

/// Draws a legend box in `corner` of `area` (px).
pub(crate) fn draw_legend<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    c: &Canvas,
    pal: &Palette,
    area: (i32, i32, i32, i32),
    corner: Corner,
    entries: &[(String, Mark)],
) -> Result<(), String> {
    if entries.is_empty() {
        return Ok(());
    }
    let (w, h) = legend_size(c, entries);
    let inset = c.px(8.0);
    let (x0, y0) = match corner {
        Corner::UpperLeft => (area.0 + inset, area.1 + inset),
        Corner::UpperRight => (area.2 - inset - w, area.1 + inset),
        Corner::LowerLeft => (area.0 + inset, area.3 - inset - h),
        Corner::LowerRight => (area.2 - inset - w, area.3 - inset - h),
    };
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.draw(&Rectangle::new(
        [(x0, y0), (x0 + w, y0 + h)],
        pal.panel.mix(0.92).filled(),
    ))
    .map_err(e)?;
    root.draw(&Rectangle::new(
        [(x0, y0), (x0 + w, y0 + h)],
        pal.grid.stroke_width(c.upx(0.8)),
    ))
    .map_err(e)?;
    let row = c.pt(18.0);
    for (i, (text, mark)) in entries.iter().enumerate() {
        let cy = (y0 as f64 + c.pt(8.0) + row * (i as f64 + 0.5)).round() as i32;
        let mx0 = x0 + c.px(10.0);
        let mx1 = mx0 + c.px(26.0);
        draw_mark(root, c, mark, mx0, mx1, cy).map_err(e)?;
        let style = c
            .font(12.0)
            .color(&pal.text)
            .pos(Pos::new(HPos::Left, VPos::Center));
        root.draw(&Text::new(text.clone(), (mx1 + c.px(8.0), cy), style))
            .map_err(e)?;
    }
    Ok(())
}

/// Draws a legend mark between `mx0` and `mx1` (px) on the line `cy`.
fn draw_mark<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    c: &Canvas,
    mark: &Mark,
    mx0: i32,
    mx1: i32,
    cy: i32,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let mid = (mx0 + mx1) / 2;
    match mark {
        Mark::Line {
            color,
            width_pt,
            dashed,
        } => {
            let style = color.stroke_width(c.upx(*width_pt));
            if *dashed {
                let seg = c.px(5.0);
                let mut x = mx0;
                while x < mx1 {
                    root.draw(&PathElement::new(
                        vec![(x, cy), ((x + seg).min(mx1), cy)],
                        style,
                    ))?;
                    x += seg * 2;
                }
            } else {
                root.draw(&PathElement::new(vec![(mx0, cy), (mx1, cy)], style))?;
            }
        }
        Mark::Marker { color, filled } => {
            let r = c.px(4.5);
            if *filled {
                root.draw(&Circle::new((mid, cy), r, color.filled()))?;
            } else {
                root.draw(&Circle::new((mid, cy), r, color.stroke_width(c.upx(1.5))))?;
            }
        }
        Mark::Band { color } => {
            root.draw(&Rectangle::new(
                [(mx0, cy - c.px(5.0)), (mx1, cy + c.px(5.0))],
                color.mix(0.3).filled(),
            ))?;
            root.draw(&PathElement::new(
                vec![(mx0, cy), (mx1, cy)],
                color.stroke_width(c.upx(1.5)),
            ))?;
        }
        Mark::Whisker { color } => {
            let st = color.stroke_width(c.upx(1.2));
            root.draw(&PathElement::new(vec![(mx0 + 2, cy), (mx1 - 2, cy)], st))?;
            for x in [mx0 + 2, mx1 - 2] {
                root.draw(&PathElement::new(
                    vec![(x, cy - c.px(4.0)), (x, cy + c.px(4.0))],
                    st,
                ))?;
            }
        }
        Mark::Bar { color } => {
            root.draw(&Rectangle::new(
                [(mx0, cy - c.px(5.0)), (mx1, cy + c.px(5.0))],
                color.filled(),
            ))?;
        }
        Mark::Ring { color } => {
            root.draw(&Circle::new(
                (mid, cy),
                c.px(6.0),
                color.stroke_width(c.upx(2.0)),
            ))?;
        }
    }
    Ok(())
}

/// The width and height (px) of a one-row legend.
pub(crate) fn legend_row_size(c: &Canvas, entries: &[(String, Mark)]) -> (i32, i32) {
    let w: f64 = entries
        .iter()
        .map(|(t, _)| c.pt(26.0 + 6.0 + 18.0) + c.text_size(t, 12.0).0)
        .sum();
    (w.round() as i32, c.px(18.0))
}

/// Draws a legend as one centred row with its top at `y` (px): for figures whose data fill every
/// corner of the plot.
pub(crate) fn draw_legend_row<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    c: &Canvas,
    pal: &Palette,
    y: i32,
    entries: &[(String, Mark)],
) -> Result<(), String> {
    let (w, h) = legend_row_size(c, entries);
    let mut x = (c.width as i32 - w) / 2;
    let cy = y + h / 2;
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    for (text, mark) in entries {
        let x1 = x + c.px(26.0);
        draw_mark(root, c, mark, x, x1, cy).map_err(e)?;
        let style = c
            .font(12.0)
            .color(&pal.text)
            .pos(Pos::new(HPos::Left, VPos::Center));
        root.draw(&Text::new(text.clone(), (x1 + c.px(6.0), cy), style))
            .map_err(e)?;
        x = x1 + c.px(6.0 + 18.0) + c.text_size(text, 12.0).0.round() as i32;
    }
    Ok(())
}

/// A number as short as it can be: integers without decimals, else four significant digits.
pub(crate) fn short_num(v: f64) -> String {
    if v.is_finite() && v == v.round() && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        sig4(v)
    }
}

/// Decimal places that distinguish ticks `step` apart.
pub(crate) fn decimals_for_step(step: f64) -> usize {
    if !(step.is_finite() && step > 0.0) {
        return 2;
    }
    (-(step.log10().floor())).clamp(0.0, 10.0) as usize
}

/// A tick label for `v` with `decimals` places (no `-0`).
pub(crate) fn tick_label(v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$}");
    if s.trim_start_matches('-')
        .chars()
        .all(|c| c == '0' || c == '.')
    {
        format!("{:.decimals$}", 0.0)
    } else {
        s
    }
}

/// A number with four significant digits.
pub(crate) fn sig4(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let d = (3 - v.abs().log10().floor() as i32).clamp(0, 8) as usize;
    format!("{v:.d$}")
}

/// A padded axis range around `lo..hi` (a degenerate range gets a width).
pub(crate) fn padded(lo: f64, hi: f64, frac: f64) -> (f64, f64) {
    let span = hi - lo;
    if span > 0.0 && span.is_finite() {
        (lo - span * frac, hi + span * frac)
    } else {
        let w = if lo != 0.0 { lo.abs() * 0.1 } else { 1.0 };
        (lo - w, hi + w)
    }
}

/// The values of a string field of each result that differ between results, as `field` names in
/// order: used to build labels and subtitles from what varies and what is common.
pub(crate) fn describe(results: &[&epi_core::EpiResult]) -> (Vec<&'static str>, Vec<String>) {
    type Field = (&'static str, fn(&epi_core::EpiResult) -> &str);
    let fields: [Field; 4] = [
        ("model", |r| &r.model),
        ("quantization", |r| &r.quantization),
        ("surgery", |r| &r.surgery),
        ("hardware", |r| &r.hardware),
    ];
    let mut varying = Vec::new();
    let mut common = Vec::new();
    for (name, get) in fields {
        let first = results.first().map(|r| get(r)).unwrap_or("");
        if results.iter().all(|r| get(r) == first) {
            if !first.is_empty() && name != "surgery" {
                common.push(first.to_string());
            }
        } else {
            varying.push(name);
        }
    }
    (varying, common)
}

/// The axes of a panel.
pub(crate) struct Axes<'s> {
    /// x range.
    pub x: (f64, f64),
    /// y range.
    pub y: (f64, f64),
    /// x-axis description.
    pub x_desc: &'s str,
    /// y-axis description.
    pub y_desc: &'s str,
    /// Width of the y tick-label area, px.
    pub y_label_px: i32,
    /// Whether to draw x tick labels and the x description.
    pub x_labels: bool,
    /// Whether to draw y tick labels and horizontal grid lines.
    pub y_labels: bool,
}

fn no_label(_: &f64) -> String {
    String::new()
}

/// The chart type every panel uses.
pub(crate) type Chart<'a, DB> = ChartContext<
    'a,
    DB,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// Draws a plot panel: background, grid and axes with tick labels and descriptions, and returns the
/// chart for drawing series.
pub(crate) fn panel<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    c: &Canvas,
    pal: &Palette,
    axes: &Axes<'_>,
) -> Result<Chart<'a, DB>, String> {
    let (x, y) = (axes.x, axes.y);
    let mut chart = ChartBuilder::on(area)
        .margin_left(c.px(8.0))
        .margin_right(c.px(18.0))
        .margin_top(c.px(6.0))
        .margin_bottom(c.px(6.0))
        .x_label_area_size(if axes.x_labels { c.px(48.0) } else { c.px(4.0) })
        .y_label_area_size(axes.y_label_px)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)
        .map_err(|e| e.to_string())?;
    chart
        .plotting_area()
        .fill(&pal.panel)
        .map_err(|e| e.to_string())?;
    let xd = decimals_for_step((x.1 - x.0) / 8.0);
    let yd = decimals_for_step((y.1 - y.0) / 8.0);
    let xf = move |v: &f64| tick_label(*v, xd);
    let yf = move |v: &f64| tick_label(*v, yd);
    let mut mesh = chart.configure_mesh();
    mesh.bold_line_style(pal.grid.stroke_width(c.upx(0.8)))
        .light_line_style(TRANSPARENT)
        .axis_style(pal.muted.stroke_width(c.upx(1.0)))
        .label_style(c.font(12.0).color(&pal.text))
        .axis_desc_style(c.font(14.0).color(&pal.text))
        .x_labels(9)
        .y_labels(8)
        .x_label_formatter(&xf)
        .y_label_formatter(&yf)
        .set_all_tick_mark_size(c.px(4.0))
        .y_desc(axes.y_desc);
    if axes.x_labels {
        mesh.x_desc(axes.x_desc);
    } else {
        mesh.x_label_formatter(&no_label);
    }
    if !axes.y_labels {
        mesh.disable_y_mesh().y_label_formatter(&no_label);
    }
    mesh.draw().map_err(|e| e.to_string())?;
    Ok(chart)
}

/// The pixel rectangle (x0, y0, x1, y1) of a chart's plotting area.
pub(crate) fn plot_rect<DB: DrawingBackend>(chart: &Chart<'_, DB>) -> (i32, i32, i32, i32) {
    let (xr, yr) = chart.plotting_area().get_pixel_range();
    (xr.start, yr.start, xr.end, yr.end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_and_numbers() {
        assert_eq!(parse_hex("#C9A84C"), Some(RGBColor(0xC9, 0xA8, 0x4C)));
        assert_eq!(parse_hex("#fff"), Some(RGBColor(255, 255, 255)));
        assert_eq!(parse_hex("C9A84C"), None);
        assert_eq!(parse_hex("#C9A84"), None);
        assert_eq!(decimals_for_step(0.005), 3);
        assert_eq!(decimals_for_step(2.5), 0);
        assert_eq!(tick_label(-0.0001, 2), "0.00");
        assert_eq!(sig4(0.051123), "0.05112");
        assert_eq!(sig4(5.1123), "5.112");
        let p = Palette::from_theme("t", &Theme::light()).unwrap();
        assert!(luminance(p.background) > 0.5);
        let bad = Theme {
            grid: "grey".into(),
            ..Theme::dark()
        };
        let e = Palette::from_theme("pareto", &bad).unwrap_err().to_string();
        assert!(e.contains("theme colour grid = \"grey\""), "{e}");
    }
}
