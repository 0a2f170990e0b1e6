//! The reconciler's API calls, asserted against a mocked API server (method, path, query, body):
//! create, update, drift repair, status write, a failing call, the finalizer; and every request
//! it makes is covered by the RBAC table.

mod support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use serde_json::{json, Value};
use streamjob_operator::crd::{StreamJob, UpgradeMode};
use streamjob_operator::jobmanager_client::{BaseUrl, JobManagerClient};
use streamjob_operator::metrics::Metrics;
use streamjob_operator::planner::{self, FINALIZER};
use streamjob_operator::rbac;
use streamjob_operator::reconciler::{self, Context};
use support::fake_api::{FakeApi, Recorded};

const NS: &str = "default";
const JOB: &str = "/apis/streaming.austin.dev/v1alpha1/namespaces/default/streamjobs/trace";
const CONFIG_MAP: &str = "/api/v1/namespaces/default/configmaps/trace-config";
const PVC: &str = "/api/v1/namespaces/default/persistentvolumeclaims/trace-savepoints";
const SERVICE: &str = "/api/v1/namespaces/default/services/trace-jobmanager";
const SECRET: &str = "/api/v1/namespaces/default/secrets/trace-api-token";
const JOBMANAGER: &str = "/apis/apps/v1/namespaces/default/deployments/trace-jobmanager";
const TASKMANAGER: &str = "/apis/apps/v1/namespaces/default/deployments/trace-taskmanager";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";
const JM_POLICY: &str =
    "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies/trace-jobmanager";
const TM_POLICY: &str =
    "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies/trace-taskmanager";

fn fixed_now() -> Timestamp {
    Timestamp::from_second(1_763_700_000).expect("valid time")
}

/// The minimal sample as stored in the API server, with our finalizer already in place.
fn stored_job(api: &FakeApi) -> StreamJob {
    let mut job = support::sample("minimal.yaml");
    job.metadata.finalizers = Some(vec![FINALIZER.to_string()]);
    api.put(JOB, serde_json::to_value(&job).expect("serialises"));
    job
}

async fn setup() -> (Arc<Context>, FakeApi, Arc<Metrics>) {
    let (client, api) = FakeApi::start();
    let metrics = Arc::new(Metrics::default());
    // No jobmanager answers here (a closed port): the lifecycle sees it as unreachable.
    let jobmanager = JobManagerClient::new(
        BaseUrl::Fixed("http://127.0.0.1:9".into()),
        Duration::from_millis(500),
    );
    let ctx = Arc::new(
        Context::with_clock(client.clone(), metrics.clone(), fixed_now).with_jobmanager(jobmanager),
    );
    support::start_caches(&ctx, &client).await;
    api.clear_requests();
    (ctx, api, metrics)
}

fn assert_rbac_covers(requests: &[Recorded]) {
    for r in requests {
        let attributes = rbac::classify(&r.method, &r.path, &r.query)
            .unwrap_or_else(|| panic!("unclassifiable request {} {}", r.method, r.path));
        assert!(
            rbac::allows(&attributes.group, &attributes.resource, &attributes.verb),
            "the RBAC table does not allow {attributes:?} ({} {})",
            r.method,
            r.path
        );
    }
}

fn applies(requests: &[Recorded]) -> Vec<&str> {
    requests
        .iter()
        .filter(|r| r.method == "PATCH" && r.content_type.contains("apply-patch"))
        .map(|r| r.path.as_str())
        .collect()
}

fn body_of<'a>(requests: &'a [Recorded], method: &str, path: &str) -> &'a Value {
    requests
        .iter()
        .rev()
        .find(|r| r.is(method, path))
        .and_then(|r| r.body.as_ref())
        .unwrap_or_else(|| panic!("no {method} {path}"))
}

fn event_reasons(requests: &[Recorded]) -> Vec<String> {
    requests
        .iter()
        .filter(|r| r.is("POST", EVENTS))
        .filter_map(|r| r.body.as_ref()?["reason"].as_str().map(str::to_string))
        .collect()
}

fn finish_rollouts(api: &FakeApi) {
    api.finish_rollouts(&[JOBMANAGER, TASKMANAGER]);
}

