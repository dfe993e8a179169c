/*
 * recover.c - start-up recovery (see recover.h, and wal.c and snap.c for
 * the file formats).
 *
 * Order:
 *   1. remove snap-*.tmp (a snapshot that never finished: never used);
 *   2. load the newest snapshot that reads back whole (an older one is used
 *      only if the newest is damaged; the log must still reach back to it);
 *   3. replay every log record after the snapshot's lsn, in lsn order, across
 *      segments; their sequence numbers must follow on without a gap;
 *   4. at the end of the last segment only, a bad or incomplete record with
 *      nothing valid after it is a write cut short by a crash, and a hole
 *      with only records of the same write batch after it is a power cut
 *      in the middle of that batch's fdatasync (wal.c, RECOVERY): neither
 *      was acknowledged, so it is cut off (ftruncate + fsync) with a
 *      warning; after a power cut under --fsync none (recover_opts) any
 *      damage at the end of the last segment is, and is cut with an error
 *      (those records had been reported durable); zeros after the last
 *      record are the writer's preallocation, trimmed without a warning;
 *   5. every segment is fsync()ed and its cached pages dropped before it is
 *      read: a run under --fsync none that was killed left records in the
 *      page cache only, and after an I/O error the cache may hold pages the
 *      disk never got; what replay reads, and serves, is what the disk
 *      holds. The directory is fsync()ed at the end;
 *   6. a segment whose header is zeros is the leftover of a crash right
 *      after its creation only when nothing valid follows the header.
 * Anything else that does not read back is corruption: recovery stops and
 * says which file, which offset, and what the operator can do (restore, or
 * the exact cut and the records it gives up). It never skips a record and
 * never invents one.
 */
#include "recover.h"

#include "datadir.h"
#include "log.h"
#include "snap.h"
#include "store.h"
#include "util.h"
#include "wal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MOD "recover"

/* Replay reproduces the stored state, dead items included (a later TOUCH
 * may refer to one touched while it was alive); it reads no clock. */
static int load_item(void *arg, const struct wal_op *op)
{
    struct recover_replay *rp = arg;

    return store_load_put(rp->s, op->key, op->nkey, op->value, op->nvalue, op->flags,
                          op->exptime_ms, op->mtime_ms, op->cas);
}

static int apply_op(struct recover_replay *rp, const struct wal_op *op)
{
    switch (op->kind) {
    case WAL_OP_PUT:
        return load_item(rp, op);
    case WAL_OP_DEL:
        store_load_del(rp->s, op->key, op->nkey);
        return 0;
    case WAL_OP_TOUCH:
        store_load_touch(rp->s, op->key, op->nkey, op->exptime_ms);
        return 0;
    case WAL_OP_FLUSH:
        store_load_flush(rp->s, op->flush_at_ms, op->mtime_ms);
        return 0;
    case WAL_OP_CHECK:
        return 0; /* a condition, met when the write was prepared */
    }
    return -EBADMSG;
}

/* ---- 2PC ledger ------------------------------------------------------------- */

void recover_ledger_free(struct recover_ledger *l)
{
    for (size_t i = 0; i < l->nprepared; i++)
        free(l->prepared[i].ops);
    free(l->prepared);
    free(l->committed);
    free(l->decided);
    l->prepared = l->committed = NULL;
    l->decided = NULL;
    l->nprepared = l->ncommitted = l->cap_prepared = l->cap_committed = 0;
    l->ndecided = l->decided_head = 0;
}

/* Keeps the newest decided_max decisions (a ring). */
static int note_decided(struct recover_ledger *l, const struct wal_txn *txn,
                        bool committed)
{
    struct recover_decided d = {txn->txid, txn->epoch, txn->coordinator, committed};

    if (l->decided_max == 0)
        return 0;
    if (l->decided == NULL &&
        (l->decided = malloc(l->decided_max * sizeof(*l->decided))) == NULL)
        return -ENOMEM;
    if (l->ndecided < l->decided_max) {
        l->decided[(l->decided_head + l->ndecided++) % l->decided_max] = d;
    } else {
        l->decided[l->decided_head] = d;
        l->decided_head = (l->decided_head + 1) % l->decided_max;
    }
    return 0;
}

