//! The worker binary's process contract: SIGTERM flushes the in-flight batch and exits 0, and
//! gives up on it after `batch.stopTimeout` when Redis is down (losing nothing); an
//! invalid config is one clear error naming the field and exit code 2; `/metrics` and `/healthz`
//! answer while it runs; the hidden `mock-kafka` subcommand hosts a broker another process can use.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use streamjob_tests::{free_port, http_get, worker_binary, write_config, Worker};
use streamjob_worker::demo::{EventGenerator, TrafficShape};
use streamjob_worker::metrics::sample;
use streamjob_worker::testkit::clock::midday_time_zone;
use streamjob_worker::testkit::kafka::{self, ProduceMode};
use streamjob_worker::testkit::redis::{RedisOptions, RedisServer};
use streamjob_worker::testkit::trace_state::{fence_offsets, Expected, TraceState};

fn job_yaml(
    broker: &str,
    redis_url: &str,
    metrics_port: u16,
    linger: &str,
    stop_timeout: &str,
    state_dir: &std::path::Path,
) -> String {
    format!(
        r#"job:
  name: trace
source:
  kafka:
    brokers: "{broker}"
    topic: austinTraceLog
    properties:
      fetch.wait.max.ms: "10"
sink:
  redis:
    url: "{redis_url}"
    timeZone: "{zone}"
batch:
  maxEvents: 1000000
  linger: {linger}
  stopTimeout: {stop_timeout}
metrics:
  bind: "127.0.0.1:{metrics_port}"
jobmanager:
  bind: "127.0.0.1:{jm}"
  url: "http://127.0.0.1:{jm}"
checkpoint:
  dir: "{state}"
"#,
        jm = free_port(),
        state = state_dir.display(),
        zone = midday_time_zone(),
    )
}

/// A mock broker in its own process (`streamjob-worker mock-kafka`), killed on drop.
struct MockKafkaProcess {
    child: std::process::Child,
    bootstrap: String,
}

