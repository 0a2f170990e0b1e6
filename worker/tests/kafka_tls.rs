//! Kafka over TLS with real servers: a tansu broker behind a TLS listener (stunnel4, i.e.
//! OpenSSL, with a test CA made by openssl), advertising only the TLS port, so every client
//! connection (bootstrap and partition leader) is TLS. The pipeline consumes over TLS and over
//! mutual TLS and applies every event exactly once; a wrong CA or a missing client certificate
//! gets no data.
//!
//! SASL_SSL (SCRAM) is in `kafka_sasl.rs`.

use std::net::TcpListener;

use streamjob_worker::config::JobConfig;
use streamjob_worker::testkit::delivery;
use streamjob_worker::testkit::kafka::{self, Tansu};
use streamjob_worker::testkit::redis::RedisServer;
use streamjob_worker::testkit::tls::{Stunnel, TestPki};

const TOPIC: &str = "trace-ktls";
const DLQ: &str = "trace-ktls-dlq";
const JOB: &str = "ktls";
const PARTITIONS: i32 = 2;

struct TlsBroker {
    // Field order: the proxy goes before the broker behind it.
    stunnel: Stunnel,
    _tansu: Tansu,
}

impl TlsBroker {
    /// tansu with the topics, behind a TLS listener; `mutual` requires client certificates.
    fn start(pki: &TestPki, mutual: bool) -> Self {
        let binary = kafka::tansu_binary().expect("tansu installed (scripts/setup.sh --test)");
        let tls_port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let tansu = Tansu::start_advertising(&binary, Some(tls_port)).expect("tansu starts");
        tansu.create_topic(TOPIC, PARTITIONS).expect("topic");
        tansu.create_topic(DLQ, 1).expect("dlq topic");
        let target = tansu.port();
        let client_ca = mutual.then(|| pki.cert("ca"));
        let stunnel = Stunnel::start(
            tls_port,
            target,
            &pki.cert("server"),
            &pki.key("server"),
            client_ca.as_deref(),
        )
        .expect("stunnel starts");
        Self {
            stunnel,
            _tansu: tansu,
        }
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.stunnel.port())
    }
}

/// librdkafka TLS properties: the CA, and the client certificate when `client` is set.
fn tls_properties(pki: &TestPki, ca: &str, client: bool) -> Vec<(String, String)> {
    let mut props = vec![
        ("security.protocol".to_string(), "ssl".to_string()),
        ("ssl.ca.location".into(), pki.cert(ca).display().to_string()),
    ];
    if client {
        props.push((
            "ssl.certificate.location".into(),
            pki.cert("client").display().to_string(),
        ));
        props.push((
            "ssl.key.location".into(),
            pki.key("client").display().to_string(),
        ));
    }
    props
}

async fn pipeline_consumes_exactly_once_over_tls(mutual: bool) {
    let pki = TestPki::generate().expect("test PKI");
    let broker = TlsBroker::start(&pki, mutual);
    let redis = RedisServer::start().expect("redis-server");
    let props = tls_properties(&pki, "ca", mutual);
    let payloads = delivery::small_data_set(23);
    let ends =
        delivery::produce_and_ends(&broker.bootstrap(), &props, TOPIC, PARTITIONS, &payloads);

    let mut config = JobConfig::default();
    config.job.name = JOB.into();
    config.source.kafka.brokers = broker.bootstrap();
    config.source.kafka.topic = TOPIC.into();
    config.source.kafka.dlq_topic = Some(DLQ.into());
    config.source.kafka.security_protocol = "ssl".into();
    for (key, value) in &props {
        if key != "security.protocol" {
            config
                .source
                .kafka
                .properties
                .insert(key.clone(), value.clone());
        }
    }
    // tansu holds fetches for the full wait even when data is there.
    config
        .source
        .kafka
        .properties
        .insert("fetch.wait.max.ms".into(), "10".into());
    config.sink.redis.url = redis.url();
    config.sink.redis.time_zone = streamjob_worker::testkit::clock::midday_time_zone();
    config.batch.max_events = 100;
    config.validate().expect("valid config");
    delivery::apply_all_and_check(config, &ends, &payloads, "TLS").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_consumes_exactly_once_over_tls_with_a_ca() {
    pipeline_consumes_exactly_once_over_tls(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_consumes_exactly_once_over_mutual_tls() {
    pipeline_consumes_exactly_once_over_tls(true).await;
}

#[test]
fn a_wrong_ca_or_a_missing_client_certificate_gets_no_data() {
    let pki = TestPki::generate().expect("test PKI");
    let broker = TlsBroker::start(&pki, true);
    let bootstrap = broker.bootstrap();
    assert_eq!(
        delivery::metadata(&bootstrap, &tls_properties(&pki, "ca", true), TOPIC),
        Ok(1)
    );
    assert!(
        delivery::metadata(&bootstrap, &tls_properties(&pki, "other-ca", true), TOPIC).is_err()
    );
    assert!(delivery::metadata(&bootstrap, &tls_properties(&pki, "ca", false), TOPIC).is_err());
}
