//! What users look at on the jobmanager's REST port: the live dashboard (`/`), the Trace page
//! (`/trace`) and austin-web's trace API (`POST /trace/*`).
//!
//! Every asset is compiled into the binary (`include_str!`); the pages load nothing from
//! anywhere else, so they work offline and through `kubectl port-forward`. The charts are
//! hand-rolled SVG (`assets/chart.js`). The dashboard polls `GET /dashboard/state` every two
//! seconds: the job overview plus what [`activity::Activity`] remembers (throughput samples,
//! dead letters, problems) and the checkpoint and savepoint lists.

pub mod activity;
pub mod trace;

use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;

use crate::api::{JobOverview, SnapshotInfo};
use activity::{Activity, DeadLetterTally, Problem, Sample};

use super::{now_ms, rest, Shared};

/// How often the sampler records a point of the throughput chart.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(2);
/// Snapshots listed on the dashboard (newest first).
const LISTED_SNAPSHOTS: usize = 10;

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("assets/app.css"),
    },
    Asset {
        name: "chart.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("assets/chart.js"),
    },
    Asset {
        name: "dashboard.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("assets/dashboard.js"),
    },
    Asset {
        name: "trace.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("assets/trace.js"),
    },
];

const DASHBOARD_HTML: &str = include_str!("assets/index.html");
const TRACE_HTML: &str = include_str!("assets/trace.html");

/// The pages, assets, the dashboard's state and the trace API.
pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/", get(|| async { html(DASHBOARD_HTML) }))
        .route("/trace", get(|| async { html(TRACE_HTML) }))
        .route("/assets/{name}", get(asset))
        .route("/dashboard/state", get(state))
        .route("/trace/user", post(trace_user))
        .route("/trace/message", post(trace_message))
        .route("/trace/messageTemplate", post(trace_template))
}

fn html(body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(asset) => (
            [
                (header::CONTENT_TYPE, asset.content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            asset.body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

/// `GET /dashboard/state`: everything the dashboard shows, in one answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DashboardState {
    pub now_ms: u64,
    pub started_at_ms: u64,
    /// Whether mutating calls need the API token (the dashboard asks for it then).
    pub token_required: bool,
    pub time_zone: String,
    pub key_prefix: String,
    pub overview: JobOverview,
    pub throughput: Vec<Sample>,
    pub dead_letters: DeadLetterTally,
    pub problems: Vec<Problem>,
    pub checkpoints: Vec<SnapshotInfo>,
    pub savepoints: Vec<SnapshotInfo>,
    /// Listing a directory failed (shown instead of the list).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

async fn state(State(shared): State<Arc<Shared>>) -> Json<DashboardState> {
    let overview = rest::overview(&shared, shared.config.job.name.clone());
    let (throughput, dead_letters, problems) = {
        let activity = lock_activity(&shared);
        (
            activity.samples(),
            activity.dead_letters(),
            activity.problems(),
        )
    };
    let lists = {
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || (shared.checkpoints.list(), shared.savepoints.list()))
            .await
    };
    let mut errors = Vec::new();
    let mut take = |listed: Result<Vec<SnapshotInfo>, super::store::StoreError>| match listed {
        Ok(mut list) => {
            list.truncate(LISTED_SNAPSHOTS);
            list
        }
        Err(e) => {
            errors.push(e.to_string());
            Vec::new()
        }
    };
    let (checkpoints, savepoints) = match lists {
        Ok((c, s)) => (take(c), take(s)),
        Err(e) => {
            errors.push(e.to_string());
            (Vec::new(), Vec::new())
        }
    };
    let redis = &shared.config.sink.redis;
    Json(DashboardState {
        now_ms: now_ms(),
        started_at_ms: shared.started_at_ms,
        token_required: super::auth::token_configured(&shared.config.jobmanager),
        time_zone: redis.time_zone.clone(),
        key_prefix: redis.key_prefix.clone(),
        overview,
        throughput,
        dead_letters,
        problems,
        checkpoints,
        savepoints,
        errors,
    })
}

async fn trace_user(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    shared
        .trace
        .user(&body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn trace_message(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    shared
        .trace
        .message(&body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn trace_template(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let now = i64::try_from(now_ms()).unwrap_or(i64::MAX);
    shared
        .trace
        .template(&body, now)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

fn lock_activity(shared: &Shared) -> MutexGuard<'_, Activity> {
    shared
        .activity
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Records a throughput sample and what changed, every [`SAMPLE_INTERVAL`].
pub(crate) async fn sample(shared: Arc<Shared>) {
    let mut interval = tokio::time::interval(SAMPLE_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let (partitions, reports) = {
            let c = shared.lock_coordinator();
            (c.partitions(), c.progress_reports().clone())
        };
        lock_activity(&shared).observe(now_ms(), &partitions, &reports);
    }
}
