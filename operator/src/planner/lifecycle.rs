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
use crate::planner::children::{CONFIG_HASH_ANNOTATION, RESTART_NONCE_ANNOTATION};
use crate::planner::{EventNote, EventSeverity, Observed};

/// Annotation on the savepoint PVC naming the newest savepoint on it, so a StreamJob re-created
/// with the same name (which starts with an empty status) resumes from it.
pub const LATEST_SAVEPOINT_ANNOTATION: &str = "streaming.austin.dev/latest-savepoint";

/// How long an interrupted trigger (operator restart between the call and recording its answer)
/// is given to show its savepoint before the trigger is sent again.
pub const INTERRUPTED_GRACE: Duration = Duration::from_secs(30);
/// Requeue while an operation waits on the jobmanager or a rollout.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// First retry delay of a failed savepoint; doubles per attempt.
pub const FIRST_RETRY: Duration = Duration::from_secs(10);
/// Longest retry delay.
pub const MAX_RETRY: Duration = Duration::from_secs(300);
/// A Deployment whose pods stay unavailable this long is reported as Degraded (crash loop,
/// image pull failure, unschedulable pods...).
pub const UNAVAILABLE_GRACE: Duration = Duration::from_secs(120);

/// A call the reconciler makes to the jobmanager after writing the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobManagerAction {
    /// `POST /jobs/{id}/savepoints`.
    TriggerSavepoint,
    /// `POST /jobs/{id}/stop`.
    StopWithSavepoint,
}

/// What the reconciler must ask the jobmanager before planning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Queries {
    /// `GET /jobs/{id}`: whenever a jobmanager is meant to run.
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

/// What to ask the jobmanager for this StreamJob, before planning.
pub fn queries(job: &StreamJob, observed: &Observed) -> Queries {
    let expected = jobmanager_expected(observed);
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
            OperationStep::AwaitSavepoint => {
                queries.poll = op.trigger_id.clone();
                queries.savepoints = true;
                queries.overview = true;
            }
            OperationStep::TriggerSavepoint => queries.overview = true,
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
    let mut fresh = false;
    if op.is_none() {
        op = start(input, &status, &mut decision);
        fresh = op.is_some();
    }
    if let Some(current) = op.take() {
        op = advance(current, fresh, input, &mut decision);
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
    decision.operation = op;
    decision
}

fn operation_reason(kind: OperationKind) -> &'static str {
    match kind {
        OperationKind::Savepoint => "SavepointInProgress",
        OperationKind::Upgrade => "Upgrading",
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
                        || op.upgrade_mode != Some(spec.upgrade_mode)))
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

