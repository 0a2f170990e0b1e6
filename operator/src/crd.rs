//! The `StreamJob` API (`streaming.austin.dev/v1alpha1`): spec, status and the CRD's validation.
//!
//! Every doc comment here becomes the field's `description` in the generated CRD, so it is what
//! `kubectl explain streamjob.spec...` prints. Validation lives in the CRD itself (OpenAPI types,
//! ranges, enums and CEL rules whose messages name the field), so no admission webhook is needed.
//! `crds/streamjob.yaml` is generated from these types (`streamjob-operator crd`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, ResourceRequirements, Toleration,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub mod bounds;
pub use bounds::{unbounded_rule_inputs, Missing, Unbounded};

/// API group of the StreamJob resource.
pub const GROUP: &str = "streaming.austin.dev";
/// API version of the StreamJob resource.
pub const VERSION: &str = "v1alpha1";
/// Savepoints kept in `status.savepointHistory` (newest first).
pub const SAVEPOINT_HISTORY_CAP: usize = 10;

// Size bounds of the values CEL rules read. The API server estimates each rule's worst-case cost
// from the schema when the CRD is applied; without these it assumes every string, list and map
// is as large as a whole request and refuses the CRD ("estimated rule cost exceeds budget"), so
// `crd_yaml` refuses to generate one where a rule reads an unbounded value (see `bounds`).
// Where a rule already states a limit, the bound is that limit; elsewhere it is a generous
// production limit, far above any real value.

/// DNS-1123 subdomains (Secret and StorageClass names) and DNS names: 253 characters.
const DNS_NAME_MAX: u32 = 253;
/// Secret data keys: the same limit as the names (Kubernetes' own).
const SECRET_KEY_MAX: u32 = 253;
/// An image reference: repository name (at most 255, the registry's own limit), `:` tag (at
/// most 128) and `@sha256:` digest (71) add up to 456.
const IMAGE_MAX: u32 = 512;
/// Bootstrap servers: dozens of `host:port` entries with long DNS names still fit.
const BROKERS_MAX: u32 = 4096;
/// Kafka's own topic name limit.
const TOPIC_MAX: u32 = 249;
/// Consumer group ids: the limit the rule states.
const GROUP_MAX: u32 = 255;
/// Extra librdkafka properties: librdkafka has about 200 settings; a job sets a handful.
const KAFKA_PROPERTIES_MAX: u32 = 128;
/// A librdkafka property value (cipher lists and OAuth configs are the long ones).
const KAFKA_PROPERTY_VALUE_MAX: u32 = 4096;
/// A Redis URL: a DNS host (253), port, database and query options; a unix socket path is at
/// most 108 bytes.
const REDIS_URL_MAX: u32 = 1024;
/// Redis ACL user names: the limit the rule states.
const REDIS_USERNAME_MAX: u32 = 128;
/// IANA time zone names (the longest is 32 characters).
const TIME_ZONE_MAX: u32 = 64;
/// The Redis key prefix: the limit the rule states.
const KEY_PREFIX_MAX: u32 = 64;
/// Sentinel monitor names: the limit the rule states.
const MASTER_NAME_MAX: u32 = 128;
/// Sentinels: the limit the rule states.
const SENTINEL_NODES_MAX: u32 = 16;
/// A sentinel address: a DNS host (253), `:` and a port (5 digits).
const SENTINEL_NODE_MAX: u32 = 259;
/// Cluster seed nodes: the limit the rule states.
const CLUSTER_NODES_MAX: u32 = 16;
/// A cluster node address: a DNS host (253), `:` and a port (5 digits).
const CLUSTER_NODE_MAX: u32 = 259;
/// Durations (`1m30s`): real values are a few characters.
const DURATION_MAX: u32 = 64;
/// Quantities (`1Gi`, `500Mi`): real values are a few characters.
const QUANTITY_MAX: u32 = 64;
/// A `tracing` filter: a level and per-crate directives.
const LOG_FILTER_MAX: u32 = 1024;
/// Extra pod labels.
const POD_LABELS_MAX: u32 = 64;
/// Kubernetes' own label value limit.
const LABEL_VALUE_MAX: u32 = 63;

/// A streaming job: the austin message-trace pipeline (Kafka AnchorInfo events to Redis trace data),
/// run by one jobmanager and `spec.replicas` taskmanagers.
// Several printer columns share a `type_`: not a duplicate, whatever the lint thinks.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "streaming.austin.dev",
    version = "v1alpha1",
    kind = "StreamJob",
    plural = "streamjobs",
    singular = "streamjob",
    shortname = "sj",
    category = "streaming",
    namespaced,
    status = "StreamJobStatus",
    derive = "PartialEq",
    doc = "A StreamJob runs the austin message-trace pipeline: Kafka AnchorInfo events to per-user, per-message and per-template trace data in Redis, exactly once.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Lifecycle phase"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".spec.replicas",
        description = "Desired taskmanagers"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Ready taskmanagers"
    ),
    printcolumn(
        name = "Lag",
        type_ = "integer",
        json_path = ".status.job.lag",
        description = "Records behind the topic's end, over all partitions"
    ),
    printcolumn(
        name = "Last Savepoint",
        type_ = "date",
        json_path = ".status.lastSavepoint.completedAt",
        description = "When the newest savepoint completed"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("self.upgradeMode != 'last-state' || self.checkpoint.interval.matches('[1-9]')").message("spec.upgradeMode: last-state needs periodic checkpoints (spec.checkpoint.interval must not be 0s)"),
    validation = Rule::new("!(self.savepoint.onDelete.pvc == 'delete' && self.savepoint.onDelete.finalSavepoint)").message("spec.savepoint.onDelete: a final savepoint is pointless when the PVC holding it is deleted; set finalSavepoint: false or pvc: keep"),
    validation = Rule::new("!has(self.kafka.sasl) || self.kafka.securityProtocol in ['sasl_plaintext', 'sasl_ssl']").message("spec.kafka.securityProtocol must be sasl_plaintext or sasl_ssl when spec.kafka.sasl is set"),
    validation = Rule::new("!has(self.kafka.tls) || self.kafka.securityProtocol in ['ssl', 'sasl_ssl']").message("spec.kafka.securityProtocol must be ssl or sasl_ssl when spec.kafka.tls is set")
)]
#[serde(rename_all = "camelCase")]
pub struct StreamJobSpec {
    /// Container image of streamjob-worker, e.g. `registry.example/streamjob-worker:0.1.0`
    /// (at most 512 characters).
    #[schemars(length(max = IMAGE_MAX))]
    #[x_kube(validation = Rule::new("self.size() > 0 && !self.contains(' ')").message("spec.image must be a non-empty image reference without spaces"))]
    pub image: String,

