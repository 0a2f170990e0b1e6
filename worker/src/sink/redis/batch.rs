//! Builds one partition batch's merged write plan, event by event, and packs it into one
//! `MULTI`/`EXEC` transaction of native commands (`writes.rs`; applied by `apply.rs`).
//!
//! Merging rules (the resulting Redis state equals upstream's per-event command stream):
//! - a list key gets one `LPUSH key v1 … vn` with its values in event order, which Redis defines
//!   as `LPUSH key v1; …; LPUSH key vn`;
//! - a template key gets one `HINCRBY key state Σlen(ids)` per state;
//! - each key gets at most one TTL command for the whole batch, of the kind of its *last* touch (a
//!   key that is both a message key and a receiver id gets the TTL of whichever was written last,
//!   as upstream's last `EXPIRE` would have decided); a user list this process already set to
//!   expire tonight gets none (`writes.rs` has the TTL rules).
//!
//! Events are not kept: a push appends its SimpleAnchorInfo JSON once to an arena and records
//! its index under every key it touches.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use foldhash::quality::RandomState;
use hashbrown::HashTable;

use super::checked_expiries::CheckedExpiries;
use super::layout::{system_time_ms, Layout};
use super::window::SeriesMarks;
use super::writes::{Writes, WritesBuilder};
use crate::transform::AnchorInfo;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListTtl {
    /// `PEXPIRE` 3 days.
    Message,
    /// `PEXPIREAT` the next local midnight.
    User,
}

#[derive(Debug)]
struct ListPlan {
    ttl: ListTtl,
    values: ListValues,
}

/// A list's values (indexes into the arena) in event order. Most lists get one value per batch,
/// so the first is stored inline and only further ones allocate.
#[derive(Debug)]
struct ListValues {
    first: u32,
    rest: Vec<u32>,
}

impl ListValues {
    fn push(&mut self, value: u32) {
        self.rest.push(value);
    }

    fn len(&self) -> usize {
        1 + self.rest.len()
    }

    fn iter(&self) -> impl Iterator<Item = u32> + Clone + '_ {
        std::iter::once(self.first).chain(self.rest.iter().copied())
    }
}

#[derive(Debug)]
struct TemplatePlan {
    business_id: i64,
    /// `(state, increment)`; a template sees few distinct states, so a vector beats a map.
    fields: Vec<(i64, i64)>,
}

/// The batch's list keys back to back in one string (no allocation per key), and a table from a
/// key to its slot in the list plans.
#[derive(Debug, Default)]
struct ListKeys {
    text: String,
    ends: Vec<u32>,
    table: HashTable<u32>,
    hasher: RandomState,
}

fn key_in<'t>(text: &'t str, ends: &[u32], slot: usize) -> &'t str {
    let start = match slot {
        0 => 0,
        _ => ends[slot - 1] as usize,
    };
    &text[start..ends[slot] as usize]
}

impl ListKeys {
    fn get(&self, slot: usize) -> &str {
        key_in(&self.text, &self.ends, slot)
    }

    /// The slot of `key` and whether it was just added (as the next slot).
    fn slot_of(&mut self, key: &str) -> (usize, bool) {
        let hash = self.hasher.hash_one(key);
        let Self {
            text,
            ends,
            table,
            hasher,
        } = self;
        if let Some(&slot) = table.find(hash, |&s| key_in(text, ends, s as usize) == key) {
            return (slot as usize, false);
        }
        let slot = ends.len();
        text.push_str(key);
        ends.push(text.len() as u32);
        table.insert_unique(hash, slot as u32, |&s| {
            hasher.hash_one(key_in(text, ends, s as usize))
        });
        (slot, true)
    }
}

/// Adds `value` to the plan of list `key` (created on first use) and returns the plan.
fn push_to_list<'p>(
    keys: &mut ListKeys,
    lists: &'p mut Vec<ListPlan>,
    key: &str,
    value: u32,
) -> &'p mut ListPlan {
    let (slot, new) = keys.slot_of(key);
    if new {
        lists.push(ListPlan {
            ttl: ListTtl::User,
            values: ListValues {
                first: value,
                rest: Vec::new(),
            },
        });
    } else {
        lists[slot].values.push(value);
    }
    &mut lists[slot]
}