/// Starts the operation the spec asks for, if any.
fn start(
    input: &LifecycleInput<'_>,
    status: &StreamJobStatus,
    decision: &mut Decision,
) -> Option<Operation> {
    let job = input.job;
    let spec = &job.spec;
    let now = input.now;
    let observed = input.observed;
    let jm_exists = observed.jobmanager.is_some();
    let running = jobmanager_expected(observed);

    if spec.state == JobState::Suspended {
        let taskmanagers = spec_replicas(observed.taskmanager.as_ref());
        if !running && taskmanagers == 0 {
            return None;
        }
        let with_savepoint = running && spec.upgrade_mode == UpgradeMode::Savepoint;
        let step = if with_savepoint {
            OperationStep::TriggerSavepoint
        } else {
            OperationStep::RollOut
        };
        let mut op = new_operation(OperationKind::Suspend, step, now);
        op.upgrade_mode = Some(spec.upgrade_mode);
        decision.events.push(note(
            EventSeverity::Normal,
            "Suspending",
            if with_savepoint {
                "suspending: stop with a savepoint, then scale to zero".to_string()
            } else {
                format!(
                    "suspending without a savepoint (upgradeMode {}): the newest checkpoint and the Redis fences keep the position",
                    mode_word(spec.upgrade_mode)
                )
            },
        ));
        return Some(op);
    }

    // Running from here on.
    if jm_exists && !running {
        // Resume a suspended job.
        let mut op = new_operation(OperationKind::Resume, OperationStep::RollOut, now);
        op.upgrade_mode = Some(spec.upgrade_mode);
        if spec.upgrade_mode == UpgradeMode::Savepoint {
            op.savepoint_path = status.last_savepoint.as_ref().map(|s| s.path.clone());
        }
        decision.events.push(note(
            EventSeverity::Normal,
            "Resuming",
            match &op.savepoint_path {
                Some(path) => format!("resuming from savepoint {path}"),
                None => "resuming from the newest checkpoint (or the Redis fences)".to_string(),
            },
        ));
        return Some(op);
    }
    if !jm_exists {
        // A first deployment. A kept PVC of an earlier StreamJob of this name names its newest
        // savepoint: restore from it.
        let kept = observed
            .savepoint_pvc
            .as_ref()
            .and_then(|pvc| pvc.metadata.annotations.as_ref())
            .and_then(|a| a.get(LATEST_SAVEPOINT_ANNOTATION))
            .cloned();
        if status.last_savepoint.is_none() && spec.upgrade_mode != UpgradeMode::Stateless {
            if let Some(path) = kept {
                let mut op = new_operation(OperationKind::Resume, OperationStep::RollOut, now);
                op.upgrade_mode = Some(spec.upgrade_mode);
                op.savepoint_path = Some(path.clone());
                decision.events.push(note(
                    EventSeverity::Normal,
                    "RestoringKeptState",
                    format!("found the kept savepoint volume; restoring from savepoint {path}"),
                ));
                return Some(op);
            }
        }
        // Nonces present at creation are not requests.
        decision.observed_savepoint_trigger_nonce = spec.savepoint_trigger_nonce;
        return None;
    }

    match template(input) {
        Template::Changed => {
            let mode = spec.upgrade_mode;
            let step = match mode {
                UpgradeMode::Savepoint => OperationStep::TriggerSavepoint,
                UpgradeMode::LastState => OperationStep::CheckRestorePoint,
                UpgradeMode::Stateless => OperationStep::RollOut,
            };
            let mut op = new_operation(OperationKind::Upgrade, step, now);
            op.upgrade_mode = Some(mode);
            op.target_config_hash = Some(input.desired_hash.to_string());
            op.target_generation = job.metadata.generation;
            decision.events.push(note(
                EventSeverity::Normal,
                "UpgradeStarted",
                format!(
                    "spec changed (generation {}): upgrading with upgradeMode {}",
                    job.metadata.generation.unwrap_or_default(),
                    mode_word(mode)
                ),
            ));
            return Some(op);
        }
        Template::NonceOnly => {
            let mut op = new_operation(OperationKind::Restart, OperationStep::RollOut, now);
            op.target_config_hash = Some(input.desired_hash.to_string());
            decision.events.push(note(
                EventSeverity::Normal,
                "RestartStarted",
                format!(
                    "spec.restartNonce is now {:?}: restarting every process from the last state",
                    spec.restart_nonce
                ),
            ));
            return Some(op);
        }
        Template::Current => {}
    }

    if spec.savepoint_trigger_nonce.is_some()
        && spec.savepoint_trigger_nonce != status.observed_savepoint_trigger_nonce
    {
        let mut op = new_operation(
            OperationKind::Savepoint,
            OperationStep::TriggerSavepoint,
            now,
        );
        op.nonce = spec.savepoint_trigger_nonce;
        decision.events.push(note(
            EventSeverity::Normal,
            "SavepointRequested",
            format!(
                "spec.savepointTriggerNonce is now {:?}: taking a savepoint",
                spec.savepoint_trigger_nonce
            ),
        ));
        return Some(op);
    }
    None
}

