//! Every value a CEL rule reads must be bounded in the schema, or the API server refuses the CRD.
//!
//! When a CRD is created or updated, the API server estimates each `x-kubernetes-validations`
//! rule's worst-case cost from the schema alone: a string without `maxLength`, a list without
//! `maxItems` or a map without `maxProperties` is assumed to be as large as a whole request
//! (about 3 MB). One `self.all(n, n.matches(...))` over such a list then exceeds the per-rule
//! budget (10^7) by five orders of magnitude, and a few dozen `self.matches(...)` on such strings
//! add up to more than the budget of the whole CRD (10^8). The server refuses the CRD ("estimated
//! rule cost exceeds budget by factor of ...") and `helm install` fails. Nothing client-side
//! notices: kube's CEL validator evaluates rules but does not estimate their cost. So the
//! generator walks the schema itself and refuses to emit a CRD in which a rule reads an
//! unbounded value (see [`unbounded_rule_inputs`]).
//!
//! What counts as read is found from the rule text: every `self`/`oldSelf` followed by a chain
//! of field names (`self.kafka.topic`). The value the chain ends at is read, except when the
//! chain is the whole argument of `has(...)`, which only tests presence. Reading a value reads
//! all of it: a list's items, a map's values, an object's fields. Map keys are not checked: a
//! CRD schema has no way to bound them (it has no `propertyNames`).

use serde_json::Value;

/// What keeps a value's size open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// A string without `maxLength` (or `enum`).
    MaxLength,
    /// A list without `maxItems`.
    MaxItems,
    /// A map (`additionalProperties`) without `maxProperties`.
    MaxProperties,
    /// `x-kubernetes-preserve-unknown-fields`, `x-kubernetes-int-or-string` without `maxLength`,
    /// or no `type` at all: the server cannot know how large it is either.
    Shape,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Missing::MaxLength => "string without maxLength",
            Missing::MaxItems => "list without maxItems",
            Missing::MaxProperties => "map without maxProperties",
            Missing::Shape => "value of unknown shape or size",
        })
    }
}

/// A value that a CEL rule reads, but whose size the schema does not bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {missing} read by rule \"{rule}\"")]
pub struct Unbounded {
    /// Below the `openAPIV3Schema`, e.g. `spec.redis.sentinel.nodes`; `[*]` stands for list
    /// items and map values.
    pub path: String,
    pub missing: Missing,
    /// The CEL expression that reads it.
    pub rule: String,
}

/// Every unbounded value read by a rule anywhere below `schema` (an `openAPIV3Schema`).
pub fn unbounded_rule_inputs(schema: &Value) -> Vec<Unbounded> {
    let mut found = Vec::new();
    walk(schema, "", &mut found);
    found
}

/// Visits every schema node (properties, list items, map values) and checks its rules.
fn walk(node: &Value, path: &str, found: &mut Vec<Unbounded>) {
    for rule in rule_texts(node) {
        let mut findings = Findings { rule, found };
        for read in reads(rule) {
            findings.check_read(node, path, &read);
        }
    }
    if let Some(properties) = node.get("properties").and_then(Value::as_object) {
        for (name, child) in properties {
            walk(child, &join(path, name), found);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = node.get(key).filter(|c| c.is_object()) {
            walk(child, &format!("{path}[*]"), found);
        }
    }
}

/// The CEL expressions of a node's rules: `rule`, and `messageExpression`, which the server
/// costs just the same.
fn rule_texts(node: &Value) -> impl Iterator<Item = &str> {
    node.get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|rule| {
            ["rule", "messageExpression"]
                .into_iter()
                .filter_map(move |key| rule.get(key).and_then(Value::as_str))
        })
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// The unbounded values found for one rule.
struct Findings<'a> {
    rule: &'a str,
    found: &'a mut Vec<Unbounded>,
}