/* Index of txid in a[0..n), searching from the newest, or -1. */
static long find_txn(const struct recover_txn *a, size_t n, uint64_t txid)
{
    for (size_t i = n; i-- > 0;)
        if (a[i].txid == txid)
            return (long)i;
    return -1;
}

static int push_txn(struct recover_txn **a, size_t *n, size_t *cap,
                    const struct recover_txn *t)
{
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 16;
        struct recover_txn *p = realloc(*a, c * sizeof(*p));
        if (p == NULL)
            return -ENOMEM;
        *a = p;
        *cap = c;
    }
    (*a)[(*n)++] = *t;
    return 0;
}

static void drop_txn(struct recover_txn *a, size_t *n, long i)
{
    free(a[i].ops);
    a[i] = a[--*n];
}

/* Applies the effects of ops[0..n) (CHECKs are conditions, already met). */
static int apply_ops(struct recover_replay *rp, uint32_t nops, const char *p, size_t n,
                     size_t pos)
{
    struct wal_op op;
    int r;

    for (uint32_t i = 0; i < nops; i++) {
        if (wal_op_next(p, n, &pos, &op) != 1)
            return -EBADMSG;
        if (op.kind != WAL_OP_CHECK && (r = apply_op(rp, &op)) < 0)
            return r;
    }
    return pos == n ? 0 : -EBADMSG;
}

int recover_replay_payload(struct recover_replay *rp, uint8_t type, const char *payload,
                           size_t len)
{
    struct recover_ledger *l = rp->ledger;
    struct wal_txn txn;
    size_t pos;
    long i;
    int r;

    if (type != WAL_REC_WRITE && l == NULL)
        return -ENOTSUP; /* a replica's log, opened without --replicas */
    if (wal_txn_decode(payload, len, &txn, &pos) < 0)
        return -EBADMSG;
    if (txn.txid > rp->max_txid)
        rp->max_txid = txn.txid;
    rp->records++;
    switch (type) {
    case WAL_REC_WRITE:
        return apply_ops(rp, txn.nops, payload, len, pos);
    case WAL_REC_PREPARE: {
        struct recover_txn t = {.txid = txn.txid,
                                .epoch = txn.epoch,
                                .coord = txn.coordinator,
                                .nops = txn.nops,
                                .nbytes = (uint32_t)(len - pos)};
        struct wal_op op;
        size_t p = pos;
        for (uint32_t k = 0; k < txn.nops; k++)
            if (wal_op_next(payload, len, &p, &op) != 1)
                return -EBADMSG;
        if (p != len || txn.nops == 0)
            return -EBADMSG;
        if (find_txn(l->prepared, l->nprepared, txn.txid) >= 0)
            return 0; /* in the snapshot and in the log after it */
        if ((t.ops = malloc(t.nbytes ? t.nbytes : 1)) == NULL)
            return -ENOMEM;
        memcpy(t.ops, payload + pos, t.nbytes);
        if ((r = push_txn(&l->prepared, &l->nprepared, &l->cap_prepared, &t)) < 0)
            free(t.ops);
        return r;
    }
    case WAL_REC_COMMIT:
        if ((r = note_decided(l, &txn, true)) < 0)
            return r;
        if ((i = find_txn(l->prepared, l->nprepared, txn.txid)) >= 0) {
            struct recover_txn *t = &l->prepared[i];
            if ((r = apply_ops(rp, t->nops, t->ops, t->nbytes, 0)) < 0)
                return r;
            drop_txn(l->prepared, &l->nprepared, i);
        }
        /* A commit we coordinated is resent until an END says every
         * participant has it. */
        if ((txn.txid & 0xff) == l->self &&
            find_txn(l->committed, l->ncommitted, txn.txid) < 0) {
            struct recover_txn t = {
                .txid = txn.txid, .epoch = txn.epoch, .coord = l->self};
            return push_txn(&l->committed, &l->ncommitted, &l->cap_committed, &t);
        }
        return 0;
    case WAL_REC_ABORT:
        if ((r = note_decided(l, &txn, false)) < 0)
            return r;
        if ((i = find_txn(l->prepared, l->nprepared, txn.txid)) >= 0)
            drop_txn(l->prepared, &l->nprepared, i);
        return 0;
    case WAL_REC_END:
        if ((i = find_txn(l->committed, l->ncommitted, txn.txid)) >= 0)
            drop_txn(l->committed, &l->ncommitted, i);
        return 0;
    }
    return -EBADMSG;
}

