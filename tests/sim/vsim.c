/*
 * vsim.c - a deterministic simulator that tries to break membership views,
 * leases and the settlement of transactions in doubt (DESIGN.md,
 * Availability). The main simulator (sim.c) breaks two-phase commit itself
 * under crashes and restarts with a fixed membership; this one drives the
 * same tpc state machine, with lib/view.c and lib/lease.c, through view
 * changes:
 *
 *   - every replica has its own monotonic clock, whose rate is off real
 *     time by up to rho (1..10%, --clock-drift-ppm) and whose offset is
 *     random; leases, heartbeats, failure detection and tpc timers all run
 *     on it;
 *   - replicas are paused (SIGSTOP: what reaches them waits until they
 *     wake, requests included, and they must check their lease before
 *     answering), cut off by partitions (one way, both, all but one link,
 *     or every replica from every other), crashed and restarted on their
 *     disk (what was durable, and maybe some records written since; the
 *     acceptor state and a promise re-applied first; the log replayed onto
 *     the store; presumed abort; sometimes the whole cluster at once), or
 *     killed and replaced, later, by an empty machine that catches up from
 *     a member's snapshot (its store, and the transactions it holds
 *     prepared) and joins;
 *   - in a quarter of the runs tpc remembers only 16 or 200 decisions, so
 *     they are forgotten while replicas are away (a KNOW is then answered
 *     from the log);
 *   - the network delays (0.1..3 ms, so it reorders), drops and duplicates;
 *   - clients write unique values to a few keys through any replica
 *     (retrying, as serve does, when a write loses to a view change) and
 *     read through any.
 *
 * Each replica's store is a few registers; its resource manager locks a
 * key from prepare to commit or abort, like txn.c, and a read of a locked
 * key waits.
 *
 * CHECKS (a failure prints the seed):
 *   - one view per epoch: every replica that installs epoch e installs the
 *     same members and settlement;
 *   - no stale read: a replica that serves a read (a member of its view,
 *     not frozen, its lease valid at its own clock, the key unlocked) holds
 *     the value of the latest write applied anywhere (the serialization
 *     order), at that real instant;
 *   - atomicity: no transaction applied on one replica and aborted on
 *     another; a settlement never contradicts a decision;
 *   - durability and convergence: after the faults heal, every replica is a
 *     member again and every store equals the model (every acknowledged
 *     write's effect is there, in order);
 *   - liveness: after the heal a write through each replica commits.
 *
 * --inject-bug=NAME plants a bug the checks must catch: no-lease-wait (a
 * proposer does not wait out the leases), long-lease (a holder believes
 * its lease lasts twice as long), no-freeze (a promise does not stop the
 * old view's PREPAREs), no-settle (an installed view skips its
 * settlement).
 *
 * Usage: vsim [--seeds N | --seed S] [--inject-bug=NAME] [--until-fail] [-v]
 * (--until-fail stops at the first failed seed: for the planted bugs).
 */
#include "lease.h"
#include "tpc.h"
#include "util.h"
#include "view.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NMAX 5
#define KEYS 8
#define US 1000ull
#define MS 1000000ull
#define LEASE_NS (200 * MS)
#define CHAOS_NS (4000 * MS)
#define HEAL_NS (6000 * MS)
#define END_NS (CHAOS_NS + HEAL_NS)
#define TICK_NS (2 * MS)
#define OPS_BYTES 9 /* u8 key | u64 value */

enum inject { BUG_NONE, BUG_NO_LEASE_WAIT, BUG_LONG_LEASE, BUG_NO_FREEZE, BUG_NO_SETTLE };

/* ---- random numbers (xoshiro256**) -------------------------------------------- */

static uint64_t rs[4];

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t rnd(void)
{
    uint64_t r = rotl(rs[1] * 5, 7) * 9, t = rs[1] << 17;
    rs[2] ^= rs[0];
    rs[3] ^= rs[1];
    rs[1] ^= rs[2];
    rs[0] ^= rs[3];
    rs[2] ^= t;
    rs[3] = rotl(rs[3], 45);
    return r;
}

static uint64_t below(uint64_t n)
{
    return n ? rnd() % n : 0;
}

static uint64_t between(uint64_t a, uint64_t b)
{
    return a + below(b - a + 1);
}

static bool chance(unsigned pct)
{
    return below(100) < pct;
}

/* ---- messages ----------------------------------------------------------------- */

enum mkind {
    M_TPC,      /* a tpc message */
    M_LREQ,     /* lease request / heartbeat: epoch, seq */
    M_GRANT,    /* epoch, seq */
    M_PREQ,     /* promise request: epoch (new), ballot */
    M_PROMISE,  /* ballot, promise */
    M_NACK,     /* ballot refused: a (the higher promised ballot) */
    M_KREQ,     /* ballot, doubts */
    M_KNOW,     /* ballot, know[] */
    M_ACCEPT,   /* ballot, value */
    M_ACCEPTED, /* ballot */
    M_INSTALL,  /* value */
    M_JOIN,     /* a learner asks to be added */
    M_SNAP,     /* a source's state for a learner, then its PREQ */
    M_CLIENT,   /* a client request (op index) */
};

struct snapshot {
    uint64_t epoch;
    uint32_t members;
    uint64_t store[KEYS];
    uint32_t nprep;
    struct tpc_txn prep[KEYS]; /* one per locked key at most */
    char ops[KEYS][OPS_BYTES];
};

struct msg {
    enum mkind kind;
    int from, to;
    uint64_t epoch, ballot, seq, a;
    struct tpc_msg tm;
    char ops[OPS_BYTES];
    struct view_value value; /* owned */
    bool current, amnesiac;
    uint64_t hold;
    uint64_t accepted;
    bool has_value;
    uint32_t ndoubt;
    struct view_doubt *doubt; /* owned */
    uint8_t *know;            /* owned */
    struct snapshot *snap;    /* owned */
    int op;
};

static void msg_free(struct msg *m)
{
    view_value_free(&m->value);
    free(m->doubt);
    free(m->know);
    free(m->snap);
    free(m);
}

/* ---- events -------------------------------------------------------------------- */

enum ekind { E_MSG, E_SYNC, E_TICK, E_NEWOP, E_RETRY, E_FAULT };

struct ev {
    uint64_t at, seq;
    enum ekind kind;
    int r;
    int inc;
    uint64_t a;
    struct msg *m;
};

static struct ev *heap;
static size_t nheap, capheap;
static uint64_t evseq;

static bool ev_less(const struct ev *x, const struct ev *y)
{
    return x->at < y->at || (x->at == y->at && x->seq < y->seq);
}

static void push(struct ev e)
{
    size_t i;

    if (nheap == capheap) {
        capheap = capheap ? capheap * 2 : 1024;
        heap = realloc(heap, capheap * sizeof(*heap));
        if (heap == NULL)
            abort();
    }
    e.seq = ++evseq;
    i = nheap++;
    heap[i] = e;
    while (i > 0 && ev_less(&heap[i], &heap[(i - 1) / 2])) {
        struct ev t = heap[i];
        heap[i] = heap[(i - 1) / 2];
        heap[(i - 1) / 2] = t;
        i = (i - 1) / 2;
    }
}

static struct ev pop(void)
{
    struct ev top = heap[0];
    size_t i = 0;

    heap[0] = heap[--nheap];
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < nheap && ev_less(&heap[l], &heap[m]))
            m = l;
        if (r < nheap && ev_less(&heap[r], &heap[m]))
            m = r;
        if (m == i)
            break;
        struct ev t = heap[i];
        heap[i] = heap[m];
        heap[m] = t;
        i = m;
    }
    return top;
}

/* ---- the world ----------------------------------------------------------------- */

/* One record of a replica's log (what its disk keeps). */
struct lrec {
    int64_t lsn;
    uint8_t type; /* enum tpc_log_type */
    uint64_t txid, view;
    uint32_t coord, members;
    int key;
    uint64_t val;
};

