//! A simulator for the autoscaler: [`decide`](super::decide) driven by synthetic load curves
//! against a simple model of the job, for simulated hours or days in milliseconds.
//!
//! The model, stepped once per simulated second:
//! - `P` partitions share the input evenly; taskmanager `j` of `n` holds partitions `p` with
//!   `p % n == j` and processes at most `C` events/s, split evenly over its partitions (so the
//!   busiest taskmanager, with `ceil(P / n)` partitions, limits the job, as in production).
//! - A partition processes what it can of its lag plus this second's input; lag integrates
//!   `input - processed`.
//! - Redis, when modelled, caps the job's processed events/s; under that cap its p99 apply
//!   latency rises like a queue's (`base / (1 - load)`), and at the cap applies are retried and
//!   every taskmanager with lag is busy all the time (waiting on Redis counts as applying).
//!   Otherwise a taskmanager's busy fraction is `processed / C`.
//! - A rescale takes effect `rescale_delay` after the decision (pods start, partitions move);
//!   until then the jobmanager reports the old count.
//! - Every `sample_every` the jobmanager's metrics are sampled and the autoscaler decides, with
//!   what it decided before carried over as `status.autoscaler` is.
//!
//! [`Report`] has what the targets of issue #27 are stated in: replicas over time, the peak lag,
//! how long the lag took to clear and the scale operations.

use std::collections::VecDeque;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use super::{decide, Input, PartitionLoad, RedisLoad, Sample, Settings};
use crate::crd::{AutoscalerSpec, AutoscalerStatus};

/// The simulated job.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub partitions: i32,
    /// Events/s one taskmanager processes when fully busy.
    pub capacity_per_taskmanager: f64,
    /// Events/s Redis takes from the whole job; `None`: never the bottleneck.
    pub redis_capacity: Option<f64>,
    /// Redis' p99 apply latency when idle.
    pub redis_base_latency: Duration,
    /// Applies retried per second while Redis is at its cap.
    pub redis_retries_when_saturated: f64,
    pub rescale_delay: Duration,
    pub sample_every: Duration,
    pub initial_replicas: i32,
}

impl Default for Model {
    fn default() -> Self {
        Self {
            partitions: 24,
            capacity_per_taskmanager: 5_000.0,
            redis_capacity: None,
            redis_base_latency: Duration::from_millis(5),
            redis_retries_when_saturated: 3.0,
            rescale_delay: Duration::from_secs(10),
            sample_every: Duration::from_secs(15),
            initial_replicas: 2,
        }
    }
}

/// A load curve run against a model.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    pub duration: Duration,
    /// Input events/s at `t` seconds.
    pub load: fn(f64) -> f64,
    pub model: Model,
    pub settings: Settings,
    /// When the load changes suddenly (for the time to clear a step).
    pub step_at: Option<Duration>,
}

/// The state at one sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Seconds since the start.
    pub t: f64,
    pub input: f64,
    pub processed: f64,
    pub lag: f64,
    /// Taskmanagers processing (a rescale shows after its delay).
    pub replicas: i32,
    pub busy: f64,
    /// Redis was at its cap during the sample.
    pub redis_saturated: bool,
}

/// One change of the count.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleOp {
    pub t: f64,
    pub from: i32,
    pub to: i32,
    /// Redis was at its cap during the sample the decision saw last.
    pub redis_saturated: bool,
    pub reason: String,
}

/// What a run shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub name: &'static str,
    pub points: Vec<Point>,
    pub ops: Vec<ScaleOp>,
    pub metrics_window: Duration,
    pub step_at: Option<Duration>,
}

/// The settings the scenarios run with: the CRD's defaults, between 2 and 16 taskmanagers.
pub fn default_settings() -> Settings {
    let spec = AutoscalerSpec {
        enabled: true,
        min_replicas: 2,
        max_replicas: 16,
        ..AutoscalerSpec::default()
    };
    // The defaults are valid (a test says so); a panic here would be a bug in them.
    Settings::from_spec(&spec).expect("the default autoscaler settings are valid")
}

const BASE: f64 = 5_000.0;
const HOUR: f64 = 3_600.0;

