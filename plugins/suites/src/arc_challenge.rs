//! `arc-challenge`: AI2 Reasoning Challenge, Challenge set — lm-eval's `arc_challenge` task
//! (`lm-eval-tasks.md` §3.1): 1172 test questions, 25 examples drawn from the 1119 train questions,
//! `Question: {question}\nAnswer:` and each choice's text as continuation; `acc` and `acc_norm`.

use crate::data::{
    self, describe, describe_parquet, parquet_shards, read_jsonl, read_parquet_shards, search_dirs,
};
use crate::fewshot::{plan, FewshotSelection, PlanInput, Sampler};
use crate::mc::{self, McDoc};
use epi_core::backend::ScoringMode;
use epi_core::error::{InputError, Location};
use epi_core::registry::{parse_config, Factory, PluginConfig, PluginRegistration};
use epi_core::suite::{ItemOutcome, Suite, SuiteError, SuiteInfo, SuiteItem, SuiteScore};
use epi_core::Error;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Registry key.
pub const KEY: &str = "arc-challenge";

/// Examples per question by default (Open LLM Leaderboard v1).
pub const DEFAULT_SHOTS: usize = 25;

/// Directory under the data directory.
pub const SUBDIR: &str = "arc_challenge";

/// The description above generative prompts (lm-eval has no generative ARC task; the format is
/// its generative MMLU's: `Question: <stem>`, lettered choices, `Answer: <letter>`).
pub const GENERATIVE_DESCRIPTION: &str =
    "The following are multiple choice questions (with answers) about grade-school science.\n\n";

/// Settings of `[suite.arc-challenge]`.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ArcConfig {
    /// Data directory (the suite looks in `<data_dir>/arc_challenge`, then `<data_dir>`).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Evaluate only the first N test questions (of the run order).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Examples per question (default 25).
    #[serde(default)]
    pub shots: Option<usize>,
    /// Few-shot selection: `lm-eval` (default) or `leaderboard-v1`.
    #[serde(default)]
    pub fewshot: FewshotSelection,
}

/// The ARC-Challenge suite.
#[derive(Debug)]
pub struct ArcChallenge {
    config: ArcConfig,
    loaded: OnceLock<ArcData>,
}

/// The train and test splits, rendered.
#[derive(Debug, Clone)]
pub struct ArcData {
    /// The few-shot pool (train), in file order.
    pub train: Vec<McDoc>,
    /// The evaluated split (test), in file order.
    pub test: Vec<McDoc>,
    /// Which files were read.
    pub source: String,
}

/// An original ARC JSONL record.
#[derive(Debug, Deserialize)]
struct RawArc {
    question: RawQuestion,
    #[serde(rename = "answerKey")]
    answer_key: String,
}

#[derive(Debug, Deserialize)]
struct RawQuestion {
    stem: String,
    choices: Vec<RawChoice>,
}

#[derive(Debug, Deserialize)]
struct RawChoice {
    text: String,
    label: String,
}

/// A row of the Hugging Face `allenai/ai2_arc` parquet export.
#[derive(Debug, Deserialize)]
struct HfArc {
    question: String,
    choices: HfChoices,
    #[serde(rename = "answerKey")]
    answer_key: String,
}

#[derive(Debug, Deserialize)]
struct HfChoices {
    text: Vec<String>,
    label: Vec<String>,
}

/// lm-eval's rendering: `doc_to_text`, `doc_to_choice`, and the gold index
/// `choices.label.index(answerKey)`.
fn to_doc(
    question: &str,
    texts: Vec<String>,
    labels: &[String],
    answer_key: &str,
    at: Location,
) -> Result<McDoc, SuiteError> {
    if texts.len() != labels.len() {
        return Err(InputError::new(
            at.field("choices"),
            format!("{} choice texts but {} labels", texts.len(), labels.len()),
        )
        .into());
    }
    let gold = labels.iter().position(|l| l == answer_key).ok_or_else(|| {
        InputError::new(
            at.clone().field("answerKey"),
            format!("`{answer_key}` is not one of the choice labels {labels:?}"),
        )
    })?;
    Ok(McDoc::with_text_choices(
        format!("Question: {question}\nAnswer:"),
        texts,
        gold,
    ))
}

