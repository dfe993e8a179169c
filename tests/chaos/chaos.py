#!/usr/bin/python3
"""chaos.py - fault injection against a 3-replica tpckv cluster, Jepsen style,
with a linearizability checker (tests/chaos/chaos_check.py). Run by `make chaos`
(every scenario, CHAOS_SECONDS each, default 20) and `make chaos-short`
(part of `make test`).

  chaos.py [--seconds N] [--scenarios LIST] [--seed S] [--keep] [--serve BIN]
           [--clock-shim SO]
  chaos.py --check HISTORY.jsonl      re-check a kept history

SCENARIOS, each on a fresh cluster; the nemesis injects one fault at a time
(hold it, heal it, let the cluster run clean a moment, next):
  kill       kill -9 of a random replica, restarted after a moment (every
             replica coordinates the writes its clients send it, so the
             victim is a coordinator and a participant)
  pause      SIGSTOP of a random replica for 2-4x --prepare-timeout-ms, SIGCONT
  partition  nftables drops between two replicas, or between one and the rest
  netslow    the peer links through a userspace proxy that delays every chunk
             (and so reorders messages across links), and/or nftables drops a
             share of the peer packets (tc netem is not in this kernel)
  disk       a replica's data dir is a small tmpfs, filled up; healed by
             freeing it and restarting the replica (its log error is sticky)
  clock      clock skew: each replica's wall clock (CLOCK_REALTIME; not the
             monotonic clock its timers use) is shifted by an offset the test
             sets (tests/chaos/clockshim.c, preloaded into every replica in every
             scenario, reads it from a file in the scenario's temp dir, at
             most 50 ms late). A fault is one of: one replica off; all three
             off by different amounts; clocks stepping back and forth every
             0.1-0.4 s under load; or (twice as often) a replica killed and
             restarted 1-3 s later with its clock off, so that it replays its
             log after short expiries passed. Each offset is, half the time,
             within serve's --max-clock-skew-ms (default 500: +-100..450 ms,
             every pair within it), where writes go on with the clocks apart,
             else beyond it (+-600..1500 ms), where writes are refused until
             the clocks agree. Held 1-3 s, then every offset back to 0. Here
             (not in mixed), two times in five a flush_all 1 is also sent
             while the clocks are off (not in the last third of a round),
             and they are held until it has come due at every replica's
             clock. Only the expiry workload runs here (see below). A run of
             16 s or more is cut into rounds of 8 s or more, each ended by
             the replica comparison (a later fault can undo a divergence an
             earlier one left).
  mixed      each fault drawn from the six above

ISOLATION. The cluster runs inside a network namespace this script creates
(and deletes): it re-executes itself there with `ip netns exec`, which also
gives it a mount namespace of its own for the tmpfs mounts. Replicas listen
on 127.0.0.11-13 there. Their peer links all come from 127.0.0.1, so to tell
who sent a packet each replica runs under a uid of its own (61001-61003):
an nftables rule marks each new connection (conntrack mark) with the id of
the replica that opened it, from the socket's uid, and the fault rules match
the mark and the connection's original destination. Without root or
namespaces only kill, pause and clock run (on 127.0.0.11-13 of the host), the
others print "SKIP: reason".

WORKLOAD. 6 clients (2 per replica), one connection each, one request at a
time over raw sockets, on 4 keys: set of a unique value, get, and gets
followed by cas with the token it returned; and, one operation in ten, an
add of a key of its own that no one writes again (u<client>-<n>). Every
register operation is recorded with
its invocation and completion times (time.monotonic) and result: ok, fail
(a cas answered EXISTS or NOT_FOUND) or unknown (timeout, connection error,
any SERVER_ERROR). After the nemesis stops: every fault is healed, writes
must succeed through every replica again (retried for a while), no
transaction may stay in doubt, every key is read from every replica (these
final reads join the history), and the three stores must be identical
(keys, flags, cas, values). Then the history is checked, and the adds on
their own: every acknowledged add is on every replica with its value (no
acknowledged write lost), every add attempted is on all three replicas or on
none, and no key is there that was not attempted.

EXPIRY WORKLOAD (every scenario). 3 more clients (1 per replica; 6 in
"clock") on keys of their own, t0..t11: set and add with exptime 1-3 s or 0,
touch and gat/gats (often to 0), get/gets of 1-3 keys, delete, incr,
append, cas with a token a gets saw, and adds of keys written once
(e<client>-<n>, mostly never to expire). In "clock" a flusher also sends
flush_all with a delay of 1-3 s (one in seven immediate) every 3-8 s; no
flush_all (neither the flusher's nor the nemesis's) in the last third of a
round. Nothing there is checked against a model: only replies the protocol
allows are accepted. It stops when the faults are healed, and after the
heal (every clock offset back to 0, writes going through, nothing in
doubt) `stats digest` of the three replicas must be equal, with no key
locked, in two readings in a row (the expiry deletes of the last items
take a moment); then a set of every tN through every replica must be
STORED (no key left unwritable: a replica that holds a key in another
state than the rest votes "conflict" on every write of it: "SERVER_ERROR
busy ... gave up after 8 retries"), and the digests (and gets of t0..t11)
must agree again. On a failure each replica's digest, `keys t` and the t
keys' values are printed. Against a serve without `stats digest` (an
older release, --serve) the live stores (keys + gets of every key) are
compared instead.

Why flush_all runs in "clock" only: an immediate flush_all removes the
registers k0..k3 and the write-once u keys, and a delayed one removes them
when it comes due, at a moment no client observes; the register checker
and check_adds would have to treat every flush as a write of "nothing" to
every key at an unknown time, which they do not. So "clock" runs the
expiry workload alone, with flushes, and is judged by the replica
comparison; elsewhere the expiry workload runs beside the registers
without flush_all, and the store comparison of the registers leaves the t
and e keys out (they may expire between two replicas' dumps). In "clock"
no flush is sent in the last third of a round: a flush that comes due
removes what was written before it on every replica alike, and so would
hide a divergence an earlier fault left.

A failing scenario keeps its history (build/chaos/SCENARIO-SEED.jsonl) and
its replicas' logs and prints how to re-check it. Output: one "ok   - " or
"FAIL - " line per check, "SKIP: " lines, and last "N passed, N failed".
"""
import argparse
import collections
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import chaos_check  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCENARIOS = ["kill", "pause", "partition", "netslow", "disk", "clock", "mixed"]
NEEDS_NETNS = {"partition", "netslow", "disk", "mixed"}
# The faults each scenario's nemesis draws from.
SCENARIO_FAULTS = {"kill": ["kill"], "pause": ["pause"], "partition": ["partition"],
                   "netslow": ["netslow"], "disk": ["disk"],
                   "clock": ["clock"],
                   "mixed": ["kill", "pause", "partition", "netslow", "disk", "clock"]}
# The register workload (and its linearizability check) runs in every
# scenario but "clock", whose flush_all would remove the registers.
REGISTER_SCENARIOS = set(SCENARIOS) - {"clock"}
N = 3
HOSTS = {i: "127.0.0.%d" % (10 + i) for i in range(1, N + 1)}
PROXY_HOST = "127.0.0.2"
CLIENT_HOST = "127.0.0.1"
UID_BASE = 61000
PREPARE_TIMEOUT_MS = 500
LOCK_WAIT_MS = 1000
OP_TIMEOUT_S = 2.5  # > lock wait + prepare timeout: most answers arrive
KEYS = ["k0", "k1", "k2", "k3"]
CLIENTS_PER_REPLICA = 2
TKEYS = ["t%d" % i for i in range(12)]  # the expiry workload's keys
TKEYS_TEXT = "t0..t%d" % (len(TKEYS) - 1)
EXPIRY_CLIENTS_PER_REPLICA = 1  # 2 in "clock", where the register clients do not run
# Clock offsets the nemesis sets. serve refuses writes while two replicas'
# clocks are provably more than --max-clock-skew-ms apart (default 500; not
# passed, so an older serve without the flag runs too): a skew is drawn
# within it (writes go on with the clocks apart: what must not make the
# replicas diverge) or beyond it (the refusals), half and half.
SKEW_WITHIN_MS = (100, 450)  # one replica off by this much, either way
SKEW_BEYOND_MS = (600, 1500)
CLOCK_ENV = "TPCKV_CLOCK_OFFSET_FILE"  # read by tests/chaos/clockshim.c
TMPFS_MB = 16
NFT_TABLE = "tpckv_chaos"
SO_MARK = getattr(socket, "SO_MARK", 36)
SO_ORIGINAL_DST = 80


def log(msg):
    print(msg, flush=True)


def now():
    return time.monotonic()


# ---- a memcached text-protocol client --------------------------------------------


class Unknown(Exception):
    """No definite answer: timeout, connection error. The request may have
    taken effect."""


