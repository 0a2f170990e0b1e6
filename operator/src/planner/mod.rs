//! The pure planner: (StreamJob, observed children, jobmanager status, now) → desired children,
//! actions and the next status. No I/O, no clock, no randomness: the same input always gives the
//! same plan, which is what the tests and the lifecycle work (issue #5) build on.

pub mod children;
pub mod config;
pub mod status;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Service};
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};
use streamjob_worker::api::PartitionProgress;

use crate::crd::{StreamJob, StreamJobStatus};

/// Name of the finalizer that gives the lifecycle a say before a StreamJob goes away.
pub const FINALIZER: &str = "streaming.austin.dev/cleanup";

/// Why no plan could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("field `{field}` {reason}")]
    InvalidSpec { field: &'static str, reason: String },
    #[error("rendered job config is invalid: {0}")]
    InvalidConfig(String),
    #[error("object is missing {0}")]
    MissingMetadata(&'static str),
}

impl PlanError {
    /// Machine-readable reason for the Degraded condition and the Event.
    pub fn reason(&self) -> &'static str {
        match self {
            PlanError::InvalidSpec { .. } | PlanError::InvalidConfig(_) => "InvalidSpec",
            PlanError::MissingMetadata(_) => "InvalidObject",
        }
    }
}

/// Child names, derived from the StreamJob's name.
pub mod names {
    pub fn config(job: &str) -> String {
        format!("{job}-config")
    }
    pub fn jobmanager(job: &str) -> String {
        format!("{job}-jobmanager")
    }
    pub fn taskmanager(job: &str) -> String {
        format!("{job}-taskmanager")
    }
    pub fn savepoints(job: &str) -> String {
        format!("{job}-savepoints")
    }
}

/// Labels every child carries.
pub mod labels {
    use std::collections::BTreeMap;

    pub const NAME: &str = "app.kubernetes.io/name";
    pub const INSTANCE: &str = "app.kubernetes.io/instance";
    pub const COMPONENT: &str = "app.kubernetes.io/component";
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    pub const APP: &str = "streamjob";
    pub const MANAGER: &str = "streamjob-operator";
    pub const COMPONENT_CONFIG: &str = "config";
    pub const COMPONENT_JOBMANAGER: &str = "jobmanager";
    pub const COMPONENT_TASKMANAGER: &str = "taskmanager";
    pub const COMPONENT_SAVEPOINTS: &str = "savepoints";

    /// The label selector the operator's watches on children use.
    pub fn managed_selector() -> String {
        format!("{MANAGED_BY}={MANAGER}")
    }

    /// Labels that select one component's pods (immutable once a Deployment exists).
    pub fn selector(job: &str, component: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (NAME.to_string(), APP.to_string()),
            (INSTANCE.to_string(), job.to_string()),
            (COMPONENT.to_string(), component.to_string()),
        ])
    }

    /// Selector labels plus `managed-by`.
    pub fn common(job: &str, component: &str) -> BTreeMap<String, String> {
        let mut labels = selector(job, component);
        labels.insert(MANAGED_BY.to_string(), MANAGER.to_string());
        labels
    }

    /// A selector as the string `k=v,k=v` (what `status.selector` and the scale subresource want).
    pub fn selector_string(labels: &BTreeMap<String, String>) -> String {
        labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The children as they are in the cluster (None: not there).
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub jobmanager: Option<Deployment>,
    pub taskmanager: Option<Deployment>,
    pub savepoint_pvc: Option<PersistentVolumeClaim>,
}

/// What the jobmanager reported (the lifecycle issue fills this from its REST API).
#[derive(Debug, Clone, PartialEq)]
pub struct JobManagerReport {
    pub partitions: Vec<PartitionProgress>,
    pub observed_at: Timestamp,
}

/// Everything the planner looks at.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    pub job: &'a StreamJob,
    pub observed: &'a Observed,
    pub jobmanager: Option<&'a JobManagerReport>,
    pub now: Timestamp,
}

/// The desired children, in the order they are applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Children {
    pub config_map: ConfigMap,
    pub savepoint_pvc: PersistentVolumeClaim,
    pub jobmanager_service: Service,
    pub jobmanager: Deployment,
    pub taskmanager: Deployment,
}

/// Severity of an Event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventSeverity {
    Normal,
    Warning,
}

/// A Kubernetes Event to publish about the StreamJob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventNote {
    pub severity: EventSeverity,
    /// CamelCase reason, e.g. `Running`, `ConfigChanged`.
    pub reason: String,
    pub message: String,
}