/// Ramps linearly from `a` at `t0` to `b` at `t1`.
fn ramp(t: f64, t0: f64, t1: f64, a: f64, b: f64) -> f64 {
    a + (b - a) * ((t - t0) / (t1 - t0)).clamp(0.0, 1.0)
}

/// A working day: night at the base rate, a morning peak of 5× (the morning campaigns ramp it up
/// within 15 minutes, 07:45-08:00, and it eases off 10:00-12:00), an afternoon at 2×, an evening
/// at 1.5×, with a little ripple throughout.
pub fn morning_peak_load(t: f64) -> f64 {
    let h = t / HOUR;
    let level = if h < 7.75 {
        1.0
    } else if h < 8.0 {
        ramp(h, 7.75, 8.0, 1.0, 5.0)
    } else if h < 10.0 {
        5.0
    } else if h < 12.0 {
        ramp(h, 10.0, 12.0, 5.0, 2.0)
    } else if h < 18.0 {
        2.0
    } else if h < 20.0 {
        ramp(h, 18.0, 20.0, 2.0, 1.5)
    } else {
        ramp(h, 22.0, 24.0, 1.5, 1.0)
    };
    BASE * level * (1.0 + 0.05 * (t / 97.0).sin())
}

/// The base rate, then 5× from 0:30 to 2:30.
pub fn step_load(t: f64) -> f64 {
    if (1_800.0..9_000.0).contains(&t) {
        5.0 * BASE
    } else {
        BASE
    }
}

/// 2× the base rate with a 30-second spike to 5× at 1:00.
pub fn spike_load(t: f64) -> f64 {
    if (HOUR..HOUR + 30.0).contains(&t) {
        5.0 * BASE
    } else {
        2.0 * BASE
    }
}

/// From the base rate to 5× over 8 hours, and back over 8.
pub fn slow_ramp_load(t: f64) -> f64 {
    let h = t / HOUR;
    if h < 8.0 {
        ramp(h, 0.0, 8.0, 1.0, 5.0) * BASE
    } else {
        ramp(h, 8.0, 16.0, 5.0, 1.0) * BASE
    }
}

/// The base rate, then 2× from 0:30 to 2:30: more than Redis takes (9k/s), less than the two
/// taskmanagers could process (10k/s).
pub fn redis_bound_load(t: f64) -> f64 {
    if (1_800.0..9_000.0).contains(&t) {
        2.0 * BASE
    } else {
        BASE
    }
}

/// The scenarios of issue #27.
pub fn scenarios() -> Vec<Scenario> {
    let settings = default_settings();
    let scenario = |name, hours: u64, load: fn(f64) -> f64, step_at: Option<u64>| Scenario {
        name,
        duration: Duration::from_secs(hours * 3_600),
        load,
        model: Model::default(),
        settings: settings.clone(),
        step_at: step_at.map(Duration::from_secs),
    };
    let mut redis = scenario("redis-saturated", 4, redis_bound_load, Some(1_800));
    redis.model.redis_capacity = Some(9_000.0);
    vec![
        scenario("morning-peak", 24, morning_peak_load, None),
        scenario("step-5x", 4, step_load, Some(1_800)),
        scenario("spike-30s", 3, spike_load, Some(3_600)),
        scenario("slow-ramp", 16, slow_ramp_load, None),
        redis,
    ]
}

/// The job's state between steps.
struct Job {
    lag: Vec<f64>,
    /// Taskmanagers processing now.
    running: i32,
    /// The count decided, and when it takes effect.
    rescale: Option<(f64, i32)>,
}

/// What one sample period accumulated.
#[derive(Default)]
struct Period {
    seconds: f64,
    input: Vec<f64>,
    processed: Vec<f64>,
    busy: Vec<f64>,
    latency: f64,
    retries: f64,
    saturated: bool,
}

impl Period {
    fn new(partitions: usize, taskmanagers: usize) -> Self {
        Self {
            input: vec![0.0; partitions],
            processed: vec![0.0; partitions],
            busy: vec![0.0; taskmanagers],
            ..Self::default()
        }
    }
}

