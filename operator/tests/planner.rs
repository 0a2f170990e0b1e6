//! The pure planner: desired children, status and events from (StreamJob, observed, report, now).

mod support;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus};
use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;
use streamjob_operator::crd::{JobState, Phase, PvcPolicy, SecretKeyRef, StreamJob};
use streamjob_operator::planner::children::{CONFIG_HASH_ANNOTATION, RESTART_NONCE_ANNOTATION};
use streamjob_operator::planner::lifecycle::JobManagerView;
use streamjob_operator::planner::{
    self, Action, EventSeverity, JobManagerReport, Observed, Plan, PlanInput,
};
use streamjob_worker::api::{PartitionState, PartitionStatus};
use streamjob_worker::config::JobConfig;

fn now() -> Timestamp {
    Timestamp::from_second(1_763_700_000).expect("valid time")
}

fn plan_for(job: &StreamJob, observed: &Observed) -> Plan {
    planner::plan(PlanInput {
        job,
        observed,
        jobmanager: None,
        now: now(),
    })
    .expect("plans")
}

/// The Deployment as the cluster shows it once its rollout finished.
fn rolled_out(desired: &Deployment, ready: i32) -> Deployment {
    let mut deployment = desired.clone();
    deployment.metadata.generation = Some(1);
    let replicas = desired.spec.replicas.unwrap_or(1);
    deployment.status = Some(DeploymentStatus {
        observed_generation: Some(1),
        replicas: Some(replicas),
        updated_replicas: Some(replicas),
        ready_replicas: Some(ready.min(replicas)),
        available_replicas: Some(ready.min(replicas)),
        ..DeploymentStatus::default()
    });
    deployment
}

fn observed_after(plan: &Plan) -> Observed {
    Observed {
        jobmanager: Some(rolled_out(&plan.children.jobmanager, 1)),
        taskmanager: Some(rolled_out(&plan.children.taskmanager, i32::MAX)),
        savepoint_pvc: Some(plan.children.savepoint_pvc.clone()),
        pods: Vec::new(),
        api_token: plan
            .children
            .api_token
            .as_ref()
            .and_then(streamjob_operator::planner::children::api_token_of),
    }
}

fn pod_annotation(deployment: &Deployment, key: &str) -> Option<String> {
    deployment
        .spec
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(key)
        .cloned()
}

fn events(plan: &Plan) -> Vec<(EventSeverity, String)> {
    plan.actions
        .iter()
        .map(|Action::Publish(note)| (note.severity, note.reason.clone()))
        .collect()
}

fn condition<'a>(
    plan: &'a Plan,
    type_: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    plan.status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .expect("condition present")
}

/// `spec.redis.tls.serverName` reaches the workers' `job.yaml` as `sink.redis.tls.serverName`
/// (and nothing is rendered without it).
#[test]
fn the_redis_tls_server_name_reaches_the_workers_config() {
    let job_yaml = |job: &StreamJob| {
        let plan = plan_for(job, &Observed::default());
        plan.children.config_map.data.as_ref().expect("data")["job.yaml"].clone()
    };
    let mut job = support::sample("full.yaml");
    let without = job_yaml(&job);
    assert!(!without.contains("serverName"), "{without}");
    job.spec
        .redis
        .tls
        .as_mut()
        .expect("full.yaml has redis.tls")
        .server_name = Some("redis.internal".into());
    let yaml = job_yaml(&job);
    let config = JobConfig::from_yaml(&yaml).expect("the worker accepts the rendered config");
    let tls = config
        .sink
        .redis
        .tls
        .as_ref()
        .expect("sink.redis.tls rendered");
    assert_eq!(tls.server_name.as_deref(), Some("redis.internal"));
    assert_eq!(
        tls.ca_file.as_deref().and_then(|p| p.to_str()),
        Some("/etc/streamjob-redis-tls/ca.crt")
    );
}

#[test]
fn the_config_map_holds_the_workers_own_config_without_secrets() {
    let job = support::sample("full.yaml");
    let plan = plan_for(&job, &Observed::default());
    let yaml = &plan.children.config_map.data.as_ref().expect("data")["job.yaml"];
    let config = JobConfig::from_yaml(yaml).expect("the worker accepts the rendered config");
    assert_eq!(config.job.name, "trace-eu");
    assert_eq!(config.jobmanager.bind, "0.0.0.0:8081");
    assert_eq!(
        config.jobmanager.url,
        "http://trace-eu-jobmanager.austin.svc:8081"
    );
    assert_eq!(config.metrics.bind, "0.0.0.0:9249");
    assert_eq!(config.checkpoint.dir.to_str(), Some("/var/lib/streamjob"));
    assert_eq!(config.source.kafka.security_protocol, "sasl_ssl");
    assert_eq!(
        config
            .source
            .kafka
            .properties
            .get("ssl.ca.location")
            .map(String::as_str),
        Some("/etc/streamjob-tls/ca.crt")
    );
    assert_eq!(config.batch.max_events, 2000);
    assert_eq!(
        config.batch.stop_timeout,
        std::time::Duration::from_secs(45)
    );
    assert_eq!(config.savepoint.max_count, 10);
    let redis = &config.sink.redis;
    assert_eq!(redis.username.as_deref(), Some("streamjob"));
    let tls = redis.tls.as_ref().expect("sink.redis.tls rendered");
    assert_eq!(
        (
            tls.ca_file.as_deref().and_then(|p| p.to_str()),
            tls.cert_file.as_deref().and_then(|p| p.to_str()),
            tls.key_file.as_deref().and_then(|p| p.to_str()),
        ),
        (
            Some("/etc/streamjob-redis-tls/ca.crt"),
            Some("/etc/streamjob-redis-tls/tls.crt"),
            Some("/etc/streamjob-redis-tls/tls.key")
        )
    );
    assert!(
        config
            .source
            .kafka
            .sasl
            .as_ref()
            .expect("sasl")
            .username
            .is_none()
            && !yaml.contains("password:")
            && !yaml.contains("BEGIN"),
        "{yaml}"
    );
    assert!(
        !yaml.contains("kafka-credentials") && !yaml.contains("redis-credentials"),
        "{yaml}"
    );
}