class Client:
    def __init__(self, host, port, timeout=OP_TIMEOUT_S):
        self.addr = (host, port)
        self.timeout = timeout
        self.s = None
        self.buf = b""

    def close(self):
        if self.s is not None:
            try:
                self.s.close()
            except OSError:
                pass
        self.s = None
        self.buf = b""

    def _connect(self, deadline):
        if self.s is None:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(max(0.05, deadline - now()))
            try:
                s.bind((CLIENT_HOST, 0))
                s.connect(self.addr)
            except OSError as e:
                s.close()
                raise Unknown("connect: %s" % (e.strerror or type(e).__name__))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.s = s
            self.buf = b""

    def _fill(self, deadline):
        left = deadline - now()
        if left <= 0:
            raise Unknown("timeout")
        self.s.settimeout(left)
        try:
            d = self.s.recv(65536)
        except socket.timeout:
            raise Unknown("timeout")
        except OSError as e:
            raise Unknown("recv: %s" % (e.strerror or type(e).__name__))
        if not d:
            raise Unknown("connection closed")
        self.buf += d

    def _line(self, deadline):
        while b"\r\n" not in self.buf:
            self._fill(deadline)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n, deadline):
        while len(self.buf) < n:
            self._fill(deadline)
        d, self.buf = self.buf[:n], self.buf[n:]
        return d

    def request(self, data, reader):
        """Sends data, returns reader(deadline). Any failure closes the
        connection and raises Unknown."""
        deadline = now() + self.timeout
        try:
            self._connect(deadline)
            self.s.settimeout(max(0.05, deadline - now()))
            try:
                self.s.sendall(data)
            except socket.timeout:
                raise Unknown("send timeout")
            except OSError as e:
                raise Unknown("send: %s" % (e.strerror or type(e).__name__))
            return reader(deadline)
        except Unknown:
            self.close()
            raise

    # Each returns a reply line (bytes) for writes, or parsed values for reads.
    def store(self, cmd, key, value, cas=None):
        v = value.encode()
        line = b"%s %s 0 0 %d" % (cmd, key.encode(), len(v))
        if cas is not None:
            line += b" %d" % cas
        return self.request(line + b"\r\n" + v + b"\r\n", self._line)

    def command(self, line, data=None):
        """Any command answered by one line (data: a storage command's block)."""
        return self.request(line + b"\r\n" + (b"" if data is None else data + b"\r\n"),
                            self._line)

    def retrieve(self, cmd, keys, exptime=None):
        """get/gets/gat/gats of several keys: _values' answer."""
        line = cmd + (b"" if exptime is None else b" %d" % exptime)
        return self.request(line + b"".join(b" " + k.encode() for k in keys) + b"\r\n",
                            self._values)

    def _values(self, deadline):
        """[(key, flags, cas or None, value)] until END, or the error line."""
        out = []
        while True:
            line = self._line(deadline)
            if line == b"END":
                return out
            parts = line.split()
            if not parts or parts[0] != b"VALUE":
                if out:  # an error after values: the stream is out of step
                    raise Unknown("error line after values: %r" % line[:80])
                return line  # an error line
            n = int(parts[3])
            data = self._exact(n + 2, deadline)[:n]
            cas = int(parts[4]) if len(parts) > 4 else None
            out.append((parts[1].decode(), int(parts[2]), cas, data.decode(errors="replace")))

    def get(self, key, gets=False):
        return self.request(b"%s %s\r\n" % (b"gets" if gets else b"get", key.encode()),
                            self._values)

    def stats(self):
        def rd(deadline):
            st = {}
            while True:
                line = self._line(deadline)
                if line == b"END":
                    return st
                p = line.decode(errors="replace").split(" ", 2)
                if len(p) == 3 and p[0] == "STAT":
                    st[p[1]] = p[2]
                else:
                    raise Unknown("stats: %r" % line[:80])
        return self.request(b"stats\r\n", rd)

    def digest(self):
        """`stats digest` as a dict, or None if this serve does not know it."""
        def rd(deadline):
            st = {}
            while True:
                line = self._line(deadline)
                if line == b"END":
                    return st
                if not st and line.startswith((b"CLIENT_ERROR", b"ERROR")):
                    return None
                p = line.decode(errors="replace").split(" ", 2)
                if len(p) == 3 and p[0] == "STAT":
                    st[p[1]] = p[2]
                else:
                    raise Unknown("stats digest: %r" % line[:80])
        return self.request(b"stats digest\r\n", rd)

    def keys(self, prefix=None):
        def rd(deadline):
            out = []
            while True:
                line = self._line(deadline)
                if line == b"END":
                    return out
                if not line.startswith(b"KEY "):
                    raise Unknown("keys: %r" % line[:80])
                out.append(line[4:].decode())
        return self.request(b"keys%s\r\n" % (b" " + prefix.encode() if prefix else b""), rd)


def one_request(host, port, fn, timeout=2.0):
    c = Client(host, port, timeout)
    try:
        return fn(c)
    finally:
        c.close()


# ---- history ------------------------------------------------------------------------


class History:
    def __init__(self):
        self.ops = []
        self.adds = []  # (key, value, "ok" | "fail" | "unknown", why)
        self.events = []
        self.ids = itertools.count()
        self.t0 = now()

    def t(self):
        return round(now() - self.t0, 6)

    def add(self, op):
        self.ops.append(op)  # list.append is atomic

    def event(self, text):
        self.events.append({"nemesis": text, "at": self.t()})

    def write(self, path, meta):
        with open(path, "w") as f:
            f.write(json.dumps({"meta": meta}) + "\n")
            for e in self.events:
                f.write(json.dumps(e) + "\n")
            for op in sorted(self.ops, key=lambda o: o["s"]):
                f.write(json.dumps(op) + "\n")


def run_op(hist, client, pid, key, f, value=None, token=None, expect=None, final=False):
    """Runs one recorded operation; returns the op dict."""
    op = {"i": next(hist.ids), "p": pid, "k": key, "f": f}
    if value is not None:
        op["v"] = value
    if token is not None:
        op["t"] = token
        op["e"] = expect
    if final:
        op["final"] = True
    op["s"] = hist.t()
    try:
        if f == "set":
            reply = client.store(b"set", key, value)
        elif f == "cas":
            reply = client.store(b"cas", key, value, token)
        else:
            reply = client.get(key, gets=(f == "gets"))
    except Unknown as e:
        op.update(c=None, r="unknown", o=str(e))
        hist.add(op)
        return op
    op["c"] = hist.t()
    if isinstance(reply, bytes):  # a reply line
        text = reply.decode(errors="replace")
        if f in ("get", "gets") or text.startswith(("SERVER_ERROR", "ERROR", "CLIENT_ERROR")) \
                or text not in ("STORED", "EXISTS", "NOT_FOUND"):
            # Every SERVER_ERROR is indeterminate; the others are not
            # expected at all and are reported (the checker sees them as
            # unknown too).
            op.update(c=None, r="unknown", o=text[:200])
            if not text.startswith("SERVER_ERROR"):
                op["unexpected"] = True
        elif f == "set":
            op.update(r="ok" if text == "STORED" else "unknown", o=text)
            if text != "STORED":
                op["unexpected"] = True
                op["c"] = None
        else:  # cas
            op.update(r="ok" if text == "STORED" else "fail", o=text)
    else:
        vals = [v for v in reply if v[0] == key]
        if len(vals) > 1 or len(reply) != len(vals):
            op.update(c=None, r="unknown", o="bad reply %r" % (reply,), unexpected=True)
        elif f == "get":
            op.update(r="ok", o=vals[0][3] if vals else None)
        else:
            op.update(r="ok", o=[vals[0][3], vals[0][2]] if vals else None)
    hist.add(op)
    return op


def run_add(hist, client, key, value):
    """An add of a key written once: its own record, checked by check_adds."""
    try:
        reply = client.store(b"add", key, value)
    except Unknown as e:
        hist.adds.append((key, value, "unknown", str(e)))
        return "unknown"
    text = reply.decode(errors="replace")
    if text == "STORED":
        r = "ok"
    elif text.startswith("SERVER_ERROR"):
        r = "unknown"
    else:
        r = "fail"  # NOT_STORED for a key no one else writes: check_adds reports it
    hist.adds.append((key, value, r, text[:200]))
    return r


def client_loop(hist, pid, host, port, rnd, stop, counters):
    c = Client(host, port)
    seq = 0
    while not stop.is_set():
        key = rnd.choice(KEYS)
        x = rnd.random()
        seq += 1
        if x < 0.1:
            r = run_add(hist, c, "u%d-%d" % (pid, seq), "a%d-%d" % (pid, seq))
            counters[pid] += 1
            if r == "unknown":
                time.sleep(rnd.uniform(0.01, 0.05))
            continue
        if x < 0.35:
            op = run_op(hist, c, pid, key, "set", value="c%d-%d" % (pid, seq))
        elif x < 0.65:
            op = run_op(hist, c, pid, key, "get")
        else:
            op = run_op(hist, c, pid, key, "gets")
            if op["r"] == "ok" and op["o"] is not None:
                counters[pid] += 1
                op = run_op(hist, c, pid, key, "cas", value="c%d-%d" % (pid, seq),
                            token=op["o"][1], expect=op["o"][0])
        counters[pid] += 1
        if op["r"] == "unknown":
            # Fast failures (a replica down) must not spin: back off a little.
            time.sleep(rnd.uniform(0.01, 0.05))
    c.close()


