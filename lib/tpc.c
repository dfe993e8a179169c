/*
 * tpc.c - two-phase commit, presumed abort, every replica a participant.
 *
 * One struct tpc per replica plays both roles: coordinator of the writes its
 * clients send, participant in every write (its own included). Transactions
 * are identified by txid = (sequence << 8) | coordinator id; the sequence is
 * above the wall clock in microseconds and above every id handed out before,
 * so ids stay unique across restarts without being logged.
 *
 * COORDINATOR, per transaction (cstate):
 *
 *   begin ─ local prepare, log PREPARE, send PREPARE to every peer
 *     │
 *   C_PREPARING ── a NO vote, --prepare-timeout-ms, a peer link down ──► abort
 *     │ every vote YES (ours once our PREPARE is durable)
 *     │ log COMMIT (forced)
 *   C_COMMITTING ── COMMIT durable: the commit point. Reply to the client,
 *     │             apply locally, send COMMIT to every peer.
 *   C_COMMITTED ─── resend COMMIT every resend_us (and when a link comes up)
 *     │ every peer ACKed
 *     │ log END (not forced)
 *   forgotten (remembered as COMMITTED for a while, to answer queries)
 *
 *   abort: reply to the client, release the local prepare, log ABORT (not
 *   forced), send ABORT to every peer. Nothing waits for acknowledgement:
 *   a participant that never hears of the decision asks, and a coordinator
 *   that has no record of a transaction answers UNKNOWN, which means aborted.
 *
 * PARTICIPANT, per transaction (pstate):
 *
 *   PREPARE ─ resource manager prepare (locks, checks, reserves)
 *     │ no: VOTE NO(reason); remembered as ABORTED
 *     │ yes: log PREPARE (forced)
 *   P_PREPARING ── PREPARE durable ──► VOTE YES
 *   P_PREPARED ─── COMMIT: apply, log COMMIT (forced), ACK once durable
 *     │        ─── ABORT: release, log ABORT (not forced)
 *     │        ─── nothing by --prepare-timeout-ms: QUERY the coordinator and
 *     │            every other replica, again every resend_us. An answer
 *     │            COMMITTED or ABORTED from anyone decides; UNKNOWN decides
 *     │            ABORTED only when it comes from the coordinator.
 *   P_DONE (remembered)
 *
 * A participant's COMMIT is forced before its ACK: once every ACK is in, the
 * coordinator forgets, and a participant that then restarted with only the
 * PREPARE in its log would be told UNKNOWN, that is aborted.
 *
 * Duplicates and late messages: a decided transaction is remembered (up to
 * remembered_max of them) so a repeated PREPARE is not prepared again, a
 * repeated COMMIT is ACKed again, and an ABORT that overtakes its PREPARE
 * makes the PREPARE vote NO. A PREPARE whose txid is known with other
 * operations (a coordinator that crashed before its first use of the id was
 * durable can reuse it) votes NO. A COMMIT for a txid not known at all is ACKed:
 * it can only be one this replica committed and forgot (a coordinator
 * commits only with every participant's YES, and a YES is durable).
 *
 * Recovery: the server replays its log and hands over each PREPARE with no
 * decision after it (tpc_recover_prepared: locks are taken again), each
 * COMMIT it coordinated with no END (tpc_recover_committed: resent until
 * ACKed) and the newest decisions replayed (tpc_recover_decided:
 * remembered). tpc_recovered() then aborts the undecided ones it
 * coordinated (no COMMIT record, so no one can have committed them); the
 * others are queried at once.
 *
 * A LOG THAT LOST RECORDS (tpc_history_lost: --fsync none and a power cut)
 * breaks "no record here means it never happened here" for the txids it
 * may have held (below lost_before). For those: a COMMIT with no record is
 * not ACKed; a QUERY about an unknown one, or about one recovered prepared
 * (its COMMIT may be what was lost), is answered LOST; what was recovered
 * in doubt is never presumed aborted (ours) nor aborted on the
 * coordinator's UNKNOWN (which our lost ACK may have caused). It commits on
 * COMMITTED and aborts on ABORTED from anyone. Only its coordinator may
 * abort it for want of a decision: when every other replica answers
 * PENDING over the links it opened after its restart (doubt_answer says
 * why that is a fence). A coordinator asked about one of its own it has no
 * record of at all settles it that way too (a ghost). New txids start at
 * lost_before, so none of this applies to what begins after the restart.
 */
#include "tpc.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

enum cstate { C_NONE, C_PREPARING, C_COMMITTING, C_COMMITTED };
enum pstate { P_NONE, P_PREPARING, P_PREPARED, P_DONE };

/* What a durable lsn means for the transaction that waits on it. */
enum wait_kind { W_PREPARE, W_COMMIT_COORD, W_COMMIT_PART };

struct tx {
    struct tx *hnext;         /* hash chain */
    struct tx *anext, *aprev; /* active list (undecided, or awaiting ACKs) */
    struct tx *rnext;         /* remembered FIFO */
    uint64_t txid, epoch;
    uint64_t view;    /* the view it was prepared in */
    uint32_t members; /* ... and that view's members (bitmask over replica index) */
    uint32_t coord;
    uint8_t cstate, pstate;
    uint8_t no_reason; /* the reason of the NO we voted (0: none) */
    uint8_t outcome;   /* enum tpc_outcome once decided, else TPC_O_PENDING */
    bool active, remembered, prepare_logged, ack_durable, queried;
    /* Its decision may be among the records a lost log lost
     * (tpc_history_lost): the coordinator's UNKNOWN does not mean aborted
     * (ours may have let it forget a commit), and if we coordinated it, we
     * settle it by asking (see doubt_answer). */
    bool lost_decision;
    bool ghost;            /* ours, no record of it left at all: asked about
                              by a participant in doubt (QUERY), we settle it */
    uint32_t nothing_from; /* ours: replicas that answered PENDING */
    bool told;             /* the coordinator's client has had its answer (env.done) */
    /* participant */
    void *handle;
    uint64_t query_at_us;
    /* coordinator */
    void *client;
    uint32_t yes, acks; /* bitmasks over replica index */
    uint64_t begun_us, deadline_us, resend_at_us, commit_lsn;
    /* operations (while undecided) */
    char *ops;
    uint32_t nops, nbytes;
};

struct txtab {
    struct tx **b; /* chains through hnext */
    size_t n, count;
};

/* The remembered decisions: open addressing, the txid in the slot, so a
 * lookup (most are of a txid not there: every new PREPARE) costs one
 * cache miss, not one per chained record. */
struct gslot {
    uint64_t txid;
    struct tx *x; /* NULL: empty */
};

struct gonetab {
    struct gslot *s;
    size_t n, count; /* n a power of two, count <= n / 2 */
};

struct wait {
    uint64_t lsn;
    uint64_t txid;
    uint8_t kind;
};

struct tpc {
    struct tpc_config cfg;
    struct tpc_env env;
    uint32_t self_idx;
    uint32_t all;        /* mask of every replica */
    uint64_t view;       /* the current view (DESIGN.md, Availability) */
    uint32_t members;    /* its members (bitmask over replica index) */
    uint64_t promised;   /* > view: promised a later view (frozen) */
    uint64_t forgot_seq; /* a decision of a txid whose sequence is at or below
                            this may have been forgotten (evicted, or from
                            before a restart) */
    bool up[TPC_REPLICAS_MAX];
    bool log_failed;
    bool history_lost;    /* tpc_history_lost */
    uint64_t lost_before; /* ... for txids below this */
    uint64_t seq, min_seq;
    uint64_t now_us;
    /* Two tables: the live transactions (a few hundred: they stay in the
     * cache, and almost every message is about one of them) and the
     * remembered decisions (up to remembered_max: megabytes, a cache miss
     * or two per lookup). */
    struct txtab live;
    struct gonetab gone;
    struct tx *active;
    struct tx *rhead, *rtail;
    size_t nremembered;
    struct tx *spare; /* freed transactions kept for reuse (hnext-linked) */
    size_t nspare;
    struct wait *waits; /* ring of records awaiting durability, lsn order */
    size_t whead, wlen, wcap;
    struct tpc_stats st;
};

