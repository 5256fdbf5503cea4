//! `prompts`: a custom prompt file for energy-only runs. Its items have no choices and no gold
//! answer, so the suite reports no accuracy (`has_accuracy = false`): a run gives energy per
//! token, and the EPI scorer refuses it.
//!
//! The file is either plain text, one prompt per line (blank lines skipped), or JSON Lines
//! (`.jsonl`) with a string field `prompt` on every non-blank line (other fields ignored).

use epi_core::backend::ScoringMode;
use epi_core::error::{InputError, Location};
use epi_core::registry::{parse_config, Factory, PluginConfig, PluginRegistration};
use epi_core::suite::{ItemOutcome, Suite, SuiteError, SuiteInfo, SuiteItem, SuiteScore};
use epi_core::Error;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Registry key.
pub const KEY: &str = "prompts";

/// Settings of `[suite.prompts]`.
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PromptsConfig {
    /// The prompt file (`.jsonl` for JSON Lines, anything else for one prompt per line).
    pub file: PathBuf,
    /// Run only the first N prompts.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Accepted like the other suites' `data_dir`: a relative `file` not found in the working
    /// directory is looked up here.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
}

/// The prompt-file suite.
#[derive(Debug)]
pub struct Prompts {
    config: PromptsConfig,
}

/// Reads the prompts of `path`.
pub fn read_prompts(path: &Path) -> Result<Vec<String>, SuiteError> {
    let text = std::fs::read_to_string(path).map_err(|e| SuiteError::Other {
        suite: KEY.into(),
        message: format!("{}: {e}", path.display()),
    })?;
    let jsonl = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("jsonl"));
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = Location::file(path).at_line(i as u64 + 1);
        if line.trim().is_empty() {
            continue;
        }
        if !jsonl {
            out.push(line.to_string());
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| InputError::new(at.clone(), format!("not a JSON object: {e}")))?;
        match v.get("prompt") {
            Some(serde_json::Value::String(p)) => out.push(p.clone()),
            Some(other) => {
                return Err(InputError::new(
                    at.field("prompt"),
                    format!("expected a string, found {other}"),
                )
                .into())
            }
            None => {
                return Err(InputError::new(
                    at.field("prompt"),
                    "missing: every line needs a string field `prompt`",
                )
                .into())
            }
        }
    }
    if out.is_empty() {
        return Err(InputError::new(Location::file(path), "no prompts in the file").into());
    }
    Ok(out)
}

impl Prompts {
    /// A suite with these settings (no I/O).
    pub fn new(config: PromptsConfig) -> Prompts {
        Prompts { config }
    }

    /// The file to read: `file` as given, or under `data_dir` when it is relative and not there.
    fn path(&self) -> PathBuf {
        let f = &self.config.file;
        match &self.config.data_dir {
            Some(d) if f.is_relative() && !f.exists() => d.join(f),
            _ => f.clone(),
        }
    }
}

impl Suite for Prompts {
    fn info(&self) -> SuiteInfo {
        SuiteInfo {
            key: KEY.to_string(),
            benchmark_key: KEY.to_string(),
            shots: 0,
            has_accuracy: false,
            data: format!(
                "prompt file {} (energy only: no answers, no accuracy)",
                self.path().display()
            ),
        }
    }

    fn items(&self) -> Result<Vec<SuiteItem>, SuiteError> {
        let mut prompts = read_prompts(&self.path())?;
        if let Some(n) = self.config.limit {
            prompts.truncate(n);
        }
        Ok(prompts
            .into_iter()
            .enumerate()
            .map(|(i, p)| SuiteItem {
                suite: KEY.to_string(),
                doc_id: format!("prompt/{i}"),
                subject: None,
                context: p.clone(),
                question: p,
                choices: Vec::new(),
                target_delimiter: String::new(),
                gold: None,
                generative: None,
            })
            .collect())
    }

    /// Counts; no accuracy metrics (the headline names none, so `headline_value` is `None`).
    fn aggregate(&self, outcomes: &[ItemOutcome], mode: ScoringMode) -> SuiteScore {
        SuiteScore {
            suite: KEY.to_string(),
            benchmark_key: KEY.to_string(),
            mode,
            n_items: outcomes.len(),
            n_failed: outcomes.iter().filter(|o| o.failed).count(),
            n_unparseable: outcomes.iter().filter(|o| o.unparseable).count(),
            metrics: BTreeMap::new(),
            headline: String::new(),
            groups: BTreeMap::new(),
        }
    }
}

