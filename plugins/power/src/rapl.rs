//! `rapl`: CPU package and DRAM energy from the Linux powercap RAPL counters
//! (`/sys/class/powercap/intel-rapl:*`, also `amd-rapl:*`).
//!
//! Every selected domain (by default each `package-N` zone and each `dram` sub-zone) is one
//! channel. The source polls `energy_uj` every `interval_ms` on the host monotonic clock and
//! delivers the counter, unwrapped through the zone's `max_energy_range_uj`
//! ([`CounterUnwrapper`]), as `energy_j`, with the mean power since the previous reading as watts:
//! method `counter`.
//!
//! A failed read is missing data (an event and [`SourceStats::bad_lines`]), never 0 J; the next good
//! reading covers the interval. A reading implying more than `max_plausible_watts` (a torn or bogus
//! read that would look like a wrap) is skipped the same way. A counter that does not move, or
//! cannot be read, for longer than `stall_limit_ms` is an error. An `energy_uj` that is readable only
//! by root (Linux ≥ 5.10) makes `open` fail with [`PowerError::NotAvailable`] and the fix.

use crate::host_time::HostClock;
use epi_core::energy::CounterUnwrapper;
use epi_core::power::PowerError;
use epi_core::registry::{Factory, PluginConfig, PluginRegistration};
use epi_core::sample::{
    ChannelInfo, EnergyMethod, PowerSample, SampleBatch, SourceEvent, SourceInfo, SourceStats,
};
use epi_core::PowerSource;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

const KEY: &str = "rapl";

/// Read errors reported one by one as events; later ones are only counted.
const MAX_ERROR_EVENTS: u64 = 20;

/// The zone kinds a configuration may select.
pub const DOMAIN_KINDS: [&str; 5] = ["package", "dram", "core", "uncore", "psys"];

fn default_root() -> PathBuf {
    PathBuf::from("/sys/class/powercap")
}
fn default_interval_ms() -> u64 {
    100
}
fn default_domains() -> Vec<String> {
    vec!["package".into(), "dram".into()]
}
fn default_stall_limit_ms() -> u64 {
    1_000
}
fn default_max_plausible_watts() -> f64 {
    5_000.0
}

/// Settings of the `rapl` source (`[power.rapl]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RaplConfig {
    /// The powercap directory (`/sys/class/powercap`; a copy for tests).
    #[serde(default = "default_root")]
    pub sysfs_root: PathBuf,
    /// Polling period, ms (100).
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Zone kinds to measure: `package`, `dram`, `core`, `uncore`, `psys` (default package and
    /// dram; `psys` overlaps the packages, `core` and `uncore` are parts of a package).
    #[serde(default = "default_domains")]
    pub domains: Vec<String>,
    /// A counter that does not move (or cannot be read) for longer than this is an error, ms.
    #[serde(default = "default_stall_limit_ms")]
    pub stall_limit_ms: u64,
    /// A reading implying more power than this per zone is a bad reading, W.
    #[serde(default = "default_max_plausible_watts")]
    pub max_plausible_watts: f64,
    /// Stated relative accuracy, when you have one for this CPU (none by default).
    #[serde(default)]
    pub accuracy_rel: Option<f64>,
}

impl RaplConfig {
    fn validate(&self) -> Result<(), String> {
        if self.interval_ms == 0 {
            return Err("interval_ms: expected a polling period > 0 ms".into());
        }
        if self.domains.is_empty() {
            return Err(format!(
                "domains: expected at least one of {}",
                DOMAIN_KINDS.join(", ")
            ));
        }
        for d in &self.domains {
            if !DOMAIN_KINDS.contains(&d.as_str()) {
                return Err(format!(
                    "domains: unknown zone kind `{d}`; expected one of {}",
                    DOMAIN_KINDS.join(", ")
                ));
            }
        }
        if self.stall_limit_ms <= self.interval_ms {
            return Err(format!(
                "stall_limit_ms: expected more than interval_ms ({}), found {}",
                self.interval_ms, self.stall_limit_ms
            ));
        }
        if !(self.max_plausible_watts.is_finite() && self.max_plausible_watts > 0.0) {
            return Err("max_plausible_watts: expected a power > 0".into());
        }
        Ok(())
    }
}

