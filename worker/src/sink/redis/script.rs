//! The two Lua scripts of the sink and the decoding of their replies.
//!
//! # Apply script calling convention
//!
//! `KEYS[1]` is the partition's fence hash, then the batch's data keys in six list groups and
//! the template hashes (all keys are in `KEYS` so a Cluster-aware version can route them):
//! message lists with several values, message lists with one value, user lists to check with
//! several values / with one value, user lists known to expire tonight already (see
//! `checked_expiries.rs`) with several values / with one value, template hashes.
//!
//! `ARGV`: `epoch, first_offset, next_offset, message_ttl_ms, user_expire_at_ms,
//! user_expire_at_next_ms, template_ttl_ms`, the six list group sizes, the template count, then
//! per multi-value list `n, v1..vn` (values in upstream's LPUSH order), per single-value list
//! just its value, per template (then per other counter hash, e.g. the event-time series)
//! `n, field1, incr1, …, fieldn, incrn`, and last any `field, value` pairs the fence hash stores
//! with `next_offset` (a partition's clock, `window.rs`). Most keys of a batch
//! get one value, so passing them bare halves the arguments Redis must parse and turn into Lua
//! strings.
//!
//! Reply: `{status, stored_epoch|nil, stored_next_offset|nil, commands, write_errors,
//! first_write_error|nil}` with status 0 applied, 1 already applied, 2 fenced, 3 overlap.
//!
//! The shebang makes Redis 7 check `OOM`/`READONLY` before the script starts, so such a refusal
//! never leaves a half-applied batch. Data writes use `redis.pcall`: a write that fails on a key
//! of another type (`WRONGTYPE`, e.g. a receiver id that equals a template key) or an overflowing
//! counter is skipped and counted — upstream lost exactly that command too — instead of aborting
//! the script halfway, which would break exactly-once.

use std::sync::LazyLock;

use redis::{Script, Value};

use super::SinkError;

const APPLY_LUA: &str = r#"#!lua
local fence = KEYS[1]
local epoch = tonumber(ARGV[1])
local first_offset = tonumber(ARGV[2])
local next_offset = tonumber(ARGV[3])
local stored = redis.call('HMGET', fence, 'epoch', 'next_offset')
local stored_epoch = tonumber(stored[1])
local stored_next = tonumber(stored[2])
if stored_epoch and stored_epoch > epoch then
  return {2, stored[1], stored[2], 1, 0, false}
end
if stored_next then
  if stored_next >= next_offset then
    return {1, stored[1], stored[2], 1, 0, false}
  end
  if stored_next > first_offset then
    return {3, stored[1], stored[2], 1, 0, false}
  end
end

local message_ttl = ARGV[4]
local user_at_arg = ARGV[5]
local template_ttl = ARGV[7]
local commands = 1
local write_errors = 0
local first_error = false

local function failed(reply)
  if type(reply) == 'table' and reply.err then
    write_errors = write_errors + 1
    if not first_error then first_error = reply.err end
    return true
  end
  return false
end

-- The batch's end of day is computed when it is built. If applying it was delayed past that
-- midnight (Redis down over midnight), use the next one: PEXPIREAT in the past deletes the key.
local user_at = nil
local function user_expire_at()
  if user_at == nil then
    local t = redis.call('TIME')
    commands = commands + 1
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    user_at = tonumber(user_at_arg)
    if user_at <= now then
      user_at_arg = ARGV[6]
      user_at = tonumber(user_at_arg)
    end
    if user_at <= now then
      user_at = now + 86400000
      user_at_arg = tostring(user_at)
    end
  end
  return user_at
end

-- One TTL command per list, after its pushes: message lists live 3 days after their latest
-- event; a user list created by this batch (length == values pushed) gets tonight's midnight,
-- an existing one to check only if its expiry differs (a list written by someone else), an
-- existing one known to expire tonight nothing.
local function expire_message(key)
  failed(redis.pcall('PEXPIRE', key, message_ttl))
  commands = commands + 1
end

local function expire_user(key, len, n, check)
  if len == n then
    user_expire_at()
    failed(redis.pcall('PEXPIREAT', key, user_at_arg))
    commands = commands + 1
  elseif check then
    local at = user_expire_at()
    local current = redis.call('PEXPIRETIME', key)
    commands = commands + 1
    if current ~= at then
      failed(redis.pcall('PEXPIREAT', key, user_at_arg))
      commands = commands + 1
    end
  end
