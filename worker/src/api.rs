//! Types of the jobmanager's control API (REST on :8081) and of the jobmanager ⇄ taskmanager
//! protocol, shared with the operator. Light: serde only.
//!
//! JSON field names are camelCase, like Flink's REST API and the Kubernetes objects that show them.

use serde::{Deserialize, Serialize};

/// One partition handed to one taskmanager. The Redis fence epoch is what actually guards
/// writes: a taskmanager claims the partition in Redis (which bumps the stored epoch) before it
/// consumes, so an older owner's batches are refused even if it never hears it lost the partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    pub partition: i32,
    /// Assignment generation chosen by the jobmanager (monotonic per job).
    pub generation: u64,
    /// Offset to start from when the Redis fence has none (from a savepoint/checkpoint).
    /// The fence wins when it is ahead.
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
}