static int replay_record(void *arg, const struct wal_record *rec)
{
    struct recover_replay *rp = arg;

    if (rec->lsn <= rp->after_lsn)
        return 0;
    return recover_replay_payload(rp, rec->type, rec->payload, rec->len);
}

/* A 2PC record in a snapshot: a transaction open when it was taken. */
static int snap_txn(void *arg, const struct wal_record *rec)
{
    struct recover_replay *rp = arg;

    int r;

    if (rp->ledger == NULL)
        return -ENOTSUP;
    r = recover_replay_payload(rp, rec->type, rec->payload, rec->len);
    rp->records--; /* counts log records only */
    return r;
}

static void remove_tmp_snapshots(const char *dir)
{
    struct datadir_file *f;
    long n = datadir_list(dir, "snap-", ".tmp", &f);
    char path[4200];

    for (long i = 0; i < n; i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, f[i].name);
        log_warn(MOD, "removing %s: a snapshot that never finished", path);
        unlink(path);
    }
    if (n > 0)
        free(f);
}

/* Maps a file read-only; *len 0 and NULL for an empty file. */
static int map_file(const char *path, char **data, size_t *len)
{
    struct stat sb;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    *data = NULL;
    *len = 0;
    if (fd < 0)
        return -errno;
    if (fstat(fd, &sb) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    if (sb.st_size > 0) {
        void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            int e = errno;
            close(fd);
            return -e;
        }
        *data = m;
        *len = (size_t)sb.st_size;
    }
    close(fd);
    return 0;
}

static bool all_zero(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return false;
    return true;
}

/* Cuts path to len bytes, durably. */
static int truncate_durably(const char *path, size_t len)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    int r = 0;

    if (fd < 0)
        return -errno;
    if (ftruncate(fd, (off_t)len) < 0 || fsync(fd) < 0)
        r = -errno;
    close(fd);
    return r;
}

/* What an operator can do about damage at offset off of segs[i] (whose
 * first lost record would be lsn): into buf. Restoring comes first; the
 * cut is spelled out with the records it gives up, which were
 * acknowledged. */
static const char *damage_hint(char *buf, size_t cap, const char *dir,
                               const struct datadir_file *segs, long n, long i,
                               size_t off, uint64_t lsn)
{
    int k = snprintf(
        buf, cap,
        "Keep a copy of the data directory as it is. Restore it from a backup if "
        "you have one (a replica of a cluster: from a healthy replica's, both "
        "stopped). To start instead with every record before the damage, giving "
        "up records from %" PRIu64 " on (acknowledged writes among them): "
        "truncate -s %zu %s/%s",
        lsn, off, dir, segs[i].name);
    if (i + 1 < n && k > 0 && (size_t)k < cap)
        snprintf(buf + k, cap - (size_t)k, ", and move %s%s out of the directory",
                 segs[i + 1].name, i + 2 < n ? " and every later wal-*.log" : "");
    return buf;
}

/* Before a segment is read: make durable what the page cache holds of it
 * (a killed --fsync none run left its records there), then drop the cached
 * pages, so what replay reads is what the disk holds - after an I/O error
 * the cache can hold pages the disk never got, marked clean. */
static int settle_file(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC), r = 0;

    if (fd < 0)
        return -errno;
    if (fsync(fd) < 0)
        r = -errno;
    else
        (void)posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
    return r;
}

/* Cuts the last segment (len bytes) at sc's last valid record, durably,
 * and counts it: a torn record, or a hole (anything with records after). */
static int cut_tail(const char *path, size_t len, const struct wal_scan *sc,
                    struct recover_result *res, char *err, size_t cap)
{
    int r = truncate_durably(path, sc->valid_bytes);

