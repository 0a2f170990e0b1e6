//! Pods that stay unavailable: the job turns Degraded when the grace ends, and the planner asks to
//! look again exactly then (nothing else may happen to a pod that stays Pending, so waiting for
//! the next event or resync would leave the job looking healthy for minutes).

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentSpec, DeploymentStatus,
};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use streamjob_operator::planner::children::CONFIG_HASH_ANNOTATION;
use streamjob_operator::planner::lifecycle::{self, LifecycleInput, UNAVAILABLE_GRACE};
use streamjob_operator::planner::Observed;

const HASH: &str = "current-spec";

fn now() -> Timestamp {
    Timestamp::from_second(1_763_700_000).expect("valid time")
}

/// A Deployment of the current spec, one replica, unavailable since `since` before now.
fn unavailable_for(since: Duration) -> Deployment {
    let changed = now() - SignedDuration::try_from(since).expect("small duration");
    Deployment {
        spec: DeploymentSpec {
            replicas: Some(1),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH_ANNOTATION.to_string(),
                        HASH.to_string(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: None,
            },
            ..DeploymentSpec::default()
        },
        status: Some(DeploymentStatus {
            replicas: Some(1),
            unavailable_replicas: Some(1),
            conditions: Some(vec![DeploymentCondition {
                type_: Some("Available".into()),
                status: Some("False".into()),
                reason: Some("MinimumReplicasUnavailable".into()),
                message: Some("Deployment does not have minimum availability.".into()),
                last_transition_time: Some(Time(changed)),
                ..DeploymentCondition::default()
            }]),
            ..DeploymentStatus::default()
        }),
        ..Deployment::default()
    }
}

fn decide_with_pods_unavailable_for(since: Duration) -> lifecycle::Decision {
    let job = support::sample("minimal.yaml");
    let observed = Observed {
        jobmanager: Some(unavailable_for(since)),
        taskmanager: Some(unavailable_for(since)),
        ..Observed::default()
    };
    lifecycle::decide(&LifecycleInput {
        job: &job,
        observed: &observed,
        jobmanager: None,
        desired_hash: HASH,
        now: now(),
    })
}

#[test]
fn pods_pending_for_less_than_the_grace_are_looked_at_again_when_it_ends() {
    let decision = decide_with_pods_unavailable_for(Duration::from_secs(100));
    assert_eq!(decision.degraded, None, "not yet Degraded");
    let requeue = decision.requeue.expect("a requeue at the grace's end");
    assert_eq!(
        requeue,
        UNAVAILABLE_GRACE - Duration::from_secs(100) + Duration::from_secs(1)
    );
}

#[test]
fn pods_pending_past_the_grace_make_the_job_degraded_and_say_which() {
    let decision = decide_with_pods_unavailable_for(UNAVAILABLE_GRACE + Duration::from_secs(5));
    let (reason, message) = decision.degraded.expect("Degraded");
    assert_eq!(reason, "PodsUnavailable");
    assert!(
        message.contains("jobmanager pods have been unavailable for more than 120s")
            && message.contains("minimum availability"),
        "{message}"
    );
}
