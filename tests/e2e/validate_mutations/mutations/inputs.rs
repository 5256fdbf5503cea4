//! Mutations of the inputs beside the trace: the benchmark JSON (tokens changed, a score or key
//! edited, labels changed) and the trace's sidecar (a modelled source presented as measured, the
//! sidecar edited or removed). Each must make `validate` reject the submission.

use super::super::submissions::{sidecar_json, BENCH, EPI, SIDECAR};
use super::{edit_json, Mutation, Picker};
use serde_json::json;

/// Tokens changed in the benchmark (the EPI JSON's own counts are nudged with the numbers).
pub(super) fn tokens_changed(pick: &mut Picker, out: &mut Vec<Mutation>) {
    for (what, field, delta) in [
        ("benchmark total_tokens + 1", "total_tokens", 1i64),
        ("benchmark total_tokens − 1", "total_tokens", -1),
        ("benchmark tokens_in + 1", "tokens_in", 1),
        ("benchmark tokens_in − 1", "tokens_in", -1),
    ] {
        for _ in 0..3 {
            let g = pick
                .next(&|x| field == "total_tokens" || x.spec.tokens_in)
                .unwrap();
            out.push(Mutation {
                kind: "tokens changed",
                what: what.to_string(),
                good: g,
                edit: Box::new(move |d| {
                    edit_json(&d.join(BENCH), |v| {
                        let t = v[field].as_i64().unwrap();
                        v[field] = json!(t + delta);
                    })
                }),
            });
        }
    }
}

/// Benchmark edited after the fact; labels changed in either JSON.
pub(super) fn benchmark_edited(pick: &mut Picker, out: &mut Vec<Mutation>) {
    for _ in 0..3 {
        let g = pick.next(&|_| true).unwrap();
        out.push(Mutation {
            kind: "benchmark edited",
            what: "a score nudged 0.2 %".into(),
            good: g,
            edit: Box::new(|d| {
                edit_json(&d.join(BENCH), |v| {
                    for (_, x) in v["benchmarks"].as_object_mut().unwrap().iter_mut().take(1) {
                        *x = json!(x.as_f64().unwrap() * 0.998);
                    }
                })
            }),
        });
        let g = pick.next(&|_| true).unwrap();
        out.push(Mutation {
            kind: "labels changed",
            what: "hardware label changed in the EPI JSON".into(),
            good: g,
            edit: Box::new(|d| {
                edit_json(&d.join(EPI), |v| v["hardware"] = json!("a faster machine"))
            }),
        });
        let g = pick.next(&|_| true).unwrap();
        out.push(Mutation {
            kind: "labels changed",
            what: "model label changed in the benchmark JSON".into(),
            good: g,
            edit: Box::new(|d| edit_json(&d.join(BENCH), |v| v["model"] = json!("another-model"))),
        });
        let g = pick.next(&|_| true).unwrap();
        out.push(Mutation {
            kind: "benchmark edited",
            what: "a benchmark key renamed".into(),
            good: g,
            edit: Box::new(|d| {
                edit_json(&d.join(BENCH), |v| {
                    let b = v["benchmarks"].as_object_mut().unwrap();
                    let k = b.keys().next().unwrap().clone();
                    let x = b.remove(&k).unwrap();
                    b.insert(format!("{k}_v2"), x);
                })
            }),
        });
    }
}

/// A modelled trace presented as measured: the sidecar says modelled, the result integrated;
/// or a modelled sidecar put beside a trace that had none.
pub(super) fn modelled_as_measured(pick: &mut Picker, out: &mut Vec<Mutation>) {
    for _ in 0..4 {
        let g = pick.next(&|x| x.spec.sidecar.is_some()).unwrap();
        out.push(Mutation {
            kind: "modelled presented as measured",
            what: "sidecar method changed to modelled".into(),
            good: g,
            edit: Box::new(|d| {
                edit_json(&d.join(SIDECAR), |v| {
                    v["source"]["method"] = json!("modelled");
                    v["source"]["source"] = json!("cpu-model");
                })
            }),
        });
        let g = pick.next(&|x| x.spec.sidecar.is_none()).unwrap();
        let spec = pick.goods[g].spec.clone();
        out.push(Mutation {
            kind: "modelled presented as measured",
            what: "a cpu-model sidecar beside the trace".into(),
            good: g,
            edit: Box::new(move |d| {
                let v = sidecar_json(&spec, "cpu-model", "modelled");
                std::fs::write(d.join(SIDECAR), serde_json::to_string(&v).unwrap()).unwrap();
            }),
        });
        let g = pick.next(&|x| x.spec.sidecar.is_some()).unwrap();
        out.push(Mutation {
            kind: "modelled presented as measured",
            what: "the result says modelled".into(),
            good: g,
            edit: Box::new(|d| {
                edit_json(&d.join(EPI), |v| v["energy"]["method"] = json!("modelled"))
            }),
        });
    }
}

/// Sidecar edited or removed.
pub(super) fn sidecar_edited(pick: &mut Picker, out: &mut Vec<Mutation>) {
    for _ in 0..3 {
        let g = pick.next(&|x| x.spec.sidecar.is_some()).unwrap();
        out.push(Mutation {
            kind: "sidecar edited or removed",
            what: "sidecar removed".into(),
            good: g,
            edit: Box::new(|d| std::fs::remove_file(d.join(SIDECAR)).unwrap()),
        });
        let g = pick.next(&|x| x.spec.sidecar.is_some()).unwrap();
        out.push(Mutation {
            kind: "sidecar edited or removed",
            what: "sidecar instrument changed".into(),
            good: g,
            edit: Box::new(|d| {
                edit_json(&d.join(SIDECAR), |v| {
                    v["source"]["instrument"] = json!("a better meter")
                })
            }),
        });
    }
}
