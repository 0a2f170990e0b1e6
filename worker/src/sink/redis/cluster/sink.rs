//! The sink's cluster side: one [`ClusterOwner`] per claimed partition, and what the pipeline
//! asks of any topology (claim, apply, read the fence, restore it, where to cut batches) answered
//! from the per-slot fences and unit marks (`mod.rs` has the protocol).
//!
//! - **Claim**: read every slot's fence and mark of the partition; take an epoch above every
//!   epoch stored there, above the partition's claim counter (field `epoch` of the single
//!   node's fence hash, raised atomically, so two claims never share an epoch) and above
//!   `epoch_floor(generation)`; resume at [`ClusterOwner::resume`] (the oldest of each node's
//!   latest kept unit), with the series marks that unit recorded; and leave a mark there on
//!   every primary ([`ClusterOwner::mark_every_node`]), so that a primary the next batch never
//!   reaches (a crash inside it) still shows where it stands to the next claim.
//! - **Apply**: [`ClusterOwner::apply`]. A lost write (a node's mark or a slot's fence behind
//!   what the owner wrote) reads the fences back and answers [`SinkError::Gap`] at the resume
//!   point: the partition rewinds there, loudly, and [`super::fence::slot_step`] re-applies
//!   exactly what each slot lost. A batch that straddles a fence the owner did not know (a
//!   zombie's batch found by a re-read) is refused the same way at its own start: the
//!   partition reads it again, cut at the fences ([`ClusterSink::cuts`]).
//! - **Read the fence** (the idle check): the owner's own marks, one `HGET` per node; only a
//!   mark that changed costs a full read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::apply::{ClusterOwner, WaitCounts};
use super::fence::boundaries;
use super::nodes::Nodes;
use crate::sink::redis::window::SeriesMarks;
use crate::sink::redis::{epoch_floor, ApplyOutcome, Batch, Claim, Fence, Layout, SinkError};

/// Raises the claim counter: `KEYS[1]` the partition's single-node fence hash, `ARGV[1]` the
/// lowest epoch the claim may take. Returns the epoch, as text.
const CLAIM_LUA: &str = r#"
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
if epoch < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'epoch', ARGV[1])
  return ARGV[1]
end
return tostring(epoch)
"#;

type Shared = Arc<tokio::sync::Mutex<PartitionOwner>>;

/// A claimed partition: the owner and where its applies stand.
struct PartitionOwner {
    owner: ClusterOwner,
    /// Where the partition stands: the resume point, then each applied batch's end.
    next: Option<i64>,
}

/// The cluster side of [`crate::sink::redis::RedisSink`].
pub(crate) struct ClusterSink {
    pub(crate) nodes: Arc<Nodes>,
    layout: Layout,
    owners: Mutex<HashMap<i32, Shared>>,
    waits: std::sync::OnceLock<WaitCounts>,
}

impl ClusterSink {
    pub(crate) fn new(nodes: Arc<Nodes>, layout: Layout) -> Self {
        Self {
            nodes,
            layout,
            owners: Mutex::default(),
            waits: std::sync::OnceLock::new(),
        }
    }

    /// Where the waits of every apply are counted.
    pub(crate) fn count_waits_in(&self, family: WaitCounts) {
        let _ = self.waits.set(family);
    }

    fn owner(&self, partition: i32) -> Option<Shared> {
        let owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        owners.get(&partition).cloned()
    }

    /// An owner that knows what the fences say now (not registered).
    async fn read_all(&self, partition: i32) -> Result<ClusterOwner, SinkError> {
        self.nodes.refresh_map().await?;
        let mut owner =
            ClusterOwner::with_nodes(self.layout.clone(), partition, 0, self.nodes.clone());
        owner.reread().await?;
        Ok(owner)
    }

