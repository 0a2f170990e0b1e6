//! A time zone for tests whose data must outlive the test.
//!
//! User lists expire at the next local midnight of `sink.redis.timeZone` (Asia/Shanghai by
//! default, 16:00 UTC). A test that writes lists before that midnight and reads them after it
//! finds them gone, by design. CI once did: an exactly-once test started at 15:59:41 UTC (its
//! seed is its start in nanoseconds), read Redis in full just before 16:00 and then reported
//! user lists "without TTL", because they had expired between its `SCAN` and their
//! `PTTL`. Tests that compare Redis in full therefore run in a zone where it is about noon now,
//! twelve hours from either midnight.

use std::time::Duration;

use chrono::{Days, NaiveTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

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

/// How long until the next midnight in `zone` (an IANA name). A test that
/// checks the exact expiry the sink gives a user list waits out the last seconds before it, when
/// the sink sets a relative `PEXPIRE` instead of tonight's `PEXPIREAT`.
pub fn until_next_midnight(zone: &str) -> Duration {
    let zone: Tz = zone
        .parse()
        .unwrap_or_else(|_| panic!("{zone:?} is not an IANA time zone"));
    let now = Utc::now();
    let tomorrow = now.with_timezone(&zone).date_naive() + Days::new(1);
    // A zone whose day starts at 01:00 on a DST day has no 00:00: take the earliest valid instant.
    let midnight = (0..3)
        .filter_map(|hour| NaiveTime::from_hms_opt(hour, 0, 0))
        .find_map(|time| {
            zone.from_local_datetime(&tomorrow.and_time(time))
                .earliest()
        });
    midnight
        .and_then(|m| (m.with_timezone(&Utc) - now).to_std().ok())
        .unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Timelike, Utc};
    use chrono_tz::Tz;

    use super::{midday_time_zone, midday_time_zone_at, until_next_midnight};

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

    #[test]
    fn the_midday_zone_is_hours_from_its_midnight() {
        let left = until_next_midnight(&midday_time_zone());
        assert!(left.as_secs() > 10 * 3600, "{left:?}");
        assert!(left.as_secs() <= 13 * 3600, "{left:?}");
    }
}
