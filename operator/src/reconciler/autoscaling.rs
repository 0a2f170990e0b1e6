//! The reconciler's side of the autoscaler: the samples it keeps per job (in memory, bounded,
//! dropped with the job or when its autoscaler is turned off) and the read of the jobmanager
//! that feeds them. The decision itself is the planner's ([`autoscaler::job::evaluate`]).
//!
//! The jobmanager is read only for a job the autoscaler decides for, whose jobmanager answered
//! its overview this round with the job RUNNING (so never before a jobmanager pod is ready, nor
//! during its back-off after not answering), and at most once per sampling interval.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::jiff::Timestamp;
use streamjob_worker::api::JobState;
use tracing::debug;

use crate::crd::StreamJob;
use crate::jobmanager_client::{JobAddress, JobManagerClient};
use crate::metrics::Metrics;
use crate::planner::autoscaler::history::{self, History};
use crate::planner::autoscaler::{job as autoscaled, Sample, Settings};
use crate::planner::JobManagerReport;

/// The samples of every job with the autoscaler on, by `namespace/name`.
#[derive(Debug, Default)]
pub struct Histories {
    jobs: Mutex<HashMap<String, History>>,
}

fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

impl Histories {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, History>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The job's samples, oldest first (none: not sampled yet).
    pub fn samples(&self, namespace: &str, name: &str) -> Vec<Sample> {
        self.lock()
            .get(&key(namespace, name))
            .map(History::samples)
            .unwrap_or_default()
    }

    pub fn newest(&self, namespace: &str, name: &str) -> Option<Sample> {
        self.lock().get(&key(namespace, name))?.newest().cloned()
    }

    /// Forgets a job (deleted, or its autoscaler turned off).
    pub fn forget(&self, namespace: &str, name: &str) {
        let mut jobs = self.lock();
        if !jobs.is_empty() {
            jobs.remove(&key(namespace, name));
        }
    }

    /// Jobs with samples kept (a metric, and what tests check is released).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn due(&self, namespace: &str, name: &str, settings: &Settings, now: Timestamp) -> bool {
        let interval = history::sample_interval(settings);
        self.lock()
            .get(&key(namespace, name))
            .is_none_or(|h| h.due(now, interval))
    }

    fn record(
        &self,
        namespace: &str,
        name: &str,
        read: streamjob_worker::api::AutoscalerMetrics,
        settings: &Settings,
        now: Timestamp,
    ) {
        self.lock().entry(key(namespace, name)).or_default().record(
            read,
            now,
            settings.metrics_window,
        );
    }
}

/// Whether this round's overview says the job runs (so its jobmanager is ready and answers).
fn answered_running(report: Option<&JobManagerReport>) -> bool {
    report
        .and_then(|r| r.view.overview.as_ref().ok())
        .is_some_and(|o| o.state == JobState::Running)
}

/// Reads the job's autoscaler metrics when a sample is due, and keeps the sample. A failed
/// read is counted and skipped: the next one is due at once, and missing samples only ever
/// mean no decision.
pub async fn sample(
    histories: &Histories,
    client: &JobManagerClient,
    metrics: &Metrics,
    job: &StreamJob,
    address: &JobAddress,
    report: Option<&JobManagerReport>,
    now: Timestamp,
) {
    let (namespace, name) = (address.namespace.as_str(), address.name.as_str());
    let Some(settings) = autoscaled::deciding(job) else {
        if autoscaled::settings(job).is_none() {
            histories.forget(namespace, name);
        }
        return;
    };
    if !answered_running(report) || !histories.due(namespace, name, &settings, now) {
        return;
    }
    match client.job(address).autoscaler_metrics().await {
        Ok(read) => {
            metrics.autoscaler_sampled("answered");
            histories.record(namespace, name, read, &settings, now);
        }
        Err(error) => {
            metrics.autoscaler_sampled("failed");
            debug!(%error, "no autoscaler metrics this round");
        }
    }
}

/// The partition count this round: the overview's, else what status recorded.
pub fn partitions(job: &StreamJob, report: Option<&JobManagerReport>) -> i32 {
    let overview = report
        .and_then(|r| r.view.overview.as_ref().ok())
        .and_then(|o| o.partition_count);
    autoscaled::partitions(job, overview)
}

/// The planner's decision from the job's samples, and the job to plan with it: its status
/// carries the next `status.autoscaler`, so the planner renders the decided count and the
/// status write includes it. `None`: the autoscaler does not decide for this job now.
pub fn decide(
    histories: &Histories,
    job: &StreamJob,
    report: Option<&JobManagerReport>,
    now: Timestamp,
) -> Option<(autoscaled::Evaluation, StreamJob)> {
    let namespace = job.metadata.namespace.as_deref()?;
    let name = job.metadata.name.as_deref()?;
    let samples = histories.samples(namespace, name);
    let evaluation = autoscaled::evaluate(job, &samples, partitions(job, report), now)?;
    let mut decided = job.clone();
    if let Some(status) = decided.status.as_mut() {
        status.autoscaler = Some(evaluation.status.clone());
    }
    Some((evaluation, decided))
}
