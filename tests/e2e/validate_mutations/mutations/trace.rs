//! Mutations of the power trace: watts and timestamps in other units, rows cut at a line
//! boundary, stretches from another recording spliced in, rows duplicated, nodes reordered (and
//! the EPI JSON's per-node energies swapped with them). Each must make `validate` reject the
//! submission.

use super::super::submissions::{trace_lines, EPI};
use super::{edit_json, edit_trace, field_of_csv, with_csv_field, Mutation, Picker};

/// Units swapped in the trace: watts in mW, timestamps in s.
pub(super) fn units_swapped(pick: &mut Picker, out: &mut Vec<Mutation>) {
    for _ in 0..3 {
        let g = pick.next(&|_| true).unwrap();
        out.push(Mutation {
            kind: "units swapped",
            what: "trace watts in mW".into(),
            good: g,
            edit: Box::new(|d| {
                edit_trace(d, |lines| {
                    for l in lines.iter_mut().skip(1) {
                        *l = with_csv_field(l, 2, |w| {
                            format!("{:.3}", w.parse::<f64>().unwrap() * 1000.0)
                        });
                    }
                })
            }),
        });
        let g = pick.next(&|_| true).unwrap();
        out.push(Mutation {
            kind: "units swapped",
            what: "trace timestamps in s".into(),
            good: g,
            edit: Box::new(|d| {
                edit_trace(d, |lines| {
                    for l in lines.iter_mut().skip(1) {
                        *l = with_csv_field(l, 0, |t| {
                            format!("{}", t.parse::<f64>().unwrap() / 1000.0)
                        });
                    }
                })
            }),
        });
    }
}

/// Traces truncated at a line boundary: the last rows, the first rows, one instant.
pub(super) fn truncated(pick: &mut Picker, out: &mut Vec<Mutation>) {
    for k in [1usize, 2, 3, 7] {
        let g = pick.next(&|_| true).unwrap();
        out.push(Mutation {
            kind: "trace truncated at a line",
            what: format!("last {k} row(s) cut"),
            good: g,
            edit: Box::new(move |d| edit_trace(d, |l| l.truncate(l.len() - k))),
        });
        let g = pick.next(&|_| true).unwrap();
        out.push(Mutation {
            kind: "trace truncated at a line",
            what: format!("first {k} row(s) cut"),
            good: g,
            edit: Box::new(move |d| {
                edit_trace(d, |l| {
                    l.drain(1..1 + k);
                })
            }),
        });
    }
}

/// Traces spliced: a stretch replaced by the same stretch of another recording (same rows,
/// other watts); two recordings joined; the second half of the trace cut out and the end
/// kept (a hole).
pub(super) fn spliced(pick: &mut Picker, out: &mut Vec<Mutation>) {
    for span in [1usize, 3, 12, 40] {
        let g = pick.next(&|_| true).unwrap();
        let spec = pick.goods[g].spec.clone();
        out.push(Mutation {
            kind: "trace spliced",
            what: format!("{span} row(s) from another recording"),
            good: g,
            edit: Box::new(move |d| {
                let (_, other) = trace_lines(&spec, 1);
                edit_trace(d, |l| {
                    let at = 1 + (l.len() - 1) / 3;
                    let end = (at + span).min(l.len());
                    l[at..end].clone_from_slice(&other[at - 1..end - 1]);
                })
            }),
        });
    }
    for _ in 0..3 {
        let g = pick.next(&|_| true).unwrap();
        let spec = pick.goods[g].spec.clone();
        out.push(Mutation {
            kind: "trace spliced",
            what: "another recording appended, shifted in time".into(),
            good: g,
            edit: Box::new(move |d| {
                let (_, other) = trace_lines(&spec, 2);
                let shift = (spec.instants + 10) * spec.interval_ms;
                edit_trace(d, |l| {
                    l.extend(other.iter().map(|r| {
                        with_csv_field(r, 0, |t| (t.parse::<u64>().unwrap() + shift).to_string())
                    }))
                })
            }),
        });
        let g = pick.next(&|_| true).unwrap();
        out.push(Mutation {
            kind: "trace spliced",
            what: "a middle stretch cut out".into(),
            good: g,
            edit: Box::new(|d| {
                edit_trace(d, |l| {
                    let a = l.len() / 3;
                    l.drain(a..a + l.len() / 4);
                })
            }),
        });
    }
}

/// Rows duplicated: one row, the last row, a row of every node at one instant.
pub(super) fn rows_duplicated(pick: &mut Picker, out: &mut Vec<Mutation>) {
    for (what, at) in [
        ("a middle row", 2usize),
        ("the last row", 0),
        ("the first row", 1),
    ] {
        for _ in 0..3 {
            let g = pick.next(&|_| true).unwrap();
            out.push(Mutation {
                kind: "rows duplicated",
                what: what.to_string(),
                good: g,
                edit: Box::new(move |d| {
                    edit_trace(d, |l| {
                        let i = match at {
                            0 => l.len() - 1,
                            1 => 1,
                            _ => l.len() / 2,
                        };
                        let row = l[i].clone();
                        l.insert(i, row);
                    })
                }),
            });
        }
    }
}

/// Nodes reordered: ids swapped in the trace, rows of one instant reversed (no number changes:
/// only the digest sees it), per-node energies swapped in the EPI JSON.
pub(super) fn nodes_reordered(pick: &mut Picker, out: &mut Vec<Mutation>) {
    for _ in 0..4 {
        let g = pick.next(&|x| x.spec.nodes >= 2).unwrap();
        out.push(Mutation {
            kind: "nodes reordered",
            what: "node ids 0 and 1 swapped in the trace".into(),
            good: g,
            edit: Box::new(|d| {
                edit_trace(d, |l| {
                    for r in l.iter_mut().skip(1) {
                        *r = with_csv_field(r, 1, |n| match n {
                            "0" => "1".into(),
                            "1" => "0".into(),
                            x => x.into(),
                        });
                    }
                })
            }),
        });
        let g = pick
            .next(&|x| x.spec.nodes >= 2 && !x.spec.stagger)
            .unwrap();
        out.push(Mutation {
            kind: "nodes reordered",
            what: "rows of each instant in reverse node order".into(),
            good: g,
            edit: Box::new(|d| {
                edit_trace(d, |l| {
                    let mut rows: Vec<String> = l.drain(1..).collect();
                    rows.sort_by_key(|r| {
                        (
                            field_of_csv(r, 0).parse::<u64>().unwrap(),
                            std::cmp::Reverse(field_of_csv(r, 1).parse::<u32>().unwrap()),
                        )
                    });
                    l.extend(rows);
                })
            }),
        });
        let g = pick.next(&|x| x.spec.nodes >= 2).unwrap();
        out.push(Mutation {
            kind: "nodes reordered",
            what: "per_node_joules of nodes 0 and 1 swapped".into(),
            good: g,
            edit: Box::new(|d| {
                edit_json(&d.join(EPI), |v| {
                    let p = &mut v["energy"]["per_node_joules"];
                    let (a, b) = (p["0"].clone(), p["1"].clone());
                    p["0"] = b;
                    p["1"] = a;
                })
            }),
        });
    }
}
