//! The operator at scale on a real control plane (a benchmark command, not a test):
//!
//! ```sh
//! cargo run --release -p streamjob-tests --bin bench-operator            # 1,000 then 5,000 jobs
//! BENCH_JOBS=1000 BENCH_STEADY_S=60 cargo run --release -p streamjob-tests --bin bench-operator
//! ```
//!
//! Per size N: a fresh kube-apiserver + etcd + kube-controller-manager, the chart installed with
//! Helm's SDK, the operator run by the process kubelet as the chart's ServiceAccount (the jobs'
//! own pods stay Pending: this measures the operator, not the workers). Then:
//! 1. N StreamJobs (the `full.yaml` sample, distinct names) created at once, 32 creates in
//!    flight; the time until every one has a status, and until every one has both Deployments;
//! 2. the operator's API calls per job while converging, by verb and resource (audit log);
//! 3. a steady window (BENCH_STEADY_S, default 60): the operator's calls/s, Lease included;
//! 4. the operator's RSS and heap idle, at N jobs, 60 s after all N were deleted and the garbage
//!    collector removed their children, and 60 s after their kept savepoint PVCs were deleted
//!    too (the sample keeps them on delete, and the operator caches them).
//!
//! The reference measured in the same run is the idle operator (RSS, calls/s with no jobs).
//! Knobs:
//! - `BENCH_CONCURRENCY=N` passes `--concurrency N` to the operator (chart value `extraArgs`);
//! - `BENCH_SETTLE_WAIT_S` (default 1200) bounds the wait before the steady window until the
//!   namespace is settled: every job Degraded, and for 60 s no job's status and no pod changed
//!   (a steady state); 0 skips it. That wait is kube-controller-manager's pace: at its default
//!   20 QPS the ~4,800 pods of 1,000 jobs take over ten minutes to appear, and each new pod
//!   changes its job's status (its counts);
//! - `BENCH_KCM_QPS=N` runs kube-controller-manager with `--kube-api-qps N` (burst 2N), as
//!   large clusters do, so that wait ends sooner (it also loads the API server more while the
//!   operator converges);
//! - `BENCH_MALLOC_CONF=…` sets the operator's jemalloc options (`_RJEM_MALLOC_CONF`, through
//!   the chart's `extraEnv`), to compare allocator settings;
//! - `BENCH_HEAP_REPORT=FILE` writes the operator's `/debug/heap` (jemalloc's report by size
//!   class) to FILE 60 s after the garbage collector is done: which objects outlive the jobs;
//! - `BENCH_APISERVER_PROFILE=FILE` writes kube-apiserver's CPU profile of the 40 s from 2 s
//!   after the first create to FILE (read it with `go tool pprof -top -cum FILE`): where the API
//!   server's CPU goes while the operator converges;
//! - `BENCH_GC_WAIT_S` (default 600) bounds the wait, after the StreamJobs are gone, until the
//!   garbage collector has deleted their Deployments and pods (the operator's caches empty out
//!   only then, so "after deleting all" is measured once nothing of theirs is left).
//!
//! Each phase's figures also go to stderr as soon as they are measured, so an interrupted run of
//! 5,000 jobs still shows what it got to.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, reflector, Store};
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::Value;
use streamjob_tests::controlplane::audit;
use streamjob_tests::controlplane::cluster::{test_values, OperatorCluster};
use streamjob_tests::controlplane::kubelet::KubeletOptions;
use streamjob_tests::controlplane::{helm, ControlPlane, PlaneOptions, ADMIN_TOKEN};

const NAMESPACE: &str = "bench";

fn env_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

