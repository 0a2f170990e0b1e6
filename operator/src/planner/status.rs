//! The next status of a StreamJob and the Events its transitions deserve (pure).

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::crd::{
    JobProgress, JobState, PartitionRewind, PartitionSummary, Phase, StreamJob, StreamJobStatus,
};
use crate::planner::annotations::CONFIG_HASH_ANNOTATION;
use crate::planner::annotations::RESTART_NONCE_ANNOTATION;
use crate::planner::conditions::condition;
use streamjob_worker::api::RestoreSource;

use crate::planner::{
    labels, redis, EventNote, EventSeverity, JobManagerReport, Observed, PlanInput,
};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
/// Present once the jobmanager reported a rewind: Redis lost acknowledged writes.
pub const REDIS_REWOUND: &str = "RedisRewound";
pub const REDIS_LOST_WRITES: &str = "RedisLostWrites";

/// Requeue while something is moving.
pub const REQUEUE_BUSY: Duration = Duration::from_secs(10);
/// Requeue when all is stable (watches bring changes sooner).
pub const REQUEUE_IDLE: Duration = Duration::from_secs(300);

pub struct Next {
    pub status: StreamJobStatus,
    pub requeue_after: Duration,
}

/// How far one Deployment is from what the plan wants.
/// Ordered from the least advanced: the job's progress is that of its least advanced Deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rollout {
    /// The Deployment controller gave up (progress deadline) or cannot create pods.
    Failed,
    /// Not there yet, or just created: its controller has not looked at it yet.
    Missing,
    /// Its pod template is older than the plan (config, image, restart nonce...).
    Outdated,
    /// Its replica count differs from the plan's.
    Scaling,
    /// Up to date, waiting for pods to be ready.
    Waiting,
    /// Up to date and ready.
    Done,
}

fn rollout(
    deployment: Option<&Deployment>,
    desired_replicas: i32,
    config_hash: &str,
    restart_nonce: Option<i64>,
) -> (Rollout, Option<String>) {
    let Some(deployment) = deployment else {
        return (Rollout::Missing, None);
    };
    let status = deployment.status.clone().unwrap_or_default();
    // A Deployment its controller has never looked at is still being created: no pods, no
    // conditions, nothing to say beyond what `Missing` says. Counting it as Missing keeps a new
    // job at `Creating` from its first status until the Deployment controller answers, instead
    // of a second status write (`Scaling from 0`) as soon as our own apply's watch event lands:
    // one StreamJob write a new job fewer, the costliest write the API server gets from us.
    if status.observed_generation.is_none() {
        return (Rollout::Missing, None);
    }
    for condition in status.conditions.iter().flatten() {
        let type_ = condition.type_.as_deref();
        let value = condition.status.as_deref();
        let failed = (type_ == Some("Progressing")
            && value == Some("False")
            && condition.reason.as_deref() == Some("ProgressDeadlineExceeded"))
            || (type_ == Some("ReplicaFailure") && value == Some("True"));
        if failed {
            return (Rollout::Failed, condition.message.clone());
        }
    }
    let annotations = deployment
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref());
    let hash = annotations.and_then(|a| a.get(CONFIG_HASH_ANNOTATION));
    let nonce = annotations.and_then(|a| a.get(RESTART_NONCE_ANNOTATION));
    if hash.map(String::as_str) != Some(config_hash)
        || nonce.cloned() != restart_nonce.map(|n| n.to_string())
    {
        return (Rollout::Outdated, None);
    }
    let spec_replicas = deployment.spec.replicas.unwrap_or(1);
    if spec_replicas != desired_replicas {
        return (Rollout::Scaling, None);
    }
    let generation_seen =
        status.observed_generation.unwrap_or(0) >= deployment.metadata.generation.unwrap_or(0);
    let replicas = status.replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let ready = status.ready_replicas.unwrap_or(0);
    // Pods of an older template still run: that is a rollout. The template itself is the
    // desired one (checked above), so anything else is pods joining or leaving: a scale.
    if generation_seen && updated < replicas {
        return (Rollout::Outdated, None);
    }
    if !generation_seen || updated != desired_replicas || replicas != desired_replicas {
        return (Rollout::Scaling, None);
    }
    if ready < desired_replicas {
        return (Rollout::Waiting, None);
    }
    (Rollout::Done, None)
}

