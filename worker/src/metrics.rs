//! Prometheus metrics of the pipeline (every long-running worker process serves them on `/metrics`).
//!
//! [`Metrics`] is a cheap clone-able handle: the counters are shared atomics, and the registry they
//! are registered in can take more metrics (the jobmanager registers its own through
//! [`Metrics::register_with`]) before [`Metrics::encode`] renders all of them.

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A low-cardinality reason label (`kind="invalid_json"`, `kind="unavailable"`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

/// A partition of the source topic.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    pub partition: i32,
}

/// Outcome of one batch apply.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

/// All pipeline metrics; names get the `streamjob_` prefix.
#[derive(Debug)]
pub struct PipelineMetrics {
    /// Records read from the source topic.
    pub events_in: Counter,
    /// Events whose writes were applied to Redis (a replayed batch is not counted).
    pub events_written: Counter,
    /// Records sent to the dead-letter topic, by decode error kind.
    pub events_dead_lettered: Family<KindLabel, Counter>,
    /// Batches by outcome (`applied`, `already_applied`).
    pub batches: Family<OutcomeLabel, Counter>,
    /// Redis commands the apply ran (fence included): commands per event = this / events_written.
    pub redis_commands: Counter,
    /// Data writes Redis refused inside a batch (e.g. WRONGTYPE), skipped and logged.
    pub redis_write_errors: Counter,
    /// Offsets between a partition's fence and the first record the broker returned after a
    /// (re)start: records deleted by retention or compaction before they were processed.
    pub resume_gap_offsets: Counter,
    /// Rewinds per partition: Redis lost acknowledged writes (its fence fell behind what this
    /// process applied, or vanished) and the partition re-read from the fence.
    pub partition_rewinds: Family<PartitionLabel, Counter>,
    /// Offsets re-read and re-applied per partition because of rewinds (the distance rewound).
    pub partition_rewound_offsets: Family<PartitionLabel, Counter>,
    /// Records of a rewound range that were dead-lettered before and not sent to the DLQ again.
    pub dead_letters_not_repeated: Counter,
    /// Failed Redis calls by error kind (`unavailable`, `fenced`, …).
    pub redis_errors: Family<KindLabel, Counter>,
    /// Redis Cluster refusals an apply waited out, by kind (`tryagain`, `ask`, `moved`,
    /// `reread`, `node_down`): resharding and failover at work, not errors.
    pub redis_cluster_waits: Family<KindLabel, Counter>,
    /// Primaries that serve the cluster's slots, as last read (0 off a cluster).
    pub redis_cluster_shards: Gauge,
    /// Slots migrating between primaries, as last read: a reshard at work (0 off a cluster).
    pub redis_cluster_migrating_slots: Gauge,
    /// Kafka client errors (consumer, producer, DLQ deliveries) by kind.
    pub kafka_errors: Family<KindLabel, Counter>,
    /// Retries of a batch apply or DLQ delivery after a retryable error.
    pub retries: Counter,
    /// 1 while the partition is paused and backing off after an error.
    pub partition_retrying: Family<PartitionLabel, Gauge>,
    /// Next offset to apply, per partition (what the Redis fence holds).
    pub partition_committed_offset: Family<PartitionLabel, Gauge>,
    /// High watermark minus committed offset, per partition.
    pub partition_lag: Family<PartitionLabel, Gauge>,
    /// Partitions this process currently owns.
    pub partitions_owned: Gauge,
    /// Events written to the event-time series, by kind: `on_time` (in their window), `late`
    /// (their window was final) or `skewed` (absurd timestamp).
    pub series_events: Family<KindLabel, Counter>,
    /// A partition's event-time watermark (epoch ms).
    pub partition_watermark: Family<PartitionLabel, Gauge>,
    /// Wall time during which at least one partition decided or applied a batch (the
    /// autoscaler's busy time; `pipeline::load`).
    pub busy_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    /// Batch applies retried after a retryable Redis error.
    pub redis_apply_retries: Counter,
    /// p99 of a batch apply over the last 30 s (refreshed with every heartbeat).
    pub redis_apply_p99_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Duration of one batch apply (the Redis script round trip, retries excluded).
    pub batch_apply_seconds: Histogram,
    /// Events per applied batch.
    pub batch_events: Histogram,
    /// Time from the record's Kafka timestamp (producer's CreateTime) to its batch being applied.
    pub produce_to_redis_seconds: Histogram,
}