# ---- the expiry workload ------------------------------------------------------------


class ExpiryLoad:
    """What the expiry workload's clients did. Each client counts in
    Counters of its own (registered here once), merged when they have
    stopped."""

    def __init__(self):
        self.clients = []  # (counts, unknown reasons, unexpected replies) per client

    def new_client(self):
        mine = (collections.Counter(), collections.Counter(), [])
        self.clients.append(mine)  # list.append is atomic
        return mine

    def totals(self):
        counts, why, unexpected = collections.Counter(), collections.Counter(), []
        for c, w, u in self.clients:
            counts.update(c)
            why.update(w)
            unexpected.extend(u)
        return counts, why, unexpected


# Replies a command of the expiry workload may get (besides SERVER_ERROR,
# which is indeterminate, and values for the retrievals).
EXPIRY_KINDS = ["set", "add", "add new", "touch", "gat", "gats", "get", "gets", "delete", "incr",
                "append", "cas", "flush_all N", "flush_all"]
EXPIRY_REPLIES = {
    "set": {b"STORED"}, "add": {b"STORED", b"NOT_STORED"}, "add new": {b"STORED"},
    "append": {b"STORED", b"NOT_STORED"}, "cas": {b"STORED", b"EXISTS", b"NOT_FOUND"},
    "touch": {b"TOUCHED", b"NOT_FOUND"}, "delete": {b"DELETED", b"NOT_FOUND"},
    "incr": {b"NOT_FOUND", b"CLIENT_ERROR cannot increment or decrement non-numeric value"},
    "flush_all": {b"OK"}, "flush_all N": {b"OK"},
}


def expiry_loop(load, pid, host, port, rnd, stop):
    """One client of the expiry workload on TKEYS: set/add with short
    expiries (or none), touch, gat/gats (often to no expiry), get/gets,
    delete, incr, append, cas. Nothing here is checked against a model: the
    check is that the replicas end in the same stored state and every key
    still takes a write (check_expiry). Replies are counted; any the protocol
    does not allow is reported."""
    counts, why, unexpected = load.new_client()
    c = Client(host, port)
    tokens = {}  # key -> a cas token a gets/gats saw
    seq = 0
    while not stop.is_set():
        seq += 1
        keys = rnd.sample(TKEYS, rnd.randint(1, 3))
        key = keys[0]
        exp = rnd.choice([0, 1, 1, 1, 2, 3])
        texp = rnd.choice([0, 0, 0, 0, 1, 2, 3])  # touch, gat
        value = (b"%d" % rnd.randint(0, 1000)) if rnd.random() < 0.4 else b"x%d-%d" % (pid, seq)
        x = rnd.random()
        kb = key.encode()
        retrieval = None
        try:
            if x < 0.20:
                kind = "set"
                reply = c.command(b"set %s 0 %d %d" % (kb, exp, len(value)), value)
            elif x < 0.25:
                kind = "add"
                reply = c.command(b"add %s 0 %d %d" % (kb, exp, len(value)), value)
            elif x < 0.37:
                kind, reply = "touch", c.command(b"touch %s %d" % (kb, texp))
            elif x < 0.49:
                kind = retrieval = rnd.choice(["gat", "gats"])
                reply = c.retrieve(kind.encode(), keys, exptime=texp)
            elif x < 0.63:
                kind = retrieval = rnd.choice(["get", "gets"])
                reply = c.retrieve(kind.encode(), keys)
            elif x < 0.71:
                kind, reply = "delete", c.command(b"delete %s" % kb)
            elif x < 0.78:
                kind, reply = "incr", c.command(b"incr %s %d" % (kb, rnd.randint(1, 100)))
            elif x < 0.84:
                kind = "append"
                reply = c.command(b"append %s 0 0 2" % kb, b"+a")
            elif x < 0.96:
                # A key of its own, written once (mostly never to expire):
                # one written while the replicas' clocks disagree about a
                # flush_all's time must end the same on all of them.
                kind = "add new"
                fresh = b"e%d-%d" % (pid, seq)
                reply = c.command(b"add %s 0 %d %d" % (fresh, rnd.choice([0, 0, 0, 1, 3]),
                                                       len(value)), value)
            elif key in tokens:
                kind = "cas"
                reply = c.command(b"cas %s 0 %d %d %d" % (kb, exp, len(value), tokens.pop(key)),
                                  value)
            else:
                kind, reply = "gets", c.retrieve(b"gets", keys)
                retrieval = "gets"
        except Unknown as e:
            counts["unknown"] += 1
            why[str(e)[:40]] += 1
            time.sleep(rnd.uniform(0.01, 0.05))
            continue
        counts[kind] += 1
        if isinstance(reply, list):
            got = [v[0] for v in reply]
            if len(set(got)) != len(got) or not set(got) <= set(keys) or any(
                    (v[2] is None) != (retrieval in ("get", "gat")) for v in reply):
                unexpected.append("%s %s -> %r" % (kind, " ".join(keys), reply[:3]))
            counts["hit"] += len(reply)
            counts["miss"] += len(keys) - len(reply)
            for k, _, cas, _ in reply:
                if cas is not None:
                    tokens[k] = cas
        elif reply.startswith(b"SERVER_ERROR"):
            counts["unknown"] += 1
            why[error_kind(reply)] += 1
            time.sleep(rnd.uniform(0.01, 0.05))
        else:
            count_reply(counts, unexpected, kind, key, reply, retrieval)
    c.close()


def error_kind(reply):
    """A SERVER_ERROR reply without its details (addresses, numbers)."""
    text = re.sub(r" \([0-9.]+:[0-9]+\)", "", reply.decode(errors="replace"))
    return re.sub(r"[0-9]+", "N", text.split(": ")[0])


def count_reply(counts, unexpected, kind, key, reply, retrieval=None):
    """Counts a one-line reply of the expiry workload, or notes it as
    unexpected."""
    if retrieval is not None or not (reply in EXPIRY_REPLIES[kind] or (
            kind == "incr" and reply.isdigit())):
        unexpected.append("%s %s -> %s" % (kind, key, reply[:100].decode(errors="replace")))
    elif kind in ("set", "add", "add new", "append", "cas") and reply == b"STORED" or \
            reply in (b"TOUCHED", b"DELETED", b"OK") or reply.isdigit():
        counts["written"] += 1


def flusher_loop(load, hist, cl, rnd, stop, until):
    """The flush_all of the expiry workload ("clock" only): every 3-8 s,
    through a replica drawn at random, a flush_all with a delay of 1-3 s, one
    in seven an immediate one; none from `until` on. (The clock nemesis adds
    flushes that come due while the clocks disagree: Cluster.hold_skew.)"""
    counts, why, unexpected = load.new_client()
    while not stop.wait(rnd.uniform(3.0, 8.0)) and now() < until:
        r = cl.reps[rnd.randint(1, N)]
        if rnd.random() < 1 / 7:
            kind, line = "flush_all", b"flush_all"
        else:
            kind, line = "flush_all N", b"flush_all %d" % rnd.randint(1, 3)
        counts[kind] += 1
        hist.event("%s through replica %d" % (line.decode(), r.id))
        try:
            reply = one_request(r.host, r.cport, lambda c: c.command(line), timeout=OP_TIMEOUT_S)
        except Unknown as e:
            counts["unknown"] += 1
            why[str(e)[:40]] += 1
            continue
        hist.event("%s through replica %d: %s" % (line.decode(), r.id, reply[:60].decode(
            errors="replace")))
        if reply.startswith(b"SERVER_ERROR"):
            counts["unknown"] += 1
            why[error_kind(reply)] += 1
        else:
            count_reply(counts, unexpected, kind, "", reply)


# ---- processes ----------------------------------------------------------------------


