//! The Redis Cluster test kit (`testkit/redis_cluster.rs`) does what the cluster sink's tests
//! need: start 3 primaries with replicas, move 1,000 slots with their keys, fail a primary over
//! to its replica, and spread the slots over an added empty primary, keys intact throughout.

use std::collections::BTreeMap;

use streamjob_worker::sink::redis::cluster::slot::key_slot;
use streamjob_worker::testkit::redis_cluster::{NodeInfo, RedisCluster};

const KEYS: usize = 3000;

/// The keys, grouped by the port of the primary that serves each one's slot now.
fn by_owner(cluster: &RedisCluster) -> BTreeMap<u16, Vec<usize>> {
    let nodes = cluster.topology().expect("topology");
    let mut owners: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
    for i in 0..KEYS {
        let slot = key_slot(format!("key{i}").as_bytes());
        let port = nodes
            .iter()
            .find(|n| {
                n.primary && !n.failed && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
            })
            .map(|n| n.port)
            .unwrap_or_else(|| panic!("no primary serves slot {slot}"));
        owners.entry(port).or_default().push(i);
    }
    owners
}

fn connect(port: u16) -> redis::Connection {
    redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .expect("url")
        .get_connection()
        .expect("connect")
}

fn write_all(cluster: &RedisCluster) {
    for (port, keys) in by_owner(cluster) {
        let mut pipe = redis::pipe();
        for i in keys {
            pipe.set(format!("key{i}"), i).ignore();
        }
        pipe.query::<()>(&mut connect(port)).expect("SETs");
    }
}

/// Every key is at the primary that serves its slot now, with its value.
fn assert_all_there(cluster: &RedisCluster) {
    for (port, keys) in by_owner(cluster) {
        let mut pipe = redis::pipe();
        for i in &keys {
            pipe.get(format!("key{i}"));
        }
        let values: Vec<Option<usize>> = pipe.query(&mut connect(port)).expect("GETs");
        let expected: Vec<Option<usize>> = keys.iter().map(|i| Some(*i)).collect();
        assert_eq!(values, expected, "the keys at port {port}");
    }
}

fn slots_of(cluster: &RedisCluster, nodes: &[NodeInfo], index: usize) -> usize {
    let port = cluster.node(index).port();
    nodes
        .iter()
        .find(|n| n.port == port)
        .map_or(0, NodeInfo::slot_count)
}

#[test]
fn heavy_the_cluster_kit_reshards_fails_over_and_rebalances_without_losing_keys() {
    let mut cluster = RedisCluster::start().expect("cluster of 3 primaries and 3 replicas");
    let primaries = cluster.primaries().expect("primaries");
    assert_eq!(primaries.len(), 3);
    write_all(&cluster);
    eprintln!("started and written");

    let before = cluster.topology().expect("topology");
    let (from, to) = (primaries[0], primaries[1]);
    cluster.reshard(from, to, 1000, 10).expect("reshard");
    eprintln!("resharded");
    let after = cluster.topology().expect("topology");
    assert_eq!(
        slots_of(&cluster, &after, from),
        slots_of(&cluster, &before, from) - 1000
    );
    assert_eq!(
        slots_of(&cluster, &after, to),
        slots_of(&cluster, &before, to) + 1000
    );
    assert_all_there(&cluster);

    // Acknowledged by the replicas before the kill, so nothing may be lost.
    for &p in &primaries {
        let reply = cluster
            .node(p)
            .command(&["WAIT", "1", "5000"])
            .expect("WAIT");
        assert!(reply.starts_with(":1"), "{reply}");
    }
    let victim = primaries[2];
    let replicas = cluster.replicas_of(victim).expect("replicas");
    let promoted = cluster.kill_primary(victim).expect("failover");
    eprintln!("failed over");
    assert!(
        replicas.contains(&promoted),
        "{promoted} not in {replicas:?}"
    );
    assert_all_there(&cluster);

    let added = cluster.add_primary().expect("add a primary");
    eprintln!("added a primary");
    cluster.rebalance(10).expect("rebalance");
    let balanced = cluster.topology().expect("topology");
    assert!(slots_of(&cluster, &balanced, added) > 3000, "{balanced:?}");
    assert_all_there(&cluster);
}
