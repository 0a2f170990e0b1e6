//! The autoscaler applied to one StreamJob: when it decides, what the decision makes of the job
//! the planner renders, and what of it is worth a status write. Pure, like [`super::decide`];
//! the reconciler only fetches the samples ([`super::history`]) and writes what this returns.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use super::{decide, effective_replicas, Input, Sample, Settings};
use crate::crd::{
    AutoscalerMode, AutoscalerStatus, JobState, OperationStep, Phase, StreamJob, StreamJobStatus,
};
use crate::planner::EventNote;

/// One evaluation's outcome for the reconciler.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Taskmanagers to run from now on (what the planner renders).
    pub replicas: i32,
    /// The next `status.autoscaler`: the stored one when nothing but the reason's figures moved.
    pub status: AutoscalerStatus,
    /// Published on a decision (a scale, a recommendation, a warning entered).
    pub event: Option<EventNote>,
}

/// The settings of a job whose autoscaler is on (and valid).
pub fn settings(job: &StreamJob) -> Option<Settings> {
    let spec = &job.spec.autoscaler;
    spec.enabled
        .then(|| Settings::from_spec(spec).ok())
        .flatten()
}

/// Whether the autoscaler decides for this job now: on, the job meant to run and running, and
/// no operation (upgrade, suspend, savepoint...) in flight.
pub fn deciding(job: &StreamJob) -> Option<Settings> {
    let settings = settings(job)?;
    let status = job.status.as_ref()?;
    let idle_operation = status
        .current_operation
        .as_ref()
        .is_none_or(|o| matches!(o.step, OperationStep::Done | OperationStep::Failed));
    let running = job.spec.state == JobState::Running && status.phase == Phase::Running;
    (running && idle_operation).then_some(settings)
}

/// The topic's partition count as the jobmanager last told it (0: unknown): its overview of
/// this round, else the partitions recorded in `status.job`.
pub fn partitions(job: &StreamJob, overview: Option<u32>) -> i32 {
    let recorded = || {
        job.status
            .as_ref()
            .and_then(|s| s.job.as_ref())
            .map_or(0, |j| j.partitions.len())
    };
    let count = overview.map_or_else(recorded, |n| n as usize);
    i32::try_from(count).unwrap_or(i32::MAX)
}

/// The taskmanager count to run: in mode `scale` the autoscaler's ([`effective_replicas`]),
/// otherwise `spec.replicas`.
pub fn replicas(job: &StreamJob, partitions: i32) -> i32 {
    if settings(job).is_none() {
        return job.spec.replicas;
    }
    effective_replicas(
        &job.spec.autoscaler,
        job.status.as_ref().and_then(|s| s.autoscaler.as_ref()),
        job.spec.replicas,
        partitions,
    )
}

/// The job as the planner should render it: `spec.replicas` replaced by the count to run.
pub fn as_planned(job: &StreamJob, partitions: i32) -> Option<StreamJob> {
    let replicas = replicas(job, partitions);
    (replicas != job.spec.replicas).then(|| {
        let mut planned = job.clone();
        planned.spec.replicas = replicas;
        planned
    })
}

/// One decision for a job the autoscaler is [`deciding`] for, from its samples (oldest first).
pub fn evaluate(
    job: &StreamJob,
    samples: &[Sample],
    partitions: i32,
    now: Timestamp,
) -> Option<Evaluation> {
    let settings = deciding(job)?;
    let last = job.status.as_ref().and_then(|s| s.autoscaler.as_ref());
    let current = match settings.mode {
        AutoscalerMode::Scale => replicas(job, partitions),
        AutoscalerMode::Recommend => job.spec.replicas,
    };
    let decision = decide(&Input {
        settings: &settings,
        metrics: samples,
        current_replicas: current,
        spec_replicas: job.spec.replicas,
        partitions,
        last,
        now,
    });
    Some(Evaluation {
        replicas: decision.replicas,
        status: settle(last, decision.status),
        event: decision.event,
    })
}

/// The status to keep: `next`, unless it differs from `previous` only in the reason's figures
/// (`busy 0.41` → `busy 0.43`), which are not worth a write every sampling interval. The reason
/// then stays the one written with the last change of state, count or stabilization.
pub fn settle(previous: Option<&AutoscalerStatus>, next: AutoscalerStatus) -> AutoscalerStatus {
    match previous {
        Some(previous)
            if AutoscalerStatus {
                reason: previous.reason.clone(),
                ..next.clone()
            } == *previous =>
        {
            previous.clone()
        }
        _ => next,
    }
}

/// A job the autoscaler decides for comes back every sampling interval, and each round its
/// jobmanager's overview refreshes `status.job` (lag, events/s, `observedAt`). That progress is
/// still written at the cadence of a job without the autoscaler
/// ([`crate::planner::status::REQUEUE_IDLE`]), not every interval: when nothing but `status.job`
/// changed and the stored progress is younger than that, the stored progress is kept, so a
/// steady job makes no write.
pub fn throttle_progress(
    stored: Option<&StreamJobStatus>,
    next: &mut StreamJobStatus,
    now: Timestamp,
) {
    let Some(stored) = stored else { return };
    let fresh = stored
        .job
        .as_ref()
        .and_then(|j| j.observed_at.as_ref())
        .and_then(|t| Duration::try_from(now.duration_since(t.0)).ok())
        .is_some_and(|age| age < crate::planner::status::REQUEUE_IDLE);
    let only_progress = StreamJobStatus {
        job: stored.job.clone(),
        ..next.clone()
    } == *stored;
    if fresh && only_progress {
        next.job = stored.job.clone();
    }
}
