//! What the targets share: scratch files, number comparison, and the check that a stream of
//! power samples survives the trace recorder and reader unchanged.

use epi_framework::sample::PowerSample;
use epi_framework::trace::{TraceReader, TraceWriter};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Prints what a target made of its input when `EPI_FUZZ_VERBOSE` is set (for looking into an
/// input by hand: `EPI_FUZZ_VERBOSE=1 cargo test -p epi-fuzz-targets --test replay -- --nocapture`).
pub fn verbose(what: impl FnOnce() -> String) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("EPI_FUZZ_VERBOSE").is_some()) {
        eprintln!("  {}", what());
    }
}

/// Where scratch files go: `/dev/shm` where there is one (the recorder's `sync_all` costs nothing
/// there, which makes the targets that record traces many times faster), else the temporary
/// directory.
fn scratch_dir() -> &'static PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let shm = PathBuf::from("/dev/shm");
        let probe = shm.join(format!("epi-fuzz-probe-{}", std::process::id()));
        if std::fs::write(&probe, b"").is_ok() {
            let _ = std::fs::remove_file(&probe);
            shm
        } else {
            std::env::temp_dir()
        }
    })
}

/// A scratch file path for `what`, private to this process and thread (the caller removes it).
pub fn scratch(what: &str) -> PathBuf {
    let thread = format!("{:?}", std::thread::current().id())
        .chars()
        .filter(char::is_ascii_digit)
        .collect::<String>();
    scratch_dir().join(format!("epi-fuzz-{}-{thread}-{what}", std::process::id()))
}

/// A scratch file that is removed when dropped (also when the check fails and unwinds).
pub struct ScratchFile(pub PathBuf);

impl ScratchFile {
    /// Writes `bytes` to the scratch file for `what`.
    pub fn with(what: &str, bytes: &[u8]) -> ScratchFile {
        let p = scratch(what);
        std::fs::write(&p, bytes).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        ScratchFile(p)
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let mut meta = self.0.as_os_str().to_os_string();
        meta.push(".meta.json");
        let _ = std::fs::remove_file(meta);
    }
}

/// Whether `a` and `b` agree to `rel` relative to the larger magnitude (or `abs` absolutely);
/// infinities must match, and NaN matches only NaN.
pub fn close(a: f64, b: f64, rel: f64, abs: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a.is_infinite() || b.is_infinite() {
        // A sum at the edge of the range may overflow in one order of addition and not in another.
        let edge = f64::MAX * (1.0 - rel);
        return a == b || (a.abs() >= edge && b.abs() >= edge && a.signum() == b.signum());
    }
    (a - b).abs() <= abs.max(rel * a.abs().max(b.abs()))
}

/// What a source promises of the order of its samples, per channel.
#[derive(Debug, Clone, Copy)]
pub struct Order {
    /// Timestamps never decrease.
    pub time: bool,
    /// The energy counter never decreases (between consecutive samples that carry one).
    pub counter: bool,
}

/// Writes `samples` with [`TraceWriter`] (as `epi monitor --record` does), reads the file back
/// with [`TraceReader`], and panics unless every row reads back with the same values; then checks
/// what the trace integrator also requires of a recorded trace, as far as `order` says the source
/// promises it. `what` names the target in messages.
pub fn assert_recorded_trace_reads_back(what: &str, samples: &[PowerSample], order: Order) {
    let file = ScratchFile(scratch(&format!("{what}-recorded.csv")));
    let mut w = TraceWriter::create(&file.0, Duration::from_secs(3600))
        .unwrap_or_else(|e| panic!("{what}: creating the trace: {e}"));
    w.write(samples)
        .unwrap_or_else(|e| panic!("{what}: writing the trace: {e}"));
    w.finish()
        .unwrap_or_else(|e| panic!("{what}: finishing the trace: {e}"));
    let reader =
        TraceReader::open(&file.0).unwrap_or_else(|e| panic!("{what}: reopening the trace: {e}"));
    let mut n = 0usize;
    let mut last: BTreeMap<u32, (f64, Option<f64>)> = BTreeMap::new();
    for (row, s) in reader.zip(samples) {
        let (line, r) = row.unwrap_or_else(|e| {
            panic!("{what}: a recorded sample does not read back: {e}\nsample: {s:?}")
        });
        let same = |a: f64, b: f64| a == b || (a.is_nan() && b.is_nan());
        let same_opt = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => same(a, b),
            (None, None) => true,
            _ => false,
        };
        assert!(
            same(r.t_ms, s.t_ms)
                && r.node == s.channel
                && same(r.watts, s.watts)
                && same_opt(r.volts, s.volts)
                && same_opt(r.amps, s.amps)
                && same_opt(r.power_factor, s.power_factor)
                && same_opt(r.source_t_ms, s.source_t_ms)
                && same_opt(r.energy_j, s.energy_j)
                && r.utc_ms == (s.host_utc_ms != 0).then_some(s.host_utc_ms),
            "{what}: line {line} reads back as {r:?}, written from {s:?}"
        );
        // The integrator's rules, row by row: timestamps never decrease within a channel, nor
        // its energy counter between two consecutive rows that both carry it.
        if let Some((t, e)) = last.get(&s.channel) {
            assert!(
                !order.time || s.t_ms >= *t,
                "{what}: node {} goes back in time, {t} → {} ms (line {line}): the trace would be refused",
                s.channel,
                s.t_ms
            );
            if let (Some(e0), Some(e1), true) = (*e, s.energy_j, order.counter) {
                assert!(
                    e1 >= e0,
                    "{what}: node {}'s energy counter goes down, {e0} → {e1} J (line {line}): the trace would be refused",
                    s.channel
                );
            }
        }
        last.insert(s.channel, (s.t_ms, s.energy_j));
        n += 1;
    }
    assert_eq!(n, samples.len(), "{what}: rows read back");
}
