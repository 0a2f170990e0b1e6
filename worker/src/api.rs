//! Types of the jobmanager's control API (REST on :8081) and of the jobmanager ⇄ taskmanager
//! protocol, shared with the operator. Light: serde only.
//!
//! JSON field names are camelCase, like Flink's REST API and the Kubernetes objects that show them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One partition handed to one taskmanager. The Redis fence epoch is what actually guards
/// writes: a taskmanager claims the partition in Redis (which bumps the stored epoch) before it
/// consumes, so an older owner's batches are refused even if it never hears it lost the partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    pub partition: i32,
    /// Assignment generation chosen by the jobmanager (monotonic per job). The claim's epoch is at
    /// least `generation << 20`, which keeps it above every earlier owner's even after Redis
    /// rolled the fence back.
    pub generation: u64,
    /// The job's committed offset for the partition (from a savepoint, a checkpoint or reports),
    /// if any. The Redis fence always wins: a fence behind it means Redis lost writes (the
    /// partition rewinds to the fence); no fence at all means Redis lost the fence (the partition
    /// re-applies from the earliest retained offset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_offset: Option<i64>,
}

/// Progress of one partition as its owner reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct PartitionProgress {
    pub partition: i32,
    /// Fence epoch this owner holds in Redis.
    pub epoch: u64,
    /// Next offset to apply: every offset below it is in Redis (or the DLQ) exactly once.
    pub committed_offset: Option<i64>,
    /// Broker's high watermark as last seen.
    pub high_watermark: Option<i64>,
    /// `high_watermark - committed_offset`, when both are known.
    pub lag: Option<i64>,
    /// Events applied per second over the last few seconds.
    pub events_per_second: f64,
    /// Event-time watermark of what is applied (largest event time − `window.maxOutOfOrderness`),
    /// epoch ms; `None` before the first event (or with `window.enabled: false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark_ms: Option<i64>,
    /// No records for `window.idleTimeout`: the partition does not hold the job's watermark.
    #[serde(default)]
    pub idle: bool,
    /// The partition is paused, retrying a batch or a dead-letter delivery (Redis or broker
    /// unavailable).
    #[serde(default, skip_serializing_if = "is_false")]
    pub retrying: bool,
    /// Records dead-lettered since this owner took the partition, by reason kind
    /// (`invalid_json`, `missing_ids`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dead_lettered: BTreeMap<String, u64>,
    /// The newest failure this owner met on the partition (retried or not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<PartitionError>,
    /// Rewinds since this owner took the partition: Redis lost writes it had acknowledged and
    /// the partition re-read from the fence.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rewinds: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rewind: Option<Rewind>,
}

/// One failure a partition met, as its owner reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct PartitionError {
    /// Wall-clock time, epoch milliseconds.
    pub at_ms: u64,
    /// `redis` or `kafka`.
    pub source: String,
    /// Machine-readable kind (`unavailable`, `dlq_delivery`, …).
    pub kind: String,
    pub message: String,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One rewind of a partition: Redis lost acknowledged writes (its fence fell back, or vanished)
/// and the partition re-reads `[to_offset, from_offset)` and applies it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rewind {
    /// Where the partition was: every offset below it had been applied (as far as it knew).
    pub from_offset: i64,
    /// Where Redis's fence stood (or the earliest retained offset when the fence vanished).
    pub to_offset: i64,
    /// Wall-clock time of the rewind (ms since the epoch).
    pub at_ms: u64,
}

// ---------------------------------------------------------------------------------------------
// REST API of the jobmanager (operator- and user-facing), modelled on Flink's.
// ---------------------------------------------------------------------------------------------

