//! What every command shares: the configuration, the plugin registry, and terminal output.

use anyhow::{Context as _, Result};
use epi_framework::config::Config;
use epi_framework::registry::Registry;
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
}

impl Context {
    /// Loads the configuration (`--config` or the search path) and the registry, loading dynamic
    /// plugins named in the config and on the command line.
    pub fn load(config_path: Option<&PathBuf>, plugins: &[PathBuf]) -> Result<Context> {
        let config = Config::load(config_path.map(|p| p.as_path()))?;
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
        let color = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            && std::io::stdout().is_terminal();
        Ok(Context {
            config,
            registry,
            color,
        })
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
