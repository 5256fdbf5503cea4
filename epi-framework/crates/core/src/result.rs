//! The EPI result JSON (`epi calculate`'s output), as `epi-bench-readme.txt` shows it, with the
//! provenance and uncertainty sections `measurement-methodology.md` asks for.

use crate::error::Error;
use crate::jsonio;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// A gap in a channel's samples longer than the configured limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gap {
    /// Channel (`node_id`).
    pub node_id: u32,
    /// Last sample before the gap, ms.
    pub start_ms: f64,
    /// First sample after the gap, ms.
    pub end_ms: f64,
}

/// The `energy` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnergySection {
    /// Gross energy of the window, J (what the meter saw).
    pub total_joules: f64,
    /// Tokens the energy is divided by (see `token_basis`).
    pub total_tokens: u64,
    /// Mean cluster power over the window, W.
    pub avg_watts: f64,
    /// Highest cluster power at a sample instant, W.
    pub peak_watts: f64,
    /// Window length, s.
    pub duration_seconds: f64,
    /// `total_joules` in kWh.
    pub kwh: f64,
    /// Which token count: `generated` (default), `prompt` or `total`.
    #[serde(default = "default_token_basis")]
    pub token_basis: String,
    /// `counter`, `integrated` or `modelled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Power source key (`epi-meter`, `csv`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Nominal or observed sample rate, Hz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_rate_hz: Option<f64>,
    /// Share of the window lying between two samples closer than the gap limit (min over channels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage: Option<f64>,
    /// Samples read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<u64>,
    /// Channels seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<u32>,
    /// Energy per channel, J, by node id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub per_node_joules: BTreeMap<String, f64>,
    /// Gaps longer than `gap_limit_ms`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gaps: Vec<Gap>,
    /// Gaps found in all (the list may be cut short).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap_count: Option<u64>,
    /// The gap limit used, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap_limit_ms: Option<f64>,
    /// Mean idle power measured before the run, W.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_watts: Option<f64>,
    /// Net energy: gross − idle_watts × duration, J.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_joules: Option<f64>,
    /// Quality flags (`coverage-below-1`, `gaps`, `single-sample-channel`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
}

fn default_token_basis() -> String {
    "generated".into()
}

/// The `accuracy` section: one score per benchmark key, the composite and the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccuracySection {
    /// Scores by benchmark key.
    #[serde(flatten)]
    pub scores: BTreeMap<String, f64>,
    /// A = Σ wᵢ·accᵢ / Σ wᵢ.
    pub composite: f64,
    /// Weights by suite name, as given (normalised or not).
    pub weights: BTreeMap<String, f64>,
}

/// `environment`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    /// Ambient temperature, °C.
    #[serde(default)]
    pub ambient_temp_c: Option<f64>,
    /// CPU frequency governor.
    #[serde(default)]
    pub frequency_governor: Option<String>,
    /// Anything else.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// `run_metadata`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMetadata {
    /// Unique id of this result.
    pub run_id: String,
    /// When the benchmark run started, UTC.
    pub timestamp_utc: String,
    /// Repetition number (1-based).
    pub repetition: u32,
    /// Firmware of the epi-meter, when one measured.
    #[serde(default)]
    pub epi_meter_firmware: Option<String>,
    /// epi-bench version that computed this.
    pub epi_bench_version: String,
    /// Anything else (input files and their hashes, clock offsets, ...).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// `uncertainty`: the intervals of `measurement-methodology.md` §8.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Uncertainty {
    /// The instrument's relative energy accuracy (0.02 = ±2 %).
    pub energy_rel_accuracy: f64,
    /// 95 % interval of the composite accuracy, when item counts or intervals are known.
    pub accuracy_ci95: Option<(f64, f64)>,
    /// EPI interval combining both, when the accuracy interval is known.
    pub epi_ci95: Option<(f64, f64)>,
    /// How the intervals were obtained.
    pub note: String,
}

