//! The chart's Grafana dashboard and Prometheus alerts query only metrics the code exports: every
//! metric name in a dashboard panel's query or an alert's expression is one of the families the
//! worker (taskmanager/standalone), the jobmanager or the operator registers, as their `/metrics`
//! endpoints encode them (same registries, same encoder).

use std::collections::BTreeSet;
use std::path::PathBuf;

/// Metrics the dashboard may show before the code exports them (none: the rewinds counter of
/// issue #12 has landed).
const PENDING: &[&str] = &[];

fn chart_file(rel: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/streamjob-operator/files")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The sample names a Prometheus text exposition can carry, from its `# TYPE` lines (families
/// with no series yet are listed too).
fn sample_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("#") || words.next() != Some("TYPE") {
            continue;
        }
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_string());
            }
        }
    }
    names
}

/// A worker's exposition with one partition, one error of each kind, one DLQ record and one
/// late event.
fn worker_exposition() -> String {
    let metrics = streamjob_worker::metrics::Metrics::new();
    let pipeline = metrics.pipeline();
    pipeline.dead_lettered("invalid_json").inc();
    pipeline.redis_error("unavailable");
    pipeline.kafka_error("consumer");
    pipeline.batch("applied");
    pipeline.series("late", 1);
    let _gauges = pipeline.partition_gauges(0);
    pipeline
        .partition_retrying
        .get_or_create(&streamjob_worker::metrics::PartitionLabel { partition: 0 })
        .set(1);
    pipeline
        .partition_rewinds
        .get_or_create(&streamjob_worker::metrics::PartitionLabel { partition: 0 })
        .inc();
    pipeline
        .redis_cluster_waits
        .get_or_create(&streamjob_worker::metrics::KindLabel {
            kind: "tryagain".into(),
        })
        .inc();
    metrics.encode()
}

/// The jobmanager's exposition after one taskmanager took a partition and reported progress,
/// one checkpoint and one savepoint (a labelled family prints only once it holds a series).
fn jobmanager_exposition() -> String {
    use std::time::{Duration, Instant};
    use streamjob_worker::api::{
        HeartbeatRequest, OwnedPartition, PartitionProgress, RegisterRequest,
    };
    use streamjob_worker::jobmanager::coordinator::{Coordinator, CoordinatorConfig};
    use streamjob_worker::jobmanager::metrics::JobManagerMetrics;
    let now = Instant::now();
    let config = CoordinatorConfig {
        heartbeat_interval: Duration::from_secs(1),
        heartbeat_timeout: Duration::from_secs(5),
        revoke_timeout: Duration::from_secs(5),
        startup_grace: Duration::ZERO,
        snapshot_timeout: Duration::from_secs(10),
        assign_timeout: Duration::from_secs(5),
        hold_back: Duration::from_secs(30),
    };
    let mut coordinator = Coordinator::new(config, now, Default::default(), 0);
    coordinator.set_partition_count(1, now);
    coordinator.register("tm-0", &RegisterRequest::default(), now);
    let later = now + Duration::from_secs(3);
    coordinator.tick(later);
    let response = coordinator.response("tm-0", later).expect("registered");
    let request = HeartbeatRequest {
        seq: 1,
        desired_version: response.desired_version,
        owned: response
            .assignments
            .iter()
            .map(|a| OwnedPartition {
                partition: a.partition,
                generation: a.generation,
            })
            .collect(),
        progress: vec![PartitionProgress {
            partition: 0,
            committed_offset: Some(10),
            high_watermark: Some(15),
            ..Default::default()
        }],
        released: Vec::new(),
        snapshot_ack: None,
        wait: false,
        watermark_ack_ms: None,
        load: None,
        redis: None,
    };
    coordinator
        .heartbeat("tm-0", &request, later)
        .expect("registered");
    let metrics = JobManagerMetrics::new("trace");
    for ok in [true, false] {
        let labels = JobManagerMetrics::result_labels(ok);
        metrics.checkpoints.get_or_create(&labels).inc();
        metrics.savepoints.get_or_create(&labels).inc();
    }
    metrics.render(&coordinator)
}

