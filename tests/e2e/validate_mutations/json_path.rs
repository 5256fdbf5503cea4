//! Paths into JSON values (`a.b[2].c`): finding, removing and listing numeric fields, and the
//! generic pattern of a path (map keys and indices made `*` / `[]`) to cover each kind of field
//! once. A path that does not exist gives `None` / `false`.

use serde_json::Value;

pub(super) fn segments(path: &str) -> Vec<(String, Option<usize>)> {
    path.split('.')
        .map(|seg| match seg.find('[') {
            Some(p) => (seg[..p].to_string(), seg[p + 1..seg.len() - 1].parse().ok()),
            None => (seg.to_string(), None),
        })
        .collect()
}

pub(super) fn get_mut<'a>(v: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    let mut cur = v;
    for (k, i) in segments(path) {
        cur = cur.get_mut(&k)?;
        if let Some(i) = i {
            cur = cur.get_mut(i)?;
        }
    }
    Some(cur)
}

pub(super) fn remove(v: &mut Value, path: &str) -> bool {
    let (parent, last) = match path.rfind('.') {
        Some(p) => (&path[..p], &path[p + 1..]),
        None => ("", path),
    };
    let obj = if parent.is_empty() {
        Some(v)
    } else {
        get_mut(v, parent)
    };
    let Some(obj) = obj else { return false };
    let (key, idx) = segments(last).remove(0);
    match idx {
        Some(i) => match obj.get_mut(&key) {
            Some(Value::Array(a)) if i < a.len() => {
                a.remove(i);
                true
            }
            _ => false,
        },
        None => obj.as_object_mut().and_then(|o| o.remove(&key)).is_some(),
    }
}

/// Every numeric leaf of `v`, by path.
pub(super) fn numeric_leaves(v: &Value, path: &str, out: &mut Vec<String>) {
    match v {
        Value::Number(_) => out.push(path.to_string()),
        Value::Object(o) => {
            for (k, x) in o {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                numeric_leaves(x, &p, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                numeric_leaves(x, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// A path with its map keys and indices made generic, to cover each kind of field once.
pub(super) fn pattern(path: &str) -> String {
    let mut out = String::new();
    for (n, seg) in path.split('.').enumerate() {
        if n > 0 {
            out.push('.');
        }
        let (name, idx) = match seg.find('[') {
            Some(p) => (&seg[..p], "[]"),
            None => (seg, ""),
        };
        let generic = name.chars().all(|c| c.is_ascii_digit())
            || name.ends_with("shot")
            || ["mmlu", "arc_challenge", "hellaswag"].contains(&name);
        out.push_str(if generic { "*" } else { name });
        out.push_str(idx);
    }
    out
}
