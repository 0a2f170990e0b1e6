//! The lifecycle state machine, driven step by step through the pure planner against a simulated
//! cluster (Deployments roll out at once) and a simulated jobmanager (savepoints, stop, restore,
//! faults). The driver does what the reconciler does, in its order: write the status when the
//! operation changed, apply the children, call the jobmanager, record the outcome. An operator
//! "restart" abandons a reconcile after any of those points; the next one starts from the stored
//! status alone. Every scenario is replayed with a restart at every point of every round, and
//! with a jobmanager that fails or times out at every round.

mod support;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus};
use k8s_openapi::api::core::v1::{
    ConfigMap, ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus,
    PersistentVolumeClaim, Pod, PodStatus,
};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use streamjob_operator::crd::{
    JobState, OperationKind, OperationStep, Phase, SavepointTrigger, StreamJob, UpgradeMode,
};
use streamjob_operator::planner::children::CONFIG_HASH_ANNOTATION;
use streamjob_operator::planner::lifecycle::{
    self, ActionOutcome, JobManagerAction, JobManagerView, TriggerPoll, LATEST_SAVEPOINT_ANNOTATION,
};
use streamjob_operator::planner::{self, Action, JobManagerReport, Observed, PlanInput};
use streamjob_worker::api::{
    JobOverview, JobState as JmState, OperationInfo, OperationKind as JmOpKind, OperationStatus,
    RestoreSource, SnapshotInfo, SnapshotKind, TaskManagerInfo,
};
use streamjob_worker::config::JobConfig;

fn start_time() -> Timestamp {
    Timestamp::from_second(1_763_700_000).expect("valid time")
}

/// What the simulated jobmanager does wrong, per round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// No answer at all (down or timing out).
    Unreachable,
    /// Answers reads, but refuses triggers with 500.
    RefuseTriggers,
    /// Accepts triggers; the savepoint then fails.
    SavepointFails,
}

#[derive(Debug, Clone)]
struct SimOp {
    info: OperationInfo,
    /// Rounds until it completes.
    remaining: u32,
}

/// A jobmanager process (one per pod incarnation).
#[derive(Debug, Clone)]
struct SimJobManager {
    state: JmState,
    restored_from: RestoreSource,
    ops: BTreeMap<String, SimOp>,
    last_savepoint: Option<SnapshotInfo>,
    last_checkpoint: Option<SnapshotInfo>,
}

/// Cluster + jobmanager + savepoint volume.
struct World {
    job: StreamJob,
    config_map: Option<ConfigMap>,
    jobmanager: Option<Deployment>,
    taskmanager: Option<Deployment>,
    pvc: Option<PersistentVolumeClaim>,
    process: Option<SimJobManager>,
    /// Files on the savepoint volume.
    savepoints: Vec<SnapshotInfo>,
    checkpoints: Vec<SnapshotInfo>,
    instances: u32,
    seq: u64,
    now: Timestamp,
    fault: Fault,
    /// Most snapshot operations ever in flight at once on one jobmanager.
    max_in_flight: usize,
    /// Every trigger the jobmanager accepted: (kind, instance).
    triggers: Vec<JmOpKind>,
    /// Triggers sent again with an id the jobmanager knew (answered without a new snapshot).
    repeated_triggers: usize,
    /// Rounds a savepoint takes to complete.
    savepoint_rounds: u32,
    events: Vec<String>,
    /// Pod states the kubelet reports (crash loops).
    pods: Vec<Pod>,
    /// New taskmanagers never become ready: the taskmanager Deployment's rollout stalls.
    new_taskmanagers_crash: bool,
    /// The jobmanager pod is not ready (starting, failing its probe): nothing answers it.
    jobmanager_unready: bool,
    /// Every call the operator made to the jobmanager's triggers, answered or not.
    trigger_calls: usize,
}

/// Where a reconcile may be cut short by an operator restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    StatusWritten,
    Applied,
    ActionSent,
}

const CUTS: [Cut; 3] = [Cut::StatusWritten, Cut::Applied, Cut::ActionSent];

impl World {
    fn new(mut job: StreamJob) -> Self {
        job.spec.checkpoint.interval = "10s".into();
        let mut world = World {
            job,
            config_map: None,
            jobmanager: None,
            taskmanager: None,
            pvc: None,
            process: None,
            savepoints: Vec::new(),
            checkpoints: Vec::new(),
            instances: 0,
            seq: 0,
            now: start_time(),
            fault: Fault::None,
            max_in_flight: 0,
            triggers: Vec::new(),
            repeated_triggers: 0,
            savepoint_rounds: 1,
            events: Vec::new(),
            pods: Vec::new(),
            new_taskmanagers_crash: false,
            jobmanager_unready: false,
            trigger_calls: 0,
        };
        world.settle(20);
        assert_eq!(world.phase(), Phase::Running, "the job starts running");
        world.take_checkpoint();
        world
    }

    fn phase(&self) -> Phase {
        self.job
            .status
            .as_ref()
            .map(|s| s.phase)
            .unwrap_or_default()
    }

    fn status(&self) -> streamjob_operator::crd::StreamJobStatus {
        self.job.status.clone().unwrap_or_default()
    }

    fn file(&mut self, kind: SnapshotKind) -> SnapshotInfo {
        self.seq += 1;
        let dir = match kind {
            SnapshotKind::Checkpoint => "checkpoints",
            SnapshotKind::Savepoint => "savepoints",
        };
        SnapshotInfo {
            id: self.seq,
            kind,
            path: format!("/var/lib/streamjob/{dir}/{}-{}.json", dir, self.seq),
            created_at_ms: u64::try_from(self.now.as_millisecond()).unwrap_or(0),
            size_bytes: 100,
            partitions: 4,
        }
    }

    fn take_checkpoint(&mut self) {
        let file = self.file(SnapshotKind::Checkpoint);
        self.checkpoints.insert(0, file.clone());
        if let Some(p) = self.process.as_mut() {
            p.last_checkpoint = Some(file);
        }
    }

    fn reachable(&self) -> bool {
        self.process.is_some() && self.fault != Fault::Unreachable && !self.jobmanager_unready
    }

    fn overview(&self) -> Result<JobOverview, String> {
        let p = match (&self.process, self.fault) {
            (Some(p), f) if f != Fault::Unreachable && !self.jobmanager_unready => p,
            _ => return Err("connection refused".into()),
        };
        Ok(JobOverview {
            job_id: "trace".into(),
            state: p.state,
            topic: "austinTraceLog".into(),
            partition_count: Some(4),
            generation: 1,
            taskmanagers: vec![TaskManagerInfo {
                id: "tm-0".into(),
                address: None,
                partitions: vec![0, 1, 2, 3],
                idle: false,
                held_back: None,
                revision: None,
                last_heartbeat_ms_ago: 10,
            }],
            idle_taskmanagers: 0,
            unassigned_partitions: 0,
            total_lag: Some(0),
            events_per_second: 10.0,
            partitions: Vec::new(),
            restored_from: p.restored_from.clone(),
            last_checkpoint: p.last_checkpoint.clone(),
            last_savepoint: p.last_savepoint.clone(),
            watermark: None,
            redis: None,
        })
    }