fn mode_word(mode: UpgradeMode) -> &'static str {
    match mode {
        UpgradeMode::Savepoint => "savepoint",
        UpgradeMode::LastState => "last-state",
        UpgradeMode::Stateless => "stateless",
    }
}

/// Records one failed attempt of the current savepoint step: retry later, or give up.
fn fail_attempt(
    mut op: Operation,
    reason: String,
    input: &LifecycleInput<'_>,
    decision: &mut Decision,
) -> Option<Operation> {
    let max = input.job.spec.savepoint.max_attempts.max(1);
    op.attempts = op.attempts.saturating_add(1);
    let now = input.now;
    if op.kind == OperationKind::Delete {
        // Deletion has its own deadline (see `plan_cleanup`): keep retrying until then.
        let delay = retry_delay(op.attempts);
        op.message = Some(format!(
            "final savepoint attempt {} failed: {reason}",
            op.attempts
        ));
        op.retry_after = Some(Time(
            now + SignedDuration::try_from(delay).unwrap_or_default(),
        ));
        enter(&mut op, OperationStep::TriggerSavepoint, now);
        decision.events.push(note(
            EventSeverity::Warning,
            "SavepointFailed",
            op.message.clone().unwrap_or_default(),
        ));
        return Some(op);
    }
    if op.attempts >= max {
        let advice = match op.kind {
            OperationKind::Upgrade | OperationKind::Suspend => {
                "the job keeps running unchanged; fix the cause (is the jobmanager healthy? is the savepoint volume writable?), or set spec.upgradeMode: last-state to go ahead from the newest checkpoint"
            }
            _ => "fix the cause and set a new spec.savepointTriggerNonce to try again",
        };
        let message = format!(
            "{} gave up after {} failed savepoint attempts; last error: {reason}; {advice}",
            kind_word(op.kind),
            op.attempts
        );
        op.message = Some(message.clone());
        op.retry_after = None;
        enter(&mut op, OperationStep::Failed, now);
        if op.kind == OperationKind::Savepoint {
            decision.observed_savepoint_trigger_nonce = op.nonce;
        }
        decision
            .events
            .push(note(EventSeverity::Warning, "SavepointGaveUp", message));
        return Some(op);
    }
    let delay = retry_delay(op.attempts);
    let message = format!(
        "savepoint attempt {}/{max} failed: {reason}; retrying in {}s",
        op.attempts,
        delay.as_secs()
    );
    op.message = Some(message.clone());
    op.retry_after = Some(Time(
        now + SignedDuration::try_from(delay).unwrap_or_default(),
    ));
    enter(&mut op, OperationStep::TriggerSavepoint, now);
    decision
        .events
        .push(note(EventSeverity::Warning, "SavepointFailed", message));
    Some(op)
}

/// A savepoint completed and is on the volume: record it and move on.
fn savepoint_done(
    mut op: Operation,
    path: String,
    completed_at: Time,
    input: &LifecycleInput<'_>,
    decision: &mut Decision,
) -> Option<Operation> {
    decision.new_savepoints.push(SavepointInfo {
        path: path.clone(),
        completed_at,
        trigger: trigger_of(op.kind),
        nonce: op.nonce,
    });
    decision.events.push(note(
        EventSeverity::Normal,
        "SavepointCompleted",
        format!("{} savepoint {path} completed", kind_word(op.kind)),
    ));
    op.savepoint_path = Some(path);
    op.attempts = 0;
    op.retry_after = None;
    op.message = None;
    match op.kind {
        OperationKind::Savepoint => {
            decision.observed_savepoint_trigger_nonce = op.nonce;
            None
        }
        OperationKind::Delete => {
            enter(&mut op, OperationStep::Done, input.now);
            Some(op)
        }
        _ => {
            enter(&mut op, OperationStep::RollOut, input.now);
            Some(op)
        }
    }
}

