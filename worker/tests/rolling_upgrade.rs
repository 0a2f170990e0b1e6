//! Rolling upgrades in real processes (issue #26): taskmanagers of a new template join, take
//! their share through the fenced revoke → flush → claim handoff, and the old ones leave, while
//! the job keeps processing. The test plays the Deployment (`maxSurge 1`, `maxUnavailable 0`):
//! it starts a new-template taskmanager, waits for its `/readyz`, SIGTERMs one old taskmanager,
//! waits for its exit, and repeats. Every test ends by comparing the whole Redis state with the
//! data set: nothing lost, nothing doubled.

mod jobmanager_support;

use std::collections::BTreeMap;
use std::time::Duration;

use jobmanager_support::{data_set, Cluster};
use streamjob_worker::api::{JobOverview, PartitionState};

const SETTLE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_200_only_once_the_taskmanager_holds_its_share() {
    let mut c = Cluster::start(4, "1s");
    // No jobmanager yet: not registered.
    let first = c.start_taskmanager_with("tm-1", &[]);
    let answer = loop {
        // `starting`: the process serves, its taskmanager is not up yet.
        if let Some(answer) = c.readyz(&first).await.filter(|a| !a.1.contains("starting")) {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(answer.0, 503, "{answer:?}");
    assert!(answer.1.contains("not registered"), "{answer:?}");

    c.start_jobmanager(&[]);
    c.wait_balanced(&["tm-1"], SETTLE).await;
    c.wait_ready(&first, SETTLE).await;

    // A second one is ready only once it runs its two partitions.
    let second = c.start_taskmanager_with("tm-2", &[]);
    c.wait_ready(&second, SETTLE).await;
    let metrics = c.metrics_text(&second).await.expect("metrics served");
    assert!(
        metrics.contains("streamjob_taskmanager_ready 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("streamjob_partitions_owned 2"),
        "ready means running its share: {metrics}"
    );
    c.wait_overview("tm-2 runs two partitions", SETTLE, |o| {
        o.partitions
            .iter()
            .filter(|p| p.owner.as_deref() == Some("tm-2") && p.state == PartitionState::Running)
            .count()
            == 2
    })
    .await;
    c.stop_all();
}

/// The config edit that sets `taskmanager.jobmanagerGrace`.
fn grace(duration: &str) -> (String, String) {
    (
        "metrics:\n".to_string(),
        format!("taskmanager:\n  jobmanagerGrace: {duration}\nmetrics:\n"),
    )
}

fn sample(metrics: &str, name: &str) -> f64 {
    streamjob_worker::metrics::sample(metrics, name, "").unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_past_the_grace_a_taskmanager_releases_its_partitions_and_rejoins_exactly() {
    let payloads = data_set(31, 40_000);
    let (first, rest) = payloads.split_at(20_000);
    let (second, third) = rest.split_at(10_000);
    let mut c = Cluster::start(4, "1s");
    let (from, to) = grace("3s");
    let tm = c.start_taskmanager_with("tm-1", &[(&from, &to)]);
    c.start_jobmanager(&[]);
    c.produce_in_background(first.to_vec())
        .join()
        .expect("producer");
    c.wait_balanced(&["tm-1"], SETTLE).await;
    c.wait_applied(first.len() as i64, SETTLE);

    // No jobmanager: the taskmanager keeps processing within the grace.
    c.kill_jobmanager();
    c.produce_in_background(second.to_vec())
        .join()
        .expect("producer");
    let total = (first.len() + second.len()) as i64;
    loop {
        let metrics = c.metrics_text(&tm).await.expect("metrics");
        if c.applied() >= total {
            assert_eq!(
                sample(&metrics, "streamjob_taskmanager_grace_releases_total"),
                0.0,
                "applied within the grace"
            );
            break;
        }
        assert_eq!(
            sample(&metrics, "streamjob_taskmanager_grace_releases_total"),
            0.0,
            "released before applying what arrived: {}",
            c.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.wait_applied(total, SETTLE);

    // Past the grace it releases everything, says so, and is not ready.
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        let metrics = c.metrics_text(&tm).await.expect("metrics");
        if sample(&metrics, "streamjob_taskmanager_grace_releases_total") == 1.0
            && sample(&metrics, "streamjob_partitions_owned") == 0.0
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never released past the grace: {metrics}\n{}",
            c.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, reason) = c.readyz(&tm).await.expect("readyz");
    assert_eq!(status, 503);
    assert!(reason.contains("longer than the 3s grace"), "{reason}");
    assert!(c.log_of("tm-1").contains("releasing every partition"));

    // A jobmanager again: it registers, takes the partitions back, the rest is applied once.
    let producing = c.produce_in_background(third.to_vec());
    c.start_jobmanager(&[]);
    c.wait_balanced(&["tm-1"], SETTLE).await;
    c.wait_ready(&tm, SETTLE).await;
    producing.join().expect("producer");
    c.wait_applied(payloads.len() as i64, Duration::from_secs(60));
    c.assert_exact(&payloads);
    c.stop_all();
}

/// Partition → (owner, generation) in an overview.
fn owners(o: &JobOverview) -> BTreeMap<i32, (Option<String>, Option<u64>)> {
    o.partitions
        .iter()
        .map(|p| (p.partition, (p.owner.clone(), p.generation)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_new_jobmanager_moves_nothing_and_assigns_above_every_earlier_generation() {
    let payloads = data_set(32, 60_000);
    let chunks: Vec<Vec<Vec<u8>>> = payloads.chunks(20_000).map(<[Vec<u8>]>::to_vec).collect();
    // No checkpoints: the new jobmanager knows generations only from the taskmanagers and the
    // fences.
    let mut c = Cluster::start(4, "0s");
    c.start_jobmanager(&[]);
    c.start_taskmanager("tm-a");
    c.produce_in_background(chunks[0].clone())
        .join()
        .expect("producer");
    c.wait_balanced(&["tm-a"], SETTLE).await;
    // tm-b's partitions carry the newest generations; it dies with the jobmanager, so only
    // their fences remember them.
    c.start_taskmanager("tm-b");
    let before = c.wait_balanced(&["tm-a", "tm-b"], SETTLE).await;
    let producing = c.produce_in_background(chunks[1].clone());
    while c.applied() < 25_000 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.kill_taskmanager("tm-b");
    c.kill_jobmanager();
    producing.join().expect("producer");
    tokio::time::sleep(Duration::from_millis(500)).await;

    let producing = c.produce_in_background(chunks[2].clone());
    c.start_jobmanager(&[]);
    let after = c.wait_balanced(&["tm-a"], SETTLE).await;
    producing.join().expect("producer");
    let (before, after) = (owners(&before), owners(&after));
    let newest_before = before
        .values()
        .filter_map(|(_, g)| *g)
        .max()
        .expect("generations");
    for (partition, (owner, generation)) in &before {
        if owner.as_deref() == Some("tm-a") {
            assert_eq!(
                after[partition],
                (owner.clone(), *generation),
                "partition {partition}: tm-a kept it through the jobmanager restart (no revoke)"
            );
        } else {
            let (new_owner, new_generation) = &after[partition];
            assert_eq!(new_owner.as_deref(), Some("tm-a"));
            assert!(
                new_generation.is_some_and(|g| g > newest_before),
                "partition {partition}: reassigned at {new_generation:?}, not above the \
                 generations before the restart (up to {newest_before}): {after:?}"
            );
        }
    }
    c.wait_applied(payloads.len() as i64, Duration::from_secs(60));
    c.assert_exact(&payloads);
    c.stop_all();
}

/// What goes wrong during a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// The jobmanager is SIGKILLed while the third new taskmanager starts, and started again.
    KillJobManager,
    /// The second old taskmanager is SIGKILLed instead of stopped.
    KillTaskManager,
}

/// The new template: a compatible config change.
const NEW_TEMPLATE: (&str, &str) = ("maxEvents: 500", "maxEvents: 400");

/// Four old taskmanagers replaced one by one under load, as a Deployment with `maxSurge 1`,
/// `maxUnavailable 0` does it; then the whole Redis state is compared with the data set.
async fn roll_four_taskmanagers(seed: u64, fault: Fault) {
    let payloads = data_set(seed, 60_000);
    let mut c = Cluster::start(8, "1s");
    c.start_jobmanager(&[]);
    let old: Vec<String> = (1..=4).map(|i| format!("old-{i}")).collect();
    let new: Vec<String> = (1..=4).map(|i| format!("new-{i}")).collect();
    for id in &old {
        c.start_taskmanager(id);
    }
    let ids: Vec<&str> = old.iter().map(String::as_str).collect();
    c.wait_balanced(&ids, SETTLE).await;
    let producing = c.produce_paced(payloads.clone(), 5_000);
    for (i, (old_id, new_id)) in old.iter().zip(&new).enumerate() {
        let kill_jobmanager = fault == Fault::KillJobManager && i == 2;
        if kill_jobmanager {
            c.kill_jobmanager();
        }
        let url = c.start_taskmanager_with(new_id, &[NEW_TEMPLATE]);
        if kill_jobmanager {
            tokio::time::sleep(Duration::from_millis(700)).await;
            c.start_jobmanager(&[]);
        }
        c.wait_ready(&url, SETTLE).await;
        let metrics = c.metrics_text(&url).await.expect("metrics");
        assert!(
            sample(&metrics, "streamjob_partitions_owned") >= 1.0,
            "{new_id} was ready before it took its share:\n{metrics}"
        );
        if fault == Fault::KillTaskManager && i == 1 {
            c.kill_taskmanager(old_id);
        } else {
            c.stop_taskmanager(old_id);
        }
    }
    let ids: Vec<&str> = new.iter().map(String::as_str).collect();
    c.wait_balanced(&ids, SETTLE).await;
    producing.join().expect("producer");
    c.wait_applied(payloads.len() as i64, Duration::from_secs(90));
    c.assert_exact(&payloads);
    c.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_rolling_upgrade_of_four_taskmanagers_under_load_is_exact() {
    roll_four_taskmanagers(41, Fault::None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_rolling_upgrade_survives_a_jobmanager_sigkill_and_is_exact() {
    roll_four_taskmanagers(42, Fault::KillJobManager).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_rolling_upgrade_survives_a_taskmanager_sigkill_and_is_exact() {
    roll_four_taskmanagers(43, Fault::KillTaskManager).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_new_taskmanager_that_cannot_take_partitions_stops_the_rollout_and_moves_nothing() {
    let payloads = data_set(44, 40_000);
    let mut c = Cluster::start(4, "1s");
    c.start_jobmanager(&[]);
    c.start_taskmanager("old-1");
    c.start_taskmanager("old-2");
    c.wait_balanced(&["old-1", "old-2"], SETTLE).await;
    let producing = c.produce_paced(payloads.clone(), 5_000);
    // Its broker is unreachable: it starts, serves /readyz, and must never get a partition.
    let brokers = c.kafka.bootstrap_servers().to_string();
    let url = c.start_taskmanager_with("new-1", &[(&brokers, "127.0.0.1:1"), NEW_TEMPLATE]);
    let mut blocked = 0;
    while blocked < 100 {
        // Longer than its registration retries and the jobmanager's assign timeout.
        let overview = c.overview().await.expect("overview");
        assert!(
            overview.taskmanagers.iter().all(|t| t.id != "new-1")
                && overview
                    .partitions
                    .iter()
                    .all(|p| p.owner.as_deref() != Some("new-1")),
            "a taskmanager that cannot take partitions was given some: {overview:#?}\n{}",
            c.log_tails()
        );
        if let Some((status, reason)) = c.readyz(&url).await {
            assert_eq!(status, 503, "{reason}");
            if reason.contains("cannot take partitions") {
                blocked += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    // The rollout stops here: the old ones keep everything and the state is exact.
    let overview = c.wait_balanced(&["old-1", "old-2"], SETTLE).await;
    assert_eq!(overview.unassigned_partitions, 0);
    producing.join().expect("producer");
    c.wait_applied(payloads.len() as i64, Duration::from_secs(60));
    c.assert_exact(&payloads);
    c.stop_all();
}