    fn view(&self, queries: &lifecycle::Queries) -> Option<JobManagerReport> {
        if !queries.any() {
            return None;
        }
        let reachable = self.reachable();
        let unreachable = || Err::<Vec<SnapshotInfo>, String>("connection refused".into());
        let poll = queries.poll.as_ref().map(|id| {
            if !reachable {
                return TriggerPoll::Error("connection refused".into());
            }
            match self.process.as_ref().and_then(|p| p.ops.get(id)) {
                Some(op) => TriggerPoll::Known(op.info.clone()),
                None => TriggerPoll::Unknown,
            }
        });
        Some(JobManagerReport {
            observed_at: self.now,
            view: JobManagerView {
                overview: self.overview(),
                poll,
                savepoints: queries.savepoints.then(|| {
                    if reachable {
                        Ok(self.savepoints.clone())
                    } else {
                        unreachable()
                    }
                }),
                checkpoints: queries.checkpoints.then(|| {
                    if reachable {
                        Ok(self.checkpoints.clone())
                    } else {
                        unreachable()
                    }
                }),
            },
        })
    }

    /// The jobmanager answers a trigger.
    fn act(&mut self, action: JobManagerAction) -> ActionOutcome {
        self.trigger_calls += 1;
        if !self.reachable() {
            return ActionOutcome::Failed("connection refused".into());
        }
        if self.fault == Fault::RefuseTriggers {
            return ActionOutcome::Failed("jobmanager answered 500: internal error".into());
        }
        let in_flight = self
            .process
            .as_ref()
            .map(|p| {
                p.ops
                    .values()
                    .filter(|o| o.info.status == OperationStatus::InProgress)
                    .count()
            })
            .unwrap_or(0);
        let Some(p) = self.process.as_mut() else {
            return ActionOutcome::Failed("no jobmanager".into());
        };
        let (kind, trigger_id) = match action {
            JobManagerAction::TriggerSavepoint { trigger_id } => (JmOpKind::Savepoint, trigger_id),
            JobManagerAction::StopWithSavepoint { trigger_id } => {
                (JmOpKind::StopWithSavepoint, trigger_id)
            }
        };
        // A trigger id it knows: the request already made, answered again (no second snapshot).
        if p.ops.get(&trigger_id).is_some_and(|o| o.info.kind == kind) {
            self.repeated_triggers += 1;
            return ActionOutcome::Accepted(trigger_id);
        }
        if p.state != JmState::Running {
            return ActionOutcome::Failed(format!(
                "jobmanager answered 409: the job is {}",
                p.state
            ));
        }
        if kind == JmOpKind::StopWithSavepoint {
            p.state = JmState::Stopping;
        }
        self.seq += 1;
        let id = trigger_id;
        p.ops.insert(
            id.clone(),
            SimOp {
                info: OperationInfo {
                    request_id: id.clone(),
                    kind,
                    status: OperationStatus::InProgress,
                    triggered_at_ms: u64::try_from(self.now.as_millisecond()).unwrap_or(0),
                    completed_at_ms: None,
                    location: None,
                    failure_cause: None,
                },
                remaining: self.savepoint_rounds,
            },
        );
        self.max_in_flight = self.max_in_flight.max(in_flight + 1);
        self.triggers.push(kind);
        ActionOutcome::Accepted(id)
    }

    /// Time passes: operations progress, checkpoints are taken, pods roll.
    fn tick(&mut self) {
        self.now += SignedDuration::from_secs(3);
        if self
            .process
            .as_ref()
            .is_some_and(|p| p.state == JmState::Running)
        {
            self.take_checkpoint();
        }
        let fault = self.fault;
        let ids: Vec<String> = self
            .process
            .as_ref()
            .map(|p| {
                p.ops
                    .iter()
                    .filter(|(_, o)| o.info.status == OperationStatus::InProgress)
                    .map(|(id, _)| id.clone())
                    .collect()
            })
            .unwrap_or_default();
        for id in ids {
            let done = {
                let Some(op) = self.process.as_mut().and_then(|p| p.ops.get_mut(&id)) else {
                    continue;
                };
                if op.remaining > 0 {
                    op.remaining -= 1;
                    false
                } else {
                    true
                }
            };
            if !done {
                continue;
            }
            let file = (fault != Fault::SavepointFails).then(|| self.file(SnapshotKind::Savepoint));
            let now_ms = u64::try_from(self.now.as_millisecond()).unwrap_or(0);
            if let Some(file) = &file {
                self.savepoints.insert(0, file.clone());
            }
            let Some(p) = self.process.as_mut() else {
                continue;
            };
            let Some(op) = p.ops.get_mut(&id) else {
                continue;
            };
            op.info.completed_at_ms = Some(now_ms);
            match file {
                Some(file) => {
                    op.info.status = OperationStatus::Completed;
                    op.info.location = Some(file.path.clone());
                    p.last_savepoint = Some(file);
                    if op.info.kind == JmOpKind::StopWithSavepoint {
                        p.state = JmState::Finished;
                    }
                }
                None => {
                    op.info.status = OperationStatus::Failed;
                    op.info.failure_cause = Some("the savepoint volume is full".into());
                    if op.info.kind == JmOpKind::StopWithSavepoint {
                        p.state = JmState::Running;
                    }
                }
            }
        }
        self.kubelet();
    }

