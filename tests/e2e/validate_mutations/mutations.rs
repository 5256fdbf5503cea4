//! The mutation catalogue: corrupted copies of the good submissions, each a [`Mutation`] (its
//! kind, what it changes, the submission it starts from, and the edit). The kinds are grouped by
//! the file they corrupt: [`result`] (the EPI JSON), [`trace`] (the power trace), [`inputs`]
//! (the benchmark JSON and the sidecar). [`mutations`] lists them in a fixed order, choosing the
//! submissions round-robin ([`Picker`]), so the set is the same on every run.

mod inputs;
mod result;
mod trace;

use super::submissions::{Good, TRACE};
use serde_json::{json, Value};
use std::path::Path;

pub(super) type Edit = Box<dyn Fn(&Path) + Send + Sync>;

pub(super) struct Mutation {
    pub(super) kind: &'static str,
    pub(super) what: String,
    pub(super) good: usize,
    pub(super) edit: Edit,
}

/// Chooses the submission each mutation starts from: the next one, round-robin, that fits.
struct Picker<'g> {
    goods: &'g [Good],
    rot: usize,
}

impl Picker<'_> {
    /// The next submission from the rotation for which `pred` holds.
    fn next(&mut self, pred: &dyn Fn(&Good) -> bool) -> Option<usize> {
        let n = self.goods.len();
        for k in 0..n {
            let g = (self.rot + k) % n;
            if pred(&self.goods[g]) {
                self.rot = g + 1;
                return Some(g);
            }
        }
        None
    }
}

pub(super) fn edit_json(p: &Path, f: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

pub(super) fn edit_trace(dir: &Path, f: impl FnOnce(&mut Vec<String>)) {
    let text = std::fs::read_to_string(dir.join(TRACE)).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    f(&mut lines);
    let mut out = lines.join("\n");
    out.push('\n');
    std::fs::write(dir.join(TRACE), out).unwrap();
}

/// A numeric value nudged: floats by `rel`, integers by one.
fn nudge(v: &Value, up: bool) -> Value {
    if let Some(n) = v.as_u64() {
        return json!(if up || n == 0 { n + 1 } else { n - 1 });
    }
    let x = v.as_f64().unwrap();
    let f = if up { 1.002 } else { 0.998 };
    if x == 0.0 {
        json!(if up { 0.002 } else { -0.002 })
    } else {
        json!(x * f)
    }
}

pub(super) fn field_of_csv(line: &str, i: usize) -> &str {
    line.split(',').nth(i).unwrap_or("")
}

pub(super) fn with_csv_field(line: &str, i: usize, f: impl Fn(&str) -> String) -> String {
    line.split(',')
        .enumerate()
        .map(|(n, x)| if n == i { f(x) } else { x.to_string() })
        .collect::<Vec<_>>()
        .join(",")
}

/// Every mutation of `goods`, in a fixed order.
pub(super) fn mutations(goods: &[Good]) -> Vec<Mutation> {
    let mut out: Vec<Mutation> = Vec::new();
    let pick = &mut Picker { goods, rot: 0 };
    result::numbers_nudged(pick, &mut out);
    result::fields_dropped(pick, &mut out);
    result::units_swapped(pick, &mut out);
    trace::units_swapped(pick, &mut out);
    trace::truncated(pick, &mut out);
    trace::spliced(pick, &mut out);
    trace::rows_duplicated(pick, &mut out);
    trace::nodes_reordered(pick, &mut out);
    inputs::tokens_changed(pick, &mut out);
    inputs::benchmark_edited(pick, &mut out);
    inputs::modelled_as_measured(pick, &mut out);
    inputs::sidecar_edited(pick, &mut out);
    out
}
