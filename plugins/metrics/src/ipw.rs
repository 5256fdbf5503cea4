//! `ipw`: intelligence per watt = A / mean power per query, a query's power being its attributed
//! energy over its latency.

use crate::err;
use epi_core::metrics;
use epi_core::registry::{parse_config, Factory, PluginConfig, PluginRegistration};
use epi_core::scorer::{Metric, ScoreError, ScoreInput, Scorer};
use epi_core::Error;

/// The IPW scorer (no settings).
#[derive(Debug, Default, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IpwScorer {}

impl Scorer for IpwScorer {
    fn score(&self, input: &ScoreInput) -> Result<Vec<Metric>, ScoreError> {
        let a = input
            .accuracy
            .ok_or_else(|| err("ipw", "IPW needs an accuracy, and this run has none"))?;
        if input.queries.is_empty() {
            return Err(err(
                "ipw",
                "IPW needs per-query energies and latencies: run `epi profile`",
            ));
        }
        let q: Vec<(f64, f64)> = input
            .queries
            .iter()
            .map(|q| (q.energy_j, q.latency_s))
            .collect();
        Ok(vec![Metric {
            name: "ipw".into(),
            value: metrics::ipw(a, &q).map_err(|x| err("ipw", x))?,
            unit: "1/W".into(),
            ci95: None,
            basis: "composite accuracy / mean (attributed energy / latency) per query".into(),
        }])
    }
}

fn build(config: &PluginConfig) -> Result<Box<dyn Scorer>, Error> {
    Ok(Box::new(parse_config::<IpwScorer>("ipw", config)?))
}

impl epi_core::settings::PluginSettings for IpwScorer {
    fn example() -> Self {
        IpwScorer {}
    }
}

epi_core::inventory::submit! {
    PluginRegistration {
        key: "ipw",
        description: "Intelligence per watt: accuracy ÷ mean power per query",
        factory: Factory::Scorer(build),
        settings: epi_core::settings::Settings::of::<IpwScorer>,
        toml_aliases: &[],
        capabilities: &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use epi_core::scorer::QueryEnergy;

    #[test]
    fn mean_power_per_query() {
        let q = vec![
            QueryEnergy {
                energy_j: 10.0,
                latency_s: 2.0,
            },
            QueryEnergy {
                energy_j: 30.0,
                latency_s: 2.0,
            },
        ];
        let m = IpwScorer {}
            .score(&ScoreInput {
                accuracy: Some(0.5),
                queries: q,
                ..Default::default()
            })
            .unwrap();
        assert!((m[0].value - 0.05).abs() < 1e-15);
    }
}
