//! The distributed job in real processes: one `streamjob-worker jobmanager`, N
//! `streamjob-worker taskmanager`, a real redis-server and a real Kafka-protocol broker. Every
//! test ends by comparing the whole Redis state with the data set: nothing lost, nothing doubled.

mod jobmanager_support;

use std::collections::BTreeMap;
use std::time::Duration;

use jobmanager_support::{data_set, Cluster, Proxy, JOB};
use streamjob_worker::api::{JobState, OperationStatus, RestoreSource};

const SETTLE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_rescale_one_three_two_one_taskmanagers_is_exact() {
    let payloads = data_set(11, 200_000);
    let chunks: Vec<Vec<Vec<u8>>> = payloads.chunks(50_000).map(<[Vec<u8>]>::to_vec).collect();
    let mut c = Cluster::start(6, "1s");
    c.start_jobmanager(&[]);
    c.start_taskmanager("tm-1");
    let producing = c.produce_in_background(chunks[0].clone());
    c.wait_balanced(&["tm-1"], SETTLE).await;
    producing.join().expect("producer");

    // Each rescale happens while the next chunk is being produced and consumed.
    let producing = c.produce_in_background(chunks[1].clone());
    c.start_taskmanager("tm-2");
    c.start_taskmanager("tm-3");
    let three = c.wait_balanced(&["tm-1", "tm-2", "tm-3"], SETTLE).await;
    assert!(
        three.taskmanagers.iter().all(|t| t.partitions.len() == 2),
        "{three:#?}"
    );
    producing.join().expect("producer");

    let producing = c.produce_in_background(chunks[2].clone());
    c.stop_taskmanager("tm-3");
    c.wait_balanced(&["tm-1", "tm-2"], SETTLE).await;
    producing.join().expect("producer");

    let producing = c.produce_in_background(chunks[3].clone());
    c.stop_taskmanager("tm-2");
    c.wait_balanced(&["tm-1"], SETTLE).await;
    producing.join().expect("producer");

    c.wait_applied(payloads.len() as i64, Duration::from_secs(120));
    c.assert_exact(&payloads);
    let overview = c.overview().await.expect("overview");
    assert_eq!(overview.unassigned_partitions, 0);
    assert!(
        overview.generation >= 6 + 4,
        "every move got a new generation: {}",
        overview.generation
    );
    c.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_sigkill_a_taskmanager_then_the_jobmanager_is_exact() {
    let payloads = data_set(12, 120_000);
    let chunks: Vec<Vec<Vec<u8>>> = payloads.chunks(40_000).map(<[Vec<u8>]>::to_vec).collect();
    let mut c = Cluster::start(4, "1s");
    c.start_jobmanager(&[]);
    c.start_taskmanager("tm-a");
    c.start_taskmanager("tm-b");
    let producing = c.produce_in_background(chunks[0].clone());
    c.wait_balanced(&["tm-a", "tm-b"], SETTLE).await;
    producing.join().expect("producer");

    // A crashed taskmanager: its partitions move after the heartbeat timeout.
    let producing = c.produce_in_background(chunks[1].clone());
    c.kill_taskmanager("tm-b");
    c.wait_balanced(&["tm-a"], SETTLE).await;
    producing.join().expect("producer");

    // A crashed jobmanager: taskmanagers keep processing, re-register with the new one, which
    // restores the newest checkpoint and adopts what they hold.
    let producing = c.produce_in_background(chunks[2].clone());
    c.start_taskmanager("tm-c");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.kill_jobmanager();
    let applied_before = c.applied();
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.start_jobmanager(&[]);
    let overview = c.wait_balanced(&["tm-a", "tm-c"], SETTLE).await;
    assert!(
        matches!(overview.restored_from, RestoreSource::Checkpoint { .. }),
        "{:?}",
        overview.restored_from
    );
    producing.join().expect("producer");

    c.wait_applied(payloads.len() as i64, Duration::from_secs(120));
    assert!(c.applied() >= applied_before);
    c.assert_exact(&payloads);
    c.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_stop_with_savepoint_then_restore_with_more_taskmanagers_continues_exactly() {
    let payloads = data_set(13, 100_000);
    let (first, second) = payloads.split_at(60_000);
    let mut c = Cluster::start(4, "1s");
    c.start_jobmanager(&[]);
    c.start_taskmanager("tm-a");
    c.start_taskmanager("tm-b");
    let producing = c.produce_in_background(first.to_vec());
    c.wait_balanced(&["tm-a", "tm-b"], SETTLE).await;
    while c.applied() < 10_000 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let stopped = c.trigger(&format!("/jobs/{JOB}/stop"), "{}").await;
    assert_eq!(
        stopped.status,
        OperationStatus::Completed,
        "{stopped:?}\n{}",
        c.log_tails()
    );
    let location = stopped.location.expect("savepoint path");
    let overview = c.overview().await.expect("overview");
    assert_eq!(overview.state, JobState::Finished);
    // The savepoint holds exactly what is in Redis, and nothing is consumed after the stop.
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&location).expect("savepoint file")).expect("json");
    let offsets: BTreeMap<i64, i64> = saved["offsets"]
        .as_array()
        .expect("offsets")
        .iter()
        .map(|o| {
            (
                o["partition"].as_i64().expect("partition"),
                o["offset"].as_i64().expect("offset"),
            )
        })
        .collect();
    let fences = c.fences();
    for (p, fence) in fences.iter().enumerate() {
        assert_eq!(
            offsets.get(&(p as i64)).copied(),
            *fence,
            "partition {p}: savepoint {offsets:?} vs fences {fences:?}"
        );
    }
    let applied_at_stop = c.applied();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        c.applied(),
        applied_at_stop,
        "consumed after stop-with-savepoint"
    );
    producing.join().expect("producer");
    c.stop_all();

    let producing = c.produce_in_background(second.to_vec());
    c.start_jobmanager(&["--from-savepoint", &location]);
    for id in ["tm-x", "tm-y", "tm-z"] {
        c.start_taskmanager(id);
    }
    let overview = c.wait_balanced(&["tm-x", "tm-y", "tm-z"], SETTLE).await;
    assert!(
        matches!(overview.restored_from, RestoreSource::Savepoint { .. }),
        "{:?}",
        overview.restored_from
    );
    producing.join().expect("producer");
    c.wait_applied(payloads.len() as i64, Duration::from_secs(120));
    c.assert_exact(&payloads);
    c.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_taskmanager_cut_off_from_the_jobmanager_is_fenced_in_redis() {
    let payloads = data_set(14, 120_000);
    let chunks: Vec<Vec<Vec<u8>>> = payloads.chunks(40_000).map(<[Vec<u8>]>::to_vec).collect();
    let mut c = Cluster::start(4, "1s");
    let proxy = Proxy::start(c.port).await;
    c.start_jobmanager(&[]);
    c.start_taskmanager("tm-a");
    c.start_taskmanager_via("tm-z", &proxy.url());
    let producing = c.produce_in_background(chunks[0].clone());
    c.wait_balanced(&["tm-a", "tm-z"], SETTLE).await;
    producing.join().expect("producer");

    // tm-z loses the jobmanager but keeps consuming: the jobmanager times it out and hands its
    // partitions to tm-a, whose claim bumps the fence epochs; the data produced after that
    // reaches both, and tm-z's writes of it are refused.
    proxy.cut();
    c.wait_balanced(&["tm-a"], SETTLE).await;
    let producing = c.produce_in_background(chunks[1].clone());
    producing.join().expect("producer");
    c.wait_applied(80_000, Duration::from_secs(60));
    assert!(
        c.is_running("tm-z"),
        "the cut-off taskmanager is still alive (a zombie)"
    );
    let zombie_log = c.log_of("tm-z");
    assert!(
        zombie_log.contains("fenced by a newer owner"),
        "tm-z kept consuming its old partitions and must have been refused by the fence:\n{}",
        c.log_tails()
    );

    // Reconnected, it registers again and gets its share back.
    proxy.heal();
    let producing = c.produce_in_background(chunks[2].clone());
    c.wait_balanced(&["tm-a", "tm-z"], SETTLE).await;
    producing.join().expect("producer");
    c.wait_applied(payloads.len() as i64, Duration::from_secs(120));
    c.assert_exact(&payloads);
    c.stop_all();
}
