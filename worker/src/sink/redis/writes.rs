//! One batch's writes as a `MULTI`/`EXEC` transaction of native commands, and the reading of
//! `EXEC`'s reply.
//!
//! Commands, in this order: `MULTI`; per list key one `LPUSH` with all its values (upstream's
//! order: `LPUSH k v1 … vn` is `LPUSH k v1; …; LPUSH k vn`), directly followed by the key's TTL
//! command, if any; per template its summed `HINCRBY`s, then `PEXPIRE`; the same per event-time
//! series hash (`window.rs`); the fence's `HSET` (with the partition's event-time clock when the
//! batch moves it); `EXEC`. A key's commands are adjacent because Redis then finds the key in its CPU cache
//! (measured: a `PEXPIRE` issued after all the batch's pushes costs Redis twice as much).
//!
//! TTL commands, per key and batch:
//! - message list: `PEXPIRE` 3 days (its latest event moved it);
//! - template hash: `PEXPIRE` 30 days;
//! - user list not yet known to this process today (`checked_expiries.rs`): `PEXPIREAT` the next
//!   local midnight, which sets it on a list the batch creates and corrects a foreign expiry
//!   (upstream's 52-year TTLs) on an existing one; with `verify_existing_user_expiry` off,
//!   `PEXPIREAT … NX` (only a list without an expiry gets one);
//! - user list known to expire tonight: nothing. If its `LPUSH` reply shows the batch created it
//!   after all (someone deleted it, or Redis lost it), the sink sets its expiry right after `EXEC`
//!   (`PEXPIREAT … NX`, see `RedisSink::apply`).
//!
//! A write Redis refuses at run time (`WRONGTYPE`: a receiver id naming a key of another type, or
//! an overflowing counter) fails alone inside `EXEC` and is counted, as upstream lost that command
//! too; the key's TTL command still runs, as upstream's `EXPIRE` did. A refusal at queue time
//! (`OOM`, `READONLY`) makes Redis discard the whole transaction: nothing is half-applied.

use redis::{Arg, Cmd, Pipeline, ToRedisArgs, Value};

use super::layout::{MESSAGE_TTL, TEMPLATE_TTL};
use super::window::SeriesMarks;

/// How far before the user lists' midnight the transaction still sets it with an absolute
/// `PEXPIREAT`. Closer to it, the transaction could run after midnight, when `PEXPIREAT` would
/// delete the list at once, so it sets the remaining milliseconds with `PEXPIRE` instead.
pub(crate) const ABSOLUTE_EXPIRY_GUARD_MS: i64 = 30_000;

/// A user-list expiry, as chosen when the batch is applied (see [`user_expiry`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UserExpiry {
    /// `PEXPIREAT` this epoch-ms instant.
    At(i64),
    /// `PEXPIRE` this many ms (the last seconds before midnight).
    In(i64),
}

impl UserExpiry {
    /// The midnight the lists end at.
    pub(crate) fn day_end(self, server_now_ms: i64) -> i64 {
        match self {
            UserExpiry::At(at) => at,
            UserExpiry::In(ms) => server_now_ms + ms,
        }
    }
}

/// The expiry of user lists written at Redis time `server_now_ms` by a batch built for midnight
/// `at` (`next`: the one after it): the first of them still ahead (a batch applied after its
/// midnight, e.g. Redis down over midnight, gets the next one), absolute unless it is within
/// [`ABSOLUTE_EXPIRY_GUARD_MS`]. Never zero or negative: upstream's TTL 0 deleted keys.
pub(crate) fn user_expiry(at: i64, next: i64, server_now_ms: i64) -> UserExpiry {
    let target = [at, next]
        .into_iter()
        .find(|t| *t > server_now_ms)
        .unwrap_or(server_now_ms + 24 * 3600 * 1000);
    if target - server_now_ms > ABSOLUTE_EXPIRY_GUARD_MS {
        UserExpiry::At(target)
    } else {
        UserExpiry::In((target - server_now_ms).max(1))
    }
}

/// A batch's transaction: the pipeline `MULTI … EXEC` and where its user-list commands are.
#[derive(Debug, Clone)]
pub(crate) struct Writes {
    pipeline: Pipeline,
    /// The `PEXPIREAT` every untrusted user list's expiry was built with.
    built_for: i64,
    /// Pipeline indexes of the user lists' expiry commands, and whether they carry `NX`.
    user_expiries: Vec<(u32, bool)>,
    /// Pipeline indexes of trusted user lists' `LPUSH`es, and how many values each pushes.
    trusted_pushes: Vec<(u32, u32)>,
}

