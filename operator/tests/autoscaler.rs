//! The autoscaler's decision function, as a table: each row is one situation, said as a
//! sentence, with what the decision must be.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use streamjob_operator::crd::{
    AutoscalerMode, AutoscalerSpec, AutoscalerState, AutoscalerStatus, PendingScale, ScaleDirection,
};
use streamjob_operator::planner::autoscaler::{
    decide, effective_replicas, Decision, Input, PartitionLoad, RedisLoad, Sample, Settings,
    SettingsError,
};
use streamjob_operator::planner::EventSeverity;

/// 1,000,000 s after the epoch: "now" in every row.
const NOW: i64 = 1_000_000;

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(secs).expect("valid timestamp")
}

fn ago(secs: i64) -> Time {
    Time(at(NOW - secs))
}

/// The job's load at one sample.
#[derive(Clone, Copy)]
struct Load {
    taskmanagers: usize,
    busy: f64,
    input: f64,
    processed: f64,
    lag: f64,
    /// Lag growth, records/s (the lag `s` seconds before now is `lag - growth * s`).
    growth: f64,
    redis_p99_ms: u64,
    retries: f64,
}

/// `taskmanagers` busy at `busy`, each processing 5,000 events/s when fully busy, input equal
/// to what they process, no lag, Redis fast.
fn steady(taskmanagers: usize, busy: f64) -> Load {
    let processed = taskmanagers as f64 * busy * 5_000.0;
    Load {
        taskmanagers,
        busy,
        input: processed,
        processed,
        lag: 0.0,
        growth: 0.0,
        redis_p99_ms: 5,
        retries: 0.0,
    }
}

/// The same load with the lag at `lag` now, growing `growth`/s (the input is that much above
/// what is processed).
fn lagging(load: Load, lag: f64, growth: f64) -> Load {
    Load {
        lag,
        growth,
        input: load.processed + growth,
        ..load
    }
}

/// Samples every 15 s over the last `span` seconds, the newest `age` seconds old, on 24
/// partitions.
fn samples(load: Load, span: i64, age: i64) -> Vec<Sample> {
    let partitions = 24;
    (0..=span / 15)
        .rev()
        .map(|k| NOW - age - k * 15)
        .map(|t| {
            let lag = (load.lag - load.growth * (NOW - age - t) as f64).max(0.0);
            Sample {
                at: at(t),
                taskmanager_busy: vec![load.busy; load.taskmanagers],
                partitions: (0..partitions)
                    .map(|p| PartitionLoad {
                        partition: p,
                        input_per_second: load.input / f64::from(partitions),
                        processed_per_second: load.processed / f64::from(partitions),
                        lag: (lag / f64::from(partitions)) as u64,
                    })
                    .collect(),
                redis: RedisLoad {
                    apply_latency_p99: Duration::from_millis(load.redis_p99_ms),
                    retries_per_second: load.retries,
                },
            }
        })
        .collect()
}

fn settings(edit: impl FnOnce(&mut AutoscalerSpec)) -> Settings {
    let mut spec = AutoscalerSpec {
        enabled: true,
        ..AutoscalerSpec::default()
    };
    edit(&mut spec);
    Settings::from_spec(&spec).expect("valid settings")
}

fn pending(direction: ScaleDirection, since_secs_ago: i64, replicas: i32) -> AutoscalerStatus {
    AutoscalerStatus {
        pending: Some(PendingScale {
            direction,
            since: ago(since_secs_ago),
            replicas,
        }),
        ..AutoscalerStatus::default()
    }
}

/// One row of the table.
struct Row {
    says: &'static str,
    settings: Settings,
    metrics: Vec<Sample>,
    current: i32,
    partitions: i32,
    last: Option<AutoscalerStatus>,
    replicas: i32,
    state: AutoscalerState,
    reason: &'static [&'static str],
}

impl Row {
    fn decide(&self) -> Decision {
        decide(&Input {
            settings: &self.settings,
            metrics: &self.metrics,
            current_replicas: self.current,
            spec_replicas: 3,
            partitions: self.partitions,
            last: self.last.as_ref(),
            now: at(NOW),
        })
    }
}

