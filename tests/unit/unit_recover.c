/*
 * unit_recover.c - start-up recovery (lib/recover.c) over data directories
 * built on disk with the real log writer (lib/wal.c) and snapshot writer
 * (lib/snap.c), then damaged with ordinary file operations: torn tails,
 * zeroed blocks, flipped bytes, missing segments, partial headers, damaged
 * or newer snapshots. One suite, "recover":
 *
 *   build/rel/unit recover
 *
 * What is checked: the store holds exactly what the log and snapshot say,
 * a torn tail of the last segment is cut (and only that), and everything
 * else that does not read back is refused with an error naming the file
 * and offset - never a store with invented or silently missing data.
 * Every test makes its own directory under $TMPDIR (or /tmp) and removes it;
 * log lines go to a file in that directory (some tests read them).
 */
#include "datadir.h"
#include "crc32c.h"
#include "log.h"
#include "recover.h"
#include "snap.h"
#include "store.h"
#include "tdir.h"
#include "unit.h"
#include "util.h"
#include "wal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

/* A log of records 1..n, one write batch per record up to single, then
 * records single+1..n appended together (one batch). Returns each record's
 * offset in the one segment (offs[1..n]) and its end (offs[n+1]). */
static void batched_log(const struct tdir *d, uint64_t single, uint64_t n, size_t *offs)
{
    struct lw l;

    lw_open(&l, d, 1, 1u << 20);
    model_write(&l, 1, single);
    for (uint64_t i = single + 1; i <= n; i++) {
        char key[32], val[128];
        struct txb t;
        struct wal_op op = model_op(i, key, sizeof(key), val);
        struct wal_txn head = {.txid = i, .epoch = 1, .coordinator = 0, .nops = 1};
        txb_begin(&t, i);
        txb_op(&t, &op);
        wal_txn_encode(t.p, &head);
        CU_ASSERT_EQUAL(wal_append(l.w, WAL_REC_WRITE, t.p, t.len, lw_ack, &l),
                        (int64_t)i);
        free(t.p);
    }
    lw_wait(&l, n);
    lw_close(&l);

    char path[4200];
    tdir_seg_path(path, sizeof(path), d, 1);
    size_t off = WAL_SEGMENT_HEADER_BYTES, len = 0;
    char *img = tdir_read_all(path, &len);
    struct wal_record rec;
    for (uint64_t i = 1; i <= n + 1; i++) {
        offs[i] = off;
        long k = i <= n ? wal_record_decode(img + off, len - off, &rec) : 0;
        if (i <= n) {
            CU_ASSERT_FATAL(k > 0);
            /* The writer marks where each batch starts. */
            CU_ASSERT_EQUAL(rec.flags & WAL_REC_FLAG_BATCH,
                            i <= single + 1 ? WAL_REC_FLAG_BATCH : 0);
            off += (size_t)k;
        }
    }
    free(img);
}

static void poke(const struct tdir *d, size_t off, int byte, size_t n)
{
    char path[4200];
    tdir_seg_path(path, sizeof(path), d, 1);
    int fd = open(path, O_RDWR | O_CLOEXEC);
    char buf[256];

    CU_ASSERT_FATAL(fd >= 0 && n <= sizeof(buf));
    memset(buf, byte, n);
    CU_ASSERT_EQUAL(pwrite(fd, buf, n, (off_t)off), (ssize_t)n);
    close(fd);
}

/* Issue 16: a power cut can leave the batch being written with holes (its
 * pages reach the disk in any order) and valid records after them; that
 * batch was never acknowledged, so it is cut at the hole and the start
 * goes on. Damage in a batch a later one follows was synced: refused, with
 * the exact cut in the message. */
static void test_hole_in_last_batch_is_cut(void)
{
    struct tdir d;
    struct recover_result res;
    struct store *s;
    char err[ERRCAP], want[4400];
    size_t offs[16];

    /* Records 1-4 one batch each, 5-8 one batch; a hole in record 6. */
    tdir_make(&d);
    batched_log(&d, 4, 8, offs);
    poke(&d, offs[6] + 10, 0, 40);
    CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, &s), 0);
    CU_ASSERT_TRUE(model_holds(s, 5, 8));
    CU_ASSERT_EQUAL(res.holes_cut, 1);
    CU_ASSERT_EQUAL(res.next_lsn, 6);
    store_free(s);
    tdir_remove(&d);

    /* The hole at the batch's first record (its mark gone with it). */
    tdir_make(&d);
    batched_log(&d, 4, 8, offs);
    poke(&d, offs[5], 0, 64);
    CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, &s), 0);
    CU_ASSERT_TRUE(model_holds(s, 4, 8));
    CU_ASSERT_EQUAL(res.holes_cut, 1);
    store_free(s);
    /* It was made durable: the next start finds a clean log. */
    CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, &s), 0);
    CU_ASSERT_TRUE(model_holds(s, 4, 8));
    CU_ASSERT_EQUAL(res.holes_cut + res.truncated_bytes, 0);
    store_free(s);
    tdir_remove(&d);

    /* Damage in record 3: batches 4 and 5-8 were written after it was
     * synced. Refused, naming the exact cut and the later records. */
    tdir_make(&d);
    batched_log(&d, 4, 8, offs);
    poke(&d, offs[3] + 12, 0xab, 4);
    CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, NULL), -EBADMSG);
    snprintf(want, sizeof(want), "truncate -s %zu %s/wal-0000000000000001.log", offs[3],
             d.path);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, want));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "records from 3 on"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "data an fsync had covered is damaged"));
    /* ... unless the last run wrote without fsync and lost power: then
     * anything at the end of the last segment may be missing. */
    s = tdir_new_store();
    struct recover_opts ro = {.unsynced_tail = true};
    CU_ASSERT_EQUAL(recover_cluster(d.path, s, NOW, NULL, &ro, &res, err, ERRCAP), 0);
    CU_ASSERT_TRUE(model_holds(s, 2, 8));
    CU_ASSERT_EQUAL(res.holes_cut, 1);
    store_free(s);
    tdir_remove(&d);
}

/* Issue 16: a zeroed segment header was taken for a segment created just
 * before a crash, and the segment deleted, records and all. Only an empty
 * one goes; one with records after its header is refused. */
static void test_zeroed_header_with_records_is_refused(void)
{
    struct tdir d;
    struct recover_result res;
    char err[ERRCAP], path[4200];
    size_t offs[16];

    tdir_make(&d);
    batched_log(&d, 6, 6, offs);
    poke(&d, 0, 0, WAL_SEGMENT_HEADER_BYTES);
    CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, NULL), -EBADMSG);
    CU_ASSERT_PTR_NOT_NULL(
        strstr(err, "its header is zeros, yet valid records follow it"));
    tdir_seg_path(path, sizeof(path), &d, 1);
    CU_ASSERT(tdir_file_size(path) > 0); /* still there */
    /* With nothing after the header, it is the crash's leftover. */
    CU_ASSERT_EQUAL(truncate(path, WAL_SEGMENT_HEADER_BYTES + 100), 0);
    poke(&d, WAL_SEGMENT_HEADER_BYTES, 0, 100);
    CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, NULL), 0);
    CU_ASSERT_EQUAL(tdir_file_size(path), -1);
    tdir_remove(&d);
}

