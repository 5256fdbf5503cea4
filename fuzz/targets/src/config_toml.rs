//! Target `config_toml`: the configuration file `epi-bench.toml` (`Config::from_file`). A file is
//! either refused with an input error naming it, or read; then every plugin table in it is handed
//! to its plugin's factory, as a run would (factories check settings and do no I/O): each builds
//! or refuses with an error, never panics. What was read is written back as TOML and must read
//! back to the same configuration.
//!
//! Input: the file's bytes.

use crate::support::ScratchFile;
use epi_framework::config::Config;
use epi_framework::error::Error;
use epi_framework::registry::{PluginKind, Registry};
use std::sync::OnceLock;

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        epi_power::link();
        epi_backends::link();
        epi_suites::link();
        epi_metrics::link();
        epi_plots::link();
        Registry::builtin()
    })
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let f = ScratchFile::with("epi-bench.toml", data);
    let config = match Config::from_file(&f.0) {
        Ok(c) => c,
        Err(Error::Input(e)) => {
            assert_eq!(
                e.location.file.as_deref(),
                Some(f.0.as_path()),
                "the error does not name the file: {e}"
            );
            return;
        }
        Err(Error::Io { source, .. })
            if std::str::from_utf8(data).is_err()
                && source.kind() == std::io::ErrorKind::InvalidData =>
        {
            return
        }
        Err(e) => panic!("an error of the wrong kind: {e:?}"),
    };
    let reg = registry();
    for (kind, key, _where) in config.plugin_tables() {
        let settings = config.plugin_config(kind, &key);
        if reg.get(kind, &key).is_err() {
            continue; // an unknown plugin: the run refuses it by name
        }
        let built = match kind {
            PluginKind::Power => reg.power(&key, &settings).map(drop),
            PluginKind::Backend => reg.backend(&key, &settings).map(drop),
            PluginKind::Suite => reg.suite(&key, &settings).map(drop),
            PluginKind::Scorer => reg.scorer(&key, &settings).map(drop),
            PluginKind::Plot => reg.plot(&key, &settings).map(drop),
        };
        if let Err(e) = built {
            assert!(
                !e.to_string().is_empty(),
                "[{}.{key}]: an empty error",
                kind.as_str()
            );
        }
    }
    // Written back and read again: the same configuration (compared as TOML text, which also
    // holds for NaN values).
    let text = toml::to_string(&config)
        .unwrap_or_else(|e| panic!("a configuration that was read cannot be written: {e}"));
    let back = ScratchFile::with("epi-bench-back.toml", text.as_bytes());
    let mut again = Config::from_file(&back.0).unwrap_or_else(|e| {
        panic!("what was written does not read back: {e}\n--- written:\n{text}")
    });
    again.source = config.source.clone();
    let text_again = toml::to_string(&again).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(text_again, text, "round trip");
}
