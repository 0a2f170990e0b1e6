//! The controller's watch caches: one reflector store per child kind (the objects the operator
//! applies, watched by the `managed-by` label) and one of the jobs' pods. A reconcile reads the
//! children from here, never with GETs, and the same watches are what trigger reconciles.
//!
//! The stores hold trimmed objects: no `managedFields` anywhere, Deployments without their pod
//! spec, and pods only with what the planner reads of them ([`pod`]), so the cache of 1,000 jobs
//! stays small.
//!
//! Children are kept as [`CachedChild`]: their name, namespace and resourceVersion, and the rest
//! of the object, metadata included, as compact JSON text. A heap profile of 300 jobs on a real
//! API server (see BENCHMARKS) found the children's `serde_json::Value` trees to be 56 % of the
//! operator's heap, about 7 KB per child, for objects whose JSON is a fifth of that; a reconcile
//! parses back only its own job's few children.
//!
//! After a mass delete, [`compaction`] rebuilds the stores in fresh allocations, so what is left
//! does not keep the memory of what went.

pub mod compaction;
mod pod;
mod pod_index;

use std::collections::BTreeMap;
use std::sync::Arc;

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
use crate::planner::{children, labels, names, Observed};
use compaction::{Compactor, SharedWriter};
use pod::CachedPod;
use pod_index::PodsByJob;

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
    children: BTreeMap<String, (Arc<ApiResource>, Store<CachedChild>)>,
    pods: Store<CachedPod>,
    pods_by_job: PodsByJob,
}

/// The watch streams that fill [`Caches`]; the controller drives them (they are its triggers).
/// The compactor rebuilds the stores they fill once a mass delete has emptied them.
pub struct CacheStreams {
    pub children: Vec<(ApiResource, ChildStream)>,
    pub pods: PodStream,
    pub compactor: Compactor,
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
    let compactor = Compactor::default();
    let mut children = BTreeMap::new();
    let mut streams = Vec::new();
    for resource in child_kinds() {
        // Shared: every key of the store holds its kind, which as an `ApiResource` would be five
        // strings per child.
        let shared = Arc::new(resource.clone());
        let writer = SharedWriter::new(reflector::store::Writer::new(shared.clone()));
        let store = writer.reader();
        compactor.register(Arc::new(writer.clone()));
        let api: Api<DynamicObject> = scoped(client, namespace, &resource);
        let kind = resource.kind.clone();
        // Reflected by hand: the store keeps the compact form, the controller's trigger stream
        // the object (dropped once mapped to its job).
        let stream = watcher(api, managed.clone())
            .default_backoff()
            .modify(move |object: &mut DynamicObject| trim_child(&kind, object))
            .map_ok(move |event| {
                writer.apply(&store_event(&event, CachedChild::of));
                event
            })
            .applied_objects()
            .boxed();
        children.insert(resource.kind.clone(), (shared, store));
        streams.push((resource, stream));
    }
    let pods_api: Api<Pod> = match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    let pod_writer = SharedWriter::new(reflector::store::Writer::<CachedPod>::default());
    let pods = pod_writer.reader();
    let pods_by_job = PodsByJob::default();
    compactor.register(Arc::new(pod_writer.clone()));
    compactor.register(Arc::new(pods_by_job.clone()));
    let index = pods_by_job.clone();
    let pod_stream = watcher(pods_api, managed)
        .default_backoff()
        .map_ok(move |event| {
            mirror_pod_event(&pod_writer, &index, &event);
            event
        })
        .applied_objects()
        .boxed();
    (
        Caches {
            children,
            pods,
            pods_by_job,
        },
        CacheStreams {
            children: streams,
            pods: pod_stream,
            compactor,
        },
    )
}

/// Puts one pod watch event into the pods' store and then into the index by job: in this order,
/// a name the index gives is already in the store (or, for a delete, already gone from it, which
/// the reader skips).
fn mirror_pod_event(
    store: &SharedWriter<CachedPod>,
    index: &PodsByJob,
    event: &watcher::Event<Pod>,
) {
    let cached = store_event(event, CachedPod::of);
    store.apply(&cached);
    index.apply(&cached);
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

/// A child as the cache keeps it: its name, namespace and resourceVersion (the store's key and
/// the tests' snapshot), and everything else of the object as compact JSON text. Its labels,
/// annotations and owner reference take less as text than as `BTreeMap`s (each reserves room
/// for 11 entries) and `String`s, and only a reconcile of its own job reads them (parsed back,
/// the drift check compares them as before).
#[derive(Debug, Clone)]
pub struct CachedChild {
    key: ObjectMeta,
    body: Box<str>,
}

/// The text form of a child: the rest of its metadata beside its other top-level fields.
#[derive(serde::Serialize)]
struct ChildBody<'a> {
    metadata: &'a ObjectMeta,
    #[serde(flatten)]
    data: &'a serde_json::Value,
}

