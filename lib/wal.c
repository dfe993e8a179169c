/*
 * wal.c - write-ahead log.
 *
 * FILES. The log is a sequence of segment files wal-<first lsn>.log in the
 * data directory (16 hex digits, so names sort by lsn). Each starts with a
 * 32-byte header, then records back to back. A new segment starts when the
 * current one would pass --wal-segment-bytes, and at every start of serve.
 *
 * SEGMENT HEADER (little-endian):
 *    0  8  magic "TPCKVWAL"
 *    8  4  format version (2; a format 1 segment is read the same way,
 *            its records carry no flags)
 *   12  4  header size (32)
 *   16  8  lsn of the segment's first record
 *   24  4  reserved, 0
 *   28  4  CRC32C of bytes 0..27
 *
 * RECORD (little-endian):
 *    0  4  CRC32C of bytes 4 .. 20+len (everything after this field)
 *    4  4  len: payload bytes (at most WAL_RECORD_PAYLOAD_MAX)
 *    8  8  lsn: log sequence number, +1 per record, never reused
 *   16  1  type (enum wal_rec_type)
 *   17  1  flags (WAL_REC_FLAG_BATCH: the first record of a write batch)
 *   18  2  reserved, 0
 *   20     payload
 *
 * A record is valid when its length fits, its type and flags are known, its
 * reserved bytes are zero and its CRC matches; a zeroed block fails all of
 * these. The
 * lsn lets recovery see a missing segment (a gap between one segment's last
 * lsn and the next one's first) and stale bytes (an lsn that is not +1).
 *
 * PAYLOADS. WRITE and PREPARE carry a txn head (txid, epoch, coordinator,
 * op count: 24 bytes) and that many ops; COMMIT, ABORT and END carry txid
 * and epoch. An op is the effect of a write on one key, so replay needs no clock
 * and no evaluation:
 *    0  1  kind (enum wal_op_kind)    1  1  key length
 *    2  2  reserved, 0                4  4  value length (PUT), else 0
 *   PUT    8: flags u32, reserved u32, exptime i64, mtime i64, cas u64,
 *             then key, then value
 *   DEL    8: key
 *   TOUCH  8: exptime i64, then key
 *   FLUSH  8: flush_at i64, mtime i64 (no key)
 *   CHECK  8: expected cas u64, now i64, then key (2PC: the version the
 *             coordinator saw; a participant whose differs votes no)
 *
 * PREALLOCATION. Under --fsync always and batch the writer zero-fills the
 * segment file --wal-prealloc-bytes ahead of its records, so a record
 * overwrites blocks the file already has: fdatasync then writes the data
 * and flushes, with no new file size to write first. (An appending write
 * changes the size, and the size must be on disk before the data counts;
 * that extra write was a third of every fsync's time here.) A segment is
 * trimmed to its records when it is closed. After a crash the last segment
 * ends in zeros: the scan reports WAL_SCAN_ZERO_TAIL and recovery trims it.
 * A record is never all zeros (its type byte is not 0), so a zeroed tail
 * cannot hide one.
 *
 * RECOVERY (see wal_scan_segment and recover.c): records are replayed in
 * lsn order. A bad record with nothing valid after it in the last segment
 * is a write cut short by a crash: it was never acknowledged (a write is
 * acknowledged only once its record is durable), so the tail is truncated
 * with a warning. A bad record with valid ones after it is a hole, which a
 * power cut leaves only in the batch being written (one fdatasync writes
 * its pages in any order; the writer writes the next batch only after the
 * last fdatasync returned, and marks its first record): if no valid record
 * after the hole starts a batch, all of it is that last, unacknowledged
 * batch (WAL_SCAN_HOLE) and recovery cuts it off; if one does, the damaged
 * bytes had been synced: corruption (WAL_SCAN_CORRUPT), and serve refuses
 * to start, saying where and the exact cut that would keep what precedes
 * it. The search for valid records after damage checksums a bounded number
 * of bytes. Any segment but the last must read back whole.
 *
 * FAILURE. A failed write or fsync is sticky (see GROUP COMMIT). The writer
 * then cuts the log back to where the failed batch began - truncates the
 * segment to the end of the last durable record, removes any segment the
 * batch started, and makes that durable - so the records of the failed
 * batch are known not to be on disk, and the writes waiting on them can be
 * reported as not done (a coordinator's COMMIT among them can be turned
 * into an abort). If the cut fails too, their fate is unknown until a
 * restart reads the log (wal_rolled_back says which). Truncating is safe
 * after a failed fsync: the bytes kept were made durable by an earlier,
 * successful one, and the fsync after the cut must succeed for the cut to
 * count.
 *
 * GROUP COMMIT. The loop thread encodes records into a pending buffer under
 * a mutex. The writer thread swaps that buffer out, write()s it (cutting
 * segments at record boundaries), and calls fdatasync once for everything it
 * took, then reports the highest durable lsn through a uv_async handle; the
 * loop runs the waiting callbacks in lsn order. While the thread writes and
 * syncs, the loop keeps serving and appending to the other buffer, so the
 * next fsync covers every record that arrived meanwhile. A failed write or
 * fsync is sticky: every waiter and every later append gets the error, and
 * nothing is retried (after a failed fsync the kernel may have dropped the
 * dirty pages; retrying could report data durable that is not).
 */
#include "wal.h"

#include "buf.h"
#include "crc32c.h"
#include "datadir.h"
#include "limits.h"
#include "log.h"
#include "util.h"

#include <assert.h>
#include <errno.h>
#include <stdatomic.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MOD "wal"
#define OP_HEAD_BYTES WAL_OP_BYTES_MIN
#define PUT_FIXED_BYTES 32

static const char seg_magic[8] = {'T', 'P', 'C', 'K', 'V', 'W', 'A', 'L'};

/* ---- record codec ------------------------------------------------------- */

