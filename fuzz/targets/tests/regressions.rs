//! One test per bug the fuzz targets found, named for the bug, each running the target body on the
//! (minimised) input that showed it. Each was committed before its fix. The same inputs are also
//! under `fuzz/regressions/<target>/`, which `replay.rs` runs.

use epi_fuzz_targets::orchestrator;

/// A row with a negative `wh` was taken as a counter restart, and the continuous energy counter
/// went back (and below zero): the recorded trace was refused by the reader.
#[test]
fn orchestrator_negative_wh_turned_the_energy_counter_back() {
    orchestrator::run(
        b"\x02R,1,1000,0,5,121.3,0.1,0.997,1.0,N,N\nR,2,1010,0,5,121.3,0.1,0.997,-5,N,N\n",
    );
}

/// A `wh` above f64::MAX / 3600 became an infinite energy, written as `inf`, which the reader
/// refuses.
#[test]
fn orchestrator_huge_wh_made_an_infinite_energy() {
    orchestrator::run(b"\x02R,1,1000,0,5,N,N,N,1e305,N,N\n");
}

/// Volts and amps were not checked: a negative or infinite value was written into the recorded
/// trace, which the reader then refused.
#[test]
fn orchestrator_negative_or_infinite_volts_and_amps_reached_the_trace() {
    orchestrator::run(b"\x02R,1,1000,0,5,-121.3,0.1,N,N,N,N\n");
    orchestrator::run(b"\x02R,1,1000,0,5,121.3,1e999,N,N,N,N\n");
}
