//! The Redis layout the sink writes, byte for byte, against a real redis-server.

mod redis_support;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis_support::*;
use streamjob_worker::sink::redis::{ApplyOutcome, Layout, MESSAGE_TTL, TEMPLATE_TTL};
use streamjob_worker::testkit::redis::RedisServer;

const EVENTS: [&str; 4] = [
    r#"{"bizId":"b1","businessId":1000000120240101,"ids":["13800000001","13800000002"],"logTimestamp":1700000000000,"messageId":"m1","state":10}"#,
    r#"{"bizId":"b1","businessId":1000000120240101,"ids":["13800000001","13800000002"],"logTimestamp":1700000001000,"messageId":"m1","state":60}"#,
    // a pre-2023 producer: `timestamp`, no messageId, a raw WeChat error code as state
    r#"{"businessId":2000000220240101,"ids":["oWx_u3"],"state":40001,"timestamp":1600000000000}"#,
    r#"{"businessId":1000000120240101,"extra":{"x":[1,2]},"ids":["13800000001"],"logTimestamp":1700000002000,"messageId":"m2","state":70}"#,
];

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn hash(items: &[(&str, &str)]) -> Content {
    Content::Hash(
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    )
}

async fn check_layout(prefix: &str) {
    // The expiries checked below are tonight's midnight's: not in its last seconds.
    clear_of_midnight().await;
    let server = RedisServer::start().expect("redis-server");
    let sink = connect_sink(&server, prefix).await;
    let mut conn = raw(&server).await;
    let events: Vec<_> = EVENTS.iter().map(|e| event(e)).collect();
    let fence = sink.claim(0).await.expect("claim");
    assert_eq!(fence.epoch, 1);
    assert_eq!(fence.next_offset, Some(0), "the claim starts the fence");

    let now = SystemTime::now();
    let batch = batch_of(&sink, 0, fence.epoch, 0, &events, now);
    let before_ms = redis_time_ms(&mut conn).await;
    let outcome = sink.apply(&batch).await.expect("apply");
    let after_ms = redis_time_ms(&mut conn).await;
    assert!(
        matches!(
            outcome,
            ApplyOutcome::Applied {
                events: 4,
                write_errors: 0,
                ..
            }
        ),
        "{outcome:?}"
    );

    let e1 = r#"{"businessId":1000000120240101,"state":10,"timestamp":1700000000000}"#;
    let e2 = r#"{"businessId":1000000120240101,"state":60,"timestamp":1700000001000}"#;
    let e3 = r#"{"businessId":2000000220240101,"state":40001,"timestamp":1600000000000}"#;
    let e4 = r#"{"businessId":1000000120240101,"state":70,"timestamp":1700000002000}"#;
    let dumped = dump(&mut conn, prefix).await;
    let mut contents: BTreeMap<&str, Content> = dumped
        .iter()
        .map(|(k, v)| (k.as_str(), v.content.clone()))
        .collect();
    let fence_key = format!("streamjob:{JOB}:fence:{TOPIC}:0");
    assert_eq!(
        contents.remove(fence_key.as_str()),
        Some(hash(&[("epoch", "1"), ("next_offset", "4")]))
    );
    let expected: BTreeMap<&str, Content> = [
        ("Austin:MessageId:m1", Content::List(strings(&[e2, e1]))),
        ("Austin:MessageId:m2", Content::List(strings(&[e4]))),
        ("13800000001", Content::List(strings(&[e4, e2, e1]))),
        ("13800000002", Content::List(strings(&[e2, e1]))),
        ("oWx_u3", Content::List(strings(&[e3]))),
        (
            "1000000120240101",
            hash(&[("10", "2"), ("60", "2"), ("70", "1")]),
        ),
        ("2000000220240101", hash(&[("40001", "1")])),
    ]
    .into_iter()
    .collect();
    assert_eq!(contents, expected, "exactly these keys, nothing else");

    let user_end = Layout::new(prefix, "Asia/Shanghai", JOB, TOPIC)
        .expect("layout")
        .user_expire_at_ms(now);
    for (key, dumped) in &dumped {
        let at = dumped.expire_at_ms;
        if key.starts_with("Austin:MessageId:") {
            let ttl = MESSAGE_TTL.as_millis() as i64;
            assert!(at >= before_ms + ttl && at <= after_ms + ttl, "{key}: {at}");
        } else if key.starts_with("138") || key == "oWx_u3" {
            assert_eq!(at, user_end, "{key} ends at the next Shanghai midnight");
            assert!(at > after_ms);
        } else if key.starts_with("streamjob:") {
            assert_eq!(at, -1, "fences never expire");
        } else {
            let ttl = TEMPLATE_TTL.as_millis() as i64;
            assert!(at >= before_ms + ttl && at <= after_ms + ttl, "{key}: {at}");
        }
    }
}

