#!/usr/bin/python3
"""e2e_cluster.py - acknowledged-writes checks for a replicated cluster (run by
tests/e2e/e2e_cluster.sh).

  e2e_cluster.py write STATE STOPFILE SECONDS ID:PORT...
      write through the replicas listed (THREADS threads each) until STOPFILE
      exists or SECONDS pass
  e2e_cluster.py verify STATE PORT...
      check every replica against STATE, and the replicas against each other
  e2e_cluster.py dump PORT PREFIX
      print "key flags cas hex(value)" for every key starting with PREFIX,
      sorted (the key list comes from the tpckv `keys` extension)
  e2e_cluster.py toolarge PORT SIZE SENT
      a set of SIZE bytes sent in two parts around its reply (a refused one)
  e2e_cluster.py retries PORT1 PORT2 ROUNDS
      two connections race an add of the same key through two replicas,
      then each deletes a key that is absent; prints the retries and how
      many of the deletes each replica counted

write: each thread owns its keys (cr:ID:T:I) and sends one request at a time
(set, add, append, delete, incr), recording in STATE what each key may hold.
An acknowledged write makes the key hold exactly its value. A request whose
connection broke or that got SERVER_ERROR (a replica is down, the key is
busy) has an unknown outcome: the key may hold any of its candidates until a
later acknowledged set settles it, so STATE keeps them all. Any other reply
is a wrong answer: reported, exit 1. A thread whose replica is down keeps
reconnecting until the end.

verify: on every replica, every key in STATE must hold one of its
candidates (exactly the acknowledged value when there is one), the `keys`
list must be exactly the keys present, and all replicas must be identical:
same keys, flags, cas uniques and values byte for byte. STATE is then
settled to what the replicas hold. Prints "ok - ..." / "FAIL - ..." lines,
exits 1 on any failure.
"""
import json
import os
import random
import socket
import sys
import threading
import time

from e2e_crash import Broken, Conn, dec, enc  # one client and state codec for both

THREADS = 3  # per replica written through
KEYS_PER_THREAD = 30


def fmt(x):
    return "absent" if x is None else "flags %d cas %d %d bytes" % (x[0], x[1], len(x[2]))


def desc(v):
    return "absent" if v is None else "%d bytes" % len(v)


# ---- write -----------------------------------------------------------------------


def writer(rid, port, tid, state, lock, stop, stats):
    rnd = random.Random(os.getpid() * 1000 + rid * 100 + tid + int(time.time() * 1000))
    keys = [b"cr:%d:%d:%d" % (rid, tid, i) for i in range(KEYS_PER_THREAD)]
    c = None
    while not stop():
        if c is None:
            try:
                c = Conn(port)
            except OSError:
                time.sleep(0.05)  # the replica is down: wait for its restart
                continue
        key = rnd.choice(keys)
        k = key.decode()
        with lock:
            cands = [dec(x) for x in state[k]]
        cur = cands[0] if len(cands) == 1 else None
        op = rnd.random()
        if len(cands) > 1 or op < 0.4:
            val = os.urandom(rnd.randint(0, 2000))
            req = b"set %s %d 0 %d\r\n%s\r\n" % (key, rnd.randint(0, 9), len(val), val)
            new, ok_reply = val, b"STORED"
        elif op < 0.55:
            req = b"delete %s\r\n" % key
            new, ok_reply = None, (b"DELETED" if cur is not None else b"NOT_FOUND")
        elif op < 0.7:
            suffix = os.urandom(rnd.randint(1, 200))
            req = b"append %s 0 0 %d\r\n%s\r\n" % (key, len(suffix), suffix)
            new = None if cur is None else cur + suffix
            ok_reply = b"STORED" if cur is not None else b"NOT_STORED"
        elif op < 0.85 and cur is not None and cur.isdigit() and len(cur) < 15:
            d = rnd.randint(1, 1000)
            req = b"incr %s %d\r\n" % (key, d)
            new = b"%d" % (int(cur) + d)
            ok_reply = new
        else:
            val = b"%d" % rnd.randint(0, 10**6)
            req = b"add %s 0 0 %d\r\n%s\r\n" % (key, len(val), val)
            new = val if cur is None else cur
            ok_reply = b"STORED" if cur is None else b"NOT_STORED"
        # Until the reply comes, the key may hold any earlier candidate or new.
        with lock:
            state[k] = [enc(x) for x in cands] + ([enc(new)] if new not in cands else [])
        try:
            c.send(req)
            reply = c.line()
        except Broken:
            with lock:
                stats["broken"] += 1
            c.close()
            c = None
            continue
        if reply == ok_reply:
            with lock:
                state[k] = [enc(new)]
                stats["acked"] += 1
            continue
        if reply.startswith(b"SERVER_ERROR"):
            # Expected while a replica is down or a key is contended: the
            # write did not happen, or (presumed unknown) it did.
            with lock:
                stats["server_error"] += 1
                why = reply.decode(errors="replace")
                why = why[:why.find(": ") if ": " in why else 60]
                stats["why"][why] = stats["why"].get(why, 0) + 1
            time.sleep(0.02)
            continue
        with lock:
            stats["errors"].append("%s via replica %d: %r -> %r (expected %r)" % (
                k, rid, req.split(b"\r\n")[0][:60], reply[:100], ok_reply[:40]))
        time.sleep(0.02)
    if c is not None:
        c.close()


