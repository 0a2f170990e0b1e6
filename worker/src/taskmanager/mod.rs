//! The taskmanager: registers with the jobmanager, heartbeats (long poll) with its progress, and
//! drives its [`Pipeline`] to own exactly the partitions the jobmanager wants it to own: it
//! releases (flush, stop) what it should no longer have, reports the release, and claims what is
//! new. On shutdown it releases everything and leaves, so its partitions move at once.
//!
//! While no jobmanager answers it keeps its partitions for `taskmanager.jobmanagerGrace`, then
//! releases them; `/readyz` says whether it holds everything it was assigned (see [`link`]).

pub mod client;
mod link;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::Instrument;

use crate::api::{
    Assignment, HeartbeatRequest, HeartbeatResponse, JobState, LeaveRequest, OwnedPartition,
    RegisterRequest, ReleasedPartition,
};
use crate::config::JobConfig;
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, PipelineError, PipelineOptions};

pub use client::{ClientError, JobManagerClient};
use link::Link;
pub use link::LinkMetrics;

/// Environment variable naming the taskmanager (else `POD_NAME`, else host name and pid).
pub const ENV_TASKMANAGER_ID: &str = "STREAMJOB_TASKMANAGER_ID";
/// Environment variable with what this taskmanager runs (the operator sets the pod template's
/// config hash), reported to the jobmanager and shown per taskmanager in the overview.
pub const ENV_REVISION: &str = "STREAMJOB_REVISION";

#[derive(Debug, Clone)]
pub struct TaskManagerOptions {
    /// Unique among the job's taskmanagers (the pod name in Kubernetes).
    pub id: String,
    /// Where this process serves `/metrics` (shown in the job overview).
    pub address: Option<String>,
    /// What it runs (`STREAMJOB_REVISION`), shown in the job overview.
    pub revision: Option<String>,
}

