//! The job's configuration: the `job.yaml` the operator renders into the job's ConfigMap and every
//! worker process (jobmanager, taskmanager, standalone) reads.
//!
//! This module is part of the crate's light surface (no `engine` feature needed): the operator builds
//! a [`JobConfig`] from a StreamJob spec and serialises it with `serde_yaml`, so the YAML a worker
//! reads is, by construction, the YAML the operator wrote. Every section has embedded defaults, so
//! an empty file is a valid standalone job.
//!
//! Secrets never live in this file: they come from the environment (see [`JobConfig::apply_env`]),
//! which the operator fills from `secretKeyRef`s.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Environment variable that overrides `sink.redis.password`.
pub const ENV_REDIS_PASSWORD: &str = "STREAMJOB_REDIS_PASSWORD";
/// Environment variable that sets `sink.redis.sentinel.password` (the sentinels' own password).
pub const ENV_REDIS_SENTINEL_PASSWORD: &str = "STREAMJOB_REDIS_SENTINEL_PASSWORD";
/// Environment variable that overrides `source.kafka.sasl.username`.
pub const ENV_KAFKA_SASL_USERNAME: &str = "STREAMJOB_KAFKA_SASL_USERNAME";
/// Environment variable that overrides `source.kafka.sasl.password`.
pub const ENV_KAFKA_SASL_PASSWORD: &str = "STREAMJOB_KAFKA_SASL_PASSWORD";
/// Environment variable with the bearer token the jobmanager's mutating REST endpoints require
/// (`jobmanager.apiToken`).
pub const ENV_API_TOKEN: &str = "STREAMJOB_API_TOKEN";

/// A configuration that cannot run, with the dotted path of the offending field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Parse(#[from] serde_yaml::Error),
    #[error("invalid config: field `{field}` {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// The whole `job.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct JobConfig {
    pub job: JobSection,
    pub source: SourceSection,
    pub sink: SinkSection,
    pub batch: BatchConfig,
    pub window: WindowConfig,
    pub checkpoint: CheckpointConfig,
    pub savepoint: SavepointConfig,
    pub jobmanager: JobManagerConfig,
    pub taskmanager: TaskManagerConfig,
    pub metrics: MetricsConfig,
    pub logging: LoggingConfig,
}

/// Identity of the job: it names the Redis fence keys and the state files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct JobSection {
    /// Job name (the StreamJob's name). Part of every fence key, so two jobs never share fences.
    pub name: String,
}

