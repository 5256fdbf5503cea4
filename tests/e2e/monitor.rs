//! `epi monitor` end to end: the epi-meter path on a real pseudo-terminal pair (socat) fed by the
//! board emulator `tests/tools/epi_meter_emulator.py`, RAPL on a fake powercap tree (also as an
//! unprivileged user), CSV replay, and the usage errors.

use crate::support::{
    complete_lines, epi, epi_bin, have_tool, repo_root, send_signal, stderr, stdout, wait_output,
};
use epi_framework::trace::{summarize, TraceOptions, TraceReader};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn emulator() -> PathBuf {
    repo_root().join("tests/tools/epi_meter_emulator.py")
}

/// A child process killed (SIGTERM, then SIGKILL) if the test ends early.
struct Proc(Option<Child>);

impl Proc {
    fn pid(&self) -> u32 {
        self.0.as_ref().map(|c| c.id()).unwrap_or(0)
    }
    fn wait_timeout(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Some(c) = self.0.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    self.0 = None;
                    return Some(st);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            std::thread::sleep(Duration::from_millis(300));
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Starts the emulator; returns once its pty pair exists.
fn start_emulator(dir: &Path, extra: &[&str]) -> Proc {
    let mut child = Command::new("python3")
        .arg(emulator())
        .arg("--dir")
        .arg(dir.join("link"))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the emulator");
    let out = child.stdout.take().expect("emulator stdout");
    let mut line = String::new();
    BufReader::new(out)
        .read_line(&mut line)
        .expect("emulator says READY");
    assert_eq!(line.trim(), "READY", "emulator did not start");
    Proc(Some(child))
}

fn num(s: &str) -> f64 {
    s.parse().unwrap_or_else(|_| panic!("not a number: {s:?}"))
}

/// One row of the emulator's ground truth.
#[derive(Debug)]
struct Truth {
    boot: u32,
    t_ms: u32,
    node: u32,
    w: f64,
    v: f64,
    a: f64,
    pf: f64,
    wh: f64,
}

fn read_truth(path: &Path) -> Vec<Truth> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Truth {
                boot: f[0].parse().unwrap(),
                t_ms: f[2].parse().unwrap(),
                node: f[3].parse().unwrap(),
                w: num(f[4]),
                v: num(f[5]),
                a: num(f[6]),
                pf: num(f[7]),
                wh: num(f[8]),
            }
        })
        .collect()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