/// One RAPL zone found under the powercap directory.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Zone {
    /// The zone's directory.
    pub dir: PathBuf,
    /// `intel-rapl` or `amd-rapl`.
    pub prefix: String,
    /// `[package]` or `[package, sub-zone]`.
    pub indices: Vec<u32>,
    /// The zone's `name` file (`package-0`, `dram`, `core`, ...).
    pub name: String,
    /// One of [`DOMAIN_KINDS`], or `other`.
    pub kind: &'static str,
    /// Channel name: `package-0`, `package-0/dram`.
    pub channel_name: String,
}

fn kind_of(name: &str) -> &'static str {
    if name.starts_with("package") {
        "package"
    } else if name == "dram" {
        "dram"
    } else if name == "core" {
        "core"
    } else if name == "uncore" {
        "uncore"
    } else if name == "psys" {
        "psys"
    } else {
        "other"
    }
}

fn scope_of(kind: &str) -> &'static str {
    match kind {
        "package" => "cpu-package",
        "dram" => "dram",
        "core" => "cpu-cores",
        "uncore" => "cpu-uncore",
        "psys" => "platform",
        _ => "other",
    }
}

fn not_available(reason: String) -> PowerError {
    PowerError::NotAvailable {
        source_key: KEY.into(),
        reason,
    }
}

/// Every RAPL zone under `root`, sorted by prefix and indices.
pub(crate) fn discover(root: &Path) -> Result<Vec<Zone>, PowerError> {
    let entries = std::fs::read_dir(root).map_err(|e| {
        not_available(format!(
            "cannot list {}: {e} (RAPL needs Linux with the intel_rapl_msr or amd powercap driver: try `sudo modprobe intel_rapl_msr`; containers need /sys/class/powercap mounted)",
            root.display()
        ))
    })?;
    let mut zones = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(key) = file_name.to_str() else {
            continue;
        };
        let Some((prefix, rest)) = ["intel-rapl:", "amd-rapl:"]
            .iter()
            .find_map(|p| key.strip_prefix(p).map(|r| (p, r)))
        else {
            continue;
        };
        let indices: Option<Vec<u32>> = rest.split(':').map(|x| x.parse().ok()).collect();
        let Some(indices) = indices.filter(|v| (1..=2).contains(&v.len())) else {
            continue;
        };
        let dir = root.join(key);
        let name_path = dir.join("name");
        let name = std::fs::read_to_string(&name_path)
            .map_err(|e| not_available(format!("cannot read {}: {e}", name_path.display())))?
            .trim()
            .to_string();
        zones.push(Zone {
            dir,
            prefix: prefix.trim_end_matches(':').to_string(),
            indices,
            kind: kind_of(&name),
            channel_name: name.clone(),
            name,
        });
    }
    zones.sort_by(|a, b| (&a.prefix, &a.indices).cmp(&(&b.prefix, &b.indices)));
    // Sub-zones are named after their package: `package-0/dram`.
    let parents: Vec<(String, u32, String)> = zones
        .iter()
        .filter(|z| z.indices.len() == 1)
        .map(|z| (z.prefix.clone(), z.indices[0], z.name.clone()))
        .collect();
    for z in zones.iter_mut().filter(|z| z.indices.len() == 2) {
        if let Some((_, _, parent)) = parents
            .iter()
            .find(|(p, i, _)| *p == z.prefix && *i == z.indices[0])
        {
            z.channel_name = format!("{parent}/{}", z.name);
        }
    }
    Ok(zones)
}

fn read_u64(path: &Path) -> std::io::Result<u64> {
    let text = std::fs::read_to_string(path)?;
    text.trim().parse::<u64>().map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("expected a non-negative integer, found {:?}", text.trim()),
        )
    })
}

/// Why `path` could not be read, and what to do about a permission error.
pub(crate) fn read_error_reason(path: &Path, e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        format!(
            "{} is not readable (permission denied): since Linux 5.10 the RAPL energy counters are readable only by root \
             (CVE-2020-8694). Run epi as root, or grant read access until the next boot with \
             `sudo chmod a+r /sys/class/powercap/intel-rapl:*/energy_uj /sys/class/powercap/intel-rapl:*:*/energy_uj` \
             (or make it permanent with a udev rule or systemd-tmpfiles entry)",
            path.display()
        )
    } else {
        format!("cannot read {}: {e}", path.display())
    }
}

