/*
 * tdir.c - data directories built on disk for the unit tests (tdir.h).
 */
#include "tdir.h"

#include "datadir.h"
#include "log.h"
#include "snap.h"
#include "unit.h"
#include "util.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define LOOP_BOUND 100000
/* Not a timing assertion: a lost callback would otherwise leave UV_RUN_ONCE
 * blocked forever; this turns that into a failure. */
#define WATCHDOG_MS 60000

/* ---- files and directories ---------------------------------------------------- */

void tdir_make(struct tdir *d)
{
    const char *t = getenv("TMPDIR");
    char lp[320];

    if (t == NULL || *t == '\0')
        t = "/tmp";
    snprintf(d->path, sizeof(d->path), "%s/tpckv-unit-rec.XXXXXX", t);
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(d->path));
    snprintf(lp, sizeof(lp), "%s/test.log", d->path);
    d->log_fd = open(lp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    CU_ASSERT_FATAL(d->log_fd >= 0);
    log_set_fd(d->log_fd);
}

/* Does the log written since tdir_make() contain needle? */
bool tdir_logged(struct tdir *d, const char *needle)
{
    char buf[16384];
    ssize_t n = pread(d->log_fd, buf, sizeof(buf) - 1, 0);

    if (n < 0)
        return false;
    buf[n] = '\0';
    return strstr(buf, needle) != NULL;
}

void tdir_remove(struct tdir *d)
{
    DIR *dd = opendir(d->path);
    struct dirent *de;
    char path[512];

    log_set_fd(2);
    close(d->log_fd);
    while (dd && (de = readdir(dd)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof(path), "%s/%s", d->path, de->d_name);
        CU_ASSERT_EQUAL(unlink(path), 0);
    }
    if (dd)
        closedir(dd);
    CU_ASSERT_EQUAL(rmdir(d->path), 0);
}

void tdir_seg_path(char *dst, size_t cap, const struct tdir *d, uint64_t first)
{
    datadir_path(dst, cap, d->path, "wal-", first, ".log");
}

void tdir_snap_path(char *dst, size_t cap, const struct tdir *d, uint64_t lsn)
{
    datadir_path(dst, cap, d->path, "snap-", lsn, ".snap");
}

long tdir_file_size(const char *path)
{
    struct stat sb;
    return stat(path, &sb) < 0 ? -1 : (long)sb.st_size;
}

bool tdir_file_exists(const char *path)
{
    return access(path, F_OK) == 0;
}

/* Reads a whole file (malloc'ed, caller frees). */
char *tdir_read_all(const char *path, size_t *len)
{
    long n = tdir_file_size(path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    char *p;

    *len = 0;
    if (n < 0 || fd < 0) {
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    p = malloc((size_t)n + 1);
    if (p && pread(fd, p, (size_t)n, 0) != n) {
        free(p);
        p = NULL;
    }
    close(fd);
    if (p)
        *len = (size_t)n;
    return p;
}

/* Replaces the file's contents with p[0..n). */
void tdir_write_all_file(const char *path, const void *p, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_EQUAL(util_write_all(fd, p, n), 0);
    close(fd);
}

void tdir_append_file(const char *path, const void *p, size_t n)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);

    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_EQUAL(util_write_all(fd, p, n), 0);
    close(fd);
}

void tdir_flip_byte(const char *path, long off)
{
    int fd = open(path, O_RDWR | O_CLOEXEC);
    char c = 0;

    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_EQUAL(pread(fd, &c, 1, off), 1);
    c ^= 0x20;
    CU_ASSERT_EQUAL(pwrite(fd, &c, 1, off), 1);
    close(fd);
}

void tdir_zero_bytes(const char *path, long off, size_t n)
{
    char z[256];
    int fd = open(path, O_RDWR | O_CLOEXEC);

    memset(z, 0, sizeof(z));
    CU_ASSERT_FATAL(fd >= 0 && n <= sizeof(z));
    CU_ASSERT_EQUAL(pwrite(fd, z, n, off), (ssize_t)n);
    close(fd);
}

/* ---- write payloads ------------------------------------------------------------ */

void txb_begin(struct txb *t, uint64_t txid)
{
    memset(t, 0, sizeof(*t));
    t->cap = 4096;
    t->p = malloc(t->cap);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t->p);
    t->len = WAL_TXN_BYTES;
    t->txid = txid;
}

void txb_op(struct txb *t, const struct wal_op *op)
{
    size_t n = wal_op_size(op);

    if (t->len + n > t->cap) {
        char *q = realloc(t->p, t->len + n + 4096);
        CU_ASSERT_PTR_NOT_NULL_FATAL(q);
        t->p = q;
        t->cap = t->len + n + 4096;
    }
    t->len += wal_op_encode(t->p + t->len, op);
    t->nops++;
}

