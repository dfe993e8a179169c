/*
 * txn.c - replicated writes: encoding a coordinator's change as operations,
 * and the resource manager that prepares them on every replica. See txn.h.
 */
#include "txn.h"

#include "crc32c.h"
#include "recover.h"
#include "wal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

uint64_t txn_version(struct store *s, const char *key, size_t nkey)
{
    struct item *it = store_peek(s, key, nkey);

    return it ? it->cas : 0;
}

void txn_change_to_op(const struct store_change *ch, struct wal_op *op)
{
    memset(op, 0, sizeof(*op));
    op->key = ch->key;
    op->nkey = ch->nkey;
    if (ch->type == STORE_FLUSH) {
        op->kind = WAL_OP_FLUSH;
        op->flush_at_ms = ch->flush_at_ms;
        op->mtime_ms = ch->now_ms;
    } else if (ch->type == STORE_TOUCH) {
        op->kind = WAL_OP_TOUCH;
        op->exptime_ms = ch->exptime_ms;
    } else if (ch->item) {
        const struct item *it = ch->item;
        op->kind = WAL_OP_PUT;
        op->value = item_value(it);
        op->nvalue = it->nval;
        op->flags = it->flags;
        op->exptime_ms = it->exptime_ms;
        op->mtime_ms = it->mtime_ms;
        op->cas = it->cas;
    } else {
        /* delete, or a write born expired: the key goes */
        op->kind = WAL_OP_DEL;
    }
}

static int append_op(struct buf *b, const struct wal_op *op)
{
    size_t n = wal_op_size(op);
    int r = buf_reserve(b, n);

    if (r < 0)
        return r;
    b->len += wal_op_encode(b->data + b->len, op);
    return 0;
}

int txn_encode_change(struct buf *b, const struct store_change *ch, uint64_t expected,
                      uint32_t *nops)
{
    struct wal_op op;
    int r;

    if (ch->type != STORE_FLUSH) {
        struct wal_op check = {.kind = WAL_OP_CHECK,
                               .key = ch->key,
                               .nkey = ch->nkey,
                               .cas = expected,
                               .mtime_ms = ch->now_ms};
        if ((r = append_op(b, &check)) < 0)
            return r;
        ++*nops;
    }
    txn_change_to_op(ch, &op);
    if ((r = append_op(b, &op)) < 0)
        return r;
    ++*nops;
    return 0;
}

struct expire_batch {
    struct buf *b;
    int64_t now_ms;
    uint32_t nreplicas, self_idx, max_keys, keys, nops;
    size_t max_bytes;
    bool full;
    int err;
};

static int expire_pick(void *arg, const struct item *it)
{
    struct expire_batch *eb = arg;
    struct wal_op check = {.kind = WAL_OP_CHECK,
                           .key = item_key(it),
                           .nkey = it->nkey,
                           .cas = it->cas,
                           .mtime_ms = eb->now_ms};
    struct wal_op del = {.kind = WAL_OP_DEL, .key = item_key(it), .nkey = it->nkey};
    size_t len = eb->b->len;

    if (crc32c(0, item_key(it), it->nkey) % eb->nreplicas != eb->self_idx)
        return 0;
    if (len + wal_op_size(&check) + wal_op_size(&del) > eb->max_bytes) {
        eb->full = true;
        return 1;
    }
    if ((eb->err = append_op(eb->b, &check)) < 0 || (eb->err = append_op(eb->b, &del)) < 0) {
        eb->b->len = len;
        return 1;
    }
    eb->nops += 2;
    if (++eb->keys < eb->max_keys)
        return 0;
    eb->full = true;
    return 1;
}

long txn_expire_batch(struct store *s, int64_t now_ms, size_t max_buckets, uint32_t nreplicas,
                      uint32_t self_idx, struct buf *b, uint32_t max_keys, size_t max_bytes,
                      uint32_t *nops, bool *full)
{
    struct expire_batch eb = {.b = b,
                              .now_ms = now_ms,
                              .nreplicas = nreplicas ? nreplicas : 1,
                              .self_idx = self_idx,
                              .max_keys = max_keys,
                              .max_bytes = max_bytes};

    store_walk_dead(s, now_ms, max_buckets, expire_pick, &eb);
    *nops = eb.nops;
    *full = eb.full;
    return eb.err < 0 ? eb.err : (long)eb.keys;
}