struct Domain {
    id: u32,
    name: String,
    energy_path: PathBuf,
    range: u64,
    unwrapper: CounterUnwrapper,
    last_raw: u64,
    /// Time and unwrapped total (µJ) of the last accepted reading.
    last_t: f64,
    last_total: u128,
    /// Time the counter last moved (or the first reading).
    last_change_t: f64,
    /// The first reading, delivered with the power of the first interval once that is known.
    baseline: Option<PowerSample>,
}

/// The `rapl` power source.
pub struct Rapl {
    config: RaplConfig,
    clock: Option<HostClock>,
    domains: Vec<Domain>,
    ticker: Option<tokio::time::Interval>,
    stats: SourceStats,
    events: Vec<SourceEvent>,
    error_events: u64,
}

impl std::fmt::Debug for Rapl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rapl")
            .field("config", &self.config)
            .finish()
    }
}

impl Rapl {
    /// A source for `config` (no I/O until [`PowerSource::open`]).
    pub fn new(config: RaplConfig) -> Result<Rapl, PowerError> {
        config.validate().map_err(|message| PowerError::Config {
            source_key: KEY.into(),
            message,
        })?;
        Ok(Rapl {
            config,
            clock: None,
            domains: Vec::new(),
            ticker: None,
            stats: SourceStats::default(),
            events: Vec::new(),
            error_events: 0,
        })
    }

    fn selected(&self, zones: Vec<Zone>) -> Vec<Zone> {
        zones
            .into_iter()
            .filter(|z| self.config.domains.iter().any(|d| d == z.kind))
            .collect()
    }

    fn bad_reading(&mut self, at: f64, detail: String) {
        self.stats.bad_lines += 1;
        self.error_events += 1;
        if self.error_events <= MAX_ERROR_EVENTS {
            let suffix = if self.error_events == MAX_ERROR_EVENTS {
                " (further read errors are only counted)"
            } else {
                ""
            };
            self.events.push(SourceEvent {
                host_mono_ms: at,
                kind: "read-error".into(),
                detail: format!("{detail}{suffix}"),
            });
        }
    }

    /// Reads every domain once; samples go to `out`.
    fn poll(&mut self, clock: &HostClock, out: &mut Vec<PowerSample>) -> Result<(), PowerError> {
        let stall = self.config.stall_limit_ms as f64;
        let max_w = self.config.max_plausible_watts;
        for i in 0..self.domains.len() {
            let read = read_u64(&self.domains[i].energy_path);
            let now = clock.now();
            let d = &self.domains[i];
            let since_change = now.mono_ms - d.last_change_t;
            let raw = match read {
                Ok(raw) => raw,
                Err(e) => {
                    let reason = read_error_reason(&d.energy_path, &e);
                    if since_change > stall {
                        return Err(PowerError::Measurement {
                            source_key: KEY.into(),
                            message: format!(
                                "{}: no reading for {since_change:.0} ms: {reason}",
                                d.name
                            ),
                        });
                    }
                    self.bad_reading(
                        now.mono_ms,
                        format!("{}: {reason}; this interval is missing, not zero", d.name),
                    );
                    continue;
                }
            };
            let delta = if raw >= d.last_raw {
                raw - d.last_raw
            } else {
                d.range.saturating_sub(d.last_raw) + raw
            };
            let dt = now.mono_ms - d.last_t;
            if delta == 0 {
                if since_change > stall {
                    return Err(PowerError::Measurement {
                        source_key: KEY.into(),
                        message: format!(
                            "{}: {} did not change for {since_change:.0} ms, far longer than the RAPL update period (~1 ms): the counter is not working here (a virtual machine may expose a frozen RAPL); leave this zone out with `domains`",
                            d.name,
                            d.energy_path.display()
                        ),
                    });
                }
                continue;
            }
            let watts = delta as f64 / (dt.max(1e-6) * 1000.0);
            if watts > max_w {
                let detail = format!(
                    "{}: reading {raw} µJ after {} µJ implies {watts:.0} W over {dt:.1} ms (more than max_plausible_watts {max_w}); skipped",
                    d.name, d.last_raw
                );
                self.bad_reading(now.mono_ms, detail);
                continue;
            }
            let d = &mut self.domains[i];
            let total = d.unwrapper.push(raw);
            d.last_raw = raw;
            d.last_t = now.mono_ms;
            d.last_total = total;
            d.last_change_t = now.mono_ms;
            if let Some(mut b) = d.baseline.take() {
                b.watts = watts;
                out.push(b);
            }
            out.push(PowerSample {
                channel: d.id,
                t_ms: now.mono_ms,
                host_mono_ms: now.mono_ms,
                host_utc_ms: now.utc_ms,
                source_t_ms: None,
                watts,
                volts: None,
                amps: None,
                power_factor: None,
                energy_j: Some(total as f64 / 1e6),
            });
        }
        self.stats.samples += out.len() as u64;
        Ok(())
    }
}

