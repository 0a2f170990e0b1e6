//! From the jobmanager's counters to the samples a decision reads: the jobmanager serves
//! cumulative counters and positions (`GET /jobs/{id}/autoscaler-metrics`), and a sample is the
//! difference of two consecutive reads. [`History`] keeps the previous read and a bounded ring of
//! samples per job; the reconciler holds one per job with the autoscaler on, in memory only.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use streamjob_worker::api::{AutoscalerMetrics, JobState, TaskManagerLoad};

use super::{PartitionLoad, RedisLoad, Sample, Settings};

/// The most samples a job's ring holds, whatever its window (at the shortest sampling interval,
/// 5 s, a 20-minute window).
pub const MAX_SAMPLES: usize = 240;

/// How often the jobmanager is sampled: an eighth of the window, between 5 s and 30 s (the
/// default 2-minute window: every 15 s).
pub fn sample_interval(settings: &Settings) -> Duration {
    (settings.metrics_window / 8).clamp(Duration::from_secs(5), Duration::from_secs(30))
}

/// The previous read and the samples of one job.
#[derive(Debug, Clone, Default)]
pub struct History {
    last: Option<AutoscalerMetrics>,
    samples: VecDeque<Sample>,
}

impl History {
    /// The samples, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.iter().cloned().collect()
    }

    pub fn newest(&self) -> Option<&Sample> {
        self.samples.back()
    }

    /// Whether the next read is due at `now` (none yet, or the newest sample is an interval
    /// old). Reads in between (a reconcile for another reason) are not made.
    pub fn due(&self, now: Timestamp, interval: Duration) -> bool {
        let Some(last) = &self.last else { return true };
        let Ok(at) = Timestamp::from_millisecond(last.at_ms) else {
            return true;
        };
        // A little early is fine: requeues come back at the interval, give or take the debounce.
        let slack = interval / 10;
        Duration::try_from(now.duration_since(at)).is_ok_and(|d| d + slack >= interval)
    }

    /// Takes a read made at `at` (operator clock): a sample against the previous read, if
    /// both describe a running job, then drops what is older than `window` (and beyond
    /// [`MAX_SAMPLES`]).
    pub fn record(&mut self, read: AutoscalerMetrics, at: Timestamp, window: Duration) {
        if let Some(sample) = self.last.as_ref().and_then(|prev| between(prev, &read, at)) {
            self.samples.push_back(sample);
        }
        self.last = Some(read);
        let oldest = at.checked_sub(window).unwrap_or(Timestamp::MIN);
        while self
            .samples
            .front()
            .is_some_and(|s| s.at < oldest || self.samples.len() > MAX_SAMPLES)
        {
            self.samples.pop_front();
        }
    }
}

/// Busy fraction of a taskmanager between two reports; its whole life when it restarted in
/// between (the counters went back) or was not there before.
fn busy(prev: Option<&TaskManagerLoad>, cur: &TaskManagerLoad) -> f64 {
    let (busy, elapsed) = match prev {
        Some(p) if cur.elapsed_ms > p.elapsed_ms && cur.busy_ms >= p.busy_ms => {
            (cur.busy_ms - p.busy_ms, cur.elapsed_ms - p.elapsed_ms)
        }
        Some(p) if cur.elapsed_ms == p.elapsed_ms => return 0.0,
        _ => (cur.busy_ms, cur.elapsed_ms),
    };
    if elapsed == 0 {
        return 0.0;
    }
    (busy as f64 / elapsed as f64).clamp(0.0, 1.0)
}

fn per_second(later: Option<i64>, earlier: Option<i64>, seconds: f64) -> f64 {
    match (later, earlier) {
        (Some(l), Some(e)) if l >= e => (l - e) as f64 / seconds,
        _ => 0.0,
    }
}

/// One sample from two consecutive reads: busy per taskmanager, rates per partition and Redis'
/// saturation over the time between them (the jobmanager's clock), stamped `at`. `None` when
/// the reads do not span time or the job is not running.
pub fn between(prev: &AutoscalerMetrics, cur: &AutoscalerMetrics, at: Timestamp) -> Option<Sample> {
    let seconds = (cur.at_ms - prev.at_ms) as f64 / 1_000.0;
    if seconds <= 0.0 || cur.state != JobState::Running || prev.state != JobState::Running {
        return None;
    }
    let before: BTreeMap<&str, &TaskManagerLoad> = prev
        .taskmanagers
        .iter()
        .filter_map(|t| Some((t.id.as_str(), t.load.as_ref()?)))
        .collect();
    let mut retries = 0u64;
    let mut p99_ms = 0.0f64;
    let taskmanager_busy = cur
        .taskmanagers
        .iter()
        .map(|t| {
            let Some(load) = &t.load else { return 0.0 };
            let prev = before.get(t.id.as_str()).copied();
            retries += match prev {
                Some(p) if load.redis_retries >= p.redis_retries => {
                    load.redis_retries - p.redis_retries
                }
                _ => load.redis_retries,
            };
            p99_ms = p99_ms.max(load.redis_apply_p99_ms);
            busy(prev, load)
        })
        .collect();
    let earlier: BTreeMap<i32, _> = prev.partitions.iter().map(|p| (p.partition, p)).collect();
    let partitions = cur
        .partitions
        .iter()
        .map(|p| {
            let e = earlier.get(&p.partition);
            let lag = match (p.high_watermark, p.committed_offset) {
                (Some(hw), Some(c)) => u64::try_from(hw - c).unwrap_or(0),
                _ => 0,
            };
            PartitionLoad {
                partition: p.partition,
                input_per_second: per_second(
                    p.high_watermark,
                    e.and_then(|e| e.high_watermark),
                    seconds,
                ),
                processed_per_second: per_second(
                    p.committed_offset,
                    e.and_then(|e| e.committed_offset),
                    seconds,
                ),
                lag,
            }
        })
        .collect();
    Some(Sample {
        at,
        taskmanager_busy,
        partitions,
        redis: RedisLoad {
            // A figure that is not a finite, non-negative time reads as none.
            apply_latency_p99: Duration::try_from_secs_f64(p99_ms / 1_000.0).unwrap_or_default(),
            retries_per_second: retries as f64 / seconds,
        },
    })
}