def sh(*cmd, check=True, input=None):
    r = subprocess.run(cmd, input=input, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError("%s: exit %d: %s" % (" ".join(cmd), r.returncode,
                                               (r.stderr or r.stdout).strip()[:300]))
    return r


def free_port(host):
    """A TCP port free on host (and for UDP, which serve opens on loopback)."""
    for _ in range(100):
        s = socket.socket()
        s.bind((host, 0))
        p = s.getsockname()[1]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind((host, p))
        except OSError:
            continue
        finally:
            u.close()
            s.close()
        return p
    raise RuntimeError("no free port on %s" % host)


class Replica:
    def __init__(self, cl, rid):
        self.cl = cl
        self.id = rid
        self.host = HOSTS[rid]
        self.cport = free_port(self.host)
        self.pport = free_port(self.host)
        self.uid = UID_BASE + rid if cl.privileged else None
        self.dir = os.path.join(cl.tmp, "r%d" % rid)
        self.data = os.path.join(self.dir, "data")
        self.logf = os.path.join(self.dir, "serve.log")
        # Its clock offset (ms), read by tests/chaos/clockshim.c in the replica.
        self.clockf = os.path.join(cl.tmp, "clock-r%d" % rid)
        self.offset_ms = 0
        self.proc = None
        self.expect_down = False  # the nemesis stopped it on purpose
        self.unexpected = []  # exits nobody asked for
        self.starts = 0
        self.tmpfs = False

    def setup(self, tmpfs):
        os.makedirs(self.data)
        shutil.copy(self.cl.secret, os.path.join(self.dir, "secret"))
        os.chmod(os.path.join(self.dir, "secret"), 0o600)
        if tmpfs:
            sh("mount", "-t", "tmpfs", "-o", "size=%dm,mode=0700,uid=%d,gid=%d" % (
                TMPFS_MB, self.uid, self.uid), "tpckv-chaos", self.data)
            self.tmpfs = True
        open(self.logf, "a").close()
        self.set_clock(0)
        if self.uid is not None:
            for p in (self.dir, self.data, self.logf, os.path.join(self.dir, "secret")):
                os.chown(p, self.uid, self.uid)

    def args(self):
        return [self.cl.serve, "-s", self.host, "-p", str(self.cport), "--id", str(self.id),
                "--replicas", self.cl.replicas_arg, "--secret-file",
                os.path.join(self.dir, "secret"), "-d", self.data, "--log-file", self.logf,
                "--prepare-timeout-ms", str(PREPARE_TIMEOUT_MS),
                "--lock-wait-ms", str(LOCK_WAIT_MS),
                "--wal-segment-bytes", "1m", "--snapshot-bytes", "2m"]

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def set_clock(self, offset_ms):
        """Shifts the replica's wall clock (CLOCK_REALTIME) by offset_ms: the
        shim reads the file within 50 ms. Written by rename, so it never
        reads half a number."""
        tmp = self.clockf + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % offset_ms)
        os.chmod(tmp, 0o644)
        os.rename(tmp, self.clockf)
        self.offset_ms = offset_ms

    def start(self, wait=True):
        assert not self.running()
        off = os.path.getsize(self.logf)
        kw = {}
        if self.uid is not None:
            kw = {"user": self.uid, "group": self.uid, "extra_groups": []}
        err = open(os.path.join(self.dir, "stderr"), "ab")
        env = dict(os.environ)
        env["LD_PRELOAD"] = " ".join(p for p in (self.cl.clock_shim, env.get("LD_PRELOAD")) if p)
        env[CLOCK_ENV] = self.clockf
        self.proc = subprocess.Popen(self.args(), stdin=subprocess.DEVNULL, stdout=err,
                                     stderr=err, env=env, **kw)
        err.close()
        self.starts += 1
        self.expect_down = False
        if not wait:
            return True
        end = now() + 15
        while now() < end:
            with open(self.logf, "rb") as f:
                f.seek(off)
                if b"listening on" in f.read():
                    return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.05)
        return False

    def note_exit(self):
        """Records an exit the nemesis did not cause."""
        if self.proc is not None and self.proc.poll() is not None and not self.expect_down:
            self.unexpected.append("exit %d" % self.proc.returncode)
            self.expect_down = True

    def kill(self, sig=signal.SIGKILL):
        if self.proc is None:
            return
        self.expect_down = True
        try:
            self.proc.send_signal(sig)
        except ProcessLookupError:
            pass
        if sig in (signal.SIGKILL, signal.SIGTERM):
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def signal(self, sig):
        if self.running():
            self.proc.send_signal(sig)

    def stats(self):
        return one_request(self.host, self.cport, lambda c: c.stats())

    def log_tail(self, n=6):
        try:
            with open(self.logf, "rb") as f:
                lines = f.read().decode(errors="replace").splitlines()
        except OSError:
            return []
        return lines[-n:]


# ---- the userspace link proxy (delay, reordering) -----------------------------------


class Proxy:
    """Carries the peer links when the netslow faults may be used: an
    nftables DNAT rule sends each replica's dials of each other replica's peer
    port to a listening port of its own here (one per ordered pair), and each
    accepted connection is joined to a new one to the real destination, with
    SO_MARK = the dialing replica so the partition rules see it as that
    replica's. Each direction delivers chunks in order, each no earlier than
    its arrival plus the current delay: links slow down independently, so
    messages are reordered across links. delay = (0, 0) passes through."""

    def __init__(self):
        self.delay = (0.0, 0.0)
        self.spike = 0.0  # probability of a chunk held 1.5-3x the prepare timeout
        self.listeners = []
        self.conns = []
        self.lock = threading.Lock()
        self.closed = False
        self.rnd = random.Random()

    def add_link(self, src_id, dst_host, dst_port):
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((PROXY_HOST, 0))
        ls.listen(16)
        self.listeners.append(ls)
        threading.Thread(target=self._accept, args=(ls, src_id, dst_host, dst_port),
                         daemon=True).start()
        return ls.getsockname()[1]

    def _accept(self, ls, src_id, host, port):
        while not self.closed:
            try:
                a, _ = ls.accept()
            except OSError:
                return
            threading.Thread(target=self._join, args=(a, src_id, host, port), daemon=True).start()

    def _join(self, a, src_id, host, port):
        b = socket.socket()
        try:
            b.setsockopt(socket.SOL_SOCKET, SO_MARK, src_id)
            b.settimeout(2)
            b.connect((host, port))
            b.settimeout(None)
            b.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            a.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            a.close()
            b.close()
            return
        with self.lock:
            if self.closed:
                a.close()
                b.close()
                return
            self.conns.append((a, b))
        for src, dst in ((a, b), (b, a)):
            q = collections.deque()
            cv = threading.Condition()
            threading.Thread(target=self._read, args=(src, dst, q, cv), daemon=True).start()
            threading.Thread(target=self._write, args=(src, dst, q, cv), daemon=True).start()

    @staticmethod
    def _kill(*socks):
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _read(self, src, dst, q, cv):
        last_due = 0.0
        while True:
            try:
                d = src.recv(65536)
            except OSError:
                d = b""
            lo, hi = self.delay
            t = now()
            due = t + (self.rnd.uniform(lo, hi) if hi > 0 else 0.0)
            if self.spike and self.rnd.random() < self.spike:
                due += self.rnd.uniform(1.5, 3.0) * PREPARE_TIMEOUT_MS / 1000
            due = max(due, last_due)  # in order within one direction
            last_due = due
            with cv:
                q.append((due, d))
                cv.notify()
            if not d:
                return

    def _write(self, src, dst, q, cv):
        while True:
            with cv:
                while not q:
                    cv.wait()
                due, d = q.popleft()
            wait = due - now()
            if wait > 0:
                time.sleep(wait)
            if not d:
                self._kill(src, dst)
                return
            try:
                dst.sendall(d)
            except OSError:
                self._kill(src, dst)
                return

    def close(self):
        with self.lock:
            self.closed = True
            conns, self.conns = self.conns, []
        for ls in self.listeners:
            try:
                ls.close()
            except OSError:
                pass
        for a, b in conns:
            self._kill(a, b)
            a.close()
            b.close()


# ---- the cluster and its faults -------------------------------------------------------


