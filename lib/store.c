/*
 * store.c - hash table of reference-counted items (see store.h for the API).
 *
 * Table: chained buckets, a power of two of them, indexed by a seeded 32-bit
 * hash of the key. It grows when items outnumber buckets and shrinks when they
 * fall under an eighth. Resizing is incremental (as in Redis's dict): a second
 * table is allocated and every store call moves one bucket across, so no
 * single request pays for rehashing millions of items. While moving, lookups
 * search both tables and inserts go to the new one.
 *
 * Liveness: an item is dead once its exptime has passed, or when a delayed
 * flush_all has come due and the item was written before it. Dead items are
 * never returned. A single replica reclaims them when a lookup meets them,
 * by store_expire_step() walking the table in the background, and by a full
 * sweep when a write would otherwise hit the memory limit - but never the
 * item of a locked key. A replicated store reclaims nothing on its own (see
 * store.h, STORED AND LIVE).
 *
 * Delayed flush_all: flush_at_ms is part of the stored state. It is not
 * carried out and forgotten when its time comes (that would make the
 * outcome depend on when this store's clock passed it): items written before
 * it read as dead from then on. A later flush_all replaces it; if the one it
 * replaces was due at the new one's time stamp, the items it flushed are
 * removed first, so they do not come back.
 *
 * Memory: bytes counts item_size() of every item in the table; reserved counts
 * items prepared but not yet committed. A prepare that would take
 * bytes + reserved past max_bytes (crediting the item it replaces) fails with
 * STORE_NO_MEMORY: the store never evicts live data to make room.
 */
#include "store.h"

#include "limits.h"
#include "util.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct table {
    struct item **b;
    size_t size; /* buckets, a power of two (0 = unused) */
    size_t used; /* items */
};

struct store {
    struct store_config cfg;
    struct table t[2]; /* t[1] is in use only while resizing */
    size_t rehash_idx; /* next t[0] bucket to move; valid while t[1].size */
    size_t expire_cursor;
    size_t min_buckets;
    uint64_t bytes;
    uint64_t reserved;
    uint64_t total_items;
    uint64_t expired_reclaimed;
    uint64_t sweeps;
    /* Items the flush_all in force hides may still be stored (set when it
     * is set, or an item written before it is stored; cleared by a sweep
     * once it is due), so a write short of memory sweeps for them once, not
     * on every refusal. */
    bool flush_unswept;
    int64_t flush_at_ms;  /* the delayed flush_all in force; 0 = none */
    int64_t next_expiry_ms; /* no item expires before this (a lower bound) */
    uint64_t max_cas;       /* highest cas of any item ever inserted */
    struct lock_entry **locks; /* key lock table: chained, power-of-two size */
    struct lock_entry *spare_locks; /* freed entries kept for reuse */
    size_t nspare_locks;
    size_t lock_buckets, nlocks;
};

struct lock_entry {
    struct lock_entry *next;
    void *owner;
    uint32_t hash;
    uint8_t nkey;
    char key[LIMIT_KEY_BYTES_MAX]; /* any key fits, so any entry can be reused */
};

/* Every write takes and lets go of a lock entry under the server lock: up to
 * this many freed ones are kept instead of going back to malloc (about
 * 270 KB at most; the lock table itself holds one per write in flight). */
#define SPARE_LOCKS_MAX 1024

/* ---- items ---------------------------------------------------------------- */

size_t item_size(size_t nkey, size_t nval)
{
    /* The data starts right after nkey (offset 49), not at sizeof(struct
     * item) (56, padded for alignment): counting from sizeof would allocate
     * 7 bytes of padding per item for nothing, and for 32-byte keys and
     * 100-byte values push every item into the next malloc size class. */
    return offsetof(struct item, data) + nkey + nval + 2;
}

/* Atomic: a connection thread drops the reference its reply held while
 * the store, under the server's lock on another thread, drops its own. */
void item_ref(struct item *it)
{
    __atomic_fetch_add(&it->refcount, 1, __ATOMIC_RELAXED);
}

/* Items whose last reference went while this thread deferred frees,
 * chained through hnext (a dead item is in no hash chain). */
static __thread struct item *tl_dead;
static __thread bool tl_defer;

void item_unref(struct item *it)
{
    uint32_t old = __atomic_fetch_sub(&it->refcount, 1, __ATOMIC_ACQ_REL);

    assert(old > 0);
    if (old != 1)
        return;
    if (tl_defer) {
        it->hnext = tl_dead;
        tl_dead = it;
    } else {
        free(it);
    }
}

void item_defer_frees(bool on)
{
    tl_defer = on;
}

void item_reap(void)
{
    struct item *it = tl_dead;

    tl_dead = NULL;
    while (it) {
        struct item *next = it->hnext;
        free(it);
        it = next;
    }
}

