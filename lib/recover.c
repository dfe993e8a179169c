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
 *      nothing valid after it is a write cut short by a crash: it was never
 *      acknowledged, so it is cut off (ftruncate + fsync) with a warning.
 * Anything else that does not read back is corruption: recovery stops and
 * says which file, which offset, and what the operator can do. It never
 * skips a record and never invents one.
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

struct replay {
    struct store *s;
    int64_t now_ms;
    uint64_t after_lsn; /* records up to this one are in the snapshot */
    uint64_t max_txid;
    uint64_t records;
    int64_t flush_at; /* delayed flush_all pending in what was replayed, 0 = none */
};

static int load_item(void *arg, const struct wal_op *op)
{
    struct replay *rp = arg;
    int64_t exptime = op->exptime_ms;

    /* Written before a delayed flush_all that is due by now: the store has
     * already carried that flush out (and forgotten it) while loading, so
     * load the item dead - it still replaces the key's older value. */
    if (rp->flush_at != 0 && rp->flush_at <= rp->now_ms && op->mtime_ms < rp->flush_at)
        exptime = rp->flush_at;
    return store_load_put(rp->s, op->key, op->nkey, op->value, op->nvalue, op->flags,
                          exptime, op->mtime_ms, op->cas, rp->now_ms);
}

static int apply_op(struct replay *rp, const struct wal_op *op)
{
    switch (op->kind) {
    case WAL_OP_PUT:
        return load_item(rp, op);
    case WAL_OP_DEL:
        store_load_del(rp->s, op->key, op->nkey, rp->now_ms);
        return 0;
    case WAL_OP_TOUCH:
        store_load_touch(rp->s, op->key, op->nkey, op->exptime_ms, rp->now_ms);
        return 0;
    case WAL_OP_FLUSH:
        store_load_flush(rp->s, op->flush_at_ms, op->mtime_ms, rp->now_ms);
        /* As store_commit(): the latest flush_all wins; one not in the
         * future when issued was carried out at once. */
        rp->flush_at = op->flush_at_ms > op->mtime_ms ? op->flush_at_ms : 0;
        return 0;
    }
    return -EBADMSG;
}

