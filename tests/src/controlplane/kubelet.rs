//! A process "kubelet": the control plane has no nodes, so this plays the node for the pods of
//! streamjob's containers (the operator's and the workers'). For every such pod without a node:
//! - it gives the pod an address of its own on loopback (`127.N.x.y`, N per kubelet; a pod a Service selects
//!   gets that Service's address, which is how `<service>.<namespace>.svc` reaches it), and
//!   starts the container's command as a local process ([`pod_process::prepare`]);
//! - it probes the container's HTTP readiness probe and writes the pod's status (Running, its
//!   IP, Ready and ContainersReady, restart counts) through the `pods/status` subresource, so the
//!   ReplicaSet and Deployment controllers and the operator see what a real node reports;
//! - it restarts a process that exits (`restartPolicy: Always`, with a back-off), and on the pod's
//!   deletion sends SIGTERM, then SIGKILL after the pod's grace period.
//!
//! Pods of other containers stay Pending, as on a cluster without capacity.
//!
//! [`KubeletOptions::unresponsive_jobmanagers`] plays a jobmanager behind a network that drops
//! its traffic: the pod is Ready (its probe answers) but every REST call hangs.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::pod_process::{self, Launch, ServiceAddresses};
use super::ControlPlane;

/// Where a pod's readiness probe goes: its address, port and path.
type ProbeTarget = (Ipv4Addr, u16, String);

/// How often processes are checked (exit, readiness).
const TICK: Duration = Duration::from_millis(250);

/// One pod's process.
struct PodProcess {
    namespace: String,
    name: String,
    container: String,
    ip: Ipv4Addr,
    launch: Launch,
    child: Option<Child>,
    /// An unresponsive jobmanager's listener, in place of a process.
    stub: Option<tokio::task::JoinHandle<()>>,
    log: PathBuf,
    restarts: i32,
    ready: bool,
    started_at: Timestamp,
    last_exit: Option<i32>,
    /// When a crashed process starts again.
    restart_at: Option<Instant>,
    /// Set once the pod is deleted: SIGKILL after this instant.
    kill_at: Option<Instant>,
    grace: Duration,
    /// The status last written, so unchanged status is not written again.
    reported: Option<(bool, i32)>,
}

impl PodProcess {
    /// A pod's process record, not started yet; its grace period is the pod's.
    fn new(node: &Node, pod: &Pod, ip: Ipv4Addr, launch: Launch) -> Self {
        let namespace = pod.namespace().unwrap_or_default();
        let spec = pod.spec.as_ref();
        let grace = spec
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30);
        PodProcess {
            log: node.dir.join(format!("{namespace}-{}.log", pod.name_any())),
            namespace,
            name: pod.name_any(),
            container: spec
                .and_then(|s| s.containers.first())
                .map(|c| c.name.clone())
                .unwrap_or_default(),
            ip,
            launch,
            child: None,
            stub: None,
            restarts: 0,
            ready: false,
            started_at: Timestamp::now(),
            last_exit: None,
            restart_at: None,
            kill_at: None,
            grace: Duration::from_secs(u64::try_from(grace).unwrap_or(30)),
            reported: None,
        }
    }
}

#[derive(Default)]
struct State {
    pods: HashMap<String, PodProcess>,
    /// Pods waiting for their Service's address to be free (the old pod of a `Recreate`
    /// Deployment still stopping).
    waiting: HashMap<String, Pod>,
    service_ips: BTreeMap<String, Ipv4Addr>,
    /// This kubelet's `127.N.0.0/16`: kubelets of tests (or benchmarks) that run at the same
    /// time on one machine must not hand out the same pod addresses.
    subnet: u8,
    next_ip: u32,
    started: usize,
}

/// A `127.N` subnet for a new kubelet: N in 64..192, from the process id and a count of the
/// kubelets this process started, so concurrent test processes rarely meet (1 in 128).
fn kubelet_subnet() -> u8 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static STARTED: AtomicU32 = AtomicU32::new(0);
    let instance = STARTED.fetch_add(1, Ordering::Relaxed);
    let spread = std::process::id().wrapping_mul(31).wrapping_add(instance) % 128;
    64 + spread as u8
}

impl State {
    fn fresh_ip(&mut self) -> Ipv4Addr {
        self.next_ip += 1;
        let n = self.next_ip;
        Ipv4Addr::new(127, self.subnet, (n >> 8) as u8, (n & 0xff) as u8)
    }

