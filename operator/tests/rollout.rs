//! The rolling upgrade's fallback decision, as a table: which spec changes roll through the
//! fenced handoff, and which change what the Redis fences mean and so go through a savepoint,
//! naming the field.

mod support;

use k8s_openapi::jiff::Timestamp;
use streamjob_operator::crd::{RedisClusterSpec, RedisSentinelSpec, StreamJob};
use streamjob_operator::planner::rollout::{self, FenceIdentity, RolloutPath};
use streamjob_operator::planner::{self, Observed, PlanInput};

type Change = fn(&mut StreamJob);

fn rolls() -> RolloutPath {
    RolloutPath::Roll
}

fn falls_back_on(fields: &[&str]) -> RolloutPath {
    RolloutPath::Fallback {
        fields: fields.iter().map(|f| f.to_string()).collect(),
    }
}

/// What the planner decides when `base` runs and `change` is applied to its spec.
fn decision(base: &StreamJob, change: Change) -> RolloutPath {
    let mut changed = base.clone();
    change(&mut changed);
    rollout::decide(Some(&FenceIdentity::of(base)), &FenceIdentity::of(&changed))
}

fn check(base: &StreamJob, table: &[(&str, Change, RolloutPath)]) {
    for (what, change, expected) in table {
        assert_eq!(&decision(base, *change), expected, "{what}");
    }
}

#[test]
fn changes_that_keep_the_fences_meaning_roll() {
    let table: &[(&str, Change, RolloutPath)] = &[
        (
            "a new image",
            |j| j.spec.image = "registry.example/streamjob-worker:0.2.0".into(),
            rolls(),
        ),
        (
            "a longer linger",
            |j| j.spec.batch.linger = "50ms".into(),
            rolls(),
        ),
        (
            "bigger batches",
            |j| j.spec.batch.max_events = 5000,
            rolls(),
        ),
        (
            "a log level",
            |j| j.spec.logging.level = "debug".into(),
            rolls(),
        ),
        (
            "another time zone",
            |j| j.spec.redis.time_zone = "UTC".into(),
            rolls(),
        ),
        (
            "a Kafka client property",
            |j| {
                j.spec
                    .kafka
                    .properties
                    .insert("fetch.wait.max.ms".into(), "10".into());
            },
            rolls(),
        ),
        (
            "another consumer group (reporting only)",
            |j| j.spec.kafka.group = "other".into(),
            rolls(),
        ),
        (
            "a dead-letter topic",
            |j| j.spec.kafka.dlq_topic = Some("dead".into()),
            rolls(),
        ),
        (
            "starting offsets (only where no fence exists)",
            |j| {
                j.spec.kafka.starting_offsets = streamjob_operator::crd::StartingOffsets::Latest;
            },
            rolls(),
        ),
        (
            "TLS to the same Redis",
            |j| j.spec.redis.url = "rediss://redis:6379/0".into(),
            rolls(),
        ),
        (
            "the same Redis written another way",
            |j| j.spec.redis.url = "redis://REDIS".into(),
            rolls(),
        ),
        (
            "an ACL user",
            |j| j.spec.redis.username = Some("streamjob".into()),
            rolls(),
        ),
        (
            "the same brokers in another order",
            |j| {
                j.spec.kafka.brokers = "kafka-1.kafka:9092,kafka-0.kafka:9092".into();
            },
            rolls(),
        ),
        (
            "a later allowed lateness",
            |j| j.spec.window.allowed_lateness = "5m".into(),
            rolls(),
        ),
        ("more taskmanagers", |j| j.spec.replicas = 8, rolls()),
    ];
    let mut base = support::sample("minimal.yaml");
    base.spec.kafka.brokers = "kafka-0.kafka:9092,kafka-1.kafka:9092".into();
    check(&base, table);
}

