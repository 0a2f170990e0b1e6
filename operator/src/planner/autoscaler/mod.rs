//! The autoscaler's decision (issue #27): how many taskmanagers a job needs, from a window of the
//! jobmanager's metrics. A pure function like the rest of the planner: [`decide`] takes the
//! settings (`spec.autoscaler`), the samples, the current count, the partition count, what it
//! decided before (`status.autoscaler`) and the time, and returns the count to run, the next
//! `status.autoscaler` and an Event. [`sim`] drives it against a model of the job.
//!
//! # Demand and capacity
//!
//! A taskmanager's capacity is measured, not configured: the events/s processed divided by the
//! busy time spent on them (busy = deciding and applying batches, as opposed to waiting for
//! records), summed over the window. The demand is the input rate (of the newest sample) plus
//! the lag cleared within `catchUpDuration` (`lag / catchUpDuration`). `n` taskmanagers carry it
//! when the input keeps them at most `targetUtilization` busy and input plus catch-up at most
//! fully busy: the headroom above the target is what clears a backlog. (Counting the catch-up
//! against the target too would make a 30-second spike buy taskmanagers that are idle again
//! a minute later; the simulator's `spike-30s` shows it.) A job with `P` partitions on `n` taskmanagers is
//! as fast as its busiest taskmanager, which holds `ceil(P / n)` partitions, so `n` taskmanagers
//! give `capacity × P / ceil(P / n)`: 5 taskmanagers on 12 partitions are no faster than 4, and
//! the autoscaler picks 4. Above `P` a taskmanager has no partition, so `maxReplicas` is capped
//! at `P` and the reason says so when the cap binds.
//!
//! # When it changes the count
//!
//! - **Up** when the current count does not carry the demand, and has not for
//!   `scaleUpStabilization` (every evaluation in between asked for more): to the fewest
//!   taskmanagers that carry the newest demand.
//! - **Down** only when the demand, with the window's *peak* input and the catch-up, stayed below
//!   `scaleDownUtilization` of the current capacity for `scaleDownStabilization` without a
//!   break, and no scale-down happened within `scaleDownStabilization`: to the highest count
//!   asked for during that time (each sized for its window's peak). The landing point is at or under `targetUtilization` and above
//!   the boundary, so the next evaluation does not undo it: no flapping.
//! - **Never up while Redis is the bottleneck** (p99 apply latency above `redisLatencyLimit`, or
//!   more than one retry per second): more taskmanagers would only queue on Redis. The reason
//!   says so, with the figures.
//! - **Nothing without metrics.** No samples (new job, operator restarted), a newest sample older
//!   than [`window::STALE_AFTER`] (jobmanager down), a taskmanager count other than the running
//!   one (a rescale settling), or less than half a window of history at the current count: no
//!   decision, the count stays. Missing metrics never read as an idle job.
//! - **Nothing when nothing is processed** while lag grows: a stalled job is not short of
//!   capacity.
//!
//! A decision is the same in both modes; in `recommend` mode it is only reported
//! (`status.autoscaler.desired`, an Event) and the count to run stays `spec.replicas`. In `scale`
//! mode the autoscaler owns the count: [`effective_replicas`] is what the operator runs, and
//! `spec.replicas` (what `kubectl scale` writes) is ignored, which `status.autoscaler.message`
//! says. The operator never writes `spec.replicas` back, so it cannot fight a user or a GitOps
//! tool over the field; turning the autoscaler off (or mode `recommend`) hands the count back.
//!
//! What it remembers between reconciliations (a stabilization in progress, the last scale-down)
//! lives in `status.autoscaler`, so an operator restart resumes it. The samples do not: after a
//! restart the autoscaler waits for half a window of new ones.

pub mod chart;
pub mod history;
pub mod job;
mod reason;
pub mod sim;
pub mod window;

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::crd::{
    AutoscalerMode, AutoscalerSpec, AutoscalerState, AutoscalerStatus, PendingScale, ScaleDirection,
};
use crate::planner::{EventNote, EventSeverity};
use window::Summary;

/// More retries per second than this, averaged over the newest quarter of the window, and Redis
/// counts as the bottleneck whatever its latency.
pub const REDIS_RETRIES_SATURATED: f64 = 1.0;

