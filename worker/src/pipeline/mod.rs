//! The pipeline of one worker process (a taskmanager, or each in-process taskmanager of standalone
//! mode): one Kafka consumer whose partitions are assigned explicitly, one task per partition
//! (see [`partition`]), one Redis sink, one DLQ producer.
//!
//! Whoever owns the process (the taskmanager's jobmanager client, or standalone mode) drives it
//! with [`Pipeline::assign`] / [`Pipeline::revoke`] / [`Pipeline::shutdown`] and reads
//! [`Pipeline::progress`].

pub mod backoff;
mod flush;
pub mod load;
mod partition;
mod partition_state;
mod series;
pub mod watermark;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

pub use backoff::Backoff;
pub use partition_state::PartitionExit;

use crate::api::{Assignment, PartitionProgress, RedisMode, RedisTopology};
use crate::config::{JobConfig, StartingOffsets};
use crate::metrics::Metrics;
use crate::sink::redis::window::WindowRules;
use crate::sink::redis::{RedisSink, SinkError};
use crate::source::{create_consumer, DlqProducer, SourceConsumer};
use partition::{Control, PartitionTask};
use partition_state::PartitionState;

/// Why the pipeline could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("redis sink: {0}")]
    Sink(#[from] SinkError),
    #[error("partition {partition} gave up: {reason}")]
    Partition { partition: i32, reason: String },
    #[error("pipeline task failed: {0}")]
    Task(String),
}

/// How often the Redis topology is read by default: a reshard of a few slots shows for a few
/// heartbeats at least, at the cost of one `CLUSTER NODES` per primary per interval.
pub const TOPOLOGY_INTERVAL: Duration = Duration::from_secs(5);

/// Tunables that are not part of `job.yaml`.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Retry delays for Redis and DLQ errors.
    pub backoff: Backoff,
    /// How long `assign` keeps retrying a retryable claim error before giving up (the caller may
    /// assign again).
    pub claim_timeout: Duration,
    /// How often high watermarks are refreshed for lag.
    pub watermark_interval: Duration,
    /// How often the Redis topology is read for the job overview and the metrics (on a
    /// cluster: `CLUSTER SLOTS` once and `CLUSTER NODES` per primary).
    pub topology_interval: Duration,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            backoff: Backoff::default(),
            claim_timeout: Duration::from_secs(60),
            watermark_interval: Duration::from_secs(1),
            topology_interval: TOPOLOGY_INTERVAL,
        }
    }
}

/// What every partition task shares.
pub(crate) struct Shared {
    pub config: Arc<JobConfig>,
    pub sink: RedisSink,
    pub dlq: DlqProducer,
    pub consumer: Arc<SourceConsumer>,
    pub metrics: Metrics,
    pub backoff: Backoff,
    /// The event-time series' rules; `None` with `window.enabled: false`.
    pub window: Option<WindowRules>,
    pub board: watermark::WatermarkBoard,
    /// Busy time, events processed, Redis latency and retries (the autoscaler's input).
    pub load: load::LoadMeter,
    /// The Redis topology as last read (`None` before the first read succeeded).
    pub redis_topology: Mutex<Option<RedisTopology>>,
}

struct PartitionHandle {
    control: mpsc::Sender<Control>,
    abandon: watch::Sender<bool>,
    task: JoinHandle<PartitionExit>,
    state: Arc<PartitionState>,
}

type Partitions = Arc<Mutex<HashMap<i32, PartitionHandle>>>;

/// One process's consumer, sink and partition tasks.
pub struct Pipeline {
    shared: Arc<Shared>,
    partitions: Partitions,
    options: PipelineOptions,
    background: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("job", &self.shared.config.job.name)
            .field("partitions", &self.owned_partitions())
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    /// Connects to Redis (retrying while it is unavailable) and creates the consumer and the DLQ
    /// producer. Nothing is consumed until [`Pipeline::assign`].
    pub async fn start(config: Arc<JobConfig>, metrics: Metrics) -> Result<Self, PipelineError> {
        Self::start_with(config, metrics, PipelineOptions::default()).await
    }

