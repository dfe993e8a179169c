#!/usr/bin/python3
"""chaos_check.py - linearizability checker for the histories tests/chaos/chaos.py
records (a register per key, with gets/cas), and the history file format.

HISTORY FILE (JSON lines). The first line is a header object with "meta":
{...} (scenario, seed, settings); every other line is one operation:

    {"i": 17, "p": 3, "k": "k2", "f": "cas", "v": "c3-41", "t": 8812, "e": "c1-7",
     "s": 12.031, "c": 12.044, "r": "ok", "o": "STORED"}

  i  operation id, unique in the file     p  client (process) id
  k  key                                  f  set | get | gets | cas
  v  value written (set, cas)             t  cas token sent (cas)
  e  the value the gets that gave t saw (cas; informational, the checker
     looks the token up itself)
  s  invocation time, c  completion time (seconds, one monotonic clock;
     c is null when the outcome is unknown)
  r  ok | fail | unknown
  o  result: get: the value or null (a miss); gets: [value, token] or null;
     cas: STORED, EXISTS or NOT_FOUND; unknown: why (timeout, SERVER_ERROR ...)

Lines with "nemesis" say when a fault began or ended (for a reader; the
checker skips them).

A "fail" is definite: a cas answered EXISTS or NOT_FOUND changed nothing.
An "unknown" write may have taken effect at any moment after its
invocation, or never; an unknown read carries no information and is dropped.
Lines with "final": true are the reads of every key from every replica after
the faults were healed; they are ordinary gets to the checker, so an
acknowledged write that is lost, or replicas that disagree, make the history
non-linearizable.

MODEL. Each key is a register holding a value or nothing (the initial
state). set(v) makes it v. get returns the value (null: a miss). gets returns
the value and its cas token. cas(t, v) stores v iff the current value's token
is t (STORED), else answers EXISTS, or NOT_FOUND when the key holds nothing.
Every value written is unique, and the token of a value is the id of the
transaction that wrote it, the same on every replica, so the map between
tokens and values seen by gets must be one-to-one (checked first), and a cas
with token t is a compare-and-set against the value t was seen with.

SEARCH. Keys are independent (a register per key, P-compositionality), so
each key's history is checked on its own with the Wing & Gong algorithm as
Lowe refined it: entries (calls and returns) in a linked list sorted by
time; the first call whose operation the model accepts is linearized (its
call and return lifted out of the list), and meeting a return whose
operation is not linearized yet undoes the most recent choice. A set of
(linearized ops as a bitset, model state) pairs already explored cuts
repeated work. An unknown operation returns at +infinity: it may be
linearized anywhere after its call, and leaving it to the end is the same
as it never having happened, so the search succeeds once only unknown
operations remain.

Two sound prunings keep it fast: (1) values are unique and never come back
(there is no delete), so a write may not be linearized while an operation
still to be linearized needs the current value (a read that returned it, a
cas that succeeded against it); (2) the check first runs without the
unknown writes whose value no one ever saw: a linearization without them is
one where they never took effect. Only if that fails is the key checked
again with them (they can explain a cas that failed with EXISTS).
"""
import json
import math
import sys

INF = math.inf
BUDGET_STEPS = 3_000_000  # per key and pass; past it the verdict is "undecided"


class Op:
    __slots__ = ("i", "p", "k", "f", "v", "t", "s", "c", "r", "o", "final",
                 "exp", "ret", "needs", "writes", "raw")

    def __init__(self, d):
        self.raw = d
        self.i = d["i"]
        self.p = d.get("p")
        self.k = d["k"]
        self.f = d["f"]
        self.v = d.get("v")
        self.t = d.get("t")
        self.s = float(d["s"])
        self.c = None if d.get("c") is None else float(d["c"])
        self.r = d["r"]
        self.o = d.get("o")
        self.final = bool(d.get("final"))
        self.exp = None  # cas: the value its token stands for
        self.ret = INF if self.r == "unknown" else self.c
        self.needs = None  # the state this op requires to be linearized (definite reads, cas)
        self.writes = False

    def __repr__(self):
        return describe(self)


