/* pcshim.c - a test-only LD_PRELOAD library that records what a power cut
 * would keep of a directory tree: only what was fsynced (tests/powercut/powercut.py
 * builds that image after a kill -9). Never linked into serve.
 *
 *   PCSHIM_ROOT=/tmp/x/root PCSHIM_STATE=/tmp/x/state \
 *       LD_PRELOAD=build/rel/tests/powercut/pcshim.so ./serve -d /tmp/x/root/data ...
 *
 * The model, per inode under PCSHIM_ROOT (absolute, no trailing slash):
 *   - a regular file's durable content is what it held at its last
 *     fsync/fdatasync: the shim copies the byte ranges written since (and
 *     the size) into STATE/f<dev>_<ino> inside the fsync call, before the
 *     caller learns it returned;
 *   - a directory's durable entries are those it had at its last fsync:
 *     STATE/d<dev>_<ino> lists "name<TAB>dev_ino<TAB>f|d|o" lines (written
 *     to a temporary file and renamed, so a reader sees a whole list);
 *   - everything under PCSHIM_ROOT when the first process starts counts as
 *     durable (STATE/init marks that this was done).
 * So a file whose data was synced but whose directory was not is lost, as
 * is a new directory whose parent was not synced - what a power cut may do.
 * A process's first sync of a file copies all of it (the kernel writes back
 * every dirty page of the file, also those a killed process wrote).
 * Writes since a file's last sync are journaled (STATE/j<pid>: "W dev_ino
 * offset length" lines, "S dev_ino" at each sync) so the image builder can
 * also let some of those pages survive, in any order: the holes a power cut
 * in the middle of writeback leaves.
 *
 * Intercepted: write, pwrite, pwrite64, ftruncate, ftruncate64, fsync,
 * fdatasync. Files written through other
 * calls (writev, mmap) are not tracked: serve uses none of them in its data
 * directory. The shim's own I/O goes through the real functions. A child
 * created by fork() (serve's snapshot writer) journals to its own file.
 */
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#define MAXR 256 /* dirty ranges per file before they are merged into one */

typedef ssize_t (*write_fn)(int, const void *, size_t);
typedef ssize_t (*pwrite_fn)(int, const void *, size_t, off_t);
typedef int (*ftruncate_fn)(int, off_t);
typedef int (*sync_fn)(int);
typedef int (*close_fn)(int);

static write_fn real_write;
static pwrite_fn real_pwrite, real_pwrite64;
static ftruncate_fn real_ftruncate, real_ftruncate64;
static sync_fn real_fsync, real_fdatasync;
static close_fn real_close;

static char root[PATH_MAX], state[PATH_MAX];
static size_t root_len;
static bool on;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

struct range {
    uint64_t off, end;
};

/* A tracked descriptor: a regular file or directory under the root. */
struct fdinfo {
    int kind;
    dev_t dev;
    ino_t ino;
    bool dir;
};

/* Dirty ranges of a tracked file (by inode), since its last sync. */
struct dirty {
    dev_t dev;
    ino_t ino;
    size_t n;
    bool seen; /* synced by this process before */
    struct range r[MAXR];
    struct dirty *next;
};
static struct dirty *dirties;

static pid_t journal_pid;
static int journal_fd = -1;

static void die(const char *what)
{
    char msg[256];
    int n = snprintf(msg, sizeof(msg), "pcshim: %s: %s\n", what, strerror(errno));
    if (n > 0)
        (void)syscall(SYS_write, 2, msg, (size_t)n);
    abort();
}

static void raw_write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = syscall(SYS_write, fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            die("write");
        p += w;
        n -= (size_t)w;
    }
}

static void journal(const char *fmt, ...)
{
    char line[160], path[PATH_MAX + 32];
    va_list ap;

    if (journal_fd < 0 || journal_pid != getpid()) {
        /* A forked child journals on its own. */
        journal_pid = getpid();
        snprintf(path, sizeof(path), "%s/j%d", state, (int)journal_pid);
        journal_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (journal_fd < 0)
            die("open journal");
    }
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    raw_write_all(journal_fd, line, (size_t)n);
}

static void key_of(char *dst, size_t cap, dev_t dev, ino_t ino)
{
    snprintf(dst, cap, "%llu_%llu", (unsigned long long)dev, (unsigned long long)ino);
}