fn env_secs(name: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU seconds (user + system) a process has used: `/proc/PID/stat` fields 14 and 15, in clock
/// ticks of 1/100 s (Linux's USER_HZ).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds of the processes that share the machine during a run: the control plane's,
/// the operator's, and the machine's total busy time (`/proc/stat`, every core).
fn cpu_snapshot(cluster: &OperatorCluster, operator: u32) -> BTreeMap<&'static str, f64> {
    let mut snapshot: BTreeMap<&'static str, f64> = cluster
        .plane
        .processes()
        .into_iter()
        .map(|(name, pid)| (name, cpu_seconds(pid)))
        .collect();
    snapshot.insert("operator", cpu_seconds(operator));
    snapshot.insert("bench (this process)", cpu_seconds(std::process::id()));
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let busy: f64 = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .enumerate()
        // user nice system (idle iowait excluded) irq softirq steal
        .filter(|(i, _)| ![3, 4].contains(i) && *i < 8)
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum();
    snapshot.insert("machine (all processes)", busy / 100.0);
    snapshot
}

fn print_cpu(
    before: &BTreeMap<&'static str, f64>,
    after: &BTreeMap<&'static str, f64>,
    wall: Duration,
) {
    println!(
        "  CPU while converging ({:.1} s wall, 2 cores = {:.1} CPU-s):",
        wall.as_secs_f64(),
        2.0 * wall.as_secs_f64()
    );
    for (name, end) in after {
        let used = end - before.get(name).copied().unwrap_or(0.0);
        println!(
            "    {name:<26} {used:>7.1} CPU-s  ({:.0} % of one core)",
            100.0 * used / wall.as_secs_f64()
        );
    }
}

/// Every request of the convergence, per user: the operator's share of the API server's work.
fn print_calls_by_user(calls: &[audit::AuditEvent], jobs: usize) {
    let mut users: BTreeMap<&str, usize> = BTreeMap::new();
    for call in calls {
        *users.entry(call.user.username.as_str()).or_default() += 1;
    }
    let mut users: Vec<_> = users.into_iter().collect();
    users.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    println!(
        "  API requests while converging, all users ({} in all, {:.1} per job):",
        calls.len(),
        calls.len() as f64 / jobs as f64
    );
    for (user, n) in users.into_iter().take(8) {
        println!(
            "    {user:<60} {n:>7} ({:.2} per job)",
            n as f64 / jobs as f64
        );
    }
}

