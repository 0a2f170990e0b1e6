//! The pod cache's compact form. About 4.8 pods per job live in this cache (24,000 at 5,000
//! jobs), so each keeps only what the planner reads of a pod, as plain strings instead of a typed
//! `Pod`: no uid, owner references, other labels, QoS class or phase, and of each container
//! only its name, readiness, restarts, waiting reason and last exit (no image, image ID,
//! container ID or start times).
//!
//! What the planner reads of a pod (`rollout::stall`, `lifecycle::health`,
//! `lifecycle::jobmanager_pod_ip`): its name, the job's instance and component labels, the
//! spec-hash annotation, the creation and deletion times, the Ready condition's status, the IP,
//! and per container the ready flag, restart count, waiting reason and message and the last
//! termination's exit code, reason and message. A planner that starts reading another field of a
//! pod must add it here: [`CachedPod::to_pod`] rebuilds only these.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, Pod,
    PodCondition, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;

use crate::planner::annotations::CONFIG_HASH_ANNOTATION;
use crate::planner::labels;

/// A pod as the cache keeps it (see the module's note for what is kept).
#[derive(Debug, Clone)]
pub struct CachedPod {
    /// Name, namespace and resourceVersion (the store's key and the tests' snapshot), creation
    /// and deletion times. No labels or annotations here: a `BTreeMap` allocates room for 11
    /// entries (over 500 bytes) even for one.
    metadata: ObjectMeta,
    /// The job's instance and component labels.
    instance: Text,
    component: Text,
    /// The spec-hash annotation of the template the pod was made from.
    config_hash: Text,
    /// `None` when the pod had no status at all.
    status: Option<CachedStatus>,
}

#[derive(Debug, Clone)]
struct CachedStatus {
    /// The Ready condition's status (`True`, `False`, `Unknown`), when it has one.
    ready: Text,
    ip: Text,
    /// `None` when the status had no container statuses (not even an empty list).
    containers: Option<Box<[CachedContainer]>>,
}

#[derive(Debug, Clone)]
struct CachedContainer {
    name: Box<str>,
    ready: bool,
    restart_count: i32,
    /// `state.waiting`: reason and message.
    waiting: Option<(Text, Text)>,
    /// `lastState.terminated`: exit code, reason and message.
    last_terminated: Option<(i32, Text, Text)>,
}

/// An optional string, without a `String`'s spare capacity.
type Text = Option<Box<str>>;

fn boxed(value: &Option<String>) -> Text {
    value.as_deref().map(Box::from)
}

fn unboxed(value: &Text) -> Option<String> {
    value.as_deref().map(str::to_string)
}

impl CachedPod {
    pub fn of(pod: &Pod) -> Self {
        let meta = &pod.metadata;
        let get = |map: &Option<BTreeMap<String, String>>, key: &str| {
            map.as_ref()?
                .get(key)
                .map(|value| Box::from(value.as_str()))
        };
        Self {
            metadata: ObjectMeta {
                name: meta.name.clone(),
                namespace: meta.namespace.clone(),
                resource_version: meta.resource_version.clone(),
                creation_timestamp: meta.creation_timestamp.clone(),
                deletion_timestamp: meta.deletion_timestamp.clone(),
                ..ObjectMeta::default()
            },
            instance: get(&meta.labels, labels::INSTANCE),
            component: get(&meta.labels, labels::COMPONENT),
            config_hash: get(&meta.annotations, CONFIG_HASH_ANNOTATION),
            status: pod.status.as_ref().map(CachedStatus::of),
        }
    }

    /// The job the pod belongs to (its instance label).
    pub fn instance(&self) -> Option<&str> {
        self.instance.as_deref()
    }

    /// The pod as the planner reads it: a `Pod` with the kept fields, everything else empty.
    pub fn to_pod(&self) -> Pod {
        let map = |pairs: &[(&str, &Text)]| {
            let map: BTreeMap<String, String> = pairs
                .iter()
                .filter_map(|(key, value)| Some((key.to_string(), value.as_deref()?.to_string())))
                .collect();
            (!map.is_empty()).then_some(map)
        };
        let mut metadata = self.metadata.clone();
        metadata.labels = map(&[
            (labels::INSTANCE, &self.instance),
            (labels::COMPONENT, &self.component),
        ]);
        metadata.annotations = map(&[(CONFIG_HASH_ANNOTATION, &self.config_hash)]);
        Pod {
            metadata,
            spec: None,
            status: self.status.as_ref().map(CachedStatus::to_status),
        }
    }
}

impl CachedStatus {
    fn of(status: &PodStatus) -> Self {
        let ready = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .map(|c| Box::from(c.status.as_str()));
        Self {
            ready,
            ip: boxed(&status.pod_ip),
            containers: status
                .container_statuses
                .as_ref()
                .map(|all| all.iter().map(CachedContainer::of).collect()),
        }
    }

