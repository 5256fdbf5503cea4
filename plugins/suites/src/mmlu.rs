//! `mmlu`: Massive Multitask Language Understanding — lm-eval's 57 `mmlu_<subject>` tasks
//! (`lm-eval-tasks.md` §3.3): the test split of each subject, the first 5 questions of its `dev`
//! split as examples (`first_n`), continuations `" A"`…`" D"`; `acc`.
//!
//! Two aggregates are reported, each labelled: `acc`, the unweighted mean of the subject
//! accuracies (the Open LLM Leaderboard v1 number, and the headline), and `acc_weighted`, the
//! mean over all questions (lm-eval's `mmlu` group, `weight_by_size: True`). Per-subject
//! accuracies are in `groups`.

use crate::data::{
    self, describe, describe_parquet, io_error, parquet_shards, read_parquet_shards, search_dirs,
};
use crate::fewshot::{plan, FewshotSelection, PlanInput, Sampler};
use crate::mc::{self, correct, mean_metric, render_context, McDoc, TARGET_DELIMITER};
use crate::pystr::strip;
use epi_core::backend::ScoringMode;
use epi_core::error::{InputError, Location};
use epi_core::generative::LetteredQuestion;
use epi_core::metrics::{effective_n, wilson_ci95};
use epi_core::registry::{parse_config, Factory, PluginConfig, PluginRegistration};
use epi_core::suite::{
    ItemOutcome, MetricValue, Suite, SuiteError, SuiteInfo, SuiteItem, SuiteScore,
};
use epi_core::Error;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Registry key.
pub const KEY: &str = "mmlu";

/// Examples per question by default; also the most there are (each `dev` split has 5).
pub const DEFAULT_SHOTS: usize = 5;

/// Directory under the data directory.
pub const SUBDIR: &str = "mmlu";

/// The 57 subjects, in lm-eval's (alphabetical) order.
pub const SUBJECTS: [&str; 57] = [
    "abstract_algebra",
    "anatomy",
    "astronomy",
    "business_ethics",
    "clinical_knowledge",
    "college_biology",
    "college_chemistry",
    "college_computer_science",
    "college_mathematics",
    "college_medicine",
    "college_physics",
    "computer_security",
    "conceptual_physics",
    "econometrics",
    "electrical_engineering",
    "elementary_mathematics",
    "formal_logic",
    "global_facts",
    "high_school_biology",
    "high_school_chemistry",
    "high_school_computer_science",
    "high_school_european_history",
    "high_school_geography",
    "high_school_government_and_politics",
    "high_school_macroeconomics",
    "high_school_mathematics",
    "high_school_microeconomics",
    "high_school_physics",
    "high_school_psychology",
    "high_school_statistics",
    "high_school_us_history",
    "high_school_world_history",
    "human_aging",
    "human_sexuality",
    "international_law",
    "jurisprudence",
    "logical_fallacies",
    "machine_learning",
    "management",
    "marketing",
    "medical_genetics",
    "miscellaneous",
    "moral_disputes",
    "moral_scenarios",
    "nutrition",
    "philosophy",
    "prehistory",
    "professional_accounting",
    "professional_law",
    "professional_medicine",
    "professional_psychology",
    "public_relations",
    "security_studies",
    "sociology",
    "us_foreign_policy",
    "virology",
    "world_religions",
];

/// The answer letters, which are also the choices (`doc_to_choice: ["A", "B", "C", "D"]`).
const LETTERS: [&str; 4] = ["A", "B", "C", "D"];

/// Settings of `[suite.mmlu]`.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MmluConfig {
    /// Data directory (the suite looks in `<data_dir>/mmlu`, then `<data_dir>`).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Evaluate only the first N test questions **of each subject** (lm-eval applies `--limit`
    /// per subject task, so N × 57 questions in all).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Examples per question (default 5, at most 5).
    #[serde(default)]
    pub shots: Option<usize>,
    /// Few-shot selection: `lm-eval` (default) or `leaderboard-v1` (for MMLU it changes only the
    /// order of the questions, and so which ones a limit keeps: the examples are always the first
    /// of `dev`).
    #[serde(default)]
    pub fewshot: FewshotSelection,
    /// Only these subjects (default: all 57).
    #[serde(default)]
    pub subjects: Option<Vec<String>>,
}

