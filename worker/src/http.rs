//! `/metrics` and `/healthz` over HTTP (axum). The jobmanager merges [`router`] into its REST API;
//! taskmanagers and standalone processes serve it alone with [`serve`]. Taskmanagers add
//! `/readyz` ([`with_readiness`]): ready once they hold everything the jobmanager assigned them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;

/// Whether the process is healthy: `/healthz` answers 200 while it is, 503 otherwise.
#[derive(Clone, Debug)]
pub struct Health(Arc<AtomicBool>);

impl Default for Health {
    fn default() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }
}

impl Health {
    pub fn set_healthy(&self, healthy: bool) {
        self.0.store(healthy, Ordering::Relaxed);
    }

    pub fn is_healthy(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Answers whether the process is ready (`Ok`) or why not (`Err`, a short plain-text reason).
pub type ReadinessCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// `/readyz`: 503 "starting" until a check is [`set`](Readiness::set), then what it answers.
#[derive(Clone, Default)]
pub struct Readiness(Arc<OnceLock<ReadinessCheck>>);

impl Readiness {
    /// Installs the check (once; later calls are ignored).
    pub fn set(&self, check: ReadinessCheck) {
        let _ = self.0.set(check);
    }

    pub fn check(&self) -> Result<(), String> {
        match self.0.get() {
            Some(check) => check(),
            None => Err("starting".into()),
        }
    }
}

/// Adds `GET /readyz` to `router`: `200 ready` or `503` with the reason.
pub fn with_readiness(router: Router, readiness: Readiness) -> Router {
    router.merge(
        Router::new()
            .route("/readyz", get(readyz_handler))
            .with_state(readiness),
    )
}

async fn readyz_handler(State(readiness): State<Readiness>) -> impl IntoResponse {
    match readiness.check() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    health: Health,
}

/// `GET /metrics` (Prometheus text format) and `GET /healthz`.
pub fn router(metrics: Metrics, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz_handler))
        .with_state(AppState { metrics, health })
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

async fn healthz_handler(State(state): State<AppState>) -> impl IntoResponse {
    if state.health.is_healthy() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unhealthy\n")
    }
}

/// Binds `bind` and serves `router` until `shutdown` resolves. Returns the bound address (useful
/// with port 0) and the server task.
pub async fn serve(
    bind: &str,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(bind).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot bind metrics.bind {bind}: {e}"))
    })?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
    });
    Ok((addr, task))
}