/// Accumulates one partition's events into a merged write plan.
#[derive(Debug)]
pub struct BatchBuilder {
    layout: Layout,
    partition: i32,
    epoch: u64,
    first_offset: Option<i64>,
    /// Where the batch starts covering, when known (see [`BatchBuilder::cover_from`]).
    covers_from: Option<i64>,
    next_offset: i64,
    events: usize,
    skipped: usize,
    /// SimpleAnchorInfo JSON of every event, back to back; `value_ends[i]` ends value `i`.
    values: Vec<u8>,
    value_ends: Vec<u32>,
    /// List keys (prefixed); a key's slot is its index into `lists`.
    list_keys: ListKeys,
    lists: Vec<ListPlan>,
    template_slots: HashMap<i64, u32, RandomState>,
    templates: Vec<TemplatePlan>,
    /// Other counter hashes the batch increments (the event-time series, `window.rs`), written
    /// like template hashes: `HINCRBY` per field, then the template TTL.
    counter_hashes: Vec<(String, Vec<(String, i64)>)>,
    /// What the fence stores of the event-time series with the batch's `next_offset`.
    series: SeriesMarks,
    scratch: String,
    checked: Arc<Mutex<CheckedExpiries>>,
}

impl BatchBuilder {
    pub(crate) fn new(
        partition: i32,
        epoch: u64,
        layout: &Layout,
        checked: Arc<Mutex<CheckedExpiries>>,
    ) -> Self {
        Self {
            layout: layout.clone(),
            partition,
            epoch,
            first_offset: None,
            covers_from: None,
            next_offset: 0,
            events: 0,
            skipped: 0,
            values: Vec::new(),
            value_ends: Vec::new(),
            list_keys: ListKeys::default(),
            lists: Vec::new(),
            template_slots: HashMap::default(),
            templates: Vec::new(),
            counter_hashes: Vec::new(),
            series: SeriesMarks::default(),
            scratch: String::new(),
            checked,
        }
    }

    fn take_offset(&mut self, offset: i64) {
        debug_assert!(
            self.first_offset.is_none() || offset >= self.next_offset,
            "offsets must increase within a batch ({offset} after {})",
            self.next_offset
        );
        if self.first_offset.is_none() {
            let from = self.covers_from.filter(|from| *from <= offset);
            self.first_offset = Some(from.unwrap_or(offset));
        }
        self.next_offset = self.next_offset.max(offset.saturating_add(1));
    }

    /// Makes the batch cover offsets from `offset` on (the owner's position: the previous batch's
    /// end or where it resumed) even when its first record comes later, so consecutive batches are
    /// contiguous: offsets without a record (transaction markers, compaction, retention) never
    /// look like a gap in Redis to the apply's gap check. No effect once a record is in.
    pub fn cover_from(&mut self, offset: i64) {
        if self.first_offset.is_none() {
            self.covers_from = Some(offset);
        }
    }

    /// Adds one decoded event read at `offset` (offsets increase within a batch).
    pub fn push_event(&mut self, offset: i64, ev: &AnchorInfo<'_>) {
        self.take_offset(offset);
        self.events += 1;
        ev.write_simple_json(&mut self.values);
        let value = self.value_ends.len() as u32;
        self.value_ends.push(self.values.len() as u32);

        // Upstream's order per event: message list, then each receiver, then the template.
        if let Some(message_id) = ev.message_id.as_deref() {
            self.layout.write_message_key(&mut self.scratch, message_id);
            let list = push_to_list(&mut self.list_keys, &mut self.lists, &self.scratch, value);
            list.ttl = ListTtl::Message;
        }
        for id in &ev.ids {
            self.layout.write_user_key(&mut self.scratch, id);
            let list = push_to_list(&mut self.list_keys, &mut self.lists, &self.scratch, value);
            list.ttl = ListTtl::User;
        }

        let slot = *self
            .template_slots
            .entry(ev.business_id)
            .or_insert_with(|| {
                self.templates.push(TemplatePlan {
                    business_id: ev.business_id,
                    fields: Vec::with_capacity(4),
                });
                (self.templates.len() - 1) as u32
            }) as usize;
        let increment = ev.ids.len() as i64;
        let fields = &mut self.templates[slot].fields;
        match fields.iter_mut().find(|(state, _)| *state == ev.state) {
            Some((_, total)) => *total = total.saturating_add(increment),
            None => fields.push((ev.state, increment)),
        }
    }

