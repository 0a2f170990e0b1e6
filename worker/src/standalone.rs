//! Standalone mode: the whole job in one process, for a laptop or a small deployment. Optionally
//! with an embedded broker (librdkafka's mock cluster) and demo traffic.
//!
//! Partitions are spread over `--taskmanagers N` in-process pipelines by [`spread_partitions`];
//! that is the one place to replace with an in-process jobmanager.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::BaseConsumer;

use crate::api::Assignment;
use crate::config::JobConfig;
use crate::embedded_kafka::EmbeddedKafka;
use crate::http::{self, Health};
use crate::metrics::{sample, Metrics};
use crate::pipeline::Pipeline;
use crate::source::{base_client_config, consumer_config, topic_partitions};

/// Flags of `streamjob-worker standalone`.
#[derive(Debug, Clone)]
pub struct StandaloneOptions {
    /// In-process pipelines (each is what one taskmanager process would run).
    pub taskmanagers: usize,
    /// Host a mock broker in-process with this many partitions of the job's topic.
    pub embedded_kafka: Option<i32>,
    /// Produce demo traffic at this many events per second.
    pub demo_rate: Option<u64>,
    /// Stop after this long (otherwise at SIGTERM/SIGINT).
    pub duration: Option<Duration>,
    /// After the demo stops, wait at most this long for the pipelines to catch up before stopping.
    pub drain_timeout: Duration,
}

