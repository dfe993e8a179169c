/*
 * datadir.c - see datadir.h.
 */
#include "datadir.h"

#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

static int sync_path(const char *path, int flags);

/* fsync()s the directory that holds path. */
static int sync_parent(const char *path)
{
    char parent[4096];
    size_t n = strlen(path);

    if (n >= sizeof(parent))
        return -ENAMETOOLONG;
    memcpy(parent, path, n + 1);
    while (n > 1 && parent[n - 1] == '/') /* "a/b/" names a/b */
        parent[--n] = '\0';
    char *slash = strrchr(parent, '/');
    if (slash == NULL)
        return sync_path(".", O_DIRECTORY);
    if (slash == parent)
        slash++; /* "/a": the root */
    *slash = '\0';
    return sync_path(parent, O_DIRECTORY);
}

int datadir_lock(const char *dir, pid_t *holder, bool *created)
{
    char path[4096], buf[32];
    int fd;

    *holder = 0;
    *created = false;
    if (mkdir(dir, 0755) == 0) {
        *created = true;
        /* A new directory's name is durable once its parent is synced. */
        int r = sync_parent(dir);
        if (r < 0)
            return r;
    } else if (errno != EEXIST) {
        return -errno;
    }
    snprintf(path, sizeof(path), "%s/LOCK", dir);
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        int e = errno;
        ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
        if (n > 0) {
            buf[n] = '\0';
            *holder = (pid_t)strtol(buf, NULL, 10);
        }
        close(fd);
        return e == EWOULDBLOCK ? -EWOULDBLOCK : -e;
    }
    int n = snprintf(buf, sizeof(buf), "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) < 0 || pwrite(fd, buf, (size_t)n, 0) != n) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

void datadir_remove_new(const char *dir)
{
    static const char *const prefixes[] = {"wal-", "snap-"};
    char path[4200];

    for (size_t p = 0; p < 2; p++) {
        struct datadir_file *f;
        for (int pass = 0; pass < 3; pass++) {
            static const char *const suffixes[] = {".log", ".snap", ".tmp"};
            long n = datadir_list(dir, prefixes[p], suffixes[pass], &f);
            for (long i = 0; i < n; i++) {
                snprintf(path, sizeof(path), "%s/%s", dir, f[i].name);
                unlink(path);
            }
            if (n > 0)
                free(f);
        }
    }
    static const char *const names[] = {"RUN", "RUN.tmp", "LOCK"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        unlink(path);
    }
    if (rmdir(dir) == 0)
        (void)sync_parent(dir);
}

/* fsync()s what path names, opened read-only with flags. */
static int sync_path(const char *path, int flags)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | flags);
    int r = 0;

    if (fd < 0)
        return -errno;
    if (fsync(fd) < 0)
        r = -errno;
    close(fd);
    return r;
}

int datadir_sync(const char *dir)
{
    return sync_path(dir, O_DIRECTORY);
}

int datadir_sync_file(const char *path)
{
    return sync_path(path, 0);
}

static int cmp_file(const void *a, const void *b)
{
    const struct datadir_file *x = a, *y = b;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

long datadir_list(const char *dir, const char *prefix, const char *suffix,
                  struct datadir_file **out)
{
    size_t np = strlen(prefix), ns = strlen(suffix), n = 0, cap = 0;
    struct datadir_file *arr = NULL;
    struct dirent *de;
    DIR *d = opendir(dir);

    if (d == NULL)
        return -errno;
    while ((de = readdir(d)) != NULL) {
        const char *nm = de->d_name;
        size_t len = strlen(nm);
        uint64_t seq = 0;
        bool ok = len == np + 16 + ns && memcmp(nm, prefix, np) == 0 &&
                  memcmp(nm + np + 16, suffix, ns) == 0;
        for (size_t i = 0; ok && i < 16; i++) {
            char c = nm[np + i];
            unsigned d4 = (c >= '0' && c <= '9')   ? (unsigned)(c - '0')
                          : (c >= 'a' && c <= 'f') ? (unsigned)(c - 'a' + 10)
                                                   : 16u;
            ok = d4 < 16;
            seq = seq << 4 | d4;
        }
        if (!ok || len >= sizeof(arr[0].name))
            continue;
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            struct datadir_file *p = realloc(arr, ncap * sizeof(*p));
            if (p == NULL) {
                free(arr);
                closedir(d);
                return -ENOMEM;
            }
            arr = p;
            cap = ncap;
        }
        arr[n].seq = seq;
        memcpy(arr[n].name, nm, len + 1);
        n++;
    }
    closedir(d);
    if (n)
        qsort(arr, n, sizeof(*arr), cmp_file);
    *out = arr;
    return (long)n;
}