fn progress(report: &JobManagerReport) -> Option<JobProgress> {
    let overview = report.view.overview.as_ref().ok()?;
    let partitions: Vec<PartitionSummary> = overview
        .partitions
        .iter()
        .map(|p| PartitionSummary {
            partition: p.partition,
            committed_offset: p.committed_offset,
            high_watermark: p.high_watermark,
            lag: p.lag,
            rewinds: (p.rewinds > 0).then_some(p.rewinds),
            last_rewind: p.last_rewind.map(|r| PartitionRewind {
                from_offset: r.from_offset,
                to_offset: r.to_offset,
                at: Timestamp::from_millisecond(i64::try_from(r.at_ms).unwrap_or(0))
                    .ok()
                    .map(Time),
            }),
        })
        .collect();
    let restored_from = match &overview.restored_from {
        RestoreSource::Savepoint { path, .. } => format!("savepoint {path}"),
        RestoreSource::Checkpoint { path, .. } => format!("checkpoint {path}"),
        RestoreSource::StartingOffsets => "starting offsets".to_string(),
    };
    Some(JobProgress {
        lag: overview.total_lag,
        events_per_second: Some(overview.events_per_second),
        partitions,
        observed_at: Some(Time(report.observed_at)),
        state: Some(overview.state.to_string()),
        taskmanagers: i32::try_from(overview.taskmanagers.len()).ok(),
        restored_from: Some(restored_from),
        last_checkpoint_at: overview.last_checkpoint.as_ref().map(|c| {
            Time(
                Timestamp::from_millisecond(i64::try_from(c.created_at_ms).unwrap_or(0))
                    .unwrap_or(Timestamp::UNIX_EPOCH),
            )
        }),
        watermark: overview
            .watermark
            .and_then(|w| w.watermark_ms)
            .and_then(|ms| Timestamp::from_millisecond(ms).ok())
            .map(Time),
        final_before: overview
            .watermark
            .and_then(|w| w.final_before_ms)
            .and_then(|ms| Timestamp::from_millisecond(ms).ok())
            .map(Time),
        redis: overview.redis.as_ref().map(redis::status_of),
    })
}

/// The next status from what was observed.
pub fn next(input: &PlanInput<'_>, name: &str, config_hash: &str) -> Next {
    let job = input.job;
    let previous = job.status.as_ref();
    let generation = job.metadata.generation;
    let now = input.now;
    let assessed = Assessment::of(input, name, config_hash);

    let mut status = previous.cloned().unwrap_or_default();
    status.phase = assessed.phase(previous.map(|s| s.phase).unwrap_or_default());
    status.observed_generation = generation;
    status.conditions = assessed.conditions(previous, generation, now);
    status.replicas = assessed.taskmanagers.replicas;
    status.ready_replicas = assessed.taskmanagers.ready;
    status.selector =
        labels::selector_string(&labels::selector(name, labels::COMPONENT_TASKMANAGER));
    status.config_hash = Some(config_hash.to_string());
    if let Some(progress) = input.jobmanager.and_then(progress) {
        status.job = Some(progress);
    }
    if let Some(rewound) = rewind_condition(previous, status.job.as_ref(), generation, now) {
        status.conditions.push(rewound);
    }
    let migrating = redis::migration_condition(previous, status.job.as_ref(), generation, now);
    status.conditions.extend(migrating);
    status.observed_restart_nonce = job.spec.restart_nonce;
    let requeue_after = if assessed.settled && assessed.failure.is_none() {
        REQUEUE_IDLE
    } else {
        REQUEUE_BUSY
    };
    Next {
        status,
        requeue_after,
    }
}

