//! The EPI calculator: a power trace and a benchmark result in, an [`EpiResult`] out.
//!
//! ```no_run
//! use epi_run::calculator::{CompositeScorer, EpiCalculator};
//! use epi_core::BenchmarkResult;
//! use epi_trace::PowerTrace;
//!
//! let trace = PowerTrace::from_csv("power_trace_001.csv")?;
//! let bench = BenchmarkResult::from_json("benchmark_001.json")?;
//! let calc = EpiCalculator::new()
//!     .with_scorer(CompositeScorer::with_weights([("mmlu", 0.4), ("arc_challenge", 0.3), ("hellaswag", 0.3)]));
//! let result = calc.calculate(&trace, &bench)?;
//! println!("EPI: {:.4}", result.epi);
//! # Ok::<(), epi_core::Error>(())
//! ```

use epi_core::benchmark::BenchmarkResult;
use epi_core::error::Error;
use epi_core::metrics;
use epi_core::registry::{parse_config, Factory, PluginConfig, PluginRegistration};
use epi_core::result::{
    AccuracySection, EnergySection, Environment, EpiResult, RunMetadata, Uncertainty,
};
use epi_core::scorer::{Metric, ScoreError, ScoreInput, Scorer};
use epi_trace::PowerTrace;
use serde::Deserialize;
use std::collections::BTreeMap;

/// The composite-accuracy scorer: A = Σ wᵢ·accᵢ / Σ wᵢ over the suites run (equal weights by
/// default), with a 95 % interval when the suites carry intervals or item counts.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompositeScorer {
    /// Weights by suite name (`mmlu`, `arc_challenge`, `hellaswag`); `None`: equal.
    #[serde(default)]
    pub weights: Option<BTreeMap<String, f64>>,
}

impl CompositeScorer {
    /// Equal weights.
    pub fn equal() -> Self {
        CompositeScorer { weights: None }
    }

    /// Given weights by suite name.
    pub fn with_weights<K: Into<String>>(weights: impl IntoIterator<Item = (K, f64)>) -> Self {
        CompositeScorer {
            weights: Some(weights.into_iter().map(|(k, v)| (k.into(), v)).collect()),
        }
    }

    /// The weights actually applied to `scores` (by suite name), for the result JSON.
    pub fn applied_weights(&self, scores: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
        scores
            .keys()
            .map(|k| {
                let suite = metrics::suite_of_benchmark_key(k).to_string();
                let w = match &self.weights {
                    None => 1.0 / scores.len() as f64,
                    Some(w) => w
                        .get(&suite)
                        .or_else(|| w.get(k))
                        .copied()
                        .unwrap_or(f64::NAN),
                };
                (suite, w)
            })
            .collect()
    }

    /// A and its interval.
    pub fn composite(&self, input: &ScoreInput) -> Result<(f64, Option<(f64, f64)>), Error> {
        let a = metrics::composite_accuracy(&input.suite_scores, self.weights.as_ref())?;
        let weights = self.applied_weights(&input.suite_scores);
        let mut parts = Vec::new();
        for (k, v) in &input.suite_scores {
            let w = weights[metrics::suite_of_benchmark_key(k)];
            match input.suite_ci95.get(k) {
                Some(ci) => parts.push((w, *v, *ci)),
                None => return Ok((a, None)),
            }
        }
        Ok((a, metrics::composite_interval(&parts)))
    }
}

impl Scorer for CompositeScorer {
    fn score(&self, input: &ScoreInput) -> Result<Vec<Metric>, ScoreError> {
        let (a, ci) = self.composite(input).map_err(|e| ScoreError {
            scorer: "composite".into(),
            message: e.to_string(),
        })?;
        Ok(vec![Metric {
            name: "accuracy_composite".into(),
            value: a,
            unit: String::new(),
            ci95: ci,
            basis: "Σ wᵢ·accᵢ / Σ wᵢ over the suites run".into(),
        }])
    }
}

fn build_composite(config: &PluginConfig) -> Result<Box<dyn Scorer>, Error> {
    Ok(Box::new(parse_config::<CompositeScorer>(
        "composite",
        config,
    )?))
}

impl epi_core::settings::PluginSettings for CompositeScorer {
    fn example() -> Self {
        epi_core::settings::example_from(
            serde_json::json!({"weights": {"mmlu": 0.4, "arc_challenge": 0.3, "hellaswag": 0.3}}),
        )
    }
}