    fn to_status(&self) -> PodStatus {
        PodStatus {
            conditions: self.ready.as_ref().map(|status| {
                vec![PodCondition {
                    type_: "Ready".into(),
                    status: status.to_string(),
                    ..PodCondition::default()
                }]
            }),
            pod_ip: unboxed(&self.ip),
            container_statuses: self
                .containers
                .as_ref()
                .map(|all| all.iter().map(CachedContainer::to_status).collect()),
            ..PodStatus::default()
        }
    }
}

impl CachedContainer {
    fn of(status: &ContainerStatus) -> Self {
        let waiting = status.state.as_ref().and_then(|s| s.waiting.as_ref());
        let terminated = status
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref());
        Self {
            name: Box::from(status.name.as_str()),
            ready: status.ready,
            restart_count: status.restart_count,
            waiting: waiting.map(|w| (boxed(&w.reason), boxed(&w.message))),
            last_terminated: terminated.map(|t| (t.exit_code, boxed(&t.reason), boxed(&t.message))),
        }
    }

    fn to_status(&self) -> ContainerStatus {
        let state = self
            .waiting
            .as_ref()
            .map(|(reason, message)| ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: unboxed(reason),
                    message: unboxed(message),
                }),
                ..ContainerState::default()
            });
        let last_state = self
            .last_terminated
            .as_ref()
            .map(|(exit_code, reason, message)| ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: *exit_code,
                    reason: unboxed(reason),
                    message: unboxed(message),
                    ..ContainerStateTerminated::default()
                }),
                ..ContainerState::default()
            });
        ContainerStatus {
            name: self.name.to_string(),
            ready: self.ready,
            restart_count: self.restart_count,
            state,
            last_state,
            ..ContainerStatus::default()
        }
    }
}