/// The operator's exposition with one StreamJob recorded (every per-job family filled).
fn operator_exposition() -> String {
    let status: streamjob_operator::crd::StreamJobStatus = serde_json::from_value(serde_json::json!({
        "phase": "Upgrading",
        "readyReplicas": 1,
        "conditions": [{"type": "Degraded", "status": "True", "reason": "CrashLoop", "message": "",
                        "lastTransitionTime": "2025-11-21T00:00:00Z"}],
        "job": {"lag": 5, "lastCheckpointAt": "2025-11-21T00:00:00Z"},
        "lastSavepoint": {"path": "/sp", "completedAt": "2025-11-21T00:00:00Z", "trigger": "manual"},
        "currentOperation": {"kind": "upgrade", "step": "AwaitSavepoint",
                             "startedAt": "2025-11-21T00:00:00Z", "attempts": 0}
    }))
    .expect("status");
    let metrics = streamjob_operator::metrics::Metrics::default();
    metrics.record_job("team-a", "trace", 2, &status);
    metrics.job_failed("team-a", "trace", "ApplyFailed");
    metrics.failed("ApplyFailed");
    metrics.reconciles.inc();
    metrics.duration.observe(0.01);
    let sample = streamjob_operator::planner::autoscaler::Sample {
        at: k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        taskmanager_busy: vec![0.5],
        partitions: Vec::new(),
        redis: streamjob_operator::planner::autoscaler::RedisLoad::default(),
    };
    metrics.record_autoscaler("team-a", "trace", Some(&sample), Some(2));
    metrics.encode()
}

fn exported() -> BTreeSet<String> {
    let worker = worker_exposition();
    let jobmanager = jobmanager_exposition();
    let operator = operator_exposition();
    let mut names = BTreeSet::new();
    for text in [worker, jobmanager, operator] {
        names.extend(sample_names(&text));
    }
    names
}

/// `streamjob_…` identifiers in a PromQL expression.
fn metrics_in(expr: &str) -> Vec<String> {
    let mut found = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("streamjob_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = expr[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(expr.len(), |n| start + n);
        if boundary {
            found.push(expr[start..end].to_string());
        }
        i = end;
    }
    found
}

fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&chart_file("dashboards/streamjob.json")).expect("dashboard is JSON");
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("every target has an expr");
            out.push((
                panel["title"].as_str().unwrap_or("?").to_string(),
                expr.to_string(),
            ));
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(query) = variable["query"]["query"].as_str() {
            out.push((format!("variable {}", variable["name"]), query.to_string()));
        }
    }
    out
}

fn alert_expressions() -> Vec<(String, String)> {
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&chart_file("prometheus/rules.yaml")).expect("rules are YAML");
    let mut out = Vec::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("alert name").to_string();
            out.push((name, rule["expr"].as_str().expect("expr").to_string()));
        }
    }
    out
}

fn unknown(queries: &[(String, String)], exported: &BTreeSet<String>) -> Vec<String> {
    let mut missing = Vec::new();
    for (owner, expr) in queries {
        let names = metrics_in(expr);
        assert!(
            !names.is_empty(),
            "{owner}: queries no streamjob metric: {expr}"
        );
        for name in names {
            if !exported.contains(&name) && !PENDING.contains(&name.as_str()) {
                missing.push(format!("{owner}: {name}"));
            }
        }
    }
    missing
}

#[test]
fn the_registries_list_what_the_monitoring_relies_on() {
    let names = exported();
    for name in [
        "streamjob_events_written_total",
        "streamjob_jobmanager_partition_lag",
        "streamjob_jobmanager_last_checkpoint_timestamp_seconds",
        "streamjob_operator_reconcile_failures_total",
        "streamjob_operator_job_phase",
        "streamjob_batch_apply_seconds_bucket",
        "streamjob_partition_rewinds_total",
    ] {
        assert!(names.contains(name), "{name} not in {names:#?}");
    }
}

#[test]
fn every_dashboard_query_names_an_exported_metric() {
    let queries = dashboard_queries();
    assert!(queries.len() >= 10, "{queries:?}");
    let missing = unknown(&queries, &exported());
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics nothing exports: {missing:#?}"
    );
}

#[test]
fn every_alert_names_an_exported_metric() {
    let alerts = alert_expressions();
    assert_eq!(alerts.len(), 6);
    let missing = unknown(&alerts, &exported());
    assert!(
        missing.is_empty(),
        "alerts on metrics nothing exports: {missing:#?}"
    );
}

#[test]
fn a_misspelt_metric_is_caught() {
    let queries = vec![(
        "panel".to_string(),
        "rate(streamjob_events_writen_total[1m])".to_string(),
    )];
    assert_eq!(
        unknown(&queries, &exported()),
        ["panel: streamjob_events_writen_total"]
    );
    assert_eq!(
        metrics_in("sum(rate(streamjob_a_total[5m])) / x_streamjob_b + streamjob_c"),
        ["streamjob_a_total", "streamjob_c"]
    );
}
