//! One atomic unit on one primary: a Lua script (`allow-cross-slot-keys`) that compares and
//! sets the fence of every slot it writes plus the node's unit mark, and runs the slots' native
//! commands in between, or refuses before writing anything.
//!
//! Why a script: a `MULTI`/`EXEC` must keep to one slot (`CROSSSLOT` otherwise, even when the
//! slots share a node), and a batch touches about one slot per event. A script's *declared*
//! keys must share a slot too; the flag lets it reach undeclared keys in any slot of the node
//! it runs on. So the script declares one key (the first slot's fence hash: a `MOVED` or `ASK`
//! for it routes the call) and names the others in `ARGV`.
//!
//! Why it checks everything before it writes: a script is not rolled back. A command inside it
//! that meets a key the node does not hold (a slot it lost, or a key already migrated out of a
//! migrating slot) fails with "Script attempted to access a non local key", and whatever the
//! script wrote before stays. So phase 1 only reads: `CLUSTER NODES` once (the node's own line
//! lists the slots it is migrating or importing as `[slot->-id]` / `[slot-<-id]`), the unit mark
//! and every slot's fence field (`HGET`, which fails for a slot the node does not serve), and for
//! a migrating slot a multi-key `EXISTS` of its fence and all its keys, which Redis refuses
//! (`TRYAGAIN`) unless every one of them is still on this node. Phase 2 writes. Nothing can
//! change in between: a script runs alone, and `MIGRATE` and `CLUSTER SETSLOT` wait for it.
//!
//! `ARGV`: the partition field, the unit mark's expected and new text, the number of slots,
//! then per slot: its number, its fence hash, the expected and the new fence text (`''`: none),
//! its command count, and per command its argument count and arguments (the key second).
//! Reply: `{0, commands, write_errors, first_error|false}` applied; `{1, i, err}` slot `i`
//! (0: the mark) is not served here; `{2, i, stored}` slot `i` holds another fence (or mark);
//! `{3, i, err}` slot `i` is migrating and some of its keys are already gone.

use std::sync::LazyLock;

use redis::Value;

use super::fence::{SlotFence, UnitMark};
use crate::sink::redis::resp::{Bulks, Encoded};
use crate::sink::redis::script::LuaScript;
use crate::sink::redis::SinkError;

const UNIT_LUA: &str = r#"#!lua flags=allow-cross-slot-keys
local field, mark_key = ARGV[1], ARGV[2]
local mark_expected, mark_new = ARGV[3], ARGV[4]
local nslots = tonumber(ARGV[5])
local mine = string.match(redis.call('CLUSTER', 'NODES'), '[^\n]*myself[^\n]*') or ''
local moving = {}
for slot in string.gmatch(mine, '%[(%d+)%-') do moving[slot] = true end
local mark = redis.pcall('HGET', mark_key, 'u' .. field)
if type(mark) == 'table' then return {1, 0, mark.err} end
if (mark or '') ~= mark_expected then return {2, 0, mark or ''} end
local starts = {}
local i = 6
for s = 1, nslots do
  starts[s] = i
  local slot, fence, expected = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local ncommands = tonumber(ARGV[i + 4])
  local j = i + 5
  local keys = {fence}
  for c = 1, ncommands do
    keys[#keys + 1] = ARGV[j + 2]
    j = j + 1 + tonumber(ARGV[j])
  end
  local stored = redis.pcall('HGET', fence, field)
  if type(stored) == 'table' then
    if moving[slot] then return {3, s, stored.err} end
    return {1, s, stored.err}
  end
  if (stored or '') ~= expected then return {2, s, stored or ''} end
  if moving[slot] then
    local probe = redis.pcall('EXISTS', unpack(keys))
    if type(probe) == 'table' then return {3, s, probe.err} end
  end
  i = j
end
local commands, errors, first_error = 0, 0, false
for s = 1, nslots do
  local i = starts[s]
  local fence, new = ARGV[i + 1], ARGV[i + 3]
  local j = i + 5
  for c = 1, tonumber(ARGV[i + 4]) do
    local n = tonumber(ARGV[j])
    local reply = redis.pcall(unpack(ARGV, j + 1, j + n))
    if type(reply) == 'table' and reply.err then
      errors = errors + 1
      if not first_error then first_error = reply.err end
    end
    commands = commands + 1
    j = j + 1 + n
  end
  redis.call('HSET', fence, field, new)
end
redis.call('HSET', mark_key, 'u' .. field, mark_new)
return {0, commands + nslots + 1, errors, first_error}
"#;

pub(crate) static UNIT_SCRIPT: LazyLock<LuaScript> = LazyLock::new(|| LuaScript::new(UNIT_LUA));

/// One slot of a unit: its fence, compared and set, and its native commands.
#[derive(Debug, Clone)]
pub struct UnitSlot {
    pub slot: u16,
    pub fence_key: String,
    pub expected: Option<SlotFence>,
    pub new: SlotFence,
    pub commands: SlotCommands,
}

/// A slot's native commands, already as the unit's `ARGV` carries them: per command its argument
/// count, then its arguments (name first, key second), each as a RESP bulk string, back to back
/// in one buffer.
///
/// Why encoded: the batch's transaction is encoded already (`writes.rs`), and a command's
/// arguments there are byte for byte the bulk strings `ARGV` needs, so planning copies each
/// command once, whole, into its slot's buffer. As a `Vec` of arguments per command it cost an
/// allocation per argument and most of the worker's CPU on a cluster (BENCHMARKS.md, "Client CPU
/// on the cluster path").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotCommands {
    argv: Vec<u8>,
    commands: usize,
    /// `ARGV` items in `argv`.
    items: usize,
}

