//! Where things live in Redis: austin's key layout (plus an optional prefix), the fence keys,
//! and the TTL rules. Pure: no I/O, so every rule is unit-tested.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Days, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

use super::SinkError;
use crate::config::RedisSinkConfig;

/// austin's message-dimension key prefix (`AustinConstant.CACHE_KEY_PREFIX + MESSAGE_ID`).
pub const MESSAGE_KEY_PREFIX: &str = "Austin:MessageId:";
/// Message lists live 3 days after their latest event.
pub const MESSAGE_TTL: Duration = Duration::from_secs(3 * 24 * 3600);
/// Template counters live 30 days after their latest update.
pub const TEMPLATE_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Key layout and TTL rules of one job's sink. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Layout {
    inner: Arc<LayoutInner>,
}

#[derive(Debug)]
struct LayoutInner {
    key_prefix: String,
    time_zone: Tz,
    job: String,
    topic: String,
    verify_existing_user_expiry: bool,
}

impl Layout {
    /// `time_zone` is an IANA name such as `Asia/Shanghai`.
    pub fn new(
        key_prefix: &str,
        time_zone: &str,
        job: &str,
        topic: &str,
    ) -> Result<Self, SinkError> {
        let time_zone: Tz = time_zone.parse().map_err(|_| {
            SinkError::Config(format!(
                "sink.redis.timeZone {time_zone:?} is not an IANA time zone"
            ))
        })?;
        Ok(Self {
            inner: Arc::new(LayoutInner {
                key_prefix: key_prefix.to_owned(),
                time_zone,
                job: job.to_owned(),
                topic: topic.to_owned(),
                verify_existing_user_expiry: true,
            }),
        })
    }

    /// The layout a job's config describes.
    pub fn from_config(cfg: &RedisSinkConfig, job: &str, topic: &str) -> Result<Self, SinkError> {
        Self::new(&cfg.key_prefix, &cfg.time_zone, job, topic)
    }

    /// Whether a user list that already existed has its expiry read and corrected (the default).
    /// See [`crate::sink::redis::SinkOptions::verify_existing_user_expiry`].
    pub fn verify_existing_user_expiry(&self) -> bool {
        self.inner.verify_existing_user_expiry
    }

    /// The same layout with the existing-user-list expiry check switched on or off.
    pub fn with_verify_existing_user_expiry(&self, verify: bool) -> Self {
        Self {
            inner: Arc::new(LayoutInner {
                key_prefix: self.inner.key_prefix.clone(),
                time_zone: self.inner.time_zone,
                job: self.inner.job.clone(),
                topic: self.inner.topic.clone(),
                verify_existing_user_expiry: verify,
            }),
        }
    }

    pub fn key_prefix(&self) -> &str {
        &self.inner.key_prefix
    }

    pub fn time_zone(&self) -> Tz {
        self.inner.time_zone
    }

    pub fn job(&self) -> &str {
        &self.inner.job
    }

    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    /// `{prefix}Austin:MessageId:{messageId}`: a list, newest first.
    pub fn message_key(&self, message_id: &str) -> String {
        let mut key = String::new();
        self.write_message_key(&mut key, message_id);
        key
    }

    /// `{prefix}{id}`: a user's list, newest first.
    pub fn user_key(&self, id: &str) -> String {
        let mut key = String::new();
        self.write_user_key(&mut key, id);
        key
    }

    /// `{prefix}{businessId}`: a hash of state → count.
    pub fn template_key(&self, business_id: i64) -> String {
        format!("{}{}", self.inner.key_prefix, business_id)
    }

    /// `{prefix}streamjob:{job}:fence:{topic}:{partition}`: hash `{epoch, next_offset}`.
    pub fn fence_key(&self, partition: i32) -> String {
        format!(
            "{}streamjob:{}:fence:{}:{}",
            self.inner.key_prefix, self.inner.job, self.inner.topic, partition
        )
    }

    /// `{prefix}streamjob:{job}:fence:{topic}:{{tag}}`: the fence hash of Redis Cluster slot
    /// `slot` (`{tag}` puts it there, see `cluster/slot.rs`), field `{partition}` per partition.
    pub fn slot_fence_key(&self, slot: u16) -> String {
        // Pieces, not `format!`: a cluster unit names about one slot fence per event.
        let inner = &*self.inner;
        let mut digits = itoa::Buffer::new();
        let tag = digits.format(super::cluster::slot::SLOT_TAGS.tag(slot));
        let mut key = String::with_capacity(
            inner.key_prefix.len() + inner.job.len() + inner.topic.len() + tag.len() + 20,
        );
        for piece in [
            inner.key_prefix.as_str(),
            "streamjob:",
            &inner.job,
            ":fence:",
            &inner.topic,
            ":{",
            tag,
            "}",
        ] {
            key.push_str(piece);
        }
        key
    }

    /// `{prefix}streamjob:series:{businessId}`: the event-time series of one template (and day,
    /// which the businessId embeds): fields `{window start, epoch minutes}:{state}`,
    /// `late:{state}`, `skewed:{state}` → count (see `window.rs`). TTL as the template hash.
    pub fn series_key(&self, business_id: i64) -> String {
        let mut key = String::new();
        self.write_series_key(&mut key, business_id);
        key
    }

    pub(crate) fn write_series_key(&self, out: &mut String, business_id: i64) {
        out.clear();
        out.push_str(&self.inner.key_prefix);
        out.push_str("streamjob:series:");
        out.push_str(itoa::Buffer::new().format(business_id));
    }

