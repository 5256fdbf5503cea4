//! `epi validate` against a generated mutation set.
//!
//! Good submissions are made here with `epi calculate` from generated traces and benchmarks
//! (deterministic seeds; 1–4 nodes, staggered sampling, gaps, counter columns, sidecars of
//! several sources, idle baselines, custom weights, label overrides): every one must be accepted.
//! Corrupted copies of them — every recomputed number nudged by 0.2 % (twice the default
//! tolerance) or a count off by one, fields dropped, units swapped, traces spliced or truncated at
//! a line boundary, rows duplicated, nodes reordered, tokens changed, a modelled trace presented
//! as measured, benchmarks and sidecars edited — must every one be rejected (exit status 1). The
//! test prints the table of mutation kinds, counts and rejections.
//!
//! Which numbers are nudged is not listed here: every numeric field of the EPI JSON is, except
//! the few that [`MAY_BE_UNCHECKED`] allows `validate` to report as unchecked metadata — and the
//! test fails if `validate` leaves any other field unchecked.

mod json_path;
mod mutations;
mod submissions;

use crate::support::{epi, stderr, stdout};
use json_path::{numeric_leaves, remove};
use mutations::{edit_json, edit_trace, field_of_csv, mutations, with_csv_field, Mutation};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use submissions::{copy_dir, dir_bytes, make_good, parallel, validate_json, Spec, EPI};

/// Fields `validate` may leave unchecked: what the trace and the benchmark do not determine.
const MAY_BE_UNCHECKED: &[&str] = &[
    "environment",
    "surgery_params",
    "measurement_point",
    "instrument", // only without a sidecar: then it comes from the configuration
    "run_metadata.run_id",
    "run_metadata.epi_bench_version",
    "run_metadata.trace_file",
    "run_metadata.benchmark_file",
    "run_metadata.repetition",
    "energy.idle_watts",
    "uncertainty.energy_rel_accuracy",
    "uncertainty.note",
];

#[test]
fn validate_accepts_every_good_submission_and_rejects_every_mutation() {
    let root = tempfile::tempdir().unwrap();
    let specs: Vec<Spec> = (0..24).map(Spec::from_seed).collect();
    let goods = parallel(specs, |s| make_good(root.path(), &s));

    // Every good submission is accepted, and leaves unchecked only what it may.
    let mut numeric_fields = 0;
    for g in &goods {
        assert_eq!(g.report["ready"], true, "{:?}: {:#}", g.spec, g.report);
        let unchecked: Vec<&str> = g.report["unchecked"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["field"].as_str().unwrap())
            .collect();
        for u in &unchecked {
            assert!(
                MAY_BE_UNCHECKED.contains(u),
                "{:?}: `{u}` left unchecked: {:#}",
                g.spec,
                g.report["unchecked"]
            );
        }
        if g.spec.sidecar.is_some() {
            assert!(!unchecked.contains(&"instrument"), "{:#}", g.report);
        }
        // Every numeric field is recomputed, or one of the allowed unchecked ones.
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(g.dir.join(EPI)).unwrap()).unwrap();
        let mut leaves = Vec::new();
        numeric_leaves(&v, "", &mut leaves);
        let recomputed: BTreeSet<&str> = g.report["recomputed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap())
            .collect();
        for leaf in &leaves {
            let covered = recomputed.contains(leaf.as_str())
                || unchecked
                    .iter()
                    .any(|u| leaf == u || leaf.starts_with(&format!("{u}.")));
            assert!(
                covered,
                "{:?}: numeric field {leaf} is neither recomputed nor reported",
                g.spec
            );
        }
        numeric_fields += leaves.len();
        if g.spec.model_override {
            assert_eq!(
                g.report["overridden_labels"][0]["field"], "model",
                "{:#}",
                g.report
            );
        }
    }

    // The mutation set.
    let muts = mutations(&goods);
    let work = root.path().join("mutated");
    let jobs: Vec<(usize, Mutation)> = muts.into_iter().enumerate().collect();
    let outcomes = parallel(jobs, |(i, m)| {
        let good = &goods[m.good];
        let dir = work.join(format!("m{i:03}"));
        copy_dir(&good.dir, &dir);
        let before = dir_bytes(&dir);
        (m.edit)(&dir);
        assert_ne!(
            before,
            dir_bytes(&dir),
            "{} / {}: the mutation changed nothing",
            m.kind,
            m.what
        );
        let d = dir.to_str().unwrap().to_string();
        let mut argv = vec!["validate", "--submission", d.as_str()];
        argv.extend(good.validate_args.iter().map(String::as_str));
        let o = epi(&dir, &argv);
        (
            m.kind,
            m.what,
            m.good,
            o.status.code(),
            stdout(&o) + &stderr(&o),
        )
    });

    // A rejection of one changed field must name it (the internal consistency check, which runs
    // first, names the quantities of `epi = J/T ÷ A` with `≠`).
    const CONSISTENCY: &[&str] = &[
        "epi",
        "joules_per_token",
        "accuracy_composite",
        "energy.total_joules",
        "energy.total_tokens",
    ];
    let mut table: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut accepted = Vec::new();
    let mut unnamed = Vec::new();
    for (kind, what, good, code, out) in &outcomes {
        let e = table.entry(kind).or_default();
        e.0 += 1;
        if *code == Some(1) {
            e.1 += 1;
        } else {
            accepted.push(format!(
                "{kind} / {what} (good-{good:02}): exit {code:?}\n{out}"
            ));
        }
        if kind.starts_with("number") || kind.starts_with("token count") || *kind == "field dropped"
        {
            let field = what.split(' ').next().unwrap_or("");
            let field = field.split('[').next().unwrap_or(field);
            // Without idle_watts, what is left over is the net energy computed from it.
            let field = if field == "energy.idle_watts" {
                "energy.net_joules"
            } else {
                field
            };
            let named = [" ", "[", "`"]
                .iter()
                .any(|end| out.contains(&format!("{field}{end}")))
                || (CONSISTENCY.contains(&field) && out.contains('≠'));
            if !named {
                unnamed.push(format!(
                    "{kind} / {what}: the rejection does not name `{field}`:\n{out}"
                ));
            }
        }
    }
    println!("\n{:<34} {:>6} {:>9}", "mutation kind", "count", "rejected");
    for (k, (n, r)) in &table {
        println!("{k:<34} {n:>6} {r:>9}");
    }
    let total = outcomes.len();
    let rejected: usize = table.values().map(|x| x.1).sum();
    println!("{:<34} {total:>6} {rejected:>9}", "all");
    println!(
        "good submissions: {} made with epi calculate, {} accepted ({numeric_fields} numeric fields)",
        goods.len(),
        goods.iter().filter(|g| g.report["ready"] == true).count()
    );
    assert!(goods.len() >= 20);
    assert!(total >= 200, "only {total} mutations");
    assert!(
        accepted.is_empty(),
        "{} mutation(s) accepted:\n{}",
        accepted.len(),
        accepted.join("\n")
    );
    assert!(unnamed.is_empty(), "{}", unnamed.join("\n"));
}

