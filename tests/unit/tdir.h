/*
 * tdir.h - data directories built on disk for the unit tests of recovery,
 * snapshots and the data directory (unit_recover.c, unit_snap.c,
 * unit_datadir.c): a temporary directory whose log lines go to a file in
 * it, file damage (flip, zero, truncate, append), log records written with
 * the real writer (lib/wal.c), and "the model": record i puts key k<i> with
 * a value, flags, mtime and cas derived from i, so a recovered store can be
 * checked against it.
 */
#ifndef TPCKV_TESTS_TDIR_H
#define TPCKV_TESTS_TDIR_H

#include "recover.h"
#include "store.h"
#include "wal.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define NOW 1700000000000LL /* the recovery time of most tests (unix ms) */
#define ERRCAP 1024

/* A directory under $TMPDIR (or /tmp), removed by tdir_remove. */
struct tdir {
    char path[256];
    int log_fd;
};

/* A WRITE record's payload being built: its transaction header, then ops. */
struct txb {
    char *p;
    size_t len, cap;
    uint64_t txid;
    uint32_t nops;
};

/* The real log writer on a loop of its own. */
struct lw {
    uv_loop_t loop;
    uv_timer_t watchdog;
    bool expired;
    struct wal *w;
    size_t acked;
    unsigned failed;
};

void tdir_make(struct tdir *d);

/* Does the log written since tdir_make() contain needle? */
bool tdir_logged(struct tdir *d, const char *needle);

void tdir_remove(struct tdir *d);

void tdir_seg_path(char *dst, size_t cap, const struct tdir *d, uint64_t first);

void tdir_snap_path(char *dst, size_t cap, const struct tdir *d, uint64_t lsn);

long tdir_file_size(const char *path);

bool tdir_file_exists(const char *path);

/* Reads a whole file (malloc'ed, caller frees). */
char *tdir_read_all(const char *path, size_t *len);

/* Replaces the file's contents with p[0..n). */
void tdir_write_all_file(const char *path, const void *p, size_t n);

void tdir_append_file(const char *path, const void *p, size_t n);

void tdir_flip_byte(const char *path, long off);

void tdir_zero_bytes(const char *path, long off, size_t n);

void txb_begin(struct txb *t, uint64_t txid);

void txb_op(struct txb *t, const struct wal_op *op);

void txb_put(struct txb *t, const char *key, const void *val, size_t nval, uint32_t flags,
             int64_t exptime, int64_t mtime, uint64_t cas);

void txb_del(struct txb *t, const char *key);

void txb_touch(struct txb *t, const char *key, int64_t exptime);

void txb_flush(struct txb *t, int64_t flush_at, int64_t mtime);

/* The log writer's callback: counts acknowledgements and failures. */
void lw_ack(void *arg, uint64_t lsn, int status);

/* Runs the loop until want callbacks have fired (or the watchdog). */
void lw_wait(struct lw *l, size_t want);

void lw_open(struct lw *l, const struct tdir *d, uint64_t next_lsn, uint64_t seg_bytes);

/* Appends t as a WRITE record, waits until it is durable, frees t. Returns
 * its lsn (0 on failure). */
uint64_t lw_write(struct lw *l, struct txb *t);

void lw_close(struct lw *l);

size_t model_vlen(uint64_t i);

void model_value(char *dst, uint64_t i);

void model_key(char *dst, size_t cap, uint64_t i);

int64_t model_mtime(uint64_t i);

/* The PUT op of record i (key and value in the caller's buffers). */
struct wal_op model_op(uint64_t i, char *key, size_t kcap, char *val);

/* Writes records first..last (record i = txid i, PUT k<i>). Returns the
 * size of the last record written. */
size_t model_write(struct lw *l, uint64_t first, uint64_t last);

/* A log of records 1..n in segments of seg_bytes. Returns the last record's size. */
size_t model_log(const struct tdir *d, uint64_t n, uint64_t seg_bytes);

/* A snapshot at lsn holding records 1..lsn of the model. */
void model_snap(const struct tdir *d, uint64_t lsn);

struct store *tdir_new_store(void);

uint64_t tdir_live_items(struct store *s, int64_t now);

uint64_t tdir_stats_items(struct store *s);

bool tdir_item_is(struct store *s, const char *key, const void *val, size_t nval,
                  uint32_t flags, int64_t exptime, int64_t mtime, uint64_t cas,
                  int64_t now);

bool tdir_absent(struct store *s, const char *key, int64_t now);

/* The store holds records 1..upto of the model and nothing else. */
bool model_holds(struct store *s, uint64_t upto, uint64_t of);

/* Runs recover on d into a new store (returned, or freed when out is NULL). */
int tdir_run_recover(const struct tdir *d, int64_t now, struct recover_result *res,
                     char *err, struct store **out);

#endif
