//! From a batch to units: the batch's native commands — exactly the ones `writes.rs` encodes
//! for a single node, so the batch builder and the layout do not know the topology — grouped
//! by the slot of their key, the slots by the primary that serves them (the slot map read with
//! `CLUSTER SLOTS`), one [`Unit`] per primary. The single node's `MULTI`, `EXEC` and fence
//! `HSET` are left out: the unit's slot fences and mark replace them.

use std::collections::{BTreeMap, HashMap, HashSet};

use redis::Value;

use super::fence::{slot_step, SlotFence, SlotPositions, SlotStep, UnitMark};
use super::slot::{key_slot, SLOTS};
use super::unit::{SlotCommands, Unit, UnitSlot};
use crate::sink::redis::resp::{Commands, Encoded};
use crate::sink::redis::window::{SeriesMarks, CLOCK_FIELD, LEARNED_FIELD};
use crate::sink::redis::writes::UserExpiry;
use crate::sink::redis::{Batch, Layout, SinkError};

/// Which primary serves each slot, as `CLUSTER SLOTS` answered.
#[derive(Debug, Clone)]
pub struct SlotMap {
    /// Per slot an index into `nodes`, or `u32::MAX` for a slot no primary serves.
    owners: Box<[u32]>,
    /// `host:port` of each primary.
    nodes: Vec<String>,
}

fn int_of(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

impl SlotMap {
    /// Reads a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id, …], replicas…], …]`.
    pub fn from_slots_reply(reply: &Value) -> Result<Self, SinkError> {
        Self::from_slots_reply_at(reply, "")
    }

    /// [`SlotMap::from_slots_reply`] of the node at `asked` (`host:port`): a node that does not
    /// know its own address (a cluster of one, never met by another node) names itself with an
    /// empty host, which means "the host you asked", as Redis Cluster clients read it.
    pub fn from_slots_reply_at(reply: &Value, asked: &str) -> Result<Self, SinkError> {
        let asked_host = asked.rsplit_once(':').map_or("", |(host, _)| host);
        let bad = || SinkError::Script(format!("unexpected CLUSTER SLOTS reply {reply:?}"));
        let Value::Array(ranges) = reply else {
            return Err(bad());
        };
        let mut owners = vec![u32::MAX; usize::from(SLOTS)].into_boxed_slice();
        let mut nodes: Vec<String> = Vec::new();
        for range in ranges {
            let Value::Array(parts) = range else {
                return Err(bad());
            };
            let (Some(start), Some(end), Some(Value::Array(primary))) = (
                parts.first().and_then(int_of),
                parts.get(1).and_then(int_of),
                parts.get(2),
            ) else {
                return Err(bad());
            };
            let host = primary.first().and_then(text_of).ok_or_else(bad)?;
            let host = match host.as_str() {
                "" => asked_host.to_string(),
                _ => host,
            };
            let port = primary.get(1).and_then(int_of).ok_or_else(bad)?;
            let address = format!("{host}:{port}");
            let index = match nodes.iter().position(|n| *n == address) {
                Some(index) => index,
                None => {
                    nodes.push(address);
                    nodes.len() - 1
                }
            };
            let slots = usize::try_from(start).map_err(|_| bad())?
                ..=usize::try_from(end).map_err(|_| bad())?;
            for slot in slots {
                *owners.get_mut(slot).ok_or_else(bad)? = index as u32;
            }
        }
        Ok(Self { owners, nodes })
    }

    /// A map that names no primary (before the first `CLUSTER SLOTS`).
    pub fn empty() -> Self {
        Self {
            owners: vec![u32::MAX; usize::from(SLOTS)].into_boxed_slice(),
            nodes: Vec::new(),
        }
    }

    /// Whether a primary serves every slot (not so while a failover is under way).
    pub fn covers_every_slot(&self) -> bool {
        self.owners.iter().all(|o| *o != u32::MAX)
    }

    /// The address of the primary serving `slot`.
    pub fn owner(&self, slot: u16) -> Option<&str> {
        let index = *self.owners.get(usize::from(slot))?;
        self.nodes.get(index as usize).map(String::as_str)
    }

    /// The primaries' addresses.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The anchor slot of the primary at `address`: the highest slot it serves (`redis-cli
    /// --cluster reshard` and `rebalance` move a node's lowest slots first, so the anchor, which
    /// every unit on the node reads, migrates last). A migrating anchor refuses the unit as
    /// "not here": the owner reads the map again and retries, a wait.
    pub fn anchor(&self, address: &str) -> Option<u16> {
        // From the top: every unit asks, and the anchor is usually among the last slots.
        let index = self.nodes.iter().position(|n| n == address)? as u32;
        (0..SLOTS)
            .rev()
            .find(|slot| self.owners[usize::from(*slot)] == index)
    }

    /// The slots the primary at `address` serves, in order.
    pub fn slots_of(&self, address: &str) -> Vec<u16> {
        let Some(index) = self.nodes.iter().position(|n| n == address) else {
            return Vec::new();
        };
        (0..SLOTS)
            .filter(|slot| self.owners[usize::from(*slot)] == index as u32)
            .collect()
    }
}

/// What the owner knows when it splits a batch: the slot map, every slot's fence and every
/// anchor's unit mark as it expects them, its epoch, and the number of its next unit.
pub struct Owner<'a> {
    pub layout: &'a Layout,
    pub map: &'a SlotMap,
    pub positions: &'a SlotPositions,
    /// Unit marks by anchor slot.
    pub marks: &'a HashMap<u16, UnitMark>,
    pub epoch: u64,
    pub seq: u64,
    /// The partition's event-time clock before the batch: the unit marks store the batch's
    /// clock, or this one for a batch without series counts.
    pub clock: Option<i64>,
}

