//! Applying one batch: `WATCH` the fence and read it (and Redis' clock) in one round trip, decide
//! in Rust, then send the batch's `MULTI`/`EXEC` of native commands (`writes.rs`), which moves the
//! fence last. `EXEC` runs nothing if the fence changed after `WATCH` (another owner's claim, a
//! concurrent apply of the same batch), and the apply starts over from the read.
//!
//! Why not one Lua script: Redis runs a command issued from Lua at about twice the cost of the
//! same command sent natively (arguments copied into Lua strings and back, replies converted),
//! and a transaction's native commands cost it ~1.2× a plain pipeline's (BENCHMARKS.md, "Apply
//! designs compared").
//!
//! `WATCH` belongs to a connection, so each apply takes a connection of its own from a small
//! pool ([`ApplyConnections`]) and returns it only after a clean round; one that saw an error or
//! a timeout is dropped, with whatever `WATCH`/`MULTI` state it had.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};

use super::script::{int_of, ApplyReply};
use super::writes::{repair_expiry_cmd, user_expiry, ExecReply, UserExpiry, Writes};
use super::{Batch, SinkError};

/// Idle connections kept for applies (one per partition applying at the same time is enough).
const MAX_IDLE: usize = 16;

/// How often an apply starts over because the fence changed under its `WATCH` before it gives
/// up with a retryable error (the next try reads the new fence and decides again).
const MAX_ABORTED_ROUNDS: usize = 8;

/// The fence decision, in this order (agreed with the rollback work, issue #12):
/// 1. a newer stored epoch fences the caller;
/// 2. a fence without `next_offset` is a gap: Redis lost the fence (every claim writes one);
/// 3. a fence at or past the batch's end makes it a replay, skipped;
/// 4. a fence strictly inside the batch is an overlap, refused whole;
/// 5. a fence before the batch's first offset is a gap: Redis lost acknowledged writes;
/// 6. otherwise: apply. `None` means apply.
pub(crate) fn decide(
    stored_epoch: Option<i64>,
    stored_next: Option<i64>,
    batch: &Batch,
) -> Option<ApplyReply> {
    if let Some(stored) = stored_epoch.filter(|e| *e > 0 && *e as u64 > batch.epoch) {
        return Some(ApplyReply::Fenced {
            stored_epoch: stored as u64,
        });
    }
    let Some(stored_next) = stored_next else {
        return Some(ApplyReply::Gap {
            stored_next_offset: None,
        });
    };
    if stored_next >= batch.next_offset {
        Some(ApplyReply::AlreadyApplied {
            stored_next_offset: stored_next,
        })
    } else if stored_next > batch.first_offset {
        Some(ApplyReply::Overlap {
            stored_next_offset: stored_next,
        })
    } else if stored_next < batch.first_offset {
        Some(ApplyReply::Gap {
            stored_next_offset: Some(stored_next),
        })
    } else {
        None
    }
}

/// Connections for applies, each used by one apply at a time, all to the current primary.
#[derive(Clone)]
pub(crate) struct ApplyConnections {
    /// The current primary's client, replaced on a Sentinel failover (`primary.rs`).
    client: Arc<RwLock<redis::Client>>,
    config: AsyncConnectionConfig,
    idle: Arc<Mutex<Vec<MultiplexedConnection>>>,
}

impl ApplyConnections {
    pub(crate) fn new(client: redis::Client, timeout: Duration) -> Self {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        Self {
            client: Arc::new(RwLock::new(client)),
            config,
            idle: Arc::default(),
        }
    }

    /// New applies go to `client` (a new primary); the idle connections to the old one are
    /// dropped.
    pub(crate) fn switch_to(&self, client: redis::Client) {
        *self.client.write().unwrap_or_else(|p| p.into_inner()) = client;
        self.clear();
    }

    async fn take(&self) -> Result<MultiplexedConnection, SinkError> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        if let Some(conn) = idle {
            return Ok(conn);
        }
        let client = self
            .client
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok(client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?)
    }

    pub(crate) fn clear(&self) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn put(&self, conn: MultiplexedConnection) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }
}

/// What one round (read, decide, write) ended with.
enum Round {
    /// Decided and, if applied, written. `day_end`: the midnight user lists got.
    Done { reply: ApplyReply, day_end: i64 },
    /// The fence changed after `WATCH`: nothing written, start over.
    Aborted,
}

/// Applies `writes` of `batch` atomically with the fence decision. Retries (a bounded number of
/// times) only when the fence changed under the `WATCH`; every other error is returned, and the
/// caller retries the whole batch if it is retryable.
pub(crate) async fn apply(
    conns: &ApplyConnections,
    fence_key: &str,
    batch: &Batch,
    writes: &Writes,
    timeout: Duration,
) -> Result<(ApplyReply, i64), SinkError> {
    for _ in 0..MAX_ABORTED_ROUNDS {
        let mut conn = conns.take().await?;
        let round = tokio::time::timeout(timeout, round(&mut conn, fence_key, batch, writes))
            .await
            .map_err(|_| SinkError::timeout("apply batch", timeout))
            .and_then(|round| round)
            .inspect_err(|err| {
                if err.is_retryable() {
                    // The server went away or hangs: the idle connections are as stale as this one.
                    conns.clear();
                }
            })?;
        // Only a connection that finished its round cleanly goes back (no WATCH/MULTI left).
        conns.put(conn);
        match round {
            Round::Done { reply, day_end } => return Ok((reply, day_end)),
            Round::Aborted => {
                tracing::debug!("the fence changed during the apply; reading it again");
            }
        }
    }
    Err(SinkError::Unavailable(format!(
        "the fence kept changing during {MAX_ABORTED_ROUNDS} apply attempts"
    )))
}

