//! The REST API on :8081 (modelled on Flink's) and the taskmanager protocol endpoints.
//!
//! Every error answer is JSON `{"errors": ["…"]}`: unknown routes, jobs, request ids and
//! taskmanagers are `404`, malformed bodies `400`, operations the job's state forbids `409`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;

use crate::api::{
    AutoscalerMetrics, ErrorResponse, HeartbeatRequest, HeartbeatResponse, JobList, JobOverview,
    JobSummary, LeaveRequest, OperationInfo, RegisterRequest, RegisterResponse, SeriesResponse,
    SnapshotList, StopWithSavepointRequest, TaskManagerInfo, TriggerResponse,
    TriggerSavepointRequest,
};

use super::auth::{self, AuthError};
use super::coordinator::CoordinatorError;
use super::operations::{self, TriggerError};
use super::Shared;

type ApiResult<T> = Result<T, ApiError>;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorResponse {
            errors: vec![self.message],
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"streamjob\""),
            );
        }
        response
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let status = match e {
            AuthError::Missing | AuthError::Wrong => StatusCode::UNAUTHORIZED,
            AuthError::Unreadable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self::new(status, e.to_string())
    }
}

/// Refuses a mutating call without the job's API token (when one is configured), before
/// anything else is looked at.
async fn authorized(shared: &Shared, headers: &HeaderMap) -> ApiResult<()> {
    auth::authorize(&shared.config.jobmanager, headers)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "mutating REST call refused");
            ApiError::from(e)
        })
}

impl From<CoordinatorError> for ApiError {
    fn from(e: CoordinatorError) -> Self {
        let status = match e {
            CoordinatorError::UnknownMember(_) => StatusCode::NOT_FOUND,
            CoordinatorError::NotRunning(_) => StatusCode::CONFLICT,
        };
        Self::new(status, e.to_string())
    }
}

impl From<TriggerError> for ApiError {
    fn from(e: TriggerError) -> Self {
        let status = match e {
            TriggerError::BadTarget(_) | TriggerError::BadTriggerId(_) => StatusCode::BAD_REQUEST,
            TriggerError::WrongState(_)
            | TriggerError::PartitionsUnknown
            | TriggerError::TriggerIdReused(_) => StatusCode::CONFLICT,
        };
        Self::new(status, e.to_string())
    }
}

/// Parses a JSON body; an empty body means the type's default (all fields optional).
fn parse_body<T: DeserializeOwned + Default>(body: &Bytes) -> ApiResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("malformed request body: {e}"),
        )
    })
}

/// The REST API, with `pages` (the dashboard's routes, which read the API's own views) merged
/// in, so both answer unknown paths and methods the same way.
pub(crate) fn router(shared: Arc<Shared>, pages: Router<Arc<Shared>>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/jobs", get(jobs))
        .route("/jobs/{job_id}", get(job_overview))
        .route(
            "/jobs/{job_id}/checkpoints",
            get(list_checkpoints).post(trigger_checkpoint),
        )
        .route(
            "/jobs/{job_id}/checkpoints/triggers/{request_id}",
            get(poll_operation),
        )
        .route(
            "/jobs/{job_id}/savepoints",
            get(list_savepoints).post(trigger_savepoint),
        )
        .route(
            "/jobs/{job_id}/savepoints/{request_id}",
            get(poll_operation),
        )
        .route("/jobs/{job_id}/stop", post(stop_with_savepoint))
        .route("/jobs/{job_id}/series", get(series))
        .route("/jobs/{job_id}/autoscaler-metrics", get(autoscaler_metrics))
        .route("/taskmanagers", get(taskmanagers))
        .route("/taskmanagers/{tm_id}/register", post(register))
        .route("/taskmanagers/{tm_id}/heartbeat", post(heartbeat))
        .route("/taskmanagers/{tm_id}/leave", post(leave))
        .merge(pages)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this endpoint",
            )
        })
        .with_state(shared)
}

fn check_job(shared: &Shared, job_id: &str) -> ApiResult<()> {
    if job_id == shared.config.job.name {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "job {job_id:?} not found (this jobmanager runs {:?})",
                shared.config.job.name
            ),
        ))
    }
}

fn check_taskmanager_id(id: &str) -> ApiResult<()> {
    let valid = !id.is_empty()
        && id.len() <= 253
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if valid {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid taskmanager id {id:?}: use 1-253 characters of [A-Za-z0-9._:-]"),
        ))
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let text = {
        let coordinator = shared.lock_coordinator();
        shared.metrics.render(&coordinator)
    };
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}