/// The taskmanager Deployment's replica counts: wanted, in its spec, with pods, ready.
#[derive(Clone, Copy)]
struct TaskmanagerCounts {
    desired: i32,
    in_spec: i32,
    replicas: i32,
    ready: i32,
}

/// What the two Deployments' rollouts say about the job, before it becomes status.
struct Assessment {
    running: bool,
    jobmanager: Rollout,
    taskmanager: Rollout,
    /// The least advanced of the two rollouts.
    worst: Rollout,
    taskmanagers: TaskmanagerCounts,
    /// Why a Deployment is failing, if one is.
    failure: Option<String>,
    progress_reason: &'static str,
    progress_message: String,
    /// Stable or suspended: nothing moves.
    settled: bool,
    ready: bool,
}

impl Assessment {
    fn of(input: &PlanInput<'_>, name: &str, config_hash: &str) -> Self {
        let spec = &input.job.spec;
        let running = spec.state == JobState::Running;
        let (desired_jm, desired_tm) = if running { (1, spec.replicas) } else { (0, 0) };
        let observed = &input.observed;
        let (jobmanager, jm_message) = rollout(
            observed.jobmanager.as_ref(),
            desired_jm,
            config_hash,
            spec.restart_nonce,
        );
        let (taskmanager, tm_message) = rollout(
            observed.taskmanager.as_ref(),
            desired_tm,
            config_hash,
            spec.restart_nonce,
        );
        let tm_status = observed
            .taskmanager
            .as_ref()
            .and_then(|d| d.status.clone())
            .unwrap_or_default();
        let taskmanagers = TaskmanagerCounts {
            desired: desired_tm,
            in_spec: observed
                .taskmanager
                .as_ref()
                .and_then(|d| d.spec.replicas)
                .unwrap_or(0),
            replicas: tm_status.replicas.unwrap_or(0),
            ready: tm_status.ready_replicas.unwrap_or(0),
        };
        let failure = [
            (jobmanager, jm_message, "jobmanager"),
            (taskmanager, tm_message, "taskmanager"),
        ]
        .into_iter()
        .find(|(r, _, _)| *r == Rollout::Failed)
        .map(|(_, message, role)| {
            format!(
                "{role} Deployment {name}-{role} is failing: {}",
                message.unwrap_or_else(|| "no detail".into())
            )
        });
        let worst = jobmanager.min(taskmanager);
        let (progress_reason, progress_message) =
            progress_condition(running, worst, failure.as_deref(), &taskmanagers);
        let mut assessed = Assessment {
            running,
            jobmanager,
            taskmanager,
            worst,
            taskmanagers,
            failure,
            progress_reason,
            progress_message,
            settled: matches!(progress_reason, "Stable" | "Suspended"),
            ready: false,
        };
        assessed.ready = assessed.is_ready(input.job.status.as_ref());
        assessed
    }

