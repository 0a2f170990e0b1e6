//! Exactly-once under crashes: the worker binary runs as a child process against a broker that
//! lives outside it (librdkafka's mock cluster hosted by this test process, on real TCP ports) and
//! a real redis-server, is SIGKILLed at random moments and restarted, while a deterministic data set
//! of 100k events over 4 partitions streams in. At the end the whole Redis state must equal the
//! state computed from the data set: every HINCRBY total, every list's length and content multiset,
//! every key with a TTL, and every malformed record in the dead-letter topic.
//!
//! Variants add faults: redis-server stopped and restarted (AOF persistence on, so acknowledged
//! writes survive), broker faults (injected request errors, broker down and up), and Redis losing
//! acknowledged writes: restarted from an RDB snapshot taken earlier in the same run (once under
//! a running worker, once while the worker is down), and a real Sentinel failover to a replica
//! that was paused (`kill -STOP`) while the primary took writes, after the primary is SIGKILLed.
//! In those the worker must rewind to the fence, loudly, and still end with every event once.
//!
//! `STREAMJOB_CHAOS_EVENTS` and `STREAMJOB_CHAOS_KILLS` scale a run up (`scripts/chaos-redis.sh`).
//!
//! The event-time series is checked the same way: the data set is out of order, has late events
//! and absurd timestamps; for every template and state the windows + late + skewed counts equal
//! the template counter, no window holds more than the data set's events of that minute, and a
//! window Redis recorded as final (sampled between the kills) never changes afterwards.
//!
//! The random schedule is seeded; a failure prints the seed (`STREAMJOB_SEED=… ` reruns it).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use streamjob_tests::{free_port, write_config, Worker};
use streamjob_worker::api::SnapshotKind;
use streamjob_worker::demo::{EventGenerator, TrafficShape};
use streamjob_worker::jobmanager::store::SnapshotStore;
use streamjob_worker::testkit::clock::midday_time_zone;
use streamjob_worker::testkit::kafka::{self, EmbeddedKafka, ProduceMode};
use streamjob_worker::testkit::redis::{RedisOptions, RedisServer, SentinelOf};
use streamjob_worker::testkit::trace_state::{
    fence_offsets, keys_without_ttl, Expected, SeriesState, TraceState,
};

const TOPIC: &str = "austinTraceLog";
const DLQ: &str = "austinTraceLog-dlq";
const JOB: &str = "trace";
const PARTITIONS: i32 = 4;
const MASTER: &str = "trace-primary";