/* ---- clean logs -------------------------------------------------------------------- */

static void test_clean_log_replays_every_effect(void)
{
    struct tdir d;
    struct lw l;
    struct txb t;
    struct recover_result res;
    struct store *s;
    char err[ERRCAP], bin[256], key250[251];
    int r;

    for (int i = 0; i < 256; i++)
        bin[i] = (char)(255 - i);
    memset(key250, 'q', 250);
    key250[250] = '\0';
    tdir_make(&d);
    lw_open(&l, &d, 1, 1u << 20);
    txb_begin(&t, 1);
    txb_put(&t, "alpha", "one", 3, 7, 0, NOW - 10000, 1);
    txb_put(&t, "bin", bin, sizeof(bin), 0xffffffffu, NOW + 3600000, NOW - 9000, 2);
    CU_ASSERT_EQUAL(lw_write(&l, &t), 1);
    txb_begin(&t, 2);
    txb_put(&t, "empty", "", 0, 0, 0, NOW - 8000, 3);
    txb_put(&t, key250, "x", 1, 1, 0, NOW - 8000, 4);
    CU_ASSERT_EQUAL(lw_write(&l, &t), 2);
    txb_begin(&t, 3);
    txb_del(&t, "alpha");
    txb_touch(&t, "bin", NOW + 7200000);
    CU_ASSERT_EQUAL(lw_write(&l, &t), 3);
    txb_begin(&t, 4);
    txb_put(&t, "dead", "v", 1, 0, NOW - 1, NOW - 7000, 5);
    txb_put(&t, "touched-dead", "v", 1, 0, 0, NOW - 7000, 6);
    txb_touch(&t, "touched-dead", NOW - 1);
    CU_ASSERT_EQUAL(lw_write(&l, &t), 4);
    txb_begin(&t, 50);
    txb_put(&t, "alpha", "two", 3, 9, 0, NOW - 6000, 60);
    txb_del(&t, "never-existed");
    CU_ASSERT_EQUAL(lw_write(&l, &t), 5);
    txb_begin(&t, 900); /* a txid above every cas: next_cas must pass it too */
    txb_touch(&t, "missing", NOW + 1000);
    CU_ASSERT_EQUAL(lw_write(&l, &t), 6);
    lw_close(&l);

    r = tdir_run_recover(&d, NOW, &res, err, &s);
    CU_ASSERT_EQUAL(r, 0);
    CU_ASSERT(tdir_item_is(s, "alpha", "two", 3, 9, 0, NOW - 6000, 60, NOW));
    CU_ASSERT(tdir_item_is(s, "bin", bin, sizeof(bin), 0xffffffffu, NOW + 7200000,
                           NOW - 9000, 2, NOW));
    CU_ASSERT(tdir_item_is(s, "empty", "", 0, 0, 0, NOW - 8000, 3, NOW));
    CU_ASSERT(tdir_item_is(s, key250, "x", 1, 1, 0, NOW - 8000, 4, NOW));
    CU_ASSERT(tdir_absent(s, "dead", NOW));
    CU_ASSERT(tdir_absent(s, "touched-dead", NOW));
    CU_ASSERT(tdir_absent(s, "missing", NOW));
    CU_ASSERT(tdir_absent(s, "never-existed", NOW));
    CU_ASSERT_EQUAL(tdir_live_items(s, NOW), 4);
    CU_ASSERT_EQUAL(res.records, 6);
    CU_ASSERT_EQUAL(res.next_lsn, 7);
    CU_ASSERT_EQUAL(res.segments, 1);
    CU_ASSERT_EQUAL(res.snap_lsn, 0);
    CU_ASSERT_EQUAL(res.truncated_bytes, 0);
    CU_ASSERT(res.next_cas > 900);
    store_free(s);
    tdir_remove(&d);
}

static void test_immediate_flush_in_log_removes_earlier_items(void)
{
    struct tdir d;
    struct lw l;
    struct txb t;
    struct recover_result res;
    struct store *s;
    char err[ERRCAP];

    tdir_make(&d);
    lw_open(&l, &d, 1, 1u << 20);
    txb_begin(&t, 1);
    txb_put(&t, "a", "1", 1, 0, 0, NOW - 5000, 1);
    txb_put(&t, "b", "2", 1, 0, 0, NOW - 5000, 2);
    lw_write(&l, &t);
    txb_begin(&t, 3);
    txb_flush(&t, 0, NOW - 4000); /* flush_all with no delay */
    lw_write(&l, &t);
    txb_begin(&t, 4);
    txb_put(&t, "c", "3", 1, 0, 0, NOW - 3000, 4);
    lw_write(&l, &t);
    lw_close(&l);

    CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, &s), 0);
    CU_ASSERT(tdir_absent(s, "a", NOW) && tdir_absent(s, "b", NOW));
    CU_ASSERT(tdir_item_is(s, "c", "3", 1, 0, 0, NOW - 3000, 4, NOW));
    CU_ASSERT_EQUAL(tdir_live_items(s, NOW), 1);
    CU_ASSERT_EQUAL(res.records, 3);
    CU_ASSERT(res.next_cas > 4);
    store_free(s);
    tdir_remove(&d);
}

/* Found by review: replay did not load an item already expired at replay
 * time, so a later TOUCH record found nothing and an acknowledged touch was
 * lost at every restart. Replay reproduces the state the log describes,
 * dead items included, and only then judges liveness. */
static void test_touch_replayed_onto_an_item_expired_by_then(void)
{
    struct tdir d;
    struct recover_result res;
    struct store *s;
    struct lw l;
    struct txb t;
    char err[ERRCAP];

    tdir_make(&d);
    lw_open(&l, &d, 1, 1u << 20);
    txb_begin(&t, 1);
    txb_put(&t, "k", "v", 1, 0, NOW - 1000, NOW - 4000, 1); /* set k 0 3 v */
    lw_write(&l, &t);
    txb_begin(&t, 2);
    txb_touch(&t, "k", 0); /* touch k 0, while it was alive */
    lw_write(&l, &t);
    lw_close(&l);
    CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, &s), 0);
    CU_ASSERT(tdir_item_is(s, "k", "v", 1, 0, 0, NOW - 4000, 1, NOW));
    store_free(s);
    tdir_remove(&d);
}

/* flush_all with a delay, due at flush_at: the items written before it go. */
static void delayed_flush_log(const struct tdir *d, int64_t flush_at)
{
    struct lw l;
    struct txb t;

    lw_open(&l, d, 1, 1u << 20);
    txb_begin(&t, 1);
    txb_put(&t, "before", "b", 1, 0, 0, flush_at - 4000, 1);
    lw_write(&l, &t);
    txb_begin(&t, 2);
    txb_flush(&t, flush_at, flush_at - 2000); /* issued 2 s before it is due */
    lw_write(&l, &t);
    txb_begin(&t, 3);
    txb_put(&t, "between", "w", 1, 0, 0, flush_at - 1000,
            3); /* written before it was due */
    lw_write(&l, &t);
    txb_begin(&t, 4);
    txb_put(&t, "after", "a", 1, 0, 0, flush_at + 500, 4);
    lw_write(&l, &t);
    lw_close(&l);
}

