//! A small typed client of the jobmanager's REST API (`streamjob_worker::api`), plain HTTP over
//! hyper (already linked through kube: no OpenSSL, no librdkafka). Every call has a timeout; an
//! unreachable or slow jobmanager is an [`JobManagerError::Unreachable`], never a hang.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use streamjob_worker::api::{
    AutoscalerMetrics, ErrorResponse, JobOverview, OperationInfo, SnapshotInfo, SnapshotList,
    StopWithSavepointRequest, TriggerResponse, TriggerSavepointRequest,
};

use k8s_openapi::jiff::Timestamp;

use crate::planner::config::REST_PORT;
use crate::planner::{lifecycle, names, JobManagerReport};

/// Default time one REST call may take.
/// Default time one REST call may take. A jobmanager answers in milliseconds; a call that takes
/// longer is a sign of a network that drops packets, and every second of waiting holds one of the
/// controller's reconcile slots.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobManagerError {
    /// No connection, no answer in time, or a broken answer.
    #[error("jobmanager at {url} unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    /// The jobmanager answered with an error status.
    #[error("jobmanager answered {status} to {path}: {message}")]
    Status {
        status: u16,
        path: String,
        message: String,
    },
    /// The answer is not what the API promises.
    #[error("unexpected answer to {path}: {reason}")]
    Decode { path: String, reason: String },
}

/// Whether an error text (as the planner's view holds it) is [`JobManagerError::Unreachable`]:
/// no answer at all, as opposed to an answer with an error status.
pub fn is_unreachable_message(text: &str) -> bool {
    text.starts_with("jobmanager at ") && text.contains(" unreachable: ")
}

impl JobManagerError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, JobManagerError::Status { status: 404, .. })
    }
    pub fn is_conflict(&self) -> bool {
        matches!(self, JobManagerError::Status { status: 409, .. })
    }
}

/// Computes a jobmanager's base URL from (namespace, name).
pub type UrlFn = Arc<dyn Fn(&str, &str) -> String + Send + Sync>;

/// Where a job's jobmanager answers: `http://<job>-jobmanager.<ns>.svc:8081` in a cluster, or a
/// fixed address (tests, or an operator run outside the cluster through a port-forward).
#[derive(Clone)]
pub enum BaseUrl {
    /// The ready jobmanager pod's IP, from the pod cache ([`JobAddress::pod_ip`]); cluster DNS
    /// when none is known. The default: no DNS lookup on the way, and a job whose jobmanager
    /// pod is not ready is not called at all.
    PodIp,
    ClusterDns,
    Fixed(String),
    /// Computed per job (namespace, name).
    Custom(UrlFn),
}

impl std::fmt::Debug for BaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BaseUrl::PodIp => f.write_str("PodIp"),
            BaseUrl::ClusterDns => f.write_str("ClusterDns"),
            BaseUrl::Fixed(url) => write!(f, "Fixed({url})"),
            BaseUrl::Custom(_) => f.write_str("Custom"),
        }
    }
}

impl BaseUrl {
    pub fn for_job(&self, job: &JobAddress) -> String {
        let (namespace, name) = (job.namespace.as_str(), job.name.as_str());
        match (self, job.pod_ip.as_deref()) {
            (BaseUrl::PodIp, Some(ip)) if ip.contains(':') => format!("http://[{ip}]:{REST_PORT}"),
            (BaseUrl::PodIp, Some(ip)) => format!("http://{ip}:{REST_PORT}"),
            (BaseUrl::PodIp | BaseUrl::ClusterDns, _) => format!(
                "http://{}.{namespace}.svc:{REST_PORT}",
                names::jobmanager(name)
            ),
            (BaseUrl::Fixed(url), _) => url.trim_end_matches('/').to_string(),
            (BaseUrl::Custom(f), _) => f(namespace, name).trim_end_matches('/').to_string(),
        }
    }
}

/// Where one job's jobmanager is this round and how to authenticate to it: read from the
/// caches by the reconciler for each call, never remembered by the client (a remembered
/// per-job map grows with the number of jobs and outlives deleted ones).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobAddress {
    pub namespace: String,
    /// The StreamJob's name, which is also the job id.
    pub name: String,
    /// The ready jobmanager pod's IP ([`crate::planner::lifecycle::jobmanager_pod_ip`]).
    pub pod_ip: Option<String>,
    /// What the job's `<name>-api-token` Secret holds, sent as a bearer token.
    pub token: Option<String>,
}