impl Default for StandaloneOptions {
    fn default() -> Self {
        Self {
            taskmanagers: 1,
            embedded_kafka: None,
            demo_rate: None,
            duration: None,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// What one standalone run did (from the metrics).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StandaloneSummary {
    pub demo_events_sent: u64,
    pub events_in: u64,
    pub events_written: u64,
    pub events_dead_lettered: u64,
    pub redis_commands: u64,
}

/// Assigns partitions to `n` owners round-robin: owner `i` gets partitions `i, i+n, …` of the
/// sorted list. Every partition exactly once; owner loads differ by at most one.
pub fn spread_partitions(partitions: &[i32], n: usize) -> Vec<Vec<i32>> {
    let n = n.max(1);
    let mut sorted = partitions.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut owners = vec![Vec::new(); n];
    for (i, p) in sorted.into_iter().enumerate() {
        owners[i % n].push(p);
    }
    owners
}

/// Runs the job until `shutdown` resolves or `options.duration` elapses; flushes everything
/// before returning.
pub async fn run(
    mut config: JobConfig,
    options: StandaloneOptions,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<StandaloneSummary> {
    let embedded = match options.embedded_kafka {
        Some(partitions) => {
            let kafka = &config.source.kafka;
            let dlq = kafka.dlq_topic();
            let broker =
                EmbeddedKafka::start(1, &[(kafka.topic.as_str(), partitions), (dlq.as_str(), 1)])?;
            tracing::info!(
                bootstrap = broker.bootstrap_servers(),
                topic = %kafka.topic,
                partitions,
                "embedded Kafka broker (librdkafka mock cluster) started"
            );
            config.source.kafka.brokers = broker.bootstrap_servers().to_string();
            Some(broker)
        }
        None => None,
    };
    let config = Arc::new(config);
    let metrics = Metrics::new();
    let health = Health::default();
    let (stop_http, stop_http_rx) = tokio::sync::oneshot::channel::<()>();
    let (addr, http_task) = http::serve(
        &config.metrics.bind,
        http::router(metrics.clone(), health.clone()),
        async move {
            let _ = stop_http_rx.await;
        },
    )
    .await?;
    tracing::info!(%addr, "metrics on http://{addr}/metrics, health on /healthz");

    let partitions = discover_partitions(&config).await?;
    let mut pipelines = Vec::with_capacity(options.taskmanagers);
    for _ in 0..options.taskmanagers.max(1) {
        pipelines.push(Pipeline::start(config.clone(), metrics.clone()).await?);
    }
    for (pipeline, owned) in pipelines
        .iter()
        .zip(spread_partitions(&partitions, pipelines.len()))
    {
        for partition in owned {
            pipeline
                .assign(Assignment {
                    partition,
                    generation: 1,
                    start_offset: None,
                })
                .await
                .with_context(|| format!("assigning partition {partition}"))?;
        }
    }
    tracing::info!(
        partitions = partitions.len(),
        taskmanagers = pipelines.len(),
        "job running"
    );

    let (stop_demo, stop_demo_rx) = tokio::sync::oneshot::channel::<()>();
    let demo = match options.demo_rate {
        Some(rate) => {
            let producer = base_client_config(&config.source.kafka)
                .set("linger.ms", "5")
                .set("queue.buffering.max.messages", "1000000")
                .create()
                .context("creating the demo producer")?;
            tracing::info!(rate, "producing demo traffic");
            Some(tokio::spawn(crate::demo::run_demo_producer(
                producer,
                config.source.kafka.topic.clone(),
                partitions.clone(),
                rate,
                async move {
                    let _ = stop_demo_rx.await;
                },
            )))
        }
        None => None,
    };

    let duration = options.duration;
    tokio::select! {
        _ = shutdown => tracing::info!("stop requested; flushing in-flight batches"),
        _ = sleep_opt(duration) => tracing::info!(?duration, "run duration reached; stopping"),
    }
    let _ = stop_demo.send(());
    let mut summary = StandaloneSummary::default();
    if let Some(demo) = demo {
        summary.demo_events_sent = demo.await.unwrap_or(0);
        drain(&pipelines, options.drain_timeout).await;
    }
    for pipeline in pipelines {
        pipeline.shutdown().await?;
    }
    let text = metrics.encode();
    let read = |name: &str| sample(&text, name, "").unwrap_or(0.0) as u64;
    summary.events_in = read("streamjob_events_in_total");
    summary.events_written = read("streamjob_events_written_total");
    summary.events_dead_lettered =
        crate::metrics::sample_sum(&text, "streamjob_events_dead_lettered_total") as u64;
    summary.redis_commands = read("streamjob_redis_commands_total");
    tracing::info!(?summary, "stopped");
    let _ = stop_http.send(());
    let _ = http_task.await;
    drop(embedded);
    Ok(summary)
}

async fn sleep_opt(duration: Option<Duration>) {
    match duration {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Waits until every partition's committed offset reached its high watermark (or the timeout).
async fn drain(pipelines: &[Pipeline], timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    // Let the watermark refresh see the last produced records first.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    while tokio::time::Instant::now() < deadline {
        let behind: i64 = pipelines
            .iter()
            .flat_map(|p| p.progress())
            .map(|p| p.lag.unwrap_or(1))
            .sum();
        if behind == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tracing::warn!("pipelines did not catch up before the drain timeout");
}

/// The topic's partitions from broker metadata, retrying while the broker is unreachable or the
/// topic does not exist yet.
async fn discover_partitions(config: &JobConfig) -> anyhow::Result<Vec<i32>> {
    let kafka = config.source.kafka.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let kafka = kafka.clone();
        let result = tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = consumer_config(&kafka).create()?;
            topic_partitions(&consumer, &kafka.topic, Duration::from_secs(5))
        })
        .await?;
        match result {
            Ok(partitions) if !partitions.is_empty() => return Ok(partitions),
            Ok(_) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(topic = %config.source.kafka.topic, "topic not found yet; retrying");
            }
            Err(err) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(%err, "cannot read topic metadata yet; retrying");
            }
            Ok(_) => anyhow::bail!("topic {} has no partitions", config.source.kafka.topic),
            Err(err) => return Err(err).context("reading topic metadata"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_partition_goes_to_exactly_one_owner_and_loads_differ_by_at_most_one() {
        for n_partitions in 0..13 {
            for owners in 1..6 {
                let partitions: Vec<i32> = (0..n_partitions).rev().collect();
                let spread = spread_partitions(&partitions, owners);
                assert_eq!(spread.len(), owners);
                let mut all: Vec<i32> = spread.iter().flatten().copied().collect();
                all.sort_unstable();
                assert_eq!(all, (0..n_partitions).collect::<Vec<_>>());
                let max = spread.iter().map(Vec::len).max().unwrap_or(0);
                let min = spread.iter().map(Vec::len).min().unwrap_or(0);
                assert!(max - min <= 1, "{spread:?}");
            }
        }
        assert_eq!(spread_partitions(&[3, 1, 0, 2], 0), vec![vec![0, 1, 2, 3]]);
    }
}