#[test]
fn the_taskmanager_grace_period_outlasts_the_batch_stop_timeout() {
    let grace = |job: &StreamJob| {
        plan_for(job, &Observed::default())
            .children
            .taskmanager
            .spec
            .template
            .spec
            .and_then(|p| p.termination_grace_period_seconds)
    };
    // Default stopTimeout 20s: the 60 s floor.
    assert_eq!(grace(&support::sample("minimal.yaml")), Some(60));
    // stopTimeout 45s: 30 s more to hand the partitions back.
    assert_eq!(grace(&support::sample("full.yaml")), Some(75));
}

#[test]
fn secrets_reach_the_pods_only_by_secret_key_ref() {
    let job = support::sample("full.yaml");
    let plan = plan_for(&job, &Observed::default());
    for deployment in [&plan.children.jobmanager, &plan.children.taskmanager] {
        let pod = deployment.spec.template.spec.as_ref().expect("pod spec");
        let env = pod.containers[0].env.as_ref().expect("env");
        let by_name = |name: &str| {
            env.iter()
                .find(|e| e.name == name)
                .unwrap_or_else(|| panic!("{name} set"))
        };
        for (name, secret, key) in [
            ("STREAMJOB_REDIS_PASSWORD", "redis-credentials", "password"),
            (
                "STREAMJOB_KAFKA_SASL_USERNAME",
                "kafka-credentials",
                "username",
            ),
            (
                "STREAMJOB_KAFKA_SASL_PASSWORD",
                "kafka-credentials",
                "password",
            ),
        ] {
            let var = by_name(name);
            assert!(var.value.is_none(), "{name} must not carry a literal value");
            let reference = var
                .value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref())
                .expect("secretKeyRef");
            assert_eq!(
                (reference.name.as_str(), reference.key.as_str()),
                (secret, key)
            );
        }
        for name in ["POD_NAME", "POD_NAMESPACE"] {
            assert!(by_name(name)
                .value_from
                .as_ref()
                .and_then(|v| v.field_ref.as_ref())
                .is_some());
        }
    }
}

#[test]
fn pods_run_hardened_with_probes_and_the_contracted_commands() {
    let job = support::sample("minimal.yaml");
    let plan = plan_for(&job, &Observed::default());
    for (deployment, role, port) in [
        (&plan.children.jobmanager, "jobmanager", ("rest", 8081)),
        (&plan.children.taskmanager, "taskmanager", ("metrics", 9249)),
    ] {
        let pod = deployment.spec.template.spec.as_ref().expect("pod spec");
        let container = &pod.containers[0];
        assert_eq!(
            container.command.as_deref(),
            Some(&["streamjob-worker".to_string()][..])
        );
        assert_eq!(
            container.args.as_deref(),
            Some(
                &[
                    role.to_string(),
                    "--config".into(),
                    "/etc/streamjob/job.yaml".into()
                ][..]
            )
        );
        let ports = container.ports.as_ref().expect("ports");
        assert_eq!(
            (ports[0].name.as_deref(), ports[0].container_port),
            (Some(port.0), port.1)
        );
        let path = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
            probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|g| g.path.clone())
                .expect("http probe")
        };
        assert_eq!(path(&container.liveness_probe), "/healthz");
        // A taskmanager is ready once registered and holding its partitions (what a rolling
        // upgrade waits for before it stops an old one).
        let ready = if role == "taskmanager" {
            "/readyz"
        } else {
            "/healthz"
        };
        assert_eq!(path(&container.readiness_probe), ready);
        let security = container
            .security_context
            .as_ref()
            .expect("container securityContext");
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(
            security.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_string()])
        );
        assert_eq!(
            pod.security_context
                .as_ref()
                .and_then(|s| s.run_as_non_root),
            Some(true)
        );
        let mounts = container.volume_mounts.as_ref().expect("mounts");
        assert!(
            mounts.iter().any(|m| m.mount_path == "/tmp"),
            "writable /tmp"
        );
        assert!(mounts
            .iter()
            .any(|m| m.mount_path == "/etc/streamjob" && m.read_only == Some(true)));
    }
    let jm = &plan.children.jobmanager;
    assert_eq!(jm.spec.replicas, Some(1));
    assert_eq!(
        jm.spec.strategy.as_ref().and_then(|s| s.type_.as_deref()),
        Some("Recreate")
    );
    let jm_pod = jm.spec.template.spec.as_ref().expect("pod spec");
    assert!(jm_pod.containers[0]
        .volume_mounts
        .as_ref()
        .expect("mounts")
        .iter()
        .any(|m| m.mount_path == "/var/lib/streamjob"));
    assert!(jm_pod.volumes.as_ref().expect("volumes").iter().any(|v| v
        .persistent_volume_claim
        .as_ref()
        .is_some_and(|c| c.claim_name == "trace-savepoints")));
    let tm_pod = plan
        .children
        .taskmanager
        .spec
        .template
        .spec
        .as_ref()
        .expect("pod spec");
    assert!(
        tm_pod.termination_grace_period_seconds.unwrap_or(0) >= 30,
        "graceful termination"
    );
}

