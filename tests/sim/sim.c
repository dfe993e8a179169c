/*
 * sim.c - a deterministic simulator that tries to break two-phase commit.
 *
 * One process runs N replicas (3..5, cycling by seed), each made of the real
 * pieces the server uses: a struct tpc (the 2PC state machine), a struct
 * store, a txn_rm resource manager over it, and a write-ahead log kept in
 * memory. Client writes go through the path serve takes (txn_holder, then
 * store_prepare on the coordinator's store, txn_encode_change, store_abort,
 * tpc_begin); log records are the payloads serve writes; a restart replays
 * them with recover_replay_payload and hands the ledger to a new tpc, as
 * serve's cluster_open does.
 *
 * Everything around them is simulated, adversarially but within what can
 * happen:
 *   - the network delays each message 50..3000 us (so it reorders), drops
 *     and duplicates some; a partition cuts a link for a while. What was in
 *     flight to a replica that crashes, or over a link that is cut, is lost;
 *     what a replica sent before it crashed still arrives (TCP delivers what
 *     left the host). Each end of a link learns it went down or up on its
 *     own time, so messages can come from a peer tpc believes down;
 *   - group commit makes the log durable 20 us..2 ms (10 ms on a slow disk)
 *     after a record is appended. A crash keeps the durable records and
 *     maybe some written since (a process crash loses nothing the kernel
 *     has; a record can also be durable with tpc not yet told);
 *   - crashes strike at random times, just after a replica logs a record or
 *     answers a client, or on every replica at once (power loss), and a
 *     replica's log can fail, at a random time or right after it appends a
 *     record (most often a coordinator's COMMIT: its commit point); the
 *     failed batch is cut back off the log, or (the cut failing too) some
 *     of it may survive; its operator then restarts it. Restarts come after
 *     1..250 ms;
 *   - some replicas take snapshots as serve's start_snapshot does (the
 *     store image, tpc_for_each_open's transactions, a position capped by
 *     tpc_unapplied_lsn), which replace the log they cover once complete;
 *   - some clusters are short of memory or have a small --max-value on some
 *     replicas, so participants vote NO_MEMORY or TOO_LARGE; clocks are
 *     skewed by up to 20 ms, now and then a host's clock is seconds off,
 *     and in half the runs a restarted replica's clock has been stepped
 *     (forward or back, up to 1.5 s);
 *   - clients issue set, add, replace, append, prepend, cas (after a gets,
 *     sometimes stale), incr, decr, delete, touch, gat (1..3 keys) and
 *     flush_all (now, or delayed by up to 400 ms) on 3..8 keys, so
 *     transactions conflict, and retry as serve does; many items expire
 *     within the run (up to 400 ms ahead, some already expired when
 *     written), so writes meet dead items, touches revive live ones, and
 *     every replica runs serve's expiry (txn_expire_batch: the dead keys it
 *     owns, deleted by a transaction of its own); reads check what each
 *     replica serves;
 *   - in some runs a replica restarts, once, on an emptied data directory
 *     (its log, snapshot and RUN state gone) or on an older copy of its own
 *     (taken at an earlier crash, a run or more before): the fence
 *     (lib/fence.c, as serve wires it: STATE exchanged as a link comes up,
 *     messages from a peer that is behind dropped, clients refused until a
 *     peer confirms) must find it behind if it had voted since on a
 *     transaction that committed; then nothing may commit after (its vote
 *     would have counted), it must serve no read, and the run is not
 *     expected to settle (no catch-up: transactions it coordinated may stay
 *     in doubt on the others, whose settled state alone is compared).
 *
 * DETERMINISM. Time is simulated, in microseconds, and advances only from
 * event to event. Events sit in one binary heap ordered by (time, sequence
 * number), so ties are broken by scheduling order. Every random choice comes
 * from one xoshiro256** generator seeded from the run's seed. No wall clock,
 * no threads, no I/O but printing; no pointer value or hash-table iteration
 * order decides anything. The same --seed prints the same output byte for
 * byte, and a hash of the event trace makes that easy to see.
 *
 * THE MODEL. A run is a chaos phase (client writes and reads, crashes,
 * partitions, drops, a failed log now and then) and then a heal: crashed
 * replicas restart, cuts heal, drops and new writes stop, and the loop runs
 * until nothing is in flight. Alongside, the simulator keeps the history:
 * every transaction id a coordinator handed out, which replicas' resource
 * managers committed or aborted it, what its client was told, and a model
 * store that applies each committed transaction when it is first applied on
 * any replica (for a key, that order is the order of its lock holders, so
 * it is the serialization order).
 *
 * CHECKS (any failure prints the seed and how to replay it):
 *   - atomicity: no transaction committed on one replica and aborted on
 *     another; every committed one is applied on every replica in the end;
 *     none is applied twice by one incarnation of a replica;
 *   - serializability: each committed transaction's CHECK saw the version
 *     the previous committed writer of its key left, and its effect is what
 *     its command (set, add, cas, incr, append...) does to that state;
 *   - outcomes: an acknowledged write committed; an aborted or rejected one
 *     did not; a write whose coordinator crashed or whose log failed may go
 *     either way;
 *   - clocks decide nothing stored: each committed transaction's effect is
 *     what its command does at its coordinator's time (the CHECK's), with
 *     liveness judged there; an expiry deletes only an item dead then;
 *   - reads: on any live replica, a key no transaction holds is stored as
 *     the model says (item, cas, expiry, time stamp; and the flush_all in
 *     force), and reads as live exactly when the model's item is live at
 *     that replica's clock (this is what lets serve answer gets locally);
 *   - durability and convergence: after the heal every replica's stored
 *     state (dead items included; store_digest too) equals the model (the
 *     last committed effect of every key; absent if never written, deleted,
 *     flushed or expired by a replica), so all replicas are identical;
 *   - no key is left unwritable: once everything has settled, a set of each
 *     key through a random replica commits (a store that is full may refuse
 *     it; a conflict or a lock that outlasts the retries fails the run);
 *   - liveness: once every replica is up and every link is healed, no
 *     transaction stays in doubt, holds a lock or awaits an ACK beyond a
 *     generous deadline (60 simulated seconds);
 *   - every replica prepares and commits a transaction with the operations
 *     its coordinator decided. A coordinator that restarts can hand out an
 *     id it used before but never logged (its sequence may run ahead of its
 *     clock after it raised it past ids from faster clocks in its log):
 *     each use is tracked apart, by its operations, and the reuse is
 *     counted; it fails the run only if an earlier use had committed;
 *   - a restart never fails to replay its log or to prepare again what it
 *     logged as prepared.
 *
 * SELF-TEST. --inject-bug makes the checks fail on purpose, to show they
 * can: "skip-commit" (the default) has replica 1 release instead of apply
 * the transactions other replicas coordinate; "flip" has it abort them
 * (while its tpc believes it committed); "lying-disk" loses the last
 * durable log record at every crash; "no-fence" ignores what the fence
 * (lib/fence.c) says, so a replica restarted on an emptied directory
 * serves and votes. CI runs them and expects failure.
 *
 * Usage: sim [--seeds N | --seed S] [--replicas N] [--ops N] [-v]
 * (--seeds N runs seeds 1..N, default 200; --seed S runs one, and -v prints
 * every event). A run stops at its first failed check: that is the one to
 * replay with --seed S -v.
 */
#include "buf.h"
#include "fence.h"
#include "limits.h"
#include "log.h"
#include "recover.h"
#include "store.h"
#include "tpc.h"
#include "txn.h"
#include "wal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The replicas' wall clocks start here (late 2023 in microseconds), so
 * transaction ids and item times look like real ones. */
#define WALL_BASE_US 1700000000000000ull
#define NKEYS_MAX 8
#define MAX_FAIL_LINES 12
/* Liveness: after the heal, everything must settle within this. */
#define SETTLE_DEADLINE_US (60ull * 1000 * 1000)
/* A client gives up on a key held this many times in a row (serve answers
 * a timeout after --lock-wait-ms; here the waits are 1..5 ms each). */
#define LOCK_WAITS_MAX 60

/* ---- random numbers -------------------------------------------------------- */

struct rng {
    uint64_t s[4];
};

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void rng_seed(struct rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

/* xoshiro256**: fast, and good enough that no test outcome hinges on it. */
static uint64_t rng_next(struct rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;

    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* A number in lo..hi inclusive (the modulo bias is irrelevant here). */
static uint64_t rng_range(struct rng *r, uint64_t lo, uint64_t hi)
{
    return lo + rng_next(r) % (hi - lo + 1);
}

static bool rng_chance(struct rng *r, double p)
{
    return (double)(rng_next(r) >> 11) * (1.0 / 9007199254740992.0) < p;
}

/* ---- what the simulation is made of ------------------------------------------ */

enum ev_kind {
    EV_MSG,          /* a message reaches replica b */
    EV_SYNC,         /* replica a's group commit: its log is durable */
    EV_TICK,         /* replica a's timer */
    EV_ARRIVAL,      /* a client request arrives */
    EV_RETRY,        /* client x tries its write again */
    EV_CRASH,        /* a random live replica crashes */
    EV_CRASH_TARGET, /* replica a (incarnation inc) is killed */
    EV_CRASH_ALL,    /* every replica loses power */
    EV_RESTART,      /* replica a starts again */
    EV_NOTICE_DOWN,  /* replica a notices its link to b broke */
    EV_CONNECT,      /* the link a-b is (re)established */
    EV_NOTICE_UP,    /* replica a sees its link to b up */
    EV_SNAPSHOT,     /* a random live replica starts a snapshot */
    EV_SNAP_DONE,    /* replica a's snapshot is durable: the log it covers goes */
    EV_CUT,          /* a random link is cut */
    EV_UNCUT,        /* the cut link a-b heals */
    EV_LOG_FAIL,     /* a random live replica's log fails */
    EV_HEAL,         /* the chaos phase ends */
    EV_SETTLED,      /* after the heal: is everything settled? */
    EV_EXPIRE,       /* replica a's expiry walk */
    EV_LOG_FAIL_TARGET, /* replica a's (incarnation inc) log fails */
};

static const char *const ev_names[] = {
    "msg",     "sync",      "tick",       "arrival",       "retry",
    "crash",   "kill",      "power-loss", "restart",       "notice-down",
    "connect", "notice-up", "snapshot",   "snapshot-done", "cut",
    "uncut",   "log-fail",  "heal",       "settled?",      "expire",
    "log-fail-at-commit",
};

/* A message in flight: a copy of what tpc sent, ops included. */
struct netmsg {
    struct tpc_msg m;
    uint32_t to_inc;  /* the receiver's incarnation when sent */
    uint64_t cut_gen; /* the link's cut count when sent */
    char ops[];
};

struct ev {
    uint64_t t, seq;
    uint64_t x;
    struct netmsg *msg;
    uint32_t inc, inc2;
    uint8_t kind, a, b;
};

/* One log record, as the server would append it. */
struct rec {
    uint64_t lsn;
    uint8_t type;
    uint32_t len;
    char *payload;
};

/* A snapshot, as serve writes it: the store's items, the transactions still
 * open (as PREPARE and COMMIT records), and the log position it covers. */
struct snap_item {
    char key[2];
    char *value;
    uint32_t nval, flags;
    int64_t exptime_ms, mtime_ms;
    uint64_t cas;
};

struct snapshot {
    uint64_t lsn, next_cas;
    int64_t flush_at_ms; /* the flush_all in force */
    struct snap_item *items;
    size_t nitems, capitems;
    struct rec *open;
    size_t nopen, capopen;
};

struct sim;

struct replica {
    struct sim *sim;
    uint32_t id;
    bool alive, log_failed, sync_pending, restart_pending;
    uint32_t inc; /* incarnation: bumped by each crash */
    int64_t skew_us;
    uint64_t sync_max_us; /* its disk's slowest group commit */
    uint64_t max_bytes, value_bytes_max;
    struct store *store;
    struct txn_rm rm;
    struct tpc *tpc;
    struct rec *log;
    size_t nlog, caplog;
    uint64_t last_lsn, durable_lsn;
    /* Prepared transactions the resource manager holds, so a crash can
     * release them (tpc_free does not). */
    struct txn_prep **preps;
    size_t npreps, cappreps;
    bool notified[TPC_REPLICAS_MAX]; /* what our tpc was last told of each link */
    bool expiring;      /* an expiry transaction of its own is under way */
    uint32_t expire_tx; /* its txrec index + 1 */
    char expire_client; /* its address is the client tpc_begin gets */
    struct snapshot *snap;           /* the newest complete snapshot */
    struct snapshot *snap_pending;   /* one being written */
    /* Is each replica's data current (lib/fence.c)? The RUN state it keeps
     * across restarts: every txid it logged is at or below hist_ceiling;
     * run_seen is the fence's seen[] (written at once here). */
    struct fence fence;
    uint64_t hist_ceiling;
    uint64_t run_seen[LIMIT_REPLICAS_MAX];
    bool emptied;       /* restarted on an emptied directory, or an older
                           copy of its own */
    size_t wiped_ntx;   /* transactions recorded then */
    size_t lost_from;   /* what it voted on from this transaction on, its
                           directory no longer holds (0: emptied) */
    /* An older copy of its directory (taken at a crash, while it had no
     * snapshot: the log from its start), restored at a later start. */
    struct rec *bk_log;
    size_t bk_nlog, bk_ntx;
    uint64_t bk_last_lsn, bk_hist_ceiling;
    uint64_t bk_seen[LIMIT_REPLICAS_MAX];
    bool bk_taken;
    uint32_t bk_inc; /* its incarnation when copied */
    bool wiped;         /* ground truth, at the end: it had voted YES on a
                           transaction that committed, so it lost data */
};

enum cmd_kind {
    K_SET,
    K_ADD,
    K_REPLACE,
    K_APPEND,
    K_PREPEND,
    K_CAS,
    K_INCR,
    K_DECR,
    K_DELETE,
    K_TOUCH,
    K_FLUSH,
    K_GAT,
    K_NKINDS,
    K_EXPIRE = K_NKINDS /* a replica deleting keys it found expired */
};

static const char *const kind_names[K_NKINDS + 1] = {
    "set",  "add",  "replace", "append", "prepend",   "cas", "incr",
    "decr", "delete", "touch", "flush_all", "gat", "expire",
};

/* A client's command (or a replica's expiry). */
struct cmd {
    uint8_t kind, key, nvalue;
    uint8_t keys; /* gat, expire: a mask of the keys */
    char value[24];
    uint32_t flags;
    int64_t exptime_ms;
    int64_t flush_at_ms; /* flush_all: 0 = now */
    uint64_t delta, cas;
};

enum cop_state { COP_WAIT, COP_PENDING, COP_DONE };

/* A client write, through its retries. */
struct cop {
    struct cmd cmd;
    uint32_t replica, inc;
    uint8_t state;
    uint16_t attempts, lock_waits;
    uint32_t gen; /* invalidates stale retry events */
    uint32_t tx;  /* index of the current attempt's txrec + 1 */
    uint8_t refused; /* enum store_status, when its condition failed */
};

enum tx_status { T_PENDING, T_ACKED, T_ABORTED, T_REJECTED, T_UNKNOWN };

static const char *const status_names[] = {"pending", "acknowledged", "aborted",
                                           "rejected", "unknown"};

/* What the simulator knows of one use of a transaction id (a coordinator
 * that restarts can hand an id out again; each use is its own record, told
 * apart by its operations). */
struct txrec {
    uint64_t txid;
    uint32_t prev_use; /* index + 1 of the earlier use of txid, 0 = none */
    uint64_t order;    /* when first applied anywhere (1, 2, ...), 0 = never */
    struct cmd cmd;
    uint32_t cop;
    uint32_t coord;
    uint8_t status, reason;
    uint32_t commit_mask, abort_mask;
    uint32_t voted_mask; /* replicas that sent a YES vote for it */
    uint32_t commit_inc[TPC_REPLICAS_MAX]; /* incarnation + 1 of the last commit */
    char *ops;
    uint32_t nops, nbytes;
};

/* The model store: one slot per key. */
struct mval {
    bool present;
    char *v;
    size_t n, cap;
    uint32_t flags;
    int64_t exptime_ms, mtime_ms;
    uint64_t cas;
};

struct counts {
    uint64_t runs, events, ops, reads, committed, unknown, cond_failed, lock_waits,
        gave_up, lost, retries;
    uint64_t aborted[TPC_REASON_MAX + 1], rejected[TPC_REASON_MAX + 1];
    uint64_t crashes, restarts, log_failures, partitions, snapshots;
    uint64_t txid_reused, txid_reused_sent;
    uint64_t msgs, dropped, dropped_link, duplicated, lost_in_flight;
    uint64_t queries, answers, resolved_by_query, part_committed, part_aborted, voted_no;
    uint64_t recovered_prepared, recovered_committed, survived_records;
    uint64_t expire_txns, expire_committed;
    uint64_t probes, clock_steps;
    uint64_t settle_us_max;
    uint64_t wipes, fence_dropped, fence_refused;
};

enum inject { INJ_NONE, INJ_SKIP_COMMIT, INJ_FLIP, INJ_LYING_DISK, INJ_NO_FENCE };

struct opts {
    uint64_t seeds, seed;
    bool one;
    uint32_t replicas;
    uint32_t ops;
    bool verbose;
    enum inject inject;
};

struct sim {
    const struct opts *o;
    uint64_t seed;
    struct rng rng;
    uint64_t now;
    uint64_t seq;
    uint64_t hash;
    /* the event queue */
    struct ev *heap;
    size_t nheap, capheap;
    /* parameters of this run */
    uint32_t n, nkeys;
    uint32_t ops_target;
    uint64_t chaos_us, arrival_mean_us;
    double p_drop, p_dup;
    uint64_t prepare_timeout_us, resend_us;
    size_t remembered_max;
    double p_crash_hook;        /* crash a replica right after it logs or answers */
    double p_clock_step;        /* a restarted replica's clock was stepped */
    double p_log_fail_hook;     /* the log fails just after a COMMIT is appended */
    uint32_t log_fails_left;
    uint64_t snapshot_every_us; /* 0 = no snapshots */
    uint32_t crashes_left;
    double p_wipe;       /* a restart finds the data directory emptied */
    uint32_t wipes_left;
    bool wiped_any;      /* a replica lost commits that way */
    bool healed, settled, stop;
    uint32_t probes; /* index of the first probe write + 1, 0 = not yet */
    uint32_t probe_rounds;
    uint64_t heal_at;
    /* replicas and links */
    struct replica rep[TPC_REPLICAS_MAX];
    bool link_up[TPC_REPLICAS_MAX][TPC_REPLICAS_MAX];
    bool cut[TPC_REPLICAS_MAX][TPC_REPLICAS_MAX];
    /* Bumped when a link goes down or comes up, and by each partition. */
    uint64_t gen[TPC_REPLICAS_MAX][TPC_REPLICAS_MAX];
    uint64_t cut_gen[TPC_REPLICAS_MAX][TPC_REPLICAS_MAX];
    /* clients and history */
    struct cop *cops;
    uint32_t ncops;
    uint32_t open_cops;
    struct txrec *tx;
    size_t ntx, captx;
    uint32_t *txmap; /* open addressing: txrec index + 1, 0 = empty */
    size_t txmap_cap;
    uint64_t applied;
    struct mval model[NKEYS_MAX];
    int64_t model_flush_at; /* the flush_all in force in the history */
    uint64_t seen_cas[NKEYS_MAX];
    struct buf scratch; /* a client write's operations */
    struct buf logbuf;  /* a log record being encoded */
    /* outcome */
    uint32_t nfail;
    char reason[512];
    struct counts c;
};

/* ---- output ----------------------------------------------------------------- */

static void trace(struct sim *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void fail(struct sim *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Mixes v into the trace hash (FNV-1a over 64-bit words, then a mix so
 * nearby values spread). */
static void mix(struct sim *s, uint64_t v)
{
    s->hash = (s->hash ^ v) * 0x100000001b3ull;
    s->hash ^= s->hash >> 29;
}

static void trace(struct sim *s, const char *fmt, ...)
{
    va_list ap;

    if (!s->o->verbose)
        return;
    printf("%9" PRIu64 " ", s->now);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
}

/* Records a failed check: the first one becomes the run's reason, and the
 * run stops (the first violation is the one worth replaying). */
static void fail(struct sim *s, const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (s->nfail == 0)
        snprintf(s->reason, sizeof(s->reason), "%s", msg);
    if (s->nfail < MAX_FAIL_LINES)
        printf("seed %" PRIu64 ": at %" PRIu64 " us: %s\n", s->seed, s->now, msg);
    s->nfail++;
    s->stop = true;
}

/* ---- the event queue --------------------------------------------------------- */

static bool ev_before(const struct ev *a, const struct ev *b)
{
    return a->t < b->t || (a->t == b->t && a->seq < b->seq);
}

static void push(struct sim *s, uint64_t at, struct ev e)
{
    size_t i;

    if (s->nheap == s->capheap) {
        s->capheap = s->capheap ? s->capheap * 2 : 1024;
        s->heap = realloc(s->heap, s->capheap * sizeof(*s->heap));
        if (s->heap == NULL) {
            fprintf(stderr, "sim: out of memory\n");
            exit(2);
        }
    }
    e.t = at;
    e.seq = s->seq++;
    i = s->nheap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!ev_before(&e, &s->heap[p]))
            break;
        s->heap[i] = s->heap[p];
        i = p;
    }
    s->heap[i] = e;
}

static bool pop(struct sim *s, struct ev *out)
{
    struct ev last;
    size_t i = 0;

    if (s->nheap == 0)
        return false;
    *out = s->heap[0];
    last = s->heap[--s->nheap];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= s->nheap)
            break;
        if (c + 1 < s->nheap && ev_before(&s->heap[c + 1], &s->heap[c]))
            c++;
        if (!ev_before(&s->heap[c], &last))
            break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    s->heap[i] = last;
    return true;
}

static void schedule(struct sim *s, uint64_t delay, uint8_t kind, uint32_t a, uint32_t b,
                     uint32_t inc, uint64_t x)
{
    struct ev e = {.kind = kind, .a = (uint8_t)a, .b = (uint8_t)b, .inc = inc, .x = x};

    push(s, s->now + delay, e);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);

    if (p == NULL) {
        fprintf(stderr, "sim: out of memory\n");
        exit(2);
    }
    return p;
}