fn scaled(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn events() -> usize {
    scaled("STREAMJOB_CHAOS_EVENTS", 100_000)
}

fn kills() -> usize {
    scaled("STREAMJOB_CHAOS_KILLS", 5)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Only SIGKILLs of the worker.
    None,
    /// Also stop redis-server for a while (with the worker running, and once across a restart).
    RedisRestart,
    /// Also inject broker request errors and take the broker down and up.
    BrokerErrors,
    /// Also restart Redis from an RDB snapshot taken earlier in the run (it loses a suffix of
    /// acknowledged writes), under a running worker and across a worker restart.
    RedisRollback,
    /// Redis behind three Sentinels; the replica is paused while the primary takes writes, the
    /// primary is SIGKILLed and the sentinels promote the lagging replica.
    SentinelFailover,
}

/// The Redis side of a run: one server, or a primary, a replica and three sentinels.
struct RedisSide {
    servers: Vec<RedisServer>,
    sentinels: Vec<RedisServer>,
    /// Set once the data may flow freely: at once, except for the failover, whose producer
    /// holds the data set's last third until the replica is paused (see [`run`]).
    replica_paused: Arc<AtomicBool>,
}

impl RedisSide {
    fn start(fault: Fault) -> Self {
        let primary = RedisServer::start_with(RedisOptions {
            persistence: fault == Fault::RedisRestart,
            ..RedisOptions::default()
        })
        .expect("redis-server");
        if fault != Fault::SentinelFailover {
            return Self {
                servers: vec![primary],
                sentinels: Vec::new(),
                replica_paused: Arc::new(AtomicBool::new(true)),
            };
        }
        let replica = RedisServer::start_with(RedisOptions {
            extra_args: vec![
                "--replicaof".into(),
                "127.0.0.1".into(),
                primary.port().to_string(),
            ],
            ..RedisOptions::default()
        })
        .expect("replica");
        let sentinels: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(RedisOptions {
                    sentinel: Some(SentinelOf {
                        master_name: MASTER.into(),
                        primary_port: primary.port(),
                        quorum: 2,
                    }),
                    ..RedisOptions::default()
                })
                .expect("sentinel")
            })
            .collect();
        let side = Self {
            servers: vec![primary, replica],
            sentinels,
            replica_paused: Arc::new(AtomicBool::new(false)),
        };
        side.wait_for_sentinels();
        side
    }

    /// Until every sentinel knows the replica and the others (a failover needs both).
    fn wait_for_sentinels(&self) {
        let replica = self.servers[1].port().to_string();
        let deadline = Instant::now() + Duration::from_secs(60);
        for sentinel in &self.sentinels {
            loop {
                let replicas = sentinel
                    .command(&["SENTINEL", "REPLICAS", MASTER])
                    .unwrap_or_default();
                let quorum = sentinel
                    .command(&["SENTINEL", "CKQUORUM", MASTER])
                    .unwrap_or_default();
                if replicas.contains(&replica) && quorum.contains("3 usable") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "sentinels not ready: {replicas} {quorum}"
                );
                thread::sleep(Duration::from_millis(200));
            }
        }
    }

    fn primary(&self) -> &RedisServer {
        self.servers
            .iter()
            .rev()
            .find(|s| s.command(&["ROLE"]).is_ok_and(|r| r.contains("master")))
            .unwrap_or(&self.servers[0])
    }

    fn url(&self) -> String {
        self.primary().url()
    }

    fn sentinel_yaml(&self) -> String {
        if self.sentinels.is_empty() {
            return String::new();
        }
        let nodes: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("\"127.0.0.1:{}\"", s.port()))
            .collect();
        format!(
            "    sentinel:\n      masterName: {MASTER}\n      nodes: [{}]\n",
            nodes.join(", ")
        )
    }

    /// Pauses the replica and drops its link, lets the primary take writes for `lag` and until
    /// its fences moved past what the replica has (right after a worker restart, partitions are
    /// only assigned after the start-up grace, so `lag` alone may see no write and lose nothing),
    /// SIGKILLs the primary, resumes the replica and waits for the sentinels to promote it.
    fn fail_over(&mut self, lag: Duration) {
        self.servers[1].pause(true).expect("replica paused");
        self.replica_paused.store(true, Ordering::Release);
        // Also drop the replication link: what the primary already sent sits in the paused
        // replica's socket buffer and would still reach it after the primary's death.
        let killed = self.servers[0]
            .command(&["CLIENT", "KILL", "TYPE", "replica"])
            .expect("replica link dropped");
        assert!(killed.starts_with(":1"), "one replica link: {killed}");
        let replica_has = applied_offsets(&self.servers[0].url(), PARTITIONS);
        thread::sleep(lag);
        let deadline = Instant::now() + Duration::from_secs(60);
        while applied_offsets(&self.servers[0].url(), PARTITIONS) <= replica_has {
            assert!(
                Instant::now() < deadline,
                "the worker wrote nothing to the primary while the replica was paused"
            );
            thread::sleep(Duration::from_millis(100));
        }
        self.servers[0].stop();
        self.servers[1].pause(false).expect("replica resumed");
        let deadline = Instant::now() + Duration::from_secs(90);
        while !self.servers[1]
            .command(&["ROLE"])
            .is_ok_and(|r| r.contains("master"))
        {
            assert!(
                Instant::now() < deadline,
                "the sentinels did not promote the replica"
            );
            thread::sleep(Duration::from_millis(200));
        }
    }
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
    (0..events()).map(|_| generator.next_payload()).collect()
}

fn job_yaml(broker: &str, redis: &RedisSide, state_dir: &Path) -> String {
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
    timeZone: "{zone}"
{sentinel}batch:
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
        state = state_dir.display(),
        redis_url = redis.url(),
        sentinel = redis.sentinel_yaml(),
        zone = midday_time_zone(),
    )
}

