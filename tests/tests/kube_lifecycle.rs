//! A StreamJob's whole life on a real control plane, as a user lives it: `helm install` the chart,
//! `kubectl apply` a StreamJob, `kubectl wait` for Ready, `kubectl scale` it, change its config
//! (a savepoint upgrade), suspend and resume it, and delete it with a final savepoint; and a
//! leader operator killed in the middle of an upgrade. The operator runs as the chart's
//! ServiceAccount; the process kubelet runs real worker processes against a real Kafka-protocol
//! broker and a real redis-server; the Redis state is checked in full at the end. Upgrades that
//! keep the job running (rolling, `helm upgrade`, a broken image) are in `kube_upgrades.rs`.

mod kube_job;

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::Api;
use kube_job::*;
use serde_json::{json, Value};
use streamjob_tests::controlplane::cluster::{test_values, OperatorCluster};

#[tokio::test(flavor = "multi_thread")]
async fn heavy_apply_scale_upgrade_suspend_resume_and_delete_on_a_real_cluster() {
    let cluster = OperatorCluster::up(test_values()).await;
    let mut data = Data::start();

    // apply → Ready, as `kubectl wait` sees it, within seconds of the pods being up.
    data.produce(1, 10_000);
    let applied_at = Instant::now();
    cluster.apply(NS, &stream_job(&data, 2));
    assert!(
        cluster.wait_for(NS, NAME, "Ready", Duration::from_secs(60)),
        "kubectl wait --for=condition=Ready timed out; status:\n{:#}\n{}",
        cluster.get(NS, NAME)["status"],
        cluster.describe()
    );
    eprintln!("apply -> Ready: {:?}", applied_at.elapsed());
    let job: Value = serde_json::from_str(&cluster.kubectl(&[
        "get",
        "-n",
        NS,
        &format!("streamjob/{NAME}"),
        "-o",
        "json",
        "--show-managed-fields",
    ]))
    .expect("kubectl prints JSON");
    assert_eq!(
        finalizer_owners(&job),
        ["streamjob-operator"],
        "the operator owns its finalizer in managedFields"
    );
    if std::env::var_os("STREAMJOB_TEST_VERBOSE").is_some() {
        eprintln!("{}\n{}", cluster.operator_logs(), cluster.describe());
    }
    data.wait_applied(&cluster, Duration::from_secs(60)).await;

    // kubectl scale: in place, Ready stays True the whole time.
    cluster.kubectl(&[
        "scale",
        "-n",
        NS,
        &format!("streamjob/{NAME}"),
        "--replicas=3",
    ]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let job = cluster.get(NS, NAME);
        assert!(
            ready(&job),
            "Ready dropped during a scale: {:#}",
            job["status"]
        );
        if job["status"]["readyReplicas"] == 3 && job["status"]["job"]["taskmanagers"] == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "not scaled: {:#}", job["status"]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    data.produce(2, 10_000);
    data.wait_applied(&cluster, Duration::from_secs(60)).await;

    // A config change in savepoint mode: stop with a savepoint, roll out from it.
    let mut spec = stream_job(&data, 3);
    spec["spec"]["batch"]["maxEvents"] = json!(400);
    cluster.apply(NS, &spec);
    data.produce(3, 10_000);
    let job = until(
        &cluster,
        "upgraded",
        Duration::from_secs(120),
        upgraded_through_a_savepoint,
    )
    .await;
    let upgrade_savepoint = job["status"]["lastSavepoint"]["path"]
        .as_str()
        .expect("savepoint path")
        .to_string();
    assert!(
        Path::new(&upgrade_savepoint).exists(),
        "{upgrade_savepoint}"
    );
    data.wait_applied(&cluster, Duration::from_secs(60)).await;

    // Suspend: a savepoint, then no pod runs; resume restores it and catches up.
    spec["spec"]["state"] = json!("suspended");
    cluster.apply(NS, &spec);
    let job = until(&cluster, "suspended", Duration::from_secs(90), |job| {
        job["status"]["phase"] == "Suspended"
    })
    .await;
    assert_eq!(job["status"]["lastSavepoint"]["trigger"], "suspend");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cluster
        .kubelet
        .processes()
        .iter()
        .all(|(_, pod, _)| !pod.starts_with("trace-"))
    {
        assert!(
            Instant::now() < deadline,
            "worker pods left: {:?}",
            cluster.kubelet.processes()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    data.produce(4, 10_000);
    spec["spec"]["state"] = json!("running");
    cluster.apply(NS, &spec);
    until(&cluster, "resumed", Duration::from_secs(90), |job| {
        no_operation(job) && job["status"]["phase"] == "Running" && ready(job)
    })
    .await;
    data.wait_applied(&cluster, Duration::from_secs(60)).await;
    let reasons = event_reasons(&cluster).await;
    for reason in ["UpgradeStarted", "SavepointCompleted", "UpgradeCompleted"] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "no {reason} Event: {reasons:?}"
        );
    }

    // Delete: a final savepoint, the finalizer goes, the garbage collector takes the children,
    // and the kept PVC names the savepoint.
    let output = cluster.plane.kubectl_output(&[
        "delete",
        "-n",
        NS,
        &format!("streamjob/{NAME}"),
        "--timeout=90s",
    ]);
    assert!(
        output.status.success(),
        "delete: {}\noperator:\n{}",
        String::from_utf8_lossy(&output.stderr),
        tail(&cluster.operator_logs(), 40)
    );
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), NS);
    let pvc = pvcs
        .get(&format!("{NAME}-savepoints"))
        .await
        .expect("the savepoint PVC is kept");
    let final_savepoint = pvc
        .metadata
        .annotations
        .unwrap_or_default()
        .get("streaming.austin.dev/latest-savepoint")
        .cloned()
        .expect("the kept PVC names the final savepoint");
    assert!(Path::new(&final_savepoint).exists(), "{final_savepoint}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster
        .kubelet
        .processes()
        .iter()
        .any(|(_, pod, _)| pod.starts_with("trace-"))
    {
        assert!(Instant::now() < deadline, "pods outlived their StreamJob");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    data.assert_redis_exact();
    cluster.assert_no_forbidden();
}

/// The pod that holds the operator's leader Lease.
/// The field managers of `metadata.finalizers`, as `managedFields` records them.
fn finalizer_owners(job: &Value) -> Vec<String> {
    let entries = job["metadata"]["managedFields"].as_array().cloned();
    entries
        .unwrap_or_default()
        .iter()
        .filter(|entry| !entry["fieldsV1"]["f:metadata"]["f:finalizers"].is_null())
        .filter_map(|entry| Some(entry["manager"].as_str()?.to_string()))
        .collect()
}

async fn leader_pod(cluster: &OperatorCluster) -> Option<String> {
    use k8s_openapi::api::coordination::v1::Lease;
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), "streamjob-system");
    let lease = leases.get_opt("streamjob-operator").await.ok().flatten()?;
    lease.spec?.holder_identity
}