impl Default for JobSection {
    fn default() -> Self {
        Self {
            name: "trace".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SourceSection {
    pub kafka: KafkaSourceConfig,
}

/// Where a partition starts when neither a savepoint, a checkpoint nor a Redis fence says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StartingOffsets {
    #[default]
    Earliest,
    Latest,
}

/// SASL credentials for the brokers; the secret parts come from the environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SaslConfig {
    /// SASL mechanism, e.g. `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`.
    pub mechanism: String,
    /// Never rendered by the operator; set from `STREAMJOB_KAFKA_SASL_USERNAME`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Never rendered by the operator; set from `STREAMJOB_KAFKA_SASL_PASSWORD`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct KafkaSourceConfig {
    /// Bootstrap servers, comma separated `host:port`.
    pub brokers: String,
    /// The AnchorInfo topic.
    pub topic: String,
    /// Consumer group id, used only for reporting committed offsets to Kafka tooling; partitions are
    /// assigned by the jobmanager, never by group rebalance.
    pub group: String,
    pub starting_offsets: StartingOffsets,
    /// Dead-letter topic; `None` means `<topic>-dlq`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dlq_topic: Option<String>,
    /// `security.protocol` for librdkafka (`plaintext`, `ssl`, `sasl_plaintext`, `sasl_ssl`).
    pub security_protocol: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sasl: Option<SaslConfig>,
    /// Extra librdkafka properties, passed through as they are.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaSourceConfig {
    fn default() -> Self {
        Self {
            brokers: "localhost:9092".into(),
            topic: "austinTraceLog".into(),
            group: "austinLogGroup".into(),
            starting_offsets: StartingOffsets::Earliest,
            dlq_topic: None,
            security_protocol: "plaintext".into(),
            sasl: None,
            properties: BTreeMap::new(),
        }
    }
}

impl KafkaSourceConfig {
    /// The dead-letter topic actually used.
    pub fn dlq_topic(&self) -> String {
        self.dlq_topic
            .clone()
            .unwrap_or_else(|| format!("{}-dlq", self.topic))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SinkSection {
    pub redis: RedisSinkConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RedisSinkConfig {
    /// `redis://host:port/db`, `rediss://host:port/db` (TLS) or `unix:///path/to/socket`. No
    /// password in it: use the environment. A Redis 6+ ACL user may be given here
    /// (`rediss://user@host:6380/0`) or in `username`.
    pub url: String,
    /// Redis 6+ ACL user (`AUTH username password`); `None` is the `default` user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Never rendered by the operator; set from `STREAMJOB_REDIS_PASSWORD`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Certificates for `rediss://` (PEM files, mounted from Secrets by the operator). Without it
    /// a `rediss://` URL trusts the system's CA roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<RedisTlsConfig>,
    /// IANA time zone whose midnight ends user-trace keys.
    pub time_zone: String,
    /// Prefix for every key written, to isolate jobs sharing one Redis. Empty is austin's layout.
    pub key_prefix: String,
    /// A Sentinel-managed primary: the sink asks these sentinels for the primary's address and
    /// asks again after connection errors and `READONLY` replies (a failover). `url` then only
    /// selects the database (`redis://sentinel/2`); its host and port are not used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentinel: Option<RedisSentinelConfig>,
    /// A Redis Cluster: the sink reads the slot map from these seed nodes. `url` then only
    /// selects the scheme (`redis://cluster` or `rediss://cluster` for TLS); its host is not
    /// used, and the database must be 0 (a cluster has no other).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<RedisClusterConfig>,
}

/// `sink.redis.cluster`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RedisClusterConfig {
    /// Seed node addresses, `host:port`: any nodes of the cluster, primaries or replicas.
    pub nodes: Vec<String>,
}

/// TLS files for the Redis connection: a CA to verify the server with, and an optional client
/// certificate and key for mutual TLS (`tls-auth-clients yes`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RedisTlsConfig {
    /// PEM CA certificate(s) that sign the server's certificate; `None` = the system's roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for mutual TLS; needs `keyFile`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `certFile`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The DNS name the server's certificate must carry (and the TLS SNI), when it differs from
    /// the host the sink connects to: the URL's host, or the primary the sentinels name (an IP).
    /// `None`: the connected host itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

impl Default for RedisSinkConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/0".into(),
            username: None,
            password: None,
            tls: None,
            time_zone: "Asia/Shanghai".into(),
            key_prefix: String::new(),
            sentinel: None,
            cluster: None,
        }
    }
}

/// `sink.redis.sentinel`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RedisSentinelConfig {
    /// The name the sentinels monitor the primary under (`sentinel monitor NAME ...`).
    pub master_name: String,
    /// Sentinel addresses, `host:port`.
    pub nodes: Vec<String>,
    /// Never rendered by the operator; set from `STREAMJOB_REDIS_SENTINEL_PASSWORD`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// How events of one partition are grouped into one atomic Redis script call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Flush when this many events are buffered for a partition.
    pub max_events: usize,
    /// Flush at the latest this long after the first buffered event.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// On SIGTERM or when a partition moves, how long its in-flight batch may keep retrying
    /// against an unreachable Redis or broker before the partition stops without it. Nothing is
    /// lost: the batch was not applied, and whoever owns the partition next re-reads it from the
    /// fence. Keep it below the pod's `terminationGracePeriodSeconds` (30 s by default), so the
    /// process exits on its own rather than being killed.
    #[serde(with = "humantime_serde")]
    pub stop_timeout: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_events: 1000,
            linger: Duration::from_millis(20),
            stop_timeout: Duration::from_secs(20),
        }
    }
}

