//! The per-template event-time series: tumbling windows on `logTimestamp`, watermarks, late
//! data. Pure (no I/O, no clock): the partition task feeds it events and the times it knows, and
//! it answers which hash fields a batch increments and what the partition's clock becomes.
//!
//! # Rules
//!
//! - A window is `[start, start + window.size)`, aligned to the epoch (so to the minute in every
//!   time zone). Counts are per businessId × window × state, by `len(ids)` like the template
//!   counters, in the hash `{prefix}streamjob:series:{businessId}` (see [`super::Layout`]), field
//!   `{start in epoch minutes}:{state}`.
//! - A partition's *clock* is the largest event time it has applied; it is stored in the
//!   partition's fence hash by the same atomic script as the batch (field `max_event_ms`), so a
//!   replay after any crash starts from exactly the clock that goes with the fence's offset.
//!   Its watermark is the clock minus `window.maxOutOfOrderness`.
//! - Decisions are made per batch, against the *floor*: the larger of the partition's watermark
//!   when the batch started and the job watermark the taskmanager learned from the jobmanager
//!   (what a partition waking from idle catches up to). A window is *final* once
//!   `end + window.allowedLateness <= watermark`; an event of a window that is final at the floor
//!   is *late*: it goes to the field `late:{state}`, never into the closed window. The daily
//!   totals and the trace lists count it as always.
//! - Absurd timestamps never move a clock: an event more than [`MAX_FUTURE_SKEW`] ahead of the
//!   processing time, or whose window ended more than [`MAX_PAST`] before it, goes to
//!   `skewed:{state}`.
//!
//! So for every template and state: Σ window fields + `late` + `skewed` = the template counter.

use std::collections::HashMap;
use std::time::Duration;

use foldhash::quality::RandomState;

use crate::config::WindowConfig;

/// Events further in the future than this (against the processing time) are `skewed`.
pub const MAX_FUTURE_SKEW: Duration = Duration::from_secs(3600);
/// Events whose window ended longer ago than this are `skewed` (the series hashes live 30 days).
pub const MAX_PAST: Duration = Duration::from_secs(30 * 24 * 3600);

/// The fence hash field holding a partition's clock.
pub const CLOCK_FIELD: &str = "max_event_ms";
/// The fence hash field holding the job watermark the partition's last batch decided with: a
/// partition that rewinds to this fence (Redis lost the batches after it) decides the re-read
/// events with it again, not with the higher one it learned since, so they land in the minutes
/// they were counted in before the loss instead of in `late`.
pub const LEARNED_FIELD: &str = "learned_ms";

/// What a partition's fence stores of the series: its clock and the job watermark its last
/// batch decided with (`None`: not known, e.g. before the first batch with events).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SeriesMarks {
    pub clock: Option<i64>,
    pub learned: Option<i64>,
}

/// Window size, out-of-orderness and lateness, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowRules {
    pub size_ms: i64,
    pub out_of_orderness_ms: i64,
    pub lateness_ms: i64,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl WindowRules {
    pub fn from_config(config: &WindowConfig) -> Self {
        Self {
            size_ms: ms(config.size).max(60_000),
            out_of_orderness_ms: ms(config.max_out_of_orderness),
            lateness_ms: ms(config.allowed_lateness),
        }
    }

    /// Start of the window holding `event_ms`.
    pub fn window_start(&self, event_ms: i64) -> i64 {
        event_ms.div_euclid(self.size_ms) * self.size_ms
    }

    /// The watermark of a partition whose clock is `max_event_ms`.
    pub fn watermark_of(&self, max_event_ms: i64) -> i64 {
        max_event_ms.saturating_sub(self.out_of_orderness_ms)
    }

    /// Whether the window starting at `start` is closed at `watermark`.
    pub fn is_final(&self, start: i64, watermark: i64) -> bool {
        start
            .saturating_add(self.size_ms)
            .saturating_add(self.lateness_ms)
            <= watermark
    }

    /// Windows ending at or before this are final at `watermark`.
    pub fn final_before(&self, watermark: i64) -> i64 {
        watermark.saturating_sub(self.lateness_ms)
    }
}