static const char *const reason_names[TPC_REASON_MAX + 1] = {
    "none",      "busy",      "conflict",        "no_memory",   "log_failed",
    "timeout",   "peer_down", "bad_ops",         "recovery",    "stopping",
    "too_large", "clock",     "outcome_unknown", "view_change", "not_member",
};

const char *tpc_reason_name(enum tpc_reason r)
{
    return (unsigned)r <= TPC_REASON_MAX ? reason_names[r] : "invalid";
}

const char *tpc_outcome_name(enum tpc_outcome o)
{
    switch (o) {
    case TPC_O_UNKNOWN:
        return "unknown";
    case TPC_O_COMMITTED:
        return "committed";
    case TPC_O_ABORTED:
        return "aborted";
    case TPC_O_LOST:
        return "lost";
    case TPC_O_PENDING:
        return "pending";
    }
    return "invalid";
}

const char *tpc_msg_type_name(enum tpc_msg_type t)
{
    static const char *const names[TPC_MSG_TYPE_MAX + 1] = {
        "?", "PREPARE", "VOTE", "COMMIT", "ABORT", "ACK", "QUERY", "ANSWER"};
    return (unsigned)t <= TPC_MSG_TYPE_MAX ? names[t] : "?";
}

/* ---- replicas ---------------------------------------------------------------- */

static int idx_of(const struct tpc *t, uint32_t id)
{
    for (uint32_t i = 0; i < t->cfg.n; i++)
        if (t->cfg.ids[i] == id)
            return (int)i;
    return -1;
}

static uint32_t bit_of(const struct tpc *t, uint32_t id)
{
    int i = idx_of(t, id);
    return i < 0 ? 0 : 1u << i;
}

/* A set of replica ids as a bitmask over replica index, and back. */
static uint32_t idx_mask(const struct tpc *t, uint32_t ids)
{
    uint32_t m = 0;

    for (uint32_t i = 0; i < t->cfg.n; i++)
        if (ids & (1u << t->cfg.ids[i]))
            m |= 1u << i;
    return m;
}

static uint32_t id_mask(const struct tpc *t, uint32_t idx)
{
    uint32_t m = 0;

    for (uint32_t i = 0; i < t->cfg.n; i++)
        if (idx & (1u << i))
            m |= 1u << t->cfg.ids[i];
    return m;
}

static bool frozen(const struct tpc *t)
{
    return t->promised > t->view;
}

static bool self_member(const struct tpc *t)
{
    return (t->members & (1u << t->self_idx)) != 0;
}

/* Every member whose ACK a commit of x needs has sent it: the members of
 * its view that are still members (a replica left out catches up). */
static bool acks_done(const struct tpc *t, const struct tx *x)
{
    uint32_t need = x->members & t->members;

    return (x->acks & need) == need;
}

/* ---- the transaction table --------------------------------------------------- */

static size_t bucket_of(size_t nbuckets, uint64_t txid)
{
    return (size_t)((txid * 0x9e3779b97f4a7c15ull) >> 32) & (nbuckets - 1);
}

static struct tx *tab_find(const struct txtab *tb, uint64_t txid)
{
    for (struct tx *x = tb->b[bucket_of(tb->n, txid)]; x; x = x->hnext)
        if (x->txid == txid)
            return x;
    return NULL;
}

static size_t gone_home(const struct gonetab *g, uint64_t txid)
{
    return bucket_of(g->n, txid);
}

static struct tx *gone_find(const struct gonetab *g, uint64_t txid)
{
    for (size_t i = gone_home(g, txid);; i = (i + 1) & (g->n - 1)) {
        if (g->s[i].x == NULL)
            return NULL;
        if (g->s[i].txid == txid)
            return g->s[i].x;
    }
}

static void gone_put(struct gonetab *g, struct tx *x)
{
    size_t i = gone_home(g, x->txid);

    while (g->s[i].x != NULL)
        i = (i + 1) & (g->n - 1);
    g->s[i] = (struct gslot){x->txid, x};
    g->count++;
}

static void gone_grow(struct gonetab *g)
{
    struct gonetab bigger = {.n = g->n * 2};

    if ((bigger.s = calloc(bigger.n, sizeof(*bigger.s))) == NULL)
        return; /* fuller, longer probes, still correct: add never fills it */
    for (size_t i = 0; i < g->n; i++)
        if (g->s[i].x)
            gone_put(&bigger, g->s[i].x);
    free(g->s);
    *g = bigger;
}

static void gone_add(struct gonetab *g, struct tx *x)
{
    if (g->count + 1 > g->n / 2)
        gone_grow(g);
    if (g->count + 1 < g->n) /* always true unless growing failed again and again */
        gone_put(g, x);
}

/* Removes x, shifting back the records after it that probed past its slot
 * (linear probing without tombstones). */
static void gone_remove(struct gonetab *g, struct tx *x)
{
    size_t mask = g->n - 1, i = gone_home(g, x->txid);

    while (g->s[i].x != x) {
        if (g->s[i].x == NULL)
            return; /* not here (its add failed) */
        i = (i + 1) & mask;
    }
    for (size_t j = (i + 1) & mask; g->s[j].x != NULL; j = (j + 1) & mask) {
        size_t k = gone_home(g, g->s[j].txid);
        /* s[j] may move to the hole at i if its home is not in (i, j]. */
        bool stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
        if (!stays) {
            g->s[i] = g->s[j];
            i = j;
        }
    }
    g->s[i] = (struct gslot){0, NULL};
    g->count--;
}

static struct tx *tx_find(const struct tpc *t, uint64_t txid)
{
    struct tx *x = tab_find(&t->live, txid);

    return x ? x : gone_find(&t->gone, txid);
}

static int tab_init(struct txtab *tb)
{
    tb->n = 256;
    tb->count = 0;
    tb->b = calloc(tb->n, sizeof(*tb->b));
    return tb->b ? 0 : -ENOMEM;
}

static void tab_grow(struct txtab *tb)
{
    size_t n = tb->n * 2;
    struct tx **b = calloc(n, sizeof(*b));

    if (b == NULL)
        return; /* longer chains, still correct */
    for (size_t i = 0; i < tb->n; i++) {
        struct tx *x = tb->b[i];
        while (x) {
            struct tx *next = x->hnext;
            size_t j = bucket_of(n, x->txid);
            x->hnext = b[j];
            b[j] = x;
            x = next;
        }
    }
    free(tb->b);
    tb->b = b;
    tb->n = n;
}

static void tab_add(struct txtab *tb, struct tx *x)
{
    if (tb->count >= tb->n * 2)
        tab_grow(tb);
    size_t i = bucket_of(tb->n, x->txid);
    x->hnext = tb->b[i];
    tb->b[i] = x;
    tb->count++;
}

static void tab_remove(struct txtab *tb, struct tx *x)
{
    struct tx **pp = &tb->b[bucket_of(tb->n, x->txid)];

    while (*pp != x)
        pp = &(*pp)->hnext;
    *pp = x->hnext;
    tb->count--;
}

/* Up to this many freed transactions are kept for reuse: a replica forgets
 * one for each it learns of, so malloc and free per transaction go. */
#define SPARE_TX_MAX 1024

static struct tx *tx_new(struct tpc *t, uint64_t txid, uint64_t epoch, uint32_t coord)
{
    struct tx *x = t->spare;

    if (x) {
        t->spare = x->hnext;
        t->nspare--;
        memset(x, 0, sizeof(*x));
    } else if ((x = calloc(1, sizeof(*x))) == NULL) {
        return NULL;
    }
    x->txid = txid;
    x->epoch = epoch;
    x->view = t->view;
    x->members = t->members;
    x->coord = coord;
    x->outcome = TPC_O_PENDING;
    tab_add(&t->live, x);
    return x;
}

