//! Zero-copy decoding of fastjson-serialised AnchorInfo events.
//!
//! The decoder is a hand-written serde visitor rather than `#[derive(Deserialize)]` so that
//! every refusal is a typed [`DecodeError`] naming the field (a derive only yields stringly
//! `serde_json` errors), and so that strings borrow from the payload whenever the JSON holds them
//! without escapes (`Cow::Borrowed`); only escaped strings and stringified integer ids allocate.
//!
//! Decisions (upstream compatibility first, then "never write garbage keys"):
//! - `logTimestamp` wins over the legacy `timestamp`; either one is enough.
//! - Unknown fields are skipped (after a syntax check), as fastjson does.
//! - `state` is any integer: WeChat channels put raw error codes (e.g. 40001) there.
//! - `ids` is a *set* of strings upstream (`Set<String>`): duplicates within one event are
//!   collapsed (first occurrence kept), so one event pushes once per distinct id and the template
//!   counter grows by the number of distinct ids — what upstream's `HashSet` would have done.
//! - Integer ids are stringified (fastjson coerces numbers into a `Set<String>`); floats, booleans,
//!   nulls, arrays, objects and empty strings are refused: they would become keys such as
//!   `"null"` or `""`, one of upstream's defects.
//! - An empty `messageId` counts as absent (no `Austin:MessageId:` key); a null one too.
//! - A field given twice is refused rather than guessing which one the producer meant.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::DecodeError;

/// Largest payload [`decode`] accepts. Real AnchorInfo events are a few hundred bytes; Kafka's
/// default `message.max.bytes` is about 1 MiB, so nothing legitimate is bigger.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// One trace event. Strings borrow from the payload where possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorInfo<'a> {
    /// Caller's business id (optional, not written to Redis).
    pub biz_id: Option<Cow<'a, str>>,
    /// 16-digit template business id (`templateType*1000000 + templateId` then `yyyyMMdd`).
    pub business_id: i64,
    /// Distinct receivers, in first-occurrence order; never empty, no empty strings.
    pub ids: Vec<Cow<'a, str>>,
    /// Event time, epoch milliseconds (`logTimestamp`, or legacy `timestamp`).
    pub log_timestamp: i64,
    /// Message id, when the producer sent a non-empty one.
    pub message_id: Option<Cow<'a, str>>,
    /// `AnchorState` code or a raw channel error code.
    pub state: i64,
}

impl AnchorInfo<'_> {
    /// Appends upstream's `SimpleAnchorInfo` JSON, byte-exact as fastjson writes it (keys sorted,
    /// no spaces): `{"businessId":B,"state":S,"timestamp":T}`. All three fields are always present
    /// on a decoded event, so there is no null to leave out.
    pub fn write_simple_json(&self, out: &mut Vec<u8>) {
        let mut num = itoa::Buffer::new();
        out.extend_from_slice(b"{\"businessId\":");
        out.extend_from_slice(num.format(self.business_id).as_bytes());
        out.extend_from_slice(b",\"state\":");
        out.extend_from_slice(num.format(self.state).as_bytes());
        out.extend_from_slice(b",\"timestamp\":");
        out.extend_from_slice(num.format(self.log_timestamp).as_bytes());
        out.push(b'}');
    }

    /// [`AnchorInfo::write_simple_json`] into a new string.
    pub fn simple_json(&self) -> String {
        let mut out = Vec::with_capacity(64);
        self.write_simple_json(&mut out);
        // Only ASCII digits, '-' and fixed ASCII punctuation were written.
        String::from_utf8(out).unwrap_or_default()
    }

    /// Copies every borrowed string, detaching the event from its payload buffer.
    pub fn into_owned(self) -> AnchorInfo<'static> {
        AnchorInfo {
            biz_id: self.biz_id.map(|s| Cow::Owned(s.into_owned())),
            business_id: self.business_id,
            ids: self
                .ids
                .into_iter()
                .map(|s| Cow::Owned(s.into_owned()))
                .collect(),
            log_timestamp: self.log_timestamp,
            message_id: self.message_id.map(|s| Cow::Owned(s.into_owned())),
            state: self.state,
        }
    }
}

/// Decodes one payload with the default size cap ([`DEFAULT_MAX_PAYLOAD_BYTES`]).
pub fn decode(payload: &[u8]) -> Result<AnchorInfo<'_>, DecodeError> {
    decode_with_limit(payload, DEFAULT_MAX_PAYLOAD_BYTES)
}

