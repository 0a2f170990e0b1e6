//! Worker pipeline benchmark (run by `scripts/bench-worker.sh`, not a test).
//!
//! 1. A broker in its own process (`streamjob-worker mock-kafka`, or tansu with `--broker tansu`)
//!    preloaded with a deterministic data set (default 1,000,000 events, 4 partitions, 1–3 ids per
//!    event from 100k users, 50 businessIds, real state codes).
//! 2. References measured in the same run: the broker's raw consume rate (a plain librdkafka
//!    consumer reading the whole topic) and `redis-benchmark -P 64` LPUSH and HINCRBY rates.
//! 3. End to end, `--runs` times (median reported): a fresh redis-server, the worker binary in
//!    standalone mode (exactly-once on: fences, one script per batch), timed from process start until
//!    every partition's fence reached the topic's end. Also Redis commands per event (the sink's
//!    counters), worker CPU per event, peak RSS (/proc/PID/status VmHWM), and the time from
//!    spawning the process to the first batch's fence in Redis.
//! 4. Latency: the worker running, events produced at a fixed rate (default 10k/s) for 20 s;
//!    p50/p99 of the worker's `produce_to_redis_seconds` histogram (Kafka CreateTime → batch applied).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use streamjob_tests::{free_port, http_get, worker_binary, write_config, Worker};
use streamjob_worker::demo::{EventGenerator, TrafficShape};
use streamjob_worker::metrics::{histogram_quantile, sample};
use streamjob_worker::sink::redis::Layout;
use streamjob_worker::testkit::kafka::{self, ProduceMode, Tansu};
use streamjob_worker::testkit::redis::RedisServer;
use streamjob_worker::testkit::trace_state::fence_offsets;
use streamjob_worker::testkit::upstream::upstream_pipeline;
use streamjob_worker::transform::decode;

const TOPIC: &str = "austinTraceLog";
const DLQ: &str = "austinTraceLog-dlq";
const PARTITIONS: i32 = 4;

struct Args {
    events: usize,
    runs: usize,
    broker: String,
    latency_rate: u64,
    latency_secs: u64,
    /// Only the end-to-end runs (no references, no latency): for iterating on the pipeline, not
    /// for BENCHMARKS.md.
    e2e_only: bool,
    /// Only the latency run.
    latency_only: bool,
    /// Only end-to-end runs with the event-time series on and off, alternating: its cost.
    window_cost: bool,
    /// `demo` (the demo generator: each event a random message, state and receivers) or
    /// `lifecycle` (`testkit::lifecycle`: messages through their states, same receivers).
    shape: String,
}

