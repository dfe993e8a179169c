/*
 * unit_freelist.c - CUnit tests for the cache of spare objects
 * (lib/freelist.c). One suite, "freelist":
 *
 *   build/rel/unit freelist
 */
#include "freelist.h"
#include "unit.h"

#include <string.h>

struct obj {
    void *link;
    char payload[100];
};

static void test_freelist_reuses_and_zeroes(void)
{
    struct freelist f;
    struct obj *a, *b, *c;

    freelist_init(&f, sizeof(struct obj), 2);
    a = freelist_get(&f);
    b = freelist_get(&f);
    c = freelist_get(&f);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    memset(a, 0xab, sizeof(*a));
    memset(b, 0xcd, sizeof(*b));
    freelist_put(&f, a);
    freelist_put(&f, b);
    freelist_put(&f, c); /* over max: freed */
    freelist_put(&f, NULL);
    CU_ASSERT_EQUAL(f.n, 2u);
    struct obj *x = freelist_get(&f), *y = freelist_get(&f);
    CU_ASSERT(x == b && y == a); /* last in, first out */
    CU_ASSERT_EQUAL(f.n, 0u);
    static const struct obj zero;
    CU_ASSERT_EQUAL(memcmp(x, &zero, sizeof(zero)), 0);
    CU_ASSERT_EQUAL(memcmp(y, &zero, sizeof(zero)), 0);
    freelist_put(&f, x);
    freelist_put(&f, y);
    freelist_clear(&f);
    CU_ASSERT_EQUAL(f.n, 0u);
    CU_ASSERT_PTR_NULL(f.head);
    /* Usable again after a clear. */
    x = freelist_get(&f);
    CU_ASSERT_PTR_NOT_NULL(x);
    freelist_put(&f, x);
    freelist_clear(&f);
}

static void test_freelist_max_zero_caches_nothing(void)
{
    struct freelist f;

    freelist_init(&f, sizeof(void *), 0);
    void *p = freelist_get(&f);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    freelist_put(&f, p);
    CU_ASSERT_EQUAL(f.n, 0u);
    CU_ASSERT_PTR_NULL(f.head);
    freelist_clear(&f);
}

void unit_freelist_register(void)
{
    CU_pSuite s = unit_suite("freelist");

    unit_test(s, "reuses and zeroes", test_freelist_reuses_and_zeroes);
    unit_test(s, "max 0 caches nothing", test_freelist_max_zero_caches_nothing);
}