size_t wal_op_size(const struct wal_op *op)
{
    switch (op->kind) {
    case WAL_OP_PUT:
        return OP_HEAD_BYTES + PUT_FIXED_BYTES + op->nkey + op->nvalue;
    case WAL_OP_DEL:
        return OP_HEAD_BYTES + op->nkey;
    case WAL_OP_TOUCH:
        return OP_HEAD_BYTES + 8 + op->nkey;
    case WAL_OP_FLUSH:
        return OP_HEAD_BYTES + 16;
    case WAL_OP_CHECK:
        return OP_HEAD_BYTES + 16 + op->nkey;
    }
    return 0;
}

size_t wal_op_encode(char *dst, const struct wal_op *op)
{
    char *p = dst;
    size_t nkey = op->kind == WAL_OP_FLUSH ? 0 : op->nkey;

    assert(nkey <= 255 && op->nvalue <= UINT32_MAX);
    p[0] = (char)op->kind;
    p[1] = (char)nkey;
    util_put_le16(p + 2, 0);
    util_put_le32(p + 4, op->kind == WAL_OP_PUT ? (uint32_t)op->nvalue : 0);
    p += OP_HEAD_BYTES;
    switch (op->kind) {
    case WAL_OP_PUT:
        util_put_le32(p, op->flags);
        util_put_le32(p + 4, 0);
        util_put_le64(p + 8, (uint64_t)op->exptime_ms);
        util_put_le64(p + 16, (uint64_t)op->mtime_ms);
        util_put_le64(p + 24, op->cas);
        p += PUT_FIXED_BYTES;
        break;
    case WAL_OP_TOUCH:
        util_put_le64(p, (uint64_t)op->exptime_ms);
        p += 8;
        break;
    case WAL_OP_FLUSH:
        util_put_le64(p, (uint64_t)op->flush_at_ms);
        util_put_le64(p + 8, (uint64_t)op->mtime_ms);
        p += 16;
        break;
    case WAL_OP_CHECK:
        util_put_le64(p, op->cas);
        util_put_le64(p + 8, (uint64_t)op->mtime_ms);
        p += 16;
        break;
    case WAL_OP_DEL:
        break;
    }
    if (nkey)
        memcpy(p, op->key, nkey); /* a FLUSH has no key (and may have key NULL) */
    p += nkey;
    if (op->kind == WAL_OP_PUT && op->nvalue) {
        memcpy(p, op->value, op->nvalue);
        p += op->nvalue;
    }
    return (size_t)(p - dst);
}

void wal_txn_encode(char *dst, const struct wal_txn *t)
{
    util_put_le64(dst, t->txid);
    util_put_le64(dst + 8, t->epoch);
    util_put_le32(dst + 16, t->coordinator);
    util_put_le32(dst + 20, t->nops);
}

int wal_txn_decode(const char *p, size_t n, struct wal_txn *t, size_t *pos)
{
    if (n < WAL_TXN_BYTES)
        return -EBADMSG;
    t->txid = util_get_le64(p);
    t->epoch = util_get_le64(p + 8);
    t->coordinator = util_get_le32(p + 16);
    t->nops = util_get_le32(p + 20);
    *pos = WAL_TXN_BYTES;
    return 0;
}

int wal_op_next(const char *p, size_t n, size_t *pos, struct wal_op *op)
{
    size_t i = *pos, fixed;
    const char *h;

    if (i == n)
        return 0;
    if (n - i < OP_HEAD_BYTES)
        return -EBADMSG;
    h = p + i;
    memset(op, 0, sizeof(*op));
    op->kind = (enum wal_op_kind)(unsigned char)h[0];
    op->nkey = (unsigned char)h[1];
    op->nvalue = util_get_le32(h + 4);
    if (util_get_le16(h + 2) != 0)
        return -EBADMSG;
    switch (op->kind) {
    case WAL_OP_PUT:
        fixed = PUT_FIXED_BYTES;
        break;
    case WAL_OP_DEL:
        fixed = 0;
        break;
    case WAL_OP_TOUCH:
        fixed = 8;
        break;
    case WAL_OP_FLUSH:
    case WAL_OP_CHECK:
        fixed = 16;
        break;
    default:
        return -EBADMSG;
    }
    if ((op->kind == WAL_OP_FLUSH) != (op->nkey == 0) ||
        (op->kind != WAL_OP_PUT && op->nvalue != 0))
        return -EBADMSG;
    i += OP_HEAD_BYTES;
    if (n - i < fixed || n - i - fixed < op->nkey || n - i - fixed - op->nkey < op->nvalue)
        return -EBADMSG;
    h = p + i;
    switch (op->kind) {
    case WAL_OP_PUT:
        op->flags = util_get_le32(h);
        if (util_get_le32(h + 4) != 0)
            return -EBADMSG;
        op->exptime_ms = (int64_t)util_get_le64(h + 8);
        op->mtime_ms = (int64_t)util_get_le64(h + 16);
        op->cas = util_get_le64(h + 24);
        break;
    case WAL_OP_TOUCH:
        op->exptime_ms = (int64_t)util_get_le64(h);
        break;
    case WAL_OP_FLUSH:
        op->flush_at_ms = (int64_t)util_get_le64(h);
        op->mtime_ms = (int64_t)util_get_le64(h + 8);
        break;
    case WAL_OP_CHECK:
        op->cas = util_get_le64(h);
        op->mtime_ms = (int64_t)util_get_le64(h + 8);
        break;
    case WAL_OP_DEL:
        break;
    }
    i += fixed;
    op->key = p + i;
    i += op->nkey;
    op->value = p + i;
    i += op->nvalue;
    *pos = i;
    return 1;
}

static bool type_known(unsigned t)
{
    return (t >= WAL_REC_WRITE && t <= WAL_REC_END) || t == WAL_REC_SNAP_ITEM ||
           t == WAL_REC_SNAP_END;
}

