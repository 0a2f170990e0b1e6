//! How the process kubelet turns a Pod into a local process: which binary its container runs,
//! its volumes as directories (ConfigMaps and Secrets as files, a PVC as a directory that outlives
//! the pod), its environment (downward API, `secretKeyRef`, `configMapKeyRef`, and a kubeconfig
//! with a TokenRequest token of its ServiceAccount instead of the in-cluster mount), and the
//! rewrites that stand in for pod networking: the pod's own loopback address for `0.0.0.0`, and
//! Service addresses for cluster DNS names.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, ServiceAccount, Volume};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::PostParams;
use kube::{Api, Client, ResourceExt};

use crate::{operator_binary, worker_binary};

/// Everything needed to start (and restart) a pod's process.
#[derive(Debug, Clone)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// `(port, path)` of the container's readiness probe, if it has an HTTP one.
    pub readiness: Option<(u16, String)>,
}

/// What a pod may reach by name: `<service>.<namespace>.svc` → the Service's loopback address.
pub type ServiceAddresses = BTreeMap<String, Ipv4Addr>;

/// The binary a container runs here, if it is one of ours.
pub fn program_of(container: &Container) -> Option<PathBuf> {
    let command = container.command.as_deref().unwrap_or_default();
    let image = container.image.as_deref().unwrap_or_default();
    if command.first().map(String::as_str) == Some("streamjob-worker") {
        Some(worker_binary().to_path_buf())
    } else if command.is_empty() && image.contains("streamjob-operator") {
        Some(operator_binary().to_path_buf())
    } else {
        None
    }
}

/// Text substitutions for one pod, longest pattern first, made in one pass (a replacement is
/// never rewritten again: a local path may itself contain `/tmp`).
struct Rewrites(Vec<(String, String)>);

impl Rewrites {
    fn apply(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        'scan: while let Some(c) = rest.chars().next() {
            for (from, to) in &self.0 {
                if let Some(after) = rest.strip_prefix(from.as_str()) {
                    out.push_str(to);
                    rest = after;
                    continue 'scan;
                }
            }
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
        out
    }
}

/// Prepares pod `pod`'s process with address `ip`, writing its volumes under `dir` (a PVC goes
/// to `pvc_root/<namespace>/<claim>`, so the next pod finds what the last one wrote).
pub async fn prepare(
    client: &Client,
    pod: &Pod,
    ip: Ipv4Addr,
    dir: &Path,
    pvc_root: &Path,
    services: &ServiceAddresses,
    kubeconfig_for: &(dyn Fn(&str) -> String + Send + Sync),
) -> Result<Launch, String> {
    let namespace = pod.namespace().unwrap_or_default();
    let spec = pod.spec.as_ref().ok_or("pod without spec")?;
    let container = spec.containers.first().ok_or("pod without containers")?;
    let program = program_of(container).ok_or("not a streamjob container")?;
    let pod_dir = dir.join(format!("{namespace}-{}", pod.name_any()));
    std::fs::create_dir_all(&pod_dir).map_err(|e| e.to_string())?;

    let mut rewrites: Vec<(String, String)> = Vec::new();
    rewrites.push(("0.0.0.0:".into(), format!("{ip}:")));
    for (host, address) in services {
        rewrites.push((format!("{host}.cluster.local"), address.to_string()));
        rewrites.push((host.clone(), address.to_string()));
    }
    let volumes = spec.volumes.clone().unwrap_or_default();
    let mut mounts = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let Some(volume) = volumes.iter().find(|v| v.name == mount.name) else {
            continue;
        };
        let local = match volume_dir(volume, &pod_dir, pvc_root, &namespace) {
            Some(local) => local,
            None => continue,
        };
        mounts.push((mount.mount_path.clone(), volume.clone(), local.clone()));
        rewrites.push((mount.mount_path.clone(), local.display().to_string()));
    }
    rewrites.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
    let rewrites = Rewrites(rewrites);
    for (_, volume, local) in &mounts {
        fill_volume(client, &namespace, volume, local, &rewrites).await?;
    }

    let mut env = Vec::new();
    for var in container.env.iter().flatten() {
        let value = env_value(client, pod, &namespace, ip, var).await?;
        env.push((var.name.clone(), rewrites.apply(&value)));
    }
    if spec.automount_service_account_token != Some(false) {
        let account = spec.service_account_name.as_deref().unwrap_or("default");
        let token = service_account_token(client, &namespace, account).await?;
        let path = pod_dir.join("kubeconfig");
        std::fs::write(&path, kubeconfig_for(&token)).map_err(|e| e.to_string())?;
        env.push(("KUBECONFIG".into(), path.display().to_string()));
    }
    let args = container
        .args
        .iter()
        .flatten()
        .map(|a| rewrites.apply(a))
        .collect();
    Ok(Launch {
        program,
        args,
        env,
        readiness: readiness_of(container),
    })
}

/// The local directory standing in for a volume (none for kinds the process does not need, such
/// as the projected ServiceAccount token: it gets a kubeconfig instead).
fn volume_dir(
    volume: &Volume,
    pod_dir: &Path,
    pvc_root: &Path,
    namespace: &str,
) -> Option<PathBuf> {
    if let Some(claim) = &volume.persistent_volume_claim {
        return Some(pvc_root.join(namespace).join(&claim.claim_name));
    }
    if volume.config_map.is_some() || volume.secret.is_some() || volume.empty_dir.is_some() {
        return Some(pod_dir.join("volumes").join(&volume.name));
    }
    None
}

