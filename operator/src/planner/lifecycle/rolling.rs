//! The rolling upgrade's steps (see [`crate::planner::rollout`] for the handoff and why only
//! some changes roll). One step, `RollOut`, recorded before the children are applied: an
//! operator restarted mid-rollout finds it and keeps waiting, the applies being idempotent.

use super::*;

/// Starts a rolling upgrade of a changed template whose fences keep their meaning.
pub(super) fn start(input: &LifecycleInput<'_>, decision: &mut Decision) -> Operation {
    let job = input.job;
    let mut op = new_operation(
        OperationKind::RollingUpgrade,
        OperationStep::RollOut,
        input.now,
    );
    op.upgrade_mode = Some(UpgradeMode::Rolling);
    op.target_config_hash = Some(input.desired_hash.to_string());
    op.target_generation = job.metadata.generation;
    decision.events.push(note(
        EventSeverity::Normal,
        "RollingUpgradeStarted",
        format!(
            "spec changed (generation {}): rolling upgrade to config {}; new taskmanagers take the partitions over one at a time while the job keeps processing, no savepoint",
            job.metadata.generation.unwrap_or_default(),
            input.desired_hash
        ),
    ));
    op
}

/// Waits until every taskmanager and the jobmanager run the new template (the job RUNNING),
/// and records a stall in `message` (which makes the job Degraded) while there is one.
pub(super) fn roll_on(
    mut op: Operation,
    input: &LifecycleInput<'_>,
    decision: &mut Decision,
) -> Option<Operation> {
    if steps::rollout_complete(&op, input) {
        decision.events.push(note(
            EventSeverity::Normal,
            "RollingUpgradeCompleted",
            format!(
                "rolling upgrade complete: {} taskmanagers and the jobmanager run config {}; no savepoint was taken",
                input.job.spec.replicas, input.desired_hash
            ),
        ));
        return None;
    }
    let deadline = rollout::progress_deadline(input.job);
    op.message = rollout::stall(input.observed, input.desired_hash, deadline, input.now);
    Some(op)
}