/// `spec.autoscaler` with its durations parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub mode: AutoscalerMode,
    pub min_replicas: i32,
    pub max_replicas: i32,
    pub target_utilization: f64,
    pub scale_down_utilization: f64,
    pub metrics_window: Duration,
    pub scale_up_stabilization: Duration,
    pub scale_down_stabilization: Duration,
    pub catch_up: Duration,
    pub redis_latency_limit: Duration,
}

/// Why `spec.autoscaler` cannot be used (the CRD's rules refuse all of these; an object stored
/// before a rule existed may still carry them).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SettingsError {
    #[error("spec.autoscaler.{field}: {value:?} is not a duration: {reason}")]
    Duration {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("spec.autoscaler.{field} must not be 0s")]
    Zero { field: &'static str },
    #[error(
        "spec.autoscaler.minReplicas ({min}) must be at least 1 and at most maxReplicas ({max})"
    )]
    Bounds { min: i32, max: i32 },
    #[error(
        "spec.autoscaler.scaleDownUtilization ({down}) must be below targetUtilization ({target}), which must be in (0, 1]"
    )]
    Utilization { down: f64, target: f64 },
}

fn parse(field: &'static str, value: &str) -> Result<Duration, SettingsError> {
    humantime::parse_duration(value).map_err(|e| SettingsError::Duration {
        field,
        value: value.to_string(),
        reason: e.to_string(),
    })
}

fn nonzero(field: &'static str, value: &str) -> Result<Duration, SettingsError> {
    let parsed = parse(field, value)?;
    if parsed.is_zero() {
        return Err(SettingsError::Zero { field });
    }
    Ok(parsed)
}

impl Settings {
    /// Parses and checks `spec.autoscaler` (whether it is enabled is not looked at).
    pub fn from_spec(spec: &AutoscalerSpec) -> Result<Self, SettingsError> {
        if spec.min_replicas < 1 || spec.min_replicas > spec.max_replicas {
            return Err(SettingsError::Bounds {
                min: spec.min_replicas,
                max: spec.max_replicas,
            });
        }
        let (down, target) = (spec.scale_down_utilization, spec.target_utilization);
        if !(target > 0.0 && target <= 1.0 && down >= 0.0 && down < target) {
            return Err(SettingsError::Utilization { down, target });
        }
        Ok(Self {
            mode: spec.mode,
            min_replicas: spec.min_replicas,
            max_replicas: spec.max_replicas,
            target_utilization: target,
            scale_down_utilization: down,
            metrics_window: nonzero("metricsWindow", &spec.metrics_window)?,
            scale_up_stabilization: parse("scaleUpStabilization", &spec.scale_up_stabilization)?,
            scale_down_stabilization: parse(
                "scaleDownStabilization",
                &spec.scale_down_stabilization,
            )?,
            catch_up: nonzero("catchUpDuration", &spec.catch_up_duration)?,
            redis_latency_limit: nonzero("redisLatencyLimit", &spec.redis_latency_limit)?,
        })
    }

    /// The most taskmanagers worth running: `maxReplicas`, but no more than the partitions (a
    /// taskmanager without a partition does nothing). `partitions` 0 (unknown): `maxReplicas`.
    pub fn cap(&self, partitions: i32) -> i32 {
        if partitions > 0 {
            self.max_replicas.min(partitions)
        } else {
            self.max_replicas
        }
    }

    /// The fewest taskmanagers it runs, never above [`Settings::cap`].
    pub fn floor(&self, partitions: i32) -> i32 {
        self.min_replicas.min(self.cap(partitions))
    }
}

/// One sample of the jobmanager's metrics: the difference of two reads of
/// `GET /jobs/{id}/autoscaler-metrics` ([`history::between`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub at: Timestamp,
    /// Busy fraction (0 to 1) of each registered taskmanager since the previous sample: time
    /// spent deciding and applying batches rather than waiting for records.
    pub taskmanager_busy: Vec<f64>,
    pub partitions: Vec<PartitionLoad>,
    pub redis: RedisLoad,
}

