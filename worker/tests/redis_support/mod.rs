//! Helpers shared by the `redis_*` integration tests: connect a sink to a testkit server, decode
//! fixture events, and dump a key space for comparison.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::SystemTime;

use redis::aio::MultiplexedConnection;
use redis::Value;
use streamjob_worker::config::RedisSinkConfig;
use streamjob_worker::sink::redis::{ApplyOutcome, Batch, RedisSink};
use streamjob_worker::testkit::redis::RedisServer;
use streamjob_worker::transform::{decode, AnchorInfo};

pub const JOB: &str = "trace";
pub const TOPIC: &str = "austinTraceLog";

pub fn sink_config(server: &RedisServer, prefix: &str) -> RedisSinkConfig {
    RedisSinkConfig {
        url: server.url(),
        key_prefix: prefix.into(),
        ..RedisSinkConfig::default()
    }
}

pub async fn connect_sink(server: &RedisServer, prefix: &str) -> RedisSink {
    RedisSink::connect(&sink_config(server, prefix), JOB, TOPIC)
        .await
        .expect("sink connects")
}

/// A plain connection for inspecting Redis. redis-rs' default 500 ms response timeout is too
/// tight for the big replay pipelines on a loaded CI machine.
pub async fn raw(server: &RedisServer) -> MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(std::time::Duration::from_secs(30)));
    redis::Client::open(server.url())
        .expect("url")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("raw connection")
}

pub fn event(json: &str) -> AnchorInfo<'static> {
    decode(json.as_bytes())
        .expect("fixture decodes")
        .into_owned()
}

/// Builds one batch of `events` at consecutive offsets from `first_offset`.
pub fn batch_of(
    sink: &RedisSink,
    partition: i32,
    epoch: u64,
    first_offset: i64,
    events: &[AnchorInfo<'_>],
    now: SystemTime,
) -> Batch {
    let mut builder = sink.batch_builder(partition, epoch);
    for (i, ev) in events.iter().enumerate() {
        builder.push_event(first_offset + i as i64, ev);
    }
    builder.build(now)
}

pub fn applied_events(outcome: &ApplyOutcome) -> usize {
    match outcome {
        ApplyOutcome::Applied { events, .. } => *events,
        ApplyOutcome::AlreadyApplied => 0,
    }
}

/// One key's content and absolute expiry (`PEXPIRETIME`: -1 none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    List(Vec<String>),
    Hash(BTreeMap<String, String>),
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDump {
    pub content: Content,
    pub expire_at_ms: i64,
}

pub async fn query<T: redis::FromRedisValue>(conn: &mut MultiplexedConnection, args: &[&str]) -> T {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(conn).await.expect("query")
}

/// Every key starting with `prefix` (prefix stripped), with content and expiry.
pub async fn dump(conn: &mut MultiplexedConnection, prefix: &str) -> BTreeMap<String, KeyDump> {
    let pattern = format!("{}*", prefix.replace('*', "\\*"));
    let keys: Vec<String> = query(conn, &["KEYS", &pattern]).await;
    let mut out = BTreeMap::new();
    for key in keys {
        let kind: String = query(conn, &["TYPE", &key]).await;
        let content = match kind.as_str() {
            "list" => Content::List(query(conn, &["LRANGE", &key, "0", "-1"]).await),
            "hash" => Content::Hash(query(conn, &["HGETALL", &key]).await),
            other => Content::Other(other.to_owned()),
        };
        let expire_at_ms: i64 = query(conn, &["PEXPIRETIME", &key]).await;
        out.insert(
            key[prefix.len()..].to_owned(),
            KeyDump {
                content,
                expire_at_ms,
            },
        );
    }
    out
}

pub async fn redis_time_ms(conn: &mut MultiplexedConnection) -> i64 {
    let t: Vec<Value> = query(conn, &["TIME"]).await;
    let part = |v: &Value| -> i64 {
        match v {
            Value::BulkString(b) => std::str::from_utf8(b).expect("utf8").parse().expect("int"),
            other => panic!("unexpected TIME part {other:?}"),
        }
    };
    part(&t[0]) * 1000 + part(&t[1]) / 1000
}

/// A connection to one cluster node at `host:port`. redis-rs' default 500 ms response timeout is
/// shorter than a WAIT or a unit that meets a migrating slot.
pub async fn node_conn(address: &str) -> MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(std::time::Duration::from_secs(30)));
    redis::Client::open(format!("redis://{address}/"))
        .expect("url")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connect")
}

/// The cluster's slot map as the node at `address` sees it.
pub async fn slot_map(address: &str) -> streamjob_worker::sink::redis::cluster::plan::SlotMap {
    let reply: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut node_conn(address).await)
        .await
        .expect("CLUSTER SLOTS");
    streamjob_worker::sink::redis::cluster::plan::SlotMap::from_slots_reply(&reply)
        .expect("slot map")
}

/// Every data key of every primary: the fences (`streamjob:`) and the reshard tests' filler keys
/// left out.
pub async fn cluster_dump(
    map: &streamjob_worker::sink::redis::cluster::plan::SlotMap,
) -> BTreeMap<String, KeyDump> {
    let mut all = BTreeMap::new();
    for node in map.nodes() {
        all.extend(dump(&mut node_conn(node).await, "").await);
    }
    all.retain(|key, _| !key.starts_with("streamjob:") && !key.starts_with("filler:"));
    all
}

/// The same keys with the same contents, and expiries within two minutes of each other (relative
/// TTLs were set at slightly different times).
pub fn assert_same_state(single: &BTreeMap<String, KeyDump>, cluster: &BTreeMap<String, KeyDump>) {
    let missing: Vec<_> = single
        .keys()
        .filter(|k| !cluster.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<_> = cluster
        .keys()
        .filter(|k| !single.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    for (key, expected) in single {
        let found = &cluster[key];
        assert_eq!(found.content, expected.content, "{key}");
        assert!(
            (found.expire_at_ms - expected.expire_at_ms).abs() < 120_000,
            "{key}: expires at {} vs {}",
            found.expire_at_ms,
            expected.expire_at_ms
        );
    }
}

/// Waits out the last minute before Shanghai midnight, when user lists get a relative expiry
/// and the day's end moves under the test (`testkit::clock`).
pub async fn clear_of_midnight() {
    let left = streamjob_worker::testkit::clock::until_next_midnight("Asia/Shanghai");
    if left < std::time::Duration::from_secs(60) {
        tokio::time::sleep(left + std::time::Duration::from_secs(1)).await;
    }
}
