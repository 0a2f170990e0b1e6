//! A configuration pointed at the wrong kind of Redis gets one clear message: a single-node URL
//! at a cluster node (which would otherwise meet `MOVED` forever), and `sink.redis.cluster` at a
//! plain Redis.

mod redis_support;

use redis_support::{JOB, TOPIC};
use streamjob_worker::config::{RedisClusterConfig, RedisSinkConfig};
use streamjob_worker::sink::redis::{RedisSink, SinkError};
use streamjob_worker::testkit::redis::RedisServer;
use streamjob_worker::testkit::redis_cluster::{ClusterOptions, RedisCluster};

fn one_node_cluster() -> RedisCluster {
    RedisCluster::start_with(ClusterOptions {
        primaries: 1,
        replicas: 0,
        persistence: false,
    })
    .expect("cluster")
}

async fn refusal(cfg: &RedisSinkConfig) -> String {
    match RedisSink::connect(cfg, JOB, TOPIC).await {
        Ok(_) => panic!("{cfg:?} must be refused"),
        Err(err @ SinkError::Config(_)) => err.to_string(),
        Err(other) => panic!("a configuration error, not {other:?}"),
    }
}

#[tokio::test]
async fn a_single_node_url_at_a_cluster_node_is_refused_naming_the_cluster_setting() {
    let cluster = one_node_cluster();
    let cfg = RedisSinkConfig {
        url: cluster.node(0).url(),
        ..RedisSinkConfig::default()
    };
    let message = refusal(&cfg).await;
    assert!(message.contains("is a Redis Cluster node"), "{message}");
    assert!(message.contains("sink.redis.cluster.nodes"), "{message}");
}

#[tokio::test]
async fn a_cluster_setting_at_a_plain_redis_is_refused_naming_the_seed() {
    let server = RedisServer::start().expect("redis-server");
    let seed = format!("127.0.0.1:{}", server.port());
    let cfg = RedisSinkConfig {
        url: "redis://cluster".into(),
        cluster: Some(RedisClusterConfig {
            nodes: vec![seed.clone()],
        }),
        ..RedisSinkConfig::default()
    };
    let message = refusal(&cfg).await;
    assert!(
        message.contains(&format!("{seed} is not a Redis Cluster node")),
        "{message}"
    );
}

#[tokio::test]
async fn a_cluster_setting_at_a_cluster_says_the_sink_is_not_built_yet() {
    let cluster = one_node_cluster();
    let cfg = RedisSinkConfig {
        url: "redis://cluster".into(),
        cluster: Some(RedisClusterConfig {
            // An unreachable seed first: the next one answers.
            nodes: vec!["127.0.0.1:1".into(), cluster.seeds()[0].clone()],
        }),
        ..RedisSinkConfig::default()
    };
    let message = refusal(&cfg).await;
    assert!(
        message.contains("cannot write to a cluster yet"),
        "{message}"
    );
}