/// The hash field of a window's count.
pub fn window_field(start_ms: i64, state: i64) -> String {
    format!("{}:{state}", start_ms.div_euclid(60_000))
}

/// Parses a series hash field back into `(window start ms, state)`; `None` for `late:`/`skewed:`.
pub fn parse_window_field(field: &str) -> Option<(i64, i64)> {
    let (minute, state) = field.split_once(':')?;
    Some((minute.parse::<i64>().ok()? * 60_000, state.parse().ok()?))
}

pub fn late_field(state: i64) -> String {
    format!("late:{state}")
}

pub fn skewed_field(state: i64) -> String {
    format!("skewed:{state}")
}

#[derive(Debug, Clone, Copy)]
struct Group {
    count: i64,
    events: u64,
    max_event_ms: i64,
}

/// One batch's events, counted per businessId × window × state.
#[derive(Debug, Default)]
pub struct SeriesAccumulator {
    groups: HashMap<(i64, i64, i64), Group, RandomState>,
}

impl SeriesAccumulator {
    pub fn push(
        &mut self,
        rules: &WindowRules,
        business_id: i64,
        state: i64,
        event_ms: i64,
        count: i64,
    ) {
        let start = rules.window_start(event_ms);
        let group = self
            .groups
            .entry((business_id, start, state))
            .or_insert(Group {
                count: 0,
                events: 0,
                max_event_ms: event_ms,
            });
        group.count = group.count.saturating_add(count);
        group.events += 1;
        group.max_event_ms = group.max_event_ms.max(event_ms);
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Decides every group of the batch. `clock` is the partition's clock when the batch started
    /// (as stored in its fence), `learned` the job watermark its taskmanager knows, `now_ms` the
    /// processing time.
    pub fn plan(
        &self,
        rules: &WindowRules,
        clock: Option<i64>,
        learned: Option<i64>,
        now_ms: i64,
    ) -> SeriesPlan {
        let floor = match (clock.map(|c| rules.watermark_of(c)), learned) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let future_limit = now_ms.saturating_add(ms(MAX_FUTURE_SKEW));
        let past_limit = now_ms.saturating_sub(ms(MAX_PAST));
        let mut plan = SeriesPlan {
            floor,
            clock,
            ..SeriesPlan::default()
        };
        let mut groups: Vec<(&(i64, i64, i64), &Group)> = self.groups.iter().collect();
        groups.sort_unstable_by_key(|(k, _)| **k);
        for (&(business_id, start, state), group) in groups {
            let end = start.saturating_add(rules.size_ms);
            let field = if group.max_event_ms > future_limit || end <= past_limit {
                plan.skewed_events += group.events;
                skewed_field(state)
            } else {
                plan.clock = Some(
                    plan.clock
                        .map_or(group.max_event_ms, |c| c.max(group.max_event_ms)),
                );
                if floor.is_some_and(|f| rules.is_final(start, f)) {
                    plan.late_events += group.events;
                    late_field(state)
                } else {
                    plan.on_time_events += group.events;
                    window_field(start, state)
                }
            };
            plan.increments.push((business_id, field, group.count));
        }
        plan
    }
}

/// What one batch writes to the series and the clock it leaves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeriesPlan {
    /// `(businessId, field, increment)`, in a stable order.
    pub increments: Vec<(i64, String, i64)>,
    /// The watermark the decisions were made against.
    pub floor: Option<i64>,
    /// The partition's clock once the batch is applied.
    pub clock: Option<i64>,
    pub on_time_events: u64,
    pub late_events: u64,
    pub skewed_events: u64,
}