/// Decodes one payload, refusing anything longer than `max_payload_bytes`.
pub fn decode_with_limit(
    payload: &[u8],
    max_payload_bytes: usize,
) -> Result<AnchorInfo<'_>, DecodeError> {
    if payload.len() > max_payload_bytes {
        return Err(DecodeError::TooLarge {
            size: payload.len(),
            limit: max_payload_bytes,
        });
    }
    // Validating UTF-8 up front gives a precise error and lets serde_json skip its own checks.
    let text = std::str::from_utf8(payload).map_err(|e| DecodeError::InvalidUtf8 {
        valid_up_to: e.valid_up_to(),
    })?;
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = Parsed::deserialize(&mut de).map_err(DecodeError::from_json)?;
    de.end().map_err(DecodeError::from_json)?;
    parsed.0
}

/// The top-level result: JSON syntax errors travel as `serde_json::Error`, semantic ones as a
/// typed `DecodeError` inside `Ok` so they survive serde's stringly error channel.
struct Parsed<'a>(Result<AnchorInfo<'a>, DecodeError>);

impl<'de> Deserialize<'de> for Parsed<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(EventVisitor)
    }
}

/// A field value as found, before we decide whether it is acceptable.
enum Loose<T> {
    Value(T),
    Null,
    Wrong(&'static str),
    OutOfRange(String),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    BizId,
    BusinessId,
    Ids,
    LogTimestamp,
    Timestamp,
    MessageId,
    State,
    Other,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Field::BizId => "bizId",
            Field::BusinessId => "businessId",
            Field::Ids => "ids",
            Field::LogTimestamp => "logTimestamp",
            Field::Timestamp => "timestamp",
            Field::MessageId => "messageId",
            Field::State => "state",
            Field::Other => "",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Field::BizId => 1,
            Field::BusinessId => 2,
            Field::Ids => 4,
            Field::LogTimestamp => 8,
            Field::Timestamp => 16,
            Field::MessageId => 32,
            Field::State => 64,
            Field::Other => 0,
        }
    }
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl Visitor<'_> for FieldVisitor {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Field, E> {
                Ok(match v {
                    "bizId" => Field::BizId,
                    "businessId" => Field::BusinessId,
                    "ids" => Field::Ids,
                    "logTimestamp" => Field::LogTimestamp,
                    "timestamp" => Field::Timestamp,
                    "messageId" => Field::MessageId,
                    "state" => Field::State,
                    _ => Field::Other,
                })
            }
        }
        deserializer.deserialize_identifier(FieldVisitor)
    }
}

fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Implements the visit methods of a "what JSON type was this" visitor for every type the
/// visitor does not accept, returning `$wrong(type name)`.
macro_rules! refuse_other_types {
    ($wrong:expr; $($skip:ident),*) => {
        refuse_other_types!(@each $wrong; $($skip),*);
    };
    (@each $wrong:expr; ) => {};
    (@each $wrong:expr; bool $(, $rest:ident)*) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> { Ok($wrong("boolean")) }
        refuse_other_types!(@each $wrong; $($rest),*);
    };
    (@each $wrong:expr; f64 $(, $rest:ident)*) => {
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> { Ok($wrong("float")) }
        refuse_other_types!(@each $wrong; $($rest),*);
    };
    (@each $wrong:expr; int $(, $rest:ident)*) => {
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> { Ok($wrong("integer")) }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> { Ok($wrong("integer")) }
        refuse_other_types!(@each $wrong; $($rest),*);
    };
    (@each $wrong:expr; str $(, $rest:ident)*) => {
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> { Ok($wrong("string")) }
        refuse_other_types!(@each $wrong; $($rest),*);
    };
    (@each $wrong:expr; seq $(, $rest:ident)*) => {
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            drain_seq(seq)?;
            Ok($wrong("array"))
        }
        refuse_other_types!(@each $wrong; $($rest),*);
    };
    (@each $wrong:expr; map $(, $rest:ident)*) => {
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            drain_map(map)?;
            Ok($wrong("object"))
        }
        refuse_other_types!(@each $wrong; $($rest),*);
    };
}

/// An integer field (`businessId`, `logTimestamp`, `state`).
struct IntVisitor;

impl<'de> Visitor<'de> for IntVisitor {
    type Value = Loose<i64>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an integer")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Loose::Value(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(match i64::try_from(v) {
            Ok(v) => Loose::Value(v),
            Err(_) => Loose::OutOfRange(v.to_string()),
        })
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Loose::Null)
    }
    refuse_other_types!(Loose::Wrong; bool, f64, str, seq, map);
}

struct IntField(Loose<i64>);
impl<'de> Deserialize<'de> for IntField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(IntVisitor).map(IntField)
    }
}

/// A string field (`bizId`, `messageId`), borrowed when unescaped.
struct StrVisitor;

impl<'de> Visitor<'de> for StrVisitor {
    type Value = Loose<Cow<'de, str>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Loose::Value(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Loose::Value(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Loose::Value(Cow::Owned(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Loose::Null)
    }
    refuse_other_types!(Loose::Wrong; bool, f64, int, seq, map);
}

