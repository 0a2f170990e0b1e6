//! Thin I/O around the planner: read the children, plan, apply with server-side apply (one field
//! manager), publish Events, write status. Every failure becomes a Degraded condition and a
//! requeue with backoff, never a silent loop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::events::v1::Event as KubeEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action as ControllerAction, Controller};
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde_json::json;
use tracing::{info, instrument, warn};

use crate::crd::{StreamJob, StreamJobStatus, GROUP, VERSION};
use crate::jobmanager_client::{self as jm, BaseUrl, JobManagerClient};
use crate::metrics::Metrics;
use crate::planner::lifecycle::{self, JobManagerAction};
use crate::planner::{self, labels, names, Action, EventSeverity, Observed, PlanInput, FINALIZER};
use crate::{Error, Result};

/// The one field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "streamjob-operator";

/// Longest wait between retries of a failing StreamJob.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// First retry delay.
const FIRST_BACKOFF: Duration = Duration::from_secs(5);

/// Shared state of the reconciler.
pub struct Context {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    /// The jobmanagers' REST API.
    pub jobmanager: JobManagerClient,
    /// `reportingInstance` of the Events (the pod name).
    instance: String,
    /// Consecutive failures per StreamJob (namespace/name), for the backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// The clock (fixed in tests).
    now: fn() -> Timestamp,
}

impl Context {
    pub fn new(client: Client, metrics: Arc<Metrics>) -> Self {
        Self::with_clock(client, metrics, Timestamp::now)
    }

    /// A context with a given clock (tests pin it to make requests comparable).
    pub fn with_clock(client: Client, metrics: Arc<Metrics>, now: fn() -> Timestamp) -> Self {
        Self {
            client,
            metrics,
            instance: std::env::var("POD_NAME").unwrap_or_else(|_| FIELD_MANAGER.to_string()),
            jobmanager: JobManagerClient::new(BaseUrl::ClusterDns, jm::DEFAULT_TIMEOUT),
            failures: Mutex::new(HashMap::new()),
            now,
        }
    }

    /// Talks to the jobmanagers through `client` (tests: a fixed address and a short timeout).
    pub fn with_jobmanager(mut self, client: JobManagerClient) -> Self {
        self.jobmanager = client;
        self
    }

    fn record_failure(&self, key: &str) -> u32 {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let count = failures.entry(key.to_string()).or_insert(0);
        *count = count.saturating_add(1);
        *count
    }

    fn clear_failures(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// Delay before retrying after `failures` consecutive failures: 5 s, 10 s, 20 s ... 5 min.
pub fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    FIRST_BACKOFF
        .saturating_mul(1u32 << exponent)
        .min(MAX_BACKOFF)
}

fn key(job: &StreamJob) -> String {
    format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any())
}

