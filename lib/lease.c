/*
 * lease.c - read leases (lease.h; DESIGN.md, Availability).
 *
 * With rate error at most rho, d nanoseconds on a clock take between
 * d/(1 + rho) and d/(1 - rho) real nanoseconds. A grant is given after the
 * request left, and holds for L on the grantor's clock: at least
 * L/(1 + rho) real. The holder's lease runs L(1 - 2 rho) on its clock from
 * the request: at most L(1 - 2 rho)/(1 - rho) <= L/(1 + rho) real, since
 * (1 - 2 rho)(1 + rho) = 1 - rho - 2 rho^2 <= 1 - rho. So every lease ends
 * before the holds that gave it. A proposer told that a hold still runs R
 * waits R(1 + rho)/(1 - rho) on its clock: at least R/(1 - rho) real, the
 * longest R on the grantor's clock can take, so the hold is over. (Waiting
 * R alone would do, thanks to the holder's 2 rho: the hold left at the
 * promise started no earlier than the request. The factor costs 2% of a
 * wait at 1% and keeps the argument one line long.)
 */
#include "lease.h"

#include <string.h>

#define PPM 1000000u
#define LEASE_NS_MAX (600ull * 1000 * 1000 * 1000) /* 10 minutes */

bool lease_config_ok(const struct lease_config *cfg)
{
    return cfg->lease_ns > 0 && cfg->lease_ns <= LEASE_NS_MAX &&
           cfg->drift_ppm <= LEASE_DRIFT_PPM_MAX && cfg->n >= 1 &&
           cfg->n <= LIMIT_REPLICAS_MAX;
}

uint32_t lease_majority(const struct lease_config *cfg)
{
    return cfg->n / 2 + 1;
}

/* L(1 - 2 rho), rounded down: the holder's share. */
static uint64_t held_ns(const struct lease_config *cfg)
{
    return cfg->lease_ns - cfg->lease_ns / PPM * 2 * cfg->drift_ppm -
           (cfg->lease_ns % PPM * 2 * cfg->drift_ppm + PPM - 1) / PPM;
}

uint64_t lease_wait_ns(const struct lease_config *cfg, uint64_t remaining)
{
    /* remaining <= a few L (<= 10 min = 6e11 ns) times 1.2e6: fits 64 bits;
     * rounded up. */
    uint64_t num = remaining * (PPM + cfg->drift_ppm);
    uint64_t den = PPM - cfg->drift_ppm;

    return (num + den - 1) / den;
}

void lease_holder_init(struct lease_holder *h, const struct lease_config *cfg,
                       uint64_t epoch)
{
    memset(h, 0, sizeof(*h));
    h->cfg = *cfg;
    h->epoch = epoch;
}

uint64_t lease_request(struct lease_holder *h, uint64_t now)
{
    uint32_t slot = (uint32_t)(++h->seq % LEASE_WINDOW);

    h->sent_at[slot] = now;
    h->granted[slot] = 0;
    return h->seq;
}

static uint32_t bits(uint32_t v)
{
    return (uint32_t)__builtin_popcount(v);
}

bool lease_granted(struct lease_holder *h, uint64_t epoch, uint64_t seq, uint32_t from)
{
    uint32_t slot;
    uint64_t end;

    if (epoch != h->epoch || seq == 0 || seq > h->seq || h->seq - seq >= LEASE_WINDOW ||
        from >= h->cfg.n)
        return false;
    slot = (uint32_t)(seq % LEASE_WINDOW);
    if (h->granted[slot] & (1u << from))
        return false;
    h->granted[slot] |= 1u << from;
    if (bits(h->granted[slot]) < lease_majority(&h->cfg))
        return false;
    end = h->sent_at[slot] + held_ns(&h->cfg);
    if (end <= h->until)
        return false;
    h->until = end;
    return true;
}

bool lease_valid(const struct lease_holder *h, uint64_t now)
{
    return now < h->until;
}

uint64_t lease_remaining(const struct lease_holder *h, uint64_t now)
{
    return now < h->until ? h->until - now : 0;
}

void lease_holder_reset(struct lease_holder *h, uint64_t epoch)
{
    struct lease_config cfg = h->cfg;
    uint64_t seq = h->seq;

    lease_holder_init(h, &cfg, epoch);
    h->seq = seq; /* numbers keep growing: a late grant of an old one is ignored */
}

void lease_grantor_init(struct lease_grantor *g, const struct lease_config *cfg,
                        uint64_t epoch, uint64_t now)
{
    memset(g, 0, sizeof(*g));
    g->cfg = *cfg;
    g->epoch = epoch;
    /* What it granted before a crash is unknown: hold as if it had granted
     * at the last moment, with the proposer's factor already applied, so a
     * promise reports it as is (lease_wait_ns then stretches it again: more
     * than needed, never less). */
    g->hold_until = now + lease_wait_ns(cfg, cfg->lease_ns);
}

bool lease_grant(struct lease_grantor *g, uint64_t epoch, uint64_t now)
{
    uint64_t until = now + g->cfg.lease_ns;

    if (epoch != g->epoch || g->frozen)
        return false;
    if (until > g->hold_until)
        g->hold_until = until;
    return true;
}

void lease_grantor_freeze(struct lease_grantor *g)
{
    g->frozen = true;
}

void lease_grantor_epoch(struct lease_grantor *g, uint64_t epoch)
{
    g->epoch = epoch;
    g->frozen = false;
}

uint64_t lease_hold_remaining(const struct lease_grantor *g, uint64_t now)
{
    return now < g->hold_until ? g->hold_until - now : 0;
}
