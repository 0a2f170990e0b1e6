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
    /// Adding, running or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// Deletion waits for a step (the final savepoint); the finalizer stays until it is done.
    /// Not a failure: retried after the given delay.
    #[error("deletion waits: {0}")]
    CleanupPending(String, std::time::Duration),
}

impl Error {
    /// Machine-readable reason, used as a metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubeApi",
            Error::Plan(e) => e.reason(),
            Error::MissingObjectKey(_) => "InvalidObject",
            Error::CleanupPending(..) => "CleanupPending",
            Error::Finalizer(e) => match e.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(inner)
                | kube::runtime::finalizer::Error::CleanupFailed(inner) => inner.reason(),
                _ => "Finalizer",
            },
        }
    }
}

impl Error {
    /// The requeue delay of a wait that is not a failure (see [`Error::CleanupPending`]).
    pub fn pending(&self) -> Option<std::time::Duration> {
        match self {
            Error::CleanupPending(_, delay) => Some(*delay),
            Error::Finalizer(e) => match e.as_ref() {
                kube::runtime::finalizer::Error::CleanupFailed(inner) => inner.pending(),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Result of the operator library.
pub type Result<T, E = Error> = std::result::Result<T, E>;
