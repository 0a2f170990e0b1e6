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

use crate::crd::{OperationKind, OperationStep, StreamJobStatus};

/// Labels of a failed reconciliation.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// Machine-readable reason, e.g. `ApplyFailed`, `InvalidSpec`.
    pub reason: String,
}

/// Labels of the jobmanager calls' counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// `answered`, `refused` (an error status), `unreachable` (no answer in time), or `backoff`
    /// (not made: the jobmanager is in its back-off after not answering).
    pub outcome: String,
}

/// Every `outcome` of [`CallLabels`].
pub const CALL_OUTCOMES: [&str; 4] = ["answered", "refused", "unreachable", "backoff"];

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

fn kind_label(kind: OperationKind) -> &'static str {
    match kind {
        OperationKind::Savepoint => "savepoint",
        OperationKind::Upgrade => "upgrade",
        OperationKind::RollingUpgrade => "rolling-upgrade",
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

/// What a StreamJob's series show now: the label value of each state series (one series per
/// state, present only for the current value, so a job costs a handful of series rather than
/// one per possible value), and the failure reasons it has counters for (to drop them with it).
#[derive(Debug, Clone, Default)]
struct JobSeries {
    times: JobTimes,
    phase: Option<String>,
    operation: Option<String>,
    degraded: Option<String>,
    reasons: BTreeSet<String>,
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
    series: Mutex<HashMap<JobLabels, JobSeries>>,
}

/// Moves a state series from the `old` label value to the `new` one: the old series goes, the
/// new one is 1. `labels` builds a series' labels from a value.
fn move_state<L, F>(family: &Family<L, Gauge>, old: Option<&str>, new: Option<&str>, labels: F)
where
    L: Clone + std::hash::Hash + Eq + prometheus_client::encoding::EncodeLabelSet + std::fmt::Debug,
    F: Fn(&str) -> L,
{
    if let Some(old) = old.filter(|old| Some(*old) != new) {
        family.remove(&labels(old));
    }
    if let Some(new) = new {
        family.get_or_create(&labels(new)).set(1);
    }
}

/// Labels of the autoscaler's counters: one bounded value.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

/// The autoscaler's decisions and, per StreamJob with the autoscaler on, its newest inputs.
#[derive(Default)]
struct AutoscalerMetrics {
    /// Reads of the jobmanagers' autoscaler metrics, by outcome (`answered`, `failed`).
    samples: Family<OutcomeLabels, Counter>,
    /// Decisions by their Event's reason (`Autoscaled`, `AutoscalerRecommendation`,
    /// `AutoscalerRedisBottleneck`, `AutoscalerStalled`).
    decisions: Family<OutcomeLabels, Counter>,
    desired: Family<JobLabels, Gauge>,
    busy: Family<JobLabels, Gauge<f64, AtomicU64>>,
    input: Family<JobLabels, Gauge<f64, AtomicU64>>,
    processed: Family<JobLabels, Gauge<f64, AtomicU64>>,
    redis_p99: Family<JobLabels, Gauge<f64, AtomicU64>>,
    redis_retries: Family<JobLabels, Gauge<f64, AtomicU64>>,
}

/// Every reason of [`AutoscalerMetrics::decisions`].
pub const AUTOSCALER_DECISIONS: [&str; 4] = [
    "Autoscaled",
    "AutoscalerRecommendation",
    "AutoscalerRedisBottleneck",
    "AutoscalerStalled",
];

impl AutoscalerMetrics {
    fn register(&self, registry: &mut Registry) {
        for outcome in ["answered", "failed"] {
            let _ = self.samples.get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            });
        }
        for reason in AUTOSCALER_DECISIONS {
            let _ = self.decisions.get_or_create(&OutcomeLabels {
                outcome: reason.into(),
            });
        }
        let r = registry.sub_registry_with_prefix("autoscaler");
        r.register(
            "samples",
            "Reads of the jobmanagers' autoscaler metrics, by outcome",
            self.samples.clone(),
        );
        r.register(
            "decisions",
            "Autoscaler decisions, by the reason of their Event",
            self.decisions.clone(),
        );
        r.register(
            "desired_replicas",
            "Taskmanagers the autoscaler decided (mode recommend: recommends)",
            self.desired.clone(),
        );
        r.register(
            "busy",
            "Mean busy fraction of the taskmanagers in the newest sample",
            self.busy.clone(),
        );
        r.register(
            "input_events_per_second",
            "Records/s appended to the topic in the newest sample",
            self.input.clone(),
        );
        r.register(
            "processed_events_per_second",
            "Records/s applied to Redis in the newest sample",
            self.processed.clone(),
        );
        r.register(
            "redis_apply_p99_seconds",
            "The taskmanagers' highest p99 batch apply latency in the newest sample",
            self.redis_p99.clone(),
        );
        r.register(
            "redis_retries_per_second",
            "Batch applies retried per second in the newest sample",
            self.redis_retries.clone(),
        );
    }

    fn forget(&self, job: &JobLabels) {
        self.desired.remove(job);
        for family in [
            &self.busy,
            &self.input,
            &self.processed,
            &self.redis_p99,
            &self.redis_retries,
        ] {
            family.remove(job);
        }
    }
}

