/*
 * skew.c - the replicas' clock offsets and the bound on them (see skew.h).
 */
#include "skew.h"

#include <string.h>

void skew_init(struct skew *s, uint32_t n, uint32_t self, uint64_t max_skew_ms)
{
    memset(s, 0, sizeof(*s));
    s->n = n;
    s->self = self;
    s->max_skew_us = max_skew_ms * 1000u;
}

void skew_note(struct skew *s, uint32_t id, int64_t offset_us, uint64_t rtt_us,
               uint64_t now_ms)
{
    if (id >= TPC_REPLICAS_MAX || id == s->self)
        return;
    s->peer[id] = (struct skew_sample){offset_us, rtt_us, now_ms ? now_ms : 1};
}

int64_t skew_of(const struct skew *s, uint32_t id, uint64_t now_ms)
{
    const struct skew_sample *p;
    uint64_t off, half;

    if (id >= TPC_REPLICAS_MAX || id == s->self)
        return -1;
    p = &s->peer[id];
    if (p->at_ms == 0 || now_ms > p->at_ms + SKEW_SAMPLE_MAX_AGE_MS)
        return -1;
    off = p->offset_us < 0 ? (uint64_t)-(p->offset_us + 1) + 1 : (uint64_t)p->offset_us;
    half = p->rtt_us / 2;
    if (off <= half)
        return 0;
    off -= half;
    return off > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)off;
}

static bool too_far(const struct skew *s, uint32_t id, uint64_t now_ms)
{
    int64_t d = skew_of(s, id, now_ms);

    return s->max_skew_us > 0 && d >= 0 && (uint64_t)d > s->max_skew_us;
}

int skew_write_blocker(const struct skew *s, const uint32_t *ids, uint64_t now_ms)
{
    for (uint32_t i = 0; i < s->n; i++)
        if (ids[i] != s->self && too_far(s, ids[i], now_ms))
            return (int)ids[i];
    return -1;
}

bool skew_read_refused(const struct skew *s, const uint32_t *ids, uint64_t now_ms)
{
    uint32_t far = 0, others = s->n > 0 ? s->n - 1 : 0;

    for (uint32_t i = 0; i < s->n; i++)
        if (ids[i] != s->self && too_far(s, ids[i], now_ms))
            far++;
    return others > 0 && 2 * far > others;
}
