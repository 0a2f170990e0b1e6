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
//! Waits are normal during a reshard, so they are counted (`ApplyStats`, exported as
//! `streamjob_redis_cluster_waits_total` as they happen, so that a batch held up by a long
//! migration shows while it waits) and logged at info level, not as warnings. A node
//! that goes away (a failover) is a wait too: the slot map is read again until a primary serves
//! every slot (`CLUSTERDOWN` meanwhile).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::fence::{mismatch, resume_mark, Mismatch, SlotFence, SlotPositions, UnitMark};
use super::nodes::Nodes;
use super::plan::{batch_series, units_isolating, Owner, SlotMap};
use super::read::read_slots;
use super::slot::key_slot;
use super::unit::{run, Unit, UnitReply};
use crate::metrics::KindLabel;
use crate::sink::redis::window::SeriesMarks;
use crate::sink::redis::{Batch, Layout, SinkError};

/// How long one batch may keep meeting refusals before the apply gives up (retryable).
const GIVE_UP_AFTER: Duration = Duration::from_secs(120);

/// What the waits of an apply were: the metrics of the cluster sink.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub units: u64,
    /// Units among them that wrote no slot, only their node's mark.
    pub mark_units: u64,
    /// Redis commands the applied units ran (fences and marks included).
    pub commands: u64,
    /// Data writes Redis refused (e.g. `WRONGTYPE`), skipped as on a single node.
    pub write_errors: u64,
    /// Units refused because a slot was migrating (a `TRYAGAIN` wait).
    pub migrating_waits: u64,
    /// Units whose first slot's fence had already migrated (`ASK`): a wait like the above.
    pub asks: u64,
    /// Slot map refreshes after a slot served elsewhere or `MOVED`.
    pub redirects: u64,
    /// Fences read again after another owner's batch.
    pub rereads: u64,
    /// Units that met a node gone away or `CLUSTERDOWN`: the map is read again.
    pub nodes_down: u64,
}

impl ApplyStats {
    /// The waits by kind, for the metrics.
    pub fn waits(&self) -> [(&'static str, u64); 5] {
        [
            ("tryagain", self.migrating_waits),
            ("ask", self.asks),
            ("moved", self.redirects),
            ("reread", self.rereads),
            ("node_down", self.nodes_down),
        ]
    }

    /// Adds to `family` the waits since `counted`, which then becomes `self`.
    fn publish_waits(&self, counted: &mut ApplyStats, family: Option<&WaitCounts>) {
        if let Some(family) = family {
            for ((kind, now), (_, before)) in self.waits().into_iter().zip(counted.waits()) {
                if now > before {
                    family
                        .get_or_create(&KindLabel { kind: kind.into() })
                        .inc_by(now - before);
                }
            }
        }
        *counted = *self;
    }

    /// Whether the apply met any refusal.
    pub fn waited(&self) -> bool {
        self.waits().iter().any(|(_, n)| *n > 0)
    }
}

/// The waits counter by kind (`streamjob_redis_cluster_waits_total`).
pub type WaitCounts = Family<KindLabel, Counter>;

/// One apply's stats, and how much of them `waits` has been told already.
struct Counting<'a> {
    stats: ApplyStats,
    counted: ApplyStats,
    waits: Option<&'a WaitCounts>,
}

impl Counting<'_> {
    fn publish(&mut self) {
        self.stats.publish_waits(&mut self.counted, self.waits);
    }
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
    pub positions: SlotPositions,
    pub marks: HashMap<u16, UnitMark>,
    pub seq: u64,
    /// The partition's event-time clock where the owner stands (stored in its unit marks).
    pub clock: Option<i64>,
    /// Slots that were migrating: each gets a unit of its own.
    isolated: HashSet<u16>,
    nodes: Arc<Nodes>,
    last_stats: ApplyStats,
}

impl ClusterOwner {
    /// An owner that knows nothing yet, with plain connections to the primaries `map` names
    /// (tests and tools); [`ClusterOwner::reread`] fills it in.
    pub fn new(layout: Layout, partition: i32, epoch: u64, map: SlotMap) -> Self {
        let nodes = Arc::new(Nodes::plain(map, Duration::from_secs(30)));
        Self::with_nodes(layout, partition, epoch, nodes)
    }

    /// An owner that knows nothing yet and reaches the cluster through `nodes`.
    pub fn with_nodes(layout: Layout, partition: i32, epoch: u64, nodes: Arc<Nodes>) -> Self {
        Self {
            layout,
            partition,
            epoch,
            positions: SlotPositions::default(),
            marks: HashMap::new(),
            seq: 0,
            clock: None,
            isolated: HashSet::new(),
            nodes,
            last_stats: ApplyStats::default(),
        }
    }

    /// The slot map as last read.
    pub fn map(&self) -> Arc<SlotMap> {
        self.nodes.map()
    }

    /// Reads the slot map again.
    pub async fn refresh_map(&mut self) -> Result<(), SinkError> {
        self.nodes.refresh_map().await
    }

