//! One test per bug the fuzz targets found, named for the bug, each running the target body on the
//! (minimised) input that showed it. Each was committed before its fix. The same inputs are also
//! under `fuzz/regressions/<target>/`, which `replay.rs` runs.

use epi_fuzz_targets::{dllama_output, orchestrator, trace_csv};

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

/// A trace with an energy counter column and one node: a rising counter, the rows `before` at the
/// end of the first 4 KiB block, then (after blank lines) the rows `after` in the second block, as
/// the trace_csv target's input (an options byte, then the file).
fn counter_trace(before: &[Option<f64>], after: &[Option<f64>]) -> Vec<u8> {
    let mut s = String::from(
        "timestamp_ms,node_id,watts_rms,volts_rms,amps_rms,power_factor,utc_ms,source_t_ms,energy_j\n",
    );
    let row = |t: usize, e: Option<f64>| {
        format!(
            "{},0,10,230.0,0.05,0.99,,,{}\n",
            t * 100,
            e.map(|e| e.to_string()).unwrap_or_default()
        )
    };
    let mut t = 0;
    // Rows of the first block: the counter rising, then `before`.
    while s.len() < 4096 - 200 {
        s += &row(t, Some(100.0 + t as f64));
        t += 1;
    }
    for &e in before {
        s += &row(t, e);
        t += 1;
    }
    while s.len() <= 4096 {
        s += "\n";
    }
    for &e in after {
        s += &row(t, e);
        t += 1;
    }
    let mut input = vec![0u8];
    input.extend_from_slice(s.as_bytes());
    input
}

/// The check that a node's energy counter never goes down depended on where the 4 MiB blocks of
/// the parallel reader fell: a decrease at the start of a block was let through when a later row
/// of that block lacked a counter, and a decrease after a row without a counter was refused only
/// when a block boundary lay between them. Every reading of a file must give the same answer.
#[test]
fn trace_energy_counter_check_depended_on_block_boundaries() {
    // Each input with each second read setting (options bits 4–5; 0x10: two threads, 4 KiB
    // blocks).
    for setting in [0x00, 0x10, 0x20, 0x30] {
        // A decrease on the first row of a block, a row without a counter later in it.
        let mut input = counter_trace(&[Some(500.0)], &[Some(50.0), None]);
        input[0] = setting;
        trace_csv::run(&input);
        // A row without a counter, then a decrease in the next block.
        let mut input = counter_trace(&[None], &[Some(200.0), Some(150.0)]);
        input[0] = setting;
        trace_csv::run(&input);
    }
}

/// The windowed trace reader (`summarize_window`, used when a benchmark names its energy window)
/// sorted each node's rows instead of refusing a timestamp that goes back, and did not check the
/// energy counter: it accepted traces the full reader refuses.
#[test]
fn trace_window_reader_accepted_what_the_full_reader_refuses() {
    trace_csv::run(
        b"\x00timestamp_ms,node_id,watts_rms,volts_rms,amps_rms,power_factor\n\
          0,0,5,230,0.02,1\n100,0,6,230,0.02,1\n50,0,7,230,0.02,1\n",
    );
    trace_csv::run(
        b"\x00timestamp_ms,node_id,watts_rms,volts_rms,amps_rms,power_factor,utc_ms,source_t_ms,energy_j\n\
          0,0,5,230,0.02,1,,,10\n100,0,6,230,0.02,1,,,9\n",
    );
}

/// A v0.11 log whose `Generated tokens:` line came before its first token line: the token region
/// ran backwards and slicing it panicked (found by the `dllama_output` fuzzer).
#[test]
fn dllama_output_summary_before_the_token_lines_panicked() {
    dllama_output::run("Generated tokens: 0\n🔶 G 1 ms I 1 ms T 1 ms S 0 kB R 0 kB x\n".as_bytes());
}

/// Prompt-evaluation lines whose token counts add up past 2^64 overflowed the sum (a panic in
/// debug builds, a wrong count in release). Found by reading the parser while writing its target.
#[test]
fn dllama_output_evaluation_token_counts_overflowed() {
    dllama_output::run(
        "🔷️ E  146 ms S     0 kB R     0 kB (18446744073709551615 tokens)\n\
         🔷️ E  146 ms S     0 kB R     0 kB (2 tokens)\n\
         🔶 P   44 ms S     3 kB R     4 kB  Hello\n\
         \nEvaluation\n   nBatches: 32\n    nTokens: 1\n   tokens/s: 82.05 (12.19 ms/tok)\n\
         Prediction\n    nTokens: 1\n   tokens/s: 20.43 (48.95 ms/tok)\n"
            .as_bytes(),
    );
}