/// Acceptance: a 10 s emulated run with every fault, recorded with `epi monitor --record`, equals
/// the emulator's ground truth sample for sample, and its energy matches the emulator's to 1e-6.
#[test]
fn recording_an_emulated_meter_equals_its_ground_truth() {
    if !have_tool("socat") || !have_tool("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let truth_path = d.join("truth.csv");
    let rec = d.join("rec.csv");
    let mut emu = start_emulator(
        d,
        &[
            "--duration",
            "10",
            "--rate",
            "10",
            "--faults",
            "all",
            "--truth",
            truth_path.to_str().unwrap(),
            "--linger-s",
            "60",
            // A long outage, so the gap on the host clock stands far above any scheduling delay.
            "--reboot-s",
            "2",
        ],
    );
    let port = d.join("link/host");
    let mon = Command::new(epi_bin())
        .args([
            "monitor",
            "--power",
            "epi-meter",
            "--port",
            port.to_str().unwrap(),
            "--record",
            rec.to_str().unwrap(),
        ])
        .args(["--duration", "90"]) // a safety net; the test stops it with Ctrl-C
        .current_dir(d)
        .env("NO_COLOR", "1")
        .env("XDG_CONFIG_HOME", d.join(".no-user-config"))
        .stdout(std::fs::File::create(d.join("monitor.out")).unwrap())
        .stderr(std::fs::File::create(d.join("monitor.err")).unwrap())
        .spawn()
        .expect("run epi monitor");
    let mut mon = Proc(Some(mon));

    // The emulator writes its ground truth when its run is complete.
    assert!(
        wait_for(Duration::from_secs(180), || truth_path.exists()),
        "the emulator did not finish"
    );
    let truth = read_truth(&truth_path);
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("truth.csv.json")).unwrap()).unwrap();
    // Everything delivered reaches the recording (flushed at least every second), then Ctrl-C.
    let rows_in = |p: &Path| complete_lines(p).len().saturating_sub(1);
    assert!(
        wait_for(Duration::from_secs(120), || rows_in(&rec) >= truth.len()),
        "{} of {} delivered samples recorded",
        rows_in(&rec),
        truth.len()
    );
    mon.signal("-INT");
    let status = mon
        .wait_timeout(Duration::from_secs(20))
        .expect("epi monitor stops on Ctrl-C");
    let out = std::fs::read_to_string(d.join("monitor.out")).unwrap_or_default();
    let err = std::fs::read_to_string(d.join("monitor.err")).unwrap_or_default();
    eprintln!("--- epi monitor stdout ---\n{out}--- stderr ---\n{err}");
    assert_eq!(status.code(), Some(130), "Ctrl-C exits 130");
    emu.wait_timeout(Duration::from_secs(20));

    // --- Sample for sample ---
    let mut reader = TraceReader::open(&rec).unwrap();
    let mut rows = Vec::new();
    while let Some((_, r)) = reader.next_row().unwrap() {
        rows.push(r);
    }
    assert_eq!(
        rows.len(),
        truth.len(),
        "recorded rows vs delivered samples"
    );
    assert_eq!(
        truth.len() as u64,
        summary["delivered_samples"].as_u64().unwrap()
    );
    let mut first_of_boot: std::collections::BTreeMap<(u32, u32), usize> = Default::default();
    for (i, (r, t)) in rows.iter().zip(&truth).enumerate() {
        assert_eq!(r.node, t.node, "row {i}");
        assert_eq!(r.source_t_ms, Some(t.t_ms as f64), "row {i}: meter t_ms");
        assert_eq!(r.watts, t.w, "row {i}: watts");
        assert_eq!(r.volts, Some(t.v), "row {i}: volts");
        assert_eq!(r.amps, Some(t.a), "row {i}: amps");
        assert_eq!(r.power_factor, Some(t.pf), "row {i}: pf");
        assert!(r.utc_ms.is_some(), "row {i}: host UTC arrival time");
        let f = *first_of_boot.entry((t.boot, t.node)).or_insert(i);
        // Within a boot: the timeline is the meter's clock (wrap included) and the counter the IC's.
        let dt_meter = t.t_ms.wrapping_sub(truth[f].t_ms) as f64;
        assert_eq!(
            r.t_ms - rows[f].t_ms,
            dt_meter,
            "row {i}: timeline follows the meter clock"
        );
        let de = r.energy_j.unwrap() - rows[f].energy_j.unwrap();
        assert!(
            (de - (t.wh - truth[f].wh) * 3600.0).abs() < 1e-6,
            "row {i}: counter {de} J"
        );
    }
    // The t_ms and seq wraps happened (the emulator starts just below 2^32).
    assert!(
        truth.iter().any(|t| t.t_ms > 4_000_000_000)
            && truth.iter().any(|t| t.boot == 0 && t.t_ms < 100_000)
    );

    // --- Across the reboot: continuous on the host clock ---
    let reboot = truth
        .iter()
        .position(|t| t.boot == 1)
        .expect("a reboot in the run");
    let nodes = truth.iter().map(|t| t.node).max().unwrap() + 1;
    let gap = rows[reboot].t_ms - rows[reboot - 1].t_ms;
    let period = summary["period_ms"].as_f64().unwrap();
    let expected_gap = summary["reboot_info"][0]["gap_slots"].as_f64().unwrap() * period;
    // The host clock sees the outage give or take the delays of two lines on their way through
    // the emulator, socat and epi's reader (scheduling, tens of ms; bounded here at 500 ms, a
    // quarter of the outage).
    assert!(
        (gap - expected_gap).abs() < 500.0,
        "reboot gap {gap} ms on the host clock, emulator {expected_gap} ms"
    );
    // The bridge the recording contains across the reboot: trapezoid of the bounding readings.
    let mut bridge = 0.0;
    for n in 0..nodes {
        let before = (0..reboot).rev().find(|&i| truth[i].node == n).unwrap();
        let after = (reboot..truth.len()).find(|&i| truth[i].node == n).unwrap();
        bridge +=
            (rows[after].t_ms - rows[before].t_ms) * (truth[before].w + truth[after].w) / 2000.0;
    }

    // --- Energy ---
    let s = summarize(&rec, &TraceOptions::default()).unwrap();
    let sum = |k: &str| {
        summary[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .sum::<f64>()
    };
    let expected = sum("energy_j_by_boot") + bridge;
    assert!(
        rel(s.total_joules(), expected) < 1e-6,
        "integrated {} J vs emulator {expected} J",
        s.total_joules()
    );
    let expected_counter = sum("counter_j_by_boot") + bridge;
    let counter = s.counter_joules().expect("every row has the counter");
    assert!(
        rel(counter, expected_counter) < 1e-6,
        "counter {counter} J vs emulator {expected_counter} J"
    );
    eprintln!(
        "acceptance: {} rows equal; integrated {:.6} J vs {:.6} J (rel {:.2e}); counter {:.6} J vs {:.6} J (rel {:.2e})",
        rows.len(),
        s.total_joules(),
        expected,
        rel(s.total_joules(), expected),
        counter,
        expected_counter,
        rel(counter, expected_counter)
    );

    // --- Stream health, in the sidecar ---
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("rec.csv.meta.json")).unwrap())
            .unwrap();
    let st = &meta["stats"];
    assert_eq!(st["samples"], summary["delivered_samples"]);
    assert_eq!(st["bad_lines"], summary["bad_lines"], "bad lines");
    assert_eq!(st["lost_samples"], summary["lost_samples"], "lost samples");
    assert_eq!(st["reboots"], 1);
    assert_eq!(st["reconnects"], 1);
    assert!(st["disconnected_ms"].as_f64().unwrap() > 500.0);
    let kinds: Vec<&str> = meta["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for k in [
        "partial-line",
        "bad-line",
        "lost-samples",
        "ignored-line",
        "meter-error",
        "disconnected",
        "reconnected",
        "reboot",
        "hello",
    ] {
        assert!(kinds.contains(&k), "event {k} recorded: {kinds:?}");
    }
    assert_eq!(meta["source"]["source"], "epi-meter");
    assert_eq!(meta["source"]["method"], "counter");
    assert_eq!(
        meta["source"]["instrument"],
        "epi-meter v1.0 fw 0.1.0, ATM90E26"
    );
    let ms = &meta["extra"]["summary"];
    assert_eq!(ms["stopped"], "interrupted");
    assert!(
        rel(
            ms["energy_integrated_j"].as_f64().unwrap(),
            s.total_joules()
        ) < 1e-9,
        "monitor and summarize agree"
    );
    assert!(rel(ms["energy_counter_j"].as_f64().unwrap(), counter) < 1e-9);
}