/// The per-template event-time series: tumbling windows on `logTimestamp`, watermarks and late
/// data (see `sink::redis::window`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct WindowConfig {
    /// Write the series at all (on by default).
    pub enabled: bool,
    /// Window length: a whole number of minutes that divides an hour (1m, 2m, 5m, … 60m).
    #[serde(with = "humantime_serde")]
    pub size: Duration,
    /// A partition's watermark is the largest event time it has seen minus this.
    #[serde(with = "humantime_serde")]
    pub max_out_of_orderness: Duration,
    /// A window is final (closed) once the job's watermark passes its end plus this; events for
    /// it after that are late.
    #[serde(with = "humantime_serde")]
    pub allowed_lateness: Duration,
    /// A partition without records for this long is idle: it does not hold the job's watermark.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            size: Duration::from_secs(60),
            max_out_of_orderness: Duration::from_secs(5),
            allowed_lateness: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Time between checkpoints; `0s` disables them.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Directory for checkpoints and savepoints (the PVC's mount).
    pub dir: PathBuf,
    /// How many complete checkpoints to keep.
    pub retain: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            dir: PathBuf::from("/var/lib/streamjob"),
            retain: 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SavepointConfig {
    /// Where savepoints go; `None` means `<checkpoint.dir>/savepoints`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Time between periodic savepoints; `0s` disables them.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Keep at most this many savepoints (the newest complete one is always kept).
    pub max_count: usize,
    /// Delete savepoints older than this (the newest complete one is always kept); `0s` = no limit.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Restore from this savepoint instead of the newest checkpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restore_from: Option<PathBuf>,
    /// Allow restoring a savepoint whose topic or partition count differs from the job's.
    pub allow_non_restored_state: bool,
}

impl Default for SavepointConfig {
    fn default() -> Self {
        Self {
            dir: None,
            interval: Duration::ZERO,
            max_count: 5,
            max_age: Duration::ZERO,
            restore_from: None,
            allow_non_restored_state: false,
        }
    }
}

/// Where the jobmanager listens and how taskmanagers reach it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct JobManagerConfig {
    /// Bind address of the jobmanager's REST API (Flink's port).
    pub bind: String,
    /// URL taskmanagers use to reach the jobmanager.
    pub url: String,
    /// Taskmanager heartbeat period.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A taskmanager silent for this long is considered dead and its partitions are reassigned.
    #[serde(with = "humantime_serde")]
    pub heartbeat_timeout: Duration,
    /// A file holding the bearer token the mutating REST endpoints require (savepoint and
    /// checkpoint triggers, stop-with-savepoint). Read at every such request, so a rotated
    /// Secret volume takes effect without a restart. The operator mounts the job's
    /// `<job>-api-token` Secret here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_token_file: Option<PathBuf>,
    /// The token itself; never written out, set from `STREAMJOB_API_TOKEN`. Wins over
    /// `apiTokenFile`.
    #[serde(skip_serializing)]
    pub api_token: Option<String>,
}

impl Default for JobManagerConfig {
    fn default() -> Self {
        Self {
            bind: "0.0.0.0:8081".into(),
            url: "http://127.0.0.1:8081".into(),
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(10),
            api_token_file: None,
            api_token: None,
        }
    }
}

/// How taskmanagers behave towards the jobmanager.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TaskManagerConfig {
    /// While no jobmanager answers (it restarts, or is being replaced), a taskmanager keeps
    /// processing the partitions it owns for this long; then it releases them (flush, stop) and
    /// keeps trying to register. Their Redis fences keep every event exactly-once either way.
    #[serde(with = "humantime_serde")]
    pub jobmanager_grace: Duration,
}

