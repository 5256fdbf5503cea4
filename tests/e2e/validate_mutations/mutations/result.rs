//! Mutations of the EPI JSON (the result): every recomputed number nudged, fields and sections
//! dropped, units swapped. Each must make `validate` reject the submission.

use super::super::json_path::{get_mut, pattern, remove};
use super::super::submissions::EPI;
use super::{edit_json, nudge, Mutation, Picker};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Every recomputed number nudged (up and down, by 0.2 % or one count), each kind of field in
/// two submissions.
pub(super) fn numbers_nudged(pick: &mut Picker, out: &mut Vec<Mutation>) {
    let mut patterns: BTreeMap<String, Vec<(usize, String)>> = BTreeMap::new();
    for (g, good) in pick.goods.iter().enumerate() {
        let epi_v: Value =
            serde_json::from_str(&std::fs::read_to_string(good.dir.join(EPI)).unwrap()).unwrap();
        for p in good.report["recomputed"].as_array().unwrap() {
            let p = p.as_str().unwrap();
            let mut probe = epi_v.clone();
            if get_mut(&mut probe, p).is_some_and(|x| x.is_number()) {
                patterns
                    .entry(pattern(p))
                    .or_default()
                    .push((g, p.to_string()));
            }
        }
    }
    let mut seen: BTreeSet<(usize, String, bool)> = BTreeSet::new();
    for (pat, cands) in &patterns {
        let l = cands.len();
        for (k, up) in [
            (0usize, true),
            (l / 2 + 1, false),
            (l / 4 + 1, false),
            (3 * l / 4 + 1, true),
        ] {
            let (g, path) = cands[(k + pat.len()) % l].clone();
            if !seen.insert((g, path.clone(), up)) {
                continue;
            }
            let kind = if pat.contains("tokens") {
                "token count off by one"
            } else {
                "number nudged 0.2 % / count ±1"
            };
            let p2 = path.clone();
            out.push(Mutation {
                kind,
                what: format!("{path} {}", if up { "up" } else { "down" }),
                good: g,
                edit: Box::new(move |d| {
                    edit_json(&d.join(EPI), |v| {
                        let x = get_mut(v, &p2).unwrap();
                        *x = nudge(x, up);
                    })
                }),
            });
        }
    }
}

/// Fields dropped: each kind of recomputed field, and whole sections.
pub(super) fn fields_dropped(pick: &mut Picker, out: &mut Vec<Mutation>) {
    let mut dropped: BTreeSet<String> = BTreeSet::new();
    for (g, good) in pick.goods.iter().enumerate() {
        for p in good.report["recomputed"].as_array().unwrap() {
            let p = p.as_str().unwrap().to_string();
            if dropped.insert(pattern(&p)) {
                out.push(Mutation {
                    kind: "field dropped",
                    what: p.clone(),
                    good: g,
                    edit: Box::new(move |d| {
                        edit_json(&d.join(EPI), |v| assert!(remove(v, &p), "{p}"))
                    }),
                });
            }
        }
    }
    for section in [
        "energy",
        "accuracy",
        "uncertainty",
        "energy.per_node_joules",
        "accuracy.weights",
        "energy.idle_watts",
        "uncertainty.energy_rel_accuracy",
    ] {
        let needs_idle = section == "energy.idle_watts";
        let Some(g) = pick.next(&|x| !needs_idle || x.spec.idle_watts.is_some()) else {
            continue;
        };
        out.push(Mutation {
            kind: "field dropped",
            what: section.to_string(),
            good: g,
            edit: Box::new(move |d| {
                edit_json(&d.join(EPI), |v| assert!(remove(v, section), "{section}"))
            }),
        });
    }
}

/// Units swapped in the EPI JSON.
pub(super) fn units_swapped(pick: &mut Picker, out: &mut Vec<Mutation>) {
    type JsonEdit = fn(&mut Value);
    let unit_swaps: [(&str, JsonEdit); 6] = [
        ("kwh and total_joules swapped", |v| {
            let e = &mut v["energy"];
            let (j, k) = (e["total_joules"].clone(), e["kwh"].clone());
            e["total_joules"] = k;
            e["kwh"] = j;
        }),
        ("avg_watts in kW", |v| {
            let w = v["energy"]["avg_watts"].as_f64().unwrap();
            v["energy"]["avg_watts"] = json!(w / 1000.0);
        }),
        ("peak_watts in mW", |v| {
            let w = v["energy"]["peak_watts"].as_f64().unwrap();
            v["energy"]["peak_watts"] = json!(w * 1000.0);
        }),
        ("duration in ms", |v| {
            let d = v["energy"]["duration_seconds"].as_f64().unwrap();
            v["energy"]["duration_seconds"] = json!(d * 1000.0);
        }),
        ("per-node energy in kWh", |v| {
            for (_, x) in v["energy"]["per_node_joules"].as_object_mut().unwrap() {
                *x = json!(x.as_f64().unwrap() / 3.6e6);
            }
        }),
        ("accuracy in percent", |v| {
            let a = v["accuracy"]["composite"].as_f64().unwrap();
            v["accuracy"]["composite"] = json!(a * 100.0);
        }),
    ];
    for (what, f) in unit_swaps {
        for _ in 0..2 {
            let g = pick.next(&|_| true).unwrap();
            out.push(Mutation {
                kind: "units swapped",
                what: what.to_string(),
                good: g,
                edit: Box::new(move |d| edit_json(&d.join(EPI), f)),
            });
        }
    }
}
