//! Real Kafka-protocol brokers for tests and benchmarks: librdkafka's mock cluster in-process
//! ([`crate::embedded_kafka::EmbeddedKafka`]), or a tansu process; plus a deterministic producer and
//! a read-everything consumer.
//!
//! Synchronous (futures are driven with `futures::executor::block_on`), so it works from sync
//! tests, async tests (call from `spawn_blocking` or accept the blocked worker thread) and benches.

use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

pub use crate::embedded_kafka::EmbeddedKafka;

/// A mock cluster with `topic` (`partitions` partitions) and its DLQ topic `dlq` (1 partition).
pub fn start_mock(topic: &str, partitions: i32, dlq: &str) -> EmbeddedKafka {
    EmbeddedKafka::start(1, &[(topic, partitions), (dlq, 1)]).expect("mock cluster starts")
}

/// How to produce a data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProduceMode {
    /// librdkafka's normal batching (mock cluster).
    Batched,
    /// Batched, uncompressed (tansu: fast fetches, but it under-reports the high watermark of
    /// multi-record requests, so take the ends from the delivery reports).
    BatchedPlain,
    /// One record per produce request (tansu under-reports watermarks for multi-record requests).
    OnePerRequest,
}

/// Produces `payloads` in order, record `i` to partition `i % partitions`, and waits for every
/// delivery. Returns `(partition, offset)` per record.
pub fn produce(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    payloads: &[Vec<u8>],
    mode: ProduceMode,
) -> Result<Vec<(i32, i64)>, KafkaError> {
    produce_with(bootstrap, &[], topic, partitions, payloads, mode)
}

/// [`produce`] with extra librdkafka properties (e.g. `security.protocol`, `ssl.ca.location`).
pub fn produce_with(
    bootstrap: &str,
    properties: &[(&str, &str)],
    topic: &str,
    partitions: i32,
    payloads: &[Vec<u8>],
    mode: ProduceMode,
) -> Result<Vec<(i32, i64)>, KafkaError> {
    let mut cfg = ClientConfig::new();
    for (key, value) in properties {
        cfg.set(*key, *value);
    }
    cfg.set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "false")
        .set("max.in.flight.requests.per.connection", "1")
        .set("queue.buffering.max.messages", "2000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("message.timeout.ms", "60000");
    match mode {
        // Compressed batches: the mock cluster keeps at most 5 MB of record batches per partition
        // (older ones are deleted), so compression lets it hold a few hundred thousand events.
        ProduceMode::Batched => cfg
            .set("linger.ms", "20")
            .set("batch.size", "1000000")
            .set("compression.type", "zstd"),
        ProduceMode::BatchedPlain => cfg.set("linger.ms", "20").set("batch.size", "1000000"),
        ProduceMode::OnePerRequest => cfg.set("linger.ms", "0").set("batch.num.messages", "1"),
    };
    let producer: FutureProducer = cfg.create()?;
    let mut positions = Vec::with_capacity(payloads.len());
    const CHUNK: usize = 20_000;
    for (chunk_index, chunk) in payloads.chunks(CHUNK).enumerate() {
        let mut futures = Vec::with_capacity(chunk.len());
        for (i, payload) in chunk.iter().enumerate() {
            let n = chunk_index * CHUNK + i;
            let partition = (n % partitions.max(1) as usize) as i32;
            let mut record: FutureRecord<'_, (), _> = FutureRecord::to(topic)
                .payload(payload)
                .partition(partition);
            let future = loop {
                match producer.send_result(record) {
                    Ok(f) => break f,
                    Err((
                        KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                        back,
                    )) => {
                        record = back;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err((err, _)) => return Err(err),
                }
            };
            futures.push(future);
        }
        for result in futures::executor::block_on(futures::future::join_all(futures)) {
            match result {
                Ok(Ok(delivery)) => positions.push((delivery.partition, delivery.offset)),
                Ok(Err((err, _))) => return Err(err),
                Err(_) => return Err(KafkaError::Canceled),
            }
        }
    }
    Ok(positions)
}

/// A record read back (e.g. from the DLQ).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl ConsumedRecord {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    pub fn key_str(&self) -> Option<&str> {
        self.key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
    }
}

/// Fails when any partition of `topic` no longer starts at offset 0: the broker dropped records
/// (the mock cluster keeps at most 5 MB per partition), so a comparison with the data set would
/// be meaningless.
pub fn assert_nothing_truncated(bootstrap: &str, topic: &str, partitions: i32) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "streamjob-testkit")
        .create()
        .expect("consumer");
    for p in 0..partitions {
        let (low, high) = fetch_watermarks_patiently(&consumer, topic, p)
            .unwrap_or_else(|err| panic!("watermarks of {topic}[{p}]: {err}"));
        assert_eq!(
            low, 0,
            "the broker dropped records of {topic}[{p}] (log now {low}..{high}): data set too large for it"
        );
    }
}

/// The high watermark of each of `partitions` of `topic`.
pub fn high_watermarks(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
) -> Result<Vec<i64>, KafkaError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "streamjob-testkit")
        .create()?;
    (0..partitions)
        .map(|p| fetch_watermarks_patiently(&consumer, topic, p).map(|(_, hi)| hi))
        .collect()
}

