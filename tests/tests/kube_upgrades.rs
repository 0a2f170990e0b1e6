//! Upgrades on a real control plane that keep a StreamJob running: a compatible change rolls
//! the taskmanagers one by one while records keep being applied (and a change of what the fences
//! mean falls back to a savepoint); `helm upgrade` from an older chart upgrades the CRD and the
//! operator without touching jobs; a rolling upgrade to a crashing image stalls and the previous
//! image resumes it. Redis is checked in full in each.

mod kube_job;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kube_job::*;
use serde_json::{json, Value};
use streamjob_tests::controlplane::cluster::{test_values, OperatorCluster};
use streamjob_tests::controlplane::kubelet::KubeletOptions;

/// Rolls a compatible change while producing, until the rolling upgrade completed. Returns the
/// operation kinds status showed and whether records were applied while the phase read
/// `RollingUpgrade`.
async fn roll_while_producing(cluster: &OperatorCluster, data: &mut Data) -> (Vec<String>, bool) {
    let mut kinds = Vec::new();
    let mut applied_while_rolling = false;
    let mut last_rolling_applied: Option<i64> = None;
    let mut rows: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    for seed in 100.. {
        data.produce(seed, 200);
        let job = cluster.get(NS, NAME);
        // What `kubectl get sj -w` prints, one line per change.
        let row = format!(
            "{:<16} {:<3} {:<3} {}",
            job["status"]["phase"].as_str().unwrap_or(""),
            job["spec"]["replicas"],
            job["status"]["readyReplicas"],
            job["status"]["job"]["lag"]
        );
        if rows.last() != Some(&row) {
            eprintln!("kubectl get sj -w: {row}");
            rows.push(row);
        }
        if let Some(kind) = job["status"]["currentOperation"]["kind"].as_str() {
            if !kinds.iter().any(|k| k == kind) {
                kinds.push(kind.to_string());
            }
        }
        if job["status"]["phase"] == "RollingUpgrade" {
            let applied = data.applied();
            applied_while_rolling |= last_rolling_applied.is_some_and(|before| applied > before);
            last_rolling_applied = Some(applied);
        } else if !kinds.is_empty() && no_operation(&job) && ready(&job) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rolling upgrade did not finish: {:#}\n{}",
            job["status"],
            cluster.describe()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    (kinds, applied_while_rolling)
}

#[tokio::test(flavor = "multi_thread")]
async fn heavy_a_compatible_change_rolls_without_stopping_and_a_key_prefix_change_falls_back() {
    let cluster = OperatorCluster::up(test_values()).await;
    let mut data = Data::start();
    data.produce(1, 5_000);
    let mut spec = stream_job(&data, 2);
    spec["spec"]["upgradeMode"] = json!("rolling");
    start_running(&cluster, &data, &spec).await;
    let old_pods = taskmanager_pods(&cluster);

    // A compatible change: every taskmanager is replaced while the job keeps processing.
    spec["spec"]["batch"]["maxEvents"] = json!(400);
    cluster.apply(NS, &spec);
    let (kinds, applied_while_rolling) = roll_while_producing(&cluster, &mut data).await;
    assert_eq!(kinds, ["rolling-upgrade"], "no Upgrade operation, no stop");
    assert!(
        applied_while_rolling,
        "the job kept processing during the rollout"
    );
    let job = cluster.get(NS, NAME);
    assert!(
        job["status"]["lastSavepoint"].is_null(),
        "no savepoint: {:#}",
        job["status"]
    );
    let new_pods = taskmanager_pods(&cluster);
    assert!(
        new_pods.is_disjoint(&old_pods),
        "every taskmanager replaced: {old_pods:?} -> {new_pods:?}"
    );
    let reasons = event_reasons(&cluster).await;
    for reason in ["RollingUpgradeStarted", "RollingUpgradeCompleted"] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "no {reason}: {reasons:?}"
        );
    }
    for reason in ["UpgradeStarted", "SavepointTriggered"] {
        assert!(
            !reasons.iter().any(|r| r == reason),
            "{reason}: {reasons:?}"
        );
    }
    data.wait_applied(&cluster, Duration::from_secs(60)).await;
    data.assert_redis_exact();

    // A new key prefix changes what the fences mean: the savepoint path, and an Event says why.
    spec["spec"]["redis"]["keyPrefix"] = json!("v2:");
    cluster.apply(NS, &spec);
    until(
        &cluster,
        "upgraded through a savepoint",
        Duration::from_secs(120),
        upgraded_through_a_savepoint,
    )
    .await;
    let fallback = events(&cluster)
        .await
        .into_iter()
        .find(|(reason, _)| reason == "RollingNotPossible")
        .map(|(_, note)| note)
        .unwrap_or_default();
    assert!(
        fallback.contains("spec.redis.keyPrefix") && fallback.contains("through a savepoint"),
        "{fallback:?}"
    );
    cluster.assert_no_forbidden();
}

