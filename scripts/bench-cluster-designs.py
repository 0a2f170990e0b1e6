#!/usr/bin/env python3
# Redis CPU per event of candidate exactly-once apply designs on Redis Cluster (issue #25),
# against the single-node design in use (WATCH + MULTI/EXEC, "multi2" of bench-apply-designs.py),
# on the same data set (bench-apply-designs.py's lifecycle shape, 4 partitions, sticky partitioner).
# Measures redis-server only (INFO cpu of every primary), like bench-apply-designs.py.
#
#   SINGLE=<port of a plain redis-server> python3 scripts/bench-cluster-designs.py \
#       <port of a cluster primary> 200000 single,floor,slotlua,slotmulti 2000
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
#   slotmulti per slot a MULTI/EXEC of the slot's native commands plus its fence SET, all slots of
#             a primary pipelined (no WATCH/read: a lower bound of any per-slot transaction design).
import importlib.util, os, sys, time

spec = importlib.util.spec_from_file_location(
    "apply_designs", os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench-apply-designs.py"))
ad = importlib.util.module_from_spec(spec); spec.loader.exec_module(ad)
Conn, enc, cpu, generate, midnight, merge, value = ad.Conn, ad.enc, ad.cpu, ad.generate, ad.midnight, ad.merge, ad.value
MSG_TTL, TPL_TTL = ad.MSG_TTL, ad.TPL_TTL

def crc16(data):
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc

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
-- ARGV: mode (0: no fence, 1: per-slot fence), partition, value, message_ttl, user_at,
-- template_ttl, nslots, then per slot:
--   slot, fence, expected, nlists, [key, kind(m|u|t), n, v1..vn]*, ntemplates, [key, nf, f, n]*
local fenced = ARGV[1] ~= '0'
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
for s = 1, nslots do
  starts[s] = i
  local slot, fence, expected = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local nl = tonumber(ARGV[i + 3]); local j = i + 4
  local first = j
  for l = 1, nl do j = j + 3 + tonumber(ARGV[j + 2]) end
  local nt = tonumber(ARGV[j]); j = j + 1
  for t = 1, nt do j = j + 2 + 2 * tonumber(ARGV[j + 1]) end
  if fenced then
    local stored = redis.pcall('HGET', fence, field); cmds = cmds + 1
    if type(stored) == 'table' then return {1, s, stored.err} end
    if (stored or '') ~= expected then return {2, s, stored or ''} end
    if moving[slot] then
      -- A migrating slot: apply only if every key is still here (a multi-key command answers
      -- TRYAGAIN/ASK otherwise), never half here and half on the importing node.
      local probe = {fence}
      local k = first
      for l = 1, nl do probe[#probe + 1] = ARGV[k]; k = k + 3 + tonumber(ARGV[k + 2]) end
      local r = redis.pcall('EXISTS', unpack(probe)); cmds = cmds + 1
      if type(r) == 'table' then return {3, s, r.err} end
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
  if fenced then redis.call('HSET', fence, field, value); cmds = cmds + 1 end
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

def run_cluster(port, P, variant, bs):
    owner, ports = node_map(port)
    admin = {p: Conn(p) for p in ports}
    for c in admin.values(): c.call("FLUSHALL"); c.call("CONFIG", "RESETSTAT")
    conns = {(pi, p): Conn(p) for pi in range(len(P)) for p in ports}
    sha = {p: admin[p].call("SCRIPT", "LOAD", SCRIPT).decode() for p in ports}
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
            per_node = {}
            for s, (lists, tpls) in slots.items():
                per_node.setdefault(owner[s], []).append((s, lists, tpls))
            first = bi * bs; nxt = first + len(batch)
            val = b"1:%d:%d" % (first, nxt)
            for p, group in per_node.items():
                cc = conns[(pi, p)]
                if variant == "floor":
                    cmds = [c for _, l, t in group for c in slot_cmds(l, t)]
                    cc.send(b"".join(cmds)); cc.skip(len(cmds)); ncmd += len(cmds)
                elif variant == "slotmulti":
                    out = []; n = 0
                    for s, l, t in group:
                        cmds = slot_cmds(l, t) + [enc([b"HSET", fence_key(s), pi, val])]
                        out.append(enc([b"MULTI"]) + b"".join(cmds) + enc([b"EXEC"])); n += len(cmds) + 2
                    cc.send(b"".join(out)); cc.skip(n); ncmd += n
                else:
                    if anchor[p] not in slots: group.append((anchor[p], [], []))
                    argv = [0 if variant == "lua" else 1, pi, val, MSG_TTL, eod, TPL_TTL, len(group)]
                    for s, l, t in group:
                        fk = fence_key(s)
                        argv += [s, fk, stored.get((s, pi), b""), len(l)]
                        for k, kind, vals in l: argv += [k, kind, len(vals)] + vals
                        argv.append(len(t))
                        for k, fields in t:
                            argv += [k, len(fields)]
                            for f, n in fields: argv += [f, n]
                        stored[(s, pi)] = val
                    r = cc.call("EVALSHA", sha[p], 1, fence_key(group[0][0]), *argv)
                    assert isinstance(r, list) and r[0] == 0, r
                    ncmd += 1 + r[1]
    for cc in conns.values(): cc.call("PING")
    el = time.time() - t0
    # A cluster node spends CPU while idle (cluster bus pings, cron): subtract its idle rate.
    per = {p: (cpu(c) - cpu0[p] - IDLE.get(p, 0.0) * el) * 1e6 / nev for p, c in admin.items()}
    return nev / el, sum(per.values()), max(per.values()), ncmd / nev

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
                eps, us, cpe, _ = ad.run(int(os.environ["SINGLE"]), P, "multi2", bs)
                print(f"{v:10s} ev/s {eps:9.0f}  redis cpu {us:6.2f} us/ev (one node)  cmds/ev {cpe:5.2f}", flush=True)
            else:
                eps, total, busiest, cpe = run_cluster(port, P, v, bs)
                print(f"{v:10s} ev/s {eps:9.0f}  redis cpu {total:6.2f} us/ev summed, busiest shard {busiest:6.2f}  cmds/ev {cpe:5.2f}", flush=True)

if __name__ == "__main__":
    main()
