//! One partition's task: read its queue, decode, batch by `batch.maxEvents`/`batch.linger`,
//! dead-letter, apply, commit. Exactly-once order per batch:
//!
//! 1. every dead-lettered record of the batch is acknowledged by the DLQ topic's broker;
//! 2. the batch (writes + fence advance past every offset it covers, dead-lettered ones included)
//!    is applied in one Redis transaction (`flush.rs`);
//! 3. only then is the offset reported as committed (and, asynchronously, committed to the
//!    consumer group for Kafka tooling).
//!
//! While a batch cannot be applied (Redis down) the task keeps it, pauses the partition's fetches
//! and retries with capped exponential backoff and jitter: backpressure, not unbounded buffering.
//!
//! Batches are contiguous: each covers offsets from where the previous one ended (or where the
//! partition resumed), so offsets without records never look like a gap to the apply.
//!
//! # Rewind
//!
//! When the apply answers [`SinkError::Gap`], Redis lost writes it had acknowledged (a failover to
//! a lagging replica, a restart from an older snapshot): its fence ends before this batch, or has
//! vanished. The task drops its in-flight batch, seeks the consumer back to the fence (when the
//! fence vanished: rewrites it at the earliest offset the broker still has, keeping this owner's
//! epoch), and re-reads and re-applies from there. It logs an ERROR, counts the rewind and the
//! offsets in `streamjob_partition_rewinds_total` / `streamjob_partition_rewound_offsets_total`,
//! and reports it to the jobmanager, which gives a later owner of the partition where this one
//! had been (see `Coordinator::resume_offset`). The fence's event-time marks come with the gap,
//! read by the apply that found it, so the re-read range is decided as it was before the loss
//! (`series.rs`). Undecodable records of the re-read range that this task
//! already dead-lettered are not sent to the DLQ again (a new process cannot know, so after a
//! restart they may be; the DLQ record's key tells duplicates apart).
//!
//! An [`SinkError::Overlap`] (the fence strictly inside the batch, which contiguous batches of one
//! owner never produce) is refused whole and the task seeks forward to the fence: the part of the
//! batch below it is in Redis already, the rest is read again.
//!
//! # Cuts (Redis Cluster)
//!
//! On a cluster every slot has its own fence, and after a claim or a rewind the slots may stand
//! at different offsets. The sink names the offsets where some slot's fence begins or ends
//! ([`crate::sink::redis::RedisSink::cuts`]); the task ends its batch before a record at or past
//! the next one, so each batch is, in every slot, wholly applied already or not at all.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot, watch};

use super::backoff::jitter_unit;
use super::partition_state::{PartitionExit, PartitionState};
use super::Shared;
use crate::sink::redis::window::{SeriesAccumulator, SeriesMarks};
use crate::sink::redis::{BatchBuilder, SinkError};
use crate::source::{DeadLetter, KafkaContext};
use crate::transform::decode;

/// How often a partition commits its offset to the consumer group (for tooling only).
const GROUP_COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// How often an idle partition (nothing in flight) reads its fence: Redis may lose writes while
/// no batch comes to notice (a rollback after the last record), and the partition must still
/// rewind and re-apply them.
const IDLE_FENCE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

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
pub(super) struct InFlight {
    pub(super) builder: BatchBuilder,
    pub(super) dead_letters: Vec<DeadLetter>,
    /// Kafka timestamps (ms) of the batch's events, for the produce → Redis latency histogram.
    pub(super) timestamps: Vec<i64>,
    /// The batch's event-time series counts (with `window.enabled`; `series.rs`).
    pub(super) series: SeriesAccumulator,
    pub(super) deadline: Option<tokio::time::Instant>,
    /// `Some(fence)` until the first record after a (re)start or a rewind was checked against it.
    resume_from: Option<Option<i64>>,
    /// Every undecodable record below this offset was delivered to the DLQ by this task: one
    /// read again after a rewind is not delivered twice.
    pub(super) dlq_delivered_upto: i64,
    /// Where batches must end (see the module documentation), ascending.
    pub(super) cuts: std::collections::VecDeque<i64>,
}

