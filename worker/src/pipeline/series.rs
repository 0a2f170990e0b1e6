//! A partition task's part of the event-time series (`sink::redis::window` has the rules): it
//! counts each batch's events per template × window × state, decides them against the
//! partition's clock and the job watermark it learned, adds the counts and the new clock to the
//! batch's transaction, and keeps its clock equal to the one the fence stores.

use std::time::SystemTime;

use super::partition::{InFlight, PartitionTask};
use super::watermark::WatermarkBoard;
use crate::sink::redis::window::{SeriesMarks, SeriesPlan};
use crate::sink::redis::{system_time_ms, BatchBuilder};
use crate::transform::AnchorInfo;

/// Holds a batch's learned watermark on the board until the batch is applied or given up.
pub(super) struct DecidedWith<'a> {
    board: &'a WatermarkBoard,
    partition: i32,
}

impl Drop for DecidedWith<'_> {
    fn drop(&mut self) {
        self.board.end_batch(self.partition);
    }
}

impl PartitionTask {
    /// Counts one decoded event into the in-flight batch's series (with `window.enabled`).
    pub(super) fn count_in_series(&self, in_flight: &mut InFlight, event: &AnchorInfo<'_>) {
        if let Some(rules) = &self.shared.window {
            in_flight.series.push(
                rules,
                event.business_id,
                event.state,
                event.log_timestamp,
                event.ids.len() as i64,
            );
        }
    }

    /// Decides the batch's series (window, late or skewed per group, against the clock the fence
    /// holds and the job watermark learned) and adds its writes and the new clock to the batch.
    pub(super) fn plan_series(
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
        let partition = self.state.partition;
        let replay = builder
            .first_offset()
            .and_then(|first| self.state.replay_learned(first));
        let learned = match replay {
            Some(fenced) => self.shared.board.begin_replay_batch(partition, fenced),
            None => self.shared.board.begin_batch(partition),
        };
        let plan = series.plan(&rules, self.state.clock(), learned, system_time_ms(now));
        let layout = self.shared.sink.layout();
        let mut key = String::new();
        for (business_id, field, delta) in &plan.increments {
            layout.write_series_key(&mut key, *business_id);
            builder.add_hash_increment(&key, field, *delta);
        }
        // Always stored, so the fence's clock follows the batch even after a rollback left it
        // behind this task's.
        builder.set_series_marks(SeriesMarks {
            clock: plan.clock,
            learned,
        });
        Some(plan)
    }

    /// Keeps the watermark [`Self::plan_series`] took from the board counted in this process's
    /// acknowledgement until the guard drops.
    pub(super) fn hold_watermark(&self) -> DecidedWith<'_> {
        DecidedWith {
            board: &self.shared.board,
            partition: self.state.partition,
        }
    }

    /// The batch's series counts are in Redis: metrics and the clock.
    pub(super) fn series_applied(&self, plan: Option<&SeriesPlan>) {
        let Some(plan) = plan else {
            return;
        };
        let metrics = self.shared.metrics.pipeline();
        metrics.series("on_time", plan.on_time_events);
        metrics.series("late", plan.late_events);
        metrics.series("skewed", plan.skewed_events);
        if plan.clock.is_some() {
            self.set_clock(plan.clock);
        }
    }

    /// Takes the clock the fence stores (after a skip, or a batch someone else applied). Left
    /// as it is if the fence cannot be read: the next batch stores it again.
    pub(super) async fn reload_series_marks(&self) {
        if self.shared.window.is_none() {
            return;
        }
        match self.shared.sink.read_fence(self.state.partition).await {
            Ok(fence) => self.set_clock(fence.and_then(|f| f.max_event_ms)),
            Err(err) => tracing::warn!(%err, "cannot read the fence's event-time marks"),
        }
    }

    /// After a rewind from `rewound_from` to a fence with `marks`: the clock goes back to the
    /// fence's, and the re-read range is decided with the job watermark the fence's batch
    /// decided with, so the lost events go back into the minutes they were counted in.
    pub(super) fn rewind_series_marks(&self, marks: SeriesMarks, rewound_from: i64) {
        if self.shared.window.is_none() {
            return;
        }
        self.set_clock(marks.clock);
        self.state.start_replay(rewound_from, marks.learned);
    }

    fn set_clock(&self, clock: Option<i64>) {
        self.state.set_clock(clock);
        if let (Some(rules), Some(clock)) = (self.shared.window, self.state.clock()) {
            self.state.gauges.watermark.set(rules.watermark_of(clock));
        }
    }
}
