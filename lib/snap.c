/*
 * snap.c - snapshot files.
 *
 * A snapshot is snap-<lsn>.snap in the data directory (lsn as 16 hex
 * digits): the store as it was once every log record up to lsn had been
 * applied. It is written as snap-<lsn>.tmp, fsynced, renamed, and the
 * directory fsynced; a file under the final name is therefore complete, and
 * any damage found when reading it is corruption, not a crash.
 *
 * HEADER (little-endian, 48 bytes):
 *    0  8  magic "TPCKVSNP"
 *    8  4  format version (1)
 *   12  4  header size (48)
 *   16  8  lsn
 *   24  8  next cas unique
 *   32  8  pending delayed flush_all time (unix ms, 0 = none)
 *   40  4  reserved, 0
 *   44  4  CRC32C of bytes 0..43
 *
 * BODY: WAL-framed records (wal.c): one SNAP_ITEM per item, whose payload
 * is one PUT op; then, for a replica in a cluster, the two-phase commit
 * state open at the snapshot (a PREPARE record per prepared, undecided
 * transaction, a COMMIT record per commit it coordinated and not every
 * participant has acknowledged; payloads as in the log), so the log before
 * the snapshot can go; then one SNAP_END whose payload is the record count
 * (u64) and 8 reserved bytes. The lsn fields number the records 1, 2, 3...
 * The file ends there. Reading checks every CRC, the numbering, the count and
 * that nothing follows the trailer.
 */
#include "snap.h"

#include "buf.h"
#include "crc32c.h"
#include "datadir.h"
#include "store.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define WRITE_BUF_BYTES (1u << 20)

static const char snap_magic[8] = {'T', 'P', 'C', 'K', 'V', 'S', 'N', 'P'};

struct snap_writer {
    char *dir;
    char tmp[4200];
    char final[4200];
    int fd;
    uint64_t count;
    struct buf out;
};

static int flush_out(struct snap_writer *sw)
{
    int r = util_write_all(sw->fd, sw->out.data, sw->out.len);

    sw->out.len = 0;
    return r;
}

/* Encodes a record into the buffer, writing the buffer out when full. */
static int put_record(struct snap_writer *sw, uint8_t type, uint64_t seq, const char *payload,
                      size_t n)
{
    int r;

    if (sw->out.len + WAL_RECORD_HEADER_BYTES + n > WRITE_BUF_BYTES && sw->out.len &&
        (r = flush_out(sw)) < 0)
        return r;
    if ((r = buf_reserve(&sw->out, WAL_RECORD_HEADER_BYTES + n)) < 0)
        return r;
    sw->out.len += wal_record_encode(sw->out.data + sw->out.len, type, seq, payload, n);
    return 0;
}