/* Returns a (an array of size-byte elements with room for *cap) grown to
 * hold at least need. */
static void *grow(void *a, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return a;
    size_t c = *cap ? *cap : 16;
    while (c < need)
        c *= 2;
    void *p = realloc(a, c * size);
    if (p == NULL) {
        fprintf(stderr, "sim: out of memory\n");
        exit(2);
    }
    *cap = c;
    return p;
}

/* ---- clocks ------------------------------------------------------------------ */

/* Each replica's wall clock is off by its skew: ids and item times come
 * from it, as they do from the host's clock in serve. */
static uint64_t wall_us(const struct sim *s, uint32_t r)
{
    return (uint64_t)((int64_t)(s->now + WALL_BASE_US) + s->rep[r].skew_us);
}

static int64_t wall_ms(const struct sim *s, uint32_t r)
{
    return (int64_t)(wall_us(s, r) / 1000);
}

/* ---- the history ------------------------------------------------------------- */

static size_t txmap_slot(const struct sim *s, uint64_t txid)
{
    uint64_t h = txid * 0x9e3779b97f4a7c15ull;

    return (size_t)(h >> 20) & (s->txmap_cap - 1);
}

/* The latest use of txid, or NULL. */
static struct txrec *tx_find(struct sim *s, uint64_t txid)
{
    if (s->txmap_cap == 0)
        return NULL;
    for (size_t i = txmap_slot(s, txid);; i = (i + 1) & (s->txmap_cap - 1)) {
        uint32_t v = s->txmap[i];
        if (v == 0)
            return NULL;
        if (s->tx[v - 1].txid == txid)
            return &s->tx[v - 1];
    }
}

/* The use of txid whose operations are ops[0..nbytes), or NULL. */
static struct txrec *tx_find_use(struct sim *s, uint64_t txid, const char *ops,
                                 uint32_t nbytes)
{
    struct txrec *x = tx_find(s, txid);

    while (x && (ops == NULL || x->nbytes != nbytes || memcmp(x->ops, ops, nbytes) != 0))
        x = x->prev_use ? &s->tx[x->prev_use - 1] : NULL;
    return x;
}

/* Makes s->tx[idx] the latest use of its txid. */
static void txmap_insert(struct sim *s, uint32_t idx)
{
    size_t i = txmap_slot(s, s->tx[idx].txid);

    while (s->txmap[i] && s->tx[s->txmap[i] - 1].txid != s->tx[idx].txid)
        i = (i + 1) & (s->txmap_cap - 1);
    s->txmap[i] = idx + 1;
}

static struct txrec *tx_add(struct sim *s, uint64_t txid)
{
    if ((s->ntx + 1) * 2 > s->txmap_cap) {
        free(s->txmap);
        s->txmap_cap = s->txmap_cap ? s->txmap_cap * 2 : 1024;
        s->txmap = calloc(s->txmap_cap, sizeof(*s->txmap));
        if (s->txmap == NULL) {
            fprintf(stderr, "sim: out of memory\n");
            exit(2);
        }
        for (size_t i = 0; i < s->ntx; i++)
            txmap_insert(s, (uint32_t)i);
    }
    const struct txrec *prev = tx_find(s, txid);
    uint32_t prev_use = prev ? (uint32_t)(prev - s->tx) + 1 : 0;
    s->tx = grow(s->tx, &s->captx, s->ntx + 1, sizeof(*s->tx));
    struct txrec *x = &s->tx[s->ntx];
    memset(x, 0, sizeof(*x));
    x->txid = txid;
    x->prev_use = prev_use;
    txmap_insert(s, (uint32_t)s->ntx);
    s->ntx++;
    return x;
}

/* ---- the model store --------------------------------------------------------- */

static int key_index(const struct sim *s, const char *key, size_t nkey)
{
    if (nkey != 2 || key[0] != 'k' || key[1] < '0' || key[1] >= (char)('0' + s->nkeys))
        return -1;
    return key[1] - '0';
}

static void mval_set(struct mval *m, const char *a, size_t na, const char *b, size_t nb)
{
    char *v;

    m->v = grow(m->v, &m->cap, na + nb + 1, 1);
    v = m->v;
    /* a or b may point into m->v itself: move, do not copy. */
    memmove(v + na, b, nb);
    memmove(v, a, na);
    m->n = na + nb;
    m->present = true;
}

/* memcached's incr: 1..20 digits, trailing spaces allowed, no overflow. */
static bool parse_number(const char *v, size_t n, uint64_t *out)
{
    uint64_t x = 0;

    while (n > 0 && v[n - 1] == ' ')
        n--;
    if (n == 0 || n > 20)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned d = (unsigned)(unsigned char)v[i] - '0';
        if (d > 9 || x > (UINT64_MAX - d) / 10)
            return false;
        x = x * 10 + d;
    }
    *out = x;
    return true;
}

static void describe_item(char *dst, size_t cap, bool present, const char *v, size_t n,
                          uint32_t flags, int64_t exptime, int64_t mtime, uint64_t cas)
{
    if (!present) {
        snprintf(dst, cap, "absent");
        return;
    }
    snprintf(dst, cap,
             "\"%.*s%s\" flags %u exptime %" PRId64 " mtime %" PRId64 " cas %" PRIx64,
             n > 40 ? 40 : (int)n, v, n > 40 ? "..." : "", flags, exptime, mtime, cas);
}

/*
 * The command c run on the state prev, live or not at the coordinator's
 * time as live says, as the store does it: whether it applies, and the item
 * it leaves (value in *out). Touch and delete are told apart by the caller.
 */
static bool expected_effect(const struct cmd *c, const struct mval *prev, bool live,
                            uint64_t txid, struct mval *out)
{
    char num[24];
    uint64_t v;

    out->present = true;
    out->flags = c->flags;
    out->exptime_ms = c->exptime_ms;
    out->cas = txid;
    switch (c->kind) {
    case K_SET:
        break;
    case K_ADD:
        if (live)
            return false;
        break;
    case K_REPLACE:
        if (!live)
            return false;
        break;
    case K_CAS:
        if (!live || prev->cas != c->cas)
            return false;
        break;
    case K_APPEND:
    case K_PREPEND:
        if (!live)
            return false;
        out->flags = prev->flags;
        out->exptime_ms = prev->exptime_ms;
        if (c->kind == K_APPEND)
            mval_set(out, prev->v, prev->n, c->value, c->nvalue);
        else
            mval_set(out, c->value, c->nvalue, prev->v, prev->n);
        return true;
    case K_INCR:
    case K_DECR:
        if (!live || !parse_number(prev->v, prev->n, &v))
            return false;
        if (c->kind == K_INCR)
            v += c->delta;
        else
            v = v > c->delta ? v - c->delta : 0;
        snprintf(num, sizeof(num), "%" PRIu64, v);
        out->flags = prev->flags;
        out->exptime_ms = prev->exptime_ms;
        mval_set(out, num, strlen(num), "", 0);
        return true;
    case K_DELETE:
        out->present = false;
        return live;
    case K_TOUCH:
    case K_GAT:
        if (!live)
            return false;
        mval_set(out, prev->v, prev->n, "", 0);
        out->flags = prev->flags;
        out->cas = prev->cas;
        out->mtime_ms = prev->mtime_ms;
        return true;
    default:
        return false;
    }
    mval_set(out, c->value, c->nvalue, "", 0);
    return true;
}

/* Is m live at time t (by the clock of whoever asks), given the history's
 * flush_all? What a read at t must show, and what a coordinator at t sees. */
static bool model_live(const struct sim *s, const struct mval *m, int64_t t)
{
    return m->present && (m->exptime_ms == 0 || m->exptime_ms > t) &&
           !(s->model_flush_at != 0 && t >= s->model_flush_at &&
             m->mtime_ms < s->model_flush_at);
}

/* A flush_all issued at mtime, taking effect at flush_at, on the model (as
 * store_commit does it: decided by the flush's time stamp alone). */
static void model_flush(struct sim *s, int64_t flush_at, int64_t mtime)
{
    if (flush_at <= mtime) {
        for (uint32_t k = 0; k < s->nkeys; k++)
            s->model[k].present = false;
        s->model_flush_at = 0;
        return;
    }
    if (s->model_flush_at != 0 && s->model_flush_at <= mtime)
        for (uint32_t k = 0; k < s->nkeys; k++)
            if (s->model[k].mtime_ms < s->model_flush_at)
                s->model[k].present = false;
    s->model_flush_at = flush_at;
}

static bool cmd_has_key(const struct cmd *c, uint32_t k)
{
    if (c->kind == K_GAT || c->kind == K_EXPIRE)
        return (c->keys >> k) & 1;
    return c->kind != K_FLUSH && k == c->key;
}

/*
 * Transaction x is applied for the first time anywhere: it takes the next
 * place in the commit order. Checks that what its coordinator evaluated
 * (the CHECK's version, and the effect at the CHECK's time) follows from
 * the state the history before it left, then applies the effect to the
 * model.
 */
