/*
 * hist.c - the log-linear latency histogram (see hist.h for the layout).
 *
 * Bucket index: below 2 * HIST_SUB the value itself. Above, with msb the
 * position of the highest set bit and shift = msb - 7, the value shifted
 * right by shift lies in [128, 256): that is the bucket's offset within
 * group `shift`, and groups follow each other every HIST_SUB buckets (group
 * 1 starts at index 256, right after the exact ones).
 */
#include "hist.h"

#include <math.h>
#include <string.h>

void hist_init(struct hist *h)
{
    memset(h, 0, sizeof(*h));
    h->min_ns = UINT64_MAX;
}

unsigned hist_index(uint64_t ns)
{
    unsigned msb, shift;

    if (ns < 2 * HIST_SUB)
        return (unsigned)ns;
    if (ns > HIST_RANGE_MAX_NS)
        return HIST_BUCKETS - 1;
    msb = 63u - (unsigned)__builtin_clzll(ns);
    shift = msb - 7;
    return shift * HIST_SUB + (unsigned)(ns >> shift);
}

uint64_t hist_bucket_low(unsigned i)
{
    unsigned shift;

    if (i < 2 * HIST_SUB)
        return i;
    shift = i / HIST_SUB - 1;
    return (uint64_t)(i % HIST_SUB + HIST_SUB) << shift;
}

uint64_t hist_bucket_high(unsigned i)
{
    unsigned shift;

    if (i < 2 * HIST_SUB)
        return i;
    shift = i / HIST_SUB - 1;
    return (((uint64_t)(i % HIST_SUB + HIST_SUB) + 1) << shift) - 1;
}

void hist_record(struct hist *h, uint64_t ns)
{
    h->counts[hist_index(ns)]++;
    h->total++;
    if (ns > HIST_RANGE_MAX_NS)
        h->overflow++;
    h->sum_ns += (double)ns;
    if (ns > h->max_ns)
        h->max_ns = ns;
    if (ns < h->min_ns)
        h->min_ns = ns;
}

void hist_add_bucket(struct hist *h, unsigned i, uint64_t n)
{
    h->counts[i] += n;
    h->total += n;
}

void hist_merge(struct hist *into, const struct hist *from)
{
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        into->counts[i] += from->counts[i];
    into->total += from->total;
    into->overflow += from->overflow;
    into->sum_ns += from->sum_ns;
    if (from->max_ns > into->max_ns)
        into->max_ns = from->max_ns;
    if (from->min_ns < into->min_ns)
        into->min_ns = from->min_ns;
}

uint64_t hist_percentile(const struct hist *h, double p)
{
    uint64_t rank, seen = 0;

    if (h->total == 0)
        return 0;
    if (!(p > 0))
        p = 0;
    if (p > 100)
        p = 100;
    rank = (uint64_t)ceil(p / 100.0 * (double)h->total);
    if (rank < 1)
        rank = 1;
    if (rank > h->total)
        rank = h->total;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= rank) {
            uint64_t v = hist_bucket_high(i);
            /* The last bucket's top says nothing about what was clamped into
             * it, and no value is above the maximum anyway. */
            return v < h->max_ns ? v : h->max_ns;
        }
    }
    return h->max_ns;
}

uint64_t hist_count(const struct hist *h)
{
    return h->total;
}

uint64_t hist_max(const struct hist *h)
{
    return h->total ? h->max_ns : 0;
}

double hist_mean(const struct hist *h)
{
    return h->total ? h->sum_ns / (double)h->total : 0.0;
}
