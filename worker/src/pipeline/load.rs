//! What one pipeline measures of its own load, for the autoscaler (issue #27): busy time, events
//! processed, and Redis' apply latency and retries. Reported as cumulative counters
//! ([`crate::api::TaskManagerLoad`]) with every heartbeat, and served on `/metrics`.
//!
//! **Busy** is wall time during which at least one partition of the process decides or applies
//! a batch (decoding a burst of records, dead-lettering, the Redis transaction and its retries),
//! as opposed to waiting for records. It is the union over the partitions, so it never exceeds
//! the wall time: a process whose partitions always have work is busy 100 % of the time,
//! whatever its partition count.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::api::{TaskManagerLoad, REDIS_LATENCY_WINDOW_SECS};

/// At most this many apply latencies are kept for the p99 (the newest ones).
const MAX_LATENCIES: usize = 4096;

/// Busy periods: how many partitions are busy now, since when, and the total of the ended ones.
#[derive(Debug, Default)]
struct Busy {
    active: u32,
    since: Option<Instant>,
    total: Duration,
}

/// The process' load meter, shared by its partition tasks (cheap to clone).
#[derive(Debug, Clone)]
pub struct LoadMeter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    started: Instant,
    busy: Mutex<Busy>,
    processed: AtomicU64,
    applies: AtomicU64,
    retries: AtomicU64,
    latencies: Mutex<VecDeque<(Instant, f64)>>,
    gauges: LoadMetrics,
}

/// The meter's Prometheus series (registered with [`crate::metrics::PipelineMetrics`]).
#[derive(Debug, Clone, Default)]
pub struct LoadMetrics {
    /// `streamjob_busy_seconds_total`.
    pub busy_seconds: Counter<f64, AtomicU64>,
    /// `streamjob_redis_apply_retries_total`.
    pub redis_apply_retries: Counter,
    /// `streamjob_redis_apply_p99_seconds` (refreshed at every report).
    pub redis_apply_p99_seconds: Gauge<f64, AtomicU64>,
}

/// Marks the process busy while it lives.
#[must_use = "the process is busy only while the guard lives"]
pub struct BusyGuard {
    meter: LoadMeter,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.meter.leave(Instant::now());
    }
}

impl LoadMetrics {
    /// The pipeline's series of the meter.
    pub fn of(metrics: &crate::metrics::PipelineMetrics) -> Self {
        Self {
            busy_seconds: metrics.busy_seconds.clone(),
            redis_apply_retries: metrics.redis_apply_retries.clone(),
            redis_apply_p99_seconds: metrics.redis_apply_p99_seconds.clone(),
        }
    }
}

impl LoadMeter {
    pub fn new(gauges: LoadMetrics) -> Self {
        Self::started_at(Instant::now(), gauges)
    }

    fn started_at(started: Instant, gauges: LoadMetrics) -> Self {
        Self {
            inner: Arc::new(Inner {
                started,
                busy: Mutex::new(Busy::default()),
                processed: AtomicU64::new(0),
                applies: AtomicU64::new(0),
                retries: AtomicU64::new(0),
                latencies: Mutex::new(VecDeque::new()),
                gauges,
            }),
        }
    }

    fn busy(&self) -> MutexGuard<'_, Busy> {
        self.inner.busy.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A partition starts deciding or applying; busy until the guard is dropped.
    pub fn enter(&self) -> BusyGuard {
        self.enter_at(Instant::now());
        BusyGuard {
            meter: self.clone(),
        }
    }

    fn enter_at(&self, now: Instant) {
        let mut busy = self.busy();
        if busy.active == 0 {
            busy.since = Some(now);
        }
        busy.active += 1;
    }

    fn leave(&self, now: Instant) {
        let mut busy = self.busy();
        busy.active = busy.active.saturating_sub(1);
        if busy.active == 0 {
            if let Some(since) = busy.since.take() {
                let period = now.saturating_duration_since(since);
                busy.total += period;
                self.inner.gauges.busy_seconds.inc_by(period.as_secs_f64());
            }
        }
    }

    /// `events` were applied to Redis.
    pub fn processed(&self, events: u64) {
        self.inner.processed.fetch_add(events, Ordering::Relaxed);
    }

    /// One batch apply reached Redis and took `took` (retries are separate applies).
    pub fn applied(&self, took: Duration) {
        self.applied_at(Instant::now(), took);
    }

