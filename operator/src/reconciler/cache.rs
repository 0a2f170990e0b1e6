//! The controller's watch caches: one reflector store per child kind (the objects the operator
//! applies, watched by the `managed-by` label) and one of the jobs' pods. A reconcile reads the
//! children from here, never with GETs, and the same watches are what trigger reconciles.
//!
//! The stores hold trimmed objects: no `managedFields` anywhere, Deployments without their pod
//! spec, and pods only with their labels,
//! Ready condition, IP and container statuses (what the planner reads of them), so the cache of
//! 1,000 jobs stays small.
//!
//! Children are kept as [`CachedChild`]: their metadata, and the rest of the object as compact
//! JSON text. A heap profile of 300 jobs on a real API server (see BENCHMARKS) found the children's
//! `serde_json::Value` trees to be 56 % of the operator's heap, about 7 KB per child, for objects
//! whose JSON is a fifth of that; a reconcile parses back only its own job's few children.

use std::collections::BTreeMap;

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ApiResource, DynamicObject, TypeMeta};
use kube::core::DynamicResourceScope;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};

use crate::crd::StreamJob;
use crate::planner::annotations::CONFIG_HASH_ANNOTATION;
use crate::planner::{children, labels, names, Observed};

/// The kinds of children the operator applies, and so watches. A new child kind goes here (and
/// in the RBAC table); a child whose kind is not watched is applied on every reconcile.
pub fn child_kinds() -> Vec<ApiResource> {
    vec![
        ApiResource::erase::<ConfigMap>(&()),
        ApiResource::erase::<PersistentVolumeClaim>(&()),
        ApiResource::erase::<Service>(&()),
        ApiResource::erase::<Deployment>(&()),
        ApiResource::erase::<NetworkPolicy>(&()),
        ApiResource::erase::<Secret>(&()),
    ]
}

/// Watch stream of one kind, already reflected into its store.
pub type ChildStream = BoxStream<'static, Result<DynamicObject, watcher::Error>>;
/// Watch stream of the pods, already reflected into their store.
pub type PodStream = BoxStream<'static, Result<Pod, watcher::Error>>;

/// The stores of one watched scope (a namespace, or all).
#[derive(Clone)]
pub struct Caches {
    children: BTreeMap<String, (ApiResource, Store<CachedChild>)>,
    pods: Store<CachedPod>,
}

/// The watch streams that fill [`Caches`]; the controller drives them (they are its triggers).
pub struct CacheStreams {
    pub children: Vec<(ApiResource, ChildStream)>,
    pub pods: PodStream,
}

fn scoped<K>(client: &Client, namespace: Option<&str>, resource: &ApiResource) -> Api<K>
where
    K: kube::Resource<DynamicType = ApiResource, Scope = kube::core::DynamicResourceScope>,
{
    match namespace {
        Some(namespace) => Api::namespaced_with(client.clone(), namespace, resource),
        None => Api::all_with(client.clone(), resource),
    }
}

/// Starts (lazily: the returned streams must be polled) the watches of one scope.
pub fn watch(client: &Client, namespace: Option<&str>) -> (Caches, CacheStreams) {
    let managed = watcher::Config::default().labels(&labels::managed_selector());
    let mut children = BTreeMap::new();
    let mut streams = Vec::new();
    for resource in child_kinds() {
        let mut writer = reflector::store::Writer::new(resource.clone());
        let store = writer.as_reader();
        let api: Api<DynamicObject> = scoped(client, namespace, &resource);
        let kind = resource.kind.clone();
        // Reflected by hand: the store keeps the compact form, the controller's trigger stream
        // the object (dropped once mapped to its job).
        let stream = watcher(api, managed.clone())
            .default_backoff()
            .modify(move |object: &mut DynamicObject| trim_child(&kind, object))
            .map_ok(move |event| {
                writer.apply_watcher_event(&store_event(&event, CachedChild::of));
                event
            })
            .applied_objects()
            .boxed();
        children.insert(resource.kind.clone(), (resource.clone(), store));
        streams.push((resource, stream));
    }
    let pods_api: Api<Pod> = match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    let mut pod_writer = reflector::store::Writer::<CachedPod>::default();
    let pods = pod_writer.as_reader();
    let pod_stream = watcher(pods_api, managed)
        .default_backoff()
        .modify(trim_pod)
        .map_ok(move |event| {
            pod_writer.apply_watcher_event(&store_event(&event, cached_pod));
            event
        })
        .applied_objects()
        .boxed();
    (
        Caches { children, pods },
        CacheStreams {
            children: streams,
            pods: pod_stream,
        },
    )
}

/// Drops what neither the planner nor the drift check reads: `managedFields` everywhere, and a
/// Deployment's pod spec (the bulk of it; its template's annotations say which spec it runs, and a
/// changed pod spec is caught by the apply body's hash).
fn trim_child(kind: &str, object: &mut DynamicObject) {
    object.managed_fields_mut().clear();
    if kind == "Deployment" {
        if let Some(template) = object
            .data
            .get_mut("spec")
            .and_then(|spec| spec.get_mut("template"))
            .and_then(serde_json::Value::as_object_mut)
        {
            template.remove("spec");
        }
    }
}

