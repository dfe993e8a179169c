/*
 * unit_txn.c - replicated writes: a coordinator's change encoded as
 * operations and prepared on other stores (lib/txn.c).
 *
 * Two stores stand for two replicas: a change evaluated on one ("the
 * coordinator") must produce the identical item on the other, and a store
 * whose state differs must refuse it rather than diverge.
 */
#include "unit.h"

#include "buf.h"
#include "store.h"
#include "txn.h"
#include "wal.h"

#include <string.h>

#define NOW 1700000000000LL

static struct store *mkstore(void)
{
    struct store_config sc = {.max_bytes = 1 << 20, .value_bytes_max = 4096, .seed = 1};
    struct store *s = store_new(&sc);
    CU_ASSERT_FATAL(s != NULL);
    return s;
}

/* Evaluates op on s as a coordinator does and encodes the result. Returns
 * the store status; b/nops get the operations when it is STORE_OK. */
static enum store_status encode(struct store *s, const struct store_op *op, uint64_t txid,
                                struct buf *b, uint32_t *nops)
{
    struct store_change ch;

    b->len = 0;
    *nops = 0;
    if (store_prepare(s, op, txid, NOW, &ch) < 0)
        return ch.status;
    uint64_t expected = ch.type == STORE_FLUSH ? 0 : txn_version(s, ch.key, ch.nkey);
    CU_ASSERT_EQUAL_FATAL(txn_encode_change(b, &ch, expected, nops), 0);
    store_abort(s, &ch);
    return STORE_OK;
}

static int prepare(struct txn_rm *rm, uint64_t txid, const struct buf *b, uint32_t nops,
                   bool recovered, struct txn_prep **p)
{
    struct tpc_txn t = {.txid = txid,
                        .nops = nops,
                        .ops = b->data,
                        .nbytes = (uint32_t)b->len,
                        .recovered = recovered};
    return txn_prepare(rm, &t, p);
}

static struct store_op set_op(const char *key, const char *val)
{
    return (struct store_op){.type = STORE_SET,
                             .key = key,
                             .nkey = strlen(key),
                             .value = val,
                             .nvalue = strlen(val),
                             .flags = 7,
                             .exptime_ms = NOW + 60000};
}

static void apply_everywhere(struct store **s, size_t n, const struct store_op *op,
                             uint64_t txid)
{
    struct buf b = {0};
    uint32_t nops;

    CU_ASSERT_EQUAL_FATAL(encode(s[0], op, txid, &b, &nops), STORE_OK);
    for (size_t i = 0; i < n; i++) {
        struct txn_rm rm = {.store = s[i]};
        struct txn_prep *p;
        CU_ASSERT_EQUAL_FATAL(prepare(&rm, txid, &b, nops, false, &p), 0);
        txn_commit(&rm, p);
        CU_ASSERT_EQUAL(rm.prepared, 0);
        CU_ASSERT_EQUAL(store_locks(s[i]), 0);
    }
    buf_free(&b);
}

static void same_item(struct store *a, struct store *b, const char *key)
{
    struct item *x = store_get(a, key, strlen(key), NOW);
    struct item *y = store_get(b, key, strlen(key), NOW);

    CU_ASSERT_FATAL((x == NULL) == (y == NULL));
    if (x == NULL)
        return;
    CU_ASSERT_EQUAL(x->cas, y->cas);
    CU_ASSERT_EQUAL(x->flags, y->flags);
    CU_ASSERT_EQUAL(x->exptime_ms, y->exptime_ms);
    CU_ASSERT_EQUAL(x->mtime_ms, y->mtime_ms);
    CU_ASSERT_EQUAL_FATAL(x->nval, y->nval);
    CU_ASSERT_EQUAL(memcmp(item_value(x), item_value(y), x->nval), 0);
}

