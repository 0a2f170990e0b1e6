//! The operator's lifecycle end to end, without Kubernetes: the test plays the API server (an
//! in-memory store of the StreamJob and its children) and the kubelet (it starts and stops real
//! `streamjob-worker` processes exactly as the planned Deployments describe: command and args,
//! env, replicas, the rendered job.yaml from the ConfigMap, a temp dir as the PVC), while the
//! operator's own planner and jobmanager REST client run the reconcile loop in the reconciler's
//! order (status before acting). Against a real Kafka-protocol broker (librdkafka's mock cluster)
//! and a real redis-server it drives create, a savepoint upgrade, an in-place rescale, suspend and
//! resume, and deletion with a final savepoint, and ends with the exact Redis state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret};
use k8s_openapi::jiff::Timestamp;
use streamjob_operator::crd::{JobState, Phase, SavepointTrigger, StreamJob, StreamJobStatus};
use streamjob_operator::jobmanager_client::{self as jm, BaseUrl, JobManagerClient};
use streamjob_operator::planner::config::{CONFIG_DIR, CONFIG_KEY, STATE_DIR};
use streamjob_operator::planner::lifecycle::{self, LATEST_SAVEPOINT_ANNOTATION};
use streamjob_operator::planner::{self, children, Action, Observed, PlanInput};
use streamjob_tests::{free_port, http_get, Worker};
use streamjob_worker::config::JobConfig;
use streamjob_worker::demo::{EventGenerator, TrafficShape};
use streamjob_worker::testkit::kafka::{self, ProduceMode};
use streamjob_worker::testkit::redis::RedisServer;
use streamjob_worker::testkit::trace_state::{fence_offsets, Expected, TraceState};

const TOPIC: &str = "trace-lc";
const DLQ: &str = "trace-lc-dlq";
const PARTITIONS: i32 = 4;
const NS: &str = "default";
const NAME: &str = "trace";

fn data_set(seed: u64, n: usize) -> Vec<Vec<u8>> {
    let mut generator = EventGenerator::new(
        seed,
        TrafficShape {
            users: 2_000,
            messages: 1_000,
            malformed_ppm: 500,
            ..TrafficShape::default()
        },
    );
    (0..n).map(|_| generator.next_payload()).collect()
}

/// One pod: a worker process started from a Deployment's pod template.
struct Pod {
    name: String,
    template: String,
    worker: Worker,
}

/// The kubelet (and the Deployment controller): keeps processes in line with the Deployments.
struct Kubelet {
    dir: PathBuf,
    /// The savepoint PVC.
    volume: PathBuf,
    jm_port: u16,
    jobmanager: Option<Pod>,
    taskmanagers: Vec<Pod>,
    pods: usize,
    jobmanager_starts: usize,
    /// What the job's API token Secret holds (mounted into the jobmanager as a file).
    api_token: Option<String>,
}

fn template_key(d: &Deployment) -> String {
    serde_json::to_string(&d.spec.template).unwrap_or_default()
}

impl Kubelet {
    fn new(dir: &Path) -> Self {
        let volume = dir.join("pvc");
        std::fs::create_dir_all(&volume).expect("pvc dir");
        Kubelet {
            dir: dir.to_path_buf(),
            volume,
            jm_port: free_port(),
            jobmanager: None,
            taskmanagers: Vec::new(),
            pods: 0,
            jobmanager_starts: 0,
            api_token: None,
        }
    }

