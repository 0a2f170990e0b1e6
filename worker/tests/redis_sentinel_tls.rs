//! Redis over TLS behind Sentinel, against real servers: a TLS-only primary and replica
//! (`--port 0 --tls-port P`, mutual TLS, `tls-replication yes`) and a TLS-only sentinel, all with
//! a test CA made with openssl. The sink asks the sentinel for the primary over TLS, connects to
//! the primary it names over TLS with the ACL user, and after a failover reaches the promoted
//! replica the same way; with `sink.redis.tls.serverName`, also when the servers' certificates
//! lack the IPs the sentinel announces. A wrong CA is refused at the sentinel, naming the field.

mod redis_support;

use std::time::{Duration, Instant, SystemTime};

use redis_support::{applied_events, batch_of, event, JOB, TOPIC};
use streamjob_worker::config::{RedisSentinelConfig, RedisSinkConfig, RedisTlsConfig};
use streamjob_worker::sink::redis::{ApplyOutcome, Batch, Fence, RedisSink, SinkError};
use streamjob_worker::testkit::redis::{RedisOptions, RedisServer, RedisTlsOptions, SentinelOf};
use streamjob_worker::testkit::tls::{TestPki, INTERNAL_NAME};
use streamjob_worker::transform::AnchorInfo;

const MASTER: &str = "trace-tls";
const USER: &str = "streamjob";
const PASSWORD: &str = "s3cret-acl-password";

fn tls_options(pki: &TestPki, cert: &str) -> RedisTlsOptions {
    RedisTlsOptions {
        cert_file: pki.cert(cert),
        key_file: pki.key(cert),
        ca_file: pki.cert("ca"),
        auth_clients: true,
    }
}

/// Replicas and sentinels connect to the primary as TLS clients, with the test's client
/// certificate (the server certificate is for `serverAuth` only, and `tls-auth-clients yes`
/// asks every client for one).
fn outgoing_tls_args(pki: &TestPki) -> Vec<String> {
    vec![
        "--tls-client-cert-file".into(),
        pki.cert("client").display().to_string(),
        "--tls-client-key-file".into(),
        pki.key("client").display().to_string(),
    ]
}

/// A primary, its replica and one sentinel, every one TLS only.
struct TlsSentinelSet {
    primary: RedisServer,
    replica: RedisServer,
    sentinel: RedisServer,
}

