//! A scripted jobmanager REST server on a real socket: records every request (method, path) and
//! answers from a small state the test controls (overview, operations, savepoint list), or fails /
//! hangs when told to.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use streamjob_worker::api::{
    AutoscalerMetrics, JobOverview, JobState, OperationInfo, OperationKind, OperationStatus,
    RestoreSource, SnapshotInfo, SnapshotKind, SnapshotList, TriggerResponse,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JmRequest {
    pub method: String,
    pub path: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
}

/// Called with each request as it arrives.
pub type RequestHook = Box<dyn Fn(&JmRequest) + Send>;

/// How the server misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JmFault {
    #[default]
    None,
    /// Every request answers 500.
    Error,
    /// Every request hangs longer than the client's timeout.
    Hang,
}

pub struct JmState {
    pub overview: JobOverview,
    pub ops: BTreeMap<String, OperationInfo>,
    pub savepoints: Vec<SnapshotInfo>,
    pub checkpoints: Vec<SnapshotInfo>,
    pub requests: Vec<JmRequest>,
    pub fault: JmFault,
    /// Complete triggered savepoints at once (else they stay IN_PROGRESS until `complete`).
    pub complete_at_once: bool,
    /// Called with every request as it arrives (e.g. to look at the API server at that moment).
    pub on_request: Option<RequestHook>,
    seq: u64,
    /// Bodies of the POSTs received, in order.
    pub post_bodies: Vec<String>,
    /// What `GET /jobs/{id}/autoscaler-metrics` answers (`None`: 404).
    pub autoscaler: Option<AutoscalerMetrics>,
}

#[derive(Clone)]
pub struct FakeJobManager {
    pub url: String,
    state: Arc<Mutex<JmState>>,
}

pub fn overview(job: &str) -> JobOverview {
    JobOverview {
        job_id: job.into(),
        state: JobState::Running,
        topic: "austinTraceLog".into(),
        partition_count: Some(4),
        generation: 3,
        taskmanagers: Vec::new(),
        idle_taskmanagers: 0,
        unassigned_partitions: 0,
        total_lag: Some(12),
        events_per_second: 150.0,
        partitions: Vec::new(),
        restored_from: RestoreSource::StartingOffsets,
        last_checkpoint: None,
        last_savepoint: None,
        watermark: None,
        redis: None,
    }
}

/// What the reconciler hands the planner after reading `overview` at `observed_at` (no
/// operation polled, no list read).
pub fn report(
    overview: JobOverview,
    observed_at: k8s_openapi::jiff::Timestamp,
) -> streamjob_operator::planner::JobManagerReport {
    streamjob_operator::planner::JobManagerReport {
        observed_at,
        view: streamjob_operator::planner::lifecycle::JobManagerView {
            overview: Ok(overview),
            poll: None,
            savepoints: None,
            checkpoints: None,
        },
    }
}

impl FakeJobManager {
    pub async fn start(job: &str) -> FakeJobManager {
        let state = Arc::new(Mutex::new(JmState {
            overview: overview(job),
            ops: BTreeMap::new(),
            savepoints: Vec::new(),
            checkpoints: Vec::new(),
            requests: Vec::new(),
            fault: JmFault::None,
            complete_at_once: true,
            on_request: None,
            seq: 0,
            post_bodies: Vec::new(),
            autoscaler: None,
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let shared = state.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: axum::http::HeaderMap, body: Bytes| {
                let shared = shared.clone();
                let authorization = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                async move {
                    if method == Method::POST {
                        let text = String::from_utf8_lossy(&body).into_owned();
                        shared
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .post_bodies
                            .push(text);
                    }
                    answer(&shared, method, uri, authorization).await
                }
            },
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeJobManager { url, state }
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut JmState) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut state)
    }

    pub fn requests(&self) -> Vec<JmRequest> {
        self.with(|s| s.requests.clone())
    }

    pub fn clear_requests(&self) {
        self.with(|s| s.requests.clear());
    }
}

fn snapshot(kind: SnapshotKind, id: u64) -> SnapshotInfo {
    let dir = match kind {
        SnapshotKind::Checkpoint => "checkpoints",
        SnapshotKind::Savepoint => "savepoints",
    };
    SnapshotInfo {
        id,
        kind,
        path: format!("/var/lib/streamjob/{dir}/{id}.json"),
        created_at_ms: 1_763_700_000_000 + id,
        size_bytes: 10,
        partitions: 4,
    }
}

impl JmState {
    /// Completes an in-progress operation: its savepoint lands on the volume.
    pub fn complete(&mut self, request_id: &str) {
        self.seq += 1;
        let file = snapshot(SnapshotKind::Savepoint, self.seq);
        if let Some(op) = self.ops.get_mut(request_id) {
            op.status = OperationStatus::Completed;
            op.location = Some(file.path.clone());
            op.completed_at_ms = Some(file.created_at_ms);
            if op.kind == OperationKind::StopWithSavepoint {
                self.overview.state = JobState::Finished;
            }
            self.overview.last_savepoint = Some(file.clone());
            self.savepoints.insert(0, file);
        }
    }

