//! The jobmanager's REST API and taskmanager protocol over real HTTP, with protocol-level fake
//! taskmanagers (no Kafka or Redis needed: the jobmanager never talks to either, except for the
//! partition count, fixed here).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::Method;
use streamjob_worker::api::{
    AutoscalerMetrics, HeartbeatRequest, JobOverview, JobState, OperationInfo, OperationStatus,
    OwnedPartition, PartitionProgress, PartitionState, RegisterRequest, ReleasedPartition,
    RestoreSource, SnapshotList, TaskManagerLoad, TriggerResponse,
};
use streamjob_worker::config::JobConfig;
use streamjob_worker::jobmanager::{FixedPartitions, JobManager, JobManagerOptions};
use streamjob_worker::taskmanager::JobManagerClient;
use tokio::net::TcpListener;

const T: Duration = Duration::from_secs(5);

fn config(dir: &Path) -> JobConfig {
    let mut config = JobConfig::default();
    config.job.name = "trace".into();
    config.source.kafka.topic = "austinTraceLog".into();
    config.checkpoint.dir = dir.to_path_buf();
    config.checkpoint.interval = Duration::ZERO;
    config.jobmanager.heartbeat_interval = Duration::from_millis(200);
    config.jobmanager.heartbeat_timeout = Duration::from_secs(2);
    config
}

async fn start(
    config: JobConfig,
    options: JobManagerOptions,
    partitions: u32,
) -> (JobManager, JobManagerClient) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let jm = JobManager::start(
        Arc::new(config),
        options,
        Arc::new(FixedPartitions(partitions)),
        listener,
    )
    .await
    .expect("jobmanager starts");
    let client = JobManagerClient::new(&format!("http://{}", jm.local_addr()));
    (jm, client)
}

/// A protocol-level taskmanager: takes whatever it is given at once, reports `offset + partition`
/// as committed, releases at once.
fn fake_taskmanager(
    client: JobManagerClient,
    id: &'static str,
    offset: Arc<Mutex<i64>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        client
            .register(id, &RegisterRequest::default())
            .await
            .expect("register");
        let mut held: BTreeMap<i32, u64> = BTreeMap::new();
        let mut released = Vec::new();
        let mut seq = 0;
        let mut desired_version = 0;
        let mut snapshot_ack = None;
        loop {
            seq += 1;
            let base = *offset.lock().expect("lock");
            let request = HeartbeatRequest {
                seq,
                desired_version,
                owned: held
                    .iter()
                    .map(|(p, g)| OwnedPartition {
                        partition: *p,
                        generation: *g,
                    })
                    .collect(),
                progress: held
                    .keys()
                    .map(|p| PartitionProgress {
                        partition: *p,
                        committed_offset: Some(base + i64::from(*p)),
                        high_watermark: Some(base + 100),
                        // Event time moves with the offsets: `base` seconds.
                        watermark_ms: Some(base * 1_000),
                        ..Default::default()
                    })
                    .collect(),
                released: std::mem::take(&mut released),
                snapshot_ack,
                wait: true,
                watermark_ack_ms: None,
                load: None,
                redis: None,
            };
            let Ok(response) = client
                .heartbeat(id, &request, Duration::from_millis(200))
                .await
            else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            desired_version = response.desired_version;
            snapshot_ack = response.snapshot_request.or(snapshot_ack);
            let desired: BTreeMap<i32, u64> = response
                .assignments
                .iter()
                .map(|a| (a.partition, a.generation))
                .collect();
            let base = *offset.lock().expect("lock");
            for (p, g) in held.clone() {
                if desired.get(&p) != Some(&g) {
                    held.remove(&p);
                    released.push(ReleasedPartition {
                        partition: p,
                        generation: g,
                        committed_offset: Some(base + i64::from(p)),
                    });
                }
            }
            held.extend(desired);
        }
    })
}

async fn get<T: serde::de::DeserializeOwned>(client: &JobManagerClient, path: &str) -> T {
    client
        .call::<(), T>(Method::GET, path, None, T_)
        .await
        .expect(path)
}
const T_: Duration = T;

