/*
 * store.h - the in-memory key-value store: items, hash table, versions (CAS),
 * expiry and memory accounting. Pure code: no I/O, and no clock - every call
 * that needs the time takes now_ms (unix milliseconds) from the caller, so a
 * coordinator can give all replicas one "now" and a test can set it.
 *
 * A store belongs to one thread at a time (serve: whoever holds its lock).
 * Items are immutable once stored (except the expiry time, which touch
 * changes in place) and reference-counted with atomic counts, so a reply can
 * keep sending an item's bytes after the key was overwritten, from another
 * thread and without the lock.
 *
 * Writes go in two steps, so two-phase commit can run between them:
 *   store_prepare()  evaluates the op's condition against the current state,
 *                    builds the new item and reserves its memory; the outcome
 *                    (STORED, NOT_FOUND, ...) is known here.
 *   store_commit()   installs the prepared change; it cannot fail.
 *   store_abort()    drops it and releases the reservation.
 * A single node calls prepare then commit at once (store_apply()).
 *
 * STORED AND LIVE. What the table holds (the stored state: every item with
 * its cas, expiry and time stamp, and the pending delayed flush_all) changes
 * only by writes. Whether an item is live - not expired, not flushed - is a
 * question asked with a time: reads and a coordinator's evaluation ask it
 * at their clock. Dead items stay stored until reclaimed:
 *   - a single replica (replicated = false) reclaims them itself, on lookup,
 *     in the background walk (store_expire_step) and before refusing a write
 *     for memory; never an item whose key is locked (a prepared write on it
 *     must find it at commit, as replay will);
 *   - a replica of a cluster (replicated = true) never does: its stored
 *     state must stay identical to every other replica's, and clocks differ.
 *     The cluster removes dead items by replicating deletes that one replica
 *     decided (store_walk_dead finds the candidates), as it replicates every
 *     other change.
 * Replaying a log (store_load_*) reproduces the stored state exactly and
 * reads no clock.
 */
#ifndef TPCKV_STORE_H
#define TPCKV_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct item {
    struct item *hnext; /* hash chain */
    uint64_t cas;       /* version: unique per write */
    int64_t exptime_ms; /* absolute unix ms; 0 = never */
    int64_t mtime_ms;   /* when written; a delayed flush_all compares it */
    uint32_t hash;
    uint32_t flags; /* the client's opaque flags */
    uint32_t nval;  /* value bytes, without the trailing "\r\n" */
    uint32_t refcount;
    uint8_t nkey;
    char data[]; /* key, then value, then "\r\n" (so a reply sends both at once) */
};

static inline const char *item_key(const struct item *it)
{
    return it->data;
}

static inline const char *item_value(const struct item *it)
{
    return it->data + it->nkey;
}

/* Bytes an item is accounted for (header, key, value, "\r\n"). */
size_t item_size(size_t nkey, size_t nval);

/* Reference counting. The store holds one reference to each stored item;
 * anyone keeping an item past the next store call takes another. */
void item_ref(struct item *it);
void item_unref(struct item *it);

/* While on, the calling thread's item_unref() keeps the items it would
 * free on a list of its own, and item_reap() frees them: serve defers while
 * it holds its lock, so free(3) of overwritten items runs outside it. */
void item_defer_frees(bool on);
void item_reap(void);

struct store_config {
    uint64_t max_bytes;       /* item bytes the store may hold */
    uint64_t value_bytes_max; /* largest value (append/prepend/incr results) */
    uint64_t seed;            /* hash seed; randomize it against collision floods */
    size_t initial_buckets;   /* power of two; 0 = default */
    bool replicated;          /* a replica of a cluster: nothing is reclaimed
                                 by this store's own clock (see STORED AND LIVE) */
};

enum store_op_type {
    STORE_SET,
    STORE_ADD,
    STORE_REPLACE,
    STORE_APPEND,
    STORE_PREPEND,
    STORE_CAS,
    STORE_DELETE,
    STORE_INCR,
    STORE_DECR,
    STORE_TOUCH,
    STORE_FLUSH,
};

/* One write. Pointers are borrowed for the duration of store_prepare(). */
struct store_op {
    enum store_op_type type;
    const char *key;
    size_t nkey;
    const char *value; /* set..cas */
    size_t nvalue;
    uint32_t flags;     /* set, add, replace, cas */
    int64_t exptime_ms; /* set, add, replace, cas, touch: absolute, 0 = never */
    uint64_t cas;       /* cas: the version the client read */
    uint64_t delta;     /* incr, decr */
    int64_t flush_at_ms; /* flush: when; 0 or <= now = immediately */
    bool unlimited;      /* ignore max_bytes (a prepared write re-locked at
                            recovery: it was durable, and may commit) */
    bool effect;         /* a replicated effect, decided by a coordinator: set
                            (the item as given: exptime, cas = new_cas, mtime
                            = now_ms), delete or touch of the stored item,
                            whether live or not. No condition is evaluated and
                            now_ms is a time stamp, not a clock. */
};