/// `kubectl apply`'s copy of what was applied (the whole spec again, as JSON text): no reconcile
/// reads it, and it would double a cached StreamJob.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what no reconcile reads of a StreamJob: its `managedFields` (several field managers of
/// spec and status, most of the object) and `kubectl apply`'s copy of the spec. Status and
/// finalizers are written with patches of their own, never from this copy, so nothing dropped
/// here is written back.
pub fn trim_job(job: &mut StreamJob) {
    job.managed_fields_mut().clear();
    job.annotations_mut().remove(LAST_APPLIED);
}

/// A child as the cache keeps it: its metadata, and everything else of the object (spec, data,
/// status) as compact JSON text.
#[derive(Debug, Clone)]
pub struct CachedChild {
    metadata: ObjectMeta,
    body: Box<str>,
}

impl CachedChild {
    fn of(object: &DynamicObject) -> Self {
        Self {
            metadata: object.metadata.clone(),
            // A `Value` always serializes; an empty body would only make the child look drifted.
            body: serde_json::to_string(&object.data)
                .unwrap_or_default()
                .into_boxed_str(),
        }
    }

    fn to_object(&self, resource: &ApiResource) -> Option<DynamicObject> {
        Some(DynamicObject {
            types: Some(TypeMeta {
                api_version: resource.api_version.clone(),
                kind: resource.kind.clone(),
            }),
            metadata: self.metadata.clone(),
            data: serde_json::from_str(&self.body).ok()?,
        })
    }
}

impl Resource for CachedChild {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn kind(resource: &ApiResource) -> Cow<'_, str> {
        Cow::Borrowed(&resource.kind)
    }

    fn group(resource: &ApiResource) -> Cow<'_, str> {
        Cow::Borrowed(&resource.group)
    }

    fn version(resource: &ApiResource) -> Cow<'_, str> {
        Cow::Borrowed(&resource.version)
    }

    fn plural(resource: &ApiResource) -> Cow<'_, str> {
        Cow::Borrowed(&resource.plural)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The store's copy of a watch event: the same event, with each object in its cached form.
