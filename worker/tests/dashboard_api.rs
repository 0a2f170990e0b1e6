//! The jobmanager's dashboard, austin's `/trace/*` read API and the bearer token of the mutating
//! endpoints, over real HTTP against a real redis-server (with a key prefix and a time zone, so
//! both are shown to come from the job's layout).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use streamjob_worker::config::JobConfig;
use streamjob_worker::jobmanager::{FixedPartitions, JobManager, JobManagerOptions};
use streamjob_worker::testkit::redis::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PREFIX: &str = "eu:";
/// 2024-01-01 08:00:00 in Asia/Shanghai (00:00:00 UTC).
const T0: i64 = 1_704_067_200_000;
const BUSINESS_ID: i64 = 1000000720240101;

fn config(dir: &std::path::Path, redis_url: &str) -> JobConfig {
    let mut config = JobConfig::default();
    config.job.name = "trace".into();
    config.checkpoint.dir = dir.to_path_buf();
    config.checkpoint.interval = Duration::ZERO;
    config.sink.redis.url = redis_url.to_string();
    config.sink.redis.key_prefix = PREFIX.into();
    config.sink.redis.time_zone = "Asia/Shanghai".into();
    config
}

async fn start(config: JobConfig) -> JobManager {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    JobManager::start(
        Arc::new(config),
        JobManagerOptions::default(),
        Arc::new(FixedPartitions(2)),
        listener,
    )
    .await
    .expect("jobmanager starts")
}

/// One HTTP/1.1 exchange: (status, headers, body).
async fn http(
    jm: &JobManager,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(jm.local_addr()).await.expect("connect");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("answer in time")
        .expect("read");
    let response = String::from_utf8(response).expect("utf-8");
    let (head, body) = response.split_once("\r\n\r\n").expect("head and body");
    let status = head[9..12].parse().expect("status code");
    (status, head.to_string(), body.to_string())
}

async fn post_json(jm: &JobManager, path: &str, body: &str) -> (u16, Value) {
    let (status, _, body) = http(
        jm,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body,
    )
    .await;
    (status, serde_json::from_str(&body).expect("JSON answer"))
}

fn redis(server: &RedisServer) -> redis::Connection {
    redis::Client::open(server.url())
        .expect("client")
        .get_connection()
        .expect("connection")
}

