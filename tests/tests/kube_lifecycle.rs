//! A StreamJob's whole life on a real control plane, as a user lives it: `helm install` the chart,
//! `kubectl apply` a StreamJob, `kubectl wait` for Ready, `kubectl scale` it, change its config
//! (a savepoint upgrade), suspend and resume it, and delete it with a final savepoint. The
//! operator runs as the chart's ServiceAccount; the process kubelet runs real worker processes
//! against a real Kafka-protocol broker (librdkafka's mock cluster) and a real redis-server; the
//! Redis state is checked in full at the end. A rolling upgrade replaces every taskmanager
//! while the job keeps processing, with no savepoint; a change of what the fences mean falls
//! back to the savepoint path.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use serde_json::{json, Value};
use streamjob_tests::controlplane::cluster::{test_values, OperatorCluster};
use streamjob_tests::controlplane::kubelet::KubeletOptions;
use streamjob_worker::demo::{EventGenerator, TrafficShape};
use streamjob_worker::testkit::kafka::{self, EmbeddedKafka, ProduceMode};
use streamjob_worker::testkit::redis::RedisServer;
use streamjob_worker::testkit::trace_state::{fence_offsets, Expected, TraceState};

const NS: &str = "default";
const NAME: &str = "trace";
const TOPIC: &str = "trace-k8s";
const DLQ: &str = "trace-k8s-dlq";
const PARTITIONS: i32 = 4;

/// Real Kafka and Redis behind the cluster, and what was produced so far.
struct Data {
    kafka: EmbeddedKafka,
    redis: RedisServer,
    produced: Vec<Vec<u8>>,
}

impl Data {
    fn start() -> Self {
        Data {
            kafka: kafka::start_mock(TOPIC, PARTITIONS, DLQ),
            redis: RedisServer::start().expect("redis-server"),
            produced: Vec::new(),
        }
    }

    fn produce(&mut self, seed: u64, n: usize) {
        let mut generator = EventGenerator::new(
            seed,
            TrafficShape {
                users: 2_000,
                messages: 1_000,
                malformed_ppm: 500,
                ..TrafficShape::default()
            },
        );
        let payloads: Vec<Vec<u8>> = (0..n).map(|_| generator.next_payload()).collect();
        kafka::produce(
            self.kafka.bootstrap_servers(),
            TOPIC,
            PARTITIONS,
            &payloads,
            ProduceMode::Batched,
        )
        .expect("produced");
        self.produced.extend(payloads);
    }

    /// Records applied so far: the sum of the partitions' fences.
    fn applied(&self) -> i64 {
        fence_offsets(&self.redis.url(), "", NAME, TOPIC, PARTITIONS)
            .expect("fences")
            .iter()
            .map(|f| f.unwrap_or(0))
            .sum()
    }

    async fn wait_applied(&self, cluster: &OperatorCluster, timeout: Duration) {
        let total = i64::try_from(self.produced.len()).unwrap_or(0);
        let deadline = Instant::now() + timeout;
        loop {
            let applied = self.applied();
            assert!(
                applied <= total,
                "fences past the data: {applied} > {total}"
            );
            if applied == total {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {applied} of {total} applied; workers:\n{}",
                cluster.kubelet.logs("trace-")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every list entry and counter in Redis is what the data set makes, each event once.
    fn assert_redis_exact(&self) {
        let expected = Expected::from_payloads("", self.produced.iter().map(Vec::as_slice));
        let actual = TraceState::read(&self.redis.url()).expect("redis readable");
        let diff = expected.state.diff(&actual, 10);
        assert!(diff.is_empty(), "redis differs:\n{}", diff.join("\n"));
        assert_eq!(actual.list_values(), expected.state.list_values());
        assert_eq!(
            self.applied(),
            i64::try_from(self.produced.len()).unwrap_or(0)
        );
    }
}

fn stream_job(data: &Data, replicas: i32) -> Value {
    json!({
        "apiVersion": "streaming.austin.dev/v1alpha1",
        "kind": "StreamJob",
        "metadata": {"name": NAME},
        "spec": {
            "image": "registry.example/streamjob-worker:e2e",
            "replicas": replicas,
            // The stop-the-world path these tests follow; `rolling` (the default) is tested below.
            "upgradeMode": "savepoint",
            "kafka": {
                "brokers": data.kafka.bootstrap_servers(),
                "topic": TOPIC,
                "dlqTopic": DLQ,
                "properties": {"fetch.wait.max.ms": "10"},
            },
            "redis": {"url": data.redis.url()},
            "batch": {"maxEvents": 500, "linger": "20ms"},
            "checkpoint": {"interval": "1s"},
            "savepoint": {"timeout": "60s"},
        }
    })
}

/// Polls the StreamJob until `done` holds (the status is what `kubectl get -o json` shows).
async fn until(
    cluster: &OperatorCluster,
    what: &str,
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let job = cluster.get(NS, NAME);
        if done(&job) {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached in {timeout:?}; status:\n{:#}\n{}",
            job["status"],
            cluster.describe()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn ready(job: &Value) -> bool {
    condition(job, "Ready") == Some("True")
}

fn condition<'a>(job: &'a Value, type_: &str) -> Option<&'a str> {
    job["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?["status"]
        .as_str()
}

fn no_operation(job: &Value) -> bool {
    job["status"]["currentOperation"].is_null()
}

/// The StreamJob's Events: (reason, note).
async fn events(cluster: &OperatorCluster) -> Vec<(String, String)> {
    let api: Api<Event> = Api::namespaced(cluster.client.clone(), NS);
    let events = api.list(&ListParams::default()).await.expect("events");
    events
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(NAME))
        .filter_map(|e| Some((e.reason?, e.note.unwrap_or_default())))
        .collect()
}

async fn event_reasons(cluster: &OperatorCluster) -> Vec<String> {
    events(cluster).await.into_iter().map(|(r, _)| r).collect()
}

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
    let job = until(&cluster, "upgraded", Duration::from_secs(120), |job| {
        no_operation(job) && job["status"]["lastSavepoint"]["trigger"] == "upgrade" && ready(job)
    })
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
/// Applies `spec`, waits until `kubectl wait` sees the job Ready and every record produced so far
/// is applied.
async fn start_running(cluster: &OperatorCluster, data: &Data, spec: &Value) {
    cluster.apply(NS, spec);
    assert!(
        cluster.wait_for(NS, NAME, "Ready", Duration::from_secs(60)),
        "not Ready: {}",
        cluster.describe()
    );
    data.wait_applied(cluster, Duration::from_secs(60)).await;
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
        |job| {
            no_operation(job)
                && job["status"]["lastSavepoint"]["trigger"] == "upgrade"
                && ready(job)
        },
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

/// The taskmanager pods the kubelet runs now.
fn taskmanager_pods(cluster: &OperatorCluster) -> BTreeSet<String> {
    pods_running(cluster, NS, "trace-taskmanager-")
}

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
        |job| {
            no_operation(job)
                && job["status"]["lastSavepoint"]["trigger"] == "upgrade"
                && ready(job)
        },
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

fn reason<'a>(job: &'a Value, type_: &str) -> Option<&'a str> {
    job["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?["reason"]
        .as_str()
}

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