    /// Adds `delta` to `field` of counter hash `key` (a full key, prefix included), in the same
    /// transaction as the events; the hash then gets the template TTL.
    pub fn add_hash_increment(&mut self, key: &str, field: &str, delta: i64) {
        // Callers add a key's fields together: look at the last key first.
        let found = match self.counter_hashes.last() {
            Some((last, _)) if last == key => Some(self.counter_hashes.len() - 1),
            _ => self.counter_hashes.iter().position(|(k, _)| k == key),
        };
        let slot = found.unwrap_or_else(|| {
            self.counter_hashes.push((key.to_owned(), Vec::new()));
            self.counter_hashes.len() - 1
        });
        let fields = &mut self.counter_hashes[slot].1;
        match fields.iter_mut().find(|(f, _)| f == field) {
            Some((_, total)) => *total = total.saturating_add(delta),
            None => fields.push((field.to_owned(), delta)),
        }
    }

    /// Stores the partition's event-time clock and the job watermark the batch's series was
    /// decided with in its fence when the batch applies (atomically with its writes and
    /// `next_offset`). Only for a batch that covers at least one offset.
    pub fn set_series_marks(&mut self, marks: SeriesMarks) {
        self.series = marks;
    }

    /// The SimpleAnchorInfo JSON of value `v`.
    fn value(&self, v: u32) -> &[u8] {
        let start = match v {
            0 => 0,
            _ => self.value_ends[v as usize - 1] as usize,
        };
        &self.values[start..self.value_ends[v as usize] as usize]
    }

    /// Records an offset that was consumed but not written (dead-lettered): the fence still moves
    /// past it, so it is never read again.
    pub fn push_skipped(&mut self, offset: i64) {
        self.take_offset(offset);
        self.skipped += 1;
    }

    /// Events and skipped offsets pushed so far.
    pub fn len(&self) -> usize {
        self.events + self.skipped
    }

    pub fn is_empty(&self) -> bool {
        self.first_offset.is_none()
    }

    pub fn first_offset(&self) -> Option<i64> {
        self.first_offset
    }

    /// Offset after the last one pushed (0 when empty).
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Finishes the plan. `now` is the processing time that decides which day user lists end
    /// with (pass `SystemTime::now()`; tests inject it).
    pub fn build(self, now: SystemTime) -> Batch {
        let Some(first_offset) = self.first_offset else {
            return Batch {
                partition: self.partition,
                epoch: self.epoch,
                first_offset: 0,
                next_offset: 0,
                events: 0,
                skipped: 0,
                keys: 0,
                values: 0,
                now,
                user_expire_at: 0,
                user_expire_at_next: 0,
                user_lists: Vec::new(),
                untrusted_user_lists: 0,
                writes: None,
            };
        };
        let user_expire_at = self.layout.user_expire_at_ms(now);
        let user_expire_at_next = self
            .layout
            .user_expire_at_ms(UNIX_EPOCH + Duration::from_millis(user_expire_at.max(0) as u64));
        debug_assert!(user_expire_at > system_time_ms(now));
        let (user_lists, untrusted_user_lists, trust) = self.user_list_trust(user_expire_at);
        let writes = self.write_plan(user_expire_at, &trust);
        let values = self.lists.iter().map(|l| l.values.len()).sum();
        Batch {
            partition: self.partition,
            epoch: self.epoch,
            first_offset,
            next_offset: self.next_offset,
            events: self.events,
            skipped: self.skipped,
            keys: self.lists.len() + self.templates.len() + self.counter_hashes.len(),
            values,
            now,
            user_expire_at,
            user_expire_at_next,
            user_lists,
            untrusted_user_lists,
            writes: Some(writes),
        }
    }