class Cluster:
    def __init__(self, args, scenario, rnd, privileged):
        self.serve = args.serve
        self.clock_shim = args.clock_shim
        self.scenario = scenario
        self.rnd = rnd
        self.privileged = privileged
        self.tmp = tempfile.mkdtemp(prefix="tpckv-chaos-%s." % scenario)
        os.chmod(self.tmp, 0o711)  # the replicas' uids reach their own dirs
        self.secret = os.path.join(self.tmp, "secret")
        with open(self.secret, "w") as f:
            f.write(sh("openssl", "rand", "-hex", "32").stdout)
        os.chmod(self.secret, 0o600)
        self.reps = {i: Replica(self, i) for i in range(1, N + 1)}
        self.replicas_arg = ",".join("%d@%s:%d" % (i, r.host, r.pport)
                                     for i, r in self.reps.items())
        self.flush_until = 0.0  # "clock": no flush_all from then on (run_scenario)
        self.proxy = None
        self.nft = False
        self.faults = []  # nft fault rules in force
        self.fillers = {}

    # -- nftables
    def nft_apply(self, text):
        sh("nft", "-f", "-", input=text)

    def nft_setup(self, with_proxy):
        rules = ["table inet %s {" % NFT_TABLE,
                 "  chain mark_new { type filter hook output priority -150; policy accept;"]
        for i, r in self.reps.items():
            rules.append("    ct state new meta skuid %d ct mark set %d" % (r.uid, i))
        rules.append("    ct state new meta mark != 0 ct mark set meta mark")
        rules.append("  }")
        rules.append("  chain faults { type filter hook input priority 0; policy accept; }")
        if with_proxy:
            self.proxy = Proxy()
            rules.append("  chain to_proxy { type nat hook output priority -100; policy accept;")
            for i, a in self.reps.items():
                for j, b in self.reps.items():
                    if i == j:
                        continue
                    port = self.proxy.add_link(i, b.host, b.pport)
                    rules.append("    meta skuid %d ip daddr %s tcp dport %d dnat ip to %s:%d" % (
                        a.uid, b.host, b.pport, PROXY_HOST, port))
            rules.append("  }")
        rules.append("}")
        self.nft_apply("\n".join(rules) + "\n")
        self.nft = True

    def set_faults(self, rules):
        self.faults = rules
        text = "flush chain inet %s faults\n" % NFT_TABLE
        for r in rules:
            text += "add rule inet %s faults %s\n" % (NFT_TABLE, r)
        self.nft_apply(text)

    def partition_rules(self, side_a, side_b):
        out = []
        for i in side_a:
            for j in side_b:
                out.append("ct mark %d ct original ip daddr %s drop" % (i, HOSTS[j]))
                out.append("ct mark %d ct original ip daddr %s drop" % (j, HOSTS[i]))
        return out

    # -- lifecycle
    def start(self):
        tmpfs = self.scenario in ("disk", "mixed")
        for r in self.reps.values():
            r.setup(tmpfs)
        if self.privileged:
            self.nft_setup(with_proxy=self.scenario in ("netslow", "mixed"))
        for r in self.reps.values():
            r.start(wait=False)
        ok = all(self.wait_listening(r) for r in self.reps.values())
        return ok and self.wait_links(20)

    def wait_listening(self, r):
        end = now() + 15
        while now() < end:
            with open(r.logf, "rb") as f:
                if b"listening on" in f.read():
                    return True
            if not r.running():
                return False
            time.sleep(0.05)
        return False

    def links_up(self, r):
        try:
            st = r.stats()
        except Unknown:
            return False
        return sum(1 for k, v in st.items() if k.startswith("peer_") and k.endswith("_link")
                   and v == "up") == N - 1

    def wait_links(self, seconds):
        end = now() + seconds
        while now() < end:
            if all(r.running() and self.links_up(r) for r in self.reps.values()):
                return True
            time.sleep(0.1)
        return False

    def stop(self):
        for r in self.reps.values():
            if r.running():
                r.signal(signal.SIGCONT)
                r.kill(signal.SIGKILL)
        if self.proxy is not None:
            self.proxy.close()
        if self.nft:
            sh("nft", "delete", "table", "inet", NFT_TABLE, check=False)
            self.nft = False
        for r in self.reps.values():
            if r.tmpfs:
                sh("umount", "-l", r.data, check=False)
                r.tmpfs = False

    # -- the faults: each holds its fault, then heals it
    def fault_kill(self, hist, sleep):
        r = self.reps[self.rnd.randint(1, N)]
        hist.event("kill -9 replica %d" % r.id)
        r.kill(signal.SIGKILL)
        sleep(self.rnd.uniform(0.2, 1.5))
        hist.event("restart replica %d" % r.id)
        if not r.start():
            r.unexpected.append("restart failed: %s" % " | ".join(r.log_tail(3)))
        return "kill -9 of replica %d" % r.id

    def fault_pause(self, hist, sleep):
        r = self.reps[self.rnd.randint(1, N)]
        hold = self.rnd.uniform(2, 4) * PREPARE_TIMEOUT_MS / 1000
        hist.event("SIGSTOP replica %d for %.2fs" % (r.id, hold))
        r.signal(signal.SIGSTOP)
        try:
            sleep(hold)
        finally:
            r.signal(signal.SIGCONT)
            hist.event("SIGCONT replica %d" % r.id)
        return "pause of replica %d" % r.id

    def fault_partition(self, hist, sleep):
        ids = list(self.reps)
        self.rnd.shuffle(ids)
        if self.rnd.random() < 0.5:
            a, b = [ids[0]], [ids[1]]
            what = "partition %d | %d" % (a[0], b[0])
        else:
            a, b = [ids[0]], ids[1:]
            what = "partition %d | %s" % (a[0], ",".join(map(str, sorted(b))))
        hist.event(what)
        self.set_faults(self.partition_rules(a, b))
        try:
            sleep(self.rnd.uniform(1.0, 3.0))
        finally:
            self.set_faults([])
            hist.event("heal " + what)
        return what

    def fault_netslow(self, hist, sleep):
        kind = self.rnd.choice(["delay", "loss", "delay+loss"])
        parts = []
        if "delay" in kind:
            hi = self.rnd.choice([0.02, 0.1, 0.3])
            self.proxy.delay = (0.0, hi)
            self.proxy.spike = self.rnd.choice([0.0, 0.02])
            parts.append("delay 0-%dms per chunk (spikes %.0f%%)" % (hi * 1000,
                                                                   self.proxy.spike * 100))
        if "loss" in kind:
            pct = self.rnd.choice([5, 20, 40])
            self.set_faults(["ct mark != 0 numgen random mod 100 < %d drop" % pct])
            parts.append("%d%% loss" % pct)
        what = "peer links: " + ", ".join(parts)
        hist.event(what)
        try:
            sleep(self.rnd.uniform(1.5, 3.5))
        finally:
            self.proxy.delay = (0.0, 0.0)
            self.proxy.spike = 0.0
            self.set_faults([])
            hist.event("heal " + what)
        return what

    def fill(self, r):
        path = os.path.join(r.data, "chaos-filler")
        self.fillers[r.id] = path
        chunk = b"\0" * (1 << 20)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for size in (1 << 20, 4096, 1):
                while True:
                    try:
                        if os.write(fd, chunk[:size]) < size:
                            break
                    except OSError:  # ENOSPC: full at this granularity
                        break
        finally:
            os.close(fd)

    def unfill(self, r):
        path = self.fillers.pop(r.id, None)
        if path:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def log_failed(self, r):
        try:
            return r.stats().get("wal_error", "none") != "none"
        except Unknown:
            return True

    def fault_disk(self, hist, sleep):
        r = self.reps[self.rnd.randint(1, N)]
        hist.event("fill replica %d's disk" % r.id)
        self.fill(r)
        try:
            sleep(self.rnd.uniform(1.0, 2.5))
        finally:
            self.unfill(r)
            hist.event("free replica %d's disk" % r.id)
        self.restart_if_log_failed(r, hist)
        return "full disk on replica %d" % r.id

    def restart_if_log_failed(self, r, hist):
        r.note_exit()
        if r.running() and not self.log_failed(r):
            return
        hist.event("restart replica %d (its log failed)" % r.id)
        if r.running():
            r.kill(signal.SIGTERM)
        r.expect_down = True
        if not r.start():
            r.unexpected.append("restart after a full disk failed: %s" %
                                " | ".join(r.log_tail(3)))

    def skew(self, within=None, scale=1.0):
        """An offset in ms, either way: within the clock bound or beyond it
        (drawn if within is None); scale < 1 keeps offsets that are set on
        several replicas at once within the bound of each other."""
        if within is None:
            within = self.rnd.random() < 0.5
        lo, hi = SKEW_WITHIN_MS if within else SKEW_BEYOND_MS
        ms = int(self.rnd.randint(lo, hi) * (scale if within else 1.0))
        return ms if self.rnd.random() < 0.5 else -ms

    def set_clocks(self, hist, offsets):
        for rid, ms in sorted(offsets.items()):
            self.reps[rid].set_clock(ms)
        hist.event("clocks: " + ", ".join("replica %d %+d ms" % (rid, self.reps[rid].offset_ms)
                                          for rid in sorted(self.reps)))

    def flush_in_skew(self, hist):
        """In "clock" (where flush_all is part of the workload): a flush_all 1
        through a replica drawn at random while the clocks disagree; returns
        when it will have come due at every replica's clock (each replica's
        clock reaches it at a different moment: the flush time is the
        coordinator's clock + 1 s). None elsewhere."""
        if self.scenario in REGISTER_SCENARIOS or self.rnd.random() >= 0.4 or \
                now() >= self.flush_until:
            return None
        c = self.reps[self.rnd.randint(1, N)]
        t = now()
        hist.event("nemesis: flush_all 1 through replica %d" % c.id)
        try:
            reply = one_request(c.host, c.cport, lambda cc: cc.command(b"flush_all 1"),
                                timeout=OP_TIMEOUT_S).decode(errors="replace")
        except Unknown as e:
            reply = str(e)
        hist.event("nemesis: flush_all 1 through replica %d: %s" % (c.id, reply[:60]))
        return max(t + 1.0 + (c.offset_ms - r.offset_ms) / 1000 for r in self.reps.values())

    def hold_skew(self, hist, sleep, hold):
        """Holds the clock offsets in force for `hold` seconds, and in
        "clock" until a flush_all sent meanwhile has come due everywhere
        (at most 4.5 s): each replica's clock reaches it at its own moment,
        and none may act on that alone."""
        t0 = now()
        sleep(self.rnd.uniform(0.1, 0.4))
        due = self.flush_in_skew(hist)
        if due is None:
            sleep(max(t0 + hold - now(), 0))
            return ""
        sleep(max(t0 + hold - now(), min(due + self.rnd.uniform(0.2, 0.6), t0 + 4.5) - now(), 0))
        return ", a flush_all due inside"

    def fault_clock(self, hist, sleep):
        """Clock skew through the shim: one replica off, all three off by
        different amounts, clocks stepping back and forth under load, or a
        replica killed and restarted with its clock off (replay, then
        expiry, under another time). Held, then every offset back to 0."""
        kind = self.rnd.choice(["one", "all", "steps", "restart", "restart"])
        ids = list(self.reps)
        try:
            if kind == "one":
                r = self.rnd.choice(ids)
                self.set_clocks(hist, {r: self.skew()})
                what = "clock of replica %d %+d ms" % (r, self.reps[r].offset_ms)
                what += self.hold_skew(hist, sleep, self.rnd.uniform(1.0, 3.0))
            elif kind == "all":
                within = self.rnd.random() < 0.5
                self.set_clocks(hist, {i: self.skew(within, 0.5) for i in ids})
                what = "clocks %s ms" % "/".join("%+d" % self.reps[i].offset_ms for i in ids)
                what += self.hold_skew(hist, sleep, self.rnd.uniform(1.0, 3.0))
            elif kind == "steps":
                end, n = now() + self.rnd.uniform(1.5, 3.0), 0
                while now() < end:
                    self.set_clocks(hist, {self.rnd.choice(ids): self.skew()})
                    n += 1
                    sleep(self.rnd.uniform(0.1, 0.4))
                    if n == 1:
                        self.flush_in_skew(hist)
                what = "clocks stepping (%d steps)" % n
            else:
                r = self.reps[self.rnd.choice(ids)]
                hist.event("kill -9 replica %d" % r.id)
                r.kill(signal.SIGKILL)
                self.set_clocks(hist, {r.id: self.skew()})
                what = "restart of replica %d with its clock %+d ms" % (r.id, r.offset_ms)
                sleep(self.rnd.uniform(1.0, 3.0))  # as long as short expiries
                hist.event("restart replica %d" % r.id)
                if not r.start():
                    r.unexpected.append("restart failed: %s" % " | ".join(r.log_tail(3)))
                sleep(self.rnd.uniform(0.5, 2.0))
        finally:
            self.set_clocks(hist, {i: 0 for i in ids})
        return what

    def heal_all(self, hist):
        """Undoes whatever fault is left; restarts what is down."""
        for r in self.reps.values():
            if r.offset_ms:
                r.set_clock(0)
        if self.proxy is not None:
            self.proxy.delay = (0.0, 0.0)
            self.proxy.spike = 0.0
        if self.nft:
            self.set_faults([])
        for r in self.reps.values():
            r.signal(signal.SIGCONT)
            self.unfill(r)
        for r in self.reps.values():
            r.note_exit()
            if not r.running():
                hist.event("heal: start replica %d" % r.id)
                r.start()
            elif r.tmpfs and self.log_failed(r):
                self.restart_if_log_failed(r, hist)


