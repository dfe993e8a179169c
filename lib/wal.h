/*
 * wal.h - the write-ahead log: record codec (pure), segment scanner (pure,
 * for recovery and tests), and the group-commit writer (a thread that
 * writes and fdatasyncs batches of records and reports durability back to
 * the libuv loop). The formats are described at the top of wal.c.
 */
#ifndef TPCKV_WAL_H
#define TPCKV_WAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

/* ---- record codec ------------------------------------------------------- */

#define WAL_RECORD_HEADER_BYTES 20
#define WAL_SEGMENT_HEADER_BYTES 32
#define WAL_FORMAT_VERSION 2 /* 2: records carry flags (WAL_REC_FLAG_*) */
/* No record payload is larger (a 1 GiB value plus its op header): a larger
 * length field is corruption, not a record. */
#define WAL_RECORD_PAYLOAD_MAX ((uint32_t)(1u << 30) + 4096)

enum wal_rec_type {
    WAL_REC_WRITE = 1,   /* one-phase commit: ops applied as one atomic write */
    WAL_REC_PREPARE = 2, /* 2PC participant: ops prepared under txid */
    WAL_REC_COMMIT = 3,  /* 2PC: txid committed */
    WAL_REC_ABORT = 4,   /* 2PC: txid aborted */
    WAL_REC_END = 5,     /* 2PC coordinator: every participant ACKed txid */
    WAL_REC_SNAP_ITEM = 16, /* snapshot body: one item (a PUT op) */
    WAL_REC_SNAP_END = 17,  /* snapshot trailer */
};

/* Record flags (header byte 17; always 0 in a format 1 segment). */
#define WAL_REC_FLAG_BATCH 0x01 /* the first record of a write batch: the
                                   writer wrote it after the previous
                                   batch's fdatasync had returned */
#define WAL_REC_FLAGS_KNOWN WAL_REC_FLAG_BATCH

enum wal_op_kind {
    WAL_OP_PUT = 1,   /* key now holds this item (value, flags, expiry, cas) */
    WAL_OP_DEL = 2,   /* key removed */
    WAL_OP_TOUCH = 3, /* key's expiry changed */
    WAL_OP_FLUSH = 4, /* flush_all: everything written before flush_at goes */
    WAL_OP_CHECK = 5, /* 2PC condition: key's version at mtime is cas (0 = absent);
                         checked at prepare, skipped at replay */
};

/* The effect of a write on one key, as logged (not the command that caused
 * it: incr logs the resulting number, so replay needs no evaluation). Key and
 * value point into the encoded bytes after wal_op_next(). */
struct wal_op {
    enum wal_op_kind kind;
    const char *key;
    size_t nkey;
    const char *value;
    size_t nvalue;
    uint32_t flags;
    int64_t exptime_ms;  /* PUT, TOUCH: absolute unix ms, 0 = never */
    int64_t mtime_ms;    /* PUT: when written; FLUSH: when issued; CHECK: "now" */
    int64_t flush_at_ms; /* FLUSH */
    uint64_t cas;        /* PUT; CHECK: the expected version */
};

/* The head of a WRITE or PREPARE payload (COMMIT, ABORT and END have only
 * the first two fields). */
struct wal_txn {
    uint64_t txid;
    uint64_t epoch;
    uint32_t coordinator;
    uint32_t nops;
};
#define WAL_TXN_BYTES 24

/* No encoded op is shorter than its head (a DEL of a 0-byte key would be
 * this long): a count of ops larger than bytes / this is not decodable. */
#define WAL_OP_BYTES_MIN 8

/* Bytes wal_op_encode() writes for op. */
size_t wal_op_size(const struct wal_op *op);
/* Encodes op at dst (wal_op_size(op) bytes). Returns the bytes written. */
size_t wal_op_encode(char *dst, const struct wal_op *op);
void wal_txn_encode(char *dst, const struct wal_txn *t);

/*
 * Decodes the txn head of a WRITE/PREPARE payload and sets *pos past it.
 * Returns 0 or -EBADMSG.
 */
int wal_txn_decode(const char *p, size_t n, struct wal_txn *t, size_t *pos);

/*
 * Decodes the op at p[*pos..n) and advances *pos. Returns 1 for an op, 0 at
 * the end of the payload, -EBADMSG if the bytes are not a valid op.
 */
int wal_op_next(const char *p, size_t n, size_t *pos, struct wal_op *op);

/* A decoded record; payload points into the input. */
struct wal_record {
    uint8_t type;
    uint8_t flags; /* WAL_REC_FLAG_* */
    uint64_t lsn;
    const char *payload;
    uint32_t len;
};

