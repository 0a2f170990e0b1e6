//! Triggered and periodic checkpoints, savepoints and stop-with-savepoint: their bookkeeping
//! (pollable by request id) and the file writes that complete them.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::{
    JobState, OperationInfo, OperationKind, OperationStatus, SnapshotInfo, SnapshotKind,
};

use super::coordinator::{SnapshotData, SnapshotOutcome};
use super::store::{Retention, Snapshot, SnapshotStore, StoreError};
use super::{metrics::JobManagerMetrics, now_ms, Shared};

/// Finished operations kept for polling.
const KEEP_FINISHED: usize = 200;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TriggerError {
    #[error("the job is {0}: nothing can be triggered now")]
    WrongState(JobState),
    #[error("the topic's partition count is not known yet (is the broker reachable?)")]
    PartitionsUnknown,
    #[error("targetDirectory must be an absolute path (got {0:?})")]
    BadTarget(String),
    #[error("triggerId must be 1-128 characters of [A-Za-z0-9._-] (got {0:?})")]
    BadTriggerId(String),
    #[error("triggerId {0:?} names an operation of another kind")]
    TriggerIdReused(String),
}

fn check_trigger_id(id: Option<&str>) -> Result<(), TriggerError> {
    match id {
        Some(id)
            if id.is_empty()
                || id.len() > 128
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) =>
        {
            Err(TriggerError::BadTriggerId(id.to_string()))
        }
        _ => Ok(()),
    }
}

#[derive(Debug)]
struct Operation {
    info: OperationInfo,
    snapshot_id: Option<u64>,
    target: Option<PathBuf>,
    started: Instant,
}

#[derive(Debug, Default)]
pub(crate) struct Operations {
    seq: u64,
    ops: BTreeMap<String, Operation>,
    finished: VecDeque<String>,
    pub(crate) last_checkpoint: Option<SnapshotInfo>,
    pub(crate) last_savepoint: Option<SnapshotInfo>,
}

impl Operations {
    /// The request a client-chosen trigger id already names, if any (same kind only).
    fn known(
        &self,
        trigger_id: Option<&str>,
        kind: OperationKind,
    ) -> Result<Option<String>, TriggerError> {
        let Some(id) = trigger_id else {
            return Ok(None);
        };
        match self.ops.get(id) {
            Some(op) if op.info.kind == kind => Ok(Some(id.to_string())),
            Some(_) => Err(TriggerError::TriggerIdReused(id.to_string())),
            None => Ok(None),
        }
    }

    fn add(
        &mut self,
        instance: &str,
        kind: OperationKind,
        snapshot_id: Option<u64>,
        target: Option<PathBuf>,
        trigger_id: Option<String>,
    ) -> String {
        self.seq += 1;
        let prefix = match kind {
            OperationKind::Checkpoint => "chk",
            OperationKind::Savepoint => "sp",
            OperationKind::StopWithSavepoint => "stop",
        };
        let request_id = trigger_id.unwrap_or_else(|| format!("{prefix}-{}-{instance}", self.seq));
        self.ops.insert(
            request_id.clone(),
            Operation {
                info: OperationInfo {
                    request_id: request_id.clone(),
                    kind,
                    status: OperationStatus::InProgress,
                    triggered_at_ms: now_ms(),
                    completed_at_ms: None,
                    location: None,
                    failure_cause: None,
                },
                snapshot_id,
                target,
                started: Instant::now(),
            },
        );
        request_id
    }

    pub(crate) fn get(&self, request_id: &str) -> Option<OperationInfo> {
        self.ops.get(request_id).map(|o| o.info.clone())
    }

    fn finish(&mut self, request_id: &str, result: Result<SnapshotInfo, String>) {
        let Some(op) = self.ops.get_mut(request_id) else {
            return;
        };
        op.info.completed_at_ms = Some(now_ms());
        match result {
            Ok(info) => {
                op.info.status = OperationStatus::Completed;
                op.info.location = Some(info.path.clone());
                match info.kind {
                    SnapshotKind::Checkpoint => self.last_checkpoint = Some(info),
                    SnapshotKind::Savepoint => self.last_savepoint = Some(info),
                }
            }
            Err(cause) => {
                op.info.status = OperationStatus::Failed;
                op.info.failure_cause = Some(cause);
            }
        }
        self.finished.push_back(request_id.to_string());
        while self.finished.len() > KEEP_FINISHED {
            if let Some(old) = self.finished.pop_front() {
                self.ops.remove(&old);
            }
        }
    }
}