void txb_put(struct txb *t, const char *key, const void *val, size_t nval, uint32_t flags,
             int64_t exptime, int64_t mtime, uint64_t cas)
{
    struct wal_op op = {.kind = WAL_OP_PUT,
                        .key = key,
                        .nkey = strlen(key),
                        .value = val,
                        .nvalue = nval,
                        .flags = flags,
                        .exptime_ms = exptime,
                        .mtime_ms = mtime,
                        .cas = cas};
    txb_op(t, &op);
}

void txb_del(struct txb *t, const char *key)
{
    struct wal_op op = {.kind = WAL_OP_DEL, .key = key, .nkey = strlen(key)};
    txb_op(t, &op);
}

void txb_touch(struct txb *t, const char *key, int64_t exptime)
{
    struct wal_op op = {
        .kind = WAL_OP_TOUCH, .key = key, .nkey = strlen(key), .exptime_ms = exptime};
    txb_op(t, &op);
}

void txb_flush(struct txb *t, int64_t flush_at, int64_t mtime)
{
    struct wal_op op = {.kind = WAL_OP_FLUSH, .flush_at_ms = flush_at, .mtime_ms = mtime};
    txb_op(t, &op);
}

/* ---- the log writer -------------------------------------------------------------- */

static void on_watchdog(uv_timer_t *t)
{
    struct lw *l = t->data;
    l->expired = true;
}

/* Runs the loop until want callbacks have fired (or the watchdog). */
void lw_wait(struct lw *l, size_t want)
{
    l->expired = false;
    uv_timer_start(&l->watchdog, on_watchdog, WATCHDOG_MS, 0);
    for (int i = 0; i < LOOP_BOUND && l->acked < want && !l->expired; i++)
        uv_run(&l->loop, UV_RUN_ONCE);
    uv_timer_stop(&l->watchdog);
    CU_ASSERT_EQUAL(l->acked, want);
}

void lw_ack(void *arg, uint64_t lsn, int status)
{
    struct lw *l = arg;

    (void)lsn;
    if (status != 0)
        l->failed++;
    l->acked++;
}

void lw_open(struct lw *l, const struct tdir *d, uint64_t next_lsn, uint64_t seg_bytes)
{
    struct wal_config cfg = {
        .dir = d->path,
        .fsync_mode = WAL_FSYNC_ALWAYS,
        .segment_bytes = seg_bytes,
        .io = NULL,
    };

    memset(l, 0, sizeof(*l));
    CU_ASSERT_EQUAL_FATAL(uv_loop_init(&l->loop), 0);
    CU_ASSERT_EQUAL_FATAL(uv_timer_init(&l->loop, &l->watchdog), 0);
    l->watchdog.data = l;
    CU_ASSERT_EQUAL_FATAL(wal_open(&l->w, &l->loop, &cfg, next_lsn), 0);
}

/* Appends t as a WRITE record, waits until it is durable, frees t. Returns
 * its lsn (0 on failure). */
uint64_t lw_write(struct lw *l, struct txb *t)
{
    struct wal_txn head = {
        .txid = t->txid, .epoch = 1, .coordinator = 0, .nops = t->nops};
    size_t want = l->acked + 1;
    int64_t lsn;

    wal_txn_encode(t->p, &head);
    lsn = wal_append(l->w, WAL_REC_WRITE, t->p, t->len, lw_ack, l);
    free(t->p);
    t->p = NULL;
    CU_ASSERT(lsn > 0);
    if (lsn <= 0)
        return 0;
    lw_wait(l, want);
    CU_ASSERT_EQUAL(l->failed, 0);
    return (uint64_t)lsn;
}

void lw_close(struct lw *l)
{
    wal_close(l->w);
    uv_close((uv_handle_t *)&l->watchdog, NULL);
    uv_run(&l->loop, UV_RUN_DEFAULT);
    CU_ASSERT_EQUAL(uv_loop_close(&l->loop), 0);
    CU_ASSERT_EQUAL(l->failed, 0);
}

/* ---- the model: record i puts key k<i> ------------------------------------------- */

size_t model_vlen(uint64_t i)
{
    return 40 + (size_t)(i * 7 % 61);
}

void model_value(char *dst, uint64_t i)
{
    for (size_t j = 0; j < model_vlen(i); j++)
        dst[j] =
            (char)(i * 31 + j * 3 + (j == 5 ? 0 : 1)); /* binary, with a NUL-ish mix */
}

void model_key(char *dst, size_t cap, uint64_t i)
{
    snprintf(dst, cap, "k%llu", (unsigned long long)i);
}