fn anchor(business_id: i64, state: i64, timestamp: i64) -> String {
    format!(r#"{{"businessId":{business_id},"state":{state},"timestamp":{timestamp}}}"#)
}

/// What the sink would have written for one receiver, one message and one template.
fn seed(server: &RedisServer) {
    let mut conn = redis(server);
    // LPUSH: the list is newest first.
    let user = [
        anchor(BUSINESS_ID, 10, T0),
        anchor(BUSINESS_ID, 60, T0 + 1_000),
        anchor(BUSINESS_ID, 64, T0 + 5_000),
    ];
    for value in &user {
        let _: () = redis::cmd("LPUSH")
            .arg(format!("{PREFIX}13800000001"))
            .arg(value)
            .query(&mut conn)
            .expect("lpush");
    }
    for value in &user[..2] {
        let _: () = redis::cmd("LPUSH")
            .arg(format!("{PREFIX}Austin:MessageId:msg1"))
            .arg(value)
            .query(&mut conn)
            .expect("lpush");
    }
    let _: () = redis::cmd("HSET")
        .arg(format!("{PREFIX}{BUSINESS_ID}"))
        .arg(&["60", "120", "10", "130", "70", "10", "40001", "2"])
        .query(&mut conn)
        .expect("hset");
    // Without the prefix: must never be read by this job.
    let _: () = redis::cmd("LPUSH")
        .arg("13800000002")
        .arg(anchor(BUSINESS_ID, 10, T0))
        .query(&mut conn)
        .expect("lpush");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_endpoints_answer_in_austins_shapes_from_the_jobs_redis() {
    let server = RedisServer::start().expect("redis-server");
    seed(&server);
    let dir = tempfile::tempdir().expect("tempdir");
    let jm = start(config(dir.path(), &server.url())).await;

    let (status, user) = post_json(&jm, "/trace/user", r#"{"receiver":"13800000001"}"#).await;
    assert_eq!(status, 200, "{user}");
    assert_eq!(user["status"], "0");
    assert_eq!(user["msg"], "操作成功");
    let items = user["data"]["items"].as_array().expect("items");
    // Newest first, and (like austin-web) a new item starts at every RECEIVE: newest first, the
    // RECEIVE comes last and stands alone.
    assert_eq!(items.len(), 2, "{user}");
    assert_eq!(items[0]["businessId"], BUSINESS_ID.to_string());
    assert_eq!(items[0]["title"], "7");
    assert_eq!(
        items[0]["detail"],
        "2024-01-01 08:00:05:消息被点击==>2024-01-01 08:00:01:消息下发成功==>"
    );
    assert_eq!(items[1]["detail"], "2024-01-01 08:00:00:消息接收成功==>");
    for field in ["sendType", "creator"] {
        assert!(items[0][field].is_string(), "{field} present: {user}");
    }

    let (status, message) = post_json(&jm, "/trace/message", r#"{"messageId":"msg1"}"#).await;
    assert_eq!(status, 200);
    let items = message["data"]["items"].as_array().expect("items");
    assert_eq!(
        items[0]["detail"],
        "2024-01-01 08:00:00:消息接收成功==>2024-01-01 08:00:01:消息下发成功==>",
        "oldest first"
    );
    let states: Vec<i64> = items[0]["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["state"].as_i64().expect("state"))
        .collect();
    assert_eq!(states, [10, 60]);

    // A businessId, as a string or a number.
    for body in [
        format!(r#"{{"businessId":"{BUSINESS_ID}"}}"#),
        format!(r#"{{"businessId":{BUSINESS_ID}}}"#),
    ] {
        let (status, chart) = post_json(&jm, "/trace/messageTemplate", &body).await;
        assert_eq!(status, 200, "{chart}");
        let data = &chart["data"];
        assert_eq!(data["title"]["text"], "【7】在2024年01月01日的下发情况：");
        assert_eq!(data["legend"]["data"], json!(["人数"]));
        assert_eq!(
            data["xAxis"]["data"],
            json!(["消息接收成功", "消息下发成功", "消息下发失败", "40001"])
        );
        assert_eq!(data["series"][0]["name"], "人数");
        assert_eq!(data["series"][0]["type"], "bar");
        assert_eq!(data["series"][0]["data"], json!([130, 120, 10, 2]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_keys_are_empty_and_bad_requests_say_what_is_wrong() {
    let server = RedisServer::start().expect("redis-server");
    seed(&server);
    let dir = tempfile::tempdir().expect("tempdir");
    let jm = start(config(dir.path(), &server.url())).await;

    // Unknown receiver and message: empty data, as austin answers. A key without the job's prefix
    // is another job's.
    for (path, body) in [
        ("/trace/user", r#"{"receiver":"19999999999"}"#),
        ("/trace/user", r#"{"receiver":"13800000002"}"#),
        ("/trace/message", r#"{"messageId":"nope"}"#),
    ] {
        let (status, answer) = post_json(&jm, path, body).await;
        assert_eq!(status, 200, "{path} {body}: {answer}");
        assert_eq!(answer["status"], "0");
        assert_eq!(answer["data"]["items"], json!([]), "{path} {body}");
    }
    // A template with nothing counted today: an empty chart for today's businessId.
    let (status, chart) = post_json(&jm, "/trace/messageTemplate", r#"{"businessId":"8"}"#).await;
    assert_eq!(status, 200, "{chart}");
    assert_eq!(chart["data"]["series"][0]["data"], json!([]));
    assert!(chart["data"]["businessId"]
        .as_str()
        .is_some_and(|b| b.len() == 16 && b.starts_with("10000008")));

    // Malformed JSON, missing or empty fields, wrong types: 400 with a message naming the field.
    let cases: [(&str, &str, &str); 7] = [
        ("/trace/user", r#"{"receiver": "#, "malformed JSON"),
        ("/trace/user", "", "empty request body"),
        (
            "/trace/user",
            r#"{"messageId":"msg1"}"#,
            "`receiver` is required",
        ),
        (
            "/trace/user",
            r#"{"receiver":"  "}"#,
            "`receiver` is required",
        ),
        ("/trace/message", r#"{}"#, "`messageId` is required"),
        (
            "/trace/messageTemplate",
            r#"{}"#,
            "`businessId` is required",
        ),
        (
            "/trace/messageTemplate",
            r#"{"businessId":"abc"}"#,
            "16-digit businessId or a template id",
        ),
    ];
    for (path, body, expected) in cases {
        let (status, answer) = post_json(&jm, path, body).await;
        assert_eq!(status, 400, "{path} {body}: {answer}");
        assert_eq!(answer["status"], "A0001", "{answer}");
        let msg = answer["msg"].as_str().expect("msg");
        assert!(msg.contains(expected), "{path} {body}: {msg}");
    }
    let (status, answer) = post_json(&jm, "/trace/user", r#"{"receiver":["a"]}"#).await;
    assert_eq!(status, 400, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_redis_is_a_clear_503_not_a_hang() {
    let mut server = RedisServer::start().expect("redis-server");
    let url = server.url();
    server.stop();
    let dir = tempfile::tempdir().expect("tempdir");
    let jm = start(config(dir.path(), &url)).await;
    let (status, answer) = post_json(&jm, "/trace/user", r#"{"receiver":"1"}"#).await;
    assert_eq!(status, 503, "{answer}");
    assert!(answer["msg"].as_str().is_some_and(|m| m.contains("Redis")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_and_assets_are_served_from_the_binary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let jm = start(config(dir.path(), "redis://127.0.0.1:1/0")).await;
    for (path, content_type, marker) in [
        ("/", "text/html", "/assets/dashboard.js"),
        ("/trace", "text/html", "/assets/trace.js"),
        ("/assets/app.css", "text/css", "grid-template-columns"),
        ("/assets/chart.js", "text/javascript", "SJChart"),
        (
            "/assets/dashboard.js",
            "text/javascript",
            "/dashboard/state",
        ),
        ("/assets/trace.js", "text/javascript", "/trace/"),
    ] {
        let (status, head, body) = http(&jm, "GET", path, &[], "").await;
        assert_eq!(status, 200, "{path}");
        assert!(
            head.to_ascii_lowercase().contains(content_type),
            "{path}: {head}"
        );
        assert!(body.contains(marker), "{path}");
        // No URL to anywhere else (the SVG namespace is a name, never fetched).
        let urls = body.replace("http://www.w3.org/2000/svg", "");
        assert!(
            !urls.contains("http://") && !urls.contains("https://") && !urls.contains("//cdn"),
            "{path} fetches nothing"
        );
    }
    let (status, _, _) = http(&jm, "GET", "/assets/nope.js", &[], "").await;
    assert_eq!(status, 404);

    let (status, _, body) = http(&jm, "GET", "/dashboard/state", &[], "").await;
    assert_eq!(status, 200);
    let state: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(state["overview"]["jobId"], "trace");
    assert_eq!(state["tokenRequired"], false);
    assert_eq!(state["timeZone"], "Asia/Shanghai");
    assert_eq!(state["keyPrefix"], PREFIX);
    for list in ["throughput", "problems", "checkpoints", "savepoints"] {
        assert!(state[list].is_array(), "{list}: {state}");
    }
    assert_eq!(state["deadLetters"]["total"], 0);
}

async fn savepoint_count(jm: &JobManager) -> usize {
    let (_, _, body) = http(jm, "GET", "/jobs/trace/savepoints", &[], "").await;
    let list: Value = serde_json::from_str(&body).expect("JSON");
    list["snapshots"].as_array().expect("snapshots").len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutating_calls_need_the_token_and_reads_stay_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").expect("token file");
    let mut config = config(dir.path(), "redis://127.0.0.1:1/0");
    config.jobmanager.api_token_file = Some(token_file);
    let jm = start(config).await;

    let bad: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::from([
        ("missing", vec![]),
        ("wrong", vec![("Authorization", "Bearer nope")]),
        ("not bearer", vec![("Authorization", "Basic s3cret-token")]),
    ]);
    for path in [
        "/jobs/trace/savepoints",
        "/jobs/trace/checkpoints",
        "/jobs/trace/stop",
    ] {
        for (case, headers) in &bad {
            let (status, head, body) = http(&jm, "POST", path, headers, "{}").await;
            assert_eq!(status, 401, "{path} {case}: {body}");
            assert!(
                head.to_ascii_lowercase()
                    .contains("www-authenticate: bearer"),
                "{head}"
            );
            let errors: Value = serde_json::from_str(&body).expect("JSON");
            let message = errors["errors"][0].as_str().expect("message");
            assert!(message.contains("token"), "{message}");
        }
    }
    // Nothing changed: no savepoint, the job still runs (not stopping).
    assert_eq!(savepoint_count(&jm).await, 0);
    let (_, _, overview) = http(&jm, "GET", "/jobs/trace", &[], "").await;
    assert!(
        !overview.contains("STOPPING") && !overview.contains("FINISHED"),
        "{overview}"
    );

    // Reads stay open.
    for path in [
        "/jobs/trace",
        "/jobs/trace/savepoints",
        "/dashboard/state",
        "/",
    ] {
        let (status, _, _) = http(&jm, "GET", path, &[], "").await;
        assert_eq!(status, 200, "{path}");
    }
    let (_, _, state) = http(&jm, "GET", "/dashboard/state", &[], "").await;
    assert!(state.contains(r#""tokenRequired":true"#), "{state}");

    // The right token gets past the check (the job has no taskmanager yet, so the trigger itself
    // is then answered by the job's state, never 401).
    let (status, _, body) = http(
        &jm,
        "POST",
        "/jobs/trace/savepoints",
        &[("Authorization", "Bearer s3cret-token")],
        "{}",
    )
    .await;
    assert_ne!(status, 401, "{body}");
}