/// One subject's `dev` and `test` splits, rendered.
#[derive(Debug, Clone)]
pub struct SubjectData {
    /// The subject (`abstract_algebra`).
    pub subject: String,
    /// `dev`: the examples, in file order.
    pub dev: Vec<McDoc>,
    /// `test`: the evaluated questions, in file order.
    pub test: Vec<McDoc>,
    /// Which files were read.
    pub source: String,
}

/// A row of the Hugging Face `cais/mmlu` parquet export.
#[derive(Debug, Deserialize)]
struct HfRow {
    question: String,
    choices: Vec<String>,
    answer: i64,
}

/// lm-eval's `doc_to_text`:
/// `{{question.strip()}}\nA. {{choices[0]}}\nB. …\nD. {{choices[3]}}\nAnswer:`.
fn to_doc(question: &str, choices: &[String], answer: usize) -> McDoc {
    let mut text = strip(question).to_string();
    for (letter, choice) in LETTERS.iter().zip(choices) {
        text.push_str(&format!("\n{letter}. {choice}"));
    }
    text.push_str("\nAnswer:");
    McDoc {
        text,
        choices: LETTERS.iter().map(|l| l.to_string()).collect(),
        gold: answer,
        lettered: LetteredQuestion {
            question: strip(question).to_string(),
            choices: choices.to_vec(),
            gold: answer,
        },
    }
}

/// lm-eval's per-subject `description`.
pub fn description(subject: &str) -> String {
    format!(
        "The following are multiple choice questions (with answers) about {}.\n\n",
        subject.replace('_', " ")
    )
}

/// Reads an original MMLU CSV: no header, `question,A,B,C,D,answer` with RFC 4180 quoting
/// (fields contain newlines), the answer a letter.
fn read_csv(path: &Path) -> Result<Vec<McDoc>, SuiteError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_path(path)
        .map_err(|e| io_error(KEY, path, e))?;
    let mut out = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map(|p| p.line()).unwrap_or(0);
            let loc = if line > 0 {
                Location::file(path).at_line(line)
            } else {
                Location::file(path)
            };
            InputError::new(loc, format!("not valid CSV: {e}"))
        })?;
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        let at = Location::file(path).at_line(line);
        if record.len() != 6 {
            return Err(InputError::new(
                at,
                format!(
                    "{} fields, expected 6 (question, A, B, C, D, answer letter)",
                    record.len()
                ),
            )
            .into());
        }
        let letter = &record[5];
        let answer = LETTERS.iter().position(|l| *l == letter).ok_or_else(|| {
            InputError::new(
                at.clone().field("answer"),
                format!("`{letter}`, expected one of A, B, C, D"),
            )
        })?;
        let choices: Vec<String> = (1..5).map(|i| record[i].to_string()).collect();
        out.push(to_doc(&record[0], &choices, answer));
    }
    Ok(out)
}

fn read_hf(paths: &[PathBuf]) -> Result<Vec<McDoc>, SuiteError> {
    let rows = read_parquet_shards::<HfRow>(KEY, paths)?;
    rows.into_iter()
        .enumerate()
        .map(|(i, r)| {
            let at = Location::file(&paths[0]).field(format!("row {i}"));
            if r.choices.len() != 4 {
                return Err(InputError::new(
                    at.field("choices"),
                    format!("{} choices, expected 4", r.choices.len()),
                )
                .into());
            }
            let answer = usize::try_from(r.answer)
                .ok()
                .filter(|&a| a < 4)
                .ok_or_else(|| {
                    InputError::new(
                        at.clone().field("answer"),
                        format!("{}, expected 0-3", r.answer),
                    )
                })?;
            Ok(to_doc(&r.question, &r.choices, answer))
        })
        .collect()
}

enum SubjectFiles {
    Csv {
        dev: PathBuf,
        test: PathBuf,
    },
    Parquet {
        dev: Vec<PathBuf>,
        test: Vec<PathBuf>,
    },
}

