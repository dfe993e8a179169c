/*
 * zipf.h - a Zipf-distributed sampler over the integers 0..n-1.
 *
 * P(k) is proportional to 1 / (k + 1)^s: 0 is the most frequent value, then
 * 1, and so on. Sampling is rejection-inversion (Hormann and Derflinger,
 * "Rejection-inversion to generate variates from monotone discrete
 * distributions", 1996): O(1) memory and expected time whatever n, so a key
 * space of billions needs no table. Deterministic: the same state gives the
 * same values on every run.
 */
#ifndef TPCKV_ZIPF_H
#define TPCKV_ZIPF_H

#include <stdint.h>

#define ZIPF_S_MAX 100.0 /* exponents above this make every draw 0 anyway */

struct zipf {
    uint64_t n;
    double s;
    double h_x1;     /* H(1.5) - 1 */
    double h_n;      /* H(n + 0.5) */
    double s_accept; /* draws this close to k are accepted without the test */
};

/* Prepares a sampler over 0..n-1 with exponent s. Returns 0, or -EINVAL if
 * n is 0 or s is not in (0, ZIPF_S_MAX]. */
int zipf_init(struct zipf *z, uint64_t n, double s);

/* The next pseudo-random 64-bit number of the stream *state (splitmix64);
 * any starting value is a valid seed. */
uint64_t zipf_rand(uint64_t *state);

/* Draws one value in 0..n-1, advancing *state (zipf_rand). */
uint64_t zipf_next(const struct zipf *z, uint64_t *state);

#endif /* TPCKV_ZIPF_H */
