//! The controller as the binary runs it (`reconciler::run`: watches, caches, concurrency,
//! debounce, requeues), over the fake API server with a latency per call: at 1,000 StreamJobs a
//! new job and a changed job are reconciled at once, the steady state makes (almost) no API calls,
//! and deletions go without warnings in the log.
//!
//! `SCALE_TEST_JOBS` overrides the number of jobs (default 1,000).

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use support::fake_api::FakeApi;
use support::scale::{self, Harness};

/// The per-call latency of issue #18's targets.
const LATENCY: Duration = Duration::from_millis(20);
/// Generous bounds: these tests show that work is not starved, not how fast it is.
const DEADLINE: Duration = Duration::from_secs(60);

fn jobs() -> usize {
    std::env::var("SCALE_TEST_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_and_changed_jobs_are_not_starved_by_1000_jobs_in_routine_requeue() {
    let (client, api) = FakeApi::start();
    api.set_recording(false);
    let harness = Harness::start(api.clone(), client, 8).await;
    let count = jobs();
    let names: Vec<String> = (0..count).map(|i| format!("job-{i}")).collect();
    for i in 0..count {
        harness.create(&scale::new_job(i));
    }
    let converged = harness
        .wait_ready(&names, Duration::from_secs(600))
        .await
        .expect("every job gets children and status");
    eprintln!("{count} jobs converged in {converged:?}");
    // Let the follow-ups of the operator's own writes pass: every job now sits in the queue
    // with its routine resync.
    tokio::time::sleep(Duration::from_secs(2)).await;

    api.set_latency(LATENCY);
    api.clear_requests();
    let reconciles_before = harness.reconciles();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let steady = api.counts();
    let steady_calls: u64 = steady.values().sum();
    eprintln!(
        "steady state, 5 s: {steady_calls} API calls {steady:?}, {} reconciles",
        harness.reconciles() - reconciles_before
    );
    assert!(
        steady_calls <= 10,
        "1,000 unchanged jobs make at most 2 API calls/s: {steady:?}"
    );

    // A new job is reconciled at once, not after the others' routine work.
    harness.create(&scale::new_job(count));
    let new_name = format!("job-{count}");
    let took = harness
        .wait_ready(std::slice::from_ref(&new_name), DEADLINE)
        .await
        .expect("a new job is not starved");
    eprintln!("new job ready after {took:?}");

    // A changed job too: spec.replicas reaches its Deployment.
    api.modify(&scale::job_path("job-7"), |job| {
        job["spec"]["replicas"] = json!(3);
        job["metadata"]["generation"] = json!(2);
    });
    let took = harness
        .wait_for(&scale::taskmanager_path("job-7"), DEADLINE, |d| {
            d["spec"]["replicas"] == 3
        })
        .await
        .expect("a spec.replicas change reaches the Deployment");
    eprintln!("replicas change reached the Deployment after {took:?}");
    harness.stop().await;
}

/// A `MakeWriter` into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

#[tokio::test]
async fn deleting_jobs_that_never_ran_is_immediate_and_logs_no_warning() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let (client, api) = FakeApi::start();
    let harness = Harness::start(api.clone(), client, 8).await;
    let names: Vec<String> = (0..3).map(|i| format!("job-{i}")).collect();
    for i in 0..3 {
        harness.create(&scale::new_job(i));
    }
    harness
        .wait_ready(&names, DEADLINE)
        .await
        .expect("children and status");
    for name in &names {
        api.delete(&scale::job_path(name));
    }
    for name in &names {
        // Released at once: no final savepoint is awaited from a jobmanager that never ran
        // (spec.savepoint.timeout is 300 s; the deadline here is far below it).
        harness
            .wait_gone(&scale::job_path(name), Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("{name} is released"));
    }
    // The children outlive their job for a while (garbage collection): their events now map to
    // a StreamJob that is gone.
    for name in &names {
        let [_, _, _, jobmanager, taskmanager] = scale::child_paths(name);
        api.finish_rollouts(&[&jobmanager, &taskmanager]);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    harness.stop().await;
    let logs = captured.text();
    assert!(
        logs.trim().is_empty(),
        "deleting is not a problem worth a warning:\n{logs}"
    );
}