fn build(config: &PluginConfig) -> Result<Box<dyn Suite>, Error> {
    Ok(Box::new(Prompts::new(parse_config::<PromptsConfig>(
        KEY, config,
    )?)))
}

impl epi_core::settings::PluginSettings for PromptsConfig {
    fn example() -> Self {
        epi_core::settings::example_from(serde_json::json!({"file": "prompts.jsonl", "limit": 100}))
    }
}

epi_core::inventory::submit! {
    PluginRegistration {
        key: KEY,
        description: "A custom prompt file (one per line, or JSONL `prompt`): energy per token only, no accuracy",
        factory: Factory::Suite(build),
        settings: epi_core::settings::Settings::of::<PromptsConfig>,
        toml_aliases: &[],
        capabilities: &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use epi_core::registry::Registry;

    fn suite(cfg: serde_json::Value) -> Box<dyn Suite> {
        Registry::builtin().suite(KEY, &cfg).unwrap()
    }

    #[test]
    fn text_file_one_prompt_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.txt");
        std::fs::write(&f, "Tell me a story.\r\n\n  \nWhat is 2+2?\nLast one").unwrap();
        let s = suite(serde_json::json!({ "file": f, "limit": 2 }));
        let info = s.info();
        assert!(!info.has_accuracy);
        assert_eq!(info.benchmark_key, "prompts");
        let items = s.items().unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].context, "Tell me a story.");
        assert_eq!(items[1].context, "What is 2+2?");
        assert_eq!(items[1].doc_id, "prompt/1");
        assert!(items
            .iter()
            .all(|i| i.gold.is_none() && i.choices.is_empty() && i.question == i.context));
    }

    #[test]
    fn jsonl_file_reads_prompt_fields_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.jsonl");
        std::fs::write(
            &f,
            "{\"prompt\": \"a\\nb\", \"id\": 3}\n\n{\"prompt\": \"c\"}\n",
        )
        .unwrap();
        // A relative name is found under data_dir.
        let s = suite(serde_json::json!({ "file": "p.jsonl", "data_dir": dir.path() }));
        let items = s.items().unwrap();
        assert_eq!(
            items.iter().map(|i| i.context.as_str()).collect::<Vec<_>>(),
            ["a\nb", "c"]
        );
        std::fs::write(&f, "{\"prompt\": \"a\"}\n{\"text\": \"b\"}\n").unwrap();
        let e = s.items().unwrap_err().to_string();
        assert!(e.contains("p.jsonl:2: prompt: missing"), "{e}");
        std::fs::write(&f, "{\"prompt\": 7}\n").unwrap();
        let e = s.items().unwrap_err().to_string();
        assert!(
            e.contains("p.jsonl:1: prompt: expected a string, found 7"),
            "{e}"
        );
        std::fs::write(&f, "not json\n").unwrap();
        assert!(s
            .items()
            .unwrap_err()
            .to_string()
            .contains("p.jsonl:1: not a JSON object"));
        std::fs::write(&f, "\n").unwrap();
        assert!(s
            .items()
            .unwrap_err()
            .to_string()
            .contains("no prompts in the file"));
    }

    #[test]
    fn aggregate_counts_but_reports_no_accuracy() {
        let s = suite(serde_json::json!({ "file": "x.txt" }));
        let o = ItemOutcome {
            doc_id: "prompt/0".into(),
            subject: None,
            gold: None,
            prediction: None,
            prediction_norm: None,
            failed: true,
            unparseable: false,
        };
        let score = s.aggregate(
            &[o.clone(), ItemOutcome { failed: false, ..o }],
            ScoringMode::Generative,
        );
        assert_eq!((score.n_items, score.n_failed), (2, 1));
        assert!(score.metrics.is_empty());
        assert_eq!(score.headline_value(), None);
    }

    #[test]
    fn file_is_required() {
        let e = Registry::builtin()
            .suite(KEY, &serde_json::json!({}))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("missing field `file`"), "{e}");
    }
}
