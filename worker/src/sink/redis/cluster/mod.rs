//! Exactly-once on Redis Cluster (issue #25): the design, and the parts of it built so far.
//!
//! austin's key names have no hash tags, so one batch's keys spread over every slot of every
//! shard: a batch of 2,000 events touches about 1,900 of the 16,384 slots. An atomic unit can
//! span one slot (`MULTI`/`EXEC`: `CROSSSLOT` otherwise, even for slots on one node) or one node
//! (a script with `allow-cross-slot-keys`). So the single node's fence, one key per partition,
//! cannot be checked atomically with a batch any more, and it must not stay behind when the
//! data it covers moves to another node.
//!
//! # What is fenced, and where the fence lives
//!
//! Every slot has a fence hash, `{prefix}streamjob:{job}:fence:{topic}:{tag}`, where `{tag}` is
//! a hash tag that puts the key in that slot (`slot.rs`). Field `{partition}` records the
//! partition's last batch that wrote into the slot: `epoch:from:next` ([`fence::SlotFence`]).
//! The fence of a slot lives *in* the slot, so it migrates with the slot's data: `MIGRATE` moves
//! it like any other key, and whichever node serves the slot holds both.
//!
//! A batch is applied as one unit per primary (`unit.rs`): a script that, for each slot the batch
//! writes on that node, compares the slot's fence field with what the owner expects and sets it
//! to the batch, runs the slot's native commands, and sets the node's *unit mark* (field
//! `u{partition}` in the fence hash of the node's anchor slot, [`fence::UnitMark`]). It refuses
//! the whole unit, before writing anything, if any comparison fails. The owner knows what every
//! slot's fence should hold (it read them all at its claim and tracks what its units write), so
//! the comparison is exact: a compare-and-set per slot.
//!
//! A batch is done once all its units are applied. A crash between two nodes' units leaves some
//! slots with the batch and some without; each slot's fence says which. Replaying the batch
//! skips the slots that have it ([`fence::slot_step`]) and applies the others. An owner that
//! resumes cuts its batches at every offset where some slot's fence begins or ends
//! ([`fence::boundaries`]), so a slot never holds part of a batch.
//!
//! # Why a migrating slot cannot apply anything twice or lose anything
//!
//! While slot `s` migrates from node A to node B, its keys leave A a few at a time (`MIGRATE`
//! is atomic per call and blocks A while it runs). A key of `s` is then on A or on B, never on
//! both and never half-written. The unit on A learns from `CLUSTER NODES` (its own line lists
//! `[s->-B]`) that `s` is migrating, and probes the fence and every key the unit writes in `s`
//! with one multi-key `EXISTS`: Redis answers it only if all of them are still on A (otherwise
//! `TRYAGAIN`, or `ASK` if none is). Verified against redis-server 7.0.15:
//!
//! | on A (migrating), inside a script | answer |
//! |---|---|
//! | `EXISTS fence key` with both on A | runs |
//! | `EXISTS fence newkey`, `newkey` on neither node | refused, before any write |
//! | `LPUSH newkey …` alone | refused ("non local key": `ASK`) |
//! | `HGET fence` after the fence was migrated | refused |
//! | the same unit sent to B with `ASKING` while a key is still on A | refused |
//! | on B with `ASKING` once all keys moved | runs |
//!
//! So a unit writes slot `s` only where all of `s`'s keys it touches and `s`'s fence are, in one
//! script that nothing interleaves with; if it cannot, it refuses whole, and the owner waits
//! (with backoff, counted as a `TRYAGAIN` wait) and sends it again — to B once the migration is
//! over. A new key in a migrating slot can only be created after the migration ends; `s`'s
//! other keys, and all other slots, are not held up: the owner puts a migrating slot in a unit
//! of its own. The sink never sends `ASKING`. Without the probe, a script that creates a key in
//! a migrating slot fails midway and keeps what it wrote before (verified: scripts are not
//! rolled back). A `MULTI`/`EXEC` of one slot needs no probe: a queued command on a moving key
//! is refused with `ASK` and `EXEC` then discards the whole transaction (also verified).
//!
//! A fence per node instead would not be safe: a batch applied on A moves A's fence; the slot
//! migrates to B; the owner crashes and replays the batch; B's fence has never seen it and B
//! applies the slot's writes a second time.
//!
//! # Zombie owners
//!
//! The claim reads every slot's fence field and unit mark of the partition (one script per
//! node) and takes an epoch above every epoch stored and above `epoch_floor(generation)`
//! (`mod.rs` of the sink: epochs survive a rollback). Units write it into each fence they set. A
//! unit that finds a newer epoch in any slot stops its owner ([`fence::Mismatch::Fenced`]). A
//! zombie that writes a slot the new owner has not touched yet is not stopped by that slot, but
//! its unit was a compare-and-set like any other: the new owner's next unit on that slot finds
//! a fence it did not expect with an *older* epoch ([`fence::Mismatch::Moved`]), reads the fences
//! again and goes on from them. The zombie applied that batch to that slot once, and nobody
//! applies it again.
//!
//! # Failover rewind: a promoted replica that lost acknowledged writes
//!
//! A shard's replica holds a prefix of its primary's write stream (a script replicates as one
//! atomic entry). When it is promoted having missed the tail, every slot on that shard is back
//! at an older fence, consistently with its data. Every unit on a node compares and sets the
//! node's unit mark, so the first unit after the loss finds the mark behind what the owner
//! wrote ([`fence::Mismatch::Lost`]) before it writes anything. The owner then reads all fences
//! and rewinds to the oldest `next` among the slots that lost writes
//! ([`fence::rewind_point`]); replaying from there, [`fence::slot_step`] re-applies exactly what
//! each slot lost. An owner that claims the partition without knowing what was written resumes
//! at [`fence::resume_point`], the oldest of each node's latest kept unit; the argument that
//! nothing lost lies before it is on that function. A whole cluster restarted from AOFs that
//! lost their last second is the same case on every shard at once.
//!
//! # Cost (measured before choosing: BENCHMARKS.md, "Cluster apply designs compared")
//!
//! The compare-and-set costs two script calls per slot written (`HGET`, `HSET` of the fence
//! field), about one slot per event, and a script runs each data command at about twice its
//! native cost. Measured with 3 primaries, Redis CPU per event summed over them and on the
//! busiest, against the single node's `MULTI`/`EXEC` apply on a plain server: the same commands
//! pipelined with no fence and no atomicity 1.16× and 0.39×; the same in a script, no fence,
//! 2.3× and 0.78×; this design 3.3× and 1.1×; a `MULTI`/`EXEC` per slot with a fence `SET`
//! and no read (not safe; a lower bound for per-slot transactions) 2.2× and 0.75×. The issue's
//! targets (≤ 1.2× summed, ≤ 0.4× on the busiest of 3) are met only by the unfenced pipeline;
//! BENCHMARKS.md ("Cluster apply designs compared") has the figures and the levers left.
//!
//! # In the pipeline (`sink.rs`)
//!
//! The sink keeps one owner per claimed partition. A **claim** reads every slot's fence and
//! mark, takes an epoch above all of them (and above a per-partition claim counter, so two
//! claims never share one), and resumes at [`fence::resume_point`]: after the last batch every
//! primary kept (each batch leaves a mark on every primary, `plan.rs`; one that writes nothing
//! at all, only undecodable records or a replay every slot has, moves the marks that stand
//! before its end, so that no claim resumes before what the job committed). The pipeline cuts
//! its batches at every offset where some slot's fence begins or ends after that point
//! (`RedisSink::cuts`), so replayed batches are skipped or applied whole per slot. A **loss**
//! (a mark behind what the owner wrote) reads everything back and answers `SinkError::Gap` at
//! the resume point: the partition rewinds there, loudly, as on a single node, and the series
//! marks stored in the mark go with it. Waits (`TRYAGAIN`, `ASK`, `MOVED`, re-reads, a node
//! down or `CLUSTERDOWN`) are retried inside the apply with backoff, logged at info level and
//! counted in `streamjob_redis_cluster_waits_total{kind}`; after two minutes the apply returns
//! a retryable error and the partition pauses and retries like on a single node.
//!
//! # Tests
//!
//! - `slot.rs`, `fence.rs`, `plan.rs`: unit tests of the slot function, the decisions and the
//!   slot map;
//! - `tests/redis_cluster_unit.rs`: the unit script against a real cluster, including a
//!   migrating slot;
//! - `tests/redis_cluster_plan.rs`: a batch's units leave exactly the single node's state;
//! - `tests/redis_cluster_failover.rs` (c), `redis_cluster_reshard.rs` (b),
//!   `redis_cluster_restart.rs` (d): the apply loop through a promoted replica that lost
//!   acknowledged units, 1,000 slots resharded and a rebalance, and a restart from AOF;
//! - `tests/redis_cluster_config.rs`: the sink itself on a cluster (claim, apply, replay,
//!   second owner, fenced zombie, a batch that writes nothing) and the two misconfigurations
//!   refused;
//! - `tests/tests/cluster_exactly_once.rs`: a worker process writing while (a) it is SIGKILLed
//!   mid-stream on a 3+3 cluster, (b) 1,000 slots are resharded and an added primary
//!   rebalanced, (c) a primary fails over to a replica that missed acknowledged writes, (d) the
//!   whole cluster restarts from its AOF, whole and cut back; each time the full state compared
//!   with the data set.
//!
//! # What users see (`shape.rs`)
//!
//! Every taskmanager reads the cluster's shape every few seconds, apart from the slot map the
//! applies use: its primaries, and the slots they migrate or import (`CLUSTER NODES`). It
//! travels with the heartbeats to the job overview, the dashboard, the
//! `streamjob_redis_cluster_shards` / `_migrating_slots` gauges and the StreamJob's
//! `status.job.redis` and `RedisSlotsMigrating` condition (`tests/redis_cluster_topology.rs`).
//! A `keyPrefix` holding a `{` is refused (`config.rs`, and a CEL rule in the CRD): a hash tag
//! in the prefix would pin every key and every slot fence to one slot.
//!
//! Not yet: the user-list expiry chosen at apply time (a batch applied after the midnight it
//! was built for keeps that midnight).

pub mod apply;
pub mod fence;
pub mod nodes;
pub mod plan;
pub mod read;
pub(crate) mod seeds;
pub mod shape;
pub(crate) mod sink;
pub mod slot;
pub mod unit;