impl SlotCommands {
    /// The commands given as their arguments (name first, key second): tests and tools.
    pub fn of<A: AsRef<[u8]>>(commands: &[&[A]]) -> Self {
        let mut out = Self::default();
        for command in commands {
            out.count(command.len());
            for arg in *command {
                push_bulk(&mut out.argv, arg.as_ref());
            }
            out.items += command.len();
        }
        out
    }

    /// Empty, with room for `bytes` of `ARGV` (each command's encoding and its count).
    pub(crate) fn with_capacity(bytes: usize) -> Self {
        Self {
            argv: Vec::with_capacity(bytes),
            ..Self::default()
        }
    }

    /// Appends one command of an encoded transaction, copied whole.
    pub(crate) fn push_encoded(&mut self, command: Encoded<'_>) {
        self.count(command.args);
        self.argv.extend_from_slice(command.body);
        self.items += command.args;
    }

    /// Starts a command of `args` arguments: its count, as an `ARGV` item.
    fn count(&mut self, args: usize) {
        push_bulk(&mut self.argv, itoa::Buffer::new().format(args).as_bytes());
        self.commands += 1;
        self.items += 1;
    }

    /// How many commands.
    pub fn len(&self) -> usize {
        self.commands
    }

    pub fn is_empty(&self) -> bool {
        self.commands == 0
    }

    /// The commands, each as its arguments.
    pub fn iter(&self) -> impl Iterator<Item = Vec<&[u8]>> + '_ {
        let mut items = self.argv_items();
        std::iter::from_fn(move || {
            let args: usize = std::str::from_utf8(items.next()?).ok()?.parse().ok()?;
            Some(items.by_ref().take(args).collect())
        })
    }

    /// The `ARGV` items: each command's count, then its arguments.
    fn argv_items(&self) -> Bulks<'_> {
        Encoded {
            args: self.items,
            body: &self.argv,
        }
        .iter()
    }
}