    /// Plays the Deployment controller and kubelet: the applied Deployments roll out at once.
    fn kubelet(&mut self) {
        let restore_from = self
            .config_map
            .as_ref()
            .and_then(|c| c.data.as_ref())
            .and_then(|d| d.get("job.yaml"))
            .and_then(|yaml| JobConfig::from_yaml(yaml).ok())
            .and_then(|c| c.savepoint.restore_from)
            .map(|p| p.display().to_string());
        if let Some(jm) = self.jobmanager.as_mut() {
            let replicas = jm.spec.replicas.unwrap_or(1);
            let hash = jm
                .spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.annotations.clone())
                .unwrap_or_default();
            let running_template = jm
                .status
                .as_ref()
                .and_then(|_| jm.metadata.annotations.clone())
                .unwrap_or_default();
            let rolled = running_template != hash || (replicas > 0) != self.process.is_some();
            if rolled {
                self.process = None;
                if replicas > 0 {
                    self.instances += 1;
                    let restored_from = match &restore_from {
                        Some(path) => RestoreSource::Savepoint {
                            path: path.clone(),
                            id: 0,
                        },
                        None => match self.checkpoints.first() {
                            Some(c) => RestoreSource::Checkpoint {
                                path: c.path.clone(),
                                id: c.id,
                            },
                            None => RestoreSource::StartingOffsets,
                        },
                    };
                    self.process = Some(SimJobManager {
                        state: JmState::Running,
                        restored_from,
                        ops: BTreeMap::new(),
                        last_savepoint: None,
                        last_checkpoint: self.checkpoints.first().cloned(),
                    });
                }
                // Remember which template runs (kept in metadata.annotations of the stored copy).
                jm.metadata.annotations = Some(hash);
            }
            finish(jm);
            if self.jobmanager_unready {
                let status = jm.status.get_or_insert_with(Default::default);
                status.ready_replicas = Some(0);
                status.available_replicas = Some(0);
            }
        }
        if let Some(tm) = self.taskmanager.as_mut() {
            finish(tm);
            if self.new_taskmanagers_crash {
                self.pods = vec![stall(tm, self.now)];
            } else {
                self.pods.retain(|p| {
                    !p.metadata
                        .name
                        .as_deref()
                        .is_some_and(|n| n.ends_with("-new"))
                });
            }
        }
    }

    /// One reconcile, optionally cut short by an operator restart.
    fn reconcile(&mut self, cut: Option<Cut>) {
        let observed = Observed {
            jobmanager: self.jobmanager.clone(),
            taskmanager: self.taskmanager.clone(),
            savepoint_pvc: self.pvc.clone(),
            pods: self.pods.clone(),
            api_token: Some("lifecycle-token".into()),
        };
        let queries = lifecycle::queries(&self.job, &observed);
        let report = self.view(&queries);
        let plan = planner::plan(PlanInput {
            job: &self.job,
            observed: &observed,
            jobmanager: report.as_ref(),
            now: self.now,
        })
        .expect("plans");
        for Action::Publish(note) in &plan.actions {
            self.events.push(note.reason.clone());
        }
        let stored_op = self.status().current_operation;
        if stored_op != plan.status.current_operation {
            self.job.status = Some(plan.status.clone());
            if cut == Some(Cut::StatusWritten) {
                return;
            }
        }
        self.pvc = Some(plan.children.savepoint_pvc.clone());
        if plan.apply_workloads {
            self.config_map = Some(plan.children.config_map.clone());
            self.jobmanager = Some(merge(self.jobmanager.take(), &plan.children.jobmanager));
            self.taskmanager = Some(merge(self.taskmanager.take(), &plan.children.taskmanager));
        }
        if cut == Some(Cut::Applied) {
            return;
        }
        let mut status = plan.status.clone();
        for action in &plan.jobmanager_actions {
            let outcome = self.act(action.clone());
            if cut == Some(Cut::ActionSent) {
                return;
            }
            let (next, events) = lifecycle::after_action(&self.job, &status, &outcome, self.now);
            self.events.extend(events.into_iter().map(|e| e.reason));
            status = next;
            self.job.status = Some(status.clone());
        }
        self.job.status = Some(status);
    }

    /// Reconciles and lets time pass until the operation ends (or `rounds` run out).
    fn settle(&mut self, rounds: usize) {
        for _ in 0..rounds {
            self.reconcile(None);
            self.tick();
        }
    }

    /// Reconciles and lets time pass until the operation has failed `attempts` times; the time
    /// of the round that saw it.
    fn settle_until_attempts(&mut self, attempts: i32, rounds: usize) -> Timestamp {
        for _ in 0..rounds {
            self.reconcile(None);
            let now = self.status().current_operation.map(|op| op.attempts);
            if now == Some(attempts) {
                return self.now;
            }
            self.tick();
        }
        panic!("no failed attempt {attempts} within {rounds} rounds");
    }

    fn running_hash(&self) -> Option<String> {
        self.process.as_ref()?;
        self.jobmanager
            .as_ref()?
            .metadata
            .annotations
            .as_ref()?
            .get(CONFIG_HASH_ANNOTATION)
            .cloned()
    }

    fn desired_hash(&self) -> Option<String> {
        self.status().config_hash
    }

    fn edit(&mut self, change: impl FnOnce(&mut StreamJob)) {
        change(&mut self.job);
        let generation = self.job.metadata.generation.unwrap_or(1) + 1;
        self.job.metadata.generation = Some(generation);
    }
}

/// The applied Deployment, keeping what the cluster tracks (status, running template).
fn merge(existing: Option<Deployment>, desired: &Deployment) -> Deployment {
    let mut next = desired.clone();
    if let Some(existing) = existing {
        next.metadata.annotations = existing.metadata.annotations;
        next.status = existing.status;
        let generation = existing.metadata.generation.unwrap_or(1);
        let changed = existing.spec != desired.spec;
        next.metadata.generation = Some(generation + i64::from(changed));
    } else {
        next.metadata.generation = Some(1);
    }
    next
}

fn finish(d: &mut Deployment) {
    let replicas = d.spec.replicas.unwrap_or(1);
    d.status = Some(DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(replicas),
        updated_replicas: Some(replicas),
        ready_replicas: Some(replicas),
        available_replicas: Some(replicas),
        ..DeploymentStatus::default()
    });
}

/// A rollout the Deployment controller gave up on: the surge pod of the new template crash-loops,
/// the old pods stay ready. Returns that pod.
fn stall(tm: &mut Deployment, now: Timestamp) -> Pod {
    let replicas = tm.spec.replicas.unwrap_or(1);
    tm.status = Some(DeploymentStatus {
        observed_generation: tm.metadata.generation,
        replicas: Some(replicas + 1),
        updated_replicas: Some(1),
        ready_replicas: Some(replicas),
        available_replicas: Some(replicas),
        conditions: Some(vec![DeploymentCondition {
            type_: Some("Progressing".into()),
            status: Some("False".into()),
            reason: Some("ProgressDeadlineExceeded".into()),
            message: Some("ReplicaSet \"trace-taskmanager-new\" has timed out progressing.".into()),
            ..DeploymentCondition::default()
        }]),
        ..DeploymentStatus::default()
    });
    let mut pod = Pod::default();
    pod.metadata.name = Some("trace-taskmanager-new".into());
    pod.metadata.annotations = tm
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone());
    pod.metadata.creation_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now));
    pod.status = Some(PodStatus {
        container_statuses: Some(vec![ContainerStatus {
            name: "taskmanager".into(),
            restart_count: 4,
            ready: false,
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some("CrashLoopBackOff".into()),
                    message: None,
                }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        }]),
        ..PodStatus::default()
    });
    pod
}

fn job() -> StreamJob {
    support::sample("minimal.yaml")
}

/// A job that upgrades through savepoints (the default, `rolling`, keeps it running instead).
fn savepoint_job() -> StreamJob {
    let mut job = job();
    job.spec.upgrade_mode = UpgradeMode::Savepoint;
    job
}