/* Writes a record (header + payload) at dst; returns
 * WAL_RECORD_HEADER_BYTES + n. */
size_t wal_record_encode(char *dst, uint8_t type, uint64_t lsn, const void *payload, size_t n);

/* Marks the encoded record at rec as the first of a write batch (its CRC
 * is computed again). */
void wal_record_mark_batch(char *rec);

/*
 * Decodes the record at buf[0..len). Returns its total size (> 0),
 * -EAGAIN if buf ends before the record does (incomplete), or -EBADMSG if
 * the bytes are not a valid record (checksum, zeroes, absurd length, unknown
 * type or nonzero reserved bits).
 */
long wal_record_decode(const char *buf, size_t len, struct wal_record *rec);

/* Segment file header. */
void wal_segment_header_encode(char *dst, uint64_t first_lsn);
/* Returns 0, -EAGAIN if shorter than a header, -EBADMSG if not a segment
 * header, -EPROTONOSUPPORT for a newer format version. */
int wal_segment_header_decode(const char *buf, size_t len, uint64_t *first_lsn);

/* ---- scanning a segment (recovery) ------------------------------------------ */

enum wal_scan_status {
    WAL_SCAN_CLEAN,   /* every byte is a valid record */
    WAL_SCAN_TORN,    /* a bad or incomplete record at bad_offset, nothing
                         valid after it: a write cut short by a crash */
    WAL_SCAN_ZERO_TAIL, /* valid records up to bad_offset, then only zero
                           bytes: space the writer preallocated */
    WAL_SCAN_CORRUPT, /* a bad record at bad_offset, valid data after it:
                         some written by a later batch, so the damage is in
                         data an fdatasync had covered */
    WAL_SCAN_HOLE,    /* a bad record at bad_offset, valid records after it,
                         none of them the start of a batch: all of it is the
                         last batch, which a power cut can leave with holes
                         (pages written out of order) and which was never
                         acknowledged if it has one */
    WAL_SCAN_BAD_HEADER, /* the segment header itself is not valid */
    WAL_SCAN_NEWER_FORMAT,
    WAL_SCAN_LSN_GAP, /* a record's lsn is not the previous one's + 1 */
    WAL_SCAN_STOPPED, /* the callback returned an error (in cb_error) */
};

/*
 * The valid records anywhere in data[max(from, bad + 1)..len) that could follow a bad
 * record at offset bad whose lsn would have been after_lsn + 1 (lsn above
 * after_lsn, and no higher than the bytes since bad can hold). Adds their
 * number to *found; returns 1 as soon as one is the first of a write batch,
 * 0 when there are no more, -1 when the search gave up: it checksums at
 * most *crc_budget bytes (spent as it goes), so bytes crafted to look like
 * record headers cannot make it run for hours.
 */
int wal_records_after(const char *data, size_t len, size_t bad, size_t from,
                      uint64_t after_lsn, uint64_t *crc_budget, uint64_t *found);

/* The checksum budget a scan of len bytes gives wal_records_after. */
#define WAL_SCAN_CRC_BUDGET(len) (4 * (uint64_t)(len) + (64u << 20))

struct wal_scan {
    enum wal_scan_status status;
    uint64_t first_lsn;  /* from the header */
    uint64_t last_lsn;   /* of the last valid record (first_lsn - 1 if none) */
    uint64_t records;
    size_t valid_bytes;  /* header + valid records: where a torn tail is cut */
    size_t bad_offset;
    int cb_error;
    bool search_gave_up; /* CORRUPT because the search for valid records
                            after bad_offset hit its bound */
    uint64_t records_after; /* HOLE, CORRUPT: valid records found after
                               bad_offset */
    uint32_t version;       /* the segment's format version */
};

/*
 * Scans a segment image data[0..len): the header, then records in order,
 * calling cb (if not NULL) for each valid one. Stops at the first bad
 * record and decides what it is: the preallocated end of the segment when
 * every byte from there on is zero, else a torn tail or corruption by
 * looking for any valid record after it.
 */
void wal_scan_segment(const char *data, size_t len,
                      int (*cb)(void *arg, const struct wal_record *rec), void *arg,
                      struct wal_scan *out);

/* ---- the writer ---------------------------------------------------------------- */

enum wal_fsync_mode {
    WAL_FSYNC_ALWAYS, /* acknowledge after fdatasync; one fsync per batch */
    WAL_FSYNC_BATCH,  /* the same, with fsyncs at least fsync_interval_ms apart */
    WAL_FSYNC_NONE,   /* acknowledge once the kernel has the bytes: survives a
                         process crash, not a power cut */
};