struct rep {
    int id, inc;
    bool dead;
    uint64_t paused_until;
    double off, rate;
    struct view_acceptor acc;
    struct tpc *tpc;
    struct lease_config lcfg;
    struct lease_holder lh;
    struct lease_grantor lg;
    struct view_proposer vp;
    bool proposing;
    uint64_t prop_since, majority_since, round;
    uint32_t snap_for; /* learners this proposal adds (they get our state) */
    uint64_t heard[NMAX];
    uint64_t suspect_since;
    uint64_t quiet_until; /* after a failed proposal: not before this */
    uint32_t joiners;     /* learners that asked us to add them */
    uint64_t next_hb, next_join;
    uint64_t store[KEYS];
    uint64_t lock[KEYS];
    int64_t next_lsn, durable;
    bool learner;
    bool amnesiac; /* an empty replacement, not yet a member of a view */
    uint64_t snap_ballot;
    struct view_value last; /* the view installed last, to resend to a laggard */
    uint16_t log_gen; /* its log's generation: a snapshot install starts a new one */
    /* Its disk: the store a snapshot install left (base), what it held
     * prepared then, and the log since. A crash keeps what is durable. */
    uint64_t base[KEYS];
    struct tpc_txn base_prep[KEYS];
    char base_ops[KEYS][OPS_BYTES];
    uint32_t nbase_prep;
    struct lrec *log;
    size_t nlog, caplog;
    bool down;       /* crashed, its disk kept: restarts later */
    bool discarding; /* its state is being replaced: aborts decide nothing */
};

struct txr {
    uint64_t txid;
    int key;
    uint64_t val;
    uint32_t applied, aborted;
    bool told_failed; /* its client was told it did not happen (and may retry) */
    /* What each replica's log holds of it (a log outlives tpc's memory of
     * decisions): 1 PREPARE, 2 COMMIT, 3 ABORT; valid while the replica's
     * log generation (changed by a snapshot install) is logged_gen. */
    uint8_t logged[NMAX];
    uint16_t logged_gen[NMAX];
};

enum opkind { OP_WRITE, OP_READ };
enum opst { OS_PENDING, OS_OK, OS_FAILED, OS_UNKNOWN };

struct op {
    enum opkind kind;
    int key;
    uint64_t val;
    int at;
    int tries;
    enum opst st;
    uint64_t started;
};

static struct {
    uint64_t seed;
    enum inject bug;
    bool verbose;
    int n;
    uint32_t drift_ppm;
    size_t remembered; /* tpc's remembered_max: small in some runs, so decisions
                          are forgotten while replicas are away */
    uint64_t now;      /* real time, ns */
    struct rep r[NMAX];
    uint64_t model[KEYS];
    struct txr *tx;
    size_t ntx, captx;
    struct op *ops;
    size_t nops, capops;
    bool failed;
    char why[512];
    uint32_t cut[NMAX]; /* cut[a] bit b: a's messages to b are lost */
    uint64_t chosen_epoch[64];
    uint64_t chosen_sig[64];
    /* counts */
    uint64_t writes_ok, writes_failed, reads_ok, reads_refused, views, stale_checked;
    uint64_t settled_commit, settled_abort, joins;
} S;

static void fail(const char *fmt, ...)
{
    va_list ap;

    if (S.failed)
        return;
    S.failed = true;
    va_start(ap, fmt);
    vsnprintf(S.why, sizeof(S.why), fmt, ap);
    va_end(ap);
}

static void vlog(const char *fmt, ...)
{
    va_list ap;

    if (!S.verbose)
        return;
    printf("%10.3f ms  ", S.now / 1e6);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
}

/* A replica's monotonic clock (ns). */
static uint64_t clk(const struct rep *r)
{
    return (uint64_t)(r->off + r->rate * (double)S.now);
}

static uint64_t us_of(const struct rep *r)
{
    return clk(r) / 1000;
}

static uint32_t bit(int id)
{
    return 1u << id;
}

static uint32_t all_mask(void)
{
    return (1u << S.n) - 1;
}

static bool is_member(const struct rep *r)
{
    return !r->learner && r->acc.epoch > 0 && (r->acc.members & bit(r->id));
}

/* ---- transactions: the model --------------------------------------------------- */

/* The transactions of a run, found by txid through an open-addressing
 * index (slot = position + 1; 0: empty). */
static uint32_t *txidx;
static size_t txidx_cap;

static size_t tx_home(uint64_t txid)
{
    return (size_t)((txid * 0x9e3779b97f4a7c15ull) >> 20) & (txidx_cap - 1);
}

static void tx_index_grow(void)
{
    size_t cap = txidx_cap ? txidx_cap * 2 : 4096;

    free(txidx);
    txidx = calloc(cap, sizeof(*txidx));
    if (txidx == NULL)
        abort();
    txidx_cap = cap;
    for (size_t i = 0; i < S.ntx; i++) {
        size_t h = tx_home(S.tx[i].txid);
        while (txidx[h])
            h = (h + 1) & (txidx_cap - 1);
        txidx[h] = (uint32_t)(i + 1);
    }
}

static struct txr *tx_get(uint64_t txid, bool add)
{
    size_t h;

    if (txidx_cap == 0 || 2 * (S.ntx + 1) > txidx_cap)
        tx_index_grow();
    for (h = tx_home(txid); txidx[h]; h = (h + 1) & (txidx_cap - 1))
        if (S.tx[txidx[h] - 1].txid == txid)
            return &S.tx[txidx[h] - 1];
    if (!add)
        return NULL;
    if (S.ntx == S.captx) {
        S.captx = S.captx ? S.captx * 2 : 256;
        S.tx = realloc(S.tx, S.captx * sizeof(*S.tx));
        if (S.tx == NULL)
            abort();
    }
    S.tx[S.ntx] = (struct txr){.txid = txid, .key = -1};
    txidx[h] = (uint32_t)(S.ntx + 1);
    return &S.tx[S.ntx++];
}

static void ops_encode(char *p, int key, uint64_t val)
{
    p[0] = (char)key;
    util_put_le64(p + 1, val);
}

static void ops_decode(const char *p, int *key, uint64_t *val)
{
    *key = (uint8_t)p[0];
    *val = util_get_le64(p + 1);
}

/* ---- sending ------------------------------------------------------------------- */

static struct msg *msg_new(enum mkind k, int from, int to)
{
    struct msg *m = calloc(1, sizeof(*m));

    if (m == NULL)
        abort();
    m->kind = k;
    m->from = from;
    m->to = to;
    return m;
}

static struct msg *msg_dup(const struct msg *m)
{
    struct msg *d = msg_new(m->kind, m->from, m->to);

    *d = *m;
    memset(&d->value, 0, sizeof(d->value));
    view_value_copy(&d->value, &m->value);
    d->doubt = NULL;
    d->know = NULL;
    d->snap = NULL;
    if (m->ndoubt && m->doubt) {
        d->doubt = malloc(m->ndoubt * sizeof(*d->doubt));
        memcpy(d->doubt, m->doubt, m->ndoubt * sizeof(*d->doubt));
    }
    if (m->ndoubt && m->know) {
        d->know = malloc(m->ndoubt);
        memcpy(d->know, m->know, m->ndoubt);
    }
    if (m->snap) {
        d->snap = malloc(sizeof(*d->snap));
        *d->snap = *m->snap;
    }
    if (m->kind == M_TPC)
        d->tm.ops = d->ops;
    return d;
}

/* Puts m on the network (lost across a cut, delayed, maybe duplicated). */
static void net_send(struct msg *m)
{
    bool chaos = S.now < CHAOS_NS;

    if (m->kind != M_CLIENT && (S.cut[m->from] & bit(m->to))) {
        msg_free(m);
        return;
    }
    if (chaos && m->kind != M_CLIENT && chance(1)) {
        msg_free(m);
        return;
    }
    if (chaos && m->kind != M_CLIENT && chance(1))
        push((struct ev){.at = S.now + between(100 * US, 3 * MS),
                         .kind = E_MSG,
                         .r = m->to,
                         .inc = S.r[m->to].inc,
                         .m = msg_dup(m)});
    push((struct ev){.at = S.now + between(100 * US, 3 * MS),
                     .kind = E_MSG,
                     .r = m->to,
                     .inc = S.r[m->to].inc,
                     .m = m});
}

/* ---- the resource manager and tpc's environment -------------------------------- */

