//! Thin I/O around the planner: read the children from the watch caches, plan, apply with
//! server-side apply (one field manager) only what differs, publish Events on transitions, write
//! status only when it changes. Every failure becomes a Degraded condition and a requeue with
//! backoff, never a silent loop.
//!
//! Load, by design: a reconcile that finds everything as planned makes no API call (the issue #18
//! targets: 0 writes, at most 1 read); progress arrives through watch events of the children;
//! requeues are by need (operation steps, polling a starting jobmanager) and otherwise a long
//! resync spread by job, so routine work never fills the controller's slots and a new or changed
//! StreamJob is picked up at once.

pub mod apply;
pub mod autoscaling;
pub mod cache;
pub mod jobmanagers;
pub mod own_writes;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::events::v1::Event as KubeEvent;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::{self, Action as ControllerAction, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, instrument, warn};

use crate::crd::{StreamJob, StreamJobStatus, GROUP, VERSION};
use crate::jobmanager_client::{self as jm, BaseUrl, JobAddress, JobManagerClient};
use crate::metrics::Metrics;
use crate::planner::lifecycle::{self, JobManagerAction};
use crate::planner::{
    self, labels, names, Action, EventSeverity, NetworkPeers, PlanInput, FINALIZER,
};
use crate::{Error, Result};
use cache::compaction::SharedWriter;
use cache::Caches;

/// The one field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "streamjob-operator";

/// The parameters of every server-side apply the operator makes: its field manager, forced, and
/// `fieldValidation=Ignore`. The API server parses an apply body as YAML (JSON included); under
/// its default, `Warn`, it parses the body a second time, strictly, only to warn about unknown or
/// duplicate fields. Our bodies are serialized from typed objects, so there is nothing to warn
/// about (and kube does not surface warnings): a profile of 1,000 new jobs put that second parse
/// at 4.3 % of the API server's CPU (BENCHMARKS, session 18). The schema still prunes and
/// validates every field as before.
pub fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER)
        .force()
        .validation_ignore()
}