    if (r < 0)
        return util_errf(err, cap, r, "cannot truncate %s: %s", path, strerror(-r));
    res->truncated_bytes += len - sc->valid_bytes;
    if (sc->status != WAL_SCAN_TORN)
        res->holes_cut++;
    return 0;
}

/* One log segment as replay_segments scanned it. */
struct seg {
    const char *dir;
    struct datadir_file *segs;
    long n, i; /* segs[i] of n */
    bool last;
    const char *path;
    size_t len;
    uint64_t scan_ms;
};

/* What a segment's scan means: a clean end, a tail to cut (a crash or, with
 * opts->unsynced_tail, a power cut under --fsync none), or damage recovery
 * must not guess past (an error naming what to do). Returns 0 or -errno. */
static int judge_scan(const struct seg *g, const struct wal_scan *sc,
                      const struct recover_opts *opts, struct recover_result *res,
                      char *err, size_t cap)
{
    char hint[1200];
    int r;

    switch (sc->status) {
    case WAL_SCAN_CLEAN:
        break;
    case WAL_SCAN_TORN:
    case WAL_SCAN_HOLE:
        if (!g->last)
            return util_errf(
                err, cap, -EBADMSG,
                "%s is damaged at offset %zu and later segments exist, so this "
                "is not an interrupted write. %s",
                g->path, sc->bad_offset,
                damage_hint(hint, sizeof(hint), g->dir, g->segs, g->n, g->i,
                            sc->bad_offset, sc->last_lsn + 1));
        if (sc->status == WAL_SCAN_TORN)
            log_warn(MOD,
                     "%s: cutting off %zu bytes at offset %zu: a record cut short by "
                     "a crash (never acknowledged)",
                     g->path, g->len - sc->valid_bytes, sc->valid_bytes);
        else
            log_warn(
                MOD,
                "%s: cutting off %zu bytes at offset %zu: a hole there, and the %" PRIu64
                " valid records after it all belong to the last write "
                "batch, which a power cut left partly written (never "
                "acknowledged)",
                g->path, g->len - sc->valid_bytes, sc->valid_bytes, sc->records_after);
        if ((r = cut_tail(g->path, g->len, sc, res, err, cap)) < 0)
            return r;
        break;
    case WAL_SCAN_ZERO_TAIL:
        /* The writer's preallocated zeros after the last record: a crash
         * (or a failed trim) left them. Nothing was lost; cut them so the
         * segment ends at its records like any closed one. */
        log_debug(MOD, "%s: trimming %zu preallocated bytes after its last record",
                  g->path, g->len - sc->valid_bytes);
        if ((r = truncate_durably(g->path, sc->valid_bytes)) < 0)
            return util_errf(err, cap, r, "cannot truncate %s: %s", g->path,
                             strerror(-r));
        break;
    case WAL_SCAN_CORRUPT:
        if (g->last && opts && opts->unsynced_tail) {
            /* The last run wrote without fsync and lost power: anything
             * after its last segment switch may be missing, holes
             * included. Those records were reported durable. */
            log_error(MOD,
                      "%s: cutting off %zu bytes at offset %zu: a hole left by the "
                      "power cut under --fsync none; the %s%" PRIu64 " valid records "
                      "after it were acknowledged and are lost",
                      g->path, g->len - sc->valid_bytes, sc->valid_bytes,
                      sc->search_gave_up ? "at least " : "", sc->records_after);
            if ((r = cut_tail(g->path, g->len, sc, res, err, cap)) < 0)
                return r;
            break;
        }
        return util_errf(
            err, cap, -EBADMSG,
            "%s is damaged at offset %zu: a record there fails its checksum and "
            "%s follow it%s (%" PRIu64 " ms to look). %s",
            g->path, sc->bad_offset,
            sc->search_gave_up ? "what may be valid records" : "valid records",
            sc->search_gave_up ? " (the search stopped at its bound)"
            : sc->records_after && sc->version >= 2
                ? ", one written by a later batch: data an fsync had covered is "
                  "damaged (or the last record's value holds bytes shaped like "
                  "records)"
                : "",
            g->scan_ms,
            damage_hint(hint, sizeof(hint), g->dir, g->segs, g->n, g->i, sc->bad_offset,
                        sc->last_lsn + 1));
    case WAL_SCAN_BAD_HEADER:
        return util_errf(err, cap, -EBADMSG,
                         "%s does not start with a valid segment header. %s", g->path,
                         damage_hint(hint, sizeof(hint), g->dir, g->segs, g->n, g->i, 0,
                                     g->segs[g->i].seq));
    case WAL_SCAN_NEWER_FORMAT:
        return util_errf(
            err, cap, -EPROTONOSUPPORT,
            "%s was written by a newer serve (log format above %d); run that "
            "version",
            g->path, WAL_FORMAT_VERSION);
    case WAL_SCAN_LSN_GAP:
        return util_errf(err, cap, -EBADMSG,
                         "%s: the record at offset %zu is out of sequence (after %" PRIu64
                         "). %s",
                         g->path, sc->bad_offset, sc->last_lsn,
                         damage_hint(hint, sizeof(hint), g->dir, g->segs, g->n, g->i,
                                     sc->bad_offset, sc->last_lsn + 1));
    case WAL_SCAN_STOPPED:
        return util_errf(
            err, cap, sc->cb_error == -ENOMEM ? -ENOMEM : -EBADMSG,
            "%s: cannot apply the record at offset %zu: %s. %s", g->path, sc->bad_offset,
            sc->cb_error == -ENOTSUP ? "a two-phase commit record: this data directory "
                                       "belongs to a replica; start serve with its "
                                       "--id and --replicas"
                                     : strerror(-sc->cb_error),
            sc->cb_error == -ENOMEM
                ? "free memory and retry"
                : damage_hint(hint, sizeof(hint), g->dir, g->segs, g->n, g->i,
                              sc->bad_offset, sc->last_lsn + 1));
    }
    return 0;
}

