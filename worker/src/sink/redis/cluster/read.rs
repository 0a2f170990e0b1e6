//! Reading what a primary's slots hold of one partition: every slot's fence field and unit
//! mark, pipelined natively (`HMGET` per slot). Not atomic across slots, and it need not be:
//! a zombie that moves a slot on after the read only makes the reader's expectation stale, which
//! the next unit's compare-and-set finds ([`super::fence::Mismatch::Moved`]).

use redis::aio::ConnectionLike;
use redis::{ServerErrorKind, Value};

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
    // Per reply, so that a slot that moved is told apart from a failure.
    let replies: Vec<Value> = pipe.ignore_errors().query_async(conn).await?;
    slots
        .iter()
        .zip(&replies)
        .map(|(&slot, reply)| {
            if let Value::ServerError(err) = reply {
                return Err(read_error(slot, err));
            }
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

/// A slot that moved (`MOVED`, or `ASK` mid-migration) since the slot map was read is a wait,
/// as it is for a unit: the caller reads the map again and retries (a claim or a rewind during
/// a reshard). Other errors are classified as everywhere else.
fn read_error(slot: u16, err: &redis::ServerError) -> SinkError {
    match err.kind() {
        Some(ServerErrorKind::Moved | ServerErrorKind::Ask) => SinkError::Unavailable(format!(
            "slot {slot} moved while its fence was read ({} {}); reading the slot map again",
            err.code(),
            err.details().unwrap_or_default()
        )),
        _ => redis::RedisError::from(err.clone()).into(),
    }
}