#[epi_core::async_trait]
impl PowerSource for Rapl {
    async fn open(&mut self) -> Result<SourceInfo, PowerError> {
        let clock = HostClock::start();
        let root = self.config.sysfs_root.clone();
        let all = discover(&root)?;
        if all.is_empty() {
            return Err(not_available(format!(
                "no RAPL zones (intel-rapl:N, amd-rapl:N) under {}: not Linux on x86, the powercap driver is not loaded (`sudo modprobe intel_rapl_msr`), or a virtual machine without RAPL",
                root.display()
            )));
        }
        let kinds_found: Vec<String> = all
            .iter()
            .map(|z| format!("{} ({})", z.channel_name, z.kind))
            .collect();
        let zones = self.selected(all);
        if zones.is_empty() {
            return Err(not_available(format!(
                "no RAPL zone of the kinds {:?} under {}; found: {}",
                self.config.domains,
                root.display(),
                kinds_found.join(", ")
            )));
        }
        let mut unreadable = Vec::new();
        let mut domains = Vec::new();
        let mut zone_details = Vec::new();
        for (id, z) in zones.iter().enumerate() {
            let range_path = z.dir.join("max_energy_range_uj");
            let energy_path = z.dir.join("energy_uj");
            let range = match read_u64(&range_path) {
                Ok(r) if r > 0 => r,
                Ok(_) => {
                    return Err(not_available(format!(
                        "{}: a counter range of 0 µJ",
                        range_path.display()
                    )))
                }
                Err(e) => {
                    unreadable.push(read_error_reason(&range_path, &e));
                    continue;
                }
            };
            let raw = match read_u64(&energy_path) {
                Ok(r) => r,
                Err(e) => {
                    unreadable.push(read_error_reason(&energy_path, &e));
                    continue;
                }
            };
            let now = clock.now();
            let mut unwrapper = CounterUnwrapper::new(range);
            unwrapper.push(raw);
            zone_details.push(serde_json::json!({
                "channel": id, "name": z.channel_name, "path": z.dir.display().to_string(), "max_energy_range_uj": range,
            }));
            domains.push(Domain {
                id: id as u32,
                name: z.channel_name.clone(),
                energy_path,
                range,
                unwrapper,
                last_raw: raw,
                last_t: now.mono_ms,
                last_total: 0,
                last_change_t: now.mono_ms,
                baseline: Some(PowerSample {
                    channel: id as u32,
                    t_ms: now.mono_ms,
                    host_mono_ms: now.mono_ms,
                    host_utc_ms: now.utc_ms,
                    source_t_ms: None,
                    watts: 0.0, // replaced by the first interval's power before delivery
                    volts: None,
                    amps: None,
                    power_factor: None,
                    energy_j: Some(0.0),
                }),
            });
        }
        if !unreadable.is_empty() {
            return Err(not_available(unreadable.join("; ")));
        }
        self.domains = domains;
        let mut ticker = tokio::time::interval(Duration::from_millis(self.config.interval_ms));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await; // the first tick is immediate
        self.ticker = Some(ticker);
        self.clock = Some(clock);
        let mut details = Map::new();
        details.insert("sysfs_root".into(), Value::from(root.display().to_string()));
        details.insert("zones".into(), Value::Array(zone_details));
        details.insert("interval_ms".into(), Value::from(self.config.interval_ms));
        details.insert(
            "timeline".into(),
            Value::from("host monotonic clock (read time)"),
        );
        details.insert(
            "timeline_zero_utc_ms".into(),
            Value::from(clock.zero_utc_ms()),
        );
        details.insert(
            "energy".into(),
            Value::from("counter: energy_uj unwrapped with max_energy_range_uj; watts are the mean power since the previous reading"),
        );
        let prefix = zones.first().map(|z| z.prefix.clone()).unwrap_or_default();
        let mut instrument = format!("Linux powercap RAPL ({prefix})");
        if self.config.sysfs_root == default_root() {
            if let Some(model) = cpu_model() {
                instrument.push_str(&format!(", {model}"));
            }
        }
        Ok(SourceInfo {
            source: KEY.into(),
            method: EnergyMethod::Counter,
            instrument,
            sample_rate_hz: Some(1000.0 / self.config.interval_ms as f64),
            accuracy_rel: self.config.accuracy_rel,
            channels: zones
                .iter()
                .enumerate()
                .map(|(id, z)| ChannelInfo {
                    id: id as u32,
                    name: z.channel_name.clone(),
                    scope: scope_of(z.kind).into(),
                })
                .collect(),
            replay: false,
            details,
        })
    }

