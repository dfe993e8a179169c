#!/usr/bin/python3
"""e2e_limits.py - connection limits against a running serve (called by test.sh).

Usage:
  e2e_limits.py conns PORT N          serve -c N: N connections are served, the
                                      next is told SERVER_ERROR too many
                                      connections and closed; once one closes,
                                      a new one is served
  e2e_limits.py idle PORT SEC         serve --idle-timeout SEC: a silent
                                      connection is closed, an active one is not
  e2e_limits.py stall PORT PID SEC    serve --max-output small --output-stall-
                                      timeout SEC: a client that sends thousands
                                      of gets of a large value and never reads is
                                      disconnected, the server's RSS stays
                                      bounded, other clients are served meanwhile
  e2e_limits.py flood PORT PID N MAXC  N sockets opened at once (MAXC is serve's
                                      -c) while a client keeps doing set/get: it
                                      sees no error and bounded latency; past
                                      MAXC, sockets are refused; once closed, the
                                      connection count comes back
  e2e_limits.py load PORT SECONDS     (internal) the set/get client of flood:
                                      prints "load OPS ERRORS MAX_MS P99_MS"

Prints one line per check, "ok - ..." or "FAIL - ...", and exits 1 if any
failed. Every socket goes to 127.0.0.1.
"""
import os
import resource
import select
import socket
import subprocess
import sys
import time

from e2e_util import read_until

HOST = "127.0.0.1"
results = {"ok": 0, "fail": 0}


def report(good, desc, detail=""):
    if good:
        results["ok"] += 1
        print("ok - " + desc, flush=True)
    else:
        results["fail"] += 1
        print("FAIL - " + desc + (": " + detail if detail else ""), flush=True)