/// One partition's rates since the previous sample, and its lag at the sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PartitionLoad {
    pub partition: i32,
    /// Records/s appended to the partition.
    pub input_per_second: f64,
    /// Records/s applied to Redis.
    pub processed_per_second: f64,
    /// Records between the committed offset and the high watermark.
    pub lag: u64,
}

/// Redis' own saturation, as the taskmanagers see it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RedisLoad {
    /// p99 of one batch's apply (the round trip of its `MULTI`/`EXEC`).
    pub apply_latency_p99: Duration,
    /// Applies retried per second (timeouts, `BUSY`, reconnects).
    pub retries_per_second: f64,
}

impl Sample {
    pub fn input(&self) -> f64 {
        self.partitions.iter().map(|p| p.input_per_second).sum()
    }
    pub fn processed(&self) -> f64 {
        self.partitions.iter().map(|p| p.processed_per_second).sum()
    }
    pub fn lag(&self) -> f64 {
        self.partitions.iter().map(|p| p.lag as f64).sum()
    }
    pub fn mean_busy(&self) -> f64 {
        let n = self.taskmanager_busy.len().max(1) as f64;
        self.taskmanager_busy.iter().sum::<f64>() / n
    }
}

/// Everything a decision looks at.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub settings: &'a Settings,
    /// The jobmanager's samples, oldest first (empty: none).
    pub metrics: &'a [Sample],
    /// The taskmanagers running now: [`effective_replicas`] in mode `scale`, `spec.replicas` in
    /// mode `recommend`.
    pub current_replicas: i32,
    /// `spec.replicas`, named in `status.autoscaler.message`.
    pub spec_replicas: i32,
    /// The topic's partitions (0: unknown).
    pub partitions: i32,
    /// `status.autoscaler` as the last decision left it.
    pub last: Option<&'a AutoscalerStatus>,
    pub now: Timestamp,
}

/// The outcome of one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Taskmanagers to run: the new count after a scale in mode `scale`, else the current one.
    pub replicas: i32,
    /// The next `status.autoscaler`.
    pub status: AutoscalerStatus,
    /// Published on a scale (or a new recommendation), and when Redis becomes the bottleneck or
    /// the job stalls.
    pub event: Option<EventNote>,
}

/// The taskmanager count the operator runs. In mode `scale` the autoscaler's decision
/// (`status.autoscaler.desired`; before its first, `spec.replicas`) within `minReplicas` and the
/// cap; in mode `recommend`, or when it is off, `spec.replicas`.
pub fn effective_replicas(
    spec: &AutoscalerSpec,
    status: Option<&AutoscalerStatus>,
    spec_replicas: i32,
    partitions: i32,
) -> i32 {
    let Ok(settings) = Settings::from_spec(spec) else {
        return spec_replicas;
    };
    if !spec.enabled || settings.mode == AutoscalerMode::Recommend {
        return spec_replicas;
    }
    let desired = status.and_then(|s| s.desired).unwrap_or(spec_replicas);
    desired.clamp(settings.floor(partitions), settings.cap(partitions))
}

/// Who sets the count, for `status.autoscaler.message`.
pub fn ownership_message(settings: &Settings, spec_replicas: i32, partitions: i32) -> String {
    let (floor, cap) = (settings.floor(partitions), settings.cap(partitions));
    match settings.mode {
        AutoscalerMode::Scale => format!(
            "the autoscaler sets the taskmanager count ({floor} to {cap}); spec.replicas \
             ({spec_replicas}) is ignored while spec.autoscaler.mode is scale"
        ),
        AutoscalerMode::Recommend => format!(
            "spec.replicas ({spec_replicas}) sets the taskmanager count; the autoscaler only \
             recommends ({floor} to {cap})"
        ),
    }
}

/// Decides the taskmanager count (see the module documentation).
pub fn decide(input: &Input<'_>) -> Decision {
    let previous = input.last.cloned().unwrap_or_default();
    let summary = match window::summarize(
        input.metrics,
        input.current_replicas,
        input.settings.metrics_window,
        input.now,
    ) {
        Ok(summary) if input.partitions > 0 => summary,
        Ok(_) => return no_decision(input, previous, &window::Missing::NoPartitions),
        Err(missing) => return no_decision(input, previous, &missing),
    };
    let want = assess(input, &summary);
    stabilize(input, previous, &summary, &want)
}

