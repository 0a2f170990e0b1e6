//! From the jobmanager's counters to samples (`planner::autoscaler::history`), and what of an
//! evaluation is worth a status write (`planner::autoscaler::job`).

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use streamjob_operator::crd::StreamJobStatus;
use streamjob_operator::crd::{AutoscalerSpec, AutoscalerState, AutoscalerStatus, JobProgress};
use streamjob_operator::planner::autoscaler::history::{between, sample_interval, History};
use streamjob_operator::planner::autoscaler::job::{settle, throttle_progress};
use streamjob_operator::planner::autoscaler::Settings;
use streamjob_worker::api::{
    AutoscalerMetrics, JobState, PartitionOffsets, TaskManagerLoad, TaskManagerMetrics,
};

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(1_000_000 + secs).expect("valid time")
}

fn load(elapsed_s: u64, busy_s: u64, retries: u64, p99_ms: f64) -> Option<TaskManagerLoad> {
    Some(TaskManagerLoad {
        elapsed_ms: elapsed_s * 1_000,
        busy_ms: busy_s * 1_000,
        processed_events: 0,
        redis_applies: 0,
        redis_retries: retries,
        redis_apply_p99_ms: p99_ms,
    })
}

fn read(
    secs: i64,
    tms: Vec<(&str, Option<TaskManagerLoad>)>,
    offsets: &[(i64, i64)],
) -> AutoscalerMetrics {
    AutoscalerMetrics {
        job_id: "trace".into(),
        state: JobState::Running,
        at_ms: at(secs).as_millisecond(),
        partition_count: Some(offsets.len() as u32),
        taskmanagers: tms
            .into_iter()
            .map(|(id, load)| TaskManagerMetrics {
                id: id.into(),
                load,
            })
            .collect(),
        partitions: offsets
            .iter()
            .enumerate()
            .map(|(p, (hw, committed))| PartitionOffsets {
                partition: p as i32,
                high_watermark: Some(*hw),
                committed_offset: Some(*committed),
            })
            .collect(),
    }
}

#[test]
fn a_sample_is_the_difference_of_two_reads() {
    let before = read(
        0,
        vec![("a", load(100, 50, 2, 4.0)), ("b", load(100, 10, 0, 1.0))],
        &[(1_000, 900), (2_000, 2_000)],
    );
    let after = read(
        10,
        vec![
            // a: 8 s busy of 10; b restarted (its counters went back): its whole life counts;
            // c is new; d reports no load yet.
            ("a", load(110, 58, 7, 9.0)),
            ("b", load(4, 1, 1, 2.0)),
            ("c", load(10, 5, 0, 30.0)),
            ("d", None),
        ],
        &[(1_500, 1_300), (2_100, 2_100)],
    );
    let sample = between(&before, &after, at(10)).expect("a sample");
    assert_eq!(sample.at, at(10));
    assert_eq!(sample.taskmanager_busy, vec![0.8, 0.25, 0.5, 0.0]);
    assert_eq!(sample.input(), 60.0, "(500 + 100) records in 10 s");
    assert_eq!(sample.processed(), 50.0, "(400 + 100) records in 10 s");
    assert_eq!(sample.lag(), 200.0);
    assert_eq!(
        sample.redis.apply_latency_p99,
        Duration::from_millis(30),
        "the worst p99"
    );
    assert_eq!(
        sample.redis.retries_per_second, 0.6,
        "(5 + 1 + 0) retries in 10 s"
    );
    // No time between the reads, or a job not running: no sample.
    assert_eq!(between(&after, &after, at(10)), None);
    let mut stopping = after.clone();
    stopping.state = JobState::Stopping;
    assert_eq!(between(&before, &stopping, at(10)), None);
}

#[test]
fn the_ring_keeps_one_window_and_reads_are_due_at_the_interval() {
    let settings = Settings::from_spec(&AutoscalerSpec::default()).expect("defaults are valid");
    assert_eq!(
        sample_interval(&settings),
        Duration::from_secs(15),
        "2m / 8"
    );
    let window = Duration::from_secs(120);
    let mut history = History::default();
    assert!(history.due(at(0), Duration::from_secs(15)));
    for k in 0..=20 {
        let t = k * 15;
        let offsets = [(t * 100, t * 90)];
        history.record(
            read(t, vec![("a", load(t as u64, 0, 0, 1.0))], &offsets),
            at(t),
            window,
        );
    }
    let samples = history.samples();
    assert_eq!(samples.len(), 9, "samples at 180..=300 s: one window");
    assert_eq!(samples.first().map(|s| s.at), Some(at(180)));
    assert_eq!(history.newest().map(|s| s.at), Some(at(300)));
    assert!(!history.due(at(305), Duration::from_secs(15)));
    assert!(
        history.due(at(314), Duration::from_secs(15)),
        "within a tenth"
    );
}

fn status(state: AutoscalerState, reason: &str, recommendation: i32) -> AutoscalerStatus {
    AutoscalerStatus {
        state,
        reason: reason.into(),
        recommendation: Some(recommendation),
        desired: Some(3),
        ..AutoscalerStatus::default()
    }
}

#[test]
fn only_a_change_beyond_the_reasons_figures_is_written() {
    let stored = status(AutoscalerState::Stable, "steady at 3: busy 0.61", 3);
    let figures = status(AutoscalerState::Stable, "steady at 3: busy 0.64", 3);
    assert_eq!(settle(Some(&stored), figures), stored);
    let recommends = status(AutoscalerState::Stable, "steady at 3: busy 0.69", 4);
    assert_eq!(settle(Some(&stored), recommends.clone()), recommends);
    let moved = status(AutoscalerState::Stabilizing, "holding 3", 4);
    assert_eq!(settle(Some(&stored), moved.clone()), moved);
    assert_eq!(settle(None, stored.clone()), stored);
}

#[test]
fn progress_alone_is_written_at_the_idle_cadence_not_every_sample() {
    let progress = |secs: i64, lag: i64| JobProgress {
        lag: Some(lag),
        observed_at: Some(Time(at(secs))),
        ..JobProgress::default()
    };
    let stored = StreamJobStatus {
        job: Some(progress(0, 10)),
        ..StreamJobStatus::default()
    };
    let mut next = StreamJobStatus {
        job: Some(progress(15, 12)),
        ..StreamJobStatus::default()
    };
    throttle_progress(Some(&stored), &mut next, at(15));
    assert_eq!(next, stored, "fresh progress, nothing else changed: kept");
    let mut old = StreamJobStatus {
        job: Some(progress(301, 12)),
        ..StreamJobStatus::default()
    };
    throttle_progress(Some(&stored), &mut old, at(301));
    assert_eq!(
        old.job,
        Some(progress(301, 12)),
        "older than 5 minutes: written"
    );
    let mut more = StreamJobStatus {
        job: Some(progress(15, 12)),
        ready_replicas: 2,
        ..StreamJobStatus::default()
    };
    throttle_progress(Some(&stored), &mut more, at(15));
    assert_eq!(
        more.job,
        Some(progress(15, 12)),
        "written with another change"
    );
}