impl CachedChild {
    fn of(object: &DynamicObject) -> Self {
        let mut metadata = object.metadata.clone();
        let key = ObjectMeta {
            name: metadata.name.take(),
            namespace: metadata.namespace.take(),
            resource_version: metadata.resource_version.take(),
            ..ObjectMeta::default()
        };
        let body = ChildBody {
            metadata: &metadata,
            data: &object.data,
        };
        Self {
            key,
            // The data of a watched object is always a JSON object, which serializes; an empty
            // body would only make the child look missing, so it is applied again.
            body: serde_json::to_string(&body)
                .unwrap_or_default()
                .into_boxed_str(),
        }
    }

    fn to_object(&self, resource: &ApiResource) -> Option<DynamicObject> {
        let mut data: serde_json::Value = serde_json::from_str(&self.body).ok()?;
        let metadata = data.as_object_mut()?.remove("metadata")?;
        let mut metadata: ObjectMeta = serde_json::from_value(metadata).ok()?;
        metadata.name.clone_from(&self.key.name);
        metadata.namespace.clone_from(&self.key.namespace);
        metadata
            .resource_version
            .clone_from(&self.key.resource_version);
        Some(DynamicObject {
            types: Some(TypeMeta {
                api_version: resource.api_version.clone(),
                kind: resource.kind.clone(),
            }),
            metadata,
            data,
        })
    }
}

impl Resource for CachedChild {
    type DynamicType = Arc<ApiResource>;
    type Scope = DynamicResourceScope;

    fn kind(resource: &Arc<ApiResource>) -> Cow<'_, str> {
        Cow::Borrowed(&resource.kind)
    }

    fn group(resource: &Arc<ApiResource>) -> Cow<'_, str> {
        Cow::Borrowed(&resource.group)
    }

    fn version(resource: &Arc<ApiResource>) -> Cow<'_, str> {
        Cow::Borrowed(&resource.version)
    }

    fn plural(resource: &Arc<ApiResource>) -> Cow<'_, str> {
        Cow::Borrowed(&resource.plural)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.key
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.key
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

    /// The pods of one job (both components), found through the index by job and each checked
    /// against the store (which is what holds them).
    pub fn pods_of(&self, namespace: &str, job: &str) -> Vec<Pod> {
        self.pods_by_job
            .names(namespace, job)
            .into_iter()
            .filter_map(|name| self.pods.get(&ObjectRef::new(&name).within(namespace)))
            .filter(|pod| pod.instance() == Some(job))
            .map(|pod| pod.to_pod())
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

    /// A Deployment as the API server sends it (its `managedFields` already trimmed).
    fn deployment() -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "trace-taskmanager", "namespace": "default", "uid": "9a1e",
                "resourceVersion": "42", "generation": 3,
                "creationTimestamp": "2026-12-06T00:00:00Z",
                "labels": {labels::INSTANCE: "trace", labels::MANAGED_BY: labels::MANAGER},
                "annotations": {super::super::apply::SPEC_HASH_ANNOTATION: "abc"},
                "ownerReferences": [{"apiVersion": "streaming.austin.dev/v1alpha1",
                    "kind": "StreamJob", "name": "trace", "uid": "77", "controller": true}],
            },
            "spec": {"replicas": 2, "template": {"metadata": {"labels": {"a": "b"}}}},
            "status": {"replicas": 2, "readyReplicas": 1, "observedGeneration": 3},
        }))
        .expect("a Deployment")
    }

    fn pod(job: &str, name: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "resourceVersion": "1",
                "labels": {labels::INSTANCE: job}},
        }))
        .expect("a pod")
    }

    #[test]
    fn a_job_reads_its_own_pods_through_the_index() {
        let writer = SharedWriter::new(reflector::store::Writer::<CachedPod>::default());
        let caches = Caches {
            children: BTreeMap::new(),
            pods: writer.reader(),
            pods_by_job: PodsByJob::default(),
        };
        let mirror = |event| mirror_pod_event(&writer, &caches.pods_by_job, &event);
        mirror(watcher::Event::Init);
        mirror(watcher::Event::InitApply(pod(
            "trace",
            "trace-jobmanager-a",
        )));
        mirror(watcher::Event::InitApply(pod(
            "orders",
            "orders-jobmanager-a",
        )));
        mirror(watcher::Event::InitDone);
        mirror(watcher::Event::Apply(pod("trace", "trace-taskmanager-a")));
        mirror(watcher::Event::Delete(pod("trace", "trace-jobmanager-a")));
        let names: Vec<_> = caches
            .pods_of("default", "trace")
            .into_iter()
            .map(|pod| pod.name_any())
            .collect();
        assert_eq!(names, ["trace-taskmanager-a"]);
        assert_eq!(caches.pods_of("default", "orders").len(), 1);
        assert!(caches.pods_of("elsewhere", "trace").is_empty());
    }

    #[test]
    fn a_cached_child_reads_back_as_the_object_it_was() {
        let object = deployment();
        let resource = ApiResource::erase::<Deployment>(&());
        let cached = CachedChild::of(&object);
        assert_eq!(cached.key.labels, None, "the labels are in the text");
        assert_eq!(cached.key.resource_version.as_deref(), Some("42"));
        let back = cached.to_object(&resource).expect("parses back");
        assert_eq!(back.metadata, object.metadata);
        assert_eq!(back.data, object.data);
        assert_eq!(back.types, object.types);
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