static void test_effects_identical_on_every_replica(void)
{
    struct store *s[2] = {mkstore(), mkstore()};
    struct store_op op = set_op("k", "41");

    apply_everywhere(s, 2, &op, 100);
    same_item(s[0], s[1], "k");
    CU_ASSERT_EQUAL(store_get(s[1], "k", 1, NOW)->cas, 100);

    op = (struct store_op){.type = STORE_INCR, .key = "k", .nkey = 1, .delta = 1};
    apply_everywhere(s, 2, &op, 200);
    same_item(s[0], s[1], "k");
    CU_ASSERT_EQUAL(memcmp(item_value(store_get(s[1], "k", 1, NOW)), "42", 2), 0);

    op = (struct store_op){
        .type = STORE_APPEND, .key = "k", .nkey = 1, .value = "x", .nvalue = 1};
    apply_everywhere(s, 2, &op, 300);
    same_item(s[0], s[1], "k");

    op = (struct store_op){
        .type = STORE_TOUCH, .key = "k", .nkey = 1, .exptime_ms = NOW + 5};
    apply_everywhere(s, 2, &op, 400);
    same_item(s[0], s[1], "k");
    CU_ASSERT_EQUAL(store_get(s[1], "k", 1, NOW)->exptime_ms, NOW + 5);

    op = (struct store_op){.type = STORE_DELETE, .key = "k", .nkey = 1};
    apply_everywhere(s, 2, &op, 500);
    CU_ASSERT_PTR_NULL(store_get(s[1], "k", 1, NOW));
    store_free(s[0]);
    store_free(s[1]);
}

static void test_version_mismatch_votes_conflict(void)
{
    struct store *a = mkstore(), *b = mkstore();
    struct store_op op = set_op("k", "v1");
    struct buf ops = {0};
    struct txn_rm rm = {.store = b};
    struct txn_prep *p;
    uint32_t nops;

    /* b missed nothing but holds another version: refuse. */
    store_apply(b, &op, 5, NOW, &(struct store_change){0});
    CU_ASSERT_EQUAL(encode(a, &op, 10, &ops, &nops), STORE_OK);
    CU_ASSERT_EQUAL(prepare(&rm, 10, &ops, nops, false, &p), TPC_R_CONFLICT);
    CU_ASSERT_EQUAL(store_locks(b), 0);
    CU_ASSERT_EQUAL(rm.prepared, 0);
    /* After a restart the check was already passed: it is skipped. */
    CU_ASSERT_EQUAL(prepare(&rm, 10, &ops, nops, true, &p), 0);
    txn_commit(&rm, p);
    CU_ASSERT_EQUAL(store_get(b, "k", 1, NOW)->cas, 10);
    buf_free(&ops);
    store_free(a);
    store_free(b);
}

static void test_locked_key_votes_busy(void)
{
    struct store *s = mkstore();
    struct store_op op = set_op("k", "v");
    struct buf ops = {0};
    struct txn_rm rm = {.store = s};
    struct txn_prep *p1, *p2;
    uint32_t nops;

    CU_ASSERT_EQUAL(encode(s, &op, 10, &ops, &nops), STORE_OK);
    CU_ASSERT_EQUAL(prepare(&rm, 10, &ops, nops, false, &p1), 0);
    CU_ASSERT_PTR_EQUAL(txn_holder(&rm, "k", 1), p1);
    CU_ASSERT_EQUAL(prepare(&rm, 11, &ops, nops, false, &p2), TPC_R_BUSY);
    txn_abort(&rm, p1);
    CU_ASSERT_PTR_NULL(txn_holder(&rm, "k", 1));
    CU_ASSERT_PTR_NULL(store_get(s, "k", 1, NOW)); /* aborted: nothing stored */
    CU_ASSERT_EQUAL(encode(s, &op, 11, &ops, &nops), STORE_OK);
    CU_ASSERT_EQUAL(prepare(&rm, 11, &ops, nops, false, &p2), 0);
    txn_commit(&rm, p2);
    CU_ASSERT_EQUAL(store_get(s, "k", 1, NOW)->cas, 11);
    buf_free(&ops);
    store_free(s);
}

