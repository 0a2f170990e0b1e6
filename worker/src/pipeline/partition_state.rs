//! What the owning pipeline, the progress reports and the metrics see of one partition: its
//! offsets, rate, rewinds, dead letters, last error, event-time clock and exit. Written by the
//! partition's task (`partition.rs`), read from anywhere.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::api::{PartitionError, Rewind};
use crate::metrics::PartitionGauges;
use crate::sink::redis::system_time_ms;

/// Why a partition task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionExit {
    /// Revoked or shut down after flushing.
    Stopped,
    /// A newer owner claimed the partition in Redis; this owner stopped consuming it.
    Fenced { stored_epoch: u64 },
    /// A non-retryable error (script, config, overlap): consuming stopped, nothing was skipped.
    Failed(String),
    /// Asked to stop while its in-flight batch could not be applied (Redis or the broker
    /// unreachable) for `batch.stopTimeout`: stopped without it. Nothing is lost; the records
    /// after the fence are re-read by the next owner.
    Abandoned,
}

const NONE: i64 = i64::MIN;

fn to_opt(v: i64) -> Option<i64> {
    (v != NONE).then_some(v)
}

/// What the owning [`super::Pipeline`] and the progress reports see of a partition.
#[derive(Debug)]
pub(crate) struct PartitionState {
    pub partition: i32,
    pub epoch: u64,
    committed: AtomicI64,
    high_watermark: AtomicI64,
    applied_events: AtomicU64,
    rewinds: AtomicU64,
    last_rewind: Mutex<Option<Rewind>>,
    retrying: AtomicBool,
    /// Dead-lettered records by reason kind, and the newest failure: shown in progress reports.
    dead_lettered: Mutex<BTreeMap<String, u64>>,
    last_error: Mutex<Option<PartitionError>>,
    /// Largest event time applied (the fence's `max_event_ms`); see `sink::redis::window`.
    clock: AtomicI64,
    /// After a rewind: offsets below this were applied before Redis lost them, and are decided
    /// again with `replay_learned` (the job watermark the fence's batch decided with).
    replay_until: AtomicI64,
    replay_learned: AtomicI64,
    started: Instant,
    /// Milliseconds after `started` of the last flush that carried records.
    last_active_ms: AtomicU64,
    rate: Mutex<RateMeter>,
    exit: Mutex<Option<PartitionExit>>,
    pub gauges: PartitionGauges,
}

impl PartitionState {
    pub fn new(
        partition: i32,
        epoch: u64,
        committed: Option<i64>,
        clock: Option<i64>,
        gauges: PartitionGauges,
    ) -> Self {
        if let Some(c) = committed {
            gauges.committed_offset.set(c);
        }
        Self {
            partition,
            epoch,
            committed: AtomicI64::new(committed.unwrap_or(NONE)),
            high_watermark: AtomicI64::new(NONE),
            applied_events: AtomicU64::new(0),
            rewinds: AtomicU64::new(0),
            last_rewind: Mutex::new(None),
            retrying: AtomicBool::new(false),
            dead_lettered: Mutex::new(BTreeMap::new()),
            last_error: Mutex::new(None),
            clock: AtomicI64::new(clock.unwrap_or(NONE)),
            replay_until: AtomicI64::new(NONE),
            replay_learned: AtomicI64::new(NONE),
            started: Instant::now(),
            last_active_ms: AtomicU64::new(0),
            rate: Mutex::new(RateMeter::default()),
            exit: Mutex::new(None),
            gauges,
        }
    }

    pub fn committed(&self) -> Option<i64> {
        to_opt(self.committed.load(Ordering::Acquire))
    }

    pub(super) fn set_committed(&self, next_offset: i64) {
        self.committed.store(next_offset, Ordering::Release);
        self.gauges.committed_offset.set(next_offset);
        self.update_lag();
    }

    /// Rewinds since this owner took the partition, and the latest.
    pub fn rewinds(&self) -> (u64, Option<Rewind>) {
        let last = *self.last_rewind.lock().unwrap_or_else(|e| e.into_inner());
        (self.rewinds.load(Ordering::Acquire), last)
    }

    /// Records a rewind (Redis lost writes up to `from`): the committed offset goes back to `to`.
    pub fn record_rewind(&self, from: i64, to: i64) {
        *self.last_rewind.lock().unwrap_or_else(|e| e.into_inner()) = Some(Rewind {
            from_offset: from,
            to_offset: to,
            at_ms: system_time_ms(SystemTime::now()).max(0) as u64,
        });
        self.rewinds.fetch_add(1, Ordering::AcqRel);
        self.set_committed(to);
    }

    /// The partition's end as last fetched from the broker, or the committed offset if that is
    /// further: the fetch runs once a second, so a busy partition's committed offset overtakes
    /// it in between (and a report showing committed > high watermark confused readers).
    pub fn high_watermark(&self) -> Option<i64> {
        let fetched = to_opt(self.high_watermark.load(Ordering::Acquire));
        match (fetched, self.committed()) {
            (Some(hw), Some(committed)) => Some(hw.max(committed)),
            (hw, _) => hw,
        }
    }

    pub fn set_high_watermark(&self, hw: i64) {
        self.high_watermark.store(hw, Ordering::Release);
        self.update_lag();
    }