/// Where to look for one subject, in order: the original CSVs `dev/<s>_dev.csv` and
/// `test/<s>_test.csv`, then the Hugging Face export `<s>/{dev,test}-*.parquet`.
fn find_subject(dirs: &[PathBuf], subject: &str) -> Result<(SubjectFiles, String), Vec<String>> {
    let mut tried = Vec::new();
    for d in dirs {
        let dev = d.join("dev").join(format!("{subject}_dev.csv"));
        let test = d.join("test").join(format!("{subject}_test.csv"));
        if dev.is_file() && test.is_file() {
            let desc = format!("original CSV {}", d.display());
            return Ok((SubjectFiles::Csv { dev, test }, desc));
        }
        tried.push(describe(
            &d.join(format!("{{dev,test}}/{subject}_{{dev,test}}.csv")),
            "original MMLU CSVs",
        ));
        let sd = d.join(subject);
        let (dev, test) = (parquet_shards(&sd, "dev"), parquet_shards(&sd, "test"));
        if !dev.is_empty() && !test.is_empty() {
            let desc = format!("Hugging Face cais/mmlu parquet {}", d.display());
            return Ok((SubjectFiles::Parquet { dev, test }, desc));
        }
        tried.push(describe_parquet(&sd, "dev,test", "Hugging Face cais/mmlu"));
    }
    Err(tried)
}

/// Loads the subjects asked for (in [`SUBJECTS`] order). Missing subjects are one error that
/// names them all and where the first was looked for.
pub fn load(data_dir: Option<&Path>, subjects: &[&str]) -> Result<Vec<SubjectData>, SuiteError> {
    let dirs = search_dirs(data_dir, SUBDIR);
    let mut found = Vec::new();
    let mut missing: Vec<&str> = Vec::new();
    let mut first_tried = Vec::new();
    for &s in subjects {
        match find_subject(&dirs, s) {
            Ok(f) => found.push((s, f)),
            Err(tried) => {
                if missing.is_empty() {
                    first_tried = tried;
                }
                missing.push(s);
            }
        }
    }
    if !missing.is_empty() {
        let mut tried = first_tried;
        if missing.len() > 1 {
            tried.push(format!(
                "… and likewise for {} more subject(s): {}",
                missing.len() - 1,
                missing[1..].join(", ")
            ));
        }
        if data_dir.is_none() && dirs.is_empty() {
            tried.push("(no user data directory could be determined on this system)".into());
        }
        return Err(data::missing(KEY, &tried, data_dir));
    }
    let mut out = Vec::with_capacity(found.len());
    for (subject, (files, source)) in found {
        let (dev, test) = match &files {
            SubjectFiles::Csv { dev, test } => (read_csv(dev)?, read_csv(test)?),
            SubjectFiles::Parquet { dev, test } => (read_hf(dev)?, read_hf(test)?),
        };
        out.push(SubjectData {
            subject: subject.to_string(),
            dev,
            test,
            source,
        });
    }
    Ok(out)
}

/// The MMLU suite.
#[derive(Debug)]
pub struct Mmlu {
    config: MmluConfig,
    subjects: Vec<&'static str>,
    loaded: OnceLock<Vec<SubjectData>>,
}

impl Mmlu {
    /// A suite with these settings; checks the subject names and the shot count (no I/O).
    pub fn new(config: MmluConfig) -> Result<Mmlu, Error> {
        let subjects: Vec<&'static str> = match &config.subjects {
            None => SUBJECTS.to_vec(),
            Some(list) => {
                if list.is_empty() {
                    return Err(Error::Plugin {
                        plugin: KEY.into(),
                        message:
                            "configuration: subjects: the list is empty; leave it out to run all 57"
                                .into(),
                    });
                }
                let unknown: Vec<&String> = list
                    .iter()
                    .filter(|s| !SUBJECTS.contains(&s.as_str()))
                    .collect();
                if !unknown.is_empty() {
                    return Err(Error::Plugin {
                        plugin: KEY.into(),
                        message: format!(
                            "configuration: subjects: unknown subject(s) {}; expected names from: {}",
                            unknown.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", "),
                            SUBJECTS.join(", ")
                        ),
                    });
                }
                SUBJECTS
                    .iter()
                    .copied()
                    .filter(|s| list.iter().any(|l| l == s))
                    .collect()
            }
        };
        let shots = config.shots.unwrap_or(DEFAULT_SHOTS);
        if shots > DEFAULT_SHOTS {
            return Err(Error::Plugin {
                plugin: KEY.into(),
                message: format!(
                    "configuration: shots: {shots}, but each subject's dev split has only {DEFAULT_SHOTS} examples"
                ),
            });
        }
        Ok(Mmlu {
            config,
            subjects,
            loaded: OnceLock::new(),
        })
    }

    fn shots(&self) -> usize {
        self.config.shots.unwrap_or(DEFAULT_SHOTS)
    }

    fn data(&self) -> Result<&Vec<SubjectData>, SuiteError> {
        if let Some(d) = self.loaded.get() {
            return Ok(d);
        }
        let d = load(self.config.data_dir.as_deref(), &self.subjects)?;
        Ok(self.loaded.get_or_init(|| d))
    }
}

