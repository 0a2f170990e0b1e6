//! One partition's task: read its queue, decode, batch by `batch.maxEvents`/`batch.linger`,
//! dead-letter, apply, commit. Exactly-once order per batch:
//!
//! 1. every dead-lettered record of the batch is acknowledged by the DLQ topic's broker;
//! 2. the batch (writes + fence advance past every offset it covers, dead-lettered ones included)
//!    is applied by one Redis script;
//! 3. only then is the offset reported as committed (and, asynchronously, committed to the
//!    consumer group for Kafka tooling).
//!
//! While a batch cannot be applied (Redis down) the task keeps it, pauses the partition's fetches
//! and retries with capped exponential backoff and jitter: backpressure, not unbounded buffering.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::{FutureExt, StreamExt};
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot, watch};

use super::backoff::jitter_unit;
use super::Shared;
use crate::metrics::PartitionGauges;
use crate::sink::redis::window::{SeriesAccumulator, SeriesPlan, CLOCK_FIELD};
use crate::sink::redis::{system_time_ms, ApplyOutcome, BatchBuilder, SinkError};
use crate::source::{DeadLetter, KafkaContext};
use crate::transform::decode;

/// How often a partition commits its offset to the consumer group (for tooling only).
const GROUP_COMMIT_INTERVAL: Duration = Duration::from_secs(1);

const NONE: i64 = i64::MIN;

fn to_opt(v: i64) -> Option<i64> {
    (v != NONE).then_some(v)
}

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

/// What the owning [`super::Pipeline`] and the progress reports see of a partition.
#[derive(Debug)]
pub(crate) struct PartitionState {
    pub partition: i32,
    pub epoch: u64,
    committed: AtomicI64,
    high_watermark: AtomicI64,
    applied_events: AtomicU64,
    retrying: AtomicBool,
    /// Largest event time applied (the fence's `max_event_ms`); see `sink::redis::window`.
    clock: AtomicI64,
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
            retrying: AtomicBool::new(false),
            clock: AtomicI64::new(clock.unwrap_or(NONE)),
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

    fn set_committed(&self, next_offset: i64) {
        self.committed.store(next_offset, Ordering::Release);
        self.gauges.committed_offset.set(next_offset);
        self.update_lag();
    }

