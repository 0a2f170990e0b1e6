//! Exactly-once on Redis Cluster at the process level (issue #25): a real worker process
//! (standalone mode, two in-process taskmanagers) writes a data set over 4 partitions into a real
//! Redis Cluster (`sink.redis.cluster`), fed by a broker outside it (librdkafka's mock cluster, on
//! real TCP ports), while something goes wrong *while the job writes*:
//!
//! - (a) the worker is SIGKILLed mid-stream and restarted;
//! - (b) `redis-cli --cluster reshard` moves 1,000 slots, then an empty primary is added and
//!   `--cluster rebalance` moves slots to it;
//! - (c) a primary is SIGKILLed and its replica promoted without writes the primary had
//!   acknowledged;
//! - (d) the whole cluster is SIGKILLed and restarted from its AOF, which lost its tail.
//!
//! One harness ([`Run`]) for all: the cluster, the broker, the worker, a producer that keeps
//! producing while the scenario runs. At the end the union of the primaries' keys must equal the
//! state computed from what was produced: every list's content multiset, every counter, every
//! TTL, and the event-time series. The worker's log tells how many claims and rewinds ("Redis lost
//! acknowledged writes") there were: a scenario that loses nothing must see no rewind (a false
//! one is a bug, not noise), one that loses writes must see one.
//!
//! Each test's doc says which fence check was broken on purpose to see it fail, and how it failed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use streamjob_tests::{free_port, http_get, write_config, Worker};
use streamjob_worker::demo::{EventGenerator, TrafficShape};
use streamjob_worker::sink::redis::cluster::slot::{key_slot, SLOT_TAGS};
use streamjob_worker::testkit::clock::midday_time_zone;
use streamjob_worker::testkit::kafka::{self, EmbeddedKafka, ProduceMode};
use streamjob_worker::testkit::redis_cluster::{AofEnds, ClusterOptions, RedisCluster};
use streamjob_worker::testkit::trace_state::{keys_without_ttl, Expected, SeriesState, TraceState};

const TOPIC: &str = "austinTraceLog";
const DLQ: &str = "austinTraceLog-dlq";
const JOB: &str = "trace";
const PARTITIONS: i32 = 4;
/// The producer sends this many events every [`CHUNK_EVERY`] (about 4k events/s).
const CHUNK: usize = 1_000;
const CHUNK_EVERY: Duration = Duration::from_millis(250);
/// At least this many events, and at most [`MAX_EVENTS`] however long the scenario takes.
const MIN_EVENTS: usize = 24_000;
const MAX_EVENTS: usize = 60_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What the producer sends.
#[derive(Debug, Clone, Copy)]
enum Traffic {
    /// The demo's traffic: keys spread over every slot, malformed, late and skewed events.
    Demo,
    /// Every other event the demo's, the others writing only keys in slots below this one (the
    /// slots a reshard moves), so that units keep meeting slots mid-migration.
    AlsoInSlotsBelow(u16),
}

impl Traffic {
    fn generator(self) -> impl FnMut() -> Vec<u8> {
        let mut demo = EventGenerator::new(
            20_240_101,
            TrafficShape {
                users: 20_000,
                messages: 20_000,
                malformed_ppm: 1_000,
                base_timestamp_ms: now_ms() - 5 * 60_000,
                out_of_order_ms: 3_000,
                late_ppm: 2_000,
                skewed_ppm: 100,
                ..TrafficShape::default()
            },
        );
        let below = match self {
            Traffic::Demo => None,
            Traffic::AlsoInSlotsBelow(slot) => Some(slot),
        };
        let in_slots = |key: &str| below.is_some_and(|b| key_slot(key.as_bytes()) < b);
        let users: Vec<String> = (0..)
            .map(|i| format!("1390000{i:04}"))
            .filter(|id| in_slots(id))
            .take(if below.is_some() { 300 } else { 0 })
            .collect();
        let messages: Vec<String> = (0..)
            .map(|i| format!("moved-{i}"))
            .filter(|id| in_slots(&format!("Austin:MessageId:{id}")))
            // Enough for each to be new when first written: a new key cannot be created in a
            // migrating slot, the case the unit's probe is for.
            .take(if below.is_some() { MAX_EVENTS / 8 } else { 0 })
            .collect();
        let start = now_ms() - 60_000;
        let mut n = 0usize;
        move || {
            n += 1;
            if users.is_empty() || n.is_multiple_of(2) {
                return demo.next_payload();
            }
            format!(
                r#"{{"businessId":{},"ids":["{}","{}"],"logTimestamp":{},"messageId":"{}","state":{}}}"#,
                1000000120240101i64 + 100_000_000 * (n as i64 % 5),
                users[n % users.len()],
                users[(n * 7 + 3) % users.len()],
                start + n as i64 / 100,
                messages[(n / 4) % messages.len()],
                [10, 60, 64, 70][n % 4]
            )
            .into_bytes()
        }
    }
}

