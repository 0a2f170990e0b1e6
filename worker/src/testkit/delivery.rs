//! One round of the pipeline over a connection under test (TLS, SASL, …): produce a small data
//! set through a client with the connection's settings, run the pipeline until every partition's
//! fence stands at its end, and check that Redis holds exactly what the events make.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::kafka::{self, ProduceMode};
use super::trace_state::{fence_offsets, Expected, TraceState};
use crate::config::JobConfig;
use crate::demo::{EventGenerator, TrafficShape};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;

/// 600 valid events over 300 receivers and 200 messages, from generator seed `seed`.
pub fn small_data_set(seed: u64) -> Vec<Vec<u8>> {
    let mut generator = EventGenerator::new(
        seed,
        TrafficShape {
            users: 300,
            messages: 200,
            malformed_ppm: 0,
            ..TrafficShape::default()
        },
    );
    (0..600).map(|_| generator.next_payload()).collect()
}

/// Produces `payloads` (one record per request) through a client with `properties` and returns
/// each partition's end offset, from the delivery reports.
pub fn produce_and_ends(
    bootstrap: &str,
    properties: &[(String, String)],
    topic: &str,
    partitions: i32,
    payloads: &[Vec<u8>],
) -> Vec<i64> {
    let borrowed: Vec<(&str, &str)> = properties
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let delivered = kafka::produce_with(
        bootstrap,
        &borrowed,
        topic,
        partitions,
        payloads,
        ProduceMode::OnePerRequest,
    )
    .expect("produced");
    let mut ends = vec![0i64; partitions as usize];
    for (partition, offset) in delivered {
        let end = &mut ends[partition as usize];
        *end = (*end).max(offset + 1);
    }
    ends
}

/// Runs `config`'s pipeline on partitions `0..ends.len()` until each fence stands at its end
/// (90 s at most), stops it, and asserts that Redis holds exactly what `payloads` make.
pub async fn apply_all_and_check(
    config: JobConfig,
    ends: &[i64],
    payloads: &[Vec<u8>],
    over: &str,
) {
    let redis_url = config.sink.redis.url.clone();
    let (job, topic) = (config.job.name.clone(), config.source.kafka.topic.clone());
    let partitions = ends.len() as i32;
    let pipeline = Pipeline::start(Arc::new(config), Metrics::new())
        .await
        .expect("pipeline starts");
    super::assign_all(&pipeline, 0..partitions).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let fences =
            fence_offsets(&redis_url, "", &job, &topic, partitions).expect("fences readable");
        if fences.iter().zip(ends).all(|(f, e)| *f == Some(*e)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "over {over}: fences {fences:?}, ends {ends:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pipeline.shutdown().await.expect("stops");
    let expected = Expected::from_payloads("", payloads.iter().map(Vec::as_slice));
    let actual = TraceState::read(&redis_url).expect("state readable");
    let diff = expected.state.diff(&actual, 10);
    assert!(diff.is_empty(), "over {over}:\n{}", diff.join("\n"));
}

/// Asks for `topic`'s metadata through a client with `properties`: Ok (its topic count) once the
/// broker answered, the client's error otherwise (a refused handshake or login).
pub fn metadata(
    bootstrap: &str,
    properties: &[(String, String)],
    topic: &str,
) -> Result<usize, String> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap);
    for (key, value) in properties {
        cfg.set(key, value);
    }
    let consumer: BaseConsumer = cfg.create().map_err(|e| e.to_string())?;
    consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .map(|m| m.topics().len())
        .map_err(|e| e.to_string())
}