inventory::submit! {
    PluginRegistration {
        key: "composite",
        description: "Composite accuracy: weighted mean of suite accuracies (equal weights by default)",
        factory: Factory::Scorer(build_composite),
        settings: epi_core::settings::Settings::of::<CompositeScorer>,
        toml_aliases: &[],
        capabilities: &[],
    }
}

/// Descriptive fields of a result that the benchmark JSON may not carry, or that the user
/// overrides (`--model`, `--hardware`, ...).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResultLabels {
    /// Model.
    pub model: Option<String>,
    /// Quantization.
    pub quantization: Option<String>,
    /// Surgery.
    pub surgery: Option<String>,
    /// Hardware.
    pub hardware: Option<String>,
    /// Instrument.
    pub instrument: Option<String>,
    /// Measurement point.
    pub measurement_point: Option<String>,
}

/// Computes EPI results.
pub struct EpiCalculator {
    composite: CompositeScorer,
    extra_scorers: Vec<(String, Box<dyn Scorer>)>,
    labels: ResultLabels,
    default_instrument: String,
    default_measurement_point: String,
    energy_rel_accuracy: Option<f64>,
    idle_watts: Option<f64>,
    repetition: u32,
    environment: Environment,
}

impl Default for EpiCalculator {
    fn default() -> Self {
        EpiCalculator::new()
    }
}

impl EpiCalculator {
    /// Equal weights, ±2 % instrument accuracy unless the trace's provenance says otherwise.
    pub fn new() -> Self {
        EpiCalculator {
            composite: CompositeScorer::equal(),
            extra_scorers: Vec::new(),
            labels: ResultLabels::default(),
            default_instrument: "epi-meter v1.0".into(),
            default_measurement_point: "AC inlet per node".into(),
            energy_rel_accuracy: None,
            idle_watts: None,
            repetition: 1,
            environment: Environment::default(),
        }
    }

    /// Uses this composite scorer.
    pub fn with_scorer(mut self, scorer: CompositeScorer) -> Self {
        self.composite = scorer;
        self
    }

    /// Adds a scorer whose metrics go into the result's `metrics` section (e.g. `ept`).
    pub fn with_extra_scorer(mut self, key: impl Into<String>, scorer: Box<dyn Scorer>) -> Self {
        self.extra_scorers.push((key.into(), scorer));
        self
    }

    /// Overrides descriptive fields.
    pub fn with_labels(mut self, labels: ResultLabels) -> Self {
        self.labels = labels;
        self
    }

    /// Defaults for instrument and measurement point (from configuration).
    pub fn with_defaults(
        mut self,
        instrument: impl Into<String>,
        measurement_point: impl Into<String>,
    ) -> Self {
        self.default_instrument = instrument.into();
        self.default_measurement_point = measurement_point.into();
        self
    }

    /// The instrument's relative accuracy (0.02 = ±2 %).
    pub fn with_energy_accuracy(mut self, rel: f64) -> Self {
        self.energy_rel_accuracy = Some(rel);
        self
    }

    /// A measured idle baseline, W: net energy is reported beside gross.
    pub fn with_idle_watts(mut self, watts: f64) -> Self {
        self.idle_watts = Some(watts);
        self
    }

    /// Repetition number.
    pub fn with_repetition(mut self, n: u32) -> Self {
        self.repetition = n;
        self
    }

    /// Environment section.
    pub fn with_environment(mut self, env: Environment) -> Self {
        self.environment = env;
        self
    }

    /// The score input the scorers see for this trace and benchmark.
    pub fn score_input(&self, trace: &PowerTrace, bench: &BenchmarkResult) -> ScoreInput {
        let s = &trace.summary;
        let energy = s.total_joules();
        let mut suite_ci95 = BTreeMap::new();
        for (k, v) in &bench.benchmarks {
            if let Some(ci) = bench.benchmark_ci95.get(k) {
                suite_ci95.insert(k.clone(), *ci);
            } else if let Some(&n) = bench.benchmark_items.get(k) {
                if n > 0 {
                    suite_ci95.insert(k.clone(), wilson95(*v, n));
                }
            }
        }
        ScoreInput {
            energy_j: energy,
            net_energy_j: self
                .idle_watts
                .map(|w| metrics::net_energy(energy, w, s.duration_seconds())),
            energy_rel_accuracy: Some(self.energy_accuracy(trace)),
            tokens_in: bench.tokens_in,
            tokens_out: bench.total_tokens,
            suite_scores: bench.benchmarks.clone(),
            suite_ci95,
            weights: self.composite.weights.clone(),
            accuracy: None,
            accuracy_ci95: None,
            queries: Vec::new(),
        }
    }