    /// See the module documentation.
    pub(crate) async fn claim_from(
        &self,
        partition: i32,
        generation: u64,
        resume_if_missing: Option<i64>,
    ) -> Result<Claim, SinkError> {
        let mut owner = self.read_all(partition).await?;
        let floor = epoch_floor(generation).max(owner.stored_epoch() + 1);
        owner.epoch = self.raise_claim_counter(partition, floor).await?;
        let kept = owner.resume();
        let resume = kept.map(|m| m.resume()).or(resume_if_missing);
        let series = kept.map(|m| m.series).unwrap_or_default();
        owner.clock = series.clock;
        if let Some(at) = resume {
            owner.mark_every_node(at, series).await?;
        }
        let epoch = owner.epoch;
        let fence = Fence {
            epoch,
            next_offset: resume,
            max_event_ms: series.clock,
            learned_ms: series.learned,
        };
        let shared = Arc::new(tokio::sync::Mutex::new(PartitionOwner {
            owner,
            next: resume,
        }));
        self.owners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(partition, shared);
        tracing::info!(
            job = self.layout.job(),
            partition,
            epoch,
            next_offset = resume,
            primaries = self.nodes.map().nodes().len(),
            "claimed the partition's slot fences on the cluster"
        );
        Ok(Claim {
            fence,
            was_missing: kept.is_none(),
        })
    }

    async fn raise_claim_counter(&self, partition: i32, floor: u64) -> Result<u64, SinkError> {
        let key = self.layout.fence_key(partition);
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(CLAIM_LUA).arg(1).arg(&key).arg(floor);
        let reply = self.nodes.query(key.as_bytes(), &cmd, "claim").await?;
        crate::sink::redis::script::int_of(&reply)
            .and_then(|e| u64::try_from(e).ok())
            .ok_or_else(|| SinkError::Script(format!("unexpected claim reply {reply:?}")))
    }

    /// The offsets after `from` where the partition's batches must end (see
    /// [`super::fence::boundaries`]).
    pub(crate) async fn cuts(&self, partition: i32, from: i64) -> Vec<i64> {
        match self.owner(partition) {
            Some(shared) => boundaries(&shared.lock().await.owner.positions, from),
            None => Vec::new(),
        }
    }

    pub(crate) async fn apply(&self, batch: &Batch) -> Result<ApplyOutcome, SinkError> {
        let shared = self.owner(batch.partition).ok_or_else(|| {
            SinkError::Script(format!("partition {} was not claimed", batch.partition))
        })?;
        let mut guard = shared.lock().await;
        let state = &mut *guard;
        if batch.epoch != state.owner.epoch {
            return Err(SinkError::Fenced {
                partition: batch.partition,
                stored_epoch: state.owner.epoch.max(batch.epoch + 1),
                our_epoch: batch.epoch,
            });
        }
        let result = state.owner.apply(batch, self.waits.get()).await;
        tracing::debug!(stats = ?state.owner.last_stats(), ok = result.is_ok(), "cluster apply");
        match result {
            Ok(stats) => {
                state.next = Some(batch.next_offset);
                // Units that only moved marks wrote none of the batch's data.
                Ok(match stats.units - stats.mark_units {
                    0 => ApplyOutcome::AlreadyApplied,
                    _ => ApplyOutcome::Applied {
                        events: batch.events,
                        commands: stats.commands as usize,
                        write_errors: stats.write_errors as usize,
                    },
                })
            }
            Err(SinkError::Gap { .. }) => self.lost(state, batch).await,
            Err(SinkError::Overlap { .. }) => {
                // A zombie's batch the owner learnt of on a re-read ends inside this one.
                tracing::warn!(
                    first_offset = batch.first_offset,
                    "the batch straddles a slot fence another owner wrote; reading it again, \
                     cut at the fences"
                );
                state.next = Some(batch.first_offset);
                Err(gap(
                    batch,
                    Some(batch.first_offset),
                    state.owner.clock,
                    None,
                ))
            }
            Err(err) => Err(err),
        }
    }

