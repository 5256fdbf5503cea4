//! The [`Plot`] trait: draws a figure from results or a trace.

use crate::result::EpiResult;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Colours of a plot theme.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Theme {
    /// Accent (`#C9A84C` gold in the dark theme).
    pub accent: String,
    /// Figure background.
    pub background: String,
    /// Plot-area background.
    pub panel: String,
    /// Text.
    pub text: String,
    /// Grid lines.
    pub grid: String,
}

impl Theme {
    /// The YOSO-YAi dark theme (the default).
    pub fn dark() -> Self {
        Theme {
            accent: "#C9A84C".into(),
            background: "#0A0A0A".into(),
            panel: "#1A1A1A".into(),
            text: "#E0E0E0".into(),
            grid: "#333333".into(),
        }
    }
    /// A light theme for print.
    pub fn light() -> Self {
        Theme {
            accent: "#8A6D1F".into(),
            background: "#FFFFFF".into(),
            panel: "#FFFFFF".into(),
            text: "#111111".into(),
            grid: "#CCCCCC".into(),
        }
    }
}

/// What to draw from.
#[derive(Debug, Clone)]
pub enum PlotInput {
    /// A set of EPI results (from a directory or the database).
    Results(Vec<EpiResult>),
    /// A trace CSV file (streamed, never loaded whole).
    Trace(PathBuf),
}

/// How and where to draw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlotSpec {
    /// Output file; `.svg` draws SVG, anything else PNG.
    pub output: PathBuf,
    /// Title, when given.
    pub title: Option<String>,
    /// Colours.
    pub theme: Theme,
    /// Dots per inch (PNG).
    pub dpi: u32,
    /// Figure size in inches (width, height).
    pub figsize: (f64, f64),
    /// Plot-specific options (`sort_by`, `x_param`, ...).
    #[serde(default)]
    pub options: serde_json::Map<String, serde_json::Value>,
}

/// What a plot drew, for tests and for the user.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlotReport {
    /// The file written.
    pub output: PathBuf,
    /// Computed content (frontier members, knee, bucket counts), as JSON.
    pub content: serde_json::Value,
    /// Warnings (points skipped, missing parameters).
    pub warnings: Vec<String>,
}

/// Why a plot could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("{plot}: {message}")]
pub struct PlotError {
    /// Plot key.
    pub plot: String,
    /// What went wrong.
    pub message: String,
}

/// A figure.
pub trait Plot: Send + Sync {
    /// Draws the figure.
    fn render(&self, input: &PlotInput, spec: &PlotSpec) -> Result<PlotReport, PlotError>;
}
