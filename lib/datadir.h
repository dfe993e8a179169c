/*
 * datadir.h - the data directory: its lock, its file names, and fsync of the
 * directory itself (a new or renamed file is durable only once the
 * directory entry is).
 *
 * Files in a data dir:
 *   LOCK                        flock()ed by the serve using the dir; holds its pid
 *   wal-<first lsn, 16 hex>.log write-ahead log segments (wal.c)
 *   snap-<lsn, 16 hex>.snap     snapshots (snap.c); *.tmp while being written
 */
#ifndef TPCKV_DATADIR_H
#define TPCKV_DATADIR_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/*
 * Creates dir if missing (mode 0755) and takes an exclusive lock on its
 * LOCK file, writing our pid there. Returns the lock's fd (keep it open for
 * the life of the process), -EWOULDBLOCK if another process holds it (with
 * its pid in *holder when readable, else 0), or another -errno.
 */
int datadir_lock(const char *dir, pid_t *holder);

/* fsync()s the directory. Returns 0 or -errno. */
int datadir_sync(const char *dir);

/* One file named <prefix><16 hex digits><suffix>. */
struct datadir_file {
    uint64_t seq;
    char name[64];
};

/*
 * Lists the files of dir named prefix + 16 hex digits + suffix, sorted by
 * that number. *out is malloc'ed (caller frees). Returns the count or -errno.
 */
long datadir_list(const char *dir, const char *prefix, const char *suffix,
                  struct datadir_file **out);

/* Formats "<dir>/<prefix><seq as 16 hex><suffix>" into dst (cap bytes). */
void datadir_path(char *dst, size_t cap, const char *dir, const char *prefix, uint64_t seq,
                  const char *suffix);

#endif