/// One simulated second.
fn step(model: &Model, job: &mut Job, input: f64, period: &mut Period) {
    let n = job.running.max(1) as usize;
    let partitions = job.lag.len();
    let mut held = vec![0usize; n];
    (0..partitions).for_each(|p| held[p % n] += 1);
    let per_partition_in = input / partitions as f64;
    let mut can: Vec<f64> = (0..partitions)
        .map(|p| {
            let limit = model.capacity_per_taskmanager / held[p % n] as f64;
            (job.lag[p] + per_partition_in).min(limit)
        })
        .collect();
    let total: f64 = can.iter().sum();
    let (saturated, load) = match model.redis_capacity {
        Some(cap) if total > cap => {
            can.iter_mut().for_each(|c| *c *= cap / total);
            (true, 1.0)
        }
        Some(cap) => (false, total / cap),
        None => (false, 0.0),
    };
    let mut busy = vec![0.0; n];
    for (p, processed) in can.iter().enumerate() {
        job.lag[p] = (job.lag[p] + per_partition_in - processed).max(0.0);
        busy[p % n] += processed / model.capacity_per_taskmanager;
        period.input[p] += per_partition_in;
        period.processed[p] += processed;
    }
    for (j, b) in busy.iter().enumerate() {
        let waiting_on_redis = saturated && (0..partitions).any(|p| p % n == j && job.lag[p] > 0.0);
        period.busy[j] += if waiting_on_redis { 1.0 } else { b.min(1.0) };
    }
    let base = model.redis_base_latency.as_secs_f64();
    period.latency += base / (1.0 - load).max(0.02);
    period.retries += if saturated {
        model.redis_retries_when_saturated
    } else {
        0.0
    };
    period.saturated |= saturated;
    period.seconds += 1.0;
}

