//! Reading what a primary's slots hold of one partition: every slot's fence field and unit
//! mark, pipelined natively (`HMGET` per slot). Not atomic across slots, and it need not be:
//! a zombie that moves a slot on after the read only makes the reader's expectation stale, which
//! the next unit's compare-and-set finds ([`super::fence::Mismatch::Moved`]).

use redis::aio::ConnectionLike;
use redis::Value;

use super::fence::{SlotFence, UnitMark};
use crate::sink::redis::{Layout, SinkError};

/// What one slot holds of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotRead {
    pub slot: u16,
    pub fence: Option<SlotFence>,
    pub mark: Option<UnitMark>,
}

fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        _ => String::new(),
    }
}

/// Reads `slots` (all served by the node `conn` reaches) for `partition`.
pub async fn read_slots<C>(
    conn: &mut C,
    layout: &Layout,
    partition: i32,
    slots: &[u16],
) -> Result<Vec<SlotRead>, SinkError>
where
    C: ConnectionLike + Send,
{
    let field = partition.to_string();
    let mark_field = format!("u{partition}");
    let mut pipe = redis::pipe();
    for &slot in slots {
        pipe.cmd("HMGET")
            .arg(layout.slot_fence_key(slot))
            .arg(&field)
            .arg(&mark_field);
    }
    let replies: Vec<Value> = pipe.query_async(conn).await?;
    slots
        .iter()
        .zip(&replies)
        .map(|(&slot, reply)| {
            let Value::Array(pair) = reply else {
                return Err(SinkError::Script(format!(
                    "unexpected HMGET reply {reply:?}"
                )));
            };
            Ok(SlotRead {
                slot,
                fence: SlotFence::parse(&text(pair.first()))?,
                mark: UnitMark::parse(&text(pair.get(1)))?,
            })
        })
        .collect()
}
