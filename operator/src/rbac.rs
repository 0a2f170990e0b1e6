//! The Kubernetes permissions the operator needs, as ONE table.
//!
//! `streamjob-operator rbac` prints it as JSON PolicyRules (the chart's ClusterRole/Role is checked
//! against that output), and the mocked-API tests check every request the reconciler makes against
//! [`allows`], so the table cannot silently fall behind the code.

use serde::Serialize;

/// One PolicyRule (same shape as `rbac.authorization.k8s.io/v1` PolicyRule).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub verbs: Vec<String>,
}

const READ_WRITE: &[&str] = &[
    "get", "list", "watch", "create", "update", "patch", "delete",
];

/// `(apiGroups, resources, verbs)`: the single source of truth.
const TABLE: &[(&[&str], &[&str], &[&str])] = &[
    // The StreamJobs themselves: watched, finalizer added/removed by patch.
    (
        &["streaming.austin.dev"],
        &["streamjobs"],
        &["get", "list", "watch", "patch", "update"],
    ),
    // Status (server-side apply) and the scale subresource is written by users, not us.
    (
        &["streaming.austin.dev"],
        &["streamjobs/status"],
        &["get", "patch", "update"],
    ),
    // Owner references with blockOwnerDeletion need update on the owner's finalizers.
    (
        &["streaming.austin.dev"],
        &["streamjobs/finalizers"],
        &["update"],
    ),
    // Children.
    (
        &[""],
        &["configmaps", "services", "persistentvolumeclaims"],
        READ_WRITE,
    ),
    (&["apps"], &["deployments"], READ_WRITE),
    // The job's NetworkPolicies (deleted when a spec opts out).
    (&["networking.k8s.io"], &["networkpolicies"], READ_WRITE),
    // Each job's API token Secret: applied, and watched (by the managed-by label, so the cache
    // holds only these) to learn the token back. RBAC cannot narrow list/watch by label: the
    // server filters, the permission covers the namespace's Secrets.
    (
        &[""],
        &["secrets"],
        &["get", "list", "watch", "create", "patch"],
    ),
    // The job's pods, read only: crash loops show there, not in the Deployment (listed per
    // reconcile, watched so a crash loop is reported when it starts).
    (&[""], &["pods"], &["list", "watch"]),
    // Kubernetes Events for every transition (events.k8s.io/v1 through kube's Recorder).
    (&["events.k8s.io"], &["events"], &["create", "patch"]),
    // Leader election.
    (
        &["coordination.k8s.io"],
        &["leases"],
        &["get", "create", "update", "patch"],
    ),
];

/// The rules as PolicyRules.
pub fn policy_rules() -> Vec<PolicyRule> {
    TABLE
        .iter()
        .map(|(groups, resources, verbs)| PolicyRule {
            api_groups: groups.iter().map(|s| s.to_string()).collect(),
            resources: resources.iter().map(|s| s.to_string()).collect(),
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
        })
        .collect()
}

/// The rules as pretty JSON (what `streamjob-operator rbac` prints).
pub fn policy_rules_json() -> String {
    // Serialising plain strings cannot fail.
    serde_json::to_string_pretty(&policy_rules()).unwrap_or_else(|_| "[]".into())
}

/// Whether the table allows `verb` on `group`/`resource` (resource may be `x/subresource`).
pub fn allows(group: &str, resource: &str, verb: &str) -> bool {
    TABLE.iter().any(|(groups, resources, verbs)| {
        groups.contains(&group) && resources.contains(&resource) && verbs.contains(&verb)
    })
}

/// A Kubernetes API request, classified the way the RBAC authorizer classifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestAttributes {
    pub group: String,
    pub resource: String,
    pub verb: String,
}

/// Classifies a request by method, path and query, as the API server's RBAC authorizer does
/// (`/api/v1/...` is the core group, `/apis/GROUP/VERSION/...` the others; a GET on a collection is
/// `list`, or `watch` with `watch=true`). `None` for paths that are not resource requests.
pub fn classify(method: &str, path: &str, query: &str) -> Option<RequestAttributes> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segments.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let rest = match rest {
        ["namespaces", _ns, tail @ ..] if !tail.is_empty() => tail,
        other => other,
    };
    let (resource, name, sub) = match rest {
        [resource] => (*resource, None, None),
        [resource, name] => (*resource, Some(*name), None),
        [resource, name, sub] => (*resource, Some(*name), Some(*sub)),
        _ => return None,
    };
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match (method, name.is_some()) {
        ("GET", _) if watch => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return None,
    };
    let resource = match sub {
        Some(sub) => format!("{resource}/{sub}"),
        None => resource.to_string(),
    };
    Some(RequestAttributes {
        group: group.to_string(),
        resource,
        verb: verb.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_classified_like_the_rbac_authorizer() {
        let a = classify(
            "PATCH",
            "/apis/apps/v1/namespaces/ns/deployments/x",
            "fieldManager=m",
        )
        .expect("resource request");
        assert_eq!(
            (a.group.as_str(), a.resource.as_str(), a.verb.as_str()),
            ("apps", "deployments", "patch")
        );
        let a = classify(
            "GET",
            "/api/v1/namespaces/ns/configmaps",
            "watch=true&timeoutSeconds=290",
        )
        .expect("resource request");
        assert_eq!((a.group.as_str(), a.verb.as_str()), ("", "watch"));
        let a = classify("GET", "/apis/streaming.austin.dev/v1alpha1/streamjobs", "")
            .expect("resource request");
        assert_eq!(a.verb, "list");
        let a = classify(
            "PATCH",
            "/apis/streaming.austin.dev/v1alpha1/namespaces/ns/streamjobs/t/status",
            "",
        )
        .expect("resource request");
        assert_eq!(a.resource, "streamjobs/status");
        assert!(classify("GET", "/version", "").is_none());
    }

    #[test]
    fn the_table_allows_what_it_lists_and_nothing_else() {
        assert!(allows("apps", "deployments", "patch"));
        assert!(allows("streaming.austin.dev", "streamjobs/status", "patch"));
        assert!(
            allows("", "secrets", "watch") && !allows("", "secrets", "delete"),
            "the operator watches its jobs' API token Secrets and never deletes one (the \
             StreamJob's owner reference does)"
        );
        assert!(!allows("streaming.austin.dev", "streamjobs", "delete"));
        let json: serde_json::Value =
            serde_json::from_str(&policy_rules_json()).expect("valid JSON");
        assert_eq!(json[0]["apiGroups"][0], "streaming.austin.dev");
        assert_eq!(json.as_array().map(Vec::len), Some(TABLE.len()));
    }
}