impl TlsSentinelSet {
    /// The sentinel presents the `server` certificate (`localhost`, 127.0.0.1), the primary and
    /// the replica `data_cert` (Redis itself checks no host names, only the CA).
    fn start(pki: &TestPki, data_cert: &str) -> Self {
        let primary = RedisServer::start_with(RedisOptions {
            tls: Some(tls_options(pki, data_cert)),
            extra_args: outgoing_tls_args(pki),
            ..RedisOptions::default()
        })
        .expect("TLS primary");
        let replica = RedisServer::start_with(RedisOptions {
            tls: Some(tls_options(pki, data_cert)),
            extra_args: [
                vec![
                    "--replicaof".into(),
                    "127.0.0.1".into(),
                    primary.port().to_string(),
                ],
                outgoing_tls_args(pki),
            ]
            .concat(),
            ..RedisOptions::default()
        })
        .expect("TLS replica");
        // ACL users are not replicated: each server gets its own.
        for server in [&primary, &replica] {
            let password = format!(">{PASSWORD}");
            let reply = server
                .command(&["ACL", "SETUSER", USER, "on", &password, "~*", "+@all"])
                .expect("ACL SETUSER");
            assert!(reply.contains("+OK"), "ACL SETUSER: {reply}");
        }
        let sentinel = RedisServer::start_with(RedisOptions {
            tls: Some(tls_options(pki, "server")),
            sentinel: Some(SentinelOf {
                master_name: MASTER.into(),
                primary_port: primary.port(),
                quorum: 1,
            }),
            extra_args: outgoing_tls_args(pki),
            ..RedisOptions::default()
        })
        .expect("TLS sentinel");
        let set = Self {
            primary,
            replica,
            sentinel,
        };
        // The sentinel learns the replica from the primary over TLS (`tls-replication yes`).
        let replica_port = set.replica.port().to_string();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let replicas = set.sentinel.command(&["SENTINEL", "REPLICAS", MASTER]);
            if replicas.as_ref().is_ok_and(|r| r.contains(&replica_port)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinel does not know the replica: {replicas:?}; sentinel log: {}",
                std::fs::read_to_string(set.sentinel.log_path()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        set
    }

    fn sink_config(&self, pki: &TestPki, ca: &str) -> RedisSinkConfig {
        RedisSinkConfig {
            // With sentinel, the URL only selects the database; `rediss` makes every
            // connection TLS.
            url: "rediss://sentinel/0".into(),
            username: Some(USER.into()),
            password: Some(PASSWORD.into()),
            tls: Some(RedisTlsConfig {
                ca_file: Some(pki.cert(ca)),
                cert_file: Some(pki.cert("client")),
                key_file: Some(pki.key("client")),
                server_name: None,
            }),
            sentinel: Some(RedisSentinelConfig {
                master_name: MASTER.into(),
                nodes: vec![format!("127.0.0.1:{}", self.sentinel.port())],
                password: None,
            }),
            ..RedisSinkConfig::default()
        }
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn events(n: usize, tag: &str) -> Vec<AnchorInfo<'static>> {
    (0..n)
        .map(|i| {
            event(&format!(
                r#"{{"businessId":1000000120240101,"ids":["{tag}{i}","shared"],"logTimestamp":{i},"messageId":"{tag}m{i}","state":60}}"#
            ))
        })
        .collect()
}

/// `LLEN shared` and the fence of partition 0, read through the server's unix socket.
fn state_of(server: &RedisServer) -> (String, String) {
    let shared = server.command(&["LLEN", "shared"]).expect("LLEN");
    let fence_key = format!("streamjob:{JOB}:fence:{TOPIC}:0");
    let fence = server
        .command(&["HGET", &fence_key, "next_offset"])
        .expect("HGET fence");
    (shared.trim().to_string(), fence.trim().to_string())
}

async fn apply_retrying(sink: &RedisSink, batch: &Batch) -> ApplyOutcome {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match sink.apply(batch).await {
            Ok(outcome) => return outcome,
            Err(err) if err.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("apply failed: {err}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_primary_named_by_tls_sentinels_is_used_and_followed_across_a_failover() {
    let pki = TestPki::generate().expect("test PKI");
    let set = TlsSentinelSet::start(&pki, "server");
    let sink = RedisSink::connect(&set.sink_config(&pki, "ca"), JOB, TOPIC)
        .await
        .expect("the sink reaches the primary through the sentinel, both over TLS");
    apply_across_a_failover(&set, &sink).await;
}

/// The primary's and the replica's certificates name only `redis.internal`, while the sentinel
/// announces them by IP: refused without `sink.redis.tls.serverName`, naming it; with it, the
/// sink reaches the primary and follows the failover, verifying the name each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_name_override_reaches_and_follows_primaries_announced_by_ip() {
    let pki = TestPki::generate().expect("test PKI");
    let set = TlsSentinelSet::start(&pki, "internal");
    let mut cfg = set.sink_config(&pki, "ca");
    let err = RedisSink::connect(&cfg, JOB, TOPIC)
        .await
        .expect_err("the primary's certificate lacks the announced IP");
    let text = err.to_string();
    assert!(matches!(err, SinkError::Config(_)), "{text}");
    assert!(text.contains("sink.redis.tls.serverName"), "{text}");

    cfg.tls.as_mut().expect("tls").server_name = Some(INTERNAL_NAME.into());
    let sink = RedisSink::connect(&cfg, JOB, TOPIC)
        .await
        .expect("the primary's certificate carries the server name");
    apply_across_a_failover(&set, &sink).await;
}

/// One batch to the primary, a forced failover, one batch to the promoted replica: each lands
/// once, and the fence follows.
async fn apply_across_a_failover(set: &TlsSentinelSet, sink: &RedisSink) {
    let epoch = sink.claim(0).await.expect("claim").epoch;
    let first = batch_of(sink, 0, epoch, 0, &events(5, "a"), SystemTime::now());
    assert_eq!(applied_events(&apply_retrying(sink, &first).await), 5);
    assert_eq!(
        state_of(&set.primary),
        (":5".into(), "$1\r\n5".into()),
        "the first batch went to the primary"
    );

    // Replication runs over TLS too: the replica has the batch before it is promoted.
    wait_until("the replica has the first batch", || {
        state_of(&set.replica) == (":5".into(), "$1\r\n5".into())
    });

    // A forced failover: the sentinel promotes the replica (over TLS) and turns the old primary
    // into its replica, which answers the sink's next write with READONLY.
    let reply = set
        .sentinel
        .command(&["SENTINEL", "FAILOVER", MASTER])
        .expect("SENTINEL FAILOVER");
    assert!(reply.contains("+OK"), "SENTINEL FAILOVER: {reply}");
    wait_until("the replica is promoted", || {
        set.replica
            .command(&["ROLE"])
            .is_ok_and(|role| role.contains("master"))
    });
    wait_until("the sentinel names the promoted replica", || {
        set.sentinel
            .command(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER])
            .is_ok_and(|addr| addr.contains(&set.replica.port().to_string()))
    });

    // Until then the old primary still takes writes (a forced failover's own window, which
    // the fence's gap check covers); this test is about reaching the new one.
    wait_until("the old primary is a replica", || {
        set.primary
            .command(&["ROLE"])
            .is_ok_and(|role| role.contains("slave"))
    });

    let second = batch_of(sink, 0, epoch, 5, &events(3, "b"), SystemTime::now());
    assert_eq!(applied_events(&apply_retrying(sink, &second).await), 3);
    assert_eq!(
        state_of(&set.replica),
        (":8".into(), "$1\r\n8".into()),
        "the promoted replica holds both batches once"
    );
    assert_eq!(
        sink.read_fence(0).await.expect("fence"),
        Some(Fence {
            epoch,
            next_offset: Some(8),
            max_event_ms: None,
            learned_ms: None,
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_is_refused_at_the_sentinel_naming_the_ca_field() {
    let pki = TestPki::generate().expect("test PKI");
    let set = TlsSentinelSet::start(&pki, "server");
    let err = RedisSink::connect(&set.sink_config(&pki, "other-ca"), JOB, TOPIC)
        .await
        .expect_err("a sentinel signed by another CA must be refused");
    let text = err.to_string();
    assert!(matches!(err, SinkError::Config(_)), "{text}");
    assert!(!err.is_retryable(), "{text}");
    assert!(text.contains("sentinels"), "{text}");
    assert!(text.contains("sink.redis.tls.caFile"), "{text}");
}
