//! Operator benchmark (a command, not a test): `cargo bench -p streamjob-operator --bench operator`.
//!
//! 1. `planner`: planner time per StreamJob (1,000 distinct jobs), against a reference measured in
//!    the same run: serialising the planned children to JSON (what server-side apply sends anyway).
//! 2. `calls`: API calls of single reconciles (new job, no-op, spec.replicas change), counted
//!    exactly by verb and resource by the fake API server the tests use.
//! 3. `scale`: the controller as the binary runs it (watches, caches, concurrency, requeues) over
//!    that fake API server with a latency per call (BENCH_LATENCY_MS, default 20): N StreamJobs
//!    applied at once (BENCH_SCALE_JOBS, default 100,1000,5000), time until all have children and
//!    status, reconciles/s, CPU; then a steady window (BENCH_STEADY_S, default 30) with API
//!    calls/s, and the time a spec.replicas change takes to reach its Deployment under that load.
//! 4. `rss`: RSS of the real `streamjob-operator run` binary against the same fake API server
//!    behind an HTTP listener: idle (no StreamJobs) and with 1,000 StreamJobs cached and reconciled.
//!
//! Environment: BENCH_RUNS (default 5), BENCH_JOBS (default 1000), BENCH_ONLY
//! (planner|calls|scale|rss), BENCH_CONCURRENCY (default 8, the binary's default).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;
use streamjob_operator::crd::StreamJob;
use streamjob_operator::metrics::Metrics;
use streamjob_operator::planner::{self, Observed, PlanInput, FINALIZER};
use streamjob_operator::reconciler::{self, Context};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn job(index: usize, namespace: &str) -> StreamJob {
    let text = include_str!("../samples/full.yaml");
    let mut job: StreamJob = serde_yaml::from_str(text).expect("sample parses");
    job.metadata.name = Some(format!("trace-{index}"));
    job.metadata.namespace = Some(namespace.into());
    job.metadata.uid = Some(format!("00000000-0000-4000-8000-{index:012}"));
    job.metadata.generation = Some(1);
    job.metadata.resource_version = Some(format!("{}", index + 1));
    job.metadata.finalizers = Some(vec![FINALIZER.into()]);
    job.spec.replicas = (index % 8) as i32 + 1;
    job
}

fn bench_planner(jobs: &[StreamJob], runs: usize) {
    let now = Timestamp::now();
    let observed = Observed::default();
    let mut plan_us = Vec::new();
    let mut reference_us = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let mut plans = Vec::with_capacity(jobs.len());
        for job in jobs {
            plans.push(black_box(
                planner::plan(PlanInput {
                    job,
                    observed: &observed,
                    jobmanager: None,
                    now,
                })
                .expect("plans"),
            ));
        }
        plan_us.push(started.elapsed().as_secs_f64() * 1e6 / jobs.len() as f64);
        let started = Instant::now();
        for plan in &plans {
            let c = &plan.children;
            black_box(serde_json::to_vec(&c.config_map).expect("json"));
            black_box(serde_json::to_vec(&c.savepoint_pvc).expect("json"));
            black_box(serde_json::to_vec(&c.jobmanager_service).expect("json"));
            black_box(serde_json::to_vec(&c.jobmanager).expect("json"));
            black_box(serde_json::to_vec(&c.taskmanager).expect("json"));
        }
        reference_us.push(started.elapsed().as_secs_f64() * 1e6 / jobs.len() as f64);
    }
    let (plan, reference) = (median(plan_us), median(reference_us));
    println!(
        "planner: {plan:.1} µs per StreamJob (median of {runs} runs over {} jobs)",
        jobs.len()
    );
    println!(
        "  reference, JSON-serialising the planned children: {reference:.1} µs per job (planner = {:.2}x reference)",
        plan / reference
    );
}

fn env_duration_ms(name: &str, default_ms: u64) -> Duration {
    Duration::from_millis(env_usize(name, default_ms as usize) as u64)
}

/// User + system CPU time of this process.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which ends with ')'): utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

fn format_counts(counts: &support::fake_api::CallCounts, per: f64) -> String {
    let mut by_verb: BTreeMap<&str, u64> = BTreeMap::new();
    for ((verb, _), n) in counts {
        *by_verb.entry(verb.as_str()).or_insert(0) += n;
    }
    if by_verb.is_empty() {
        return "none".into();
    }
    by_verb
        .iter()
        .map(|(verb, n)| format!("{verb} {:.2}", *n as f64 / per))
        .collect::<Vec<_>>()
        .join(", ")
}