/// A fake powercap tree, world-readable except what the test closes.
fn fake_rapl(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for (zone, name, energy, range) in [
        ("intel-rapl:0", "package-0", 900_000u64, 1_000_000u64),
        ("intel-rapl:0:0", "dram", 10_000, 262_143_328_850),
    ] {
        let d = root.join(zone);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("name"), format!("{name}\n")).unwrap();
        std::fs::write(d.join("energy_uj"), format!("{energy}\n")).unwrap();
        std::fs::write(d.join("max_energy_range_uj"), format!("{range}\n")).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn rapl_monitor_records_counters_through_a_wrap() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("powercap");
    fake_rapl(&root);
    let rec = dir.path().join("rapl.csv");
    // The counters move while epi watches: 2 mJ per ms on the package (2 W), wrapping at 1 J.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (root, stop) = (root.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut pkg, mut dram) = (900_000u64, 10_000u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
                pkg = (pkg + 10_000) % 1_000_000;
                dram += 2_500;
                std::fs::write(root.join("intel-rapl:0/energy_uj.tmp"), format!("{pkg}\n"))
                    .unwrap();
                std::fs::rename(
                    root.join("intel-rapl:0/energy_uj.tmp"),
                    root.join("intel-rapl:0/energy_uj"),
                )
                .unwrap();
                std::fs::write(
                    root.join("intel-rapl:0:0/energy_uj.tmp"),
                    format!("{dram}\n"),
                )
                .unwrap();
                std::fs::rename(
                    root.join("intel-rapl:0:0/energy_uj.tmp"),
                    root.join("intel-rapl:0:0/energy_uj"),
                )
                .unwrap();
            }
        })
    };
    let sysfs = format!("sysfs_root={}", root.display());
    // Recorded until the file shows 20 package samples and a wrap (more than 0.1 J from 0.9 J in
    // a 1 J range), then Ctrl-C: however fast the machine, the recording holds what is checked.
    let child = Command::new(epi_bin())
        .args([
            "monitor",
            "--power",
            "rapl",
            "--set",
            &sysfs,
            "--set",
            "interval_ms=20",
            "--record",
            rec.to_str().unwrap(),
        ])
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .env("XDG_CONFIG_HOME", dir.path().join(".no-user-config"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let package_energy = || -> Vec<f64> {
        let lines = complete_lines(&rec);
        let Some(header) = lines.first() else {
            return Vec::new();
        };
        let cols: Vec<&str> = header.split(',').collect();
        let node = cols.iter().position(|c| *c == "node_id").unwrap();
        let energy = cols.iter().position(|c| *c == "energy_j").unwrap();
        lines[1..]
            .iter()
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f[node] == "0")
            .map(|f| f[energy].parse().unwrap())
            .collect()
    };
    crate::support::wait_for("20 package samples through a wrap", 120, || {
        let e = package_energy();
        (e.len() >= 20 && e.last().is_some_and(|&j| j > 0.1)).then_some(())
    });
    send_signal(&child, "INT");
    let o = wait_output(child, 60);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("package-0") && out.contains("package-0/dram"),
        "{out}"
    );
    let mut r = TraceReader::open(&rec).unwrap();
    let (mut pkg, mut watts) = (Vec::new(), Vec::new());
    while let Some((_, row)) = r.next_row().unwrap() {
        if row.node == 0 {
            pkg.push(row.energy_j.unwrap());
            watts.push(row.watts);
        }
    }
    assert!(pkg.len() >= 20, "{} package samples", pkg.len());
    assert!(
        pkg.windows(2).all(|w| w[1] > w[0]),
        "monotonic through the wraps: {pkg:?}"
    );
    assert!(
        *pkg.last().unwrap() > 0.1,
        "wrapped at least once (1 J range, 2 W for 1.5 s)"
    );
    // A wrap taken wrongly would be a jump of ±1 J (±50 W over 20 ms): every interval's mean power
    // is at most what the writer produced (2 W, 10 000 µJ steps).
    for w in pkg.windows(2) {
        let steps = (w[1] - w[0]) * 1e6 / 10_000.0;
        assert!(
            (steps - steps.round()).abs() < 1e-6,
            "a whole number of counter steps: {w:?}"
        );
    }
    assert!(
        watts.iter().all(|&w| w > 0.0 && w < 10.0),
        "package watts {watts:?}"
    );
    let meta: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("rapl.csv.meta.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(meta["source"]["method"], "counter");
    assert_eq!(meta["source"]["channels"][1]["scope"], "dram");
}

