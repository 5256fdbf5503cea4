//! `cpu-model`: an **estimate** of power for machines without a meter — idle watts plus watts per
//! busy core, the busy cores read from CPU time in `/proc` (the whole host, or the process trees
//! of named programs such as `llama-server`). Every sample it gives is labelled
//! `method: modelled`: runs say so on screen and in every file, and `epi validate` refuses it as a
//! measurement.
//!
//! The two coefficients are the user's: there is no default, because a number invented here
//! would look like a fact. Measure them once on the machine (a meter, or RAPL at idle and under a
//! known load), or take them from the CPU's data sheet, and say which in `note`.
//!
//! Errors: a configuration without the coefficients or with a period of 0 ms (refused when built),
//! `/proc` not readable (not available), a named program not running (not available, naming it).

use crate::host_time::HostClock;
use epi_core::power::{PowerError, PowerSource};
use epi_core::registry::{Factory, PluginConfig, PluginRegistration};
use epi_core::sample::{
    ChannelInfo, EnergyMethod, PowerSample, SampleBatch, SourceInfo, SourceStats,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

/// Registry key.
pub const KEY: &str = "cpu-model";

fn default_interval_ms() -> u64 {
    100
}
fn default_proc() -> PathBuf {
    PathBuf::from("/proc")
}

/// Settings of the `cpu-model` source (`[power.cpu-model]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CpuModelConfig {
    /// Power of the machine with nothing running, W.
    pub idle_watts: f64,
    /// Power added by each fully busy core (logical CPU), W.
    pub watts_per_core: f64,
    /// Count only these programs' process trees (names as in `/proc/<pid>/comm`, e.g.
    /// `llama-server`); empty: the whole host (`/proc/stat`).
    #[serde(default)]
    pub programs: Vec<String>,
    /// Sampling period, ms.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Where the coefficients come from (written into the provenance).
    #[serde(default)]
    pub note: Option<String>,
    /// The proc file system (a copy for tests).
    #[serde(default = "default_proc")]
    pub proc_root: PathBuf,
}

impl CpuModelConfig {
    fn validate(&self) -> Result<(), String> {
        for (k, v) in [
            ("idle_watts", self.idle_watts),
            ("watts_per_core", self.watts_per_core),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{k}: {v}: expected watts ≥ 0"));
            }
        }
        if self.interval_ms == 0 {
            return Err("interval_ms: expected a period > 0 ms".into());
        }
        Ok(())
    }
}

/// The source.
pub struct CpuModel {
    config: CpuModelConfig,
    clock: Option<HostClock>,
    ticks_per_s: f64,
    last: Option<(f64, f64)>,
    stats: SourceStats,
    info: Option<SourceInfo>,
    energy_j: f64,
}

impl CpuModel {
    /// Builds the source (no I/O).
    pub fn new(config: CpuModelConfig) -> Result<CpuModel, String> {
        config.validate()?;
        // SAFETY: sysconf reads a constant of the running system; no memory is shared.
        let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Ok(CpuModel {
            config,
            clock: None,
            ticks_per_s: if tck > 0 { tck as f64 } else { 100.0 },
            last: None,
            stats: SourceStats::default(),
            info: None,
            energy_j: 0.0,
        })
    }

    fn unavailable(&self, reason: String) -> PowerError {
        PowerError::NotAvailable {
            source_key: KEY.into(),
            reason,
        }
    }

