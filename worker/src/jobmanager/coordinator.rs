//! Membership, ownership and snapshot bookkeeping of the jobmanager: a pure state machine.
//!
//! Every input (register, heartbeat, leave, tick, triggers) carries `now`, so tests drive time.
//! The REST layer holds it behind a mutex and turns its outputs into HTTP answers and file writes.
//!
//! # A member that cannot take its partitions
//!
//! A taskmanager that registers but cannot claim what it is given (its Redis or broker is
//! unreachable) would otherwise hold those partitions in `ASSIGNING` for ever, and the ones it
//! got by revoking them from running owners would stop. So an assignment not confirmed within
//! `assign_timeout` is taken back, and the member is held back: it gets nothing for a back-off
//! (doubling with each failure, reset by its first confirmed claim), during which the planner
//! leaves it out, so the other members take everything back. The overview shows the member's
//! `heldBack` reason and its heartbeat answers carry it, so its `/readyz` stays 503 and a
//! rolling upgrade stops there. A claim that succeeds after all is harmless: the next owner's
//! claim raises the fence epoch again, and the late one is fenced and gives the partition back.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::api::{
    Assignment, HeartbeatRequest, HeartbeatResponse, JobState, OwnedPartition, PartitionOffsets,
    PartitionProgress, PartitionState, PartitionStatus, RedisTopology, RegisterRequest,
    ReleasedPartition, Rewind, TaskManagerInfo, TaskManagerLoad, TaskManagerMetrics,
};

use super::planner::{self, OwnerView};

#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    pub heartbeat_interval: Duration,
    /// A member silent this long is dropped and its partitions freed (the Redis fence then guards
    /// against it if it is in fact alive).
    pub heartbeat_timeout: Duration,
    /// An owner that does not confirm a revoke within this time loses the partition anyway.
    pub revoke_timeout: Duration,
    /// After a start, how long to wait for running taskmanagers to re-register before assigning.
    pub startup_grace: Duration,
    /// How long a snapshot waits for fresh progress reports.
    pub snapshot_timeout: Duration,
    /// An assignment its member does not confirm (claimed, running) within this is taken back.
    pub assign_timeout: Duration,
    /// How long a member whose assignment was taken back gets nothing (doubled per repeat).
    pub hold_back: Duration,
}