static void env_send(void *ctx, const struct tpc_msg *tm)
{
    struct rep *r = ctx;
    struct msg *m = msg_new(M_TPC, r->id, (int)tm->to);

    m->tm = *tm;
    if (tm->nbytes) {
        memcpy(m->ops, tm->ops, OPS_BYTES);
        m->tm.ops = m->ops;
    }
    net_send(m);
}

static struct txr *tx_get(uint64_t txid, bool add);

static int64_t env_log(void *ctx, enum tpc_log_type type, const struct tpc_txn *t)
{
    struct rep *r = ctx;
    int64_t lsn = ++r->next_lsn;
    struct txr *x = tx_get(t->txid, true);
    uint8_t rec = type == TPC_LOG_PREPARE  ? 1
                  : type == TPC_LOG_COMMIT ? 2
                  : type == TPC_LOG_ABORT  ? 3
                                           : 0;

    if (rec && (x->logged_gen[r->id] != r->log_gen || rec > 1 || x->logged[r->id] == 0)) {
        x->logged[r->id] = rec;
        x->logged_gen[r->id] = r->log_gen;
    }
    if (r->nlog == r->caplog) {
        r->caplog = r->caplog ? r->caplog * 2 : 256;
        r->log = realloc(r->log, r->caplog * sizeof(*r->log));
        if (r->log == NULL)
            abort();
    }
    {
        struct lrec l = {.lsn = lsn,
                         .type = (uint8_t)type,
                         .txid = t->txid,
                         .view = t->view,
                         .coord = t->coord,
                         .members = t->members,
                         .key = -1};
        if (type == TPC_LOG_PREPARE && t->ops)
            ops_decode(t->ops, &l.key, &l.val);
        r->log[r->nlog++] = l;
    }
    push((struct ev){.at = S.now + between(20 * US, 2 * MS),
                     .kind = E_SYNC,
                     .r = r->id,
                     .inc = r->inc,
                     .a = (uint64_t)lsn});
    return lsn;
}

static int env_prepare(void *ctx, const struct tpc_txn *t, void **handle)
{
    struct rep *r = ctx;
    int key;
    uint64_t val;
    struct txr *x;

    ops_decode(t->ops, &key, &val);
    if (key < 0 || key >= KEYS)
        return TPC_R_BAD_OPS;
    if (r->lock[key] && r->lock[key] != t->txid)
        return TPC_R_BUSY;
    r->lock[key] = t->txid;
    *handle = (void *)(uintptr_t)(key + 1);
    x = tx_get(t->txid, true);
    x->key = key;
    x->val = val;
    return 0;
}

static void env_commit(void *ctx, const struct tpc_txn *t, void *handle)
{
    struct rep *r = ctx;
    int key = (int)(uintptr_t)handle - 1;
    struct txr *x = tx_get(t->txid, true);

    if (x->told_failed)
        fail("txid %" PRIx64 " applied on replica %d after its client was told it failed",
             t->txid, r->id);
    if (x->applied == 0)
        S.model[key] = x->val; /* the serialization order: first application */
    x->applied |= bit(r->id);
    r->store[key] = x->val;
    if (r->lock[key] == t->txid)
        r->lock[key] = 0;
    vlog("r%d commit %" PRIx64 " k%d=%" PRIu64, r->id, t->txid, key, x->val);
}

static void env_abort(void *ctx, const struct tpc_txn *t, void *handle)
{
    struct rep *r = ctx;
    int key = (int)(uintptr_t)handle - 1;
    struct txr *x = tx_get(t->txid, true);

    if (!r->discarding)
        x->aborted |= bit(r->id); /* checked at the end (final_checks) */
    if (r->lock[key] == t->txid)
        r->lock[key] = 0;
}

static void client_retry(int op, uint64_t delay);

static void env_done(void *ctx, void *client, uint64_t txid, bool committed,
                     enum tpc_reason reason, uint32_t culprit)
{
    struct rep *r = ctx;
    int op = (int)(intptr_t)client - 1;

    (void)culprit;
    if (!committed && reason != TPC_R_UNKNOWN && reason != TPC_R_STOPPING) {
        struct txr *x = tx_get(txid, true);
        if (x->applied)
            fail("txid %" PRIx64 " applied, yet its client was told it failed (%s)", txid,
                 tpc_reason_name(reason));
        x->told_failed = true;
    }
    if (op < 0 || S.ops[op].st != OS_PENDING)
        return;
    vlog("r%d done %" PRIx64 " %s %s", r->id, txid, committed ? "committed" : "aborted",
         tpc_reason_name(reason));
    if (committed) {
        S.ops[op].st = OS_OK;
        S.writes_ok++;
    } else if (reason == TPC_R_BUSY || reason == TPC_R_VIEW || reason == TPC_R_CONFLICT ||
               reason == TPC_R_TIMEOUT) {
        client_retry(op, between(1 * MS, 5 * MS));
    } else {
        S.ops[op].st =
            reason == TPC_R_UNKNOWN || reason == TPC_R_STOPPING ? OS_UNKNOWN : OS_FAILED;
        S.writes_failed++;
    }
}

static const struct tpc_env ENV = {.send = env_send,
                                   .log = env_log,
                                   .prepare = env_prepare,
                                   .commit = env_commit,
                                   .abort = env_abort,
                                   .done = env_done};

static struct tpc *new_tpc(struct rep *r)
{
    struct tpc_config cfg = {.self = (uint32_t)r->id,
                             .n = (uint32_t)S.n,
                             .epoch = 1,
                             .prepare_timeout_us = 20000,
                             .resend_us = 10000,
                             .remembered_max = S.remembered,
                             .decide_by_view = true};
    struct tpc_env env = ENV;
    int err;
    struct tpc *t;

    env.ctx = r;
    for (int i = 0; i < S.n; i++)
        cfg.ids[i] = (uint32_t)i;
    t = tpc_new(&cfg, &env, &err);
    if (t == NULL)
        abort();
    for (int i = 0; i < S.n; i++)
        tpc_peer(t, (uint32_t)i, true, 0);
    return t;
}

/* ---- leases and heartbeats ----------------------------------------------------- */

static void send_all(struct rep *r, struct msg *proto)
{
    for (int i = 0; i < S.n; i++) {
        if (i == r->id)
            continue;
        struct msg *m = msg_dup(proto);
        m->from = r->id;
        m->to = i;
        net_send(m);
    }
    msg_free(proto);
}

static void heartbeat(struct rep *r)
{
    uint64_t now = clk(r);
    struct msg *m = msg_new(M_LREQ, r->id, -1);

    m->epoch = r->acc.epoch;
    m->seq = 0;
    if (is_member(r)) {
        m->seq = lease_request(&r->lh, now);
        if (!tpc_frozen(r->tpc) && lease_grant(&r->lg, r->acc.epoch, now))
            lease_granted(&r->lh, r->acc.epoch, m->seq, (uint32_t)r->id);
    }
    send_all(r, m);
    r->next_hb = now + LEASE_NS / 4;
}

/* May r serve a read of key now? */
static bool serves(const struct rep *r, int key)
{
    uint64_t now = clk(r);
    bool lease = lease_valid(&r->lh, now);

    if (S.bug == BUG_LONG_LEASE && !lease && r->lh.until != 0)
        lease = now < r->lh.until + LEASE_NS;
    return !r->dead && is_member(r) && !tpc_frozen(r->tpc) &&
           r->lh.epoch == r->acc.epoch && lease && r->lock[key] == 0;
}

/* ---- views --------------------------------------------------------------------- */

static int add_doubt(void *arg, uint64_t txid, uint32_t coord, uint64_t view,
                     uint32_t members)
{
    struct msg *m = arg;

    (void)view;
    m->doubt = realloc(m->doubt, (m->ndoubt + 1) * sizeof(*m->doubt));
    if (m->doubt == NULL)
        abort();
    memset(&m->doubt[m->ndoubt], 0, sizeof(*m->doubt));
    m->doubt[m->ndoubt].txid = txid;
    m->doubt[m->ndoubt].coord = coord;
    m->doubt[m->ndoubt].members = members;
    m->ndoubt++;
    return 0;
}

static void deliver_local(struct rep *r, struct msg *m);