static void tx_unhash(struct tpc *t, struct tx *x)
{
    if (x->remembered)
        gone_remove(&t->gone, x);
    else
        tab_remove(&t->live, x);
}

static void active_add(struct tpc *t, struct tx *x)
{
    if (x->active)
        return;
    x->active = true;
    x->aprev = NULL;
    x->anext = t->active;
    if (t->active)
        t->active->aprev = x;
    t->active = x;
}

static void active_remove(struct tpc *t, struct tx *x)
{
    if (!x->active)
        return;
    x->active = false;
    if (x->aprev)
        x->aprev->anext = x->anext;
    else
        t->active = x->anext;
    if (x->anext)
        x->anext->aprev = x->aprev;
    x->anext = x->aprev = NULL;
}

static void tx_free(struct tx *x)
{
    free(x->ops);
    free(x);
}

/* A transaction out of the table for good: kept for reuse, or freed. */
static void tx_release(struct tpc *t, struct tx *x)
{
    if (t->nspare >= SPARE_TX_MAX) {
        tx_free(x);
        return;
    }
    free(x->ops);
    x->ops = NULL;
    x->hnext = t->spare;
    t->spare = x;
    t->nspare++;
}

/* A decided transaction leaves the active list and is remembered; the
 * oldest remembered are forgotten past remembered_max (but not one whose
 * participant COMMIT is not durable yet: its ACK is still to go). */
static void remember(struct tpc *t, struct tx *x)
{
    active_remove(t, x);
    free(x->ops);
    x->ops = NULL;
    if (!x->remembered) {
        tab_remove(&t->live, x);
        x->remembered = true;
        gone_add(&t->gone, x);
        x->rnext = NULL;
        if (t->rtail)
            t->rtail->rnext = x;
        else
            t->rhead = x;
        t->rtail = x;
        t->nremembered++;
    }
    /* After a log failure nothing becomes durable: an ACK still to go
     * never will (and none is sent), so it holds nothing back. */
    while (t->nremembered > t->cfg.remembered_max && t->rhead &&
           (t->rhead->pstate != P_DONE || t->rhead->outcome != TPC_O_COMMITTED ||
            t->rhead->ack_durable || t->rhead->coord == t->cfg.self || t->log_failed)) {
        struct tx *old = t->rhead;
        if ((old->txid >> 8) > t->forgot_seq)
            t->forgot_seq = old->txid >> 8;
        t->rhead = old->rnext;
        if (t->rhead == NULL)
            t->rtail = NULL;
        t->nremembered--;
        tx_unhash(t, old);
        tx_release(t, old);
    }
}

/* ---- durability waits ------------------------------------------------------------ */

static int wait_push(struct tpc *t, uint64_t lsn, uint64_t txid, enum wait_kind kind)
{
    if (t->wlen == t->wcap) {
        size_t cap = t->wcap ? t->wcap * 2 : 64;
        struct wait *w = malloc(cap * sizeof(*w));
        if (w == NULL)
            return -ENOMEM;
        for (size_t i = 0; i < t->wlen; i++)
            w[i] = t->waits[(t->whead + i) % t->wcap];
        free(t->waits);
        t->waits = w;
        t->wcap = cap;
        t->whead = 0;
    }
    t->waits[(t->whead + t->wlen) % t->wcap] =
        (struct wait){.lsn = lsn, .txid = txid, .kind = (uint8_t)kind};
    t->wlen++;
    return 0;
}

/* ---- output helpers ------------------------------------------------------------- */

static void txn_of(const struct tx *x, struct tpc_txn *txn)
{
    *txn = (struct tpc_txn){.txid = x->txid,
                            .epoch = x->epoch,
                            .coord = x->coord,
                            .nops = x->nops,
                            .ops = x->ops,
                            .nbytes = x->nbytes};
}

static void send_msg(struct tpc *t, uint32_t to, uint8_t type, const struct tx *x,
                     uint8_t arg)
{
    struct tpc_msg m = {.type = type,
                        .from = t->cfg.self,
                        .to = to,
                        .epoch = t->cfg.epoch,
                        .view = x->view,
                        .txid = x->txid,
                        .coord = x->coord};

    if (type == TPC_MSG_VOTE) {
        m.vote = arg == 0;
        m.reason = arg;
    } else if (type == TPC_MSG_ABORT) {
        m.reason = arg;
    } else if (type == TPC_MSG_ANSWER) {
        m.outcome = arg;
    } else if (type == TPC_MSG_PREPARE) {
        m.resent = arg != 0; /* sent again: no vote came */
        m.nops = x->nops;
        m.ops = x->ops;
        m.nbytes = x->nbytes;
    }
    t->st.msgs_out[type]++;
    t->env.send(t->env.ctx, &m);
}

static void send_peers(struct tpc *t, uint8_t type, const struct tx *x, uint8_t arg)
{
    for (uint32_t i = 0; i < t->cfg.n; i++)
        if (i != t->self_idx)
            send_msg(t, t->cfg.ids[i], type, x, arg);
}

/* To the other members of x's view. */
static void send_members(struct tpc *t, uint8_t type, const struct tx *x, uint8_t arg)
{
    for (uint32_t i = 0; i < t->cfg.n; i++)
        if (i != t->self_idx && (x->members & (1u << i)))
            send_msg(t, t->cfg.ids[i], type, x, arg);
}

static int64_t log_rec(struct tpc *t, enum tpc_log_type type, const struct tx *x)
{
    struct tpc_txn txn;

    txn_of(x, &txn);
    txn.view = x->view;
    txn.members = id_mask(t, x->members);
    if (type != TPC_LOG_PREPARE) {
        txn.ops = NULL;
        txn.nops = 0;
        txn.nbytes = 0;
    }
    int64_t lsn = t->env.log(t->env.ctx, type, &txn);
    if (lsn < 0)
        t->log_failed = true;
    return lsn;
}

/* ---- participant ----------------------------------------------------------------- */

/* Releases a local prepare that will not commit. */
static void part_abort(struct tpc *t, struct tx *x)
{
    struct tpc_txn txn;

    assert(x->pstate == P_PREPARING || x->pstate == P_PREPARED);
    txn_of(x, &txn);
    t->env.abort(t->env.ctx, &txn, x->handle);
    x->handle = NULL;
    if (x->prepare_logged && !t->log_failed)
        log_rec(t, TPC_LOG_ABORT, x);
    x->pstate = P_DONE;
    x->outcome = TPC_O_ABORTED;
    t->st.part_aborted++;
}

/* Applies a remote coordinator's commit; the ACK goes once our COMMIT
 * record is durable. */
static void part_commit(struct tpc *t, struct tx *x)
{
    struct tpc_txn txn;

    assert(x->pstate == P_PREPARED);
    txn_of(x, &txn);
    t->env.commit(t->env.ctx, &txn, x->handle);
    x->handle = NULL;
    x->pstate = P_DONE;
    x->outcome = TPC_O_COMMITTED;
    t->st.part_committed++;
    if (!t->log_failed) {
        int64_t lsn = log_rec(t, TPC_LOG_COMMIT, x);
        if (lsn > 0)
            wait_push(t, (uint64_t)lsn, x->txid, W_COMMIT_PART);
    }
    remember(t, x);
}

