//! AnchorInfo decoding: what producers send is accepted, and every malformed payload is refused
//! with a precise reason.

use std::borrow::Cow;

use streamjob_worker::transform::{
    decode, decode_with_limit, AnchorInfo, DecodeError, DEFAULT_MAX_PAYLOAD_BYTES,
};

const VALID: &str = r#"{"bizId":"biz-1","businessId":1000000120240101,"ids":["13800000001","13800000002"],"logTimestamp":1700000000000,"messageId":"V1StGXR8_Z5jdHi6B-myT","state":60}"#;

#[test]
fn a_current_producers_event_decodes_fully() {
    let ev = decode(VALID.as_bytes()).expect("valid");
    assert_eq!(
        ev,
        AnchorInfo {
            biz_id: Some(Cow::Borrowed("biz-1")),
            business_id: 1000000120240101,
            ids: vec![Cow::Borrowed("13800000001"), Cow::Borrowed("13800000002")],
            log_timestamp: 1700000000000,
            message_id: Some(Cow::Borrowed("V1StGXR8_Z5jdHi6B-myT")),
            state: 60,
        }
    );
    assert_eq!(
        ev.simple_json(),
        r#"{"businessId":1000000120240101,"state":60,"timestamp":1700000000000}"#
    );
}

#[test]
fn legacy_timestamp_unknown_fields_and_any_state_are_accepted() {
    let ev = decode(
        br#"{"businessId":2000000220240101,"future":{"nested":[1,{"a":null}]},"ids":["oX"],"state":40001,"templateId":"x","timestamp":1600000000000}"#,
    )
    .expect("valid");
    assert_eq!(ev.log_timestamp, 1600000000000);
    assert_eq!(ev.state, 40001);
    assert_eq!(ev.message_id, None);
    assert_eq!(ev.biz_id, None);
    // When both are present, logTimestamp wins.
    let ev = decode(br#"{"businessId":1,"ids":["a"],"logTimestamp":2,"state":-1,"timestamp":1}"#)
        .expect("valid");
    assert_eq!(ev.log_timestamp, 2);
    assert_eq!(ev.state, -1);
    // Whitespace and field order do not matter; nulls count as absent.
    let ev = decode(
        b" {\n \"state\" : 10 , \"ids\" : [ \"a\" ] , \"messageId\" : null, \"bizId\": null,\n \"logTimestamp\" : 5, \"businessId\" : 7 }\n",
    )
    .expect("valid");
    assert_eq!((ev.business_id, ev.state, ev.log_timestamp), (7, 10, 5));
    assert_eq!(ev.message_id, None);
}

#[test]
fn ids_are_a_set_and_integer_ids_are_stringified() {
    let ev = decode(
        br#"{"businessId":1,"ids":["a","b","a",13800000001,"b"],"logTimestamp":1,"state":10}"#,
    )
    .expect("valid");
    assert_eq!(ev.ids, vec!["a", "b", "13800000001"]);
    let ev = decode(br#"{"businessId":1,"ids":["","x"],"logTimestamp":1,"state":10}"#);
    assert_eq!(
        ev,
        Err(DecodeError::InvalidId {
            index: 0,
            problem: "is an empty string"
        })
    );
}

#[test]
fn an_empty_message_id_is_no_message_id() {
    let ev = decode(br#"{"businessId":1,"ids":["a"],"logTimestamp":1,"messageId":"","state":10}"#)
        .expect("valid");
    assert_eq!(ev.message_id, None);
}

#[test]
fn escaped_strings_are_unescaped() {
    let ev = decode(
        br#"{"businessId":1,"ids":["\u7528\u6237","tab\tquote\"","emoji\ud83d\ude00"],"logTimestamp":1,"messageId":"m\/1","state":10}"#,
    )
    .expect("valid");
    assert_eq!(ev.ids, vec!["用户", "tab\tquote\"", "emoji😀"]);
    assert_eq!(ev.message_id.as_deref(), Some("m/1"));
}

/// Every malformed payload, with the kind and the reason fragment it must produce.
#[test]
fn malformed_events_are_refused_with_a_precise_reason() {
    let oversized = format!(
        r#"{{"businessId":1,"ids":["{}"],"logTimestamp":1,"state":1}}"#,
        "x".repeat(DEFAULT_MAX_PAYLOAD_BYTES)
    );
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (b"".to_vec(), "truncated", "EOF"),
        (b"   ".to_vec(), "truncated", "EOF"),
        (VALID.as_bytes()[..60].to_vec(), "truncated", "EOF"),
        (br#"{"businessId":1,"ids":["a"#.to_vec(), "truncated", "EOF"),
        (b"not json".to_vec(), "invalid_json", "expected"),
        (br#"{"businessId":1,}"#.to_vec(), "invalid_json", "line 1"),
        (
            format!("{VALID} trailing").into_bytes(),
            "invalid_json",
            "trailing",
        ),
        (
            format!("{VALID}{VALID}").into_bytes(),
            "invalid_json",
            "trailing",
        ),
        (b"\xff\xfe{}".to_vec(), "invalid_utf8", "offset 0"),
        (
            [
                br#"{"businessId":1,"ids":[""#.as_slice(),
                b"\xc3\x28",
                br#""],"logTimestamp":1,"state":1}"#,
            ]
            .concat(),
            "invalid_utf8",
            "offset 24",
        ),
        (
            oversized.into_bytes(),
            "too_large",
            "exceeds the 1048576-byte limit",
        ),
        (b"[1,2]".to_vec(), "not_an_object", "found array"),
        (b"\"text\"".to_vec(), "not_an_object", "found string"),
        (b"42".to_vec(), "not_an_object", "found integer"),
        (b"null".to_vec(), "not_an_object", "found null"),
        (
            br#"{"businessId":"1000000120240101","ids":["a"],"logTimestamp":1,"state":1}"#.to_vec(),
            "wrong_type",
            "`businessId` must be an integer, found string",
        ),
        (
            br#"{"businessId":1.5,"ids":["a"],"logTimestamp":1,"state":1}"#.to_vec(),
            "wrong_type",
            "`businessId` must be an integer, found float",
        ),
        (
            br#"{"businessId":18446744073709551615,"ids":["a"],"logTimestamp":1,"state":1}"#
                .to_vec(),
            "out_of_range",
            "`businessId` is out of range: 18446744073709551615",
        ),
        (
            br#"{"businessId":1,"ids":"13800000001","logTimestamp":1,"state":1}"#.to_vec(),
            "wrong_type",
            "`ids` must be an array of strings, found string",
        ),
        (
            br#"{"businessId":1,"ids":{"a":1},"logTimestamp":1,"state":1}"#.to_vec(),
            "wrong_type",
            "found object",
        ),
        (
            br#"{"businessId":1,"ids":["a",null],"logTimestamp":1,"state":1}"#.to_vec(),
            "invalid_id",
            "`ids[1]` is null",
        ),
        (
            br#"{"businessId":1,"ids":["a",1.5],"logTimestamp":1,"state":1}"#.to_vec(),
            "invalid_id",
            "`ids[1]` must be a string, found float",
        ),
        (
            br#"{"businessId":1,"ids":[["a"]],"logTimestamp":1,"state":1}"#.to_vec(),
            "invalid_id",
            "`ids[0]` must be a string, found array",
        ),
        (
            br#"{"businessId":1,"ids":[true],"logTimestamp":1,"state":1}"#.to_vec(),
            "invalid_id",
            "found boolean",
        ),
        (
            br#"{"businessId":1,"ids":[],"logTimestamp":1,"state":1}"#.to_vec(),
            "empty_ids",
            "`ids` is empty",
        ),
        (
            br#"{"businessId":1,"logTimestamp":1,"state":1}"#.to_vec(),
            "missing_ids",
            "missing required field `ids`",
        ),
        (
            br#"{"businessId":1,"ids":null,"logTimestamp":1,"state":1}"#.to_vec(),
            "missing_ids",
            "`ids`",
        ),
        (
            br#"{"ids":["a"],"logTimestamp":1,"state":1}"#.to_vec(),
            "missing_business_id",
            "missing required field `businessId`",
        ),
        (
            br#"{"businessId":1,"ids":["a"],"state":1}"#.to_vec(),
            "missing_timestamp",
            "missing required field `logTimestamp`",
        ),
        (
            br#"{"businessId":1,"ids":["a"],"logTimestamp":1}"#.to_vec(),
            "missing_state",
            "missing required field `state`",
        ),
        (
            br#"{"businessId":1,"ids":["a"],"logTimestamp":"2024-01-01","state":1}"#.to_vec(),
            "wrong_type",
            "`logTimestamp` must be an integer, found string",
        ),
        (
            br#"{"businessId":1,"ids":["a"],"logTimestamp":1,"state":"60"}"#.to_vec(),
            "wrong_type",
            "`state` must be an integer, found string",
        ),
        (
            br#"{"businessId":1,"ids":["a"],"logTimestamp":1,"messageId":12,"state":1}"#.to_vec(),
            "wrong_type",
            "`messageId` must be a string, found integer",
        ),
        (
            br#"{"bizId":[],"businessId":1,"ids":["a"],"logTimestamp":1,"state":1}"#.to_vec(),
            "wrong_type",
            "`bizId` must be a string, found array",
        ),
        (
            br#"{"businessId":1,"businessId":2,"ids":["a"],"logTimestamp":1,"state":1}"#.to_vec(),
            "duplicate_field",
            "duplicate field `businessId`",
        ),
    ];
    for (payload, kind, fragment) in cases {
        let shown = String::from_utf8_lossy(&payload[..payload.len().min(80)]).into_owned();
        let err = decode(&payload).expect_err(&shown);
        assert_eq!(err.kind(), kind, "{shown}: {err}");
        assert!(
            err.reason().contains(fragment),
            "{shown}: reason {:?} lacks {fragment:?}",
            err.reason()
        );
    }
}

#[test]
fn the_size_cap_is_configurable() {
    assert!(decode_with_limit(VALID.as_bytes(), VALID.len()).is_ok());
    let err = decode_with_limit(VALID.as_bytes(), VALID.len() - 1).expect_err("too large");
    assert_eq!(
        err,
        DecodeError::TooLarge {
            size: VALID.len(),
            limit: VALID.len() - 1
        }
    );
}

#[test]
fn a_semantic_error_does_not_hide_a_later_syntax_error() {
    // The first problem is a wrong type, but the payload is not even JSON: syntax wins.
    let err =
        decode(br#"{"businessId":"x","ids":["a"],"logTimestamp":1,"state":1"#).expect_err("bad");
    assert_eq!(err.kind(), "truncated");
}
