//! A configuration pointed at the wrong kind of Redis gets one clear message: a single-node URL
//! at a cluster node (which would otherwise meet `MOVED` forever), and `sink.redis.cluster` at a
//! plain Redis. And the sink itself on a cluster, through the calls the pipeline makes.

mod redis_support;

use std::time::SystemTime;

use redis_support::*;
use streamjob_worker::config::{RedisClusterConfig, RedisSinkConfig};
use streamjob_worker::sink::redis::cluster::read::read_slots;
use streamjob_worker::sink::redis::{ApplyOutcome, RedisSink, SinkError};
use streamjob_worker::testkit::redis::RedisServer;
use streamjob_worker::testkit::redis_cluster::{ClusterOptions, RedisCluster};
use streamjob_worker::transform::AnchorInfo;

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

fn cluster_config(cluster: &RedisCluster) -> RedisSinkConfig {
    RedisSinkConfig {
        url: "redis://cluster".into(),
        cluster: Some(RedisClusterConfig {
            // An unreachable seed first: the next one answers.
            nodes: vec!["127.0.0.1:1".into(), cluster.seeds()[0].clone()],
        }),
        ..RedisSinkConfig::default()
    }
}

fn events(batch: usize) -> Vec<AnchorInfo<'static>> {
    (0..200)
        .map(|i| {
            let n = batch * 200 + i;
            event(&format!(
                r#"{{"businessId":{},"ids":["1380000{:04}","u{}"],"logTimestamp":{},"messageId":"m{}","state":{}}}"#,
                1000000120240101i64 + 100_000_000 * (n as i64 % 3),
                n % 100,
                n % 700,
                1_700_000_000_000i64 + n as i64,
                n / 3,
                [10, 60, 70][n % 3]
            ))
        })
        .collect()
}

/// A plain Redis with a sink on it (the reference), and a 3-primary cluster with a sink on it.
async fn single_and_cluster() -> (RedisServer, RedisSink, RedisCluster, RedisSink) {
    let server = RedisServer::start().expect("redis-server");
    let single = connect_sink(&server, "").await;
    let cluster = RedisCluster::start_with(ClusterOptions {
        primaries: 3,
        replicas: 0,
        persistence: false,
    })
    .expect("cluster");
    let sink = RedisSink::connect(&cluster_config(&cluster), JOB, TOPIC)
        .await
        .expect("the cluster sink connects");
    (server, single, cluster, sink)
}

/// The sink on a cluster, through the same calls the pipeline makes: a claim, applies, a
/// replay (already applied), a fence read, a second owner's claim that shuts out the first,
/// and a state equal to a single node's.
#[tokio::test]
async fn a_cluster_setting_at_a_cluster_claims_applies_and_fences_like_a_single_node() {
    let (server, single, cluster, sink) = single_and_cluster().await;
    assert_eq!(sink.topology(), "cluster");
    let claim = sink.claim_from(0, 1, Some(0)).await.expect("claim");
    assert!(claim.was_missing);
    assert_eq!(claim.fence.next_offset, Some(0));
    let epoch = claim.fence.epoch;
    let single_epoch = single
        .claim_from(0, 1, Some(0))
        .await
        .expect("claim")
        .fence
        .epoch;
    let now = SystemTime::now();
    for b in 0..4 {
        let offset = (b * 200) as i64;
        let batch = batch_of(&sink, 0, epoch, offset, &events(b), now);
        let outcome = sink.apply(&batch).await.expect("cluster apply");
        assert_eq!(applied_events(&outcome), 200, "{outcome:?}");
        let reference = batch_of(&single, 0, single_epoch, offset, &events(b), now);
        single.apply(&reference).await.expect("single-node apply");
    }
    // A replay of the last batch writes nothing.
    let replay = batch_of(&sink, 0, epoch, 600, &events(3), now);
    assert_eq!(
        sink.apply(&replay).await.expect("replay"),
        ApplyOutcome::AlreadyApplied
    );
    let fence = sink.read_fence(0).await.expect("fence").expect("some");
    assert_eq!(fence.next_offset, Some(800));

    // A second owner (another process) resumes after the last batch every node kept, with a
    // higher epoch; a replay of that batch writes nothing; the first owner is fenced at its
    // next apply.
    let other = RedisSink::connect(&cluster_config(&cluster), JOB, TOPIC)
        .await
        .expect("connects");
    let taken = other.claim_from(0, 1, None).await.expect("second claim");
    assert!(taken.fence.epoch > epoch, "{taken:?}");
    assert_eq!(taken.fence.next_offset, Some(800));
    let resumed = batch_of(&other, 0, taken.fence.epoch, 600, &events(3), now);
    assert_eq!(
        other.apply(&resumed).await.expect("resumed"),
        ApplyOutcome::AlreadyApplied
    );
    let next = batch_of(&other, 0, taken.fence.epoch, 800, &events(4), now);
    assert_eq!(
        applied_events(&other.apply(&next).await.expect("apply")),
        200
    );
    let zombie = batch_of(&sink, 0, epoch, 800, &events(4), now);
    match sink.apply(&zombie).await {
        Err(SinkError::Fenced { .. }) => {}
        other => panic!("the old owner must be fenced, not {other:?}"),
    }
    let reference = batch_of(&single, 0, single_epoch, 800, &events(4), now);
    single.apply(&reference).await.expect("single-node apply");

    let mut expected = dump(&mut raw(&server).await, "").await;
    expected.retain(|key, _| !key.starts_with("streamjob:"));
    let map = slot_map(&cluster.seeds()[0]).await;
    assert_same_state(&expected, &cluster_dump(&map).await);
}