static void on_prepare(struct tpc *t, const struct tpc_msg *m)
{
    struct tx *x = tx_find(t, m->txid);
    struct tpc_txn txn;
    void *handle = NULL;
    int r;

    if (m->coord != m->from || m->coord == t->cfg.self || m->nops == 0 ||
        (m->txid & 0xff) != m->coord) {
        t->st.msgs_ignored++;
        return;
    }
    if (x) {
        bool same = x->ops && x->nops == m->nops && x->nbytes == m->nbytes &&
                    memcmp(x->ops, m->ops, m->nbytes) == 0;
        /* Waiting for views, a coordinator resends PREPARE: one we refused
         * (we never held its operations) gets the same NO again. */
        if (t->cfg.decide_by_view && x->ops == NULL && x->outcome == TPC_O_ABORTED &&
            x->pstate == P_DONE) {
            send_msg(t, m->from, TPC_MSG_VOTE, x,
                     x->no_reason ? x->no_reason : TPC_R_VIEW);
            t->st.msgs_ignored++;
            return;
        }
        if (!same && (x->pstate == P_PREPARING || x->pstate == P_PREPARED ||
                      x->outcome == TPC_O_ABORTED)) {
            /* Not a repeat: the txid again with other operations. A
             * coordinator that crashed before its first PREPARE was durable
             * can hand the same id out again. Vote no: a YES (or the one a
             * pending PREPARE would send) must never count for operations
             * we did not prepare. An unvoted prepare is dropped; a voted
             * one waits for its outcome, which is this abort. */
            if (x->pstate == P_PREPARING) {
                part_abort(t, x);
                remember(t, x);
            }
            t->st.voted_no++;
            send_msg(t, m->from, TPC_MSG_VOTE, x, TPC_R_CONFLICT);
            return;
        }
        /* A repeat (a resent one gets the vote again), or a PREPARE
         * overtaken by its ABORT. */
        if (x->pstate == P_PREPARED)
            send_msg(t, m->from, TPC_MSG_VOTE, x, 0);
        t->st.msgs_ignored++;
        return;
    }
    if ((x = tx_new(t, m->txid, m->epoch, m->coord)) == NULL)
        return; /* no vote: the coordinator times out */
    x->view = m->view;
    txn = (struct tpc_txn){.txid = m->txid,
                           .epoch = m->epoch,
                           .coord = m->coord,
                           .nops = m->nops,
                           .ops = m->ops,
                           .nbytes = m->nbytes};
    /* Another view's PREPARE, or one of this view after a promise of a
     * later one, or to a replica outside the view: refused (it can never
     * be voted for by this replica from now on). */
    if (m->view != t->view || frozen(t) || !self_member(t))
        r = TPC_R_VIEW;
    else if (m->resent)
        r = TPC_R_TIMEOUT; /* we may have refused it and forgotten: refuse again */
    else if (t->log_failed)
        r = TPC_R_LOG_FAILED;
    else
        r = t->env.prepare(t->env.ctx, &txn, &handle);
    if (r == 0 && (x->ops = malloc(m->nbytes ? m->nbytes : 1)) == NULL) {
        t->env.abort(t->env.ctx, &txn, handle);
        r = TPC_R_NO_MEMORY;
    }
    if (r != 0) {
        t->st.voted_no++;
        x->pstate = P_DONE;
        x->outcome = TPC_O_ABORTED;
        x->no_reason = (uint8_t)r;
        if (r == TPC_R_VIEW)
            x->view = t->view; /* the NO says which view we are in */
        send_msg(t, m->from, TPC_MSG_VOTE, x, (uint8_t)r);
        remember(t, x);
        return;
    }
    memcpy(x->ops, m->ops, m->nbytes);
    x->nops = m->nops;
    x->nbytes = m->nbytes;
    x->handle = handle;
    x->pstate = P_PREPARING;
    active_add(t, x);
    int64_t lsn = log_rec(t, TPC_LOG_PREPARE, x);
    if (lsn < 0 || wait_push(t, (uint64_t)lsn, x->txid, W_PREPARE) < 0) {
        part_abort(t, x);
        t->st.voted_no++;
        send_msg(t, m->from, TPC_MSG_VOTE, x, TPC_R_LOG_FAILED);
        remember(t, x);
        return;
    }
    x->prepare_logged = true;
}

/* ---- coordinator ----------------------------------------------------------------- */

static void record_latency(struct tpc *t, struct tx *x)
{
    uint64_t us = t->now_us > x->begun_us ? t->now_us - x->begun_us : 0;

    t->st.prepare_us_total += us;
    t->st.prepare_count++;
    if (us > t->st.prepare_us_max)
        t->st.prepare_us_max = us;
}

/* Gives the coordinator's client its answer, once: the client handle is
 * opaque (NULL too), so a flag says whether it was given. */
static void tell_client(struct tpc *t, struct tx *x, bool committed, int why,
                        uint32_t culprit)
{
    void *client = x->client;

    if (x->told)
        return;
    x->told = true;
    x->client = NULL;
    t->env.done(t->env.ctx, client, x->txid, committed, why, culprit);
}

static void coord_abort(struct tpc *t, struct tx *x, enum tpc_reason why,
                        uint32_t culprit)
{
    /* C_COMMITTING only when its COMMIT record is known not to be on disk
     * (tpc_log_failed): no COMMIT was sent, so nobody committed it. */
    assert(x->cstate == C_PREPARING || x->cstate == C_COMMITTING);
    x->commit_lsn = 0;
    t->st.aborted[why]++;
    record_latency(t, x);
    x->cstate = C_NONE;
    if (x->pstate == P_PREPARING || x->pstate == P_PREPARED)
        part_abort(t, x);
    x->pstate = P_DONE;
    x->outcome = TPC_O_ABORTED;
    send_members(t, TPC_MSG_ABORT, x, (uint8_t)why);
    remember(t, x);
    tell_client(t, x, false, why, culprit);
}

/* Every participant has ACKed: forget the decision. */
static void coord_finish(struct tpc *t, struct tx *x)
{
    x->cstate = C_NONE;
    if (!t->log_failed)
        log_rec(t, TPC_LOG_END, x);
    remember(t, x);
}

static void check_votes(struct tpc *t, struct tx *x)
{
    /* Frozen: a view change settles it (DESIGN.md, Settlement: rule 3);
     * so it does when views decide and our log failed. */
    if (x->cstate != C_PREPARING || (x->yes & x->members) != x->members || frozen(t) ||
        (t->log_failed && t->cfg.decide_by_view))
        return;
    int64_t lsn = t->log_failed ? -EIO : log_rec(t, TPC_LOG_COMMIT, x);
    if (lsn < 0 || wait_push(t, (uint64_t)lsn, x->txid, W_COMMIT_COORD) < 0) {
        coord_abort(t, x, TPC_R_LOG_FAILED, t->cfg.self);
        return;
    }
    x->cstate = C_COMMITTING;
    x->commit_lsn = (uint64_t)lsn;
}

/* The COMMIT record is durable: the transaction is committed. */
static void coord_committed(struct tpc *t, struct tx *x)
{
    struct tpc_txn txn;

    assert(x->pstate == P_PREPARED);
    x->cstate = C_COMMITTED;
    x->commit_lsn = 0;
    x->outcome = TPC_O_COMMITTED;
    t->st.committed++;
    record_latency(t, x);
    txn_of(x, &txn);
    t->env.commit(t->env.ctx, &txn, x->handle);
    x->handle = NULL;
    x->pstate = P_DONE;
    x->acks = 1u << t->self_idx;
    x->resend_at_us = t->now_us + t->cfg.resend_us;
    send_members(t, TPC_MSG_COMMIT, x, 0);
    free(x->ops); /* participants have them */
    x->ops = NULL;
    if (acks_done(t, x))
        coord_finish(t, x);
    tell_client(t, x, true, TPC_R_NONE, t->cfg.self);
}

uint64_t tpc_next_txid(struct tpc *t, uint64_t wall_us)
{
    uint64_t seq = t->seq + 1;

    if (seq < wall_us)
        seq = wall_us;
    if (seq < t->min_seq)
        seq = t->min_seq;
    t->seq = seq;
    return (seq << 8) | t->cfg.self;
}

uint64_t tpc_txid_floor(const struct tpc *t)
{
    uint64_t seq = t->seq + 1;

    if (seq < t->min_seq)
        seq = t->min_seq;
    return seq << 8;
}

void tpc_set_min_txid(struct tpc *t, uint64_t txid)
{
    uint64_t seq = (txid >> 8) + 1;

    if (seq > t->min_seq)
        t->min_seq = seq;
}