fn restored_savepoint(world: &World) -> Option<String> {
    match &world.process.as_ref()?.restored_from {
        RestoreSource::Savepoint { path, .. } => Some(path.clone()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------

/// A savepoint-mode upgrade, with an optional operator restart at round `r`, point `cut`.
fn savepoint_upgrade(restart: Option<(usize, Cut)>) -> World {
    let mut world = World::new(savepoint_job());
    world.edit(|j| j.spec.image = "registry.example/streamjob-worker:0.2.0".into());
    for round in 0..30 {
        let cut = restart.and_then(|(r, c)| (r == round).then_some(c));
        world.reconcile(cut);
        world.tick();
    }
    world
}

fn assert_upgraded_through_one_savepoint(world: &World, context: &str) {
    let status = world.status();
    assert_eq!(
        status.current_operation, None,
        "{context}: operation finished"
    );
    assert_eq!(world.phase(), Phase::Running, "{context}");
    assert_eq!(
        world.running_hash(),
        world.desired_hash(),
        "{context}: the new template runs"
    );
    let upgrade_savepoints: Vec<_> = status
        .savepoint_history
        .iter()
        .filter(|s| s.trigger == SavepointTrigger::Upgrade)
        .collect();
    assert_eq!(upgrade_savepoints.len(), 1, "{context}: {status:?}");
    assert_eq!(
        restored_savepoint(world).as_deref(),
        Some(upgrade_savepoints[0].path.as_str()),
        "{context}: the new jobmanager restored from the recorded savepoint"
    );
    assert_eq!(
        world
            .triggers
            .iter()
            .filter(|k| **k == JmOpKind::StopWithSavepoint)
            .count(),
        1,
        "{context}: exactly one stop-with-savepoint"
    );
    assert!(
        world.max_in_flight <= 1,
        "{context}: one snapshot at a time"
    );
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(ready.status, "True", "{context}: {ready:?}");
}

#[test]
fn a_savepoint_upgrade_stops_records_and_restores() {
    let world = savepoint_upgrade(None);
    assert_upgraded_through_one_savepoint(&world, "no restart");
    for reason in [
        "UpgradeStarted",
        "SavepointTriggered",
        "SavepointCompleted",
        "UpgradeCompleted",
    ] {
        assert!(
            world.events.contains(&reason.to_string()),
            "{reason}: {:?}",
            world.events
        );
    }
    // Restore path left the config once the upgrade completed, without another rollout.
    let yaml = world
        .config_map
        .as_ref()
        .and_then(|c| c.data.as_ref())
        .and_then(|d| d.get("job.yaml"))
        .cloned()
        .unwrap_or_default();
    assert!(!yaml.contains("restoreFrom"), "{yaml}");
    assert_eq!(world.instances, 2, "exactly one jobmanager restart");
}

#[test]
fn a_savepoint_upgrade_survives_an_operator_restart_at_every_point() {
    for round in 0..12 {
        for cut in CUTS {
            let world = savepoint_upgrade(Some((round, cut)));
            assert_upgraded_through_one_savepoint(
                &world,
                &format!("restart at round {round} {cut:?}"),
            );
        }
    }
}

#[test]
fn while_the_savepoint_is_pending_nothing_is_torn_down() {
    let mut world = World::new(savepoint_job());
    let before = world.running_hash();
    world.edit(|j| j.spec.image = "registry.example/streamjob-worker:0.2.0".into());
    world.reconcile(None);
    let op = world
        .status()
        .current_operation
        .expect("operation recorded");
    assert_eq!(op.kind, OperationKind::Upgrade);
    assert_eq!(op.step, OperationStep::AwaitSavepoint);
    assert!(op.trigger_id.is_some());
    assert_eq!(
        world.running_hash(),
        before,
        "old pods untouched until the savepoint exists"
    );
}

#[test]
fn a_jobmanager_failing_at_every_round_is_retried_then_gives_up_with_advice() {
    for fault in [
        Fault::Unreachable,
        Fault::RefuseTriggers,
        Fault::SavepointFails,
    ] {
        let mut world = World::new(savepoint_job());
        world.job.spec.savepoint.timeout = "20s".into();
        let before = world.running_hash();
        world.edit(|j| j.spec.image = "registry.example/streamjob-worker:0.2.0".into());
        world.fault = fault;
        let mut rounds = 0;
        while rounds < 400 {
            world.reconcile(None);
            world.tick();
            rounds += 1;
            if world
                .status()
                .current_operation
                .is_some_and(|o| o.step == OperationStep::Failed)
            {
                break;
            }
        }
        let status = world.status();
        let op = status.current_operation.clone().expect("operation kept");
        assert_eq!(op.step, OperationStep::Failed, "{fault:?}");
        assert_eq!(
            op.attempts, world.job.spec.savepoint.max_attempts,
            "{fault:?}"
        );
        let degraded = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Degraded")
            .expect("Degraded");
        assert_eq!(degraded.status, "True", "{fault:?}");
        assert!(
            degraded.message.contains("last-state"),
            "{fault:?}: {}",
            degraded.message
        );
        assert_eq!(
            world
                .jobmanager
                .as_ref()
                .and_then(|d| d.metadata.annotations.clone())
                .and_then(|a| a.get(CONFIG_HASH_ANNOTATION).cloned()),
            before,
            "{fault:?}: nothing torn down"
        );
        assert!(world.events.contains(&"SavepointGaveUp".to_string()));

        // The advice works: switching to last-state upgrades from the newest checkpoint.
        world.fault = Fault::None;
        world.edit(|j| j.spec.upgrade_mode = UpgradeMode::LastState);
        world.settle(15);
        let status = world.status();
        assert_eq!(status.current_operation, None, "{fault:?}: {status:?}");
        assert_eq!(world.running_hash(), world.desired_hash(), "{fault:?}");
        assert!(matches!(
            world.process.as_ref().map(|p| &p.restored_from),
            Some(RestoreSource::Checkpoint { .. })
        ));
        let degraded = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Degraded")
            .expect("Degraded");
        assert_eq!(degraded.status, "False", "{fault:?}");
    }
}

#[test]
fn a_jobmanager_failing_for_a_while_only_delays_the_upgrade() {
    // Faults in rounds 0..k for each k, then a healthy jobmanager: the upgrade completes through
    // exactly one successful stop-with-savepoint.
    for fault in [
        Fault::Unreachable,
        Fault::RefuseTriggers,
        Fault::SavepointFails,
    ] {
        for bad_rounds in [1usize, 2, 3, 5] {
            let mut world = World::new(savepoint_job());
            world.job.spec.savepoint.max_attempts = 20;
            world.edit(|j| j.spec.image = "registry.example/streamjob-worker:0.2.0".into());
            for round in 0..200 {
                world.fault = if round < bad_rounds {
                    fault
                } else {
                    Fault::None
                };
                world.reconcile(None);
                world.tick();
            }
            let context = format!("{fault:?} for {bad_rounds} rounds");
            let status = world.status();
            assert_eq!(status.current_operation, None, "{context}: {status:?}");
            assert_eq!(world.running_hash(), world.desired_hash(), "{context}");
            assert!(restored_savepoint(&world).is_some(), "{context}");
            assert!(world.max_in_flight <= 1, "{context}");
        }
    }
}

#[test]
fn last_state_upgrades_without_stopping_even_when_the_jobmanager_is_down() {
    let mut world = World::new(job());
    world.job.spec.upgrade_mode = UpgradeMode::LastState;
    world.settle(2);
    world.fault = Fault::Unreachable;
    world.edit(|j| j.spec.batch.linger = "50ms".into());
    world.settle(10);
    world.fault = Fault::None;
    world.settle(10);
    assert_eq!(world.status().current_operation, None);
    assert_eq!(world.running_hash(), world.desired_hash());
    assert!(world.triggers.is_empty(), "no savepoint for last-state");
    assert!(matches!(
        world.process.as_ref().map(|p| &p.restored_from),
        Some(RestoreSource::Checkpoint { .. })
    ));
}

#[test]
fn stateless_upgrades_roll_out_at_once() {
    let mut world = World::new(job());
    world.job.spec.upgrade_mode = UpgradeMode::Stateless;
    world.edit(|j| j.spec.batch.linger = "50ms".into());
    world.reconcile(None);
    assert_eq!(
        world.status().current_operation.map(|o| o.step),
        Some(OperationStep::RollOut)
    );
    world.settle(5);
    assert_eq!(world.running_hash(), world.desired_hash());
    assert!(world.triggers.is_empty());
}

#[test]
fn replicas_alone_are_never_an_upgrade() {
    let mut world = World::new(job());
    let instances = world.instances;
    world.edit(|j| j.spec.replicas = 4);
    world.reconcile(None);
    assert_eq!(world.status().current_operation, None);
    assert_eq!(
        world.taskmanager.as_ref().and_then(|d| d.spec.replicas),
        Some(4),
        "applied at once"
    );
    world.settle(3);
    assert_eq!(world.instances, instances, "the jobmanager keeps running");
    assert!(world.triggers.is_empty());
    assert_eq!(world.status().replicas, 4);
}

fn suspend_resume(restart: Option<(usize, Cut)>) -> World {
    let mut world = World::new(job());
    world.edit(|j| j.spec.state = JobState::Suspended);
    for round in 0..12 {
        let cut = restart.and_then(|(r, c)| (r == round).then_some(c));
        world.reconcile(cut);
        world.tick();
    }
    let context = format!("{restart:?}");
    assert_eq!(world.phase(), Phase::Suspended, "{context}");
    assert!(world.process.is_none(), "{context}: nothing runs");
    assert!(world.pvc.is_some(), "{context}: the volume stays");
    let status = world.status();
    let suspend = status.last_savepoint.clone().expect("suspend savepoint");
    assert_eq!(suspend.trigger, SavepointTrigger::Suspend, "{context}");
    world.edit(|j| j.spec.state = JobState::Running);
    for round in 12..30 {
        let cut = restart.and_then(|(r, c)| (r == round).then_some(c));
        world.reconcile(cut);
        world.tick();
    }
    assert_eq!(world.phase(), Phase::Running, "{context}");
    assert_eq!(world.status().current_operation, None, "{context}");
    assert_eq!(
        restored_savepoint(&world),
        Some(suspend.path.clone()),
        "{context}"
    );
    world
}

#[test]
fn suspend_takes_a_savepoint_scales_to_zero_and_resume_restores_it() {
    let world = suspend_resume(None);
    for reason in ["Suspending", "Suspended", "Resuming", "Resumed"] {
        assert!(
            world.events.contains(&reason.to_string()),
            "{reason}: {:?}",
            world.events
        );
    }
}

#[test]
fn suspend_and_resume_survive_an_operator_restart_at_every_point() {
    for round in 0..20 {
        for cut in CUTS {
            suspend_resume(Some((round, cut)));
        }
    }
}

#[test]
fn a_savepoint_trigger_nonce_takes_one_savepoint() {
    let mut world = World::new(job());
    world.edit(|j| j.spec.savepoint_trigger_nonce = Some(1));
    world.reconcile(None);
    let status = world.status();
    assert_eq!(
        status.current_operation.as_ref().map(|o| o.step),
        Some(OperationStep::AwaitSavepoint)
    );
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
    assert_eq!(
        ready.map(|c| c.status.as_str()),
        Some("True"),
        "a plain savepoint does not interrupt processing"
    );
    world.tick();
    world.settle(6);
    let status = world.status();
    assert_eq!(status.current_operation, None);
    assert_eq!(status.observed_savepoint_trigger_nonce, Some(1));
    let manual: Vec<_> = status
        .savepoint_history
        .iter()
        .filter(|s| s.trigger == SavepointTrigger::Manual)
        .collect();
    assert_eq!(manual.len(), 1);
    assert_eq!(manual[0].nonce, Some(1));
    assert_eq!(world.triggers, vec![JmOpKind::Savepoint]);
    // The same nonce again does nothing; a new one takes another.
    world.settle(4);
    assert_eq!(world.triggers.len(), 1);
    world.edit(|j| j.spec.savepoint_trigger_nonce = Some(2));
    world.settle(6);
    assert_eq!(world.triggers.len(), 2);
    assert_eq!(world.status().last_savepoint.and_then(|s| s.nonce), Some(2));
}

#[test]
fn a_savepoint_waits_for_a_ready_jobmanager_and_never_calls_one_that_is_not() {
    let mut world = World::new(job());
    world.jobmanager_unready = true;
    world.tick();
    world.edit(|j| j.spec.savepoint_trigger_nonce = Some(1));
    world.settle(10);
    let op = world
        .status()
        .current_operation
        .expect("the savepoint waits");
    assert_eq!(op.step, OperationStep::TriggerSavepoint);
    assert_eq!(op.attempts, 0, "waiting is no failed attempt");
    assert_eq!(
        op.message.as_deref(),
        Some(lifecycle::WAITING_FOR_A_READY_JOBMANAGER)
    );
    assert_eq!(world.trigger_calls, 0, "no call without a ready jobmanager");

    // The pod turns ready: one savepoint, taken at once.
    world.jobmanager_unready = false;
    world.settle(6);
    let status = world.status();
    assert_eq!(status.current_operation, None, "{status:?}");
    assert_eq!(status.observed_savepoint_trigger_nonce, Some(1));
    assert_eq!(world.triggers, vec![JmOpKind::Savepoint]);

    // None turns ready within the timeout: that is a failed attempt, and it says why.
    world.job.spec.savepoint.timeout = "20s".into();
    world.jobmanager_unready = true;
    world.tick();
    let calls = world.trigger_calls;
    world.edit(|j| j.spec.savepoint_trigger_nonce = Some(2));
    world.settle(10);
    let op = world.status().current_operation.expect("retrying");
    assert_eq!(op.attempts, 1);
    assert!(
        op.message
            .as_deref()
            .is_some_and(|m| m.contains("no jobmanager pod was ready for 20s")),
        "{op:?}"
    );
    assert!(world.events.contains(&"SavepointFailed".to_string()));
    assert_eq!(world.trigger_calls, calls, "still no call");
}

#[test]
fn a_retried_savepoint_gets_its_whole_timeout_after_its_retry_delay() {
    let mut world = World::new(job());
    world.job.spec.savepoint.timeout = "60s".into();
    world.jobmanager_unready = true;
    world.tick();
    world.edit(|j| j.spec.savepoint_trigger_nonce = Some(1));
    let first_failure = world.settle_until_attempts(1, 40);
    let second_failure = world.settle_until_attempts(2, 80);

    // The first retry waits 10 s; the wait for a ready pod that follows is the attempt's own,
    // and it gets the whole 60 s of spec.savepoint.timeout.
    let gap = second_failure.duration_since(first_failure);
    assert!(
        gap >= SignedDuration::from_secs(10 + 60),
        "the second attempt failed {gap:?} after the first"
    );
    assert_eq!(world.trigger_calls, 0, "no call without a ready jobmanager");
}

#[test]
fn a_triggered_savepoint_whose_jobmanager_turns_unready_is_not_polled_and_times_out() {
    let mut world = World::new(job());
    world.job.spec.savepoint.timeout = "20s".into();
    world.savepoint_rounds = 100;
    world.edit(|j| j.spec.savepoint_trigger_nonce = Some(1));
    world.reconcile(None);
    let op = world.status().current_operation.expect("triggered");
    assert_eq!(op.step, OperationStep::AwaitSavepoint);

    // The pod stops being ready: nothing is asked until the timeout, which is a failed attempt.
    world.jobmanager_unready = true;
    world.tick();
    world.settle(10);
    let op = world.status().current_operation.expect("retrying");
    assert_eq!(op.attempts, 1, "{op:?}");
    assert!(
        op.message
            .as_deref()
            .is_some_and(|m| m.contains("no jobmanager pod was ready to answer for 20s")),
        "{op:?}"
    );
    assert_eq!(world.triggers.len(), 1, "no second trigger while unready");
}

#[test]
fn a_manual_savepoint_survives_a_restart_at_every_point_without_a_second_trigger() {
    for round in 0..4 {
        for cut in CUTS {
            let mut world = World::new(job());
            world.edit(|j| j.spec.savepoint_trigger_nonce = Some(9));
            for r in 0..20 {
                world.reconcile((r == round).then_some(cut));
                world.tick();
            }
            let status = world.status();
            assert_eq!(status.current_operation, None, "{round} {cut:?}");
            assert_eq!(status.observed_savepoint_trigger_nonce, Some(9));
            assert!(status.savepoint_history.iter().any(|s| s.nonce == Some(9)));
            // A restart between the trigger and recording its id adopts the savepoint it made.
            assert_eq!(world.triggers, vec![JmOpKind::Savepoint], "{round} {cut:?}");
            assert!(world.max_in_flight <= 1);
        }
    }
}

/// A savepoint slower than any grace period, and an operator restart between sending its
/// trigger and recording the answer: the trigger is sent again with the same id, and the
/// jobmanager answers it with the savepoint already under way. One savepoint, whatever the
/// timing.
#[test]
fn a_slow_savepoint_and_a_restart_between_trigger_and_record_take_one_savepoint() {
    for (kind, edit) in [
        (
            "manual",
            (|j: &mut StreamJob| j.spec.savepoint_trigger_nonce = Some(4)) as fn(&mut StreamJob),
        ),
        ("upgrade", |j: &mut StreamJob| {
            j.spec.image = "registry.example/streamjob-worker:0.2.0".into()
        }),
        ("suspend", |j: &mut StreamJob| {
            j.spec.state = JobState::Suspended
        }),
    ] {
        let mut world = World::new(savepoint_job());
        // 20 rounds of 3 s: a minute, longer than the 30 s grace the operator used to wait.
        world.savepoint_rounds = 20;
        world.edit(edit);
        world.reconcile(Some(Cut::ActionSent));
        for _ in 0..40 {
            world.tick();
            world.reconcile(None);
        }
        assert_eq!(world.triggers.len(), 1, "{kind}: {:?}", world.triggers);
        if kind == "manual" {
            assert_eq!(
                world.repeated_triggers, 1,
                "{kind}: the trigger was sent again, same id"
            );
        }
        assert_eq!(
            world.status().current_operation,
            None,
            "{kind}: {:?}",
            world.status()
        );
        let taken: Vec<_> = world.savepoints.iter().map(|s| s.path.clone()).collect();
        assert_eq!(taken.len(), 1, "{kind}: {taken:?}");
    }
}

#[test]
fn trigger_ids_are_stable_per_attempt_and_new_per_retry_or_operation() {
    let mut world = World::new(job());
    world.edit(|j| j.spec.savepoint_trigger_nonce = Some(4));
    world.reconcile(Some(Cut::StatusWritten));
    let op = world
        .status()
        .current_operation
        .expect("operation recorded before acting");
    let first = lifecycle::trigger_id(&op);
    assert_eq!(
        lifecycle::trigger_id(&op),
        first,
        "derived from the stored operation only"
    );
    assert!(first.contains("n4"), "derived from the nonce: {first}");
    let mut retry = op.clone();
    retry.attempts += 1;
    assert_ne!(lifecycle::trigger_id(&retry), first);
    let mut later = op.clone();
    later.started_at = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        op.started_at.0 + SignedDuration::from_secs(60),
    );
    assert_ne!(
        lifecycle::trigger_id(&later),
        first,
        "a nonce used again later is a new savepoint"
    );
}

#[test]
fn a_restart_nonce_restarts_from_the_last_state() {
    let mut world = World::new(job());
    let instances = world.instances;
    world.edit(|j| j.spec.restart_nonce = Some(3));
    world.settle(5);
    assert_eq!(world.status().current_operation, None);
    assert_eq!(world.instances, instances + 1, "restarted once");
    assert!(world.triggers.is_empty());
    assert!(matches!(
        world.process.as_ref().map(|p| &p.restored_from),
        Some(RestoreSource::Checkpoint { .. })
    ));
    assert!(world.events.contains(&"Restarted".to_string()));
}

#[test]
fn periodic_savepoints_are_recorded_and_the_history_is_capped() {
    let mut world = World::new(job());
    for _ in 0..15 {
        let file = world.file(SnapshotKind::Savepoint);
        world.savepoints.insert(0, file.clone());
        if let Some(p) = world.process.as_mut() {
            p.last_savepoint = Some(file);
        }
        world.settle(1);
    }
    let status = world.status();
    assert_eq!(
        status.savepoint_history.len(),
        streamjob_operator::crd::SAVEPOINT_HISTORY_CAP
    );
    assert!(status
        .savepoint_history
        .iter()
        .all(|s| s.trigger == SavepointTrigger::Periodic));
    assert_eq!(
        status.last_savepoint.as_ref().map(|s| &s.path),
        world.savepoints.first().map(|s| &s.path)
    );
    assert_eq!(
        status.savepoint_history[0].path, world.savepoints[0].path,
        "newest first"
    );
}

/// Deletion: the finalizer's plan, step by step (with restarts: all state is in status).
fn delete(world: &mut World, rounds: usize) -> (bool, Vec<String>) {
    let mut events = Vec::new();
    for _ in 0..rounds {
        let observed = Observed {
            jobmanager: world.jobmanager.clone(),
            taskmanager: world.taskmanager.clone(),
            savepoint_pvc: world.pvc.clone(),
            pods: Vec::new(),
            api_token: Some("lifecycle-token".into()),
        };
        let queries = lifecycle::queries(&world.job, &observed);
        let report = world.view(&queries);
        let plan = planner::plan_cleanup(PlanInput {
            job: &world.job,
            observed: &observed,
            jobmanager: report.as_ref(),
            now: world.now,
        })
        .expect("plans cleanup");
        events.extend(
            plan.actions
                .iter()
                .map(|Action::Publish(n)| n.reason.clone()),
        );
        world.job.status = Some(plan.status.clone());
        if let Some(pvc) = plan.savepoint_pvc.clone() {
            world.pvc = Some(pvc);
        }
        if plan.done {
            return (true, events);
        }
        let mut status = plan.status.clone();
        for action in &plan.jobmanager_actions {
            let outcome = world.act(action.clone());
            status = lifecycle::after_action(&world.job, &status, &outcome, world.now).0;
        }
        world.job.status = Some(status);
        world.tick();
    }
    (false, events)
}

#[test]
fn deletion_takes_a_final_savepoint_and_a_recreated_job_restores_it() {
    let mut world = World::new(job());
    let (done, events) = delete(&mut world, 10);
    assert!(done, "{events:?}");
    assert!(events.contains(&"FinalSavepoint".to_string()), "{events:?}");
    let final_sp = world
        .savepoints
        .first()
        .cloned()
        .expect("final savepoint on the volume");
    assert_eq!(world.triggers, vec![JmOpKind::StopWithSavepoint]);
    let pvc = world.pvc.clone().expect("kept pvc");
    assert_eq!(
        pvc.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(LATEST_SAVEPOINT_ANNOTATION)),
        Some(&final_sp.path),
        "the kept volume names its newest savepoint"
    );
    // The StreamJob is gone, its Deployments garbage-collected; the PVC stays. Re-create it.
    let checkpoints = world.checkpoints.clone();
    let savepoints = world.savepoints.clone();
    let mut fresh = World {
        job: job(),
        config_map: None,
        jobmanager: None,
        taskmanager: None,
        pvc: Some(pvc),
        process: None,
        savepoints,
        checkpoints,
        instances: 0,
        seq: 100,
        now: world.now,
        fault: Fault::None,
        max_in_flight: 0,
        triggers: Vec::new(),
        repeated_triggers: 0,
        savepoint_rounds: 1,
        events: Vec::new(),
        pods: Vec::new(),
        new_taskmanagers_crash: false,
        jobmanager_unready: false,
        trigger_calls: 0,
    };
    fresh.settle(10);
    assert_eq!(fresh.phase(), Phase::Running);
    assert_eq!(restored_savepoint(&fresh), Some(final_sp.path.clone()));
    assert!(fresh.events.contains(&"RestoringKeptState".to_string()));
}

#[test]
fn deletion_proceeds_after_the_timeout_and_says_so() {
    let mut world = World::new(job());
    world.job.spec.savepoint.timeout = "30s".into();
    world.fault = Fault::Unreachable;
    let (done, events) = delete(&mut world, 40);
    assert!(done, "{events:?}");
    assert!(
        events.contains(&"FinalSavepointTimedOut".to_string()),
        "{events:?}"
    );
}

#[test]
fn deletion_without_a_final_savepoint_releases_at_once() {
    let mut world = World::new(job());
    world.job.spec.savepoint.on_delete.final_savepoint = false;
    let (done, _) = delete(&mut world, 1);
    assert!(done);
    assert!(world.triggers.is_empty());
}

#[test]
fn health_ready_only_while_the_job_processes_and_degraded_on_stalled_checkpoints() {
    let mut world = World::new(job());
    let ready = |w: &World| {
        w.status()
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| (c.status.clone(), c.reason.clone()))
    };
    assert_eq!(ready(&world).map(|r| r.0), Some("True".into()));
    let progress = world.status().job.expect("progress");
    assert_eq!(progress.state.as_deref(), Some("RUNNING"));
    assert!(progress.last_checkpoint_at.is_some());
    // The jobmanager stops answering: not Ready.
    world.fault = Fault::Unreachable;
    world.settle(1);
    assert_eq!(
        ready(&world),
        Some(("False".into(), "JobManagerUnreachable".into()))
    );
    // Back, but no checkpoint for a long time: Degraded.
    world.fault = Fault::None;
    world.settle(1);
    assert_eq!(ready(&world).map(|r| r.0), Some("True".into()));
    world.now += SignedDuration::from_secs(600);
    world.settle(1);
    let degraded = world
        .status()
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .cloned()
        .expect("Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "CheckpointsStalled")
    );
    world.take_checkpoint();
    world.settle(1);
    let degraded = world
        .status()
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .cloned()
        .expect("Degraded");
    assert_eq!(degraded.status, "False");
}

