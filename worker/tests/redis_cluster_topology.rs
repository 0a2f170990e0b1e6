//! The Redis Cluster's shape travels from a taskmanager to the job overview: an in-process
//! jobmanager and taskmanager (its real pipeline: an embedded broker, a real 3-primary
//! cluster) show the shards, the primaries and a slot left half-resharded, in the overview,
//! in the dashboard's state and in the taskmanager's gauges, and the migration's end too. Off a
//! cluster, a single node and a Sentinel primary are one shard at their address.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::Method;
use streamjob_worker::api::{JobOverview, RedisMode, RedisTopology};
use streamjob_worker::config::{
    JobConfig, RedisClusterConfig, RedisSentinelConfig, RedisSinkConfig,
};
use streamjob_worker::jobmanager::{FixedPartitions, JobManager, JobManagerOptions};
use streamjob_worker::metrics::Metrics;
use streamjob_worker::pipeline::PipelineOptions;
use streamjob_worker::sink::redis::RedisSink;
use streamjob_worker::taskmanager::{JobManagerClient, TaskManager, TaskManagerOptions};
use streamjob_worker::testkit::kafka;
use streamjob_worker::testkit::redis::{RedisOptions, RedisServer, SentinelOf};
use streamjob_worker::testkit::redis_cluster::{ClusterOptions, RedisCluster};
use tokio::net::TcpListener;

const JOB: &str = "topo";
const TOPIC: &str = "trace-topo";
const T: Duration = Duration::from_secs(5);

fn config(cluster: &RedisCluster, brokers: &str, dir: &std::path::Path, jm: &str) -> JobConfig {
    let mut config = JobConfig::default();
    config.job.name = JOB.into();
    config.source.kafka.brokers = brokers.into();
    config.source.kafka.topic = TOPIC.into();
    config.source.kafka.dlq_topic = Some(format!("{TOPIC}-dlq"));
    config.sink.redis.url = "redis://cluster".into();
    config.sink.redis.cluster = Some(RedisClusterConfig {
        nodes: vec![cluster.seeds()[0].clone()],
    });
    config.checkpoint.dir = dir.to_path_buf();
    config.checkpoint.interval = Duration::ZERO;
    config.jobmanager.url = format!("http://{jm}");
    config.jobmanager.heartbeat_interval = Duration::from_millis(200);
    config.jobmanager.heartbeat_timeout = Duration::from_secs(2);
    config
}

