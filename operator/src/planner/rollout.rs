//! Rolling upgrades (`upgradeMode: rolling`), the pure part: whether a change may roll, how far
//! a rollout has come, and what status shows meanwhile.
//!
//! A rolling upgrade applies the new ConfigMap and both Deployments at once. The jobmanager
//! Deployment stays `Recreate`: its pod is replaced while the taskmanagers keep processing the
//! partitions they own and re-register with the new one. The taskmanager Deployment rolls with
//! `maxSurge: 1, maxUnavailable: 0`: a new taskmanager starts next to the old ones, the
//! jobmanager hands it partitions through the revoke, flush, claim path of a rescale, and only once
//! its `/readyz` answers (registered, holding every partition it was given) does the Deployment
//! controller stop an old one, which releases its partitions on SIGTERM. No partition stops for
//! longer than one handoff, and no savepoint is taken.
//!
//! **Only changes that keep the meaning of the Redis fences roll.** A fence says "partition P of
//! topic T, as read from Kafka cluster K, is applied up to offset O in Redis R under key prefix
//! X for job J". During a rollout old and new taskmanagers own partitions side by side, so both
//! must read and write the same fences. [`FenceIdentity`] lists what decides that: the job name,
//! the Kafka brokers and topic (and with them the partition set), the Redis target (host, port
//! and database of the URL, the Sentinel master and sentinels, the cluster nodes), the key
//! prefix, and the event-time series' window (whose keys live next to the fences and are written
//! in the same atomic apply). Any other change (image, batching, logging, time zone, Kafka client
//! properties, resources, pod settings, credentials) is a per-process choice that any owner of a
//! partition may make. A change of the identity falls back to the savepoint path
//! ([`RolloutPath::Fallback`]) and an Event names the fields.
//!
//! **The ConfigMap is shared.** Old pods that crash and restart mid-rollout read the new
//! `job.yaml`. That is acceptable for every change that rolls, by construction of the rule
//! above: the new config has the same fence identity as the old one, so an old pod on it reads
//! and writes the same fences and keys; it only differs in per-process settings.
//!
//! **Which identity is deployed** is read from the taskmanager pod template's
//! [`FENCE_IDENTITY_ANNOTATION`] (readable JSON, no secrets): what the running taskmanagers were
//! started with. A Deployment without it (made by an older operator) falls back too.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

use crate::crd::{
    Operation, OperationKind, OperationStep, Phase, RedisSpec, StreamJob, StreamJobStatus,
};
use crate::planner::annotations::CONFIG_HASH_ANNOTATION;
use crate::planner::status::{DEGRADED, PROGRESSING, READY};
use crate::planner::Observed;

/// Pod template annotation of the taskmanager Deployment: the [`FenceIdentity`] its pods run with.
pub const FENCE_IDENTITY_ANNOTATION: &str = "streaming.austin.dev/fence-identity";
/// Reason of the Event when a change cannot roll.
pub const ROLLING_NOT_POSSIBLE: &str = "RollingNotPossible";
/// Reason of the Progressing condition during a rolling upgrade.
pub const ROLLING_UPGRADE: &str = "RollingUpgrade";
/// Reason of the Degraded and Progressing conditions when a rollout stalls.
pub const ROLLOUT_STALLED: &str = "RolloutStalled";
/// Default Redis port of a URL without one.
const REDIS_PORT: &str = "6379";

/// What the Redis fences of a job mean: each entry is a spec field (as the user writes it) and
/// its canonical value. Two specs with the same identity read and write the same fences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceIdentity(BTreeMap<String, String>);

impl FenceIdentity {
    /// The identity a StreamJob's spec asks for.
    pub fn of(job: &StreamJob) -> Self {
        let spec = &job.spec;
        let mut fields = BTreeMap::new();
        let mut put = |field: &str, value: String| {
            fields.insert(field.to_string(), value);
        };
        put(
            "metadata.name",
            job.metadata.name.clone().unwrap_or_default(),
        );
        put("spec.kafka.brokers", brokers(&spec.kafka.brokers));
        put("spec.kafka.topic", spec.kafka.topic.clone());
        put("spec.redis.keyPrefix", spec.redis.key_prefix.clone());
        for (field, value) in redis_target(&spec.redis) {
            put(field, value);
        }
        put("spec.window.enabled", spec.window.enabled.to_string());
        put("spec.window.size", spec.window.size.clone());
        Self(fields)
    }

