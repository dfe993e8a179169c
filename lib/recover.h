/*
 * recover.h - rebuild the store from a data directory at start: the newest
 * valid snapshot, then the write-ahead log after it.
 */
#ifndef TPCKV_RECOVER_H
#define TPCKV_RECOVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct store;

/* What the caller knows of the last run (NULL: nothing). */
struct recover_opts {
    /* It wrote without fsync (--fsync none) and the machine lost power:
     * its records after the last segment switch may be missing in any
     * order, so damage followed by valid records at the end of the last
     * segment is cut off (with an error) rather than refused. */
    bool unsynced_tail;
};

struct recover_result {
    uint64_t snap_lsn;    /* snapshot loaded (0 = none) */
    uint64_t snap_items;
    uint64_t records;     /* log records replayed after the snapshot */
    uint64_t segments;    /* log segments read */
    uint64_t next_lsn;    /* the first lsn the log may use now */
    uint64_t next_cas;    /* the first cas unique not yet handed out */
    uint64_t truncated_bytes; /* torn tail cut from the last segment */
    uint64_t holes_cut;   /* of which holes with valid records after them */
    uint64_t elapsed_ms;
};

/* ---- two-phase commit state left open by the log --------------------------- */

struct recover_txn {
    uint64_t txid, epoch;
    uint32_t coord, nops;
    char *ops; /* owned (NULL for a commit) */
    uint32_t nbytes;
};

/* A decision replayed from the log. */
struct recover_decided {
    uint64_t txid, epoch;
    uint32_t coord;
    bool committed;
};

/* What replay leaves open: PREPAREs with no COMMIT or ABORT after them, and
 * COMMITs this replica (self) coordinated with no END after them. A COMMIT
 * applies its PREPARE's operations to the store as it is replayed. Also the
 * newest decided_max decisions replayed (COMMIT and ABORT records), oldest
 * first from decided_head, for tpc to remember across the restart. */
struct recover_ledger {
    uint32_t self;
    struct recover_txn *prepared;
    size_t nprepared, cap_prepared;
    struct recover_txn *committed;
    size_t ncommitted, cap_committed;
    size_t decided_max; /* set by the caller; 0 = keep none */
    struct recover_decided *decided; /* a ring of decided_max */
    size_t ndecided, decided_head;
};

void recover_ledger_free(struct recover_ledger *l);

/* Replay state: what recover() uses, exported so the simulator can replay
 * records it keeps in memory. */
struct recover_replay {
    struct store *s;
    struct recover_ledger *ledger; /* NULL: 2PC records are refused (-ENOTSUP) */
    uint64_t after_lsn;            /* records up to this one are in the snapshot */
    uint64_t max_txid;
    uint64_t records;
};

/* Applies one record (WRITE, PREPARE, COMMIT, ABORT, END). Returns 0,
 * -EBADMSG for a malformed payload, -ENOTSUP, -ENOMEM. */
int recover_replay_payload(struct recover_replay *rp, uint8_t type, const char *payload,
                           size_t len);

/*
 * Loads dir into s (which must be empty): the stored state the log and
 * snapshot describe, dead items included, without reading a clock; then,
 * unless s is replicated, reclaims what is dead at now_ms. Repairs what a crash
 * can leave behind and nothing else: removes unfinished snapshot files, cuts
 * a torn record off the end of the last segment, removes a last segment
 * holding no record. Returns 0, or a negative errno with err (errcap bytes)
 * holding a sentence naming the file, the offset and what to do:
 *   -EBADMSG         corruption (a bad record with valid data after it, or
 *                    anywhere but the end of the last segment)
 *   -ENOENT          a missing segment (a gap in the log's sequence numbers)
 *   -EPROTONOSUPPORT files written by a newer serve
 *   -ENOMEM, -EIO ...
 * Warnings about repairs are logged.
 */
int recover(const char *dir, struct store *s, int64_t now_ms, struct recover_result *res,
            char *err, size_t errcap);

/* recover() for a replica in a cluster: 2PC records are replayed into
 * ledger (which the caller frees with recover_ledger_free). */
int recover_cluster(const char *dir, struct store *s, int64_t now_ms,
                    struct recover_ledger *ledger, const struct recover_opts *opts,
                    struct recover_result *res, char *err, size_t errcap);

#endif