#[test]
fn a_crash_looping_taskmanager_is_degraded_with_the_pod_and_exit_code() {
    let mut world = World::new(job());
    let degraded = |w: &World| {
        w.status()
            .conditions
            .iter()
            .find(|c| c.type_ == "Degraded")
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    assert_eq!(degraded(&world).map(|d| d.0), Some("False".into()));
    let mut pod = Pod::default();
    pod.metadata.name = Some("trace-taskmanager-7d9f-abcde".into());
    pod.status = Some(PodStatus {
        container_statuses: Some(vec![ContainerStatus {
            name: "taskmanager".into(),
            restart_count: 5,
            ready: false,
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some("CrashLoopBackOff".into()),
                    message: None,
                }),
                ..ContainerState::default()
            }),
            last_state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: 2,
                    reason: Some("Error".into()),
                    ..ContainerStateTerminated::default()
                }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        }]),
        ..PodStatus::default()
    });
    world.pods = vec![pod];
    world.settle(1);
    let (status, reason, message) = degraded(&world).expect("Degraded");
    assert_eq!((status.as_str(), reason.as_str()), ("True", "CrashLoop"));
    assert!(
        message.contains("trace-taskmanager-7d9f-abcde") && message.contains("exit code 2"),
        "{message}"
    );
    assert!(
        world.events.contains(&"CrashLoop".to_string()),
        "{:?}",
        world.events
    );
    // Recovered: Degraded clears.
    world.pods.clear();
    world.settle(1);
    assert_eq!(degraded(&world).map(|d| d.0), Some("False".into()));
}