    /// Cancel-safe: dropped while waiting for the tick, it leaves nothing half done (the readings
    /// of a tick are delivered in the call that made them).
    async fn next_batch(&mut self) -> Result<Option<SampleBatch>, PowerError> {
        let Some(clock) = self.clock else {
            return Err(PowerError::Io {
                source_key: KEY.into(),
                message: "next_batch called before open or after close".into(),
            });
        };
        let mut samples = Vec::new();
        loop {
            if let Some(ticker) = self.ticker.as_mut() {
                ticker.tick().await;
            }
            self.poll(&clock, &mut samples)?;
            if !samples.is_empty() || !self.events.is_empty() {
                return Ok(Some(SampleBatch {
                    samples,
                    events: std::mem::take(&mut self.events),
                }));
            }
        }
    }

    fn stats(&self) -> SourceStats {
        self.stats.clone()
    }

    async fn close(&mut self) -> Result<(), PowerError> {
        self.ticker = None;
        self.clock = None;
        Ok(())
    }
}

fn cpu_model() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

fn build(config: &PluginConfig) -> Result<Box<dyn PowerSource>, epi_core::Error> {
    crate::build_source(KEY, config, Rapl::new)
}

impl epi_core::settings::PluginSettings for RaplConfig {
    fn example() -> Self {
        epi_core::settings::example_from(serde_json::json!({}))
    }
}

