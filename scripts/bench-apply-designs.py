#!/usr/bin/env python3
# Redis CPU per event of candidate designs for applying a batch (BENCHMARKS.md, "Apply designs
# compared"). A measurement of redis-server only (its INFO cpu and INFO commandstats), so the
# client is plain Python speaking RESP over a socket; the data set is the lifecycle shape of
# worker/src/testkit/lifecycle.rs (same rules, Python's RNG), 4 partitions, sticky partitioner.
#
#   redis-server --port 6411 --save '' --appendonly no --daemonize yes
#   V2=1 REPS=3 python3 scripts/bench-apply-designs.py 6411 200000 upstream,lua,native2,multi2 2000
#
# Variants: upstream (8 commands per event), lua (the apply script used until this change,
# scripts/bench-apply-designs.lua), native2 (the merged commands pipelined with no atomicity: the
# floor), multi2 (WATCH + read, then the merged commands in MULTI/EXEC: the design chosen),
# native / multi (the same with each key's TTL command after all pushes instead of next to its
# push), multinowatch / multismall (MULTI without WATCH / in transactions of 100 commands).
import random, socket, subprocess, sys, time, os, threading

def enc(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if not isinstance(a, bytes):
            a = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)

class Conn:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""; self.pos = 0
    def send(self, data): self.s.sendall(data)
    def _fill(self):
        d = self.s.recv(1 << 20)
        if not d: raise EOFError
        self.buf = self.buf[self.pos:] + d; self.pos = 0
    def _line(self):
        while True:
            i = self.buf.find(b"\r\n", self.pos)
            if i >= 0:
                l = self.buf[self.pos:i]; self.pos = i + 2; return l
            self._fill()
    def read(self):
        l = self._line(); t = l[:1]
        if t in (b"+",): return l[1:].decode()
        if t == b"-": return Exception(l[1:].decode())
        if t == b":": return int(l[1:])
        if t == b"$":
            n = int(l[1:])
            if n < 0: return None
            while len(self.buf) - self.pos < n + 2: self._fill()
            v = self.buf[self.pos:self.pos + n]; self.pos += n + 2; return v
        if t == b"*":
            n = int(l[1:])
            if n < 0: return None
            return [self.read() for _ in range(n)]
        raise ValueError(l)
    def skip(self, n):
        for _ in range(n): self.read()
    def call(self, *args):
        self.send(enc(args)); return self.read()

def lifecycle(rng):
    r = rng.randrange(100)
    if r < 70: return [10, 60, 64] if rng.randrange(5) == 0 else [10, 60]
    if r < 80: return [10, 70]
    if r < 85: return [10, 20]
    if r < 88: return [10, 22]
    if r < 90: return [10, 24, 60]
    if r < 94: return [10, 30]
    if r < 97: return [10, 40]
    if r < 99: return [10, 50]
    return [10, 40001]

def generate(events, parts=4, users=100000, bids=50):
    rng = random.Random(42)
    P = [[] for _ in range(parts)]
    sticky = 0; in_sticky = 0; mid = 0; ts = 1700000000000; pending = []
    for _ in range(events):
        if len(pending) < 50 or rng.randrange(3) == 0:
            mid += 1
            bid = 1000000000000000 + 100000000 * rng.randrange(bids) + 20240101
            ids = ["1%010d" % rng.randrange(users) for _ in range(rng.randint(1, 3))]
            st = lifecycle(rng); first = st.pop(0)
            if st: pending.append([mid, bid, ids, st])
            ev = (mid, bid, ids, first)
        else:
            i = rng.randrange(len(pending)); e = pending[i]; s = e[3].pop(0)
            if not e[3]: pending[i] = pending[-1]; pending.pop()
            ev = (e[0], e[1], e[2], s)
        ts += rng.randrange(3)
        if in_sticky == 100: sticky = rng.randrange(parts); in_sticky = 0
        in_sticky += 1
        m, b, ids, s = ev
        P[sticky].append(("msg%015d" % m, b, ids, s, ts))
    return P

