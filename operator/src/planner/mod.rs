//! The pure planner: (StreamJob, observed children, jobmanager status, now) → desired children,
//! actions and the next status. No I/O, no clock, no randomness: the same input always gives the
//! same plan, which is what the tests and the lifecycle work (issue #5) build on. [`autoscaler`]
//! decides the taskmanager count from the jobmanager's metrics, just as purely.

pub mod annotations;
pub mod autoscaler;
pub mod children;
pub mod conditions;
pub mod config;
pub mod lifecycle;
pub mod redis;
pub mod rollout;
pub mod status;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};

use crate::crd::{OperationKind, OperationStep, Phase, StreamJob, StreamJobStatus};
use lifecycle::{JobManagerAction, LifecycleInput, LATEST_SAVEPOINT_ANNOTATION};

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
    /// The Secret with the bearer token of the jobmanager's mutating REST calls.
    pub fn api_token(job: &str) -> String {
        format!("{job}-api-token")
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
    pub const COMPONENT_API_TOKEN: &str = "api-token";

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

/// Who, besides the job's own namespace, may connect to a job's pods: the operator's settings
/// (`--metrics-namespace-selector`, its own namespace), the same for every StreamJob.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkPeers {
    /// The operator's namespace (its REST calls to the jobmanagers come from there). `None`:
    /// unknown (the operator runs outside the cluster), the jobmanager accepts every namespace.
    pub operator_namespace: Option<String>,
    /// Labels of the namespaces whose pods may scrape the job's metrics (e.g.
    /// `kubernetes.io/metadata.name=monitoring`). `None`: every namespace.
    pub metrics_namespace_labels: Option<BTreeMap<String, String>>,
}

/// The children as they are in the cluster (None: not there).
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub jobmanager: Option<Deployment>,
    pub taskmanager: Option<Deployment>,
    pub savepoint_pvc: Option<PersistentVolumeClaim>,
    /// The job's pods (crash loops show here, not in the Deployments).
    pub pods: Vec<Pod>,
    /// The bearer token of the jobmanager's mutating REST calls: what the job's
    /// `<job>-api-token` Secret holds, or, when it has none yet, a fresh random token the
    /// reconciler drew (the planner itself never draws randomness). `None`: no Secret is rendered.
    pub api_token: Option<String>,
}

/// What the jobmanager answered this round (see [`lifecycle::queries`]).
#[derive(Debug, Clone, PartialEq)]
pub struct JobManagerReport {
    pub observed_at: Timestamp,
    pub view: lifecycle::JobManagerView,
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
    /// The job's API token Secret (when [`Observed::api_token`] is known).
    pub api_token: Option<Secret>,
    /// The job's NetworkPolicies (empty when `spec.networkPolicy.enabled` is false).
    pub network_policies: Vec<NetworkPolicy>,
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
    /// The children the spec asks for.
    pub children: Children,
    /// Whether the ConfigMap and Deployments may be applied now. `false` while an operation
    /// must first take a savepoint (or gave up): the running processes are left as they are.
    /// The PVC and the Service are always applied.
    pub apply_workloads: bool,
    /// Events to publish.
    pub actions: Vec<Action>,
    /// Calls to the jobmanager, made after `status` is written.
    pub jobmanager_actions: Vec<JobManagerAction>,
    pub status: StreamJobStatus,
    pub requeue_after: Duration,
}

/// What deleting a StreamJob takes (the finalizer's hook).
#[derive(Debug, Clone, PartialEq)]
pub struct CleanupPlan {
    pub actions: Vec<Action>,
    /// Calls to the jobmanager, made after `status` is written.
    pub jobmanager_actions: Vec<JobManagerAction>,
    /// The status to write (the final savepoint's step).
    pub status: StreamJobStatus,
    /// The savepoint PVC to apply (it names the final savepoint), when it is kept.
    pub savepoint_pvc: Option<PersistentVolumeClaim>,
    /// `true` when the finalizer may be removed now.
    pub done: bool,
    pub requeue_after: Duration,
}