# ---- one scenario -----------------------------------------------------------------------


class Report:
    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.skipped = 0

    def ok(self, text):
        self.passed += 1
        log("ok   - " + text)

    def fail(self, text, notes=()):
        self.failed += 1
        log("FAIL - " + text)
        for n in list(notes)[:12]:
            log("     " + n)

    def check(self, cond, text, notes=()):
        if cond:
            self.ok(text)
        else:
            self.fail(text, notes)
        return cond

    def skip(self, text):
        self.skipped += 1
        log("SKIP: " + text)


def interruptible_sleep(stop):
    def sleep(seconds):
        if stop.wait(seconds):
            raise KeyboardInterrupt
    return sleep


def run_scenario(args, scenario, seed, privileged, rep, abort):
    rnd = random.Random(seed)
    cl = Cluster(args, scenario, rnd, privileged)
    hist = History()
    load = ExpiryLoad()
    registers = scenario in REGISTER_SCENARIOS
    log("== %s: seed %d, %ds of faults, replicas %s, data and logs in %s" % (
        scenario, seed, args.seconds, cl.replicas_arg, cl.tmp))
    failed_before = rep.failed
    stop_clients = threading.Event()
    stop_expiry = threading.Event()
    threads = []
    sleep = interruptible_sleep(abort)
    try:
        if not rep.check(cl.start(), "%s: 3 replicas up, every peer link up" % scenario,
                         ["replica %d: %s" % (r.id, " | ".join(r.log_tail(3)))
                          for r in cl.reps.values()]):
            return
        counters = collections.Counter()
        pid = 0
        for r in cl.reps.values():
            for _ in range(CLIENTS_PER_REPLICA if registers else 0):
                pid += 1
                t = threading.Thread(target=client_loop, args=(
                    hist, pid, r.host, r.cport, random.Random(seed * 100 + pid), stop_clients,
                    counters), daemon=True)
                t.start()
                threads.append(t)
        faults = {"kill": cl.fault_kill, "pause": cl.fault_pause,
                  "partition": cl.fault_partition, "netslow": cl.fault_netslow,
                  "disk": cl.fault_disk, "clock": cl.fault_clock}
        done = []
        # "clock" runs in rounds of at least 8 s of faults, each ended by
        # check_expiry: a later fault can undo a divergence an earlier one
        # left (a flush that comes due, a restart whose replay drops the
        # same items), so a long run is compared more than once.
        rounds = 1 if registers else max(1, int(args.seconds // 8))
        for n in range(rounds):
            for r in cl.reps.values():
                for _ in range(EXPIRY_CLIENTS_PER_REPLICA * (1 if registers else 2)):
                    pid += 1
                    t = threading.Thread(target=expiry_loop, args=(
                        load, pid, r.host, r.cport, random.Random(seed * 100 + pid),
                        stop_expiry), daemon=True)
                    t.start()
                    threads.append(t)
            if not registers:
                # flush_all in "clock" only, and none in the last third of a
                # round: a flush that comes due removes the items written
                # before it on every replica alike, and so would hide a
                # divergence an earlier fault left.
                cl.flush_until = now() + 1.0 + (args.seconds / rounds - 1.0) * 2 / 3
                t = threading.Thread(target=flusher_loop, args=(
                    load, hist, cl, random.Random("%d-flusher-%d" % (seed, n)), stop_expiry,
                    cl.flush_until), daemon=True)
                t.start()
                threads.append(t)

            # The nemesis.
            end = now() + args.seconds / rounds
            sleep(1.0)  # a clean start
            while now() < end - 1.0:
                name = rnd.choice(SCENARIO_FAULTS[scenario])
                done.append(faults[name](hist, sleep))
                for r in cl.reps.values():
                    r.note_exit()
                sleep(rnd.uniform(0.5, 1.5))
            if n == rounds - 1:
                break
            label = "%s, round %d of %d" % (scenario, n + 1, rounds)
            hist.event("round %d of %d ends" % (n + 1, rounds))
            cl.heal_all(hist)
            cl.wait_links(20)
            stop_expiry.set()
            for t in threads:
                t.join(OP_TIMEOUT_S * 3 + 5)
            notes = ["replica %d: no write succeeded within 20 s" % r.id
                     for r in cl.reps.values() if not write_after_heal(r, hist)]
            rep.check(not notes, "%s: after the heal, writes succeed through every replica" %
                      label, notes)
            check_expiry(cl, rep, label)
            stop_expiry = threading.Event()
        hist.event("nemesis stops")
        cl.heal_all(hist)
        links = cl.wait_links(20)
        # The expiry workload stops now, so its last items die meanwhile
        # (check_expiry waits for that); the register clients run on a
        # healed cluster a moment.
        stop_expiry.set()
        sleep(1.0)
        stop_clients.set()
        for t in threads:
            t.join(OP_TIMEOUT_S * 3 + 5)
        log("   %s: %d faults (%s)" % (scenario, len(done), "; ".join(
            "%s x%d" % kv for kv in collections.Counter(done).most_common(6))))
        ops = hist.ops
        if registers:
            n_ok = sum(1 for o in ops if o["r"] == "ok")
            n_fail = sum(1 for o in ops if o["r"] == "fail")
            n_unk = sum(1 for o in ops if o["r"] == "unknown")
            why = collections.Counter()
            for o in ops:
                if o["r"] == "unknown":
                    w = re.sub(r" \([0-9.]+:[0-9]+\)", "", str(o["o"]))
                    why[w.split(": ")[0] if w.startswith("SERVER_ERROR") else w[:40]] += 1
            log("   %s: %d ops attempted: %d ok, %d failed (cas EXISTS/NOT_FOUND), "
                "%d unknown (%s)" % (scenario, len(ops), n_ok, n_fail, n_unk,
                ", ".join("%s %d" % kv for kv in why.most_common(4)) or "none"))
            unexpected = [o for o in ops if o.get("unexpected")]
            rep.check(not unexpected, "%s: no unexpected reply (only STORED EXISTS NOT_FOUND, "
                      "values, SERVER_ERROR)" % scenario,
                      ["%s %s -> %s" % (o["f"], o["k"], o["o"]) for o in unexpected[:5]])
            rep.check(n_ok > 0 and any(o["r"] == "ok" and o["f"] in ("set", "cas") for o in ops),
                      "%s: some writes were acknowledged" % scenario)
        counts, ewhy, eunexpected = load.totals()
        log("   %s: expiry workload on %s: %d requests (%s), %d writes took effect, "
            "%d unknown (%s)" % (
                scenario, TKEYS_TEXT, sum(counts[k] for k in EXPIRY_KINDS), ", ".join(
                    "%s %d" % (k, counts[k]) for k in EXPIRY_KINDS if counts[k]),
                counts["written"], counts["unknown"],
                ", ".join("%s %d" % kv for kv in ewhy.most_common(4)) or "none"))
        rep.check(not eunexpected and counts["written"] > 0,
                  "%s: expiry workload: writes took effect, no unexpected reply" % scenario,
                  eunexpected[:5] or ["no write took effect"])

        # After the heal: links, writes through every replica, nothing in doubt.
        notes = []
        if not links:
            notes.append("peer links not all up 20 s after the heal")
        for r in cl.reps.values():
            if not write_after_heal(r, hist):
                notes.append("replica %d: no write succeeded within 20 s: %s" % (
                    r.id, " | ".join(r.log_tail(2))))
        rep.check(not notes, "%s: after the heal, writes succeed through every replica" %
                  scenario, notes)
        settled, notes = wait_settled(cl, 20)
        if registers:
            finals = final_reads(cl, hist) if settled else None
            same, snotes, dumps = compare_stores(cl) if settled else (False, [], None)
            rep.check(settled and finals and same,
                      "%s: no transaction in doubt, every key read from every replica, the three "
                      "stores identical (keys, flags, cas, values)" % scenario, notes + snotes)
            n_add = collections.Counter(a[2] for a in hist.adds)
            anotes = check_adds(hist.adds, dumps) if dumps else ["no store dumps to check"]
            rep.check(not anotes, "%s: adds of write-once keys (%d ok, %d unknown, %d failed): "
                      "no acknowledged one lost, each on all replicas or none" % (
                          scenario, n_add["ok"], n_add["unknown"], n_add["fail"]), anotes)
        else:
            rep.check(settled, "%s: no transaction in doubt" % scenario, notes)
        check_expiry(cl, rep, scenario)

        if registers:
            # The checker.
            t0 = now()
            ok, lines = chaos_check.check_history(hist.ops)
            took = now() - t0
            rep.check(ok, "%s: checker: %s (%d ops, %d keys, %.1fs)" % (
                scenario, "linearizable" if ok else "NOT linearizable", len(hist.ops), len(KEYS),
                took), [line for line in lines if not ok and "linearizable (" not in line])
        bad = ["replica %d: %s" % (r.id, ", ".join(r.unexpected))
               for r in cl.reps.values() if r.unexpected]
        rep.check(not bad, "%s: no replica exited or failed to restart unless told to" %
                  scenario, bad)
    except KeyboardInterrupt:
        rep.fail("%s: interrupted" % scenario)
        raise
    finally:
        stop_clients.set()
        stop_expiry.set()
        for t in threads:
            t.join(OP_TIMEOUT_S * 3 + 5)
        cl.stop()
        meta = {"scenario": scenario, "seed": seed, "seconds": args.seconds,
                "replicas": cl.replicas_arg, "keys": KEYS,
                "prepare_timeout_ms": PREPARE_TIMEOUT_MS, "lock_wait_ms": LOCK_WAIT_MS}
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "%s-%d.jsonl" % (scenario, seed))
        hist.write(path, meta)
        if rep.failed > failed_before or args.keep:
            log("   history kept: %s; re-check: python3 tests/chaos/chaos.py --check %s" % (
                os.path.relpath(path, ROOT), os.path.relpath(path, ROOT)))
            log("   replica logs kept in %s" % cl.tmp)
        else:
            os.unlink(path)
            shutil.rmtree(cl.tmp, ignore_errors=True)


def write_after_heal(r, hist):
    end = now() + 20
    n = 0
    c = Client(r.host, r.cport)
    try:
        while now() < end:
            n += 1
            try:
                if c.store(b"set", "probe-%d" % r.id, "after-heal-%d" % n) == b"STORED":
                    return True
            except Unknown:
                pass
            time.sleep(0.2)
        return False
    finally:
        c.close()


def wait_settled(cl, seconds):
    end = now() + seconds
    last = {}
    while now() < end:
        good = True
        for r in cl.reps.values():
            try:
                st = r.stats()
            except Unknown as e:
                last[r.id] = str(e)
                good = False
                continue
            last[r.id] = "txn_in_doubt %s txn_active %s" % (st.get("txn_in_doubt"),
                                                            st.get("txn_active"))
            if st.get("txn_in_doubt") != "0" or st.get("txn_active") != "0":
                good = False
        if good:
            return True, []
        time.sleep(0.2)
    return False, ["after %ds: %s" % (seconds, "; ".join(
        "replica %d %s" % kv for kv in sorted(last.items())))]


def final_reads(cl, hist):
    """gets of every key through every replica, recorded as final ops."""
    for r in cl.reps.values():
        c = Client(r.host, r.cport)
        for k in KEYS:
            for attempt in range(20):
                op = run_op(hist, c, "final-r%d" % r.id, k, "gets", final=True)
                if op["r"] == "ok":
                    break
                hist.ops.remove(op)
                time.sleep(0.25)
            else:
                c.close()
                return False
        c.close()
    return True


def dump(r):
    c = Client(r.host, r.cport, timeout=5)
    try:
        out = {}
        for k in sorted(c.keys()):
            if k in TKEYS or k.startswith("e"):  # expiring: compared by check_expiry
                continue
            vals = c.get(k, gets=True)
            if isinstance(vals, bytes):
                out[k] = vals.decode(errors="replace")
            else:
                out[k] = [(f, cas, v) for _, f, cas, v in vals]
        return out
    finally:
        c.close()


def check_adds(adds, dumps):
    """Notes on what is wrong with the write-once keys: an acknowledged add
    missing (or with another value) on a replica, an add on some replicas
    but not all, a key no one attempted, an add refused."""
    notes = []
    tried = {}
    for key, value, r, why in adds:
        tried[key] = (value, r, why)
        if r == "fail":
            notes.append("add %s answered %s (no one else writes that key)" % (key, why))
    for key, (value, r, why) in sorted(tried.items()):
        have = {rid: d.get(key) for rid, d in dumps.items()}
        on = [rid for rid, v in have.items() if v is not None]
        if r == "ok" and len(on) < len(dumps):
            notes.append("acknowledged add %s=%s lost on replica(s) %s" % (
                key, value, ",".join(str(rid) for rid in sorted(set(dumps) - set(on)))))
        elif 0 < len(on) < len(dumps):
            notes.append("add %s (%s: %s) on replica(s) %s only" % (
                key, r, why, ",".join(str(rid) for rid in on)))
        for rid, v in have.items():
            if v is not None and (isinstance(v, str) or len(v) != 1 or v[0][2] != value):
                notes.append("replica %d: %s holds %s, not %s" % (rid, key, v, value))
    for rid, d in dumps.items():
        for key in d:
            if key.startswith("u") and key not in tried:
                notes.append("replica %d holds %s, which no client added" % (rid, key))
    return notes[:8]


def compare_stores(cl):
    """(identical, notes, {replica id: dump})."""
    dumps = {}
    for r in cl.reps.values():
        try:
            dumps[r.id] = dump(r)
        except Unknown as e:
            return False, ["replica %d: cannot dump: %s" % (r.id, e)], None
    notes = []
    ref = dumps[1]
    for i in (2, 3):
        if dumps[i] != ref:
            keys = sorted(set(ref) | set(dumps[i]))
            for k in keys:
                if ref.get(k) != dumps[i].get(k):
                    notes.append("key %s: replica 1 %s, replica %d %s" % (
                        k, ref.get(k), i, dumps[i].get(k)))
    return not notes, notes[:8], dumps


def read_state(r, with_digest, live):
    """(what must be equal on every replica, keys locked or None). With a
    digest: the stored state's digest, item count and delayed flush_all, and
    if live, gets of the expiry workload's keys (what a read shows changes
    as items die: a reading is stable only once they are quiet). Without (a
    serve older than stats digest): the live store, keys + gets of every
    key."""
    c = Client(r.host, r.cport, timeout=5)
    try:
        if with_digest:
            d = c.digest()
            if d is None:
                raise Unknown("stats digest unsupported")
            vals = c.retrieve(b"gets", TKEYS) if live else None
            return ((d.get("digest"), d.get("stored_items"), d.get("flush_at_ms"),
                     repr(vals)), int(d.get("locked_keys", "-1")))
        out = []
        for k in sorted(c.keys()):
            out.append((k, repr(c.get(k, gets=True))))
        return tuple(out), None
    finally:
        c.close()


def replicas_agree(cl, with_digest, live, seconds):
    """Waits until two readings in a row find every replica with no key
    locked and the same state (read_state), the second like the first:
    expiry deletes may still be under way for a while after the heal.
    (agreed, notes)."""
    end = now() + seconds
    prev = None
    last, err = {}, None
    while now() < end:
        cur = {}
        try:
            for r in cl.reps.values():
                cur[r.id] = read_state(r, with_digest, live)
        except Unknown as e:
            err, prev = "replica %d: %s" % (r.id, e), None
            time.sleep(0.2)
            continue
        err, last = None, cur
        states = {rid: st for rid, (st, _) in cur.items()}
        good = all(locked in (0, None) for _, locked in cur.values()) and \
            len(set(states.values())) == 1
        if good and prev == states:
            return True, []
        prev = states if good else None
        time.sleep(0.2)
    if err:
        return False, ["after %ds: %s" % (seconds, err)]
    notes = ["not two identical readings in a row in %ds; the last:" % seconds]
    for rid, (st, locked) in sorted(last.items()):
        if with_digest:
            notes.append("replica %d: digest %s stored_items %s flush_at_ms %s locked_keys %s" % (
                rid, st[0], st[1], st[2], locked))
        else:
            notes.append("replica %d: %d live keys" % (rid, len(st)))
    if not with_digest and last:
        ref = dict(last[1][0])
        for rid in (2, 3):
            other = dict(last[rid][0])
            for k in sorted(set(ref) | set(other)):
                if ref.get(k) != other.get(k):
                    notes.append("key %s: replica 1 %s, replica %d %s" % (
                        k, ref.get(k), rid, other.get(k)))
    return False, notes[:12]


def expiry_debug(cl):
    """Each replica's digest, `keys t` and gets of the workload keys."""
    out = []
    for r in cl.reps.values():
        c = Client(r.host, r.cport, timeout=5)
        try:
            d = c.digest()
            out.append("replica %d: %s" % (r.id, "no stats digest" if d is None else " ".join(
                "%s %s" % kv for kv in d.items())))
            out.append("replica %d: keys t: %s" % (r.id, " ".join(c.keys("t")) or "(none)"))
            vals = c.retrieve(b"gets", TKEYS)
            if not isinstance(vals, bytes):
                vals = " ".join("%s=%s (flags %d, cas %d)" % (k, v, f, cas)
                                for k, f, cas, v in vals) or "(none)"
            out.append("replica %d: gets: %s" % (r.id, vals))
        except Unknown as e:
            out.append("replica %d: %s" % (r.id, e))
        finally:
            c.close()
    return out


def write_every_tkey(cl):
    """A set of every expiry-workload key through every replica must be
    STORED (retried a little: a key may be busy with an expiry delete a
    moment). Notes on those that are not."""
    notes = []
    for r in cl.reps.values():
        c = Client(r.host, r.cport)
        for k in TKEYS:
            v = b"final-%s-r%d" % (k.encode(), r.id)
            for attempt in range(4):
                try:
                    reply = c.command(b"set %s 0 0 %d" % (k.encode(), len(v)), v)
                except Unknown as e:
                    reply = str(e).encode()
                if reply == b"STORED":
                    break
                time.sleep(0.25)
            else:
                notes.append("set %s through replica %d: %s (4 tries)" % (
                    k, r.id, reply.decode(errors="replace")[:150]))
        c.close()
    return notes


def check_expiry(cl, rep, scenario):
    """The final check of the expiry workload (and of the whole stored
    state): after the heal the replicas agree (replicas_agree), every
    workload key takes a write through every replica, and they agree again.
    On a failure, each replica's digest and workload keys are printed."""
    try:
        with_digest = one_request(cl.reps[1].host, cl.reps[1].cport,
                                  lambda c: c.digest()) is not None
    except Unknown:
        with_digest = True
    how = "stats digest, gets of %s" % TKEYS_TEXT if with_digest else \
        "keys + gets of every key: this serve has no stats digest"

    def agreed(text, live):
        t0 = now()
        agree, notes = replicas_agree(cl, with_digest, live, 15)
        if not rep.check(agree, "%s (%.1fs)" % (text, now() - t0), notes):
            for line in expiry_debug(cl):
                log("     " + line)

    agreed("%s: after the heal, the three replicas hold the same stored state (%s; twice in "
           "a row, no key locked)" % (scenario, how.split(",")[0]), False)
    notes = write_every_tkey(cl)
    if not rep.check(not notes, "%s: no key left unwritable: a set of each of %s through each "
                     "replica is STORED" % (scenario, TKEYS_TEXT), notes):
        for line in expiry_debug(cl):
            log("     " + line)
    agreed("%s: and the same stored state after those sets (%s)" % (scenario, how), True)
    exp = collections.Counter()
    for r in cl.reps.values():
        try:
            st = r.stats()
        except Unknown:
            continue
        for k in ("expire_txns", "expire_keys", "expire_failed"):
            exp[k] += int(st.get(k, 0))
    log("   %s: expiry deletes by the replicas (since they last started): %d transactions, "
        "%d keys, %d failed" % (
        scenario, exp["expire_txns"], exp["expire_keys"], exp["expire_failed"]))


# ---- entry points ---------------------------------------------------------------------


def netns_available():
    if os.geteuid() != 0:
        return "not root"
    for tool in ("ip", "nft", "mount"):
        if shutil.which(tool) is None:
            return "%s missing (make deps)" % tool
    return None


def inner_main(args):
    privileged = args.privileged
    rep = Report()
    abort = threading.Event()

    def on_signal(signum, frame):
        abort.set()
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)
    scenarios = args.scenarios
    base = args.seed
    t0 = now()
    try:
        for n, sc in enumerate(scenarios):
            if sc in NEEDS_NETNS and not privileged:
                rep.skip("%s: needs root, network namespaces and nftables (%s)" % (
                    sc, args.why_not))
                continue
            ts = now()
            run_scenario(args, sc, base + n, privileged, rep, abort)
            log("   %s: %.0fs" % (sc, now() - ts))
    except KeyboardInterrupt:
        log("chaos: interrupted")
        rep.failed += 1
    log("chaos: %d scenarios in %.0fs" % (len(scenarios), now() - t0))
    tail = ", %d skipped" % rep.skipped if rep.skipped else ""
    log("%d passed, %d failed%s" % (rep.passed, rep.failed, tail))
    return 1 if rep.failed else 0