async fn jobs(State(shared): State<Arc<Shared>>) -> Json<JobList> {
    let state = shared.lock_coordinator().state();
    Json(JobList {
        jobs: vec![JobSummary {
            id: shared.config.job.name.clone(),
            state,
        }],
    })
}

async fn job_overview(
    State(shared): State<Arc<Shared>>,
    Path(job_id): Path<String>,
) -> ApiResult<Json<JobOverview>> {
    check_job(&shared, &job_id)?;
    Ok(Json(overview(&shared, job_id)))
}

/// The job overview (`GET /jobs/{jobId}`; also the dashboard's).
pub(crate) fn overview(shared: &Shared, job_id: String) -> JobOverview {
    let now = Instant::now();
    let (last_checkpoint, last_savepoint) = {
        let ops = shared.lock_operations();
        (ops.last_checkpoint.clone(), ops.last_savepoint.clone())
    };
    let c = shared.lock_coordinator();
    let (job_watermark, final_watermark) = c.watermarks();
    let taskmanagers = c.taskmanagers(now);
    let partitions = c.partitions();
    let lags: Vec<i64> = partitions.iter().filter_map(|p| p.lag).collect();
    JobOverview {
        job_id,
        state: c.state(),
        topic: shared.config.source.kafka.topic.clone(),
        partition_count: c.partition_count(),
        generation: c.generation(),
        idle_taskmanagers: taskmanagers.iter().filter(|t| t.idle).count() as u32,
        unassigned_partitions: partitions.iter().filter(|p| p.owner.is_none()).count() as u32,
        total_lag: (!lags.is_empty()).then(|| lags.iter().sum()),
        events_per_second: partitions.iter().map(|p| p.events_per_second).sum(),
        taskmanagers,
        partitions,
        restored_from: shared.restore.source.clone(),
        last_checkpoint,
        last_savepoint,
        watermark: shared.series.status(job_watermark, final_watermark),
        redis: c.redis_topology(),
    }
}

/// `GET /jobs/{jobId}/autoscaler-metrics`: the taskmanagers' load counters and the partitions'
/// positions, as they stand (the operator's autoscaler takes rates between two reads). Cheap:
/// one lock of the coordinator, nothing computed over history.
async fn autoscaler_metrics(
    State(shared): State<Arc<Shared>>,
    Path(job_id): Path<String>,
) -> ApiResult<Json<AutoscalerMetrics>> {
    check_job(&shared, &job_id)?;
    let at_ms = crate::sink::redis::system_time_ms(std::time::SystemTime::now());
    let c = shared.lock_coordinator();
    Ok(Json(AutoscalerMetrics {
        job_id,
        state: c.state(),
        at_ms,
        partition_count: c.partition_count(),
        taskmanagers: c.taskmanager_loads(),
        partitions: c.partition_offsets(),
    }))
}

/// `GET /jobs/{jobId}/series?businessId=…&from=…&to=…`: one template's event-time series.
async fn series(
    State(shared): State<Arc<Shared>>,
    Path(job_id): Path<String>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> ApiResult<Json<SeriesResponse>> {
    check_job(&shared, &job_id)?;
    if !shared.config.window.enabled {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "the event-time series is off for this job (window.enabled: false)",
        ));
    }
    let number = |name: &str| -> ApiResult<Option<i64>> {
        query
            .get(name)
            .map(|v| {
                v.parse::<i64>().map_err(|_| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("query parameter {name} must be an integer (got {v:?})"),
                    )
                })
            })
            .transpose()
    };
    let business_id = number("businessId")?.ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "query parameter businessId is required",
        )
    })?;
    let response = super::series::read_series(&shared, business_id, number("from")?, number("to")?)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("redis: {e}")))?;
    Ok(Json(response))
}

async fn list_checkpoints(
    State(shared): State<Arc<Shared>>,
    Path(job_id): Path<String>,
) -> ApiResult<Json<SnapshotList>> {
    check_job(&shared, &job_id)?;
    list(shared, true).await
}

async fn list_savepoints(
    State(shared): State<Arc<Shared>>,
    Path(job_id): Path<String>,
) -> ApiResult<Json<SnapshotList>> {
    check_job(&shared, &job_id)?;
    list(shared, false).await
}