/* Sends m to `to`, or handles it at once when that is r itself. */
static void send_to(struct rep *r, int to, struct msg *m)
{
    m->from = r->id;
    m->to = to;
    if (to == r->id)
        deliver_local(r, m);
    else
        net_send(m);
}

struct snap_ctx {
    struct rep *r;
    struct snapshot *s;
};

static int snap_doubt(void *arg, uint64_t txid, uint32_t coord, uint64_t view,
                      uint32_t members)
{
    struct snap_ctx *c = arg;
    struct snapshot *s = c->s;
    struct txr *x = tx_get(txid, false);

    if (x == NULL || x->key < 0 || s->nprep >= KEYS || c->r->lock[x->key] != txid)
        return 0;
    ops_encode(s->ops[s->nprep], x->key, x->val);
    s->prep[s->nprep] = (struct tpc_txn){.txid = txid,
                                         .epoch = 1,
                                         .coord = coord,
                                         .nops = 1,
                                         .nbytes = OPS_BYTES,
                                         .view = view,
                                         .members = members};
    s->nprep++;
    return 0;
}

/* Our state for a learner, taken at our promise: the store, and what we
 * hold prepared, each with the view it was prepared in. */
static struct snapshot *take_snapshot(struct rep *r)
{
    struct snapshot *s = calloc(1, sizeof(*s));
    struct snap_ctx c = {r, s};

    if (s == NULL)
        abort();
    s->epoch = r->acc.epoch;
    s->members = r->acc.members;
    memcpy(s->store, r->store, sizeof(s->store));
    tpc_for_each_doubt(r->tpc, snap_doubt, &c);
    return s;
}

/* What r knows of txid: tpc's memory, else its log (a decision tpc
 * forgot is still there; no PREPARE there means it never voted YES, and
 * frozen it refuses the transaction from now on). */
static uint8_t know_of(struct rep *r, uint64_t txid)
{
    enum tpc_know k = tpc_know(r->tpc, txid);
    struct txr *x = tx_get(txid, false);

    if (k != TPC_K_UNSURE)
        return (uint8_t)k;
    if (x != NULL && x->logged_gen[r->id] == r->log_gen && x->logged[r->id] != 0)
        return x->logged[r->id] == 2   ? TPC_K_COMMITTED
               : x->logged[r->id] == 3 ? TPC_K_ABORTED
                                       : TPC_K_PREPARED;
    /* No record in a log that holds all of this replica's history: it never
     * voted YES. A log that began with a snapshot install cannot say. */
    return (uint8_t)(r->log_gen == 0 ? TPC_K_ABSENT : TPC_K_UNSURE);
}

static void on_preq(struct rep *r, struct msg *m)
{
    enum view_verdict v = view_on_promise_req(&r->acc, m->epoch, m->ballot);
    struct msg *p;

    if (v == VIEW_LOWER) {
        p = msg_new(M_NACK, r->id, m->from);
        p->ballot = m->ballot;
        p->a = r->acc.promised;
        send_to(r, m->from, p);
        return;
    }
    if (v != VIEW_OK)
        return;
    /* The promise is forced after every record logged before it (serve's
     * rule): what they decided is durable, and applied, before it is
     * reported or copied to a learner. */
    if (r->next_lsn > r->durable) {
        r->durable = r->next_lsn;
        tpc_durable(r->tpc, (uint64_t)r->durable, us_of(r));
    }
    if (S.bug != BUG_NO_FREEZE)
        tpc_freeze(r->tpc, m->epoch);
    lease_holder_reset(&r->lh, r->acc.epoch);
    lease_grantor_freeze(&r->lg);
    p = msg_new(M_PROMISE, r->id, m->from);
    p->ballot = m->ballot;
    p->accepted = r->acc.accepted;
    if (r->acc.accepted) {
        p->has_value = true;
        view_value_copy(&p->value, &r->acc.value);
    }
    p->current = is_member(r) || (r->learner && r->snap_ballot == m->ballot);
    p->amnesiac = r->amnesiac;
    p->hold = lease_hold_remaining(&r->lg, clk(r));
    tpc_for_each_doubt(r->tpc, add_doubt, p);
    vlog("r%d promises b%" PRIx64 " for e%" PRIu64 " (current %d, %u doubts)", r->id,
         m->ballot, m->epoch, p->current, p->ndoubt);
    send_to(r, m->from, p);
}

static void start_proposal(struct rep *r, uint32_t want, uint32_t learners)
{
    struct msg *m;

    view_propose(&r->vp, (uint32_t)S.n, (uint32_t)r->id, &r->lcfg, r->acc.epoch + 1,
                 ++r->round, want);
    r->proposing = true;
    r->prop_since = clk(r);
    r->majority_since = 0;
    r->snap_for = learners;
    vlog("r%d proposes e%" PRIu64 " b%" PRIx64 " want 0x%x", r->id, r->acc.epoch + 1,
         r->vp.ballot, want);
    m = msg_new(M_PREQ, r->id, r->id);
    m->epoch = r->acc.epoch + 1;
    m->ballot = r->vp.ballot;
    deliver_local(r, m); /* our own promise first: frozen before the snapshot */
    for (int i = 0; i < S.n; i++) {
        if (i == r->id)
            continue;
        struct msg *q = msg_new(M_PREQ, r->id, i);
        q->epoch = r->acc.epoch + 1;
        q->ballot = r->vp.ballot;
        if (learners & bit(i)) {
            q->kind = M_SNAP;
            q->snap = take_snapshot(r);
        }
        net_send(q);
    }
}

static void on_snap(struct rep *r, struct msg *m)
{
    struct snapshot *s = m->snap;

    if (!r->learner)
        return;
    /* Learn the views we missed, keeping what we promised if we were there. */
    if (r->acc.epoch != s->epoch) {
        view_acceptor_free(&r->acc);
        view_acceptor_init(&r->acc, (uint32_t)S.n, (uint32_t)r->id, s->epoch, s->members);
    }
    memcpy(r->store, s->store, sizeof(r->store));
    r->discarding = true;
    tpc_release_all(r->tpc); /* clients still waiting: outcome unknown */
    r->discarding = false;
    memset(r->lock, 0, sizeof(r->lock));
    tpc_free(r->tpc);
    r->tpc = new_tpc(r);
    tpc_set_view(r->tpc, s->epoch, s->members, us_of(r));
    for (uint32_t i = 0; i < s->nprep; i++) {
        struct tpc_txn t = s->prep[i];
        t.ops = s->ops[i];
        if (tpc_recover_prepared(r->tpc, &t, us_of(r)) != 0)
            fail("replica %d could not take a prepared transaction from the snapshot",
                 r->id);
    }
    r->snap_ballot = m->ballot;
    r->log_gen++; /* a new data directory: the old log is gone */
    memcpy(r->base, s->store, sizeof(r->base));
    r->nbase_prep = s->nprep;
    for (uint32_t i = 0; i < s->nprep; i++) {
        r->base_prep[i] = s->prep[i];
        memcpy(r->base_ops[i], s->ops[i], OPS_BYTES);
    }
    r->nlog = 0; /* lsns keep counting: syncs still in flight stay meaningful */
    for (size_t i = 0; i < S.ntx; i++) { /* its earlier decisions are overridden */
        S.tx[i].aborted &= ~bit(r->id);
        S.tx[i].applied &= ~bit(r->id);
    }
    vlog("r%d took a snapshot from r%d (e%" PRIu64 ", %u prepared)", r->id, m->from,
         s->epoch, s->nprep);
    m->kind = M_PREQ;
    on_preq(r, m);
}

