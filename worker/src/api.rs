//! Types of the jobmanager's control API (REST on :8081), shared with the operator.