/// What the metrics ask for now, before stabilization.
#[derive(Debug, Clone, PartialEq)]
struct Want {
    /// Within the floor and the cap.
    replicas: i32,
    /// What the demand would need without the cap (for the reason).
    uncapped: i32,
    /// Input arrives, lag grows, nothing is processed.
    stalled: bool,
}

/// Events/s `n` taskmanagers process on `partitions` partitions when fully busy: as much as the
/// busiest, which holds `ceil(partitions / n)` of them.
pub fn effective_capacity(per_taskmanager: f64, partitions: i32, n: i32) -> f64 {
    if n <= 0 || partitions <= 0 {
        return 0.0;
    }
    let per = (partitions + n - 1) / n;
    per_taskmanager * f64::from(partitions) / f64::from(per)
}

fn assess(input: &Input<'_>, s: &Summary) -> Want {
    let settings = input.settings;
    let (floor, cap) = (
        settings.floor(input.partitions),
        settings.cap(input.partitions),
    );
    let current = input.current_replicas;
    let Some(per_tm) = s.capacity else {
        // Nothing to measure a capacity from: an idle job (scale towards the floor), or one
        // that does not process although it has work (hold, whatever the count).
        let stalled = s.lag >= 1.0;
        let replicas = if stalled { current } else { floor };
        return Want {
            replicas: replicas.clamp(floor, cap),
            uncapped: replicas,
            stalled,
        };
    };
    let catch_up = s.lag / settings.catch_up.as_secs_f64();
    let target = settings.target_utilization;
    // `n` carry an input when it keeps them at most `target` busy, and the backlog, cleared
    // within `catchUpDuration` on top of it, at most fully busy: the headroom above the target
    // is what clears a backlog, so a short spike's lag does not buy taskmanagers it no longer
    // needs once cleared.
    let capacity = |n: i32| effective_capacity(per_tm, input.partitions, n);
    let carried =
        |n: i32, rate: f64| capacity(n) * target >= rate && capacity(n) >= rate + catch_up;
    let fewest = |rate: f64| {
        let by_target = (rate / (per_tm * target)).ceil();
        let by_backlog = ((rate + catch_up) / per_tm).ceil();
        let uncapped = by_target.max(by_backlog).clamp(1.0, 1e6) as i32;
        let replicas = (floor..=cap).find(|&n| carried(n, rate)).unwrap_or(cap);
        (replicas, uncapped.max(replicas))
    };
    let below_boundary =
        s.peak_input + catch_up < capacity(current) * settings.scale_down_utilization;
    let (replicas, uncapped) = if !carried(current, s.recent_input) {
        fewest(s.recent_input)
    } else if below_boundary {
        // Sized for the window's peak, so the scale-down still carries its busiest moment.
        fewest(s.peak_input)
    } else {
        (current, current)
    };
    Want {
        replicas: replicas.clamp(floor, cap),
        uncapped,
        stalled: false,
    }
}

fn redis_is_bottleneck(settings: &Settings, s: &Summary) -> bool {
    s.redis_latency > settings.redis_latency_limit || s.redis_retries > REDIS_RETRIES_SATURATED
}

fn elapsed(now: Timestamp, since: Option<&Time>) -> Option<Duration> {
    since.map(|t| Duration::try_from(now.duration_since(t.0)).unwrap_or(Duration::ZERO))
}