struct Rendered {
    children: Children,
    config_hash: String,
}

/// The children for a restore point (`savepoint.restoreFrom`, left out of the hash: a restore
/// path alone never rolls pods) and the savepoint the PVC should name.
fn render(
    job: &StreamJob,
    restore_from: Option<&str>,
    latest_savepoint: Option<&str>,
    api_token: Option<&str>,
    peers: &NetworkPeers,
) -> Result<Rendered, PlanError> {
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

    let mut job_config = config::render(job, name, namespace)?;
    let to_yaml = |c: &streamjob_worker::config::JobConfig| {
        c.to_yaml()
            .map_err(|e| PlanError::InvalidConfig(e.to_string()))
    };
    let hashed_yaml = to_yaml(&job_config)?;
    let config_hash = pod_hash(job, &hashed_yaml);
    let job_yaml = match restore_from {
        Some(path) => {
            job_config.savepoint.restore_from = Some(PathBuf::from(path));
            to_yaml(&job_config)?
        }
        None => hashed_yaml,
    };
    let ctx = children::Context {
        job,
        name,
        namespace,
        owner,
        config_hash: &config_hash,
        peers,
    };
    let mut savepoint_pvc = children::savepoint_pvc(&ctx);
    if let Some(path) = latest_savepoint {
        savepoint_pvc
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(LATEST_SAVEPOINT_ANNOTATION.to_string(), path.to_string());
    }
    let children = Children {
        config_map: children::config_map(&ctx, job_yaml),
        savepoint_pvc,
        jobmanager_service: children::jobmanager_service(&ctx),
        jobmanager: children::jobmanager_deployment(&ctx),
        taskmanager: children::taskmanager_deployment(&ctx),
        api_token: api_token.map(|token| children::api_token_secret(&ctx, token)),
        network_policies: children::network_policies(&ctx),
    };
    Ok(Rendered {
        children,
        config_hash,
    })
}

/// The savepoint the PVC names: the newest recorded, else what a kept PVC already names.
fn latest_savepoint(status: &StreamJobStatus, observed: &Observed) -> Option<String> {
    status
        .last_savepoint
        .as_ref()
        .map(|s| s.path.clone())
        .or_else(|| {
            observed
                .savepoint_pvc
                .as_ref()?
                .metadata
                .annotations
                .as_ref()?
                .get(LATEST_SAVEPOINT_ANNOTATION)
                .cloned()
        })
}

/// Plans one reconciliation, for an operator whose network settings are unknown (see
/// [`NetworkPeers`]; [`plan_with`] takes them).
pub fn plan(input: PlanInput<'_>) -> Result<Plan, PlanError> {
    plan_with(input, &NetworkPeers::default())
}

