"""bench_hist.py - combine `clie bench --json` runs taken side by side.

Several clie bench processes driving one setup at once (one per replica)
each report their own latency histogram; every clie uses the same buckets,
so the histograms add up, and percentiles are taken of the sum as clie
takes them of its threads'. Used by bench/bench.sh and bench/bench_repl.sh.
"""


def merge(runs):
    """Returns (ops/s summed, errors summed, pct) where pct(p) is the p-th
    percentile of the merged histogram in microseconds (0.0 when empty)."""
    ops = sum(r["ops_per_sec"] for r in runs)
    errors = sum(r["measured"]["errors"]["total"] for r in runs)
    merged, top = {}, 0
    for r in runs:
        h = r["latency_histogram"]
        for b, c in zip(h["bucket_top"], h["count"]):
            merged[b] = merged.get(b, 0) + c
        top = max(top, h["max"])
    total = sum(merged.values())

    def pct(p):
        if total == 0:
            return 0.0
        rank = max(1, -(-p * total // 100))
        seen = 0
        for b in sorted(merged):
            seen += merged[b]
            if seen >= rank:
                return min(b, top) / 1000.0
        return top / 1000.0

    return ops, errors, pct