size_t wal_record_encode(char *dst, uint8_t type, uint64_t lsn, const void *payload, size_t n)
{
    assert(n <= WAL_RECORD_PAYLOAD_MAX && type_known(type));
    util_put_le32(dst + 4, (uint32_t)n);
    util_put_le64(dst + 8, lsn);
    dst[16] = (char)type;
    dst[17] = dst[18] = dst[19] = 0;
    if (n)
        memcpy(dst + WAL_RECORD_HEADER_BYTES, payload, n);
    util_put_le32(dst, crc32c(0, dst + 4, WAL_RECORD_HEADER_BYTES - 4 + n));
    return WAL_RECORD_HEADER_BYTES + n;
}

void wal_record_mark_batch(char *rec)
{
    uint32_t n = util_get_le32(rec + 4);

    rec[17] = (char)(rec[17] | WAL_REC_FLAG_BATCH);
    util_put_le32(rec, crc32c(0, rec + 4, WAL_RECORD_HEADER_BYTES - 4 + n));
}

long wal_record_decode(const char *buf, size_t len, struct wal_record *rec)
{
    uint32_t n;

    if (len < WAL_RECORD_HEADER_BYTES)
        return -EAGAIN;
    n = util_get_le32(buf + 4);
    if (n > WAL_RECORD_PAYLOAD_MAX || !type_known((unsigned char)buf[16]) ||
        (buf[17] & ~WAL_REC_FLAGS_KNOWN) || buf[18] || buf[19])
        return -EBADMSG;
    if (len - WAL_RECORD_HEADER_BYTES < n)
        return -EAGAIN;
    if (crc32c(0, buf + 4, WAL_RECORD_HEADER_BYTES - 4 + n) != util_get_le32(buf))
        return -EBADMSG;
    rec->len = n;
    rec->lsn = util_get_le64(buf + 8);
    rec->type = (uint8_t)buf[16];
    rec->flags = (uint8_t)buf[17];
    rec->payload = buf + WAL_RECORD_HEADER_BYTES;
    return (long)(WAL_RECORD_HEADER_BYTES + n);
}

void wal_segment_header_encode(char *dst, uint64_t first_lsn)
{
    memcpy(dst, seg_magic, 8);
    util_put_le32(dst + 8, WAL_FORMAT_VERSION);
    util_put_le32(dst + 12, WAL_SEGMENT_HEADER_BYTES);
    util_put_le64(dst + 16, first_lsn);
    util_put_le32(dst + 24, 0);
    util_put_le32(dst + 28, crc32c(0, dst, 28));
}

int wal_segment_header_decode(const char *buf, size_t len, uint64_t *first_lsn)
{
    if (len < WAL_SEGMENT_HEADER_BYTES)
        return -EAGAIN;
    if (memcmp(buf, seg_magic, 8) != 0 || util_get_le32(buf + 28) != crc32c(0, buf, 28))
        return -EBADMSG;
    if (util_get_le32(buf + 8) > WAL_FORMAT_VERSION)
        return -EPROTONOSUPPORT;
    if (util_get_le32(buf + 8) == 0 || util_get_le32(buf + 12) != WAL_SEGMENT_HEADER_BYTES)
        return -EBADMSG;
    *first_lsn = util_get_le64(buf + 16);
    return 0;
}

/* ---- scanning ------------------------------------------------------------------ */

/* Cheap checks first: most offsets fail on the type byte; a candidate's
 * lsn must fit, and only then is its CRC computed, within the budget. */
int wal_records_after(const char *data, size_t len, size_t bad, size_t from,
                      uint64_t after_lsn, uint64_t *crc_budget, uint64_t *found)
{
    struct wal_record rec;

    for (size_t off = from > bad ? from : bad + 1; off + WAL_RECORD_HEADER_BYTES <= len; off++) {
        unsigned t = (unsigned char)data[off + 16];
        if (!type_known(t) || (data[off + 17] & ~WAL_REC_FLAGS_KNOWN) || data[off + 18] ||
            data[off + 19])
            continue;
        uint64_t lsn = util_get_le64(data + off + 8);
        uint64_t most = after_lsn + 1 + (off - bad) / WAL_RECORD_HEADER_BYTES;
        uint32_t n = util_get_le32(data + off + 4);
        if (lsn <= after_lsn || lsn > most || n > len - off - WAL_RECORD_HEADER_BYTES)
            continue;
        uint64_t cost = WAL_RECORD_HEADER_BYTES + (uint64_t)n;
        if (cost > *crc_budget)
            return -1;
        *crc_budget -= cost;
        long size = wal_record_decode(data + off, len - off, &rec);
        if (size <= 0)
            continue;
        (*found)++;
        if (rec.flags & WAL_REC_FLAG_BATCH)
            return 1;
        off += (size_t)size - 1; /* records follow each other */
    }
    return 0;
}

/* Is every byte of data[from..len) zero? */
static bool zero_from(const char *data, size_t len, size_t from)
{
    for (size_t i = from; i < len; i++)
        if (data[i])
            return false;
    return true;
}

void wal_scan_segment(const char *data, size_t len,
                      int (*cb)(void *arg, const struct wal_record *rec), void *arg,
                      struct wal_scan *out)
{
    size_t off = WAL_SEGMENT_HEADER_BYTES;
    int r;