/// Plans one reconciliation.
pub fn plan_with(input: PlanInput<'_>, peers: &NetworkPeers) -> Result<Plan, PlanError> {
    let job = input.job;
    let name = job
        .metadata
        .name
        .as_deref()
        .ok_or(PlanError::MissingMetadata("metadata.name"))?;
    // The hash does not depend on the restore point: render once to learn it.
    let config_hash = render(job, None, None, None, peers)?.config_hash;
    let decision = lifecycle::decide(&LifecycleInput {
        job,
        observed: input.observed,
        jobmanager: input.jobmanager.map(|r| &r.view),
        desired_hash: &config_hash,
        now: input.now,
    });

    // With the autoscaler on in mode `scale`, it sets the taskmanager count: planned as if
    // `spec.replicas` were its count (the user's value is kept), which the in-place rescale
    // then applies like a `kubectl scale`.
    let overview_partitions = input
        .jobmanager
        .and_then(|r| r.view.overview.as_ref().ok())
        .and_then(|o| o.partition_count);
    let partitions = autoscaler::job::partitions(job, overview_partitions);
    let autoscaled_job = autoscaler::job::as_planned(job, partitions);
    let job = autoscaled_job.as_ref().unwrap_or(job);
    // A job stopped with a savepoint outside an operation (by hand, or an operation that gave up
    // after its stop) consumes nothing until it is restarted: its taskmanagers go to 0, so it
    // holds no CPU. Planned as if `spec.replicas` were 0 (the user's value is kept).
    let idle_job;
    let job = if stopped_outside_an_operation(&input, &decision) {
        idle_job = {
            let mut idle = job.clone();
            idle.spec.replicas = 0;
            idle
        };
        &idle_job
    } else {
        job
    };
    let input = PlanInput { job, ..input };
    let mut next = status::next(&input, name, &config_hash);
    let status = &mut next.status;
    if !job.spec.autoscaler.enabled {
        // Turned off: its last decision no longer describes the job.
        status.autoscaler = None;
    }
    status.current_operation = decision.operation.clone();
    lifecycle::record_savepoints(status, &decision.new_savepoints);
    status.observed_savepoint_trigger_nonce = decision.observed_savepoint_trigger_nonce;
    overlay(
        status,
        job.status.as_ref(),
        &decision,
        job.metadata.generation,
        input.now,
    );
    if let Some(op) = decision
        .operation
        .as_ref()
        .filter(|o| rollout::rolling(Some(o)))
    {
        let previous = job.status.as_ref();
        let generation = job.metadata.generation;
        rollout::show(status, previous, op, input.observed, generation, input.now);
    }
    let latest = latest_savepoint(status, input.observed);
    let children = render(
        job,
        decision.restore_from.as_deref(),
        latest.as_deref(),
        input.observed.api_token.as_deref(),
        peers,
    )?
    .children;

    let mut actions: Vec<Action> =
        status::transition_events(job, job.status.as_ref(), &next.status, input.observed)
            .into_iter()
            .chain(decision.events.iter().cloned())
            .map(Action::Publish)
            .collect();
    actions.dedup();
    let requeue_after = match decision.requeue {
        Some(requeue) => requeue.min(next.requeue_after),
        None => requeue_by_need(next.requeue_after, input.observed),
    };
    Ok(Plan {
        children,
        apply_workloads: decision.apply_workloads,
        actions,
        jobmanager_actions: decision.actions,
        status: next.status,
        requeue_after,
    })
}

/// The jobmanager reports the job FINISHED (stopped with a savepoint) while no operation is
/// going to roll it on.
fn stopped_outside_an_operation(input: &PlanInput<'_>, decision: &lifecycle::Decision) -> bool {
    let idle_operation = decision
        .operation
        .as_ref()
        .is_none_or(|o| o.step == OperationStep::Failed);
    let finished = input
        .jobmanager
        .and_then(|r| r.view.overview.as_ref().ok())
        .is_some_and(|o| o.state == streamjob_worker::api::JobState::Finished);
    input.job.spec.state == crate::crd::JobState::Running && idle_operation && finished
}

/// Resync of a job that is not settled while its jobmanager is not up: the watches of its
/// Deployments and pods bring every change, so this only catches time-based ones (pods unavailable
/// for longer than [`lifecycle::UNAVAILABLE_GRACE`]).
pub const WATCH_RESYNC: Duration = Duration::from_secs(60);

/// Requeue by need: a job that is not settled is polled often only while its jobmanager is up
/// (its REST API is not watched); otherwise the watches bring progress.
fn requeue_by_need(status_requeue: Duration, observed: &Observed) -> Duration {
    if status_requeue == status::REQUEUE_BUSY && !lifecycle::jobmanager_ready(observed) {
        WATCH_RESYNC
    } else {
        status_requeue
    }
}

pub(crate) fn replace_condition(status: &mut StreamJobStatus, condition: Condition) {
    match status
        .conditions
        .iter_mut()
        .find(|c| c.type_ == condition.type_)
    {
        Some(existing) => *existing = condition,
        None => status.conditions.push(condition),
    }
}

