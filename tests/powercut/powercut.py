#!/usr/bin/python3
"""powercut.py - power cuts, modelled: only what was fsynced survives.

Each round starts serve (single server) under tests/powercut/pcshim.so on a fresh
root directory, drives writes through several connections (each its own
keys, overwriting them: one request at a time, so every key's history is
known), kills serve with SIGKILL at a random moment, and builds the image a
power cut could leave: the directory entries as of each directory's last
fsync, each file's content as of its last fsync, and - in some rounds - a
random subset of the 4 KiB pages written since, in any order (holes). Then
a plain serve starts on that image by itself and every acknowledged write
must read back (its value, or the value of the one write to that key still
in flight at the cut); nothing may read back that was never written. Under
--fsync none acknowledged writes may be lost (that mode's documented risk):
there the image must still start by itself (RUN says the machine booted
again: the loss is reported) and hold only values that were written.

  powercut.py --serve ./serve --shim build/rel/tests/powercut/pcshim.so [--rounds N]
              [--seed S] [--keep]

Prints one line per check and ends with "N passed, N failed".
"""
import argparse
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

PAGE = 4096


class Client:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.f = self.s.makefile("rb")

    def set(self, key, value):
        self.s.sendall(b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value))
        return self.f.readline()

    def get(self, key):
        self.s.sendall(b"get %s\r\n" % key)
        line = self.f.readline()
        if line == b"END\r\n":
            return None
        m = re.match(rb"VALUE \S+ \d+ (\d+)", line)
        if not m:
            raise RuntimeError("get %r: %r" % (key, line))
        data = self.f.read(int(m.group(1)) + 2)[:-2]
        if self.f.readline() != b"END\r\n":
            raise RuntimeError("get %r: no END" % key)
        return data

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_listening(log, proc, seconds=15):
    end = time.time() + seconds
    while time.time() < end:
        try:
            text = open(log, errors="replace").read()
        except OSError:
            text = ""
        if "listening on" in text:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def writer(port, tid, rng, hist, stop, nkeys):
    """One connection: sets its own keys t<tid>:<i>, one at a time.
    hist[key] = (last acknowledged value or None, value in flight or None)."""
    try:
        c = Client(port)
    except OSError:
        return
    n = 0
    while not stop.is_set():
        key = b"t%d:%d" % (tid, rng.randrange(nkeys))
        n += 1
        size = rng.randrange(8, 3000) if rng.random() < 0.7 else rng.randrange(3000, 40000)
        value = b"%s=%d:" % (key, n) + os.urandom(size // 2).hex().encode()
        acked, _ = hist.get(key, (None, None))
        hist[key] = (acked, value)
        try:
            reply = c.set(key, value)
        except OSError:
            return  # the cut: this one stays in flight
        if reply == b"":
            return  # the cut: this one stays in flight
        if reply != b"STORED\r\n":
            hist[b"#bad"] = (reply, None)  # a refusal nobody expected: the round fails
            return
        hist[key] = (value, None)
        hist[b"#acked"] = (hist.get(b"#acked", (0, None))[0] + 1, None)
    c.close()


# ---- the image -------------------------------------------------------------------


def read_journal(state):
    """Per inode key: the (offset, length) writes since its last sync, in
    order, from every process's journal."""
    pending = {}
    names = [n for n in os.listdir(state) if n.startswith("j") and n[1:].isdigit()]
    for name in sorted(names, key=lambda n: int(n[1:])):
        for line in open(os.path.join(state, name)):
            parts = line.split()
            if parts[0] == "S":
                pending[parts[1]] = []
            elif parts[0] == "W":
                pending.setdefault(parts[1], []).append((int(parts[2]), int(parts[3])))
    return pending


def find_live(root):
    """inode key -> path of the file as it is now (what the dead process left)."""
    live = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            st = os.lstat(p)
            live["%d_%d" % (st.st_dev, st.st_ino)] = p
    return live


def build_image(root, state, img, rng, page_survival):
    pending = read_journal(state)
    live = find_live(root)
    st = os.stat(root)
    rootkey = "%d_%d" % (st.st_dev, st.st_ino)
    stats = {"files": 0, "pages": 0}

    def place(key, dst):
        src = os.path.join(state, "f" + key)
        data = bytearray(open(src, "rb").read()) if os.path.exists(src) else bytearray()
        if page_survival > 0 and key in pending and key in live:
            cur = open(live[key], "rb").read()
            pages = set()
            for off, n in pending[key]:
                for p in range(off // PAGE, (off + n + PAGE - 1) // PAGE):
                    pages.add(p)
            for p in sorted(pages):
                if rng.random() < page_survival:
                    lo, hi = p * PAGE, min((p + 1) * PAGE, len(cur))
                    if lo >= hi:
                        continue
                    if len(data) < hi:
                        data.extend(b"\0" * (hi - len(data)))
                    data[lo:hi] = cur[lo:hi]
                    stats["pages"] += 1
        with open(dst, "wb") as f:
            f.write(data)
        stats["files"] += 1

    def walk(key, dst):
        os.makedirs(dst, exist_ok=True)
        listing = os.path.join(state, "d" + key)
        if not os.path.exists(listing):
            return  # created, never synced: empty after the cut
        for line in open(listing):
            name, k2, kind = line.rstrip("\n").split("\t")
            if kind == "d":
                walk(k2, os.path.join(dst, name))
            elif kind == "f":
                place(k2, os.path.join(dst, name))

    walk(rootkey, img)
    return stats


# ---- a round ---------------------------------------------------------------------


def run_phase(args, mode, root, state, log, rng, hist, tid_base, segment=None, snapshot=None):
    """serve under the shim on root, writers for a random while, then kill -9
    (serve and any snapshot child). Returns (writes acknowledged, a reply
    other than STORED or None), or None if serve did not start (the log
    says why)."""
    port = free_port()
    env = dict(os.environ, PCSHIM_ROOT=root, PCSHIM_STATE=state, LD_PRELOAD=args.shim)
    cmd = [args.serve, "-s", "127.0.0.1", "-p", str(port), "-t", "-d", os.path.join(root, "data"),
           "--fsync", mode, "--wal-segment-bytes", segment or rng.choice(["256k", "4m"]),
           "--snapshot-bytes", snapshot or rng.choice(["1m", "16m"]), "--log-file", log]
    if mode == "batch":
        # Long intervals: big batches in flight at the cut (holes in them).
        cmd += ["--fsync-interval", str(rng.choice([2, 20, 50]))]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        if not wait_listening(log, proc):
            return None
        stop, threads = threading.Event(), []
        for t in range(args.clients):
            th = threading.Thread(target=writer, args=(port, tid_base + t,
                                                       random.Random(rng.random()), hist, stop, 40))
            th.start()
            threads.append(th)
        time.sleep(rng.uniform(0.4, 1.6))
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                  text=True).stdout.split()
        os.kill(proc.pid, signal.SIGKILL)
        for c in children:
            try:
                os.kill(int(c), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        proc.wait()
        stop.set()
        for th in threads:
            th.join(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    time.sleep(0.1)  # a killed snapshot child is gone
    bad = hist.pop(b"#bad", (None, None))[0]
    return hist.pop(b"#acked", (0, None))[0], bad


def round_once(args, mode, rnd, rng, page_survival, after_none, base, report):
    """One power cut under mode. after_none: first a run under --fsync none
    ended by kill -9 (no power cut: the kernel kept its records), then the
    run under mode on the same directory, then the cut. What the second run
    served it must keep, the first run's records included."""
    name = "%s round %d%s" % (mode, rnd, " (after a kill -9 under --fsync none)"
                              if after_none else "")
    work = os.path.join(base, "%s-%d" % (mode, rnd))
    root, state, img = (os.path.join(work, x) for x in ("root", "state", "img"))
    for d in (root, state):
        os.makedirs(d)
    hist = {}
    log = os.path.join(work, "serve.log")
    # After a run under none, no snapshot, and one large segment: what that
    # run wrote stays in its unsynced segment unless recovery syncs it.
    big = "64m" if after_none else None
    if after_none:
        if run_phase(args, "none", root, state, log + ".1", rng, hist, 100, big, big) is None:
            report(False, "%s: serve did not start under the shim: %s" % (name, tail(log + ".1")))
            return
    got = run_phase(args, mode, root, state, log, rng, hist, 0, None, big)
    if got is None:
        report(False, "%s: serve did not start under the shim: %s" % (name, tail(log)))
        return
    acked, bad = got
    if bad is not None or acked == 0:
        # A round that acknowledged nothing proves nothing.
        report(False, "%s: the writers were refused (%r) or nothing was acknowledged (%d)" %
               (name, bad, acked))
        return
    st = build_image(root, state, img, rng, page_survival)
    if mode == "none":
        # The machine booted again: RUN's boot id is another one.
        run = os.path.join(img, "data", "RUN")
        if os.path.exists(run):
            text = open(run).read()
            open(run, "w").write(re.sub(r"(?m)^boot .*$", "boot powercut-test", text))
    log2 = os.path.join(work, "after.log")
    port2 = free_port()
    p2 = subprocess.Popen([args.serve, "-s", "127.0.0.1", "-p", str(port2), "-t", "-d",
                           os.path.join(img, "data"), "--fsync", mode, "--log-file", log2],
                          stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        if not wait_listening(log2, p2):
            report(False, "%s: serve does not start by itself on the image: %s" %
                   (name, tail(log2)))
            return
        c = Client(port2)
        lost, wrong, present = [], [], 0
        for key, (a, inflight) in sorted(hist.items()):
            got = c.get(key)
            if got is not None:
                present += 1
                if mode == "none":
                    written = got.startswith(key + b"=")  # some write of this key
                else:
                    written = got in {a, inflight} - {None}  # the last acknowledged, or later
                if not written:
                    wrong.append(key)
            if a is not None and got is None and mode != "none":
                lost.append(key)
        c.close()
        cut = "; %d unsynced pages kept" % st["pages"] if page_survival else ""
        after = open(log2, errors="replace").read()
        holes = after.count("a hole there") + after.count("a hole left by the power cut")
        if holes:
            cut += "; %d hole(s) cut by recovery" % holes
        if mode == "none":
            report(not wrong,
                   "%s: %d writes acknowledged, %d of %d keys read back after the cut%s; "
                   "nothing that was never written%s" %
                   (name, acked, present, len(hist), cut,
                    "" if not wrong else " - WRONG: %r" % wrong[:3]))
        else:
            report(not lost and not wrong,
                   "%s: %d writes acknowledged, the last of each key (%d keys) reads back "
                   "after the cut%s%s" %
                   (name, acked, len(hist), cut,
                    "" if not lost and not wrong else
                    " - LOST %r WRONG %r (image: %s)" % (lost[:3], wrong[:3], img)))
    finally:
        p2.send_signal(signal.SIGTERM)
        try:
            rc = p2.wait(10)
        except subprocess.TimeoutExpired:
            p2.kill()
            rc = p2.wait()
        if rc != 0:
            report(False, "%s: serve on the image did not stop cleanly (exit %d)" % (name, rc))


def tail(path, n=3):
    try:
        return " | ".join(open(path, errors="replace").read().strip().splitlines()[-n:])
    except OSError:
        return "(no log)"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--serve", default="./serve")
    ap.add_argument("--shim", required=True)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    args.shim = os.path.abspath(args.shim)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    print("== power cuts: seed %d (replay with --seed %d)" % (seed, seed), flush=True)
    rng = random.Random(seed)
    counts = [0, 0]

    def report(ok, text):
        counts[0 if ok else 1] += 1
        print("%s - %s" % ("ok  " if ok else "FAIL", text), flush=True)

    base = tempfile.mkdtemp(prefix="tpckv-powercut.")
    try:
        for mode in ("always", "batch", "none"):
            for rnd in range(args.rounds):
                # Every other round lets some unsynced pages through (holes);
                # under always and batch, every other one follows a kill -9
                # of a run under --fsync none.
                round_once(args, mode, rnd, rng, 0.5 if rnd % 2 else 0.0,
                           mode != "none" and rnd % 2 == 0, base, report)
    finally:
        if args.keep or counts[1]:
            print("powercut.py: kept %s" % base, file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    print("%d passed, %d failed" % tuple(counts))
    sys.exit(1 if counts[1] else 0)


if __name__ == "__main__":
    main()