#[test]
fn rapl_unreadable_energy_names_the_file_and_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = dir.path().join("powercap");
    fake_rapl(&root);
    let f = root.join("intel-rapl:0/energy_uj");
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o400)).unwrap();
    let sysfs = format!("sysfs_root={}", root.display());
    let args = [
        "monitor",
        "--power",
        "rapl",
        "--set",
        &sysfs,
        "--duration",
        "1",
    ];
    // Root reads any file: run epi as an unprivileged user, as on a real machine since Linux 5.10.
    let o = if std::fs::File::open("/proc/self/status")
        .ok()
        .and_then(|f| {
            BufReader::new(f)
                .lines()
                .map_while(Result::ok)
                .find(|l| l.starts_with("Uid:"))
        })
        .is_some_and(|l| l.split_whitespace().nth(1) == Some("0"))
    {
        if !have_tool("setpriv") {
            return;
        }
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(epi_bin())
            .args(args)
            .current_dir(dir.path())
            .env("NO_COLOR", "1")
            .env("XDG_CONFIG_HOME", dir.path().join(".no-user-config"))
            .output()
            .unwrap()
    } else {
        epi(dir.path(), &args)
    };
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(
        err.contains("intel-rapl:0/energy_uj is not readable (permission denied)"),
        "{err}"
    );
    assert!(
        err.contains("readable only by root") && err.contains("chmod a+r"),
        "{err}"
    );
    assert!(!dir.path().join("rapl.csv").exists());
}

