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

use std::ops::Range;

use super::layout::{MESSAGE_TTL, TEMPLATE_TTL};
use super::resp::{Commands, Reply};
use super::window::SeriesMarks;
use super::SinkError;

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

/// A batch's transaction, encoded (`MULTI … EXEC`), and where its user-list commands are.
#[derive(Debug, Clone)]
pub(crate) struct Writes {
    transaction: Commands,
    /// The `PEXPIREAT` every untrusted user list's expiry was built with.
    built_for: i64,
    /// The untrusted user lists' expiry commands.
    user_expiries: Vec<ExpiryCommand>,
    /// Trusted user lists' `LPUSH`es.
    trusted_pushes: Vec<TrustedPush>,
}

/// A user list's expiry command: its index and bytes in the transaction, its key's, and whether
/// it has `NX`.
#[derive(Debug, Clone)]
struct ExpiryCommand {
    index: u32,
    command: Range<usize>,
    key: Range<usize>,
    nx: bool,
}

/// The `LPUSH` of a user list known to expire tonight: its command index, how many values it
/// pushes, and where its key is.
#[derive(Debug, Clone)]
struct TrustedPush {
    index: u32,
    values: u32,
    key: Range<usize>,
}

/// What `EXEC` answered.
#[derive(Debug)]
pub(crate) enum ExecReply {
    /// Nil: a watched key (the fence) changed after `WATCH`. Nothing was written.
    Aborted,
    /// Redis refused a command while queueing it, or `EXEC` itself (`OOM`, `READONLY`, …), and
    /// discarded the transaction. Nothing was written.
    Refused(SinkError),
    /// Ran. `created_trusted`: command indexes of trusted user lists the batch created.
    Ran {
        write_errors: usize,
        first_write_error: Option<String>,
        created_trusted: Vec<u32>,
    },
}

impl Writes {
    /// Commands Redis runs for it (`MULTI` and `EXEC` included).
    pub(crate) fn commands(&self) -> usize {
        self.transaction.len()
    }

    /// The transaction, with the user-list expiries set to `expiry`.
    pub(crate) fn transaction(&self, expiry: UserExpiry) -> std::borrow::Cow<'_, Commands> {
        if expiry == UserExpiry::At(self.built_for) || self.user_expiries.is_empty() {
            return std::borrow::Cow::Borrowed(&self.transaction);
        }
        // Rare (the last seconds before midnight, or a batch applied after its midnight):
        // re-encoded with the expiry commands replaced.
        let from = &self.transaction;
        let mut replaced = Commands::with_capacity(from.position() + 16 * self.user_expiries.len());
        let (mut copied, mut next_index) = (0, 0);
        for slot in &self.user_expiries {
            let between = slot.index as usize - next_index;
            replaced.copy(from, copied..slot.command.start, between);
            user_expiry_command(
                &mut replaced,
                &from.bytes()[slot.key.clone()],
                expiry,
                slot.nx,
            );
            copied = slot.command.end;
            next_index = slot.index as usize + 1;
        }
        replaced.copy(from, copied..from.position(), from.len() - next_index);
        std::borrow::Cow::Owned(replaced)
    }

    /// The key of the trusted list whose `LPUSH` is command `index`.
    pub(crate) fn key_at(&self, index: u32) -> Option<&[u8]> {
        let push = self.trusted_pushes.iter().find(|p| p.index == index)?;
        self.transaction.bytes().get(push.key.clone())
    }

    /// Reads the transaction's outcome: the first error among the replies before `EXEC`'s
    /// (`MULTI`'s `OK` and one `QUEUED` per command), and `EXEC`'s reply.
    pub(crate) fn read_reply(&self, queued_error: Option<String>, exec: Reply) -> ExecReply {
        // A command refused while queued carries the reason (`EXEC` then only says EXECABORT).
        if let Some(err) = queued_error {
            return ExecReply::Refused(SinkError::from_server_reply(&err));
        }
        let results = match exec {
            Reply::Array(None) => return ExecReply::Aborted,
            Reply::Error(err) => return ExecReply::Refused(SinkError::from_server_reply(&err)),
            Reply::Array(Some(results)) if results.len() + 2 == self.commands() => results,
            other => {
                return ExecReply::Refused(SinkError::Script(format!(
                    "unexpected transaction reply {other:?}"
                )))
            }
        };
        // The fence's HSET is last: if it failed, the batch's writes ran without moving the
        // fence, and a retry would apply them again. A bug or a foreign key, never retried.
        if let Some(Reply::Error(err)) = results.last() {
            return ExecReply::Refused(SinkError::Script(format!(
                "the fence's HSET failed: {err}"
            )));
        }
        let mut write_errors = 0;
        let mut first_write_error = None;
        for result in &results {
            if let Reply::Error(err) = result {
                write_errors += 1;
                first_write_error.get_or_insert_with(|| err.clone());
            }
        }
        // results[i] answers command i + 1 (after MULTI).
        let created_trusted = self
            .trusted_pushes
            .iter()
            .filter(|push| {
                matches!(results.get(push.index as usize - 1), Some(Reply::Int(len)) if *len == i64::from(push.values))
            })
            .map(|push| push.index)
            .collect();
        ExecReply::Ran {
            write_errors,
            first_write_error,
            created_trusted,
        }
    }
}