fn timestamp(t: f64) -> Timestamp {
    Timestamp::from_millisecond((t * 1_000.0) as i64).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// The jobmanager's sample of a period, and the point the report keeps.
fn sample(t: f64, job: &Job, period: &Period) -> (Sample, Point) {
    let secs = period.seconds.max(1.0);
    let partitions = (0..job.lag.len())
        .map(|p| PartitionLoad {
            partition: p as i32,
            input_per_second: period.input[p] / secs,
            processed_per_second: period.processed[p] / secs,
            lag: job.lag[p].round() as u64,
        })
        .collect();
    let sample = Sample {
        at: timestamp(t),
        taskmanager_busy: period.busy.iter().map(|b| b / secs).collect(),
        partitions,
        redis: RedisLoad {
            apply_latency_p99: Duration::from_secs_f64(period.latency / secs),
            retries_per_second: period.retries / secs,
        },
    };
    let point = Point {
        t,
        input: sample.input(),
        processed: sample.processed(),
        lag: sample.lag(),
        replicas: job.running,
        busy: sample.mean_busy(),
        redis_saturated: period.saturated,
    };
    (sample, point)
}

/// Runs a scenario.
pub fn run(scenario: &Scenario) -> Report {
    let model = &scenario.model;
    let settings = &scenario.settings;
    let partitions = usize::try_from(model.partitions.max(1)).unwrap_or(1);
    let mut job = Job {
        lag: vec![0.0; partitions],
        running: model.initial_replicas,
        rescale: None,
    };
    let mut desired = model.initial_replicas;
    let mut status: Option<AutoscalerStatus> = None;
    let mut samples: VecDeque<Sample> = VecDeque::new();
    let mut report = Report {
        name: scenario.name,
        points: Vec::new(),
        ops: Vec::new(),
        metrics_window: settings.metrics_window,
        step_at: scenario.step_at,
    };
    let every = model.sample_every.as_secs().max(1);
    let mut period = Period::new(partitions, job.running as usize);
    for second in 1..=scenario.duration.as_secs() {
        let t = second as f64;
        step(model, &mut job, (scenario.load)(t - 1.0), &mut period);
        if let Some((_, to)) = job.rescale.filter(|(at, _)| t >= *at) {
            job.running = to;
            job.rescale = None;
            // The jobmanager reports the new count from the next sample on.
            period = Period::new(partitions, to as usize);
        }
        if second % every != 0 {
            continue;
        }
        let (sample, point) = sample(t, &job, &period);
        let saturated = period.saturated;
        period = Period::new(partitions, job.running as usize);
        report.points.push(point);
        samples.push_back(sample);
        // Keep a window and a little more, as the operator would.
        while samples.len() > 2
            && timestamp(t - settings.metrics_window.as_secs_f64() - 60.0) > samples[0].at
        {
            samples.pop_front();
        }
        let decision = decide(&Input {
            settings,
            metrics: samples.make_contiguous(),
            current_replicas: desired,
            spec_replicas: model.initial_replicas,
            partitions: model.partitions,
            last: status.as_ref(),
            now: timestamp(t),
        });
        if decision.replicas != desired {
            report.ops.push(ScaleOp {
                t,
                from: desired,
                to: decision.replicas,
                redis_saturated: saturated,
                reason: decision.status.reason.clone(),
            });
            desired = decision.replicas;
            job.rescale = Some((t + model.rescale_delay.as_secs_f64(), desired));
        }
        status = Some(decision.status);
    }
    report
}

impl Report {
    pub fn scale_ups(&self) -> usize {
        self.ops.iter().filter(|o| o.to > o.from).count()
    }

    pub fn scale_downs(&self) -> usize {
        self.ops.iter().filter(|o| o.to < o.from).count()
    }

    /// Scale-ups decided while Redis was at its cap.
    pub fn scale_ups_while_redis_bound(&self) -> usize {
        self.ops
            .iter()
            .filter(|o| o.to > o.from && o.redis_saturated)
            .count()
    }

    /// The shortest time between two scale-downs, if there were two.
    pub fn min_gap_between_scale_downs(&self) -> Option<Duration> {
        let downs: Vec<f64> = self
            .ops
            .iter()
            .filter(|o| o.to < o.from)
            .map(|o| o.t)
            .collect();
        downs
            .windows(2)
            .map(|w| w[1] - w[0])
            .min_by(f64::total_cmp)
            .map(Duration::from_secs_f64)
    }

    /// The highest lag and when.
    pub fn peak_lag(&self) -> (f64, f64) {
        self.points
            .iter()
            .map(|p| (p.lag, p.t))
            .fold((0.0, 0.0), |best, x| if x.0 > best.0 { x } else { best })
    }

    pub fn max_replicas(&self) -> i32 {
        self.points.iter().map(|p| p.replicas).max().unwrap_or(0)
    }

    /// The longest time the lag stayed above ten seconds of input (from when it rose above to
    /// when it was back under); `None` if it never came back.
    pub fn time_to_clear(&self) -> Option<Duration> {
        let behind = |p: &Point| p.lag > p.input * 10.0;
        let mut longest = 0.0f64;
        let mut since: Option<f64> = None;
        for point in &self.points {
            match (since, behind(point)) {
                (None, true) => since = Some(point.t),
                (Some(start), false) => {
                    longest = longest.max(point.t - start);
                    since = None;
                }
                _ => {}
            }
        }
        since.is_none().then(|| Duration::from_secs_f64(longest))
    }

    /// After the step, when the lag was last above one window of input (`input ×
    /// metricsWindow`), measured from the step; zero if it never was. `None` without a step.
    pub fn over_one_window_after_step(&self) -> Option<Duration> {
        let step = self.step_at?.as_secs_f64();
        let window = self.metrics_window.as_secs_f64();
        let last = self
            .points
            .iter()
            .filter(|p| p.t >= step && p.lag > p.input * window)
            .map(|p| p.t - step)
            .fold(0.0, f64::max);
        Some(Duration::from_secs_f64(last))
    }

    /// Replicas over time as `(t, replicas)` at each change.
    pub fn replica_changes(&self) -> Vec<(f64, i32)> {
        let mut changes: Vec<(f64, i32)> = Vec::new();
        for p in &self.points {
            if changes.last().is_none_or(|(_, r)| *r != p.replicas) {
                changes.push((p.t, p.replicas));
            }
        }
        changes
    }
}