    /// The identity the taskmanager pod template records (`None`: not recorded or unreadable).
    pub fn deployed(taskmanager: Option<&Deployment>) -> Option<Self> {
        let text = taskmanager?
            .spec
            .template
            .metadata
            .as_ref()?
            .annotations
            .as_ref()?
            .get(FENCE_IDENTITY_ANNOTATION)?;
        serde_json::from_str(text).ok().map(Self)
    }

    /// As the annotation holds it: one JSON object, keys sorted.
    pub fn to_annotation(&self) -> String {
        serde_json::to_string(&self.0).unwrap_or_default()
    }

    /// The fields whose values differ between the two (present in one only counts).
    fn changed_fields(&self, other: &Self) -> Vec<String> {
        let keys: std::collections::BTreeSet<&String> =
            self.0.keys().chain(other.0.keys()).collect();
        keys.into_iter()
            .filter(|k| self.0.get(*k) != other.0.get(*k))
            .cloned()
            .collect()
    }
}

/// Bootstrap servers as a set: lower-case, sorted, without duplicates.
fn brokers(list: &str) -> String {
    let mut servers: Vec<String> = list
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    servers.sort();
    servers.dedup();
    servers.join(",")
}

/// Addresses as a set, like [`brokers`].
fn node_set(nodes: &[String]) -> String {
    brokers(&nodes.join(","))
}

/// Where the fences live: the Redis the workers write to, whatever the TLS or credentials.
fn redis_target(redis: &RedisSpec) -> Vec<(&'static str, String)> {
    let endpoint = Endpoint::parse(&redis.url);
    if let Some(cluster) = &redis.cluster {
        return vec![("spec.redis.cluster.nodes", node_set(&cluster.nodes))];
    }
    if let Some(sentinel) = &redis.sentinel {
        return vec![
            (
                "spec.redis.sentinel.masterName",
                sentinel.master_name.clone(),
            ),
            ("spec.redis.sentinel.nodes", node_set(&sentinel.nodes)),
            ("spec.redis.url", format!("database {}", endpoint.database)),
        ];
    }
    vec![("spec.redis.url", endpoint.to_string())]
}

/// The parts of a Redis URL that name the data: host and port (or socket path) and database.
#[derive(Debug, PartialEq, Eq)]
struct Endpoint {
    address: String,
    database: String,
}

impl Endpoint {
    fn parse(url: &str) -> Self {
        let (scheme, rest) = url.split_once("://").unwrap_or(("redis", url));
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let query_db = query
            .split('&')
            .find_map(|pair| pair.strip_prefix("db="))
            .map(str::to_string);
        if scheme == "unix" {
            return Self {
                address: format!("unix:{location}"),
                database: number_or_zero(query_db.as_deref().unwrap_or("0")),
            };
        }
        let (authority, path) = location.split_once('/').unwrap_or((location, ""));
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
        let (host, port) = match host_port.rsplit_once(':') {
            // `[::1]:6380`, `host:6380`; a bare IPv6 address in brackets has no port.
            Some((host, port)) if !port.contains(']') => (host, port),
            _ => (host_port, REDIS_PORT),
        };
        let database = match path.trim_matches('/') {
            "" => query_db.unwrap_or_else(|| "0".into()),
            db => db.to_string(),
        };
        Self {
            address: format!("{}:{port}", host.to_ascii_lowercase()),
            database: number_or_zero(&database),
        }
    }
}

fn number_or_zero(text: &str) -> String {
    text.parse::<u32>().unwrap_or(0).to_string()
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} database {}", self.address, self.database)
    }
}