fn parse_args() -> Args {
    let mut args = Args {
        events: 1_000_000,
        runs: 3,
        broker: "tansu".into(),
        latency_rate: 10_000,
        latency_secs: 20,
        e2e_only: false,
        latency_only: false,
        window_cost: false,
        shape: "demo".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--e2e-only" {
            args.e2e_only = true;
            continue;
        }
        if flag == "--window-cost" {
            args.window_cost = true;
            continue;
        }
        if flag == "--latency-only" {
            args.latency_only = true;
            continue;
        }
        let value = it.next().unwrap_or_default();
        match flag.as_str() {
            "--events" => args.events = value.parse().expect("--events N"),
            "--runs" => args.runs = value.parse().expect("--runs N"),
            "--broker" => args.broker = value,
            "--shape" if value == "demo" || value == "lifecycle" => args.shape = value,
            "--latency-rate" => args.latency_rate = value.parse().expect("--latency-rate N"),
            "--latency-secs" => args.latency_secs = value.parse().expect("--latency-secs N"),
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

enum Broker {
    Mock(Child, String),
    Tansu(Tansu),
}

impl Broker {
    fn start(kind: &str) -> Self {
        if kind == "tansu" {
            let binary = kafka::tansu_binary().expect("tansu binary (scripts/setup.sh --test)");
            let tansu = Tansu::start(&binary).expect("tansu starts");
            tansu.create_topic(TOPIC, PARTITIONS).expect("topic");
            tansu.create_topic(DLQ, 1).expect("dlq topic");
            return Broker::Tansu(tansu);
        }
        let mut child = Command::new(worker_binary())
            .args(["mock-kafka", "--topic", TOPIC, "--topic", DLQ])
            .args(["--partitions", &PARTITIONS.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mock-kafka starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("bootstrap line");
        let bootstrap = line.trim().trim_start_matches("BOOTSTRAP ").to_string();
        Broker::Mock(child, bootstrap)
    }

    fn bootstrap(&self) -> &str {
        match self {
            Broker::Mock(_, b) => b,
            Broker::Tansu(t) => t.bootstrap_servers(),
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Broker::Mock(child, _) = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn payloads_len_check(ends: &[i64], events: usize) {
    assert_eq!(
        ends.iter().sum::<i64>(),
        events as i64,
        "every preloaded event has its own offset"
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The plain consumer's records/s, and the time from creating it to its first record (the
/// broker's share of a pipeline's time to first write).
fn raw_consume_rate(bootstrap: &str, events: usize) -> (f64, f64) {
    let created = Instant::now();
    let mut first_record = None;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "bench-raw")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(TOPIC, p, Offset::Beginning)
            .expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    let started = Instant::now();
    let mut n = 0;
    while n < events {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => {
                first_record.get_or_insert_with(|| created.elapsed());
                n += 1;
            }
            Some(Err(err)) => eprintln!("raw consumer: {err}"),
            None => {}
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "raw consume stuck at {n}"
        );
    }
    let first_ms = first_record.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    (n as f64 / started.elapsed().as_secs_f64(), first_ms)
}

fn redis_benchmark(port: u16, args: &[&str]) -> f64 {
    let out = Command::new("redis-benchmark")
        .args(["-p", &port.to_string(), "-P", "64", "-n", "2000000", "-q"])
        .args(args)
        .output()
        .expect("redis-benchmark runs");
    let text = String::from_utf8_lossy(&out.stdout);
    // "LPUSH: 1234567.00 requests per second, p50=..." (last \r-separated segment)
    let line = text.rsplit('\r').next().unwrap_or("").trim().to_string();
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        .iter()
        .position(|w| *w == "requests")
        .and_then(|i| words.get(i.checked_sub(1)?)?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("cannot parse redis-benchmark output {text:?}"))
}

/// Redis's own ceiling for this data: the same events as upstream's per-event command stream
/// (LPUSH + EXPIRE per list, HINCRBY + EXPIRE per template; no fences, not atomic), pipelined
/// 2,000 events at a time over one connection per partition, into a fresh redis-server. Pipelines
/// are built before the clock starts, so only Redis is measured.
fn upstream_replay(payloads: &[Vec<u8>]) -> Replay {
    let redis = RedisServer::start().expect("redis");
    let layout = Layout::new("", "Asia/Shanghai", "trace", TOPIC).expect("layout");
    let now = std::time::SystemTime::now();
    let events: Vec<_> = payloads.iter().filter_map(|p| decode(p).ok()).collect();
    let per_partition: Vec<Vec<redis::Pipeline>> = (0..PARTITIONS as usize)
        .map(|p| {
            let mine: Vec<_> = events.iter().skip(p).step_by(PARTITIONS as usize).collect();
            mine.chunks(2000)
                .map(|chunk| upstream_pipeline(&layout, chunk.iter().copied(), now))
                .collect()
        })
        .collect();
    let commands: usize = per_partition
        .iter()
        .flatten()
        .map(|p| p.cmd_iter().count())
        .sum();
    let cpu0 = redis_cpu_seconds(&redis.url()).unwrap_or(f64::NAN);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for pipelines in &per_partition {
            let url = redis.url();
            scope.spawn(move || {
                let mut conn = redis::Client::open(url)
                    .and_then(|c| c.get_connection())
                    .expect("connect");
                for pipe in pipelines {
                    let () = pipe.query(&mut conn).expect("pipeline");
                }
            });
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = redis_cpu_seconds(&redis.url()).unwrap_or(f64::NAN) - cpu0;
    print_commandstats(&redis.url());
    let replay = Replay {
        events_per_second: events.len() as f64 / elapsed,
        redis_cpu_us_per_event: cpu * 1e6 / events.len() as f64,
        commands_per_event: commands as f64 / events.len() as f64,
    };
    eprintln!(
        "upstream replay: {:.0} events/s, Redis CPU {:.2} µs/event, {:.2} commands/event",
        replay.events_per_second, replay.redis_cpu_us_per_event, replay.commands_per_event
    );
    replay
}

/// The upstream replay's figures.
struct Replay {
    events_per_second: f64,
    redis_cpu_us_per_event: f64,
    commands_per_event: f64,
}

fn job_yaml(
    bootstrap: &str,
    redis_url: &str,
    metrics_port: u16,
    dir: &std::path::Path,
    window: bool,
) -> String {
    format!(
        r#"job:
  name: trace
source:
  kafka:
    brokers: "{bootstrap}"
    topic: {TOPIC}
    dlqTopic: {DLQ}
    properties:
      fetch.wait.max.ms: "10"{extra}
sink:
  redis:
    url: "{redis_url}"
batch:
  maxEvents: {max_events}
  linger: {linger}
window:
  enabled: {window}
metrics:
  bind: "127.0.0.1:{metrics_port}"
jobmanager:
  bind: "127.0.0.1:{jm}"
  url: "http://127.0.0.1:{jm}"
checkpoint:
  dir: "{dir}"
"#,
        jm = free_port(),
        dir = dir.display(),
        linger = std::env::var("BENCH_LINGER").unwrap_or_else(|_| "5ms".into()),
        max_events = std::env::var("BENCH_MAX_EVENTS").unwrap_or_else(|_| "2000".into()),
        // BENCH_KAFKA_PROPERTIES="key=value,…" tries librdkafka settings without a rebuild.
        extra = std::env::var("BENCH_KAFKA_PROPERTIES")
            .unwrap_or_default()
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| format!("\n      {k}: \"{v}\""))
            .collect::<String>()
    )
}

fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

struct RunResult {
    events_per_second: f64,
    /// redis-server's CPU time (`INFO cpu`, user + sys) over the run's wall time: how close the
    /// run came to Redis's one main thread being saturated.
    redis_busy: f64,
    commands_per_event: f64,
    /// redis-server's own CPU time (INFO cpu, user + sys) over the run, per event.
    redis_cpu_us_per_event: f64,
    cpu_us_per_event: f64,
    peak_rss_mb: f64,
    /// From spawning the process to the first batch's fence move in Redis (DESIGN: < 0.5 s).
    first_write_ms: f64,
}

fn e2e_run(bootstrap: &str, ends: &[i64], events: usize, run: usize) -> RunResult {
    e2e_run_with(bootstrap, ends, events, run, window_from_env())
}

/// `window.enabled` of the runs: on unless `BENCH_WINDOW=off`.
fn window_from_env() -> bool {
    std::env::var("BENCH_WINDOW").map_or(true, |v| v != "off")
}

/// One end-to-end run, with the event-time series on or off.
fn e2e_run_with(
    bootstrap: &str,
    ends: &[i64],
    events: usize,
    run: usize,
    window: bool,
) -> RunResult {
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = RedisServer::start().expect("redis");
    let port = free_port();
    let config = write_config(
        dir.path(),
        &job_yaml(bootstrap, &redis.url(), port, dir.path(), window),
    );
    let started = Instant::now();
    let mut worker = Worker::start(
        &["standalone", "--config", config.to_str().unwrap()],
        &dir.path().join("worker.log"),
    );
    let pid = worker.pid().expect("pid");
    let mut first_write = None;
    loop {
        let fences =
            fence_offsets(&redis.url(), "", "trace", TOPIC, PARTITIONS).unwrap_or_default();
        if first_write.is_none() && fences.iter().any(Option::is_some) {
            first_write = Some(started.elapsed());
        }
        if fences.len() == ends.len() && fences.iter().zip(ends).all(|(f, e)| *f == Some(*e)) {
            break;
        }
        assert!(worker.is_running(), "worker died:\n{}", worker.log_tail(20));
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "run {run} stuck"
        );
        // Finer polling until the first write, whose time is reported.
        std::thread::sleep(Duration::from_millis(if first_write.is_some() {
            20
        } else {
            2
        }));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let metrics = http_get(&format!("127.0.0.1:{port}"), "/metrics").unwrap_or_default();
    let written = sample(&metrics, "streamjob_events_written_total", "").unwrap_or(0.0);
    let commands = sample(&metrics, "streamjob_redis_commands_total", "").unwrap_or(0.0);
    let cpu = cpu_seconds(pid).unwrap_or(0.0);
    let redis_cpu = redis_cpu_seconds(&redis.url()).unwrap_or(f64::NAN);
    print_commandstats(&redis.url());
    let rss_kb = proc_status_kb(pid, "VmHWM:").unwrap_or(0);
    let status = worker.terminate(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "worker stop: {status:?}"
    );
    let result = RunResult {
        events_per_second: events as f64 / elapsed,
        redis_busy: redis_cpu / elapsed,
        redis_cpu_us_per_event: redis_cpu * 1e6 / events as f64,
        commands_per_event: commands / written.max(1.0),
        cpu_us_per_event: cpu * 1e6 / events as f64,
        peak_rss_mb: rss_kb as f64 / 1024.0,
        first_write_ms: first_write.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0),
    };
    eprintln!(
        "run {run}: {:.0} events/s end to end ({elapsed:.2} s), Redis busy {:.0}%, Redis CPU {:.2} µs/event, {:.2} Redis commands/event, {:.2} µs CPU/event, peak RSS {:.1} MB, first write {:.0} ms after start",
        result.events_per_second, result.redis_busy * 100.0, result.redis_cpu_us_per_event, result.commands_per_event, result.cpu_us_per_event, result.peak_rss_mb, result.first_write_ms
    );
    result
}

fn redis_info(url: &str, section: &str) -> Option<String> {
    let mut conn = redis::Client::open(url).ok()?.get_connection().ok()?;
    redis::cmd("INFO").arg(section).query(&mut conn).ok()
}

/// redis-server's own CPU time so far (`INFO cpu`: used_cpu_user + used_cpu_sys), in seconds.
/// Where Redis spent its time, per command, with `BENCH_COMMANDSTATS=1` (for profiling the sink
/// against the replay; not in the table).
fn print_commandstats(url: &str) {
    if std::env::var_os("BENCH_COMMANDSTATS").is_some() {
        eprintln!("{}", redis_info(url, "commandstats").unwrap_or_default());
    }
}

fn redis_cpu_seconds(url: &str) -> Option<f64> {
    let info = redis_info(url, "cpu")?;
    let field = |name: &str| -> Option<f64> {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?
            .trim()
            .parse()
            .ok()
    };
    Some(field("used_cpu_user")? + field("used_cpu_sys")?)
}

fn latency_run(bootstrap: &str, rate: u64, secs: u64) -> (f64, f64, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = RedisServer::start().expect("redis");
    let port = free_port();
    let mut yaml = job_yaml(bootstrap, &redis.url(), port, dir.path(), window_from_env());
    // Start at the end of the preloaded data: only the paced events are measured.
    yaml = yaml.replace(
        "    dlqTopic:",
        "    startingOffsets: latest\n    dlqTopic:",
    );
    let config = write_config(dir.path(), &yaml);
    let mut worker = Worker::start(
        &["standalone", "--config", config.to_str().unwrap()],
        &dir.path().join("worker.log"),
    );
    let fences_ready = Instant::now();
    while fence_offsets(&redis.url(), "", "trace", TOPIC, PARTITIONS)
        .map(|f| f.len())
        .unwrap_or(0)
        == 0
        || http_get(&format!("127.0.0.1:{port}"), "/metrics")
            .map(|m| {
                sample(&m, "streamjob_partitions_owned", "").unwrap_or(0.0) < PARTITIONS as f64
            })
            .unwrap_or(true)
    {
        assert!(
            fences_ready.elapsed() < Duration::from_secs(60),
            "worker not ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    // linger.ms=5 as a typical producer batches; it is part of the measured latency.
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let mut generator = EventGenerator::new(99, TrafficShape::default());
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < Duration::from_secs(secs) {
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            let payload = generator.next_payload_at(Some(now_ms));
            let partition = (sent % PARTITIONS as u64) as i32;
            if producer
                .send(
                    BaseRecord::<(), _>::to(TOPIC)
                        .payload(&payload)
                        .partition(partition),
                )
                .is_ok()
            {
                sent += 1;
            }
        }
        // Serve delivery reports, then sleep: `poll` returns at once while reports keep coming,
        // and a spinning load generator would take a core from the worker and Redis.
        producer.poll(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = producer.flush(Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    let metrics = http_get(&format!("127.0.0.1:{port}"), "/metrics").unwrap_or_default();
    let p50 =
        histogram_quantile(&metrics, "streamjob_produce_to_redis_seconds", 0.5).unwrap_or(f64::NAN);
    let p99 = histogram_quantile(&metrics, "streamjob_produce_to_redis_seconds", 0.99)
        .unwrap_or(f64::NAN);
    print_commandstats(&redis.url());
    let apply_p99 =
        histogram_quantile(&metrics, "streamjob_batch_apply_seconds", 0.99).unwrap_or(f64::NAN);
    let batch_p50 = histogram_quantile(&metrics, "streamjob_batch_events", 0.5).unwrap_or(f64::NAN);
    eprintln!(
        "latency run: batch apply p99 {:.1} ms, batch size p50 {batch_p50:.0} events",
        apply_p99 * 1000.0
    );
    let _ = worker.terminate(Duration::from_secs(30));
    (p50 * 1000.0, p99 * 1000.0, sent)
}

fn main() {
    let args = parse_args();
    eprintln!("worker binary: {}", worker_binary().display());
    if args.latency_only {
        let broker = Broker::start("mock");
        let (p50, p99, sent) =
            latency_run(broker.bootstrap(), args.latency_rate, args.latency_secs);
        eprintln!(
            "latency at {} events/s ({sent} events): p50 {p50:.1} ms, p99 {p99:.1} ms",
            args.latency_rate
        );
        return;
    }
    let broker = Broker::start(&args.broker);
    let bootstrap = broker.bootstrap().to_string();
    eprintln!("broker: {} at {bootstrap}", args.broker);

    let mut generator = EventGenerator::new(
        20_240_101,
        TrafficShape {
            users: 100_000,
            templates: 50,
            max_ids: 3,
            malformed_ppm: 0,
            // Event times of today (the 1M events span ~2 h of event time, ending near now), so
            // the event-time series counts them into their minutes rather than as skewed.
            base_timestamp_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0)
                - args.events as i64 * 7,
            ..TrafficShape::default()
        },
    );
    let payloads: Vec<Vec<u8>> = if args.shape == "lifecycle" {
        // Event times in the last minutes, like the demo shape's.
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
            - args.events as i64;
        streamjob_worker::testkit::lifecycle::payloads_from(args.events, 20_240_101, start)
    } else {
        (0..args.events).map(|_| generator.next_payload()).collect()
    };
    let mode = if args.broker == "tansu" {
        ProduceMode::BatchedPlain
    } else {
        ProduceMode::Batched
    };
    let t = Instant::now();
    let positions =
        kafka::produce(&bootstrap, TOPIC, PARTITIONS, &payloads, mode).expect("preload");
    eprintln!(
        "preloaded {} events in {:.1} s",
        args.events,
        t.elapsed().as_secs_f64()
    );
    kafka::assert_nothing_truncated(&bootstrap, TOPIC, PARTITIONS);
    // The end of each partition from the delivery reports (tansu under-reports high watermarks).
    let mut ends = vec![0i64; PARTITIONS as usize];
    for (partition, offset) in positions {
        let end = &mut ends[partition as usize];
        *end = (*end).max(offset + 1);
    }
    payloads_len_check(&ends, args.events);
    if args.window_cost {
        window_cost(&bootstrap, &ends, &args);
        return;
    }
    if args.e2e_only {
        for i in 0..args.runs {
            e2e_run(&bootstrap, &ends, args.events, i + 1);
            upstream_replay(&payloads);
        }
        return;
    }

    let raw = (0..args.runs)
        .map(|_| raw_consume_rate(&bootstrap, args.events))
        .collect::<Vec<_>>();
    let raw_first_ms = median(raw.iter().map(|r| r.1).collect());
    let raw = median(raw.iter().map(|r| r.0).collect());
    eprintln!("raw consume: {raw:.0} records/s");
    let redis = RedisServer::start().expect("redis");
    let lpush = median(
        (0..args.runs)
            .map(|_| redis_benchmark(redis.port(), &["-t", "lpush"]))
            .collect(),
    );
    let hincrby = median(
        (0..args.runs)
            .map(|_| redis_benchmark(redis.port(), &["hincrby", "bench:h", "60", "1"]))
            .collect(),
    );
    drop(redis);
    eprintln!("redis-benchmark -P 64: LPUSH {lpush:.0}/s, HINCRBY {hincrby:.0}/s");
    // Alternating, so both see the same machine load.
    let mut replays = Vec::new();
    let mut results: Vec<RunResult> = Vec::new();
    for i in 0..args.runs {
        replays.push(upstream_replay(&payloads));
        results.push(e2e_run(&bootstrap, &ends, args.events, i + 1));
    }
    drop(payloads);
    let upstream = median(replays.iter().map(|r| r.events_per_second).collect());
    let upstream_cpu = median(replays.iter().map(|r| r.redis_cpu_us_per_event).collect());
    let upstream_cmds = median(replays.iter().map(|r| r.commands_per_event).collect());
    let speedup = median(
        results
            .iter()
            .zip(&replays)
            .map(|(r, u)| r.events_per_second / u.events_per_second)
            .collect(),
    );
    let cpu_ratio = median(
        results
            .iter()
            .zip(&replays)
            .map(|(r, u)| r.redis_cpu_us_per_event / u.redis_cpu_us_per_event)
            .collect(),
    );
    let redis_cpu = median(results.iter().map(|r| r.redis_cpu_us_per_event).collect());
    let eps = median(results.iter().map(|r| r.events_per_second).collect());
    let cmds = median(results.iter().map(|r| r.commands_per_event).collect());
    let cpu = median(results.iter().map(|r| r.cpu_us_per_event).collect());
    let rss = results.iter().map(|r| r.peak_rss_mb).fold(0.0, f64::max);
    let first_write = median(results.iter().map(|r| r.first_write_ms).collect());
    let redis_busy = median(results.iter().map(|r| r.redis_busy).collect());
    // Latency against a mock broker in its own process: tansu holds fetches and stores the paced
    // producer's one-record batches slowly, which would measure the broker, not the worker.
    drop(broker);
    let latency_broker = Broker::start("mock");
    let (p50, p99, sent) = latency_run(
        latency_broker.bootstrap(),
        args.latency_rate,
        args.latency_secs,
    );

    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| data set | {} events ({} shape), {PARTITIONS} partitions, broker {} |",
        args.events, args.shape, args.broker
    );
    println!(
        "| end to end broker → Redis, exactly-once (median of {}) | {eps:.0} events/s |",
        args.runs
    );
    println!(
        "| each run (events/s) | {} |",
        results
            .iter()
            .map(|r| format!("{:.0}", r.events_per_second))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("| reference: raw consume, plain librdkafka consumer (median) | {raw:.0} records/s |");
    println!("| reference: redis-benchmark -P 64 LPUSH (median) | {lpush:.0} ops/s |");
    println!("| reference: redis-benchmark -P 64 HINCRBY (median) | {hincrby:.0} ops/s |");
    println!("| reference: the same events as upstream's command stream, pipelined, no fences (median) | {upstream:.0} events/s |");
    println!(
        "| streamjob ÷ upstream replay, events/s (median of per-run ratios) | {speedup:.2}× |"
    );
    println!("| Redis CPU per event: streamjob (INFO cpu, whole run incl. start-up, median) | {redis_cpu:.2} µs |");
    println!("| Redis CPU per event: upstream replay (median) | {upstream_cpu:.2} µs |");
    println!("| streamjob ÷ upstream replay, Redis CPU per event (median of per-run ratios) | {cpu_ratio:.2} |");
    println!("| Redis commands per event: streamjob (sink counters, median) | {cmds:.2} |");
    println!("| Redis commands per event: upstream replay | {upstream_cmds:.2} |");
    println!(
        "| Redis command rate end to end (events/s × commands/event) | {:.0} commands/s ({:.0}% of pipelined LPUSH) |",
        eps * cmds,
        eps * cmds * 100.0 / lpush
    );
    println!(
        "| redis-server CPU busy during the run (INFO cpu / wall time, median) | {:.0}% |",
        redis_busy * 100.0
    );
    println!("| worker CPU per event (median) | {cpu:.2} µs |");
    println!("| worker peak RSS (max of runs, VmHWM) | {rss:.1} MB |");
    println!("| first batch in Redis after the process was spawned (median; polled every 2 ms) | {first_write:.0} ms |");
    println!("| reference: plain librdkafka consumer, creation to first record (median) | {raw_first_ms:.0} ms |");
    println!("| produce → Redis latency at {} events/s ({sent} events, mock broker) | p50 {p50:.1} ms, p99 {p99:.1} ms |", args.latency_rate);
}

/// The event-time series' cost: end-to-end runs with `window.enabled` on and off, alternating so
/// both see the same machine load, as a Markdown table.
fn window_cost(bootstrap: &str, ends: &[i64], args: &Args) {
    let mut on = Vec::new();
    let mut off = Vec::new();
    for i in 0..args.runs {
        off.push(e2e_run_with(bootstrap, ends, args.events, i + 1, false));
        on.push(e2e_run_with(bootstrap, ends, args.events, i + 1, true));
    }
    let ratio = median(
        on.iter()
            .zip(&off)
            .map(|(a, b)| a.events_per_second / b.events_per_second)
            .collect(),
    );
    let figures = |runs: &[RunResult]| {
        (
            median(runs.iter().map(|r| r.events_per_second).collect()),
            median(runs.iter().map(|r| r.redis_cpu_us_per_event).collect()),
            median(runs.iter().map(|r| r.commands_per_event).collect()),
            median(runs.iter().map(|r| r.cpu_us_per_event).collect()),
            runs.iter().map(|r| r.peak_rss_mb).fold(0.0, f64::max),
        )
    };
    println!(
        "| window.enabled ({} events, {} shape, median of {}) | events/s | Redis CPU µs/event | Redis commands/event | worker CPU µs/event | peak RSS MB |",
        args.events, args.shape, args.runs
    );
    println!("|---|---|---|---|---|---|");
    for (name, runs) in [("false", &off), ("true", &on)] {
        let (eps, redis, cmds, cpu, rss) = figures(runs);
        println!("| {name} | {eps:.0} | {redis:.2} | {cmds:.2} | {cpu:.2} | {rss:.1} |");
    }
    println!("| on ÷ off, events/s (median of per-pair ratios) | {ratio:.3} | | | | |");
}