/// What `EXEC` answered.
#[derive(Debug, PartialEq)]
pub(crate) enum ExecReply {
    /// Nil: a watched key (the fence) changed after `WATCH`. Nothing was written.
    Aborted,
    /// Redis refused a command while queueing it, or `EXEC` itself (`OOM`, `READONLY`, …), and
    /// discarded the transaction. Nothing was written.
    Refused(redis::RedisError),
    /// Ran. `created_trusted`: pipeline indexes of trusted user lists the batch created.
    Ran {
        write_errors: usize,
        first_write_error: Option<String>,
        created_trusted: Vec<u32>,
    },
}

impl Writes {
    /// Commands Redis runs for it (`MULTI` and `EXEC` included).
    pub(crate) fn commands(&self) -> usize {
        self.pipeline.len()
    }

    /// The transaction, with the user-list expiries set to `expiry`.
    pub(crate) fn pipeline(&self, expiry: UserExpiry) -> std::borrow::Cow<'_, Pipeline> {
        if expiry == UserExpiry::At(self.built_for) || self.user_expiries.is_empty() {
            return std::borrow::Cow::Borrowed(&self.pipeline);
        }
        // Rare (the last seconds before midnight, or a batch applied after its midnight):
        // rebuild with the expiry commands replaced.
        let mut pipeline = Pipeline::with_capacity(self.pipeline.len());
        pipeline.ignore_errors();
        let mut replaced = self.user_expiries.iter().peekable();
        for (index, cmd) in self.pipeline.cmd_iter().enumerate() {
            match replaced.peek() {
                Some(&&(at, nx)) if at as usize == index => {
                    replaced.next();
                    let key = key_of(cmd).unwrap_or_default();
                    pipeline.add_command(user_expiry_cmd(key, expiry, nx));
                }
                _ => {
                    pipeline.add_command(cmd.clone());
                }
            }
        }
        std::borrow::Cow::Owned(pipeline)
    }

    /// The key of the trusted list whose `LPUSH` is at pipeline index `index`.
    pub(crate) fn key_at(&self, index: u32) -> Option<&[u8]> {
        key_of(self.pipeline.cmd_iter().nth(index as usize)?)
    }

    /// Reads the replies of the whole pipeline (`MULTI`'s `OK`, one `QUEUED` per command, `EXEC`'s).
    pub(crate) fn read_reply(&self, replies: &[Value]) -> ExecReply {
        let Some((exec, queued)) = replies.split_last() else {
            return ExecReply::Refused(unexpected(replies));
        };
        // A command refused while queued carries the reason (`EXEC` then only says EXECABORT).
        if let Some(Value::ServerError(err)) =
            queued.iter().find(|v| matches!(v, Value::ServerError(_)))
        {
            return ExecReply::Refused(err.clone().into());
        }
        let results = match exec {
            Value::Nil => return ExecReply::Aborted,
            Value::ServerError(err) => return ExecReply::Refused(err.clone().into()),
            Value::Array(results) if results.len() + 2 == self.pipeline.len() => results,
            other => return ExecReply::Refused(unexpected(std::slice::from_ref(other))),
        };
        // The fence's HSET is last: if it failed, the batch's writes ran without moving the
        // fence, and a retry would apply them again. A bug or a foreign key, never retried.
        if let Some(Value::ServerError(err)) = results.last() {
            return ExecReply::Refused(err.clone().into());
        }
        let mut write_errors = 0;
        let mut first_write_error = None;
        for result in results {
            if let Value::ServerError(err) = result {
                write_errors += 1;
                first_write_error.get_or_insert_with(|| err.to_string());
            }
        }
        // results[i] answers pipeline command i + 1 (after MULTI).
        let created_trusted = self
            .trusted_pushes
            .iter()
            .filter(|&&(index, values)| {
                matches!(results.get(index as usize - 1), Some(Value::Int(len)) if *len == i64::from(values))
            })
            .map(|&(index, _)| index)
            .collect();
        ExecReply::Ran {
            write_errors,
            first_write_error,
            created_trusted,
        }
    }
}

fn unexpected(values: &[Value]) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected transaction reply",
        format!("{values:?}"),
    ))
}

fn key_of(cmd: &Cmd) -> Option<&[u8]> {
    match cmd.args_iter().nth(1)? {
        Arg::Simple(key) => Some(key),
        _ => None,
    }
}

fn user_expiry_cmd(key: &[u8], expiry: UserExpiry, nx: bool) -> Cmd {
    let mut cmd = Cmd::with_capacity(4, key.len() + 48);
    match expiry {
        UserExpiry::At(at) => cmd.arg("PEXPIREAT").arg(key).arg(at),
        UserExpiry::In(ms) => cmd.arg("PEXPIRE").arg(key).arg(ms),
    };
    if nx {
        cmd.arg("NX");
    }
    cmd
}

