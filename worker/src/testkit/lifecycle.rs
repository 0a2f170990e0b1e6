//! A benchmark data set shaped like austin's real trace traffic: every message goes through its
//! state lifecycle (received → sent, sometimes → clicked; or received → failed / discarded /
//! night-shielded / de-duplicated / white-listed, or a raw WeChat code), each of its events
//! carries the same messageId, businessId and receivers, and a message's later states arrive a
//! little later, interleaved with other messages' events. So a message list gets 2–3 values and
//! each receiver's list gets one value per state, which is where merging a batch's pushes per key
//! pays off. Deterministic (seeded SplitMix64), in produce order.

use crate::demo::SplitMix64;

/// Receivers a message is sent to are drawn from this many users.
pub const USERS: u64 = 100_000;
/// Templates (businessIds) in the data set.
pub const BUSINESS_IDS: u64 = 50;

/// A message's states, as austin's handlers emit them.
fn lifecycle(rng: &mut SplitMix64) -> Vec<i64> {
    match rng.below(100) {
        0..=69 if rng.below(5) == 0 => vec![10, 60, 64],
        0..=69 => vec![10, 60],
        70..=79 => vec![10, 70],
        80..=84 => vec![10, 20],
        85..=87 => vec![10, 22],
        88..=89 => vec![10, 24, 60],
        90..=93 => vec![10, 30],
        94..=96 => vec![10, 40],
        97..=98 => vec![10, 50],
        _ => vec![10, 40001],
    }
}

struct Message {
    id: u64,
    business_id: i64,
    ids: Vec<String>,
    /// States still to come, in order.
    states: Vec<i64>,
}

/// `events` AnchorInfo payloads (fastjson's field order), 1–3 receivers per message, with event
/// times from 2023-11-14.
pub fn payloads(events: usize, seed: u64) -> Vec<Vec<u8>> {
    payloads_from(events, seed, 1_700_000_000_000)
}

/// [`payloads`] with event times from `start_ms` on (one ms apart on average: a million events
/// span about 17 minutes), so a benchmark can place them in the last minutes, where the
/// event-time series counts them into their windows.
pub fn payloads_from(events: usize, seed: u64, start_ms: i64) -> Vec<Vec<u8>> {
    let mut rng = SplitMix64::new(seed);
    let mut out = Vec::with_capacity(events);
    let mut next_message = 0u64;
    let mut ts = start_ms;
    // Messages in flight: their remaining states come a little later, interleaved with others.
    let mut pending: Vec<Message> = Vec::new();
    while out.len() < events {
        let start_new = pending.len() < 50 || rng.below(3) == 0;
        let (message, state) = if start_new {
            next_message += 1;
            let business_id =
                1_000_000_000_000_000 + 100_000_000 * rng.below(BUSINESS_IDS) as i64 + 20_240_101;
            let ids = (0..1 + rng.below(3))
                .map(|_| format!("1{:010}", rng.below(USERS)))
                .collect();
            let mut states = lifecycle(&mut rng);
            let first = states.remove(0);
            let message = Message {
                id: next_message,
                business_id,
                ids,
                states,
            };
            (message, first)
        } else {
            let i = rng.below(pending.len() as u64) as usize;
            let mut message = pending.swap_remove(i);
            let state = message.states.remove(0);
            (message, state)
        };
        ts += rng.below(3) as i64;
        let ids: Vec<String> = message.ids.iter().map(|i| format!("\"{i}\"")).collect();
        out.push(
            format!(
                r#"{{"bizId":"biz{}","businessId":{},"ids":[{}],"logTimestamp":{ts},"messageId":"msg{:015}","state":{state}}}"#,
                message.id % 1000,
                message.business_id,
                ids.join(","),
                message.id,
            )
            .into_bytes(),
        );
        if !message.states.is_empty() {
            pending.push(message);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::decode;

    #[test]
    fn messages_go_through_their_lifecycle_with_the_same_receivers() {
        let events = payloads(5_000, 7);
        assert_eq!(events, payloads(5_000, 7), "deterministic");
        let mut by_message: std::collections::HashMap<String, Vec<(i64, Vec<String>)>> =
            Default::default();
        for p in &events {
            let ev = decode(p).expect("valid");
            by_message
                .entry(ev.message_id.clone().expect("messageId").into_owned())
                .or_default()
                .push((ev.state, ev.ids.iter().map(|i| i.to_string()).collect()));
        }
        let per_message = events.len() as f64 / by_message.len() as f64;
        assert!((1.8..2.4).contains(&per_message), "{per_message}");
        for states in by_message.values() {
            assert_eq!(states[0].0, 10, "received first: {states:?}");
            assert!(states.iter().all(|(_, ids)| *ids == states[0].1));
        }
    }
}