int64_t model_mtime(uint64_t i)
{
    return NOW - 100000 + (int64_t)i;
}

/* The PUT op of record i (key and value in the caller's buffers). */
struct wal_op model_op(uint64_t i, char *key, size_t kcap, char *val)
{
    model_key(key, kcap, i);
    model_value(val, i);
    return (struct wal_op){.kind = WAL_OP_PUT,
                           .key = key,
                           .nkey = strlen(key),
                           .value = val,
                           .nvalue = model_vlen(i),
                           .flags = (uint32_t)i,
                           .exptime_ms = 0,
                           .mtime_ms = model_mtime(i),
                           .cas = i};
}

/* Writes records first..last (record i = txid i, PUT k<i>). Returns the
 * size of the last record written. */
size_t model_write(struct lw *l, uint64_t first, uint64_t last)
{
    size_t recsize = 0;

    for (uint64_t i = first; i <= last; i++) {
        char key[32], val[128];
        struct txb t;
        struct wal_op op = model_op(i, key, sizeof(key), val);
        txb_begin(&t, i);
        txb_op(&t, &op);
        recsize = WAL_RECORD_HEADER_BYTES + t.len;
        CU_ASSERT_EQUAL(lw_write(l, &t), i);
    }
    return recsize;
}

/* A log of records 1..n in segments of seg_bytes. Returns the last record's size. */
size_t model_log(const struct tdir *d, uint64_t n, uint64_t seg_bytes)
{
    struct lw l;
    size_t r;

    lw_open(&l, d, 1, seg_bytes);
    r = model_write(&l, 1, n);
    lw_close(&l);
    return r;
}

/* A snapshot at lsn holding records 1..lsn of the model. */
void model_snap(const struct tdir *d, uint64_t lsn)
{
    struct snap_writer *sw;
    struct snap_header h = {.lsn = lsn, .next_cas = lsn + 1, .flush_at_ms = 0};

    CU_ASSERT_EQUAL_FATAL(snap_write_begin(&sw, d->path, &h), 0);
    for (uint64_t i = 1; i <= lsn; i++) {
        char key[32], val[128];
        struct wal_op op = model_op(i, key, sizeof(key), val);
        CU_ASSERT_EQUAL(snap_write_item(sw, &op), 0);
    }
    CU_ASSERT_EQUAL(snap_write_end(sw), 0);
}

struct store *tdir_new_store(void)
{
    struct store_config cfg = {
        .max_bytes = 1ull << 30,
        .value_bytes_max = 1u << 20,
        .seed = 0x1234,
        .initial_buckets = 0,
    };
    struct store *s = store_new(&cfg);

    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    return s;
}

static int count_item(void *arg, const struct item *it)
{
    (void)it;
    (*(uint64_t *)arg)++;
    return 0;
}

uint64_t tdir_live_items(struct store *s, int64_t now)
{
    uint64_t n = 0;

    store_for_each(s, now, count_item, &n);
    return n;
}

uint64_t tdir_stats_items(struct store *s)
{
    struct store_stats st;

    store_get_stats(s, &st);
    return st.curr_items;
}

bool tdir_item_is(struct store *s, const char *key, const void *val, size_t nval,
                  uint32_t flags, int64_t exptime, int64_t mtime, uint64_t cas,
                  int64_t now)
{
    struct item *it = store_get(s, key, strlen(key), now);

    return it && it->nval == nval &&
           (nval == 0 || memcmp(item_value(it), val, nval) == 0) && it->flags == flags &&
           it->exptime_ms == exptime && it->mtime_ms == mtime && it->cas == cas;
}

bool tdir_absent(struct store *s, const char *key, int64_t now)
{
    return store_get(s, key, strlen(key), now) == NULL;
}

/* The store holds records 1..upto of the model and nothing else. */
bool model_holds(struct store *s, uint64_t upto, uint64_t of)
{
    unsigned bad = 0;

    for (uint64_t i = 1; i <= of; i++) {
        char key[32], val[128];
        model_key(key, sizeof(key), i);
        model_value(val, i);
        if (i <= upto ? !tdir_item_is(s, key, val, model_vlen(i), (uint32_t)i, 0,
                                      model_mtime(i), i, NOW)
                      : !tdir_absent(s, key, NOW))
            bad++;
    }
    return bad == 0 && tdir_live_items(s, NOW) == upto;
}

/* Runs recover on d into a new store (returned, or freed when out is NULL). */
int tdir_run_recover(const struct tdir *d, int64_t now, struct recover_result *res,
                     char *err, struct store **out)
{
    struct store *s = tdir_new_store();
    int r = recover(d->path, s, now, res, err, ERRCAP);

    if (out)
        *out = s;
    else
        store_free(s);
    return r;
}