    /// When the kubelet pulls the image.
    #[serde(default)]
    pub image_pull_policy: PullPolicy,

    /// Secrets with registry credentials for pulling the image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,

    /// Number of taskmanagers. Rescaling is in place (partitions are reassigned, no redeploy).
    /// `kubectl scale sj/NAME --replicas=N` and HorizontalPodAutoscalers set this field. Ignored
    /// while `autoscaler.enabled` is true in mode `scale`: the autoscaler then sets the count
    /// (see `status.autoscaler`).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,

    /// Desired state of the job: `running`, or `suspended` (all processes stopped, state kept).
    #[serde(default)]
    pub state: JobState,

    /// How a spec change reaches running processes: `rolling` (the default: new taskmanagers
    /// start next to the old ones and take their partitions over through the fenced handoff, the
    /// job never stops; a change of what the Redis fences mean, such as the topic, the Kafka
    /// cluster, the key prefix or the Redis target, falls back to `savepoint` and says so in an
    /// Event), `savepoint` (stop with a savepoint, restart from it), `last-state` (restart from
    /// the newest checkpoint) or `stateless` (restart from the Redis fences and configured
    /// starting offsets).
    #[serde(default)]
    pub upgrade_mode: UpgradeMode,

    /// How a rolling upgrade (`upgradeMode: rolling`) proceeds.
    #[serde(default)]
    pub rolling: RollingSpec,

    /// Change this value (any new number) to restart every process of the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_nonce: Option<i64>,

    /// Change this value (any new number) to take a savepoint now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint_trigger_nonce: Option<i64>,

    /// Kafka source: where the AnchorInfo events come from.
    pub kafka: KafkaSpec,

    /// Redis sink: where the trace data goes.
    pub redis: RedisSpec,

    /// How events of one partition are grouped into one atomic Redis write.
    #[serde(default)]
    pub batch: BatchSpec,

    /// The per-template, per-minute event-time series (windows, watermarks, late data).
    #[serde(default)]
    pub window: WindowSpec,

    /// Periodic checkpoints (consistent offsets of every partition, on the savepoint volume).
    #[serde(default)]
    pub checkpoint: CheckpointSpec,

    /// Savepoint storage, retention and what happens to it when the StreamJob is deleted.
    #[serde(default)]
    pub savepoint: SavepointSpec,

    /// The jobmanager process (one pod).
    #[serde(default)]
    pub jobmanager: ProcessSpec,

    /// The taskmanager processes (`spec.replicas` pods).
    #[serde(default)]
    pub taskmanager: ProcessSpec,

    /// Overrides applied to every pod of the job.
    #[serde(default)]
    pub pod_template: PodOverrides,

    /// Log format and level of the job's processes.
    #[serde(default)]
    pub logging: LoggingSpec,

    /// NetworkPolicies that limit who may connect to the job's pods (egress is never restricted).
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,

    /// Autoscaling on the taskmanagers' busy time and the lag (off by default).
    #[serde(default)]
    pub autoscaler: AutoscalerSpec,
}

/// The job's NetworkPolicies: taskmanagers accept only their jobmanager (and metrics scrapers);
/// the jobmanager's REST port accepts the job's own namespace, the operator's namespace and
/// metrics scrapers. Egress is not restricted (Kafka and Redis can live anywhere).
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Create the NetworkPolicies (default). `false` removes them: every pod may connect.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for NetworkPolicySpec {
    fn default() -> Self {
        Self { enabled: true }
    }
}

fn default_replicas() -> i32 {
    1
}

/// Image pull policy.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// Desired state of the job.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Processes run and consume.
    #[default]
    Running,
    /// No process runs; the savepoint volume and the Redis fences keep the job's position.
    Suspended,
}

/// How spec changes are rolled out.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum UpgradeMode {
    /// Replace the taskmanagers one at a time while the job keeps processing (partitions move
    /// through the fenced handoff); falls back to `savepoint` when the change alters what the
    /// Redis fences mean.
    #[default]
    Rolling,
    /// Stop with a savepoint, start from it.
    Savepoint,
    /// Restart from the newest complete checkpoint.
    LastState,
    /// Restart from the Redis fences and the configured starting offsets.
    Stateless,
}

/// A rolling upgrade's limits.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RollingSpec {
    /// How long a new pod may take to become ready (a taskmanager: registered with the
    /// jobmanager and holding every partition it was given) before the rollout counts as
    /// stalled: the taskmanager Deployment's `progressDeadlineSeconds`, and the limit after
    /// which the StreamJob reports `Degraded` (reason `RolloutStalled`). A stalled rollout
    /// stops where it is; the old taskmanagers keep the job running (e.g. `5m`).
    #[serde(default = "default_progress_deadline")]
    #[schemars(length(max = DURATION_MAX))]
    #[x_kube(validation = Rule::new(NONZERO_DURATION_RULE).message("spec.rolling.progressDeadline must be a non-zero duration like 5m"))]
    pub progress_deadline: String,
}

fn default_progress_deadline() -> String {
    "5m".into()
}

impl Default for RollingSpec {
    fn default() -> Self {
        Self {
            progress_deadline: default_progress_deadline(),
        }
    }
}

/// A key of a Secret in the StreamJob's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret (a DNS-1123 subdomain).
    #[schemars(length(max = DNS_NAME_MAX))]
    #[x_kube(validation = Rule::new("self.size() <= 253 && self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("secret ref name must be a DNS-1123 subdomain (lowercase letters, digits, '-' and '.')"))]
    pub name: String,
    /// Key inside the Secret.
    #[schemars(length(max = SECRET_KEY_MAX))]
    #[x_kube(validation = Rule::new("self.size() > 0 && self.size() <= 253 && self.matches('^[-._a-zA-Z0-9]+$')").message("secret ref key must be 1-253 characters of [-._a-zA-Z0-9]"))]
    pub key: String,
}

/// Where a partition starts when neither a savepoint, a checkpoint nor a Redis fence says otherwise.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StartingOffsets {
    #[default]
    Earliest,
    Latest,
}

/// librdkafka `security.protocol`.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }
}

