//! Operator benchmark (a command, not a test): `cargo bench -p streamjob-operator --bench operator`.
//!
//! 1. Planner time per StreamJob (1,000 distinct jobs), against a reference measured in the same
//!    run: serialising the planned children to JSON (what server-side apply sends anyway).
//! 2. Reconcile-loop overhead for 1,000 StreamJobs against the in-process mocked API server
//!    (tower-test): a create pass and a steady pass.
//! 3. RSS of the real `streamjob-operator run` binary against a fake HTTP API server: idle (no
//!    StreamJobs) and with 1,000 StreamJobs cached and reconciled.
//!
//! Every figure is the median of several runs. Environment: BENCH_RUNS (default 5), BENCH_JOBS
//! (default 1000), BENCH_ONLY (planner|reconcile|rss).

#[path = "../tests/support/fake_api.rs"]
mod fake_api;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};
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

fn bench_reconcile_loop(jobs: &[StreamJob], runs: usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut create_us = Vec::new();
    let mut steady_us = Vec::new();
    let mut requests_per_create = 0.0;
    let mut requests_per_steady = 0.0;
    for _ in 0..runs {
        runtime.block_on(async {
            let (client, api) = fake_api::FakeApi::start();
            let ctx = Arc::new(Context::new(client, Arc::new(Metrics::default())));
            for job in jobs {
                let path = format!(
                    "/apis/streaming.austin.dev/v1alpha1/namespaces/bench/streamjobs/{}",
                    job.metadata.name.as_deref().unwrap_or_default()
                );
                api.put(&path, serde_json::to_value(job).expect("json"));
            }
            let started = Instant::now();
            for job in jobs {
                reconciler::reconcile(Arc::new(job.clone()), ctx.clone())
                    .await
                    .expect("reconciles");
            }
            create_us.push(started.elapsed().as_secs_f64() * 1e6 / jobs.len() as f64);
            requests_per_create = api.requests().len() as f64 / jobs.len() as f64;
            api.clear_requests();
            // Second pass: the stored objects carry the status written by the first pass.
            let stored: Vec<StreamJob> = jobs
                .iter()
                .map(|job| {
                    let path = format!(
                        "/apis/streaming.austin.dev/v1alpha1/namespaces/bench/streamjobs/{}",
                        job.metadata.name.as_deref().unwrap_or_default()
                    );
                    serde_json::from_value(api.get(&path).expect("stored")).expect("parses")
                })
                .collect();
            let started = Instant::now();
            for job in stored {
                reconciler::reconcile(Arc::new(job), ctx.clone())
                    .await
                    .expect("reconciles");
            }
            steady_us.push(started.elapsed().as_secs_f64() * 1e6 / jobs.len() as f64);
            requests_per_steady = api.requests().len() as f64 / jobs.len() as f64;
        });
    }
    println!(
        "reconcile loop, mocked API (tower-test, same process): create pass {:.0} µs per StreamJob ({requests_per_create:.1} API requests each), second pass, children present but not yet rolled out, {:.0} µs ({requests_per_steady:.1} requests each); {} jobs, median of {runs} runs",
        median(create_us),
        median(steady_us),
        jobs.len()
    );
}

// ------------------------------------------------------------------------------------------------
// A fake HTTP API server for the real binary.
// ------------------------------------------------------------------------------------------------

#[derive(Clone)]
struct FakeServer {
    jobs: Arc<Mutex<BTreeMap<String, Value>>>,
    status_writes: Arc<AtomicUsize>,
}

fn json_response(code: StatusCode, value: &Value) -> Response {
    (
        code,
        [("content-type", "application/json")],
        value.to_string(),
    )
        .into_response()
}

async fn serve(State(server): State<FakeServer>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or_default().to_string();
    let bytes = axum::body::to_bytes(request.into_body(), 16 << 20)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let is_watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    if is_watch {
        // An open watch with no events.
        let stream = futures::stream::pending::<Result<Vec<u8>, std::io::Error>>();
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from_stream(stream))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    let is_jobs = path.contains("/streamjobs");
    match (method.as_str(), segments.len()) {
        // Collections: /apis/G/V/R or /api/V/R (all namespaces).
        ("GET", 3) | ("GET", 4)
            if !path.ends_with("/status")
                && (segments[0] == "api" && segments.len() == 3
                    || segments[0] == "apis" && segments.len() == 4) =>
        {
            let items: Vec<Value> = if is_jobs {
                server
                    .jobs
                    .lock()
                    .map(|j| j.values().cloned().collect())
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            json_response(
                StatusCode::OK,
                &json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}),
            )
        }
        ("GET", _) => json_response(
            StatusCode::NOT_FOUND,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "metadata": {}}),
        ),
        ("PATCH", _) if path.ends_with("/status") => {
            server.status_writes.fetch_add(1, Ordering::Relaxed);
            let name = segments[segments.len() - 2].to_string();
            let mut job = server
                .jobs
                .lock()
                .ok()
                .and_then(|j| j.get(&name).cloned())
                .unwrap_or(Value::Null);
            job["status"] = body["status"].clone();
            json_response(StatusCode::OK, &job)
        }
        ("PATCH", _) | ("POST", _) | ("PUT", _) => json_response(StatusCode::OK, &body),
        _ => json_response(StatusCode::METHOD_NOT_ALLOWED, &json!({})),
    }
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
    let jobs: BTreeMap<String, Value> = (0..count)
        .map(|i| {
            let job = job(i, "bench");
            (
                job.metadata.name.clone().unwrap_or_default(),
                serde_json::to_value(&job).expect("json"),
            )
        })
        .collect();
    let server = FakeServer {
        jobs: Arc::new(Mutex::new(jobs)),
        status_writes: Arc::new(AtomicUsize::new(0)),
    };
    let api_port = free_port();
    let app = axum::Router::new()
        .fallback(serve)
        .with_state(server.clone());
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
    let deadline = started + Duration::from_secs(180);
    let mut done_after = None;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        if server.status_writes.load(Ordering::Relaxed) >= count
            && (count > 0 || started.elapsed() > Duration::from_secs(3))
        {
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
    // BENCH_ONLY=planner|reconcile|rss runs one section.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "planner" {
        bench_planner(&jobs, runs);
    }
    if only.is_empty() || only == "reconcile" {
        bench_reconcile_loop(&jobs, runs);
    }
    if only.is_empty() || only == "rss" {
        bench_rss(count, runs);
    }
}