    /// A node lost acknowledged writes: read everything back and rewind to the resume point.
    /// A node that held marks and now holds none lost everything (`None`: from the earliest).
    async fn lost(
        &self,
        state: &mut PartitionOwner,
        batch: &Batch,
    ) -> Result<ApplyOutcome, SinkError> {
        let had = state.owner.nodes_with_marks();
        state.owner.reread().await?;
        let emptied = had.difference(&state.owner.nodes_with_marks()).count() > 0;
        let kept = state.owner.resume();
        let resume = kept
            .map(|m| m.resume())
            .filter(|r| *r <= batch.first_offset && !emptied);
        let series = kept.map(|m| m.series).unwrap_or_default();
        if let Some(resume) = resume {
            state.owner.clock = series.clock;
            state.next = Some(resume);
        }
        Err(gap(batch, resume, series.clock, series.learned))
    }

    /// The fence as the pipeline knows it: where the partition stands, checked against the
    /// owner's own marks; a changed mark (or no owner here) reads every slot.
    pub(crate) async fn read_fence(&self, partition: i32) -> Result<Option<Fence>, SinkError> {
        if let Some(shared) = self.owner(partition) {
            let mut state = shared.lock().await;
            if self.marks_hold(&state.owner).await? {
                return Ok(Some(Fence {
                    epoch: state.owner.epoch,
                    next_offset: state.next,
                    max_event_ms: state.owner.clock,
                    learned_ms: None,
                }));
            }
            state.owner.reread().await?;
            let fence = summary(&state.owner);
            if let Some(fence) = fence.filter(|f| f.epoch <= state.owner.epoch) {
                state.next = fence.next_offset;
                state.owner.clock = fence.max_event_ms;
            }
            return Ok(fence.map(|f| Fence {
                epoch: f.epoch.max(state.owner.epoch),
                ..f
            }));
        }
        Ok(summary(&self.read_all(partition).await?))
    }

    /// Whether every mark this owner set is still what it set.
    async fn marks_hold(&self, owner: &ClusterOwner) -> Result<bool, SinkError> {
        let field = format!("u{}", owner.partition);
        for (anchor, mark) in owner.marks.iter().filter(|(_, m)| m.epoch == owner.epoch) {
            let key = self.layout.slot_fence_key(*anchor);
            let mut cmd = redis::cmd("HGET");
            cmd.arg(&key).arg(&field);
            let reply = self
                .nodes
                .query(key.as_bytes(), &cmd, "read a unit mark")
                .await?;
            let text = match reply {
                redis::Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                _ => String::new(),
            };
            if text != mark.to_string() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The fence vanished on a node (it holds no mark of the partition any more): start again
    /// at `resume_if_missing` (the broker's earliest offset), which every slot's fence skips
    /// past where it still holds writes.
    pub(crate) async fn restore_fence(
        &self,
        partition: i32,
        epoch: u64,
        resume_if_missing: i64,
    ) -> Result<Fence, SinkError> {
        let shared = self
            .owner(partition)
            .ok_or_else(|| SinkError::Script(format!("partition {partition} was not claimed")))?;
        let mut state = shared.lock().await;
        state.owner.reread().await?;
        let stored = state.owner.stored_epoch();
        if stored > epoch {
            return Err(SinkError::Fenced {
                partition,
                stored_epoch: stored,
                our_epoch: epoch,
            });
        }
        state.owner.clock = None;
        state.next = Some(resume_if_missing);
        Ok(Fence {
            epoch,
            next_offset: Some(resume_if_missing),
            max_event_ms: None,
            learned_ms: None,
        })
    }
}

/// What every slot says of the partition, as one fence: the highest epoch stored, and the
/// resume point with its series marks. `None` when nothing is stored.
fn summary(owner: &ClusterOwner) -> Option<Fence> {
    let kept = owner.resume();
    let epoch = owner.stored_epoch();
    (kept.is_some() || epoch > 0).then(|| Fence {
        epoch,
        next_offset: kept.map(|m| m.resume()),
        max_event_ms: kept.and_then(|m| m.series.clock),
        learned_ms: kept.and_then(|m| m.series.learned),
    })
}

fn gap(batch: &Batch, resume: Option<i64>, clock: Option<i64>, learned: Option<i64>) -> SinkError {
    SinkError::Gap {
        partition: batch.partition,
        stored_next_offset: resume,
        first_offset: batch.first_offset,
        next_offset: batch.next_offset,
        marks: SeriesMarks { clock, learned },
    }
}
