//! The plugin registry: every plugin registers under a string key with [`inventory`], and the CLI
//! looks plugins up here, never by a hard-coded `match` on names.
//!
//! A plugin's configuration struct *is* the plugin: the registry hands the factory a JSON value
//! (from `epi-bench.toml` and command-line flags), the factory deserializes its own typed config
//! (unknown keys rejected) and builds the running thing.
//!
//! Every registration also describes its configuration ([`Settings`], derived from the config
//! struct): `epi list plugins --details KEY`, `--set`, and the generated docs tables come from it.
//! What a plugin can do for commands that choose one by ability ([`Capability`]) and the other
//! TOML tables that configure it ([`PluginRegistration::toml_aliases`]) are declared here too, in
//! the plugin's own file: nothing outside it names the key.
//!
//! ```ignore
//! epi_core::inventory::submit! {
//!     epi_core::registry::PluginRegistration {
//!         key: "rapl",
//!         description: "Linux powercap RAPL counters",
//!         factory: epi_core::registry::Factory::Power(build_rapl),
//!         settings: epi_core::settings::Settings::of::<RaplConfig>,
//!         toml_aliases: &[],
//!         capabilities: &[epi_core::registry::Capability::AutoDetect { rank: 20 }],
//!     }
//! }
//! ```

use crate::backend::InferenceBackend;
use crate::error::Error;
use crate::plot::Plot;
use crate::power::PowerSource;
use crate::scorer::Scorer;
pub use crate::settings::Settings;
use crate::suite::Suite;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// A plugin's configuration as handed to its factory.
pub type PluginConfig = serde_json::Value;

/// The kinds of plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    /// A [`PowerSource`].
    Power,
    /// An [`InferenceBackend`].
    Backend,
    /// A [`Suite`].
    Suite,
    /// A [`Scorer`].
    Scorer,
    /// A [`Plot`].
    Plot,
}

impl PluginKind {
    /// All kinds, in listing order.
    pub const ALL: [PluginKind; 5] = [
        PluginKind::Power,
        PluginKind::Backend,
        PluginKind::Suite,
        PluginKind::Scorer,
        PluginKind::Plot,
    ];

    /// The lower-case name (`power`, `backend`, `suite`, `scorer`, `plot`).
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Power => "power",
            PluginKind::Backend => "backend",
            PluginKind::Suite => "suite",
            PluginKind::Scorer => "scorer",
            PluginKind::Plot => "plot",
        }
    }

    /// Parses a kind name.
    pub fn parse(s: &str) -> Option<PluginKind> {
        PluginKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A factory function of a linked-in plugin.
#[derive(Clone, Copy)]
pub enum Factory {
    /// Builds a power source.
    Power(fn(&PluginConfig) -> Result<Box<dyn PowerSource>, Error>),
    /// Builds an inference backend.
    Backend(fn(&PluginConfig) -> Result<Box<dyn InferenceBackend>, Error>),
    /// Builds a suite.
    Suite(fn(&PluginConfig) -> Result<Box<dyn Suite>, Error>),
    /// Builds a scorer.
    Scorer(fn(&PluginConfig) -> Result<Box<dyn Scorer>, Error>),
    /// Builds a plot.
    Plot(fn(&PluginConfig) -> Result<Box<dyn Plot>, Error>),
}

impl Factory {
    /// The kind this factory builds.
    pub fn kind(&self) -> PluginKind {
        match self {
            Factory::Power(_) => PluginKind::Power,
            Factory::Backend(_) => PluginKind::Backend,
            Factory::Suite(_) => PluginKind::Suite,
            Factory::Scorer(_) => PluginKind::Scorer,
            Factory::Plot(_) => PluginKind::Plot,
        }
    }
}

/// A linked-in plugin's registration, submitted with `inventory::submit!`.
pub struct PluginRegistration {
    /// The registry key (`epi-meter`, `openai`, `mmlu`, `epi`, `pareto`).
    pub key: &'static str,
    /// One line saying what it is.
    pub description: &'static str,
    /// How to build it.
    pub factory: Factory,
    /// Its configuration, described (schema and example).
    pub settings: fn() -> Settings,
    /// Top-level tables of `epi-bench.toml` that configure it besides `[<kind>.<key>]`
    /// (`[orchestrator]`, the name the seed README's example uses).
    pub toml_aliases: &'static [&'static str],
    /// What it can do, for commands that choose a plugin by ability.
    pub capabilities: &'static [Capability],
}

inventory::collect!(PluginRegistration);

