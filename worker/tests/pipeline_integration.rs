//! The pipeline end to end in one process: a real Kafka-protocol broker (librdkafka's mock
//! cluster on TCP ports), a real redis-server, real pipelines. Every test compares the full Redis
//! state with the state computed from the data set.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use streamjob_worker::config::JobConfig;
use streamjob_worker::demo::{EventGenerator, TrafficShape};
use streamjob_worker::metrics::{sample, sample_sum, Metrics};
use streamjob_worker::pipeline::{PartitionExit, Pipeline, PipelineOptions};
use streamjob_worker::sink::redis::epoch_floor;
use streamjob_worker::testkit;
use streamjob_worker::testkit::clock::midday_time_zone;
use streamjob_worker::testkit::kafka::{self, EmbeddedKafka, ProduceMode};
use streamjob_worker::testkit::redis::{RedisOptions, RedisServer};
use streamjob_worker::testkit::trace_state::{
    fence_offsets, keys_without_ttl, Expected, TraceState,
};

const TOPIC: &str = "trace-it";
const DLQ: &str = "trace-it-dlq";
const JOB: &str = "it";

struct Env {
    redis: RedisServer,
    kafka: EmbeddedKafka,
    partitions: i32,
}

impl Env {
    fn start(partitions: i32, redis: RedisOptions) -> Self {
        Self {
            redis: RedisServer::start_with(redis).expect("redis-server starts"),
            kafka: kafka::start_mock(TOPIC, partitions, DLQ),
            partitions,
        }
    }

    fn config(&self, max_events: usize, linger: Duration) -> Arc<JobConfig> {
        let mut config = JobConfig::default();
        config.job.name = JOB.into();
        config.source.kafka.brokers = self.kafka.bootstrap_servers().into();
        config.source.kafka.topic = TOPIC.into();
        config.source.kafka.dlq_topic = Some(DLQ.into());
        config
            .source
            .kafka
            .properties
            .insert("fetch.wait.max.ms".into(), "10".into());
        config.sink.redis.url = self.redis.url();
        config.sink.redis.time_zone = midday_time_zone();
        config.batch.max_events = max_events;
        config.batch.linger = linger;
        config.validate().expect("valid config");
        Arc::new(config)
    }

    fn produce(&self, payloads: &[Vec<u8>]) {
        kafka::produce(
            self.kafka.bootstrap_servers(),
            TOPIC,
            self.partitions,
            payloads,
            ProduceMode::Batched,
        )
        .expect("data set produced");
        kafka::assert_nothing_truncated(self.kafka.bootstrap_servers(), TOPIC, self.partitions);
    }

    fn fences(&self) -> Vec<Option<i64>> {
        fence_offsets(&self.redis.url(), "", JOB, TOPIC, self.partitions).expect("fences readable")
    }

