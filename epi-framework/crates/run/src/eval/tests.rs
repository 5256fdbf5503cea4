//! Tests of the evaluation runner: strict answer parsing, prompts, mode choice, and whole suite
//! runs against a toy backend (concurrency, failures, a dead server, a dropped run).

use super::*;
use epi_core::backend::{
    BackendInfo, ContinuationScore, GenerateRequest, GenerateResponse, InferenceBackend,
    LoglikelihoodRequest, LoglikelihoodResponse, TokenCountSource,
};
use epi_core::suite::MetricValue;
use epi_core::suite::SuiteItem;
use epi_records::RecordSink;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

fn item(i: usize, gold: usize) -> SuiteItem {
    SuiteItem {
        suite: "toy".into(),
        doc_id: format!("test/{i}"),
        subject: None,
        context: format!("Question: q{i}?\nAnswer:"),
        question: format!("Question: q{i}?\nAnswer:"),
        choices: vec![
            "red".into(),
            "green".into(),
            "blue".into(),
            "yellowish".into(),
        ],
        target_delimiter: " ".into(),
        gold: Some(gold),
        generative: None,
    }
}

struct ToySuite;
impl Suite for ToySuite {
    fn info(&self) -> SuiteInfo {
        SuiteInfo {
            key: "toy".into(),
            benchmark_key: "toy_0shot".into(),
            shots: 0,
            has_accuracy: true,
            data: "toy".into(),
        }
    }
    fn items(&self) -> Result<Vec<SuiteItem>, SuiteError> {
        Ok((0..6).map(|i| item(i, i % 4)).collect())
    }
    fn aggregate(&self, outcomes: &[ItemOutcome], mode: ScoringMode) -> SuiteScore {
        let acc = outcomes
            .iter()
            .filter(|o| o.prediction.is_some() && o.prediction == o.gold)
            .count() as f64
            / outcomes.len().max(1) as f64;
        let mut metrics = BTreeMap::new();
        metrics.insert(
            "acc".into(),
            MetricValue {
                value: acc,
                ci95: None,
                label: "mean".into(),
            },
        );
        SuiteScore {
            suite: "toy".into(),
            benchmark_key: "toy_0shot".into(),
            mode,
            n_items: outcomes.len(),
            n_failed: outcomes.iter().filter(|o| o.failed).count(),
            n_unparseable: outcomes.iter().filter(|o| o.unparseable).count(),
            metrics,
            headline: "acc".into(),
            groups: BTreeMap::new(),
        }
    }
}

/// A backend whose answers are a function of the document number; item 3 fails; with
/// `die_at`, that item reports the server unavailable.
struct Toy {
    ll: bool,
    concurrency: usize,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    die_at: Option<usize>,
    prompts: Mutex<Vec<String>>,
}

fn doc_no(text: &str) -> usize {
    let p = text.find("Question: q").unwrap() + "Question: q".len();
    text[p..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .unwrap()
}

#[async_trait::async_trait]
impl InferenceBackend for Toy {
    async fn start(&mut self) -> Result<BackendInfo, BackendError> {
        Ok(BackendInfo::default())
    }
    fn capabilities(&self) -> BackendCapabilities {
        BackendCapabilities {
            loglikelihood: if self.ll {
                LoglikelihoodSupport::TopN { n: 5 }
            } else {
                LoglikelihoodSupport::None
            },
            completions: true,
            chat: true,
            streaming: false,
            tokenizer: false,
            max_concurrency: self.concurrency,
        }
    }
    async fn generate(&self, r: &GenerateRequest) -> Result<GenerateResponse, BackendError> {
        self.prompts.lock().unwrap().push(r.prompt.clone());
        let n = doc_no(&r.prompt);
        let text = match n {
            0 => " A.".to_string(),
            1 => "The answer is B".to_string(),
            2 => "I think C".to_string(),
            3 => {
                return Err(BackendError::Timeout {
                    backend: "toy".into(),
                    attempts: 3,
                    message: "slow".into(),
                })
            }
            _ => format!("{}", choice_letter(n % 4)),
        };
        Ok(GenerateResponse {
            text,
            tokens_in: Some(10),
            tokens_out: Some(2),
            token_count_source: TokenCountSource::Usage,
            cached_tokens: None,
            ttft_s: None,
            latency_s: 0.0,
            finish_reason: None,
        })
    }
    async fn loglikelihood(
        &self,
        r: &LoglikelihoodRequest,
    ) -> Result<LoglikelihoodResponse, BackendError> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        let n = doc_no(&r.context);
        if Some(n) == self.die_at {
            return Err(BackendError::Unavailable {
                backend: "toy".into(),
                message: "connection refused".into(),
            });
        }
        if n == 3 {
            return Err(BackendError::BadReply {
                backend: "toy".into(),
                message: "HTTP 500".into(),
            });
        }
        // Choice (n % 4) gets the best total; choice 3 (long) the best per character for odd n.
        let scores = (0..4)
            .map(|c| {
                let lp = if c == n % 4 {
                    -1.0
                } else if c == 3 && n % 2 == 1 {
                    -1.5
                } else {
                    -5.0
                };
                ContinuationScore {
                    logprob: lp,
                    n_tokens: 1,
                    exact: c != 2,
                    is_greedy: None,
                }
            })
            .collect();
        Ok(LoglikelihoodResponse {
            scores,
            method: "top-n".into(),
            tokens_in: 100,
            tokens_out: 1,
            requests: 2,
            latency_s: 0.0,
            cached_tokens: Some(90),
        })
    }
    async fn stop(&mut self) -> Result<(), BackendError> {
        Ok(())
    }
}

