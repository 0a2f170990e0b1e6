//! Which operation the spec asks for, when none is in flight.

use super::*;

/// Starts the operation the spec asks for, if any.
pub(super) fn start(
    input: &LifecycleInput<'_>,
    status: &StreamJobStatus,
    decision: &mut Decision,
) -> Option<Operation> {
    let observed = input.observed;
    let running = jobmanager_expected(observed);
    if input.job.spec.state == JobState::Suspended {
        return suspend(input, running, decision);
    }
    // Running from here on.
    if observed.jobmanager.is_none() {
        return first_deployment(input, status, decision);
    }
    if !running {
        return Some(resume(input, status, decision));
    }
    template_change(input, decision).or_else(|| savepoint_request(input, status, decision))
}

/// Suspends a job that still runs or still has taskmanagers, with a savepoint when it can.
fn suspend(
    input: &LifecycleInput<'_>,
    running: bool,
    decision: &mut Decision,
) -> Option<Operation> {
    let spec = &input.job.spec;
    let now = input.now;
    let observed = input.observed;
    let taskmanagers = spec_replicas(observed.taskmanager.as_ref());
    if !running && taskmanagers == 0 {
        return None;
    }
    let with_savepoint = running && stopping_mode(spec.upgrade_mode) == UpgradeMode::Savepoint;
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
    Some(op)
}

/// Resumes a suspended job, from the savepoint its suspension took where there is one.
fn resume(
    input: &LifecycleInput<'_>,
    status: &StreamJobStatus,
    decision: &mut Decision,
) -> Operation {
    let spec = &input.job.spec;
    let now = input.now;
    let mut op = new_operation(OperationKind::Resume, OperationStep::RollOut, now);
    op.upgrade_mode = Some(spec.upgrade_mode);
    // The savepoint the suspension took is the exact position; without one (suspended in
    // last-state or stateless mode) the newest checkpoint and the Redis fences are.
    if spec.upgrade_mode != UpgradeMode::Stateless {
        op.savepoint_path = status
            .last_savepoint
            .as_ref()
            .filter(|s| s.trigger == SavepointTrigger::Suspend)
            .map(|s| s.path.clone());
    }
    decision.events.push(note(
        EventSeverity::Normal,
        "Resuming",
        match &op.savepoint_path {
            Some(path) => format!("resuming from savepoint {path}"),
            None => "resuming from the newest checkpoint (or the Redis fences)".to_string(),
        },
    ));
    op
}

/// A first deployment. A kept PVC of an earlier StreamJob of this name names its newest
/// savepoint: restore from it.
fn first_deployment(
    input: &LifecycleInput<'_>,
    status: &StreamJobStatus,
    decision: &mut Decision,
) -> Option<Operation> {
    let spec = &input.job.spec;
    let now = input.now;
    let kept = input
        .observed
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
    None
}

/// An upgrade for a changed pod template, a restart for a new restart nonce.
fn template_change(input: &LifecycleInput<'_>, decision: &mut Decision) -> Option<Operation> {
    let job = input.job;
    let spec = &job.spec;
    let now = input.now;
    match template(input) {
        Template::Changed => {
            if spec.upgrade_mode == UpgradeMode::Rolling {
                match rollout::path(job, input.observed) {
                    RolloutPath::Roll => return Some(super::rolling::start(input, decision)),
                    fallback => decision.events.extend(
                        fallback
                            .fallback_message()
                            .map(|m| note(EventSeverity::Normal, rollout::ROLLING_NOT_POSSIBLE, m)),
                    ),
                }
            }
            let mode = stopping_mode(spec.upgrade_mode);
            let step = match mode {
                UpgradeMode::Savepoint | UpgradeMode::Rolling => OperationStep::TriggerSavepoint,
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
            Some(op)
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
            Some(op)
        }
        Template::Current => None,
    }
}

/// A savepoint for a new `spec.savepointTriggerNonce`.
fn savepoint_request(
    input: &LifecycleInput<'_>,
    status: &StreamJobStatus,
    decision: &mut Decision,
) -> Option<Operation> {
    let spec = &input.job.spec;
    let now = input.now;
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
        Some(op)
    } else {
        None
    }
}
