//! The Redis topology the jobmanager reports reaches `status.job.redis`; on a cluster a reshard
//! shows as the `RedisSlotsMigrating` condition, announced by Normal Events (a wait, not a
//! fault: Ready and Degraded do not move).

mod support;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use streamjob_operator::crd::StreamJob;
use streamjob_operator::planner::redis::REDIS_SLOTS_MIGRATING;
use streamjob_operator::planner::{
    self, Action, EventNote, EventSeverity, JobManagerReport, Observed, Plan, PlanInput,
};
use streamjob_worker::api::{RedisMode, RedisTopology};

fn now() -> Timestamp {
    Timestamp::from_second(1_763_700_000).expect("valid time")
}

/// What the taskmanagers read of a 3-shard cluster while `migrating` slots move.
fn cluster_with_migrating(migrating: u32) -> RedisTopology {
    RedisTopology {
        mode: RedisMode::Cluster,
        shards: 3,
        primaries: ["10.0.0.1:6379", "10.0.0.2:6379", "10.0.0.3:6379"]
            .map(String::from)
            .to_vec(),
        migrating_slots: migrating,
        last_refresh_ms: 1_763_699_999_000,
    }
}

fn a_single_redis() -> RedisTopology {
    RedisTopology {
        mode: RedisMode::Single,
        shards: 1,
        primaries: vec!["redis:6379".into()],
        migrating_slots: 0,
        last_refresh_ms: 1_763_699_999_000,
    }
}

/// The jobmanager's answer this round: its overview with `redis` as the taskmanagers read it.
fn the_jobmanager_reports(redis: Option<RedisTopology>) -> JobManagerReport {
    let mut overview = support::fake_jobmanager::overview("trace");
    overview.redis = redis;
    support::fake_jobmanager::report(overview, now())
}

/// Plans `job` with `report` (or no jobmanager asked), then takes the plan's status as the
/// job's, as the next reconciliation would see it.
fn reconcile(job: &mut StreamJob, report: Option<&JobManagerReport>) -> Plan {
    let plan = planner::plan(PlanInput {
        job,
        observed: &Observed::default(),
        jobmanager: report,
        now: now(),
    })
    .expect("plans");
    job.status = Some(plan.status.clone());
    plan
}

fn migration_condition(plan: &Plan) -> Option<&Condition> {
    plan.status
        .conditions
        .iter()
        .find(|c| c.type_ == REDIS_SLOTS_MIGRATING)
}

fn events_about_migration(plan: &Plan) -> Vec<&EventNote> {
    plan.actions
        .iter()
        .map(|Action::Publish(note)| note)
        .filter(|note| note.message.contains(REDIS_SLOTS_MIGRATING))
        .collect()
}

#[test]
fn the_reported_topology_becomes_status_job_redis() {
    let mut job = support::sample("minimal.yaml");
    let plan = reconcile(
        &mut job,
        Some(&the_jobmanager_reports(Some(cluster_with_migrating(5)))),
    );
    let redis = plan
        .status
        .job
        .and_then(|j| j.redis)
        .expect("status.job.redis");
    assert_eq!(redis.mode, "cluster");
    assert_eq!((redis.shards, redis.migrating_slots), (3, 5));
    assert_eq!(redis.primaries.len(), 3);
    assert_eq!(
        redis.last_refresh.map(|t| t.0.as_millisecond()),
        Some(1_763_699_999_000)
    );
}

/// One reconciliation after the taskmanagers saw `migrating` slots moving on the cluster.
fn reconcile_seeing(job: &mut StreamJob, migrating: u32) -> Plan {
    let report = the_jobmanager_reports(Some(cluster_with_migrating(migrating)));
    reconcile(job, Some(&report))
}

/// The condition's status and reason.
fn migration_state(plan: &Plan) -> (&str, &str) {
    let condition = migration_condition(plan).expect("present on a cluster");
    (condition.status.as_str(), condition.reason.as_str())
}

/// The Events about the condition: (severity, reason).
fn migration_events(plan: &Plan) -> Vec<(EventSeverity, &str)> {
    events_about_migration(plan)
        .into_iter()
        .map(|note| (note.severity, note.reason.as_str()))
        .collect()
}

#[test]
fn a_reshard_on_a_cluster_flips_the_condition_with_one_normal_event_each_way() {
    let mut job = support::sample("minimal.yaml");

    let settled = reconcile_seeing(&mut job, 0);
    assert_eq!(migration_state(&settled), ("False", "NoSlotMigrating"));
    assert!(
        migration_events(&settled).is_empty(),
        "a first condition is not news"
    );

    let resharding = reconcile_seeing(&mut job, 12);
    assert_eq!(migration_state(&resharding), ("True", "SlotsMigrating"));
    let message = &migration_condition(&resharding).expect("present").message;
    assert!(
        message.contains("12 slots migrating") && message.contains("3 shards"),
        "{message}"
    );
    assert_eq!(
        migration_events(&resharding),
        [(EventSeverity::Normal, "SlotsMigrating")],
        "a reshard is a wait"
    );
    assert!(
        resharding
            .actions
            .iter()
            .all(|Action::Publish(n)| n.severity == EventSeverity::Normal),
        "{:?}",
        resharding.actions
    );

    // Fewer slots left: the message follows, but that is no new Event nor a new transition.
    let moving_on = reconcile_seeing(&mut job, 3);
    assert!(migration_events(&moving_on).is_empty());
    let since = |plan: &Plan| {
        migration_condition(plan)
            .map(|c| c.last_transition_time.clone())
            .expect("present")
    };
    assert_eq!(since(&moving_on), since(&resharding));

    let done = reconcile_seeing(&mut job, 0);
    assert_eq!(migration_state(&done), ("False", "NoSlotMigrating"));
    assert_eq!(
        migration_events(&done),
        [(EventSeverity::Normal, "NoSlotMigrating")]
    );
}

#[test]
fn a_round_without_a_report_keeps_the_condition_and_a_single_redis_has_none() {
    let mut job = support::sample("minimal.yaml");
    reconcile_seeing(&mut job, 2);
    let not_asked = reconcile(&mut job, None);
    let condition = migration_condition(&not_asked).expect("kept");
    assert_eq!(condition.status, "True");
    let no_topology_yet = reconcile(&mut job, Some(&the_jobmanager_reports(None)));
    assert_eq!(
        migration_condition(&no_topology_yet).map(|c| c.status.as_str()),
        Some("True")
    );

    let single = reconcile(
        &mut job,
        Some(&the_jobmanager_reports(Some(a_single_redis()))),
    );
    assert!(
        migration_condition(&single).is_none(),
        "no slots off a cluster"
    );
    let redis = single.status.job.and_then(|j| j.redis).expect("redis");
    assert_eq!(
        (redis.mode.as_str(), redis.shards, redis.migrating_slots),
        ("single", 1, 0)
    );
}