int snap_write_begin(struct snap_writer **out, const char *dir, const struct snap_header *h)
{
    struct snap_writer *sw = calloc(1, sizeof(*sw));
    char hdr[SNAP_HEADER_BYTES];
    int r;

    if (sw == NULL)
        return -ENOMEM;
    datadir_path(sw->tmp, sizeof(sw->tmp), dir, "snap-", h->lsn, ".tmp");
    datadir_path(sw->final, sizeof(sw->final), dir, "snap-", h->lsn, ".snap");
    sw->dir = strdup(dir);
    sw->fd = open(sw->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (sw->dir == NULL || sw->fd < 0) {
        r = sw->dir == NULL ? -ENOMEM : -errno;
        free(sw->dir);
        free(sw);
        return r;
    }
    memcpy(hdr, snap_magic, 8);
    util_put_le32(hdr + 8, SNAP_FORMAT_VERSION);
    util_put_le32(hdr + 12, SNAP_HEADER_BYTES);
    util_put_le64(hdr + 16, h->lsn);
    util_put_le64(hdr + 24, h->next_cas);
    util_put_le64(hdr + 32, (uint64_t)h->flush_at_ms);
    util_put_le32(hdr + 40, 0);
    util_put_le32(hdr + 44, crc32c(0, hdr, 44));
    if ((r = buf_append(&sw->out, hdr, sizeof(hdr))) < 0) {
        snap_write_abort(sw);
        return r;
    }
    *out = sw;
    return 0;
}

int snap_write_item(struct snap_writer *sw, const struct wal_op *op)
{
    char small[512];
    size_t n = wal_op_size(op);
    char *p = n <= sizeof(small) ? small : malloc(n);
    int r;

    if (op->kind != WAL_OP_PUT)
        return -EINVAL;
    if (p == NULL)
        return -ENOMEM;
    wal_op_encode(p, op);
    r = put_record(sw, WAL_REC_SNAP_ITEM, ++sw->count, p, n);
    if (p != small)
        free(p);
    return r;
}

int snap_write_record(struct snap_writer *sw, uint8_t type, const void *payload, size_t n)
{
    if (type != WAL_REC_PREPARE && type != WAL_REC_COMMIT)
        return -EINVAL;
    return put_record(sw, type, ++sw->count, payload, n);
}

int snap_write_end(struct snap_writer *sw)
{
    char end[16];
    int r;

    util_put_le64(end, sw->count);
    util_put_le64(end + 8, 0);
    if ((r = put_record(sw, WAL_REC_SNAP_END, sw->count + 1, end, sizeof(end))) < 0 ||
        (r = flush_out(sw)) < 0)
        goto fail;
    if (fsync(sw->fd) < 0 || close(sw->fd) < 0) {
        r = -errno;
        sw->fd = -1;
        goto fail;
    }
    sw->fd = -1;
    if (rename(sw->tmp, sw->final) < 0) {
        r = -errno;
        goto fail;
    }
    r = datadir_sync(sw->dir);
    buf_free(&sw->out);
    free(sw->dir);
    free(sw);
    return r;
fail:
    snap_write_abort(sw);
    return r;
}

void snap_write_abort(struct snap_writer *sw)
{
    if (sw->fd >= 0)
        close(sw->fd);
    unlink(sw->tmp);
    buf_free(&sw->out);
    free(sw->dir);
    free(sw);
}

static int put_item(void *arg, const struct item *it)
{
    struct wal_op op = {
        .kind = WAL_OP_PUT,
        .key = item_key(it),
        .nkey = it->nkey,
        .value = item_value(it),
        .nvalue = it->nval,
        .flags = it->flags,
        .exptime_ms = it->exptime_ms,
        .mtime_ms = it->mtime_ms,
        .cas = it->cas,
    };
    return snap_write_item(arg, &op);
}

int snap_write_store(const char *dir, struct store *s, const struct snap_header *h,
                     uint64_t *items,
                     int (*extra)(void *arg, struct snap_writer *sw), void *extra_arg)
{
    struct snap_writer *sw;
    int r = snap_write_begin(&sw, dir, h);

    if (r < 0)
        return r;
    if ((r = store_for_each_stored(s, put_item, sw)) < 0) {
        snap_write_abort(sw);
        return r;
    }
    *items = sw->count;
    if (extra && (r = extra(extra_arg, sw)) < 0) {
        snap_write_abort(sw);
        return r;
    }
    return snap_write_end(sw);
}

static int check(const char *path, const char *data, size_t len, struct snap_header *h,
                 int (*cb)(void *arg, const struct wal_op *op),
                 int (*txn_cb)(void *arg, const struct wal_record *rec), void *arg, char *err,
                 size_t cap)
{
    size_t off = SNAP_HEADER_BYTES;
    uint64_t seq = 0;

    if (len < SNAP_HEADER_BYTES)
        return util_errf(err, cap, -EBADMSG, "%s: %zu bytes, shorter than a snapshot header", path,
                    len);
    if (memcmp(data, snap_magic, 8) != 0 || util_get_le32(data + 44) != crc32c(0, data, 44))
        return util_errf(err, cap, -EBADMSG, "%s: not a tpckv snapshot, or its header is damaged",
                    path);
    if (util_get_le32(data + 8) > SNAP_FORMAT_VERSION)
        return util_errf(err, cap, -EPROTONOSUPPORT,
                    "%s: snapshot format version %" PRIu32 " is newer than this serve "
                    "reads (%d); run a newer serve",
                    path, util_get_le32(data + 8), SNAP_FORMAT_VERSION);
    if (util_get_le32(data + 12) != SNAP_HEADER_BYTES || util_get_le32(data + 40) != 0)
        return util_errf(err, cap, -EBADMSG, "%s: unexpected header fields", path);
    h->lsn = util_get_le64(data + 16);
    h->next_cas = util_get_le64(data + 24);
    h->flush_at_ms = (int64_t)util_get_le64(data + 32);

    for (;;) {
        struct wal_record rec;
        long n = wal_record_decode(data + off, len - off, &rec);
        if (n < 0)
            return util_errf(err, cap, -EBADMSG,
                        "%s: %s record at offset %zu (after %" PRIu64 " items)", path,
                        n == -EAGAIN ? "truncated" : "damaged", off, seq);
        if (rec.lsn != seq + 1)
            return util_errf(err, cap, -EBADMSG, "%s: record %" PRIu64 " out of order at offset %zu",
                        path, rec.lsn, off);
        if (rec.type == WAL_REC_SNAP_END) {
            if (rec.len != 16 || util_get_le64(rec.payload) != seq)
                return util_errf(err, cap, -EBADMSG, "%s: trailer at offset %zu does not match "
                            "the %" PRIu64 " items read", path, off, seq);
            if (off + (size_t)n != len)
                return util_errf(err, cap, -EBADMSG, "%s: %zu unexpected bytes after the trailer",
                            path, len - off - (size_t)n);
            return 0;
        }
        if (rec.type == WAL_REC_PREPARE || rec.type == WAL_REC_COMMIT) {
            int r = txn_cb ? txn_cb(arg, &rec) : -ENOTSUP;
            if (r < 0)
                return util_errf(err, cap, r == -ENOMEM ? r : -EBADMSG,
                                 "%s: two-phase commit record at offset %zu: %s", path, off,
                                 r == -ENOTSUP ? "not expected here (a replica's snapshot "
                                                 "used without --replicas?)"
                                               : strerror(-r));
            seq++;
            off += (size_t)n;
            continue;
        }
        struct wal_op op;
        size_t pos = 0;
        if (rec.type != WAL_REC_SNAP_ITEM || wal_op_next(rec.payload, rec.len, &pos, &op) != 1 ||
            op.kind != WAL_OP_PUT || pos != rec.len || op.nkey == 0)
            return util_errf(err, cap, -EBADMSG, "%s: malformed item at offset %zu", path, off);
        if (cb) {
            int r = cb(arg, &op);
            if (r < 0)
                return util_errf(err, cap, r, "%s: loading item at offset %zu: %s", path, off,
                            strerror(-r));
        }
        seq++;
        off += (size_t)n;
    }
}

int snap_read(const char *path, struct snap_header *h,
              int (*cb)(void *arg, const struct wal_op *op),
              int (*txn_cb)(void *arg, const struct wal_record *rec), void *arg, char *err,
              size_t errcap)
{
    struct stat sb;
    void *map;
    int fd, r;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return util_errf(err, errcap, -errno, "%s: %s", path, strerror(errno));
    if (fstat(fd, &sb) < 0) {
        r = -errno;
        close(fd);
        return util_errf(err, errcap, r, "%s: %s", path, strerror(-r));
    }
    if (sb.st_size == 0) {
        close(fd);
        return util_errf(err, errcap, -EBADMSG, "%s: empty file", path);
    }
    map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED)
        return util_errf(err, errcap, -errno, "%s: mmap: %s", path, strerror(errno));
    r = check(path, map, (size_t)sb.st_size, h, cb, txn_cb, arg, err, errcap);
    munmap(map, (size_t)sb.st_size);
    return r;
}
