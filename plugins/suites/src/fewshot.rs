//! Which documents are evaluated, in which order, and which few-shot examples each one gets —
//! lm-evaluation-harness's default selection, or the Open LLM Leaderboard v1 harness's
//! (`lm-eval-tasks.md` §2.4 and §4).

use crate::pyrandom::{PyRandom, SampleError};
use serde::{Deserialize, Serialize};

/// The seed of current lm-eval's few-shot sampler (`fewshot_random_seed`, `DEFAULT_OTHER_SEED`).
pub const LM_EVAL_FEWSHOT_SEED: u64 = 1234;

/// The seed of the Leaderboard v1 harness's document shuffle and few-shot draws.
pub const LEADERBOARD_V1_SEED: u64 = 42;

/// How few-shot examples are chosen (config key `fewshot`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum FewshotSelection {
    /// Current lm-eval (0.4.x, the default): documents in dataset order; one
    /// `random.Random(1234)` per task, consumed document after document.
    #[default]
    #[serde(rename = "lm-eval")]
    LmEval,
    /// The Open LLM Leaderboard v1 harness (b281b09): the documents are shuffled with
    /// `random.Random(42)`, and the same generator then draws each document's examples, in the
    /// shuffled order.
    #[serde(rename = "leaderboard-v1")]
    LeaderboardV1,
}

impl FewshotSelection {
    /// The config value (`lm-eval`, `leaderboard-v1`).
    pub fn as_str(self) -> &'static str {
        match self {
            FewshotSelection::LmEval => "lm-eval",
            FewshotSelection::LeaderboardV1 => "leaderboard-v1",
        }
    }
}

/// How a task draws its examples from its few-shot pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampler {
    /// The first `k` documents of the pool, in file order (`first_n`; MMLU). No randomness.
    FirstN,
    /// `rng.sample(pool, k)` per document (`default`).
    Random {
        /// lm-eval draws `k + 1` and drops the evaluated document when the task's few-shot split
        /// equals its test split (HellaSwag: both unset, `None == None`). The v1 harness draws `k`
        /// from the training split for every task used here.
        lm_eval_draws_extra: bool,
    },
}

/// One evaluated document and its few-shot examples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// Index of the document in its evaluation split.
    pub doc: usize,
    /// Indices into the few-shot pool, in context order.
    pub shots: Vec<usize>,
}

/// What a task's documents and pool look like.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput {
    /// Documents in the evaluation split.
    pub n_docs: usize,
    /// Documents in the few-shot pool.
    pub n_pool: usize,
    /// Examples per document.
    pub shots: usize,
    /// Evaluate only the first `limit` documents (of the run order).
    pub limit: Option<usize>,
}