fn toy(ll: bool, concurrency: usize, die_at: Option<usize>) -> Toy {
    Toy {
        ll,
        concurrency,
        in_flight: AtomicUsize::new(0),
        peak: AtomicUsize::new(0),
        die_at,
        prompts: Mutex::new(Vec::new()),
    }
}

#[test]
fn answers_are_parsed_strictly() {
    for (text, want) in [
        ("B", Some(1)),
        (" B.", Some(1)),
        ("(C)", Some(2)),
        ("**D**", Some(3)),
        ("Answer: A", Some(0)),
        ("answer:B", Some(1)),
        ("The answer is B, because", Some(1)),
        ("The correct answer is: C", Some(2)),
        ("B) Paris", Some(1)),
        ("D\nExplanation", Some(3)),
        ("C  \n", Some(2)),
        ("A good question", None),
        ("I think B", None),
        ("b", None),
        ("E", None),
        ("", None),
        ("   ", None),
        ("Bees", None),
    ] {
        assert_eq!(parse_answer(text, 4), want, "{text:?}");
    }
    assert_eq!(parse_answer("E.", 5), Some(4));
}

#[test]
fn generative_prompt_lists_choices_once() {
    let it = item(7, 0);
    let p = generative_prompt(&it);
    assert!(p.starts_with(GENERATIVE_INSTRUCTION));
    assert!(
        p.ends_with("Question: q7?\nA. red\nB. green\nC. blue\nD. yellowish\nAnswer:"),
        "{p}"
    );
    let mut mmlu = it.clone();
    mmlu.question = "What?\nA. red\nB. green\nC. blue\nD. yellowish\nAnswer:".into();
    let p = generative_prompt(&mmlu);
    assert_eq!(p.matches("A. red").count(), 1, "{p}");
    assert!(p.ends_with("D. yellowish\nAnswer:"));
}

#[test]
fn forced_loglikelihood_without_support_is_refused() {
    let caps = toy(false, 1, None).capabilities();
    assert!(choose_mode(Some(ScoringMode::Loglikelihood), &caps).is_err());
    assert_eq!(choose_mode(None, &caps).unwrap(), ScoringMode::Generative);
    let caps = toy(true, 1, None).capabilities();
    assert_eq!(
        choose_mode(None, &caps).unwrap(),
        ScoringMode::Loglikelihood
    );
    assert_eq!(
        choose_mode(Some(ScoringMode::Generative), &caps).unwrap(),
        ScoringMode::Generative
    );
}

#[tokio::test]
async fn loglikelihood_run_records_every_item_and_honours_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = RecordSink::create(dir.path(), 4).unwrap();
    let backend = toy(true, 3, None);
    let origin = Instant::now();
    let mut ev = Evaluator::new(&backend, EvalOptions::new("r1"), origin).unwrap();
    assert_eq!(ev.mode(), ScoringMode::Loglikelihood);
    let items = ToySuite.items().unwrap();
    let run = ev
        .run_suite(&ToySuite, items, &mut sink)
        .await
        .unwrap()
        .clone();
    sink.finish().unwrap();
    assert_eq!(run.done(), 6);
    assert_eq!(run.failed(), 1);
    assert_eq!(
        run.inexact_items, 5,
        "choice 2 is inexact in every successful item"
    );
    assert_eq!(run.tokens_in, 500);
    assert_eq!(run.cached_tokens, 450);
    assert_eq!(run.requests, 10);
    assert_eq!(run.method.as_deref(), Some("top-n"));
    assert_eq!(run.errors.len(), 1);
    assert!(run.errors.keys().next().unwrap().contains("HTTP 500"));
    let score = run.score.unwrap();
    // Every answered item predicts its gold; item 3 failed: left out, counted beside.
    assert!((score.metrics["acc"].value - 1.0).abs() < 1e-12);
    assert_eq!(score.n_items, 5);
    assert_eq!(score.n_failed, 1);
    assert_eq!(backend.peak.load(Ordering::SeqCst), 3);
    let recs = epi_records::read_jsonl_records(&dir.path().join("records.jsonl")).unwrap();
    assert_eq!(recs.len(), 6);
    let r1 = recs.iter().find(|r| r.doc_id == "test/1").unwrap();
    assert_eq!(r1.prediction, Some(1));
    assert_eq!(r1.prediction_norm, Some(3), "yellowish wins per character");
    assert_eq!(r1.correct_norm, Some(false));
    assert_eq!(r1.choice_exact, vec![true, true, false, true]);
    assert!(r1.end_s >= r1.start_s && r1.start_s >= 0.0);
    let r3 = recs.iter().find(|r| r.doc_id == "test/3").unwrap();
    assert!(r3.error.as_deref().unwrap().contains("HTTP 500"));
    assert_eq!(r3.correct, Some(false));
    assert_eq!(ev.windows().len(), 6);
}