/// The plugin (kind, key) that a top-level TOML table configures, if a linked-in registration
/// declares it in [`PluginRegistration::toml_aliases`].
pub fn toml_alias_target(table: &str) -> Option<(PluginKind, &'static str)> {
    inventory::iter::<PluginRegistration>
        .into_iter()
        .find(|r| r.toml_aliases.contains(&table))
        .map(|r| (r.factory.kind(), r.key))
}

/// An ability a plugin declares, so that commands choose plugins without naming keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// A power source `--power auto` tries, lowest rank first (when `[run] auto_power` does not
    /// list the sources itself): it detects whether it can measure this machine.
    AutoDetect {
        /// Order among the auto-detected sources.
        rank: u8,
    },
    /// A power source that reads a past window of a stored log: its settings `mode = "window"`,
    /// `start` and `end` (epoch ms, UTC) make it read `[start, end)` and end. What
    /// `epi trace pull` reads with.
    PastWindow,
}

/// A power-source factory held by value (dynamic plugins).
pub type DynPowerFactory =
    Arc<dyn Fn(&PluginConfig) -> Result<Box<dyn PowerSource>, Error> + Send + Sync>;

/// How a registry entry is built.
#[derive(Clone)]
pub enum EntryFactory {
    /// A linked-in plugin.
    Builtin(Factory),
    /// A power source from a dynamic library.
    DynamicPower(DynPowerFactory),
}

/// Where a plugin came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Origin {
    /// Linked into this binary.
    Builtin,
    /// Loaded from a dynamic library.
    Dynamic {
        /// The library file.
        path: PathBuf,
        /// The ABI version it declared.
        abi_version: u32,
    },
}

/// One registered plugin.
#[derive(Clone)]
pub struct Entry {
    /// Registry key.
    pub key: String,
    /// Kind.
    pub kind: PluginKind,
    /// One-line description.
    pub description: String,
    /// Where it came from.
    pub origin: Origin,
    /// How to build it.
    pub factory: EntryFactory,
    /// How to describe its configuration (derived on demand: start-up builds no schema);
    /// `None` for a dynamic library (ABI v1 carries no schema). See [`Entry::settings`].
    pub describe: Option<fn() -> Settings>,
    /// Other top-level TOML tables that configure it.
    pub toml_aliases: Vec<String>,
    /// What it can do.
    pub capabilities: Vec<Capability>,
}

impl Entry {
    /// Its configuration, described (schema and example); `None` for a dynamic library.
    pub fn settings(&self) -> Option<Settings> {
        self.describe.map(|f| f())
    }
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("key", &self.key)
            .field("kind", &self.kind)
            .field("origin", &self.origin)
            .finish()
    }
}

/// The set of plugins available to a program: every linked-in registration, plus dynamic
/// libraries loaded at run time.
#[derive(Debug, Clone)]
pub struct Registry {
    entries: Vec<Entry>,
}

impl Registry {
    /// All plugins linked into this program. Two registrations of the same kind and key are a
    /// programming error and panic, naming the key.
    pub fn builtin() -> Registry {
        let mut entries: Vec<Entry> = Vec::new();
        for reg in inventory::iter::<PluginRegistration> {
            let kind = reg.factory.kind();
            assert!(
                !entries.iter().any(|e| e.kind == kind && e.key == reg.key),
                "two {kind} plugins registered under `{}`",
                reg.key
            );
            entries.push(Entry {
                key: reg.key.to_string(),
                kind,
                description: reg.description.to_string(),
                origin: Origin::Builtin,
                factory: EntryFactory::Builtin(reg.factory),
                describe: Some(reg.settings),
                toml_aliases: reg.toml_aliases.iter().map(|s| s.to_string()).collect(),
                capabilities: reg.capabilities.to_vec(),
            });
        }
        entries.sort_by(|a, b| (a.kind, &a.key).cmp(&(b.kind, &b.key)));
        Registry { entries }
    }

    /// Adds an entry (used by the dynamic loader). A key already taken for that kind is refused.
    pub fn add(&mut self, entry: Entry) -> Result<(), Error> {
        if self
            .entries
            .iter()
            .any(|e| e.kind == entry.kind && e.key == entry.key)
        {
            return Err(Error::Plugin {
                plugin: entry.key.clone(),
                message: format!(
                    "a {} plugin named `{}` is already registered",
                    entry.kind, entry.key
                ),
            });
        }
        self.entries.push(entry);
        self.entries
            .sort_by(|a, b| (a.kind, &a.key).cmp(&(b.kind, &b.key)));
        Ok(())
    }