    /// Where an owner that knows only what it read resumes, and the series marks there: the
    /// latest mark of each node, the oldest of those ([`resume_mark`]). `None` without marks.
    pub fn resume(&self) -> Option<UnitMark> {
        let map = self.map();
        let mut by_node: HashMap<&str, Vec<UnitMark>> = HashMap::new();
        for (slot, mark) in &self.marks {
            by_node
                .entry(map.owner(*slot).unwrap_or(""))
                .or_default()
                .push(*mark);
        }
        resume_mark(by_node.into_values())
    }

    /// Leaves a mark at offset `at` on every primary (compared and set like any unit's): from
    /// a claim on, every primary has a mark of the partition, so that a later claim never
    /// resumes past a batch some primary did not get because it had no mark to show (a crash
    /// inside the first batch). Refused if any mark moved since it was read (retryable).
    pub async fn mark_every_node(&mut self, at: i64, series: SeriesMarks) -> Result<(), SinkError> {
        self.seq += 1;
        let map = self.map();
        for address in map.nodes() {
            let anchor = map
                .anchor(address)
                .ok_or_else(|| SinkError::Unavailable(format!("{address} serves no slot")))?;
            let unit = Unit {
                partition: self.partition,
                mark_key: self.layout.slot_fence_key(anchor),
                mark_expected: self.marks.get(&anchor).copied(),
                mark_new: UnitMark {
                    epoch: self.epoch,
                    seq: self.seq,
                    from: at,
                    next: Some(at),
                    series,
                },
                slots: Vec::new(),
            };
            let mut conn = self.nodes.conn(address).await?;
            let timeout = self.nodes.timeout();
            let reply = tokio::time::timeout(timeout, run(&mut conn, &unit))
                .await
                .map_err(|_| SinkError::timeout("marking a cluster node", timeout))??;
            match reply {
                UnitReply::Applied { .. } => {
                    self.marks.insert(anchor, unit.mark_new);
                }
                other => {
                    return Err(SinkError::Unavailable(format!(
                        "{address} refused the claim's mark ({other:?}); claiming again"
                    )))
                }
            }
        }
        Ok(())
    }

    /// The primaries that hold some mark of the partition, as the map says now.
    pub fn nodes_with_marks(&self) -> HashSet<String> {
        let map = self.map();
        self.marks
            .keys()
            .filter_map(|slot| map.owner(*slot).map(str::to_string))
            .collect()
    }

    /// The highest epoch any slot's fence or any mark of the partition holds.
    pub fn stored_epoch(&self) -> u64 {
        let fences = self.positions.iter().map(|(_, f)| f.epoch);
        let marks = self.marks.values().map(|m| m.epoch);
        fences.chain(marks).max().unwrap_or(0)
    }

