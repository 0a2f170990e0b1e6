//! Builders of the desired child objects of a StreamJob (pure).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ProjectedVolumeSource, SeccompProfile, Secret, SecretKeySelector,
    SecretProjection, SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec,
    Volume, VolumeMount, VolumeProjection, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use streamjob_worker::config::{
    ENV_KAFKA_SASL_PASSWORD, ENV_KAFKA_SASL_USERNAME, ENV_REDIS_PASSWORD,
    ENV_REDIS_SENTINEL_PASSWORD,
};

use crate::crd::{JobState, ProcessSpec, PvcPolicy, SecretKeyRef, StreamJob};
use crate::planner::config::{
    API_TOKEN_DIR, API_TOKEN_KEY, CONFIG_DIR, CONFIG_KEY, METRICS_PORT, REDIS_TLS_DIR, REST_PORT,
    STATE_DIR, TLS_DIR,
};
use crate::planner::rollout::{self, FenceIdentity, FENCE_IDENTITY_ANNOTATION};
use crate::planner::{labels, names, NetworkPeers};

pub use crate::planner::annotations::{CONFIG_HASH_ANNOTATION, RESTART_NONCE_ANNOTATION};
/// Taskmanager env: the config hash its pod template carries (which revision a process runs).
pub const ENV_REVISION: &str = "STREAMJOB_REVISION";
/// Liveness (and the jobmanager's readiness): the process serves.
const HEALTHZ: &str = "/healthz";
/// A taskmanager's readiness: registered with the jobmanager, holding every assigned partition.
pub const READYZ: &str = "/readyz";
/// Non-root user and group of the worker processes.
const RUN_AS: i64 = 65532;

/// What every builder needs.
pub struct Context<'a> {
    pub job: &'a StreamJob,
    pub name: &'a str,
    pub namespace: &'a str,
    pub owner: OwnerReference,
    pub config_hash: &'a str,
    pub peers: &'a NetworkPeers,
}

impl Context<'_> {
    fn meta(&self, name: String, component: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.to_string()),
            labels: Some(labels::common(self.name, component)),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }
}

/// The ConfigMap with the rendered `job.yaml`.
pub fn config_map(ctx: &Context, job_yaml: String) -> ConfigMap {
    ConfigMap {
        metadata: ctx.meta(names::config(ctx.name), labels::COMPONENT_CONFIG),
        data: Some(BTreeMap::from([(CONFIG_KEY.to_string(), job_yaml)])),
        ..ConfigMap::default()
    }
}

