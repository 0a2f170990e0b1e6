//! Merged batches leave Redis exactly as upstream's per-event command stream does.

mod redis_support;

use std::time::SystemTime;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis_support::*;
use streamjob_worker::sink::redis::Layout;
use streamjob_worker::testkit::redis::RedisServer;
use streamjob_worker::testkit::upstream::upstream_pipeline;
use streamjob_worker::transform::AnchorInfo;

const STATES: [i64; 11] = [10, 20, 22, 24, 30, 40, 50, 60, 64, 70, 40001];

/// Small populations so keys collide a lot within and across batches; some receivers are also
/// message keys (`Austin:MessageId:…` as an id) to exercise mixed TTL kinds on one list.
fn random_events(seed: u64, n: usize) -> Vec<AnchorInfo<'static>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let ids: Vec<String> = (0..rng.random_range(1..=4))
                .map(|_| match rng.random_range(0..20) {
                    0 => format!("\"Austin:MessageId:msg{}\"", rng.random_range(0..30)),
                    _ => format!("\"user{}\"", rng.random_range(0..60)),
                })
                .collect();
            let message = match rng.random_range(0..5) {
                0 => String::new(),
                _ => format!(r#","messageId":"msg{}""#, rng.random_range(0..30)),
            };
            let ts_field = if rng.random_bool(0.2) {
                "timestamp"
            } else {
                "logTimestamp"
            };
            event(&format!(
                r#"{{"businessId":{},"ids":[{}],"{ts_field}":{}{message},"state":{}}}"#,
                1000000120240101i64 + rng.random_range(0..6),
                ids.join(","),
                1_700_000_000_000i64 + i as i64,
                STATES[rng.random_range(0..STATES.len())],
            ))
        })
        .collect()
}

async fn check_equivalence(seed: u64, n: usize, batch_size: usize) {
    // The expiries checked below are tonight's midnight's: not in its last seconds.
    clear_of_midnight().await;
    let server = RedisServer::start().expect("redis-server");
    let merged = connect_sink(&server, "m:").await;
    let mut conn = raw(&server).await;
    let events = random_events(seed, n);
    let now = SystemTime::now();

    let started_ms = redis_time_ms(&mut conn).await;
    let epoch = merged.claim(0).await.expect("claim").epoch;
    let mut offset = 0i64;
    for chunk in events.chunks(batch_size) {
        let batch = batch_of(&merged, 0, epoch, offset, chunk, now);
        merged.apply(&batch).await.expect("apply");
        offset += chunk.len() as i64;
    }

    let upstream_layout = Layout::new("u:", "Asia/Shanghai", JOB, TOPIC).expect("layout");
    let pipe = upstream_pipeline(&upstream_layout, &events, now);
    let _: () = pipe.query_async(&mut conn).await.expect("replay upstream");
    // Relative TTLs start when each side's command runs: the two runs are this far apart at most.
    let tolerance_ms = redis_time_ms(&mut conn).await - started_ms + 1_000;

    let mut ours = dump(&mut conn, "m:").await;
    let theirs = dump(&mut conn, "u:").await;
    assert!(ours
        .remove(&format!("streamjob:{JOB}:fence:{TOPIC}:0"))
        .is_some());
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>(),
        "same keys"
    );
    assert!(ours.len() > 60, "the data set touches many keys");
    for (key, mine) in &ours {
        let reference = &theirs[key];
        assert_eq!(mine.content, reference.content, "content of {key}");
        // Upstream's EXPIRE has second resolution and ran after our batches.
        let drift = (mine.expire_at_ms - reference.expire_at_ms).abs();
        assert!(
            drift <= tolerance_ms,
            "{key}: expiry {} vs upstream {}",
            mine.expire_at_ms,
            reference.expire_at_ms
        );
    }
}

#[tokio::test]
async fn merged_batches_equal_upstreams_command_stream() {
    check_equivalence(1, 3000, 500).await;
}

#[tokio::test]
async fn merge_equivalence_holds_for_tiny_and_single_event_batches() {
    check_equivalence(2, 400, 1).await;
    check_equivalence(3, 400, 7).await;
}
