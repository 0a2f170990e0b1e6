//! A real Kubernetes control plane for the operator's tests, in the spirit of kube's envtest:
//! **start** etcd, kube-apiserver and kube-controller-manager on loopback, **install** the chart
//! through Helm's SDK, **run** the pods with a process [`kubelet`], and **tear down** on drop.
//!
//! It is set up the way a real cluster is: a throw-away PKI ([`pki`]), TLS on the API server, an
//! admin token in `system:masters`, RBAC authorization, a service-account issuer and signing key
//! (so TokenRequest works and the operator runs as the chart's ServiceAccount, with exactly the
//! permissions the chart grants), an audit log (every request, to count calls and 403s), and the
//! controller-manager's Deployment, ReplicaSet and garbage-collector controllers.
//!
//! The binaries: `.local/bin/kube-apiserver` and `.local/bin/kube-controller-manager`, built
//! from the `k8s.io/kubernetes` module by `tests/controlplane/build.sh` (run by
//! `scripts/setup.sh --test`), and Debian's `etcd`.
//!
//! ```no_run
//! # async fn f() {
//! use streamjob_tests::controlplane::ControlPlane;
//! let cluster = ControlPlane::start().await;
//! let client = cluster.admin_client().await;
//! # }
//! ```

pub mod audit;
pub mod cluster;
pub mod helm;
pub mod kubelet;
pub mod pki;
mod pod_process;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;

use crate::free_port;
use pki::Pki;

/// The admin's bearer token (user `admin`, group `system:masters`).
pub const ADMIN_TOKEN: &str = "streamjob-test-admin-token";

/// How long the API server may take to answer `/readyz` after its start.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// Where the project keeps the binaries it builds (`.local/bin` at the workspace root).
pub fn local_bin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.local/bin")
}

fn binary(name: &str) -> PathBuf {
    let local = local_bin().join(name);
    if local.exists() {
        return local;
    }
    let system = Path::new("/usr/bin").join(name);
    assert!(
        system.exists(),
        "{name} not found in .local/bin or /usr/bin: run scripts/setup.sh --test"
    );
    system
}

/// A process of the control plane, killed on drop.
struct Daemon {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(name: &'static str, program: &Path, args: &[String], log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).expect("daemon log");
        let err = out.try_clone().expect("daemon log");
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        Daemon { name, child, log }
    }

    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "{} exited ({status}):\n{}",
                self.name,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the control plane is run, where a test or benchmark needs other than the defaults.
#[derive(Debug, Clone, Default)]
pub struct PlaneOptions {
    /// kube-controller-manager's `--kube-api-qps` (its burst twice that). Its default, 20, makes
    /// the ~4,800 pods of 1,000 StreamJobs take over ten minutes to appear; large clusters raise
    /// it, and a benchmark that waits for every pod does too.
    pub controller_manager_qps: Option<u32>,
}

/// A running control plane. Dropping it stops every process and removes its files.
pub struct ControlPlane {
    /// API server, controller-manager, etcd: dropped (killed) in this order.
    daemons: Vec<Daemon>,
    pub pki: Pki,
    /// `https://127.0.0.1:PORT`.
    pub server: String,
    /// The audit log (JSON lines, one per finished request).
    pub audit_log: PathBuf,
    dir: tempfile::TempDir,
}

impl ControlPlane {
    /// The control plane's own processes as `(name, pid)`: a benchmark reads their CPU time to
    /// show where the time goes.
    pub fn processes(&self) -> Vec<(&'static str, u32)> {
        self.daemons
            .iter()
            .map(|daemon| (daemon.name, daemon.child.id()))
            .collect()
    }

    /// Starts etcd, kube-apiserver and kube-controller-manager and waits until the API server is
    /// ready and the default ServiceAccount of `default` exists.
    pub async fn start() -> Self {
        Self::start_with(PlaneOptions::default()).await
    }

