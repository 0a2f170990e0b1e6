//! The operator under load on a real control plane, where a fake API server hid the problems:
//! - a job whose jobmanager pod is not ready is never called (before, every reconcile of such a
//!   job called `<job>-jobmanager.<ns>.svc` and waited out the timeout when the name did not
//!   resolve, so a thousand starting jobs held every reconcile slot);
//! - a jobmanager that is Ready but never answers is called less and less often (back-off), and
//!   a new job next to many such ones still becomes Ready promptly;
//! - what creating a job costs in API calls (no GET the cache can answer, one Event), and the
//!   failure counters exist at 0 before any failure;
//! - deleting the jobs gives their memory back: the caches and per-job state forget them; and the
//!   heap explains itself (its breakdown by state, and jemalloc's report at `/debug/heap`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use streamjob_tests::controlplane::audit;
use streamjob_tests::controlplane::cluster::{test_values, OperatorCluster};
use streamjob_tests::controlplane::kubelet::KubeletOptions;
use streamjob_tests::http_get;
use streamjob_worker::testkit::kafka;
use streamjob_worker::testkit::redis::RedisServer;

const NS: &str = "default";

fn stream_job(name: &str, replicas: i32, brokers: &str, redis: &str) -> Value {
    json!({
        "apiVersion": "streaming.austin.dev/v1alpha1",
        "kind": "StreamJob",
        "metadata": {"name": name},
        "spec": {
            "image": "registry.example/streamjob-worker:e2e",
            "replicas": replicas,
            "kafka": {"brokers": brokers, "topic": "trace-load", "dlqTopic": "trace-load-dlq"},
            "redis": {"url": redis},
            "checkpoint": {"interval": "1s"},
        }
    })
}