    fn jobmanager_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.jm_port)
    }

    /// Starts a pod of `deployment` the way the kubelet would: the container's command and args,
    /// its env (downward API resolved), the ConfigMap mounted at `/etc/streamjob`, the PVC at the
    /// state directory, and cluster DNS standing in for a local port.
    fn start(&mut self, deployment: &Deployment, config_map: &ConfigMap) -> Pod {
        self.pods += 1;
        let component = deployment
            .metadata
            .name
            .clone()
            .unwrap_or_default()
            .trim_start_matches("trace-")
            .to_string();
        let name = format!("{}-{}-{}", NAME, component, self.pods);
        let pod = deployment.spec.template.spec.clone().expect("pod spec");
        let container = &pod.containers[0];
        assert_eq!(
            container.command.as_deref(),
            Some(&["streamjob-worker".to_string()][..])
        );
        let yaml = config_map
            .data
            .as_ref()
            .and_then(|d| d.get(CONFIG_KEY))
            .expect("job.yaml in the ConfigMap");
        let mut config =
            JobConfig::from_yaml(yaml).expect("the worker accepts the rendered config");
        // The volume the Deployment mounts at the state directory is the PVC.
        if config.checkpoint.dir == Path::new(STATE_DIR) {
            let mounts_pvc = pod.volumes.iter().flatten().any(|v| {
                v.persistent_volume_claim
                    .as_ref()
                    .is_some_and(|c| c.claim_name == "trace-savepoints")
            });
            if mounts_pvc {
                config.checkpoint.dir = self.volume.clone();
            }
        }
        // The API token Secret volume: a file with what the Secret holds.
        let mounts_token = pod.volumes.iter().flatten().any(|v| {
            v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some("trace-api-token")
        });
        if config.jobmanager.api_token_file.is_some() && mounts_token {
            let file = self.dir.join(format!("{name}-api-token"));
            let token = self
                .api_token
                .clone()
                .expect("the API token Secret exists before its pod");
            std::fs::write(&file, token).expect("token file written");
            config.jobmanager.api_token_file = Some(file);
        }
        // Cluster DNS and pod IPs: the Service name becomes the jobmanager's local port.
        config.jobmanager.bind = format!("127.0.0.1:{}", self.jm_port);
        config.jobmanager.url = self.jobmanager_url();
        config.metrics.bind = "127.0.0.1:0".into();
        config.jobmanager.heartbeat_interval = Duration::from_millis(300);
        config.jobmanager.heartbeat_timeout = Duration::from_secs(3);
        let config_path = self.dir.join(format!("{name}.yaml"));
        std::fs::write(&config_path, config.to_yaml().expect("yaml")).expect("config written");
        let mounted = format!("{CONFIG_DIR}/{CONFIG_KEY}");
        let args: Vec<String> = container
            .args
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|a| {
                if a == mounted {
                    config_path.display().to_string()
                } else {
                    a
                }
            })
            .collect();
        let env: Vec<(String, String)> = container
            .env
            .iter()
            .flatten()
            .filter_map(|e| {
                let value = match (
                    &e.value,
                    e.value_from.as_ref().and_then(|v| v.field_ref.as_ref()),
                ) {
                    (Some(v), _) => v.clone(),
                    (None, Some(field)) if field.field_path == "metadata.name" => name.clone(),
                    (None, Some(field)) if field.field_path == "metadata.namespace" => NS.into(),
                    _ => return None,
                };
                Some((e.name.clone(), value))
            })
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let worker = Worker::start_with_env(&args, &env, &self.dir.join(format!("{name}.log")));
        Pod {
            name,
            template: template_key(deployment),
            worker,
        }
    }

    fn stop(pod: &mut Pod) {
        pod.worker.terminate(Duration::from_secs(30));
    }

    /// Reconciles processes with the applied Deployments (jobmanager: Recreate; taskmanagers:
    /// old template pods replaced, then scaled).
    fn sync(
        &mut self,
        jobmanager: Option<&Deployment>,
        taskmanager: Option<&Deployment>,
        config_map: Option<&ConfigMap>,
    ) {
        let (Some(jm), Some(tm), Some(cm)) = (jobmanager, taskmanager, config_map) else {
            return;
        };
        let jm_replicas = jm.spec.replicas.unwrap_or(1);
        if let Some(pod) = self.jobmanager.as_mut() {
            if pod.template != template_key(jm) || jm_replicas == 0 || !pod.worker.is_running() {
                Self::stop(pod);
                self.jobmanager = None;
            }
        }
        if self.jobmanager.is_none() && jm_replicas > 0 {
            let pod = self.start(jm, cm);
            self.jobmanager = Some(pod);
            self.jobmanager_starts += 1;
        }
        let tm_template = template_key(tm);
        let mut kept = Vec::new();
        for mut pod in std::mem::take(&mut self.taskmanagers) {
            if pod.template == tm_template && pod.worker.is_running() {
                kept.push(pod);
            } else {
                Self::stop(&mut pod);
            }
        }
        self.taskmanagers = kept;
        let want = usize::try_from(tm.spec.replicas.unwrap_or(1)).unwrap_or(0);
        while self.taskmanagers.len() > want {
            if let Some(mut pod) = self.taskmanagers.pop() {
                Self::stop(&mut pod);
            }
        }
        while self.taskmanagers.len() < want {
            let pod = self.start(tm, cm);
            self.taskmanagers.push(pod);
        }
    }

    /// Deployment status as the Deployment controller would report it.
    fn status(&mut self, deployment: &Deployment, jobmanager: bool) -> DeploymentStatus {
        let template = template_key(deployment);
        let jm_addr = format!("127.0.0.1:{}", self.jm_port);
        let pods: Vec<&mut Pod> = if jobmanager {
            self.jobmanager.iter_mut().collect()
        } else {
            self.taskmanagers.iter_mut().collect()
        };
        let replicas = i32::try_from(pods.len()).unwrap_or(0);
        let mut updated = 0;
        let mut ready = 0;
        for pod in pods {
            if pod.template == template {
                updated += 1;
            }
            let alive = pod.worker.is_running();
            let healthy = !jobmanager || http_get(&jm_addr, "/healthz").is_some();
            if alive && healthy {
                ready += 1;
            }
        }
        DeploymentStatus {
            observed_generation: deployment.metadata.generation,
            replicas: Some(replicas),
            updated_replicas: Some(updated),
            ready_replicas: Some(ready),
            available_replicas: Some(ready),
            ..DeploymentStatus::default()
        }
    }

    fn stop_all(&mut self) {
        for mut pod in self.taskmanagers.drain(..) {
            Self::stop(&mut pod);
        }
        if let Some(mut pod) = self.jobmanager.take() {
            Self::stop(&mut pod);
        }
    }

    fn jobmanager_pid(&self) -> Option<u32> {
        self.jobmanager.as_ref().and_then(|p| p.worker.pid())
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for pod in self.jobmanager.iter().chain(self.taskmanagers.iter()) {
            out.push_str(&format!("--- {}\n{}\n", pod.name, pod.worker.log_tail(15)));
        }
        out
    }
}