def describe(op):
    d = op.raw
    what = {"set": "set(%s)" % d.get("v"),
            "get": "get",
            "gets": "gets",
            "cas": "cas(token %s -> %s)" % (d.get("t"), d.get("v"))}[op.f]
    end = "?" if op.c is None else "%.3f" % op.c
    res = d.get("o")
    if op.f == "cas" and op.exp is not None:
        what = "cas(token %s = %s -> %s)" % (d.get("t"), op.exp, d.get("v"))
    return "#%d client %s %s %s [%.3f, %s] %s -> %s" % (
        op.i, op.p, "final" if op.final else "", what, op.s, end, op.r, json.dumps(res))


def load(path):
    """(meta dict, list of op dicts) from a history file."""
    meta, ops = {}, []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                d = json.loads(line)
            except ValueError as e:
                raise ValueError("%s:%d: not JSON: %s" % (path, n, e))
            if "meta" in d:
                meta = d["meta"]
            elif "nemesis" in d:
                continue  # a fault's start or end, for the reader
            else:
                ops.append(d)
    return meta, ops


# ---- tokens -------------------------------------------------------------------------


def token_map(ops):
    """token -> value from every successful gets; also the problems: a token
    seen with two values, or a value seen with two tokens."""
    by_token, by_value, problems = {}, {}, []
    for op in ops:
        if op.f != "gets" or op.r != "ok" or op.o is None:
            continue
        val, tok = op.o[0], op.o[1]
        key_tok = (op.k, tok)
        key_val = (op.k, val)
        if key_tok in by_token and by_token[key_tok][0] != val:
            problems.append("key %s: cas token %s seen with two values: %s (%s) and %s (%s)" % (
                op.k, tok, json.dumps(by_token[key_tok][0]), describe(by_token[key_tok][1]),
                json.dumps(val), describe(op)))
        by_token.setdefault(key_tok, (val, op))
        if key_val in by_value and by_value[key_val][0] != tok:
            problems.append("key %s: value %s seen with two cas tokens: %s (%s) and %s (%s)" % (
                op.k, json.dumps(val), by_value[key_val][0], describe(by_value[key_val][1]),
                tok, describe(op)))
        by_value.setdefault(key_val, (tok, op))
    return {k: v[0] for k, v in by_token.items()}, problems


# ---- one key ------------------------------------------------------------------------


class Verdict:
    def __init__(self, ok, detail="", undecided=False, steps=0):
        self.ok = ok
        self.detail = detail
        self.undecided = undecided
        self.steps = steps


def prepare(ops, tokens, problems):
    """Ops the search takes for one key: definite ones, plus unknown writes.
    Sets each op's needs/writes. Returns (ops, observed values)."""
    out = []
    observed = set()
    for op in ops:
        if op.r == "unknown" and op.f in ("get", "gets"):
            continue  # a read with no answer tells nothing
        if op.f == "cas":
            op.exp = tokens.get((op.k, op.t))
            if op.exp is None:
                if op.r == "ok":
                    problems.append("key %s: %s succeeded with a token no gets ever returned" % (
                        op.k, describe(op)))
                    continue
                # An unknown or failed cas whose token was never seen can't match
                # any value we know: it changes nothing.
                if op.r == "fail" and op.o not in ("EXISTS", "NOT_FOUND"):
                    problems.append("key %s: %s: unexpected answer" % (op.k, describe(op)))
                continue
        if op.r == "ok":
            if op.f == "get":
                op.needs = ("v", op.o)
                observed.add(op.o)
            elif op.f == "gets":
                op.needs = ("v", None if op.o is None else op.o[0])
                observed.add(op.needs[1])
            elif op.f == "cas":
                if op.o != "STORED":
                    problems.append("key %s: %s: ok but answered %r" % (op.k, describe(op), op.o))
                    continue
                op.needs = ("v", op.exp)
                op.writes = True
            else:
                op.writes = True
        elif op.r == "fail":
            if op.f != "cas" or op.o not in ("EXISTS", "NOT_FOUND"):
                problems.append("key %s: %s: a definite failure the model has no place for" % (
                    op.k, describe(op)))
                continue
            op.needs = ("absent",) if op.o == "NOT_FOUND" else ("other", op.exp)
        else:  # unknown write
            if op.f not in ("set", "cas"):
                continue
            op.writes = True
        out.append(op)
    return out, observed