impl Findings<'_> {
    /// Records an unbounded value once, however often the rule reads it (`self.size() > 0 &&
    /// self.size() < 9` is one finding).
    fn push(&mut self, path: &str, missing: Missing) {
        let unbounded = Unbounded {
            path: path.to_string(),
            missing,
            rule: self.rule.to_string(),
        };
        if !self.found.contains(&unbounded) {
            self.found.push(unbounded);
        }
    }

    /// Follows `read`'s fields down from the rule's own node and checks the value it ends at.
    fn check_read(&mut self, node: &Value, path: &str, read: &Read) {
        let mut node = node;
        let mut path = path.to_string();
        let mut followed_all = true;
        for field in &read.fields {
            match node.get("properties").and_then(|p| p.get(field)) {
                Some(child) => {
                    node = child;
                    path = join(&path, field);
                }
                // Not a declared field (a map key, or a typo the server will refuse): the value
                // reached so far is what the rule reads.
                None => {
                    followed_all = false;
                    break;
                }
            }
        }
        if read.presence_only && followed_all {
            return;
        }
        self.check_bounded(node, &path);
    }

    /// Records every part of the value at `node` whose size the schema leaves open.
    fn check_bounded(&mut self, node: &Value, path: &str) {
        // A closed set of values is as long as its longest member.
        if node.get("enum").is_some() {
            return;
        }
        let has = |key: &str| node.get(key).is_some();
        match node.get("type").and_then(Value::as_str) {
            Some("string") => {
                // Timestamps and durations are fixed-size values in CEL, whatever their text.
                let fixed = matches!(
                    node.get("format").and_then(Value::as_str),
                    Some("date" | "date-time" | "duration")
                );
                if !fixed && !has("maxLength") {
                    self.push(path, Missing::MaxLength);
                }
            }
            Some("array") => {
                if !has("maxItems") {
                    self.push(path, Missing::MaxItems);
                }
                match node.get("items").filter(|i| i.is_object()) {
                    Some(items) => self.check_bounded(items, &format!("{path}[*]")),
                    None => self.push(path, Missing::Shape),
                }
            }
            Some("object") => self.check_object(node, path),
            Some("integer" | "number" | "boolean") => {}
            _ if node.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
                && has("maxLength") => {}
            _ => self.push(path, Missing::Shape),
        }
    }

    /// An object is a map (`additionalProperties`), a struct (`properties`), or of unknown shape.
    fn check_object(&mut self, node: &Value, path: &str) {
        if let Some(values) = node.get("additionalProperties").filter(|v| v.is_object()) {
            if node.get("maxProperties").is_none() {
                self.push(path, Missing::MaxProperties);
            }
            self.check_bounded(values, &format!("{path}[*]"));
            return;
        }
        if node.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
            self.push(path, Missing::Shape);
            return;
        }
        // A struct: reading it whole (`self == oldSelf`) reads every field.
        if let Some(properties) = node.get("properties").and_then(Value::as_object) {
            for (name, child) in properties {
                self.check_bounded(child, &join(path, name));
            }
        }
    }
}

/// One value a rule reads: `self` (or `oldSelf`) followed by these field names.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Read {
    fields: Vec<String>,
    /// The chain is the whole argument of `has(...)`: only presence is tested, nothing is read.
    presence_only: bool,
}

/// Every `self.a.b` / `oldSelf.a.b` chain in a CEL expression. A name followed by `(` is a
/// method (`self.size()`), not a field, and ends the chain; string literals are skipped, so
/// `'self'` in a regex or message is not a read.
fn reads(rule: &str) -> Vec<Read> {
    let chars: Vec<char> = rule.chars().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' || c == '"' {
            i = skip_string(&chars, i);
        } else if is_ident_start(c) {
            let start = i;
            let (name, end) = ident(&chars, i);
            i = end;
            let after_dot = previous_non_space(&chars, start) == Some('.');
            if (name == "self" || name == "oldSelf") && !after_dot {
                let (fields, end) = field_chain(&chars, i);
                let presence_only = is_has_argument(&chars, start, end);
                found.push(Read {
                    fields,
                    presence_only,
                });
                i = end;
            }
        } else {
            i += 1;
        }
    }
    found
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The identifier starting at `start`, and the index after it.
fn ident(chars: &[char], start: usize) -> (String, usize) {
    let end = (start..chars.len())
        .find(|&j| !is_ident_char(chars[j]))
        .unwrap_or(chars.len());
    (chars[start..end].iter().collect(), end)
}

fn skip_spaces(chars: &[char], mut i: usize) -> usize {
    while chars.get(i).is_some_and(|c| c.is_whitespace()) {
        i += 1;
    }
    i
}

fn previous_non_space(chars: &[char], before: usize) -> Option<char> {
    chars[..before]
        .iter()
        .rev()
        .find(|c| !c.is_whitespace())
        .copied()
}

