//! What a window of samples says: the figures a decision needs, or why there are not enough of
//! them to decide.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use super::Sample;

/// Newer than this, the newest sample still describes the job; older, the jobmanager stopped
/// answering and nothing is decided on what it said last.
pub const STALE_AFTER: Duration = Duration::from_secs(60);

/// Below this busy fraction per taskmanager (summed over the window) there is too little work to
/// measure a taskmanager's capacity from.
const MIN_BUSY_FOR_CAPACITY: f64 = 0.01;

/// The figures of a window, at one taskmanager count.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// History at the current taskmanager count.
    pub span: Duration,
    /// Input, events/s, of the newest sample: what arrives now (a spike that is over no longer
    /// counts; the stabilization, not an average, keeps noise out).
    pub recent_input: f64,
    /// The highest input of one sample, events/s (what a scale-down must still carry).
    pub peak_input: f64,
    /// Processed, events/s, over the newest quarter.
    pub recent_processed: f64,
    /// Lag of the newest sample, records.
    pub lag: f64,
    /// How fast the lag grew over the span, records/s (negative: shrinking).
    pub lag_slope: f64,
    /// Mean busy fraction per taskmanager over the newest quarter.
    pub busy: f64,
    /// Events/s one fully busy taskmanager processes: processed over busy time, summed over the
    /// span. `None` when the taskmanagers were (nearly) idle: nothing to measure it from.
    pub capacity: Option<f64>,
    /// Redis' p99 apply latency, mean over the newest quarter.
    pub redis_latency: Duration,
    /// Redis apply retries/s, mean over the newest quarter.
    pub redis_retries: f64,
}

/// Why a window is not enough to decide on.
#[derive(Debug, Clone, PartialEq)]
pub enum Missing {
    /// No sample at all (new job, jobmanager never answered, operator just restarted).
    NoMetrics,
    /// The newest sample is this old.
    Stale(Duration),
    /// The jobmanager reports another taskmanager count than the one running: a rescale is
    /// still settling.
    Settling { seen: usize, current: i32 },
    /// Only this much history at the current count; `need` is half a window.
    Short { have: Duration, need: Duration },
    /// The jobmanager reports no partitions.
    NoPartitions,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Missing::NoMetrics => f.write_str("no metrics from the jobmanager yet"),
            Missing::Stale(age) => write!(
                f,
                "the newest metrics are {} old (is the jobmanager down?)",
                super::reason::duration(*age)
            ),
            Missing::Settling { seen, current } => write!(
                f,
                "the jobmanager reports {seen} taskmanagers, {current} expected (a rescale is settling)"
            ),
            Missing::Short { have, need } => write!(
                f,
                "{} of metrics at this count, {} needed",
                super::reason::duration(*have),
                super::reason::duration(*need)
            ),
            Missing::NoPartitions => f.write_str("the jobmanager reports no partitions"),
        }
    }
}

fn since(later: Timestamp, earlier: Timestamp) -> Duration {
    Duration::try_from(later.duration_since(earlier)).unwrap_or(Duration::ZERO)
}

/// The newest samples taken at `current` taskmanagers, within `window` of `now`, oldest first:
/// samples from before a rescale describe another job size and would bias every estimate.
fn usable(
    samples: &[Sample],
    current: i32,
    window: Duration,
    now: Timestamp,
) -> Result<&[Sample], Missing> {
    let newest = samples.last().ok_or(Missing::NoMetrics)?;
    let age = since(now, newest.at);
    if age > STALE_AFTER {
        return Err(Missing::Stale(age));
    }
    if newest.partitions.is_empty() {
        return Err(Missing::NoPartitions);
    }
    let matches = |s: &Sample| {
        i32::try_from(s.taskmanager_busy.len()).is_ok_and(|n| n == current)
            && !s.partitions.is_empty()
            && since(now, s.at) <= window
    };
    if !matches(newest) {
        return Err(Missing::Settling {
            seen: newest.taskmanager_busy.len(),
            current,
        });
    }
    let first = samples
        .iter()
        .rposition(|s| !matches(s))
        .map_or(0, |i| i + 1);
    let usable = &samples[first..];
    let have = since(newest.at, usable[0].at);
    let need = window / 2;
    if have < need {
        return Err(Missing::Short { have, need });
    }
    Ok(usable)
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0u32), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        0.0
    } else {
        sum / f64::from(n)
    }
}

/// Summarizes the samples (oldest first) the jobmanager reported, for a job running `current`
/// taskmanagers.
pub fn summarize(
    samples: &[Sample],
    current: i32,
    window: Duration,
    now: Timestamp,
) -> Result<Summary, Missing> {
    let usable = usable(samples, current, window, now)?;
    let (oldest, newest) = match (usable.first(), usable.last()) {
        (Some(o), Some(n)) => (o, n),
        _ => return Err(Missing::NoMetrics),
    };
    let span = since(newest.at, oldest.at);
    let recent_from = newest.at.checked_sub(window / 4).unwrap_or(Timestamp::MIN);
    let recent: Vec<&Sample> = usable.iter().filter(|s| s.at >= recent_from).collect();
    let busy_sum: f64 = usable
        .iter()
        .map(|s| s.taskmanager_busy.iter().sum::<f64>())
        .sum();
    let processed_sum: f64 = usable.iter().map(Sample::processed).sum();
    let per_taskmanager = busy_sum / (usable.len() as f64 * f64::from(current.max(1)));
    let capacity = (per_taskmanager >= MIN_BUSY_FOR_CAPACITY && processed_sum > 0.0)
        .then(|| processed_sum / busy_sum);
    let lag_slope = if span.is_zero() {
        0.0
    } else {
        (newest.lag() - oldest.lag()) / span.as_secs_f64()
    };
    Ok(Summary {
        span,
        recent_input: newest.input(),
        peak_input: usable.iter().map(Sample::input).fold(0.0, f64::max),
        recent_processed: mean(recent.iter().map(|s| s.processed())),
        lag: newest.lag(),
        lag_slope,
        busy: mean(recent.iter().map(|s| s.mean_busy())),
        capacity,
        redis_latency: Duration::from_secs_f64(mean(
            recent
                .iter()
                .map(|s| s.redis.apply_latency_p99.as_secs_f64()),
        )),
        redis_retries: mean(recent.iter().map(|s| s.redis.retries_per_second)),
    })
}

impl Summary {
    /// `lag 120k growing 4k/s, busy 0.92, input 30k/s`.
    pub fn load(&self) -> String {
        let s = self;
        // Below 1 % of the input per second, or a handful of records, the lag is noise.
        let noise = (s.recent_input * 0.01).max(10.0);
        let lag = if s.lag < 1.0 {
            "no lag".to_string()
        } else if s.lag_slope > noise {
            format!(
                "lag {} growing {}/s",
                super::reason::count(s.lag),
                super::reason::count(s.lag_slope)
            )
        } else if s.lag_slope < -noise {
            format!(
                "lag {} shrinking {}/s",
                super::reason::count(s.lag),
                super::reason::count(-s.lag_slope)
            )
        } else {
            format!("lag {} steady", super::reason::count(s.lag))
        };
        format!(
            "{lag}, busy {:.2}, input {}/s",
            s.busy,
            super::reason::count(s.recent_input)
        )
    }
}