/// The Kafka source.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.dlqTopic) || self.dlqTopic != self.topic").message("spec.kafka.dlqTopic must differ from spec.kafka.topic"))]
pub struct KafkaSpec {
    /// Bootstrap servers, comma separated `host:port` (at most 4096 characters).
    #[schemars(length(max = BROKERS_MAX))]
    #[x_kube(validation = Rule::new("self.matches('^[^,\\\\s]+:[0-9]+(,[^,\\\\s]+:[0-9]+)*$')").message("spec.kafka.brokers must be a comma separated list of host:port"))]
    pub brokers: String,
    /// The AnchorInfo topic.
    #[serde(default = "default_topic")]
    #[schemars(length(max = TOPIC_MAX))]
    #[x_kube(validation = Rule::new("self.matches('^[a-zA-Z0-9._-]{1,249}$') && self != '.' && self != '..'").message("spec.kafka.topic must be 1-249 characters of [a-zA-Z0-9._-], not '.' or '..'"))]
    pub topic: String,
    /// Consumer group id (used for reporting offsets to Kafka tooling only; the jobmanager assigns
    /// partitions).
    #[serde(default = "default_group")]
    #[schemars(length(max = GROUP_MAX))]
    #[x_kube(validation = Rule::new("self.size() > 0 && self.size() <= 255").message("spec.kafka.group must be 1-255 characters"))]
    pub group: String,
    /// Where partitions start when there is no savepoint, checkpoint or Redis fence.
    #[serde(default)]
    pub starting_offsets: StartingOffsets,
    /// Dead-letter topic for undecodable events; default `<topic>-dlq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = TOPIC_MAX))]
    #[x_kube(validation = Rule::new("self.matches('^[a-zA-Z0-9._-]{1,249}$') && self != '.' && self != '..'").message("spec.kafka.dlqTopic must be 1-249 characters of [a-zA-Z0-9._-], not '.' or '..'"))]
    pub dlq_topic: Option<String>,
    /// librdkafka `security.protocol`.
    #[serde(default)]
    pub security_protocol: SecurityProtocol,
    /// SASL authentication; credentials come from Secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<SaslSpec>,
    /// TLS to the brokers; certificates come from Secrets (mounted read-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Extra librdkafka properties, passed through unchanged (never put secrets here). At most
    /// 128 properties, each value at most 4096 characters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = KAFKA_PROPERTIES_MAX,
        "additionalProperties" = {"type": "string", "maxLength": KAFKA_PROPERTY_VALUE_MAX}
    ))]
    #[x_kube(validation = Rule::new("self.all(k, !(k in ['sasl.password', 'sasl.username', 'ssl.key.password', 'bootstrap.servers', 'group.id']))").message("spec.kafka.properties must not set credentials, bootstrap.servers or group.id (use the typed fields and secret refs)"))]
    pub properties: BTreeMap<String, String>,
}

fn default_topic() -> String {
    "austinTraceLog".into()
}
fn default_group() -> String {
    "austinLogGroup".into()
}

/// SASL mechanism.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SaslMechanism {
    #[default]
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// SASL settings.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SaslSpec {
    /// SASL mechanism.
    #[serde(default)]
    pub mechanism: SaslMechanism,
    /// Secret key holding the SASL username.
    pub username_secret_ref: SecretKeyRef,
    /// Secret key holding the SASL password.
    pub password_secret_ref: SecretKeyRef,
}

/// TLS settings: PEM files from Secrets, mounted under `/etc/streamjob/tls`.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.certSecretRef) == has(self.keySecretRef)").message("spec.kafka.tls.certSecretRef and spec.kafka.tls.keySecretRef must be set together"))]
pub struct TlsSpec {
    /// CA certificate (PEM) that signs the brokers' certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// Client certificate (PEM) for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_secret_ref: Option<SecretKeyRef>,
    /// Client private key (PEM) for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_secret_ref: Option<SecretKeyRef>,
}

/// Redis TLS files from Secrets, mounted read-only under `/etc/streamjob-redis-tls`.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.certSecretRef) == has(self.keySecretRef)").message("spec.redis.tls.certSecretRef and spec.redis.tls.keySecretRef must be set together: a mutual-TLS client certificate is useless without its private key"))]
pub struct RedisTlsSpec {
    /// CA certificate (PEM) that signs the Redis server's certificate; without it the image's
    /// system CA roots are trusted (managed services with public certificates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// Client certificate (PEM) for mutual TLS (`tls-auth-clients yes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_secret_ref: Option<SecretKeyRef>,
    /// Client private key (PEM) for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_secret_ref: Option<SecretKeyRef>,
    /// The DNS name the Redis server's certificate must carry (also sent as TLS SNI), when it
    /// differs from the host the workers connect to: the host in `url`, or the address the
    /// sentinels announce for the primary (usually an IP). Without it, that host itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = DNS_NAME_MAX))]
    #[x_kube(validation = Rule::new("self.size() <= 253 && self.matches('^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$')").message("spec.redis.tls.serverName must be a DNS name: dot-separated lower-case labels of [a-z0-9-] (1-63 characters, not starting or ending with '-'), at most 253 characters"))]
    pub server_name: Option<String>,
}