static void test_delayed_flush_in_log_due_at_recovery(void)
{
    struct tdir d;
    struct recover_result res;
    struct store *s;
    char err[ERRCAP];
    int64_t f = NOW - 1000;

    tdir_make(&d);
    delayed_flush_log(&d, f);
    CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, &s), 0);
    CU_ASSERT(tdir_absent(s, "before", NOW));
    CU_ASSERT(tdir_absent(s, "between", NOW));
    CU_ASSERT(tdir_item_is(s, "after", "a", 1, 0, 0, f + 500, 4, NOW));
    CU_ASSERT_EQUAL(tdir_live_items(s, NOW), 1);
    store_free(s);
    tdir_remove(&d);
}

static void test_delayed_flush_in_log_pending_after_recovery(void)
{
    struct tdir d;
    struct recover_result res;
    struct store *s;
    char err[ERRCAP];
    int64_t f = NOW + 60000;

    tdir_make(&d);
    delayed_flush_log(&d, f);
    /* Recovered before it is due ("after" is from the future: still fine). */
    CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, &s), 0);
    CU_ASSERT_EQUAL(store_flush_at(s), f);
    CU_ASSERT(tdir_item_is(s, "before", "b", 1, 0, 0, f - 4000, 1, NOW));
    CU_ASSERT(tdir_item_is(s, "between", "w", 1, 0, 0, f - 1000, 3, NOW));
    /* Once due, the items written before it vanish. */
    CU_ASSERT(tdir_absent(s, "before", f));
    CU_ASSERT(tdir_absent(s, "between", f));
    CU_ASSERT(tdir_item_is(s, "after", "a", 1, 0, 0, f + 500, 4, f));
    store_free(s);
    tdir_remove(&d);
}

/* ---- snapshot + log ---------------------------------------------------------------- */

static void test_snapshot_then_log_skips_covered_records(void)
{
    struct tdir d;
    struct recover_result res;
    struct store *s;
    struct snap_writer *sw;
    struct snap_header h = {.lsn = 4, .next_cas = 1000, .flush_at_ms = 0};
    struct wal_op s1 = {.kind = WAL_OP_PUT,
                        .key = "s1",
                        .nkey = 2,
                        .value = "snap",
                        .nvalue = 4,
                        .flags = 5,
                        .mtime_ms = NOW - 50000,
                        .cas = 100};
    struct wal_op l2 = {.kind = WAL_OP_PUT,
                        .key = "k2",
                        .nkey = 2,
                        .value = "from-snap",
                        .nvalue = 9,
                        .flags = 6,
                        .mtime_ms = NOW - 50000,
                        .cas = 101};
    char err[ERRCAP], key[32], val[128];

    tdir_make(&d);
    model_log(&d, 6, 1u << 20);
    /* A snapshot that deliberately differs from records 1..4: if those were
     * replayed over it, k1..k4 would appear and k2 would change. */
    CU_ASSERT_EQUAL_FATAL(snap_write_begin(&sw, d.path, &h), 0);
    CU_ASSERT_EQUAL(snap_write_item(sw, &s1), 0);
    CU_ASSERT_EQUAL(snap_write_item(sw, &l2), 0);
    CU_ASSERT_EQUAL(snap_write_end(sw), 0);

    CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, &s), 0);
    CU_ASSERT(tdir_item_is(s, "s1", "snap", 4, 5, 0, NOW - 50000, 100, NOW));
    CU_ASSERT(tdir_item_is(s, "k2", "from-snap", 9, 6, 0, NOW - 50000, 101, NOW));
    CU_ASSERT(tdir_absent(s, "k1", NOW) && tdir_absent(s, "k3", NOW) &&
              tdir_absent(s, "k4", NOW));
    for (uint64_t i = 5; i <= 6; i++) {
        model_key(key, sizeof(key), i);
        model_value(val, i);
        CU_ASSERT(tdir_item_is(s, key, val, model_vlen(i), (uint32_t)i, 0, model_mtime(i),
                               i, NOW));
    }
    CU_ASSERT_EQUAL(tdir_live_items(s, NOW), 4);
    CU_ASSERT_EQUAL(res.snap_lsn, 4);
    CU_ASSERT_EQUAL(res.snap_items, 2);
    CU_ASSERT_EQUAL(res.records, 2);
    CU_ASSERT_EQUAL(res.next_lsn, 7);
    CU_ASSERT(res.next_cas >= 1000);
    store_free(s);
    tdir_remove(&d);
}

/* A snapshot at lsn 2 with a delayed flush pending at f, and log records 3
 * and 4 written before and after f. */
static void snapshot_with_pending_flush(const struct tdir *d, int64_t f)
{
    struct lw l;
    struct txb t;
    struct snap_writer *sw;
    struct snap_header h = {.lsn = 2, .next_cas = 10, .flush_at_ms = f};
    struct wal_op old = {.kind = WAL_OP_PUT,
                         .key = "old",
                         .nkey = 3,
                         .value = "o",
                         .nvalue = 1,
                         .mtime_ms = f - 5000,
                         .cas = 1};
    struct wal_op young = {.kind = WAL_OP_PUT,
                           .key = "young",
                           .nkey = 5,
                           .value = "y",
                           .nvalue = 1,
                           .mtime_ms = f + 100,
                           .cas = 2};

    lw_open(&l, d, 1, 1u << 20);
    model_write(&l, 1, 2);
    txb_begin(&t, 3);
    txb_put(&t, "logold", "lo", 2, 0, 0, f - 500, 3);
    lw_write(&l, &t);
    txb_begin(&t, 4);
    txb_put(&t, "lognew", "ln", 2, 0, 0, f + 200, 4);
    lw_write(&l, &t);
    lw_close(&l);
    CU_ASSERT_EQUAL_FATAL(snap_write_begin(&sw, d->path, &h), 0);
    CU_ASSERT_EQUAL(snap_write_item(sw, &old), 0);
    CU_ASSERT_EQUAL(snap_write_item(sw, &young), 0);
    CU_ASSERT_EQUAL(snap_write_end(sw), 0);
}

static void test_snapshot_pending_flush_due_at_recovery(void)
{
    struct tdir d;
    struct recover_result res;
    struct store *s;
    char err[ERRCAP];
    int64_t f = NOW - 1000;

    tdir_make(&d);
    snapshot_with_pending_flush(&d, f);
    CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, &s), 0);
    CU_ASSERT_EQUAL(res.snap_lsn, 2);
    CU_ASSERT_EQUAL(res.records, 2);
    CU_ASSERT(tdir_absent(s, "old", NOW));
    CU_ASSERT(tdir_item_is(s, "young", "y", 1, 0, 0, f + 100, 2, NOW));
    CU_ASSERT(tdir_absent(s, "logold", NOW));
    CU_ASSERT(tdir_item_is(s, "lognew", "ln", 2, 0, 0, f + 200, 4, NOW));
    CU_ASSERT(tdir_absent(s, "k1", NOW) && tdir_absent(s, "k2", NOW));
    CU_ASSERT_EQUAL(tdir_live_items(s, NOW), 2);
    store_free(s);
    tdir_remove(&d);
}