/// The job's config; the ports of its metrics and its jobmanager.
fn job_yaml(broker: &str, seeds: &[String], state: &std::path::Path, ports: (u16, u16)) -> String {
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
    timeZone: "{zone}"
    cluster:
      nodes: [{nodes}]
batch:
  maxEvents: 500
  linger: 20ms
metrics:
  bind: "127.0.0.1:{metrics}"
jobmanager:
  bind: "127.0.0.1:{jm}"
  url: "http://127.0.0.1:{jm}"
checkpoint:
  dir: "{state}"
"#,
        nodes = nodes.join(", "),
        metrics = ports.0,
        jm = ports.1,
        state = state.display(),
        zone = midday_time_zone(),
    )
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

/// `line` without its ANSI colour sequences (`ESC [ … m`).
fn without_colours(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

/// Produces [`CHUNK`] events every [`CHUNK_EVERY`] until told to stop (and at least
/// [`MIN_EVENTS`]); hands back what it produced.
struct Producer {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<Vec<Vec<u8>>>,
}

impl Producer {
    fn start(bootstrap: String, traffic: Traffic) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = thread::spawn(move || {
            let mut next = traffic.generator();
            let mut produced = Vec::new();
            while produced.len() < MAX_EVENTS
                && (produced.len() < MIN_EVENTS || !stopping.load(Ordering::Acquire))
            {
                let chunk: Vec<Vec<u8>> = (0..CHUNK).map(|_| next()).collect();
                kafka::produce(&bootstrap, TOPIC, PARTITIONS, &chunk, ProduceMode::Batched)
                    .expect("data produced");
                produced.extend(chunk);
                thread::sleep(CHUNK_EVERY);
            }
            produced
        });
        Self { stop, thread }
    }

    fn finish(self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::Release);
        self.thread.join().expect("producer thread")
    }
}

/// One scenario's world: the cluster, the broker, the worker and the producer.
struct Run {
    seed: u64,
    rng: rand::rngs::StdRng,
    dir: tempfile::TempDir,
    cluster: RedisCluster,
    bootstrap: String,
    _broker: EmbeddedKafka,
    worker: Worker,
    log: PathBuf,
    jobmanager: String,
    metrics: String,
    producer: Option<Producer>,
    started: Instant,
}

/// What the worker's log says happened.
#[derive(Debug)]
struct Outcome {
    claims: usize,
    /// Log lines of rewinds (the partition's owner and the jobmanager each log one).
    rewinds: usize,
    /// Rewinds to the earliest offset: some node held nothing of the partition any more.
    vanished: usize,
}

