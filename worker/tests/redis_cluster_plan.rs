//! A batch built by the single node's batch builder, split into units (`cluster/plan.rs`) and
//! applied to a real 3-primary cluster, leaves exactly the keys, values and expiries the single
//! node's apply leaves; applied again it changes nothing.

mod redis_support;

use std::collections::HashMap;
use std::time::SystemTime;

use redis_support::*;
use streamjob_worker::sink::redis::cluster::fence::{SlotFence, SlotPositions};
use streamjob_worker::sink::redis::cluster::plan::{units, Owner, SlotMap};
use streamjob_worker::sink::redis::cluster::slot::key_slot;
use streamjob_worker::sink::redis::cluster::unit::{run, UnitReply};
use streamjob_worker::testkit::redis::RedisServer;
use streamjob_worker::testkit::redis_cluster::{ClusterOptions, RedisCluster};
use streamjob_worker::transform::AnchorInfo;

fn events() -> Vec<AnchorInfo<'static>> {
    (0..400)
        .map(|i| {
            let state = [10, 60, 64, 70][i % 4];
            let template = 1000000120240101i64 + 100_000_000 * (i as i64 % 7);
            event(&format!(
                r#"{{"businessId":{template},"ids":["1380000{:04}","1390000{:04}"],"logTimestamp":{},"messageId":"m{}","state":{state}}}"#,
                i % 150,
                i % 40,
                1_700_000_000_000i64 + i as i64,
                i / 3
            ))
        })
        .collect()
}

#[tokio::test]
async fn a_batch_split_into_units_leaves_the_cluster_as_the_single_node_leaves_redis() {
    let server = RedisServer::start().expect("redis-server");
    let sink = connect_sink(&server, "").await;
    let epoch = sink
        .claim_from(0, 0, Some(100))
        .await
        .expect("claim")
        .fence
        .epoch;
    let batch = batch_of(&sink, 0, epoch, 100, &events(), SystemTime::now());
    sink.apply(&batch).await.expect("single-node apply");
    let mut single = dump(&mut raw(&server).await, "").await;
    single.retain(|key, _| !key.starts_with("streamjob:"));

    let cluster = RedisCluster::start_with(ClusterOptions {
        primaries: 3,
        replicas: 0,
        persistence: false,
    })
    .expect("cluster");
    let mut seed = node_conn(&cluster.seeds()[0]).await;
    let slots: redis::Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut seed)
        .await
        .expect("CLUSTER SLOTS");
    let map = SlotMap::from_slots_reply(&slots).expect("slot map");
    let mut positions = SlotPositions::default();
    let mut marks = HashMap::new();
    let owner = Owner {
        layout: sink.layout(),
        map: &map,
        positions: &positions,
        marks: &marks,
        epoch,
        seq: 1,
        clock: None,
    };
    let planned = units(&batch, &owner).expect("units");
    assert_eq!(planned.len(), 3, "one unit per primary");
    for (node, unit) in &planned {
        let reply = run(&mut node_conn(node).await, unit)
            .await
            .expect("unit runs");
        assert!(
            matches!(
                reply,
                UnitReply::Applied {
                    write_errors: 0,
                    ..
                }
            ),
            "{reply:?}"
        );
    }
    let applied = cluster_dump(&map).await;
    assert_same_state(&single, &applied);

    // The same units again: refused at their marks, nothing changes.
    for (node, unit) in &planned {
        let reply = run(&mut node_conn(node).await, unit)
            .await
            .expect("unit runs");
        assert!(
            matches!(reply, UnitReply::Changed { slot: None, .. }),
            "{reply:?}"
        );
    }
    assert_eq!(cluster_dump(&map).await, applied);

    // An owner that knows what it wrote plans nothing for the batch again.
    for (_, unit) in &planned {
        marks.insert(key_slot(unit.mark_key.as_bytes()), unit.mark_new);
        for slot in &unit.slots {
            positions.set(slot.slot, Some(slot.new));
        }
    }
    let owner = Owner {
        layout: sink.layout(),
        map: &map,
        positions: &positions,
        marks: &marks,
        epoch,
        seq: 2,
        clock: None,
    };
    assert!(units(&batch, &owner).expect("units").is_empty());
    let written: Vec<SlotFence> = planned
        .iter()
        .flat_map(|(_, u)| u.slots.iter().map(|s| s.new))
        .collect();
    assert!(written.iter().all(|f| f.from == 100 && f.next == 500));
}
