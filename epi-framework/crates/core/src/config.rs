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
//! [orchestrator]            # a plugin's own alias table: the `orchestrator` power source's settings
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
//!
//! A top-level table other than these is an error that names it, unless a linked-in plugin
//! declares it as its alias ([`PluginRegistration::toml_aliases`](crate::registry::PluginRegistration::toml_aliases)):
//! `[orchestrator]` is read as `[power.orchestrator]` because the `orchestrator` source says so
//! in its own file. Command lines override any value by its dotted path
//! (`--set power.epi-meter.port=/dev/ttyUSB1`, [`Config::load_with`]).

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
    /// `--power auto`: the sources tried, in order (default: the sources that declare they detect
    /// themselves, by rank; `epi list plugins --details KEY` shows it).
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
#[serde(default)]
pub struct Config {
    /// `[general]`.
    pub general: General,
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
    /// Other top-level keys, before [`Config::from_str_at`] moves plugin alias tables to their
    /// plugin and refuses the rest (always empty afterwards).
    #[serde(flatten, skip_serializing)]
    pub other: BTreeMap<String, toml::Value>,
}

/// The top-level keys of the configuration file.
const SECTIONS: [&str; 10] = [
    "general",
    "run",
    "benchmarks",
    "plotting",
    "power",
    "backend",
    "suite",
    "scorer",
    "plot",
    "plugins",
];

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
        Config::load_with(explicit, &[])
    }

    /// [`Config::load`], then `sets` applied: each a dotted path into the file
    /// (`power.epi-meter.port`, `run.repetitions`) and a value, as `--set KEY=VALUE` gives them
    /// ([`crate::settings::parse_assignment`]). A value that does not fit is an error naming the
    /// `--set` and the key.
    pub fn load_with(
        explicit: Option<&Path>,
        sets: &[(Vec<String>, serde_json::Value)],
    ) -> Result<Config, Error> {
        let found = match explicit {
            Some(p) => Some(p.to_path_buf()),
            None => Config::search_paths().into_iter().find(|p| p.is_file()),
        };
        let (path, text) = match &found {
            Some(p) => (
                p.clone(),
                std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?,
            ),
            None => (PathBuf::from(FILE_NAME), String::new()),
        };
        let mut c = Config::from_str_at(&path, &text)?;
        c.source = found.clone();
        if sets.is_empty() {
            return Ok(c);
        }
        // The file as a tree (aliases moved, so a set reaches the table the run reads), the sets
        // applied, then read again.
        let mut tree = serde_json::to_value(&c).map_err(|e| Error::Invalid(e.to_string()))?;
        for (p, v) in sets {
            let p = canonical_path(p);
            crate::settings::set_path(&mut tree, &p, v.clone());
        }
        let r: Result<Config, _> = serde_path_to_error::deserialize(tree);
        let mut again = r.map_err(|e| {
            Error::Input(InputError::new(
                Location::file("--set").field(e.path().to_string()),
                e.inner().to_string(),
            ))
        })?;
        if let Some((k, _)) = again.other.iter().next() {
            return Err(Error::Input(InputError::new(
                Location::file("--set").field(k.clone()),
                format!("unknown key `{k}`; expected one of {}", SECTIONS.join(", ")),
            )));
        }
        again.source = found;
        Ok(again)
    }

    /// Parses one file.
    pub fn from_file(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut c = Config::from_str_at(path, &text)?;
        c.source = Some(path.to_path_buf());
        Ok(c)
    }

    /// Parses configuration text read from `path` (for error messages). A top-level table that
    /// a linked-in plugin declares as its alias becomes that plugin's table; any other unknown
    /// key is an error naming it and its line.
    pub fn from_str_at(path: &Path, text: &str) -> Result<Config, Error> {
        let de = toml::Deserializer::parse(text).map_err(|e| toml_error(path, text, None, &e))?;
        let r: Result<Config, _> = serde_path_to_error::deserialize(de);
        let mut c = r.map_err(|e| {
            let field = e.path().to_string();
            toml_error(path, text, Some(field), e.inner())
        })?;
        for (name, value) in std::mem::take(&mut c.other) {
            let unknown = |msg: String| {
                let mut loc = Location::file(path).field(name.clone());
                if let Some(line) = line_of_key(text, &name) {
                    loc = loc.at_line(line);
                }
                Error::Input(InputError::new(loc, msg))
            };
            let Some((kind, key)) = crate::registry::toml_alias_target(&name) else {
                return Err(unknown(format!(
                    "unknown field `{name}`, expected one of {}",
                    SECTIONS.join(", ")
                )));
            };
            let toml::Value::Table(t) = value else {
                return Err(unknown(format!(
                    "`{name}` is the {kind} `{key}`'s table: expected a table [{name}]"
                )));
            };
            let map = c.tables_mut(kind);
            if map.contains_key(key) {
                return Err(unknown(format!(
                    "[{name}] and [{kind}.{key}] both configure the {kind} `{key}`: keep one"
                )));
            }
            map.insert(key.to_string(), t);
        }
        Ok(c)
    }

    fn tables(&self, kind: PluginKind) -> &BTreeMap<String, toml::Table> {
        match kind {
            PluginKind::Power => &self.power,
            PluginKind::Backend => &self.backend,
            PluginKind::Suite => &self.suite,
            PluginKind::Scorer => &self.scorer,
            PluginKind::Plot => &self.plot,
        }
    }

    fn tables_mut(&mut self, kind: PluginKind) -> &mut BTreeMap<String, toml::Table> {
        match kind {
            PluginKind::Power => &mut self.power,
            PluginKind::Backend => &mut self.backend,
            PluginKind::Suite => &mut self.suite,
            PluginKind::Scorer => &mut self.scorer,
            PluginKind::Plot => &mut self.plot,
        }
    }

    /// The settings of plugin `key` of `kind` as a JSON value for its factory (`null` if none).
    pub fn plugin_config(&self, kind: PluginKind, key: &str) -> PluginConfig {
        match self.tables(kind).get(key) {
            Some(t) => serde_json::to_value(t).unwrap_or(serde_json::Value::Null),
            None => serde_json::Value::Null,
        }
    }

    /// Every plugin table in the file, as (kind, key, where in the file).
    pub fn plugin_tables(&self) -> Vec<(PluginKind, String, String)> {
        let mut v = Vec::new();
        for kind in PluginKind::ALL {
            for k in self.tables(kind).keys() {
                v.push((kind, k.clone(), format!("[{}.{}]", kind.as_str(), k)));
            }
        }
        v
    }
}