int tpc_begin(struct tpc *t, uint64_t txid, uint32_t nops, const char *ops,
              uint32_t nbytes, void *client, uint64_t now_us, uint32_t *culprit)
{
    struct tpc_txn txn = {.txid = txid,
                          .epoch = t->cfg.epoch,
                          .coord = t->cfg.self,
                          .nops = nops,
                          .ops = ops,
                          .nbytes = nbytes};
    void *handle = NULL;
    struct tx *x;
    int r;

    t->now_us = now_us;
    *culprit = t->cfg.self;
    if (!self_member(t)) {
        t->st.aborted[TPC_R_NOT_MEMBER]++;
        return TPC_R_NOT_MEMBER;
    }
    if (frozen(t)) {
        t->st.aborted[TPC_R_VIEW]++;
        return TPC_R_VIEW;
    }
    for (uint32_t i = 0; i < t->cfg.n; i++) {
        if (i != t->self_idx && (t->members & (1u << i)) && !t->up[i]) {
            *culprit = t->cfg.ids[i];
            t->st.aborted[TPC_R_PEER_DOWN]++;
            return TPC_R_PEER_DOWN;
        }
    }
    if (t->log_failed) {
        t->st.aborted[TPC_R_LOG_FAILED]++;
        return TPC_R_LOG_FAILED;
    }
    if (tx_find(t, txid) || (txid & 0xff) != t->cfg.self || nops == 0) {
        t->st.aborted[TPC_R_BAD_OPS]++;
        return TPC_R_BAD_OPS;
    }
    if ((r = t->env.prepare(t->env.ctx, &txn, &handle)) != 0) {
        t->st.aborted[r <= TPC_REASON_MAX ? r : TPC_R_BAD_OPS]++;
        return r;
    }
    if ((x = tx_new(t, txid, t->cfg.epoch, t->cfg.self)) == NULL ||
        (x->ops = malloc(nbytes ? nbytes : 1)) == NULL) {
        if (x) {
            tx_unhash(t, x);
            tx_release(t, x);
        }
        t->env.abort(t->env.ctx, &txn, handle);
        t->st.aborted[TPC_R_NO_MEMORY]++;
        return TPC_R_NO_MEMORY;
    }
    memcpy(x->ops, ops, nbytes);
    x->nops = nops;
    x->nbytes = nbytes;
    x->handle = handle;
    x->pstate = P_PREPARING;
    int64_t lsn = log_rec(t, TPC_LOG_PREPARE, x);
    if (lsn < 0 || wait_push(t, (uint64_t)lsn, txid, W_PREPARE) < 0) {
        t->env.abort(t->env.ctx, &txn, handle);
        tx_unhash(t, x);
        tx_release(t, x);
        t->st.aborted[TPC_R_LOG_FAILED]++;
        return TPC_R_LOG_FAILED;
    }
    t->st.begun++;
    x->prepare_logged = true;
    x->cstate = C_PREPARING;
    x->client = client;
    x->begun_us = now_us;
    x->deadline_us = now_us + t->cfg.prepare_timeout_us;
    active_add(t, x);
    send_members(t, TPC_MSG_PREPARE, x, 0);
    return 0;
}

/* ---- inputs ----------------------------------------------------------------------- */

/* May txid's records be among those a lost log lost? */
static bool maybe_lost(const struct tpc *t, uint64_t txid)
{
    return t->history_lost && txid < t->lost_before;
}

static enum tpc_outcome outcome_here(const struct tpc *t, uint64_t txid)
{
    const struct tx *x = tx_find(t, txid);

    if (x == NULL)
        return maybe_lost(t, txid) ? TPC_O_LOST : TPC_O_UNKNOWN;
    if (x->ghost && x->outcome == TPC_O_PENDING)
        return TPC_O_LOST; /* being settled (doubt_answer) */
    if (x->lost_decision && x->outcome == TPC_O_PENDING && x->coord != t->cfg.self)
        return TPC_O_LOST; /* prepared here, but a COMMIT after it may be what was lost */
    return (enum tpc_outcome)x->outcome;
}

/* Undecided here, and asked about: a participant's prepare waiting for the
 * outcome, or one of ours whose decision a lost log lost. */
static bool in_doubt(const struct tx *x)
{
    return x->cstate == C_NONE && (x->pstate == P_PREPARED || x->ghost);
}

/* An in-doubt transaction learned it committed (an answer said so). */
static void doubt_commit(struct tpc *t, struct tx *x)
{
    struct tpc_txn txn;

    if (x->coord != t->cfg.self) {
        part_commit(t, x);
        return;
    }
    /* Ours, its COMMIT record lost: another replica holds the decision
     * durably, so it is not ours to wait for. Apply it (if we still hold
     * the prepare), log it again (if that record is lost too, the next
     * start asks again: the loss stays known), and see every replica has
     * it, as after any commit point; no client waits any more. */
    txn_of(x, &txn);
    if (x->pstate == P_PREPARED) {
        t->env.commit(t->env.ctx, &txn, x->handle);
        x->handle = NULL;
    }
    x->pstate = P_DONE;
    x->outcome = TPC_O_COMMITTED;
    x->told = true;
    x->cstate = C_COMMITTED;
    x->acks = 1u << t->self_idx;
    x->resend_at_us = t->now_us + t->cfg.resend_us;
    if (!x->ghost && !t->log_failed)
        log_rec(t, TPC_LOG_COMMIT, x);
    send_members(t, TPC_MSG_COMMIT, x, 0);
    free(x->ops);
    x->ops = NULL;
    if (acks_done(t, x))
        coord_finish(t, x);
}

/* An in-doubt transaction learned it aborted (or that none applied it). */
static void doubt_abort(struct tpc *t, struct tx *x)
{
    if (x->pstate == P_PREPARED) {
        part_abort(t, x);
    } else {
        x->pstate = P_DONE;
        x->outcome = TPC_O_ABORTED;
    }
    if (x->coord == t->cfg.self)
        send_members(t, TPC_MSG_ABORT, x, TPC_R_RECOVERY);
    remember(t, x);
}

/*
 * An answer about an in-doubt transaction. COMMITTED commits, ABORTED
 * aborts, and UNKNOWN from the coordinator aborts (presumed abort) unless
 * our own lost log may be why it forgot. Besides, the coordinator itself,
 * asking about one of its own whose decision its lost log lost, aborts
 * once every other replica has answered PENDING: it holds the transaction
 * prepared, undecided, and its own log is whole for that txid (one whose
 * log may have lost a COMMIT after the PREPARE answers LOST instead). Then
 * none of them applied it, and none will: every answer came over links
 * this coordinator opened after its restart, and a replica takes a
 * restarted peer's new link only after closing the old one, so no COMMIT
 * sent before the loss can still reach it. LOST counts for nothing (that
 * replica may have applied it and lost the record, or forgotten it), nor
 * does UNKNOWN (applied and forgotten). A participant never aborts on
 * PENDING answers: only the coordinator's new links give that fence.
 */
static void doubt_answer(struct tpc *t, struct tx *x, const struct tpc_msg *m,
                         uint32_t from_bit)
{
    if (m->outcome == TPC_O_COMMITTED) {
        t->st.resolved_by_query++;
        doubt_commit(t, x);
        return;
    }
    if (frozen(t))
        return; /* an abort now is the view change's to decide */
    if (m->outcome == TPC_O_ABORTED ||
        (m->outcome == TPC_O_UNKNOWN && m->from == x->coord && !x->lost_decision)) {
        t->st.resolved_by_query++;
        doubt_abort(t, x);
        return;
    }
    if (x->coord != t->cfg.self || !x->lost_decision || m->outcome != TPC_O_PENDING)
        return;
    x->nothing_from |= from_bit;
    if ((x->nothing_from | 1u << t->self_idx) == t->all) {
        t->st.resolved_by_query++;
        doubt_abort(t, x);
    }
}

/* A participant asks about one of our txids we have no record of, and our
 * log lost records: it may be one whose decision was among them. Settle it
 * as our own (doubt_answer): ask every replica. */