/// How a changed pod template reaches the running job under `upgradeMode: rolling`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutPath {
    /// Through the fenced handoff: the job keeps processing.
    Roll,
    /// Through a savepoint: `fields` changed what the fences mean (empty: the running
    /// taskmanagers do not say what theirs mean).
    Fallback { fields: Vec<String> },
}

impl RolloutPath {
    /// The Event's message for a fallback (`None` for a roll).
    pub fn fallback_message(&self) -> Option<String> {
        let RolloutPath::Fallback { fields } = self else {
            return None;
        };
        let cause = if fields.is_empty() {
            "the running taskmanagers do not record what their Redis fences mean (they were deployed by an older operator)".to_string()
        } else {
            format!(
                "{} changed, which changes what the Redis fences mean",
                fields.join(", ")
            )
        };
        Some(format!(
            "rolling not possible: {cause}; upgrading through a savepoint"
        ))
    }
}

/// The fallback decision: the deployed identity against the one the new spec asks for.
pub fn decide(deployed: Option<&FenceIdentity>, desired: &FenceIdentity) -> RolloutPath {
    match deployed {
        None => RolloutPath::Fallback { fields: Vec::new() },
        Some(deployed) => match deployed.changed_fields(desired) {
            fields if fields.is_empty() => RolloutPath::Roll,
            fields => RolloutPath::Fallback { fields },
        },
    }
}

/// [`decide`] for a StreamJob and its observed taskmanager Deployment.
pub fn path(job: &StreamJob, observed: &Observed) -> RolloutPath {
    decide(
        FenceIdentity::deployed(observed.taskmanager.as_ref()).as_ref(),
        &FenceIdentity::of(job),
    )
}

/// `spec.rolling.progressDeadline` (the CRD guarantees a non-zero duration).
pub fn progress_deadline(job: &StreamJob) -> Duration {
    humantime::parse_duration(&job.spec.rolling.progress_deadline)
        .ok()
        .filter(|d| !d.is_zero())
        .unwrap_or(Duration::from_secs(300))
}

/// Why a rollout stalled, for the user: the taskmanager Deployment's progress deadline passed,
/// or pods of the new template never became ready (crash loop, image pull, a readiness probe
/// failing for longer than the deadline). `None` while it moves.
pub fn stall(
    observed: &Observed,
    desired_hash: &str,
    deadline: Duration,
    now: Timestamp,
) -> Option<String> {
    let deployment = deadline_exceeded(observed.taskmanager.as_ref());
    let pods: Vec<String> = observed
        .pods
        .iter()
        .filter(|pod| runs_template(pod, desired_hash))
        .filter_map(|pod| never_ready(pod, deadline, now))
        .collect();
    if deployment.is_none() && pods.is_empty() {
        return None;
    }
    let mut causes: Vec<String> = deployment.into_iter().collect();
    causes.extend(pods);
    Some(format!(
        "rolling upgrade stalled: {}; the old taskmanagers keep the job running; fix the cause and change the spec again (the rollout goes on), or restore the previous spec (the old template comes back)",
        causes.join("; ")
    ))
}

fn deadline_exceeded(deployment: Option<&Deployment>) -> Option<String> {
    let deployment = deployment?;
    let condition = deployment
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| {
            c.type_.as_deref() == Some("Progressing")
                && c.status.as_deref() == Some("False")
                && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        })?;
    Some(format!(
        "Deployment {}: {}",
        deployment.metadata.name.as_deref().unwrap_or("taskmanager"),
        condition
            .message
            .as_deref()
            .unwrap_or("progress deadline exceeded")
    ))
}

fn runs_template(pod: &Pod, hash: &str) -> bool {
    let meta = &pod.metadata;
    meta.deletion_timestamp.is_none()
        && meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(CONFIG_HASH_ANNOTATION))
            .is_some_and(|h| h == hash)
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Restarts after which a new pod that is not ready counts as never becoming ready.
const STALL_RESTARTS: i32 = 3;