/// Job-level watermark bookkeeping of the jobmanager: the minimum over active partitions, never
/// moving back.
pub fn job_watermark(
    previous: Option<i64>,
    active: impl IntoIterator<Item = Option<i64>>,
) -> Option<i64> {
    let mut min: Option<i64> = None;
    for wm in active {
        // An active partition without a watermark yet holds the job where it is.
        let Some(wm) = wm else {
            return previous;
        };
        min = Some(min.map_or(wm, |m| m.min(wm)));
    }
    match (previous, min) {
        (Some(p), Some(m)) => Some(p.max(m)),
        (p, m) => p.or(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;
    /// 2024-01-01T00:00:00Z.
    const T0: i64 = 1_704_067_200_000;

    fn rules() -> WindowRules {
        WindowRules::from_config(&WindowConfig::default())
    }

    fn counts(plan: &SeriesPlan) -> Vec<(i64, String, i64)> {
        plan.increments.clone()
    }

    #[test]
    fn windows_are_minutes_aligned_to_the_epoch() {
        let r = rules();
        assert_eq!(r.window_start(T0 + 59_999), T0);
        assert_eq!(r.window_start(T0 + MIN), T0 + MIN);
        assert_eq!(r.window_start(-1), -MIN);
        assert_eq!(
            window_field(T0 + 3 * MIN, 60),
            format!("{}:60", T0 / MIN + 3)
        );
        assert_eq!(
            parse_window_field(&window_field(T0 + 3 * MIN, 60)),
            Some((T0 + 3 * MIN, 60))
        );
        assert_eq!(parse_window_field("late:60"), None);
        // closed once the watermark passes end + 1 min lateness
        assert!(!r.is_final(T0, T0 + 2 * MIN - 1));
        assert!(r.is_final(T0, T0 + 2 * MIN));
    }

    #[test]
    fn out_of_order_events_within_the_lateness_land_in_their_minute() {
        let r = rules();
        let mut acc = SeriesAccumulator::default();
        // clock at T0+3m: watermark T0+3m-5s; minute T0+1m closes at T0+3m: still open
        acc.push(&r, 1, 60, T0 + MIN + 10, 2);
        acc.push(&r, 1, 60, T0 + 4 * MIN, 1);
        acc.push(&r, 1, 70, T0 + MIN + 20, 1);
        let plan = acc.plan(&r, Some(T0 + 3 * MIN), None, T0 + 5 * MIN);
        assert_eq!(plan.floor, Some(T0 + 3 * MIN - 5_000));
        assert_eq!(plan.clock, Some(T0 + 4 * MIN));
        assert_eq!(plan.late_events, 0);
        let m1 = T0 / MIN + 1;
        let m4 = T0 / MIN + 4;
        let want = vec![
            (1, format!("{m1}:60"), 2),
            (1, format!("{m1}:70"), 1),
            (1, format!("{m4}:60"), 1),
        ];
        assert_eq!(counts(&plan), want);
    }

    #[test]
    fn events_of_a_closed_minute_are_late_and_never_move_the_clock_back() {
        let r = rules();
        let mut acc = SeriesAccumulator::default();
        acc.push(&r, 7, 60, T0 + 10, 3); // minute T0 closed at T0+2m
        acc.push(&r, 7, 60, T0 + MIN + 10, 1); // closes at T0+3m: open
        let plan = acc.plan(&r, Some(T0 + 2 * MIN + 5_000), None, T0 + 10 * MIN);
        assert_eq!(plan.late_events, 1);
        assert_eq!(plan.on_time_events, 1);
        assert_eq!(plan.clock, Some(T0 + 2 * MIN + 5_000));
        let m1 = T0 / MIN + 1;
        assert_eq!(
            counts(&plan),
            vec![(7, "late:60".to_string(), 3), (7, format!("{m1}:60"), 1)]
        );
    }

    #[test]
    fn a_partition_waking_from_idle_catches_up_to_the_job_watermark() {
        let r = rules();
        let mut acc = SeriesAccumulator::default();
        acc.push(&r, 7, 10, T0 + 10, 1);
        // its own clock says the minute is open; the job already closed it
        let own = acc.plan(&r, Some(T0), None, T0 + 10 * MIN);
        assert_eq!(own.late_events, 0);
        let woken = acc.plan(&r, Some(T0), Some(T0 + 5 * MIN), T0 + 10 * MIN);
        assert_eq!(woken.late_events, 1);
        assert_eq!(woken.floor, Some(T0 + 5 * MIN));
        // a fresh partition (no clock) with nothing learned yet: nothing is late
        let fresh = acc.plan(&r, None, None, T0 + 10 * MIN);
        assert_eq!((fresh.late_events, fresh.clock), (0, Some(T0 + 10)));
    }

    #[test]
    fn absurd_timestamps_are_skewed_and_never_move_the_clock() {
        let r = rules();
        let now = T0 + 100 * MIN;
        let mut acc = SeriesAccumulator::default();
        acc.push(&r, 1, 60, now + 2 * 3600 * 1000, 1); // 2 h ahead
        acc.push(&r, 1, 60, 0, 1); // 1970
        acc.push(&r, 1, 60, now - MIN, 1);
        let plan = acc.plan(&r, None, None, now);
        assert_eq!(plan.skewed_events, 2);
        assert_eq!(plan.clock, Some(now - MIN));
        assert_eq!(
            plan.increments
                .iter()
                .filter(|(_, f, _)| f == "skewed:60")
                .map(|(_, _, n)| n)
                .sum::<i64>(),
            2
        );
    }

    /// Generated out-of-order data with per-minute counts known in advance: one partition, batches
    /// of 50, each event at most 4 s behind the clock (inside maxOutOfOrderness), then a burst of
    /// events 10 minutes behind (late). Every window count, the late count and the sum come out as
    /// computed from the data alone.
    #[test]
    fn generated_out_of_order_and_late_data_gives_the_known_counts() {
        let r = rules();
        let mut events = Vec::new();
        let mut expect_minute: HashMap<i64, i64> = HashMap::new();
        for i in 0..3_000i64 {
            let t = T0 + i * 100; // 5 minutes of events every 100 ms
            let jitter = (i * 7919) % 4_000; // up to 4 s out of order
            let ts = (t - jitter).max(T0);
            events.push(ts);
            *expect_minute.entry(r.window_start(ts)).or_default() += 1;
        }
        let late: Vec<i64> = (0..40).map(|i| T0 + i * 1_000).collect(); // minute 0: closed by then
        let mut clock = None;
        let mut got: HashMap<String, i64> = HashMap::new();
        let now = T0 + 30 * MIN;
        for batch in events.chunks(50).chain(std::iter::once(late.as_slice())) {
            let mut acc = SeriesAccumulator::default();
            for ts in batch {
                acc.push(&r, 1, 60, *ts, 1);
            }
            let plan = acc.plan(&r, clock, None, now);
            clock = plan.clock;
            for (_, field, n) in plan.increments {
                *got.entry(field).or_default() += n;
            }
        }
        for (start, n) in &expect_minute {
            assert_eq!(
                got.get(&window_field(*start, 60)),
                Some(n),
                "minute {start}"
            );
        }
        assert_eq!(got.get("late:60"), Some(&40));
        assert_eq!(got.values().sum::<i64>(), 3_040);
    }

    #[test]
    fn the_job_watermark_is_the_minimum_over_active_partitions_and_never_goes_back() {
        assert_eq!(job_watermark(None, []), None);
        assert_eq!(job_watermark(None, [Some(5), Some(3)]), Some(3));
        assert_eq!(job_watermark(Some(4), [Some(5), Some(3)]), Some(4));
        // an active partition without a watermark holds it where it was
        assert_eq!(job_watermark(Some(4), [Some(9), None]), Some(4));
        assert_eq!(job_watermark(None, [Some(9), None]), None);
    }
}
