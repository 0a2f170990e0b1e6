//! Issue #25 (b) at the apply-loop level (`cluster/apply.rs`): batches keep being applied while
//! `redis-cli --cluster reshard` moves 1,000 slots with their keys (fences included) and while
//! `--cluster rebalance` spreads the slots over an added empty primary. The cluster then holds
//! exactly what a single node given the same batches holds: every list entry, counter and
//! expiry, nothing missing, nothing doubled.

mod redis_support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use redis::aio::MultiplexedConnection;
use redis_support::*;
use streamjob_worker::sink::redis::cluster::apply::{ApplyStats, ClusterOwner};
use streamjob_worker::sink::redis::cluster::plan::SlotMap;
use streamjob_worker::sink::redis::RedisSink;
use streamjob_worker::testkit::redis::RedisServer;
use streamjob_worker::testkit::redis_cluster::{ClusterOptions, RedisCluster};
use streamjob_worker::transform::AnchorInfo;

const EVENTS: usize = 200;

fn events(batch: usize) -> Vec<AnchorInfo<'static>> {
    (0..EVENTS)
        .map(|i| {
            let n = batch * EVENTS + i;
            event(&format!(
                r#"{{"businessId":{},"ids":["1380000{:04}","u{}"],"logTimestamp":{},"messageId":"m{}","state":{}}}"#,
                1000000120240101i64 + 100_000_000 * (n as i64 % 5),
                n % 300,
                n % 5000,
                1_700_000_000_000i64 + n as i64,
                n / 4,
                [10, 60, 64, 70][n % 4]
            ))
        })
        .collect()
}

async fn conn(address: &str) -> MultiplexedConnection {
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
    redis::Client::open(format!("redis://{address}/"))
        .expect("url")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connect")
}

async fn slot_map(address: &str) -> SlotMap {
    let reply: redis::Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut conn(address).await)
        .await
        .expect("CLUSTER SLOTS");
    SlotMap::from_slots_reply(&reply).expect("slot map")
}

/// Applies batch `b` to the single node and to the cluster.
struct Writer {
    sink: RedisSink,
    owner: ClusterOwner,
    epoch: u64,
    next: usize,
    stats: ApplyStats,
}

impl Writer {
    async fn write_one(&mut self) {
        let b = self.next;
        self.next += 1;
        let batch = batch_of(
            &self.sink,
            0,
            self.epoch,
            (b * EVENTS) as i64,
            &events(b),
            SystemTime::now(),
        );
        self.sink.apply(&batch).await.expect("single-node apply");
        let stats = self.owner.apply(&batch).await.expect("cluster apply");
        self.stats.units += stats.units;
        self.stats.migrating_waits += stats.migrating_waits;
        self.stats.redirects += stats.redirects;
        self.stats.rereads += stats.rereads;
    }
}

async fn cluster_dump(map: &SlotMap) -> BTreeMap<String, KeyDump> {
    let mut all = BTreeMap::new();
    for node in map.nodes() {
        all.extend(dump(&mut conn(node).await, "").await);
    }
    all.retain(|key, _| !key.starts_with("streamjob:"));
    all
}

fn assert_same_state(single: &BTreeMap<String, KeyDump>, cluster: &BTreeMap<String, KeyDump>) {
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
            "{key}"
        );
    }
}

/// Writes batches (paced) until `done` is set by the migration running beside it.
fn write_while(rt: &tokio::runtime::Runtime, writer: &mut Writer, done: &AtomicBool) {
    while !done.load(Ordering::Acquire) {
        rt.block_on(writer.write_one());
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn heavy_a_live_reshard_and_rebalance_neither_lose_nor_double_a_write() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let server = RedisServer::start().expect("redis-server");
    let sink = rt.block_on(connect_sink(&server, ""));
    let epoch = rt
        .block_on(sink.claim_from(0, 0, Some(0)))
        .expect("claim")
        .fence
        .epoch;
    let mut cluster = RedisCluster::start_with(ClusterOptions {
        primaries: 3,
        replicas: 0,
        persistence: false,
    })
    .expect("cluster");
    let map = rt.block_on(slot_map(&cluster.seeds()[0]));
    let owner = ClusterOwner::new(sink.layout().clone(), 0, epoch, map);
    let mut writer = Writer {
        sink,
        owner,
        epoch,
        next: 0,
        stats: ApplyStats::default(),
    };
    for _ in 0..10 {
        rt.block_on(writer.write_one());
    }

    let primaries = cluster.primaries().expect("primaries");
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let moved = cluster.reshard(primaries[0], primaries[1], 1000, 1);
            done.store(true, Ordering::Release);
            moved.expect("reshard 1,000 slots");
        });
        write_while(&rt, &mut writer, &done);
    });
    let after_reshard = writer.stats;
    assert!(after_reshard.redirects > 0, "{after_reshard:?}");

    cluster.add_primary().expect("an empty primary");
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let moved = cluster.rebalance(1);
            done.store(true, Ordering::Release);
            moved.expect("rebalance");
        });
        write_while(&rt, &mut writer, &done);
    });
    for _ in 0..5 {
        rt.block_on(writer.write_one());
    }
    eprintln!("{} batches, {:?}", writer.next, writer.stats);
    assert!(
        writer.stats.redirects > after_reshard.redirects,
        "{:?}",
        writer.stats
    );

    let map = rt.block_on(slot_map(&cluster.seeds()[0]));
    assert_eq!(map.nodes().len(), 4);
    let mut single = rt.block_on(async { dump(&mut raw(&server).await, "").await });
    single.retain(|key, _| !key.starts_with("streamjob:"));
    assert_same_state(&single, &rt.block_on(cluster_dump(&map)));
}