    memset(out, 0, sizeof(*out));
    r = wal_segment_header_decode(data, len, &out->first_lsn);
    if (r < 0) {
        out->status = r == -EPROTONOSUPPORT ? WAL_SCAN_NEWER_FORMAT : WAL_SCAN_BAD_HEADER;
        return;
    }
    out->version = util_get_le32(data + 8);
    out->last_lsn = out->first_lsn - 1;
    out->valid_bytes = off;
    while (off < len) {
        struct wal_record rec;
        long n = wal_record_decode(data + off, len - off, &rec);
        if (n < 0) {
            out->bad_offset = off;
            if (zero_from(data, len, off)) {
                out->status = WAL_SCAN_ZERO_TAIL;
                return;
            }
            uint64_t budget = WAL_SCAN_CRC_BUDGET(len);
            /* The search starts right after the bad record's first byte, in
             * its own payload too: its length field may be what is damaged,
             * and skipping what it claims could skip acknowledged records.
             * So a torn last record whose value holds bytes shaped like a
             * later batch's records is refused rather than cut (the message
             * gives the cut): a start refused is better than writes lost. */
            size_t from = off + 1;
            int v = from >= len ? 0
                                : wal_records_after(data, len, off, from, out->last_lsn, &budget,
                                                    &out->records_after);
            if (v < 0) {
                out->status = WAL_SCAN_CORRUPT;
                out->search_gave_up = true;
            } else if (out->records_after == 0) {
                out->status = WAL_SCAN_TORN;
            } else if (v == 0 && out->version >= 2) {
                out->status = WAL_SCAN_HOLE;
            } else {
                /* A later batch, or a format 1 segment that cannot say. */
                out->status = WAL_SCAN_CORRUPT;
            }
            return;
        }
        if (rec.lsn != out->last_lsn + 1) {
            out->bad_offset = off;
            out->status = WAL_SCAN_LSN_GAP;
            return;
        }
        if (cb && (r = cb(arg, &rec)) < 0) {
            out->bad_offset = off;
            out->cb_error = r;
            out->status = WAL_SCAN_STOPPED;
            return;
        }
        out->last_lsn = rec.lsn;
        out->records++;
        off += (size_t)n;
        out->valid_bytes = off;
    }
    out->status = WAL_SCAN_CLEAN;
}

/* ---- the writer ------------------------------------------------------------------ */

static int posix_open(const char *path, int flags, mode_t mode)
{
    return open(path, flags, mode);
}

static int posix_close(int fd)
{
    return close(fd);
}

const struct wal_io wal_io_posix = {
    .open = posix_open,
    .write = write,
    .fdatasync = fdatasync,
    .close = posix_close,
    .pwrite = pwrite,
    .ftruncate = ftruncate,
};

const char *wal_fsync_mode_name(enum wal_fsync_mode m)
{
    return m == WAL_FSYNC_ALWAYS ? "always" : m == WAL_FSYNC_BATCH ? "batch" : "none";
}

int wal_fsync_mode_parse(const char *s, enum wal_fsync_mode *out)
{
    if (strcmp(s, "always") == 0)
        *out = WAL_FSYNC_ALWAYS;
    else if (strcmp(s, "batch") == 0)
        *out = WAL_FSYNC_BATCH;
    else if (strcmp(s, "none") == 0)
        *out = WAL_FSYNC_NONE;
    else
        return -EINVAL;
    return 0;
}

struct waiter {
    uint64_t lsn;
    wal_done_cb cb;
    void *arg;
};

struct segment {
    uint64_t first_lsn;
    uint64_t bytes;
};

struct wal {
    uv_loop_t *loop;
    uv_async_t async;
    uv_prepare_t prep; /* hands the turn's records to the writer */
    int open_handles;  /* freed when both handles are closed */
    atomic_int failed; /* mirrors error, read without the lock */
    struct wal_config cfg;
    char *dir;
    const struct wal_io *io;
    pthread_t thread;
    bool thread_started;

    /* Shared, under mu. */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct buf pending;     /* encoded records the thread has not taken */
    uint64_t pending_last;  /* lsn of the last record in pending */
    uint64_t durable_lsn;
    int error;
    bool rolled_back; /* after the error: the failed batch is off the disk */
    bool stop;
    bool busy; /* a batch is being written (by the thread, or inline) */
    struct segment *segs; /* oldest first; the last is being written */
    size_t nsegs, capsegs;
    struct wal_stats st;

    /* Writer thread only. */
    struct buf writing;
    int fd;
    uint64_t cur_bytes; /* size of the segment being written */
    uint64_t filled;    /* bytes the file has: records, then preallocated zeros */
    bool prealloc;      /* zero-fill ahead (cfg, fsync mode and io allow it) */
    uint64_t last_sync_ns;

    /* Loop thread only. */
    struct buf staged;     /* records appended this loop turn */
    struct buf inline_buf; /* --fsync none: the batch being written inline */
    uint64_t staged_last;  /* lsn of the last of them */
    uint64_t staged_count;
    struct waiter *wq; /* ring of callbacks in lsn order */
    size_t wq_head, wq_len, wq_cap;
    uint64_t next_lsn;
};

static int seg_push(struct wal *w, uint64_t first_lsn, uint64_t bytes)
{
    if (w->nsegs == w->capsegs) {
        size_t ncap = w->capsegs ? w->capsegs * 2 : 16;
        struct segment *p = realloc(w->segs, ncap * sizeof(*p));
        if (p == NULL)
            return -ENOMEM;
        w->segs = p;
        w->capsegs = ncap;
    }
    w->segs[w->nsegs++] = (struct segment){first_lsn, bytes};
    return 0;
}