/// The index after the string literal opening at `start` (single, double or triple quoted; a
/// backslash escapes the next character).
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let triple = chars.get(start + 1) == Some(&quote) && chars.get(start + 2) == Some(&quote);
    let mut i = start + if triple { 3 } else { 1 };
    while i < chars.len() {
        if chars[i] == '\\' {
            i += 2;
        } else if chars[i] == quote
            && (!triple || (chars.get(i + 1) == Some(&quote) && chars.get(i + 2) == Some(&quote)))
        {
            return i + if triple { 3 } else { 1 };
        } else {
            i += 1;
        }
    }
    chars.len()
}

/// The field names of `.a.b` (or `.?a`, an optional field) starting at `i`, up to the first
/// method call or anything else, and the index after the last field.
fn field_chain(chars: &[char], mut i: usize) -> (Vec<String>, usize) {
    let mut fields = Vec::new();
    loop {
        let dot = skip_spaces(chars, i);
        if chars.get(dot) != Some(&'.') {
            return (fields, i);
        }
        let mut start = skip_spaces(chars, dot + 1);
        if chars.get(start) == Some(&'?') {
            start = skip_spaces(chars, start + 1);
        }
        if !chars.get(start).is_some_and(|&c| is_ident_start(c)) {
            return (fields, i);
        }
        let (name, end) = ident(chars, start);
        if chars.get(skip_spaces(chars, end)) == Some(&'(') {
            return (fields, i);
        }
        fields.push(name);
        i = end;
    }
}

