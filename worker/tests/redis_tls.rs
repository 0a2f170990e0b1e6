//! Redis over TLS against a real TLS-only redis-server (`--port 0 --tls-port P`, mutual TLS, a
//! test CA made with openssl) with a Redis 6 ACL user: the exactly-once pipeline runs over it,
//! and a wrong CA, an expired server certificate, a missing client certificate or a wrong
//! password each fail at connect with a message that names the field and the cause. A server
//! whose certificate lacks the URL's host is reached with `sink.redis.tls.serverName`.

mod redis_support;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use redis_support::{batch_of, event};

use streamjob_worker::config::{JobConfig, RedisSinkConfig, RedisTlsConfig};
use streamjob_worker::demo::{EventGenerator, TrafficShape};
use streamjob_worker::metrics::Metrics;
use streamjob_worker::pipeline::Pipeline;
use streamjob_worker::sink::redis::{Batch, Fence, RedisSink, SinkError};
use streamjob_worker::testkit;
use streamjob_worker::testkit::kafka::{self, ProduceMode};
use streamjob_worker::testkit::redis::{RedisOptions, RedisServer, RedisTlsOptions};
use streamjob_worker::testkit::tls::{TestPki, INTERNAL_NAME};
use streamjob_worker::testkit::trace_state::{fence_offsets, Expected, TraceState};

const USER: &str = "streamjob";
const PASSWORD: &str = "s3cret-acl-password";
const TOPIC: &str = "trace-tls";
const DLQ: &str = "trace-tls-dlq";
const JOB: &str = "tls";

/// A TLS-only redis-server presenting `server_cert` (signed by the test CA), optionally
/// requiring client certificates, with an ACL user allowed everything.
fn tls_redis(pki: &TestPki, server_cert: &str, auth_clients: bool) -> RedisServer {
    let server = RedisServer::start_with(RedisOptions {
        tls: Some(RedisTlsOptions {
            cert_file: pki.cert(server_cert),
            key_file: pki.key(server_cert),
            ca_file: pki.cert("ca"),
            auth_clients,
        }),
        ..RedisOptions::default()
    })
    .expect("TLS-only redis-server starts");
    let client = redis::Client::open(server.url()).expect("unix socket url");
    let mut conn = client.get_connection().expect("unix socket connection");
    let password = format!(">{PASSWORD}");
    redis::cmd("ACL")
        .arg(&["SETUSER", USER, "on", password.as_str(), "~*", "+@all"][..])
        .query::<()>(&mut conn)
        .expect("ACL user created");
    server
}

/// The sink's settings for `server`: the ACL user, mutual TLS with the client certificate.
fn sink_config(server: &RedisServer, pki: &TestPki, ca: &str) -> RedisSinkConfig {
    RedisSinkConfig {
        url: server.tls_url(),
        username: Some(USER.into()),
        password: Some(PASSWORD.into()),
        tls: Some(RedisTlsConfig {
            ca_file: Some(pki.cert(ca)),
            cert_file: Some(pki.cert("client")),
            key_file: Some(pki.key("client")),
            server_name: None,
        }),
        ..RedisSinkConfig::default()
    }
}

