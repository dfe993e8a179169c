/*
 * view.h - the cluster's membership views (DESIGN.md, Availability): one
 * Paxos instance per epoch decides the next view (its members and the
 * settlement of the transactions left in doubt), every replica an
 * acceptor. Pure state, no I/O, no clock read: the caller sends what the
 * functions say, makes the acceptor's state durable before answering, and
 * passes times read from its monotonic clock (nanoseconds).
 *
 * A proposer, for epoch e+1 with ballot b (round << 8 | its id):
 *   1. PROMISE-REQ(e+1, b) to all; each acceptor in epoch e that promised
 *      nothing higher promises, and answers with what it accepted, whether
 *      it is current, its lease hold and its transactions in doubt;
 *   2. with promises from a majority (and as many more as the caller cares
 *      to wait for), KNOW-REQ(the union of those doubts) to the promisers,
 *      who answer what each knows of each one (enum view_know);
 *   3. the value: an accepted one with the highest ballot if any promiser
 *      reported one (Paxos), else the members wanted that are current
 *      promisers (a majority of all, or it fails) and view_settle() of each
 *      doubt; then it waits out the promisers' lease holds;
 *   4. ACCEPT(e+1, b, value); chosen once a majority accepted; INSTALL.
 */
#ifndef TPCKV_VIEW_H
#define TPCKV_VIEW_H

#include "lease.h"
#include "limits.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What one replica knows of a transaction in doubt somewhere. */
enum view_know {
    VIEW_K_NONE = 0,      /* no answer from it */
    VIEW_K_ABSENT = 1,    /* never prepared it, and refuses it from now on */
    VIEW_K_PREPARED = 2,  /* prepared, no decision */
    VIEW_K_COMMITTED = 3, /* knows it committed */
    VIEW_K_ABORTED = 4,   /* knows it aborted (applied before its promise) */
    VIEW_K_UNSURE = 5,    /* cannot tell (a decision it may have forgotten) */
};

enum view_outcome {
    VIEW_UNDECIDED = 0, /* stays in doubt, keys locked, until more replicas answer */
    VIEW_COMMIT = 1,
    VIEW_ABORT = 2,
};

/* A transaction in doubt: who coordinated it and the members of its view. */
struct view_doubt {
    uint64_t txid;
    uint32_t coord;   /* replica id */
    uint32_t members; /* bit per replica id: the members of the view it was prepared in */
    uint8_t know[LIMIT_REPLICAS_MAX]; /* by replica id: enum view_know */
};

/*
 * The settlement rules (DESIGN.md, Settlement), given the promisers that
 * answered (bit per id, their answers in d->know): (1) a decision one of
 * them knows; (2) abort if a member of its view is absent; (3) abort if its
 * coordinator promised holding it undecided (it may no longer decide), but
 * leave it undecided if the coordinator cannot tell; (4) commit if every
 * member but the coordinator holds it prepared; (5) undecided.
 * *conflict is set when promisers report both outcomes (a bug elsewhere).
 */
enum view_outcome view_settle(const struct view_doubt *d, uint32_t promisers,
                              bool *conflict);

struct view_settled {
    uint64_t txid;
    uint8_t outcome; /* enum view_outcome */
};

/* A view with the settlement that comes with it (the Paxos value). */
struct view_value {
    uint64_t epoch;
    uint32_t members;
    uint32_t nsettled;
    struct view_settled *settled; /* malloc'ed, nsettled entries */
};

void view_value_free(struct view_value *v);
/* A deep copy into dst (freed first). Returns 0 or -ENOMEM. */
int view_value_copy(struct view_value *dst, const struct view_value *src);

/* How many replicas of n make a majority. */
uint32_t view_majority(uint32_t n);

/* ---- the acceptor (every replica; its fields are what RUN keeps) ---- */

struct view_acceptor {
    uint32_t n, self;
    uint64_t epoch; /* the installed view */
    uint32_t members;
    uint64_t promised;       /* highest ballot promised for epoch + 1 (0: none) */
    uint64_t accepted;       /* ballot of the value accepted for epoch + 1 (0: none) */
    struct view_value value; /* that value */
};

enum view_verdict {
    VIEW_OK = 0,
    VIEW_LOWER = 1,  /* a higher ballot was promised: answer with it */
    VIEW_AHEAD = 2,  /* this replica installed a later epoch: answer with it */
    VIEW_BEHIND = 3, /* this replica missed a view: it must catch up first */
};

/* Epoch 1 with every replica a member, or what RUN kept. */
void view_acceptor_init(struct view_acceptor *a, uint32_t n, uint32_t self,
                        uint64_t epoch, uint32_t members);
void view_acceptor_free(struct view_acceptor *a);

