//! Calculate EPI from a power trace and benchmark results with the library API, the way the
//! spec's Python quick start does.
//!
//! ```text
//! cargo run -p epi-framework --example basic_epi -- \
//!     examples/data/submission/power_trace_001.csv examples/data/submission/benchmark_001.json
//! ```

use epi_framework::calculator::{CompositeScorer, EpiCalculator};
use epi_framework::{BenchmarkResult, PowerTrace};

fn main() -> Result<(), epi_framework::Error> {
    let mut args = std::env::args().skip(1);
    let trace_path = args
        .next()
        .unwrap_or_else(|| "examples/data/submission/power_trace_001.csv".into());
    let bench_path = args
        .next()
        .unwrap_or_else(|| "examples/data/submission/benchmark_001.json".into());

    // Load power trace from epi-meter CSV (streamed: memory does not grow with the file).
    let trace = PowerTrace::from_csv(&trace_path)?;
    println!("Duration: {:.1} s", trace.duration_seconds());
    println!("Total energy: {:.2} J", trace.total_joules());
    println!("Avg power: {:.2} W", trace.avg_watts());
    println!("Peak power: {:.2} W", trace.peak_watts());
    println!("Samples: {}", trace.num_samples());
    println!("Channels: {}", trace.num_channels());
    for (node, joules) in trace.per_node_joules() {
        println!("  Node {node}: {joules:.2} J");
    }

    // Load benchmark results.
    let bench = BenchmarkResult::from_json(&bench_path)?;

    // Calculate EPI with custom weights (default: equal).
    let calc = EpiCalculator::new().with_scorer(CompositeScorer::with_weights([
        ("mmlu", 0.4),
        ("arc_challenge", 0.3),
        ("hellaswag", 0.3),
    ]));
    let result = calc.calculate(&trace, &bench)?;
    println!("EPI: {:.4}", result.epi);
    println!("J/Token: {:.4}", result.joules_per_token);
    println!("Accuracy: {:.4}", result.accuracy_composite);
    println!("Total Energy: {:.2} J", result.total_joules());
    println!("Total Tokens: {}", result.total_tokens());
    Ok(())
}
