#!/usr/bin/env python3
# Redis CPU per event of candidate exactly-once apply designs on Redis Cluster (issue #25),
# against the single-node design in use (WATCH + MULTI/EXEC, "multi2" of bench-apply-designs.py),
# on the same data set (bench-apply-designs.py's lifecycle shape, 4 partitions, sticky partitioner).
# Measures redis-server only (INFO cpu of every primary), like bench-apply-designs.py.
#
#   SINGLE=<port of a plain redis-server> [REPS=2] [STATS=1] python3 scripts/bench-cluster-designs.py \
#       <port of a cluster primary> 200000 single,floor,lua,slotlua,slotlua1,slotwatch,slotread,slotmulti 2000
#
# The last argument is the batch size, in events per partition. REPS runs every design again,
# interleaved; STATS prints INFO commandstats summed over the servers (calls per event).
#
# Designs:
#   single    the single-node apply (WATCH fence + read, merged native commands in MULTI/EXEC)
#             on the SINGLE server: the reference.
#   floor     the merged native commands pipelined to each primary, no fence, no atomicity: the
#             cluster's floor.
#   slotlua   the design chosen: per primary and batch one script (allow-cross-slot-keys) that
#             reads which slots the node is migrating (CLUSTER NODES, once), then for every slot
#             the batch touches there (plus the node's anchor slot) reads the slot's fence field
#             of the partition (HGET: fails, before any write, if the node does not own the slot)
#             and compares it with what the worker expects; a migrating slot also gets a
#             multi-key probe (EXISTS fence + its keys: refused unless all are still here). Then
#             the data writes, and each slot's fence field moves (HSET).
#   lua       slotlua without its fence reads and writes (not exactly-once): what the script's
#             data writes alone cost.
#   slotlua1  slotlua with one fence call per slot instead of two: a string key per slot and
#             partition set with SET .. GET (compared after the swap; on a mismatch the script
#             restores every fence it swapped and refuses the unit before any data write).
#   slotwatch per primary and batch one pipeline of, for every slot the batch touches there (plus
#             the node's anchor slot, as in slotlua): WATCH fence; EVALSHA check (CHECK below:
#             compares the fence field, and on a mismatch writes it again, which touches the
#             watched key so that the EXEC aborts); MULTI; the slot's native commands; HSET
#             fence; EXEC. No round trip per slot; a slot that mismatches is not applied, the
#             others are (each slot has its own fence). No CLUSTER NODES or probe: a queued
#             command on a key that is not here makes EXEC discard the slot's transaction.
#             scripts/check-slotwatch.py checks these semantics on a real server.
#   slotread  slotwatch with a plain HGET instead of the check script: the client would compare
#             and send MULTI..EXEC only on a match, which needs a round trip per slot (or a
#             connection per slot in flight: the first EXEC ends every WATCH of a connection).
#             Measured pipelined (the benchmark knows every fence matches), so a lower bound of
#             its Redis CPU: the round trips' reads and writes would add to it.
#   slotmulti per slot a MULTI/EXEC of the slot's native commands plus its fence HSET, all slots of
#             a primary pipelined (no WATCH/read: a lower bound of any per-slot transaction design).
import functools, importlib.util, os, sys, time