    fn holder_of(&self, ip: Ipv4Addr) -> Option<&PodProcess> {
        self.pods.values().find(|p| p.ip == ip)
    }
}

/// The running kubelet; dropping it kills every process it started.
pub struct Kubelet {
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
    dir: PathBuf,
}

/// How the kubelet plays its node.
#[derive(Debug, Clone, Default)]
pub struct KubeletOptions {
    /// StreamJobs whose name starts with this get jobmanager pods that are Ready but never
    /// answer a REST call (no process runs for them).
    pub unresponsive_jobmanagers: Option<String>,
    /// Run only the operator's pods; the StreamJobs' pods stay Pending (a scale benchmark of
    /// the operator alone).
    pub operator_only: bool,
    /// Pods whose first container runs this image start a process that exits at once, as a
    /// broken release would: restarted each time, `CrashLoopBackOff` from the third restart.
    pub crashing_image: Option<String>,
}

/// What the kubelet needs of the control plane.
struct Node {
    options: KubeletOptions,
    client: Client,
    dir: PathBuf,
    pvc_root: PathBuf,
    kubeconfig_for: Box<dyn Fn(&str) -> String + Send + Sync>,
}

impl Kubelet {
    /// Starts the kubelet for every namespace of `cluster`; pod files and logs go to
    /// `<cluster dir>/kubelet`.
    pub async fn start(cluster: &ControlPlane) -> Self {
        Self::start_with(cluster, KubeletOptions::default()).await
    }

    /// [`Kubelet::start`] with options.
    pub async fn start_with(cluster: &ControlPlane, options: KubeletOptions) -> Self {
        // Built (or found) before any pod comes: a first build inside the pod loop would delay
        // every pod by the build's duration.
        let workers = !options.operator_only;
        tokio::task::spawn_blocking(move || {
            if workers {
                crate::worker_binary();
            }
            crate::operator_binary();
        })
        .await
        .expect("the binaries are built");
        let dir = cluster.dir().join("kubelet");
        std::fs::create_dir_all(&dir).expect("kubelet dir");
        let server = cluster.server.clone();
        let ca = cluster.pki.ca_cert.clone();
        let node = Arc::new(Node {
            options,
            client: cluster.admin_client().await,
            dir: dir.clone(),
            pvc_root: dir.join("pvc"),
            kubeconfig_for: Box::new(move |token| kubeconfig(&server, &ca, token)),
        });
        let state = Arc::new(Mutex::new(State {
            subnet: kubelet_subnet(),
            ..State::default()
        }));
        let task = tokio::spawn(run(node, state.clone()));
        Kubelet { state, task, dir }
    }

    /// Where the pods' logs are: `<namespace>-<pod>.log`.
    pub fn log_dir(&self) -> &Path {
        &self.dir
    }

    /// The log of every process of pods whose name starts with `prefix`, concatenated.
    pub fn logs(&self, prefix: &str) -> String {
        let mut out = String::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if name.ends_with(".log") && name.contains(prefix) {
                out.push_str(&format!("==> {name}\n"));
                out.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
            }
        }
        out
    }

    /// The last `lines` lines of every pod's log, by file name.
    pub fn log_tails(&self, lines: usize) -> Vec<(String, String)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut tails: Vec<(String, String)> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                if !name.ends_with(".log") {
                    return None;
                }
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let all: Vec<&str> = text.lines().collect();
                Some((name, all[all.len().saturating_sub(lines)..].join("\n")))
            })
            .collect();
        tails.sort();
        tails
    }

    /// How many processes this kubelet has started (restarts included).
    pub fn started(&self) -> usize {
        self.lock().started
    }

    /// `(namespace, pod, pid)` of every live process.
    pub fn processes(&self) -> Vec<(String, String, u32)> {
        let state = self.lock();
        let mut all: Vec<_> = state
            .pods
            .values()
            .filter_map(|p| Some((p.namespace.clone(), p.name.clone(), p.child.as_ref()?.id())))
            .collect();
        all.sort();
        all
    }

    /// SIGKILLs the process of pod `name` (a crash: the kubelet restarts it).
    pub fn kill(&self, namespace: &str, name: &str) -> bool {
        let mut state = self.lock();
        let Some(pod) = state
            .pods
            .values_mut()
            .find(|p| p.namespace == namespace && p.name == name)
        else {
            return false;
        };
        pod.child.as_mut().is_some_and(|c| c.kill().is_ok())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
        let mut state = self.lock();
        for pod in state.pods.values_mut() {
            if let Some(stub) = pod.stub.take() {
                stub.abort();
            }
            if let Some(mut child) = pod.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn kubeconfig(server: &str, ca: &Path, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority: {}\nusers:\n- name: pod\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: pod\ncurrent-context: test\n",
        ca.display()
    )
}

async fn run(node: Arc<Node>, state: Arc<Mutex<State>>) {
    let pods: Api<Pod> = Api::all(node.client.clone());
    let mut events = watcher(pods, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod))) => {
                    on_pod(&node, &state, pod).await;
                }
                Some(Ok(watcher::Event::Delete(pod))) => on_deleted(&state, &pod),
                Some(Ok(_)) => {}
                Some(Err(error)) => eprintln!("kubelet: pod watch: {error}"),
                None => return,
            },
            _ = tick.tick() => supervise(&node, &state).await,
        }
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

