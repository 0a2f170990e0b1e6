//! Realistic AnchorInfo traffic: the demo of standalone mode (`--demo RATE`), and the deterministic
//! data sets of the tests and benchmarks (same generator, seeded).
//!
//! Shape (from austin's producers): many receivers (phone numbers), ~50 templates of both template
//! types, real `AnchorState` codes weighted as a send funnel (received → sent → clicked, some
//! de-duplicated, night-shielded or failed), a WeChat error code now and then, some legacy
//! `timestamp` events without `messageId`, and a small share of malformed records that must go to
//! the dead-letter topic.

use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveTime, TimeZone};
use chrono_tz::Tz;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

/// State codes with weights (out of 1000), a send funnel; `40001` is a raw WeChat error code
/// ("invalid credential") that WeChat channels put into `state`.
pub const STATES: &[(i64, u32)] = &[
    (10, 300),
    (20, 10),
    (22, 15),
    (24, 15),
    (30, 20),
    (40, 30),
    (50, 10),
    (60, 400),
    (64, 120),
    (70, 70),
    (40001, 10),
];

/// Malformed records the generator mixes in, each of a different decode error kind.
pub const MALFORMED: &[&[u8]] = &[
    b"{\"businessId\":1000000120240101,\"ids\":[\"13800000001\"],\"logTimestamp\":17000",
    b"not json at all",
    b"[1,2,3]",
    b"{\"businessId\":\"x\",\"ids\":[\"1\"],\"logTimestamp\":1,\"state\":60}",
    b"{\"businessId\":1000000120240101,\"logTimestamp\":1700000000000,\"state\":60}",
    b"{\"businessId\":1000000120240101,\"ids\":[],\"logTimestamp\":1700000000000,\"state\":60}",
    b"{\"businessId\":1000000120240101,\"ids\":[null],\"logTimestamp\":1700000000000,\"state\":60}",
    b"\xff\xfe{}",
    b"",
];

/// SplitMix64: tiny, fast, and the same sequence on every platform and crate version.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Shape of a generated data set.
#[derive(Debug, Clone)]
pub struct TrafficShape {
    pub users: u64,
    pub templates: u64,
    /// Receivers per event: uniform in `1..=max_ids`.
    pub max_ids: u64,
    /// Malformed records per million.
    pub malformed_ppm: u32,
    /// Events in the legacy format (`timestamp`, no `messageId`) per million.
    pub legacy_ppm: u32,
    /// Distinct message ids (each message fans out to several state events).
    pub messages: u64,
    /// `yyyyMMdd` suffix of every businessId, unless `time_zone` is set.
    pub date: u32,
    /// When set, each businessId carries its own event's date in this zone instead of `date`,
    /// as upstream's producers stamp the send's local day (the demo: the job's time zone, so the
    /// Trace page finds today's templates by their id).
    pub time_zone: Option<Tz>,
    /// Base of `logTimestamp`, epoch ms.
    pub base_timestamp_ms: i64,
    /// Events arrive up to this many ms behind their time (uniform): out of order, but within
    /// `window.maxOutOfOrderness` when it is at most that.
    pub out_of_order_ms: u64,
    /// Events per million that arrive 2-5 minutes behind their time: late for the default
    /// window settings (their minute is already final).
    pub late_ppm: u32,
    /// Events per million with an absurd timestamp (a day in the future).
    pub skewed_ppm: u32,
}

impl Default for TrafficShape {
    fn default() -> Self {
        Self {
            users: 100_000,
            templates: 50,
            max_ids: 3,
            malformed_ppm: 2_000,
            legacy_ppm: 50_000,
            messages: 200_000,
            date: 20_240_101,
            time_zone: None,
            base_timestamp_ms: 1_704_067_200_000,
            out_of_order_ms: 0,
            late_ppm: 0,
            skewed_ppm: 0,
        }
    }
}

/// Deterministic AnchorInfo payload generator.
#[derive(Debug, Clone)]
pub struct EventGenerator {
    shape: TrafficShape,
    rng: SplitMix64,
    seq: u64,
    /// The local day of the last event (with `time_zone`): `[start, end)` in epoch ms and its
    /// `yyyyMMdd`, so the date is worked out once per day, not per event.
    day: Option<(i64, i64, u32)>,
}

impl EventGenerator {
    pub fn new(seed: u64, shape: TrafficShape) -> Self {
        Self {
            shape,
            rng: SplitMix64::new(seed),
            seq: 0,
            day: None,
        }
    }

    /// The businessId of template number `t` (half CLOCKING = 10, half REALTIME = 20) on
    /// `shape.date`.
    pub fn business_id(&self, t: u64) -> i64 {
        business_id_on(t, self.shape.date)
    }

    /// The `yyyyMMdd` a businessId of an event at `event_ms` carries (see `TrafficShape`).
    fn date_of(&mut self, event_ms: i64) -> u32 {
        let Some(tz) = self.shape.time_zone else {
            return self.shape.date;
        };
        match self.day {
            Some((start, end, date)) if (start..end).contains(&event_ms) => date,
            _ => {
                // Outside chrono's range (not a real event time): the configured date.
                let Some((start, end, date)) = local_day(tz, event_ms) else {
                    return self.shape.date;
                };
                self.day = Some((start, end, date));
                date
            }
        }
    }

