//! Every metric epi-bench reports, defined once (`measurement-methodology.md` §4, §7, §8).
//!
//! Other modules and plugins call these functions; none re-derives a formula.

use crate::error::Error;
use std::collections::BTreeMap;

/// Joules per token: `energy_j / tokens`.
pub fn joules_per_token(energy_j: f64, tokens: u64) -> Result<f64, Error> {
    if tokens == 0 {
        return Err(Error::Invalid("cannot divide energy by zero tokens".into()));
    }
    check_energy(energy_j)?;
    Ok(energy_j / tokens as f64)
}

/// EPI = (E / T_out) / A, with A the composite accuracy in (0, 1].
pub fn epi(energy_j: f64, tokens_out: u64, accuracy: f64) -> Result<f64, Error> {
    check_accuracy(accuracy)?;
    Ok(joules_per_token(energy_j, tokens_out)? / accuracy)
}

/// EPT_in = E / T_in (a normalisation, not a prefill share).
pub fn ept_in(energy_j: f64, tokens_in: u64) -> Result<f64, Error> {
    joules_per_token(energy_j, tokens_in)
}

/// EPT_out = E / T_out.
pub fn ept_out(energy_j: f64, tokens_out: u64) -> Result<f64, Error> {
    joules_per_token(energy_j, tokens_out)
}

/// EPT_total = E / (T_in + T_out).
pub fn ept_total(energy_j: f64, tokens_in: u64, tokens_out: u64) -> Result<f64, Error> {
    joules_per_token(energy_j, tokens_in.saturating_add(tokens_out))
}

/// IPJ = A / (mean energy per query, J).
pub fn ipj(accuracy: f64, query_energies_j: &[f64]) -> Result<f64, Error> {
    check_accuracy_allow_zero(accuracy)?;
    let mean = mean(query_energies_j).ok_or_else(|| {
        Error::Invalid("IPJ needs at least one query with attributed energy".into())
    })?;
    if mean <= 0.0 {
        return Err(Error::Invalid(format!(
            "IPJ: mean energy per query is {mean} J, expected > 0"
        )));
    }
    Ok(accuracy / mean)
}

/// A query's power: its attributed energy divided by its latency.
pub fn query_watts(energy_j: f64, latency_s: f64) -> Result<f64, Error> {
    if latency_s <= 0.0 || !latency_s.is_finite() {
        return Err(Error::Invalid(format!(
            "query latency {latency_s} s, expected > 0"
        )));
    }
    Ok(energy_j / latency_s)
}

/// IPW = A / (mean power per query, W), a query's power being [`query_watts`].
pub fn ipw(accuracy: f64, queries: &[(f64, f64)]) -> Result<f64, Error> {
    check_accuracy_allow_zero(accuracy)?;
    let watts: Vec<f64> = queries
        .iter()
        .map(|&(e, l)| query_watts(e, l))
        .collect::<Result<_, _>>()?;
    let mean = mean(&watts).ok_or_else(|| {
        Error::Invalid("IPW needs at least one query with attributed energy".into())
    })?;
    if mean <= 0.0 {
        return Err(Error::Invalid(format!(
            "IPW: mean power per query is {mean} W, expected > 0"
        )));
    }
    Ok(accuracy / mean)
}

/// Net energy: gross − idle_watts × duration.
pub fn net_energy(gross_j: f64, idle_watts: f64, duration_s: f64) -> f64 {
    gross_j - idle_watts * duration_s
}

/// Suite name of a benchmark key: `mmlu_5shot` → `mmlu`, `arc_challenge_25shot` →
/// `arc_challenge`. Keys without a `_<n>shot` suffix are returned unchanged.
pub fn suite_of_benchmark_key(key: &str) -> &str {
    if let Some(pos) = key.rfind('_') {
        let tail = &key[pos + 1..];
        if let Some(n) = tail.strip_suffix("shot") {
            if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
                return &key[..pos];
            }
        }
    }
    key
}

/// A = Σ wᵢ·accᵢ / Σ wᵢ over the suites run.
///
/// `scores` maps benchmark keys (`mmlu_5shot`) or suite names (`mmlu`) to accuracies in [0, 1];
/// `weights` maps suite names to weights. With no weights every suite weighs the same. A suite
/// that was run but has no weight is an error; weights for suites not run are ignored.
pub fn composite_accuracy(
    scores: &BTreeMap<String, f64>,
    weights: Option<&BTreeMap<String, f64>>,
) -> Result<f64, Error> {
    if scores.is_empty() {
        return Err(Error::Invalid("no benchmark scores to combine".into()));
    }
    let mut num = 0.0;
    let mut den = 0.0;
    for (key, &acc) in scores {
        if !(0.0..=1.0).contains(&acc) {
            return Err(Error::Invalid(format!(
                "score {key} = {acc}, expected a value in [0, 1]"
            )));
        }
        let suite = suite_of_benchmark_key(key);
        let w = match weights {
            None => 1.0,
            Some(w) => *w
                .get(suite)
                .or_else(|| w.get(key.as_str()))
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "no weight for suite `{suite}` (weights given: {})",
                        w.keys().cloned().collect::<Vec<_>>().join(", ")
                    ))
                })?,
        };
        if !(w >= 0.0 && w.is_finite()) {
            return Err(Error::Invalid(format!(
                "weight for `{suite}` is {w}, expected ≥ 0"
            )));
        }
        num += w * acc;
        den += w;
    }
    if den <= 0.0 {
        return Err(Error::Invalid(
            "the weights of the suites run sum to zero".into(),
        ));
    }
    Ok(num / den)
}

