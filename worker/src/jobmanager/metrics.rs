//! Prometheus metrics of the jobmanager, refreshed from the coordinator at every scrape.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::api::{JobState, PartitionState};

use super::coordinator::Coordinator;

type Labels = Vec<(String, String)>;

#[derive(Debug)]
pub struct JobManagerMetrics {
    registry: Registry,
    job_state: Family<Labels, Gauge>,
    taskmanagers: Gauge,
    partitions: Family<Labels, Gauge>,
    partition_committed_offset: Family<Labels, Gauge>,
    partition_lag: Family<Labels, Gauge>,
    partition_high_watermark: Family<Labels, Gauge>,
    /// The autoscaler's inputs per taskmanager, as each last reported them (`pipeline::load`).
    taskmanager_busy_seconds: Family<Labels, Gauge<f64, AtomicU64>>,
    taskmanager_elapsed_seconds: Family<Labels, Gauge<f64, AtomicU64>>,
    taskmanager_processed_events: Family<Labels, Gauge>,
    taskmanager_redis_apply_retries: Family<Labels, Gauge>,
    taskmanager_redis_apply_p99_seconds: Family<Labels, Gauge<f64, AtomicU64>>,
    rebalances: Counter,
    rebalances_seen: AtomicU64,
    /// Assignments taken back because their member did not confirm them in time.
    assignments_taken_back: Counter,
    taken_back_seen: AtomicU64,
    /// Members given nothing for now (they did not take what they were given in time).
    taskmanagers_held_back: Gauge,
    pub checkpoints: Family<Labels, Counter>,
    pub savepoints: Family<Labels, Counter>,
    pub last_checkpoint_duration_seconds: Gauge<f64, AtomicU64>,
    pub last_savepoint_duration_seconds: Gauge<f64, AtomicU64>,
    /// Unix time of the newest complete checkpoint / savepoint written by this process.
    pub last_checkpoint_timestamp_seconds: Gauge<f64, AtomicU64>,
    pub last_savepoint_timestamp_seconds: Gauge<f64, AtomicU64>,
    /// `checkpoint.interval` (0: disabled), so alerts can compare a checkpoint's age with it.
    pub checkpoint_interval_seconds: Gauge<f64, AtomicU64>,
    pub partition_discovery_errors: Counter,
    /// The job's event-time watermark (epoch ms).
    watermark: Gauge,
    /// The final watermark last recorded in Redis (epoch ms).
    final_watermark: Gauge,
}