def conn(port, timeout=5.0):
    s = socket.create_connection((HOST, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def stats(port):
    s = conn(port)
    s.sendall(b"stats\r\n")
    r = read_until(s, b"END\r\n")
    s.close()
    out = {}
    for line in r.split(b"\r\n"):
        p = line.split(b" ")
        if len(p) == 3 and p[0] == b"STAT":
            out[p[1].decode()] = p[2].decode()
    return out


def stat_int(port, name):
    return int(stats(port).get(name, "-1"))


def wait_for(pred, seconds, step=0.1):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


def closed_by_server(s, wait):
    """True if the server closes s within `wait` seconds (what it sent first is read)."""
    end = time.monotonic() + wait
    poller = select.poll()
    poller.register(s.fileno(), select.POLLIN)
    try:
        while time.monotonic() < end:
            if not poller.poll(max(0, int((end - time.monotonic()) * 1000))):
                return False
            if s.recv(65536) == b"":
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    return False


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ---- -c N -----------------------------------------------------------------------

def check_conns(port, n):
    held = [conn(port) for _ in range(n)]
    for s in held:  # each one is served
        s.sendall(b"version\r\n")
    served = all(read_until(s, b"\r\n").startswith(b"VERSION") for s in held)
    report(served, "-c %d: %d connections are served" % (n, n))
    extra = conn(port)
    got = read_until(extra, b"\r\n")
    report(got == b"SERVER_ERROR too many connections\r\n",
           "-c %d: connection %d is told SERVER_ERROR too many connections" % (n, n + 1),
           repr(got))
    report(closed_by_server(extra, 3), "-c %d: ...and closed" % n)
    extra.close()
    held[0].sendall(b"version\r\n")
    report(read_until(held[0], b"\r\n").startswith(b"VERSION"),
           "-c %d: the held connections are still served" % n)
    # One goes: a newcomer is served (the server notices the close first).
    held.pop().close()
    ok = False
    for _ in range(30):
        s = conn(port)
        s.sendall(b"version\r\n")
        r = read_until(s, b"\r\n")
        if r.startswith(b"VERSION"):
            ok = True
            held.append(s)
            break
        s.close()
        time.sleep(0.1)
    report(ok, "-c %d: after one closes, a new connection is served" % n)
    for s in held:
        s.close()


# ---- --idle-timeout ----------------------------------------------------------------

def check_idle(port, sec):
    before = stat_int(port, "idle_kicks")
    silent = conn(port)
    active = conn(port)
    t0 = time.monotonic()
    closed_at = None
    active_ok = True
    while time.monotonic() - t0 < sec * 2 + 1:
        active.sendall(b"version\r\n")
        if not read_until(active, b"\r\n").startswith(b"VERSION"):
            active_ok = False
            break
        if closed_at is None and closed_by_server(silent, 0.3):
            closed_at = time.monotonic() - t0
    report(closed_at is not None and sec * 0.9 <= closed_at <= sec + 2,
           "--idle-timeout %d: a silent connection is closed after %s s" %
           (sec, "%.1f" % closed_at if closed_at is not None else "never"))
    report(active_ok, "--idle-timeout %d: a connection active for %d s stays open" %
           (sec, sec * 2 + 1))
    report(stat_int(port, "idle_kicks") >= before + 1, "stats idle_kicks counts it")
    silent.close()
    active.close()


# ---- --max-output and --output-stall-timeout ---------------------------------------

def push_until_stuck(s, chunk, cap, stuck_s=0.5):
    """Sends chunk again and again while the server takes it; stops once it has
    taken nothing for stuck_s seconds, or at cap bytes. Returns bytes sent."""
    s.setblocking(False)
    sent = off = 0
    while sent < cap:
        try:
            n = s.send(chunk[off:])
            sent += n
            off = (off + n) % len(chunk)
        except BlockingIOError:
            poller = select.poll()
            poller.register(s.fileno(), select.POLLOUT)
            if not poller.poll(int(stuck_s * 1000)):
                break
        except (ConnectionResetError, BrokenPipeError):
            break
    return sent


def check_stall(port, pid, sec):
    value = b"v" * 100000
    s = conn(port)
    s.sendall(b"set big 0 0 %d\r\n%s\r\n" % (len(value), value))
    report(read_until(s, b"\r\n") == b"STORED\r\n", "a 100 KB value stored")
    s.close()
    base_conns = stat_int(port, "curr_connections") - 1  # without the stats connection
    rss0 = rss_kib(pid)
    hog = conn(port)
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    cap = 64 << 20
    t0 = time.monotonic()
    pushed = push_until_stuck(hog, b"get big\r\n" * 4096, cap)
    report(pushed < cap,
           "a client sending gets of it and never reading is held back "
           "(the sockets took %d of them, then nothing)" % (pushed // 9))
    # Meanwhile the others are served, and the server's memory stays put.
    ok = True
    for i in range(50):
        c = conn(port)
        c.sendall(b"set o%d 0 0 2\r\nok\r\nget o%d\r\n" % (i, i))
        if read_until(c, b"END\r\n") != b"STORED\r\nVALUE o%d 0 2\r\nok\r\nEND\r\n" % i:
            ok = False
        c.close()
    report(ok, "other clients are served meanwhile (50 set+get)")
    rss1 = rss_kib(pid)
    report(rss1 - rss0 < 32 * 1024,
           "the server's RSS stays bounded (%d KiB before, %d KiB with the stuck "
           "client)" % (rss0, rss1))
    closed = wait_for(lambda: stat_int(port, "output_stall_closes") >= 1, sec + 5)
    took = time.monotonic() - t0
    report(closed, "--output-stall-timeout %d: the client is disconnected (after %.1f s)" %
           (sec, took))
    report(wait_for(lambda: stat_int(port, "curr_connections") - 1 <= base_conns, 5),
           "the connection count is back to %d" % base_conns)
    hog.close()
    rss2 = rss_kib(pid)
    report(rss2 - rss0 < 32 * 1024, "RSS after: %d KiB" % rss2)


# ---- connection flood ----------------------------------------------------------------

def run_load(port, seconds):
    """A client doing set then get of its own key, one at a time, for `seconds`."""
    lats = []
    errors = 0
    end = time.monotonic() + seconds
    s = conn(port, timeout=10.0)
    i = 0
    while time.monotonic() < end:
        i += 1
        v = b"%d" % i
        t = time.monotonic()
        try:
            s.sendall(b"set load 0 0 %d\r\n%s\r\nget load\r\n" % (len(v), v))
            r = read_until(s, b"END\r\n")
        except OSError:
            r = b"<error>"
        lats.append(time.monotonic() - t)
        if r != b"STORED\r\nVALUE load 0 %d\r\n%s\r\nEND\r\n" % (len(v), v):
            errors += 1
            try:
                s.close()
                s = conn(port, timeout=10.0)
            except OSError:
                pass
    s.close()
    lats.sort()
    p99 = lats[int(len(lats) * 0.99)] if lats else 0
    print("load %d %d %.1f %.1f" % (len(lats), errors, (lats[-1] if lats else 0) * 1000,
                                   p99 * 1000), flush=True)


def check_flood(port, pid, n, maxc):
    have = raise_nofile(n + 100)
    if have < n + 100:
        n = have - 100
    base = stat_int(port, "curr_connections") - 1
    rejected0 = stat_int(port, "rejected_connections")
    rss0 = rss_kib(pid)
    load = subprocess.Popen([sys.executable, __file__, "load", str(port), "4"],
                            stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)  # the load client is connected before the flood
    socks, refused_conn = [], 0
    t0 = time.monotonic()
    for _ in range(n):
        try:
            socks.append(socket.create_connection((HOST, port), timeout=10))
        except OSError:
            refused_conn += 1
    opened = time.monotonic() - t0
    expect_open = min(n, maxc - 1 - base)  # the load client holds one
    # Past -c, each extra socket is told why and closed.
    told = 0
    if n > expect_open:
        deadline = time.monotonic() + 10
        pending = {s.fileno(): s for s in socks}
        poller = select.poll()  # select() cannot watch descriptors past 1023
        for fd in pending:
            poller.register(fd, select.POLLIN)
        while pending and time.monotonic() < deadline:
            ready = poller.poll(500)
            if not ready and told >= n - expect_open:
                break
            for fd, _ in ready:
                s = pending.pop(fd)
                poller.unregister(fd)
                try:
                    d = s.recv(100)
                except OSError:
                    d = b""
                if d.startswith(b"SERVER_ERROR too many connections"):
                    told += 1
    report(refused_conn == 0, "%d sockets connected in %.1f s" % (n, opened),
           "%d connect() calls failed" % refused_conn)
    if n > expect_open:
        # The server is full: no stats now (that connection would be refused too).
        report(told == n - expect_open,
               "past -c %d: %d sockets served, the other %d told SERVER_ERROR too many "
               "connections and closed" % (maxc, n - told, told),
               "told %d, want %d" % (told, n - expect_open))
    else:
        cur = stat_int(port, "curr_connections") - 1
        rss1 = rss_kib(pid)
        report(cur >= base + n, "under -c %d: all %d connections open at once "
               "(curr_connections %d; RSS %d -> %d KiB)" % (maxc, n, cur, rss0, rss1))
    for s in socks:
        s.close()
    back = wait_for(lambda: stat_int(port, "curr_connections") - 1 <= base + 1, 15)
    report(back, "once closed, the connection count comes back (to %d: the load "
           "client)" %
           (stat_int(port, "curr_connections") - 1))
    if n > expect_open:
        got = stat_int(port, "rejected_connections") - rejected0
        report(got == told, "stats rejected_connections counts them (%d)" % got)
    out, _ = load.communicate(timeout=30)
    parts = out.split()
    if len(parts) == 5 and parts[0] == "load":
        ops, errors, max_ms, p99_ms = int(parts[1]), int(parts[2]), float(parts[3]), float(parts[4])
        report(errors == 0 and ops > 0,
               "a client doing set+get throughout saw no error (%d round trips)" % ops,
               "%d errors" % errors)
        report(max_ms < 2000,
               "...and bounded latency (p99 %.1f ms, max %.1f ms)" % (p99_ms, max_ms))
    else:
        report(False, "the load client reported", repr(out))


def main():
    cmd = sys.argv[1]
    port = int(sys.argv[2])
    if cmd == "conns":
        check_conns(port, int(sys.argv[3]))
    elif cmd == "idle":
        check_idle(port, int(sys.argv[3]))
    elif cmd == "stall":
        check_stall(port, int(sys.argv[3]), int(sys.argv[4]))
    elif cmd == "flood":
        check_flood(port, int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    elif cmd == "load":
        run_load(port, float(sys.argv[3]))
        return
    else:
        sys.exit("unknown check " + cmd)
    sys.exit(1 if results["fail"] else 0)


main()