enum store_status {
    STORE_OK = 0,      /* STORED, DELETED, TOUCHED, OK, or the incr/decr value */
    STORE_NOT_STORED,  /* add on a present key; replace/append/prepend on a missing one */
    STORE_EXISTS,      /* cas: the key was written since the client read it */
    STORE_NOT_FOUND,   /* delete/incr/decr/touch/cas on a missing key */
    STORE_NON_NUMERIC, /* incr/decr of a value that is not a decimal u64 */
    STORE_TOO_LARGE,   /* the resulting value would exceed value_bytes_max */
    STORE_NO_MEMORY,   /* max_bytes reached (nothing is evicted), or malloc failed */
};

const char *store_status_name(enum store_status st);

/* A prepared write: see store_prepare(). Opaque to callers except status,
 * cas and number. */
struct store_change {
    enum store_status status;
    enum store_op_type type;
    uint64_t cas;       /* the version the write will have */
    uint64_t number;    /* incr/decr: the new value */
    struct item *item;  /* the new item (owned), or NULL */
    int64_t exptime_ms; /* touch */
    int64_t flush_at_ms;
    int64_t now_ms;
    size_t reserved; /* bytes reserved for item */
    uint32_t hash;
    char key[256];
    uint8_t nkey;
};

struct store_stats {
    uint64_t curr_items;  /* items in the table (expired ones until reclaimed) */
    uint64_t total_items; /* items ever stored */
    uint64_t bytes;       /* accounted bytes of the items in the table */
    uint64_t reserved_bytes;
    uint64_t max_bytes;
    uint64_t expired_reclaimed;
    uint64_t sweeps; /* full walks of the table for dead items (a write short
                        of memory, a due flush_all, recovery) */
    uint64_t hash_buckets;
    uint64_t hash_bytes;
    bool hash_is_expanding;
};

/* Returns a new empty store, or NULL if out of memory. */
struct store *store_new(const struct store_config *cfg);
/* Frees the store and drops its references to every item. */
void store_free(struct store *s);

/*
 * Looks key up. Returns the live item (borrowed: valid until the next store
 * call unless item_ref()'d), or NULL when absent, expired or flushed. A dead
 * item met on the way is reclaimed (single replica, key not locked).
 */
struct item *store_get(struct store *s, const char *key, size_t nkey, int64_t now_ms);

/* The item stored under key, live or dead (borrowed), or NULL. Reads no
 * clock and changes nothing: what a replica's version CHECK compares. */
struct item *store_peek(struct store *s, const char *key, size_t nkey);

/*
 * Prefetching, for a batch of requests: store_hash gives key's hash (it reads
 * only the store's fixed seed: it needs no lock); store_prefetch starts
 * loading that hash's bucket; store_prefetch_item, once the bucket has had
 * time to arrive, starts loading the first item of the chain. A lookup that
 * follows finds both in the cache, so a batch's cache misses overlap instead
 * of coming one after the other. The prefetches change nothing; call them
 * under the same lock as every other call.
 */
uint32_t store_hash(const struct store *s, const char *key, size_t nkey);
void store_prefetch(const struct store *s, uint32_t hash);
void store_prefetch_item(const struct store *s, uint32_t hash);

/*
 * Evaluates op against the current state and prepares its effect; new_cas is
 * the version a successful write gets. Fills *ch; ch->status is the outcome
 * the client will see. Returns 0 when ch->status is STORE_OK (the change must
 * then be committed or aborted), or -1 when the op has no effect (the
 * condition failed or a limit was hit; nothing to commit or abort).
 * The key must be valid (1..250 bytes); the store does not re-check syntax.
 */
int store_prepare(struct store *s, const struct store_op *op, uint64_t new_cas, int64_t now_ms,
                  struct store_change *ch);

/* Installs a change prepared with status STORE_OK. Never fails. */
void store_commit(struct store *s, struct store_change *ch);

/* Drops a change prepared with status STORE_OK. */
void store_abort(struct store *s, struct store_change *ch);

/* store_prepare() then, if it succeeded, store_commit(). Returns the status. */
enum store_status store_apply(struct store *s, const struct store_op *op, uint64_t new_cas,
                              int64_t now_ms, struct store_change *ch);

/*
 * Reclaims expired and flushed items, visiting at most max_buckets buckets
 * from where the previous call stopped. Returns the number reclaimed. The
 * server calls it from a timer so memory comes back without any read. A
 * replicated store reclaims nothing (returns 0): see store_walk_dead.
 */