impl PipelineMetrics {
    fn new() -> Self {
        Self {
            busy_seconds: Counter::default(),
            redis_apply_retries: Counter::default(),
            redis_apply_p99_seconds: Gauge::default(),
            batch_apply_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            batch_events: Histogram::new(exponential_buckets(1.0, 2.0, 16)),
            produce_to_redis_seconds: Histogram::new(exponential_buckets(0.0005, 1.5, 32)),
            events_in: Counter::default(),
            events_written: Counter::default(),
            events_dead_lettered: Family::default(),
            batches: Family::default(),
            redis_commands: Counter::default(),
            redis_write_errors: Counter::default(),
            resume_gap_offsets: Counter::default(),
            partition_rewinds: Family::default(),
            partition_rewound_offsets: Family::default(),
            dead_letters_not_repeated: Counter::default(),
            redis_errors: Family::default(),
            redis_cluster_waits: Family::default(),
            redis_cluster_shards: Gauge::default(),
            redis_cluster_migrating_slots: Gauge::default(),
            kafka_errors: Family::default(),
            retries: Counter::default(),
            partition_retrying: Family::default(),
            partition_committed_offset: Family::default(),
            partition_lag: Family::default(),
            partitions_owned: Gauge::default(),
            series_events: Family::default(),
            partition_watermark: Family::default(),
        }
    }

    fn register(&self, r: &mut Registry) {
        r.register(
            "events_in",
            "Records read from the source topic",
            self.events_in.clone(),
        );
        r.register(
            "events_written",
            "Events applied to Redis (replays not counted)",
            self.events_written.clone(),
        );
        r.register(
            "events_dead_lettered",
            "Records sent to the dead-letter topic, by reason kind",
            self.events_dead_lettered.clone(),
        );
        r.register("batches", "Batches by apply outcome", self.batches.clone());
        r.register(
            "busy_seconds",
            "Wall time during which at least one partition decided or applied a batch",
            self.busy_seconds.clone(),
        );
        r.register(
            "redis_apply_retries",
            "Batch applies retried after a retryable Redis error",
            self.redis_apply_retries.clone(),
        );
        r.register(
            "redis_apply_p99_seconds",
            "p99 of one batch apply over the last 30 s",
            self.redis_apply_p99_seconds.clone(),
        );
        r.register(
            "redis_commands",
            "Redis commands run by the apply transaction (fence included)",
            self.redis_commands.clone(),
        );
        r.register(
            "redis_write_errors",
            "Data writes Redis refused inside an applied batch (skipped)",
            self.redis_write_errors.clone(),
        );
        r.register(
            "resume_gap_offsets",
            "Offsets between a partition's fence and the first record read after a (re)start: \
             records deleted by retention or compaction before they were processed",
            self.resume_gap_offsets.clone(),
        );
        r.register(
            "partition_rewinds",
            "Rewinds per partition: Redis lost acknowledged writes and the partition re-read \
             from its fence",
            self.partition_rewinds.clone(),
        );
        r.register(
            "partition_rewound_offsets",
            "Offsets re-read and re-applied per partition because Redis lost acknowledged writes",
            self.partition_rewound_offsets.clone(),
        );
        r.register(
            "dead_letters_not_repeated",
            "Records of a rewound range dead-lettered before and not sent to the DLQ again",
            self.dead_letters_not_repeated.clone(),
        );
        r.register(
            "redis_errors",
            "Failed Redis calls by kind",
            self.redis_errors.clone(),
        );
        r.register(
            "redis_cluster_waits",
            "Redis Cluster refusals an apply waited out (resharding, failover), by kind",
            self.redis_cluster_waits.clone(),
        );
        r.register(
            "redis_cluster_shards",
            "Primaries serving the Redis Cluster's slots, as last read (0 off a cluster)",
            self.redis_cluster_shards.clone(),
        );
        r.register(
            "redis_cluster_migrating_slots",
            "Redis Cluster slots migrating between primaries, as last read (a reshard at work)",
            self.redis_cluster_migrating_slots.clone(),
        );
        r.register(
            "kafka_errors",
            "Kafka client errors by kind",
            self.kafka_errors.clone(),
        );
        r.register(
            "retries",
            "Retries after a retryable Redis or DLQ error",
            self.retries.clone(),
        );
        r.register(
            "partition_retrying",
            "1 while the partition is paused, backing off after an error",
            self.partition_retrying.clone(),
        );
        r.register(
            "partition_committed_offset",
            "Next offset to apply per partition (the Redis fence)",
            self.partition_committed_offset.clone(),
        );
        r.register(
            "partition_lag",
            "High watermark minus committed offset per partition",
            self.partition_lag.clone(),
        );
        r.register(
            "partitions_owned",
            "Partitions owned by this process",
            self.partitions_owned.clone(),
        );
        r.register(
            "series_events",
            "Events counted in the event-time series: on_time, late (window final) or skewed (absurd timestamp)",
            self.series_events.clone(),
        );
        r.register(
            "partition_watermark_ms",
            "A partition's event-time watermark (epoch ms)",
            self.partition_watermark.clone(),
        );
        r.register(
            "batch_apply_seconds",
            "Duration of one batch's Redis script call",
            self.batch_apply_seconds.clone(),
        );
        r.register(
            "batch_events",
            "Events per applied batch",
            self.batch_events.clone(),
        );
        r.register(
            "produce_to_redis_seconds",
            "Record Kafka timestamp to batch applied in Redis",
            self.produce_to_redis_seconds.clone(),
        );
    }