/// A copy of the chart as an older release shipped it: a CRD without `spec.rolling` (the
/// field #26 added) and a lower chart version.
fn older_chart() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let chart = streamjob_tests::controlplane::helm::chart_dir();
    let copied = std::process::Command::new("cp")
        .arg("-r")
        .arg(format!("{}/.", chart.display()))
        .arg(dir.path())
        .status()
        .expect("cp runs");
    assert!(copied.success(), "chart copied");
    let crd_path = dir.path().join("files/crds/streamjob.yaml");
    let mut crd: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&crd_path).expect("CRD")).expect("YAML");
    let spec = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"];
    let removed = spec
        .as_mapping_mut()
        .and_then(|properties| properties.remove("rolling"));
    assert!(removed.is_some(), "the chart's CRD has spec.rolling");
    std::fs::write(&crd_path, serde_yaml::to_string(&crd).expect("YAML")).expect("CRD written");
    let chart_yaml = dir.path().join("Chart.yaml");
    let text = std::fs::read_to_string(&chart_yaml).expect("Chart.yaml");
    let older: String = text
        .lines()
        .map(|line| match line.strip_prefix("version:") {
            Some(_) => "version: 0.0.1".to_string(),
            None => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&chart_yaml, older).expect("Chart.yaml written");
    dir
}

/// `kubectl apply --server-side` of a StreamJob manifest, whatever its outcome.
fn apply_output(cluster: &OperatorCluster, manifest: &Value) -> std::process::Output {
    let path = cluster.plane.dir().join("manifest-with-rolling.json");
    std::fs::write(&path, manifest.to_string()).expect("manifest written");
    cluster.plane.kubectl_output(&[
        "apply",
        "--server-side",
        "--field-manager=test-user",
        "-n",
        NS,
        "-f",
        &path.display().to_string(),
    ])
}

/// `helm upgrade` from an older chart, as a user upgrades the operator: the CRD gains the new
/// chart's fields (a regular template, so Helm applies it; Helm's own `crds/` directory is never
/// upgraded), the operator's Deployment rolls to a new pod that takes the Lease over, and a
/// running job stays Ready throughout, keeps its pods, and loses and doubles nothing.
///
/// Seen failing with `crds.install: false` added to the upgrade's values (the older CRD stays,
/// kept by its resource policy): the last apply was refused, "`.spec.rolling`: field not declared
/// in schema", exactly as the first one was.
#[tokio::test(flavor = "multi_thread")]
async fn heavy_helm_upgrade_upgrades_the_crd_and_replaces_the_operator_without_touching_jobs() {
    let older = older_chart();
    let cluster =
        OperatorCluster::up_from(older.path(), test_values(), KubeletOptions::default()).await;
    let mut data = Data::start();
    data.produce(1, 5_000);
    start_running(&cluster, &data, &stream_job(&data, 2)).await;
    let mut job = stream_job(&data, 2);
    job["spec"]["rolling"] = json!({"progressDeadline": "7m"});
    assert!(
        !apply_output(&cluster, &job).status.success(),
        "the older CRD has no spec.rolling: server-side apply refuses it"
    );
    let workers = pods_running(&cluster, NS, "trace-");
    let operators = pods_running(&cluster, "streamjob-system", "streamjob-operator-");

    // The upgrade raises the operator's memory limit: its pod template changes, so it rolls.
    let mut values = test_values();
    values["resources"] = json!({"limits": {"memory": "384Mi"}});
    cluster.helm_upgrade(&values);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let job = cluster.get(NS, NAME);
        assert!(
            ready(&job),
            "Ready dropped during the operator's upgrade: {:#}",
            job["status"]
        );
        let now = pods_running(&cluster, "streamjob-system", "streamjob-operator-");
        if !now.is_empty() && now.is_disjoint(&operators) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the operator's pod was not replaced: {now:?}\n{}",
            cluster.describe()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.wait_for_operator().await;

    // The new operator leads: a new record flows, and no worker pod was replaced.
    data.produce(2, 5_000);
    data.wait_applied(&cluster, Duration::from_secs(60)).await;
    data.assert_redis_exact();
    assert_eq!(pods_running(&cluster, NS, "trace-"), workers);

    // The upgraded CRD takes what the older one refused.
    let applied = apply_output(&cluster, &job);
    assert!(
        applied.status.success(),
        "helm upgrade did not upgrade the CRD: {}",
        String::from_utf8_lossy(&applied.stderr)
    );
    assert_eq!(
        cluster.get(NS, NAME)["spec"]["rolling"]["progressDeadline"],
        "7m",
        "helm upgrade did not upgrade the CRD"
    );
    assert!(ready(&cluster.get(NS, NAME)));
    cluster.assert_no_forbidden();
}

