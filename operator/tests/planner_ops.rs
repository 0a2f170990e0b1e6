//! The planner as a platform team sees it: an in-place rescale keeps the job Ready, the job's
//! NetworkPolicies, and a stopped job that holds no taskmanager.

mod support;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::jiff::Timestamp;
use streamjob_operator::crd::{Phase, StreamJob};
use streamjob_operator::planner::lifecycle::JobManagerView;
use streamjob_operator::planner::{
    self, Action, EventSeverity, JobManagerReport, NetworkPeers, Observed, Plan, PlanInput,
};
use streamjob_worker::api::JobState as JmState;

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

/// A Deployment as the cluster shows it: `generation` observed or not, pods and ready pods.
fn deployment(desired: &Deployment, seen: bool, pods: i32, ready: i32) -> Deployment {
    let mut d = desired.clone();
    d.metadata.generation = Some(2);
    d.status = Some(DeploymentStatus {
        observed_generation: Some(if seen { 2 } else { 1 }),
        replicas: Some(pods),
        updated_replicas: Some(pods),
        ready_replicas: Some(ready),
        available_replicas: Some(ready),
        ..DeploymentStatus::default()
    });
    d
}

fn condition<'a>(plan: &'a Plan, type_: &str) -> (&'a str, &'a str, &'a str) {
    let c = plan
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .expect("condition present");
    (c.status.as_str(), c.reason.as_str(), c.message.as_str())
}

fn notes(plan: &Plan) -> Vec<(EventSeverity, String, String)> {
    plan.actions
        .iter()
        .map(|Action::Publish(n)| (n.severity, n.reason.clone(), n.message.clone()))
        .collect()
}

/// A job running with `replicas` ready taskmanagers, its status as the operator wrote it.
fn running(replicas: i32) -> (StreamJob, Plan) {
    let mut job = support::sample("minimal.yaml");
    job.spec.replicas = replicas;
    let first = plan_for(&job, &Observed::default());
    job.status = Some(first.status.clone());
    let observed = Observed {
        jobmanager: Some(deployment(&first.children.jobmanager, true, 1, 1)),
        taskmanager: Some(deployment(
            &first.children.taskmanager,
            true,
            replicas,
            replicas,
        )),
        savepoint_pvc: Some(first.children.savepoint_pvc.clone()),
        pods: Vec::new(),
        api_token: None,
    };
    let plan = plan_for(&job, &observed);
    assert_eq!(plan.status.phase, Phase::Running);
    assert_eq!(condition(&plan, "Ready").0, "True");
    job.status = Some(plan.status.clone());
    (job, plan)
}

#[test]
fn an_in_place_scale_keeps_ready_true_and_says_from_and_to() {
    let (mut job, before) = running(3);
    job.spec.replicas = 4;
    job.metadata.generation = Some(2);
    let jobmanager = deployment(&before.children.jobmanager, true, 1, 1);
    let old_tm = deployment(&before.children.taskmanager, true, 3, 3);
    let mut rounds = Vec::new();
    // 1. The Deployment still has 3 replicas; 2. resized, its controller has not seen it yet;
    // 3. a fourth pod exists, not ready; 4. all four ready.
    let mut resized = old_tm.clone();
    resized.spec.replicas = Some(4);
    for tm in [
        old_tm.clone(),
        deployment(&resized, false, 3, 3),
        deployment(&resized, true, 4, 3),
        deployment(&resized, true, 4, 4),
    ] {
        let observed = Observed {
            jobmanager: Some(jobmanager.clone()),
            taskmanager: Some(tm),
            savepoint_pvc: Some(before.children.savepoint_pvc.clone()),
            pods: Vec::new(),
            api_token: None,
        };
        let plan = plan_for(&job, &observed);
        job.status = Some(plan.status.clone());
        rounds.push(plan);
    }
    for (i, plan) in rounds.iter().enumerate() {
        assert_eq!(
            condition(plan, "Ready").0,
            "True",
            "round {i}: {:?}",
            plan.status
        );
        assert_eq!(plan.status.phase, Phase::Running, "round {i}");
        assert!(
            notes(plan)
                .iter()
                .all(|(severity, reason, _)| *severity == EventSeverity::Normal
                    && reason != "RollingOut"),
            "round {i}: {:?}",
            notes(plan)
        );
    }
    assert_eq!(condition(&rounds[0], "Progressing").0, "True");
    assert_eq!(condition(&rounds[0], "Progressing").1, "Scaling");
    assert_eq!(
        condition(&rounds[0], "Progressing").2,
        "scaling taskmanagers from 3 to 4"
    );
    assert!(notes(&rounds[0]).contains(&(
        EventSeverity::Normal,
        "Scaled".into(),
        "taskmanagers 3 -> 4".into()
    )));
    assert!(notes(&rounds[0])
        .iter()
        .any(|(_, _, m)| m == "Progressing=True: scaling taskmanagers from 3 to 4"));
    assert_eq!(condition(&rounds[1], "Progressing").1, "Scaling");
    assert_eq!(
        condition(&rounds[1], "Progressing").2,
        "scaling taskmanagers from 3 to 4"
    );
    assert_eq!(condition(&rounds[2], "Progressing").0, "True");
    assert_eq!(condition(&rounds[3], "Progressing").0, "False");
    assert_eq!(
        condition(&rounds[3], "Ready").2,
        "jobmanager and 4/4 taskmanagers ready"
    );
}

