//! The hardware a run ran on, detected rather than assumed: CPU model, cores, memory and
//! accelerators of this machine (from `/proc`), or of remote hosts through [`DETECT_SCRIPT`] run
//! over SSH by a backend and parsed with [`HostHardware::parse`]. A run's `hardware` label is the
//! user's when given, else composed from what was detected, else `unknown` — never a default
//! from configuration.
//!
//! Detection never fails: a fact that cannot be read is left out (`None`) and the label says
//! less.

use serde::{Deserialize, Serialize};

/// What one host is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostHardware {
    /// CPU model name (`AMD EPYC 9654 96-Core Processor`, `Cortex-A76`).
    pub cpu: Option<String>,
    /// Logical CPUs.
    pub cores: Option<u32>,
    /// Memory, GiB.
    pub memory_gib: Option<f64>,
    /// Accelerators (`NVIDIA H100 80GB HBM3`).
    #[serde(default)]
    pub accelerators: Vec<String>,
    /// Machine architecture (`x86_64`, `aarch64`).
    pub arch: Option<String>,
}

/// A POSIX shell script that prints what [`HostHardware::parse`] reads: `cpu=`, `cores=`,
/// `mem_kb=`, `arch=` and one `accel=` line per NVIDIA GPU. Read-only; needs no privileges.
pub const DETECT_SCRIPT: &str = r#"m=$(grep -m1 -E '^(model name|Model|Hardware|cpu model)[[:space:]]*:' /proc/cpuinfo 2>/dev/null | sed 's/^[^:]*:[[:space:]]*//'); echo "cpu=$m"; echo "cores=$(grep -c '^processor' /proc/cpuinfo 2>/dev/null)"; echo "mem_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo 2>/dev/null)"; echo "arch=$(uname -m 2>/dev/null)"; for f in /proc/driver/nvidia/gpus/*/information; do [ -r "$f" ] && echo "accel=$(sed -n 's/^Model:[[:space:]]*//p' "$f")"; done; true"#;

impl HostHardware {
    /// Reads the output of [`DETECT_SCRIPT`].
    pub fn parse(output: &str) -> HostHardware {
        let mut h = HostHardware::default();
        for line in output.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = v.trim();
            if v.is_empty() {
                continue;
            }
            match k.trim() {
                "cpu" => h.cpu = Some(v.to_string()),
                "cores" => h.cores = v.parse().ok().filter(|&n| n > 0),
                "mem_kb" => {
                    h.memory_gib = v
                        .parse::<f64>()
                        .ok()
                        .map(|kb| (kb / 1024.0 / 1024.0 * 10.0).round() / 10.0)
                }
                "arch" => h.arch = Some(v.to_string()),
                "accel" => h.accelerators.push(v.to_string()),
                _ => {}
            }
        }
        h
    }

    /// This machine, from `/proc` (the same facts as the script).
    pub fn local() -> HostHardware {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| {
                let k = l.split(':').next().unwrap_or("").trim();
                matches!(k, "model name" | "Model" | "Hardware" | "cpu model")
            })
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty());
        let cores = std::thread::available_parallelism()
            .ok()
            .map(|n| n.get() as u32);
        let mem_kb = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1).map(String::from))
            })
            .unwrap_or_default();
        let mut accel = String::new();
        if let Ok(dirs) = std::fs::read_dir("/proc/driver/nvidia/gpus") {
            for d in dirs.flatten() {
                if let Ok(info) = std::fs::read_to_string(d.path().join("information")) {
                    if let Some(m) = info.lines().find_map(|l| l.strip_prefix("Model:")) {
                        accel.push_str(&format!("accel={}\n", m.trim()));
                    }
                }
            }
        }
        let mut h = HostHardware::parse(&format!(
            "cores={}\nmem_kb={mem_kb}\narch={}\n{accel}",
            cores.unwrap_or(0),
            std::env::consts::ARCH
        ));
        h.cpu = cpu;
        h
    }

    /// `AMD EPYC 9654, 2 cores, 23.4 GiB, NVIDIA H100` (facts not read are left out; `unknown`
    /// when nothing was).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(c) = &self.cpu {
            parts.push(c.clone());
        }
        if let Some(n) = self.cores {
            parts.push(format!("{n} cores"));
        }
        if let Some(m) = self.memory_gib {
            parts.push(format!("{m} GiB"));
        }
        if !self.accelerators.is_empty() {
            parts.push(self.accelerators.join(" + "));
        }
        if parts.is_empty() {
            "unknown".into()
        } else {
            parts.join(", ")
        }
    }
}

/// The label for hosts running one engine: `4x Cortex-A76, 4 cores, 15.8 GiB (distributed-llama)`
/// for identical hosts, each host listed otherwise; `unknown` without hosts.
pub fn label(hosts: &[HostHardware], engine: &str) -> String {
    if hosts.is_empty() {
        return "unknown".into();
    }
    let first = hosts[0].describe();
    let body = if hosts.iter().all(|h| h.describe() == first) {
        if hosts.len() == 1 {
            first
        } else {
            format!("{}x {first}", hosts.len())
        }
    } else {
        hosts
            .iter()
            .map(HostHardware::describe)
            .collect::<Vec<_>>()
            .join("; ")
    };
    if engine.is_empty() {
        body
    } else {
        format!("{body} ({engine})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_output_is_read_and_blank_facts_are_left_out() {
        let h = HostHardware::parse(
            "cpu=Cortex-A76\ncores=4\nmem_kb=16384000\narch=aarch64\naccel=\ngarbage\n",
        );
        assert_eq!(h.cpu.as_deref(), Some("Cortex-A76"));
        assert_eq!(h.cores, Some(4));
        assert_eq!(h.memory_gib, Some(15.6));
        assert!(h.accelerators.is_empty());
        assert_eq!(
            label(&[h.clone(), h.clone(), h.clone(), h], "distributed-llama"),
            "4x Cortex-A76, 4 cores, 15.6 GiB (distributed-llama)"
        );
        assert_eq!(HostHardware::parse("cores=\n").describe(), "unknown");
        assert_eq!(label(&[], "x"), "unknown");
    }

    #[test]
    fn the_script_reads_this_machine_as_local_does() {
        let Ok(out) = std::process::Command::new("sh")
            .args(["-c", DETECT_SCRIPT])
            .output()
        else {
            return;
        };
        let script = HostHardware::parse(&String::from_utf8_lossy(&out.stdout));
        let local = HostHardware::local();
        assert_eq!(script.cpu, local.cpu);
        assert_eq!(script.memory_gib, local.memory_gib);
        assert_eq!(script.accelerators, local.accelerators);
        assert!(local.cores.is_some_and(|n| n >= 1));
    }
}