/// Lifecycle of the job as the jobmanager sees it (Flink's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    /// Just started: waiting for running taskmanagers to re-register before assigning anything.
    Initializing,
    /// Partitions are assigned to registered taskmanagers (some may be unassigned when none runs).
    Running,
    /// Stop-with-savepoint in progress: owners flush and release every partition.
    Stopping,
    /// Stopped with a savepoint; nothing is consumed until the jobmanager restarts.
    Finished,
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JobState::Initializing => "INITIALIZING",
            JobState::Running => "RUNNING",
            JobState::Stopping => "STOPPING",
            JobState::Finished => "FINISHED",
        })
    }
}

/// `GET /jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobList {
    pub jobs: Vec<JobSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobSummary {
    pub id: String,
    pub state: JobState,
}

/// `GET /jobs/{jobId}`: the job overview.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobOverview {
    pub job_id: String,
    pub state: JobState,
    pub topic: String,
    /// Partitions of the topic; `None` until the broker answered.
    pub partition_count: Option<u32>,
    /// Latest assignment generation handed out.
    pub generation: u64,
    pub taskmanagers: Vec<TaskManagerInfo>,
    /// Taskmanagers that own no partition because there are more taskmanagers than partitions.
    pub idle_taskmanagers: u32,
    pub unassigned_partitions: u32,
    /// Sum of the known per-partition lags.
    pub total_lag: Option<i64>,
    pub events_per_second: f64,
    pub partitions: Vec<PartitionStatus>,
    /// Where the starting state came from.
    pub restored_from: RestoreSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint: Option<SnapshotInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_savepoint: Option<SnapshotInfo>,
    /// The event-time series' watermark and finality (absent with `window.enabled: false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<WatermarkStatus>,
    /// The Redis the taskmanagers write to, from the freshest of their reports (absent until
    /// one reported it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisTopology>,
}

/// The job's event-time watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct WatermarkStatus {
    /// Minimum over active (not idle) partitions of their watermarks; never goes back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark_ms: Option<i64>,
    /// The watermark recorded in Redis as final: at most `watermarkMs`, and only once every
    /// taskmanager has acknowledged it (so none can still write to a window it closes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_watermark_ms: Option<i64>,
    /// Every window ending at or before this is final (`finalWatermarkMs − allowedLateness`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_before_ms: Option<i64>,
}

/// Which kind of Redis the sink writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// One server at a fixed address (`sink.redis.url`).
    #[default]
    Single,
    /// The primary a set of Sentinels names (`sink.redis.sentinel`).
    Sentinel,
    /// A Redis Cluster (`sink.redis.cluster`).
    Cluster,
}

impl std::fmt::Display for RedisMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RedisMode::Single => "single",
            RedisMode::Sentinel => "sentinel",
            RedisMode::Cluster => "cluster",
        })
    }
}

/// The Redis a taskmanager writes to, as it last read it: sent with its heartbeats and shown in
/// the job overview (the freshest report of any taskmanager), the dashboard and the
/// StreamJob's status. On a cluster, resharding shows here as migrating slots: applies to them
/// wait until it ends (a wait, not an error).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct RedisTopology {
    pub mode: RedisMode,
    /// Primaries that serve slots (1 on a single node or behind Sentinel).
    pub shards: u32,
    /// Their addresses, `host:port`, sorted.
    pub primaries: Vec<String>,
    /// Slots some primary is migrating out or importing (`CLUSTER SETSLOT … MIGRATING` /
    /// `IMPORTING`): a reshard in progress, or one left half done. Always 0 off a cluster.
    pub migrating_slots: u32,
    /// When this was read (epoch ms, the taskmanager's clock).
    pub last_refresh_ms: u64,
}