fn degraded_of(world: &World) -> Option<(String, String, String)> {
    world
        .status()
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// The worker's own last words (what it wrote to /dev/termination-log, e.g. a wrong CA) reach the
/// StreamJob's Degraded condition and its Warning Event.
#[test]
fn a_crash_loop_carries_the_workers_termination_message() {
    let mut world = World::new(job());
    let cause = "redis sink: redis sink misconfigured: `sink.redis.tls.caFile`: the Redis \
                 server's TLS certificate is not signed by the CA in /etc/streamjob-redis-tls/ca.crt (wrong CA?)";
    let mut pod = Pod::default();
    pod.metadata.name = Some("trace-taskmanager-7d9f-fghij".into());
    pod.status = Some(PodStatus {
        container_statuses: Some(vec![ContainerStatus {
            name: "taskmanager".into(),
            restart_count: 4,
            ready: false,
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some("CrashLoopBackOff".into()),
                    message: None,
                }),
                ..ContainerState::default()
            }),
            last_state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: 1,
                    reason: Some("Error".into()),
                    message: Some(format!("{cause}\n")),
                    ..ContainerStateTerminated::default()
                }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        }]),
        ..PodStatus::default()
    });
    world.pods = vec![pod];
    world.settle(1);
    let (status, reason, message) = degraded_of(&world).expect("Degraded");
    assert_eq!((status.as_str(), reason.as_str()), ("True", "CrashLoop"));
    assert!(message.contains(cause), "{message}");
    assert!(world.events.contains(&"CrashLoop".to_string()));
}

