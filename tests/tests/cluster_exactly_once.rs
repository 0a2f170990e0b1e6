//! Exactly-once on Redis Cluster at the process level (issue #25): real worker processes
//! (standalone mode, two in-process taskmanagers) write a deterministic data set over 4 partitions
//! into a real 3-primary, 3-replica Redis Cluster (`sink.redis.cluster`), fed by a broker outside
//! them (librdkafka's mock cluster, on real TCP ports), while the worker is SIGKILLed mid-stream
//! and restarted. Each restart claims every partition's slot fences anew and resumes where every
//! node kept its last unit, re-applying only what some slot lacks. At the end the union of the
//! primaries' keys must equal the state computed from the data set: every list's content
//! multiset, every counter, every TTL, and the event-time series.
//!
//! Seen failing (seed 1796574574904163399, 998 list values missing) while a claim did not yet
//! leave a mark on every primary (`ClusterOwner::mark_every_node`): a SIGKILL inside a
//! partition's first batch left one primary without any mark, the next claim ignored that
//! primary and resumed after the batch it never got. With that call removed again on purpose
//! the same seed passed once: the failure needs a kill inside a first batch, which the random
//! schedule does not always produce.

use std::thread;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use streamjob_tests::{free_port, write_config, Worker};
use streamjob_worker::demo::{EventGenerator, TrafficShape};
use streamjob_worker::testkit::kafka::{self, EmbeddedKafka, ProduceMode};
use streamjob_worker::testkit::redis_cluster::RedisCluster;
use streamjob_worker::testkit::trace_state::{keys_without_ttl, Expected, SeriesState, TraceState};

const TOPIC: &str = "austinTraceLog";
const DLQ: &str = "austinTraceLog-dlq";
const JOB: &str = "trace";
const PARTITIONS: i32 = 4;
const EVENTS: usize = 24_000;
const KILLS: usize = 3;

fn data_set() -> Vec<Vec<u8>> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let mut generator = EventGenerator::new(
        20_240_101,
        TrafficShape {
            users: 20_000,
            messages: 20_000,
            malformed_ppm: 1_000,
            base_timestamp_ms: now_ms - 5 * 60_000,
            out_of_order_ms: 3_000,
            late_ppm: 2_000,
            skewed_ppm: 100,
            ..TrafficShape::default()
        },
    );
    (0..EVENTS).map(|_| generator.next_payload()).collect()
}

fn job_yaml(broker: &str, seeds: &[String], state: &std::path::Path) -> String {
    let nodes: Vec<String> = seeds.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        r#"job:
  name: {JOB}
source:
  kafka:
    brokers: "{broker}"
    topic: {TOPIC}
    dlqTopic: {DLQ}
    properties:
      fetch.wait.max.ms: "10"
sink:
  redis:
    url: "redis://cluster"
    cluster:
      nodes: [{nodes}]
batch:
  maxEvents: 500
  linger: 20ms
metrics:
  bind: "127.0.0.1:{port}"
jobmanager:
  bind: "127.0.0.1:{jm}"
  url: "http://127.0.0.1:{jm}"
checkpoint:
  dir: "{state}"
"#,
        nodes = nodes.join(", "),
        port = free_port(),
        jm = free_port(),
        state = state.display(),
    )
}

/// The URLs of the cluster's primaries.
fn primary_urls(cluster: &RedisCluster) -> Vec<String> {
    cluster
        .primaries()
        .expect("primaries")
        .into_iter()
        .map(|i| cluster.node(i).url())
        .collect()
}

fn seed() -> u64 {
    std::env::var("STREAMJOB_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(42)
        })
}

/// Keeps the run's directory (the worker's log) for a failure's message.
fn keep(dir: tempfile::TempDir) -> String {
    format!("kept {}", dir.keep().display())
}

#[test]
fn heavy_sigkilled_workers_on_a_redis_cluster_apply_every_event_exactly_once() {
    let seed = seed();
    eprintln!("cluster exactly-once, seed {seed} (STREAMJOB_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("temp dir");
    eprintln!("worker log: {}", dir.path().join("worker.log").display());
    let cluster = RedisCluster::start().expect("3 primaries, 3 replicas");
    let broker = EmbeddedKafka::start(1, &[(TOPIC, PARTITIONS), (DLQ, 1)]).expect("mock broker");
    let bootstrap = broker.bootstrap_servers().to_string();
    let payloads = data_set();
    let config = write_config(
        dir.path(),
        &job_yaml(&bootstrap, &cluster.seeds(), &dir.path().join("state")),
    );
    let log = dir.path().join("worker.log");
    let config_arg = config.to_str().expect("utf-8 path");

    // About 8k events/s while the worker is killed and restarted.
    let producer = {
        let payloads = payloads.clone();
        let bootstrap = bootstrap.clone();
        thread::spawn(move || {
            for chunk in payloads.chunks(2_000) {
                kafka::produce(&bootstrap, TOPIC, PARTITIONS, chunk, ProduceMode::Batched)
                    .expect("data produced");
                thread::sleep(Duration::from_millis(250));
            }
        })
    };
    let mut worker = Worker::start(
        &["standalone", "--config", config_arg, "--taskmanagers", "2"],
        &log,
    );
    for _ in 0..KILLS {
        thread::sleep(Duration::from_millis(rng.random_range(1_000..2_500)));
        assert!(
            worker.is_running(),
            "worker died on its own:\n{}",
            worker.log_tail(30)
        );
        worker.kill();
        worker.restart();
    }
    producer.join().expect("producer thread");
    kafka::assert_nothing_truncated(&bootstrap, TOPIC, PARTITIONS);

    let expected = Expected::from_payloads("", payloads.iter().map(Vec::as_slice));
    let want = expected.state.list_values();
    let urls = primary_urls(&cluster);
    // Until every value is in, or nothing more comes for 30 s (then the comparison below says
    // what is missing).
    let mut last = (0, Instant::now());
    loop {
        let have = TraceState::read_all(&urls).map_or(0, |s| s.list_values());
        if have >= want || last.1.elapsed() > Duration::from_secs(30) {
            break;
        }
        if have != last.0 {
            last = (have, Instant::now());
        }
        assert!(worker.is_running(), "worker died:\n{}", worker.log_tail(30));
        thread::sleep(Duration::from_millis(300));
    }
    let status = worker.terminate(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "graceful stop failed ({status:?}):\n{}",
        worker.log_tail(30)
    );

    let actual = TraceState::read_all(&urls).expect("cluster readable");
    let diff = expected.state.diff(&actual, 10);
    assert!(
        diff.is_empty(),
        "seed {seed}: the cluster differs from the data set (log {}):\n{}\n{}",
        log.display(),
        diff.join("\n"),
        keep(dir)
    );
    assert_eq!(actual.list_values(), want, "seed {seed}");
    for url in &urls {
        let no_ttl = keys_without_ttl(url).expect("ttls");
        assert!(no_ttl.is_empty(), "keys without TTL on {url}: {no_ttl:?}");
    }
    let series = SeriesState::read_all(&urls, "", JOB).expect("series readable");
    let diff = series.diff(&expected, "", false, 10);
    assert!(
        diff.is_empty(),
        "seed {seed}: the series differs from the data set:\n{}",
        diff.join("\n")
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let claims = text
        .lines()
        .filter(|l| l.contains("claimed the partition's slot fences"))
        .count();
    eprintln!("seed {seed}: {claims} cluster claims");
    assert!(
        claims >= PARTITIONS as usize * (KILLS + 1),
        "{claims} claims"
    );
}
