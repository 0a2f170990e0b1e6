//! The trace data in Redis, as a comparable value: what a data set must produce (computed from
//! the payloads with upstream's rules) and what a Redis actually holds.
//!
//! Lists are compared as sorted multisets (events of different partitions interleave in any
//! order); template counters exactly.

use std::collections::BTreeMap;

use redis::Commands;

use crate::sink::redis::MESSAGE_KEY_PREFIX;
use crate::transform::decode;

/// Every trace key: list contents (sorted) and template counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceState {
    pub lists: BTreeMap<String, Vec<String>>,
    pub hashes: BTreeMap<String, BTreeMap<String, i64>>,
}

/// The expected state of a data set, and how many records must be dead-lettered.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    pub state: TraceState,
    /// Event-time series counts if no event were late: `(businessId, minute start ms, state)` →
    /// Σ len(ids) (1-minute windows).
    pub windows: BTreeMap<(i64, i64, i64), i64>,
    pub malformed: usize,
    pub events: usize,
}

impl Expected {
    /// Applies upstream's writes of every decodable payload (each exactly once).
    pub fn from_payloads<'a>(
        key_prefix: &str,
        payloads: impl IntoIterator<Item = &'a [u8]>,
    ) -> Self {
        let mut expected = Expected::default();
        for payload in payloads {
            let Ok(event) = decode(payload) else {
                expected.malformed += 1;
                continue;
            };
            expected.events += 1;
            let value = event.simple_json();
            let state = &mut expected.state;
            if let Some(message_id) = event.message_id.as_deref() {
                state
                    .lists
                    .entry(format!("{key_prefix}{MESSAGE_KEY_PREFIX}{message_id}"))
                    .or_default()
                    .push(value.clone());
            }
            for id in &event.ids {
                state
                    .lists
                    .entry(format!("{key_prefix}{id}"))
                    .or_default()
                    .push(value.clone());
            }
            *expected
                .windows
                .entry((
                    event.business_id,
                    event.log_timestamp.div_euclid(60_000) * 60_000,
                    event.state,
                ))
                .or_default() += event.ids.len() as i64;
            let state = &mut expected.state;
            *state
                .hashes
                .entry(format!("{key_prefix}{}", event.business_id))
                .or_default()
                .entry(event.state.to_string())
                .or_default() += event.ids.len() as i64;
        }
        for values in expected.state.lists.values_mut() {
            values.sort_unstable();
        }
        expected
    }
}

impl TraceState {
    /// Reads every key of the Redis at `url` except streamjob's own (`…streamjob:…` fences).
    pub fn read(url: &str) -> redis::RedisResult<Self> {
        let client = redis::Client::open(url)?;
        let mut conn = client.get_connection()?;
        let keys: Vec<String> = conn.scan()?.collect::<Result<_, _>>()?;
        let keys: Vec<String> = keys
            .into_iter()
            .filter(|k| !k.contains("streamjob:"))
            .collect();
        let mut state = TraceState::default();
        for chunk in keys.chunks(2000) {
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.cmd("TYPE").arg(key);
            }
            let types: Vec<String> = pipe.query(&mut conn)?;
            let mut pipe = redis::pipe();
            for (key, kind) in chunk.iter().zip(&types) {
                match kind.as_str() {
                    "list" => pipe.cmd("LRANGE").arg(key).arg(0).arg(-1),
                    "hash" => pipe.cmd("HGETALL").arg(key),
                    other => {
                        return Err(redis::RedisError::from((
                            redis::ErrorKind::Client,
                            "unexpected key type",
                            format!("{key} is a {other}"),
                        )))
                    }
                };
            }
            let values: Vec<redis::Value> = pipe.query(&mut conn)?;
            for ((key, kind), value) in chunk.iter().zip(&types).zip(values) {
                if kind == "list" {
                    let mut items: Vec<String> = redis::from_redis_value(value)?;
                    items.sort_unstable();
                    state.lists.insert(key.clone(), items);
                } else {
                    let fields: BTreeMap<String, i64> = redis::from_redis_value(value)?;
                    state.hashes.insert(key.clone(), fields);
                }
            }
        }
        Ok(state)
    }

    /// The trace keys of every Redis at `urls` (a cluster's primaries: each key lives on one).
    pub fn read_all(urls: &[String]) -> redis::RedisResult<Self> {
        let mut all = TraceState::default();
        for url in urls {
            let part = Self::read(url)?;
            all.lists.extend(part.lists);
            all.hashes.extend(part.hashes);
        }
        Ok(all)
    }

    /// Human-readable differences (at most `limit`), empty when equal.
    pub fn diff(&self, actual: &TraceState, limit: usize) -> Vec<String> {
        let mut out = Vec::new();
        for (key, want) in &self.lists {
            match actual.lists.get(key) {
                None => out.push(format!("list {key}: missing (want {} values)", want.len())),
                Some(have) if have != want => out.push(format!(
                    "list {key}: have {} values, want {} (have {:?}, want {:?})",
                    have.len(),
                    want.len(),
                    have.iter().take(4).collect::<Vec<_>>(),
                    want.iter().take(4).collect::<Vec<_>>()
                )),
                Some(_) => {}
            }
        }
        for key in actual.lists.keys().filter(|k| !self.lists.contains_key(*k)) {
            out.push(format!("list {key}: unexpected"));
        }
        for (key, want) in &self.hashes {
            match actual.hashes.get(key) {
                Some(have) if have == want => {}
                have => out.push(format!("hash {key}: have {have:?}, want {want:?}")),
            }
        }
        for key in actual
            .hashes
            .keys()
            .filter(|k| !self.hashes.contains_key(*k))
        {
            out.push(format!("hash {key}: unexpected"));
        }
        out.truncate(limit);
        out
    }

    /// Total list values.
    pub fn list_values(&self) -> usize {
        self.lists.values().map(Vec::len).sum()
    }
}

