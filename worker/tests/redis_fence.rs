//! The partition fence: replays, zombies, overlaps, skipped offsets, resumption.

mod redis_support;

use std::time::SystemTime;

use redis_support::*;
use streamjob_worker::sink::redis::{ApplyOutcome, Fence, SinkError};
use streamjob_worker::testkit::redis::RedisServer;
use streamjob_worker::transform::AnchorInfo;

fn events(n: usize, tag: &str) -> Vec<AnchorInfo<'static>> {
    (0..n)
        .map(|i| {
            event(&format!(
                r#"{{"businessId":1000000120240101,"ids":["{tag}{i}","shared"],"logTimestamp":{i},"messageId":"{tag}m{i}","state":60}}"#
            ))
        })
        .collect()
}

#[tokio::test]
async fn a_replayed_batch_is_skipped_and_changes_nothing() {
    let server = RedisServer::start().expect("redis-server");
    let sink = connect_sink(&server, "").await;
    let mut conn = raw(&server).await;
    let epoch = sink.claim(3).await.expect("claim").epoch;
    let batch = batch_of(&sink, 3, epoch, 100, &events(5, "a"), SystemTime::now());
    assert_eq!(batch.first_offset, 100);
    assert_eq!(batch.next_offset, 105);
    let first = sink.apply(&batch).await.expect("apply");
    assert_eq!(applied_events(&first), 5);
    let before = dump(&mut conn, "").await;
    assert_eq!(
        sink.apply(&batch).await.expect("replay"),
        ApplyOutcome::AlreadyApplied
    );
    // An older batch (a restart that re-read from an older checkpoint) is skipped too.
    let older = batch_of(&sink, 3, epoch, 98, &events(7, "a"), SystemTime::now());
    assert_eq!(
        sink.apply(&older).await.expect("older"),
        ApplyOutcome::AlreadyApplied
    );
    let after = dump(&mut conn, "").await;
    assert_eq!(before, after);
    let shared: i64 = query(&mut conn, &["LLEN", "shared"]).await;
    assert_eq!(shared, 5, "every event pushed once");
    assert_eq!(
        sink.read_fence(3).await.expect("fence"),
        Some(Fence {
            epoch,
            next_offset: Some(105),
            max_event_ms: None,
            final_watermark_ms: None,
        })
    );
}

#[tokio::test]
async fn a_zombie_owner_is_fenced_and_writes_nothing() {
    let server = RedisServer::start().expect("redis-server");
    let sink_a = connect_sink(&server, "").await;
    let sink_b = connect_sink(&server, "").await;
    let mut conn = raw(&server).await;

    let a = sink_a.claim(0).await.expect("A claims");
    assert_eq!(a.epoch, 1);
    let b = sink_b.claim(0).await.expect("B claims");
    assert_eq!(b.epoch, 2);
    assert_eq!(b.next_offset, None);

    let zombie = batch_of(&sink_a, 0, a.epoch, 0, &events(3, "z"), SystemTime::now());
    let err = sink_a.apply(&zombie).await.expect_err("A is fenced");
    assert!(
        matches!(
            err,
            SinkError::Fenced {
                partition: 0,
                stored_epoch: 2,
                our_epoch: 1
            }
        ),
        "{err}"
    );
    assert!(!err.is_retryable());
    let keys = dump(&mut conn, "").await;
    assert_eq!(
        keys.keys().collect::<Vec<_>>(),
        vec!["streamjob:trace:fence:austinTraceLog:0"],
        "the zombie wrote nothing"
    );

    let live = batch_of(&sink_b, 0, b.epoch, 0, &events(3, "b"), SystemTime::now());
    assert_eq!(
        applied_events(&sink_b.apply(&live).await.expect("B applies")),
        3
    );
    // A still cannot write, even a batch that would come after B's.
    let later = batch_of(&sink_a, 0, a.epoch, 3, &events(2, "z"), SystemTime::now());
    assert!(matches!(
        sink_a.apply(&later).await,
        Err(SinkError::Fenced { .. })
    ));
    let shared: i64 = query(&mut conn, &["LLEN", "shared"]).await;
    assert_eq!(shared, 3);
    let zombie_key: i64 = query(&mut conn, &["EXISTS", "z0"]).await;
    assert_eq!(zombie_key, 0);
}

