//! One owner's apply loop on a cluster: plan the batch's units from what the owner knows, run
//! them, and act on each refusal until every slot holds the batch.
//!
//! - A migrating slot (`TRYAGAIN` inside the unit): wait with backoff, and from then on give
//!   that slot a unit of its own, so the rest of its node's slots go on.
//! - A slot the node does not serve, or `MOVED`/`ASK` for the call: read the slot map again.
//! - A fence or mark that moved on with an older epoch (a zombie's batch): read the fences again.
//! - A newer epoch: [`SinkError::Fenced`]. A fence or mark behind what the owner wrote (a
//!   promoted replica without acknowledged writes): [`SinkError::Gap`], and the owner rewinds
//!   (`fence::rewind_point`).
//!
//! Waits are normal during a reshard, so they are counted (`ApplyStats`), not logged as
//! warnings. This is the loop the cluster sink will run per batch; the sink itself (claims,
//! metrics, the connection pool) is not built yet.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use super::fence::{mismatch, Mismatch, SlotFence, SlotPositions, UnitMark};
use super::plan::{units_isolating, Owner, SlotMap};
use super::read::read_slots;
use super::slot::key_slot;
use super::unit::{run, Unit, UnitReply};
use crate::sink::redis::window::SeriesMarks;
use crate::sink::redis::{Batch, Layout, SinkError};

/// How long one batch may keep meeting refusals before the apply gives up (retryable).
const GIVE_UP_AFTER: Duration = Duration::from_secs(120);

/// What the waits of an apply were: the metrics of the cluster sink.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub units: u64,
    /// Units refused because a slot was migrating (a `TRYAGAIN` wait).
    pub migrating_waits: u64,
    /// Units whose first slot's fence had already migrated (`ASK`): a wait like the above.
    pub asks: u64,
    /// Slot map refreshes after a slot served elsewhere or `MOVED`.
    pub redirects: u64,
    /// Fences read again after another owner's batch.
    pub rereads: u64,
}

/// What to do after one unit.
enum Step {
    Applied,
    /// Refused for now (a migrating slot): go on with the other units, then wait.
    Wait,
    /// What the owner knows changed (map, fences): plan again, after a wait.
    Replan,
}

/// An owner of one partition on a cluster: what it knows of every slot.
pub struct ClusterOwner {
    pub layout: Layout,
    pub partition: i32,
    pub epoch: u64,
    pub map: SlotMap,
    pub positions: SlotPositions,
    pub marks: HashMap<u16, UnitMark>,
    pub seq: u64,
    /// Slots that were migrating: each gets a unit of its own.
    isolated: HashSet<u16>,
    conns: HashMap<String, MultiplexedConnection>,
}

