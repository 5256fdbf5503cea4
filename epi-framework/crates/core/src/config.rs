//! `epi-bench.toml`: looked up in the working directory, then in the user's configuration
//! directory (`~/.config/epi-bench/epi-bench.toml` on Linux); flags override it. An unknown key is
//! an error that names it.
//!
//! ```toml
//! [general]
//! default_hardware = "4x Pi 5 16GB (distributed-llama)"
//! default_instrument = "epi-meter v1.0"
//! measurement_point = "AC inlet per node"
//!
//! [orchestrator]            # the `orchestrator` power source's settings
//! host = "orchestrator.local"
//! user = "pi"
//! db_path = "/home/pi/factory/telemetry.db"
//! power_table = "epi_power_traces"
//!
//! [benchmarks]
//! suites = ["mmlu_5shot", "arc_challenge_25shot", "hellaswag_10shot"]
//! default_weights = { mmlu = 0.333, arc_challenge = 0.333, hellaswag = 0.333 }
//!
//! [plotting]
//! theme = "dark"
//! dpi = 300
//! format = "png"
//! figsize = [12, 8]
//!
//! [plotting.colors]
//! gold = "#C9A84C"
//! background = "#0A0A0A"
//! panel = "#1A1A1A"
//! text = "#E0E0E0"
//! grid = "#333333"
//!
//! [power.epi-meter]         # any plugin's settings: [power.<key>], [backend.<key>], [suite.<key>], ...
//! port = "/dev/ttyUSB0"
//! ```

use crate::error::{Error, InputError, Location};
use crate::plot::Theme;
use crate::registry::{PluginConfig, PluginKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The name of the configuration file.
pub const FILE_NAME: &str = "epi-bench.toml";

/// `[general]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct General {
    /// Hardware label of runs when `--hardware` is not given; `unknown` (the default) lets
    /// `epi eval` / `epi profile` detect it (CPU, cores, memory, accelerators of every host).
    pub default_hardware: String,
    /// Instrument written into results.
    pub default_instrument: String,
    /// Where power is measured.
    pub measurement_point: String,
    /// The results database file.
    pub results_db: PathBuf,
    /// Directory of benchmark data files.
    pub data_dir: Option<PathBuf>,
    /// Samples of a channel further apart than this are a gap, ms.
    pub gap_limit_ms: f64,
    /// The instrument's relative accuracy (CT clamps: 0.02).
    pub energy_accuracy: f64,
    /// Idle baseline before a measured run, s.
    pub idle_seconds: f64,
    /// Warm-up before the idle baseline, s (the paper: 300).
    pub warmup_seconds: f64,
    /// Repetitions of each configuration (median reported).
    pub repetitions: u32,
}

impl Default for General {
    fn default() -> Self {
        General {
            default_hardware: "unknown".into(),
            default_instrument: "epi-meter v1.0".into(),
            measurement_point: "AC inlet per node".into(),
            results_db: PathBuf::from("results.db"),
            data_dir: None,
            gap_limit_ms: 1000.0,
            energy_accuracy: 0.02,
            idle_seconds: 30.0,
            warmup_seconds: 300.0,
            repetitions: 3,
        }
    }
}

/// `[run]`: the settings of `epi profile` and `epi eval` that flags override (every flag of
/// theirs has a key here; unset keys take the built-in defaults).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSettings {
    /// Power source key (`epi-meter`, `rapl`, `nvml`, `cpu-model`, `auto`, ...).
    pub power: Option<String>,
    /// Backend key.
    pub backend: Option<String>,
    /// Suites.
    pub suites: Option<Vec<String>>,
    /// Items per suite (per subject for MMLU).
    pub limit: Option<usize>,
    /// Few-shot examples per item (every suite).
    pub num_fewshot: Option<usize>,
    /// `loglikelihood` or `generative`.
    pub mode: Option<String>,
    /// Generative mode: most tokens per answer.
    pub max_tokens: Option<u32>,
    /// Queries in flight.
    pub concurrency: Option<usize>,
    /// Repetitions of the measured part.
    pub repetitions: Option<u32>,
    /// Warm-up seconds.
    pub warmup_s: Option<f64>,
    /// Warm-up queries.
    pub warmup_queries: Option<usize>,
    /// Idle baseline seconds.
    pub idle_s: Option<f64>,
    /// Seconds the power source has to deliver its first samples.
    pub first_sample_timeout_s: Option<f64>,
    /// Where run directories go (`runs/`).
    pub output_dir: Option<PathBuf>,
    /// A benchmark result even when queries failed.
    pub allow_failures: Option<bool>,
    /// Tags of the results-database entry.
    pub tags: Option<Vec<String>>,
    /// Log runs into this results database.
    pub db: Option<PathBuf>,
    /// Model label.
    pub model_name: Option<String>,
    /// Quantization label.
    pub quantization: Option<String>,
    /// Surgery label.
    pub surgery: Option<String>,
    /// Hardware label (default: detected).
    pub hardware: Option<String>,
    /// `--power auto`: the sources tried, in order (default `["nvml", "rapl"]`).
    pub auto_power: Option<Vec<String>>,
}