/// 3 taskmanagers busy 0.92 with a lag of 600k growing 4k/s: 6 carry it at 0.70 (5 carry no more
/// than 4 on 24 partitions: ceil(24/5) = 5 partitions on the busiest).
fn hot() -> Load {
    lagging(steady(3, 0.92), 600_000.0, 4_000.0)
}

fn rows() -> Vec<Row> {
    let row = |says, metrics, current, last, replicas, state, reason| Row {
        says,
        settings: settings(|_| {}),
        metrics,
        current,
        partitions: 24,
        last,
        replicas,
        state,
        reason,
    };
    use AutoscalerState::*;
    vec![
        row("with no metrics at all, nothing is decided and the count stays",
            vec![], 3, None, 3, NoMetrics, &["no decision, staying at 3", "no metrics"]),
        row("when the jobmanager stopped answering 3 minutes ago (the job looked idle then), nothing is decided: no scale to the minimum",
            samples(steady(3, 0.0), 120, 180), 3, None, 3, NoMetrics, &["3m old"]),
        row("a new job with 45s of metrics gets no decision",
            samples(steady(3, 0.95), 45, 0), 3, None, 3, NoMetrics, &["45s of metrics", "1m needed"]),
        row("while the jobmanager still reports 2 taskmanagers and 3 run, nothing is decided",
            samples(steady(2, 0.95), 120, 0), 3, None, 3, NoMetrics, &["reports 2 taskmanagers, 3 expected"]),
        row("busy 0.60 without lag is inside the band: steady",
            samples(steady(3, 0.6), 120, 0), 3, None, 3, Stable, &["steady at 3", "busy 0.60"]),
        row("busy 0.92 with the lag growing, first seen now, waits out the scale-up stabilization",
            samples(hot(), 120, 0), 3, None, 3, Stabilizing, &["holding 3: wants 6", "0s of the 30s"]),
        row("busy 0.92 with a lag of 600k growing 4k/s for 30s: scaled 3→6",
            samples(hot(), 120, 0), 3, Some(pending(ScaleDirection::Up, 30, 6)), 6, Scaled,
            &["scaled 3→6: lag 600k growing 4.0k/s, busy 0.92, input 18k/s; 6 carry the input at 0.70 busy and clear the lag within 5m"]),
        row("the same load while Redis' p99 apply latency is 240ms: no scale-up, Redis named",
            samples(Load { redis_p99_ms: 240, ..hot() }, 120, 0), 3, Some(pending(ScaleDirection::Up, 30, 6)), 3, RedisBottleneck,
            &["holding 3: Redis is the bottleneck", "apply p99 240ms over the 100ms limit", "would need 6"]),
        row("the same load while Redis applies are retried 5 times a second: no scale-up either",
            samples(Load { retries: 5.0, ..hot() }, 120, 0), 3, Some(pending(ScaleDirection::Up, 30, 6)), 3, RedisBottleneck,
            &["5.0 retries/s"]),
        row("busy 0.20 for 9 minutes: the scale-down waits",
            samples(steady(6, 0.2), 120, 0), 6, Some(pending(ScaleDirection::Down, 540, 2)), 6, Stabilizing,
            &["could run with 2", "9m of the 10m"]),
        row("busy 0.20 for 10 minutes: scaled 6→2",
            samples(steady(6, 0.2), 120, 0), 6, Some(pending(ScaleDirection::Down, 600, 2)), 2, Scaled,
            &["scaled 6→2: no lag, busy 0.20", "busy below 0.50 for 10m"]),
        row("a scale-down goes to the highest count asked for during its stabilization",
            samples(steady(6, 0.2), 120, 0), 6, Some(pending(ScaleDirection::Down, 600, 4)), 4, Scaled,
            &["scaled 6→4"]),
        row("busy 0.20 for 10 minutes, but the last scale-down was 5 minutes ago: holding",
            samples(steady(6, 0.2), 120, 0), 6,
            Some(AutoscalerStatus { last_scale_down: Some(ago(300)), ..pending(ScaleDirection::Down, 600, 2) }), 6, Stabilizing,
            &["the last scale-down was 5m ago"]),
        row("an idle job (metrics say no input, no lag) for 10 minutes goes to the minimum",
            samples(steady(4, 0.0), 120, 0), 4, Some(pending(ScaleDirection::Down, 600, 1)), 1, Scaled,
            &["scaled 4→1"]),
        row("input and lag but nothing processed: stalled, not a capacity problem",
            samples(Load { input: 1_000.0, lag: 50_000.0, growth: 1_000.0, ..steady(3, 0.0) }, 120, 0), 3, None, 3, Stalled,
            &["nothing processed while lag is 50k", "not a capacity problem"]),
    ]
}