struct StrField<'a>(Loose<Cow<'a, str>>);
impl<'de> Deserialize<'de> for StrField<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrVisitor).map(StrField)
    }
}

/// One element of `ids`.
enum IdElem<'a> {
    Id(Cow<'a, str>),
    Bad(&'static str),
}

fn bad_id(found: &'static str) -> IdElem<'static> {
    IdElem::Bad(match found {
        "boolean" => "must be a string, found boolean",
        "float" => "must be a string, found float",
        "array" => "must be a string, found array",
        "object" => "must be a string, found object",
        _ => "must be a string",
    })
}

struct IdElemVisitor;

impl<'de> Visitor<'de> for IdElemVisitor {
    type Value = IdElem<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a receiver id string")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(IdElem::Id(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(IdElem::Id(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(IdElem::Id(Cow::Owned(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(IdElem::Id(Cow::Owned(v.to_string())))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(IdElem::Id(Cow::Owned(v.to_string())))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(IdElem::Bad("is null"))
    }
    refuse_other_types!(bad_id; bool, f64, seq, map);
}

impl<'de> Deserialize<'de> for IdElem<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(IdElemVisitor)
    }
}

/// `ids`: the distinct ids, or the first unusable element.
type IdsValue<'a> = Result<Vec<Cow<'a, str>>, DecodeError>;

struct IdsVisitor;

impl<'de> Visitor<'de> for IdsVisitor {
    type Value = Loose<IdsValue<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of receiver ids")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut ids = Vec::with_capacity(seq.size_hint().unwrap_or(4).min(64));
        let mut problem = None;
        let mut index = 0;
        while let Some(elem) = seq.next_element::<IdElem<'de>>()? {
            if problem.is_none() {
                match elem {
                    IdElem::Id(id) if id.is_empty() => {
                        problem = Some(DecodeError::InvalidId {
                            index,
                            problem: "is an empty string",
                        })
                    }
                    IdElem::Id(id) => ids.push(id),
                    IdElem::Bad(p) => problem = Some(DecodeError::InvalidId { index, problem: p }),
                }
            }
            index += 1;
        }
        Ok(Loose::Value(match problem {
            Some(err) => Err(err),
            None => Ok(ids),
        }))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Loose::Null)
    }
    refuse_other_types!(Loose::Wrong; bool, f64, int, str, map);
}

struct IdsField<'a>(Loose<IdsValue<'a>>);
impl<'de> Deserialize<'de> for IdsField<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(IdsVisitor).map(IdsField)
    }
}

/// Removes repeated ids, keeping the first occurrence (upstream's `Set<String>`).
fn dedupe_ids(ids: &mut Vec<Cow<'_, str>>) {
    if ids.len() < 2 {
        return;
    }
    if ids.len() <= 16 {
        let mut kept = 0;
        for i in 0..ids.len() {
            if !ids[..kept].contains(&ids[i]) {
                ids.swap(kept, i);
                kept += 1;
            }
        }
        ids.truncate(kept);
    } else {
        let keep: Vec<bool> = {
            let mut seen = HashSet::with_capacity(ids.len());
            ids.iter().map(|id| seen.insert(id.as_ref())).collect()
        };
        let mut keep = keep.into_iter();
        ids.retain(|_| keep.next().unwrap_or(false));
    }
}

struct EventVisitor;

/// Accumulates the fields of one event while the map is read.
#[derive(Default)]
struct Fields<'a> {
    seen: u8,
    first_error: Option<DecodeError>,
    biz_id: Option<Cow<'a, str>>,
    business_id: Option<i64>,
    ids: Option<Vec<Cow<'a, str>>>,
    log_timestamp: Option<i64>,
    legacy_timestamp: Option<i64>,
    message_id: Option<Cow<'a, str>>,
    state: Option<i64>,
}

impl<'a> Fields<'a> {
    fn fail(&mut self, err: DecodeError) {
        if self.first_error.is_none() {
            self.first_error = Some(err);
        }
    }

    fn int(&mut self, field: Field, value: Loose<i64>) -> Option<i64> {
        match value {
            Loose::Value(v) => Some(v),
            Loose::Null => None,
            Loose::Wrong(found) => {
                self.fail(DecodeError::WrongType {
                    field: field.name(),
                    expected: "an integer",
                    found,
                });
                None
            }
            Loose::OutOfRange(value) => {
                self.fail(DecodeError::OutOfRange {
                    field: field.name(),
                    value,
                });
                None
            }
        }
    }