/// Longest wait between retries of a failing StreamJob.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// First retry delay.
const FIRST_BACKOFF: Duration = Duration::from_secs(5);
/// When a reconcile finds its StreamJob older than the operator's own last write of it: look
/// again after this, if the write's watch event has not brought it back first.
const STALE_RETRY: Duration = Duration::from_secs(2);

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
    /// The watch caches of each watched scope (`None`: all namespaces).
    caches: RwLock<Vec<(Option<String>, Caches)>>,
    /// Who may connect to the jobs' pods besides their own namespace (NetworkPolicies).
    network: NetworkPeers,
    /// Jobmanagers in their back-off after not answering.
    unreachable: jobmanagers::Unreachable,
    /// API tokens drawn for jobs whose Secret the cache does not show yet.
    tokens: jobmanagers::DrawnTokens,
    /// StreamJob writes the cache has not shown yet (a reconcile of an older copy waits).
    own_writes: own_writes::OwnWrites,
    /// The autoscaler's samples of each job with the autoscaler on.
    pub autoscaler: autoscaling::Histories,
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
            jobmanager: JobManagerClient::new(BaseUrl::PodIp, jm::DEFAULT_TIMEOUT),
            failures: Mutex::new(HashMap::new()),
            now,
            caches: RwLock::new(Vec::new()),
            network: NetworkPeers::default(),
            unreachable: jobmanagers::Unreachable::default(),
            tokens: jobmanagers::DrawnTokens::default(),
            own_writes: own_writes::OwnWrites::default(),
            autoscaler: autoscaling::Histories::default(),
        }
    }

    /// The operator's namespace and the metrics namespaces, for the jobs' NetworkPolicies.
    pub fn with_network_peers(mut self, peers: NetworkPeers) -> Self {
        self.network = peers;
        self
    }

    /// Talks to the jobmanagers through `client` (tests: a fixed address and a short timeout).
    pub fn with_jobmanager(mut self, client: JobManagerClient) -> Self {
        self.jobmanager = client;
        self
    }

    /// Registers the watch caches of a scope (`None`: all namespaces).
    pub fn add_caches(&self, scope: Option<String>, caches: Caches) {
        self.caches
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push((scope, caches));
    }

    /// The watch caches that cover `namespace`.
    pub fn caches_for(&self, namespace: &str) -> Option<Caches> {
        self.caches
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(scope, _)| scope.as_deref().is_none_or(|s| s == namespace))
            .map(|(_, caches)| caches.clone())
    }

    /// What the jobmanager answers to `queries` (see [`jobmanagers::Unreachable::observe`]).
    async fn observe_jobmanager(
        &self,
        job: &JobAddress,
        queries: &lifecycle::Queries,
        now: Timestamp,
    ) -> Option<planner::JobManagerReport> {
        let (report, outcome) = self
            .unreachable
            .observe(&self.jobmanager, job, queries, now)
            .await;
        if let Some(outcome) = outcome {
            self.metrics.jobmanager_call(outcome);
        }
        report
    }

    /// Forgets what is kept about a released job.
    fn forget(&self, namespace: &str, name: &str) {
        self.unreachable.forget(&JobAddress::new(namespace, name));
        self.tokens.seen(namespace, name);
        self.own_writes.forget(&format!("{namespace}/{name}"));
        self.autoscaler.forget(namespace, name);
        self.clear_failures(&format!("{namespace}/{name}"));
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

/// Reconciles one StreamJob (the controller's reconcile function). Reads come from the watch
/// caches; a reconcile that finds everything as planned makes no API call at all.
#[instrument(skip_all, fields(job = %key(&job)))]
pub async fn reconcile(job: Arc<StreamJob>, ctx: Arc<Context>) -> Result<ControllerAction> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let namespace = job
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let caches = ctx
        .caches_for(&namespace)
        .ok_or_else(|| Error::NotWatched(namespace.clone()))?;
    caches.wait_until_ready().await;
    if ctx
        .own_writes
        .is_stale(&key(&job), job.resource_version().as_deref())
    {
        // Our last write's watch event brings the job back; the requeue covers a lost one.
        debug!("the cache does not show our last write yet");
        return Ok(ControllerAction::requeue(STALE_RETRY));
    }
    let has_finalizer = job.finalizers().iter().any(|f| f == FINALIZER);
    let result = if job.metadata.deletion_timestamp.is_some() {
        if has_finalizer {
            delete(&job, &ctx, &caches).await
        } else {
            Ok(ControllerAction::await_change())
        }
    } else if !has_finalizer {
        // The finalizer first, so a deletion always gets its say; the update brings us back.
        add_finalizer(&ctx, &job)
            .await
            .map(|()| ControllerAction::await_change())
    } else {
        apply(&job, &ctx, &caches).await
    };
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
    let failures = ctx.record_failure(&key(&job));
    ctx.metrics.failed(error.reason());
    ctx.metrics.job_failed(
        &job.namespace().unwrap_or_default(),
        &job.name_any(),
        error.reason(),
    );
    let delay = backoff(failures);
    warn!(job = %key(&job), %error, failures, retry_in = ?delay, "reconcile failed");
    ControllerAction::requeue(delay)
}

/// The finalizer's patches carry the operator's field manager, so `managedFields` says who owns
/// the finalizer (without one the API server records it as "unknown").
fn finalizer_patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

async fn add_finalizer(ctx: &Context, job: &StreamJob) -> Result<()> {
    let api: Api<StreamJob> = Api::namespaced(ctx.client.clone(), &namespace_of(job)?);
    let patch = if job.finalizers().is_empty() {
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
        ])
    } else {
        json!([{"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER}])
    };
    let patch: json_patch::Patch =
        serde_json::from_value(patch).map_err(kube::Error::SerdeError)?;
    let patched = api
        .patch(
            &job.name_any(),
            &finalizer_patch_params(),
            &Patch::<()>::Json(patch),
        )
        .await?;
    ctx.own_writes
        .wrote(&key(job), patched.resource_version().as_deref());
    Ok(())
}

/// Removes the finalizer; an object that is already gone is released, not a failure.
async fn remove_finalizer(client: &Client, job: &StreamJob) -> Result<()> {
    let api: Api<StreamJob> = Api::namespaced(client.clone(), &namespace_of(job)?);
    let Some(index) = job.finalizers().iter().position(|f| f == FINALIZER) else {
        return Ok(());
    };
    let path = format!("/metadata/finalizers/{index}");
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": path, "value": FINALIZER},
        {"op": "remove", "path": path},
    ]))
    .map_err(kube::Error::SerdeError)?;
    match api
        .patch(
            &job.name_any(),
            &finalizer_patch_params(),
            &Patch::<()>::Json(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => {
            debug!("already gone when releasing the finalizer");
            Ok(())
        }
        Err(error) => Err(error.into()),
    }
}

fn namespace_of(job: &StreamJob) -> Result<String> {
    job.namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))
}