/// The subject of an outcome: its `subject`, else the first part of its `doc_id`.
fn subject_of(o: &ItemOutcome) -> String {
    o.subject
        .clone()
        .unwrap_or_else(|| o.doc_id.split('/').next().unwrap_or("").to_string())
}

impl Suite for Mmlu {
    fn info(&self) -> SuiteInfo {
        let source = match self.loaded.get() {
            Some(d) => {
                let mut sources: Vec<&str> = d.iter().map(|s| s.source.as_str()).collect();
                sources.dedup();
                sources.join("; ")
            }
            None => "cais/mmlu (not loaded yet)".to_string(),
        };
        SuiteInfo {
            key: KEY.to_string(),
            benchmark_key: format!("mmlu_{}shot", self.shots()),
            shots: self.shots(),
            has_accuracy: true,
            data: format!(
                "MMLU test split, {} subject(s), {}-shot from dev (first_n), question order {}; {source}",
                self.subjects.len(),
                self.shots(),
                self.config.fewshot.as_str()
            ),
        }
    }

    fn items(&self) -> Result<Vec<SuiteItem>, SuiteError> {
        let mut items = Vec::new();
        for s in self.data()? {
            let planned = plan(
                self.config.fewshot,
                Sampler::FirstN,
                PlanInput {
                    n_docs: s.test.len(),
                    n_pool: s.dev.len(),
                    shots: self.shots(),
                    limit: self.config.limit,
                },
                |_, _| false,
            )
            .map_err(|e| SuiteError::Other {
                suite: KEY.to_string(),
                message: format!("{}: few-shot examples: {e}", s.subject),
            })?;
            let desc = description(&s.subject);
            for p in planned {
                let doc = &s.test[p.doc];
                let shots = || p.shots.iter().map(|&i| &s.dev[i]);
                items.push(SuiteItem {
                    suite: KEY.to_string(),
                    doc_id: format!("{}/test/{}", s.subject, p.doc),
                    subject: Some(s.subject.clone()),
                    context: render_context(&desc, shots(), doc),
                    question: format!("{desc}{}", doc.text),
                    choices: doc.choices.clone(),
                    target_delimiter: TARGET_DELIMITER.to_string(),
                    gold: Some(doc.gold),
                    // lm-eval's generative MMLU (`mmlu_*_generative`): the same text, examples
                    // answered by their letters, so the prompt equals the context above.
                    generative: Some(mc::generative_form(&desc, shots(), doc)),
                });
            }
        }
        Ok(items)
    }