async fn connect_error(cfg: &RedisSinkConfig) -> SinkError {
    RedisSink::connect(cfg, JOB, TOPIC)
        .await
        .expect_err("the connection must be refused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exactly_once_pipeline_runs_over_mutual_tls_with_an_acl_user() {
    let pki = TestPki::generate().expect("test PKI");
    let redis = tls_redis(&pki, "server", true);
    let kafka = kafka::start_mock(TOPIC, 2, DLQ);
    let mut generator = EventGenerator::new(
        7,
        TrafficShape {
            users: 500,
            messages: 300,
            malformed_ppm: 0,
            ..TrafficShape::default()
        },
    );
    let payloads: Vec<Vec<u8>> = (0..3_000).map(|_| generator.next_payload()).collect();
    kafka::produce(
        kafka.bootstrap_servers(),
        TOPIC,
        2,
        &payloads,
        ProduceMode::Batched,
    )
    .expect("produced");

    let mut config = JobConfig::default();
    config.job.name = JOB.into();
    config.source.kafka.brokers = kafka.bootstrap_servers().into();
    config.source.kafka.topic = TOPIC.into();
    config.source.kafka.dlq_topic = Some(DLQ.into());
    config
        .source
        .kafka
        .properties
        .insert("fetch.wait.max.ms".into(), "10".into());
    config.sink.redis = sink_config(&redis, &pki, "ca");
    config.sink.redis.time_zone = streamjob_worker::testkit::clock::midday_time_zone();
    config.batch.max_events = 200;
    config.validate().expect("valid config");
    let pipeline = Pipeline::start(Arc::new(config), Metrics::new())
        .await
        .expect("pipeline connects over TLS");
    testkit::assign_all(&pipeline, 0..2).await;
    let ends = kafka::high_watermarks(kafka.bootstrap_servers(), TOPIC, 2).expect("watermarks");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let fences = fence_offsets(&redis.url(), "", JOB, TOPIC, 2).expect("fences readable");
        if fences.iter().zip(&ends).all(|(f, e)| *f == Some(*e)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "fences {fences:?}, ends {ends:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The sink is connected through the TLS port as the ACL user, not through the test's socket.
    let client = redis::Client::open(redis.url()).expect("socket");
    let mut conn = client.get_connection().expect("socket connection");
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut conn)
        .expect("client list");
    assert!(clients.contains(&format!("user={USER}")), "{clients}");
    pipeline.shutdown().await.expect("stops");

    let expected = Expected::from_payloads("", payloads.iter().map(Vec::as_slice));
    let actual = TraceState::read(&redis.url()).expect("state readable");
    let diff = expected.state.diff(&actual, 10);
    assert!(diff.is_empty(), "over TLS:\n{}", diff.join("\n"));
}

#[tokio::test]
async fn a_wrong_ca_is_refused_naming_the_ca_field() {
    let pki = TestPki::generate().expect("test PKI");
    let redis = tls_redis(&pki, "server", false);
    let cfg = sink_config(&redis, &pki, "other-ca");
    let err = connect_error(&cfg).await;
    let text = err.to_string();
    assert!(matches!(err, SinkError::Config(_)), "{text}");
    assert!(
        text.contains("sink.redis.tls.caFile") && text.contains("not signed by"),
        "{text}"
    );
    assert!(text.contains("other-ca.crt"), "names the file: {text}");
}

#[tokio::test]
async fn an_expired_server_certificate_is_refused_as_expired() {
    let pki = TestPki::generate().expect("test PKI");
    let redis = tls_redis(&pki, "expired", false);
    let err = connect_error(&sink_config(&redis, &pki, "ca")).await;
    let text = err.to_string();
    assert!(matches!(err, SinkError::Config(_)), "{text}");
    assert!(text.contains("has expired"), "{text}");
}

#[tokio::test]
async fn a_wrong_password_is_refused_naming_the_acl_user() {
    let pki = TestPki::generate().expect("test PKI");
    let redis = tls_redis(&pki, "server", false);
    let mut cfg = sink_config(&redis, &pki, "ca");
    cfg.password = Some("not-the-password".into());
    let err = connect_error(&cfg).await;
    let text = err.to_string();
    assert!(matches!(err, SinkError::Config(_)), "{text}");
    assert!(
        text.contains("refused the credentials") && text.contains(USER),
        "{text}"
    );
    assert!(
        !text.contains("not-the-password"),
        "never logs the password: {text}"
    );
}

#[tokio::test]
async fn mutual_tls_without_a_client_certificate_is_refused_naming_the_cert_field() {
    let pki = TestPki::generate().expect("test PKI");
    let redis = tls_redis(&pki, "server", true);
    let mut cfg = sink_config(&redis, &pki, "ca");
    if let Some(tls) = cfg.tls.as_mut() {
        tls.cert_file = None;
        tls.key_file = None;
    }
    let err = connect_error(&cfg).await;
    let text = err.to_string();
    assert!(
        text.contains("sink.redis.tls.certFile") || text.contains("client certificate"),
        "{text}"
    );
}

fn one_event_batch(sink: &RedisSink, epoch: u64) -> Batch {
    let json = r#"{"businessId":1000000120240101,"ids":["u1"],"logTimestamp":1,"messageId":"m1","state":60}"#;
    batch_of(sink, 0, epoch, 0, &[event(json)], SystemTime::now())
}

/// A server whose certificate names only `redis.internal`, reached at 127.0.0.1 (as a pod
/// reaches a managed Redis by an address its certificate does not carry).
fn internal_name_config(pki: &TestPki) -> (RedisServer, RedisSinkConfig) {
    let redis = tls_redis(pki, "internal", true);
    let mut cfg = sink_config(&redis, pki, "ca");
    cfg.url = format!("rediss://127.0.0.1:{}/0", redis.port());
    (redis, cfg)
}

#[tokio::test]
async fn a_certificate_without_the_url_host_is_refused_naming_the_server_name_field() {
    let pki = TestPki::generate().expect("test PKI");
    let (_redis, cfg) = internal_name_config(&pki);
    let err = connect_error(&cfg).await;
    let text = err.to_string();
    assert!(matches!(err, SinkError::Config(_)), "{text}");
    assert!(
        text.contains("does not name the host") && text.contains("sink.redis.tls.serverName"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_name_override_verifies_the_certificate_against_that_name() {
    let pki = TestPki::generate().expect("test PKI");
    let (redis, mut cfg) = internal_name_config(&pki);
    // A name the certificate does not carry is still refused, naming the field.
    cfg.tls.as_mut().expect("tls").server_name = Some("redis.example".into());
    let text = connect_error(&cfg).await.to_string();
    assert!(
        text.contains("sink.redis.tls.serverName") && text.contains("redis.example"),
        "{text}"
    );

    cfg.tls.as_mut().expect("tls").server_name = Some(INTERNAL_NAME.into());
    let sink = RedisSink::connect(&cfg, JOB, TOPIC)
        .await
        .expect("the certificate carries the server name");
    // Claims and reads (main connection) and applies (the pool) both go over it.
    let epoch = sink.claim(0).await.expect("claim").epoch;
    let batch = one_event_batch(&sink, epoch);
    sink.apply(&batch).await.expect("apply");
    assert_eq!(
        sink.read_fence(0).await.expect("fence"),
        Some(Fence {
            epoch,
            next_offset: Some(1),
            max_event_ms: None,
            learned_ms: None,
        })
    );

    // The main connection has no manager behind it: after the server dropped every client, the
    // sink reconnects (retryable errors until then) and verifies the name again.
    let killed = redis
        .command(&["CLIENT", "KILL", "USER", USER])
        .expect("CLIENT KILL");
    assert!(!killed.trim().ends_with(":0"), "killed {killed}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match sink.read_fence(0).await {
            Ok(fence) => {
                assert_eq!(fence.map(|f| f.epoch), Some(epoch));
                break;
            }
            Err(err) => {
                assert!(err.is_retryable(), "{err}");
                assert!(Instant::now() < deadline, "no reconnect: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The sink also reaches a server by its unix socket, and writes into the database the URL names:
/// its apply connections log in as the ACL user and `SELECT` that database, like the redis
/// crate's connections do.
#[tokio::test]
async fn a_unix_socket_url_with_a_database_number_is_written_there() {
    let pki = TestPki::generate().expect("test PKI");
    let redis = tls_redis(&pki, "server", true);
    let cfg = RedisSinkConfig {
        url: format!("{}?db=5", redis.url()),
        username: Some(USER.into()),
        password: Some(PASSWORD.into()),
        ..RedisSinkConfig::default()
    };
    let sink = RedisSink::connect(&cfg, JOB, TOPIC)
        .await
        .expect("the sink connects over the socket");
    let epoch = sink.claim(0).await.expect("claim").epoch;
    let ev = event(
        r#"{"businessId":7,"ids":["user-in-db5"],"logTimestamp":1,"messageId":"m-db5","state":60}"#,
    );
    let batch = batch_of(&sink, 0, epoch, 0, &[ev], SystemTime::now());
    sink.apply(&batch).await.expect("applied");
    let client = redis::Client::open(redis.url()).expect("unix socket url");
    let mut conn = client.get_connection().expect("unix socket connection");
    let mut exists_in = |db: i64| -> i64 {
        redis::cmd("SELECT")
            .arg(db)
            .query::<()>(&mut conn)
            .expect("select");
        redis::cmd("EXISTS")
            .arg("user-in-db5")
            .query(&mut conn)
            .expect("exists")
    };
    assert_eq!(exists_in(5), 1, "the user list is in database 5");
    assert_eq!(exists_in(0), 0, "and not in database 0");
}