/// A complete EPI result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpiResult {
    /// EPI = (J / token) ÷ A. Lower is better.
    pub epi: f64,
    /// Energy numerator, J/token.
    pub joules_per_token: f64,
    /// Accuracy denominator A.
    pub accuracy_composite: f64,
    /// Energy section.
    pub energy: EnergySection,
    /// Accuracy section.
    pub accuracy: AccuracySection,
    /// Model identifier.
    pub model: String,
    /// Quantization.
    pub quantization: String,
    /// Surgery applied.
    pub surgery: String,
    /// Hardware.
    pub hardware: String,
    /// Instrument.
    pub instrument: String,
    /// Where the power was measured.
    pub measurement_point: String,
    /// Environment.
    #[serde(default)]
    pub environment: Environment,
    /// Run metadata.
    pub run_metadata: RunMetadata,
    /// Intervals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncertainty: Option<Uncertainty>,
    /// Other metrics computed beside EPI (`ept_out`, `ipj`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
    /// Numeric surgery parameters (`experts_dropped` → 8), for surgery curves.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub surgery_params: serde_json::Map<String, serde_json::Value>,
    /// Any other fields, kept as they were.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl EpiResult {
    /// Reads an EPI result JSON file.
    pub fn from_json(path: impl AsRef<Path>) -> Result<EpiResult, Error> {
        jsonio::read_json(path.as_ref())
    }

    /// Writes the JSON file (atomically).
    pub fn to_json(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        jsonio::write_json_atomic(path.as_ref(), self)
    }

    /// Total energy, J.
    pub fn total_joules(&self) -> f64 {
        self.energy.total_joules
    }
    /// Tokens.
    pub fn total_tokens(&self) -> u64 {
        self.energy.total_tokens
    }

    /// A numeric surgery parameter: from `surgery_params`, then `run_metadata`, then a
    /// `name=value` pair in the surgery string (`experts_dropped=8, heads=2`).
    pub fn surgery_param(&self, name: &str) -> Option<f64> {
        let from_value = |v: &serde_json::Value| match v {
            serde_json::Value::Number(n) => n.as_f64(),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        if let Some(v) = self.surgery_params.get(name).and_then(from_value) {
            return Some(v);
        }
        if let Some(v) = self.run_metadata.extra.get(name).and_then(from_value) {
            return Some(v);
        }
        self.surgery
            .split([',', ';', ' '])
            .filter_map(|part| part.split_once('='))
            .find(|(k, _)| k.trim() == name)
            .and_then(|(_, v)| v.trim().parse().ok())
    }
}

/// The `run_metadata` key of the input digests a result records: `{"trace": "xxh3-128:…",
/// "trace_meta": "xxh3-128:…", "benchmark": "xxh3-128:…"}` (`trace_meta` only when the trace has
/// a sidecar). `epi validate` hashes a submission's files and requires them to match.
pub const INPUT_DIGESTS: &str = "input_digests";

/// The digest of a file's bytes as results record it: `xxh3-128:` and 32 lower-case hex digits,
/// the canonical big-endian form `xxhsum -H2` prints. (XXH3 rather than SHA-256: the trace is
/// hashed while it is integrated, and SHA-256 would cost more than the integration.)
pub fn file_digest(path: &Path) -> Result<String, Error> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = twox_hash::XxHash3_128::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => h.write(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    Ok(format!("xxh3-128:{:032x}", h.finish_128()))
}

/// Reads every EPI result JSON under `dir` (recursively), sorted by path. Files that are JSON but
/// not EPI results (benchmark files) are skipped; malformed EPI results are errors.
pub fn load_results_dir(dir: &Path) -> Result<Vec<(std::path::PathBuf, EpiResult)>, Error> {
    let mut files = Vec::new();
    collect_json(dir, &mut files)?;
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| Error::io(&f, e))?;
        let v: serde_json::Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(_) => return Err(jsonio::parse_json::<serde_json::Value>(&f, &text).unwrap_err()),
        };
        if v.get("epi").is_none() || v.get("energy").is_none() {
            continue;
        }
        out.push((f.clone(), jsonio::parse_json(&f, &text)?));
    }
    Ok(out)
}

fn collect_json(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> Result<(), Error> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let p = entry.path();
        if p.is_dir() {
            collect_json(&p, out)?;
        } else if p.extension().is_some_and(|e| e == "json") {
            out.push(p);
        }
    }
    Ok(())
}