fn job_from_store(api: &FakeApi) -> Arc<StreamJob> {
    Arc::new(serde_json::from_value(api.get(JOB).expect("job stored")).expect("job parses"))
}

/// Reconciles the stored job once the watch caches show the API server's state, as a running
/// controller does (it reconciles on the watch event of each change).
async fn reconcile_settled(
    ctx: &Arc<Context>,
    api: &FakeApi,
) -> Result<Action, streamjob_operator::Error> {
    support::settle(ctx, api).await;
    reconciler::reconcile(job_from_store(api), ctx.clone()).await
}

#[tokio::test]
async fn a_new_streamjob_gets_its_children_status_and_events() {
    let (ctx, api, metrics) = setup().await;
    let job = stored_job(&api);
    let action = reconciler::reconcile(Arc::new(job.clone()), ctx)
        .await
        .expect("reconciles");
    // Deploying with no jobmanager up: the watches bring progress; a spread resync is the net.
    assert_eq!(
        action,
        Action::requeue(reconciler::resync(planner::WATCH_RESYNC, &job))
    );

    let requests = api.requests();
    let reads: Vec<(&str, &str)> = requests
        .iter()
        .filter(|r| r.method == "GET")
        .map(|r| (r.method.as_str(), r.path.as_str()))
        .collect();
    assert_eq!(
        reads,
        [],
        "children come from the watch caches, pods too, and the API token Secret: a new job's \
         token is drawn once and kept until the cache shows its Secret"
    );
    assert_eq!(
        applies(&requests),
        [
            CONFIG_MAP,
            PVC,
            SECRET,
            SERVICE,
            JM_POLICY,
            TM_POLICY,
            JOBMANAGER,
            TASKMANAGER,
            &format!("{JOB}/status")[..]
        ]
    );
    for r in requests
        .iter()
        .filter(|r| r.content_type.contains("apply-patch"))
    {
        let mut pairs: Vec<&str> = r.query.split('&').filter(|p| !p.is_empty()).collect();
        pairs.sort_unstable();
        assert_eq!(
            pairs,
            [
                "fieldManager=streamjob-operator",
                "fieldValidation=Ignore",
                "force=true"
            ],
            "one field manager, forced, and no second (strict) parse of the body: {}",
            r.path
        );
    }

    let config_map = body_of(&requests, "PATCH", CONFIG_MAP);
    assert_eq!(config_map["kind"], "ConfigMap");
    assert!(config_map["data"]["job.yaml"]
        .as_str()
        .is_some_and(|y| y.contains("url: http://trace-jobmanager.default.svc:8081")));
    assert_eq!(
        config_map["metadata"]["ownerReferences"][0]["kind"],
        "StreamJob"
    );
    let pvc = body_of(&requests, "PATCH", PVC);
    assert!(
        pvc["metadata"].get("ownerReferences").is_none(),
        "kept PVC is not owned: {pvc}"
    );
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "1Gi");
    let taskmanager = body_of(&requests, "PATCH", TASKMANAGER);
    assert_eq!(taskmanager["spec"]["replicas"], 1);
    assert_eq!(
        taskmanager["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "streamjob-operator"
    );

    let status = &body_of(&requests, "PATCH", &format!("{JOB}/status"))["status"];
    assert_eq!(status["phase"], "Deploying");
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["selector"], "app.kubernetes.io/component=taskmanager,app.kubernetes.io/instance=trace,app.kubernetes.io/name=streamjob");
    let conditions: Vec<(&str, &str)> = status["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap_or(""),
                c["status"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        conditions,
        [
            ("Ready", "False"),
            ("Progressing", "True"),
            ("Degraded", "False")
        ]
    );
    assert!(
        event_reasons(&requests).contains(&"Deploying".to_string()),
        "{:?}",
        event_reasons(&requests)
    );
    assert!(metrics
        .encode()
        .contains("streamjob_operator_reconciles_total 1"));
    assert_rbac_covers(&requests);
}