static void model_commit(struct sim *s, struct txrec *x)
{
    const struct cmd *c = &x->cmd;
    struct wal_op op, check = {0};
    bool have_check = false;
    uint32_t seen = 0;
    int64_t at = 0;
    size_t pos = 0;

    x->order = ++s->applied;
    for (uint32_t i = 0; i < x->nops; i++) {
        if (wal_op_next(x->ops, x->nbytes, &pos, &op) != 1) {
            fail(s, "txid %" PRIx64 ": its operations do not decode", x->txid);
            return;
        }
        if (op.kind == WAL_OP_CHECK) {
            check = op;
            have_check = true;
            continue;
        }
        if (op.kind == WAL_OP_FLUSH) {
            if (c->kind != K_FLUSH || op.flush_at_ms != c->flush_at_ms) {
                fail(s, "txid %" PRIx64 " (%s): an unexpected FLUSH effect", x->txid,
                     kind_names[c->kind]);
                return;
            }
            model_flush(s, op.flush_at_ms, op.mtime_ms);
            continue;
        }
        int k = key_index(s, op.key, op.nkey);
        if (k < 0 || !cmd_has_key(c, (uint32_t)k) || (seen >> k) & 1 || !have_check ||
            check.nkey != op.nkey || memcmp(check.key, op.key, op.nkey) != 0) {
            fail(s, "txid %" PRIx64 " (%s k%u): unexpected operations", x->txid,
                 kind_names[c->kind], c->key);
            return;
        }
        seen |= 1u << k;
        have_check = false;
        at = check.mtime_ms;
        struct mval *m = &s->model[k];
        uint64_t version = m->present ? m->cas : 0;
        if (check.cas != version) {
            fail(s,
                 "not serializable: txid %" PRIx64 " (%s k%d, coordinator r%u) was "
                 "evaluated on version %" PRIx64
                 " of k%d, but the committed history before "
                 "it left version %" PRIx64,
                 x->txid, kind_names[c->kind], k, x->coord, check.cas, k, version);
            return;
        }
        /* Liveness is the coordinator's to judge, at its clock: the CHECK's
         * time. */
        bool live = model_live(s, m, at);
        struct mval want = {0};
        bool ok;
        if (c->kind == K_EXPIRE) {
            ok = op.kind == WAL_OP_DEL && m->present && !live;
        } else {
            ok = expected_effect(c, m, live, x->txid, &want);
            if (ok && c->kind == K_DELETE)
                ok = op.kind == WAL_OP_DEL;
            else if (ok && (c->kind == K_TOUCH || c->kind == K_GAT))
                ok = op.kind == WAL_OP_TOUCH && op.exptime_ms == c->exptime_ms;
            else if (ok && want.exptime_ms != 0 && want.exptime_ms <= at)
                ok = op.kind == WAL_OP_DEL; /* written already expired */
            else if (ok)
                ok = op.kind == WAL_OP_PUT && op.nvalue == want.n &&
                     memcmp(op.value, want.v, want.n) == 0 && op.flags == want.flags &&
                     op.exptime_ms == want.exptime_ms && op.cas == want.cas &&
                     op.mtime_ms == at;
        }
        if (!ok) {
            char had[128];
            describe_item(had, sizeof(had), m->present, m->v, m->n, m->flags,
                          m->exptime_ms, m->mtime_ms, m->cas);
            fail(s,
                 "txid %" PRIx64 " (%s k%d \"%.*s\" delta %" PRIu64 " cas %" PRIx64
                 ", at %" PRId64 ") committed an effect (op kind %d) that its command does "
                 "not have on the committed state %s (%s then)",
                 x->txid, kind_names[c->kind], k, (int)c->nvalue, c->value, c->delta,
                 c->cas, at, (int)op.kind, had, live ? "live" : "dead");
            free(want.v);
            return;
        }
        if (op.kind == WAL_OP_DEL) {
            m->present = false;
        } else if (op.kind == WAL_OP_TOUCH) {
            m->exptime_ms = op.exptime_ms;
        } else {
            mval_set(m, op.value, op.nvalue, "", 0);
            m->flags = op.flags;
            m->exptime_ms = op.exptime_ms;
            m->mtime_ms = op.mtime_ms;
            m->cas = op.cas;
        }
        free(want.v);
    }
    /* A gat leaves out the keys dead at its evaluation, which it does not
     * lock: whether they were is checked then (check_read), not now. */
    if (c->kind != K_GAT && c->kind != K_FLUSH && c->kind != K_EXPIRE && seen != 1u << c->key) {
        fail(s, "txid %" PRIx64 " (%s k%u): no effect on its key", x->txid,
             kind_names[c->kind], c->key);
    }
}

/* Does item it (NULL: absent) hold what the model says key k holds? */
static bool matches_model(const struct sim *s, uint32_t k, const struct item *it)
{
    const struct mval *m = &s->model[k];

    if (it == NULL || !m->present)
        return it == NULL && !m->present;
    return it->nval == m->n && memcmp(item_value(it), m->v, m->n) == 0 &&
           it->flags == m->flags && it->exptime_ms == m->exptime_ms &&
           it->mtime_ms == m->mtime_ms && it->cas == m->cas;
}

static void describe_store_item(char *dst, size_t cap, const struct item *it)
{
    if (it == NULL)
        describe_item(dst, cap, false, NULL, 0, 0, 0, 0, 0);
    else
        describe_item(dst, cap, true, item_value(it), it->nval, it->flags, it->exptime_ms,
                      it->mtime_ms, it->cas);
}

/*
 * A read of key k at replica r, as serve answers it: if a prepared
 * transaction holds the key the read waits (nothing to check now);
 * otherwise the stored item must be the one the last committed write left,
 * and what the read returns must be what the history says at r's clock
 * (expiry and flush_all are judged by the reader's clock; what is stored
 * does not depend on any clock).
 */
static void check_read(struct sim *s, uint32_t r, uint32_t k, const char *why)
{
    struct replica *R = &s->rep[r];
    char key[3] = {'k', (char)('0' + k), 0};
    const struct mval *m = &s->model[k];
    int64_t now = wall_ms(s, r);
    struct item *stored, *it;
    char got[128], want[128];

    if (txn_holder(&R->rm, key, 2) != NULL)
        return;
    stored = store_peek(R->store, key, 2);
    if (!matches_model(s, k, stored)) {
        describe_store_item(got, sizeof(got), stored);
        describe_item(want, sizeof(want), m->present, m->v, m->n, m->flags, m->exptime_ms,
                      m->mtime_ms, m->cas);
        fail(s, "stale %s: r%u stores k%u as %s, but the last committed write left %s",
             why, r, k, got, want);
        return;
    }
    if (store_flush_at(R->store) != s->model_flush_at) {
        fail(s, "%s: r%u has flush_all at %" PRId64 ", the history at %" PRId64, why, r,
             store_flush_at(R->store), s->model_flush_at);
        return;
    }
    it = store_get(R->store, key, 2, now);
    if (it)
        s->seen_cas[k] = it->cas;
    if ((it != NULL) != model_live(s, m, now)) {
        describe_store_item(got, sizeof(got), stored);
        fail(s, "%s: r%u reads k%u at %" PRId64 " as %s, but %s is %s then", why, r, k, now,
             it ? "present" : "absent", got, it ? "dead" : "live");
    }
}

/*
 * `keys` at replica r, as serve answers it: it waits while a prepared
 * transaction holds any key (txn_holder_prefix); otherwise the list is
 * exactly the keys the history has live at r's clock.
 */
static void check_keys(struct sim *s, uint32_t r)
{
    struct replica *R = &s->rep[r];
    int64_t now = wall_ms(s, r);
    struct item **items;
    uint32_t got = 0, want = 0;
    long n;

    if (txn_holder_prefix(&R->rm, "", 0) != NULL)
        return;
    if ((n = store_collect(R->store, "", 0, now, &items)) < 0) {
        fprintf(stderr, "sim: out of memory\n");
        exit(2);
    }
    for (long i = 0; i < n; i++) {
        int k = key_index(s, item_key(items[i]), items[i]->nkey);
        if (k >= 0)
            got |= 1u << k;
        item_unref(items[i]);
    }
    free(items);
    for (uint32_t k = 0; k < s->nkeys; k++)
        if (model_live(s, &s->model[k], now))
            want |= 1u << k;
    if (got != want)
        fail(s, "keys: r%u lists keys %#x at %" PRId64 ", the history has %#x live then", r,
             got, now, want);
}

/* ---- the environment of one replica's tpc -------------------------------------- */

static void env_send(void *ctx, const struct tpc_msg *m)
{
    struct replica *R = ctx;
    struct sim *s = R->sim;
    uint32_t to = m->to, from = R->id;
    int copies = 1;

    if (m->type == TPC_MSG_VOTE && m->vote) {
        struct txrec *vx = tx_find(s, m->txid);
        if (vx)
            vx->voted_mask |= 1u << from;
    }

    s->c.msgs++;
    mix(s, 0x5e4d);
    mix(s, ((uint64_t)m->type << 8) | to);
    mix(s, m->txid);
    trace(s, "r%u send %s txid %" PRIx64 " to r%u%s%s%s", from,
          tpc_msg_type_name(m->type), m->txid, to,
          m->type == TPC_MSG_VOTE ? (m->vote ? " yes" : " no") : "",
          m->type == TPC_MSG_ANSWER ? " " : "",
          m->type == TPC_MSG_ANSWER ? tpc_outcome_name(m->outcome) : "");
    if (to >= s->n || to == from) {
        fail(s, "r%u sent a message to r%u", from, to);
        return;
    }
    if (!s->link_up[from][to]) {
        s->c.dropped_link++;
        return;
    }
    if (rng_chance(&s->rng, s->p_drop)) {
        s->c.dropped++;
        trace(s, "  (dropped)");
        return;
    }
    if (rng_chance(&s->rng, s->p_dup)) {
        s->c.duplicated++;
        copies = 2;
    }
    for (int i = 0; i < copies; i++) {
        struct netmsg *nm = xmalloc(sizeof(*nm) + m->nbytes);
        nm->m = *m;
        nm->m.from = from;
        nm->to_inc = s->rep[to].inc;
        nm->cut_gen = s->cut_gen[from][to];
        if (m->nbytes) {
            memcpy(nm->ops, m->ops, m->nbytes);
            nm->m.ops = nm->ops;
        } else {
            nm->m.ops = NULL;
        }
        struct ev e = {.kind = EV_MSG, .a = (uint8_t)from, .b = (uint8_t)to, .msg = nm};
        push(s, s->now + rng_range(&s->rng, 50, 3000), e);
    }
}

static void encode_record(struct buf *b, const struct tpc_txn *t)
{
    struct wal_txn head = {.txid = t->txid,
                           .epoch = t->epoch,
                           .coordinator = t->coord,
                           .nops = t->ops ? t->nops : 0};

    b->len = 0;
    if (buf_reserve(b, WAL_TXN_BYTES + (t->ops ? t->nbytes : 0)) < 0) {
        fprintf(stderr, "sim: out of memory\n");
        exit(2);
    }
    wal_txn_encode(b->data, &head);
    b->len = WAL_TXN_BYTES;
    if (t->ops) {
        memcpy(b->data + b->len, t->ops, t->nbytes);
        b->len += t->nbytes;
    }
}

/* Now and then, a crash aimed at the moment just after a record is logged
 * or a client answered, when the most is in flight. */
static void crash_hook(struct sim *s, struct replica *R)
{
    if (s->healed || s->crashes_left == 0 || !rng_chance(&s->rng, s->p_crash_hook))
        return;
    s->crashes_left--;
    schedule(s, rng_range(&s->rng, 0, 300), EV_CRASH_TARGET, R->id, 0, R->inc, 0);
}

static void free_records(struct rec *log, size_t from, size_t to);

/* Replica r's log fails. As wal.c does, the failed batch is cut off the
 * log, unless that fails too: then what reached the disk is unknown (a
 * crash keeps some of it, or none). Its operator restarts it later. */
static void log_fail(struct sim *s, uint32_t r)
{
    struct replica *R = &s->rep[r];
    bool rolled = rng_chance(&s->rng, 0.6);

    trace(s, "r%u LOG FAILED (%s)", r, rolled ? "cut back" : "not cut back");
    s->c.log_failures++;
    R->log_failed = true;
    if (rolled) {
        size_t keep = 0;
        while (keep < R->nlog && R->log[keep].lsn <= R->durable_lsn)
            keep++;
        free_records(R->log, keep, R->nlog);
        R->nlog = keep;
    }
    tpc_log_failed(R->tpc, s->now, rolled);
    schedule(s, rng_range(&s->rng, 1000, 30000), EV_CRASH_TARGET, r, 0, R->inc, 0);
}

/* Appends a record; group commit makes it durable later (EV_SYNC). */
static int64_t env_log(void *ctx, enum tpc_log_type type, const struct tpc_txn *t)
{
    struct replica *R = ctx;
    struct sim *s = R->sim;
    struct rec *rc;

    if (R->log_failed)
        return -EIO;
    if (t->txid > R->hist_ceiling)
        R->hist_ceiling = t->txid; /* serve raises its RUN ceiling first */
    fence_logged(&R->fence, t->txid);
    encode_record(&s->logbuf, t);
    R->log = grow(R->log, &R->caplog, R->nlog + 1, sizeof(*R->log));
    rc = &R->log[R->nlog++];
    rc->lsn = ++R->last_lsn;
    rc->type = (uint8_t)type; /* TPC_LOG_x is WAL_REC_x */
    rc->len = (uint32_t)s->logbuf.len;
    rc->payload = xmalloc(s->logbuf.len);
    memcpy(rc->payload, s->logbuf.data, s->logbuf.len);
    mix(s, 0x106);
    mix(s, ((uint64_t)type << 8) | R->id);
    mix(s, t->txid);
    trace(s, "r%u log %s txid %" PRIx64 " lsn %" PRIu64, R->id,
          type == TPC_LOG_PREPARE  ? "PREPARE"
          : type == TPC_LOG_COMMIT ? "COMMIT"
          : type == TPC_LOG_ABORT  ? "ABORT"
                                   : "END",
          t->txid, rc->lsn);
    if (!R->sync_pending) {
        R->sync_pending = true;
        schedule(s, rng_range(&s->rng, 20, R->sync_max_us), EV_SYNC, R->id, 0, R->inc, 0);
    }
    /* Now and then the log fails right after a record: most often a
     * coordinator's COMMIT (its commit point), but any record will do. */
    double p = type == TPC_LOG_COMMIT && t->coord == R->id ? s->p_log_fail_hook
                                                            : s->p_log_fail_hook / 8;
    if (!s->healed && s->log_fails_left > 0 && rng_chance(&s->rng, p)) {
        s->log_fails_left--;
        schedule(s, rng_range(&s->rng, 0, 100), EV_LOG_FAIL_TARGET, R->id, 0, R->inc, 0);
    }
    crash_hook(s, R);
    return (int64_t)rc->lsn;
}

static void preps_remove(struct replica *R, struct txn_prep *p)
{
    for (size_t i = 0; i < R->npreps; i++) {
        if (R->preps[i] == p) {
            R->preps[i] = R->preps[--R->npreps];
            return;
        }
    }
    fprintf(stderr, "sim: a handle the resource manager does not hold\n");
    abort();
}

static int env_prepare(void *ctx, const struct tpc_txn *t, void **handle)
{
    struct replica *R = ctx;
    struct sim *s = R->sim;
    struct txn_prep *p;
    int r = txn_prepare(&R->rm, t, &p);

    mix(s, 0x9e9);
    mix(s, ((uint64_t)r << 8) | R->id);
    mix(s, t->txid);
    trace(s, "r%u prepare txid %" PRIx64 "%s: %s", R->id, t->txid,
          t->recovered ? " (recovered)" : "",
          r ? tpc_reason_name((enum tpc_reason)r) : "yes");
    if (tx_find_use(s, t->txid, t->ops, t->nbytes) == NULL)
        fail(s, "r%u prepared txid %" PRIx64 " with operations no coordinator sent",
             R->id, t->txid);
    if (r != 0)
        return r;
    R->preps = grow(R->preps, &R->cappreps, R->npreps + 1, sizeof(*R->preps));
    R->preps[R->npreps++] = p;
    *handle = p;
    return 0;
}

/* Replica r applied txid, whose operations it holds as ops[0..nbytes)
 * (through its resource manager, or by replaying a COMMIT record at
 * restart). */