impl InFlight {
    /// Whether the record at `offset` must not join the in-flight batch: a cut lies after the
    /// batch's start and at or before `offset`.
    fn must_cut(&mut self, offset: i64) -> bool {
        let Some(first) = self.builder.first_offset() else {
            return false;
        };
        while self.cuts.front().is_some_and(|cut| *cut <= first) {
            self.cuts.pop_front();
        }
        self.cuts.front().is_some_and(|cut| *cut <= offset)
    }
}

/// Where the apply said the partition must continue from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reposition {
    /// Redis lost writes: its fence (`None`: vanished) is before `from`, this batch's start;
    /// `marks` what the fence stores of the event-time series.
    Rewind {
        fence: Option<i64>,
        from: i64,
        marks: SeriesMarks,
    },
    /// The fence lies inside the batch: continue at the fence.
    Skip { fence: i64, from: i64 },
}

impl PartitionTask {
    pub async fn run(mut self) -> PartitionExit {
        let mut last_group_commit = Instant::now();
        let mut in_flight = self.new_in_flight();
        let max_events = self.shared.config.batch.max_events;
        let linger = self.shared.config.batch.linger;
        // One stream and one timer for the task's life: `recv()` registers a waker slot per
        // record, and a fresh `sleep_until` per loop a timer entry (both were visible in
        // profiles at 60k records/s).
        let mut records = self.queue.stream();
        let linger_timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(linger_timer);
        let mut fence_check = tokio::time::interval(IDLE_FENCE_CHECK_INTERVAL);
        fence_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if let Some(from) = self.state.committed() {
            in_flight.cuts = self
                .shared
                .sink
                .cuts(self.state.partition, from)
                .await
                .into();
        }
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
                        // Busy from here until the burst is taken (and flushed, when full).
                        let _busy = self.shared.load.enter();
                        // Checked against the first record only: later gaps are normal
                        // (transaction markers).
                        if let Some(fence) = in_flight.resume_from.take() {
                            self.report_resume(resume_check(fence, message.offset()));
                        }
                        match self.cut_before(&mut in_flight, message.offset()).await {
                            Ok(true) => {}
                            Ok(false) => continue,
                            Err(exit) => break exit,
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
                        let mut stopped = None;
                        while in_flight.builder.len() < max_events {
                            match records.next().now_or_never() {
                                Some(Some(Ok(message))) => {
                                    match self.cut_before(&mut in_flight, message.offset()).await {
                                        Ok(true) => self.take(&mut in_flight, &message),
                                        Ok(false) => break,
                                        Err(exit) => {
                                            stopped = Some(exit);
                                            break;
                                        }
                                    }
                                }
                                Some(Some(Err(err))) => {
                                    self.fetch_error(&err);
                                    break;
                                }
                                Some(None) | None => break,
                            }
                        }
                        if let Some(exit) = stopped {
                            break exit;
                        }
                        if in_flight.deadline.is_none() && !in_flight.builder.is_empty() {
                            // A cut flushed the batch: the records after it linger anew.
                            let deadline = tokio::time::Instant::now() + linger;
                            in_flight.deadline = Some(deadline);
                            linger_timer.as_mut().reset(deadline);
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
                _ = fence_check.tick(), if in_flight.builder.is_empty() => {
                    if let Err(exit) = Box::pin(self.check_idle_fence(&mut in_flight)).await {
                        break exit;
                    }
                }
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
        let committed = self.state.committed();
        InFlight {
            builder: self.new_builder(committed),
            dead_letters: Vec::new(),
            timestamps: Vec::new(),
            series: SeriesAccumulator::default(),
            deadline: None,
            resume_from: Some(committed),
            dlq_delivered_upto: i64::MIN,
            cuts: Default::default(),
        }
    }

    /// Ends the in-flight batch before the record at `offset` when a cut lies in between.
    /// Returns whether to take the record: not when the flush repositioned the partition (the
    /// record is read again, or not at all, from where it goes on).
    async fn cut_before(
        &self,
        in_flight: &mut InFlight,
        offset: i64,
    ) -> Result<bool, PartitionExit> {
        if !in_flight.must_cut(offset) {
            return Ok(true);
        }
        self.flush(in_flight).await?;
        Ok(in_flight.resume_from.is_none())
    }

    /// A builder for the batch that starts at `from` (the position, when known).
    pub(super) fn new_builder(&self, from: Option<i64>) -> BatchBuilder {
        let mut builder = self
            .shared
            .sink
            .batch_builder(self.state.partition, self.state.epoch);
        if let Some(from) = from {
            builder.cover_from(from);
        }
        builder
    }

    fn take(&self, in_flight: &mut InFlight, message: &BorrowedMessage<'_>) {
        let metrics = self.shared.metrics.pipeline();
        metrics.events_in.inc();
        let offset = message.offset();
        let payload = message.payload().unwrap_or_default();
        match decode(payload) {
            Ok(event) => {
                in_flight.builder.push_event(offset, &event);
                self.count_in_series(in_flight, &event);
                if let Some(ts) = message.timestamp().to_millis() {
                    in_flight.timestamps.push(ts);
                }
            }
            Err(_) if offset < in_flight.dlq_delivered_upto => {
                tracing::debug!(
                    offset,
                    "undecodable record re-read after a rewind; dead-lettered before"
                );
                metrics.dead_letters_not_repeated.inc();
                in_flight.builder.push_skipped(offset);
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
        self.state.note_error("kafka", "fetch", err);
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
    pub(super) fn set_paused(&self, paused: bool) {
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
        self.state.set_retrying(paused);
        self.state.gauges.retrying.set(i64::from(paused));
    }

    pub(super) async fn backoff(&self, attempt: u32) {
        self.shared.metrics.pipeline().retries.inc();
        let delay = self.shared.backoff.delay(attempt, jitter_unit());
        tokio::time::sleep(delay).await;
    }

    /// With nothing in flight, the fence must stand at the committed offset; behind it (or gone)
    /// Redis lost writes that no batch will come to reveal: rewind now.
    async fn check_idle_fence(&self, in_flight: &mut InFlight) -> Result<(), PartitionExit> {
        let Some(committed) = self.state.committed() else {
            return Ok(());
        };
        let fence = match self.shared.sink.read_fence(self.state.partition).await {
            Ok(fence) => fence,
            Err(err) => {
                tracing::debug!(%err, "cannot read the idle partition's fence; next time");
                return Ok(());
            }
        };
        if fence.is_some_and(|f| f.epoch > self.state.epoch) {
            // A newer owner: this one's next apply is fenced.
            return Ok(());
        }
        match fence.and_then(|f| f.next_offset) {
            Some(next) if next >= committed => Ok(()),
            stored => {
                self.shared.metrics.pipeline().redis_error("gap");
                let to = Reposition::Rewind {
                    fence: stored,
                    from: committed,
                    marks: fence.map(|f| f.series_marks()).unwrap_or_default(),
                };
                self.reposition(in_flight, to).await
            }
        }
    }

    /// Drops the in-flight batch and continues reading at the fence: a rewind when Redis lost
    /// writes (see the module documentation), a skip forward past an overlap.
    pub(super) async fn reposition(
        &self,
        in_flight: &mut InFlight,
        to: Reposition,
    ) -> Result<(), PartitionExit> {
        let partition = self.state.partition;
        let (from, to_offset, marks) = match to {
            Reposition::Rewind {
                fence: Some(fence),
                from,
                marks,
            } => (from, fence, Some(marks)),
            Reposition::Rewind {
                fence: None, from, ..
            } => {
                let restored = self.restore_fence().await?;
                (from, restored.0, Some(restored.1))
            }
            Reposition::Skip { fence, from } => (from, fence, None),
        };
        in_flight.builder = self.new_builder(Some(to_offset));
        in_flight.dead_letters.clear();
        in_flight.timestamps.clear();
        in_flight.series = SeriesAccumulator::default();
        in_flight.deadline = None;
        in_flight.resume_from = Some(Some(to_offset));
        self.seek(to_offset).await?;
        in_flight.cuts = self.shared.sink.cuts(partition, to_offset).await.into();
        // The clock goes back with the fence: the re-read events move it again; after a rewind
        // they are decided with what the fence's batch decided with (the marks the apply read
        // with its decision: a read of its own could fail and leave them unset).
        match marks {
            Some(marks) => self.rewind_series_marks(marks, from),
            None => self.reload_series_marks().await,
        }
        match to {
            Reposition::Rewind { fence, .. } => {
                self.state.record_rewind(from, to_offset);
                self.shared
                    .metrics
                    .pipeline()
                    .rewound(partition, from.saturating_sub(to_offset).max(0) as u64);
                tracing::error!(
                    job = %self.shared.config.job.name,
                    partition,
                    from,
                    to = to_offset,
                    fence_vanished = fence.is_none(),
                    "Redis lost acknowledged writes; partition {partition} rewound from {from} \
                     to {to_offset}: re-reading and re-applying offsets {from_}..{from}",
                    from_ = to_offset,
                );
            }
            Reposition::Skip { .. } => {
                self.state.set_committed(to_offset);
                tracing::warn!(
                    partition,
                    from,
                    to = to_offset,
                    "the fence lies inside the batch; refused whole, continuing at the fence"
                );
            }
        }
        Ok(())
    }

    /// The fence vanished (Redis replaced by an empty one, or the key deleted): writes it again
    /// at the earliest offset the broker still has, keeping this owner's epoch. Returns where
    /// the fence now stands, and its series marks.
    async fn restore_fence(&self) -> Result<(i64, SeriesMarks), PartitionExit> {
        let mut attempt = 0;
        loop {
            let result = match self.low_watermark().await {
                Ok(low) => self
                    .shared
                    .sink
                    .restore_fence(self.state.partition, self.state.epoch, low)
                    .await
                    .map(|fence| (fence.next_offset.unwrap_or(low), fence.series_marks())),
                Err(err) => Err(SinkError::Unavailable(format!("kafka watermarks: {err}"))),
            };
            match result {
                Ok(offset) => return Ok(offset),
                Err(SinkError::Fenced { stored_epoch, .. }) => {
                    return Err(PartitionExit::Fenced { stored_epoch })
                }
                Err(err) if err.is_retryable() => {
                    tracing::warn!(%err, attempt, "cannot restore the vanished fence yet; retrying");
                    self.backoff(attempt).await;
                    attempt = attempt.saturating_add(1);
                }
                Err(err) => return Err(PartitionExit::Failed(err.to_string())),
            }
        }
    }

    async fn low_watermark(&self) -> Result<i64, rdkafka::error::KafkaError> {
        let consumer = self.shared.consumer.clone();
        let topic = self.shared.config.source.kafka.topic.clone();
        let partition = self.state.partition;
        tokio::task::spawn_blocking(move || {
            consumer
                .fetch_watermarks(&topic, partition, Duration::from_secs(10))
                .map(|(low, _)| low)
        })
        .await
        .unwrap_or(Err(rdkafka::error::KafkaError::Canceled))
    }

    /// Moves the consumer to `offset`; librdkafka drops what it had fetched past it.
    async fn seek(&self, offset: i64) -> Result<(), PartitionExit> {
        let mut attempt = 0;
        loop {
            let consumer = self.shared.consumer.clone();
            let topic = self.shared.config.source.kafka.topic.clone();
            let partition = self.state.partition;
            let result = tokio::task::spawn_blocking(move || {
                consumer.seek(
                    &topic,
                    partition,
                    Offset::Offset(offset),
                    Duration::from_secs(10),
                )
            })
            .await
            .unwrap_or(Err(rdkafka::error::KafkaError::Canceled));
            match result {
                Ok(()) => return Ok(()),
                Err(err) if attempt < 10 => {
                    tracing::warn!(%err, attempt, offset, "cannot seek the partition yet; retrying");
                    self.backoff(attempt).await;
                    attempt += 1;
                }
                Err(err) => {
                    return Err(PartitionExit::Failed(format!(
                        "cannot seek to offset {offset}: {err}"
                    )))
                }
            }
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
}