    fn state(&mut self) -> i64 {
        let mut pick = self.rng.below(1000) as u32;
        for &(state, weight) in STATES {
            if pick < weight {
                return state;
            }
            pick -= weight;
        }
        60
    }

    /// The event time of the next event: `now_ms` (demo) or the synthetic clock, moved back for
    /// out-of-order and late events, forward for skewed ones.
    fn event_time(&mut self, now_ms: Option<i64>) -> i64 {
        let ts = now_ms.unwrap_or(self.shape.base_timestamp_ms + self.seq as i64 * 7);
        let shape = &self.shape;
        if shape.out_of_order_ms == 0 && shape.late_ppm == 0 && shape.skewed_ppm == 0 {
            return ts;
        }
        let (late_ppm, skewed_ppm, out_of_order) =
            (shape.late_ppm, shape.skewed_ppm, shape.out_of_order_ms);
        let pick = self.rng.below(1_000_000) as u32;
        if pick < late_ppm {
            ts - 120_000 - self.rng.below(180_000) as i64
        } else if pick < late_ppm.saturating_add(skewed_ppm) {
            ts + 24 * 3600 * 1000
        } else {
            ts - self.rng.below(out_of_order.max(1)) as i64
        }
    }

    /// The next payload (fastjson style: keys sorted, no spaces).
    pub fn next_payload(&mut self) -> Vec<u8> {
        self.next_payload_at(None)
    }

    /// The next payload; `now_ms` overrides the event time (demo traffic uses the wall clock).
    pub fn next_payload_at(&mut self, now_ms: Option<i64>) -> Vec<u8> {
        self.seq += 1;
        if self.rng.below(1_000_000) < u64::from(self.shape.malformed_ppm) {
            let i = self.rng.below(MALFORMED.len() as u64) as usize;
            return MALFORMED[i].to_vec();
        }
        let template = self.rng.below(self.shape.templates);
        let n_ids = 1 + self.rng.below(self.shape.max_ids);
        let mut ids = String::new();
        for i in 0..n_ids {
            if i > 0 {
                ids.push(',');
            }
            let user = self.rng.below(self.shape.users);
            ids.push_str(&format!("\"138{user:08}\""));
        }
        let state = self.state();
        let ts = self.event_time(now_ms);
        let business_id = business_id_on(template, self.date_of(ts));
        let legacy = self.rng.below(1_000_000) < u64::from(self.shape.legacy_ppm);
        let biz = self.rng.below(1000);
        if legacy {
            format!(
                "{{\"bizId\":\"biz{biz}\",\"businessId\":{business_id},\"ids\":[{ids}],\"state\":{state},\"timestamp\":{ts}}}"
            )
            .into_bytes()
        } else {
            let message = self.rng.below(self.shape.messages);
            format!(
                "{{\"bizId\":\"biz{biz}\",\"businessId\":{business_id},\"ids\":[{ids}],\"logTimestamp\":{ts},\"messageId\":\"msg{message:08x}\",\"state\":{state}}}"
            )
            .into_bytes()
        }
    }
}

fn business_id_on(t: u64, date: u32) -> i64 {
    let template_type = if t.is_multiple_of(2) { 10 } else { 20 };
    let template_id = 100 + t as i64;
    (template_type * 1_000_000 + template_id) * 100_000_000 + i64::from(date)
}

/// The local day of `event_ms` in `tz`: its start and end in epoch ms, and its `yyyyMMdd`.
fn local_day(tz: Tz, event_ms: i64) -> Option<(i64, i64, u32)> {
    let day = DateTime::from_timestamp_millis(event_ms)?
        .with_timezone(&tz)
        .date_naive();
    let start_of = |d: chrono::NaiveDate| {
        // A zone whose clocks jump over midnight (e.g. America/Santiago) starts that day at
        // 01:00: DST gaps are at most an hour.
        [NaiveTime::MIN, NaiveTime::from_hms_opt(1, 0, 0)?]
            .into_iter()
            .find_map(|t| tz.from_local_datetime(&d.and_time(t)).earliest())
            .map(|t| t.timestamp_millis())
    };
    let date = day.year() as u32 * 10_000 + day.month() * 100 + day.day();
    Some((start_of(day)?, start_of(day.succ_opt()?)?, date))
}