spec = importlib.util.spec_from_file_location(
    "apply_designs", os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench-apply-designs.py"))
ad = importlib.util.module_from_spec(spec); spec.loader.exec_module(ad)
Conn, enc, cpu, generate, midnight, merge, value = ad.Conn, ad.enc, ad.cpu, ad.generate, ad.midnight, ad.merge, ad.value
MSG_TTL, TPL_TTL = ad.MSG_TTL, ad.TPL_TTL

def _crc_table():
    table = []
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table

CRC_TABLE = _crc_table()
def crc16(data):
    crc = 0
    for b in data: crc = ((crc << 8) & 0xFF00) ^ CRC_TABLE[(crc >> 8) ^ b]
    return crc

@functools.lru_cache(maxsize=1 << 20)
def slot_of(key):
    s = key.find(b"{")
    if s >= 0:
        e = key.find(b"}", s + 1)
        if e > s + 1: key = key[s + 1:e]
    return crc16(key) % 16384

def slot_tags():
    tags = [None] * 16384; n = 0; i = 0
    while n < 16384:
        t = str(i).encode(); s = crc16(t) % 16384
        if tags[s] is None: tags[s] = t; n += 1
        i += 1
    return tags

TAGS = slot_tags()
def fence_key(slot):
    return b"streamjob:bench:fence:t:{%s}" % TAGS[slot]

SCRIPT = r"""#!lua flags=allow-cross-slot-keys
-- ARGV: mode (0: no fence, 1: per-slot fence field, HGET then HSET; 2: per-slot and partition
-- fence string, SET .. GET, restored on a mismatch), partition, value, message_ttl, user_at,
-- template_ttl, nslots, then per slot:
--   slot, fence, expected, nlists, [key, kind(m|u|t), n, v1..vn]*, ntemplates, [key, nf, f, n]*
local fenced = ARGV[1] ~= '0'
local swap = ARGV[1] == '2'
local field, value = ARGV[2], ARGV[3]
local mttl, uat, tttl = ARGV[4], ARGV[5], ARGV[6]
local nslots = tonumber(ARGV[7])
local cmds = 0
-- Slots this node is migrating or importing: "[slot->-id]" / "[slot-<-id]" on its own line.
local moving = {}
if fenced then
  local nodes = redis.call('CLUSTER', 'NODES'); cmds = cmds + 1
  local mine = string.match(nodes, '[^\n]*myself[^\n]*')
  for slot in string.gmatch(mine, '%[(%d+)%-') do moving[slot] = true end
end
local i = 8
local starts = {}
local swapped = {}  -- mode 2: {fence, previous value} of the fences already set, to restore
local function restore()
  for _, f in ipairs(swapped) do
    if f[2] then redis.call('SET', f[1], f[2]) else redis.call('DEL', f[1]) end
  end
end
for s = 1, nslots do
  starts[s] = i
  local slot, fence, expected = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local nl = tonumber(ARGV[i + 3]); local j = i + 4
  local first = j
  for l = 1, nl do j = j + 3 + tonumber(ARGV[j + 2]) end
  local nt = tonumber(ARGV[j]); j = j + 1
  for t = 1, nt do j = j + 2 + 2 * tonumber(ARGV[j + 1]) end
  if fenced then
    local stored
    if swap then stored = redis.pcall('SET', fence, value, 'GET') else stored = redis.pcall('HGET', fence, field) end
    cmds = cmds + 1
    if type(stored) == 'table' then restore(); return {1, s, stored.err} end
    if swap then swapped[#swapped + 1] = {fence, stored} end
    if (stored or '') ~= expected then restore(); return {2, s, stored or ''} end
    if moving[slot] then
      -- A migrating slot: apply only if every key is still here (a multi-key command answers
      -- TRYAGAIN/ASK otherwise), never half here and half on the importing node.
      local probe = {fence}
      local k = first
      for l = 1, nl do probe[#probe + 1] = ARGV[k]; k = k + 3 + tonumber(ARGV[k + 2]) end
      local r = redis.pcall('EXISTS', unpack(probe)); cmds = cmds + 1
      if type(r) == 'table' then restore(); return {3, s, r.err} end
    end
  end
  i = j
end
for s = 1, nslots do
  local i = starts[s]
  local fence = ARGV[i + 1]
  local nl = tonumber(ARGV[i + 3]); local j = i + 4
  for l = 1, nl do
    local key, kind, n = ARGV[j], ARGV[j + 1], tonumber(ARGV[j + 2])
    redis.pcall('LPUSH', key, unpack(ARGV, j + 3, j + 2 + n))
    if kind == 'm' then redis.pcall('PEXPIRE', key, mttl); cmds = cmds + 2
    elseif kind == 'u' then redis.pcall('PEXPIREAT', key, uat); cmds = cmds + 2
    else cmds = cmds + 1 end
    j = j + 3 + n
  end
  local nt = tonumber(ARGV[j]); j = j + 1
  for t = 1, nt do
    local key, nf = ARGV[j], tonumber(ARGV[j + 1])
    for f = 1, nf do redis.pcall('HINCRBY', key, ARGV[j + 2 * f], ARGV[j + 1 + 2 * f]) end
    redis.pcall('PEXPIRE', key, tttl)
    cmds = cmds + nf + 1
    j = j + 2 + 2 * nf
  end
  if fenced and not swap then redis.call('HSET', fence, field, value); cmds = cmds + 1 end
end
return {0, cmds}
"""

def node_map(port):
    c = Conn(port); owner = [None] * 16384; ports = []
    for rng in c.call("CLUSTER", "SLOTS"):
        p = int(rng[2][1])
        if p not in ports: ports.append(p)
        for s in range(rng[0], rng[1] + 1): owner[s] = p
    return owner, ports

def plan(batch, checked):
    """Per slot: lists [(key, kind, values)] and templates [(key, [(f, n)])]."""
    lists, tpl = merge(batch)
    slots = {}
    for k, (kind, vals) in lists.items():
        if kind == "u" and k in checked: kind = "t"
        slots.setdefault(slot_of(k), ([], []))[0].append((k, kind, vals))
        if kind == "u": checked.add(k)
    for b, f in tpl.items():
        k = str(b).encode()
        slots.setdefault(slot_of(k), ([], []))[1].append((k, list(f.items())))
    return slots

def slot_cmds(lists, tpls):
    out = []
    for k, kind, vals in lists:
        out.append(enc([b"LPUSH", k] + vals))
        if kind == "m": out.append(enc([b"PEXPIRE", k, MSG_TTL]))
        elif kind == "u": out.append(enc([b"PEXPIREAT", k, midnight()]))
    for k, fields in tpls:
        for f, n in fields: out.append(enc([b"HINCRBY", k, f, n]))
        out.append(enc([b"PEXPIRE", k, TPL_TTL]))
    return out

# slotwatch's check: compares the slot's fence field of the partition with what the worker
# expects; on a mismatch it writes the fence again (the same value; an absent field is set and
# deleted), which touches the key the connection WATCHes, so that the slot's coming EXEC aborts.
CHECK = r"""local stored = redis.call('HGET', KEYS[1], ARGV[1])
if (stored or '') == ARGV[2] then return 0 end
if stored then redis.call('HSET', KEYS[1], ARGV[1], stored)
else redis.call('HSET', KEYS[1], ARGV[1], ''); redis.call('HDEL', KEYS[1], ARGV[1]) end
return {1, stored or ''}
"""

def fence_of(variant, slot, pi):
    """slotlua1 keeps a string per slot and partition; the others a hash per slot."""
    if variant == "slotlua1": return fence_key(slot) + b":%d" % pi
    return fence_key(slot)

def send_floor(cc, ctx, group):
    cmds = [c for _, l, t in group for c in slot_cmds(l, t)]
    cc.send(b"".join(cmds)); cc.skip(len(cmds)); return len(cmds)

def send_slotmulti(cc, ctx, group):
    out = []; n = 0
    for s, l, t in group:
        cmds = slot_cmds(l, t) + [enc([b"HSET", fence_key(s), ctx["pi"], ctx["val"]])]
        out.append(enc([b"MULTI"]) + b"".join(cmds) + enc([b"EXEC"])); n += len(cmds) + 2
    cc.send(b"".join(out)); cc.skip(n); return n

def with_anchor(ctx, group):
    """The node's anchor slot (its unit mark) is fenced like a written slot, as in slotlua."""
    if ctx["anchor"] in ctx["slots"]: return group
    return [(ctx["anchor"], [], [])] + group

def send_slotwatch(cc, ctx, group, read=False):
    """Per slot, pipelined: WATCH, EVALSHA check (read: HGET), MULTI, data, HSET fence, EXEC."""
    out = []; ndata = []; pi, val, stored = ctx["pi"], ctx["val"], ctx["stored"]
    for s, l, t in with_anchor(ctx, group):
        fk = fence_key(s); data = slot_cmds(l, t); expected = stored.get((s, pi), b"")
        check = enc([b"HGET", fk, pi]) if read else enc([b"EVALSHA", ctx["check"], 1, fk, pi, expected])
        out.append(enc([b"WATCH", fk]) + check + enc([b"MULTI"]) + b"".join(data)
                   + enc([b"HSET", fk, pi, val]) + enc([b"EXEC"]))
        ndata.append((len(data), expected if read else 0)); stored[(s, pi)] = val
    cc.send(b"".join(out))
    for n, want in ndata:
        cc.skip(1); r = cc.read(); assert r == want or (want == b"" and r is None), (r, want)
        cc.skip(n + 2); r = cc.read(); assert isinstance(r, list), r
    # WATCH, EVALSHA and its HGET (read: HGET), MULTI, HSET, EXEC per slot, and the data commands
    return sum(n for n, _ in ndata) + (5 if read else 6) * len(ndata)

def send_script(cc, ctx, group, variant):
    """lua (mode 0), slotlua (1), slotlua1 (2): one script per primary."""
    group = group + [(ctx["anchor"], [], [])] if ctx["anchor"] not in ctx["slots"] else group
    pi, stored = ctx["pi"], ctx["stored"]
    mode = {"lua": 0, "slotlua": 1, "slotlua1": 2}[variant]
    argv = [mode, pi, ctx["val"], MSG_TTL, ctx["eod"], TPL_TTL, len(group)]
    for s, l, t in group:
        argv += [s, fence_of(variant, s, pi), stored.get((s, pi), b""), len(l)]
        for k, kind, vals in l: argv += [k, kind, len(vals)] + vals
        argv.append(len(t))
        for k, fields in t:
            argv += [k, len(fields)]
            for f, n in fields: argv += [f, n]
        stored[(s, pi)] = ctx["val"]
    r = cc.call("EVALSHA", ctx["sha"], 1, fence_of(variant, group[0][0], pi), *argv)
    assert isinstance(r, list) and r[0] == 0, r
    return 1 + r[1]

def send_unit(cc, ctx, group, variant):
    if variant == "floor": return send_floor(cc, ctx, group)
    if variant == "slotmulti": return send_slotmulti(cc, ctx, group)
    if variant == "slotwatch": return send_slotwatch(cc, ctx, group)
    if variant == "slotread": return send_slotwatch(cc, ctx, group, read=True)
    return send_script(cc, ctx, group, variant)

def by_node(slots, owner):
    per_node = {}
    for s, (lists, tpls) in slots.items():
        per_node.setdefault(owner[s], []).append((s, lists, tpls))
    return per_node

def run_cluster(port, P, variant, bs):
    owner, ports = node_map(port)
    admin = {p: Conn(p) for p in ports}
    for c in admin.values(): c.call("FLUSHALL"); c.call("CONFIG", "RESETSTAT")
    conns = {(pi, p): Conn(p) for pi in range(len(P)) for p in ports}
    sha = {p: admin[p].call("SCRIPT", "LOAD", SCRIPT).decode() for p in ports}
    check = {p: admin[p].call("SCRIPT", "LOAD", CHECK).decode() for p in ports}
    anchor = {p: owner.index(p) for p in ports}
    stored = {}  # (slot, partition) -> fence value the worker expects
    cpu0 = {p: cpu(c) for p, c in admin.items()}
    t0 = time.time(); eod = midnight(); ncmd = 0; nev = 0; checked = set()
    nb = max(len(p) for p in P) // bs + 1
    for bi in range(nb):
        for pi, part in enumerate(P):
            batch = part[bi * bs:(bi + 1) * bs]
            if not batch: continue
            nev += len(batch)
            slots = plan(batch, checked)
            val = b"1:%d:%d" % (bi * bs, bi * bs + len(batch))
            for p, group in by_node(slots, owner).items():
                ctx = {"pi": pi, "val": val, "eod": eod, "stored": stored, "slots": slots,
                       "anchor": anchor[p], "sha": sha[p], "check": check[p]}
                ncmd += send_unit(conns[(pi, p)], ctx, group, variant)
    for cc in conns.values(): cc.call("PING")
    el = time.time() - t0
    # A cluster node spends CPU while idle (cluster bus pings, cron): subtract its idle rate.
    per = {p: (cpu(c) - cpu0[p] - IDLE.get(p, 0.0) * el) * 1e6 / nev for p, c in admin.items()}
    stats = [c.call("INFO", "commandstats").decode() for c in admin.values()]
    return nev / el, sum(per.values()), max(per.values()), ncmd / nev, stats

def print_stats(infos, nev):
    """INFO commandstats summed over servers: calls per event, µs per call (a script's or EXEC's
    µs include the commands it ran; those are also listed on their own)."""
    calls = {}; usec = {}
    for info in infos:
        for l in info.splitlines():
            if not l.startswith("cmdstat_"): continue
            name, rest = l[8:].split(":", 1); f = dict(x.split("=") for x in rest.split(","))
            calls[name] = calls.get(name, 0) + int(f["calls"]); usec[name] = usec.get(name, 0) + int(f["usec"])
    for name in sorted(calls, key=lambda n: -usec[n]):
        if calls[name] >= nev / 100:
            print(f"    {name:12s} {calls[name] / nev:6.3f} calls/ev  {usec[name] / calls[name]:6.2f} us/call", flush=True)

IDLE = {}
def measure_idle(ports, seconds=5.0):
    """CPU seconds per second each primary spends while no client writes."""
    conns = {p: Conn(p) for p in ports}
    c0 = {p: cpu(c) for p, c in conns.items()}; time.sleep(seconds)
    for p, c in conns.items(): IDLE[p] = (cpu(c) - c0[p]) / seconds

def main():
    port = int(sys.argv[1]); n = int(sys.argv[2]); variants = sys.argv[3].split(","); bs = int(sys.argv[4])
    P = generate(n)
    measure_idle(node_map(port)[1])
    print("idle CPU per primary (ms/s): " + ", ".join(f"{p}: {r * 1e3:.1f}" for p, r in IDLE.items()), flush=True)
    for rep in range(int(os.environ.get("REPS", "1"))):
        for v in variants:
            if v == "single":
                eps, us, cpe, stats = ad.run(int(os.environ["SINGLE"]), P, "multi2", bs)
                print(f"{v:10s} ev/s {eps:9.0f}  redis cpu {us:6.2f} us/ev (one node)  cmds/ev {cpe:5.2f}", flush=True)
                stats = [stats]
            else:
                eps, total, busiest, cpe, stats = run_cluster(port, P, v, bs)
                print(f"{v:10s} ev/s {eps:9.0f}  redis cpu {total:6.2f} us/ev summed, busiest shard {busiest:6.2f}  cmds/ev {cpe:5.2f}", flush=True)
            if os.environ.get("STATS"): print_stats(stats, sum(len(p) for p in P))

if __name__ == "__main__":
    main()
