//! Which pods belong to which job. The pods' store is keyed by pod, and a reconcile wants its
//! own job's few pods: without an index it scanned the whole store under its lock, all 24,000
//! pods at 5,000 jobs, once per reconcile. This index is kept beside the store from the same
//! watch events, so a reconcile reads its job's pod names here and fetches each from the store.
//!
//! It follows the store's own rules: `Apply` and `Delete` change one pod; a relist (`Init`,
//! `InitApply`…, `InitDone`) builds a new index aside and replaces the old one at `InitDone`, so
//! pods deleted while the watch was down disappear, and a reader never sees a half-built index.
//!
//! The index may briefly name a pod the store does not hold (or hold under another job, were its
//! instance label ever changed): the reader checks each pod it gets back, so the index only
//! narrows the search and never decides what a job's pods are.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, PoisonError, RwLock};

use kube::runtime::watcher;
use kube::ResourceExt;

use super::pod::CachedPod;

/// A job: its namespace and name.
type JobKey = (String, String);

#[derive(Default)]
struct Index {
    live: HashMap<JobKey, BTreeSet<String>>,
    /// The index a relist is building, swapped in at its end.
    relisting: Option<HashMap<JobKey, BTreeSet<String>>>,
}

/// The names of each job's pods, shared by the watch that writes it and the reconciles that
/// read it.
#[derive(Clone, Default)]
pub struct PodsByJob {
    index: Arc<RwLock<Index>>,
}

fn job_of(pod: &CachedPod) -> Option<JobKey> {
    Some((pod.namespace()?, pod.instance()?.to_string()))
}

fn insert(index: &mut HashMap<JobKey, BTreeSet<String>>, pod: &CachedPod) {
    if let Some(job) = job_of(pod) {
        index.entry(job).or_default().insert(pod.name_any());
    }
}

fn remove(index: &mut HashMap<JobKey, BTreeSet<String>>, pod: &CachedPod) {
    let Some(job) = job_of(pod) else { return };
    if let Some(names) = index.get_mut(&job) {
        names.remove(&pod.name_any());
        if names.is_empty() {
            index.remove(&job);
        }
    }
}

/// The index is rebuilt with the stores (its map does not shrink either); its pods are counted
/// by the pods' store.
impl super::compaction::Rebuild for PodsByJob {
    fn held(&self) -> usize {
        0
    }

    fn rebuild(&self) -> bool {
        let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
        if index.relisting.is_some() {
            return false;
        }
        // Collected anew: a table sized for what is left (the name sets move as they are).
        let live = std::mem::take(&mut index.live);
        index.live = live.into_iter().collect();
        true
    }
}

impl PodsByJob {
    /// Follows one watch event (the same one the store applies).
    pub fn apply(&self, event: &watcher::Event<CachedPod>) {
        // A panic while holding the lock leaves a consistent map (each step is one insert or
        // remove), so a poisoned lock is still usable.
        let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
        match event {
            watcher::Event::Apply(pod) => insert(&mut index.live, pod),
            watcher::Event::Delete(pod) => remove(&mut index.live, pod),
            watcher::Event::Init => index.relisting = Some(HashMap::new()),
            watcher::Event::InitApply(pod) => match index.relisting.as_mut() {
                Some(relisting) => insert(relisting, pod),
                None => insert(&mut index.live, pod),
            },
            watcher::Event::InitDone => {
                if let Some(relisted) = index.relisting.take() {
                    index.live = relisted;
                }
            }
        }
    }

    /// The names of the pods of job `name` in `namespace`, sorted.
    pub fn names(&self, namespace: &str, name: &str) -> Vec<String> {
        let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
        index
            .live
            .get(&(namespace.to_string(), name.to_string()))
            .map(|names| names.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use watcher::Event;

    fn pod(job: &str, name: &str) -> CachedPod {
        CachedPod::of(
            &serde_json::from_value::<Pod>(serde_json::json!({
                "metadata": {"name": name, "namespace": "default",
                    "labels": {crate::planner::labels::INSTANCE: job}},
            }))
            .expect("a pod"),
        )
    }

    #[test]
    fn a_job_sees_its_own_pods_and_not_another_jobs() {
        let index = PodsByJob::default();
        index.apply(&Event::Apply(pod("trace", "trace-taskmanager-b")));
        index.apply(&Event::Apply(pod("trace", "trace-jobmanager-a")));
        index.apply(&Event::Apply(pod("orders", "orders-taskmanager-a")));
        assert_eq!(
            index.names("default", "trace"),
            ["trace-jobmanager-a", "trace-taskmanager-b"]
        );
        assert_eq!(index.names("other", "trace"), Vec::<String>::new());
    }

    #[test]
    fn a_deleted_pod_leaves_its_job() {
        let index = PodsByJob::default();
        index.apply(&Event::Apply(pod("trace", "trace-taskmanager-a")));
        index.apply(&Event::Apply(pod("trace", "trace-taskmanager-b")));
        index.apply(&Event::Delete(pod("trace", "trace-taskmanager-a")));
        assert_eq!(index.names("default", "trace"), ["trace-taskmanager-b"]);
        index.apply(&Event::Delete(pod("trace", "trace-taskmanager-b")));
        assert!(index.index.read().expect("lock").live.is_empty());
    }

    #[test]
    fn a_relist_replaces_the_index_only_when_it_is_done() {
        let index = PodsByJob::default();
        index.apply(&Event::Apply(pod("trace", "trace-taskmanager-gone")));
        index.apply(&Event::Init);
        index.apply(&Event::InitApply(pod("trace", "trace-taskmanager-new")));
        assert_eq!(
            index.names("default", "trace"),
            ["trace-taskmanager-gone"],
            "a reader sees the old index while the relist runs"
        );
        index.apply(&Event::InitDone);
        assert_eq!(index.names("default", "trace"), ["trace-taskmanager-new"]);
    }
}