/// A user list's expiry set after `EXEC`, for a trusted list the batch created after all.
pub(crate) fn repair_expiry_cmd(key: &[u8], expiry: UserExpiry) -> Cmd {
    user_expiry_cmd(key, expiry, true)
}

/// Builds [`Writes`] command by command.
pub(crate) struct WritesBuilder {
    pipeline: Pipeline,
    built_for: i64,
    user_expiries: Vec<(u32, bool)>,
    trusted_pushes: Vec<(u32, u32)>,
}

impl WritesBuilder {
    pub(crate) fn new(lists: usize, templates: usize) -> Self {
        Self {
            pipeline: Pipeline::with_capacity(3 + 2 * lists + 4 * templates),
            built_for: 0,
            user_expiries: Vec::new(),
            trusted_pushes: Vec::new(),
        }
    }

    fn index(&self) -> u32 {
        self.pipeline.len() as u32
    }

    pub(crate) fn multi(&mut self) {
        self.pipeline.add_command(redis::cmd("MULTI"));
    }

    pub(crate) fn lpush<'v>(
        &mut self,
        key: &[u8],
        values: impl Iterator<Item = &'v [u8]> + Clone,
        count: usize,
    ) {
        let bytes: usize = values.clone().map(|v| v.len() + 16).sum();
        let mut cmd = Cmd::with_capacity(2 + count, 32 + key.len() + bytes);
        cmd.arg("LPUSH").arg(key);
        for value in values {
            cmd.arg(value);
        }
        self.pipeline.add_command(cmd);
    }

    pub(crate) fn message_expire(&mut self, key: &[u8]) {
        let mut cmd = Cmd::with_capacity(3, key.len() + 48);
        cmd.arg("PEXPIRE")
            .arg(key)
            .arg(MESSAGE_TTL.as_millis() as u64);
        self.pipeline.add_command(cmd);
    }

    /// The list whose `LPUSH` was just added is known to expire tonight already.
    pub(crate) fn trusted_user_list(&mut self, values: usize) {
        let index = self.index() - 1;
        self.trusted_pushes.push((index, values as u32));
    }

    pub(crate) fn user_expire(&mut self, key: &[u8], at: i64, nx: bool) {
        self.built_for = at;
        let index = self.index();
        self.user_expiries.push((index, nx));
        self.pipeline
            .add_command(user_expiry_cmd(key, UserExpiry::At(at), nx));
    }

    pub(crate) fn template(&mut self, key: &[u8], fields: &[(i64, i64)]) {
        self.counter_hash(key, fields.iter().copied());
    }

    /// A hash of counters (a template's, or a template's event-time series): one `HINCRBY` per
    /// field, then the template TTL.
    pub(crate) fn counter_hash<F: ToRedisArgs>(
        &mut self,
        key: &[u8],
        fields: impl Iterator<Item = (F, i64)>,
    ) {
        for (field, increment) in fields {
            let mut cmd = Cmd::with_capacity(4, key.len() + 64);
            cmd.arg("HINCRBY").arg(key).arg(field).arg(increment);
            self.pipeline.add_command(cmd);
        }
        let mut cmd = Cmd::with_capacity(3, key.len() + 48);
        cmd.arg("PEXPIRE")
            .arg(key)
            .arg(TEMPLATE_TTL.as_millis() as u64);
        self.pipeline.add_command(cmd);
    }

    /// Adds the fence's move (with the partition's event-time clock and the job watermark the
    /// batch decided with, when it has series counts) and `EXEC`.
    pub(crate) fn finish(
        mut self,
        fence_key: &[u8],
        epoch: u64,
        next_offset: i64,
        series: SeriesMarks,
    ) -> Writes {
        let mut hset = Cmd::with_capacity(8, fence_key.len() + 96);
        hset.arg("HSET")
            .arg(fence_key)
            .arg("epoch")
            .arg(epoch)
            .arg("next_offset")
            .arg(next_offset);
        if let Some(clock) = series.clock {
            hset.arg(super::window::CLOCK_FIELD).arg(clock);
        }
        if let Some(learned) = series.learned {
            hset.arg(super::window::LEARNED_FIELD).arg(learned);
        }
        self.pipeline.add_command(hset);
        self.pipeline.add_command(redis::cmd("EXEC"));
        self.pipeline.ignore_errors();
        Writes {
            pipeline: self.pipeline,
            built_for: self.built_for,
            user_expiries: self.user_expiries,
            trusted_pushes: self.trusted_pushes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 24 * 3600 * 1000;

    #[test]
    fn user_lists_get_their_midnight_absolute_unless_it_is_close_or_past() {
        let at = 10 * DAY;
        let next = 11 * DAY;
        assert_eq!(user_expiry(at, next, at - DAY + 1), UserExpiry::At(at));
        assert_eq!(
            user_expiry(at, next, at - ABSOLUTE_EXPIRY_GUARD_MS - 1),
            UserExpiry::At(at)
        );
        // Within the guard: the remaining time, relative, so a late EXEC never deletes.
        assert_eq!(
            user_expiry(at, next, at - ABSOLUTE_EXPIRY_GUARD_MS),
            UserExpiry::In(ABSOLUTE_EXPIRY_GUARD_MS)
        );
        assert_eq!(user_expiry(at, next, at - 1), UserExpiry::In(1));
        // Midnight passed before the batch was applied: the next one.
        assert_eq!(user_expiry(at, next, at), UserExpiry::At(next));
        assert_eq!(user_expiry(at, next, at + 5), UserExpiry::At(next));
        // Both passed (applied days late): a day from now, never a past instant.
        assert_eq!(
            user_expiry(at, next, next + 7),
            UserExpiry::At(next + 7 + DAY)
        );
        assert_eq!(UserExpiry::In(5).day_end(at - 5), at);
    }

    fn writes() -> Writes {
        let mut b = WritesBuilder::new(3, 1);
        b.multi();
        b.lpush(b"m", [&b"v1"[..], b"v2"].into_iter(), 2);
        b.message_expire(b"m");
        b.lpush(b"u1", [&b"v1"[..]].into_iter(), 1);
        b.user_expire(b"u1", 1000, false);
        b.lpush(b"u2", [&b"v1"[..], b"v2"].into_iter(), 2);
        b.trusted_user_list(2);
        b.template(b"7", &[(10, 2)]);
        b.finish(b"fence", 3, 42, SeriesMarks::default())
    }

    fn packed(p: &Pipeline) -> String {
        String::from_utf8_lossy(&p.get_packed_pipeline()).replace("\r\n", " ")
    }

    #[test]
    fn a_batch_is_one_transaction_of_adjacent_per_key_commands() {
        let w = writes();
        assert_eq!(w.commands(), 10);
        let text = packed(&w.pipeline(UserExpiry::At(1000)));
        let commands: Vec<&str> = text
            .split('*')
            .filter(|c| !c.is_empty())
            .map(|c| c.split(' ').nth(2).unwrap_or(""))
            .collect();
        assert_eq!(
            commands,
            [
                "MULTI",
                "LPUSH",
                "PEXPIRE",
                "LPUSH",
                "PEXPIREAT",
                "LPUSH",
                "HINCRBY",
                "PEXPIRE",
                "HSET",
                "EXEC"
            ]
        );
        assert!(text.contains("$5 LPUSH $1 m $2 v1 $2 v2"), "{text}");
        assert!(text.contains("$9 PEXPIREAT $2 u1 $4 1000"), "{text}");
        assert!(text.contains("HSET $5 fence $5 epoch $1 3 $11 next_offset $2 42"));
        assert_eq!(w.key_at(5), Some(&b"u2"[..]));
    }

    #[test]
    fn near_midnight_the_user_expiries_are_rewritten_and_nothing_else() {
        let w = writes();
        let relative = packed(&w.pipeline(UserExpiry::In(250)));
        assert!(relative.contains("$7 PEXPIRE $2 u1 $3 250"), "{relative}");
        assert!(!relative.contains("PEXPIREAT"), "{relative}");
        let next = packed(&w.pipeline(UserExpiry::At(2000)));
        assert!(next.contains("$9 PEXPIREAT $2 u1 $4 2000"), "{next}");
        assert_eq!(
            next.replace("$4 2000", "$4 1000"),
            packed(&w.pipeline(UserExpiry::At(1000)))
        );
    }

    fn queued(n: usize) -> Vec<Value> {
        let mut v = vec![Value::Okay];
        v.extend((0..n).map(|_| Value::SimpleString("QUEUED".into())));
        v
    }

    #[test]
    fn exec_replies_count_write_errors_and_spot_trusted_lists_created_by_the_batch() {
        let w = writes();
        let err_value = redis::parse_redis_value(b"-WRONGTYPE wrong kind\r\n").expect("parses");
        assert!(matches!(err_value, Value::ServerError(_)));
        let mut replies = queued(8);
        replies.push(Value::Array(vec![
            Value::Int(2),
            Value::Int(1),
            err_value,
            Value::Int(1),
            Value::Int(2), // u2 had no values before: created by this batch
            Value::Int(2),
            Value::Int(1),
            Value::Int(0),
        ]));
        match w.read_reply(&replies) {
            ExecReply::Ran {
                write_errors,
                created_trusted,
                ..
            } => {
                assert_eq!(write_errors, 1);
                assert_eq!(created_trusted, vec![5]);
            }
            other => panic!("{other:?}"),
        }
        let mut aborted = queued(8);
        aborted.push(Value::Nil);
        assert_eq!(w.read_reply(&aborted), ExecReply::Aborted);
    }
}