    /// Taskmanagers joining or leaving a ready job (a rescale, a pod replaced) do not stop it
    /// processing: partitions move in place. Ready stays True meanwhile (Progressing says what
    /// moves), so an alert on Ready does not fire for every scale.
    fn is_ready(&self, previous: Option<&StreamJobStatus>) -> bool {
        let was_ready = previous
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == READY))
            .is_some_and(|c| c.status == "True");
        let resizing = was_ready
            && self.jobmanager == Rollout::Done
            && matches!(self.taskmanager, Rollout::Scaling | Rollout::Waiting)
            && (self.taskmanagers.ready > 0 || self.taskmanagers.desired == 0);
        self.running && (self.progress_reason == "Stable" || resizing)
    }

    fn phase(&self, previous_phase: Phase) -> Phase {
        if self.failure.is_some() {
            Phase::Failed
        } else if !self.running {
            if self.settled {
                Phase::Suspended
            } else {
                Phase::Suspending
            }
        } else if self.ready {
            Phase::Running
        } else {
            match (self.worst, previous_phase) {
                (Rollout::Outdated, Phase::Running | Phase::Upgrading) => Phase::Upgrading,
                // A scale or a pod restart does not take a running job out of Running.
                (Rollout::Scaling | Rollout::Waiting, Phase::Running) => Phase::Running,
                _ => Phase::Deploying,
            }
        }
    }

    /// Ready, Progressing and Degraded, each keeping its transition time while unchanged.
    fn conditions(
        &self,
        previous: Option<&StreamJobStatus>,
        generation: Option<i64>,
        now: Timestamp,
    ) -> Vec<Condition> {
        let (ready_reason, ready_message) = if self.ready {
            let counts = &self.taskmanagers;
            let message = format!(
                "jobmanager and {}/{} taskmanagers ready",
                counts.ready, counts.desired
            );
            ("Running", message)
        } else {
            (self.progress_reason, self.progress_message.clone())
        };
        let (degraded_reason, degraded_message) = match &self.failure {
            Some(message) => ("RolloutFailed", message.clone()),
            None => ("AsExpected", "reconciled without errors".to_string()),
        };
        let kept = |type_, value, reason, message| {
            condition(previous, type_, value, reason, message, generation, now)
        };
        vec![
            kept(READY, self.ready, ready_reason, ready_message),
            kept(
                PROGRESSING,
                !self.settled && self.failure.is_none(),
                self.progress_reason,
                self.progress_message.clone(),
            ),
            kept(
                DEGRADED,
                self.failure.is_some(),
                degraded_reason,
                degraded_message,
            ),
        ]
    }
}

/// The Progressing condition's reason and message, from the least advanced rollout.
fn progress_condition(
    running: bool,
    worst: Rollout,
    failure: Option<&str>,
    taskmanagers: &TaskmanagerCounts,
) -> (&'static str, String) {
    let TaskmanagerCounts {
        desired,
        in_spec,
        replicas,
        ready,
    } = *taskmanagers;
    match (running, worst) {
        (_, Rollout::Failed) => ("RolloutFailed", failure.unwrap_or_default().to_string()),
        (true, Rollout::Missing) => (
            "Creating",
            "creating the jobmanager and taskmanagers".to_string(),
        ),
        (true, Rollout::Outdated) => ("RollingOut", "rolling out a new pod template".to_string()),
        (true, Rollout::Scaling) => ("Scaling", {
            // Before the Deployment is resized its spec holds the old count; after, its pods do.
            let from = if in_spec != desired {
                in_spec
            } else {
                replicas
            };
            if from == desired {
                format!("scaling taskmanagers to {desired}: {ready} ready")
            } else {
                format!("scaling taskmanagers from {from} to {desired}")
            }
        }),
        (true, Rollout::Waiting) => (
            "WaitingForPods",
            format!("{ready}/{desired} taskmanagers ready"),
        ),
        (true, Rollout::Done) => ("Stable", format!("{ready}/{desired} taskmanagers ready")),
        (false, Rollout::Done) | (false, Rollout::Missing) => (
            "Suspended",
            "the job is suspended; no process runs".to_string(),
        ),
        (false, _) => (
            "Suspending",
            "stopping every process of the job".to_string(),
        ),
    }
}

/// The message of a rewind, as the condition and the Event show it.
pub fn rewind_message(partition: i32, rewind: &PartitionRewind) -> String {
    format!(
        "Redis lost acknowledged writes; partition {partition} rewound from {} to {}",
        rewind.from_offset, rewind.to_offset
    )
}

