//! Replays the fuzz corpora (`fuzz/corpus/<target>/*`) and the inputs of past crashes
//! (`fuzz/regressions/<target>/*`) through the fuzz targets' bodies, on stable Rust: what the
//! fuzzers explored stays checked on every `cargo test`. Fails on the first input a target rejects
//! (naming the file), and when a target's corpus is missing or empty.

use epi_fuzz_targets::{Target, TARGETS};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("fuzz/targets has a parent")
        .to_path_buf()
}

/// The files of `dir`, sorted (none when it does not exist).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.expect("a directory entry").path())
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

fn replay(target: &Target) {
    if target.name == "dynamic_plugin" && !epi_fuzz_targets::dynamic_plugin::available() {
        assert!(
            std::env::var_os("EPI_REQUIRE_SYSTEM_TOOLS").is_none(),
            "dynamic_plugin needs a C compiler (cc) to build its scripted plugin library"
        );
        eprintln!("skipping dynamic_plugin: no C compiler (cc)");
        return;
    }
    let corpus = files(&fuzz_dir().join("corpus").join(target.name));
    assert!(
        !corpus.is_empty(),
        "fuzz/corpus/{} is missing or empty",
        target.name
    );
    let regressions = files(&fuzz_dir().join("regressions").join(target.name));
    for path in corpus.iter().chain(&regressions) {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let t0 = std::time::Instant::now();
        let outcome = std::panic::catch_unwind(|| (target.run)(&data));
        eprintln!("{}: {:.3} s", path.display(), t0.elapsed().as_secs_f64());
        if let Err(e) = outcome {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{}: {} rejects it: {msg}", path.display(), target.name);
        }
    }
}

/// Runs one input by hand: `EPI_FUZZ_TARGET=trace_csv EPI_FUZZ_INPUT=crash-... cargo test -p
/// epi-fuzz-targets --test replay one_input -- --nocapture` (nothing without both variables).
#[test]
fn one_input() {
    let (Some(name), Some(input)) = (
        std::env::var_os("EPI_FUZZ_TARGET"),
        std::env::var_os("EPI_FUZZ_INPUT"),
    ) else {
        return;
    };
    let t = TARGETS
        .iter()
        .find(|t| std::ffi::OsStr::new(t.name) == name)
        .unwrap_or_else(|| panic!("no target {name:?}"));
    let data = std::fs::read(&input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
    (t.run)(&data);
}

macro_rules! replay_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let t = TARGETS
                    .iter()
                    .find(|t| t.name == stringify!($name))
                    .expect("a target of this name");
                replay(t);
            }
        )*
        /// Every target has its replay test here.
        #[test]
        fn every_target_is_replayed() {
            let here = [$(stringify!($name)),*];
            for t in TARGETS {
                assert!(here.contains(&t.name), "no replay test for {}", t.name);
            }
        }
    };
}

replay_tests!(
    trace_csv,
    result_json,
    epi_meter,
    orchestrator,
    dllama_output,
    openai_reply,
    sse,
    config_toml,
    dynamic_plugin,
);
