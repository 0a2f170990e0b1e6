//! The lifecycle state machine (pure): upgrades through savepoints, suspend/resume, nonces,
//! the final savepoint on deletion, and the job's health as the jobmanager reports it.
//!
//! Every multi-step operation lives in `status.currentOperation`. The reconciler writes the next
//! step to status BEFORE it acts (applies children or calls the jobmanager), so an operator that
//! restarts at any point finds the step it was in and does it again; every step is idempotent or
//! checks the jobmanager before repeating itself. One operation is in flight per job.
//!
//! Inputs: the StreamJob (spec + status), the observed children, what the jobmanager answered to
//! the queries [`queries`] asked for, and `now`. Outputs: a [`Decision`].

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use streamjob_worker::api::{
    JobOverview, JobState as JmState, OperationInfo, OperationStatus, RestoreSource, SnapshotInfo,
};

use crate::crd::{
    JobState, Operation, OperationKind, OperationStep, SavepointInfo, SavepointTrigger, StreamJob,
    StreamJobStatus, UpgradeMode, SAVEPOINT_HISTORY_CAP,
};
use crate::planner::annotations::{CONFIG_HASH_ANNOTATION, RESTART_NONCE_ANNOTATION};
use crate::planner::rollout::{self, RolloutPath, ROLLOUT_STALLED};
use crate::planner::{labels, EventNote, EventSeverity, Observed};

mod cleanup;
mod health;
mod rolling;
mod start;
mod steps;

pub use cleanup::{cleanup, CleanupDecision};
use health::health;
use start::start;
pub use steps::WAITING_FOR_A_READY_JOBMANAGER;
use steps::{advance, fail_attempt};

/// Annotation on the savepoint PVC naming the newest savepoint on it, so a StreamJob re-created
/// with the same name (which starts with an empty status) resumes from it.
pub const LATEST_SAVEPOINT_ANNOTATION: &str = "streaming.austin.dev/latest-savepoint";

/// Requeue while an operation waits on the jobmanager or a rollout.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// First retry delay of a failed savepoint; doubles per attempt.
pub const FIRST_RETRY: Duration = Duration::from_secs(10);
/// Longest retry delay.
pub const MAX_RETRY: Duration = Duration::from_secs(300);
/// A Deployment whose pods stay unavailable this long is reported as Degraded (crash loop,
/// image pull failure, unschedulable pods...).
pub const UNAVAILABLE_GRACE: Duration = Duration::from_secs(120);

/// A call the reconciler makes to the jobmanager after writing the status. Each carries a trigger
/// id derived from what the status recorded before the call ([`trigger_id`]), so the same call
/// made again after an operator restart answers the first one instead of taking a second
/// savepoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobManagerAction {
    /// `POST /jobs/{id}/savepoints`.
    TriggerSavepoint { trigger_id: String },
    /// `POST /jobs/{id}/stop`.
    StopWithSavepoint { trigger_id: String },
}

/// The jobmanager trigger id of an operation's current attempt: its kind, the savepoint nonce
/// (manual savepoints), when it started and the attempt number. Stable while the operation is
/// stored unchanged; a retry after a failure (next attempt) or a new operation gets a new one,
/// even for a nonce used before.
pub fn trigger_id(op: &Operation) -> String {
    let nonce = op.nonce.map(|n| format!("n{n}-")).unwrap_or_default();
    format!(
        "streamjob-{}-{nonce}{}-a{}",
        kind_word(op.kind),
        op.started_at.0.as_millisecond(),
        op.attempts
    )
}

/// What the reconciler must ask the jobmanager before planning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Queries {
    /// `GET /jobs/{id}`: whenever a jobmanager is meant to run and one of its pods is ready.
    pub overview: bool,
    /// `GET /jobs/{id}/savepoints/{requestId}`: the trigger being awaited.
    pub poll: Option<String>,
    /// `GET /jobs/{id}/savepoints`: to check a completed savepoint is on the volume.
    pub savepoints: bool,
    /// `GET /jobs/{id}/checkpoints`: to check a checkpoint exists before a last-state rollout.
    pub checkpoints: bool,
}

impl Queries {
    pub fn any(&self) -> bool {
        self.overview || self.poll.is_some() || self.savepoints || self.checkpoints
    }
}