fn absolute_target(target: Option<String>) -> Result<Option<PathBuf>, TriggerError> {
    match target {
        None => Ok(None),
        Some(t) if PathBuf::from(&t).is_absolute() => Ok(Some(PathBuf::from(t))),
        Some(t) => Err(TriggerError::BadTarget(t)),
    }
}

fn trigger_snapshot(
    shared: &Shared,
    kind: OperationKind,
    target: Option<PathBuf>,
    trigger_id: Option<String>,
) -> Result<String, TriggerError> {
    check_trigger_id(trigger_id.as_deref())?;
    // Holding the lock from the look-up to the insert: two identical triggers racing each other
    // still take one snapshot.
    let mut operations = shared.lock_operations();
    if let Some(known) = operations.known(trigger_id.as_deref(), kind)? {
        return Ok(known);
    }
    let snapshot_id = shared.with_coordinator(|c| match c.state() {
        JobState::Stopping => Err(TriggerError::WrongState(JobState::Stopping)),
        JobState::Finished if kind == OperationKind::Checkpoint => {
            Err(TriggerError::WrongState(JobState::Finished))
        }
        _ if c.partition_count().is_none() => Err(TriggerError::PartitionsUnknown),
        _ => Ok(c.request_snapshot(Instant::now())),
    })?;
    Ok(operations.add(
        &shared.instance,
        kind,
        Some(snapshot_id),
        target,
        trigger_id,
    ))
}

pub(crate) fn trigger_checkpoint(shared: &Shared) -> Result<String, TriggerError> {
    trigger_snapshot(shared, OperationKind::Checkpoint, None, None)
}

pub(crate) fn trigger_savepoint(
    shared: &Shared,
    target: Option<String>,
    trigger_id: Option<String>,
) -> Result<String, TriggerError> {
    let target = absolute_target(target)?;
    trigger_snapshot(shared, OperationKind::Savepoint, target, trigger_id)
}