/// The run order and the examples of each document.
///
/// `same_doc(doc, pool_index)` says whether a pool document is the evaluated one (used only when
/// lm-eval draws an extra example). Like lm-eval, the generator is consumed for every document up
/// to the limit, so the first `N` documents get the same examples with or without a limit.
pub fn plan(
    selection: FewshotSelection,
    sampler: Sampler,
    input: PlanInput,
    same_doc: impl Fn(usize, usize) -> bool,
) -> Result<Vec<Planned>, SampleError> {
    let PlanInput {
        n_docs,
        n_pool,
        shots: k,
        limit,
    } = input;
    let (mut rng, order): (PyRandom, Vec<usize>) = match selection {
        FewshotSelection::LmEval => (PyRandom::new(LM_EVAL_FEWSHOT_SEED), (0..n_docs).collect()),
        FewshotSelection::LeaderboardV1 => {
            let mut rng = PyRandom::new(LEADERBOARD_V1_SEED);
            let mut order: Vec<usize> = (0..n_docs).collect();
            rng.shuffle(&mut order);
            (rng, order)
        }
    };
    let take = limit.unwrap_or(n_docs).min(n_docs);
    let mut out = Vec::with_capacity(take);
    for &doc in &order[..take] {
        let shots = if k == 0 {
            Vec::new()
        } else {
            match sampler {
                Sampler::FirstN => {
                    if k > n_pool {
                        return Err(SampleError::LargerThanPopulation { n: n_pool, k });
                    }
                    (0..k).collect()
                }
                Sampler::Random {
                    lm_eval_draws_extra,
                } => {
                    let extra = lm_eval_draws_extra && selection == FewshotSelection::LmEval;
                    if extra {
                        let drawn = rng.sample(n_pool, k + 1)?;
                        drawn
                            .into_iter()
                            .filter(|&p| !same_doc(doc, p))
                            .take(k)
                            .collect()
                    } else {
                        rng.sample(n_pool, k)?
                    }
                }
            }
        };
        out.push(Planned { doc, shots });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never(_: usize, _: usize) -> bool {
        false
    }

    #[test]
    fn lm_eval_arc_uses_one_generator_across_documents() {
        let p = plan(
            FewshotSelection::LmEval,
            Sampler::Random {
                lm_eval_draws_extra: false,
            },
            PlanInput {
                n_docs: 1172,
                n_pool: 1119,
                shots: 25,
                limit: Some(2),
            },
            never,
        )
        .unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].doc, p[1].doc), (0, 1));
        assert_eq!(&p[0].shots[..3], &[902, 239, 15]);
        assert_eq!(p[0].shots[24], 1108);
        assert_eq!(&p[1].shots[..5], &[954, 140, 182, 1054, 94]);
    }

    #[test]
    fn lm_eval_hellaswag_draws_eleven_and_keeps_ten() {
        let want = [
            28883, 7657, 490, 5940, 38156, 2288, 5500, 6450, 23241, 15519,
        ];
        let input = PlanInput {
            n_docs: 10042,
            n_pool: 39905,
            shots: 10,
            limit: Some(1),
        };
        let p = plan(
            FewshotSelection::LmEval,
            Sampler::Random {
                lm_eval_draws_extra: true,
            },
            input,
            never,
        )
        .unwrap();
        assert_eq!(p[0].shots, want);
        // Were pool document 490 the evaluated one, it would be dropped and 1142 (the 11th) kept.
        let p = plan(
            FewshotSelection::LmEval,
            Sampler::Random {
                lm_eval_draws_extra: true,
            },
            input,
            |_, q| q == 490,
        )
        .unwrap();
        assert_eq!(
            p[0].shots,
            [28883, 7657, 5940, 38156, 2288, 5500, 6450, 23241, 15519, 1142]
        );
    }

    #[test]
    fn leaderboard_v1_shuffles_then_draws_from_the_same_generator() {
        // CPython 3.11.7: r = random.Random(42); x = list(range(1172)); r.shuffle(x);
        // x[:2] == [595, 716]; r.sample(range(1119), 25)[:3] == [888, 201, 205]
        let p = plan(
            FewshotSelection::LeaderboardV1,
            Sampler::Random {
                lm_eval_draws_extra: true,
            }, // ignored by v1: it draws k
            PlanInput {
                n_docs: 1172,
                n_pool: 1119,
                shots: 25,
                limit: Some(2),
            },
            never,
        )
        .unwrap();
        assert_eq!((p[0].doc, p[1].doc), (595, 716));
        assert_eq!(&p[0].shots[..3], &[888, 201, 205]);
        assert_eq!(p[0].shots.len(), 25);
    }

    #[test]
    fn first_n_takes_the_pool_in_order_and_zero_shots_draw_nothing() {
        let p = plan(
            FewshotSelection::LmEval,
            Sampler::FirstN,
            PlanInput {
                n_docs: 3,
                n_pool: 5,
                shots: 5,
                limit: None,
            },
            never,
        )
        .unwrap();
        assert!(p.iter().all(|x| x.shots == [0, 1, 2, 3, 4]));
        let e = plan(
            FewshotSelection::LmEval,
            Sampler::FirstN,
            PlanInput {
                n_docs: 3,
                n_pool: 5,
                shots: 6,
                limit: None,
            },
            never,
        );
        assert!(e.is_err());
        let p = plan(
            FewshotSelection::LmEval,
            Sampler::Random {
                lm_eval_draws_extra: true,
            },
            PlanInput {
                n_docs: 4,
                n_pool: 0,
                shots: 0,
                limit: None,
            },
            never,
        )
        .unwrap();
        assert!(p.iter().all(|x| x.shots.is_empty()));
    }
}