fn user_expiry_command(
    out: &mut Commands,
    key: &[u8],
    expiry: UserExpiry,
    nx: bool,
) -> Range<usize> {
    let args = if nx { 4 } else { 3 };
    let (name, value) = match expiry {
        UserExpiry::At(at) => (&b"PEXPIREAT"[..], at),
        UserExpiry::In(ms) => (&b"PEXPIRE"[..], ms),
    };
    out.command(args).arg(name);
    let key = out.arg_at(key);
    out.int(value);
    if nx {
        out.arg(b"NX");
    }
    key
}

/// A user list's expiry set after `EXEC`, for a trusted list the batch created after all.
pub(crate) fn repair_expiry_command(out: &mut Commands, key: &[u8], expiry: UserExpiry) {
    user_expiry_command(out, key, expiry, true);
}

/// An argument of a counter hash's `HINCRBY`: a field name or number.
pub(crate) trait FieldArg {
    fn encode(&self, out: &mut Commands);
}

impl FieldArg for i64 {
    fn encode(&self, out: &mut Commands) {
        out.int(*self);
    }
}

impl FieldArg for &str {
    fn encode(&self, out: &mut Commands) {
        out.arg(self.as_bytes());
    }
}

/// Builds [`Writes`] command by command.
pub(crate) struct WritesBuilder {
    transaction: Commands,
    built_for: i64,
    user_expiries: Vec<ExpiryCommand>,
    trusted_pushes: Vec<TrustedPush>,
    /// The key of the last `LPUSH`, for [`WritesBuilder::trusted_user_list`].
    last_key: Range<usize>,
}

impl WritesBuilder {
    /// `bytes`: about how long the encoded transaction will be (values and keys), to allocate once.
    pub(crate) fn new(bytes: usize) -> Self {
        Self {
            transaction: Commands::with_capacity(bytes),
            built_for: 0,
            user_expiries: Vec::new(),
            trusted_pushes: Vec::new(),
            last_key: 0..0,
        }
    }

    pub(crate) fn multi(&mut self) {
        self.transaction.command(1).arg(b"MULTI");
    }