/// Moves an operation on as far as this round's observations allow.
fn advance(
    op: Operation,
    fresh: bool,
    input: &LifecycleInput<'_>,
    decision: &mut Decision,
) -> Option<Operation> {
    let now = input.now;
    let timeout = parse_duration(&input.job.spec.savepoint.timeout, Duration::from_secs(300));
    let mut op = op;
    match op.step {
        OperationStep::Failed | OperationStep::Done => Some(op),
        OperationStep::TriggerSavepoint => {
            if let Some(at) = &op.retry_after {
                if at.0 > now {
                    return Some(op);
                }
            }
            let overview = overview(input);
            if uses_stop(op.kind) {
                match overview.map(|o| o.state) {
                    // An earlier stop (whose answer we never recorded) is still running.
                    Some(JmState::Stopping) => {
                        if elapsed(op.step_started_at.as_ref(), now) > timeout {
                            return fail_attempt(
                                op,
                                format!(
                                    "the jobmanager stayed STOPPING for more than {}s",
                                    timeout.as_secs()
                                ),
                                input,
                                decision,
                            );
                        }
                        return Some(op);
                    }
                    // Already stopped (by us before a restart): its savepoint is the result.
                    Some(JmState::Finished) => {
                        let started_ms = op.started_at.0.as_millisecond();
                        if let Some(sp) = overview
                            .and_then(|o| o.last_savepoint.as_ref())
                            .filter(|sp| i64::try_from(sp.created_at_ms).unwrap_or(0) >= started_ms)
                        {
                            let path = sp.path.clone();
                            let at = ms_time(sp.created_at_ms);
                            return savepoint_done(op, path, at, input, decision);
                        }
                        return fail_attempt(op, "the job is FINISHED without a savepoint of this operation; restart the jobmanager (spec.restartNonce) or use upgradeMode last-state".into(), input, decision);
                    }
                    _ => {}
                }
            }
            if input.jobmanager.is_some_and(|v| v.overview.is_err())
                && elapsed(op.step_started_at.as_ref(), now) > timeout
            {
                let error = input
                    .jobmanager
                    .and_then(|v| v.overview.as_ref().err().cloned())
                    .unwrap_or_default();
                return fail_attempt(op, error, input, decision);
            }
            // Stored at this step without a retry time: an earlier round sent the trigger (or
            // was about to) and the operator restarted before recording the answer. A savepoint
            // newer than that round is its result; give a pending one a grace period before
            // asking again, so one snapshot stays in flight.
            if !fresh && !uses_stop(op.kind) && op.retry_after.is_none() {
                let since_ms = op
                    .step_started_at
                    .as_ref()
                    .map(|t| t.0.as_millisecond())
                    .unwrap_or(i64::MAX);
                if let Some(sp) = overview
                    .and_then(|o| o.last_savepoint.as_ref())
                    .filter(|sp| i64::try_from(sp.created_at_ms).unwrap_or(0) >= since_ms)
                {
                    let path = sp.path.clone();
                    let at = ms_time(sp.created_at_ms);
                    return savepoint_done(op, path, at, input, decision);
                }
                if elapsed(op.step_started_at.as_ref(), now) < INTERRUPTED_GRACE.min(timeout) {
                    return Some(op);
                }
            }
            // Without an answer from the jobmanager the call is still made: its failure counts
            // as an attempt.
            op.step_started_at = Some(Time(now));
            op.retry_after = None;
            decision.actions.push(if uses_stop(op.kind) {
                JobManagerAction::StopWithSavepoint
            } else {
                JobManagerAction::TriggerSavepoint
            });
            Some(op)
        }
        OperationStep::AwaitSavepoint => {
            let view = input.jobmanager;
            let waited = elapsed(op.step_started_at.as_ref(), now);
            let poll = view.and_then(|v| v.poll.clone());
            match poll {
                Some(TriggerPoll::Known(info)) => match info.status {
                    OperationStatus::InProgress => {
                        if waited > timeout {
                            return fail_attempt(
                                op,
                                format!(
                                    "not complete after {}s (spec.savepoint.timeout)",
                                    timeout.as_secs()
                                ),
                                input,
                                decision,
                            );
                        }
                        Some(op)
                    }
                    OperationStatus::Failed => fail_attempt(
                        op,
                        info.failure_cause
                            .unwrap_or_else(|| "the jobmanager gave no cause".into()),
                        input,
                        decision,
                    ),
                    OperationStatus::Completed => {
                        let Some(location) = info.location.clone() else {
                            return fail_attempt(
                                op,
                                "completed without a location".into(),
                                input,
                                decision,
                            );
                        };
                        match view.and_then(|v| v.savepoints.clone()) {
                            Some(Ok(list)) if list.iter().any(|s| s.path == location) => {
                                let at = ms_time(info.completed_at_ms.unwrap_or(info.triggered_at_ms));
                                savepoint_done(op, location, at, input, decision)
                            }
                            Some(Ok(_)) => fail_attempt(
                                op,
                                format!("savepoint {location} was reported complete but is not on the savepoint volume"),
                                input,
                                decision,
                            ),
                            // Could not list: ask again next round.
                            _ => Some(op),
                        }
                    }
                },
                Some(TriggerPoll::Unknown) => fail_attempt(
                    op,
                    "the jobmanager no longer knows the request (it restarted?)".into(),
                    input,
                    decision,
                ),
                Some(TriggerPoll::Error(error)) => {
                    if waited > timeout {
                        return fail_attempt(op, error, input, decision);
                    }
                    Some(op)
                }
                None => {
                    if op.trigger_id.is_none() {
                        enter(&mut op, OperationStep::TriggerSavepoint, now);
                    }
                    Some(op)
                }
            }
        }
        OperationStep::CheckRestorePoint => {
            match input.jobmanager.and_then(|v| v.checkpoints.clone()) {
                Some(Ok(list)) if !list.is_empty() => {
                    op.message = Some(format!(
                        "restoring from the newest checkpoint {}",
                        list[0].path
                    ));
                    enter(&mut op, OperationStep::RollOut, now);
                    Some(op)
                }
                Some(Ok(_)) => fail_attempt(
                    op,
                    "no complete checkpoint exists yet (wait for spec.checkpoint.interval)".into(),
                    input,
                    decision,
                ),
                // The jobmanager is down or unhealthy: last-state goes ahead; the new jobmanager
                // restores the newest checkpoint on the volume (and the Redis fences win).
                _ => {
                    op.message = Some("jobmanager unreachable: rolling out; the new jobmanager restores the newest checkpoint on the volume".into());
                    enter(&mut op, OperationStep::RollOut, now);
                    Some(op)
                }
            }
        }
        OperationStep::RollOut => {
            if let Some(hash) = op.target_config_hash.as_mut() {
                hash.clear();
                hash.push_str(input.desired_hash);
            }
            if rollout_complete(&op, input) {
                let (reason, message) = match op.kind {
                    OperationKind::Suspend => (
                        "Suspended",
                        "suspended: no process runs; the savepoint volume is kept".to_string(),
                    ),
                    OperationKind::Resume => {
                        ("Resumed", "resumed: the job processes again".to_string())
                    }
                    OperationKind::Restart => (
                        "Restarted",
                        "restarted: the job processes again".to_string(),
                    ),
                    _ => (
                        "UpgradeCompleted",
                        format!(
                            "upgrade complete{}",
                            op.savepoint_path
                                .as_ref()
                                .map(|p| format!(" (restored from {p})"))
                                .unwrap_or_default()
                        ),
                    ),
                };
                decision
                    .events
                    .push(note(EventSeverity::Normal, reason, message));
                return None;
            }
            Some(op)
        }
    }
}