    pub async fn start_with(
        config: Arc<JobConfig>,
        metrics: Metrics,
        options: PipelineOptions,
    ) -> Result<Self, PipelineError> {
        let span = tracing::info_span!("pipeline", job = %config.job.name);
        async {
            let sink = connect_sink(&config, &options.backoff, &metrics).await?;
            let consumer = Arc::new(create_consumer(&config.source.kafka, &metrics)?);
            let dlq = DlqProducer::create(&config.source.kafka, &metrics)?;
            let load = load::LoadMeter::new(load::LoadMetrics::of(metrics.pipeline()));
            let shared = Arc::new(Shared {
                config: config.clone(),
                sink,
                dlq,
                consumer,
                metrics,
                backoff: options.backoff,
                window: config
                    .window
                    .enabled
                    .then(|| WindowRules::from_config(&config.window)),
                board: watermark::WatermarkBoard::default(),
                load,
                redis_topology: Mutex::default(),
            });
            let partitions: Partitions = Arc::default();
            let background = vec![
                tokio::spawn(serve_main_queue(shared.clone()).in_current_span()),
                tokio::spawn(
                    refresh_watermarks(
                        shared.clone(),
                        partitions.clone(),
                        options.watermark_interval,
                    )
                    .in_current_span(),
                ),
                tokio::spawn(
                    report_topology(shared.clone(), options.topology_interval).in_current_span(),
                ),
            ];
            Ok(Self {
                shared,
                partitions,
                options,
                background,
            })
        }
        .instrument(span)
        .await
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Whether this process can take partitions now: Redis answers a fence read and the broker
    /// the topic's offsets. A taskmanager that cannot does not register, so it is given nothing
    /// (see `taskmanager::link`).
    pub async fn preflight(&self) -> Result<(), PipelineError> {
        self.shared.sink.read_fence(0).await?;
        let consumer = self.shared.consumer.clone();
        let topic = self.shared.config.source.kafka.topic.clone();
        tokio::task::spawn_blocking(move || {
            consumer.fetch_watermarks(&topic, 0, Duration::from_secs(5))
        })
        .await
        .map_err(|e| PipelineError::Task(e.to_string()))??;
        Ok(())
    }

    /// The process' load counters (busy time, events, Redis latency and retries).
    pub fn load(&self) -> crate::api::TaskManagerLoad {
        self.shared.load.report()
    }

    /// The Redis topology as last read (for the heartbeat; `None` before the first read).
    pub fn redis_topology(&self) -> Option<RedisTopology> {
        self.shared
            .redis_topology
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Takes the job's event-time watermark from the jobmanager.
    pub fn learn_job_watermark(&self, job_watermark: Option<i64>) {
        self.shared.board.learn(job_watermark);
    }

    /// The job watermark this process acknowledges (see [`watermark::WatermarkBoard::ack`]).
    pub fn watermark_ack(&self) -> Option<i64> {
        self.shared.board.ack()
    }

    /// Partitions with a running task.
    pub fn owned_partitions(&self) -> Vec<i32> {
        let partitions = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        let mut owned: Vec<i32> = partitions
            .iter()
            .filter(|(_, h)| !h.task.is_finished())
            .map(|(p, _)| *p)
            .collect();
        owned.sort_unstable();
        owned
    }

    /// Partitions whose task ended on its own (fenced, or a non-retryable error), with the reason.
    /// They stay listed until revoked or assigned again.
    pub fn stopped_partitions(&self) -> Vec<(i32, PartitionExit)> {
        let partitions = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        let mut stopped: Vec<(i32, PartitionExit)> = partitions
            .iter()
            .filter_map(|(p, h)| h.state.exit().map(|exit| (*p, exit)))
            .collect();
        stopped.sort_by_key(|(p, _)| *p);
        stopped
    }

    /// Starts consuming a partition: claims it in Redis (which raises the fence epoch and shuts out
    /// any older owner), then resumes at the fence's `next_offset`; see [`resume_plan`] for a
    /// fence without one. Assigning a partition that is already running is a no-op.
    pub async fn assign(&self, assignment: Assignment) -> Result<(), PipelineError> {
        let partition = assignment.partition;
        {
            let mut partitions = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(handle) = partitions.get(&partition) {
                if !handle.task.is_finished() {
                    return Ok(());
                }
                partitions.remove(&partition);
                self.shared.metrics.pipeline().partitions_owned.dec();
            }
        }
        let config = &self.shared.config;
        let span = tracing::info_span!("partition", job = %config.job.name, partition);
        let claimed = claim_with_retry(&self.shared, assignment, &self.options)
            .instrument(span.clone())
            .await?;
        // Never decide lateness below what Redis already records as final.
        self.shared.board.learn(claimed.final_watermark);
        let topic = &config.source.kafka.topic;
        let offset = Offset::Offset(claimed.resume);
        // Split the partition's queue off before assigning it, so none of its messages land in the
        // main queue.
        let queue = self
            .shared
            .consumer
            .split_partition_queue(topic, partition)
            .ok_or_else(|| PipelineError::Partition {
                partition,
                reason: "cannot create the partition queue".into(),
            })?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, offset)?;
        self.shared.consumer.incremental_assign(&tpl)?;

        let metrics = self.shared.metrics.pipeline();
        let state = Arc::new(PartitionState::new(
            partition,
            claimed.epoch,
            Some(claimed.resume),
            claimed.clock,
            metrics.partition_gauges(partition),
        ));
        if let Some(from) = claimed.rewound_from {
            state.record_rewind(from, claimed.resume);
            state.start_replay(from, claimed.learned);
            metrics.rewound(partition, from.saturating_sub(claimed.resume).max(0) as u64);
            tracing::error!(
                job = %config.job.name,
                partition,
                from,
                to = claimed.resume,
                "Redis lost acknowledged writes; partition {partition} rewound from {from} to {}: \
                 the job had committed up to {from} but Redis's fence stands at {}",
                claimed.resume,
                claimed.resume,
            );
        }
        let (control, control_rx) = mpsc::channel(1);
        let (abandon, abandon_rx) = watch::channel(false);
        let task = PartitionTask {
            shared: self.shared.clone(),
            state: state.clone(),
            queue,
            control: control_rx,
            abandon: abandon_rx,
        };
        let span = tracing::info_span!(
            "partition",
            job = %config.job.name,
            topic = %topic,
            partition,
            epoch = claimed.epoch
        );
        tracing::info!(parent: &span, ?offset, generation = assignment.generation, "partition assigned");
        let task = tokio::spawn(task.run().instrument(span));
        let mut partitions = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        let replaced = partitions.insert(
            partition,
            PartitionHandle {
                control,
                abandon,
                task,
                state,
            },
        );
        // Several pipelines may share one registry (standalone mode): count, don't set.
        if replaced.is_none() {
            metrics.partitions_owned.inc();
        }
        Ok(())
    }

    /// Stops a partition: flushes its in-flight batch, stops consuming it, returns its committed
    /// next offset (`None` if it never had one). Revoking a partition that is not owned returns
    /// `Ok(None)`.
    pub async fn revoke(&self, partition: i32) -> Result<Option<i64>, PipelineError> {
        let handle = {
            let mut partitions = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
            let handle = partitions.remove(&partition);
            if handle.is_some() {
                self.shared.metrics.pipeline().partitions_owned.dec();
            }
            handle
        };
        let Some(handle) = handle else {
            return Ok(None);
        };
        let (reply, mut reply_rx) = oneshot::channel();
        let committed = if handle.control.send(Control::Stop { reply }).await.is_ok() {
            let stop_timeout = self.shared.config.batch.stop_timeout;
            let reply = match tokio::time::timeout(stop_timeout, &mut reply_rx).await {
                Ok(reply) => reply,
                Err(_) => {
                    // Redis or the broker is unreachable: a stop must not wait for ever.
                    tracing::warn!(
                        partition,
                        ?stop_timeout,
                        "the in-flight batch was not applied within batch.stopTimeout; \
                         stopping without it"
                    );
                    let _ = handle.abandon.send(true);
                    reply_rx.await
                }
            };
            reply.unwrap_or_else(|_| handle.state.committed())
        } else {
            handle.state.committed()
        };
        let exit = handle
            .task
            .await
            .map_err(|e| PipelineError::Task(e.to_string()))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.shared.config.source.kafka.topic, partition);
        if exit == PartitionExit::Stopped {
            if let Err(err) = self.shared.consumer.incremental_unassign(&tpl) {
                tracing::warn!(partition, %err, "cannot unassign the revoked partition");
            }
        }
        self.shared.metrics.pipeline().forget_partition(partition);
        tracing::info!(partition, committed, ?exit, "partition revoked");
        Ok(committed)
    }