static void test_snapshot_pending_flush_honoured_after_recovery(void)
{
    struct tdir d;
    struct recover_result res;
    struct store *s;
    char err[ERRCAP];
    int64_t f = NOW + 1000;

    tdir_make(&d);
    snapshot_with_pending_flush(&d, f);
    CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, &s), 0);
    CU_ASSERT_EQUAL(store_flush_at(s), f);
    CU_ASSERT_EQUAL(tdir_live_items(s, NOW), 4);
    CU_ASSERT(tdir_item_is(s, "old", "o", 1, 0, 0, f - 5000, 1, NOW));
    CU_ASSERT(tdir_item_is(s, "logold", "lo", 2, 0, 0, f - 500, 3, NOW));
    /* At f, what was written before f goes. */
    CU_ASSERT(tdir_absent(s, "old", f));
    CU_ASSERT(tdir_absent(s, "logold", f));
    CU_ASSERT(tdir_item_is(s, "young", "y", 1, 0, 0, f + 100, 2, f));
    CU_ASSERT(tdir_item_is(s, "lognew", "ln", 2, 0, 0, f + 200, 4, f));
    store_free(s);
    tdir_remove(&d);
}

/* ---- torn tails ----------------------------------------------------------------------
 */

static void test_torn_last_record_at_every_offset_is_cut(void)
{
    struct tdir d;
    struct recover_result res;
    struct store *s;
    char err[ERRCAP], path[512], *img;
    size_t len, last, boundary;
    unsigned bad = 0;

    tdir_make(&d);
    /* Segments 1 (records 1..6) and 7 (7..9). */
    last = model_log(&d, 9, 1024);
    tdir_seg_path(path, sizeof(path), &d, 7);
    CU_ASSERT_FATAL(tdir_file_exists(path));
    img = tdir_read_all(path, &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(img);
    boundary = len - last;

    for (size_t c = 0; c <= last; c++) {
        tdir_write_all_file(path, img, boundary + c);
        int r = tdir_run_recover(&d, NOW, &res, err, &s);
        bool whole = c == last;
        if (r != 0 || !model_holds(s, whole ? 9 : 8, 9) ||
            tdir_file_size(path) != (long)(whole ? len : boundary) ||
            res.truncated_bytes != (whole ? 0 : c) || res.next_lsn != (whole ? 10 : 9) ||
            res.records != (whole ? 9 : 8) || res.segments != 2) {
            if (bad++ < 3)
                fprintf(stderr,
                        "\n  cut %zu bytes into the last record: r %d (%s), size %ld, "
                        "truncated %llu\n",
                        c, r, err, tdir_file_size(path),
                        (unsigned long long)res.truncated_bytes);
        }
        store_free(s);
        /* Once more: nothing left to cut. */
        r = tdir_run_recover(&d, NOW, &res, err, &s);
        if (r != 0 || !model_holds(s, whole ? 9 : 8, 9) || res.truncated_bytes != 0 ||
            tdir_file_size(path) != (long)(whole ? len : boundary))
            bad++;
        store_free(s);
    }
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT(tdir_logged(&d, "cutting off"));
    free(img);
    tdir_remove(&d);
}

/* Zeros after a segment's last record are what the writer preallocated (a
 * crash, or a failed trim, left them): trimmed without a warning, counted
 * as nothing cut, every record replayed. In the last segment and in an
 * earlier one alike (the lsns across segments still prove nothing is
 * missing). */
static void test_preallocated_zeros_after_the_records_are_trimmed_quietly(void)
{
    struct tdir d;
    struct recover_result res;
    struct store *s;
    char err[ERRCAP], path[512], path4[512];
    static char z[70000];
    long size, size4;

    tdir_make(&d);
    model_log(&d, 9, 1024);
    tdir_seg_path(path, sizeof(path), &d, 7);
    tdir_seg_path(path4, sizeof(path4), &d, 1);
    size = tdir_file_size(path);
    size4 = tdir_file_size(path4);
    tdir_append_file(path, z, sizeof(z));
    tdir_append_file(path4, z, 64);
    CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, &s), 0);
    CU_ASSERT(model_holds(s, 9, 9));
    CU_ASSERT_EQUAL(res.truncated_bytes, 0);
    CU_ASSERT_EQUAL(tdir_file_size(path), size);
    CU_ASSERT_EQUAL(tdir_file_size(path4), size4);
    CU_ASSERT_EQUAL(res.next_lsn, 10);
    CU_ASSERT(!tdir_logged(&d, "cutting off"));
    store_free(s);
    tdir_remove(&d);
}

/* A record cut short inside preallocated space: its first bytes written,
 * the rest still zero. Torn (it was never acknowledged): cut, with the
 * warning. */
static void test_torn_record_in_preallocated_space_is_cut(void)
{
    struct tdir d;
    struct recover_result res;
    struct store *s;
    char err[ERRCAP], path[512], z[4096];
    long size;
    size_t last;

    memset(z, 0, sizeof(z));
    tdir_make(&d);
    last = model_log(&d, 9, 1024);
    tdir_seg_path(path, sizeof(path), &d, 7);
    size = tdir_file_size(path);
    /* Record 9's header survives, its payload is zeros, then more zeros. */
    tdir_zero_bytes(path, size - (long)last + WAL_RECORD_HEADER_BYTES,
                    last - WAL_RECORD_HEADER_BYTES);
    tdir_append_file(path, z, sizeof(z));
    CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, &s), 0);
    CU_ASSERT(model_holds(s, 8, 9));
    CU_ASSERT_EQUAL(tdir_file_size(path), size - (long)last);
    CU_ASSERT_EQUAL(res.truncated_bytes, last + sizeof(z));
    CU_ASSERT_EQUAL(res.next_lsn, 9);
    CU_ASSERT(tdir_logged(&d, "cutting off"));
    store_free(s);
    tdir_remove(&d);
}

/* Segment 7 holds records 7, 8, 9: offsets of 8 and 9. */
static void last_segment_offsets(const char *path, long *off8, long *off9)
{
    size_t len;
    char *img = tdir_read_all(path, &len);
    struct wal_record rec;
    long off = WAL_SEGMENT_HEADER_BYTES, n;

    *off8 = *off9 = -1;
    CU_ASSERT_PTR_NOT_NULL_FATAL(img);
    while ((size_t)off < len &&
           (n = wal_record_decode(img + off, len - (size_t)off, &rec)) > 0) {
        if (rec.lsn == 8)
            *off8 = off;
        if (rec.lsn == 9)
            *off9 = off;
        off += n;
    }
    free(img);
    CU_ASSERT(*off8 > 0 && *off9 > *off8);
}

static void test_zeroed_block_in_middle_of_last_segment_is_corruption(void)
{
    struct tdir d;
    struct recover_result res;
    char err[ERRCAP], path[512], want[64];
    long off8, off9, size;

    tdir_make(&d);
    model_log(&d, 9, 1024);
    tdir_seg_path(path, sizeof(path), &d, 7);
    last_segment_offsets(path, &off8, &off9);
    size = tdir_file_size(path);
    tdir_zero_bytes(path, off8, 64);
    CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, NULL), -EBADMSG);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "wal-0000000000000007.log"));
    snprintf(want, sizeof(want), "offset %ld", off8);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, want));
    CU_ASSERT_EQUAL(tdir_file_size(path), size); /* nothing cut */
    tdir_remove(&d);
}