/// The operator's heap as `allocated / active / metadata / resident` MiB, from its `heap_bytes`
/// metrics (`-` when it does not export one: an operator built without jemalloc, or before the
/// breakdown).
async fn heap_mib(cluster: &OperatorCluster) -> String {
    let Some(address) = cluster.operator_http().await else {
        return "-".into();
    };
    let text = streamjob_tests::http_get(&address, "/metrics").unwrap_or_default();
    let value = |state: &str| {
        let series = format!("streamjob_operator_heap_bytes{{state=\"{state}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or("-".to_string(), |b| format!("{:.1}", b / 1048576.0))
    };
    format!(
        "{} / {} / {} / {}",
        value("allocated"),
        value("active"),
        value("metadata"),
        value("resident")
    )
}

fn streamjob(index: usize) -> Value {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../operator/samples/full.yaml");
    let text = std::fs::read_to_string(sample).expect("sample");
    let mut job: Value = serde_yaml::from_str(&text).expect("sample parses");
    job["metadata"] = serde_json::json!({"name": format!("trace-{index}"), "namespace": NAMESPACE});
    job
}

async fn operator_pid(cluster: &OperatorCluster) -> u32 {
    for _ in 0..60 {
        let running = cluster
            .kubelet
            .processes()
            .into_iter()
            .find(|(ns, _, _)| ns == "streamjob-system")
            .map(|(_, _, pid)| pid);
        if let Some(pid) = running {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("the operator does not run:\n{}", cluster.operator_logs())
}

fn operator_calls(cluster: &OperatorCluster) -> Vec<audit::AuditEvent> {
    cluster.operator_requests()
}

fn per_job(calls: &[audit::AuditEvent], jobs: usize) -> BTreeMap<String, f64> {
    let mut counts = BTreeMap::new();
    for call in calls.iter().filter(|c| !c.call().contains("leases")) {
        *counts.entry(call.call()).or_insert(0.0) += 1.0;
    }
    counts.values_mut().for_each(|v| *v /= jobs as f64);
    counts
}

/// Polls `done` (which reads local mirrors, no API call) every 200 ms until it says finished or
/// `deadline` passes.
async fn wait_all(
    what: &str,
    deadline: Duration,
    mut done: impl FnMut() -> (usize, bool),
) -> Duration {
    let started = Instant::now();
    loop {
        let (count, finished) = done();
        if finished {
            return started.elapsed();
        }
        if deadline.is_zero() {
            // A wait of 0 is skipped (its knob says so), not a wait that ran out.
            println!("  {what}: not waited for ({count} so far)");
            return Duration::ZERO;
        }
        if started.elapsed() > deadline {
            println!("  {what}: only {count} after {:?}", started.elapsed());
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How long a wait took after the step before it, for the summary; "not waited for" when its
/// knob was 0 (the summary printed "0.0 s later" for a wait that never ran).
fn waited(deadline: Duration, took: Duration) -> String {
    if deadline.is_zero() {
        "not waited for".to_string()
    } else {
        format!("{:.1} s later", took.as_secs_f64())
    }
}

/// What the benchmark watches, each mirrored locally by a watch (one list, then events): the
/// waits read these instead of listing. A list of every StreamJob every 2 s was 15 % of the API
/// server's CPU in a profile of a 1,000-job run (50 lists, each decoded from etcd): load the
/// measured operator then competed with, and no real cluster's.
struct Mirrors {
    jobs: Store<DynamicObject>,
    deployments: Store<PartialObjectMeta<Deployment>>,
    pods: Store<PartialObjectMeta<Pod>>,
}

fn mirrored<K>(
    writer: reflector::store::Writer<K>,
    stream: impl futures::Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
) -> Store<K>
where
    K: kube::Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    let store = writer.as_reader();
    tokio::spawn(
        reflector(writer, stream)
            .default_backoff()
            .for_each(|_| futures::future::ready(())),
    );
    store
}

impl Mirrors {
    async fn start(client: &kube::Client, jobs: &ApiResource) -> Self {
        let config = watcher::Config::default;
        let jobs_api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NAMESPACE, jobs);
        // Metadata only: the waits count these, and the pods' specs would be most of the bytes.
        let deployments: Api<PartialObjectMeta<Deployment>> =
            Api::namespaced(client.clone(), NAMESPACE);
        let pods: Api<PartialObjectMeta<Pod>> = Api::namespaced(client.clone(), NAMESPACE);
        let mirrors = Mirrors {
            jobs: mirrored(
                reflector::store::Writer::new(jobs.clone()),
                watcher(jobs_api, config()),
            ),
            deployments: mirrored(Default::default(), watcher(deployments, config())),
            pods: mirrored(Default::default(), watcher(pods, config())),
        };
        let ready = "a watch of the benchmark's namespace";
        mirrors.jobs.wait_until_ready().await.expect(ready);
        mirrors.deployments.wait_until_ready().await.expect(ready);
        mirrors.pods.wait_until_ready().await.expect(ready);
        mirrors
    }

    /// A test of "settled": every one of `jobs` Degraded, and neither a job nor the pod count
    /// changed for `quiet`. It counts the jobs Degraded.
    fn settled(&self, jobs: usize, quiet: Duration) -> impl FnMut() -> (usize, bool) + '_ {
        let mut last = (String::new(), usize::MAX);
        let mut since = Instant::now();
        move || {
            let versions: String = self
                .jobs
                .state()
                .iter()
                .filter_map(|job| job.metadata.resource_version.clone())
                .collect();
            let now = (versions, self.pods.len());
            if now != last {
                last = now;
                since = Instant::now();
            }
            let degraded = self.jobs_where(|job| {
                job["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Degraded" && c["status"] == "True")
                })
            });
            (degraded, degraded == jobs && since.elapsed() >= quiet)
        }
    }

    fn jobs_where(&self, test: impl Fn(&Value) -> bool) -> usize {
        self.jobs
            .state()
            .iter()
            .filter(|job| test(&job.data))
            .count()
    }

    /// The jobs' Deployments and pods that still exist (the garbage collector's progress).
    fn children_left(&self) -> usize {
        self.deployments.len() + self.pods.len()
    }
}

/// With `BENCH_APISERVER_PROFILE=FILE`: fetches kube-apiserver's CPU profile of the 40 s from
/// 2 s after now (the creates start now) into FILE, as the admin.
fn profile_apiserver(cluster: &OperatorCluster) -> Option<tokio::task::JoinHandle<()>> {
    let file = std::env::var("BENCH_APISERVER_PROFILE").ok()?;
    let kubeconfig = cluster.plane.write_kubeconfig("admin", ADMIN_TOKEN);
    Some(tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_secs(2));
        let output = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["get", "--raw", "/debug/pprof/profile?seconds=40"])
            .output();
        match output {
            Ok(output) if output.status.success() => match std::fs::write(&file, output.stdout) {
                Ok(()) => eprintln!("[bench] kube-apiserver's CPU profile written to {file}"),
                Err(error) => eprintln!("[bench] cannot write {file}: {error}"),
            },
            Ok(output) => eprintln!(
                "[bench] no kube-apiserver profile: {}",
                String::from_utf8_lossy(&output.stderr)
            ),
            Err(error) => eprintln!("[bench] no kube-apiserver profile: kubectl: {error}"),
        }
    }))
}