/// The API server's objects.
struct Store {
    job: StreamJob,
    config_map: Option<ConfigMap>,
    jobmanager: Option<Deployment>,
    taskmanager: Option<Deployment>,
    pvc: Option<PersistentVolumeClaim>,
    api_token: Option<Secret>,
    events: Vec<String>,
}

fn apply_deployment(existing: Option<Deployment>, desired: &Deployment) -> Deployment {
    let mut next = desired.clone();
    let generation = existing
        .as_ref()
        .map(|e| e.metadata.generation.unwrap_or(1) + i64::from(e.spec != desired.spec))
        .unwrap_or(1);
    next.metadata.generation = Some(generation);
    next.status = existing.and_then(|e| e.status);
    next
}

struct Harness {
    store: Store,
    kubelet: Kubelet,
    client: JobManagerClient,
    redis: RedisServer,
    kafka: kafka::EmbeddedKafka,
    produced: Vec<Vec<u8>>,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn status(&self) -> StreamJobStatus {
        self.store.job.status.clone().unwrap_or_default()
    }

    fn observed(&mut self) -> Observed {
        let mut jm = self.store.jobmanager.clone();
        let mut tm = self.store.taskmanager.clone();
        if let Some(d) = jm.as_mut() {
            d.status = Some(self.kubelet.status(d, true));
        }
        if let Some(d) = tm.as_mut() {
            d.status = Some(self.kubelet.status(d, false));
        }
        self.store.jobmanager.clone_from(&jm);
        self.store.taskmanager.clone_from(&tm);
        Observed {
            jobmanager: jm,
            taskmanager: tm,
            savepoint_pvc: self.store.pvc.clone(),
            pods: Vec::new(),
            // As the reconciler does: the Secret's token, else a fresh one.
            api_token: Some(
                self.store
                    .api_token
                    .as_ref()
                    .and_then(children::api_token_of)
                    .unwrap_or_else(jm::generate_api_token),
            ),
        }
    }