static int write_all(struct wal *w, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t r = w->io->write(w->fd, p, n);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (r == 0)
            return -EIO;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static int sync_fd(struct wal *w)
{
    uint64_t t0 = util_mono_ns(), us;
    int r = w->io->fdatasync(w->fd) < 0 ? -errno : 0;

    us = (util_mono_ns() - t0) / 1000;
    w->last_sync_ns = util_mono_ns();
    pthread_mutex_lock(&w->mu);
    w->st.fsyncs++;
    w->st.fsync_us_total += us;
    w->st.fsync_us_last = us;
    if (us > w->st.fsync_us_max)
        w->st.fsync_us_max = us;
    pthread_mutex_unlock(&w->mu);
    return r;
}

/* Zero-fills the segment file, a chunk of cfg.prealloc_bytes at a time, until
 * it holds upto bytes (or the segment size). Best effort: if the file system
 * refuses (ENOSPC...), this segment just grows by appending, and the record
 * write reports any real error. */
static void prealloc_to(struct wal *w, uint64_t upto)
{
    static const char zeros[64 * 1024];

    while (w->prealloc && w->filled < upto && w->filled < w->cfg.segment_bytes) {
        uint64_t end = w->filled + w->cfg.prealloc_bytes;
        if (end > w->cfg.segment_bytes)
            end = w->cfg.segment_bytes;
        while (w->filled < end) {
            size_t n = end - w->filled < sizeof(zeros) ? (size_t)(end - w->filled)
                                                       : sizeof(zeros);
            ssize_t r = w->io->pwrite(w->fd, zeros, n, (off_t)w->filled);
            if (r <= 0) {
                if (r < 0 && errno == EINTR)
                    continue;
                log_debug(MOD, "preallocating the log segment failed (%s): appending",
                          r < 0 ? strerror(errno) : "short write");
                w->prealloc = false;
                return;
            }
            w->filled += (uint64_t)r;
        }
    }
}

/* Cuts the preallocated zeros off the segment being closed, so only the
 * last segment can end in zeros. A failure leaves them: recovery trims them. */
static void trim_segment(struct wal *w)
{
    if (w->filled <= w->cur_bytes)
        return;
    if (w->io->ftruncate(w->fd, (off_t)w->cur_bytes) < 0)
        log_warn(MOD, "cannot trim the log segment's preallocated end: %s", strerror(errno));
    else
        w->filled = w->cur_bytes;
}

/* Creates segment first_lsn with its header (and its first preallocated
 * chunk), durably (file and directory entry), and makes it the one being
 * written. */
static int start_segment(struct wal *w, uint64_t first_lsn)
{
    char path[4200], hdr[WAL_SEGMENT_HEADER_BYTES];
    int r;

    datadir_path(path, sizeof(path), w->dir, "wal-", first_lsn, ".log");
    /* No O_APPEND: records go at the file offset, before the zeros. */
    w->fd = w->io->open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (w->fd < 0)
        return -errno;
    w->prealloc = w->cfg.prealloc_bytes > 0 && w->cfg.fsync_mode != WAL_FSYNC_NONE &&
                  w->io->pwrite != NULL && w->io->ftruncate != NULL;
    wal_segment_header_encode(hdr, first_lsn);
    if ((r = write_all(w, hdr, sizeof(hdr))) < 0)
        goto fail;
    w->filled = sizeof(hdr);
    prealloc_to(w, sizeof(hdr) + 1);
    if ((r = sync_fd(w)) < 0 || (r = datadir_sync(w->dir)) < 0)
        goto fail;
    w->cur_bytes = sizeof(hdr);
    pthread_mutex_lock(&w->mu);
    r = seg_push(w, first_lsn, sizeof(hdr));
    w->st.segments = w->nsegs;
    w->st.bytes += sizeof(hdr);
    pthread_mutex_unlock(&w->mu);
    log_debug(MOD, "new segment %s", path);
    return r;
fail:
    /* It holds no record: it goes (best effort; recovery removes a last
     * segment without records anyway). */
    w->io->close(w->fd);
    w->fd = -1;
    if (unlink(path) == 0)
        datadir_sync(w->dir);
    return r;
}

/* Writes p[0..n) to the current segment and accounts for it. */
static int append_bytes(struct wal *w, const char *p, size_t n)
{
    int r;

    prealloc_to(w, w->cur_bytes + n);
    if ((r = write_all(w, p, n)) < 0)
        return r;
    w->cur_bytes += n;
    if (w->filled < w->cur_bytes)
        w->filled = w->cur_bytes;
    pthread_mutex_lock(&w->mu);
    w->segs[w->nsegs - 1].bytes += n;
    w->st.bytes += n;
    pthread_mutex_unlock(&w->mu);
    return 0;
}

/* Writes a batch of whole records, starting new segments at record
 * boundaries when the current one is full. */
static int write_batch(struct wal *w, const char *p, size_t n)
{
    size_t start = 0, off = 0;
    int r;

    while (off < n) {
        size_t rec = WAL_RECORD_HEADER_BYTES + util_get_le32(p + off + 4);
        uint64_t cur = w->cur_bytes + (off - start);
        if (cur + rec > w->cfg.segment_bytes && cur > WAL_SEGMENT_HEADER_BYTES) {
            if ((r = append_bytes(w, p + start, off - start)) < 0)
                return r;
            /* The old segment is complete: make it durable, then move on. */
            trim_segment(w);
            if ((r = sync_fd(w)) < 0)
                return r;
            w->io->close(w->fd);
            w->fd = -1;
            if ((r = start_segment(w, util_get_le64(p + off + 8))) < 0)
                return r;
            start = off;
        }
        off += rec;
    }
    return append_bytes(w, p + start, off - start);
}

/* Where a batch starts: the segment being written (by its first lsn: a
 * snapshot may remove older segments from the list meanwhile, so an index
 * would not stay true) and its size. */
struct batch_start {
    uint64_t first_lsn;
    uint64_t bytes;
};

static struct batch_start batch_start(struct wal *w)
{
    struct batch_start b = {0, w->cur_bytes};

    pthread_mutex_lock(&w->mu);
    if (w->nsegs > 0)
        b.first_lsn = w->segs[w->nsegs - 1].first_lsn;
    pthread_mutex_unlock(&w->mu);
    return b;
}

/* A batch failed: cuts the log back to where it started (see FAILURE at
 * the top). Returns 0 once that is durable, or a negative errno. Leaves no
 * segment open: the log takes no more writes. */
static int roll_back(struct wal *w, struct batch_start b)
{
    char path[4200];
    int r = 0, fd;
    bool removed = false;

    if (w->fd >= 0)
        w->io->close(w->fd);
    w->fd = -1;
    /* The segments the batch started are the newest ones. */
    pthread_mutex_lock(&w->mu);
    while (w->nsegs > 0 && w->segs[w->nsegs - 1].first_lsn > b.first_lsn) {
        const struct segment *sg = &w->segs[w->nsegs - 1];
        datadir_path(path, sizeof(path), w->dir, "wal-", sg->first_lsn, ".log");
        if (unlink(path) < 0 && errno != ENOENT) {
            r = -errno;
            break;
        }
        w->st.bytes -= sg->bytes;
        w->nsegs--;
        removed = true;
    }
    struct segment *cur = w->nsegs ? &w->segs[w->nsegs - 1] : NULL;
    if (cur && cur->first_lsn != b.first_lsn)
        cur = NULL; /* cannot be: a snapshot never removes it (its records are not durable) */
    uint64_t first = b.first_lsn;
    if (r == 0 && cur) {
        w->st.bytes -= cur->bytes - b.bytes;
        cur->bytes = b.bytes;
    }
    w->st.segments = w->nsegs;
    pthread_mutex_unlock(&w->mu);
    if (r < 0 || cur == NULL)
        return r < 0 ? r : -ENOENT;
    /* The removals are durable before the cut: a power cut in between
     * must not leave a cut segment followed by a removed one's name,
     * which a start would take for a gap. */
    if (removed && (r = datadir_sync(w->dir)) < 0)
        return r;
    datadir_path(path, sizeof(path), w->dir, "wal-", first, ".log");
    if ((fd = w->io->open(path, O_WRONLY | O_CLOEXEC, 0)) < 0)
        return -errno;
    if (w->io->ftruncate == NULL || w->io->ftruncate(fd, (off_t)b.bytes) < 0 ||
        w->io->fdatasync(fd) < 0)
        r = w->io->ftruncate == NULL ? -ENOTSUP : -errno;
    w->io->close(fd);
    w->cur_bytes = w->filled = b.bytes;
    return r;
}

/* A batch up to lsn last was written (r 0) or failed (mu held): the writer
 * thread's and write_inline's common end. rolled: the failed batch is
 * known to be off the disk. */
static void batch_done(struct wal *w, int r, uint64_t last, bool rolled)
{
    w->busy = false;
    w->st.batches++;
    if (r < 0) {
        w->error = r;
        w->rolled_back = rolled;
        atomic_store(&w->failed, r);
        log_error(MOD, "writing the log in %s failed: %s; no more writes will be acknowledged; "
                       "%s",
                  w->dir, strerror(-r),
                  rolled ? "the failed records were cut off the log, so the writes waiting "
                           "on them did not happen"
                         : "the failed records could not be cut off the log: whether the "
                           "writes waiting on them happened is known only once serve "
                           "restarts and reads it");
    } else {
        w->durable_lsn = last;
    }
}

/* A batch failed with r: cuts it back off the log. */
static bool fail_batch(struct wal *w, int r, struct batch_start b)
{
    int e = roll_back(w, b);

    if (e < 0)
        log_error(MOD, "cutting the failed records (%s) off the log in %s failed: %s", strerror(-r),
                  w->dir, strerror(-e));
    return e == 0;
}

static void *writer_main(void *arg)
{
    struct wal *w = arg;

    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (!w->stop && (w->pending.len == 0 || w->error))
            pthread_cond_wait(&w->cv, &w->mu);
        if (w->pending.len == 0 || w->error)
            break; /* stopping, nothing left (or nothing we may write) */
        if (w->cfg.fsync_mode == WAL_FSYNC_BATCH && !w->stop) {
            /* Let more records gather until the interval since the last
             * fsync has passed. */
            uint64_t due = w->last_sync_ns + (uint64_t)w->cfg.fsync_interval_ms * 1000000u;
            uint64_t now = util_mono_ns();
            if (now < due) {
                struct timespec ts;
                clock_gettime(CLOCK_MONOTONIC, &ts);
                uint64_t wait = due - now;
                ts.tv_sec += (time_t)(wait / 1000000000u);
                ts.tv_nsec += (long)(wait % 1000000000u);
                if (ts.tv_nsec >= 1000000000L) {
                    ts.tv_sec++;
                    ts.tv_nsec -= 1000000000L;
                }
                pthread_cond_timedwait(&w->cv, &w->mu, &ts);
                continue;
            }
        }
        struct buf tmp = w->pending;
        w->pending = w->writing;
        w->writing = tmp;
        w->pending.len = 0;
        uint64_t last = w->pending_last;
        w->busy = true;
        pthread_mutex_unlock(&w->mu);

        struct batch_start b = batch_start(w);
        bool rolled = false;
        /* Written after the last fdatasync returned: recovery tells the
         * last batch (which a power cut may leave with holes) by this. */
        wal_record_mark_batch(w->writing.data);
        int r = write_batch(w, w->writing.data, w->writing.len);
        if (r == 0 && w->cfg.fsync_mode != WAL_FSYNC_NONE)
            r = sync_fd(w);
        if (r < 0)
            rolled = fail_batch(w, r, b);
        /* A buffer a burst grew is freed once it carries a batch that
         * needs under a quarter of it: steady large batches keep theirs. */
        size_t used = w->writing.len;
        w->writing.len = 0;
        if (w->writing.cap > LIMIT_WAL_BUF_BYTES_KEEP && used < w->writing.cap / 4)
            buf_free(&w->writing);

        pthread_mutex_lock(&w->mu);
        batch_done(w, r, last, rolled);
        uv_async_send(&w->async);
        if (w->cfg.on_batch) {
            pthread_mutex_unlock(&w->mu);
            w->cfg.on_batch(w->cfg.on_batch_arg);
            pthread_mutex_lock(&w->mu);
        }
    }
    /* Clean stop: a final sync makes even --fsync none durable, and the
     * segment is trimmed to its records. */
    bool trim = w->filled > w->cur_bytes;
    if (!w->error && w->fd >= 0 && (trim || w->cfg.fsync_mode == WAL_FSYNC_NONE)) {
        if (trim)
            trim_segment(w);
        pthread_mutex_unlock(&w->mu);
        int r = sync_fd(w);
        pthread_mutex_lock(&w->mu);
        if (r < 0) {
            w->error = r;
            atomic_store(&w->failed, r);
        }
    }
    pthread_mutex_unlock(&w->mu);
    if (w->fd >= 0)
        w->io->close(w->fd);
    w->fd = -1;
    return NULL;
}