/// The answer to a poll of a trigger id.
#[derive(Debug, Clone, PartialEq)]
pub enum TriggerPoll {
    Known(OperationInfo),
    /// `404`: the jobmanager does not know the request (it restarted, losing it).
    Unknown,
    /// No answer (unreachable, timeout, error status).
    Error(String),
}

/// Everything the jobmanager answered this round (`Err` = unreachable, timed out or refused).
#[derive(Debug, Clone, PartialEq)]
pub struct JobManagerView {
    pub overview: Result<JobOverview, String>,
    pub poll: Option<TriggerPoll>,
    pub savepoints: Option<Result<Vec<SnapshotInfo>, String>>,
    pub checkpoints: Option<Result<Vec<SnapshotInfo>, String>>,
}

/// The outcome of a [`JobManagerAction`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionOutcome {
    /// `202` with this request id.
    Accepted(String),
    /// Anything else, with the reason.
    Failed(String),
}

/// What the lifecycle decided.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decision {
    /// The next `status.currentOperation`.
    pub operation: Option<Operation>,
    /// `savepoint.restoreFrom` to render into job.yaml.
    pub restore_from: Option<String>,
    /// Whether the ConfigMap and the Deployments may be applied now (false while a savepoint must
    /// come first, or after an operation gave up: the running processes are left alone).
    pub apply_workloads: bool,
    /// Calls to make after the status is written.
    pub actions: Vec<JobManagerAction>,
    pub events: Vec<EventNote>,
    /// Savepoints completed since the last status (newest last).
    pub new_savepoints: Vec<SavepointInfo>,
    /// `status.observedSavepointTriggerNonce` to record.
    pub observed_savepoint_trigger_nonce: Option<i64>,
    /// `(reason, message)` for a Degraded=True condition.
    pub degraded: Option<(String, String)>,
    /// `(reason, message)` when the job does not process although the children are ready.
    pub not_ready: Option<(String, String)>,
    /// Sooner requeue than the status' own.
    pub requeue: Option<Duration>,
}

/// Inputs of the lifecycle.
#[derive(Debug, Clone, Copy)]
pub struct LifecycleInput<'a> {
    pub job: &'a StreamJob,
    pub observed: &'a Observed,
    pub jobmanager: Option<&'a JobManagerView>,
    /// Pod hash of the spec (restore path excluded).
    pub desired_hash: &'a str,
    pub now: Timestamp,
}

fn template_annotation(deployment: &Deployment, key: &str) -> Option<String> {
    deployment
        .spec
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(key)
        .cloned()
}

fn spec_replicas(deployment: Option<&Deployment>) -> i32 {
    deployment.and_then(|d| d.spec.replicas).unwrap_or(0)
}

/// Whether a jobmanager is meant to run (its Deployment exists with a replica).
pub fn jobmanager_expected(observed: &Observed) -> bool {
    spec_replicas(observed.jobmanager.as_ref()) > 0
}

/// Whether the jobmanager Deployment has a ready pod now.
pub fn jobmanager_ready(observed: &Observed) -> bool {
    observed
        .jobmanager
        .as_ref()
        .and_then(|d| d.status.as_ref())
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
        > 0
}

/// Whether the job ever ran: its jobmanager is ready now, answered once (status.job), or a
/// savepoint exists. A job that never ran has nothing a final savepoint could keep.
pub fn ever_ran(job: &StreamJob, observed: &Observed) -> bool {
    let status = job.status.as_ref();
    jobmanager_ready(observed)
        || status.is_some_and(|s| s.job.is_some() || s.last_savepoint.is_some())
}