/// Reconciles one StreamJob (the controller's reconcile function).
#[instrument(skip_all, fields(job = %key(&job)))]
pub async fn reconcile(job: Arc<StreamJob>, ctx: Arc<Context>) -> Result<ControllerAction> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let namespace = job
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let api: Api<StreamJob> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer(&api, FINALIZER, job.clone(), |event| async {
        match event {
            FinalizerEvent::Apply(job) => apply(job, &ctx).await,
            FinalizerEvent::Cleanup(job) => cleanup(job, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.clear_failures(&key(&job));
    }
    result
}

/// What the controller does after a failed reconciliation: count it and retry with backoff.
pub fn error_policy(job: Arc<StreamJob>, error: &Error, ctx: Arc<Context>) -> ControllerAction {
    if let Some(delay) = error.pending() {
        return ControllerAction::requeue(delay);
    }
    let failures = ctx.record_failure(&key(&job));
    ctx.metrics.failed(error.reason());
    let delay = backoff(failures);
    warn!(job = %key(&job), %error, failures, retry_in = ?delay, "reconcile failed");
    ControllerAction::requeue(delay)
}

async fn observe(client: &Client, namespace: &str, name: &str) -> Result<Observed> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let jobmanager = deployments.get_opt(&names::jobmanager(name)).await?;
    let taskmanager = deployments.get_opt(&names::taskmanager(name)).await?;
    let savepoint_pvc = pvcs.get_opt(&names::savepoints(name)).await?;
    // The job's pods (both components), for crash loops.
    let selector = labels::selector_string(&std::collections::BTreeMap::from([
        (labels::NAME.to_string(), labels::APP.to_string()),
        (labels::INSTANCE.to_string(), name.to_string()),
    ]));
    let pods = pods
        .list(&kube::api::ListParams::default().labels(&selector))
        .await?
        .items;
    // The job's API token: what its Secret holds, else a fresh one (applied with the children).
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let api_token = secrets
        .get_opt(&names::api_token(name))
        .await?
        .as_ref()
        .and_then(planner::children::api_token_of)
        .unwrap_or_else(jm::generate_api_token);
    Ok(Observed {
        jobmanager,
        taskmanager,
        savepoint_pvc,
        pods,
        api_token: Some(api_token),
    })
}

async fn apply(job: Arc<StreamJob>, ctx: &Context) -> Result<ControllerAction> {
    let namespace = job
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let name = job.name_any();
    let observed = match observe(&ctx.client, &namespace, &name).await {
        Ok(observed) => observed,
        Err(error) => return fail(&job, ctx, "ObserveFailed", error).await,
    };
    let now = (ctx.now)();
    ctx.jobmanager
        .set_token(&namespace, &name, observed.api_token.clone());
    let queries = lifecycle::queries(&job, &observed);
    let report = jm::observe(&ctx.jobmanager, &namespace, &name, &queries, now).await;
    let input = PlanInput {
        job: &job,
        observed: &observed,
        jobmanager: report.as_ref(),
        now,
    };
    let plan = match planner::plan(input) {
        Ok(plan) => plan,
        Err(error) => {
            let reason = error.reason();
            return fail(&job, ctx, reason, Error::Plan(error)).await;
        }
    };
    // The next step of an operation is recorded before anything acts on it, so an operator that
    // restarts from here on finds it and carries on.
    let stored = job.status.as_ref();
    let mut written = stored.cloned();
    if stored.and_then(|s| s.current_operation.as_ref()) != plan.status.current_operation.as_ref() {
        write_status(&ctx.client, &job, &plan.status).await?;
        written = Some(plan.status.clone());
    }
    let children = &plan.children;
    let applied = async {
        // The ConfigMap first: a new pod reads the config (and restore point) it finds.
        if plan.apply_workloads {
            apply_child(&ctx.client, &namespace, &children.config_map).await?;
        }
        apply_child(&ctx.client, &namespace, &children.savepoint_pvc).await?;
        if let Some(secret) = &children.api_token {
            apply_child(&ctx.client, &namespace, secret).await?;
        }
        apply_child(&ctx.client, &namespace, &children.jobmanager_service).await?;
        if plan.apply_workloads {
            apply_child(&ctx.client, &namespace, &children.jobmanager).await?;
            apply_child(&ctx.client, &namespace, &children.taskmanager).await?;
        }
        Ok::<_, Error>(())
    }
    .await;
    if let Err(error) = applied {
        return fail(&job, ctx, "ApplyFailed", error).await;
    }
    publish(ctx, &job, &plan.actions).await;
    let status = run_actions(
        ctx,
        &job,
        &namespace,
        &name,
        plan.status.clone(),
        &plan.jobmanager_actions,
        &mut written,
    )
    .await?;
    if written.as_ref() != Some(&status) {
        write_status(&ctx.client, &job, &status).await?;
    }
    info!(phase = status.phase.as_str(), requeue = ?plan.requeue_after, "reconciled");
    Ok(ControllerAction::requeue(plan.requeue_after))
}

/// Calls the jobmanager for each action and records each outcome in status at once.
async fn run_actions(
    ctx: &Context,
    job: &StreamJob,
    namespace: &str,
    name: &str,
    mut status: StreamJobStatus,
    actions: &[JobManagerAction],
    written: &mut Option<StreamJobStatus>,
) -> Result<StreamJobStatus> {
    for action in actions {
        let outcome = jm::execute(&ctx.jobmanager, namespace, name, *action).await;
        info!(?action, ?outcome, "jobmanager action");
        let (next, events) = lifecycle::after_action(job, &status, &outcome, (ctx.now)());
        status = next;
        write_status(&ctx.client, job, &status).await?;
        *written = Some(status.clone());
        let events: Vec<Action> = events.into_iter().map(Action::Publish).collect();
        publish(ctx, job, &events).await;
    }
    Ok(status)
}

/// The finalizer's cleanup hook: the final savepoint (when asked for), then release.
async fn cleanup(job: Arc<StreamJob>, ctx: &Context) -> Result<ControllerAction> {
    let namespace = job
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let name = job.name_any();
    let observed = observe(&ctx.client, &namespace, &name).await?;
    let now = (ctx.now)();
    ctx.jobmanager
        .set_token(&namespace, &name, observed.api_token.clone());
    let queries = lifecycle::queries(&job, &observed);
    let report = jm::observe(&ctx.jobmanager, &namespace, &name, &queries, now).await;
    let plan = planner::plan_cleanup(PlanInput {
        job: &job,
        observed: &observed,
        jobmanager: report.as_ref(),
        now,
    })?;
    let mut written = job.status.clone();
    if !plan.done && written.as_ref() != Some(&plan.status) {
        write_status(&ctx.client, &job, &plan.status).await?;
        written = Some(plan.status.clone());
    }
    if let Some(pvc) = &plan.savepoint_pvc {
        apply_child(&ctx.client, &namespace, pvc).await?;
    }
    publish(ctx, &job, &plan.actions).await;
    if plan.done {
        ctx.jobmanager.set_token(&namespace, &name, None);
        return Ok(ControllerAction::await_change());
    }
    run_actions(
        ctx,
        &job,
        &namespace,
        &name,
        plan.status.clone(),
        &plan.jobmanager_actions,
        &mut written,
    )
    .await?;
    // The finalizer helper removes the finalizer on Ok: keep it with a (non-failure) error.
    Err(Error::CleanupPending(
        "final savepoint in progress".into(),
        plan.requeue_after,
    ))
}

/// Records the failure in status (Degraded) and Events, then returns the error for the backoff.
async fn fail(
    job: &StreamJob,
    ctx: &Context,
    reason: &str,
    error: Error,
) -> Result<ControllerAction> {
    let message = error.to_string();
    let (status, actions) = planner::failed_status(job, reason, &message, (ctx.now)());
    publish(ctx, job, &actions).await;
    if job.status.as_ref() != Some(&status) {
        if let Err(status_error) = write_status(&ctx.client, job, &status).await {
            warn!(%status_error, "could not record the failure in status");
        }
    }
    Err(error)
}

async fn apply_child<K>(client: &Client, namespace: &str, child: &K) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Serialize
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let name = child
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingObjectKey("child name"))?;
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(child),
    )
    .await?;
    Ok(())
}

