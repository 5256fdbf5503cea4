//! `ipj`: intelligence per joule = A / mean energy per query (not total energy, which would scale
//! with the number of queries).

use crate::err;
use epi_core::metrics;
use epi_core::registry::{parse_config, Factory, PluginConfig, PluginRegistration};
use epi_core::scorer::{Metric, ScoreError, ScoreInput, Scorer};
use epi_core::Error;

/// The IPJ scorer (no settings).
#[derive(Debug, Default, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IpjScorer {}

impl Scorer for IpjScorer {
    fn score(&self, input: &ScoreInput) -> Result<Vec<Metric>, ScoreError> {
        let a = input
            .accuracy
            .ok_or_else(|| err("ipj", "IPJ needs an accuracy, and this run has none"))?;
        if input.queries.is_empty() {
            return Err(err("ipj", "IPJ needs per-query energies: run `epi profile` (a trace and a benchmark JSON have no query windows)"));
        }
        let e: Vec<f64> = input.queries.iter().map(|q| q.energy_j).collect();
        Ok(vec![Metric {
            name: "ipj".into(),
            value: metrics::ipj(a, &e).map_err(|x| err("ipj", x))?,
            unit: "1/J".into(),
            ci95: None,
            basis: "composite accuracy / mean attributed energy per query".into(),
        }])
    }
}

fn build(config: &PluginConfig) -> Result<Box<dyn Scorer>, Error> {
    Ok(Box::new(parse_config::<IpjScorer>("ipj", config)?))
}

impl epi_core::settings::PluginSettings for IpjScorer {
    fn example() -> Self {
        IpjScorer {}
    }
}

epi_core::inventory::submit! {
    PluginRegistration {
        key: "ipj",
        description: "Intelligence per joule: accuracy ÷ mean energy per query",
        factory: Factory::Scorer(build),
        settings: epi_core::settings::Settings::of::<IpjScorer>,
        toml_aliases: &[],
        capabilities: &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use epi_core::scorer::QueryEnergy;

    #[test]
    fn mean_per_query() {
        let q = vec![
            QueryEnergy {
                energy_j: 2.0,
                latency_s: 1.0,
            },
            QueryEnergy {
                energy_j: 6.0,
                latency_s: 1.0,
            },
        ];
        let m = IpjScorer {}
            .score(&ScoreInput {
                accuracy: Some(0.8),
                queries: q,
                ..Default::default()
            })
            .unwrap();
        assert!((m[0].value - 0.2).abs() < 1e-15);
        assert!(IpjScorer {}
            .score(&ScoreInput {
                accuracy: Some(0.8),
                ..Default::default()
            })
            .is_err());
    }
}