/* Copies bytes [off, end) of the file open as src into dst (shadow). */
static void copy_range(int src, int dst, uint64_t off, uint64_t end)
{
    char buf[65536];

    while (off < end) {
        size_t want = end - off < sizeof(buf) ? (size_t)(end - off) : sizeof(buf);
        ssize_t n = pread(src, buf, want, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            die("pread");
        if (n == 0)
            break; /* past the end now: the size says the rest */
        for (ssize_t done = 0; done < n;) {
            ssize_t w = real_pwrite(dst, buf + done, (size_t)(n - done), (off_t)(off + done));
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                die("pwrite shadow");
            done += w;
        }
        off += (uint64_t)n;
    }
}

/* Is path (absolute) under root? */
static bool under_root(const char *path)
{
    return strncmp(path, root, root_len) == 0 && (path[root_len] == '/' || path[root_len] == 0);
}

/* What fd refers to, looked up at every call (descriptors are reused, and
 * a forked child closes its inherited ones without close()). */
static struct fdinfo *info(int fd, struct fdinfo *f)
{
    char link[64], path[PATH_MAX];
    struct stat sb;

    if (!on || fd < 0)
        return NULL;
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof(path) - 1);
    if (n <= 0)
        return NULL;
    path[n] = '\0';
    if (!under_root(path) || fstat(fd, &sb) < 0 || !(S_ISREG(sb.st_mode) || S_ISDIR(sb.st_mode)))
        return NULL;
    *f = (struct fdinfo){.kind = 1, .dev = sb.st_dev, .ino = sb.st_ino,
                         .dir = S_ISDIR(sb.st_mode)};
    return f;
}

static struct dirty *dirty_of(dev_t dev, ino_t ino)
{
    for (struct dirty *d = dirties; d; d = d->next)
        if (d->dev == dev && d->ino == ino)
            return d;
    struct dirty *d = calloc(1, sizeof(*d));
    if (d == NULL)
        die("calloc");
    d->dev = dev;
    d->ino = ino;
    d->next = dirties;
    dirties = d;
    return d;
}

static void mark(struct fdinfo *f, uint64_t off, uint64_t len)
{
    char key[64];

    if (len == 0)
        return;
    key_of(key, sizeof(key), f->dev, f->ino);
    pthread_mutex_lock(&mu);
    struct dirty *d = dirty_of(f->dev, f->ino);
    if (d->n == MAXR) { /* merge into one covering range: more is copied, still right */
        uint64_t lo = d->r[0].off, hi = d->r[0].end;
        for (size_t i = 1; i < d->n; i++) {
            lo = d->r[i].off < lo ? d->r[i].off : lo;
            hi = d->r[i].end > hi ? d->r[i].end : hi;
        }
        d->r[0] = (struct range){lo, hi};
        d->n = 1;
    }
    d->r[d->n++] = (struct range){off, off + len};
    journal("W %s %llu %llu\n", key, (unsigned long long)off, (unsigned long long)len);
    pthread_mutex_unlock(&mu);
}

/* The durable entries of the directory open as fd, into STATE/d<key>. */
static void sync_dir(int fd, struct fdinfo *f)
{
    char key[64], path[PATH_MAX + 128], tmp[PATH_MAX + 160], link[64];
    struct stat sb;

    key_of(key, sizeof(key), f->dev, f->ino);
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    DIR *d = opendir(link);
    if (d == NULL)
        die("opendir");
    snprintf(path, sizeof(path), "%s/d%s", state, key);
    snprintf(tmp, sizeof(tmp), "%s.%d.tmp", path, (int)getpid());
    int out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0)
        die("open dir list");
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        char line[PATH_MAX + 96], k2[64];
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (fstatat(dirfd(d), de->d_name, &sb, AT_SYMLINK_NOFOLLOW) < 0)
            continue; /* gone meanwhile */
        key_of(k2, sizeof(k2), sb.st_dev, sb.st_ino);
        int n = snprintf(line, sizeof(line), "%s\t%s\t%c\n", de->d_name, k2,
                         S_ISDIR(sb.st_mode) ? 'd' : S_ISREG(sb.st_mode) ? 'f' : 'o');
        raw_write_all(out, line, (size_t)n);
    }
    closedir(d);
    if (real_close(out) < 0 || rename(tmp, path) < 0)
        die("dir list");
}

/* The durable content of the file open as fd: its dirty ranges copied into
 * STATE/f<key>, which is cut or extended to the file's size. */
static void sync_file(int fd, struct fdinfo *f)
{
    char key[64], path[PATH_MAX + 128], link[64];
    struct stat sb;

    key_of(key, sizeof(key), f->dev, f->ino);
    snprintf(path, sizeof(path), "%s/f%s", state, key);
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    int src = open(link, O_RDONLY | O_CLOEXEC); /* fd may be write-only */
    int dst = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (src < 0 || dst < 0 || fstat(src, &sb) < 0)
        die("open for sync");
    pthread_mutex_lock(&mu);
    struct dirty *d = dirty_of(f->dev, f->ino);
    if (!d->seen) {
        /* The first sync of this file by this process: fsync writes back
         * every dirty page, whoever wrote it (an earlier process that was
         * killed, say), and those ranges are not known here: all of it. */
        d->seen = true;
        d->n = 1;
        d->r[0] = (struct range){0, (uint64_t)sb.st_size};
    }
    for (size_t i = 0; i < d->n; i++) {
        uint64_t end = d->r[i].end < (uint64_t)sb.st_size ? d->r[i].end : (uint64_t)sb.st_size;
        if (d->r[i].off < end)
            copy_range(src, dst, d->r[i].off, end);
    }
    d->n = 0;
    if (real_ftruncate(dst, sb.st_size) < 0)
        die("ftruncate shadow");
    journal("S %s\n", key);
    pthread_mutex_unlock(&mu);
    real_close(src);
    real_close(dst);
}

