//! The generated CRD: the checked-in file matches the Rust types, its shape is what kubectl and
//! HPAs need, every field is documented, and the API server's defaulting yields valid objects.

mod support;

use kube::CustomResourceExt;
use serde_json::{json, Value};
use streamjob_operator::crd::{crd_yaml, StreamJob};

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
    let crd = serde_json::to_value(StreamJob::crd()).expect("serialises");
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
