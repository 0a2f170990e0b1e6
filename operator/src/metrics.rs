//! Prometheus metrics of the operator (served on `/metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use k8s_openapi::jiff::Timestamp;

use crate::crd::{OperationKind, OperationStep, Phase, StreamJobStatus};

/// Labels of a failed reconciliation.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// Machine-readable reason, e.g. `ApplyFailed`, `InvalidSpec`.
    pub reason: String,
}

/// Labels of a per-StreamJob series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub namespace: String,
    pub streamjob: String,
}

/// A StreamJob and one value of a bounded enumeration (phase, operation kind, failure reason).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobPhaseLabels {
    pub namespace: String,
    pub streamjob: String,
    pub phase: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobOperationLabels {
    pub namespace: String,
    pub streamjob: String,
    pub kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobReasonLabels {
    pub namespace: String,
    pub streamjob: String,
    pub reason: String,
}

/// Every `phase` label value (one series each per StreamJob; 1 for the current phase).
pub const PHASES: [Phase; 8] = [
    Phase::Pending,
    Phase::Deploying,
    Phase::Running,
    Phase::Upgrading,
    Phase::Suspending,
    Phase::Suspended,
    Phase::Failed,
    Phase::Deleting,
];

/// Every operation `kind` label value.
pub const OPERATION_KINDS: [OperationKind; 6] = [
    OperationKind::Savepoint,
    OperationKind::Upgrade,
    OperationKind::Suspend,
    OperationKind::Resume,
    OperationKind::Restart,
    OperationKind::Delete,
];

fn kind_label(kind: OperationKind) -> &'static str {
    match kind {
        OperationKind::Savepoint => "savepoint",
        OperationKind::Upgrade => "upgrade",
        OperationKind::Suspend => "suspend",
        OperationKind::Resume => "resume",
        OperationKind::Restart => "restart",
        OperationKind::Delete => "delete",
    }
}

/// When things last happened to a StreamJob (ages are computed at scrape time from these).
#[derive(Debug, Clone, Copy, Default)]
struct JobTimes {
    last_checkpoint: Option<Timestamp>,
    last_savepoint: Option<Timestamp>,
    operation_started: Option<Timestamp>,
}

/// Per-StreamJob series, labelled `namespace` and `name` (plus one bounded enumeration).
#[derive(Default)]
struct JobMetrics {
    phase: Family<JobPhaseLabels, Gauge>,
    desired_replicas: Family<JobLabels, Gauge>,
    ready_replicas: Family<JobLabels, Gauge>,
    lag: Family<JobLabels, Gauge>,
    last_checkpoint_age: Family<JobLabels, Gauge<f64, AtomicU64>>,
    last_savepoint_age: Family<JobLabels, Gauge<f64, AtomicU64>>,
    operation: Family<JobOperationLabels, Gauge>,
    operation_duration: Family<JobLabels, Gauge<f64, AtomicU64>>,
    reconcile_errors: Family<JobReasonLabels, Counter>,
    ready: Family<JobLabels, Gauge>,
    degraded: Family<JobReasonLabels, Gauge>,
    times: Mutex<HashMap<JobLabels, JobTimes>>,
    /// The failure reasons counted per job (to drop their series with the job).
    reasons: Mutex<HashMap<JobLabels, BTreeSet<String>>>,
    /// The Degraded reason each job's series carries now.
    degraded_reasons: Mutex<HashMap<JobLabels, Option<String>>>,
}

/// The operator's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    jobs: JobMetrics,
    /// Reconciliations started.
    pub reconciles: Counter,
    /// Reconciliations that failed, by reason.
    pub failures: Family<FailureLabels, Counter>,
    /// Duration of reconciliations, in seconds.
    pub duration: Histogram,
    /// 1 while this replica holds the leader Lease.
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("streamjob_operator");
        let reconciles = Counter::default();
        let failures = Family::<FailureLabels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let leader = Gauge::default();
        registry.register("reconciles", "Reconciliations started", reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Reconciliations that failed, by reason",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of reconciliations",
            duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        let jobs = JobMetrics::default();
        jobs.register(&mut registry);
        Self {
            registry,
            jobs,
            reconciles,
            failures,
            duration,
            leader,
        }
    }
}