fn format_detail(counts: &support::fake_api::CallCounts) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    counts
        .iter()
        .map(|((verb, resource), n)| format!("{verb} {resource} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// API calls of single reconciles, counted exactly by the fake API server: a new job (finalizer,
/// then children and status), a no-op, a spec.replicas change.
fn bench_calls_per_reconcile() {
    use support::fake_api::FakeApi;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (client, api) = FakeApi::start();
        let ctx = Arc::new(
            Context::new(client.clone(), Arc::new(Metrics::default())).with_jobmanager(
                streamjob_operator::jobmanager_client::JobManagerClient::new(
                    streamjob_operator::jobmanager_client::BaseUrl::Fixed(
                        "http://127.0.0.1:9".into(),
                    ),
                    Duration::from_millis(500),
                ),
            ),
        );
        support::start_caches(&ctx, &client).await;
        let path = "/apis/streaming.austin.dev/v1alpha1/namespaces/default/streamjobs/trace";
        let mut job = support::sample("minimal.yaml");
        job.metadata.finalizers = None;
        api.put(path, serde_json::to_value(&job).expect("json"));
        let stored = || -> Arc<StreamJob> {
            Arc::new(serde_json::from_value(api.get(path).expect("stored")).expect("parses"))
        };
        let step = |label: &'static str| {
            let api = api.clone();
            let ctx = ctx.clone();
            let job = stored();
            async move {
                support::settle(&ctx, &api).await;
                api.clear_requests();
                reconciler::reconcile(job, ctx).await.expect("reconciles");
                println!("  {label}: {}", format_detail(&api.counts()));
            }
        };
        println!("API calls per reconcile (exact counts, fake API server):");
        step("new job, 1st reconcile (finalizer)").await;
        step("new job, 2nd reconcile (children, status, event)").await;
        step("3rd reconcile (its own children now observed: jobmanager expected, unreachable)")
            .await;
        step("no-op (nothing changed)").await;
        api.modify(path, |job| {
            job["spec"]["replicas"] = json!(3);
            job["metadata"]["generation"] = json!(2);
        });
        step("spec.replicas changed").await;
        step("no-op after the change").await;
    });
}