#[test]
fn changes_of_what_the_fences_mean_fall_back_naming_the_field() {
    let table: &[(&str, Change, RolloutPath)] = &[
        (
            "another topic",
            |j| j.spec.kafka.topic = "otherTopic".into(),
            falls_back_on(&["spec.kafka.topic"]),
        ),
        (
            "another Kafka cluster",
            |j| j.spec.kafka.brokers = "kafka.elsewhere:9092".into(),
            falls_back_on(&["spec.kafka.brokers"]),
        ),
        (
            "a key prefix",
            |j| j.spec.redis.key_prefix = "v2:".into(),
            falls_back_on(&["spec.redis.keyPrefix"]),
        ),
        (
            "another Redis host",
            |j| j.spec.redis.url = "redis://redis-2:6379/0".into(),
            falls_back_on(&["spec.redis.url"]),
        ),
        (
            "another Redis port",
            |j| j.spec.redis.url = "redis://redis:6380/0".into(),
            falls_back_on(&["spec.redis.url"]),
        ),
        (
            "another Redis database",
            |j| j.spec.redis.url = "redis://redis:6379/1".into(),
            falls_back_on(&["spec.redis.url"]),
        ),
        (
            "a Redis socket instead",
            |j| j.spec.redis.url = "unix:///run/redis.sock".into(),
            falls_back_on(&["spec.redis.url"]),
        ),
        (
            "another job name",
            |j| j.metadata.name = Some("trace-2".into()),
            falls_back_on(&["metadata.name"]),
        ),
        (
            "another window size",
            |j| j.spec.window.size = "5m".into(),
            falls_back_on(&["spec.window.size"]),
        ),
        (
            "no series",
            |j| j.spec.window.enabled = false,
            falls_back_on(&["spec.window.enabled"]),
        ),
        (
            "a Sentinel-managed Redis instead",
            |j| {
                j.spec.redis.sentinel = Some(RedisSentinelSpec {
                    master_name: "austin-redis".into(),
                    nodes: vec!["sentinel-0:26379".into()],
                    password_secret_ref: None,
                });
            },
            falls_back_on(&[
                "spec.redis.sentinel.masterName",
                "spec.redis.sentinel.nodes",
                "spec.redis.url",
            ]),
        ),
        (
            "a Redis Cluster instead",
            |j| {
                j.spec.redis.url = "redis://cluster".into();
                j.spec.redis.cluster = Some(RedisClusterSpec {
                    nodes: vec!["node-0:6379".into()],
                });
            },
            falls_back_on(&["spec.redis.cluster.nodes", "spec.redis.url"]),
        ),
        (
            "a topic and a key prefix at once",
            |j| {
                j.spec.kafka.topic = "otherTopic".into();
                j.spec.redis.key_prefix = "v2:".into();
            },
            falls_back_on(&["spec.kafka.topic", "spec.redis.keyPrefix"]),
        ),
    ];
    check(&support::sample("minimal.yaml"), table);
}

#[test]
fn sentinel_and_cluster_targets_fall_back_when_they_name_other_servers() {
    let sentinel: &[(&str, Change, RolloutPath)] = &[
        (
            "another monitored primary",
            |j| {
                if let Some(s) = j.spec.redis.sentinel.as_mut() {
                    s.master_name = "other".into();
                }
            },
            falls_back_on(&["spec.redis.sentinel.masterName"]),
        ),
        (
            "another sentinel",
            |j| {
                if let Some(s) = j.spec.redis.sentinel.as_mut() {
                    s.nodes.push("redis-sentinel-9.redis-sentinel:26379".into());
                }
            },
            falls_back_on(&["spec.redis.sentinel.nodes"]),
        ),
        (
            "the sentinels in another order",
            |j| {
                if let Some(s) = j.spec.redis.sentinel.as_mut() {
                    s.nodes.reverse();
                }
            },
            rolls(),
        ),
        (
            "another database behind the sentinels",
            |j| j.spec.redis.url = "redis://sentinel/2".into(),
            falls_back_on(&["spec.redis.url"]),
        ),
        (
            "TLS to the sentinels",
            |j| j.spec.redis.url = "rediss://sentinel/0".into(),
            rolls(),
        ),
    ];
    check(&support::sample("sentinel.yaml"), sentinel);
    let cluster: &[(&str, Change, RolloutPath)] = &[
        (
            "another seed node",
            |j| {
                if let Some(c) = j.spec.redis.cluster.as_mut() {
                    c.nodes = vec!["elsewhere-0:6379".into()];
                }
            },
            falls_back_on(&["spec.redis.cluster.nodes"]),
        ),
        (
            "TLS to the cluster",
            |j| j.spec.redis.url = "rediss://cluster".into(),
            rolls(),
        ),
    ];
    check(&support::sample("cluster.yaml"), cluster);
}

#[test]
fn taskmanagers_that_do_not_say_what_their_fences_mean_fall_back() {
    let job = support::sample("minimal.yaml");
    let path = rollout::decide(None, &FenceIdentity::of(&job));
    assert_eq!(path, falls_back_on(&[]));
    let message = path.fallback_message().expect("a fallback has a message");
    assert!(message.contains("older operator"), "{message}");
    assert!(
        message.ends_with("upgrading through a savepoint"),
        "{message}"
    );
}