/// `fetch_watermarks`, retried for up to a minute: tests ask right after injected request errors
/// or a broker outage, when one metadata request may still time out.
fn fetch_watermarks_patiently(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
) -> Result<(i64, i64), KafkaError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
            Err(err) if std::time::Instant::now() < deadline => {
                eprintln!("watermarks of {topic}[{partition}]: {err}; retrying");
                std::thread::sleep(Duration::from_millis(500));
            }
            result => return result,
        }
    }
}

/// Reads every record of `topic` present now (up to the current high watermarks).
pub fn read_all(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
) -> Result<Vec<ConsumedRecord>, KafkaError> {
    let ends = high_watermarks(bootstrap, topic, partitions)?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "streamjob-testkit-reader")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut records = Vec::new();
    let mut next = vec![0i64; partitions as usize];
    let deadline = Instant::now() + Duration::from_secs(60);
    while next.iter().zip(&ends).any(|(n, e)| n < e) {
        if Instant::now() > deadline {
            return Err(KafkaError::Canceled);
        }
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message?;
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        next[message.partition() as usize] = message.offset() + 1;
        records.push(ConsumedRecord {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            headers,
        });
    }
    Ok(records)
}

/// Where the workspace's tansu binary lives (`scripts/setup.sh --test` installs it), or
/// `$STREAMJOB_TANSU`.
pub fn tansu_binary() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("STREAMJOB_TANSU") {
        return Some(PathBuf::from(path));
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.local/bin/tansu");
    path.exists().then_some(path)
}

/// The tansu built from crates.io with SQLite storage (`scripts/setup.sh --test` builds it), or
/// `$STREAMJOB_TANSU_SQLITE`. The wheel's tansu has object-store storage only, whose 0.6 code
/// keeps no SCRAM credentials (every SCRAM login is `unknown-user`); this one stores them, so it
/// serves SASL/SCRAM.
pub fn tansu_sqlite_binary() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("STREAMJOB_TANSU_SQLITE") {
        return Some(PathBuf::from(path));
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.local/bin/tansu-sqlite");
    path.exists().then_some(path)
}

/// How to start a tansu broker.
#[derive(Debug, Clone, Default)]
pub struct TansuOptions {
    /// Advertise `127.0.0.1:PORT` in metadata instead of the listening port (e.g. a TLS proxy's,
    /// so that clients only ever talk to the proxy).
    pub advertised: Option<u16>,
    /// `--storage-engine`; `None` is `memory://tansu/`. A `sqlite://FILE` path is relative to
    /// `dir`.
    pub storage: Option<String>,
    /// The broker's working directory.
    pub dir: Option<PathBuf>,
    /// `--authentication`: clients must log in with SASL before anything else.
    pub authentication: bool,
}

/// A tansu broker process, killed on drop.
#[derive(Debug)]
pub struct Tansu {
    child: Child,
    bootstrap: String,
    binary: PathBuf,
}

impl Tansu {
    pub fn start(binary: &Path) -> io::Result<Self> {
        Self::start_with(binary, TansuOptions::default())
    }

    /// Like [`Tansu::start`], but advertising `127.0.0.1:advertised` in metadata.
    pub fn start_advertising(binary: &Path, advertised: Option<u16>) -> io::Result<Self> {
        Self::start_with(
            binary,
            TansuOptions {
                advertised,
                ..TansuOptions::default()
            },
        )
    }

    pub fn start_with(binary: &Path, options: TansuOptions) -> io::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised_url = format!("tcp://127.0.0.1:{}", options.advertised.unwrap_or(port));
        let storage = options.storage.as_deref().unwrap_or("memory://tansu/");
        let mut command = Command::new(binary);
        command
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised_url,
            ])
            .args(["--storage-engine", storage, "--silent"]);
        if options.authentication {
            command.arg("--authentication");
        }
        if let Some(dir) = &options.dir {
            command.current_dir(dir);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(io::Error::other("tansu did not start listening"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self {
            child,
            bootstrap: format!("127.0.0.1:{port}"),
            binary: binary.to_path_buf(),
        })
    }

    /// Stores SCRAM credentials for `user` (`tansu user create`; `mechanism` is `scram256` or
    /// `scram512`). Only a broker without `--authentication` accepts it from this tool, which
    /// cannot log in itself: create users, stop, and restart on the same storage with it.
    pub fn create_user(&self, user: &str, password: &str, mechanism: &str) -> io::Result<()> {
        self.tool(&[
            "user",
            "create",
            user,
            password,
            "--mechanism",
            mechanism,
            "--broker",
            &format!("tcp://{}", self.bootstrap),
        ])
    }

    fn tool(&self, args: &[&str]) -> io::Result<()> {
        let output = Command::new(&self.binary)
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        if output.status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "tansu {}: {}: {}",
                args[..2].join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )))
        }
    }

    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// The port it listens on (e.g. for a TLS proxy in front of it).
    pub fn port(&self) -> u16 {
        self.bootstrap
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("tansu's bootstrap address ends in its port")
    }

    pub fn create_topic(&self, topic: &str, partitions: i32) -> io::Result<()> {
        self.tool(&[
            "topic",
            "create",
            topic,
            "--broker",
            &format!("tcp://{}", self.bootstrap),
            "--partitions",
            &partitions.to_string(),
        ])
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