/// The interval of EPI given the energy's relative accuracy (e.g. 0.02) and the accuracy's
/// interval: EPI ∝ E / A, so the low end is E(1−r)/A_high and the high end E(1+r)/A_low.
pub fn epi_interval(
    energy_j: f64,
    energy_rel: f64,
    tokens_out: u64,
    accuracy_ci: (f64, f64),
) -> Result<(f64, f64), Error> {
    let jpt = joules_per_token(energy_j, tokens_out)?;
    let (a_lo, a_hi) = accuracy_ci;
    if a_hi.is_nan() || a_lo.is_nan() || a_hi <= 0.0 || a_lo <= 0.0 {
        return Err(Error::Invalid(format!(
            "accuracy interval ({a_lo}, {a_hi}) reaches zero: EPI is unbounded"
        )));
    }
    Ok((
        jpt * (1.0 - energy_rel) / a_hi,
        jpt * (1.0 + energy_rel) / a_lo,
    ))
}

/// Wilson 95 % score interval of a proportion `p` observed over `n` items (`n` may be an effective
/// size, such as Kish's for a weighted mean). Unlike a bootstrap or normal interval it does not
/// collapse at 0 or 1: 0 correct of 6 gives [0, 0.39], not [0, 0].
pub fn wilson_ci95(p: f64, n: f64) -> (f64, f64) {
    if !(n > 0.0 && p.is_finite()) {
        return (0.0, 1.0);
    }
    let z = 1.959_963_984_540_054_f64;
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * ((p * (1.0 - p) / n + z * z / (4.0 * n * n)).max(0.0).sqrt()) / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Kish's effective sample size of weights `w`: (Σw)² / Σw² (n for equal weights).
pub fn effective_n(w: &[f64]) -> f64 {
    let s: f64 = w.iter().sum();
    let s2: f64 = w.iter().map(|x| x * x).sum();
    if s2 > 0.0 {
        s * s / s2
    } else {
        0.0
    }
}

/// 95 % percentile-bootstrap interval of the mean of `values` (`iterations` resamples, a fixed
/// `seed` so the same data gives the same interval).
pub fn bootstrap_mean_ci95(values: &[f64], iterations: usize, seed: u64) -> Option<(f64, f64)> {
    let n = values.len();
    if n == 0 || iterations == 0 {
        return None;
    }
    let mut rng = SplitMix64(seed);
    let mut means = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let mut sum = 0.0;
        for _ in 0..n {
            sum += values[(rng.next() % n as u64) as usize];
        }
        means.push(sum / n as f64);
    }
    means.sort_by(|a, b| a.total_cmp(b));
    let lo = means[((iterations as f64) * 0.025).floor() as usize];
    let hi = means[(((iterations as f64) * 0.975).ceil() as usize).min(iterations - 1)];
    Some((lo, hi))
}

/// Composite accuracy interval from per-suite intervals, combined with the same weights, by
/// treating the suites as independent (normal approximation of each half-width).
pub fn composite_interval(
    parts: &[(f64, f64, (f64, f64))], // (weight, value, ci)
) -> Option<(f64, f64)> {
    let den: f64 = parts.iter().map(|p| p.0).sum();
    if parts.is_empty() || den <= 0.0 {
        return None;
    }
    let centre: f64 = parts.iter().map(|p| p.0 * p.1).sum::<f64>() / den;
    let mut var_lo = 0.0;
    let mut var_hi = 0.0;
    for &(w, v, (lo, hi)) in parts {
        let wn = w / den;
        var_lo += (wn * (v - lo)).powi(2);
        var_hi += (wn * (hi - v)).powi(2);
    }
    Some((centre - var_lo.sqrt(), centre + var_hi.sqrt()))
}

fn mean(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        None
    } else {
        Some(v.iter().sum::<f64>() / v.len() as f64)
    }
}

fn check_accuracy(a: f64) -> Result<(), Error> {
    if a > 0.0 && a <= 1.0 {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "composite accuracy is {a}; EPI needs an accuracy in (0, 1]"
        )))
    }
}

fn check_accuracy_allow_zero(a: f64) -> Result<(), Error> {
    if (0.0..=1.0).contains(&a) {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "accuracy is {a}, expected a value in [0, 1]"
        )))
    }
}

fn check_energy(e: f64) -> Result<(), Error> {
    if e.is_finite() && e >= 0.0 {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "energy is {e} J, expected a finite value ≥ 0"
        )))
    }
}