/* A new item with refcount 1 and value v1 followed by v2 (either may be
 * empty), or NULL if malloc fails. */
static struct item *item_new(const char *key, size_t nkey, const char *v1, size_t n1,
                             const char *v2, size_t n2)
{
    struct item *it = malloc(item_size(nkey, n1 + n2));

    if (it == NULL)
        return NULL;
    memset(it, 0, offsetof(struct item, data));
    it->refcount = 1;
    it->nkey = (uint8_t)nkey;
    it->nval = (uint32_t)(n1 + n2);
    memcpy(it->data, key, nkey);
    if (n1)
        memcpy(it->data + nkey, v1, n1);
    if (n2)
        memcpy(it->data + nkey + n1, v2, n2);
    memcpy(it->data + nkey + n1 + n2, "\r\n", 2);
    return it;
}

/* ---- hashing -------------------------------------------------------------- */

static uint64_t fmix64(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

/* Seeded hash: eight bytes at a time through a multiply-xorshift mixer. The
 * seed keeps an attacker from precomputing colliding keys. */
static uint32_t hash_key(uint64_t seed, const char *k, size_t n)
{
    uint64_t h = seed ^ ((uint64_t)n * 0x9e3779b97f4a7c15ULL);
    uint64_t w;

    while (n >= 8) {
        memcpy(&w, k, 8);
        h = (h ^ fmix64(w)) * 0x9e3779b97f4a7c15ULL;
        h = (h << 29) | (h >> 35);
        k += 8;
        n -= 8;
    }
    w = 0;
    if (n)
        memcpy(&w, k, n);
    h ^= fmix64(w ^ ((uint64_t)n << 56));
    return (uint32_t)fmix64(h);
}

/* ---- table ---------------------------------------------------------------- */

uint32_t store_hash(const struct store *s, const char *key, size_t nkey)
{
    return hash_key(s->cfg.seed, key, nkey);
}

/* Both look in t[0] only: while resizing, a key may already be in t[1], and
 * the guess costs no more than a useless prefetch. */

void store_prefetch(const struct store *s, uint32_t hash)
{
    const struct table *t = &s->t[0];

    if (t->size)
        __builtin_prefetch(&t->b[hash & (t->size - 1)]);
}

void store_prefetch_item(const struct store *s, uint32_t hash)
{
    const struct table *t = &s->t[0];
    const struct item *it;

    if (t->size == 0)
        return;
    it = t->b[hash & (t->size - 1)];
    if (it) {
        /* The header and the key: a lookup compares hash, length and key. */
        __builtin_prefetch(it);
        __builtin_prefetch((const char *)it + 64);
    }
}

static bool resizing(const struct store *s)
{
    return s->t[1].size != 0;
}

static int table_init(struct table *t, size_t size)
{
    t->b = calloc(size, sizeof(*t->b));
    if (t->b == NULL)
        return -ENOMEM;
    t->size = size;
    t->used = 0;
    return 0;
}

/* Moves up to n buckets from t[0] to t[1] (and skips at most 10n empty ones);
 * finishes the resize when t[0] is empty. */
static void rehash_step(struct store *s, size_t n)
{
    size_t empty_visits = n * 10;

    if (!resizing(s))
        return;
    while (n > 0 && s->t[0].used > 0) {
        assert(s->rehash_idx < s->t[0].size);
        struct item *it = s->t[0].b[s->rehash_idx];
        if (it == NULL) {
            s->rehash_idx++;
            if (--empty_visits == 0)
                return;
            continue;
        }
        while (it) {
            struct item *next = it->hnext;
            size_t i = it->hash & (s->t[1].size - 1);
            it->hnext = s->t[1].b[i];
            s->t[1].b[i] = it;
            s->t[0].used--;
            s->t[1].used++;
            it = next;
        }
        s->t[0].b[s->rehash_idx++] = NULL;
        n--;
    }
    if (s->t[0].used == 0) {
        free(s->t[0].b);
        s->t[0] = s->t[1];
        memset(&s->t[1], 0, sizeof(s->t[1]));
        s->rehash_idx = 0;
        s->expire_cursor = 0;
    }
}

static void start_resize(struct store *s, size_t size)
{
    if (resizing(s) || size == s->t[0].size)
        return;
    /* If memory is short, keep the current table: it still works, only with
     * longer chains. */
    if (table_init(&s->t[1], size) < 0)
        return;
    s->rehash_idx = 0;
}

static void maybe_resize(struct store *s)
{
    size_t used = s->t[0].used + s->t[1].used;
    size_t size = s->t[0].size;

    if (resizing(s))
        return;
    if (used > size && size < LIMIT_HASH_BUCKETS_MAX) {
        start_resize(s, size * 2);
    } else if (size > s->min_buckets && used < size / 8) {
        size_t target = s->min_buckets;
        while (target < used * 2)
            target *= 2;
        start_resize(s, target);
    }
}

/* The link that points at key's item (so it can be unlinked), or NULL.
 * *tab is set to the table holding it. */
static struct item **find_link(struct store *s, const char *key, size_t nkey, uint32_t h,
                               struct table **tab)
{
    for (int t = 0; t < 2; t++) {
        struct table *tb = &s->t[t];
        if (tb->size == 0)
            break;
        struct item **link = &tb->b[h & (tb->size - 1)];
        for (; *link; link = &(*link)->hnext) {
            struct item *it = *link;
            if (it->hash == h && it->nkey == nkey && memcmp(it->data, key, nkey) == 0) {
                *tab = tb;
                return link;
            }
        }
    }
    return NULL;
}

static void unlink_item(struct store *s, struct table *tab, struct item **link)
{
    struct item *it = *link;

    *link = it->hnext;
    it->hnext = NULL;
    tab->used--;
    s->bytes -= item_size(it->nkey, it->nval);
    item_unref(it);
}

static void insert_item(struct store *s, struct item *it)
{
    struct table *tab = resizing(s) ? &s->t[1] : &s->t[0];
    size_t i = it->hash & (tab->size - 1);

    it->hnext = tab->b[i];
    tab->b[i] = it;
    tab->used++;
    s->bytes += item_size(it->nkey, it->nval);
    s->total_items++;
    if (it->cas > s->max_cas)
        s->max_cas = it->cas;
    if (it->exptime_ms != 0 && it->exptime_ms < s->next_expiry_ms)
        s->next_expiry_ms = it->exptime_ms;
    if (s->flush_at_ms != 0 && it->mtime_ms < s->flush_at_ms)
        s->flush_unswept = true;
}

static bool item_live(const struct store *s, const struct item *it, int64_t now_ms)
{
    if (it->exptime_ms != 0 && it->exptime_ms <= now_ms)
        return false;
    if (s->flush_at_ms != 0 && now_ms >= s->flush_at_ms && it->mtime_ms < s->flush_at_ms)
        return false;
    return true;
}

static bool key_locked(const struct store *s, const struct item *it);

/* Whether this store may reclaim dead item it on its own: see store.h. */
static bool reclaimable(const struct store *s, const struct item *it)
{
    return !s->cfg.replicated && (s->nlocks == 0 || !key_locked(s, it));
}

/* Unlinks every dead item this store may reclaim (every item, with
 * everything) from both tables and recomputes next_expiry_ms. Returns the
 * number unlinked. */
static size_t sweep(struct store *s, int64_t now_ms, bool everything)
{
    size_t n = 0;
    int64_t next = INT64_MAX;

    for (int t = 0; t < 2; t++) {
        struct table *tb = &s->t[t];
        for (size_t i = 0; i < tb->size; i++) {
            struct item **link = &tb->b[i];
            while (*link) {
                struct item *it = *link;
                if (everything || (!item_live(s, it, now_ms) && reclaimable(s, it))) {
                    unlink_item(s, tb, link);
                    n++;
                } else {
                    if (it->exptime_ms != 0 && it->exptime_ms < next)
                        next = it->exptime_ms;
                    link = &it->hnext;
                }
            }
        }
    }
    s->next_expiry_ms = next;
    s->sweeps++;
    if (!everything && s->flush_at_ms != 0 && now_ms >= s->flush_at_ms)
        s->flush_unswept = false;
    return n;
}

/* Housekeeping every public call does first: it reads no clock. */
static void tick(struct store *s)
{
    rehash_step(s, 1);
}

/* The live item under key, reclaiming a dead one found there if it may. */
static struct item *lookup_live(struct store *s, const char *key, size_t nkey, uint32_t h,
                                int64_t now_ms)
{
    struct table *tab;
    struct item **link = find_link(s, key, nkey, h, &tab);

    if (link == NULL)
        return NULL;
    if (!item_live(s, *link, now_ms)) {
        if (reclaimable(s, *link)) {
            unlink_item(s, tab, link);
            s->expired_reclaimed++;
        }
        return NULL;
    }
    return *link;
}

/* Removes every item written before flush_at_ms (a delayed flush_all that
 * was due when a later one replaced it). */
static void remove_flushed(struct store *s, int64_t flush_at_ms)
{
    for (int t = 0; t < 2; t++) {
        struct table *tb = &s->t[t];
        for (size_t i = 0; i < tb->size; i++) {
            struct item **link = &tb->b[i];
            while (*link) {
                if ((*link)->mtime_ms < flush_at_ms)
                    unlink_item(s, tb, link);
                else
                    link = &(*link)->hnext;
            }
        }
    }
}

/* ---- public API ------------------------------------------------------------ */

const char *store_status_name(enum store_status st)
{
    static const char *const names[] = {
        [STORE_OK] = "ok",
        [STORE_NOT_STORED] = "not stored",
        [STORE_EXISTS] = "exists",
        [STORE_NOT_FOUND] = "not found",
        [STORE_NON_NUMERIC] = "non-numeric value",
        [STORE_TOO_LARGE] = "value too large",
        [STORE_NO_MEMORY] = "out of memory",
    };
    if ((unsigned)st >= ARRAY_SIZE(names))
        return "?";
    return names[st];
}

struct store *store_new(const struct store_config *cfg)
{
    struct store *s = calloc(1, sizeof(*s));
    size_t size = cfg->initial_buckets ? cfg->initial_buckets : LIMIT_HASH_BUCKETS_INITIAL;

    if (s == NULL)
        return NULL;
    /* Round up to a power of two. */
    size_t p = 16;
    while (p < size && p < LIMIT_HASH_BUCKETS_MAX)
        p *= 2;
    s->cfg = *cfg;
    s->min_buckets = p;
    s->next_expiry_ms = INT64_MAX;
    if (table_init(&s->t[0], p) < 0) {
        free(s);
        return NULL;
    }
    return s;
}

void store_free(struct store *s)
{
    if (s == NULL)
        return;
    sweep(s, 0, true);
    for (size_t i = 0; i < s->lock_buckets; i++) {
        for (struct lock_entry *e = s->locks[i], *next; e; e = next) {
            next = e->next;
            free(e);
        }
    }
    for (struct lock_entry *e = s->spare_locks, *next; e; e = next) {
        next = e->next;
        free(e);
    }
    free(s->locks);
    free(s->t[0].b);
    free(s->t[1].b);
    free(s);
}

struct item *store_get(struct store *s, const char *key, size_t nkey, int64_t now_ms)
{
    tick(s);
    return lookup_live(s, key, nkey, hash_key(s->cfg.seed, key, nkey), now_ms);
}

struct item *store_peek(struct store *s, const char *key, size_t nkey)
{
    struct table *tab;
    struct item **link = find_link(s, key, nkey, hash_key(s->cfg.seed, key, nkey), &tab);

    return link ? *link : NULL;
}

/* Parses an item's value as memcached's incr does: 1..20 digits, optionally
 * followed by spaces (older servers padded decremented numbers). */
static bool value_to_u64(const struct item *it, uint64_t *out)
{
    const char *v = item_value(it);
    size_t n = it->nval;

    while (n > 0 && v[n - 1] == ' ')
        n--;
    return n > 0 && n <= 20 && util_parse_u64(v, n, out) == 0;
}

/* Checks that an item of nval value bytes fits, crediting the item it will
 * replace; reclaims expired items once before giving up. */
static bool room_for(struct store *s, size_t nkey, size_t nval, const struct item *old,
                     int64_t now_ms)
{
    uint64_t need = item_size(nkey, nval);
    uint64_t credit = old ? item_size(old->nkey, old->nval) : 0;

    if (s->bytes + s->reserved + need <= s->cfg.max_bytes + credit)
        return true;
    if (s->cfg.replicated ||
        (now_ms < s->next_expiry_ms &&
         !(s->flush_unswept && s->flush_at_ms != 0 && now_ms >= s->flush_at_ms)))
        return false;
    s->expired_reclaimed += sweep(s, now_ms, false);
    return s->bytes + s->reserved + need <= s->cfg.max_bytes + credit;
}

static int reject(struct store_change *ch, enum store_status st)
{
    ch->status = st;
    return -1;
}

/* The new item of a change (refcount 1, reserved), or a rejection. */
static int build_item(struct store *s, const struct store_op *op, const struct item *old,
                      const char *v1, size_t n1, const char *v2, size_t n2, uint32_t flags,
                      int64_t exptime, uint64_t new_cas, int64_t mtime, int64_t now_ms,
                      struct store_change *ch)
{
    if (!op->unlimited && !room_for(s, op->nkey, n1 + n2, old, now_ms))
        return reject(ch, STORE_NO_MEMORY);
    ch->item = item_new(op->key, op->nkey, v1, n1, v2, n2);
    if (ch->item == NULL)
        return reject(ch, STORE_NO_MEMORY);
    ch->item->cas = new_cas;
    ch->item->flags = flags;
    ch->item->exptime_ms = exptime;
    ch->item->mtime_ms = mtime;
    ch->item->hash = ch->hash;
    ch->reserved = item_size(op->nkey, n1 + n2);
    s->reserved += ch->reserved;
    return 0;
}

/* A replicated effect (op->effect): the stored item changes as the
 * coordinator decided, whether this store would call it live or not. A
 * delete or touch of a key with no item changes nothing (STORE_NOT_FOUND). */
static int prepare_effect(struct store *s, const struct store_op *op, uint64_t new_cas,
                          int64_t mtime_ms, struct store_change *ch)
{
    struct table *tab;
    struct item **link = find_link(s, op->key, op->nkey, ch->hash, &tab);
    const struct item *old = link ? *link : NULL;

    switch (op->type) {
    case STORE_DELETE:
        return old ? 0 : reject(ch, STORE_NOT_FOUND);
    case STORE_TOUCH:
        if (old == NULL)
            return reject(ch, STORE_NOT_FOUND);
        ch->exptime_ms = op->exptime_ms;
        return 0;
    case STORE_SET:
        if (op->nvalue > s->cfg.value_bytes_max)
            return reject(ch, STORE_TOO_LARGE);
        /* No clock: memory is not reclaimed here, as nothing is. */
        return build_item(s, op, old, op->value, op->nvalue, NULL, 0, op->flags,
                          op->exptime_ms, new_cas, mtime_ms, INT64_MIN, ch);
    default:
        assert(!"not an effect");
        return reject(ch, STORE_NOT_STORED);
    }
}

int store_prepare(struct store *s, const struct store_op *op, uint64_t new_cas, int64_t now_ms,
                  struct store_change *ch)
{
    struct item *cur = NULL;
    const char *v1 = op->value, *v2 = NULL;
    size_t n1 = op->nvalue, n2 = 0;
    uint32_t flags = op->flags;
    int64_t exptime = op->exptime_ms;
    char num[24];

    memset(ch, 0, offsetof(struct store_change, key));
    ch->type = op->type;
    ch->cas = new_cas;
    ch->now_ms = now_ms;
    tick(s);

    if (op->type == STORE_FLUSH) {
        ch->flush_at_ms = op->flush_at_ms;
        return 0;
    }
    assert(op->nkey > 0 && op->nkey <= LIMIT_KEY_BYTES_MAX);
    ch->hash = hash_key(s->cfg.seed, op->key, op->nkey);
    memcpy(ch->key, op->key, op->nkey);
    ch->nkey = (uint8_t)op->nkey;
    if (op->effect)
        return prepare_effect(s, op, new_cas, now_ms, ch);
    cur = lookup_live(s, op->key, op->nkey, ch->hash, now_ms);

    switch (op->type) {
    case STORE_SET:
        break;
    case STORE_ADD:
        if (cur)
            return reject(ch, STORE_NOT_STORED);
        break;
    case STORE_REPLACE:
        if (!cur)
            return reject(ch, STORE_NOT_STORED);
        break;
    case STORE_APPEND:
    case STORE_PREPEND:
        if (!cur)
            return reject(ch, STORE_NOT_STORED);
        if ((uint64_t)cur->nval + op->nvalue > s->cfg.value_bytes_max)
            return reject(ch, STORE_TOO_LARGE);
        /* The value changes; flags and expiry stay the item's. */
        flags = cur->flags;
        exptime = cur->exptime_ms;
        if (op->type == STORE_APPEND) {
            v1 = item_value(cur), n1 = cur->nval;
            v2 = op->value, n2 = op->nvalue;
        } else {
            v2 = item_value(cur), n2 = cur->nval;
        }
        break;
    case STORE_CAS:
        if (!cur)
            return reject(ch, STORE_NOT_FOUND);
        if (cur->cas != op->cas)
            return reject(ch, STORE_EXISTS);
        break;
    case STORE_DELETE:
        if (!cur)
            return reject(ch, STORE_NOT_FOUND);
        return 0;
    case STORE_TOUCH:
        if (!cur)
            return reject(ch, STORE_NOT_FOUND);
        ch->exptime_ms = op->exptime_ms;
        return 0;
    case STORE_INCR:
    case STORE_DECR: {
        uint64_t v;
        if (!cur)
            return reject(ch, STORE_NOT_FOUND);
        if (!value_to_u64(cur, &v))
            return reject(ch, STORE_NON_NUMERIC);
        if (op->type == STORE_INCR)
            v += op->delta; /* wraps at 2^64, as memcached does */
        else
            v = v > op->delta ? v - op->delta : 0;
        ch->number = v;
        n1 = util_fmt_u64(num, v);
        v1 = num;
        flags = cur->flags;
        exptime = cur->exptime_ms;
        break;
    }
    case STORE_FLUSH:
        break;
    }

    if (n1 + n2 > s->cfg.value_bytes_max)
        return reject(ch, STORE_TOO_LARGE);
    /* Written already expired (negative exptime, or a past unix time): it
     * only removes the old value, so it needs no room and no new item. */
    if (exptime != 0 && exptime <= now_ms)
        return 0;
    /* The stored item is what the new one replaces, live or not. */
    if (cur == NULL)
        cur = store_peek(s, op->key, op->nkey);
    return build_item(s, op, cur, v1, n1, v2, n2, flags, exptime, new_cas, now_ms, now_ms,
                      ch);
}

void store_commit(struct store *s, struct store_change *ch)
{
    struct table *tab;
    struct item **link;

    assert(ch->status == STORE_OK);
    if (ch->type == STORE_FLUSH) {
        /* Decided by the flush's own time stamp, never by a clock here. */
        if (ch->flush_at_ms <= ch->now_ms) {
            s->flush_at_ms = 0;
            sweep(s, ch->now_ms, true);
            return;
        }
        if (s->flush_at_ms != 0 && s->flush_at_ms <= ch->now_ms)
            remove_flushed(s, s->flush_at_ms); /* it was due: its effect stays */
        s->flush_at_ms = ch->flush_at_ms;      /* the latest flush_all wins */
        s->flush_unswept = true;
        return;
    }
    link = find_link(s, ch->key, ch->nkey, ch->hash, &tab);
    if (ch->type == STORE_TOUCH) {
        if (link) {
            (*link)->exptime_ms = ch->exptime_ms;
            if (ch->exptime_ms != 0 && ch->exptime_ms < s->next_expiry_ms)
                s->next_expiry_ms = ch->exptime_ms;
        }
        return;
    }
    if (link)
        unlink_item(s, tab, link);
    if (ch->item) {
        s->reserved -= ch->reserved;
        insert_item(s, ch->item);
        ch->item = NULL;
    }
    maybe_resize(s);
}

void store_abort(struct store *s, struct store_change *ch)
{
    if (ch->item) {
        s->reserved -= ch->reserved;
        item_unref(ch->item);
        ch->item = NULL;
    }
}

enum store_status store_apply(struct store *s, const struct store_op *op, uint64_t new_cas,
                              int64_t now_ms, struct store_change *ch)
{
    if (store_prepare(s, op, new_cas, now_ms, ch) == 0)
        store_commit(s, ch);
    return ch->status;
}

size_t store_expire_step(struct store *s, int64_t now_ms, size_t max_buckets)
{
    size_t n = 0;
    struct table *tb = &s->t[0];

    tick(s);
    if (s->cfg.replicated)
        return 0;
    if (resizing(s)) {
        /* Help the resize along instead; expiry resumes after it. */
        rehash_step(s, max_buckets);
        return 0;
    }
    for (size_t k = 0; k < max_buckets && k < tb->size; k++) {
        size_t i = s->expire_cursor++ & (tb->size - 1);
        struct item **link = &tb->b[i];
        while (*link) {
            if (!item_live(s, *link, now_ms) && reclaimable(s, *link)) {
                unlink_item(s, tb, link);
                n++;
            } else {
                link = &(*link)->hnext;
            }
        }
    }
    s->expired_reclaimed += n;
    maybe_resize(s);
    return n;
}

size_t store_reclaim(struct store *s, int64_t now_ms)
{
    size_t n;

    if (s->cfg.replicated)
        return 0;
    n = sweep(s, now_ms, false);
    s->expired_reclaimed += n;
    maybe_resize(s);
    return n;
}

void store_walk_dead(struct store *s, int64_t now_ms, size_t max_buckets,
                     int (*fn)(void *arg, const struct item *it), void *arg)
{
    struct table *tb = &s->t[0];

    tick(s);
    if (resizing(s)) {
        rehash_step(s, max_buckets);
        return;
    }
    for (size_t k = 0; k < max_buckets && k < tb->size; k++) {
        size_t i = s->expire_cursor & (tb->size - 1);
        for (struct item *it = tb->b[i]; it; it = it->hnext)
            if (!item_live(s, it, now_ms) && (s->nlocks == 0 || !key_locked(s, it)) &&
                fn(arg, it) != 0)
                return; /* this bucket again next time: fn may not have seen all */
        s->expire_cursor++;
    }
}

long store_collect(struct store *s, const char *prefix, size_t nprefix, int64_t now_ms,
                   struct item ***out)
{
    struct item **arr = NULL;
    size_t n = 0, cap = 0;

    tick(s);
    for (int t = 0; t < 2; t++) {
        struct table *tb = &s->t[t];
        for (size_t i = 0; i < tb->size; i++) {
            for (struct item *it = tb->b[i]; it; it = it->hnext) {
                if (!item_live(s, it, now_ms) || it->nkey < nprefix ||
                    (nprefix > 0 && memcmp(it->data, prefix, nprefix) != 0))
                    continue;
                if (n == cap) {
                    size_t ncap = cap ? cap * 2 : 64;
                    struct item **p = realloc(arr, ncap * sizeof(*p));
                    if (p == NULL) {
                        for (size_t k = 0; k < n; k++)
                            item_unref(arr[k]);
                        free(arr);
                        return -ENOMEM;
                    }
                    arr = p;
                    cap = ncap;
                }
                item_ref(it);
                arr[n++] = it;
            }
        }
    }
    *out = arr;
    return (long)n;
}

void store_get_stats(const struct store *s, struct store_stats *st)
{
    st->curr_items = s->t[0].used + s->t[1].used;
    st->total_items = s->total_items;
    st->bytes = s->bytes;
    st->reserved_bytes = s->reserved;
    st->max_bytes = s->cfg.max_bytes;
    st->expired_reclaimed = s->expired_reclaimed;
    st->sweeps = s->sweeps;
    st->hash_buckets = s->t[0].size + s->t[1].size;
    st->hash_bytes = st->hash_buckets * sizeof(struct item *);
    st->hash_is_expanding = resizing(s);
}

/* ---- loading logged effects ---------------------------------------------- */

/* Unlinks whatever item key has, live or dead. */
static void remove_key(struct store *s, const char *key, size_t nkey, uint32_t h)
{
    struct table *tab;
    struct item **link = find_link(s, key, nkey, h, &tab);

    if (link)
        unlink_item(s, tab, link);
}

int store_load_put(struct store *s, const char *key, size_t nkey, const char *value,
                   size_t nvalue, uint32_t flags, int64_t exptime_ms, int64_t mtime_ms,
                   uint64_t cas)
{
    uint32_t h = hash_key(s->cfg.seed, key, nkey);
    struct item *it;

    assert(nkey > 0 && nkey <= LIMIT_KEY_BYTES_MAX);
    tick(s);
    remove_key(s, key, nkey, h);
    if (cas > s->max_cas)
        s->max_cas = cas;
    it = item_new(key, nkey, value, nvalue, NULL, 0);
    if (it == NULL)
        return -ENOMEM;
    it->cas = cas;
    it->flags = flags;
    it->exptime_ms = exptime_ms;
    it->mtime_ms = mtime_ms;
    it->hash = h;
    insert_item(s, it);
    maybe_resize(s);
    return 0;
}

void store_load_del(struct store *s, const char *key, size_t nkey)
{
    tick(s);
    remove_key(s, key, nkey, hash_key(s->cfg.seed, key, nkey));
    maybe_resize(s);
}

void store_load_touch(struct store *s, const char *key, size_t nkey, int64_t exptime_ms)
{
    struct table *tab;
    struct item **link;

    tick(s);
    link = find_link(s, key, nkey, hash_key(s->cfg.seed, key, nkey), &tab);
    if (link) {
        (*link)->exptime_ms = exptime_ms;
        if (exptime_ms != 0 && exptime_ms < s->next_expiry_ms)
            s->next_expiry_ms = exptime_ms;
    }
}

void store_load_flush(struct store *s, int64_t flush_at_ms, int64_t mtime_ms)
{
    struct store_change ch;

    memset(&ch, 0, sizeof(ch));
    ch.type = STORE_FLUSH;
    ch.flush_at_ms = flush_at_ms;
    ch.now_ms = mtime_ms;
    tick(s);
    store_commit(s, &ch);
}

void store_clear(struct store *s)
{
    sweep(s, 0, true);
    s->flush_at_ms = 0;
    s->flush_unswept = false;
    s->max_cas = 0;
}

int64_t store_flush_at(const struct store *s)
{
    return s->flush_at_ms;
}

uint64_t store_max_cas(const struct store *s)
{
    return s->max_cas;
}

/* Calls fn for every stored item (every live one, with live_only). */
static int for_each(struct store *s, bool live_only, int64_t now_ms,
                    int (*fn)(void *arg, const struct item *it), void *arg)
{
    for (int t = 0; t < 2; t++) {
        struct table *tb = &s->t[t];
        for (size_t i = 0; i < tb->size; i++) {
            for (struct item *it = tb->b[i]; it; it = it->hnext) {
                if (live_only && !item_live(s, it, now_ms))
                    continue;
                int r = fn(arg, it);
                if (r)
                    return r;
            }
        }
    }
    return 0;
}

int store_for_each(struct store *s, int64_t now_ms, int (*fn)(void *arg, const struct item *it),
                   void *arg)
{
    return for_each(s, true, now_ms, fn, arg);
}

int store_for_each_stored(struct store *s, int (*fn)(void *arg, const struct item *it),
                          void *arg)
{
    return for_each(s, false, 0, fn, arg);
}

/* FNV-1a over n bytes, continuing from h. */
static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;

    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 0x100000001b3ULL;
    return h;
}

