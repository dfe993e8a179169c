#!/usr/bin/python3
"""test_chaos_check.py - the linearizability checker of tests/chaos/chaos.py fed
histories whose verdict is known (run by `make chaos-unit`, part of `make
test`, and first by `make chaos`).

Each history is a list of operations on one or more registers; times are
plain numbers. A checker that accepted everything, or rejected everything,
fails half of these.
"""
import json
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import chaos_check  # noqa: E402


class H:
    """A history under construction (key "k" unless said otherwise)."""

    def __init__(self):
        self.ops = []

    def _add(self, f, s, c, r, o=None, v=None, t=None, k="k", p=0, final=False):
        d = {"i": len(self.ops), "p": p, "k": k, "f": f, "s": s, "c": c, "r": r, "o": o}
        if v is not None:
            d["v"] = v
        if t is not None:
            d["t"] = t
        if final:
            d["final"] = True
        self.ops.append(d)
        return self

    def set(self, v, s, c, r="ok", **kw):
        return self._add("set", s, None if r == "unknown" else c, r,
                         "STORED" if r == "ok" else ("timeout" if r == "unknown" else None),
                         v=v, **kw)

    def set_unknown(self, v, s, **kw):
        return self._add("set", s, None, "unknown", "SERVER_ERROR replica 2 did not answer",
                         v=v, **kw)

    def get(self, val, s, c, **kw):
        return self._add("get", s, c, "ok", val, **kw)

    def gets(self, val, tok, s, c, **kw):
        return self._add("gets", s, c, "ok", None if val is None else [val, tok], **kw)

    def cas(self, tok, v, s, c, answer="STORED", **kw):
        r = "ok" if answer == "STORED" else ("unknown" if answer is None else "fail")
        return self._add("cas", s, None if r == "unknown" else c, r,
                         answer or "timeout", v=v, t=tok, **kw)

    def verdict(self):
        ok, lines = chaos_check.check_history(json.loads(json.dumps(self.ops)))
        return ok, lines