    /// CPU seconds used so far by what is counted.
    fn cpu_seconds(&self) -> Result<f64, PowerError> {
        let root = &self.config.proc_root;
        if self.config.programs.is_empty() {
            let stat = std::fs::read_to_string(root.join("stat"))
                .map_err(|e| self.unavailable(format!("{}: {e}", root.join("stat").display())))?;
            let line = stat
                .lines()
                .find(|l| l.starts_with("cpu "))
                .ok_or_else(|| self.unavailable("/proc/stat has no `cpu` line".into()))?;
            // user nice system idle iowait irq softirq steal: busy = all but idle and iowait.
            let f: Vec<f64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            if f.len() < 8 {
                return Err(self.unavailable(format!("/proc/stat: unexpected `{line}`")));
            }
            let busy = f[0] + f[1] + f[2] + f[5] + f[6] + f[7];
            return Ok(busy / self.ticks_per_s);
        }
        // Every process: (ppid, comm, utime + stime); then the trees under the named programs.
        let mut procs: BTreeMap<u32, (u32, String, f64)> = BTreeMap::new();
        let dirs = std::fs::read_dir(root)
            .map_err(|e| self.unavailable(format!("{}: {e}", root.display())))?;
        for d in dirs.flatten() {
            let Some(pid) = d.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(d.path().join("stat")) else {
                continue; // the process ended meanwhile
            };
            if let Some(p) = parse_pid_stat(&stat) {
                procs.insert(pid, p);
            }
        }
        let mut roots: BTreeSet<u32> = procs
            .iter()
            .filter(|(_, p)| self.config.programs.contains(&p.1))
            .map(|(pid, _)| *pid)
            .collect();
        if roots.is_empty() {
            return Err(self.unavailable(format!(
                "{} not running (no process of that name in {})",
                self.config.programs.join(", "),
                root.display()
            )));
        }
        // Descendants: repeat until no new child joins.
        loop {
            let before = roots.len();
            for (pid, p) in &procs {
                if roots.contains(&p.0) {
                    roots.insert(*pid);
                }
            }
            if roots.len() == before {
                break;
            }
        }
        let ticks: f64 = roots.iter().filter_map(|p| procs.get(p)).map(|p| p.2).sum();
        Ok(ticks / self.ticks_per_s)
    }
}

/// `(ppid, comm, utime + stime)` of a `/proc/<pid>/stat` line (comm may hold spaces and parens).
fn parse_pid_stat(s: &str) -> Option<(u32, String, f64)> {
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = s.get(close + 1..)?.split_whitespace().collect();
    // rest[0] = state, [1] = ppid, ..., [11] = utime, [12] = stime.
    let ppid = rest.get(1)?.parse().ok()?;
    let utime: f64 = rest.get(11)?.parse().ok()?;
    let stime: f64 = rest.get(12)?.parse().ok()?;
    Some((ppid, comm, utime + stime))
}

#[epi_core::async_trait]
impl PowerSource for CpuModel {
    async fn open(&mut self) -> Result<SourceInfo, PowerError> {
        let clock = HostClock::start();
        let cpu = self.cpu_seconds()?;
        self.last = Some((clock.now().mono_ms, cpu));
        let mut details = Map::new();
        details.insert(
            "model".into(),
            json!("idle_watts + watts_per_core × busy cores"),
        );
        details.insert("idle_watts".into(), json!(self.config.idle_watts));
        details.insert("watts_per_core".into(), json!(self.config.watts_per_core));
        details.insert(
            "counted".into(),
            if self.config.programs.is_empty() {
                json!("the whole host (/proc/stat)")
            } else {
                json!(format!(
                    "the process trees of {}",
                    self.config.programs.join(", ")
                ))
            },
        );
        details.insert(
            "note".into(),
            json!(self
                .config
                .note
                .clone()
                .unwrap_or_else(|| "coefficients as configured; their source not given".into())),
        );
        details.insert("timeline_zero_utc_ms".into(), json!(clock.zero_utc_ms()));
        let info = SourceInfo {
            source: KEY.into(),
            method: EnergyMethod::Modelled,
            instrument: format!(
                "cpu-model estimate: {} W idle + {} W per busy core (not a measurement)",
                self.config.idle_watts, self.config.watts_per_core
            ),
            sample_rate_hz: Some(1000.0 / self.config.interval_ms as f64),
            accuracy_rel: None,
            channels: vec![ChannelInfo {
                id: 0,
                name: "cpu (modelled)".into(),
                scope: "cpu-modelled".into(),
            }],
            replay: false,
            details,
        };
        self.clock = Some(clock);
        self.info = Some(info.clone());
        Ok(info)
    }

    async fn next_batch(&mut self) -> Result<Option<SampleBatch>, PowerError> {
        let Some(clock) = self.clock else {
            return Err(PowerError::Io {
                source_key: KEY.into(),
                message: "next_batch before open".into(),
            });
        };
        tokio::time::sleep(Duration::from_millis(self.config.interval_ms)).await;
        let now = clock.now();
        let cpu = self.cpu_seconds()?;
        let (t0, c0) = self.last.unwrap_or((now.mono_ms, cpu));
        let dt_s = (now.mono_ms - t0) / 1000.0;
        let busy = if dt_s > 0.0 {
            ((cpu - c0) / dt_s).max(0.0)
        } else {
            0.0
        };
        let watts = self.config.idle_watts + self.config.watts_per_core * busy;
        self.energy_j += watts * dt_s;
        self.last = Some((now.mono_ms, cpu));
        self.stats.samples += 1;
        let mut s = PowerSample::new(0, now.mono_ms, watts);
        s.host_utc_ms = now.utc_ms;
        Ok(Some(SampleBatch {
            samples: vec![s],
            events: Vec::new(),
        }))
    }

