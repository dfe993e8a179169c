/*
 * fence.c - is a replica's data as recent as its peers know it to be (see
 * fence.h).
 *
 * Why the comparison is sound: a replica votes YES on txid only once its
 * PREPARE record is durable, and that record stays in its log or is
 * covered by its snapshot and its RUN ceiling (every txid it logs is below
 * the ceiling it made durable first). So a replica whose directory is the
 * one it ran with has a mark at or above every txid it voted YES on. A
 * mark below one of them means its directory is not that one any more:
 * emptied, swapped, restored from an older copy. (A log that lost records
 * under --fsync none keeps its RUN and is handled by tpc_history_lost.)
 * seen[] is persisted lazily, so a copy a few seconds older than the
 * directory it replaced can pass; a wiped directory cannot.
 */
#include "fence.h"

#include <string.h>

void fence_init(struct fence *f, uint32_t n, uint64_t mark, const uint64_t *seen)
{
    memset(f, 0, sizeof(*f));
    f->n = n;
    f->mark = mark;
    if (seen)
        memcpy(f->seen, seen, sizeof(f->seen));
}

void fence_logged(struct fence *f, uint64_t txid)
{
    if (txid > f->mark)
        f->mark = txid;
}

void fence_voted(struct fence *f, uint32_t id, uint64_t txid)
{
    if (id < LIMIT_REPLICAS_MAX && txid > f->seen[id])
        f->seen[id] = txid;
}

void fence_committed(struct fence *f, uint32_t self, uint64_t txid)
{
    for (uint32_t id = 0; id < LIMIT_REPLICAS_MAX; id++)
        if (id != self && !f->stale[id] && f->state[id] == FENCE_CURRENT)
            fence_voted(f, id, txid);
}

void fence_link_down(struct fence *f, uint32_t id)
{
    if (id < LIMIT_REPLICAS_MAX)
        f->stale[id] = true;
}

unsigned fence_state_in(struct fence *f, uint32_t id, uint64_t their_mark, uint64_t seen_of_us)
{
    unsigned ch = FENCE_NO_CHANGE;

    if (id >= LIMIT_REPLICAS_MAX)
        return ch;
    f->their_mark[id] = their_mark;
    f->stale[id] = false;
    uint8_t st = their_mark < f->seen[id] ? FENCE_BEHIND : FENCE_CURRENT;
    if (st != f->state[id])
        ch |= st == FENCE_BEHIND ? FENCE_PEER_BEHIND : FENCE_PEER_CURRENT;
    f->state[id] = st;
    /* A peer we find behind cannot vouch for us: its seen[] may be as
     * empty as its data (found by the audit). */
    if (st != FENCE_CURRENT)
        return ch;
    if (seen_of_us > f->mark) {
        if (!f->behind) {
            f->behind = true;
            f->behind_by = id;
            f->behind_seen = seen_of_us;
            ch |= FENCE_SELF_BEHIND;
        }
    } else if (!f->verified && !f->behind) {
        f->verified = true;
        ch |= FENCE_SELF_VERIFIED;
    }
    return ch;
}