static void test_flush_holds_every_key(void)
{
    struct store *s = mkstore();
    struct store_op set = set_op("k", "v"), flush = {.type = STORE_FLUSH};
    struct buf a = {0}, f = {0};
    struct txn_rm rm = {.store = s};
    struct txn_prep *p1, *p2;
    uint32_t na, nf;

    CU_ASSERT_EQUAL(encode(s, &set, 10, &a, &na), STORE_OK);
    CU_ASSERT_EQUAL(encode(s, &flush, 11, &f, &nf), STORE_OK);
    CU_ASSERT_EQUAL(nf, 1); /* no CHECK for a flush */
    CU_ASSERT_EQUAL(prepare(&rm, 10, &a, na, false, &p1), 0);
    CU_ASSERT_EQUAL(prepare(&rm, 11, &f, nf, false, &p2), TPC_R_BUSY); /* a key is held */
    txn_commit(&rm, p1);
    CU_ASSERT_EQUAL(prepare(&rm, 11, &f, nf, false, &p2), 0);
    CU_ASSERT_PTR_EQUAL(txn_holder(&rm, "other", 5), p2); /* every key */
    CU_ASSERT_EQUAL(prepare(&rm, 12, &a, na, false, &p1), TPC_R_BUSY);
    txn_commit(&rm, p2);
    CU_ASSERT_PTR_NULL(store_get(s, "k", 1, NOW));
    CU_ASSERT_PTR_NULL(rm.flush_holder);
    buf_free(&a);
    buf_free(&f);
    store_free(s);
}

static void test_bad_ops_refused(void)
{
    struct store *s = mkstore();
    struct txn_rm rm = {.store = s};
    struct txn_prep *p;
    struct buf b = {0};
    struct wal_op del = {.kind = WAL_OP_DEL, .key = "k", .nkey = 1};

    /* Garbage, a count that disagrees, an effect with no CHECK. */
    buf_append(&b, "garbage!", 8);
    CU_ASSERT_EQUAL(prepare(&rm, 1, &b, 1, false, &p), TPC_R_BAD_OPS);
    b.len = 0;
    buf_reserve(&b, wal_op_size(&del));
    b.len = wal_op_encode(b.data, &del);
    CU_ASSERT_EQUAL(prepare(&rm, 1, &b, 1, false, &p), TPC_R_BAD_OPS);
    CU_ASSERT_EQUAL(prepare(&rm, 1, &b, 2, false, &p), TPC_R_BAD_OPS);
    CU_ASSERT_EQUAL(store_locks(s), 0);
    CU_ASSERT_EQUAL(rm.prepared, 0);
    buf_free(&b);
    store_free(s);
}

/* Found by tests/fuzz/fuzz_peer.c: a PREPARE claiming 2^31 operations in a
 * few bytes made txn_prepare allocate a change for each before decoding
 * one (hundreds of GiB). An op is at least 8 bytes, so such a count is
 * refused as undecodable, before anything is allocated. */
static void test_op_count_beyond_the_bytes_refused_before_allocating(void)
{
    struct store *s = mkstore();
    struct txn_rm rm = {.store = s};
    struct txn_prep *p = NULL;
    struct store_op op = set_op("k", "v");
    struct buf b = {0};
    uint32_t nops;

    CU_ASSERT_EQUAL_FATAL(encode(s, &op, 0x101, &b, &nops), STORE_OK);
    CU_ASSERT_EQUAL(prepare(&rm, 0x101, &b, 0x7fffffff, false, &p), TPC_R_BAD_OPS);
    CU_ASSERT_EQUAL(prepare(&rm, 0x101, &b, UINT32_MAX, true, &p), TPC_R_BAD_OPS);
    CU_ASSERT_EQUAL(prepare(&rm, 0x101, &b, (uint32_t)(b.len / 8 + 1), false, &p),
                    TPC_R_BAD_OPS);
    CU_ASSERT_EQUAL(rm.prepared, 0);
    CU_ASSERT_EQUAL(store_locks(s), 0);
    /* The right count still prepares. */
    CU_ASSERT_EQUAL(prepare(&rm, 0x101, &b, nops, false, &p), 0);
    if (p)
        txn_abort(&rm, p);
    buf_free(&b);
    store_free(s);
}

