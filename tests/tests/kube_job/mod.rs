//! The fixture the real-control-plane StreamJob tests share: a real Kafka-protocol broker
//! (librdkafka's mock cluster) and a real redis-server behind the cluster, the StreamJob they
//! run, and what a user reads of it (`kubectl get -o json`, `kubectl wait`, its Events). Each
//! test file uses part of it.

use std::time::{Duration, Instant};

use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use serde_json::{json, Value};
use streamjob_tests::controlplane::cluster::OperatorCluster;
use streamjob_worker::testkit::clock::midday_time_zone;
use streamjob_worker::testkit::kafka::{self, EmbeddedKafka, ProduceMode};
use streamjob_worker::testkit::redis::RedisServer;
use streamjob_worker::testkit::trace_state::{fence_offsets, Expected, TraceState};

pub const NS: &str = "default";
pub const NAME: &str = "trace";
pub const TOPIC: &str = "trace-k8s";
pub const DLQ: &str = "trace-k8s-dlq";
pub const PARTITIONS: i32 = 4;

/// Real Kafka and Redis behind the cluster, and what was produced so far.
pub struct Data {
    kafka: EmbeddedKafka,
    redis: RedisServer,
    produced: Vec<Vec<u8>>,
}

impl Data {
    pub fn start() -> Self {
        Data {
            kafka: kafka::start_mock(TOPIC, PARTITIONS, DLQ),
            redis: RedisServer::start().expect("redis-server"),
            produced: Vec::new(),
        }
    }

    pub fn produce(&mut self, seed: u64, n: usize) {
        let payloads = streamjob_tests::small_traffic(seed, n);
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
    pub fn applied(&self) -> i64 {
        fence_offsets(&self.redis.url(), "", NAME, TOPIC, PARTITIONS)
            .expect("fences")
            .iter()
            .map(|f| f.unwrap_or(0))
            .sum()
    }

    pub async fn wait_applied(&self, cluster: &OperatorCluster, timeout: Duration) {
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
    pub fn assert_redis_exact(&self) {
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

pub fn stream_job(data: &Data, replicas: i32) -> Value {
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
            "redis": {"url": data.redis.url(), "timeZone": midday_time_zone()},
            "batch": {"maxEvents": 500, "linger": "20ms"},
            "checkpoint": {"interval": "1s"},
            "savepoint": {"timeout": "60s"},
        }
    })
}

/// Polls the StreamJob until `done` holds (the status is what `kubectl get -o json` shows).
pub async fn until(
    cluster: &OperatorCluster,
    what: &str,
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    cluster.until(NS, NAME, what, timeout, done).await
}

/// A savepoint upgrade finished: no operation in flight, the last savepoint is the upgrade's,
/// and the job is Ready again.
pub fn upgraded_through_a_savepoint(job: &Value) -> bool {
    no_operation(job) && job["status"]["lastSavepoint"]["trigger"] == "upgrade" && ready(job)
}

pub fn ready(job: &Value) -> bool {
    condition(job, "Ready") == Some("True")
}

pub fn condition<'a>(job: &'a Value, type_: &str) -> Option<&'a str> {
    job["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?["status"]
        .as_str()
}

pub fn no_operation(job: &Value) -> bool {
    job["status"]["currentOperation"].is_null()
}

/// The StreamJob's Events: (reason, note).
pub async fn events(cluster: &OperatorCluster) -> Vec<(String, String)> {
    let api: Api<Event> = Api::namespaced(cluster.client.clone(), NS);
    let events = api.list(&ListParams::default()).await.expect("events");
    events
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(NAME))
        .filter_map(|e| Some((e.reason?, e.note.unwrap_or_default())))
        .collect()
}

pub async fn event_reasons(cluster: &OperatorCluster) -> Vec<String> {
    events(cluster).await.into_iter().map(|(r, _)| r).collect()
}

/// Applies `spec`, waits until `kubectl wait` sees the job Ready and every record produced so far
/// is applied.
pub async fn start_running(cluster: &OperatorCluster, data: &Data, spec: &Value) {
    cluster.apply(NS, spec);
    assert!(
        cluster.wait_for(NS, NAME, "Ready", Duration::from_secs(60)),
        "not Ready: {}",
        cluster.describe()
    );
    data.wait_applied(cluster, Duration::from_secs(60)).await;
}
