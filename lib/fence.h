/*
 * fence.h - is a replica's data as recent as its peers know it to be?
 *
 * A replica whose data directory was emptied, replaced by an older copy
 * (a backup, a wrong -d) or lost must not answer clients, and its peers
 * must not count its votes or answers: it would serve empty or stale reads
 * and turn writes into conflicts. Each replica keeps, durably (RUN), the
 * highest txid each peer voted YES on - the peer logged that PREPARE
 * before voting - and a mark of its own history: every txid it logged is
 * at or below the mark (at a start, the txid ceiling the last run kept;
 * raised as it logs). When a link comes up each side tells the other its
 * mark and what it saw of it (PEER_FRAME_STATE, the first frame on the
 * link). A peer whose mark is below what we saw it vote on is BEHIND: its
 * data lacks a PREPARE it had durably logged. We are behind if a peer saw
 * us vote on more than our mark. A brand-new cluster (nothing seen,
 * nothing logged) checks out. Pure state, no I/O; the server persists
 * seen[] and acts on the verdicts (DESIGN.md, A replica that is behind).
 */
#ifndef TPCKV_FENCE_H
#define TPCKV_FENCE_H

#include "limits.h"

#include <stdbool.h>
#include <stdint.h>

enum fence_state {
    FENCE_UNKNOWN = 0, /* no STATE from it since we started */
    FENCE_CURRENT = 1, /* its data holds everything we saw it vote on */
    FENCE_BEHIND = 2,  /* it lacks a PREPARE it had voted YES on */
};

struct fence {
    uint32_t n;                            /* replicas, self included */
    uint64_t mark;                         /* our history's high-water txid */
    uint64_t seen[LIMIT_REPLICAS_MAX];     /* by replica id: its highest YES */
    uint8_t state[LIMIT_REPLICAS_MAX];     /* by replica id: enum fence_state */
    uint64_t their_mark[LIMIT_REPLICAS_MAX]; /* what each said of itself */
    bool verified;     /* a peer found us current */
    bool behind;       /* a peer found us behind (sticky: kept in RUN) */
    /* by replica id: its link dropped since its last STATE, so a COMMIT
     * may reflect a vote it cast after a STATE not read yet: COMMITs do
     * not raise its seen[] until its next STATE */
    bool stale[LIMIT_REPLICAS_MAX];
    uint32_t behind_by;       /* that peer */
    uint64_t behind_seen;     /* the txid it saw us vote on */
};

/* What changed with a STATE. */
enum fence_change {
    FENCE_NO_CHANGE = 0,
    FENCE_PEER_CURRENT = 1, /* the peer became CURRENT */
    FENCE_PEER_BEHIND = 2,  /* the peer became BEHIND */
    FENCE_SELF_VERIFIED = 4, /* a peer found us current, for the first time */
    FENCE_SELF_BEHIND = 8,  /* a peer found us behind, for the first time */
};

/* mark: our history's high-water txid (the last run's ceiling, 0 for an
 * empty directory); seen: by replica id, from RUN (NULL: none). */
void fence_init(struct fence *f, uint32_t n, uint64_t mark, const uint64_t *seen);

/* We log a record of txid (raises the mark). */
void fence_logged(struct fence *f, uint64_t txid);

/* Replica id voted YES on txid (or ACKed its commit): it logged it. */
void fence_voted(struct fence *f, uint32_t id, uint64_t txid);

/* A COMMIT of txid from its coordinator: every replica voted YES on it.
 * Raises seen[] of every peer but self and the stale ones. */
void fence_committed(struct fence *f, uint32_t self, uint64_t txid);

/* Our link to id went down: it may be restarting (see stale). */
void fence_link_down(struct fence *f, uint32_t id);

/* A STATE from replica id: its mark, and the highest txid it saw us vote
 * on. Returns an OR of enum fence_change. */
unsigned fence_state_in(struct fence *f, uint32_t id, uint64_t their_mark, uint64_t seen_of_us);

/* May id's messages count (its votes, answers, acks)? */
static inline bool fence_peer_ok(const struct fence *f, uint32_t id)
{
    return id < LIMIT_REPLICAS_MAX && f->state[id] == FENCE_CURRENT;
}

#endif
