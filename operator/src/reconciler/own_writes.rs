//! The operator's own writes of a StreamJob that its cache has not shown yet.
//!
//! A reconcile reads its StreamJob from the watch cache, and under load the watch delivers
//! events late and in no fixed order across kinds: the Deployments a reconcile applied can be
//! in their cache before the status that same reconcile wrote is in the StreamJobs'. Planning
//! from that stale StreamJob is planning from the past: a job whose status does not show
//! `observedSavepointTriggerNonce` yet, next to its Deployments, reads as a savepoint request
//! (seen on a real API server with 1,000 new jobs), and a stale status would be written back over
//! the newer one.
//!
//! So each write of a StreamJob (finalizer, status) records the `resourceVersion` the API server
//! answered with, and a reconcile whose cached StreamJob is older does nothing: the watch event
//! of that write is on its way and brings the job back. Resource versions are compared as
//! numbers (etcd's revisions, which is what every API server backed by etcd hands out); one that
//! does not parse is never called stale. The record goes once the cache has caught up, so the
//! map holds only writes in flight.

use std::collections::HashMap;
use std::sync::Mutex;

/// `namespace/name` → the `resourceVersion` of the operator's last write of that StreamJob.
#[derive(Debug, Default)]
pub struct OwnWrites {
    versions: Mutex<HashMap<String, u64>>,
}

fn parse(resource_version: Option<&str>) -> Option<u64> {
    resource_version?.parse().ok()
}

impl OwnWrites {
    /// Records a write the API server answered with `resource_version`.
    pub fn wrote(&self, key: &str, resource_version: Option<&str>) {
        let Some(version) = parse(resource_version) else {
            return;
        };
        let mut versions = self.versions.lock().unwrap_or_else(|e| e.into_inner());
        let entry = versions.entry(key.to_string()).or_insert(version);
        *entry = (*entry).max(version);
    }

    /// Whether a cached StreamJob at `cached` predates the operator's last write of it. A cache
    /// that has caught up clears the record.
    pub fn is_stale(&self, key: &str, cached: Option<&str>) -> bool {
        let mut versions = self.versions.lock().unwrap_or_else(|e| e.into_inner());
        let Some(&written) = versions.get(key) else {
            return false;
        };
        match parse(cached) {
            Some(cached) if cached < written => true,
            _ => {
                versions.remove(key);
                false
            }
        }
    }

    /// Forgets a released StreamJob.
    pub fn forget(&self, key: &str) {
        self.versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// Writes whose watch event has not been seen yet.
    pub fn in_flight(&self) -> usize {
        self.versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_job_older_than_our_last_write_is_stale_until_the_cache_catches_up() {
        let writes = OwnWrites::default();
        writes.wrote("ns/trace", Some("120"));
        assert!(writes.is_stale("ns/trace", Some("119")));
        assert!(writes.is_stale("ns/trace", Some("119")), "still stale");
        assert!(!writes.is_stale("ns/trace", Some("120")));
        assert_eq!(writes.in_flight(), 0, "caught up: nothing kept");
        assert!(
            !writes.is_stale("ns/trace", Some("119")),
            "no record, no claim"
        );
    }

    #[test]
    fn the_newest_write_counts_and_other_jobs_are_not_affected() {
        let writes = OwnWrites::default();
        writes.wrote("ns/trace", Some("130"));
        writes.wrote("ns/trace", Some("125"));
        assert!(writes.is_stale("ns/trace", Some("129")));
        assert!(!writes.is_stale("ns/other", Some("1")));
    }

    #[test]
    fn versions_that_are_not_numbers_are_never_stale() {
        let writes = OwnWrites::default();
        writes.wrote("ns/a", Some("opaque"));
        assert!(!writes.is_stale("ns/a", Some("1")));
        writes.wrote("ns/b", Some("10"));
        assert!(!writes.is_stale("ns/b", Some("opaque")));
        assert_eq!(writes.in_flight(), 0);
    }

    #[test]
    fn a_released_job_is_forgotten() {
        let writes = OwnWrites::default();
        writes.wrote("ns/trace", Some("7"));
        writes.forget("ns/trace");
        assert!(!writes.is_stale("ns/trace", Some("1")));
    }
}
