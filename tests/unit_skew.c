/*
 * unit_skew.c - the bound on the replicas' clock offsets (lib/skew.c).
 */
#include "unit.h"

#include "skew.h"

static const uint32_t IDS[3] = {1, 2, 3};

static void test_unknown_until_measured_and_when_old(void)
{
    struct skew s;

    skew_init(&s, 3, 1, 500);
    CU_ASSERT_EQUAL(skew_of(&s, 2, 1000), -1);
    CU_ASSERT_EQUAL(skew_write_blocker(&s, IDS, 1000), -1);
    CU_ASSERT_FALSE(skew_read_refused(&s, IDS, 1000));
    skew_note(&s, 2, 900000, 1000, 1000); /* 900 ms ahead */
    CU_ASSERT_EQUAL(skew_of(&s, 2, 1000), 899500);
    CU_ASSERT_EQUAL(skew_write_blocker(&s, IDS, 1000), 2);
    /* Not heard of for longer than the sample lives: unknown again. */
    CU_ASSERT_EQUAL(skew_of(&s, 2, 1000 + SKEW_SAMPLE_MAX_AGE_MS + 1), -1);
    CU_ASSERT_EQUAL(skew_write_blocker(&s, IDS, 1000 + SKEW_SAMPLE_MAX_AGE_MS + 1), -1);
    /* Our own id is never a peer. */
    skew_note(&s, 1, 5000000, 0, 1000);
    CU_ASSERT_EQUAL(skew_of(&s, 1, 1000), -1);
}

static void test_round_trip_is_the_uncertainty(void)
{
    struct skew s;

    skew_init(&s, 3, 1, 500);
    /* 600 ms behind, measured over a 300 ms round trip: only 450 for sure. */
    skew_note(&s, 3, -600000, 300000, 10);
    CU_ASSERT_EQUAL(skew_of(&s, 3, 10), 450000);
    CU_ASSERT_EQUAL(skew_write_blocker(&s, IDS, 10), -1);
    /* A tighter probe shows it: 590 for sure. */
    skew_note(&s, 3, -600000, 20000, 20);
    CU_ASSERT_EQUAL(skew_write_blocker(&s, IDS, 20), 3);
    /* The largest negative offset does not overflow. */
    skew_note(&s, 3, INT64_MIN, 0, 30);
    CU_ASSERT_EQUAL(skew_of(&s, 3, 30), INT64_MAX);
    /* 0 turns the check off. */
    skew_init(&s, 3, 1, 0);
    skew_note(&s, 3, -600000000, 0, 10);
    CU_ASSERT_EQUAL(skew_write_blocker(&s, IDS, 10), -1);
    CU_ASSERT_FALSE(skew_read_refused(&s, IDS, 10));
}

static void test_reads_refused_by_the_odd_one_out_only(void)
{
    struct skew a, b;

    /* Replica 1's clock is 2 s ahead of 2 and 3, which agree. */
    skew_init(&a, 3, 1, 500);
    skew_note(&a, 2, -2000000, 1000, 5);
    skew_note(&a, 3, -2000000, 1000, 5);
    CU_ASSERT_TRUE(skew_read_refused(&a, IDS, 5));
    CU_ASSERT_NOT_EQUAL(skew_write_blocker(&a, IDS, 5), -1);
    skew_init(&b, 3, 2, 500);
    skew_note(&b, 1, 2000000, 1000, 5);
    skew_note(&b, 3, 1000, 1000, 5);
    CU_ASSERT_FALSE(skew_read_refused(&b, IDS, 5)); /* one of two: not the odd one */
    CU_ASSERT_EQUAL(skew_write_blocker(&b, IDS, 5), 1);
    /* With two replicas, either may be wrong: both refuse reads. */
    skew_init(&b, 2, 2, 500);
    skew_note(&b, 1, 2000000, 1000, 5);
    CU_ASSERT_TRUE(skew_read_refused(&b, IDS, 5));
}

void unit_skew_register(void)
{
    CU_pSuite s = unit_suite("skew");

    unit_test(s, "unknown until measured, and once the sample is old",
              test_unknown_until_measured_and_when_old);
    unit_test(s, "half the round trip is the uncertainty", test_round_trip_is_the_uncertainty);
    unit_test(s, "reads are refused by the odd one out only",
              test_reads_refused_by_the_odd_one_out_only);
}
