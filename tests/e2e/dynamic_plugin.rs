//! Third-party plugins loaded at run time: the Rust example (`examples/dynamic-plugin`, an hwmon
//! power sensor) is listed and measures through `epi monitor`; libraries with a wrong ABI version,
//! or that are not epi-bench plugins, are refused without any of their code being called.

use crate::support::{
    complete_lines, epi, epi_bin, have_tool, send_signal, stderr, stdout, wait_for, wait_output,
};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The example plugin, beside the `epi` binary. `cargo test --workspace` does not always leave a
/// cdylib there (only a `cargo build` of the crate does), so it is built here when missing, with the
/// cargo that runs the tests, into the same target directory and profile.
pub(crate) fn example_plugin() -> Option<PathBuf> {
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let bin = epi_bin();
    let profile_dir = bin.parent().unwrap().to_path_buf();
    let p = profile_dir.join("libepi_example_dynamic_plugin.so");
    let _one_build_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    if !p.is_file() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let target_dir = profile_dir.parent().unwrap();
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--locked", "-p", "epi-example-dynamic-plugin"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("CARGO_TARGET_DIR", target_dir);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        match cmd.status() {
            Ok(st) if st.success() => {}
            other => eprintln!("building the example plugin failed: {other:?}"),
        }
    }
    if p.is_file() {
        return Some(p);
    }
    assert!(
        std::env::var_os("EPI_REQUIRE_SYSTEM_TOOLS").is_none(),
        "{} missing, and `cargo build -p epi-example-dynamic-plugin` did not make it",
        p.display()
    );
    eprintln!("skipping: build it with cargo build -p epi-example-dynamic-plugin");
    None
}

/// Compiles a C source into a shared library.
fn cc_shared(dir: &Path, name: &str, src: &str) -> PathBuf {
    let c = dir.join(format!("{name}.c"));
    std::fs::write(&c, src).unwrap();
    let so = dir.join(format!("lib{name}.so"));
    let st = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&so)
        .arg(&c)
        .status()
        .unwrap();
    assert!(st.success(), "cc failed");
    so
}

/// A plugin in C whose every function would leave a trace if called; `VERSION` is its declared ABI.
fn c_plugin(version: u32, marker: &Path) -> String {
    format!(
        r#"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
static void touch(void) {{ FILE *f = fopen("{marker}", "w"); if (f) {{ fputs("called", f); fclose(f); }} }}
static void *create(const char *cfg, char **err) {{ touch(); return (void *)1; }}
static char *open_(void *i, char **err) {{ touch(); return NULL; }}
static char *next(void *i, uint32_t t, char **err) {{ touch(); return NULL; }}
static void close_(void *i) {{ touch(); }}
static void free_s(char *s) {{ touch(); }}
typedef struct {{
  uint32_t abi_version; uint32_t kind; const char *key; const char *description;
  void *(*create)(const char *, char **); char *(*open)(void *, char **);
  char *(*next_batch)(void *, uint32_t, char **); void (*close)(void *); void (*free_string)(char *);
}} EpiPluginV1;
const uint32_t epi_plugin_abi_version = {version};
const EpiPluginV1 epi_plugin_v1 = {{ {version}, 1, "c-meter", "a C plugin", create, open_, next, close_, free_s }};
"#,
        marker = marker.display()
    )
}