    fn aggregate(&self, outcomes: &[ItemOutcome], mode: ScoringMode) -> SuiteScore {
        let (n_failed, n_unparseable) = mc::count_problems(outcomes);
        let mut by_subject: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for o in outcomes {
            by_subject
                .entry(subject_of(o))
                .or_default()
                .push(correct(o, false));
        }
        let generative = if mode == ScoringMode::Generative {
            ", generative letter answers"
        } else {
            ""
        };
        let mut groups = BTreeMap::new();
        let mut subject_means = Vec::with_capacity(by_subject.len());
        for (subject, values) in &by_subject {
            if let Some(m) = mean_metric(
                values,
                format!("accuracy over {} question(s){generative}", values.len()),
            ) {
                subject_means.push(m.value);
                groups.insert(subject.clone(), BTreeMap::from([("acc".to_string(), m)]));
            }
        }
        let mut metrics = BTreeMap::new();
        if !subject_means.is_empty() {
            // The mean of the subject means is a weighted share of correct items (each item
            // weighs 1 / (S · n_s)): its Wilson interval over Kish's effective number of items,
            // which does not collapse at 0 or all correct.
            let s = by_subject.len() as f64;
            let weights: Vec<f64> = by_subject
                .values()
                .flat_map(|v| std::iter::repeat_n(1.0 / (s * v.len() as f64), v.len()))
                .collect();
            let value = subject_means.iter().sum::<f64>() / subject_means.len() as f64;
            let ci95 = Some(wilson_ci95(value, effective_n(&weights)));
            metrics.insert(
                "acc".to_string(),
                MetricValue {
                    value,
                    ci95,
                    label: format!(
                        "unweighted mean of {} subject accuracies (Open LLM Leaderboard v1){generative}; \
                         95 % Wilson score interval over Kish's effective number of items",
                        subject_means.len()
                    ),
                },
            );
            let all: Vec<f64> = by_subject.values().flatten().copied().collect();
            if let Some(m) = mean_metric(
                &all,
                format!(
                    "mean over {} questions, subjects weighted by size (lm-eval `mmlu` group){generative}",
                    all.len()
                ),
            ) {
                metrics.insert("acc_weighted".to_string(), m);
            }
        }
        SuiteScore {
            suite: KEY.to_string(),
            benchmark_key: self.info().benchmark_key,
            mode,
            n_items: outcomes.len(),
            n_failed,
            n_unparseable,
            metrics,
            headline: "acc".to_string(),
            groups,
        }
    }
}

fn build(config: &PluginConfig) -> Result<Box<dyn Suite>, Error> {
    Ok(Box::new(Mmlu::new(parse_config::<MmluConfig>(
        KEY, config,
    )?)?))
}

impl epi_core::settings::PluginSettings for MmluConfig {
    fn example() -> Self {
        epi_core::settings::example_from(
            serde_json::json!({"limit": 100, "subjects": ["abstract_algebra", "anatomy"]}),
        )
    }
}