/// The address of the job's ready jobmanager pod, as the pod cache shows it: the operator calls
/// it there (no cluster DNS on the way, and no call at all before a pod is ready).
pub fn jobmanager_pod_ip(observed: &Observed) -> Option<&str> {
    observed
        .pods
        .iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter(|pod| {
            pod.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(labels::COMPONENT))
                .is_some_and(|c| c == labels::COMPONENT_JOBMANAGER)
        })
        .filter_map(|pod| pod.status.as_ref())
        .filter(|status| {
            status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
        .find_map(|status| status.pod_ip.as_deref())
}

/// What to ask the jobmanager for this StreamJob, before planning. Its overview only once a
/// jobmanager pod is ready: a starting or unreachable jobmanager must not hold a reconcile slot
/// for a call's timeout (with many such jobs every slot would wait, and the other jobs starve).
/// A savepoint step asks only a ready jobmanager too: its steps wait for one, within the
/// savepoint timeout.
pub fn queries(job: &StreamJob, observed: &Observed) -> Queries {
    let ready = jobmanager_ready(observed);
    let expected = jobmanager_expected(observed) && ready;
    let operation = job
        .status
        .as_ref()
        .and_then(|s| s.current_operation.as_ref());
    let mut queries = Queries {
        overview: expected,
        ..Queries::default()
    };
    if let Some(op) = operation {
        match op.step {
            OperationStep::AwaitSavepoint if ready => {
                queries.poll = op.trigger_id.clone();
                queries.savepoints = true;
                queries.overview = true;
            }
            OperationStep::TriggerSavepoint => queries.overview = ready,
            OperationStep::CheckRestorePoint => queries.checkpoints = expected,
            _ => {}
        }
    }
    queries
}

fn parse_duration(text: &str, fallback: Duration) -> Duration {
    humantime::parse_duration(text).unwrap_or(fallback)
}

fn elapsed(since: Option<&Time>, now: Timestamp) -> Duration {
    since
        .map(|t| now.duration_since(t.0))
        .and_then(|d: SignedDuration| Duration::try_from(d).ok())
        .unwrap_or_default()
}

fn ms_time(ms: u64) -> Time {
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    Time(Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// Retry delay after `attempts` failures: 10 s, 20 s, 40 s ... 5 min.
pub fn retry_delay(attempts: i32) -> Duration {
    let exponent = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(16);
    FIRST_RETRY.saturating_mul(1u32 << exponent).min(MAX_RETRY)
}

fn note(severity: EventSeverity, reason: &str, message: impl Into<String>) -> EventNote {
    EventNote {
        severity,
        reason: reason.to_string(),
        message: message.into(),
    }
}

fn kind_word(kind: OperationKind) -> &'static str {
    match kind {
        OperationKind::Savepoint => "savepoint",
        OperationKind::Upgrade => "upgrade",
        OperationKind::RollingUpgrade => "rolling upgrade",
        OperationKind::Suspend => "suspend",
        OperationKind::Resume => "resume",
        OperationKind::Restart => "restart",
        OperationKind::Delete => "deletion",
    }
}

fn uses_stop(kind: OperationKind) -> bool {
    matches!(
        kind,
        OperationKind::Upgrade | OperationKind::Suspend | OperationKind::Delete
    )
}

fn trigger_of(kind: OperationKind) -> SavepointTrigger {
    match kind {
        OperationKind::Upgrade => SavepointTrigger::Upgrade,
        OperationKind::Suspend => SavepointTrigger::Suspend,
        OperationKind::Delete => SavepointTrigger::Delete,
        _ => SavepointTrigger::Manual,
    }
}

fn new_operation(kind: OperationKind, step: OperationStep, now: Timestamp) -> Operation {
    Operation {
        kind,
        step,
        started_at: Time(now),
        step_started_at: Some(Time(now)),
        trigger_id: None,
        target_generation: None,
        attempts: 0,
        message: None,
        savepoint_path: None,
        upgrade_mode: None,
        target_config_hash: None,
        nonce: None,
        retry_after: None,
    }
}

fn enter(op: &mut Operation, step: OperationStep, now: Timestamp) {
    op.step = step;
    op.step_started_at = Some(Time(now));
    op.trigger_id = None;
}

/// How the running template compares to the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Template {
    Current,
    /// Only `spec.restartNonce` differs.
    NonceOnly,
    Changed,
}

fn template(input: &LifecycleInput<'_>) -> Template {
    let Some(jm) = input.observed.jobmanager.as_ref() else {
        return Template::Current;
    };
    let hash_differs =
        template_annotation(jm, CONFIG_HASH_ANNOTATION).as_deref() != Some(input.desired_hash);
    let nonce_differs = template_annotation(jm, RESTART_NONCE_ANNOTATION)
        != input.job.spec.restart_nonce.map(|n| n.to_string());
    match (hash_differs, nonce_differs) {
        (true, _) => Template::Changed,
        (false, true) => Template::NonceOnly,
        (false, false) => Template::Current,
    }
}

fn overview<'a>(input: &LifecycleInput<'a>) -> Option<&'a JobOverview> {
    input.jobmanager.and_then(|v| v.overview.as_ref().ok())
}

