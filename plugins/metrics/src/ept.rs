//! `ept`: energy per token, three normalisations of the same energy (EPT_in, EPT_out,
//! EPT_total). They are not a prefill/decode split and do not add up.

use crate::err;
use epi_core::metrics;
use epi_core::registry::{parse_config, Factory, PluginConfig, PluginRegistration};
use epi_core::scorer::{Metric, ScoreError, ScoreInput, Scorer};
use epi_core::Error;

/// The EPT scorer (no settings).
#[derive(Debug, Default, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EptScorer {}

impl Scorer for EptScorer {
    fn score(&self, input: &ScoreInput) -> Result<Vec<Metric>, ScoreError> {
        let e = input.energy_j;
        let mut out = vec![Metric {
            name: "ept_out".into(),
            value: metrics::ept_out(e, input.tokens_out).map_err(|x| err("ept", x))?,
            unit: "J/token".into(),
            ci95: None,
            basis: "gross energy / generated tokens".into(),
        }];
        if let Some(tin) = input.tokens_in {
            out.push(Metric {
                name: "ept_in".into(),
                value: metrics::ept_in(e, tin).map_err(|x| err("ept", x))?,
                unit: "J/token".into(),
                ci95: None,
                basis: "gross energy / prompt tokens (a normalisation, not a prefill share)".into(),
            });
            out.push(Metric {
                name: "ept_total".into(),
                value: metrics::ept_total(e, tin, input.tokens_out).map_err(|x| err("ept", x))?,
                unit: "J/token".into(),
                ci95: None,
                basis: "gross energy / (prompt + generated tokens)".into(),
            });
        }
        Ok(out)
    }
}

fn build(config: &PluginConfig) -> Result<Box<dyn Scorer>, Error> {
    Ok(Box::new(parse_config::<EptScorer>("ept", config)?))
}

impl epi_core::settings::PluginSettings for EptScorer {
    fn example() -> Self {
        EptScorer {}
    }
}

epi_core::inventory::submit! {
    PluginRegistration {
        key: "ept",
        description: "Energy per token: EPT_in, EPT_out, EPT_total (normalisations of one energy)",
        factory: Factory::Scorer(build),
        settings: epi_core::settings::Settings::of::<EptScorer>,
        toml_aliases: &[],
        capabilities: &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_normalisations() {
        let m = EptScorer {}
            .score(&ScoreInput {
                energy_j: 120.0,
                tokens_in: Some(40),
                tokens_out: 20,
                ..Default::default()
            })
            .unwrap();
        let get = |n: &str| m.iter().find(|x| x.name == n).unwrap().value;
        assert_eq!(get("ept_out"), 6.0);
        assert_eq!(get("ept_in"), 3.0);
        assert_eq!(get("ept_total"), 2.0);
        let m = EptScorer {}
            .score(&ScoreInput {
                energy_j: 120.0,
                tokens_out: 20,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(m.len(), 1);
    }
}
