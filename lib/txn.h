/*
 * txn.h - a replicated write as two-phase commit carries it, and the
 * resource manager that prepares, commits and aborts it on a store.
 *
 * The coordinator evaluates a client's write against its own store (which
 * is current for every key not locked by a transaction: every commit
 * prepares on every replica first), judging liveness at its own clock, and
 * turns the outcome into operations: for each key, a CHECK (the stored
 * version it saw, and its clock) and the effect (PUT, DEL, TOUCH; FLUSH has
 * no key and no CHECK). Every replica then applies the same effect to its
 * stored item, reading no clock of its own, so items, CAS values and incr
 * results are equal everywhere, and a replica whose stored version differs
 * votes no instead of diverging. The encoding is the WAL op encoding (wal.h), so a PREPARE
 * record logs the operations exactly as they travelled.
 */
#ifndef TPCKV_TXN_H
#define TPCKV_TXN_H

#include "buf.h"
#include "store.h"
#include "tpc.h"

#include <stdbool.h>
#include <stdint.h>

struct wal_op;

/* The version of key a CHECK expects: the stored item's cas, live or dead,
 * 0 if none. It reads no clock: replicas hold the same stored state, and
 * the coordinator alone judges liveness (at its clock, once). */
uint64_t txn_version(struct store *s, const char *key, size_t nkey);

/*
 * Appends to b the operations for a change prepared on the coordinator's
 * store (status STORE_OK): a CHECK of expected (skipped for a flush) and
 * the effect. Adds the number of operations to *nops. Returns 0 or -ENOMEM.
 */
/* Sets b to a 2PC log record's payload: the transaction's head (wal.h),
 * then, for a PREPARE, its ops. Returns 0 or -ENOMEM. */
int txn_encode_record(struct buf *b, const struct tpc_txn *t);

int txn_encode_change(struct buf *b, const struct store_change *ch, uint64_t expected,
                      uint32_t *nops);

/* A prepared transaction: its store changes and the keys it holds. */
struct txn_prep {
    size_t nch;
    struct store_change *ch; /* in the same allocation */
    bool flush;
    void *user; /* the caller's: rm->user_bytes of zeroed memory in the same
                   allocation, or NULL (the server keeps its waiters there) */
};

/* The resource manager of one replica's store. */
struct txn_rm {
    struct store *store;
    struct txn_prep *flush_holder; /* a prepared flush_all holds every key */
    size_t prepared;               /* transactions holding locks */
    size_t user_bytes;             /* what txn_prep.user points to */
    /* A backstop for the clock bound (skew.h): a CHECK or FLUSH whose time
     * (the coordinator's clock) is more than clock_ahead_ms ahead of now_ms
     * (this replica's clock, set by the caller before each prepare), or more
     * than clock_behind_ms behind it (the PREPARE's time in transit
     * included), votes TPC_R_CLOCK. 0: no check (the simulator's stores,
     * whose clocks it skews on purpose). */
    int64_t now_ms;
    int64_t clock_ahead_ms, clock_behind_ms;
};

/*
 * Prepares t's operations: locks each key (no wait: one held by another
 * transaction is TPC_R_BUSY), checks each CHECK (a different version is
 * TPC_R_CONFLICT; skipped when t->recovered), and prepares each effect on
 * the store, reserving its memory (TPC_R_NO_MEMORY, TPC_R_TOO_LARGE; a
 * recovered transaction is not held to max_bytes, as recovery never drops
 * durable data), and checks the coordinator's clock (TPC_R_CLOCK, see
 * struct txn_rm; skipped when t->recovered).
 * A flush needs no key locked, and while it is prepared nothing else
 * prepares. Returns 0 with *out (to pass to txn_commit or txn_abort), or a
 * reason with nothing held (TPC_R_BAD_OPS for undecodable operations, or
 * an op count the bytes cannot hold: refused before anything is allocated).
 */
int txn_prepare(struct txn_rm *rm, const struct tpc_txn *t, struct txn_prep **out);

/* Installs the changes, releases the keys, frees p. */
void txn_commit(struct txn_rm *rm, struct txn_prep *p);

/* Drops the changes, releases the keys, frees p. */
void txn_abort(struct txn_rm *rm, struct txn_prep *p);

/* The lock holder of key as a prepared transaction (or the prepared flush),
 * or NULL: what a read of key must wait for. */
struct txn_prep *txn_holder(struct txn_rm *rm, const char *key, size_t nkey);
/* The same for any key that starts with prefix (nprefix 0: any key): what
 * `keys` must wait for, so it never lists a state a write acknowledged on
 * another replica has already replaced. */
struct txn_prep *txn_holder_prefix(struct txn_rm *rm, const char *prefix, size_t nprefix);

struct recover_ledger;

/*
 * Hands what recovery left open to a new tpc: every undecided PREPARE
 * (locked again through the resource manager) and every commit it
 * coordinated without END, then calls tpc_recovered(). Returns 0, or a
 * negative errno with the transaction that could not be taken back in
 * *bad_txid (the data directory is then inconsistent).
 */
int txn_resume(struct tpc *t, const struct recover_ledger *l, uint64_t now_us,
               uint64_t *bad_txid);

/*
 * Expiry in a cluster: no replica removes an item by its own clock (see
 * store.h); one replica decides and the deletion is replicated like any
 * write. txn_expire_batch walks up to max_buckets buckets of s (from where
 * the last walk stopped) for items dead at now_ms, not held by a
 * transaction, whose key this replica owns (crc32c of the key modulo
 * nreplicas is self_idx, so two replicas do not race for one key), and
 * appends to b, per key, a CHECK of the stored version and a DEL - at most
 * max_keys keys and max_bytes bytes. Returns the number of keys (0: none
 * found, nothing appended), or -ENOMEM. *nops gets the operation count;
 * *full says the walk stopped because the batch was full (more may wait).
 */
long txn_expire_batch(struct store *s, int64_t now_ms, size_t max_buckets, uint32_t nreplicas,
                      uint32_t self_idx, struct buf *b, uint32_t max_keys, size_t max_bytes,
                      uint32_t *nops, bool *full);

/* The effect of a prepared change as the log records it. */
void txn_change_to_op(const struct store_change *ch, struct wal_op *op);

#endif /* TPCKV_TXN_H */
