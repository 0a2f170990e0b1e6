//! A distributed job in real processes for the jobmanager tests and benchmark: the
//! `streamjob-worker` binary as one jobmanager and N taskmanagers, a real redis-server, a real
//! Kafka-protocol broker (librdkafka's mock cluster on TCP ports, hosted by the test process).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper::Method;
use streamjob_worker::api::{JobOverview, OperationInfo, OperationStatus, TriggerResponse};
use streamjob_worker::demo::{EventGenerator, TrafficShape};
use streamjob_worker::taskmanager::JobManagerClient;
use streamjob_worker::testkit::kafka::{self, EmbeddedKafka, ProduceMode};
use streamjob_worker::testkit::redis::RedisServer;
use streamjob_worker::testkit::trace_state::{fence_offsets, Expected, SeriesState, TraceState};

pub const TOPIC: &str = "trace-jm";
pub const DLQ: &str = "trace-jm-dlq";
pub const JOB: &str = "jm";
const T: Duration = Duration::from_secs(5);

/// The `streamjob-worker` binary: `STREAMJOB_WORKER_BIN` (benchmarks), else the one Cargo built
/// for these tests.
pub fn worker_binary() -> PathBuf {
    if let Ok(path) = std::env::var("STREAMJOB_WORKER_BIN") {
        return path.into();
    }
    match option_env!("CARGO_BIN_EXE_streamjob-worker") {
        Some(path) => path.into(),
        None => panic!("set STREAMJOB_WORKER_BIN to the streamjob-worker binary"),
    }
}

pub fn data_set(seed: u64, n: usize) -> Vec<Vec<u8>> {
    let now_ms = streamjob_worker::sink::redis::system_time_ms(std::time::SystemTime::now());
    let mut generator = EventGenerator::new(
        seed,
        TrafficShape {
            users: 5_000,
            messages: 3_000,
            malformed_ppm: 200,
            // Event times of the last minutes (7 ms apart), out of order, some late and a few
            // absurd: the event-time series gets windows, late and skewed counts to check.
            base_timestamp_ms: now_ms - n as i64 * 7,
            out_of_order_ms: 3_000,
            late_ppm: 5_000,
            skewed_ppm: 200,
            ..TrafficShape::default()
        },
    );
    (0..n).map(|_| generator.next_payload()).collect()
}

pub struct Cluster {
    pub redis: RedisServer,
    pub kafka: EmbeddedKafka,
    pub partitions: i32,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub port: u16,
    pub client: JobManagerClient,
    jobmanager: Option<Child>,
    taskmanagers: BTreeMap<String, Child>,
    log_seq: usize,
}

impl Cluster {
    /// `checkpoint_interval`: e.g. `"1s"` or `"0s"` (off).
    pub fn start(partitions: i32, checkpoint_interval: &str) -> Self {
        Self::start_with(partitions, checkpoint_interval, 500)
    }

