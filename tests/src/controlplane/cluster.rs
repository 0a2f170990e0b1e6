//! The whole product on a real control plane, as a user has it after `helm install`: the chart
//! installed through Helm's SDK, the process kubelet running the chart's operator pod (as the
//! chart's ServiceAccount, with a TokenRequest token) and the StreamJobs' worker pods. Tests read
//! like what a user does: apply a StreamJob, `kubectl wait` for Ready, `kubectl scale` it.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::Client;
use serde_json::{json, Value};

use super::audit::{self, AuditEvent};
use super::helm::{self, Release};
use super::kubelet::{Kubelet, KubeletOptions};
use super::ControlPlane;

/// Namespace and release name of the chart in these tests.
pub const OPERATOR_NAMESPACE: &str = "streamjob-system";
pub const RELEASE: &str = "streamjob-operator";

/// Chart values of a test install: the operator's image name is what tells the kubelet to run
/// the operator binary; the rest is the chart's defaults.
pub fn test_values() -> Value {
    json!({
        "image": {"repository": "streamjob/streamjob-operator", "tag": "test"},
        "logging": {"format": "text", "level": "info,kube=warn,streamjob_operator=debug"},
    })
}

/// A control plane with the chart installed and its operator running.
pub struct OperatorCluster {
    pub kubelet: Kubelet,
    pub release: Release,
    pub client: Client,
    /// Dropped last: the kubelet's processes stop before the API server does.
    pub plane: ControlPlane,
}

impl OperatorCluster {
    /// Starts a control plane, installs the chart with `values` and waits until an operator pod
    /// is Ready.
    pub async fn up(values: Value) -> Self {
        Self::up_with(values, KubeletOptions::default()).await
    }

    /// [`OperatorCluster::up`] with a kubelet that plays its node as `options` say.
    pub async fn up_with(values: Value, options: KubeletOptions) -> Self {
        Self::up_from(&helm::chart_dir(), values, options).await
    }

    /// [`OperatorCluster::up_with`] from the chart in directory `chart` (an older copy).
    pub async fn up_from(chart: &std::path::Path, values: Value, options: KubeletOptions) -> Self {
        Self::on(ControlPlane::start().await, chart, values, options).await
    }

    /// [`OperatorCluster::up_from`] on a control plane already started (with other options).
    pub async fn on(
        plane: ControlPlane,
        chart: &std::path::Path,
        values: Value,
        options: KubeletOptions,
    ) -> Self {
        let release = helm::install_chart(&plane, chart, RELEASE, OPERATOR_NAMESPACE, &values);
        let kubelet = Kubelet::start_with(&plane, options).await;
        let client = plane.admin_client().await;
        let cluster = OperatorCluster {
            kubelet,
            release,
            client,
            plane,
        };
        cluster.wait_for_operator().await;
        cluster
    }