/// `RedisRewound`: absent until the jobmanager reports a rewind, then True for good (a
/// jobmanager restart forgets its rewinds; the condition keeps the latest one), with the message
/// of the latest rewind.
fn rewind_condition(
    previous: Option<&StreamJobStatus>,
    job: Option<&JobProgress>,
    generation: Option<i64>,
    now: Timestamp,
) -> Option<Condition> {
    let latest = job
        .into_iter()
        .flat_map(|j| j.partitions.iter())
        .filter_map(|p| p.last_rewind.as_ref().map(|r| (p.partition, r)))
        .max_by_key(|(partition, r)| (r.at.as_ref().map(|t| t.0), *partition));
    let kept = previous.and_then(|s| s.conditions.iter().find(|c| c.type_ == REDIS_REWOUND));
    match latest {
        Some((partition, rewind)) => Some(condition(
            previous,
            REDIS_REWOUND,
            true,
            REDIS_LOST_WRITES,
            rewind_message(partition, rewind),
            generation,
            now,
        )),
        None => kept.cloned(),
    }
}

/// One Warning Event per rewind the previous status did not show yet.
pub fn rewind_events(previous: Option<&StreamJobStatus>, next: &StreamJobStatus) -> Vec<EventNote> {
    let before = |partition: i32| {
        previous
            .and_then(|s| s.job.as_ref())
            .and_then(|j| j.partitions.iter().find(|p| p.partition == partition))
            .and_then(|p| p.last_rewind.clone())
    };
    next.job
        .iter()
        .flat_map(|j| j.partitions.iter())
        .filter_map(|p| {
            let rewind = p.last_rewind.as_ref()?;
            (before(p.partition).as_ref() != Some(rewind)).then(|| EventNote {
                severity: EventSeverity::Warning,
                reason: REDIS_LOST_WRITES.into(),
                message: rewind_message(p.partition, rewind),
            })
        })
        .collect()
}

/// The status after a failed reconciliation: previous observations kept, `Degraded` set.
pub fn degraded(job: &StreamJob, reason: &str, message: &str, now: Timestamp) -> StreamJobStatus {
    let previous = job.status.as_ref();
    let generation = job.metadata.generation;
    let mut status = previous.cloned().unwrap_or_default();
    let mut conditions: Vec<Condition> = status
        .conditions
        .iter()
        .filter(|c| c.type_ != DEGRADED && c.type_ != READY)
        .cloned()
        .collect();
    let ready = condition(
        previous,
        READY,
        false,
        reason,
        message.to_string(),
        generation,
        now,
    );
    let degraded = condition(
        previous,
        DEGRADED,
        true,
        reason,
        message.to_string(),
        generation,
        now,
    );
    conditions.insert(0, ready);
    conditions.push(degraded);
    conditions.sort_by_key(|c| match c.type_.as_str() {
        READY => 0,
        PROGRESSING => 1,
        _ => 2,
    });
    status.conditions = conditions;
    status.phase = Phase::Failed;
    status
}

/// One Event per transition: phase, each condition's status, the config hash, the scale.
pub fn transition_events(
    job: &StreamJob,
    previous: Option<&StreamJobStatus>,
    next: &StreamJobStatus,
    observed: &Observed,
) -> Vec<EventNote> {
    let mut events = Vec::new();
    events.extend(phase_event(previous, next));
    events.extend(rewind_events(previous, next));
    condition_events(previous, next, &mut events);
    fold_failure_into_its_cause(next, &mut events);
    spec_events(job, previous, next, observed, &mut events);
    events
}

/// A job that fails has one cause, the Degraded reason (`RolloutFailed`, `CrashLoop`…): one
/// Warning Event under that reason, whose message also says the phase moved, rather than a
/// `Failed` Event beside it (a 1,000-job benchmark showed them in pairs).
fn fold_failure_into_its_cause(next: &StreamJobStatus, events: &mut Vec<EventNote>) {
    let failed = Phase::Failed.as_str();
    let cause = next
        .conditions
        .iter()
        .find(|c| c.type_ == DEGRADED && c.status == "True" && c.reason != failed);
    let (Some(phase_at), Some(cause)) = (events.iter().position(|e| e.reason == failed), cause)
    else {
        return;
    };
    if !events.iter().any(|e| e.reason == cause.reason) {
        return;
    }
    let phase = events.remove(phase_at);
    if let Some(event) = events.iter_mut().find(|e| e.reason == cause.reason) {
        event.severity = EventSeverity::Warning;
        event.message = format!("{}; {}", phase.message, event.message);
    }
}