#[test]
fn pod_overrides_reach_every_pod() {
    let job = support::sample("full.yaml");
    let plan = plan_for(&job, &Observed::default());
    for deployment in [&plan.children.jobmanager, &plan.children.taskmanager] {
        let template = &deployment.spec.template;
        let pod = template.spec.as_ref().expect("pod spec");
        assert_eq!(pod.service_account_name.as_deref(), Some("trace-eu"));
        assert_eq!(pod.priority_class_name.as_deref(), Some("streaming"));
        assert_eq!(
            pod.node_selector
                .as_ref()
                .and_then(|n| n.get("kubernetes.io/os"))
                .map(String::as_str),
            Some("linux")
        );
        assert_eq!(pod.tolerations.as_ref().map(Vec::len), Some(1));
        assert!(pod.affinity.is_some());
        assert_eq!(
            pod.image_pull_secrets.as_ref().map(|s| s[0].name.as_str()),
            Some("registry-credentials")
        );
        let meta = template.metadata.as_ref().expect("template metadata");
        assert_eq!(
            meta.labels
                .as_ref()
                .and_then(|l| l.get("team"))
                .map(String::as_str),
            Some("austin")
        );
        assert_eq!(
            meta.annotations
                .as_ref()
                .and_then(|a| a.get("prometheus.io/scrape"))
                .map(String::as_str),
            Some("true")
        );
        let container = &pod.containers[0];
        assert_eq!(container.image_pull_policy.as_deref(), Some("Always"));
        assert!(container
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .is_some());
        assert!(pod
            .volumes
            .as_ref()
            .expect("volumes")
            .iter()
            .any(|v| v.name == "kafka-tls"));
    }
}

#[test]
fn replicas_flow_to_the_taskmanagers_and_back_into_status() {
    let mut job = support::sample("minimal.yaml");
    job.spec.replicas = 3;
    let first = plan_for(&job, &Observed::default());
    assert_eq!(first.children.taskmanager.spec.replicas, Some(3));
    let mut observed = observed_after(&first);
    if let Some(status) = observed
        .taskmanager
        .as_mut()
        .and_then(|d| d.status.as_mut())
    {
        status.ready_replicas = Some(2);
    }
    let second = plan_for(&job, &observed);
    assert_eq!(second.status.replicas, 3);
    assert_eq!(second.status.ready_replicas, 2);
    let selector = &first
        .children
        .taskmanager
        .spec
        .selector
        .match_labels
        .clone()
        .expect("selector");
    let expected: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    assert_eq!(second.status.selector, expected.join(","));
    assert_eq!(condition(&second, "Ready").status, "False");
    assert_eq!(condition(&second, "Ready").reason, "WaitingForPods");
}

#[test]
fn a_first_plan_creates_and_a_finished_rollout_runs() {
    let job = support::sample("minimal.yaml");
    let first = plan_for(&job, &Observed::default());
    assert_eq!(first.status.phase, Phase::Deploying);
    assert_eq!(first.status.observed_generation, Some(1));
    assert_eq!(condition(&first, "Progressing").reason, "Creating");
    assert!(events(&first).contains(&(EventSeverity::Normal, "Deploying".into())));

    let mut job = job;
    job.status = Some(first.status.clone());
    let second = plan_for(&job, &observed_after(&first));
    assert_eq!(second.status.phase, Phase::Running);
    assert_eq!(condition(&second, "Ready").status, "True");
    assert_eq!(condition(&second, "Progressing").status, "False");
    assert_eq!(condition(&second, "Degraded").status, "False");
    assert!(events(&second).contains(&(EventSeverity::Normal, "Running".into())));
    assert!(
        second.requeue_after > first.requeue_after,
        "stable jobs are requeued less often"
    );

    // Nothing changed: no transition, no event.
    job.status = Some(second.status.clone());
    let third = plan_for(&job, &observed_after(&first));
    assert_eq!(third.status, second.status);
    assert!(third.actions.is_empty(), "{:?}", third.actions);
}