static void test_flipped_byte_in_middle_record_is_corruption(void)
{
    struct tdir d;
    struct recover_result res;
    char err[ERRCAP], path[512], want[64];
    long off8, off9, size;

    tdir_make(&d);
    model_log(&d, 9, 1024);
    tdir_seg_path(path, sizeof(path), &d, 7);
    last_segment_offsets(path, &off8, &off9);
    size = tdir_file_size(path);
    tdir_flip_byte(path, off8 + 40);
    CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, NULL), -EBADMSG);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "wal-0000000000000007.log"));
    snprintf(want, sizeof(want), "offset %ld", off8);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, want));
    CU_ASSERT_EQUAL(tdir_file_size(path), size);
    /* Again: still refused, still nothing cut. */
    CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, NULL), -EBADMSG);
    CU_ASSERT_EQUAL(tdir_file_size(path), size);
    tdir_remove(&d);
}

static void test_flipped_byte_in_last_record_is_torn(void)
{
    struct tdir d;
    struct recover_result res;
    struct store *s;
    char err[ERRCAP], path[512];
    long off8, off9, size;

    tdir_make(&d);
    model_log(&d, 9, 1024);
    tdir_seg_path(path, sizeof(path), &d, 7);
    last_segment_offsets(path, &off8, &off9);
    size = tdir_file_size(path);
    tdir_flip_byte(path, off9 + 40);
    CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, &s), 0);
    CU_ASSERT(model_holds(s, 8, 9));
    CU_ASSERT_EQUAL(tdir_file_size(path), off9);
    CU_ASSERT_EQUAL(res.truncated_bytes, (uint64_t)(size - off9));
    CU_ASSERT_EQUAL(res.next_lsn, 9);
    store_free(s);
    tdir_remove(&d);
}

static void test_damage_at_end_of_non_last_segment_is_corruption(void)
{
    struct tdir d;
    struct recover_result res;
    char err[ERRCAP], p1[512], p7[512], z[64];
    long s1, s7;

    memset(z, 0, sizeof(z));
    /* A flipped byte in the last record of segment 1 (record 6). */
    tdir_make(&d);
    model_log(&d, 9, 1024);
    tdir_seg_path(p1, sizeof(p1), &d, 1);
    tdir_seg_path(p7, sizeof(p7), &d, 7);
    s1 = tdir_file_size(p1);
    s7 = tdir_file_size(p7);
    tdir_flip_byte(p1, s1 - 5);
    CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, NULL), -EBADMSG);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "wal-0000000000000001.log"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "offset"));
    CU_ASSERT_EQUAL(tdir_file_size(p1), s1);
    CU_ASSERT_EQUAL(tdir_file_size(p7), s7);
    tdir_remove(&d);

    /* Segment 1 cut short in its last record. */
    tdir_make(&d);
    model_log(&d, 9, 1024);
    tdir_seg_path(p1, sizeof(p1), &d, 1);
    tdir_seg_path(p7, sizeof(p7), &d, 7);
    s1 = tdir_file_size(p1);
    CU_ASSERT_EQUAL(truncate(p1, s1 - 10), 0);
    CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, NULL), -EBADMSG);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "wal-0000000000000001.log"));
    CU_ASSERT_EQUAL(tdir_file_size(p1), s1 - 10);
    tdir_remove(&d);

    /* Segment 1's last record zeroed out: it reads as preallocated space,
     * but segment 7 does not follow on from what is left, so the loss
     * shows as a gap. (Zeros merely appended to segment 1 are trimmed:
     * test_preallocated_zeros_after_the_records_are_trimmed_quietly.) */
    tdir_make(&d);
    model_log(&d, 9, 1024);
    tdir_seg_path(p1, sizeof(p1), &d, 1);
    s1 = tdir_file_size(p1);
    {
        char *img;
        size_t len, last = 0;
        long off = WAL_SEGMENT_HEADER_BYTES, n;
        struct wal_record rec;
        CU_ASSERT_PTR_NOT_NULL_FATAL(img = tdir_read_all(p1, &len));
        while ((size_t)off < len &&
               (n = wal_record_decode(img + off, len - (size_t)off, &rec)) > 0) {
            last = (size_t)n;
            off += n;
        }
        free(img);
        CU_ASSERT_FATAL(last > 0 && last <= 256);
        tdir_zero_bytes(p1, s1 - (long)last, last);
    }
    CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, NULL), -ENOENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "gap"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "wal-0000000000000007.log"));
    tdir_remove(&d);
}

/* ---- missing segments ----------------------------------------------------------------
 */

static void test_missing_middle_segment_is_a_gap(void)
{
    struct tdir d;
    struct recover_result res;
    char err[ERRCAP], path[512];

    tdir_make(&d);
    model_log(&d, 15, 1024); /* segments 1 (1..6), 7 (7..12), 13 (13..15) */
    tdir_seg_path(path, sizeof(path), &d, 13);
    CU_ASSERT_FATAL(tdir_file_exists(path));
    tdir_seg_path(path, sizeof(path), &d, 7);
    CU_ASSERT_EQUAL(unlink(path), 0);
    CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, NULL), -ENOENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "records 7 to 12"));
    tdir_remove(&d);
}

static void test_missing_first_segment_without_snapshot_is_a_gap(void)
{
    struct tdir d;
    struct recover_result res;
    char err[ERRCAP], path[512];

    tdir_make(&d);
    model_log(&d, 15, 1024);
    tdir_seg_path(path, sizeof(path), &d, 1);
    CU_ASSERT_EQUAL(unlink(path), 0);
    CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, NULL), -ENOENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "records 1 to 6"));
    tdir_remove(&d);
}

static void test_missing_first_segment_covered_by_snapshot_is_fine(void)
{
    struct tdir d;
    struct recover_result res;
    struct store *s;
    char err[ERRCAP], path[512];

    tdir_make(&d);
    model_log(&d, 15, 1024);
    model_snap(&d, 6);
    tdir_seg_path(path, sizeof(path), &d, 1);
    CU_ASSERT_EQUAL(unlink(path), 0);
    CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, &s), 0);
    CU_ASSERT(model_holds(s, 15, 15));
    CU_ASSERT_EQUAL(res.snap_lsn, 6);
    CU_ASSERT_EQUAL(res.records, 9);
    CU_ASSERT_EQUAL(res.next_lsn, 16);
    store_free(s);
    tdir_remove(&d);
}

static void test_renamed_segment_is_corruption(void)
{
    struct tdir d;
    struct recover_result res;
    char err[ERRCAP], from[512], to[512];

    tdir_make(&d);
    model_log(&d, 9, 1024);
    tdir_seg_path(from, sizeof(from), &d, 7);
    tdir_seg_path(to, sizeof(to), &d, 8);
    CU_ASSERT_EQUAL(rename(from, to), 0);
    CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, NULL), -EBADMSG);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "wal-0000000000000008.log"));
    tdir_remove(&d);
}

/* Appends a raw record of this type and payload through the writer. */
static void append_raw(const struct tdir *d, uint64_t lsn, uint8_t type, const void *p,
                       size_t n)
{
    struct lw l;
    size_t want;

    lw_open(&l, d, lsn, 1u << 20);
    want = l.acked + 1;
    CU_ASSERT_EQUAL(wal_append(l.w, type, p, n, lw_ack, &l), (int64_t)lsn);
    lw_wait(&l, want);
    lw_close(&l);
}