/// Where one split of ARC can be.
enum SplitSource {
    Jsonl(PathBuf),
    Parquet(Vec<PathBuf>),
}

fn read_split(source: &SplitSource) -> Result<Vec<McDoc>, SuiteError> {
    match source {
        SplitSource::Jsonl(path) => read_jsonl::<RawArc>(KEY, path)?
            .into_iter()
            .map(|(line, r)| {
                let labels: Vec<String> =
                    r.question.choices.iter().map(|c| c.label.clone()).collect();
                let texts: Vec<String> = r.question.choices.into_iter().map(|c| c.text).collect();
                to_doc(
                    &r.question.stem,
                    texts,
                    &labels,
                    &r.answer_key,
                    Location::file(path).at_line(line),
                )
            })
            .collect(),
        SplitSource::Parquet(paths) => {
            let rows = read_parquet_shards::<HfArc>(KEY, paths)?;
            rows.into_iter()
                .enumerate()
                .map(|(i, r)| {
                    let at = Location::file(&paths[0]).field(format!("row {i}"));
                    to_doc(
                        &r.question,
                        r.choices.text,
                        &r.choices.label,
                        &r.answer_key,
                        at,
                    )
                })
                .collect()
        }
    }
}

/// Finds the train and test files: the original `ARC-Challenge-{Train,Test}.jsonl`, or the
/// Hugging Face export `ARC-Challenge/{train,test}-*.parquet`.
pub fn locate(data_dir: Option<&Path>) -> Result<(SplitPair, String), SuiteError> {
    let mut tried = Vec::new();
    for dir in search_dirs(data_dir, SUBDIR) {
        for d in [dir.clone(), dir.join("ARC-Challenge")] {
            let train = d.join("ARC-Challenge-Train.jsonl");
            let test = d.join("ARC-Challenge-Test.jsonl");
            if train.is_file() && test.is_file() {
                let desc = format!(
                    "original ARC JSONL: {} and {}",
                    train.display(),
                    test.display()
                );
                return Ok((
                    SplitPair {
                        train: SplitSource::Jsonl(train),
                        test: SplitSource::Jsonl(test),
                    },
                    desc,
                ));
            }
            tried.push(describe(
                &d.join("ARC-Challenge-{Train,Test}.jsonl"),
                "original AI2 release",
            ));
        }
        for d in [dir.join("ARC-Challenge"), dir.clone()] {
            let train = parquet_shards(&d, "train");
            let test = parquet_shards(&d, "test");
            if !train.is_empty() && !test.is_empty() {
                let desc = format!("Hugging Face allenai/ai2_arc parquet: {}", d.display());
                return Ok((
                    SplitPair {
                        train: SplitSource::Parquet(train),
                        test: SplitSource::Parquet(test),
                    },
                    desc,
                ));
            }
            tried.push(describe_parquet(
                &d,
                "train,test",
                "Hugging Face allenai/ai2_arc",
            ));
        }
    }
    Err(data::missing(KEY, &tried, data_dir))
}

/// The located train and test files.
pub struct SplitPair {
    train: SplitSource,
    test: SplitSource,
}

/// Loads and renders both splits from the data directory.
pub fn load(data_dir: Option<&Path>) -> Result<ArcData, SuiteError> {
    let (pair, source) = locate(data_dir)?;
    Ok(ArcData {
        train: read_split(&pair.train)?,
        test: read_split(&pair.test)?,
        source,
    })
}

impl ArcChallenge {
    /// A suite with these settings (no I/O).
    pub fn new(config: ArcConfig) -> ArcChallenge {
        ArcChallenge {
            config,
            loaded: OnceLock::new(),
        }
    }