impl MockKafkaProcess {
    fn start() -> Self {
        let mut child = Command::new(worker_binary())
            .args([
                "mock-kafka",
                "--topic",
                "austinTraceLog",
                "--topic",
                "austinTraceLog-dlq",
            ])
            .args(["--partitions", "2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mock-kafka starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("bootstrap line");
        let bootstrap = line
            .trim()
            .strip_prefix("BOOTSTRAP ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Self { child, bootstrap }
    }
}

impl Drop for MockKafkaProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A standalone worker process (JSON logs) on a one-hour linger, so that nothing reaches Redis
/// before it is stopped, that has read every one of `payloads` from a broker process.
struct ReadButUnapplied {
    // Dropped first: the worker is killed before its broker and Redis go.
    worker: Worker,
    log: PathBuf,
    metrics_addr: String,
    payloads: Vec<Vec<u8>>,
    redis: RedisServer,
    _broker: MockKafkaProcess,
    _dir: tempfile::TempDir,
}

impl ReadButUnapplied {
    fn start(seed: u64, events: usize, redis: RedisOptions, stop_timeout: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let redis = RedisServer::start_with(redis).expect("redis-server");
        let broker = MockKafkaProcess::start();
        let mut generator = EventGenerator::new(seed, TrafficShape::default());
        let payloads: Vec<Vec<u8>> = (0..events).map(|_| generator.next_payload()).collect();
        kafka::produce(
            &broker.bootstrap,
            "austinTraceLog",
            2,
            &payloads,
            ProduceMode::Batched,
        )
        .expect("produced");
        let port = free_port();
        let metrics_addr = format!("127.0.0.1:{port}");
        let config = write_config(
            dir.path(),
            &job_yaml(
                &broker.bootstrap,
                &redis.url(),
                port,
                "1h",
                stop_timeout,
                &dir.path().join("state"),
            ),
        );
        let log = dir.path().join("worker.log");
        let worker = Worker::start(
            &[
                "standalone",
                "--config",
                config.to_str().unwrap(),
                "--log-format",
                "json",
            ],
            &log,
        );
        wait_for_events_in(&metrics_addr, events as f64, &worker);
        Self {
            worker,
            log,
            metrics_addr,
            payloads,
            redis,
            _broker: broker,
            _dir: dir,
        }
    }

    fn fences(&self) -> Vec<Option<i64>> {
        fence_offsets(&self.redis.url(), "", "trace", "austinTraceLog", 2).unwrap()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM; the worker must exit 0 within `timeout`.
    fn terminate_cleanly(&mut self, timeout: Duration) {
        let status = self.worker.terminate(timeout);
        assert!(
            status.is_some_and(|s| s.code() == Some(0)),
            "{status:?}\n{}",
            self.log_text()
        );
    }

    /// Every payload applied exactly once: fences at the partitions' ends, Redis state as computed.
    fn assert_all_applied_once(&self) {
        assert_eq!(self.fences(), vec![Some(500), Some(500)]);
        let expected = Expected::from_payloads("", self.payloads.iter().map(Vec::as_slice));
        let diff = expected
            .state
            .diff(&TraceState::read(&self.redis.url()).unwrap(), 5);
        assert!(diff.is_empty(), "{}", diff.join("\n"));
    }
}

/// Waits until the worker's `/metrics` shows `events` consumed records.
fn wait_for_events_in(metrics_addr: &str, events: f64, worker: &Worker) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = http_get(metrics_addr, "/metrics").unwrap_or_default();
        if sample(&text, "streamjob_events_in_total", "") == Some(events) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "records not consumed:\n{}",
            worker.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigterm_flushes_the_in_flight_batch_and_exits_zero() {
    let mut run = ReadButUnapplied::start(9, 1_000, RedisOptions::default(), "20s");
    assert_eq!(
        http_get(&run.metrics_addr, "/healthz").as_deref(),
        Some("ok\n")
    );
    assert_eq!(
        run.fences(),
        // each claim writes the resume offset (0 here); no batch has moved it yet
        vec![Some(0), Some(0)],
        "nothing applied before SIGTERM"
    );

    run.terminate_cleanly(Duration::from_secs(30));
    run.assert_all_applied_once();
    // JSON logs carry the job and partition of their span.
    let log = run.log_text();
    assert!(
        log.lines().any(|l| l.starts_with('{')
            && l.contains("\"partition\":1")
            && l.contains("\"job\":\"trace\"")),
        "{log}"
    );
}

#[test]
fn sigterm_while_redis_is_down_stops_after_the_stop_timeout_and_loses_nothing() {
    let persistent = RedisOptions {
        persistence: true,
        ..RedisOptions::default()
    };
    let mut run = ReadButUnapplied::start(11, 1_000, persistent, "2s");

    run.redis.stop();
    // Without the stop timeout the worker would retry its batch for ever (and be killed here).
    run.terminate_cleanly(Duration::from_secs(60));
    let text = run.log_text();
    assert!(
        text.contains("stopping without the in-flight batch"),
        "the give-up is logged:\n{text}"
    );

    // Nothing was applied; a new worker re-reads everything from the fence, exactly once.
    run.redis.restart().expect("redis restarts");
    assert_eq!(
        run.fences(),
        // the claims' resume offsets (0) only: no batch moved them
        vec![Some(0), Some(0)],
        "nothing applied while Redis was down"
    );
    run.worker.restart();
    wait_for_events_in(&run.metrics_addr, 1_000.0, &run.worker);
    run.terminate_cleanly(Duration::from_secs(30));
    run.assert_all_applied_once();
}

#[test]
fn a_second_sigterm_exits_at_once_without_waiting_for_the_in_flight_batch() {
    let mut run = ReadButUnapplied::start(12, 100, RedisOptions::default(), "1h");
    run.redis.stop();
    let pid = run.worker.pid().expect("running").to_string();
    let signal = || {
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs")
    };
    signal();
    // The first stop is now retrying the batch against the stopped Redis for up to an hour.
    std::thread::sleep(Duration::from_millis(500));
    assert!(run.worker.is_running(), "{}", run.log_text());
    signal();
    let status = run.worker.wait(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.code() == Some(1)),
        "{status:?}\n{}",
        run.log_text()
    );
    assert!(run.log_text().contains("second stop signal"));
}

#[test]
fn an_invalid_config_is_one_error_naming_the_field_and_exit_code_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), "batch:\n  maxEvents: 0\n");
    let output = Command::new(worker_binary())
        .args(["standalone", "--config", config.to_str().unwrap()])
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("batch.maxEvents"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    let config = write_config(dir.path(), "sink:\n  redis:\n    urll: x\n");
    let output = Command::new(worker_binary())
        .args(["standalone", "--config", config.to_str().unwrap()])
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("urll"));
}