/// Why a new pod will not become ready: it crash-loops, cannot pull or start, or stayed unready
/// past the deadline. `None` while it may still make it.
fn never_ready(pod: &Pod, deadline: Duration, now: Timestamp) -> Option<String> {
    if pod_ready(pod) {
        return None;
    }
    let name = pod.metadata.name.as_deref().unwrap_or("a new pod");
    let containers = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref());
    for container in containers.into_iter().flatten() {
        let waiting = container
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.reason.as_deref());
        let stuck = matches!(
            waiting,
            Some(
                "CrashLoopBackOff"
                    | "ErrImagePull"
                    | "ImagePullBackOff"
                    | "InvalidImageName"
                    | "CreateContainerConfigError"
            )
        );
        if stuck || container.restart_count >= STALL_RESTARTS {
            let why = waiting.unwrap_or("restarting");
            return Some(format!(
                "pod {name} is not ready: {why} ({} restarts)",
                container.restart_count
            ));
        }
    }
    let created = pod.metadata.creation_timestamp.as_ref()?.0;
    let age = Duration::try_from(now.duration_since(created)).unwrap_or_default();
    // No live age in the message: status is written only when it changes.
    (age > deadline).then(|| {
        format!(
            "pod {name} did not become ready within spec.rolling.progressDeadline ({}s): its /readyz fails (not registered with the jobmanager, or not holding its partitions)",
            deadline.as_secs()
        )
    })
}

/// Whether `op` is a rolling upgrade in flight.
pub fn rolling(op: Option<&Operation>) -> bool {
    op.is_some_and(|o| o.kind == OperationKind::RollingUpgrade && o.step == OperationStep::RollOut)
}

/// Status during a rolling upgrade: phase `RollingUpgrade`; `Progressing` True with reason
/// `RollingUpgrade` and the counts (False, `RolloutStalled`, when it stalled, with `Degraded`
/// saying why); `Ready` stays True while taskmanagers process (the job never stops).
pub fn show(
    status: &mut StreamJobStatus,
    previous: Option<&StreamJobStatus>,
    op: &Operation,
    observed: &Observed,
    generation: Option<i64>,
    now: Timestamp,
) {
    status.phase = Phase::RollingUpgrade;
    let counts = Counts::of(observed.taskmanager.as_ref());
    let set = |status: &mut StreamJobStatus, type_: &str, value: bool, reason: &str, message| {
        let condition = crate::planner::conditions::condition(
            previous, type_, value, reason, message, generation, now,
        );
        crate::planner::replace_condition(status, condition);
    };
    match &op.message {
        Some(stalled) => {
            set(status, PROGRESSING, false, ROLLOUT_STALLED, stalled.clone());
            set(status, DEGRADED, true, ROLLOUT_STALLED, stalled.clone());
        }
        None => set(status, PROGRESSING, true, ROLLING_UPGRADE, counts.message()),
    }
    let was_ready = previous
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == READY))
        .is_some_and(|c| c.status == "True");
    if was_ready && counts.ready > 0 {
        let message = format!(
            "the job keeps processing on {} ready taskmanagers while they are replaced",
            counts.ready
        );
        set(status, READY, true, ROLLING_UPGRADE, message);
    }
}

/// The taskmanager Deployment's counts during a rollout.
struct Counts {
    desired: i32,
    updated: i32,
    ready: i32,
    /// Pods of both templates.
    total: i32,
}

impl Counts {
    fn of(deployment: Option<&Deployment>) -> Self {
        let status = deployment
            .and_then(|d| d.status.clone())
            .unwrap_or_default();
        Self {
            desired: deployment.and_then(|d| d.spec.replicas).unwrap_or(0),
            updated: status.updated_replicas.unwrap_or(0),
            ready: status.ready_replicas.unwrap_or(0),
            total: status.replicas.unwrap_or(0),
        }
    }

    fn message(&self) -> String {
        let old = (self.total - self.updated).max(0);
        format!(
            "rolling upgrade: {}/{} taskmanagers on the new template, {} ready, {old} old still running; the job keeps processing",
            self.updated, self.desired, self.ready
        )
    }
}