/// The phase moved.
fn phase_event(previous: Option<&StreamJobStatus>, next: &StreamJobStatus) -> Option<EventNote> {
    let previous_phase = previous.map(|s| s.phase);
    if previous_phase == Some(next.phase) {
        return None;
    }
    let severity = if next.phase == Phase::Failed {
        EventSeverity::Warning
    } else {
        EventSeverity::Normal
    };
    let from = previous_phase.map(Phase::as_str).unwrap_or("none");
    Some(EventNote {
        severity,
        reason: next.phase.as_str().to_string(),
        message: format!("phase {from} -> {}", next.phase.as_str()),
    })
}

/// A condition changed status or reason: one Event per cause.
fn condition_events(
    previous: Option<&StreamJobStatus>,
    next: &StreamJobStatus,
    events: &mut Vec<EventNote>,
) {
    for condition in &next.conditions {
        if condition.type_ == REDIS_REWOUND {
            // One Event per rewind, above.
            continue;
        }
        let before =
            previous.and_then(|s| s.conditions.iter().find(|c| c.type_ == condition.type_));
        // Ready and Progressing are news when they flip; while a job deploys their reason moves
        // through Deploying, Scaling, WaitingForPods... which status shows, and the phase Event
        // already told. A Degraded cause is news whenever it changes.
        let changed = if condition.type_ == DEGRADED {
            before.map(|c| (&c.status, &c.reason)) != Some((&condition.status, &condition.reason))
        } else {
            before.map(|c| &c.status) != Some(&condition.status)
        };
        if !changed {
            continue;
        }
        // A job's first conditions are not news (its first phase Event says where it stands),
        // unless something is already wrong: one Event for a new job, not one per condition.
        if before.is_none() && !(condition.type_ == DEGRADED && condition.status == "True") {
            continue;
        }
        let warning = (condition.type_ == DEGRADED && condition.status == "True")
            || (condition.type_ == READY
                && condition.status == "False"
                && before.is_some_and(|c| c.status == "True"));
        let severity = if warning {
            EventSeverity::Warning
        } else {
            EventSeverity::Normal
        };
        // Several conditions often change for one cause (Ready=False and Degraded=True, both
        // ApplyFailed): one Event per cause, as severe as the worst of them.
        if let Some(same) = events.iter_mut().find(|e| e.reason == condition.reason) {
            if severity == EventSeverity::Warning {
                same.severity = EventSeverity::Warning;
            }
            continue;
        }
        events.push(EventNote {
            severity,
            reason: condition.reason.clone(),
            message: format!(
                "{}={}: {}",
                condition.type_, condition.status, condition.message
            ),
        });
    }
}