/// A Secret (or key) that an environment variable refers to is missing: the kubelet cannot create
/// the container; the StreamJob says which Secret and key, and recovers once it exists.
#[test]
fn a_missing_secret_key_is_degraded_with_the_kubelets_message() {
    let mut world = World::new(job());
    let kubelet = "couldn't find key password in Secret austin/redis-credentials";
    let mut pod = Pod::default();
    pod.metadata.name = Some("trace-jobmanager-5c6d-klmno".into());
    pod.status = Some(PodStatus {
        container_statuses: Some(vec![ContainerStatus {
            name: "jobmanager".into(),
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some("CreateContainerConfigError".into()),
                    message: Some(kubelet.into()),
                }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        }]),
        ..PodStatus::default()
    });
    world.pods = vec![pod];
    world.settle(1);
    let (status, reason, message) = degraded_of(&world).expect("Degraded");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "ContainerConfigError")
    );
    assert!(
        message.contains(kubelet) && message.contains("trace-jobmanager-5c6d-klmno"),
        "{message}"
    );
    assert!(world.events.contains(&"ContainerConfigError".to_string()));
    world.pods.clear();
    world.settle(1);
    assert_eq!(degraded_of(&world).map(|d| d.0), Some("False".into()));
}

// ---------------------------------------------------------------------------------------------
// Rolling upgrades (the default upgradeMode)