/// The event-time series hashes (`{prefix}streamjob:series:{businessId}`), by businessId, and
/// the recorded `final_before_ms` of `job`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeriesState {
    pub hashes: BTreeMap<i64, BTreeMap<String, i64>>,
    pub final_before_ms: Option<i64>,
    /// Series keys without a TTL.
    pub without_ttl: Vec<String>,
}

impl SeriesState {
    pub fn read(url: &str, prefix: &str, job: &str) -> redis::RedisResult<Self> {
        let client = redis::Client::open(url)?;
        let mut conn = client.get_connection()?;
        let pattern = format!("{prefix}streamjob:series:*");
        let keys: Vec<String> = conn.scan_match(&pattern)?.collect::<Result<_, _>>()?;
        let mut state = SeriesState::default();
        for key in keys {
            let Some(id) = key.rsplit(':').next().and_then(|s| s.parse::<i64>().ok()) else {
                continue;
            };
            let fields: BTreeMap<String, i64> = conn.hgetall(&key)?;
            let ttl: i64 = conn.pttl(&key)?;
            if ttl <= 0 {
                state.without_ttl.push(key.clone());
            }
            state.hashes.insert(id, fields);
        }
        let recorded = conn.hget(
            format!("{prefix}streamjob:{job}:series:final"),
            "final_before_ms",
        );
        state.final_before_ms = match recorded {
            Ok(recorded) => recorded,
            // A cluster node that does not serve the key (`read_all` asks each primary).
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::Moved) => None,
            Err(e) => return Err(e),
        };
        Ok(state)
    }

    /// The series of every Redis at `urls` (a cluster's primaries: each key lives on one).
    pub fn read_all(urls: &[String], prefix: &str, job: &str) -> redis::RedisResult<Self> {
        let mut all = SeriesState::default();
        for url in urls {
            let part = Self::read(url, prefix, job)?;
            all.hashes.extend(part.hashes);
            all.without_ttl.extend(part.without_ttl);
            all.final_before_ms = all.final_before_ms.or(part.final_before_ms);
        }
        Ok(all)
    }

    /// The windows final at `final_before_ms` and their counts (to check later that they never
    /// change).
    pub fn final_windows(&self) -> BTreeMap<(i64, String), i64> {
        let Some(final_before) = self.final_before_ms else {
            return BTreeMap::new();
        };
        let mut out = BTreeMap::new();
        for (id, fields) in &self.hashes {
            for (field, count) in fields {
                let Some((minute, _)) = field.split_once(':') else {
                    continue;
                };
                let Ok(minute) = minute.parse::<i64>() else {
                    continue;
                };
                if (minute + 1) * 60_000 <= final_before {
                    out.insert((*id, field.clone()), *count);
                }
            }
        }
        out
    }

    /// Checks the series against the data set (1-minute windows): for every template and state,
    /// Σ windows + `late` + `skewed` equals the template counter; no window holds more than the
    /// data set's events of that minute (nothing counted twice); with `exact`, every window holds
    /// exactly them (no late data). Human-readable differences, empty when consistent.
    pub fn diff(
        &self,
        expected: &Expected,
        key_prefix: &str,
        exact: bool,
        limit: usize,
    ) -> Vec<String> {
        let mut out = Vec::new();
        let mut sums: BTreeMap<(i64, String), i64> = BTreeMap::new();
        for (id, fields) in &self.hashes {
            for (field, count) in fields {
                let Some((window, state)) = field.split_once(':') else {
                    out.push(format!("series {id}: odd field {field}"));
                    continue;
                };
                *sums.entry((*id, state.to_string())).or_default() += count;
                if let Ok(minute) = window.parse::<i64>() {
                    let want = state
                        .parse::<i64>()
                        .ok()
                        .and_then(|s| expected.windows.get(&(*id, minute * 60_000, s)))
                        .copied()
                        .unwrap_or(0);
                    if *count > want || (exact && *count != want) {
                        out.push(format!(
                            "series {id} {field}: have {count}, data set has {want}"
                        ));
                    }
                }
            }
        }
        for (key, counters) in &expected.state.hashes {
            let Some(id) = key
                .strip_prefix(key_prefix)
                .and_then(|k| k.parse::<i64>().ok())
            else {
                continue;
            };
            for (state, total) in counters {
                let have = sums.get(&(id, state.clone())).copied().unwrap_or(0);
                if have != *total {
                    out.push(format!(
                        "series {id} state {state}: windows + late + skewed = {have}, template counter {total}"
                    ));
                }
            }
        }
        if exact {
            for ((id, minute, state), want) in &expected.windows {
                let field = format!("{}:{state}", minute / 60_000);
                if self.hashes.get(id).and_then(|f| f.get(&field)).is_none() {
                    out.push(format!("series {id} {field}: missing, data set has {want}"));
                }
            }
        }
        for key in &self.without_ttl {
            out.push(format!("series key {key} has no TTL"));
        }
        out.truncate(limit);
        out
    }

    /// Events counted as late or skewed.
    pub fn late_and_skewed(&self) -> (i64, i64) {
        let mut late = 0;
        let mut skewed = 0;
        for fields in self.hashes.values() {
            for (field, count) in fields {
                if field.starts_with("late:") {
                    late += count;
                } else if field.starts_with("skewed:") {
                    skewed += count;
                }
            }
        }
        (late, skewed)
    }
}

