//! How a partition's in-flight batch reaches Redis, in the exactly-once order: its dead letters
//! acknowledged by the DLQ first, then the batch and the fence in one transaction, retried with
//! backoff while Redis cannot take it (the partition's fetches paused meanwhile), then what the
//! fence now says is counted and committed. A fence elsewhere sends the partition back or
//! forward (`Reposition`); a newer owner's fence stops it.

use std::time::{Instant, SystemTime};

use tokio::sync::watch;

use super::partition::{InFlight, PartitionTask, Reposition};
use super::partition_state::PartitionExit;
use crate::sink::redis::{ApplyOutcome, Batch, SinkError};

/// How a batch's apply ended: the fence took it (or had it already), or the partition must
/// continue elsewhere.
enum Applied {
    Outcome(ApplyOutcome),
    Reposition(Reposition),
}

impl PartitionTask {
    /// Dead-letters, then applies the in-flight batch; retries what is retryable.
    pub(super) async fn flush(&self, in_flight: &mut InFlight) -> Result<(), PartitionExit> {
        in_flight.deadline = None;
        if in_flight.builder.is_empty() {
            return Ok(());
        }
        let _busy = self.shared.load.enter();
        let mut paused = false;
        // Dropping the flush half-way is safe: the apply is one fenced transaction, so a
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
        // 1. The DLQ records, acknowledged before the fence moves past their offsets.
        self.deliver_dead_letters(in_flight, paused).await;
        in_flight.dlq_delivered_upto = in_flight
            .dlq_delivered_upto
            .max(in_flight.builder.next_offset());

        // 2. One atomic transaction: writes + fence.
        let mut builder = std::mem::replace(&mut in_flight.builder, self.new_builder(None));
        let now = SystemTime::now();
        let series = self.plan_series(in_flight, &mut builder, now);
        // Holds the job watermark the series was decided with until the batch is done.
        let _decided_with = series.as_ref().map(|_| self.hold_watermark());
        let batch = builder.build(now);
        self.state.mark_active();
        let outcome = match self.apply_until_decided(&batch, paused).await? {
            Applied::Outcome(outcome) => outcome,
            // Boxed: the rewind's futures would otherwise nest the task's future past the
            // compiler's layout depth.
            Applied::Reposition(to) => return Box::pin(self.reposition(in_flight, to)).await,
        };

        // 3. What the fence now says this partition has done.
        match outcome {
            ApplyOutcome::Applied {
                events,
                commands,
                write_errors,
            } => {
                self.count_applied(events, commands, write_errors, in_flight);
                self.series_applied(series.as_ref());
            }
            ApplyOutcome::AlreadyApplied => {
                self.shared.metrics.pipeline().batch("already_applied");
                if series.is_some() {
                    // Someone applied this range: take the clock that went with it.
                    self.reload_series_marks().await;
                }
            }
        }
        in_flight.timestamps.clear();
        self.state.set_committed(batch.next_offset);
        in_flight.builder.cover_from(batch.next_offset);
        Ok(())
    }

