/*
 * unit_snap.c - snapshots (lib/snap.c): written from a store and read back
 * whole, every part of the file checked on read (header, records, their
 * order, the trailer and its count, bytes after it), nothing visible under
 * the final name before the end, and the 2PC records a snapshot may carry.
 * One suite, "snap":
 *
 *   build/rel/unit snap
 *
 * Recovery's use of snapshots (which one it picks, falling back past a
 * damaged one) is in unit_recover.c.
 */
#include "crc32c.h"
#include "snap.h"
#include "tdir.h"
#include "unit.h"
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void test_snapshot_written_from_a_store_round_trips(void)
{
    struct tdir d;
    struct recover_result res;
    struct store *src = tdir_new_store(), *s;
    struct snap_header h = {.lsn = 5, .next_cas = 500, .flush_at_ms = 0};
    char err[ERRCAP], key[32], val[128];
    uint64_t items = 0;

    tdir_make(&d);
    for (uint64_t i = 1; i <= 50; i++) {
        char k[32], v[128];
        struct wal_op op = model_op(i, k, sizeof(k), v);
        CU_ASSERT_EQUAL(store_load_put(src, op.key, op.nkey, op.value, op.nvalue,
                                       op.flags, i % 5 == 0 ? NOW + 99000 : 0,
                                       op.mtime_ms, op.cas),
                        0);
    }
    /* One that expires at NOW + 10: stored, so written all the same (the
     * snapshot keeps the stored state, which is what the log it replaces
     * would have loaded). */
    CU_ASSERT_EQUAL(store_load_put(src, "expiring", 8, "e", 1, 0, NOW + 10, NOW, 77), 0);
    CU_ASSERT_EQUAL(snap_write_store(d.path, src, &h, &items, NULL, NULL), 0);
    CU_ASSERT_EQUAL(items, 51);
    store_free(src);

    /* Recovered after it expired: loaded, then reclaimed (a single
     * replica reclaims what is dead once the state is back). */
    CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW + 20, &res, err, &s), 0);
    CU_ASSERT_EQUAL(res.snap_lsn, 5);
    CU_ASSERT_EQUAL(res.snap_items, 51);
    CU_ASSERT_EQUAL(res.next_lsn, 6);
    CU_ASSERT(res.next_cas >= 500);
    for (uint64_t i = 1; i <= 50; i++) {
        model_key(key, sizeof(key), i);
        model_value(val, i);
        CU_ASSERT(tdir_item_is(s, key, val, model_vlen(i), (uint32_t)i,
                               i % 5 == 0 ? NOW + 99000 : 0, model_mtime(i), i, NOW));
    }
    CU_ASSERT(tdir_absent(s, "expiring", NOW + 20));
    CU_ASSERT_EQUAL(tdir_live_items(s, NOW), 50);
    CU_ASSERT_EQUAL(tdir_stats_items(s), 50);
    store_free(s);
    tdir_remove(&d);
}

/* ---- snapshots
 * -------------------------------------------------------------------------- */

struct items_seen {
    uint64_t n;
    unsigned bad;
};

static int on_snap_item(void *arg, const struct wal_op *op)
{
    struct items_seen *is = arg;
    char key[32], val[128];
    uint64_t i = ++is->n;

    model_key(key, sizeof(key), i);
    model_value(val, i);
    if (op->kind != WAL_OP_PUT || op->nkey != strlen(key) ||
        memcmp(op->key, key, op->nkey) || op->nvalue != model_vlen(i) ||
        memcmp(op->value, val, op->nvalue) || op->flags != (uint32_t)i || op->cas != i ||
        op->mtime_ms != model_mtime(i))
        is->bad++;
    return 0;
}

static int refuse_item(void *arg, const struct wal_op *op)
{
    (void)arg;
    (void)op;
    return -E2BIG;
}

/* Reads the snapshot at path and expects code and a sentence with needle. */
static void expect_snap_read(const char *path, int code, const char *needle)
{
    struct snap_header h;
    struct items_seen is = {0, 0};
    char err[ERRCAP] = "";

    CU_ASSERT_EQUAL(snap_read(path, &h, on_snap_item, NULL, &is, err, sizeof(err)), code);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, path));
    if (strstr(err, needle) == NULL)
        fprintf(stderr, "\n  snap_read error \"%s\" lacks \"%s\"\n", err, needle);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, needle));
}

