//! `/healthz`, `/readyz` and `/metrics` over a real socket.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use streamjob_operator::http::{router, HttpState};
use streamjob_operator::metrics::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connects");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("writes");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("reads");
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (code, body)
}

#[tokio::test]
async fn health_readiness_and_metrics_are_served() {
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let address = listener.local_addr().expect("address");
    let app = router(HttpState {
        metrics: metrics.clone(),
        ready: ready.clone(),
    });
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    assert_eq!(get(address, "/healthz").await.0, 200);
    assert_eq!(
        get(address, "/readyz").await.0,
        503,
        "not ready before the operator is connected"
    );
    ready.store(true, Ordering::Relaxed);
    assert_eq!(get(address, "/readyz").await.0, 200);
    metrics.reconciles.inc();
    metrics.leader.set(1);
    let (code, body) = get(address, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        body.contains("streamjob_operator_reconciles_total 1"),
        "{body}"
    );
    assert!(body.contains("streamjob_operator_leader 1"), "{body}");
    assert_eq!(get(address, "/nope").await.0, 404);
    server.abort();
}