impl Default for TaskManagerConfig {
    fn default() -> Self {
        Self {
            jobmanager_grace: Duration::from_secs(120),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Bind address of `/metrics` and `/healthz` on taskmanagers and standalone processes
    /// (the jobmanager serves them on its REST port too).
    pub bind: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            bind: "0.0.0.0:9249".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LoggingConfig {
    pub format: LogFormat,
    /// `tracing` env-filter directive, e.g. `info` or `info,streamjob_worker=debug`.
    pub level: String,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

impl JobConfig {
    /// Parses `job.yaml` text and validates it. Does not read the environment.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let config: JobConfig = if text.trim().is_empty() {
            JobConfig::default()
        } else {
            serde_yaml::from_str(text)?
        };
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml(&text)
    }

    /// The YAML the operator puts into the ConfigMap.
    pub fn to_yaml(&self) -> Result<String, ConfigError> {
        Ok(serde_yaml::to_string(self)?)
    }

    /// Fills secrets from the environment (`lookup` is `std::env::var` outside tests).
    pub fn apply_env(&mut self, lookup: impl Fn(&str) -> Option<String>) {
        if let Some(token) = lookup(ENV_API_TOKEN).filter(|t| !t.trim().is_empty()) {
            self.jobmanager.api_token = Some(token.trim().to_string());
        }
        if let Some(password) = lookup(ENV_REDIS_PASSWORD) {
            self.sink.redis.password = Some(password);
        }
        if let (Some(sentinel), Some(password)) = (
            self.sink.redis.sentinel.as_mut(),
            lookup(ENV_REDIS_SENTINEL_PASSWORD),
        ) {
            sentinel.password = Some(password);
        }
        let username = lookup(ENV_KAFKA_SASL_USERNAME);
        let password = lookup(ENV_KAFKA_SASL_PASSWORD);
        if username.is_some() || password.is_some() {
            let sasl = self
                .source
                .kafka
                .sasl
                .get_or_insert_with(SaslConfig::default);
            if username.is_some() {
                sasl.username = username;
            }
            if password.is_some() {
                sasl.password = password;
            }
        }
    }

    /// Checks what serde cannot: every error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.job.name.is_empty() || !self.job.name.chars().all(is_name_char) {
            return Err(invalid(
                "job.name",
                "must be non-empty and use only letters, digits, '-', '_' and '.'",
            ));
        }
        let kafka = &self.source.kafka;
        if kafka.brokers.trim().is_empty() {
            return Err(invalid(
                "source.kafka.brokers",
                "must list at least one host:port",
            ));
        }
        validate_topic("source.kafka.topic", &kafka.topic)?;
        if let Some(dlq) = &kafka.dlq_topic {
            validate_topic("source.kafka.dlqTopic", dlq)?;
        }
        if kafka.dlq_topic() == kafka.topic {
            return Err(invalid(
                "source.kafka.dlqTopic",
                "must differ from source.kafka.topic",
            ));
        }
        if kafka.group.is_empty() {
            return Err(invalid("source.kafka.group", "must not be empty"));
        }
        let redis = &self.sink.redis;
        if !(redis.url.starts_with("redis://")
            || redis.url.starts_with("rediss://")
            || redis.url.starts_with("unix://"))
        {
            return Err(invalid(
                "sink.redis.url",
                format!(
                    "must start with redis://, rediss:// or unix:// (got {:?})",
                    redis.url
                ),
            ));
        }
        validate_redis_security(redis)?;
        if let Some(sentinel) = &redis.sentinel {
            validate_sentinel(sentinel, &redis.url)?;
        }
        if let Some(cluster) = &redis.cluster {
            validate_cluster(cluster, redis)?;
        }
        if redis.time_zone.is_empty() {
            return Err(invalid(
                "sink.redis.timeZone",
                "must name an IANA time zone",
            ));
        }
        if self.batch.max_events == 0 {
            return Err(invalid("batch.maxEvents", "must be at least 1"));
        }
        let window = &self.window;
        let size = window.size.as_secs();
        if window.size.subsec_nanos() != 0
            || size == 0
            || !size.is_multiple_of(60)
            || !3600u64.is_multiple_of(size)
        {
            return Err(invalid(
                "window.size",
                "must be a whole number of minutes that divides an hour (1m, 2m, 5m, … 60m)",
            ));
        }
        if window.max_out_of_orderness > Duration::from_secs(24 * 3600) {
            return Err(invalid("window.maxOutOfOrderness", "must be at most 1 day"));
        }
        if window.allowed_lateness > Duration::from_secs(24 * 3600) {
            return Err(invalid("window.allowedLateness", "must be at most 1 day"));
        }
        if window.idle_timeout.is_zero() {
            return Err(invalid("window.idleTimeout", "must be greater than 0"));
        }
        if self.checkpoint.retain == 0 {
            return Err(invalid("checkpoint.retain", "must be at least 1"));
        }
        if self.savepoint.max_count == 0 {
            return Err(invalid("savepoint.maxCount", "must be at least 1"));
        }
        if self.jobmanager.heartbeat_interval.is_zero() {
            return Err(invalid(
                "jobmanager.heartbeatInterval",
                "must be greater than 0",
            ));
        }
        if self.jobmanager.heartbeat_timeout <= self.jobmanager.heartbeat_interval {
            return Err(invalid(
                "jobmanager.heartbeatTimeout",
                "must be longer than jobmanager.heartbeatInterval",
            ));
        }
        if self.taskmanager.jobmanager_grace <= self.jobmanager.heartbeat_interval {
            return Err(invalid(
                "taskmanager.jobmanagerGrace",
                format!(
                    "must be longer than jobmanager.heartbeatInterval ({:?}), or one late answer \
                     would release every partition",
                    self.jobmanager.heartbeat_interval
                ),
            ));
        }
        Ok(())
    }

