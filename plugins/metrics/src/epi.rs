//! `epi`: Energy Per Intelligence = (E / T_out) ÷ A, gross and (when an idle baseline was
//! measured) net, with its interval.

use crate::err;
use epi_core::metrics;
use epi_core::registry::{parse_config, Factory, PluginConfig, PluginRegistration};
use epi_core::scorer::{Metric, ScoreError, ScoreInput, Scorer};
use epi_core::Error;

/// The EPI scorer (no settings).
#[derive(Debug, Default, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EpiScorer {}

impl Scorer for EpiScorer {
    fn score(&self, input: &ScoreInput) -> Result<Vec<Metric>, ScoreError> {
        let a = input.accuracy.ok_or_else(|| {
            err("epi", "EPI needs an accuracy, and this run has none (a prompt file has no answers): EPT is reported instead")
        })?;
        let value = metrics::epi(input.energy_j, input.tokens_out, a).map_err(|e| err("epi", e))?;
        let ci95 = match (input.energy_rel_accuracy, input.accuracy_ci95) {
            (Some(r), Some(ci)) => {
                metrics::epi_interval(input.energy_j, r, input.tokens_out, ci).ok()
            }
            _ => None,
        };
        let mut out = vec![Metric {
            name: "epi".into(),
            value,
            unit: "J/token".into(),
            ci95,
            basis: "gross energy / generated tokens / composite accuracy".into(),
        }];
        if let Some(net) = input.net_energy_j {
            let v = metrics::epi(net.max(0.0), input.tokens_out, a).map_err(|e| err("epi", e))?;
            out.push(Metric {
                name: "epi_net".into(),
                value: v,
                unit: "J/token".into(),
                ci95: None,
                basis: "net energy (gross − idle) / generated tokens / composite accuracy".into(),
            });
        }
        Ok(out)
    }
}

fn build(config: &PluginConfig) -> Result<Box<dyn Scorer>, Error> {
    Ok(Box::new(parse_config::<EpiScorer>("epi", config)?))
}

impl epi_core::settings::PluginSettings for EpiScorer {
    fn example() -> Self {
        EpiScorer {}
    }
}

epi_core::inventory::submit! {
    PluginRegistration {
        key: "epi",
        description: "Energy Per Intelligence: (J / generated token) ÷ composite accuracy",
        factory: Factory::Scorer(build),
        settings: epi_core::settings::Settings::of::<EpiScorer>,
        toml_aliases: &[],
        capabilities: &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epi_and_net_epi() {
        let input = ScoreInput {
            energy_j: 1000.0,
            net_energy_j: Some(600.0),
            tokens_out: 100,
            accuracy: Some(0.5),
            ..Default::default()
        };
        let m = EpiScorer {}.score(&input).unwrap();
        assert_eq!(m[0].value, 20.0);
        assert_eq!(m[1].value, 12.0);
    }

    #[test]
    fn no_accuracy_is_refused_with_a_reason() {
        let input = ScoreInput {
            energy_j: 10.0,
            tokens_out: 10,
            ..Default::default()
        };
        let e = EpiScorer {}.score(&input).unwrap_err().to_string();
        assert!(e.contains("EPI needs an accuracy"), "{e}");
    }
}
