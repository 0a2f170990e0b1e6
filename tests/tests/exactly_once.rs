//! Exactly-once under crashes: the worker binary runs as a child process against a broker that
//! lives outside it (librdkafka's mock cluster hosted by this test process, on real TCP ports) and
//! a real redis-server, is SIGKILLed at random moments and restarted, while a deterministic data set
//! of 100k events over 4 partitions streams in. At the end the whole Redis state must equal the
//! state computed from the data set: every HINCRBY total, every list's length and content multiset,
//! every key with a TTL, and every malformed record in the dead-letter topic.
//!
//! Variants add faults: redis-server stopped and restarted (AOF persistence on, so acknowledged
//! writes survive), and broker faults (injected request errors, broker down and up).
//!
//! The event-time series is checked the same way: the data set is out of order, has late events
//! and absurd timestamps; for every template and state the windows + late + skewed counts equal
//! the template counter, no window holds more than the data set's events of that minute, and a
//! window Redis recorded as final (sampled between the kills) never changes afterwards.
//!
//! The random schedule is seeded; a failure prints the seed (`STREAMJOB_SEED=… ` reruns it).

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use streamjob_tests::{free_port, write_config, Worker};
use streamjob_worker::demo::{EventGenerator, TrafficShape};
use streamjob_worker::testkit::kafka::{self, EmbeddedKafka, ProduceMode};
use streamjob_worker::testkit::redis::{RedisOptions, RedisServer};
use streamjob_worker::testkit::trace_state::{
    fence_offsets, keys_without_ttl, Expected, SeriesState, TraceState,
};

const TOPIC: &str = "austinTraceLog";
const DLQ: &str = "austinTraceLog-dlq";
const JOB: &str = "trace";
const PARTITIONS: i32 = 4;
const EVENTS: usize = 100_000;
const KILLS: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Only SIGKILLs of the worker.
    None,
    /// Also stop redis-server for a while (with the worker running, and once across a restart).
    RedisRestart,
    /// Also inject broker request errors and take the broker down and up.
    BrokerErrors,
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

fn data_set() -> Vec<Vec<u8>> {
    let mut generator = EventGenerator::new(
        20_240_101,
        TrafficShape {
            users: 100_000,
            messages: 100_000,
            malformed_ppm: 1_000,
            // Event times of the last quarter hour (100k events span ~12 minutes), out of order
            // by up to 3 s, 0.2 % late by 2-5 minutes, a few from tomorrow.
            base_timestamp_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0)
                - 15 * 60_000,
            out_of_order_ms: 3_000,
            late_ppm: 2_000,
            skewed_ppm: 100,
            ..TrafficShape::default()
        },
    );
    (0..EVENTS).map(|_| generator.next_payload()).collect()
}

fn job_yaml(broker: &str, redis_url: &str, state_dir: &Path) -> String {
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
    url: "{redis_url}"
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
        port = free_port(),
        jm = free_port(),
        state = state_dir.display()
    )
}

fn caught_up(redis: &RedisServer, ends: &[i64]) -> bool {
    match fence_offsets(&redis.url(), "", JOB, TOPIC, PARTITIONS) {
        Ok(fences) => fences
            .iter()
            .zip(ends)
            .all(|(f, e)| *e == 0 || *f == Some(*e)),
        Err(_) => false,
    }
}

