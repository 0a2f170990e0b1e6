//! The controller's watch caches: one reflector store per child kind (the objects the operator
//! applies, watched by the `managed-by` label) and one of the jobs' pods. A reconcile reads the
//! children from here, never with GETs, and the same watches are what trigger reconciles.
//!
//! The stores hold trimmed objects: no `managedFields` anywhere, Deployments without their pod
//! spec, and pods only with their labels,
//! Ready condition, IP and container statuses (what the planner reads of them), so the cache of
//! 1,000 jobs stays small.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::stream::BoxStream;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};

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
    children: BTreeMap<String, (ApiResource, Store<DynamicObject>)>,
    pods: Store<Pod>,
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
        let writer = reflector::store::Writer::new(resource.clone());
        let store = writer.as_reader();
        let api: Api<DynamicObject> = scoped(client, namespace, &resource);
        let kind = resource.kind.clone();
        let stream = watcher(api, managed.clone())
            .default_backoff()
            .modify(move |object: &mut DynamicObject| trim_child(&kind, object))
            .reflect(writer)
            .applied_objects()
            .boxed();
        children.insert(resource.kind.clone(), (resource.clone(), store));
        streams.push((resource, stream));
    }
    let pods_api: Api<Pod> = match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    let (pods, pod_writer) = reflector::store();
    let pod_stream = watcher(pods_api, managed)
        .default_backoff()
        .modify(trim_pod)
        .reflect(pod_writer)
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

/// Keeps what the planner reads of a pod: its labels, whether it is being deleted, its Ready
/// condition and IP (the jobmanager's address, once it is ready) and its container statuses
/// (crash loops).
fn trim_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = None;
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

    /// The cached child of `kind` named `name`.
    pub fn child(&self, kind: &str, namespace: &str, name: &str) -> Option<Arc<DynamicObject>> {
        let (resource, store) = self.children.get(kind)?;
        store.get(&ObjectRef::new_with(name, resource.clone()).within(namespace))
    }

    fn typed<K: kube::Resource + serde::de::DeserializeOwned>(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Option<K> {
        let object = self.child(kind, namespace, name)?;
        // A cached object that does not parse as its kind is treated as missing (re-applied).
        (*object).clone().try_parse::<K>().ok()
    }

    /// The pods of one job (both components).
    pub fn pods_of(&self, namespace: &str, job: &str) -> Vec<Pod> {
        self.pods
            .state_filter(|pod| {
                pod.namespace().as_deref() == Some(namespace)
                    && pod.labels().get(labels::INSTANCE).map(String::as_str) == Some(job)
            })
            .into_iter()
            .map(|pod| (*pod).clone())
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