static void note_commit(struct sim *s, uint32_t r, uint64_t txid, const char *ops,
                        uint32_t nbytes, bool replayed)
{
    struct replica *R = &s->rep[r];
    struct txrec *x = tx_find_use(s, txid, ops, nbytes);

    if (x == NULL && (x = tx_find(s, txid)) != NULL) {
        fail(s,
             "r%u committed txid %" PRIx64 " with operations other than those its "
             "coordinator r%u decided (%s k%u)%s",
             r, txid, x->coord, kind_names[x->cmd.kind], x->cmd.key,
             replayed ? " (replay)" : "");
        return;
    }
    if (x == NULL) {
        fail(s, "r%u committed txid %" PRIx64 ", which no coordinator handed out", r,
             txid);
        return;
    }
    if (x->commit_inc[r] == R->inc + 1) {
        fail(s, "r%u applied txid %" PRIx64 " twice in one incarnation%s", r, txid,
             replayed ? " (replay)" : "");
        return;
    }
    if (x->abort_mask) {
        fail(s, "txid %" PRIx64 " committed on r%u, aborted on replica mask %#x", txid, r,
             x->abort_mask);
        return;
    }
    if (x->status == T_ABORTED || x->status == T_REJECTED) {
        fail(s, "txid %" PRIx64 " committed on r%u, but its client was told %s (%s)",
             txid, r, status_names[x->status],
             tpc_reason_name((enum tpc_reason)x->reason));
        return;
    }
    x->commit_inc[r] = R->inc + 1;
    x->commit_mask |= 1u << r;
    if (x->order == 0)
        model_commit(s, x);
}

static void note_abort(struct sim *s, uint32_t r, const struct tpc_txn *t)
{
    uint64_t txid = t->txid;
    struct txrec *x = tx_find_use(s, txid, t->ops, t->nbytes);

    if (x == NULL)
        x = tx_find(s, txid);

    if (x == NULL) {
        fail(s, "r%u aborted txid %" PRIx64 ", which no coordinator handed out", r, txid);
        return;
    }
    if (x->commit_mask) {
        fail(s, "txid %" PRIx64 " aborted on r%u, committed on replica mask %#x", txid, r,
             x->commit_mask);
        return;
    }
    x->abort_mask |= 1u << r;
}

static void env_commit(void *ctx, const struct tpc_txn *t, void *handle)
{
    struct replica *R = ctx;
    struct sim *s = R->sim;
    struct txn_prep *p = handle;
    bool buggy = s->o->inject != INJ_NONE && s->o->inject != INJ_LYING_DISK &&
                 R->id == 1 && t->coord != 1;

    mix(s, 0xc0);
    mix(s, R->id);
    mix(s, t->txid);
    trace(s, "r%u commit txid %" PRIx64, R->id, t->txid);
    preps_remove(R, p);
    if (buggy && s->o->inject == INJ_FLIP) {
        note_abort(s, R->id, t);
        txn_abort(&R->rm, p);
        return;
    }
    note_commit(s, R->id, t->txid, t->ops, t->nbytes, false);
    if (buggy)
        txn_abort(&R->rm, p); /* INJ_SKIP_COMMIT: the effect is lost */
    else
        txn_commit(&R->rm, p);
}

static void env_abort(void *ctx, const struct tpc_txn *t, void *handle)
{
    struct replica *R = ctx;
    struct sim *s = R->sim;

    mix(s, 0xab);
    mix(s, R->id);
    mix(s, t->txid);
    trace(s, "r%u abort txid %" PRIx64, R->id, t->txid);
    preps_remove(R, handle);
    note_abort(s, R->id, t);
    txn_abort(&R->rm, handle);
}

static void cop_finish(struct sim *s, struct cop *c)
{
    c->state = COP_DONE;
    c->gen++;
    s->open_cops--;
}

/* Schedules the next attempt of a write, with serve's backoff. */
static void cop_retry(struct sim *s, uint32_t ci, bool lock_wait)
{
    struct cop *c = &s->cops[ci];
    uint64_t delay;

    c->state = COP_WAIT;
    c->gen++;
    if (lock_wait) {
        delay = rng_range(&s->rng, 1000, 5000);
    } else {
        unsigned step = c->attempts < 6 ? c->attempts : 6;
        delay = rng_range(&s->rng, LIMIT_RETRY_BACKOFF_MS_MIN * 1000,
                          (uint64_t)LIMIT_RETRY_BACKOFF_MS_MIN * 1000 << step);
        c->attempts++;
        s->c.retries++;
    }
    schedule(s, delay, EV_RETRY, 0, 0, c->gen, ci);
}

static void env_done(void *ctx, void *client, uint64_t txid, bool committed,
                     enum tpc_reason reason, uint32_t culprit)
{
    struct replica *R = ctx;
    struct sim *s = R->sim;
    struct cop *c = client;
    uint32_t ci = (uint32_t)(c - s->cops);
    struct txrec *x = tx_find(s, txid);

    mix(s, 0xd0);
    mix(s, ((uint64_t)committed << 16) | ((uint64_t)reason << 8) | R->id);
    mix(s, txid);
    trace(s, "r%u done txid %" PRIx64 ": %s%s%s (culprit r%u)", R->id, txid,
          committed ? "committed" : "aborted", committed ? "" : " ",
          committed ? "" : tpc_reason_name(reason), culprit);
    if (client == &R->expire_client) {
        if (x == NULL || !R->expiring || &s->tx[R->expire_tx - 1] != x) {
            fail(s, "r%u reported its expiry txid %" PRIx64 " done twice or wrongly", R->id,
                 txid);
            return;
        }
        R->expiring = false;
        if (committed && (x->order == 0 || !(x->commit_mask & (1u << R->id)))) {
            fail(s, "expiry txid %" PRIx64 " reported committed before it was applied", txid);
            return;
        }
        if (!committed && reason != TPC_R_UNKNOWN && reason != TPC_R_STOPPING &&
            (x->order != 0 || x->commit_mask)) {
            fail(s, "expiry txid %" PRIx64 " reported aborted (%s), but it was applied", txid,
                 tpc_reason_name(reason));
            return;
        }
        x->reason = (uint8_t)reason;
        x->status = committed ? T_ACKED
                    : reason == TPC_R_UNKNOWN || reason == TPC_R_STOPPING ? T_UNKNOWN
                                                                            : T_ABORTED;
        s->c.expire_committed += committed;
        return;
    }
    if (x == NULL || ci >= s->ncops || c->state != COP_PENDING || c->tx == 0 ||
        &s->tx[c->tx - 1] != x) {
        fail(s, "r%u reported txid %" PRIx64 " done to the wrong client", R->id, txid);
        return;
    }
    if (committed) {
        if (x->order == 0 || !(x->commit_mask & (1u << R->id))) {
            fail(s, "txid %" PRIx64 " acknowledged before its coordinator applied it",
                 txid);
            return;
        }
        x->status = T_ACKED;
        s->c.committed++;
        cop_finish(s, c);
        crash_hook(s, R);
        return;
    }
    x->reason = (uint8_t)reason;
    s->c.aborted[reason <= TPC_REASON_MAX ? reason : 0]++;
    if (reason == TPC_R_UNKNOWN || reason == TPC_R_STOPPING) {
        /* The commit record may or may not have made it: the client cannot
         * know, and neither outcome is wrong. (TPC_R_LOG_FAILED is not
         * one of these: the log was cut back, or the COMMIT was never
         * written - it is an abort, checked as such.) */
        x->status = T_UNKNOWN;
        s->c.unknown++;
        cop_finish(s, c);
        return;
    }
    if (x->order != 0 || x->commit_mask) {
        fail(s,
             "txid %" PRIx64 " reported aborted (%s) to its client, but it was applied",
             txid, tpc_reason_name(reason));
        return;
    }
    if (reason == TPC_R_BAD_OPS) {
        fail(s, "txid %" PRIx64 " aborted: a participant could not decode its operations",
             txid);
        return;
    }
    x->status = T_ABORTED;
    if ((reason == TPC_R_BUSY || reason == TPC_R_CONFLICT) &&
        c->attempts < LIMIT_WRITE_RETRIES)
        cop_retry(s, ci, false);
    else
        cop_finish(s, c);
}

/* ---- links -------------------------------------------------------------------- */

/* May A count b (its link is up for 2PC)? As serve: b's data is current
 * and A's own is not behind. */
static bool fence_allows(const struct sim *s, const struct replica *A, uint32_t b)
{
    return s->o->inject == INJ_NO_FENCE ||
           (fence_peer_ok(&A->fence, b) && !A->fence.behind);
}

/* May A answer clients? */
static bool fence_serves(const struct sim *s, const struct replica *A)
{
    return s->o->inject == INJ_NO_FENCE || (A->fence.verified && !A->fence.behind);
}

static void peer_notify(struct sim *s, uint32_t a, uint32_t b, bool up)
{
    struct replica *A = &s->rep[a];

    mix(s, 0x11c);
    mix(s, ((uint64_t)up << 16) | (a << 8) | b);
    trace(s, "r%u sees link to r%u %s", a, b, up ? "up" : "down");
    A->notified[b] = up;
    if (!up)
        fence_link_down(&A->fence, b);
    tpc_peer(A->tpc, b, up && fence_allows(s, A, b), s->now);
}

/* y's STATE reaches x, as the first frame of y's new link to x. */
static void state_in(struct sim *s, uint32_t x, uint32_t y)
{
    struct replica *X = &s->rep[x], *Y = &s->rep[y];
    unsigned ch = fence_state_in(&X->fence, y, Y->fence.mark, Y->fence.seen[x]);

    if (ch & FENCE_PEER_BEHIND)
        trace(s, "r%u finds r%u behind (mark %" PRIx64 ", saw it vote on %" PRIx64 ")", x, y,
              Y->fence.mark, X->fence.seen[y]);
    if (ch & FENCE_SELF_BEHIND)
        trace(s, "r%u learns from r%u that it is behind", x, y);
    if (ch & (FENCE_PEER_BEHIND | FENCE_PEER_CURRENT | FENCE_SELF_BEHIND))
        for (uint32_t z = 0; z < s->n; z++)
            if (z != x && X->notified[z])
                tpc_peer(X->tpc, z, fence_allows(s, X, z), s->now);
}

/* What a message from `from` tells r's fence: a YES vote or an ACK (the
 * sender logged it), a COMMIT (every replica voted YES). */
static void fence_note(struct replica *R, const struct tpc_msg *m, uint32_t from)
{
    if ((m->type == TPC_MSG_VOTE && m->vote) || m->type == TPC_MSG_ACK)
        fence_voted(&R->fence, from, m->txid);
    if (m->type == TPC_MSG_COMMIT)
        fence_committed(&R->fence, R->id, m->txid);
    memcpy(R->run_seen, R->fence.seen, sizeof(R->run_seen));
}

/* The link a-b breaks, and each live end notices after a while (a reset is
 * seen at once, a vanished host much later). */
static void link_down(struct sim *s, uint32_t a, uint32_t b)
{
    if (!s->link_up[a][b])
        return;
    s->link_up[a][b] = s->link_up[b][a] = false;
    s->gen[a][b]++;
    s->gen[b][a]++;
    for (int i = 0; i < 2; i++) {
        uint32_t x = i ? b : a, y = i ? a : b;
        if (!s->rep[x].alive)
            continue;
        uint64_t d = rng_chance(&s->rng, 0.1) ? rng_range(&s->rng, 20000, 100000)
                                              : rng_range(&s->rng, 100, 3000);
        schedule(s, d, EV_NOTICE_DOWN, x, y, s->rep[x].inc, s->gen[x][y]);
    }
}

static void schedule_connect(struct sim *s, uint32_t a, uint32_t b)
{
    struct ev e = {.kind = EV_CONNECT,
                   .a = (uint8_t)a,
                   .b = (uint8_t)b,
                   .inc = s->rep[a].inc,
                   .inc2 = s->rep[b].inc};

    push(s, s->now + rng_range(&s->rng, 200, 3000), e);
}

static void on_connect(struct sim *s, const struct ev *e)
{
    uint32_t a = e->a, b = e->b;

    if (!s->rep[a].alive || !s->rep[b].alive || s->rep[a].inc != e->inc ||
        s->rep[b].inc != e->inc2 || s->cut[a][b] || s->link_up[a][b])
        return;
    s->link_up[a][b] = s->link_up[b][a] = true;
    s->gen[a][b]++;
    s->gen[b][a]++;
    state_in(s, a, b);
    state_in(s, b, a);
    for (int i = 0; i < 2; i++) {
        uint32_t x = i ? b : a, y = i ? a : b;
        /* An end that missed the break (the peer came back before the
         * reset was noticed) sees the old link go down first. Each end
         * learns the new link is up on its own time (its outbound link may
         * finish its handshake after the peer's), so messages can arrive
         * from a peer tpc still believes down. */
        if (s->rep[x].notified[y])
            peer_notify(s, x, y, false);
        schedule(s, rng_range(&s->rng, 0, 1500), EV_NOTICE_UP, x, y, s->rep[x].inc,
                 s->gen[x][y]);
    }
}

static void on_notice_up(struct sim *s, const struct ev *e)
{
    struct replica *A = &s->rep[e->a];

    if (!A->alive || A->inc != e->inc || s->gen[e->a][e->b] != e->x ||
        !s->link_up[e->a][e->b] || A->notified[e->b])
        return;
    peer_notify(s, e->a, e->b, true);
}

static void on_notice_down(struct sim *s, const struct ev *e)
{
    struct replica *A = &s->rep[e->a];

    if (!A->alive || A->inc != e->inc || s->gen[e->a][e->b] != e->x || !A->notified[e->b])
        return;
    peer_notify(s, e->a, e->b, false);
}

/* ---- snapshots ------------------------------------------------------------------ */

static void free_records(struct rec *log, size_t from, size_t to)
{
    for (size_t i = from; i < to; i++)
        free(log[i].payload);
}

static void snapshot_free(struct snapshot *sn)
{
    if (sn == NULL)
        return;
    for (size_t i = 0; i < sn->nitems; i++)
        free(sn->items[i].value);
    free(sn->items);
    for (size_t i = 0; i < sn->nopen; i++)
        free(sn->open[i].payload);
    free(sn->open);
    free(sn);
}

static int snapshot_item(void *arg, const struct item *it)
{
    struct snapshot *sn = arg;
    struct snap_item *si;

    sn->items = grow(sn->items, &sn->capitems, sn->nitems + 1, sizeof(*sn->items));
    si = &sn->items[sn->nitems++];
    memcpy(si->key, item_key(it), 2);
    si->value = xmalloc(it->nval);
    memcpy(si->value, item_value(it), it->nval);
    si->nval = it->nval;
    si->flags = it->flags;
    si->exptime_ms = it->exptime_ms;
    si->mtime_ms = it->mtime_ms;
    si->cas = it->cas;
    return 0;
}

struct open_arg {
    struct sim *s;
    struct snapshot *sn;
};

static int snapshot_open_txn(void *arg, const struct tpc_txn *t, bool prepared)
{
    struct open_arg *oa = arg;
    struct snapshot *sn = oa->sn;
    struct tpc_txn copy = *t;
    struct rec *rc;

    if (!prepared)
        copy.ops = NULL; /* a COMMIT record has no ops */
    encode_record(&oa->s->logbuf, &copy);
    sn->open = grow(sn->open, &sn->capopen, sn->nopen + 1, sizeof(*sn->open));
    rc = &sn->open[sn->nopen++];
    rc->lsn = 0;
    rc->type = prepared ? WAL_REC_PREPARE : WAL_REC_COMMIT;
    rc->len = (uint32_t)oa->s->logbuf.len;
    rc->payload = xmalloc(rc->len);
    memcpy(rc->payload, oa->s->logbuf.data, rc->len);
    return 0;
}

/*
 * Replica r starts a snapshot, as serve's start_snapshot does: it covers
 * every record appended so far, except that it stops before a coordinator's
 * COMMIT that is not durable yet (its effect is not in the store); the image
 * is the store as it is now (serve forks here), plus the open transactions.
 * It becomes durable a little later.
 */
static void snapshot_start(struct sim *s, uint32_t r)
{
    struct replica *R = &s->rep[r];
    struct snapshot *sn = calloc(1, sizeof(*sn));
    struct open_arg oa = {.s = s, .sn = sn};
    uint64_t unapplied = tpc_unapplied_lsn(R->tpc);

    if (sn == NULL) {
        fprintf(stderr, "sim: out of memory\n");
        exit(2);
    }
    sn->lsn = R->last_lsn;
    if (unapplied && unapplied - 1 < sn->lsn)
        sn->lsn = unapplied - 1;
    sn->next_cas = store_max_cas(R->store) + 1; /* as serve's start_snapshot */
    if (tpc_txid_floor(R->tpc) > sn->next_cas)
        sn->next_cas = tpc_txid_floor(R->tpc);
    store_for_each_stored(R->store, snapshot_item, sn);
    sn->flush_at_ms = store_flush_at(R->store);
    tpc_for_each_open(R->tpc, snapshot_open_txn, &oa);
    mix(s, 0x5a);
    mix(s, sn->lsn);
    trace(s,
          "r%u snapshot at lsn %" PRIu64 " (appended %" PRIu64 "): %zu items, %zu open",
          r, sn->lsn, R->last_lsn, sn->nitems, sn->nopen);
    R->snap_pending = sn;
    s->c.snapshots++;
    schedule(s, rng_range(&s->rng, 500, 20000), EV_SNAP_DONE, r, 0, R->inc, 0);
}