/// Applies the stabilization rules to what the metrics ask for.
fn stabilize(input: &Input<'_>, previous: AutoscalerStatus, s: &Summary, want: &Want) -> Decision {
    let current = input.current_replicas;
    let mut next = carried_over(input, &previous);
    next.recommendation = Some(want.replicas);
    if want.stalled {
        next.state = AutoscalerState::Stalled;
        next.reason = format!(
            "holding {current}: nothing processed while lag is {} and input {}/s; not a \
             capacity problem (check the taskmanagers and Redis)",
            reason::count(s.lag),
            reason::count(s.recent_input)
        );
        return warn_on_entry(input, &previous, next, "AutoscalerStalled");
    }
    if want.replicas > current && redis_is_bottleneck(input.settings, s) {
        next.state = AutoscalerState::RedisBottleneck;
        next.recommendation = Some(current);
        next.reason = format!(
            "holding {current}: Redis is the bottleneck (apply p99 {} over the {} limit, {:.1} \
             retries/s); {} would need {}, but more taskmanagers would only queue on Redis",
            reason::duration(s.redis_latency),
            reason::duration(input.settings.redis_latency_limit),
            s.redis_retries,
            s.load(),
            want.replicas
        );
        return warn_on_entry(input, &previous, next, "AutoscalerRedisBottleneck");
    }
    if input.settings.mode == AutoscalerMode::Recommend
        && want.replicas != current
        && previous.desired == Some(want.replicas)
    {
        // A standing recommendation: said once, not again every stabilization period.
        next.state = AutoscalerState::Scaled;
        next.reason = scale_reason(input, s, want, current, want.replicas);
        return quiet(input, next);
    }
    match want.replicas.cmp(&current) {
        std::cmp::Ordering::Greater => scale_up(input, &previous, next, s, want),
        std::cmp::Ordering::Less => scale_down(input, &previous, next, s, want),
        std::cmp::Ordering::Equal => {
            next.state = AutoscalerState::Stable;
            next.reason = format!(
                "steady at {current}: {}, busy band {:.2}-{:.2}{}",
                s.load(),
                input.settings.scale_down_utilization,
                input.settings.target_utilization,
                reason::cap_note(input.settings, input.partitions, want.uncapped, current)
            );
            quiet(input, next)
        }
    }
}

/// The status fields every evaluation keeps, with the ownership message refreshed and no
/// pending change.
fn carried_over(input: &Input<'_>, previous: &AutoscalerStatus) -> AutoscalerStatus {
    AutoscalerStatus {
        message: Some(ownership_message(
            input.settings,
            input.spec_replicas,
            input.partitions,
        )),
        pending: None,
        ..previous.clone()
    }
}

fn quiet(input: &Input<'_>, status: AutoscalerStatus) -> Decision {
    Decision {
        replicas: input.current_replicas,
        status,
        event: None,
    }
}

/// A Warning Event when the autoscaler enters `next.state`, none while it stays there.
fn warn_on_entry(
    input: &Input<'_>,
    previous: &AutoscalerStatus,
    next: AutoscalerStatus,
    reason: &str,
) -> Decision {
    let event = (previous.state != next.state).then(|| EventNote {
        severity: EventSeverity::Warning,
        reason: reason.to_string(),
        message: next.reason.clone(),
    });
    Decision {
        event,
        ..quiet(input, next)
    }
}

fn pending_since(previous: &AutoscalerStatus, direction: ScaleDirection) -> Option<&PendingScale> {
    previous
        .pending
        .as_ref()
        .filter(|p| p.direction == direction)
}

fn scale_up(
    input: &Input<'_>,
    previous: &AutoscalerStatus,
    mut next: AutoscalerStatus,
    s: &Summary,
    want: &Want,
) -> Decision {
    let now = input.now;
    let since = pending_since(previous, ScaleDirection::Up).map_or(Time(now), |p| p.since.clone());
    let waited = elapsed(now, Some(&since)).unwrap_or_default();
    let stabilization = input.settings.scale_up_stabilization;
    if waited >= stabilization {
        return scaled(input, next, s, want, want.replicas);
    }
    next.state = AutoscalerState::Stabilizing;
    next.reason = format!(
        "holding {}: wants {} ({}) for {} of the {} scaleUpStabilization",
        input.current_replicas,
        want.replicas,
        s.load(),
        reason::duration(waited),
        reason::duration(stabilization)
    );
    next.pending = Some(PendingScale {
        direction: ScaleDirection::Up,
        since,
        replicas: want.replicas,
    });
    quiet(input, next)
}