/// The units of `batch`, by primary address. Slots that already hold the batch are left out; a
/// node with nothing left to write gets a unit that only moves its mark, as long as some node
/// has something to write or its mark stands before the batch's end (none of either: no unit,
/// the batch is applied). User lists get the midnight the batch was built
/// for (the single node picks the next one when a batch is applied after it: not yet here).
pub fn units(batch: &Batch, owner: &Owner<'_>) -> Result<Vec<(String, Unit)>, SinkError> {
    units_isolating(batch, owner, &HashSet::new())
}

/// [`units`], with each slot of `isolated` (slots found migrating) in a unit of its own.
///
/// The batch's commands are grouped by slot as indices into its encoded transaction, sorted by
/// slot (transaction order within a slot), then copied once, whole, into their slot's
/// [`SlotCommands`]: no allocation per command or argument, and no work per slot of the
/// cluster, only per slot the batch writes.
pub fn units_isolating(
    batch: &Batch,
    owner: &Owner<'_>,
    isolated: &HashSet<u16>,
) -> Result<Vec<(String, Unit)>, SinkError> {
    let expiry = UserExpiry::At(batch.user_expire_at);
    let Some(writes) = batch.writes.as_ref() else {
        return Ok(Vec::new());
    };
    let transaction = writes.transaction(expiry);
    let single_fence = owner.layout.fence_key(batch.partition);
    let (commands, series) = by_slot(&transaction, single_fence.as_bytes());
    let new = SlotFence {
        epoch: owner.epoch,
        from: batch.first_offset,
        next: batch.next_offset,
    };
    let mut by_node = slots_by_node(&commands, batch, owner, isolated, new)?;
    // A batch leaves a mark on every primary, even one it writes nothing on, so that where
    // every node stands after it is known at the next claim (`fence::resume_point`). A batch
    // that writes nothing at all (only undecodable records, or a replay every slot has) still
    // moves the marks that stand before its end, as it moves a single node's fence: the job
    // commits past it, and a claim that resumed before it would take that for Redis losing
    // acknowledged writes.
    let writes_any = !by_node.is_empty();
    for node in owner.map.nodes() {
        let behind = || {
            let mark = owner.map.anchor(node).and_then(|a| owner.marks.get(&a));
            mark.is_none_or(|m| m.resume() < batch.next_offset)
        };
        if !by_node.keys().any(|(n, _)| *n == node.as_str()) && (writes_any || behind()) {
            by_node.insert((node.as_str(), None), Vec::new());
        }
    }
    by_node
        .into_iter()
        .map(|((node, _), slots)| {
            let anchor = owner
                .map
                .anchor(node)
                .ok_or_else(|| SinkError::Unavailable(format!("{node} serves no slot any more")))?;
            let unit = Unit {
                partition: batch.partition,
                mark_key: owner.layout.slot_fence_key(anchor),
                mark_expected: owner.marks.get(&anchor).copied(),
                mark_new: UnitMark {
                    epoch: owner.epoch,
                    seq: owner.seq,
                    from: batch.first_offset,
                    next: Some(batch.next_offset),
                    series: SeriesMarks {
                        clock: series.clock.or(owner.clock),
                        learned: series.learned,
                    },
                },
                slots,
            };
            Ok((node.to_string(), unit))
        })
        .collect()
}