static void test_no_memory_votes_no(void)
{
    struct store_config sc = {.max_bytes = 300, .value_bytes_max = 4096, .seed = 1};
    struct store *small = store_new(&sc), *big = mkstore();
    char val[200];
    struct store_op op;
    struct buf b = {0};
    struct txn_rm rm = {.store = small};
    struct txn_prep *p;
    uint32_t nops;

    memset(val, 'x', sizeof(val));
    op = (struct store_op){
        .type = STORE_SET, .key = "a", .nkey = 1, .value = val, .nvalue = sizeof(val)};
    store_apply(small, &op, 1, NOW, &(struct store_change){0});
    store_apply(big, &op, 1, NOW, &(struct store_change){0});
    op.key = "b";
    CU_ASSERT_EQUAL(encode(big, &op, 10, &b, &nops), STORE_OK);
    CU_ASSERT_EQUAL(prepare(&rm, 10, &b, nops, false, &p), TPC_R_NO_MEMORY);
    CU_ASSERT_EQUAL(store_locks(small), 0);
    /* Re-locked at recovery it was durable: it is prepared regardless
     * (regression: the simulator's seed 1856 failed to restart). */
    CU_ASSERT_EQUAL_FATAL(prepare(&rm, 10, &b, nops, true, &p), 0);
    txn_commit(&rm, p);
    CU_ASSERT_PTR_NOT_NULL(store_get(small, "b", 1, NOW));
    buf_free(&b);
    store_free(small);
    store_free(big);
}

/* ---- expiry, flush and clocks: no replica decides a key's state alone ----
 *
 * Each replica has its own clock; the coordinator's decides, once, and what
 * it decided is what every replica applies. These tests give the stores
 * different clocks and run what each replica would do on its own meanwhile
 * (the background expiry walk, reads that meet dead items). */

/* As encode(), at the coordinator's clock now. */
static enum store_status encode_at(struct store *s, const struct store_op *op, uint64_t txid,
                                   int64_t now, struct buf *b, uint32_t *nops)
{
    struct store_change ch;

    b->len = 0;
    *nops = 0;
    if (store_prepare(s, op, txid, now, &ch) < 0)
        return ch.status;
    uint64_t expected = ch.type == STORE_FLUSH ? 0 : txn_version(s, ch.key, ch.nkey);
    CU_ASSERT_EQUAL_FATAL(txn_encode_change(b, &ch, expected, nops), 0);
    store_abort(s, &ch);
    return STORE_OK;
}

/* Prepares b on every store; returns how many voted yes (0..n), and
 * commits them all only if every one did. */
static size_t commit_everywhere(struct store **s, size_t n, uint64_t txid, const struct buf *b,
                                uint32_t nops)
{
    struct txn_rm rm[4];
    struct txn_prep *p[4];
    size_t yes = 0;

    CU_ASSERT_FATAL(n <= 4);
    for (size_t i = 0; i < n; i++) {
        rm[i] = (struct txn_rm){.store = s[i]};
        if (prepare(&rm[i], txid, b, nops, false, &p[i]) == 0)
            yes++;
        else
            p[i] = NULL;
    }
    for (size_t i = 0; i < n; i++) {
        if (p[i] == NULL)
            continue;
        if (yes == n)
            txn_commit(&rm[i], p[i]);
        else
            txn_abort(&rm[i], p[i]);
    }
    return yes;
}

static struct store *mkstore_replicated(void)
{
    struct store_config sc = {.max_bytes = 1 << 20, .value_bytes_max = 4096, .seed = 1,
                              .replicated = true};
    struct store *s = store_new(&sc);
    CU_ASSERT_FATAL(s != NULL);
    return s;
}

/* Two replicas see key the same at time now (present with the same item,
 * or both not). */