async fn connect(address: &str) -> Result<MultiplexedConnection, SinkError> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(30)));
    let client = redis::Client::open(format!("redis://{address}/"))
        .map_err(|e| SinkError::Config(format!("`sink.redis.cluster.nodes`: {e}")))?;
    Ok(client
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

impl ClusterOwner {
    /// An owner that knows nothing yet; [`ClusterOwner::reread`] fills it in.
    pub fn new(layout: Layout, partition: i32, epoch: u64, map: SlotMap) -> Self {
        Self {
            layout,
            partition,
            epoch,
            map,
            positions: SlotPositions::default(),
            marks: HashMap::new(),
            seq: 0,
            isolated: HashSet::new(),
            conns: HashMap::new(),
        }
    }

    async fn conn(&mut self, address: &str) -> Result<MultiplexedConnection, SinkError> {
        if let Some(conn) = self.conns.get(address) {
            return Ok(conn.clone());
        }
        let conn = connect(address).await?;
        self.conns.insert(address.to_string(), conn.clone());
        Ok(conn)
    }

    /// Reads the slot map again, from any primary that answers.
    pub async fn refresh_map(&mut self) -> Result<(), SinkError> {
        let mut last = SinkError::Unavailable("no cluster node answers".into());
        for address in self.map.nodes().to_vec() {
            let reply = match self.conn(&address).await {
                Ok(mut conn) => {
                    redis::cmd("CLUSTER")
                        .arg("SLOTS")
                        .query_async(&mut conn)
                        .await
                }
                Err(err) => {
                    last = err;
                    continue;
                }
            };
            match reply {
                Ok(reply) => {
                    self.map = SlotMap::from_slots_reply(&reply)?;
                    return Ok(());
                }
                Err(err) => {
                    self.conns.remove(&address);
                    last = err.into();
                }
            }
        }
        Err(last)
    }

    /// Reads every slot's fence and mark of the partition and takes them as what it knows.
    pub async fn reread(&mut self) -> Result<(), SinkError> {
        let mut positions = SlotPositions::default();
        let mut marks = HashMap::new();
        for address in self.map.nodes().to_vec() {
            let slots = self.map.slots_of(&address);
            let mut conn = self.conn(&address).await?;
            for read in read_slots(&mut conn, &self.layout, self.partition, &slots).await? {
                positions.set(read.slot, read.fence);
                if let Some(mark) = read.mark {
                    marks.insert(read.slot, mark);
                }
            }
        }
        self.seq = self
            .seq
            .max(marks.values().map(|m| m.seq).max().unwrap_or(0));
        self.positions = positions;
        self.marks = marks;
        Ok(())
    }

    /// Applies `batch` until every slot holds it.
    pub async fn apply(&mut self, batch: &Batch) -> Result<ApplyStats, SinkError> {
        let mut stats = ApplyStats::default();
        let started = std::time::Instant::now();
        let mut backoff = Duration::from_millis(5);
        loop {
            self.seq += 1;
            let owner = Owner {
                layout: &self.layout,
                map: &self.map,
                positions: &self.positions,
                marks: &self.marks,
                epoch: self.epoch,
                seq: self.seq,
            };
            let planned = units_isolating(batch, &owner, &self.isolated)?;
            if planned.is_empty() {
                return Ok(stats);
            }
            let mut settled = true;
            for (address, mut unit) in planned {
                stats.units += 1;
                // An earlier unit of this round on the same node moved its mark.
                unit.mark_expected = self.marks.get(&key_slot(unit.mark_key.as_bytes())).copied();
                match self.run_unit(batch, &address, &unit, &mut stats).await? {
                    Step::Applied => {}
                    Step::Wait => settled = false,
                    Step::Replan => {
                        settled = false;
                        break;
                    }
                }
            }
            if !settled {
                if started.elapsed() > GIVE_UP_AFTER {
                    return Err(SinkError::Unavailable(format!(
                        "the cluster kept refusing the batch for {GIVE_UP_AFTER:?}: {stats:?}"
                    )));
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(200));
            }
        }
    }

    /// Runs one unit and learns from its reply.
    async fn run_unit(
        &mut self,
        batch: &Batch,
        address: &str,
        unit: &Unit,
        stats: &mut ApplyStats,
    ) -> Result<Step, SinkError> {
        let reply = match self.conn(address).await {
            Ok(mut conn) => run(&mut conn, unit).await,
            Err(err) => Err(err),
        };
        let reply = match reply {
            Ok(reply) => reply,
            Err(err) if err.is_retryable() => {
                // A node that went away (a failover): the map tells where to go now.
                self.conns.remove(address);
                self.refresh_map().await.ok();
                return Ok(Step::Replan);
            }
            Err(err) => return Err(err),
        };
        match reply {
            UnitReply::Applied {
                first_error: Some(error),
                ..
            } if error.contains("non local key") => {
                // The probe exists so that this cannot happen: a command met a key the node
                // did not hold, after the unit had written (and moved the fences).
                Err(SinkError::Script(format!(
                    "a unit wrote on a node that did not hold all its keys: {error}"
                )))
            }
            UnitReply::Applied { .. } => {
                self.marks
                    .insert(key_slot(unit.mark_key.as_bytes()), unit.mark_new);
                for slot in &unit.slots {
                    self.positions.set(slot.slot, Some(slot.new));
                }
                Ok(Step::Applied)
            }
            UnitReply::Migrating { slot, .. } => {
                stats.migrating_waits += 1;
                self.isolated.insert(slot);
                Ok(Step::Wait)
            }
            UnitReply::Redirected { ask: true, .. } => {
                // The unit's first slot is migrating and its fence already left: the slot map
                // is right (the source still serves it), the slot must wait in a unit of its own.
                stats.asks += 1;
                if let Some(first) = unit.slots.first() {
                    self.isolated.insert(first.slot);
                }
                Ok(Step::Wait)
            }
            UnitReply::NotHere { .. } | UnitReply::Redirected { .. } => {
                stats.redirects += 1;
                self.refresh_map().await?;
                Ok(Step::Replan)
            }
            UnitReply::Changed { slot, stored } => {
                self.changed(batch, unit, slot, &stored)?;
                stats.rereads += 1;
                match self.reread().await {
                    Ok(()) => Ok(Step::Replan),
                    // A node restarted or failed over under the read: its connection is dead.
                    // The unit will be refused again and the read retried.
                    Err(err) if err.is_retryable() => {
                        self.conns.clear();
                        Ok(Step::Replan)
                    }
                    Err(err) => Err(err),
                }
            }
        }
    }

    /// Classifies a fence or mark that is not what the owner expected: fenced and lost end the
    /// apply; a zombie's progress only needs a re-read.
    fn changed(
        &self,
        batch: &Batch,
        unit: &Unit,
        slot: Option<u16>,
        stored: &str,
    ) -> Result<(), SinkError> {
        let verdict = match slot {
            Some(slot) => {
                let expected = unit
                    .slots
                    .iter()
                    .find(|s| s.slot == slot)
                    .and_then(|s| s.expected);
                mismatch(expected, SlotFence::parse(stored)?, self.epoch)
            }
            None => mark_mismatch(unit.mark_expected, UnitMark::parse(stored)?, self.epoch),
        };
        match verdict {
            Mismatch::Moved { .. } => Ok(()),
            Mismatch::Fenced { stored_epoch } => Err(SinkError::Fenced {
                partition: batch.partition,
                stored_epoch,
                our_epoch: self.epoch,
            }),
            Mismatch::Lost { stored } => Err(SinkError::Gap {
                partition: batch.partition,
                stored_next_offset: stored.map(|f| f.next),
                first_offset: batch.first_offset,
                next_offset: batch.next_offset,
                marks: SeriesMarks::default(),
            }),
        }
    }
}

/// [`mismatch`] for a unit mark: behind what the owner wrote is a loss (the mark has no
/// offset to report), ahead with an older epoch another owner's unit.
fn mark_mismatch(expected: Option<UnitMark>, stored: Option<UnitMark>, epoch: u64) -> Mismatch {
    match (expected, stored) {
        (_, Some(stored)) if stored.epoch > epoch => Mismatch::Fenced {
            stored_epoch: stored.epoch,
        },
        (Some(expected), Some(stored))
            if (stored.epoch, stored.seq) >= (expected.epoch, expected.seq) =>
        {
            Mismatch::Moved {
                stored: SlotFence {
                    epoch: stored.epoch,
                    from: stored.from,
                    next: stored.from,
                },
            }
        }
        (None, Some(stored)) => Mismatch::Moved {
            stored: SlotFence {
                epoch: stored.epoch,
                from: stored.from,
                next: stored.from,
            },
        },
        _ => Mismatch::Lost { stored: None },
    }
}
