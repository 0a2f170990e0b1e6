//! streamjob-operator: the StreamJob API and its reconciler.
//!
//! - [`crd`]: the `StreamJob` types (spec, status, CRD validation).
//! - [`planner`]: pure decisions: (StreamJob, observed children, jobmanager status, now) → desired
//!   children, actions and next status.
//! - [`reconciler`]: thin I/O around the planner (reads, server-side apply, status, events).
//! - [`rbac`]: the one table of permissions.
//! - [`leader`], [`http`], [`metrics`]: the binary's plumbing.

pub mod crd;
pub mod rbac;

/// Errors of the operator library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),
    /// The spec cannot be turned into a job configuration (the CRD's rules should have refused it).
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// An object the planner needs has no name or namespace.
    #[error("object is missing {0}")]
    MissingObjectKey(&'static str),
    /// Serialising an object failed.
    #[error("serialisation failed: {0}")]
    Serialization(#[from] serde_json::Error),
    /// Running the finalizer failed.
    #[error("finalizer failed: {0}")]
    Finalizer(String),
}

/// Result of the operator library.
pub type Result<T, E = Error> = std::result::Result<T, E>;
