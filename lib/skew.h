/*
 * skew.h - how far the replicas' clocks are apart, and what a replica may
 * still do when they are too far (see DESIGN.md, "Time in a cluster").
 *
 * No replica decides a key's stored state by its own clock; clocks are read
 * only by a coordinator evaluating a command (its expiry times and time
 * stamps become the replicated effect) and by reads hiding dead items. So a
 * clock that is off cannot make replicas diverge, but it makes expiry
 * wrong: a coordinator behind writes expiry times in the past of the
 * others, one ahead deletes items as expired early, and a replica ahead
 * hides items early. The cluster bounds it: each replica measures every
 * peer's clock (peer.c's clock probes), as an offset from its own known to
 * within half the probe's round trip, and
 *   - refuses writes (and its expiry deletes) unless every peer whose link
 *     is up has been measured recently, and no two clocks it knows of - its
 *     own and its peers' - are provably more than max_skew apart (so a
 *     replica between two others that are too far apart refuses too);
 *   - refuses reads while its own clock is provably too far from more than
 *     half of the peers it has measured (it is the odd one out; with two
 *     replicas, either may be, and both refuse).
 * A sample older than SKEW_SAMPLE_MAX_AGE_MS, or taken before this host's
 * own clock stepped (skew_forget), no longer counts.
 *
 * Pure: times come in as arguments.
 */
#ifndef TPCKV_SKEW_H
#define TPCKV_SKEW_H

#include "tpc.h"

#include <stdbool.h>
#include <stdint.h>

/* A sample older than this no longer counts. */
#define SKEW_SAMPLE_MAX_AGE_MS 10000

struct skew_sample {
    int64_t offset_us; /* the peer's clock minus ours */
    uint64_t rtt_us;   /* the probe's round trip: the offset is +- half of it */
    uint64_t at_ms;    /* monotonic time it came, 0 = none */
};

struct skew {
    uint32_t n;                                 /* replicas, self included */
    uint32_t self;                              /* our id */
    uint64_t max_skew_us;                       /* 0: no check */
    struct skew_sample peer[TPC_REPLICAS_MAX];  /* by replica id */
};

/* Why writes are refused (skew_write_check). */
struct skew_verdict {
    uint32_t a, b;      /* two replicas whose clocks are too far apart (b may be
                           us); or a, a peer not measured yet */
    bool unmeasured;    /* a's clock has not been measured (recently) */
    int64_t apart_us;   /* how far apart for sure */
};

/* Starts with no samples, for n replicas (self among them); max_skew_ms 0
 * turns the check off. The queries take the replica ids, ids[0..n). */
void skew_init(struct skew *s, uint32_t n, uint32_t self, uint64_t max_skew_ms);

/* A probe of peer id came back: its clock is offset_us from ours, measured
 * over a round trip of rtt_us, at monotonic time now_ms. */
void skew_note(struct skew *s, uint32_t id, int64_t offset_us, uint64_t rtt_us,
               uint64_t now_ms);

/* Our own clock stepped: every sample is void. */
void skew_forget(struct skew *s);

/* How far peer id's clock is off ours for sure (|offset| - rtt/2, at least
 * 0), in microseconds, or -1 when unknown (never measured, or too old). */
int64_t skew_of(const struct skew *s, uint32_t id, uint64_t now_ms);

/*
 * May writes go on? up(id) says whether the link to peer id is up (a peer
 * that is down stops writes anyway, and says so itself). Returns true, or
 * false with the reason in *v.
 */
bool skew_write_check(const struct skew *s, const uint32_t *ids, uint64_t now_ms,
                      bool (*up)(void *arg, uint32_t id), void *arg, struct skew_verdict *v);

/* True when our own clock is provably too far from more than half of the
 * peers we have measured (reads are refused). */
bool skew_read_refused(const struct skew *s, const uint32_t *ids, uint64_t now_ms);

#endif /* TPCKV_SKEW_H */