/// Side effects besides applying the children and the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Publish an Event.
    Publish(EventNote),
}

/// The planner's decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub children: Children,
    pub actions: Vec<Action>,
    pub status: StreamJobStatus,
    pub requeue_after: Duration,
}

/// What deleting a StreamJob takes (the finalizer's hook).
#[derive(Debug, Clone, PartialEq)]
pub struct CleanupPlan {
    pub actions: Vec<Action>,
    /// `true` when the finalizer may be removed now.
    pub done: bool,
}

/// Plans one reconciliation.
pub fn plan(input: PlanInput<'_>) -> Result<Plan, PlanError> {
    let job = input.job;
    let name = job
        .metadata
        .name
        .as_deref()
        .ok_or(PlanError::MissingMetadata("metadata.name"))?;
    let namespace = job
        .metadata
        .namespace
        .as_deref()
        .ok_or(PlanError::MissingMetadata("metadata.namespace"))?;
    let owner = job
        .controller_owner_ref(&())
        .ok_or(PlanError::MissingMetadata("metadata.uid"))?;

    let job_config = config::render(job, name, namespace)?;
    let job_yaml = job_config
        .to_yaml()
        .map_err(|e| PlanError::InvalidConfig(e.to_string()))?;
    let config_hash = pod_hash(job, &job_yaml);
    let ctx = children::Context {
        job,
        name,
        namespace,
        owner,
        config_hash: &config_hash,
    };
    let children = Children {
        config_map: children::config_map(&ctx, job_yaml),
        savepoint_pvc: children::savepoint_pvc(&ctx),
        jobmanager_service: children::jobmanager_service(&ctx),
        jobmanager: children::jobmanager_deployment(&ctx),
        taskmanager: children::taskmanager_deployment(&ctx),
    };
    let next = status::next(&input, name, &config_hash);
    let mut actions: Vec<Action> =
        status::transition_events(job, job.status.as_ref(), &next.status, input.observed)
            .into_iter()
            .map(Action::Publish)
            .collect();
    actions.dedup();
    Ok(Plan {
        children,
        actions,
        status: next.status,
        requeue_after: next.requeue_after,
    })
}

/// The status (and Events) after a failure: the planner refused the spec, or an API call failed.
/// Everything observed before is kept; `Degraded` says what failed.
pub fn failed_status(
    job: &StreamJob,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> (StreamJobStatus, Vec<Action>) {
    let next = status::degraded(job, reason, message, now);
    let actions = status::transition_events(job, job.status.as_ref(), &next, &Observed::default())
        .into_iter()
        .map(Action::Publish)
        .collect();
    (next, actions)
}

/// The finalizer's hook: what must happen before a StreamJob may go. The lifecycle issue adds the
/// final savepoint (`spec.savepoint.onDelete.finalSavepoint`) as steps recorded in
/// `status.currentOperation`; for now deletion proceeds at once and says what happens to the PVC.
pub fn plan_cleanup(job: &StreamJob) -> CleanupPlan {
    let name = job.name_any();
    let pvc = match job.spec.savepoint.on_delete.pvc {
        crate::crd::PvcPolicy::Keep => format!(
            "savepoint volume {} is kept; recreate the StreamJob to resume from it",
            names::savepoints(&name)
        ),
        crate::crd::PvcPolicy::Delete => format!(
            "savepoint volume {} is deleted with the job",
            names::savepoints(&name)
        ),
    };
    CleanupPlan {
        actions: vec![Action::Publish(EventNote {
            severity: EventSeverity::Normal,
            reason: "Deleting".into(),
            message: format!("StreamJob {name} is being deleted; {pvc}"),
        })],
        done: true,
    }
}

/// Hash of everything that reaches the pods: the rendered config and the pod-shaping parts of the
/// spec. Replicas and state are left out: scaling and suspending must not roll pods.
fn pod_hash(job: &StreamJob, job_yaml: &str) -> String {
    let spec = &job.spec;
    let pod_parts = serde_json::json!({
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "imagePullSecrets": spec.image_pull_secrets,
        "jobmanager": spec.jobmanager,
        "taskmanager": spec.taskmanager,
        "podTemplate": spec.pod_template,
        "redisPassword": spec.redis.password_secret_ref,
        "sasl": spec.kafka.sasl,
        "tls": spec.kafka.tls,
    });
    let pod_parts = pod_parts.to_string();
    config::stable_hash(&[job_yaml.as_bytes(), pod_parts.as_bytes()])
}
