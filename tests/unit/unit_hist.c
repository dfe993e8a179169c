/*
 * unit_hist.c - the latency histogram (bucket layout, the 1% bound,
 * percentiles, merging, the empty and out-of-range cases). No timing:
 * everything here is arithmetic.
 */
#include "hist.h"
#include "unit.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Histograms are 30 KB: on the heap, not the test's stack. */
static struct hist *hist_new(void)
{
    struct hist *h = malloc(sizeof(*h));

    CU_ASSERT_PTR_NOT_NULL_FATAL(h);
    hist_init(h);
    return h;
}

static void test_exact_below_256(void)
{
    for (uint64_t v = 0; v < 256; v++) {
        unsigned i = hist_index(v);
        CU_ASSERT_EQUAL(i, v);
        CU_ASSERT_EQUAL(hist_bucket_low(i), v);
        CU_ASSERT_EQUAL(hist_bucket_high(i), v);
    }
    CU_ASSERT_EQUAL(hist_index(256), 256);
    CU_ASSERT_EQUAL(hist_bucket_low(256), 256);
    CU_ASSERT_EQUAL(hist_bucket_high(256), 257);
}

/* Buckets tile the range with no gap and no overlap, and each is within 1%. */
static void test_boundaries_and_width(void)
{
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        uint64_t lo = hist_bucket_low(i), hi = hist_bucket_high(i);
        CU_ASSERT_TRUE(lo <= hi);
        CU_ASSERT_EQUAL(hist_index(lo), i);
        CU_ASSERT_EQUAL(hist_index(hi), i);
        if (i + 1 < HIST_BUCKETS)
            CU_ASSERT_EQUAL(hist_bucket_low(i + 1), hi + 1);
        /* Width over the lowest value: at most 1/128, under 1%. */
        CU_ASSERT_TRUE(i < 2 * HIST_SUB ||
                       (double)(hi - lo + 1) / (double)lo <= 1.0 / 128);
        CU_ASSERT_TRUE((double)(hi - lo) <= 0.01 * (double)lo || lo == 0);
    }
    CU_ASSERT_EQUAL(hist_bucket_high(HIST_BUCKETS - 1), HIST_RANGE_MAX_NS);
    /* Powers of two start a bucket. */
    for (unsigned k = 8; k < 36; k++)
        CU_ASSERT_EQUAL(hist_bucket_low(hist_index(UINT64_C(1) << k)), UINT64_C(1) << k);
}

static void test_empty(void)
{
    struct hist *h = hist_new();

    CU_ASSERT_EQUAL(hist_count(h), 0);
    CU_ASSERT_EQUAL(hist_max(h), 0);
    CU_ASSERT_EQUAL(hist_percentile(h, 50), 0);
    CU_ASSERT_EQUAL(hist_percentile(h, 100), 0);
    CU_ASSERT_DOUBLE_EQUAL(hist_mean(h), 0.0, 1e-12);
    CU_ASSERT_EQUAL(h->min_ns, UINT64_MAX);
    free(h);
}

/* 1..100000 ns once each: every percentile within 1% of the true one. */
static void test_percentiles_uniform(void)
{
    static const double ps[] = {1, 10, 50, 90, 99, 99.9, 100};
    struct hist *h = hist_new();

    for (uint64_t v = 1; v <= 100000; v++)
        hist_record(h, v);
    CU_ASSERT_EQUAL(hist_count(h), 100000);
    CU_ASSERT_EQUAL(hist_max(h), 100000);
    CU_ASSERT_EQUAL(h->min_ns, 1);
    CU_ASSERT_DOUBLE_EQUAL(hist_mean(h), 50000.5, 1e-6);
    for (size_t i = 0; i < sizeof(ps) / sizeof(ps[0]); i++) {
        double want = ps[i] * 1000;
        uint64_t got = hist_percentile(h, ps[i]);
        CU_ASSERT_TRUE((double)got >= want);
        CU_ASSERT_TRUE((double)got <= want * 1.01);
    }
    CU_ASSERT_EQUAL(hist_percentile(h, 100), 100000);
    /* Out-of-range p act as the ends. */
    CU_ASSERT_EQUAL(hist_percentile(h, 0), 1);
    CU_ASSERT_EQUAL(hist_percentile(h, 1000), 100000);
    free(h);
}

/* 99 fast values and one slow: p99 is fast, p99.9 and p100 the slow one. */
static void test_percentiles_bimodal(void)
{
    struct hist *h = hist_new();

    for (int i = 0; i < 99; i++)
        hist_record(h, 10000);
    hist_record(h, 5000000);
    CU_ASSERT_EQUAL(hist_percentile(h, 50), hist_bucket_high(hist_index(10000)));
    CU_ASSERT_EQUAL(hist_percentile(h, 99), hist_bucket_high(hist_index(10000)));
    CU_ASSERT_EQUAL(hist_percentile(h, 99.9), 5000000); /* capped at the max */
    CU_ASSERT_EQUAL(hist_percentile(h, 100), 5000000);
    free(h);
}