    /// Counter of dead-lettered records of `kind`.
    pub fn dead_lettered(&self, kind: &str) -> Counter {
        self.events_dead_lettered
            .get_or_create(&KindLabel { kind: kind.into() })
            .clone()
    }

    pub fn redis_error(&self, kind: &str) {
        self.redis_errors
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    pub fn kafka_error(&self, kind: &str) {
        self.kafka_errors
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    pub fn series(&self, kind: &str, events: u64) {
        if events > 0 {
            self.series_events
                .get_or_create(&KindLabel { kind: kind.into() })
                .inc_by(events);
        }
    }

    pub fn batch(&self, outcome: &str) {
        self.batches
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Counts one rewind of `partition` by `offsets`.
    pub fn rewound(&self, partition: i32, offsets: u64) {
        let label = PartitionLabel { partition };
        self.partition_rewinds.get_or_create(&label).inc();
        self.partition_rewound_offsets
            .get_or_create(&label)
            .inc_by(offsets);
    }

    pub fn partition_gauges(&self, partition: i32) -> PartitionGauges {
        let label = PartitionLabel { partition };
        PartitionGauges {
            retrying: self.partition_retrying.get_or_create(&label).clone(),
            committed_offset: self
                .partition_committed_offset
                .get_or_create(&label)
                .clone(),
            lag: self.partition_lag.get_or_create(&label).clone(),
            watermark: self.partition_watermark.get_or_create(&label).clone(),
        }
    }

    /// Drops a partition's series when this process gives the partition up.
    pub fn forget_partition(&self, partition: i32) {
        let label = PartitionLabel { partition };
        self.partition_retrying.remove(&label);
        self.partition_committed_offset.remove(&label);
        self.partition_lag.remove(&label);
        self.partition_watermark.remove(&label);
    }
}

/// The gauges of one partition, resolved once.
#[derive(Debug, Clone)]
pub struct PartitionGauges {
    pub retrying: Gauge,
    pub committed_offset: Gauge,
    pub lag: Gauge,
    pub watermark: Gauge,
}

/// Registry plus the pipeline's metrics.
#[derive(Clone, Debug)]
pub struct Metrics {
    pipeline: Arc<PipelineMetrics>,
    registry: Arc<Mutex<Registry>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("streamjob");
        let pipeline = PipelineMetrics::new();
        pipeline.register(&mut registry);
        Self {
            pipeline: Arc::new(pipeline),
            registry: Arc::new(Mutex::new(registry)),
        }
    }

    pub fn pipeline(&self) -> &PipelineMetrics {
        &self.pipeline
    }

    /// Registers more metrics (e.g. the jobmanager's) in the same registry.
    pub fn register_with(&self, f: impl FnOnce(&mut Registry)) {
        let mut registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut registry);
    }

    /// The Prometheus text exposition of every registered metric.
    pub fn encode(&self) -> String {
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// Reads one sample (`name{labels} value`) from a text exposition: for tests, benchmarks and the
/// standalone summary. `labels` is the exact label text between the braces, or empty.
pub fn sample(exposition: &str, name: &str, labels: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        if line.starts_with('#') {
            return None;
        }
        let (series, value) = line.rsplit_once(' ')?;
        let matches = if labels.is_empty() {
            series == name
        } else {
            series
                .strip_prefix(name)
                .is_some_and(|rest| rest == format!("{{{labels}}}"))
        };
        if matches {
            value.parse().ok()
        } else {
            None
        }
    })
}

/// Sum of every series of `name` (any labels).
pub fn sample_sum(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let bare = series.split('{').next()?;
            (bare == name).then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Quantile `q` of a histogram from its cumulative `_bucket` series (linear within a bucket, as
/// Prometheus' `histogram_quantile` does).
pub fn histogram_quantile(exposition: &str, name: &str, q: f64) -> Option<f64> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets: Vec<(f64, f64)> = exposition
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(&prefix)?;
            let (le, rest) = rest.split_once("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, rest.trim().parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in &buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let in_bucket = count - prev.1;
            let frac = if in_bucket > 0.0 {
                (rank - prev.1) / in_bucket
            } else {
                1.0
            };
            return Some(prev.0 + (le - prev.0) * frac);
        }
        prev = (le, count);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_carries_labelled_series_that_can_be_read_back() {
        let metrics = Metrics::new();
        let p = metrics.pipeline();
        p.events_in.inc_by(7);
        p.dead_lettered("invalid_json").inc();
        p.partition_gauges(3).committed_offset.set(42);
        let text = metrics.encode();
        assert_eq!(sample(&text, "streamjob_events_in_total", ""), Some(7.0));
        assert_eq!(
            sample(
                &text,
                "streamjob_events_dead_lettered_total",
                "kind=\"invalid_json\""
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "streamjob_partition_committed_offset",
                "partition=\"3\""
            ),
            Some(42.0)
        );
        assert_eq!(
            sample_sum(&text, "streamjob_events_dead_lettered_total"),
            1.0
        );
        metrics.pipeline().forget_partition(3);
        assert_eq!(
            sample(
                &metrics.encode(),
                "streamjob_partition_committed_offset",
                "partition=\"3\""
            ),
            None
        );
    }

    #[test]
    fn histogram_quantiles_interpolate_within_buckets() {
        let metrics = Metrics::new();
        for _ in 0..90 {
            metrics.pipeline().produce_to_redis_seconds.observe(0.001);
        }
        for _ in 0..10 {
            metrics.pipeline().produce_to_redis_seconds.observe(2.0);
        }
        let text = metrics.encode();
        let p50 = histogram_quantile(&text, "streamjob_produce_to_redis_seconds", 0.5).unwrap();
        let p99 = histogram_quantile(&text, "streamjob_produce_to_redis_seconds", 0.99).unwrap();
        assert!(p50 > 0.0005 && p50 <= 0.0012, "p50 {p50}");
        assert!(p99 > 1.0 && p99 <= 3.0, "p99 {p99}");
    }
}
