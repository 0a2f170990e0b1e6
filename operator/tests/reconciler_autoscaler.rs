//! The autoscaler wired into the reconciler, against the fake API server and a scripted
//! jobmanager: it samples the jobmanager only for a running job with the autoscaler on and only
//! when a sample is due, applies its decision through the taskmanager Deployment (the in-place
//! rescale), publishes one Event per decision, writes `status.autoscaler` only when it changed
//! (a steady job makes no write), and forgets the job's samples when the autoscaler goes off.

mod support;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use serde_json::{json, Value};
use streamjob_operator::crd::StreamJob;
use streamjob_operator::jobmanager_client::{BaseUrl, JobManagerClient};
use streamjob_operator::metrics::Metrics;
use streamjob_operator::planner::FINALIZER;
use streamjob_operator::reconciler::{self, Context};
use streamjob_worker::api::{
    AutoscalerMetrics, JobState, PartitionOffsets, TaskManagerLoad, TaskManagerMetrics,
};
use support::fake_api::{FakeApi, Recorded};
use support::fake_jobmanager::FakeJobManager;

const JOB: &str = "/apis/streaming.austin.dev/v1alpha1/namespaces/default/streamjobs/trace";
const JOBMANAGER: &str = "/apis/apps/v1/namespaces/default/deployments/trace-jobmanager";
const TASKMANAGER: &str = "/apis/apps/v1/namespaces/default/deployments/trace-taskmanager";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";
const METRICS: &str = "/jobs/trace/autoscaler-metrics";

/// The test's clock, seconds (one test per process under nextest; one test in this file).
static CLOCK: AtomicI64 = AtomicI64::new(1_763_700_000);

fn clock() -> Timestamp {
    Timestamp::from_second(CLOCK.load(Ordering::SeqCst)).expect("valid time")
}

fn advance(seconds: i64) {
    CLOCK.fetch_add(seconds, Ordering::SeqCst);
}

struct Setup {
    ctx: Arc<Context>,
    api: FakeApi,
    jm: FakeJobManager,
}

