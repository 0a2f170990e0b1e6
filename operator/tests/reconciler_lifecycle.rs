//! The reconciler's lifecycle I/O, asserted against a mocked API server and a scripted jobmanager
//! on a real socket: the status names the step before the jobmanager is called, the workloads
//! stay untouched until the savepoint is on the volume, failures and timeouts are recorded,
//! deletion takes a final savepoint before the finalizer goes. Every API request is covered by
//! the RBAC table.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use serde_json::{json, Value};
use streamjob_operator::crd::StreamJob;
use streamjob_operator::jobmanager_client::{BaseUrl, JobManagerClient};
use streamjob_operator::metrics::Metrics;
use streamjob_operator::planner::lifecycle::LATEST_SAVEPOINT_ANNOTATION;
use streamjob_operator::planner::FINALIZER;
use streamjob_operator::rbac;
use streamjob_operator::reconciler::{self, Context};
use support::fake_api::{FakeApi, Recorded};
use support::fake_jobmanager::{FakeJobManager, JmFault, JmRequest};

const JOB: &str = "/apis/streaming.austin.dev/v1alpha1/namespaces/default/streamjobs/trace";
const CONFIG_MAP: &str = "/api/v1/namespaces/default/configmaps/trace-config";
const PVC: &str = "/api/v1/namespaces/default/persistentvolumeclaims/trace-savepoints";
const JOBMANAGER: &str = "/apis/apps/v1/namespaces/default/deployments/trace-jobmanager";
const TASKMANAGER: &str = "/apis/apps/v1/namespaces/default/deployments/trace-taskmanager";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";

fn fixed_now() -> Timestamp {
    Timestamp::from_second(1_763_700_000).expect("valid time")
}

struct Setup {
    ctx: Arc<Context>,
    api: FakeApi,
    jm: FakeJobManager,
}

async fn setup(timeout: Duration) -> Setup {
    let (client, api) = FakeApi::start();
    let jm = FakeJobManager::start("trace").await;
    let jobmanager = JobManagerClient::new(BaseUrl::Fixed(jm.url.clone()), timeout);
    let ctx = Arc::new(
        Context::with_clock(client.clone(), Arc::new(Metrics::default()), fixed_now)
            .with_jobmanager(jobmanager),
    );
    support::start_caches(&ctx, &client).await;
    let mut job = support::sample("minimal.yaml");
    job.metadata.finalizers = Some(vec![FINALIZER.to_string()]);
    api.put(JOB, serde_json::to_value(&job).expect("serialises"));
    Setup { ctx, api, jm }
}

fn stored(api: &FakeApi) -> Arc<StreamJob> {
    Arc::new(serde_json::from_value(api.get(JOB).expect("job stored")).expect("job parses"))
}

fn finish_rollouts(api: &FakeApi) {
    api.finish_rollouts(&[JOBMANAGER, TASKMANAGER]);
}

/// Reconciles the stored job once the watch caches show the API server's state.
async fn reconcile_action(s: &Setup) -> Result<Action, String> {
    support::settle(&s.ctx, &s.api).await;
    reconciler::reconcile(stored(&s.api), s.ctx.clone())
        .await
        .map_err(|e| e.to_string())
}

async fn reconcile(s: &Setup) -> Result<(), String> {
    reconcile_action(s).await.map(|_| ())
}

/// A running job: children created and rolled out, status Running.
async fn running(s: &Setup) {
    reconcile(s).await.expect("creates");
    finish_rollouts(&s.api);
    reconcile(s).await.expect("runs");
    let phase = s.api.get(JOB).expect("job")["status"]["phase"].clone();
    assert_eq!(phase, "Running");
}