static void test_snap_read_checks_every_part(void)
{
    struct tdir d;
    struct snap_header h;
    struct snap_writer *sw;
    struct snap_header want = {.lsn = 7, .next_cas = 8, .flush_at_ms = 0};
    struct items_seen is = {0, 0};
    struct wal_op del = {.kind = WAL_OP_DEL, .key = "k", .nkey = 1};
    char err[ERRCAP], path[512], *img;
    size_t len;

    tdir_make(&d);
    model_snap(&d, 7);
    tdir_snap_path(path, sizeof(path), &d, 7);
    CU_ASSERT_EQUAL(snap_read(path, &h, on_snap_item, NULL, &is, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(is.n, 7);
    CU_ASSERT_EQUAL(is.bad, 0);
    CU_ASSERT(h.lsn == 7 && h.next_cas == 8 && h.flush_at_ms == 0);
    /* The callback's error stops the read and is returned. */
    CU_ASSERT_EQUAL(snap_read(path, &h, refuse_item, NULL, NULL, err, sizeof(err)),
                    -E2BIG);
    img = tdir_read_all(path, &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(img);

    tdir_write_all_file(path, img, len - 1);
    expect_snap_read(path, -EBADMSG, "truncated record");
    tdir_write_all_file(path, img, len - 36); /* the trailer gone whole */
    expect_snap_read(path, -EBADMSG, "truncated record");
    tdir_write_all_file(path, img, SNAP_HEADER_BYTES - 1);
    expect_snap_read(path, -EBADMSG, "shorter than a snapshot header");
    tdir_write_all_file(path, img, 0);
    expect_snap_read(path, -EBADMSG, "empty file");
    tdir_write_all_file(path, img, len);
    tdir_append_file(path, "x", 1);
    expect_snap_read(path, -EBADMSG, "after the trailer");
    tdir_write_all_file(path, img, len);
    tdir_flip_byte(path, SNAP_HEADER_BYTES + 30);
    expect_snap_read(path, -EBADMSG, "damaged record");
    tdir_write_all_file(path, img, len);
    tdir_flip_byte(path, 3);
    expect_snap_read(path, -EBADMSG, "header is damaged");
    /* A trailer with a valid CRC but the wrong count. */
    {
        char *t = img + len - 36;
        util_put_le64(t + WAL_RECORD_HEADER_BYTES, 6);
        util_put_le32(t, crc32c(0, t + 4, 32));
        tdir_write_all_file(path, img, len);
        expect_snap_read(path, -EBADMSG, "does not match");
        util_put_le64(t + WAL_RECORD_HEADER_BYTES, 7);
        util_put_le32(t, crc32c(0, t + 4, 32));
    }
    /* An item numbered out of order, with a valid CRC. */
    {
        char *r = img + SNAP_HEADER_BYTES;
        uint32_t n = util_get_le32(r + 4);
        util_put_le64(r + 8, 2);
        util_put_le32(r, crc32c(0, r + 4, WAL_RECORD_HEADER_BYTES - 4 + n));
        tdir_write_all_file(path, img, len);
        expect_snap_read(path, -EBADMSG, "out of order");
    }
    unlink(path);
    expect_snap_read(path, -ENOENT, strerror(ENOENT));
    free(img);

    /* Only PUT items go into a snapshot. */
    CU_ASSERT_EQUAL_FATAL(snap_write_begin(&sw, d.path, &want), 0);
    CU_ASSERT_EQUAL(snap_write_item(sw, &del), -EINVAL);
    snap_write_abort(sw);
    tdir_remove(&d);
}

/* Nothing exists under the final name until snap_write_end; an abort leaves
 * no file at all. */
static void test_snapshot_appears_only_at_its_end(void)
{
    struct tdir d;
    struct snap_writer *sw;
    struct snap_header h = {.lsn = 9, .next_cas = 10, .flush_at_ms = 0};
    char path[512], tmp[512], key[32], val[128];
    struct wal_op op = model_op(1, key, sizeof(key), val);

    tdir_make(&d);
    tdir_snap_path(path, sizeof(path), &d, 9);
    snprintf(tmp, sizeof(tmp), "%s/snap-0000000000000009.tmp", d.path);
    CU_ASSERT_EQUAL_FATAL(snap_write_begin(&sw, d.path, &h), 0);
    CU_ASSERT_EQUAL(snap_write_item(sw, &op), 0);
    CU_ASSERT_TRUE(tdir_file_exists(tmp));
    CU_ASSERT_FALSE(tdir_file_exists(path));
    snap_write_abort(sw);
    CU_ASSERT_FALSE(tdir_file_exists(tmp));
    CU_ASSERT_FALSE(tdir_file_exists(path));

    CU_ASSERT_EQUAL_FATAL(snap_write_begin(&sw, d.path, &h), 0);
    CU_ASSERT_EQUAL(snap_write_item(sw, &op), 0);
    CU_ASSERT_EQUAL(snap_write_end(sw), 0);
    CU_ASSERT_FALSE(tdir_file_exists(tmp));
    CU_ASSERT_TRUE(tdir_file_exists(path));
    tdir_remove(&d);
}

struct txn_seen {
    unsigned items, prepares, commits;
    uint64_t lsn[4];
    char payload[4][16];
};

static int count_items(void *arg, const struct wal_op *op)
{
    (void)op;
    ((struct txn_seen *)arg)->items++;
    return 0;
}

static int on_txn_record(void *arg, const struct wal_record *rec)
{
    struct txn_seen *t = arg;
    unsigned i = t->prepares + t->commits;

    if (rec->type == WAL_REC_PREPARE)
        t->prepares++;
    else if (rec->type == WAL_REC_COMMIT)
        t->commits++;
    if (i < 4 && rec->len < sizeof(t->payload[i])) {
        memcpy(t->payload[i], rec->payload, rec->len);
        t->payload[i][rec->len] = '\0';
    }
    return 0;
}

/* A transaction still open when the snapshot was taken travels in it as
 * its log records; a reader that cannot take them refuses the file. */
static void test_snapshot_carries_open_transactions(void)
{
    struct tdir d;
    struct snap_writer *sw;
    struct snap_header h = {.lsn = 4, .next_cas = 5, .flush_at_ms = 0}, got;
    struct txn_seen t;
    char path[512], err[ERRCAP], key[32], val[128];
    struct wal_op op = model_op(1, key, sizeof(key), val);

    tdir_make(&d);
    CU_ASSERT_EQUAL_FATAL(snap_write_begin(&sw, d.path, &h), 0);
    CU_ASSERT_EQUAL(snap_write_item(sw, &op), 0);
    CU_ASSERT_EQUAL(snap_write_record(sw, WAL_REC_PREPARE, "prep-one", 8), 0);
    CU_ASSERT_EQUAL(snap_write_record(sw, WAL_REC_COMMIT, "commit", 6), 0);
    CU_ASSERT_EQUAL(snap_write_end(sw), 0);
    tdir_snap_path(path, sizeof(path), &d, 4);

    memset(&t, 0, sizeof(t));
    CU_ASSERT_EQUAL(
        snap_read(path, &got, count_items, on_txn_record, &t, err, sizeof(err)), 0);
    CU_ASSERT(t.items == 1 && t.prepares == 1 && t.commits == 1);
    CU_ASSERT_STRING_EQUAL(t.payload[0], "prep-one");
    CU_ASSERT_STRING_EQUAL(t.payload[1], "commit");
    memset(&t, 0, sizeof(t));
    CU_ASSERT_EQUAL(snap_read(path, &got, count_items, NULL, &t, err, sizeof(err)),
                    -EBADMSG);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "not expected here"));
    tdir_remove(&d);
}

void unit_snap_register(void)
{
    CU_pSuite s = unit_suite("snap");

    unit_test(s, "snapshot written from a store round trips",
              test_snapshot_written_from_a_store_round_trips);
    unit_test(s, "snap_read checks every part", test_snap_read_checks_every_part);
    unit_test(s, "a snapshot appears only at its end; an abort leaves nothing",
              test_snapshot_appears_only_at_its_end);
    unit_test(s, "a snapshot carries the transactions open when it was taken",
              test_snapshot_carries_open_transactions);
}