async fn write_status(client: &Client, job: &StreamJob, status: &StreamJobStatus) -> Result<()> {
    let namespace = job
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let api: Api<StreamJob> = Api::namespaced(client.clone(), &namespace);
    let body = json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": "StreamJob",
        "status": status,
    });
    api.patch_status(
        &job.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await?;
    Ok(())
}

/// Publishes the planner's Events (`events.k8s.io/v1`). Events are only emitted on transitions,
/// so there is nothing to aggregate into series: unlike kube's `Recorder`, no per-event cache is
/// kept (it grows with the number of StreamJobs and is scanned on every publish).
async fn publish(ctx: &Context, job: &StreamJob, actions: &[Action]) {
    let Some(namespace) = job.namespace() else {
        return;
    };
    let api: Api<KubeEvent> = Api::namespaced(ctx.client.clone(), &namespace);
    let reference = job.object_ref(&());
    for action in actions {
        let Action::Publish(note) = action;
        let event = KubeEvent {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}-", job.name_any())),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime((ctx.now)())),
            action: Some("Reconcile".into()),
            reason: Some(note.reason.clone()),
            note: Some(truncate(&note.message, 1024)),
            regarding: Some(reference.clone()),
            reporting_controller: Some(FIELD_MANAGER.into()),
            reporting_instance: Some(ctx.instance.clone()),
            type_: Some(
                match note.severity {
                    EventSeverity::Normal => "Normal",
                    EventSeverity::Warning => "Warning",
                }
                .into(),
            ),
            ..KubeEvent::default()
        };
        if let Err(error) = api.create(&PostParams::default(), &event).await {
            warn!(%error, reason = %note.reason, "could not publish event");
        }
    }
}