/// `[benchmarks]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Benchmarks {
    /// Benchmark keys run by default.
    pub suites: Vec<String>,
    /// Composite-accuracy weights by suite name.
    pub default_weights: BTreeMap<String, f64>,
}

impl Default for Benchmarks {
    fn default() -> Self {
        Benchmarks {
            suites: vec![
                "mmlu_5shot".into(),
                "arc_challenge_25shot".into(),
                "hellaswag_10shot".into(),
            ],
            default_weights: [
                ("mmlu", 0.333),
                ("arc_challenge", 0.333),
                ("hellaswag", 0.333),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        }
    }
}

/// `[plotting.colors]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Colors {
    /// Accent colour.
    pub gold: String,
    /// Figure background.
    pub background: String,
    /// Plot-area background.
    pub panel: String,
    /// Text.
    pub text: String,
    /// Grid.
    pub grid: String,
}

impl Default for Colors {
    fn default() -> Self {
        let t = Theme::dark();
        Colors {
            gold: t.accent,
            background: t.background,
            panel: t.panel,
            text: t.text,
            grid: t.grid,
        }
    }
}

/// `[plotting]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Plotting {
    /// `dark` (default) or `light`.
    pub theme: String,
    /// PNG resolution.
    pub dpi: u32,
    /// Default output format (`png` or `svg`).
    pub format: String,
    /// Figure size in inches.
    pub figsize: (f64, f64),
    /// Colours of the dark theme.
    pub colors: Colors,
}

impl Default for Plotting {
    fn default() -> Self {
        Plotting {
            theme: "dark".into(),
            dpi: 300,
            format: "png".into(),
            figsize: (12.0, 8.0),
            colors: Colors::default(),
        }
    }
}