    /// Every entry, optionally of one kind, sorted by kind then key.
    pub fn list(&self, kind: Option<PluginKind>) -> Vec<&Entry> {
        self.entries
            .iter()
            .filter(|e| kind.is_none_or(|k| e.kind == k))
            .collect()
    }

    /// The keys of one kind.
    pub fn keys(&self, kind: PluginKind) -> Vec<String> {
        self.list(Some(kind))
            .into_iter()
            .map(|e| e.key.clone())
            .collect()
    }

    /// Looks up an entry.
    pub fn get(&self, kind: PluginKind, key: &str) -> Result<&Entry, Error> {
        self.entries
            .iter()
            .find(|e| e.kind == kind && e.key == key)
            .ok_or_else(|| Error::UnknownPlugin {
                kind: kind.to_string(),
                key: key.to_string(),
                known: self.keys(kind).join(", "),
            })
    }

    /// The power sources `--power auto` tries, in order: those declaring
    /// [`Capability::AutoDetect`], by rank.
    pub fn auto_power(&self) -> Vec<String> {
        let mut v: Vec<(u8, String)> = self
            .list(Some(PluginKind::Power))
            .into_iter()
            .filter_map(|e| {
                e.capabilities.iter().find_map(|c| match c {
                    Capability::AutoDetect { rank } => Some((*rank, e.key.clone())),
                    _ => None,
                })
            })
            .collect();
        v.sort();
        v.into_iter().map(|(_, k)| k).collect()
    }

    /// The keys of `kind` that declare `capability`.
    pub fn with_capability(&self, kind: PluginKind, capability: Capability) -> Vec<String> {
        self.list(Some(kind))
            .into_iter()
            .filter(|e| e.capabilities.contains(&capability))
            .map(|e| e.key.clone())
            .collect()
    }

    /// The plugin a top-level TOML table (`[orchestrator]`) configures, if one declares it.
    pub fn toml_alias(&self, table: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| e.toml_aliases.iter().any(|a| a == table))
    }

    /// Builds the power source `key` with `config`.
    pub fn power(&self, key: &str, config: &PluginConfig) -> Result<Box<dyn PowerSource>, Error> {
        match &self.get(PluginKind::Power, key)?.factory {
            EntryFactory::Builtin(Factory::Power(f)) => f(config),
            EntryFactory::DynamicPower(f) => f(config),
            _ => unreachable!("power entries hold power factories"),
        }
    }

    /// Builds the backend `key` with `config`.
    pub fn backend(
        &self,
        key: &str,
        config: &PluginConfig,
    ) -> Result<Box<dyn InferenceBackend>, Error> {
        match &self.get(PluginKind::Backend, key)?.factory {
            EntryFactory::Builtin(Factory::Backend(f)) => f(config),
            _ => unreachable!("backend entries hold backend factories"),
        }
    }

    /// Builds the suite `key` with `config`.
    pub fn suite(&self, key: &str, config: &PluginConfig) -> Result<Box<dyn Suite>, Error> {
        match &self.get(PluginKind::Suite, key)?.factory {
            EntryFactory::Builtin(Factory::Suite(f)) => f(config),
            _ => unreachable!("suite entries hold suite factories"),
        }
    }

    /// Builds the scorer `key` with `config`.
    pub fn scorer(&self, key: &str, config: &PluginConfig) -> Result<Box<dyn Scorer>, Error> {
        match &self.get(PluginKind::Scorer, key)?.factory {
            EntryFactory::Builtin(Factory::Scorer(f)) => f(config),
            _ => unreachable!("scorer entries hold scorer factories"),
        }
    }

    /// Builds the plot `key` with `config`.
    pub fn plot(&self, key: &str, config: &PluginConfig) -> Result<Box<dyn Plot>, Error> {
        match &self.get(PluginKind::Plot, key)?.factory {
            EntryFactory::Builtin(Factory::Plot(f)) => f(config),
            _ => unreachable!("plot entries hold plot factories"),
        }
    }
}

/// Deserializes a plugin's typed configuration, naming the plugin and the offending key on error.
/// Config structs should use `#[serde(deny_unknown_fields)]` so a misspelt key is an error.
/// `null` is treated as an empty table.
pub fn parse_config<T: DeserializeOwned>(plugin: &str, config: &PluginConfig) -> Result<T, Error> {
    let value = if config.is_null() {
        serde_json::Value::Object(Default::default())
    } else {
        config.clone()
    };
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        Error::Configuration {
            plugin: plugin.to_string(),
            message: if path.is_empty() || path == "." {
                e.inner().to_string()
            } else {
                format!("{path}: {}", e.inner())
            },
        }
    })
}