async fn run(jobs: usize, steady: Duration) {
    let options = KubeletOptions {
        operator_only: true,
        ..KubeletOptions::default()
    };
    let mut values = test_values();
    // The operator's own log level at info: debug lines per reconcile are not what is measured.
    values["logging"]["level"] = serde_json::json!("info,kube=warn");
    if let Ok(concurrency) = std::env::var("BENCH_CONCURRENCY") {
        values["extraArgs"] = serde_json::json!(["--concurrency", concurrency]);
    }
    if let Ok(conf) = std::env::var("BENCH_MALLOC_CONF") {
        values["extraEnv"] = serde_json::json!([{"name": "_RJEM_MALLOC_CONF", "value": conf}]);
    }
    let plane = ControlPlane::start_with(PlaneOptions {
        controller_manager_qps: std::env::var("BENCH_KCM_QPS")
            .ok()
            .and_then(|v| v.parse().ok()),
    })
    .await;
    let cluster = OperatorCluster::on(plane, &helm::chart_dir(), values, options).await;
    cluster.kubectl(&["create", "namespace", NAMESPACE]);
    // The sample's pods run as this ServiceAccount, with this PriorityClass: without them the
    // ReplicaSet controller's pod creates are refused and retried, load a real cluster does not
    // have (and the jobs fail with RolloutFailed).
    cluster.kubectl(&["create", "serviceaccount", "trace-eu", "-n", NAMESPACE]);
    cluster.kubectl(&["create", "priorityclass", "streaming", "--value=1000"]);
    let pid = operator_pid(&cluster).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_rss = rss_mib(pid);
    let before = operator_calls(&cluster).len();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let idle_rate = (operator_calls(&cluster).len() - before) as f64 / 20.0;
    let idle_heap = heap_mib(&cluster).await;

    let client = cluster.client.clone();
    let resource = ApiResource {
        group: "streaming.austin.dev".into(),
        version: "v1alpha1".into(),
        api_version: "streaming.austin.dev/v1alpha1".into(),
        kind: "StreamJob".into(),
        plural: "streamjobs".into(),
    };
    let jobs_api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NAMESPACE, &resource);
    let mirrors = Mirrors::start(&client, &resource).await;
    let start_calls = operator_calls(&cluster).len();
    let start_all = audit::read(&cluster.plane.audit_log).len();
    let cpu_before = cpu_snapshot(&cluster, pid);
    let profile = profile_apiserver(&cluster);
    let created = Instant::now();
    futures::stream::iter(0..jobs)
        .map(|i| {
            let api = jobs_api.clone();
            async move {
                let object: DynamicObject =
                    serde_json::from_value(streamjob(i)).expect("a StreamJob");
                api.create(&PostParams::default(), &object)
                    .await
                    .expect("created");
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let create_time = created.elapsed();
    // 600 s, plus 0.3 s per job beyond 1,000 (1,800 s at 5,000): 1,000 jobs took 170-240 s to
    // get a status on a busy 2-core machine, so a 5,000-job run is still measured to its end.
    let patience =
        Duration::from_secs(600) + Duration::from_millis(300) * jobs.saturating_sub(1000) as u32;
    let status_time = wait_all("status", patience, || {
        let with = mirrors.jobs_where(|job| job["status"]["phase"].is_string());
        (with, with == jobs)
    })
    .await;
    let children_time = wait_all("deployments", patience, || {
        let n = mirrors.deployments.len();
        (n, n == 2 * jobs)
    })
    .await;
    let converge_wall = created.elapsed();
    if let Some(profile) = profile {
        let _ = profile.await;
    }
    let cpu_after = cpu_snapshot(&cluster, pid);
    let converge_calls: Vec<_> = operator_calls(&cluster).split_off(start_calls);
    let all_calls: Vec<_> = audit::read(&cluster.plane.audit_log).split_off(start_all);
    let converged_rss = rss_mib(pid);
    eprintln!(
        "[bench] {jobs} jobs: every status after {:.1} s, RSS converged {converged_rss:.1} MiB, heap {}",
        (status_time + create_time).as_secs_f64(),
        heap_mib(&cluster).await
    );

    // The steady window starts once the namespace is settled: every job has made its last
    // expected transition (its pods stay Pending, so it turns Degraded: PodsUnavailable, then
    // RolloutFailed once the sample's progress deadline has passed), and nothing has changed for
    // a minute (kube-controller-manager has made every pod).
    let settle_wait = env_secs("BENCH_SETTLE_WAIT_S", 1200);
    let settle_time = wait_all(
        "settled",
        settle_wait,
        mirrors.settled(jobs, Duration::from_secs(60)),
    )
    .await;
    let settled_pods = mirrors.pods.len();

    tokio::time::sleep(Duration::from_secs(10)).await;
    let before = operator_calls(&cluster);
    tokio::time::sleep(steady).await;
    let after = operator_calls(&cluster);
    let window: Vec<_> = after[before.len()..].to_vec();
    let steady_rate = window.len() as f64 / steady.as_secs_f64();
    let steady_leases = window
        .iter()
        .filter(|c| c.call().contains("leases"))
        .count();
    // What the steady window held besides the Lease, by call: the watches' renewals (each
    // about every 5 minutes), and any job's late transition.
    let mut steady_others: BTreeMap<String, usize> = BTreeMap::new();
    for call in window.iter().map(|c| c.call()) {
        if !call.contains("leases") {
            *steady_others.entry(call).or_default() += 1;
        }
    }
    let steady_rss = rss_mib(pid);

    let converged_heap = heap_mib(&cluster).await;
    eprintln!(
        "[bench] steady: {steady_rate:.2} calls/s, RSS {steady_rss:.1} MiB, heap {converged_heap}"
    );
    let deleting = Instant::now();
    // One delete per job, 32 in flight, as they were created (a single delete-collection of
    // 1,000 finalized objects outlives the API server's request timeout).
    futures::stream::iter(0..jobs)
        .map(|i| {
            let api = jobs_api.clone();
            async move {
                let _ = api
                    .delete(&format!("trace-{i}"), &DeleteParams::default())
                    .await;
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let delete_call = deleting.elapsed();
    let delete_time = delete_call
        + wait_all("deletion", patience, || {
            let n = mirrors.jobs.len();
            (n, n == 0)
        })
        .await;
    let gc_wait = env_secs("BENCH_GC_WAIT_S", 600);
    let gc_time = wait_all("children gone", gc_wait, || {
        let left = mirrors.children_left();
        (left, left == 0)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let released_rss = rss_mib(pid);
    let released_heap = heap_mib(&cluster).await;
    if let (Ok(path), Some(address)) = (
        std::env::var("BENCH_HEAP_REPORT"),
        cluster.operator_http().await,
    ) {
        let report = streamjob_tests::http_get(&address, "/debug/heap").unwrap_or_default();
        let _ = std::fs::write(&path, report);
    }
    // The sample keeps its savepoint PVC on delete (`onDelete.pvc: keep`): the N PVCs stay in
    // the namespace, and in the operator's cache (a StreamJob re-created with the same name
    // restores from its PVC). So "back near idle" is read once more after a user's clean-up of
    // them. Not with `BENCH_GC_WAIT_S=0`: a PVC goes only once its pods are gone
    // (pvc-protection), and without that wait they may not be.
    let clean = if gc_wait.is_zero() {
        None
    } else {
        let pvcs_deleting = Instant::now();
        cluster.kubectl(&["delete", "pvc", "--all", "-n", NAMESPACE, "--wait=true"]);
        let pvcs_time = pvcs_deleting.elapsed();
        tokio::time::sleep(Duration::from_secs(60)).await;
        Some((pvcs_time, rss_mib(pid), heap_mib(&cluster).await))
    };

    println!("== {jobs} StreamJobs on a real API server");
    println!(
        "  created in {:.1} s (32 in flight)",
        create_time.as_secs_f64()
    );
    println!(
        "  every job has a status after {:.1} s (from the first create)",
        (status_time + create_time).as_secs_f64()
    );
    println!(
        "  every job has both Deployments after {:.1} s more",
        children_time.as_secs_f64()
    );
    print_cpu(&cpu_before, &cpu_after, converge_wall);
    print_calls_by_user(&all_calls, jobs);
    println!(
        "  settled (every job Degraded, its pods Pending; no change for 60 s) {}, {} pods",
        waited(settle_wait, settle_time),
        settled_pods
    );
    let calls = per_job(&converge_calls, jobs);
    let total: f64 = calls.values().sum();
    println!("  operator calls per job while converging: {total:.2}");
    for (call, n) in &calls {
        println!("    {call:<40} {n:.2}");
    }
    println!("  steady: {steady_rate:.2} calls/s over {}s ({} of {} Lease calls); idle reference {idle_rate:.2} calls/s", steady.as_secs(), steady_leases, window.len());
    for (call, count) in &steady_others {
        println!("    besides the Lease: {call} x{count}");
    }
    println!("  RSS MiB: idle {idle_rss:.1}, converged {converged_rss:.1}, steady {steady_rss:.1}, 60 s after deleting all (deleted in {:.1} s, of which the delete calls {:.1} s; children gone {}) {released_rss:.1}", delete_time.as_secs_f64(), delete_call.as_secs_f64(), waited(gc_wait, gc_time));
    println!("  heap MiB (allocated / active / metadata / resident, jemalloc's figures): idle {idle_heap}, steady {converged_heap}, 60 s after deleting all {released_heap}");
    match clean {
        Some((pvcs_time, clean_rss, clean_heap)) => println!("  60 s after deleting the {jobs} kept savepoint PVCs too ({:.1} s): RSS {clean_rss:.1} MiB, heap {clean_heap}", pvcs_time.as_secs_f64()),
        None => println!("  the kept savepoint PVCs were not deleted (BENCH_GC_WAIT_S=0)"),
    }
}

#[tokio::main]
async fn main() {
    let steady = Duration::from_secs(
        std::env::var("BENCH_STEADY_S")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60),
    );
    for jobs in env_list("BENCH_JOBS", "1000,5000") {
        run(jobs, steady).await;
    }
}