/* Replays segments segs[from..n). */
static int replay_segments(const char *dir, struct datadir_file *segs, long n, long from,
                           const struct recover_opts *opts, struct recover_replay *rp,
                           struct recover_result *res, char *err, size_t cap)
{
    uint64_t expect = rp->after_lsn + 1; /* the next lsn we must see */
    char path[4200], hint[1200];
    int r;

    for (long i = from; i < n; i++) {
        bool last = i == n - 1;
        char *data;
        size_t len;
        struct wal_scan sc;

        snprintf(path, sizeof(path), "%s/%s", dir, segs[i].name);
        if ((r = settle_file(path)) < 0)
            return util_errf(err, cap, r,
                             "cannot make %s durable: %s (the disk may not hold what the "
                             "last run wrote; check it, then start again)",
                             path, strerror(-r));
        if ((r = map_file(path, &data, &len)) < 0)
            return util_errf(err, cap, r, "cannot read %s: %s", path, strerror(-r));
        uint64_t scan_t0 = util_mono_ns();
        wal_scan_segment(data, len, replay_record, rp, &sc);
        uint64_t scan_ms = (util_mono_ns() - scan_t0) / 1000000u;
        /* A segment must start where the previous one ended (the first may
         * start before the snapshot's lsn: those records are skipped). */
        bool header_ok =
            sc.status != WAL_SCAN_BAD_HEADER && sc.status != WAL_SCAN_NEWER_FORMAT;
        if (header_ok && sc.first_lsn != segs[i].seq) {
            munmap(data, len);
            return util_errf(
                err, cap, -EBADMSG,
                "%s: its header says it starts at record %" PRIu64 ", its name "
                "says %" PRIu64 ". %s",
                path, sc.first_lsn, segs[i].seq,
                damage_hint(hint, sizeof(hint), dir, segs, n, i, 0, segs[i].seq));
        }
        bool starts_ok =
            !header_ok || (i == from ? sc.first_lsn <= expect : sc.first_lsn == expect);
        if (!starts_ok) {
            if (data)
                munmap(data, len);
            return util_errf(
                err, cap, -ENOENT,
                "the log has a gap: records %" PRIu64 " to %" PRIu64 " are missing "
                "before %s (a segment file was removed?). Put the missing segment "
                "back, or restore the directory from a backup (a replica of a "
                "cluster: from a healthy replica's). Keep a copy as it is",
                expect, sc.first_lsn - 1, path);
        }
        if (sc.status == WAL_SCAN_BAD_HEADER && last &&
            (len < WAL_SEGMENT_HEADER_BYTES ||
             all_zero(data, WAL_SEGMENT_HEADER_BYTES))) {
            /* Created, but the crash came before its header was written -
             * unless records follow it: then a damaged sector took the
             * header of a segment that was in use. */
            uint64_t found = 0, budget = WAL_SCAN_CRC_BUDGET(len);
            int v = len > WAL_SEGMENT_HEADER_BYTES
                        ? wal_records_after(data, len, WAL_SEGMENT_HEADER_BYTES - 1, 0,
                                            expect - 1, &budget, &found)
                        : 0;
            if (v != 0 || found > 0) {
                munmap(data, len);
                return util_errf(
                    err, cap, -EBADMSG,
                    "%s: its header is zeros, yet %s follow it: the header "
                    "was damaged, not left unwritten by a crash. %s",
                    path, v < 0 ? "what may be valid records" : "valid records",
                    damage_hint(hint, sizeof(hint), dir, segs, n, i, 0, segs[i].seq));
            }
            if (data)
                munmap(data, len);
            log_warn(MOD,
                     "removing %s: its header was never completely written (%zu bytes)",
                     path, len);
            if (unlink(path) < 0)
                return util_errf(err, cap, -errno, "cannot remove %s: %s", path,
                                 strerror(errno));
            datadir_sync(dir);
            break;
        }
        if (data)
            munmap(data, len);
        res->segments++;
        struct seg g = {dir, segs, n, i, last, path, len, scan_ms};
        if ((r = judge_scan(&g, &sc, opts, res, err, cap)) < 0)
            return r;
        if (sc.last_lsn + 1 > expect)
            expect = sc.last_lsn + 1;
        /* An empty last segment would collide with the one the log starts
         * now: it holds nothing, so it goes. */
        if (last && sc.records == 0 && sc.first_lsn == expect) {
            unlink(path);
            datadir_sync(dir);
            res->segments--;
        }
    }
    res->next_lsn = expect;
    if ((r = datadir_sync(dir)) < 0)
        return util_errf(err, cap, r, "cannot make %s durable: %s", dir, strerror(-r));
    return 0;
}