static bool same_at(struct store *a, struct store *b, const char *key, int64_t now)
{
    struct item *x = store_get(a, key, strlen(key), now);
    struct item *y = store_get(b, key, strlen(key), now);

    if (x == NULL || y == NULL)
        return x == y;
    return x->cas == y->cas && x->exptime_ms == y->exptime_ms && x->nval == y->nval &&
           memcmp(item_value(x), item_value(y), x->nval) == 0;
}

/* Found by review: a delayed flush_all was carried out by each replica on
 * its own timer, then forgotten. A set stamped before the flush time by a
 * coordinator whose clock is behind survived on a replica whose flush had
 * already fired and vanished on the others. */
static void test_delayed_flush_does_not_split_replicas(void)
{
    struct store *s[2] = {mkstore_replicated(), mkstore_replicated()};
    struct store_op flush = {.type = STORE_FLUSH, .flush_at_ms = NOW + 2000};
    struct store_op set = set_op("y", "v");
    struct buf b = {0};
    uint32_t nops;
    int64_t f = NOW + 2000;

    set.exptime_ms = 0;
    CU_ASSERT_EQUAL_FATAL(encode_at(s[0], &flush, 10, NOW, &b, &nops), STORE_OK);
    CU_ASSERT_EQUAL_FATAL(commit_everywhere(s, 2, 10, &b, nops), 2);
    /* Replica 0's clock runs 300 ms ahead: its background walk meets the
     * flush time first. */
    store_expire_step(s[0], f + 300, 1024);
    /* Replica 1 coordinates a set 100 ms before the flush time. */
    CU_ASSERT_EQUAL_FATAL(encode_at(s[1], &set, 20, f - 100, &b, &nops), STORE_OK);
    CU_ASSERT_EQUAL_FATAL(commit_everywhere(s, 2, 20, &b, nops), 2);
    store_expire_step(s[1], f + 10, 1024);
    /* Written before the flush time: flushed, and the same everywhere. */
    CU_ASSERT(same_at(s[0], s[1], "y", f + 1000));
    CU_ASSERT_PTR_NULL(store_get(s[0], "y", 1, f + 1000));
    /* And the key can still be written through either replica. */
    set = set_op("y", "w");
    CU_ASSERT_EQUAL_FATAL(encode_at(s[0], &set, 30, f + 2000, &b, &nops), STORE_OK);
    CU_ASSERT_EQUAL(commit_everywhere(s, 2, 30, &b, nops), 2);
    CU_ASSERT(same_at(s[0], s[1], "y", f + 2000));
    buf_free(&b);
    store_free(s[0]);
    store_free(s[1]);
}

/* Found by review: a participant's expiry walk reclaimed an item its key
 * lock held between prepare and commit, so the committed TOUCH found
 * nothing there while the coordinator kept the item (for good, with
 * touch 0). */
static void test_expiry_walk_spares_a_locked_key(void)
{
    struct store *s[2] = {mkstore_replicated(), mkstore_replicated()};
    struct store_op set = set_op("x", "v"), touch = {.type = STORE_TOUCH, .key = "x", .nkey = 1};
    struct txn_rm rm[2] = {{.store = s[0]}, {.store = s[1]}};
    struct txn_prep *p[2];
    struct buf b = {0};
    uint32_t nops;
    int64_t e = NOW + 1000;

    set.exptime_ms = e;
    CU_ASSERT_EQUAL_FATAL(encode_at(s[0], &set, 10, NOW, &b, &nops), STORE_OK);
    CU_ASSERT_EQUAL_FATAL(commit_everywhere(s, 2, 10, &b, nops), 2);
    /* touch x 0, just before it expires. */
    CU_ASSERT_EQUAL_FATAL(encode_at(s[0], &touch, 20, e - 5, &b, &nops), STORE_OK);
    for (int i = 0; i < 2; i++)
        CU_ASSERT_EQUAL_FATAL(prepare(&rm[i], 20, &b, nops, false, &p[i]), 0);
    /* Replica 1's walk passes by while the commit is on its way. */
    store_expire_step(s[1], e + 10, 1024);
    store_get(s[1], "x", 1, e + 10);
    for (int i = 0; i < 2; i++)
        txn_commit(&rm[i], p[i]);
    CU_ASSERT(same_at(s[0], s[1], "x", e + 5000));
    CU_ASSERT_PTR_NOT_NULL(store_get(s[1], "x", 1, e + 5000));
    buf_free(&b);
    store_free(s[0]);
    store_free(s[1]);
}