/// The operator's metrics and their registry.
pub struct Metrics {
    autoscaler: AutoscalerMetrics,
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
    /// Rounds of jobmanager calls (one per reconcile that asked), by outcome.
    pub jobmanager_calls: Family<CallLabels, Counter>,
    /// The allocator's view of the heap, by state (set by the binary, which owns the allocator).
    pub heap: Family<HeapLabels, Gauge>,
    /// Rebuilds of the watch caches after a mass delete (`reconciler/cache/compaction.rs`).
    pub cache_compactions: Counter,
}

/// Labels of the heap gauges.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HeapLabels {
    /// jemalloc's own names: `allocated` (live objects: the caches, mostly), `active` (the pages
    /// of slabs and extents that hold them: active minus allocated is fragmentation), `metadata`
    /// (the allocator's own bookkeeping), `resident` (pages the allocator holds, what RSS sees of
    /// the heap) and `retained` (address space kept but returned to the system: not in RSS).
    pub state: String,
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
        // Every reason exists from the start at 0, so `rate()` and `increase()` see the first
        // failure (a series that appears with its first increment shows no increase).
        for reason in crate::FAILURE_REASONS {
            let _ = failures.get_or_create(&FailureLabels {
                reason: reason.to_string(),
            });
        }
        let jobmanager_calls = Family::<CallLabels, Counter>::default();
        for outcome in CALL_OUTCOMES {
            let _ = jobmanager_calls.get_or_create(&CallLabels {
                outcome: outcome.to_string(),
            });
        }
        registry.register(
            "jobmanager_calls",
            "Rounds of calls to the jobs' jobmanagers, by outcome (backoff: not made)",
            jobmanager_calls.clone(),
        );
        let heap = Family::<HeapLabels, Gauge>::default();
        registry.register(
            "heap_bytes",
            "The allocator's heap by state: allocated (live objects), active (their pages), metadata, resident (pages it holds) and retained (returned to the system)",
            heap.clone(),
        );
        let cache_compactions = Counter::default();
        registry.register(
            "cache_compactions",
            "Rebuilds of the watch caches once they held a quarter or less of their peak, which gives their memory back after mass deletes",
            cache_compactions.clone(),
        );
        let jobs = JobMetrics::default();
        jobs.register(&mut registry);
        let autoscaler = AutoscalerMetrics::default();
        autoscaler.register(&mut registry);
        Self {
            heap,
            cache_compactions,
            autoscaler,
            registry,
            jobs,
            reconciles,
            failures,
            duration,
            leader,
            jobmanager_calls,
        }
    }
}

