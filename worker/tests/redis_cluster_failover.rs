//! Issue #25 (c) at the unit level: a primary SIGKILLed and its replica promoted without writes
//! the primary had acknowledged. The owner's next unit on the promoted node is refused at the
//! node's unit mark before it writes anything; the owner reads the fences back, rewinds, and
//! re-applies exactly what the shard lost. The cluster then holds exactly what a single node
//! that never failed holds (every list entry, counter and expiry).

mod redis_support;

use std::collections::HashMap;
use std::time::SystemTime;

use redis_support::*;
use streamjob_worker::sink::redis::cluster::fence::{rewind_point, SlotPositions, UnitMark};
use streamjob_worker::sink::redis::cluster::plan::{units, Owner, SlotMap};
use streamjob_worker::sink::redis::cluster::read::read_slots;
use streamjob_worker::sink::redis::cluster::slot::key_slot;
use streamjob_worker::sink::redis::cluster::unit::{run, UnitReply};
use streamjob_worker::sink::redis::{Batch, Layout};
use streamjob_worker::testkit::redis::RedisServer;
use streamjob_worker::testkit::redis_cluster::RedisCluster;
use streamjob_worker::transform::AnchorInfo;

const PARTITION: i32 = 0;

fn events(batch: usize) -> Vec<AnchorInfo<'static>> {
    (0..300)
        .map(|i| {
            let n = batch * 300 + i;
            event(&format!(
                r#"{{"businessId":{},"ids":["1380000{:04}","1390000{:04}"],"logTimestamp":{},"messageId":"m{}","state":{}}}"#,
                1000000120240101i64 + 100_000_000 * (n as i64 % 5),
                n % 200,
                n % 50,
                1_700_000_000_000i64 + n as i64,
                n / 2,
                [10, 60, 64][n % 3]
            ))
        })
        .collect()
}

/// The slot map as a live primary sees it (the seeds may include the killed one).
async fn primary_slot_map(cluster: &RedisCluster) -> SlotMap {
    let primary = cluster.primaries().expect("primaries")[0];
    slot_map(&format!("127.0.0.1:{}", cluster.node(primary).port())).await
}

/// What the owner knows: every slot's fence and every anchor's mark, as it expects them.
#[derive(Default)]
struct Knowledge {
    positions: SlotPositions,
    marks: HashMap<u16, UnitMark>,
    seq: u64,
}

impl Knowledge {
    /// Applies `batch`'s units; the refusals, by node.
    async fn apply(
        &mut self,
        layout: &Layout,
        map: &SlotMap,
        batch: &Batch,
    ) -> Vec<(String, UnitReply)> {
        self.seq += 1;
        let owner = Owner {
            layout,
            map,
            positions: &self.positions,
            marks: &self.marks,
            epoch: batch.epoch,
            seq: self.seq,
            clock: None,
        };
        let planned = units(batch, &owner).expect("units");
        let mut refused = Vec::new();
        for (node, unit) in planned {
            match run(&mut node_conn(&node).await, &unit)
                .await
                .expect("unit runs")
            {
                UnitReply::Applied {
                    write_errors: 0, ..
                } => {
                    self.marks
                        .insert(key_slot(unit.mark_key.as_bytes()), unit.mark_new);
                    for slot in &unit.slots {
                        self.positions.set(slot.slot, Some(slot.new));
                    }
                }
                other => refused.push((node, other)),
            }
        }
        refused
    }

    /// Reads back what every slot holds (a claim's or a rewind's read).
    async fn read(layout: &Layout, map: &SlotMap) -> Self {
        let mut read = Self::default();
        for node in map.nodes() {
            let slots = map.slots_of(node);
            for slot in read_slots(&mut node_conn(node).await, layout, PARTITION, &slots)
                .await
                .expect("read fences")
            {
                read.positions.set(slot.slot, slot.fence);
                if let Some(mark) = slot.mark {
                    read.marks.insert(slot.slot, mark);
                }
            }
        }
        read.seq = read.marks.values().map(|m| m.seq).max().unwrap_or(0);
        read
    }
}

#[tokio::test]
async fn heavy_a_promoted_replica_that_lost_acknowledged_units_is_rewound_exactly() {
    // The reference: a single node that never fails.
    let server = RedisServer::start().expect("redis-server");
    let sink = connect_sink(&server, "").await;
    let epoch = sink
        .claim_from(PARTITION, 0, Some(0))
        .await
        .expect("claim")
        .fence
        .epoch;
    let now = SystemTime::now();
    let batches: Vec<Batch> = (0..3)
        .map(|b| batch_of(&sink, PARTITION, epoch, 300 * b as i64, &events(b), now))
        .collect();
    for batch in &batches {
        sink.apply(batch).await.expect("single-node apply");
    }
    let mut single = dump(&mut raw(&server).await, "").await;
    single.retain(|key, _| !key.starts_with("streamjob:"));
    let layout = sink.layout();

    let mut cluster = RedisCluster::start().expect("3 primaries, 3 replicas");
    let map = primary_slot_map(&cluster).await;
    let mut owner = Knowledge::default();
    assert!(owner.apply(layout, &map, &batches[0]).await.is_empty());
    let victim = cluster.primaries().expect("primaries")[0];
    for node in map.nodes() {
        let mut c = node_conn(node).await;
        let acked: i64 = redis::cmd("WAIT")
            .arg(1)
            .arg(5000)
            .query_async(&mut c)
            .await
            .expect("WAIT");
        assert_eq!(acked, 1, "{node} replicated batch 0");
    }
    // The victim's replica misses batch 1, which the victim acknowledges, then takes over.
    let replica = cluster.replicas_of(victim).expect("replicas")[0];
    cluster
        .cut_off_replica(victim, replica)
        .expect("replica cut off");
    assert!(owner.apply(layout, &map, &batches[1]).await.is_empty());
    let promoted = cluster.kill_primary(victim).expect("failover");
    assert_eq!(promoted, replica);
    let map = primary_slot_map(&cluster).await;
    let promoted_address = format!("127.0.0.1:{}", cluster.node(promoted).port());

    // Batch 2: applied on the healthy shards, refused on the promoted one at its mark.
    let refused = owner.apply(layout, &map, &batches[2]).await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    let (node, reply) = &refused[0];
    assert_eq!(node, &promoted_address);
    assert!(
        matches!(reply, UnitReply::Changed { slot: None, .. }),
        "{reply:?}"
    );

    // The rewind: read everything back; the lost slots go back to batch 1's start.
    let stored = Knowledge::read(layout, &map).await;
    let lost_mark_from = stored
        .marks
        .get(&map.anchor(&promoted_address).expect("anchor"))
        .map_or(0, |m| m.from);
    let resume = rewind_point(&owner.positions, &stored.positions, lost_mark_from);
    // At least back to batch 1's start, which the promoted shard lost.
    assert!(matches!(resume, Some(r) if r <= 300), "{resume:?}");
    let mut owner = stored;
    for batch in batches
        .iter()
        .filter(|b| b.next_offset > resume.unwrap_or(0))
    {
        let refused = owner.apply(layout, &map, batch).await;
        assert!(refused.is_empty(), "{refused:?}");
    }
    assert_same_state(&single, &cluster_dump(&map).await);
}
