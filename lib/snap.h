/*
 * snap.h - snapshots: the whole store at one log position, so recovery reads
 * one file and the log after it instead of the log since the beginning.
 * Format at the top of snap.c.
 */
#ifndef TPCKV_SNAP_H
#define TPCKV_SNAP_H

#include "wal.h"

#include <stddef.h>
#include <stdint.h>

#define SNAP_FORMAT_VERSION 1
#define SNAP_HEADER_BYTES 48

struct snap_header {
    uint64_t lsn;        /* every record <= lsn is reflected; replay resumes after */
    uint64_t next_cas;   /* cas uniques below this were handed out */
    int64_t flush_at_ms; /* a delayed flush_all still pending, 0 = none */
};

struct snap_writer;

/*
 * Starts writing <dir>/snap-<lsn>.tmp. Returns 0 or -errno. The writer
 * buffers; nothing is visible under the final name until snap_write_end().
 */
int snap_write_begin(struct snap_writer **out, const char *dir, const struct snap_header *h);

/* Adds one item (op->kind must be WAL_OP_PUT). Returns 0 or -errno. */
int snap_write_item(struct snap_writer *sw, const struct wal_op *op);

/* Adds a 2PC record (WAL_REC_PREPARE or WAL_REC_COMMIT, payload as in the
 * log): a transaction still open when the snapshot was taken. */
int snap_write_record(struct snap_writer *sw, uint8_t type, const void *payload, size_t n);

/*
 * Writes the trailer, fsyncs the file, renames it to snap-<lsn>.snap and
 * fsyncs the directory: only then does the snapshot exist. Frees sw.
 * Returns 0 or -errno (the temporary file is removed on error).
 */
int snap_write_end(struct snap_writer *sw);

/* Drops an unfinished snapshot and its temporary file. */
void snap_write_abort(struct snap_writer *sw);

struct store;

/*
 * Writes every item s stores, dead ones included (the snapshot replaces a
 * log that replay would load them from: see store.h), as snapshot h->lsn in
 * dir, start to finish (begin, items, extra, end). Runs in a forked child,
 * on a copy-on-write image of the store. extra (may be NULL) adds records
 * with snap_write_record(). Returns 0 or -errno; *items gets the item count.
 */
int snap_write_store(const char *dir, struct store *s, const struct snap_header *h,
                     uint64_t *items,
                     int (*extra)(void *arg, struct snap_writer *sw), void *extra_arg);

/*
 * Reads and checks a snapshot file, calling cb for each item (a PUT op whose
 * pointers are valid during the call) and txn_cb for each 2PC record (if
 * txn_cb is NULL, a snapshot holding one is refused with -EBADMSG, err
 * saying it was not expected).
 * Returns 0; -EPROTONOSUPPORT for a newer format; -EBADMSG if the file is
 * damaged (err says where); a callback's negative return; or -errno. err
 * (errcap bytes) receives a sentence.
 */
int snap_read(const char *path, struct snap_header *h,
              int (*cb)(void *arg, const struct wal_op *op),
              int (*txn_cb)(void *arg, const struct wal_record *rec), void *arg, char *err,
              size_t errcap);

#endif
