//! Standalone mode: the whole job in one process, for a laptop or a small deployment. Optionally
//! with an embedded broker (librdkafka's mock cluster) and demo traffic.
//!
//! Runs an in-process jobmanager (with its REST API on `jobmanager.bind`, or an ephemeral port when
//! that is taken) and `--taskmanagers N` in-process taskmanagers, which get their partitions from
//! it exactly as separate processes would.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::BaseConsumer;

use crate::config::JobConfig;
use crate::embedded_kafka::EmbeddedKafka;
use crate::http::{self, Health};
use crate::jobmanager::{JobManager, JobManagerOptions, KnownPartitions};
use crate::metrics::{sample, Metrics};
use crate::source::{base_client_config, consumer_config, topic_partitions};
use crate::taskmanager::{TaskManager, TaskManagerOptions};

/// Flags of `streamjob-worker standalone`.
#[derive(Debug, Clone)]
pub struct StandaloneOptions {
    /// In-process pipelines (each is what one taskmanager process would run).
    pub taskmanagers: usize,
    /// Host a mock broker in-process with this many partitions of the job's topic.
    pub embedded_kafka: Option<i32>,
    /// Produce demo traffic at this many events per second.
    pub demo_rate: Option<u64>,
    /// Stop the demo traffic after this many events.
    pub demo_events: Option<u64>,
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
            demo_events: None,
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

    tokio::pin!(shutdown);
    // A stop request during start-up ends the run at once: nothing was applied that a restart
    // would not redo exactly once.
    let started = tokio::select! {
        started = start_pipelines(&config, &metrics, options.taskmanagers, addr) => Some(started?),
        _ = &mut shutdown => None,
    };
    let Some(((jobmanager, taskmanagers), partitions)) = started else {
        tracing::info!("stop requested during start-up");
        let _ = stop_http.send(());
        let _ = http_task.await;
        return Ok(StandaloneSummary::default());
    };

    let (stop_demo, stop_demo_rx) = tokio::sync::oneshot::channel::<()>();
    let demo = match options.demo_rate {
        Some(rate) => {
            let producer = base_client_config(&config.source.kafka)
                .set("linger.ms", "5")
                .set("queue.buffering.max.messages", "1000000")
                .create()
                .context("creating the demo producer")?;
            // Validated with the config; the demo's businessIds carry the job's local day.
            let time_zone: chrono_tz::Tz = config.sink.redis.time_zone.parse().map_err(|_| {
                anyhow::anyhow!(
                    "sink.redis.timeZone {:?} is not an IANA time zone",
                    config.sink.redis.time_zone
                )
            })?;
            tracing::info!(rate, "producing demo traffic");
            Some(tokio::spawn(crate::demo::run_demo_producer(
                producer,
                config.source.kafka.topic.clone(),
                partitions.clone(),
                time_zone,
                rate,
                options.demo_events,
                async move {
                    let _ = stop_demo_rx.await;
                },
            )))
        }
        None => None,
    };

    let duration = options.duration;
    tokio::select! {
        _ = &mut shutdown => tracing::info!("stop requested; flushing in-flight batches"),
        _ = sleep_opt(duration) => tracing::info!(?duration, "run duration reached; stopping"),
    }
    let _ = stop_demo.send(());
    let mut summary = StandaloneSummary::default();
    if let Some(demo) = demo {
        summary.demo_events_sent = demo.await.unwrap_or(0);
        drain(&taskmanagers, options.drain_timeout).await;
    }
    for taskmanager in taskmanagers {
        taskmanager.shutdown().await?;
    }
    jobmanager.shutdown();
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

/// Starts the in-process jobmanager and `taskmanagers` in-process taskmanagers; the jobmanager
/// assigns them the topic's partitions exactly as it does for separate processes.
async fn start_pipelines(
    config: &Arc<JobConfig>,
    metrics: &Metrics,
    taskmanagers: usize,
    metrics_addr: std::net::SocketAddr,
) -> anyhow::Result<((JobManager, Vec<TaskManager>), Vec<i32>)> {
    let partitions = discover_partitions(config).await?;
    let (jobmanager, config) = start_jobmanager(config.clone(), partitions.len() as u32).await?;
    let mut started = Vec::with_capacity(taskmanagers.max(1));
    for i in 0..taskmanagers.max(1) {
        let options = TaskManagerOptions {
            id: format!("standalone-{i}"),
            address: Some(metrics_addr.to_string()),
            revision: None,
        };
        started.push(TaskManager::start(config.clone(), options, metrics.clone()).await?);
    }
    tracing::info!(
        partitions = partitions.len(),
        taskmanagers = started.len(),
        jobmanager = %jobmanager.local_addr(),
        "job running"
    );
    Ok(((jobmanager, started), partitions))
}

async fn sleep_opt(duration: Option<Duration>) {
    match duration {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Waits until every partition's committed offset reached its high watermark (or the timeout).
async fn drain(taskmanagers: &[TaskManager], timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    // Let the watermark refresh see the last produced records first.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    while tokio::time::Instant::now() < deadline {
        let behind: i64 = taskmanagers
            .iter()
            .flat_map(|t| t.progress())
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

/// Starts the in-process jobmanager; returns it and the config its taskmanagers use (pointing at
/// it). Checkpoints go to `checkpoint.dir`, or a temp directory when that cannot be created (a
/// laptop without `/var/lib/streamjob`).
async fn start_jobmanager(
    mut config: Arc<JobConfig>,
    partition_count: u32,
) -> anyhow::Result<(JobManager, Arc<JobConfig>)> {
    if let Err(err) = std::fs::create_dir_all(&config.checkpoint.dir) {
        let fallback = std::env::temp_dir().join(format!("streamjob-{}", config.job.name));
        tracing::warn!(dir = %config.checkpoint.dir.display(), %err, fallback = %fallback.display(), "checkpoint directory unusable; using a temp directory");
        Arc::make_mut(&mut config).checkpoint.dir = fallback;
    }
    let listener = match tokio::net::TcpListener::bind(&config.jobmanager.bind).await {
        Ok(listener) => listener,
        Err(err) => {
            tracing::warn!(bind = %config.jobmanager.bind, %err, "jobmanager port taken; using an ephemeral port");
            tokio::net::TcpListener::bind("127.0.0.1:0").await?
        }
    };
    let options = JobManagerOptions {
        startup_grace: Some(Duration::ZERO),
        ..JobManagerOptions::from_config(&config)
    };
    let discovery = Arc::new(KnownPartitions::new(partition_count, &config.source.kafka));
    let jobmanager = JobManager::start(config.clone(), options, discovery, listener).await?;
    let port = jobmanager.local_addr().port();
    Arc::make_mut(&mut config).jobmanager.url = format!("http://127.0.0.1:{port}");
    tracing::info!(url = %config.jobmanager.url, "REST API of the in-process jobmanager");
    // On stdout too, for the person who started it: the dashboard and the Trace page.
    println!(
        "streamjob dashboard: {url}/  trace: {url}/trace  REST API: {url}/jobs/{job}",
        url = config.jobmanager.url,
        job = config.job.name
    );
    Ok((jobmanager, config))
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