fn scale_down(
    input: &Input<'_>,
    previous: &AutoscalerStatus,
    mut next: AutoscalerStatus,
    s: &Summary,
    want: &Want,
) -> Decision {
    let now = input.now;
    let stabilization = input.settings.scale_down_stabilization;
    let pending = pending_since(previous, ScaleDirection::Down);
    // The highest count asked for since the load first fell below the boundary: a scale-down
    // must still carry the busiest moment of the stabilization period.
    let replicas = pending.map_or(want.replicas, |p| p.replicas.max(want.replicas));
    let since = pending.map_or(Time(now), |p| p.since.clone());
    let waited = elapsed(now, Some(&since)).unwrap_or_default();
    let since_last = elapsed(now, previous.last_scale_down.as_ref());
    if waited >= stabilization && since_last.is_none_or(|d| d >= stabilization) {
        return scaled(input, next, s, want, replicas);
    }
    next.state = AutoscalerState::Stabilizing;
    next.reason = match since_last.filter(|d| *d < stabilization) {
        Some(ago) => format!(
            "holding {}: could run with {replicas} ({}), but the last scale-down was {} ago \
             and the scaleDownStabilization is {}",
            input.current_replicas,
            s.load(),
            reason::duration(ago),
            reason::duration(stabilization)
        ),
        None => format!(
            "holding {}: could run with {replicas} ({}); busy below {:.2} for {} of the {} \
             scaleDownStabilization",
            input.current_replicas,
            s.load(),
            input.settings.scale_down_utilization,
            reason::duration(waited),
            reason::duration(stabilization)
        ),
    };
    next.pending = Some(PendingScale {
        direction: ScaleDirection::Down,
        since,
        replicas,
    });
    quiet(input, next)
}

fn scale_reason(input: &Input<'_>, s: &Summary, want: &Want, from: i32, to: i32) -> String {
    let verb = match input.settings.mode {
        AutoscalerMode::Scale => "scaled",
        AutoscalerMode::Recommend => "recommends",
    };
    let settings = input.settings;
    let why = if to > from && s.lag >= 1.0 {
        format!(
            "{to} carry the input at {:.2} busy and clear the lag within {}",
            settings.target_utilization,
            reason::duration(settings.catch_up)
        )
    } else if to > from {
        format!(
            "{to} carry the input at {:.2} busy",
            settings.target_utilization
        )
    } else {
        format!(
            "busy below {:.2} for {}; {to} carry the window's peak at {:.2} busy or less",
            settings.scale_down_utilization,
            reason::duration(settings.scale_down_stabilization),
            settings.target_utilization
        )
    };
    let cap = reason::cap_note(settings, input.partitions, want.uncapped, to);
    format!("{verb} {from}→{to}: {}; {why}{cap}", s.load())
}

fn scaled(
    input: &Input<'_>,
    mut next: AutoscalerStatus,
    s: &Summary,
    want: &Want,
    to: i32,
) -> Decision {
    let (from, now) = (input.current_replicas, Time(input.now));
    next.state = AutoscalerState::Scaled;
    next.reason = scale_reason(input, s, want, from, to);
    if next.desired != Some(to) {
        next.last_decision = Some(now.clone());
    }
    next.desired = Some(to);
    if to > from {
        next.last_scale_up = Some(now);
    } else {
        next.last_scale_down = Some(now);
    }
    let (replicas, event_reason) = match input.settings.mode {
        AutoscalerMode::Scale => (to, "Autoscaled"),
        AutoscalerMode::Recommend => (from, "AutoscalerRecommendation"),
    };
    let event = EventNote {
        severity: EventSeverity::Normal,
        reason: event_reason.to_string(),
        message: next.reason.clone(),
    };
    Decision {
        replicas,
        status: next,
        event: Some(event),
    }
}

/// No decision: the count stays, and so does nothing else that needs metrics to hold (a
/// stabilization in progress is dropped: its "without a break" is no longer known).
fn no_decision(
    input: &Input<'_>,
    previous: AutoscalerStatus,
    missing: &window::Missing,
) -> Decision {
    let mut next = carried_over(input, &previous);
    next.state = AutoscalerState::NoMetrics;
    next.recommendation = None;
    next.reason = format!(
        "no decision, staying at {}: {missing}",
        input.current_replicas
    );
    quiet(input, next)
}
