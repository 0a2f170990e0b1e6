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

/// A tansu broker process with in-memory storage, killed on drop.
#[derive(Debug)]
pub struct Tansu {
    child: Child,
    bootstrap: String,
    binary: PathBuf,
}

impl Tansu {
    pub fn start(binary: &Path) -> io::Result<Self> {
        Self::start_advertising(binary, None)
    }

    /// Like [`Tansu::start`], but advertising `127.0.0.1:advertised` in metadata (e.g. a TLS
    /// proxy's port, so that clients only ever talk to the proxy).
    pub fn start_advertising(binary: &Path, advertised: Option<u16>) -> io::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised_url = format!("tcp://127.0.0.1:{}", advertised.unwrap_or(port));
        let child = Command::new(binary)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised_url,
            ])
            .args(["--storage-engine", "memory://tansu/", "--silent"])
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

    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    pub fn create_topic(&self, topic: &str, partitions: i32) -> io::Result<()> {
        let status = Command::new(&self.binary)
            .args(["topic", "create", topic, "--broker"])
            .arg(format!("tcp://{}", self.bootstrap))
            .args(["--partitions", &partitions.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "tansu topic create {topic} failed: {status}"
            )))
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