    pub fn add_checkpoint(&mut self) {
        self.seq += 1;
        let file = snapshot(SnapshotKind::Checkpoint, self.seq);
        self.overview.last_checkpoint = Some(file.clone());
        self.checkpoints.insert(0, file);
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"errors": [message]}))).into_response()
}

async fn answer(
    state: &Arc<Mutex<JmState>>,
    method: Method,
    uri: Uri,
    authorization: Option<String>,
) -> Response {
    let path = uri.path().to_string();
    let fault = {
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        let request = JmRequest {
            method: method.to_string(),
            path: path.clone(),
            authorization,
        };
        if let Some(hook) = &s.on_request {
            hook(&request);
        }
        s.requests.push(request);
        s.fault
    };
    match fault {
        JmFault::Error => return error(StatusCode::INTERNAL_SERVER_ERROR, "injected failure"),
        JmFault::Hang => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            return error(StatusCode::INTERNAL_SERVER_ERROR, "too late");
        }
        JmFault::None => {}
    }
    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["jobs", _]) => Json(s.overview.clone()).into_response(),
        ("GET", ["jobs", _, "autoscaler-metrics"]) => match &s.autoscaler {
            Some(metrics) => Json(metrics.clone()).into_response(),
            None => error(StatusCode::NOT_FOUND, "no such endpoint"),
        },
        ("GET", ["jobs", _, "savepoints"]) => Json(SnapshotList {
            snapshots: s.savepoints.clone(),
        })
        .into_response(),
        ("GET", ["jobs", _, "checkpoints"]) => Json(SnapshotList {
            snapshots: s.checkpoints.clone(),
        })
        .into_response(),
        ("GET", ["jobs", _, "savepoints", id]) => match s.ops.get(*id) {
            Some(op) => Json(op.clone()).into_response(),
            None => error(StatusCode::NOT_FOUND, "no operation with this request id"),
        },
        ("POST", ["jobs", _, tail]) if *tail == "savepoints" || *tail == "stop" => {
            if s.overview.state != JobState::Running {
                let message = format!(
                    "the job is {}: nothing can be triggered now",
                    s.overview.state
                );
                return error(StatusCode::CONFLICT, &message);
            }
            let kind = if *tail == "stop" {
                s.overview.state = JobState::Stopping;
                OperationKind::StopWithSavepoint
            } else {
                OperationKind::Savepoint
            };
            s.seq += 1;
            let id = format!("req-{}", s.seq);
            s.ops.insert(
                id.clone(),
                OperationInfo {
                    request_id: id.clone(),
                    kind,
                    status: OperationStatus::InProgress,
                    triggered_at_ms: 1_763_700_000_000,
                    completed_at_ms: None,
                    location: None,
                    failure_cause: None,
                },
            );
            if s.complete_at_once {
                s.complete(&id);
            }
            (
                StatusCode::ACCEPTED,
                Json(TriggerResponse { request_id: id }),
            )
                .into_response()
        }
        _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
    }
}