/// What the spec changed: the pods' configuration, the scale, a restart.
fn spec_events(
    job: &StreamJob,
    previous: Option<&StreamJobStatus>,
    next: &StreamJobStatus,
    observed: &Observed,
    events: &mut Vec<EventNote>,
) {
    if let (Some(before), Some(after)) = (
        previous.and_then(|s| s.config_hash.as_ref()),
        next.config_hash.as_ref(),
    ) {
        if before != after {
            events.push(EventNote {
                severity: EventSeverity::Normal,
                reason: "ConfigChanged".into(),
                message: format!(
                    "pod configuration changed ({before} -> {after}); rolling the pods"
                ),
            });
        }
    }
    if let Some(current) = observed.taskmanager.as_ref().and_then(|d| d.spec.replicas) {
        let desired = if job.spec.state == JobState::Running {
            job.spec.replicas
        } else {
            0
        };
        if current != desired {
            events.push(EventNote {
                severity: EventSeverity::Normal,
                reason: "Scaled".into(),
                message: format!("taskmanagers {current} -> {desired}"),
            });
        }
    }
    if previous.and_then(|s| s.observed_restart_nonce) != next.observed_restart_nonce
        && previous.is_some()
    {
        events.push(EventNote {
            severity: EventSeverity::Normal,
            reason: "Restarting".into(),
            message: format!(
                "spec.restartNonce changed to {:?}; restarting every process",
                next.observed_restart_nonce
            ),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> Option<Time> {
        Some(Time(Timestamp::from_millisecond(ms).expect("valid time")))
    }

    fn job_with(rewinds: &[(i32, i64, i64, i64)]) -> JobProgress {
        JobProgress {
            partitions: (0..4)
                .map(|partition| {
                    let rewind = rewinds.iter().find(|r| r.0 == partition);
                    PartitionSummary {
                        partition,
                        committed_offset: Some(100),
                        rewinds: rewind.map(|_| 1),
                        last_rewind: rewind.map(|&(_, from, to, ms)| PartitionRewind {
                            from_offset: from,
                            to_offset: to,
                            at: at(ms),
                        }),
                        ..PartitionSummary::default()
                    }
                })
                .collect(),
            ..JobProgress::default()
        }
    }

    fn status_with(job: JobProgress, previous: Option<&StreamJobStatus>) -> StreamJobStatus {
        let now = Timestamp::from_millisecond(9_000_000).expect("valid time");
        let mut status = StreamJobStatus {
            job: Some(job),
            ..StreamJobStatus::default()
        };
        status.conditions.extend(rewind_condition(
            previous,
            status.job.as_ref(),
            Some(1),
            now,
        ));
        status
    }

    #[test]
    fn no_rewind_means_no_condition_and_no_event() {
        let status = status_with(job_with(&[]), None);
        assert!(status.conditions.is_empty());
        assert!(rewind_events(None, &status).is_empty());
    }

    #[test]
    fn a_rewind_sets_the_condition_and_emits_one_warning_event() {
        let before = status_with(job_with(&[]), None);
        let after = status_with(job_with(&[(2, 5_000, 3_200, 1_000)]), Some(&before));
        let condition = after
            .conditions
            .iter()
            .find(|c| c.type_ == REDIS_REWOUND)
            .expect("condition");
        assert_eq!(condition.status, "True");
        assert_eq!(condition.reason, REDIS_LOST_WRITES);
        assert_eq!(
            condition.message,
            "Redis lost acknowledged writes; partition 2 rewound from 5000 to 3200"
        );
        let events = rewind_events(Some(&before), &after);
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].severity, EventSeverity::Warning);
        assert_eq!(events[0].message, condition.message);

        // The same rewind seen again is not news; a later one on another partition is, and the
        // condition then shows the latest.
        assert!(rewind_events(Some(&after), &after).is_empty());
        let later = status_with(
            job_with(&[(2, 5_000, 3_200, 1_000), (0, 900, 10, 2_000)]),
            Some(&after),
        );
        let events = rewind_events(Some(&after), &later);
        assert_eq!(events.len(), 1, "{events:?}");
        assert!(events[0]
            .message
            .contains("partition 0 rewound from 900 to 10"));
        let condition = later
            .conditions
            .iter()
            .find(|c| c.type_ == REDIS_REWOUND)
            .expect("condition");
        assert!(condition.message.contains("partition 0"), "{condition:?}");
    }

    #[test]
    fn the_condition_outlives_a_jobmanager_that_forgot_its_rewinds() {
        let rewound = status_with(job_with(&[(1, 50, 0, 1_000)]), None);
        let restarted = status_with(job_with(&[]), Some(&rewound));
        let condition = restarted
            .conditions
            .iter()
            .find(|c| c.type_ == REDIS_REWOUND)
            .expect("kept");
        assert!(condition
            .message
            .contains("partition 1 rewound from 50 to 0"));
        assert!(rewind_events(Some(&rewound), &restarted).is_empty());
    }
}