/// Whether `chars[start..end]` is the whole argument of a `has(...)` macro.
fn is_has_argument(chars: &[char], start: usize, end: usize) -> bool {
    if chars.get(skip_spaces(chars, end)) != Some(&')') {
        return false;
    }
    let before: String = chars[..start].iter().collect();
    let Some(call) = before.trim_end().strip_suffix('(') else {
        return false;
    };
    let Some(prefix) = call.trim_end().strip_suffix("has") else {
        return false;
    };
    !prefix
        .chars()
        .next_back()
        .is_some_and(|c| is_ident_char(c) || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{checked_yaml, crd, crd_yaml, CrdError};
    use serde_json::json;

    fn schema_of_today() -> Value {
        let crd = serde_json::to_value(crd()).expect("CRD serialises");
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
    }

    /// `fields` as the rule text `self.a.b` names them.
    fn read(fields: &[&str], presence_only: bool) -> Read {
        Read {
            fields: fields.iter().map(|f| f.to_string()).collect(),
            presence_only,
        }
    }

    fn paths(found: &[Unbounded]) -> Vec<(&str, Missing)> {
        found.iter().map(|u| (u.path.as_str(), u.missing)).collect()
    }

    #[test]
    fn todays_crd_bounds_every_value_its_rules_read() {
        let schema = schema_of_today();
        let found = unbounded_rule_inputs(&schema);
        assert!(found.is_empty(), "unbounded: {found:#?}");
        crd_yaml().expect("today's CRD is generated");
        // The checker did look: the bounds it relies on are there.
        let nodes = &schema["properties"]["spec"]["properties"]["redis"]["properties"]["sentinel"]
            ["properties"]["nodes"];
        assert_eq!(nodes["maxItems"], 16);
        assert_eq!(nodes["items"]["maxLength"], 259);
    }

    #[test]
    fn an_unbounded_string_under_a_rule_is_refused() {
        let schema = json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "properties": {
                        "name": {
                            "type": "string",
                            "x-kubernetes-validations": [{"rule": "self.size() > 0"}]
                        },
                        "bounded": {
                            "type": "string",
                            "maxLength": 8,
                            "x-kubernetes-validations": [{"rule": "self.size() > 0"}]
                        }
                    }
                }
            }
        });
        let found = unbounded_rule_inputs(&schema);
        assert_eq!(
            found,
            [Unbounded {
                path: "spec.name".into(),
                missing: Missing::MaxLength,
                rule: "self.size() > 0".into(),
            }]
        );
        assert_eq!(
            found[0].to_string(),
            r#"spec.name: string without maxLength read by rule "self.size() > 0""#
        );
    }

    #[test]
    fn the_generator_refuses_a_crd_whose_rule_reads_an_unbounded_list() {
        let mut value = serde_json::to_value(crd()).expect("CRD serialises");
        let nodes = &mut value["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
            ["spec"]["properties"]["redis"]["properties"]["sentinel"]["properties"]["nodes"];
        nodes.as_object_mut().expect("nodes").remove("maxItems");
        let crd = serde_json::from_value(value).expect("still a CRD");
        let error = checked_yaml(&crd).expect_err("refused");
        let CrdError::UnboundedRuleInputs(found) = &error else {
            panic!("wrong error: {error}");
        };
        assert_eq!(
            paths(found),
            [("spec.redis.sentinel.nodes", Missing::MaxItems)]
        );
        let message = error.to_string();
        assert!(
            message.contains(
                r#"spec.redis.sentinel.nodes: list without maxItems read by rule "self.size() >= 1 && self.size() <= 16"#
            ),
            "{message}"
        );
    }

    #[test]
    fn paths_through_fields_lists_and_maps_are_followed() {
        let schema = json!({
            "type": "object",
            "x-kubernetes-validations": [
                {"rule": "has(self.opt) && self.a.b == 'x' && self.a.size == 1"},
                {"rule": "self.tags.all(t, t.size() < 5) && self.labels.all(k, k != 'x')"},
                {"rule": "self.whole == oldSelf.whole", "messageExpression": "self.msg"}
            ],
            "properties": {
                "opt": {"type": "string"},
                "a": {"type": "object", "properties": {
                    "b": {"type": "string"},
                    "size": {"type": "integer"},
                    "unread": {"type": "string"}
                }},
                "tags": {"type": "array", "items": {"type": "string"}},
                "labels": {"type": "object", "maxProperties": 4,
                           "additionalProperties": {"type": "string"}},
                "whole": {"type": "object", "properties": {
                    "mode": {"type": "string", "enum": ["a", "b"]},
                    "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                }},
                "msg": {"type": "string"}
            }
        });
        assert_eq!(
            paths(&unbounded_rule_inputs(&schema)),
            [
                ("a.b", Missing::MaxLength),
                ("tags", Missing::MaxItems),
                ("tags[*]", Missing::MaxLength),
                ("labels[*]", Missing::MaxLength),
                ("whole.free", Missing::Shape),
                ("msg", Missing::MaxLength),
            ]
        );
    }

    #[test]
    fn rules_on_list_items_and_map_values_are_checked_too() {
        let schema = json!({
            "type": "object",
            "properties": {
                "refs": {"type": "array", "maxItems": 3, "items": {
                    "type": "object",
                    "properties": {"name": {"type": "string",
                        "x-kubernetes-validations": [{"rule": "self != ''"}]}}
                }},
                "env": {"type": "object", "additionalProperties": {
                    "type": "string", "x-kubernetes-validations": [{"rule": "self != ''"}]
                }}
            }
        });
        assert_eq!(
            paths(&unbounded_rule_inputs(&schema)),
            [
                ("env[*]", Missing::MaxLength),
                ("refs[*].name", Missing::MaxLength)
            ]
        );
    }

    #[test]
    fn reads_are_found_in_the_rule_text() {
        assert_eq!(reads("self.size() > 0"), [read(&[], false)]);
        assert_eq!(
            reads("!has(self.kafka.sasl) || self.kafka.securityProtocol in ['ssl']"),
            [
                read(&["kafka", "sasl"], true),
                read(&["kafka", "securityProtocol"], false)
            ]
        );
        // A field called `size` is a field; `size()` is a method.
        assert_eq!(
            reads("self.window.size == '1m' && self.window.size() > 0"),
            [read(&["window", "size"], false), read(&["window"], false)]
        );
        assert_eq!(
            reads("self == oldSelf"),
            [read(&[], false), read(&[], false)]
        );
        // `self` inside a string literal, or as another object's field, is not a read.
        assert_eq!(
            reads(r#"self.matches('^self\\.x$') && "self" != other.self"#),
            [read(&[], false)]
        );
        assert_eq!(reads("self.?opt.orValue('')"), [read(&["opt"], false)]);
        assert_eq!(
            reads("has(self.a) && has(self.a.b.c())"),
            [read(&["a"], true), read(&["a", "b"], false)]
        );
        assert_eq!(reads("myself.x && selfish"), []);
    }
}