/* The snapshot is durable: it replaces the older one and the log up to its
 * position. */
static void snapshot_install(struct sim *s, uint32_t r)
{
    struct replica *R = &s->rep[r];
    struct snapshot *sn = R->snap_pending;
    size_t covered = 0;

    while (covered < R->nlog && R->log[covered].lsn <= sn->lsn)
        covered++;
    trace(s, "r%u snapshot at lsn %" PRIu64 " done: %zu log records go", r, sn->lsn,
          covered);
    if (covered > 0) {
        free_records(R->log, 0, covered);
        memmove(R->log, R->log + covered, (R->nlog - covered) * sizeof(*R->log));
        R->nlog -= covered;
    }
    snapshot_free(R->snap);
    R->snap = sn;
    R->snap_pending = NULL;
}

/* ---- crash and restart ---------------------------------------------------------- */

static void collect_stats(struct sim *s, struct replica *R)
{
    struct tpc_stats st;

    tpc_get_stats(R->tpc, &st);
    s->c.queries += st.queries_sent;
    s->c.answers += st.answers_sent;
    s->c.resolved_by_query += st.resolved_by_query;
    s->c.part_committed += st.part_committed;
    s->c.part_aborted += st.part_aborted;
    s->c.voted_no += st.voted_no;
}

/* Releases what a replica holds in memory (its log stays). */
static void replica_teardown(struct replica *R)
{
    tpc_free(R->tpc);
    R->tpc = NULL;
    /* tpc_free leaves prepared handles to the resource manager: drop them
     * (this is the crash losing memory, not an abort). */
    for (size_t i = 0; i < R->npreps; i++)
        txn_abort(&R->rm, R->preps[i]);
    R->npreps = 0;
    store_free(R->store);
    R->store = NULL;
}

static void crash(struct sim *s, uint32_t r)
{
    struct replica *R = &s->rep[r];
    size_t keep, durable = 0;

    mix(s, 0xdead);
    mix(s, r);
    s->c.crashes++;
    collect_stats(s, R);
    /* Clients connected to r lose their connection: a write in progress
     * has an unknown outcome, one waiting to retry never happens. */
    for (uint32_t i = 0; i < s->ncops; i++) {
        struct cop *c = &s->cops[i];
        if (c->state == COP_DONE || c->replica != r)
            continue;
        if (c->state == COP_PENDING) {
            s->tx[c->tx - 1].status = T_UNKNOWN;
            s->c.unknown++;
        } else {
            s->c.lost++;
        }
        cop_finish(s, c);
    }
    if (R->expiring) {
        s->tx[R->expire_tx - 1].status = T_UNKNOWN;
        R->expiring = false;
    }
    replica_teardown(R);
    /* The log keeps its durable records, and possibly some written after
     * the last sync (a process crash loses nothing the kernel has; the
     * records may also be durable with tpc not told yet). */
    while (durable < R->nlog && R->log[durable].lsn <= R->durable_lsn)
        durable++;
    keep = durable;
    if (durable < R->nlog && rng_chance(&s->rng, 0.5))
        keep = durable + rng_range(&s->rng, 0, R->nlog - durable);
    s->c.survived_records += keep - durable;
    if (s->o->inject == INJ_LYING_DISK && durable > 0)
        keep = durable - 1; /* the disk acknowledged a sync it did not do */
    trace(s, "r%u CRASH: %zu records kept (%zu durable), %zu lost", r, keep, durable,
          R->nlog - keep);
    free_records(R->log, keep, R->nlog);
    R->nlog = keep;
    R->last_lsn = keep ? R->log[keep - 1].lsn : 0;
    if (R->snap && R->snap->lsn > R->last_lsn)
        R->last_lsn = R->snap->lsn; /* the log goes on after the snapshot */
    snapshot_free(R->snap_pending);
    R->snap_pending = NULL;
    R->durable_lsn = R->last_lsn;
    if (s->p_wipe > 0 && !R->bk_taken && R->snap == NULL && rng_chance(&s->rng, 0.5)) {
        /* An operator copies its directory while it is down. */
        R->bk_taken = true;
        R->bk_log = xmalloc((R->nlog ? R->nlog : 1) * sizeof(*R->bk_log));
        for (size_t i = 0; i < R->nlog; i++) {
            R->bk_log[i] = R->log[i];
            R->bk_log[i].payload = xmalloc(R->log[i].len ? R->log[i].len : 1);
            memcpy(R->bk_log[i].payload, R->log[i].payload, R->log[i].len);
        }
        R->bk_nlog = R->nlog;
        R->bk_last_lsn = R->last_lsn;
        R->bk_hist_ceiling = R->hist_ceiling;
        memcpy(R->bk_seen, R->run_seen, sizeof(R->bk_seen));
        R->bk_ntx = s->ntx;
        R->bk_inc = R->inc;
        trace(s, "r%u's directory copied (%zu log records)", r, R->nlog);
    }
    R->alive = false;
    R->log_failed = false;
    R->sync_pending = false;
    R->inc++;
    for (uint32_t x = 0; x < s->n; x++) {
        R->notified[x] = false;
        if (x != r)
            link_down(s, r, x);
    }
    if (!R->restart_pending) {
        uint64_t d = rng_chance(&s->rng, 0.3) ? rng_range(&s->rng, 1000, 10000)
                                              : rng_range(&s->rng, 10000, 250000);
        R->restart_pending = true;
        schedule(s, d, EV_RESTART, r, 0, 0, 0);
    }
}

static const struct recover_txn *ledger_prepared(const struct recover_ledger *l,
                                                 uint64_t txid)
{
    for (size_t i = 0; i < l->nprepared; i++)
        if (l->prepared[i].txid == txid)
            return &l->prepared[i];
    return NULL;
}

/* Starts replica r from its durable log, as serve does: replay into a new
 * store and a ledger, hand the ledger to a new tpc, then connect. */
static void start(struct sim *s, uint32_t r)
{
    struct replica *R = &s->rep[r];
    struct store_config sc = {.max_bytes = R->max_bytes,
                              .value_bytes_max = R->value_bytes_max,
                              .seed = s->seed * 0x9e3779b97f4a7c15ull + r * 131 + R->inc,
                              .initial_buckets = 16,
                              .replicated = true};
    struct recover_ledger ledger = {.self = r, .decided_max = s->remembered_max};
    struct recover_replay rp = {.ledger = &ledger};
    struct tpc_config tc = {.self = r,
                            .n = s->n,
                            .epoch = 1,
                            .prepare_timeout_us = s->prepare_timeout_us,
                            .resend_us = s->resend_us,
                            .remembered_max = s->remembered_max};
    struct tpc_env env = {.ctx = R,
                          .send = env_send,
                          .log = env_log,
                          .prepare = env_prepare,
                          .commit = env_commit,
                          .abort = env_abort,
                          .done = env_done};
    int err;

    mix(s, 0x57a7);
    mix(s, r);
    if (R->inc > 0 && rng_chance(&s->rng, s->p_clock_step)) {
        /* Its clock was stepped while it was down (NTP, a VM restored, an
         * operator): forward or back, by up to 1.5 s. */
        int64_t step = (int64_t)rng_range(&s->rng, 1, 1500) * 1000;
        R->skew_us += rng_chance(&s->rng, 0.5) ? step : -step;
        s->c.clock_steps++;
        trace(s, "r%u clock stepped to %+.1f ms", r, (double)R->skew_us / 1000);
    }
    if (R->inc > 0 && s->wipes_left > 0 && rng_chance(&s->rng, s->p_wipe)) {
        /* Its data directory was emptied (a wrong -d, a wipe) while it was
         * down - the log, the snapshot and RUN are gone - or replaced by an
         * older copy of itself (a backup restored). */
        /* An older copy: one taken at least a run before this one. */
        bool older = R->bk_taken && R->bk_log != NULL && R->inc >= R->bk_inc + 2 &&
                     rng_chance(&s->rng, 0.7);
        bool had = R->hist_ceiling > (older ? R->bk_hist_ceiling : 0); /* it logged since */
        free_records(R->log, 0, R->nlog);
        free(R->log);
        R->log = NULL;
        R->nlog = R->caplog = 0;
        snapshot_free(R->snap);
        R->snap = NULL;
        if (older) {
            R->log = R->bk_log;
            R->nlog = R->caplog = R->bk_nlog;
            R->bk_log = NULL;
            R->last_lsn = R->durable_lsn = R->bk_last_lsn;
            R->hist_ceiling = R->bk_hist_ceiling;
            memcpy(R->run_seen, R->bk_seen, sizeof(R->run_seen));
            R->lost_from = R->bk_ntx;
        } else {
            R->last_lsn = R->durable_lsn = 0;
            R->hist_ceiling = 0;
            memset(R->run_seen, 0, sizeof(R->run_seen));
            R->lost_from = 0;
        }
        s->wipes_left--;
        s->c.wipes++;
        R->emptied = true;
        R->wiped_ntx = s->ntx;
        /* If it had voted since, the fence may well (rightly) refuse it for
         * good: the cluster is not expected to settle. */
        s->wiped_any |= had;
        trace(s, "r%u's data directory was %s (it had logged since: %s)", r,
              older ? "replaced by an older copy" : "emptied", had ? "yes" : "no");
    }
    fence_init(&R->fence, s->n, R->hist_ceiling, R->run_seen);
    trace(s, "r%u START (incarnation %u, %zu log records)", r, R->inc, R->nlog);
    R->restart_pending = false;
    if ((R->store = store_new(&sc)) == NULL) {
        fprintf(stderr, "sim: out of memory\n");
        exit(2);
    }
    R->rm = (struct txn_rm){.store = R->store};
    rp.s = R->store;
    R->alive = true;
    if (R->snap) {
        /* As recover_cluster: the snapshot's items, its open transactions
         * into the ledger, then the log after it. */
        const struct snapshot *sn = R->snap;
        for (size_t i = 0; i < sn->nitems; i++) {
            const struct snap_item *si = &sn->items[i];
            if (store_load_put(R->store, si->key, 2, si->value, si->nval, si->flags,
                               si->exptime_ms, si->mtime_ms, si->cas) < 0) {
                fprintf(stderr, "sim: out of memory\n");
                exit(2);
            }
        }
        if (sn->flush_at_ms)
            store_load_flush(R->store, sn->flush_at_ms, 0);
        for (size_t i = 0; i < sn->nopen; i++) {
            int e = recover_replay_payload(&rp, sn->open[i].type, sn->open[i].payload,
                                           sn->open[i].len);
            if (e < 0)
                fail(s, "r%u cannot load the open transactions of its snapshot: %s", r,
                     strerror(-e));
        }
        rp.after_lsn = sn->lsn;
    }
    for (size_t i = 0; i < R->nlog; i++) {
        const struct rec *rc = &R->log[i];
        if (rc->lsn <= rp.after_lsn)
            continue;
        struct wal_txn head;
        size_t pos;
        const struct recover_txn *open;
        /* A COMMIT whose PREPARE is open applies the transaction here. */
        if (rc->type == WAL_REC_COMMIT &&
            wal_txn_decode(rc->payload, rc->len, &head, &pos) == 0 &&
            (open = ledger_prepared(&ledger, head.txid)) != NULL)
            note_commit(s, r, head.txid, open->ops, open->nbytes, true);
        int e = recover_replay_payload(&rp, rc->type, rc->payload, rc->len);
        if (e < 0) {
            fail(s, "r%u cannot replay its log record %" PRIu64 " (type %u): %s", r,
                 rc->lsn, rc->type, strerror(-e));
            break;
        }
    }
    for (uint32_t i = 0; i < s->n; i++)
        tc.ids[i] = i;
    if ((R->tpc = tpc_new(&tc, &env, &err)) == NULL) {
        fprintf(stderr, "sim: tpc_new: %s\n", strerror(-err));
        exit(2);
    }
    uint64_t min = rp.max_txid;
    if (store_max_cas(R->store) > min)
        min = store_max_cas(R->store);
    if (R->snap && R->snap->next_cas - 1 > min)
        min = R->snap->next_cas - 1;
    tpc_set_min_txid(R->tpc, min);
    s->c.recovered_prepared += ledger.nprepared;
    s->c.recovered_committed += ledger.ncommitted;
    uint64_t bad = 0;
    if ((err = txn_resume(R->tpc, &ledger, s->now, &bad)) != 0) {
        struct store_stats st;
        store_get_stats(R->store, &st);
        fail(s,
             "r%u cannot take txid %" PRIx64 " back at recovery (%s): the store holds %" PRIu64
             " bytes + %" PRIu64 " reserved of %" PRIu64,
             r, bad, strerror(-err), st.bytes, st.reserved_bytes, st.max_bytes);
        tpc_recovered(R->tpc, s->now);
    }
    recover_ledger_free(&ledger);
    schedule(s, rng_range(&s->rng, 1, 1000), EV_TICK, r, 0, R->inc, 0);
    schedule(s, rng_range(&s->rng, 1000, 50000), EV_EXPIRE, r, 0, R->inc, 0);
    for (uint32_t x = 0; x < s->n; x++)
        if (x != r && s->rep[x].alive && !s->cut[r][x])
            schedule_connect(s, r, x);
}

static uint32_t pick_live(struct sim *s, bool usable_log)
{
    uint32_t live[TPC_REPLICAS_MAX], n = 0;

    for (uint32_t r = 0; r < s->n; r++)
        if (s->rep[r].alive && (!usable_log || !s->rep[r].log_failed))
            live[n++] = r;
    return n ? live[rng_range(&s->rng, 0, n - 1)] : UINT32_MAX;
}

/* ---- clients ------------------------------------------------------------------- */

/* An expiry time at replica r's clock: mostly never, often within the run
 * (so items die, are touched back to life and are deleted by the replicas'
 * expiry), sometimes already past, sometimes an hour ahead. */
static int64_t random_exptime(struct sim *s, uint32_t r)
{
    uint64_t pick = rng_range(&s->rng, 0, 99);

    if (pick < 55)
        return 0;
    if (pick < 85)
        return wall_ms(s, r) + (int64_t)rng_range(&s->rng, 1, 400);
    if (pick < 92)
        return wall_ms(s, r) - (int64_t)rng_range(&s->rng, 0, 50);
    return wall_ms(s, r) + 3600 * 1000 + (int64_t)rng_range(&s->rng, 0, 999);
}

static void random_cmd(struct sim *s, struct cmd *c, uint32_t r)
{
    static const uint8_t weights[K_NKINDS] = {22, 8, 7, 8, 4, 12, 12, 4, 10, 6, 3, 4};
    uint32_t total = 0, pick;

    for (int k = 0; k < K_NKINDS; k++)
        total += weights[k];
    pick = (uint32_t)rng_range(&s->rng, 0, total - 1);
    memset(c, 0, sizeof(*c));
    for (c->kind = 0; pick >= weights[c->kind]; c->kind++)
        pick -= weights[c->kind];
    c->key = (uint8_t)rng_range(&s->rng, 0, s->nkeys - 1);
    if (c->kind == K_APPEND || c->kind == K_PREPEND) {
        /* Digits mostly, so appended values stay numbers for incr. */
        if (rng_chance(&s->rng, 0.8))
            c->nvalue = (uint8_t)snprintf(c->value, sizeof(c->value), "%u",
                                          (unsigned)rng_range(&s->rng, 0, 99));
        else
            c->nvalue = (uint8_t)snprintf(c->value, sizeof(c->value), "x");
    } else if (rng_chance(&s->rng, 0.85)) {
        c->nvalue = (uint8_t)snprintf(c->value, sizeof(c->value), "%u",
                                      (unsigned)rng_range(&s->rng, 0, 99999));
    } else {
        c->nvalue = (uint8_t)snprintf(c->value, sizeof(c->value), "v%u",
                                      (unsigned)rng_range(&s->rng, 0, 999));
    }
    c->flags = (uint32_t)rng_range(&s->rng, 0, 3);
    c->exptime_ms = random_exptime(s, r);
    c->delta = rng_range(&s->rng, 1, 1000);
    if (c->kind == K_GAT) {
        c->keys = (uint8_t)(1u << c->key);
        for (int i = 0; i < 2; i++)
            if (rng_chance(&s->rng, 0.5))
                c->keys |= (uint8_t)(1u << rng_range(&s->rng, 0, s->nkeys - 1));
    }
    if (c->kind == K_FLUSH && rng_chance(&s->rng, 0.6))
        c->flush_at_ms = wall_ms(s, r) + (int64_t)rng_range(&s->rng, 1, 400);
}