/// What one taskmanager measured of its own load since it started: cumulative counters (so any
/// number of readers can take rates between two reads of them), plus Redis' recent apply
/// latency. Sent with every heartbeat; the autoscaler's input.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct TaskManagerLoad {
    /// Milliseconds since the taskmanager's pipeline started (monotonic clock): the wall time
    /// `busyMs` is a part of.
    pub elapsed_ms: u64,
    /// Milliseconds during which at least one of its partitions was deciding or applying a
    /// batch (decoding records, dead-lettering, the Redis transaction and its retries), as
    /// opposed to waiting for records.
    pub busy_ms: u64,
    /// Events applied to Redis (replays not counted).
    pub processed_events: u64,
    /// Batch applies that reached Redis (one per transaction, retries included).
    pub redis_applies: u64,
    /// Batch applies retried after a retryable Redis error.
    pub redis_retries: u64,
    /// p99 of one batch apply's round trip over the last
    /// [`REDIS_LATENCY_WINDOW_SECS`] seconds, ms; 0 without applies.
    pub redis_apply_p99_ms: f64,
}

/// The recent window of [`TaskManagerLoad::redis_apply_p99_ms`].
pub const REDIS_LATENCY_WINDOW_SECS: u64 = 30;

/// `GET /jobs/{jobId}/autoscaler-metrics`: what the operator's autoscaler samples, as
/// counters and positions at one instant (`atMs`); rates are differences of two reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerMetrics {
    pub job_id: String,
    pub state: JobState,
    /// The jobmanager's wall clock when it answered (epoch ms).
    pub at_ms: i64,
    pub partition_count: Option<u32>,
    /// Every registered taskmanager, with its newest load report (`None`: none yet).
    pub taskmanagers: Vec<TaskManagerMetrics>,
    /// Every partition's newest known high watermark and committed offset.
    pub partitions: Vec<PartitionOffsets>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskManagerMetrics {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<TaskManagerLoad>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionOffsets {
    pub partition: i32,
    /// The broker's high watermark as the owner last saw it.
    pub high_watermark: Option<i64>,
    /// Next offset to apply (every offset below it is in Redis).
    pub committed_offset: Option<i64>,
}

/// `GET /jobs/{jobId}/series?businessId=…&from=…&to=…`: one template's per-window counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeriesResponse {
    pub business_id: i64,
    pub window_size_ms: i64,
    /// Windows ending at or before this are final (complete); `None`: nothing final yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_before_ms: Option<i64>,
    /// Windows with any count in `[from, to)`, oldest first.
    pub windows: Vec<SeriesWindow>,
    /// Events that came after their window was final, per state.
    pub late: std::collections::BTreeMap<String, i64>,
    /// Events with absurd timestamps (far future or past), per state.
    pub skewed: std::collections::BTreeMap<String, i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeriesWindow {
    pub start_ms: i64,
    pub end_ms: i64,
    pub r#final: bool,
    /// Count per state code.
    pub counts: std::collections::BTreeMap<String, i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskManagerInfo {
    pub id: String,
    /// Address the taskmanager advertised (its metrics endpoint), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub partitions: Vec<i32>,
    /// Owns nothing and will get nothing (more taskmanagers than partitions).
    pub idle: bool,
    pub last_heartbeat_ms_ago: u64,
    /// Why it gets nothing for now: an assignment it did not confirm in time was taken back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_back: Option<String>,
    /// What it runs (`STREAMJOB_REVISION`), when it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

/// Where one partition stands in the assignment protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PartitionState {
    #[default]
    Unassigned,
    /// Handed to an owner that has not yet confirmed it.
    Assigning,
    Running,
    /// Owner asked to flush and release it.
    Revoking,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct PartitionStatus {
    pub partition: i32,
    pub state: PartitionState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// Next offset to apply, as last reported (every offset below it is in Redis exactly once).
    pub committed_offset: Option<i64>,
    pub high_watermark: Option<i64>,
    pub lag: Option<i64>,
    pub events_per_second: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark_ms: Option<i64>,
    #[serde(default)]
    pub idle: bool,
    /// The owner is retrying (see [`PartitionProgress::retrying`]).
    #[serde(default, skip_serializing_if = "is_false")]
    pub retrying: bool,
    /// Dead-lettered by the current owner, by reason kind.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dead_lettered: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<PartitionError>,
    /// Rewinds of this partition seen by this jobmanager (Redis lost acknowledged writes).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rewinds: u64,
    /// The latest of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rewind: Option<Rewind>,
}

/// Where the jobmanager took its starting offsets from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum RestoreSource {
    /// `--from-savepoint PATH` (or `savepoint.restoreFrom`).
    Savepoint { path: String, id: u64 },
    /// The newest complete checkpoint in the state directory.
    Checkpoint { path: String, id: u64 },
    /// Nothing to restore: the configured starting offsets (the Redis fences still win when ahead).
    StartingOffsets,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotKind {
    Checkpoint,
    Savepoint,
}

/// One complete checkpoint or savepoint file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotInfo {
    pub id: u64,
    pub kind: SnapshotKind,
    /// Absolute path of the file.
    pub path: String,
    pub created_at_ms: u64,
    pub size_bytes: u64,
    /// Partitions with a recorded offset.
    pub partitions: u32,
}

/// `GET /jobs/{jobId}/checkpoints` and `GET /jobs/{jobId}/savepoints`, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotList {
    pub snapshots: Vec<SnapshotInfo>,
}

/// Body of `POST /jobs/{jobId}/savepoints` (may be empty).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TriggerSavepointRequest {
    /// Directory to write into instead of the configured savepoint directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_directory: Option<String>,
    /// Client-chosen request id (`[A-Za-z0-9._-]`, at most 128): a trigger repeated with an id
    /// the jobmanager knows answers that request again instead of taking a second savepoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger_id: Option<String>,
}