#[tokio::test]
async fn a_new_owner_resumes_where_the_fence_says() {
    let server = RedisServer::start().expect("redis-server");
    let sink = connect_sink(&server, "").await;
    let first = sink.claim(1).await.expect("claim");
    let batch = batch_of(&sink, 1, first.epoch, 0, &events(4, "r"), SystemTime::now());
    sink.apply(&batch).await.expect("apply");
    let second = sink.claim(1).await.expect("re-claim");
    assert_eq!(
        second,
        Fence {
            epoch: first.epoch + 1,
            next_offset: Some(4),
            max_event_ms: None,
            final_watermark_ms: None,
        }
    );
    // Fences are per partition.
    assert_eq!(sink.read_fence(2).await.expect("read"), None);
    let other = sink.claim(2).await.expect("claim 2");
    assert_eq!(other.epoch, 1);
}

#[tokio::test]
async fn a_batch_straddling_the_fence_is_refused_not_half_applied() {
    let server = RedisServer::start().expect("redis-server");
    let sink = connect_sink(&server, "").await;
    let mut conn = raw(&server).await;
    let epoch = sink.claim(0).await.expect("claim").epoch;
    let evs = events(6, "o");
    sink.apply(&batch_of(&sink, 0, epoch, 0, &evs[..4], SystemTime::now()))
        .await
        .expect("apply [0,4)");
    let before = dump(&mut conn, "").await;
    let straddling = batch_of(&sink, 0, epoch, 2, &evs[2..], SystemTime::now());
    let err = sink.apply(&straddling).await.expect_err("overlap");
    assert!(
        matches!(
            err,
            SinkError::Overlap {
                partition: 0,
                stored_next_offset: 4,
                first_offset: 2,
                next_offset: 6
            }
        ),
        "{err}"
    );
    assert!(!err.is_retryable());
    assert_eq!(dump(&mut conn, "").await, before);
}

#[tokio::test]
async fn skipped_offsets_advance_the_fence_without_writing() {
    let server = RedisServer::start().expect("redis-server");
    let sink = connect_sink(&server, "").await;
    let mut conn = raw(&server).await;
    let epoch = sink.claim(0).await.expect("claim").epoch;
    let mut builder = sink.batch_builder(0, epoch);
    builder.push_skipped(10);
    builder.push_skipped(11);
    assert_eq!(builder.len(), 2);
    assert_eq!(builder.first_offset(), Some(10));
    let batch = builder.build(SystemTime::now());
    assert_eq!(
        sink.apply(&batch).await.expect("apply"),
        ApplyOutcome::Applied {
            events: 0,
            commands: 2,
            write_errors: 0
        }
    );
    assert_eq!(
        sink.read_fence(0)
            .await
            .expect("fence")
            .and_then(|f| f.next_offset),
        Some(12)
    );
    assert_eq!(dump(&mut conn, "").await.len(), 1, "only the fence");

    // Mixed: an event, a dead-lettered offset, an event.
    let evs = events(2, "m");
    let mut builder = sink.batch_builder(0, epoch);
    builder.push_event(12, &evs[0]);
    builder.push_skipped(13);
    builder.push_event(14, &evs[1]);
    let batch = builder.build(SystemTime::now());
    assert_eq!((batch.events, batch.skipped), (2, 1));
    sink.apply(&batch).await.expect("apply");
    assert_eq!(
        sink.read_fence(0)
            .await
            .expect("fence")
            .and_then(|f| f.next_offset),
        Some(15)
    );

    // An empty builder builds a batch that does nothing.
    let empty = sink.batch_builder(0, epoch);
    assert!(empty.is_empty());
    let batch = empty.build(SystemTime::now());
    assert!(batch.is_empty());
    assert_eq!(
        sink.apply(&batch).await.expect("apply"),
        ApplyOutcome::Applied {
            events: 0,
            commands: 0,
            write_errors: 0
        }
    );
    assert_eq!(
        sink.read_fence(0)
            .await
            .expect("fence")
            .and_then(|f| f.next_offset),
        Some(15)
    );
}

#[tokio::test]
async fn fences_of_different_jobs_and_prefixes_are_separate() {
    let server = RedisServer::start().expect("redis-server");
    let a = connect_sink(&server, "a:").await;
    let b = connect_sink(&server, "b:").await;
    assert_eq!(a.claim(0).await.expect("a").epoch, 1);
    assert_eq!(b.claim(0).await.expect("b").epoch, 1);
    let mut cfg = sink_config(&server, "a:");
    cfg.key_prefix = "a:".into();
    let other_job = streamjob_worker::sink::redis::RedisSink::connect(&cfg, "other", TOPIC)
        .await
        .expect("connect");
    assert_eq!(other_job.claim(0).await.expect("other job").epoch, 1);
}
