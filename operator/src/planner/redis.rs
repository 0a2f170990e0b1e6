//! The Redis topology in status (pure): `status.job.redis` from the jobmanager's overview, and
//! the `RedisSlotsMigrating` condition while the workers write to a Redis Cluster.
//!
//! A reshard is a normal wait, not a fault: applies to the moving slots wait until it ends and
//! everything else goes on. So the condition is informational: it never touches `Ready` or
//! `Degraded`, and its flips are Normal Events (through `status::condition_events`), one
//! when slots start migrating and one when the last has moved.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use streamjob_worker::api::{RedisMode, RedisTopology};

use crate::crd::{JobProgress, RedisStatus, StreamJobStatus};
use crate::planner::conditions::condition;

/// Present while the workers write to a Redis Cluster: True while slots migrate between shards.
pub const REDIS_SLOTS_MIGRATING: &str = "RedisSlotsMigrating";
/// The reason while slots migrate.
pub const SLOTS_MIGRATING: &str = "SlotsMigrating";
/// The reason once none does.
pub const NO_SLOT_MIGRATING: &str = "NoSlotMigrating";

/// `status.job.redis` from what the jobmanager reported.
pub fn status_of(topology: &RedisTopology) -> RedisStatus {
    RedisStatus {
        mode: topology.mode.to_string(),
        shards: i32::try_from(topology.shards).unwrap_or(i32::MAX),
        primaries: topology.primaries.clone(),
        migrating_slots: i32::try_from(topology.migrating_slots).unwrap_or(i32::MAX),
        last_refresh: i64::try_from(topology.last_refresh_ms)
            .ok()
            .and_then(|ms| Timestamp::from_millisecond(ms).ok())
            .map(Time),
    }
}

/// `RedisSlotsMigrating` from the status' Redis topology: True while slots migrate, False once
/// none does; absent off a cluster. Without a topology this round (no overview, or no
/// taskmanager reported one yet) the previous condition is kept as it was.
pub fn migration_condition(
    previous: Option<&StreamJobStatus>,
    job: Option<&JobProgress>,
    generation: Option<i64>,
    now: Timestamp,
) -> Option<Condition> {
    let kept = || {
        previous
            .and_then(|s| {
                s.conditions
                    .iter()
                    .find(|c| c.type_ == REDIS_SLOTS_MIGRATING)
            })
            .cloned()
    };
    let Some(redis) = job.and_then(|j| j.redis.as_ref()) else {
        return kept();
    };
    if redis.mode != RedisMode::Cluster.to_string() {
        return None;
    }
    let shards = plural(redis.shards, "shard");
    let (migrating, reason, message) = match redis.migrating_slots {
        0 => (
            false,
            NO_SLOT_MIGRATING,
            format!("no slot is migrating between the cluster's {shards}"),
        ),
        n => (
            true,
            SLOTS_MIGRATING,
            format!(
                "{} migrating between the cluster's {shards} (a reshard): applies to them wait \
                 until each has moved",
                plural(n, "slot")
            ),
        ),
    };
    Some(condition(
        previous,
        REDIS_SLOTS_MIGRATING,
        migrating,
        reason,
        message,
        generation,
        now,
    ))
}

fn plural(n: i32, noun: &str) -> String {
    match n {
        1 => format!("1 {noun}"),
        n => format!("{n} {noun}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(migrating: u32) -> RedisTopology {
        RedisTopology {
            mode: RedisMode::Cluster,
            shards: 3,
            primaries: vec!["10.0.0.1:6379".into(), "10.0.0.2:6379".into()],
            migrating_slots: migrating,
            last_refresh_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn the_topology_becomes_status_with_its_read_time() {
        let status = status_of(&cluster(4));
        assert_eq!(status.mode, "cluster");
        assert_eq!((status.shards, status.migrating_slots), (3, 4));
        assert_eq!(status.primaries.len(), 2);
        let read = status.last_refresh.expect("read time").0;
        assert_eq!(read.as_millisecond(), 1_700_000_000_000);
    }
}