    pub fn high_watermark(&self) -> Option<i64> {
        to_opt(self.high_watermark.load(Ordering::Acquire))
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

    fn set_clock(&self, clock: Option<i64>) {
        if let Some(c) = clock {
            self.clock.store(c, Ordering::Release);
        }
    }

    fn mark_active(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_active_ms.store(ms, Ordering::Relaxed);
    }

    /// No records flushed for `timeout` (counted from the partition's start).
    pub fn is_idle(&self, timeout: Duration) -> bool {
        let last = Duration::from_millis(self.last_active_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last) > timeout
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

    pub fn exit(&self) -> Option<PartitionExit> {
        self.exit.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_exit(&self, exit: PartitionExit) {
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

/// How the first record read after (re)starting a partition relates to its fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResumeCheck {
    /// It is the fence's `next_offset` (or there is no fence yet).
    Contiguous,
    /// The broker no longer has `count` offsets from the fence on: retention or compaction
    /// deleted them before they were processed (or they were transaction markers).
    Gap { from: i64, count: i64 },
    /// The log restarts below the fence (topic recreated, or unclean leader election): records
    /// up to the fence are skipped as already applied.
    Rewound { fence: i64, first: i64 },
}

fn resume_check(fence: Option<i64>, first: i64) -> ResumeCheck {
    match fence {
        Some(fence) if first > fence => ResumeCheck::Gap {
            from: fence,
            count: first - fence,
        },
        Some(fence) if first < fence => ResumeCheck::Rewound { fence, first },
        _ => ResumeCheck::Contiguous,
    }
}

/// Messages from the owning pipeline.
#[derive(Debug)]
pub(crate) enum Control {
    /// Flush the in-flight batch, stop, reply with the committed next offset.
    Stop { reply: oneshot::Sender<Option<i64>> },
}

pub(crate) struct PartitionTask {
    pub shared: Arc<Shared>,
    pub state: Arc<PartitionState>,
    pub queue: StreamPartitionQueue<KafkaContext>,
    pub control: mpsc::Receiver<Control>,
    /// Set by the owner when a stop has waited `batch.stopTimeout` for the in-flight batch.
    pub abandon: watch::Receiver<bool>,
}

/// The in-flight batch.
struct InFlight {
    builder: BatchBuilder,
    dead_letters: Vec<DeadLetter>,
    /// Kafka timestamps (ms) of the batch's events, for the produce → Redis latency histogram.
    timestamps: Vec<i64>,
    /// The batch's event-time series counts (when `window.enabled`).
    series: SeriesAccumulator,
    deadline: Option<tokio::time::Instant>,
}

impl PartitionTask {
    pub async fn run(mut self) -> PartitionExit {
        let mut last_group_commit = Instant::now();
        let mut in_flight = self.new_in_flight();
        let max_events = self.shared.config.batch.max_events;
        let linger = self.shared.config.batch.linger;
        // Checked against the first record only: later gaps are normal (transaction markers).
        let mut resume_from = Some(self.state.committed());
        // One stream and one timer for the task's life: `recv()` registers a waker slot per
        // record, and a fresh `sleep_until` per loop a timer entry (both were visible in
        // profiles at 60k records/s).
        let mut records = self.queue.stream();
        let linger_timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(linger_timer);
        let exit = loop {
            let mut flushed = false;
            tokio::select! {
                biased;
                control = self.control.recv() => {
                    let result = self.flush(&mut in_flight).await;
                    let committed = self.state.committed();
                    if let Some(Control::Stop { reply }) = control {
                        let _ = reply.send(committed);
                    }
                    if let Err(exit) = result {
                        break exit;
                    }
                    self.commit_to_group();
                    break PartitionExit::Stopped;
                }
                () = &mut linger_timer, if in_flight.deadline.is_some() => {
                    if let Err(exit) = self.flush(&mut in_flight).await {
                        break exit;
                    }
                    flushed = true;
                }
                message = records.next() => match message {
                    Some(Ok(message)) => {
                        if let Some(fence) = resume_from.take() {
                            self.report_resume(resume_check(fence, message.offset()));
                        }
                        self.take(&mut in_flight, &message);
                        drop(message);
                        if in_flight.deadline.is_none() {
                            let deadline = tokio::time::Instant::now() + linger;
                            in_flight.deadline = Some(deadline);
                            linger_timer.as_mut().reset(deadline);
                        }
                        // Take what is already fetched, up to a full batch, without a round
                        // through `select!` per record (control and linger are checked between
                        // bursts; a burst is at most one batch).
                        while in_flight.builder.len() < max_events {
                            match records.next().now_or_never() {
                                Some(Some(Ok(message))) => self.take(&mut in_flight, &message),
                                Some(Some(Err(err))) => {
                                    self.fetch_error(&err);
                                    break;
                                }
                                Some(None) | None => break,
                            }
                        }
                        if in_flight.builder.len() >= max_events {
                            if let Err(exit) = self.flush(&mut in_flight).await {
                                break exit;
                            }
                            flushed = true;
                        }
                    }
                    Some(Err(err)) => self.fetch_error(&err),
                    None => break PartitionExit::Failed("the partition's stream ended".into()),
                },
            }
            // Only a flush moves the committed offset; checking the clock per record would cost
            // a few percent of the worker's CPU.
            if flushed && last_group_commit.elapsed() >= GROUP_COMMIT_INTERVAL {
                self.commit_to_group();
                last_group_commit = Instant::now();
            }
        };
        drop(records);
        if exit != PartitionExit::Stopped {
            // Stop fetching at once; the owner learns about it from `exit`.
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&self.shared.config.source.kafka.topic, self.state.partition);
            if let Err(err) = self.shared.consumer.incremental_unassign(&tpl) {
                tracing::warn!(%err, "cannot unassign the stopped partition");
            }
        }
        self.state.set_exit(exit.clone());
        exit
    }

    fn new_in_flight(&self) -> InFlight {
        InFlight {
            builder: self
                .shared
                .sink
                .batch_builder(self.state.partition, self.state.epoch),
            dead_letters: Vec::new(),
            timestamps: Vec::new(),
            series: SeriesAccumulator::default(),
            deadline: None,
        }
    }

    fn take(&self, in_flight: &mut InFlight, message: &BorrowedMessage<'_>) {
        let metrics = self.shared.metrics.pipeline();
        metrics.events_in.inc();
        let offset = message.offset();
        let payload = message.payload().unwrap_or_default();
        match decode(payload) {
            Ok(event) => {
                in_flight.builder.push_event(offset, &event);
                if let Some(rules) = &self.shared.window {
                    in_flight.series.push(
                        rules,
                        event.business_id,
                        event.state,
                        event.log_timestamp,
                        event.ids.len() as i64,
                    );
                }
                if let Some(ts) = message.timestamp().to_millis() {
                    in_flight.timestamps.push(ts);
                }
            }
            Err(err) => {
                tracing::debug!(offset, reason = %err, "dead-lettering an undecodable record");
                in_flight.dead_letters.push(DeadLetter {
                    partition: self.state.partition,
                    offset,
                    payload: payload.to_vec(),
                    reason: err.reason(),
                    kind: err.kind(),
                });
                in_flight.builder.push_skipped(offset);
            }
        }
    }

    fn fetch_error(&self, err: &rdkafka::error::KafkaError) {
        tracing::warn!(%err, "kafka fetch error (librdkafka retries)");
        self.shared.metrics.pipeline().kafka_error("fetch");
    }

    fn report_resume(&self, check: ResumeCheck) {
        match check {
            ResumeCheck::Contiguous => {}
            ResumeCheck::Gap { from, count } => {
                self.shared
                    .metrics
                    .pipeline()
                    .resume_gap_offsets
                    .inc_by(count.max(0) as u64);
                tracing::error!(
                    from,
                    count,
                    "the broker no longer has {count} offsets from the partition's fence on \
                     (retention or compaction deleted them before they were processed); \
                     continuing after them"
                );
            }
            ResumeCheck::Rewound { fence, first } => tracing::error!(
                fence,
                first,
                "the partition's log restarts below its fence (topic recreated?); records \
                 below the fence are skipped as already applied"
            ),
        }
    }

    /// Pauses fetching for this partition while a retry loop holds its batch.
    fn set_paused(&self, paused: bool) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.shared.config.source.kafka.topic, self.state.partition);
        let result = if paused {
            self.shared.consumer.pause(&tpl)
        } else {
            self.shared.consumer.resume(&tpl)
        };
        if let Err(err) = result {
            tracing::warn!(%err, paused, "cannot pause/resume the partition");
        }
        self.state.retrying.store(paused, Ordering::Relaxed);
        self.state.gauges.retrying.set(i64::from(paused));
    }

    async fn backoff(&self, attempt: u32) {
        self.shared.metrics.pipeline().retries.inc();
        let delay = self.shared.backoff.delay(attempt, jitter_unit());
        tokio::time::sleep(delay).await;
    }

    /// Dead-letters, then applies the in-flight batch; retries what is retryable.
    async fn flush(&self, in_flight: &mut InFlight) -> Result<(), PartitionExit> {
        in_flight.deadline = None;
        if in_flight.builder.is_empty() {
            return Ok(());
        }
        let mut paused = false;
        // Dropping the flush half-way is safe: the apply script is atomic and fenced, so a
        // batch either moved the fence or left no trace, and the next owner starts at the fence.
        let result = tokio::select! {
            result = self.flush_inner(in_flight, &mut paused) => result,
            () = abandoned(self.abandon.clone()) => {
                self.shared.metrics.pipeline().batch("abandoned");
                tracing::warn!(
                    from_offset = self.state.committed(),
                    "stopping without the in-flight batch, which could not be applied within \
                     batch.stopTimeout; the partition's next owner re-reads it from the fence"
                );
                Err(PartitionExit::Abandoned)
            }
        };
        if paused {
            self.set_paused(false);
        }
        result
    }

    async fn flush_inner(
        &self,
        in_flight: &mut InFlight,
        paused: &mut bool,
    ) -> Result<(), PartitionExit> {
        let metrics = self.shared.metrics.pipeline();
        // 1. The DLQ records, acknowledged before the fence moves past their offsets.
        let mut pending = std::mem::take(&mut in_flight.dead_letters);
        let mut attempt = 0;
        while !pending.is_empty() {
            match self.shared.dlq.deliver_all(&pending).await {
                Ok(()) => {
                    for record in &pending {
                        metrics.dead_lettered(record.kind).inc();
                    }
                    pending.clear();
                }
                Err((failed, err)) => {
                    tracing::warn!(%err, failed = failed.len(), attempt, "dead-letter delivery failed; retrying");
                    metrics.kafka_error("dlq_delivery");
                    let mut index = 0;
                    pending.retain(|_| {
                        let keep = failed.contains(&index);
                        index += 1;
                        keep
                    });
                    // Counted only once delivered; the ones delivered now are done.
                    if !*paused {
                        self.set_paused(true);
                        *paused = true;
                    }
                    self.backoff(attempt).await;
                    attempt = attempt.saturating_add(1);
                }
            }
        }

        // 2. One atomic script: writes + fence.
        let builder = std::mem::replace(
            &mut in_flight.builder,
            self.shared
                .sink
                .batch_builder(self.state.partition, self.state.epoch),
        );
        let mut builder = builder;
        let now = SystemTime::now();
        let series = self.plan_series(in_flight, &mut builder, now);
        let _in_flight_floor = series.as_ref().map(|_| BatchFloor {
            board: &self.shared.board,
            partition: self.state.partition,
        });
        let batch = builder.build(now);
        self.state.mark_active();
        let mut attempt = 0;
        let outcome = loop {
            let started = Instant::now();
            match self.shared.sink.apply(&batch).await {
                Ok(outcome) => {
                    metrics
                        .batch_apply_seconds
                        .observe(started.elapsed().as_secs_f64());
                    break outcome;
                }
                Err(err) if err.is_retryable() => {
                    metrics.redis_error(err.kind());
                    tracing::warn!(%err, attempt, first_offset = batch.first_offset, "batch apply failed; partition paused, retrying");
                    if !*paused {
                        self.set_paused(true);
                        *paused = true;
                    }
                    self.backoff(attempt).await;
                    attempt = attempt.saturating_add(1);
                }
                Err(SinkError::Fenced { stored_epoch, .. }) => {
                    metrics.redis_error("fenced");
                    tracing::warn!(
                        stored_epoch,
                        "partition fenced by a newer owner; stopping it"
                    );
                    return Err(PartitionExit::Fenced { stored_epoch });
                }
                Err(err) => {
                    metrics.redis_error(err.kind());
                    tracing::error!(%err, "batch apply failed for good; stopping the partition");
                    return Err(PartitionExit::Failed(err.to_string()));
                }
            }
        };
        match outcome {
            ApplyOutcome::Applied {
                events,
                commands,
                write_errors,
            } => {
                metrics.batch("applied");
                metrics.events_written.inc_by(events as u64);
                metrics.redis_commands.inc_by(commands as u64);
                metrics.redis_write_errors.inc_by(write_errors as u64);
                metrics.batch_events.observe(events as f64);
                self.state
                    .applied_events
                    .fetch_add(events as u64, Ordering::Relaxed);
                let now_ms = crate::sink::redis::system_time_ms(SystemTime::now());
                for ts in in_flight.timestamps.drain(..) {
                    metrics
                        .produce_to_redis_seconds
                        .observe((now_ms - ts).max(0) as f64 / 1000.0);
                }
                if let Some(plan) = &series {
                    metrics.series("on_time", plan.on_time_events);
                    metrics.series("late", plan.late_events);
                    metrics.series("skewed", plan.skewed_events);
                    self.set_clock(plan.clock);
                }
            }
            ApplyOutcome::AlreadyApplied => {
                metrics.batch("already_applied");
                if series.is_some() {
                    // Someone applied this range: take the clock that went with it.
                    match self.shared.sink.read_fence(self.state.partition).await {
                        Ok(fence) => self.set_clock(fence.and_then(|f| f.max_event_ms)),
                        Err(err) => tracing::warn!(%err, "cannot read the fence's clock"),
                    }
                }
            }
        }
        in_flight.timestamps.clear();
        self.state.set_committed(batch.next_offset);
        Ok(())
    }

    /// Decides the batch's event-time series (window, late or skewed per group, against the
    /// clock the fence holds and the job watermark learned) and adds its writes to the batch.
    fn plan_series(
        &self,
        in_flight: &mut InFlight,
        builder: &mut BatchBuilder,
        now: SystemTime,
    ) -> Option<SeriesPlan> {
        let rules = self.shared.window?;
        let series = std::mem::take(&mut in_flight.series);
        if series.is_empty() {
            return None;
        }
        let learned = self.shared.board.begin_batch(self.state.partition);
        let clock = self.state.clock();
        let plan = series.plan(&rules, clock, learned, system_time_ms(now));
        let layout = self.shared.sink.layout();
        let mut key = String::new();
        for (business_id, field, delta) in &plan.increments {
            layout.write_series_key(&mut key, *business_id);
            builder.add_hash_increment(&key, field, *delta);
        }
        if let Some(new_clock) = plan.clock.filter(|c| Some(*c) != clock) {
            builder.set_fence_field(CLOCK_FIELD, new_clock);
        }
        Some(plan)
    }

    fn set_clock(&self, clock: Option<i64>) {
        self.state.set_clock(clock);
        if let (Some(rules), Some(c)) = (self.shared.window, self.state.clock()) {
            self.state.gauges.watermark.set(rules.watermark_of(c));
        }
    }

    /// Reports the committed offset to the consumer group (Kafka tooling only; the fence is the
    /// truth). Asynchronous: a failure is logged and retried on the next interval.
    fn commit_to_group(&self) {
        let Some(next) = self.state.committed() else {
            return;
        };
        let mut tpl = TopicPartitionList::new();
        if tpl
            .add_partition_offset(
                &self.shared.config.source.kafka.topic,
                self.state.partition,
                Offset::Offset(next),
            )
            .is_err()
        {
            return;
        }
        if let Err(err) = self.shared.consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!(%err, "group offset commit failed (tooling only)");
            self.shared.metrics.pipeline().kafka_error("group_commit");
        }
    }
}

/// Holds a batch's learned watermark on the board until the batch is applied or given up.
struct BatchFloor<'a> {
    board: &'a super::watermark::WatermarkBoard,
    partition: i32,
}

impl Drop for BatchFloor<'_> {
    fn drop(&mut self) {
        self.board.end_batch(self.partition);
    }
}

/// Resolves once the owner gives up on the in-flight batch (never if the owner is gone).
async fn abandoned(mut abandon: watch::Receiver<bool>) {
    if abandon.wait_for(|abandon| *abandon).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_record_after_a_restart_is_checked_against_the_fence() {
        assert_eq!(resume_check(None, 0), ResumeCheck::Contiguous);
        assert_eq!(resume_check(None, 500), ResumeCheck::Contiguous);
        assert_eq!(resume_check(Some(42), 42), ResumeCheck::Contiguous);
        assert_eq!(
            resume_check(Some(42), 1_042),
            ResumeCheck::Gap {
                from: 42,
                count: 1_000
            }
        );
        assert_eq!(
            resume_check(Some(42), 0),
            ResumeCheck::Rewound {
                fence: 42,
                first: 0
            }
        );
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