#[tokio::test]
async fn writes_austins_layout_byte_for_byte() {
    check_layout("").await;
}

#[tokio::test]
async fn the_key_prefix_goes_in_front_of_every_key() {
    check_layout("eu:").await;
}

fn next_shanghai_midnight_after(t: SystemTime) -> i64 {
    Layout::new("", "Asia/Shanghai", "j", "t")
        .expect("layout")
        .user_expire_at_ms(t)
}

fn at_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms as u64)
}

#[tokio::test]
async fn user_lists_written_just_before_midnight_end_at_that_midnight_and_just_after_at_the_next() {
    let server = RedisServer::start().expect("redis-server");
    let sink = connect_sink(&server, "").await;
    let mut conn = raw(&server).await;
    let epoch = sink.claim(0).await.expect("claim").epoch;
    // The next real Shanghai midnight (at least a minute away, so "200 ms before" is still in
    // the future when the batch is applied), so the expiry Redis stores is in its future.
    let midnight = next_shanghai_midnight_after(SystemTime::now() + Duration::from_secs(60));
    let following = next_shanghai_midnight_after(at_ms(midnight));

    let before = event(r#"{"businessId":1,"ids":["before"],"logTimestamp":1,"state":10}"#);
    let batch = batch_of(&sink, 0, epoch, 0, &[before], at_ms(midnight - 200));
    sink.apply(&batch).await.expect("apply");
    let after = event(r#"{"businessId":1,"ids":["after"],"logTimestamp":2,"state":10}"#);
    let batch = batch_of(&sink, 0, epoch, 1, &[after], at_ms(midnight + 1));
    sink.apply(&batch).await.expect("apply");

    let expire_before: i64 = query(&mut conn, &["PEXPIRETIME", "before"]).await;
    let ttl_before: i64 = query(&mut conn, &["PTTL", "before"]).await;
    assert_eq!(expire_before, midnight);
    assert!(ttl_before > 0, "a TTL of 0 would delete the key at once");
    let expire_after: i64 = query(&mut conn, &["PEXPIRETIME", "after"]).await;
    assert_eq!(expire_after, following);
    assert_eq!(following - midnight, 24 * 3600 * 1000);
}

#[tokio::test]
async fn a_batch_applied_after_its_midnight_passed_gets_the_next_midnight_not_a_past_one() {
    let server = RedisServer::start().expect("redis-server");
    let sink = connect_sink(&server, "").await;
    let mut conn = raw(&server).await;
    let epoch = sink.claim(0).await.expect("claim").epoch;
    // Built "yesterday" 1 ms before midnight: its own end of day is already in the past.
    let now = SystemTime::now();
    let today_start = next_shanghai_midnight_after(now) - 24 * 3600 * 1000;
    let late = event(r#"{"businessId":1,"ids":["late"],"logTimestamp":1,"state":10}"#);
    let batch = batch_of(&sink, 0, epoch, 0, &[late], at_ms(today_start - 1));
    sink.apply(&batch).await.expect("apply");
    let expire_at: i64 = query(&mut conn, &["PEXPIRETIME", "late"]).await;
    assert_eq!(expire_at, next_shanghai_midnight_after(now));
    let len: i64 = query(&mut conn, &["LLEN", "late"]).await;
    assert_eq!(
        len, 1,
        "the key must not have been expired by a past PEXPIREAT"
    );
}

#[tokio::test]
async fn an_existing_user_list_has_its_expiry_corrected_on_the_first_touch_of_the_day() {
    let server = RedisServer::start().expect("redis-server");
    let sink = connect_sink(&server, "").await;
    let mut conn = raw(&server).await;
    let epoch = sink.claim(0).await.expect("claim").epoch;
    // A key left by upstream's 52-year-TTL defect, and one without any TTL.
    let _: () = query(&mut conn, &["RPUSH", "legacy", "old"]).await;
    let _: () = query(&mut conn, &["EXPIRE", "legacy", "1640995200"]).await;
    let _: () = query(&mut conn, &["RPUSH", "persistent", "old"]).await;
    let now = SystemTime::now();
    let ev = event(r#"{"businessId":1,"ids":["legacy","persistent"],"logTimestamp":1,"state":10}"#);
    let batch = batch_of(&sink, 0, epoch, 0, std::slice::from_ref(&ev), now);
    let first = sink.apply(&batch).await.expect("apply");
    let midnight = next_shanghai_midnight_after(now);
    for key in ["legacy", "persistent"] {
        let at: i64 = query(&mut conn, &["PEXPIRETIME", key]).await;
        assert_eq!(at, midnight, "{key}");
        let list: Vec<String> = query(&mut conn, &["LRANGE", key, "0", "-1"]).await;
        assert_eq!(list, vec![ev.simple_json(), "old".to_string()]);
    }
    // Same keys again: this process set their expiry today, so no PEXPIREAT is issued for them.
    let batch = batch_of(&sink, 0, epoch, 1, std::slice::from_ref(&ev), now);
    let second = sink.apply(&batch).await.expect("apply");
    assert_eq!(
        commands(&first) - commands(&second),
        2,
        "{first:?} vs {second:?}: the second batch skips both PEXPIREATs"
    );
    // A foreign writer changes one of them; another process (a new sink) sets each list's
    // expiry once more on its first touch and so corrects it.
    let _: () = query(&mut conn, &["PERSIST", "legacy"]).await;
    let other_process = connect_sink(&server, "").await;
    let batch = batch_of(&other_process, 0, epoch, 2, std::slice::from_ref(&ev), now);
    let third = other_process.apply(&batch).await.expect("apply");
    assert_eq!(
        commands(&third) - commands(&second),
        2,
        "{third:?}: two PEXPIREATs"
    );
    for key in ["legacy", "persistent"] {
        let at: i64 = query(&mut conn, &["PEXPIRETIME", key]).await;
        assert_eq!(at, midnight, "{key}");
    }
}

#[tokio::test]
async fn a_trusted_user_list_that_vanished_gets_its_expiry_again_when_recreated() {
    let server = RedisServer::start().expect("redis-server");
    let sink = connect_sink(&server, "").await;
    let mut conn = raw(&server).await;
    let epoch = sink.claim(0).await.expect("claim").epoch;
    let now = SystemTime::now();
    let ev = event(r#"{"businessId":1,"ids":["gone"],"logTimestamp":1,"state":10}"#);
    let batch = batch_of(&sink, 0, epoch, 0, std::slice::from_ref(&ev), now);
    sink.apply(&batch).await.expect("apply");
    // Deleted behind the sink's back (or lost by Redis): the sink still trusts its expiry.
    let _: () = query(&mut conn, &["DEL", "gone"]).await;
    let batch = batch_of(&sink, 0, epoch, 1, std::slice::from_ref(&ev), now);
    sink.apply(&batch).await.expect("apply");
    let at: i64 = query(&mut conn, &["PEXPIRETIME", "gone"]).await;
    assert_eq!(
        at,
        next_shanghai_midnight_after(now),
        "the LPUSH reply showed the list was created: its expiry is set again"
    );
    let len: i64 = query(&mut conn, &["LLEN", "gone"]).await;
    assert_eq!(len, 1);
}

fn commands(outcome: &ApplyOutcome) -> usize {
    match outcome {
        ApplyOutcome::Applied { commands, .. } => *commands,
        ApplyOutcome::AlreadyApplied => panic!("expected applied"),
    }
}

#[tokio::test]
async fn with_the_existing_expiry_check_off_only_user_lists_without_an_expiry_get_one() {
    use streamjob_worker::sink::redis::{RedisSink, SinkOptions};
    let server = RedisServer::start().expect("redis-server");
    let sink = RedisSink::connect_with(
        &sink_config(&server, ""),
        JOB,
        TOPIC,
        SinkOptions {
            verify_existing_user_expiry: false,
            ..SinkOptions::default()
        },
    )
    .await
    .expect("connect");
    let mut conn = raw(&server).await;
    let epoch = sink.claim(0).await.expect("claim").epoch;
    let _: () = query(&mut conn, &["RPUSH", "foreign", "old"]).await;
    let _: () = query(&mut conn, &["PEXPIREAT", "foreign", "4102444800000"]).await;
    let now = SystemTime::now();
    let ev = event(r#"{"businessId":1,"ids":["foreign","fresh"],"logTimestamp":1,"state":10}"#);
    let batch = batch_of(&sink, 0, epoch, 0, std::slice::from_ref(&ev), now);
    let outcome = sink.apply(&batch).await.expect("apply");
    // WATCH, HMGET, TIME; MULTI, 2 × (LPUSH, PEXPIREAT NX), HINCRBY, PEXPIRE, HSET, EXEC.
    assert!(
        matches!(outcome, ApplyOutcome::Applied { commands: 12, .. }),
        "{outcome:?}"
    );
    let fresh: i64 = query(&mut conn, &["PEXPIRETIME", "fresh"]).await;
    assert_eq!(fresh, next_shanghai_midnight_after(now));
    let foreign: i64 = query(&mut conn, &["PEXPIRETIME", "foreign"]).await;
    assert_eq!(foreign, 4102444800000, "trusted as it is");
    let list: Vec<String> = query(&mut conn, &["LRANGE", "foreign", "0", "-1"]).await;
    assert_eq!(list, vec![ev.simple_json(), "old".to_string()]);
}
