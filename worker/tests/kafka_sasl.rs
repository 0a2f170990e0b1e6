//! Kafka over SASL_SSL with real servers: a tansu 0.6 broker with SQLite storage and
//! `--authentication` (SASL/SCRAM against the credentials it stores), behind a TLS listener
//! (stunnel4, i.e. OpenSSL, with a test CA made by openssl) that it advertises, so every client
//! connection is TLS and then SCRAM. The pipeline consumes over SASL_SSL with SCRAM-SHA-512 and
//! applies every event exactly once; SCRAM-SHA-256 logs in too; a wrong password gets no data,
//! and the worker logs the refusal naming `source.kafka.sasl`.
//!
//! SASL/PLAIN is not covered: tansu 0.6 is built without rsasl's PLAIN mechanism (its handshake
//! answers `NoSharedMechanism`), and no other Kafka-protocol broker with SASL installs here. See
//! README "TESTING notes".

use std::io;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use streamjob_worker::config::{JobConfig, SaslConfig};
use streamjob_worker::metrics::Metrics;
use streamjob_worker::pipeline::Pipeline;
use streamjob_worker::testkit::delivery;
use streamjob_worker::testkit::kafka::{self, Tansu, TansuOptions};
use streamjob_worker::testkit::redis::RedisServer;
use streamjob_worker::testkit::tls::{Stunnel, TestPki};

const TOPIC: &str = "trace-sasl";
const DLQ: &str = "trace-sasl-dlq";
const JOB: &str = "sasl";
const PARTITIONS: i32 = 2;
const USER: &str = "streamjob";
const PASSWORD: &str = "kafka-s3cret";

struct SaslBroker {
    // Field order: the proxy goes before the broker behind it, the broker before its storage.
    stunnel: Stunnel,
    _tansu: Tansu,
    _storage: tempfile::TempDir,
}