async fn round(
    conn: &mut MultiplexedConnection,
    fence_key: &str,
    batch: &Batch,
    writes: &Writes,
) -> Result<Round, SinkError> {
    let (stored_epoch, stored_next, server_now_ms) = watch_fence(conn, fence_key).await?;
    if let Some(refusal) = decide(stored_epoch, stored_next, batch) {
        redis::cmd("UNWATCH").query_async::<()>(conn).await?;
        return Ok(Round::Done {
            reply: refusal,
            day_end: batch.user_expire_at,
        });
    }
    let expiry = user_expiry(
        batch.user_expire_at,
        batch.user_expire_at_next,
        server_now_ms,
    );
    let replies: Value = writes.pipeline(expiry).query_async(conn).await?;
    let Value::Array(replies) = replies else {
        return Err(SinkError::Script(format!(
            "unexpected transaction reply {replies:?}"
        )));
    };
    match writes.read_reply(&replies) {
        ExecReply::Aborted => Ok(Round::Aborted),
        ExecReply::Refused(err) => Err(err.into()),
        ExecReply::Ran {
            write_errors,
            first_write_error,
            created_trusted,
        } => {
            let repairs = repair_created_lists(conn, writes, &created_trusted, expiry).await;
            Ok(Round::Done {
                reply: ApplyReply::Applied {
                    commands: 3 + writes.commands() + repairs,
                    write_errors,
                    first_write_error,
                },
                day_end: expiry.day_end(server_now_ms),
            })
        }
    }
}

/// `WATCH fence; HMGET fence epoch next_offset; TIME` in one round trip.
async fn watch_fence(
    conn: &mut MultiplexedConnection,
    fence_key: &str,
) -> Result<(Option<i64>, Option<i64>, i64), SinkError> {
    let mut read = redis::pipe();
    read.cmd("WATCH").arg(fence_key).ignore();
    read.cmd("HMGET")
        .arg(fence_key)
        .arg("epoch")
        .arg("next_offset");
    read.cmd("TIME");
    let (fence, time): (Vec<Value>, Vec<Value>) = read.query_async(conn).await?;
    let field = |i: usize| fence.get(i).and_then(int_of);
    let now_ms = match (time.first().and_then(int_of), time.get(1).and_then(int_of)) {
        (Some(secs), Some(micros)) => secs * 1000 + micros / 1000,
        _ => return Err(SinkError::Script(format!("unexpected TIME reply {time:?}"))),
    };
    Ok((field(0), field(1), now_ms))
}

/// Sets the expiry of trusted user lists the batch created after all (deleted or lost since this
/// process set it): `PEXPIREAT … NX` right after `EXEC`. Not atomic with the batch: if the process
/// dies in between, such a list has no expiry until the next batch that finds it untrusted (a new
/// process trusts nothing) touches it. Returns the commands sent.
async fn repair_created_lists(
    conn: &mut MultiplexedConnection,
    writes: &Writes,
    created: &[u32],
    expiry: UserExpiry,
) -> usize {
    if created.is_empty() {
        return 0;
    }
    let mut pipe = redis::pipe();
    for key in created.iter().filter_map(|&index| writes.key_at(index)) {
        pipe.add_command(repair_expiry_cmd(key, expiry)).ignore();
    }
    tracing::info!(
        lists = created.len(),
        "user lists this process had set to expire tonight were gone; setting their expiry again"
    );
    if let Err(err) = pipe.query_async::<()>(conn).await {
        tracing::warn!(%err, "cannot set the expiry of re-created user lists");
    }
    pipe.len()
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn batch(epoch: u64, first_offset: i64, next_offset: i64) -> Batch {
        Batch {
            partition: 0,
            epoch,
            first_offset,
            next_offset,
            events: 1,
            skipped: 0,
            keys: 0,
            values: 0,
            now: SystemTime::now(),
            user_expire_at: 0,
            user_expire_at_next: 0,
            user_lists: Vec::new(),
            writes: None,
        }
    }

    #[test]
    fn the_fence_decision_follows_the_six_rules_in_order() {
        let b = batch(3, 10, 20);
        // 1. a newer owner, whatever the offsets
        assert_eq!(
            decide(Some(4), None, &b),
            Some(ApplyReply::Fenced { stored_epoch: 4 })
        );
        assert_eq!(
            decide(Some(4), Some(10), &b),
            Some(ApplyReply::Fenced { stored_epoch: 4 })
        );
        // 2. no next_offset: Redis lost the fence
        assert_eq!(
            decide(Some(3), None, &b),
            Some(ApplyReply::Gap {
                stored_next_offset: None
            })
        );
        assert_eq!(
            decide(None, None, &b),
            Some(ApplyReply::Gap {
                stored_next_offset: None
            })
        );
        // 3. at or past the batch's end: a replay
        for stored in [20, 25] {
            assert_eq!(
                decide(Some(3), Some(stored), &b),
                Some(ApplyReply::AlreadyApplied {
                    stored_next_offset: stored
                })
            );
        }
        // 4. strictly inside
        for stored in [11, 19] {
            assert_eq!(
                decide(Some(3), Some(stored), &b),
                Some(ApplyReply::Overlap {
                    stored_next_offset: stored
                })
            );
        }
        // 5. before the batch: Redis lost acknowledged writes
        assert_eq!(
            decide(Some(3), Some(9), &b),
            Some(ApplyReply::Gap {
                stored_next_offset: Some(9)
            })
        );
        // 6. exactly at the batch's start, by this owner or an older one
        assert_eq!(decide(Some(3), Some(10), &b), None);
        assert_eq!(decide(Some(2), Some(10), &b), None);
    }
}