/// Decides the lifecycle step of a StreamJob that is not being deleted.
pub fn decide(input: &LifecycleInput<'_>) -> Decision {
    let job = input.job;
    let status = job.status.clone().unwrap_or_default();
    let mut decision = Decision {
        observed_savepoint_trigger_nonce: status.observed_savepoint_trigger_nonce,
        ..Decision::default()
    };
    let mut op = status.current_operation.clone();

    // A finished-for-good operation is dropped once the user changed what it was about.
    if let Some(current) = &op {
        if superseded(current, input) {
            decision.events.push(note(
                EventSeverity::Normal,
                "OperationSuperseded",
                format!(
                    "the spec changed: the pending {} is abandoned",
                    kind_word(current.kind)
                ),
            ));
            op = None;
        }
    }
    if op.is_none() {
        op = start(input, &status, &mut decision);
    }
    if let Some(current) = op.take() {
        op = advance(current, input, &mut decision);
    }
    // Record savepoints the jobmanager took by itself (spec.savepoint.interval).
    let awaiting = op.as_ref().is_some_and(|o| {
        matches!(
            o.step,
            OperationStep::TriggerSavepoint | OperationStep::AwaitSavepoint
        )
    });
    if let (Some(overview), false) = (overview(input), awaiting) {
        if let Some(sp) = &overview.last_savepoint {
            let known = status.savepoint_history.iter().any(|s| s.path == sp.path)
                || status
                    .last_savepoint
                    .as_ref()
                    .is_some_and(|s| s.path == sp.path)
                || decision.new_savepoints.iter().any(|s| s.path == sp.path);
            if !known {
                decision.new_savepoints.push(SavepointInfo {
                    path: sp.path.clone(),
                    completed_at: ms_time(sp.created_at_ms),
                    trigger: SavepointTrigger::Periodic,
                    nonce: None,
                });
            }
        }
    }

    decision.apply_workloads = match &op {
        None => true,
        Some(o) if o.step == OperationStep::RollOut => true,
        Some(o) if o.kind == OperationKind::Savepoint => template(input) == Template::Current,
        Some(_) => false,
    };
    decision.restore_from = op.as_ref().and_then(|o| {
        (o.step == OperationStep::RollOut
            && matches!(o.kind, OperationKind::Upgrade | OperationKind::Resume))
        .then(|| o.savepoint_path.clone())
        .flatten()
    });
    if let Some(o) = &op {
        if o.step == OperationStep::Failed {
            decision.degraded = Some((
                "OperationFailed".into(),
                o.message.clone().unwrap_or_default(),
            ));
        } else {
            // A plain savepoint or a rolling upgrade does not interrupt processing: the job stays
            // Ready meanwhile.
            if !matches!(
                o.kind,
                OperationKind::Savepoint | OperationKind::RollingUpgrade
            ) {
                decision.not_ready.get_or_insert_with(|| {
                    (
                        operation_reason(o.kind).into(),
                        format!(
                            "{} in progress: step {}",
                            kind_word(o.kind),
                            o.step.as_str()
                        ),
                    )
                });
            }
            let wait = o
                .retry_after
                .as_ref()
                .map(|t| Duration::try_from(t.0.duration_since(input.now)).unwrap_or(POLL_INTERVAL))
                .filter(|d| !d.is_zero())
                .unwrap_or(POLL_INTERVAL);
            decision.requeue = Some(wait.max(Duration::from_secs(1)));
        }
    }
    health(input, &mut decision);
    // A stalled rolling upgrade is the cause, whatever its pods show (crash loop, unavailable).
    if let Some(stalled) = op
        .as_ref()
        .filter(|o| o.kind == OperationKind::RollingUpgrade)
        .and_then(|o| o.message.clone())
    {
        decision.degraded = Some((ROLLOUT_STALLED.into(), stalled));
    }
    decision.operation = op;
    decision
}

fn operation_reason(kind: OperationKind) -> &'static str {
    match kind {
        OperationKind::Savepoint => "SavepointInProgress",
        OperationKind::Upgrade => "Upgrading",
        OperationKind::RollingUpgrade => "RollingUpgrade",
        OperationKind::Suspend => "Suspending",
        OperationKind::Resume => "Resuming",
        OperationKind::Restart => "Restarting",
        OperationKind::Delete => "Deleting",
    }
}