async fn wait_for<F: FnMut(&JobOverview) -> bool>(
    client: &JobManagerClient,
    mut f: F,
) -> JobOverview {
    for _ in 0..200 {
        let overview: JobOverview = get(client, "/jobs/trace").await;
        if f(&overview) {
            return overview;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "condition not reached: {:#?}",
        get::<JobOverview>(client, "/jobs/trace").await
    );
}

async fn trigger(client: &JobManagerClient, path: &str, body: &str) -> OperationInfo {
    let raw = client
        .raw(Method::POST, path, Some(body.as_bytes().to_vec()), T)
        .await
        .expect("post");
    assert_eq!(raw.status, 202, "{}", String::from_utf8_lossy(&raw.body));
    let accepted: TriggerResponse = serde_json::from_slice(&raw.body).expect("trigger response");
    let poll = if path.contains("checkpoints") {
        format!("/jobs/trace/checkpoints/triggers/{}", accepted.request_id)
    } else {
        format!("/jobs/trace/savepoints/{}", accepted.request_id)
    };
    for _ in 0..200 {
        let info: OperationInfo = get(client, &poll).await;
        assert_eq!(info.request_id, accepted.request_id);
        if info.status != OperationStatus::InProgress {
            return info;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("operation {} never finished", accepted.request_id);
}

async fn expect_error(
    client: &JobManagerClient,
    method: Method,
    path: &str,
    body: Option<&str>,
    status: u16,
    needle: &str,
) {
    let raw = client
        .raw(method.clone(), path, body.map(|b| b.as_bytes().to_vec()), T)
        .await
        .expect("answer");
    let text = String::from_utf8_lossy(&raw.body);
    assert_eq!(raw.status, status, "{method} {path}: {text}");
    let json: serde_json::Value = serde_json::from_slice(&raw.body)
        .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}"));
    let message = json["errors"][0]
        .as_str()
        .unwrap_or_else(|| panic!("no errors[0] in {text}"));
    assert!(
        message.contains(needle),
        "{method} {path}: {message:?} lacks {needle:?}"
    );
}

#[tokio::test]
async fn errors_are_json_with_the_right_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (jm, client) = start(config(dir.path()), JobManagerOptions::default(), 4).await;
    let health = client
        .raw(Method::GET, "/healthz", None, T)
        .await
        .expect("healthz");
    assert_eq!(health.status, 200);
    expect_error(&client, Method::GET, "/nope", None, 404, "no such endpoint").await;
    expect_error(
        &client,
        Method::GET,
        "/jobs/other",
        None,
        404,
        "\"other\" not found",
    )
    .await;
    expect_error(
        &client,
        Method::GET,
        "/jobs/trace/savepoints/sp-99-x",
        None,
        404,
        "sp-99-x",
    )
    .await;
    expect_error(
        &client,
        Method::GET,
        "/jobs/trace/checkpoints/triggers/nope",
        None,
        404,
        "nope",
    )
    .await;
    expect_error(
        &client,
        Method::POST,
        "/jobs/other/savepoints",
        Some("{}"),
        404,
        "not found",
    )
    .await;
    expect_error(
        &client,
        Method::POST,
        "/jobs/trace/savepoints",
        Some("{not json"),
        400,
        "malformed",
    )
    .await;
    expect_error(
        &client,
        Method::POST,
        "/jobs/trace/savepoints",
        Some(r#"{"cancelJob":true}"#),
        400,
        "cancelJob",
    )
    .await;
    expect_error(
        &client,
        Method::POST,
        "/jobs/trace/savepoints",
        Some(r#"{"targetDirectory":"rel/dir"}"#),
        400,
        "absolute",
    )
    .await;
    expect_error(
        &client,
        Method::POST,
        "/jobs/trace/stop",
        Some(r#"{"targetDirectory":5}"#),
        400,
        "malformed",
    )
    .await;
    expect_error(
        &client,
        Method::POST,
        "/jobs/trace/checkpoints",
        Some(r#"{"x":1}"#),
        400,
        "no parameters",
    )
    .await;
    expect_error(
        &client,
        Method::DELETE,
        "/jobs/trace",
        None,
        405,
        "method not allowed",
    )
    .await;
    expect_error(
        &client,
        Method::POST,
        "/taskmanagers/ghost/heartbeat",
        Some("{}"),
        404,
        "register first",
    )
    .await;
    expect_error(
        &client,
        Method::POST,
        "/taskmanagers/bad%20id/register",
        Some("{}"),
        400,
        "invalid taskmanager id",
    )
    .await;
    expect_error(
        &client,
        Method::POST,
        "/taskmanagers/tm/register",
        Some(r#"{"owned":"x"}"#),
        400,
        "malformed",
    )
    .await;
    expect_error(
        &client,
        Method::POST,
        "/taskmanagers/ghost/leave",
        Some("{}"),
        404,
        "register first",
    )
    .await;
    let metrics = client
        .raw(Method::GET, "/metrics", None, T)
        .await
        .expect("metrics");
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(text.contains("streamjob_jobmanager_taskmanagers"), "{text}");
    let jobs: serde_json::Value = get(&client, "/jobs").await;
    assert_eq!(jobs["jobs"][0]["id"], "trace");
    jm.shutdown();
}

#[tokio::test]
async fn assignment_savepoints_and_stop_with_savepoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (jm, client) = start(config(dir.path()), JobManagerOptions::default(), 5).await;
    let offset = Arc::new(Mutex::new(1000));
    let a = fake_taskmanager(client.clone(), "tm-a", offset.clone());
    let b = fake_taskmanager(client.clone(), "tm-b", offset.clone());
    let overview = wait_for(&client, |o| {
        o.state == JobState::Running && o.partitions.iter().all(|p| p.committed_offset.is_some())
    })
    .await;
    assert_eq!(overview.taskmanagers.len(), 2);
    let mut loads: Vec<usize> = overview
        .taskmanagers
        .iter()
        .map(|t| t.partitions.len())
        .collect();
    loads.sort_unstable();
    assert_eq!(loads, vec![2, 3]);
    assert_eq!(overview.restored_from, RestoreSource::StartingOffsets);

    *offset.lock().expect("lock") = 2000;
    let done = trigger(&client, "/jobs/trace/savepoints", "").await;
    assert_eq!(done.status, OperationStatus::Completed, "{done:?}");
    let location = done.location.expect("location");
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&location).expect("savepoint file")).expect("json");
    let offsets: Vec<i64> = saved["offsets"]
        .as_array()
        .expect("offsets")
        .iter()
        .map(|o| o["offset"].as_i64().expect("offset"))
        .collect();
    assert_eq!(
        offsets,
        vec![2000, 2001, 2002, 2003, 2004],
        "fresh offsets, reported after the trigger"
    );
    let listed: SnapshotList = get(&client, "/jobs/trace/savepoints").await;
    assert_eq!(listed.snapshots.len(), 1);
    assert_eq!(listed.snapshots[0].path, location);

    let target = dir.path().join("elsewhere");
    let body = format!(
        r#"{{"targetDirectory":{:?}}}"#,
        target.display().to_string()
    );
    let done = trigger(&client, "/jobs/trace/savepoints", &body).await;
    assert!(done
        .location
        .expect("location")
        .starts_with(&target.display().to_string()));

    let checkpoint = trigger(&client, "/jobs/trace/checkpoints", "{}").await;
    assert_eq!(checkpoint.status, OperationStatus::Completed);
    let listed: SnapshotList = get(&client, "/jobs/trace/checkpoints").await;
    assert_eq!(listed.snapshots.len(), 1);

    *offset.lock().expect("lock") = 3000;
    let stopped = trigger(&client, "/jobs/trace/stop", "{}").await;
    assert_eq!(stopped.status, OperationStatus::Completed, "{stopped:?}");
    let overview: JobOverview = get(&client, "/jobs/trace").await;
    assert_eq!(overview.state, JobState::Finished);
    assert!(overview.partitions.iter().all(|p| p.owner.is_none()));
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(stopped.location.expect("location")).expect("file"))
            .expect("json");
    assert_eq!(
        saved["offsets"][4]["offset"], 3004,
        "released offsets are in the final savepoint"
    );
    expect_error(
        &client,
        Method::POST,
        "/jobs/trace/stop",
        Some("{}"),
        409,
        "FINISHED",
    )
    .await;
    a.abort();
    b.abort();
    jm.shutdown();
}

#[tokio::test]
async fn more_taskmanagers_than_partitions_idle_and_a_silent_one_is_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (jm, client) = start(config(dir.path()), JobManagerOptions::default(), 2).await;
    let offset = Arc::new(Mutex::new(0));
    let tms: Vec<_> = ["tm-a", "tm-b", "tm-c"]
        .into_iter()
        .map(|id| fake_taskmanager(client.clone(), id, offset.clone()))
        .collect();
    let overview = wait_for(&client, |o| {
        o.taskmanagers.len() == 3 && o.partitions.iter().all(|p| p.owner.is_some())
    })
    .await;
    assert_eq!(overview.idle_taskmanagers, 1, "{overview:#?}");
    // Crash one that owns a partition: after the heartbeat timeout its partition moves.
    let victim = overview.partitions[0].owner.clone().expect("owner");
    let index = ["tm-a", "tm-b", "tm-c"]
        .iter()
        .position(|t| *t == victim)
        .expect("known");
    tms[index].abort();
    let overview = wait_for(&client, |o| {
        o.taskmanagers.len() == 2 && o.partitions.iter().all(|p| p.owner.is_some())
    })
    .await;
    assert!(overview
        .partitions
        .iter()
        .all(|p| p.owner.as_deref() != Some(victim.as_str())));
    assert_eq!(overview.idle_taskmanagers, 0);
    for tm in tms {
        tm.abort();
    }
    jm.shutdown();
}

#[tokio::test]
async fn checkpoints_restore_the_newest_complete_one_and_skip_a_corrupt_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (jm, client) = start(config(dir.path()), JobManagerOptions::default(), 2).await;
    let offset = Arc::new(Mutex::new(500));
    let tm = fake_taskmanager(client.clone(), "tm-a", offset.clone());
    wait_for(&client, |o| {
        o.partitions
            .iter()
            .all(|p| p.committed_offset == Some(500 + i64::from(p.partition)))
    })
    .await;
    assert_eq!(
        trigger(&client, "/jobs/trace/checkpoints", "").await.status,
        OperationStatus::Completed
    );
    *offset.lock().expect("lock") = 900;
    wait_for(&client, |o| {
        o.partitions
            .iter()
            .all(|p| p.committed_offset == Some(900 + i64::from(p.partition)))
    })
    .await;
    let newest = trigger(&client, "/jobs/trace/checkpoints", "").await;
    tm.abort();
    jm.shutdown();
    // Corrupt the newest: the restart must fall back to the older one.
    let path = newest.location.expect("location");
    let text = std::fs::read_to_string(&path)
        .expect("read")
        .replace("900", "999");
    std::fs::write(&path, text).expect("corrupt");
    let (jm, client) = start(config(dir.path()), JobManagerOptions::default(), 2).await;
    let overview: JobOverview = get(&client, "/jobs/trace").await;
    let RestoreSource::Checkpoint { id, .. } = overview.restored_from else {
        panic!(
            "expected a checkpoint restore, got {:?}",
            overview.restored_from
        );
    };
    assert_eq!(id, 1);
    // The checkpoint's event-time watermark is where the restored job's starts (it was at
    // 900 s before the restart: a restore goes back to the checkpoint, never below it).
    let watermark = |o: &JobOverview| o.watermark.and_then(|w| w.watermark_ms);
    wait_for(&client, |o| watermark(o) == Some(500_000)).await;
    // The restored offsets are what a new owner is told to start from.
    client
        .register("tm-new", &RegisterRequest::default())
        .await
        .expect("register");
    let mut assignments = Vec::new();
    for seq in 1..50 {
        let request = HeartbeatRequest {
            seq,
            wait: false,
            ..Default::default()
        };
        assignments = client
            .heartbeat("tm-new", &request, Duration::from_millis(200))
            .await
            .expect("heartbeat")
            .assignments;
        if assignments.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let starts: Vec<Option<i64>> = assignments.iter().map(|a| a.start_offset).collect();
    assert_eq!(starts, vec![Some(500), Some(501)]);
    // Owners that have not reported an event time yet hold it where it was.
    let overview: JobOverview = get(&client, "/jobs/trace").await;
    assert_eq!(watermark(&overview), Some(500_000));
    jm.shutdown();
}

#[tokio::test]
async fn an_incompatible_savepoint_fails_clearly_unless_allowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (jm, client) = start(config(dir.path()), JobManagerOptions::default(), 4).await;
    let offset = Arc::new(Mutex::new(10));
    let tm = fake_taskmanager(client.clone(), "tm-a", offset);
    wait_for(&client, |o| {
        o.partitions.iter().all(|p| p.committed_offset.is_some())
    })
    .await;
    let savepoint = trigger(&client, "/jobs/trace/savepoints", "")
        .await
        .location
        .expect("location");
    tm.abort();
    jm.shutdown();

    let other = tempfile::tempdir().expect("tempdir");
    let options = JobManagerOptions {
        from_savepoint: Some(savepoint.clone().into()),
        allow_non_restored_state: false,
        startup_grace: None,
        fence_epochs: false,
    };
    let (mut jm, _) = start(config(other.path()), options.clone(), 6).await;
    let reason = tokio::time::timeout(T, jm.failed())
        .await
        .expect("fails fast");
    assert!(
        reason.contains("4 partitions") && reason.contains("6 partitions"),
        "{reason}"
    );
    assert!(reason.contains("--allow-non-restored-state"), "{reason}");
    jm.shutdown();

    let allowed = JobManagerOptions {
        allow_non_restored_state: true,
        ..options
    };
    let (jm, client) = start(config(other.path()), allowed, 6).await;
    let overview = wait_for(&client, |o| o.partition_count == Some(6)).await;
    assert!(matches!(
        overview.restored_from,
        RestoreSource::Savepoint { .. }
    ));
    jm.shutdown();
}