/// The Redis sink.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.tls) || self.url.startsWith('rediss://')").message("spec.redis.tls needs a rediss:// URL in spec.redis.url: its certificates are only used by TLS connections, so with redis:// they would silently do nothing"))]
#[x_kube(validation = Rule::new("!has(self.sentinel) || !self.url.startsWith('unix://')").message("spec.redis.url must be redis:// or rediss:// with spec.redis.sentinel (it then only selects the database)"))]
#[x_kube(validation = Rule::new("!has(self.cluster) || !has(self.sentinel)").message("spec.redis.cluster cannot be combined with spec.redis.sentinel (a cluster fails over by itself)"))]
#[x_kube(validation = Rule::new("!has(self.cluster) || self.url.matches('^rediss?://[^/]*(/0?)?$')").message("spec.redis.url must be redis:// or rediss:// with database 0 (or none) with spec.redis.cluster (it then only selects TLS)"))]
#[x_kube(validation = Rule::new("!has(self.cluster) || !has(self.keyPrefix) || !self.keyPrefix.contains('{')").message("spec.redis.keyPrefix must not contain '{' with spec.redis.cluster: a hash tag ({...}) in the prefix would put every key, and every slot's fence, into one slot"))]
pub struct RedisSpec {
    /// `redis://host:port/db`, `rediss://...` or `unix:///path` (at most 1024 characters). No
    /// password in it: use `passwordSecretRef`.
    #[schemars(length(max = REDIS_URL_MAX))]
    #[x_kube(
        validation = Rule::new("self.startsWith('redis://') || self.startsWith('rediss://') || self.startsWith('unix://')").message("spec.redis.url must start with redis://, rediss:// or unix://"),
        validation = Rule::new("!self.matches('^rediss?://[^/@]*@')").message("spec.redis.url must not carry credentials; use spec.redis.passwordSecretRef")
    )]
    pub url: String,
    /// Secret key holding the Redis password (passed as env `STREAMJOB_REDIS_PASSWORD`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// Redis 6+ ACL user name (`AUTH username password`); the password comes from
    /// `passwordSecretRef`. Without it the `default` user authenticates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = REDIS_USERNAME_MAX))]
    #[x_kube(validation = Rule::new("self.size() > 0 && self.size() <= 128 && !self.contains(' ')").message("spec.redis.username must be 1-128 characters without spaces"))]
    pub username: Option<String>,
    /// TLS for a `rediss://` URL: the CA that signs the server's certificate and, for mutual TLS,
    /// a client certificate and key, each from a Secret key, mounted read-only as files. With
    /// `sentinel`, the same files secure the connections to the sentinels and to the primary
    /// they name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RedisTlsSpec>,
    /// IANA time zone whose midnight ends user-trace keys.
    #[serde(default = "default_time_zone")]
    #[schemars(length(max = TIME_ZONE_MAX))]
    #[x_kube(validation = Rule::new("self == 'UTC' || self.matches('^[A-Za-z_]+(/[A-Za-z0-9_+-]+)+$')").message("spec.redis.timeZone must be an IANA time zone such as Asia/Shanghai or UTC"))]
    pub time_zone: String,
    /// Prefix of every key written, to isolate jobs sharing one Redis. Empty is austin's layout.
    #[serde(default)]
    #[schemars(length(max = KEY_PREFIX_MAX))]
    #[x_kube(validation = Rule::new("self.size() <= 64 && !self.contains(' ')").message("spec.redis.keyPrefix must be at most 64 characters without spaces"))]
    pub key_prefix: String,
    /// A Sentinel-managed primary: the workers ask these sentinels where the primary is and
    /// follow failovers. `url` then only selects the database (`redis://sentinel/0`) and, as
    /// `rediss://sentinel/0`, makes every connection TLS: to the sentinels and to the primary,
    /// whose certificate must then carry the address the sentinels announce for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel: Option<RedisSentinelSpec>,
    /// A Redis Cluster, reached through these seed nodes. `url` then only selects TLS
    /// (`redis://cluster` or `rediss://cluster`), and `keyPrefix` must not contain `{`: Redis
    /// Cluster places a key by its hash tag (`{...}`), so a tag in the prefix would put every key
    /// into one slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<RedisClusterSpec>,
}

/// Redis Cluster: seed nodes to read the slot map from.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RedisClusterSpec {
    /// Any nodes of the cluster, `host:port`: 1 to 16 of them.
    #[schemars(length(max = CLUSTER_NODES_MAX), inner(length(max = CLUSTER_NODE_MAX)))]
    #[x_kube(validation = Rule::new("self.size() >= 1 && self.size() <= 16 && self.all(n, n.matches('^[^:,\\\\s/@]+:[0-9]{1,5}$'))").message("spec.redis.cluster.nodes must list 1-16 cluster nodes as host:port"))]
    pub nodes: Vec<String>,
}

/// Redis Sentinel: the monitored primary's name and the sentinels' addresses.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RedisSentinelSpec {
    /// The name the sentinels monitor the primary under (`sentinel monitor NAME ...`).
    #[schemars(length(max = MASTER_NAME_MAX))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9._-]{1,128}$')").message("spec.redis.sentinel.masterName must be 1-128 characters of [A-Za-z0-9._-]"))]
    pub master_name: String,
    /// Sentinel addresses, `host:port`: 1 to 16 of them.
    #[schemars(length(max = SENTINEL_NODES_MAX), inner(length(max = SENTINEL_NODE_MAX)))]
    #[x_kube(validation = Rule::new("self.size() >= 1 && self.size() <= 16 && self.all(n, n.matches('^[^:,\\\\s/@]+:[0-9]{1,5}$'))").message("spec.redis.sentinel.nodes must list 1-16 sentinels as host:port"))]
    pub nodes: Vec<String>,
    /// Secret key holding the sentinels' own password (passed as env
    /// `STREAMJOB_REDIS_SENTINEL_PASSWORD`). The primary's password is `passwordSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
}

fn default_time_zone() -> String {
    "Asia/Shanghai".into()
}

const DURATION_RULE: &str = "self.matches('^([0-9]+(ms|s|m|h))+$')";

/// Batching of one partition's events into one atomic Redis script call.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BatchSpec {
    /// Flush when this many events are buffered for a partition.
    #[serde(default = "default_max_events")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_events: i64,
    /// Flush at the latest this long after the first buffered event (e.g. `20ms`).
    #[serde(default = "default_linger")]
    #[schemars(length(max = DURATION_MAX))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("spec.batch.linger must be a duration like 20ms, 1s or 1m30s"))]
    pub linger: String,
    /// When a taskmanager stops or hands a partition on while Redis or Kafka is unreachable, how
    /// long its in-flight batch may keep retrying before it is left to the partition's next
    /// owner (nothing is lost). The taskmanager pods' termination grace period is at least this
    /// plus 30 s.
    #[serde(default = "default_stop_timeout")]
    #[schemars(length(max = DURATION_MAX))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("spec.batch.stopTimeout must be a duration like 20s or 1m"))]
    pub stop_timeout: String,
}

fn default_max_events() -> i64 {
    1000
}
fn default_linger() -> String {
    "20ms".into()
}
fn default_stop_timeout() -> String {
    "20s".into()
}

impl Default for BatchSpec {
    fn default() -> Self {
        Self {
            max_events: default_max_events(),
            linger: default_linger(),
            stop_timeout: default_stop_timeout(),
        }
    }
}

/// The event-time series: per template, window and state counts on `logTimestamp`.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WindowSpec {
    /// Write the series (on by default).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Window length: whole minutes that divide an hour (`1m`, `5m`, `15m`, `60m`…).
    #[serde(default = "default_window_size")]
    #[schemars(length(max = DURATION_MAX))]
    #[x_kube(validation = Rule::new("self in ['1m', '2m', '3m', '4m', '5m', '6m', '10m', '12m', '15m', '20m', '30m', '60m']").message("spec.window.size must be whole minutes that divide an hour, like 1m or 5m"))]
    pub size: String,
    /// A partition's watermark is its largest event time minus this.
    #[serde(default = "default_out_of_orderness")]
    #[schemars(length(max = DURATION_MAX))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("spec.window.maxOutOfOrderness must be a duration like 5s"))]
    pub max_out_of_orderness: String,
    /// A window is final once the job watermark passes its end plus this; later events are late.
    #[serde(default = "default_allowed_lateness")]
    #[schemars(length(max = DURATION_MAX))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("spec.window.allowedLateness must be a duration like 1m"))]
    pub allowed_lateness: String,
    /// A partition without records this long does not hold the job watermark back.
    #[serde(default = "default_idle_timeout")]
    #[schemars(length(max = DURATION_MAX))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("spec.window.idleTimeout must be a duration like 30s"))]
    pub idle_timeout: String,
}