epi_core::inventory::submit! {
    PluginRegistration {
        key: KEY,
        description: "Linux powercap RAPL counters: every CPU package and DRAM zone (intel-rapl, amd-rapl)",
        factory: Factory::Power(build),
        settings: epi_core::settings::Settings::of::<RaplConfig>,
        toml_aliases: &[],
        capabilities: &[epi_core::registry::Capability::AutoDetect { rank: 20 }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A fake powercap tree laid out as the kernel's: flat `intel-rapl:N[:M]` zone directories, the
    /// `intel-rapl` control type and an `intel-rapl-mmio` twin that must not be counted twice.
    fn fake_tree(root: &Path) {
        let zone = |name: &str, zone_name: &str, energy: u64, range: u64| {
            let d = root.join(name);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("name"), format!("{zone_name}\n")).unwrap();
            fs::write(d.join("energy_uj"), format!("{energy}\n")).unwrap();
            fs::write(d.join("max_energy_range_uj"), format!("{range}\n")).unwrap();
        };
        fs::create_dir_all(root.join("intel-rapl")).unwrap();
        zone("intel-rapl:0", "package-0", 999_000, 1_000_000);
        zone("intel-rapl:0:0", "core", 10, 1_000_000);
        zone("intel-rapl:0:1", "dram", 5_000, 262_143_328_850);
        zone("intel-rapl:1", "package-1", 70_000, 262_143_328_850);
        zone("intel-rapl-mmio:0", "package-0", 1, 1_000_000);
    }

    fn set(root: &Path, zone: &str, v: u64) {
        fs::write(root.join(zone).join("energy_uj"), format!("{v}\n")).unwrap();
    }

    fn source(root: &Path) -> Rapl {
        Rapl::new(RaplConfig {
            sysfs_root: root.to_path_buf(),
            interval_ms: 10,
            domains: default_domains(),
            stall_limit_ms: 400,
            max_plausible_watts: 1e9,
            accuracy_rel: None,
        })
        .unwrap()
    }

    #[test]
    fn discovery_names_packages_and_dram_and_skips_other_entries() {
        let dir = tempfile::tempdir().unwrap();
        fake_tree(dir.path());
        let z = discover(dir.path()).unwrap();
        let names: Vec<&str> = z.iter().map(|z| z.channel_name.as_str()).collect();
        assert_eq!(
            names,
            vec!["package-0", "package-0/core", "package-0/dram", "package-1"]
        );
        assert_eq!(z[2].kind, "dram");
    }

    #[tokio::test]
    async fn counters_unwrap_through_the_range_and_read_errors_are_missing_data() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fake_tree(root);
        let mut s = source(root);
        let info = s.open().await.unwrap();
        assert_eq!(info.method, EnergyMethod::Counter);
        let names: Vec<&str> = info.channels.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, vec!["package-0", "package-0/dram", "package-1"]);
        assert_eq!(info.channels[1].scope, "dram");

        set(root, "intel-rapl:0", 999_500);
        set(root, "intel-rapl:0:1", 6_000);
        set(root, "intel-rapl:1", 71_000);
        let b = s.next_batch().await.unwrap().unwrap();
        // Baseline and first reading of each channel.
        assert_eq!(b.samples.len(), 6);
        let e = |b: &SampleBatch, ch: u32| -> Vec<f64> {
            b.samples
                .iter()
                .filter(|x| x.channel == ch)
                .map(|x| x.energy_j.unwrap())
                .collect()
        };
        assert_eq!(e(&b, 0), vec![0.0, 0.0005]);
        assert_eq!(e(&b, 1), vec![0.0, 0.001]);
        let p0: Vec<&PowerSample> = b.samples.iter().filter(|x| x.channel == 0).collect();
        assert!(p0[0].watts > 0.0 && p0[0].watts == p0[1].watts);
        assert!((p0[1].watts - 500.0 / ((p0[1].t_ms - p0[0].t_ms) * 1000.0)).abs() < 1e-9);

        // The package counter wraps at its range: 999 500 → 4 000 is 4 500 µJ, not a negative jump.
        set(root, "intel-rapl:0", 4_000);
        // The DRAM file vanishes for a moment: missing data, not 0 J.
        fs::remove_file(root.join("intel-rapl:0:1/energy_uj")).unwrap();
        set(root, "intel-rapl:1", 72_000);
        let b = s.next_batch().await.unwrap().unwrap();
        assert_eq!(e(&b, 0), vec![0.005]);
        assert!(e(&b, 1).is_empty());
        assert_eq!(e(&b, 2), vec![0.002]);
        assert!(
            b.events
                .iter()
                .any(|ev| ev.kind == "read-error" && ev.detail.contains("missing, not zero")),
            "{:?}",
            b.events
        );
        assert_eq!(s.stats().bad_lines, 1);

        set(root, "intel-rapl:0", 5_000);
        set(root, "intel-rapl:0:1", 9_000);
        set(root, "intel-rapl:1", 73_000);
        let b = s.next_batch().await.unwrap().unwrap();
        assert_eq!(e(&b, 0), vec![0.006]);
        assert_eq!(e(&b, 1), vec![0.004]); // covers the missed interval
        assert_eq!(s.stats().samples, 6 + 2 + 3);
        s.close().await.unwrap();
    }

    #[tokio::test]
    async fn an_implausible_jump_is_skipped_not_taken_for_a_wrap() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fake_tree(root);
        let mut s = source(root);
        s.config.max_plausible_watts = 1000.0;
        s.config.domains = vec!["package".into()];
        fs::write(
            root.join("intel-rapl:0/max_energy_range_uj"),
            "262143328850\n",
        )
        .unwrap();
        s.open().await.unwrap();
        set(root, "intel-rapl:0", 999_100); // 100 µJ in ~10 ms: 10 W
        set(root, "intel-rapl:1", 70_100);
        s.next_batch().await.unwrap().unwrap();
        set(root, "intel-rapl:0", 999_050); // went back a little: a torn read, not a wrap
        set(root, "intel-rapl:1", 70_200);
        let b = s.next_batch().await.unwrap().unwrap();
        assert!(b.samples.iter().all(|x| x.channel != 0));
        assert!(
            b.events
                .iter()
                .any(|e| e.detail.contains("max_plausible_watts")),
            "{:?}",
            b.events
        );
        set(root, "intel-rapl:0", 999_300);
        set(root, "intel-rapl:1", 70_300);
        let b = s.next_batch().await.unwrap().unwrap();
        let p: Vec<f64> = b
            .samples
            .iter()
            .filter(|x| x.channel == 0)
            .map(|x| x.energy_j.unwrap())
            .collect();
        assert_eq!(p, vec![0.0003]);
    }

    #[tokio::test]
    async fn next_batch_is_cancel_safe() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fake_tree(root);
        let mut s = source(root);
        s.config.interval_ms = 50;
        s.open().await.unwrap();
        // Dropped while waiting for its tick: the source carries on.
        assert!(
            tokio::time::timeout(Duration::from_millis(5), s.next_batch())
                .await
                .is_err()
        );
        set(root, "intel-rapl:0", 999_500);
        set(root, "intel-rapl:0:1", 6_000);
        set(root, "intel-rapl:1", 71_000);
        let b = s.next_batch().await.unwrap().unwrap();
        assert_eq!(b.samples.len(), 6);
    }

    #[tokio::test]
    async fn a_frozen_counter_is_an_error_not_zero_energy() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fake_tree(root);
        let mut s = source(root);
        s.config.domains = vec!["package".into()];
        s.open().await.unwrap();
        let e = tokio::time::timeout(Duration::from_secs(60), s.next_batch())
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(e, PowerError::Measurement { .. }), "{e}");
        assert!(e.to_string().contains("did not change"), "{e}");
    }

    #[tokio::test]
    async fn no_rapl_and_unreadable_counters_are_not_available_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = source(dir.path());
        let e = s.open().await.unwrap_err();
        assert!(matches!(e, PowerError::NotAvailable { .. }));
        assert!(e.to_string().contains("no RAPL zones"), "{e}");

        let e = read_error_reason(
            Path::new("/sys/class/powercap/intel-rapl:0/energy_uj"),
            &std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        );
        assert!(
            e.contains("readable only by root") && e.contains("chmod a+r"),
            "{e}"
        );

        // A real permission error where the test can produce one (not as root: root reads
        // anything; the end-to-end test runs `epi` as an unprivileged user for that case).
        fake_tree(dir.path());
        let f = dir.path().join("intel-rapl:1/energy_uj");
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&f, fs::Permissions::from_mode(0o000)).unwrap();
        if fs::read_to_string(&f).is_err() {
            let e = source(dir.path()).open().await.unwrap_err();
            assert!(matches!(e, PowerError::NotAvailable { .. }));
            assert!(
                e.to_string()
                    .contains("intel-rapl:1/energy_uj is not readable"),
                "{e}"
            );
        }
    }

    #[test]
    fn configuration_is_checked_without_io() {
        let r = epi_core::Registry::builtin();
        assert!(r
            .power(KEY, &serde_json::json!({"sysfs_root": "/nonexistent"}))
            .is_ok());
        let e = r
            .power(KEY, &serde_json::json!({"domains": ["gpu"]}))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("unknown zone kind `gpu`"), "{e}");
        let e = r
            .power(KEY, &serde_json::json!({"port": "/dev/ttyUSB0"}))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("unknown field `port`"), "{e}");
    }
}