async fn on_pod(node: &Node, state: &Mutex<State>, pod: Pod) {
    let uid = pod.uid().unwrap_or_default();
    if pod.metadata.deletion_timestamp.is_some() {
        on_deleted(state, &pod);
        return;
    }
    let worker = pod.labels().contains_key("app.kubernetes.io/instance")
        && pod
            .labels()
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str)
            == Some("streamjob-operator");
    if node.options.operator_only && worker {
        return;
    }
    let spec = pod.spec.as_ref();
    let ours = spec
        .and_then(|s| s.containers.first())
        .and_then(pod_process::program_of)
        .is_some();
    let unbound = spec.is_some_and(|s| s.node_name.is_none());
    if !ours || !unbound || lock(state).pods.contains_key(&uid) {
        return;
    }
    start(node, state, pod).await;
}

/// Starts `pod`'s process, or parks it while its Service's address is still held by a stopping
/// pod.
async fn start(node: &Node, state: &Mutex<State>, pod: Pod) {
    let uid = pod.uid().unwrap_or_default();
    let namespace = pod.namespace().unwrap_or_default();
    let services = match services_of(&node.client, &namespace).await {
        Ok(services) => services,
        Err(error) => {
            eprintln!("kubelet: listing services of {namespace}: {error}");
            lock(state).waiting.insert(uid, pod);
            return;
        }
    };
    let (ip, addresses) = {
        let mut state = lock(state);
        let mut addresses = ServiceAddresses::new();
        let mut mine = None;
        let mut busy = false;
        for service in &services {
            let host = format!("{}.{namespace}.svc", service.name_any());
            let ip = match state.service_ips.get(&host) {
                Some(ip) => *ip,
                None => {
                    let ip = state.fresh_ip();
                    state.service_ips.insert(host.clone(), ip);
                    ip
                }
            };
            addresses.insert(host, ip);
            if mine.is_none() && selects(service, &pod) {
                match state.holder_of(ip) {
                    None => mine = Some(ip),
                    Some(holder) if holder.kill_at.is_some() => busy = true,
                    Some(_) => {}
                }
            }
        }
        if busy && mine.is_none() {
            state.waiting.insert(uid, pod);
            return;
        }
        let ip = mine.unwrap_or_else(|| state.fresh_ip());
        (ip, addresses)
    };
    if let Some(stub) = unresponsive_jobmanager(node, &pod, ip) {
        let mut state = lock(state);
        state.started += 1;
        state.waiting.remove(&uid);
        state.pods.insert(uid, stub);
        return;
    }
    let launch = pod_process::prepare(
        &node.client,
        &pod,
        ip,
        &node.dir,
        &node.pvc_root,
        &addresses,
        node.kubeconfig_for.as_ref(),
    )
    .await;
    let launch = match launch {
        Ok(launch) => launch,
        Err(error) => {
            // Like a kubelet with a missing Secret or ConfigMap: try again shortly.
            eprintln!("kubelet: {namespace}/{}: {error}", pod.name_any());
            lock(state).waiting.insert(uid, pod);
            return;
        }
    };
    let launch = crash_if_broken(node, &pod, launch);
    let mut process = PodProcess::new(node, &pod, ip, launch);
    spawn(&mut process);
    let mut state = lock(state);
    state.started += 1;
    state.waiting.remove(&uid);
    state.pods.insert(uid, process);
}