    /// `{prefix}streamjob:{job}:series:final`: hash `{watermark_ms, final_before_ms}` written by
    /// the jobmanager, only ever forward: every window ending at or before `final_before_ms` is
    /// final (complete) in the series hashes.
    pub fn series_final_key(&self) -> String {
        format!(
            "{}streamjob:{}:series:final",
            self.inner.key_prefix, self.inner.job
        )
    }

    pub(crate) fn write_message_key(&self, out: &mut String, message_id: &str) {
        out.clear();
        out.push_str(&self.inner.key_prefix);
        out.push_str(MESSAGE_KEY_PREFIX);
        out.push_str(message_id);
    }

    pub(crate) fn write_user_key(&self, out: &mut String, id: &str) {
        out.clear();
        out.push_str(&self.inner.key_prefix);
        out.push_str(id);
    }

    /// When a user list touched at `now` expires: the first local midnight strictly after `now`
    /// in the job's time zone, as epoch milliseconds. Always in the future, so a TTL is never 0
    /// (upstream computed seconds-until-end-of-day and could expire keys at once in the last
    /// second of a day).
    pub fn user_expire_at_ms(&self, now: SystemTime) -> i64 {
        next_local_midnight_ms(self.inner.time_zone, system_time_ms(now))
    }
}

/// Milliseconds since the epoch (negative before 1970).
pub fn system_time_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// The first instant strictly after `now_ms` at which the local date in `tz` changes.
fn next_local_midnight_ms(tz: Tz, now_ms: i64) -> i64 {
    let Some(now) = DateTime::<Utc>::from_timestamp_millis(now_ms) else {
        return now_ms.saturating_add(24 * 3600 * 1000);
    };
    let today = now.with_timezone(&tz).date_naive();
    let Some(tomorrow) = today.checked_add_days(Days::new(1)) else {
        return now_ms.saturating_add(24 * 3600 * 1000);
    };
    // A few zones skip midnight on DST days (the clock jumps 00:00 → 01:00): the day then starts
    // at the first local time that exists, found by stepping through the gap.
    let mut local = tomorrow.and_time(NaiveTime::MIN);
    for _ in 0..=8 {
        if let Some(instant) = tz.from_local_datetime(&local).earliest() {
            return instant.timestamp_millis();
        }
        local += chrono::Duration::minutes(15);
    }
    now_ms.saturating_add(24 * 3600 * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    }

    fn shanghai_midnight_ms(y: i32, m: u32, d: u32) -> i64 {
        chrono_tz::Asia::Shanghai
            .with_ymd_and_hms(y, m, d, 0, 0, 0)
            .single()
            .expect("unambiguous")
            .timestamp_millis()
    }

    #[test]
    fn keys_follow_austins_layout_with_the_prefix_in_front() {
        let plain = Layout::new("", "Asia/Shanghai", "trace", "austinTraceLog").expect("valid");
        assert_eq!(plain.message_key("m1"), "Austin:MessageId:m1");
        assert_eq!(plain.user_key("13800000001"), "13800000001");
        assert_eq!(plain.template_key(1000000120240101), "1000000120240101");
        assert_eq!(plain.fence_key(3), "streamjob:trace:fence:austinTraceLog:3");
        let prefixed = Layout::new("eu:", "UTC", "j", "t").expect("valid");
        assert_eq!(prefixed.message_key("m1"), "eu:Austin:MessageId:m1");
        assert_eq!(prefixed.user_key("u"), "eu:u");
        assert_eq!(prefixed.template_key(-1), "eu:-1");
        assert_eq!(prefixed.fence_key(0), "eu:streamjob:j:fence:t:0");
        assert_eq!(
            plain.series_key(1000000120240101),
            "streamjob:series:1000000120240101"
        );
        assert_eq!(prefixed.series_final_key(), "eu:streamjob:j:series:final");
    }

    #[test]
    fn an_unknown_time_zone_is_a_config_error() {
        let err = Layout::new("", "Mars/Olympus", "j", "t").unwrap_err();
        assert!(
            matches!(err, SinkError::Config(ref m) if m.contains("Mars/Olympus")),
            "{err}"
        );
    }

    #[test]
    fn user_keys_end_at_the_next_local_midnight_even_200ms_before_it() {
        let layout = Layout::new("", "Asia/Shanghai", "j", "t").expect("valid");
        let midnight = shanghai_midnight_ms(2026, 3, 2);
        assert_eq!(layout.user_expire_at_ms(at(midnight - 200)), midnight);
        assert_eq!(layout.user_expire_at_ms(at(midnight - 1)), midnight);
        let next = shanghai_midnight_ms(2026, 3, 3);
        assert_eq!(layout.user_expire_at_ms(at(midnight)), next);
        assert_eq!(layout.user_expire_at_ms(at(midnight + 1)), next);
        assert_eq!(next - midnight, 24 * 3600 * 1000);
    }

    #[test]
    fn a_day_without_a_midnight_ends_at_its_first_local_instant() {
        // America/Santiago skipped 2022-09-11 00:00 (clocks jumped to 01:00).
        let layout = Layout::new("", "America/Santiago", "j", "t").expect("valid");
        let before = chrono_tz::America::Santiago
            .with_ymd_and_hms(2022, 9, 10, 23, 0, 0)
            .single()
            .expect("exists")
            .timestamp_millis();
        let expected = chrono_tz::America::Santiago
            .with_ymd_and_hms(2022, 9, 11, 1, 0, 0)
            .single()
            .expect("exists")
            .timestamp_millis();
        assert_eq!(layout.user_expire_at_ms(at(before)), expected);
        assert!(expected > before);
    }
}