/// One setting given on the command line for a plugin: the flag it came from (for messages:
/// `--url`, `--set`), the setting's path inside the plugin's table, and the value.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// The flag, as the user typed it.
    pub flag: String,
    /// The setting (`url`, `columns.watts`).
    pub path: Vec<String>,
    /// The value.
    pub value: serde_json::Value,
}

impl Override {
    /// A flag that aliases one setting (`--url` → `url`).
    pub fn flag(flag: &str, setting: &str, value: impl Into<serde_json::Value>) -> Override {
        Override {
            flag: flag.to_string(),
            path: setting.split('.').map(str::to_string).collect(),
            value: value.into(),
        }
    }

    /// The flags that were given, as overrides, in order: `(flag, setting, value if given)`.
    pub fn given(flags: Vec<(&str, &str, Option<serde_json::Value>)>) -> Vec<Override> {
        flags
            .into_iter()
            .filter_map(|(f, setting, v)| v.map(|v| Override::flag(f, setting, v)))
            .collect()
    }
}

impl Config {
    /// The settings of plugin `key` of `kind`: its table (the file, `--set` applied) with
    /// `overrides` on top, each checked against what the plugin describes. A setting the
    /// plugin does not have is an [`Error::Configuration`] naming the plugin, the flag and the
    /// settings it has; an unknown plugin is [`Error::UnknownPlugin`].
    pub fn plugin_settings(
        &self,
        registry: &crate::registry::Registry,
        kind: PluginKind,
        key: &str,
        overrides: &[Override],
    ) -> Result<PluginConfig, Error> {
        let entry = registry.get(kind, key)?;
        let mut config = self.plugin_config(kind, key);
        let described = if overrides.is_empty() {
            None
        } else {
            entry.settings()
        };
        for o in overrides {
            if let Some(settings) = &described {
                let path: Vec<&str> = o.path.iter().map(String::as_str).collect();
                settings
                    .check_path(&path)
                    .map_err(|m| Error::Configuration {
                        plugin: key.to_string(),
                        message: format!("{}: {m}", o.flag),
                    })?;
            }
            crate::settings::set_path(&mut config, &o.path, o.value.clone());
        }
        Ok(config)
    }
}

/// Whether a `--set` key addresses the configuration file (a section, or a plugin's alias
/// table) rather than a setting of the command's own plugin.
pub fn is_file_path(path: &[String]) -> bool {
    path.first().is_some_and(|first| {
        SECTIONS.contains(&first.as_str()) || crate::registry::toml_alias_target(first).is_some()
    })
}