static void test_record_that_cannot_be_applied_is_refused(void)
{
    struct txb t;
    char key[32], val[128], payload[WAL_TXN_BYTES];
    struct wal_op op = model_op(5, key, sizeof(key), val);
    struct wal_txn head = {.txid = 5, .epoch = 1, .coordinator = 0, .nops = 2};

    for (int k = 0; k < 4; k++) {
        struct tdir d;
        struct recover_result res;
        char err[ERRCAP];

        tdir_make(&d);
        model_log(&d, 4, 1u << 20);
        txb_begin(&t, 5);
        txb_op(&t, &op);
        switch (k) {
        case 0: /* the head promises two ops, the payload holds one */
            wal_txn_encode(t.p, &head);
            append_raw(&d, 5, WAL_REC_WRITE, t.p, t.len);
            break;
        case 1: /* bytes after the last op */
            head.nops = 1;
            wal_txn_encode(t.p, &head);
            t.p[t.len] = 'x';
            append_raw(&d, 5, WAL_REC_WRITE, t.p, t.len + 1);
            break;
        case 2: /* shorter than a txn head */
            append_raw(&d, 5, WAL_REC_WRITE, "short", 5);
            break;
        case 3: /* a 2PC record: not replayed by this serve */
            memset(payload, 0, sizeof(payload));
            append_raw(&d, 5, WAL_REC_COMMIT, payload, 16);
            break;
        }
        free(t.p);
        /* It is the last record and its CRC is good: corruption, not a torn tail. */
        CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, NULL), -EBADMSG);
        CU_ASSERT_PTR_NOT_NULL(strstr(err, "wal-0000000000000005.log"));
        CU_ASSERT_EQUAL(res.truncated_bytes, 0);
        tdir_remove(&d);
    }
}

/* ---- partial and empty last segments
 * ---------------------------------------------------- */

/* After recovery left next_lsn free: a writer starts there, and a second
 * recovery sees its record. */
static void check_writer_resumes(const struct tdir *d, uint64_t next_lsn, uint64_t total)
{
    struct lw l;
    struct recover_result res;
    struct store *s;
    char err[ERRCAP];

    lw_open(&l, d, next_lsn, 1024);
    model_write(&l, next_lsn, next_lsn);
    lw_close(&l);
    CU_ASSERT_EQUAL(tdir_run_recover(d, NOW, &res, err, &s), 0);
    CU_ASSERT(model_holds(s, total, total));
    CU_ASSERT_EQUAL(res.next_lsn, total + 1);
    store_free(s);
}

static void test_partial_header_last_segment_is_removed(void)
{
    static const size_t sizes[] = {0, 10, 14, 31};
    char hdr[WAL_SEGMENT_HEADER_BYTES];

    wal_segment_header_encode(hdr, 10);
    for (size_t i = 0; i < ARRAY_SIZE(sizes); i++) {
        struct tdir d;
        struct recover_result res;
        struct store *s;
        char err[ERRCAP], path[512];

        tdir_make(&d);
        model_log(&d, 9, 1024);
        tdir_seg_path(path, sizeof(path), &d, 10);
        tdir_write_all_file(path, hdr, sizes[i]);
        CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, &s), 0);
        CU_ASSERT(!tdir_file_exists(path));
        CU_ASSERT(model_holds(s, 9, 9));
        CU_ASSERT_EQUAL(res.next_lsn, 10);
        CU_ASSERT_EQUAL(res.segments, 2);
        store_free(s);
        check_writer_resumes(&d, 10, 10);
        tdir_remove(&d);
    }
}

static void test_zeroed_header_last_segment_is_removed(void)
{
    struct tdir d;
    struct recover_result res;
    struct store *s;
    char err[ERRCAP], path[512], z[WAL_SEGMENT_HEADER_BYTES];

    memset(z, 0, sizeof(z));
    tdir_make(&d);
    model_log(&d, 9, 1024);
    tdir_seg_path(path, sizeof(path), &d, 10);
    tdir_write_all_file(path, z, sizeof(z));
    CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, &s), 0);
    CU_ASSERT(!tdir_file_exists(path));
    CU_ASSERT(model_holds(s, 9, 9));
    CU_ASSERT_EQUAL(res.next_lsn, 10);
    store_free(s);
    check_writer_resumes(&d, 10, 10);
    tdir_remove(&d);
}

static void test_header_only_last_segment_is_removed(void)
{
    struct tdir d;
    struct lw l;
    struct recover_result res;
    struct store *s;
    char err[ERRCAP], path[512];

    tdir_make(&d);
    model_log(&d, 9, 1024);
    /* A writer that started segment 10 and stopped before any record. */
    lw_open(&l, &d, 10, 1024);
    lw_close(&l);
    tdir_seg_path(path, sizeof(path), &d, 10);
    CU_ASSERT_EQUAL(tdir_file_size(path), WAL_SEGMENT_HEADER_BYTES);
    CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, &s), 0);
    CU_ASSERT(!tdir_file_exists(path));
    CU_ASSERT(model_holds(s, 9, 9));
    CU_ASSERT_EQUAL(res.next_lsn, 10);
    CU_ASSERT_EQUAL(res.segments, 2);
    store_free(s);
    check_writer_resumes(&d, 10, 10);
    tdir_remove(&d);
}

static void test_garbage_header_is_corruption(void)
{
    struct tdir d;
    struct recover_result res;
    char err[ERRCAP], path[512], junk[WAL_SEGMENT_HEADER_BYTES + 40], hdr[10];

    memset(junk, 'J', sizeof(junk));
    /* As the last segment: a complete, nonzero header that is not one. */
    tdir_make(&d);
    model_log(&d, 9, 1024);
    tdir_seg_path(path, sizeof(path), &d, 10);
    tdir_write_all_file(path, junk, sizeof(junk));
    CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, NULL), -EBADMSG);
    CU_ASSERT(tdir_file_exists(path));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "wal-000000000000000a.log"));
    tdir_remove(&d);

    /* A partial header in a segment that is not the last. */
    tdir_make(&d);
    model_log(&d, 9, 1024);
    tdir_seg_path(path, sizeof(path), &d, 1);
    CU_ASSERT_EQUAL(truncate(path, sizeof(hdr)), 0);
    CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, NULL), -EBADMSG);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "wal-0000000000000001.log"));
    CU_ASSERT_EQUAL(tdir_file_size(path), sizeof(hdr));
    tdir_remove(&d);
}

static void test_newer_segment_format_is_refused(void)
{
    struct tdir d;
    struct recover_result res;
    char err[ERRCAP], path[512], hdr[WAL_SEGMENT_HEADER_BYTES];
    int fd;

    tdir_make(&d);
    model_log(&d, 9, 1024);
    tdir_seg_path(path, sizeof(path), &d, 7);
    fd = open(path, O_RDWR | O_CLOEXEC);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_EQUAL(pread(fd, hdr, sizeof(hdr), 0), (ssize_t)sizeof(hdr));
    util_put_le32(hdr + 8, WAL_FORMAT_VERSION + 1);
    util_put_le32(hdr + 28, crc32c(0, hdr, 28));
    CU_ASSERT_EQUAL(pwrite(fd, hdr, sizeof(hdr), 0), (ssize_t)sizeof(hdr));
    close(fd);
    CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, NULL), -EPROTONOSUPPORT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "newer"));
    tdir_remove(&d);
}