/// `launch`, or a process that exits at once if the pod runs the image the options call broken.
fn crash_if_broken(node: &Node, pod: &Pod, launch: Launch) -> Launch {
    let image = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.as_deref());
    if image.is_none() || image != node.options.crashing_image.as_deref() {
        return launch;
    }
    Launch {
        program: PathBuf::from("/bin/false"),
        args: Vec::new(),
        ..launch
    }
}

fn spawn(process: &mut PodProcess) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&process.log)
        .expect("pod log");
    let err = log.try_clone().expect("pod log");
    let child = Command::new(&process.launch.program)
        .args(&process.launch.args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(process.launch.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn();
    match child {
        Ok(child) => process.child = Some(child),
        Err(error) => {
            eprintln!("kubelet: cannot start {}: {error}", process.name);
            process.last_exit = Some(127);
            process.restart_at = Some(Instant::now() + Duration::from_secs(1));
        }
    }
    process.started_at = Timestamp::now();
    process.ready = false;
}

/// A deleted pod: SIGTERM now, SIGKILL after its grace period ([`supervise`]).
fn on_deleted(state: &Mutex<State>, pod: &Pod) {
    let uid = pod.uid().unwrap_or_default();
    let mut state = lock(state);
    state.waiting.remove(&uid);
    let Some(process) = state.pods.get_mut(&uid) else {
        return;
    };
    if process.kill_at.is_some() {
        return;
    }
    process.kill_at = Some(Instant::now() + process.grace);
    process.restart_at = None;
    if let Some(child) = &process.child {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
}

async fn services_of(client: &Client, namespace: &str) -> kube::Result<Vec<Service>> {
    let api: Api<Service> = Api::namespaced(client.clone(), namespace);
    Ok(api.list(&ListParams::default()).await?.items)
}

fn selects(service: &Service, pod: &Pod) -> bool {
    let Some(selector) = service.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return false;
    };
    let labels = pod.labels();
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Reaps exits, restarts crashed processes, kills what outlived its grace period, retries parked
/// pods, and writes the status of pods whose readiness or restarts changed.
async fn supervise(node: &Node, state: &Mutex<State>) {
    let waiting: Vec<Pod> = lock(state).waiting.values().cloned().collect();
    for pod in waiting {
        start(node, state, pod).await;
    }
    let probes: Vec<(String, Option<ProbeTarget>)> = {
        let mut state = lock(state);
        reap(&mut state);
        state
            .pods
            .iter()
            .map(|(uid, p)| {
                let alive = (p.child.is_some() || p.stub.is_some()) && p.kill_at.is_none();
                let target = p
                    .launch
                    .readiness
                    .clone()
                    .map(|(port, path)| (p.ip, port, path));
                (uid.clone(), if alive { target } else { None })
            })
            .collect()
    };
    for (uid, target) in probes {
        let ready = match target {
            Some((ip, port, path)) => probe(ip, port, &path).await,
            None => false,
        };
        let report = {
            let mut state = lock(state);
            let Some(process) = state.pods.get_mut(&uid) else {
                continue;
            };
            if process.kill_at.is_some() {
                continue;
            }
            let running = process.child.is_some() || process.stub.is_some();
            process.ready = ready || (process.launch.readiness.is_none() && running);
            let now = (process.ready, process.restarts);
            (process.reported != Some(now)).then(|| {
                process.reported = Some(now);
                status_patch(process)
            })
        };
        if let Some((namespace, name, patch)) = report {
            let api: Api<Pod> = Api::namespaced(node.client.clone(), &namespace);
            if let Err(error) = api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                eprintln!("kubelet: status of {namespace}/{name}: {error}");
                if let Some(p) = lock(state).pods.get_mut(&uid) {
                    p.reported = None;
                }
            }
        }
    }
}

/// Exits and kills: crashed processes are restarted after a back-off, deleted pods' processes
/// leave once they exited (or were killed at the end of their grace period).
fn reap(state: &mut State) {
    let now = Instant::now();
    let mut gone = Vec::new();
    for (uid, process) in state.pods.iter_mut() {
        if let Some(child) = process.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                process.child = None;
                process.last_exit = Some(status.code().unwrap_or(137));
                if process.kill_at.is_none() {
                    process.restarts += 1;
                    let backoff = Duration::from_millis(500 << process.restarts.min(6));
                    process.restart_at = Some(now + backoff);
                }
            }
        }
        if process.kill_at.is_some() {
            if let Some(stub) = process.stub.take() {
                stub.abort();
            }
        }
        match process.kill_at {
            Some(_) if process.child.is_none() => {
                gone.push(uid.clone());
            }
            Some(deadline) if now >= deadline => {
                if let Some(mut child) = process.child.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                gone.push(uid.clone());
            }
            Some(_) => {}
            None => {
                if process.child.is_none()
                    && process.stub.is_none()
                    && process.restart_at.is_some_and(|t| now >= t)
                {
                    process.restart_at = None;
                    spawn(process);
                }
            }
        }
    }
    for uid in gone {
        state.pods.remove(&uid);
    }
}