    fn energy_accuracy(&self, trace: &PowerTrace) -> f64 {
        self.energy_rel_accuracy
            .or_else(|| trace.meta.as_ref().and_then(|m| m.source.accuracy_rel))
            .unwrap_or(0.02)
    }

    /// EPI of a trace and a benchmark result.
    pub fn calculate(
        &self,
        trace: &PowerTrace,
        bench: &BenchmarkResult,
    ) -> Result<EpiResult, Error> {
        let s = &trace.summary;
        if s.samples < 2 {
            return Err(Error::Invalid(format!(
                "{}: the trace has {} sample(s); energy needs at least two",
                s.path.display(),
                s.samples
            )));
        }
        let mut input = self.score_input(trace, bench);
        let (a, a_ci) = self.composite.composite(&input)?;
        input.accuracy = Some(a);
        input.accuracy_ci95 = a_ci;
        let energy = input.energy_j;
        let jpt = metrics::joules_per_token(energy, bench.total_tokens)?;
        let epi = metrics::epi(energy, bench.total_tokens, a)?;
        let rel = self.energy_accuracy(trace);
        let epi_ci =
            a_ci.and_then(|ci| metrics::epi_interval(energy, rel, bench.total_tokens, ci).ok());

        let mut metrics_map = BTreeMap::new();
        for (key, scorer) in &self.extra_scorers {
            let ms = scorer.score(&input).map_err(|e| Error::Plugin {
                plugin: key.clone(),
                message: e.message,
            })?;
            for m in ms {
                metrics_map.insert(m.name, m.value);
            }
        }

        let meta = trace.meta.as_ref();
        let duration = s.duration_seconds();
        let mut flags = s.flags();
        if bench.duration_seconds > 0.0 && duration > 0.0 {
            let r = duration / bench.duration_seconds;
            if !(0.95..=1.05).contains(&r) {
                flags.push("trace-and-benchmark-durations-differ".into());
            }
        }
        let energy_section = EnergySection {
            total_joules: energy,
            total_tokens: bench.total_tokens,
            avg_watts: s.avg_watts(),
            peak_watts: s.peak_watts,
            duration_seconds: duration,
            kwh: s.kwh(),
            token_basis: bench
                .token_basis
                .clone()
                .unwrap_or_else(|| "generated".into()),
            method: Some(
                meta.map(|m| m.source.method.to_string())
                    .unwrap_or_else(|| "integrated".into()),
            ),
            source: Some(
                meta.map(|m| m.source.source.clone())
                    .unwrap_or_else(|| "trace-csv".into()),
            ),
            sample_rate_hz: s.sample_rate_hz(),
            coverage: Some(s.coverage()),
            samples: Some(s.samples),
            channels: Some(s.channels.len() as u32),
            per_node_joules: s
                .channels
                .iter()
                .map(|(k, c)| (k.to_string(), c.joules))
                .collect(),
            gaps: s.gaps.clone(),
            gap_count: Some(s.gap_count),
            gap_limit_ms: Some(s.gap_limit_ms),
            idle_watts: self.idle_watts,
            net_joules: input.net_energy_j,
            flags,
        };
        let scores = bench.benchmarks.clone();
        let accuracy = AccuracySection {
            scores,
            composite: a,
            weights: self.composite.applied_weights(&bench.benchmarks),
        };
        let mut extra = serde_json::Map::new();
        extra.insert(
            "trace_file".into(),
            serde_json::Value::String(
                s.path
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default(),
            ),
        );
        extra.insert(
            "inference_engine".into(),
            bench.inference_engine.clone().into(),
        );
        extra.insert(
            "inference_engine_version".into(),
            bench.inference_engine_version.clone().into(),
        );
        if let Some(m) = &bench.scoring_mode {
            extra.insert("scoring_mode".into(), m.clone().into());
        }
        let firmware = meta.and_then(|m| {
            m.source
                .details
                .get("firmware")
                .or_else(|| m.source.details.get("fw"))
                .and_then(|v| v.as_str().map(String::from))
        });
        let labels = &self.labels;
        let instrument_default = meta
            .map(|m| ("trace_meta", m.source.instrument.clone()))
            .unwrap_or_else(|| ("configuration", self.default_instrument.clone()));
        let overrides = label_overrides(&[
            ("model", &labels.model, ("benchmark", bench.model.clone())),
            (
                "quantization",
                &labels.quantization,
                ("benchmark", bench.quantization.clone()),
            ),
            (
                "surgery",
                &labels.surgery,
                ("benchmark", bench.surgery.clone()),
            ),
            (
                "hardware",
                &labels.hardware,
                ("benchmark", bench.hardware.clone()),
            ),
            ("instrument", &labels.instrument, instrument_default),
            (
                "measurement_point",
                &labels.measurement_point,
                ("configuration", self.default_measurement_point.clone()),
            ),
        ]);
        if !overrides.is_empty() {
            extra.insert(LABEL_OVERRIDES.into(), serde_json::Value::Object(overrides));
        }
        Ok(EpiResult {
            epi,
            joules_per_token: jpt,
            accuracy_composite: a,
            energy: energy_section,
            accuracy,
            model: labels.model.clone().unwrap_or_else(|| bench.model.clone()),
            quantization: labels.quantization.clone().unwrap_or_else(|| bench.quantization.clone()),
            surgery: labels.surgery.clone().unwrap_or_else(|| bench.surgery.clone()),
            hardware: labels.hardware.clone().unwrap_or_else(|| bench.hardware.clone()),
            instrument: labels
                .instrument
                .clone()
                .or_else(|| meta.map(|m| m.source.instrument.clone()))
                .unwrap_or_else(|| self.default_instrument.clone()),
            measurement_point: labels.measurement_point.clone().unwrap_or_else(|| self.default_measurement_point.clone()),
            environment: self.environment.clone(),
            run_metadata: RunMetadata {
                run_id: uuid::Uuid::new_v4().to_string(),
                timestamp_utc: bench.timestamp_utc.clone(),
                repetition: self.repetition,
                epi_meter_firmware: firmware,
                epi_bench_version: epi_core::VERSION.to_string(),
                extra,
            },
            uncertainty: Some(Uncertainty {
                energy_rel_accuracy: rel,
                accuracy_ci95: a_ci,
                epi_ci95: epi_ci,
                note: match a_ci {
                    Some(_) => "accuracy: 95% interval from the benchmark (bootstrap over items, or Wilson from item counts); energy: instrument accuracy; EPI interval combines both".into(),
                    None => "accuracy interval unknown (the benchmark gives neither intervals nor item counts); EPI interval not computed".into(),
                },
            }),
            metrics: metrics_map,
            surgery_params: serde_json::Map::new(),
            extra: serde_json::Map::new(),
        })
    }
}