    /// One reconcile, in the reconciler's order.
    async fn reconcile(&mut self) {
        let observed = self.observed();
        let now = Timestamp::now();
        self.client.set_token(NS, NAME, observed.api_token.clone());
        let queries = lifecycle::queries(&self.store.job, &observed);
        let report = jm::observe(&self.client, NS, NAME, &queries, now).await;
        let plan = planner::plan(PlanInput {
            job: &self.store.job,
            observed: &observed,
            jobmanager: report.as_ref(),
            now,
        })
        .expect("plans");
        for Action::Publish(note) in &plan.actions {
            self.store.events.push(note.reason.clone());
        }
        if self.status().current_operation != plan.status.current_operation {
            self.store.job.status = Some(plan.status.clone());
        }
        if plan.apply_workloads {
            self.store.config_map = Some(plan.children.config_map.clone());
        }
        self.store.pvc = Some(plan.children.savepoint_pvc.clone());
        if let Some(secret) = &plan.children.api_token {
            self.store.api_token = Some(secret.clone());
            self.kubelet.api_token = children::api_token_of(secret);
        }
        if plan.apply_workloads {
            self.store.jobmanager = Some(apply_deployment(
                self.store.jobmanager.take(),
                &plan.children.jobmanager,
            ));
            self.store.taskmanager = Some(apply_deployment(
                self.store.taskmanager.take(),
                &plan.children.taskmanager,
            ));
        }
        let mut status = plan.status.clone();
        for action in &plan.jobmanager_actions {
            let outcome = jm::execute(&self.client, NS, NAME, action).await;
            let (next, events) =
                lifecycle::after_action(&self.store.job, &status, &outcome, Timestamp::now());
            self.store
                .events
                .extend(events.into_iter().map(|e| e.reason));
            status = next;
        }
        self.store.job.status = Some(status);
        let store = &self.store;
        self.kubelet.sync(
            store.jobmanager.as_ref(),
            store.taskmanager.as_ref(),
            store.config_map.as_ref(),
        );
    }

