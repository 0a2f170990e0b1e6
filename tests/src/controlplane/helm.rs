//! `helm install` and `helm upgrade` of the operator's chart, through Helm's own Go SDK (the `helm-python-sdk`
//! wheel in `.local/venv`, driven by `tests/controlplane/helm_release.py`): the chart's CRD,
//! RBAC, ServiceAccount and Deployment reach the API server exactly as a user's install would.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use super::{ControlPlane, ADMIN_TOKEN};

/// The operator's chart in this repository.
pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/streamjob-operator")
}

fn python() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.local/venv/bin/python");
    assert!(
        venv.exists(),
        "{} missing: run scripts/setup.sh --test",
        venv.display()
    );
    venv
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("controlplane/helm_release.py")
}

/// A chart release on a control plane.
#[derive(Debug, Clone)]
pub struct Release {
    pub name: String,
    pub namespace: String,
}

impl Release {
    /// The ServiceAccount the chart runs the operator as (`<release>-streamjob-operator`, or the
    /// release name when it already contains the chart's name).
    pub fn service_account(&self) -> String {
        if self.name.contains("streamjob-operator") {
            self.name.clone()
        } else {
            format!("{}-streamjob-operator", self.name)
        }
    }

    /// The Kubernetes user name of that ServiceAccount (as the audit log shows it).
    pub fn username(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace,
            self.service_account()
        )
    }
}

/// Installs the chart as `release` into `namespace` (created when missing) with `values`;
/// panics with Helm's message when the install fails.
pub fn install(cluster: &ControlPlane, release: &str, namespace: &str, values: &Value) -> Release {
    install_chart(cluster, &chart_dir(), release, namespace, values)
}

/// [`install`] of the chart in directory `chart` (an older copy, for upgrade tests).
pub fn install_chart(
    cluster: &ControlPlane,
    chart: &Path,
    release: &str,
    namespace: &str,
    values: &Value,
) -> Release {
    let output = run_release(cluster, "install", chart, release, namespace, values);
    assert_succeeded("install", &output);
    Release {
        name: release.into(),
        namespace: namespace.into(),
    }
}

/// Installs the chart and returns the outcome, whatever it is (tests of a refused install).
pub fn try_install(
    cluster: &ControlPlane,
    release: &str,
    namespace: &str,
    values: &Value,
) -> std::process::Output {
    run_release(cluster, "install", &chart_dir(), release, namespace, values)
}

/// `helm upgrade` of `release` to the chart in directory `chart` with `values`; panics with
/// Helm's message when the upgrade fails.
pub fn upgrade(cluster: &ControlPlane, release: &Release, chart: &Path, values: &Value) {
    let output = run_release(
        cluster,
        "upgrade",
        chart,
        &release.name,
        &release.namespace,
        values,
    );
    assert_succeeded("upgrade", &output);
}

fn run_release(
    cluster: &ControlPlane,
    action: &str,
    chart: &Path,
    release: &str,
    namespace: &str,
    values: &Value,
) -> std::process::Output {
    let kubeconfig = cluster.write_kubeconfig("helm", ADMIN_TOKEN);
    Command::new(python())
        .arg(script())
        .arg(action)
        .arg(&kubeconfig)
        .arg(chart)
        .args([release, namespace, &values.to_string()])
        .output()
        .expect("python runs")
}

fn assert_succeeded(action: &str, output: &std::process::Output) {
    assert!(
        output.status.success(),
        "helm {action} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `helm uninstall`.
pub fn uninstall(cluster: &ControlPlane, release: &Release) {
    let kubeconfig = cluster.write_kubeconfig("helm", ADMIN_TOKEN);
    let output = Command::new(python())
        .arg(script())
        .arg("uninstall")
        .arg(&kubeconfig)
        .args([&release.name, &release.namespace])
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "helm uninstall failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