uint64_t store_digest(const struct store *s)
{
    uint64_t sum = fmix64((uint64_t)s->flush_at_ms ^ 0x666c757368ULL);

    for (int t = 0; t < 2; t++) {
        const struct table *tb = &s->t[t];
        for (size_t i = 0; i < tb->size; i++) {
            for (const struct item *it = tb->b[i]; it; it = it->hnext) {
                uint64_t h = fnv(0xcbf29ce484222325ULL, it->data, it->nkey + it->nval);
                h = fnv(h, &it->nkey, sizeof(it->nkey));
                h = fnv(h, &it->flags, sizeof(it->flags));
                h = fnv(h, &it->exptime_ms, sizeof(it->exptime_ms));
                h = fnv(h, &it->mtime_ms, sizeof(it->mtime_ms));
                h = fnv(h, &it->cas, sizeof(it->cas));
                sum += fmix64(h); /* a sum: the table's order does not matter */
            }
        }
    }
    return sum;
}

/* ---- key locks --------------------------------------------------------------- */

static struct lock_entry **lock_link(struct store *s, const char *key, size_t nkey, uint32_t h)
{
    if (s->lock_buckets == 0)
        return NULL;
    struct lock_entry **link = &s->locks[h & (s->lock_buckets - 1)];
    for (; *link; link = &(*link)->next)
        if ((*link)->hash == h && (*link)->nkey == nkey && memcmp((*link)->key, key, nkey) == 0)
            return link;
    return link; /* the empty link at the end of the chain */
}

