#!/usr/bin/env python3
# Does the `slotwatch` design of bench-cluster-designs.py do what it needs, on a real redis-server?
# Per slot, in one pipeline: WATCH fence; EVALSHA check (compares the fence field, and on a mismatch
# rewrites the fence so that the coming EXEC aborts); MULTI; data; HSET fence; EXEC.
#
#   python3 scripts/check-slotwatch.py <port of a cluster primary, or of a plain server>
#
# Cases, each on a fresh fence key and data key in one slot the node owns:
#   a  fence as expected                      -> data applied, fence moved
#   b  another client moved the fence earlier -> check touches, EXEC nil, nothing applied
#   c  as b, but the check does NOT touch     -> EXEC runs (the control: only the touch aborts)
#   d  as b, fence field absent               -> the touch of an absent field (HSET+HDEL) aborts
#   e  same connection HSETs the watched key itself between WATCH and MULTI -> EXEC nil?
#   f  one pipeline of two slots, the first mismatching -> first EXEC nil, second applied
#   g  another client moves the fence after the check, before EXEC -> EXEC nil
# Prints one line per case and exits 1 if any case differs from what the design needs.
import importlib.util, os, sys

here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("cluster_designs", os.path.join(here, "bench-cluster-designs.py"))
cd = importlib.util.module_from_spec(spec); spec.loader.exec_module(cd)
Conn, enc = cd.Conn, cd.enc

# The touch-free variant, for case c only.
NOTOUCH = r"""local stored = redis.call('HGET', KEYS[1], ARGV[1])
if (stored or '') == ARGV[2] then return 0 end
return {1, stored or ''}
"""

def slots_owned(port):
    """Slots this server serves (all of them on a plain server)."""
    c = Conn(port)
    info = c.call("INFO", "cluster").decode()
    if "cluster_enabled:1" not in info: return list(range(16384))
    owner, _ = cd.node_map(port)
    return [s for s in range(16384) if owner[s] == port]

def keys(slot):
    return cd.fence_key(slot), b"streamjob:bench:data:{%s}" % cd.TAGS[slot]

def unit(sha, slot, expected, new, value=b"v"):
    """The commands of one slot's transaction, and how many replies precede EXEC's."""
    fence, data = keys(slot)
    cmds = [enc([b"WATCH", fence]), enc([b"EVALSHA", sha, 1, fence, b"0", expected]),
            enc([b"MULTI"]), enc([b"LPUSH", data, value]), enc([b"HSET", fence, b"0", new]),
            enc([b"EXEC"])]
    return b"".join(cmds)

def run_units(c, parts):
    """Sends the units in one pipeline; returns per unit (check reply, EXEC reply)."""
    c.send(b"".join(parts)); out = []
    for _ in parts:
        c.read(); chk = c.read(); c.skip(3); out.append((chk, c.read()))
    return out

def state(c, slot):
    fence, data = keys(slot)
    return c.call("HGET", fence, "0"), c.call("LLEN", data)

def case(name, ok, detail):
    print(f"{name}: {'as needed' if ok else 'NOT as needed'}  ({detail})", flush=True)
    return ok

def main():
    port = int(sys.argv[1]); slots = slots_owned(port)[:20]
    w, other = Conn(port), Conn(port)
    sha = w.call("SCRIPT", "LOAD", cd.CHECK).decode()
    sha0 = w.call("SCRIPT", "LOAD", NOTOUCH).decode()
    for s in slots:
        for k in keys(s): w.call("DEL", k)
    good = True
    s = slots[0]; w.call("HSET", keys(s)[0], "0", "A")
    [(chk, ex)] = run_units(w, [unit(sha, s, b"A", b"B")])
    good &= case("a match", isinstance(ex, list) and state(w, s) == (b"B", 1), f"check {chk}, EXEC {ex}, fence/len {state(w, s)}")
    s = slots[1]; w.call("HSET", keys(s)[0], "0", "A"); other.call("HSET", keys(s)[0], "0", "Z")
    [(chk, ex)] = run_units(w, [unit(sha, s, b"A", b"B")])
    good &= case("b mismatch, touched by the same connection", ex is None and state(w, s) == (b"Z", 0), f"check {chk}, EXEC {ex}, fence/len {state(w, s)}")
    s = slots[2]; w.call("HSET", keys(s)[0], "0", "A"); other.call("HSET", keys(s)[0], "0", "Z")
    [(chk, ex)] = run_units(w, [unit(sha0, s, b"A", b"B")])
    good &= case("c control, mismatch not touched", isinstance(ex, list), f"check {chk}, EXEC {ex}, fence/len {state(w, s)} (applied: the touch is what aborts)")
    s = slots[3]
    [(chk, ex)] = run_units(w, [unit(sha, s, b"A", b"B")])
    good &= case("d mismatch, field absent", ex is None and state(w, s) == (None, 0), f"check {chk}, EXEC {ex}, fence/len {state(w, s)}")
    s = slots[4]; fence, data = keys(s); w.call("HSET", fence, "0", "A")
    w.send(enc([b"WATCH", fence]) + enc([b"HSET", fence, b"0", b"A"]) + enc([b"MULTI"]) + enc([b"LPUSH", data, b"v"]) + enc([b"EXEC"]))
    w.skip(4); ex = w.read()
    good &= case("e own HSET (same value) between WATCH and MULTI", ex is None and state(w, s) == (b"A", 0), f"EXEC {ex}, fence/len {state(w, s)}")
    s1, s2 = slots[5], slots[6]
    w.call("HSET", keys(s1)[0], "0", "A"); other.call("HSET", keys(s1)[0], "0", "Z"); w.call("HSET", keys(s2)[0], "0", "A")
    r = run_units(w, [unit(sha, s1, b"A", b"B"), unit(sha, s2, b"A", b"B")])
    good &= case("f two slots pipelined, first mismatching", r[0][1] is None and isinstance(r[1][1], list) and state(w, s1) == (b"Z", 0) and state(w, s2) == (b"B", 1), f"EXECs {[x[1] for x in r]}, fences/lens {state(w, s1)} {state(w, s2)}")
    s = slots[7]; fence, data = keys(s); w.call("HSET", fence, "0", "A")
    w.send(enc([b"WATCH", fence]) + enc([b"EVALSHA", sha, 1, fence, b"0", b"A"])); w.read(); chk = w.read()
    other.call("HSET", fence, "0", "Z")
    w.send(enc([b"MULTI"]) + enc([b"LPUSH", data, b"v"]) + enc([b"HSET", fence, b"0", b"B"]) + enc([b"EXEC"])); w.skip(3); ex = w.read()
    good &= case("g another client moves the fence after the check", ex is None and state(w, s) == (b"Z", 0), f"check {chk}, EXEC {ex}, fence/len {state(w, s)}")
    for s in slots:
        for k in keys(s): w.call("DEL", k)
    sys.exit(0 if good else 1)

if __name__ == "__main__":
    main()