#[tokio::test]
async fn a_finished_rollout_becomes_running_and_a_steady_job_writes_no_status() {
    let (ctx, api, _) = setup().await;
    stored_job(&api);
    reconcile_settled(&ctx, &api).await.expect("first");
    finish_rollouts(&api);
    api.clear_requests();
    let action = reconcile_settled(&ctx, &api).await.expect("second");
    // Its jobmanager does not answer (a closed port): a job that just came up is looked at
    // again in 2 s (the calls themselves wait out their back-off), not in 5 minutes.
    assert_eq!(action, Action::requeue(Duration::from_secs(2)));
    let requests = api.requests();
    let status = &body_of(&requests, "PATCH", &format!("{JOB}/status"))["status"];
    assert_eq!(status["phase"], "Running");
    assert_eq!(status["readyReplicas"], 1);
    assert!(event_reasons(&requests).contains(&"Running".to_string()));

    // The no-op reconcile: nothing changed, so no API call at all (issue #18: 0 writes, <= 1
    // read). Counted exactly, by verb and resource.
    support::settle(&ctx, &api).await;
    api.clear_requests();
    reconciler::reconcile(job_from_store(&api), ctx)
        .await
        .expect("third");
    let counts = api.counts();
    let writes: u64 = api.requests().iter().filter(|r| r.is_write()).count() as u64;
    let reads = counts.values().sum::<u64>() - writes;
    assert_eq!(writes, 0, "a no-op reconcile writes nothing: {counts:?}");
    assert!(
        reads <= 1,
        "a no-op reconcile reads at most once: {counts:?}"
    );
    assert_eq!(counts, Default::default(), "not even a read: {counts:?}");
}

#[tokio::test]
async fn a_spec_update_rolls_out_a_new_config() {
    let (ctx, api, _) = setup().await;
    stored_job(&api);
    reconcile_settled(&ctx, &api).await.expect("first");
    finish_rollouts(&api);
    reconcile_settled(&ctx, &api).await.expect("running");
    let old_hash = api.get(TASKMANAGER).expect("tm")["spec"]["template"]["metadata"]["annotations"]
        ["streaming.austin.dev/config-hash"]
        .clone();

    let mut job = (*job_from_store(&api)).clone();
    // Stateless: the new config rolls out at once (savepoint mode is covered with a jobmanager
    // in reconciler_lifecycle.rs).
    job.spec.upgrade_mode = UpgradeMode::Stateless;
    job.spec.redis.key_prefix = "eu:".into();
    job.spec.replicas = 3;
    job.metadata.generation = Some(2);
    api.put(JOB, serde_json::to_value(&job).expect("serialises"));
    support::settle(&ctx, &api).await;
    api.clear_requests();
    reconciler::reconcile(job_from_store(&api), ctx)
        .await
        .expect("update");
    let requests = api.requests();
    assert!(
        !applies(&requests).contains(&PVC) && !applies(&requests).contains(&SERVICE),
        "children the update does not touch are not applied: {:?}",
        applies(&requests)
    );
    let config = body_of(&requests, "PATCH", CONFIG_MAP)["data"]["job.yaml"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        config.contains("keyPrefix: 'eu:'") || config.contains("keyPrefix: \"eu:\""),
        "{config}"
    );
    let taskmanager = body_of(&requests, "PATCH", TASKMANAGER);
    assert_eq!(taskmanager["spec"]["replicas"], 3);
    assert_ne!(
        taskmanager["spec"]["template"]["metadata"]["annotations"]
            ["streaming.austin.dev/config-hash"],
        old_hash
    );
    let status = &body_of(&requests, "PATCH", &format!("{JOB}/status"))["status"];
    assert_eq!(status["phase"], "Upgrading");
    assert_eq!(status["observedGeneration"], 2);
    let reasons = event_reasons(&requests);
    for expected in ["Upgrading", "ConfigChanged", "Scaled"] {
        assert!(
            reasons.contains(&expected.to_string()),
            "{expected} missing from {reasons:?}"
        );
    }
    assert_rbac_covers(&requests);
}