static int locks_grow(struct store *s)
{
    size_t n = s->lock_buckets ? s->lock_buckets * 2 : 256;
    struct lock_entry **b = calloc(n, sizeof(*b));

    if (b == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < s->lock_buckets; i++) {
        for (struct lock_entry *e = s->locks[i], *next; e; e = next) {
            next = e->next;
            e->next = b[e->hash & (n - 1)];
            b[e->hash & (n - 1)] = e;
        }
    }
    free(s->locks);
    s->locks = b;
    s->lock_buckets = n;
    return 0;
}

static int lock_hashed(struct store *s, const char *key, size_t nkey, uint32_t h, void *owner,
                       void **holder)
{
    struct lock_entry **link, *e;

    assert(owner != NULL && nkey > 0 && nkey <= LIMIT_KEY_BYTES_MAX);
    if (s->nlocks >= s->lock_buckets && locks_grow(s) < 0)
        return -ENOMEM;
    link = lock_link(s, key, nkey, h);
    if (*link) {
        *holder = (*link)->owner;
        return (*link)->owner == owner ? -EDEADLK : -EBUSY;
    }
    if ((e = s->spare_locks) != NULL) {
        s->spare_locks = e->next;
        s->nspare_locks--;
    } else if ((e = malloc(sizeof(*e))) == NULL) {
        return -ENOMEM;
    }
    e->next = NULL;
    e->owner = owner;
    e->hash = h;
    e->nkey = (uint8_t)nkey;
    memcpy(e->key, key, nkey);
    *link = e;
    s->nlocks++;
    return 0;
}