    /// Reads every slot's fence and mark of the partition and takes them as what it knows.
    pub async fn reread(&mut self) -> Result<(), SinkError> {
        let mut positions = SlotPositions::default();
        let mut marks = HashMap::new();
        let map = self.map();
        for address in map.nodes() {
            let slots = map.slots_of(address);
            let mut conn = self.nodes.conn(address).await?;
            let read = read_slots(&mut conn, &self.layout, self.partition, &slots);
            let read = match tokio::time::timeout(self.nodes.timeout(), read).await {
                Ok(Ok(read)) => read,
                Ok(Err(err)) => {
                    self.nodes.forget(address);
                    return Err(err);
                }
                Err(_) => {
                    self.nodes.forget(address);
                    return Err(SinkError::timeout(
                        "reading the slot fences",
                        self.nodes.timeout(),
                    ));
                }
            };
            for read in read {
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

    /// Applies `batch` until every slot holds it. `stats.units == stats.mark_units`: every slot
    /// had it (at most some marks moved).
    /// Its waits are added to `waits` as they happen.
    pub async fn apply(
        &mut self,
        batch: &Batch,
        waits: Option<&WaitCounts>,
    ) -> Result<ApplyStats, SinkError> {
        let mut counting = Counting {
            stats: ApplyStats::default(),
            counted: ApplyStats::default(),
            waits,
        };
        let result = self.apply_counting(batch, &mut counting).await;
        counting.publish();
        self.last_stats = counting.stats;
        result.map(|()| counting.stats)
    }

    /// What the last [`ClusterOwner::apply`] met, whether it succeeded or not (the metrics).
    pub fn last_stats(&self) -> ApplyStats {
        self.last_stats
    }

    async fn apply_counting(
        &mut self,
        batch: &Batch,
        counting: &mut Counting<'_>,
    ) -> Result<(), SinkError> {
        let started = std::time::Instant::now();
        let mut backoff = Duration::from_millis(5);
        let series = batch_series(batch, &self.layout);
        loop {
            self.seq += 1;
            let map = self.map();
            let owner = Owner {
                layout: &self.layout,
                map: &map,
                positions: &self.positions,
                marks: &self.marks,
                epoch: self.epoch,
                seq: self.seq,
                clock: self.clock,
            };
            let planned = units_isolating(batch, &owner, &self.isolated)?;
            if planned.is_empty() {
                self.clock = series.clock.or(self.clock);
                return Ok(());
            }
            let mut settled = true;
            for sent in self.send_round(planned).await {
                let stats = &mut counting.stats;
                stats.units += 1;
                stats.mark_units += u64::from(sent.unit.slots.is_empty());
                match self.learn(batch, sent, stats).await? {
                    Step::Applied => {}
                    Step::Wait | Step::Replan => settled = false,
                }
            }
            if !settled {
                counting.publish();
                let stats = &counting.stats;
                tracing::info!(
                    ?stats,
                    ?backoff,
                    "the cluster refused some units of the batch (resharding, failover); waiting"
                );
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

    /// Sends one round's units, every node's at once: the units of one node one after another
    /// (each expects the mark the previous one left), the nodes concurrently. A node's chain
    /// stops at the first reply that asks to plan again; the other nodes' units still run, each
    /// being its own compare-and-set. Returned with the units that applied first, so that what
    /// they wrote is recorded before any re-read or error.
    async fn send_round(&self, planned: Vec<(String, Unit)>) -> Vec<Sent> {
        let mut chains: Vec<(String, Vec<Unit>)> = Vec::new();
        for (address, unit) in planned {
            match chains.iter_mut().find(|(a, _)| *a == address) {
                Some((_, units)) => units.push(unit),
                None => chains.push((address, vec![unit])),
            }
        }
        let rounds = chains.into_iter().map(|(address, units)| {
            let mark = units
                .first()
                .and_then(|u| self.marks.get(&key_slot(u.mark_key.as_bytes())).copied());
            send_chain(self.nodes.clone(), address, units, mark)
        });
        let mut sent: Vec<Sent> = futures::future::join_all(rounds)
            .await
            .into_iter()
            .flatten()
            .collect();
        sent.sort_by_key(|s| !matches!(s.reply, Ok(UnitReply::Applied { .. })));
        sent
    }

    /// Learns from one unit's reply (or its failure to get one).
    async fn learn(
        &mut self,
        batch: &Batch,
        sent: Sent,
        stats: &mut ApplyStats,
    ) -> Result<Step, SinkError> {
        let Sent {
            address,
            unit,
            reply,
        } = sent;
        match reply {
            Ok(reply) => self.learn_reply(batch, &unit, reply, stats).await,
            // A node gone away or `CLUSTERDOWN` (a failover). A unit that timed out may have
            // run: its compare-and-set makes the next try find the fences moved (a re-read),
            // never apply twice.
            Err(err) if err.is_retryable() => {
                tracing::info!(address, %err, "a cluster node did not take a unit; reading the slot map again");
                stats.nodes_down += 1;
                self.nodes.forget(&address);
                if let Err(err) = self.refresh_map().await {
                    tracing::info!(%err, "cannot read the slot map yet");
                }
                Ok(Step::Replan)
            }
            Err(err) => Err(err),
        }
    }

    /// Learns from what the unit's script answered.
    async fn learn_reply(
        &mut self,
        batch: &Batch,
        unit: &Unit,
        reply: UnitReply,
        stats: &mut ApplyStats,
    ) -> Result<Step, SinkError> {
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
            UnitReply::Applied {
                commands,
                write_errors,
                first_error,
            } => {
                stats.commands += commands as u64;
                stats.write_errors += write_errors as u64;
                if let Some(error) = first_error {
                    tracing::warn!(
                        write_errors,
                        first_error = error,
                        "redis refused some writes of the unit (skipped, as upstream would)"
                    );
                }
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
                    Err(err) if err.is_retryable() => Ok(Step::Replan),
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

/// One unit sent, and what came of it.
struct Sent {
    address: String,
    unit: Unit,
    reply: Result<UnitReply, SinkError>,
}

/// Runs one node's units of a round in order, each expecting the mark the one before left
/// (`mark`: what the owner knows of the node's mark before the round). Stops after the first
/// reply that is neither applied nor a wait.
async fn send_chain(
    nodes: Arc<Nodes>,
    address: String,
    units: Vec<Unit>,
    mut mark: Option<UnitMark>,
) -> Vec<Sent> {
    let timeout = nodes.timeout();
    let mut sent = Vec::with_capacity(units.len());
    for mut unit in units {
        unit.mark_expected = mark;
        let reply = match nodes.conn(&address).await {
            Ok(mut conn) => match tokio::time::timeout(timeout, run(&mut conn, &unit)).await {
                Ok(reply) => reply,
                Err(_) => Err(SinkError::timeout("a cluster unit", timeout)),
            },
            Err(err) => Err(err),
        };
        let go_on = match &reply {
            Ok(UnitReply::Applied { .. }) => {
                mark = Some(unit.mark_new);
                true
            }
            Ok(UnitReply::Migrating { .. } | UnitReply::Redirected { ask: true, .. }) => true,
            _ => false,
        };
        sent.push(Sent {
            address: address.clone(),
            unit,
            reply,
        });
        if !go_on {
            break;
        }
    }
    sent
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