#[test]
fn a_new_job_stays_creating_until_its_deployments_are_looked_at() {
    let mut job = support::sample("minimal.yaml");
    let first = plan_for(&job, &Observed::default());
    job.status = Some(first.status.clone());

    // Our own apply's watch event: the Deployments exist, their controller has not looked yet.
    let just_applied = Observed {
        jobmanager: Some(first.children.jobmanager.clone()),
        taskmanager: Some(first.children.taskmanager.clone()),
        ..observed_after(&first)
    };
    let second = plan_for(&job, &just_applied);
    assert_eq!(second.status, first.status, "no second status write");
    assert!(events(&second).is_empty());

    // The Deployment controller's first look: the taskmanagers are being scaled up from 0.
    let mut looked_at = just_applied.clone();
    for deployment in [&mut looked_at.jobmanager, &mut looked_at.taskmanager] {
        let deployment = deployment.as_mut().expect("applied");
        deployment.metadata.generation = Some(1);
        deployment.status = Some(DeploymentStatus {
            observed_generation: Some(1),
            ..DeploymentStatus::default()
        });
    }
    let third = plan_for(&job, &looked_at);
    assert_eq!(third.status.phase, Phase::Deploying);
    assert_eq!(condition(&third, "Progressing").reason, "Scaling");
}

#[test]
fn a_spec_change_rolls_the_pods_and_is_announced() {
    let job = support::sample("minimal.yaml");
    let before = plan_for(&job, &Observed::default());
    let mut running = job.clone();
    running.status = Some(
        plan_for(
            &{
                let mut j = job.clone();
                j.status = Some(before.status.clone());
                j
            },
            &observed_after(&before),
        )
        .status,
    );
    let mut changed = running.clone();
    changed.spec.batch.linger = "50ms".into();
    changed.metadata.generation = Some(2);
    let after = plan_for(&changed, &observed_after(&before));
    let hash = |p: &Plan, d: &Deployment| {
        pod_annotation(d, CONFIG_HASH_ANNOTATION).unwrap_or_else(|| panic!("hash on {p:?}"))
    };
    assert_ne!(
        hash(&before, &before.children.taskmanager),
        hash(&after, &after.children.taskmanager)
    );
    assert_ne!(
        hash(&before, &before.children.jobmanager),
        hash(&after, &after.children.jobmanager)
    );
    // The default upgradeMode rolls: the job keeps processing while the pods are replaced.
    assert_eq!(after.status.phase, Phase::RollingUpgrade);
    assert_eq!(condition(&after, "Progressing").reason, "RollingUpgrade");
    assert_eq!(condition(&after, "Ready").status, "True");
    assert!(
        events(&after).contains(&(EventSeverity::Normal, "ConfigChanged".into())),
        "{:?}",
        events(&after)
    );
}

#[test]
fn a_restart_nonce_rolls_the_pods_without_changing_the_config() {
    let mut job = support::sample("minimal.yaml");
    let before = plan_for(&job, &Observed::default());
    job.spec.restart_nonce = Some(7);
    let after = plan_for(&job, &Observed::default());
    assert_eq!(before.children.config_map, after.children.config_map);
    assert_eq!(
        pod_annotation(&after.children.taskmanager, RESTART_NONCE_ANNOTATION).as_deref(),
        Some("7")
    );
    assert_eq!(
        pod_annotation(&before.children.taskmanager, RESTART_NONCE_ANNOTATION),
        None
    );
}

#[test]
fn suspending_scales_everything_to_zero() {
    let mut job = support::sample("minimal.yaml");
    let running = plan_for(&job, &Observed::default());
    job.spec.state = JobState::Suspended;
    let suspending = plan_for(&job, &observed_after(&running));
    assert_eq!(suspending.children.jobmanager.spec.replicas, Some(0));
    assert_eq!(suspending.children.taskmanager.spec.replicas, Some(0));
    assert_eq!(suspending.status.phase, Phase::Suspending);
    assert_eq!(
        pod_annotation(&suspending.children.taskmanager, CONFIG_HASH_ANNOTATION),
        pod_annotation(&running.children.taskmanager, CONFIG_HASH_ANNOTATION),
        "suspending must not change the pod template"
    );
    let suspended = plan_for(&job, &observed_after(&suspending));
    assert_eq!(suspended.status.phase, Phase::Suspended);
    assert_eq!(condition(&suspended, "Ready").reason, "Suspended");
}

#[test]
fn a_stuck_rollout_is_degraded_with_a_warning() {
    let job = support::sample("minimal.yaml");
    let first = plan_for(&job, &Observed::default());
    let mut observed = observed_after(&first);
    if let Some(status) = observed
        .taskmanager
        .as_mut()
        .and_then(|d| d.status.as_mut())
    {
        status.conditions = Some(vec![DeploymentCondition {
            type_: Some("Progressing".into()),
            status: Some("False".into()),
            reason: Some("ProgressDeadlineExceeded".into()),
            message: Some("ReplicaSet has timed out progressing".into()),
            ..DeploymentCondition::default()
        }]);
    }
    let plan = plan_for(&job, &observed);
    assert_eq!(plan.status.phase, Phase::Failed);
    let degraded = condition(&plan, "Degraded");
    assert_eq!(degraded.status, "True");
    assert!(
        degraded.message.contains("trace-taskmanager") && degraded.message.contains("timed out"),
        "{}",
        degraded.message
    );
    // One cause, one Event: the failed rollout, which also says the phase moved (not a
    // `Failed` Event beside it).
    assert_eq!(
        events(&plan),
        [(EventSeverity::Warning, "RolloutFailed".to_string())]
    );
    let Action::Publish(note) = &plan.actions[0];
    assert!(
        note.message.contains("-> Failed") && note.message.contains("timed out"),
        "{}",
        note.message
    );
}

