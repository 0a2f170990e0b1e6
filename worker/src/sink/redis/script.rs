//! The claim script, and the apply decisions.
//!
//! Batches are applied with native commands in a transaction (`apply.rs`, `writes.rs`); only the
//! claim, which must read and bump the epoch in one step, is a Lua script.

use std::sync::LazyLock;

use redis::{Script, Value};

use super::SinkError;

const CLAIM_LUA: &str = r#"#!lua
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
local next_offset = redis.call('HGET', KEYS[1], 'next_offset')
return {epoch, next_offset}
"#;

/// A script's source and SHA1 (for `EVALSHA` / `SCRIPT LOAD`).
pub(crate) struct LuaScript {
    pub(crate) source: &'static str,
    hash: String,
}

impl LuaScript {
    fn new(source: &'static str) -> Self {
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
    /// The fence has no `next_offset` (`None`) or ends before the batch: Redis lost writes it
    /// had acknowledged. Nothing written.
    Gap {
        stored_next_offset: Option<i64>,
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

/// `(epoch, next_offset)` from the claim script.
pub(crate) fn parse_claim_reply(value: &Value) -> Result<(u64, Option<i64>), SinkError> {
    let Value::Array(items) = value else {
        return Err(bad("reply", value));
    };
    let epoch = items
        .first()
        .and_then(int_of)
        .ok_or_else(|| bad("epoch", value))?;
    let next = match items.get(1) {
        None => None,
        Some(v) => opt_int(v)?,
    };
    Ok((epoch.max(0) as u64, next))
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
        let fresh = Value::Array(vec![Value::Int(1), Value::Nil]);
        assert_eq!(parse_claim_reply(&fresh).expect("parses"), (1, None));
        let resumed = Value::Array(vec![Value::Int(4), bulk("1200")]);
        assert_eq!(
            parse_claim_reply(&resumed).expect("parses"),
            (4, Some(1200))
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
