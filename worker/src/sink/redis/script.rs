//! The claim script, and the apply decisions.
//!
//! Batches are applied with native commands in a transaction (`apply.rs`, `writes.rs`); only the
//! claim, which must read and bump the epoch in one step, is a Lua script.

use std::sync::LazyLock;

use redis::{Script, Value};

use super::window::SeriesMarks;
use super::SinkError;

/// `KEYS[1]` the fence; `ARGV`: the epoch floor, the `next_offset` to write when the fence has
/// none (`''`: none known), and the mode. `claim`: the epoch becomes `max(stored + 1, floor)`.
/// `restore` (an owner whose fence vanished under it): the epoch stays the floor (the caller's
/// own), refused with status 1 when a newer one is stored. Reply `{status, epoch, next_offset|nil,
/// missing, clock|nil, learned|nil}`: status 0 done, 1 fenced; `missing` 1 when the fence had no
/// `next_offset`; `clock` and `learned` what the fence stores of the event-time series with the
/// offset (`window.rs`). Epochs go
/// through `%.0f`: Lua 5.1 prints numbers above 1e14 in exponent notation.
const CLAIM_LUA: &str = r#"#!lua
local stored = redis.call('HMGET', KEYS[1], 'epoch', 'next_offset', 'max_event_ms', 'learned_ms')
local stored_epoch = tonumber(stored[1]) or 0
local floor = tonumber(ARGV[1])
local epoch = stored_epoch + 1
if ARGV[3] == 'restore' then
  if stored_epoch > floor then
    return {1, stored[1], stored[2], 0}
  end
  epoch = floor
elseif floor > epoch then
  epoch = floor
end
local next_offset = stored[2]
local missing = 0
if not next_offset then
  missing = 1
  if ARGV[2] ~= '' then next_offset = ARGV[2] end
end
local epoch_text = string.format('%.0f', epoch)
if next_offset then
  redis.call('HSET', KEYS[1], 'epoch', epoch_text, 'next_offset', next_offset)
else
  redis.call('HSET', KEYS[1], 'epoch', epoch_text)
end
return {0, epoch_text, next_offset, missing, stored[3], stored[4]}
"#;

/// A script's source and SHA1 (for `EVALSHA` / `SCRIPT LOAD`).
pub(crate) struct LuaScript {
    pub(crate) source: &'static str,
    hash: String,
}

impl LuaScript {
    pub(crate) fn new(source: &'static str) -> Self {
        Self {
            source,
            hash: Script::new(source).get_hash().to_owned(),
        }
    }

    pub(crate) fn hash(&self) -> &str {
        &self.hash
    }
}

pub(crate) static CLAIM_SCRIPT: LazyLock<LuaScript> = LazyLock::new(|| LuaScript::new(CLAIM_LUA));

/// What an apply decided (see `apply::decide`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ApplyReply {
    Applied {
        commands: usize,
        write_errors: usize,
        first_write_error: Option<String>,
    },
    AlreadyApplied {
        stored_next_offset: i64,
    },
    Fenced {
        stored_epoch: u64,
    },
    Overlap {
        stored_next_offset: i64,
    },
    /// Redis holds less than this batch's owner applied: the fence ends before the batch's first
    /// offset, or (`None`) has no `next_offset` at all. Nothing was written. `marks`: what the
    /// fence stores of the event-time series, read with the decision.
    Gap {
        stored_next_offset: Option<i64>,
        marks: SeriesMarks,
    },
}

fn bad(what: &str, value: &Value) -> SinkError {
    SinkError::Script(format!("unexpected {what} in script reply: {value:?}"))
}

pub(crate) fn int_of(value: &Value) -> Option<i64> {
    match value {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn opt_int(value: &Value) -> Result<Option<i64>, SinkError> {
    match value {
        Value::Nil => Ok(None),
        other => int_of(other).map(Some).ok_or_else(|| bad("number", other)),
    }
}

/// What the claim script decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClaimReply {
    Claimed {
        epoch: u64,
        next_offset: Option<i64>,
        /// The fence had no `next_offset` before this claim.
        was_missing: bool,
        /// What the fence stores of the event-time series with `next_offset`.
        series: SeriesMarks,
    },
    /// `restore` only: a newer owner's epoch is stored.
    Fenced { stored_epoch: u64 },
}

pub(crate) fn parse_claim_reply(value: &Value) -> Result<ClaimReply, SinkError> {
    let Value::Array(items) = value else {
        return Err(bad("reply", value));
    };
    let item = |i: usize| items.get(i).unwrap_or(&Value::Nil);
    let status = int_of(item(0)).ok_or_else(|| bad("status", value))?;
    let epoch = int_of(item(1)).ok_or_else(|| bad("epoch", value))?.max(0) as u64;
    Ok(match status {
        0 => ClaimReply::Claimed {
            epoch,
            next_offset: opt_int(item(2))?,
            was_missing: int_of(item(3)) == Some(1),
            series: SeriesMarks {
                clock: opt_int(item(4))?,
                learned: opt_int(item(5))?,
            },
        },
        1 => ClaimReply::Fenced {
            stored_epoch: epoch,
        },
        _ => return Err(bad("status", item(0))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn malformed_claim_replies_are_script_errors() {
        assert!(parse_claim_reply(&Value::Array(vec![])).is_err());
        assert!(parse_claim_reply(&Value::Int(0)).is_err());
    }

    #[test]
    fn claim_replies_carry_the_epoch_and_the_resume_offset() {
        let fresh = Value::Array(vec![Value::Int(0), bulk("1"), bulk("0"), Value::Int(1)]);
        assert_eq!(
            parse_claim_reply(&fresh).expect("parses"),
            ClaimReply::Claimed {
                epoch: 1,
                next_offset: Some(0),
                was_missing: true,
                series: SeriesMarks::default()
            }
        );
        let resumed = Value::Array(vec![
            Value::Int(0),
            bulk("4194304"),
            bulk("1200"),
            Value::Int(0),
            bulk("1700000000000"),
            bulk("1699999990000"),
        ]);
        assert_eq!(
            parse_claim_reply(&resumed).expect("parses"),
            ClaimReply::Claimed {
                epoch: 4_194_304,
                next_offset: Some(1200),
                was_missing: false,
                series: SeriesMarks {
                    clock: Some(1_700_000_000_000),
                    learned: Some(1_699_999_990_000)
                }
            }
        );
        let fenced = Value::Array(vec![Value::Int(1), bulk("9"), bulk("5"), Value::Int(0)]);
        assert_eq!(
            parse_claim_reply(&fenced).expect("parses"),
            ClaimReply::Fenced { stored_epoch: 9 }
        );
    }

    #[test]
    fn the_claim_script_has_a_stable_hash() {
        assert_eq!(CLAIM_SCRIPT.hash().len(), 40);
        assert!(
            CLAIM_SCRIPT.source.starts_with("#!lua\n"),
            "shebang: OOM checked up front"
        );
    }
}