/* Runs the callbacks of every record now durable, or failed (loop thread). */
static void deliver(struct wal *w)
{
    uint64_t durable;
    int err;

    pthread_mutex_lock(&w->mu);
    durable = w->durable_lsn;
    err = w->error;
    pthread_mutex_unlock(&w->mu);
    /* Callbacks may append (waking a waiting client): pop one at a time. */
    while (w->wq_len > 0) {
        struct waiter *wt = &w->wq[w->wq_head];
        if (wt->lsn > durable && err == 0)
            break;
        struct waiter x = *wt;
        w->wq_head = (w->wq_head + 1) % w->wq_cap;
        w->wq_len--;
        x.cb(x.arg, x.lsn, x.lsn <= durable ? 0 : err);
    }
}

static void on_async(uv_async_t *h)
{
    deliver(h->data);
}

static int wq_push(struct wal *w, uint64_t lsn, wal_done_cb cb, void *arg)
{
    if (w->wq_len == w->wq_cap) {
        size_t ncap = w->wq_cap ? w->wq_cap * 2 : 64;
        struct waiter *p = malloc(ncap * sizeof(*p));
        if (p == NULL)
            return -ENOMEM;
        for (size_t i = 0; i < w->wq_len; i++)
            p[i] = w->wq[(w->wq_head + i) % w->wq_cap];
        free(w->wq);
        w->wq = p;
        w->wq_cap = ncap;
        w->wq_head = 0;
    }
    w->wq[(w->wq_head + w->wq_len) % w->wq_cap] = (struct waiter){lsn, cb, arg};
    w->wq_len++;
    return 0;
}