    /// Which user lists are known to expire at `day_end` already (`checked_expiries.rs`), by
    /// slot, and the hashes of all user lists, those not yet known first (remembered once the
    /// batch is applied), with how many those are.
    fn user_list_trust(&self, day_end: i64) -> (Vec<u64>, usize, Vec<bool>) {
        let message_prefix = self.layout.message_key("");
        let checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        let mut unknown = Vec::new();
        let mut known = Vec::new();
        let trust = (0..self.lists.len())
            .map(|slot| {
                let key = self.list_keys.get(slot);
                // A receiver id that looks like a message key can also get the message TTL
                // (from a message touch in another batch): never trusted.
                self.lists[slot].ttl == ListTtl::User && !key.starts_with(&message_prefix) && {
                    let hash = checked.hash(key);
                    let trusted = checked.contains(day_end, hash);
                    match trusted {
                        true => known.push(hash),
                        false => unknown.push(hash),
                    }
                    trusted
                }
            })
            .collect();
        let untrusted = unknown.len();
        unknown.append(&mut known);
        (unknown, untrusted, trust)
    }

    /// About how many bytes the encoded transaction takes: every pushed value with its framing,
    /// a key and a TTL command per list, a few hundred bytes per counter hash.
    fn encoded_size_hint(&self) -> usize {
        let pushes: usize = self.lists.iter().map(|l| l.values.len()).sum();
        let mean_value = self.values.len() / self.value_ends.len().max(1);
        pushes * (mean_value + 8)
            + self.lists.len() * 96
            + (self.templates.len() + self.counter_hashes.len()) * 256
            + 256
    }

    /// The transaction: `MULTI`, per list `LPUSH` with all its values then its TTL command
    /// (adjacent, while the key is in the CPU cache), per template its `HINCRBY`s then `PEXPIRE`,
    /// the same per counter hash, the fence's `HSET`, `EXEC`. See `writes.rs` for the TTL rules.
    fn write_plan(&self, user_expire_at: i64, trust: &[bool]) -> Writes {
        let mut plan = WritesBuilder::new(self.encoded_size_hint());
        plan.multi();
        let verify = self.layout.verify_existing_user_expiry();
        for (slot, list) in self.lists.iter().enumerate() {
            let key = self.list_keys.get(slot).as_bytes();
            plan.lpush(
                key,
                list.values.iter().map(|v| self.value(v)),
                list.values.len(),
            );
            match list.ttl {
                ListTtl::Message => plan.message_expire(key),
                ListTtl::User if trust[slot] => plan.trusted_user_list(list.values.len()),
                ListTtl::User => plan.user_expire(key, user_expire_at, !verify),
            }
        }
        let mut template_key = String::new();
        for template in &self.templates {
            template_key.clear();
            template_key.push_str(self.layout.key_prefix());
            template_key.push_str(itoa::Buffer::new().format(template.business_id));
            plan.template(template_key.as_bytes(), &template.fields);
        }
        for (key, fields) in &self.counter_hashes {
            plan.counter_hash(key.as_bytes(), fields.iter().map(|(f, n)| (f.as_str(), *n)));
        }
        plan.finish(
            self.layout.fence_key(self.partition).as_bytes(),
            self.epoch,
            self.next_offset,
            self.series,
        )
    }
}

/// One partition's merged writes and fence advance, ready to apply (and to re-apply after a
/// retryable error: the fence makes a repeat a no-op).
#[derive(Debug, Clone)]
pub struct Batch {
    pub partition: i32,
    pub epoch: u64,
    /// First offset covered (events or skipped).
    pub first_offset: i64,
    /// The fence's `next_offset` once applied: one past the last offset covered.
    pub next_offset: i64,
    /// Decoded events merged into it.
    pub events: usize,
    /// Offsets covered without writes (dead-lettered).
    pub skipped: usize,
    /// Distinct data keys written.
    pub keys: usize,
    /// List values pushed (Σ over events of messageId? + len(ids)).
    pub values: usize,
    /// Processing time the batch was built at.
    pub now: SystemTime,
    /// The midnight user lists get (and the one after it, for a batch applied after that
    /// midnight), and the hashes of the user lists touched: once applied, they are known to
    /// expire then (`checked_expiries.rs`). The first `untrusted_user_lists` of them were not
    /// known yet; the others are already remembered for `user_expire_at`.
    pub(crate) user_expire_at: i64,
    pub(crate) user_expire_at_next: i64,
    pub(crate) user_lists: Vec<u64>,
    pub(crate) untrusted_user_lists: usize,
    pub(crate) writes: Option<Writes>,
}

impl Batch {
    /// A batch built from an empty builder: applying it does nothing.
    pub fn is_empty(&self) -> bool {
        self.writes.is_none()
    }
}