    /// Per-partition progress of the partitions this process holds.
    pub fn progress(&self) -> Vec<PartitionProgress> {
        let partitions = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        let mut progress: Vec<PartitionProgress> = partitions
            .values()
            .map(|h| PartitionProgress {
                partition: h.state.partition,
                epoch: h.state.epoch,
                committed_offset: h.state.committed(),
                high_watermark: h.state.high_watermark(),
                lag: h.state.lag(),
                events_per_second: h.state.events_per_second(),
                retrying: h.state.is_retrying(),
                dead_lettered: h.state.dead_lettered(),
                last_error: h.state.last_error(),
                rewinds: h.state.rewinds().0,
                last_rewind: h.state.rewinds().1,
                watermark_ms: self
                    .shared
                    .window
                    .and_then(|rules| h.state.clock().map(|clock| rules.watermark_of(clock))),
                idle: h.state.is_idle(self.shared.config.window.idle_timeout),
            })
            .collect();
        progress.sort_by_key(|p| p.partition);
        progress
    }

    /// Whether any partition is paused, backing off after a Redis or DLQ error.
    pub fn is_retrying(&self) -> bool {
        let partitions = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        partitions.values().any(|h| h.state.is_retrying())
    }

    /// Graceful stop: flushes every partition's in-flight batch, then returns.
    pub async fn shutdown(self) -> Result<(), PipelineError> {
        let owned: Vec<i32> = {
            let partitions = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
            partitions.keys().copied().collect()
        };
        let results = futures::future::join_all(owned.iter().map(|p| self.revoke(*p))).await;
        // Wait for the background tasks to end, so the consumer is closed when this returns.
        for task in &self.background {
            task.abort();
        }
        let mut this = self;
        for task in std::mem::take(&mut this.background) {
            let _ = task.await;
        }
        for result in results {
            result?;
        }
        Ok(())
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        for task in &self.background {
            task.abort();
        }
        let partitions = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        for handle in partitions.values() {
            handle.task.abort();
        }
    }
}