static void propose_tick(struct rep *r)
{
    struct view_proposer *p = &r->vp;
    uint64_t now = clk(r);

    if (!r->proposing)
        return;
    if (p->phase == VIEW_P_PROMISING && view_have_majority(p)) {
        if (r->majority_since == 0)
            r->majority_since = now;
        if ((p->promised & p->want) == p->want ||
            now - r->majority_since > LEASE_NS / 4) {
            enum view_phase ph = view_close_promises(p);
            if (ph == VIEW_P_KNOWING) {
                for (int i = 0; i < S.n; i++) {
                    if (!(p->asked & bit(i)))
                        continue;
                    struct msg *m = msg_new(M_KREQ, r->id, i);
                    m->ballot = p->ballot;
                    m->ndoubt = p->ndoubt;
                    m->doubt = malloc(p->ndoubt * sizeof(*m->doubt));
                    memcpy(m->doubt, p->doubt, p->ndoubt * sizeof(*m->doubt));
                    send_to(r, i, m);
                }
            }
        }
    }
    if (p->phase == VIEW_P_WAITING &&
        view_may_accept(p, S.bug == BUG_NO_LEASE_WAIT ? UINT64_MAX : now)) {
        for (int i = 0; i < S.n; i++) {
            struct msg *m = msg_new(M_ACCEPT, r->id, i);
            m->ballot = p->ballot;
            view_value_copy(&m->value, &p->value);
            send_to(r, i, m);
        }
    }
    if (r->proposing &&
        (p->phase == VIEW_P_FAILED || now - r->prop_since > 3 * LEASE_NS)) {
        vlog("r%d gives up proposing: %s", r->id,
             p->phase == VIEW_P_FAILED ? p->why : "slow");
        view_proposer_free(p);
        r->proposing = false;
        r->quiet_until = now + between(LEASE_NS / 4, LEASE_NS);
    }
}

static void on_install(struct rep *r, const struct view_value *v)
{
    enum view_verdict vd;
    int e = (int)(v->epoch % 64);
    uint64_t sig = v->members;

    for (uint32_t i = 0; i < v->nsettled; i++)
        sig = sig * 1000003 ^ v->settled[i].txid ^ v->settled[i].outcome;
    if (S.chosen_epoch[e] == v->epoch && S.chosen_sig[e] != sig)
        fail("two views chosen for epoch %" PRIu64, v->epoch);
    S.chosen_epoch[e] = v->epoch;
    S.chosen_sig[e] = sig;
    vd = view_install(&r->acc, v);
    if (vd == VIEW_BEHIND || (vd == VIEW_OK && !(v->members & bit(r->id)))) {
        /* Missed a view, or left out: catch up before serving again. */
        if (vd == VIEW_BEHIND) {
            view_acceptor_free(&r->acc);
            view_acceptor_init(&r->acc, (uint32_t)S.n, (uint32_t)r->id, v->epoch,
                               v->members);
        }
        if (!r->learner)
            vlog("r%d is left out of e%" PRIu64, r->id, v->epoch);
        r->learner = true;
        tpc_set_view(r->tpc, v->epoch, v->members, us_of(r));
        lease_holder_reset(&r->lh, v->epoch);
        lease_grantor_epoch(&r->lg, v->epoch);
        return;
    }
    if (vd != VIEW_OK)
        return;
    view_value_copy(&r->last, v);
    if (S.bug != BUG_NO_SETTLE) {
        for (uint32_t i = 0; i < v->nsettled; i++) {
            int rc = tpc_settle(r->tpc, v->settled[i].txid,
                                v->settled[i].outcome == VIEW_COMMIT, us_of(r));
            if (rc == -EALREADY)
                fail("replica %d decided %" PRIx64
                     " otherwise than the view's settlement",
                     r->id, v->settled[i].txid);
        }
    }
    tpc_set_view(r->tpc, v->epoch, v->members, us_of(r));
    lease_holder_reset(&r->lh, v->epoch);
    lease_grantor_epoch(&r->lg, v->epoch);
    r->learner = false;
    r->amnesiac = false;
    r->joiners &= ~v->members;
    vlog("r%d installs e%" PRIu64 " members 0x%x (%u settled)", r->id, v->epoch,
         v->members, v->nsettled);
}

/* ---- clients ------------------------------------------------------------------- */

static int random_live(void)
{
    for (int tries = 0; tries < 20; tries++) {
        int i = (int)below((uint64_t)S.n);
        if (!S.r[i].dead)
            return i;
    }
    return 0;
}

/* A replica for a new write: one that is not cut off from the others (a
 * client stops sending writes where they time out; reads go anywhere). */
static int write_target(void)
{
    for (int tries = 0; tries < 20; tries++) {
        int i = random_live();
        if ((S.cut[i] & ~bit(i)) != (all_mask() & ~bit(i)))
            return i;
    }
    return random_live();
}

static void client_send(int op)
{
    struct msg *m = msg_new(M_CLIENT, -1, S.ops[op].at);

    m->op = op;
    net_send(m);
}

static void client_retry(int op, uint64_t delay)
{
    if (++S.ops[op].tries > 200) {
        S.ops[op].st = OS_FAILED;
        if (S.ops[op].kind == OP_WRITE)
            S.writes_failed++;
        return;
    }
    push((struct ev){.at = S.now + delay, .kind = E_RETRY, .a = (uint64_t)op});
}

static void new_op(enum opkind kind, int at)
{
    struct op *o;

    if (S.nops == S.capops) {
        S.capops = S.capops ? S.capops * 2 : 1024;
        S.ops = realloc(S.ops, S.capops * sizeof(*S.ops));
        if (S.ops == NULL)
            abort();
    }
    o = &S.ops[S.nops];
    *o = (struct op){.kind = kind,
                     .key = (int)below(KEYS),
                     .val = S.nops + 1,
                     .at = at,
                     .started = S.now};
    client_send((int)S.nops++);
}

static void on_client(struct rep *r, int op)
{
    struct op *o = &S.ops[op];
    uint32_t culprit;
    char ops[OPS_BYTES];

    if (o->st != OS_PENDING)
        return;
    if (o->kind == OP_READ) {
        if (serves(r, o->key)) {
            S.stale_checked++;
            if (r->store[o->key] != S.model[o->key])
                fail("stale read: replica %d served key %d = %" PRIu64
                     ", latest write %" PRIu64,
                     r->id, o->key, r->store[o->key], S.model[o->key]);
            o->st = OS_OK;
            S.reads_ok++;
            return;
        }
        S.reads_refused++;
        o->at = r->lock[o->key] && is_member(r) ? r->id : random_live();
        client_retry(op, between(1 * MS, 10 * MS));
        return;
    }
    if (!is_member(r) || tpc_frozen(r->tpc)) {
        o->at = random_live();
        client_retry(op, between(2 * MS, 10 * MS));
        return;
    }
    ops_encode(ops, o->key, o->val);
    /* Its wall clock: real time, so that a replacement's ids are new. */
    uint64_t txid = tpc_next_txid(r->tpc, S.now / 1000 + 1000000);
    int rc = tpc_begin(r->tpc, txid, 1, ops, OPS_BYTES, (void *)(intptr_t)(op + 1),
                       us_of(r), &culprit);
    if (rc == TPC_R_BUSY || rc == TPC_R_VIEW || rc == TPC_R_NOT_MEMBER) {
        if (rc == TPC_R_NOT_MEMBER)
            o->at = random_live();
        client_retry(op, between(1 * MS, 5 * MS));
    } else if (rc != 0) {
        o->st = OS_FAILED;
        S.writes_failed++;
    }
}

/* ---- dispatch ------------------------------------------------------------------ */

