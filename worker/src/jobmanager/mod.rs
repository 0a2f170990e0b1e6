//! The jobmanager: membership and partition assignment, checkpoints and savepoints, restore, and
//! the REST API on :8081.
//!
//! The decisions live in pure modules ([`planner`], [`coordinator`], [`restore`]); this module
//! wires them to a clock, the state directory and the HTTP server.

pub mod auth;
pub mod coordinator;
pub mod dashboard;
pub mod metrics;
mod operations;
pub mod planner;
pub mod rest;
pub mod restore;
mod series;
pub mod store;
pub mod topic;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::api::{JobState, SnapshotKind};
use crate::config::JobConfig;
use crate::sink::redis::Layout;

use coordinator::{Coordinator, CoordinatorConfig};
use metrics::JobManagerMetrics;
use operations::Operations;
use restore::{RestoreError, RestorePlan};
use store::{SnapshotStore, StoreError};
pub use topic::{FixedPartitions, KafkaPartitions, KnownPartitions, PartitionDiscovery};

/// How the jobmanager restores (from the command line, else `savepoint.*` in the config).
#[derive(Debug, Clone, Default)]
pub struct JobManagerOptions {
    pub from_savepoint: Option<PathBuf>,
    pub allow_non_restored_state: bool,
    /// How long to wait for running taskmanagers to re-register before assigning; default two
    /// heartbeat intervals. Standalone mode uses zero (its taskmanagers start with it).
    pub startup_grace: Option<Duration>,
    /// Assign nothing before every partition's Redis fence epoch is read, and start the
    /// assignment generations above them (see [`Coordinator::seed_fence_epochs`]). On in every
    /// worker process (`from_config`); off by default for protocol tests without a Redis.
    pub fence_epochs: bool,
}