/// The controller as the binary runs it, over the fake API server with a latency per call:
/// N StreamJobs applied at once, time until all have children and status, then a steady window.
fn bench_scale() {
    let latency = env_duration_ms("BENCH_LATENCY_MS", 20);
    let steady_for = Duration::from_secs(env_usize("BENCH_STEADY_S", 30) as u64);
    let concurrency = env_usize("BENCH_CONCURRENCY", 8) as u16;
    let sizes: Vec<usize> = std::env::var("BENCH_SCALE_JOBS")
        .unwrap_or_else(|_| "100,1000,5000".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    println!(
        "scale (controller over the fake API server, {latency:?} per call, concurrency {concurrency}, jobmanagers unreachable):"
    );
    for count in sizes {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(scale_run(count, latency, steady_for, concurrency));
    }
}

async fn scale_run(count: usize, latency: Duration, steady_for: Duration, concurrency: u16) {
    use support::scale::{self, Harness};
    let (client, api) = support::fake_api::FakeApi::start();
    api.set_recording(false);
    api.set_latency(latency);
    let rss_before = rss_kib(std::process::id()).unwrap_or(0);
    let harness = Harness::start(api.clone(), client, concurrency).await;
    let names: Vec<String> = (0..count).map(|i| format!("job-{i}")).collect();
    let cpu_start = cpu_time();
    let started = Instant::now();
    for i in 0..count {
        harness.create(&scale::new_job(i));
    }
    let Some(converged) = harness.wait_ready(&names, Duration::from_secs(900)).await else {
        println!("  N={count}: did not converge within 900 s");
        harness.stop().await;
        return;
    };
    let converge_cpu = cpu_time().saturating_sub(cpu_start);
    let converge_counts = api.counts();
    let converge_reconciles = harness.reconciles();
    let _ = started;
    // Follow-ups of the operator's own writes, then the steady window.
    tokio::time::sleep(Duration::from_secs(3)).await;
    api.clear_requests();
    let reconciles_before = harness.reconciles();
    let cpu_before = cpu_time();
    tokio::time::sleep(steady_for).await;
    let steady_cpu = cpu_time().saturating_sub(cpu_before);
    let steady_counts = api.counts();
    let steady_calls: u64 = steady_counts.values().sum();
    let steady_reconciles = harness.reconciles() - reconciles_before;
    // A change under that load.
    api.modify(&scale::job_path("job-7"), |job| {
        job["spec"]["replicas"] = json!(3);
        job["metadata"]["generation"] = json!(2);
    });
    let rescale = harness
        .wait_for(
            &scale::taskmanager_path("job-7"),
            Duration::from_secs(120),
            |d| d["spec"]["replicas"] == 3,
        )
        .await;
    let rss_after = rss_kib(std::process::id()).unwrap_or(0);
    harness.stop().await;
    let secs = steady_for.as_secs_f64();
    println!(
        "  N={count}: all with children and status after {:.1} s; {:.0} reconciles/s ({converge_reconciles} reconciles), CPU {:.0} % of one core; calls per job: {}",
        converged.as_secs_f64(),
        converge_reconciles as f64 / converged.as_secs_f64(),
        100.0 * converge_cpu.as_secs_f64() / converged.as_secs_f64(),
        format_counts(&converge_counts, count as f64),
    );
    println!(
        "         steady {secs:.0} s: {:.2} API calls/s ({}), {:.1} reconciles/s, CPU {:.1} % of one core; spec.replicas → Deployment {}; process RSS (operator + fake API server) {:.0} MiB (+{:.0} MiB)",
        steady_calls as f64 / secs,
        format_detail(&steady_counts),
        steady_reconciles as f64 / secs,
        100.0 * steady_cpu.as_secs_f64() / secs,
        rescale.map_or("not within 120 s".into(), |d| format!("{:.2} s", d.as_secs_f64())),
        rss_after as f64 / 1024.0,
        rss_after.saturating_sub(rss_before) as f64 / 1024.0,
    );
}
// ------------------------------------------------------------------------------------------------
// A fake HTTP API server for the real binary.
// ------------------------------------------------------------------------------------------------

/// The fake API server of the tests behind a real HTTP listener, for the real binary.
async fn serve(State(api): State<support::fake_api::FakeApi>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, 16 << 20)
        .await
        .unwrap_or_default();
    let request = http::Request::from_parts(parts, kube::client::Body::from(bytes.to_vec()));
    let (parts, body) = api.answer(request).await.into_parts();
    Response::from_parts(parts, Body::new(body))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the real binary against a fake API server holding `count` StreamJobs; returns RSS (KiB)
/// once every job's status was written (or after a settle time when there are none).
fn rss_of_operator(runtime: &tokio::runtime::Runtime, count: usize) -> Option<(f64, f64)> {
    let api = support::fake_api::FakeApi::default();
    api.set_recording(false);
    let names: Vec<String> = (0..count)
        .map(|i| {
            let job = job(i, "bench");
            let name = job.metadata.name.clone().unwrap_or_default();
            api.put(
                &format!("/apis/streaming.austin.dev/v1alpha1/namespaces/bench/streamjobs/{name}"),
                serde_json::to_value(&job).expect("json"),
            );
            name
        })
        .collect();
    let ready = |name: &String| {
        let job = api.get(&format!(
            "/apis/streaming.austin.dev/v1alpha1/namespaces/bench/streamjobs/{name}"
        ));
        job.is_some_and(|j| j["status"]["phase"].is_string())
            && api
                .get(&format!(
                    "/apis/apps/v1/namespaces/bench/deployments/{name}-taskmanager"
                ))
                .is_some()
    };
    let api_port = free_port();
    let app = axum::Router::new().fallback(serve).with_state(api.clone());
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", api_port)))
        .expect("bind");
    let handle = runtime.spawn(async move { axum::serve(listener, app).await });

    let dir =
        std::env::temp_dir().join(format!("streamjob-bench-{}-{api_port}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{api_port}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\nusers:\n- name: fake\n  user:\n    token: bench\n"
        ),
    )
    .ok()?;
    let http: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let child = Command::new(env!("CARGO_BIN_EXE_streamjob-operator"))
        .args([
            "run",
            "--no-leader-election",
            "--http-bind",
            &http.to_string(),
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let operator = Operator(child);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(600);
    let mut done_after = None;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        if names.iter().all(ready) && (count > 0 || started.elapsed() > Duration::from_secs(3)) {
            done_after = Some(started.elapsed().as_secs_f64());
            break;
        }
    }
    // Let allocations settle, then sample.
    std::thread::sleep(Duration::from_secs(1));
    let rss = rss_kib(operator.0.id());
    drop(operator);
    handle.abort();
    let _ = std::fs::remove_dir_all(&dir);
    Some((rss? as f64 / 1024.0, done_after?))
}

fn bench_rss(count: usize, runs: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mut idle = Vec::new();
    let mut loaded = Vec::new();
    let mut first_pass = Vec::new();
    for _ in 0..runs.min(3) {
        if let Some((rss, _)) = rss_of_operator(&runtime, 0) {
            idle.push(rss);
        }
        if let Some((rss, seconds)) = rss_of_operator(&runtime, count) {
            loaded.push(rss);
            first_pass.push(seconds);
        }
    }
    if idle.is_empty() || loaded.is_empty() {
        println!("operator RSS: could not measure (binary did not reconcile against the fake API server)");
        return;
    }
    println!(
        "operator RSS (real binary, fake HTTP API server): idle {:.1} MiB; with {count} StreamJobs cached and reconciled {:.1} MiB (median of {} runs); first reconcile of all {count} took {:.1} s from process start",
        median(idle.clone()),
        median(loaded.clone()),
        loaded.len(),
        median(first_pass)
    );
}

fn main() {
    let runs = env_usize("BENCH_RUNS", 5);
    let count = env_usize("BENCH_JOBS", 1000);
    let jobs: Vec<StreamJob> = (0..count).map(|i| job(i, "bench")).collect();
    println!("streamjob-operator benchmark: {count} StreamJobs (operator/samples/full.yaml, varied), {runs} runs");
    // BENCH_ONLY=planner|calls|scale|rss runs one section.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "planner" {
        bench_planner(&jobs, runs);
    }
    if only.is_empty() || only == "calls" {
        bench_calls_per_reconcile();
    }
    if only.is_empty() || only == "scale" {
        bench_scale();
    }
    if only.is_empty() || only == "rss" {
        bench_rss(count, runs);
    }
}