#[test]
fn without_digests_the_numbers_still_catch_truncation_duplication_and_relabelled_nodes() {
    // A result written before input digests existed: validate says the digests are not checked,
    // and the recomputed numbers alone still catch these corruptions.
    let root = tempfile::tempdir().unwrap();
    let specs: Vec<Spec> = (0..24)
        .map(Spec::from_seed)
        .filter(|s| s.nodes >= 2 && !s.stagger && !s.counter)
        .take(3)
        .collect();
    assert_eq!(specs.len(), 3);
    let goods = parallel(specs, |s| make_good(root.path(), &s));
    type TraceEdit = fn(&mut Vec<String>);
    let edits: [(&str, TraceEdit, bool); 5] = [
        ("none", |_| {}, true),
        (
            "last row cut",
            |l| {
                l.pop();
            },
            false,
        ),
        (
            "a middle row duplicated",
            |l| {
                let r = l[l.len() / 2].clone();
                l.insert(l.len() / 2, r);
            },
            false,
        ),
        (
            "node ids 0 and 1 swapped",
            |l| {
                for r in l.iter_mut().skip(1) {
                    *r = with_csv_field(r, 1, |n| match n {
                        "0" => "1".into(),
                        "1" => "0".into(),
                        x => x.into(),
                    });
                }
            },
            false,
        ),
        // Same rows, same numbers: only a digest could see this.
        (
            "rows of each instant in reverse node order",
            |l| {
                let mut rows: Vec<String> = l.drain(1..).collect();
                rows.sort_by_key(|r| {
                    (
                        field_of_csv(r, 0).parse::<u64>().unwrap(),
                        std::cmp::Reverse(field_of_csv(r, 1).parse::<u32>().unwrap()),
                    )
                });
                l.extend(rows);
            },
            true,
        ),
    ];
    for (gi, g) in goods.iter().enumerate() {
        for (ei, (what, f, accepted)) in edits.iter().enumerate() {
            let dir = root.path().join(format!("old-{gi}-{ei}"));
            copy_dir(&g.dir, &dir);
            edit_json(&dir.join(EPI), |v| {
                assert!(remove(v, "run_metadata.input_digests"));
            });
            edit_trace(&dir, f);
            let report = validate_json(&dir, &g.validate_args);
            assert_eq!(report["ready"], *accepted, "{what}: {report:#}");
            assert!(
                report["unchecked"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|u| u["field"] == "run_metadata.input_digests" && u["kind"] == "absent"),
                "{report:#}"
            );
        }
    }
}
