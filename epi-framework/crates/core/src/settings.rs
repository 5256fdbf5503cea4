//! Plugins that describe themselves: every registration carries its configuration's JSON Schema
//! (derived with `schemars` from the config struct, which *is* the plugin — doc comments become
//! descriptions, `#[serde(default)]` values become defaults) and an example value. From it come
//! `epi list plugins --details KEY`, the validation of `--set` and of the documented flags that
//! alias settings, and the settings tables of `docs/plugins.md` (generated; a test fails when they
//! drift).
//!
//! ```ignore
//! impl PluginSettings for RaplConfig {
//!     fn example() -> Self { RaplConfig { interval_ms: 100, ..Default::default() } }
//! }
//! inventory::submit! {
//!     PluginRegistration {
//!         key: "rapl", description: "…", factory: Factory::Power(build),
//!         settings: Settings::of::<RaplConfig>,
//!         toml_aliases: &[], capabilities: &[Capability::AutoDetect],
//!     }
//! }
//! ```
//!
//! Nothing here fails on a well-formed schema; a setting path that the schema does not have is
//! reported by [`Settings::check_path`] with the plugin's settings listed.

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{Map, Value};

/// A plugin configuration that can describe itself: its schema (derived) and an example.
pub trait PluginSettings: JsonSchema + Serialize {
    /// A working example configuration (required settings filled in with typical values).
    fn example() -> Self;
}

/// Builds an example configuration from JSON, the settings left out taking their defaults (as
/// they do in `epi-bench.toml`). The example is the plugin's own constant: one that does not
/// deserialize is a bug in the plugin, and panics naming the type, which every listing and
/// contract test reaches at once.
pub fn example_from<T: serde::de::DeserializeOwned>(value: Value) -> T {
    match serde_json::from_value(value) {
        Ok(v) => v,
        Err(e) => panic!(
            "the example configuration of {} does not deserialize: {e}",
            std::any::type_name::<T>()
        ),
    }
}

/// A plugin's configuration, described: its JSON Schema and an example value.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    schema: Value,
    example: Value,
}

/// One setting, flattened from the schema (nested tables give dotted keys).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Setting {
    /// Dotted key (`port`, `columns.watts`).
    pub key: String,
    /// Type in words (`string`, `integer ≥ 0`, `array of string`, `"none" | "odd" | "even"`).
    #[serde(rename = "type")]
    pub ty: String,
    /// The default value; `None` when the setting is required or has no default.
    pub default: Option<Value>,
    /// Whether the setting must be given.
    pub required: bool,
    /// Whether `null` (absent) is a valid value.
    pub optional: bool,
    /// The doc comment of the field, on one line.
    pub doc: String,
}

impl Settings {
    /// The description of config type `T`.
    pub fn of<T: PluginSettings>() -> Settings {
        let schema = schemars::SchemaGenerator::default()
            .into_root_schema_for::<T>()
            .to_value();
        let example = serde_json::to_value(T::example()).unwrap_or(Value::Null);
        Settings { schema, example }
    }

    /// A plugin without settings (an empty table; any key is refused).
    pub fn none() -> Settings {
        Settings {
            schema: serde_json::json!({"type": "object", "properties": {}, "additionalProperties": false}),
            example: Value::Object(Map::new()),
        }
    }

    /// A description from a schema and example given as JSON (dynamic plugins, tests).
    pub fn from_json(schema: Value, example: Value) -> Settings {
        Settings { schema, example }
    }

    /// The JSON Schema.
    pub fn schema(&self) -> &Value {
        &self.schema
    }

    /// The example value.
    pub fn example(&self) -> &Value {
        &self.example
    }

    /// Every setting, in declaration order, nested tables flattened to dotted keys.
    pub fn fields(&self) -> Vec<Setting> {
        let mut out = Vec::new();
        flatten(&self.schema, &self.schema, "", &mut out);
        out
    }

    /// Whether `path` (dotted) names a setting: a field, a field of a nested table, or any key
    /// of a map-typed setting.
    pub fn has(&self, path: &[&str]) -> bool {
        let mut node = resolve(&self.schema, &self.schema);
        for seg in path {
            let obj = resolve(&self.schema, unwrap_optional(&self.schema, node));
            if let Some(p) = obj.get("properties").and_then(|p| p.get(*seg)) {
                node = p;
                continue;
            }
            match obj.get("additionalProperties") {
                // A map-typed setting: any key, its values of that schema.
                Some(v @ Value::Object(_)) => node = v,
                // A free-form table (no declared fields, other keys allowed).
                Some(Value::Bool(true)) | None if obj.get("properties").is_none() => {
                    return obj.get("type") == Some(&"object".into())
                }
                // A struct: its fields only.
                _ => return false,
            }
        }
        true
    }