    pub fn lag(&self) -> Option<i64> {
        Some((self.high_watermark()? - self.committed()?).max(0))
    }

    fn update_lag(&self) {
        if let Some(lag) = self.lag() {
            self.gauges.lag.set(lag);
        }
    }

    /// Largest event time applied.
    pub fn clock(&self) -> Option<i64> {
        to_opt(self.clock.load(Ordering::Acquire))
    }

    /// Sets the clock to the one stored with the fence (`None`: the fence has none).
    pub(super) fn set_clock(&self, clock: Option<i64>) {
        self.clock.store(clock.unwrap_or(NONE), Ordering::Release);
    }

    /// Redis lost what was applied below `until`: the re-read events are decided with `learned`
    /// (what the fence's batch decided with), so they land where they were counted before. A
    /// second loss during a re-apply keeps the first one's end: everything below it was applied
    /// before.
    pub(super) fn start_replay(&self, until: i64, learned: Option<i64>) {
        self.replay_learned
            .store(learned.unwrap_or(NONE), Ordering::Release);
        self.replay_until.fetch_max(until, Ordering::AcqRel);
    }

    /// For a batch starting at `first_offset`: `Some(learned)` while it re-applies what Redis
    /// lost (see [`Self::start_replay`]), `None` otherwise.
    pub(super) fn replay_learned(&self, first_offset: i64) -> Option<Option<i64>> {
        let until = to_opt(self.replay_until.load(Ordering::Acquire))?;
        (first_offset < until).then(|| to_opt(self.replay_learned.load(Ordering::Acquire)))
    }

    pub(super) fn mark_active(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_active_ms.store(ms, Ordering::Relaxed);
    }

    /// No records flushed for `timeout` (counted from the partition's start).
    pub fn is_idle(&self, timeout: Duration) -> bool {
        let last = Duration::from_millis(self.last_active_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last) > timeout
    }

    /// Events applied by this owner (the rate's source).
    pub(super) fn add_applied(&self, events: u64) {
        self.applied_events.fetch_add(events, Ordering::Relaxed);
    }

    pub(super) fn set_retrying(&self, retrying: bool) {
        self.retrying.store(retrying, Ordering::Relaxed);
    }

    pub fn is_retrying(&self) -> bool {
        self.retrying.load(Ordering::Relaxed)
    }

    pub fn events_per_second(&self) -> f64 {
        let total = self.applied_events.load(Ordering::Relaxed);
        self.rate
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(Instant::now(), total)
    }

    pub fn dead_lettered(&self) -> BTreeMap<String, u64> {
        self.dead_lettered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn last_error(&self) -> Option<PartitionError> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(super) fn count_dead_letter(&self, kind: &str) {
        let mut counts = self.dead_lettered.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry(kind.to_string()).or_insert(0) += 1;
    }

    /// Remembers a failure for the progress reports (the dashboard's "recent problems").
    pub(super) fn note_error(&self, source: &str, kind: &str, message: impl std::fmt::Display) {
        let error = PartitionError {
            at_ms: system_time_ms(SystemTime::now()).max(0) as u64,
            source: source.to_string(),
            kind: kind.to_string(),
            message: message.to_string(),
        };
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
    }

    pub fn exit(&self) -> Option<PartitionExit> {
        self.exit.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) fn set_exit(&self, exit: PartitionExit) {
        *self.exit.lock().unwrap_or_else(|e| e.into_inner()) = Some(exit);
    }
}

/// Events per second over windows of at least one second.
#[derive(Debug, Default)]
struct RateMeter {
    last: Option<(Instant, u64)>,
    rate: f64,
}

impl RateMeter {
    fn observe(&mut self, now: Instant, total: u64) -> f64 {
        match self.last {
            None => self.last = Some((now, total)),
            Some((at, seen)) => {
                let elapsed = now.duration_since(at).as_secs_f64();
                if elapsed >= 1.0 {
                    self.rate = total.saturating_sub(seen) as f64 / elapsed;
                    self.last = Some((now, total));
                }
            }
        }
        self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_high_watermark_is_never_reported_below_the_committed_offset() {
        let metrics = crate::metrics::Metrics::new();
        let state = PartitionState::new(
            0,
            1,
            Some(100),
            None,
            metrics.pipeline().partition_gauges(0),
        );
        assert_eq!(state.high_watermark(), None, "not fetched yet");
        state.set_high_watermark(150);
        assert_eq!((state.high_watermark(), state.lag()), (Some(150), Some(50)));
        state.set_committed(180);
        assert_eq!((state.high_watermark(), state.lag()), (Some(180), Some(0)));
    }

    #[test]
    fn rate_meter_reports_over_windows_of_a_second() {
        let mut meter = RateMeter::default();
        let t0 = Instant::now();
        assert_eq!(meter.observe(t0, 0), 0.0);
        assert_eq!(meter.observe(t0 + Duration::from_millis(500), 100), 0.0);
        let r = meter.observe(t0 + Duration::from_secs(2), 1000);
        assert!((r - 500.0).abs() < 1e-6, "{r}");
        assert!((meter.observe(t0 + Duration::from_millis(2500), 2000) - 500.0).abs() < 1e-6);
    }
}