impl JobManagerOptions {
    pub fn from_config(config: &JobConfig) -> Self {
        Self {
            from_savepoint: config.savepoint.restore_from.clone(),
            allow_non_restored_state: config.savepoint.allow_non_restored_state,
            startup_grace: None,
            fence_epochs: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JobManagerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error("cannot serve the REST API on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the REST server stopped: {0}")]
    Serve(#[source] std::io::Error),
    #[error("sink settings: {0}")]
    Sink(#[from] crate::sink::redis::SinkError),
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// State shared by the REST handlers and the background tasks.
pub(crate) struct Shared {
    pub(crate) config: Arc<JobConfig>,
    pub(crate) instance: String,
    coordinator: Mutex<Coordinator>,
    pub(crate) changed: watch::Sender<u64>,
    pub(crate) checkpoints: SnapshotStore,
    pub(crate) savepoints: SnapshotStore,
    pub(crate) operations: Mutex<Operations>,
    pub(crate) restore: RestorePlan,
    pub(crate) metrics: JobManagerMetrics,
    /// Redis, for the event-time series: finality records and the series read side.
    pub(crate) series: series::SeriesRedis,
    /// Wall-clock start, for the dashboard's uptime.
    pub(crate) started_at_ms: u64,
    /// Throughput samples, dead letters and problems for the dashboard.
    pub(crate) activity: Mutex<dashboard::activity::Activity>,
    /// Reads of the job's Redis for `/trace/*`.
    pub(crate) trace: dashboard::trace::TraceReader,
}

impl Shared {
    /// Runs `f` on the coordinator and wakes long polls if it changed anything.
    pub(crate) fn with_coordinator<R>(&self, f: impl FnOnce(&mut Coordinator) -> R) -> R {
        let mut coordinator = self.lock_coordinator();
        let result = f(&mut coordinator);
        let version = coordinator.version();
        drop(coordinator);
        self.changed.send_if_modified(|seen| {
            let changed = *seen != version;
            *seen = version;
            changed
        });
        result
    }

    pub(crate) fn lock_coordinator(&self) -> MutexGuard<'_, Coordinator> {
        self.coordinator
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn lock_operations(&self) -> MutexGuard<'_, Operations> {
        self.operations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running jobmanager (REST server plus background tasks).
pub struct JobManager {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
    fatal: watch::Receiver<Option<String>>,
}

impl JobManager {
    /// Restores, binds nothing itself: serves on `listener`. Fails fast when the requested
    /// savepoint cannot be read or the state directory is unusable.
    pub async fn start(
        config: Arc<JobConfig>,
        options: JobManagerOptions,
        discovery: Arc<dyn PartitionDiscovery>,
        listener: TcpListener,
    ) -> Result<Self, JobManagerError> {
        let checkpoints = SnapshotStore::open(
            config.checkpoint.dir.join("checkpoints"),
            SnapshotKind::Checkpoint,
        )?;
        let savepoints = SnapshotStore::open(config.savepoint_dir(), SnapshotKind::Savepoint)?;
        let restore = restore::choose(options.from_savepoint.as_deref(), &checkpoints)?;
        tracing::info!(job = %config.job.name, source = ?restore.source, "restore source chosen");
        let now = Instant::now();
        let mut coordinator_config = CoordinatorConfig::from_job(&config.jobmanager);
        if let Some(grace) = options.startup_grace {
            coordinator_config.startup_grace = grace;
        }
        let mut coordinator = Coordinator::new(coordinator_config, now, Default::default(), 0);
        if options.fence_epochs {
            coordinator.await_fence_epochs();
        }
        if let Some(snapshot) = &restore.snapshot {
            coordinator.seed(&Default::default(), snapshot.generation);
        }
        let instance = format!("{:x}{:x}", now_ms(), std::process::id());
        let (changed, _) = watch::channel(0);
        let layout = Layout::from_config(
            &config.sink.redis,
            &config.job.name,
            &config.source.kafka.topic,
        )?;
        let shared = Arc::new(Shared {
            started_at_ms: now_ms(),
            activity: Mutex::default(),
            trace: dashboard::trace::TraceReader::new(config.sink.redis.clone(), layout),
            metrics: JobManagerMetrics::new(&config.job.name),
            config: config.clone(),
            instance,
            coordinator: Mutex::new(coordinator),
            changed,
            checkpoints,
            savepoints,
            operations: Mutex::new(Operations::default()),
            restore,
            series: series::SeriesRedis::new(&config),
        });
        // Until its first checkpoint the jobmanager counts a checkpoint's age from its start,
        // so "no checkpoint for 3 intervals" also fires for one that never checkpoints.
        shared
            .metrics
            .last_checkpoint_timestamp_seconds
            .set(now_ms() as f64 / 1e3);
        shared
            .metrics
            .checkpoint_interval_seconds
            .set(config.checkpoint.interval.as_secs_f64());
        let local_addr = listener.local_addr().map_err(JobManagerError::Serve)?;
        let (fatal_tx, fatal) = watch::channel(None);
        let fatal_tx = Arc::new(fatal_tx);
        let mut tasks = Vec::new();
        let app = rest::router(shared.clone(), dashboard::router());
        let serve_fatal = fatal_tx.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                serve_fatal.send_replace(Some(format!("REST server stopped: {e}")));
            }
        }));
        tasks.push(tokio::spawn(discover_partitions(
            shared.clone(),
            discovery,
            options.clone(),
            fatal_tx.clone(),
        )));
        tasks.push(tokio::spawn(tick(shared.clone())));
        if config.window.enabled {
            tasks.push(tokio::spawn(series::publish_final_watermark(
                shared.clone(),
            )));
        }
        tasks.push(tokio::spawn(dashboard::sample(shared.clone())));
        tasks.push(tokio::spawn(periodic(
            shared.clone(),
            SnapshotKind::Checkpoint,
        )));
        tasks.push(tokio::spawn(periodic(
            shared.clone(),
            SnapshotKind::Savepoint,
        )));
        tracing::info!(job = %config.job.name, %local_addr, "jobmanager listening");
        Ok(Self {
            shared,
            local_addr,
            tasks,
            fatal,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn state(&self) -> JobState {
        self.shared.lock_coordinator().state()
    }

    /// Resolves when the jobmanager cannot go on (e.g. the restored state does not fit the topic).
    pub async fn failed(&mut self) -> String {
        loop {
            if let Some(reason) = self.fatal.borrow_and_update().clone() {
                return reason;
            }
            if self.fatal.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Stops serving and every background task.
    pub fn shutdown(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}

/// Runs a jobmanager on `jobmanager.bind` until `shutdown` resolves or it fails.
pub async fn run(
    config: Arc<JobConfig>,
    options: JobManagerOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), JobManagerError> {
    let addr = config.jobmanager.bind.clone();
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|source| JobManagerError::Bind { addr, source })?;
    let discovery = Arc::new(KafkaPartitions::new(&config.source.kafka));
    let mut jobmanager = JobManager::start(config, options, discovery, listener).await?;
    let result = tokio::select! {
        reason = jobmanager.failed() => Err(reason),
        () = shutdown => Ok(()),
    };
    jobmanager.shutdown();
    result.map_err(|reason| JobManagerError::Serve(std::io::Error::other(reason)))
}

/// Learns the partition count, then checks and seeds the restored offsets (once), then keeps
/// the count fresh (partitions can be added to a topic).
async fn discover_partitions(
    shared: Arc<Shared>,
    discovery: Arc<dyn PartitionDiscovery>,
    options: JobManagerOptions,
    fatal: Arc<watch::Sender<Option<String>>>,
) {
    let mut seeded = false;
    let mut backoff = Duration::from_millis(200);
    loop {
        match discovery.partition_count().await {
            Ok(count) => {
                backoff = Duration::from_millis(200);
                if !seeded {
                    let topic = &shared.config.source.kafka.topic;
                    match restore::restored_offsets(
                        &shared.restore,
                        topic,
                        count,
                        options.allow_non_restored_state,
                    ) {
                        Ok(offsets) => {
                            let generation =
                                shared.restore.snapshot.as_ref().map_or(0, |s| s.generation);
                            let watermark = shared
                                .restore
                                .snapshot
                                .as_ref()
                                .and_then(|s| s.watermark_ms);
                            shared.with_coordinator(|c| {
                                c.seed(&offsets, generation);
                                c.seed_watermark(watermark, None);
                            });
                            tracing::info!(
                                partitions = count,
                                restored = offsets.len(),
                                "partition count known; restored offsets seeded"
                            );
                            seeded = true;
                            if options.fence_epochs {
                                tokio::spawn(seed_fence_epochs(shared.clone(), count));
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "cannot restore");
                            fatal.send_replace(Some(e.to_string()));
                            return;
                        }
                    }
                }
                shared.with_coordinator(|c| c.set_partition_count(count, Instant::now()));
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            Err(e) => {
                shared.metrics.partition_discovery_errors.inc();
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot read the topic's partition count");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Reads every partition's fence epoch (retrying until Redis answers) and starts the
/// assignment generations above the largest: until then the job stays `INITIALIZING` and
/// assigns nothing (it still adopts what re-registering taskmanagers hold).
async fn seed_fence_epochs(shared: Arc<Shared>, count: u32) {
    let span = tracing::info_span!("fence_epochs", job = %shared.config.job.name);
    let mut backoff = Duration::from_millis(100);
    loop {
        match max_fence_epoch(&shared, count)
            .instrument(span.clone())
            .await
        {
            Ok(max_epoch) => {
                shared.with_coordinator(|c| c.seed_fence_epochs(max_epoch));
                let generation = shared.lock_coordinator().generation();
                tracing::info!(parent: &span, max_epoch, generation, "fence epochs read: assignment generations start above them");
                return;
            }
            Err(e) => {
                tracing::warn!(parent: &span, error = %e, retry_in = ?backoff, "cannot read the partitions' fences yet; assigning nothing until then");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

async fn max_fence_epoch(
    shared: &Shared,
    count: u32,
) -> Result<u64, crate::sink::redis::SinkError> {
    let sink = shared.series.sink().await?;
    let mut max_epoch = 0;
    for partition in 0..count as i32 {
        if let Some(fence) = sink.read_fence(partition).await? {
            max_epoch = max_epoch.max(fence.epoch);
        }
    }
    Ok(max_epoch)
}

/// Drives time-outs and completes snapshots.
async fn tick(shared: Arc<Shared>) {
    let mut interval = tokio::time::interval(Duration::from_millis(50));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let outcomes = shared.with_coordinator(|c| c.tick(Instant::now()));
        for outcome in outcomes {
            operations::complete_snapshot(&shared, outcome).await;
        }
    }
}

/// Periodic checkpoints (`checkpoint.interval`) or savepoints (`savepoint.interval`).
async fn periodic(shared: Arc<Shared>, kind: SnapshotKind) {
    let every = match kind {
        SnapshotKind::Checkpoint => shared.config.checkpoint.interval,
        SnapshotKind::Savepoint => shared.config.savepoint.interval,
    };
    if every.is_zero() {
        return;
    }
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let (state, known, pending) = {
            let c = shared.lock_coordinator();
            (
                c.state(),
                c.partition_count().is_some(),
                c.snapshot_pending(),
            )
        };
        if state != JobState::Running || !known || (kind == SnapshotKind::Checkpoint && pending) {
            continue;
        }
        let op = match kind {
            SnapshotKind::Checkpoint => operations::trigger_checkpoint(&shared),
            SnapshotKind::Savepoint => operations::trigger_savepoint(&shared, None, None),
        };
        if let Err(e) = op {
            tracing::warn!(error = %e, ?kind, "periodic snapshot not started");
        }
    }
}