class Linearizable(unittest.TestCase):
    def ok(self, h):
        ok, lines = h.verdict()
        self.assertTrue(ok, "\n".join(lines))

    def bad(self, h, want=None):
        ok, lines = h.verdict()
        self.assertFalse(ok, "accepted a non-linearizable history:\n" + "\n".join(lines))
        if want:
            self.assertIn(want, "\n".join(lines))

    def test_empty_key_reads_miss(self):
        self.ok(H().get(None, 0, 1).gets(None, None, 2, 3))

    def test_sequential_set_get(self):
        self.ok(H().set("a", 0, 1).get("a", 2, 3).set("b", 4, 5).get("b", 6, 7))

    def test_stale_read_after_acknowledged_write(self):
        self.bad(H().set("a", 0, 1).set("b", 2, 3).get("a", 4, 5), "NOT linearizable")

    def test_read_of_the_future(self):
        # A get that completed before the set was invoked cannot see it.
        self.bad(H().get("a", 0, 1).set("a", 2, 3))

    def test_miss_after_acknowledged_write(self):
        self.bad(H().set("a", 0, 1).get(None, 2, 3))

    def test_lost_write_seen_by_final_read(self):
        h = H().set("a", 0, 1).set("b", 2, 3)
        h.gets("b", 20, 10, 11, final=True).gets("a", 10, 12, 13, final=True)
        self.bad(h)

    def test_replicas_disagree_at_the_end(self):
        h = H().set("a", 0, 1).set("b", 0.5, 3)  # concurrent: either may win
        h.get("b", 10, 11, final=True).get("a", 10, 11, final=True)
        self.bad(h)

    def test_concurrent_writes_either_order(self):
        for last in ("a", "b"):
            h = H().set("a", 0, 10).set("b", 1, 9).get(last, 11, 12)
            self.ok(h)

    def test_concurrent_read_sees_new_then_old(self):
        # set b overlaps both reads; a read saw b, a later read saw a again.
        self.bad(H().set("a", 0, 1).set("b", 2, 20).get("b", 3, 4).get("a", 5, 6))

    def test_concurrent_read_sees_old_then_new(self):
        self.ok(H().set("a", 0, 1).set("b", 2, 20).get("a", 3, 4).get("b", 5, 6))

    def test_cas_with_current_token(self):
        h = H().set("a", 0, 1).gets("a", 100, 2, 3).cas(100, "c", 4, 5).get("c", 6, 7)
        self.ok(h)

    def test_cas_succeeded_against_a_stale_token(self):
        h = H().set("a", 0, 1).gets("a", 100, 2, 3).set("b", 4, 5).cas(100, "c", 6, 7)
        self.bad(h)

    def test_cas_exists_is_definite(self):
        # Nothing else wrote: the token is current, EXISTS is wrong.
        self.bad(H().set("a", 0, 1).gets("a", 100, 2, 3).cas(100, "c", 4, 5, "EXISTS"))

    def test_cas_exists_after_another_write(self):
        h = H().set("a", 0, 1).gets("a", 100, 2, 3).set("b", 4, 5).cas(100, "c", 6, 7, "EXISTS")
        self.ok(h.get("b", 8, 9))

    def test_failed_cas_changed_something(self):
        h = H().set("a", 0, 1).gets("a", 100, 2, 3).set("b", 4, 5).cas(100, "c", 6, 7, "EXISTS")
        self.bad(h.get("c", 8, 9))

    def test_cas_not_found_on_a_present_key(self):
        h = H().set("a", 0, 1).gets("a", 100, 2, 3).cas(100, "c", 4, 5, "NOT_FOUND")
        self.bad(h)

    def test_two_cas_on_one_token_both_succeed(self):
        h = H().set("a", 0, 1).gets("a", 100, 2, 3)
        h.cas(100, "c", 4, 10, p=1).cas(100, "d", 4, 10, p=2)
        self.bad(h)

    def test_two_cas_on_one_token_one_succeeds(self):
        h = H().set("a", 0, 1).gets("a", 100, 2, 3)
        h.cas(100, "c", 4, 10, p=1).cas(100, "d", 4, 10, "EXISTS", p=2).get("c", 11, 12)
        self.ok(h)

    def test_unknown_write_that_took_effect(self):
        self.ok(H().set("a", 0, 1).set_unknown("b", 2).get("b", 5, 6))

    def test_unknown_write_that_never_happened(self):
        self.ok(H().set("a", 0, 1).set_unknown("b", 2).get("a", 20, 21))

    def test_unknown_write_seen_then_unseen(self):
        self.bad(H().set("a", 0, 1).set_unknown("b", 2).get("b", 5, 6).get("a", 7, 8))

    def test_unknown_write_seen_before_it_was_sent(self):
        self.bad(H().set("a", 0, 1).get("b", 2, 3).set_unknown("b", 5))

    def test_unknown_write_explains_a_failed_cas(self):
        # Only the unseen unknown write can make the token stale.
        h = H().set("a", 0, 1).gets("a", 100, 2, 3).set_unknown("x", 3.5)
        h.cas(100, "c", 4, 5, "EXISTS")
        self.ok(h)

    def test_unknown_cas_applies_only_when_it_matches(self):
        # The unknown cas expected a, but the key held b by then: it could not
        # have stored c.
        h = H().set("a", 0, 1).gets("a", 100, 2, 3).set("b", 4, 5)
        h.cas(100, "c", 6, None, None).get("c", 8, 9)
        self.bad(h)

    def test_unknown_cas_that_took_effect(self):
        h = H().set("a", 0, 1).gets("a", 100, 2, 3).cas(100, "c", 4, None, None).get("c", 8, 9)
        self.ok(h)

    def test_unknown_read_is_ignored(self):
        h = H().set("a", 0, 1)
        h._add("get", 2, None, "unknown", "timeout")
        self.ok(h.get("a", 3, 4))

    def test_token_with_two_values(self):
        h = H().set("a", 0, 1).gets("a", 100, 2, 3).set("b", 4, 5).gets("b", 100, 6, 7)
        self.bad(h, "two values")

    def test_value_with_two_tokens(self):
        h = H().set("a", 0, 1).gets("a", 100, 2, 3).gets("a", 101, 4, 5)
        self.bad(h, "two cas tokens")

    def test_read_of_a_value_never_written(self):
        self.bad(H().set("a", 0, 1).get("zz", 2, 3), "never written")

    def test_keys_are_independent(self):
        h = H().set("a", 0, 1, k="x").set("b", 0, 1, k="y")
        h.get("a", 2, 3, k="x").get("b", 2, 3, k="y")
        self.ok(h)
        h.get("a", 4, 5, k="y")
        self.bad(h, "key y: NOT linearizable")

    def test_many_concurrent_clients(self):
        # 6 clients, each writing then reading its own write while all overlap:
        # linearizable; found quickly despite the concurrency.
        h = H().set("v0", 0, 1)
        for p in range(6):
            h.set("w%d" % p, 2 + p * 0.01, 10, p=p)
        h.get("w3", 11, 12)
        for n in range(40):
            h.set_unknown("u%d" % n, 13 + n * 0.1, p=n % 6)
        h.get("u39", 30, 31).get("u39", 32, 33)
        self.ok(h)

    def test_long_history(self):
        # 3000 sequential-ish ops with overlaps between neighbours.
        h = H()
        t = 0.0
        prev = None
        for n in range(1000):
            h.set("s%d" % n, t, t + 1.5, p=n % 3)
            if prev:
                h.get(prev, t + 0.1, t + 0.2, p=(n + 1) % 3)
            h.get("s%d" % n, t + 1.6, t + 1.7, p=(n + 2) % 3)
            prev = "s%d" % n
            t += 2
        self.ok(h)
        h.get("s3", t + 1, t + 2)
        self.bad(h)


class Files(unittest.TestCase):
    def test_load_and_check_a_file(self):
        h = H().set("a", 0, 1).get("a", 2, 3)
        with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
            f.write(json.dumps({"meta": {"scenario": "test"}}) + "\n")
            for d in h.ops:
                f.write(json.dumps(d) + "\n")
            path = f.name
        try:
            meta, ops = chaos_check.load(path)
            self.assertEqual(meta["scenario"], "test")
            self.assertEqual(len(ops), 2)
            self.assertTrue(chaos_check.check_history(ops)[0])
        finally:
            os.unlink(path)


if __name__ == "__main__":
    unittest.main(verbosity=1)