fn default_window_size() -> String {
    "1m".into()
}
fn default_out_of_orderness() -> String {
    "5s".into()
}
fn default_allowed_lateness() -> String {
    "1m".into()
}
fn default_idle_timeout() -> String {
    "30s".into()
}

impl Default for WindowSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            size: default_window_size(),
            max_out_of_orderness: default_out_of_orderness(),
            allowed_lateness: default_allowed_lateness(),
            idle_timeout: default_idle_timeout(),
        }
    }
}

/// Periodic checkpoints.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointSpec {
    /// Time between checkpoints (e.g. `10s`); `0s` disables them.
    #[serde(default = "default_checkpoint_interval")]
    #[schemars(length(max = DURATION_MAX))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("spec.checkpoint.interval must be a duration like 10s or 1m"))]
    pub interval: String,
    /// How many complete checkpoints to keep.
    #[serde(default = "default_retain")]
    #[schemars(range(min = 1, max = 100))]
    pub retain: i64,
}

fn default_checkpoint_interval() -> String {
    "10s".into()
}
fn default_retain() -> i64 {
    3
}

impl Default for CheckpointSpec {
    fn default() -> Self {
        Self {
            interval: default_checkpoint_interval(),
            retain: default_retain(),
        }
    }
}

/// Savepoints: where they live, how many are kept, what deletion does.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SavepointSpec {
    /// The PersistentVolumeClaim holding checkpoints and savepoints.
    #[serde(default)]
    pub storage: SavepointStorage,
    /// Which savepoints are kept (the newest complete one always is).
    #[serde(default)]
    pub retention: SavepointRetention,
    /// Time between periodic savepoints (e.g. `1h`); `0s` disables them.
    #[serde(default = "zero_duration")]
    #[schemars(length(max = DURATION_MAX))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("spec.savepoint.interval must be a duration like 1h or 0s"))]
    pub interval: String,
    /// What deleting the StreamJob does to its state.
    #[serde(default)]
    pub on_delete: OnDeletePolicy,
    /// How long one savepoint (triggered by the operator) may take before the attempt counts as
    /// failed; also the deadline of the final savepoint on deletion, after which deletion goes
    /// ahead without it (and says so in an Event).
    #[serde(default = "default_savepoint_timeout")]
    #[schemars(length(max = DURATION_MAX))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("spec.savepoint.timeout must be a duration like 5m"))]
    pub timeout: String,
    /// Failed savepoint attempts (retried with backoff) before an upgrade, suspend or manual
    /// savepoint gives up with a Degraded condition.
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1, max = 20))]
    pub max_attempts: i32,
}

fn default_savepoint_timeout() -> String {
    "5m".into()
}
fn default_max_attempts() -> i32 {
    3
}

fn zero_duration() -> String {
    "0s".into()
}

impl Default for SavepointSpec {
    fn default() -> Self {
        Self {
            storage: SavepointStorage::default(),
            retention: SavepointRetention::default(),
            interval: zero_duration(),
            on_delete: OnDeletePolicy::default(),
            timeout: default_savepoint_timeout(),
            max_attempts: default_max_attempts(),
        }
    }
}

/// The savepoint volume.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SavepointStorage {
    /// Size of the PersistentVolumeClaim (a quantity, e.g. `1Gi`).
    #[serde(default = "default_storage_size")]
    #[schemars(length(max = QUANTITY_MAX))]
    #[x_kube(
        validation = Rule::new("isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))").message("spec.savepoint.storage.size must be a positive quantity such as 1Gi"),
        validation = Rule::new("!isQuantity(self) || !isQuantity(oldSelf) || quantity(self).compareTo(quantity(oldSelf)) >= 0").message("spec.savepoint.storage.size can only grow (a PersistentVolumeClaim cannot shrink)")
    )]
    pub size: String,
    /// StorageClass of the claim; the cluster default when unset. Immutable once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = DNS_NAME_MAX))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.savepoint.storage.storageClassName is immutable (a PersistentVolumeClaim cannot change class)"))]
    pub storage_class_name: Option<String>,
}

fn default_storage_size() -> String {
    "1Gi".into()
}

impl Default for SavepointStorage {
    fn default() -> Self {
        Self {
            size: default_storage_size(),
            storage_class_name: None,
        }
    }
}

/// Savepoint retention.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SavepointRetention {
    /// Keep at most this many savepoints.
    #[serde(default = "default_max_count")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_count: i64,
    /// Delete savepoints older than this (e.g. `168h`); `0s` = no age limit.
    #[serde(default = "zero_duration")]
    #[schemars(length(max = DURATION_MAX))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("spec.savepoint.retention.maxAge must be a duration like 168h or 0s"))]
    pub max_age: String,
}

fn default_max_count() -> i64 {
    5
}

impl Default for SavepointRetention {
    fn default() -> Self {
        Self {
            max_count: default_max_count(),
            max_age: zero_duration(),
        }
    }
}

/// What happens to the savepoint volume when the StreamJob is deleted.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum PvcPolicy {
    /// The PVC outlives the StreamJob (no owner reference): recreate the job to resume.
    #[default]
    Keep,
    /// The PVC is garbage-collected with the StreamJob.
    Delete,
}

/// Deletion policy.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OnDeletePolicy {
    /// Keep or delete the savepoint PVC.
    #[serde(default)]
    pub pvc: PvcPolicy,
    /// Take a final savepoint before the processes stop.
    #[serde(default = "default_true")]
    pub final_savepoint: bool,
}

fn default_true() -> bool {
    true
}

impl Default for OnDeletePolicy {
    fn default() -> Self {
        Self {
            pvc: PvcPolicy::Keep,
            final_savepoint: true,
        }
    }
}