impl Metrics {
    /// Sets the heap gauges: bytes by state.
    pub fn record_heap(&self, states: &[(&str, u64)]) {
        for &(state, bytes) in states {
            let labels = HeapLabels {
                state: state.to_string(),
            };
            self.heap
                .get_or_create(&labels)
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    }

    /// Counts one round of jobmanager calls.
    pub fn jobmanager_call(&self, outcome: &str) {
        self.jobmanager_calls
            .get_or_create(&CallLabels {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Counts one read of a jobmanager's autoscaler metrics (`answered` or `failed`).
    pub fn autoscaler_sampled(&self, outcome: &str) {
        self.autoscaler
            .samples
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Counts one autoscaler decision, by its Event's reason.
    pub fn autoscaler_decided(&self, reason: &str) {
        self.autoscaler
            .decisions
            .get_or_create(&OutcomeLabels {
                outcome: reason.into(),
            })
            .inc();
    }

    /// A job's autoscaler inputs (its newest sample) and decision; `None` drops its series.
    pub fn record_autoscaler(
        &self,
        namespace: &str,
        name: &str,
        newest: Option<&crate::planner::autoscaler::Sample>,
        desired: Option<i32>,
    ) {
        let job = JobLabels {
            namespace: namespace.into(),
            streamjob: name.into(),
        };
        let a = &self.autoscaler;
        let Some(sample) = newest else {
            a.forget(&job);
            if let Some(desired) = desired {
                a.desired.get_or_create(&job).set(i64::from(desired));
            }
            return;
        };
        match desired {
            Some(desired) => {
                a.desired.get_or_create(&job).set(i64::from(desired));
            }
            None => {
                a.desired.remove(&job);
            }
        }
        a.busy.get_or_create(&job).set(sample.mean_busy());
        a.input.get_or_create(&job).set(sample.input());
        a.processed.get_or_create(&job).set(sample.processed());
        a.redis_p99
            .get_or_create(&job)
            .set(sample.redis.apply_latency_p99.as_secs_f64());
        a.redis_retries
            .get_or_create(&job)
            .set(sample.redis.retries_per_second);
    }

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
        let job = JobLabels {
            namespace: namespace.into(),
            streamjob: name.into(),
        };
        self.jobs
            .lock_series()
            .entry(job)
            .or_default()
            .reasons
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
        let condition = |type_: &str| status.conditions.iter().find(|c| c.type_ == type_);
        jobs.ready.get_or_create(&job).set(i64::from(
            condition("Ready").is_some_and(|c| c.status == "True"),
        ));
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
        let now = JobSeries {
            times: JobTimes {
                last_checkpoint: status
                    .job
                    .as_ref()
                    .and_then(|j| j.last_checkpoint_at.as_ref())
                    .map(|t| t.0),
                last_savepoint: status.last_savepoint.as_ref().map(|s| s.completed_at.0),
                operation_started: operation.map(|o| o.started_at.0),
            },
            phase: Some(status.phase.as_str().to_string()),
            operation: operation.map(|o| kind_label(o.kind).to_string()),
            degraded: condition("Degraded")
                .filter(|c| c.status == "True")
                .map(|c| c.reason.clone()),
            reasons: BTreeSet::new(),
        };
        let mut series = jobs.lock_series();
        let entry = series.entry(job).or_default();
        jobs.move_states(namespace, name, entry, &now);
        entry.times = now.times;
        entry.phase = now.phase;
        entry.operation = now.operation;
        entry.degraded = now.degraded;
    }

    /// Drops every series of a StreamJob that is gone.
    pub fn forget_job(&self, namespace: &str, name: &str) {
        let job = JobLabels {
            namespace: namespace.into(),
            streamjob: name.into(),
        };
        self.autoscaler.forget(&job);
        let jobs = &self.jobs;
        let Some(mut gone) = jobs.lock_series().remove(&job) else {
            return;
        };
        jobs.move_states(namespace, name, &gone, &JobSeries::default());
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
        // Counters of a deleted job go too (a re-created one starts from 0, as Prometheus expects
        // of a new series), so series do not pile up as jobs come and go.
        for reason in std::mem::take(&mut gone.reasons) {
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

    fn lock_series(&self) -> std::sync::MutexGuard<'_, HashMap<JobLabels, JobSeries>> {
        self.series.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves the phase, operation and Degraded series of a job from `old` to `new`.
    fn move_states(&self, namespace: &str, name: &str, old: &JobSeries, new: &JobSeries) {
        move_state(
            &self.phase,
            old.phase.as_deref(),
            new.phase.as_deref(),
            |phase| JobPhaseLabels {
                namespace: namespace.into(),
                streamjob: name.into(),
                phase: phase.into(),
            },
        );
        move_state(
            &self.operation,
            old.operation.as_deref(),
            new.operation.as_deref(),
            |kind| JobOperationLabels {
                namespace: namespace.into(),
                streamjob: name.into(),
                kind: kind.into(),
            },
        );
        move_state(
            &self.degraded,
            old.degraded.as_deref(),
            new.degraded.as_deref(),
            |reason| JobReasonLabels {
                namespace: namespace.into(),
                streamjob: name.into(),
                reason: reason.into(),
            },
        );
    }

    fn refresh_ages(&self, now: Timestamp) {
        let age = |at: Timestamp| (now.as_millisecond() - at.as_millisecond()).max(0) as f64 / 1e3;
        for (job, series) in self.lock_series().iter() {
            let times = &series.times;
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
    use crate::crd::Phase;

    #[test]
    fn failure_counters_exist_at_zero_before_the_first_failure() {
        let text = Metrics::default().encode();
        for reason in crate::FAILURE_REASONS {
            let line =
                format!("streamjob_operator_reconcile_failures_total{{reason=\"{reason}\"}} 0");
            assert!(text.contains(&line), "missing {line:?} in\n{text}");
        }
    }

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
            format!("streamjob_operator_job_desired_replicas{{{job}}} 3"),
            format!("streamjob_operator_job_ready_replicas{{{job}}} 2"),
            format!("streamjob_operator_job_lag{{{job}}} 42"),
            format!("streamjob_operator_job_last_checkpoint_age_seconds{{{job}}} 30.0"),
            format!("streamjob_operator_job_last_savepoint_age_seconds{{{job}}} 130.0"),
            format!("streamjob_operator_job_operation{{{job},kind=\"upgrade\"}} 1"),
            format!("streamjob_operator_job_operation_duration_seconds{{{job}}} 20.0"),
            format!(
                "streamjob_operator_job_reconcile_errors_total{{{job},reason=\"ApplyFailed\"}} 1"
            ),
            format!("streamjob_operator_job_ready{{{job}}} 0"),
            format!("streamjob_operator_job_degraded{{{job},reason=\"CrashLoop\"}} 1"),
        ] {
            assert!(text.contains(&line), "missing {line:?} in\n{text}");
        }
        // The operation ended: no duration series, no operation series, only the new phase.
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
        assert!(
            !text.contains("streamjob_operator_job_operation{"),
            "{text}"
        );
        assert!(!text.contains("phase=\"Upgrading\""), "{text}");
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
