#!/usr/bin/python3
"""e2e_crash.py - the acknowledged-writes check for crash tests (run by test.sh).

  e2e_crash.py write  PORT STATE [SECONDS]   write until the server dies (or SECONDS pass)
  e2e_crash.py verify PORT STATE             check the store against STATE

Several threads write to keys of their own (set, append, delete, add, incr),
one request at a time, and record in STATE what each key must hold: the
value of the last write the server acknowledged. A write in flight when the
connection broke may or may not have happened, so the key may hold either
its old or its new value; STATE keeps both until verify sees which.

verify reads every key (and the list of keys) after a restart and checks each
against STATE: an acknowledged write must be there, byte for byte; a deleted
key must be absent; nothing may appear that was never written. It prints
"ok - ..." / "FAIL - ..." lines and exits 1 on any failure.
"""
import base64
import json
import os
import random
import socket
import sys
import threading
import time

HOST = "127.0.0.1"
THREADS = 8
KEYS_PER_THREAD = 60


class Broken(Exception):
    """The connection failed: the outcome of the request is unknown."""


class Conn:
    """One text-protocol connection (shared with e2e_cluster.py)."""

    def __init__(self, port, timeout=10):
        self.s = socket.create_connection((HOST, port), timeout=timeout)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass

    def _fill(self):
        try:
            d = self.s.recv(65536)
        except OSError as e:  # includes socket.timeout
            raise Broken(str(e) or type(e).__name__)
        if not d:
            raise Broken("EOF")
        self.buf += d

    def line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        l, self.buf = self.buf.split(b"\r\n", 1)
        return l

    def exact(self, n):
        while len(self.buf) < n:
            self._fill()
        b, self.buf = self.buf[:n], self.buf[n:]
        return b

    def send(self, data):
        try:
            self.s.sendall(data)
        except OSError as e:
            raise Broken(str(e))

    def get(self, key):
        self.send(b"get %s\r\n" % key)
        l = self.line()
        if l == b"END":
            return None
        parts = l.split(b" ")
        if parts[0] != b"VALUE" or parts[1] != key:
            raise RuntimeError("unexpected %r" % l)
        v = self.exact(int(parts[3]) + 2)[:-2]
        if self.line() != b"END":
            raise RuntimeError("no END")
        return v

    def gets(self, key):
        """(flags, cas, value), None if absent; raises RuntimeError on an
        error reply (e.g. SERVER_ERROR while a key is locked)."""
        self.send(b"gets %s\r\n" % key)
        l = self.line()
        if l == b"END":
            return None
        parts = l.split(b" ")
        if parts[0] != b"VALUE" or parts[1] != key or len(parts) != 5:
            raise RuntimeError("gets %s: unexpected %r" % (key.decode(), l[:200]))
        v = self.exact(int(parts[3]) + 2)[:-2]
        if self.line() != b"END":
            raise RuntimeError("gets %s: no END" % key.decode())
        return (int(parts[2]), int(parts[4]), v)

    def keys(self, prefix):
        self.send(b"keys %s\r\n" % prefix)
        out = []
        while True:
            l = self.line()
            if l == b"END":
                return out
            if not l.startswith(b"KEY "):
                raise RuntimeError("keys: unexpected %r" % l[:200])
            out.append(l[4:])


def enc(v):
    return None if v is None else base64.b64encode(v).decode()


def dec(v):
    return None if v is None else base64.b64decode(v)