/// A unit's slots by node address and, for a slot in a unit of its own, the slot.
type SlotsByNode<'m> = BTreeMap<(&'m str, Option<u16>), Vec<UnitSlot>>;

/// The slots of `commands` that do not hold the batch yet, with their fences and commands, keyed
/// by the node that serves them and, for a slot of `isolated`, the slot itself.
fn slots_by_node<'m>(
    commands: &[SlotCommand<'_>],
    batch: &Batch,
    owner: &Owner<'m>,
    isolated: &HashSet<u16>,
    new: SlotFence,
) -> Result<SlotsByNode<'m>, SinkError> {
    let mut by_node = SlotsByNode::new();
    for group in commands.chunk_by(|a, b| a.slot == b.slot) {
        let slot = group[0].slot;
        let expected = match slot_step(owner.positions.get(slot), new.from, new.next) {
            Ok(SlotStep::Skip) => continue,
            Ok(SlotStep::Apply { expected }) => expected,
            Err(straddle) => {
                return Err(SinkError::Overlap {
                    partition: batch.partition,
                    stored_next_offset: straddle.fence.next,
                    first_offset: batch.first_offset,
                    next_offset: batch.next_offset,
                })
            }
        };
        let node = owner.map.owner(slot).ok_or_else(|| {
            SinkError::Unavailable(format!("no primary serves slot {slot} (cluster down?)"))
        })?;
        let own = isolated.contains(&slot).then_some(slot);
        let bytes = group.iter().map(|c| c.encoded.body.len() + 8).sum();
        let mut slot_commands = SlotCommands::with_capacity(bytes);
        for command in group {
            slot_commands.push_encoded(command.encoded);
        }
        by_node.entry((node, own)).or_default().push(UnitSlot {
            slot,
            fence_key: owner.layout.slot_fence_key(slot),
            expected,
            new,
            commands: slot_commands,
        });
    }
    Ok(by_node)
}

/// One native command of a batch, the slot of its key, and its place in the transaction.
struct SlotCommand<'a> {
    slot: u16,
    index: u32,
    encoded: Encoded<'a>,
}

/// The native commands of `transaction` ordered by slot, each slot's in transaction order, and
/// the series marks of the single node's fence `HSET` (on `single_fence`), which is left out
/// with `MULTI` and `EXEC`.
fn by_slot<'a>(
    transaction: &'a Commands,
    single_fence: &[u8],
) -> (Vec<SlotCommand<'a>>, SeriesMarks) {
    let mut commands = Vec::with_capacity(transaction.len());
    let mut series = SeriesMarks::default();
    for encoded in transaction.encoded() {
        let mut args = encoded.iter();
        let (Some(name), Some(key)) = (args.next(), args.next()) else {
            continue; // MULTI, EXEC
        };
        if name.eq_ignore_ascii_case(b"HSET") && key == single_fence {
            series = fence_series(encoded.iter());
            continue;
        }
        commands.push(SlotCommand {
            slot: key_slot(key),
            index: commands.len() as u32,
            encoded,
        });
    }
    // A slot's commands keep the transaction's order (a key's TTL after its writes).
    commands.sort_unstable_by_key(|c| (c.slot, c.index));
    (commands, series)
}