impl JobAddress {
    pub fn new(namespace: &str, name: &str) -> Self {
        JobAddress {
            namespace: namespace.into(),
            name: name.into(),
            ..JobAddress::default()
        }
    }
}

/// The client (cheap to clone; one connection pool).
#[derive(Clone)]
pub struct JobManagerClient {
    http: Client<HttpConnector, Full<Bytes>>,
    base: BaseUrl,
    timeout: Duration,
}

impl std::fmt::Debug for JobManagerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobManagerClient")
            .field("base", &self.base)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The jobmanager of one job.
pub struct JobEndpoint<'a> {
    client: &'a JobManagerClient,
    base: String,
    job_id: String,
    token: Option<String>,
}

/// A fresh API token for a job's Secret: 32 random bytes from the thread's CSPRNG (seeded by the
/// OS), hex-encoded.
pub fn generate_api_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl JobManagerClient {
    pub fn new(base: BaseUrl, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        Self {
            http: Client::builder(TokioExecutor::new()).build(connector),
            base,
            timeout,
        }
    }

    /// The jobmanager of one job (its job id is the StreamJob's name).
    pub fn job(&self, job: &JobAddress) -> JobEndpoint<'_> {
        JobEndpoint {
            client: self,
            base: self.base.for_job(job),
            job_id: job.name.clone(),
            token: job.token.clone(),
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        base: &str,
        path: &str,
        token: Option<&str>,
    ) -> Result<T, JobManagerError> {
        let body = if method == Method::POST {
            Bytes::from_static(b"{}")
        } else {
            Bytes::new()
        };
        self.call_with(method, base, path, body, token).await
    }

    async fn call_with<T: DeserializeOwned>(
        &self,
        method: Method,
        base: &str,
        path: &str,
        body: Bytes,
        token: Option<&str>,
    ) -> Result<T, JobManagerError> {
        let url = format!("{base}{path}");
        let unreachable = |reason: String| JobManagerError::Unreachable {
            url: url.clone(),
            reason,
        };
        let mut request = Request::builder()
            .method(method)
            .uri(&url)
            .header("content-type", "application/json");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| unreachable(e.to_string()))?;
        let timeout = self.timeout;
        let answer = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            Ok::<_, JobManagerError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(timeout, answer)
            .await
            .map_err(|_| unreachable(format!("no answer within {timeout:?}")))??;
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorResponse>(&bytes)
                .map(|e| e.errors.join("; "))
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(JobManagerError::Status {
                status: status.as_u16(),
                path: path.to_string(),
                message,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| JobManagerError::Decode {
            path: path.to_string(),
            reason: e.to_string(),
        })
    }
}