static void test_newer_snapshot_format_is_refused(void)
{
    struct tdir d;
    struct recover_result res;
    char err[ERRCAP], path[512], hdr[SNAP_HEADER_BYTES];
    int fd;

    tdir_make(&d);
    model_log(&d, 6, 1u << 20);
    model_snap(&d, 3);
    tdir_snap_path(path, sizeof(path), &d, 3);
    fd = open(path, O_RDWR | O_CLOEXEC);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_EQUAL(pread(fd, hdr, sizeof(hdr), 0), (ssize_t)sizeof(hdr));
    CU_ASSERT_EQUAL(util_get_le32(hdr + 8), 1);
    util_put_le32(hdr + 8, WAL_FORMAT_VERSION + 1);
    util_put_le32(hdr + 44, crc32c(0, hdr, 44));
    CU_ASSERT_EQUAL(pwrite(fd, hdr, sizeof(hdr), 0), (ssize_t)sizeof(hdr));
    close(fd);
    CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, NULL), -EPROTONOSUPPORT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "newer"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "snap-0000000000000003.snap"));
    tdir_remove(&d);
}

enum snap_damage {
    TRUNCATE_TAIL,
    TRUNCATE_MIDDLE,
    FLIP_ITEM,
    FLIP_HEADER,
    TRAILING_BYTES,
    RENAME_WRONG
};

static void damage_snapshot(const struct tdir *d, uint64_t lsn, enum snap_damage how)
{
    char path[512], other[512];
    long size;

    tdir_snap_path(path, sizeof(path), d, lsn);
    size = tdir_file_size(path);
    CU_ASSERT_FATAL(size > 100);
    switch (how) {
    case TRUNCATE_TAIL:
        CU_ASSERT_EQUAL(truncate(path, size - 1), 0);
        break;
    case TRUNCATE_MIDDLE:
        CU_ASSERT_EQUAL(truncate(path, size / 2), 0);
        break;
    case FLIP_ITEM:
        tdir_flip_byte(path, SNAP_HEADER_BYTES + 50);
        break;
    case FLIP_HEADER:
        tdir_flip_byte(path, 20); /* the lsn: the header CRC fails */
        break;
    case TRAILING_BYTES:
        tdir_append_file(path, "\0\0\0\0", 4);
        break;
    case RENAME_WRONG:
        /* Its name no longer matches the lsn in its header. */
        tdir_snap_path(other, sizeof(other), d, lsn + 1);
        CU_ASSERT_EQUAL(rename(path, other), 0);
        break;
    }
}

static void test_damaged_newest_snapshot_falls_back_to_older(void)
{
    static const enum snap_damage kinds[] = {TRUNCATE_TAIL, TRUNCATE_MIDDLE, FLIP_ITEM,
                                             FLIP_HEADER, TRAILING_BYTES};

    for (size_t k = 0; k < ARRAY_SIZE(kinds); k++) {
        struct tdir d;
        struct recover_result res;
        struct store *s;
        char err[ERRCAP];

        tdir_make(&d);
        model_log(&d, 8, 1u << 20);
        model_snap(&d, 3);
        model_snap(&d, 6);
        damage_snapshot(&d, 6, kinds[k]);
        CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, &s), 0);
        CU_ASSERT(model_holds(s, 8, 8));
        CU_ASSERT_EQUAL(res.snap_lsn, 3);
        CU_ASSERT_EQUAL(res.snap_items, 3);
        CU_ASSERT_EQUAL(res.records, 5);
        CU_ASSERT_EQUAL(res.next_lsn, 9);
        CU_ASSERT(tdir_logged(&d, "snap-0000000000000006.snap"));
        /* Renamed out of the way (found by the audit of issue 16: the next
         * snapshot kept it as the previous one and deleted the good one). */
        char path[4200];
        tdir_snap_path(path, sizeof(path), &d, 6);
        CU_ASSERT_FALSE(tdir_file_exists(path));
        strcat(path, ".damaged");
        CU_ASSERT_TRUE(tdir_file_exists(path));
        store_free(s);
        /* The next start loads the good one without a word. */
        CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, &s), 0);
        CU_ASSERT(model_holds(s, 8, 8));
        CU_ASSERT_EQUAL(res.snap_lsn, 3);
        store_free(s);
        tdir_remove(&d);
    }
}

static void test_damaged_only_snapshot_replays_whole_log(void)
{
    struct tdir d;
    struct recover_result res;
    struct store *s;
    char err[ERRCAP];

    tdir_make(&d);
    model_log(&d, 8, 1u << 20);
    model_snap(&d, 6);
    damage_snapshot(&d, 6, RENAME_WRONG);
    CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, &s), 0);
    CU_ASSERT(model_holds(s, 8, 8));
    CU_ASSERT_EQUAL(res.snap_lsn, 0);
    CU_ASSERT_EQUAL(res.records, 8);
    store_free(s);
    tdir_remove(&d);
}

static void test_damaged_snapshot_without_log_back_to_it_fails(void)
{
    struct tdir d;
    struct recover_result res;
    struct lw l;
    char err[ERRCAP];

    /* The log starts after the snapshot (covered segments were removed). */
    tdir_make(&d);
    model_snap(&d, 6);
    lw_open(&l, &d, 7, 1u << 20);
    model_write(&l, 7, 8);
    lw_close(&l);
    damage_snapshot(&d, 6, FLIP_ITEM);
    CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, NULL), -ENOENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "records 1 to 6"));
    tdir_remove(&d);

    /* The same with an older snapshot the log does not reach back to either. */
    tdir_make(&d);
    model_snap(&d, 3);
    model_snap(&d, 6);
    lw_open(&l, &d, 7, 1u << 20);
    model_write(&l, 7, 8);
    lw_close(&l);
    damage_snapshot(&d, 6, TRUNCATE_TAIL);
    CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, NULL), -ENOENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "records 4 to 6"));
    tdir_remove(&d);
}

static void test_damaged_snapshot_and_no_log_fails(void)
{
    struct tdir d;
    struct recover_result res;
    struct store *s;
    char err[ERRCAP];
    int r;

    /* Snapshot 6 is all there is (its empty next segment was removed by an
     * earlier recovery). Without it, records 1..6 are gone: recovery must
     * not start with an empty store. */
    tdir_make(&d);
    model_snap(&d, 6);
    damage_snapshot(&d, 6, FLIP_ITEM);
    r = tdir_run_recover(&d, NOW, &res, err, &s);
    CU_ASSERT_EQUAL(r, -ENOENT);
    CU_ASSERT(r != 0 || tdir_live_items(s, NOW) == 6);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "snap-0000000000000006.snap"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "records 1 to 6"));
    store_free(s);
    tdir_remove(&d);

    /* An older snapshot survives, but records 4..6 exist nowhere. */
    tdir_make(&d);
    model_snap(&d, 3);
    model_snap(&d, 6);
    damage_snapshot(&d, 6, FLIP_ITEM);
    r = tdir_run_recover(&d, NOW, &res, err, &s);
    CU_ASSERT_EQUAL(r, -ENOENT);
    CU_ASSERT(r != 0 || tdir_live_items(s, NOW) == 6);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "records 4 to 6"));
    store_free(s);
    tdir_remove(&d);
}