async fn apply(job: &StreamJob, ctx: &Context, caches: &Caches) -> Result<ControllerAction> {
    let namespace = namespace_of(job)?;
    let name = job.name_any();
    let mut observed = caches.observe(&namespace, &name);
    if observed.api_token.is_none() {
        observed.api_token = Some(ctx.tokens.token_for(&namespace, &name));
    } else {
        ctx.tokens.seen(&namespace, &name);
    }
    let now = (ctx.now)();
    let address = job_address(&namespace, &name, &observed);
    let queries = lifecycle::queries(job, &observed);
    let report = ctx.observe_jobmanager(&address, &queries, now).await;
    let autoscaled = autoscale(ctx, job, &address, report.as_ref(), now).await;
    let input = PlanInput {
        job: autoscaled.as_ref().map_or(job, |(_, decided)| decided),
        observed: &observed,
        jobmanager: report.as_ref(),
        now,
    };
    let plan = match planner::plan_with(input, &ctx.network) {
        Ok(plan) => plan,
        Err(error) => {
            let reason = error.reason();
            return fail(job, ctx, reason, Error::Plan(error)).await;
        }
    };
    // The next step of an operation is recorded before anything acts on it, so an operator that
    // restarts from here on finds it and carries on.
    let stored = job.status.as_ref();
    let mut written = stored.cloned();
    if stored.and_then(|s| s.current_operation.as_ref()) != plan.status.current_operation.as_ref() {
        write_status(ctx, job, &plan.status).await?;
        written = Some(plan.status.clone());
    }
    let applied = match apply::desired(&plan) {
        Ok(children) => apply::apply_changed(&ctx.client, caches, &namespace, &children).await,
        Err(error) => Err(error),
    };
    let applied = match applied {
        Ok(n) => remove_network_policies(&ctx.client, caches, job, &namespace)
            .await
            .map(|removed| n + removed),
        Err(error) => Err(error),
    };
    let applied = match applied {
        Ok(applied) => applied,
        Err(error) => return fail(job, ctx, "ApplyFailed", error).await,
    };
    publish(ctx, job, &plan.actions).await;
    let mut status = run_actions(
        ctx,
        job,
        &address,
        plan.status.clone(),
        &plan.jobmanager_actions,
        &mut written,
    )
    .await?;
    if autoscaled.is_some() {
        planner::autoscaler::job::throttle_progress(written.as_ref(), &mut status, now);
    }
    let desired = planner::autoscaler::job::replicas(
        input.job,
        autoscaling::partitions(job, report.as_ref()),
    );
    ctx.metrics.record_job(&namespace, &name, desired, &status);
    let status_changed = written.as_ref() != Some(&status);
    if status_changed {
        write_status(ctx, job, &status).await?;
    }
    publish_decision(ctx, job, autoscaled.and_then(|(e, _)| e.event)).await;
    let requeue = resync(autoscaler_requeue(plan.requeue_after, job), job);
    if applied > 0 || status_changed || !plan.actions.is_empty() {
        info!(phase = status.phase.as_str(), applied, status_changed, requeue = ?requeue, "reconciled");
    } else {
        debug!(phase = status.phase.as_str(), requeue = ?requeue, "unchanged");
    }
    Ok(ControllerAction::requeue(requeue))
}

/// Samples the jobmanager for the autoscaler when due, then lets the planner decide: the
/// evaluation, and the job to plan with (its `status.autoscaler` the next one).
async fn autoscale(
    ctx: &Context,
    job: &StreamJob,
    address: &JobAddress,
    report: Option<&planner::JobManagerReport>,
    now: Timestamp,
) -> Option<(planner::autoscaler::job::Evaluation, StreamJob)> {
    let (namespace, name) = (address.namespace.as_str(), address.name.as_str());
    autoscaling::sample(
        &ctx.autoscaler,
        &ctx.jobmanager,
        &ctx.metrics,
        job,
        address,
        report,
        now,
    )
    .await;
    let decided = autoscaling::decide(&ctx.autoscaler, job, report, now);
    let newest = ctx.autoscaler.newest(namespace, name);
    let desired = decided.as_ref().and_then(|(e, _)| e.status.desired);
    ctx.metrics
        .record_autoscaler(namespace, name, newest.as_ref(), desired);
    decided
}

/// The autoscaler's Event, published (and counted) once its status is written.
async fn publish_decision(ctx: &Context, job: &StreamJob, event: Option<planner::EventNote>) {
    if let Some(note) = event {
        ctx.metrics.autoscaler_decided(&note.reason);
        info!(reason = %note.reason, message = %note.message, "autoscaler decided");
        publish(ctx, job, &[Action::Publish(note)]).await;
    }
}