static void unlock_hashed(struct store *s, const char *key, size_t nkey, uint32_t h, void *owner)
{
    struct lock_entry **link = lock_link(s, key, nkey, h);

    if (link && *link && (*link)->owner == owner) {
        struct lock_entry *e = *link;
        *link = e->next;
        s->nlocks--;
        if (s->nspare_locks < SPARE_LOCKS_MAX) {
            e->next = s->spare_locks;
            s->spare_locks = e;
            s->nspare_locks++;
        } else {
            free(e);
        }
    }
}

int store_lock(struct store *s, const char *key, size_t nkey, void *owner, void **holder)
{
    return lock_hashed(s, key, nkey, hash_key(s->cfg.seed, key, nkey), owner, holder);
}

void store_unlock(struct store *s, const char *key, size_t nkey, void *owner)
{
    unlock_hashed(s, key, nkey, hash_key(s->cfg.seed, key, nkey), owner);
}

int store_lock_change(struct store *s, const struct store_change *ch, void *owner, void **holder)
{
    return lock_hashed(s, ch->key, ch->nkey, ch->hash, owner, holder);
}

void store_unlock_change(struct store *s, const struct store_change *ch, void *owner)
{
    unlock_hashed(s, ch->key, ch->nkey, ch->hash, owner);
}

static bool key_locked(const struct store *s, const struct item *it)
{
    struct lock_entry **link =
        lock_link((struct store *)s, item_key(it), it->nkey, it->hash);

    return link && *link;
}

void *store_lock_holder(struct store *s, const char *key, size_t nkey)
{
    if (s->nlocks == 0)
        return NULL; /* the common case: no hash to compute */
    struct lock_entry **link = lock_link(s, key, nkey, hash_key(s->cfg.seed, key, nkey));

    return link && *link ? (*link)->owner : NULL;
}

void *store_lock_holder_prefix(struct store *s, const char *prefix, size_t nprefix)
{
    if (s->nlocks == 0)
        return NULL;
    for (size_t i = 0; i < s->lock_buckets; i++)
        for (struct lock_entry *e = s->locks[i]; e; e = e->next)
            if (e->nkey >= nprefix && memcmp(e->key, prefix, nprefix) == 0)
                return e->owner;
    return NULL;
}

size_t store_locks(const struct store *s)
{
    return s->nlocks;
}
