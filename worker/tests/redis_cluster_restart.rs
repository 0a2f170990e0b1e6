//! Issue #25 (d) at the apply-loop level: the whole cluster SIGKILLed and restarted from its
//! AOF (`appendfsync always`: every acknowledged unit is on disk), and a worker that resumes
//! after it from an older checkpoint with what it read of the fences before the last batches:
//! its replays are refused at their compare-and-set, it reads the fences again and skips them.
//! The restarted nodes have lost their script cache, so the units load it again (`NOSCRIPT`).
//! The cluster ends up holding exactly what a single node given the same batches holds. Losing the AOF's last second instead is the
//! failover case on every shard at once (`redis_cluster_failover.rs`).

mod redis_support;

use std::time::SystemTime;

use redis_support::*;
use streamjob_worker::sink::redis::cluster::apply::ClusterOwner;
use streamjob_worker::testkit::redis::RedisServer;
use streamjob_worker::testkit::redis_cluster::{ClusterOptions, RedisCluster};
use streamjob_worker::transform::AnchorInfo;

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

#[tokio::test]
async fn heavy_a_cluster_restarted_from_its_aof_neither_loses_nor_doubles_a_write() {
    let server = RedisServer::start().expect("redis-server");
    let sink = connect_sink(&server, "").await;
    let epoch = sink
        .claim_from(0, 0, Some(0))
        .await
        .expect("claim")
        .fence
        .epoch;
    let mut cluster = RedisCluster::start_with(ClusterOptions {
        primaries: 3,
        replicas: 0,
        persistence: true,
    })
    .expect("cluster");
    let map = slot_map(&cluster.seeds()[0]).await;
    let mut owner = ClusterOwner::new(sink.layout().clone(), 0, epoch, map.clone());
    let now = SystemTime::now();
    let batches: Vec<_> = (0..10)
        .map(|b| batch_of(&sink, 0, epoch, (b * 200) as i64, &events(b), now))
        .collect();
    for batch in &batches {
        sink.apply(batch).await.expect("single-node apply");
    }
    // A second owner reads the fences after batch 2, as a worker would at its claim, and then
    // stops hearing of the first one's progress.
    let mut restarted = ClusterOwner::new(sink.layout().clone(), 0, epoch, map.clone());
    for (b, batch) in batches.iter().enumerate().take(5) {
        if b == 3 {
            restarted.reread().await.expect("read the fences");
        }
        owner.apply(batch, None).await.expect("cluster apply");
    }
    cluster.restart_all().expect("restart from the AOF");
    // It resumes from an older checkpoint: batches 3 and 4 again, which every slot has.
    for batch in &batches[3..] {
        restarted
            .apply(batch, None)
            .await
            .expect("cluster apply after the restart");
    }
    let mut single = dump(&mut raw(&server).await, "").await;
    single.retain(|key, _| !key.starts_with("streamjob:"));
    let clustered = cluster_dump(&map).await;
    assert_eq!(
        single.keys().collect::<Vec<_>>(),
        clustered.keys().collect::<Vec<_>>()
    );
    for (key, expected) in &single {
        assert_eq!(clustered[key].content, expected.content, "{key}");
    }
}