#[tokio::test(flavor = "multi_thread")]
async fn heavy_a_leader_killed_mid_upgrade_is_replaced_and_the_upgrade_finishes() {
    let mut values = test_values();
    values["replicaCount"] = json!(2);
    let cluster = OperatorCluster::up(values).await;
    let mut data = Data::start();
    data.produce(1, 5_000);
    start_running(&cluster, &data, &stream_job(&data, 2)).await;

    // A config change starts a savepoint upgrade; the leader dies as soon as status records it.
    let mut spec = stream_job(&data, 2);
    spec["spec"]["batch"]["maxEvents"] = json!(300);
    cluster.apply(NS, &spec);
    until(
        &cluster,
        "upgrade started",
        Duration::from_secs(30),
        |job| !no_operation(job),
    )
    .await;
    let leader = leader_pod(&cluster)
        .await
        .expect("a leader holds the Lease");
    assert!(
        cluster.kubelet.kill("streamjob-system", &leader),
        "no process for the leader {leader}"
    );
    data.produce(2, 5_000);

    let job = until(
        &cluster,
        "upgraded by the next leader",
        Duration::from_secs(120),
        upgraded_through_a_savepoint,
    )
    .await;
    assert!(
        job["status"]["savepointHistory"]
            .as_array()
            .is_some_and(|h| h.len() == 1),
        "one savepoint, not two: {:#}",
        job["status"]
    );
    data.wait_applied(&cluster, Duration::from_secs(60)).await;
    data.assert_redis_exact();
    cluster.assert_no_forbidden();
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