/// A job the autoscaler decides for comes back at its sampling interval; others keep their
/// requeue (no polling for jobs without it).
fn autoscaler_requeue(requeue: Duration, job: &StreamJob) -> Duration {
    match planner::autoscaler::job::deciding(job) {
        Some(settings) => requeue.min(planner::autoscaler::history::sample_interval(&settings)),
        None => requeue,
    }
}

/// The job's jobmanager as the caches show it: its ready pod's IP and the API token.
fn job_address(namespace: &str, name: &str, observed: &planner::Observed) -> JobAddress {
    JobAddress {
        namespace: namespace.into(),
        name: name.into(),
        pod_ip: lifecycle::jobmanager_pod_ip(observed).map(str::to_string),
        token: observed.api_token.clone(),
    }
}

/// A job whose spec opts out of NetworkPolicies: delete the ones the cache still shows (none
/// there, no call). Returns how many were deleted.
async fn remove_network_policies(
    client: &Client,
    caches: &Caches,
    job: &StreamJob,
    namespace: &str,
) -> Result<usize> {
    if job.spec.network_policy.enabled {
        return Ok(0);
    }
    let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), namespace);
    let name = job.name_any();
    let mut removed = 0;
    for policy in [names::jobmanager(&name), names::taskmanager(&name)] {
        if caches.watches("NetworkPolicy")
            && caches.child("NetworkPolicy", namespace, &policy).is_none()
        {
            continue;
        }
        match api.delete(&policy, &Default::default()).await {
            Ok(_) => removed += 1,
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(removed)
}

/// Requeue delays of a minute or more are spread over +0..20 % by the job's uid, so jobs created
/// together do not come back together.
pub fn resync(delay: Duration, job: &StreamJob) -> Duration {
    if delay < Duration::from_secs(60) {
        return delay;
    }
    let uid = job.uid().unwrap_or_else(|| key(job));
    let hash = uid.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    delay + delay.mul_f64((hash % 1000) as f64 / 5000.0)
}

/// Calls the jobmanager for each action and records each outcome in status at once.
async fn run_actions(
    ctx: &Context,
    job: &StreamJob,
    address: &JobAddress,
    mut status: StreamJobStatus,
    actions: &[JobManagerAction],
    written: &mut Option<StreamJobStatus>,
) -> Result<StreamJobStatus> {
    for action in actions {
        let outcome = jm::execute(&ctx.jobmanager, address, action).await;
        info!(?action, ?outcome, "jobmanager action");
        let (next, events) = lifecycle::after_action(job, &status, &outcome, (ctx.now)());
        status = next;
        write_status(ctx, job, &status).await?;
        *written = Some(status.clone());
        let events: Vec<Action> = events.into_iter().map(Action::Publish).collect();
        publish(ctx, job, &events).await;
    }
    Ok(status)
}

/// Deletion: the final savepoint (when asked for and the job ever ran), then the finalizer goes.
/// Waiting for the savepoint is a normal requeue, not an error.
async fn delete(job: &StreamJob, ctx: &Context, caches: &Caches) -> Result<ControllerAction> {
    let namespace = namespace_of(job)?;
    let name = job.name_any();
    let observed = caches.observe(&namespace, &name);
    let now = (ctx.now)();
    let address = job_address(&namespace, &name, &observed);
    let queries = lifecycle::queries(job, &observed);
    let report = ctx.observe_jobmanager(&address, &queries, now).await;
    let plan = planner::plan_cleanup(PlanInput {
        job,
        observed: &observed,
        jobmanager: report.as_ref(),
        now,
    })?;
    let mut written = job.status.clone();
    if !plan.done && written.as_ref() != Some(&plan.status) {
        write_status(ctx, job, &plan.status).await?;
        written = Some(plan.status.clone());
    }
    if let Some(pvc) = &plan.savepoint_pvc {
        apply::apply(&ctx.client, &namespace, &apply::DesiredChild::of(pvc)?).await?;
    }
    publish(ctx, job, &plan.actions).await;
    if plan.done {
        ctx.forget(&namespace, &name);
        remove_finalizer(&ctx.client, job).await?;
        ctx.metrics.forget_job(&namespace, &name);
        info!("released");
        return Ok(ControllerAction::await_change());
    }
    run_actions(
        ctx,
        job,
        &address,
        plan.status.clone(),
        &plan.jobmanager_actions,
        &mut written,
    )
    .await?;
    debug!(retry_in = ?plan.requeue_after, "deletion waits for the final savepoint");
    Ok(ControllerAction::requeue(plan.requeue_after))
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
        if let Err(status_error) = write_status(ctx, job, &status).await {
            warn!(%status_error, "could not record the failure in status");
        }
    }
    Err(error)
}

