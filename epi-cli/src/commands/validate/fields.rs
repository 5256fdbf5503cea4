//! Field-by-field comparison of a submitted EPI JSON with the one recomputed from the
//! submission's trace and benchmark.
//!
//! One rule decides every field: a field is **recomputed** (and must agree: integers, strings,
//! flags and digests exactly, other numbers within the relative tolerance) unless [`RULES`] names
//! it as a label (checked against the benchmark or a recorded override, by the Metadata check), a
//! parameter the submitter chose (taken as submitted to recompute the rest, reported as such), or
//! metadata the inputs do not determine (reported as unchecked). So every number `epi calculate`
//! derives from the inputs is checked without being listed anywhere, including fields added to
//! results later. A field only the submission has is an error inside the sections `epi calculate`
//! fully owns ([`CLOSED`]: energy, accuracy, uncertainty, digests) and unchecked metadata
//! elsewhere. A field the recomputation has and the submission lacks is an error.

use serde::Serialize;
use serde_json::Value;

/// How one field of the EPI JSON is validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Recomputed from the trace and benchmark and compared (every field not in [`RULES`]).
    Recomputed,
    /// Recomputed and compared when present; its absence (a submission written before
    /// epi-bench recorded it) is reported as unchecked, with the reason.
    RecomputedIfPresent(&'static str),
    /// A setting of the submitter: taken as submitted to recompute the others; must be present
    /// when the recomputation has it.
    Parameter(&'static str),
    /// Not determined by the inputs: reported as unchecked metadata.
    Metadata(&'static str),
    /// A descriptive label: the Metadata check compares it with the benchmark or the sidecar,
    /// or accepts it as a recorded override.
    Label,
}

/// The fields that are not simply recomputed, by path (`a.b`; `*` matches any one key, `[]` any
/// array element).
pub const RULES: &[(&str, Rule)] = &[
    ("model", Rule::Label),
    ("quantization", Rule::Label),
    ("surgery", Rule::Label),
    ("hardware", Rule::Label),
    ("instrument", Rule::Label),
    ("measurement_point", Rule::Label),
    ("run_metadata.label_overrides", Rule::Label),
    (
        "environment",
        Rule::Metadata("conditions recorded by the submitter"),
    ),
    (
        "surgery_params",
        Rule::Metadata("given with --surgery-param"),
    ),
    ("run_metadata.run_id", Rule::Metadata("a random id per result")),
    (
        "run_metadata.epi_bench_version",
        Rule::Metadata("the version of epi-bench that wrote the file"),
    ),
    (
        "run_metadata.trace_file",
        Rule::Metadata("a file name (the content is identified by input_digests)"),
    ),
    (
        "run_metadata.benchmark_file",
        Rule::Metadata("a file name (the content is identified by input_digests)"),
    ),
    (
        "run_metadata.repetition",
        Rule::Parameter("the repetition number given with --repetition"),
    ),
    (
        "run_metadata.input_digests",
        Rule::RecomputedIfPresent(
            "absent (the result predates input digests): bytes of the trace that change no \
             number (row order within an instant, volts, amps, power factor) and of the \
             benchmark that are not copied into the result are not checked",
        ),
    ),
    (
        "metrics",
        Rule::RecomputedIfPresent(
            "absent (the result's producer computed no metrics beside EPI): ept_in, ept_out and \
             ept_total not checked",
        ),
    ),
    (
        "energy.idle_watts",
        Rule::Parameter(
            "the idle power measured before the run (--idle-watts); net_joules is recomputed from it",
        ),
    ),
    (
        "uncertainty.energy_rel_accuracy",
        Rule::Parameter(
            "the instrument's stated accuracy (sidecar, --energy-accuracy or configuration); \
             epi_ci95 is recomputed from it",
        ),
    ),
    ("uncertainty.note", Rule::Metadata("free text")),
];

/// Objects whose every key must be one the recomputation has: `epi calculate` owns them whole.
pub const CLOSED: &[&str] = &[
    "energy",
    "energy.per_node_joules",
    "energy.gaps[]",
    "accuracy",
    "accuracy.weights",
    "uncertainty",
    "run_metadata.input_digests",
];

/// Arrays compared as sets: the order of flags, and of gaps found at the same instant in rows
/// of different nodes, carries no meaning.
const SETS: &[&str] = &["energy.flags", "energy.gaps"];

/// The rule of a field path pattern.
pub fn rule_for(pattern: &str) -> Rule {
    RULES
        .iter()
        .find(|(p, _)| matches(p, pattern))
        .map(|(_, r)| *r)
        .unwrap_or(Rule::Recomputed)
}

fn matches(rule: &str, pattern: &str) -> bool {
    let mut a = rule.split('.');
    let mut b = pattern.split('.');
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(x), Some(y)) if x == "*" || x == y => {}
            _ => return false,
        }
    }
}

