//! Deletion: an optional final savepoint bounded by `spec.savepoint.timeout`, then release.

use super::*;

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
    let asked = spec.savepoint.on_delete.final_savepoint
        && spec.state == JobState::Running
        && jobmanager_expected(input.observed);
    let ran = ever_ran(job, input.observed);
    let wanted = asked && ran;
    let release = |events: Vec<EventNote>, new_savepoints: Vec<SavepointInfo>| CleanupDecision {
        operation: None,
        actions: Vec::new(),
        events,
        new_savepoints,
        done: true,
        requeue: POLL_INTERVAL,
    };
    if !ran && (asked || current.is_some()) {
        // Nothing ran, so nothing to save: waiting for a savepoint that cannot come would only
        // hold `kubectl delete` for the whole timeout.
        let skipped = note(
            EventSeverity::Normal,
            "FinalSavepointSkipped",
            "the job never ran (its jobmanager was never ready and no savepoint exists): deleting without a final savepoint",
        );
        return release(vec![skipped], Vec::new());
    }
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
    let op = advance(op, input, &mut decision);
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