static void deliver_local(struct rep *r, struct msg *m)
{
    uint64_t now = clk(r);

    if (m->from >= 0 && m->from != r->id)
        r->heard[m->from] = now;
    switch (m->kind) {
    case M_TPC:
        tpc_receive(r->tpc, &m->tm, us_of(r));
        break;
    case M_LREQ:
        if (m->seq && m->epoch == r->acc.epoch && (r->acc.members & bit(m->from)) &&
            !r->learner && lease_grant(&r->lg, m->epoch, now)) {
            struct msg *g = msg_new(M_GRANT, r->id, m->from);
            g->epoch = m->epoch;
            g->seq = m->seq;
            net_send(g);
        }
        if (m->epoch > r->acc.epoch + 1 && !r->learner) {
            vlog("r%d sees epoch %" PRIu64 " from r%d: left behind", r->id, m->epoch,
                 m->from);
            r->learner = true;
        }
        if (m->epoch + 1 == r->acc.epoch && r->last.epoch == r->acc.epoch) {
            /* It missed our last INSTALL: send it again. */
            struct msg *in = msg_new(M_INSTALL, r->id, m->from);
            view_value_copy(&in->value, &r->last);
            net_send(in);
        }
        break;
    case M_GRANT:
        if (S.bug == BUG_LONG_LEASE) {
            /* counted as usual; serves() stretches it */
        }
        lease_granted(&r->lh, m->epoch, m->seq, (uint32_t)m->from);
        break;
    case M_PREQ:
        on_preq(r, m);
        break;
    case M_SNAP:
        on_snap(r, m);
        break;
    case M_NACK:
        if (m->a >> 8 >= r->round)
            r->round = (m->a >> 8) + 1;
        break;
    case M_PROMISE:
        if (r->proposing && m->ballot == r->vp.ballot) {
            struct view_promise pr = {.accepted = m->accepted,
                                      .value = m->has_value ? &m->value : NULL,
                                      .current = m->current,
                                      .amnesiac = m->amnesiac,
                                      .hold_ns = m->hold,
                                      .ndoubt = m->ndoubt,
                                      .doubt = m->doubt};
            view_on_promise(&r->vp, (uint32_t)m->from, &pr, now);
        }
        break;
    case M_KREQ: {
        struct msg *k = msg_new(M_KNOW, r->id, m->from);
        k->ballot = m->ballot;
        k->ndoubt = m->ndoubt;
        k->know = malloc(m->ndoubt ? m->ndoubt : 1);
        for (uint32_t i = 0; i < m->ndoubt; i++)
            k->know[i] = know_of(r, m->doubt[i].txid);
        send_to(r, m->from, k);
        break;
    }
    case M_KNOW:
        if (r->proposing && m->ballot == r->vp.ballot)
            view_on_know(&r->vp, (uint32_t)m->from, m->know, m->ndoubt);
        break;
    case M_ACCEPT:
        if (view_on_accept(&r->acc, &m->value, m->ballot) == VIEW_OK) {
            struct msg *a = msg_new(M_ACCEPTED, r->id, m->from);
            a->ballot = m->ballot;
            send_to(r, m->from, a);
        }
        break;
    case M_ACCEPTED:
        if (r->proposing && m->ballot == r->vp.ballot &&
            view_on_accepted(&r->vp, (uint32_t)m->from) == VIEW_P_CHOSEN) {
            S.views++;
            for (int i = 0; i < S.n; i++) {
                struct msg *in = msg_new(M_INSTALL, r->id, i);
                view_value_copy(&in->value, &r->vp.value);
                send_to(r, i, in);
            }
            view_proposer_free(&r->vp);
            r->proposing = false;
        }
        break;
    case M_INSTALL:
        on_install(r, &m->value);
        break;
    case M_JOIN:
        /* Added, or (an empty replacement of a member) added back, with our
         * state. */
        if (is_member(r))
            r->joiners |= bit(m->from);
        if (is_member(r) && !r->proposing && now >= r->quiet_until)
            start_proposal(r, r->acc.members | r->joiners, r->joiners);
        break;
    case M_CLIENT:
        on_client(r, m->op);
        break;
    }
    msg_free(m);
}

/* Failure detection: a member that heard nothing from another member for
 * L/2 proposes a view without it, the lowest-ranked first. */
static void detect(struct rep *r)
{
    uint64_t now = clk(r);
    uint32_t suspects = 0, rank = 0;

    if (!is_member(r) || r->proposing || now < r->quiet_until)
        return;
    for (int i = 0; i < S.n; i++)
        if (i != r->id && (r->acc.members & bit(i)) && now - r->heard[i] > LEASE_NS / 2)
            suspects |= bit(i);
    if (suspects == 0 && !tpc_frozen(r->tpc)) {
        r->suspect_since = 0;
        return;
    }
    /* Suspects, or a view change that stopped half way (we promised, no
     * view came): propose, the lowest-ranked live member first - if we hear
     * a majority at all (a proposal needs one; a replica cut off from it
     * stops serving when its lease ends, which is what the lease is for). */
    uint32_t hear = bit(r->id);
    for (int i = 0; i < S.n; i++)
        if (i != r->id && now - r->heard[i] <= LEASE_NS / 2)
            hear |= bit(i);
    if ((uint32_t)__builtin_popcount(hear) < view_majority((uint32_t)S.n))
        return;
    if (r->suspect_since == 0)
        r->suspect_since = now;
    for (int i = 0; i < r->id; i++)
        if ((r->acc.members & bit(i)) && !(suspects & bit(i)))
            rank++;
    if (now - r->suspect_since >= rank * LEASE_NS / 2)
        start_proposal(r, (r->acc.members & ~suspects) | r->joiners, r->joiners);
}

static void tick(struct rep *r)
{
    uint64_t now = clk(r);

    tpc_tick(r->tpc, us_of(r));
    if (now >= r->next_hb)
        heartbeat(r);
    detect(r);
    propose_tick(r);
    if (r->learner && !r->proposing && now >= r->next_join) {
        /* Ask a member of the view we know (an empty machine knows none:
         * anyone) to add us, with its state. */
        for (int tries = 0; tries < 4 * S.n; tries++) {
            int i = (int)below((uint64_t)S.n);
            if (i != r->id && ((r->acc.members & bit(i)) || r->acc.members == 0)) {
                struct msg *j = msg_new(M_JOIN, r->id, i);
                net_send(j);
                break;
            }
        }
        r->next_join = now + LEASE_NS;
    }
}

/* ---- faults -------------------------------------------------------------------- */

static void replica_init(struct rep *r, int id, bool empty)
{
    r->id = id;
    r->inc++;
    r->dead = false;
    r->paused_until = 0;
    r->off = (double)between(0, 1000000) * MS;
    r->rate = 1.0 + ((double)below(2 * S.drift_ppm + 1) - S.drift_ppm) / 1e6;
    r->lcfg = (struct lease_config){
        .lease_ns = LEASE_NS, .drift_ppm = S.drift_ppm, .n = (uint32_t)S.n};
    view_acceptor_free(&r->acc);
    view_acceptor_init(&r->acc, (uint32_t)S.n, (uint32_t)id, empty ? 0 : 1,
                       empty ? 0 : all_mask());
    if (r->tpc)
        tpc_free(r->tpc);
    r->tpc = new_tpc(r);
    if (empty)
        tpc_set_view(r->tpc, 0, 0, us_of(r)); /* votes for nothing until it joins */
    lease_holder_init(&r->lh, &r->lcfg, r->acc.epoch);
    lease_grantor_init(&r->lg, &r->lcfg, r->acc.epoch, clk(r));
    view_proposer_free(&r->vp);
    view_value_free(&r->last);
    r->proposing = false;
    r->learner = empty;
    r->amnesiac = empty;
    r->snap_ballot = 0;
    memset(r->store, 0, sizeof(r->store));
    memset(r->lock, 0, sizeof(r->lock));
    for (int i = 0; i < NMAX; i++)
        r->heard[i] = clk(r);
    r->suspect_since = 0;
    r->next_hb = clk(r);
    r->next_join = clk(r) + LEASE_NS;
    r->next_lsn = r->durable = 0;
}

/* A replica's process is gone: its clients' connections break, and what
 * they sent it may or may not have been applied. */
static void clients_lose(int victim)
{
    for (size_t i = 0; i < S.nops; i++)
        if (S.ops[i].st == OS_PENDING && S.ops[i].kind == OP_WRITE &&
            S.ops[i].at == victim)
            S.ops[i].st = OS_UNKNOWN;
}

enum fault {
    F_PAUSE,
    F_CUT,
    F_CUT_ONEWAY,
    F_CUT_PARTIAL,
    F_KILL,
    F_SPLIT,
    F_CRASH,
    F_MAX
};

struct ledger {
    uint64_t txid;
    const struct lrec *prep;
    int base;  /* index + 1 of a prepare its snapshot install brought, or 0 */
    int state; /* 1 prepared, 2 committed, 3 aborted */
    bool end;
};

static struct ledger *led_find(struct ledger *led, size_t *nled, size_t cap,
                               uint64_t txid)
{
    for (size_t j = 0; j < *nled; j++)
        if (led[j].txid == txid)
            return &led[j];
    if (*nled == cap)
        return NULL;
    led[*nled] = (struct ledger){.txid = txid};
    return &led[(*nled)++];
}