/// Keys (other than streamjob's own) without a TTL: every trace key must expire.
///
/// Only `PTTL` -1 counts: a key that expires between the `SCAN` and its `PTTL` answers -2 (gone),
/// which is a TTL doing its work, not a missing one.
pub fn keys_without_ttl(url: &str) -> redis::RedisResult<Vec<String>> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_connection()?;
    let keys: Vec<String> = conn.scan()?.collect::<Result<_, _>>()?;
    let keys: Vec<String> = keys
        .into_iter()
        .filter(|k| !k.contains("streamjob:"))
        .collect();
    let mut missing = Vec::new();
    for chunk in keys.chunks(2000) {
        let mut pipe = redis::pipe();
        for key in chunk {
            pipe.cmd("PTTL").arg(key);
        }
        let ttls: Vec<i64> = pipe.query(&mut conn)?;
        missing.extend(
            chunk
                .iter()
                .zip(ttls)
                .filter(|(_, ttl)| lacks_ttl(*ttl))
                .map(|(k, _)| k.clone()),
        );
    }
    Ok(missing)
}

/// Whether a key's `PTTL` reply says it has no TTL: -1. A key gone by the time of its `PTTL`
/// answers -2, which is an expiry that worked (CI once ran this check across the user lists'
/// midnight, `testkit::clock`).
fn lacks_ttl(pttl: i64) -> bool {
    pttl == -1
}

/// The `next_offset` of every partition's fence of `job`/`topic` (key prefix `prefix`).
pub fn fence_offsets(
    url: &str,
    prefix: &str,
    job: &str,
    topic: &str,
    partitions: i32,
) -> redis::RedisResult<Vec<Option<i64>>> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_connection()?;
    (0..partitions)
        .map(|p| {
            conn.hget(
                format!("{prefix}streamjob:{job}:fence:{topic}:{p}"),
                "next_offset",
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::lacks_ttl;

    #[test]
    fn only_a_key_without_expiry_lacks_a_ttl_not_one_that_just_expired() {
        assert!(lacks_ttl(-1));
        assert!(!lacks_ttl(-2), "gone between SCAN and PTTL");
        assert!(!lacks_ttl(1) && !lacks_ttl(86_400_000));
    }
}