/// Settings of one kind of process.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ProcessSpec {
    /// CPU and memory requests and limits of the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// Overrides applied to every pod of the job.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodOverrides {
    /// Node labels the pods must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Affinity rules of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Extra pod annotations (e.g. for a service mesh or a metrics scraper).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Extra pod labels; `app.kubernetes.io/*` keys are reserved for the operator. At most 64
    /// labels (values at most 63 characters, as for any label).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = POD_LABELS_MAX,
        "additionalProperties" = {"type": "string", "maxLength": LABEL_VALUE_MAX}
    ))]
    #[x_kube(validation = Rule::new("self.all(k, !k.startsWith('app.kubernetes.io/'))").message("spec.podTemplate.labels must not set app.kubernetes.io/* labels (the operator owns them)"))]
    pub labels: BTreeMap<String, String>,
    /// ServiceAccount the pods run as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// PriorityClass of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

/// Log settings.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LoggingSpec {
    /// `text` or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// `tracing` filter, e.g. `info` or `info,streamjob_worker=debug` (at most 1024 characters).
    #[serde(default = "default_level")]
    #[schemars(length(max = LOG_FILTER_MAX))]
    #[x_kube(validation = Rule::new("self.size() > 0").message("spec.logging.level must not be empty"))]
    pub level: String,
}

fn default_level() -> String {
    "info".into()
}

impl Default for LoggingSpec {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: default_level(),
        }
    }
}

/// Autoscaling: the operator sizes the taskmanagers from their busy time and the lag, within
/// `minReplicas`..`maxReplicas` (never above the topic's partition count), and never adds
/// taskmanagers while Redis is the bottleneck. Each decision is written to `status.autoscaler`
/// and published as an Event.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.minReplicas <= self.maxReplicas").message("spec.autoscaler.minReplicas must not exceed spec.autoscaler.maxReplicas"),
    validation = Rule::new("self.scaleDownUtilization < self.targetUtilization").message("spec.autoscaler.scaleDownUtilization must be below spec.autoscaler.targetUtilization (the band between them is where nothing changes)")
)]
pub struct AutoscalerSpec {
    /// Turn autoscaling on.
    #[serde(default)]
    pub enabled: bool,
    /// `scale`: the autoscaler sets the taskmanager count and `spec.replicas` is ignored.
    /// `recommend`: it only writes its decision to `status.autoscaler` and an Event;
    /// `spec.replicas` stays in charge.
    #[serde(default)]
    pub mode: AutoscalerMode,
    /// The fewest taskmanagers it runs.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    /// The most taskmanagers it runs; above the topic's partition count the partition count is
    /// the limit (a taskmanager without a partition does nothing), and the reason says so.
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// The busy fraction (time spent deciding and applying batches rather than waiting for
    /// records) it sizes for: it scales up when the input plus clearing the lag within
    /// `catchUpDuration` would keep the taskmanagers busier than this.
    #[serde(default = "default_target_utilization")]
    #[schemars(range(min = 0.1, max = 1.0))]
    pub target_utilization: f64,
    /// It scales down only after the busy fraction stayed below this for
    /// `scaleDownStabilization`, and then to the fewest taskmanagers that stay at or under
    /// `targetUtilization`; the gap between the two keeps it from flapping.
    #[serde(default = "default_scale_down_utilization")]
    #[schemars(range(min = 0.0, max = 0.95))]
    pub scale_down_utilization: f64,
    /// How much history each decision looks at (e.g. `2m`); no decision before half of it is
    /// known at the current taskmanager count.
    #[serde(default = "default_metrics_window")]
    #[schemars(length(max = DURATION_MAX))]
    #[x_kube(validation = Rule::new(NONZERO_DURATION_RULE).message("spec.autoscaler.metricsWindow must be a non-zero duration like 2m"))]
    pub metrics_window: String,
    /// How long the need for more taskmanagers must last before it scales up (e.g. `30s`).
    #[serde(default = "default_scale_up_stabilization")]
    #[schemars(length(max = DURATION_MAX))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("spec.autoscaler.scaleUpStabilization must be a duration like 30s or 0s"))]
    pub scale_up_stabilization: String,
    /// How long the busy fraction must stay below `scaleDownUtilization` before it scales down,
    /// and the least time between two scale-downs (e.g. `10m`).
    #[serde(default = "default_scale_down_stabilization")]
    #[schemars(length(max = DURATION_MAX))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("spec.autoscaler.scaleDownStabilization must be a duration like 10m"))]
    pub scale_down_stabilization: String,
    /// How fast a backlog must be cleared (e.g. `5m`): the lag divided by this counts as demand
    /// on top of the input.
    #[serde(default = "default_catch_up_duration")]
    #[schemars(length(max = DURATION_MAX))]
    #[x_kube(validation = Rule::new(NONZERO_DURATION_RULE).message("spec.autoscaler.catchUpDuration must be a non-zero duration like 5m"))]
    pub catch_up_duration: String,
    /// Redis counts as the bottleneck while its p99 apply latency is above this (or applies are
    /// retried more than once a second); no taskmanager is added then, since more of them would
    /// only queue on Redis.
    #[serde(default = "default_redis_latency_limit")]
    #[schemars(length(max = DURATION_MAX))]
    #[x_kube(validation = Rule::new(NONZERO_DURATION_RULE).message("spec.autoscaler.redisLatencyLimit must be a non-zero duration like 100ms"))]
    pub redis_latency_limit: String,
}

/// A duration that is not zero (at least one digit 1-9).
const NONZERO_DURATION_RULE: &str =
    "self.matches('^([0-9]+(ms|s|m|h))+$') && self.matches('[1-9]')";

fn default_min_replicas() -> i32 {
    1
}
fn default_max_replicas() -> i32 {
    10
}
fn default_target_utilization() -> f64 {
    0.7
}
fn default_scale_down_utilization() -> f64 {
    0.5
}
fn default_metrics_window() -> String {
    "2m".into()
}
fn default_scale_up_stabilization() -> String {
    "30s".into()
}
fn default_scale_down_stabilization() -> String {
    "10m".into()
}
fn default_catch_up_duration() -> String {
    "5m".into()
}
fn default_redis_latency_limit() -> String {
    "100ms".into()
}

impl Default for AutoscalerSpec {
    fn default() -> Self {
        Self {
            enabled: false,
            mode: AutoscalerMode::default(),
            min_replicas: default_min_replicas(),
            max_replicas: default_max_replicas(),
            target_utilization: default_target_utilization(),
            scale_down_utilization: default_scale_down_utilization(),
            metrics_window: default_metrics_window(),
            scale_up_stabilization: default_scale_up_stabilization(),
            scale_down_stabilization: default_scale_down_stabilization(),
            catch_up_duration: default_catch_up_duration(),
            redis_latency_limit: default_redis_latency_limit(),
        }
    }
}