/* Whether replica id is a member of the installed view. */
bool view_is_member(const struct view_acceptor *a, uint32_t id);

/* PROMISE-REQ for new_epoch with ballot. VIEW_OK: promised (persist it,
 * then stop PREPAREs and grants of the old epoch, and answer). */
enum view_verdict view_on_promise_req(struct view_acceptor *a, uint64_t new_epoch,
                                      uint64_t ballot);

/* ACCEPT of v with ballot. VIEW_OK: accepted (persist, then answer);
 * -ENOMEM is possible. */
int view_on_accept(struct view_acceptor *a, const struct view_value *v, uint64_t ballot);

/* INSTALL of a chosen v (v->epoch = epoch + 1). VIEW_OK: the caller logs
 * it, applies its settlement and acts in the new view. */
enum view_verdict view_install(struct view_acceptor *a, const struct view_value *v);

/* ---- the proposer ---- */

enum view_phase {
    VIEW_P_IDLE = 0,
    VIEW_P_PROMISING, /* waiting for promises */
    VIEW_P_KNOWING,   /* waiting for what the promisers know of the doubts */
    VIEW_P_WAITING,   /* value ready; waiting out the lease holds */
    VIEW_P_ACCEPTING, /* ACCEPT sent */
    VIEW_P_CHOSEN,    /* a majority accepted: INSTALL */
    VIEW_P_FAILED,    /* no value possible (see why) */
};

/* One promise as it arrived. */
struct view_promise {
    uint64_t accepted;              /* ballot of a value it accepted (0: none) */
    const struct view_value *value; /* ... that value */
    bool current;                   /* a member of the old view, or caught up */
    bool amnesiac;    /* its acceptor state was lost (an empty replacement not yet
                         a member of a view chosen without it): it may become a
                         member, but counts for no majority, and is not asked
                         what it knows */
    uint64_t hold_ns; /* its lease hold still running */
    uint32_t ndoubt;
    const struct view_doubt *doubt; /* txid, coord, members (know ignored) */
};

struct view_proposer {
    uint32_t n, self;
    struct lease_config lease;
    enum view_phase phase;
    const char *why; /* VIEW_P_FAILED: a sentence */
    uint64_t epoch;  /* the epoch being decided */
    uint64_t ballot;
    uint32_t want;      /* members wanted (bit per id) */
    uint32_t promised;  /* who promised (acceptors whose state is whole) */
    uint32_t amnesiacs; /* promised, but with no acceptor state */
    uint32_t current;   /* ... and is current */
    uint32_t asked;     /* promisers asked what they know (fixed at KNOW-REQ) */
    uint32_t knew;      /* ... and answered */
    uint32_t accepted_by;
    uint64_t best; /* highest accepted ballot among the promises */
    struct view_value best_value;
    uint64_t wait_until; /* proposer clock: every promiser's hold is over */
    uint32_t ndoubt, cap;
    struct view_doubt *doubt;
    struct view_value value; /* what ACCEPT carries */
};

/* Starts deciding epoch with ballot (round << 8 | self), wanting `want`
 * as members. */
void view_propose(struct view_proposer *p, uint32_t n, uint32_t self,
                  const struct lease_config *lease, uint64_t epoch, uint64_t round,
                  uint32_t want);
void view_proposer_free(struct view_proposer *p);

/* A promise from replica `from`, received at now. Returns 0, or -ENOMEM. */
int view_on_promise(struct view_proposer *p, uint32_t from, const struct view_promise *pr,
                    uint64_t now);

/* Whether promises from a majority are in (the caller may wait for more). */
bool view_have_majority(const struct view_proposer *p);

/*
 * Stops taking promises. Returns VIEW_P_KNOWING (ask p->asked what they
 * know of p->doubt[0..ndoubt)), VIEW_P_WAITING (nothing to ask; the value
 * is ready), or VIEW_P_FAILED (p->why).
 */
enum view_phase view_close_promises(struct view_proposer *p);

/* What promiser `from` knows of each doubt (know[i] for p->doubt[i]).
 * Returns the phase: VIEW_P_WAITING once every asked promiser answered. */
enum view_phase view_on_know(struct view_proposer *p, uint32_t from, const uint8_t *know,
                             uint32_t nknow);

/* Whether ACCEPT may go out at now (the holds are over); moves to
 * VIEW_P_ACCEPTING when it returns true. */
bool view_may_accept(struct view_proposer *p, uint64_t now);

/* An ACCEPTED from replica `from`. Returns the phase (VIEW_P_CHOSEN once a
 * majority accepted). */
enum view_phase view_on_accepted(struct view_proposer *p, uint32_t from);

#endif