int recover(const char *dir, struct store *s, int64_t now_ms, struct recover_result *res,
            char *err, size_t cap)
{
    return recover_cluster(dir, s, now_ms, NULL, NULL, res, err, cap);
}

/* The snapshots snaps[from..n) did not read back: they are renamed out of
 * the way (kept for inspection), so the next snapshot does not keep one of
 * them as the previous one and delete the good one recovery fell back to. */
static int set_aside_damaged(const char *dir, const struct datadir_file *snaps, long from,
                             long n, char *err, size_t cap)
{
    char path[4200], to[4300];
    int r;

    for (long i = from; i < n; i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, snaps[i].name);
        snprintf(to, sizeof(to), "%s.damaged", path);
        if (rename(path, to) == 0)
            log_warn(MOD, "%s does not read back: renamed to %s (kept for inspection)",
                     path, to);
        else
            log_warn(MOD, "cannot rename %s, which does not read back: %s", path,
                     strerror(errno));
    }
    if (from < n && (r = datadir_sync(dir)) < 0)
        return util_errf(err, cap, r, "cannot make %s durable: %s", dir, strerror(-r));
    return 0;
}

int recover_cluster(const char *dir, struct store *s, int64_t now_ms,
                    struct recover_ledger *ledger, const struct recover_opts *opts,
                    struct recover_result *res, char *err, size_t cap)
{
    uint64_t t0 = util_mono_ns();
    struct datadir_file *snaps = NULL, *segs = NULL;
    struct recover_replay rp = {.s = s, .ledger = ledger};
    struct snap_header sh = {0};
    char path[4200];
    long nsnap, nseg, from;
    long damaged = -1; /* the newest snapshot that did not read back */
    long good = -1;    /* the one loaded */
    int r = 0;

