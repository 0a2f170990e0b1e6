//! A time zone for tests whose data must outlive the test.
//!
//! User lists expire at the next local midnight of `sink.redis.timeZone` (Asia/Shanghai by
//! default, 16:00 UTC). A test that writes lists before that midnight and reads them after it
//! finds them gone, by design. CI once did: an exactly-once test started at 15:59:41 UTC (its
//! seed is its start in nanoseconds), read Redis in full just before 16:00 and then reported
//! user lists "without TTL", because they had expired between its `SCAN` and their
//! `PTTL`. Tests that compare Redis in full therefore run in a zone where it is about noon now,
//! twelve hours from either midnight.

use chrono::{Timelike, Utc};

/// The fixed-offset IANA zone (`Etc/GMT±N`) whose local hour is 12 at the current UTC hour, ±1.
pub fn midday_time_zone() -> String {
    midday_time_zone_at(Utc::now().hour())
}

/// [`midday_time_zone`] at UTC hour `utc_hour` (0–23). The `Etc/GMT` names invert the sign:
/// `Etc/GMT-8` is UTC+8.
fn midday_time_zone_at(utc_hour: u32) -> String {
    // UTC+offset shows 12 o'clock; offsets 12 - 0 ..= 12 - 23 are all within Etc's -12 ..= +14.
    let offset = 12 - i64::from(utc_hour);
    match offset {
        0 => "Etc/GMT".to_string(),
        east if east > 0 => format!("Etc/GMT-{east}"),
        west => format!("Etc/GMT+{}", -west),
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Timelike, Utc};
    use chrono_tz::Tz;

    use super::midday_time_zone_at;

    #[test]
    fn every_utc_hour_gets_a_zone_where_it_is_noon() {
        for hour in 0..24 {
            let name = midday_time_zone_at(hour);
            let zone: Tz = name.parse().unwrap_or_else(|_| panic!("{name} is a zone"));
            let instant = Utc.with_ymd_and_hms(2026, 12, 7, hour, 30, 0).unwrap();
            assert_eq!(
                instant.with_timezone(&zone).hour(),
                12,
                "{name} at {hour}:30 UTC"
            );
        }
    }
}