    pub fn start_with(partitions: i32, checkpoint_interval: &str, max_events: usize) -> Self {
        let redis = RedisServer::start().expect("redis-server starts");
        let kafka = kafka::start_mock(TOPIC, partitions, DLQ);
        let dir = tempfile::Builder::new()
            .prefix("streamjob-jm-")
            .tempdir()
            .expect("tempdir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let config_path = dir.path().join("job.yaml");
        let yaml = format!(
            r#"job:
  name: {JOB}
source:
  kafka:
    brokers: "{brokers}"
    topic: {TOPIC}
    dlqTopic: {DLQ}
    properties:
      fetch.wait.max.ms: "10"
sink:
  redis:
    url: "{redis}"
    timeZone: "{zone}"
batch:
  maxEvents: {max_events}
  linger: 20ms
checkpoint:
  interval: {checkpoint_interval}
  dir: "{state}"
  retain: 3
jobmanager:
  bind: "127.0.0.1:{port}"
  url: "http://127.0.0.1:{port}"
  heartbeatInterval: 250ms
  heartbeatTimeout: 2s
metrics:
  bind: "127.0.0.1:0"
logging:
  level: "info"
"#,
            brokers = kafka.bootstrap_servers(),
            redis = redis.url(),
            state = dir.path().join("state").display(),
            zone = streamjob_worker::testkit::clock::midday_time_zone(),
        );
        std::fs::write(&config_path, yaml).expect("config written");
        let client = JobManagerClient::new(&format!("http://127.0.0.1:{port}"));
        Self {
            redis,
            kafka,
            partitions,
            dir,
            config_path,
            port,
            client,
            jobmanager: None,
            taskmanagers: BTreeMap::new(),
            log_seq: 0,
        }
    }

    fn spawn(&mut self, name: &str, args: &[&str], id: Option<&str>) -> Child {
        let config = self.config_path.clone();
        self.spawn_with_config(name, args, id, &config)
    }

    fn spawn_with_config(
        &mut self,
        name: &str,
        args: &[&str],
        id: Option<&str>,
        config: &Path,
    ) -> Child {
        self.log_seq += 1;
        let log = self
            .dir
            .path()
            .join(format!("{:02}-{name}.log", self.log_seq));
        let mut command = Command::new(worker_binary());
        command
            .args(args)
            .arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log file"));
        if let Some(id) = id {
            command.env("STREAMJOB_TASKMANAGER_ID", id);
        }
        command.spawn().expect("worker binary starts")
    }

    pub fn start_jobmanager(&mut self, extra: &[&str]) {
        let mut args = vec!["jobmanager"];
        args.extend_from_slice(extra);
        let child = self.spawn("jobmanager", &args, None);
        self.jobmanager = Some(child);
    }

    pub fn start_taskmanager(&mut self, id: &str) {
        let child = self.spawn(id, &["taskmanager"], Some(id));
        self.taskmanagers.insert(id.to_string(), child);
    }

    fn signal(pid: u32, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{signal} {pid}");
    }

    fn wait_exit(child: &mut Child, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("process {} did not exit within {timeout:?}", child.id());
    }

    /// SIGTERM (graceful leave) and wait for the exit.
    /// A taskmanager that reaches the jobmanager at `jobmanager_url` (e.g. through a proxy).
    pub fn start_taskmanager_via(&mut self, id: &str, jobmanager_url: &str) {
        let yaml = std::fs::read_to_string(&self.config_path).expect("config");
        let direct = format!("url: \"http://127.0.0.1:{}\"", self.port);
        assert!(yaml.contains(&direct));
        let path = self.dir.path().join(format!("job-{id}.yaml"));
        std::fs::write(
            &path,
            yaml.replace(&direct, &format!("url: \"{jobmanager_url}\"")),
        )
        .expect("config written");
        let child = self.spawn_with_config(id, &["taskmanager"], Some(id), &path);
        self.taskmanagers.insert(id.to_string(), child);
    }

    /// A taskmanager with its own copy of the config, where each `(from, to)` of `edits`
    /// replaces text (e.g. another batch size: a new pod template), on a fixed metrics port.
    /// Returns the base URL of its `/readyz` and `/metrics`.
    pub fn start_taskmanager_with(&mut self, id: &str, edits: &[(&str, &str)]) -> String {
        let mut yaml = std::fs::read_to_string(&self.config_path).expect("config");
        for (from, to) in edits {
            assert!(yaml.contains(from), "{from:?} not in the config");
            yaml = yaml.replace(from, to);
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let any_port = "bind: \"127.0.0.1:0\"";
        assert!(yaml.contains(any_port));
        yaml = yaml.replace(any_port, &format!("bind: \"127.0.0.1:{port}\""));
        let path = self.dir.path().join(format!("job-{id}.yaml"));
        std::fs::write(&path, yaml).expect("config written");
        let child = self.spawn_with_config(id, &["taskmanager"], Some(id), &path);
        self.taskmanagers.insert(id.to_string(), child);
        format!("http://127.0.0.1:{port}")
    }

    /// A taskmanager's `/readyz`: status and body (`None` while it does not serve yet).
    pub async fn readyz(&self, metrics_url: &str) -> Option<(u16, String)> {
        let raw = JobManagerClient::new(metrics_url)
            .raw(Method::GET, "/readyz", None, T)
            .await
            .ok()?;
        Some((raw.status, String::from_utf8_lossy(&raw.body).into_owned()))
    }

    /// A taskmanager's `/metrics` text.
    pub async fn metrics_text(&self, metrics_url: &str) -> Option<String> {
        let raw = JobManagerClient::new(metrics_url)
            .raw(Method::GET, "/metrics", None, T)
            .await
            .ok()?;
        Some(String::from_utf8_lossy(&raw.body).into_owned())
    }

    /// Waits until a taskmanager's `/readyz` answers 200.
    pub async fn wait_ready(&self, metrics_url: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let answer = self.readyz(metrics_url).await;
            if answer.as_ref().is_some_and(|(status, _)| *status == 200) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{metrics_url} not ready within {timeout:?}: {answer:?}\nlogs:\n{}",
                    self.log_tails()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    pub fn is_running(&mut self, id: &str) -> bool {
        self.taskmanagers
            .get_mut(id)
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn stop_taskmanager(&mut self, id: &str) {
        let mut child = self.taskmanagers.remove(id).expect("running taskmanager");
        Self::signal(child.id(), "TERM");
        Self::wait_exit(&mut child, Duration::from_secs(20));
    }

    pub fn kill_taskmanager(&mut self, id: &str) {
        let mut child = self.taskmanagers.remove(id).expect("running taskmanager");
        Self::signal(child.id(), "KILL");
        let _ = child.wait();
    }

    pub fn kill_jobmanager(&mut self) {
        let mut child = self.jobmanager.take().expect("running jobmanager");
        Self::signal(child.id(), "KILL");
        let _ = child.wait();
    }

    pub fn stop_all(&mut self) {
        let ids: Vec<String> = self.taskmanagers.keys().cloned().collect();
        for id in ids {
            self.stop_taskmanager(&id);
        }
        if let Some(mut child) = self.jobmanager.take() {
            Self::signal(child.id(), "TERM");
            Self::wait_exit(&mut child, Duration::from_secs(10));
        }
    }

    /// Produces on a background thread (the caller may rescale meanwhile).
    pub fn produce_in_background(&self, payloads: Vec<Vec<u8>>) -> std::thread::JoinHandle<()> {
        let bootstrap = self.kafka.bootstrap_servers().to_string();
        let partitions = self.partitions;
        std::thread::spawn(move || {
            kafka::produce(
                &bootstrap,
                TOPIC,
                partitions,
                &payloads,
                ProduceMode::Batched,
            )
            .expect("produced");
        })
    }

    /// Produces on a background thread at about `per_second` events/s (chunks every 100 ms),
    /// so the job is under load while the caller changes it.
    pub fn produce_paced(
        &self,
        payloads: Vec<Vec<u8>>,
        per_second: usize,
    ) -> std::thread::JoinHandle<()> {
        let bootstrap = self.kafka.bootstrap_servers().to_string();
        let partitions = self.partitions;
        std::thread::spawn(move || {
            let chunk = (per_second / 10).max(1);
            let start = Instant::now();
            for (i, part) in payloads.chunks(chunk).enumerate() {
                let due = start + Duration::from_millis(100 * i as u64);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                kafka::produce(&bootstrap, TOPIC, partitions, part, ProduceMode::Batched)
                    .expect("produced");
            }
        })
    }

    pub fn fences(&self) -> Vec<Option<i64>> {
        fence_offsets(&self.redis.url(), "", JOB, TOPIC, self.partitions).expect("fences readable")
    }

    pub fn applied(&self) -> i64 {
        self.fences().iter().map(|f| f.unwrap_or(0)).sum()
    }

    /// Waits until the fences account for `total` records (every record produced so far).
    pub fn wait_applied(&self, total: i64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let applied = self.applied();
            if applied >= total {
                assert_eq!(
                    applied,
                    total,
                    "fences past the data set: {:?}",
                    self.fences()
                );
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "only {applied} of {total} applied after {timeout:?}; logs:\n{}",
                    self.log_tails()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything the processes whose log name contains `name` wrote.
    pub fn log_of(&self, name: &str) -> String {
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        logs.retain(|p| {
            p.extension().is_some_and(|x| x == "log") && p.to_string_lossy().contains(name)
        });
        logs.sort();
        logs.iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect()
    }

    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "log"))
                    .collect()
            })
            .unwrap_or_default();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out.push_str(&format!("--- {}\n", log.display()));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    pub fn assert_exact(&self, payloads: &[Vec<u8>]) {
        let expected = Expected::from_payloads("", payloads.iter().map(Vec::as_slice));
        let actual = TraceState::read(&self.redis.url()).expect("redis readable");
        let diff = expected.state.diff(&actual, 10);
        assert!(
            diff.is_empty(),
            "redis state differs from the data set:\n{}",
            diff.join("\n")
        );
        assert_eq!(actual.list_values(), expected.state.list_values());
        // The event-time series counts every event once: in its minute, late or skewed.
        let series = SeriesState::read(&self.redis.url(), "", JOB).expect("series readable");
        let diff = series.diff(&expected, "", false, 10);
        assert!(
            diff.is_empty(),
            "the series differs from the data set:\n{}",
            diff.join("\n")
        );
        let (late, skewed) = series.late_and_skewed();
        assert!(skewed > 0, "late {late}, skewed {skewed}");
    }

    pub async fn overview(&self) -> Option<JobOverview> {
        self.client
            .call::<(), JobOverview>(Method::GET, &format!("/jobs/{JOB}"), None, T)
            .await
            .ok()
    }

    /// Polls the overview until `f` holds.
    pub async fn wait_overview(
        &self,
        what: &str,
        timeout: Duration,
        f: impl Fn(&JobOverview) -> bool,
    ) -> JobOverview {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(o) = self.overview().await {
                if f(&o) {
                    return o;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "{what}: not reached in {timeout:?}; overview {:#?}\nlogs:\n{}",
                    self.overview().await,
                    self.log_tails()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until exactly `ids` are registered and share every partition evenly.
    pub async fn wait_balanced(&self, ids: &[&str], timeout: Duration) -> JobOverview {
        let partitions = self.partitions as usize;
        self.wait_overview(&format!("balanced over {ids:?}"), timeout, |o| {
            let mut registered: Vec<&str> = o.taskmanagers.iter().map(|t| t.id.as_str()).collect();
            registered.sort_unstable();
            let mut want = ids.to_vec();
            want.sort_unstable();
            let loads: Vec<usize> = o.taskmanagers.iter().map(|t| t.partitions.len()).collect();
            registered == want
                && o.partitions
                    .iter()
                    .all(|p| p.state == streamjob_worker::api::PartitionState::Running)
                && loads.iter().sum::<usize>() == partitions
                && loads.iter().max().copied().unwrap_or(0)
                    - loads.iter().min().copied().unwrap_or(0)
                    <= 1
        })
        .await
    }

    /// POSTs a trigger and polls it to the end.
    pub async fn trigger(&self, path: &str, body: &str) -> OperationInfo {
        let raw = self
            .client
            .raw(Method::POST, path, Some(body.as_bytes().to_vec()), T)
            .await
            .expect("trigger answered");
        assert_eq!(raw.status, 202, "{}", String::from_utf8_lossy(&raw.body));
        let accepted: TriggerResponse = serde_json::from_slice(&raw.body).expect("trigger id");
        let poll = format!("/jobs/{JOB}/savepoints/{}", accepted.request_id);
        for _ in 0..1200 {
            let info: OperationInfo = self
                .client
                .call::<(), _>(Method::GET, &poll, None, T)
                .await
                .expect("poll");
            if info.status != OperationStatus::InProgress {
                return info;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("operation {} never finished", accepted.request_id);
    }

    pub fn state_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self
            .taskmanagers
            .values_mut()
            .chain(self.jobmanager.as_mut())
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A TCP proxy that can cut every connection through it (a network partition between one
/// taskmanager and the jobmanager, while both still reach Redis and the broker).
pub struct Proxy {
    pub port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream_port: u16) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> =
            Default::default();
        let (cut2, conns2) = (cut.clone(), connections.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if cut2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns2.lock().expect("connections").push(task);
            }
        });
        Self {
            port,
            cut,
            connections,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for task in self.connections.lock().expect("connections").drain(..) {
            task.abort();
        }
    }

    pub fn heal(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