/// A field left unchecked, and why.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Unchecked {
    /// The field path.
    pub field: String,
    /// `metadata` (not determined by the inputs), `parameter` (taken as submitted to recompute
    /// the others) or `absent` (an optional field the submission does not have).
    pub kind: &'static str,
    /// Why it is not checked.
    pub reason: String,
}

/// A field that disagrees with the recomputation.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Mismatch {
    /// The field path.
    pub field: String,
    /// What is wrong, in full.
    pub message: String,
}

/// The outcome of [`compare`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct Comparison {
    /// Fields recomputed and found equal (leaves).
    pub recomputed: Vec<String>,
    /// Fields that disagree, are missing or should not be there.
    pub mismatches: Vec<Mismatch>,
    /// Fields left unchecked.
    pub unchecked: Vec<Unchecked>,
}

/// Compares the submitted EPI JSON `sub` with the recomputed one `rec`; floats agree when their
/// relative difference is at most `tol`.
pub fn compare(sub: &Value, rec: &Value, tol: f64) -> Comparison {
    let mut c = Comparison::default();
    let mut w = Walker { tol, out: &mut c };
    w.object_or_value("", "", Some(sub), Some(rec), false);
    c
}

struct Walker<'a> {
    tol: f64,
    out: &'a mut Comparison,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// A value as shown in messages: numbers and strings as they are, long values cut.
fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 {
        format!("{}…", s.chars().take(80).collect::<String>())
    } else {
        s
    }
}

/// Relative closeness of two numbers (equal values always agree).
pub fn close(a: f64, b: f64, tol: f64) -> bool {
    a == b || ((a - b).abs() / a.abs().max(b.abs())) <= tol
}