/// Where a partition starts when its fence has no `next_offset` (the claim writes it there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstOffset {
    /// The broker's earliest retained offset.
    Earliest,
    /// The broker's high watermark.
    Latest,
}

/// Where a partition whose fence has no `next_offset` starts. Never claimed and never committed:
/// the configured starting offsets. Committed before (`start_offset` from a checkpoint, a
/// savepoint or the jobmanager's memory) but no fence: Redis lost the fence (replaced by an empty
/// one, or the key deleted), so everything Redis held for the partition may be gone; the partition
/// re-applies from the earliest retained offset, never skipping silently.
pub fn resume_plan(start_offset: Option<i64>, starting: StartingOffsets) -> FirstOffset {
    match (start_offset, starting) {
        (Some(_), _) | (None, StartingOffsets::Earliest) => FirstOffset::Earliest,
        (None, StartingOffsets::Latest) => FirstOffset::Latest,
    }
}

/// Whether resuming at the fence is a rewind: the job had committed `start_offset`, past the
/// fence. The fence is the only truth about Redis; checkpoints and savepoints ahead of it mean
/// Redis lost writes, which are re-applied. Returns where the partition had been.
pub fn rewound_from(fence_next_offset: i64, start_offset: Option<i64>) -> Option<i64> {
    start_offset.filter(|s| *s > fence_next_offset)
}

/// A claimed partition: the owner's epoch and where it resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Claimed {
    epoch: u64,
    resume: i64,
    rewound_from: Option<i64>,
    /// The partition's event-time clock stored in its fence, and the job watermark its last
    /// batch decided with.
    clock: Option<i64>,
    learned: Option<i64>,
    /// The job watermark Redis records as final (with `window.enabled`).
    final_watermark: Option<i64>,
}

