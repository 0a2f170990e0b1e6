//! The reconciler's side of the jobmanager calls: what keeps a slow or unreachable jobmanager
//! from holding up other jobs, and the API tokens drawn but not yet seen in the cache.
//!
//! - A jobmanager that did not answer is not called again before a back-off (5 s, doubling to
//!   5 min) has passed: until then its job is planned with the last error, which is what the
//!   planner needs (Ready False, `JobManagerUnreachable`), and the reconcile finishes at once.
//!   Calls an operation in flight needs (a savepoint poll) are still made. So with any number of
//!   unreachable jobmanagers, a reconcile slot waits for at most one call timeout per job and
//!   back-off period, and new or changed jobs keep being served.
//! - A job's API token is drawn once, when the job has no Secret yet, and kept here only until
//!   the watch shows the Secret it was applied in: a second reconcile in between must apply the
//!   same token, not a new one.
//!
//! Both maps hold only jobs in those transient states, so they do not grow with the job count.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;

use crate::jobmanager_client::{self as jm, JobAddress, JobManagerClient};
use crate::planner::lifecycle::{JobManagerView, Queries};
use crate::planner::JobManagerReport;

/// First wait after a jobmanager did not answer; doubles per failure.
const FIRST_BACKOFF: Duration = Duration::from_secs(5);
/// Longest wait between calls to a jobmanager that does not answer.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// A jobmanager that did not answer: how often in a row, the last error, when to try again.
#[derive(Debug, Clone)]
struct Unanswered {
    failures: u32,
    error: String,
    retry_at: Instant,
}

/// Jobmanagers that did not answer, by `namespace/name`.
#[derive(Debug, Default)]
pub struct Unreachable {
    jobs: Mutex<HashMap<String, Unanswered>>,
}

fn key(job: &JobAddress) -> String {
    format!("{}/{}", job.namespace, job.name)
}

/// The wait after `failures` unanswered calls in a row.
pub fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    FIRST_BACKOFF
        .saturating_mul(1u32 << exponent)
        .min(MAX_BACKOFF)
}

impl Unreachable {
    /// Asks the jobmanager what `queries` need, unless it is in its back-off and only its
    /// overview is wanted: then the last error stands in for the answer. Also says how the round
    /// went (a [`crate::metrics::CALL_OUTCOMES`] value), `None` when nothing was asked.
    pub async fn observe(
        &self,
        client: &JobManagerClient,
        job: &JobAddress,
        queries: &Queries,
        now: Timestamp,
    ) -> (Option<JobManagerReport>, Option<&'static str>) {
        let only_overview = queries.poll.is_none() && !queries.savepoints && !queries.checkpoints;
        if only_overview && queries.overview {
            if let Some(error) = self.waiting(job) {
                let report = JobManagerReport {
                    observed_at: now,
                    view: JobManagerView {
                        overview: Err(error),
                        poll: None,
                        savepoints: None,
                        checkpoints: None,
                    },
                };
                return (Some(report), Some("backoff"));
            }
        }
        let Some(report) = jm::observe(client, job, queries, now).await else {
            return (None, None);
        };
        let outcome = match &report.view.overview {
            Err(error) if jm::is_unreachable_message(error) => {
                self.failed(job, error);
                "unreachable"
            }
            Err(_) if !queries.overview => "answered",
            Err(_) => "refused",
            Ok(_) => {
                self.forget(job);
                "answered"
            }
        };
        (Some(report), Some(outcome))
    }

    /// The last error while `job`'s jobmanager is in its back-off.
    fn waiting(&self, job: &JobAddress) -> Option<String> {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let entry = jobs.get(&key(job))?;
        (Instant::now() < entry.retry_at).then(|| entry.error.clone())
    }

    fn failed(&self, job: &JobAddress, error: &str) {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let entry = jobs.entry(key(job)).or_insert_with(|| Unanswered {
            failures: 0,
            error: String::new(),
            retry_at: Instant::now(),
        });
        entry.failures = entry.failures.saturating_add(1);
        entry.error = error.to_string();
        entry.retry_at = Instant::now() + backoff(entry.failures);
    }

    /// Forgets `job` (it answered, or it is gone).
    pub fn forget(&self, job: &JobAddress) {
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key(job));
    }

    /// How many jobmanagers are in their back-off (a metric).
    pub fn len(&self) -> usize {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// API tokens drawn for jobs whose Secret the cache does not show yet, by `namespace/name`.
#[derive(Debug, Default)]
pub struct DrawnTokens {
    tokens: Mutex<HashMap<String, String>>,
}

impl DrawnTokens {
    /// The token to apply for a job whose Secret is not in the cache: the one drawn before, or a
    /// fresh one. No GET: after a start the caches are complete before any reconcile runs, so a
    /// Secret missing from them was never created.
    pub fn token_for(&self, namespace: &str, name: &str) -> String {
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(format!("{namespace}/{name}"))
            .or_insert_with(jm::generate_api_token)
            .clone()
    }

    /// The cache shows the job's Secret: the drawn token is no longer needed here.
    pub fn seen(&self, namespace: &str, name: &str) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if !tokens.is_empty() {
            tokens.remove(&format!("{namespace}/{name}"));
        }
    }

    pub fn len(&self) -> usize {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_five_seconds_to_five_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(4), Duration::from_secs(40));
        assert_eq!(backoff(40), MAX_BACKOFF);
    }

    #[test]
    fn a_drawn_token_is_reused_until_its_secret_is_seen() {
        let tokens = DrawnTokens::default();
        let first = tokens.token_for("ns", "a");
        assert_eq!(tokens.token_for("ns", "a"), first);
        assert_ne!(tokens.token_for("ns", "b"), first);
        tokens.seen("ns", "a");
        assert_eq!(tokens.len(), 1);
        assert_ne!(tokens.token_for("ns", "a"), first);
    }

    #[test]
    fn an_unreachable_jobmanager_waits_out_its_backoff() {
        let unreachable = Unreachable::default();
        let job = JobAddress::new("ns", "a");
        unreachable.failed(&job, "jobmanager at http://x unreachable: timeout");
        assert_eq!(
            unreachable.waiting(&job).as_deref(),
            Some("jobmanager at http://x unreachable: timeout")
        );
        unreachable.forget(&job);
        assert!(unreachable.waiting(&job).is_none());
        assert!(unreachable.is_empty());
    }
}