impl Metrics {
    /// Counts one failure.
    pub fn failed(&self, reason: &str) {
        self.failures
            .get_or_create(&FailureLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Counts one failed reconciliation of a StreamJob.
    pub fn job_failed(&self, namespace: &str, name: &str, reason: &str) {
        self.jobs
            .lock_reasons()
            .entry(JobLabels {
                namespace: namespace.into(),
                streamjob: name.into(),
            })
            .or_default()
            .insert(reason.to_string());
        self.jobs
            .reconcile_errors
            .get_or_create(&JobReasonLabels {
                namespace: namespace.into(),
                streamjob: name.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// Records a StreamJob's state after a reconciliation: its phase, replicas, lag, the newest
    /// checkpoint and savepoint and the operation in flight.
    pub fn record_job(&self, namespace: &str, name: &str, desired: i32, status: &StreamJobStatus) {
        let job = JobLabels {
            namespace: namespace.into(),
            streamjob: name.into(),
        };
        let jobs = &self.jobs;
        for phase in PHASES {
            jobs.phase
                .get_or_create(&JobPhaseLabels {
                    namespace: namespace.into(),
                    streamjob: name.into(),
                    phase: phase.as_str().into(),
                })
                .set(i64::from(phase == status.phase));
        }
        let condition = |type_: &str| status.conditions.iter().find(|c| c.type_ == type_);
        jobs.ready.get_or_create(&job).set(i64::from(
            condition("Ready").is_some_and(|c| c.status == "True"),
        ));
        // One series while Degraded=True, labelled with its reason (a bounded set).
        let degraded = condition("Degraded")
            .filter(|c| c.status == "True")
            .map(|c| c.reason.clone());
        let mut reasons = jobs.lock_degraded();
        let before = reasons.insert(job.clone(), degraded.clone()).flatten();
        drop(reasons);
        if let Some(old) = before.filter(|old| Some(old) != degraded.as_ref()) {
            jobs.degraded.remove(&JobReasonLabels {
                namespace: namespace.into(),
                streamjob: name.into(),
                reason: old,
            });
        }
        if let Some(reason) = degraded {
            jobs.degraded
                .get_or_create(&JobReasonLabels {
                    namespace: namespace.into(),
                    streamjob: name.into(),
                    reason,
                })
                .set(1);
        }
        jobs.desired_replicas
            .get_or_create(&job)
            .set(i64::from(desired));
        jobs.ready_replicas
            .get_or_create(&job)
            .set(i64::from(status.ready_replicas));
        match status.job.as_ref().and_then(|j| j.lag) {
            Some(lag) => {
                jobs.lag.get_or_create(&job).set(lag);
            }
            None => {
                jobs.lag.remove(&job);
            }
        }
        let operation = status
            .current_operation
            .as_ref()
            .filter(|o| !matches!(o.step, OperationStep::Done | OperationStep::Failed));
        for kind in OPERATION_KINDS {
            jobs.operation
                .get_or_create(&JobOperationLabels {
                    namespace: namespace.into(),
                    streamjob: name.into(),
                    kind: kind_label(kind).into(),
                })
                .set(i64::from(operation.is_some_and(|o| o.kind == kind)));
        }
        let times = JobTimes {
            last_checkpoint: status
                .job
                .as_ref()
                .and_then(|j| j.last_checkpoint_at.as_ref())
                .map(|t| t.0),
            last_savepoint: status.last_savepoint.as_ref().map(|s| s.completed_at.0),
            operation_started: operation.map(|o| o.started_at.0),
        };
        jobs.lock_times().insert(job, times);
    }

    /// Drops every series of a StreamJob that is gone.
    pub fn forget_job(&self, namespace: &str, name: &str) {
        let job = JobLabels {
            namespace: namespace.into(),
            streamjob: name.into(),
        };
        let jobs = &self.jobs;
        for phase in PHASES {
            jobs.phase.remove(&JobPhaseLabels {
                namespace: namespace.into(),
                streamjob: name.into(),
                phase: phase.as_str().into(),
            });
        }
        for kind in OPERATION_KINDS {
            jobs.operation.remove(&JobOperationLabels {
                namespace: namespace.into(),
                streamjob: name.into(),
                kind: kind_label(kind).into(),
            });
        }
        if let Some(Some(reason)) = jobs.lock_degraded().remove(&job) {
            jobs.degraded.remove(&JobReasonLabels {
                namespace: namespace.into(),
                streamjob: name.into(),
                reason,
            });
        }
        for family in [
            &jobs.desired_replicas,
            &jobs.ready_replicas,
            &jobs.lag,
            &jobs.ready,
        ] {
            family.remove(&job);
        }
        for family in [
            &jobs.last_checkpoint_age,
            &jobs.last_savepoint_age,
            &jobs.operation_duration,
        ] {
            family.remove(&job);
        }
        jobs.lock_times().remove(&job);
        // Counters of a deleted job go too (a re-created one starts from 0, as Prometheus expects
        // of a new series), so series do not pile up as jobs come and go.
        let reasons = jobs.lock_reasons().remove(&job).unwrap_or_default();
        for reason in reasons {
            jobs.reconcile_errors.remove(&JobReasonLabels {
                namespace: namespace.into(),
                streamjob: name.into(),
                reason,
            });
        }
    }

    /// The metrics in the Prometheus text format (ages as of `now`).
    pub fn encode_at(&self, now: Timestamp) -> String {
        self.jobs.refresh_ages(now);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        self.encode_at(Timestamp::now())
    }
}

impl JobMetrics {
    fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("job");
        r.register(
            "phase",
            "1 for the StreamJob's current phase, 0 for the others",
            self.phase.clone(),
        );
        r.register(
            "desired_replicas",
            "Taskmanagers the StreamJob asks for (spec.replicas)",
            self.desired_replicas.clone(),
        );
        r.register(
            "ready_replicas",
            "Taskmanager pods that are ready",
            self.ready_replicas.clone(),
        );
        r.register(
            "lag",
            "Records behind the topic's end over all partitions, as the jobmanager last reported",
            self.lag.clone(),
        );
        r.register(
            "last_checkpoint_age_seconds",
            "Age of the newest complete checkpoint the jobmanager reported",
            self.last_checkpoint_age.clone(),
        );
        r.register(
            "last_savepoint_age_seconds",
            "Age of the newest recorded savepoint",
            self.last_savepoint_age.clone(),
        );
        r.register(
            "operation",
            "1 for the kind of the operation in flight (upgrade, suspend, savepoint...), else 0",
            self.operation.clone(),
        );
        r.register(
            "operation_duration_seconds",
            "How long the operation in flight has been running (absent when none is)",
            self.operation_duration.clone(),
        );
        r.register(
            "ready",
            "1 while the StreamJob's Ready condition is True",
            self.ready.clone(),
        );
        r.register(
            "degraded",
            "1 while the StreamJob's Degraded condition is True, labelled with its reason",
            self.degraded.clone(),
        );
        r.register(
            "reconcile_errors",
            "Failed reconciliations of the StreamJob, by reason",
            self.reconcile_errors.clone(),
        );
    }

    fn lock_times(&self) -> std::sync::MutexGuard<'_, HashMap<JobLabels, JobTimes>> {
        self.times.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_degraded(&self) -> std::sync::MutexGuard<'_, HashMap<JobLabels, Option<String>>> {
        self.degraded_reasons
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn lock_reasons(&self) -> std::sync::MutexGuard<'_, HashMap<JobLabels, BTreeSet<String>>> {
        self.reasons.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn refresh_ages(&self, now: Timestamp) {
        let age = |at: Timestamp| (now.as_millisecond() - at.as_millisecond()).max(0) as f64 / 1e3;
        for (job, times) in self.lock_times().iter() {
            for (family, at) in [
                (&self.last_checkpoint_age, times.last_checkpoint),
                (&self.last_savepoint_age, times.last_savepoint),
                (&self.operation_duration, times.operation_started),
            ] {
                match at {
                    Some(at) => {
                        family.get_or_create(job).set(age(at));
                    }
                    None => {
                        family.remove(job);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_show_up_in_the_text_format() {
        let metrics = Metrics::default();
        metrics.reconciles.inc();
        metrics.failed("ApplyFailed");
        metrics.duration.observe(0.002);
        let text = metrics.encode();
        assert!(
            text.contains("streamjob_operator_reconciles_total 1"),
            "{text}"
        );
        assert!(
            text.contains("streamjob_operator_reconcile_failures_total{reason=\"ApplyFailed\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("streamjob_operator_reconcile_duration_seconds_count 1"),
            "{text}"
        );
    }

    fn status_at(phase: Phase) -> StreamJobStatus {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let at = |s: i64| Time(Timestamp::from_second(s).expect("time"));
        StreamJobStatus {
            phase,
            ready_replicas: 2,
            job: Some(crate::crd::JobProgress {
                lag: Some(42),
                last_checkpoint_at: Some(at(1_000)),
                ..Default::default()
            }),
            last_savepoint: Some(crate::crd::SavepointInfo {
                path: "/sp".into(),
                completed_at: at(900),
                trigger: crate::crd::SavepointTrigger::Manual,
                nonce: Some(1),
            }),
            current_operation: Some(crate::crd::Operation {
                kind: OperationKind::Upgrade,
                step: OperationStep::AwaitSavepoint,
                started_at: at(1_010),
                step_started_at: None,
                trigger_id: None,
                target_generation: None,
                attempts: 0,
                message: None,
                savepoint_path: None,
                upgrade_mode: None,
                target_config_hash: None,
                nonce: None,
                retry_after: None,
            }),
            conditions: vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: "Degraded".into(),
                status: "True".into(),
                reason: "CrashLoop".into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: at(1_000),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn per_job_series_show_state_ages_and_go_with_the_job() {
        let metrics = Metrics::default();
        metrics.record_job("team-a", "trace", 3, &status_at(Phase::Upgrading));
        metrics.job_failed("team-a", "trace", "ApplyFailed");
        let text = metrics.encode_at(Timestamp::from_second(1_030).expect("time"));
        let job = "namespace=\"team-a\",streamjob=\"trace\"";
        for line in [
            format!("streamjob_operator_job_phase{{{job},phase=\"Upgrading\"}} 1"),
            format!("streamjob_operator_job_phase{{{job},phase=\"Running\"}} 0"),
            format!("streamjob_operator_job_desired_replicas{{{job}}} 3"),
            format!("streamjob_operator_job_ready_replicas{{{job}}} 2"),
            format!("streamjob_operator_job_lag{{{job}}} 42"),
            format!("streamjob_operator_job_last_checkpoint_age_seconds{{{job}}} 30.0"),
            format!("streamjob_operator_job_last_savepoint_age_seconds{{{job}}} 130.0"),
            format!("streamjob_operator_job_operation{{{job},kind=\"upgrade\"}} 1"),
            format!("streamjob_operator_job_operation{{{job},kind=\"savepoint\"}} 0"),
            format!("streamjob_operator_job_operation_duration_seconds{{{job}}} 20.0"),
            format!(
                "streamjob_operator_job_reconcile_errors_total{{{job},reason=\"ApplyFailed\"}} 1"
            ),
            format!("streamjob_operator_job_ready{{{job}}} 0"),
            format!("streamjob_operator_job_degraded{{{job},reason=\"CrashLoop\"}} 1"),
        ] {
            assert!(text.contains(&line), "missing {line:?} in\n{text}");
        }
        // The operation ended: no duration series, every kind 0.
        let mut done = status_at(Phase::Running);
        done.current_operation = None;
        done.conditions.clear();
        metrics.record_job("team-a", "trace", 3, &done);
        let text = metrics.encode_at(Timestamp::from_second(1_030).expect("time"));
        assert!(
            !text.contains("streamjob_operator_job_operation_duration_seconds{"),
            "{text}"
        );
        assert!(!text.contains("streamjob_operator_job_degraded{"), "{text}");
        assert!(text.contains(&format!(
            "streamjob_operator_job_phase{{{job},phase=\"Running\"}} 1"
        )));
        metrics.forget_job("team-a", "trace");
        let text = metrics.encode();
        assert!(
            !text.contains("trace"),
            "series of a deleted job remain:\n{text}"
        );
    }
}