static void release(struct txn_rm *rm, struct txn_prep *p, bool commit)
{
    for (size_t i = 0; i < p->nch; i++) {
        struct store_change *ch = &p->ch[i];
        if (ch->status == STORE_OK) {
            if (commit)
                store_commit(rm->store, ch);
            else
                store_abort(rm->store, ch);
        }
        if (ch->type != STORE_FLUSH)
            store_unlock_change(rm->store, ch, p);
    }
    if (rm->flush_holder == p)
        rm->flush_holder = NULL;
    rm->prepared--;
    free(p);
}

void txn_commit(struct txn_rm *rm, struct txn_prep *p)
{
    release(rm, p, true);
}

void txn_abort(struct txn_rm *rm, struct txn_prep *p)
{
    release(rm, p, false);
}

/* The store operation that reproduces a logged effect. */
static void effect_to_store_op(const struct wal_op *w, struct store_op *op, uint64_t *cas,
                               int64_t *now)
{
    memset(op, 0, sizeof(*op));
    op->key = w->key;
    op->nkey = w->nkey;
    op->effect = true;
    switch (w->kind) {
    case WAL_OP_PUT:
        op->type = STORE_SET;
        op->value = w->value;
        op->nvalue = w->nvalue;
        op->flags = w->flags;
        op->exptime_ms = w->exptime_ms;
        *cas = w->cas;
        *now = w->mtime_ms; /* the item's mtime is the coordinator's clock */
        break;
    case WAL_OP_DEL:
        op->type = STORE_DELETE;
        break;
    case WAL_OP_TOUCH:
        op->type = STORE_TOUCH;
        op->exptime_ms = w->exptime_ms;
        break;
    case WAL_OP_FLUSH:
        op->type = STORE_FLUSH;
        op->flush_at_ms = w->flush_at_ms;
        *now = w->mtime_ms;
        break;
    case WAL_OP_CHECK:
        break;
    }
}

/* Is the coordinator's time t too far from ours (struct txn_rm)? */
static bool clock_too_far(const struct txn_rm *rm, int64_t t)
{
    if (rm->clock_ahead_ms > 0 && t > rm->now_ms && t - rm->now_ms > rm->clock_ahead_ms)
        return true;
    return rm->clock_behind_ms > 0 && t < rm->now_ms && rm->now_ms - t > rm->clock_behind_ms;
}

static enum tpc_reason reason_of(enum store_status st)
{
    switch (st) {
    case STORE_TOO_LARGE:
        return TPC_R_TOO_LARGE;
    case STORE_NO_MEMORY:
        return TPC_R_NO_MEMORY;
    default:
        return TPC_R_CONFLICT;
    }
}

int txn_prepare(struct txn_rm *rm, const struct tpc_txn *t, struct txn_prep **out)
{
    struct txn_prep *p;
    struct wal_op w, check = {0};
    bool have_check = false;
    size_t pos = 0;
    int r, reason = 0;

    /* The count comes from a peer or the log: one the bytes cannot hold
     * (no op is shorter than its head) must not size the allocation. */
    if (t->nops == 0 || t->nops > t->nbytes / WAL_OP_BYTES_MIN)
        return TPC_R_BAD_OPS;
    /* One allocation: the head, the caller's area, the changes (a write
     * used to cost three). */
    size_t user = (rm->user_bytes + 15) & ~(size_t)15;
    size_t head = (sizeof(*p) + 15) & ~(size_t)15;
    if ((p = calloc(1, head + user + (size_t)t->nops * sizeof(*p->ch))) == NULL)
        return TPC_R_NO_MEMORY;
    p->user = rm->user_bytes ? (char *)p + head : NULL;
    p->ch = (void *)((char *)p + head + user); /* head and user are 16-aligned */
    rm->prepared++;
    if (rm->flush_holder) {
        reason = TPC_R_BUSY;
        goto fail;
    }
    for (uint32_t i = 0; i < t->nops; i++) {
        if ((r = wal_op_next(t->ops, t->nbytes, &pos, &w)) != 1) {
            reason = TPC_R_BAD_OPS;
            goto fail;
        }
        if ((w.kind == WAL_OP_CHECK || w.kind == WAL_OP_FLUSH) && !t->recovered &&
            clock_too_far(rm, w.mtime_ms)) {
            reason = TPC_R_CLOCK;
            goto fail;
        }
        if (w.kind == WAL_OP_CHECK) {
            check = w;
            have_check = true;
            continue;
        }
        struct store_change *ch = &p->ch[p->nch];
        struct store_op op;
        uint64_t cas = t->txid;
        int64_t now = 0;

        if (w.kind == WAL_OP_FLUSH) {
            /* Every key: nothing else may be prepared. */
            if (store_locks(rm->store) > 0 || rm->prepared > 1) {
                reason = TPC_R_BUSY;
                goto fail;
            }
            p->flush = true;
        } else {
            void *holder;
            if (!have_check || check.nkey != w.nkey ||
                memcmp(check.key, w.key, w.nkey) != 0) {
                reason = TPC_R_BAD_OPS;
                goto fail;
            }
            r = store_lock(rm->store, w.key, w.nkey, p, &holder);
            if (r == -EBUSY) {
                reason = TPC_R_BUSY;
                goto fail;
            }
            if (r == -ENOMEM) {
                reason = TPC_R_NO_MEMORY;
                goto fail;
            }
            if (r == -EDEADLK) { /* the same key twice: one change is enough */
                have_check = false;
                continue;
            }
            /* The stored version, dead or alive: liveness is a question of
             * clocks, which differ; what is stored does not. */
            if (!t->recovered && txn_version(rm->store, w.key, w.nkey) != check.cas) {
                store_unlock(rm->store, w.key, w.nkey, p);
                reason = TPC_R_CONFLICT;
                goto fail;
            }
        }
        have_check = false;
        effect_to_store_op(&w, &op, &cas, &now);
        op.unlimited = t->recovered; /* durable before the crash: it must fit */
        p->nch++;
        if (store_prepare(rm->store, &op, cas, now, ch) < 0) {
            /* A delete or touch of a key with no item changes nothing
             * (after a restart, whose checks are skipped); anything else is
             * a refusal (the check said it would work). */
            if (w.kind == WAL_OP_DEL || w.kind == WAL_OP_TOUCH) {
                ch->status = STORE_NOT_FOUND; /* no change to commit */
                continue;
            }
            reason = reason_of(ch->status);
            ch->status = STORE_NOT_FOUND;
            goto fail;
        }
    }
    if (pos != t->nbytes || p->nch == 0) {
        reason = TPC_R_BAD_OPS;
        goto fail;
    }
    if (p->flush)
        rm->flush_holder = p;
    *out = p;
    return 0;
fail:
    release(rm, p, false);
    return reason;
}

