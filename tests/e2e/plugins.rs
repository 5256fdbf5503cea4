//! Plugins that describe themselves: `epi list plugins --details`, the generated settings
//! reference (`docs/plugins.md`, which must not drift from what the plugins say), the generic
//! `--set`, the documented flags as checked aliases of settings, and no plugin key named outside
//! its own file.

use crate::support::{epi, stderr, stdout};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn docs_plugins_md_is_what_the_plugins_describe() {
    let dir = tempfile::tempdir().unwrap();
    let o = epi(dir.path(), &["list", "plugins", "--markdown"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let generated = stdout(&o);
    let path = repo().join("docs/plugins.md");
    if std::env::var_os("EPI_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    if on_disk != generated {
        let first = on_disk
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map(|i| i + 1)
            .unwrap_or(on_disk.lines().count().min(generated.lines().count()) + 1);
        panic!(
            "docs/plugins.md differs from what the plugins describe (first at line {first}): \
             regenerate it with `EPI_BLESS=1 cargo test -p epi-cli --test e2e docs_plugins_md`"
        );
    }
    // Every registered plugin has its section.
    let o = epi(dir.path(), &["list", "plugins", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    for p in list.as_array().unwrap() {
        let head = format!(
            "### `{}` ({})",
            p["key"].as_str().unwrap(),
            p["kind"].as_str().unwrap()
        );
        assert!(generated.contains(&head), "no section {head}");
    }
}

#[test]
fn details_give_each_setting_its_type_default_and_meaning() {
    let dir = tempfile::tempdir().unwrap();
    let o = epi(dir.path(), &["list", "plugins", "--details", "epi-meter"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let line = |k: &str| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(k))
            .unwrap_or_else(|| panic!("no line for {k}:\n{out}"))
            .to_string()
    };
    assert!(line("port").contains("required"), "{out}");
    assert!(line("baud").contains("115200"), "{out}");
    assert!(
        line("parity").contains("\"none\" | \"odd\" | \"even\""),
        "{out}"
    );
    assert!(line("fields.w").contains("\"w\""), "{out}");
    assert!(
        out.contains("[power.epi-meter]\n    port = \"/dev/ttyUSB0\""),
        "{out}"
    );
    let o = epi(
        dir.path(),
        &["list", "plugins", "--details", "orchestrator"],
    );
    assert!(
        stdout(&o).contains("also read from [orchestrator]"),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("epi trace pull"), "{}", stdout(&o));
    let o = epi(
        dir.path(),
        &["list", "plugins", "--details", "rapl", "--json"],
    );
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v[0]["capabilities"][0]["auto_detect"]["rank"], 20);
    assert!(v[0]["settings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["key"] == "interval_ms" && s["default"] == 100));
    let o = epi(dir.path(), &["list", "plugins", "--details", "no-such"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("no plugin `no-such`"), "{}", stderr(&o));
}

#[test]
fn set_reaches_any_setting_and_is_checked_against_the_plugin() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("epi-bench.toml"),
        "[orchestrator]\nhost = \"orchestrator.local\"\n",
    )
    .unwrap();
    // An unknown plugin: usage (2); an unknown setting of a known one: bad configuration (3).
    let o = epi(
        dir.path(),
        &["list", "plugins", "--set", "power.no-such.x=1"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = epi(
        dir.path(),
        &["list", "plugins", "--set", "power.rapl.intervl_ms=5"],
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("unknown field `intervl_ms`"),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("interval_ms"),
        "the settings there are: {}",
        stderr(&o)
    );
    // A value of the wrong type is refused when the plugin is built, naming the key.
    let o = epi(
        dir.path(),
        &[
            "monitor",
            "--power",
            "csv",
            "--set",
            "power.csv.path=t.csv",
            "--set",
            "power.csv.speed=fast",
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("speed"), "{}", stderr(&o));
    // The alias table and --set through it: `orchestrator.port` is `power.orchestrator.port`.
    let o = epi(
        dir.path(),
        &[
            "trace",
            "pull",
            "--start",
            "2026-05-15T10:00:00Z",
            "--end",
            "2026-05-15T10:01:00Z",
            "--output",
            "x.csv",
            "--set",
            "orchestrator.sqlite3=x y",
            "--set",
            "orchestrator.prot=1",
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("unknown field `prot`"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn documented_flags_are_aliases_checked_against_the_chosen_plugin() {
    let dir = tempfile::tempdir().unwrap();
    // `--url` is a setting of `openai`, not of `distributed-llama`.
    let o = epi(
        dir.path(),
        &[
            "eval",
            "--backend",
            "distributed-llama",
            "--url",
            "http://127.0.0.1:1",
            "--suite",
            "arc-challenge",
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--url: unknown field `url`"),
        "{}",
        stderr(&o)
    );
    // A bare --set with several plugins in play must say which one.
    let o = epi(
        dir.path(),
        &[
            "eval",
            "--backend",
            "openai",
            "--url",
            "http://127.0.0.1:1",
            "--suite",
            "arc-challenge",
            "--set",
            "top_n=5",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--set backend.openai.top_n"),
        "{}",
        stderr(&o)
    );
    // Without --power, the one source that has the settings the flags give.
    let o = epi(dir.path(), &["monitor", "--port", "/dev/null-x"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("fit several power sources (epi-meter, orchestrator)"),
        "{}",
        stderr(&o)
    );
}

/// Plugin keys appear only in their plugin's own file: the CLI and the framework choose plugins
/// by what they declare (capabilities, settings, alias tables), never by name.
#[test]
fn no_plugin_key_is_named_outside_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let o = epi(dir.path(), &["list", "plugins", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let keys: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["kind"] == "power" || p["kind"] == "backend")
        .map(|p| p["key"].as_str().unwrap().to_string())
        .collect();
    assert!(keys.len() >= 8, "{keys:?}");
    // Strings that are not plugin keys there: an export format, and a bench binary that drives
    // the emulated meter by design.
    let allowed = [
        ("epi-cli/src/commands/results.rs", "\"csv\""),
        ("epi-cli/src/bin/bench_monitor.rs", "\"epi-meter\""),
    ];
    let mut files = Vec::new();
    for d in ["epi-cli/src", "epi-framework/src", "epi-framework/crates"] {
        collect_rs(&repo().join(d), &mut files);
    }
    let mut found = Vec::new();
    for f in &files {
        let rel = f
            .strip_prefix(repo())
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(f).unwrap();
        for (i, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("#[cfg(test)]") {
                break; // unit tests may name whatever they test
            }
            if line.trim_start().starts_with("//") {
                continue;
            }
            for k in &keys {
                let lit = format!("\"{k}\"");
                if line.contains(&lit) && !allowed.contains(&(rel.as_str(), lit.as_str())) {
                    found.push(format!("{rel}:{}: {}", i + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "plugin keys named outside their plugins:\n{}",
        found.join("\n")
    );
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == "tests" || n == "target") {
                continue;
            }
            collect_rs(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs")
            && p.file_name().is_some_and(|n| n != "tests.rs")
        {
            out.push(p);
        }
    }
}