/// The operator's `/metrics` as `series -> value`.
async fn operator_metrics(cluster: &OperatorCluster) -> BTreeMap<String, f64> {
    let address = cluster.operator_http().await.expect("a ready operator pod");
    let text = http_get(&address, "/metrics").expect("/metrics answers");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn calls(metrics: &BTreeMap<String, f64>, outcome: &str) -> f64 {
    metrics
        .get(&format!(
            "streamjob_operator_jobmanager_calls_total{{outcome=\"{outcome}\"}}"
        ))
        .copied()
        .unwrap_or(f64::NAN)
}

/// The allocator's live heap, in bytes, as of the operator's latest 15-s sample.
fn heap_allocated(metrics: &BTreeMap<String, f64>) -> f64 {
    metrics
        .get("streamjob_operator_heap_bytes{state=\"allocated\"}")
        .copied()
        .unwrap_or(f64::NAN)
}

/// The live heap once a fresh sample is out (the operator takes one every 15 s).
async fn fresh_heap_allocated(cluster: &OperatorCluster) -> f64 {
    tokio::time::sleep(Duration::from_secs(16)).await;
    heap_allocated(&operator_metrics(cluster).await)
}

/// The heap's breakdown is exported (the pages that hold the live objects and the allocator's
/// own, besides allocated and resident), and `/debug/heap` gives jemalloc's report by size class.
async fn explains_its_heap(cluster: &OperatorCluster, metrics: &BTreeMap<String, f64>) {
    let heap = |state: &str| {
        metrics
            .get(&format!(
                "streamjob_operator_heap_bytes{{state=\"{state}\"}}"
            ))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let (allocated, active, metadata, resident) = (
        heap("allocated"),
        heap("active"),
        heap("metadata"),
        heap("resident"),
    );
    assert!(
        allocated > 0.0 && active >= allocated && metadata > 0.0 && resident >= active,
        "heap by state: allocated {allocated}, active {active}, metadata {metadata}, resident {resident}"
    );
    let address = cluster.operator_http().await.expect("a ready operator pod");
    let report = http_get(&address, "/debug/heap").expect("/debug/heap answers");
    assert!(
        report.contains("Allocated:") && report.contains("bins:"),
        "jemalloc's report: {report}"
    );
}

/// Waits until `n` StreamJobs in `NS` have a status phase.
async fn wait_for_statuses(cluster: &OperatorCluster, n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let list: Value =
            serde_json::from_str(&cluster.kubectl(&["get", "streamjobs", "-n", NS, "-o", "json"]))
                .expect("json");
        let with = list["items"].as_array().map_or(0, |items| {
            items
                .iter()
                .filter(|j| j["status"]["phase"].is_string())
                .count()
        });
        if with >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {with} of {n} StreamJobs have a status"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn heavy_starting_jobs_cost_few_calls_and_no_jobmanager_call() {
    // The jobs' pods stay Pending, as while images pull or nodes scale up.
    let options = KubeletOptions {
        operator_only: true,
        ..KubeletOptions::default()
    };
    let cluster = OperatorCluster::up_with(test_values(), options).await;
    let idle_heap = fresh_heap_allocated(&cluster).await;
    let before = operator_metrics(&cluster).await;
    for reason in ["KubeApi", "InvalidSpec", "ApplyFailed"] {
        let series = format!("streamjob_operator_reconcile_failures_total{{reason=\"{reason}\"}}");
        assert_eq!(before.get(&series), Some(&0.0), "{series} missing or not 0");
    }

    explains_its_heap(&cluster, &before).await;

    let jobs = 20;
    create_pending_jobs(&cluster, jobs).await;
    // Let the requeues of starting jobs come round a few times.
    tokio::time::sleep(Duration::from_secs(15)).await;

    let metrics = operator_metrics(&cluster).await;
    let made: f64 = ["answered", "refused", "unreachable"]
        .iter()
        .map(|o| calls(&metrics, o))
        .sum();
    assert_eq!(
        made, 0.0,
        "the operator called jobmanagers that have no ready pod: {metrics:?}"
    );

    let requests = cluster.operator_requests();
    let user_calls: Vec<&audit::AuditEvent> = requests
        .iter()
        .filter(|e| {
            !e.call().contains("leases") && !e.verb.starts_with("watch") && e.verb != "list"
        })
        .collect();
    let counts = audit::count_calls(&user_calls);
    let per_job = |call: &str| counts.get(call).copied().unwrap_or(0) as f64 / jobs as f64;
    eprintln!("operator calls for {jobs} starting jobs: {counts:#?}");
    let events: Value = serde_json::from_str(&cluster.kubectl(&[
        "get",
        "events.events.k8s.io",
        "-n",
        NS,
        "-o",
        "json",
    ]))
    .expect("json");
    let ours: Vec<String> = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["reportingController"] == "streamjob-operator")
        .map(|e| format!("{}: {}", e["reason"], e["note"]))
        .collect();
    eprintln!("operator Events: {ours:#?}");
    assert_eq!(
        per_job("get secrets"),
        0.0,
        "a GET the cache answers: {counts:?}"
    );
    // A new job whose pods are still pending: `Deploying` (Progressing `Creating`), then
    // `Scaling` once the Deployment controller has looked at its Deployments; its conditions'
    // first values are no Events of their own.
    assert!(
        ours.len() as f64 / jobs as f64 <= 2.0,
        "Events per new job: {ours:#?}"
    );
    assert!(
        per_job("patch streamjobs/status") <= 3.0,
        "status writes per new job: {counts:?}"
    );
    applies_skip_the_strict_second_parse(&requests);
    cluster.assert_no_forbidden();
    forgets_deleted_jobs(&cluster, idle_heap, jobs).await;
}

/// Every server-side apply the operator made (the only requests it forces) asked the API server
/// not to parse its body a second time for warnings (`fieldValidation=Ignore`, `apply_params`).
fn applies_skip_the_strict_second_parse(requests: &[audit::AuditEvent]) {
    let applies: Vec<&str> = requests
        .iter()
        .filter(|e| e.verb == "patch" && e.request_uri.contains("force=true"))
        .map(|e| e.request_uri.as_str())
        .collect();
    assert!(!applies.is_empty(), "no server-side apply in the audit log");
    let parsed_twice: Vec<&&str> = applies
        .iter()
        .filter(|uri| !uri.contains("fieldValidation=Ignore"))
        .collect();
    assert!(
        parsed_twice.is_empty(),
        "{} of {} applies without fieldValidation=Ignore, e.g. {:?}",
        parsed_twice.len(),
        applies.len(),
        parsed_twice.first()
    );
}

/// Creates the `jobs` pending jobs `pending-0..`.
async fn create_pending_jobs(cluster: &OperatorCluster, jobs: usize) {
    for i in 0..jobs {
        cluster.apply(
            NS,
            &stream_job(
                &format!("pending-{i}"),
                2,
                "kafka:9092",
                "redis://redis:6379",
            ),
        );
    }
    wait_for_statuses(cluster, jobs, Duration::from_secs(60)).await;
}

fn compactions(metrics: &BTreeMap<String, f64>) -> f64 {
    metrics
        .get("streamjob_operator_cache_compactions_total")
        .copied()
        .unwrap_or(f64::NAN)
}

/// Once the jobs are gone, the caches hold their kept savepoint PVCs, a quarter or less of what
/// they held: the compactor rebuilds them (it looks every 10 s).
async fn caches_are_rebuilt_after_deletes(cluster: &OperatorCluster, before: f64) {
    assert_eq!(before, 0.0, "caches rebuilt before any delete");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = compactions(&operator_metrics(cluster).await);
        if now > before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the caches were not rebuilt within 60 s of the deletes ({now} rebuilds)"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Deletes every job and waits until their Deployments are collected too; the live heap then.
async fn delete_all_jobs(cluster: &OperatorCluster) -> f64 {
    cluster.kubectl(&[
        "delete",
        "streamjobs",
        "--all",
        "-n",
        NS,
        "--wait=true",
        "--timeout=120s",
    ]);
    let deadline = Instant::now() + Duration::from_secs(60);
    // Their Deployments, Services, ... go with them (garbage collection by owner).
    while !cluster
        .kubectl(&["get", "deployments", "-n", NS, "-o", "name"])
        .trim()
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the jobs' Deployments were not collected"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    fresh_heap_allocated(cluster).await
}

/// Deleted jobs leave nothing behind in the operator: after the jobs are deleted, created again
/// under the same names and deleted again, the live heap has grown by less than half of what the
/// jobs cost while they existed: a leak of what they hold would add all of it again. (A quarter
/// was too tight once the jobs cost less: CI saw 266 KB of growth against 0.92 MiB of jobs, and
/// the same test passed on the next run.) (The first deletion alone is not the measure: it keeps what
/// is made once, such as grown connection buffers, and the jobs' savepoint PVCs, which stay by
/// design and are re-adopted by the second round.)
async fn forgets_deleted_jobs(cluster: &OperatorCluster, idle_heap: f64, jobs: usize) {
    let loaded_heap = fresh_heap_allocated(cluster).await;
    let compactions = compactions(&operator_metrics(cluster).await);
    let first_round = delete_all_jobs(cluster).await;
    caches_are_rebuilt_after_deletes(cluster, compactions).await;
    create_pending_jobs(cluster, jobs).await;
    let second_round = delete_all_jobs(cluster).await;
    let mib = |bytes: f64| bytes / (1024.0 * 1024.0);
    eprintln!(
        "operator heap (allocated): idle {:.2} MiB, with {jobs} jobs {:.2} MiB, after deleting them {:.2} MiB, after creating and deleting them again {:.2} MiB",
        mib(idle_heap),
        mib(loaded_heap),
        mib(first_round),
        mib(second_round)
    );
    assert!(
        loaded_heap > idle_heap,
        "no heap figures: {loaded_heap} vs {idle_heap}"
    );
    assert!(
        second_round - first_round <= (loaded_heap - idle_heap) / 2.0,
        "deleted jobs still hold memory: with the jobs {loaded_heap}, after one round {first_round}, after two {second_round}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn heavy_unresponsive_jobmanagers_back_off_and_do_not_hold_up_a_new_job() {
    let options = KubeletOptions {
        unresponsive_jobmanagers: Some("silent-".into()),
        ..KubeletOptions::default()
    };
    let cluster = OperatorCluster::up_with(test_values(), options).await;
    let redis = RedisServer::start().expect("redis-server");
    let kafka = kafka::start_mock("trace-load", 2, "trace-load-dlq");

    // Jobmanagers that are Ready and never answer (a network that drops their traffic).
    let silent = 16;
    for i in 0..silent {
        cluster.apply(
            NS,
            &stream_job(
                &format!("silent-{i}"),
                0,
                kafka.bootstrap_servers(),
                &redis.url(),
            ),
        );
    }
    wait_for_statuses(&cluster, silent, Duration::from_secs(60)).await;
    let window = Duration::from_secs(30);
    let start = operator_metrics(&cluster).await;
    tokio::time::sleep(window).await;
    let end = operator_metrics(&cluster).await;
    let unreachable = calls(&end, "unreachable") - calls(&start, "unreachable");
    let skipped = calls(&end, "backoff") - calls(&start, "backoff");
    // With a 5 s back-off doubling per failure, a silent jobmanager is called at most about 3
    // times in 30 s; each costs a reconcile slot for the call timeout.
    assert!(
        unreachable <= (silent * 4) as f64,
        "{unreachable} calls to {silent} silent jobmanagers in {window:?}"
    );
    assert!(skipped > 0.0, "no call was skipped in back-off: {end:?}");

    // A healthy job next to them is Ready as promptly as on an empty cluster.
    let applied = Instant::now();
    cluster.apply(
        NS,
        &stream_job("trace", 1, kafka.bootstrap_servers(), &redis.url()),
    );
    assert!(
        cluster.wait_for(NS, "trace", "Ready", Duration::from_secs(45)),
        "the healthy job is not Ready next to silent jobmanagers: {:#}",
        cluster.get(NS, "trace")["status"]
    );
    eprintln!("healthy job Ready {:?} after apply", applied.elapsed());
    for i in 0..silent {
        let reason = cluster.get(NS, &format!("silent-{i}"))["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned())
            .map(|c| c["reason"].clone());
        assert_eq!(reason, Some(json!("JobManagerUnreachable")), "silent-{i}");
    }
    cluster.assert_no_forbidden();
}
