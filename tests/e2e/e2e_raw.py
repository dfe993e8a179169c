#!/usr/bin/python3
"""e2e_raw.py - byte-level checks against a running serve (called by test.sh).

Usage: e2e_raw.py PORT [--udp]

Sends malformed and edge-case requests over raw TCP sockets (and UDP
datagrams with --udp), checks each reply byte for byte, and checks that the
server stays up and that no other client's data changed. Prints one line per
check, "ok - ..." or "FAIL - ...", and exits 1 if any failed.
"""
import hashlib
import os
import random
import socket
import struct
import sys
import time

from e2e_util import read_until

HOST = "127.0.0.1"
PORT = int(sys.argv[1])
UDP = "--udp" in sys.argv[2:]
results = {"ok": 0, "fail": 0}


def report(good, desc, detail=""):
    if good:
        results["ok"] += 1
        print("ok - " + desc)
    else:
        results["fail"] += 1
        print("FAIL - " + desc + (": " + detail if detail else ""))


def conn(timeout=3.0):
    s = socket.create_connection((HOST, PORT), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def exchange(data, end=b"\r\n", s=None):
    own = s is None
    s = s or conn()
    s.sendall(data)
    r = read_until(s, end)
    if own:
        s.close()
    return r


def expect(desc, data, want, end=None, s=None):
    got = exchange(data, end or want[-2:], s)
    report(got == want, desc, "got %r want %r" % (got[:200], want[:200]))


def closed_without_reply(desc, data, wait=3.0):
    s = conn(timeout=wait)
    s.sendall(data)
    try:
        got = s.recv(100)
    except socket.timeout:
        got = b"<TIMEOUT>"
    except ConnectionResetError:
        got = b""
    s.close()
    report(got == b"", desc, "got %r" % got[:100])


def alive(desc):
    expect(desc, b"version\r\n", b"VERSION 1.6.0-tpckv-0.3.0\r\n")


# -- guard data: written first, must be untouched at the end -------------------
guard = {}
rnd = random.Random(os.getpid())
s = conn()
for i in range(50):
    k = b"guard:%d" % i
    v = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 300)))
    guard[k] = v
    s.sendall(b"set %s %d 0 %d\r\n%s\r\n" % (k, i, len(v), v))
    r = read_until(s, b"\r\n")
    if r != b"STORED\r\n":
        report(False, "guard write", repr(r))
s.close()


def guard_digest():
    s = conn()
    s.sendall(b"get " + b" ".join(sorted(guard)) + b"\r\n")
    r = read_until(s, b"END\r\n")
    s.close()
    return hashlib.sha256(r).hexdigest()


want_guard = hashlib.sha256(
    b"".join(b"VALUE %s %d %d\r\n%s\r\n" % (k, int(k.split(b":")[1]), len(guard[k]), guard[k])
             for k in sorted(guard)) + b"END\r\n").hexdigest()
report(guard_digest() == want_guard, "guard keys readable")

# -- malformed input, one class at a time ----------------------------------------
expect("unknown command", b"frobnicate x\r\n", b"ERROR\r\n")
expect("empty line", b"\r\n", b"ERROR\r\n")
expect("get without key", b"get\r\n", b"ERROR\r\n")
expect("bad flags number", b"set k abc 0 1\r\nx\r\n", b"CLIENT_ERROR bad command line format\r\n")
expect("bad exptime number", b"set k 0 soon 1\r\nx\r\n", b"CLIENT_ERROR bad command line format\r\n")
expect("negative length", b"set k 0 0 -1\r\n", b"CLIENT_ERROR bad command line format\r\n")
expect("huge length", b"set k 0 0 4294967295\r\n", b"CLIENT_ERROR bad command line format\r\n")
expect("cas without cas value", b"cas k 0 0 1\r\nx\r\nversion\r\n",
       b"ERROR\r\nVERSION 1.6.0-tpckv-0.3.0\r\n")
