//! The cluster sink's atomic unit (`sink/redis/cluster/unit.rs`) against a real Redis Cluster:
//! it applies once, refuses a stale expectation, and refuses whole, before writing anything,
//! when a slot is migrating, is served elsewhere, or its fence already migrated. These are the
//! claims of the cluster module's argument, checked by experiment.

use redis::aio::MultiplexedConnection;
use streamjob_worker::sink::redis::cluster::fence::{SlotFence, UnitMark};
use streamjob_worker::sink::redis::cluster::slot::{key_slot, SLOT_TAGS};
use streamjob_worker::sink::redis::cluster::unit::{run, SlotCommands, Unit, UnitReply, UnitSlot};
use streamjob_worker::testkit::redis_cluster::{ClusterOptions, NodeInfo, RedisCluster};

const FIELD_PARTITION: i32 = 3;

fn fence_key(slot: u16) -> String {
    format!(
        "streamjob:trace:fence:austinTraceLog:{{{}}}",
        SLOT_TAGS.tag(slot)
    )
}

fn owner(nodes: &[NodeInfo], slot: u16) -> u16 {
    nodes
        .iter()
        .find(|n| n.primary && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
        .map(|n| n.port)
        .expect("every slot has a primary")
}

/// `count` keys `{stem}{i}` whose slots the primary at `port` serves, in distinct slots.
fn keys_on(nodes: &[NodeInfo], port: u16, stem: &str, count: usize) -> Vec<String> {
    let mut slots = Vec::new();
    (0..)
        .map(|i| format!("{stem}{i}"))
        .filter(|key| {
            let slot = key_slot(key.as_bytes());
            owner(nodes, slot) == port && !slots.contains(&slot) && {
                slots.push(slot);
                true
            }
        })
        .take(count)
        .collect()
}

fn lpush_slot(key: &str, value: &str, expected: Option<SlotFence>, new: SlotFence) -> UnitSlot {
    let slot = key_slot(key.as_bytes());
    UnitSlot {
        slot,
        fence_key: fence_key(slot),
        expected,
        new,
        commands: SlotCommands::of(&[&[&b"LPUSH"[..], key.as_bytes(), value.as_bytes()]]),
    }
}

fn unit(anchor: u16, mark_expected: Option<UnitMark>, seq: u64, slots: Vec<UnitSlot>) -> Unit {
    Unit {
        partition: FIELD_PARTITION,
        mark_key: fence_key(anchor),
        mark_expected,
        mark_new: UnitMark {
            epoch: 1,
            seq,
            from: 0,
            next: None,
            series: Default::default(),
        },
        slots,
    }
}

async fn conn(port: u16) -> MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

async fn len(conn: &mut MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("LLEN")
        .arg(key)
        .query_async(conn)
        .await
        .expect("LLEN")
}

fn three_primaries() -> RedisCluster {
    RedisCluster::start_with(ClusterOptions {
        primaries: 3,
        replicas: 0,
        persistence: false,
    })
    .expect("cluster")
}

fn anchor_of(node: &NodeInfo) -> u16 {
    node.slots[0].0
}

#[tokio::test]
async fn a_unit_applies_once_and_a_stale_expectation_is_refused_without_writes() {
    let cluster = three_primaries();
    let nodes = cluster.topology().expect("topology");
    let node = nodes.iter().find(|n| n.primary).expect("a primary").clone();
    let keys = keys_on(&nodes, node.port, "user", 3);
    let mut c = conn(node.port).await;
    let batch = SlotFence {
        epoch: 1,
        from: 0,
        next: 10,
    };
    let slots: Vec<UnitSlot> = keys
        .iter()
        .map(|k| lpush_slot(k, "v", None, batch))
        .collect();
    let first = unit(anchor_of(&node), None, 1, slots.clone());
    let reply = run(&mut c, &first).await.expect("unit runs");
    assert!(
        matches!(
            reply,
            UnitReply::Applied {
                commands: 7,
                write_errors: 0,
                ..
            }
        ),
        "{reply:?}"
    );
    // The same unit again: the anchor's mark is no longer empty.
    let again = run(&mut c, &first).await.expect("unit runs");
    assert_eq!(
        again,
        UnitReply::Changed {
            slot: None,
            stored: "1:1:0".into()
        }
    );
    // With the right mark but a stale slot expectation: refused at that slot, nothing written.
    let mark = Some(first.mark_new);
    let replay = unit(anchor_of(&node), mark, 2, slots);
    let reply = run(&mut c, &replay).await.expect("unit runs");
    assert_eq!(
        reply,
        UnitReply::Changed {
            slot: Some(key_slot(keys[0].as_bytes())),
            stored: batch.to_string()
        }
    );
    for key in &keys {
        assert_eq!(len(&mut c, key).await, 1, "{key}");
    }
}

#[tokio::test]
async fn a_slot_served_elsewhere_refuses_the_whole_unit_before_any_write() {
    let cluster = three_primaries();
    let nodes = cluster.topology().expect("topology");
    let primaries: Vec<&NodeInfo> = nodes.iter().filter(|n| n.primary).collect();
    let (here, there) = (primaries[0], primaries[1]);
    let local = keys_on(&nodes, here.port, "local", 1).remove(0);
    let remote = keys_on(&nodes, there.port, "remote", 1).remove(0);
    let batch = SlotFence {
        epoch: 1,
        from: 0,
        next: 1,
    };
    let mut c = conn(here.port).await;
    let mixed = unit(
        anchor_of(here),
        None,
        1,
        vec![
            lpush_slot(&local, "v", None, batch),
            lpush_slot(&remote, "v", None, batch),
        ],
    );
    let reply = run(&mut c, &mixed).await.expect("unit runs");
    assert!(
        matches!(&reply, UnitReply::NotHere { slot: Some(s), .. } if *s == key_slot(remote.as_bytes())),
        "{reply:?}"
    );
    assert_eq!(
        len(&mut c, &local).await,
        0,
        "nothing written before the refusal"
    );
    // A unit whose declared key is elsewhere is redirected by Redis itself.
    let elsewhere = unit(
        anchor_of(here),
        None,
        1,
        vec![lpush_slot(&remote, "v", None, batch)],
    );
    let reply = run(&mut c, &elsewhere).await.expect("unit runs");
    assert_eq!(
        reply,
        UnitReply::Redirected {
            ask: false,
            address: format!("127.0.0.1:{}", there.port)
        }
    );
}

async fn setslot(port: u16, slot: u16, state: &str, id: &str) {
    let mut c = conn(port).await;
    let _: () = redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg(state)
        .arg(id)
        .query_async(&mut c)
        .await
        .expect("SETSLOT");
}

async fn migrate(from: u16, to: u16, key: &str) {
    let mut c = conn(from).await;
    let _: () = redis::cmd("MIGRATE")
        .arg("127.0.0.1")
        .arg(to)
        .arg("")
        .arg(0)
        .arg(5000)
        .arg("KEYS")
        .arg(key)
        .query_async(&mut c)
        .await
        .expect("MIGRATE");
}

#[tokio::test]
async fn a_migrating_slot_applies_only_where_all_its_keys_are() {
    let cluster = three_primaries();
    let nodes = cluster.topology().expect("topology");
    let primaries: Vec<&NodeInfo> = nodes.iter().filter(|n| n.primary).collect();
    let (source, target) = (primaries[0], primaries[1]);
    let mut keys = keys_on(&nodes, source.port, "k", 3);
    let (other, old, anchor) = (keys.remove(0), keys.remove(0), anchor_of(source));
    let slot = key_slot(old.as_bytes());
    // A key in the moving slot that does not exist yet, and one that does.
    let new = format!("{{{old}}}new");
    let mut c = conn(source.port).await;
    let batch = |next: i64| SlotFence {
        epoch: 1,
        from: next - 1,
        next,
    };
    let seed = unit(anchor, None, 1, vec![lpush_slot(&old, "a", None, batch(1))]);
    assert!(matches!(
        run(&mut c, &seed).await.expect("runs"),
        UnitReply::Applied { .. }
    ));
    setslot(target.port, slot, "IMPORTING", &source.id).await;
    setslot(source.port, slot, "MIGRATING", &target.id).await;

    let mark = |seq: u64| {
        Some(UnitMark {
            epoch: 1,
            seq,
            from: 0,
            next: None,
            series: Default::default(),
        })
    };
    // All of the slot's keys (its fence and `old`) still on the source: applied there.
    let present = unit(
        anchor,
        mark(1),
        2,
        vec![lpush_slot(&old, "b", Some(batch(1)), batch(2))],
    );
    let reply = run(&mut c, &present).await.expect("runs");
    assert!(matches!(reply, UnitReply::Applied { .. }), "{reply:?}");
    // A new key in the migrating slot, with a non-migrating slot first: refused whole.
    let creating = unit(
        anchor,
        mark(2),
        3,
        vec![
            lpush_slot(&other, "c", None, batch(3)),
            lpush_slot(&new, "c", Some(batch(2)), batch(3)),
        ],
    );
    let reply = run(&mut c, &creating).await.expect("runs");
    assert!(
        matches!(reply, UnitReply::Migrating { slot: s, .. } if s == slot),
        "{reply:?}"
    );
    assert_eq!(
        len(&mut c, &other).await,
        0,
        "nothing written before the refusal"
    );
    // The fence migrated, `old` not yet: refused too (the unit's first slot stays on the source).
    migrate(source.port, target.port, &fence_key(slot)).await;
    let split = unit(
        anchor,
        mark(2),
        3,
        vec![
            lpush_slot(&other, "c", None, batch(3)),
            lpush_slot(&old, "c", Some(batch(2)), batch(3)),
        ],
    );
    let reply = run(&mut c, &split).await.expect("runs");
    assert!(
        matches!(reply, UnitReply::Migrating { slot: s, .. } if s == slot),
        "{reply:?}"
    );
    assert_eq!(
        len(&mut c, &other).await,
        0,
        "nothing written before the refusal"
    );
    assert_eq!(len(&mut c, &old).await, 2);
}