impl JobManagerMetrics {
    pub fn new(job: &str) -> Self {
        let mut root = Registry::with_prefix_and_labels(
            "streamjob_jobmanager",
            [(
                std::borrow::Cow::Borrowed("job"),
                std::borrow::Cow::Owned(job.to_string()),
            )]
            .into_iter(),
        );
        let metrics = Self {
            registry: Registry::default(),
            job_state: Family::default(),
            taskmanagers: Gauge::default(),
            partitions: Family::default(),
            partition_committed_offset: Family::default(),
            partition_lag: Family::default(),
            partition_high_watermark: Family::default(),
            taskmanager_busy_seconds: Family::default(),
            taskmanager_elapsed_seconds: Family::default(),
            taskmanager_processed_events: Family::default(),
            taskmanager_redis_apply_retries: Family::default(),
            taskmanager_redis_apply_p99_seconds: Family::default(),
            rebalances: Counter::default(),
            rebalances_seen: AtomicU64::new(0),
            assignments_taken_back: Counter::default(),
            taken_back_seen: AtomicU64::new(0),
            taskmanagers_held_back: Gauge::default(),
            checkpoints: Family::default(),
            savepoints: Family::default(),
            last_checkpoint_duration_seconds: Gauge::default(),
            last_savepoint_duration_seconds: Gauge::default(),
            last_checkpoint_timestamp_seconds: Gauge::default(),
            last_savepoint_timestamp_seconds: Gauge::default(),
            checkpoint_interval_seconds: Gauge::default(),
            partition_discovery_errors: Counter::default(),
            watermark: Gauge::default(),
            final_watermark: Gauge::default(),
        };
        root.register(
            "watermark_ms",
            "The job's event-time watermark (epoch ms): minimum over active partitions",
            metrics.watermark.clone(),
        );
        root.register(
            "final_watermark_ms",
            "The watermark last recorded in Redis as final (epoch ms)",
            metrics.final_watermark.clone(),
        );
        let r = &mut root;
        r.register(
            "job_state",
            "1 for the job's current state",
            metrics.job_state.clone(),
        );
        r.register(
            "taskmanagers",
            "Registered taskmanagers",
            metrics.taskmanagers.clone(),
        );
        r.register(
            "partitions",
            "Partitions by assignment state",
            metrics.partitions.clone(),
        );
        r.register(
            "partition_committed_offset",
            "Next offset to apply per partition, as last reported",
            metrics.partition_committed_offset.clone(),
        );
        r.register(
            "partition_lag",
            "Records behind the high watermark per partition",
            metrics.partition_lag.clone(),
        );
        r.register(
            "partition_high_watermark",
            "The broker's high watermark per partition, as its owner last saw it",
            metrics.partition_high_watermark.clone(),
        );
        r.register(
            "taskmanager_busy_seconds",
            "Busy time a taskmanager reported since it started (deciding and applying batches)",
            metrics.taskmanager_busy_seconds.clone(),
        );
        r.register(
            "taskmanager_elapsed_seconds",
            "Wall time a taskmanager reported since it started (busy time is a part of it)",
            metrics.taskmanager_elapsed_seconds.clone(),
        );
        r.register(
            "taskmanager_processed_events",
            "Events a taskmanager reported applied to Redis since it started",
            metrics.taskmanager_processed_events.clone(),
        );
        r.register(
            "taskmanager_redis_apply_retries",
            "Batch applies a taskmanager reported retried since it started",
            metrics.taskmanager_redis_apply_retries.clone(),
        );
        r.register(
            "taskmanager_redis_apply_p99_seconds",
            "p99 of a batch apply over the last 30 s, as a taskmanager last reported it",
            metrics.taskmanager_redis_apply_p99_seconds.clone(),
        );
        r.register(
            "rebalances",
            "Assignment plans that moved partitions",
            metrics.rebalances.clone(),
        );
        r.register(
            "assignments_taken_back",
            "Assignments taken back because their taskmanager did not take them in time",
            metrics.assignments_taken_back.clone(),
        );
        r.register(
            "taskmanagers_held_back",
            "Taskmanagers given nothing for now: they did not take what they were given in time",
            metrics.taskmanagers_held_back.clone(),
        );
        r.register(
            "checkpoints",
            "Checkpoints by result",
            metrics.checkpoints.clone(),
        );
        r.register(
            "savepoints",
            "Savepoints by result",
            metrics.savepoints.clone(),
        );
        r.register(
            "last_checkpoint_duration_seconds",
            "Trigger to written file, last checkpoint",
            metrics.last_checkpoint_duration_seconds.clone(),
        );
        r.register(
            "last_savepoint_duration_seconds",
            "Trigger to written file, last savepoint",
            metrics.last_savepoint_duration_seconds.clone(),
        );
        r.register(
            "last_checkpoint_timestamp_seconds",
            "Unix time the newest complete checkpoint was written (the jobmanager's start until then)",
            metrics.last_checkpoint_timestamp_seconds.clone(),
        );
        r.register(
            "last_savepoint_timestamp_seconds",
            "Unix time the newest complete savepoint was written by this process (0: none yet)",
            metrics.last_savepoint_timestamp_seconds.clone(),
        );
        r.register(
            "checkpoint_interval_seconds",
            "Configured checkpoint.interval (0: periodic checkpoints are off)",
            metrics.checkpoint_interval_seconds.clone(),
        );
        r.register(
            "partition_discovery_errors",
            "Failed attempts to read the topic's partition count",
            metrics.partition_discovery_errors.clone(),
        );
        Self {
            registry: root,
            ..metrics
        }
    }

