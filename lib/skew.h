/*
 * skew.h - how far the replicas' clocks are apart, and what a replica may
 * still do when they are too far (see DESIGN.md, "Time in a cluster").
 *
 * No replica decides a key's stored state by its own clock; clocks are read
 * only by a coordinator evaluating a command (its expiry times and time
 * stamps become the replicated effect) and by reads hiding dead items. So a
 * clock that is off cannot make replicas diverge, but it makes expiry
 * wrong: a coordinator behind writes expiry times in the past of the
 * others, and a replica ahead hides items early. The cluster bounds it:
 * each replica measures every peer's clock (peer.c's clock probes) and
 *   - refuses writes while some replica's clock is provably more than
 *     max_skew_ms off its own (the offset minus half the round trip);
 *   - refuses reads while its own clock is provably off from more than
 *     half of the other replicas' (it is the odd one out; with two
 *     replicas, either may be, and both refuse).
 * A peer not measured for SKEW_SAMPLE_MAX_AGE_MS (its link is down, say)
 * counts as unknown, neither in bound nor out of it.
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

/* Starts with no samples, for n replicas (self among them); max_skew_ms 0
 * turns the check off. The queries take the replica ids, ids[0..n). */
void skew_init(struct skew *s, uint32_t n, uint32_t self, uint64_t max_skew_ms);

/* A probe of peer id came back: its clock is offset_us from ours, measured
 * over a round trip of rtt_us, at monotonic time now_ms. */
void skew_note(struct skew *s, uint32_t id, int64_t offset_us, uint64_t rtt_us,
               uint64_t now_ms);

/* How far peer id's clock is off ours for sure (|offset| - rtt/2, at least
 * 0), in microseconds, or -1 when unknown (never measured, or too old). */
int64_t skew_of(const struct skew *s, uint32_t id, uint64_t now_ms);

/* The id of a peer whose clock is provably more than max_skew off ours, or
 * -1 when none is (writes may go on). */
int skew_write_blocker(const struct skew *s, const uint32_t *ids, uint64_t now_ms);

/* True when our own clock is provably off from more than half of the other
 * replicas' (reads are refused). */
bool skew_read_refused(const struct skew *s, const uint32_t *ids, uint64_t now_ms);

#endif /* TPCKV_SKEW_H */