#[test]
fn a_failure_keeps_observations_and_sets_degraded() {
    let mut job = support::sample("minimal.yaml");
    let first = plan_for(&job, &Observed::default());
    job.status = Some(
        plan_for(
            &{
                let mut j = job.clone();
                j.status = Some(first.status.clone());
                j
            },
            &observed_after(&first),
        )
        .status,
    );
    let (status, actions) =
        planner::failed_status(&job, "ApplyFailed", "deployments.apps is forbidden", now());
    assert_eq!(status.phase, Phase::Failed);
    assert_eq!(status.replicas, 1, "observations are kept");
    let degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .expect("Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "ApplyFailed")
    );
    assert!(degraded.message.contains("forbidden"));
    assert!(actions.iter().any(
        |Action::Publish(n)| n.severity == EventSeverity::Warning && n.reason == "ApplyFailed"
    ));
}

/// Why `job` cannot be planned (it must not be).
fn refusal(job: &StreamJob, why: &str) -> planner::PlanError {
    planner::plan(PlanInput {
        job,
        observed: &Observed::default(),
        jobmanager: None,
        now: now(),
    })
    .expect_err(why)
}

#[test]
fn an_invalid_spec_is_refused_with_the_field_name() {
    let mut job = support::sample("minimal.yaml");
    job.spec.batch.linger = "soon".into();
    let error = refusal(&job, "linger is not a duration");
    assert!(error.to_string().contains("spec.batch.linger"), "{error}");
    assert_eq!(error.reason(), "InvalidSpec");
}

/// An object stored before the CRD had the rule is never checked against it again by the API
/// server, yet it is still refused: the planner validates the workers' config, and names the
/// field there.
#[test]
fn a_cluster_key_prefix_with_a_hash_tag_is_refused_past_the_crd_too() {
    let mut job = support::sample("cluster.yaml");
    job.spec.redis.key_prefix = "{eu}:".into();
    let message = refusal(&job, "a hash tag in a cluster's prefix").to_string();
    assert!(message.contains("sink.redis.keyPrefix"), "{message}");
    assert!(message.contains("hash tag"), "{message}");
    job.spec.redis.key_prefix = "eu:".into();
    plan_for(&job, &Observed::default());
}

#[test]
fn the_jobmanager_report_becomes_job_progress() {
    let job = support::sample("minimal.yaml");
    let mut overview = support::fake_jobmanager::overview("trace");
    overview.total_lag = Some(12);
    overview.events_per_second = 150.0;
    overview.partitions = [(0, 5, 10, 15, 100.0), (1, 7, 3, 10, 50.0)]
        .into_iter()
        .map(|(partition, lag, committed, high, rate)| PartitionStatus {
            partition,
            state: PartitionState::Running,
            owner: Some("tm-0".into()),
            generation: Some(1),
            committed_offset: Some(committed),
            high_watermark: Some(high),
            lag: Some(lag),
            events_per_second: rate,
            rewinds: u64::from(partition == 1),
            last_rewind: (partition == 1).then_some(streamjob_worker::api::Rewind {
                from_offset: 9,
                to_offset: 3,
                at_ms: 1_700_000_000_000,
            }),
            ..Default::default()
        })
        .collect();
    let report = JobManagerReport {
        observed_at: now(),
        view: JobManagerView {
            overview: Ok(overview),
            poll: None,
            savepoints: None,
            checkpoints: None,
        },
    };
    let plan = planner::plan(PlanInput {
        job: &job,
        observed: &Observed::default(),
        jobmanager: Some(&report),
        now: now(),
    })
    .expect("plans");
    // Redis lost writes of partition 1: a Warning Event and the RedisRewound condition say so.
    let message = "Redis lost acknowledged writes; partition 1 rewound from 9 to 3";
    assert!(
        plan.actions
            .iter()
            .any(|a| matches!(a, Action::Publish(note)
            if note.reason == "RedisLostWrites" && note.message == message)),
        "{:?}",
        plan.actions
    );
    let rewound = plan
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "RedisRewound")
        .expect("RedisRewound condition");
    assert_eq!(
        (rewound.status.as_str(), rewound.message.as_str()),
        ("True", message)
    );
    let progress = plan.status.job.expect("job progress");
    assert_eq!(progress.partitions[1].rewinds, Some(1));
    assert_eq!(progress.lag, Some(12));
    assert_eq!(progress.events_per_second, Some(150.0));
    assert_eq!(progress.partitions.len(), 2);
    assert_eq!(progress.state.as_deref(), Some("RUNNING"));
    assert_eq!(progress.restored_from.as_deref(), Some("starting offsets"));
}

#[test]
fn the_finalizer_hook_announces_what_happens_to_the_pvc() {
    let job = support::sample("minimal.yaml");
    let cleanup = planner::plan_cleanup(PlanInput {
        job: &job,
        observed: &Observed::default(),
        jobmanager: None,
        now: now(),
    })
    .expect("plans cleanup");
    assert!(cleanup.done);
    let Action::Publish(note) = &cleanup.actions[0];
    assert!(
        note.message.contains("trace-savepoints is kept"),
        "{}",
        note.message
    );
}