/* Everything under dir (absolute) counts as durable: lists and copies. */
static void init_tree(const char *dir)
{
    struct stat sb;
    char key[64], path[PATH_MAX + 128];
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

    if (fd < 0)
        return;
    if (fstat(fd, &sb) < 0)
        die("fstat");
    struct fdinfo f = {.kind = 1, .dev = sb.st_dev, .ino = sb.st_ino, .dir = true};
    sync_dir(fd, &f);
    DIR *d = fdopendir(fd);
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL) {
        char sub[PATH_MAX + 300];
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        snprintf(sub, sizeof(sub), "%s/%s", dir, de->d_name);
        if (lstat(sub, &sb) < 0)
            continue;
        if (S_ISDIR(sb.st_mode)) {
            init_tree(sub);
        } else if (S_ISREG(sb.st_mode)) {
            key_of(key, sizeof(key), sb.st_dev, sb.st_ino);
            snprintf(path, sizeof(path), "%s/f%s", state, key);
            int src = open(sub, O_RDONLY | O_CLOEXEC);
            int dst = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
            if (src < 0 || dst < 0)
                die("open for init");
            copy_range(src, dst, 0, (uint64_t)sb.st_size);
            real_close(src);
            real_close(dst);
        }
    }
    if (d)
        closedir(d);
}

__attribute__((constructor)) static void pcshim_init(void)
{
    real_write = (write_fn)dlsym(RTLD_NEXT, "write");
    real_pwrite = (pwrite_fn)dlsym(RTLD_NEXT, "pwrite");
    real_pwrite64 = (pwrite_fn)dlsym(RTLD_NEXT, "pwrite64");
    real_ftruncate = (ftruncate_fn)dlsym(RTLD_NEXT, "ftruncate");
    real_ftruncate64 = (ftruncate_fn)dlsym(RTLD_NEXT, "ftruncate64");
    real_fsync = (sync_fn)dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = (sync_fn)dlsym(RTLD_NEXT, "fdatasync");
    real_close = (close_fn)dlsym(RTLD_NEXT, "close");
    const char *r = getenv("PCSHIM_ROOT"), *s = getenv("PCSHIM_STATE");
    if (r == NULL || s == NULL || r[0] != '/' || s[0] != '/')
        return;
    snprintf(root, sizeof(root), "%s", r);
    snprintf(state, sizeof(state), "%s", s);
    root_len = strlen(root);
    on = true;
    char marker[PATH_MAX + 16];
    snprintf(marker, sizeof(marker), "%s/init", state);
    int fd = open(marker, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd >= 0) {
        init_tree(root);
        real_close(fd);
    }
}

ssize_t write(int fd, const void *buf, size_t n)
{
    struct fdinfo fi, *f = info(fd, &fi);
    off_t off = f && !f->dir ? lseek(fd, 0, SEEK_CUR) : -1;
    if (f && !f->dir && (fcntl(fd, F_GETFL) & O_APPEND)) {
        struct stat sb;
        off = fstat(fd, &sb) == 0 ? sb.st_size : -1;
    }
    ssize_t w = real_write(fd, buf, n);
    if (w > 0 && f && !f->dir && off >= 0)
        mark(f, (uint64_t)off, (uint64_t)w);
    return w;
}

static ssize_t pwrite_common(pwrite_fn fn, int fd, const void *buf, size_t n, off_t off)
{
    struct fdinfo fi, *f = info(fd, &fi);
    ssize_t w = fn(fd, buf, n, off);
    if (w > 0 && f && !f->dir)
        mark(f, (uint64_t)off, (uint64_t)w);
    return w;
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
    return pwrite_common(real_pwrite, fd, buf, n, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off)
{
    return pwrite_common(real_pwrite64, fd, buf, n, off);
}

static int trunc_common(ftruncate_fn fn, int fd, off_t len)
{
    struct fdinfo fi, *f = info(fd, &fi);
    struct stat sb;
    off_t old = f && fstat(fd, &sb) == 0 ? sb.st_size : -1;
    int r = fn(fd, len);
    if (r == 0 && f && !f->dir && old >= 0 && old != len) {
        uint64_t lo = (uint64_t)(old < len ? old : len), hi = (uint64_t)(old < len ? len : old);
        mark(f, lo, hi - lo);
    }
    return r;
}

int ftruncate(int fd, off_t len)
{
    return trunc_common(real_ftruncate, fd, len);
}

int ftruncate64(int fd, off_t len)
{
    return trunc_common(real_ftruncate64, fd, len);
}

static int sync_common(sync_fn fn, int fd)
{
    struct fdinfo fi, *f = info(fd, &fi);
    int r = fn(fd);
    if (r == 0 && f) {
        int e = errno;
        if (f->dir)
            sync_dir(fd, f);
        else
            sync_file(fd, f);
        errno = e;
    }
    return r;
}

int fsync(int fd)
{
    return sync_common(real_fsync, fd);
}

int fdatasync(int fd)
{
    return sync_common(real_fdatasync, fd);
}