fn store_event<K, C>(event: &watcher::Event<K>, cache: impl Fn(&K) -> C) -> watcher::Event<C> {
    match event {
        watcher::Event::Apply(object) => watcher::Event::Apply(cache(object)),
        watcher::Event::Delete(object) => watcher::Event::Delete(cache(object)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(object) => watcher::Event::InitApply(cache(object)),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

/// A pod as the cache keeps it: what [`trim_pod`] leaves of it, without the room a `Pod` keeps
/// for its spec (a `Pod` is 2.4 KB before any of its fields allocate; this is a third of that).
#[derive(Debug, Clone)]
pub struct CachedPod {
    metadata: ObjectMeta,
    status: Option<k8s_openapi::api::core::v1::PodStatus>,
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

fn cached_pod(pod: &Pod) -> CachedPod {
    CachedPod {
        metadata: pod.metadata.clone(),
        status: pod.status.clone(),
    }
}

/// Keeps what the planner reads of a pod: its labels, the spec hash its template carried (which
/// pods a rolling upgrade brought, `rollout::stall`), whether it is being deleted, its Ready
/// condition and IP (the jobmanager's address, once it is ready) and its container statuses
/// (crash loops).
fn trim_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = pod.metadata.annotations.take().and_then(|mut annotations| {
        let hash = annotations.remove(CONFIG_HASH_ANNOTATION)?;
        Some(BTreeMap::from([(CONFIG_HASH_ANNOTATION.to_string(), hash)]))
    });
    pod.metadata.owner_references = None;
    pod.metadata.generate_name = None;
    pod.spec = None;
    if let Some(status) = pod.status.as_mut() {
        let trimmed = k8s_openapi::api::core::v1::PodStatus {
            container_statuses: status.container_statuses.take(),
            conditions: status.conditions.take().map(|conditions| {
                conditions
                    .into_iter()
                    .filter(|c| c.type_ == "Ready")
                    .collect()
            }),
            pod_ip: status.pod_ip.take(),
            ..Default::default()
        };
        *status = trimmed;
    }
}

impl Caches {
    /// Waits until every store holds its initial list, so no reconcile mistakes a child that is
    /// not listed yet for a missing one.
    pub async fn wait_until_ready(&self) {
        for (_, store) in self.children.values() {
            // An error means the writer is gone (shutdown): nothing to wait for any more.
            let _ = store.wait_until_ready().await;
        }
        let _ = self.pods.wait_until_ready().await;
    }

    /// Whether children of this kind are watched (and so can be compared before applying).
    pub fn watches(&self, kind: &str) -> bool {
        self.children.contains_key(kind)
    }

    /// The cached child of `kind` named `name` (parsed back from its compact form; a cached
    /// text that does not parse is treated as missing, so the child is applied again).
    pub fn child(&self, kind: &str, namespace: &str, name: &str) -> Option<DynamicObject> {
        let (resource, store) = self.children.get(kind)?;
        store
            .get(&ObjectRef::new_with(name, resource.clone()).within(namespace))?
            .to_object(resource)
    }

    fn typed<K: kube::Resource + serde::de::DeserializeOwned>(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Option<K> {
        let object = self.child(kind, namespace, name)?;
        // A cached object that does not parse as its kind is treated as missing (re-applied).
        object.try_parse::<K>().ok()
    }

    /// The pods of one job (both components).
    pub fn pods_of(&self, namespace: &str, job: &str) -> Vec<Pod> {
        self.pods
            .state_filter(|pod| {
                pod.namespace().as_deref() == Some(namespace)
                    && pod.labels().get(labels::INSTANCE).map(String::as_str) == Some(job)
            })
            .into_iter()
            .map(|pod| Pod {
                metadata: pod.metadata.clone(),
                spec: None,
                status: pod.status.clone(),
            })
            .collect()
    }

    /// What the planner looks at, from the caches: no API call.
    pub fn observe(&self, namespace: &str, name: &str) -> Observed {
        Observed {
            jobmanager: self.typed("Deployment", namespace, &names::jobmanager(name)),
            taskmanager: self.typed("Deployment", namespace, &names::taskmanager(name)),
            savepoint_pvc: self.typed("PersistentVolumeClaim", namespace, &names::savepoints(name)),
            pods: self.pods_of(namespace, name),
            api_token: self
                .typed::<Secret>("Secret", namespace, &names::api_token(name))
                .as_ref()
                .and_then(children::api_token_of),
        }
    }

    /// Every cached child, as `(kind, namespace, name, resourceVersion)` (tests compare it with
    /// the API server's state).
    pub fn snapshot(&self) -> Vec<(String, String, String, String)> {
        let mut all: Vec<_> = self
            .children
            .iter()
            .flat_map(|(kind, (_, store))| {
                store.state().into_iter().map(move |o| {
                    (
                        kind.clone(),
                        o.namespace().unwrap_or_default(),
                        o.name_any(),
                        o.resource_version().unwrap_or_default(),
                    )
                })
            })
            .collect();
        all.extend(self.pods.state().into_iter().map(|p| {
            (
                "Pod".to_string(),
                p.namespace().unwrap_or_default(),
                p.name_any(),
                p.resource_version().unwrap_or_default(),
            )
        }));
        all.sort();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied_with_kubectl() -> StreamJob {
        let mut job: StreamJob = serde_yaml::from_str(include_str!("../../samples/minimal.yaml"))
            .expect("the minimal sample parses");
        let annotations = job.annotations_mut();
        annotations.insert(LAST_APPLIED.into(), r#"{"spec":{"replicas":2}}"#.into());
        annotations.insert("team".into(), "trace".into());
        job.managed_fields_mut().push(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry {
                manager: Some("kubectl".into()),
                ..Default::default()
            },
        );
        job
    }

    /// A taskmanager pod a rolling upgrade brought (spec hash `new`), crash-looping.
    fn new_taskmanager_crash_looping() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "trace-taskmanager-new",
                "namespace": "default",
                "labels": {labels::INSTANCE: "trace"},
                "annotations": {
                    CONFIG_HASH_ANNOTATION: "new",
                    "kubectl.kubernetes.io/restartedAt": "2026-12-06T00:00:00Z",
                },
            },
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [{
                    "name": "taskmanager", "image": "i", "imageID": "", "ready": false,
                    "restartCount": 4,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                }],
            },
        }))
        .expect("a pod")
    }

    #[test]
    fn a_cached_pod_still_shows_which_spec_it_runs_so_a_stalled_rollout_is_seen() {
        let mut pod = new_taskmanager_crash_looping();
        trim_pod(&mut pod);
        let cached = cached_pod(&pod);
        let observed = Observed {
            pods: vec![Pod {
                metadata: cached.metadata.clone(),
                spec: None,
                status: cached.status.clone(),
            }],
            ..Observed::default()
        };
        let annotations = observed.pods[0]
            .metadata
            .annotations
            .clone()
            .unwrap_or_default();
        assert_eq!(
            annotations.len(),
            1,
            "only the spec hash is kept: {annotations:?}"
        );
        let stalled = crate::planner::rollout::stall(
            &observed,
            "new",
            std::time::Duration::from_secs(300),
            k8s_openapi::jiff::Timestamp::now(),
        );
        assert!(
            stalled.is_some_and(|m| m.contains("trace-taskmanager-new")),
            "the crash-looping new pod is not seen through the cache"
        );
    }

    #[test]
    fn a_cached_job_keeps_its_own_annotations_but_not_kubectls_copy_or_managed_fields() {
        let mut job = applied_with_kubectl();
        trim_job(&mut job);
        assert!(job.managed_fields().is_empty());
        assert!(!job.annotations().contains_key(LAST_APPLIED));
        assert_eq!(
            job.annotations().get("team").map(String::as_str),
            Some("trace")
        );
        assert!(job.spec.replicas > 0, "the spec stays whole");
    }
}