    /// The text exposition as it stands (no refresh from a coordinator): every family with its
    /// `# HELP`/`# TYPE` lines, so the exported names can be listed.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }

    /// Refreshes the gauges from the coordinator and renders the text exposition.
    pub fn set_final_watermark(&self, watermark: i64) {
        self.final_watermark.set(watermark);
    }

    pub fn render(&self, coordinator: &Coordinator) -> String {
        for state in [
            JobState::Initializing,
            JobState::Running,
            JobState::Stopping,
            JobState::Finished,
        ] {
            let name = serde_json::to_value(state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            self.job_state
                .get_or_create(&vec![("state".into(), name)])
                .set(i64::from(coordinator.state() == state));
        }
        self.taskmanagers.set(coordinator.member_count() as i64);
        if let (Some(watermark), _) = coordinator.watermarks() {
            self.watermark.set(watermark);
        }
        let partitions = coordinator.partitions();
        for state in [
            PartitionState::Unassigned,
            PartitionState::Assigning,
            PartitionState::Running,
            PartitionState::Revoking,
        ] {
            let name = format!("{state:?}").to_lowercase();
            let n = partitions.iter().filter(|p| p.state == state).count();
            self.partitions
                .get_or_create(&vec![("state".into(), name)])
                .set(n as i64);
        }
        for p in &partitions {
            let labels = vec![("partition".to_string(), p.partition.to_string())];
            if let Some(offset) = p.committed_offset {
                self.partition_committed_offset
                    .get_or_create(&labels)
                    .set(offset);
            }
            if let Some(lag) = p.lag {
                self.partition_lag.get_or_create(&labels).set(lag);
            }
        }
        for p in coordinator.partition_offsets() {
            if let Some(hw) = p.high_watermark {
                let labels = vec![("partition".to_string(), p.partition.to_string())];
                self.partition_high_watermark.get_or_create(&labels).set(hw);
            }
        }
        self.render_loads(coordinator);
        let total = coordinator.rebalances();
        let seen = self
            .rebalances_seen
            .swap(total, std::sync::atomic::Ordering::Relaxed);
        if total > seen {
            self.rebalances.inc_by(total - seen);
        }
        let taken_back = coordinator.taken_back();
        let seen = self
            .taken_back_seen
            .swap(taken_back, std::sync::atomic::Ordering::Relaxed);
        if taken_back > seen {
            self.assignments_taken_back.inc_by(taken_back - seen);
        }
        let held_back = coordinator
            .taskmanagers(std::time::Instant::now())
            .iter()
            .filter(|t| t.held_back.is_some())
            .count();
        self.taskmanagers_held_back.set(held_back as i64);
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }

    /// The taskmanagers' load series: only members registered now (a member that left drops
    /// its series).
    fn render_loads(&self, coordinator: &Coordinator) {
        self.taskmanager_busy_seconds.clear();
        self.taskmanager_elapsed_seconds.clear();
        self.taskmanager_processed_events.clear();
        self.taskmanager_redis_apply_retries.clear();
        self.taskmanager_redis_apply_p99_seconds.clear();
        for tm in coordinator.taskmanager_loads() {
            let Some(load) = tm.load else { continue };
            let labels = vec![("taskmanager".to_string(), tm.id)];
            let seconds = |ms: u64| ms as f64 / 1_000.0;
            self.taskmanager_busy_seconds
                .get_or_create(&labels)
                .set(seconds(load.busy_ms));
            self.taskmanager_elapsed_seconds
                .get_or_create(&labels)
                .set(seconds(load.elapsed_ms));
            let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            self.taskmanager_processed_events
                .get_or_create(&labels)
                .set(count(load.processed_events));
            self.taskmanager_redis_apply_retries
                .get_or_create(&labels)
                .set(count(load.redis_retries));
            self.taskmanager_redis_apply_p99_seconds
                .get_or_create(&labels)
                .set(load.redis_apply_p99_ms / 1_000.0);
        }
    }

    pub fn result_labels(ok: bool) -> Labels {
        vec![(
            "result".into(),
            if ok { "completed" } else { "failed" }.into(),
        )]
    }
}