struct txn_prep *txn_holder(struct txn_rm *rm, const char *key, size_t nkey)
{
    if (rm->flush_holder)
        return rm->flush_holder;
    return store_lock_holder(rm->store, key, nkey);
}

struct txn_prep *txn_holder_prefix(struct txn_rm *rm, const char *prefix, size_t nprefix)
{
    if (rm->flush_holder)
        return rm->flush_holder;
    return store_lock_holder_prefix(rm->store, prefix, nprefix);
}

int txn_resume(struct tpc *t, const struct recover_ledger *l, uint64_t now_us,
               uint64_t *bad_txid)
{
    int r;

    for (size_t i = 0; i < l->nprepared; i++) {
        const struct recover_txn *x = &l->prepared[i];
        struct tpc_txn txn = {.txid = x->txid,
                              .epoch = x->epoch,
                              .coord = x->coord,
                              .nops = x->nops,
                              .ops = x->ops,
                              .nbytes = x->nbytes};
        if ((r = tpc_recover_prepared(t, &txn, now_us)) < 0) {
            *bad_txid = x->txid;
            return r;
        }
    }
    for (size_t i = 0; i < l->ncommitted; i++) {
        r = tpc_recover_committed(t, l->committed[i].txid, l->committed[i].epoch, now_us);
        if (r < 0 && r != -EEXIST) {
            *bad_txid = l->committed[i].txid;
            return r;
        }
    }
    /* Oldest first, so the table forgets the oldest if it must. */
    for (size_t i = 0; i < l->ndecided; i++) {
        const struct recover_decided *d = &l->decided[(l->decided_head + i) % l->decided_max];
        r = tpc_recover_decided(t, d->txid, d->epoch, d->coord, d->committed, now_us);
        if (r < 0 && r != -EEXIST) {
            *bad_txid = d->txid;
            return r;
        }
    }
    tpc_recovered(t, now_us);
    return 0;
}

/* Encodes a 2PC log record's payload (txn head, then PREPARE's ops). */
int txn_encode_record(struct buf *b, const struct tpc_txn *t)
{
    struct wal_txn head = {.txid = t->txid,
                           .epoch = t->epoch,
                           .coordinator = t->coord,
                           .nops = t->ops ? t->nops : 0};
    int r;

    b->len = 0;
    if ((r = buf_reserve(b, WAL_TXN_BYTES + (t->ops ? t->nbytes : 0))) < 0)
        return r;
    wal_txn_encode(b->data, &head);
    b->len = WAL_TXN_BYTES;
    if (t->ops) {
        memcpy(b->data + b->len, t->ops, t->nbytes);
        b->len += t->nbytes;
    }
    return 0;
}
