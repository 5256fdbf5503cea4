//! Benchmark: the CPU cost of `epi monitor --record` on a 50 Hz, 4-channel epi-meter stream.
//!
//! It starts the board emulator (`tests/tools/epi_meter_emulator.py`, no faults) on a socat
//! pseudo-terminal pair, runs `epi monitor --power epi-meter --port … --record …` against it, and
//! reads the monitor's CPU time from `/proc/<pid>` (the sum of its threads' on-CPU time from
//! `schedstat`, and `utime + stime` from `stat`). The figure is CPU seconds per wall second, i.e.
//! the share of one core; the target is under 1 %.
//!
//! ```text
//! cargo run -p epi-cli --bin bench_monitor -- [--quick] [--seconds N] [--rate HZ] [--channels N] [--epi PATH]
//! ```
//! `--quick` measures 8 s after a 1 s warm-up; the default measures 60 s after 3 s. The `epi`
//! binary measured is the one next to this benchmark (same build profile) unless `--epi` says.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

struct Options {
    warmup_s: f64,
    measure_s: f64,
    rate: f64,
    channels: u32,
    epi: PathBuf,
    emulator: PathBuf,
}

fn usage() -> ! {
    eprintln!("usage: bench_monitor [--quick] [--seconds N] [--rate HZ] [--channels N] [--epi PATH] [--emulator PATH]");
    std::process::exit(2)
}

fn options() -> Options {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut o = Options {
        warmup_s: 3.0,
        measure_s: 60.0,
        rate: 50.0,
        channels: 4,
        epi: exe.with_file_name("epi"),
        emulator: Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/tools/epi_meter_emulator.py"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--quick" => {
                o.warmup_s = 1.0;
                o.measure_s = 8.0;
            }
            "--seconds" => o.measure_s = val().parse().unwrap_or_else(|_| usage()),
            "--rate" => o.rate = val().parse().unwrap_or_else(|_| usage()),
            "--channels" => o.channels = val().parse().unwrap_or_else(|_| usage()),
            "--epi" => o.epi = PathBuf::from(val()),
            "--emulator" => o.emulator = PathBuf::from(val()),
            _ => usage(),
        }
    }
    o
}