/// What the autoscaler does with its decisions.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AutoscalerMode {
    /// Apply them: the autoscaler sets the taskmanager count; `spec.replicas` is ignored.
    #[default]
    Scale,
    /// Only report them (status and Events); `spec.replicas` stays in charge.
    Recommend,
}

/// Log format.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

// ---------------------------------------------------------------------------------------------
// Status
// ---------------------------------------------------------------------------------------------

/// Observed state of a StreamJob, written by the operator only.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct StreamJobStatus {
    /// Lifecycle phase.
    #[serde(default)]
    pub phase: Phase,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing` and `Degraded`, each with a reason and a message.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Taskmanager pods that exist (the scale subresource reads this).
    #[serde(default)]
    pub replicas: i32,
    /// Taskmanager pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the taskmanager pods (the scale subresource and HPAs read this).
    #[serde(default)]
    pub selector: String,
    /// Hash of the rendered job configuration the pods run with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// Progress reported by the jobmanager.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobProgress>,
    /// The newest complete savepoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_savepoint: Option<SavepointInfo>,
    /// Recent savepoints, newest first (capped).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub savepoint_history: Vec<SavepointInfo>,
    /// The multi-step operation in flight, recorded before each step so a restarted operator
    /// resumes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_operation: Option<Operation>,
    /// The `spec.restartNonce` last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_restart_nonce: Option<i64>,
    /// The `spec.savepointTriggerNonce` last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_savepoint_trigger_nonce: Option<i64>,
    /// The autoscaler's latest decision and what it remembers between decisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler: Option<AutoscalerStatus>,
}

/// The autoscaler's decision, and the little it must remember between reconciliations (so an
/// operator restart neither forgets a stabilization in progress nor scales down twice).
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerStatus {
    /// Where the autoscaler stands.
    #[serde(default)]
    pub state: AutoscalerState,
    /// The taskmanager count it decided (in mode `recommend`: the count it recommends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<i32>,
    /// What the latest metrics alone ask for, before stabilization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommendation: Option<i32>,
    /// Why, as a sentence: e.g. `scaled 3→5: lag 120k growing 4k/s, busy 0.92, ...`.
    #[serde(default)]
    pub reason: String,
    /// Who sets the taskmanager count, e.g. that `spec.replicas` is ignored in mode `scale`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When `desired` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision: Option<Time>,
    /// When it last scaled (or recommended scaling) up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_up: Option<Time>,
    /// When it last scaled (or recommended scaling) down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_down: Option<Time>,
    /// A change the metrics ask for, waiting out its stabilization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingScale>,
}

/// Where the autoscaler stands.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AutoscalerState {
    /// Not enough metrics to decide (jobmanager down, new job, rescale settling): nothing changes.
    #[default]
    NoMetrics,
    /// The count fits the load.
    Stable,
    /// A change waits out its stabilization (see `pending`).
    Stabilizing,
    /// It just scaled (or, in mode `recommend`, recommended a new count).
    Scaled,
    /// More taskmanagers are needed, but Redis is the bottleneck: none is added.
    RedisBottleneck,
    /// Input arrives and lag grows, but nothing is processed: not a capacity problem.
    Stalled,
}

/// Direction of a scale.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ScaleDirection {
    Up,
    Down,
}

/// A change waiting out its stabilization.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PendingScale {
    /// Up or down.
    pub direction: ScaleDirection,
    /// Since when the metrics have asked for it without a break.
    pub since: Time,
    /// The count it would go to: for a scale-down, the highest asked for since `since`.
    pub replicas: i32,
}

/// Lifecycle phase of a StreamJob.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    /// Accepted, nothing deployed yet.
    #[default]
    Pending,
    /// Children created or changed; waiting for pods to become ready.
    Deploying,
    /// Every process is ready.
    Running,
    /// A multi-step upgrade is in flight (the job is stopped for it).
    Upgrading,
    /// A rolling upgrade is in flight: new taskmanagers take the partitions over while the job
    /// keeps processing.
    RollingUpgrade,
    /// Stopping the job (savepoint, then scale to zero).
    Suspending,
    /// Stopped on purpose; state kept.
    Suspended,
    /// Reconciliation fails; see the Degraded condition.
    Failed,
    /// The StreamJob is being deleted.
    Deleting,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Deploying => "Deploying",
            Phase::Running => "Running",
            Phase::Upgrading => "Upgrading",
            Phase::RollingUpgrade => "RollingUpgrade",
            Phase::Suspending => "Suspending",
            Phase::Suspended => "Suspended",
            Phase::Failed => "Failed",
            Phase::Deleting => "Deleting",
        }
    }
}

/// Job progress as the jobmanager reports it.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct JobProgress {
    /// Records behind the end of the topic, summed over partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// Events applied per second, summed over partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_per_second: Option<f64>,
    /// Per-partition progress.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<PartitionSummary>,
    /// When the jobmanager was last asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<Time>,
    /// The job's state in the jobmanager (`INITIALIZING`, `RUNNING`, `STOPPING`, `FINISHED`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Registered taskmanagers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taskmanagers: Option<i32>,
    /// Where the running jobmanager took its starting state from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<String>,
    /// When the newest complete checkpoint was taken (its age shows whether checkpoints stall).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint_at: Option<Time>,
    /// The job's event-time watermark: minimum over active partitions, never back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<Time>,
    /// Every series window ending at or before this is final (recorded in Redis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_before: Option<Time>,
    /// The Redis the workers write to, as the freshest taskmanager report read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisStatus>,
}

/// The Redis the workers write to: its mode, its shards and, on a cluster, the slots migrating
/// between them (a reshard at work: applies to those slots wait until it ends).
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RedisStatus {
    /// `single`, `sentinel` or `cluster`.
    pub mode: String,
    /// Primaries that serve slots (1 on a single node or behind Sentinel).
    pub shards: i32,
    /// Their addresses, `host:port`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub primaries: Vec<String>,
    /// Slots some primary is migrating out or importing (always 0 off a cluster).
    #[serde(default)]
    pub migrating_slots: i32,
    /// When a taskmanager last read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refresh: Option<Time>,
}

/// Progress of one partition.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PartitionSummary {
    pub partition: i32,
    /// Next offset to apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed_offset: Option<i64>,
    /// The broker's high watermark as last seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_watermark: Option<i64>,
    /// `highWatermark - committedOffset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// Rewinds the jobmanager has seen: Redis lost acknowledged writes and the partition re-read
    /// from its fence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewinds: Option<u64>,
    /// The latest rewind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rewind: Option<PartitionRewind>,
}