impl Run {
    /// Starts the cluster, the broker, the worker (two taskmanagers) and the producer.
    fn start(name: &str, options: ClusterOptions, traffic: Traffic) -> Self {
        let seed = seed();
        eprintln!("{name}: seed {seed} (STREAMJOB_SEED to replay)");
        let started = Instant::now();
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("worker.log");
        eprintln!("worker log: {}", log.display());
        let cluster = RedisCluster::start_with(options).expect("redis cluster");
        let broker =
            EmbeddedKafka::start(1, &[(TOPIC, PARTITIONS), (DLQ, 1)]).expect("mock broker");
        let bootstrap = broker.bootstrap_servers().to_string();
        let ports = (free_port(), free_port());
        let yaml = job_yaml(
            &bootstrap,
            &cluster.seeds(),
            &dir.path().join("state"),
            ports,
        );
        let config = write_config(dir.path(), &yaml);
        let config_arg = config.to_str().expect("utf-8 path");
        let worker = Worker::start(
            &["standalone", "--config", config_arg, "--taskmanagers", "2"],
            &log,
        );
        let producer = Some(Producer::start(bootstrap.clone(), traffic));
        Self {
            seed,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            dir,
            cluster,
            bootstrap,
            _broker: broker,
            worker,
            log,
            jobmanager: format!("127.0.0.1:{}", ports.1),
            metrics: format!("127.0.0.1:{}", ports.0),
            producer,
            started,
        }
    }

    fn elapsed(&self) -> String {
        format!("{:.1}s", self.started.elapsed().as_secs_f64())
    }

    /// The job's committed offsets summed over the partitions (the jobmanager's view).
    fn committed(&self) -> i64 {
        http_get(&self.jobmanager, &format!("/jobs/{JOB}"))
            .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
            .and_then(|overview| {
                overview["partitions"].as_array().map(|partitions| {
                    partitions
                        .iter()
                        .filter_map(|p| p["committedOffset"].as_i64())
                        .sum()
                })
            })
            .unwrap_or(0)
    }