#[test]
fn deleting_a_job_that_never_ran_skips_the_final_savepoint() {
    let job = support::sample("minimal.yaml");
    assert!(job.spec.savepoint.on_delete.final_savepoint);
    let created = plan_for(&job, &Observed::default());
    // Children exist, the jobmanager never became ready, it never reported progress.
    let observed = Observed {
        jobmanager: Some(rolled_out(&created.children.jobmanager, 0)),
        taskmanager: Some(rolled_out(&created.children.taskmanager, 0)),
        savepoint_pvc: Some(created.children.savepoint_pvc.clone()),
        pods: Vec::new(),
        api_token: None,
    };
    let mut job = job;
    job.status = Some(created.status.clone());
    let cleanup = planner::plan_cleanup(PlanInput {
        job: &job,
        observed: &observed,
        jobmanager: None,
        now: now(),
    })
    .expect("plans cleanup");
    assert!(cleanup.done, "released at once");
    assert!(cleanup.jobmanager_actions.is_empty());
    let reasons: Vec<&str> = cleanup
        .actions
        .iter()
        .map(|Action::Publish(n)| n.reason.as_str())
        .collect();
    assert_eq!(reasons, ["FinalSavepointSkipped", "Deleting"]);

    // Once its jobmanager was ready, the final savepoint is taken.
    let observed = Observed {
        jobmanager: Some(rolled_out(&created.children.jobmanager, 1)),
        ..observed
    };
    let cleanup = planner::plan_cleanup(PlanInput {
        job: &job,
        observed: &observed,
        jobmanager: None,
        now: now(),
    })
    .expect("plans cleanup");
    assert!(!cleanup.done, "waits for the final savepoint");
}

#[test]
fn a_deploying_job_is_polled_only_while_its_jobmanager_is_up() {
    let job = support::sample("minimal.yaml");
    let first = plan_for(&job, &Observed::default());
    assert_eq!(
        first.requeue_after,
        planner::WATCH_RESYNC,
        "nothing is up yet: the watches of the children bring progress"
    );
    let mut job = job;
    job.status = Some(first.status.clone());
    let observed = Observed {
        jobmanager: Some(rolled_out(&first.children.jobmanager, 1)),
        taskmanager: Some(rolled_out(&first.children.taskmanager, 0)),
        savepoint_pvc: Some(first.children.savepoint_pvc.clone()),
        pods: Vec::new(),
        api_token: None,
    };
    let second = plan_for(&job, &observed);
    assert_ne!(second.status.phase, Phase::Running);
    assert_eq!(
        second.requeue_after,
        planner::status::REQUEUE_BUSY,
        "the jobmanager's REST API is not watched: polled while it is up"
    );
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct SpecChoice {
    replicas: i32,
    suspended: bool,
    keep_pvc: bool,
    restart_nonce: Option<i64>,
    linger_ms: u32,
    image_tag: u8,
    with_password: bool,
}

fn spec_choice() -> impl Strategy<Value = SpecChoice> {
    (
        0..50i32,
        any::<bool>(),
        any::<bool>(),
        proptest::option::of(0..5i64),
        1..500u32,
        0..4u8,
        any::<bool>(),
    )
        .prop_map(
            |(
                replicas,
                suspended,
                keep_pvc,
                restart_nonce,
                linger_ms,
                image_tag,
                with_password,
            )| SpecChoice {
                replicas,
                suspended,
                keep_pvc,
                restart_nonce,
                linger_ms,
                image_tag,
                with_password,
            },
        )
}

fn job_from(choice: &SpecChoice) -> StreamJob {
    let mut job = support::sample("minimal.yaml");
    job.spec.replicas = choice.replicas;
    job.spec.state = if choice.suspended {
        JobState::Suspended
    } else {
        JobState::Running
    };
    job.spec.savepoint.on_delete.pvc = if choice.keep_pvc {
        PvcPolicy::Keep
    } else {
        PvcPolicy::Delete
    };
    job.spec.savepoint.on_delete.final_savepoint = choice.keep_pvc;
    job.spec.restart_nonce = choice.restart_nonce;
    job.spec.batch.linger = format!("{}ms", choice.linger_ms);
    job.spec.image = format!("registry.example/streamjob-worker:0.{}.0", choice.image_tag);
    job.spec.redis.password_secret_ref = choice.with_password.then(|| SecretKeyRef {
        name: "redis".into(),
        key: "password".into(),
    });
    job
}

fn owner_uids(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Vec<String> {
    meta.owner_references
        .iter()
        .flatten()
        .filter(|o| o.controller == Some(true))
        .map(|o| o.uid.clone())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_same_input_gives_the_same_plan(choice in spec_choice()) {
        let job = job_from(&choice);
        let observed = observed_after(&plan_for(&job, &Observed::default()));
        prop_assert_eq!(plan_for(&job, &observed), plan_for(&job, &observed));
    }

    #[test]
    fn every_child_is_owned_except_a_kept_pvc(choice in spec_choice()) {
        let job = job_from(&choice);
        let plan = plan_for(&job, &Observed::default());
        let uid = job.metadata.uid.clone().expect("uid");
        let c = &plan.children;
        for meta in [&c.config_map.metadata, &c.jobmanager_service.metadata, &c.jobmanager.metadata, &c.taskmanager.metadata] {
            prop_assert_eq!(owner_uids(meta), vec![uid.clone()]);
            prop_assert_eq!(meta.labels.as_ref().and_then(|l| l.get("app.kubernetes.io/managed-by")).map(String::as_str), Some("streamjob-operator"));
        }
        if choice.keep_pvc {
            prop_assert!(c.savepoint_pvc.metadata.owner_references.is_none(), "a kept PVC must never be garbage-collected");
        } else {
            prop_assert_eq!(owner_uids(&c.savepoint_pvc.metadata), vec![uid]);
        }
    }

    #[test]
    fn replicas_reach_the_taskmanagers_and_only_pod_changes_change_the_hash(a in spec_choice(), b in spec_choice()) {
        let (job_a, job_b) = (job_from(&a), job_from(&b));
        let (plan_a, plan_b) = (plan_for(&job_a, &Observed::default()), plan_for(&job_b, &Observed::default()));
        let expected = if b.suspended { 0 } else { b.replicas };
        prop_assert_eq!(plan_b.children.taskmanager.spec.replicas, Some(expected));
        let pod_affecting = |c: &SpecChoice| (c.linger_ms, c.image_tag, c.with_password);
        let same_hash = pod_annotation(&plan_a.children.taskmanager, CONFIG_HASH_ANNOTATION)
            == pod_annotation(&plan_b.children.taskmanager, CONFIG_HASH_ANNOTATION);
        prop_assert_eq!(same_hash, pod_affecting(&a) == pod_affecting(&b));
    }

    /// Across any sequence of spec edits (including switching the PVC policy back and forth), a plan
    /// never deletes anything, and a PVC the spec keeps never carries an owner reference.
    #[test]
    fn no_plan_ever_deletes_a_kept_pvc(choices in proptest::collection::vec(spec_choice(), 1..6)) {
        let mut job = job_from(&choices[0]);
        let mut observed = Observed::default();
        for choice in &choices {
            let status = job.status.clone();
            job = job_from(choice);
            job.status = status;
            let plan = plan_for(&job, &observed);
            for action in &plan.actions {
                let Action::Publish(_) = action;
            }
            if choice.keep_pvc {
                prop_assert!(plan.children.savepoint_pvc.metadata.owner_references.is_none());
            }
            observed = observed_after(&plan);
            job.status = Some(plan.status);
        }
    }
}

fn with_token(token: &str) -> Observed {
    Observed {
        api_token: Some(token.into()),
        ..Observed::default()
    }
}

#[test]
fn the_api_token_secret_is_an_owned_child_holding_the_observed_token() {
    let job = support::sample("minimal.yaml");
    let plan = plan_for(&job, &with_token("0123abcd"));
    let secret = plan.children.api_token.as_ref().expect("a Secret child");
    let meta = &secret.metadata;
    assert_eq!(meta.name.as_deref(), Some("trace-api-token"));
    assert_eq!(meta.namespace.as_deref(), Some("default"));
    let owner = &meta.owner_references.as_ref().expect("owned")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("StreamJob", Some(true))
    );
    let labels = meta.labels.as_ref().expect("labels");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "streamjob-operator");
    assert_eq!(labels["app.kubernetes.io/component"], "api-token");
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    assert_eq!(
        streamjob_operator::planner::children::api_token_of(secret).as_deref(),
        Some("0123abcd")
    );
    // The planner never invents a token: without one observed there is no Secret to apply.
    assert!(plan_for(&job, &Observed::default())
        .children
        .api_token
        .is_none());
}