static void ghost_begin(struct tpc *t, const struct tpc_msg *m)
{
    struct tx *x = tx_new(t, m->txid, m->epoch, t->cfg.self);

    if (x == NULL)
        return; /* asked again later */
    x->ghost = true;
    x->lost_decision = true;
    x->queried = true;
    x->query_at_us = t->now_us + t->cfg.resend_us;
    active_add(t, x);
    t->st.queries_sent++;
    send_peers(t, TPC_MSG_QUERY, x, 0);
}

enum tpc_outcome tpc_known_outcome(const struct tpc *t, uint64_t txid)
{
    return outcome_here(t, txid);
}

void tpc_receive(struct tpc *t, const struct tpc_msg *m, uint64_t now_us)
{
    struct tx *x;
    uint32_t from_bit;

    t->now_us = now_us;
    if (m->type == 0 || m->type > TPC_MSG_TYPE_MAX || m->from == t->cfg.self ||
        (from_bit = bit_of(t, m->from)) == 0) {
        t->st.msgs_ignored++;
        return;
    }
    t->st.msgs_in[m->type]++;
    if (m->epoch != t->cfg.epoch) {
        t->st.bad_epoch++;
        return;
    }
    if (m->type == TPC_MSG_PREPARE) {
        on_prepare(t, m);
        return;
    }
    x = tx_find(t, m->txid);
    switch (m->type) {
    case TPC_MSG_VOTE:
        if (x == NULL || x->cstate != C_PREPARING || x->coord != t->cfg.self) {
            t->st.msgs_ignored++; /* late: already decided */
        } else if (!m->vote && t->cfg.decide_by_view &&
                   ((m->reason == TPC_R_VIEW && m->view > x->view) ||
                    x->view < t->view)) {
            /* The participant is in a later view than this transaction's,
             * or ours moved on since it began: the vote says nothing about
             * it (that replica may even have committed it and forgotten);
             * the view change settled it, or will. (A NO from a replica
             * still in an earlier view, or frozen in this one, is a real
             * refusal: it reports the transaction aborted.) */
            t->st.msgs_ignored++;
        } else if (!m->vote) {
            uint8_t why =
                m->reason && tpc_reason_on_wire(m->reason) ? m->reason : TPC_R_BAD_OPS;
            coord_abort(t, x, (enum tpc_reason)why, m->from);
        } else {
            x->yes |= from_bit;
            check_votes(t, x);
        }
        break;
    case TPC_MSG_COMMIT:
        if (m->coord != m->from) {
            t->st.msgs_ignored++;
        } else if (x == NULL) {
            /* Committed here and forgotten: say so again - unless our log
             * failed (it may be one applied but never made durable here,
             * forgotten since; only a restart settles it) or lost records
             * (its PREPARE may have been among them). */
            struct tx tmp = {.txid = m->txid, .coord = m->coord};
            if (t->log_failed || maybe_lost(t, m->txid))
                t->st.commits_refused++;
            else
                send_msg(t, m->from, TPC_MSG_ACK, &tmp, 0);
        } else if (x->pstate == P_PREPARED) {
            part_commit(t, x);
        } else if (x->pstate == P_DONE && x->outcome == TPC_O_COMMITTED) {
            if (x->ack_durable)
                send_msg(t, m->from, TPC_MSG_ACK, x, 0);
            else
                t->st.msgs_ignored++; /* the ACK goes when our record is durable */
        } else {
            t->st.msgs_ignored++; /* cannot happen: no YES was given */
        }
        break;
    case TPC_MSG_ABORT:
        if (m->coord != m->from) {
            t->st.msgs_ignored++;
        } else if (x == NULL) {
            /* Overtook its PREPARE (or we voted and forgot): remember, so a
             * late PREPARE is not prepared. */
            if ((x = tx_new(t, m->txid, m->epoch, m->coord)) != NULL) {
                x->pstate = P_DONE;
                x->outcome = TPC_O_ABORTED;
                remember(t, x);
            }
        } else if ((x->pstate == P_PREPARING || x->pstate == P_PREPARED) && !frozen(t)) {
            part_abort(t, x);
            remember(t, x);
        } else {
            t->st.msgs_ignored++; /* frozen: the view change settles it */
        }
        break;
    case TPC_MSG_ACK:
        if (x == NULL || x->cstate != C_COMMITTED || (x->acks & from_bit)) {
            t->st.msgs_ignored++;
        } else {
            x->acks |= from_bit;
            if (acks_done(t, x))
                coord_finish(t, x);
        }
        break;
    case TPC_MSG_QUERY: {
        struct tx tmp = {.txid = m->txid, .coord = m->coord, .view = m->view};
        enum tpc_outcome o = outcome_here(t, m->txid);
        /* A commit waits for the ACKs of current members only, so a
         * replica outside our view may hold prepared what we committed
         * and forgot: "no record" tells it nothing (it catches up). */
        if (o == TPC_O_UNKNOWN && t->cfg.decide_by_view && !(t->members & from_bit))
            o = TPC_O_LOST;
        t->st.answers_sent++;
        send_msg(t, m->from, TPC_MSG_ANSWER, x ? x : &tmp, (uint8_t)o);
        if (x == NULL && m->coord == t->cfg.self && (m->txid & 0xff) == t->cfg.self &&
            maybe_lost(t, m->txid))
            ghost_begin(t, m);
        break;
    }
    case TPC_MSG_ANSWER:
        if (x == NULL || !in_doubt(x) || (x->coord == t->cfg.self && !x->lost_decision)) {
            t->st.msgs_ignored++;
        } else {
            doubt_answer(t, x, m, from_bit);
        }
        break;
    }
}

void tpc_durable(struct tpc *t, uint64_t lsn, uint64_t now_us)
{
    t->now_us = now_us;
    while (t->wlen > 0 && t->waits[t->whead].lsn <= lsn) {
        struct wait w = t->waits[t->whead];
        t->whead = (t->whead + 1) % t->wcap;
        t->wlen--;
        struct tx *x = tx_find(t, w.txid);
        if (x == NULL)
            continue;
        switch (w.kind) {
        case W_PREPARE:
            if (x->pstate != P_PREPARING)
                break; /* aborted meanwhile */
            x->pstate = P_PREPARED;
            t->st.prepared++;
            if (x->coord == t->cfg.self) {
                x->yes |= 1u << t->self_idx;
                check_votes(t, x);
            } else {
                x->query_at_us = now_us + t->cfg.prepare_timeout_us;
                send_msg(t, x->coord, TPC_MSG_VOTE, x, 0);
            }
            break;
        case W_COMMIT_COORD:
            if (x->cstate == C_COMMITTING)
                coord_committed(t, x);
            break;
        case W_COMMIT_PART:
            x->ack_durable = true;
            send_msg(t, x->coord, TPC_MSG_ACK, x, 0);
            break;
        }
    }
}

void tpc_log_failed(struct tpc *t, uint64_t now_us, bool rolled_back)
{
    struct tx *x, *next;

    t->now_us = now_us;
    t->log_failed = true;
    t->wlen = 0;
    for (x = t->active; x; x = next) {
        next = x->anext;
        if ((x->cstate == C_PREPARING || x->cstate == C_COMMITTING) &&
            t->cfg.decide_by_view) {
            /* Its PREPAREs are out: a view change may commit it without us
             * (settlement, rule 4), so no abort, and the client learns the
             * outcome is unknown. */
            if (!x->told) {
                t->st.aborted[TPC_R_UNKNOWN]++;
                tell_client(t, x, false, TPC_R_UNKNOWN, t->cfg.self);
            }
        } else if (x->cstate == C_PREPARING) {
            coord_abort(t, x, TPC_R_LOG_FAILED, t->cfg.self);
        } else if (x->cstate == C_COMMITTING && rolled_back) {
            /* The COMMIT record was cut off the log: it is not on disk, no
             * COMMIT went out, so this is an abort like any other - and the
             * keys are free on every replica at once. */
            coord_abort(t, x, TPC_R_LOG_FAILED, t->cfg.self);
        } else if (x->cstate == C_COMMITTING && !x->told) {
            /* The decision may or may not be on disk: the client learns
             * the outcome is unknown (once: the log reports a failure per
             * failed batch); participants stay in doubt until a restart
             * reads our log and settles it. */
            t->st.aborted[TPC_R_UNKNOWN]++;
            tell_client(t, x, false, TPC_R_UNKNOWN, t->cfg.self);
        } else if (x->pstate == P_PREPARING && x->coord != t->cfg.self) {
            part_abort(t, x);
            t->st.voted_no++;
            send_msg(t, x->coord, TPC_MSG_VOTE, x, TPC_R_LOG_FAILED);
            remember(t, x);
        }
    }
}