/// The decision reads what is deployed from the taskmanager Deployment the planner rendered.
#[test]
fn the_deployed_identity_is_read_from_the_taskmanager_pod_template() {
    let running = support::sample("minimal.yaml");
    let plan = planner::plan(PlanInput {
        job: &running,
        observed: &Observed::default(),
        jobmanager: None,
        now: Timestamp::from_second(1_763_700_000).expect("valid time"),
    })
    .expect("plans");
    let observed = Observed {
        taskmanager: Some(plan.children.taskmanager.clone()),
        ..Observed::default()
    };
    let annotation = plan
        .children
        .taskmanager
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(rollout::FENCE_IDENTITY_ANNOTATION))
        .cloned()
        .expect("annotated");
    assert!(
        annotation.contains(r#""spec.kafka.topic":"austinTraceLog""#),
        "{annotation}"
    );
    assert!(
        annotation.contains(r#""spec.redis.url":"redis:6379 database 0""#),
        "{annotation}"
    );

    let mut new_image = running.clone();
    new_image.spec.image = "registry.example/streamjob-worker:0.2.0".into();
    assert_eq!(rollout::path(&new_image, &observed), rolls());
    let mut new_prefix = running.clone();
    new_prefix.spec.redis.key_prefix = "v2:".into();
    let path = rollout::path(&new_prefix, &observed);
    assert_eq!(path, falls_back_on(&["spec.redis.keyPrefix"]));
    assert_eq!(
        path.fallback_message().as_deref(),
        Some("rolling not possible: spec.redis.keyPrefix changed, which changes what the Redis fences mean; upgrading through a savepoint")
    );
}

/// The taskmanager Deployment a rolling upgrade relies on: one new pod at a time next to all the
/// old ones, ready only once it holds its partitions, a progress deadline, and its revision.
#[test]
fn taskmanagers_roll_one_at_a_time_and_are_ready_once_they_hold_their_partitions() {
    let mut job = support::sample("minimal.yaml");
    job.spec.rolling.progress_deadline = "90s".into();
    let plan = planner::plan(PlanInput {
        job: &job,
        observed: &Observed::default(),
        jobmanager: None,
        now: Timestamp::from_second(1_763_700_000).expect("valid time"),
    })
    .expect("plans");
    let tm = &plan.children.taskmanager.spec;
    let strategy = tm.strategy.as_ref().expect("strategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.as_ref().expect("rollingUpdate");
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    assert_eq!(rolling.max_surge, Some(IntOrString::Int(1)));
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)));
    assert_eq!(tm.progress_deadline_seconds, Some(90));
    let container = &tm.template.spec.as_ref().expect("pod").containers[0];
    let readiness = container
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref());
    assert_eq!(readiness.and_then(|g| g.path.as_deref()), Some("/readyz"));
    let revision = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "STREAMJOB_REVISION")
        .and_then(|e| e.value.clone());
    assert_eq!(
        revision, plan.status.config_hash,
        "the revision is the config hash"
    );
    let jm = &plan.children.jobmanager.spec;
    assert_eq!(
        jm.strategy.as_ref().and_then(|s| s.type_.as_deref()),
        Some("Recreate"),
        "the jobmanager is replaced, never doubled"
    );
}

/// A new taskmanager pod, `age` old, ready or not.
fn new_pod(name: &str, hash: &str, age_secs: i64, ready: bool) -> k8s_openapi::api::core::v1::Pod {
    use k8s_openapi::api::core::v1::{Pod, PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    let mut pod = Pod::default();
    pod.metadata.name = Some(name.into());
    pod.metadata.annotations = Some(
        [(
            streamjob_operator::planner::children::CONFIG_HASH_ANNOTATION.to_string(),
            hash.to_string(),
        )]
        .into(),
    );
    pod.metadata.creation_timestamp = Some(Time(
        Timestamp::from_second(1_763_700_000 - age_secs).expect("valid time"),
    ));
    pod.status = Some(PodStatus {
        conditions: Some(vec![PodCondition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            ..PodCondition::default()
        }]),
        ..PodStatus::default()
    });
    pod
}

#[test]
fn a_new_pod_unready_past_the_deadline_stalls_the_rollout_with_a_stable_message() {
    let now = Timestamp::from_second(1_763_700_000).expect("valid time");
    let deadline = std::time::Duration::from_secs(300);
    let stall = |pods| {
        let observed = Observed {
            pods,
            ..Observed::default()
        };
        rollout::stall(&observed, "new", deadline, now)
    };
    assert_eq!(
        stall(vec![new_pod("tm-young", "new", 60, false)]),
        None,
        "still within the deadline"
    );
    assert_eq!(
        stall(vec![new_pod("tm-ready", "new", 900, true)]),
        None,
        "ready"
    );
    assert_eq!(
        stall(vec![new_pod("tm-old", "old", 900, false)]),
        None,
        "an old-template pod"
    );
    let message = stall(vec![new_pod("tm-stuck", "new", 900, false)]).expect("stalled");
    assert!(
        message.contains(
            "pod tm-stuck did not become ready within spec.rolling.progressDeadline (300s)"
        ),
        "{message}"
    );
    assert_eq!(
        stall(vec![new_pod("tm-stuck", "new", 960, false)]).as_deref(),
        Some(message.as_str()),
        "the same stall a minute later: the same message (no status write per round)"
    );
}