    /// Directory that holds savepoints.
    pub fn savepoint_dir(&self) -> PathBuf {
        self.savepoint
            .dir
            .clone()
            .unwrap_or_else(|| self.checkpoint.dir.join("savepoints"))
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// `sink.redis.tls` and `sink.redis.username`: TLS files only with `rediss://`, a client
/// certificate only with its key, no password in the URL.
fn validate_redis_security(redis: &RedisSinkConfig) -> Result<(), ConfigError> {
    if let Some(tls) = &redis.tls {
        if !redis.url.starts_with("rediss://") {
            return Err(invalid(
                "sink.redis.tls",
                format!("needs a rediss:// URL (got {:?})", redis.url),
            ));
        }
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return Err(invalid(
                "sink.redis.tls.certFile",
                "and sink.redis.tls.keyFile must be set together (mutual TLS)",
            ));
        }
        if let Some(name) = tls.server_name.as_deref() {
            if !is_dns_name(name) {
                return Err(invalid(
                    "sink.redis.tls.serverName",
                    format!(
                        "{name:?} is not a DNS name (lower-case labels of [a-z0-9-], dot-separated, \
                         at most 253 characters)"
                    ),
                ));
            }
        }
    }
    if redis.username.as_deref() == Some("") {
        return Err(invalid(
            "sink.redis.username",
            "must not be empty (leave it out for the default user)",
        ));
    }
    let authority = redis
        .url
        .split_once("://")
        .map(|(_, rest)| rest.split('/').next().unwrap_or(""))
        .unwrap_or("");
    if let Some((userinfo, _)) = authority.rsplit_once('@') {
        if userinfo.contains(':') {
            return Err(invalid(
                "sink.redis.url",
                "must not carry a password: set it in STREAMJOB_REDIS_PASSWORD (a Secret)",
            ));
        }
    }
    Ok(())
}

/// An RFC 1123 DNS name, as a certificate's `subjectAltName` carries it: lower-case labels of
/// 1-63 characters `[a-z0-9-]`, not starting or ending with `-`; at most 253 characters. The
/// CRD's `spec.redis.tls.serverName` pattern is the same rule.
pub fn is_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

/// Kafka's own topic rule: 1–249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_topic(field: &'static str, topic: &str) -> Result<(), ConfigError> {
    if topic.is_empty() || topic.len() > 249 || topic == "." || topic == ".." {
        return Err(invalid(
            field,
            "must be 1-249 characters and not '.' or '..'",
        ));
    }
    if !topic.chars().all(is_name_char) {
        return Err(invalid(
            field,
            format!("{topic:?} may only contain [a-zA-Z0-9._-]"),
        ));
    }
    Ok(())
}

/// Why a cluster's key prefix holds no `{`. Redis Cluster hashes only the text between a key's
/// first `{` and the next `}` when there is one (a hash tag): a tag in the prefix would put every
/// key, and every slot's fence, into one slot; an unclosed `{` would take the tag that places
/// each slot's fence in its slot into a longer one, and the fences would land elsewhere.
pub const CLUSTER_KEY_PREFIX_RULE: &str = "must not contain '{' with sink.redis.cluster: a hash \
     tag ({...}) in the prefix would put every key, and every slot's fence, into one slot";