/* Found by review: a participant judged the CHECK by liveness at its own
 * state of reclamation. One whose clock is ahead had already dropped an
 * item the coordinator still saw alive and voted "conflict" on every write
 * of that key. */
static void test_check_ignores_what_a_participant_reclaimed(void)
{
    struct store *s[2] = {mkstore_replicated(), mkstore_replicated()};
    struct store_op set = set_op("x", "v");
    struct buf b = {0};
    uint32_t nops;
    int64_t e = NOW + 1000;

    set.exptime_ms = e;
    CU_ASSERT_EQUAL_FATAL(encode_at(s[0], &set, 10, NOW, &b, &nops), STORE_OK);
    CU_ASSERT_EQUAL_FATAL(commit_everywhere(s, 2, 10, &b, nops), 2);
    /* Replica 1's clock is 500 ms ahead: its walk and a read meet x dead. */
    store_expire_step(s[1], e + 400, 1024);
    store_get(s[1], "x", 1, e + 400);
    /* Replica 0, 100 ms before e, replaces x: every replica must agree. */
    set = set_op("x", "w");
    CU_ASSERT_EQUAL_FATAL(encode_at(s[0], &set, 20, e - 100, &b, &nops), STORE_OK);
    CU_ASSERT_EQUAL(commit_everywhere(s, 2, 20, &b, nops), 2);
    CU_ASSERT(same_at(s[0], s[1], "x", e + 400));
    buf_free(&b);
    store_free(s[0]);
    store_free(s[1]);
}

/* Found by the adversarial audit: a replica restarted with its clock an
 * hour off wrote with that clock, and deleted live items as expired, before
 * any clock probe said so. Every participant checks the coordinator's
 * clock in the CHECK (and a FLUSH's time stamp) against its own: too far
 * ahead, or too far behind (the PREPARE's transit allowed for), votes NO. */
static void test_coordinator_clock_far_off_votes_no(void)
{
    struct store *s[2] = {mkstore_replicated(), mkstore_replicated()};
    struct txn_rm rm = {.store = s[1], .now_ms = NOW, .clock_ahead_ms = 500,
                        .clock_behind_ms = 2500};
    struct store_op set = set_op("x", "v"), flush = {.type = STORE_FLUSH};
    struct txn_prep *p;
    struct buf b = {0};
    uint32_t nops;

    set.exptime_ms = 0;
    CU_ASSERT_EQUAL_FATAL(encode_at(s[0], &set, 10, NOW + 3600000, &b, &nops), STORE_OK);
    CU_ASSERT_EQUAL(prepare(&rm, 10, &b, nops, false, &p), TPC_R_CLOCK);
    CU_ASSERT_EQUAL(store_locks(s[1]), 0);
    CU_ASSERT_EQUAL(rm.prepared, 0);
    /* Recovered, it had passed then: prepared regardless. */
    CU_ASSERT_EQUAL_FATAL(prepare(&rm, 10, &b, nops, true, &p), 0);
    txn_abort(&rm, p);
    CU_ASSERT_EQUAL_FATAL(encode_at(s[0], &set, 11, NOW + 501, &b, &nops), STORE_OK);
    CU_ASSERT_EQUAL(prepare(&rm, 11, &b, nops, false, &p), TPC_R_CLOCK);
    CU_ASSERT_EQUAL_FATAL(encode_at(s[0], &set, 12, NOW + 499, &b, &nops), STORE_OK);
    CU_ASSERT_EQUAL_FATAL(prepare(&rm, 12, &b, nops, false, &p), 0);
    txn_abort(&rm, p);
    CU_ASSERT_EQUAL_FATAL(encode_at(s[0], &set, 13, NOW - 2499, &b, &nops), STORE_OK);
    CU_ASSERT_EQUAL_FATAL(prepare(&rm, 13, &b, nops, false, &p), 0);
    txn_abort(&rm, p);
    CU_ASSERT_EQUAL_FATAL(encode_at(s[0], &set, 14, NOW - 2501, &b, &nops), STORE_OK);
    CU_ASSERT_EQUAL(prepare(&rm, 14, &b, nops, false, &p), TPC_R_CLOCK);
    flush.flush_at_ms = NOW + 3600000 + 5000;
    CU_ASSERT_EQUAL_FATAL(encode_at(s[0], &flush, 15, NOW + 3600000, &b, &nops), STORE_OK);
    CU_ASSERT_EQUAL(prepare(&rm, 15, &b, nops, false, &p), TPC_R_CLOCK);
    CU_ASSERT_PTR_NULL(rm.flush_holder);
    buf_free(&b);
    store_free(s[0]);
    store_free(s[1]);
}

