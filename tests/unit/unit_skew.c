/*
 * unit_skew.c - the bound on the replicas' clock offsets (lib/skew.c).
 */
#include "unit.h"

#include "skew.h"

static const uint32_t IDS[3] = {1, 2, 3};

static bool all_up(void *arg, uint32_t id)
{
    (void)arg;
    (void)id;
    return true;
}

static bool none_up(void *arg, uint32_t id)
{
    (void)arg;
    (void)id;
    return false;
}

static bool writes_ok(const struct skew *s, uint64_t now, struct skew_verdict *v)
{
    return skew_write_check(s, IDS, now, all_up, NULL, v);
}

/* Found by the adversarial audit: a peer not measured yet counted as in
 * bound, so a replica restarted with its clock an hour off wrote, and
 * deleted live items as expired, until its first probe came back. A peer
 * whose link is up must have been measured recently; one that is down
 * stops writes by itself. */
static void test_writes_wait_for_every_live_peer_measured(void)
{
    struct skew s;
    struct skew_verdict v;

    skew_init(&s, 3, 1, 500);
    CU_ASSERT_FALSE(writes_ok(&s, 1000, &v));
    CU_ASSERT(v.unmeasured && v.a == 2);
    CU_ASSERT_TRUE(skew_write_check(&s, IDS, 1000, none_up, NULL, &v));
    skew_note(&s, 2, 1000, 500, 1000);
    CU_ASSERT_FALSE(writes_ok(&s, 1000, &v));
    CU_ASSERT(v.unmeasured && v.a == 3);
    skew_note(&s, 3, -2000, 500, 1000);
    CU_ASSERT_TRUE(writes_ok(&s, 1000, &v));
    /* Samples grow old... */
    CU_ASSERT_FALSE(writes_ok(&s, 1000 + SKEW_SAMPLE_MAX_AGE_MS + 1, &v));
    CU_ASSERT(v.unmeasured);
    /* ...and go when our own clock steps. */
    skew_forget(&s);
    CU_ASSERT_FALSE(writes_ok(&s, 1000, &v));
    CU_ASSERT_EQUAL(skew_of(&s, 2, 1000), -1);
    /* 0 turns the check off. */
    skew_init(&s, 3, 1, 0);
    CU_ASSERT_TRUE(writes_ok(&s, 1000, &v));
}

static void test_round_trip_is_the_uncertainty(void)
{
    struct skew s;
    struct skew_verdict v;

    skew_init(&s, 3, 1, 500);
    skew_note(&s, 2, 0, 100, 10);
    /* 600 ms behind, measured over a 300 ms round trip: only 450 for sure. */
    skew_note(&s, 3, -600000, 300000, 10);
    CU_ASSERT_EQUAL(skew_of(&s, 3, 10), 450000);
    CU_ASSERT_TRUE(writes_ok(&s, 10, &v));
    /* A tighter probe shows it: 590 for sure. */
    skew_note(&s, 3, -600000, 20000, 20);
    CU_ASSERT_FALSE(writes_ok(&s, 20, &v));
    CU_ASSERT(!v.unmeasured && (v.a == 3 || v.b == 3) && v.apart_us >= 589950);
    /* The largest offsets do not overflow. */
    skew_note(&s, 3, INT64_MIN, 0, 30);
    CU_ASSERT_EQUAL(skew_of(&s, 3, 30), INT64_MAX);
    skew_note(&s, 2, INT64_MAX, 0, 30);
    CU_ASSERT_FALSE(writes_ok(&s, 30, &v));
}

/* Found by the adversarial audit: the bound was checked against our own
 * clock only, so a replica between two others 800 ms apart (each 400 ms
 * from it) went on coordinating writes and expiry. Every pair of clocks we
 * know of counts. */
static void test_two_peers_too_far_apart_stop_writes_in_between(void)
{
    struct skew s;
    struct skew_verdict v;

    skew_init(&s, 3, 2, 500);
    skew_note(&s, 1, -400000, 1000, 5);
    skew_note(&s, 3, 400000, 1000, 5);
    CU_ASSERT_FALSE(writes_ok(&s, 5, &v));
    CU_ASSERT(!v.unmeasured && v.a == 1 && v.b == 3 && v.apart_us == 799000);
    CU_ASSERT_FALSE(skew_read_refused(&s, IDS, 5)); /* we are in the middle */
    skew_note(&s, 3, 90000, 1000, 6);
    CU_ASSERT_TRUE(writes_ok(&s, 6, &v));
}

static void test_reads_refused_by_the_odd_one_out_only(void)
{
    struct skew a, b;

    /* Replica 1's clock is 2 s ahead of 2 and 3, which agree. */
    skew_init(&a, 3, 1, 500);
    skew_note(&a, 2, -2000000, 1000, 5);
    skew_note(&a, 3, -2000000, 1000, 5);
    CU_ASSERT_TRUE(skew_read_refused(&a, IDS, 5));
    skew_init(&b, 3, 2, 500);
    skew_note(&b, 1, 2000000, 1000, 5);
    skew_note(&b, 3, 1000, 1000, 5);
    CU_ASSERT_FALSE(skew_read_refused(&b, IDS, 5)); /* one of two: not the odd one */
    /* Found by the adversarial audit: with one peer down, the one measured
     * being far was "one of two" and reads went on. Only measured peers
     * count. */
    skew_init(&a, 3, 1, 500);
    skew_note(&a, 2, -3600000000LL, 1000, 5);
    CU_ASSERT_TRUE(skew_read_refused(&a, IDS, 5));
    /* With two replicas, either may be wrong: both refuse reads. */
    skew_init(&b, 2, 2, 500);
    skew_note(&b, 1, 2000000, 1000, 5);
    CU_ASSERT_TRUE(skew_read_refused(&b, IDS, 5));
    /* Nothing measured: nothing refused. */
    skew_init(&b, 3, 2, 500);
    CU_ASSERT_FALSE(skew_read_refused(&b, IDS, 5));
}

void unit_skew_register(void)
{
    CU_pSuite s = unit_suite("skew");

    unit_test(s, "writes wait for every live peer measured",
              test_writes_wait_for_every_live_peer_measured);
    unit_test(s, "half the round trip is the uncertainty", test_round_trip_is_the_uncertainty);
    unit_test(s, "two peers too far apart stop writes in between",
              test_two_peers_too_far_apart_stop_writes_in_between);
    unit_test(s, "reads are refused by the odd one out only",
              test_reads_refused_by_the_odd_one_out_only);
}