/* A new transaction id from replica r. Returns false (and fails the run)
 * if the id was used before by a transaction that committed. */
static bool fresh_txid(struct sim *s, uint32_t r, uint64_t *out)
{
    struct replica *R = &s->rep[r];
    uint64_t txid = tpc_next_txid(R->tpc, wall_us(s, r));
    const struct txrec *prev = tx_find(s, txid);

    *out = txid;
    if (prev == NULL)
        return true;
    /* The id again: its coordinator restarted since it handed it out and
     * never logged it (tpc.h promises otherwise; tpc.c expects it and has
     * participants vote down a PREPARE whose operations differ from the
     * ones they hold under the id). Harmless only if no use of the id
     * committed: its cas would then name two writes. */
    bool sent = false;
    for (const struct txrec *u = prev; u; u = u->prev_use ? &s->tx[u->prev_use - 1] : NULL) {
        if (u->order) {
            fail(s, "r%u handed out txid %" PRIx64 " again, after it committed", r, txid);
            return false;
        }
        sent |= u->status != T_REJECTED;
    }
    trace(s, "r%u hands out txid %" PRIx64 " again (%s)", r, txid,
          sent ? "it was sent before" : "never sent before");
    s->c.txid_reused++;
    s->c.txid_reused_sent += sent;
    return true;
}

/* Records a transaction about to begin (its operations are s->scratch). */
static struct txrec *record_txn(struct sim *s, uint64_t txid, const struct cmd *cmd,
                                uint32_t cop, uint32_t coord, uint32_t nops)
{
    struct txrec *x = tx_add(s, txid);

    x->cmd = *cmd;
    x->cop = cop;
    x->coord = coord;
    x->status = T_PENDING;
    x->nops = nops;
    x->nbytes = (uint32_t)s->scratch.len;
    x->ops = xmalloc(s->scratch.len);
    memcpy(x->ops, s->scratch.data, s->scratch.len);
    return x;
}

static enum store_op_type store_type_of(uint8_t kind)
{
    static const enum store_op_type types[K_NKINDS] = {
        [K_SET] = STORE_SET,       [K_ADD] = STORE_ADD,       [K_REPLACE] = STORE_REPLACE,
        [K_APPEND] = STORE_APPEND, [K_PREPEND] = STORE_PREPEND, [K_CAS] = STORE_CAS,
        [K_INCR] = STORE_INCR,     [K_DECR] = STORE_DECR,     [K_DELETE] = STORE_DELETE,
        [K_TOUCH] = STORE_TOUCH,   [K_FLUSH] = STORE_FLUSH,   [K_GAT] = STORE_TOUCH,
    };
    return types[kind];
}

/* One attempt of client write ci at its replica, as serve runs it. */
static void attempt(struct sim *s, uint32_t ci)
{
    struct cop *c = &s->cops[ci];
    uint32_t r = c->replica;
    struct replica *R = &s->rep[r];
    struct cmd *cmd = &c->cmd;
    char key[3] = {'k', (char)('0' + cmd->key), 0};
    struct store_op op = {0};
    struct store_change ch;
    uint32_t nops = 0, culprit = 0, keys;
    int64_t now_ms = wall_ms(s, r);
    uint64_t txid;
    bool locked = false;

    if (R->log_failed) {
        s->c.rejected[TPC_R_LOG_FAILED]++;
        cop_finish(s, c);
        return;
    }
    if (!fence_serves(s, R)) {
        /* Not known current (yet), or behind: serve refuses the client. */
        s->c.fence_refused++;
        cop_finish(s, c);
        return;
    }
    /* A write waits while a transaction holds one of its keys (flush_all:
     * while any transaction is prepared). */
    keys = cmd->kind == K_GAT ? cmd->keys : cmd->kind == K_FLUSH ? 0 : 1u << cmd->key;
    if (cmd->kind == K_FLUSH)
        locked = R->rm.prepared > 0;
    for (uint32_t k = 0; k < s->nkeys; k++) {
        char kk[3] = {'k', (char)('0' + k), 0};
        if ((keys >> k) & 1)
            locked |= txn_holder(&R->rm, kk, 2) != NULL;
    }
    if (locked) {
        s->c.lock_waits++;
        if (++c->lock_waits > LOCK_WAITS_MAX) {
            s->c.gave_up++;
            cop_finish(s, c);
        } else {
            cop_retry(s, ci, true);
        }
        return;
    }
    for (uint32_t k = 0; k < s->nkeys; k++)
        if ((keys >> k) & 1)
            check_read(s, r, k, "evaluation");
    if (cmd->kind == K_CAS) {
        /* gets, then cas: usually with what this replica shows, sometimes
         * with a version seen earlier (likely stale). */
        struct item *it = store_get(R->store, key, 2, now_ms);
        if (it && rng_chance(&s->rng, 0.75))
            cmd->cas = it->cas;
        else
            cmd->cas = s->seen_cas[cmd->key];
    }
    if (!fresh_txid(s, r, &txid))
        return;
    op.type = store_type_of(cmd->kind);
    op.value = cmd->value;
    op.nvalue = cmd->nvalue;
    op.flags = cmd->flags;
    op.exptime_ms = cmd->exptime_ms;
    op.cas = cmd->cas;
    op.delta = cmd->delta;
    op.flush_at_ms = cmd->flush_at_ms;
    mix(s, 0xc11);
    mix(s, ((uint64_t)cmd->kind << 16) | ((uint64_t)cmd->key << 8) | r);
    mix(s, txid);
    s->scratch.len = 0;
    /* Evaluate each key on the coordinator's store and encode the change
     * (a gat: one touch per key alive; flush_all: no key), as serve's
     * exec_write_cluster and encode_and_drop do. */
    for (uint32_t k = 0; k < s->nkeys || (cmd->kind == K_FLUSH && k == 0); k++) {
        char kk[3] = {'k', (char)('0' + k), 0};
        if (cmd->kind != K_FLUSH) {
            if (!((keys >> k) & 1))
                continue;
            op.key = kk;
            op.nkey = 2;
        }
        if (store_prepare(R->store, &op, txid, now_ms, &ch) < 0) {
            if (cmd->kind == K_GAT)
                continue; /* a miss: not touched */
            break;
        }
        uint64_t expected = cmd->kind == K_FLUSH ? 0 : txn_version(R->store, kk, 2);
        if (txn_encode_change(&s->scratch, &ch, expected, &nops) < 0) {
            fprintf(stderr, "sim: out of memory\n");
            exit(2);
        }
        store_abort(R->store, &ch);
        if (cmd->kind == K_FLUSH)
            break;
    }
    if (nops == 0) {
        /* The condition failed (NOT_STORED, EXISTS, NOT_FOUND...; a gat of
         * keys none of which is alive): answered at once, nothing to
         * replicate. */
        trace(s, "r%u client %u: %s k%u: %s", r, ci, kind_names[cmd->kind], cmd->key,
              cmd->kind == K_GAT ? "all misses" : store_status_name(ch.status));
        s->c.cond_failed++;
        c->refused = (uint8_t)ch.status;
        cop_finish(s, c);
        return;
    }
    struct txrec *x = record_txn(s, txid, cmd, ci, r, nops);
    c->tx = (uint32_t)(x - s->tx) + 1;
    c->state = COP_PENDING;
    trace(s, "r%u client %u: %s k%u \"%.*s\" -> txid %" PRIx64, r, ci,
          kind_names[cmd->kind], cmd->key, (int)cmd->nvalue, cmd->value, txid);
    int rc = tpc_begin(R->tpc, txid, nops, s->scratch.data, (uint32_t)s->scratch.len, c,
                       s->now, &culprit);
    if (rc == 0)
        return;
    x->status = T_REJECTED;
    x->reason = (uint8_t)rc;
    s->c.rejected[rc > 0 && rc <= TPC_REASON_MAX ? rc : 0]++;
    trace(s, "r%u client %u: rejected: %s (culprit r%u)", r, ci,
          tpc_reason_name((enum tpc_reason)rc), culprit);
    if (rc == TPC_R_BAD_OPS) {
        fail(s, "r%u refused its own txid %" PRIx64 ": bad operations", r, txid);
        return;
    }
    if ((rc == TPC_R_BUSY || rc == TPC_R_CONFLICT) && c->attempts < LIMIT_WRITE_RETRIES)
        cop_retry(s, ci, false);
    else
        cop_finish(s, c);
}

/* Replica r's expiry, as serve's expire_step: when every link is up and no
 * expiry of its own is under way, it walks part of its store and deletes
 * the dead keys it owns in one transaction. */
static void expire_step(struct sim *s, uint32_t r)
{
    struct replica *R = &s->rep[r];
    struct cmd cmd = {.kind = K_EXPIRE};
    uint32_t nops = 0, culprit = 0;
    uint64_t txid;
    struct wal_op op;
    size_t pos = 0;
    bool full;

    if (!R->alive || R->log_failed || R->expiring)
        return;
    for (uint32_t x = 0; x < s->n; x++)
        if (!tpc_peer_is_up(R->tpc, x))
            return;
    s->scratch.len = 0;
    long keys = txn_expire_batch(R->store, wall_ms(s, r), 4, s->n, r, &s->scratch,
                                 LIMIT_EXPIRE_TXN_KEYS, LIMIT_EXPIRE_TXN_BYTES, &nops, &full);
    if (keys <= 0)
        return;
    while (wal_op_next(s->scratch.data, s->scratch.len, &pos, &op) == 1) {
        int k = key_index(s, op.key, op.nkey);
        if (k >= 0)
            cmd.keys |= (uint8_t)(1u << k);
    }
    if (!fresh_txid(s, r, &txid))
        return;
    struct txrec *x = record_txn(s, txid, &cmd, UINT32_MAX, r, nops);
    trace(s, "r%u expires %ld key(s) (mask %#x) -> txid %" PRIx64, r, keys, cmd.keys, txid);
    s->c.expire_txns++;
    int rc = tpc_begin(R->tpc, txid, nops, s->scratch.data, (uint32_t)s->scratch.len,
                       &R->expire_client, s->now, &culprit);
    if (rc == 0) {
        R->expiring = true;
        R->expire_tx = (uint32_t)(x - s->tx) + 1;
        return;
    }
    x->status = T_REJECTED;
    x->reason = (uint8_t)rc;
    if (rc == TPC_R_BAD_OPS)
        fail(s, "r%u refused its own expiry txid %" PRIx64 ": bad operations", r, txid);
}

static void on_arrival(struct sim *s)
{
    uint32_t r = pick_live(s, false);

    if (s->ncops < s->ops_target && !s->healed)
        schedule(s, rng_range(&s->rng, 1, 2 * s->arrival_mean_us), EV_ARRIVAL, 0, 0, 0,
                 0);
    if (r == UINT32_MAX)
        return;
    if (rng_chance(&s->rng, 0.2)) {
        if (!fence_serves(s, &s->rep[r])) {
            s->c.fence_refused++;
            return;
        }
        s->c.reads++;
        if (rng_chance(&s->rng, 0.2))
            check_keys(s, r);
        else
            check_read(s, r, (uint32_t)rng_range(&s->rng, 0, s->nkeys - 1), "read");
        return;
    }
    if (s->ncops >= s->ops_target || s->healed)
        return; /* new writes stop at the heal */
    uint32_t ci = s->ncops++;
    struct cop *c = &s->cops[ci];
    memset(c, 0, sizeof(*c));
    random_cmd(s, &c->cmd, r);
    c->replica = r;
    c->inc = s->rep[r].inc;
    c->state = COP_WAIT;
    s->open_cops++;
    s->c.ops++;
    attempt(s, ci);
}

/* Once everything has settled, every key must take a write again, through
 * any replica: a key whose replicas disagree (one deleted it by its own
 * clock, say) would be refused as a conflict for good. keys: a mask of the
 * keys to probe. */
static void probe_keys(struct sim *s, uint32_t keys)
{
    s->probes = s->ncops + 1;
    s->probe_rounds++;
    for (uint32_t k = 0; k < s->nkeys; k++) {
        if (!((keys >> k) & 1))
            continue;
        uint32_t ci = s->ncops++;
        struct cop *c = &s->cops[ci];
        memset(c, 0, sizeof(*c));
        c->cmd.kind = K_SET;
        c->cmd.key = (uint8_t)k;
        c->cmd.nvalue = (uint8_t)snprintf(c->cmd.value, sizeof(c->cmd.value), "probe%u", k);
        c->replica = (uint32_t)rng_range(&s->rng, 0, s->n - 1);
        c->inc = s->rep[c->replica].inc;
        c->state = COP_WAIT;
        s->open_cops++;
        s->c.probes++;
        trace(s, "probe: set k%u through r%u", k, c->replica);
        attempt(s, ci);
    }
}

/* Returns the keys to probe again: those refused for a reason that says
 * nothing of them (a vote late on a slow disk). A store that is full may
 * refuse (no_memory, too_large); a conflict or lock that outlasts every
 * retry is what the probes look for. */
static uint32_t check_probes(struct sim *s)
{
    uint32_t again = 0;

    for (uint32_t ci = s->probes - 1; ci < s->ncops; ci++) {
        const struct cop *c = &s->cops[ci];
        const struct txrec *x = c->tx ? &s->tx[c->tx - 1] : NULL;
        if (x && x->status == T_ACKED)
            continue;
        if (x && (x->reason == TPC_R_NO_MEMORY || x->reason == TPC_R_TOO_LARGE))
            continue;
        if (x == NULL && (c->refused == STORE_NO_MEMORY || c->refused == STORE_TOO_LARGE))
            continue; /* the coordinator's own store is full */
        if (x && x->reason == TPC_R_TIMEOUT && s->probe_rounds < 5) {
            again |= 1u << c->cmd.key;
            continue;
        }
        fail(s, "k%u cannot be written through r%u once everything is up: %s%s%s",
             c->cmd.key, c->replica, x ? status_names[x->status] : "never begun",
             x && x->reason ? ", " : "",
             x && x->reason ? tpc_reason_name((enum tpc_reason)x->reason) : "");
    }
    return again;
}

/* ---- the run ----------------------------------------------------------------------- */

struct open_list {
    struct sim *s;
    uint32_t r;
};

/* Says what one open transaction of a stuck replica is, and what each
 * replica knows of it. */
static int list_open_txn(void *arg, const struct tpc_txn *t, bool prepared)
{
    struct open_list *ol = arg;
    struct sim *s = ol->s;
    char buf[160];
    size_t len = 0;

    for (uint32_t r = 0; r < s->n && len < sizeof(buf); r++) {
        const struct tpc *tp = s->rep[r].tpc;
        len += (size_t)snprintf(buf + len, sizeof(buf) - len, " r%u:%s", r,
                                tp ? tpc_outcome_name(tpc_known_outcome(tp, t->txid))
                                   : "down");
    }
    fail(s, "r%u: txid %" PRIx64 " (coordinator r%u) %s;%s", ol->r, t->txid, t->coord,
         prepared ? "prepared, undecided here" : "committed, awaiting ACKs", buf);
    return 0;
}

/* Has everything settled (every replica up and linked, nothing active,
 * locked or waiting)? With explain, says what has not, as failures. */