/// A `--set` path with a plugin alias table (`orchestrator.host`) rewritten to the plugin's
/// table (`power.orchestrator.host`).
pub fn canonical_path(p: &[String]) -> Vec<String> {
    match p.split_first() {
        Some((first, rest)) if !SECTIONS.contains(&first.as_str()) => {
            match crate::registry::toml_alias_target(first) {
                Some((kind, key)) => [kind.as_str().to_string(), key.to_string()]
                    .into_iter()
                    .chain(rest.iter().cloned())
                    .collect(),
                None => p.to_vec(),
            }
        }
        _ => p.to_vec(),
    }
}

/// The line of a top-level key or table header (`name = …`, `[name]`, `[name.…]`).
fn line_of_key(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            let head = l.trim_start_matches('[').trim_start();
            (l.starts_with('[')
                && (head.starts_with(&format!("{name}]")) || head.starts_with(&format!("{name}."))))
                || l.strip_prefix(name)
                    .is_some_and(|r| r.trim_start().starts_with('=') || r.starts_with('.'))
        })
        .map(|i| i as u64 + 1)
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
    use crate::registry::{Factory, PluginRegistration};
    use crate::settings::Settings;

    fn no_source(_: &PluginConfig) -> Result<Box<dyn crate::PowerSource>, Error> {
        Err(Error::Invalid("test registration".into()))
    }

    // The power source of the seed README's example, declaring its `[orchestrator]` alias as the
    // real one does in its own file.
    inventory::submit! {
        PluginRegistration {
            key: "orchestrator",
            description: "test double of the orchestrator registration",
            factory: Factory::Power(no_source),
            settings: Settings::none,
            toml_aliases: &["orchestrator"],
            capabilities: &[],
        }
    }

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
        let e = Config::from_str_at(Path::new("c.toml"), "x = 1\n[general]\n[extra.y]\nz = 2\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("c.toml:3: extra: unknown field `extra`"),
            "{e}"
        );
    }

    #[test]
    fn an_alias_table_is_its_plugins_table_and_one_place_only() {
        let c = Config::from_str_at(Path::new("c.toml"), "[orchestrator]\nhost = \"h\"\n").unwrap();
        assert_eq!(
            c.plugin_config(PluginKind::Power, "orchestrator")["host"],
            "h"
        );
        assert_eq!(
            c.plugin_tables(),
            [(
                PluginKind::Power,
                "orchestrator".to_string(),
                "[power.orchestrator]".to_string()
            )]
        );
        let e = Config::from_str_at(
            Path::new("c.toml"),
            "[orchestrator]\nhost = \"h\"\n[power.orchestrator]\nhost = \"i\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("c.toml:1: orchestrator") && e.contains("keep one"),
            "{e}"
        );
    }

    #[test]
    fn sets_override_the_file_by_dotted_path() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("epi-bench.toml");
        std::fs::write(&f, "[orchestrator]\nhost = \"h\"\n[run]\nrepetitions = 2\n").unwrap();
        let sets: Vec<_> = [
            "orchestrator.user=pi",
            "run.repetitions=5",
            "power.csv.path=/x.csv",
        ]
        .iter()
        .map(|s| crate::settings::parse_assignment(s).unwrap())
        .collect();
        let c = Config::load_with(Some(&f), &sets).unwrap();
        assert_eq!(
            c.plugin_config(PluginKind::Power, "orchestrator"),
            serde_json::json!({"host": "h", "user": "pi"})
        );
        assert_eq!(c.run.repetitions, Some(5));
        assert_eq!(c.plugin_config(PluginKind::Power, "csv")["path"], "/x.csv");
        assert_eq!(c.source.as_deref(), Some(f.as_path()));
        let bad = [crate::settings::parse_assignment("run.repetitions=many").unwrap()];
        let e = Config::load_with(Some(&f), &bad).unwrap_err().to_string();
        assert!(e.starts_with("--set: run.repetitions"), "{e}");
        let bad = [crate::settings::parse_assignment("rnu.repetitions=1").unwrap()];
        let e = Config::load_with(Some(&f), &bad).unwrap_err().to_string();
        assert!(e.contains("unknown key `rnu`"), "{e}");
    }

    #[test]
    fn flags_override_file_values() {
        let base = serde_json::json!({"host": "a", "user": "pi"});
        let over = serde_json::json!({"host": "b", "port": null});
        let m = merge_config(&base, &over);
        assert_eq!(m, serde_json::json!({"host": "b", "user": "pi"}));
    }
}