    fn string(&mut self, field: Field, value: Loose<Cow<'a, str>>) -> Option<Cow<'a, str>> {
        match value {
            Loose::Value(v) => Some(v),
            Loose::Null => None,
            Loose::Wrong(found) => {
                self.fail(DecodeError::WrongType {
                    field: field.name(),
                    expected: "a string",
                    found,
                });
                None
            }
            Loose::OutOfRange(_) => None,
        }
    }

    fn finish(self) -> Result<AnchorInfo<'a>, DecodeError> {
        if let Some(err) = self.first_error {
            return Err(err);
        }
        let business_id = self.business_id.ok_or(DecodeError::Missing {
            field: "businessId",
        })?;
        let mut ids = self.ids.ok_or(DecodeError::Missing { field: "ids" })?;
        let log_timestamp =
            self.log_timestamp
                .or(self.legacy_timestamp)
                .ok_or(DecodeError::Missing {
                    field: "logTimestamp",
                })?;
        let state = self.state.ok_or(DecodeError::Missing { field: "state" })?;
        if ids.is_empty() {
            return Err(DecodeError::EmptyIds);
        }
        dedupe_ids(&mut ids);
        Ok(AnchorInfo {
            biz_id: self.biz_id,
            business_id,
            ids,
            log_timestamp,
            message_id: self.message_id.filter(|m| !m.is_empty()),
            state,
        })
    }
}

fn not_an_object(found: &'static str) -> Parsed<'static> {
    Parsed(Err(DecodeError::NotAnObject { found }))
}

impl<'de> Visitor<'de> for EventVisitor {
    type Value = Parsed<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an AnchorInfo JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Fields::default();
        while let Some(field) = map.next_key::<Field>()? {
            if field == Field::Other {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            if fields.seen & field.bit() != 0 {
                fields.fail(DecodeError::DuplicateField {
                    field: field.name(),
                });
            }
            fields.seen |= field.bit();
            match field {
                Field::BizId => {
                    let v = map.next_value::<StrField<'de>>()?.0;
                    fields.biz_id = fields.string(field, v);
                }
                Field::MessageId => {
                    let v = map.next_value::<StrField<'de>>()?.0;
                    fields.message_id = fields.string(field, v);
                }
                Field::BusinessId => {
                    let v = map.next_value::<IntField>()?.0;
                    fields.business_id = fields.int(field, v);
                }
                Field::LogTimestamp => {
                    let v = map.next_value::<IntField>()?.0;
                    fields.log_timestamp = fields.int(field, v);
                }
                Field::Timestamp => {
                    let v = map.next_value::<IntField>()?.0;
                    fields.legacy_timestamp = fields.int(field, v);
                }
                Field::State => {
                    let v = map.next_value::<IntField>()?.0;
                    fields.state = fields.int(field, v);
                }
                Field::Ids => match map.next_value::<IdsField<'de>>()?.0 {
                    Loose::Value(Ok(ids)) => fields.ids = Some(ids),
                    Loose::Value(Err(err)) => fields.fail(err),
                    Loose::Null | Loose::OutOfRange(_) => {}
                    Loose::Wrong(found) => fields.fail(DecodeError::WrongType {
                        field: "ids",
                        expected: "an array of strings",
                        found,
                    }),
                },
                Field::Other => {}
            }
        }
        Ok(Parsed(fields.finish()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(not_an_object("null"))
    }
    refuse_other_types!(not_an_object; bool, f64, int, str, seq);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescaped_strings_are_borrowed_and_escaped_ones_owned() {
        let payload = br#"{"bizId":"b\"1","businessId":1000000120240101,"ids":["138","a\u0062"],"logTimestamp":1700000000000,"messageId":"m1","state":60}"#;
        let ev = decode(payload).expect("valid");
        assert!(matches!(ev.ids[0], Cow::Borrowed("138")));
        assert!(matches!(&ev.ids[1], Cow::Owned(s) if s == "ab"));
        assert!(matches!(ev.message_id, Some(Cow::Borrowed("m1"))));
        assert!(matches!(&ev.biz_id, Some(Cow::Owned(s)) if s == "b\"1"));
    }

    #[test]
    fn dedupe_keeps_first_occurrences_in_order_for_small_and_large_sets() {
        let mut small: Vec<Cow<str>> = ["a", "b", "a", "c", "b"].map(Cow::Borrowed).to_vec();
        dedupe_ids(&mut small);
        assert_eq!(small, ["a", "b", "c"]);
        let mut large: Vec<Cow<str>> = (0..40).map(|i| Cow::Owned((i % 7).to_string())).collect();
        dedupe_ids(&mut large);
        assert_eq!(large, ["0", "1", "2", "3", "4", "5", "6"]);
    }

    #[test]
    fn simple_json_is_fastjson_shaped() {
        let ev =
            decode(br#"{"businessId":-5,"ids":["x"],"timestamp":7,"state":40001}"#).expect("valid");
        assert_eq!(
            ev.simple_json(),
            r#"{"businessId":-5,"state":40001,"timestamp":7}"#
        );
    }
}