#[test]
fn a_scale_down_keeps_ready_true_too() {
    let (mut job, before) = running(3);
    job.spec.replicas = 1;
    let mut resized = before.children.taskmanager.clone();
    resized.spec.replicas = Some(1);
    let observed = Observed {
        jobmanager: Some(deployment(&before.children.jobmanager, true, 1, 1)),
        taskmanager: Some(deployment(&resized, true, 3, 3)),
        savepoint_pvc: None,
        pods: Vec::new(),
        api_token: None,
    };
    let plan = plan_for(&job, &observed);
    assert_eq!(condition(&plan, "Ready").0, "True");
    assert_eq!(
        condition(&plan, "Progressing"),
        ("True", "Scaling", "scaling taskmanagers from 3 to 1")
    );
}

#[test]
fn a_new_pod_template_is_still_a_rollout() {
    let (mut job, before) = running(2);
    job.spec.batch.linger = "50ms".into();
    let mut tm = deployment(&before.children.taskmanager, true, 3, 3);
    // Half-way through: 1 of 3 pods on the new template.
    tm.status.as_mut().expect("status").updated_replicas = Some(1);
    let changed = plan_for(&job, &Observed::default());
    tm.spec.template = changed.children.taskmanager.spec.template.clone();
    let observed = Observed {
        jobmanager: Some(deployment(&changed.children.jobmanager, true, 1, 1)),
        taskmanager: Some(tm),
        savepoint_pvc: None,
        pods: Vec::new(),
        api_token: None,
    };
    job.spec.upgrade_mode = streamjob_operator::crd::UpgradeMode::Stateless;
    let plan = plan_for(&job, &observed);
    assert_eq!(condition(&plan, "Progressing").1, "RollingOut");
    assert_eq!(condition(&plan, "Ready").0, "False");
}

fn peers() -> NetworkPeers {
    NetworkPeers {
        operator_namespace: Some("streamjob-system".into()),
        metrics_namespace_labels: Some(BTreeMap::from([(
            "kubernetes.io/metadata.name".to_string(),
            "monitoring".to_string(),
        )])),
    }
}

fn policies(job: &StreamJob, peers: &NetworkPeers) -> Vec<NetworkPolicy> {
    planner::plan_with(
        PlanInput {
            job,
            observed: &Observed::default(),
            jobmanager: None,
            now: now(),
        },
        peers,
    )
    .expect("plans")
    .children
    .network_policies
}

fn as_json(policy: &NetworkPolicy) -> serde_json::Value {
    serde_json::to_value(policy).expect("serialises")
}