fn condition_of(world: &World, type_: &str) -> (String, String, String) {
    world
        .status()
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
        .unwrap_or_else(|| panic!("{type_} condition"))
}

fn new_image(job: &mut StreamJob) {
    job.spec.image = "registry.example/streamjob-worker:0.2.0".into();
}

/// A compatible change rolled with an optional operator restart at round `r`, point `cut`.
fn rolling_upgrade(restart: Option<(usize, Cut)>) -> World {
    let mut world = World::new(job());
    world.edit(new_image);
    for round in 0..20 {
        let cut = restart.and_then(|(r, c)| (r == round).then_some(c));
        world.reconcile(cut);
        world.tick();
    }
    world
}

fn assert_rolled_without_a_savepoint(world: &World, context: &str) {
    let status = world.status();
    assert_eq!(status.current_operation, None, "{context}: finished");
    assert_eq!(world.phase(), Phase::Running, "{context}");
    assert_eq!(
        world.running_hash(),
        world.desired_hash(),
        "{context}: the new template runs"
    );
    assert!(
        world.triggers.is_empty(),
        "{context}: no stop, no savepoint: {:?}",
        world.triggers
    );
    assert!(status.savepoint_history.is_empty(), "{context}: {status:?}");
    assert!(
        world
            .events
            .contains(&"RollingUpgradeCompleted".to_string()),
        "{context}: {:?}",
        world.events
    );
    assert!(
        !world.events.contains(&"UpgradeStarted".to_string()),
        "{context}"
    );
}

#[test]
fn a_compatible_change_rolls_while_the_job_keeps_processing() {
    let mut world = World::new(job());
    world.edit(new_image);
    world.reconcile(None);
    let op = world
        .status()
        .current_operation
        .expect("recorded before applying");
    assert_eq!(
        (op.kind, op.step),
        (OperationKind::RollingUpgrade, OperationStep::RollOut)
    );
    assert_eq!(op.upgrade_mode, Some(UpgradeMode::Rolling));
    assert_eq!(
        world.phase(),
        Phase::RollingUpgrade,
        "what kubectl get sj -w shows"
    );
    assert_eq!(condition_of(&world, "Progressing").1, "RollingUpgrade");
    assert_eq!(
        condition_of(&world, "Ready").0,
        "True",
        "the job never stops"
    );
    assert_eq!(
        world
            .taskmanager
            .as_ref()
            .and_then(|d| d.spec.template.metadata.clone())
            .and_then(|m| m.annotations)
            .and_then(|a| a.get(CONFIG_HASH_ANNOTATION).cloned()),
        world.desired_hash(),
        "the new template is applied at once"
    );
    assert!(
        world.events.contains(&"RollingUpgradeStarted".to_string()),
        "{:?}",
        world.events
    );
    world.settle(10);
    assert_rolled_without_a_savepoint(&world, "no restart");
    assert_eq!(condition_of(&world, "Ready").0, "True");
    assert_eq!(condition_of(&world, "Degraded").0, "False");
}

#[test]
fn a_rolling_upgrade_survives_an_operator_restart_at_every_point() {
    for round in 0..6 {
        for cut in CUTS {
            let world = rolling_upgrade(Some((round, cut)));
            assert_rolled_without_a_savepoint(&world, &format!("restart at round {round} {cut:?}"));
        }
    }
}

#[test]
fn a_fence_change_falls_back_to_the_savepoint_path_and_says_so() {
    let mut world = World::new(job());
    world.edit(|j| j.spec.redis.key_prefix = "v2:".into());
    for _ in 0..30 {
        world.reconcile(None);
        world.tick();
    }
    assert_upgraded_through_one_savepoint(&world, "keyPrefix changed");
    let fallback = world.events.iter().position(|e| e == "RollingNotPossible");
    let upgrade = world.events.iter().position(|e| e == "UpgradeStarted");
    assert!(
        fallback.is_some() && fallback < upgrade,
        "{:?}",
        world.events
    );
    assert!(!world.events.contains(&"RollingUpgradeStarted".to_string()));
}

/// A new taskmanager that never becomes ready stops the rollout where it is.
fn stalled() -> World {
    let mut world = World::new(job());
    world.new_taskmanagers_crash = true;
    world.edit(new_image);
    world.settle(5);
    world
}

#[test]
fn a_stalled_rollout_is_degraded_says_which_pod_and_keeps_the_job_running() {
    let world = stalled();
    let op = world.status().current_operation.expect("kept");
    assert_eq!(op.kind, OperationKind::RollingUpgrade);
    let (degraded, reason, message) = condition_of(&world, "Degraded");
    assert_eq!(
        (degraded.as_str(), reason.as_str()),
        ("True", "RolloutStalled")
    );
    for part in [
        "trace-taskmanager-new",
        "CrashLoopBackOff",
        "timed out progressing",
        "old taskmanagers keep the job running",
    ] {
        assert!(message.contains(part), "{part}: {message}");
    }
    assert_eq!(condition_of(&world, "Progressing").0, "False");
    assert_eq!(
        condition_of(&world, "Ready").0,
        "True",
        "the old taskmanagers still process"
    );
    assert_eq!(world.phase(), Phase::RollingUpgrade);
    assert_eq!(
        world
            .events
            .iter()
            .filter(|e| *e == "RolloutStalled")
            .count(),
        1,
        "one Warning: {:?}",
        world.events
    );
    assert!(world.triggers.is_empty());
}

#[test]
fn a_stalled_rollout_resumes_with_the_next_change_or_the_old_template() {
    let fixed: fn(&mut StreamJob) =
        |j| j.spec.image = "registry.example/streamjob-worker:0.2.1".into();
    let reverted: fn(&mut StreamJob) =
        |j| j.spec.image = "registry.example/streamjob-worker:0.1.0".into();
    for (what, change) in [("a fixed image", fixed), ("the old image", reverted)] {
        let mut world = stalled();
        world.new_taskmanagers_crash = false;
        world.edit(change);
        world.settle(10);
        assert_rolled_without_a_savepoint(&world, what);
        assert_eq!(condition_of(&world, "Degraded").0, "False", "{what}");
    }
}

#[test]
fn a_fence_change_during_a_stalled_rollout_goes_through_a_savepoint() {
    let mut world = stalled();
    world.new_taskmanagers_crash = false;
    world.edit(|j| j.spec.kafka.topic = "austinTraceLogV2".into());
    world.settle(30);
    assert_upgraded_through_one_savepoint(&world, "topic changed mid-rollout");
    for reason in ["OperationSuperseded", "RollingNotPossible"] {
        assert!(
            world.events.contains(&reason.to_string()),
            "{reason}: {:?}",
            world.events
        );
    }
}