def step(op, state):
    """(accepted, new state) for linearizing op in state."""
    f = op.f
    if op.r == "unknown":
        if f == "set":
            return True, op.v
        return True, (op.v if state == op.exp else state)  # cas: applies iff it matches
    need = op.needs
    if need is not None:
        kind = need[0]
        if kind == "v":
            if state != need[1]:
                return False, state
        elif kind == "absent":
            if state is not None:
                return False, state
        else:  # EXISTS: a value, not the expected one
            if state is None or state == need[1]:
                return False, state
    if f == "set" or (f == "cas" and op.r == "ok"):
        return True, op.v
    return True, state


def check_ops(ops, budget=BUDGET_STEPS):
    """Wing & Gong / Lowe search over one key's prepared ops (see the header)."""
    n = len(ops)
    if n == 0:
        return Verdict(True)
    # Entries: (time, kind, idx): calls sort before returns at equal times, so
    # ops that touch are concurrent (real-time order needs a strict gap).
    ent = []
    for idx, op in enumerate(ops):
        ent.append((op.s, 0, idx))
        ent.append((op.ret, 1, idx))
    ent.sort(key=lambda e: (e[0], e[1]))
    m = len(ent)
    # Doubly linked list over entry positions 0..m-1, head sentinel m.
    nxt = list(range(1, m + 1)) + [0]
    prv = [m] + list(range(0, m - 1)) + [0]
    nxt[m - 1] = -1
    nxt[m] = 0
    prv[m] = -1
    HEAD = m
    is_call = [e[1] == 0 for e in ent]
    op_of = [e[2] for e in ent]
    ret_pos = [0] * n
    call_pos = [0] * n
    for pos, e in enumerate(ent):
        if e[1] == 0:
            call_pos[e[2]] = pos
        else:
            ret_pos[e[2]] = pos

    def lift(pos):
        # Remove a call and its return.
        for p in (pos, ret_pos[op_of[pos]]):
            a, b = prv[p], nxt[p]
            nxt[a] = b
            if b != -1:
                prv[b] = a

    def unlift(pos):
        for p in (ret_pos[op_of[pos]], pos):
            a, b = prv[p], nxt[p]
            nxt[a] = p
            if b != -1:
                prv[b] = p

    # need_count[value]: definite ops not yet linearized that require the
    # register to hold value (pruning 1).
    need_count = {}
    for op in ops:
        if op.needs is not None and op.needs[0] == "v":
            need_count[op.needs[1]] = need_count.get(op.needs[1], 0) + 1
    definite_left = sum(1 for op in ops if op.r != "unknown")

    state = None
    lin = 0
    cache = set()
    stack = []
    entry = nxt[HEAD]
    steps = 0
    best = (-1, None, None)  # (definite ops linearized, blocking op, state)
    done_definite = 0
    while True:
        if definite_left == 0:
            return Verdict(True, steps=steps)
        steps += 1
        if steps > budget:
            return Verdict(False, "search budget of %d steps exhausted (%d ops)" % (budget, n),
                           undecided=True, steps=steps)
        if entry == -1:  # cannot happen: definite returns remain
            break
        if is_call[entry]:
            idx = op_of[entry]
            op = ops[idx]
            ok, new = step(op, state)
            if ok and op.writes and new != state:
                # Pruning 1: overwriting a value some pending op still needs.
                pending = need_count.get(state, 0)
                if op.needs is not None and op.needs[0] == "v" and op.needs[1] == state:
                    pending -= 1
                if pending > 0:
                    ok = False
            if ok:
                nlin = lin | (1 << idx)
                key = (nlin, new)
                if key not in cache:
                    cache.add(key)
                    stack.append((entry, state))
                    if op.needs is not None and op.needs[0] == "v":
                        need_count[op.needs[1]] -= 1
                    if op.r != "unknown":
                        definite_left -= 1
                        done_definite += 1
                    state = new
                    lin = nlin
                    lift(entry)
                    entry = nxt[HEAD]
                    continue
            entry = nxt[entry]
        else:
            if done_definite > best[0]:
                best = (done_definite, ops[op_of[entry]], state)
            if not stack:
                break
            pos, state = stack.pop()
            idx = op_of[pos]
            op = ops[idx]
            lin &= ~(1 << idx)
            if op.needs is not None and op.needs[0] == "v":
                need_count[op.needs[1]] += 1
            if op.r != "unknown":
                definite_left += 1
                done_definite -= 1
            unlift(pos)
            entry = nxt[pos]
    blocked, st = best[1], best[2]
    detail = "no linearization: at best %d of %d definite ops fit; then %s could not be placed " \
             "(the register held %s)" % (best[0], sum(1 for o in ops if o.r != "unknown"),
                                          describe(blocked) if blocked else "?", json.dumps(st))
    return Verdict(False, detail, steps=steps)