void datadir_path(char *dst, size_t cap, const char *dir, const char *prefix, uint64_t seq,
                  const char *suffix)
{
    snprintf(dst, cap, "%s/%s%016" PRIx64 "%s", dir, prefix, seq, suffix);
}

/* ---- run state ---------------------------------------------------------------- */

#define RUN_MAGIC "tpckv run 1"

void datadir_boot_id(char *dst, size_t cap)
{
    int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? read(fd, dst, cap - 1) : -1;

    if (fd >= 0)
        close(fd);
    if (n <= 0) {
        dst[0] = '\0';
        return;
    }
    dst[n] = '\0';
    dst[strcspn(dst, "\n")] = '\0';
}

/* The value of "key value" in text, into dst; false if absent. A line may
 * end in "\r\n" (a file edited on another system). */
static bool run_field(const char *text, const char *key, char *dst, size_t cap)
{
    size_t nk = strlen(key);

    for (const char *p = text; p != NULL && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, key, nk) == 0 && p[nk] == ' ') {
            size_t n = strcspn(p + nk + 1, "\r\n");
            if (n >= cap)
                return false;
            memcpy(dst, p + nk + 1, n);
            dst[n] = '\0';
            return true;
        }
    }
    return false;
}

/* A decimal field, whole and in range; false if absent or malformed. */
static bool run_number(const char *text, const char *key, uint64_t max, uint64_t *out)
{
    char v[32], *end;

    if (!run_field(text, key, v, sizeof(v)) || v[0] < '0' || v[0] > '9')
        return false;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno || *end || x > max)
        return false;
    *out = x;
    return true;
}

int datadir_run_read(const char *dir, struct datadir_run *r)
{
    char path[4096], buf[2048], clean[8];
    uint64_t id = 0;
    int fd;
    ssize_t n;

    memset(r, 0, sizeof(*r));
    snprintf(path, sizeof(path), "%s/RUN", dir);
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return errno == ENOENT ? 0 : -errno;
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n < 0)
        return -errno;
    buf[n] = '\0';
    if (strncmp(buf, RUN_MAGIC, strlen(RUN_MAGIC)) != 0 ||
        (buf[strlen(RUN_MAGIC)] != '\n' && buf[strlen(RUN_MAGIC)] != '\r') ||
        !run_field(buf, "boot", r->boot_id, sizeof(r->boot_id)) ||
        !run_field(buf, "fsync", r->fsync, sizeof(r->fsync)) ||
        !run_field(buf, "clean", clean, sizeof(clean)) ||
        (strcmp(clean, "yes") != 0 && strcmp(clean, "no") != 0) ||
        !run_number(buf, "lost_before", UINT64_MAX, &r->lost_before))
        return -EBADMSG;
    /* The id and the ceiling are a cluster replica's (a single server
     * writes neither). */
    char v[32];
    if (run_field(buf, "id", v, sizeof(v))) {
        if (!run_number(buf, "id", UINT32_MAX, &id))
            return -EBADMSG;
        r->has_id = true;
        r->id = (uint32_t)id;
    }
    if (run_field(buf, "txid_ceiling", v, sizeof(v)) &&
        !run_number(buf, "txid_ceiling", UINT64_MAX, &r->txid_ceiling))
        return -EBADMSG;
    if (!run_field(buf, "fence_mark", v, sizeof(v)))
        /* A RUN from before the field: its ceiling, unless it has a seen
         * line, which only a build with the fence wrote - one that let a
         * refused run's ceiling pass for history (an audit): then the
         * data's own highest txid decides (snapshots cover it). */
        r->fence_mark = strstr(buf, "\nseen") ? 0 : r->txid_ceiling;
    else if (!run_number(buf, "fence_mark", UINT64_MAX, &r->fence_mark))
        return -EBADMSG;
    char bh[64];
    if (run_field(buf, "behind", bh, sizeof(bh))) {
        unsigned long long by, tx;
        char extra;
        if (sscanf(bh, "%llu %llu %c", &by, &tx, &extra) != 2 || by >= LIMIT_REPLICAS_MAX)
            return -EBADMSG;
        r->behind = true;
        r->behind_by = (uint32_t)by;
        r->behind_seen = tx;
    }
    /* "seen ID:TXID ID:TXID ..." (optional) */
    char seen[LIMIT_REPLICAS_MAX * 32];
    if (run_field(buf, "seen", seen, sizeof(seen))) {
        char *p = seen, *end;
        while (*p) {
            if (*p == ' ') {
                p++;
                continue;
            }
            errno = 0;
            unsigned long long sid = strtoull(p, &end, 10);
            if (end == p || *end != ':' || sid >= LIMIT_REPLICAS_MAX)
                return -EBADMSG;
            p = end + 1;
            unsigned long long tx = strtoull(p, &end, 10);
            if (end == p || errno || (*end != ' ' && *end != '\0'))
                return -EBADMSG;
            r->seen[sid] = tx;
            p = end;
        }
    }
    r->clean = strcmp(clean, "yes") == 0;
    r->present = true;
    return 0;
}