epi_core::inventory::submit! {
    PluginRegistration {
        key: KEY,
        description: "MMLU, 57 subjects, 5-shot, acc exactly as lm-evaluation-harness (headline: unweighted mean of subjects)",
        factory: Factory::Suite(build),
        settings: epi_core::settings::Settings::of::<MmluConfig>,
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

    fn outcome(subject: &str, i: usize, gold: usize, prediction: usize) -> ItemOutcome {
        ItemOutcome {
            doc_id: format!("{subject}/test/{i}"),
            subject: Some(subject.to_string()),
            gold: Some(gold),
            prediction: Some(prediction),
            prediction_norm: Some(prediction),
            failed: false,
            unparseable: false,
        }
    }

    #[test]
    fn contexts_match_lm_eval_test_vectors() {
        // lm-eval-tasks.md §3.4: real lm_eval 0.4.13 on the same CSVs.
        let s = suite(serde_json::json!({
            "subjects": ["high_school_european_history", "abstract_algebra"], "limit": 2
        }));
        let items = s.items().unwrap();
        assert_eq!(items.len(), 4, "limit 2 applies per subject");
        let aa: Vec<&SuiteItem> = items
            .iter()
            .filter(|i| i.subject.as_deref() == Some("abstract_algebra"))
            .collect();
        assert_eq!(aa[0].doc_id, "abstract_algebra/test/0");
        assert_eq!(aa[0].context.chars().count(), 993);
        assert_eq!(
            sha256(&aa[0].context),
            "ff9b00310e214beacf4b324da8c9e6c1de4e49cb422f1bcb1f7037b78f40a2a3"
        );
        assert!(aa[0].context.starts_with(
            "The following are multiple choice questions (with answers) about abstract algebra.\n\n\
             Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer: B\n\n"
        ));
        assert!(aa[0].context.ends_with(
            "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\nA. 0\nB. 4\nC. 2\nD. 6\nAnswer:"
        ));
        assert_eq!(aa[0].continuations(), [" A", " B", " C", " D"]);
        assert_eq!(aa[0].gold, Some(1));
        assert_eq!(aa[1].context.chars().count(), 978);
        assert_eq!(
            sha256(&aa[1].context),
            "2885f321f1938150f73629d8cfbbe63944e1aa460d0d37f47683c5c75a41d18f"
        );
        assert_eq!(aa[1].gold, Some(2));
        let h = items
            .iter()
            .find(|i| i.doc_id == "high_school_european_history/test/0")
            .unwrap();
        assert_eq!(h.context.chars().count(), 12700);
        assert_eq!(
            sha256(&h.context),
            "4c79b1d384787f351ff849ead8d44f79782043584df2fcfa2790e08e09a41476"
        );
        assert_eq!(h.gold, Some(2));
        // Subjects run in lm-eval's alphabetical order whatever order the config lists them in.
        assert_eq!(items[0].subject.as_deref(), Some("abstract_algebra"));
        // The question is the zero-shot context.
        assert!(aa[0].question.starts_with("The following are multiple choice questions (with answers) about abstract algebra.\n\nFind the degree"));
    }

    /// lm-eval's generative MMLU (`mmlu_*_generative`, `generate_until`) renders the same text as
    /// the log-likelihood task: the prompt is the context, byte for byte, and the choices are
    /// listed once, with their texts (the bug: `A. A … D. D` appended under `A. 0 … D. 6`).
    #[test]
    fn generative_prompts_are_lm_evals_generative_mmlu() {
        let s = suite(serde_json::json!({ "subjects": ["abstract_algebra"], "limit": 3 }));
        for item in s.items().unwrap() {
            let p = epi_core::generative::generative_prompt(&item);
            assert_eq!(p, item.context, "{}", item.doc_id);
            assert_eq!(epi_core::generative::shots_sent(&item), 5);
            assert!(!p.contains("\nA. A\n"), "{p}");
            assert_eq!(
                p.matches("\nA. ").count(),
                6,
                "five examples and the question"
            );
        }
        let first = &s.items().unwrap()[0];
        let form = first.generative.as_ref().unwrap();
        assert_eq!(form.question.choices, ["0", "4", "2", "6"]);
        assert_eq!(form.examples[0].choices, ["0", "1", "2", "3"]);
        assert_eq!(form.examples[0].gold, 1);

        let zero =
            suite(serde_json::json!({ "subjects": ["abstract_algebra"], "limit": 1, "shots": 0 }));
        assert_eq!(zero.info().benchmark_key, "mmlu_0shot");
        let item = &zero.items().unwrap()[0];
        assert_eq!(epi_core::generative::shots_sent(item), 0);
        assert_eq!(epi_core::generative::generative_prompt(item), item.context);
        assert!(!item.context.contains("Answer: "));
    }

    #[test]
    fn every_dev_split_reads_with_five_examples() {
        let data = load(Some(&crate::testdata()), &SUBJECTS[..1]).unwrap();
        assert_eq!(data[0].test.len(), 100);
        for s in SUBJECTS {
            let dir = crate::testdata().join("mmlu/dev");
            let dev = read_csv(&dir.join(format!("{s}_dev.csv"))).unwrap();
            assert_eq!(dev.len(), 5, "{s}");
            assert!(dev
                .iter()
                .all(|d| d.text.ends_with("\nAnswer:") && d.gold < 4));
        }
    }

    #[test]
    fn missing_subjects_are_named_with_where_they_were_looked_for() {
        let s =
            suite(serde_json::json!({ "subjects": ["anatomy", "virology", "abstract_algebra"] }));
        let e = s.items().unwrap_err().to_string();
        assert!(e.contains("mmlu: data not found"), "{e}");
        assert!(e.contains("anatomy_{dev,test}.csv"), "{e}");
        assert!(
            e.contains("anatomy/{dev,test}{-*.parquet,/*.parquet}"),
            "{e}"
        );
        assert!(e.contains("1 more subject(s): virology"), "{e}");
        assert!(e.contains("epi datasets fetch --suite mmlu"), "{e}");
    }

    #[test]
    fn configuration_is_checked_without_reading_data() {
        let r = Registry::builtin();
        let e = r
            .suite(
                KEY,
                &serde_json::json!({ "subjects": ["astrology"], "data_dir": "/nonexistent" }),
            )
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("unknown subject(s) `astrology`"),
            "{e}"
        );
        let e = r
            .suite(KEY, &serde_json::json!({ "shots": 6 }))
            .err()
            .unwrap();
        assert!(e.to_string().contains("only 5 examples"), "{e}");
        let s = r
            .suite(
                KEY,
                &serde_json::json!({ "shots": 0, "data_dir": "/nonexistent" }),
            )
            .unwrap();
        assert_eq!(s.info().benchmark_key, "mmlu_0shot");
        assert_eq!(
            r.suite(KEY, &serde_json::Value::Null)
                .unwrap()
                .info()
                .benchmark_key,
            "mmlu_5shot"
        );
    }

    #[test]
    fn bad_csv_rows_name_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("mmlu/dev")).unwrap();
        std::fs::create_dir_all(dir.path().join("mmlu/test")).unwrap();
        let dev = dir.path().join("mmlu/dev/anatomy_dev.csv");
        std::fs::write(&dev, "q1,a,b,c,d,A\n\"multi\nline\",a,b,c,d,E\n").unwrap();
        std::fs::write(
            dir.path().join("mmlu/test/anatomy_test.csv"),
            "q,a,b,c,d,B\n",
        )
        .unwrap();
        let e = load(Some(dir.path()), &["anatomy"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("anatomy_dev.csv:2: answer: `E`, expected one of A, B, C, D"),
            "{e}"
        );
        std::fs::write(&dev, "q1,a,b,c,A\n").unwrap();
        let e = load(Some(dir.path()), &["anatomy"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("anatomy_dev.csv:1: 5 fields, expected 6"), "{e}");
    }

    #[test]
    fn aggregate_reports_both_means_and_subjects() {
        let s = suite(serde_json::json!({}));
        // Subject a: 1 of 1 right; subject b: 1 of 3 right.
        let mut outcomes = vec![
            outcome("a", 0, 1, 1),
            outcome("b", 0, 0, 0),
            outcome("b", 1, 0, 2),
        ];
        let mut failed = outcome("b", 2, 3, 3);
        failed.failed = true; // right answer, but the query failed: counts as wrong
        outcomes.push(failed);
        let score = s.aggregate(&outcomes, ScoringMode::Loglikelihood);
        assert_eq!(score.headline, "acc");
        assert_eq!(score.benchmark_key, "mmlu_5shot");
        let acc = &score.metrics["acc"];
        assert!(
            (acc.value - (1.0 + 1.0 / 3.0) / 2.0).abs() < 1e-12,
            "{acc:?}"
        );
        assert!(
            acc.label.contains("unweighted mean of 2 subject")
                && acc.label.contains("Leaderboard v1")
        );
        let w = &score.metrics["acc_weighted"];
        assert!((w.value - 0.5).abs() < 1e-12, "{w:?}");
        assert!(w.label.contains("weighted by size") && w.label.contains("4 questions"));
        assert_eq!(score.groups["a"]["acc"].value, 1.0);
        assert!((score.groups["b"]["acc"].value - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(
            (score.n_items, score.n_failed, score.n_unparseable),
            (4, 1, 0)
        );
        assert_eq!(score.headline_value(), Some(acc.value));
        let (lo, hi) = acc.ci95.unwrap();
        assert!(
            (0.0..=acc.value).contains(&lo) && (acc.value..=1.0).contains(&hi),
            "{lo} {hi}"
        );
        assert!(!score.metrics.contains_key("acc_norm"));
    }

    #[test]
    fn unweighted_interval_brackets_the_mean_of_subjects() {
        let s = suite(serde_json::json!({}));
        // 57 subjects of different sizes and accuracies.
        let mut outcomes = Vec::new();
        for (k, subject) in SUBJECTS.iter().enumerate() {
            let n = 20 + 7 * k;
            for i in 0..n {
                let right = (i * 13 + k) % 10 < 3 + k % 6;
                outcomes.push(outcome(subject, i, 0, if right { 0 } else { 1 }));
            }
        }
        let score = s.aggregate(&outcomes, ScoringMode::Loglikelihood);
        let acc = &score.metrics["acc"];
        let direct: f64 = score.groups.values().map(|g| g["acc"].value).sum::<f64>() / 57.0;
        assert!((acc.value - direct).abs() < 1e-12);
        let (lo, hi) = acc.ci95.unwrap();
        assert!(
            lo < acc.value && acc.value < hi && hi - lo < 0.1,
            "{lo} {} {hi}",
            acc.value
        );
        assert!(
            (acc.value - score.metrics["acc_weighted"].value).abs() > 1e-3,
            "sizes differ, so the means do"
        );
    }
}