def check_key(key, ops, tokens, problems):
    mine, observed = prepare(ops, tokens, problems)
    # Pass 1: without the unknown writes no one saw.
    first = [op for op in mine if not (op.r == "unknown" and op.v not in observed)]
    v = check_ops(first)
    if v.ok:
        return v
    if len(first) == len(mine):
        return v
    v2 = check_ops(mine)
    if v2.ok:
        return v2
    if v2.undecided and not v.undecided:
        v2.detail = v.detail + "; with every unknown write: " + v2.detail
    return v2


def check_history(op_dicts):
    """Checks a whole history. Returns (ok, lines): lines describe each key's
    verdict and every problem found."""
    ops = [Op(d) for d in op_dicts]
    ids = set()
    problems = []
    for op in ops:
        if op.i in ids:
            problems.append("operation id %s appears twice" % op.i)
        ids.add(op.i)
        if op.r not in ("ok", "fail", "unknown") or op.f not in ("set", "get", "gets", "cas"):
            problems.append("malformed operation: %s" % json.dumps(op.raw))
    ops = [op for op in ops if op.r in ("ok", "fail", "unknown")
           and op.f in ("set", "get", "gets", "cas")]
    tokens, tprob = token_map(ops)
    problems += tprob
    values = {}
    for op in ops:
        if op.f in ("set", "cas") and op.v is not None:
            if (op.k, op.v) in values:
                problems.append("key %s: value %s written twice (ops #%d and #%d): the "
                                "history is unusable" % (op.k, op.v, values[(op.k, op.v)], op.i))
            values[(op.k, op.v)] = op.i
    # A read must return something written to that key (or nothing).
    for op in ops:
        if op.r != "ok" or op.f not in ("get", "gets"):
            continue
        val = op.o if op.f == "get" else (None if op.o is None else op.o[0])
        if val is not None and (op.k, val) not in values:
            problems.append("key %s: %s read a value never written" % (op.k, describe(op)))
    lines = []
    ok = not problems
    by_key = {}
    for op in ops:
        by_key.setdefault(op.k, []).append(op)
    for key in sorted(by_key):
        v = check_key(key, by_key[key], tokens, problems)
        n = len(by_key[key])
        if v.ok:
            lines.append("key %s: linearizable (%d ops, %d search steps)" % (key, n, v.steps))
        else:
            ok = False
            lines.append("key %s: %s: %s" % (
                key, "UNDECIDED" if v.undecided else "NOT linearizable", v.detail))
    for p in problems:
        lines.append("problem: " + p)
    ok = ok and not problems
    return ok, lines


def main(argv):
    if len(argv) != 2:
        print("usage: chaos_check.py HISTORY.jsonl", file=sys.stderr)
        return 2
    meta, ops = load(argv[1])
    ok, lines = check_history(ops)
    for line in lines:
        print(line)
    print("verdict: %s" % ("linearizable" if ok else "NOT linearizable"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
