//! A measured run from Rust: a power source and an OpenAI-compatible server side by side, the
//! paper's protocol (shortened here), the EPI of the median repetition. The same engine as
//! `epi profile`; everything lands in `runs/<run-id>/` and `epi validate` passes on it.
//!
//! ```text
//! cargo run -p epi-cli --example profile -- rapl http://127.0.0.1:8080
//! cargo run -p epi-cli --example profile -- cpu-model http://127.0.0.1:8080   # an estimate
//! ```

use epi_framework::registry::Registry;
use epi_framework::run::observe::NullObserver;
use epi_framework::run::{new_run_id, RunDir, RunEngine, RunOptions, RunPower, SuiteSpec};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The plugin crates register themselves when linked.
    epi_power::link();
    epi_backends::link();
    epi_suites::link();
    let mut args = std::env::args().skip(1);
    let power_key = args.next().unwrap_or_else(|| "rapl".into());
    let url = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());

    let registry = Registry::builtin();
    let power_config = match power_key.as_str() {
        // cpu-model needs the machine's coefficients: an estimate, labelled as one.
        "cpu-model" => json!({"idle_watts": 10.0, "watts_per_core": 5.0}),
        _ => json!({}),
    };
    let source = registry.power(&power_key, &power_config)?;
    let mut backend = registry.backend("openai", &json!({ "url": url }))?;
    let suite = registry.suite("arc-challenge", &json!({ "limit": 20 }))?;
    let items = suite.items()?;

    let run_id = new_run_id();
    let mut options = RunOptions::profile(&run_id);
    options.warmup.seconds = 10.0;
    options.idle_s = 10.0;
    let engine = RunEngine::new(RunDir::under("runs", &run_id)?, options, &NullObserver);
    let (_ctrl_c, cancel) = tokio::sync::watch::channel(false);
    let outcome = engine
        .execute(
            &mut *backend,
            Some(RunPower {
                key: power_key,
                source,
            }),
            &[SuiteSpec { suite, items }],
            cancel,
        )
        .await?;

    println!(
        "run {}: {}",
        outcome.dir.path.display(),
        outcome.status.as_str()
    );
    if let Some(m) = outcome.median.as_ref().and_then(|r| r.metrics.as_ref()) {
        println!(
            "EPI {:.6} J/token ÷ accuracy ({} tokens), IPJ {:?}, IPW {:?}",
            m.epi, m.token_basis, m.ipj, m.ipw
        );
    }
    Ok(())
}