/// The series marks a single node's fence `HSET` (`HSET fence field value …`) stores.
fn fence_series<'a>(command: impl Iterator<Item = &'a [u8]>) -> SeriesMarks {
    let args: Vec<&[u8]> = command.skip(2).collect();
    let mut marks = SeriesMarks::default();
    for pair in args.chunks(2) {
        let [field, value] = pair else { continue };
        let value = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
        if *field == CLOCK_FIELD.as_bytes() {
            marks.clock = value;
        } else if *field == LEARNED_FIELD.as_bytes() {
            marks.learned = value;
        }
    }
    marks
}

/// What `batch` stores of the event-time series (its clock after it, the watermark it decided
/// with): both `None` for a batch without series counts.
pub fn batch_series(batch: &Batch, layout: &Layout) -> SeriesMarks {
    let Some(writes) = batch.writes.as_ref() else {
        return SeriesMarks::default();
    };
    let fence = layout.fence_key(batch.partition);
    let expiry = UserExpiry::At(batch.user_expire_at);
    writes
        .transaction(expiry)
        .encoded()
        .filter(|c| {
            let mut args = c.iter();
            c.args > 2
                && args.next().is_some_and(|n| n.eq_ignore_ascii_case(b"HSET"))
                && args.next() == Some(fence.as_bytes())
        })
        .map(|c| fence_series(c.iter()))
        .last()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn the_slot_map_is_read_from_cluster_slots() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(8191),
                Value::Array(vec![bulk("10.0.0.1"), Value::Int(6379), bulk("id1")]),
                Value::Array(vec![bulk("10.0.0.4"), Value::Int(6379), bulk("id4")]),
            ]),
            Value::Array(vec![
                Value::Int(8192),
                Value::Int(16383),
                Value::Array(vec![bulk("10.0.0.2"), Value::Int(6379), bulk("id2")]),
            ]),
        ]);
        let map = SlotMap::from_slots_reply(&reply).expect("parses");
        assert_eq!(map.owner(0), Some("10.0.0.1:6379"));
        assert_eq!(map.owner(8192), Some("10.0.0.2:6379"));
        assert_eq!(map.nodes().len(), 2);
        assert_eq!(map.anchor("10.0.0.2:6379"), Some(16383));
        assert_eq!(map.anchor("10.0.0.1:6379"), Some(8191));
        assert!(SlotMap::from_slots_reply(&Value::Int(1)).is_err());
    }

    /// A batch of the lifecycle data set, and a 3-primary map (slots split like `redis-cli
    /// --cluster create`).
    fn lifecycle_batch(layout: &Layout) -> (Batch, SlotMap) {
        use crate::sink::redis::batch::BatchBuilder;
        use crate::sink::redis::checked_expiries::CheckedExpiries;
        let checked = std::sync::Arc::new(std::sync::Mutex::new(CheckedExpiries::default()));
        let mut builder = BatchBuilder::new(2, 7, layout, checked);
        for (i, payload) in crate::testkit::lifecycle::payloads(1500, 42)
            .iter()
            .enumerate()
        {
            match crate::transform::decode(payload) {
                Ok(ev) => builder.push_event(1000 + i as i64, &ev),
                Err(_) => builder.push_skipped(1000 + i as i64),
            }
        }
        let batch = builder.build(std::time::SystemTime::now());
        let range = |start: i64, end: i64, host: &str| {
            Value::Array(vec![
                Value::Int(start),
                Value::Int(end),
                Value::Array(vec![bulk(host), Value::Int(6379), bulk("id")]),
            ])
        };
        let reply = Value::Array(vec![
            range(0, 5460, "10.0.0.1"),
            range(5461, 10922, "10.0.0.2"),
            range(10923, 16383, "10.0.0.3"),
        ]);
        (batch, SlotMap::from_slots_reply(&reply).expect("parses"))
    }

    /// The unit's `EVALSHA` as it was built before the commands were kept encoded: every
    /// argument copied out of the transaction (the reference for what is sent).
    fn reference_command(unit: &Unit, by_slot: &BTreeMap<u16, Vec<Vec<&[u8]>>>) -> Vec<u8> {
        let mut cmd = redis::cmd("EVALSHA");
        let first = unit.slots.first().map_or(&unit.mark_key, |s| &s.fence_key);
        cmd.arg(super::super::unit::UNIT_SCRIPT.hash())
            .arg(1)
            .arg(first);
        cmd.arg(unit.partition)
            .arg(&unit.mark_key)
            .arg(
                unit.mark_expected
                    .map(|m| m.to_string())
                    .unwrap_or_default(),
            )
            .arg(unit.mark_new.to_string())
            .arg(unit.slots.len());
        for slot in &unit.slots {
            let commands = &by_slot[&slot.slot];
            cmd.arg(slot.slot)
                .arg(&slot.fence_key)
                .arg(slot.expected.map(|f| f.to_string()).unwrap_or_default())
                .arg(slot.new.to_string())
                .arg(commands.len());
            for command in commands {
                cmd.arg(command.len());
                for arg in command {
                    cmd.arg(*arg);
                }
            }
        }
        cmd.get_packed_command()
    }

    #[test]
    fn units_send_exactly_the_commands_of_the_batch_grouped_by_slot() {
        let layout = Layout::new("p:", "Asia/Shanghai", "job", "topic").expect("layout");
        let tag = crate::sink::redis::cluster::slot::SLOT_TAGS.tag(5);
        assert_eq!(
            layout.slot_fence_key(5),
            format!("p:streamjob:job:fence:topic:{{{tag}}}")
        );
        let (batch, map) = lifecycle_batch(&layout);
        let mut positions = SlotPositions::default();
        // Some slots hold an older batch (compared), some this one (left out).
        for slot in (0..SLOTS).step_by(7) {
            let next = if slot % 2 == 0 { 1000 } else { 9999 };
            positions.set(
                slot,
                Some(SlotFence {
                    epoch: 6,
                    from: 10,
                    next,
                }),
            );
        }
        let mut marks = HashMap::new();
        marks.insert(16383, UnitMark::parse("6:3:10:1000::").unwrap().unwrap());
        let owner = Owner {
            layout: &layout,
            map: &map,
            positions: &positions,
            marks: &marks,
            epoch: 7,
            seq: 4,
            clock: Some(5),
        };
        let transaction = batch
            .writes
            .as_ref()
            .unwrap()
            .transaction(UserExpiry::At(batch.user_expire_at));
        let fence = layout.fence_key(batch.partition);
        let mut by_slot: BTreeMap<u16, Vec<Vec<&[u8]>>> = BTreeMap::new();
        for command in transaction.iter() {
            if command.len() < 2 || (command[0] == b"HSET" && command[1] == fence.as_bytes()) {
                continue;
            }
            by_slot
                .entry(key_slot(command[1]))
                .or_default()
                .push(command);
        }
        let applied: Vec<u16> = by_slot
            .keys()
            .copied()
            .filter(|s| positions.get(*s).is_none_or(|f| f.next <= 1000))
            .collect();
        // A migrating slot of the second primary: a unit of its own.
        let isolated: HashSet<u16> = applied
            .iter()
            .copied()
            .filter(|s| *s > 6000)
            .take(1)
            .collect();
        let planned = units_isolating(&batch, &owner, &isolated).expect("units");
        let mut planned_slots: Vec<u16> = planned
            .iter()
            .flat_map(|(_, u)| u.slots.iter().map(|s| s.slot))
            .collect();
        planned_slots.sort_unstable();
        assert_eq!(planned_slots, applied);
        assert!(planned.len() >= 4, "3 primaries and an isolated slot");
        for (node, unit) in &planned {
            for slot in &unit.slots {
                assert_eq!(map.owner(slot.slot), Some(node.as_str()));
                let reference: Vec<Vec<&[u8]>> = by_slot[&slot.slot].clone();
                assert_eq!(slot.commands.iter().collect::<Vec<_>>(), reference);
            }
            assert_eq!(
                unit.command().get_packed_command(),
                reference_command(unit, &by_slot),
                "the EVALSHA of {node}'s unit"
            );
        }
    }
}
