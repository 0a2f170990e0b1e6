//! Health from the jobmanager, the Deployments and the pods: Ready only while the job processes;
//! Degraded when checkpoints stall, a pod crash-loops or pods stay unavailable.

use super::*;

/// Health from the jobmanager: Ready only while the job processes; Degraded when checkpoints
/// stall or pods stay unavailable.
pub(super) fn health(input: &LifecycleInput<'_>, decision: &mut Decision) {
    let spec = &input.job.spec;
    if spec.state != JobState::Running {
        return;
    }
    let now = input.now;
    if let Some(message) = crash_loop(&input.observed.pods) {
        decision.degraded = Some(("CrashLoop".into(), message));
    } else if let Some(message) = container_config_error(&input.observed.pods) {
        decision.degraded = Some(("ContainerConfigError".into(), message));
    }
    for (role, deployment) in [
        ("jobmanager", input.observed.jobmanager.as_ref()),
        ("taskmanager", input.observed.taskmanager.as_ref()),
    ] {
        let Some(condition) = unavailable(deployment) else {
            continue;
        };
        let waited = elapsed(condition.last_transition_time.as_ref(), now);
        if waited <= UNAVAILABLE_GRACE {
            // Nothing else may happen to these pods (Pending for good): look again when the
            // grace ends, so Degraded comes on time instead of at the next resync.
            let due = UNAVAILABLE_GRACE - waited + Duration::from_secs(1);
            decision.requeue = Some(decision.requeue.map_or(due, |r| r.min(due)));
            continue;
        }
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
    if !jobmanager_expected(input.observed) {
        return;
    }
    match input.jobmanager.map(|v| &v.overview) {
        Some(Ok(overview)) => {
            if overview.state == JmState::Finished {
                decision.not_ready.get_or_insert_with(|| {
                    (
                        "JobFinished".into(),
                        "the job was stopped with a savepoint (the jobmanager reports it FINISHED) and consumes nothing: its taskmanagers are scaled to 0; set a new spec.restartNonce to start it again".into(),
                    )
                });
            } else if overview.state != JmState::Running {
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
    let starting = decision.not_ready.as_ref().is_some_and(|(reason, _)| {
        matches!(
            reason.as_str(),
            "JobNotRunning" | "NoTaskManagers" | "JobManagerUnreachable"
        )
    });
    if starting {
        let poll = starting_poll(input.job, now);
        decision.requeue = Some(decision.requeue.map_or(poll, |r| r.min(poll)));
    }
}

/// The Deployment's `Available=False` condition, if it has one.
fn unavailable(
    deployment: Option<&Deployment>,
) -> Option<&k8s_openapi::api::apps::v1::DeploymentCondition> {
    deployment?
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_.as_deref() == Some("Available") && c.status.as_deref() == Some("False"))
}

/// How soon to look again at a job whose jobmanager is up but does not run it yet (or does not
/// answer): every 2 s for the first minute since Ready last changed, since a job starts in
/// seconds and `kubectl wait --for=condition=Ready` should see it at once; then every 15 s, and
/// after 10 minutes every minute (a job that stays down is watched, not polled hard).
pub fn starting_poll(job: &StreamJob, now: Timestamp) -> Duration {
    let since = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| &c.last_transition_time);
    let waited = elapsed(since, now);
    if waited < Duration::from_secs(60) {
        POLL_INTERVAL
    } else if waited < Duration::from_secs(600) {
        Duration::from_secs(15)
    } else {
        Duration::from_secs(60)
    }
}

/// Restarts after which a container that keeps failing counts as crash-looping even before the
/// kubelet reports `CrashLoopBackOff`.
pub const CRASH_LOOP_RESTARTS: i32 = 3;

/// The first crash-looping container of the job's pods, described for the user.
fn crash_loop(pods: &[k8s_openapi::api::core::v1::Pod]) -> Option<String> {
    pods.iter().find_map(|pod| {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
        statuses.iter().find_map(|c| {
            let waiting = c
                .state
                .as_ref()
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.clone());
            let looping = waiting.as_deref() == Some("CrashLoopBackOff")
                || (c.restart_count >= CRASH_LOOP_RESTARTS && !c.ready);
            if !looping {
                return None;
            }
            let last = c
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .map(|t| {
                    format!(
                        "; last exit code {}{}",
                        t.exit_code,
                        t.reason
                            .as_ref()
                            .map(|r| format!(" ({r})"))
                            .unwrap_or_default()
                    )
                })
                .unwrap_or_default();
            // What the worker said before it exited (e.g. "`sink.redis.tls.caFile`: the
            // server's certificate is not signed by the CA ..."): the cause, not just the symptom.
            let said = c
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .and_then(|t| t.message.as_deref())
                .map(last_line)
                .filter(|m| !m.is_empty())
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            Some(format!(
                "pod {name} is crash-looping ({} restarts{last}){said}; see kubectl logs {name} --previous",
                c.restart_count
            ))
        })
    })
}

/// The last non-empty line of a termination message, capped: the worker writes one line, the
/// kubelet's log fallback may hold many.
fn last_line(message: &str) -> String {
    const CAP: usize = 600;
    let line = message
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    match line.char_indices().nth(CAP) {
        Some((end, _)) => format!("{}...", &line[..end]),
        None => line.to_string(),
    }
}

/// A container the kubelet cannot create because a Secret (or a key of it) that an environment
/// variable refers to is missing: the kubelet's own message names the Secret and the key.
fn container_config_error(pods: &[k8s_openapi::api::core::v1::Pod]) -> Option<String> {
    pods.iter().find_map(|pod| {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
        statuses.iter().find_map(|c| {
            let waiting = c.state.as_ref()?.waiting.as_ref()?;
            (waiting.reason.as_deref() == Some("CreateContainerConfigError")).then(|| {
                format!(
                    "pod {name} cannot start: {} (create the Secret or key that spec.redis/spec.kafka refers to; the pod starts once it exists)",
                    waiting.message.as_deref().unwrap_or("container configuration error")
                )
            })
        })
    })
}