/// CPU time of a process so far: (schedstat sum over its threads, utime + stime), seconds.
fn cpu_seconds(pid: u32) -> Option<(f64, f64)> {
    let mut sched_ns = 0u64;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
            sched_ns += s
                .split_whitespace()
                .next()
                .and_then(|x| x.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let hz = clock_ticks_per_second();
    Some((sched_ns as f64 / 1e9, ticks as f64 / hz))
}

/// `getconf CLK_TCK` (100 on Linux unless configured otherwise).
fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

struct Killed(Option<Child>);
impl Drop for Killed {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            std::thread::sleep(Duration::from_millis(200));
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn main() -> ExitCode {
    let o = options();
    if !o.epi.is_file() {
        eprintln!(
            "bench_monitor: {} not found: build it first (cargo build -p epi-cli) or pass --epi",
            o.epi.display()
        );
        return ExitCode::from(2);
    }
    let dir = std::env::temp_dir().join(format!("epi-bench-monitor-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("bench_monitor: {}: {e}", dir.display());
        return ExitCode::from(2);
    }
    let total_s = o.warmup_s + o.measure_s;
    let emu = Command::new("python3")
        .arg(&o.emulator)
        .args([
            "--dir",
            dir.join("link").to_str().unwrap_or_default(),
            "--faults",
            "none",
        ])
        .args([
            "--rate",
            &o.rate.to_string(),
            "--channels",
            &o.channels.to_string(),
        ])
        .args([
            "--duration",
            &(total_s + 10.0).to_string(),
            "--linger-s",
            "2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let mut emu = match emu {
        Ok(c) => Killed(Some(c)),
        Err(e) => {
            eprintln!(
                "bench_monitor: cannot start the emulator (python3 {}): {e}",
                o.emulator.display()
            );
            return ExitCode::from(2);
        }
    };
    let ready = emu.0.as_mut().and_then(|c| c.stdout.take()).map(|out| {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        line.trim() == "READY"
    });
    if ready != Some(true) {
        eprintln!("bench_monitor: the emulator did not start (is socat installed?)");
        return ExitCode::from(2);
    }
    let rec = dir.join("rec.csv");
    let mon = Command::new(&o.epi)
        .args([
            "monitor",
            "--power",
            "epi-meter",
            "--port",
            dir.join("link/host").to_str().unwrap_or_default(),
        ])
        .args([
            "--record",
            rec.to_str().unwrap_or_default(),
            "--duration",
            &(total_s + 1.0).to_string(),
        ])
        .current_dir(&dir)
        .env("XDG_CONFIG_HOME", dir.join(".no-config"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let mut mon = match mon {
        Ok(c) => Killed(Some(c)),
        Err(e) => {
            eprintln!("bench_monitor: cannot run {}: {e}", o.epi.display());
            return ExitCode::from(2);
        }
    };
    let pid = mon.0.as_ref().map(|c| c.id()).unwrap_or(0);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(o.warmup_s));
    let (Some(c0), w0) = (cpu_seconds(pid), Instant::now()) else {
        eprintln!("bench_monitor: epi monitor exited early; run it by hand to see why");
        return ExitCode::from(1);
    };
    let rows0 = line_count(&rec);
    std::thread::sleep(Duration::from_secs_f64(o.measure_s));
    let (Some(c1), w1) = (cpu_seconds(pid), Instant::now()) else {
        eprintln!("bench_monitor: epi monitor exited during the measurement");
        return ExitCode::from(1);
    };
    let rows1 = line_count(&rec);
    // Whole run, start-up included: the last reading before it exits.
    let mut last = c1;
    let mut whole_wall = started.elapsed().as_secs_f64();
    let status = loop {
        if let Some(c) = mon.0.as_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                mon.0 = None;
                break Some(st);
            }
        }
        if let Some(c) = cpu_seconds(pid) {
            last = c;
            whole_wall = started.elapsed().as_secs_f64();
        }
        if started.elapsed().as_secs_f64() > total_s + 20.0 {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(emu);
    let wall = (w1 - w0).as_secs_f64();
    let sched = (c1.0 - c0.0) / wall;
    let ticks = (c1.1 - c0.1) / wall;
    let rows_per_s = (rows1.saturating_sub(rows0)) as f64 / wall;
    let expected = o.rate * o.channels as f64;
    println!(
        "bench_monitor: epi monitor --record, {} Hz × {} channels ({})",
        o.rate,
        o.channels,
        o.epi.display()
    );
    println!("  steady state: {wall:.1} s wall, {rows_per_s:.1} rows/s recorded (stream: {expected:.0} samples/s)");
    println!("  CPU of the epi process: {:.3} % of one core (schedstat), {:.3} % (utime+stime, 1/CLK_TCK resolution)", sched * 100.0, ticks * 100.0);
    println!(
        "  whole run incl. start-up: {:.3} % of one core over {whole_wall:.1} s ({:.3} s CPU)",
        last.0 / whole_wall * 100.0,
        last.0
    );
    let ok = sched < 0.01 && rows_per_s > expected * 0.9;
    println!(
        "  target < 1 % of one core: {}",
        if ok { "met" } else { "NOT met" }
    );
    println!(
        "{{\"bench\":\"monitor\",\"rate_hz\":{},\"channels\":{},\"seconds\":{wall:.3},\"cpu_share_one_core\":{sched:.6},\"cpu_share_ticks\":{ticks:.6},\"rows_per_s\":{rows_per_s:.2},\"exit\":{}}}",
        o.rate,
        o.channels,
        status.and_then(|s| s.code()).map(|c| c.to_string()).unwrap_or_else(|| "null".into())
    );
    let _ = std::fs::remove_dir_all(&dir);
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn line_count(p: &Path) -> u64 {
    std::fs::read(p)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count() as u64)
        .unwrap_or(0)
}