static void test_damaged_snapshot_with_log_ending_before_it_fails(void)
{
    struct tdir d;
    struct recover_result res;
    struct store *s;
    char err[ERRCAP];
    int r;

    /* Snapshot 3 is good, snapshot 6 damaged, and the log holds only 1..5:
     * record 6 was in the damaged snapshot and is nowhere else. */
    tdir_make(&d);
    model_log(&d, 5, 1u << 20);
    model_snap(&d, 3);
    model_snap(&d, 6);
    damage_snapshot(&d, 6, FLIP_ITEM);
    r = tdir_run_recover(&d, NOW, &res, err, &s);
    CU_ASSERT_EQUAL(r, -ENOENT);
    CU_ASSERT(r != 0 || model_holds(s, 6, 6));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "records 6 to 6"));
    store_free(s);
    tdir_remove(&d);
}

static void test_unfinished_snapshot_files_are_removed(void)
{
    struct tdir d;
    struct recover_result res;
    struct store *s;
    struct snap_writer *sw;
    struct snap_header h = {.lsn = 9, .next_cas = 1, .flush_at_ms = 0};
    char err[ERRCAP], path[512], path2[512];

    tdir_make(&d);
    model_log(&d, 4, 1u << 20);
    model_snap(&d, 2);
    datadir_path(path, sizeof(path), d.path, "snap-", 9, ".tmp");
    tdir_write_all_file(path, "half a snapshot", 15);
    datadir_path(path2, sizeof(path2), d.path, "snap-", 3, ".tmp");
    tdir_write_all_file(path2, "", 0);
    CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, &s), 0);
    CU_ASSERT(!tdir_file_exists(path) && !tdir_file_exists(path2));
    CU_ASSERT(model_holds(s, 4, 4));
    CU_ASSERT_EQUAL(res.snap_lsn, 2);
    store_free(s);
    /* An aborted writer leaves nothing behind either. */
    CU_ASSERT_EQUAL_FATAL(snap_write_begin(&sw, d.path, &h), 0);
    CU_ASSERT(tdir_file_exists(path));
    snap_write_abort(sw);
    CU_ASSERT(!tdir_file_exists(path));
    tdir_remove(&d);
}

/* ---- empty directories
 * -------------------------------------------------------------------- */

static void test_empty_directory_gives_empty_store(void)
{
    struct tdir d;
    struct recover_result res;
    struct store *s;
    char err[ERRCAP], missing[400];

    tdir_make(&d);
    CU_ASSERT_EQUAL(tdir_run_recover(&d, NOW, &res, err, &s), 0);
    CU_ASSERT_EQUAL(tdir_live_items(s, NOW), 0);
    CU_ASSERT_EQUAL(res.next_lsn, 1);
    CU_ASSERT_EQUAL(res.records, 0);
    CU_ASSERT_EQUAL(res.segments, 0);
    CU_ASSERT_EQUAL(res.snap_lsn, 0);
    CU_ASSERT(res.next_cas >= 1);
    store_free(s);

    /* A directory that does not exist is an error, not an empty store. */
    snprintf(missing, sizeof(missing), "%s/nope", d.path);
    s = tdir_new_store();
    CU_ASSERT_EQUAL(recover(missing, s, NOW, &res, err, sizeof(err)), -ENOENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, missing));
    store_free(s);
    tdir_remove(&d);
}

void unit_recover_register(void)
{
    CU_pSuite s = unit_suite("recover");

    unit_test(s, "clean log replays every effect", test_clean_log_replays_every_effect);
    unit_test(s, "immediate flush in log removes earlier items",
              test_immediate_flush_in_log_removes_earlier_items);
    unit_test(s, "a TOUCH is replayed onto an item expired by replay time",
              test_touch_replayed_onto_an_item_expired_by_then);
    unit_test(s, "delayed flush in log due at recovery",
              test_delayed_flush_in_log_due_at_recovery);
    unit_test(s, "delayed flush in log pending after recovery",
              test_delayed_flush_in_log_pending_after_recovery);
    unit_test(s, "snapshot then log skips covered records",
              test_snapshot_then_log_skips_covered_records);
    unit_test(s, "snapshot pending flush due at recovery",
              test_snapshot_pending_flush_due_at_recovery);
    unit_test(s, "snapshot pending flush honoured after recovery",
              test_snapshot_pending_flush_honoured_after_recovery);
    unit_test(s, "a hole in the last batch is cut; earlier damage is refused",
              test_hole_in_last_batch_is_cut);
    unit_test(s, "a zeroed header with records after it is refused",
              test_zeroed_header_with_records_is_refused);
    unit_test(s, "torn last record at every offset is cut",
              test_torn_last_record_at_every_offset_is_cut);
    unit_test(s, "preallocated zeros after the records are trimmed quietly",
              test_preallocated_zeros_after_the_records_are_trimmed_quietly);
    unit_test(s, "torn record in preallocated space is cut",
              test_torn_record_in_preallocated_space_is_cut);
    unit_test(s, "zeroed block in middle of last segment is corruption",
              test_zeroed_block_in_middle_of_last_segment_is_corruption);
    unit_test(s, "flipped byte in middle record is corruption",
              test_flipped_byte_in_middle_record_is_corruption);
    unit_test(s, "flipped byte in last record is torn",
              test_flipped_byte_in_last_record_is_torn);
    unit_test(s, "damage at end of non-last segment is corruption",
              test_damage_at_end_of_non_last_segment_is_corruption);
    unit_test(s, "missing middle segment is a gap", test_missing_middle_segment_is_a_gap);
    unit_test(s, "missing first segment without snapshot is a gap",
              test_missing_first_segment_without_snapshot_is_a_gap);
    unit_test(s, "missing first segment covered by snapshot is fine",
              test_missing_first_segment_covered_by_snapshot_is_fine);
    unit_test(s, "renamed segment is corruption", test_renamed_segment_is_corruption);
    unit_test(s, "record that cannot be applied is refused",
              test_record_that_cannot_be_applied_is_refused);
    unit_test(s, "partial header last segment is removed",
              test_partial_header_last_segment_is_removed);
    unit_test(s, "zeroed header last segment is removed",
              test_zeroed_header_last_segment_is_removed);
    unit_test(s, "header-only last segment is removed",
              test_header_only_last_segment_is_removed);
    unit_test(s, "garbage header is corruption", test_garbage_header_is_corruption);
    unit_test(s, "newer segment format is refused", test_newer_segment_format_is_refused);
    unit_test(s, "newer snapshot format is refused",
              test_newer_snapshot_format_is_refused);
    unit_test(s, "damaged newest snapshot falls back to older",
              test_damaged_newest_snapshot_falls_back_to_older);
    unit_test(s, "damaged only snapshot replays whole log",
              test_damaged_only_snapshot_replays_whole_log);
    unit_test(s, "damaged snapshot without log back to it fails",
              test_damaged_snapshot_without_log_back_to_it_fails);
    unit_test(s, "damaged snapshot and no log fails",
              test_damaged_snapshot_and_no_log_fails);
    unit_test(s, "damaged snapshot with log ending before it fails",
              test_damaged_snapshot_with_log_ending_before_it_fails);
    unit_test(s, "unfinished snapshot files are removed",
              test_unfinished_snapshot_files_are_removed);
    unit_test(s, "empty directory gives empty store",
              test_empty_directory_gives_empty_store);
}