    /// [`ControlPlane::start`] run as `options` say.
    pub async fn start_with(options: PlaneOptions) -> Self {
        // etcd's data on tmpfs where there is one: fsyncs there cost nothing.
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::Builder::new()
                .prefix("streamjob-k8s-")
                .tempdir_in(shm)
        } else {
            tempfile::Builder::new().prefix("streamjob-k8s-").tempdir()
        }
        .expect("control plane dir");
        let root = dir.path();
        let pki = Pki::create(&root.join("pki"));
        let etcd = start_etcd(root);
        let port = free_port();
        let server = format!("https://127.0.0.1:{port}");
        let audit_log = root.join("audit.log");
        let apiserver = start_apiserver(root, &pki, &etcd.1, port, &audit_log);
        let mut plane = ControlPlane {
            daemons: vec![apiserver, etcd.0],
            pki,
            server,
            audit_log,
            dir,
        };
        plane.wait_ready().await;
        let kubeconfig = plane.write_kubeconfig("controller-manager", ADMIN_TOKEN);
        let manager = start_controller_manager(plane.dir.path(), &plane.pki, &kubeconfig, &options);
        plane.daemons.insert(1, manager);
        plane.wait_for_default_service_account().await;
        plane
    }

    /// The directory of this control plane's files (PKI, logs, kubeconfigs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A kubeconfig (YAML) for `token`, trusting this cluster's CA.
    pub fn kubeconfig(&self, token: &str) -> String {
        let ca = self.pki.ca_cert.display();
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: user\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: user\n    namespace: default\ncurrent-context: test\n",
            server = self.server
        )
    }

    /// Writes [`ControlPlane::kubeconfig`] for `token` to `<dir>/<name>.kubeconfig`.
    pub fn write_kubeconfig(&self, name: &str, token: &str) -> PathBuf {
        let path = self.dir().join(format!("{name}.kubeconfig"));
        std::fs::write(&path, self.kubeconfig(token)).expect("kubeconfig written");
        path
    }

    /// A client with `token`.
    pub async fn client_with_token(&self, token: &str) -> Client {
        let kubeconfig = Kubeconfig::from_yaml(&self.kubeconfig(token)).expect("kubeconfig parses");
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .expect("kubeconfig is usable");
        Client::try_from(config).expect("client")
    }

    /// A cluster-admin client.
    pub async fn admin_client(&self) -> Client {
        self.client_with_token(ADMIN_TOKEN).await
    }

    /// `kubectl ARGS…` as the admin; panics with its output when it fails.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let output = self.kubectl_output(args);
        assert!(
            output.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `kubectl ARGS…` as the admin, whatever its outcome.
    pub fn kubectl_output(&self, args: &[&str]) -> std::process::Output {
        let kubeconfig = self.dir().join("admin.kubeconfig");
        if !kubeconfig.exists() {
            self.write_kubeconfig("admin", ADMIN_TOKEN);
        }
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args)
            .output()
            .expect("kubectl runs")
    }

    async fn wait_ready(&mut self) {
        let client = self.admin_client().await;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            for daemon in &mut self.daemons {
                daemon.assert_running();
            }
            let request = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("request");
            if let Ok(text) = client.request_text(request).await {
                if text.trim() == "ok" {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready in time"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The controller-manager's ServiceAccount controller creates `default` in each namespace;
    /// pods cannot be created before it did.
    async fn wait_for_default_service_account(&mut self) {
        let client = self.admin_client().await;
        let accounts: kube::Api<k8s_openapi::api::core::v1::ServiceAccount> =
            kube::Api::namespaced(client, "default");
        let deadline = Instant::now() + START_TIMEOUT;
        while accounts.get_opt("default").await.ok().flatten().is_none() {
            for daemon in &mut self.daemons {
                daemon.assert_running();
            }
            assert!(
                Instant::now() < deadline,
                "kube-controller-manager did not create the default ServiceAccount in time"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The API server's log (for failure messages).
    pub fn apiserver_log(&self) -> String {
        std::fs::read_to_string(self.dir().join("kube-apiserver.log")).unwrap_or_default()
    }
}

/// Starts etcd on two free loopback ports; returns it and its client URL.
fn start_etcd(root: &Path) -> (Daemon, String) {
    let client = format!("http://127.0.0.1:{}", free_port());
    let peer = format!("http://127.0.0.1:{}", free_port());
    let args = [
        "--name",
        "default",
        "--data-dir",
        &root.join("etcd").display().to_string(),
        "--listen-client-urls",
        &client,
        "--advertise-client-urls",
        &client,
        "--listen-peer-urls",
        &peer,
        "--initial-advertise-peer-urls",
        &peer,
        "--initial-cluster",
        &format!("default={peer}"),
        "--log-level",
        "warn",
    ]
    .map(String::from);
    let daemon = Daemon::start("etcd", &binary("etcd"), &args, root.join("etcd.log"));
    (daemon, client)
}

/// Every request at Metadata level, once it completed: who, what, and the response code.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n";

fn start_apiserver(root: &Path, pki: &Pki, etcd: &str, port: u16, audit_log: &Path) -> Daemon {
    std::fs::write(
        root.join("tokens.csv"),
        format!("{ADMIN_TOKEN},admin,admin,system:masters\n"),
    )
    .expect("token file");
    std::fs::write(root.join("audit-policy.yaml"), AUDIT_POLICY).expect("audit policy");
    let path = |p: &Path| p.display().to_string();
    let args = [
        "--etcd-servers".into(),
        etcd.to_string(),
        "--bind-address=127.0.0.1".into(),
        format!("--secure-port={port}"),
        format!("--tls-cert-file={}", path(&pki.serving_cert)),
        format!("--tls-private-key-file={}", path(&pki.serving_key)),
        format!("--client-ca-file={}", path(&pki.ca_cert)),
        format!("--token-auth-file={}", path(&root.join("tokens.csv"))),
        "--authorization-mode=RBAC".into(),
        "--service-account-issuer=https://kubernetes.default.svc".into(),
        format!(
            "--service-account-key-file={}",
            path(&pki.service_account_pub)
        ),
        format!(
            "--service-account-signing-key-file={}",
            path(&pki.service_account_key)
        ),
        "--service-cluster-ip-range=10.96.0.0/16".into(),
        "--endpoint-reconciler-type=none".into(),
        format!(
            "--audit-policy-file={}",
            path(&root.join("audit-policy.yaml"))
        ),
        format!("--audit-log-path={}", path(audit_log)),
        // The log is read back whole to count calls, so it must not rotate: its default size
        // cap (100 MB) rotated it within the first 5,000 StreamJobs of the benchmark, which then
        // counted 1.6 operator calls per job instead of about 12.
        "--audit-log-maxsize=4096".into(),
        // Nothing here runs a kubelet: admission must not wait for nodes or quotas of one.
        "--enable-priority-and-fairness=false".into(),
        "--v=1".into(),
    ];
    Daemon::start(
        "kube-apiserver",
        &binary("kube-apiserver"),
        &args,
        root.join("kube-apiserver.log"),
    )
}

fn start_controller_manager(
    root: &Path,
    pki: &Pki,
    kubeconfig: &Path,
    options: &PlaneOptions,
) -> Daemon {
    let path = |p: &Path| p.display().to_string();
    let mut args = vec![
        format!("--kubeconfig={}", path(kubeconfig)),
        format!(
            "--service-account-private-key-file={}",
            path(&pki.service_account_key)
        ),
        format!("--root-ca-file={}", path(&pki.ca_cert)),
        // Deployments -> ReplicaSets -> Pods, the garbage collector, ServiceAccounts, namespaces.
        "--controllers=*".into(),
        "--leader-elect=false".into(),
        "--secure-port=0".into(),
        "--v=1".into(),
    ];
    if let Some(qps) = options.controller_manager_qps {
        args.push(format!("--kube-api-qps={qps}"));
        args.push(format!("--kube-api-burst={}", 2 * qps));
    }
    Daemon::start(
        "kube-controller-manager",
        &binary("kube-controller-manager"),
        &args,
        root.join("kube-controller-manager.log"),
    )
}