/*
 * --fsync none, with the writer idle and the batch fitting the current
 * segment: write it here and now, and run its callbacks. No fsync waits,
 * so a thread round trip would cost more than the write(2). Returns false
 * (nothing done) when the writer thread must take it.
 */
static bool write_inline(struct wal *w)
{
    uint64_t last, count;
    int r;

    if (w->cfg.fsync_mode != WAL_FSYNC_NONE)
        return false;
    pthread_mutex_lock(&w->mu);
    if (w->error || w->busy || w->stop || w->pending.len > 0 || w->fd < 0 ||
        w->cur_bytes + w->staged.len > w->cfg.segment_bytes) {
        pthread_mutex_unlock(&w->mu);
        return false;
    }
    w->busy = true; /* the thread leaves the file alone meanwhile */
    pthread_mutex_unlock(&w->mu);

    /* Callbacks append: the batch moves out of staged first. */
    struct buf tmp = w->inline_buf;
    w->inline_buf = w->staged;
    w->staged = tmp;
    w->staged.len = 0;
    last = w->staged_last;
    count = w->staged_count;
    w->staged_count = 0;
    struct batch_start b = batch_start(w);
    bool rolled = false;
    wal_record_mark_batch(w->inline_buf.data);
    r = append_bytes(w, w->inline_buf.data, w->inline_buf.len);
    if (r < 0)
        rolled = fail_batch(w, r, b);
    w->inline_buf.len = 0;

    pthread_mutex_lock(&w->mu);
    w->st.records += count;
    batch_done(w, r, last, rolled);
    pthread_mutex_unlock(&w->mu);
    deliver(w);
    return true;
}

/*
 * Hands the records appended since the last call to the writer thread: one
 * lock and at most one wake-up per loop turn, however many records the turn
 * appended (group commit starts here).
 */
static void hand_over(struct wal *w)
{
    int r = 0;

    if (w->staged.len == 0 || write_inline(w))
        return;
    pthread_mutex_lock(&w->mu);
    if (w->error == 0 && (r = buf_append(&w->pending, w->staged.data, w->staged.len)) < 0) {
        /* Their callbacks are queued: fail the log rather than lose them. */
        w->error = r;
        atomic_store(&w->failed, r);
    }
    if (r == 0) {
        w->pending_last = w->staged_last;
        w->st.records += w->staged_count;
    }
    bool failed = w->error != 0;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    if (w->staged.cap > LIMIT_WAL_BUF_BYTES_KEEP && w->staged.len < w->staged.cap / 4)
        buf_free(&w->staged); /* as the writer does with its buffer */
    w->staged.len = 0;
    w->staged_count = 0;
    if (failed)
        deliver(w); /* the writer will not write them: fail their callbacks now */
}

static void on_prepare(uv_prepare_t *h)
{
    struct wal *w = h->data;

    hand_over(w);
    /* The callbacks of an inline write may have appended: have the loop come
     * back for those records rather than sleep on them. */
    if (w->staged.len > 0)
        uv_async_send(&w->async);
}

void wal_hand_over(struct wal *w)
{
    hand_over(w);
}

void wal_deliver(struct wal *w)
{
    deliver(w);
}

static void free_wal(uv_handle_t *h);

