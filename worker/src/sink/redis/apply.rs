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
//! a timeout is dropped, with whatever `WATCH`/`MULTI` state it had. These connections speak
//! RESP by hand (`resp.rs`, `resp_connection.rs`): the transaction is encoded once, straight
//! from the batch, and its thousands of `QUEUED` replies are skipped, not parsed into values.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::connection::Target;
use super::resp::{Commands, Reply};
use super::resp_connection::RespConnection;
use super::script::ApplyReply;
use super::window::{SeriesMarks, CLOCK_FIELD, LEARNED_FIELD};
use super::writes::{repair_expiry_command, user_expiry, ExecReply, UserExpiry, Writes};
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
            marks: SeriesMarks::default(),
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
            marks: SeriesMarks::default(),
        })
    } else {
        None
    }
}

/// Connections for applies, each used by one apply at a time, all to the current primary.
#[derive(Clone)]
pub(crate) struct ApplyConnections {
    /// The current primary, replaced on a Sentinel failover (`primary.rs`).
    target: Arc<RwLock<Target>>,
    timeout: Duration,
    idle: Arc<Mutex<Vec<RespConnection>>>,
}

impl ApplyConnections {
    pub(crate) fn new(target: Target, timeout: Duration) -> Self {
        Self {
            target: Arc::new(RwLock::new(target)),
            timeout,
            idle: Arc::default(),
        }
    }

    /// New applies go to `target` (a new primary); the idle connections to the old one are
    /// dropped.
    pub(crate) fn switch_to(&self, target: Target) {
        *self.target.write().unwrap_or_else(|p| p.into_inner()) = target;
        self.clear();
    }

    /// The current primary.
    pub(crate) fn target(&self) -> Target {
        self.target
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn take(&self) -> Result<RespConnection, SinkError> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        if let Some(conn) = idle {
            return Ok(conn);
        }
        let endpoint = self.target().endpoint()?;
        tokio::time::timeout(self.timeout, RespConnection::connect(&endpoint))
            .await
            .map_err(|_| SinkError::timeout("connecting to redis", self.timeout))?
    }

    pub(crate) fn clear(&self) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn put(&self, conn: RespConnection) {
        if conn.is_broken() {
            return;
        }
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
    conn: &mut RespConnection,
    fence_key: &str,
    batch: &Batch,
    writes: &Writes,
) -> Result<Round, SinkError> {
    let (stored_epoch, stored_next, marks, server_now_ms) = watch_fence(conn, fence_key).await?;
    if let Some(mut refusal) = decide(stored_epoch, stored_next, batch) {
        if let ApplyReply::Gap {
            marks: gap_marks, ..
        } = &mut refusal
        {
            // Read with the decision, so the rewind never depends on a later read of the fence
            // (after a restart of Redis the sink's other connection may fail that one).
            *gap_marks = marks;
        }
        let mut unwatch = Commands::default();
        unwatch.command(1).arg(b"UNWATCH");
        conn.query(&unwatch).await?;
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
    conn.send(&writes.transaction(expiry)).await?;
    // MULTI's OK and a QUEUED per command, then EXEC's reply.
    let queued_error = conn.statuses(writes.commands() - 1).await?;
    let exec = conn.reply().await?;
    match writes.read_reply(queued_error, exec) {
        ExecReply::Aborted => Ok(Round::Aborted),
        ExecReply::Refused(err) => Err(err),
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

/// `WATCH fence; HMGET fence epoch next_offset max_event_ms learned_ms; TIME` in one round trip:
/// the fence's epoch, offset and series marks, and Redis' clock.
async fn watch_fence(
    conn: &mut RespConnection,
    fence_key: &str,
) -> Result<(Option<i64>, Option<i64>, SeriesMarks, i64), SinkError> {
    let mut read = Commands::default();
    read.command(2).arg(b"WATCH").arg(fence_key.as_bytes());
    read.command(6)
        .arg(b"HMGET")
        .arg(fence_key.as_bytes())
        .arg(b"epoch")
        .arg(b"next_offset")
        .arg(CLOCK_FIELD.as_bytes())
        .arg(LEARNED_FIELD.as_bytes());
    read.command(1).arg(b"TIME");
    let replies = conn.query(&read).await?;
    let unexpected =
        |what: &str, reply: &Reply| SinkError::Script(format!("unexpected {what} reply {reply:?}"));
    for reply in &replies {
        if let Reply::Error(err) = reply {
            return Err(SinkError::from_server_reply(err));
        }
    }
    let (fence, time) = match &replies[..] {
        [_, Reply::Array(Some(fence)), Reply::Array(Some(time))] => (fence, time),
        [_, fence, _] => return Err(unexpected("HMGET", fence)),
        _ => return Err(SinkError::Script(format!("unexpected replies {replies:?}"))),
    };
    let field = |i: usize| fence.get(i).and_then(Reply::as_int);
    let now_ms = match (
        time.first().and_then(Reply::as_int),
        time.get(1).and_then(Reply::as_int),
    ) {
        (Some(secs), Some(micros)) => secs * 1000 + micros / 1000,
        _ => return Err(SinkError::Script(format!("unexpected TIME reply {time:?}"))),
    };
    let marks = SeriesMarks {
        clock: field(2),
        learned: field(3),
    };
    Ok((field(0), field(1), marks, now_ms))
}

/// Sets the expiry of trusted user lists the batch created after all (deleted or lost since this
/// process set it): `PEXPIREAT … NX` right after `EXEC`. Not atomic with the batch: if the process
/// dies in between, such a list has no expiry until the next batch that finds it untrusted (a new
/// process trusts nothing) touches it. Returns the commands sent.
async fn repair_created_lists(
    conn: &mut RespConnection,
    writes: &Writes,
    created: &[u32],
    expiry: UserExpiry,
) -> usize {
    if created.is_empty() {
        return 0;
    }
    let mut repairs = Commands::default();
    for key in created.iter().filter_map(|&index| writes.key_at(index)) {
        repair_expiry_command(&mut repairs, key, expiry);
    }
    tracing::info!(
        lists = created.len(),
        "user lists this process had set to expire tonight were gone; setting their expiry again"
    );
    // The batch is applied: a failure here is only logged (a connection that failed is not
    // reused, `RespConnection::is_broken`).
    let failure = match conn.query(&repairs).await {
        Ok(replies) => replies.into_iter().find_map(|reply| match reply {
            Reply::Error(err) => Some(err),
            _ => None,
        }),
        Err(err) => Some(err.to_string()),
    };
    if let Some(err) = failure {
        tracing::warn!(%err, "cannot set the expiry of re-created user lists");
    }
    repairs.len()
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
            untrusted_user_lists: 0,
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
                stored_next_offset: None,
                marks: SeriesMarks::default()
            })
        );
        assert_eq!(
            decide(None, None, &b),
            Some(ApplyReply::Gap {
                stored_next_offset: None,
                marks: SeriesMarks::default()
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
                stored_next_offset: Some(9),
                marks: SeriesMarks::default()
            })
        );
        // 6. exactly at the batch's start, by this owner or an older one
        assert_eq!(decide(Some(3), Some(10), &b), None);
        assert_eq!(decide(Some(2), Some(10), &b), None);
    }
}
