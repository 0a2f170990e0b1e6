//! The jobmanager: membership and partition assignment, checkpoints and savepoints, restore, and
//! the REST API on :8081.

pub mod coordinator;
pub mod planner;
pub mod store;