    /// Waits until every partition's fence reached its high watermark.
    async fn wait_caught_up(&self, timeout: Duration) {
        let ends = kafka::high_watermarks(self.kafka.bootstrap_servers(), TOPIC, self.partitions)
            .expect("watermarks");
        let deadline = Instant::now() + timeout;
        loop {
            let fences = self.fences();
            if fences
                .iter()
                .zip(&ends)
                .all(|(f, e)| *e == 0 || *f == Some(*e))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not caught up after {timeout:?}: fences {fences:?}, ends {ends:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn assert_state(&self, payloads: &[Vec<u8>]) -> Expected {
        let expected = Expected::from_payloads("", payloads.iter().map(Vec::as_slice));
        let actual = TraceState::read(&self.redis.url()).expect("redis readable");
        let diff = expected.state.diff(&actual, 10);
        assert!(
            diff.is_empty(),
            "redis state differs from the data set:\n{}",
            diff.join("\n")
        );
        assert_eq!(actual.list_values(), expected.state.list_values());
        let no_ttl = keys_without_ttl(&self.redis.url()).expect("ttls readable");
        assert!(
            no_ttl.is_empty(),
            "keys without TTL: {:?}",
            &no_ttl[..no_ttl.len().min(5)]
        );
        expected
    }
}

fn data_set(seed: u64, n: usize, malformed_ppm: u32) -> Vec<Vec<u8>> {
    let mut generator = EventGenerator::new(
        seed,
        TrafficShape {
            users: 5_000,
            messages: 3_000,
            malformed_ppm,
            ..TrafficShape::default()
        },
    );
    (0..n).map(|_| generator.next_payload()).collect()
}

/// Waits (at most 30 s) until the pipeline has read `events` records.
async fn wait_for_events_in(metrics: &Metrics, events: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while sample(&metrics.encode(), "streamjob_events_in_total", "") != Some(events as f64) {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_events_land_exactly_in_redis_and_malformed_records_go_to_the_dlq() {
    let env = Env::start(4, RedisOptions::default());
    let payloads = data_set(11, 20_000, 5_000);
    env.produce(&payloads);
    let config = env.config(500, Duration::from_millis(20));
    let metrics = Metrics::new();
    let a = Pipeline::start(config.clone(), metrics.clone())
        .await
        .expect("pipeline a");
    let b = Pipeline::start(config.clone(), metrics.clone())
        .await
        .expect("pipeline b");
    testkit::assign_all(&a, [0, 2]).await;
    testkit::assign_all(&b, [1, 3]).await;
    env.wait_caught_up(Duration::from_secs(60)).await;

    let expected = env.assert_state(&payloads);
    assert!(expected.malformed > 50, "data set has malformed records");

    // Every malformed record is in the DLQ once, with its original bytes and provenance.
    let dlq = kafka::read_all(env.kafka.bootstrap_servers(), DLQ, 1).expect("dlq readable");
    assert_eq!(dlq.len(), expected.malformed);
    let positions =
        kafka::read_all(env.kafka.bootstrap_servers(), TOPIC, 4).expect("source readable");
    for record in &dlq {
        let partition: i32 = record.header("source.partition").unwrap().parse().unwrap();
        let offset: i64 = record.header("source.offset").unwrap().parse().unwrap();
        assert_eq!(
            record.key_str(),
            Some(format!("{partition}:{offset}").as_str())
        );
        assert_eq!(record.header("source.topic"), Some(TOPIC));
        assert!(!record.header("reason").unwrap_or("").is_empty());
        let source = positions
            .iter()
            .find(|r| r.partition == partition && r.offset == offset)
            .expect("source record exists");
        assert_eq!(source.payload, record.payload, "original bytes kept");
        assert!(streamjob_worker::transform::decode(&record.payload).is_err());
    }

    let progress: Vec<_> = a.progress().into_iter().chain(b.progress()).collect();
    assert_eq!(progress.len(), 4);
    assert!(progress
        .iter()
        .all(|p| p.epoch == epoch_floor(1) && p.committed_offset.is_some()));
    assert_eq!(a.revoke(0).await.expect("revoked"), env.fences()[0]);
    a.shutdown().await.expect("a stops");
    b.shutdown().await.expect("b stops");

    let text = metrics.encode();
    assert_eq!(
        sample_sum(&text, "streamjob_events_dead_lettered_total") as usize,
        expected.malformed
    );
    assert_eq!(
        sample(&text, "streamjob_events_written_total", "").unwrap() as usize,
        expected.events
    );
    assert_eq!(
        sample(&text, "streamjob_events_in_total", "").unwrap() as usize,
        payloads.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_dead_letter_is_acknowledged_before_the_fence_passes_it() {
    let env = Env::start(1, RedisOptions::default());
    let mut payloads = data_set(5, 300, 0);
    payloads[120] = b"{\"businessId\":\"oops\"}".to_vec();
    env.produce(&payloads);
    // The DLQ broker refuses every produce: the batch holding offset 120 must not be applied.
    env.kafka.cluster().request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 500],
    );
    let metrics = Metrics::new();
    let pipeline = Pipeline::start(env.config(50, Duration::from_millis(10)), metrics.clone())
        .await
        .expect("pipeline");
    testkit::assign_all(&pipeline, [0]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.fences()[0] != Some(100)
        || sample(
            &metrics.encode(),
            "streamjob_kafka_errors_total",
            "kind=\"dlq_delivery\"",
        )
        .is_none()
    {
        assert!(Instant::now() < deadline, "fence {:?}", env.fences());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        env.fences()[0],
        Some(100),
        "fence passed an unacknowledged dead letter"
    );
    assert!(pipeline.is_retrying(), "partition paused while retrying");
    assert!(kafka::read_all(env.kafka.bootstrap_servers(), DLQ, 1)
        .unwrap()
        .is_empty());

    env.kafka
        .cluster()
        .clear_request_errors(RDKafkaApiKey::Produce);
    env.wait_caught_up(Duration::from_secs(60)).await;
    let dlq = kafka::read_all(env.kafka.bootstrap_servers(), DLQ, 1).expect("dlq readable");
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].key_str(), Some("0:120"));
    assert_eq!(dlq[0].payload, payloads[120]);
    env.assert_state(&payloads);
    assert!(!pipeline.is_retrying());
    pipeline.shutdown().await.expect("stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_zombie_owner_is_fenced_and_nothing_is_applied_twice() {
    let env = Env::start(1, RedisOptions::default());
    let payloads = data_set(21, 8_000, 1_000);
    env.produce(&payloads[..4_000]);
    let config = env.config(200, Duration::from_millis(10));
    let old = Pipeline::start(config.clone(), Metrics::new())
        .await
        .expect("old owner");
    testkit::assign_all(&old, [0]).await;
    env.wait_caught_up(Duration::from_secs(60)).await;

    // A new owner claims the partition while the old one still runs (a network partition).
    let new = Pipeline::start(config, Metrics::new())
        .await
        .expect("new owner");
    testkit::assign_all(&new, [0]).await;
    env.produce(&payloads[4_000..]);
    env.wait_caught_up(Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while old.stopped_partitions().is_empty() {
        assert!(Instant::now() < deadline, "old owner never fenced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(matches!(
        old.stopped_partitions()[0],
        (0, PartitionExit::Fenced { stored_epoch }) if stored_epoch == epoch_floor(1) + 1
    ));
    assert_eq!(new.progress()[0].epoch, epoch_floor(1) + 1);
    env.assert_state(&payloads);
    old.shutdown().await.expect("old stops");
    new.shutdown().await.expect("new stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_shutdown_flushes_the_in_flight_batch() {
    let env = Env::start(2, RedisOptions::default());
    let payloads = data_set(3, 600, 10_000);
    env.produce(&payloads);
    // Neither the size nor the time limit would ever flush this batch.
    let metrics = Metrics::new();
    let pipeline = Pipeline::start(
        env.config(1_000_000, Duration::from_secs(3600)),
        metrics.clone(),
    )
    .await
    .expect("pipeline");
    testkit::assign_all(&pipeline, [0, 1]).await;
    wait_for_events_in(&metrics, 600, "records not consumed").await;
    assert_eq!(
        env.fences(),
        vec![Some(0), Some(0)],
        "nothing applied before the flush (the claims started the fences at 0)"
    );
    pipeline.shutdown().await.expect("graceful stop");
    assert_eq!(env.fences(), vec![Some(300), Some(300)]);
    env.assert_state(&payloads);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_redis_outage_pauses_the_partition_and_loses_nothing() {
    let mut env = Env::start(
        2,
        RedisOptions {
            persistence: true,
            ..RedisOptions::default()
        },
    );
    let payloads = data_set(8, 6_000, 2_000);
    env.produce(&payloads[..3_000]);
    let metrics = Metrics::new();
    let pipeline = Pipeline::start(env.config(300, Duration::from_millis(10)), metrics.clone())
        .await
        .expect("pipeline");
    testkit::assign_all(&pipeline, [0, 1]).await;
    env.wait_caught_up(Duration::from_secs(60)).await;

    env.redis.stop();
    env.produce(&payloads[3_000..]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pipeline.is_retrying() {
        assert!(
            Instant::now() < deadline,
            "pipeline never noticed the outage"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    env.redis.restart().expect("redis restarts with its data");
    env.wait_caught_up(Duration::from_secs(90)).await;
    env.assert_state(&payloads);
    let text = metrics.encode();
    assert!(
        sample(
            &text,
            "streamjob_redis_errors_total",
            "kind=\"unavailable\""
        )
        .unwrap_or(0.0)
            > 0.0
    );
    assert!(sample(&text, "streamjob_retries_total", "").unwrap_or(0.0) > 0.0);
    pipeline.shutdown().await.expect("stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_revoke_during_a_redis_outage_gives_up_after_the_stop_timeout() {
    let mut env = Env::start(
        2,
        RedisOptions {
            persistence: true,
            ..RedisOptions::default()
        },
    );
    let payloads = data_set(12, 600, 10_000);
    env.produce(&payloads);
    let mut config = (*env.config(1_000_000, Duration::from_secs(3600))).clone();
    config.batch.stop_timeout = Duration::from_millis(500);
    let metrics = Metrics::new();
    let pipeline = Pipeline::start(Arc::new(config), metrics.clone())
        .await
        .expect("pipeline");
    testkit::assign_all(&pipeline, [0, 1]).await;
    wait_for_events_in(&metrics, 600, "records not consumed").await;

    // A move (revoke) while Redis is down ends, without the batch and without a committed offset.
    env.redis.stop();
    let committed = tokio::time::timeout(Duration::from_secs(30), pipeline.revoke(0))
        .await
        .expect("the revoke gives up instead of retrying for ever")
        .expect("revoked");
    assert_eq!(committed, Some(0), "where the claim started it");
    assert_eq!(
        sample(
            &metrics.encode(),
            "streamjob_batches_total",
            "outcome=\"abandoned\""
        ),
        Some(1.0)
    );

    // The partition's next owner (here: the same process again) applies it exactly once.
    env.redis.restart().expect("redis restarts with its data");
    assert_eq!(
        env.fences(),
        vec![Some(0), Some(0)],
        "nothing applied during the outage"
    );
    testkit::assign_all(&pipeline, [0]).await;
    wait_for_events_in(&metrics, 900, "partition 0 not read again").await;
    pipeline.shutdown().await.expect("graceful stop");
    assert_eq!(env.fences(), vec![Some(300), Some(300)]);
    env.assert_state(&payloads);
}

/// A payload of one event of template `business_id`, one receiver, at `ts`.
fn event_at(i: usize, business_id: i64, state: i64, ts: i64) -> Vec<u8> {
    format!(
        "{{\"businessId\":{business_id},\"ids\":[\"u{i}\"],\"logTimestamp\":{ts},\"messageId\":\"m{i}\",\"state\":{state}}}"
    )
    .into_bytes()
}

/// The event-time series through the real pipeline with per-minute counts known in advance:
/// out-of-order events (within maxOutOfOrderness) land in their minutes; events for a minute that
/// is final by then are late; an absurd timestamp is skewed; the clock survives a new owner (it is
/// in the fence), so the new owner decides lateness as the old one would have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_the_series_counts_minutes_and_late_events_as_known_in_advance() {
    use streamjob_worker::testkit::trace_state::SeriesState;
    const B: i64 = 1_000_000_120_240_101;
    let env = Env::start(1, RedisOptions::default());
    let now = streamjob_worker::sink::redis::system_time_ms(std::time::SystemTime::now());
    let m0 = (now - 20 * 60_000).div_euclid(60_000) * 60_000;
    // Phase 1: minutes m0..m4, 100 events each of state 60, each up to 4 s out of order; 10 of
    // state 70 in minute m4.
    let mut payloads = Vec::new();
    for i in 0..500usize {
        let t = m0 + (i as i64) * 600; // 100 per minute
        let jitter = (i as i64 * 7919) % 4_000;
        payloads.push(event_at(i, B, 60, (t - jitter).max(m0)));
    }
    for i in 0..10usize {
        payloads.push(event_at(1_000 + i, B, 70, m0 + 4 * 60_000 + 500));
    }
    env.produce(&payloads);
    let config = env.config(50, Duration::from_millis(20));
    let metrics = Metrics::new();
    let pipeline = Pipeline::start(config.clone(), metrics.clone())
        .await
        .expect("pipeline");
    testkit::assign_all(&pipeline, [0]).await;
    env.wait_caught_up(Duration::from_secs(60)).await;
    let expected = env.assert_state(&payloads);
    let series = SeriesState::read(&env.redis.url(), "", JOB).expect("series readable");
    let diff = series.diff(&expected, "", true, 10);
    assert!(diff.is_empty(), "series differs:\n{}", diff.join("\n"));
    let minutes: Vec<i64> = (0..5)
        .map(|m| series.hashes[&B][&format!("{}:60", m0 / 60_000 + m)])
        .collect();
    let known: Vec<i64> = (0..5)
        .map(|m| {
            (0..500i64)
                .filter(|i| {
                    let ts = (m0 + i * 600 - (i * 7919) % 4_000).max(m0);
                    (ts - m0) / 60_000 == m
                })
                .count() as i64
        })
        .collect();
    assert_eq!(minutes, known);
    assert_eq!(series.late_and_skewed(), (0, 0));

    // Phase 2 (the clock is at ~m5): 7 events for m0 (final since m2 + 1 min) are late, 3 for
    // m4 (open until m6) are not, one from tomorrow is skewed.
    let mut late = Vec::new();
    for i in 0..7usize {
        late.push(event_at(2_000 + i, B, 60, m0 + 1_000));
    }
    for i in 0..3usize {
        late.push(event_at(3_000 + i, B, 60, m0 + 4 * 60_000 + 10));
    }
    late.push(event_at(4_000, B, 64, now + 24 * 3600 * 1000));
    env.produce(&late);
    env.wait_caught_up(Duration::from_secs(60)).await;
    let series = SeriesState::read(&env.redis.url(), "", JOB).expect("series readable");
    let fields = &series.hashes[&B];
    assert_eq!(fields.get("late:60"), Some(&7));
    assert_eq!(fields.get("skewed:64"), Some(&1));
    assert_eq!(
        fields[&format!("{}:60", m0 / 60_000 + 4)],
        known[4] + 3,
        "m4 still open"
    );
    assert_eq!(
        fields[&format!("{}:60", m0 / 60_000)],
        known[0],
        "m0 closed"
    );
    let all: Vec<Vec<u8>> = payloads.iter().chain(&late).cloned().collect();
    let expected = env.assert_state(&all);
    let diff = series.diff(&expected, "", false, 10);
    assert!(diff.is_empty(), "series inconsistent:\n{}", diff.join("\n"));
    let text = metrics.encode();
    assert_eq!(
        sample(&text, "streamjob_series_events_total", "kind=\"late\""),
        Some(7.0)
    );
    assert_eq!(
        sample(&text, "streamjob_series_events_total", "kind=\"skewed\""),
        Some(1.0)
    );

    // Phase 3: a new owner (new claim) restores the clock from the fence: m1 is final for it.
    pipeline.shutdown().await.expect("stops");
    let pipeline = Pipeline::start(config, Metrics::new())
        .await
        .expect("pipeline");
    testkit::assign_all(&pipeline, [0]).await;
    let more: Vec<Vec<u8>> = (0..5usize)
        .map(|i| event_at(5_000 + i, B, 60, m0 + 60_000 + 5))
        .collect();
    env.produce(&more);
    env.wait_caught_up(Duration::from_secs(60)).await;
    let series = SeriesState::read(&env.redis.url(), "", JOB).expect("series readable");
    assert_eq!(
        series.hashes[&B].get("late:60"),
        Some(&12),
        "the restored clock closes m1"
    );
    pipeline.shutdown().await.expect("stops");
}

/// A just-assigned partition's lag is known at once, not after a full watermark refresh
/// interval: the StreamJob's LAG column used to stay empty for the first seconds of a job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_partition_reports_its_lag_long_before_the_first_full_watermark_refresh() {
    let env = Env::start(2, RedisOptions::default());
    env.produce(&data_set(5, 200, 0));
    let refresh_every = Duration::from_secs(120);
    let pipeline = Pipeline::start_with(
        env.config(50, Duration::from_millis(10)),
        Metrics::new(),
        PipelineOptions {
            watermark_interval: refresh_every,
            ..PipelineOptions::default()
        },
    )
    .await
    .expect("pipeline");
    let assigned = Instant::now();
    testkit::assign_all(&pipeline, [0, 1]).await;
    // Generous for a loaded machine, and still far below the refresh interval.
    let deadline = assigned + Duration::from_secs(30);
    loop {
        let progress = pipeline.progress();
        if progress.len() == 2
            && progress
                .iter()
                .all(|p| p.high_watermark.is_some() && p.lag.is_some())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lag unknown {:?} after assignment (full refresh every {refresh_every:?}): {progress:?}",
            assigned.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pipeline.shutdown().await.expect("pipeline stops");
}

/// Redis loses the last batches of a minute after the job watermark has closed it: the partition
/// rewinds to the fence and decides the re-read events with the job watermark its fence's batch
/// decided with, so they go back into their minute (as before the loss), not into `late`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_events_redis_lost_go_back_into_their_minute_after_the_rewind() {
    use streamjob_worker::testkit::trace_state::SeriesState;
    const B: i64 = 1_000_000_220_240_101;
    let mut env = Env::start(1, RedisOptions::default());
    let now = streamjob_worker::sink::redis::system_time_ms(std::time::SystemTime::now());
    let m0 = (now - 30 * 60_000).div_euclid(60_000) * 60_000;
    let minute = |events: std::ops::Range<usize>| -> Vec<Vec<u8>> {
        events
            .map(|i| event_at(i, B, 60, m0 + 1_000 + i as i64))
            .collect()
    };
    let config = env.config(20, Duration::from_millis(10));
    let pipeline = Pipeline::start(config, Metrics::new())
        .await
        .expect("pipeline");
    testkit::assign_all(&pipeline, [0]).await;
    env.produce(&minute(0..100));
    env.wait_caught_up(Duration::from_secs(60)).await;
    let snapshot_dir = tempfile::tempdir().expect("tempdir");
    let snapshot = snapshot_dir.path().join("before-loss.rdb");
    env.redis.snapshot(&snapshot).expect("snapshot");
    env.produce(&minute(100..200));
    env.wait_caught_up(Duration::from_secs(60)).await;
    let field = format!("{}:60", m0 / 60_000);
    let count = |env: &Env| {
        let series = SeriesState::read(&env.redis.url(), "", JOB).expect("series readable");
        let fields = series.hashes.get(&B).cloned().unwrap_or_default();
        (fields.get(&field).copied(), fields.get("late:60").copied())
    };
    assert_eq!(count(&env), (Some(200), None));
    // The job closes the minute; then Redis comes back from the snapshot without the last 100.
    pipeline.learn_job_watermark(Some(m0 + 10 * 60_000));
    env.redis.restore(&snapshot).expect("restored");
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&env) != (Some(200), None) {
        assert!(
            Instant::now() < deadline,
            "after the rewind: {:?} (window, late)",
            count(&env)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(pipeline.progress()[0].rewinds, 1);
    pipeline.shutdown().await.expect("stops");
}
