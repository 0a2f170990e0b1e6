//! The sink against a Redis that restarts, hangs, forgets scripts, refuses writes, or wants a
//! password.

mod redis_support;

use std::time::{Duration, Instant, SystemTime};

use redis_support::*;
use streamjob_worker::sink::redis::{ApplyOutcome, RedisSink, SinkError, SinkOptions};
use streamjob_worker::testkit::redis::{RedisOptions, RedisServer};
use streamjob_worker::transform::AnchorInfo;

fn events(n: usize, tag: &str) -> Vec<AnchorInfo<'static>> {
    (0..n)
        .map(|i| {
            event(&format!(
                r#"{{"businessId":1000000120240101,"ids":["{tag}"],"logTimestamp":{i},"messageId":"{tag}m","state":60}}"#
            ))
        })
        .collect()
}

/// Retries a retryable failure until `deadline`, like the runtime's backoff loop does.
async fn apply_until_done(
    sink: &RedisSink,
    batch: &streamjob_worker::sink::redis::Batch,
) -> (ApplyOutcome, usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut failures = 0;
    loop {
        match sink.apply(batch).await {
            Ok(outcome) => return (outcome, failures),
            Err(err) if err.is_retryable() && Instant::now() < deadline => {
                failures += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("apply failed for good: {err}"),
        }
    }
}

/// A redis-server that keeps its data across restarts, a sink on it, and partition 0's epoch.
async fn persistent_redis_and_claimed_sink() -> (RedisServer, RedisSink, u64) {
    let server = RedisServer::start_with(RedisOptions {
        persistence: true,
        ..RedisOptions::default()
    })
    .expect("redis-server");
    let sink = connect_sink(&server, "").await;
    let epoch = sink.claim(0).await.expect("claim").epoch;
    (server, sink, epoch)
}

#[tokio::test]
async fn the_sink_survives_a_redis_restart_without_losing_or_repeating_writes() {
    let (mut server, sink, epoch) = persistent_redis_and_claimed_sink().await;
    let first = batch_of(&sink, 0, epoch, 0, &events(3, "u"), SystemTime::now());
    sink.apply(&first).await.expect("apply before the restart");

    server.stop();
    let second = batch_of(&sink, 0, epoch, 3, &events(2, "u"), SystemTime::now());
    let err = sink.apply(&second).await.expect_err("redis is down");
    assert!(err.is_retryable(), "{err}");
    assert!(matches!(err, SinkError::Unavailable(_)), "{err}");

    // A longer outage: every attempt fails fast and stays retryable.
    for _ in 0..10 {
        let err = sink.apply(&second).await.expect_err("still down");
        assert!(err.is_retryable(), "{err}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    server.restart().expect("restart on the same port");
    let (outcome, _) = apply_until_done(&sink, &second).await;
    assert_eq!(applied_events(&outcome), 2);
    // The scripts were lost with the restart (script cache is not persisted) and reloaded.
    let mut conn = raw(&server).await;
    let len: i64 = query(&mut conn, &["LLEN", "u"]).await;
    assert_eq!(len, 5, "3 before + 2 after, none lost or repeated");
    // A retry of the first batch (e.g. its reply was lost in the crash) is a no-op.
    assert_eq!(
        sink.apply(&first).await.expect("replay"),
        ApplyOutcome::AlreadyApplied
    );
}

#[tokio::test]
async fn a_batch_whose_reply_is_lost_is_applied_once_on_retry() {
    let mut server = RedisServer::start().expect("redis-server");
    let sink = connect_sink(&server, "").await;
    let epoch = sink.claim(0).await.expect("claim").epoch;
    let batch = batch_of(&sink, 0, epoch, 0, &events(4, "x"), SystemTime::now());
    sink.apply(&batch).await.expect("apply");
    // Without persistence a restart loses everything, including the fence: the apply refuses
    // the next batch as a gap (Redis lost the fence), the owner rewrites the fence where it
    // rewinds to, and re-applies (still once).
    server.restart().expect("restart");
    let next = batch_of(&sink, 0, epoch, 4, &events(1, "y"), SystemTime::now());
    let err = loop {
        match sink.apply(&next).await {
            Err(err) if err.is_retryable() => tokio::time::sleep(Duration::from_millis(100)).await,
            other => break other.expect_err("the fence is gone"),
        }
    };
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
    // Applies use their own connections, so the claim connection may only now find out that
    // the server restarted: retry, as the partition's rewind does.
    let restored = loop {
        match sink.restore_fence(0, epoch, 0).await {
            Err(err) if err.is_retryable() => tokio::time::sleep(Duration::from_millis(100)).await,
            other => break other.expect("fence restored"),
        }
    };
    assert_eq!(restored.next_offset, Some(0));
    let (outcome, _) = apply_until_done(&sink, &batch).await;
    assert_eq!(applied_events(&outcome), 4);
    let mut conn = raw(&server).await;
    let len: i64 = query(&mut conn, &["LLEN", "x"]).await;
    assert_eq!(len, 4);
}

/// Waits until the server stops answering (the `DEBUG SLEEP` has begun), at most 5 s.
async fn wait_until_busy(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let answered = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                return true;
            };
            let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
            let _ = s.write_all(b"*1\r\n$4\r\nPING\r\n");
            let mut buf = [0u8; 16];
            matches!(s.read(&mut buf), Ok(n) if n > 0)
        })
        .await
        .expect("probe");
        if !answered {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("redis never became busy");
}

#[tokio::test]
async fn a_hung_redis_is_a_retryable_timeout_and_the_retry_does_not_double_apply() {
    let server = RedisServer::start_with(RedisOptions {
        extra_args: vec!["--enable-debug-command".into(), "yes".into()],
        ..RedisOptions::default()
    })
    .expect("redis-server");
    let sink = RedisSink::connect_with(
        &sink_config(&server, ""),
        JOB,
        TOPIC,
        SinkOptions {
            call_timeout: Duration::from_millis(300),
            ..SinkOptions::default()
        },
    )
    .await
    .expect("connect");
    let epoch = sink.claim(0).await.expect("claim").epoch;
    let batch = batch_of(&sink, 0, epoch, 0, &events(3, "h"), SystemTime::now());

    // Freeze the server for 1.5 s from another connection.
    let sleeper = tokio::process::Command::new("redis-cli")
        .args(["-p", &server.port().to_string(), "DEBUG", "SLEEP", "1.5"])
        .stdout(std::process::Stdio::null())
        .status();
    let sleeper = tokio::spawn(sleeper);
    wait_until_busy(server.port()).await;
    let err = sink.apply(&batch).await.expect_err("timed out");
    assert!(err.is_retryable(), "{err}");
    assert!(sleeper.await.expect("join").expect("redis-cli").success());

    let (outcome, _) = apply_until_done(&sink, &batch).await;
    // The timed-out call may or may not have run once Redis woke up; either way: once.
    assert!(
        matches!(
            outcome,
            ApplyOutcome::AlreadyApplied | ApplyOutcome::Applied { .. }
        ),
        "{outcome:?}"
    );
    let mut conn = raw(&server).await;
    let len: i64 = query(&mut conn, &["LLEN", "h"]).await;
    assert_eq!(len, 3);
}

#[tokio::test]
async fn a_flushed_script_cache_is_reloaded() {
    let server = RedisServer::start().expect("redis-server");
    let sink = connect_sink(&server, "").await;
    let mut conn = raw(&server).await;
    let _: () = query(&mut conn, &["SCRIPT", "FLUSH"]).await;
    let epoch = sink.claim(0).await.expect("claim after SCRIPT FLUSH").epoch;
    let _: () = query(&mut conn, &["SCRIPT", "FLUSH"]).await;
    let batch = batch_of(&sink, 0, epoch, 0, &events(2, "s"), SystemTime::now());
    assert_eq!(applied_events(&sink.apply(&batch).await.expect("apply")), 2);
}

#[tokio::test]
async fn the_password_comes_from_the_config_and_a_wrong_one_is_not_retryable() {
    let server = RedisServer::start_with(RedisOptions {
        password: Some("s3cret".into()),
        ..RedisOptions::default()
    })
    .expect("redis-server");
    let mut cfg = sink_config(&server, "");
    cfg.password = Some("s3cret".into());
    let sink = RedisSink::connect(&cfg, JOB, TOPIC).await.expect("connect");
    let epoch = sink.claim(0).await.expect("claim").epoch;
    let batch = batch_of(&sink, 0, epoch, 0, &events(1, "p"), SystemTime::now());
    assert_eq!(applied_events(&sink.apply(&batch).await.expect("apply")), 1);

    cfg.password = Some("wrong".into());
    let err = RedisSink::connect(&cfg, JOB, TOPIC)
        .await
        .expect_err("wrong password");
    assert!(!err.is_retryable(), "{err}");
    cfg.password = None;
    let err = RedisSink::connect(&cfg, JOB, TOPIC)
        .await
        .expect_err("no password");
    assert!(!err.is_retryable(), "{err}");
}

#[tokio::test]
async fn unreachable_redis_at_startup_is_retryable() {
    let mut server = RedisServer::start().expect("redis-server");
    let cfg = sink_config(&server, "");
    server.stop();
    let err = RedisSink::connect(&cfg, JOB, TOPIC)
        .await
        .expect_err("nothing listens");
    assert!(err.is_retryable(), "{err}");
}

#[tokio::test]
async fn a_write_redis_refuses_is_skipped_and_counted_without_breaking_the_batch() {
    let server = RedisServer::start().expect("redis-server");
    let sink = connect_sink(&server, "").await;
    let mut conn = raw(&server).await;
    // A receiver id that names an existing string key: LPUSH gets WRONGTYPE, as upstream's did.
    let _: () = query(&mut conn, &["SET", "taken", "x"]).await;
    let epoch = sink.claim(0).await.expect("claim").epoch;
    let ev = event(
        r#"{"businessId":7,"ids":["taken","free"],"logTimestamp":1,"messageId":"w","state":60}"#,
    );
    let batch = batch_of(&sink, 0, epoch, 0, &[ev], SystemTime::now());
    let outcome = sink.apply(&batch).await.expect("apply");
    assert!(
        matches!(
            outcome,
            ApplyOutcome::Applied {
                events: 1,
                write_errors: 1,
                ..
            }
        ),
        "{outcome:?}"
    );
    let taken: String = query(&mut conn, &["GET", "taken"]).await;
    assert_eq!(taken, "x");
    let free: i64 = query(&mut conn, &["LLEN", "free"]).await;
    assert_eq!(free, 1);
    let counted: i64 = query(&mut conn, &["HGET", "7", "60"]).await;
    assert_eq!(counted, 2);
    assert_eq!(
        sink.read_fence(0)
            .await
            .expect("fence")
            .and_then(|f| f.next_offset),
        Some(1)
    );
}

#[tokio::test]
async fn out_of_memory_refuses_the_whole_batch_up_front() {
    let server = RedisServer::start().expect("redis-server");
    let sink = connect_sink(&server, "").await;
    let mut conn = raw(&server).await;
    let epoch = sink.claim(0).await.expect("claim").epoch;
    // ~2 MiB of data, then a 1 MiB limit: Redis is out of memory (noeviction is the default).
    let blob = "x".repeat(64 * 1024);
    for i in 0..32 {
        let _: () = query(&mut conn, &["SET", &format!("filler{i}"), &blob]).await;
    }
    let _: () = query(&mut conn, &["CONFIG", "SET", "maxmemory", "1mb"]).await;
    let batch = batch_of(&sink, 0, epoch, 0, &events(3, "oom"), SystemTime::now());
    let err = sink.apply(&batch).await.expect_err("OOM");
    assert!(err.is_retryable(), "{err}");
    let exists: i64 = query(&mut conn, &["EXISTS", "oom", "oomm"]).await;
    assert_eq!(exists, 0, "nothing half-written");
    assert_eq!(
        sink.read_fence(0)
            .await
            .expect("fence")
            .and_then(|f| f.next_offset),
        Some(0),
        "the fence did not move"
    );
    // Memory freed: the same batch goes through.
    let _: () = query(&mut conn, &["CONFIG", "SET", "maxmemory", "0"]).await;
    assert_eq!(applied_events(&sink.apply(&batch).await.expect("apply")), 3);
}

#[tokio::test]
async fn a_list_with_more_values_than_luas_unpack_limit_is_pushed_in_chunks_in_order() {
    let server = RedisServer::start().expect("redis-server");
    let sink = connect_sink(&server, "").await;
    let mut conn = raw(&server).await;
    let epoch = sink.claim(0).await.expect("claim").epoch;
    let evs = events(9_500, "big");
    let batch = batch_of(&sink, 0, epoch, 0, &evs, SystemTime::now());
    let outcome = sink.apply(&batch).await.expect("apply");
    assert_eq!(applied_events(&outcome), 9_500);
    let list: Vec<String> = query(&mut conn, &["LRANGE", "big", "0", "-1"]).await;
    assert_eq!(list.len(), 9_500);
    let expected: Vec<String> = evs.iter().rev().map(|e| e.simple_json()).collect();
    assert_eq!(
        list, expected,
        "newest first, exactly like per-event LPUSHes"
    );
    let counted: i64 = query(&mut conn, &["HGET", "1000000120240101", "60"]).await;
    assert_eq!(counted, 9_500);
}

/// Commands the transaction of an applied batch ran.
fn commands_of(outcome: &ApplyOutcome) -> usize {
    match outcome {
        ApplyOutcome::Applied { commands, .. } => *commands,
        ApplyOutcome::AlreadyApplied => panic!("expected an applied batch"),
    }
}

/// A user list this process set to expire tonight gets no expiry command in later batches, but
/// only while Redis is known to keep it: after a Redis error the server that answers next may be
/// another one (a promoted replica, an older snapshot) without the list, so batches built after
/// the error set its expiry inside their transaction again (not after `EXEC`, which is not
/// atomic with it) until a batch has seen the list again.
#[tokio::test]
async fn after_a_redis_error_user_lists_get_their_expiry_inside_the_transaction_again() {
    let (mut server, sink, epoch) = persistent_redis_and_claimed_sink().await;
    let mut offset = 0;
    let mut apply_one = |sink: &RedisSink| {
        let batch = batch_of(sink, 0, epoch, offset, &events(1, "u"), SystemTime::now());
        offset += 1;
        batch
    };
    let untrusted = commands_of(&sink.apply(&apply_one(&sink)).await.expect("first"));
    let trusted = commands_of(&sink.apply(&apply_one(&sink)).await.expect("second"));
    assert_eq!(trusted + 1, untrusted, "the known list gets no PEXPIREAT");

    server.stop();
    let during = apply_one(&sink);
    assert!(matches!(
        sink.apply(&during).await,
        Err(SinkError::Unavailable(_))
    ));
    server.restart().expect("redis restarts");
    // Built after the error (as another partition's batch would be while this one retries): the
    // list's expiry is in its transaction again.
    let after = apply_one(&sink);
    // The batch built before the error keeps its plan and is retried as it was; its `LPUSH`
    // reply shows the list existed (so with its expiry: Redis replicates and snapshots a
    // transaction whole), which makes the list trusted again from then on.
    let (outcome, _) = apply_until_done(&sink, &during).await;
    assert_eq!(commands_of(&outcome), trusted);
    let after = commands_of(&sink.apply(&after).await.expect("after"));
    assert_eq!(
        after, untrusted,
        "the expiry is set inside the transaction again"
    );
    let next = commands_of(&sink.apply(&apply_one(&sink)).await.expect("next"));
    assert_eq!(next, trusted, "trusted again once a batch saw the list");
}