impl CoordinatorConfig {
    pub fn from_job(config: &crate::config::JobManagerConfig) -> Self {
        Self {
            heartbeat_interval: config.heartbeat_interval,
            heartbeat_timeout: config.heartbeat_timeout,
            revoke_timeout: config.heartbeat_timeout,
            startup_grace: config.heartbeat_interval * 2,
            snapshot_timeout: config.heartbeat_timeout * 2,
            assign_timeout: config.heartbeat_timeout,
            hold_back: config.heartbeat_timeout * 6,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holding {
    /// Sent to the owner, not yet reported back as held.
    Assigning {
        since: Instant,
    },
    Running,
    Revoking {
        since: Instant,
    },
}

#[derive(Debug, Clone)]
struct Ownership {
    member: String,
    generation: u64,
    holding: Holding,
}

#[derive(Debug, Clone)]
struct Member {
    address: Option<String>,
    last_seen: Instant,
    last_seq: u64,
    /// Bumped whenever the answer for this member changes.
    desired_version: u64,
    last_desired: Vec<Assignment>,
    last_job_state: JobState,
    snapshot_ack: u64,
    /// The lowest job watermark its batches may still decide with (see `pipeline::watermark`).
    watermark_ack: Option<i64>,
    /// Its newest load report (the autoscaler's input).
    load: Option<TaskManagerLoad>,
    /// Why it gets nothing for now (an assignment it did not confirm was taken back), and until
    /// when; see the module documentation.
    held_back: Option<(String, Instant)>,
    /// Assignments taken back from it since its last confirmed claim (doubles the back-off).
    failed_takes: u32,
    /// What it runs (`STREAMJOB_REVISION`: the pod template's hash), as it registered.
    revision: Option<String>,
    /// The Redis topology as it last read it.
    redis: Option<RedisTopology>,
}

/// A checkpoint or savepoint waiting for fresh reports.
#[derive(Debug, Clone)]
struct PendingSnapshot {
    id: u64,
    started: Instant,
    waiting_for: BTreeSet<String>,
}

/// Offsets collected for one snapshot: what the job had committed per partition (see
/// [`Coordinator::resume_offset`]: while a partition re-applies what Redis lost, where it had
/// been, which a restore finds ahead of the fence and rewinds from).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotData {
    pub id: u64,
    pub partition_count: u32,
    pub generation: u64,
    pub offsets: BTreeMap<i32, i64>,
    /// The job's event-time watermark when it was taken.
    pub watermark_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotOutcome {
    Ready(SnapshotData),
    /// Timed out waiting for the listed members.
    TimedOut {
        id: u64,
        missing: Vec<String>,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CoordinatorError {
    #[error("unknown taskmanager {0:?}: register first")]
    UnknownMember(String),
    #[error("the job is {0}; this needs a running job")]
    NotRunning(JobState),
}

/// The rewinds of one partition: reports count them per owner, from 0.
#[derive(Debug, Clone, Default)]
struct RewindLog {
    total: u64,
    last: Option<Rewind>,
    owner_generation: u64,
    owner_count: u64,
}

/// Membership, ownership and progress of one job.
#[derive(Debug)]
pub struct Coordinator {
    config: CoordinatorConfig,
    started: Instant,
    state: JobState,
    partition_count: Option<u32>,
    members: BTreeMap<String, Member>,
    owners: BTreeMap<i32, Ownership>,
    /// Best known committed offset per partition (restored state, then reports).
    offsets: BTreeMap<i32, i64>,
    /// Per partition that rewound (Redis lost acknowledged writes), where it had been before,
    /// until its committed offset is back there: see [`Self::resume_offset`].
    lost_until: BTreeMap<i32, i64>,
    progress: BTreeMap<i32, PartitionProgress>,
    /// Rewinds reported per partition (Redis lost acknowledged writes).
    rewinds: BTreeMap<i32, RewindLog>,
    next_generation: u64,
    snapshot_requested: u64,
    pending_snapshots: Vec<PendingSnapshot>,
    /// Bumped on every change that may alter an answer: long polls wait on it.
    version: u64,
    /// Completed rebalances (plans that moved something), for metrics.
    rebalances: u64,
    /// Last reported `(watermark, idle)` per partition, kept after its owner goes.
    marks: BTreeMap<i32, (Option<i64>, bool)>,
    /// The job's event-time watermark: minimum over active partitions, never back.
    job_watermark: Option<i64>,
    /// The watermark every member acknowledged (≤ `job_watermark`), what Redis records as final.
    final_watermark: Option<i64>,
    /// The job may not start assigning before the Redis fences' epochs are known (see
    /// [`Self::seed_fence_epochs`]).
    fence_epochs_pending: bool,
    /// Assignments taken back because their member never confirmed them, for metrics.
    taken_back: u64,
}

impl Coordinator {
    /// `offsets`/`generation` come from the restored checkpoint or savepoint.
    pub fn new(
        config: CoordinatorConfig,
        now: Instant,
        offsets: BTreeMap<i32, i64>,
        generation: u64,
    ) -> Self {
        Self {
            config,
            started: now,
            state: JobState::Initializing,
            partition_count: None,
            members: BTreeMap::new(),
            owners: BTreeMap::new(),
            offsets,
            lost_until: BTreeMap::new(),
            progress: BTreeMap::new(),
            rewinds: BTreeMap::new(),
            next_generation: generation + 1,
            snapshot_requested: 0,
            pending_snapshots: Vec::new(),
            version: 0,
            rebalances: 0,
            marks: BTreeMap::new(),
            job_watermark: None,
            final_watermark: None,
            fence_epochs_pending: false,
            taken_back: 0,
        }
    }

    /// Holds the start (no assignment) until [`Self::seed_fence_epochs`]: a jobmanager process
    /// calls it at start, before anything registers.
    pub fn await_fence_epochs(&mut self) {
        self.fence_epochs_pending = true;
    }

    /// Raises the next assignment generation above every epoch in the Redis fences, so that
    /// every claim this jobmanager hands out lands at its own floor `generation << 20`, above
    /// every earlier owner's epoch (see `sink::redis`: epochs survive a rollback). The restored
    /// checkpoint only knows the generation of its time, and a crashed jobmanager may have
    /// assigned many more since; members that re-register report theirs (see [`Self::adopt`]),
    /// but a partition whose last owner is gone is known only to its fence.
    pub fn seed_fence_epochs(&mut self, max_epoch: u64) {
        let generation = max_epoch >> 20;
        self.next_generation = self.next_generation.max(generation + 1);
        self.fence_epochs_pending = false;
    }

    /// The job's event-time watermark and the part of it every member acknowledged.
    pub fn watermarks(&self) -> (Option<i64>, Option<i64>) {
        (self.job_watermark, self.final_watermark)
    }

    /// Seeds the watermark from a snapshot or from what Redis records as final (never lowers it).
    pub fn seed_watermark(&mut self, job_watermark: Option<i64>, final_watermark: Option<i64>) {
        self.job_watermark = max_opt(self.job_watermark, max_opt(job_watermark, final_watermark));
        self.final_watermark = max_opt(self.final_watermark, final_watermark);
    }

    /// Recomputes the job watermark from the partitions' reports and what members acknowledged.
    /// Active partitions: owned and not idle (one not reported yet holds the job), or unowned
    /// with a report (held at its last watermark until an owner reports again).
    fn update_watermarks(&mut self) {
        let count = self.partition_count.unwrap_or(0) as i32;
        let active: Vec<Option<i64>> = (0..count)
            .filter_map(|p| {
                let mark = self.marks.get(&p);
                match (self.owners.contains_key(&p), mark) {
                    (true, Some((_, true))) => None,
                    (true, Some((wm, false))) => Some(*wm),
                    (true, None) => Some(None),
                    (false, Some((Some(wm), _))) => Some(Some(*wm)),
                    (false, _) => None,
                }
            })
            .collect();
        // Members learn it in their next answer (at most one heartbeat interval later): no
        // answer is sent early for it, or every report would wake every long poll.
        self.job_watermark = crate::sink::redis::window::job_watermark(self.job_watermark, active);
        if self.members.is_empty() {
            return;
        }
        let mut acked = self.job_watermark;
        for member in self.members.values() {
            acked = match (acked, member.watermark_ack) {
                (Some(a), Some(m)) => Some(a.min(m)),
                _ => None,
            };
        }
        self.final_watermark = max_opt(self.final_watermark, acked);
    }

    pub fn state(&self) -> JobState {
        self.state
    }
    pub fn version(&self) -> u64 {
        self.version
    }
    pub fn rebalances(&self) -> u64 {
        self.rebalances
    }
    pub fn partition_count(&self) -> Option<u32> {
        self.partition_count
    }
    pub fn generation(&self) -> u64 {
        self.next_generation - 1
    }
    pub fn offsets(&self) -> &BTreeMap<i32, i64> {
        &self.offsets
    }
    pub fn member_count(&self) -> usize {
        self.members.len()
    }
    pub fn heartbeat_interval(&self) -> Duration {
        self.config.heartbeat_interval
    }

    /// The topic's partition count (from the broker); partitions beyond it are never assigned.
    pub fn set_partition_count(&mut self, count: u32, now: Instant) {
        if self.partition_count != Some(count) {
            self.partition_count = Some(count);
            self.rebalance(now);
        }
    }

    pub fn register(&mut self, id: &str, request: &RegisterRequest, now: Instant) {
        // A re-registration is a new incarnation: forget what the old one held unless it still
        // reports holding it.
        let old: Vec<i32> = self
            .owners
            .iter()
            .filter(|(_, o)| o.member == id)
            .map(|(p, _)| *p)
            .collect();
        for p in old {
            self.owners.remove(&p);
        }
        self.members.insert(
            id.to_string(),
            Member {
                address: request.address.clone(),
                last_seen: now,
                last_seq: 0,
                desired_version: 0,
                last_desired: Vec::new(),
                last_job_state: self.state,
                snapshot_ack: self.snapshot_requested,
                watermark_ack: None,
                load: None,
                held_back: None,
                failed_takes: 0,
                revision: request.revision.clone(),
                redis: None,
            },
        );
        for owned in &request.owned {
            self.adopt(id, owned);
        }
        self.record_progress(id, &request.progress);
        self.rebalance(now);
        self.update_watermarks();
    }

    /// Takes over a partition a member reports holding, if nobody else does. Either way, every
    /// later assignment gets a higher generation than the reported one.
    fn adopt(&mut self, id: &str, owned: &OwnedPartition) {
        self.next_generation = self.next_generation.max(owned.generation + 1);
        if self.owners.contains_key(&owned.partition) || self.state == JobState::Finished {
            return;
        }
        self.owners.insert(
            owned.partition,
            Ownership {
                member: id.to_string(),
                generation: owned.generation,
                holding: Holding::Running,
            },
        );
    }

    /// Processes one heartbeat. Returns whether the answer should go out at once (something for
    /// this member to do) rather than be held as a long poll.
    pub fn heartbeat(
        &mut self,
        id: &str,
        request: &HeartbeatRequest,
        now: Instant,
    ) -> Result<bool, CoordinatorError> {
        let member = self
            .members
            .get_mut(id)
            .ok_or_else(|| CoordinatorError::UnknownMember(id.to_string()))?;
        member.last_seen = now;
        if request.seq > member.last_seq {
            member.last_seq = request.seq;
            if let Some(ack) = request.snapshot_ack {
                member.snapshot_ack = member.snapshot_ack.max(ack);
            }
            member.watermark_ack = request.watermark_ack_ms;
            if request.load.is_some() {
                member.load = request.load;
            }
            if request.redis.is_some() {
                member.redis = request.redis.clone();
            }
            self.apply_released(id, &request.released);
            let reported: BTreeMap<i32, u64> = request
                .owned
                .iter()
                .map(|o| (o.partition, o.generation))
                .collect();
            let mine: Vec<(i32, Ownership)> = self
                .owners
                .iter()
                .filter(|(_, o)| o.member == id)
                .map(|(p, o)| (*p, o.clone()))
                .collect();
            for (partition, ownership) in mine {
                match (ownership.holding, reported.get(&partition)) {
                    (Holding::Assigning { .. }, Some(g)) if *g == ownership.generation => {
                        if let Some(o) = self.owners.get_mut(&partition) {
                            o.holding = Holding::Running;
                        }
                        if let Some(m) = self.members.get_mut(id) {
                            m.failed_takes = 0;
                        }
                    }
                    // Not taken yet: the answer carrying it may still be on its way.
                    (Holding::Assigning { .. }, _) => {}
                    (Holding::Running, Some(_)) | (Holding::Revoking { .. }, Some(_)) => {}
                    // Released (or lost to the fence): free it.
                    (Holding::Running, None) | (Holding::Revoking { .. }, None) => {
                        self.owners.remove(&partition);
                    }
                }
            }
            for owned in &request.owned {
                self.adopt(id, owned);
            }
            self.record_progress(id, &request.progress);
            self.rebalance(now);
            self.update_watermarks();
        }
        self.needs_answer(id, request.desired_version)
    }

    /// Whether a member that last applied `desired_version` has something to do now.
    pub fn needs_answer(&self, id: &str, desired_version: u64) -> Result<bool, CoordinatorError> {
        let member = self
            .members
            .get(id)
            .ok_or_else(|| CoordinatorError::UnknownMember(id.to_string()))?;
        let snapshot_due = self
            .pending_snapshots
            .iter()
            .any(|s| s.waiting_for.contains(id) && member.snapshot_ack < s.id);
        Ok(desired_version != member.desired_version || snapshot_due)
    }

    /// Seeds the restored offsets and generation (before the partition count is known).
    pub fn seed(&mut self, offsets: &BTreeMap<i32, i64>, generation: u64) {
        for (partition, offset) in offsets {
            self.raise_offset(*partition, *offset);
        }
        self.next_generation = self.next_generation.max(generation + 1);
    }

    /// Whether a snapshot is still collecting reports.
    pub fn snapshot_pending(&self) -> bool {
        !self.pending_snapshots.is_empty()
    }

    /// The answer for a member (after [`Self::heartbeat`], possibly after a long poll).
    pub fn response(
        &mut self,
        id: &str,
        now: Instant,
    ) -> Result<HeartbeatResponse, CoordinatorError> {
        let snapshot_request = {
            let member = self
                .members
                .get(id)
                .ok_or_else(|| CoordinatorError::UnknownMember(id.to_string()))?;
            self.pending_snapshots
                .iter()
                .filter(|s| s.waiting_for.contains(id) && member.snapshot_ack < s.id)
                .map(|s| s.id)
                .max()
        };
        let awaiting = self.awaiting(id);
        let member = self
            .members
            .get_mut(id)
            .ok_or_else(|| CoordinatorError::UnknownMember(id.to_string()))?;
        member.last_seen = now;
        Ok(HeartbeatResponse {
            job_state: self.state,
            desired_version: member.desired_version,
            assignments: member.last_desired.clone(),
            snapshot_request,
            job_watermark_ms: self.job_watermark,
            awaiting,
            held_back: member.held_back.as_ref().map(|(reason, _)| reason.clone()),
        })
    }

    /// Members the planner may give partitions to (not held back).
    fn eligible_members(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|(_, m)| m.held_back.is_none())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Assignments taken back because their member never confirmed them (since the start).
    pub fn taken_back(&self) -> u64 {
        self.taken_back
    }

    /// Takes back assignments not confirmed within `assign_timeout` and holds their members
    /// back; ends back-offs that are over. Whether anything changed.
    fn take_back_unconfirmed(&mut self, now: Instant) -> bool {
        let timeout = self.config.assign_timeout;
        let stale: Vec<(i32, String)> = self
            .owners
            .iter()
            .filter(|(_, o)| {
                matches!(o.holding, Holding::Assigning { since } if now.saturating_duration_since(since) > timeout)
            })
            .map(|(p, o)| (*p, o.member.clone()))
            .collect();
        let mut changed = !stale.is_empty();
        let mut failed: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for (partition, member) in stale {
            self.owners.remove(&partition);
            self.taken_back += 1;
            failed.entry(member).or_default().push(partition);
        }
        for (id, partitions) in failed {
            let Some(member) = self.members.get_mut(&id) else {
                continue;
            };
            member.failed_takes += 1;
            let back_off = self.config.hold_back * 2u32.pow(member.failed_takes.min(5) - 1);
            let reason = format!(
                "did not take partitions {partitions:?} within {timeout:?}: given nothing for {back_off:?}"
            );
            tracing::warn!(taskmanager = %id, ?partitions, ?back_off, "assignment not confirmed in time: taken back, the taskmanager is held back and the others keep the partitions");
            member.held_back = Some((reason, now + back_off));
        }
        for (id, member) in &mut self.members {
            if member
                .held_back
                .as_ref()
                .is_some_and(|(_, until)| now >= *until)
            {
                tracing::info!(taskmanager = %id, "back-off over: the taskmanager may take partitions again");
                member.held_back = None;
                changed = true;
            }
        }
        changed
    }

    /// How many partitions the planner means `id` to own but has not given it yet (their old
    /// owners are still releasing them): the taskmanager is not ready before they arrive.
    fn awaiting(&self, id: &str) -> u32 {
        let (Some(count), JobState::Running) = (self.partition_count, self.state) else {
            return 0;
        };
        let members = self.eligible_members();
        if !members.iter().any(|m| m == id) {
            return 0;
        }
        let mut load: BTreeMap<&str, u32> = BTreeMap::new();
        for o in self.owners.values() {
            if !matches!(o.holding, Holding::Revoking { .. }) {
                *load.entry(o.member.as_str()).or_default() += 1;
            }
        }
        let quota = planner::quotas(count, &members, &load)
            .get(id)
            .copied()
            .unwrap_or(0);
        quota.saturating_sub(load.get(id).copied().unwrap_or(0))
    }

    /// Graceful leave: the member flushed and released everything it lists.
    pub fn leave(
        &mut self,
        id: &str,
        released: &[ReleasedPartition],
        now: Instant,
    ) -> Result<(), CoordinatorError> {
        if !self.members.contains_key(id) {
            return Err(CoordinatorError::UnknownMember(id.to_string()));
        }
        self.apply_released(id, released);
        self.drop_member(id);
        self.rebalance(now);
        Ok(())
    }

    fn apply_released(&mut self, id: &str, released: &[ReleasedPartition]) {
        for r in released {
            let mine = self
                .owners
                .get(&r.partition)
                .is_some_and(|o| o.member == id && o.generation == r.generation);
            if mine {
                self.owners.remove(&r.partition);
                if let Some(offset) = r.committed_offset {
                    self.raise_offset(r.partition, offset);
                }
            }
        }
    }

    fn drop_member(&mut self, id: &str) {
        self.members.remove(id);
        self.owners.retain(|_, o| o.member != id);
        for s in &mut self.pending_snapshots {
            s.waiting_for.remove(id);
        }
    }

    /// Counts the rewinds `p` reports that were not seen yet; whether there were any.
    fn record_rewinds(&mut self, generation: u64, p: &PartitionProgress) -> bool {
        let log = self.rewinds.entry(p.partition).or_default();
        if log.owner_generation != generation {
            log.owner_generation = generation;
            log.owner_count = 0;
        }
        let new = p.rewinds.saturating_sub(log.owner_count);
        if new == 0 {
            return false;
        }
        log.total += new;
        log.owner_count = p.rewinds;
        log.last = p.last_rewind.or(log.last);
        if let Some(rewind) = p.last_rewind {
            tracing::error!(
                partition = p.partition,
                from = rewind.from_offset,
                to = rewind.to_offset,
                "Redis lost acknowledged writes; partition {} rewound from {} to {}",
                p.partition,
                rewind.from_offset,
                rewind.to_offset
            );
        }
        true
    }

    fn raise_offset(&mut self, partition: i32, offset: i64) {
        let entry = self.offsets.entry(partition).or_insert(offset);
        *entry = (*entry).max(offset);
        if self
            .lost_until
            .get(&partition)
            .is_some_and(|u| offset >= *u)
        {
            self.lost_until.remove(&partition);
        }
    }

    /// Where a new owner of `partition` starts, and what snapshots keep: its committed offset;
    /// while it re-applies what Redis lost, where it had been before the loss. The owner that
    /// noticed the loss decides the re-read events with the job watermark its fence's batch
    /// decided with, so they go back into the minutes they were counted in; a new owner (after
    /// a crash or a move) or a restored jobmanager must know the same range, or it would decide
    /// them with the job watermark, which never went back, and count them as late. Given the
    /// offset it had been at, it finds its fence behind it and rewinds the same way.
    pub fn resume_offset(&self, partition: i32) -> Option<i64> {
        let committed = self.offsets.get(&partition).copied();
        match (committed, self.lost_until.get(&partition).copied()) {
            (Some(c), Some(lost)) => Some(c.max(lost)),
            (c, lost) => c.or(lost),
        }
    }

    fn resume_offsets(&self) -> BTreeMap<i32, i64> {
        let partitions = self.offsets.keys().chain(self.lost_until.keys());
        partitions
            .filter_map(|p| Some((*p, self.resume_offset(*p)?)))
            .collect()
    }

    fn record_progress(&mut self, id: &str, progress: &[PartitionProgress]) {
        for p in progress {
            let Some(generation) = self
                .owners
                .get(&p.partition)
                .filter(|o| o.member == id)
                .map(|o| o.generation)
            else {
                continue;
            };
            let rewound = self.record_rewinds(generation, p);
            if let Some(offset) = p.committed_offset {
                if rewound {
                    // Redis lost writes: the committed offset really went back; where it had
                    // been is kept for new owners and snapshots until the re-apply is there.
                    self.offsets.insert(p.partition, offset);
                    if let Some(rewind) = p.last_rewind.filter(|r| r.from_offset > offset) {
                        let until = self.lost_until.entry(p.partition).or_insert(i64::MIN);
                        *until = (*until).max(rewind.from_offset);
                    }
                } else {
                    self.raise_offset(p.partition, offset);
                }
            }
            self.marks.insert(p.partition, (p.watermark_ms, p.idle));
            // A new owner reports before its first watermark fetch: the high watermark seen
            // before the move still holds (it only grows), so the partition's lag stays known.
            let mut report = p.clone();
            if let Some(previous) = self.progress.get(&p.partition) {
                report.high_watermark = match (report.high_watermark, previous.high_watermark) {
                    (Some(new), Some(old)) => Some(new.max(old)),
                    (new, old) => new.or(old),
                };
            }
            self.progress.insert(p.partition, report);
        }
    }

    /// Time-driven transitions: heartbeat and revoke time-outs, end of the start-up grace.
    /// Returns snapshots that completed or timed out.
    pub fn tick(&mut self, now: Instant) -> Vec<SnapshotOutcome> {
        let dead: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| {
                now.saturating_duration_since(m.last_seen) > self.config.heartbeat_timeout
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &dead {
            tracing::warn!(taskmanager = %id, "taskmanager missed its heartbeats: dropping it and freeing its partitions");
            self.drop_member(id);
        }
        let revoke_timeout = self.config.revoke_timeout;
        let before = self.owners.len();
        self.owners.retain(|partition, o| match o.holding {
            Holding::Revoking { since } if now.saturating_duration_since(since) > revoke_timeout => {
                tracing::warn!(partition, taskmanager = %o.member, "revoke not confirmed in time: reassigning (the Redis fence stops the old owner)");
                false
            }
            _ => true,
        });
        let mut changed = !dead.is_empty() || self.owners.len() != before;
        changed |= self.take_back_unconfirmed(now);
        if self.state == JobState::Initializing
            && now.saturating_duration_since(self.started) >= self.config.startup_grace
            && self.partition_count.is_some()
            && !self.fence_epochs_pending
        {
            self.state = JobState::Running;
            changed = true;
        }
        if changed {
            self.rebalance(now);
            self.update_watermarks();
        }
        self.take_snapshots(now)
    }

    /// Starts collecting a snapshot: every member holding partitions sends a fresh report.
    pub fn request_snapshot(&mut self, now: Instant) -> u64 {
        self.snapshot_requested += 1;
        let id = self.snapshot_requested;
        let waiting_for: BTreeSet<String> =
            self.owners.values().map(|o| o.member.clone()).collect();
        self.pending_snapshots.push(PendingSnapshot {
            id,
            started: now,
            waiting_for,
        });
        self.version += 1;
        id
    }

    fn take_snapshots(&mut self, now: Instant) -> Vec<SnapshotOutcome> {
        if self.pending_snapshots.is_empty() {
            return Vec::new();
        }
        let mut done = Vec::new();
        let members = &self.members;
        let timeout = self.config.snapshot_timeout;
        let mut remaining = Vec::new();
        let offsets = self.resume_offsets();
        for s in self.pending_snapshots.drain(..) {
            let missing: Vec<String> = s
                .waiting_for
                .iter()
                .filter(|m| members.get(*m).is_some_and(|m| m.snapshot_ack < s.id))
                .cloned()
                .collect();
            if missing.is_empty() {
                done.push(SnapshotOutcome::Ready(SnapshotData {
                    id: s.id,
                    partition_count: self.partition_count.unwrap_or(0),
                    generation: self.next_generation - 1,
                    offsets: offsets.clone(),
                    watermark_ms: self.job_watermark,
                }));
            } else if now.saturating_duration_since(s.started) > timeout {
                done.push(SnapshotOutcome::TimedOut { id: s.id, missing });
            } else {
                remaining.push(s);
            }
        }
        self.pending_snapshots = remaining;
        done
    }

    /// Stop-with-savepoint, step 1: revoke everything.
    pub fn begin_stop(&mut self, now: Instant) -> Result<(), CoordinatorError> {
        if self.state != JobState::Running && self.state != JobState::Initializing {
            return Err(CoordinatorError::NotRunning(self.state));
        }
        self.state = JobState::Stopping;
        self.rebalance(now);
        Ok(())
    }

    /// Stop-with-savepoint: every partition has been released (or its owner dropped).
    pub fn all_released(&self) -> bool {
        self.owners.is_empty()
    }

    /// Offsets as they stand, for the stop-with-savepoint (everything released, so exact).
    pub fn current_snapshot(&mut self) -> SnapshotData {
        self.snapshot_requested += 1;
        SnapshotData {
            id: self.snapshot_requested,
            partition_count: self.partition_count.unwrap_or(0),
            generation: self.next_generation - 1,
            offsets: self.resume_offsets(),
            watermark_ms: self.job_watermark,
        }
    }

    /// Stop-with-savepoint, last step: the savepoint is written (`true`) or failed and the job
    /// resumes (`false`).
    pub fn end_stop(&mut self, savepoint_written: bool, now: Instant) {
        if self.state == JobState::Stopping {
            self.state = if savepoint_written {
                JobState::Finished
            } else {
                JobState::Running
            };
            self.rebalance(now);
        }
    }

    /// Recomputes who should own what and bumps the answer version of members whose answer changed.
    fn rebalance(&mut self, now: Instant) {
        let members: Vec<String> = match self.state {
            JobState::Running => self.eligible_members(),
            // Initializing: only adopt; stopping/finished: release everything.
            _ => Vec::new(),
        };
        let plan = match (self.state, self.partition_count) {
            (JobState::Initializing, _) | (_, None) => planner::Plan::default(),
            (_, Some(count)) => {
                let views: BTreeMap<i32, OwnerView> = self
                    .owners
                    .iter()
                    .map(|(p, o)| {
                        (
                            *p,
                            OwnerView {
                                member: o.member.clone(),
                                revoking: matches!(o.holding, Holding::Revoking { .. }),
                            },
                        )
                    })
                    .collect();
                planner::plan(count, &members, &views)
            }
        };
        if !plan.is_empty() {
            self.rebalances += 1;
            tracing::info!(revoke = ?plan.revoke, assign = ?plan.assign, "rebalancing partitions");
        }
        for (_, partition) in &plan.revoke {
            if let Some(o) = self.owners.get_mut(partition) {
                o.holding = Holding::Revoking { since: now };
            }
        }
        for (member, partition) in &plan.assign {
            let generation = self.next_generation;
            self.next_generation += 1;
            self.owners.insert(
                *partition,
                Ownership {
                    member: member.clone(),
                    generation,
                    holding: Holding::Assigning { since: now },
                },
            );
        }
        let state = self.state;
        let mut any_changed = false;
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let desired = self.desired_for(&id);
            if let Some(member) = self.members.get_mut(&id) {
                if member.last_desired != desired || member.last_job_state != state {
                    member.last_desired = desired;
                    member.last_job_state = state;
                    member.desired_version += 1;
                    any_changed = true;
                }
            }
        }
        if any_changed || !plan.is_empty() {
            self.version += 1;
        }
    }

    fn desired_for(&self, id: &str) -> Vec<Assignment> {
        self.owners
            .iter()
            .filter(|(_, o)| o.member == id && !matches!(o.holding, Holding::Revoking { .. }))
            .map(|(p, o)| Assignment {
                partition: *p,
                generation: o.generation,
                start_offset: self.resume_offset(*p),
            })
            .collect()
    }

    /// Per-member view for the job overview.
    pub fn taskmanagers(&self, now: Instant) -> Vec<TaskManagerInfo> {
        self.members
            .iter()
            .map(|(id, m)| {
                let partitions: Vec<i32> = self
                    .owners
                    .iter()
                    .filter(|(_, o)| &o.member == id)
                    .map(|(p, _)| *p)
                    .collect();
                TaskManagerInfo {
                    id: id.clone(),
                    address: m.address.clone(),
                    idle: partitions.is_empty()
                        && self.state == JobState::Running
                        && m.held_back.is_none(),
                    held_back: m.held_back.as_ref().map(|(reason, _)| reason.clone()),
                    revision: m.revision.clone(),
                    partitions,
                    last_heartbeat_ms_ago: now.saturating_duration_since(m.last_seen).as_millis()
                        as u64,
                }
            })
            .collect()
    }

    /// The Redis topology from the freshest report of any member: they all write to the same
    /// Redis, and the newest read is the best guess of where it stands.
    pub fn redis_topology(&self) -> Option<RedisTopology> {
        self.members
            .values()
            .filter_map(|m| m.redis.as_ref())
            .max_by_key(|r| r.last_refresh_ms)
            .cloned()
    }

    /// Each member's newest load report, for the autoscaler.
    pub fn taskmanager_loads(&self) -> Vec<TaskManagerMetrics> {
        self.members
            .iter()
            .map(|(id, m)| TaskManagerMetrics {
                id: id.clone(),
                load: m.load,
            })
            .collect()
    }

    /// Each partition's newest known high watermark and committed offset, for the autoscaler.
    pub fn partition_offsets(&self) -> Vec<PartitionOffsets> {
        let count = self.partition_count.unwrap_or(0) as i32;
        (0..count)
            .map(|partition| {
                let progress = self.progress.get(&partition);
                let committed = self
                    .offsets
                    .get(&partition)
                    .copied()
                    .or_else(|| progress.and_then(|p| p.committed_offset));
                PartitionOffsets {
                    partition,
                    // Never below what is applied: a high watermark read before the last
                    // flush would show a negative lag.
                    high_watermark: max_opt(progress.and_then(|p| p.high_watermark), committed),
                    committed_offset: committed,
                }
            })
            .collect()
    }

    /// The newest progress report of each partition, as its owner sent it.
    pub fn progress_reports(&self) -> &BTreeMap<i32, PartitionProgress> {
        &self.progress
    }

    pub fn partitions(&self) -> Vec<PartitionStatus> {
        let count = self.partition_count.unwrap_or(0) as i32;
        (0..count)
            .map(|partition| {
                let owner = self.owners.get(&partition);
                let progress = self.progress.get(&partition);
                PartitionStatus {
                    partition,
                    state: match owner.map(|o| o.holding) {
                        None => PartitionState::Unassigned,
                        Some(Holding::Assigning { .. }) => PartitionState::Assigning,
                        Some(Holding::Running) => PartitionState::Running,
                        Some(Holding::Revoking { .. }) => PartitionState::Revoking,
                    },
                    owner: owner.map(|o| o.member.clone()),
                    generation: owner.map(|o| o.generation),
                    committed_offset: self.offsets.get(&partition).copied(),
                    high_watermark: progress.and_then(|p| p.high_watermark),
                    lag: progress.and_then(|p| {
                        let hw = p.high_watermark?;
                        let committed = self
                            .offsets
                            .get(&partition)
                            .copied()
                            .or(p.committed_offset)?;
                        Some((hw - committed).max(0))
                    }),
                    events_per_second: if owner.is_some() {
                        progress.map(|p| p.events_per_second).unwrap_or(0.0)
                    } else {
                        0.0
                    },
                    watermark_ms: self.marks.get(&partition).and_then(|m| m.0),
                    idle: self.marks.get(&partition).is_some_and(|m| m.1),
                    retrying: owner.is_some() && progress.is_some_and(|p| p.retrying),
                    dead_lettered: progress
                        .map(|p| p.dead_lettered.clone())
                        .unwrap_or_default(),
                    last_error: progress.and_then(|p| p.last_error.clone()),
                    rewinds: self.rewinds.get(&partition).map_or(0, |r| r.total),
                    last_rewind: self.rewinds.get(&partition).and_then(|r| r.last),
                }
            })
            .collect()
    }
}

fn max_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests;