    /// The operator's pods (the chart's Deployment).
    pub async fn operator_pods(&self) -> Vec<Pod> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), OPERATOR_NAMESPACE);
        let selector = "app.kubernetes.io/component=operator";
        api.list(&ListParams::default().labels(selector))
            .await
            .map(|l| l.items)
            .unwrap_or_default()
    }

    /// Waits until an operator pod is Ready (its `/readyz` answers).
    pub async fn wait_for_operator(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = self.operator_pods().await.iter().any(is_ready);
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no operator pod became ready:\n{}",
                self.kubelet.logs("streamjob-operator")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `http://<ip>:8080` of a ready operator pod.
    pub async fn operator_http(&self) -> Option<String> {
        self.operator_pods()
            .await
            .iter()
            .filter(|p| is_ready(p))
            .find_map(|p| p.status.as_ref()?.pod_ip.clone())
            .map(|ip| format!("{ip}:8080"))
    }

    /// `kubectl ARGS…` as the admin.
    pub fn kubectl(&self, args: &[&str]) -> String {
        self.plane.kubectl(args)
    }

    /// Applies a StreamJob manifest (server-side apply, as `kubectl apply --server-side`).
    pub fn apply(&self, namespace: &str, manifest: &Value) {
        let path = self
            .plane
            .dir()
            .join(format!("manifest-{}.json", manifest_number()));
        std::fs::write(&path, manifest.to_string()).expect("manifest written");
        self.kubectl(&[
            "apply",
            "--server-side",
            "--field-manager=test-user",
            "-n",
            namespace,
            "-f",
            &path.display().to_string(),
        ]);
    }

    /// `kubectl wait --for=condition=TYPE[=STATUS] sj/NAME --timeout=…`: whether it succeeded.
    pub fn wait_for(
        &self,
        namespace: &str,
        name: &str,
        condition: &str,
        timeout: Duration,
    ) -> bool {
        let output = self.plane.kubectl_output(&[
            "wait",
            "-n",
            namespace,
            &format!("--for=condition={condition}"),
            &format!("streamjob/{name}"),
            &format!("--timeout={}s", timeout.as_secs()),
        ]);
        output.status.success()
    }

    /// `helm upgrade` of the release to this repository's chart with `values`.
    pub fn helm_upgrade(&self, values: &Value) {
        helm::upgrade(&self.plane, &self.release, &helm::chart_dir(), values);
    }

    /// The StreamJob as JSON.
    pub fn get(&self, namespace: &str, name: &str) -> Value {
        let text = self.kubectl(&["get", "-n", namespace, "streamjob", name, "-o", "json"]);
        serde_json::from_str(&text).expect("kubectl prints JSON")
    }

    /// Polls StreamJob `name` (what `kubectl get -o json` shows) until `done` holds, and returns
    /// it; fails after `timeout` naming `what`, with its status, the pods and the operator's
    /// logs.
    pub async fn until(
        &self,
        namespace: &str,
        name: &str,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let job = self.get(namespace, name);
            if done(&job) {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not reached in {timeout:?}; status:\n{:#}\n{}\n{}",
                job["status"],
                self.describe(),
                self.operator_logs()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The status of condition `type_` of StreamJob `name`.
    pub fn condition(&self, namespace: &str, name: &str, type_: &str) -> Option<String> {
        let job = self.get(namespace, name);
        job["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == type_)
            .and_then(|c| c["status"].as_str().map(str::to_string))
    }

    /// The requests the operator (the chart's ServiceAccount) made so far.
    pub fn operator_requests(&self) -> Vec<AuditEvent> {
        let events = audit::read(&self.plane.audit_log);
        let user = self.release.username();
        events
            .into_iter()
            .filter(|e| e.user.username == user)
            .collect()
    }

    /// Fails with the list of 403s the operator got, if any.
    pub fn assert_no_forbidden(&self) {
        let requests = self.operator_requests();
        let forbidden: Vec<String> = requests
            .iter()
            .filter(|e| e.code() == 403)
            .map(|e| format!("{} {}", e.call(), e.request_uri))
            .collect();
        assert!(
            forbidden.is_empty(),
            "the operator was refused {} requests (RBAC of the chart):\n{}",
            forbidden.len(),
            forbidden.join("\n")
        );
    }

    /// What a failure message needs: every pod with its phase and readiness, the processes the
    /// kubelet runs, and the last lines of each pod's log.
    pub fn describe(&self) -> String {
        let pods = self
            .plane
            .kubectl_output(&["get", "pods", "-A", "-o", "wide"]);
        let mut out = format!(
            "pods:\n{}\nprocesses: {:?}\n",
            String::from_utf8_lossy(&pods.stdout),
            self.kubelet.processes()
        );
        for (name, log) in self.kubelet.log_tails(15) {
            out.push_str(&format!("--- {name}\n{log}\n"));
        }
        out
    }

    /// The operator's logs so far (for failure messages).
    pub fn operator_logs(&self) -> String {
        self.kubelet.logs("streamjob-operator")
    }
}

fn manifest_number() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Whether a pod's Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