#[tokio::test]
async fn generative_run_counts_unparseable_and_failures() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = RecordSink::create(dir.path(), 1).unwrap();
    let backend = toy(false, 1, None);
    let mut ev = Evaluator::new(&backend, EvalOptions::new("r2"), Instant::now()).unwrap();
    let run = ev
        .run_suite(&ToySuite, ToySuite.items().unwrap(), &mut sink)
        .await
        .unwrap()
        .clone();
    assert_eq!(run.unparseable(), 1, "item 2 says `I think C`");
    assert_eq!(run.failed(), 1, "item 3 timed out");
    // 0 → A (gold 0) ok, 1 → B ok, 4 → A (gold 0) ok, 5 → B (gold 1) ok; 2 is wrong
    // (unparseable), 3 failed (not counted as an answer).
    assert!((run.score.unwrap().metrics["acc"].value - 4.0 / 5.0).abs() < 1e-12);
    assert_eq!(run.token_count_sources.get("usage"), Some(&5));
    assert_eq!(run.tokens_unknown, 0);
    let prompts = backend.prompts.lock().unwrap();
    assert!(prompts[0].ends_with("D. yellowish\nAnswer:"));
    let recs = epi_records::read_jsonl_records(&dir.path().join("records.jsonl")).unwrap();
    assert!(recs.iter().all(|r| r.scoring_mode == "generative"));
    let r2 = recs.iter().find(|r| r.doc_id == "test/2").unwrap();
    assert_eq!(r2.generated_text.as_deref(), Some("I think C"));
    assert_eq!(r2.prediction, None);
    assert_eq!(r2.correct, Some(false));
}

#[tokio::test]
async fn a_dead_server_stops_the_run_and_keeps_what_finished() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = RecordSink::create(dir.path(), 100).unwrap();
    let backend = toy(true, 1, Some(2));
    let mut ev = Evaluator::new(&backend, EvalOptions::new("r3"), Instant::now()).unwrap();
    let err = ev
        .run_suite(&ToySuite, ToySuite.items().unwrap(), &mut sink)
        .await
        .unwrap_err();
    match &err {
        EvalError::ServerLost { done, total, .. } => assert_eq!((*done, *total), (3, 6)),
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("connection refused"), "{err}");
    // Flushed: the Arrow stream holds the three records although the batch size is 100.
    let batches = epi_records::read_arrow_records(&dir.path().join("records.arrow")).unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
    let partial = ev.partial_score(&ToySuite).unwrap();
    assert_eq!((partial.n_items, partial.n_failed), (2, 1), "item 2 failed");
}

#[tokio::test]
async fn a_dropped_run_keeps_finished_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = RecordSink::create(dir.path(), 1).unwrap();
    let backend = toy(true, 1, None);
    let mut ev = Evaluator::new(&backend, EvalOptions::new("r4"), Instant::now()).unwrap();
    let items = ToySuite.items().unwrap();
    // Each item takes at least 5 ms: cut the run before all six can finish (as Ctrl-C does).
    let cut = tokio::time::timeout(
        std::time::Duration::from_millis(12),
        ev.run_suite(&ToySuite, items, &mut sink),
    );
    assert!(cut.await.is_err(), "the run was cut");
    let n = ev.runs()[0].done();
    assert!(n < 6, "{n}");
    assert_eq!(
        epi_records::read_jsonl_records(&dir.path().join("records.jsonl"))
            .unwrap()
            .len(),
        n
    );
    if n > 0 {
        let p = ev.partial_score(&ToySuite).unwrap();
        assert_eq!(p.n_items + p.n_failed, n);
    }
}