fn deployment_done(
    deployment: Option<&Deployment>,
    replicas: i32,
    hash: &str,
    nonce: Option<i64>,
) -> bool {
    let Some(d) = deployment else {
        return false;
    };
    let status = d.status.clone().unwrap_or_default();
    let template_ok = template_annotation(d, CONFIG_HASH_ANNOTATION).as_deref() == Some(hash)
        && template_annotation(d, RESTART_NONCE_ANNOTATION) == nonce.map(|n| n.to_string());
    template_ok
        && d.spec.replicas == Some(replicas)
        && status.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
        && status.replicas.unwrap_or(0) == replicas
        && status.updated_replicas.unwrap_or(0) == replicas
        && status.ready_replicas.unwrap_or(0) == replicas
}

fn rollout_complete(op: &Operation, input: &LifecycleInput<'_>) -> bool {
    let spec = &input.job.spec;
    let observed = input.observed;
    if op.kind == OperationKind::Suspend {
        let zero = |d: Option<&Deployment>| {
            d.is_none_or(|d| {
                d.spec.replicas == Some(0)
                    && d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0) == 0
            })
        };
        return zero(observed.jobmanager.as_ref()) && zero(observed.taskmanager.as_ref());
    }
    let hash = input.desired_hash;
    if !deployment_done(observed.jobmanager.as_ref(), 1, hash, spec.restart_nonce)
        || !deployment_done(
            observed.taskmanager.as_ref(),
            spec.replicas,
            hash,
            spec.restart_nonce,
        )
    {
        return false;
    }
    let Some(overview) = overview(input) else {
        return false;
    };
    if overview.state != JmState::Running {
        return false;
    }
    match (&op.savepoint_path, &overview.restored_from) {
        (Some(path), RestoreSource::Savepoint { path: restored, .. }) => same_file(path, restored),
        (Some(_), _) => false,
        (None, _) => true,
    }
}