/// Produces demo traffic at `rate` events/s into `topic` (round-robin over `partitions`) until
/// `stop` resolves, at most `limit` records when given, each businessId dated with its event's
/// day in `time_zone` (the job's). Returns how many records were handed to the producer.
pub async fn run_demo_producer(
    producer: FutureProducer,
    topic: String,
    partitions: Vec<i32>,
    time_zone: Tz,
    rate: u64,
    limit: Option<u64>,
    stop: impl std::future::Future<Output = ()>,
) -> u64 {
    const TICK: Duration = Duration::from_millis(10);
    let mut generator = EventGenerator::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
        // Out of order within maxOutOfOrderness, some late and a few absurd timestamps, so the
        // event-time series shows all three on the first run.
        TrafficShape {
            out_of_order_ms: 3_000,
            late_ppm: 5_000,
            skewed_ppm: 200,
            time_zone: Some(time_zone),
            ..TrafficShape::default()
        },
    );
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = tokio::time::Instant::now();
    let mut sent: u64 = 0;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = ticker.tick() => {}
        }
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        let due = limit.map_or(due, |limit| due.min(limit));
        while sent < due {
            let now_ms = crate::sink::redis::system_time_ms(std::time::SystemTime::now());
            let payload = generator.next_payload_at(Some(now_ms));
            let partition = partitions[(sent % partitions.len().max(1) as u64) as usize];
            let record: FutureRecord<'_, (), _> = FutureRecord::to(&topic)
                .payload(&payload)
                .partition(partition);
            match producer.send_result(record) {
                // Delivery is not awaited: a demo record lost to a broker error is only a demo record.
                Ok(_delivery) => sent += 1,
                Err((err, _)) => {
                    tracing::debug!(%err, "demo producer queue full; slowing down");
                    break;
                }
            }
        }
    }
    let _ = producer.flush(Duration::from_secs(5));
    sent
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::decode;

    #[test]
    fn the_generator_is_deterministic_and_decodable_except_for_the_malformed_share() {
        let shape = TrafficShape {
            malformed_ppm: 10_000,
            ..TrafficShape::default()
        };
        let a: Vec<Vec<u8>> = {
            let mut g = EventGenerator::new(7, shape.clone());
            (0..5000).map(|_| g.next_payload()).collect()
        };
        let mut g = EventGenerator::new(7, shape);
        let b: Vec<Vec<u8>> = (0..5000).map(|_| g.next_payload()).collect();
        assert_eq!(a, b);
        let bad = a.iter().filter(|p| decode(p).is_err()).count();
        assert!(bad > 10 && bad < 200, "{bad} malformed of 5000");
        let good: Vec<_> = a.iter().filter_map(|p| decode(p).ok()).collect();
        assert!(
            good.iter().any(|e| e.message_id.is_none()),
            "legacy events present"
        );
        assert!(good.iter().any(|e| e.state == 40001), "wechat code present");
        assert!(good.iter().all(|e| e.business_id.to_string().len() == 16));
        let templates: std::collections::HashSet<i64> =
            good.iter().map(|e| e.business_id).collect();
        assert!(templates.len() > 40, "{} templates", templates.len());
    }

    /// Upstream's producers stamp the send's local day into the businessId; the demo must too,
    /// or the Trace page's lookup by template id (today's businessIds) finds nothing.
    #[test]
    fn with_a_time_zone_each_business_id_carries_its_events_local_day() {
        let shanghai: Tz = "Asia/Shanghai".parse().expect("zone");
        // 2024-03-09T15:59:59Z is 23:59:59 in Shanghai; events every 7 ms run into the 10th.
        let shape = TrafficShape {
            malformed_ppm: 0,
            time_zone: Some(shanghai),
            base_timestamp_ms: 1_709_999_999_000,
            ..TrafficShape::default()
        };
        let mut generator = EventGenerator::new(3, shape.clone());
        let events: Vec<(i64, i64)> = (0..400)
            .map(|_| {
                let payload = generator.next_payload();
                let event = decode(&payload).expect("decodable");
                (event.log_timestamp, event.business_id)
            })
            .collect();
        for (ts, business_id) in &events {
            let want = if *ts < 1_710_000_000_000 {
                20_240_309
            } else {
                20_240_310
            };
            assert_eq!(business_id % 100_000_000, want, "event at {ts}");
        }
        assert!(events.iter().any(|(ts, _)| *ts < 1_710_000_000_000));
        assert!(events.iter().any(|(ts, _)| *ts >= 1_710_000_000_000));
        // The same moment is still the 9th in New York.
        let mut generator = EventGenerator::new(
            3,
            TrafficShape {
                time_zone: Some("America/New_York".parse().expect("zone")),
                ..shape
            },
        );
        let event = generator.next_payload();
        let event = decode(&event).expect("decodable");
        assert_eq!(event.business_id % 100_000_000, 20_240_309);
        // A zone whose clocks skip midnight (Santiago, 2023-09-03 00:00 -> 01:00) still has a
        // day: it starts at 01:00.
        let santiago: Tz = "America/Santiago".parse().expect("zone");
        let (start, end, date) = local_day(santiago, 1_693_717_200_000).expect("a day");
        assert_eq!(date, 20_230_903);
        assert_eq!((start, end - start), (1_693_713_600_000, 23 * 3_600_000));
    }

    #[test]
    fn every_malformed_sample_is_refused_by_the_decoder() {
        for sample in MALFORMED {
            assert!(
                decode(sample).is_err(),
                "{:?}",
                String::from_utf8_lossy(sample)
            );
        }
    }
}