    fn shots(&self) -> usize {
        self.config.shots.unwrap_or(DEFAULT_SHOTS)
    }

    fn data(&self) -> Result<&ArcData, SuiteError> {
        if let Some(d) = self.loaded.get() {
            return Ok(d);
        }
        let d = load(self.config.data_dir.as_deref())?;
        Ok(self.loaded.get_or_init(|| d))
    }
}

impl Suite for ArcChallenge {
    fn info(&self) -> SuiteInfo {
        let source = match self.loaded.get() {
            Some(d) => d.source.clone(),
            None => "allenai/ai2_arc ARC-Challenge (not loaded yet)".to_string(),
        };
        SuiteInfo {
            key: KEY.to_string(),
            benchmark_key: format!("arc_challenge_{}shot", self.shots()),
            shots: self.shots(),
            has_accuracy: true,
            data: format!(
                "ARC-Challenge test split, {}-shot from train, few-shot selection {}; {source}",
                self.shots(),
                self.config.fewshot.as_str()
            ),
        }
    }

    fn items(&self) -> Result<Vec<SuiteItem>, SuiteError> {
        let data = self.data()?;
        let planned = plan(
            self.config.fewshot,
            Sampler::Random {
                lm_eval_draws_extra: false,
            },
            PlanInput {
                n_docs: data.test.len(),
                n_pool: data.train.len(),
                shots: self.shots(),
                limit: self.config.limit,
            },
            |_, _| false,
        )
        .map_err(|e| SuiteError::Other {
            suite: KEY.to_string(),
            message: format!("few-shot sampling: {e}"),
        })?;
        Ok(mc::items_from_plan(
            KEY,
            "test",
            planned,
            &data.test,
            &data.train,
            GENERATIVE_DESCRIPTION,
        ))
    }

    fn aggregate(&self, outcomes: &[ItemOutcome], mode: ScoringMode) -> SuiteScore {
        mc::acc_and_norm_score(KEY, self.info().benchmark_key, outcomes, mode)
    }
}

fn build(config: &PluginConfig) -> Result<Box<dyn Suite>, Error> {
    Ok(Box::new(ArcChallenge::new(parse_config::<ArcConfig>(
        KEY, config,
    )?)))
}

impl epi_core::settings::PluginSettings for ArcConfig {
    fn example() -> Self {
        epi_core::settings::example_from(serde_json::json!({"limit": 100}))
    }
}