fn validate_cluster(
    cluster: &RedisClusterConfig,
    redis: &RedisSinkConfig,
) -> Result<(), ConfigError> {
    if redis.sentinel.is_some() {
        return Err(invalid(
            "sink.redis.cluster",
            "cannot be combined with sink.redis.sentinel (a cluster fails over by itself)",
        ));
    }
    if redis.url.starts_with("unix://") {
        return Err(invalid(
            "sink.redis.url",
            "must be redis:// or rediss:// with sink.redis.cluster (it then only selects TLS)",
        ));
    }
    let database = redis
        .url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(_, db)| db.trim_end_matches('/'))
        .filter(|db| !db.is_empty());
    if database.is_some_and(|db| db != "0") {
        return Err(invalid(
            "sink.redis.url",
            "must select database 0 (or none) with sink.redis.cluster: a Redis Cluster has no other",
        ));
    }
    if redis.key_prefix.contains('{') {
        return Err(invalid("sink.redis.keyPrefix", CLUSTER_KEY_PREFIX_RULE));
    }
    if cluster.nodes.is_empty() {
        return Err(invalid(
            "sink.redis.cluster.nodes",
            "must list at least one cluster node as host:port",
        ));
    }
    for node in &cluster.nodes {
        if !is_host_port(node) {
            return Err(invalid(
                "sink.redis.cluster.nodes",
                format!("{node:?} is not host:port"),
            ));
        }
    }
    Ok(())
}

fn is_host_port(node: &str) -> bool {
    let port = node
        .rsplit_once(':')
        .map(|(host, port)| (host, port.parse::<u16>()));
    matches!(port, Some((host, Ok(_))) if !host.is_empty())
}