static int replay_record(void *arg, const struct wal_record *rec)
{
    struct replay *rp = arg;
    struct wal_txn txn;
    struct wal_op op;
    size_t pos;
    int r;

    if (rec->lsn <= rp->after_lsn)
        return 0;
    if (rec->type != WAL_REC_WRITE)
        return -ENOTSUP; /* 2PC records arrive with replication */
    if (wal_txn_decode(rec->payload, rec->len, &txn, &pos) < 0)
        return -EBADMSG;
    for (uint32_t i = 0; i < txn.nops; i++) {
        if (wal_op_next(rec->payload, rec->len, &pos, &op) != 1)
            return -EBADMSG;
        if ((r = apply_op(rp, &op)) < 0)
            return r;
    }
    if (pos != rec->len)
        return -EBADMSG;
    if (txn.txid > rp->max_txid)
        rp->max_txid = txn.txid;
    rp->records++;
    return 0;
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

static const char *do_hint(void)
{
    return "Keep the data directory for inspection; to start anyway with what "
           "precedes the damage, move the damaged segment and every later one out of "
           "the directory (their writes will be lost), or restore from a backup";
}

/* Replays segments segs[from..n). */
static int replay_segments(const char *dir, struct datadir_file *segs, long n, long from,
                           struct replay *rp, struct recover_result *res, char *err,
                           size_t cap)
{
    uint64_t expect = rp->after_lsn + 1; /* the next lsn we must see */
    char path[4200];
    int r;

    for (long i = from; i < n; i++) {
        bool last = i == n - 1;
        char *data;
        size_t len;
        struct wal_scan sc;

        snprintf(path, sizeof(path), "%s/%s", dir, segs[i].name);
        if ((r = map_file(path, &data, &len)) < 0)
            return util_errf(err, cap, r, "cannot read %s: %s", path, strerror(-r));
        wal_scan_segment(data, len, replay_record, rp, &sc);
        /* A segment must start where the previous one ended (the first may
         * start before the snapshot's lsn: those records are skipped). */
        bool header_ok = sc.status != WAL_SCAN_BAD_HEADER && sc.status != WAL_SCAN_NEWER_FORMAT;
        if (header_ok && sc.first_lsn != segs[i].seq) {
            munmap(data, len);
            return util_errf(err, cap, -EBADMSG,
                         "%s: its header says it starts at record %" PRIu64 ", its name "
                         "says %" PRIu64 ". %s",
                         path, sc.first_lsn, segs[i].seq, do_hint());
        }
        bool starts_ok = !header_ok ||
                         (i == from ? sc.first_lsn <= expect : sc.first_lsn == expect);
        if (!starts_ok) {
            if (data)
                munmap(data, len);
            return util_errf(err, cap, -ENOENT,
                         "the log has a gap: records %" PRIu64 " to %" PRIu64 " are missing "
                         "before %s (a segment file was removed?). %s",
                         expect, sc.first_lsn - 1, path, do_hint());
        }
        if (sc.status == WAL_SCAN_BAD_HEADER && last &&
            (len < WAL_SEGMENT_HEADER_BYTES || all_zero(data, WAL_SEGMENT_HEADER_BYTES))) {
            /* Created, but the crash came before its header was written. */
            if (data)
                munmap(data, len);
            log_warn(MOD, "removing %s: its header was never completely written (%zu bytes)",
                     path, len);
            if (unlink(path) < 0)
                return util_errf(err, cap, -errno, "cannot remove %s: %s", path, strerror(errno));
            datadir_sync(dir);
            break;
        }
        if (data)
            munmap(data, len);
        res->segments++;
        switch (sc.status) {
        case WAL_SCAN_CLEAN:
            break;
        case WAL_SCAN_TORN:
            if (!last)
                return util_errf(err, cap, -EBADMSG,
                             "%s is damaged at offset %zu and later segments exist, so this "
                             "is not an interrupted write. %s",
                             path, sc.bad_offset, do_hint());
            log_warn(MOD, "%s: cutting off %zu bytes at offset %zu: a record cut short by a "
                          "crash (never acknowledged)",
                     path, len - sc.valid_bytes, sc.valid_bytes);
            if ((r = truncate_durably(path, sc.valid_bytes)) < 0)
                return util_errf(err, cap, r, "cannot truncate %s: %s", path, strerror(-r));
            res->truncated_bytes += len - sc.valid_bytes;
            break;
        case WAL_SCAN_CORRUPT:
            return util_errf(err, cap, -EBADMSG,
                         "%s is damaged at offset %zu: a record there fails its checksum and "
                         "valid records follow it. %s",
                         path, sc.bad_offset, do_hint());
        case WAL_SCAN_BAD_HEADER:
            return util_errf(err, cap, -EBADMSG, "%s does not start with a valid segment header. %s",
                         path, do_hint());
        case WAL_SCAN_NEWER_FORMAT:
            return util_errf(err, cap, -EPROTONOSUPPORT,
                         "%s was written by a newer serve (log format above %d); run that "
                         "version",
                         path, WAL_FORMAT_VERSION);
        case WAL_SCAN_LSN_GAP:
            return util_errf(err, cap, -EBADMSG,
                         "%s: the record at offset %zu is out of sequence (after %" PRIu64
                         "). %s",
                         path, sc.bad_offset, sc.last_lsn, do_hint());
        case WAL_SCAN_STOPPED:
            return util_errf(err, cap, sc.cb_error == -ENOMEM ? -ENOMEM : -EBADMSG,
                         "%s: cannot apply the record at offset %zu: %s. %s", path,
                         sc.bad_offset,
                         sc.cb_error == -ENOTSUP ? "a record type this serve does not replay"
                                                 : strerror(-sc.cb_error),
                         sc.cb_error == -ENOMEM ? "free memory and retry" : do_hint());
        }
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
    return 0;
}

int recover(const char *dir, struct store *s, int64_t now_ms, struct recover_result *res,
            char *err, size_t cap)
{
    uint64_t t0 = util_mono_ns();
    struct datadir_file *snaps = NULL, *segs = NULL;
    struct replay rp = {.s = s, .now_ms = now_ms};
    struct snap_header sh = {0};
    char path[4200];
    long nsnap, nseg, from;
    long damaged = -1; /* the newest snapshot that did not read back */
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
        r = snap_read(path, &sh, load_item, &rp, why, sizeof(why));
        if (r == 0 && sh.lsn != snaps[i].seq)
            r = util_errf(why, sizeof(why), -EBADMSG, "%s: header says lsn %" PRIu64, path, sh.lsn);
        if (r == 0) {
            res->snap_lsn = sh.lsn;
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
        log_error(MOD, "no snapshot in %s reads back whole; replaying the whole log instead "
                       "(this fails if the log no longer reaches back to its start)",
                  dir);
    {
        struct store_stats st;
        store_get_stats(s, &st);
        res->snap_items = st.curr_items;
    }
    /* A delayed flush_all pending when the snapshot was taken; the log may
     * replace it with a later one. */
    if (sh.flush_at_ms)
        store_load_flush(s, sh.flush_at_ms, 0, now_ms);
    rp.flush_at = sh.flush_at_ms;

    /* Replay from the last segment that starts at or before snap_lsn + 1. */
    rp.after_lsn = res->snap_lsn;
    from = 0;
    for (long i = 0; i < nseg; i++)
        if (segs[i].seq <= res->snap_lsn + 1)
            from = i;
    res->next_lsn = res->snap_lsn + 1;
    if (nseg > 0 && (r = replay_segments(dir, segs, nseg, from, &rp, res, err, cap)) < 0)
        goto out;
    /* A damaged snapshot's records must still be in the log. */
    if (damaged >= 0 && res->next_lsn <= snaps[damaged].seq) {
        r = util_errf(err, cap, -ENOENT,
                  "%s/%s does not read back and records %" PRIu64 " to %" PRIu64 " are "
                  "nowhere else (the log ends before them). Keep the data directory for "
                  "inspection and restore that snapshot from a backup; to start anyway "
                  "without those records, move it out of the directory",
                  dir, snaps[damaged].name, res->next_lsn, snaps[damaged].seq);
        goto out;
    }
    res->records = rp.records;
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