end

local k = 2
local a = 15

-- kind: 'message', 'check' (a user list whose expiry may be foreign) or 'trusted' (a user list
-- known to expire tonight).
local function expire(kind, key, len, n)
  if kind == 'message' then expire_message(key) else expire_user(key, len, n, kind == 'check') end
end

local function push_multi(count, kind)
  for _ = 1, count do
    local key = KEYS[k]
    k = k + 1
    local n = tonumber(ARGV[a])
    a = a + 1
    local last = a + n - 1
    local len = nil
    local ok = true
    while a <= last do
      -- at most 4000 values per LPUSH: Lua 5.1's unpack fails beyond ~8000 (LUAI_MAXCSTACK)
      local chunk_end = a + 3999
      if chunk_end > last then chunk_end = last end
      local reply = redis.pcall('LPUSH', key, unpack(ARGV, a, chunk_end))
      commands = commands + 1
      if failed(reply) then ok = false else len = reply end
      a = chunk_end + 1
    end
    if ok then expire(kind, key, len, n) end
  end
end

local function push_single(count, kind)
  for _ = 1, count do
    local key = KEYS[k]
    k = k + 1
    local reply = redis.pcall('LPUSH', key, ARGV[a])
    a = a + 1
    commands = commands + 1
    if not failed(reply) then expire(kind, key, reply, 1) end
  end
end

push_multi(tonumber(ARGV[8]), 'message')
push_single(tonumber(ARGV[9]), 'message')
push_multi(tonumber(ARGV[10]), 'check')
push_single(tonumber(ARGV[11]), 'check')
push_multi(tonumber(ARGV[12]), 'trusted')
push_single(tonumber(ARGV[13]), 'trusted')

for _ = 1, tonumber(ARGV[14]) do
  local key = KEYS[k]
  k = k + 1
  local n = tonumber(ARGV[a])
  a = a + 1
  local any = false
  for _ = 1, n do
    local reply = redis.pcall('HINCRBY', key, ARGV[a], ARGV[a + 1])
    commands = commands + 1
    if not failed(reply) then any = true end
    a = a + 2
  end
  if any then
    failed(redis.pcall('PEXPIRE', key, template_ttl))
    commands = commands + 1
  end
end

