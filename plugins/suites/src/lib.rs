//! epi-bench benchmark suites: MMLU, ARC-Challenge, HellaSwag (exactly as lm-evaluation-harness) and prompt files.
//!
//! Each registry key has its own module: [`mmlu`], [`arc_challenge`], [`hellaswag`], [`prompts`].
//! The shared machinery reproduces lm-eval bit for bit: CPython's `random.Random` ([`pyrandom`]),
//! the few-shot selection ([`fewshot`]), Python string methods ([`pystr`]), prompt assembly and
//! scoring ([`mc`]); [`data`] finds and reads the data files, and [`datasets`] describes what
//! `epi datasets` fetches and how it verifies it. `docs/suites.md` is the user's description.
#![deny(missing_docs)]

pub mod arc_challenge;
pub mod data;
pub mod datasets;
pub mod fewshot;
pub mod hellaswag;
pub mod mc;
pub mod mmlu;
pub mod prompts;
pub mod pyrandom;
pub mod pystr;

/// Forces this crate's plugin registrations into a binary that links it (linkers drop archive
/// members nothing refers to, and `inventory` registrations are referred to by nothing).
#[inline(never)]
pub fn link() {
    std::hint::black_box(module_path!());
}

/// The repository's test data directory (ARC-Challenge in full, MMLU dev and two test subjects).
#[cfg(test)]
pub(crate) fn testdata() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

/// Hex sha256 of a string (the test vectors of `lm-eval-tasks.md` are given so).
#[cfg(test)]
pub(crate) fn sha256_hex(s: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The registered suite `key` on the repository's test data, with `extra` settings.
#[cfg(test)]
pub(crate) fn test_suite(key: &str, extra: serde_json::Value) -> Box<dyn epi_core::suite::Suite> {
    let mut cfg = serde_json::json!({ "data_dir": testdata() });
    if let (Some(c), Some(e)) = (cfg.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    epi_core::registry::Registry::builtin()
        .suite(key, &cfg)
        .unwrap()
}

/// Whether every piece occurs in `text`, each after the previous one (few-shot examples in order).
#[cfg(test)]
pub(crate) fn in_order(text: &str, pieces: impl IntoIterator<Item = String>) -> bool {
    let mut from = 0;
    for p in pieces {
        match text[from..].find(&p) {
            Some(i) => from += i + p.len(),
            None => return false,
        }
    }
    true
}