fn validate_sentinel(sentinel: &RedisSentinelConfig, url: &str) -> Result<(), ConfigError> {
    if url.starts_with("unix://") {
        return Err(invalid(
            "sink.redis.url",
            "must be redis:// or rediss:// with sink.redis.sentinel (it selects the database)",
        ));
    }
    if sentinel.master_name.trim().is_empty() {
        return Err(invalid(
            "sink.redis.sentinel.masterName",
            "must not be empty",
        ));
    }
    if sentinel.nodes.is_empty() {
        return Err(invalid(
            "sink.redis.sentinel.nodes",
            "must list at least one sentinel as host:port",
        ));
    }
    for node in &sentinel.nodes {
        let port = node
            .rsplit_once(':')
            .map(|(host, port)| (host, port.parse::<u16>()));
        if !matches!(port, Some((host, Ok(_))) if !host.is_empty()) {
            return Err(invalid(
                "sink.redis.sentinel.nodes",
                format!("{node:?} is not host:port"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_embedded_default_job() {
        let config = JobConfig::from_yaml("").expect("defaults are valid");
        assert_eq!(config, JobConfig::default());
        assert_eq!(config.source.kafka.topic, "austinTraceLog");
        assert_eq!(config.source.kafka.dlq_topic(), "austinTraceLog-dlq");
        assert_eq!(config.sink.redis.time_zone, "Asia/Shanghai");
    }

    #[test]
    fn the_jobmanager_grace_is_checked_against_the_heartbeat_interval() {
        let config = JobConfig::from_yaml("taskmanager:\n  jobmanagerGrace: 45s\n").expect("valid");
        assert_eq!(config.taskmanager.jobmanager_grace, Duration::from_secs(45));
        assert_eq!(
            JobConfig::default().taskmanager.jobmanager_grace,
            Duration::from_secs(120)
        );
        let err = JobConfig::from_yaml("taskmanager:\n  jobmanagerGrace: 500ms\n")
            .expect_err("shorter than a heartbeat interval");
        assert!(
            err.to_string().contains("taskmanager.jobmanagerGrace"),
            "{err}"
        );
        JobConfig::from_yaml("taskmanager:\n  jobmanagerGrace: soon\n")
            .expect_err("not a duration");
    }

    #[test]
    fn yaml_round_trips_through_the_operator_rendering() {
        let mut config = JobConfig::default();
        config.job.name = "trace-eu".into();
        config.batch.linger = Duration::from_millis(50);
        config.sink.redis.key_prefix = "eu:".into();
        let yaml = config.to_yaml().expect("serialises");
        assert!(yaml.contains("linger: 50ms"), "{yaml}");
        assert_eq!(JobConfig::from_yaml(&yaml).expect("parses"), config);
    }

    #[test]
    fn redis_tls_and_acl_settings_are_checked_naming_the_field() {
        let ok = "sink:\n  redis:\n    url: rediss://redis.example:6380/0\n    username: app\n    tls:\n      caFile: /etc/ca.crt\n      certFile: /etc/tls.crt\n      keyFile: /etc/tls.key\n";
        let config = JobConfig::from_yaml(ok).expect("valid TLS settings");
        let tls = config.sink.redis.tls.as_ref().expect("tls");
        assert_eq!(tls.ca_file.as_deref(), Some(Path::new("/etc/ca.crt")));
        assert_eq!(config.sink.redis.username.as_deref(), Some("app"));
        for (yaml, field) in [
            (
                "sink:\n  redis:\n    url: redis://h:6379/0\n    tls:\n      caFile: /ca\n",
                "sink.redis.tls",
            ),
            (
                "sink:\n  redis:\n    url: rediss://h:6379/0\n    tls:\n      certFile: /c\n",
                "sink.redis.tls.certFile",
            ),
            (
                "sink:\n  redis:\n    url: rediss://app:pw@h:6379/0\n",
                "sink.redis.url",
            ),
            ("sink:\n  redis:\n    username: ''\n", "sink.redis.username"),
            (
                "sink:\n  redis:\n    url: rediss://10.0.0.5:6380/0\n    tls:\n      serverName: Redis_Internal\n",
                "sink.redis.tls.serverName",
            ),
        ] {
            let err = JobConfig::from_yaml(yaml).expect_err(yaml);
            assert!(err.to_string().contains(field), "{yaml}: {err}");
        }
        let with_name = "sink:\n  redis:\n    url: rediss://10.0.0.5:6380/0\n    tls:\n      serverName: redis.internal\n";
        let config = JobConfig::from_yaml(with_name).expect("a DNS name");
        let tls = config.sink.redis.tls.as_ref().expect("tls");
        assert_eq!(tls.server_name.as_deref(), Some("redis.internal"));
        for name in ["redis", "a-1.example.com", "x.y"] {
            assert!(is_dns_name(name), "{name}");
        }
        for name in [
            "",
            "-a.example",
            "a-.example",
            "a..b",
            "A.example",
            "a_b",
            "10.0.0.5:1",
        ] {
            assert!(!is_dns_name(name), "{name}");
        }
        assert!(!is_dns_name(&format!("{}.example", "a".repeat(64))));
        // A user without a password in the URL is fine (the password comes from the env).
        JobConfig::from_yaml("sink:\n  redis:\n    url: rediss://app@h:6380/0\n")
            .expect("user in the URL");
    }

    #[test]
    fn an_unknown_field_is_refused_by_name() {
        let err = JobConfig::from_yaml("batch:\n  maxEvent: 10\n").unwrap_err();
        assert!(err.to_string().contains("maxEvent"), "{err}");
    }

    #[test]
    fn an_invalid_value_names_its_field() {
        let err = JobConfig::from_yaml("source:\n  kafka:\n    topic: 'bad topic'\n").unwrap_err();
        assert!(err.to_string().contains("source.kafka.topic"), "{err}");
        let err = JobConfig::from_yaml("sink:\n  redis:\n    url: 'http://x'\n").unwrap_err();
        assert!(err.to_string().contains("sink.redis.url"), "{err}");
        let err = JobConfig::from_yaml("batch:\n  maxEvents: 0\n").unwrap_err();
        assert!(err.to_string().contains("batch.maxEvents"), "{err}");
        for size in ["90s", "7m", "0s", "2h"] {
            let err = JobConfig::from_yaml(&format!("window:\n  size: {size}\n")).unwrap_err();
            assert!(err.to_string().contains("window.size"), "{size}: {err}");
        }
        let ok = JobConfig::from_yaml("window:\n  size: 5m\n  enabled: false\n").expect("valid");
        assert!(!ok.window.enabled);
    }

    #[test]
    fn secrets_come_from_the_environment_and_are_never_rendered_empty() {
        let mut config = JobConfig::default();
        config.apply_env(|name| match name {
            ENV_REDIS_PASSWORD => Some("r-secret".into()),
            ENV_KAFKA_SASL_PASSWORD => Some("k-secret".into()),
            _ => None,
        });
        assert_eq!(config.sink.redis.password.as_deref(), Some("r-secret"));
        let sasl = config.source.kafka.sasl.as_ref().expect("sasl filled");
        assert_eq!(sasl.password.as_deref(), Some("k-secret"));
        assert!(sasl.username.is_none());
        let rendered = JobConfig::default().to_yaml().expect("serialises");
        assert!(!rendered.contains("password"), "{rendered}");
    }

    #[test]
    fn a_sentinel_primary_is_named_in_yaml_and_its_password_comes_from_the_environment() {
        let yaml = "sink:\n  redis:\n    url: redis://sentinel/2\n    sentinel:\n      masterName: trace\n      nodes: [\"s1:26379\", \"s2:26379\"]\n";
        let mut config = JobConfig::from_yaml(yaml).expect("valid");
        let sentinel = config.sink.redis.sentinel.clone().expect("sentinel");
        assert_eq!(sentinel.master_name, "trace");
        assert_eq!(sentinel.nodes, ["s1:26379", "s2:26379"]);
        assert_eq!(sentinel.password, None);
        config.apply_env(|name| (name == ENV_REDIS_SENTINEL_PASSWORD).then(|| "s3cret".into()));
        let sentinel = config.sink.redis.sentinel.clone().expect("sentinel");
        assert_eq!(sentinel.password.as_deref(), Some("s3cret"));
        let rendered = JobConfig::default().to_yaml().expect("yaml");
        assert!(!rendered.contains("sentinel"), "{rendered}");

        for (bad, field) in [
            (
                "masterName: ''\n      nodes: [\"s1:26379\"]",
                "sink.redis.sentinel.masterName",
            ),
            (
                "masterName: m\n      nodes: []",
                "sink.redis.sentinel.nodes",
            ),
            (
                "masterName: m\n      nodes: [\"s1\"]",
                "sink.redis.sentinel.nodes",
            ),
        ] {
            let yaml = format!("sink:\n  redis:\n    sentinel:\n      {bad}\n");
            let err = JobConfig::from_yaml(&yaml).expect_err(bad);
            assert!(err.to_string().contains(field), "{bad}: {err}");
        }
    }

    #[test]
    fn a_cluster_is_named_by_seed_nodes_and_refuses_what_a_cluster_cannot_do() {
        let yaml = "sink:\n  redis:\n    url: rediss://cluster\n    cluster:\n      nodes: [\"r1:6379\", \"r2:6379\"]\n";
        let config = JobConfig::from_yaml(yaml).expect("valid");
        let cluster = config.sink.redis.cluster.clone().expect("cluster");
        assert_eq!(cluster.nodes, ["r1:6379", "r2:6379"]);
        let rendered = JobConfig::default().to_yaml().expect("yaml");
        assert!(!rendered.contains("cluster"), "{rendered}");
        for (url, extra, nodes, field) in [
            ("redis://cluster/0", "", "[]", "sink.redis.cluster.nodes"),
            (
                "redis://cluster",
                "",
                "[\"r1\"]",
                "sink.redis.cluster.nodes",
            ),
            ("redis://cluster/2", "", "[\"r1:1\"]", "sink.redis.url"),
            ("unix:///tmp/r.sock", "", "[\"r1:1\"]", "sink.redis.url"),
            (
                "redis://cluster",
                "\n    sentinel:\n      masterName: m\n      nodes: [\"s:1\"]",
                "[\"r1:1\"]",
                "sink.redis.cluster",
            ),
        ] {
            let yaml = format!(
                "sink:\n  redis:\n    url: {url}{extra}\n    cluster:\n      nodes: {nodes}\n"
            );
            let err = JobConfig::from_yaml(&yaml).expect_err(&yaml);
            assert!(err.to_string().contains(field), "{yaml}: {err}");
        }
    }

    #[test]
    fn a_key_prefix_with_a_hash_tag_is_refused_on_a_cluster_only() {
        let yaml = |prefix: &str, cluster: bool| {
            let topology = match cluster {
                true => "url: redis://cluster\n    cluster:\n      nodes: [\"r1:6379\"]",
                false => "url: redis://r1:6379/0",
            };
            format!("sink:\n  redis:\n    {topology}\n    keyPrefix: \"{prefix}\"\n")
        };
        for prefix in ["{eu}:", "eu{", "{}"] {
            let err = JobConfig::from_yaml(&yaml(prefix, true)).expect_err(prefix);
            let message = err.to_string();
            assert!(message.contains("sink.redis.keyPrefix"), "{message}");
            assert!(message.contains("hash tag"), "{message}");
            // A single node has no slots: the same prefix only names its keys.
            JobConfig::from_yaml(&yaml(prefix, false)).expect("valid on a single node");
        }
        JobConfig::from_yaml(&yaml("eu}:", true)).expect("a '}' alone opens no tag");
    }
}