/// The lifecycle's say in phase and conditions: an operation in flight, a job that does not
/// process, a Degraded cause.
fn overlay(
    status: &mut StreamJobStatus,
    previous: Option<&StreamJobStatus>,
    decision: &lifecycle::Decision,
    generation: Option<i64>,
    now: Timestamp,
) {
    if let Some(op) = &decision.operation {
        if !matches!(op.step, OperationStep::Failed | OperationStep::Done) {
            match op.kind {
                OperationKind::Upgrade | OperationKind::Restart => status.phase = Phase::Upgrading,
                // Shown by `rollout::show`.
                OperationKind::RollingUpgrade => {}
                OperationKind::Resume => status.phase = Phase::Deploying,
                OperationKind::Suspend => status.phase = Phase::Suspending,
                OperationKind::Delete => status.phase = Phase::Deleting,
                OperationKind::Savepoint => {}
            }
        }
    }
    let ready_now = status
        .conditions
        .iter()
        .any(|c| c.type_ == status::READY && c.status == "True");
    if let (true, Some((reason, message))) = (ready_now, &decision.not_ready) {
        let condition = conditions::condition(
            previous,
            status::READY,
            false,
            reason,
            message.clone(),
            generation,
            now,
        );
        replace_condition(status, condition);
    }
    let degraded_now = status
        .conditions
        .iter()
        .any(|c| c.type_ == status::DEGRADED && c.status == "True");
    if let (false, Some((reason, message))) = (degraded_now, &decision.degraded) {
        let condition = conditions::condition(
            previous,
            status::DEGRADED,
            true,
            reason,
            message.clone(),
            generation,
            now,
        );
        replace_condition(status, condition);
    }
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

/// The finalizer's hook: a final savepoint when `spec.savepoint.onDelete.finalSavepoint` asks
/// for it (steps recorded in `status.currentOperation`, bounded by `spec.savepoint.timeout`), then
/// release. A kept PVC is annotated with the newest savepoint, so a StreamJob re-created with the
/// same name restores from it.
pub fn plan_cleanup(input: PlanInput<'_>) -> Result<CleanupPlan, PlanError> {
    let job = input.job;
    let name = job.name_any();
    let decision = lifecycle::cleanup(&LifecycleInput {
        job,
        observed: input.observed,
        jobmanager: input.jobmanager.map(|r| &r.view),
        desired_hash: "",
        now: input.now,
    });
    let mut status = job.status.clone().unwrap_or_default();
    status.current_operation = decision.operation.clone();
    lifecycle::record_savepoints(&mut status, &decision.new_savepoints);
    if !decision.done {
        status.phase = Phase::Deleting;
    }
    let keep = job.spec.savepoint.on_delete.pvc == crate::crd::PvcPolicy::Keep;
    let savepoint_pvc = match (keep, decision.new_savepoints.is_empty()) {
        (true, false) => {
            let latest = latest_savepoint(&status, input.observed);
            let peers = NetworkPeers::default();
            Some(
                render(job, None, latest.as_deref(), None, &peers)?
                    .children
                    .savepoint_pvc,
            )
        }
        _ => None,
    };
    let mut actions: Vec<Action> = decision.events.into_iter().map(Action::Publish).collect();
    if decision.done {
        let pvc = if keep {
            format!(
                "savepoint volume {} is kept; recreate the StreamJob to resume from it",
                names::savepoints(&name)
            )
        } else {
            format!(
                "savepoint volume {} is deleted with the job",
                names::savepoints(&name)
            )
        };
        actions.push(Action::Publish(EventNote {
            severity: EventSeverity::Normal,
            reason: "Deleting".into(),
            message: format!("StreamJob {name} is being deleted; {pvc}"),
        }));
    }
    Ok(CleanupPlan {
        actions,
        jobmanager_actions: decision.actions,
        status,
        savepoint_pvc,
        done: decision.done,
        requeue_after: decision.requeue,
    })
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
        "redisSentinelPassword": spec.redis.sentinel.as_ref().map(|s| &s.password_secret_ref),
        "sasl": spec.kafka.sasl,
        "tls": spec.kafka.tls,
    });
    let pod_parts = pod_parts.to_string();
    config::stable_hash(&[job_yaml.as_bytes(), pod_parts.as_bytes()])
}