async fn list(shared: Arc<Shared>, checkpoints: bool) -> ApiResult<Json<SnapshotList>> {
    let listed = tokio::task::spawn_blocking(move || {
        if checkpoints {
            shared.checkpoints.list()
        } else {
            shared.savepoints.list()
        }
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(SnapshotList { snapshots: listed }))
}

fn accepted(request_id: String) -> Response {
    (StatusCode::ACCEPTED, Json(TriggerResponse { request_id })).into_response()
}

async fn trigger_checkpoint(
    State(shared): State<Arc<Shared>>,
    Path(job_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    authorized(&shared, &headers).await?;
    check_job(&shared, &job_id)?;
    if !body.iter().all(u8::is_ascii_whitespace) {
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&body)
            .ok()
            .filter(serde_json::Map::is_empty)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "a checkpoint trigger takes no parameters: send {} or nothing",
                )
            })?;
    }
    Ok(accepted(operations::trigger_checkpoint(&shared)?))
}

async fn trigger_savepoint(
    State(shared): State<Arc<Shared>>,
    Path(job_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    authorized(&shared, &headers).await?;
    check_job(&shared, &job_id)?;
    let request: TriggerSavepointRequest = parse_body(&body)?;
    Ok(accepted(operations::trigger_savepoint(
        &shared,
        request.target_directory,
        request.trigger_id,
    )?))
}

async fn stop_with_savepoint(
    State(shared): State<Arc<Shared>>,
    Path(job_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    authorized(&shared, &headers).await?;
    check_job(&shared, &job_id)?;
    let request: StopWithSavepointRequest = parse_body(&body)?;
    Ok(accepted(operations::stop_with_savepoint(
        &shared,
        request.target_directory,
        request.trigger_id,
    )?))
}

async fn poll_operation(
    State(shared): State<Arc<Shared>>,
    Path((job_id, request_id)): Path<(String, String)>,
) -> ApiResult<Json<OperationInfo>> {
    check_job(&shared, &job_id)?;
    shared
        .lock_operations()
        .get(&request_id)
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no operation with request id {request_id:?}"),
            )
        })
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct TaskManagerList {
    taskmanagers: Vec<TaskManagerInfo>,
}

async fn taskmanagers(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let taskmanagers = shared.lock_coordinator().taskmanagers(Instant::now());
    Json(TaskManagerList { taskmanagers })
}

async fn register(
    State(shared): State<Arc<Shared>>,
    Path(tm_id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<RegisterResponse>> {
    check_taskmanager_id(&tm_id)?;
    let request: RegisterRequest = parse_body(&body)?;
    tracing::info!(taskmanager = %tm_id, owned = request.owned.len(), "taskmanager registered");
    shared.with_coordinator(|c| c.register(&tm_id, &request, Instant::now()));
    Ok(Json(RegisterResponse {
        taskmanager_id: tm_id,
        jobmanager_instance: shared.instance.clone(),
        heartbeat_interval_ms: shared.config.jobmanager.heartbeat_interval.as_millis() as u64,
    }))
}

/// Processes the report, then answers at once if the member has something to do, else holds
/// the answer (long poll) until something changes for it or one heartbeat interval passed.
async fn heartbeat(
    State(shared): State<Arc<Shared>>,
    Path(tm_id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<HeartbeatResponse>> {
    check_taskmanager_id(&tm_id)?;
    let request: HeartbeatRequest = parse_body(&body)?;
    let mut changes = shared.changed.subscribe();
    let mut due = shared.with_coordinator(|c| c.heartbeat(&tm_id, &request, Instant::now()))?;
    if request.wait && !due {
        let hold = shared.config.jobmanager.heartbeat_interval;
        let _ = tokio::time::timeout(hold, async {
            loop {
                changes.borrow_and_update();
                due = shared
                    .lock_coordinator()
                    .needs_answer(&tm_id, request.desired_version)
                    .unwrap_or(true);
                if due || changes.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }
    let response = shared.with_coordinator(|c| c.response(&tm_id, Instant::now()))?;
    Ok(Json(response))
}

async fn leave(
    State(shared): State<Arc<Shared>>,
    Path(tm_id): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    check_taskmanager_id(&tm_id)?;
    let request: LeaveRequest = parse_body(&body)?;
    shared.with_coordinator(|c| c.leave(&tm_id, &request.released, Instant::now()))?;
    tracing::info!(taskmanager = %tm_id, released = request.released.len(), "taskmanager left");
    Ok(StatusCode::NO_CONTENT)
}
