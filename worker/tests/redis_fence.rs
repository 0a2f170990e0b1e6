//! The partition fence: replays, zombies, overlaps, skipped offsets, resumption.

mod redis_support;

use std::time::SystemTime;

use redis_support::*;
use streamjob_worker::sink::redis::window::SeriesMarks;
use streamjob_worker::sink::redis::{epoch_floor, ApplyOutcome, Fence, SinkError};
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
    let epoch = sink
        .claim_from(3, 0, Some(100))
        .await
        .expect("claim")
        .fence
        .epoch;
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
            learned_ms: None,
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
    assert_eq!(b.next_offset, Some(0), "every claim leaves a next_offset");

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
            learned_ms: None,
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
    let epoch = sink
        .claim_from(0, 0, Some(10))
        .await
        .expect("claim")
        .fence
        .epoch;
    let mut builder = sink.batch_builder(0, epoch);
    builder.push_skipped(10);
    builder.push_skipped(11);
    assert_eq!(builder.len(), 2);
    assert_eq!(builder.first_offset(), Some(10));
    let batch = builder.build(SystemTime::now());
    // WATCH, HMGET, TIME; MULTI, the fence's HSET, EXEC: no data command.
    assert_eq!(
        sink.apply(&batch).await.expect("apply"),
        ApplyOutcome::Applied {
            events: 0,
            commands: 6,
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

#[tokio::test]
async fn a_batch_after_a_fence_that_fell_back_is_refused_and_writes_nothing() {
    let server = RedisServer::start().expect("redis-server");
    let sink = connect_sink(&server, "").await;
    let mut conn = raw(&server).await;
    let epoch = sink.claim(0).await.expect("claim").epoch;
    let evs = events(10, "g");
    // The fence stores the partition's series marks with its offset.
    let marks = SeriesMarks {
        clock: Some(1_700_000_060_000),
        learned: Some(1_700_000_000_000),
    };
    let mut first = sink.batch_builder(0, epoch);
    for (i, ev) in evs[..4].iter().enumerate() {
        first.push_event(i as i64, ev);
    }
    first.set_series_marks(marks);
    sink.apply(&first.build(SystemTime::now()))
        .await
        .expect("apply [0,4)");
    let before = dump(&mut conn, "").await;
    // The owner believes [0, 7) is applied; Redis lost [4, 7).
    let ahead = batch_of(&sink, 0, epoch, 7, &evs[7..], SystemTime::now());
    let err = sink.apply(&ahead).await.expect_err("gap");
    assert!(
        matches!(
            err,
            SinkError::Gap {
                partition: 0,
                stored_next_offset: Some(4),
                first_offset: 7,
                next_offset: 10,
                marks: m,
            } if m == marks
        ),
        "{err:?}: the gap carries the fence's series marks, read with the decision"
    );
    assert!(!err.is_retryable());
    assert_eq!(err.kind(), "gap");
    assert_eq!(dump(&mut conn, "").await, before, "nothing written");

    // A fence without next_offset (Redis lost the fence; every claim writes one) is a gap too.
    let _: i64 = query(
        &mut conn,
        &[
            "HDEL",
            "streamjob:trace:fence:austinTraceLog:0",
            "next_offset",
        ],
    )
    .await;
    let next = batch_of(&sink, 0, epoch, 4, &evs[4..], SystemTime::now());
    let err = sink.apply(&next).await.expect_err("lost fence");
    assert!(
        matches!(
            err,
            SinkError::Gap {
                stored_next_offset: None,
                ..
            }
        ),
        "{err}"
    );
    // The owner rewrites it at the offset it rewinds to, keeping its epoch (and the series marks
    // that survived), and goes on.
    let fence = sink.restore_fence(0, epoch, 4).await.expect("restore");
    assert_eq!(
        fence,
        Fence {
            epoch,
            next_offset: Some(4),
            max_event_ms: marks.clock,
            learned_ms: marks.learned,
        }
    );
    assert_eq!(
        applied_events(&sink.apply(&next).await.expect("apply [4,10)")),
        6
    );
    let shared: i64 = query(&mut conn, &["LLEN", "shared"]).await;
    assert_eq!(shared, 10, "every event once");
}

#[tokio::test]
async fn a_claim_writes_the_resume_offset_and_keeps_an_existing_one() {
    let server = RedisServer::start().expect("redis-server");
    let sink = connect_sink(&server, "").await;
    let first = sink.claim_from(5, 1, Some(700)).await.expect("claim");
    assert!(first.was_missing);
    assert_eq!(first.fence.next_offset, Some(700));
    assert_eq!(first.fence.epoch, epoch_floor(1));
    let again = sink.claim_from(5, 1, Some(0)).await.expect("claim again");
    assert!(!again.was_missing);
    assert_eq!(
        again.fence,
        Fence {
            epoch: epoch_floor(1) + 1,
            next_offset: Some(700),
            max_event_ms: None,
            learned_ms: None,
        },
        "the stored offset wins; the same generation bumps by one"
    );
    // Epochs above 1e14 survive Lua's number printing.
    let big = sink.claim_from(5, 1 << 32, None).await.expect("big");
    assert_eq!(big.fence.epoch, (1u64 << 32) << 20);
    assert_eq!(
        sink.read_fence(5).await.expect("read").map(|f| f.epoch),
        Some((1u64 << 32) << 20)
    );
}

/// Redis rolls the fence back to a snapshot taken before the current owner's claim. The next
/// claim's epoch must still exceed every epoch used before, so neither earlier owner can write.
/// (With `HINCRBY epoch 1` the new claim would get B's epoch back and B would keep writing.)
#[tokio::test]
async fn after_a_fence_rollback_a_new_claim_shuts_out_every_earlier_owner() {
    let mut server = RedisServer::start().expect("redis-server");
    let snapshot = server.dir().join("before-b.rdb");
    let sink_a = connect_sink(&server, "").await;
    let sink_b = connect_sink(&server, "").await;
    let sink_c = connect_sink(&server, "").await;
    let evs = events(30, "e");

    let a = sink_a
        .claim_from(0, 1, Some(0))
        .await
        .expect("A claims")
        .fence;
    sink_a
        .apply(&batch_of(
            &sink_a,
            0,
            a.epoch,
            0,
            &evs[..10],
            SystemTime::now(),
        ))
        .await
        .expect("A applies [0,10)");
    server.snapshot(&snapshot).expect("snapshot");
    let b = sink_b.claim_from(0, 2, None).await.expect("B claims").fence;
    assert!(b.epoch > a.epoch);
    sink_b
        .apply(&batch_of(
            &sink_b,
            0,
            b.epoch,
            10,
            &evs[10..20],
            SystemTime::now(),
        ))
        .await
        .expect("B applies [10,20)");

    server.restore(&snapshot).expect("Redis rolls back");
    let fence = wait_for_fence(&sink_c).await;
    assert_eq!(
        fence,
        Fence {
            epoch: a.epoch,
            next_offset: Some(10),
            max_event_ms: None,
            learned_ms: None,
        }
    );

    let c = sink_c.claim_from(0, 3, None).await.expect("C claims").fence;
    assert!(
        c.epoch > b.epoch,
        "C's epoch {} must exceed B's {}",
        c.epoch,
        b.epoch
    );
    assert_eq!(
        c.next_offset,
        Some(10),
        "C resumes at the rolled-back fence"
    );
    for (sink, epoch, name) in [(&sink_a, a.epoch, "A"), (&sink_b, b.epoch, "B")] {
        let zombie = batch_of(sink, 0, epoch, 10, &evs[10..20], SystemTime::now());
        let err = apply_retrying(sink, &zombie).await.expect_err(name);
        assert!(matches!(err, SinkError::Fenced { .. }), "{name}: {err}");
    }
    let outcome = sink_c
        .apply(&batch_of(
            &sink_c,
            0,
            c.epoch,
            10,
            &evs[10..20],
            SystemTime::now(),
        ))
        .await
        .expect("C re-applies [10,20)");
    assert_eq!(applied_events(&outcome), 10);
    let mut conn = raw(&server).await;
    let shared: i64 = query(&mut conn, &["LLEN", "shared"]).await;
    assert_eq!(
        shared, 20,
        "[0,20) once each: nothing from A or B after the rollback"
    );
}

async fn wait_for_fence(sink: &streamjob_worker::sink::redis::RedisSink) -> Fence {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match sink.read_fence(0).await {
            Ok(Some(fence)) => return fence,
            other => assert!(
                std::time::Instant::now() < deadline,
                "fence unreadable after restore: {other:?}"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn apply_retrying(
    sink: &streamjob_worker::sink::redis::RedisSink,
    batch: &streamjob_worker::sink::redis::Batch,
) -> Result<ApplyOutcome, SinkError> {
    for _ in 0..100 {
        match sink.apply(batch).await {
            Err(err) if err.is_retryable() => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
    sink.apply(batch).await
}

#[tokio::test]
async fn the_same_batch_applied_by_many_tasks_at_once_is_written_once() {
    let server = RedisServer::start().expect("redis-server");
    let sink = connect_sink(&server, "").await;
    let mut conn = raw(&server).await;
    let epoch = sink.claim(0).await.expect("claim").epoch;
    let evs = events(300, "c");
    let mut rounds = Vec::new();
    for (i, chunk) in evs.chunks(100).enumerate() {
        let batch = batch_of(&sink, 0, epoch, (i * 100) as i64, chunk, SystemTime::now());
        // Eight concurrent applies of the same batch (retries racing each other): each WATCHes
        // the fence, exactly one EXEC moves it, the others abort and then see a replay.
        let outcomes = futures::future::join_all((0..8).map(|_| sink.apply(&batch))).await;
        let applied = outcomes
            .iter()
            .filter(|o| matches!(o, Ok(ApplyOutcome::Applied { .. })))
            .count();
        let skipped = outcomes
            .iter()
            .filter(|o| matches!(o, Ok(ApplyOutcome::AlreadyApplied)))
            .count();
        rounds.push((applied, skipped));
    }
    assert!(rounds.iter().all(|r| *r == (1, 7)), "{rounds:?}");
    let shared: i64 = query(&mut conn, &["LLEN", "shared"]).await;
    assert_eq!(shared, 300, "every event pushed once");
}

#[tokio::test]
async fn a_claim_between_the_read_and_exec_aborts_the_stale_owners_transaction() {
    // Many applies by the old owner race a claim by a new one: whichever order Redis sees, the
    // old owner's batch is either applied before the claim or fenced, never after it.
    let server = RedisServer::start().expect("redis-server");
    let old = connect_sink(&server, "").await;
    let new = connect_sink(&server, "").await;
    let mut conn = raw(&server).await;
    let epoch = old.claim(1).await.expect("claim").epoch;
    let evs = events(2_000, "z");
    let batch = batch_of(&old, 1, epoch, 0, &evs, SystemTime::now());
    let (applied, claimed) = tokio::join!(old.apply(&batch), new.claim(1));
    let claimed = claimed.expect("claim");
    let fence = old.read_fence(1).await.expect("fence").expect("exists");
    assert_eq!(fence.epoch, claimed.epoch);
    let shared: i64 = query(&mut conn, &["LLEN", "shared"]).await;
    match applied {
        Ok(ApplyOutcome::Applied { .. }) => {
            assert_eq!(claimed.next_offset, Some(2_000), "claimed after the apply");
            assert_eq!(shared, 2_000);
        }
        Err(SinkError::Fenced { .. }) => {
            assert_eq!(
                claimed.next_offset,
                Some(0),
                "the old owner's claim wrote 0"
            );
            assert_eq!(shared, 0, "nothing written after the claim");
        }
        other => panic!("{other:?}"),
    }
}