/// Stop-with-savepoint: revoke everything (owners flush and release), write the savepoint from
/// the released offsets, then finish. If the savepoint cannot be written the job resumes.
pub(crate) fn stop_with_savepoint(
    shared: &Arc<Shared>,
    target: Option<String>,
    trigger_id: Option<String>,
) -> Result<String, TriggerError> {
    let target = absolute_target(target)?;
    check_trigger_id(trigger_id.as_deref())?;
    let request_id = {
        let mut operations = shared.lock_operations();
        let kind = OperationKind::StopWithSavepoint;
        if let Some(known) = operations.known(trigger_id.as_deref(), kind)? {
            return Ok(known);
        }
        shared.with_coordinator(|c| {
            if c.partition_count().is_none() {
                return Err(TriggerError::PartitionsUnknown);
            }
            c.begin_stop(Instant::now())
                .map_err(|_| TriggerError::WrongState(c.state()))
        })?;
        operations.add(&shared.instance, kind, None, target.clone(), trigger_id)
    };
    let shared = shared.clone();
    let id = request_id.clone();
    tokio::spawn(async move {
        let config = &shared.config.jobmanager;
        let deadline = Instant::now() + config.heartbeat_timeout * 2 + Duration::from_secs(5);
        loop {
            if shared.lock_coordinator().all_released() {
                break;
            }
            if Instant::now() > deadline {
                let cause = "partitions were not released in time".to_string();
                shared.lock_operations().finish(&id, Err(cause));
                shared.with_coordinator(|c| c.end_stop(false, Instant::now()));
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let data = shared.with_coordinator(|c| c.current_snapshot());
        let result = write_snapshot(&shared, SnapshotKind::Savepoint, target, &data).await;
        let ok = result.is_ok();
        if let Ok(info) = &result {
            tracing::info!(path = %info.path, "stopped with savepoint");
        }
        record_metrics(&shared, SnapshotKind::Savepoint, ok, &id);
        shared.lock_operations().finish(&id, result);
        shared.with_coordinator(|c| c.end_stop(ok, Instant::now()));
    });
    Ok(request_id)
}

fn record_metrics(shared: &Shared, kind: SnapshotKind, ok: bool, request_id: &str) {
    let started = shared
        .lock_operations()
        .ops
        .get(request_id)
        .map(|o| o.started);
    let seconds = started.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0);
    let labels = JobManagerMetrics::result_labels(ok);
    let now_seconds = now_ms() as f64 / 1e3;
    match kind {
        SnapshotKind::Checkpoint => {
            shared.metrics.checkpoints.get_or_create(&labels).inc();
            if ok {
                shared.metrics.last_checkpoint_duration_seconds.set(seconds);
                shared
                    .metrics
                    .last_checkpoint_timestamp_seconds
                    .set(now_seconds);
            }
        }
        SnapshotKind::Savepoint => {
            shared.metrics.savepoints.get_or_create(&labels).inc();
            if ok {
                shared.metrics.last_savepoint_duration_seconds.set(seconds);
                shared
                    .metrics
                    .last_savepoint_timestamp_seconds
                    .set(now_seconds);
            }
        }
    }
}

/// Completes the operations waiting for a snapshot.
pub(crate) async fn complete_snapshot(shared: &Arc<Shared>, outcome: SnapshotOutcome) {
    let snapshot_id = match &outcome {
        SnapshotOutcome::Ready(data) => data.id,
        SnapshotOutcome::TimedOut { id, .. } => *id,
    };
    let waiting: Vec<(String, OperationKind, Option<PathBuf>)> = shared
        .lock_operations()
        .ops
        .values()
        .filter(|o| {
            o.snapshot_id == Some(snapshot_id) && o.info.status == OperationStatus::InProgress
        })
        .map(|o| (o.info.request_id.clone(), o.info.kind, o.target.clone()))
        .collect();
    for (request_id, kind, target) in waiting {
        let kind = match kind {
            OperationKind::Checkpoint => SnapshotKind::Checkpoint,
            _ => SnapshotKind::Savepoint,
        };
        let result = match &outcome {
            SnapshotOutcome::Ready(data) => write_snapshot(shared, kind, target, data).await,
            SnapshotOutcome::TimedOut { missing, .. } => Err(format!(
                "taskmanagers {missing:?} did not report their offsets in time"
            )),
        };
        if let Err(cause) = &result {
            tracing::warn!(%request_id, cause, "snapshot failed");
        }
        record_metrics(shared, kind, result.is_ok(), &request_id);
        shared.lock_operations().finish(&request_id, result);
    }
}

/// Writes the file (blocking I/O off the runtime), then applies retention to its directory.
async fn write_snapshot(
    shared: &Arc<Shared>,
    kind: SnapshotKind,
    target: Option<PathBuf>,
    data: &SnapshotData,
) -> Result<SnapshotInfo, String> {
    let config = &shared.config;
    let snapshot = Snapshot::new(
        kind,
        &config.job.name,
        &config.source.kafka.topic,
        data.partition_count,
        data.generation,
        now_ms(),
        &data.offsets,
    )
    .with_watermark(data.watermark_ms);
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || -> Result<SnapshotInfo, StoreError> {
        if let Some(dir) = target {
            return SnapshotStore::open(dir, kind)?.write(&snapshot);
        }
        let (store, retention) = match kind {
            SnapshotKind::Checkpoint => (
                &shared.checkpoints,
                Retention {
                    max_count: shared.config.checkpoint.retain,
                    max_age: None,
                },
            ),
            SnapshotKind::Savepoint => (
                &shared.savepoints,
                Retention {
                    max_count: shared.config.savepoint.max_count,
                    max_age: Some(shared.config.savepoint.max_age).filter(|a| !a.is_zero()),
                },
            ),
        };
        let (info, deleted) = store.write_retaining(&snapshot, retention, now_ms())?;
        if !deleted.is_empty() {
            tracing::info!(?deleted, ?kind, "retention deleted old snapshots");
        }
        Ok(info)
    })
    .await
    .map_err(|e| format!("snapshot writer failed: {e}"))?
    .map_err(|e| e.to_string())
}