impl Walker<'_> {
    fn mismatch(&mut self, field: &str, message: String) {
        self.out.mismatches.push(Mismatch {
            field: field.to_string(),
            message,
        });
    }

    fn unchecked(&mut self, field: &str, kind: &'static str, reason: &str) {
        self.out.unchecked.push(Unchecked {
            field: field.to_string(),
            kind,
            reason: reason.to_string(),
        });
    }

    /// Visits one field: `path` names it (`energy.gaps[2].start_ms`), `pattern` is the same with
    /// array indices as `[]`; `closed_parent`: the enclosing object is one of [`CLOSED`].
    fn object_or_value(
        &mut self,
        path: &str,
        pattern: &str,
        sub: Option<&Value>,
        rec: Option<&Value>,
        closed_parent: bool,
    ) {
        match rule_for(pattern) {
            Rule::Label => return,
            Rule::Metadata(reason) => {
                if sub.is_some() {
                    self.unchecked(path, "metadata", reason);
                }
                return;
            }
            Rule::Parameter(reason) => {
                match (sub, rec) {
                    (None, Some(r)) => self.mismatch(
                        path,
                        format!(
                            "{path} is missing (recomputing needs it; the default would be {})",
                            show(r)
                        ),
                    ),
                    (Some(_), _) => self.unchecked(path, "parameter", reason),
                    (None, None) => {}
                }
                return;
            }
            Rule::RecomputedIfPresent(reason) if sub.is_none() => {
                if rec.is_some() {
                    self.unchecked(path, "absent", reason);
                }
                return;
            }
            Rule::RecomputedIfPresent(_) | Rule::Recomputed => {}
        }
        match (sub, rec) {
            (None, None) => {}
            (None, Some(r)) => self.mismatch(
                path,
                format!(
                    "{path} is missing; the trace and benchmark give {}",
                    show(r)
                ),
            ),
            (Some(s), None) => {
                if closed_parent {
                    self.mismatch(
                        path,
                        format!(
                            "{path} is {}, but epi calculate writes no such field for this trace and benchmark",
                            show(s)
                        ),
                    );
                } else {
                    self.unchecked(
                        path,
                        "metadata",
                        "not written by epi calculate: cannot be recomputed from the trace and benchmark",
                    );
                }
            }
            (Some(s), Some(r)) => self.values(path, pattern, s, r),
        }
    }

    fn values(&mut self, path: &str, pattern: &str, s: &Value, r: &Value) {
        match (s, r) {
            (Value::Object(so), Value::Object(ro)) => {
                let closed = CLOSED.contains(&pattern);
                let keys = ro.keys().chain(so.keys().filter(|k| !ro.contains_key(*k)));
                let keys: Vec<&String> = keys.collect();
                for k in keys {
                    self.object_or_value(
                        &join(path, k),
                        &join(pattern, k),
                        so.get(k),
                        ro.get(k),
                        closed,
                    );
                }
            }
            (Value::Array(sa), Value::Array(ra)) => {
                // A set's elements in one canonical order on both sides, then compared as a list.
                let sorted = |a: &Vec<Value>| {
                    let mut v = a.clone();
                    v.sort_by_cached_key(|x| x.to_string());
                    v
                };
                let (sa, ra) = if SETS.contains(&pattern) {
                    (sorted(sa), sorted(ra))
                } else {
                    (sa.clone(), ra.clone())
                };
                if sa.len() != ra.len() {
                    self.mismatch(
                        path,
                        format!(
                            "{path} has {} entries, but the trace and benchmark give {}",
                            sa.len(),
                            ra.len()
                        ),
                    );
                    return;
                }
                let element = format!("{pattern}[]");
                let closed = CLOSED.contains(&element.as_str());
                for (i, (x, y)) in sa.iter().zip(ra.iter()).enumerate() {
                    let p = format!("{path}[{i}]");
                    match (x, y) {
                        (Value::Object(xo), Value::Object(yo)) => {
                            let keys: Vec<&String> = yo
                                .keys()
                                .chain(xo.keys().filter(|k| !yo.contains_key(*k)))
                                .collect();
                            for k in keys {
                                self.object_or_value(
                                    &join(&p, k),
                                    &join(&element, k),
                                    xo.get(k),
                                    yo.get(k),
                                    closed,
                                );
                            }
                        }
                        _ => self.values(&p, &element, x, y),
                    }
                }
            }
            (_, Value::Number(rn)) => {
                let Some(sv) = s.as_f64() else {
                    self.mismatch(path, format!("{path} is {}, expected a number", show(s)));
                    return;
                };
                let rv = rn.as_f64().unwrap_or(f64::NAN);
                let ok = if rn.is_f64() {
                    close(sv, rv, self.tol)
                } else {
                    // Counts: exactly (an integer written as 24576.0 is the same count).
                    match (s.as_u64(), rn.as_u64()) {
                        (Some(a), Some(b)) => a == b,
                        _ => sv == rv && sv.fract() == 0.0,
                    }
                };
                if ok {
                    self.out.recomputed.push(path.to_string());
                } else if rn.is_f64() {
                    self.mismatch(
                        path,
                        format!(
                            "{path} is {}, but the trace and benchmark give {} (tolerance {})",
                            show(s),
                            show(r),
                            self.tol
                        ),
                    );
                } else {
                    self.mismatch(
                        path,
                        format!(
                            "{path} is {}, but the trace and benchmark give {} (counts must agree exactly)",
                            show(s),
                            show(r)
                        ),
                    );
                }
            }
            _ if s == r => self.out.recomputed.push(path.to_string()),
            (Value::String(_), Value::String(_))
                if pattern.starts_with("run_metadata.input_digests.") =>
            {
                let file = pattern.rsplit('.').next().unwrap_or("input");
                self.mismatch(
                    path,
                    format!(
                        "{path} is {}, but the submission's {} hashes to {}: it is not the file the result was computed from",
                        show(s),
                        match file {
                            "trace" => "trace CSV",
                            "trace_meta" => "trace sidecar",
                            "benchmark" => "benchmark JSON",
                            other => other,
                        },
                        show(r)
                    ),
                );
            }
            _ => self.mismatch(
                path,
                format!(
                    "{path} is {}, but the trace and benchmark give {}",
                    show(s),
                    show(r)
                ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec() -> Value {
        json!({
            "epi": 2.0, "model": "m",
            "energy": {"total_joules": 100.0, "total_tokens": 50, "flags": ["a", "b"],
                       "per_node_joules": {"0": 60.0, "1": 40.0},
                       "gaps": [{"node_id": 0, "start_ms": 1.0, "end_ms": 5.0}]},
            "uncertainty": {"energy_rel_accuracy": 0.02, "note": "x"},
            "run_metadata": {"run_id": "r1", "input_digests": {"trace": "xxh3-128:00"}}
        })
    }

    fn fields(ms: &[Mismatch]) -> Vec<&str> {
        ms.iter().map(|m| m.field.as_str()).collect()
    }

    #[test]
    fn equal_results_agree_and_metadata_is_listed() {
        let mut s = rec();
        s["model"] = json!("other");
        s["run_metadata"]["run_id"] = json!("r2");
        s["run_metadata"]["clock"] = json!(1);
        s["energy"]["flags"] = json!(["b", "a"]);
        s["energy"]["total_joules"] = json!(100.05);
        let c = compare(&s, &rec(), 1e-3);
        assert!(c.mismatches.is_empty(), "{:?}", c.mismatches);
        let un: Vec<&str> = c.unchecked.iter().map(|u| u.field.as_str()).collect();
        assert_eq!(
            un,
            [
                "uncertainty.energy_rel_accuracy",
                "uncertainty.note",
                "run_metadata.run_id",
                "run_metadata.clock"
            ]
        );
        assert!(c
            .recomputed
            .contains(&"energy.gaps[0].start_ms".to_string()));
        assert!(c.recomputed.contains(&"energy.flags[1]".to_string()));
    }

    #[test]
    fn every_kind_of_difference_is_a_mismatch() {
        let mut s = rec();
        s["epi"] = json!(2.0 * 1.002);
        s["energy"]["total_tokens"] = json!(51);
        s["energy"]["per_node_joules"]["2"] = json!(0.0);
        s["energy"]["gaps"][0]["end_ms"] = json!("5");
        s["energy"]["flags"] = json!(["a"]);
        s["energy"]["extra"] = json!(1);
        s["run_metadata"]["input_digests"]["trace"] = json!("xxh3-128:01");
        s["uncertainty"]
            .as_object_mut()
            .unwrap()
            .remove("energy_rel_accuracy");
        let c = compare(&s, &rec(), 1e-3);
        let mut f = fields(&c.mismatches);
        f.sort();
        assert_eq!(
            f,
            [
                "energy.extra",
                "energy.flags",
                "energy.gaps[0].end_ms",
                "energy.per_node_joules.2",
                "energy.total_tokens",
                "epi",
                "run_metadata.input_digests.trace",
                "uncertainty.energy_rel_accuracy"
            ]
        );
        let digest = &c
            .mismatches
            .iter()
            .find(|m| m.field.ends_with("trace"))
            .unwrap()
            .message;
        assert!(
            digest.contains("not the file the result was computed from"),
            "{digest}"
        );
    }

    #[test]
    fn a_missing_section_and_an_absent_optional_field() {
        let mut s = rec();
        s.as_object_mut().unwrap().remove("energy");
        s["run_metadata"]
            .as_object_mut()
            .unwrap()
            .remove("input_digests");
        let c = compare(&s, &rec(), 1e-3);
        assert_eq!(fields(&c.mismatches), ["energy"]);
        assert!(c
            .unchecked
            .iter()
            .any(|u| u.field == "run_metadata.input_digests" && u.kind == "absent"));
    }

    #[test]
    fn tolerance_is_relative_and_counts_are_exact() {
        assert!(close(1000.0, 1000.9, 1e-3));
        assert!(!close(1000.0, 1002.0, 1e-3));
        assert!(close(0.0, 0.0, 1e-3));
        assert!(!close(0.0, 1e-300, 1e-3));
        let mut s = rec();
        s["energy"]["total_tokens"] = json!(50.0);
        assert!(compare(&s, &rec(), 1e-3).mismatches.is_empty());
        s["energy"]["total_tokens"] = json!(50.5);
        assert_eq!(compare(&s, &rec(), 1e-3).mismatches.len(), 1);
    }
}