async fn write_status(ctx: &Context, job: &StreamJob, status: &StreamJobStatus) -> Result<()> {
    let namespace = job
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let api: Api<StreamJob> = Api::namespaced(ctx.client.clone(), &namespace);
    let body = json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": "StreamJob",
        "status": status,
    });
    let written = api
        .patch_status(&job.name_any(), &apply_params(), &Patch::Apply(body))
        .await?;
    ctx.own_writes
        .wrote(&key(job), written.resource_version().as_deref());
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

/// Requests for one StreamJob that arrive within this window are merged into one reconcile (the
/// operator's own applies of a job's children come back as a burst of watch events).
pub const DEBOUNCE: Duration = Duration::from_millis(250);

/// How the controller runs: bounded concurrency and a short debounce.
pub fn controller_config(scope: &Scope) -> controller::Config {
    controller::Config::default()
        .concurrency(scope.concurrency)
        .debounce(DEBOUNCE)
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

/// The StreamJob an object belongs to, by its instance label: children (the kept PVC has no
/// owner reference) and pods (which belong to ReplicaSets) alike.
fn owning_job<K: Resource>(object: &K) -> Option<ObjectRef<StreamJob>> {
    let meta = object.meta();
    let instance = meta.labels.as_ref()?.get(labels::INSTANCE)?;
    Some(ObjectRef::new(instance).within(meta.namespace.as_deref()?))
}

/// How logs name a controller's scope.
fn scope_name(namespace: Option<&str>) -> String {
    namespace.map_or_else(|| "all namespaces".to_string(), str::to_string)
}

/// Runs one controller per watched namespace (or one for all) until `shutdown` resolves. Each
/// one's triggers are the watches of the StreamJobs and of their children and pods; the latter
/// fill the caches the reconciler reads ([`Context::caches_for`]).
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
        let (caches, streams) = cache::watch(&client, namespace.as_deref());
        ctx.add_caches(namespace.clone(), caches);
        // The StreamJobs' own cache, trimmed like the children's (`cache::trim_job`), and
        // rebuilt with them after mass deletes.
        let writer = SharedWriter::new(reflector::store::Writer::default());
        let reader = writer.reader();
        streams.compactor.register(Arc::new(writer.clone()));
        let trigger = watcher(jobs, watcher::Config::default())
            .default_backoff()
            .modify(cache::trim_job)
            .map_ok(move |event| {
                writer.apply(&event);
                event
            })
            .applied_objects();
        let mut controller =
            Controller::for_stream(trigger, reader).with_config(controller_config(&scope));
        for (resource, stream) in streams.children {
            controller = controller.watches_stream_with(
                stream,
                |child: kube::api::DynamicObject| owning_job(&child),
                resource,
            );
        }
        let mut shutdown = shutdown.clone();
        let controller = controller
            .watches_stream(streams.pods, |pod: k8s_openapi::api::core::v1::Pod| {
                owning_job(&pod)
            })
            .graceful_shutdown_on(async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            })
            .run(reconcile, error_policy, ctx.clone())
            .for_each(|outcome| async move { log_outcome(outcome) });
        let compactor = streams
            .compactor
            .run(scope_name(namespace.as_deref()), ctx.metrics.clone());
        // The compactor runs as long as its controller, and stops with it.
        async move {
            tokio::select! {
                () = controller => {}
                () = compactor => {}
            }
        }
    });
    futures::future::join_all(controllers).await;
}

type Outcome = std::result::Result<
    (ObjectRef<StreamJob>, ControllerAction),
    controller::Error<Error, watcher::Error>,
>;

/// Logs what deserves it: failed reconciles are logged by [`error_policy`] (with their backoff),
/// and a request for a StreamJob that is gone by the time it runs is normal after a deletion.
fn log_outcome(outcome: Outcome) {
    match outcome {
        Ok(_) | Err(controller::Error::ReconcilerFailed(..)) => {}
        Err(controller::Error::ObjectNotFound(object)) => {
            debug!(%object, "gone before its reconcile ran");
        }
        Err(error) => warn!(%error, "controller error"),
    }
}