def cmd_write(path, stopfile, seconds, targets):
    state = json.load(open(path)) if os.path.exists(path) else {}
    for rid, _ in targets:
        for t in range(THREADS):
            for i in range(KEYS_PER_THREAD):
                state.setdefault("cr:%d:%d:%d" % (rid, t, i), [None])
    lock = threading.Lock()
    stats = {"acked": 0, "broken": 0, "server_error": 0, "why": {}, "errors": []}
    deadline = time.time() + seconds

    def stop():
        return time.time() > deadline or os.path.exists(stopfile)

    threads = [threading.Thread(target=writer, args=(rid, port, t, state, lock, stop, stats))
               for rid, port in targets for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with open(path + ".tmp", "w") as f:
        json.dump(state, f)
    os.replace(path + ".tmp", path)
    print("acknowledged %d, SERVER_ERROR %d (%s), connection lost %d, wrong answers %d" % (
        stats["acked"], stats["server_error"],
        ", ".join("%s %d" % kv for kv in sorted(stats["why"].items())) or "none",
        stats["broken"], len(stats["errors"])))
    for e in stats["errors"][:5]:
        print("FAIL - wrong answer: " + e)
    sys.exit(1 if stats["errors"] or stats["acked"] == 0 else 0)


# ---- verify / dump ----------------------------------------------------------------


def gets_retry(c, key):
    """gets, waiting out a key still locked by an undecided transaction."""
    for attempt in range(20):
        try:
            return c.gets(key)
        except RuntimeError as e:
            if "SERVER_ERROR" not in str(e) or attempt == 19:
                raise
            time.sleep(0.25)


def snapshot_of(port, prefix, extra_keys):
    """(listed keys, {key: (flags, cas, value)} for listed + extra keys)."""
    c = Conn(port)
    try:
        listed = [k.decode() for k in c.keys(prefix.encode())]
        store = {}
        for k in sorted(set(listed) | set(extra_keys)):
            got = gets_retry(c, k.encode())
            if got is not None:
                store[k] = got
        return listed, store
    finally:
        c.close()


def cmd_verify(path, ports):
    state = json.load(open(path))
    fails = []
    snaps = []
    for p in ports:
        try:
            snaps.append(snapshot_of(p, "cr:", state.keys()))
        except (OSError, Broken, RuntimeError) as e:
            fails.append("replica on port %d: cannot read it: %s" % (p, e))
            snaps.append(None)
    resolved = 0
    bad_total = 0
    for p, snap in zip(ports, snaps):
        if snap is None:
            continue
        listed, store = snap
        bad = []
        for k in sorted(state):
            cands = [dec(x) for x in state[k]]
            got = store.get(k)
            val = None if got is None else got[2]
            if val not in cands:
                bad.append("%s: %s, expected %s" % (k, desc(val), " or ".join(desc(x) for x in cands)))
        extra = sorted(set(store) - set(state))
        bad += ["%s: present but never written" % k for k in extra]
        missing_in_list = set(store) - set(listed)
        unlisted_extra = set(listed) - set(store)
        for b in bad[:5]:
            fails.append("port %d: %s" % (p, b))
        if bad:
            fails.append("port %d: %d keys do not hold what the acknowledged writes imply" % (p, len(bad)))
        if missing_in_list or unlisted_extra:
            fails.append("port %d: `keys cr:` lists %d keys: %d present keys missing, %d listed but absent" % (
                p, len(listed), len(missing_in_list), len(unlisted_extra)))
        bad_total += len(bad)
    good = [s for s in snaps if s is not None]
    identical = len(good) == len(ports) and all(s[1] == good[0][1] for s in good) and \
        all(sorted(s[0]) == sorted(good[0][0]) for s in good)
    if not identical and len(good) == len(ports):
        ref = good[0][1]
        for i, s in enumerate(good[1:], 1):
            diff = sorted(k for k in set(ref) | set(s[1]) if ref.get(k) != s[1].get(k))
            for k in diff[:5]:
                fails.append("replica on port %d vs port %d differ on %s: %s vs %s" % (
                    ports[0], ports[i], k, fmt(ref.get(k)), fmt(s[1].get(k))))
            if diff:
                fails.append("replicas on ports %d and %d differ on %d keys" % (ports[0], ports[i], len(diff)))
    for k in state:
        if len(state[k]) > 1:
            resolved += 1
        if good:
            got = good[0][1].get(k)
            state[k] = [enc(None if got is None else got[2])]
    for f in fails[:20]:
        print("FAIL - " + f)
    n = len(state)
    present = len(good[0][1]) if good else 0
    if len(good) == len(ports) and bad_total == 0:
        print("ok - every acknowledged write is on all %d replicas (%d keys, %d present, "
              "%d unknown outcomes resolved either way)" % (len(ports), n, present, resolved))
    else:
        print("FAIL - acknowledged writes missing or wrong on some replica")
    if identical:
        print("ok - the %d replicas are identical: same key lists (%d keys), flags, cas uniques "
              "and values byte for byte" % (len(ports), present))
    else:
        print("FAIL - the replicas differ")
    with open(path + ".tmp", "w") as f:
        json.dump(state, f)
    os.replace(path + ".tmp", path)
    sys.exit(0 if not fails and identical else 1)


def cmd_dump(port, prefix):
    listed, store = snapshot_of(port, prefix, [])
    if sorted(listed) != sorted(store):
        print("# keys lists %d keys, %d present" % (len(listed), len(store)))
    for k in sorted(store):
        f, cas, v = store[k]
        print("%s %d %d %s" % (k, f, cas, v.hex()))


def cmd_toolarge(port, size, sent):
    """Sends "set big 0 0 SIZE" and SENT bytes of its block, prints the reply
    line, then sends the rest of the block and a version command and prints
    "then: " and that reply: the refused block must be swallowed whole."""
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    try:
        s.sendall(b"set big 0 0 %d\r\n" % size + b"x" * sent)
        f = s.makefile("rb")
        print(f.readline().decode(errors="replace").rstrip())
        s.sendall(b"x" * (size - sent) + b"\r\nversion\r\n")
        print("then: " + f.readline().decode(errors="replace").rstrip())
    finally:
        s.close()


def stat_of(port, name):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(b"stats\r\n")
        buf = b""
        while not buf.endswith(b"END\r\n"):
            d = s.recv(65536)
            if not d:
                raise Broken("stats: connection closed")
            buf += d
    finally:
        s.close()
    for line in buf.split(b"\r\n"):
        if line.startswith(b"STAT %s " % name.encode()):
            return int(line.split()[2])
    raise RuntimeError("no stat " + name)


def cmd_retries(p1, p2, rounds):
    """A write that lost a conflict and was retried must not leave its retry
    count to the next request of its connection (which would then not be
    counted in stats, and have fewer retries). Prints
    "retries R1 R2 deletes D1 D2 counted C1 C2"."""
    ports = (p1, p2)
    socks = [socket.create_connection(("127.0.0.1", p), timeout=20) for p in ports]
    files = [s.makefile("rb") for s in socks]
    misses0 = [stat_of(p, "delete_misses") for p in ports]
    retries0 = [stat_of(p, "txn_retries") for p in ports]
    tag = "%d" % random.randrange(1 << 30)
    sent = [0, 0]
    errors = []
    for i in range(rounds):
        bar = threading.Barrier(2)

        def one(j):
            try:
                bar.wait()
                socks[j].sendall(b"add retry:%s:%d 0 0 1\r\nx\r\n" % (tag.encode(), i))
                files[j].readline()
                socks[j].sendall(b"delete retry:%s:absent:%d:%d\r\n" % (tag.encode(), i, j))
                line = files[j].readline()
                if line != b"NOT_FOUND\r\n":
                    errors.append(line)
                sent[j] += 1
            except OSError as e:
                errors.append(str(e))

        ts = [threading.Thread(target=one, args=(j,)) for j in (0, 1)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    for s in socks:
        s.close()
    if errors:
        raise RuntimeError("unexpected replies: %r" % errors[:3])
    counted = [stat_of(p, "delete_misses") - m for p, m in zip(ports, misses0)]
    retries = [stat_of(p, "txn_retries") - r for p, r in zip(ports, retries0)]
    print("retries %d %d deletes %d %d counted %d %d" % (retries[0], retries[1], sent[0],
                                                        sent[1], counted[0], counted[1]))


if __name__ == "__main__":
    a = sys.argv
    try:
        if len(a) >= 6 and a[1] == "write":
            cmd_write(a[2], a[3], float(a[4]),
                      [(int(x.split(":")[0]), int(x.split(":")[1])) for x in a[5:]])
        elif len(a) >= 4 and a[1] == "verify":
            cmd_verify(a[2], [int(x) for x in a[3:]])
        elif len(a) == 5 and a[1] == "toolarge":
            cmd_toolarge(int(a[2]), int(a[3]), int(a[4]))
        elif len(a) == 5 and a[1] == "retries":
            cmd_retries(int(a[2]), int(a[3]), int(a[4]))
        elif len(a) == 4 and a[1] == "dump":
            cmd_dump(int(a[2]), a[3])
        else:
            sys.exit(__doc__)
    except (OSError, Broken, RuntimeError) as e:
        print("FAIL - %s: %s" % (a[1], e))
        sys.exit(1)