/// Body of `POST /jobs/{jobId}/stop` (may be empty).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct StopWithSavepointRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_directory: Option<String>,
    /// Client-chosen request id, as for [`TriggerSavepointRequest::trigger_id`]: a repeated stop
    /// answers the stop already under way (or done) instead of `409`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger_id: Option<String>,
}

/// `202 Accepted` answer to a trigger: poll `GET /jobs/{jobId}/savepoints/{requestId}`
/// (checkpoints: `GET /jobs/{jobId}/checkpoints/triggers/{requestId}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerResponse {
    pub request_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OperationKind {
    Checkpoint,
    Savepoint,
    StopWithSavepoint,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OperationStatus {
    InProgress,
    Completed,
    Failed,
}

/// State of one triggered checkpoint, savepoint or stop-with-savepoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationInfo {
    pub request_id: String,
    pub kind: OperationKind,
    pub status: OperationStatus,
    pub triggered_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at_ms: Option<u64>,
    /// Path of the written file, once completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_cause: Option<String>,
}

/// Every error answer of the REST API (Flink's shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorResponse {
    pub errors: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// jobmanager ⇄ taskmanager protocol (HTTP/JSON on the jobmanager's REST port).
//
// The jobmanager is declarative: every heartbeat answer carries the complete set of partitions
// the taskmanager should own. The taskmanager releases what is not in it (flush, then report it
// as released) and claims what is new. A partition moves to a new owner only after the old one
// reported it released, left, or timed out; the Redis fence covers the time-out case.
// ---------------------------------------------------------------------------------------------

/// A partition a taskmanager holds (or is still taking or releasing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnedPartition {
    pub partition: i32,
    pub generation: u64,
}

/// A partition the taskmanager flushed and stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleasedPartition {
    pub partition: i32,
    pub generation: u64,
    /// Next offset to apply (what is in Redis), when known.
    pub committed_offset: Option<i64>,
}

/// `POST /taskmanagers/{id}/register`. Re-registering an id resets that member: whatever it
/// reports in `owned` is adopted if nobody else holds it, otherwise revoked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct RegisterRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub owned: Vec<OwnedPartition>,
    pub progress: Vec<PartitionProgress>,
    /// What this taskmanager runs (`STREAMJOB_REVISION`; the operator sets the pod template's
    /// config hash), shown in the overview: during a rolling upgrade, old and new side by side.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterResponse {
    pub taskmanager_id: String,
    /// Changes on every jobmanager start.
    pub jobmanager_instance: String,
    pub heartbeat_interval_ms: u64,
}

