//! What every command shares: the configuration, the plugin registry, and terminal output.

use anyhow::{anyhow, Context as _, Result};
use epi_framework::config::{self, Config, Override};
use epi_framework::registry::{PluginKind, Registry};
use epi_framework::settings::parse_assignment;
use std::io::IsTerminal;
use std::path::PathBuf;

/// Global options, resolved.
pub struct Context {
    /// The loaded configuration.
    pub config: Config,
    /// Every plugin: linked-in and dynamically loaded.
    pub registry: Registry,
    /// Whether to colour output (`NO_COLOR` unset and stdout a terminal).
    pub color: bool,
    /// `--set` values with a bare key: settings of the command's own plugin.
    pub plugin_sets: Vec<Override>,
}

impl Context {
    /// Loads the configuration (`--config` or the search path) and the registry, loading dynamic
    /// plugins named in the config and on the command line.
    /// `sets` are the `--set KEY=VALUE` flags: a key that starts with a section of the file
    /// (or a plugin's alias table) overrides the file; a plugin setting is checked against the
    /// plugin's description (an unknown plugin exits 2, an unknown setting 3).
    pub fn load(
        config_path: Option<&PathBuf>,
        plugins: &[PathBuf],
        sets: &[String],
    ) -> Result<Context> {
        let mut file_sets = Vec::new();
        let mut plugin_sets = Vec::new();
        for s in sets {
            let (path, value) = parse_assignment(s)
                .map_err(|m| anyhow::Error::new(crate::runcmd::Usage(format!("--set {m}"))))?;
            if config::is_file_path(&path) {
                file_sets.push((config::canonical_path(&path), value));
            } else {
                plugin_sets.push(Override {
                    flag: format!("--set {s}"),
                    path,
                    value,
                });
            }
        }
        let config = Config::load_with(config_path.map(|p| p.as_path()), &file_sets)?;
        #[allow(unused_mut)]
        let mut registry = Registry::builtin();
        let libs: Vec<PathBuf> = config
            .plugins
            .iter()
            .chain(plugins.iter())
            .cloned()
            .collect();
        for lib in libs {
            epi_framework::dynamic::load_into(&mut registry, &lib)
                .with_context(|| format!("loading plugin library {}", lib.display()))?;
        }
        // Plugin settings given with --set are checked against the plugin's description now,
        // whether or not this command builds the plugin.
        for (path, value) in &file_sets {
            let kind = path.first().and_then(|k| PluginKind::parse(k));
            if let (Some(kind), Some(key)) = (kind, path.get(1)) {
                let o = Override {
                    flag: "--set".into(),
                    path: path[2..].to_vec(),
                    value: value.clone(),
                };
                if o.path.is_empty() {
                    return Err(anyhow!(crate::runcmd::Usage(format!(
                        "--set {}: name a setting of the {kind} `{key}` ({}.{key}.SETTING=VALUE)",
                        path.join("."),
                        kind.as_str()
                    ))));
                }
                config.plugin_settings(&registry, kind, key, &[o])?;
            }
        }
        let color = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            && std::io::stdout().is_terminal();
        Ok(Context {
            config,
            registry,
            color,
            plugin_sets,
        })
    }

    /// The settings of plugin `key` of `kind` for a command whose own plugin it is: the file,
    /// `--set`, then `flags` (the documented flags that alias settings) and bare `--set KEY=V`.
    pub fn own_plugin_settings(
        &self,
        kind: PluginKind,
        key: &str,
        flags: &[Override],
    ) -> Result<epi_framework::registry::PluginConfig> {
        let all: Vec<Override> = flags.iter().chain(&self.plugin_sets).cloned().collect();
        Ok(self
            .config
            .plugin_settings(&self.registry, kind, key, &all)?)
    }

    /// The settings of a plugin that is not the command's only one: bare `--set` keys are
    /// refused there (they could mean any of the command's plugins).
    pub fn plugin_settings(
        &self,
        kind: PluginKind,
        key: &str,
        flags: &[Override],
    ) -> Result<epi_framework::registry::PluginConfig> {
        if let Some(o) = self.plugin_sets.first() {
            return Err(anyhow!(crate::runcmd::Usage(format!(
                "{}: this command runs several plugins: qualify the key with the plugin, \
                 e.g. --set {kind}.{key}.{}",
                o.flag,
                o.path.join(".")
            ))));
        }
        Ok(self
            .config
            .plugin_settings(&self.registry, kind, key, flags)?)
    }

    /// `✓` in green (or plain).
    pub fn ok_mark(&self) -> &'static str {
        if self.color {
            "\x1b[32m✓\x1b[0m"
        } else {
            "✓"
        }
    }

    /// `✗` in red (or plain).
    pub fn fail_mark(&self) -> &'static str {
        if self.color {
            "\x1b[31m✗\x1b[0m"
        } else {
            "✗"
        }
    }

    /// Bold text (or plain).
    pub fn bold(&self, s: &str) -> String {
        if self.color {
            format!("\x1b[1m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
}