/// One rewind of a partition: Redis lost acknowledged writes, so `[toOffset, fromOffset)` is
/// read and applied again.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PartitionRewind {
    /// Where the partition had been.
    pub from_offset: i64,
    /// Where Redis's fence stood.
    pub to_offset: i64,
    /// When it happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Time>,
}

/// What caused a savepoint.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SavepointTrigger {
    /// `spec.savepointTriggerNonce` changed.
    Manual,
    /// `spec.savepoint.interval` elapsed.
    Periodic,
    /// Taken before an upgrade.
    Upgrade,
    /// Taken before suspending.
    Suspend,
    /// Taken before deletion.
    Delete,
}

/// A complete savepoint.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SavepointInfo {
    /// Path of the savepoint on the savepoint volume.
    pub path: String,
    /// When it completed.
    pub completed_at: Time,
    /// What caused it.
    pub trigger: SavepointTrigger,
    /// The `spec.savepointTriggerNonce` it answered, for manual savepoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<i64>,
}

/// Kind of a multi-step operation.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OperationKind {
    Savepoint,
    Upgrade,
    /// An upgrade through the fenced handoff: no savepoint, the job keeps processing.
    #[serde(rename = "rolling-upgrade")]
    RollingUpgrade,
    Suspend,
    Resume,
    Restart,
    Delete,
}

/// An operation in flight. Its `step` is written before the step runs, so a restarted operator
/// picks it up where it stopped.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// What is being done.
    pub kind: OperationKind,
    /// The step in progress.
    pub step: OperationStep,
    /// When the operation started.
    pub started_at: Time,
    /// When the current step started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<Time>,
    /// The jobmanager's trigger id of a savepoint being awaited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_id: Option<String>,
    /// The generation being rolled out, for upgrades.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_generation: Option<i64>,
    /// Attempts of the current step so far.
    #[serde(default)]
    pub attempts: i32,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The restore point: the savepoint this operation took, or restores from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint_path: Option<String>,
    /// The upgrade mode the operation runs with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_mode: Option<UpgradeMode>,
    /// The pod configuration hash being rolled out, for upgrades.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_config_hash: Option<String>,
    /// The `spec.savepointTriggerNonce` a manual savepoint answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<i64>,
    /// A failed attempt is retried no earlier than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<Time>,
}

/// Steps of an operation. Each is recorded before it runs, and each can be run again.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperationStep {
    /// Ask the jobmanager for a savepoint (stop-with-savepoint for upgrades, suspend, deletion).
    TriggerSavepoint,
    /// Poll the triggered savepoint until it is complete and on the volume.
    AwaitSavepoint,
    /// last-state: check that a complete checkpoint exists before anything is torn down.
    CheckRestorePoint,
    /// Apply the new children (new pod template, or zero replicas) and wait until they run. For a
    /// rolling upgrade: until every taskmanager runs the new template and the jobmanager runs it.
    RollOut,
    /// Finished (deletion: the finalizer may go).
    Done,
    /// Gave up; see `message` and the Degraded condition. Changing the spec starts over.
    Failed,
}

impl OperationStep {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationStep::TriggerSavepoint => "TriggerSavepoint",
            OperationStep::AwaitSavepoint => "AwaitSavepoint",
            OperationStep::CheckRestorePoint => "CheckRestorePoint",
            OperationStep::RollOut => "RollOut",
            OperationStep::Done => "Done",
            OperationStep::Failed => "Failed",
        }
    }
}

/// The generated CRD, with every description as `kubectl explain` should print it: the line
/// breaks of a doc comment are only source wrapping, so lines are joined with a space (a blank
/// line, a paragraph break, is kept).
pub fn crd() -> CustomResourceDefinition {
    let crd = StreamJob::crd();
    let Ok(mut value) = serde_json::to_value(&crd) else {
        return crd;
    };
    join_description_lines(&mut value);
    serde_json::from_value(value).unwrap_or(crd)
}

fn join_description_lines(node: &mut serde_json::Value) {
    match node {
        serde_json::Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                match value {
                    serde_json::Value::String(text) if key == "description" => {
                        *text = unwrap_lines(text);
                    }
                    other => join_description_lines(other),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(join_description_lines),
        _ => {}
    }
}

/// Joins the lines of each paragraph with one space; paragraphs stay separated by a blank line.
pub fn unwrap_lines(text: &str) -> String {
    text.split("\n\n")
        .map(|paragraph| {
            paragraph
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// Why the CRD could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    #[error("the CRD does not serialise to JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the CRD does not serialise to YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
    #[error("the CRD has no openAPIV3Schema to check")]
    NoSchema,
    /// The API server would refuse the CRD: these values, read by CEL rules, have no size
    /// bound, so the estimated rule costs exceed the budget (see [`bounds`]).
    #[error(
        "CEL rules read values without a size bound; the API server would refuse this CRD \
         (estimated rule cost exceeds budget). Add maxLength / maxItems / maxProperties \
         (#[schemars(length(max = N))], #[schemars(extend(\"maxProperties\" = N))]) to:\n{}",
        one_per_line(.0)
    )]
    UnboundedRuleInputs(Vec<Unbounded>),
}

fn one_per_line(unbounded: &[Unbounded]) -> String {
    let lines: Vec<String> = unbounded.iter().map(|u| format!("  {u}")).collect();
    lines.join("\n")
}

/// The generated CRD as YAML (what `streamjob-operator crd` prints and `crds/streamjob.yaml` holds).
/// Refused when a CEL rule reads an unbounded value, which the API server would refuse too.
pub fn crd_yaml() -> Result<String, CrdError> {
    checked_yaml(&crd())
}

/// `crd` as YAML, once every version's schema passes [`unbounded_rule_inputs`].
pub fn checked_yaml(crd: &CustomResourceDefinition) -> Result<String, CrdError> {
    let value = serde_json::to_value(crd)?;
    let versions = value["spec"]["versions"]
        .as_array()
        .ok_or(CrdError::NoSchema)?;
    let mut unbounded = Vec::new();
    for version in versions {
        let schema = &version["schema"]["openAPIV3Schema"];
        if !schema.is_object() {
            return Err(CrdError::NoSchema);
        }
        unbounded.extend(unbounded_rule_inputs(schema));
    }
    if !unbounded.is_empty() {
        return Err(CrdError::UnboundedRuleInputs(unbounded));
    }
    let body = serde_yaml::to_string(crd)?;
    Ok(format!(
        "# Generated by `streamjob-operator crd` from operator/src/crd.rs. Do not edit.\n---\n{body}"
    ))
}
