/*
 * unit_zipf.c - the Zipf sampler's shape (lib/zipf.c) that `clie bench
 * --dist zipf` draws its keys from.
 */
#include "unit.h"
#include "zipf.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void test_zipf_init(void)
{
    struct zipf z;

    CU_ASSERT_EQUAL(zipf_init(&z, 0, 0.99), -EINVAL);
    CU_ASSERT_EQUAL(zipf_init(&z, 10, 0), -EINVAL);
    CU_ASSERT_EQUAL(zipf_init(&z, 10, -1), -EINVAL);
    CU_ASSERT_EQUAL(zipf_init(&z, 10, ZIPF_S_MAX * 2), -EINVAL);
    CU_ASSERT_EQUAL(zipf_init(&z, 10, 0.99), 0);
    CU_ASSERT_EQUAL(zipf_init(&z, UINT64_MAX, 1.0), 0);
}

/* Draws stay in range, and the same seed gives the same draws. */
static void test_zipf_range_and_seed(void)
{
    struct zipf z;
    uint64_t a = 42, b = 42;

    CU_ASSERT_EQUAL_FATAL(zipf_init(&z, 1, 0.99), 0);
    for (int i = 0; i < 1000; i++)
        CU_ASSERT_EQUAL(zipf_next(&z, &a), 0);
    CU_ASSERT_EQUAL_FATAL(zipf_init(&z, 1000, 1.2), 0);
    a = b = 42;
    for (int i = 0; i < 10000; i++) {
        uint64_t v = zipf_next(&z, &a);
        CU_ASSERT_TRUE(v < 1000);
        CU_ASSERT_EQUAL(v, zipf_next(&z, &b));
    }
    CU_ASSERT_EQUAL_FATAL(zipf_init(&z, UINT64_MAX, 0.5), 0);
    for (int i = 0; i < 10000; i++)
        (void)zipf_next(&z, &a); /* no crash, no trap at the top of the range */
}

/*
 * The shape: over 100 keys with s = 0.99, key 0 is the most frequent, the
 * counts fall with the rank, and the first few are near 1/(k+1)^s of the
 * normalised total (loose bounds: this is a sanity check, not a test of fit).
 */
static void test_zipf_shape(void)
{
    enum { N = 100, DRAWS = 400000 };
    static uint64_t counts[N];
    struct zipf z;
    uint64_t st = 7;
    double norm = 0;

    memset(counts, 0, sizeof(counts));
    CU_ASSERT_EQUAL_FATAL(zipf_init(&z, N, 0.99), 0);
    for (int i = 0; i < DRAWS; i++)
        counts[zipf_next(&z, &st)]++;
    for (int k = 0; k < N; k++)
        norm += pow(k + 1, -0.99);
    for (int k = 1; k < N; k++)
        CU_ASSERT_TRUE(counts[0] > counts[k]);
    for (int k = 0; k < 5; k++)
        CU_ASSERT_TRUE(counts[k] > counts[k + 1]);
    /* Decade by decade, the totals decrease. */
    for (int d = 0; d + 20 <= N; d += 10) {
        uint64_t s1 = 0, s2 = 0;
        for (int k = d; k < d + 10; k++) {
            s1 += counts[k];
            s2 += counts[k + 10];
        }
        CU_ASSERT_TRUE(s1 > s2);
    }
    for (int k = 0; k < 5; k++) {
        double want = DRAWS * pow(k + 1, -0.99) / norm;
        CU_ASSERT_TRUE(fabs((double)counts[k] - want) < 0.05 * want);
    }
    for (int k = 0; k < N; k++)
        CU_ASSERT_TRUE(counts[k] > 0);
}

void unit_zipf_register(void)
{
    CU_pSuite s = unit_suite("zipf");
    unit_test(s, "bad parameters", test_zipf_init);
    unit_test(s, "range and determinism", test_zipf_range_and_seed);
    unit_test(s, "most frequent first, decreasing", test_zipf_shape);
}