/* A 2PC record's payload: the head, then a PREPARE's ops as given; a
 * COMMIT's is the head alone. */
static void test_record_encoding_round_trip(void)
{
    struct buf b = BUF_INIT;
    struct wal_txn h;
    size_t pos = 0;
    const char ops[] = "opaque ops bytes";
    struct tpc_txn t = {.txid = 77, .epoch = 3, .coord = 2, .nops = 5, .ops = ops,
                        .nbytes = sizeof(ops)};

    CU_ASSERT_EQUAL_FATAL(txn_encode_record(&b, &t), 0);
    CU_ASSERT_EQUAL(b.len, WAL_TXN_BYTES + sizeof(ops));
    CU_ASSERT_EQUAL_FATAL(wal_txn_decode(b.data, b.len, &h, &pos), 0);
    CU_ASSERT_EQUAL(h.txid, 77);
    CU_ASSERT_EQUAL(h.epoch, 3);
    CU_ASSERT_EQUAL(h.coordinator, 2);
    CU_ASSERT_EQUAL(h.nops, 5);
    CU_ASSERT_EQUAL(pos, WAL_TXN_BYTES);
    CU_ASSERT(memcmp(b.data + pos, ops, sizeof(ops)) == 0);
    /* Reused for a record without ops: the buffer starts over. */
    t.ops = NULL;
    CU_ASSERT_EQUAL_FATAL(txn_encode_record(&b, &t), 0);
    CU_ASSERT_EQUAL(b.len, WAL_TXN_BYTES);
    pos = 0;
    CU_ASSERT_EQUAL_FATAL(wal_txn_decode(b.data, b.len, &h, &pos), 0);
    CU_ASSERT_EQUAL(h.nops, 0);
    buf_free(&b);
}

void unit_txn_register(void)
{
    CU_pSuite s = unit_suite("txn");

    unit_test(s, "effects give identical items on every replica",
              test_effects_identical_on_every_replica);
    unit_test(s, "a different version votes conflict; recovery skips the check",
              test_version_mismatch_votes_conflict);
    unit_test(s, "a locked key votes busy; abort leaves nothing",
              test_locked_key_votes_busy);
    unit_test(s, "a prepared flush holds every key", test_flush_holds_every_key);
    unit_test(s, "a 2PC record's payload round trip", test_record_encoding_round_trip);
    unit_test(s, "undecodable operations are refused", test_bad_ops_refused);
    unit_test(s, "out of memory votes no, except at recovery", test_no_memory_votes_no);
    unit_test(s, "an op count beyond the bytes is refused before allocating",
              test_op_count_beyond_the_bytes_refused_before_allocating);
    unit_test(s, "a delayed flush_all does not split the replicas",
              test_delayed_flush_does_not_split_replicas);
    unit_test(s, "the expiry walk spares a key a prepared transaction holds",
              test_expiry_walk_spares_a_locked_key);
    unit_test(s, "a CHECK ignores what a participant reclaimed by its own clock",
              test_check_ignores_what_a_participant_reclaimed);
    unit_test(s, "a coordinator's clock far off votes no",
              test_coordinator_clock_far_off_votes_no);
}