#[tokio::test]
async fn an_edited_or_deleted_child_is_repaired() {
    let (ctx, api, _) = setup().await;
    stored_job(&api);
    reconcile_settled(&ctx, &api).await.expect("first");
    finish_rollouts(&api);
    // Someone scales the taskmanagers by hand and deletes the ConfigMap.
    let mut taskmanager = api.get(TASKMANAGER).expect("tm");
    taskmanager["spec"]["replicas"] = json!(7);
    api.put(TASKMANAGER, taskmanager);
    api.remove(CONFIG_MAP);
    api.clear_requests();
    reconcile_settled(&ctx, &api).await.expect("repair");
    let requests = api.requests();
    assert_eq!(
        body_of(&requests, "PATCH", TASKMANAGER)["spec"]["replicas"],
        1,
        "forced back to spec.replicas"
    );
    assert!(api.get(CONFIG_MAP).is_some(), "ConfigMap recreated");
    assert!(applies(&requests).contains(&CONFIG_MAP));
    assert_rbac_covers(&requests);
}

#[tokio::test]
async fn a_failing_call_shows_as_degraded_and_backs_off() {
    let (ctx, api, metrics) = setup().await;
    let job = stored_job(&api);
    api.fail_when(|r| {
        (r.method == "PATCH" && r.path == JOBMANAGER).then(|| {
            (
                403,
                "deployments.apps \"trace-jobmanager\" is forbidden".to_string(),
            )
        })
    });
    let error = reconciler::reconcile(Arc::new(job.clone()), ctx.clone())
        .await
        .expect_err("apply fails");
    assert!(error.to_string().contains("forbidden"), "{error}");
    let requests = api.requests();
    assert!(
        !applies(&requests).contains(&TASKMANAGER),
        "stops at the first failure"
    );
    let status = &body_of(&requests, "PATCH", &format!("{JOB}/status"))["status"];
    assert_eq!(status["phase"], "Failed");
    let degraded = status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Degraded"))
        .expect("Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "ApplyFailed");
    assert!(degraded["message"]
        .as_str()
        .is_some_and(|m| m.contains("forbidden")));
    let warning = requests
        .iter()
        .filter(|r| r.is("POST", EVENTS))
        .filter_map(|r| r.body.as_ref())
        .find(|e| e["reason"] == "ApplyFailed")
        .expect("a Warning event");
    assert_eq!(warning["type"], "Warning");

    let job = Arc::new(job);
    let first = reconciler::error_policy(job.clone(), &error, ctx.clone());
    let second = reconciler::error_policy(job, &error, ctx);
    assert_eq!(first, Action::requeue(Duration::from_secs(5)));
    assert_eq!(second, Action::requeue(Duration::from_secs(10)));
    assert!(
        metrics.encode().contains("reason=\"KubeApi\""),
        "{}",
        metrics.encode()
    );
    assert_rbac_covers(&requests);
}

#[tokio::test]
async fn the_finalizer_is_added_first_and_cleanup_removes_it() {
    let (ctx, api, _) = setup().await;
    let job = support::sample("minimal.yaml");
    api.put(JOB, serde_json::to_value(&job).expect("serialises"));
    let action = reconciler::reconcile(Arc::new(job), ctx.clone())
        .await
        .expect("adds finalizer");
    assert_eq!(action, Action::await_change());
    let requests = api.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(requests[0].is("PATCH", JOB) && requests[0].content_type.contains("json-patch"));
    assert!(requests[0]
        .body
        .as_ref()
        .is_some_and(|b| b.to_string().contains(FINALIZER)));
    assert_eq!(
        api.get(JOB).expect("job")["metadata"]["finalizers"],
        json!([FINALIZER])
    );

    // Deletion: the hook runs, announces what happens to the PVC, and the finalizer goes.
    let mut deleting = (*job_from_store(&api)).clone();
    deleting.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(fixed_now()),
    );
    api.put(JOB, serde_json::to_value(&deleting).expect("serialises"));
    api.clear_requests();
    reconciler::reconcile(Arc::new(deleting), ctx)
        .await
        .expect("cleans up");
    let requests = api.requests();
    assert!(event_reasons(&requests).contains(&"Deleting".to_string()));
    let removal = requests
        .iter()
        .find(|r| r.is("PATCH", JOB))
        .expect("finalizer removal");
    assert!(
        removal
            .body
            .as_ref()
            .is_some_and(|b| b.to_string().contains("remove")),
        "{removal:?}"
    );
    assert!(
        api.get(JOB).is_none(),
        "released: the API server deletes it"
    );
    assert_rbac_covers(&requests);
    let _ = NS;
}

