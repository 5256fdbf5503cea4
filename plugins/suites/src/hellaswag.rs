//! `hellaswag`: HellaSwag — lm-eval's `hellaswag` task (`lm-eval-tasks.md` §3.2): the 10042
//! validation documents, 10 examples from the 39905 train documents (lm-eval draws 11 and drops the
//! evaluated document, because the task's few-shot split and test split are both unset), the
//! WikiHow/ActivityNet text cleaned by `preprocess`; `acc` and `acc_norm`.

use crate::data::{
    self, describe, describe_parquet, parquet_shards, read_jsonl, read_parquet_shards, search_dirs,
};
use crate::fewshot::{plan, FewshotSelection, PlanInput, Sampler};
use crate::mc::{self, McDoc};
use crate::pystr::{capitalize, strip};
use epi_core::backend::ScoringMode;
use epi_core::error::{InputError, Location};
use epi_core::registry::{parse_config, Factory, PluginConfig, PluginRegistration};
use epi_core::suite::{ItemOutcome, Suite, SuiteError, SuiteInfo, SuiteItem, SuiteScore};
use epi_core::Error;
use serde::{Deserialize, Deserializer};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Registry key.
pub const KEY: &str = "hellaswag";

/// Examples per document by default (Open LLM Leaderboard v1).
pub const DEFAULT_SHOTS: usize = 10;

/// Directory under the data directory.
pub const SUBDIR: &str = "hellaswag";

/// The description above generative prompts (lm-eval has no generative HellaSwag task): each
/// question is the cleaned context (`<activity>: <ctx>`), the choices its endings.
pub const GENERATIVE_DESCRIPTION: &str = "The following are multiple choice questions (with answers) \
     about everyday activities: each description is followed by possible endings, and the answer is \
     the most plausible one.\n\n";

/// Settings of `[suite.hellaswag]`.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HellaswagConfig {
    /// Data directory (the suite looks in `<data_dir>/hellaswag`, then `<data_dir>`).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Evaluate only the first N validation documents (of the run order).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Examples per document (default 10).
    #[serde(default)]
    pub shots: Option<usize>,
    /// Few-shot selection: `lm-eval` (default) or `leaderboard-v1`.
    #[serde(default)]
    pub fewshot: FewshotSelection,
}

/// A HellaSwag record, as in `rowanz/hellaswag` `data/*.jsonl` and the `Rowan/hellaswag` parquet
/// export (where `label` is a string, `""` in the unlabelled test split).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RawDoc {
    /// Index in the source data.
    pub ind: i64,
    /// The ActivityNet or WikiHow category.
    pub activity_label: String,
    /// First part of the context.
    pub ctx_a: String,
    /// Second part of the context (a sentence start, capitalised by the task).
    pub ctx_b: String,
    /// `ctx_a + " " + ctx_b` as stored (not used by the task).
    pub ctx: String,
    /// The four candidate endings.
    pub endings: Vec<String>,
    /// Source video or article id.
    pub source_id: String,
    /// `train`, `val` or `test`.
    pub split: String,
    /// `indomain` or `zeroshot`.
    pub split_type: String,
    /// The correct ending, 0-3 (an integer in the JSONL files, a string in the parquet export).
    #[serde(default, deserialize_with = "label")]
    pub label: Option<String>,
}

fn label<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Label {
        Int(i64),
        Str(String),
    }
    Ok(match Option::<Label>::deserialize(d)? {
        None => None,
        Some(Label::Int(i)) => Some(i.to_string()),
        Some(Label::Str(s)) => Some(s),
    })
}

/// lm-eval's `preprocess` (`lm_eval/tasks/hellaswag/utils.py`): strip, `" [title]"` → `". "`,
/// remove every non-greedy bracket group `\[.*?\]` (which, like Python's `.`, does not cross a
/// newline), then replace `"  "` with `" "` in a single pass (three spaces leave two).
pub fn preprocess(text: &str) -> String {
    let text = strip(text).replace(" [title]", ". ");
    remove_bracket_groups(&text).replace("  ", " ")
}