fn edit(api: &FakeApi, change: impl FnOnce(&mut Value)) {
    let mut job = api.get(JOB).expect("job");
    change(&mut job);
    let generation = job["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
    job["metadata"]["generation"] = json!(generation);
    api.put(JOB, job);
}

fn operation(api: &FakeApi) -> Value {
    api.get(JOB).expect("job")["status"]["currentOperation"].clone()
}

fn applied(requests: &[Recorded], path: &str) -> bool {
    requests
        .iter()
        .any(|r| r.method == "PATCH" && r.path == path && r.content_type.contains("apply-patch"))
}

fn event_reasons(requests: &[Recorded]) -> Vec<String> {
    requests
        .iter()
        .filter(|r| r.is("POST", EVENTS))
        .filter_map(|r| r.body.as_ref()?["reason"].as_str().map(str::to_string))
        .collect()
}

fn assert_rbac_covers(requests: &[Recorded]) {
    for r in requests {
        let a = rbac::classify(&r.method, &r.path, &r.query)
            .unwrap_or_else(|| panic!("unclassifiable request {} {}", r.method, r.path));
        assert!(
            rbac::allows(&a.group, &a.resource, &a.verb),
            "the RBAC table does not allow {a:?}"
        );
    }
}

fn jm_calls(requests: &[JmRequest]) -> Vec<String> {
    requests
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

#[tokio::test]
async fn a_savepoint_upgrade_records_each_step_before_acting() {
    let s = setup(Duration::from_secs(2)).await;
    running(&s).await;
    // Whenever the jobmanager gets a stop, note the step the stored status names at that moment.
    let seen = Arc::new(Mutex::new(Vec::<Value>::new()));
    {
        let api = s.api.clone();
        let seen = seen.clone();
        s.jm.with(move |state| {
            state.on_request = Some(Box::new(move |request: &JmRequest| {
                if request.method == "POST" {
                    let op = api
                        .get(JOB)
                        .map(|j| j["status"]["currentOperation"].clone());
                    seen.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(op.unwrap_or(Value::Null));
                }
            }));
        });
    }
    s.jm.with(|state| state.complete_at_once = false);
    edit(&s.api, |j| {
        j["spec"]["image"] = json!("registry.example/streamjob-worker:0.2.0");
        j["spec"]["upgradeMode"] = json!("savepoint");
    });
    s.api.clear_requests();
    s.jm.clear_requests();
    reconcile(&s).await.expect("starts the upgrade");

    assert_eq!(
        jm_calls(&s.jm.requests()),
        ["GET /jobs/trace", "POST /jobs/trace/stop"],
        "stop-with-savepoint first"
    );
    // Every call carries the job's API token: the one in the Secret the operator applied.
    let secret = s
        .api
        .get("/api/v1/namespaces/default/secrets/trace-api-token")
        .expect("the API token Secret");
    let token = base64::engine::general_purpose::STANDARD
        .decode(secret["data"]["token"].as_str().expect("token"))
        .map(String::from_utf8)
        .expect("base64")
        .expect("utf-8");
    assert_eq!(token.len(), 64, "32 random bytes, hex");
    for request in s.jm.requests() {
        assert_eq!(
            request.authorization.as_deref(),
            Some(format!("Bearer {token}").as_str()),
            "{} {}",
            request.method,
            request.path
        );
    }
    let at_stop = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(at_stop.len(), 1);
    assert_eq!(at_stop[0]["kind"], "upgrade", "{at_stop:?}");
    assert_eq!(
        at_stop[0]["step"], "TriggerSavepoint",
        "recorded before the call"
    );
    // The stop carries a trigger id derived from the operation recorded before it, so the same
    // call after an operator restart is answered with the same stop.
    let recorded: streamjob_operator::crd::Operation =
        serde_json::from_value(at_stop[0].clone()).expect("operation");
    let bodies = s.jm.with(|state| state.post_bodies.clone());
    let body: Value = serde_json::from_str(&bodies[0]).expect("JSON body");
    assert_eq!(
        body["triggerId"],
        json!(streamjob_operator::planner::lifecycle::trigger_id(
            &recorded
        ))
    );
    let op = operation(&s.api);
    assert_eq!(op["step"], "AwaitSavepoint");
    assert_eq!(op["triggerId"], "req-1");
    let requests = s.api.requests();
    for path in [CONFIG_MAP, JOBMANAGER, TASKMANAGER] {
        assert!(
            !applied(&requests, path),
            "{path} untouched before the savepoint"
        );
    }
    assert!(event_reasons(&requests).contains(&"UpgradeStarted".to_string()));
    assert_rbac_covers(&requests);

    // Still in progress: the operator polls and waits.
    s.jm.clear_requests();
    reconcile(&s).await.expect("polls");
    assert!(jm_calls(&s.jm.requests()).contains(&"GET /jobs/trace/savepoints/req-1".to_string()));
    assert_eq!(operation(&s.api)["step"], "AwaitSavepoint");

    // Complete: recorded, then the new children roll out with the restore point.
    s.jm.with(|state| state.complete("req-1"));
    let path = s.jm.with(|state| state.savepoints[0].path.clone());
    s.api.clear_requests();
    reconcile(&s).await.expect("rolls out");
    let job = s.api.get(JOB).expect("job");
    assert_eq!(job["status"]["currentOperation"]["step"], "RollOut");
    assert_eq!(
        job["status"]["currentOperation"]["savepointPath"],
        json!(path)
    );
    assert_eq!(job["status"]["lastSavepoint"]["path"], json!(path));
    assert_eq!(job["status"]["lastSavepoint"]["trigger"], "upgrade");
    let requests = s.api.requests();
    let first_status = requests
        .iter()
        .position(|r| r.path.ends_with("/status"))
        .expect("status written");
    let first_apply = requests
        .iter()
        .position(|r| r.path == CONFIG_MAP)
        .expect("config applied");
    assert!(
        first_status < first_apply,
        "the step is recorded before the rollout"
    );
    let config = s.api.get(CONFIG_MAP).expect("config map");
    let yaml = config["data"]["job.yaml"].as_str().unwrap_or_default();
    assert!(yaml.contains(&format!("restoreFrom: {path}")), "{yaml}");
    let image = s.api.get(JOBMANAGER).expect("jm")["spec"]["template"]["spec"]["containers"][0]
        ["image"]
        .clone();
    assert_eq!(image, "registry.example/streamjob-worker:0.2.0");
    assert_rbac_covers(&requests);

    // The new jobmanager runs, restored from the savepoint: done, Ready.
    finish_rollouts(&s.api);
    s.jm.with(|state| {
        state.overview.state = streamjob_worker::api::JobState::Running;
        state.overview.restored_from = streamjob_worker::api::RestoreSource::Savepoint {
            path: path.clone(),
            id: 1,
        };
        state.overview.taskmanagers = vec![streamjob_worker::api::TaskManagerInfo {
            id: "tm".into(),
            address: None,
            partitions: vec![0, 1, 2, 3],
            idle: false,
            held_back: None,
            revision: None,
            last_heartbeat_ms_ago: 5,
        }];
    });
    s.api.clear_requests();
    reconcile(&s).await.expect("completes");
    let job = s.api.get(JOB).expect("job");
    assert!(
        job["status"]["currentOperation"].is_null(),
        "{}",
        job["status"]
    );
    assert_eq!(job["status"]["phase"], "Running");
    let ready = job["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned())
        .expect("Ready");
    assert_eq!(ready["status"], "True", "{ready}");
    assert_eq!(job["status"]["job"]["state"], "RUNNING");
    assert!(event_reasons(&s.api.requests()).contains(&"UpgradeCompleted".to_string()));
    // The restore point leaves the config without rolling the pods again.
    let yaml = s.api.get(CONFIG_MAP).expect("cm")["data"]["job.yaml"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!yaml.contains("restoreFrom"), "{yaml}");
}

#[tokio::test]
async fn a_failing_jobmanager_is_retried_then_the_upgrade_gives_up_with_advice() {
    let s = setup(Duration::from_secs(2)).await;
    running(&s).await;
    edit(&s.api, |j| {
        j["spec"]["image"] = json!("registry.example/streamjob-worker:0.2.0");
        j["spec"]["upgradeMode"] = json!("savepoint");
        j["spec"]["savepoint"]["maxAttempts"] = json!(2);
    });
    s.jm.with(|state| state.fault = JmFault::Error);
    s.api.clear_requests();
    reconcile(&s).await.expect("records the failure");
    let op = operation(&s.api);
    assert_eq!(op["attempts"], 1, "{op}");
    assert_eq!(op["step"], "TriggerSavepoint");
    assert!(op["retryAfter"].is_string(), "{op}");
    assert!(op["message"]
        .as_str()
        .is_some_and(|m| m.contains("injected failure")));
    let requests = s.api.requests();
    let warning = requests
        .iter()
        .filter(|r| r.is("POST", EVENTS))
        .filter_map(|r| r.body.as_ref())
        .find(|e| e["reason"] == "SavepointFailed")
        .expect("a SavepointFailed event");
    assert_eq!(warning["type"], "Warning");

    // Before the retry time nothing is sent.
    s.jm.clear_requests();
    reconcile(&s).await.expect("waits");
    assert!(
        !jm_calls(&s.jm.requests())
            .iter()
            .any(|c| c.starts_with("POST")),
        "{:?}",
        s.jm.requests()
    );
    // After it, the second attempt fails too: give up, Degraded, nothing torn down.
    edit(&s.api, |j| {
        j["status"]["currentOperation"]["retryAfter"] = json!("2025-01-01T00:00:00Z");
        // `edit` bumps the generation; the spec did not change, so put it back.
        let generation = j["metadata"]["generation"].as_i64().unwrap_or(2) - 1;
        j["metadata"]["generation"] = json!(generation);
    });
    s.api.clear_requests();
    reconcile(&s).await.expect("gives up");
    let job = s.api.get(JOB).expect("job");
    assert_eq!(job["status"]["currentOperation"]["step"], "Failed");
    let degraded = job["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Degraded").cloned())
        .expect("Degraded");
    assert_eq!(degraded["status"], "True");
    assert!(
        degraded["message"]
            .as_str()
            .is_some_and(|m| m.contains("upgradeMode: last-state")),
        "{degraded}"
    );
    let requests = s.api.requests();
    for path in [CONFIG_MAP, JOBMANAGER, TASKMANAGER] {
        assert!(!applied(&requests, path), "{path} untouched");
    }
    assert!(event_reasons(&requests).contains(&"SavepointGaveUp".to_string()));
    assert_rbac_covers(&requests);
}

#[tokio::test]
async fn a_hanging_jobmanager_times_out_and_the_job_is_not_ready() {
    let s = setup(Duration::from_millis(300)).await;
    running(&s).await;
    s.jm.with(|state| state.fault = JmFault::Hang);
    let started = std::time::Instant::now();
    reconcile(&s)
        .await
        .expect("reconciles without the jobmanager");
    // Bounded by the client's timeout, not by the jobmanager (which holds the answer 30 s).
    assert!(started.elapsed() < Duration::from_secs(20));
    let job = s.api.get(JOB).expect("job");
    let ready = job["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned())
        .expect("Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "JobManagerUnreachable");
    assert!(ready["message"]
        .as_str()
        .is_some_and(|m| m.contains("no answer within")));
}

#[tokio::test]
async fn deletion_takes_a_final_savepoint_annotates_the_kept_pvc_then_releases() {
    let s = setup(Duration::from_secs(2)).await;
    running(&s).await;
    s.jm.with(|state| state.complete_at_once = false);
    let mut deleting = s.api.get(JOB).expect("job");
    deleting["metadata"]["deletionTimestamp"] =
        serde_json::to_value(Time(fixed_now())).expect("time");
    s.api.put(JOB, deleting);
    s.api.clear_requests();
    s.jm.clear_requests();
    // Waiting for the savepoint is a plain requeue, not a failure (no WARN, no backoff).
    let action = reconcile_action(&s)
        .await
        .expect("the finalizer stays while the savepoint runs");
    assert_eq!(
        action,
        Action::requeue(streamjob_operator::planner::lifecycle::POLL_INTERVAL)
    );
    assert_eq!(
        jm_calls(&s.jm.requests()),
        ["GET /jobs/trace", "POST /jobs/trace/stop"]
    );
    let job = s.api.get(JOB).expect("job");
    assert_eq!(job["metadata"]["finalizers"], json!([FINALIZER]));
    assert_eq!(job["status"]["phase"], "Deleting");
    assert_eq!(job["status"]["currentOperation"]["kind"], "delete");
    assert_eq!(job["status"]["currentOperation"]["step"], "AwaitSavepoint");
    assert!(event_reasons(&s.api.requests()).contains(&"FinalSavepoint".to_string()));

    s.jm.with(|state| state.complete("req-1"));
    let path = s.jm.with(|state| state.savepoints[0].path.clone());
    s.api.clear_requests();
    reconcile(&s).await.expect("releases");
    let pvc = s.api.get(PVC).expect("pvc");
    assert_eq!(
        pvc["metadata"]["annotations"][LATEST_SAVEPOINT_ANNOTATION],
        json!(path),
        "the kept volume names the final savepoint"
    );
    let requests = s.api.requests();
    let removal = requests
        .iter()
        .find(|r| r.is("PATCH", JOB) && r.content_type.contains("json-patch"))
        .expect("finalizer removal");
    assert!(removal
        .body
        .as_ref()
        .is_some_and(|b| b.to_string().contains("remove")));
    assert!(event_reasons(&requests).contains(&"Deleting".to_string()));
    assert_rbac_covers(&requests);
}

#[tokio::test]
async fn deleting_a_job_that_never_ran_releases_at_once() {
    let s = setup(Duration::from_secs(2)).await;
    // Children created, but the jobmanager never becomes ready.
    reconcile(&s).await.expect("creates");
    let job = stored(&s.api);
    assert!(
        job.spec.savepoint.on_delete.final_savepoint,
        "the sample asks for a final savepoint"
    );
    let mut deleting = s.api.get(JOB).expect("job");
    deleting["metadata"]["deletionTimestamp"] =
        serde_json::to_value(Time(fixed_now())).expect("time");
    s.api.put(JOB, deleting);
    s.api.clear_requests();
    s.jm.clear_requests();
    let action = reconcile_action(&s).await.expect("releases");
    assert_eq!(action, Action::await_change());
    assert!(
        !jm_calls(&s.jm.requests())
            .iter()
            .any(|c| c.starts_with("POST")),
        "no savepoint is asked of a jobmanager that never ran: {:?}",
        jm_calls(&s.jm.requests())
    );
    assert!(s.api.get(JOB).is_none(), "finalizer removed, object gone");
    let reasons = event_reasons(&s.api.requests());
    assert!(
        reasons.contains(&"FinalSavepointSkipped".to_string()),
        "{reasons:?}"
    );
    assert_rbac_covers(&s.api.requests());
}
