//! One status condition as the planner writes it: `True` or `False` with a reason and a
//! message, and its `lastTransitionTime` kept from the previous status while its value holds (a
//! condition that is rewritten with the same value did not transition). Every part of the
//! planner that sets a condition (status, rollout, Redis topology) builds it here.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::crd::StreamJobStatus;

/// The condition `type_` at `value`, keeping its transition time if it already had that value.
pub(crate) fn condition(
    previous: Option<&StreamJobStatus>,
    type_: &str,
    value: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if value { "True" } else { "False" };
    let last_transition_time = previous
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}