#[test]
fn the_example_plugin_is_listed_with_its_abi() {
    let Some(so) = example_plugin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let o = epi(
        dir.path(),
        &[
            "--plugin",
            so.to_str().unwrap(),
            "list",
            "plugins",
            "--kind",
            "power",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let hw = v
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == "hwmon")
        .expect("hwmon listed");
    assert_eq!(hw["origin"]["type"], "dynamic");
    assert_eq!(hw["origin"]["abi_version"], 1);
}

#[test]
fn the_example_plugin_measures_through_monitor() {
    let Some(so) = example_plugin() else { return };
    let dir = tempfile::tempdir().unwrap();
    // A fake hwmon power file: 4.2 W, then the test changes it while recording.
    let sensor = dir.path().join("power1_input");
    std::fs::write(&sensor, "4200000\n").unwrap();
    std::fs::write(
        dir.path().join("epi-bench.toml"),
        format!(
            "plugins = [\"{}\"]\n\n[power.hwmon]\npath = \"{}\"\ninterval_ms = 50\n",
            so.display(),
            sensor.display()
        ),
    )
    .unwrap();
    // No --duration: the test changes the sensor once the recorder has written rows at the first
    // value, waits for a row at the second, then stops the monitor with Ctrl-C (exit 130). Nothing
    // here depends on how fast epi starts or samples.
    let child = Command::new(epi_bin())
        .args([
            "monitor", "--power", "hwmon", "--record", "hw.csv", "--json",
        ])
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .env("XDG_CONFIG_HOME", dir.path().join(".cfg"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let csv = dir.path().join("hw.csv");
    let watts_on_disk = || -> Vec<f64> {
        complete_lines(&csv)
            .iter()
            .skip(1)
            .map(|l| l.split(',').nth(2).unwrap().parse().unwrap())
            .collect()
    };
    wait_for("5 rows at 4.2 W", 120, || {
        (watts_on_disk().len() >= 5).then_some(())
    });
    // Atomically (a reader never sees the file truncated but not yet written).
    let next = dir.path().join("power1_input.next");
    std::fs::write(&next, "6300000\n").unwrap();
    std::fs::rename(&next, &sensor).unwrap();
    wait_for("a row at 6.3 W", 120, || {
        watts_on_disk().contains(&6.3).then_some(())
    });
    send_signal(&child, "INT");
    let o = wait_output(child, 60);
    assert_eq!(o.status.code(), Some(130), "{}\n{}", stdout(&o), stderr(&o));
    let watts = watts_on_disk();
    assert!(watts.iter().all(|&w| w == 4.2 || w == 6.3), "{watts:?}");
    let switch = watts.iter().position(|&w| w == 6.3).unwrap();
    assert!(switch >= 5, "{watts:?}");
    assert!(
        watts[switch..].iter().all(|&w| w == 6.3),
        "the reading went back to the old value: {watts:?}"
    );
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("hw.csv.meta.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(meta["source"]["source"], "hwmon");
    assert_eq!(meta["source"]["method"], "integrated");
}

#[test]
fn a_wrong_abi_version_is_refused_and_never_called() {
    if !have_tool("cc") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("called");
    let so = cc_shared(dir.path(), "wrongabi", &c_plugin(999, &marker));
    let o = epi(
        dir.path(),
        &["--plugin", so.to_str().unwrap(), "list", "plugins"],
    );
    assert_eq!(o.status.code(), Some(4), "{}", stdout(&o));
    let e = stderr(&o);
    assert!(
        e.contains("plugin ABI version 999") && e.contains("refused, not called"),
        "{e}"
    );
    assert!(
        !marker.exists(),
        "a function of the refused plugin was called"
    );

    // The same plugin with the right version loads (and is listed, still without being called).
    let so = cc_shared(dir.path(), "rightabi", &c_plugin(1, &marker));
    let o = epi(
        dir.path(),
        &[
            "--plugin",
            so.to_str().unwrap(),
            "list",
            "plugins",
            "--kind",
            "power",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("c-meter") && stdout(&o).contains("dynamic, ABI v1"),
        "{}",
        stdout(&o)
    );
    assert!(!marker.exists());
}

#[test]
fn a_library_that_is_not_a_plugin_is_refused() {
    if !have_tool("cc") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let so = cc_shared(dir.path(), "plain", "int answer(void) { return 42; }\n");
    let o = epi(
        dir.path(),
        &["--plugin", so.to_str().unwrap(), "list", "plugins"],
    );
    assert_eq!(o.status.code(), Some(4));
    assert!(
        stderr(&o).contains("not an epi-bench plugin: no `epi_plugin_abi_version` symbol"),
        "{}",
        stderr(&o)
    );
    let o = epi(
        dir.path(),
        &["--plugin", "/nonexistent/libx.so", "list", "plugins"],
    );
    assert_eq!(o.status.code(), Some(4));
    assert!(stderr(&o).contains("cannot load library"), "{}", stderr(&o));
}