/// Paths as the jobmanager reports them are canonicalised; compare by the file itself.
fn same_file(a: &str, b: &str) -> bool {
    a == b || std::path::Path::new(a).file_name() == std::path::Path::new(b).file_name()
}

/// Health from the jobmanager: Ready only while the job processes; Degraded when checkpoints
/// stall or pods stay unavailable.
fn health(input: &LifecycleInput<'_>, decision: &mut Decision) {
    let spec = &input.job.spec;
    if spec.state != JobState::Running {
        return;
    }
    let now = input.now;
    for (role, deployment) in [
        ("jobmanager", input.observed.jobmanager.as_ref()),
        ("taskmanager", input.observed.taskmanager.as_ref()),
    ] {
        let unavailable = deployment
            .and_then(|d| d.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| {
                c.iter().find(|c| {
                    c.type_.as_deref() == Some("Available") && c.status.as_deref() == Some("False")
                })
            })
            .filter(|c| elapsed(c.last_transition_time.as_ref(), now) > UNAVAILABLE_GRACE);
        if let Some(condition) = unavailable {
            decision.degraded.get_or_insert_with(|| {
                (
                    "PodsUnavailable".into(),
                    format!(
                        "{role} pods have been unavailable for more than {}s (crash loop, image pull or scheduling failure?): {}; see kubectl describe/logs of the {role} pods",
                        UNAVAILABLE_GRACE.as_secs(),
                        condition.message.clone().unwrap_or_default()
                    ),
                )
            });
        }
    }
    if !jobmanager_expected(input.observed) {
        return;
    }
    match input.jobmanager.map(|v| &v.overview) {
        Some(Ok(overview)) => {
            if overview.state != JmState::Running {
                decision.not_ready.get_or_insert_with(|| {
                    (
                        "JobNotRunning".into(),
                        format!("the jobmanager reports the job {}", overview.state),
                    )
                });
            } else if overview.taskmanagers.is_empty() && spec.replicas > 0 {
                decision.not_ready.get_or_insert_with(|| {
                    (
                        "NoTaskManagers".into(),
                        "no taskmanager is registered".into(),
                    )
                });
            }
            let interval = parse_duration(&spec.checkpoint.interval, Duration::ZERO);
            if let Some(checkpoint) = &overview.last_checkpoint {
                let age = now
                    .as_millisecond()
                    .saturating_sub(i64::try_from(checkpoint.created_at_ms).unwrap_or(0));
                let limit = interval.saturating_mul(3) + Duration::from_secs(30);
                let age = Duration::from_millis(u64::try_from(age).unwrap_or(0));
                if !interval.is_zero() && overview.state == JmState::Running && age > limit {
                    decision.degraded.get_or_insert_with(|| {
                        (
                            "CheckpointsStalled".into(),
                            format!(
                                "the newest checkpoint is {}s old (spec.checkpoint.interval is {}s): are taskmanagers reporting and is the savepoint volume writable?",
                                age.as_secs(),
                                interval.as_secs()
                            ),
                        )
                    });
                }
            }
        }
        Some(Err(error)) => {
            decision.not_ready.get_or_insert_with(|| {
                (
                    "JobManagerUnreachable".into(),
                    format!("cannot reach the jobmanager: {error}"),
                )
            });
        }
        None => {}
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
                let degraded = crate::planner::status::condition(
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

/// What deletion takes: an optional final savepoint (with a deadline), then release.
#[derive(Debug, Clone, PartialEq)]
pub struct CleanupDecision {
    pub operation: Option<Operation>,
    pub actions: Vec<JobManagerAction>,
    pub events: Vec<EventNote>,
    pub new_savepoints: Vec<SavepointInfo>,
    /// The finalizer may go.
    pub done: bool,
    pub requeue: Duration,
}

/// Decides the deletion steps.
pub fn cleanup(input: &LifecycleInput<'_>) -> CleanupDecision {
    let job = input.job;
    let spec = &job.spec;
    let now = input.now;
    let status = job.status.clone().unwrap_or_default();
    let timeout = parse_duration(&spec.savepoint.timeout, Duration::from_secs(300));
    let mut decision = Decision::default();
    let current = status
        .current_operation
        .clone()
        .filter(|o| o.kind == OperationKind::Delete);
    let wanted = spec.savepoint.on_delete.final_savepoint
        && spec.state == JobState::Running
        && jobmanager_expected(input.observed);
    let release = |events: Vec<EventNote>, new_savepoints: Vec<SavepointInfo>| CleanupDecision {
        operation: None,
        actions: Vec::new(),
        events,
        new_savepoints,
        done: true,
        requeue: POLL_INTERVAL,
    };
    let current_is_new = current.is_none();
    let op = match current {
        Some(op) => op,
        None if !wanted => return release(Vec::new(), Vec::new()),
        None => {
            decision.events.push(note(
                EventSeverity::Normal,
                "FinalSavepoint",
                format!(
                    "deleting: taking a final savepoint first (at most {}s)",
                    timeout.as_secs()
                ),
            ));
            new_operation(OperationKind::Delete, OperationStep::TriggerSavepoint, now)
        }
    };
    let started = op.started_at.clone();
    let fresh = current_is_new;
    let op = advance(op, fresh, input, &mut decision);
    let mut events = decision.events;
    match op {
        Some(op) if op.step == OperationStep::Done => release(events, decision.new_savepoints),
        Some(op) if elapsed(Some(&started), now) > timeout || op.step == OperationStep::Failed => {
            events.push(note(
                EventSeverity::Warning,
                "FinalSavepointTimedOut",
                format!(
                    "no final savepoint within {}s ({}); deleting anyway: a re-created job resumes from the newest checkpoint on a kept volume and the Redis fences",
                    timeout.as_secs(),
                    op.message.clone().unwrap_or_else(|| "no answer".into())
                ),
            ));
            release(events, decision.new_savepoints)
        }
        Some(op) => CleanupDecision {
            operation: Some(op),
            actions: decision.actions,
            events,
            new_savepoints: decision.new_savepoints,
            done: false,
            requeue: POLL_INTERVAL,
        },
        None => release(events, decision.new_savepoints),
    }
}