size_t store_expire_step(struct store *s, int64_t now_ms, size_t max_buckets);

/* Reclaims every item dead at now_ms, unless the store is replicated. */
size_t store_reclaim(struct store *s, int64_t now_ms);

/*
 * For a replicated store: visits up to max_buckets buckets from where the
 * previous call stopped and calls fn for each item dead at now_ms whose key
 * is not locked; stops early when fn returns non-zero. Changes nothing: the
 * caller decides which to delete, and replicates the deletes.
 */
void store_walk_dead(struct store *s, int64_t now_ms, size_t max_buckets,
                     int (*fn)(void *arg, const struct item *it), void *arg);

/*
 * Collects the live items whose key starts with prefix[0..nprefix), each
 * referenced, into a new array (*out, caller frees it after unref'ing every
 * item). Returns the count, or -ENOMEM. A point-in-time list: writes after
 * the call do not change it.
 */
long store_collect(struct store *s, const char *prefix, size_t nprefix, int64_t now_ms,
                   struct item ***out);

void store_get_stats(const struct store *s, struct store_stats *st);

/* ---- loading logged effects (recovery) ------------------------------------
 * Each applies an effect read from a snapshot or the write-ahead log,
 * unconditionally (it was evaluated when first written), to the stored
 * state: an item already dead is loaded all the same, since a later record
 * may refer to it (a touch made while it was alive). They read no clock and
 * ignore max_bytes: data that was durable is never dropped at recovery, and
 * writes are refused later if the store is over its limit. */

/* Key now holds this item. Returns 0 or -ENOMEM. */
int store_load_put(struct store *s, const char *key, size_t nkey, const char *value,
                   size_t nvalue, uint32_t flags, int64_t exptime_ms, int64_t mtime_ms,
                   uint64_t cas);
void store_load_del(struct store *s, const char *key, size_t nkey);
void store_load_touch(struct store *s, const char *key, size_t nkey, int64_t exptime_ms);
/* flush_all issued at mtime_ms taking effect at flush_at_ms (as committed). */
void store_load_flush(struct store *s, int64_t flush_at_ms, int64_t mtime_ms);

/* Removes every item (a failed recovery attempt starts over). */
void store_clear(struct store *s);

/* The delayed flush_all in force (0 = none; it stays once due, until a
 * later flush_all replaces it) and the highest cas stored, for snapshots
 * and for resuming cas numbering after recovery. */
int64_t store_flush_at(const struct store *s);
uint64_t store_max_cas(const struct store *s);

/*
 * Calls fn for every live item; stops early and returns fn's value if it is
 * not 0. fn must not change the store.
 */
int store_for_each(struct store *s, int64_t now_ms, int (*fn)(void *arg, const struct item *it),
                   void *arg);

/* The same for every stored item, dead ones included (what a snapshot
 * keeps: the stored state). */
int store_for_each_stored(struct store *s, int (*fn)(void *arg, const struct item *it),
                          void *arg);

/* A digest of the stored state: every item's key, value, flags, expiry,
 * time stamp and cas, and the flush_all in force, independent of table
 * order. Two replicas that hold the same state have the same digest. */
uint64_t store_digest(const struct store *s);

/* ---- key locks --------------------------------------------------------------
 * A write holds its keys from prepare to commit or abort, so no other write
 * evaluates against a state about to change. Locks are independent of items
 * (an absent key can be locked, for add). */

/* Locks key for owner (not NULL). Returns 0, or -EBUSY with the holder in
 * *holder; -ENOMEM. Locking a key the owner already holds is an error
 * (-EDEADLK): owners lock each key once. */
int store_lock(struct store *s, const char *key, size_t nkey, void *owner, void **holder);
/* Releases owner's lock on key (no-op if it holds none). */
void store_unlock(struct store *s, const char *key, size_t nkey, void *owner);
/* The same for the key of a change store_prepare() filled in: it has the
 * hash already (a logged set used to hash its key five times). */
int store_lock_change(struct store *s, const struct store_change *ch, void *owner, void **holder);
void store_unlock_change(struct store *s, const struct store_change *ch, void *owner);
/* The owner holding key, or NULL. */
void *store_lock_holder(struct store *s, const char *key, size_t nkey);
/* An owner holding some key that starts with prefix[0..nprefix) (any key
 * when nprefix is 0), or NULL. Walks the lock table: as long as the number
 * of writes in flight, not the store. */
void *store_lock_holder_prefix(struct store *s, const char *prefix, size_t nprefix);
/* Number of keys locked. */
size_t store_locks(const struct store *s);

#endif /* TPCKV_STORE_H */