int datadir_run_write(const char *dir, const struct datadir_run *run)
{
    char path[4096], tmp[4100], boot[40], buf[1536], idline[LIMIT_REPLICAS_MAX * 32 + 96] = "";
    int fd, n, r = 0;

    datadir_boot_id(boot, sizeof(boot));
    if (run->has_id) {
        int k = snprintf(idline, sizeof(idline),
                         "id %" PRIu32 "\ntxid_ceiling %" PRIu64 "\nfence_mark %" PRIu64 "\n",
                         run->id, run->txid_ceiling, run->fence_mark);
        if (run->behind && k > 0 && (size_t)k < sizeof(idline))
            k += snprintf(idline + k, sizeof(idline) - (size_t)k,
                          "behind %" PRIu32 " %" PRIu64 "\n", run->behind_by, run->behind_seen);
        if (k > 0 && (size_t)k < sizeof(idline))
            k += snprintf(idline + k, sizeof(idline) - (size_t)k, "seen");
        for (uint32_t i = 0; i < LIMIT_REPLICAS_MAX; i++)
            if (run->seen[i] && k > 0 && (size_t)k < sizeof(idline))
                k += snprintf(idline + k, sizeof(idline) - (size_t)k, " %" PRIu32 ":%" PRIu64, i,
                              run->seen[i]);
        if (k > 0 && (size_t)k < sizeof(idline))
            snprintf(idline + k, sizeof(idline) - (size_t)k, "\n");
    }
    n = snprintf(buf, sizeof(buf),
                 RUN_MAGIC "\nboot %s\nfsync %s\nclean %s\nlost_before %" PRIu64 "\n%s",
                 boot[0] ? boot : "unknown", run->fsync, run->clean ? "yes" : "no",
                 run->lost_before, idline);
    snprintf(path, sizeof(path), "%s/RUN", dir);
    snprintf(tmp, sizeof(tmp), "%s/RUN.tmp", dir);
    if ((fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)) < 0)
        return -errno;
    if ((r = util_write_all(fd, buf, (size_t)n)) == 0 && fsync(fd) < 0)
        r = -errno;
    close(fd);
    if (r == 0 && rename(tmp, path) < 0)
        r = -errno;
    if (r == 0)
        r = datadir_sync(dir);
    return r;
}

bool datadir_run_lost(const struct datadir_run *prev, const char *boot_now)
{
    return prev->present && !prev->clean && strcmp(prev->fsync, "none") == 0 &&
           (boot_now[0] == '\0' || strcmp(prev->boot_id, boot_now) != 0);
}