#[test]
fn the_jobmanager_reads_the_token_from_the_mounted_secret_and_taskmanagers_never_see_it() {
    let job = support::sample("minimal.yaml");
    let plan = plan_for(&job, &with_token("t"));
    let yaml = &plan.children.config_map.data.as_ref().expect("data")["job.yaml"];
    let config = JobConfig::from_yaml(yaml).expect("valid config");
    assert_eq!(
        config.jobmanager.api_token_file.as_deref(),
        Some(std::path::Path::new("/etc/streamjob-api/token"))
    );
    assert!(
        !yaml.contains("apiToken:"),
        "the token itself is never rendered: {yaml}"
    );

    let pod = plan
        .children
        .jobmanager
        .spec
        .template
        .spec
        .as_ref()
        .expect("pod");
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "api-token")
        .expect("the token volume");
    let source = volume.secret.as_ref().expect("a Secret volume");
    assert_eq!(source.secret_name.as_deref(), Some("trace-api-token"));
    let items = source.items.as_ref().expect("items");
    assert_eq!(
        (items[0].key.as_str(), items[0].path.as_str()),
        ("token", "token")
    );
    let mount = pod.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "api-token")
        .expect("mounted");
    assert_eq!(mount.mount_path, "/etc/streamjob-api");
    assert_eq!(mount.read_only, Some(true));
    assert!(
        !pod.containers[0]
            .env
            .iter()
            .flatten()
            .any(|e| e.name == "STREAMJOB_API_TOKEN"),
        "a file, so a rotated Secret applies without a restart"
    );

    let tm_pod = plan
        .children
        .taskmanager
        .spec
        .template
        .spec
        .as_ref()
        .expect("pod");
    assert!(
        !tm_pod
            .volumes
            .iter()
            .flatten()
            .any(|v| v.name == "api-token"),
        "taskmanagers do not get the token"
    );
}