/// `re.sub("\\[.*?\\]", "", text)`.
fn remove_bracket_groups(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        // The shortest match: the first `]` with no newline before it.
        let close = after.find(']').filter(|&c| !after[..c].contains('\n'));
        match close {
            Some(c) => {
                out.push_str(&rest[..open]);
                rest = &after[c + 1..];
            }
            None => {
                out.push_str(&rest[..open + 1]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// lm-eval's `process_docs` for one document: `query`, `choices` and `gold`.
pub fn process_doc(doc: &RawDoc, at: &Location) -> Result<McDoc, SuiteError> {
    let ctx = format!("{} {}", doc.ctx_a, capitalize(&doc.ctx_b));
    let query = preprocess(&format!("{}: {}", doc.activity_label, ctx));
    let choices: Vec<String> = doc.endings.iter().map(|e| preprocess(e)).collect();
    let label = doc.label.as_deref().unwrap_or("");
    // Python `int(label)`: surrounding white space allowed.
    let gold = strip(label)
        .parse::<usize>()
        .ok()
        .filter(|&g| g < choices.len())
        .ok_or_else(|| {
            InputError::new(
                at.clone().field("label"),
                format!(
                    "`{label}` is not the index of one of the {} endings",
                    choices.len()
                ),
            )
        })?;
    Ok(McDoc::with_text_choices(query, choices, gold))
}

/// One split: raw records (for lm-eval's "is this the evaluated document" test) and rendered
/// documents.
#[derive(Debug, Clone, Default)]
pub struct Split {
    /// The records as read.
    pub raw: Vec<RawDoc>,
    /// The processed documents.
    pub docs: Vec<McDoc>,
}

/// The train and validation splits.
#[derive(Debug, Clone)]
pub struct HellaswagData {
    /// Few-shot pool.
    pub train: Split,
    /// Evaluated split.
    pub validation: Split,
    /// Which files were read.
    pub source: String,
}

enum SplitSource {
    Jsonl(PathBuf),
    Parquet(Vec<PathBuf>),
}

fn read_split(source: &SplitSource) -> Result<Split, SuiteError> {
    let rows: Vec<(Location, RawDoc)> = match source {
        SplitSource::Jsonl(path) => read_jsonl::<RawDoc>(KEY, path)?
            .into_iter()
            .map(|(line, d)| (Location::file(path).at_line(line), d))
            .collect(),
        SplitSource::Parquet(paths) => read_parquet_shards::<RawDoc>(KEY, paths)?
            .into_iter()
            .enumerate()
            .map(|(i, d)| (Location::file(&paths[0]).field(format!("row {i}")), d))
            .collect(),
    };
    let mut split = Split::default();
    for (at, raw) in rows {
        split.docs.push(process_doc(&raw, &at)?);
        split.raw.push(raw);
    }
    Ok(split)
}

/// The located train and validation files.
pub struct SplitPair {
    train: SplitSource,
    validation: SplitSource,
}

/// Finds the train and validation files: the original `hellaswag_{train,val}.jsonl`, or the
/// Hugging Face export (`data/{train,validation}-*.parquet`, `default/{train,validation}/*.parquet`).
pub fn locate(data_dir: Option<&Path>) -> Result<(SplitPair, String), SuiteError> {
    let mut tried = Vec::new();
    for dir in search_dirs(data_dir, SUBDIR) {
        let train = dir.join("hellaswag_train.jsonl");
        let val = dir.join("hellaswag_val.jsonl");
        if train.is_file() && val.is_file() {
            let desc = format!(
                "original HellaSwag JSONL: {} and {}",
                train.display(),
                val.display()
            );
            return Ok((
                SplitPair {
                    train: SplitSource::Jsonl(train),
                    validation: SplitSource::Jsonl(val),
                },
                desc,
            ));
        }
        tried.push(describe(
            &dir.join("hellaswag_{train,val}.jsonl"),
            "rowanz/hellaswag",
        ));
        for d in [dir.join("data"), dir.join("default"), dir.clone()] {
            let train = parquet_shards(&d, "train");
            let val = parquet_shards(&d, "validation");
            if !train.is_empty() && !val.is_empty() {
                let desc = format!("Hugging Face Rowan/hellaswag parquet: {}", d.display());
                return Ok((
                    SplitPair {
                        train: SplitSource::Parquet(train),
                        validation: SplitSource::Parquet(val),
                    },
                    desc,
                ));
            }
            tried.push(describe_parquet(
                &d,
                "train,validation",
                "Hugging Face Rowan/hellaswag",
            ));
        }
    }
    Err(data::missing(KEY, &tried, data_dir))
}

/// Loads and processes both splits from the data directory.
pub fn load(data_dir: Option<&Path>) -> Result<HellaswagData, SuiteError> {
    let (pair, source) = locate(data_dir)?;
    Ok(HellaswagData {
        train: read_split(&pair.train)?,
        validation: read_split(&pair.validation)?,
        source,
    })
}

/// The HellaSwag suite.
#[derive(Debug)]
pub struct Hellaswag {
    config: HellaswagConfig,
    loaded: OnceLock<HellaswagData>,
}

impl Hellaswag {
    /// A suite with these settings (no I/O).
    pub fn new(config: HellaswagConfig) -> Hellaswag {
        Hellaswag {
            config,
            loaded: OnceLock::new(),
        }
    }

    fn shots(&self) -> usize {
        self.config.shots.unwrap_or(DEFAULT_SHOTS)
    }

    fn data(&self) -> Result<&HellaswagData, SuiteError> {
        if let Some(d) = self.loaded.get() {
            return Ok(d);
        }
        let d = load(self.config.data_dir.as_deref())?;
        Ok(self.loaded.get_or_init(|| d))
    }
}

impl Suite for Hellaswag {
    fn info(&self) -> SuiteInfo {
        let source = match self.loaded.get() {
            Some(d) => d.source.clone(),
            None => "Rowan/hellaswag (not loaded yet)".to_string(),
        };
        SuiteInfo {
            key: KEY.to_string(),
            benchmark_key: format!("hellaswag_{}shot", self.shots()),
            shots: self.shots(),
            has_accuracy: true,
            data: format!(
                "HellaSwag validation split, {}-shot from train, few-shot selection {}; {source}",
                self.shots(),
                self.config.fewshot.as_str()
            ),
        }
    }

    fn items(&self) -> Result<Vec<SuiteItem>, SuiteError> {
        let data = self.data()?;
        let (train, val) = (&data.train, &data.validation);
        let planned = plan(
            self.config.fewshot,
            Sampler::Random {
                lm_eval_draws_extra: true,
            },
            PlanInput {
                n_docs: val.docs.len(),
                n_pool: train.docs.len(),
                shots: self.shots(),
                limit: self.config.limit,
            },
            |doc, pool| val.raw[doc] == train.raw[pool],
        )
        .map_err(|e| SuiteError::Other {
            suite: KEY.to_string(),
            message: format!("few-shot sampling: {e}"),
        })?;
        Ok(mc::items_from_plan(
            KEY,
            "validation",
            planned,
            &val.docs,
            &train.docs,
            GENERATIVE_DESCRIPTION,
        ))
    }

    fn aggregate(&self, outcomes: &[ItemOutcome], mode: ScoringMode) -> SuiteScore {
        mc::acc_and_norm_score(KEY, self.info().benchmark_key, outcomes, mode)
    }
}

fn build(config: &PluginConfig) -> Result<Box<dyn Suite>, Error> {
    Ok(Box::new(Hellaswag::new(parse_config::<HellaswagConfig>(
        KEY, config,
    )?)))
}

impl epi_core::settings::PluginSettings for HellaswagConfig {
    fn example() -> Self {
        epi_core::settings::example_from(serde_json::json!({"limit": 100}))
    }
}

epi_core::inventory::submit! {
    PluginRegistration {
        key: KEY,
        description: "HellaSwag, 10-shot, acc/acc_norm exactly as lm-evaluation-harness (headline acc_norm)",
        factory: Factory::Suite(build),
        settings: epi_core::settings::Settings::of::<HellaswagConfig>,
        toml_aliases: &[],
        capabilities: &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testutil;
    use epi_core::registry::Registry;

    fn sha256(s: &str) -> String {
        crate::sha256_hex(s)
    }

    fn synthetic() -> PathBuf {
        crate::testdata().join("synthetic")
    }

    fn suite(data_dir: &Path, extra: serde_json::Value) -> Box<dyn Suite> {
        let mut cfg = serde_json::json!({ "data_dir": data_dir });
        if let (Some(c), Some(e)) = (cfg.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        Registry::builtin().suite(KEY, &cfg).unwrap()
    }

    #[test]
    fn preprocess_follows_the_spec_examples() {
        // lm-eval-tasks.md §3.2.
        assert_eq!(preprocess("thrown [title] away."), "thrown. away.");
        assert_eq!(
            preprocess("Preheat the oven.   Mix the flour."),
            "Preheat the oven.  Mix the flour."
        );
        assert_eq!(preprocess("  a [x] b [y]c  "), "a b c");
        assert_eq!(preprocess("a [b [c] d] e"), "a d] e");
        assert_eq!(preprocess("[a\nb] c [d]"), "[a\nb] c ");
        assert_eq!(preprocess("[title] x"), " x");
        let doc = RawDoc {
            ind: 1,
            activity_label: "Baking".into(),
            ctx_a: "Mix it.".into(),
            ctx_b: "tHE Batter IS".into(),
            ctx: String::new(),
            endings: vec!["a".into(), "b".into()],
            source_id: String::new(),
            split: "val".into(),
            split_type: "indomain".into(),
            label: Some("1".into()),
        };
        let d = process_doc(&doc, &Location::default()).unwrap();
        assert_eq!(d.text, "Baking: Mix it. The batter is");
        assert_eq!(d.gold, 1);
        // An empty ctx_b leaves a trailing space, which strip() removes.
        let d = process_doc(
            &RawDoc {
                ctx_b: String::new(),
                ..doc.clone()
            },
            &Location::default(),
        )
        .unwrap();
        assert_eq!(d.text, "Baking: Mix it.");
        let e = process_doc(
            &RawDoc {
                label: Some("4".into()),
                ..doc
            },
            &Location::file("v.jsonl").at_line(3),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("v.jsonl:3: label: `4` is not the index of one of the 2 endings"),
            "{e}"
        );
    }

    #[test]
    fn synthetic_documents_match_the_python_reference() {
        // Expected values: testdata/synthetic/lm_eval_reference.py (CPython 3.11.7).
        let data = load(Some(&synthetic())).unwrap();
        let v = &data.validation.docs;
        assert_eq!(
            v[0].text,
            "Baking cookies: How to bake cookies. Preheat the oven.  Mix the flour. The batter is"
        );
        assert_eq!(
            v[0].choices,
            [
                "thrown. away.",
                "poured into a greased pan.",
                "mixed brackets] well.",
                "[kept\nacross lines] as is."
            ]
        );
        assert_eq!(v[0].gold, 0);
        assert_eq!(
            v[1].text,
            "Personal Care and Style: How to tie a tie. Drape the tie around your neck. Let the wide end hang lower."
        );
        assert_eq!(v[1].choices[2], "Pull both ends up hard.");
        assert_eq!(v[1].gold, 2);
        assert_eq!(
            v[2].text,
            "Roof repair: A man climbs a ladder onto a roof. Über the chimney, he"
        );
        assert_eq!(v[2].gold, 1);

        let items = suite(&synthetic(), serde_json::json!({})).items().unwrap();
        let want = [
            "b0b5d1460c416116081da5659d1132383fe0b0c58ffc77f6001ce7ca5d8b656c",
            "eace424e9fb4e919193ec724c35660b9772f81a322e3911d0f6e5f01fc2653d3",
            "faa313210906b97f4892b50cc1f9a3555e9c7d9e1c5ba8a1fd34eac98480dfdb",
        ];
        for (item, want) in items.iter().zip(want) {
            assert_eq!(sha256(&item.context), want, "{}", item.doc_id);
        }
        assert_eq!(items[2].doc_id, "validation/2");
        assert_eq!(
            items[2].continuations()[0],
            " waves at the café owner below."
        );

        // Leaderboard v1: shuffled order [1, 0, 2], examples from the same generator.
        let items = suite(
            &synthetic(),
            serde_json::json!({ "fewshot": "leaderboard-v1" }),
        )
        .items()
        .unwrap();
        let order: Vec<&str> = items.iter().map(|i| i.doc_id.as_str()).collect();
        assert_eq!(order, ["validation/1", "validation/0", "validation/2"]);
        assert_eq!(
            sha256(&items[0].context),
            "02adc9f41f9ed0cdbf8f3e5f40a0201e2f625b1d8856aa0a1909b88b32dcc20a"
        );
        assert_eq!(
            sha256(&items[1].context),
            "6f280961926881470abf83794b706e684f0a039e48affe5bcb0f17db5424e929"
        );
        assert_eq!(
            sha256(&items[2].context),
            "e46c4299d709b1281f9d2775c99726a1b632c4fbdd7d0ae5b237f3c6aa627a91"
        );
    }

    #[test]
    fn generative_prompts_send_the_same_examples_lettered() {
        let s = suite(&synthetic(), serde_json::json!({ "shots": 2 }));
        assert_eq!(s.info().benchmark_key, "hellaswag_2shot");
        for item in s.items().unwrap() {
            let form = item.generative.as_ref().unwrap();
            assert_eq!(form.examples.len(), 2);
            assert!(crate::in_order(
                &item.context,
                form.examples
                    .iter()
                    .map(|e| format!("{} {}\n\n", e.question, e.choices[e.gold]))
            ));
            assert_eq!(form.question.question, item.question);
            assert_eq!(form.question.choices, item.choices);
            let p = epi_core::generative::generative_prompt(&item);
            assert!(p.starts_with(GENERATIVE_DESCRIPTION));
            assert!(p.ends_with(&format!(
                "{}\nA. {}\nB. {}\nC. {}\nD. {}\nAnswer:",
                item.question, item.choices[0], item.choices[1], item.choices[2], item.choices[3]
            )));
        }
    }

    /// A synthetic train split of the real size, so lm-eval's draw for document 0 can be checked
    /// against the spec's vector (`Random(1234).sample(range(39905), 11)`, first 10 kept).
    #[test]
    fn full_size_train_split_reproduces_the_spec_sampling_vector() {
        let dir = tempfile::tempdir().unwrap();
        let hs = dir.path().join("hellaswag");
        std::fs::create_dir_all(&hs).unwrap();
        let line = |i: usize, split: &str| {
            serde_json::json!({
                "ind": i, "activity_label": "Synthetic", "ctx_a": format!("Doc {i}."), "ctx_b": "then",
                "ctx": format!("Doc {i}. then"), "endings": ["a.", "b.", "c.", "d."],
                "source_id": format!("s~{i}"), "split": split, "split_type": "indomain", "label": i % 4
            })
            .to_string()
        };
        let train: Vec<String> = (0..39905).map(|i| line(i, "train")).collect();
        std::fs::write(hs.join("hellaswag_train.jsonl"), train.join("\n") + "\n").unwrap();
        std::fs::write(hs.join("hellaswag_val.jsonl"), line(0, "val") + "\n").unwrap();
        let items = suite(dir.path(), serde_json::json!({})).items().unwrap();
        let shots: Vec<usize> = items[0]
            .context
            .split("Synthetic: Doc ")
            .skip(1)
            .take(10)
            .map(|s| s.split('.').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(
            shots,
            [28883, 7657, 490, 5940, 38156, 2288, 5500, 6450, 23241, 15519]
        );
        assert!(items[0].context.ends_with("\n\nSynthetic: Doc 0. Then"));
        assert_eq!(
            suite(dir.path(), serde_json::json!({}))
                .info()
                .benchmark_key,
            "hellaswag_10shot"
        );
    }

    #[test]
    fn the_evaluated_document_is_dropped_from_its_own_examples() {
        // With the validation file as the train file, every drawn copy of the evaluated document is
        // removed (lm-eval's `x != doc` filter); 10 examples remain.
        let dir = tempfile::tempdir().unwrap();
        let hs = dir.path().join("hellaswag");
        std::fs::create_dir_all(&hs).unwrap();
        let train =
            std::fs::read_to_string(synthetic().join("hellaswag/hellaswag_train.jsonl")).unwrap();
        let val =
            std::fs::read_to_string(synthetic().join("hellaswag/hellaswag_val.jsonl")).unwrap();
        let first_val = val.lines().next().unwrap();
        // Pool: 10 train documents and the evaluated one; 11 drawn, so it is always among them.
        let pool: Vec<&str> = train.lines().take(10).chain([first_val]).collect();
        std::fs::write(hs.join("hellaswag_train.jsonl"), pool.join("\n")).unwrap();
        std::fs::write(hs.join("hellaswag_val.jsonl"), first_val).unwrap();
        let items = suite(dir.path(), serde_json::json!({})).items().unwrap();
        assert_eq!(items[0].context.matches("\n\n").count(), 10);
        assert_eq!(
            items[0].context.matches("Baking cookies:").count(),
            1,
            "only the question itself"
        );
    }

    #[test]
    fn parquet_export_gives_the_same_items() {
        let dir = tempfile::tempdir().unwrap();
        for (file, split) in [
            ("hellaswag_train.jsonl", "train"),
            ("hellaswag_val.jsonl", "validation"),
        ] {
            let raw: Vec<RawDoc> =
                crate::data::read_jsonl::<RawDoc>(KEY, &synthetic().join("hellaswag").join(file))
                    .unwrap()
                    .into_iter()
                    .map(|(_, d)| d)
                    .collect();
            let col = |f: fn(&RawDoc) -> &String| {
                testutil::strings(&raw.iter().map(f).collect::<Vec<_>>())
            };
            testutil::write(
                &dir.path()
                    .join(format!("hellaswag/data/{split}-00000-of-00001.parquet")),
                vec![
                    (
                        "ind",
                        testutil::int32s(&raw.iter().map(|d| d.ind as i32).collect::<Vec<_>>()),
                    ),
                    ("activity_label", col(|d| &d.activity_label)),
                    ("ctx_a", col(|d| &d.ctx_a)),
                    ("ctx_b", col(|d| &d.ctx_b)),
                    ("ctx", col(|d| &d.ctx)),
                    (
                        "endings",
                        testutil::string_lists(
                            &raw.iter().map(|d| d.endings.clone()).collect::<Vec<_>>(),
                        ),
                    ),
                    ("source_id", col(|d| &d.source_id)),
                    ("split", col(|d| &d.split)),
                    ("split_type", col(|d| &d.split_type)),
                    (
                        "label",
                        testutil::strings(
                            &raw.iter()
                                .map(|d| d.label.clone().unwrap())
                                .collect::<Vec<_>>(),
                        ),
                    ),
                ],
            );
        }
        let from_parquet = suite(dir.path(), serde_json::json!({})).items().unwrap();
        let from_jsonl = suite(&synthetic(), serde_json::json!({})).items().unwrap();
        assert_eq!(from_parquet, from_jsonl);
        let s = suite(dir.path(), serde_json::json!({}));
        s.items().unwrap();
        assert!(
            s.info()
                .data
                .contains("Hugging Face Rowan/hellaswag parquet"),
            "{}",
            s.info().data
        );
    }

    #[test]
    fn missing_data_lists_every_place_looked() {
        let dir = tempfile::tempdir().unwrap();
        let e = suite(dir.path(), serde_json::json!({}))
            .items()
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("hellaswag: data not found"), "{e}");
        assert!(e.contains("hellaswag/hellaswag_{train,val}.jsonl"), "{e}");
        assert!(
            e.contains("hellaswag/data/{train,validation}{-*.parquet,/*.parquet}"),
            "{e}"
        );
        assert!(e.contains("epi datasets fetch --suite hellaswag"), "{e}");
    }
}