/// An image the kubelet runs as a process that exits at once (a broken release).
const BROKEN_IMAGE: &str = "registry.example/streamjob-worker:broken";

/// A rolling upgrade to an image that crashes stalls where it is: the new taskmanager
/// crash-loops, the StreamJob turns `Degraded` (`RolloutStalled`) naming that pod long before the
/// 10-minute progress deadline, the old taskmanagers keep applying records, and the previous
/// image back completes the rollout with Redis exact.
///
/// Seen failing (no `RolloutStalled` within 120 s) while the operator's pod cache dropped the
/// pods' annotations, so the stall check could not tell the new pods from the old.
#[tokio::test(flavor = "multi_thread")]
async fn heavy_a_rolling_upgrade_to_a_crashing_image_stalls_and_the_previous_image_resumes() {
    let options = KubeletOptions {
        crashing_image: Some(BROKEN_IMAGE.into()),
        ..KubeletOptions::default()
    };
    let cluster = OperatorCluster::up_with(test_values(), options).await;
    let mut data = Data::start();
    data.produce(1, 5_000);
    let mut job = stream_job(&data, 2);
    job["spec"]["upgradeMode"] = json!("rolling");
    job["spec"]["rolling"] = json!({"progressDeadline": "10m"});
    start_running(&cluster, &data, &job).await;
    let old_pods = taskmanager_pods(&cluster);

    let mut broken = job.clone();
    broken["spec"]["image"] = json!(BROKEN_IMAGE);
    cluster.apply(NS, &broken);
    let stalled = until(
        &cluster,
        "rollout stalled",
        Duration::from_secs(120),
        |job| reason(job, "Degraded") == Some("RolloutStalled"),
    )
    .await;
    let message = stalled["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Degraded"))
        .and_then(|c| c["message"].as_str())
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("trace-taskmanager-") && message.contains("CrashLoopBackOff"),
        "the stall names the crash-looping pod: {message}"
    );
    assert!(ready(&stalled), "the old taskmanagers keep the job Ready");

    // The old taskmanagers keep the job: new records are applied while stalled.
    data.produce(2, 5_000);
    data.wait_applied(&cluster, Duration::from_secs(60)).await;
    assert!(
        old_pods.is_subset(&taskmanager_pods(&cluster)),
        "an old taskmanager went away during the stall"
    );

    // The previous image back: the rollout completes and the job is healthy again.
    cluster.apply(NS, &job);
    until(&cluster, "recovered", Duration::from_secs(120), |job| {
        no_operation(job) && ready(job) && condition(job, "Degraded") == Some("False")
    })
    .await;
    data.produce(3, 2_000);
    data.wait_applied(&cluster, Duration::from_secs(60)).await;
    data.assert_redis_exact();
    cluster.assert_no_forbidden();
}

/// The taskmanager pods the kubelet runs now.
fn taskmanager_pods(cluster: &OperatorCluster) -> BTreeSet<String> {
    pods_running(cluster, NS, "trace-taskmanager-")
}

/// The pods the kubelet runs in `namespace` whose names start with `prefix`.
fn pods_running(cluster: &OperatorCluster, namespace: &str, prefix: &str) -> BTreeSet<String> {
    cluster
        .kubelet
        .processes()
        .into_iter()
        .filter(|(ns, pod, _)| ns == namespace && pod.starts_with(prefix))
        .map(|(_, pod, _)| pod)
        .collect()
}

fn reason<'a>(job: &'a Value, type_: &str) -> Option<&'a str> {
    job["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?["reason"]
        .as_str()
}