async fn setup() -> Setup {
    let (client, api) = FakeApi::start();
    let jm = FakeJobManager::start("trace").await;
    let jobmanager = JobManagerClient::new(BaseUrl::Fixed(jm.url.clone()), Duration::from_secs(2));
    let ctx = Arc::new(
        Context::with_clock(client.clone(), Arc::new(Metrics::default()), clock)
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

async fn reconcile(s: &Setup) -> Action {
    support::settle(&s.ctx, &s.api).await;
    reconciler::reconcile(stored(&s.api), s.ctx.clone())
        .await
        .expect("reconciles")
}

fn edit(api: &FakeApi, change: impl FnOnce(&mut Value)) {
    let mut job = api.get(JOB).expect("job");
    change(&mut job);
    let generation = job["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
    job["metadata"]["generation"] = json!(generation);
    api.put(JOB, job);
}

fn metrics_calls(jm: &FakeJobManager) -> usize {
    jm.requests().iter().filter(|r| r.path == METRICS).count()
}

fn writes(requests: &[Recorded]) -> Vec<String> {
    requests
        .iter()
        .filter(|r| r.is_write())
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

fn event_reasons(requests: &[Recorded]) -> Vec<String> {
    requests
        .iter()
        .filter(|r| r.is("POST", EVENTS))
        .filter_map(|r| r.body.as_ref()?["reason"].as_str().map(str::to_string))
        .collect()
}

fn autoscaler_status(api: &FakeApi) -> Value {
    api.get(JOB).expect("job")["status"]["autoscaler"].clone()
}

fn taskmanager_replicas(api: &FakeApi) -> i64 {
    api.get(TASKMANAGER).expect("taskmanager Deployment")["spec"]["replicas"]
        .as_i64()
        .expect("replicas")
}

/// The jobmanager's counters as a scripted job moves them.
#[derive(Default)]
struct Counters {
    /// Per taskmanager: elapsed ms, busy ms, events processed.
    taskmanagers: Vec<(u64, u64, u64)>,
    high_watermark: i64,
    committed: i64,
}

impl Counters {
    /// `seconds` pass (on the test clock too) with `tms` taskmanagers each `busy` busy, the 4
    /// partitions taking `input` and applying `processed` events/s between them; the read the
    /// jobmanager then answers.
    fn run(
        &mut self,
        seconds: i64,
        tms: usize,
        busy: f64,
        input: i64,
        processed: i64,
    ) -> AutoscalerMetrics {
        advance(seconds);
        self.taskmanagers.resize(tms, (0, 0, 0));
        let ms = seconds as u64 * 1_000;
        for tm in &mut self.taskmanagers {
            tm.0 += ms;
            tm.1 += (ms as f64 * busy) as u64;
            tm.2 += (processed * seconds) as u64 / tms as u64;
        }
        self.high_watermark += input * seconds / 4;
        self.committed += processed * seconds / 4;
        AutoscalerMetrics {
            job_id: "trace".into(),
            state: JobState::Running,
            at_ms: clock().as_millisecond(),
            partition_count: Some(4),
            taskmanagers: self
                .taskmanagers
                .iter()
                .enumerate()
                .map(
                    |(i, (elapsed_ms, busy_ms, processed_events))| TaskManagerMetrics {
                        id: format!("trace-taskmanager-{i}"),
                        load: Some(TaskManagerLoad {
                            elapsed_ms: *elapsed_ms,
                            busy_ms: *busy_ms,
                            processed_events: *processed_events,
                            redis_applies: elapsed_ms / 50,
                            redis_retries: 0,
                            redis_apply_p99_ms: 3.0,
                        }),
                    },
                )
                .collect(),
            partitions: (0..4)
                .map(|p| PartitionOffsets {
                    partition: p,
                    high_watermark: Some(1_000 + self.high_watermark),
                    committed_offset: Some(1_000 + self.committed),
                })
                .collect(),
        }
    }
}

#[tokio::test]
async fn the_autoscaler_samples_when_due_scales_in_place_and_writes_only_on_change() {
    let s = setup().await;
    reconcile(&s).await;
    s.api.finish_rollouts(&[JOBMANAGER, TASKMANAGER]);
    reconcile(&s).await;
    assert_eq!(s.api.get(JOB).expect("job")["status"]["phase"], "Running");
    assert_eq!(
        metrics_calls(&s.jm),
        0,
        "the autoscaler is off: no sampling"
    );

    edit(&s.api, |job| {
        job["spec"]["autoscaler"] = json!({
            "enabled": true,
            "maxReplicas": 6,
            "metricsWindow": "1m",
            "scaleUpStabilization": "0s",
            "catchUpDuration": "1m",
        });
    });
    // Overloaded: one taskmanager 95 % busy applies 2,000/s of an input of 4,000/s.
    let mut job = Counters::default();
    let mut rounds = 0;
    while autoscaler_status(&s.api)["state"] != "Scaled" {
        assert!(rounds < 8, "no decision: {:#}", autoscaler_status(&s.api));
        let read = job.run(10, 1, 0.95, 4_000, 2_000);
        s.jm.with(|jm| jm.autoscaler = Some(read));
        reconcile(&s).await;
        rounds += 1;
    }
    assert_eq!(metrics_calls(&s.jm), rounds, "one read per due round");
    let status = autoscaler_status(&s.api);
    assert_eq!(status["desired"], 4, "{status:#}");
    let reason = status["reason"].as_str().expect("reason");
    assert!(reason.starts_with("scaled 1→4: lag "), "{reason}");
    assert_eq!(taskmanager_replicas(&s.api), 4, "applied in place");
    assert_eq!(
        stored(&s.api).spec.replicas,
        1,
        "spec.replicas is the user's, never written back"
    );
    let reasons = event_reasons(&s.api.requests());
    assert_eq!(
        reasons.iter().filter(|r| *r == "Autoscaled").count(),
        1,
        "{reasons:?}"
    );

    // The new taskmanagers are up; a reconcile before the next sample is due reads nothing.
    s.api.finish_rollouts(&[JOBMANAGER, TASKMANAGER]);
    let read = job.run(10, 4, 0.6, 4_000, 4_000);
    s.jm.with(|jm| jm.autoscaler = Some(read));
    reconcile(&s).await;
    let read = job.run(10, 4, 0.6, 4_000, 4_000);
    s.jm.with(|jm| jm.autoscaler = Some(read));
    reconcile(&s).await;
    let calls = metrics_calls(&s.jm);
    advance(1);
    reconcile(&s).await;
    assert_eq!(metrics_calls(&s.jm), calls, "not due yet");

    // Four taskmanagers carry it in the band: stable, and then no write at all.
    for _ in 0..6 {
        let read = job.run(10, 4, 0.6, 4_000, 4_000);
        s.jm.with(|jm| jm.autoscaler = Some(read));
        reconcile(&s).await;
    }
    let status = autoscaler_status(&s.api);
    assert_eq!(status["state"], "Stable", "{status:#}");
    s.api.clear_requests();
    let mut action = None;
    for _ in 0..3 {
        let read = job.run(10, 4, 0.62, 4_000, 4_000);
        s.jm.with(|jm| jm.autoscaler = Some(read));
        action = Some(reconcile(&s).await);
    }
    assert_eq!(writes(&s.api.requests()), Vec::<String>::new());
    assert_eq!(
        action,
        Some(Action::requeue(Duration::from_millis(7_500))),
        "back at the sampling interval (an eighth of the window)"
    );
    assert_eq!(taskmanager_replicas(&s.api), 4);

    // Off: the samples go, status.autoscaler goes, spec.replicas is in charge again.
    assert_eq!(s.ctx.autoscaler.len(), 1);
    edit(&s.api, |job| {
        job["spec"]["autoscaler"]["enabled"] = json!(false)
    });
    let calls = metrics_calls(&s.jm);
    advance(10);
    reconcile(&s).await;
    assert!(s.ctx.autoscaler.is_empty(), "samples dropped");
    assert_eq!(metrics_calls(&s.jm), calls);
    assert_eq!(autoscaler_status(&s.api), Value::Null);
    assert_eq!(taskmanager_replicas(&s.api), 1);
}