    pub(crate) fn lpush<'v>(
        &mut self,
        key: &[u8],
        values: impl Iterator<Item = &'v [u8]>,
        count: usize,
    ) {
        self.transaction.command(2 + count).arg(b"LPUSH");
        self.last_key = self.transaction.arg_at(key);
        for value in values {
            self.transaction.arg(value);
        }
    }

    pub(crate) fn message_expire(&mut self, key: &[u8]) {
        self.transaction
            .command(3)
            .arg(b"PEXPIRE")
            .arg(key)
            .int(MESSAGE_TTL.as_millis() as i64);
    }

    /// The list whose `LPUSH` was just added is known to expire tonight already.
    pub(crate) fn trusted_user_list(&mut self, values: usize) {
        self.trusted_pushes.push(TrustedPush {
            index: self.transaction.len() as u32 - 1,
            values: values as u32,
            key: self.last_key.clone(),
        });
    }

    pub(crate) fn user_expire(&mut self, key: &[u8], at: i64, nx: bool) {
        self.built_for = at;
        let (index, start) = (self.transaction.len() as u32, self.transaction.position());
        let key = user_expiry_command(&mut self.transaction, key, UserExpiry::At(at), nx);
        self.user_expiries.push(ExpiryCommand {
            index,
            command: start..self.transaction.position(),
            key,
            nx,
        });
    }

    pub(crate) fn template(&mut self, key: &[u8], fields: &[(i64, i64)]) {
        self.counter_hash(key, fields.iter().copied());
    }

    /// A hash of counters (a template's, or a template's event-time series): one `HINCRBY` per
    /// field, then the template TTL.
    pub(crate) fn counter_hash<F: FieldArg>(
        &mut self,
        key: &[u8],
        fields: impl Iterator<Item = (F, i64)>,
    ) {
        for (field, increment) in fields {
            self.transaction.command(4).arg(b"HINCRBY").arg(key);
            field.encode(&mut self.transaction);
            self.transaction.int(increment);
        }
        self.transaction
            .command(3)
            .arg(b"PEXPIRE")
            .arg(key)
            .int(TEMPLATE_TTL.as_millis() as i64);
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
        let args =
            6 + 2 * usize::from(series.clock.is_some()) + 2 * usize::from(series.learned.is_some());
        let hset = &mut self.transaction;
        hset.command(args)
            .arg(b"HSET")
            .arg(fence_key)
            .arg(b"epoch")
            .int(epoch as i64)
            .arg(b"next_offset")
            .int(next_offset);
        if let Some(clock) = series.clock {
            hset.arg(super::window::CLOCK_FIELD.as_bytes()).int(clock);
        }
        if let Some(learned) = series.learned {
            hset.arg(super::window::LEARNED_FIELD.as_bytes())
                .int(learned);
        }
        self.transaction.command(1).arg(b"EXEC");
        Writes {
            transaction: self.transaction,
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
        let mut b = WritesBuilder::new(64);
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

    fn packed(c: &Commands) -> String {
        String::from_utf8_lossy(c.bytes()).replace("\r\n", " ")
    }

    #[test]
    fn a_batch_is_one_transaction_of_adjacent_per_key_commands() {
        let w = writes();
        assert_eq!(w.commands(), 10);
        let text = packed(&w.transaction(UserExpiry::At(1000)));
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
        let relative = packed(&w.transaction(UserExpiry::In(250)));
        assert!(relative.contains("$7 PEXPIRE $2 u1 $3 250"), "{relative}");
        assert!(!relative.contains("PEXPIREAT"), "{relative}");
        let next = packed(&w.transaction(UserExpiry::At(2000)));
        assert!(next.contains("$9 PEXPIREAT $2 u1 $4 2000"), "{next}");
        assert_eq!(
            next.replace("$4 2000", "$4 1000"),
            packed(&w.transaction(UserExpiry::At(1000)))
        );
    }

    /// Every command of `c`, parsed back as Redis would read it.
    fn parsed(c: &Commands) -> Vec<Vec<String>> {
        let mut at = 0;
        let mut commands = Vec::new();
        while at < c.bytes().len() {
            let (command, used) = crate::sink::redis::resp::parse(&c.bytes()[at..])
                .expect("valid RESP")
                .expect("whole commands");
            let Reply::Array(Some(args)) = command else {
                panic!("{command:?}")
            };
            commands.push(
                args.iter()
                    .map(|a| match a {
                        Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
                        other => panic!("{other:?}"),
                    })
                    .collect(),
            );
            at += used;
        }
        commands
    }

    #[test]
    fn rewriting_several_user_expiries_keeps_every_other_command_intact() {
        let mut b = WritesBuilder::new(0);
        b.multi();
        b.lpush(b"u1", [&b"a"[..]].into_iter(), 1);
        b.user_expire(b"u1", 1000, false);
        b.lpush(b"m", [&b"b"[..]].into_iter(), 1);
        b.message_expire(b"m");
        b.lpush(b"u2", [&b"c"[..]].into_iter(), 1);
        b.user_expire(b"u2", 1000, true);
        let w = b.finish(b"f", 1, 2, SeriesMarks::default());
        let built = parsed(&w.transaction(UserExpiry::At(1000)));
        let moved = w.transaction(UserExpiry::In(77));
        assert_eq!(moved.len(), w.commands());
        let moved = parsed(&moved);
        assert_eq!(moved.len(), built.len());
        for (index, (before, after)) in built.iter().zip(&moved).enumerate() {
            match index {
                2 => assert_eq!(after, &["PEXPIRE", "u1", "77"]),
                6 => assert_eq!(after, &["PEXPIRE", "u2", "77", "NX"]),
                _ => assert_eq!(before, after),
            }
        }
        assert_eq!(built[6], ["PEXPIREAT", "u2", "1000", "NX"]);
    }

    #[test]
    fn exec_replies_count_write_errors_and_spot_trusted_lists_created_by_the_batch() {
        let w = writes();
        let results = vec![
            Reply::Int(2),
            Reply::Int(1),
            Reply::Error("WRONGTYPE wrong kind".into()),
            Reply::Int(1),
            Reply::Int(2), // u2 had no values before: created by this batch
            Reply::Int(2),
            Reply::Int(1),
            Reply::Int(0),
        ];
        match w.read_reply(None, Reply::Array(Some(results.clone()))) {
            ExecReply::Ran {
                write_errors,
                created_trusted,
                first_write_error,
            } => {
                assert_eq!(write_errors, 1);
                assert_eq!(first_write_error.as_deref(), Some("WRONGTYPE wrong kind"));
                assert_eq!(created_trusted, vec![5]);
            }
            other => panic!("{other:?}"),
        }
        let mut existed = results.clone();
        existed[4] = Reply::Int(7);
        assert!(matches!(
            w.read_reply(None, Reply::Array(Some(existed))),
            ExecReply::Ran { created_trusted, .. } if created_trusted.is_empty()
        ));
        assert!(matches!(
            w.read_reply(None, Reply::Array(None)),
            ExecReply::Aborted
        ));
        // Refused while queued (nothing ran), or by EXEC: classified like any server error.
        assert!(matches!(
            w.read_reply(Some("OOM over maxmemory".into()), Reply::Error("EXECABORT".into())),
            ExecReply::Refused(err) if err.is_retryable()
        ));
        assert!(matches!(
            w.read_reply(None, Reply::Error("READONLY replica".into())),
            ExecReply::Refused(err) if err.is_retryable()
        ));
        // A failed fence move is never retried; nor is a reply of the wrong size.
        let mut fence_failed = results.clone();
        fence_failed[7] = Reply::Error("WRONGTYPE fence".into());
        assert!(matches!(
            w.read_reply(None, Reply::Array(Some(fence_failed))),
            ExecReply::Refused(SinkError::Script(_))
        ));
        assert!(matches!(
            w.read_reply(None, Reply::Array(Some(results[..7].to_vec()))),
            ExecReply::Refused(SinkError::Script(_))
        ));
    }
}