/// One row of the community CSV:
/// `model,quantization,surgery,hardware,instrument,epi,joules_per_token,accuracy,total_joules,total_tokens,contributor`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommunityRow {
    /// Model.
    pub model: String,
    /// Quantization.
    pub quantization: String,
    /// Surgery.
    pub surgery: String,
    /// Hardware.
    pub hardware: String,
    /// Instrument.
    pub instrument: String,
    /// EPI.
    pub epi: f64,
    /// J/token.
    pub joules_per_token: f64,
    /// Composite accuracy.
    pub accuracy: f64,
    /// Total energy, J.
    pub total_joules: f64,
    /// Tokens.
    pub total_tokens: u64,
    /// Who measured it.
    pub contributor: String,
}

impl CommunityRow {
    /// The row for a result.
    pub fn from_result(r: &EpiResult, contributor: &str) -> Self {
        CommunityRow {
            model: r.model.clone(),
            quantization: r.quantization.clone(),
            surgery: r.surgery.clone(),
            hardware: r.hardware.clone(),
            instrument: r.instrument.clone(),
            epi: r.epi,
            joules_per_token: r.joules_per_token,
            accuracy: r.accuracy_composite,
            total_joules: r.energy.total_joules,
            total_tokens: r.energy.total_tokens,
            contributor: contributor.to_string(),
        }
    }
}

/// Writes community CSV rows (header included, RFC 4180 quoting) to `path`, atomically.
pub fn write_community_csv(path: &Path, rows: &[CommunityRow]) -> Result<(), Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r)
            .map_err(|e| Error::Invalid(format!("community CSV: {e}")))?;
    }
    if rows.is_empty() {
        w.write_record([
            "model",
            "quantization",
            "surgery",
            "hardware",
            "instrument",
            "epi",
            "joules_per_token",
            "accuracy",
            "total_joules",
            "total_tokens",
            "contributor",
        ])
        .map_err(|e| Error::Invalid(format!("community CSV: {e}")))?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| Error::Invalid(format!("community CSV: {e}")))?;
    jsonio::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_digests_are_what_xxhsum_prints() {
        // Known answers from `xxhsum -H2` (xxHash 0.8.1), for a short file and for one read in
        // several pieces.
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("abc");
        std::fs::write(&short, b"abc").unwrap();
        assert_eq!(
            file_digest(&short).unwrap(),
            "xxh3-128:06b05ab6733a618578af5f94892f3950"
        );
        let long = dir.path().join("long");
        let mut bytes = vec![b'x'; 3_000_000];
        bytes.extend_from_slice(b"tail");
        std::fs::write(&long, &bytes).unwrap();
        assert_eq!(
            file_digest(&long).unwrap(),
            "xxh3-128:05569b8198f0ddf0a5956da675dfc5f8"
        );
        assert!(file_digest(&dir.path().join("missing"))
            .unwrap_err()
            .to_string()
            .contains("missing"));
    }

    #[test]
    fn surgery_param_sources() {
        let text = include_str!("../../../tests/data/epi_result_min.json");
        let mut r: EpiResult = serde_json::from_str(text).unwrap();
        r.surgery = "experts_dropped=8, quant=q4".into();
        assert_eq!(r.surgery_param("experts_dropped"), Some(8.0));
        r.surgery_params
            .insert("experts_dropped".into(), serde_json::json!(16));
        assert_eq!(r.surgery_param("experts_dropped"), Some(16.0));
        assert_eq!(r.surgery_param("heads"), None);
    }

    #[test]
    fn result_roundtrips_and_keeps_unknown_fields() {
        let text = include_str!("../../../tests/data/epi_result_min.json");
        let mut v: serde_json::Value = serde_json::from_str(text).unwrap();
        v["custom_field"] = serde_json::json!({"a": 1});
        let r: EpiResult = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(r.accuracy.scores.get("mmlu_5shot"), Some(&0.781));
        let back = serde_json::to_value(&r).unwrap();
        assert_eq!(back["custom_field"], v["custom_field"]);
        assert_eq!(back["accuracy"]["mmlu_5shot"], v["accuracy"]["mmlu_5shot"]);
    }
}
