/*
 * hist.h - a latency histogram, log-linear as in HdrHistogram.
 *
 * Values are nanoseconds. Below 256 every value has a bucket of its own;
 * above, every power-of-two range [2^k, 2^(k+1)) is cut into 128 equal
 * buckets, so a bucket is never wider than 1/128 of the values in it (within
 * 1%, better than 2 significant digits) up to HIST_RANGE_MAX_NS (2^36 - 1 ns,
 * 68.7 s). Larger values are clamped into the last bucket and counted as
 * overflows; max_ns stays exact. A histogram is a fixed array: recording
 * never allocates, and merging two is adding their arrays.
 */
#ifndef TPCKV_HIST_H
#define TPCKV_HIST_H

#include <stdint.h>

#define HIST_SUB 128u /* buckets per power of two, above 256 */
#define HIST_BUCKETS (2 * HIST_SUB + 28 * HIST_SUB) /* 3840 */
#define HIST_RANGE_MAX_NS ((UINT64_C(1) << 36) - 1) /* the largest value kept exactly */

struct hist {
    uint64_t counts[HIST_BUCKETS];
    uint64_t total;
    uint64_t overflow; /* values above HIST_RANGE_MAX_NS (in the last bucket) */
    uint64_t max_ns;   /* 0 while empty */
    uint64_t min_ns;   /* UINT64_MAX while empty */
    double sum_ns;
};

/* Empties h. */
void hist_init(struct hist *h);

/* The bucket that holds ns (HIST_BUCKETS - 1 for anything above the range). */
unsigned hist_index(uint64_t ns);

/* The smallest and the largest value that fall in bucket i (< HIST_BUCKETS). */
uint64_t hist_bucket_low(unsigned i);
uint64_t hist_bucket_high(unsigned i);

/* Counts one value. */
void hist_record(struct hist *h, uint64_t ns);

/* Adds n values known only by their bucket i (e.g. counted elsewhere with
 * hist_index()); min, max, sum and overflow are the caller's to update. */
void hist_add_bucket(struct hist *h, unsigned i, uint64_t n);

/* Adds every value of from to into. */
void hist_merge(struct hist *into, const struct hist *from);

/*
 * The value at percentile p (0 < p <= 100; smaller p act as the minimum
 * rank, larger as 100): the highest value of the bucket holding the
 * ceil(p/100 * total)-th smallest value, but never above max_ns. 0 if empty.
 */
uint64_t hist_percentile(const struct hist *h, double p);

/* Values counted; the largest one (0 if empty); the mean (0 if empty). */
uint64_t hist_count(const struct hist *h);
uint64_t hist_max(const struct hist *h);
double hist_mean(const struct hist *h);

#endif /* TPCKV_HIST_H */