#[tokio::test]
async fn savepoint_retention_deletes_old_files_and_keeps_the_newest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.savepoint.max_count = 2;
    let (jm, client) = start(config, JobManagerOptions::default(), 1).await;
    let tm = fake_taskmanager(client.clone(), "tm-a", Arc::new(Mutex::new(7)));
    wait_for(&client, |o| {
        o.partitions.iter().all(|p| p.committed_offset.is_some())
    })
    .await;
    let mut locations = Vec::new();
    for _ in 0..4 {
        locations.push(
            trigger(&client, "/jobs/trace/savepoints", "")
                .await
                .location
                .expect("location"),
        );
    }
    let listed: SnapshotList = get(&client, "/jobs/trace/savepoints").await;
    let kept: Vec<&str> = listed.snapshots.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(kept, vec![locations[3].as_str(), locations[2].as_str()]);
    assert!(!Path::new(&locations[0]).exists() && !Path::new(&locations[1]).exists());
    tm.abort();
    jm.shutdown();
}

#[tokio::test]
async fn periodic_checkpoints_and_savepoints_keep_only_what_retention_allows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.checkpoint.interval = Duration::from_millis(150);
    config.checkpoint.retain = 2;
    config.savepoint.interval = Duration::from_millis(250);
    config.savepoint.max_count = 2;
    let (jm, client) = start(config, JobManagerOptions::default(), 2).await;
    let tm = fake_taskmanager(client.clone(), "tm-a", Arc::new(Mutex::new(3)));
    wait_for(&client, |o| {
        o.last_savepoint.as_ref().is_some_and(|s| s.id >= 4)
            && o.last_checkpoint.as_ref().is_some_and(|c| c.id >= 4)
    })
    .await;
    let savepoints: SnapshotList = get(&client, "/jobs/trace/savepoints").await;
    let checkpoints: SnapshotList = get(&client, "/jobs/trace/checkpoints").await;
    assert_eq!(savepoints.snapshots.len(), 2, "{savepoints:?}");
    assert_eq!(checkpoints.snapshots.len(), 2, "{checkpoints:?}");
    let on_disk = |sub: &str| {
        std::fs::read_dir(dir.path().join(sub))
            .expect("dir")
            .filter(|e| {
                e.as_ref().is_ok_and(|e| {
                    e.file_name().to_string_lossy().ends_with(".json")
                        && e.file_name() != "MANIFEST.json"
                })
            })
            .count()
    };
    assert!(
        on_disk("savepoints") <= 3,
        "old savepoint files are deleted"
    );
    assert!(
        on_disk("checkpoints") <= 3,
        "old checkpoint files are deleted"
    );
    let metrics = client
        .raw(Method::GET, "/metrics", None, T)
        .await
        .expect("metrics");
    let text = String::from_utf8_lossy(&metrics.body);
    let completed = text
        .lines()
        .find(|l| {
            l.starts_with("streamjob_jobmanager_savepoints_total")
                && l.contains("result=\"completed\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert!(completed.is_some_and(|n| n >= 4.0), "{text}");
    tm.abort();
    jm.shutdown();
}

#[tokio::test]
async fn the_start_up_grace_option_decides_when_partitions_are_first_assigned() {
    // Heartbeats every 10 s: the default grace (two heartbeat intervals) is 20 s.
    let slow = |dir: &Path| {
        let mut config = config(dir);
        config.jobmanager.heartbeat_interval = Duration::from_secs(10);
        config.jobmanager.heartbeat_timeout = Duration::from_secs(60);
        config
    };
    let all_owned = |o: &JobOverview| {
        !o.partitions.is_empty() && o.partitions.iter().all(|p| p.owner.is_some())
    };

    // Standalone mode's zero grace: assigned as soon as a taskmanager is there (wait_for: ≤ 10 s).
    let dir = tempfile::tempdir().expect("tempdir");
    let options = JobManagerOptions {
        startup_grace: Some(Duration::ZERO),
        ..JobManagerOptions::default()
    };
    let (jm, client) = start(slow(dir.path()), options, 4).await;
    let tm = fake_taskmanager(client.clone(), "tm-a", Arc::new(Mutex::new(0)));
    wait_for(&client, all_owned).await;
    tm.abort();
    jm.shutdown();

    // The default grace waits for taskmanagers that may still be running from before a restart.
    let dir = tempfile::tempdir().expect("tempdir");
    let (jm, client) = start(slow(dir.path()), JobManagerOptions::default(), 4).await;
    let tm = fake_taskmanager(client.clone(), "tm-a", Arc::new(Mutex::new(0)));
    wait_for(&client, |o| o.taskmanagers.len() == 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let overview: JobOverview = get(&client, "/jobs/trace").await;
    assert!(!all_owned(&overview), "{overview:#?}");
    tm.abort();
    jm.shutdown();
}

async fn post_accepted(client: &JobManagerClient, path: &str, body: &str) -> String {
    let raw = client
        .raw(Method::POST, path, Some(body.as_bytes().to_vec()), T)
        .await
        .expect("post");
    assert_eq!(raw.status, 202, "{}", String::from_utf8_lossy(&raw.body));
    let accepted: TriggerResponse = serde_json::from_slice(&raw.body).expect("trigger response");
    accepted.request_id
}

/// A client-chosen trigger id makes a trigger idempotent: the same id again (an operator that
/// restarted before recording the answer) is answered with the same request, in progress or
/// done, and takes no second savepoint; a stop sent twice is the same stop, not a 409.
#[tokio::test]
async fn a_repeated_trigger_id_is_answered_with_the_same_savepoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (jm, client) = start(config(dir.path()), JobManagerOptions::default(), 3).await;
    let offset = Arc::new(Mutex::new(100));
    let a = fake_taskmanager(client.clone(), "tm-a", offset.clone());
    wait_for(&client, |o| {
        o.state == JobState::Running && o.partitions.iter().all(|p| p.committed_offset.is_some())
    })
    .await;

    let body = r#"{"triggerId":"streamjob-savepoint-n4-1763700000000-a0"}"#;
    let first = post_accepted(&client, "/jobs/trace/savepoints", body).await;
    assert_eq!(first, "streamjob-savepoint-n4-1763700000000-a0");
    // Sent again while it runs, and again once it completed: the same request each time.
    assert_eq!(
        post_accepted(&client, "/jobs/trace/savepoints", body).await,
        first
    );
    let done = trigger(&client, "/jobs/trace/savepoints", body).await;
    assert_eq!(done.request_id, first);
    assert_eq!(done.status, OperationStatus::Completed, "{done:?}");
    let listed: SnapshotList = get(&client, "/jobs/trace/savepoints").await;
    assert_eq!(
        listed.snapshots.len(),
        1,
        "one savepoint for one trigger id"
    );
    // A new id is a new savepoint.
    let second = trigger(
        &client,
        "/jobs/trace/savepoints",
        r#"{"triggerId":"streamjob-savepoint-n4-1763700000000-a1"}"#,
    )
    .await;
    assert_ne!(second.location, done.location);
    let listed: SnapshotList = get(&client, "/jobs/trace/savepoints").await;
    assert_eq!(listed.snapshots.len(), 2);

    // Bad ids and an id of another kind are refused.
    for bad in [
        r#"{"triggerId":""}"#,
        r#"{"triggerId":"a b"}"#,
        r#"{"triggerId":"../x"}"#,
    ] {
        expect_error(
            &client,
            Method::POST,
            "/jobs/trace/savepoints",
            Some(bad),
            400,
            "triggerId",
        )
        .await;
    }
    expect_error(
        &client,
        Method::POST,
        "/jobs/trace/stop",
        Some(body),
        409,
        "another kind",
    )
    .await;

    let stop = r#"{"triggerId":"streamjob-upgrade-1763700000000-a0"}"#;
    let stopping = post_accepted(&client, "/jobs/trace/stop", stop).await;
    assert_eq!(
        post_accepted(&client, "/jobs/trace/stop", stop).await,
        stopping
    );
    let stopped = trigger(&client, "/jobs/trace/stop", stop).await;
    assert_eq!(stopped.request_id, stopping);
    assert_eq!(stopped.status, OperationStatus::Completed, "{stopped:?}");
    let listed: SnapshotList = get(&client, "/jobs/trace/savepoints").await;
    assert_eq!(listed.snapshots.len(), 3, "one stop, one savepoint");
    // Another stop (a new id) on a finished job is still refused.
    expect_error(
        &client,
        Method::POST,
        "/jobs/trace/stop",
        Some(r#"{"triggerId":"streamjob-upgrade-1763700000000-a1"}"#),
        409,
        "FINISHED",
    )
    .await;
    a.abort();
    jm.shutdown();
}

#[tokio::test]
async fn the_autoscaler_metrics_carry_each_taskmanagers_load_and_every_partitions_offsets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (jm, client) = start(config(dir.path()), JobManagerOptions::default(), 2).await;
    let offset = Arc::new(Mutex::new(10));
    let tm = fake_taskmanager(client.clone(), "tm-a", offset);
    wait_for(&client, |o| {
        o.partitions.iter().all(|p| p.committed_offset.is_some())
    })
    .await;
    client
        .register("tm-b", &RegisterRequest::default())
        .await
        .expect("register");
    let load = TaskManagerLoad {
        elapsed_ms: 60_000,
        busy_ms: 15_000,
        processed_events: 12_345,
        redis_applies: 600,
        redis_retries: 2,
        redis_apply_p99_ms: 7.5,
    };
    let request = HeartbeatRequest {
        seq: 1,
        wait: false,
        load: Some(load),
        ..Default::default()
    };
    client
        .heartbeat("tm-b", &request, Duration::from_millis(200))
        .await
        .expect("heartbeat");
    let metrics: AutoscalerMetrics = get(&client, "/jobs/trace/autoscaler-metrics").await;
    assert_eq!(metrics.job_id, "trace");
    assert_eq!(metrics.partition_count, Some(2));
    let b = metrics
        .taskmanagers
        .iter()
        .find(|t| t.id == "tm-b")
        .expect("tm-b listed");
    assert_eq!(b.load, Some(load));
    let a = metrics
        .taskmanagers
        .iter()
        .find(|t| t.id == "tm-a")
        .expect("tm-a listed");
    assert_eq!(a.load, None, "the fake taskmanager reports no load");
    // The fake reports `offset + partition` committed and `offset + 100` as high watermark.
    let positions: Vec<(Option<i64>, Option<i64>)> = metrics
        .partitions
        .iter()
        .map(|p| (p.committed_offset, p.high_watermark))
        .collect();
    assert_eq!(
        positions,
        vec![(Some(10), Some(110)), (Some(11), Some(110))]
    );
    let raw = client
        .raw(Method::GET, "/metrics", None, T)
        .await
        .expect("metrics");
    let text = String::from_utf8_lossy(&raw.body);
    for line in [
        "streamjob_jobmanager_taskmanager_busy_seconds{job=\"trace\",taskmanager=\"tm-b\"} 15.0",
        "streamjob_jobmanager_taskmanager_processed_events{job=\"trace\",taskmanager=\"tm-b\"} 12345",
        "streamjob_jobmanager_taskmanager_redis_apply_p99_seconds{job=\"trace\",taskmanager=\"tm-b\"} 0.0075",
        "streamjob_jobmanager_partition_high_watermark{job=\"trace\",partition=\"0\"} 110",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    expect_error(
        &client,
        Method::GET,
        "/jobs/other/autoscaler-metrics",
        None,
        404,
        "not found",
    )
    .await;
    tm.abort();
    jm.shutdown();
}

#[tokio::test]
async fn a_taskmanager_that_never_takes_its_assignment_is_held_back_and_the_others_keep_everything()
{
    let dir = tempfile::tempdir().expect("tempdir");
    let (jm, client) = start(config(dir.path()), JobManagerOptions::default(), 4).await;
    let good = fake_taskmanager(client.clone(), "tm-good", Arc::new(Mutex::new(0)));
    let all_good = |o: &JobOverview| {
        o.partitions
            .iter()
            .all(|p| p.state == PartitionState::Running && p.owner.as_deref() == Some("tm-good"))
    };
    wait_for(&client, all_good).await;
    // tm-stuck registers and heartbeats, but never takes what it is given (its claims fail).
    client
        .register("tm-stuck", &RegisterRequest::default())
        .await
        .expect("register");
    let stuck_client = client.clone();
    let stuck = tokio::spawn(async move {
        for seq in 1.. {
            let request = HeartbeatRequest {
                seq,
                wait: true,
                ..HeartbeatRequest::default()
            };
            let _ = stuck_client
                .heartbeat("tm-stuck", &request, Duration::from_millis(200))
                .await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let overview = wait_for(&client, |o| {
        o.taskmanagers
            .iter()
            .any(|t| t.id == "tm-stuck" && t.held_back.is_some())
    })
    .await;
    let stuck_info = overview
        .taskmanagers
        .iter()
        .find(|t| t.id == "tm-stuck")
        .expect("listed");
    assert!(
        stuck_info
            .held_back
            .as_deref()
            .is_some_and(|r| r.contains("did not take partitions")),
        "{stuck_info:?}"
    );
    wait_for(&client, all_good).await;
    let metrics = client
        .raw(Method::GET, "/metrics", None, T)
        .await
        .expect("metrics");
    let metrics = String::from_utf8_lossy(&metrics.body);
    let taken_back = streamjob_worker::metrics::sample(
        &metrics,
        "streamjob_jobmanager_assignments_taken_back_total",
        "job=\"trace\"",
    );
    assert!(taken_back.is_some_and(|n| n >= 1.0), "{metrics}");
    assert_eq!(
        streamjob_worker::metrics::sample(
            &metrics,
            "streamjob_jobmanager_taskmanagers_held_back",
            "job=\"trace\""
        ),
        Some(1.0),
        "{metrics}"
    );
    stuck.abort();
    good.abort();
    jm.shutdown();
}