async fn probe(ip: Ipv4Addr, port: u16, path: &str) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect((ip, port)).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        let code = std::str::from_utf8(&head[9..12])
            .ok()?
            .parse::<u16>()
            .ok()?;
        Some((200..400).contains(&code))
    };
    tokio::time::timeout(Duration::from_millis(500), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// The pod status a node would report for `process`.
fn status_patch(process: &PodProcess) -> (String, String, serde_json::Value) {
    let ready = if process.ready { "True" } else { "False" };
    let started = process.started_at.to_string();
    let now = Timestamp::now().to_string();
    let running = process.child.is_some() || process.stub.is_some();
    let state = match running {
        true => json!({"running": {"startedAt": started}}),
        false => {
            json!({"waiting": {"reason": if process.restarts >= 3 { "CrashLoopBackOff" } else { "ContainerCreating" }}})
        }
    };
    let last_state = match process.last_exit {
        Some(code) => {
            json!({"terminated": {"exitCode": code, "reason": "Error", "finishedAt": now}})
        }
        None => json!({}),
    };
    let patch = json!({
        "status": {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "podIP": process.ip.to_string(),
            "podIPs": [{"ip": process.ip.to_string()}],
            "startTime": started,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": started},
                {"type": "Initialized", "status": "True", "lastTransitionTime": started},
                {"type": "ContainersReady", "status": ready, "lastTransitionTime": now},
                {"type": "Ready", "status": ready, "lastTransitionTime": now},
            ],
            "containerStatuses": [{
                "name": process.container,
                "image": "streamjob",
                "imageID": "",
                "ready": process.ready,
                "started": running,
                "restartCount": process.restarts,
                "state": state,
                "lastState": last_state,
            }],
        }
    });
    (process.namespace.clone(), process.name.clone(), patch)
}

/// For a jobmanager pod of a StreamJob named in [`KubeletOptions::unresponsive_jobmanagers`]: a
/// listener on the pod's REST port that answers the health probe and lets every other request
/// hang.
fn unresponsive_jobmanager(node: &Node, pod: &Pod, ip: Ipv4Addr) -> Option<PodProcess> {
    let prefix = node.options.unresponsive_jobmanagers.as_deref()?;
    let labels = pod.labels();
    let instance = labels.get("app.kubernetes.io/instance")?;
    let component = labels.get("app.kubernetes.io/component")?;
    if !instance.starts_with(prefix) || component != "jobmanager" {
        return None;
    }
    let container = pod.spec.as_ref()?.containers.first()?;
    let readiness = pod_process::readiness_of(container);
    let (port, _) = readiness.clone()?;
    let listener = std::net::TcpListener::bind((ip, port)).ok()?;
    listener.set_nonblocking(true).ok()?;
    let stub = tokio::spawn(async move {
        let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
            return;
        };
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let Ok(n) = stream.read(&mut buf).await else {
                    return;
                };
                if buf[..n].starts_with(b"GET /healthz") {
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                } else {
                    // Hold the connection open without a word, as a dropping network would.
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
            });
        }
    });
    let mut process = PodProcess::new(
        node,
        pod,
        ip,
        Launch {
            program: PathBuf::new(),
            args: Vec::new(),
            env: Vec::new(),
            readiness,
        },
    );
    process.stub = Some(stub);
    process.grace = Duration::from_secs(1);
    Some(process)
}