expect("bad incr delta", b"incr k x\r\n", b"CLIENT_ERROR invalid numeric delta argument\r\n")
expect("delete with extra args", b"delete a b c d e\r\n",
       b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n")
expect("key of 251 bytes", b"set " + b"k" * 251 + b" 0 0 1\r\nx\r\nget x\r\n",
       b"CLIENT_ERROR bad command line format\r\nEND\r\n",
       end=b"END\r\n")
expect("key with control character", b"get a\x01b\r\n",
       b"CLIENT_ERROR bad command line format\r\n")
expect("gat with an exptime and no key", b"gat 0\r\n", b"END\r\n")
expect("stats of an unknown group", b"stats nosuch\r\n", b"ERROR\r\n")
expect("value longer than announced", b"set vl 0 0 3\r\nabcdef\r\nget vl\r\n",
       b"CLIENT_ERROR bad data chunk\r\nERROR\r\nEND\r\n", end=b"END\r\n")
expect("data block missing \\r\\n", b"set nl 0 0 3\r\nabcXYget nl\r\n",
       b"CLIENT_ERROR bad data chunk\r\nEND\r\n", end=b"END\r\n")
expect("too many keys in one get", b"get" + b" k" * 100001 + b"\r\n",
       b"CLIENT_ERROR too many keys in one request\r\n")
expect("noreply error is silent", b"delete k 10 noreply\r\nversion\r\n",
       b"VERSION 1.6.0-tpckv-0.3.0\r\n")
closed_without_reply("line over 2048 bytes without newline: disconnect",
                     b"incr " + b" " * 4000)
closed_without_reply("HTTP request: disconnect", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
closed_without_reply("binary garbage: disconnect", bytes(rnd.getrandbits(8) for _ in range(5000))
                     .replace(b"\n", b"x"))
alive("alive after the disconnects")

# A value over --max-value: refused, its bytes swallowed, old value deleted.
mv = int(os.environ.get("MAX_VALUE", "1048576"))
s = conn()
s.sendall(b"set big 0 0 3\r\nold\r\n")
read_until(s, b"\r\n")
s.sendall(b"set big 0 0 %d\r\n" % (mv + 1) + b"B" * (mv + 1) + b"\r\nget big\r\n")
r = read_until(s, b"END\r\n")
s.close()
report(r == b"SERVER_ERROR object too large for cache\r\nEND\r\n", "oversized value refused",
       repr(r[:100]))

# Pipelined requests in one write, answered in order.
expect("pipelined requests answered in order",
       b"set p1 0 0 1\r\na\r\nset p2 0 0 1\r\nb\r\nget p1 p2\r\ndelete p1\r\nget p1\r\n",
       b"STORED\r\nSTORED\r\nVALUE p1 0 1\r\na\r\nVALUE p2 0 1\r\nb\r\nEND\r\nDELETED\r\nEND\r\n",
       end=b"DELETED\r\nEND\r\n")

# Pipelined writes overlap in the log (--max-conn-writes), yet every reply
# keeps its place: failed conditions, errors and reads that come after
# writes still in the log wait for them, and see them.
s = conn()
s.sendall(b"delete q1 noreply\r\ndelete q2 noreply\r\ndelete q3 noreply\r\nversion\r\n")
read_until(s, b"\r\n")
want = []
req = b""
for i in range(100):
    req += b"set pq%d 0 0 %d\r\n%d\r\n" % (i, len(b"%d" % i), i)
    want.append(b"STORED\r\n")
    if i % 10 == 9:
        req += b"append pq%d 0 0 1 noreply\r\nx\r\n" % i  # no reply
        req += b"replace missing%d 0 0 1\r\ny\r\n" % i   # NOT_STORED (answered in place)
        want.append(b"NOT_STORED\r\n")
        req += b"get pq%d\r\n" % i                           # sees its set and append
        want.append(b"VALUE pq%d 0 %d\r\n%dx\r\nEND\r\n" % (i, len(b"%d" % i) + 1, i))
req += b"set q1 0 0 1\r\na\r\nadd q1 0 0 1\r\nb\r\nset q2 0 0 1\r\n5\r\nincr q2 3\r\nbogus\r\n"
want += [b"STORED\r\n", b"NOT_STORED\r\n", b"STORED\r\n", b"8\r\n", b"ERROR\r\n"]
req += b"gets q1\r\n"
s.sendall(req)
got = read_until(s, b"\r\na\r\nEND\r\n")
prefix = b"".join(want)
ok = got.startswith(prefix) and got[len(prefix):].startswith(b"VALUE q1 0 1 ") and \
    got.endswith(b"\r\na\r\nEND\r\n")
report(ok, "136 pipelined requests (sets, noreply appends, failed replaces, add, incr, an "
       "error, gets): replies in order, each read sees the writes before it",
       "got %r" % got[:300] if not ok else "")
s.close()

# A request sent one byte at a time.
s = conn()
for b in b"set slow 5 0 4\r\nabcd\r\n":
    s.sendall(bytes([b]))
    time.sleep(0.001)
report(read_until(s, b"\r\n") == b"STORED\r\n", "request trickled one byte at a time")
s.close()

# A client that sends half a request and stalls does not hold up others.
stalled = conn()
stalled.sendall(b"set stall 0 0 100\r\nonly part of the value")
alive("others served while a client stalls mid-request")
expect("stalled client's key not stored", b"get stall\r\n", b"END\r\n")
stalled.sendall(b"x" * (100 - len(b"only part of the value")) + b"\r\n")
report(read_until(stalled, b"\r\n") == b"STORED\r\n", "stalled client completes later")
stalled.close()

# A client vanishing mid-value does not leave half a value behind.
s = conn()
s.sendall(b"set vanish 0 0 1000\r\n" + b"v" * 500)
s.close()
time.sleep(0.1)
expect("half-sent value is not stored", b"get vanish\r\n", b"END\r\n")

# -- UDP --------------------------------------------------------------------------
if UDP:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(2.0)

    def udp_req(payload, rid=7, seq=0, total=1):
        u.sendto(struct.pack(">HHHH", rid, seq, total, 0) + payload, (HOST, PORT))

    def udp_reply(rid):
        parts, total = {}, None
        while total is None or len(parts) < total:
            d = u.recv(65536)
            r, seq, tot, _ = struct.unpack(">HHHH", d[:8])
            if r != rid:
                continue
            total = tot
            parts[seq] = d[8:]
        return b"".join(parts[i] for i in range(total)), total

    udp_req(b"set u1 0 0 5\r\nhello\r\n", rid=1)
    report(udp_reply(1)[0] == b"STORED\r\n", "udp set")
    big = bytes(rnd.getrandbits(8) for _ in range(20000))
    s = conn()
    s.sendall(b"set ubig 0 0 %d\r\n%s\r\n" % (len(big), big))
    read_until(s, b"\r\n")
    s.close()
    udp_req(b"get ubig\r\n", rid=2)
    body, n = udp_reply(2)
    report(body == b"VALUE ubig 0 20000\r\n" + big + b"\r\nEND\r\n" and n == 15,
           "udp multi-datagram reply reassembles (%d datagrams)" % n)
    for desc, dgram in [("short datagram", b"\x00\x01\x00"),
                        ("multi-datagram request", struct.pack(">HHHH", 3, 0, 2, 0) + b"get u1\r\n"),
                        ("nonzero sequence", struct.pack(">HHHH", 3, 1, 1, 0) + b"get u1\r\n"),
                        ("garbage", bytes(rnd.getrandbits(8) for _ in range(300)))]:
        u.sendto(dgram, (HOST, PORT))
        u.settimeout(0.5)
        try:
            d = u.recv(65536)
            report(False, "udp %s dropped" % desc, "got %r" % d[:60])
        except socket.timeout:
            report(True, "udp %s dropped" % desc)
    u.settimeout(2.0)
    udp_req(b"get u1\r\n", rid=4)
    report(udp_reply(4)[0] == b"VALUE u1 0 5\r\nhello\r\nEND\r\n", "udp still served after bad datagrams")
    udp_req(b"set u2 0 0 10\r\nabc", rid=5)
    report(udp_reply(5)[0].startswith(b"CLIENT_ERROR incomplete request"),
           "udp request cut short gets CLIENT_ERROR")
    u.close()

# -- the rest of the data is untouched --------------------------------------------
report(guard_digest() == want_guard, "guard keys unchanged by all of the above")
alive("server still up")
sys.exit(1 if results["fail"] else 0)