const char *wal_fsync_mode_name(enum wal_fsync_mode m);
int wal_fsync_mode_parse(const char *s, enum wal_fsync_mode *out);

/*
 * The system calls the writer makes, so tests can inject short writes,
 * ENOSPC, EIO and fsync failures. Each returns like the syscall (-1 and
 * errno on failure).
 */
struct wal_io {
    int (*open)(const char *path, int flags, mode_t mode);
    ssize_t (*write)(int fd, const void *buf, size_t n);
    int (*fdatasync)(int fd);
    int (*close)(int fd);
    /* Preallocation (zero-filling ahead, trimming the rest at a segment's
     * end); either NULL turns it off. */
    ssize_t (*pwrite)(int fd, const void *buf, size_t n, off_t off);
    int (*ftruncate)(int fd, off_t len);
};
extern const struct wal_io wal_io_posix;

struct wal_config {
    const char *dir;
    enum wal_fsync_mode fsync_mode;
    unsigned fsync_interval_ms; /* batch mode */
    uint64_t segment_bytes;     /* start a new segment past this size */
    /* --wal-prealloc-bytes: under --fsync always/batch, the segment file is
     * zero-filled this far ahead of the records, so a record overwrites
     * blocks the file already has and fdatasync has no file size to write
     * (0: append, growing the file). */
    uint64_t prealloc_bytes;
    const struct wal_io *io;    /* NULL: the real system calls */
    /* Optional: called on the writer thread after each batch (durable or
     * failed), besides waking the loop, so another thread can run
     * wal_deliver() sooner than the loop would. */
    void (*on_batch)(void *arg);
    void *on_batch_arg;
};

struct wal_stats {
    uint64_t next_lsn;
    uint64_t durable_lsn;
    uint64_t records;   /* appended since open */
    uint64_t bytes;     /* bytes of all segment files */
    uint64_t segments;
    uint64_t fsyncs;
    uint64_t fsync_us_total, fsync_us_max, fsync_us_last;
    uint64_t batches;   /* groups written */
    int error;          /* sticky: 0 or -errno */
};

/* Called on the loop thread once lsn is durable (status 0) or can never be
 * (status < 0: the log failed; the write must not be acknowledged). */
typedef void (*wal_done_cb)(void *arg, uint64_t lsn, int status);

struct wal;

/*
 * Opens a writer in cfg->dir, starting a new segment whose first record
 * will have next_lsn, and starts its thread. Existing segments (listed by
 * the caller's recovery) are kept: known_bytes and known_segments count them
 * for stats and removal. Returns 0 or -errno.
 */
int wal_open(struct wal **out, uv_loop_t *loop, const struct wal_config *cfg, uint64_t next_lsn);

/*
 * Appends a record; cb(arg, lsn, status) runs on the loop thread when it is
 * durable (callbacks come in lsn order). The payload is copied. Returns the
 * lsn (> 0), or a negative errno when the log has failed (cb is not called).
 */
int64_t wal_append(struct wal *w, uint8_t type, const void *payload, size_t n, wal_done_cb cb,
                   void *arg);

/*
 * Hands the records appended so far to the writer thread now, rather than
 * when the loop next turns. For a caller on another thread that holds
 * whatever lock serializes it with the loop thread (serve's connection
 * threads), so its records need not wait for the loop to wake up.
 */
void wal_hand_over(struct wal *w);

/*
 * Runs the callbacks of the records now durable (or failed), in lsn order,
 * as the loop does when the writer wakes it. Same rules as wal_hand_over.
 */
void wal_deliver(struct wal *w);

/* The sticky error (0 while healthy). */
int wal_error(const struct wal *w);

/*
 * After a failure: whether the log was cut back to the end of its last
 * durable record (the failed batch's bytes truncated, segments it started
 * removed, and that made durable), so that no record after durable_lsn is
 * on disk and the writes waiting on them are known not to have happened.
 * False while healthy, and when the cut itself failed: then what reached
 * the disk is unknown until a restart reads it.
 */
bool wal_rolled_back(const struct wal *w);

void wal_get_stats(struct wal *w, struct wal_stats *st);

/*
 * Removes every segment whose records all have lsn <= upto (covered by a
 * snapshot). The segment being written is never removed. Returns the number
 * of files removed or -errno.
 */
int wal_remove_covered(struct wal *w, uint64_t upto);

/*
 * Writes and syncs what is pending, stops the thread, delivers the last
 * callbacks, and closes. The loop must run afterwards so the async handle
 * closes; the wal is freed then. Returns 0 when every record appended is
 * durable and the log closed cleanly (a clean stop), or the error.
 */
int wal_close(struct wal *w);

#endif /* TPCKV_WAL_H */
