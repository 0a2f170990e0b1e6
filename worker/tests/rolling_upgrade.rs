//! Rolling upgrades in real processes (issue #26): taskmanagers of a new template join, take
//! their share through the fenced revoke → flush → claim handoff, and the old ones leave, while
//! the job keeps processing. The test plays the Deployment (`maxSurge 1`, `maxUnavailable 0`):
//! it starts a new-template taskmanager, waits for its `/readyz`, SIGTERMs one old taskmanager,
//! waits for its exit, and repeats. Every test ends by comparing the whole Redis state with the
//! data set: nothing lost, nothing doubled.

mod jobmanager_support;

use std::time::Duration;

use jobmanager_support::Cluster;
use streamjob_worker::api::PartitionState;

const SETTLE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_200_only_once_the_taskmanager_holds_its_share() {
    let mut c = Cluster::start(4, "1s");
    // No jobmanager yet: not registered.
    let first = c.start_taskmanager_with("tm-1", &[]);
    let answer = loop {
        if let Some(answer) = c.readyz(&first).await {
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