int wal_open(struct wal **out, uv_loop_t *loop, const struct wal_config *cfg, uint64_t next_lsn)
{
    struct wal *w = calloc(1, sizeof(*w));
    struct datadir_file *files = NULL;
    long n;
    int r;

    if (w == NULL)
        return -ENOMEM;
    w->loop = loop;
    w->cfg = *cfg;
    w->io = cfg->io ? cfg->io : &wal_io_posix;
    w->dir = strdup(cfg->dir);
    w->fd = -1;
    w->next_lsn = next_lsn;
    w->durable_lsn = next_lsn - 1;
    w->last_sync_ns = util_mono_ns();
    pthread_mutex_init(&w->mu, NULL);
    /* The batch-mode wait is timed by the monotonic clock: a wall clock
     * stepped back would hold every acknowledgement by the size of the
     * step (found with the chaos clock shim). */
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (w->dir == NULL) {
        r = -ENOMEM;
        goto fail;
    }
    /* Segments recovery has already read stay until a snapshot covers them. */
    n = datadir_list(w->dir, "wal-", ".log", &files);
    if (n < 0) {
        r = (int)n;
        goto fail;
    }
    for (long i = 0; i < n; i++) {
        char path[4200];
        struct stat sb;
        snprintf(path, sizeof(path), "%s/%s", w->dir, files[i].name);
        r = stat(path, &sb) < 0 ? -errno : seg_push(w, files[i].seq, (uint64_t)sb.st_size);
        if (r < 0) {
            free(files);
            goto fail;
        }
        w->st.bytes += (uint64_t)sb.st_size;
    }
    free(files);
    if ((r = start_segment(w, next_lsn)) < 0)
        goto fail;
    if ((r = uv_async_init(loop, &w->async, on_async)) < 0)
        goto fail;
    w->async.data = w;
    w->open_handles = 1;
    uv_prepare_init(loop, &w->prep);
    w->prep.data = w;
    w->open_handles++;
    uv_prepare_start(&w->prep, on_prepare);
    uv_unref((uv_handle_t *)&w->prep); /* it alone does not keep the loop running */
    if ((r = pthread_create(&w->thread, NULL, writer_main, w)) != 0) {
        w->io->close(w->fd);
        /* Freed by the close callbacks once the loop runs. */
        uv_close((uv_handle_t *)&w->async, free_wal);
        uv_close((uv_handle_t *)&w->prep, free_wal);
        return -r;
    }
    w->thread_started = true;
    *out = w;
    return 0;
fail:
    if (w->fd >= 0)
        w->io->close(w->fd);
    free(w->segs);
    free(w->dir);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w);
    return r;
}

int64_t wal_append(struct wal *w, uint8_t type, const void *payload, size_t n, wal_done_cb cb,
                   void *arg)
{
    uint64_t lsn;
    int r = atomic_load(&w->failed);

    if (r)
        return r;
    if ((r = buf_reserve(&w->staged, WAL_RECORD_HEADER_BYTES + n)) < 0)
        return r;
    if ((r = wq_push(w, w->next_lsn, cb, arg)) < 0)
        return r; /* nothing staged: the caller learns now */
    lsn = w->next_lsn++;
    w->staged.len += wal_record_encode(w->staged.data + w->staged.len, type, lsn, payload, n);
    w->staged_last = lsn;
    w->staged_count++;
    return (int64_t)lsn;
}

bool wal_rolled_back(const struct wal *w)
{
    struct wal *m = (struct wal *)w;
    bool rolled;

    pthread_mutex_lock(&m->mu);
    rolled = m->error != 0 && m->rolled_back;
    pthread_mutex_unlock(&m->mu);
    return rolled;
}

int wal_error(const struct wal *w)
{
    return atomic_load(&((struct wal *)w)->failed);
}

void wal_get_stats(struct wal *w, struct wal_stats *st)
{
    pthread_mutex_lock(&w->mu);
    *st = w->st;
    st->records += w->staged_count;
    st->durable_lsn = w->durable_lsn;
    st->error = w->error;
    pthread_mutex_unlock(&w->mu);
    st->next_lsn = w->next_lsn;
}

int wal_remove_covered(struct wal *w, uint64_t upto)
{
    char path[4200];
    int removed = 0, r = 0;

    pthread_mutex_lock(&w->mu);
    /* Segment i is covered when the next one starts at or before upto + 1. */
    size_t k = 0;
    while (k + 1 < w->nsegs && w->segs[k + 1].first_lsn <= upto + 1)
        k++;
    for (size_t i = 0; i < k; i++) {
        datadir_path(path, sizeof(path), w->dir, "wal-", w->segs[i].first_lsn, ".log");
        if (unlink(path) < 0 && errno != ENOENT) {
            r = -errno;
            k = i;
            break;
        }
        w->st.bytes -= w->segs[i].bytes;
        removed++;
    }
    memmove(w->segs, w->segs + k, (w->nsegs - k) * sizeof(*w->segs));
    w->nsegs -= k;
    w->st.segments = w->nsegs;
    pthread_mutex_unlock(&w->mu);
    if (removed)
        datadir_sync(w->dir);
    return r < 0 ? r : removed;
}

static void free_wal(uv_handle_t *h)
{
    struct wal *w = h->data;

    if (--w->open_handles > 0)
        return;
    buf_free(&w->staged);
    buf_free(&w->inline_buf);
    buf_free(&w->pending);
    buf_free(&w->writing);
    free(w->wq);
    free(w->segs);
    free(w->dir);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w);
}

int wal_close(struct wal *w)
{
    int err;

    hand_over(w);
    pthread_mutex_lock(&w->mu);
    w->stop = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    if (w->thread_started)
        pthread_join(w->thread, NULL);
    /* Whatever the thread wrote is durable now, or failed: tell the waiters. */
    pthread_mutex_lock(&w->mu);
    if (w->durable_lsn < w->next_lsn - 1 && w->error == 0)
        w->error = -ESHUTDOWN;
    err = w->error;
    pthread_mutex_unlock(&w->mu);
    deliver(w);
    uv_close((uv_handle_t *)&w->async, free_wal);
    uv_close((uv_handle_t *)&w->prep, free_wal);
    return err;
}
