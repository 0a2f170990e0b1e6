//! A small JSON-over-HTTP client for the jobmanager's API (used by taskmanagers, tests and tools).

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::{
    ErrorResponse, HeartbeatRequest, HeartbeatResponse, LeaveRequest, RegisterRequest,
    RegisterResponse,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("jobmanager at {url} unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("jobmanager answered {status} to {path}: {message}")]
    Status {
        status: u16,
        path: String,
        message: String,
    },
    #[error("unexpected answer to {path}: {reason}")]
    Decode { path: String, reason: String },
}

impl ClientError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Status { status: 404, .. })
    }
}

/// Raw answer: status and body.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct JobManagerClient {
    base: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl JobManagerClient {
    /// `base`: e.g. `http://127.0.0.1:8081`.
    pub fn new(base: &str) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(3)));
        Self {
            base: base.trim_end_matches('/').to_string(),
            http: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends one request; `body` is sent as JSON when given.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<RawResponse, ClientError> {
        let url = format!("{}{path}", self.base);
        let unreachable = |reason: String| ClientError::Unreachable {
            url: url.clone(),
            reason,
        };
        let mut builder = Request::builder().method(method).uri(&url);
        if body.is_some() {
            builder = builder.header("content-type", "application/json");
        }
        let request = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| unreachable(e.to_string()))?;
        let response = tokio::time::timeout(timeout, self.http.request(request))
            .await
            .map_err(|_| unreachable(format!("no answer within {timeout:?}")))?
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        let body = tokio::time::timeout(timeout, response.into_body().collect())
            .await
            .map_err(|_| unreachable(format!("body not received within {timeout:?}")))?
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes()
            .to_vec();
        Ok(RawResponse { status, body })
    }

    /// JSON request/response; a non-2xx answer becomes [`ClientError::Status`] with the API's message.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Req>,
        timeout: Duration,
    ) -> Result<Resp, ClientError> {
        let bytes = match body {
            Some(b) => Some(serde_json::to_vec(b).map_err(|e| ClientError::Decode {
                path: path.into(),
                reason: e.to_string(),
            })?),
            None => None,
        };
        let response = self.raw(method, path, bytes, timeout).await?;
        if !StatusCode::from_u16(response.status).is_ok_and(|s| s.is_success()) {
            let message = serde_json::from_slice::<ErrorResponse>(&response.body)
                .map(|e| e.errors.join("; "))
                .unwrap_or_else(|_| String::from_utf8_lossy(&response.body).into_owned());
            return Err(ClientError::Status {
                status: response.status,
                path: path.into(),
                message,
            });
        }
        let body = if response.body.is_empty() {
            b"null".to_vec()
        } else {
            response.body
        };
        serde_json::from_slice(&body).map_err(|e| ClientError::Decode {
            path: path.into(),
            reason: e.to_string(),
        })
    }

    pub async fn register(
        &self,
        id: &str,
        request: &RegisterRequest,
    ) -> Result<RegisterResponse, ClientError> {
        let path = format!("/taskmanagers/{id}/register");
        self.call(Method::POST, &path, Some(request), Duration::from_secs(5))
            .await
    }

    /// `hold`: how long the jobmanager may hold the answer (its heartbeat interval).
    pub async fn heartbeat(
        &self,
        id: &str,
        request: &HeartbeatRequest,
        hold: Duration,
    ) -> Result<HeartbeatResponse, ClientError> {
        let path = format!("/taskmanagers/{id}/heartbeat");
        self.call(
            Method::POST,
            &path,
            Some(request),
            hold + Duration::from_secs(5),
        )
        .await
    }

    pub async fn leave(&self, id: &str, request: &LeaveRequest) -> Result<(), ClientError> {
        let path = format!("/taskmanagers/{id}/leave");
        self.call::<_, serde_json::Value>(
            Method::POST,
            &path,
            Some(request),
            Duration::from_secs(5),
        )
        .await
        .map(|_| ())
    }
}