-- Any arguments left are field/value pairs the fence keeps with the offset (a partition's clock).
redis.call('HSET', fence, 'epoch', ARGV[1], 'next_offset', ARGV[3], unpack(ARGV, a))
commands = commands + 1
return {0, stored[1], stored[2], commands, write_errors, first_error}
"#;

const CLAIM_LUA: &str = r#"#!lua
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
local stored = redis.call('HMGET', KEYS[1], 'next_offset', 'max_event_ms')
local final = redis.call('HGET', KEYS[2], 'watermark_ms')
return {epoch, stored[1], stored[2], final}
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

pub(crate) static APPLY_SCRIPT: LazyLock<LuaScript> = LazyLock::new(|| LuaScript::new(APPLY_LUA));
pub(crate) static CLAIM_SCRIPT: LazyLock<LuaScript> = LazyLock::new(|| LuaScript::new(CLAIM_LUA));

/// What the apply script decided.
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

pub(crate) fn parse_apply_reply(value: &Value) -> Result<ApplyReply, SinkError> {
    let Value::Array(items) = value else {
        return Err(bad("reply", value));
    };
    let item = |i: usize| items.get(i).unwrap_or(&Value::Nil);
    let status = int_of(item(0)).ok_or_else(|| bad("status", item(0)))?;
    let stored_epoch = opt_int(item(1))?;
    let stored_next = opt_int(item(2))?;
    Ok(match status {
        0 => ApplyReply::Applied {
            commands: opt_int(item(3))?.unwrap_or(0).max(0) as usize,
            write_errors: opt_int(item(4))?.unwrap_or(0).max(0) as usize,
            first_write_error: match item(5) {
                Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
                Value::SimpleString(s) => Some(s.clone()),
                _ => None,
            },
        },
        1 => ApplyReply::AlreadyApplied {
            stored_next_offset: stored_next.unwrap_or(0),
        },
        2 => ApplyReply::Fenced {
            stored_epoch: stored_epoch.unwrap_or(0).max(0) as u64,
        },
        3 => ApplyReply::Overlap {
            stored_next_offset: stored_next.unwrap_or(0),
        },
        _ => return Err(bad("status", item(0))),
    })
}

/// What the claim script returns: `(epoch, next_offset, max_event_ms, recorded final job
/// watermark)`.
pub(crate) type ClaimReply = (u64, Option<i64>, Option<i64>, Option<i64>);

pub(crate) fn parse_claim_reply(value: &Value) -> Result<ClaimReply, SinkError> {
    let Value::Array(items) = value else {
        return Err(bad("reply", value));
    };
    let epoch = items
        .first()
        .and_then(int_of)
        .ok_or_else(|| bad("epoch", value))?;
    let field = |i: usize| match items.get(i) {
        None => Ok(None),
        Some(v) => opt_int(v),
    };
    Ok((epoch.max(0) as u64, field(1)?, field(2)?, field(3)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn apply_replies_decode_into_decisions() {
        let applied = Value::Array(vec![
            Value::Int(0),
            bulk("3"),
            Value::Nil,
            Value::Int(12),
            Value::Int(1),
            bulk("WRONGTYPE Operation against a key holding the wrong kind of value"),
        ]);
        assert_eq!(
            parse_apply_reply(&applied).expect("parses"),
            ApplyReply::Applied {
                commands: 12,
                write_errors: 1,
                first_write_error: Some(
                    "WRONGTYPE Operation against a key holding the wrong kind of value".into()
                ),
            }
        );
        let skipped = Value::Array(vec![
            Value::Int(1),
            bulk("3"),
            bulk("9007199254740000"),
            Value::Int(1),
            Value::Int(0),
            Value::Nil,
        ]);
        assert_eq!(
            parse_apply_reply(&skipped).expect("parses"),
            ApplyReply::AlreadyApplied {
                stored_next_offset: 9007199254740000
            }
        );
        let fenced = Value::Array(vec![Value::Int(2), bulk("7"), bulk("10")]);
        assert_eq!(
            parse_apply_reply(&fenced).expect("parses"),
            ApplyReply::Fenced { stored_epoch: 7 }
        );
        let overlap = Value::Array(vec![Value::Int(3), bulk("1"), bulk("5")]);
        assert_eq!(
            parse_apply_reply(&overlap).expect("parses"),
            ApplyReply::Overlap {
                stored_next_offset: 5
            }
        );
    }

    #[test]
    fn malformed_replies_are_script_errors() {
        for bad in [
            Value::Int(0),
            Value::Array(vec![]),
            Value::Array(vec![Value::Int(9)]),
            Value::Array(vec![Value::Int(0), bulk("x")]),
        ] {
            let err = parse_apply_reply(&bad).expect_err("refused");
            assert!(matches!(err, SinkError::Script(_)), "{bad:?}: {err}");
            assert!(!err.is_retryable());
        }
        assert!(parse_claim_reply(&Value::Array(vec![])).is_err());
    }

    #[test]
    fn claim_replies_carry_the_epoch_and_the_resume_offset() {
        let fresh = Value::Array(vec![Value::Int(1), Value::Nil]);
        assert_eq!(
            parse_claim_reply(&fresh).expect("parses"),
            (1, None, None, None)
        );
        let resumed = Value::Array(vec![
            Value::Int(4),
            bulk("1200"),
            bulk("1700000000000"),
            bulk("1699999990000"),
        ]);
        assert_eq!(
            parse_claim_reply(&resumed).expect("parses"),
            (
                4,
                Some(1200),
                Some(1_700_000_000_000),
                Some(1_699_999_990_000)
            )
        );
    }

    #[test]
    fn the_scripts_have_distinct_stable_hashes() {
        assert_eq!(APPLY_SCRIPT.hash().len(), 40);
        assert_ne!(APPLY_SCRIPT.hash(), CLAIM_SCRIPT.hash());
        assert!(
            APPLY_SCRIPT.source.starts_with("#!lua\n"),
            "shebang: OOM checked up front"
        );
    }
}
