//! streamjob-operator: the StreamJob API and its reconciler.
//!
//! - [`crd`]: the `StreamJob` types (spec, status, CRD validation).
//! - [`planner`]: pure decisions: (StreamJob, observed children, jobmanager status, now) → desired
//!   children, actions and next status.
//! - [`reconciler`]: thin I/O around the planner (reads, server-side apply, status, events).
//! - [`jobmanager_client`]: the typed client of the jobmanager's REST API.
//! - [`rbac`]: the one table of permissions.
//! - [`leader`], [`http`], [`metrics`]: the binary's plumbing.

pub mod crd;
pub mod http;
pub mod jobmanager_client;
pub mod leader;
pub mod metrics;
pub mod planner;
pub mod rbac;
pub mod reconciler;

/// Errors of the operator library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),
    /// The planner refused the StreamJob.
    #[error("cannot plan: {0}")]
    Plan(#[from] planner::PlanError),
    /// An object has no name or namespace.
    #[error("object is missing {0}")]
    MissingObjectKey(&'static str),
    /// No watch covers the StreamJob's namespace (it is outside the operator's scope).
    #[error("namespace {0} is not watched")]
    NotWatched(String),
}

impl Error {
    /// Machine-readable reason, used as a metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubeApi",
            Error::Plan(e) => e.reason(),
            Error::MissingObjectKey(_) => "InvalidObject",
            Error::NotWatched(_) => "NotWatched",
        }
    }
}

/// Every value of [`Error::reason`] and of the reconciler's own failure reasons: the
/// `reconcile_failures_total` series exist at 0 from the start.
pub const FAILURE_REASONS: [&str; 5] = [
    "KubeApi",
    "InvalidSpec",
    "InvalidObject",
    "NotWatched",
    "ApplyFailed",
];

/// Result of the operator library.
pub type Result<T, E = Error> = std::result::Result<T, E>;