impl TaskManagerOptions {
    pub fn from_env() -> Self {
        let id = std::env::var(ENV_TASKMANAGER_ID)
            .or_else(|_| std::env::var("POD_NAME"))
            .unwrap_or_else(|_| {
                let host = std::fs::read_to_string("/etc/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_else(|_| "taskmanager".into());
                format!("{host}-{}", std::process::id())
            });
        let revision = std::env::var(ENV_REVISION)
            .ok()
            .filter(|r| !r.trim().is_empty());
        Self {
            id,
            address: None,
            revision,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TaskManagerError {
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Assigning,
    Running,
    Revoking,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    generation: u64,
    phase: Phase,
}

/// What this taskmanager holds and owes the jobmanager.
#[derive(Debug, Default)]
struct Local {
    entries: BTreeMap<i32, Entry>,
    desired: BTreeMap<i32, Assignment>,
    desired_version: u64,
    released: Vec<ReleasedPartition>,
    snapshot_ack: Option<u64>,
    job_state: Option<JobState>,
    link: Link,
}

impl Local {
    /// Assigned partitions not running yet (being claimed, or waiting for their claim).
    fn claiming(&self) -> usize {
        self.desired
            .iter()
            .filter(|(p, a)| {
                !self
                    .entries
                    .get(p)
                    .is_some_and(|e| e.phase == Phase::Running && e.generation == a.generation)
            })
            .count()
    }
}

struct Inner {
    id: String,
    address: Option<String>,
    revision: Option<String>,
    pipeline: Pipeline,
    client: JobManagerClient,
    local: Mutex<Local>,
    /// The reconciler has something to do.
    desired_changed: Notify,
    /// Something to report at once (a release, a claim, a snapshot ack).
    local_changed: Notify,
    heartbeat_interval: Duration,
    /// How long partitions are kept while no jobmanager answers.
    grace: Duration,
    link_metrics: LinkMetrics,
}

impl Inner {
    fn local(&self) -> MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `/readyz`'s answer (see [`link`]).
    fn readiness(&self) -> Result<(), String> {
        let local = self.local();
        let ready = link::readiness(
            &local.link,
            local.job_state,
            link::Holdings {
                held: local.entries.len(),
                claiming: local.claiming(),
            },
            Instant::now(),
            self.grace,
        );
        self.link_metrics.ready.set(i64::from(ready.is_ok()));
        ready
    }

    fn owned(&self) -> Vec<OwnedPartition> {
        self.local()
            .entries
            .iter()
            .map(|(p, e)| OwnedPartition {
                partition: *p,
                generation: e.generation,
            })
            .collect()
    }

    fn progress(&self) -> Vec<crate::api::PartitionProgress> {
        let running: BTreeSet<i32> = self
            .local()
            .entries
            .iter()
            .filter(|(_, e)| e.phase == Phase::Running)
            .map(|(p, _)| *p)
            .collect();
        self.pipeline
            .progress()
            .into_iter()
            .filter(|p| running.contains(&p.partition))
            .collect()
    }
}

/// A running taskmanager.
pub struct TaskManager {
    inner: Arc<Inner>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl TaskManager {
    /// Starts the pipeline and the jobmanager client (registering in the background, retrying
    /// until the jobmanager answers).
    pub async fn start(
        config: Arc<JobConfig>,
        options: TaskManagerOptions,
        metrics: Metrics,
    ) -> Result<Self, TaskManagerError> {
        Self::start_with(config, options, metrics, PipelineOptions::default()).await
    }

    /// [`TaskManager::start`] with the pipeline's tunables (tests shorten its intervals).
    pub async fn start_with(
        config: Arc<JobConfig>,
        options: TaskManagerOptions,
        metrics: Metrics,
        pipeline_options: PipelineOptions,
    ) -> Result<Self, TaskManagerError> {
        let pipeline = Pipeline::start_with(config.clone(), metrics, pipeline_options).await?;
        let inner = Arc::new(Inner {
            id: options.id,
            address: options.address,
            revision: options.revision,
            pipeline,
            client: JobManagerClient::new(&config.jobmanager.url),
            local: Mutex::new(Local::default()),
            desired_changed: Notify::new(),
            local_changed: Notify::new(),
            heartbeat_interval: config.jobmanager.heartbeat_interval,
            grace: config.taskmanager.jobmanager_grace,
            link_metrics: LinkMetrics::default(),
        });
        let span = tracing::info_span!("taskmanager", job = %config.job.name, id = %inner.id);
        let tasks = vec![
            tokio::spawn(heartbeat_loop(inner.clone()).instrument(span.clone())),
            tokio::spawn(reconcile_loop(inner.clone()).instrument(span)),
        ];
        Ok(Self { inner, tasks })
    }

    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The readiness check `/readyz` serves (see [`link`]).
    pub fn readiness_check(&self) -> crate::http::ReadinessCheck {
        let inner = self.inner.clone();
        Arc::new(move || inner.readiness())
    }

    /// The metrics of the link to the jobmanager (the taskmanager process registers them).
    pub fn link_metrics(&self) -> &LinkMetrics {
        &self.inner.link_metrics
    }

    /// Partitions currently held (running, being claimed or being released).
    pub fn partitions(&self) -> Vec<i32> {
        self.inner.local().entries.keys().copied().collect()
    }

    /// Progress of the partitions this taskmanager runs.
    pub fn progress(&self) -> Vec<crate::api::PartitionProgress> {
        self.inner.progress()
    }

    /// Graceful leave: stop talking to the jobmanager, flush and release every partition, tell
    /// the jobmanager (so the partitions move at once), stop the pipeline.
    pub async fn shutdown(self) -> Result<(), TaskManagerError> {
        for task in &self.tasks {
            task.abort();
        }
        // Wait for them to end, so they drop their handles on the pipeline.
        for task in self.tasks {
            let _ = task.await;
        }
        let inner = self.inner;
        // Let claims and releases in flight finish (they run on their own tasks).
        for _ in 0..200 {
            let busy = inner
                .local()
                .entries
                .values()
                .any(|e| e.phase != Phase::Running);
            if !busy {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let held: Vec<(i32, u64)> = inner
            .local()
            .entries
            .iter()
            .map(|(p, e)| (*p, e.generation))
            .collect();
        let revokes = held.iter().map(|(p, g)| {
            let inner = inner.clone();
            async move {
                let committed = match inner.pipeline.revoke(*p).await {
                    Ok(committed) => committed,
                    Err(e) => {
                        tracing::warn!(partition = p, error = %e, "flush on leave failed; the next owner resumes at the fence");
                        None
                    }
                };
                ReleasedPartition {
                    partition: *p,
                    generation: *g,
                    committed_offset: committed,
                }
            }
        });
        let mut released = futures::future::join_all(revokes).await;
        released.append(&mut inner.local().released);
        inner.local().entries.clear();
        let request = LeaveRequest { released };
        match inner.client.leave(&inner.id, &request).await {
            Ok(()) => tracing::info!(released = request.released.len(), "left the job"),
            Err(e) => {
                tracing::warn!(error = %e, "could not tell the jobmanager we leave; it will time us out")
            }
        }
        // Close the consumer and the DLQ producer now, while the broker is surely still there
        // (standalone mode stops its embedded broker next), rather than whenever the runtime
        // drops the last handle: a Kafka client closed after its broker is gone waits for
        // connection time-outs.
        match Arc::try_unwrap(inner) {
            Ok(inner) => inner.pipeline.shutdown().await?,
            Err(_) => tracing::debug!("a claim or release task still holds the pipeline"),
        }
        Ok(())
    }
}

/// Whether this taskmanager can take partitions (Redis and the broker answer); one that holds
/// nothing and cannot does not register, so the jobmanager moves nothing to it. One that holds
/// partitions registers regardless: they keep running under their fences.
async fn preflight(inner: &Inner) -> bool {
    if !inner.local().entries.is_empty() {
        return true;
    }
    let result = inner.pipeline.preflight().await;
    let mut local = inner.local();
    match result {
        Ok(()) => {
            if local.link.blocked.take().is_some() {
                tracing::info!("Redis and the broker answer: registering");
            }
            true
        }
        Err(e) => {
            if local.link.blocked.is_none() {
                tracing::warn!(error = %e, "cannot take partitions (Redis or the broker does not answer): not registering until it can");
            }
            local.link.blocked = Some(e.to_string());
            false
        }
    }
}

async fn register(inner: &Inner) -> Result<(), ClientError> {
    let request = RegisterRequest {
        address: inner.address.clone(),
        owned: inner.owned(),
        progress: inner.progress(),
        revision: inner.revision.clone(),
    };
    let response = inner.client.register(&inner.id, &request).await?;
    tracing::info!(jobmanager = %response.jobmanager_instance, owned = request.owned.len(), "registered with the jobmanager");
    inner.local().desired_version = 0;
    inner.answered(true);
    Ok(())
}

impl Inner {
    /// The jobmanager answered; `registered`: it knows this taskmanager.
    fn answered(&self, registered: bool) {
        let mut local = self.local();
        if let Some(since) = local.link.unreachable_since.take() {
            tracing::info!(after = ?since.elapsed(), "the jobmanager answers again");
        }
        local.link.registered = registered;
        if registered {
            local.link.grace_expired = false;
        }
        self.link_metrics
            .jobmanager_reachable
            .set(i64::from(registered));
        self.link_metrics.jobmanager_unreachable_seconds.set(0.0);
    }

    /// No jobmanager answered. Within the grace, partitions keep running (a jobmanager restart
    /// is a normal wait, not a warning); past it, the assignment is forgotten, so the reconciler
    /// releases every partition (flush, stop), and the taskmanager registers again.
    fn unanswered(&self, error: &ClientError) {
        let now = Instant::now();
        let mut local = self.local();
        let since = *local.link.unreachable_since.get_or_insert_with(|| {
            tracing::info!(error = %error, grace = ?self.grace, "the jobmanager does not answer; partitions keep running for up to the grace");
            now
        });
        let down = now.saturating_duration_since(since);
        self.link_metrics.jobmanager_reachable.set(0);
        self.link_metrics
            .jobmanager_unreachable_seconds
            .set(down.as_secs_f64());
        if down <= self.grace || local.link.grace_expired {
            return;
        }
        local.link.grace_expired = true;
        local.link.registered = false;
        local.link.awaiting = 0;
        local.desired.clear();
        local.job_state = None;
        let held = local.entries.len();
        drop(local);
        if held > 0 {
            self.link_metrics.grace_releases.inc();
            tracing::warn!(error = %error, down = ?down, grace = ?self.grace, held, "no jobmanager answered within the grace: releasing every partition (flush, stop); registering again when one answers");
        }
        self.desired_changed.notify_one();
    }

    /// Retry delay after `failures` failed calls: capped at one heartbeat interval, so a
    /// restarted jobmanager hears from every taskmanager within its start-up grace (two
    /// heartbeat intervals) and adopts what they hold instead of reassigning it.
    fn retry_delay(&self, failures: u32) -> Duration {
        backoff(failures).min(self.heartbeat_interval.max(Duration::from_millis(100)))
    }

    /// The next heartbeat, and the releases it carries (to send again if it is not answered).
    fn heartbeat_request(&self, seq: u64) -> (HeartbeatRequest, Vec<ReleasedPartition>) {
        let owned = self.owned();
        let progress = self.progress();
        let mut local = self.local();
        let released = std::mem::take(&mut local.released);
        let request = HeartbeatRequest {
            seq,
            desired_version: local.desired_version,
            owned,
            progress,
            released: released.clone(),
            snapshot_ack: local.snapshot_ack,
            wait: true,
            watermark_ack_ms: self.pipeline.watermark_ack(),
            load: Some(self.pipeline.load()),
            redis: self.pipeline.redis_topology(),
        };
        (request, released)
    }
}

async fn heartbeat_loop(inner: Arc<Inner>) {
    let mut seq = 0u64;
    let mut failures = 0u32;
    loop {
        if !inner.local().link.registered {
            if !preflight(&inner).await {
                tokio::time::sleep(inner.heartbeat_interval.max(Duration::from_millis(500))).await;
                continue;
            }
            if let Err(e) = register(&inner).await {
                failures += 1;
                inner.unanswered(&e);
                let delay = inner.retry_delay(failures);
                tracing::debug!(error = %e, retry_in = ?delay, "cannot register with the jobmanager");
                tokio::time::sleep(delay).await;
                continue;
            }
            failures = 0;
        }
        seq += 1;
        let (request, sent_released) = inner.heartbeat_request(seq);
        let outcome = tokio::select! {
            r = inner.client.heartbeat(&inner.id, &request, inner.heartbeat_interval) => Some(r),
            () = inner.local_changed.notified() => None,
        };
        match outcome {
            Some(Ok(response)) => {
                failures = 0;
                inner.answered(true);
                apply(&inner, response);
            }
            Some(Err(e)) if e.is_not_found() => {
                tracing::info!("the jobmanager does not know us (it restarted): registering again");
                inner.local().released.extend(sent_released);
                inner.answered(false);
            }
            Some(Err(e)) => {
                inner.local().released.extend(sent_released);
                failures += 1;
                inner.unanswered(&e);
                let delay = inner.retry_delay(failures);
                tracing::debug!(error = %e, retry_in = ?delay, "heartbeat failed; partitions keep running (the Redis fence guards them)");
                tokio::time::sleep(delay).await;
            }
            // Something to report now: the abandoned request may have been processed, so the
            // releases are sent again (the jobmanager ignores repeats).
            None => inner.local().released.extend(sent_released),
        }
        // Keeps `streamjob_taskmanager_ready` current between probes.
        let _ = inner.readiness();
    }
}

fn backoff(failures: u32) -> Duration {
    Duration::from_millis((100u64 << failures.min(6)).min(5000))
}

fn apply(inner: &Inner, response: HeartbeatResponse) {
    // Before any assignment of this answer starts: a partition never decides with less.
    inner
        .pipeline
        .learn_job_watermark(response.job_watermark_ms);
    let mut local = inner.local();
    if let Some(id) = response.snapshot_request {
        local.snapshot_ack = Some(id);
        inner.local_changed.notify_one();
    }
    if local.job_state != Some(response.job_state) {
        tracing::info!(state = ?response.job_state, "job state");
        local.job_state = Some(response.job_state);
    }
    local.link.awaiting = response.awaiting;
    if local.link.held_back != response.held_back {
        if let Some(reason) = &response.held_back {
            tracing::warn!(%reason, "the jobmanager holds this taskmanager back");
        }
        local.link.held_back = response.held_back;
    }
    local.desired_version = response.desired_version;
    local.desired = response
        .assignments
        .into_iter()
        .map(|a| (a.partition, a))
        .collect();
    drop(local);
    inner.desired_changed.notify_one();
}

/// Makes the pipeline hold exactly the desired partitions, one claim or release task per
/// partition; a partition in transition is left alone until its task is done.
async fn reconcile_loop(inner: Arc<Inner>) {
    loop {
        reconcile(&inner);
        tokio::select! {
            () = inner.desired_changed.notified() => {}
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

fn reconcile(inner: &Arc<Inner>) {
    // Partitions whose task ended on its own (fenced by a newer owner, or failed) are dropped and
    // no longer reported: the jobmanager then reassigns them.
    let stopped: BTreeSet<i32> = inner
        .pipeline
        .stopped_partitions()
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    let mut guard = inner.local();
    let local = &mut *guard;
    let mut to_revoke = Vec::new();
    let mut to_assign = Vec::new();
    for (partition, entry) in local.entries.iter_mut() {
        if entry.phase != Phase::Running {
            continue;
        }
        let wanted = local
            .desired
            .get(partition)
            .is_some_and(|a| a.generation == entry.generation);
        let lost = stopped.contains(partition);
        if !wanted || lost {
            entry.phase = Phase::Revoking;
            to_revoke.push((*partition, entry.generation, lost));
        }
    }
    for (partition, assignment) in &local.desired {
        if !local.entries.contains_key(partition) && local.job_state == Some(JobState::Running) {
            to_assign.push(*assignment);
        }
    }
    for a in &to_assign {
        local.entries.insert(
            a.partition,
            Entry {
                generation: a.generation,
                phase: Phase::Assigning,
            },
        );
    }
    drop(guard);
    for (partition, generation, lost) in to_revoke {
        let inner = inner.clone();
        tokio::spawn(async move {
            let committed = match inner.pipeline.revoke(partition).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(partition, error = %e, "release failed; the next owner resumes at the fence");
                    None
                }
            };
            let mut local = inner.local();
            local.entries.remove(&partition);
            if lost {
                tracing::warn!(
                    partition,
                    "partition stopped on its own (fenced or failed): giving it back"
                );
            } else {
                local.released.push(ReleasedPartition {
                    partition,
                    generation,
                    committed_offset: committed,
                });
            }
            drop(local);
            inner.local_changed.notify_one();
            inner.desired_changed.notify_one();
        });
    }
    for assignment in to_assign {
        let inner = inner.clone();
        tokio::spawn(async move {
            let partition = assignment.partition;
            let result = inner.pipeline.assign(assignment).await;
            let mut local = inner.local();
            match result {
                Ok(()) => {
                    if let Some(e) = local.entries.get_mut(&partition) {
                        e.phase = Phase::Running;
                    }
                }
                Err(e) => {
                    tracing::warn!(partition, error = %e, "cannot take the partition; will retry");
                    local.entries.remove(&partition);
                }
            }
            drop(local);
            inner.local_changed.notify_one();
            inner.desired_changed.notify_one();
        });
    }
}

/// Runs a taskmanager (with its `/metrics`, `/healthz` and `/readyz` on `metrics.bind`) until `shutdown`
/// resolves, then leaves gracefully.
pub async fn run(
    config: Arc<JobConfig>,
    mut options: TaskManagerOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let metrics = Metrics::new();
    let health = crate::http::Health::default();
    let readiness = crate::http::Readiness::default();
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let (addr, _server) = crate::http::serve(
        &config.metrics.bind,
        crate::http::with_readiness(
            crate::http::router(metrics.clone(), health),
            readiness.clone(),
        ),
        async move {
            let _ = http_stopped.await;
        },
    )
    .await?;
    options.address.get_or_insert_with(|| addr.to_string());
    let taskmanager = TaskManager::start(config, options, metrics.clone()).await?;
    metrics.register_with(|registry| taskmanager.link_metrics().register(registry));
    readiness.set(taskmanager.readiness_check());
    tracing::info!(id = taskmanager.id(), metrics = %addr, "taskmanager started");
    shutdown.await;
    taskmanager.shutdown().await?;
    let _ = stop_http.send(());
    Ok(())
}