fn run(fault: Fault) {
    let seed = seed();
    eprintln!("exactly-once scenario {fault:?}, seed {seed} (STREAMJOB_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut redis = RedisServer::start_with(RedisOptions {
        persistence: fault == Fault::RedisRestart,
        ..RedisOptions::default()
    })
    .expect("redis-server");
    let broker = EmbeddedKafka::start(1, &[(TOPIC, PARTITIONS), (DLQ, 1)]).expect("mock broker");
    let bootstrap = broker.bootstrap_servers().to_string();
    let payloads = data_set();
    let config = write_config(
        dir.path(),
        &job_yaml(&bootstrap, &redis.url(), &dir.path().join("state")),
    );
    let log = dir.path().join("worker.log");
    let config_arg = config.to_str().expect("utf-8 path");

    // The data set streams in at about 10k events/s while the worker is killed and restarted.
    let producer = {
        let payloads = payloads.clone();
        let bootstrap = bootstrap.clone();
        thread::spawn(move || {
            for chunk in payloads.chunks(2_000) {
                kafka::produce(&bootstrap, TOPIC, PARTITIONS, chunk, ProduceMode::Batched)
                    .expect("data produced");
                thread::sleep(Duration::from_millis(150));
            }
        })
    };
    let mut worker = Worker::start(
        &["standalone", "--config", config_arg, "--taskmanagers", "2"],
        &log,
    );
    // Windows Redis recorded as final, with their counts when first seen so.
    let mut finals = std::collections::BTreeMap::new();
    let mut sample_finals = |redis: &RedisServer| {
        if let Ok(series) = SeriesState::read(&redis.url(), "", JOB) {
            for (window, count) in series.final_windows() {
                finals.entry(window).or_insert(count);
            }
        }
    };
    for kill in 0..KILLS {
        thread::sleep(Duration::from_millis(rng.random_range(300..1_500)));
        sample_finals(&redis);
        match fault {
            Fault::RedisRestart if kill == 1 => {
                // Redis goes away under a running worker, which must pause and retry.
                redis.stop();
                thread::sleep(Duration::from_millis(rng.random_range(500..1_500)));
                redis.restart().expect("redis restarts");
            }
            Fault::BrokerErrors if kill == 1 => {
                broker.cluster().request_errors(
                    RDKafkaApiKey::Fetch,
                    &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 40],
                );
                broker.cluster().request_errors(
                    RDKafkaApiKey::ListOffsets,
                    &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT; 10],
                );
            }
            Fault::BrokerErrors if kill == 3 => {
                broker.cluster().broker_down(1).expect("broker down");
                thread::sleep(Duration::from_millis(rng.random_range(500..1_500)));
                broker.cluster().broker_up(1).expect("broker up");
            }
            _ => {}
        }
        assert!(
            worker.is_running(),
            "worker died on its own:\n{}",
            worker.log_tail(30)
        );
        worker.kill();
        if fault == Fault::RedisRestart && kill == 3 {
            // The worker starts while Redis is down: it must wait for it, not fail.
            redis.stop();
            worker.restart();
            thread::sleep(Duration::from_millis(rng.random_range(300..1_000)));
            redis.restart().expect("redis restarts");
        } else {
            worker.restart();
        }
    }
    producer.join().expect("producer thread");
    kafka::assert_nothing_truncated(&bootstrap, TOPIC, PARTITIONS);
    let ends = kafka::high_watermarks(&bootstrap, TOPIC, PARTITIONS).expect("watermarks");
    assert_eq!(ends.iter().sum::<i64>(), EVENTS as i64);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !caught_up(&redis, &ends) {
        assert!(
            Instant::now() < deadline,
            "seed {seed}: worker did not catch up; fences {:?}, ends {ends:?}\n{}",
            fence_offsets(&redis.url(), "", JOB, TOPIC, PARTITIONS),
            worker.log_tail(30)
        );
        assert!(worker.is_running(), "worker died:\n{}", worker.log_tail(30));
        sample_finals(&redis);
        thread::sleep(Duration::from_millis(200));
    }
    let status = worker.terminate(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "graceful stop failed ({status:?}):\n{}",
        worker.log_tail(30)
    );
    assert_state(&redis, &payloads, &bootstrap, seed, &log);
    assert_series(&redis, &payloads, &finals, seed);
}

fn assert_series(
    redis: &RedisServer,
    payloads: &[Vec<u8>],
    finals: &std::collections::BTreeMap<(i64, String), i64>,
    seed: u64,
) {
    let expected = Expected::from_payloads("", payloads.iter().map(Vec::as_slice));
    let series = SeriesState::read(&redis.url(), "", JOB).expect("series readable");
    let diff = series.diff(&expected, "", false, 10);
    assert!(
        diff.is_empty(),
        "seed {seed}: the series differs from the data set:\n{}",
        diff.join("\n")
    );
    let (late, skewed) = series.late_and_skewed();
    assert!(
        late > 0 && skewed > 0,
        "seed {seed}: late {late}, skewed {skewed}"
    );
    let changed: Vec<String> = finals
        .iter()
        .filter_map(|((id, field), was)| {
            let now = series
                .hashes
                .get(id)
                .and_then(|f| f.get(field))
                .copied()
                .unwrap_or(0);
            (now != *was).then(|| format!("{id} {field}: {was} when final, {now} at the end"))
        })
        .take(10)
        .collect();
    assert!(
        changed.is_empty(),
        "seed {seed}: final windows changed:\n{}",
        changed.join("\n")
    );
    eprintln!(
        "series: {} final windows sampled, {late} late, {skewed} skewed",
        finals.len()
    );
}

fn assert_state(redis: &RedisServer, payloads: &[Vec<u8>], bootstrap: &str, seed: u64, log: &Path) {
    let expected = Expected::from_payloads("", payloads.iter().map(Vec::as_slice));
    let actual = TraceState::read(&redis.url()).expect("redis readable");
    let diff = expected.state.diff(&actual, 10);
    assert!(
        diff.is_empty(),
        "seed {seed}: Redis differs from the data set (log {}):\n{}",
        log.display(),
        diff.join("\n")
    );
    assert_eq!(actual.hashes.len(), expected.state.hashes.len());
    assert_eq!(actual.list_values(), expected.state.list_values());
    let no_ttl = keys_without_ttl(&redis.url()).expect("ttls");
    assert!(
        no_ttl.is_empty(),
        "keys without TTL: {:?}",
        &no_ttl[..no_ttl.len().min(5)]
    );

    // Every malformed record reached the DLQ; a record replayed after a crash may be there twice,
    // recognisable by its key.
    let dlq = kafka::read_all(bootstrap, DLQ, 1).expect("dlq readable");
    let mut keys: Vec<&str> = dlq.iter().filter_map(|r| r.key_str()).collect();
    assert_eq!(keys.len(), dlq.len(), "every DLQ record has a key");
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(
        keys.len(),
        expected.malformed,
        "seed {seed}: distinct dead letters"
    );
}

#[test]
fn sigkill_at_random_moments_applies_every_event_exactly_once() {
    run(Fault::None);
}

#[test]
fn redis_stopped_and_restarted_mid_run_loses_and_duplicates_nothing() {
    run(Fault::RedisRestart);
}

#[test]
fn broker_errors_and_a_broker_outage_lose_and_duplicate_nothing() {
    run(Fault::BrokerErrors);
}