/// The savepoint volume. A PVC the spec keeps on delete carries no owner reference, so garbage
/// collection never takes it with the StreamJob.
pub fn savepoint_pvc(ctx: &Context) -> PersistentVolumeClaim {
    let storage = &ctx.job.spec.savepoint.storage;
    let mut metadata = ctx.meta(names::savepoints(ctx.name), labels::COMPONENT_SAVEPOINTS);
    if ctx.job.spec.savepoint.on_delete.pvc == PvcPolicy::Keep {
        metadata.owner_references = None;
    }
    PersistentVolumeClaim {
        metadata,
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(storage.size.clone()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

/// The job's API token: the bearer token the jobmanager's mutating REST calls (savepoint,
/// checkpoint, stop) require. Owned by the StreamJob, so it goes with it. The jobmanager reads it
/// from a volume, the operator from the Secret itself.
pub fn api_token_secret(ctx: &Context, token: &str) -> Secret {
    Secret {
        metadata: ctx.meta(names::api_token(ctx.name), labels::COMPONENT_API_TOKEN),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            API_TOKEN_KEY.to_string(),
            ByteString(token.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

/// The token a job's API token Secret holds (`None` when it has none, or not as UTF-8 text).
pub fn api_token_of(secret: &Secret) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(API_TOKEN_KEY)?;
    let token = std::str::from_utf8(&bytes.0).ok()?.trim();
    (!token.is_empty()).then(|| token.to_string())
}

/// The Service in front of the jobmanager's REST port.
pub fn jobmanager_service(ctx: &Context) -> Service {
    Service {
        metadata: ctx.meta(names::jobmanager(ctx.name), labels::COMPONENT_JOBMANAGER),
        spec: Some(ServiceSpec {
            selector: Some(labels::selector(ctx.name, labels::COMPONENT_JOBMANAGER)),
            ports: Some(vec![ServicePort {
                name: Some("rest".into()),
                port: REST_PORT,
                target_port: Some(IntOrString::String("rest".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The jobmanager Deployment: one replica (none when suspended), `Recreate` so two jobmanagers
/// never share the savepoint volume.
pub fn jobmanager_deployment(ctx: &Context) -> Deployment {
    let replicas = match ctx.job.spec.state {
        JobState::Running => 1,
        JobState::Suspended => 0,
    };
    let mut container = worker_container(ctx, "jobmanager", &ctx.job.spec.jobmanager);
    container.ports = Some(vec![port("rest", REST_PORT)]);
    container.liveness_probe = Some(probe("rest", HEALTHZ, 10, 3));
    container.readiness_probe = Some(probe("rest", HEALTHZ, 5, 2));
    container.startup_probe = Some(probe("rest", HEALTHZ, 2, 60));
    if let Some(mounts) = container.volume_mounts.as_mut() {
        mounts.push(VolumeMount {
            name: "state".into(),
            mount_path: STATE_DIR.into(),
            ..VolumeMount::default()
        });
        mounts.push(VolumeMount {
            name: "api-token".into(),
            mount_path: API_TOKEN_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    let mut volumes = common_volumes(ctx);
    volumes.push(Volume {
        name: "state".into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: names::savepoints(ctx.name),
            read_only: None,
        }),
        ..Volume::default()
    });
    // A volume, not an env var: a rotated Secret reaches the running jobmanager (it reads the
    // file at every mutating call).
    volumes.push(Volume {
        name: "api-token".into(),
        // Struct update syntax: the k8s-openapi version features add fields to these types.
        secret: Some(SecretVolumeSource {
            secret_name: Some(names::api_token(ctx.name)),
            items: Some(vec![KeyToPath {
                key: API_TOKEN_KEY.into(),
                path: API_TOKEN_KEY.into(),
                ..KeyToPath::default()
            }]),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    });
    deployment(
        ctx,
        names::jobmanager(ctx.name),
        labels::COMPONENT_JOBMANAGER,
        replicas,
        DeploymentStrategy {
            type_: Some("Recreate".into()),
            rolling_update: None,
        },
        container,
        volumes,
        30,
    )
}

/// The taskmanager Deployment: `spec.replicas` pods (none when suspended). A long grace period lets
/// a stopping taskmanager flush its batches and hand its partitions back.
pub fn taskmanager_deployment(ctx: &Context) -> Deployment {
    // The worker gives up on an in-flight batch after `stopTimeout` (Redis or Kafka down); the pod
    // must not be killed before that, and needs a few seconds more to hand its partitions back.
    // (An unparsable value never gets here: rendering the config refuses it first.)
    let stop_timeout = humantime::parse_duration(&ctx.job.spec.batch.stop_timeout)
        .map_or(20, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2));
    let grace_seconds = (stop_timeout + 30).max(60);
    let replicas = match ctx.job.spec.state {
        JobState::Running => ctx.job.spec.replicas,
        JobState::Suspended => 0,
    };
    let mut container = worker_container(ctx, "taskmanager", &ctx.job.spec.taskmanager);
    container.ports = Some(vec![port("metrics", METRICS_PORT)]);
    container.liveness_probe = Some(probe("metrics", HEALTHZ, 10, 3));
    // Ready once registered with the jobmanager and holding every partition it was given: a
    // rolling upgrade stops an old taskmanager only then.
    container.readiness_probe = Some(probe("metrics", READYZ, 1, 2));
    container.startup_probe = Some(probe("metrics", HEALTHZ, 2, 60));
    container.env.get_or_insert_with(Vec::new).push(EnvVar {
        name: ENV_REVISION.into(),
        value: Some(ctx.config_hash.to_string()),
        value_from: None,
    });
    let mut deployment = deployment(
        ctx,
        names::taskmanager(ctx.name),
        labels::COMPONENT_TASKMANAGER,
        replicas,
        DeploymentStrategy {
            type_: Some("RollingUpdate".into()),
            // One new taskmanager at a time, next to all the old ones: no partition is ever
            // without an owner that can take it.
            rolling_update: Some(RollingUpdateDeployment {
                max_surge: Some(IntOrString::Int(1)),
                max_unavailable: Some(IntOrString::Int(0)),
            }),
        },
        container,
        common_volumes(ctx),
        grace_seconds,
    );
    let deadline = rollout::progress_deadline(ctx.job).as_secs();
    deployment.spec.progress_deadline_seconds = Some(i32::try_from(deadline).unwrap_or(i32::MAX));
    if let Some(meta) = deployment.spec.template.metadata.as_mut() {
        meta.annotations.get_or_insert_with(BTreeMap::new).insert(
            FENCE_IDENTITY_ANNOTATION.into(),
            FenceIdentity::of(ctx.job).to_annotation(),
        );
    }
    deployment
}

#[allow(clippy::too_many_arguments)]
fn deployment(
    ctx: &Context,
    name: String,
    component: &str,
    replicas: i32,
    strategy: DeploymentStrategy,
    container: Container,
    volumes: Vec<Volume>,
    grace_seconds: i64,
) -> Deployment {
    let spec = &ctx.job.spec;
    let overrides = &spec.pod_template;
    let mut pod_labels = overrides.labels.clone();
    pod_labels.extend(labels::common(ctx.name, component));
    let mut annotations = overrides.annotations.clone();
    annotations.insert(CONFIG_HASH_ANNOTATION.into(), ctx.config_hash.to_string());
    if let Some(nonce) = spec.restart_nonce {
        annotations.insert(RESTART_NONCE_ANNOTATION.into(), nonce.to_string());
    }
    let pod = PodSpec {
        containers: vec![container],
        volumes: Some(volumes),
        termination_grace_period_seconds: Some(grace_seconds),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS),
            run_as_group: Some(RUN_AS),
            fs_group: Some(RUN_AS),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..PodSecurityContext::default()
        }),
        image_pull_secrets: non_empty(spec.image_pull_secrets.clone()),
        node_selector: non_empty_map(overrides.node_selector.clone()),
        tolerations: non_empty(overrides.tolerations.clone()),
        affinity: overrides.affinity.clone(),
        service_account_name: overrides.service_account_name.clone(),
        priority_class_name: overrides.priority_class_name.clone(),
        ..PodSpec::default()
    };
    Deployment {
        metadata: ctx.meta(name, component),
        spec: DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(labels::selector(ctx.name, component)),
                match_expressions: None,
            },
            strategy: Some(strategy),
            revision_history_limit: Some(3),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

fn worker_container(ctx: &Context, role: &str, process: &ProcessSpec) -> Container {
    let spec = &ctx.job.spec;
    let mut mounts = vec![
        VolumeMount {
            name: "config".into(),
            mount_path: CONFIG_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..VolumeMount::default()
        },
    ];
    if spec.kafka.tls.is_some() {
        mounts.push(VolumeMount {
            name: "kafka-tls".into(),
            mount_path: TLS_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    if spec.redis.tls.is_some() {
        mounts.push(VolumeMount {
            name: "redis-tls".into(),
            mount_path: REDIS_TLS_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    Container {
        name: role.into(),
        image: Some(spec.image.clone()),
        image_pull_policy: Some(spec.image_pull_policy.as_str().into()),
        command: Some(vec!["streamjob-worker".into()]),
        args: Some(vec![
            role.into(),
            "--config".into(),
            format!("{CONFIG_DIR}/{CONFIG_KEY}"),
        ]),
        env: Some(env(ctx)),
        resources: process.resources.clone(),
        volume_mounts: Some(mounts),
        // The worker writes a fatal error (wrong CA, refused password, missing Secret key) to
        // /dev/termination-log; without one the last log lines stand in. The planner shows it in
        // the StreamJob's Degraded condition.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

/// Downward-API identity plus secrets, only ever by `secretKeyRef`.
fn env(ctx: &Context) -> Vec<EnvVar> {
    let spec = &ctx.job.spec;
    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
    ];
    if let Some(password) = &spec.redis.password_secret_ref {
        env.push(secret_env(ENV_REDIS_PASSWORD, password));
    }
    if let Some(password) = spec
        .redis
        .sentinel
        .as_ref()
        .and_then(|s| s.password_secret_ref.as_ref())
    {
        env.push(secret_env(ENV_REDIS_SENTINEL_PASSWORD, password));
    }
    if let Some(sasl) = &spec.kafka.sasl {
        env.push(secret_env(
            ENV_KAFKA_SASL_USERNAME,
            &sasl.username_secret_ref,
        ));
        env.push(secret_env(
            ENV_KAFKA_SASL_PASSWORD,
            &sasl.password_secret_ref,
        ));
    }
    env
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
        value: None,
    }
}

fn secret_env(name: &str, secret: &SecretKeyRef) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.name.clone(),
                key: secret.key.clone(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        value: None,
    }
}

fn common_volumes(ctx: &Context) -> Vec<Volume> {
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: names::config(ctx.name),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity("256Mi".into())),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    if let Some(tls) = &ctx.job.spec.kafka.tls {
        volumes.push(secret_files_volume(
            "kafka-tls",
            [
                (&tls.ca_secret_ref, "ca.crt"),
                (&tls.cert_secret_ref, "tls.crt"),
                (&tls.key_secret_ref, "tls.key"),
            ],
        ));
    }
    if let Some(tls) = &ctx.job.spec.redis.tls {
        volumes.push(secret_files_volume(
            "redis-tls",
            [
                (&tls.ca_secret_ref, "ca.crt"),
                (&tls.cert_secret_ref, "tls.crt"),
                (&tls.key_secret_ref, "tls.key"),
            ],
        ));
    }
    volumes
}

/// Secret keys as files in one read-only directory (a projected volume: the keys may come from
/// different Secrets). Never environment variables or ConfigMap contents. The projections are
/// optional, so a missing Secret or key does not hold the pod in ContainerCreating: the worker
/// starts, reports "cannot read /etc/...: the Secret key is missing" naming the job.yaml field,
/// exits, and the kubelet restarts it with backoff until the Secret appears.
fn secret_files_volume<const N: usize>(
    name: &str,
    files: [(&Option<SecretKeyRef>, &str); N],
) -> Volume {
    let sources = files
        .into_iter()
        .filter_map(|(secret, file)| secret.as_ref().map(|s| (s, file)))
        .map(|(secret, file)| VolumeProjection {
            secret: Some(SecretProjection {
                name: secret.name.clone(),
                items: Some(vec![KeyToPath {
                    key: secret.key.clone(),
                    path: file.into(),
                    mode: Some(0o440),
                    ..KeyToPath::default()
                }]),
                optional: Some(true),
            }),
            ..VolumeProjection::default()
        })
        .collect::<Vec<_>>();
    Volume {
        name: name.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(sources),
            default_mode: Some(0o440),
            ..ProjectedVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn port(name: &str, number: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: number,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

fn probe(port_name: &str, path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(port_name.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

fn non_empty<T>(items: Vec<T>) -> Option<Vec<T>> {
    (!items.is_empty()).then_some(items)
}

fn non_empty_map(map: BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    (!map.is_empty()).then_some(map)
}

/// The namespace label every namespace carries (Kubernetes 1.21+).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

fn namespaces(labels: Option<&BTreeMap<String, String>>) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        // `{}` selects every namespace.
        namespace_selector: Some(LabelSelector {
            match_labels: labels.cloned().filter(|l| !l.is_empty()),
            match_expressions: None,
        }),
        ..NetworkPolicyPeer::default()
    }
}

fn tcp(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".into()),
        end_port: None,
    }
}

fn ingress_only(
    ctx: &Context,
    component: &str,
    ingress: Vec<NetworkPolicyIngressRule>,
) -> NetworkPolicy {
    let name = match component {
        labels::COMPONENT_JOBMANAGER => names::jobmanager(ctx.name),
        _ => names::taskmanager(ctx.name),
    };
    NetworkPolicy {
        metadata: ctx.meta(name, component),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(labels::selector(ctx.name, component)),
                match_expressions: None,
            }),
            ingress: Some(ingress),
            // Only ingress is restricted: Kafka and Redis may live anywhere.
            policy_types: Some(vec!["Ingress".into()]),
            egress: None,
        }),
    }
}

/// The job's NetworkPolicies (none when `spec.networkPolicy.enabled` is false):
/// - jobmanager: its REST port (which also serves the taskmanagers' protocol and `/metrics`)
///   accepts pods of the job's own namespace, of the operator's namespace and of the metrics
///   namespaces;
/// - taskmanagers: accept their jobmanager, and their metrics port the metrics namespaces.
pub fn network_policies(ctx: &Context) -> Vec<NetworkPolicy> {
    if !ctx.job.spec.network_policy.enabled {
        return Vec::new();
    }
    let same_namespace = NetworkPolicyPeer {
        pod_selector: Some(LabelSelector::default()),
        ..NetworkPolicyPeer::default()
    };
    let operator = ctx.peers.operator_namespace.as_ref().map(|ns| {
        namespaces(Some(&BTreeMap::from([(
            NAMESPACE_NAME_LABEL.to_string(),
            ns.clone(),
        )])))
    });
    let metrics = namespaces(ctx.peers.metrics_namespace_labels.as_ref());
    let rest_from = match operator {
        Some(operator) => vec![same_namespace, operator, metrics.clone()],
        // Where the operator runs is unknown (e.g. out of the cluster): any namespace.
        None => vec![same_namespace, namespaces(None)],
    };
    let jobmanager = ingress_only(
        ctx,
        labels::COMPONENT_JOBMANAGER,
        vec![NetworkPolicyIngressRule {
            from: Some(rest_from),
            ports: Some(vec![tcp(REST_PORT)]),
        }],
    );
    let jobmanager_pods = NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(labels::selector(ctx.name, labels::COMPONENT_JOBMANAGER)),
            match_expressions: None,
        }),
        ..NetworkPolicyPeer::default()
    };
    let taskmanager = ingress_only(
        ctx,
        labels::COMPONENT_TASKMANAGER,
        vec![
            NetworkPolicyIngressRule {
                from: Some(vec![jobmanager_pods]),
                ports: None,
            },
            NetworkPolicyIngressRule {
                from: Some(vec![metrics]),
                ports: Some(vec![tcp(METRICS_PORT)]),
            },
        ],
    );
    vec![jobmanager, taskmanager]
}
