/*
 * unit_fence.c - is a replica's data as recent as its peers know it to be
 * (lib/fence.c; issue 17: a wiped replica served empty reads).
 */
#include "unit.h"

#include "fence.h"

/* A brand-new cluster: nothing seen, nothing logged: all current. */
static void test_a_new_cluster_checks_out(void)
{
    struct fence a, b;

    fence_init(&a, 3, 0, NULL);
    fence_init(&b, 3, 0, NULL);
    unsigned ch = fence_state_in(&a, 2, b.mark, b.seen[1]);
    CU_ASSERT(ch & FENCE_PEER_CURRENT);
    CU_ASSERT(ch & FENCE_SELF_VERIFIED);
    CU_ASSERT_TRUE(fence_peer_ok(&a, 2));
    CU_ASSERT_FALSE(fence_peer_ok(&a, 3)); /* nothing from it yet */
    CU_ASSERT_TRUE(a.verified && !a.behind);
}

/* A wiped replica (mark 0) whose peer saw it vote: behind, on both sides. */
static void test_a_wiped_replica_is_behind(void)
{
    struct fence r1, r2;

    fence_init(&r1, 3, 1000, NULL);
    fence_voted(&r1, 2, 900);
    fence_voted(&r1, 2, 800); /* the highest stays */
    CU_ASSERT_EQUAL(r1.seen[2], 900);
    fence_init(&r2, 3, 0, NULL); /* emptied */
    unsigned ch = fence_state_in(&r1, 2, r2.mark, r2.seen[1]);
    CU_ASSERT(ch & FENCE_PEER_BEHIND);
    CU_ASSERT_FALSE(fence_peer_ok(&r1, 2));
    /* Found by the audit: a peer found behind cannot vouch for us (its
     * seen[] is as empty as its data). */
    CU_ASSERT_FALSE(r1.verified);
    ch = fence_state_in(&r2, 1, r1.mark, r1.seen[2]);
    CU_ASSERT(ch & FENCE_SELF_BEHIND);
    CU_ASSERT_TRUE(r2.behind && !r2.verified);
    CU_ASSERT_EQUAL(r2.behind_by, 1);
    CU_ASSERT_EQUAL(r2.behind_seen, 900);
    /* Sticky: a later peer that saw nothing does not verify it. */
    ch = fence_state_in(&r2, 3, 0, 0);
    CU_ASSERT_FALSE(ch & FENCE_SELF_VERIFIED);
    CU_ASSERT_TRUE(r2.behind);
}

/* An older copy: its mark is below what the peers saw; the directory it
 * ran with is not (its mark is at or above every vote). */
static void test_an_older_copy_is_behind_the_real_one_is_not(void)
{
    struct fence r1;

    fence_init(&r1, 3, 5000, NULL);
    fence_voted(&r1, 2, 4000);
    CU_ASSERT(fence_state_in(&r1, 2, 3999, 0) & FENCE_PEER_BEHIND);
    CU_ASSERT(fence_state_in(&r1, 2, 4000, 0) & FENCE_PEER_CURRENT); /* the real one, back */
    CU_ASSERT_TRUE(fence_peer_ok(&r1, 2));
    /* Our own mark rises as we log: a peer that saw our latest vote finds
     * us current. */
    struct fence r2;
    fence_init(&r2, 3, 100, NULL);
    fence_logged(&r2, 4000);
    CU_ASSERT(fence_state_in(&r2, 1, r1.mark, 4000) & FENCE_SELF_VERIFIED);
    CU_ASSERT_FALSE(r2.behind);
}

/* Found by the audit: a COMMIT that reaches us before a restarted peer's
 * STATE may reflect a vote it cast after that STATE; while its link is
 * down-and-not-yet-reported it is stale and COMMITs do not raise it. */
static void test_commits_skip_stale_peers(void)
{
    struct fence f;

    fence_init(&f, 3, 100, NULL);
    fence_state_in(&f, 2, 50, 0);
    fence_state_in(&f, 3, 50, 0);
    fence_committed(&f, 1, 60);
    CU_ASSERT_EQUAL(f.seen[2], 60);
    CU_ASSERT_EQUAL(f.seen[1], 0); /* not ourselves */
    fence_link_down(&f, 2);
    fence_committed(&f, 1, 70); /* 2 voted after a STATE we have not read */
    CU_ASSERT_EQUAL(f.seen[2], 60);
    CU_ASSERT_EQUAL(f.seen[3], 70);
    CU_ASSERT(fence_state_in(&f, 2, 65, 0) == FENCE_NO_CHANGE); /* still current */
    CU_ASSERT_TRUE(fence_peer_ok(&f, 2));
    fence_committed(&f, 1, 80);
    CU_ASSERT_EQUAL(f.seen[2], 80);
}

/* seen[] comes back from RUN at a start. */
static void test_seen_survives_a_restart(void)
{
    uint64_t seen[LIMIT_REPLICAS_MAX] = {0};
    struct fence f;

    seen[2] = 77;
    fence_init(&f, 3, 100, seen);
    CU_ASSERT_EQUAL(f.seen[2], 77);
    CU_ASSERT(fence_state_in(&f, 2, 0, 0) & FENCE_PEER_BEHIND);
    CU_ASSERT_FALSE(fence_peer_ok(&f, LIMIT_REPLICAS_MAX)); /* out of range */
}

void unit_fence_register(void)
{
    CU_pSuite s = unit_suite("fence");

    unit_test(s, "a new cluster checks out", test_a_new_cluster_checks_out);
    unit_test(s, "a wiped replica is behind, on both sides", test_a_wiped_replica_is_behind);
    unit_test(s, "an older copy is behind; the real one is not",
              test_an_older_copy_is_behind_the_real_one_is_not);
    unit_test(s, "seen survives a restart", test_seen_survives_a_restart);
    unit_test(s, "COMMITs skip a peer whose link dropped", test_commits_skip_stale_peers);
}