impl JobEndpoint<'_> {
    pub fn base(&self) -> &str {
        &self.base
    }

    fn path(&self, tail: &str) -> String {
        format!("/jobs/{}{tail}", self.job_id)
    }

    /// `GET /jobs/{id}`.
    pub async fn overview(&self) -> Result<JobOverview, JobManagerError> {
        self.client
            .call(
                Method::GET,
                &self.base,
                &self.path(""),
                self.token.as_deref(),
            )
            .await
    }

    /// `GET /jobs/{id}/savepoints/{requestId}`; `Ok(None)` when the jobmanager does not know the
    /// request (it restarted since, or never got it).
    pub async fn operation(
        &self,
        request_id: &str,
    ) -> Result<Option<OperationInfo>, JobManagerError> {
        match self
            .client
            .call(
                Method::GET,
                &self.base,
                &self.path(&format!("/savepoints/{request_id}")),
                self.token.as_deref(),
            )
            .await
        {
            Ok(info) => Ok(Some(info)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /jobs/{id}/savepoints`, newest first.
    pub async fn savepoints(&self) -> Result<Vec<SnapshotInfo>, JobManagerError> {
        let list: SnapshotList = self
            .client
            .call(
                Method::GET,
                &self.base,
                &self.path("/savepoints"),
                self.token.as_deref(),
            )
            .await?;
        Ok(list.snapshots)
    }

    /// `GET /jobs/{id}/autoscaler-metrics`: the autoscaler's counters as they stand.
    pub async fn autoscaler_metrics(&self) -> Result<AutoscalerMetrics, JobManagerError> {
        self.client
            .call(
                Method::GET,
                &self.base,
                &self.path("/autoscaler-metrics"),
                self.token.as_deref(),
            )
            .await
    }

    /// `GET /jobs/{id}/checkpoints`, newest first.
    pub async fn checkpoints(&self) -> Result<Vec<SnapshotInfo>, JobManagerError> {
        let list: SnapshotList = self
            .client
            .call(
                Method::GET,
                &self.base,
                &self.path("/checkpoints"),
                self.token.as_deref(),
            )
            .await?;
        Ok(list.snapshots)
    }

    /// `POST /jobs/{id}/savepoints` with a client-chosen trigger id: the request id to poll
    /// (the same id; a repeated trigger answers the request already made).
    pub async fn trigger_savepoint(&self, trigger_id: &str) -> Result<String, JobManagerError> {
        let body = TriggerSavepointRequest {
            target_directory: None,
            trigger_id: Some(trigger_id.to_string()),
        };
        self.post("/savepoints", &body).await
    }

    /// `POST /jobs/{id}/stop` (stop-with-savepoint) with a client-chosen trigger id: the request
    /// id to poll.
    pub async fn stop_with_savepoint(&self, trigger_id: &str) -> Result<String, JobManagerError> {
        let body = StopWithSavepointRequest {
            target_directory: None,
            trigger_id: Some(trigger_id.to_string()),
        };
        self.post("/stop", &body).await
    }

    async fn post(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<String, JobManagerError> {
        let url = format!("{}{}", self.base, self.path(path));
        let body = serde_json::to_vec(body).map_err(|e| JobManagerError::Unreachable {
            url,
            reason: e.to_string(),
        })?;
        let answer: TriggerResponse = self
            .client
            .call_with(
                Method::POST,
                &self.base,
                &self.path(path),
                Bytes::from(body),
                self.token.as_deref(),
            )
            .await?;
        Ok(answer.request_id)
    }
}

/// Asks the jobmanager what the lifecycle needs this round (see [`lifecycle::queries`]). Every
/// failure is part of the answer: the planner decides what an unreachable jobmanager means.
pub async fn observe(
    client: &JobManagerClient,
    job: &JobAddress,
    queries: &lifecycle::Queries,
    now: Timestamp,
) -> Option<JobManagerReport> {
    if !queries.any() {
        return None;
    }
    let endpoint = client.job(job);
    let text = |e: JobManagerError| e.to_string();
    let overview = if queries.overview {
        endpoint.overview().await.map_err(text)
    } else {
        Err("not asked".to_string())
    };
    let poll = match &queries.poll {
        Some(id) => Some(match endpoint.operation(id).await {
            Ok(Some(info)) => lifecycle::TriggerPoll::Known(info),
            Ok(None) => lifecycle::TriggerPoll::Unknown,
            Err(e) => lifecycle::TriggerPoll::Error(e.to_string()),
        }),
        None => None,
    };
    let savepoints = if queries.savepoints {
        Some(endpoint.savepoints().await.map_err(text))
    } else {
        None
    };
    let checkpoints = if queries.checkpoints {
        Some(endpoint.checkpoints().await.map_err(text))
    } else {
        None
    };
    Some(JobManagerReport {
        observed_at: now,
        view: lifecycle::JobManagerView {
            overview,
            poll,
            savepoints,
            checkpoints,
        },
    })
}

/// Runs one action against the jobmanager.
pub async fn execute(
    client: &JobManagerClient,
    job: &JobAddress,
    action: &lifecycle::JobManagerAction,
) -> lifecycle::ActionOutcome {
    let endpoint = client.job(job);
    let result = match action {
        lifecycle::JobManagerAction::TriggerSavepoint { trigger_id } => {
            endpoint.trigger_savepoint(trigger_id).await
        }
        lifecycle::JobManagerAction::StopWithSavepoint { trigger_id } => {
            endpoint.stop_with_savepoint(trigger_id).await
        }
    };
    match result {
        Ok(id) => lifecycle::ActionOutcome::Accepted(id),
        Err(e) => lifecycle::ActionOutcome::Failed(e.to_string()),
    }
}