#[test]
fn network_policies_let_only_the_jobmanager_reach_taskmanagers() {
    let job = support::sample("minimal.yaml");
    let found = policies(&job, &peers());
    assert_eq!(found.len(), 2, "one per component, on by default");
    let tm = as_json(
        found
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some("trace-taskmanager"))
            .expect("taskmanager policy"),
    );
    assert_eq!(
        tm["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "taskmanager"
    );
    assert_eq!(tm["spec"]["policyTypes"], serde_json::json!(["Ingress"]));
    assert!(
        tm["spec"].get("egress").is_none(),
        "egress is not restricted"
    );
    let ingress = tm["spec"]["ingress"].as_array().expect("ingress rules");
    assert_eq!(ingress.len(), 2);
    // Control traffic: the job's own jobmanager pod, nothing else.
    assert_eq!(
        ingress[0]["from"],
        serde_json::json!([{"podSelector": {"matchLabels": {
            "app.kubernetes.io/component": "jobmanager",
            "app.kubernetes.io/instance": "trace",
            "app.kubernetes.io/name": "streamjob"
        }}}])
    );
    // Metrics: the monitoring namespaces, on the metrics port only.
    assert_eq!(
        ingress[1],
        serde_json::json!({
            "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
            "ports": [{"port": 9249, "protocol": "TCP"}]
        })
    );
    // Every policy is owned by the StreamJob like the other children.
    for p in &found {
        let owners = p.metadata.owner_references.as_ref().expect("owned");
        assert_eq!(owners[0].kind, "StreamJob");
    }
}

#[test]
fn network_policies_open_jobmanager_rest_to_its_namespace_the_operator_and_monitoring() {
    let job = support::sample("minimal.yaml");
    let found = policies(&job, &peers());
    let jm = as_json(
        found
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some("trace-jobmanager"))
            .expect("jobmanager policy"),
    );
    assert_eq!(
        jm["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "jobmanager"
    );
    assert_eq!(
        jm["spec"]["ingress"],
        serde_json::json!([{
            "from": [
                {"podSelector": {}},
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "streamjob-system"}}},
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
            ],
            "ports": [{"port": 8081, "protocol": "TCP"}]
        }])
    );
    // An operator that does not know its namespace lets every namespace reach the REST port
    // (it could not reach the jobmanager otherwise).
    let open = as_json(&policies(&job, &NetworkPeers::default())[0]);
    assert_eq!(
        open["spec"]["ingress"][0]["from"],
        serde_json::json!([{"podSelector": {}}, {"namespaceSelector": {}}])
    );
}

#[test]
fn network_policies_can_be_turned_off_in_the_spec() {
    let mut job = support::sample("minimal.yaml");
    job.spec.network_policy.enabled = false;
    assert!(policies(&job, &peers()).is_empty());
}

fn finished_report() -> JobManagerReport {
    let mut overview = support::fake_jobmanager::overview("trace");
    overview.state = JmState::Finished;
    overview.taskmanagers.clear();
    JobManagerReport {
        observed_at: now(),
        view: JobManagerView {
            overview: Ok(overview),
            poll: None,
            savepoints: None,
            checkpoints: None,
        },
    }
}

/// A job stopped with a savepoint (by hand, or an operation that gave up after its stop) has
/// nothing to consume: its taskmanagers are scaled to 0 so it holds no CPU, and Ready says why.
#[test]
fn a_stopped_job_holds_no_taskmanager() {
    let (job, before) = running(3);
    let observed = Observed {
        jobmanager: Some(deployment(&before.children.jobmanager, true, 1, 1)),
        taskmanager: Some(deployment(&before.children.taskmanager, true, 3, 3)),
        savepoint_pvc: None,
        pods: Vec::new(),
        api_token: None,
    };
    let report = finished_report();
    let plan = planner::plan(PlanInput {
        job: &job,
        observed: &observed,
        jobmanager: Some(&report),
        now: now(),
    })
    .expect("plans");
    assert!(plan.apply_workloads);
    assert_eq!(plan.children.taskmanager.spec.replicas, Some(0));
    assert_eq!(
        plan.children.jobmanager.spec.replicas,
        Some(1),
        "the jobmanager answers the REST API"
    );
    let (ready, reason, message) = condition(&plan, "Ready");
    assert_eq!((ready, reason), ("False", "JobFinished"));
    assert!(message.contains("restartNonce"), "{message}");
}
