//! Property test (proptest) of the RAPL source's counter unwrapping, end to end: a real powercap
//! tree in a temporary directory (the layout the kernel makes), its `energy_uj` rewritten with
//! generated readings — increases, wraps through `max_energy_range_uj` of any size — and the
//! source polled through its public API. The energy it reports never goes back, and each reading
//! adds exactly the counter's increase (across a wrap: what was left to the range plus the new
//! reading). Fails with the shrunk sequence of readings.

use epi_core::PowerSource;
use epi_power::rapl::{Rapl, RaplConfig};
use proptest::prelude::*;
use std::fs;
use std::path::Path;

fn zone(root: &Path, range: u64, first: u64) {
    fs::create_dir_all(root.join("intel-rapl")).expect("control type directory");
    let d = root.join("intel-rapl:0");
    fs::create_dir_all(&d).expect("zone directory");
    fs::write(d.join("name"), "package-0\n").expect("name");
    fs::write(d.join("max_energy_range_uj"), format!("{range}\n")).expect("range");
    fs::write(d.join("energy_uj"), format!("{first}\n")).expect("energy");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn rapl_energy_never_goes_backwards(
        range in 1u64..=u64::MAX / 2,
        first in any::<u64>(),
        steps in prop::collection::vec(any::<u64>(), 1..12),
    ) {
        let modulus = range + 1;
        let first = first % modulus;
        // Each step moves the counter (a reading equal to the last one is no reading).
        let mut readings = Vec::new();
        let mut last = first;
        for s in steps {
            let raw = s % modulus;
            let step = if raw >= last { raw - last } else { range - last + raw };
            if step == 0 {
                continue;
            }
            readings.push((raw, step));
            last = raw;
        }
        let dir = tempfile::tempdir().expect("a temporary directory");
        zone(dir.path(), range, first);
        let mut source = Rapl::new(RaplConfig {
            sysfs_root: dir.path().to_path_buf(),
            interval_ms: 1,
            domains: vec!["package".into()],
            stall_limit_ms: 600_000,
            max_plausible_watts: f64::MAX,
            accuracy_rel: None,
        })
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        rt.block_on(async {
            source.open().await.map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut energy = 0.0f64;
            let mut total: u128 = 0;
            for &(raw, step) in &readings {
                fs::write(dir.path().join("intel-rapl:0/energy_uj"), format!("{raw}\n"))
                    .expect("a reading");
                let batch = source
                    .next_batch()
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?
                    .ok_or_else(|| TestCaseError::fail("the source ended"))?;
                total += u128::from(step);
                let last = batch.samples.last().and_then(|s| s.energy_j);
                for s in &batch.samples {
                    let e = s.energy_j.ok_or_else(|| TestCaseError::fail("a sample without energy"))?;
                    prop_assert!(e >= energy, "energy went back: {energy} → {e} J (reading {raw})");
                    energy = e;
                }
                prop_assert_eq!(last, Some(total as f64 / 1e6), "reading {}", raw);
            }
            source.close().await.map_err(|e| TestCaseError::fail(e.to_string()))?;
            Ok(())
        })?;
    }
}