#[test]
fn a_new_token_changes_the_secret_but_rolls_no_pod() {
    let job = support::sample("minimal.yaml");
    let a = plan_for(&job, &with_token("first"));
    let b = plan_for(&job, &with_token("second"));
    assert_ne!(a.children.api_token, b.children.api_token);
    assert_eq!(a.children.jobmanager, b.children.jobmanager);
    assert_eq!(a.children.taskmanager, b.children.taskmanager);
    assert_eq!(a.children.config_map, b.children.config_map);
}

/// Every certificate and key of `spec.redis.tls` and `spec.kafka.tls` reaches the pods as a file
/// of a read-only projected Secret volume, at the path job.yaml names; never as an environment
/// variable or in the ConfigMap.
#[test]
fn tls_secrets_reach_the_pods_as_read_only_files_where_job_yaml_points() {
    let job = support::sample("full.yaml");
    let plan = plan_for(&job, &Observed::default());
    let yaml = &plan.children.config_map.data.as_ref().expect("data")["job.yaml"];
    let config = JobConfig::from_yaml(yaml).expect("the worker accepts the rendered config");
    let redis_tls = config.sink.redis.tls.as_ref().expect("redis tls");
    let kafka = &config.source.kafka.properties;
    // (volume, mount path, file, secret, key, the path job.yaml gives the worker)
    let expected = [
        (
            "redis-tls",
            "/etc/streamjob-redis-tls",
            "ca.crt",
            "redis-tls",
            "ca.crt",
            redis_tls.ca_file.clone(),
        ),
        (
            "redis-tls",
            "/etc/streamjob-redis-tls",
            "tls.crt",
            "redis-client-tls",
            "tls.crt",
            redis_tls.cert_file.clone(),
        ),
        (
            "redis-tls",
            "/etc/streamjob-redis-tls",
            "tls.key",
            "redis-client-tls",
            "tls.key",
            redis_tls.key_file.clone(),
        ),
        (
            "kafka-tls",
            "/etc/streamjob-tls",
            "ca.crt",
            "kafka-ca",
            "ca.crt",
            kafka.get("ssl.ca.location").map(Into::into),
        ),
        (
            "kafka-tls",
            "/etc/streamjob-tls",
            "tls.crt",
            "kafka-client-tls",
            "tls.crt",
            kafka.get("ssl.certificate.location").map(Into::into),
        ),
        (
            "kafka-tls",
            "/etc/streamjob-tls",
            "tls.key",
            "kafka-client-tls",
            "tls.key",
            kafka.get("ssl.key.location").map(Into::into),
        ),
    ];
    for deployment in [&plan.children.jobmanager, &plan.children.taskmanager] {
        let pod = deployment.spec.template.spec.as_ref().expect("pod spec");
        let container = &pod.containers[0];
        let volumes = pod.volumes.as_ref().expect("volumes");
        let mounts = container.volume_mounts.as_ref().expect("mounts");
        for (volume, dir, file, secret, key, configured) in &expected {
            assert_eq!(
                configured.as_deref(),
                Some(std::path::Path::new(&format!("{dir}/{file}"))),
                "job.yaml points at the mounted file {dir}/{file}"
            );
            let mount = mounts
                .iter()
                .find(|m| m.name == *volume)
                .unwrap_or_else(|| panic!("{volume} mounted"));
            assert_eq!(
                (mount.mount_path.as_str(), mount.read_only),
                (*dir, Some(true))
            );
            let projection = volumes
                .iter()
                .find(|v| v.name == *volume)
                .and_then(|v| v.projected.as_ref())
                .and_then(|p| p.sources.as_ref())
                .unwrap_or_else(|| panic!("{volume} is a projected volume"))
                .iter()
                .filter_map(|s| s.secret.as_ref())
                .find(|s| s.items.as_ref().is_some_and(|i| i[0].path == *file))
                .unwrap_or_else(|| panic!("{volume} holds {file}"));
            assert_eq!(projection.name, *secret);
            let item = &projection.items.as_ref().expect("items")[0];
            assert_eq!(item.key, *key);
            assert_eq!(item.mode, Some(0o440), "not world-readable");
        }
        let env = container.env.as_ref().expect("env");
        assert!(
            env.iter()
                .all(|e| e.value.is_none() || !e.value.as_deref().unwrap_or("").contains("BEGIN")),
            "no certificate in the environment"
        );
        assert_eq!(
            container.termination_message_policy.as_deref(),
            Some("FallbackToLogsOnError"),
            "the worker's fatal error reaches the pod status"
        );
    }
}

#[test]
fn without_tls_no_secret_volume_is_mounted() {
    let job = support::sample("minimal.yaml");
    let plan = plan_for(&job, &Observed::default());
    let pod = plan
        .children
        .taskmanager
        .spec
        .template
        .spec
        .as_ref()
        .expect("pod spec");
    let volumes = pod.volumes.as_ref().expect("volumes");
    assert!(volumes.iter().all(|v| v.projected.is_none()), "{volumes:?}");
    let yaml = &plan.children.config_map.data.as_ref().expect("data")["job.yaml"];
    let config = JobConfig::from_yaml(yaml).expect("valid");
    assert!(config.sink.redis.tls.is_none() && config.sink.redis.username.is_none());
}
