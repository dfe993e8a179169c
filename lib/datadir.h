/*
 * datadir.h - the data directory: its lock, its file names, and fsync of the
 * directory itself (a new or renamed file is durable only once the
 * directory entry is).
 *
 * Files in a data dir:
 *   LOCK                        flock()ed by the serve using the dir; holds its pid
 *   RUN                         the run state: the boot the last serve ran in, its
 *                               --fsync mode, and whether it stopped cleanly
 *   wal-<first lsn, 16 hex>.log write-ahead log segments (wal.c)
 *   snap-<lsn, 16 hex>.snap     snapshots (snap.c); *.tmp while being written
 */
#ifndef TPCKV_DATADIR_H
#define TPCKV_DATADIR_H

#include "limits.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/*
 * Creates dir if missing (mode 0755) and takes an exclusive lock on its
 * LOCK file, writing our pid there. Returns the lock's fd (keep it open for
 * the life of the process), -EWOULDBLOCK if another process holds it (with
 * its pid in *holder when readable, else 0), or another -errno. *created:
 * this call made the directory.
 */
int datadir_lock(const char *dir, pid_t *holder, bool *created);

/* Removes what serve may have put in dir (LOCK, RUN, log segments,
 * snapshots), then dir itself if that leaves it empty: a start that failed
 * after creating it leaves nothing behind. */
void datadir_remove_new(const char *dir);

/* fsync()s the directory. Returns 0 or -errno. */
int datadir_sync(const char *dir);

/* fsync()s the file at path (one written by an earlier run). 0 or -errno. */
int datadir_sync_file(const char *path);

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

/*
 * The run state (RUN), so that a start can tell whether the log may have
 * lost records the last run reported durable. Under --fsync none a record
 * is reported durable once write() returned: a process crash keeps it (the
 * kernel has it) but a power loss or an OS crash may not. So the log may
 * have lost records when the last run used --fsync none, did not stop
 * cleanly, and the machine has booted since (its boot id differs). A start
 * syncs what it replays, so a later run need not carry the doubt forward.
 */
struct datadir_run {
    bool present;         /* RUN existed (a data dir of release 0.1 has none) */
    char boot_id[40];     /* /proc/sys/kernel/random/boot_id of that run, or "" */
    char fsync[8];        /* its --fsync mode name */
    bool clean;           /* it stopped cleanly: its log was synced and closed */
    uint64_t lost_before; /* nonzero: the log had lost records, and every
                             transaction id below this one may have been among
                             them (tpc_history_lost). It stays (a restart does
                             not bring records back) until the directory is
                             replaced. */
    uint64_t txid_ceiling; /* a replica of a cluster: every txid it logged
                              is below this (0: none kept). Raised, and made
                              durable here, before a txid reaches it, so it
                              bounds what a lost log can have held whatever
                              the clock says after a restart. */
    bool has_id;
    uint32_t id;          /* has_id: the cluster replica id (--id) that owns
                             the directory */
    uint64_t fence_mark;  /* a cluster replica: its data was last confirmed
                             current up to this txid (fence.h) */
    bool behind;          /* a peer found its data behind: it stays refused */
    uint32_t behind_by;   /* ... that peer */
    uint64_t behind_seen; /* ... which saw it vote on this txid */
    uint64_t seen[LIMIT_REPLICAS_MAX]; /* by replica id: the highest txid it
                                          voted YES on, as far as this one saw
                                          (fence.h); 0: none */
};

/* Reads dir/RUN into *r (present false if there is none). Returns 0, or
 * -EBADMSG for a file that does not parse, or -errno. */
int datadir_run_read(const char *dir, struct datadir_run *r);

/* Writes dir/RUN from *r (its boot_id is ignored: this boot's is written),
 * atomically and durably (a temporary file, fsync, rename, fsync of the
 * directory). Returns 0 or -errno. */
int datadir_run_write(const char *dir, const struct datadir_run *r);

/* This machine's boot id into dst (cap >= 40), "" if unknown. */
void datadir_boot_id(char *dst, size_t cap);

/* Whether the run prev describes may itself have lost records it reported
 * durable (see above), given this boot's id (an unknown id counts as another
 * boot). A loss an earlier run found is prev->lost_before. */
bool datadir_run_lost(const struct datadir_run *prev, const char *boot_now);

/* Formats "<dir>/<prefix><seq as 16 hex><suffix>" into dst (cap bytes). */
void datadir_path(char *dst, size_t cap, const char *dir, const char *prefix, uint64_t seq,
                  const char *suffix);

#endif
