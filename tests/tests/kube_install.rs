//! `helm install` on a real kube-apiserver: the chart's CRD is accepted (its CEL rules within the
//! server's cost budget) and Established, every sample passes a server-side dry run, and invalid
//! StreamJobs are refused with a message that names the field. Only a real API server estimates
//! CEL cost; the client-side rule tests (operator/tests/cel_rules.rs) cannot see a refused CRD.

use std::path::Path;

use serde_json::json;
use streamjob_tests::controlplane::cluster::{test_values, OPERATOR_NAMESPACE, RELEASE};
use streamjob_tests::controlplane::{helm, ControlPlane};

fn samples_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../operator/samples")
}

/// Applies `spec` (over the minimal sample's) with a server-side dry run; the refusal message.
fn refusal(plane: &ControlPlane, spec: serde_json::Value) -> Option<String> {
    let mut object = json!({
        "apiVersion": "streaming.austin.dev/v1alpha1",
        "kind": "StreamJob",
        "metadata": {"name": "bad", "namespace": "default"},
        "spec": {
            "image": "registry.example/streamjob-worker:0.1.0",
            "kafka": {"brokers": "kafka-0.kafka:9092"},
            "redis": {"url": "redis://redis:6379/0"},
        }
    });
    merge(&mut object["spec"], &spec);
    let path = plane.dir().join("bad.json");
    std::fs::write(&path, object.to_string()).expect("manifest");
    let output = plane.kubectl_output(&[
        "apply",
        "--dry-run=server",
        "-f",
        &path.display().to_string(),
    ]);
    (!output.status.success()).then(|| String::from_utf8_lossy(&output.stderr).into_owned())
}

fn merge(target: &mut serde_json::Value, patch: &serde_json::Value) {
    match (target, patch) {
        (serde_json::Value::Object(t), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
        (t, p) => *t = p.clone(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn heavy_helm_install_establishes_the_crd_and_the_server_enforces_its_rules() {
    let plane = ControlPlane::start().await;
    helm::install(&plane, RELEASE, OPERATOR_NAMESPACE, &test_values());
    plane.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/streamjobs.streaming.austin.dev",
        "--timeout=30s",
    ]);

    for sample in [
        "minimal.yaml",
        "full.yaml",
        "sentinel.yaml",
        "sentinel-tls.yaml",
        "cluster.yaml",
    ] {
        let path = samples_dir().join(sample);
        let text = std::fs::read_to_string(&path).expect("sample");
        let object: serde_json::Value = serde_yaml::from_str(&text).expect("sample parses");
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default");
        // A dry run still needs the sample's namespace.
        let _ = plane.kubectl_output(&["create", "namespace", namespace]);
        let output = plane.kubectl_output(&[
            "apply",
            "--dry-run=server",
            "-f",
            &path.display().to_string(),
        ]);
        assert!(
            output.status.success(),
            "{sample} refused by the API server: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let cases = [
        (
            json!({"redis": {"sentinel": {"masterName": "m", "nodes": ["not a node"]}}}),
            "spec.redis.sentinel.nodes",
        ),
        (
            json!({"redis": {"keyPrefix": "x".repeat(65)}}),
            "spec.redis.keyPrefix",
        ),
        (json!({"kafka": {"topic": "bad topic"}}), "spec.kafka.topic"),
        (json!({"replicas": 1001}), "spec.replicas"),
        (
            json!({"redis": {"url": "redis://user:secret@redis:6379"}}),
            "spec.redis.url must not carry credentials",
        ),
        (json!({"image": ""}), "spec.image"),
        (
            json!({"redis": {
                "url": "redis://cluster",
                "cluster": {"nodes": ["redis-0.redis:6379"]},
                "keyPrefix": "{eu}:",
            }}),
            "spec.redis.keyPrefix must not contain '{' with spec.redis.cluster",
        ),
    ];
    for (spec, field) in cases {
        let message = refusal(&plane, spec.clone())
            .unwrap_or_else(|| panic!("the API server accepted {spec}"));
        assert!(
            message.contains(field),
            "refusing {spec} should name {field:?}, said: {message}"
        );
    }
}