impl Plotting {
    /// The theme to draw with: `light`, or the dark theme with the configured colours.
    pub fn theme_named(&self, name: &str) -> Result<Theme, Error> {
        match name {
            "dark" => Ok(Theme {
                accent: self.colors.gold.clone(),
                background: self.colors.background.clone(),
                panel: self.colors.panel.clone(),
                text: self.colors.text.clone(),
                grid: self.colors.grid.clone(),
            }),
            "light" => Ok(Theme::light()),
            other => Err(Error::Invalid(format!(
                "unknown theme `{other}`; expected `dark` or `light`"
            ))),
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[general]`.
    pub general: General,
    /// `[orchestrator]`: settings of the `orchestrator` power source.
    pub orchestrator: Option<toml::Table>,
    /// `[run]`: defaults of `epi profile` and `epi eval`.
    pub run: RunSettings,
    /// `[benchmarks]`.
    pub benchmarks: Benchmarks,
    /// `[plotting]`.
    pub plotting: Plotting,
    /// `[power.<key>]`.
    pub power: BTreeMap<String, toml::Table>,
    /// `[backend.<key>]`.
    pub backend: BTreeMap<String, toml::Table>,
    /// `[suite.<key>]`.
    pub suite: BTreeMap<String, toml::Table>,
    /// `[scorer.<key>]`.
    pub scorer: BTreeMap<String, toml::Table>,
    /// `[plot.<key>]`.
    pub plot: BTreeMap<String, toml::Table>,
    /// Dynamic plugin libraries to load at start (`plugins = ["./libmy_meter.so"]`).
    pub plugins: Vec<PathBuf>,
    /// The file this was read from (not a key).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

impl Config {
    /// Where the configuration is looked for: `./epi-bench.toml`, then the user's config dir.
    pub fn search_paths() -> Vec<PathBuf> {
        let mut v = vec![PathBuf::from(FILE_NAME)];
        if let Some(d) = dirs::config_dir() {
            v.push(d.join("epi-bench").join(FILE_NAME));
        }
        v
    }

    /// Loads `explicit` if given (it must exist), else the first file of [`Config::search_paths`]
    /// that exists, else the defaults.
    pub fn load(explicit: Option<&Path>) -> Result<Config, Error> {
        if let Some(p) = explicit {
            return Config::from_file(p);
        }
        for p in Config::search_paths() {
            if p.is_file() {
                return Config::from_file(&p);
            }
        }
        Ok(Config::default())
    }

    /// Parses one file.
    pub fn from_file(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut c = Config::from_str_at(path, &text)?;
        c.source = Some(path.to_path_buf());
        Ok(c)
    }

    /// Parses configuration text read from `path` (for error messages).
    pub fn from_str_at(path: &Path, text: &str) -> Result<Config, Error> {
        let de = toml::Deserializer::parse(text).map_err(|e| toml_error(path, text, None, &e))?;
        let r: Result<Config, _> = serde_path_to_error::deserialize(de);
        r.map_err(|e| {
            let field = e.path().to_string();
            toml_error(path, text, Some(field), e.inner())
        })
    }

    /// The settings of plugin `key` of `kind` as a JSON value for its factory (`null` if none).
    /// `[orchestrator]` is the `orchestrator` power source's table.
    pub fn plugin_config(&self, kind: PluginKind, key: &str) -> PluginConfig {
        let table = match kind {
            PluginKind::Power if key == "orchestrator" => {
                self.orchestrator.as_ref().or_else(|| self.power.get(key))
            }
            PluginKind::Power => self.power.get(key),
            PluginKind::Backend => self.backend.get(key),
            PluginKind::Suite => self.suite.get(key),
            PluginKind::Scorer => self.scorer.get(key),
            PluginKind::Plot => self.plot.get(key),
        };
        match table {
            Some(t) => serde_json::to_value(t).unwrap_or(serde_json::Value::Null),
            None => serde_json::Value::Null,
        }
    }

    /// Every plugin table in the file, as (kind, key, where in the file).
    pub fn plugin_tables(&self) -> Vec<(PluginKind, String, String)> {
        let mut v = Vec::new();
        if self.orchestrator.is_some() {
            v.push((
                PluginKind::Power,
                "orchestrator".into(),
                "[orchestrator]".into(),
            ));
        }
        for (kind, map) in [
            (PluginKind::Power, &self.power),
            (PluginKind::Backend, &self.backend),
            (PluginKind::Suite, &self.suite),
            (PluginKind::Scorer, &self.scorer),
            (PluginKind::Plot, &self.plot),
        ] {
            for k in map.keys() {
                v.push((kind, k.clone(), format!("[{}.{}]", kind.as_str(), k)));
            }
        }
        v
    }
}

/// Overlays `overrides` (from flags) on a plugin's table: keys in `overrides` win; `null` values
/// in `overrides` are ignored (flag not given).
pub fn merge_config(base: &PluginConfig, overrides: &PluginConfig) -> PluginConfig {
    let mut out = match base {
        serde_json::Value::Object(m) => m.clone(),
        _ => serde_json::Map::new(),
    };
    if let serde_json::Value::Object(o) = overrides {
        for (k, v) in o {
            if !v.is_null() {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    serde_json::Value::Object(out)
}

fn toml_error(path: &Path, text: &str, field: Option<String>, e: &toml::de::Error) -> Error {
    let mut loc = Location::file(path);
    if let Some(span) = e.span() {
        let line = text[..span.start.min(text.len())].matches('\n').count() as u64 + 1;
        loc = loc.at_line(line);
    }
    if let Some(f) = field.filter(|f| !f.is_empty() && f != ".") {
        loc = loc.field(f);
    }
    Error::Input(InputError::new(loc, e.message().trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r##"
[general]
default_hardware = "4x Pi 5 16GB (distributed-llama)"
default_instrument = "epi-meter v1.0"
measurement_point = "AC inlet per node"

[orchestrator]
host = "orchestrator.local"
user = "pi"
db_path = "/home/pi/factory/telemetry.db"
power_table = "epi_power_traces"

[benchmarks]
suites = ["mmlu_5shot", "arc_challenge_25shot", "hellaswag_10shot"]
default_weights = { mmlu = 0.333, arc_challenge = 0.333, hellaswag = 0.333 }

[plotting]
theme = "dark"
dpi = 300
format = "png"
figsize = [12, 8]

[plotting.colors]
gold = "#C9A84C"
background = "#0A0A0A"
panel = "#1A1A1A"
text = "#E0E0E0"
grid = "#333333"
"##;

    #[test]
    fn the_spec_example_parses() {
        let c = Config::from_str_at(Path::new("epi-bench.toml"), SPEC).unwrap();
        assert_eq!(c.plotting.dpi, 300);
        assert_eq!(c.plotting.figsize, (12.0, 8.0));
        assert_eq!(c.benchmarks.default_weights["mmlu"], 0.333);
        let o = c.plugin_config(PluginKind::Power, "orchestrator");
        assert_eq!(o["host"], "orchestrator.local");
        assert_eq!(c.general.gap_limit_ms, 1000.0); // default filled in
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let text = SPEC.replace("dpi = 300", "dpi = 300\ndpii = 2");
        let e = Config::from_str_at(Path::new("epi-bench.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `dpii`"), "{e}");
        assert!(e.starts_with("epi-bench.toml:20: plotting.dpii"), "{e}");
        let e = Config::from_str_at(Path::new("c.toml"), "[generall]\nx = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `generall`"), "{e}");
        let e = Config::from_str_at(Path::new("c.toml"), "[plotting]\ndpi = \"high\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("plotting.dpi"), "{e}");
    }

    #[test]
    fn flags_override_file_values() {
        let base = serde_json::json!({"host": "a", "user": "pi"});
        let over = serde_json::json!({"host": "b", "port": null});
        let m = merge_config(&base, &over);
        assert_eq!(m, serde_json::json!({"host": "b", "user": "pi"}));
    }
}