/* The log replayed onto the base store: what it left open goes to tpc. */
static void replay(struct rep *r, struct ledger *led, size_t *nled, size_t cap)
{
    for (uint32_t i = 0; i < r->nbase_prep; i++) {
        struct ledger *e = led_find(led, nled, cap, r->base_prep[i].txid);
        if (e) {
            e->base = (int)i + 1;
            e->state = 1;
        }
    }
    for (size_t i = 0; i < r->nlog; i++) {
        const struct lrec *l = &r->log[i];
        struct ledger *e = led_find(led, nled, cap, l->txid);
        if (e == NULL)
            continue;
        if (l->type == TPC_LOG_PREPARE) {
            e->prep = l;
            e->state = 1;
        } else if (l->type == TPC_LOG_COMMIT) {
            int key = -1;
            uint64_t val = 0;
            if (e->prep) {
                key = e->prep->key;
                val = e->prep->val;
            } else if (e->base) {
                ops_decode(r->base_ops[e->base - 1], &key, &val);
            }
            if (key >= 0) {
                struct txr *x = tx_get(l->txid, true);
                if (x->applied == 0)
                    S.model[key] = val; /* its first application: this replay */
                x->applied |= bit(r->id);
                r->store[key] = val;
            }
            e->state = 2;
        } else if (l->type == TPC_LOG_ABORT) {
            e->state = 3;
        } else if (l->type == TPC_LOG_END) {
            e->end = true;
        }
    }
}

/* The restart of a replica whose disk survived: its store is the base its
 * last snapshot install left plus the log replayed; its acceptor state is
 * durable (a promise re-applied before anything reaches it); tpc gets what
 * the log left open, as serve's recovery does. */
static void restart(struct rep *r)
{
    static struct ledger led[8192];
    size_t nled = 0;

    r->dead = r->down = false;
    r->inc++;
    r->off = (double)between(0, 1000000) * MS; /* a new boot: a new monotonic base */
    memcpy(r->store, r->base, sizeof(r->store));
    memset(r->lock, 0, sizeof(r->lock));
    tpc_free(r->tpc);
    r->tpc = new_tpc(r);
    tpc_set_view(r->tpc, r->acc.epoch, r->acc.members, us_of(r));
    replay(r, led, &nled, 8192);
    if (r->acc.promised)
        tpc_freeze(r->tpc, r->acc.epoch + 1);
    for (size_t j = 0; j < nled; j++) {
        struct ledger *e = &led[j];
        if (e->state == 1 && (e->prep || e->base)) {
            struct tpc_txn t;
            char ops[OPS_BYTES];
            if (e->prep) {
                ops_encode(ops, e->prep->key, e->prep->val);
                t = (struct tpc_txn){.txid = e->txid,
                                     .epoch = 1,
                                     .coord = e->prep->coord,
                                     .nops = 1,
                                     .ops = ops,
                                     .nbytes = OPS_BYTES,
                                     .view = e->prep->view,
                                     .members = e->prep->members};
            } else {
                t = r->base_prep[e->base - 1];
                t.ops = r->base_ops[e->base - 1];
            }
            if (tpc_recover_prepared(r->tpc, &t, us_of(r)) != 0)
                fail("replica %d could not prepare %" PRIx64 " again", r->id, t.txid);
        } else if (e->state == 2 && !e->end && (e->txid & 0xff) == (uint64_t)r->id) {
            tpc_recover_committed(r->tpc, e->txid, 1, us_of(r));
        } else if (e->state >= 2) {
            tpc_recover_decided(r->tpc, e->txid, 1, (uint32_t)(e->txid & 0xff),
                                e->state == 2, us_of(r));
        }
    }
    tpc_recovered(r->tpc, us_of(r));
    lease_holder_init(&r->lh, &r->lcfg, r->acc.epoch);
    lease_grantor_init(&r->lg, &r->lcfg, r->acc.epoch, clk(r));
    if (r->acc.promised)
        lease_grantor_freeze(&r->lg);
    view_proposer_free(&r->vp);
    r->proposing = false;
    for (int i = 0; i < NMAX; i++)
        r->heard[i] = clk(r);
    r->suspect_since = 0;
    r->next_hb = clk(r);
    r->next_join = clk(r) + LEASE_NS;
    push((struct ev){.at = S.now + TICK_NS, .kind = E_TICK, .r = r->id, .inc = r->inc});
    vlog("r%d restarted on its disk (epoch %" PRIu64 ", %zu records)", r->id,
         r->acc.epoch, r->nlog);
}

static void schedule_faults(void)
{
    int nf = (int)between(1, 4);
    uint64_t t = between(300 * MS, 800 * MS);

    for (int i = 0; i < nf && t < CHAOS_NS - 500 * MS; i++) {
        push((struct ev){
            .at = t, .kind = E_FAULT, .a = below(F_MAX), .r = (int)below((uint64_t)S.n)});
        t += between(300 * MS, 1200 * MS);
    }
}

/* Replicas whose disk is gone: dead, or replaced and not yet a member (an
 * acceptor that lost its state). Losing a majority of them loses data no
 * protocol can bring back; the simulator stays below that. */
static int killed_count(void)
{
    int k = 0;
    for (int i = 0; i < S.n; i++)
        k += (S.r[i].dead && !S.r[i].down) || S.r[i].amnesiac;
    return k;
}

static void on_fault(int victim, int kind)
{
    struct rep *r = &S.r[victim];
    uint64_t len =
        chance(50) ? between(LEASE_NS / 2, LEASE_NS) : between(LEASE_NS, 5 * LEASE_NS);

    if (r->dead && kind < 100)
        return;
    switch (kind) {
    case F_PAUSE:
        r->paused_until = S.now + len;
        vlog("r%d paused for %.1f ms", victim, len / 1e6);
        break;
    case F_CUT:
    case F_CUT_ONEWAY:
    case F_CUT_PARTIAL: {
        /* Partial: it cannot send, and hears one other replica only (it
         * learns nothing of a view change, and suspects slowly). */
        int keep = (victim + 1 + (int)below((uint64_t)S.n - 1)) % S.n;
        for (int i = 0; i < S.n; i++) {
            if (i == victim)
                continue;
            S.cut[victim] |= bit(i);
            if (kind == F_CUT || (kind == F_CUT_PARTIAL && i != keep))
                S.cut[i] |= bit(victim);
        }
        push((struct ev){.at = S.now + len, .kind = E_FAULT, .a = 100, .r = victim});
        vlog("r%d cut off%s for %.1f ms", victim,
             kind == F_CUT_ONEWAY    ? " (its sends)"
             : kind == F_CUT_PARTIAL ? " (but for one)"
                                     : "",
             len / 1e6);
        break;
    }
    case F_SPLIT:
        /* No majority anywhere: every replica alone (writes must stop, and
         * reads once the leases run out), then healed. */
        for (int i = 0; i < S.n; i++)
            S.cut[i] = all_mask() & ~bit(i);
        for (int i = 0; i < S.n; i++)
            push((struct ev){.at = S.now + len, .kind = E_FAULT, .a = 100, .r = i});
        vlog("every replica cut off from every other for %.1f ms", len / 1e6);
        break;
    case F_KILL:
        if (2 * (killed_count() + 1) >= S.n + 1)
            return; /* keep a majority of whole disks */
        r->dead = true;
        r->inc++;
        clients_lose(victim);
        vlog("r%d killed; replaced by an empty machine later", victim);
        push((struct ev){.at = S.now + len * 2, .kind = E_FAULT, .a = 101, .r = victim});
        break;
    case 100: /* heal a cut */
        for (int i = 0; i < S.n; i++) {
            S.cut[victim] &= ~bit(i);
            S.cut[i] &= ~bit(victim);
        }
        break;
    case F_CRASH: {
        size_t keep;
        if (chance(20)) {
            /* The whole cluster at once (a power cut): every replica on
             * its disk, restarting one after another. */
            for (int i = 0; i < S.n; i++)
                if (i != victim && !S.r[i].dead)
                    on_fault(i, 103);
        }
        /* fall through */
    case 103:
        keep = 0;
        r->dead = r->down = true;
        r->inc++;
        clients_lose(victim);
        /* The disk keeps what was durable, and maybe some written since. */
        while (keep < r->nlog && r->log[keep].lsn <= r->durable)
            keep++;
        while (keep < r->nlog && chance(50))
            keep++;
        r->nlog = keep;
        vlog("r%d crashed (its disk kept)", victim);
        push((struct ev){.at = S.now + between(1 * MS, 300 * MS),
                         .kind = E_FAULT,
                         .a = 102,
                         .r = victim});
        break;
    }
    case 102:
        restart(r);
        break;
    case 101: /* the replacement, with an empty disk */
        replica_init(r, victim, true);
        push((struct ev){
            .at = S.now + TICK_NS, .kind = E_TICK, .r = victim, .inc = r->inc});
        vlog("r%d replaced (empty)", victim);
        break;
    }
}

