//! The steps of an operation: trigger and await a savepoint, check the restore point, roll out;
//! failed attempts with backoff and a final give-up.

use super::*;

/// Records one failed attempt of the current savepoint step: retry later, or give up.
pub(super) fn fail_attempt(
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
pub(super) fn savepoint_done(
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
pub(super) fn advance(
    op: Operation,
    input: &LifecycleInput<'_>,
    decision: &mut Decision,
) -> Option<Operation> {
    match op.step {
        OperationStep::Failed | OperationStep::Done => Some(op),
        OperationStep::TriggerSavepoint => trigger_savepoint(op, input, decision),
        OperationStep::AwaitSavepoint => await_savepoint(op, input, decision),
        OperationStep::CheckRestorePoint => check_restore_point(op, input, decision),
        OperationStep::RollOut => roll_out(op, input, decision),
    }
}

/// The savepoint's timeout (`spec.savepoint.timeout`), per step.
fn savepoint_timeout(input: &LifecycleInput<'_>) -> Duration {
    parse_duration(&input.job.spec.savepoint.timeout, Duration::from_secs(300))
}

/// Asks the jobmanager for the operation's savepoint (or stop-with-savepoint), once its retry
/// time has come, unless an earlier request of ours is still running or already answered.
fn trigger_savepoint(
    mut op: Operation,
    input: &LifecycleInput<'_>,
    decision: &mut Decision,
) -> Option<Operation> {
    let now = input.now;
    let timeout = savepoint_timeout(input);
    if let Some(at) = op.retry_after.take() {
        if at.0 > now {
            op.retry_after = Some(at);
            return Some(op);
        }
        // The retry's attempt starts at its retry time: the delay before it is not part of the
        // attempt's timeout (a wait for a ready pod would otherwise give up that much earlier).
        op.step_started_at = Some(at);
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
    if !jobmanager_ready(input.observed) {
        return await_a_ready_jobmanager(op, input, decision);
    }
    // Stored at this step without a retry time, an earlier round may have sent the
    // trigger before the operator restarted. Sending it again is safe: the trigger id
    // comes from the stored operation, so the jobmanager answers the request it already
    // has (and takes no second savepoint). Without an answer from the jobmanager the
    // call is still made: its failure counts as an attempt.
    op.step_started_at = Some(Time(now));
    op.retry_after = None;
    let trigger_id = trigger_id(&op);
    decision.actions.push(if uses_stop(op.kind) {
        JobManagerAction::StopWithSavepoint { trigger_id }
    } else {
        JobManagerAction::TriggerSavepoint { trigger_id }
    });
    Some(op)
}

/// No jobmanager pod is ready to take the savepoint: a call now could only fail, or go to
/// cluster DNS and hold a reconcile slot until its timeout. So no call: the step waits (the pod's
/// watch event brings the job back once it is ready), and a wait longer than the savepoint
/// timeout counts as one failed attempt, which says so.
fn await_a_ready_jobmanager(
    mut op: Operation,
    input: &LifecycleInput<'_>,
    decision: &mut Decision,
) -> Option<Operation> {
    let timeout = savepoint_timeout(input);
    if op.step_started_at.is_none() {
        op.step_started_at = Some(Time(input.now));
    }
    if elapsed(op.step_started_at.as_ref(), input.now) > timeout {
        let reason = format!(
            "no jobmanager pod was ready for {}s (spec.savepoint.timeout)",
            timeout.as_secs()
        );
        return fail_attempt(op, reason, input, decision);
    }
    op.message = Some(WAITING_FOR_A_READY_JOBMANAGER.to_string());
    Some(op)
}

/// The operation's message while its savepoint waits for a ready jobmanager pod.
pub const WAITING_FOR_A_READY_JOBMANAGER: &str =
    "waiting for a ready jobmanager pod to take the savepoint";

/// Waits for the jobmanager's answer to the savepoint request, within the timeout.
fn await_savepoint(
    mut op: Operation,
    input: &LifecycleInput<'_>,
    decision: &mut Decision,
) -> Option<Operation> {
    let now = input.now;
    let timeout = savepoint_timeout(input);
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
            } else if waited > timeout {
                // Not asked: no jobmanager pod has been ready to answer since the trigger.
                let reason = format!(
                    "no jobmanager pod was ready to answer for {}s (spec.savepoint.timeout)",
                    timeout.as_secs()
                );
                return fail_attempt(op, reason, input, decision);
            }
            Some(op)
        }
    }
}

/// A last-state upgrade goes ahead only with a checkpoint to restore (or no jobmanager to ask).
fn check_restore_point(
    mut op: Operation,
    input: &LifecycleInput<'_>,
    decision: &mut Decision,
) -> Option<Operation> {
    let now = input.now;
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

/// Waits for the new configuration to be rolled out; ends the operation with its event.
fn roll_out(
    mut op: Operation,
    input: &LifecycleInput<'_>,
    decision: &mut Decision,
) -> Option<Operation> {
    if let Some(hash) = op.target_config_hash.as_mut() {
        hash.clear();
        hash.push_str(input.desired_hash);
    }
    if op.kind == OperationKind::RollingUpgrade {
        return super::rolling::roll_on(op, input, decision);
    }
    if rollout_complete(&op, input) {
        let (reason, message) = match op.kind {
            OperationKind::Suspend => (
                "Suspended",
                "suspended: no process runs; the savepoint volume is kept".to_string(),
            ),
            OperationKind::Resume => ("Resumed", "resumed: the job processes again".to_string()),
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
        && status.available_replicas.unwrap_or(0) == replicas
}

pub(super) fn rollout_complete(op: &Operation, input: &LifecycleInput<'_>) -> bool {
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