#[test]
fn the_decision_table() {
    let mut failures = Vec::new();
    for row in rows() {
        let decision = row.decide();
        let reason = &decision.status.reason;
        let ok = decision.replicas == row.replicas
            && decision.status.state == row.state
            && row.reason.iter().all(|part| reason.contains(part));
        if !ok {
            failures.push(format!(
                "{}:\n  expected {} taskmanagers, {:?}, reason with {:?}\n  got      {}, {:?}, {reason:?}",
                row.says, row.replicas, row.state, row.reason, decision.replicas, decision.status.state
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn max_replicas_above_the_partition_count_is_capped_and_the_reason_says_so() {
    let load = lagging(steady(3, 0.95), 2_000_000.0, 30_000.0);
    let row = Row {
        says: "needs far more than 12 on a 12-partition topic with maxReplicas 20",
        settings: settings(|s| s.max_replicas = 20),
        metrics: samples(load, 120, 0),
        current: 3,
        partitions: 12,
        last: Some(pending(ScaleDirection::Up, 30, 12)),
        replicas: 12,
        state: AutoscalerState::Scaled,
        reason: &[],
    };
    let decision = row.decide();
    assert_eq!(decision.replicas, 12, "{}: {decision:?}", row.says);
    assert!(
        decision
            .status
            .reason
            .contains("capped at 12: the topic has 12 partitions (maxReplicas 20 is above that)"),
        "{}",
        decision.status.reason
    );
}

#[test]
fn a_scale_publishes_one_event_and_records_when() {
    let row = &rows()[6];
    let decision = row.decide();
    let event = decision.event.expect("an Event on a scale");
    assert_eq!(event.severity, EventSeverity::Normal);
    assert_eq!(event.reason, "Autoscaled");
    assert_eq!(event.message, decision.status.reason);
    assert_eq!(decision.status.desired, Some(6));
    assert_eq!(decision.status.last_decision, Some(Time(at(NOW))));
    assert_eq!(decision.status.last_scale_up, Some(Time(at(NOW))));
    assert_eq!(decision.status.pending, None);
}

#[test]
fn redis_as_the_bottleneck_is_warned_about_once_not_every_evaluation() {
    let settings = settings(|_| {});
    let metrics = samples(
        Load {
            redis_p99_ms: 240,
            ..hot()
        },
        120,
        0,
    );
    let input = |last| Input {
        settings: &settings,
        metrics: &metrics,
        current_replicas: 3,
        spec_replicas: 3,
        partitions: 24,
        last,
        now: at(NOW),
    };
    let first = decide(&input(None));
    let event = first
        .event
        .clone()
        .expect("a Warning when Redis becomes the bottleneck");
    assert_eq!(event.severity, EventSeverity::Warning);
    assert_eq!(event.reason, "AutoscalerRedisBottleneck");
    let second = decide(&input(Some(&first.status)));
    assert_eq!(second.event, None);
    assert_eq!(second.replicas, 3);
}

#[test]
fn recommend_mode_reports_the_decision_and_leaves_the_count_alone() {
    let settings = settings(|s| s.mode = AutoscalerMode::Recommend);
    let metrics = samples(hot(), 120, 0);
    let last = pending(ScaleDirection::Up, 30, 6);
    let input = Input {
        settings: &settings,
        metrics: &metrics,
        current_replicas: 3,
        spec_replicas: 3,
        partitions: 24,
        last: Some(&last),
        now: at(NOW),
    };
    let decision = decide(&input);
    assert_eq!(decision.replicas, 3);
    assert_eq!(decision.status.desired, Some(6));
    assert!(
        decision.status.reason.starts_with("recommends 3→6"),
        "{}",
        decision.status.reason
    );
    assert_eq!(
        decision.event.as_ref().map(|e| e.reason.as_str()),
        Some("AutoscalerRecommendation")
    );
    // The recommendation stands: said once, not again.
    let again = decide(&Input {
        last: Some(&decision.status),
        ..input
    });
    assert_eq!(again.event, None);
    assert_eq!(again.status.desired, Some(6));
    assert!(again
        .status
        .message
        .as_deref()
        .is_some_and(|m| m.contains("spec.replicas (3) sets")));
}

#[test]
fn in_scale_mode_the_autoscaler_owns_the_count_and_spec_replicas_is_ignored() {
    let spec = AutoscalerSpec {
        enabled: true,
        min_replicas: 2,
        max_replicas: 20,
        ..AutoscalerSpec::default()
    };
    let decided = AutoscalerStatus {
        desired: Some(7),
        ..AutoscalerStatus::default()
    };
    assert_eq!(
        effective_replicas(&spec, Some(&decided), 3, 24),
        7,
        "kubectl scale to 3 is ignored"
    );
    assert_eq!(
        effective_replicas(&spec, None, 3, 24),
        3,
        "before the first decision: spec.replicas"
    );
    assert_eq!(
        effective_replicas(&spec, None, 1, 24),
        2,
        "within minReplicas"
    );
    assert_eq!(
        effective_replicas(&spec, Some(&decided), 3, 6),
        6,
        "never above the partitions"
    );
    let recommend = AutoscalerSpec {
        mode: AutoscalerMode::Recommend,
        ..spec.clone()
    };
    assert_eq!(effective_replicas(&recommend, Some(&decided), 3, 24), 3);
    let off = AutoscalerSpec {
        enabled: false,
        ..spec
    };
    assert_eq!(effective_replicas(&off, Some(&decided), 3, 24), 3);
    let status = decide(&Input {
        settings: &Settings::from_spec(&AutoscalerSpec {
            enabled: true,
            ..AutoscalerSpec::default()
        })
        .expect("valid"),
        metrics: &[],
        current_replicas: 7,
        spec_replicas: 3,
        partitions: 24,
        last: None,
        now: at(NOW),
    })
    .status;
    assert_eq!(
        status.message.as_deref(),
        Some("the autoscaler sets the taskmanager count (1 to 10); spec.replicas (3) is ignored while spec.autoscaler.mode is scale")
    );
}

#[test]
fn the_defaults_are_valid_and_bad_settings_are_typed_errors() {
    let defaults = Settings::from_spec(&AutoscalerSpec::default()).expect("defaults are valid");
    assert_eq!(defaults.metrics_window, Duration::from_secs(120));
    assert_eq!(defaults.catch_up, Duration::from_secs(300));
    let with = |edit: fn(&mut AutoscalerSpec)| {
        let mut spec = AutoscalerSpec::default();
        edit(&mut spec);
        Settings::from_spec(&spec).expect_err("refused")
    };
    assert_eq!(
        with(|s| s.catch_up_duration = "0s".into()),
        SettingsError::Zero {
            field: "catchUpDuration"
        }
    );
    assert!(matches!(
        with(|s| s.metrics_window = "soon".into()),
        SettingsError::Duration {
            field: "metricsWindow",
            ..
        }
    ));
    assert_eq!(
        with(|s| s.min_replicas = 11),
        SettingsError::Bounds { min: 11, max: 10 }
    );
    assert!(matches!(
        with(|s| s.scale_down_utilization = 0.8),
        SettingsError::Utilization { .. }
    ));
}
