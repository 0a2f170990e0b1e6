//! Applying the planned children, generically by kind: each desired child carries a hash of its
//! apply body (an annotation), and is applied only when the cached object lacks that hash or a
//! field the operator owns has drifted. A reconcile that finds everything as planned writes
//! nothing.

use kube::api::{ApiResource, DynamicObject, Patch};
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde_json::Value;

use super::apply_params;
use super::cache::Caches;
use crate::planner::{config::stable_hash, Plan};
use crate::{Error, Result};

/// Annotation on every child: the hash of the apply body it was last applied with.
pub const SPEC_HASH_ANNOTATION: &str = "streaming.austin.dev/spec-hash";

/// One child the plan wants, as the body of a server-side apply.
#[derive(Debug, Clone)]
pub struct DesiredChild {
    pub resource: ApiResource,
    pub name: String,
    /// The apply body, with [`SPEC_HASH_ANNOTATION`] set.
    pub body: Value,
}

impl DesiredChild {
    /// The child as an apply body, stamped with the hash of that body.
    pub fn of<K>(child: &K) -> Result<Self>
    where
        K: Resource<DynamicType = ()> + Serialize,
    {
        let name = child
            .meta()
            .name
            .clone()
            .ok_or(Error::MissingObjectKey("child name"))?;
        let mut body = serde_json::to_value(child).map_err(kube::Error::SerdeError)?;
        let hash = stable_hash(&[body.to_string().as_bytes()]);
        let metadata = body
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .ok_or(Error::MissingObjectKey("child metadata"))?;
        let annotations = metadata
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(annotations) = annotations.as_object_mut() {
            annotations.insert(SPEC_HASH_ANNOTATION.into(), Value::String(hash));
        }
        Ok(Self {
            resource: ApiResource::erase::<K>(&()),
            name,
            body,
        })
    }

    pub fn kind(&self) -> &str {
        &self.resource.kind
    }

    /// Whether applying would change the observed object: it is missing, was applied from another
    /// body (hash), or someone changed a field the operator owns (drift).
    pub fn differs_from(&self, observed: Option<&DynamicObject>) -> bool {
        let Some(observed) = observed else {
            return true;
        };
        let Ok(observed) = serde_json::to_value(observed) else {
            return true;
        };
        owned_fields(self.kind()).iter().any(|pointer| {
            match (self.body.pointer(pointer), observed.pointer(pointer)) {
                (None, _) => false,
                (Some(desired), Some(actual)) => !contains(actual, desired),
                (Some(desired), None) => !desired.is_null(),
            }
        })
    }
}

/// The fields compared for drift, per kind. Metadata always (the hash annotation is in it); the
/// whole spec/data where the API server stores it as sent; for Deployments and PVCs only the parts
/// that are not canonicalised (quantities like `1024Mi` come back as `1Gi`) — a changed body is
/// caught by the hash anyway.
fn owned_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "Deployment" => &[
            "/metadata/labels",
            "/metadata/annotations",
            "/metadata/ownerReferences",
            "/spec/replicas",
            "/spec/template/metadata",
        ],
        "PersistentVolumeClaim" => &["/metadata/labels", "/metadata/annotations"],
        _ => &[
            "/metadata/labels",
            "/metadata/annotations",
            "/metadata/ownerReferences",
            "/spec",
            "/data",
        ],
    }
}

/// Whether `actual` holds everything `desired` says (extra fields, e.g. defaults, are fine).
fn contains(actual: &Value, desired: &Value) -> bool {
    match (actual, desired) {
        (Value::Object(actual), Value::Object(desired)) => desired
            .iter()
            .all(|(k, v)| actual.get(k).map_or(v.is_null(), |a| contains(a, v))),
        (Value::Array(actual), Value::Array(desired)) => {
            actual.len() == desired.len() && actual.iter().zip(desired).all(|(a, d)| contains(a, d))
        }
        (actual, desired) => actual == desired,
    }
}

/// The children of a plan, in the order they are applied: the ConfigMap first (a new pod reads
/// the config and restore point it finds), the PVC, the API token Secret and the Service always,
/// the workloads only when the lifecycle allows. Children added to the plan go in this list.
pub fn desired(plan: &Plan) -> Result<Vec<DesiredChild>> {
    let c = &plan.children;
    let mut children = Vec::with_capacity(8);
    if plan.apply_workloads {
        children.push(DesiredChild::of(&c.config_map)?);
    }
    children.push(DesiredChild::of(&c.savepoint_pvc)?);
    if let Some(secret) = &c.api_token {
        children.push(DesiredChild::of(secret)?);
    }
    children.push(DesiredChild::of(&c.jobmanager_service)?);
    for policy in &c.network_policies {
        children.push(DesiredChild::of(policy)?);
    }
    if plan.apply_workloads {
        children.push(DesiredChild::of(&c.jobmanager)?);
        children.push(DesiredChild::of(&c.taskmanager)?);
    }
    Ok(children)
}

/// Applies each child that differs from its cached state; returns how many were applied.
pub async fn apply_changed(
    client: &Client,
    caches: &Caches,
    namespace: &str,
    children: &[DesiredChild],
) -> Result<usize> {
    let mut applied = 0;
    for child in children {
        let observed = caches.child(child.kind(), namespace, &child.name);
        if caches.watches(child.kind()) && !child.differs_from(observed.as_ref()) {
            continue;
        }
        apply(client, namespace, child).await?;
        applied += 1;
    }
    Ok(applied)
}

/// One server-side apply (the operator's field manager, forced).
pub async fn apply(client: &Client, namespace: &str, child: &DesiredChild) -> Result<()> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &child.resource);
    api.patch(&child.name, &apply_params(), &Patch::Apply(&child.body))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_added_by_the_server_are_not_drift_but_owned_changes_are() {
        let desired = json!({"spec": {"ports": [{"port": 8081, "name": "rest"}]}});
        let defaulted = json!({"spec": {"ports": [{"port": 8081, "name": "rest", "protocol": "TCP"}], "clusterIP": "10.0.0.1"}});
        assert!(contains(&defaulted, &desired));
        let edited = json!({"spec": {"ports": [{"port": 9000, "name": "rest"}]}});
        assert!(!contains(&edited, &desired));
        let extra_port = json!({"spec": {"ports": [{"port": 8081, "name": "rest"}, {"port": 1}]}});
        assert!(!contains(&extra_port, &desired));
    }
}