epi_core::inventory::submit! {
    PluginRegistration {
        key: KEY,
        description: "ARC-Challenge, 25-shot, acc/acc_norm exactly as lm-evaluation-harness (headline acc_norm)",
        factory: Factory::Suite(build),
        settings: epi_core::settings::Settings::of::<ArcConfig>,
        toml_aliases: &[],
        capabilities: &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use epi_core::registry::Registry;

    fn sha256(s: &str) -> String {
        crate::sha256_hex(s)
    }

    fn suite(extra: serde_json::Value) -> Box<dyn Suite> {
        crate::test_suite(KEY, extra)
    }

    #[test]
    fn contexts_match_lm_eval_test_vectors() {
        // lm-eval-tasks.md §3.4: real lm_eval 0.4.13 on the same files.
        let items = suite(serde_json::json!({ "limit": 2 })).items().unwrap();
        assert_eq!(items.len(), 2);
        let (a, b) = (&items[0], &items[1]);
        assert_eq!(a.context.chars().count(), 3965);
        assert_eq!(
            sha256(&a.context),
            "ec6e8357b5b148ecbdbd55332fae25de39b99b22e3ae31987d623090ba6dc8d3"
        );
        assert!(a.context.starts_with(
            "Question: What is the first step of the process in the formation of sedimentary rocks?\nAnswer: erosion\n\nQuestion: "
        ));
        assert!(a
            .context
            .ends_with("Which is the most likely effect of this increase in rotation?\nAnswer:"));
        assert_eq!(a.continuations()[0], " Planetary density will decrease.");
        assert_eq!(a.gold, Some(2));
        assert_eq!(a.doc_id, "test/0");
        assert_eq!(b.context.chars().count(), 5069);
        assert_eq!(
            sha256(&b.context),
            "14f43fc72d8bad730dfd4b28ce6f7de8a15bcd580785a61333898aaf9e126adc"
        );
        assert_eq!(b.gold, Some(1));
    }

    #[test]
    fn full_test_split_and_numeric_labels() {
        let items = suite(serde_json::json!({ "shots": 0 })).items().unwrap();
        assert_eq!(items.len(), 1172);
        // lm-eval-tasks.md §3.1: 1165 four-choice, 4 three-choice, 3 five-choice = 4687 requests.
        let n: usize = items.iter().map(|i| i.choices.len()).sum();
        assert_eq!(n, 4687);
        assert_eq!(items.iter().filter(|i| i.choices.len() == 5).count(), 3);
        assert!(items
            .iter()
            .all(|i| i.context == i.question && i.gold.is_some_and(|g| g < i.choices.len())));
    }

    #[test]
    fn generative_prompts_send_the_same_examples_lettered() {
        let items = suite(serde_json::json!({ "limit": 2 })).items().unwrap();
        for item in &items {
            let form = item.generative.as_ref().unwrap();
            assert_eq!(form.examples.len(), 25);
            // The log-likelihood context's examples, in its order.
            assert!(crate::in_order(
                &item.context,
                form.examples
                    .iter()
                    .map(|e| format!("{}\nAnswer: {}\n\n", e.question, e.choices[e.gold]))
            ));
            assert_eq!(form.question.choices, item.choices);
            assert_eq!(Some(form.question.gold), item.gold);
            let p = epi_core::generative::generative_prompt(item);
            assert!(p.starts_with(GENERATIVE_DESCRIPTION));
            assert_eq!(
                p.matches("\nAnswer: ").count(),
                25,
                "one answered example per shot"
            );
            assert!(p.ends_with(&format!(
                "{}\nA. {}\nB. {}\nC. {}\nD. {}\nAnswer:",
                form.question.question,
                item.choices[0],
                item.choices[1],
                item.choices[2],
                item.choices[3]
            )));
        }
        let zero = suite(serde_json::json!({ "shots": 0, "limit": 1 }));
        assert_eq!(zero.info().benchmark_key, "arc_challenge_0shot");
        let p = epi_core::generative::generative_prompt(&zero.items().unwrap()[0]);
        assert!(!p.contains("Answer: "), "{p}");
    }

    #[test]
    fn benchmark_key_follows_the_shot_count() {
        assert_eq!(
            suite(serde_json::json!({})).info().benchmark_key,
            "arc_challenge_25shot"
        );
        assert_eq!(
            suite(serde_json::json!({ "shots": 5 }))
                .info()
                .benchmark_key,
            "arc_challenge_5shot"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = Registry::builtin()
            .suite(KEY, &serde_json::json!({ "shot": 5 }))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("unknown field `shot`"), "{e}");
        let e = Registry::builtin()
            .suite(KEY, &serde_json::json!({ "fewshot": "v1" }))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("lm-eval") && e.contains("leaderboard-v1"), "{e}");
    }

    fn outcome_from(item: &SuiteItem, logprobs: &[f64]) -> ItemOutcome {
        let (p, pn) = item.loglikelihood_predictions(logprobs).unwrap();
        ItemOutcome {
            doc_id: item.doc_id.clone(),
            subject: None,
            gold: item.gold,
            prediction: Some(p),
            prediction_norm: Some(pn),
            failed: false,
            unparseable: false,
        }
    }

    fn item(choices: &[&str], gold: usize) -> SuiteItem {
        SuiteItem {
            suite: KEY.into(),
            doc_id: "test/0".into(),
            subject: None,
            context: "Question: q\nAnswer:".into(),
            question: "Question: q\nAnswer:".into(),
            choices: choices.iter().map(|c| c.to_string()).collect(),
            target_delimiter: " ".into(),
            gold: Some(gold),
            generative: None,
        }
    }

    #[test]
    fn aggregate_acc_and_acc_norm_with_ties_to_the_first_index() {
        let s = suite(serde_json::json!({}));
        let outcomes = vec![
            // Tie on the sum goes to choice 0 (wrong); per character "bbbb" wins (right).
            outcome_from(&item(&["a", "bbbb"], 1), &[-2.0, -2.0]),
            // Tie on both goes to choice 0 (right for both).
            outcome_from(&item(&["xx", "yy"], 0), &[-1.0, -1.0]),
            // Sum picks the short choice (right), per character the long one (wrong).
            outcome_from(&item(&["ab", "abcdefgh"], 0), &[-1.0, -3.0]),
            // A failed query: wrong for both, and counted.
            ItemOutcome {
                failed: true,
                prediction: Some(0),
                prediction_norm: Some(0),
                ..outcome_from(&item(&["a", "b"], 0), &[0.0, -1.0])
            },
        ];
        let score = s.aggregate(&outcomes, ScoringMode::Loglikelihood);
        assert_eq!(score.metrics["acc"].value, 0.5);
        assert_eq!(score.metrics["acc_norm"].value, 0.5);
        assert_eq!(score.headline, "acc_norm");
        assert_eq!(
            (score.n_items, score.n_failed, score.n_unparseable),
            (4, 1, 0)
        );
        assert_eq!(score.benchmark_key, "arc_challenge_25shot");
        // Per item: acc = [0, 1, 1, 0], acc_norm = [1, 1, 0, 0].
        let only_first_two = s.aggregate(&outcomes[..2], ScoringMode::Loglikelihood);
        assert_eq!(only_first_two.metrics["acc"].value, 0.5);
        assert_eq!(only_first_two.metrics["acc_norm"].value, 1.0);
        let ci = score.metrics["acc_norm"].ci95.unwrap();
        assert!(ci.0 <= 0.5 && 0.5 <= ci.1, "{ci:?}");
        assert!(score.metrics["acc_norm"]
            .label
            .contains("Open LLM Leaderboard v1"));
    }

    #[test]
    fn generative_mode_reports_acc_only_and_counts_unparseable() {
        let s = suite(serde_json::json!({}));
        let mut bad = outcome_from(&item(&["a", "b"], 0), &[0.0, -1.0]);
        bad.prediction = None;
        bad.prediction_norm = None;
        bad.unparseable = true;
        let good = ItemOutcome {
            prediction_norm: None,
            ..outcome_from(&item(&["a", "b"], 0), &[0.0, -1.0])
        };
        let score = s.aggregate(&[good, bad], ScoringMode::Generative);
        assert_eq!(score.headline, "acc");
        assert_eq!(score.metrics["acc"].value, 0.5);
        assert!(!score.metrics.contains_key("acc_norm"));
        assert_eq!(score.n_unparseable, 1);
        assert!(score.metrics["acc"].label.contains("generative"));
        let empty = s.aggregate(&[], ScoringMode::Loglikelihood);
        assert!(empty.metrics.is_empty() && empty.headline_value().is_none());
    }

    #[test]
    fn leaderboard_v1_order_and_parquet_export() {
        let v1 = suite(serde_json::json!({ "fewshot": "leaderboard-v1", "limit": 2 }))
            .items()
            .unwrap();
        // CPython: Random(42).shuffle(list(range(1172)))[:2] == [595, 716]
        assert_eq!(v1[0].doc_id, "test/595");
        assert_eq!(v1[1].doc_id, "test/716");
        assert!(
            v1[0].context.starts_with("Question: "),
            "{}",
            &v1[0].context[..40]
        );

        // The same rows in the Hugging Face layout give the same items.
        let dir = tempfile::tempdir().unwrap();
        for (split, file) in [
            ("train", "ARC-Challenge-Train.jsonl"),
            ("test", "ARC-Challenge-Test.jsonl"),
        ] {
            let path = crate::testdata().join("arc_challenge").join(file);
            let rows: Vec<serde_json::Value> = std::fs::read_to_string(&path)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            let s = |v: &serde_json::Value| v.as_str().unwrap().to_string();
            let choice_field = |r: &serde_json::Value, f: &str| -> Vec<String> {
                r["question"]["choices"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| s(&c[f]))
                    .collect()
            };
            use crate::data::testutil as t;
            t::write(
                &dir.path().join(format!(
                    "arc_challenge/ARC-Challenge/{split}-00000-of-00001.parquet"
                )),
                vec![
                    (
                        "id",
                        t::strings(&rows.iter().map(|r| s(&r["id"])).collect::<Vec<_>>()),
                    ),
                    (
                        "question",
                        t::strings(
                            &rows
                                .iter()
                                .map(|r| s(&r["question"]["stem"]))
                                .collect::<Vec<_>>(),
                        ),
                    ),
                    (
                        "choices",
                        t::structs(vec![
                            (
                                "text",
                                t::string_lists(
                                    &rows
                                        .iter()
                                        .map(|r| choice_field(r, "text"))
                                        .collect::<Vec<_>>(),
                                ),
                            ),
                            (
                                "label",
                                t::string_lists(
                                    &rows
                                        .iter()
                                        .map(|r| choice_field(r, "label"))
                                        .collect::<Vec<_>>(),
                                ),
                            ),
                        ]),
                    ),
                    (
                        "answerKey",
                        t::strings(&rows.iter().map(|r| s(&r["answerKey"])).collect::<Vec<_>>()),
                    ),
                ],
            );
        }
        let cfg = serde_json::json!({ "data_dir": dir.path(), "limit": 2 });
        let hf = Registry::builtin().suite(KEY, &cfg).unwrap();
        let items = hf.items().unwrap();
        assert_eq!(
            sha256(&items[0].context),
            "ec6e8357b5b148ecbdbd55332fae25de39b99b22e3ae31987d623090ba6dc8d3"
        );
        assert_eq!(
            sha256(&items[1].context),
            "14f43fc72d8bad730dfd4b28ce6f7de8a15bcd580785a61333898aaf9e126adc"
        );
        assert!(hf.info().data.contains("allenai/ai2_arc parquet"));
    }

    #[test]
    fn a_bad_answer_key_names_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let good = r#"{"id":"x","question":{"stem":"Q?","choices":[{"text":"a","label":"A"},{"text":"b","label":"B"}]},"answerKey":"A"}"#;
        let bad = good.replace(r#""answerKey":"A""#, r#""answerKey":"3""#);
        std::fs::write(dir.path().join("ARC-Challenge-Train.jsonl"), good).unwrap();
        std::fs::write(
            dir.path().join("ARC-Challenge-Test.jsonl"),
            format!("{good}\n{bad}\n"),
        )
        .unwrap();
        let e = load(Some(dir.path())).unwrap_err().to_string();
        assert!(
            e.contains(
                "ARC-Challenge-Test.jsonl:2: answerKey: `3` is not one of the choice labels"
            ),
            "{e}"
        );
        std::fs::write(
            dir.path().join("ARC-Challenge-Test.jsonl"),
            good.replace("stem", "stm"),
        )
        .unwrap();
        let e = load(Some(dir.path())).unwrap_err().to_string();
        assert!(
            e.contains("ARC-Challenge-Test.jsonl:1: question: missing field `stem`"),
            "{e}"
        );
    }
}