/// At most `max` bytes, cut at a character boundary (the API refuses Event notes over 1 kB).
fn truncate(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// Which StreamJobs to watch: all namespaces, or the listed ones.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub namespaces: Vec<String>,
    /// Reconciliations running at once (per watched namespace). Bounds memory and API load when
    /// many StreamJobs need work at the same time (e.g. on start-up); 0 = unbounded.
    pub concurrency: u16,
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// Runs one controller per watched namespace (or one for all) until `shutdown` resolves.
pub async fn run(
    client: Client,
    scope: Scope,
    ctx: Arc<Context>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let apis: Vec<Option<String>> = if scope.namespaces.is_empty() {
        vec![None]
    } else {
        scope.namespaces.iter().cloned().map(Some).collect()
    };
    let controllers = apis.into_iter().map(|namespace| {
        let jobs: Api<StreamJob> = scoped(&client, namespace.as_deref());
        let deployments: Api<Deployment> = scoped(&client, namespace.as_deref());
        let config_maps: Api<ConfigMap> = scoped(&client, namespace.as_deref());
        let services: Api<Service> = scoped(&client, namespace.as_deref());
        let pvcs: Api<PersistentVolumeClaim> = scoped(&client, namespace.as_deref());
        let pods: Api<Pod> = scoped(&client, namespace.as_deref());
        let children = watcher::Config::default().labels(&labels::managed_selector());
        let mut shutdown = shutdown.clone();
        Controller::new(jobs, watcher::Config::default())
            .with_config(
                kube::runtime::controller::Config::default().concurrency(scope.concurrency),
            )
            .owns(deployments, children.clone())
            .owns(config_maps, children.clone())
            .owns(services, children.clone())
            // A kept PVC has no owner reference: map it back through its instance label.
            .watches(pvcs, children.clone(), |pvc: PersistentVolumeClaim| {
                let instance = pvc.labels().get(labels::INSTANCE)?.clone();
                Some(ObjectRef::<StreamJob>::new(&instance).within(&pvc.namespace()?))
            })
            // Pods belong to ReplicaSets, not to the StreamJob: map them back by label too, so a
            // crash loop (Degraded CrashLoop) shows as soon as it starts.
            .watches(pods, children, |pod: Pod| {
                let instance = pod.labels().get(labels::INSTANCE)?.clone();
                Some(ObjectRef::<StreamJob>::new(&instance).within(&pod.namespace()?))
            })
            .graceful_shutdown_on(async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            })
            .run(reconcile, error_policy, ctx.clone())
            .for_each(|result| async move {
                if let Err(error) = result {
                    warn!(%error, "controller error");
                }
            })
    });
    futures::future::join_all(controllers).await;
}