async fn connect_sink(
    config: &JobConfig,
    backoff: &Backoff,
    metrics: &Metrics,
) -> Result<RedisSink, PipelineError> {
    let mut attempt = 0;
    loop {
        match RedisSink::connect(
            &config.sink.redis,
            &config.job.name,
            &config.source.kafka.topic,
        )
        .await
        {
            Ok(sink) => {
                sink.count_cluster_waits_in(metrics.pipeline().redis_cluster_waits.clone());
                return Ok(sink);
            }
            Err(err) if err.is_retryable() => {
                metrics.pipeline().redis_error(err.kind());
                tracing::warn!(%err, attempt, "redis unavailable at start; retrying");
                tokio::time::sleep(backoff.delay(attempt, backoff::jitter_unit())).await;
                attempt = attempt.saturating_add(1);
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// Reads the fence; when it has no `next_offset` works out where to start (a broker round trip);
/// then claims it, writing that offset if the fence still has none.
async fn claim_once(shared: &Shared, assignment: Assignment) -> Result<Claimed, PipelineError> {
    let partition = assignment.partition;
    let existing = shared.sink.read_fence(partition).await?;
    let first = match existing.and_then(|f| f.next_offset) {
        Some(_) => None,
        None => {
            let starting = shared.config.source.kafka.starting_offsets;
            let plan = resume_plan(assignment.start_offset, starting);
            let consumer = shared.consumer.clone();
            let topic = shared.config.source.kafka.topic.clone();
            let (low, high) = tokio::task::spawn_blocking(move || {
                consumer.fetch_watermarks(&topic, partition, Duration::from_secs(10))
            })
            .await
            .map_err(|e| PipelineError::Task(e.to_string()))??;
            if let Some(committed) = assignment.start_offset {
                tracing::error!(
                    partition,
                    committed,
                    earliest = low,
                    "Redis has no fence for partition {partition}, which the job had committed up \
                     to {committed}: Redis lost it (replaced by an empty one?); re-applying from the \
                     earliest retained offset {low}"
                );
            }
            Some(match plan {
                FirstOffset::Earliest => low,
                FirstOffset::Latest => high,
            })
        }
    };
    let claim = shared
        .sink
        .claim_from(partition, assignment.generation, first)
        .await?;
    let Some(resume) = claim.fence.next_offset else {
        // The fence lost its offset between the read and the claim: read it again.
        return Err(SinkError::Unavailable("the fence changed while claiming it".into()).into());
    };
    let final_watermark = match shared.window {
        Some(_) => shared
            .sink
            .read_final_watermark()
            .await?
            .map(|(watermark, _)| watermark),
        None => None,
    };
    Ok(Claimed {
        epoch: claim.fence.epoch,
        resume,
        rewound_from: rewound_from(resume, assignment.start_offset),
        clock: claim.fence.max_event_ms,
        learned: claim.fence.learned_ms,
        final_watermark,
    })
}

fn is_retryable(err: &PipelineError) -> bool {
    match err {
        PipelineError::Sink(err) => err.is_retryable(),
        PipelineError::Kafka(_) => true,
        _ => false,
    }
}

async fn claim_with_retry(
    shared: &Shared,
    assignment: Assignment,
    options: &PipelineOptions,
) -> Result<Claimed, PipelineError> {
    let deadline = tokio::time::Instant::now() + options.claim_timeout;
    let mut attempt = 0;
    loop {
        match Box::pin(claim_once(shared, assignment)).await {
            Ok(claimed) => return Ok(claimed),
            Err(err) if is_retryable(&err) && tokio::time::Instant::now() < deadline => {
                let kind = match &err {
                    PipelineError::Sink(e) => e.kind(),
                    _ => "kafka",
                };
                shared.metrics.pipeline().redis_error(kind);
                tracing::warn!(%err, attempt, "cannot claim the partition yet; retrying");
                tokio::time::sleep(options.backoff.delay(attempt, backoff::jitter_unit())).await;
                attempt = attempt.saturating_add(1);
            }
            Err(err) => return Err(err),
        }
    }
}

/// Polls the consumer's main queue: with every partition split off it only serves callbacks and
/// carries client-level errors.
async fn serve_main_queue(shared: Arc<Shared>) {
    loop {
        match shared.consumer.recv().await {
            Ok(message) => {
                use rdkafka::Message;
                tracing::error!(
                    partition = message.partition(),
                    offset = message.offset(),
                    "record on the consumer's main queue (not split off); it is re-read after a restart"
                );
                shared.metrics.pipeline().kafka_error("main_queue_record");
            }
            Err(err) => {
                tracing::warn!(%err, "kafka consumer error (librdkafka retries)");
                shared.metrics.pipeline().kafka_error("consumer");
            }
        }
    }
}

/// A partition that has no high watermark yet (just assigned) gets its first fetch this soon, so
/// its lag is known within the first heartbeat rather than after a full refresh interval.
const FIRST_WATERMARK_FETCH: Duration = Duration::from_millis(250);

/// Refreshes each owned partition's high watermark (for lag), off the async threads.
async fn refresh_watermarks(shared: Arc<Shared>, partitions: Partitions, every: Duration) {
    let topic = shared.config.source.kafka.topic.clone();
    let mut last_full = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(FIRST_WATERMARK_FETCH.min(every)).await;
        let full = last_full.elapsed() >= every;
        if full {
            last_full = tokio::time::Instant::now();
        }
        let states: Vec<Arc<PartitionState>> = {
            let partitions = partitions.lock().unwrap_or_else(|e| e.into_inner());
            partitions
                .values()
                .map(|h| h.state.clone())
                .filter(|s| full || s.high_watermark().is_none())
                .collect()
        };
        if states.is_empty() {
            continue;
        }
        let consumer = shared.consumer.clone();
        let topic = topic.clone();
        let metrics = shared.metrics.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for state in states {
                match consumer.fetch_watermarks(&topic, state.partition, Duration::from_secs(2)) {
                    Ok((_low, high)) => state.set_high_watermark(high),
                    Err(err) => {
                        tracing::debug!(partition = state.partition, %err, "cannot fetch watermarks");
                        metrics.pipeline().kafka_error("watermarks");
                    }
                }
            }
        })
        .await;
    }
}

/// Reads the Redis topology every `every`, keeps it for the heartbeat and sets the cluster
/// gauges. A failed read keeps the last one (its `lastRefreshMs` shows its age) and is logged
/// once per run of failures: the applies meet the same trouble and say more.
async fn report_topology(shared: Arc<Shared>, every: Duration) {
    let mut failing = false;
    loop {
        match shared.sink.describe_topology().await {
            Ok(topology) => {
                if topology.mode == RedisMode::Cluster {
                    let metrics = shared.metrics.pipeline();
                    metrics.redis_cluster_shards.set(i64::from(topology.shards));
                    metrics
                        .redis_cluster_migrating_slots
                        .set(i64::from(topology.migrating_slots));
                }
                *shared
                    .redis_topology
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(topology);
                failing = false;
            }
            Err(err) if !failing => {
                tracing::warn!(%err, "cannot read the redis topology; reporting the last one read");
                failing = true;
            }
            Err(err) => tracing::debug!(%err, "cannot read the redis topology"),
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fence_always_wins_and_a_commit_past_it_is_a_rewind() {
        assert_eq!(rewound_from(100, Some(40)), None);
        assert_eq!(rewound_from(100, None), None);
        assert_eq!(rewound_from(100, Some(100)), None);
        assert_eq!(rewound_from(40, Some(100)), Some(100));
    }

    #[test]
    fn a_lost_fence_of_a_committed_partition_restarts_at_the_earliest_offset() {
        use StartingOffsets::{Earliest, Latest};
        assert_eq!(resume_plan(None, Earliest), FirstOffset::Earliest);
        assert_eq!(resume_plan(None, Latest), FirstOffset::Latest);
        // Never skip what Redis lost, whatever the configured starting offsets say.
        assert_eq!(resume_plan(Some(500), Latest), FirstOffset::Earliest);
        assert_eq!(resume_plan(Some(500), Earliest), FirstOffset::Earliest);
    }
}