/* ---- the run ------------------------------------------------------------------- */

static void dispatch(struct ev *e)
{
    struct rep *r = e->r >= 0 && e->r < S.n ? &S.r[e->r] : NULL;

    if (e->kind == E_FAULT) {
        if (e->a >= 100 || S.now < CHAOS_NS)
            on_fault(e->r, (int)e->a);
        return;
    }
    if (e->kind == E_NEWOP) {
        if (S.now < CHAOS_NS + HEAL_NS / 2) {
            if (chance(60))
                new_op(OP_WRITE, write_target());
            else
                new_op(OP_READ, random_live());
        }
        push((struct ev){.at = S.now + between(1 * MS, 6 * MS), .kind = E_NEWOP});
        return;
    }
    if (e->kind == E_RETRY) {
        client_send((int)e->a);
        return;
    }
    if (r == NULL)
        return;
    if (e->inc != r->inc || r->dead) {
        if (e->m && e->m->kind == M_CLIENT) {
            /* the request reached a dead machine: the client tries another */
            S.ops[e->m->op].at = random_live();
            client_retry(e->m->op, 5 * MS);
        }
        if (e->m)
            msg_free(e->m);
        return;
    }
    if (r->paused_until > S.now) {
        e->at = r->paused_until;
        push(*e);
        return;
    }
    switch (e->kind) {
    case E_MSG:
        deliver_local(r, e->m);
        break;
    case E_SYNC:
        if ((int64_t)e->a > r->durable) {
            r->durable = (int64_t)e->a;
            tpc_durable(r->tpc, (uint64_t)r->durable, us_of(r));
        }
        break;
    case E_TICK:
        tick(r);
        push((struct ev){
            .at = S.now + TICK_NS, .kind = E_TICK, .r = r->id, .inc = r->inc});
        break;
    default:
        break;
    }
}

/* After the heal: every replica a member, every store the model, and a
 * write through each replica commits. */
static void final_checks(void)
{
    uint32_t members = 0;

    for (size_t i = 0; i < S.ntx; i++)
        if (S.tx[i].applied && S.tx[i].aborted) {
            fail("txid %" PRIx64 " applied on 0x%x and aborted on 0x%x", S.tx[i].txid,
                 S.tx[i].applied, S.tx[i].aborted);
            return;
        }

    for (int i = 0; i < S.n; i++) {
        struct rep *r = &S.r[i];
        if (r->dead || !is_member(r)) {
            fail("replica %d is not a member after the heal (epoch %" PRIu64
                 ", members 0x%x)",
                 i, r->acc.epoch, r->acc.members);
            return;
        }
        members |= bit(i);
        for (int k = 0; k < KEYS; k++) {
            if (r->lock[k]) {
                fail("replica %d still holds key %d locked by %" PRIx64 " after the heal",
                     i, k, r->lock[k]);
                return;
            }
            if (r->store[k] != S.model[k]) {
                fail("replica %d holds key %d = %" PRIu64
                     ", the latest write is %" PRIu64,
                     i, k, r->store[k], S.model[k]);
                return;
            }
        }
    }
    for (size_t i = 0; i < S.nops; i++) {
        const struct op *o = &S.ops[i];
        if (o->kind == OP_WRITE && o->st == OS_PENDING &&
            S.now - o->started > HEAL_NS / 2)
            fail("write %zu (key %d) still undecided after the heal", i, o->key);
    }
}

static bool run(uint64_t seed)
{
    memset(&S.r, 0, sizeof(S.r));
    free(txidx);
    txidx = NULL;
    txidx_cap = 0;
    free(S.tx);
    free(S.ops);
    uint64_t keep_seed = S.seed;
    enum inject bug = S.bug;
    bool verbose = S.verbose;
    memset(&S, 0, sizeof(S));
    S.seed = keep_seed;
    S.bug = bug;
    S.verbose = verbose;
    rs[0] = seed ^ 0x9e3779b97f4a7c15ull;
    rs[1] = seed * 0xbf58476d1ce4e5b9ull + 1;
    rs[2] = seed * 0x94d049bb133111ebull + 2;
    rs[3] = ~seed;
    for (int i = 0; i < 8; i++)
        rnd();
    S.n = 3 + 2 * (int)(seed % 2);
    S.drift_ppm = seed % 3 == 0 ? 100000 : seed % 3 == 1 ? 10000 : 500;
    S.remembered = seed % 4 == 0 ? 16 : seed % 4 == 1 ? 200 : 4096;
    nheap = 0;
    for (int i = 0; i < S.n; i++) {
        replica_init(&S.r[i], i, false);
        push((struct ev){
            .at = between(0, TICK_NS), .kind = E_TICK, .r = i, .inc = S.r[i].inc});
    }
    push((struct ev){.at = 1 * MS, .kind = E_NEWOP});
    schedule_faults();
    while (nheap > 0 && !S.failed) {
        struct ev e = pop();
        if (e.at > END_NS) {
            if (e.m)
                msg_free(e.m);
            continue;
        }
        S.now = e.at;
        dispatch(&e);
    }
    while (nheap > 0) {
        struct ev e = pop();
        if (e.m)
            msg_free(e.m);
    }
    if (!S.failed)
        final_checks();
    for (int i = 0; i < S.n; i++) {
        tpc_free(S.r[i].tpc);
        S.r[i].tpc = NULL;
        view_acceptor_free(&S.r[i].acc);
        view_proposer_free(&S.r[i].vp);
        view_value_free(&S.r[i].last);
        free(S.r[i].log);
        S.r[i].log = NULL;
    }
    return !S.failed;
}

int main(int argc, char **argv)
{
    uint64_t first = 1, count = 100, pass = 0, failed = 0;
    bool until_fail = false;
    uint64_t views = 0, wok = 0, rok = 0;

    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "--seeds", 7) == 0 && i + 1 < argc) {
            count = strtoull(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
            first = strtoull(argv[++i], NULL, 10);
            count = 1;
        } else if (strcmp(argv[i], "--until-fail") == 0) {
            until_fail = true;
        } else if (strcmp(argv[i], "-v") == 0) {
            S.verbose = true;
        } else if (strncmp(argv[i], "--inject-bug=", 13) == 0) {
            const char *b = argv[i] + 13;
            S.bug = strcmp(b, "no-lease-wait") == 0 ? BUG_NO_LEASE_WAIT
                    : strcmp(b, "long-lease") == 0  ? BUG_LONG_LEASE
                    : strcmp(b, "no-freeze") == 0   ? BUG_NO_FREEZE
                    : strcmp(b, "no-settle") == 0   ? BUG_NO_SETTLE
                                                    : BUG_NONE;
            if (S.bug == BUG_NONE) {
                fprintf(stderr, "vsim: unknown bug %s\n", b);
                return 2;
            }
        } else {
            fprintf(stderr,
                    "usage: vsim [--seeds N | --seed S] [--inject-bug=NAME] [-v]\n");
            return 2;
        }
    }
    for (uint64_t s = first; s < first + count; s++) {
        if (run(s)) {
            pass++;
        } else {
            failed++;
            printf("seed %" PRIu64
                   " FAILED: %s; replay with: build/rel/vsim --seed %" PRIu64 " -v\n",
                   s, S.why, s);
            if (until_fail)
                break;
        }
        views += S.views;
        wok += S.writes_ok;
        rok += S.reads_ok;
    }
    printf("views installed %" PRIu64 ", writes acknowledged %" PRIu64
           ", reads checked %" PRIu64 "\n",
           views, wok, rok);
    printf("%" PRIu64 " passed, %" PRIu64 " failed\n", pass, failed);
    return failed ? 1 : 0;
}