/// A batch that writes nothing (only undecodable records, dead-lettered) still moves the
/// partition on every primary, as it moves a single node's fence: the job commits past it, so
/// a claim that resumed before it would be reported as Redis losing acknowledged writes (the
/// job had committed further than the fences say) and re-read it. Seen failing before the fix:
/// the second claim resumed at 200, the batch's start.
#[tokio::test]
async fn a_batch_that_writes_nothing_moves_every_node_so_the_next_claim_resumes_after_it() {
    let (server, single, cluster, clustered) = single_and_cluster().await;
    let now = SystemTime::now();
    let mut resumed = Vec::new();
    for sink in [&single, &clustered] {
        let epoch = sink
            .claim_from(0, 1, Some(0))
            .await
            .expect("claim")
            .fence
            .epoch;
        let batch = batch_of(sink, 0, epoch, 0, &events(0), now);
        assert_eq!(
            applied_events(&sink.apply(&batch).await.expect("apply")),
            200
        );
        let mut undecodable = sink.batch_builder(0, epoch);
        for offset in 200..210 {
            undecodable.push_skipped(offset);
        }
        let batch = undecodable.build(now);
        assert_eq!(batch.next_offset, 210);
        assert_eq!(applied_events(&sink.apply(&batch).await.expect("apply")), 0);
        let fence = sink.read_fence(0).await.expect("fence").expect("some");
        assert_eq!(fence.next_offset, Some(210), "{}", sink.topology());
        let other = match sink.topology() {
            "cluster" => RedisSink::connect(&cluster_config(&cluster), JOB, TOPIC).await,
            _ => Ok(connect_sink(&server, "").await),
        }
        .expect("connects");
        let taken = other.claim_from(0, 1, None).await.expect("second claim");
        resumed.push((sink.topology(), taken.fence.next_offset));
    }
    assert_eq!(resumed[0].1, Some(210), "{resumed:?}");
    assert_eq!(resumed[1].1, resumed[0].1, "{resumed:?}");
}

/// A fence read against a slot map gone stale (a claim or a rewind while a reshard moves
/// slots) is a wait that the caller retries after reading the map again, not a failure that
/// stops the partition. Seen failing before: a script error ("Pipeline failure: … Moved"), as
/// the reshard process test logged for a partition's claims (retried only by giving the
/// partition back and reassigning it) until the slots stopped moving.
#[tokio::test]
async fn a_fence_read_of_a_slot_served_elsewhere_is_a_retryable_wait() {
    let (_server, _single, cluster, sink) = single_and_cluster().await;
    let map = slot_map(&cluster.seeds()[0]).await;
    let here = &map.nodes()[0];
    let own = map.slots_of(here)[0];
    let elsewhere = map.slots_of(&map.nodes()[1])[0];
    let read = read_slots(
        &mut node_conn(here).await,
        sink.layout(),
        0,
        &[own, elsewhere],
    )
    .await;
    match read {
        Err(err @ SinkError::Unavailable(_)) => assert!(err.is_retryable(), "{err}"),
        other => panic!("a retryable wait, not {other:?}"),
    }
    let own_only = read_slots(&mut node_conn(here).await, sink.layout(), 0, &[own]).await;
    assert_eq!(own_only.expect("read").len(), 1);
}