def writer(port, tid, state, lock, deadline, stats):
    rnd = random.Random(os.getpid() * 100 + tid + int(time.time()))
    try:
        c = Conn(port)
    except OSError:
        return
    keys = [b"crash:%d:%d" % (tid, i) for i in range(KEYS_PER_THREAD)]
    while time.time() < deadline:
        key = rnd.choice(keys)
        k = key.decode()
        with lock:
            cands = [dec(x) for x in state[k]]
        cur = cands[-1] if len(cands) == 1 else None
        op = rnd.random()
        if op < 0.5 or len(cands) > 1:
            val = os.urandom(rnd.randint(0, 3000))
            req = b"set %s 0 0 %d\r\n%s\r\n" % (key, len(val), val)
            new, ok_reply = val, b"STORED"
        elif op < 0.65:
            req = b"delete %s\r\n" % key
            new, ok_reply = None, (b"DELETED" if cur is not None else b"NOT_FOUND")
        elif op < 0.8:
            suffix = os.urandom(rnd.randint(1, 200))
            req = b"append %s 0 0 %d\r\n%s\r\n" % (key, len(suffix), suffix)
            new = None if cur is None else cur + suffix
            ok_reply = b"STORED" if cur is not None else b"NOT_STORED"
        elif op < 0.9:
            val = b"%d" % rnd.randint(0, 10**6)
            req = b"add %s 0 0 %d\r\n%s\r\n" % (key, len(val), val)
            new = val if cur is None else cur
            ok_reply = b"STORED" if cur is None else b"NOT_STORED"
        else:
            val = b"%d" % rnd.randint(0, 10**6)
            req = b"set %s 0 0 %d\r\n%s\r\n" % (key, len(val), val)
            new, ok_reply = val, b"STORED"
        # Until the reply comes, the key may hold either value.
        with lock:
            state[k] = [enc(cur), enc(new)] if cur != new else [enc(cur)]
        try:
            c.send(req)
            reply = c.line()
        except Broken:
            stats["unknown"] += 1
            return
        if reply != ok_reply:
            stats["errors"].append("%s: %r -> %r (expected %r)" % (k, req[:40], reply, ok_reply))
            return
        with lock:
            state[k] = [enc(new)]
        stats["acked"] += 1


def cmd_write(port, path, seconds):
    state = json.load(open(path)) if os.path.exists(path) else {}
    for t in range(THREADS):
        for i in range(KEYS_PER_THREAD):
            state.setdefault("crash:%d:%d" % (t, i), [None])
    for k, v in state.items():
        if len(v) != 1:
            sys.exit("state has unresolved keys: run verify first")
    lock = threading.Lock()
    stats = {"acked": 0, "unknown": 0, "errors": []}
    deadline = time.time() + seconds
    threads = [threading.Thread(target=writer, args=(port, t, state, lock, deadline, stats))
               for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with open(path + ".tmp", "w") as f:
        json.dump(state, f)
    os.replace(path + ".tmp", path)
    print("writes acknowledged: %d, in flight when the server died: %d" %
          (stats["acked"], stats["unknown"]))
    for e in stats["errors"][:5]:
        print("FAIL - unexpected reply: " + e)
    sys.exit(1 if stats["errors"] else 0)


def cmd_verify(port, path):
    state = json.load(open(path))
    c = Conn(port)
    bad, resolved = [], 0
    for k in sorted(state):
        cands = [dec(x) for x in state[k]]
        got = c.get(k.encode())
        if got not in cands:
            bad.append("%s: got %s, expected %s" % (
                k, "absent" if got is None else "%d bytes" % len(got),
                " or ".join("absent" if x is None else "%d bytes" % len(x) for x in cands)))
        elif len(cands) > 1:
            resolved += 1
        state[k] = [enc(got)]
    listed = set(x.decode() for x in c.keys(b"crash:"))
    present = set(k for k, v in state.items() if v[0] is not None)
    extra, missing = listed - present, present - listed
    for b in bad[:10]:
        print("FAIL - " + b)
    print(("ok - " if not bad else "FAIL - ") +
          "%d keys hold exactly what the acknowledged writes imply "
          "(%d in-doubt writes resolved either way)" % (len(state) - len(bad), resolved))
    print(("ok - " if not extra and not missing else "FAIL - ") +
          "the key list matches: %d keys, %d unexpected, %d missing" %
          (len(listed), len(extra), len(missing)))
    with open(path + ".tmp", "w") as f:
        json.dump(state, f)
    os.replace(path + ".tmp", path)
    sys.exit(1 if bad or extra or missing else 0)


if __name__ == "__main__":
    if len(sys.argv) < 4 or sys.argv[1] not in ("write", "verify"):
        sys.exit(__doc__)
    port, path = int(sys.argv[2]), sys.argv[3]
    if sys.argv[1] == "write":
        cmd_write(port, path, float(sys.argv[4]) if len(sys.argv) > 4 else 3600)
    else:
        cmd_verify(port, path)