/// `POST /taskmanagers/{id}/heartbeat`. An unknown id gets `404` (the jobmanager restarted):
/// register again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct HeartbeatRequest {
    /// Increases with every heartbeat of one taskmanager process; stale reports are ignored.
    pub seq: u64,
    /// The `desiredVersion` of the last answer this taskmanager applied.
    pub desired_version: u64,
    /// Partitions held, being claimed or being released.
    pub owned: Vec<OwnedPartition>,
    pub progress: Vec<PartitionProgress>,
    /// Released since the last heartbeat the jobmanager answered.
    pub released: Vec<ReleasedPartition>,
    /// Highest snapshot request answered by this report (its progress is fresh).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_ack: Option<u64>,
    /// Let the jobmanager hold the answer until something changes (long poll, at most one
    /// heartbeat interval).
    pub wait: bool,
    /// The lowest job watermark any of this taskmanager's batches may still decide lateness
    /// with (what it learned, or less while an older batch is in flight): the jobmanager records
    /// a watermark as final in Redis only once every taskmanager acknowledged it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watermark_ack_ms: Option<i64>,
    /// This taskmanager's load counters (the autoscaler's input).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load: Option<TaskManagerLoad>,
    /// The Redis topology as this taskmanager last read it (absent before its first read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisTopology>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatResponse {
    pub job_state: JobState,
    /// Bumped whenever `assignments` changes for this taskmanager.
    pub desired_version: u64,
    /// Complete set of partitions this taskmanager should own.
    pub assignments: Vec<Assignment>,
    /// Send a fresh progress report with `snapshotAck` = this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_request: Option<u64>,
    /// The job's event-time watermark: a partition never counts an event into a window that is
    /// final at it (a partition waking from idle catches up to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_watermark_ms: Option<i64>,
    /// Partitions the jobmanager means this taskmanager to own but is still freeing (their old
    /// owners flush): until they arrive the taskmanager has not taken its share (`/readyz`).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub awaiting: u32,
    /// Why the jobmanager gives this taskmanager nothing for now (it did not take what it was
    /// given in time); it is not ready meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_back: Option<String>,
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

/// `POST /taskmanagers/{id}/leave`: graceful leave after flushing everything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct LeaveRequest {
    pub released: Vec<ReleasedPartition>,
}

#[cfg(all(test, feature = "engine"))]
mod tests {
    use super::*;

    #[test]
    fn assignments_without_start_offset_omit_it() {
        let a = Assignment {
            partition: 3,
            generation: 7,
            start_offset: None,
        };
        let json = serde_json::to_string(&a).expect("serialises");
        assert_eq!(json, r#"{"partition":3,"generation":7}"#);
        let back: Assignment = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, a);
    }

    #[test]
    fn restore_source_is_tagged_by_kind() {
        let json = serde_json::to_string(&RestoreSource::Savepoint {
            path: "/sp/a.json".into(),
            id: 4,
        })
        .expect("serialises");
        assert_eq!(json, r#"{"kind":"savepoint","path":"/sp/a.json","id":4}"#);
        let json = serde_json::to_string(&RestoreSource::StartingOffsets).expect("serialises");
        assert_eq!(json, r#"{"kind":"startingOffsets"}"#);
        assert_eq!(
            serde_json::to_string(&JobState::Initializing).expect("serialises"),
            r#""INITIALIZING""#
        );
    }

    #[test]
    fn trigger_requests_refuse_unknown_fields_and_accept_empty_bodies() {
        let empty: TriggerSavepointRequest = serde_json::from_str("{}").expect("empty is valid");
        assert_eq!(empty.target_directory, None);
        let err = serde_json::from_str::<StopWithSavepointRequest>(r#"{"drain":true}"#)
            .expect_err("unknown field");
        assert!(err.to_string().contains("drain"), "{err}");
    }
}