void tpc_tick(struct tpc *t, uint64_t now_us)
{
    struct tx *x, *next;

    t->now_us = now_us;
    for (x = t->active; x; x = next) {
        next = x->anext;
        if (x->cstate == C_PREPARING && now_us >= x->deadline_us &&
            (t->cfg.decide_by_view || frozen(t))) {
            /* A vote lost with a link that went down and up: ask again. A
             * member that stays silent is a view change's to remove. */
            for (uint32_t i = 0; i < t->cfg.n && x->view == t->view; i++)
                if (i != t->self_idx && (x->members & (1u << i)) &&
                    !(x->yes & (1u << i)) && t->up[i])
                    send_msg(t, t->cfg.ids[i], TPC_MSG_PREPARE, x, 1);
            x->deadline_us = now_us + t->cfg.resend_us;
        } else if (x->cstate == C_PREPARING && now_us >= x->deadline_us) {
            uint32_t culprit = t->cfg.self;
            for (uint32_t i = 0; i < t->cfg.n; i++) {
                if (!(x->yes & (1u << i))) {
                    culprit = t->cfg.ids[i];
                    if (i != t->self_idx)
                        break; /* name a peer before ourselves */
                }
            }
            coord_abort(t, x, TPC_R_TIMEOUT, culprit);
        } else if (x->cstate == C_COMMITTED && now_us >= x->resend_at_us) {
            for (uint32_t i = 0; i < t->cfg.n; i++)
                if (!(x->acks & (1u << i)) && (x->members & t->members & (1u << i)) &&
                    t->up[i])
                    send_msg(t, t->cfg.ids[i], TPC_MSG_COMMIT, x, 0);
            x->resend_at_us = now_us + t->cfg.resend_us;
        } else if (in_doubt(x) && now_us >= x->query_at_us) {
            /* In doubt: ask the coordinator and, in case it is down, every
             * other replica (cooperative termination). */
            x->queried = true;
            t->st.queries_sent++;
            send_peers(t, TPC_MSG_QUERY, x, 0);
            x->query_at_us = now_us + t->cfg.resend_us;
        }
    }
}

void tpc_peer(struct tpc *t, uint32_t id, bool up, uint64_t now_us)
{
    int i = idx_of(t, id);
    struct tx *x, *next;

    t->now_us = now_us;
    if (i < 0 || (uint32_t)i == t->self_idx || t->up[i] == up)
        return;
    t->up[i] = up;
    for (x = t->active; x; x = next) {
        next = x->anext;
        if (!up && x->cstate == C_PREPARING && !(x->yes & (1u << i)) &&
            (x->members & (1u << i)) && !t->cfg.decide_by_view && !frozen(t)) {
            coord_abort(t, x, TPC_R_PEER_DOWN, id);
        } else if (up && x->cstate == C_COMMITTED && !(x->acks & (1u << i)) &&
                   (x->members & t->members & (1u << i))) {
            send_msg(t, id, TPC_MSG_COMMIT, x, 0);
        } else if (up && in_doubt(x) && x->queried) {
            t->st.queries_sent++;
            send_msg(t, id, TPC_MSG_QUERY, x, 0);
        }
    }
}

bool tpc_peer_is_up(const struct tpc *t, uint32_t id)
{
    int i = idx_of(t, id);

    return i >= 0 && ((uint32_t)i == t->self_idx || t->up[i]);
}

/* ---- recovery -------------------------------------------------------------------- */

int tpc_recover_prepared(struct tpc *t, const struct tpc_txn *txn, uint64_t now_us)
{
    struct tpc_txn copy = *txn;
    void *handle = NULL;
    struct tx *x;
    int r;

    t->now_us = now_us;
    if (tx_find(t, txn->txid))
        return -EEXIST;
    copy.recovered = true;
    if ((r = t->env.prepare(t->env.ctx, &copy, &handle)) != 0)
        return -EIO;
    if ((x = tx_new(t, txn->txid, txn->epoch, txn->coord)) == NULL ||
        (x->ops = malloc(txn->nbytes ? txn->nbytes : 1)) == NULL) {
        if (x) {
            tx_unhash(t, x);
            tx_release(t, x);
        }
        t->env.abort(t->env.ctx, &copy, handle);
        return -ENOMEM;
    }
    memcpy(x->ops, txn->ops, txn->nbytes);
    x->nops = txn->nops;
    x->nbytes = txn->nbytes;
    x->handle = handle;
    x->pstate = P_PREPARED;
    x->prepare_logged = true;
    if (txn->view != 0) {
        x->view = txn->view;
        x->members = idx_mask(t, txn->members);
    }
    x->query_at_us = now_us; /* ask at the first tick */
    x->queried = true;
    active_add(t, x);
    return 0;
}

int tpc_recover_committed(struct tpc *t, uint64_t txid, uint64_t epoch, uint64_t now_us)
{
    struct tx *x;

    t->now_us = now_us;
    if (tx_find(t, txid))
        return -EEXIST;
    if ((x = tx_new(t, txid, epoch, t->cfg.self)) == NULL)
        return -ENOMEM;
    x->cstate = C_COMMITTED;
    x->pstate = P_DONE;
    x->outcome = TPC_O_COMMITTED;
    x->acks = 1u << t->self_idx;
    x->resend_at_us = now_us;
    active_add(t, x);
    return 0;
}

int tpc_recover_decided(struct tpc *t, uint64_t txid, uint64_t epoch, uint32_t coord,
                        bool committed, uint64_t now_us)
{
    struct tx *x;

    t->now_us = now_us;
    if (tx_find(t, txid))
        return -EEXIST;
    if ((x = tx_new(t, txid, epoch, coord)) == NULL)
        return -ENOMEM;
    x->pstate = P_DONE;
    x->outcome = committed ? TPC_O_COMMITTED : TPC_O_ABORTED;
    x->ack_durable = true; /* it was in the log */
    remember(t, x);
    return 0;
}

void tpc_history_lost(struct tpc *t, uint64_t lost_before)
{
    t->history_lost = true;
    t->lost_before = lost_before;
    /* A lost txid of ours must not be handed out again, nor may a new one
     * fall where a QUERY would take it for a lost one. */
    tpc_set_min_txid(t, lost_before);
}

void tpc_recovered(struct tpc *t, uint64_t now_us)
{
    struct tx *x, *next;

    t->now_us = now_us;
    for (x = t->active; x; x = next) {
        next = x->anext;
        if (x->pstate == P_PREPARED && maybe_lost(t, x->txid)) {
            /* Our log lost records: the decision may be among them. */
            x->lost_decision = true;
        } else if (x->pstate == P_PREPARED && x->coord == t->cfg.self) {
            /* We never logged a decision, so nobody committed it. */
            part_abort(t, x);
            t->st.aborted[TPC_R_RECOVERY]++;
            send_members(t, TPC_MSG_ABORT, x, TPC_R_RECOVERY);
            remember(t, x);
        } else if (x->cstate == C_COMMITTED && acks_done(t, x)) {
            coord_finish(t, x);
        }
    }
    /* Decisions from before the restart are remembered only as far as the
     * log replayed them: any older one may be forgotten. */
    if (t->min_seq > t->forgot_seq)
        t->forgot_seq = t->min_seq;
}

/* ---- life cycle and inspection --------------------------------------------------- */

struct tpc *tpc_new(const struct tpc_config *cfg, const struct tpc_env *env, int *err)
{
    struct tpc *t;
    int self = -1;

