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

int datadir_lock(const char *dir, pid_t *holder)
{
    char path[4096], buf[32];
    int fd;

    *holder = 0;
    if (mkdir(dir, 0755) < 0 && errno != EEXIST)
        return -errno;
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

int datadir_sync(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int r = 0;

    if (fd < 0)
        return -errno;
    if (fsync(fd) < 0)
        r = -errno;
    close(fd);
    return r;
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