    /// Delivers the batch's dead letters, retrying with backoff (the partition paused meanwhile)
    /// until the DLQ acknowledged every one: the fence must not pass an undelivered record.
    async fn deliver_dead_letters(&self, in_flight: &mut InFlight, paused: &mut bool) {
        let metrics = self.shared.metrics.pipeline();
        let mut pending = std::mem::take(&mut in_flight.dead_letters);
        let mut attempt = 0;
        while !pending.is_empty() {
            match self.shared.dlq.deliver_all(&pending).await {
                Ok(()) => {
                    for record in &pending {
                        metrics.dead_lettered(record.kind).inc();
                        self.state.count_dead_letter(record.kind);
                    }
                    pending.clear();
                }
                Err((failed, err)) => {
                    tracing::warn!(%err, failed = failed.len(), attempt, "dead-letter delivery failed; retrying");
                    metrics.kafka_error("dlq_delivery");
                    self.state.note_error("kafka", "dlq_delivery", &err);
                    // Counted only once delivered; the ones delivered now are done.
                    let mut index = 0;
                    pending.retain(|_| {
                        let keep = failed.contains(&index);
                        index += 1;
                        keep
                    });
                    hold_pause(self, paused);
                    self.backoff(attempt).await;
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }

    /// Applies the batch, retrying what can be retried with backoff (the partition paused
    /// meanwhile), until the fence decided: applied, already applied, or continue elsewhere.
    async fn apply_until_decided(
        &self,
        batch: &Batch,
        paused: &mut bool,
    ) -> Result<Applied, PartitionExit> {
        let metrics = self.shared.metrics.pipeline();
        let mut attempt = 0;
        loop {
            let started = Instant::now();
            let err = match self.shared.sink.apply(batch).await {
                Ok(outcome) => {
                    let took = started.elapsed();
                    metrics.batch_apply_seconds.observe(took.as_secs_f64());
                    self.shared.load.applied(took);
                    return Ok(Applied::Outcome(outcome));
                }
                Err(err) => err,
            };
            if err.is_retryable() {
                self.shared.load.applied(started.elapsed());
                self.shared.load.retried();
                metrics.redis_error(err.kind());
                self.state.note_error("redis", err.kind(), &err);
                tracing::warn!(%err, attempt, first_offset = batch.first_offset, "batch apply failed; partition paused, retrying");
                hold_pause(self, paused);
                self.backoff(attempt).await;
                attempt = attempt.saturating_add(1);
                continue;
            }
            return self.apply_refused(err, paused);
        }
    }

    /// A refusal that no retry changes: another owner, a fence elsewhere, or a failure for good.
    fn apply_refused(&self, err: SinkError, paused: &mut bool) -> Result<Applied, PartitionExit> {
        let metrics = self.shared.metrics.pipeline();
        match err {
            SinkError::Fenced { stored_epoch, .. } => {
                metrics.redis_error("fenced");
                self.state.note_error(
                    "redis",
                    "fenced",
                    format!("fenced by a newer owner (epoch {stored_epoch})"),
                );
                tracing::warn!(
                    stored_epoch,
                    "partition fenced by a newer owner; stopping it"
                );
                Err(PartitionExit::Fenced { stored_epoch })
            }
            SinkError::Gap {
                stored_next_offset,
                first_offset,
                marks,
                ..
            } => {
                metrics.redis_error("gap");
                break_pause(self, paused);
                Ok(Applied::Reposition(Reposition::Rewind {
                    fence: stored_next_offset,
                    from: first_offset,
                    marks,
                }))
            }
            SinkError::Overlap {
                stored_next_offset,
                first_offset,
                ..
            } => {
                metrics.redis_error("overlap");
                break_pause(self, paused);
                Ok(Applied::Reposition(Reposition::Skip {
                    fence: stored_next_offset,
                    from: first_offset,
                }))
            }
            err => {
                metrics.redis_error(err.kind());
                self.state.note_error("redis", err.kind(), &err);
                tracing::error!(%err, "batch apply failed for good; stopping the partition");
                Err(PartitionExit::Failed(err.to_string()))
            }
        }
    }

    /// An applied batch's metrics and progress, and its events' produce → Redis latencies.
    fn count_applied(
        &self,
        events: usize,
        commands: usize,
        write_errors: usize,
        in_flight: &mut InFlight,
    ) {
        let metrics = self.shared.metrics.pipeline();
        metrics.batch("applied");
        metrics.events_written.inc_by(events as u64);
        metrics.redis_commands.inc_by(commands as u64);
        metrics.redis_write_errors.inc_by(write_errors as u64);
        metrics.batch_events.observe(events as f64);
        self.state.add_applied(events as u64);
        self.shared.load.processed(events as u64);
        let now_ms = crate::sink::redis::system_time_ms(SystemTime::now());
        for ts in in_flight.timestamps.drain(..) {
            metrics
                .produce_to_redis_seconds
                .observe((now_ms - ts).max(0) as f64 / 1000.0);
        }
    }
}

/// Pauses fetching while a batch waits for a retry: the task reads no further meanwhile.
fn hold_pause(task: &PartitionTask, paused: &mut bool) {
    if !*paused {
        task.set_paused(true);
        *paused = true;
    }
}

/// Resolves once the owner gives up on the in-flight batch (never if the owner is gone).
async fn abandoned(mut abandon: watch::Receiver<bool>) {
    if abandon.wait_for(|abandon| *abandon).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Resumes fetching before a seek (librdkafka may ignore a seek of a paused partition).
fn break_pause(task: &PartitionTask, paused: &mut bool) {
    if *paused {
        task.set_paused(false);
        *paused = false;
    }
}