/// Writes a ConfigMap's or Secret's keys as files (ConfigMap text rewritten like args).
async fn fill_volume(
    client: &Client,
    namespace: &str,
    volume: &Volume,
    local: &Path,
    rewrites: &Rewrites,
) -> Result<(), String> {
    std::fs::create_dir_all(local).map_err(|e| format!("{}: {e}", local.display()))?;
    let files: Vec<(String, Vec<u8>)> = if let Some(source) = &volume.config_map {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        let map = api.get(&source.name).await.map_err(|e| e.to_string())?;
        let data = map.data.unwrap_or_default().into_iter();
        keyed_files(
            source.items.as_deref(),
            data.map(|(k, v)| (k, rewrites.apply(&v).into_bytes())),
        )
    } else if let Some(source) = &volume.secret {
        let name = source.secret_name.clone().unwrap_or_default();
        let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let secret = api.get(&name).await.map_err(|e| e.to_string())?;
        let data = secret.data.unwrap_or_default().into_iter();
        keyed_files(source.items.as_deref(), data.map(|(k, v)| (k, v.0)))
    } else {
        Vec::new()
    };
    for (path, bytes) in files {
        std::fs::write(local.join(&path), bytes).map_err(|e| format!("{path}: {e}"))?;
    }
    Ok(())
}

/// The files a ConfigMap or Secret volume holds: every key, or only the listed `items` at their
/// paths.
fn keyed_files(
    items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>,
    data: impl Iterator<Item = (String, Vec<u8>)>,
) -> Vec<(String, Vec<u8>)> {
    let items: BTreeMap<&str, &str> = items
        .unwrap_or_default()
        .iter()
        .map(|i| (i.key.as_str(), i.path.as_str()))
        .collect();
    data.filter_map(|(key, bytes)| {
        let path = if items.is_empty() {
            Some(key.clone())
        } else {
            items.get(key.as_str()).map(|p| p.to_string())
        };
        path.map(|p| (p, bytes))
    })
    .collect()
}

async fn env_value(
    client: &Client,
    pod: &Pod,
    namespace: &str,
    ip: Ipv4Addr,
    var: &k8s_openapi::api::core::v1::EnvVar,
) -> Result<String, String> {
    if let Some(value) = &var.value {
        return Ok(value.clone());
    }
    let Some(from) = &var.value_from else {
        return Ok(String::new());
    };
    if let Some(field) = &from.field_ref {
        return Ok(match field.field_path.as_str() {
            "metadata.name" => pod.name_any(),
            "metadata.namespace" => namespace.to_string(),
            "status.podIP" => ip.to_string(),
            other => return Err(format!("env {}: fieldRef {other} not supported", var.name)),
        });
    }
    if let Some(key) = &from.secret_key_ref {
        let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let secret = api
            .get(&key.name)
            .await
            .map_err(|e| format!("env {}: {e}", var.name))?;
        let value = secret.data.unwrap_or_default().remove(&key.key);
        return match value {
            Some(bytes) => String::from_utf8(bytes.0).map_err(|e| e.to_string()),
            None => Err(format!(
                "env {}: Secret {} has no key {}",
                var.name, key.name, key.key
            )),
        };
    }
    if let Some(key) = &from.config_map_key_ref {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        let map = api
            .get(&key.name)
            .await
            .map_err(|e| format!("env {}: {e}", var.name))?;
        return map
            .data
            .unwrap_or_default()
            .remove(&key.key)
            .ok_or_else(|| {
                format!(
                    "env {}: ConfigMap {} has no key {}",
                    var.name, key.name, key.key
                )
            });
    }
    Ok(String::new())
}

/// A token of `account` from the TokenRequest API, as a projected token volume would hold.
async fn service_account_token(
    client: &Client,
    namespace: &str,
    account: &str,
) -> Result<String, String> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request = serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": 24 * 3600},
    });
    let answer: serde_json::Value = api
        .create_subresource("token", account, &PostParams::default(), &request)
        .await
        .map_err(|e| format!("TokenRequest for {namespace}/{account}: {e}"))?;
    answer["status"]["token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| "TokenRequest answered without a token".into())
}

/// The container's HTTP readiness probe as `(port, path)`, a named port looked up.
pub fn readiness_of(container: &Container) -> Option<(u16, String)> {
    let get = container.readiness_probe.as_ref()?.http_get.as_ref()?;
    let port = match &get.port {
        IntOrString::Int(port) => u16::try_from(*port).ok()?,
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok())?,
    };
    Some((port, get.path.clone().unwrap_or_else(|| "/".into())))
}

#[cfg(test)]
mod tests {
    use super::Rewrites;

    #[test]
    fn rewrites_are_made_once_longest_first() {
        let rewrites = Rewrites(vec![
            ("/etc/streamjob".into(), "/tmp/pod/config".into()),
            ("0.0.0.0:".into(), "127.77.0.2:".into()),
            ("/tmp".into(), "/tmp/pod/tmp".into()),
        ]);
        assert_eq!(
            rewrites.apply("--config /etc/streamjob/job.yaml bind 0.0.0.0:8081 dir /tmp/x"),
            "--config /tmp/pod/config/job.yaml bind 127.77.0.2:8081 dir /tmp/pod/tmp/x"
        );
    }
}