/// Until the worker's log shows a rewind (at most 90 s: sentinels, backoff and a loaded machine).
fn wait_for_rewind(log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .any(|l| l.contains("ERROR") && l.contains("Redis lost acknowledged writes"))
    {
        assert!(
            Instant::now() < deadline,
            "no rewind logged within 90 s of a failover that lost acknowledged writes"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// The sum of the fences' offsets of `partitions` partitions in the Redis at `url` (0 while
/// unreadable).
fn applied_offsets(url: &str, partitions: i32) -> i64 {
    fence_offsets(url, "", JOB, TOPIC, partitions)
        .map(|fences| fences.iter().flatten().sum())
        .unwrap_or(0)
}

fn caught_up(redis: &RedisSide, ends: &[i64]) -> bool {
    match fence_offsets(&redis.url(), "", JOB, TOPIC, ends.len() as i32) {
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
    let mut redis = RedisSide::start(fault);
    let broker = EmbeddedKafka::start(1, &[(TOPIC, PARTITIONS), (DLQ, 1)]).expect("mock broker");
    let bootstrap = broker.bootstrap_servers().to_string();
    let payloads = data_set();
    let config = write_config(
        dir.path(),
        &job_yaml(&bootstrap, &redis, &dir.path().join("state")),
    );
    let log = dir.path().join("worker.log");
    let config_arg = config.to_str().expect("utf-8 path");
    let snapshot = dir.path().join("snapshot.rdb");

    // The data set streams in at about 10k events/s while the worker is killed and restarted.
    // For the failover, its last third waits until the replica is paused: the primary must take
    // writes the replica lacks, and on a fast machine the data could otherwise all be applied
    // before the failover comes.
    let paused = redis.replica_paused.clone();
    let producer = {
        let payloads = payloads.clone();
        let bootstrap = bootstrap.clone();
        let paused = paused.clone();
        thread::spawn(move || {
            let chunks: Vec<&[Vec<u8>]> = payloads.chunks(2_000).collect();
            let held_from = chunks.len() * 2 / 3;
            for (i, chunk) in chunks.into_iter().enumerate() {
                let deadline = Instant::now() + Duration::from_secs(120);
                while i >= held_from && !paused.load(Ordering::Acquire) && Instant::now() < deadline
                {
                    thread::sleep(Duration::from_millis(50));
                }
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
    let mut sample_finals = |redis: &RedisSide| {
        if let Ok(series) = SeriesState::read(&redis.url(), "", JOB) {
            for (window, count) in series.final_windows() {
                finals.entry(window).or_insert(count);
            }
        }
    };
    let kills = kills();
    for kill in 0..kills {
        thread::sleep(Duration::from_millis(rng.random_range(300..1_500)));
        sample_finals(&redis);
        inject(fault, kill, &mut redis, &broker, &snapshot, &log, &mut rng);
        assert!(
            worker.is_running(),
            "worker died on its own:\n{}",
            worker.log_tail(30)
        );
        worker.kill();
        if fault == Fault::RedisRestart && kill == 3 {
            // The worker starts while Redis is down: it must wait for it, not fail.
            redis.servers[0].stop();
            worker.restart();
            thread::sleep(Duration::from_millis(rng.random_range(300..1_000)));
            redis.servers[0].restart().expect("redis restarts");
        } else if fault == Fault::RedisRollback && kill == 3 {
            // Redis rolls back while no worker runs: the restarted one finds fences behind
            // the checkpoint and must rewind at its claim.
            redis.servers[0]
                .restore(&snapshot)
                .expect("redis restored from the snapshot");
            worker.restart();
        } else {
            worker.restart();
        }
    }
    producer.join().expect("producer thread");
    kafka::assert_nothing_truncated(&bootstrap, TOPIC, PARTITIONS);
    let ends = kafka::high_watermarks(&bootstrap, TOPIC, PARTITIONS).expect("watermarks");
    assert_eq!(ends.iter().sum::<i64>(), payloads.len() as i64);
    let deadline = Instant::now() + Duration::from_secs(180);
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
    assert_state(&redis.url(), &payloads, &bootstrap, seed, &log);
    // Redis losing acknowledged writes can take counts of a minute it had recorded as final;
    // re-applied, they go back into it (README, "Event-time series").
    let loses_writes = matches!(fault, Fault::RedisRollback | Fault::SentinelFailover);
    assert_series(&redis, &payloads, &finals, loses_writes, seed);
    if matches!(fault, Fault::RedisRollback | Fault::SentinelFailover) {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let rewinds = text
            .lines()
            .filter(|l| l.contains("ERROR") && l.contains("Redis lost acknowledged writes"))
            .count();
        eprintln!("seed {seed}: {rewinds} rewind log lines");
        assert!(
            rewinds > 0,
            "seed {seed}: Redis lost writes but no rewind was logged\n{}",
            worker.log_tail(30)
        );
    }
}

fn assert_series(
    redis: &RedisSide,
    payloads: &[Vec<u8>],
    finals: &std::collections::BTreeMap<(i64, String), i64>,
    loses_writes: bool,
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
    // A final minute never changes while Redis keeps its writes; when Redis loses some, the
    // re-applied events go back into it, so it never ends below what it showed as final.
    let changed: Vec<String> = finals
        .iter()
        .filter_map(|((id, field), was)| {
            let now = series
                .hashes
                .get(id)
                .and_then(|f| f.get(field))
                .copied()
                .unwrap_or(0);
            let changed = if loses_writes {
                now < *was
            } else {
                now != *was
            };
            changed.then(|| format!("{id} {field}: {was} when final, {now} at the end"))
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

/// The fault of round `kill`, with the worker running.
fn inject(
    fault: Fault,
    kill: usize,
    redis: &mut RedisSide,
    broker: &EmbeddedKafka,
    snapshot: &Path,
    log: &Path,
    rng: &mut rand::rngs::StdRng,
) {
    match fault {
        Fault::RedisRestart if kill == 1 => {
            // Redis goes away under a running worker, which must pause and retry.
            redis.servers[0].stop();
            thread::sleep(Duration::from_millis(rng.random_range(500..1_500)));
            redis.servers[0].restart().expect("redis restarts");
        }
        Fault::RedisRollback if kill == 0 || kill == 2 => {
            redis.servers[0].snapshot(snapshot).expect("snapshot");
        }
        Fault::RedisRollback if kill == 1 => {
            // Writes acknowledged since the snapshot are lost under a running worker.
            redis.servers[0]
                .restore(snapshot)
                .expect("redis restored from the snapshot");
            // Long enough for the running worker to meet the fence that fell back.
            thread::sleep(Duration::from_millis(rng.random_range(1_500..2_500)));
        }
        Fault::SentinelFailover if kill == 1 => {
            redis.fail_over(Duration::from_millis(rng.random_range(800..1_500)));
            // The promoted replica lacks writes the worker saw acknowledged: the running worker
            // must follow the failover and rewind before the next SIGKILL (a restarted one would
            // just resume at the fence, with nothing to rewind).
            wait_for_rewind(log);
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
}

fn assert_state(url: &str, payloads: &[Vec<u8>], bootstrap: &str, seed: u64, log: &Path) {
    let expected = Expected::from_payloads("", payloads.iter().map(Vec::as_slice));
    let actual = TraceState::read(url).expect("redis readable");
    let diff = expected.state.diff(&actual, 10);
    assert!(
        diff.is_empty(),
        "seed {seed}: Redis differs from the data set (log {}):\n{}",
        log.display(),
        diff.join("\n")
    );
    assert_eq!(actual.hashes.len(), expected.state.hashes.len());
    assert_eq!(actual.list_values(), expected.state.list_values());
    let no_ttl = keys_without_ttl(url).expect("ttls");
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

#[test]
fn redis_restored_from_an_earlier_snapshot_mid_run_rewinds_and_applies_every_event_once() {
    run(Fault::RedisRollback);
}

#[test]
fn a_sentinel_failover_to_a_lagging_replica_rewinds_and_applies_every_event_once() {
    run(Fault::SentinelFailover);
}

/// Partitions of the in-order scenario below.
const IN_ORDER_PARTITIONS: i32 = 6;
/// The in-order data set streams in as this many segments, each released by the test.
const SEGMENTS: usize = 5;

/// In order within each partition (record `i` goes to partition `i % 6` and event times only
/// grow, 7 ms apart), no late, skewed or malformed events, event times of the last 16 minutes:
/// every receiver belongs in its minute, so the series must equal the data set's minutes
/// exactly.
fn in_order_data_set() -> Vec<Vec<u8>> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let mut generator = EventGenerator::new(
        20_240_102,
        TrafficShape {
            malformed_ppm: 0,
            base_timestamp_ms: now - 16 * 60_000,
            ..TrafficShape::default()
        },
    );
    (0..scaled("STREAMJOB_CHAOS_EVENTS", 130_000))
        .map(|_| generator.next_payload())
        .collect()
}

/// Produces `payloads` at about 13k events/s, segment by segment: segment `k` only once
/// `released` is above `k`. So the worker is writing whenever the test opens a segment, and one
/// second of its writes spans about 90 s of event time: what a restore then loses lies in
/// minutes the job watermark has already closed.
fn gated_producer(
    payloads: Vec<Vec<u8>>,
    bootstrap: String,
    released: Arc<std::sync::atomic::AtomicUsize>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let segment_len = payloads.len().div_ceil(SEGMENTS);
        for (i, chunk) in payloads.chunks(2_000).enumerate() {
            let deadline = Instant::now() + Duration::from_secs(300);
            while i * 2_000 / segment_len >= released.load(Ordering::Acquire)
                && Instant::now() < deadline
            {
                thread::sleep(Duration::from_millis(20));
            }
            kafka::produce(
                &bootstrap,
                TOPIC,
                IN_ORDER_PARTITIONS,
                chunk,
                ProduceMode::Batched,
            )
            .expect("data produced");
            thread::sleep(Duration::from_millis(100));
        }
    })
}

/// How Redis loses the writes of the last second in one round of the in-order scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restore {
    /// Restored under the running worker, which notices, rewinds and re-applies.
    UnderTheWorker,
    /// Restored under the running worker, which is SIGKILLed while it re-applies: its successor
    /// (a jobmanager from the last checkpoint, new taskmanagers, partitions moving between them
    /// as they register) finishes the re-apply.
    KillDuringTheReapply,
    /// Restored while the worker is down (SIGKILLed just before).
    WhileDown,
}

/// With the worker writing: `SAVE`s, lets it write for about a second, and brings Redis back
/// from that snapshot the way `restore` says.
fn lose_the_last_second(
    restore: Restore,
    redis: &mut RedisSide,
    worker: &mut Worker,
    files: &RestoreFiles,
    rng: &mut rand::rngs::StdRng,
) {
    let primary = &mut redis.servers[0];
    let url = primary.url();
    primary.snapshot(&files.snapshot).expect("snapshot");
    let saved = applied_offsets(&url, IN_ORDER_PARTITIONS);
    thread::sleep(Duration::from_millis(rng.random_range(900..1_200)));
    // A loaded machine may not have written in that second: the round needs a loss.
    wait_for(
        30,
        || applied_offsets(&url, IN_ORDER_PARTITIONS) > saved,
        || {
            format!(
                "the worker wrote nothing after the snapshot:\n{}",
                worker.log_tail(30)
            )
        },
    );
    let rewinds_before = rewind_lines(&files.log);
    if restore == Restore::WhileDown {
        // A restarted worker knows only its newest checkpoint: it has acknowledged writes the
        // snapshot lacks only once a checkpoint past the snapshot is complete. On a loaded
        // machine that can take longer than the second above (CI once killed it before).
        wait_for(
            30,
            || checkpointed_offsets(&files.checkpoints) > saved,
            || {
                format!(
                    "no checkpoint past the snapshot's {saved} offsets:\n{}",
                    worker.log_tail(30)
                )
            },
        );
        worker.kill();
        primary
            .restore(&files.snapshot)
            .expect("restored while down");
        worker.restart();
    } else {
        primary
            .restore(&files.snapshot)
            .expect("restored under the worker");
    }
    wait_for(
        90,
        || rewind_lines(&files.log) > rewinds_before,
        || format!("no rewind logged after {restore:?}"),
    );
    if restore == Restore::KillDuringTheReapply {
        thread::sleep(Duration::from_millis(rng.random_range(50..400)));
        worker.restart();
    }
}

/// Polls `done` until it holds; fails with `failure()` after `seconds`.
fn wait_for(seconds: u64, mut done: impl FnMut() -> bool, failure: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !done() {
        assert!(Instant::now() < deadline, "{}", failure());
        thread::sleep(Duration::from_millis(20));
    }
}

/// The files of the restore scenario: the Redis snapshot, the worker's log, its checkpoints.
struct RestoreFiles {
    snapshot: PathBuf,
    log: PathBuf,
    checkpoints: PathBuf,
}

/// The offsets of the newest complete checkpoint, summed: where a restarted worker resumes.
fn checkpointed_offsets(checkpoints: &Path) -> i64 {
    SnapshotStore::open(checkpoints, SnapshotKind::Checkpoint)
        .and_then(|store| store.newest())
        .ok()
        .flatten()
        .map(|(_, newest)| newest.offsets.iter().map(|o| o.offset).sum())
        .unwrap_or(0)
}

fn rewind_lines(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("Redis lost acknowledged writes"))
        .count()
}

/// Every minute of every template and state as in the data set, and nothing late or skewed.
fn assert_every_minute(url: &str, payloads: &[Vec<u8>], seed: u64) {
    let expected = Expected::from_payloads("", payloads.iter().map(Vec::as_slice));
    let series = SeriesState::read(url, "", JOB).expect("series readable");
    let (late, skewed) = series.late_and_skewed();
    let diff = series.diff(&expected, "", true, 20);
    assert!(
        diff.is_empty() && late == 0 && skewed == 0,
        "seed {seed}: {late} receivers late, {skewed} skewed (the data set has none); minutes \
         that differ from the data set:\n{}",
        diff.join("\n")
    );
}

/// The README's promise for a Redis restored from an older snapshot: the lost events go back
/// into the minutes they were counted in, not into `late`. Three rounds, each while a segment
/// of the data streams in: restored under the running worker, then the same with the worker
/// SIGKILLed during the re-apply, then restored while the worker is down. Every minute of every
/// template and state is compared with the data set, not only the sums.
///
/// The while-down round kills the worker only once a checkpoint past the snapshot is complete.
/// In one CI run (seed 1796667155010835811) the kill came first: the restarted worker resumed
/// from a checkpoint the snapshot already covered, rightly had nothing to rewind, and the test
/// waited 90 s for a rewind. Reproduced by cutting the wait after the snapshot to 100–300 ms
/// without the checkpoint wait: the same "no rewind logged after WhileDown" after 98 s.
#[test]
fn redis_restored_from_an_older_snapshot_puts_every_lost_event_back_into_its_minute() {
    let seed = seed();
    eprintln!("in-order restore scenario, seed {seed} (STREAMJOB_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut redis = RedisSide::start(Fault::RedisRollback);
    let broker =
        EmbeddedKafka::start(1, &[(TOPIC, IN_ORDER_PARTITIONS), (DLQ, 1)]).expect("mock broker");
    let bootstrap = broker.bootstrap_servers().to_string();
    let payloads = in_order_data_set();
    // Checkpoints every second: one is taken during each re-apply.
    let state = dir.path().join("state");
    let yaml = job_yaml(&bootstrap, &redis, &state)
        .replace("checkpoint:\n", "checkpoint:\n  interval: 1s\n");
    let config = write_config(dir.path(), &yaml);
    let files = RestoreFiles {
        snapshot: dir.path().join("snapshot.rdb"),
        log: dir.path().join("worker.log"),
        checkpoints: state.join("checkpoints"),
    };
    let log = &files.log;
    let released = Arc::new(std::sync::atomic::AtomicUsize::new(1));
    let producer = gated_producer(payloads.clone(), bootstrap.clone(), released.clone());
    let config_arg = config.to_str().expect("utf-8 path");
    let mut worker = Worker::start(
        &["standalone", "--config", config_arg, "--taskmanagers", "2"],
        log,
    );
    let rounds = [
        Restore::UnderTheWorker,
        Restore::KillDuringTheReapply,
        Restore::WhileDown,
    ];
    for (round, restore) in rounds.into_iter().enumerate() {
        // The previous segment applied, the next one starts flowing.
        let due = (payloads.len() * (round + 1) / SEGMENTS) as i64;
        let deadline = Instant::now() + Duration::from_secs(120);
        while applied_offsets(&redis.url(), IN_ORDER_PARTITIONS) < due * 9 / 10 {
            assert!(Instant::now() < deadline, "{}", worker.log_tail(30));
            thread::sleep(Duration::from_millis(20));
        }
        released.store(round + 2, Ordering::Release);
        thread::sleep(Duration::from_millis(300));
        lose_the_last_second(restore, &mut redis, &mut worker, &files, &mut rng);
    }
    released.store(SEGMENTS, Ordering::Release);
    producer.join().expect("producer thread");
    let ends = kafka::high_watermarks(&bootstrap, TOPIC, IN_ORDER_PARTITIONS).expect("ends");
    assert_eq!(ends.iter().sum::<i64>(), payloads.len() as i64);
    let deadline = Instant::now() + Duration::from_secs(180);
    while !caught_up(&redis, &ends) {
        assert!(
            Instant::now() < deadline,
            "seed {seed}: no catch-up\n{}",
            worker.log_tail(30)
        );
        thread::sleep(Duration::from_millis(200));
    }
    let status = worker.terminate(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "{}",
        worker.log_tail(30)
    );
    assert_state(&redis.url(), &payloads, &bootstrap, seed, log);
    assert_every_minute(&redis.url(), &payloads, seed);
}