/// Polls the overview until its Redis topology satisfies `wanted`; that topology.
async fn wait_for_topology(
    client: &JobManagerClient,
    what: &str,
    wanted: impl Fn(&RedisTopology) -> bool,
) -> RedisTopology {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let overview: JobOverview = client
            .call::<(), _>(Method::GET, &format!("/jobs/{JOB}"), None, T)
            .await
            .expect("overview");
        if let Some(redis) = overview.redis.filter(|r| wanted(r)) {
            return redis;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the overview never showed {what}");
}

fn gauge(metrics: &Metrics, name: &str) -> Option<i64> {
    metrics
        .encode()
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name} "))?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_shows_the_shards_and_a_slot_left_migrating() {
    let cluster = RedisCluster::start_with(ClusterOptions {
        primaries: 3,
        replicas: 0,
        persistence: false,
    })
    .expect("cluster");
    let broker = kafka::start_mock(TOPIC, 2, &format!("{TOPIC}-dlq"));
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let config = Arc::new(config(
        &cluster,
        broker.bootstrap_servers(),
        dir.path(),
        &address,
    ));
    let jm = JobManager::start(
        config.clone(),
        JobManagerOptions::default(),
        Arc::new(FixedPartitions(2)),
        listener,
    )
    .await
    .expect("jobmanager starts");
    let metrics = Metrics::new();
    let tm = TaskManager::start_with(
        config,
        TaskManagerOptions {
            id: "tm-0".into(),
            address: None,
            revision: None,
        },
        metrics.clone(),
        PipelineOptions {
            topology_interval: Duration::from_millis(200),
            ..PipelineOptions::default()
        },
    )
    .await
    .expect("taskmanager starts");
    let client = JobManagerClient::new(&format!("http://{address}"));

    let mut primaries: Vec<String> = cluster
        .primaries()
        .expect("primaries")
        .into_iter()
        .map(|i| cluster.seeds()[i].clone())
        .collect();
    primaries.sort();
    let settled = wait_for_topology(&client, "3 shards", |r| r.shards == 3).await;
    assert_eq!(settled.mode, RedisMode::Cluster);
    assert_eq!(settled.primaries, primaries);
    assert_eq!(settled.migrating_slots, 0);
    assert!(settled.last_refresh_ms > 0);
    assert_eq!(gauge(&metrics, "streamjob_redis_cluster_shards"), Some(3));

    // One slot left half-resharded: the source says MIGRATING, the target IMPORTING.
    let [from, to, ..] = cluster.primaries().expect("primaries")[..] else {
        panic!("3 primaries");
    };
    let topology = cluster.topology().expect("CLUSTER NODES");
    let from_port = cluster.node(from).port();
    let slot = topology
        .iter()
        .find(|n| n.port == from_port)
        .map(|n| n.slots[0].0)
        .expect("the source serves slots");
    cluster.begin_migration(slot, from, to).expect("SETSLOT");
    let migrating = wait_for_topology(&client, "a slot migrating", |r| r.migrating_slots > 0).await;
    assert_eq!(migrating.migrating_slots, 1, "{migrating:?}");
    assert_eq!(migrating.shards, 3);
    assert_eq!(
        gauge(&metrics, "streamjob_redis_cluster_migrating_slots"),
        Some(1)
    );
    // The dashboard shows the same overview.
    let state: serde_json::Value = client
        .call::<(), _>(Method::GET, "/dashboard/state", None, T)
        .await
        .expect("dashboard state");
    assert_eq!(state["overview"]["redis"]["migratingSlots"], 1, "{state}");
    assert_eq!(state["overview"]["redis"]["mode"], "cluster", "{state}");

    cluster
        .end_migration(slot, from, to)
        .expect("SETSLOT STABLE");
    wait_for_topology(&client, "the migration's end", |r| {
        r.migrating_slots == 0 && r.last_refresh_ms > migrating.last_refresh_ms
    })
    .await;

    tm.shutdown().await.expect("taskmanager stops");
    jm.shutdown();
}

/// Off a cluster the sink describes one shard at the primary it writes to, without a call:
/// the address of `sink.redis.url`, or the one the sentinels named.
#[tokio::test]
async fn a_single_node_and_a_sentinel_primary_are_one_shard_at_their_address() {
    let primary = RedisServer::start().expect("redis-server");
    let address = format!("127.0.0.1:{}", primary.port());
    let single = RedisSinkConfig {
        url: primary.url(),
        ..RedisSinkConfig::default()
    };
    let sink = RedisSink::connect(&single, JOB, TOPIC).await.expect("sink");
    let topology = sink.describe_topology().await.expect("described");
    assert_eq!(
        (topology.mode, topology.shards, topology.migrating_slots),
        (RedisMode::Single, 1, 0)
    );
    assert_eq!(topology.primaries, std::slice::from_ref(&address));

    let sentinel = RedisServer::start_with(RedisOptions {
        sentinel: Some(SentinelOf {
            master_name: "sj".into(),
            primary_port: primary.port(),
            quorum: 1,
        }),
        ..RedisOptions::default()
    })
    .expect("sentinel");
    let behind_sentinels = RedisSinkConfig {
        url: "redis://sentinel/0".into(),
        sentinel: Some(RedisSentinelConfig {
            master_name: "sj".into(),
            nodes: vec![format!("127.0.0.1:{}", sentinel.port())],
            password: None,
        }),
        ..RedisSinkConfig::default()
    };
    let sink = RedisSink::connect(&behind_sentinels, JOB, TOPIC)
        .await
        .expect("sink");
    let topology = sink.describe_topology().await.expect("described");
    assert_eq!((topology.mode, topology.shards), (RedisMode::Sentinel, 1));
    assert_eq!(topology.primaries, [address]);
}