impl SaslBroker {
    /// tansu with the topics and the SCRAM users, requiring SASL, behind a TLS listener.
    fn start(pki: &TestPki) -> Self {
        let binary = kafka::tansu_sqlite_binary()
            .expect("tansu with SQLite storage installed (scripts/setup.sh --test)");
        let storage = tempfile::Builder::new()
            .prefix("streamjob-tansu-")
            .tempdir()
            .expect("storage dir");
        let options = TansuOptions {
            storage: Some("sqlite://tansu.db".into()),
            dir: Some(storage.path().to_path_buf()),
            ..TansuOptions::default()
        };
        // tansu's own tools cannot log in: topics and users are made before authentication is on.
        {
            let setup = Tansu::start_with(&binary, options.clone()).expect("tansu starts");
            setup.create_topic(TOPIC, PARTITIONS).expect("topic");
            setup.create_topic(DLQ, 1).expect("dlq topic");
            for mechanism in ["scram512", "scram256"] {
                setup
                    .create_user(USER, PASSWORD, mechanism)
                    .expect("SCRAM user");
            }
        }
        let tls_port = free_port().expect("free port");
        let tansu = Tansu::start_with(
            &binary,
            TansuOptions {
                advertised: Some(tls_port),
                authentication: true,
                ..options
            },
        )
        .expect("tansu starts with authentication");
        let target = tansu.port();
        let stunnel = Stunnel::start(
            tls_port,
            target,
            &pki.cert("server"),
            &pki.key("server"),
            None,
        )
        .expect("stunnel starts");
        Self {
            stunnel,
            _tansu: tansu,
            _storage: storage,
        }
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.stunnel.port())
    }
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// librdkafka SASL_SSL properties for a client outside the pipeline.
fn sasl_properties(pki: &TestPki, mechanism: &str, password: &str) -> Vec<(String, String)> {
    [
        ("security.protocol", "sasl_ssl".to_string()),
        ("ssl.ca.location", pki.cert("ca").display().to_string()),
        ("sasl.mechanism", mechanism.to_string()),
        ("sasl.username", USER.to_string()),
        ("sasl.password", password.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The job's config: SASL_SSL with `mechanism` and `password`, the test CA, the local Redis.
fn job_config(
    broker: &SaslBroker,
    pki: &TestPki,
    redis: &RedisServer,
    password: &str,
) -> JobConfig {
    let mut config = JobConfig::default();
    config.job.name = JOB.into();
    config.source.kafka.brokers = broker.bootstrap();
    config.source.kafka.topic = TOPIC.into();
    config.source.kafka.dlq_topic = Some(DLQ.into());
    config.source.kafka.security_protocol = "sasl_ssl".into();
    config.source.kafka.sasl = Some(SaslConfig {
        mechanism: "SCRAM-SHA-512".into(),
        username: Some(USER.into()),
        password: Some(password.into()),
    });
    let properties = &mut config.source.kafka.properties;
    properties.insert(
        "ssl.ca.location".into(),
        pki.cert("ca").display().to_string(),
    );
    // tansu holds fetches for the full wait even when data is there.
    properties.insert("fetch.wait.max.ms".into(), "10".into());
    config.sink.redis.url = redis.url();
    config.sink.redis.time_zone = streamjob_worker::testkit::clock::midday_time_zone();
    config.batch.max_events = 100;
    config.validate().expect("valid config");
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_consumes_exactly_once_over_sasl_ssl_with_scram_sha_512() {
    let pki = TestPki::generate().expect("test PKI");
    let broker = SaslBroker::start(&pki);
    let redis = RedisServer::start().expect("redis-server");
    let props = sasl_properties(&pki, "SCRAM-SHA-512", PASSWORD);
    let payloads = delivery::small_data_set(31);
    let ends =
        delivery::produce_and_ends(&broker.bootstrap(), &props, TOPIC, PARTITIONS, &payloads);

    let config = job_config(&broker, &pki, &redis, PASSWORD);
    delivery::apply_all_and_check(config, &ends, &payloads, "SASL_SSL").await;
}

/// Everything the process logs, for asserting on the worker's messages.
#[derive(Clone, Default)]
struct CapturedLog(Arc<Mutex<Vec<u8>>>);

impl io::Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl CapturedLog {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_sha_256_logs_in_and_a_wrong_password_is_refused_naming_the_sasl_field() {
    // nextest runs each test in its own process: this subscriber sees only this test.
    let log = CapturedLog::default();
    let writer = log.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish(),
    )
    .expect("the only subscriber");
    let pki = TestPki::generate().expect("test PKI");
    let broker = SaslBroker::start(&pki);
    let bootstrap = broker.bootstrap();
    for mechanism in ["SCRAM-SHA-512", "SCRAM-SHA-256"] {
        assert_eq!(
            delivery::metadata(
                &bootstrap,
                &sasl_properties(&pki, mechanism, PASSWORD),
                TOPIC
            ),
            Ok(1),
            "{mechanism}"
        );
        assert!(
            delivery::metadata(
                &bootstrap,
                &sasl_properties(&pki, mechanism, "wrong"),
                TOPIC
            )
            .is_err(),
            "{mechanism} with a wrong password"
        );
    }

    // The pipeline with a wrong password: nothing is consumed, and the worker's log says which
    // field to fix (librdkafka keeps retrying, so the log is where it shows).
    let redis = RedisServer::start().expect("redis-server");
    let config = job_config(&broker, &pki, &redis, "not-the-password");
    let pipeline = Pipeline::start(Arc::new(config), Metrics::new())
        .await
        .expect("pipeline starts (the login happens in the background)");
    let deadline = Instant::now() + Duration::from_secs(60);
    let refusal = loop {
        let text = log.text();
        if let Some(line) = text
            .lines()
            .find(|l| l.contains("kafka connection refused"))
        {
            break line.to_string();
        }
        assert!(Instant::now() < deadline, "no refusal logged:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        refusal.contains("SASL authentication failed")
            && refusal.contains("source.kafka.sasl.mechanism")
            && refusal.contains("STREAMJOB_KAFKA_SASL_PASSWORD"),
        "{refusal}"
    );
    assert!(
        !log.text().contains("not-the-password"),
        "never logs the password"
    );
    pipeline.shutdown().await.expect("stops");
}