    fn stats(&self) -> SourceStats {
        self.stats.clone()
    }

    async fn close(&mut self) -> Result<(), PowerError> {
        Ok(())
    }
}

fn build(config: &PluginConfig) -> Result<Box<dyn PowerSource>, epi_core::Error> {
    crate::build_source(KEY, config, CpuModel::new)
}

impl epi_core::settings::PluginSettings for CpuModelConfig {
    fn example() -> Self {
        epi_core::settings::example_from(
            serde_json::json!({"idle_watts": 8.0, "watts_per_core": 4.5, "programs": ["llama-server"]}),
        )
    }
}

epi_core::inventory::submit! {
    PluginRegistration {
        key: KEY,
        description: "An ESTIMATE from CPU time: idle watts + watts per busy core (labelled modelled; no meter needed)",
        factory: Factory::Power(build),
        settings: epi_core::settings::Settings::of::<CpuModelConfig>,
        toml_aliases: &[],
        capabilities: &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(root: &std::path::Path, programs: &[&str]) -> CpuModelConfig {
        CpuModelConfig {
            idle_watts: 10.0,
            watts_per_core: 5.0,
            programs: programs.iter().map(|s| s.to_string()).collect(),
            interval_ms: 10,
            note: None,
            proc_root: root.to_path_buf(),
        }
    }

    #[test]
    fn pid_stat_lines_with_spaces_and_parens_in_the_name() {
        let s = "42 (my (odd) prog) S 7 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(parse_pid_stat(s), Some((7, "my (odd) prog".into(), 300.0)));
        assert_eq!(parse_pid_stat("garbage"), None);
    }

    #[test]
    fn the_coefficients_are_required_and_checked() {
        let e = epi_core::registry::Registry::builtin()
            .power(KEY, &json!({}))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("idle_watts"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path(), &[]);
        c.watts_per_core = -1.0;
        assert!(CpuModel::new(c).is_err());
    }

    #[tokio::test]
    async fn busy_cores_of_a_process_tree_become_modelled_watts() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let write = |pid: u32, ppid: u32, comm: &str, ticks: u64| {
            let d = root.join(pid.to_string());
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(
                d.join("stat"),
                format!("{pid} ({comm}) S {ppid} 1 1 0 -1 0 0 0 0 0 {ticks} 0 0 0 20 0 1 0\n"),
            )
            .unwrap();
        };
        write(1, 0, "init", 1000);
        write(10, 1, "llama-server", 0);
        write(11, 10, "worker", 0);
        write(12, 1, "other", 0);
        let mut m = CpuModel::new(cfg(root, &["llama-server"])).unwrap();
        m.ticks_per_s = 100.0;
        let info = m.open().await.unwrap();
        assert_eq!(info.method, EnergyMethod::Modelled);
        assert!(info.instrument.contains("not a measurement"));
        // The tree uses CPU; `other` and `init` do not count.
        write(10, 1, "llama-server", 100_000);
        write(11, 10, "worker", 100_000);
        write(12, 1, "other", 900_000);
        let b = m.next_batch().await.unwrap().unwrap();
        let w = b.samples[0].watts;
        // 2000 CPU-seconds in a few ms of wall time: far above any real core count, so the
        // estimate is 10 W + 5 W × (large): what matters is that only the tree was counted.
        let busy_tree = (w - 10.0) / 5.0;
        assert!(busy_tree > 0.0);
        write(12, 1, "other", 9_000_000);
        let b = m.next_batch().await.unwrap().unwrap();
        assert_eq!(b.samples[0].watts, 10.0, "no tree CPU time since: idle");
        // A program that is not running: not available, named.
        let mut m = CpuModel::new(cfg(root, &["vllm"])).unwrap();
        let e = m.open().await.unwrap_err().to_string();
        assert!(e.contains("vllm") && e.contains("not running"), "{e}");
    }
}
