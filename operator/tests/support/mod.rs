//! Helpers shared by the operator's integration tests.
#![allow(dead_code)]

pub mod fake_api;
pub mod fake_jobmanager;
pub mod scale;

use std::path::PathBuf;

use streamjob_operator::crd::StreamJob;

pub fn operator_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn sample_text(name: &str) -> String {
    let path = operator_dir().join("samples").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A sample as the API server would hand it to the operator: defaults applied (by serde, the same
/// defaults the CRD declares), uid and generation set.
pub fn sample(name: &str) -> StreamJob {
    let mut job: StreamJob =
        serde_yaml::from_str(&sample_text(name)).expect("sample parses as a StreamJob");
    job.metadata.uid = Some("7c8e7f3a-0000-4000-8000-000000000001".into());
    job.metadata.generation = Some(1);
    job.metadata.resource_version = Some("100".into());
    job
}

/// The CRD's openAPIV3Schema as JSON.
pub fn crd_schema() -> serde_json::Value {
    let crd = streamjob_operator::crd::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("CRD has a schema");
    serde_json::to_value(schema).expect("schema serialises")
}

/// Starts the reconciler's watch caches over the fake API (as `reconciler::run` does) for tests
/// that call `reconcile` directly, and waits for their initial lists.
pub async fn start_caches(ctx: &streamjob_operator::reconciler::Context, client: &kube::Client) {
    use futures::StreamExt;
    let (caches, streams) = streamjob_operator::reconciler::cache::watch(client, None);
    ctx.add_caches(None, caches.clone());
    for (_, stream) in streams.children {
        tokio::spawn(stream.for_each(|_| async {}));
    }
    tokio::spawn(streams.pods.for_each(|_| async {}));
    caches.wait_until_ready().await;
}

fn kind_of(path: &str) -> Option<&'static str> {
    let resource = path.rsplit('/').nth(1)?;
    Some(match resource {
        "configmaps" => "ConfigMap",
        "persistentvolumeclaims" => "PersistentVolumeClaim",
        "services" => "Service",
        "deployments" => "Deployment",
        "networkpolicies" => "NetworkPolicy",
        "secrets" => "Secret",
        "pods" => "Pod",
        _ => return None,
    })
}

/// Waits until the watch caches hold exactly what the fake API server holds (every managed child
/// at its current resource version), as they do in a running operator between events.
pub async fn settle(ctx: &streamjob_operator::reconciler::Context, api: &fake_api::FakeApi) {
    let caches = ctx.caches_for("default").expect("caches started");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut expected: Vec<(String, String, String, String)> = api
            .objects_under("/")
            .into_iter()
            .filter(|(_, o)| {
                o["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "streamjob-operator"
            })
            .filter_map(|(path, o)| {
                Some((
                    kind_of(&path)?.to_string(),
                    o["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    o["metadata"]["name"].as_str()?.to_string(),
                    o["metadata"]["resourceVersion"].as_str()?.to_string(),
                ))
            })
            .collect();
        expected.sort();
        if caches.snapshot() == expected {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "caches never caught up: {:?} vs {expected:?}",
            caches.snapshot()
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