fn push_bulk(out: &mut Vec<u8>, value: &[u8]) {
    out.push(b'$');
    out.extend_from_slice(itoa::Buffer::new().format(value.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A unit: everything one batch writes on one primary (or one migrating slot of it).
#[derive(Debug, Clone)]
pub struct Unit {
    pub partition: i32,
    /// The fence hash of the node's anchor slot, which holds the unit mark.
    pub mark_key: String,
    pub mark_expected: Option<UnitMark>,
    pub mark_new: UnitMark,
    pub slots: Vec<UnitSlot>,
}

/// Room for a fence's text (`epoch:from:next`, three 64-bit numbers).
const FENCE_TEXT: usize = 64;

/// `fence`'s text as [`SlotFence`]'s `Display` writes it (empty for none) into `out`, without the
/// formatting machinery: it is written twice per slot, about twice per event.
fn fence_text(fence: Option<&SlotFence>, out: &mut Vec<u8>) {
    out.clear();
    let Some(fence) = fence else { return };
    let mut digits = itoa::Buffer::new();
    out.extend_from_slice(digits.format(fence.epoch).as_bytes());
    out.push(b':');
    out.extend_from_slice(digits.format(fence.from).as_bytes());
    out.push(b':');
    out.extend_from_slice(digits.format(fence.next).as_bytes());
}

/// What the script answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitReply {
    Applied {
        commands: usize,
        write_errors: usize,
        first_error: Option<String>,
    },
    /// The node does not serve slot `slot` (`None`: the anchor's): the slot map is stale.
    NotHere { slot: Option<u16>, error: String },
    /// Slot `slot` (`None`: the unit mark) holds `stored` instead of what the owner expected.
    Changed { slot: Option<u16>, stored: String },
    /// Slot `slot` is migrating and some of the unit's keys already left: wait and retry.
    Migrating { slot: u16, error: String },
    /// Redis answered the call itself with `MOVED` (`ask: false`) or `ASK` for the declared
    /// key: the unit's first slot lives at `address` now (or, for `ASK`, is on its way there).
    Redirected { ask: bool, address: String },
}

/// Runs `unit` on the node `conn` reaches: `EVALSHA`, loading the script first if the node does
/// not have it (a new or restarted node, a promoted replica). A redirect of the call itself is a
/// reply, like the script's own refusals; every other error is returned.
pub async fn run<C>(conn: &mut C, unit: &Unit) -> Result<UnitReply, SinkError>
where
    C: redis::aio::ConnectionLike + Send,
{
    let cmd = unit.command();
    let mut result = cmd.query_async::<Value>(conn).await;
    if matches!(&result, Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
    {
        redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(UNIT_SCRIPT.source)
            .query_async::<Value>(conn)
            .await?;
        result = cmd.query_async::<Value>(conn).await;
    }
    match result {
        Ok(reply) => unit.read_reply(&reply),
        Err(err) => match (err.kind(), err.redirect_node()) {
            (
                redis::ErrorKind::Server(
                    kind @ (redis::ServerErrorKind::Moved | redis::ServerErrorKind::Ask),
                ),
                Some((address, _)),
            ) => Ok(UnitReply::Redirected {
                ask: kind == redis::ServerErrorKind::Ask,
                address: address.to_string(),
            }),
            _ => Err(err.into()),
        },
    }
}

impl Unit {
    /// The `EVALSHA` of the unit (the script must be loaded on the node, see
    /// [`UNIT_SCRIPT`]). Sized up front: the command of a unit holds every argument of its
    /// node's share of the batch, and growing it by doubling copied it again and again.
    pub fn command(&self) -> redis::Cmd {
        let items: usize = self.slots.iter().map(|s| 5 + s.commands.items).sum();
        let bytes: usize = self
            .slots
            .iter()
            .map(|s| s.fence_key.len() + 3 * FENCE_TEXT + s.commands.argv.len())
            .sum();
        let mut cmd =
            redis::Cmd::with_capacity(9 + items, 2 * self.mark_key.len() + 4 * FENCE_TEXT + bytes);
        let first = self.slots.first().map_or(&self.mark_key, |s| &s.fence_key);
        cmd.arg("EVALSHA").arg(UNIT_SCRIPT.hash()).arg(1).arg(first);
        cmd.arg(self.partition)
            .arg(&self.mark_key)
            .arg(
                self.mark_expected
                    .map(|m| m.to_string())
                    .unwrap_or_default(),
            )
            .arg(self.mark_new.to_string())
            .arg(self.slots.len());
        let mut text = Vec::with_capacity(FENCE_TEXT);
        for slot in &self.slots {
            cmd.arg(slot.slot).arg(&slot.fence_key);
            fence_text(slot.expected.as_ref(), &mut text);
            cmd.arg(text.as_slice());
            fence_text(Some(&slot.new), &mut text);
            cmd.arg(text.as_slice()).arg(slot.commands.len());
            for item in slot.commands.argv_items() {
                cmd.arg(item);
            }
        }
        cmd
    }

    /// Reads the script's reply.
    pub fn read_reply(&self, reply: &Value) -> Result<UnitReply, SinkError> {
        let unexpected = || SinkError::Script(format!("unexpected unit reply {reply:?}"));
        let Value::Array(items) = reply else {
            return Err(unexpected());
        };
        let int = |i: usize| match items.get(i) {
            Some(Value::Int(n)) => Some(*n),
            _ => None,
        };
        let string = |i: usize| match items.get(i) {
            Some(Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
            Some(Value::SimpleString(s)) => s.clone(),
            _ => String::new(),
        };
        let slot = |i: usize| -> Result<Option<u16>, SinkError> {
            match int(i) {
                Some(0) => Ok(None),
                Some(n) if n > 0 && (n as usize) <= self.slots.len() => {
                    Ok(Some(self.slots[n as usize - 1].slot))
                }
                _ => Err(unexpected()),
            }
        };
        match int(0) {
            Some(0) => Ok(UnitReply::Applied {
                commands: int(1).ok_or_else(unexpected)?.max(0) as usize,
                write_errors: int(2).ok_or_else(unexpected)?.max(0) as usize,
                first_error: Some(string(3)).filter(|e| !e.is_empty()),
            }),
            Some(1) => Ok(UnitReply::NotHere {
                slot: slot(1)?,
                error: string(2),
            }),
            Some(2) => Ok(UnitReply::Changed {
                slot: slot(1)?,
                stored: string(2),
            }),
            Some(3) => Ok(UnitReply::Migrating {
                slot: slot(1)?.ok_or_else(unexpected)?,
                error: string(2),
            }),
            _ => Err(unexpected()),
        }
    }
}