    /// `Ok` when `path` names a setting; otherwise a message listing the settings there are.
    pub fn check_path(&self, path: &[&str]) -> Result<(), String> {
        if self.has(path) {
            return Ok(());
        }
        let keys: Vec<String> = self.fields().into_iter().map(|s| s.key).collect();
        Err(format!(
            "unknown field `{}`, expected one of: {}",
            path.join("."),
            if keys.is_empty() {
                "(none: this plugin takes no settings)".to_string()
            } else {
                keys.join(", ")
            }
        ))
    }

    /// The example as the body of a TOML table (`key = value` lines, nested tables as dotted
    /// keys), leaving out `None` values and settings equal to their default.
    pub fn example_toml(&self) -> String {
        let mut out = String::new();
        if let Value::Object(m) = &self.example {
            let m = without_defaults(&self.schema, &self.schema, m);
            toml_lines(&m, "", &mut out);
        }
        out
    }
}

/// `m` without the entries equal to their schema default (nested tables likewise, dropped when
/// nothing is left).
fn without_defaults(root: &Value, node: &Value, m: &Map<String, Value>) -> Map<String, Value> {
    let obj = unwrap_optional(root, node);
    let props = obj.get("properties");
    let mut out = Map::new();
    for (k, v) in m {
        let prop = props.and_then(|p| p.get(k));
        if prop.and_then(|p| p.get("default")) == Some(v) {
            continue;
        }
        match (v, prop) {
            (Value::Object(inner), Some(p))
                if unwrap_optional(root, p).get("properties").is_some() =>
            {
                let inner = without_defaults(root, p, inner);
                if !inner.is_empty() {
                    out.insert(k.clone(), Value::Object(inner));
                }
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

fn toml_lines(m: &Map<String, Value>, prefix: &str, out: &mut String) {
    for (k, v) in m {
        let key = format!("{prefix}{}", toml_key(k));
        match v {
            Value::Null => {}
            Value::Object(inner) if !inner.is_empty() => toml_lines(inner, &format!("{key}."), out),
            v => {
                out.push_str(&format!("{key} = {}\n", toml_value(v)));
            }
        }
    }
}

fn toml_key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_string()
    } else {
        serde_json::to_string(k).unwrap_or_else(|_| format!("\"{k}\""))
    }
}

/// A JSON value written as a TOML value (inline tables and arrays).
pub fn toml_value(v: &Value) -> String {
    match v {
        Value::Null => "\"\"".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
                let s = format!("{f:?}");
                if s.contains('.') || s.contains('e') || s.contains("inf") || s.contains("NaN") {
                    s
                } else {
                    format!("{s}.0")
                }
            } else {
                n.to_string()
            }
        }
        Value::String(s) => serde_json::to_string(s).unwrap_or_default(),
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(toml_value).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(m) => format!(
            "{{ {} }}",
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("{} = {}", toml_key(k), toml_value(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Follows a `$ref` into `$defs` (once per level; schemars never chains them).
fn resolve<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    if let Some(Value::String(r)) = node.get("$ref") {
        if let Some(name) = r.strip_prefix("#/$defs/") {
            if let Some(d) = root.get("$defs").and_then(|d| d.get(name)) {
                return d;
            }
        }
    }
    node
}

/// `Option<T>` is `anyOf: [T, {type: null}]` (or `type: [t, "null"]`): the `T`.
fn unwrap_optional<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    let node = resolve(root, node);
    for k in ["anyOf", "oneOf"] {
        if let Some(Value::Array(alts)) = node.get(k) {
            let non_null: Vec<&Value> = alts.iter().filter(|a| !is_null_type(a)).collect();
            if non_null.len() == 1 && alts.len() == 2 {
                return resolve(root, non_null[0]);
            }
        }
    }
    node
}

fn is_null_type(v: &Value) -> bool {
    v.get("type") == Some(&Value::String("null".into()))
}

fn is_optional(root: &Value, node: &Value) -> bool {
    let node = resolve(root, node);
    if let Some(Value::Array(ts)) = node.get("type") {
        return ts.iter().any(|t| t == "null");
    }
    ["anyOf", "oneOf"].iter().any(|k| {
        node.get(*k)
            .and_then(|a| a.as_array())
            .is_some_and(|alts| alts.iter().any(is_null_type))
    })
}

fn flatten(root: &Value, node: &Value, prefix: &str, out: &mut Vec<Setting>) {
    let obj = resolve(root, node);
    let Some(Value::Object(props)) = obj.get("properties") else {
        return;
    };
    let required: Vec<&str> = obj
        .get("required")
        .and_then(|r| r.as_array())
        .map(|r| r.iter().filter_map(|s| s.as_str()).collect())
        .unwrap_or_default();
    for (name, prop) in props {
        let key = format!("{prefix}{name}");
        let inner = unwrap_optional(root, prop);
        let nested = inner.get("properties").is_some_and(|p| p.is_object())
            && inner.get("type") == Some(&Value::String("object".into()));
        let doc = one_line(
            prop.get("description")
                .or_else(|| inner.get("description"))
                .and_then(|d| d.as_str())
                .unwrap_or(""),
        );
        if nested {
            out.push(Setting {
                key: key.clone(),
                ty: "table".into(),
                default: prop.get("default").cloned(),
                required: required.contains(&name.as_str()),
                optional: is_optional(root, prop),
                doc,
            });
            flatten(root, inner, &format!("{key}."), out);
            continue;
        }
        out.push(Setting {
            key,
            ty: type_words(root, prop),
            default: prop.get("default").cloned(),
            required: required.contains(&name.as_str()),
            optional: is_optional(root, prop),
            doc,
        });
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The type of a schema node, in words.
fn type_words(root: &Value, node: &Value) -> String {
    let node = unwrap_optional(root, node);
    if let Some(Value::Array(vals)) = node.get("enum") {
        return vals
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(" | ");
    }
    if let Some(c) = node.get("const") {
        return c.to_string();
    }
    for k in ["oneOf", "anyOf"] {
        if let Some(Value::Array(alts)) = node.get(k) {
            let words: Vec<String> = alts
                .iter()
                .filter(|a| !is_null_type(a))
                .map(|a| type_words(root, a))
                .collect();
            return words.join(" | ");
        }
    }
    let ty = match node.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(|t| t.as_str())
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join(" | "),
        _ => return "any".into(),
    };
    match ty.as_str() {
        "array" => match node.get("items") {
            Some(items) => format!("array of {}", type_words(root, items)),
            None => match node.get("prefixItems").and_then(|p| p.as_array()) {
                Some(p) => format!(
                    "[{}]",
                    p.iter()
                        .map(|i| type_words(root, i))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => "array".into(),
            },
        },
        "integer" => match node.get("minimum").and_then(|m| m.as_f64()) {
            Some(m) if m >= 0.0 => format!("integer ≥ {m}"),
            _ => "integer".into(),
        },
        "object" => match node.get("additionalProperties") {
            Some(v @ Value::Object(_)) => format!("table of {}", type_words(root, v)),
            _ => "table".into(),
        },
        _ => ty,
    }
}

/// Parses `KEY=VALUE` (`--set`): `KEY` a dotted path (`power.epi-meter.port`), `VALUE` a TOML
/// value (`3`, `true`, `[1, 2]`, `"x"`, `{ a = 1 }`), else taken as a bare string.
pub fn parse_assignment(s: &str) -> Result<(Vec<String>, Value), String> {
    let Some((k, v)) = s.split_once('=') else {
        return Err(format!("`{s}`: expected KEY=VALUE"));
    };
    let path: Vec<String> = k.trim().split('.').map(|p| p.trim().to_string()).collect();
    if path.iter().any(|p| p.is_empty()) {
        return Err(format!(
            "`{s}`: the key `{}` has an empty part; expected a dotted path like power.epi-meter.port",
            k.trim()
        ));
    }
    let v = v.trim();
    let value = match toml::from_str::<toml::Table>(&format!("v = {v}")) {
        Ok(mut t) => t
            .remove("v")
            .and_then(|v| serde_json::to_value(v).ok())
            .unwrap_or_else(|| Value::String(v.to_string())),
        Err(_) => Value::String(v.to_string()),
    };
    Ok((path, value))
}

/// Sets `path` in `target` (an object; made one if it is not), creating tables on the way.
pub fn set_path(target: &mut Value, path: &[String], value: Value) {
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Some((last, init)) = path.split_last() else {
        *target = value;
        return;
    };
    let mut node = target;
    for seg in init {
        let Value::Object(m) = node else { return };
        let next = m
            .entry(seg.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !next.is_object() {
            *next = Value::Object(Map::new());
        }
        node = next;
    }
    if let Value::Object(m) = node {
        m.insert(last.clone(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        /// Column of watts.
        #[serde(default = "w")]
        watts: String,
    }
    fn w() -> String {
        "watts".into()
    }
    impl Default for Inner {
        fn default() -> Self {
            Inner { watts: w() }
        }
    }

    #[derive(Debug, Serialize, Deserialize, JsonSchema)]
    #[serde(rename_all = "lowercase")]
    enum Parity {
        None,
        Odd,
    }

    /// A test config.
    #[derive(Debug, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct Demo {
        /// The serial port
        /// (a device path).
        port: String,
        /// Baud rate.
        #[serde(default = "baud")]
        baud: u32,
        /// Parity.
        #[serde(default = "parity")]
        parity: Parity,
        /// Accuracy.
        #[serde(default)]
        accuracy_rel: Option<f64>,
        /// Columns.
        #[serde(default)]
        columns: Inner,
        /// Weights.
        #[serde(default)]
        weights: std::collections::BTreeMap<String, f64>,
        /// Devices.
        #[serde(default)]
        devices: Vec<u32>,
    }
    fn baud() -> u32 {
        115200
    }
    fn parity() -> Parity {
        Parity::None
    }
    impl PluginSettings for Demo {
        fn example() -> Self {
            Demo {
                port: "/dev/ttyUSB0".into(),
                baud: 9600,
                parity: Parity::Odd,
                accuracy_rel: None,
                columns: Inner::default(),
                weights: Default::default(),
                devices: vec![0, 1],
            }
        }
    }

    #[test]
    fn fields_carry_types_defaults_docs_and_nesting() {
        let s = Settings::of::<Demo>();
        let f = s.fields();
        let get = |k: &str| {
            f.iter()
                .find(|s| s.key == k)
                .unwrap_or_else(|| panic!("{k}: {f:?}"))
        };
        assert!(get("port").required);
        assert_eq!(get("port").ty, "string");
        assert_eq!(get("port").doc, "The serial port (a device path).");
        assert_eq!(get("baud").default, Some(Value::from(115200)));
        assert!(get("baud").ty.starts_with("integer"), "{}", get("baud").ty);
        assert_eq!(get("parity").ty, "\"none\" | \"odd\"");
        assert!(get("accuracy_rel").optional);
        assert_eq!(get("accuracy_rel").ty, "number");
        assert_eq!(get("columns").ty, "table");
        assert_eq!(get("columns.watts").default, Some(Value::from("watts")));
        assert_eq!(get("weights").ty, "table of number");
        assert!(get("devices").ty.starts_with("array of integer"));
        let keys: Vec<&str> = f.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "port",
                "baud",
                "parity",
                "accuracy_rel",
                "columns",
                "columns.watts",
                "weights",
                "devices"
            ]
        );
    }

    #[test]
    fn paths_are_checked_against_the_schema() {
        let s = Settings::of::<Demo>();
        assert!(s.has(&["port"]));
        assert!(s.has(&["columns", "watts"]));
        assert!(s.has(&["weights", "anything"]));
        assert!(!s.has(&["prot"]));
        assert!(!s.has(&["columns", "amps"]));
        let e = s.check_path(&["prot"]).unwrap_err();
        assert!(
            e.contains("unknown field `prot`") && e.contains("port, baud"),
            "{e}"
        );
        assert!(Settings::none()
            .check_path(&["x"])
            .unwrap_err()
            .contains("no settings"));
    }

    #[test]
    fn the_example_is_a_toml_table_body() {
        let s = Settings::of::<Demo>();
        let t = s.example_toml();
        assert!(t.contains("port = \"/dev/ttyUSB0\"\n"), "{t}");
        assert!(t.contains("parity = \"odd\"\n"), "{t}");
        assert!(!t.contains("columns"), "defaults are left out: {t}");
        assert!(t.contains("devices = [0, 1]\n"), "{t}");
        assert!(!t.contains("accuracy_rel"), "{t}");
        // and it parses back as TOML into the config
        let table: toml::Table = toml::from_str(&t).unwrap();
        let back: Demo = serde_json::from_value(serde_json::to_value(table).unwrap()).unwrap();
        assert_eq!(back.baud, 9600);
    }

    #[test]
    fn assignments_take_toml_values_or_bare_strings() {
        let (p, v) = parse_assignment("power.epi-meter.baud=9600").unwrap();
        assert_eq!(p, ["power", "epi-meter", "baud"]);
        assert_eq!(v, Value::from(9600));
        assert_eq!(
            parse_assignment("a=/dev/ttyUSB0").unwrap().1,
            "/dev/ttyUSB0"
        );
        assert_eq!(
            parse_assignment("a=[1, 2]").unwrap().1,
            serde_json::json!([1, 2])
        );
        assert_eq!(parse_assignment("a=\"x=y\"").unwrap().1, "x=y");
        assert_eq!(parse_assignment("a=true").unwrap().1, true);
        assert!(parse_assignment("a").unwrap_err().contains("KEY=VALUE"));
        assert!(parse_assignment("a..b=1")
            .unwrap_err()
            .contains("empty part"));
        let mut t = Value::Null;
        set_path(&mut t, &p, Value::from(1));
        set_path(
            &mut t,
            &["power".into(), "csv".into(), "path".into()],
            "x".into(),
        );
        assert_eq!(
            t,
            serde_json::json!({"power": {"epi-meter": {"baud": 1}, "csv": {"path": "x"}}})
        );
    }
}