impl Resource for CachedPod {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Pod::kind(&())
    }

    fn group(_: &()) -> Cow<'_, str> {
        Pod::group(&())
    }

    fn version(_: &()) -> Cow<'_, str> {
        Pod::version(&())
    }

    fn plural(_: &()) -> Cow<'_, str> {
        Pod::plural(&())
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::StreamJob;
    use crate::planner::lifecycle::{self, LifecycleInput};
    use crate::planner::{rollout, Observed};
    use k8s_openapi::jiff::Timestamp;
    use std::time::Duration;

    const HASH: &str = "new";

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).expect("a pod")
    }

    /// Pods as a real API server shows them, with everything the cache drops: a ready jobmanager
    /// (its IP is the REST address), one being deleted, a crash-looping taskmanager of the new
    /// template with its last words, one that cannot start for a missing Secret, one Pending.
    fn pods() -> Vec<Pod> {
        let meta = |name: &str, component: &str| {
            serde_json::json!({
                "name": name, "namespace": "default", "uid": "5f0c", "resourceVersion": "17",
                "generateName": "trace-", "creationTimestamp": "2026-12-06T00:00:00Z",
                "labels": {labels::INSTANCE: "trace", labels::COMPONENT: component,
                           labels::MANAGED_BY: labels::MANAGER, "pod-template-hash": "6d4f"},
                "annotations": {CONFIG_HASH_ANNOTATION: HASH, "kubectl.kubernetes.io/restartedAt": "x"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u"}],
            })
        };
        let running = |ip: &str| {
            serde_json::json!({
                "phase": "Running", "podIP": ip, "qosClass": "Burstable",
                "conditions": [{"type": "PodScheduled", "status": "True"},
                               {"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-06T00:00:05Z"}],
                "containerStatuses": [{"name": "jobmanager", "image": "worker:1", "imageID": "sha256:1",
                    "containerID": "containerd://1", "ready": true, "restartCount": 0, "started": true,
                    "state": {"running": {"startedAt": "2026-12-06T00:00:01Z"}}}],
            })
        };
        let mut deleted = meta("trace-jobmanager-old", labels::COMPONENT_JOBMANAGER);
        deleted["deletionTimestamp"] = "2026-12-06T00:01:00Z".into();
        vec![
            pod(serde_json::json!({"metadata": deleted, "status": running("10.0.0.1")})),
            pod(serde_json::json!({
                "metadata": meta("trace-jobmanager-a", labels::COMPONENT_JOBMANAGER),
                "status": running("10.0.0.2"),
            })),
            pod(serde_json::json!({
                "metadata": meta("trace-taskmanager-a", "taskmanager"),
                "status": {"phase": "Running", "podIP": "10.0.0.3",
                    "conditions": [{"type": "Ready", "status": "False", "reason": "ContainersNotReady"}],
                    "containerStatuses": [{"name": "taskmanager", "image": "worker:1", "imageID": "",
                        "ready": false, "restartCount": 4,
                        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                        "lastState": {"terminated": {"exitCode": 2, "reason": "Error",
                            "message": "starting\n`sink.redis.url`: connection refused\n",
                            "startedAt": "2026-12-06T00:00:01Z", "finishedAt": "2026-12-06T00:00:02Z"}}}]},
            })),
            pod(serde_json::json!({
                "metadata": meta("trace-taskmanager-b", "taskmanager"),
                "status": {"phase": "Pending",
                    "containerStatuses": [{"name": "taskmanager", "image": "worker:1", "imageID": "",
                        "ready": false, "restartCount": 0,
                        "state": {"waiting": {"reason": "CreateContainerConfigError",
                                              "message": "secret \"redis\" not found"}}}]},
            })),
            pod(
                serde_json::json!({"metadata": meta("trace-taskmanager-c", "taskmanager"),
                                   "status": {"phase": "Pending", "qosClass": "Burstable"}}),
            ),
            pod(serde_json::json!({"metadata": meta("trace-taskmanager-d", "taskmanager")})),
        ]
    }

    fn job() -> StreamJob {
        serde_yaml::from_str(include_str!("../../../samples/minimal.yaml")).expect("the sample")
    }

    /// Every decision the planner takes from pods, on the API server's pods and on the cached
    /// ones: each must come out the same.
    fn decisions(pods: Vec<Pod>) -> (lifecycle::Decision, Option<String>, Option<String>) {
        let observed = Observed {
            pods,
            ..Observed::default()
        };
        // An hour after the pods were created: the pending ones are past the progress deadline.
        let now = Timestamp::from_second(1_796_518_800).expect("a time");
        let decision = lifecycle::decide(&LifecycleInput {
            job: &job(),
            observed: &observed,
            jobmanager: None,
            desired_hash: HASH,
            now,
        });
        let stall = rollout::stall(&observed, HASH, Duration::from_secs(300), now);
        let address = lifecycle::jobmanager_pod_ip(&observed).map(str::to_string);
        (decision, stall, address)
    }

    #[test]
    fn a_cached_pod_yields_the_same_decisions_as_the_pod() {
        let cached: Vec<Pod> = pods().iter().map(|p| CachedPod::of(p).to_pod()).collect();
        let from_cache = decisions(cached);
        assert_eq!(from_cache, decisions(pods()));
        // The cases are live: each would pass vacuously if the planner ignored pods.
        let (decision, stall, address) = from_cache;
        let degraded = decision.degraded.expect("the crash loop is seen").1;
        assert!(
            degraded.contains("trace-taskmanager-a") && degraded.contains("connection refused")
        );
        let stall = stall.expect("the new pods are seen");
        for pod in [
            "trace-taskmanager-a",
            "trace-taskmanager-b",
            "trace-taskmanager-d",
        ] {
            assert!(stall.contains(pod), "{pod} missing: {stall}");
        }
        assert!(
            !stall.contains("jobmanager-old"),
            "a pod being deleted counts: {stall}"
        );
        assert_eq!(
            address.as_deref(),
            Some("10.0.0.2"),
            "the ready, live jobmanager"
        );
    }

    #[test]
    fn a_missing_secret_is_seen_through_the_cache() {
        let pods: Vec<Pod> = pods().into_iter().skip(3).collect();
        let cached: Vec<Pod> = pods.iter().map(|p| CachedPod::of(p).to_pod()).collect();
        let (decision, _, _) = decisions(cached);
        assert_eq!(decision, decisions(pods).0);
        let (reason, message) = decision.degraded.expect("the config error is seen");
        assert_eq!(reason, "ContainerConfigError");
        assert!(message.contains("secret \"redis\" not found"), "{message}");
    }

    #[test]
    fn a_cached_pod_keeps_only_what_the_planner_reads() {
        let compact = CachedPod::of(&pods()[2]);
        assert_eq!(
            compact.metadata.labels, None,
            "kept as plain strings, not a map"
        );
        assert_eq!(compact.instance(), Some("trace"));
        let cached = compact.to_pod();
        let meta = &cached.metadata;
        assert_eq!(meta.uid, None);
        assert_eq!(meta.owner_references, None);
        assert_eq!(meta.labels.as_ref().map(BTreeMap::len), Some(2));
        assert_eq!(meta.annotations.as_ref().map(BTreeMap::len), Some(1));
        assert_eq!(
            meta.resource_version.as_deref(),
            Some("17"),
            "the store's snapshot"
        );
        let status = cached.status.expect("a status");
        assert_eq!(status.phase, None);
        let container = &status.container_statuses.expect("containers")[0];
        assert_eq!(container.image, "");
        assert_eq!(container.restart_count, 4);
    }
}
