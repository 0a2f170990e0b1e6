//! Redis I/O of the event-time series outside the batch apply: the jobmanager's finality record
//! and the read side. Key names come from [`super::Layout`]; the rules from [`super::window`].

use std::collections::BTreeMap;

use redis::Value;

use super::{script, RedisSink, SinkError};

/// Moves the recorded final watermark forward only: `KEYS[1]` the final key, `ARGV` the
/// watermark and the end before which every window is final. Returns the stored watermark.
const RECORD_FINAL_LUA: &str = r#"
local current = tonumber(redis.call('HGET', KEYS[1], 'watermark_ms'))
if current == nil or tonumber(ARGV[1]) > current then
  redis.call('HSET', KEYS[1], 'watermark_ms', ARGV[1], 'final_before_ms', ARGV[2])
  return ARGV[1]
end
return tostring(current)
"#;

impl RedisSink {
    /// Records `watermark_ms` as the job's final watermark (windows ending at or before
    /// `final_before_ms` are complete), unless a later one is recorded already. Returns the one
    /// recorded afterwards.
    pub async fn record_final_watermark(
        &self,
        watermark_ms: i64,
        final_before_ms: i64,
    ) -> Result<i64, SinkError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(RECORD_FINAL_LUA)
            .arg(1)
            .arg(self.layout.series_final_key())
            .arg(watermark_ms)
            .arg(final_before_ms);
        let key = self.layout.series_final_key();
        let reply = self
            .query(key.as_bytes(), &cmd, "record final watermark")
            .await?;
        script::int_of(&reply)
            .ok_or_else(|| SinkError::Script(format!("unexpected reply {reply:?}")))
    }

    /// The recorded final watermark and final-before time, if any.
    pub async fn read_final_watermark(&self) -> Result<Option<(i64, i64)>, SinkError> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.layout.series_final_key())
            .arg("watermark_ms")
            .arg("final_before_ms");
        let key = self.layout.series_final_key();
        let reply = self
            .query(key.as_bytes(), &cmd, "read final watermark")
            .await?;
        let Value::Array(items) = &reply else {
            return Err(SinkError::Script(format!("unexpected reply {reply:?}")));
        };
        let field = |i: usize| items.get(i).and_then(script::int_of);
        Ok(field(0).zip(field(1)))
    }

    /// Every field of one template's series hash.
    pub async fn read_series(&self, business_id: i64) -> Result<BTreeMap<String, i64>, SinkError> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(self.layout.series_key(business_id));
        let key = self.layout.series_key(business_id);
        let reply = self.query(key.as_bytes(), &cmd, "read series").await?;
        let mut fields = BTreeMap::new();
        let items: Vec<(Value, Value)> = match reply {
            Value::Map(pairs) => pairs,
            Value::Array(flat) => {
                let mut pairs = Vec::new();
                let mut it = flat.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((k, v));
                }
                pairs
            }
            other => return Err(SinkError::Script(format!("unexpected reply {other:?}"))),
        };
        for (k, v) in items {
            let key = match k {
                Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
                Value::SimpleString(s) => s,
                _ => continue,
            };
            if let Some(n) = script::int_of(&v) {
                fields.insert(key, n);
            }
        }
        Ok(fields)
    }
}