def outer_main(args, argv):
    why = netns_available()
    if why is None:
        ns = "tpckv-chaos-%d" % os.getpid()
        r = sh("ip", "netns", "add", ns, check=False)
        if r.returncode != 0:
            why = "ip netns add: %s" % r.stderr.strip()
    if why is not None:
        args.privileged = False
        args.why_not = why
        return inner_main(args)
    child = None
    try:
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        child = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable,
                                  os.path.abspath(__file__), "--inner"] + argv)

        def forward(signum, frame):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        return child.wait()
    finally:
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
        sh("ip", "netns", "del", ns, check=False)


def check_file(path):
    meta, ops = chaos_check.load(path)
    ok, lines = chaos_check.check_history(ops)
    log("history %s: scenario %s seed %s, %d ops" % (path, meta.get("scenario"),
                                                     meta.get("seed"), len(ops)))
    for line in lines:
        log(line)
    log("verdict: %s" % ("linearizable" if ok else "NOT linearizable"))
    return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float,
                    default=float(os.environ.get("CHAOS_SECONDS", "20")),
                    help="seconds of faults per scenario (CHAOS_SECONDS, default 20)")
    ap.add_argument("--scenarios", default=os.environ.get("CHAOS_SCENARIOS", ",".join(SCENARIOS)),
                    help="comma-separated, from: " + " ".join(SCENARIOS))
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--keep", action="store_true", help="keep histories and logs of passing runs")
    ap.add_argument("--serve", default=os.environ.get("SERVE", os.path.join(ROOT, "serve")),
                    help="the serve binary to test (SERVE, default ./serve)")
    ap.add_argument("--clock-shim", default=os.environ.get(
        "CLOCKSHIM", os.path.join(ROOT, "build", "rel", "tests", "chaos", "clockshim.so")),
                    help="tests/chaos/clockshim.c built, preloaded into every replica (CLOCKSHIM, "
                    "default build/rel/tests/chaos/clockshim.so)")
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "chaos"))
    ap.add_argument("--check", metavar="FILE", help="check a kept history and exit")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    argv = sys.argv[1:]
    args = ap.parse_args(argv)
    if args.check:
        return check_file(args.check)
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    for s in args.scenarios:
        if s not in SCENARIOS:
            ap.error("unknown scenario %r (from: %s)" % (s, " ".join(SCENARIOS)))
    if not os.access(args.serve, os.X_OK):
        print("chaos.py: %s missing: run 'make' first" % args.serve, file=sys.stderr)
        return 2
    args.serve = os.path.abspath(args.serve)
    args.clock_shim = os.path.abspath(args.clock_shim)
    if not os.access(args.clock_shim, os.R_OK):
        print("chaos.py: %s missing: run 'make build/rel/tests/chaos/clockshim.so' (make chaos "
              "builds it)" % args.clock_shim, file=sys.stderr)
        return 2
    if args.seconds < 3:
        ap.error("--seconds must be at least 3")
    if args.seed is None:
        args.seed = random.SystemRandom().randint(1, 10**6)
        if not args.inner:
            argv = argv + ["--seed", str(args.seed)]
    if args.inner:
        args.privileged = True
        args.why_not = None
        return inner_main(args)
    return outer_main(args, argv)


if __name__ == "__main__":
    sys.exit(main())