    memset(res, 0, sizeof(*res));
    err[0] = '\0';
    remove_tmp_snapshots(dir);
    nsnap = datadir_list(dir, "snap-", ".snap", &snaps);
    nseg = datadir_list(dir, "wal-", ".log", &segs);
    if (nsnap < 0 || nseg < 0) {
        r = nsnap < 0 ? (int)nsnap : (int)nseg;
        r = util_errf(err, cap, r, "cannot list %s: %s", dir, strerror(-r));
        goto out;
    }

    /* Newest snapshot that reads back whole. */
    for (long i = nsnap - 1; i >= 0; i--) {
        char why[512];
        snprintf(path, sizeof(path), "%s/%s", dir, snaps[i].name);
        rp.after_lsn = 0;
        if (ledger)
            recover_ledger_free(ledger);
        r = snap_read(path, &sh, load_item, snap_txn, &rp, why, sizeof(why));
        if (r == 0 && sh.lsn != snaps[i].seq)
            r = util_errf(why, sizeof(why), -EBADMSG, "%s: header says lsn %" PRIu64,
                          path, sh.lsn);
        if (r == 0) {
            res->snap_lsn = sh.lsn;
            good = i;
            break;
        }
        store_clear(s);
        if (r == -EPROTONOSUPPORT || r == -ENOMEM) {
            r = util_errf(err, cap, r, "%s", why);
            goto out;
        }
        log_error(MOD, "%s; trying an older snapshot", why);
        if (damaged < 0)
            damaged = i;
        memset(&sh, 0, sizeof(sh));
        r = 0;
    }
    if (nsnap > 0 && res->snap_lsn == 0)
        log_error(MOD,
                  "no snapshot in %s reads back whole; replaying the whole log instead "
                  "(this fails if the log no longer reaches back to its start)",
                  dir);
    {
        struct store_stats st;
        store_get_stats(s, &st);
        res->snap_items = st.curr_items;
    }
    /* The delayed flush_all in force when the snapshot was taken; the log
     * may replace it with a later one. */
    if (sh.flush_at_ms)
        store_load_flush(s, sh.flush_at_ms, 0);

    /* Replay from the last segment that starts at or before snap_lsn + 1. */
    rp.after_lsn = res->snap_lsn;
    from = 0;
    for (long i = 0; i < nseg; i++)
        if (segs[i].seq <= res->snap_lsn + 1)
            from = i;
    res->next_lsn = res->snap_lsn + 1;
    if (nseg > 0 &&
        (r = replay_segments(dir, segs, nseg, from, opts, &rp, res, err, cap)) < 0)
        goto out;
    /* A damaged snapshot's records must still be in the log. */
    if (damaged >= 0 && res->next_lsn <= snaps[damaged].seq) {
        r = util_errf(
            err, cap, -ENOENT,
            "%s/%s does not read back and records %" PRIu64 " to %" PRIu64 " are "
            "nowhere else (the log ends before them). Keep the data directory for "
            "inspection and restore that snapshot from a backup; to start anyway "
            "without those records, move it out of the directory",
            dir, snaps[damaged].name, res->next_lsn, snaps[damaged].seq);
        goto out;
    }
    if ((r = set_aside_damaged(dir, snaps, good + 1, nsnap, err, cap)) < 0)
        goto out;
    res->records = rp.records;
    /* What is dead by now goes (a single replica; a replica of a cluster
     * keeps its stored state until the cluster deletes it). */
    store_reclaim(s, now_ms);
    res->next_cas = sh.next_cas;
    if (store_max_cas(s) + 1 > res->next_cas)
        res->next_cas = store_max_cas(s) + 1;
    if (rp.max_txid + 1 > res->next_cas)
        res->next_cas = rp.max_txid + 1;
out:
    free(snaps);
    free(segs);
    res->elapsed_ms = (util_mono_ns() - t0) / 1000000u;
    return r;
}