/// SplitMix64: a tiny deterministic generator for bootstrap resampling.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_does_not_collapse_at_zero_or_all() {
        let (lo, hi) = wilson_ci95(0.0, 6.0);
        assert!(lo.abs() < 1e-12, "{lo}");
        assert!((hi - 0.390).abs() < 1e-3, "{hi}");
        let (lo, hi) = wilson_ci95(1.0, 6.0);
        assert!((lo - 0.610).abs() < 1e-3 && hi == 1.0, "{lo} {hi}");
        // Symmetric in p ↔ 1 − p, inside [0, 1], narrowing with n.
        let (a, b) = wilson_ci95(0.3, 50.0);
        let (c, d) = wilson_ci95(0.7, 50.0);
        assert!((a - (1.0 - d)).abs() < 1e-12 && (b - (1.0 - c)).abs() < 1e-12);
        assert!(wilson_ci95(0.3, 500.0).1 - wilson_ci95(0.3, 500.0).0 < b - a);
        assert_eq!(effective_n(&[1.0, 1.0, 1.0]), 3.0);
        assert!((effective_n(&[3.0, 1.0]) - 1.6).abs() < 1e-12);
    }

    #[test]
    fn epi_is_joules_per_token_over_accuracy() {
        let v = epi(1000.0, 500, 0.5).unwrap();
        assert!((v - 4.0).abs() < 1e-12);
        assert!(epi(1000.0, 0, 0.5).is_err());
        assert!(epi(1000.0, 10, 0.0).is_err());
        assert!(epi(1000.0, 10, 1.2).is_err());
    }

    #[test]
    fn ept_variants_divide_the_same_energy() {
        assert_eq!(ept_in(100.0, 50).unwrap(), 2.0);
        assert_eq!(ept_out(100.0, 25).unwrap(), 4.0);
        assert_eq!(ept_total(100.0, 50, 50).unwrap(), 1.0);
    }

    #[test]
    fn ipj_uses_mean_not_total() {
        // Two queries of 10 J and 30 J: mean 20 J, so IPJ = 0.8 / 20.
        assert!((ipj(0.8, &[10.0, 30.0]).unwrap() - 0.04).abs() < 1e-15);
        // IPW: 10 J over 2 s = 5 W, 30 J over 3 s = 10 W, mean 7.5 W.
        assert!((ipw(0.75, &[(10.0, 2.0), (30.0, 3.0)]).unwrap() - 0.1).abs() < 1e-15);
    }

    #[test]
    fn composite_weights_and_keys() {
        let mut s = BTreeMap::new();
        s.insert("mmlu_5shot".to_string(), 0.8);
        s.insert("arc_challenge_25shot".to_string(), 0.6);
        assert!((composite_accuracy(&s, None).unwrap() - 0.7).abs() < 1e-15);
        let mut w = BTreeMap::new();
        w.insert("mmlu".to_string(), 3.0);
        w.insert("arc_challenge".to_string(), 1.0);
        w.insert("hellaswag".to_string(), 5.0); // not run: ignored
        assert!((composite_accuracy(&s, Some(&w)).unwrap() - 0.75).abs() < 1e-15);
        w.remove("mmlu");
        let err = composite_accuracy(&s, Some(&w)).unwrap_err().to_string();
        assert!(err.contains("no weight for suite `mmlu`"), "{err}");
        s.insert("x".into(), 1.5);
        assert!(composite_accuracy(&s, None).is_err());
    }

    #[test]
    fn benchmark_key_suffix() {
        assert_eq!(suite_of_benchmark_key("mmlu_5shot"), "mmlu");
        assert_eq!(
            suite_of_benchmark_key("arc_challenge_25shot"),
            "arc_challenge"
        );
        assert_eq!(suite_of_benchmark_key("hellaswag"), "hellaswag");
        assert_eq!(suite_of_benchmark_key("foo_shot"), "foo_shot");
    }

    #[test]
    fn bootstrap_interval_brackets_the_mean_and_is_deterministic() {
        let v: Vec<f64> = (0..200)
            .map(|i| if i % 4 == 0 { 0.0 } else { 1.0 })
            .collect();
        let a = bootstrap_mean_ci95(&v, 1000, 7).unwrap();
        let b = bootstrap_mean_ci95(&v, 1000, 7).unwrap();
        assert_eq!(a, b);
        assert!(a.0 < 0.75 && 0.75 < a.1, "{a:?}");
        // Normal approximation half-width ≈ 1.96·sqrt(.75·.25/200) ≈ 0.06.
        assert!((a.1 - a.0) > 0.08 && (a.1 - a.0) < 0.16, "{a:?}");
    }

    #[test]
    fn epi_interval_combines_energy_and_accuracy() {
        let (lo, hi) = epi_interval(1000.0, 0.02, 100, (0.4, 0.6)).unwrap();
        assert!((lo - 10.0 * 0.98 / 0.6).abs() < 1e-12);
        assert!((hi - 10.0 * 1.02 / 0.4).abs() < 1e-12);
    }

    #[test]
    fn net_energy_subtracts_idle() {
        assert_eq!(net_energy(1000.0, 5.0, 100.0), 500.0);
    }
}