static bool settled(struct sim *s, bool explain)
{
    bool ok = s->open_cops == 0;

    if (explain)
        fail(s, "liveness: not settled %" PRIu64 " s after the heal",
             (uint64_t)(SETTLE_DEADLINE_US / 1000000));
    if (!ok && explain)
        fail(s, "%u client write(s) still waiting", s->open_cops);
    for (uint32_t r = 0; r < s->n; r++) {
        struct replica *R = &s->rep[r];
        struct tpc_stats st;
        if (!R->alive || R->log_failed) {
            if (explain)
                fail(s, "r%u is still down", r);
            ok = false;
            continue;
        }
        for (uint32_t x = 0; x < s->n; x++) {
            if (x != r && (!s->link_up[r][x] || !R->notified[x])) {
                if (explain)
                    fail(s, "link r%u-r%u is not up", r, x);
                ok = false;
            }
        }
        tpc_get_stats(R->tpc, &st);
        if (st.active || store_locks(R->store) || R->rm.prepared) {
            ok = false;
            if (explain)
                fail(s,
                     "stuck in doubt: r%u has %" PRIu64 " active transaction(s) (%" PRIu64
                     " in doubt), %zu key lock(s), %zu prepared",
                     r, st.active, st.in_doubt, store_locks(R->store), R->rm.prepared);
        }
    }
    if (!ok && explain) {
        /* Name the transactions still open and what each replica knows. */
        for (uint32_t r = 0; r < s->n; r++) {
            struct open_list ol = {.s = s, .r = r};
            if (s->rep[r].tpc)
                tpc_for_each_open(s->rep[r].tpc, list_open_txn, &ol);
        }
    }
    return ok;
}

static void heal(struct sim *s)
{
    trace(s, "HEAL");
    s->healed = true;
    s->heal_at = s->now;
    s->p_drop = 0;
    for (uint32_t a = 0; a < s->n; a++) {
        for (uint32_t b = a + 1; b < s->n; b++) {
            if (s->cut[a][b]) {
                s->cut[a][b] = s->cut[b][a] = false;
                if (s->rep[a].alive && s->rep[b].alive)
                    schedule_connect(s, a, b);
            }
        }
    }
    /* A replica whose log failed is restarted by its operator. */
    for (uint32_t r = 0; r < s->n; r++)
        if (s->rep[r].alive && s->rep[r].log_failed)
            schedule(s, rng_range(&s->rng, 1000, 20000), EV_CRASH_TARGET, r, 0,
                     s->rep[r].inc, 0);
    schedule(s, 1000, EV_SETTLED, 0, 0, 0, 0);
}

static void dispatch(struct sim *s, struct ev *e)
{
    struct replica *A = &s->rep[e->a];

    switch (e->kind) {
    case EV_MSG: {
        struct netmsg *nm = e->msg;
        struct replica *B = &s->rep[e->b];
        e->msg = NULL;
        /* What was sent before a partition, or to a replica that has
         * crashed since, is lost; what a replica sent before it crashed
         * still arrives (TCP delivers what left the host). */
        if (!B->alive || B->inc != nm->to_inc || s->cut_gen[e->a][e->b] != nm->cut_gen) {
            s->c.lost_in_flight++;
        } else if (!fence_allows(s, B, e->a)) {
            /* A peer whose data is behind (or we are): dropped, as serve. */
            s->c.fence_dropped++;
        } else {
            mix(s, nm->m.txid);
            trace(s, "r%u recv %s txid %" PRIx64 " from r%u", e->b,
                  tpc_msg_type_name(nm->m.type), nm->m.txid, e->a);
            fence_note(B, &nm->m, e->a);
            tpc_receive(B->tpc, &nm->m, s->now);
        }
        free(nm);
        break;
    }
    case EV_SYNC:
        if (!A->alive || A->inc != e->inc || A->log_failed)
            break;
        A->sync_pending = false;
        A->durable_lsn = A->last_lsn;
        trace(s, "r%u durable to lsn %" PRIu64, e->a, A->last_lsn);
        tpc_durable(A->tpc, A->last_lsn, s->now);
        break;
    case EV_TICK:
        if (!A->alive || A->inc != e->inc)
            break;
        tpc_tick(A->tpc, s->now);
        schedule(s, 1000, EV_TICK, e->a, 0, A->inc, 0);
        break;
    case EV_EXPIRE:
        if (!A->alive || A->inc != e->inc)
            break;
        expire_step(s, e->a);
        schedule(s, rng_range(&s->rng, 5000, 50000), EV_EXPIRE, e->a, 0, A->inc, 0);
        break;
    case EV_ARRIVAL:
        on_arrival(s);
        break;
    case EV_RETRY: {
        struct cop *c = &s->cops[e->x];
        if (c->state == COP_WAIT && c->gen == e->inc)
            attempt(s, (uint32_t)e->x);
        break;
    }
    case EV_CRASH: {
        uint32_t r = pick_live(s, false);
        if (!s->healed && r != UINT32_MAX)
            crash(s, r);
        break;
    }
    case EV_CRASH_ALL:
        if (s->healed)
            break;
        trace(s, "POWER LOSS");
        for (uint32_t r = 0; r < s->n; r++)
            if (s->rep[r].alive)
                crash(s, r);
        break;
    case EV_CRASH_TARGET:
        if (A->alive && A->inc == e->inc)
            crash(s, e->a);
        break;
    case EV_RESTART:
        start(s, e->a);
        s->c.restarts++;
        break;
    case EV_NOTICE_DOWN:
        on_notice_down(s, e);
        break;
    case EV_CONNECT:
        on_connect(s, e);
        break;
    case EV_NOTICE_UP:
        on_notice_up(s, e);
        break;
    case EV_SNAPSHOT: {
        uint32_t r = pick_live(s, true);
        if (!s->healed)
            schedule(s, rng_range(&s->rng, 1, 2 * s->snapshot_every_us), EV_SNAPSHOT, 0,
                     0, 0, 0);
        if (r != UINT32_MAX && s->rep[r].snap_pending == NULL)
            snapshot_start(s, r);
        break;
    }
    case EV_SNAP_DONE:
        if (A->alive && A->inc == e->inc && A->snap_pending)
            snapshot_install(s, e->a);
        break;
    case EV_CUT: {
        uint32_t a = (uint32_t)rng_range(&s->rng, 0, s->n - 1);
        uint32_t b = (uint32_t)rng_range(&s->rng, 0, s->n - 2);
        if (s->healed)
            break;
        b += b >= a;
        if (s->cut[a][b])
            break;
        trace(s, "CUT r%u-r%u", a, b);
        s->c.partitions++;
        s->cut[a][b] = s->cut[b][a] = true;
        s->cut_gen[a][b]++;
        s->cut_gen[b][a]++;
        link_down(s, a, b);
        schedule(s, rng_range(&s->rng, 5000, 150000), EV_UNCUT, a, b, 0, 0);
        break;
    }
    case EV_UNCUT:
        if (!s->cut[e->a][e->b])
            break;
        trace(s, "UNCUT r%u-r%u", e->a, e->b);
        s->cut[e->a][e->b] = s->cut[e->b][e->a] = false;
        if (s->rep[e->a].alive && s->rep[e->b].alive)
            schedule_connect(s, e->a, e->b);
        break;
    case EV_LOG_FAIL: {
        uint32_t r = pick_live(s, true);
        if (!s->healed && r != UINT32_MAX)
            log_fail(s, r);
        break;
    }
    case EV_LOG_FAIL_TARGET:
        if (!s->healed && A->alive && A->inc == e->inc && !A->log_failed)
            log_fail(s, e->a);
        break;
    case EV_HEAL:
        heal(s);
        break;
    case EV_SETTLED:
        if (s->wiped_any) {
            /* A replica is behind for good (no catch-up yet): writes cannot
             * go through every replica, so nothing settles. Once every
             * replica is up and linked (or a while has passed), check what
             * the fence must have done. */
            bool up = true;
            for (uint32_t r = 0; r < s->n; r++)
                for (uint32_t x = 0; x < s->n; x++)
                    up &= s->rep[r].alive && (x == r || s->link_up[r][x]);
            if (up || s->now > s->heal_at + SETTLE_DEADLINE_US / 4)
                s->settled = true;
            else
                schedule(s, 1000, EV_SETTLED, 0, 0, 0, 0);
            break;
        }
        if (!settled(s, false)) {
            schedule(s, 1000, EV_SETTLED, 0, 0, 0, 0);
        } else if (s->probes == 0) {
            if (s->now - s->heal_at > s->c.settle_us_max)
                s->c.settle_us_max = s->now - s->heal_at;
            probe_keys(s, (1u << s->nkeys) - 1);
            schedule(s, 1000, EV_SETTLED, 0, 0, 0, 0);
        } else {
            uint32_t again = check_probes(s);
            if (again && !s->stop) {
                probe_keys(s, again);
                schedule(s, 1000, EV_SETTLED, 0, 0, 0, 0);
            } else {
                s->settled = true;
            }
        }
        break;
    }
}

/* Per-replica fingerprint of key k (0 = absent), to compare replicas. */
struct image {
    const struct sim *s;
    uint32_t r;
    uint64_t fp[NKEYS_MAX];
    char desc[NKEYS_MAX][128];
    bool bad_key;
    bool model_ok[NKEYS_MAX];
};

static uint64_t fingerprint(const struct item *it)
{
    uint64_t h = 0xcbf29ce484222325ull;
    const char *v = item_value(it);

    for (uint32_t i = 0; i < it->nval; i++)
        h = (h ^ (unsigned char)v[i]) * 0x100000001b3ull;
    h = (h ^ it->flags) * 0x100000001b3ull;
    h = (h ^ (uint64_t)it->exptime_ms) * 0x100000001b3ull;
    h = (h ^ (uint64_t)it->mtime_ms) * 0x100000001b3ull;
    h = (h ^ it->cas) * 0x100000001b3ull;
    return h | 1;
}

static int snap_item(void *arg, const struct item *it)
{
    struct image *sn = arg;
    int k = key_index(sn->s, item_key(it), it->nkey);

    if (k < 0) {
        sn->bad_key = true;
        return 0;
    }
    sn->fp[k] = fingerprint(it);
    describe_store_item(sn->desc[k], sizeof(sn->desc[k]), it);
    sn->model_ok[k] = matches_model(sn->s, (uint32_t)k, it);
    return 0;
}

/* The checks made once everything has settled. */
/* A run cut short because a replica is behind (no catch-up): a committed
 * transaction may still be in doubt on a healthy replica that can no longer
 * learn its outcome (its coordinator was the one emptied). */
static bool in_doubt_left(const struct sim *s, const struct txrec *x, uint32_t all)
{
    if (!s->wiped_any)
        return false;
    for (uint32_t r = 0; r < s->n; r++) {
        if (!((all & ~x->commit_mask) >> r & 1))
            continue;
        const struct replica *R = &s->rep[r];
        if (!R->alive || R->tpc == NULL ||
            tpc_known_outcome(R->tpc, x->txid) != TPC_O_PENDING)
            return false;
    }
    return true;
}

static void final_checks(struct sim *s)
{
    uint32_t all = (uint32_t)((1ull << s->n) - 1);

    /* A replica restarted on an emptied directory after it had voted YES
     * on a transaction that committed (it lost data) must be found behind,
     * and nothing may commit after it was emptied (its vote would have
     * counted). It is left out below. */
    for (uint32_t r = 0; r < s->n && !s->stop; r++) {
        struct replica *R = &s->rep[r];
        bool linked = false;
        if (!R->emptied)
            continue;
        for (size_t i = R->lost_from; i < R->wiped_ntx; i++)
            R->wiped |= (((s->tx[i].voted_mask | s->tx[i].commit_mask) >> r) & 1) &&
                        s->tx[i].order;
        if (!R->wiped)
            continue;
        all &= ~(1u << r);
        for (uint32_t x = 0; x < s->n; x++)
            linked |= x != r && s->link_up[r][x];
        if (R->alive && linked && !R->fence.behind)
            fail(s, "r%u restarted on an emptied directory but was not found behind", r);
        for (size_t i = R->wiped_ntx; i < s->ntx && !s->stop; i++)
            if (s->tx[i].commit_mask)
                fail(s, "txid %" PRIx64 " committed after r%u's directory was emptied: a "
                        "replica whose data is behind counted",
                     s->tx[i].txid, r);
    }
    struct image *sn = calloc(s->n, sizeof(*sn));

    if (sn == NULL) {
        fprintf(stderr, "sim: out of memory\n");
        exit(2);
    }
    for (size_t i = 0; i < s->ntx && !s->stop; i++) {
        const struct txrec *x = &s->tx[i];
        if (x->commit_mask && x->abort_mask)
            fail(s, "txid %" PRIx64 " committed on replica mask %#x, aborted on %#x",
                 x->txid, x->commit_mask, x->abort_mask);
        else if (x->order && (x->commit_mask & all) != all && !in_doubt_left(s, x, all))
            fail(s,
                 "txid %" PRIx64
                 " (client: %s) committed but applied only on replica mask "
                 "%#x",
                 x->txid, status_names[x->status], x->commit_mask);
        else if (x->status == T_ACKED && !x->order)
            fail(s, "txid %" PRIx64 " acknowledged but never applied", x->txid);
        else if ((x->status == T_ABORTED || x->status == T_REJECTED) && x->order)
            fail(s, "txid %" PRIx64 " reported %s (%s) but committed", x->txid,
                 status_names[x->status], tpc_reason_name((enum tpc_reason)x->reason));
        else if (x->status == T_PENDING && !s->wiped_any) /* a run cut short: see EV_SETTLED */
            fail(s, "txid %" PRIx64 " never reported to its client", x->txid);
    }
    uint32_t ref = 0; /* a replica to compare the others with */
    while (ref < s->n && s->rep[ref].wiped)
        ref++;
    for (uint32_t r = 0; r < s->n && !s->stop && ref < s->n; r++) {
        if (s->rep[r].wiped)
            continue;
        sn[r].s = s;
        sn[r].r = r;
        for (uint32_t k = 0; k < s->nkeys; k++) {
            snprintf(sn[r].desc[k], sizeof(sn[r].desc[k]), "absent");
            sn[r].model_ok[k] = !s->model[k].present;
        }
        store_for_each_stored(s->rep[r].store, snap_item, &sn[r]);
        if (sn[r].bad_key)
            fail(s, "r%u holds a key no client wrote", r);
        if (store_flush_at(s->rep[r].store) != s->model_flush_at)
            fail(s, "r%u has flush_all at %" PRId64 ", the history at %" PRId64, r,
                 store_flush_at(s->rep[r].store), s->model_flush_at);
        /* A run cut short by a replica that is behind may leave
         * transactions in doubt on healthy ones: compare what is settled. */
        if (!(s->wiped_any && (store_locks(s->rep[r].store) || store_locks(s->rep[ref].store))) &&
            store_digest(s->rep[r].store) != store_digest(s->rep[ref].store))
            fail(s, "r%u's digest differs from r%u's", r, ref);
    }
    for (uint32_t k = 0; k < s->nkeys && !s->stop && ref < s->n; k++) {
        bool held = false;
        char kk[3] = {'k', (char)('0' + k), 0};
        for (uint32_t r = 0; r < s->n && s->wiped_any; r++)
            held |= !s->rep[r].wiped && s->rep[r].alive && txn_holder(&s->rep[r].rm, kk, 2);
        if (held)
            continue; /* in doubt on a healthy replica: see in_doubt_left */
        for (uint32_t r = ref + 1; r < s->n; r++) {
            if (s->rep[r].wiped)
                continue;
            if (sn[r].fp[k] != sn[ref].fp[k]) {
                fail(s, "replicas differ on k%u: r%u has %s, r%u has %s", k, ref,
                     sn[ref].desc[k], r, sn[r].desc[k]);
                break;
            }
        }
        for (uint32_t r = 0; r < s->n && !s->stop; r++) {
            if (s->rep[r].wiped)
                continue;
            if (!sn[r].model_ok[k]) {
                const struct mval *m = &s->model[k];
                char want[128];
                describe_item(want, sizeof(want), m->present, m->v, m->n, m->flags,
                              m->exptime_ms, m->mtime_ms, m->cas);
                fail(s,
                     "lost or wrong write: r%u has k%u = %s, the committed history says "
                     "%s",
                     r, k, sn[r].desc[k], want);
            }
        }
    }
    free(sn);
}

