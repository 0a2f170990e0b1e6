//! The generated CRD: the checked-in file matches the Rust types, its shape is what kubectl and
//! HPAs need, every field is documented, and the API server's defaulting yields valid objects.

mod support;

use serde_json::{json, Value};
use streamjob_operator::crd::{crd_yaml, unbounded_rule_inputs, StreamJob};

#[test]
fn the_checked_in_crd_matches_the_rust_types() {
    let path = support::operator_dir().join("../crds/streamjob.yaml");
    let on_disk = std::fs::read_to_string(&path).expect("crds/streamjob.yaml exists");
    let generated = crd_yaml().expect("CRD serialises");
    assert!(
        on_disk == generated,
        "crds/streamjob.yaml drifted from operator/src/crd.rs; regenerate it with\n  cargo run -q -p streamjob-operator -- crd > crds/streamjob.yaml"
    );
}

#[test]
fn names_subresources_and_columns_are_what_kubectl_needs() {
    let crd = serde_json::to_value(streamjob_operator::crd::crd()).expect("serialises");
    assert_eq!(crd["spec"]["group"], "streaming.austin.dev");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["kind"], "StreamJob");
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["sj"]));
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert_eq!(version["subresources"]["status"], json!({}));
    assert_eq!(
        version["subresources"]["scale"],
        json!({
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector"
        })
    );
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .expect("printer columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        columns,
        ["Phase", "Replicas", "Ready", "Lag", "Last Savepoint", "Age"]
    );
}

/// Every property below `spec` and `status` of our own types carries a description, so
/// `kubectl explain` reads well. Embedded Kubernetes types (resources, affinity, tolerations,
/// conditions) bring their own.
#[test]
fn every_field_is_documented() {
    fn walk(path: &str, schema: &Value, missing: &mut Vec<String>) {
        if path.contains(".resources.")
            || path.contains(".affinity")
            || path.contains(".tolerations")
            || path.contains(".conditions")
            || path.contains(".imagePullSecrets.")
        {
            return;
        }
        if let Some(properties) = schema["properties"].as_object() {
            for (name, child) in properties {
                let child_path = format!("{path}.{name}");
                let documented = child["description"]
                    .as_str()
                    .is_some_and(|d| !d.trim().is_empty());
                // Partition numbers are self-explanatory list keys.
                if !documented && name != "partition" {
                    missing.push(child_path.clone());
                }
                walk(&child_path, child, missing);
            }
        }
        if schema["items"].is_object() {
            walk(&format!("{path}[]"), &schema["items"], missing);
        }
    }
    let schema = support::crd_schema();
    let mut missing = Vec::new();
    walk("spec", &schema["properties"]["spec"], &mut missing);
    walk("status", &schema["properties"]["status"], &mut missing);
    assert!(missing.is_empty(), "undocumented fields: {missing:#?}");
}

/// Structural defaulting as the API server does it: a missing property with a `default` gets it,
/// then defaulting recurses into objects.
fn apply_defaults(schema: &Value, object: &mut Value) {
    let Some(properties) = schema["properties"].as_object() else {
        return;
    };
    let Some(fields) = object.as_object_mut() else {
        return;
    };
    for (name, child) in properties {
        if !fields.contains_key(name) {
            if let Some(default) = child.get("default") {
                fields.insert(name.clone(), default.clone());
            }
        }
        if let Some(value) = fields.get_mut(name) {
            apply_defaults(child, value);
        }
    }
}

#[test]
fn the_crds_defaults_give_a_valid_object_equal_to_the_operators_view() {
    let schema = support::crd_schema();
    let mut raw: Value = serde_yaml::from_str(&support::sample_text("minimal.yaml")).expect("yaml");
    apply_defaults(&schema, &mut raw);
    kube::core::cel::Validator::new()
        .validate(&schema, &raw, None)
        .unwrap_or_else(|e| panic!("defaulted minimal sample breaks a rule: {e}\n{raw:#}"));
    let defaulted: StreamJob = serde_json::from_value(raw).expect("defaulted object parses");
    let by_serde: StreamJob =
        serde_yaml::from_str(&support::sample_text("minimal.yaml")).expect("parses");
    assert_eq!(
        defaulted.spec, by_serde.spec,
        "CRD defaults and serde defaults disagree"
    );
}

fn descriptions(node: &Value, path: &str, out: &mut Vec<(String, String)>) {
    match node {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("description", Value::String(text)) => {
                        out.push((path.to_string(), text.clone()))
                    }
                    _ => descriptions(value, &format!("{path}.{key}"), out),
                }
            }
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .for_each(|(i, v)| descriptions(v, &format!("{path}[{i}]"), out)),
        _ => {}
    }
}