#[test]
fn routine_resyncs_are_spread_by_job_and_operation_polls_are_not() {
    let period = Duration::from_secs(300);
    let mut buckets = [0u32; 10];
    for i in 0..1000 {
        let mut job = support::sample("minimal.yaml");
        job.metadata.uid = Some(format!("7c8e7f3a-0000-4000-8000-{i:012}"));
        let delay = reconciler::resync(period, &job);
        assert!(delay >= period && delay < period.mul_f64(1.2), "{delay:?}");
        let bucket = ((delay - period).as_secs_f64() / (period.as_secs_f64() * 0.02)) as usize;
        buckets[bucket.min(9)] += 1;
    }
    // 1,000 jobs created together come back over a minute, not in one burst.
    assert!(
        buckets.iter().all(|&n| (50..=150).contains(&n)),
        "{buckets:?}"
    );
    let job = support::sample("minimal.yaml");
    assert_eq!(
        reconciler::resync(Duration::from_secs(2), &job),
        Duration::from_secs(2)
    );
}

/// `spec.networkPolicy.enabled: false`: no NetworkPolicy is applied (and none the cache does not
/// show is deleted: no call for nothing).
#[tokio::test]
async fn an_opted_out_job_gets_no_network_policies() {
    let (ctx, api, _metrics) = setup().await;
    let mut job = stored_job(&api);
    job.spec.network_policy.enabled = false;
    api.put(JOB, serde_json::to_value(&job).expect("serialises"));
    reconciler::reconcile(Arc::new(job), ctx)
        .await
        .expect("reconciles");
    let requests = api.requests();
    assert!(
        !applies(&requests)
            .iter()
            .any(|p| p.contains("networkpolicies")),
        "{:?}",
        applies(&requests)
    );
    assert!(!requests.iter().any(|r| r.method == "DELETE"));
    assert_rbac_covers(&requests);
}

/// The token is drawn once: the Secret is applied with it on the first reconcile and read back
/// (from the API server until the watch shows it, then from the cache) on every later one, so
/// its body, and hash, stay the same and it is not applied again. A deleted Secret gets a new one.
#[tokio::test]
async fn the_api_token_is_drawn_once_kept_across_reconciles_and_redrawn_when_deleted() {
    let (ctx, api, _) = setup().await;
    stored_job(&api);
    reconciler::reconcile(job_from_store(&api), ctx.clone())
        .await
        .expect("first");
    let secret = body_of(&api.requests(), "PATCH", SECRET).clone();
    let first = secret["data"]["token"].clone();
    assert!(first.as_str().is_some_and(|t| t.len() > 40), "{first}");
    assert_eq!(
        secret["metadata"]["ownerReferences"][0]["kind"],
        "StreamJob"
    );

    // At once, before the watch may have delivered the Secret: the same token (never a second).
    api.clear_requests();
    reconciler::reconcile(job_from_store(&api), ctx.clone())
        .await
        .expect("second, unsettled");
    let requests = api.requests();
    if let Some(again) = requests.iter().find(|r| r.is("PATCH", SECRET)) {
        let again = again.body.as_ref().expect("apply body");
        assert_eq!(again["data"]["token"], first);
    }
    assert_rbac_covers(&requests);
    assert_eq!(
        api.get(SECRET).expect("secret stored")["data"]["token"],
        first
    );

    // Settled: the token comes from the cache; the Secret is as planned, so nothing is sent.
    api.clear_requests();
    reconcile_settled(&ctx, &api).await.expect("third");
    let requests = api.requests();
    assert!(
        !requests.iter().any(|r| r.path == SECRET),
        "no read or apply of a cached, unchanged Secret: {:?}",
        requests
            .iter()
            .map(|r| (&r.method, &r.path))
            .collect::<Vec<_>>()
    );

    api.remove(SECRET);
    api.clear_requests();
    reconcile_settled(&ctx, &api)
        .await
        .expect("after the Secret was deleted");
    let redrawn = body_of(&api.requests(), "PATCH", SECRET)["data"]["token"].clone();
    assert!(redrawn.is_string());
    assert_ne!(redrawn, first, "a deleted Secret gets a new token");
}
