//! The autoscaler against the simulated job (`planner::autoscaler::sim`): the targets of issue
//! #27, over the scenarios `cargo run -p streamjob-operator --example autoscaler-sim` prints.

use std::time::Duration;

use streamjob_operator::planner::autoscaler::sim::{self, Report, Scenario};

fn scenario(name: &str) -> Scenario {
    sim::scenarios()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no scenario {name}"))
}

fn run(name: &str) -> (Scenario, Report) {
    let scenario = scenario(name);
    let report = sim::run(&scenario);
    (scenario, report)
}

fn ops(report: &Report) -> String {
    report
        .ops
        .iter()
        .map(|o| format!("  {:>6.0}s {}", o.t, o.reason))
        .collect::<Vec<_>>()
        .join("\n")
}

/// After a 5× step the lag is back under one window of input within `catchUpDuration` (from
/// the step), and cleared altogether (under 10 s of input) within it too.
#[test]
fn after_a_5x_step_the_lag_is_back_under_one_window_within_the_catch_up_duration() {
    let (scenario, report) = run("step-5x");
    let catch_up = scenario.settings.catch_up;
    let over = report
        .over_one_window_after_step()
        .expect("the scenario has a step");
    assert!(
        over <= catch_up,
        "lag over one window until {over:?} after the step\n{}",
        ops(&report)
    );
    let cleared = report.time_to_clear().expect("the lag clears");
    assert!(
        cleared <= catch_up,
        "lag took {cleared:?} to clear\n{}",
        ops(&report)
    );
    assert!(report.scale_ups() >= 1, "{}", ops(&report));
}

/// At most one scale-down per `scaleDownStabilization`, in every scenario.
#[test]
fn at_most_one_scale_down_per_scale_down_stabilization() {
    for scenario in sim::scenarios() {
        let report = sim::run(&scenario);
        if let Some(gap) = report.min_gap_between_scale_downs() {
            assert!(
                gap >= scenario.settings.scale_down_stabilization,
                "{}: two scale-downs {gap:?} apart\n{}",
                scenario.name,
                ops(&report)
            );
        }
    }
}

/// Zero scale-ups while Redis is the bottleneck: in the scenario where Redis takes less than the
/// taskmanagers could process, none at all.
#[test]
fn zero_scale_ups_while_redis_is_the_bottleneck() {
    let (_, report) = run("redis-saturated");
    assert!(
        report.points.iter().any(|p| p.redis_saturated),
        "the scenario must saturate Redis"
    );
    assert_eq!(report.scale_ups_while_redis_bound(), 0, "{}", ops(&report));
    assert_eq!(report.scale_ups(), 0, "{}", ops(&report));
    for scenario in sim::scenarios() {
        assert_eq!(
            sim::run(&scenario).scale_ups_while_redis_bound(),
            0,
            "{}",
            scenario.name
        );
    }
}

/// Never flap: no scale in the opposite direction within `scaleDownStabilization` of the last
/// one, over a simulated day with a 5× morning peak; and the peak is met.
#[test]
fn a_day_with_a_morning_peak_scales_without_flapping() {
    let (scenario, report) = run("morning-peak");
    let quiet = scenario.settings.scale_down_stabilization.as_secs_f64();
    for pair in report.ops.windows(2) {
        let reversed = (pair[0].to > pair[0].from) != (pair[1].to > pair[1].from);
        assert!(
            !reversed || pair[1].t - pair[0].t >= quiet,
            "flapped:\n{}",
            ops(&report)
        );
    }
    assert!(
        report.max_replicas() >= 8,
        "the 5× peak needs 8 taskmanagers\n{}",
        ops(&report)
    );
    assert!(
        report.scale_ups() + report.scale_downs() <= 16,
        "{}",
        ops(&report)
    );
    assert!(report
        .time_to_clear()
        .is_some_and(|d| d <= Duration::from_secs(300)));
}

/// A 30-second spike is absorbed: the lag clears within `catchUpDuration` and the job ends the
/// run where it started.
#[test]
fn a_30_second_spike_is_absorbed() {
    let (scenario, report) = run("spike-30s");
    let cleared = report.time_to_clear().expect("the lag clears");
    assert!(
        cleared <= scenario.settings.catch_up,
        "{cleared:?}\n{}",
        ops(&report)
    );
    let last = report.points.last().map(|p| p.replicas);
    let first = report
        .points
        .iter()
        .find(|p| p.t > 1_200.0)
        .map(|p| p.replicas);
    assert_eq!(last, first, "{}", ops(&report));
}

/// The Redis scenario is one where the autoscaler would scale without its Redis check: with the
/// limit out of reach (and no retries), the same load buys taskmanagers that do not help.
#[test]
fn without_the_redis_check_the_redis_scenario_would_scale_up_for_nothing() {
    let mut scenario = scenario("redis-saturated");
    scenario.settings.redis_latency_limit = Duration::from_secs(3_600);
    scenario.model.redis_retries_when_saturated = 0.0;
    let blind = sim::run(&scenario);
    assert!(blind.scale_ups_while_redis_bound() >= 1, "{}", ops(&blind));
    let (_, checked) = run("redis-saturated");
    assert!(
        checked.peak_lag().0 <= blind.peak_lag().0 * 1.01,
        "the extra taskmanagers did not lower the lag: {} vs {}",
        checked.peak_lag().0,
        blind.peak_lag().0
    );
}