static void test_single_value(void)
{
    struct hist *h = hist_new();

    hist_record(h, 123456);
    CU_ASSERT_EQUAL(hist_percentile(h, 0.001), 123456);
    CU_ASSERT_EQUAL(hist_percentile(h, 50), 123456);
    CU_ASSERT_EQUAL(hist_percentile(h, 100), 123456);
    free(h);
}

static void test_merge(void)
{
    struct hist *a = hist_new(), *b = hist_new(), *all = hist_new();

    for (uint64_t v = 1; v <= 5000; v++) {
        hist_record(v % 2 ? a : b, v * 100);
        hist_record(all, v * 100);
    }
    hist_record(b, UINT64_C(1) << 40);
    hist_record(all, UINT64_C(1) << 40);
    hist_merge(a, b);
    CU_ASSERT_EQUAL(memcmp(a->counts, all->counts, sizeof(a->counts)), 0);
    CU_ASSERT_EQUAL(hist_count(a), hist_count(all));
    CU_ASSERT_EQUAL(hist_max(a), UINT64_C(1) << 40);
    CU_ASSERT_EQUAL(a->min_ns, 100);
    CU_ASSERT_EQUAL(a->overflow, 1);
    CU_ASSERT_DOUBLE_EQUAL(hist_mean(a), hist_mean(all), 1e-3);
    CU_ASSERT_EQUAL(hist_percentile(a, 50), hist_percentile(all, 50));
    CU_ASSERT_EQUAL(hist_percentile(a, 99.9), hist_percentile(all, 99.9));
    /* Merging an empty histogram changes nothing. */
    hist_init(b);
    hist_merge(a, b);
    CU_ASSERT_EQUAL(hist_count(a), hist_count(all));
    CU_ASSERT_EQUAL(a->min_ns, 100);
    free(a);
    free(b);
    free(all);
}

static void test_extremes(void)
{
    struct hist *h = hist_new();

    hist_record(h, 0);
    CU_ASSERT_EQUAL(h->counts[0], 1);
    CU_ASSERT_EQUAL(h->min_ns, 0);
    CU_ASSERT_EQUAL(hist_percentile(h, 100), 0);
    CU_ASSERT_EQUAL(h->overflow, 0);

    /* Above the range: the last bucket, counted, and the max stays exact. */
    CU_ASSERT_EQUAL(hist_index(HIST_RANGE_MAX_NS), HIST_BUCKETS - 1);
    CU_ASSERT_EQUAL(hist_index(HIST_RANGE_MAX_NS + 1), HIST_BUCKETS - 1);
    CU_ASSERT_EQUAL(hist_index(UINT64_MAX), HIST_BUCKETS - 1);
    hist_record(h, HIST_RANGE_MAX_NS);
    CU_ASSERT_EQUAL(h->overflow, 0);
    hist_record(h, HIST_RANGE_MAX_NS + 1);
    hist_record(h, UINT64_MAX);
    CU_ASSERT_EQUAL(h->overflow, 2);
    CU_ASSERT_EQUAL(h->counts[HIST_BUCKETS - 1], 3);
    CU_ASSERT_EQUAL(hist_count(h), 4);
    CU_ASSERT_EQUAL(hist_max(h), UINT64_MAX);
    CU_ASSERT_EQUAL(hist_percentile(h, 25), 0);
    CU_ASSERT_EQUAL(hist_percentile(h, 50), HIST_RANGE_MAX_NS);
    free(h);
}

static void test_add_bucket(void)
{
    struct hist *h = hist_new();

    hist_add_bucket(h, hist_index(5000), 10);
    CU_ASSERT_EQUAL(hist_count(h), 10);
    h->max_ns = 5000;
    CU_ASSERT_EQUAL(hist_percentile(h, 50), 5000);
    free(h);
}

/* ---- zipf ---------------------------------------------------------------- */

void unit_hist_register(void)
{
    CU_pSuite s = unit_suite("hist");
    unit_test(s, "exact buckets below 256", test_exact_below_256);
    unit_test(s, "bucket boundaries, 1% width", test_boundaries_and_width);
    unit_test(s, "empty histogram", test_empty);
    unit_test(s, "percentiles of 1..100000", test_percentiles_uniform);
    unit_test(s, "percentiles of a bimodal set", test_percentiles_bimodal);
    unit_test(s, "a single value", test_single_value);
    unit_test(s, "merge", test_merge);
    unit_test(s, "0 ns and beyond the range", test_extremes);
    unit_test(s, "counts added by bucket", test_add_bucket);
}