def value(ev):
    return b'{"businessId":%d,"state":%d,"timestamp":%d}' % (ev[1], ev[3], ev[4])

MSG_TTL = 3 * 86400 * 1000; TPL_TTL = 30 * 86400 * 1000
def midnight():
    # next Shanghai midnight (UTC+8)
    now = int(time.time() * 1000); day = 86400000; off = 8 * 3600000
    return ((now + off) // day + 1) * day - off

def upstream_cmds(batch, eod):
    out = []
    for ev in batch:
        v = value(ev); k = b"Austin:MessageId:" + ev[0].encode()
        out.append(enc([b"LPUSH", k, v])); out.append(enc([b"EXPIRE", k, 259200]))
        for u in ev[2]:
            out.append(enc([b"LPUSH", u, v])); out.append(enc([b"PEXPIREAT", u, eod]))
        out.append(enc([b"HINCRBY", ev[1], ev[3], len(ev[2])])); out.append(enc([b"EXPIRE", ev[1], 2592000]))
    return out

def merge(batch):
    lists = {}  # key -> [kind, values]
    tpl = {}
    for ev in batch:
        v = value(ev); k = b"Austin:MessageId:" + ev[0].encode()
        e = lists.setdefault(k, ["m", []]); e[0] = "m"; e[1].append(v)
        for u in ev[2]:
            e = lists.setdefault(u.encode(), ["u", []]); e[0] = "u"; e[1].append(v)
        f = tpl.setdefault(ev[1], {}); f[ev[3]] = f.get(ev[3], 0) + len(ev[2])
    return lists, tpl

def native_cmds(batch, eod, checked, mode):
    lists, tpl = merge(batch)
    out = []
    for k, (kind, vals) in lists.items():
        out.append(enc([b"LPUSH", k] + vals))
    for k, (kind, vals) in lists.items():
        if kind == "m": out.append(enc([b"PEXPIRE", k, MSG_TTL]))
        elif k not in checked:
            out.append(enc([b"PEXPIREAT", k, eod]))
    for b, f in tpl.items():
        for s, n in f.items(): out.append(enc([b"HINCRBY", b, s, n]))
        out.append(enc([b"PEXPIRE", b, TPL_TTL]))
    for k, (kind, vals) in lists.items():
        if kind == "u": checked.add(k)
    return out

def run(port, P, variant, batch_size, lua_sha=None):
    c = Conn(port); c.call("FLUSHALL"); c.call("CONFIG", "RESETSTAT")
    cpu0 = cpu(c); t0 = time.time(); eod = midnight(); ncmd = 0; nev = 0
    checked = set()
    conns = [Conn(port) for _ in P]
    # round-robin batches over partitions so keys interleave like concurrent partitions
    nb = max(len(p) for p in P) // batch_size + 1
    for bi in range(nb):
        for pi, p in enumerate(P):
            batch = p[bi * batch_size:(bi + 1) * batch_size]
            if not batch: continue
            nev += len(batch); cc = conns[pi]
            fence = b"streamjob:bench:fence:t:%d" % pi
            first = bi * batch_size; nxt = first + len(batch)
            if variant == "upstream":
                cmds = upstream_cmds(batch, eod); cc.send(b"".join(cmds)); cc.skip(len(cmds)); ncmd += len(cmds)
            elif variant == "native":
                cmds = native_cmds(batch, eod, checked, variant); cmds.append(enc([b"HSET", fence, b"epoch", 1, b"next_offset", nxt]))
                cc.send(b"".join(cmds)); cc.skip(len(cmds)); ncmd += len(cmds)
            elif variant == "multi":
                cc.send(enc([b"WATCH", fence]) + enc([b"HMGET", fence, b"epoch", b"next_offset"]) + enc([b"TIME"]))
                cc.skip(2); cc.read(); ncmd += 3
                cmds = native_cmds(batch, eod, checked, variant); cmds.append(enc([b"HSET", fence, b"epoch", 1, b"next_offset", nxt]))
                cc.send(enc([b"MULTI"]) + b"".join(cmds) + enc([b"EXEC"]))
                cc.skip(1 + len(cmds)); r = cc.read(); assert isinstance(r, list), r; ncmd += len(cmds) + 2
    for cc in conns: cc.call("PING")
    el = time.time() - t0; cpu1 = cpu(c)
    stats = c.call("INFO", "commandstats").decode()
    return nev / el, (cpu1 - cpu0) * 1e6 / nev, ncmd / nev, stats

def cpu(c):
    info = c.call("INFO", "cpu").decode(); s = 0.0
    for l in info.splitlines():
        if l.startswith("used_cpu_sys:") or l.startswith("used_cpu_user:"): s += float(l.split(":")[1])
    return s

if __name__ == "__main__" and not os.environ.get("V2"):
    port = int(sys.argv[1]); n = int(sys.argv[2]); variants = sys.argv[3].split(","); bs = int(sys.argv[4]) if len(sys.argv) > 4 else 1000
    P = generate(n)
    for v in variants:
        eps, us, cpe, stats = run(port, P, v, bs)
        print(f"{v:10s} ev/s {eps:9.0f}  redis cpu {us:6.2f} us/ev  cmds/ev {cpe:5.2f}", flush=True)
        if os.environ.get("STATS"):
            for l in stats.splitlines():
                if l.startswith("cmdstat_"): print("   ", l)

def lua_args(batch, eod, checked, fence, first, nxt):
    lists, tpl = merge(batch)
    groups = [[] for _ in range(6)]
    for k, (kind, vals) in lists.items():
        g = 0 if kind == "m" else (4)  # verify off: trusted groups; created lists get PEXPIREAT via len==n
        groups[g + (1 if len(vals) == 1 else 0)].append(k)
    keys = [fence] + [k for g in groups for k in g] + [b for b in tpl]
    argv = [1, first, nxt, MSG_TTL, eod, eod + 86400000, TPL_TTL] + [len(g) for g in groups] + [len(tpl)]
    for gi, g in enumerate(groups):
        for k in g:
            vals = lists[k][1]
            if gi % 2 == 0: argv.append(len(vals))
            argv.extend(vals)
    for b, f in tpl.items():
        argv.append(len(f))
        for s, n in f.items(): argv += [s, n]
    return keys, argv

def native_interleaved(batch, eod, checked):
    lists, tpl = merge(batch)
    out = []
    for k, (kind, vals) in lists.items():
        out.append(enc([b"LPUSH", k] + vals))
        if kind == "m": out.append(enc([b"PEXPIRE", k, MSG_TTL]))
        elif k not in checked: out.append(enc([b"PEXPIREAT", k, eod]))
    for b, f in tpl.items():
        for s, n in f.items(): out.append(enc([b"HINCRBY", b, s, n]))
        out.append(enc([b"PEXPIRE", b, TPL_TTL]))
    for k, (kind, vals) in lists.items():
        if kind == "u": checked.add(k)
    return out

_orig_run = run
def run(port, P, variant, batch_size):
    if variant not in ("lua", "multi2", "native2"): return _orig_run(port, P, variant, batch_size)
    c = Conn(port); c.call("FLUSHALL"); c.call("CONFIG", "RESETSTAT")
    sha = c.call("SCRIPT", "LOAD", open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench-apply-designs.lua")).read()).decode() if variant == "lua" else None
    cpu0 = cpu(c); t0 = time.time(); eod = midnight(); ncmd = 0; nev = 0; checked = set()
    conns = [Conn(port) for _ in P]
    nb = max(len(p) for p in P) // batch_size + 1
    for bi in range(nb):
        for pi, p in enumerate(P):
            batch = p[bi * batch_size:(bi + 1) * batch_size]
            if not batch: continue
            nev += len(batch); cc = conns[pi]
            fence = b"streamjob:bench:fence:t:%d" % pi
            first = bi * batch_size; nxt = first + len(batch)
            if variant == "lua":
                keys, argv = lua_args(batch, eod, checked, fence, first, nxt)
                r = cc.call("EVALSHA", sha, len(keys), *keys, *argv)
                assert isinstance(r, list) and r[0] == 0, r
                ncmd += r[3]
            elif variant == "native2":
                cmds = native_interleaved(batch, eod, checked); cmds.append(enc([b"HSET", fence, b"epoch", 1, b"next_offset", nxt]))
                cc.send(b"".join(cmds)); cc.skip(len(cmds)); ncmd += len(cmds)
            else:
                cc.send(enc([b"WATCH", fence]) + enc([b"HMGET", fence, b"epoch", b"next_offset"]) + enc([b"TIME"]))
                cc.skip(2); cc.read(); ncmd += 3
                cmds = native_interleaved(batch, eod, checked); cmds.append(enc([b"HSET", fence, b"epoch", 1, b"next_offset", nxt]))
                cc.send(enc([b"MULTI"]) + b"".join(cmds) + enc([b"EXEC"]))
                cc.skip(1 + len(cmds)); r = cc.read(); assert isinstance(r, list), r; ncmd += len(cmds) + 2
    for cc in conns: cc.call("PING")
    el = time.time() - t0; cpu1 = cpu(c)
    return nev / el, (cpu1 - cpu0) * 1e6 / nev, ncmd / nev, c.call("INFO", "commandstats").decode()


_run2 = run
def run(port, P, variant, batch_size):
    if variant not in ("multinowatch", "multismall"): return _run2(port, P, variant, batch_size)
    c = Conn(port); c.call("FLUSHALL"); c.call("CONFIG", "RESETSTAT")
    cpu0 = cpu(c); t0 = time.time(); eod = midnight(); ncmd = 0; nev = 0; checked = set()
    conns = [Conn(port) for _ in P]
    nb = max(len(p) for p in P) // batch_size + 1
    for bi in range(nb):
        for pi, p in enumerate(P):
            batch = p[bi * batch_size:(bi + 1) * batch_size]
            if not batch: continue
            nev += len(batch); cc = conns[pi]
            fence = b"streamjob:bench:fence:t:%d" % pi
            nxt = bi * batch_size + len(batch)
            cmds = native_interleaved(batch, eod, checked); cmds.append(enc([b"HSET", fence, b"epoch", 1, b"next_offset", nxt]))
            if variant == "multinowatch":
                cc.send(enc([b"MULTI"]) + b"".join(cmds) + enc([b"EXEC"])); cc.skip(1 + len(cmds)); cc.read()
            else:  # transactions of 100 commands
                for i in range(0, len(cmds), 100):
                    ch = cmds[i:i+100]
                    cc.send(enc([b"MULTI"]) + b"".join(ch) + enc([b"EXEC"])); cc.skip(1 + len(ch)); cc.read()
            ncmd += len(cmds)
    for cc in conns: cc.call("PING")
    el = time.time() - t0; cpu1 = cpu(c)
    return nev / el, (cpu1 - cpu0) * 1e6 / nev, ncmd / nev, c.call("INFO", "commandstats").decode()

if __name__ == "__main__" and os.environ.get("V2"):
    port = int(sys.argv[1]); n = int(sys.argv[2]); variants = sys.argv[3].split(","); bs = int(sys.argv[4])
    P = generate(n)
    for rep in range(int(os.environ.get("REPS", "1"))):
        for v in variants:
            eps, us, cpe, stats = run(port, P, v, bs)
            print(f"{v:10s} ev/s {eps:9.0f}  redis cpu {us:6.2f} us/ev  cmds/ev {cpe:5.2f}", flush=True)
