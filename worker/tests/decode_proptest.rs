//! Property tests: decoding never panics, round-trips what producers write, and agrees with a
//! plain serde_json parse on whether the payload is JSON.

use proptest::prelude::*;
use streamjob_worker::transform::{decode, DecodeError};

const VALID: &str = r#"{"bizId":"biz-1","businessId":1000000120240101,"ids":["13800000001","13800000002"],"logTimestamp":1700000000000,"messageId":"V1StGXR8_Z5jdHi6B-myT","state":60}"#;

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Delete(usize, usize),
    Insert(usize, Vec<u8>),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), 1usize..8).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (
            any::<usize>(),
            prop::collection::vec(
                prop_oneof![
                    Just(b'"'),
                    Just(b'{'),
                    Just(b'}'),
                    Just(b'['),
                    Just(b']'),
                    Just(b','),
                    Just(b':'),
                    Just(b'\\'),
                    Just(b'-'),
                    Just(b'9'),
                    any::<u8>()
                ],
                1..6
            )
        )
            .prop_map(|(i, bytes)| Mutation::Insert(i, bytes)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(mut payload: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = payload.len().max(1);
        match m {
            Mutation::Flip(i, b) => {
                if !payload.is_empty() {
                    payload[i % len] = *b;
                }
            }
            Mutation::Delete(i, n) => {
                if !payload.is_empty() {
                    let start = i % len;
                    let end = (start + n).min(payload.len());
                    payload.drain(start..end);
                }
            }
            Mutation::Insert(i, bytes) => {
                let at = i % (payload.len() + 1);
                payload.splice(at..at, bytes.iter().copied());
            }
            Mutation::Truncate(i) => payload.truncate(i % len),
        }
    }
    payload
}

/// What a successful decode promises about its output.
fn check_invariants(payload: &[u8]) {
    match decode(payload) {
        Ok(ev) => {
            assert!(!ev.ids.is_empty());
            assert!(ev.ids.iter().all(|id| !id.is_empty()));
            let mut distinct = ev.ids.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(distinct.len(), ev.ids.len(), "ids are distinct");
            assert!(ev.message_id.as_deref() != Some(""));
            // Whatever decoded was JSON.
            assert!(serde_json::from_slice::<serde_json::Value>(payload).is_ok());
        }
        Err(err) => {
            assert!(!err.reason().is_empty());
            assert!(!err.kind().is_empty());
            // A payload serde_json accepts is never called invalid JSON by us.
            if serde_json::from_slice::<serde_json::Value>(payload).is_ok() {
                assert!(
                    !matches!(
                        err,
                        DecodeError::InvalidJson { .. }
                            | DecodeError::Truncated { .. }
                            | DecodeError::InvalidUtf8 { .. }
                    ),
                    "{err}"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(payload in prop::collection::vec(any::<u8>(), 0..512)) {
        check_invariants(&payload);
    }

    #[test]
    fn mutated_valid_events_never_panic(mutations in prop::collection::vec(mutation(), 1..5)) {
        let payload = apply(VALID.as_bytes().to_vec(), &mutations);
        check_invariants(&payload);
    }

    #[test]
    fn producer_shaped_events_round_trip(
        biz in proptest::option::of("[a-z0-9-]{0,12}"),
        business_id in any::<i64>(),
        ids in prop::collection::vec("[0-9a-zA-Z_\\-\u{4e00}-\u{4e10}\"\\\\]{1,16}", 1..6),
        ts in any::<i64>(),
        message_id in proptest::option::of("[A-Za-z0-9_-]{1,21}"),
        state in any::<i64>(),
        legacy in any::<bool>(),
    ) {
        // fastjson shape: sorted keys, nulls omitted.
        let mut obj = serde_json::Map::new();
        if let Some(b) = &biz { obj.insert("bizId".into(), b.clone().into()); }
        obj.insert("businessId".into(), business_id.into());
        obj.insert("ids".into(), ids.clone().into());
        obj.insert(if legacy { "timestamp" } else { "logTimestamp" }.into(), ts.into());
        if let Some(m) = &message_id { obj.insert("messageId".into(), m.clone().into()); }
        obj.insert("state".into(), state.into());
        let payload = serde_json::to_vec(&obj).expect("serialises");
        let ev = decode(&payload).expect("producer events decode");
        prop_assert_eq!(ev.business_id, business_id);
        prop_assert_eq!(ev.log_timestamp, ts);
        prop_assert_eq!(ev.state, state);
        prop_assert_eq!(ev.biz_id.as_deref(), biz.as_deref());
        prop_assert_eq!(ev.message_id.as_deref(), message_id.as_deref());
        let mut expected: Vec<&str> = Vec::new();
        for id in &ids { if !expected.contains(&id.as_str()) { expected.push(id); } }
        prop_assert_eq!(ev.ids.iter().map(|c| c.as_ref()).collect::<Vec<_>>(), expected);
        let simple: serde_json::Value = serde_json::from_str(&ev.simple_json()).expect("json");
        prop_assert_eq!(simple, serde_json::json!({"businessId": business_id, "state": state, "timestamp": ts}));
    }
}