/// `kubectl explain` prints a description as it is: the line breaks of a wrapped doc comment
/// must not reach the schema (only paragraph breaks may).
#[test]
fn descriptions_are_not_broken_mid_sentence() {
    let crd: Value = serde_yaml::from_str(&crd_yaml().expect("CRD serialises")).expect("yaml");
    let mut found = Vec::new();
    descriptions(&crd, "", &mut found);
    assert!(
        found.len() > 50,
        "expected many descriptions, found {}",
        found.len()
    );
    let broken: Vec<&(String, String)> = found
        .iter()
        .filter(|(_, text)| text.replace("\n\n", "").contains('\n'))
        .collect();
    assert!(
        broken.is_empty(),
        "descriptions with line breaks: {broken:#?}"
    );
    let upgrade_mode = &support::crd_schema()["properties"]["spec"]["properties"]["upgradeMode"];
    assert_eq!(
        upgrade_mode["description"],
        "How a spec change reaches running processes: `rolling` (the default: new taskmanagers start next to the old ones and take their partitions over through the fenced handoff, the job never stops; a change of what the Redis fences mean, such as the topic, the Kafka cluster, the key prefix or the Redis target, falls back to `savepoint` and says so in an Event), `savepoint` (stop with a savepoint, restart from it), `last-state` (restart from the newest checkpoint) or `stateless` (restart from the Redis fences and configured starting offsets)."
    );
}

/// One mistake, one message: a bound is checked once (by the schema's minimum/maximum, whose
/// message names the field), not also by a CEL rule that repeats it in other words.
#[test]
fn no_field_is_bounded_twice() {
    fn walk(path: &str, schema: &Value, twice: &mut Vec<String>) {
        let has_rule = schema["x-kubernetes-validations"]
            .as_array()
            .is_some_and(|rules| !rules.is_empty());
        let has_bound = schema.get("minimum").is_some() || schema.get("maximum").is_some();
        if has_rule && has_bound {
            twice.push(path.to_string());
        }
        if let Some(properties) = schema["properties"].as_object() {
            for (name, child) in properties {
                walk(&format!("{path}.{name}"), child, twice);
            }
        }
    }
    let schema = support::crd_schema();
    let mut twice = Vec::new();
    walk("", &schema, &mut twice);
    assert!(
        twice.is_empty(),
        "bounded by both a rule and minimum/maximum: {twice:?}"
    );
    let replicas = &schema["properties"]["spec"]["properties"]["replicas"];
    assert!(
        replicas.get("x-kubernetes-validations").is_none(),
        "{replicas}"
    );
    assert_eq!(replicas["minimum"].as_f64(), Some(0.0));
}

/// The API server refuses a CRD whose CEL rules read strings, lists or maps of unbounded size
/// (their estimated cost exceeds the budget), so the file applied by `helm install` must bound
/// every value a rule reads (the generator refuses otherwise; this checks the file on disk).
#[test]
fn the_checked_in_crd_bounds_every_value_a_rule_reads() {
    let path = support::operator_dir().join("../crds/streamjob.yaml");
    let text = std::fs::read_to_string(&path).expect("crds/streamjob.yaml exists");
    let crd: Value = serde_yaml::from_str(&text).expect("yaml");
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    assert!(schema.is_object(), "no schema in {}", path.display());
    let unbounded = unbounded_rule_inputs(schema);
    assert!(unbounded.is_empty(), "unbounded: {unbounded:#?}");
}

/// The limit a rule states, from `self.size() <= N` or a whole-value regex ending in `{1,N}$`.
fn stated_limit(rule: &str) -> Option<u64> {
    let digits = |text: &str| -> Option<u64> {
        let end = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        text[..end].parse().ok()
    };
    if let Some((_, rest)) = rule.split_once("self.size() <= ") {
        return digits(rest);
    }
    let (_, regex) = rule.split_once("self.matches('^")?;
    let (_, rest) = regex.split_once("{1,")?;
    let limit = digits(rest)?;
    rest.starts_with(&format!("{limit}}}$'")).then_some(limit)
}

/// Where a rule states a size limit, the schema's bound is that same limit: the server checks
/// `maxLength`/`maxItems` before any rule, so a different bound would make the rule's message
/// lie (or never be seen).
#[test]
fn schema_bounds_match_the_limits_the_rules_state() {
    fn walk(path: &str, schema: &Value, found: &mut Vec<(String, Option<u64>, u64)>) {
        for rule in schema["x-kubernetes-validations"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(limit) = rule["rule"].as_str().and_then(stated_limit) {
                let bound = schema
                    .get("maxLength")
                    .or_else(|| schema.get("maxItems"))
                    .and_then(Value::as_u64);
                found.push((path.to_string(), bound, limit));
            }
        }
        if let Some(properties) = schema["properties"].as_object() {
            for (name, child) in properties {
                walk(&format!("{path}.{name}"), child, found);
            }
        }
        if schema["items"].is_object() {
            walk(&format!("{path}[]"), &schema["items"], found);
        }
    }
    let mut found = Vec::new();
    walk("", &support::crd_schema(), &mut found);
    assert!(found.len() >= 10, "expected many stated limits: {found:?}");
    let mismatched: Vec<_> = found
        .iter()
        .filter(|(_, bound, limit)| *bound != Some(*limit))
        .collect();
    assert!(
        mismatched.is_empty(),
        "(path, schema bound, rule's limit): {mismatched:#?}"
    );
}