/// The `run_metadata` key under which [`EpiCalculator::calculate`] records the labels the caller
/// overrode ([`ResultLabels`]) where they differ from what the inputs say:
/// `{"model": {"from": "benchmark", "was": "qwen3-30b-a3b"}, ...}` (`from` is `benchmark`,
/// `trace_meta` or `configuration`; the value given is the result's own field). `epi validate`
/// accepts a label that differs from the benchmark's only when it is recorded here.
pub const LABEL_OVERRIDES: &str = "label_overrides";

/// The `label_overrides` entries: each label given that differs from its default.
fn label_overrides(
    labels: &[(&str, &Option<String>, (&str, String))],
) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    for (field, given, (from, was)) in labels {
        if let Some(given) = given {
            if given != was {
                out.insert(
                    field.to_string(),
                    serde_json::json!({ "from": from, "was": was }),
                );
            }
        }
    }
    out
}

/// Wilson 95 % score interval of a proportion `p` over `n` items ([`metrics::wilson_ci95`]).
pub fn wilson95(p: f64, n: u64) -> (f64, f64) {
    metrics::wilson_ci95(p, n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_labels_that_differ_from_their_default_are_recorded_as_overrides() {
        let given = Some("my-model".to_string());
        let same = Some("Q4_K_M".to_string());
        let m = label_overrides(&[
            ("model", &given, ("benchmark", "qwen3".into())),
            ("quantization", &same, ("benchmark", "Q4_K_M".into())),
            ("surgery", &None, ("benchmark", "none".into())),
        ]);
        assert_eq!(
            serde_json::Value::Object(m),
            serde_json::json!({"model": {"from": "benchmark", "was": "qwen3"}})
        );
    }
}