    async fn until(&mut self, what: &str, timeout: Duration, done: impl Fn(&Harness) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            self.reconcile().await;
            if done(self) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not reached in {timeout:?}\nstatus: {:#?}\nevents: {:?}\nlogs:\n{}",
                self.status(),
                self.store.events,
                self.kubelet.logs()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn edit(&mut self, change: impl FnOnce(&mut StreamJob)) {
        change(&mut self.store.job);
        let generation = self.store.job.metadata.generation.unwrap_or(1) + 1;
        self.store.job.metadata.generation = Some(generation);
    }

    fn produce(&mut self, seed: u64, n: usize) {
        let payloads = data_set(seed, n);
        kafka::produce(
            self.kafka.bootstrap_servers(),
            TOPIC,
            PARTITIONS,
            &payloads,
            ProduceMode::Batched,
        )
        .expect("produced");
        self.produced.extend(payloads);
    }

    fn applied(&self) -> i64 {
        fence_offsets(&self.redis.url(), "", NAME, TOPIC, PARTITIONS)
            .expect("fences")
            .iter()
            .map(|f| f.unwrap_or(0))
            .sum()
    }

    async fn wait_applied(&mut self, timeout: Duration) {
        let total = i64::try_from(self.produced.len()).unwrap_or(0);
        let deadline = Instant::now() + timeout;
        loop {
            let applied = self.applied();
            assert!(
                applied <= total,
                "fences past the data set: {applied} > {total}"
            );
            if applied == total {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {applied} of {total} applied; logs:\n{}",
                self.kubelet.logs()
            );
            // Keep reconciling: status (progress, health) stays current meanwhile.
            self.reconcile().await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn ready(&self) -> bool {
        self.status()
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    }
}

fn stream_job(brokers: &str, redis: &str) -> StreamJob {
    let yaml = format!(
        r#"apiVersion: streaming.austin.dev/v1alpha1
kind: StreamJob
metadata:
  name: {NAME}
  namespace: {NS}
  uid: 7c8e7f3a-0000-4000-8000-00000000e2e0
  generation: 1
spec:
  image: streamjob-worker:e2e
  replicas: 2
  kafka:
    brokers: "{brokers}"
    topic: {TOPIC}
    dlqTopic: {DLQ}
    properties:
      fetch.wait.max.ms: "10"
  redis:
    url: "{redis}"
  batch:
    maxEvents: 500
    linger: 20ms
  checkpoint:
    interval: 1s
  savepoint:
    timeout: 60s
"#
    );
    serde_yaml::from_str(&yaml).expect("a StreamJob")
}

#[tokio::test]
async fn heavy_upgrade_rescale_suspend_resume_and_delete_with_real_processes() {
    let dir = tempfile::Builder::new()
        .prefix("streamjob-lifecycle-")
        .tempdir()
        .expect("tempdir");
    let redis = RedisServer::start().expect("redis-server");
    let kafka = kafka::start_mock(TOPIC, PARTITIONS, DLQ);
    let job = stream_job(kafka.bootstrap_servers(), &redis.url());
    let kubelet = Kubelet::new(dir.path());
    let client = JobManagerClient::new(
        BaseUrl::Fixed(kubelet.jobmanager_url()),
        Duration::from_secs(3),
    );
    let mut h = Harness {
        store: Store {
            job,
            config_map: None,
            jobmanager: None,
            taskmanager: None,
            pvc: None,
            api_token: None,
            events: Vec::new(),
        },
        kubelet,
        client,
        redis,
        kafka,
        produced: Vec::new(),
        _dir: dir,
    };

    // Create: the job runs and applies what is in the topic.
    h.produce(1, 10_000);
    h.until("running", Duration::from_secs(60), |h| {
        h.status().phase == Phase::Running && h.ready()
    })
    .await;
    h.wait_applied(Duration::from_secs(60)).await;
    assert_eq!(h.kubelet.taskmanagers.len(), 2);

    // Upgrade (a config change) in savepoint mode: stop with a savepoint, roll out from it.
    let first_jm = h.kubelet.jobmanager_pid();
    h.edit(|j| j.spec.batch.max_events = 400);
    h.produce(2, 10_000);
    h.until("upgraded", Duration::from_secs(90), |h| {
        let s = h.status();
        s.current_operation.is_none()
            && s.last_savepoint
                .as_ref()
                .is_some_and(|sp| sp.trigger == SavepointTrigger::Upgrade)
            && h.ready()
    })
    .await;
    let status = h.status();
    let upgrade_savepoint = status.last_savepoint.clone().expect("upgrade savepoint");
    assert!(
        Path::new(&upgrade_savepoint.path).starts_with(&h.kubelet.volume),
        "{upgrade_savepoint:?}"
    );
    assert!(Path::new(&upgrade_savepoint.path).exists());
    assert_ne!(h.kubelet.jobmanager_pid(), first_jm, "a new jobmanager");
    let restored = status
        .job
        .as_ref()
        .and_then(|j| j.restored_from.clone())
        .unwrap_or_default();
    assert!(
        restored.contains(&upgrade_savepoint.path),
        "restored from {restored}"
    );
    for reason in ["UpgradeStarted", "SavepointCompleted", "UpgradeCompleted"] {
        assert!(
            h.store.events.contains(&reason.to_string()),
            "{reason}: {:?}",
            h.store.events
        );
    }
    h.wait_applied(Duration::from_secs(60)).await;

    // Rescale: only the taskmanagers change; the jobmanager keeps running and rebalances.
    let jm_before = h.kubelet.jobmanager_pid();
    let starts = h.kubelet.jobmanager_starts;
    h.edit(|j| j.spec.replicas = 3);
    h.until("rescaled", Duration::from_secs(60), |h| {
        h.status().job.as_ref().and_then(|j| j.taskmanagers) == Some(3) && h.ready()
    })
    .await;
    assert_eq!(
        h.status().current_operation,
        None,
        "a rescale is no operation"
    );
    assert_eq!(h.kubelet.jobmanager_pid(), jm_before);
    assert_eq!(h.kubelet.jobmanager_starts, starts);
    h.produce(3, 10_000);
    h.wait_applied(Duration::from_secs(60)).await;

    // Suspend: savepoint, then nothing runs; the volume stays.
    h.edit(|j| j.spec.state = JobState::Suspended);
    h.until("suspended", Duration::from_secs(60), |h| {
        h.status().phase == Phase::Suspended
    })
    .await;
    assert!(h.kubelet.jobmanager.is_none() && h.kubelet.taskmanagers.is_empty());
    let suspend_savepoint = h
        .status()
        .last_savepoint
        .clone()
        .expect("suspend savepoint");
    assert_eq!(suspend_savepoint.trigger, SavepointTrigger::Suspend);
    // Events keep arriving while suspended: nothing consumes them.
    let before = h.applied();
    h.produce(4, 10_000);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.applied(), before);

    // Resume: restores the suspend savepoint and catches up.
    h.edit(|j| j.spec.state = JobState::Running);
    h.until("resumed", Duration::from_secs(60), |h| {
        h.status().current_operation.is_none() && h.status().phase == Phase::Running && h.ready()
    })
    .await;
    let restored = h
        .status()
        .job
        .and_then(|j| j.restored_from)
        .unwrap_or_default();
    assert!(
        restored.contains(&suspend_savepoint.path),
        "restored from {restored}"
    );
    h.wait_applied(Duration::from_secs(60)).await;

    // Delete: a final savepoint, then release; the kept PVC names it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let observed = h.observed();
        let now = Timestamp::now();
        let queries = lifecycle::queries(&h.store.job, &observed);
        let report = jm::observe(&h.client, NS, NAME, &queries, now).await;
        let plan = planner::plan_cleanup(PlanInput {
            job: &h.store.job,
            observed: &observed,
            jobmanager: report.as_ref(),
            now,
        })
        .expect("plans cleanup");
        h.store.events.extend(
            plan.actions
                .iter()
                .map(|Action::Publish(n)| n.reason.clone()),
        );
        if let Some(pvc) = plan.savepoint_pvc.clone() {
            h.store.pvc = Some(pvc);
        }
        if plan.done {
            break;
        }
        let mut status = plan.status.clone();
        for action in &plan.jobmanager_actions {
            let outcome = jm::execute(&h.client, NS, NAME, action).await;
            status = lifecycle::after_action(&h.store.job, &status, &outcome, Timestamp::now()).0;
        }
        h.store.job.status = Some(status);
        assert!(
            Instant::now() < deadline,
            "deletion did not finish: {:#?}",
            h.status()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        h.store.events.contains(&"FinalSavepoint".to_string()),
        "{:?}",
        h.store.events
    );
    // Garbage collection takes the Deployments (and their pods) with the StreamJob.
    h.kubelet.stop_all();
    let annotations: BTreeMap<String, String> = h
        .store
        .pvc
        .as_ref()
        .and_then(|p| p.metadata.annotations.clone())
        .unwrap_or_default();
    let final_savepoint = annotations
        .get(LATEST_SAVEPOINT_ANNOTATION)
        .cloned()
        .expect("the kept PVC names the final savepoint");
    assert_ne!(final_savepoint, suspend_savepoint.path);
    assert!(Path::new(&final_savepoint).exists(), "{final_savepoint}");

    // Every event exactly once, across two jobmanager restarts, a rescale and a suspension.
    let expected = Expected::from_payloads("", h.produced.iter().map(Vec::as_slice));
    let actual = TraceState::read(&h.redis.url()).expect("redis readable");
    let diff = expected.state.diff(&actual, 10);
    assert!(diff.is_empty(), "redis differs:\n{}", diff.join("\n"));
    assert_eq!(actual.list_values(), expected.state.list_values());
    assert_eq!(h.applied(), i64::try_from(h.produced.len()).unwrap_or(0));
}