static void choose_parameters(struct sim *s)
{
    const struct opts *o = s->o;
    struct rng *g = &s->rng;

    s->n = o->replicas ? o->replicas : (uint32_t)(3 + (s->seed - 1) % 3);
    s->nkeys = (uint32_t)rng_range(g, 3, NKEYS_MAX);
    s->ops_target = o->ops ? o->ops : (uint32_t)rng_range(g, 200, 800);
    s->chaos_us = rng_range(g, 1000000, 3000000);
    s->arrival_mean_us = s->chaos_us / (s->ops_target + s->ops_target / 4 + 1) + 1;
    s->p_drop = rng_chance(g, 0.2) ? 0 : (double)rng_range(g, 0, 50) / 1000.0;
    s->p_dup = rng_chance(g, 0.3) ? 0 : (double)rng_range(g, 0, 30) / 1000.0;
    s->prepare_timeout_us = rng_range(g, 10, 40) * 1000;
    s->resend_us = s->prepare_timeout_us / 2;
    {
        static const size_t remembered[] = {16, 64, 4096};
        s->remembered_max = remembered[rng_range(g, 0, 2)];
    }
    s->p_crash_hook = rng_chance(g, 0.5) ? 0 : (double)rng_range(g, 1, 5) / 1000.0;
    s->p_clock_step = rng_chance(g, 0.5) ? 0 : 0.3;
    s->p_log_fail_hook = rng_chance(g, 0.8) ? 0 : 0.02;
    s->log_fails_left = 2;
    s->crashes_left = 6;
    /* Now and then a replica restarts on an emptied directory (once). */
    s->p_wipe = rng_chance(g, 0.15) || s->o->inject == INJ_NO_FENCE ? 0.3 : 0;
    s->wipes_left = 1;
    s->snapshot_every_us = rng_chance(g, 0.35) ? rng_range(g, 10, 200) * 1000 : 0;
    /* Some clusters run short of memory or have a small --max-value, on
     * some replicas only: participants then vote NO_MEMORY or TOO_LARGE
     * where the coordinator saw no problem, and recovery must find room
     * again for what was prepared. */
    bool tight_memory = rng_chance(g, 0.25), small_values = rng_chance(g, 0.2);
    for (uint32_t r = 0; r < s->n; r++) {
        struct replica *R = &s->rep[r];
        R->skew_us = (int64_t)rng_range(g, 0, 40000) - 20000;
        /* Now and then a host whose clock is well off (no NTP yet). */
        if (rng_chance(g, 0.04))
            R->skew_us +=
                (rng_chance(g, 0.5) ? -1 : 1) * (int64_t)rng_range(g, 200, 2000) * 1000;
        R->sync_max_us = rng_chance(g, 0.2) ? 10000 : 2000;
        R->max_bytes =
            tight_memory && rng_chance(g, 0.7) ? rng_range(g, 300, 1500) : 1ull << 30;
        R->value_bytes_max =
            small_values && rng_chance(g, 0.7) ? rng_range(g, 6, 40) : 1u << 20;
        /* A prepare timeout shorter than a few of the slowest disk's group
         * commits times out writes that nothing hinders, as a real one
         * would: the probes after the heal could never get through. */
        if (s->prepare_timeout_us < 3 * R->sync_max_us) {
            s->prepare_timeout_us = 3 * R->sync_max_us;
            s->resend_us = s->prepare_timeout_us / 2;
        }
    }
}

/* Schedules the chaos: crashes, cuts and log failures at random times. */
static void schedule_chaos(struct sim *s)
{
    struct rng *g = &s->rng;
    uint64_t crashes = rng_chance(g, 0.2) ? 0 : rng_range(g, 1, 5);
    uint64_t cuts = rng_chance(g, 0.4) ? 0 : rng_range(g, 1, 4);

    for (uint64_t i = 0; i < crashes; i++)
        schedule(s, rng_range(g, 1000, s->chaos_us), EV_CRASH, 0, 0, 0, 0);
    for (uint64_t i = 0; i < cuts; i++)
        schedule(s, rng_range(g, 1000, s->chaos_us), EV_CUT, 0, 0, 0, 0);
    if (rng_chance(g, 0.15))
        schedule(s, rng_range(g, 1000, s->chaos_us), EV_LOG_FAIL, 0, 0, 0, 0);
    if (rng_chance(g, 0.1))
        schedule(s, rng_range(g, 1000, s->chaos_us), EV_CRASH_ALL, 0, 0, 0, 0);
    if (s->snapshot_every_us)
        schedule(s, rng_range(g, 1, s->snapshot_every_us), EV_SNAPSHOT, 0, 0, 0, 0);
    schedule(s, s->chaos_us, EV_HEAL, 0, 0, 0, 0);
    schedule(s, rng_range(g, 1, 2000), EV_ARRIVAL, 0, 0, 0, 0);
}

static void free_run(struct sim *s)
{
    struct ev e;

    for (uint32_t r = 0; r < s->n; r++) {
        struct replica *R = &s->rep[r];
        if (R->tpc) {
            collect_stats(s, R);
            replica_teardown(R);
        }
        free_records(R->log, 0, R->nlog);
        free(R->log);
        if (R->bk_log) {
            free_records(R->bk_log, 0, R->bk_nlog);
            free(R->bk_log);
        }
        free(R->preps);
        snapshot_free(R->snap);
        snapshot_free(R->snap_pending);
    }
    while (pop(s, &e))
        free(e.msg);
    free(s->heap);
    for (size_t i = 0; i < s->ntx; i++)
        free(s->tx[i].ops);
    free(s->tx);
    free(s->txmap);
    free(s->cops);
    for (uint32_t k = 0; k < NKEYS_MAX; k++)
        free(s->model[k].v);
    buf_free(&s->scratch);
    buf_free(&s->logbuf);
}

/* Runs one seed. Returns true if every check passed. */
static bool run(const struct opts *o, uint64_t seed, struct counts *total, uint64_t *hash)
{
    struct sim *s = calloc(1, sizeof(*s));
    struct ev e;
    bool ok;

    if (s == NULL) {
        fprintf(stderr, "sim: out of memory\n");
        exit(2);
    }
    s->o = o;
    s->seed = seed;
    s->hash = 0xcbf29ce484222325ull;
    rng_seed(&s->rng, seed);
    choose_parameters(s);
    s->cops = calloc(s->ops_target + 5 * NKEYS_MAX + 1, sizeof(*s->cops));
    if (s->cops == NULL) {
        fprintf(stderr, "sim: out of memory\n");
        exit(2);
    }
    if (o->one) {
        printf("seed %" PRIu64 ": %u replicas, %u keys, %u writes over %" PRIu64
               " ms, drop %.1f%%, dup %.1f%%, prepare timeout %" PRIu64
               " ms, remembered %zu, snapshots every ~%" PRIu64 " ms\n",
               seed, s->n, s->nkeys, s->ops_target, s->chaos_us / 1000, s->p_drop * 100,
               s->p_dup * 100, s->prepare_timeout_us / 1000, s->remembered_max,
               s->snapshot_every_us / 1000);
        for (uint32_t r = 0; r < s->n; r++)
            printf("  r%u: clock %+.1f ms, disk sync <= %" PRIu64
                   " us, max_bytes %" PRIu64 ", max value %" PRIu64 "\n",
                   r, (double)s->rep[r].skew_us / 1000, s->rep[r].sync_max_us,
                   s->rep[r].max_bytes, s->rep[r].value_bytes_max);
    }
    for (uint32_t r = 0; r < s->n; r++) {
        s->rep[r].sim = s;
        s->rep[r].id = r;
        start(s, r);
    }
    schedule_chaos(s);
    while (!s->stop && !s->settled && pop(s, &e)) {
        s->now = e.t;
        s->c.events++;
        mix(s, e.t);
        mix(s, ((uint64_t)e.kind << 16) | ((uint64_t)e.a << 8) | e.b);
        if (e.kind != EV_MSG && e.kind != EV_TICK && e.kind != EV_SYNC)
            trace(s, "-- %s", ev_names[e.kind]);
        if (s->healed && s->now > s->heal_at + SETTLE_DEADLINE_US) {
            free(e.msg);
            settled(s, true);
            break;
        }
        dispatch(s, &e);
    }
    if (!s->stop && s->settled)
        final_checks(s);
    else if (!s->stop)
        fail(s, "the event queue ran dry");
    ok = s->nfail == 0;
    if (!ok) {
        char extra[96] = "";
        size_t len = 0;
        if (o->replicas)
            len += (size_t)snprintf(extra + len, sizeof(extra) - len, " --replicas %u",
                                    o->replicas);
        if (o->ops)
            len +=
                (size_t)snprintf(extra + len, sizeof(extra) - len, " --ops %u", o->ops);
        snprintf(extra + len, sizeof(extra) - len, "%s",
                 o->inject == INJ_NONE          ? ""
                 : o->inject == INJ_SKIP_COMMIT ? " --inject-bug"
                 : o->inject == INJ_FLIP        ? " --inject-bug=flip"
                 : o->inject == INJ_NO_FENCE    ? " --inject-bug=no-fence"
                                                : " --inject-bug=lying-disk");
        printf("FAIL seed %" PRIu64
               " (%u replicas): %s; replay with: build/rel/sim "
               "--seed %" PRIu64 "%s\n",
               seed, s->n, s->reason, seed, extra);
    }
    free_run(s);
    s->c.runs = 1;
    {
        /* Every field of struct counts is a uint64_t: add them up as an
         * array (one is a maximum). */
        _Static_assert(sizeof(struct counts) % sizeof(uint64_t) == 0, "counts are u64s");
        uint64_t *d = (uint64_t *)total, *src = (uint64_t *)&s->c;
        for (size_t i = 0; i < sizeof(s->c) / sizeof(uint64_t); i++) {
            if (&d[i] == &total->settle_us_max)
                d[i] = src[i] > d[i] ? src[i] : d[i];
            else
                d[i] += src[i];
        }
    }
    *hash = s->hash;
    free(s);
    return ok;
}

/* ---- main -------------------------------------------------------------------------- */

static void print_totals(const struct counts *c)
{
    printf("runs %" PRIu64 ", events %" PRIu64 "\n", c->runs, c->events);
    printf("client writes %" PRIu64 ": committed %" PRIu64 ", condition failed %" PRIu64
           ", outcome unknown %" PRIu64 ", lost with their replica %" PRIu64
           ", gave up on a held key %" PRIu64 ", retries %" PRIu64 ", lock waits %" PRIu64
           "; reads checked %" PRIu64 "\n",
           c->ops, c->committed, c->cond_failed, c->unknown, c->lost, c->gave_up,
           c->retries, c->lock_waits, c->reads);
    printf("aborted:");
    for (int i = 1; i <= TPC_REASON_MAX; i++)
        if (c->aborted[i])
            printf(" %s %" PRIu64, tpc_reason_name((enum tpc_reason)i), c->aborted[i]);
    printf("\nrejected at begin:");
    for (int i = 1; i <= TPC_REASON_MAX; i++)
        if (c->rejected[i])
            printf(" %s %" PRIu64, tpc_reason_name((enum tpc_reason)i), c->rejected[i]);
    printf("\ncrashes %" PRIu64 ", restarts %" PRIu64 ", log failures %" PRIu64
           ", partitions %" PRIu64 ", unsynced records that survived a crash %" PRIu64
           "\n",
           c->crashes, c->restarts, c->log_failures, c->partitions, c->survived_records);
    printf("emptied data directories %" PRIu64 "; fence: messages dropped %" PRIu64
           ", client requests refused %" PRIu64 "\n",
           c->wipes, c->fence_dropped, c->fence_refused);
    printf("txids handed out again after a restart %" PRIu64 " (%" PRIu64
           " of them had been sent)\n",
           c->txid_reused, c->txid_reused_sent);
    printf("snapshots %" PRIu64 "; recovered: prepared %" PRIu64
           ", commits to resend %" PRIu64 "\n",
           c->snapshots, c->recovered_prepared, c->recovered_committed);
    printf("messages %" PRIu64 ": dropped %" PRIu64 ", on a down link %" PRIu64
           ", duplicated %" PRIu64 ", lost in flight %" PRIu64 "\n",
           c->msgs, c->dropped, c->dropped_link, c->duplicated, c->lost_in_flight);
    printf("participants: committed %" PRIu64 ", aborted %" PRIu64 ", voted no %" PRIu64
           "; queries %" PRIu64 ", answers %" PRIu64 ", resolved by query %" PRIu64 "\n",
           c->part_committed, c->part_aborted, c->voted_no, c->queries, c->answers,
           c->resolved_by_query);
    printf("expiry transactions %" PRIu64 " (%" PRIu64 " committed); clocks stepped at a "
           "restart %" PRIu64 "; probe writes after the heal %" PRIu64 "\n",
           c->expire_txns, c->expire_committed, c->clock_steps, c->probes);
    printf("longest settle after heal: %" PRIu64 " ms\n", c->settle_us_max / 1000);
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: sim [--seeds N | --seed S] [--replicas N] [--ops N] [-v|--verbose]\n"
            "  --seeds N     run seeds 1..N (default 200)\n"
            "  --seed S      run seed S only (-v prints every event)\n"
            "  --replicas N  replicas (2..%d; default 3, 4, 5 cycling by seed)\n"
            "  --ops N       client writes per run (default 200..800, by seed)\n"
            "  --inject-bug[=skip-commit|flip|lying-disk|no-fence]  plant a bug (self-test)\n",
            TPC_REPLICAS_MAX);
}

static bool parse_u64(const char *s, uint64_t *out)
{
    char *end;

    if (s == NULL || *s < '0' || *s > '9')
        return false;
    errno = 0;
    *out = strtoull(s, &end, 10);
    return errno == 0 && *end == '\0';
}

int main(int argc, char **argv)
{
    struct opts o = {.seeds = 200};
    struct counts total = {0};
    uint64_t v, passed = 0, failed = 0, hash = 0xcbf29ce484222325ull;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *arg = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--seeds") == 0 && parse_u64(arg, &v) && v > 0) {
            o.seeds = v;
            i++;
        } else if (strcmp(a, "--seed") == 0 && parse_u64(arg, &v)) {
            o.seed = v;
            o.one = true;
            i++;
        } else if (strcmp(a, "--replicas") == 0 && parse_u64(arg, &v) && v >= 2 &&
                   v <= TPC_REPLICAS_MAX) {
            o.replicas = (uint32_t)v;
            i++;
        } else if (strcmp(a, "--ops") == 0 && parse_u64(arg, &v) && v > 0 &&
                   v < 10000000) {
            o.ops = (uint32_t)v;
            i++;
        } else if (strcmp(a, "-v") == 0 || strcmp(a, "--verbose") == 0) {
            o.verbose = true;
        } else if (strcmp(a, "--inject-bug") == 0 ||
                   strcmp(a, "--inject-bug=skip-commit") == 0) {
            o.inject = INJ_SKIP_COMMIT;
        } else if (strcmp(a, "--inject-bug=flip") == 0) {
            o.inject = INJ_FLIP;
        } else if (strcmp(a, "--inject-bug=lying-disk") == 0) {
            o.inject = INJ_LYING_DISK;
        } else if (strcmp(a, "--inject-bug=no-fence") == 0) {
            o.inject = INJ_NO_FENCE;
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    log_set_level(o.verbose ? LOG_LEVEL_DEBUG : LOG_LEVEL_ERROR);
    uint64_t first = o.one ? o.seed : 1, last = o.one ? o.seed : o.seeds;
    for (uint64_t seed = first; seed <= last; seed++) {
        uint64_t h;
        if (run(&o, seed, &total, &h))
            passed++;
        else
            failed++;
        hash = (hash ^ h) * 0x100000001b3ull;
        if (o.one)
            printf("trace hash: %016" PRIx64 "\n", h);
        fflush(stdout);
    }
    print_totals(&total);
    if (!o.one)
        printf("trace hash: %016" PRIx64 "\n", hash);
    printf("%" PRIu64 " passed, %" PRIu64 " failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
