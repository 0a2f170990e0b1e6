//! The operator's controller (`reconciler::run`, exactly as the binary runs it) over the fake API
//! server, for scale tests and the scale benchmark: many StreamJobs at once, a latency per call,
//! calls counted by verb and resource.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use serde_json::Value;
use streamjob_operator::crd::StreamJob;
use streamjob_operator::jobmanager_client::{BaseUrl, JobManagerClient};
use streamjob_operator::metrics::Metrics;
use streamjob_operator::reconciler::{self, Context, Scope};
use tokio::sync::watch;

use super::fake_api::FakeApi;

pub const NS: &str = "scale";

pub fn job_path(name: &str) -> String {
    format!("/apis/streaming.austin.dev/v1alpha1/namespaces/{NS}/streamjobs/{name}")
}

pub fn child_paths(name: &str) -> [String; 5] {
    [
        format!("/api/v1/namespaces/{NS}/configmaps/{name}-config"),
        format!("/api/v1/namespaces/{NS}/persistentvolumeclaims/{name}-savepoints"),
        format!("/api/v1/namespaces/{NS}/services/{name}-jobmanager"),
        format!("/apis/apps/v1/namespaces/{NS}/deployments/{name}-jobmanager"),
        format!("/apis/apps/v1/namespaces/{NS}/deployments/{name}-taskmanager"),
    ]
}

pub fn taskmanager_path(name: &str) -> String {
    format!("/apis/apps/v1/namespaces/{NS}/deployments/{name}-taskmanager")
}

/// A minimal StreamJob as `kubectl apply` creates it: no finalizer, no status.
pub fn new_job(index: usize) -> StreamJob {
    let mut job = super::sample("minimal.yaml");
    job.metadata.name = Some(format!("job-{index}"));
    job.metadata.namespace = Some(NS.into());
    job.metadata.uid = Some(format!("00000000-0000-4000-8000-{index:012}"));
    job.metadata.finalizers = None;
    job
}

/// The operator running over a fake API server.
pub struct Harness {
    pub api: FakeApi,
    pub metrics: Arc<Metrics>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Harness {
    /// Starts the controller; the jobmanagers are unreachable (a closed port), as in a cluster
    /// whose jobs cannot start.
    pub async fn start(api: FakeApi, client: kube::Client, concurrency: u16) -> Harness {
        let metrics = Arc::new(Metrics::default());
        let jobmanager = JobManagerClient::new(
            BaseUrl::Fixed("http://127.0.0.1:9".into()),
            Duration::from_millis(500),
        );
        let ctx = Arc::new(
            Context::with_clock(client.clone(), metrics.clone(), Timestamp::now)
                .with_jobmanager(jobmanager),
        );
        let (stop, stopped) = watch::channel(false);
        let scope = Scope {
            namespaces: Vec::new(),
            concurrency,
        };
        let task = tokio::spawn(reconciler::run(client, scope, ctx, stopped));
        Harness {
            api,
            metrics,
            stop,
            task,
        }
    }

    pub fn create(&self, job: &StreamJob) {
        let name = job.metadata.name.clone().unwrap_or_default();
        self.api.put(
            &job_path(&name),
            serde_json::to_value(job).expect("serialises"),
        );
    }

    /// Whether the job has a status and all its children.
    pub fn is_ready(&self, name: &str) -> bool {
        let has_status = self.api.inspect(&job_path(name), |job| {
            job.is_some_and(|j| j["status"]["phase"].is_string())
        });
        has_status
            && child_paths(name)
                .iter()
                .all(|p| self.api.inspect(p, |child| child.is_some()))
    }

    /// Waits until every named job is ready; the time it took, or None at the deadline.
    pub async fn wait_ready(&self, names: &[String], deadline: Duration) -> Option<Duration> {
        let started = Instant::now();
        let mut pending: Vec<&String> = names.iter().collect();
        while started.elapsed() < deadline {
            pending.retain(|name| !self.is_ready(name));
            if pending.is_empty() {
                return Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// Waits until `check` holds for the stored object at `path`.
    pub async fn wait_for(
        &self,
        path: &str,
        deadline: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < deadline {
            if self.api.inspect(path, |object| object.is_some_and(&check)) {
                return Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    /// Waits until the object at `path` is gone.
    pub async fn wait_gone(&self, path: &str, deadline: Duration) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < deadline {
            if self.api.inspect(path, |object| object.is_none()) {
                return Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    /// Reconciles started so far.
    pub fn reconciles(&self) -> u64 {
        self.metrics
            .encode()
            .lines()
            .find(|l| l.starts_with("streamjob_operator_reconciles_total "))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}