#[test]
fn a_replayed_recording_records_the_same_rows_labelled_as_a_replay() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("orig.csv");
    let mut text = String::from("timestamp_ms,node_id,watts_rms,volts_rms,amps_rms,power_factor,utc_ms,source_t_ms,energy_j\n");
    for i in 0..300 {
        for n in 0..2 {
            text.push_str(&format!(
                "{},{n},{},121.5,0.1,0.99,{},{},{}\n",
                i * 20,
                10.0 + n as f64 + (i % 9) as f64 * 0.5,
                1_700_000_000_000i64 + i * 20,
                i * 20,
                i as f64 * 0.25
            ));
        }
    }
    std::fs::write(&src, &text).unwrap();
    let copy = d.join("copy.csv");
    let o = epi(
        d,
        &[
            "monitor",
            "--power",
            "csv",
            "--file",
            src.to_str().unwrap(),
            "--record",
            copy.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let summary: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(summary["stopped"], "source-ended");
    assert_eq!(summary["replay"], true);
    assert_eq!(
        std::fs::read_to_string(&copy).unwrap(),
        text,
        "the copy is the original, byte for byte"
    );
    let orig = summarize(&src, &TraceOptions::default()).unwrap();
    assert!(
        rel(
            summary["energy_integrated_j"].as_f64().unwrap(),
            orig.total_joules()
        ) < 1e-12
    );
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("copy.csv.meta.json")).unwrap())
            .unwrap();
    assert_eq!(meta["source"]["replay"], true);
    assert_eq!(meta["source"]["source"], "csv");

    // At recorded speed, 6 s of trace at ×20 take about 0.3 s.
    let t = Instant::now();
    let o = epi(
        d,
        &[
            "monitor",
            "--power",
            "csv",
            "--file",
            src.to_str().unwrap(),
            "--set",
            "pace=recorded",
            "--set",
            "speed=20",
            "--json",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        t.elapsed() >= Duration::from_millis(290),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn usage_and_configuration_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = epi(d, &["monitor"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--power KEY (one of:") && stderr(&o).contains("epi-meter"),
        "{}",
        stderr(&o)
    );
    let o = epi(d, &["monitor", "--power", "epi-meter"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).contains("missing field `port`"),
        "{}",
        stderr(&o)
    );
    let o = epi(
        d,
        &[
            "monitor",
            "--power",
            "epi-meter",
            "--port",
            "/dev/x",
            "--ssh-port",
            "22",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = epi(d, &["monitor", "--power", "rapl", "--port", "/dev/ttyUSB0"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).contains("unknown field `port`"),
        "{}",
        stderr(&o)
    );
    let o = epi(d, &["monitor", "--power", "no-such-source"]);
    assert_eq!(o.status.code(), Some(2));
    let o = epi(
        d,
        &[
            "monitor",
            "--power",
            "epi-meter",
            "--port",
            d.join("no-tty").to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(4));
    assert!(
        stderr(&o).contains("does not exist: is the meter plugged in?"),
        "{}",
        stderr(&o)
    );
    // The config file's [power.<key>] table is the base the flags override.
    std::fs::write(
        d.join("epi-bench.toml"),
        "[power.epi-meter]\nport = \"/dev/from-config\"\nbaud = 9600\n",
    )
    .unwrap();
    let o = epi(d, &["monitor", "--power", "epi-meter"]);
    assert_eq!(o.status.code(), Some(4));
    assert!(stderr(&o).contains("/dev/from-config"), "{}", stderr(&o));
    if std::env::var("EPI_NVML_TEST").as_deref() != Ok("1") {
        // No NVIDIA driver on this machine: not available, never a zero.
        let o = epi(d, &["monitor", "--power", "nvml", "--duration", "1"]);
        if o.status.code() == Some(4) {
            assert!(stderr(&o).contains("nvml: not available"), "{}", stderr(&o));
        }
    }
}

/// `epi monitor --host …` drives the `orchestrator` source (SQLite over SSH, tail mode) with the
/// SSH flags mapped onto its settings, against a real sshd and a database being written.
#[test]
fn monitor_with_host_tails_the_orchestrator_database() {
    if !have_tool("sshd") || !have_tool("ssh-keygen") || !have_tool("sqlite3") {
        return;
    }
    let sshd = epi_framework::testing::Sshd::start().expect("start sshd");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = d.join("telemetry.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.execute_batch(
            "CREATE TABLE epi_power_traces (id INTEGER PRIMARY KEY, ts_utc_ms INTEGER NOT NULL, meter_t_ms INTEGER,
               seq INTEGER, node_id INTEGER NOT NULL, watts_rms REAL NOT NULL, volts_rms REAL, amps_rms REAL,
               power_factor REAL, wh REAL);",
        )
        .unwrap();
    }
    std::fs::write(
        d.join("epi-bench.toml"),
        format!(
            "[orchestrator]\ndb_path = {:?}\npoll_interval_ms = 100\n",
            db.to_str().unwrap()
        ),
    )
    .unwrap();
    // The Orchestrator logging the meter: 10 Hz, 2 nodes, written while epi watches.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || {
            let c = rusqlite::Connection::open(&db).unwrap();
            c.busy_timeout(Duration::from_secs(5)).unwrap();
            let mut seq = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as i64;
                for node in 0..2i64 {
                    c.execute(
                        "INSERT INTO epi_power_traces (ts_utc_ms, meter_t_ms, seq, node_id, watts_rms, volts_rms, amps_rms, power_factor, wh)
                         VALUES (?1, ?2, ?3, ?4, ?5, 121.0, 0.1, 0.99, ?6)",
                        rusqlite::params![now, seq * 100, seq, node, 10.0 + node as f64, seq as f64 / 3600.0],
                    )
                    .unwrap();
                }
                seq += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let rec = d.join("orch.csv");
    let port = sshd.port().to_string();
    let identity = sshd.user_key().display().to_string();
    let known = sshd.known_hosts().display().to_string();
    // Tailed until 20 rows are recorded, then Ctrl-C: the test waits on the recording, not on a
    // duration that assumes how fast SSH and sqlite3 answer.
    let child = Command::new(epi_bin())
        .args([
            "monitor",
            "--host",
            sshd.host(),
            "--user",
            sshd.user(),
            "--ssh-port",
            &port,
            "--identity",
            &identity,
            "--known-hosts",
            &known,
            "--record",
            rec.to_str().unwrap(),
        ])
        .current_dir(d)
        .env("NO_COLOR", "1")
        .env("XDG_CONFIG_HOME", d.join(".no-user-config"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    crate::support::wait_for("20 tailed rows", 120, || {
        (complete_lines(&rec).len() > 20).then_some(())
    });
    send_signal(&child, "INT");
    let o = wait_output(child, 60);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}{}", stdout(&o), stderr(&o));
    let mut r = TraceReader::open(&rec).unwrap();
    let mut n = 0;
    while let Some((_, row)) = r.next_row().unwrap() {
        assert!(
            row.node < 2 && (row.watts == 10.0 || row.watts == 11.0),
            "{row:?}"
        );
        n += 1;
    }
    assert!(n >= 20, "{n} rows tailed");
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("orch.csv.meta.json")).unwrap())
            .unwrap();
    assert_eq!(meta["source"]["source"], "orchestrator");
    assert_eq!(meta["stats"]["samples"].as_u64().unwrap(), n);
}

#[test]
fn the_ssh_flags_reach_the_orchestrator_source() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1: the error names the user, host and port the flags gave.
    let o = epi(
        dir.path(),
        &[
            "monitor",
            "--host",
            "127.0.0.1",
            "--user",
            "epi-test",
            "--ssh-port",
            "1",
            "--duration",
            "1",
        ],
    );
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("epi-test@127.0.0.1:1"),
        "{}",
        stderr(&o)
    );
    // --host with a source that has no such setting is refused by that source.
    let o = epi(
        dir.path(),
        &[
            "monitor",
            "--power",
            "epi-meter",
            "--port",
            "/dev/x",
            "--host",
            "h",
        ],
    );
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).contains("unknown field `host`"),
        "{}",
        stderr(&o)
    );
}

