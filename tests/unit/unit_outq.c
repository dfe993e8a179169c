/*
 * unit_outq.c - CUnit tests for a connection's reply queue (lib/outq.c).
 * One suite, "outq":
 *
 *   build/rel/unit outq
 */
#include "outq.h"
#include "store.h"
#include "unit.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#define NOW 1700000000000LL

/* The queued bytes, concatenated, into dst (cap bytes); returns the count. */
static size_t queued(const struct outq *q, char *dst, size_t cap)
{
    struct iovec iov[64];
    size_t n = outq_iov(q, iov, 64), len = 0;

    for (size_t i = 0; i < n && len + iov[i].iov_len <= cap; i++) {
        memcpy(dst + len, iov[i].iov_base, iov[i].iov_len);
        len += iov[i].iov_len;
    }
    return len;
}

/* A store holding key "k" with value val; *it is its item (borrowed). */
static struct store *store_with_k(const char *val, struct item **it)
{
    struct store_config cfg = {.max_bytes = 1 << 20, .value_bytes_max = 1 << 20};
    struct store_op op = {.type = STORE_SET, .key = "k", .nkey = 1};
    struct store_change ch;
    struct store *s = store_new(&cfg);

    op.value = val;
    op.nvalue = strlen(val);
    if (s == NULL || store_apply(s, &op, 1, NOW, &ch) != STORE_OK)
        return NULL;
    *it = store_get(s, "k", 1, NOW);
    return s;
}

static void test_text_and_item_in_order(void)
{
    struct item *it = NULL;
    struct store *s = store_with_k("val", &it);
    struct store_op del = {.type = STORE_DELETE, .key = "k", .nkey = 1};
    struct store_change ch;
    struct outq q;
    char out[64];

    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_PTR_NOT_NULL_FATAL(it);
    outq_init(&q, false);
    CU_ASSERT_EQUAL(outq_str(&q, "VALUE k 0 3\r\n"), 0);
    CU_ASSERT_EQUAL(outq_item(&q, it), 0);
    CU_ASSERT_EQUAL(outq_str(&q, "END\r\n"), 0);
    /* The queue holds a reference: the item outlives its deletion. */
    CU_ASSERT_EQUAL(store_apply(s, &del, 2, NOW, &ch), STORE_OK);
    CU_ASSERT_EQUAL(q.bytes, 13u + 5u + 5u);
    CU_ASSERT_EQUAL(queued(&q, out, sizeof(out)), 23u);
    CU_ASSERT_EQUAL(memcmp(out, "VALUE k 0 3\r\nval\r\nEND\r\n", 23), 0);
    outq_consume(&q, 15); /* into the item */
    CU_ASSERT_EQUAL(queued(&q, out, sizeof(out)), 8u);
    CU_ASSERT_EQUAL(memcmp(out, "l\r\nEND\r\n", 8), 0);
    outq_consume(&q, 8);
    CU_ASSERT_EQUAL(q.bytes, 0u);
    outq_free(&q);
    store_free(s);
}

/* Once everything is sent, the next text goes to the start of the same block:
 * a request/reply connection never allocates another one. */
static void test_empty_queue_reuses_block(void)
{
    struct outq q;
    struct iovec iov[4];

    outq_init(&q, false);
    CU_ASSERT_EQUAL(outq_str(&q, "STORED\r\n"), 0);
    CU_ASSERT_EQUAL_FATAL(outq_iov(&q, iov, 4), 1u);
    const char *first = iov[0].iov_base;
    struct outq_block *blk = q.cur;
    outq_consume(&q, 8);
    for (int i = 0; i < 10000; i++) {
        CU_ASSERT_EQUAL_FATAL(outq_str(&q, "STORED\r\n"), 0);
        CU_ASSERT_EQUAL_FATAL(outq_iov(&q, iov, 4), 1u);
        CU_ASSERT_PTR_EQUAL_FATAL(iov[0].iov_base, first);
        outq_consume(&q, 8);
    }
    CU_ASSERT_PTR_EQUAL(q.cur, blk);
    outq_free(&q);
}

/* Text still queued is never overwritten: with bytes pending, new text goes
 * after them (or into a new block). */
static void test_pending_text_not_overwritten(void)
{
    struct outq q;
    char out[64];

    outq_init(&q, false);
    CU_ASSERT_EQUAL(outq_str(&q, "STORED\r\n"), 0);
    CU_ASSERT_EQUAL(outq_str(&q, "DELETED\r\n"), 0);
    outq_consume(&q, 8);
    CU_ASSERT_EQUAL(outq_str(&q, "END\r\n"), 0);
    CU_ASSERT_EQUAL(queued(&q, out, sizeof(out)), 14u);
    CU_ASSERT_EQUAL(memcmp(out, "DELETED\r\nEND\r\n", 14), 0);
    outq_free(&q);
}

/* A block made for one long text, and a segment array grown for a long
 * pipeline, are released once the queue is empty. */
static void test_grown_memory_released(void)
{
    struct outq q;
    size_t big = 100000;
    char *text = malloc(big);

    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    memset(text, 'x', big);
    outq_init(&q, false);
    CU_ASSERT_EQUAL(outq_text(&q, text, big), 0);
    outq_consume(&q, big);
    CU_ASSERT_PTR_NULL(q.cur);
    CU_ASSERT_EQUAL(outq_str(&q, "END\r\n"), 0); /* a normal block again */
    outq_consume(&q, 5);

    /* Text and items alternating make one segment each. */
    struct item *it = NULL;
    struct store *s = store_with_k("v", &it);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    for (int i = 0; i < 5000; i++) {
        CU_ASSERT_EQUAL_FATAL(outq_str(&q, "VALUE k 0 1\r\n"), 0);
        CU_ASSERT_EQUAL_FATAL(outq_item(&q, it), 0);
    }
    CU_ASSERT(q.cap >= 10000);
    CU_ASSERT_EQUAL(q.bytes, 5000u * 16u);
    outq_consume(&q, q.bytes);
    CU_ASSERT_PTR_NULL(q.seg);
    CU_ASSERT_EQUAL(q.cap, 0u);
    CU_ASSERT_EQUAL(outq_str(&q, "END\r\n"), 0);
    CU_ASSERT_EQUAL(q.bytes, 5u);
    outq_free(&q);
    store_free(s);
    free(text);
}

void unit_outq_register(void)
{
    CU_pSuite s = unit_suite("outq");

    unit_test(s, "text and items in order", test_text_and_item_in_order);
    unit_test(s, "empty queue reuses its block", test_empty_queue_reuses_block);
    unit_test(s, "pending text not overwritten", test_pending_text_not_overwritten);
    unit_test(s, "grown memory released", test_grown_memory_released);
}