    fn applied_at(&self, now: Instant, took: Duration) {
        self.inner.applies.fetch_add(1, Ordering::Relaxed);
        let mut latencies = self
            .inner
            .latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if latencies.len() >= MAX_LATENCIES {
            latencies.pop_front();
        }
        latencies.push_back((now, took.as_secs_f64() * 1_000.0));
    }

    /// A batch apply failed with a retryable error and is retried.
    pub fn retried(&self) {
        self.inner.retries.fetch_add(1, Ordering::Relaxed);
        self.inner.gauges.redis_apply_retries.inc();
    }

    /// The counters as they stand, with the p99 over the recent window.
    pub fn report(&self) -> TaskManagerLoad {
        self.report_at(Instant::now())
    }

    fn report_at(&self, now: Instant) -> TaskManagerLoad {
        let busy = {
            let busy = self.busy();
            busy.total
                + busy
                    .since
                    .map_or(Duration::ZERO, |s| now.saturating_duration_since(s))
        };
        let p99 = self.recent_p99(now);
        self.inner.gauges.redis_apply_p99_seconds.set(p99 / 1_000.0);
        TaskManagerLoad {
            elapsed_ms: millis(now.saturating_duration_since(self.inner.started)),
            busy_ms: millis(busy),
            processed_events: self.inner.processed.load(Ordering::Relaxed),
            redis_applies: self.inner.applies.load(Ordering::Relaxed),
            redis_retries: self.inner.retries.load(Ordering::Relaxed),
            redis_apply_p99_ms: p99,
        }
    }

    /// p99 (ms) of the applies within the recent window; older ones are dropped.
    fn recent_p99(&self, now: Instant) -> f64 {
        let window = Duration::from_secs(REDIS_LATENCY_WINDOW_SECS);
        let mut latencies = self
            .inner
            .latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        while latencies
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > window)
        {
            latencies.pop_front();
        }
        let mut values: Vec<f64> = latencies.iter().map(|(_, ms)| *ms).collect();
        drop(latencies);
        percentile(&mut values, 0.99)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The `q` quantile (nearest rank) of `values`; 0 for none.
pub fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = (q * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meter(start: Instant) -> LoadMeter {
        LoadMeter::started_at(start, LoadMetrics::default())
    }

    #[test]
    fn overlapping_busy_partitions_count_once() {
        let t0 = Instant::now();
        let m = meter(t0);
        let s = |ms: u64| t0 + Duration::from_millis(ms);
        // Partition A busy 100..400, partition B 200..500: the union is 100..500.
        m.enter_at(s(100));
        m.enter_at(s(200));
        m.leave(s(400));
        m.leave(s(500));
        // Alone again 800..900.
        m.enter_at(s(800));
        m.leave(s(900));
        let load = m.report_at(s(1_000));
        assert_eq!((load.elapsed_ms, load.busy_ms), (1_000, 500));
        assert_eq!(m.inner.gauges.busy_seconds.get(), 0.5);
    }

    #[test]
    fn a_busy_period_in_progress_counts_up_to_now() {
        let t0 = Instant::now();
        let m = meter(t0);
        m.enter_at(t0 + Duration::from_millis(600));
        let load = m.report_at(t0 + Duration::from_millis(1_000));
        assert_eq!(load.busy_ms, 400);
    }

    #[test]
    fn the_p99_covers_only_the_recent_window() {
        let t0 = Instant::now();
        let m = meter(t0);
        // An old slow apply, then 100 fast ones of 1..=100 ms.
        m.applied_at(t0, Duration::from_secs(2));
        let later = t0 + Duration::from_secs(REDIS_LATENCY_WINDOW_SECS + 5);
        for ms in 1..=100 {
            m.applied_at(later, Duration::from_millis(ms));
        }
        m.retried();
        let load = m.report_at(later);
        assert_eq!(load.redis_apply_p99_ms, 99.0);
        assert_eq!((load.redis_applies, load.redis_retries), (101, 1));
        assert_eq!(m.inner.gauges.redis_apply_p99_seconds.get(), 0.099);
        let idle = meter(t0).report_at(t0);
        assert_eq!(idle.redis_apply_p99_ms, 0.0);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        assert_eq!(percentile(&mut [], 0.99), 0.0);
        assert_eq!(percentile(&mut [3.0, 1.0, 2.0], 0.5), 2.0);
        assert_eq!(percentile(&mut [5.0], 0.99), 5.0);
    }
}