    /// Waits until the job has committed `more` offsets beyond what it had, so that what comes
    /// next happens while it writes.
    fn wait_committed(&mut self, more: i64) {
        let target = self.committed() + more;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.committed() < target {
            assert!(
                Instant::now() < deadline,
                "seed {}: the job never committed {target}:\n{}",
                self.seed,
                self.worker.log_tail(30)
            );
            self.assert_running();
            thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{}: committed {}", self.elapsed(), self.committed());
    }

    /// Waits until every node has appended at least `bytes` to its AOF since `ends`.
    fn wait_aof_growth(&mut self, ends: &AofEnds, bytes: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let grown = self.cluster.aof_ends().expect("AOF ends").grown_since(ends);
            if grown.iter().all(|&g| g >= bytes) {
                eprintln!("{}: AOFs grew {grown:?} bytes", self.elapsed());
                return;
            }
            assert!(
                Instant::now() < deadline,
                "seed {}: the AOFs grew only {grown:?} bytes",
                self.seed
            );
            self.assert_running();
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn assert_running(&mut self) {
        assert!(
            self.worker.is_running(),
            "seed {}: worker died:\n{}",
            self.seed,
            self.worker.log_tail(30)
        );
    }

    fn primary_urls(&self) -> Vec<String> {
        self.cluster
            .primaries()
            .expect("primaries")
            .into_iter()
            .map(|i| self.cluster.node(i).url())
            .collect()
    }

    /// The worker's `streamjob_redis_cluster_waits_total` by kind.
    fn waits(&self, kind: &str) -> u64 {
        let text = http_get(&self.metrics, "/metrics").unwrap_or_default();
        let label = format!("kind=\"{kind}\"");
        text.lines()
            .filter(|l| l.starts_with("streamjob_redis_cluster_waits_total") && l.contains(&label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// Stops the producer, waits until the worker has written everything (or nothing more comes
    /// for 30 s), stops it gracefully and compares the whole cluster with the data set.
    fn finish(mut self) -> Outcome {
        let payloads = self.producer.take().expect("producer").finish();
        eprintln!("{}: produced {}", self.elapsed(), payloads.len());
        kafka::assert_nothing_truncated(&self.bootstrap, TOPIC, PARTITIONS);
        let expected = Expected::from_payloads("", payloads.iter().map(Vec::as_slice));
        let urls = self.primary_urls();
        self.wait_written(&expected, &urls, payloads.len() as i64);
        let status = self.worker.terminate(Duration::from_secs(30));
        assert!(
            status.is_some_and(|s| s.success()),
            "seed {}: graceful stop failed ({status:?}):\n{}",
            self.seed,
            self.worker.log_tail(30)
        );
        let problems = self.compare(&expected, &urls);
        if !problems.is_empty() {
            // Kept for the failure's message: the worker's log and the Redis nodes' logs.
            let kept = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("dir")).keep();
            panic!(
                "seed {}: the cluster differs from the data set (log {}, kept {}):\n{}",
                self.seed,
                self.log.display(),
                kept.display(),
                problems.join("\n")
            );
        }
        let outcome = Outcome {
            claims: self.logged("claimed the partition's slot fences"),
            rewinds: self.rewinds(),
            vanished: self.logged("fence_vanished=true"),
        };
        eprintln!("{}: seed {}: {outcome:?}", self.elapsed(), self.seed);
        for line in self.log_lines("lost acknowledged").iter().take(8) {
            eprintln!("  {line}");
        }
        outcome
    }

    /// Until the job committed every offset and every list value is in, or nothing more comes
    /// for 30 s (then the comparison says what is missing).
    fn wait_written(&mut self, expected: &Expected, urls: &[String], offsets: i64) {
        let want = expected.state.list_values();
        let mut last = ((0, 0), Instant::now());
        loop {
            let committed = self.committed();
            // Reading the whole cluster is slow: only once the job says it is done.
            let have = match committed >= offsets {
                true => TraceState::read_all(urls).map_or(0, |s| s.list_values()),
                false => 0,
            };
            if have >= want || last.1.elapsed() > Duration::from_secs(30) {
                break;
            }
            if (committed, have) != last.0 {
                last = ((committed, have), Instant::now());
            }
            self.assert_running();
            thread::sleep(Duration::from_millis(300));
        }
        eprintln!("{}: written", self.elapsed());
    }

    /// Lines of the worker's log that contain `needle`.
    fn logged(&self, needle: &str) -> usize {
        self.log_lines(needle).len()
    }

    /// The worker's log lines that contain `needle`, without terminal colours.
    fn log_lines(&self, needle: &str) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .map(without_colours)
            .filter(|l| l.contains(needle))
            .collect()
    }

    /// Rewinds so far: the worker found that Redis lost writes it had acknowledged.
    fn rewinds(&self) -> usize {
        self.logged("Redis lost acknowledged writes")
    }

    /// What differs between the cluster and the data set (empty: nothing).
    fn compare(&self, expected: &Expected, urls: &[String]) -> Vec<String> {
        let actual = match TraceState::read_all(urls) {
            Ok(actual) => actual,
            Err(e) => return vec![format!("cluster unreadable: {e}")],
        };
        let mut problems = expected.state.diff(&actual, 10);
        if actual.list_values() != expected.state.list_values() {
            problems.push(format!(
                "{} list values, {} expected",
                actual.list_values(),
                expected.state.list_values()
            ));
        }
        for url in urls {
            match keys_without_ttl(url) {
                Ok(keys) if keys.is_empty() => {}
                Ok(keys) => problems.push(format!("keys without TTL on {url}: {keys:?}")),
                Err(e) => problems.push(format!("{url}: {e}")),
            }
        }
        match SeriesState::read_all(urls, "", JOB) {
            Ok(series) => problems.extend(series.diff(expected, "", false, 10)),
            Err(e) => problems.push(format!("series unreadable: {e}")),
        }
        problems
    }
}

/// (a) The worker SIGKILLed and restarted mid-stream, three times, on a 3+3 cluster. Each
/// restart claims every partition's slot fences anew and resumes where every node kept its last
/// unit, re-applying only what some slot lacks.
///
/// Seen failing (seed 1796574574904163399, 998 list values missing) while a claim did not yet
/// leave a mark on every primary (`ClusterOwner::mark_every_node`): a SIGKILL inside a
/// partition's first batch left one primary without any mark, the next claim ignored that
/// primary and resumed after the batch it never got. With that call removed again on purpose
/// the same seed passed once: the failure needs a kill inside a first batch, which the random
/// schedule does not always produce.
#[test]
fn heavy_sigkilled_workers_on_a_redis_cluster_apply_every_event_exactly_once() {
    const KILLS: usize = 3;
    let mut run = Run::start("sigkill", ClusterOptions::default(), Traffic::Demo);
    for _ in 0..KILLS {
        let pause = run.rng.random_range(1_000..2_500);
        thread::sleep(Duration::from_millis(pause));
        run.assert_running();
        run.worker.kill();
        run.worker.restart();
    }
    let outcome = run.finish();
    // At least one restart claimed every partition again.
    assert!(outcome.claims >= PARTITIONS as usize * 2, "{outcome:?}");
    assert_eq!(outcome.rewinds, 0, "nothing was lost: {outcome:?}");
}

/// The slots `--cluster reshard` moves: the first primary's lowest 1,000.
const MOVED: u16 = 1_000;

/// The first slots of [`MOVED`], held half-migrated until a unit meets one of them. The live
/// reshard alone moves one slot at a time, for milliseconds each: on a loaded machine its units
/// met a slot mid-migration 0–10 times in 7 runs, and not at all in 2, which failed the test.
const HELD: u16 = 50;

/// Slots `0..HELD` half-migrated from primary `from` to `to` (no key moved) until a unit has
/// met one of them (an `ASK` or `TRYAGAIN` wait: every new key there is refused), then finished
/// with `redis-cli --cluster fix`, as an interrupted reshard is.
fn hold_migrations_until_met(run: &mut Run, from: usize, to: usize) {
    run.cluster
        .begin_migrations(0..HELD, from, to)
        .expect("SETSLOT IMPORTING and MIGRATING");
    let deadline = Instant::now() + Duration::from_secs(60);
    while run.waits("ask") + run.waits("tryagain") == 0 {
        assert!(
            Instant::now() < deadline,
            "seed {}: no unit met {HELD} slots held mid-migration in 60 s (moved {}, committed {}):\n{}",
            run.seed,
            run.waits("moved"),
            run.committed(),
            run.worker.log_tail(30)
        );
        run.assert_running();
        thread::sleep(Duration::from_millis(50));
    }
    eprintln!("{}: a unit met a held slot", run.elapsed());
    run.cluster
        .fix_open_slots()
        .expect("held migrations finished");
    eprintln!("{}: held migrations met and finished", run.elapsed());
}

/// Puts `per_slot` filler keys into each slot below [`MOVED`], which primary `index` must serve,
/// so that each takes a while to migrate and the worker's units meet slots mid-migration. Named
/// under `streamjob:` so that the comparison leaves them out.
fn fill_moved_slots(cluster: &RedisCluster, index: usize, per_slot: usize) {
    let port = cluster.node(index).port();
    let serves = cluster
        .topology()
        .expect("topology")
        .into_iter()
        .any(|n| n.port == port && n.slots.first() == Some(&(0, 5460)));
    assert!(serves, "primary {index} serves slots 0-5460");
    let client = redis::Client::open(cluster.node(index).url()).expect("client");
    let mut conn = client.get_connection().expect("connection");
    for slot in 0..MOVED {
        let mut pipe = redis::pipe();
        for i in 0..per_slot {
            let key = format!("streamjob:filler:{{{}}}:{i}", SLOT_TAGS.tag(slot));
            pipe.set(key, i).ignore();
        }
        pipe.query::<()>(&mut conn).expect("filler written");
    }
}

/// (b) Live slot migration while the worker writes: first 50 slots are held half-migrated until
/// a unit meets one (an `ASK` or `TRYAGAIN` wait) and finished with `redis-cli --cluster fix`;
/// then `redis-cli --cluster reshard` moves the other 950 of 1,000 slots (with their keys and
/// slot fences, one key per `MIGRATE`) from one primary to another, and an empty primary joins
/// and `--cluster rebalance` moves slots to it (the same 1,000 among them). Half the events
/// write into the moved slots, many of them creating keys there, and each moved slot holds
/// filler keys, so that units also meet the reshard's slots mid-migration (0–10 times a run)
/// besides moved ones (`MOVED`: 55–180). Nothing is lost, nothing doubled, and nothing is
/// reported lost. The held slots are there because the reshard's own encounters are luck: in
/// 2 runs of 7 on a loaded machine there were none, and the test failed on that.
///
/// Seen failing with the unit script's migrating-slot probe removed (`unit.rs`, the multi-key
/// `EXISTS` of a migrating slot's fence and keys), seed 1796588768816160650: a unit created a
/// key in a slot whose keys had partly left, the script failed midway ("non local key") keeping
/// what it had written, the partition stopped, and one list value was missing (178,489 of
/// 178,490). Before the traffic wrote new keys into the moved slots (only the demo's traffic, or
/// reused keys), the same break passed twice: units then rarely met a migrating slot. With the
/// held slots, the same break failed again (seed 1796672844536521148): user lists short of
/// values, some missing.
#[test]
fn heavy_a_live_reshard_and_rebalance_under_a_running_worker_apply_every_event_exactly_once() {
    let mut run = Run::start(
        "reshard",
        ClusterOptions {
            primaries: 3,
            replicas: 0,
            persistence: false,
        },
        Traffic::AlsoInSlotsBelow(MOVED),
    );
    let primaries = run.cluster.primaries().expect("primaries");
    fill_moved_slots(&run.cluster, primaries[0], 20);
    run.wait_committed(2_000);
    hold_migrations_until_met(&mut run, primaries[0], primaries[1]);
    // The rest of the 1,000 slots, lowest first: redis-cli takes a source's slots in order.
    run.cluster
        .reshard(primaries[0], primaries[1], usize::from(MOVED - HELD), 1)
        .expect("reshard 950 slots");
    eprintln!("{}: resharded", run.elapsed());
    run.assert_running();
    let added = run.cluster.add_primary().expect("an empty primary");
    run.cluster.rebalance(10).expect("rebalance");
    eprintln!("{}: rebalanced", run.elapsed());
    let topology = run.cluster.topology().expect("topology");
    let new = topology
        .iter()
        .find(|n| n.port == run.cluster.node(added).port())
        .expect("the added primary");
    assert!(new.slot_count() > 0, "rebalance moved nothing: {new:?}");
    let waits: Vec<(&str, u64)> = ["moved", "ask", "tryagain"]
        .into_iter()
        .map(|kind| (kind, run.waits(kind)))
        .collect();
    let outcome = run.finish();
    eprintln!("waits {waits:?}");
    assert!(waits[0].1 > 0, "no unit met a moved slot: {waits:?}");
    assert!(
        waits[1].1 + waits[2].1 > 0,
        "no unit met a slot mid-migration: {waits:?}"
    );
    assert_eq!(outcome.rewinds, 0, "nothing was lost: {outcome:?}");
}

/// (c) A primary SIGKILLed while the worker writes, and its replica promoted without writes the
/// primary had acknowledged: the replica is cut off (paused, its link dropped) while the job
/// commits a few thousand more offsets, then the primary is killed. The worker's first unit on
/// the promoted node finds its unit mark behind, reads the fences back and rewinds; replaying
/// re-applies exactly what that shard lost. The rewind must go back to where the promoted node
/// stands, not to the earliest offset (it kept a prefix).
///
/// Seen failing with the rewind skipped (`ClusterSink::lost` resuming at the refused batch's
/// own start instead of the resume point), seed 1796587884912368215: 83,623 list values of
/// 88,490. Breaking only the unit-mark classification (a mark behind taken for another owner's
/// progress) did not make it fail: the partition's idle fence check (`read_fence`, the owner's
/// marks against Redis) found the loss and rewound. Taking the newest node's mark as the resume
/// point instead of the oldest did not either: that point lay past the refused batch, so the
/// sink fell back to the earliest offset and re-applied everything (caught since by the check
/// that the rewind did not go back to the earliest offset). The first version of this test
/// cut the replica off before its first sync: the promoted node held nothing and every
/// partition rewound to offset 0, which passed but tested the vanished-fence path only.
#[test]
fn heavy_a_failover_that_lost_acknowledged_writes_under_a_running_worker_is_rewound_exactly() {
    let mut run = Run::start("failover", ClusterOptions::default(), Traffic::Demo);
    run.wait_committed(2_000);
    let victim = run.cluster.primaries().expect("primaries")[0];
    let replica = run.cluster.replicas_of(victim).expect("replicas")[0];
    // What the replica holds so far is what the promoted node keeps: a prefix, not nothing.
    run.cluster
        .wait_replicated(victim)
        .expect("replica in sync");
    run.cluster
        .cut_off_replica(victim, replica)
        .expect("replica cut off");
    // Acknowledged by the victim, never seen by its replica.
    run.wait_committed(3_000);
    let promoted = run.cluster.kill_primary(victim).expect("failover");
    assert_eq!(promoted, replica);
    eprintln!("{}: failed over", run.elapsed());
    let outcome = run.finish();
    assert!(outcome.rewinds > 0, "no rewind: {outcome:?}");
    assert_eq!(
        outcome.vanished, 0,
        "the replica kept a prefix: {outcome:?}"
    );
}

/// (d) The whole cluster SIGKILLed and restarted from its AOF while the worker writes, twice:
/// once whole (`appendfsync always`: nothing lost; the worker waits the outage out and loads its
/// script again), once with every node's AOF cut back to where it ended about 2,000 offsets
/// earlier (acknowledged writes lost on every shard at once, as after a power cut with
/// `appendfsync everysec`): every shard's next unit finds its mark behind and the partitions
/// rewind. The cut waits until every node has appended to its AOF since the cut point too:
/// commits trail Redis, and in one CI run (seed 1796624233121669781) the 2,000 offsets had all
/// been written before it, most likely: the cut lost nothing (the data came out exact) and the
/// test saw no rewind to check.
///
/// Seen failing with the rewind skipped (as in (c)), seed 1796588378804113468: 68,842 list
/// values of 79,603. With the per-slot skip broken instead (`fence::slot_step` applying a slot
/// whose fence already covers the batch) the job never committed its first 2,000 offsets: the
/// apply loop re-applies until every slot is skipped, so that break shows in every test.
#[test]
fn heavy_a_cluster_restarted_from_its_aof_under_a_running_worker_applies_every_event_once() {
    let mut run = Run::start(
        "restart",
        ClusterOptions {
            primaries: 3,
            replicas: 0,
            persistence: true,
        },
        Traffic::Demo,
    );
    run.wait_committed(2_000);
    run.cluster.restart_all().expect("restart from the AOF");
    eprintln!("{}: restarted", run.elapsed());
    run.wait_committed(2_000);
    assert_eq!(run.rewinds(), 0, "a whole AOF lost nothing");
    let ends = run.cluster.aof_ends().expect("AOF ends");
    run.wait_committed(2_000);
    // Commits trail Redis: those 2,000 may all have been written before `ends` (a worker
    // catching up after the first restart). The cut must lose writes on every shard.
    run.wait_aof_growth(&ends, 4096);
    run.cluster
        .restart_all_losing_since(&ends)
        .expect("restart from cut AOFs");
    eprintln!("{}: restarted, AOF tails lost", run.elapsed());
    let outcome = run.finish();
    assert!(outcome.rewinds > 0, "no rewind: {outcome:?}");
}