/// `--live` on a terminal (a pseudo-terminal from `script`): the table is redrawn in place with
/// cursor movements, never scrolled, and the final summary follows.
#[test]
fn live_redraws_the_table_in_place() {
    if !have_tool("script") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("t.csv");
    let mut text = String::from("timestamp_ms,node_id,watts_rms,volts_rms,amps_rms,power_factor\n");
    for i in 0..200 {
        for n in 0..3 {
            text.push_str(&format!(
                "{},{n},{},120.0,0.1,0.98\n",
                i * 10,
                5.0 + n as f64
            ));
        }
    }
    std::fs::write(&src, text).unwrap();
    let cmd = format!(
        "{} monitor --power csv --file {} --set pace=recorded --live --every 0.2",
        epi_bin().display(),
        src.display()
    );
    let o = Command::new("script")
        .args(["-q", "-e", "-c", &cmd, "/dev/null"])
        .current_dir(d)
        .env("XDG_CONFIG_HOME", d.join(".no-user-config"))
        .env("TERM", "xterm")
        .output()
        .unwrap();
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{}", stderr(&o));
    // Redraws: cursor up + clear to the end of the screen, several times.
    assert!(out.matches("\x1b[J").count() >= 3, "{out:?}");
    assert!(
        out.contains("cluster") && out.contains("node 2") && out.contains("lost samples 0"),
        "{out}"
    );
    assert!(out.contains("source ended"), "{out}");
}
