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

void skew_forget(struct skew *s)
{
    memset(s->peer, 0, sizeof(s->peer));
}

/* The sample of peer id if it still counts, else NULL. */
static const struct skew_sample *fresh(const struct skew *s, uint32_t id, uint64_t now_ms)
{
    const struct skew_sample *p;

    if (id >= TPC_REPLICAS_MAX || id == s->self)
        return NULL;
    p = &s->peer[id];
    if (p->at_ms == 0 || now_ms > p->at_ms + SKEW_SAMPLE_MAX_AGE_MS)
        return NULL;
    return p;
}

/* |a - b| minus the uncertainty u (at least 0), without overflow. */
static int64_t apart(int64_t a, int64_t b, uint64_t u)
{
    uint64_t d = a >= b ? (uint64_t)a - (uint64_t)b : (uint64_t)b - (uint64_t)a;

    if (d <= u)
        return 0;
    d -= u;
    return d > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)d;
}

int64_t skew_of(const struct skew *s, uint32_t id, uint64_t now_ms)
{
    const struct skew_sample *p = fresh(s, id, now_ms);

    return p ? apart(p->offset_us, 0, p->rtt_us / 2) : -1;
}

static bool too_far(const struct skew *s, int64_t apart_us)
{
    return s->max_skew_us > 0 && (uint64_t)apart_us > s->max_skew_us;
}

bool skew_write_check(const struct skew *s, const uint32_t *ids, uint64_t now_ms,
                      bool (*up)(void *arg, uint32_t id), void *arg, struct skew_verdict *v)
{
    if (s->max_skew_us == 0)
        return true;
    for (uint32_t i = 0; i < s->n; i++) {
        uint32_t a = ids[i];
        const struct skew_sample *pa;
        if (a == s->self)
            continue;
        if ((pa = fresh(s, a, now_ms)) == NULL) {
            if (up(arg, a)) {
                *v = (struct skew_verdict){.a = a, .b = s->self, .unmeasured = true};
                return false;
            }
            continue;
        }
        /* Against our own clock, then against every other peer measured. */
        int64_t d = apart(pa->offset_us, 0, pa->rtt_us / 2);
        if (too_far(s, d)) {
            *v = (struct skew_verdict){.a = a, .b = s->self, .apart_us = d};
            return false;
        }
        for (uint32_t j = i + 1; j < s->n; j++) {
            const struct skew_sample *pb = fresh(s, ids[j], now_ms);
            if (pb == NULL)
                continue;
            d = apart(pa->offset_us, pb->offset_us, pa->rtt_us / 2 + pb->rtt_us / 2);
            if (too_far(s, d)) {
                *v = (struct skew_verdict){.a = a, .b = ids[j], .apart_us = d};
                return false;
            }
        }
    }
    return true;
}

bool skew_read_refused(const struct skew *s, const uint32_t *ids, uint64_t now_ms)
{
    uint32_t far = 0, known = 0;

    for (uint32_t i = 0; i < s->n; i++) {
        int64_t d = skew_of(s, ids[i], now_ms);
        if (d < 0)
            continue;
        known++;
        far += too_far(s, d);
    }
    return far > 0 && 2 * far > known;
}