fn superseded(op: &Operation, input: &LifecycleInput<'_>) -> bool {
    let spec = &input.job.spec;
    match op.kind {
        OperationKind::Upgrade => {
            // During the rollout itself a newer spec simply rolls on from the same restore point.
            let rolling = op.step == OperationStep::RollOut;
            spec.state == JobState::Suspended
                || (!rolling
                    && (op.target_config_hash.as_deref() != Some(input.desired_hash)
                        || op.upgrade_mode != Some(stopping_mode(spec.upgrade_mode))))
        }
        // A newer spec rolls on from where the rollout is (a stalled one resumes), unless it
        // changes what the fences mean: then it goes through a savepoint.
        OperationKind::RollingUpgrade => {
            spec.state == JobState::Suspended
                || spec.upgrade_mode != UpgradeMode::Rolling
                || rollout::path(input.job, input.observed) != RolloutPath::Roll
        }
        OperationKind::Suspend => spec.state == JobState::Running,
        OperationKind::Resume | OperationKind::Restart => spec.state == JobState::Suspended,
        OperationKind::Savepoint => {
            op.step == OperationStep::Failed
                && (spec.savepoint_trigger_nonce != op.nonce
                    || template(input) != Template::Current
                    || spec.state == JobState::Suspended)
        }
        OperationKind::Delete => false,
    }
}

/// The mode an upgrade that stops the job runs with: `rolling` falls back to `savepoint`.
fn stopping_mode(mode: UpgradeMode) -> UpgradeMode {
    match mode {
        UpgradeMode::Rolling => UpgradeMode::Savepoint,
        other => other,
    }
}

fn mode_word(mode: UpgradeMode) -> &'static str {
    match mode {
        UpgradeMode::Rolling => "rolling",
        UpgradeMode::Savepoint => "savepoint",
        UpgradeMode::LastState => "last-state",
        UpgradeMode::Stateless => "stateless",
    }
}

/// The status after a [`JobManagerAction`] ran: the trigger id to await, or a failed attempt.
/// Pure, so a restart between the action and this write is covered by the step's own recovery.
pub fn after_action(
    job: &StreamJob,
    status: &StreamJobStatus,
    outcome: &ActionOutcome,
    now: Timestamp,
) -> (StreamJobStatus, Vec<EventNote>) {
    let mut next = status.clone();
    let mut decision = Decision::default();
    let Some(mut op) = next.current_operation.take() else {
        return (next, Vec::new());
    };
    match outcome {
        ActionOutcome::Accepted(request_id) => {
            enter(&mut op, OperationStep::AwaitSavepoint, now);
            op.trigger_id = Some(request_id.clone());
            op.retry_after = None;
            decision.events.push(note(
                EventSeverity::Normal,
                "SavepointTriggered",
                format!(
                    "{} savepoint triggered (request {request_id})",
                    kind_word(op.kind)
                ),
            ));
            next.current_operation = Some(op);
        }
        ActionOutcome::Failed(reason) => {
            let observed = Observed::default();
            let input = LifecycleInput {
                job,
                observed: &observed,
                jobmanager: None,
                desired_hash: "",
                now,
            };
            next.current_operation = fail_attempt(op, reason.clone(), &input, &mut decision);
            if decision.observed_savepoint_trigger_nonce.is_some() {
                next.observed_savepoint_trigger_nonce = decision.observed_savepoint_trigger_nonce;
            }
            if let Some(failed) = next
                .current_operation
                .as_ref()
                .filter(|o| o.step == OperationStep::Failed)
            {
                let degraded = crate::planner::conditions::condition(
                    Some(status),
                    crate::planner::status::DEGRADED,
                    true,
                    "OperationFailed",
                    failed.message.clone().unwrap_or_default(),
                    job.metadata.generation,
                    now,
                );
                next.conditions.retain(|c| c.type_ != degraded.type_);
                next.conditions.push(degraded);
            }
        }
    }
    (next, decision.events)
}

/// Adds completed savepoints to status: `lastSavepoint` and the capped history (newest first).
pub fn record_savepoints(status: &mut StreamJobStatus, savepoints: &[SavepointInfo]) {
    for sp in savepoints {
        if status.savepoint_history.iter().any(|s| s.path == sp.path) {
            continue;
        }
        status.savepoint_history.insert(0, sp.clone());
        status.last_savepoint = Some(sp.clone());
    }
    status.savepoint_history.truncate(SAVEPOINT_HISTORY_CAP);
}