    *err = -EINVAL;
    if (cfg->n == 0 || cfg->n > TPC_REPLICAS_MAX || cfg->remembered_max == 0 ||
        cfg->self >= TPC_REPLICAS_MAX)
        return NULL;
    for (uint32_t i = 0; i < cfg->n; i++) {
        if (cfg->ids[i] >= TPC_REPLICAS_MAX)
            return NULL;
        for (uint32_t j = 0; j < i; j++)
            if (cfg->ids[j] == cfg->ids[i])
                return NULL;
        if (cfg->ids[i] == cfg->self)
            self = (int)i;
    }
    if (self < 0)
        return NULL;
    *err = -ENOMEM;
    if ((t = calloc(1, sizeof(*t))) == NULL)
        return NULL;
    t->cfg = *cfg;
    t->env = *env;
    t->self_idx = (uint32_t)self;
    t->all = (1u << cfg->n) - 1; /* n <= TPC_REPLICAS_MAX (16) */
    t->view = 1;
    t->members = t->all;
    t->gone.n = 256;
    if (tab_init(&t->live) < 0 ||
        (t->gone.s = calloc(t->gone.n, sizeof(*t->gone.s))) == NULL) {
        free(t->live.b);
        free(t);
        return NULL;
    }
    *err = 0;
    return t;
}

void tpc_free(struct tpc *t)
{
    if (t == NULL)
        return;
    for (size_t i = 0; i < t->live.n; i++) {
        struct tx *x = t->live.b[i];
        while (x) {
            struct tx *next = x->hnext;
            tx_free(x);
            x = next;
        }
    }
    free(t->live.b);
    for (size_t i = 0; i < t->gone.n; i++)
        if (t->gone.s[i].x)
            tx_free(t->gone.s[i].x);
    free(t->gone.s);
    while (t->spare) {
        struct tx *x = t->spare;
        t->spare = x->hnext;
        tx_free(x);
    }
    free(t->waits);
    free(t);
}

void tpc_release_all(struct tpc *t)
{
    struct tx *x, *next;

    for (x = t->active; x; x = next) {
        next = x->anext;
        if (x->cstate != C_NONE)
            tell_client(t, x, false, TPC_R_STOPPING, t->cfg.self);
        if (x->pstate == P_PREPARING || x->pstate == P_PREPARED) {
            struct tpc_txn txn;
            txn_of(x, &txn);
            t->env.abort(t->env.ctx, &txn, x->handle);
            x->handle = NULL;
            x->pstate = P_NONE;
        }
        active_remove(t, x);
    }
    t->wlen = 0;
}

void tpc_get_stats(const struct tpc *t, struct tpc_stats *st)
{
    *st = t->st;
    st->remembered = t->nremembered;
    st->in_doubt = 0;
    st->active = 0;
    for (const struct tx *x = t->active; x; x = x->anext) {
        st->active++;
        if (in_doubt(x) && x->queried)
            st->in_doubt++;
    }
}

int tpc_for_each_open(const struct tpc *t,
                      int (*fn)(void *arg, const struct tpc_txn *txn, bool prepared),
                      void *arg)
{
    for (const struct tx *x = t->active; x; x = x->anext) {
        struct tpc_txn txn;
        int r = 0;
        txn_of(x, &txn);
        txn.view = x->view;
        txn.members = id_mask(t, x->members);
        if (x->pstate == P_PREPARING || x->pstate == P_PREPARED)
            r = fn(arg, &txn, true);
        else if (x->cstate == C_COMMITTED)
            r = fn(arg, &txn, false);
        if (r)
            return r;
    }
    return 0;
}

uint64_t tpc_unapplied_lsn(const struct tpc *t)
{
    uint64_t min = 0;

    for (const struct tx *x = t->active; x; x = x->anext)
        if (x->cstate == C_COMMITTING && (min == 0 || x->commit_lsn < min))
            min = x->commit_lsn;
    return min;
}

/* ---- views ------------------------------------------------------------------------ */

void tpc_set_view(struct tpc *t, uint64_t view, uint32_t members, uint64_t now_us)
{
    struct tx *x, *next;

    t->now_us = now_us;
    t->view = view;
    t->members = idx_mask(t, members);
    t->promised = 0;
    /* Left out: what we coordinate and have not decided is the new view's
     * to settle, and we may never learn how until we catch up. */
    if (!self_member(t))
        for (x = t->active; x; x = x->anext)
            if (x->cstate == C_PREPARING)
                tell_client(t, x, false, TPC_R_UNKNOWN, t->cfg.self);
    /* Commits of earlier views wait no more for replicas left out. */
    for (x = t->active; x; x = next) {
        next = x->anext;
        if (x->cstate == C_COMMITTED && acks_done(t, x))
            coord_finish(t, x);
    }
}

uint64_t tpc_view(const struct tpc *t)
{
    return t->view;
}

uint32_t tpc_view_members(const struct tpc *t)
{
    return id_mask(t, t->members);
}

void tpc_freeze(struct tpc *t, uint64_t promised)
{
    if (promised > t->view && promised > t->promised)
        t->promised = promised;
}

bool tpc_frozen(const struct tpc *t)
{
    return frozen(t);
}

/* Decided to commit: its COMMIT record is written (ours), or it committed. */
static bool decided_commit(const struct tx *x)
{
    return x->cstate == C_COMMITTING || x->outcome == TPC_O_COMMITTED;
}

/* Undecided here: a participant's prepare, or ours not decided. */
static bool undecided(const struct tx *x)
{
    return x->cstate == C_PREPARING ||
           (x->cstate == C_NONE && (x->pstate == P_PREPARING || x->pstate == P_PREPARED));
}

int tpc_for_each_doubt(const struct tpc *t,
                       int (*fn)(void *arg, uint64_t txid, uint32_t coord, uint64_t view,
                                 uint32_t members),
                       void *arg)
{
    for (const struct tx *x = t->active; x; x = x->anext) {
        int r = undecided(x) ? fn(arg, x->txid, x->coord, x->view, id_mask(t, x->members))
                             : 0;
        if (r)
            return r;
    }
    return 0;
}

enum tpc_know tpc_know(const struct tpc *t, uint64_t txid)
{
    const struct tx *x = tx_find(t, txid);

    if (x == NULL)
        return maybe_lost(t, txid) || (txid >> 8) <= t->forgot_seq ? TPC_K_UNSURE
                                                                   : TPC_K_ABSENT;
    if (x->ghost || x->lost_decision)
        return x->outcome == TPC_O_COMMITTED ? TPC_K_COMMITTED
               : x->outcome == TPC_O_ABORTED ? TPC_K_ABORTED
                                             : TPC_K_UNSURE;
    if (decided_commit(x))
        return TPC_K_COMMITTED;
    if (x->outcome == TPC_O_ABORTED)
        return TPC_K_ABORTED;
    return TPC_K_PREPARED;
}

int tpc_settle(struct tpc *t, uint64_t txid, bool commit, uint64_t now_us)
{
    struct tx *x = tx_find(t, txid);

    t->now_us = now_us;
    if (x == NULL)
        return -ENOENT;
    if (!undecided(x))
        return decided_commit(x) == commit ? 0 : -EALREADY;
    /* The view's settlement is durable (its VIEW record) before this: a
     * PREPARE not yet reported durable is on disk before it. */
    if (x->pstate == P_PREPARING)
        x->pstate = P_PREPARED;
    if (x->cstate == C_PREPARING) {
        if (!commit) {
            coord_abort(t, x, TPC_R_VIEW, t->cfg.self);
            return 0;
        }
        x->cstate = C_NONE;
        t->st.committed++;
        record_latency(t, x);
        tell_client(t, x, true, TPC_R_NONE, t->cfg.self); /* the VIEW record is durable */
        doubt_commit(t, x);
        return 0;
    }
    if (commit)
        doubt_commit(t, x);
    else
        doubt_abort(t, x);
    return 0;
}
