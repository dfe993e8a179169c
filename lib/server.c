/*
 * server.c - serve's network side: libuv TCP and UDP on one port, the
 * execution of parsed requests against the store, and durability (the
 * write-ahead log, snapshots, recovery at start).
 *
 * CONNECTIONS. A TCP connection reads into its buffer; every complete
 * request in it is parsed and executed in order, and their replies leave in
 * one write. The buffer grows to hold one request at most and shrinks back
 * when idle; a data block over --max-value is discarded as it arrives. A UDP
 * datagram is run through the same machinery as a short-lived connection
 * whose replies are cut into datagrams at the end.
 *
 *   READING --(request)--> execute --(read / failed condition)--> reply
 *      ^                      |
 *      |                      +--(key locked by a pending write)--> WAITING
 *      |                      +--(write prepared, log record appended)--> PENDING
 *      |                                                                   |
 *      +------(record durable: commit, reply)  or  (lock released)---------+
 *
 * While a connection has a write pending or is waiting, it executes nothing
 * else, so its replies stay in request order and a read after its own write
 * sees that write. Replies reference stored items instead of copying values
 * (outq.h); a client that stops reading is not read from once --max-output
 * bytes are queued for it, and is closed when the socket has taken none of
 * them for --output-stall-timeout seconds.
 *
 * LIMITS IN TIME. Each connection thread checks its own connections every
 * LIMIT_CONN_SWEEP_MS (lt_sweep): the output stall above, --auth-timeout and
 * --idle-timeout. Without threads, the main loop's timer does it.
 *
 * AUTHENTICATION. With --auth-file, a connection that has not logged in
 * runs its bytes through proto_parse_auth (memcached's ASCII scheme) instead
 * of the parser, until a credentials set matches (conn_authenticate).
 *
 * WRITES. store_prepare() evaluates the condition (add: absent, cas: version,
 * incr: numeric...) against the committed state and builds the new item. A
 * failed condition is answered at once: nothing changes, nothing is logged.
 * Otherwise the write locks its keys, its effect is appended to the log as
 * one record, and only when the log says the record is durable is the change
 * committed to the store and the client told STORED. So a reader never sees
 * a value that a crash could take back, and a write on a locked key waits
 * for the first to finish instead of evaluating against a state about to
 * change. flush_all takes every key: it waits for pending writes to drain,
 * and writes wait for it. If the log fails, no write is acknowledged again:
 * they get SERVER_ERROR while reads go on.
 *
 * SNAPSHOTS. When the log has grown by --snapshot-bytes (and by at least the
 * size of the last snapshot, so rewriting the store costs at most as much
 * as the log it replaces), on SIGUSR1, or on the "snapshot" command, serve
 * forks: the child writes the copy-on-write image of the store as it stands
 * after the last committed record and exits; the parent keeps serving,
 * notices the exit in its timer, and removes the log segments and older
 * snapshots the new one covers.
 *
 * THREADS. With --threads N > 0, N connection threads serve the TCP
 * connections, each on an event loop of its own; the main loop accepts them
 * (handing each to the next thread in turn) and keeps the log's callbacks,
 * the peer links, the timers and UDP. All server state - store, log, 2PC,
 * wait lists, counters - sits under one lock, srv->mu. The main thread holds
 * it whenever its loop runs callbacks (server_run lets go only while it
 * waits for events); a connection thread parses what each read brought
 * without it (the buffer is its own), takes it once at the end of its loop
 * turn to execute all those reads (lt_run_ready) and hand the log its
 * records, and lets go for the system calls: the kernel's share of a
 * request (read, writev) runs in parallel. A connection
 * belongs to its thread: its read buffer, output queue and handle are
 * touched by nobody else. What another thread has for it (a write durable,
 * a 2PC outcome, a wake-up, a lock-wait timeout) is posted to the
 * connection and run by its own thread (conn_post). Replies reference
 * items whose counts are atomic, so a write that completes outside the lock
 * may drop the last reference to an item the store has replaced.
 */
#include "server.h"

#include "datadir.h"
#include "fence.h"
#include "skew.h"
#include "freelist.h"
#include "limits.h"
#include "log.h"
#include "outq.h"
#include "proto.h"
#include "recover.h"
#include "snap.h"
#include "store.h"
#include "tpc.h"
#include "txn.h"
#include "util.h"
#include "wal.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MOD "server"
#define IOV_BATCH 64
#define TIMER_INTERVAL_MS 100
#define TICK_INTERVAL_MS 5 /* 2PC timeouts, resends, write retries */
#define EXPIRE_BUCKETS_PER_TICK 4096

struct counters {
    uint64_t total_connections;
    uint64_t rejected_connections;
    uint64_t protocol_closes;
    uint64_t idle_kicks;
    uint64_t cmd_get, cmd_set, cmd_touch, cmd_flush;
    uint64_t get_hits, get_misses;
    uint64_t delete_hits, delete_misses;
    uint64_t incr_hits, incr_misses, decr_hits, decr_misses;
    uint64_t cas_hits, cas_misses, cas_badval;
    uint64_t touch_hits, touch_misses;
    uint64_t store_too_large, store_no_memory;
    uint64_t bytes_read, bytes_written;
    uint64_t udp_requests, udp_replies, udp_dropped;
    uint64_t writes_logged, writes_waited, writes_failed;
    uint64_t txn_retries, txn_busy, txn_conflicts, reads_waited, lock_wait_timeouts;
    uint64_t fence_dropped, not_current_refused;
    uint64_t expire_txns, expire_keys, expire_failed;
    uint64_t clock_skew_refused;
    uint64_t auth_cmds, auth_errors, auth_timeouts, auth_failure_closes;
    uint64_t output_stall_closes;
};

/* Warnings of one kind that a client can cause at will (refused connections,
 * failed authentications...): at most LIMIT_LOG_BURST_PER_S a second; the
 * rest are counted and the count is logged later (ratelog_*). */
struct ratelog {
    const char *what; /* "refused connections", for the summary line */
    uint64_t second;  /* the current one-second window (monotonic) */
    unsigned n;       /* lines logged in it */
    uint64_t dropped; /* not logged since the last summary */
};

struct conn;
struct wreq;
struct creq;
struct server;

/* An event loop and its thread: [0] is the main loop (the caller's thread),
 * then the connection threads. */
struct lthread {
    struct server *srv;
    uv_loop_t *loop; /* the main loop, or &own */
    uv_loop_t own;
    uv_async_t async; /* posted connections, new sockets, log batches, stop */
    uv_check_t check; /* the end of a loop turn (lt_on_check) */
    bool async_open;
    pthread_t thread;
    bool started, stop, exited;
    bool async_live; /* async may be sent to from any thread (srv->wake_mu) */
    struct conn *inbox_head, *inbox_tail; /* posted connections (srv->mu) */
    struct conn *flushq;                  /* to write once the lock is let go */
    /* Connection threads: the reads of this loop turn, parsed, that run
     * together at its end (lt_run_ready): LT_READY_MAX slots. */
    struct parsed *ready;
    struct conn **ready_conn;
    size_t nready;
    uint64_t ready_bytes; /* bytes those reads brought */
    int *fds;                             /* accepted sockets to adopt (srv->mu) */
    size_t nfds, capfds;
    size_t nconns;
    struct conn *conns;  /* its TCP connections (srv->mu), for lt_sweep */
    uv_timer_t sweep;    /* connection threads: timeouts (lt_sweep) */
    bool sweep_open;
};

/* Connections blocked until something finishes (a write holding a key,
 * pending writes draining before a flush, a snapshot). FIFO. */
struct waitlist {
    struct conn *head, *tail;
};

struct server {
    uv_loop_t *loop;
    /* Threads: see THREADS above. */
    bool mt;                /* cfg.threads > 0 */
    pthread_mutex_t mu;
    pthread_mutex_t wake_mu; /* the log writer's wake-ups vs closing loops */
    unsigned nlt;           /* loops: the main one and the connection threads */
    struct lthread *lt;
    unsigned next_lt;       /* the thread the next connection goes to */
    struct server_config cfg;
    struct proto_limits lim;
    struct store *store;
    struct wal *wal;
    int lock_fd;
    uv_tcp_t tcp;
    uv_udp_t udp;
    uv_timer_t timer;
    uv_signal_t sigchld; /* a snapshot child finished */
    bool tcp_open, udp_open, timer_open, sigchld_open, stopping;
    uv_prepare_t clock_prep; /* mark the turn's clock readings stale */
    uv_check_t clock_check;
    bool clock_open;
    int port;
    struct conn *conns; /* open TCP connections and UDP requests in progress */
    size_t nconns;      /* TCP connections */
    size_t nudp;        /* UDP requests in progress */
    uint64_t next_conn_id;
    uint64_t next_cas;
    uint64_t started_mono_ns;
    int64_t now_ms;          /* wall clock, read once per event */
    enum log_level log_base; /* the level serve started with ("verbosity 0") */
    struct counters st;
    struct ratelog rl_refused, rl_accept, rl_auth, rl_auth_timeout, rl_ceiling;
    char *udp_rbuf;
    struct buf scratch; /* encodes log records */
    struct freelist wreqs; /* spare struct wreq: one per write, reused (freelist.h) */

    /* Writes. */
    size_t npending;          /* writes appended and not yet durable */
    uint64_t applied_lsn;     /* last log record committed to the store */
    uint64_t appended_bytes;  /* log bytes appended since start */
    struct wreq *flush_wreq;  /* a flush_all in flight holds every key */
    struct waitlist barrier;  /* a flush waiting for pending writes to drain,
                                 and the writes queued behind it */

    /* Recovery and snapshots. */
    struct recover_result rec;
    pid_t snap_pid;
    uint64_t snap_lsn;
    uint64_t snap_started_ns;
    uint64_t snap_appended_at; /* appended_bytes when the last one started */
    uint64_t snap_last_bytes;
    uint64_t snap_last_ms;
    uint64_t snap_last_lsn;
    uint64_t snapshots, snapshot_failures;
    struct waitlist snap_cur;  /* "snapshot" commands the running one answers */
    struct waitlist snap_next; /* ...and those that need a newer one */

    /* Replication (cfg.nreplicas > 0). */
    bool cluster;
    bool history_lost; /* the last run may have lost records it reported durable */
    bool dir_created;  /* this start made the data directory */
    uint64_t lost_before; /* then: the txids that may have been among them (RUN) */
    bool run_written;  /* RUN says this run is under way */
    /* A cluster replica's txid ceiling (datadir.h): durable in RUN, every
     * txid logged stays below it. Raised ahead of the clock by a job on
     * the thread pool (ceiling_job), or on the spot when a txid outruns it. */
    uint64_t txid_ceiling;
    uint64_t ceiling_next; /* the job in flight writes this one; 0: none */
    uint64_t ceiling_written; /* what RUN holds after it */
    int ceiling_err;       /* its result */
    uint64_t ceiling_retry_ms; /* after a failure, not before (monotonic) */
    uint64_t run_ceiling;  /* under run_mu: the ceiling RUN holds */
    uint64_t run_seen[LIMIT_REPLICAS_MAX]; /* under run_mu: the fence's seen[] to write */
    uint64_t run_fence_mark;  /* under run_mu: the last confirmed mark */
    bool run_verified;        /* under run_mu: confirmed current in this run */
    bool run_behind;          /* under run_mu: found behind (kept) */
    uint32_t run_behind_by;
    uint64_t run_behind_seen;
    uint64_t seen_persist_ms; /* the fence's seen[] is written again after this */
    /* Is our data, and each peer's, as recent as the others saw it (fence.h)? */
    struct fence fence;
    uint64_t hist_mark;    /* the last run's txid ceiling: the fence's first mark */
    uint64_t prev_seen[LIMIT_REPLICAS_MAX];
    uint32_t peer_cport[LIMIT_REPLICAS_MAX]; /* each peer's client port (its STATE) */
    bool fence_mark_due; /* confirmed current: write RUN's fence_mark soon */
    bool fence_gave_up;  /* a request waited --lock-wait-ms for a peer to
                            confirm us, in vain: the next ones do not wait */
    uv_work_t ceiling_job;
    pthread_mutex_t run_mu; /* one RUN writer at a time */
    bool run_final;         /* under run_mu: the clean stop is written */
    struct tpc *tpc;
    struct peer_net *peers;
    struct txn_rm rm;
    struct buf ops;           /* encodes a write's operations */
    uv_timer_t tick;
    bool tick_open;
    struct waitlist retry;    /* writes waiting out a conflict backoff */
    struct waitlist txn_any;  /* a flush_all waiting for every transaction */
    struct waitlist clock_wait; /* writes waiting for a peer's clock to be measured */
    struct waitlist wake;     /* woken once the current tpc call returns */
    uint32_t self_idx;        /* our place in --replicas: which keys we expire */
    uint32_t ids[LIMIT_REPLICAS_MAX]; /* the replicas' ids, in --replicas order */
    struct skew skew;         /* how far the peers' clocks are from ours */
    bool skew_writes_refused; /* clocks found too far apart, to log changes */
    bool skew_reads_refused;  /* likewise, for our own clock */
    uint64_t clock_probe_at_ms; /* mono: the next clock probe */
    int64_t clock_gap_ms;     /* wall minus monotonic: a change is a clock step */
    bool clock_gap_known;
    bool expiring;            /* an expiry transaction is under way */
    bool expire_more;         /* its walk stopped with a full batch */
    struct creq *done_head, *done_tail; /* outcomes to deliver, likewise */
    uint64_t rng;
};

/* A client write under two-phase commit (this replica coordinates it). */
struct creq {
    struct server *srv;
    struct conn *c;
    struct creq *next; /* on the done list */
    enum proto_cmd cmd;
    bool noreply;
    bool too_large; /* a refused oversized set: the reply is an error */
    bool kept;      /* the request is still at the front of c's buffer */
    bool committed;
    bool expire; /* the replica's own delete of expired keys (no client) */
    uint8_t reason;
    uint32_t culprit;
    uint64_t number; /* incr/decr result; expire: keys */
};

/* What a prepared transaction carries for the server: readers and writers
 * waiting for its outcome. */
struct ptx {
    struct waitlist waiters;
};

/* A write between its log append and its commit. */
struct wreq {
    struct server *srv;
    struct conn *c;
    enum proto_cmd cmd;
    bool noreply;
    bool too_large; /* a refused oversized set: the reply is an error */
    bool locked;
    uint64_t cas;
    size_t nch;
    struct store_change *ch; /* nch prepared changes */
    struct store_change one;
    struct waitlist waiters; /* connections waiting for our keys */
    struct wreq *post_next;  /* posted to c's thread: see conn_post */
    int post_status;
};

struct conn {
    uv_tcp_t tcp; /* first: the handle's address is the conn's (TCP only) */
    struct server *srv;
    struct conn *prev, *next;
    uint64_t id;
    bool udp;
    char *rbuf;
    size_t rlen, rcap;
    size_t need;      /* don't parse until rlen >= need */
    uint64_t swallow; /* bytes still to discard (a refused data block) */
    struct outq out;
    uv_write_t wreq;
    size_t in_flight; /* bytes handed to uv_write */
    bool reading;
    bool closing;
    bool handle_closed; /* uv_close done: free once no write is pending */
    bool close_after_flush;
    uint64_t last_active_ms;
    uint64_t opened_ms;        /* when it was accepted (--auth-timeout) */
    bool authed;               /* may run commands (always, without --auth-file) */
    unsigned auth_failures;    /* failed attempts (--max-auth-failures) */
    /* Output stall (--output-stall-timeout): bytes the socket took so far;
     * what lt_sweep saw last, and since when it has not moved. */
    uint64_t sent_bytes, stall_sent, stall_since_ms;
    unsigned npending;         /* our writes in the log, awaiting durability */
    struct creq *cpending;     /* our write under two-phase commit */
    unsigned attempts;         /* conflict retries of the request in front */
    uint64_t wait_since_ms;    /* waiting for a transaction's outcome since */
    bool waits_clock;          /* ... or for a peer's clock to be measured */
    bool waits_fence;          /* ... or for a peer to confirm our data is current */
    uint64_t retry_at_ms;      /* on the retry list until then */
    struct waitlist *waiting;  /* the list we wait on, or NULL */
    struct conn *wait_next;
    /* keys [prefix] streams its reply: the point-in-time list and position. */
    struct item **keys;
    size_t nkeys, keys_pos;
    /* UDP: where the reply goes. */
    struct sockaddr_storage addr;
    uint16_t udp_req_id;
    char peer[INET6_ADDRSTRLEN + 8];
    /* Threads: the owner, and what others posted for it (srv->mu). */
    struct lthread *lt;
    struct conn *lt_prev, *lt_next; /* on lt->conns (TCP) */
    bool posted, in_flushq;
    bool deferred;         /* its parsed reads wait in lt->ready[slot] */
    unsigned slot;
    struct conn *post_next, *flush_next;
    unsigned post;         /* POST_* */
    struct wreq *post_w, *post_w_tail; /* our writes durable (or failed), in order */
    struct creq *post_q;   /* a 2PC outcome for us */
    char *post_line;       /* a line to answer (snapshot) */
};

/* What another thread posts to a connection. */
enum {
    POST_RUN = 1,          /* woken: go on with the buffered requests */
    POST_LOCK_TIMEOUT = 2, /* its wait for a transaction's outcome timed out */
};

/* ---- helpers ---------------------------------------------------------------- */

/*
 * The clocks, read at most once per loop turn (or hold of the server lock)
 * per thread: a replicated write used to read them a dozen times on each
 * replica (every peer message, every durable record), 3% of the CPU of a
 * 3-replica run. Stale marks the readings old; the next use reads again.
 * Stale is set when a thread takes the server lock and, on the main loop,
 * before it polls and after its I/O callbacks, so no reading outlives the
 * work of one wake-up.
 */
static __thread bool tl_wall_fresh, tl_mono_fresh;
static __thread int64_t tl_wall_ms;
static __thread uint64_t tl_mono_ns;

static void clock_stale(void)
{
    tl_wall_fresh = tl_mono_fresh = false;
}

static int64_t wall_ms(void)
{
    if (!tl_wall_fresh) {
        tl_wall_ms = util_now_unix_ms();
        tl_wall_fresh = true;
    }
    return tl_wall_ms;
}

static uint64_t mono_ns(void)
{
    if (!tl_mono_fresh) {
        tl_mono_ns = util_mono_ns();
        tl_mono_fresh = true;
    }
    return tl_mono_ns;
}

static void clock_on_prepare(uv_prepare_t *h)
{
    (void)h;
    clock_stale();
}

static void clock_on_check(uv_check_t *h)
{
    (void)h;
    clock_stale();
}

static void refresh_now(struct server *srv)
{
    srv->now_ms = wall_ms();
}

/* Whether one more warning of rl's kind may be logged now (lock held). When
 * it may, *dropped is how many were not logged before it, to mention. */
static bool ratelog_allow(struct ratelog *rl, uint64_t *dropped)
{
    uint64_t sec = util_mono_ns() / 1000000000u;

    if (sec != rl->second) {
        rl->second = sec;
        rl->n = 0;
    }
    if (rl->n >= LIMIT_LOG_BURST_PER_S) {
        rl->dropped++;
        return false;
    }
    rl->n++;
    *dropped = rl->dropped;
    rl->dropped = 0;
    return true;
}

/* " (N more not logged before this)" for a line ratelog_allow() let through
 * after dropping N, or "". Returns buf. */
static const char *ratelog_note(char *buf, size_t cap, uint64_t dropped)
{
    if (dropped == 0)
        buf[0] = '\0';
    else
        snprintf(buf, cap, " (%llu more not logged before this)", (unsigned long long)dropped);
    return buf;
}

/* Logs how many warnings of rl's kind went unlogged, once their second is
 * over (the timer; lock held). */
static void ratelog_flush(struct ratelog *rl)
{
    if (rl->dropped == 0 || util_mono_ns() / 1000000000u == rl->second)
        return;
    log_warn(MOD, "%llu more %s not logged (at most %d a second are)",
             (unsigned long long)rl->dropped, rl->what, LIMIT_LOG_BURST_PER_S);
    rl->dropped = 0;
}

void server_config_defaults(struct server_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->host = "127.0.0.1";
    cfg->port = 11211;
    cfg->tcp = true;
    cfg->udp = false;
    cfg->max_conns = LIMIT_CONNS_DEFAULT;
    cfg->threads = LIMIT_THREADS_DEFAULT;
    cfg->conn_writes_max = LIMIT_CONN_WRITES_DEFAULT;
    cfg->max_memory_bytes = (uint64_t)LIMIT_MEMORY_MB_DEFAULT * 1024 * 1024;
    cfg->value_bytes_max = LIMIT_VALUE_BYTES_DEFAULT;
    cfg->get_line_bytes_max = LIMIT_GET_LINE_BYTES_DEFAULT;
    cfg->get_keys_max = LIMIT_GET_KEYS_DEFAULT;
    cfg->conn_output_bytes_max = LIMIT_CONN_OUTPUT_BYTES_DEFAULT;
    cfg->output_stall_timeout_s = LIMIT_OUTPUT_STALL_TIMEOUT_S_DEFAULT;
    cfg->idle_timeout_s = LIMIT_IDLE_TIMEOUT_S_DEFAULT;
    cfg->auth_timeout_s = LIMIT_AUTH_TIMEOUT_S_DEFAULT;
    cfg->auth_failures_max = LIMIT_AUTH_FAILURES_DEFAULT;
    cfg->data_dir = LIMIT_DATA_DIR_DEFAULT;
    cfg->fsync_mode = WAL_FSYNC_ALWAYS;
    cfg->fsync_interval_ms = LIMIT_FSYNC_INTERVAL_MS_DEFAULT;
    cfg->snapshot_bytes = LIMIT_SNAPSHOT_BYTES_DEFAULT;
    cfg->wal_segment_bytes = LIMIT_WAL_SEGMENT_BYTES_DEFAULT;
    cfg->wal_prealloc_bytes = LIMIT_WAL_PREALLOC_BYTES_DEFAULT;
    cfg->epoch = 1;
    cfg->prepare_timeout_ms = LIMIT_PREPARE_TIMEOUT_MS_DEFAULT;
    cfg->lock_wait_ms = LIMIT_LOCK_WAIT_MS_DEFAULT;
    cfg->max_clock_skew_ms = LIMIT_CLOCK_SKEW_MS_DEFAULT;
}

/* ---- threads ------------------------------------------------------------------ */

/* Taken by connection threads around what they run; the main thread holds
 * it whenever its loop runs (server_run). */
static void srv_lock(struct server *srv)
{
    clock_stale();
    if (srv->mt) {
        pthread_mutex_lock(&srv->mu);
        item_defer_frees(true);
    }
}

/* Items overwritten meanwhile are freed after the lock is let go: the
 * other threads need not wait for free(3). */
static void srv_unlock(struct server *srv)
{
    if (srv->mt) {
        item_defer_frees(false);
        pthread_mutex_unlock(&srv->mu);
        item_reap();
    }
}

/* What this thread queued during its loop's turn: log records (the main
 * loop hands them to the log writer when it turns, but it may be asleep)
 * and peer frames (written by the main loop: wake it). */
static __thread bool tl_wal_staged, tl_kick_main;

/* A connection thread's loop turn is over (uv_check, after its I/O
 * callbacks): hand its log records to the writer, wake the main loop for
 * its frames. Once per turn, however many requests the turn ran. */
static void lt_flush(struct lthread *lt);

static void lt_on_sweep(uv_timer_t *t);
static void lt_run_ready(struct lthread *lt);
static bool sweep_wanted(const struct server *srv);

static void lt_on_check(uv_check_t *h)
{
    struct lthread *lt = h->data;
    struct server *srv = lt->srv;
    bool staged, kick;

    if (!tl_wal_staged && !tl_kick_main && lt->nready == 0)
        return;
    srv_lock(srv);
    if (lt->nready > 0)
        lt_run_ready(lt);
    staged = tl_wal_staged;
    kick = tl_kick_main;
    tl_wal_staged = tl_kick_main = false;
    /* Under --fsync none this writes the batch and runs its callbacks:
     * our connections' replies are queued for lt_flush, and their next
     * writes staged anew (tl_wal_staged again). */
    if (staged && srv->wal)
        wal_hand_over(srv->wal);
    if ((kick || tl_kick_main) && srv->lt[0].async_open)
        uv_async_send(&srv->lt[0].async);
    tl_kick_main = false;
    /* Records staged meanwhile go at the next turn: make it come now. */
    if (tl_wal_staged && lt->async_open)
        uv_async_send(&lt->async);
    srv_unlock(srv);
    lt_flush(lt);
}

/* Does the calling thread own c (or has its owner exited)? */
static bool conn_local(const struct conn *c)
{
    return !c->srv->mt || c->lt->exited || pthread_equal(pthread_self(), c->lt->thread);
}

/* Asks c's thread to run what was set in c (the post_ fields, POST_ bits). */
static void conn_post(struct conn *c, unsigned what)
{
    struct lthread *lt = c->lt;

    c->post |= what;
    if (c->posted)
        return;
    c->posted = true;
    c->post_next = NULL;
    if (lt->inbox_tail)
        lt->inbox_tail->post_next = c;
    else
        lt->inbox_head = c;
    lt->inbox_tail = c;
    if (lt->async_open)
        uv_async_send(&lt->async);
}

static void conn_process(struct conn *c);

/* Lets c run its buffered requests again, on its own thread. */
static void conn_resume(struct conn *c)
{
    if (conn_local(c))
        conn_process(c);
    else
        conn_post(c, POST_RUN);
}

static void waitlist_push(struct waitlist *wl, struct conn *c)
{
    assert(c->waiting == NULL);
    c->wait_next = NULL;
    if (wl->tail)
        wl->tail->wait_next = c;
    else
        wl->head = c;
    wl->tail = c;
    c->waiting = wl;
}

/* Takes c off the list it waits on (a connection that closes). */
static void waitlist_remove(struct conn *c)
{
    struct waitlist *wl = c->waiting;
    struct conn *prev = NULL;

    if (wl == NULL)
        return;
    for (struct conn *x = wl->head; x; prev = x, x = x->wait_next) {
        if (x != c)
            continue;
        if (prev)
            prev->wait_next = c->wait_next;
        else
            wl->head = c->wait_next;
        if (wl->tail == c)
            wl->tail = prev;
        break;
    }
    c->waiting = NULL;
    c->wait_next = NULL;
}

/* Takes the first connection off wl (NULL if empty). */
static struct conn *waitlist_pop(struct waitlist *wl)
{
    struct conn *c = wl->head;

    if (c == NULL)
        return NULL;
    wl->head = c->wait_next;
    if (wl->head == NULL)
        wl->tail = NULL;
    c->waiting = NULL;
    c->wait_next = NULL;
    return c;
}

/* Moves every connection on src to the end of dst, in order. */
static void waitlist_move(struct waitlist *dst, struct waitlist *src)
{
    struct conn *c;

    while ((c = waitlist_pop(src)) != NULL)
        waitlist_push(dst, c);
}

/* Lets every connection on wl run again, in arrival order. Those still to
 * run wait on a list of our own meanwhile, so one that closes while an
 * earlier one runs leaves it properly (waitlist_remove), and connections
 * that start waiting on wl again are left for the next wake. */
static void waitlist_wake(struct waitlist *wl)
{
    struct waitlist run = {0};
    struct conn *c;

    waitlist_move(&run, wl);
    while ((c = waitlist_pop(&run)) != NULL)
        conn_resume(c);
}

/* ---- executing requests ----------------------------------------------------- */

/* What a request asks of its connection afterwards. */
enum after {
    AFTER_CONTINUE, /* done; go on with the next request */
    AFTER_CLOSE,    /* quit: close once the replies are out */
    AFTER_KEYS,     /* stream the collected key list */
    AFTER_PENDING,  /* a write is in the log: wait for it; request consumed */
    AFTER_WAIT,     /* blocked before starting: request NOT consumed, rerun later */
};

static int reply(struct outq *o, const char *s)
{
    return outq_str(o, s);
}

static int reply_line(struct outq *o, const char *s)
{
    int r = outq_str(o, s);
    return r ? r : outq_text(o, "\r\n", 2);
}

static enum store_op_type op_type_of(enum proto_cmd cmd)
{
    switch (cmd) {
    case PROTO_CMD_SET:
        return STORE_SET;
    case PROTO_CMD_ADD:
        return STORE_ADD;
    case PROTO_CMD_REPLACE:
        return STORE_REPLACE;
    case PROTO_CMD_APPEND:
        return STORE_APPEND;
    case PROTO_CMD_PREPEND:
        return STORE_PREPEND;
    case PROTO_CMD_CAS:
        return STORE_CAS;
    case PROTO_CMD_DELETE:
        return STORE_DELETE;
    case PROTO_CMD_INCR:
        return STORE_INCR;
    case PROTO_CMD_DECR:
        return STORE_DECR;
    case PROTO_CMD_TOUCH:
    case PROTO_CMD_GAT:
    case PROTO_CMD_GATS:
        return STORE_TOUCH;
    default:
        assert(cmd == PROTO_CMD_FLUSH_ALL);
        return STORE_FLUSH;
    }
}

static void count_write(struct server *srv, enum proto_cmd cmd, enum store_status st)
{
    struct counters *c = &srv->st;
    bool ok = st == STORE_OK;

    switch (cmd) {
    case PROTO_CMD_DELETE:
        ok ? c->delete_hits++ : c->delete_misses++;
        break;
    case PROTO_CMD_INCR:
        ok ? c->incr_hits++ : c->incr_misses++;
        break;
    case PROTO_CMD_DECR:
        ok ? c->decr_hits++ : c->decr_misses++;
        break;
    case PROTO_CMD_TOUCH:
        c->cmd_touch++;
        ok ? c->touch_hits++ : c->touch_misses++;
        break;
    case PROTO_CMD_CAS:
        c->cmd_set++;
        if (ok)
            c->cas_hits++;
        else if (st == STORE_EXISTS)
            c->cas_badval++;
        else if (st == STORE_NOT_FOUND)
            c->cas_misses++;
        break;
    case PROTO_CMD_FLUSH_ALL:
        c->cmd_flush++;
        break;
    case PROTO_CMD_GAT:
    case PROTO_CMD_GATS:
        break; /* counted per key with the reads */
    default:
        c->cmd_set++;
        break;
    }
    if (st == STORE_NO_MEMORY)
        c->store_no_memory++;
    else if (st == STORE_TOO_LARGE)
        c->store_too_large++;
}

static const char *write_reply(enum proto_cmd cmd, enum store_status st)
{
    switch (st) {
    case STORE_OK:
        switch (cmd) {
        case PROTO_CMD_DELETE:
            return "DELETED\r\n";
        case PROTO_CMD_TOUCH:
            return "TOUCHED\r\n";
        case PROTO_CMD_FLUSH_ALL:
            return "OK\r\n";
        default:
            return "STORED\r\n";
        }
    case STORE_NOT_STORED:
        return "NOT_STORED\r\n";
    case STORE_EXISTS:
        return "EXISTS\r\n";
    case STORE_NOT_FOUND:
        return "NOT_FOUND\r\n";
    case STORE_NON_NUMERIC:
        return "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n";
    case STORE_TOO_LARGE:
        return "SERVER_ERROR object too large for cache\r\n";
    case STORE_NO_MEMORY:
        return "SERVER_ERROR out of memory storing object\r\n";
    }
    return "SERVER_ERROR internal error\r\n";
}

/* The reply to a write that is in (both write paths): the new number of
 * an incr/decr, memcached's error for a refused oversized set (whose old
 * value was dropped), or STORED/DELETED/TOUCHED/OK. */
static int reply_write_done(struct outq *o, enum proto_cmd cmd, bool too_large, uint64_t number)
{
    if (too_large)
        return reply(o, "SERVER_ERROR object too large for cache\r\n");
    if (cmd == PROTO_CMD_INCR || cmd == PROTO_CMD_DECR) {
        char num[24];
        size_t n = util_fmt_u64(num, number);
        memcpy(num + n, "\r\n", 2);
        return outq_text(o, num, n + 2);
    }
    return reply(o, write_reply(cmd, STORE_OK));
}

static int reply_log_failed(struct server *srv, struct outq *o)
{
    char line[160];
    snprintf(line, sizeof(line),
             "SERVER_ERROR write-ahead log failed (%s): writes are refused\r\n",
             strerror(-wal_error(srv->wal)));
    return reply(o, line);
}

/* A write whose own log record was in the batch that failed: whether it is
 * on disk depends on whether the log could be cut back (wal_rolled_back). */
static int reply_write_failed(struct server *srv, struct outq *o)
{
    char line[256];

    if (wal_rolled_back(srv->wal))
        snprintf(line, sizeof(line),
                 "SERVER_ERROR write-ahead log failed (%s): the write was not done\r\n",
                 strerror(-wal_error(srv->wal)));
    else
        snprintf(line, sizeof(line),
                 "SERVER_ERROR write-ahead log failed (%s): the write may or may not be on "
                 "disk (known once serve restarts; do not assume either)\r\n",
                 strerror(-wal_error(srv->wal)));
    return reply(o, line);
}

/* The store operation a single-key write request (or flush_all) asks for. */
static void op_of_request(const struct server *srv, const struct proto_req *req,
                          struct store_op *op)
{
    memset(op, 0, sizeof(*op));
    op->type = op_type_of(req->cmd);
    op->key = req->key;
    op->nkey = req->nkey;
    op->value = req->data;
    op->nvalue = req->ndata;
    op->flags = req->flags;
    op->cas = req->cas;
    op->delta = req->delta;
    op->exptime_ms = proto_exptime_abs_ms(req->exptime, srv->now_ms);
    if (req->cmd == PROTO_CMD_FLUSH_ALL)
        op->flush_at_ms = req->delay > 0 ? proto_exptime_abs_ms(req->delay, srv->now_ms) : 0;
}

/* Encodes the WRITE record for w's changes into srv->scratch. */
static int encode_write(struct server *srv, struct wreq *w)
{
    struct wal_txn txn = {.txid = w->cas, .epoch = 0, .coordinator = 0, .nops = (uint32_t)w->nch};
    struct wal_op op;
    size_t n = WAL_TXN_BYTES;
    int r;

    for (size_t i = 0; i < w->nch; i++) {
        txn_change_to_op(&w->ch[i], &op);
        n += wal_op_size(&op);
    }
    srv->scratch.len = 0;
    if ((r = buf_reserve(&srv->scratch, n)) < 0)
        return r;
    wal_txn_encode(srv->scratch.data, &txn);
    srv->scratch.len = WAL_TXN_BYTES;
    for (size_t i = 0; i < w->nch; i++) {
        txn_change_to_op(&w->ch[i], &op);
        srv->scratch.len += wal_op_encode(srv->scratch.data + srv->scratch.len, &op);
    }
    return 0;
}

static void wreq_free(struct wreq *w)
{
    if (w->ch != &w->one)
        free(w->ch);
    freelist_put(&w->srv->wreqs, w);
}

static void wreq_unlock(struct wreq *w)
{
    struct server *srv = w->srv;

    if (!w->locked)
        return;
    for (size_t i = 0; i < w->nch; i++)
        if (w->ch[i].type != STORE_FLUSH)
            store_unlock_change(srv->store, &w->ch[i], w);
    w->locked = false;
}

static void conn_free(struct conn *c);
static void conn_flush(struct conn *c);
static int exec_retrieval(struct server *srv, struct conn *c, const struct proto_req *req);
static int reply_not_current(struct server *srv, struct outq *o, bool noreply);
static bool fence_must_wait(struct server *srv, struct conn *c);
static void snapshot_maybe(struct server *srv);

/* Drops the request at the front of c's buffer (one that was kept while it
 * waited), after running it as a retrieval if it is a gat. */
static int consume_front(struct server *srv, struct conn *c, bool run_retrieval)
{
    struct proto_req req;
    size_t consumed;
    int r = 0;

    enum proto_status st = proto_parse(c->rbuf, c->rlen, &srv->lim, &req, &consumed);
    assert(st == PROTO_OK);
    (void)st;
    if (run_retrieval)
        r = exec_retrieval(srv, c, &req);
    if (consumed > c->rlen) {
        /* A set refused for size that waited: its data block is not all
         * here (it was never going to be kept). Discard the rest as it
         * comes. */
        assert(req.too_large);
        c->swallow = c->udp ? 0 : consumed - c->rlen;
        consumed = c->rlen;
    }
    memmove(c->rbuf, c->rbuf + consumed, c->rlen - consumed);
    c->rlen -= consumed;
    c->attempts = 0;
    c->wait_since_ms = 0;
    return r;
}

/* c's side of a finished write, on c's thread: the reply, then the next
 * requests. Frees w, and c if it closed meanwhile. */
static void wreq_finish(struct conn *c, struct wreq *w, int status)
{
    struct server *srv = c->srv;

    assert(c->npending > 0);
    c->npending--;
    if (c->handle_closed || c->closing) {
        wreq_free(w);
        if (c->handle_closed && c->npending == 0 && c->cpending == NULL)
            conn_free(c);
        return;
    }
    if (status < 0) {
        if (!w->noreply && reply_write_failed(srv, &c->out) < 0)
            c->close_after_flush = true;
    } else if (w->cmd == PROTO_CMD_GAT || w->cmd == PROTO_CMD_GATS) {
        /* The touches are in: now read, and answer the request. The
         * request line is still at the front of the buffer. */
        if (consume_front(srv, c, true) < 0)
            c->close_after_flush = true;
    } else if (!w->noreply) {
        if (reply_write_done(&c->out, w->cmd, w->too_large, w->ch[0].number) < 0)
            c->close_after_flush = true;
    }
    wreq_free(w);
    conn_process(c);
}

/* The log record of w is durable (status 0) or never will be: finish it. */
static void wreq_done(void *arg, uint64_t lsn, int status)
{
    struct wreq *w = arg;
    struct server *srv = w->srv;
    struct conn *c = w->c;

    refresh_now(srv);
    if (status == 0) {
        for (size_t i = 0; i < w->nch; i++)
            store_commit(srv->store, &w->ch[i]);
        srv->applied_lsn = lsn;
    } else {
        for (size_t i = 0; i < w->nch; i++)
            store_abort(srv->store, &w->ch[i]);
        srv->st.writes_failed++;
    }
    wreq_unlock(w);
    srv->npending--;
    if (srv->flush_wreq == w)
        srv->flush_wreq = NULL;

    struct waitlist waiters = {0};
    waitlist_move(&waiters, &w->waiters);
    if (c == NULL) {
        wreq_free(w);
    } else if (conn_local(c)) {
        wreq_finish(c, w, status);
    } else {
        w->post_status = status;
        w->post_next = NULL;
        if (c->post_w_tail)
            c->post_w_tail->post_next = w;
        else
            c->post_w = w;
        c->post_w_tail = w;
        conn_post(c, 0);
    }
    waitlist_wake(&waiters);
    if (srv->npending == 0)
        waitlist_wake(&srv->barrier);
    snapshot_maybe(srv);
}

/*
 * Blocks c until whatever holds one of the keys of the request finishes.
 * Returns true if c must wait.
 */
static bool must_wait(struct server *srv, struct conn *c, const struct proto_req *req)
{
    struct wreq *holder = NULL;

    if (srv->flush_wreq) {
        holder = srv->flush_wreq;
    } else if (srv->barrier.head || (req->cmd == PROTO_CMD_FLUSH_ALL && srv->npending > 0)) {
        /* A flush waits for the writes in flight to drain, and writes that
         * come after it queue behind it (so it is not starved). */
        srv->st.writes_waited++;
        waitlist_push(&srv->barrier, c);
        return true;
    } else if (req->cmd == PROTO_CMD_FLUSH_ALL) {
        return false; /* no write in flight: it may go */
    } else if (req->cmd == PROTO_CMD_GAT || req->cmd == PROTO_CMD_GATS) {
        size_t pos = 0, nk;
        const char *k;
        while (holder == NULL && proto_next_key(req, &pos, &k, &nk))
            holder = store_lock_holder(srv->store, k, nk);
    } else {
        holder = store_lock_holder(srv->store, req->key, req->nkey);
    }
    if (holder == NULL)
        return false;
    srv->st.writes_waited++;
    waitlist_push(&holder->waiters, c);
    return true;
}

/* Runs a write: prepare, and either answer at once (condition failed) or
 * lock, log and wait for durability. */
static int exec_write(struct server *srv, struct conn *c, const struct proto_req *req)
{
    struct outq *o = &c->out;
    struct store_op op = {0};
    struct wreq *w;
    enum store_status st = STORE_OK;
    int r;

    if (wal_error(srv->wal)) {
        if (c->npending > 0)
            return AFTER_WAIT; /* our writes in the log are answered first */
        srv->st.writes_failed++;
        return req->noreply ? 0 : reply_log_failed(srv, o);
    }
    if (must_wait(srv, c, req))
        return AFTER_WAIT;

    w = freelist_get(&srv->wreqs);
    if (w == NULL)
        return -ENOMEM;
    w->srv = srv;
    w->cmd = req->cmd;
    w->noreply = req->noreply;
    w->cas = srv->next_cas++;
    w->ch = &w->one;

    if (req->cmd == PROTO_CMD_GAT || req->cmd == PROTO_CMD_GATS) {
        /* One touch per key present; keys absent are simply not found. */
        size_t pos = 0, nk, n = 0;
        const char *k;
        if (req->nkeys > 1 && (w->ch = calloc(req->nkeys, sizeof(*w->ch))) == NULL) {
            freelist_put(&srv->wreqs, w);
            return -ENOMEM;
        }
        op.type = STORE_TOUCH;
        op.exptime_ms = proto_exptime_abs_ms(req->exptime, srv->now_ms);
        /* Lock as we go: a key already ours is a repeat in the list. */
        w->locked = true;
        while (proto_next_key(req, &pos, &k, &nk)) {
            void *holder;
            srv->st.cmd_touch++;
            r = store_lock(srv->store, k, nk, w, &holder);
            if (r == -EDEADLK)
                continue;
            if (r < 0) {
                w->nch = n;
                goto fail;
            }
            op.key = k;
            op.nkey = nk;
            if (store_prepare(srv->store, &op, w->cas, srv->now_ms, &w->ch[n]) == 0) {
                n++;
                srv->st.touch_hits++;
            } else {
                store_unlock(srv->store, k, nk, w);
                srv->st.touch_misses++;
            }
        }
        w->nch = n;
        if (n == 0) {
            wreq_free(w);
            return exec_retrieval(srv, c, req);
        }
    } else {
        op_of_request(srv, req, &op);
        if (req->too_large) {
            /* memcached drops the old value of a set refused for size, so a
             * reader never takes it for the new one. */
            srv->st.store_too_large++;
            srv->st.cmd_set++;
            w->too_large = true;
            op.type = STORE_DELETE;
            if (req->cmd != PROTO_CMD_SET ||
                store_prepare(srv->store, &op, w->cas, srv->now_ms, &w->one) < 0) {
                wreq_free(w);
                return req->noreply ? 0 : reply(o, "SERVER_ERROR object too large for cache\r\n");
            }
        } else {
            store_prepare(srv->store, &op, w->cas, srv->now_ms, &w->one);
            st = w->one.status;
            if (st != STORE_OK && c->npending > 0) {
                /* Answered now, it would overtake the replies to our writes
                 * still in the log: evaluate it again once they are in
                 * (wreq_finish runs us again). */
                store_abort(srv->store, &w->one);
                wreq_free(w);
                return AFTER_WAIT;
            }
            count_write(srv, req->cmd, st);
        }
        w->nch = 1;
        if (log_enabled(LOG_LEVEL_DEBUG)) {
            char k[96];
            log_debug(MOD, "conn %llu: %s %s (%zu bytes) -> %s", (unsigned long long)c->id,
                      proto_cmd_name(req->cmd), log_escape(k, sizeof(k), req->key, req->nkey),
                      req->ndata, st == STORE_OK ? "logging" : store_status_name(st));
        }
        if (st != STORE_OK) {
            /* Nothing changes, so nothing to log: answer now. */
            wreq_free(w);
            return req->noreply ? 0 : reply(o, write_reply(req->cmd, st));
        }
    }

    /* Lock the keys (gat's are already), log the effect, wait for
     * durability. */
    if (!w->locked) {
        w->locked = true; /* from here on, failure unlocks what we hold */
        for (size_t i = 0; i < w->nch; i++) {
            void *holder;
            if (w->ch[i].type == STORE_FLUSH)
                continue;
            r = store_lock_change(srv->store, &w->ch[i], w, &holder);
            assert(r == 0 || r == -ENOMEM); /* must_wait saw every key free */
            if (r < 0)
                goto fail;
        }
    }
    if ((r = encode_write(srv, w)) < 0)
        goto fail;
    tl_wal_staged = true;
    int64_t lsn = wal_append(srv->wal, WAL_REC_WRITE, srv->scratch.data, srv->scratch.len,
                             wreq_done, w);
    if (lsn < 0) {
        r = (int)lsn;
        goto fail;
    }
    srv->appended_bytes += WAL_RECORD_HEADER_BYTES + srv->scratch.len;
    srv->st.writes_logged++;
    srv->npending++;
    if (req->cmd == PROTO_CMD_FLUSH_ALL)
        srv->flush_wreq = w;
    w->c = c;
    c->npending++;
    return AFTER_PENDING;
fail:
    for (size_t i = 0; i < w->nch; i++)
        store_abort(srv->store, &w->ch[i]);
    wreq_unlock(w);
    wreq_free(w);
    if (r == -ENOMEM)
        return r;
    if (c->npending > 0)
        return AFTER_WAIT; /* answered after our writes in the log */
    srv->st.writes_failed++;
    return req->noreply ? 0 : reply_log_failed(srv, o);
}

/* Answers a retrieval (get, gets; gat and gats once their touches are in). */
static int exec_retrieval(struct server *srv, struct conn *c, const struct proto_req *req)
{
    bool with_cas = req->cmd == PROTO_CMD_GETS || req->cmd == PROTO_CMD_GATS;
    struct outq *o = &c->out;
    size_t pos = 0, nk;
    const char *k;
    char hdr[PROTO_VALUE_HDR_MAX];
    int r;

    while (proto_next_key(req, &pos, &k, &nk)) {
        struct item *it;
        srv->st.cmd_get++;
        it = store_get(srv->store, k, nk, srv->now_ms);
        if (it == NULL) {
            srv->st.get_misses++;
            continue;
        }
        srv->st.get_hits++;
        size_t n = proto_fmt_value_hdr(hdr, k, nk, it->flags, it->nval, with_cas, it->cas);
        if ((r = outq_text(o, hdr, n)) < 0 || (r = outq_item(o, it)) < 0)
            return r;
    }
    if (log_enabled(LOG_LEVEL_DEBUG)) {
        char ks[96];
        size_t skip = strspn(req->keys, " ");
        log_debug(MOD, "conn %llu: %s %zu key(s): %s", (unsigned long long)c->id,
                  proto_cmd_name(req->cmd), req->nkeys,
                  log_escape(ks, sizeof(ks), req->keys + skip, req->keys_len - skip));
    }
    return reply(o, "END\r\n");
}

static void stat_u64(struct outq *o, const char *name, uint64_t v)
{
    char line[128];
    int n = snprintf(line, sizeof(line), "STAT %s %llu\r\n", name, (unsigned long long)v);
    outq_text(o, line, (size_t)n);
}

static void stat_str(struct outq *o, const char *name, const char *v)
{
    char line[512];
    int n = snprintf(line, sizeof(line), "STAT %s %s\r\n", name, v);
    outq_text(o, line, (size_t)(n < (int)sizeof(line) ? n : (int)sizeof(line) - 1));
}

static void stats_cluster(struct server *srv, struct outq *o);

static int exec_stats(struct server *srv, struct outq *o, const struct proto_req *req)
{
    const struct server_config *cfg = &srv->cfg;
    struct counters *c = &srv->st;
    struct store_stats ss;
    struct wal_stats ws;
    char v[64];

    if (req->narg == 5 && memcmp(req->arg, "reset", 5) == 0) {
        uint64_t total = c->total_connections;
        memset(c, 0, sizeof(*c));
        c->total_connections = total; /* memcached keeps this one too */
        return reply(o, "RESET\r\n");
    }
    if (req->narg == 8 && memcmp(req->arg, "settings", 8) == 0) {
        stat_u64(o, "maxbytes", cfg->max_memory_bytes);
        stat_u64(o, "maxconns", cfg->max_conns);
        stat_u64(o, "tcpport", cfg->tcp ? (uint64_t)srv->port : 0);
        stat_u64(o, "udpport", cfg->udp ? (uint64_t)srv->port : 0);
        stat_str(o, "inter", cfg->host);
        stat_u64(o, "verbosity", (uint64_t)log_get_level());
        stat_u64(o, "item_size_max", cfg->value_bytes_max);
        stat_u64(o, "max_get_keys", cfg->get_keys_max);
        stat_u64(o, "max_line", cfg->get_line_bytes_max);
        stat_u64(o, "max_output", cfg->conn_output_bytes_max);
        stat_u64(o, "output_stall_timeout", cfg->output_stall_timeout_s);
        stat_u64(o, "max_conn_writes", cfg->conn_writes_max);
        stat_u64(o, "idle_timeout", cfg->idle_timeout_s);
        stat_str(o, "auth_enabled_ascii", cfg->auth ? (cfg->auth_file ? cfg->auth_file : "yes")
                                                    : "no");
        stat_u64(o, "auth_timeout", cfg->auth_timeout_s);
        stat_u64(o, "max_auth_failures", cfg->auth_failures_max);
        stat_str(o, "evictions", "off");
        stat_u64(o, "num_threads", 1);
        stat_str(o, "data_dir", cfg->data_dir);
        stat_str(o, "fsync", wal_fsync_mode_name(cfg->fsync_mode));
        stat_u64(o, "fsync_interval_ms", cfg->fsync_interval_ms);
        stat_u64(o, "snapshot_bytes", cfg->snapshot_bytes);
        stat_u64(o, "wal_segment_bytes", cfg->wal_segment_bytes);
        stat_u64(o, "wal_prealloc_bytes", cfg->wal_prealloc_bytes);
        stat_u64(o, "replica_id", cfg->id);
        stat_u64(o, "prepare_timeout_ms", cfg->prepare_timeout_ms);
        stat_u64(o, "lock_wait_ms", cfg->lock_wait_ms);
        return reply(o, "END\r\n");
    }
    if (req->narg == 6 && memcmp(req->arg, "digest", 6) == 0) {
        /* The stored state's fingerprint: replicas that hold the same items
         * (dead ones too) and flush_all have the same digest. It means
         * something only while no write is under way (locked_keys 0). */
        store_get_stats(srv->store, &ss);
        snprintf(v, sizeof(v), "%016llx", (unsigned long long)store_digest(srv->store));
        stat_str(o, "digest", v);
        stat_u64(o, "stored_items", ss.curr_items);
        stat_u64(o, "flush_at_ms", (uint64_t)store_flush_at(srv->store));
        stat_u64(o, "locked_keys", store_locks(srv->store) + (srv->rm.flush_holder != NULL));
        return reply(o, "END\r\n");
    }
    if (req->narg > 0) {
        /* "items", "slabs", "sizes", "conns": tools ask for these; we have no
         * slab allocator to describe, so the answer is empty. */
        static const char *const empty[] = {"items", "slabs", "sizes", "conns"};
        for (size_t i = 0; i < ARRAY_SIZE(empty); i++)
            if (req->narg == strlen(empty[i]) && memcmp(req->arg, empty[i], req->narg) == 0)
                return reply(o, "END\r\n");
        return reply(o, "CLIENT_ERROR unknown stats argument\r\n");
    }

    store_get_stats(srv->store, &ss);
    wal_get_stats(srv->wal, &ws);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    stat_u64(o, "pid", (uint64_t)getpid());
    stat_u64(o, "uptime", (util_mono_ns() - srv->started_mono_ns) / 1000000000u);
    stat_u64(o, "time", (uint64_t)(srv->now_ms / 1000));
    stat_str(o, "version", PROTO_VERSION_STRING);
    stat_str(o, "libuv", uv_version_string());
    stat_u64(o, "pointer_size", sizeof(void *) * 8);
    snprintf(v, sizeof(v), "%ld.%06ld", (long)ru.ru_utime.tv_sec, (long)ru.ru_utime.tv_usec);
    stat_str(o, "rusage_user", v);
    snprintf(v, sizeof(v), "%ld.%06ld", (long)ru.ru_stime.tv_sec, (long)ru.ru_stime.tv_usec);
    stat_str(o, "rusage_system", v);
    stat_u64(o, "max_connections", cfg->max_conns);
    stat_u64(o, "curr_connections", srv->nconns);
    stat_u64(o, "total_connections", c->total_connections);
    stat_u64(o, "rejected_connections", c->rejected_connections);
    stat_u64(o, "protocol_closes", c->protocol_closes);
    stat_u64(o, "idle_kicks", c->idle_kicks);
    stat_u64(o, "output_stall_closes", c->output_stall_closes);
    stat_u64(o, "auth_cmds", c->auth_cmds);
    stat_u64(o, "auth_errors", c->auth_errors);
    stat_u64(o, "auth_timeouts", c->auth_timeouts);
    stat_u64(o, "auth_failure_closes", c->auth_failure_closes);
    stat_u64(o, "cmd_get", c->cmd_get);
    stat_u64(o, "cmd_set", c->cmd_set);
    stat_u64(o, "cmd_flush", c->cmd_flush);
    stat_u64(o, "cmd_touch", c->cmd_touch);
    stat_u64(o, "get_hits", c->get_hits);
    stat_u64(o, "get_misses", c->get_misses);
    stat_u64(o, "delete_hits", c->delete_hits);
    stat_u64(o, "delete_misses", c->delete_misses);
    stat_u64(o, "incr_hits", c->incr_hits);
    stat_u64(o, "incr_misses", c->incr_misses);
    stat_u64(o, "decr_hits", c->decr_hits);
    stat_u64(o, "decr_misses", c->decr_misses);
    stat_u64(o, "cas_hits", c->cas_hits);
    stat_u64(o, "cas_misses", c->cas_misses);
    stat_u64(o, "cas_badval", c->cas_badval);
    stat_u64(o, "touch_hits", c->touch_hits);
    stat_u64(o, "touch_misses", c->touch_misses);
    stat_u64(o, "store_too_large", c->store_too_large);
    stat_u64(o, "store_no_memory", c->store_no_memory);
    stat_u64(o, "bytes_read", c->bytes_read);
    stat_u64(o, "bytes_written", __atomic_load_n(&c->bytes_written, __ATOMIC_RELAXED));
    stat_u64(o, "udp_requests", c->udp_requests);
    stat_u64(o, "udp_replies", c->udp_replies);
    stat_u64(o, "udp_dropped", c->udp_dropped);
    stat_u64(o, "limit_maxbytes", cfg->max_memory_bytes);
    stat_u64(o, "threads", srv->cfg.threads ? srv->cfg.threads : 1);
    stat_u64(o, "curr_items", ss.curr_items);
    stat_u64(o, "total_items", ss.total_items);
    stat_u64(o, "bytes", ss.bytes);
    stat_u64(o, "expired_reclaimed", ss.expired_reclaimed);
    stat_u64(o, "store_sweeps", ss.sweeps);
    stat_u64(o, "evictions", 0);
    stat_u64(o, "hash_buckets", ss.hash_buckets);
    stat_u64(o, "hash_bytes", ss.hash_bytes);
    stat_u64(o, "hash_is_expanding", ss.hash_is_expanding);
    /* durability */
    stat_str(o, "fsync", wal_fsync_mode_name(cfg->fsync_mode));
    stat_u64(o, "recovery_ms", srv->rec.elapsed_ms);
    stat_u64(o, "recovery_snapshot_lsn", srv->rec.snap_lsn);
    stat_u64(o, "recovery_snapshot_items", srv->rec.snap_items);
    stat_u64(o, "recovery_records", srv->rec.records);
    stat_u64(o, "recovery_truncated_bytes", srv->rec.truncated_bytes);
    stat_u64(o, "wal_bytes", ws.bytes);
    stat_u64(o, "wal_segments", ws.segments);
    stat_u64(o, "wal_records", ws.records);
    stat_u64(o, "wal_next_lsn", ws.next_lsn);
    stat_u64(o, "wal_durable_lsn", ws.durable_lsn);
    stat_u64(o, "wal_batches", ws.batches);
    stat_u64(o, "wal_fsyncs", ws.fsyncs);
    stat_u64(o, "wal_fsync_us_avg", ws.fsyncs ? ws.fsync_us_total / ws.fsyncs : 0);
    stat_u64(o, "wal_fsync_us_max", ws.fsync_us_max);
    stat_u64(o, "wal_fsync_us_last", ws.fsync_us_last);
    stat_str(o, "wal_error", ws.error ? strerror(-ws.error) : "none");
    stat_u64(o, "writes_logged", c->writes_logged);
    stat_u64(o, "writes_waited", c->writes_waited);
    stat_u64(o, "writes_failed", c->writes_failed);
    stat_u64(o, "writes_pending", srv->npending);
    stat_u64(o, "snapshots", srv->snapshots);
    stat_u64(o, "snapshot_failures", srv->snapshot_failures);
    stat_u64(o, "snapshot_in_progress", srv->snap_pid != 0);
    stat_u64(o, "snapshot_last_lsn", srv->snap_last_lsn);
    stat_u64(o, "snapshot_last_bytes", srv->snap_last_bytes);
    stat_u64(o, "snapshot_last_ms", srv->snap_last_ms);
    stats_cluster(srv, o);
    return reply(o, "END\r\n");
}

static int start_snapshot(struct server *srv);
static int exec_write_cluster(struct server *srv, struct conn *c, const struct proto_req *req);
static bool read_must_wait(struct server *srv, struct conn *c, const struct proto_req *req);
static void wait_for(struct conn *c, struct waitlist *wl);
static int reply_clock_skew(struct server *srv, struct outq *o, bool write);

/*
 * Executes one request, queueing its reply on c->out. Returns what the
 * connection must do next (enum after), or -ENOMEM.
 */
static int execute(struct server *srv, struct conn *c, const struct proto_req *req)
{
    struct outq *o = &c->out;
    int r = 0;

    if (proto_cmd_is_write(req->cmd) || req->too_large ||
        req->cmd == PROTO_CMD_GAT || req->cmd == PROTO_CMD_GATS)
        return srv->cluster ? exec_write_cluster(srv, c, req) : exec_write(srv, c, req);

    switch (req->cmd) {
    case PROTO_CMD_GET:
    case PROTO_CMD_GETS:
        if (srv->cluster && fence_must_wait(srv, c))
            return AFTER_WAIT;
        if (srv->cluster && (r = reply_not_current(srv, o, false)) <= 0)
            return r;
        if (srv->cluster && (r = reply_clock_skew(srv, o, false)) <= 0)
            return r;
        if (srv->cluster && read_must_wait(srv, c, req))
            return AFTER_WAIT;
        c->wait_since_ms = 0;
        return exec_retrieval(srv, c, req);
    case PROTO_CMD_VERSION:
        return reply(o, "VERSION " PROTO_VERSION_STRING "\r\n");
    case PROTO_CMD_VERBOSITY: {
        /* memcached's 0 is its normal level: ours is the one serve started
         * with. 1 raises it to at least info, 2 and up to debug. */
        enum log_level lvl = req->verbosity == 0 ? srv->log_base
                             : req->verbosity == 1
                                 ? (srv->log_base > LOG_LEVEL_INFO ? srv->log_base : LOG_LEVEL_INFO)
                                 : LOG_LEVEL_DEBUG;
        if (lvl != log_get_level()) {
            log_warn(MOD, "verbosity %u from a client: log level now %s", req->verbosity,
                     log_level_name(lvl));
            log_set_level(lvl);
        }
        return req->noreply ? 0 : reply(o, "OK\r\n");
    }
    case PROTO_CMD_STATS:
        return exec_stats(srv, o, req);
    case PROTO_CMD_QUIT:
        return AFTER_CLOSE;
    case PROTO_CMD_SNAPSHOT:
        /* Answered when a snapshot that includes every write committed so
         * far is durable. */
        if (srv->snap_pid == 0) {
            if ((r = start_snapshot(srv)) < 0) {
                char line[128];
                snprintf(line, sizeof(line), "SERVER_ERROR cannot snapshot: %s\r\n",
                         strerror(-r));
                return reply(o, line);
            }
            waitlist_push(&srv->snap_cur, c);
        } else {
            waitlist_push(&srv->snap_next, c);
        }
        return AFTER_PENDING;
    case PROTO_CMD_KEYS: {
        struct item **items;
        if (srv->cluster && fence_must_wait(srv, c))
            return AFTER_WAIT;
        if (srv->cluster && (r = reply_not_current(srv, o, false)) <= 0)
            return r;
        if (srv->cluster && (r = reply_clock_skew(srv, o, false)) <= 0)
            return r;
        if (srv->cluster) {
            /* As a get waits for a held key: a prepared transaction on a
             * key of the list may be one another replica acknowledged. */
            struct txn_prep *p = txn_holder_prefix(&srv->rm, req->arg, req->narg);
            if (p) {
                srv->st.reads_waited++;
                wait_for(c, &((struct ptx *)p->user)->waiters);
                return AFTER_WAIT;
            }
            c->wait_since_ms = 0;
        }
        long n = store_collect(srv->store, req->arg, req->narg, srv->now_ms, &items);
        if (n < 0)
            return reply(o, "SERVER_ERROR out of memory listing keys\r\n");
        if (n == 0) {
            free(items);
            return reply(o, "END\r\n"); /* nothing to stream */
        }
        c->keys = items;
        c->nkeys = (size_t)n;
        c->keys_pos = 0;
        return AFTER_KEYS;
    }
    default:
        return reply_line(o, "ERROR");
    }
}

/* ---- replication: writes under two-phase commit ------------------------------
 *
 * A client write on a replica in a cluster: wait while a prepared
 * transaction holds one of its keys (bounded by --lock-wait-ms); evaluate it
 * on the local store with the transaction's id as the new CAS; a failed
 * condition is answered at once (the local store is current for every key no
 * transaction holds). Otherwise encode the change as operations (txn.h) and
 * begin a transaction (tpc.h). The request stays at the front of the
 * connection's buffer until the outcome: a lock conflict somewhere aborts
 * the transaction, and the request is evaluated again after a jittered
 * backoff, up to LIMIT_WRITE_RETRIES times, then SERVER_ERROR busy.
 *
 * Reads of a key held by a prepared transaction wait for its outcome, so a
 * write acknowledged by any replica is seen by a read on any other.
 *
 * tpc calls back into the server while it updates its own state, so
 * outcomes and wake-ups are queued and delivered once the tpc call returns
 * (after_tpc): nothing re-enters the state machine. */

static uint64_t now_us(void)
{
    return mono_ns() / 1000u;
}

static uint64_t mono_ms(void)
{
    return mono_ns() / 1000000u;
}

static uint64_t rng_next(struct server *srv)
{
    /* splitmix64: jitter only, no need for anything stronger */
    uint64_t z = (srv->rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static const char *replica_addr(const struct server *srv, uint32_t id, char *buf, size_t cap)
{
    for (size_t i = 0; i < srv->cfg.nreplicas; i++) {
        const struct peer_addr *a = &srv->cfg.replicas[i];
        if (a->id == id) {
            /* The peer address, and the port clients use (from its STATE):
             * the one to try with clie -p. */
            if (id < LIMIT_REPLICAS_MAX && srv->peer_cport[id])
                snprintf(buf, cap, "%s:%d, client port %u", a->host, a->port,
                         srv->peer_cport[id]);
            else
                snprintf(buf, cap, "%s:%d", a->host, a->port);
            return buf;
        }
    }
    snprintf(buf, cap, "?");
    return buf;
}

/* Did id's last link attempt fail its authentication (another secret)? */
static bool peer_auth_refused(const struct server *srv, uint32_t id)
{
    struct peer_link_stats ls;

    if (srv->peers == NULL)
        return false;
    peer_get_link_stats(srv->peers, id, &ls);
    return ls.state != PEER_LINK_UP && ls.auth_refused;
}

/* The reply to a write that did not commit. */
static int reply_txn_failed(struct server *srv, struct outq *o, enum tpc_reason why,
                            uint32_t culprit, unsigned attempts)
{
    char line[512], addr[300];

    switch (why) {
    case TPC_R_BUSY:
        srv->st.txn_busy++;
        snprintf(line, sizeof(line),
                 "SERVER_ERROR busy: the key is being written through another replica "
                 "(gave up after %u retries)\r\n",
                 attempts);
        break;
    case TPC_R_CONFLICT:
        /* Every retry read the key again here and replica culprit still
         * stored another version: not a race but replicas that differ. */
        srv->st.txn_conflicts++;
        log_error(MOD, "a write failed %u times because replica %u stores another version "
                       "of the key than this one: the replicas have diverged (stats digest "
                       "shows which)",
                  attempts + 1, culprit);
        snprintf(line, sizeof(line),
                 "SERVER_ERROR the replicas disagree about this key's version (replica %u; "
                 "gave up after %u retries)\r\n",
                 culprit, attempts);
        break;
    case TPC_R_NO_MEMORY:
        srv->st.store_no_memory++;
        if (culprit == srv->cfg.id)
            snprintf(line, sizeof(line), "SERVER_ERROR out of memory storing object\r\n");
        else
            snprintf(line, sizeof(line), "SERVER_ERROR out of memory storing object on "
                                         "replica %u\r\n", culprit);
        break;
    case TPC_R_TOO_LARGE:
        snprintf(line, sizeof(line), "SERVER_ERROR object too large for cache\r\n");
        break;
    case TPC_R_LOG_FAILED:
        snprintf(line, sizeof(line),
                 "SERVER_ERROR write-ahead log failed on replica %u: the write was not "
                 "committed\r\n",
                 culprit);
        break;
    case TPC_R_CLOCK:
        snprintf(line, sizeof(line),
                 "SERVER_ERROR replica %u refused the write: this replica's clock is too far "
                 "from its own (more than --max-clock-skew-ms %u)\r\n",
                 culprit, srv->cfg.max_clock_skew_ms);
        break;
    case TPC_R_UNKNOWN:
        snprintf(line, sizeof(line),
                 "SERVER_ERROR write-ahead log failed on this replica while it recorded the "
                 "commit: the write may or may not be applied (known once this replica "
                 "restarts; do not assume either)\r\n");
        break;
    case TPC_R_TIMEOUT:
        snprintf(line, sizeof(line),
                 "SERVER_ERROR replica %u (%s) did not answer within %u ms: the write was "
                 "not applied\r\n",
                 culprit, replica_addr(srv, culprit, addr, sizeof(addr)),
                 srv->cfg.prepare_timeout_ms);
        break;
    case TPC_R_PEER_DOWN:
        if (culprit < LIMIT_REPLICAS_MAX && srv->fence.state[culprit] == FENCE_BEHIND)
            snprintf(line, sizeof(line),
                     "SERVER_ERROR replica %u (%s) is behind: its data is older than this "
                     "replica saw it (emptied, replaced or restored from an older copy); "
                     "writes need every replica; reads still work\r\n",
                     culprit, replica_addr(srv, culprit, addr, sizeof(addr)));
        else if (srv->fence.behind)
            snprintf(line, sizeof(line),
                     "SERVER_ERROR this replica's data is older than its peers saw it: it "
                     "serves nothing until rebuilt (see its log)\r\n");
        else if (peer_auth_refused(srv, culprit))
            snprintf(line, sizeof(line),
                     "SERVER_ERROR replica %u (%s) is not authenticated (do the replicas' "
                     "--secret-file contents differ?): writes need every replica; reads "
                     "still work\r\n",
                     culprit, replica_addr(srv, culprit, addr, sizeof(addr)));
        else
            snprintf(line, sizeof(line),
                     "SERVER_ERROR replica %u (%s) is unreachable: writes need every replica; "
                     "reads still work\r\n",
                     culprit, replica_addr(srv, culprit, addr, sizeof(addr)));
        break;
    case TPC_R_STOPPING:
        snprintf(line, sizeof(line), "SERVER_ERROR shutting down: the write was not "
                                     "acknowledged\r\n");
        break;
    default:
        snprintf(line, sizeof(line), "SERVER_ERROR write aborted by replica %u: %s\r\n", culprit,
                 tpc_reason_name(why));
        break;
    }
    return reply(o, line);
}

/* The request in front of c lost a lock conflict: run it again later. */
static void schedule_retry(struct server *srv, struct conn *c)
{
    unsigned step = c->attempts < 6 ? c->attempts : 6;
    uint64_t max = (uint64_t)LIMIT_RETRY_BACKOFF_MS_MIN << step;

    if (max > LIMIT_RETRY_BACKOFF_MS_MAX)
        max = LIMIT_RETRY_BACKOFF_MS_MAX;
    c->attempts++;
    srv->st.txn_retries++;
    c->retry_at_ms = mono_ms() + LIMIT_RETRY_BACKOFF_MS_MIN + rng_next(srv) % max;
    waitlist_push(&srv->retry, c);
}

static void expire_done(struct creq *q);

static void deliver_outcome(struct creq *q)
{
    struct server *srv = q->srv;
    struct conn *c = q->c;
    int r = 0;

    if (q->expire) {
        expire_done(q);
        return;
    }
    if (c == NULL)
        goto out;
    c->cpending = NULL;
    if (c->handle_closed || c->closing) {
        if (c->handle_closed)
            conn_free(c);
        goto out;
    }
    if (!q->committed && (q->reason == TPC_R_BUSY || q->reason == TPC_R_CONFLICT) && q->kept &&
        c->attempts < LIMIT_WRITE_RETRIES) {
        schedule_retry(srv, c);
        goto out;
    }
    if (q->committed) {
        srv->st.writes_logged++;
        if (q->cmd == PROTO_CMD_GAT || q->cmd == PROTO_CMD_GATS) {
            r = consume_front(srv, c, true);
            q->kept = false;
        } else if (!q->noreply) {
            r = reply_write_done(&c->out, q->cmd, q->too_large, q->number);
        }
    } else {
        srv->st.writes_failed++;
        if (!q->noreply)
            r = reply_txn_failed(srv, &c->out, (enum tpc_reason)q->reason, q->culprit,
                                 c->attempts);
    }
    if (q->kept)
        consume_front(srv, c, false);
    c->attempts = 0;
    if (r < 0)
        c->close_after_flush = true;
    conn_process(c);
out:
    free(q);
}

/* Delivers what tpc produced during the call that just returned. */
static void after_tpc(struct server *srv)
{
    while (srv->done_head || srv->wake.head) {
        struct creq *q = srv->done_head;
        srv->done_head = srv->done_tail = NULL;
        while (q) {
            struct creq *next = q->next;
            if (q->c == NULL || conn_local(q->c)) {
                deliver_outcome(q);
            } else {
                q->c->post_q = q;
                conn_post(q->c, 0);
            }
            q = next;
        }
        waitlist_wake(&srv->wake);
    }
}

/* Moves everyone waiting on from to the wake list. */
static void wake_later(struct server *srv, struct waitlist *from)
{
    waitlist_move(&srv->wake, from);
}

/* ---- the state machine's environment ---- */

static void env_send(void *ctx, const struct tpc_msg *m)
{
    struct server *srv = ctx;

    if (srv->peers && !srv->stopping) {
        tl_kick_main = true; /* the main loop writes the frame */
        /* A link that is down drops it (tpc resends or times out); one too
         * big cannot be (exec_write_cluster refuses such writes first). */
        if (peer_send(srv->peers, m) == -EMSGSIZE)
            log_error(MOD, "a %s of txid %llu to replica %u is over the peer frame limit: "
                           "dropped",
                      tpc_msg_type_name(m->type), (unsigned long long)m->txid, m->to);
    }
}

static void on_tpc_durable(void *arg, uint64_t lsn, int status)
{
    struct server *srv = arg;

    if (srv->tpc == NULL)
        return;
    refresh_now(srv);
    if (status == 0)
        tpc_durable(srv->tpc, lsn, now_us());
    else
        tpc_log_failed(srv->tpc, now_us(), wal_rolled_back(srv->wal));
    after_tpc(srv);
    snapshot_maybe(srv);
}

/* Encodes a 2PC log record's payload (txn head, then PREPARE's ops). */
static int encode_txn_record(struct buf *b, const struct tpc_txn *t)
{
    struct wal_txn head = {.txid = t->txid, .epoch = t->epoch, .coordinator = t->coord,
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

/* ---- the run state (RUN) ------------------------------------------------------ */

/* Records in RUN how this run stands (datadir.h), with at least ceiling
 * as the txid ceiling: never one below what RUN already holds (two writers
 * race: the job and ceiling_cover). *written: the ceiling RUN now holds.
 * Any thread; after the clean stop is written nothing else is. */
static int write_run_ceiling(struct server *srv, bool clean, uint64_t ceiling,
                             uint64_t *written)
{
    struct datadir_run run = {.clean = clean,
                              .lost_before = srv->lost_before,
                              .has_id = srv->cluster,
                              .id = srv->cfg.id};
    int r = 0;

    snprintf(run.fsync, sizeof(run.fsync), "%s", wal_fsync_mode_name(srv->cfg.fsync_mode));
    pthread_mutex_lock(&srv->run_mu);
    memcpy(run.seen, srv->run_seen, sizeof(run.seen));
    run.txid_ceiling = ceiling > srv->run_ceiling ? ceiling : srv->run_ceiling;
    /* The fence's mark moves only in a run a peer confirmed current: a
     * refused run's fresh ceiling must not launder its data (audit). */
    run.fence_mark = srv->run_fence_mark;
    if (srv->run_verified && !srv->run_behind && run.txid_ceiling > run.fence_mark)
        run.fence_mark = run.txid_ceiling;
    run.behind = srv->run_behind;
    run.behind_by = srv->run_behind_by;
    run.behind_seen = srv->run_behind_seen;
    if (!srv->run_final) {
        r = datadir_run_write(srv->cfg.data_dir, &run);
        if (r == 0) {
            srv->run_ceiling = run.txid_ceiling;
            srv->run_fence_mark = run.fence_mark;
        }
        srv->run_final = clean && r == 0;
    }
    *written = srv->run_ceiling;
    pthread_mutex_unlock(&srv->run_mu);
    return r;
}

static int write_run(struct server *srv, bool clean)
{
    uint64_t written;

    return write_run_ceiling(srv, clean, srv->txid_ceiling, &written);
}

/* The txid ceiling for a clock reading (µs): that far ahead. */
static uint64_t ceiling_at(uint64_t seq_us)
{
    return (seq_us + (uint64_t)LIMIT_TXID_CEILING_AHEAD_MS * 1000u) << 8;
}

static void ceiling_job_run(uv_work_t *w)
{
    struct server *srv = w->data;

    srv->ceiling_err = write_run_ceiling(srv, false, srv->ceiling_next, &srv->ceiling_written);
}

static void ceiling_job_done(uv_work_t *w, int status)
{
    struct server *srv = w->data;
    size_t dropped;
    char note[96];

    if (status == 0 && srv->ceiling_written > srv->txid_ceiling)
        srv->txid_ceiling = srv->ceiling_written;
    if (status == 0 && srv->ceiling_err < 0) {
        srv->ceiling_retry_ms = mono_ms() + 1000; /* not at every tick */
        if (ratelog_allow(&srv->rl_ceiling, &dropped))
            log_warn(MOD, "cannot raise the txid ceiling in %s/RUN: %s (retried every second; "
                          "writes are refused once the clock reaches it)%s",
                     srv->cfg.data_dir, strerror(-srv->ceiling_err),
                     ratelog_note(note, sizeof(note), dropped));
    }
    srv->ceiling_next = 0;
}

/* Keeps the ceiling ahead of the clock (on_tick), off the loop: once the
 * clock is within half the lead of it, a job writes a new one. */
static void ceiling_refresh(struct server *srv)
{
    uint64_t now = util_now_unix_us();

    if (!srv->run_written || srv->ceiling_next || srv->stopping ||
        mono_ms() < srv->ceiling_retry_ms)
        return;
    /* The fence's seen[] goes with it, at most once a second when it moved. */
    bool seen_moved = (mono_ms() >= srv->seen_persist_ms &&
                       memcmp(srv->fence.seen, srv->run_seen, sizeof(srv->run_seen)) != 0) ||
                      srv->fence_mark_due;
    srv->fence_mark_due = false;
    if (!seen_moved &&
        ceiling_at(now - (uint64_t)LIMIT_TXID_CEILING_AHEAD_MS * 500u) < srv->txid_ceiling)
        return;
    pthread_mutex_lock(&srv->run_mu);
    memcpy(srv->run_seen, srv->fence.seen, sizeof(srv->run_seen));
    pthread_mutex_unlock(&srv->run_mu);
    srv->seen_persist_ms = mono_ms() + 1000;
    srv->ceiling_next = ceiling_at(now);
    srv->ceiling_job.data = srv;
    if (uv_queue_work(srv->loop, &srv->ceiling_job, ceiling_job_run, ceiling_job_done) < 0)
        srv->ceiling_next = 0;
}

/* Before txid is prepared here (and so logged): below the durable ceiling,
 * or the ceiling is raised past it now, on the loop (a txid that outran
 * the clock). */
static int ceiling_cover(struct server *srv, uint64_t txid)
{
    uint64_t written;
    size_t dropped;
    char note[96];

    if (txid < srv->txid_ceiling)
        return 0;
    uint64_t seq = util_now_unix_us();
    if ((txid >> 8) + 1 > seq)
        seq = (txid >> 8) + 1;
    int r = write_run_ceiling(srv, false, ceiling_at(seq), &written);
    if (written > srv->txid_ceiling)
        srv->txid_ceiling = written;
    if (r < 0 || txid >= srv->txid_ceiling) {
        if (ratelog_allow(&srv->rl_ceiling, &dropped))
            log_error(MOD, "cannot raise the txid ceiling in %s/RUN: %s: transaction %" PRIu64
                           " gets a NO vote%s",
                      srv->cfg.data_dir, strerror(r < 0 ? -r : EIO), txid,
                      ratelog_note(note, sizeof(note), dropped));
        return -EIO;
    }
    return 0;
}

static int64_t env_log(void *ctx, enum tpc_log_type type, const struct tpc_txn *t)
{
    struct server *srv = ctx;
    int r;

    if (srv->wal == NULL || srv->stopping)
        return -ESHUTDOWN;
    if ((r = ceiling_cover(srv, t->txid)) < 0)
        return r;
    fence_logged(&srv->fence, t->txid);
    if ((r = encode_txn_record(&srv->scratch, t)) < 0)
        return r;
    tl_wal_staged = true;
    int64_t lsn = wal_append(srv->wal, (uint8_t)type, srv->scratch.data, srv->scratch.len,
                             on_tpc_durable, srv);
    if (lsn > 0)
        srv->appended_bytes += WAL_RECORD_HEADER_BYTES + srv->scratch.len;
    return lsn;
}

static int env_prepare(void *ctx, const struct tpc_txn *t, void **handle)
{
    struct server *srv = ctx;
    struct txn_prep *p;
    int r;

    /* RUN must bound every txid the log holds before this one's PREPARE
     * is logged; if it cannot, a NO vote (the log itself is fine). */
    if (!t->recovered && ceiling_cover(srv, t->txid) < 0)
        return TPC_R_LOG_FAILED;
    srv->rm.now_ms = srv->now_ms;
    r = txn_prepare(&srv->rm, t, &p);

    if (r != 0)
        return r;
    *handle = p; /* p->user: a zeroed struct ptx (rm.user_bytes) */
    return 0;
}

static void env_release(struct server *srv, struct txn_prep *p, bool commit)
{
    struct ptx *x = p->user; /* freed with p */

    wake_later(srv, &x->waiters);
    if (commit)
        txn_commit(&srv->rm, p);
    else
        txn_abort(&srv->rm, p);
    wake_later(srv, &srv->txn_any);
}

static void env_commit(void *ctx, const struct tpc_txn *t, void *handle)
{
    (void)t;
    env_release(ctx, handle, true);
}

static void env_abort(void *ctx, const struct tpc_txn *t, void *handle)
{
    (void)t;
    env_release(ctx, handle, false);
}

static void env_done(void *ctx, void *client, uint64_t txid, bool committed,
                     enum tpc_reason reason, uint32_t culprit)
{
    struct server *srv = ctx;
    struct creq *q = client;

    (void)txid;
    q->committed = committed;
    q->reason = (uint8_t)reason;
    q->culprit = culprit;
    q->next = NULL;
    if (srv->done_tail)
        srv->done_tail->next = q;
    else
        srv->done_head = q;
    srv->done_tail = q;
}

static void on_peer_msg(void *arg, const struct tpc_msg *m)
{
    struct server *srv = arg;

    if (srv->tpc == NULL)
        return;
    /* A peer whose data is behind (or who is, here) does not count: its
     * votes, answers and decisions are dropped (fence.h). */
    if (!fence_peer_ok(&srv->fence, m->from) || srv->fence.behind) {
        srv->st.fence_dropped++;
        return;
    }
    if ((m->type == TPC_MSG_VOTE && m->vote) || m->type == TPC_MSG_ACK)
        fence_voted(&srv->fence, m->from, m->txid);
    if (m->type == TPC_MSG_COMMIT) {
        /* A coordinator commits only once every replica voted YES: every
         * one of them logged it (so each replica knows what all did). */
        fence_committed(&srv->fence, srv->cfg.id, m->txid);
    }
    refresh_now(srv);
    tpc_receive(srv->tpc, m, now_us());
    after_tpc(srv);
}

static bool link_up(void *arg, uint32_t id)
{
    struct server *srv = arg;

    return srv->peers && peer_link_up(srv->peers, id);
}

/* May writes go on as far as the clocks go? false with the reason in *v. */
static bool clocks_allow_writes(struct server *srv, struct skew_verdict *v)
{
    return skew_write_check(&srv->skew, srv->ids, mono_ms(), link_up, srv, v);
}

/* Formats why the clocks stop writes. */
static void fmt_clock_verdict(struct server *srv, const struct skew_verdict *v, char *dst,
                              size_t cap)
{
    if (v->unmeasured)
        snprintf(dst, cap, "replica %u's clock has not been measured yet (it was just "
                           "connected, or this replica's clock stepped)",
                 v->a);
    else if (v->b == srv->cfg.id)
        snprintf(dst, cap, "replica %u's clock is %lld ms off this replica's, more than "
                           "--max-clock-skew-ms %u",
                 v->a, (long long)(v->apart_us / 1000), srv->cfg.max_clock_skew_ms);
    else
        snprintf(dst, cap, "the clocks of replicas %u and %u are %lld ms apart, more than "
                           "--max-clock-skew-ms %u",
                 v->a, v->b, (long long)(v->apart_us / 1000), srv->cfg.max_clock_skew_ms);
}

/* Says when the clocks go out of bound and when they are back (a clock not
 * measured yet is not worth a line: it is the first moments of a link). */
static void skew_changed(struct server *srv)
{
    struct skew_verdict v;
    bool far = !clocks_allow_writes(srv, &v) && !v.unmeasured;
    bool reads = skew_read_refused(&srv->skew, srv->ids, mono_ms());
    char why[256];

    if (far != srv->skew_writes_refused) {
        if (far) {
            fmt_clock_verdict(srv, &v, why, sizeof(why));
            log_error(MOD, "%s: writes are refused until the clocks agree (check NTP)", why);
        } else {
            log_warn(MOD, "the replicas' clocks agree within --max-clock-skew-ms %u again: "
                          "writes resume",
                     srv->cfg.max_clock_skew_ms);
        }
        srv->skew_writes_refused = far;
    }
    if (reads != srv->skew_reads_refused) {
        if (reads)
            log_error(MOD, "this replica's clock is off from most other replicas' by more than "
                           "--max-clock-skew-ms %u: reads are refused until it agrees (check "
                           "NTP on this host)",
                      srv->cfg.max_clock_skew_ms);
        else
            log_warn(MOD, "this replica's clock agrees with the others' again: reads resume");
        srv->skew_reads_refused = reads;
    }
}

static void on_peer_clock(void *arg, uint32_t id, int64_t offset_us, uint64_t rtt_us)
{
    struct server *srv = arg;

    skew_note(&srv->skew, id, offset_us, rtt_us, mono_ms());
    skew_changed(srv);
    waitlist_wake(&srv->clock_wait); /* each tries again */
}

/* Probes every peer's clock now (and then every LIMIT_CLOCK_PROBE_MS). */
static void clock_probe(struct server *srv)
{
    srv->clock_probe_at_ms = mono_ms() + LIMIT_CLOCK_PROBE_MS;
    if (srv->peers)
        peer_clock_ping(srv->peers);
}

/* Samples taken before this host's own clock stepped measured the old
 * clock: they go, and writes wait for new ones. Called from the timer. */
static void clock_step_check(struct server *srv)
{
    int64_t gap = util_now_unix_ms() - (int64_t)(util_mono_ns() / 1000000u);

    if (srv->clock_gap_known && (gap - srv->clock_gap_ms > LIMIT_CLOCK_STEP_MS ||
                                 srv->clock_gap_ms - gap > LIMIT_CLOCK_STEP_MS)) {
        log_warn(MOD, "this host's clock stepped by %lld ms: measuring the replicas' clocks "
                      "again before any write",
                 (long long)(gap - srv->clock_gap_ms));
        skew_forget(&srv->skew);
        clock_probe(srv);
        skew_changed(srv);
    }
    srv->clock_gap_ms = gap;
    srv->clock_gap_known = true;
}

/* Answers a request refused because the clocks are too far apart (a write:
 * see skew_write_check; a read: ours, from most others') and returns what
 * reply() returned (0, or -ENOMEM); returns 1, answering nothing, when they
 * agree. */
static int reply_clock_skew(struct server *srv, struct outq *o, bool write)
{
    struct skew_verdict v;
    char line[400], why[256];

    if (write && !clocks_allow_writes(srv, &v)) {
        fmt_clock_verdict(srv, &v, why, sizeof(why));
        snprintf(line, sizeof(line), "SERVER_ERROR %s: writes are refused until %s\r\n", why,
                 v.unmeasured ? "it is" : "the clocks agree");
    } else if (!write && skew_read_refused(&srv->skew, srv->ids, mono_ms())) {
        snprintf(line, sizeof(line),
                 "SERVER_ERROR this replica's clock is off from the other replicas' by more "
                 "than --max-clock-skew-ms %u: ask another replica\r\n",
                 srv->cfg.max_clock_skew_ms);
    } else {
        return 1; /* in bound */
    }
    srv->st.clock_skew_refused++;
    return reply(o, line);
}

static void on_peer_link(void *arg, uint32_t id, bool up)
{
    struct server *srv = arg;

    if (srv->tpc == NULL)
        return;
    refresh_now(srv);
    if (!up)
        fence_link_down(&srv->fence, id);
    /* Up for two-phase commit once its data is known to be current. */
    tpc_peer(srv->tpc, id, up && fence_peer_ok(&srv->fence, id) && !srv->fence.behind,
             now_us());
    after_tpc(srv);
    /* A link that went down no longer needs measuring: writes fail on it. */
    if (!up)
        waitlist_wake(&srv->clock_wait);
}

/* ---- the fence: is each replica's data current (fence.h)? ------------------- */

static void state_out(void *arg, uint32_t id, uint64_t *mark, uint64_t *seen_of_you,
                      uint32_t *cport)
{
    struct server *srv = arg;

    *mark = srv->fence.mark;
    *seen_of_you = id < LIMIT_REPLICAS_MAX ? srv->fence.seen[id] : 0;
    *cport = srv->port > 0 ? (uint32_t)srv->port : 0;
}

/* "replica 3 (client port 11213)", or without the port if unknown. */
static const char *replica_name(struct server *srv, uint32_t id, char *dst, size_t cap)
{
    if (id < LIMIT_REPLICAS_MAX && srv->peer_cport[id])
        snprintf(dst, cap, "replica %u (client port %u)", id, srv->peer_cport[id]);
    else
        snprintf(dst, cap, "replica %u", id);
    return dst;
}

static void on_state(void *arg, uint32_t id, uint64_t mark, uint64_t seen_of_us, uint32_t cport)
{
    struct server *srv = arg;
    char name[64];

    if (srv->tpc == NULL || id >= LIMIT_REPLICAS_MAX)
        return;
    srv->peer_cport[id] = cport;
    unsigned ch = fence_state_in(&srv->fence, id, mark, seen_of_us);
    replica_name(srv, id, name, sizeof(name));
    refresh_now(srv);
    if (ch & FENCE_SELF_BEHIND) {
        /* Kept in RUN at once: a restart must not forget it. */
        pthread_mutex_lock(&srv->run_mu);
        srv->run_behind = true;
        srv->run_behind_by = id;
        srv->run_behind_seen = seen_of_us;
        pthread_mutex_unlock(&srv->run_mu);
        int we = write_run(srv, false);
        if (we < 0)
            log_error(MOD, "cannot record in %s/RUN that this replica is behind: %s",
                      srv->cfg.data_dir, strerror(-we));
        log_error(MOD, "this replica's data is older than %s saw it: that replica saw it vote "
                       "on transaction %" PRIu64 ", but its data in %s ends at %" PRIu64 ". Its "
                       "data directory was emptied, replaced (a wrong -d?) or restored from "
                       "an older copy. It answers no client and takes no part in writes: "
                       "bringing it up to date from its peers is not in this release; see "
                       "DESIGN.md, A replica that is behind",
                  name, seen_of_us, srv->cfg.data_dir, srv->fence.mark);
        for (size_t i = 0; i < srv->cfg.nreplicas; i++)
            if (srv->ids[i] != srv->cfg.id)
                tpc_peer(srv->tpc, srv->ids[i], false, now_us());
        waitlist_wake(&srv->clock_wait);
    }
    if (ch & FENCE_PEER_BEHIND) {
        log_error(MOD, "the data of %s is older than this replica saw it: it voted on "
                       "transaction %" PRIu64 ", its data ends at %" PRIu64 " (its data directory was "
                       "emptied, replaced or restored from an older copy). Its votes and "
                       "answers are refused: writes fail until it is rebuilt",
                  name, srv->fence.seen[id], mark);
        tpc_peer(srv->tpc, id, false, now_us());
    }
    if ((ch & FENCE_PEER_CURRENT) && !srv->fence.behind && srv->peers &&
        peer_link_up(srv->peers, id))
        tpc_peer(srv->tpc, id, true, now_us());
    if (ch & FENCE_SELF_VERIFIED) {
        log_info(MOD, "%s finds this replica's data current: serving clients", name);
        pthread_mutex_lock(&srv->run_mu);
        srv->run_verified = true;
        pthread_mutex_unlock(&srv->run_mu);
        /* The mark moves now, before any PREPARE this link brings is
         * handled (rare: once a run; an audit found the gap otherwise). */
        int we = write_run(srv, false);
        if (we < 0) {
            srv->fence_mark_due = true; /* the next RUN write tries again */
            log_warn(MOD, "cannot record in %s/RUN that this replica's data is current: %s",
                     srv->cfg.data_dir, strerror(-we));
        }
        waitlist_wake(&srv->clock_wait);
    }
    after_tpc(srv);
}

/* Answers a client request this replica must not serve because its data
 * is not known to be current, and returns what reply() returned; 1 when it
 * may serve. */
static int reply_not_current(struct server *srv, struct outq *o, bool noreply)
{
    char line[400], name[64];

    if (srv->fence.verified && !srv->fence.behind)
        return 1;
    srv->st.not_current_refused++;
    if (noreply)
        return 0;
    if (srv->fence.behind)
        snprintf(line, sizeof(line),
                 "SERVER_ERROR this replica's data is older than its peers saw it (%s): its "
                 "data directory was emptied, replaced or restored from an older copy; it "
                 "serves nothing until rebuilt (see its log)\r\n",
                 replica_name(srv, srv->fence.behind_by, name, sizeof(name)));
    else
        snprintf(line, sizeof(line),
                 "SERVER_ERROR this replica has not yet heard from a peer that its data is "
                 "current: it serves once one is reachable\r\n");
    return reply(o, line);
}

static void on_tick(uv_timer_t *h)
{
    struct server *srv = h->data;
    uint64_t now = mono_ms();

    if (srv->tpc == NULL)
        return;
    refresh_now(srv);
    tpc_tick(srv->tpc, now_us());
    ceiling_refresh(srv);
    /* Writes whose backoff is over run again. */
    if (srv->retry.head) {
        struct waitlist all = {0}, due = {0};
        struct conn *c;
        waitlist_move(&all, &srv->retry);
        while ((c = waitlist_pop(&all)) != NULL)
            waitlist_push(now >= c->retry_at_ms ? &due : &srv->retry, c);
        waitlist_wake(&due);
    }
    after_tpc(srv);
}

/* c's request waited too long for a transaction's outcome: answer it with
 * an error and go on (c's thread). */
static void lock_wait_expired(struct conn *c)
{
    struct server *srv = c->srv;
    struct proto_req req;
    size_t consumed;
    char line[200];

    if (c->closing)
        return;
    proto_parse(c->rbuf, c->rlen, &srv->lim, &req, &consumed);
    if (c->waits_fence)
        snprintf(line, sizeof(line),
                 "SERVER_ERROR timed out after %u ms waiting for a peer to confirm this "
                 "replica's data is current (is any peer up?)\r\n",
                 srv->cfg.lock_wait_ms);
    else if (c->waits_clock)
        snprintf(line, sizeof(line),
                 "SERVER_ERROR timed out after %u ms waiting for the replicas' clocks to be "
                 "measured (do their clock probes get through?)\r\n",
                 srv->cfg.lock_wait_ms);
    else
        snprintf(line, sizeof(line),
                 "SERVER_ERROR timed out after %u ms waiting for an undecided transaction "
                 "on this key (is a replica down?)\r\n",
                 srv->cfg.lock_wait_ms);
    c->waits_clock = c->waits_fence = false;
    if (!req.noreply && reply(&c->out, line) < 0)
        c->close_after_flush = true;
    consume_front(srv, c, false);
    conn_process(c);
}

/* Requests waiting for a transaction's outcome longer than --lock-wait-ms
 * get an error (the transaction's coordinator may be down). */
static void lock_wait_timeouts(struct server *srv)
{
    uint64_t now = mono_ms();

    for (struct conn *c = srv->conns, *next; c; c = next) {
        next = c->next;
        if (c->waiting == NULL || c->waiting == &srv->retry || c->waiting == &srv->snap_cur ||
            c->waiting == &srv->snap_next || c->wait_since_ms == 0 ||
            now - c->wait_since_ms < srv->cfg.lock_wait_ms || c->closing)
            continue;
        waitlist_remove(c);
        srv->st.lock_wait_timeouts++;
        if (c->waits_fence)
            srv->fence_gave_up = true; /* the requests behind it need not wait too */
        if (conn_local(c))
            lock_wait_expired(c);
        else
            conn_post(c, POST_LOCK_TIMEOUT);
    }
}

/* ---- client requests ---- */

static void wait_for(struct conn *c, struct waitlist *wl)
{
    if (c->wait_since_ms == 0)
        c->wait_since_ms = mono_ms();
    waitlist_push(wl, c);
}

/* Not yet confirmed current by a peer (and not known behind): c waits for
 * one, up to --lock-wait-ms (a start: the links come up within moments). */
static bool fence_must_wait(struct server *srv, struct conn *c)
{
    c->waits_fence = false;
    if (srv->fence.verified || srv->fence.behind || srv->fence_gave_up)
        return false;
    c->waits_fence = true;
    wait_for(c, &srv->clock_wait);
    return true;
}

static bool read_must_wait(struct server *srv, struct conn *c, const struct proto_req *req)
{
    size_t pos = 0, nk;
    const char *k;

    while (proto_next_key(req, &pos, &k, &nk)) {
        struct txn_prep *p = txn_holder(&srv->rm, k, nk);
        if (p) {
            srv->st.reads_waited++;
            wait_for(c, &((struct ptx *)p->user)->waiters);
            return true;
        }
    }
    return false;
}

/* Appends the operations of one evaluated change, then drops the
 * evaluation (the transaction prepares it again on every replica). */
static int encode_and_drop(struct server *srv, struct store_change *ch, uint32_t *nops)
{
    uint64_t expected =
        ch->type == STORE_FLUSH ? 0 : txn_version(srv->store, ch->key, ch->nkey);
    int r = txn_encode_change(&srv->ops, ch, expected, nops);

    store_abort(srv->store, ch);
    return r;
}

static int exec_write_cluster(struct server *srv, struct conn *c, const struct proto_req *req)
{
    struct outq *o = &c->out;
    struct store_op op = {0};
    struct store_change ch;
    struct txn_prep *holder = NULL;
    struct creq *q;
    uint32_t nops = 0, culprit;
    uint64_t txid;
    int r;

    if (wal_error(srv->wal)) {
        srv->st.writes_failed++;
        return req->noreply ? 0 : reply_log_failed(srv, o);
    }
    if (fence_must_wait(srv, c)) {
        srv->st.writes_waited++;
        return AFTER_WAIT;
    }
    if ((r = reply_not_current(srv, o, req->noreply)) <= 0) {
        srv->st.writes_failed++;
        c->wait_since_ms = 0;
        c->attempts = 0;
        return r;
    }
    struct skew_verdict sv;
    c->waits_clock = false;
    if (!clocks_allow_writes(srv, &sv) && sv.unmeasured) {
        /* A link just came up: its clock is measured within a round trip
         * (bounded by --lock-wait-ms, like a held key). */
        c->waits_clock = true;
        srv->st.writes_waited++;
        wait_for(c, &srv->clock_wait);
        return AFTER_WAIT;
    }
    if (!clocks_allow_writes(srv, &sv)) {
        srv->st.writes_failed++;
        c->wait_since_ms = 0;
        c->attempts = 0;
        if (req->noreply) {
            srv->st.clock_skew_refused++;
            return 0;
        }
        return reply_clock_skew(srv, o, true);
    }
    /* Wait while a transaction holds a key (a flush_all: any transaction). */
    if (req->cmd == PROTO_CMD_FLUSH_ALL) {
        if (srv->rm.prepared > 0) {
            srv->st.writes_waited++;
            wait_for(c, &srv->txn_any);
            return AFTER_WAIT;
        }
    } else if (req->cmd == PROTO_CMD_GAT || req->cmd == PROTO_CMD_GATS) {
        size_t pos = 0, nk;
        const char *k;
        while (holder == NULL && proto_next_key(req, &pos, &k, &nk))
            holder = txn_holder(&srv->rm, k, nk);
    } else {
        holder = txn_holder(&srv->rm, req->key, req->nkey);
    }
    if (holder) {
        srv->st.writes_waited++;
        wait_for(c, &((struct ptx *)holder->user)->waiters);
        return AFTER_WAIT;
    }

    if ((q = calloc(1, sizeof(*q))) == NULL)
        return -ENOMEM;
    q->srv = srv;
    q->cmd = req->cmd;
    q->noreply = req->noreply;
    q->kept = true;
    txid = tpc_next_txid(srv->tpc, util_now_unix_us());
    srv->ops.len = 0;

    if (req->cmd == PROTO_CMD_GAT || req->cmd == PROTO_CMD_GATS) {
        size_t pos = 0, nk;
        const char *k;
        op.type = STORE_TOUCH;
        op.exptime_ms = proto_exptime_abs_ms(req->exptime, srv->now_ms);
        r = 0;
        while (r == 0 && proto_next_key(req, &pos, &k, &nk)) {
            void *h;
            srv->st.cmd_touch++;
            /* A key held for this request already is a repeat in the list:
             * touched once (the locks go before the transaction begins, in
             * this same hold of the server lock). */
            if ((r = store_lock(srv->store, k, nk, q, &h)) == -EDEADLK) {
                r = 0;
                continue;
            }
            if (r < 0)
                break;
            op.key = k;
            op.nkey = nk;
            if (store_prepare(srv->store, &op, txid, srv->now_ms, &ch) == 0) {
                srv->st.touch_hits++;
                r = encode_and_drop(srv, &ch, &nops);
            } else {
                srv->st.touch_misses++;
            }
        }
        for (pos = 0; proto_next_key(req, &pos, &k, &nk);)
            store_unlock(srv->store, k, nk, q);
        if (r < 0)
            goto fail;
        if (srv->ops.len + PEER_FRAME_HEADER_BYTES + PEER_MSG_FIXED_BYTES >
            srv->cfg.value_bytes_max + LIMIT_PEER_FRAME_OVERHEAD_BYTES) {
            /* The replicas could not take the PREPARE in one frame. */
            char line[200];
            free(q);
            c->wait_since_ms = 0;
            srv->st.writes_failed++;
            snprintf(line, sizeof(line),
                     "SERVER_ERROR too many keys for one gat in a cluster: their touches take "
                     "%zu bytes, more than --max-value plus %d\r\n",
                     srv->ops.len, LIMIT_PEER_FRAME_OVERHEAD_BYTES);
            return req->noreply ? 0 : reply(o, line);
        }
        if (nops == 0) {
            free(q);
            c->wait_since_ms = 0;
            return exec_retrieval(srv, c, req);
        }
    } else {
        enum store_status st;
        op_of_request(srv, req, &op);
        if (req->too_large) {
            /* As on one replica: a set refused for size drops the old value.
             * Its data block is being swallowed, so it cannot be kept for a
             * retry. */
            srv->st.store_too_large++;
            srv->st.cmd_set++;
            q->too_large = true;
            q->kept = false;
            op.type = STORE_DELETE;
            if (req->cmd != PROTO_CMD_SET ||
                store_prepare(srv->store, &op, txid, srv->now_ms, &ch) < 0) {
                free(q);
                return req->noreply ? 0 : reply(o, "SERVER_ERROR object too large for cache\r\n");
            }
            st = STORE_OK;
        } else {
            store_prepare(srv->store, &op, txid, srv->now_ms, &ch);
            st = ch.status;
            if (c->attempts == 0)
                count_write(srv, req->cmd, st);
        }
        if (st != STORE_OK) {
            free(q);
            c->wait_since_ms = 0;
            return req->noreply ? 0 : reply(o, write_reply(req->cmd, st));
        }
        q->number = ch.number;
        if ((r = encode_and_drop(srv, &ch, &nops)) < 0)
            goto fail;
    }

    r = tpc_begin(srv->tpc, txid, nops, srv->ops.data, (uint32_t)srv->ops.len, q, now_us(),
                  &culprit);
    if (r == 0) {
        q->c = c;
        c->cpending = q;
        after_tpc(srv); /* a failed local prepare of another may have woken someone */
        return q->kept ? AFTER_WAIT : AFTER_PENDING;
    }
    after_tpc(srv);
    bool kept = q->kept;
    free(q);
    if ((r == TPC_R_BUSY || r == TPC_R_CONFLICT) && kept && c->attempts < LIMIT_WRITE_RETRIES) {
        schedule_retry(srv, c);
        return AFTER_WAIT;
    }
    srv->st.writes_failed++;
    c->wait_since_ms = 0;
    unsigned attempts = c->attempts;
    c->attempts = 0;
    return req->noreply ? 0 : reply_txn_failed(srv, o, (enum tpc_reason)r, culprit, attempts);
fail:
    free(q);
    return r;
}

/* ---- expiry in a cluster -----------------------------------------------------
 *
 * A replica never removes an item because its own clock says the item is
 * dead (store.h, STORED AND LIVE): clocks differ, and a replica whose stored
 * state differed from the others' would vote down every later write of the
 * key. Expiry is decided once and replicated, like every other change: each
 * replica walks its store as a single one does and deletes, in one
 * transaction, the dead keys it owns (txn_expire_batch). One such
 * transaction at a time; one that aborts (a key became busy, a replica is
 * down) leaves its keys to a later walk. */

/* Walks part of the store and, if it found expired keys this replica owns,
 * begins the transaction that deletes them (main loop, under the lock). */
static void expire_step(struct server *srv)
{
    uint32_t nops = 0, culprit;
    struct creq *q;
    bool full;
    long keys;

    struct skew_verdict sv;

    if (srv->expiring || srv->stopping || wal_error(srv->wal) || !clocks_allow_writes(srv, &sv))
        return;
    for (size_t i = 0; i < srv->cfg.nreplicas; i++)
        if (!tpc_peer_is_up(srv->tpc, srv->cfg.replicas[i].id))
            return; /* it could not commit */
    srv->ops.len = 0;
    keys = txn_expire_batch(srv->store, srv->now_ms, EXPIRE_BUCKETS_PER_TICK,
                            (uint32_t)srv->cfg.nreplicas, srv->self_idx, &srv->ops,
                            LIMIT_EXPIRE_TXN_KEYS, LIMIT_EXPIRE_TXN_BYTES, &nops, &full);
    if (keys <= 0 || (q = calloc(1, sizeof(*q))) == NULL)
        return;
    q->srv = srv;
    q->expire = true;
    q->number = (uint64_t)keys;
    uint64_t txid = tpc_next_txid(srv->tpc, util_now_unix_us());
    int r = tpc_begin(srv->tpc, txid, nops, srv->ops.data, (uint32_t)srv->ops.len, q, now_us(),
                      &culprit);
    if (r != 0) {
        free(q);
        srv->st.expire_failed++;
        log_debug(MOD, "expiry of %ld key(s) not begun: %s (replica %u)", keys,
                  tpc_reason_name((enum tpc_reason)r), culprit);
    } else {
        srv->expiring = true;
        srv->expire_more = full;
    }
    after_tpc(srv);
}

/* An expiry transaction is decided: count it, and go on at once if its walk
 * had more to delete. */
static void expire_done(struct creq *q)
{
    struct server *srv = q->srv;
    bool more = q->committed && srv->expire_more;

    srv->expiring = false;
    if (q->committed) {
        srv->st.expire_txns++;
        srv->st.expire_keys += q->number;
    } else {
        srv->st.expire_failed++;
        log_debug(MOD, "expiry of %llu key(s) aborted: %s (replica %u)",
                  (unsigned long long)q->number, tpc_reason_name((enum tpc_reason)q->reason),
                  q->culprit);
    }
    free(q);
    if (more)
        expire_step(srv);
}

/* Writes the transactions still open into a snapshot (runs in its child). */
static int snap_open_txn(void *arg, const struct tpc_txn *t, bool prepared)
{
    struct snap_writer *sw = arg;
    struct buf b = {0};
    int r = encode_txn_record(&b, t);

    if (r == 0)
        r = snap_write_record(sw, prepared ? WAL_REC_PREPARE : WAL_REC_COMMIT, b.data, b.len);
    buf_free(&b);
    return r;
}

static int snap_extra(void *arg, struct snap_writer *sw)
{
    struct server *srv = arg;

    return srv->tpc ? tpc_for_each_open(srv->tpc, snap_open_txn, sw) : 0;
}

static void stats_cluster(struct server *srv, struct outq *o)
{
    struct tpc_stats ts;
    uint64_t aborted = 0;
    char name[64];

    stat_u64(o, "replica_id", srv->cfg.id);
    stat_u64(o, "replicas", srv->cfg.nreplicas ? srv->cfg.nreplicas : 1);
    if (!srv->cluster)
        return;
    stat_u64(o, "config_epoch", srv->cfg.epoch);
    tpc_get_stats(srv->tpc, &ts);
    for (int i = 1; i <= TPC_REASON_MAX; i++)
        aborted += ts.aborted[i];
    stat_u64(o, "txn_committed", ts.committed);
    stat_u64(o, "txn_aborted", aborted);
    for (int i = 1; i <= TPC_REASON_MAX; i++) {
        snprintf(name, sizeof(name), "txn_aborted_%s", tpc_reason_name((enum tpc_reason)i));
        stat_u64(o, name, ts.aborted[i]);
    }
    stat_u64(o, "txn_retries", srv->st.txn_retries);
    stat_u64(o, "expire_txns", srv->st.expire_txns);
    stat_u64(o, "expire_keys", srv->st.expire_keys);
    stat_u64(o, "expire_failed", srv->st.expire_failed);
    stat_u64(o, "txn_busy", srv->st.txn_busy);
    stat_u64(o, "txn_conflicts", srv->st.txn_conflicts);
    stat_u64(o, "txn_active", ts.active);
    stat_u64(o, "txn_in_doubt", ts.in_doubt);
    stat_u64(o, "txn_prepare_us_avg", ts.prepare_count ? ts.prepare_us_total / ts.prepare_count
                                                       : 0);
    stat_u64(o, "txn_prepare_us_max", ts.prepare_us_max);
    stat_u64(o, "txn_prepared", ts.prepared);
    stat_u64(o, "txn_voted_no", ts.voted_no);
    stat_u64(o, "txn_part_committed", ts.part_committed);
    stat_u64(o, "txn_part_aborted", ts.part_aborted);
    stat_u64(o, "txn_queries_sent", ts.queries_sent);
    stat_u64(o, "txn_resolved_by_query", ts.resolved_by_query);
    stat_u64(o, "txn_msgs_ignored", ts.msgs_ignored);
    stat_u64(o, "txn_bad_epoch", ts.bad_epoch);
    stat_u64(o, "reads_waited", srv->st.reads_waited);
    stat_u64(o, "lock_wait_timeouts", srv->st.lock_wait_timeouts);
    for (size_t i = 0; i < srv->cfg.nreplicas; i++) {
        uint32_t id = srv->cfg.replicas[i].id;
        struct peer_link_stats ls;
        char addr[300];
        if (id == srv->cfg.id || srv->peers == NULL)
            continue;
        peer_get_link_stats(srv->peers, id, &ls);
        snprintf(name, sizeof(name), "peer_%u_addr", id);
        stat_str(o, name, replica_addr(srv, id, addr, sizeof(addr)));
        snprintf(name, sizeof(name), "peer_%u_link", id);
        stat_str(o, name, peer_link_state_name(ls.state));
        snprintf(name, sizeof(name), "peer_%u_inbound", id);
        stat_str(o, name, ls.inbound_up ? "up" : "down");
        snprintf(name, sizeof(name), "peer_%u_frames_out", id);
        stat_u64(o, name, ls.frames_out);
        snprintf(name, sizeof(name), "peer_%u_frames_in", id);
        stat_u64(o, name, ls.frames_in);
        snprintf(name, sizeof(name), "peer_%u_writes", id);
        stat_u64(o, name, ls.writes);
        snprintf(name, sizeof(name), "peer_%u_connects", id);
        stat_u64(o, name, ls.connects);
        snprintf(name, sizeof(name), "peer_%u_auth_failures", id);
        stat_u64(o, name, ls.auth_failures);
        snprintf(name, sizeof(name), "peer_%u_last_error", id);
        stat_str(o, name, ls.last_error[0] ? ls.last_error : "none");
        /* Its clock minus ours, as the last probe measured it (in ms, as
         * a signed number), and the probe's round trip. */
        snprintf(name, sizeof(name), "peer_%u_clock_offset_ms", id);
        snprintf(addr, sizeof(addr), "%lld", (long long)(ls.clock_offset_us / 1000));
        stat_str(o, name, skew_of(&srv->skew, id, mono_ms()) >= 0 ? addr : "unknown");
        snprintf(name, sizeof(name), "peer_%u_clock_rtt_us", id);
        stat_u64(o, name, ls.clock_rtt_us);
        snprintf(name, sizeof(name), "peer_%u_data", id);
        stat_str(o, name, srv->fence.state[id] == FENCE_CURRENT  ? "current"
                          : srv->fence.state[id] == FENCE_BEHIND ? "behind"
                                                                 : "unknown");
    }
    stat_u64(o, "clock_skew_refused", srv->st.clock_skew_refused);
    stat_u64(o, "history_lost", srv->history_lost);
    stat_str(o, "data_current", srv->fence.behind     ? "behind"
                                : srv->fence.verified ? "yes"
                                                      : "unknown");
    stat_u64(o, "fence_dropped", srv->st.fence_dropped);
    stat_u64(o, "not_current_refused", srv->st.not_current_refused);
    stat_u64(o, "txn_commits_refused", ts.commits_refused);
}

/* Brings up the 2PC core once the store and log are recovered: the
 * transactions the log left open are handed over before any message. */
static int cluster_open(struct server *srv, struct recover_ledger *ledger, char *err, size_t cap)
{
    struct tpc_config tc = {
        .self = srv->cfg.id,
        .n = (uint32_t)srv->cfg.nreplicas,
        .epoch = srv->cfg.epoch,
        .prepare_timeout_us = (uint64_t)srv->cfg.prepare_timeout_ms * 1000u,
        .resend_us = (uint64_t)srv->cfg.prepare_timeout_ms * 500u,
        .remembered_max = LIMIT_TPC_REMEMBERED,
    };
    struct tpc_env env = {.ctx = srv,
                          .send = env_send,
                          .log = env_log,
                          .prepare = env_prepare,
                          .commit = env_commit,
                          .abort = env_abort,
                          .done = env_done};
    uint64_t now = now_us();
    int r;

    for (size_t i = 0; i < srv->cfg.nreplicas; i++) {
        tc.ids[i] = srv->ids[i] = srv->cfg.replicas[i].id;
        if (tc.ids[i] == srv->cfg.id)
            srv->self_idx = (uint32_t)i;
    }
    skew_init(&srv->skew, (uint32_t)srv->cfg.nreplicas, srv->cfg.id, srv->cfg.max_clock_skew_ms);
    /* Our history's mark: the last run's ceiling, and the log's records. */
    uint64_t mark = srv->hist_mark;
    if (srv->rec.next_cas > 0 && srv->rec.next_cas - 1 > mark)
        mark = srv->rec.next_cas - 1;
    fence_init(&srv->fence, (uint32_t)srv->cfg.nreplicas, mark, srv->prev_seen);
    if (srv->cfg.nreplicas == 1) {
        srv->fence.verified = true; /* nobody to ask */
        pthread_mutex_lock(&srv->run_mu);
        srv->run_verified = true;
        pthread_mutex_unlock(&srv->run_mu);
    }
    if (srv->run_behind) {
        /* Found behind in an earlier run: that does not wear off. */
        srv->fence.behind = true;
        srv->fence.behind_by = srv->run_behind_by;
        srv->fence.behind_seen = srv->run_behind_seen;
        log_error(MOD, "this replica's data was found behind in an earlier run (replica %u saw "
                       "it vote on transaction %" PRIu64 ", which %s does not hold): it serves "
                       "nothing and takes no part in writes. Bringing it up to date from its "
                       "peers is not in this release; see DESIGN.md, A replica that is behind",
                  srv->run_behind_by, srv->run_behind_seen, srv->cfg.data_dir);
    }
    /* The participants' backstop (txn.h): a coordinator's clock ahead by
     * more than the bound, or behind by more than the bound plus the time a
     * PREPARE may take to arrive, gets a NO vote. */
    if (srv->cfg.max_clock_skew_ms) {
        srv->rm.clock_ahead_ms = srv->cfg.max_clock_skew_ms;
        srv->rm.clock_behind_ms =
            (int64_t)srv->cfg.max_clock_skew_ms + srv->cfg.prepare_timeout_ms;
    }

    srv->rm.store = srv->store;
    srv->rm.user_bytes = sizeof(struct ptx);
    if ((srv->tpc = tpc_new(&tc, &env, &r)) == NULL)
        return util_errf(err, cap, r, "cannot start two-phase commit: %s", strerror(-r));
    uint64_t min = srv->rec.next_cas;
    if (store_max_cas(srv->store) + 1 > min)
        min = store_max_cas(srv->store) + 1;
    tpc_set_min_txid(srv->tpc, min);
    if (ledger->nprepared || ledger->ncommitted)
        log_info(MOD, "two-phase commit: %zu prepared transaction(s) to resolve, %zu commit(s) "
                      "to resend",
                 ledger->nprepared, ledger->ncommitted);
    if (srv->history_lost) {
        tpc_history_lost(srv->tpc, srv->lost_before);
        log_error(MOD, "the log in %s has lost records it had reported durable (a run under "
                       "--fsync none ended without a clean stop before the machine "
                       "restarted). This replica will not acknowledge commits it has no "
                       "record of, and what it cannot settle stays in doubt (stats "
                       "txn_in_doubt); it may lack writes the others have. There is no safe "
                       "in-place repair yet: bringing a replica up to date from its peers "
                       "is planned; until then run clusters under --fsync batch or always",
                  srv->cfg.data_dir);
    }
    uint64_t bad = 0;
    if ((r = txn_resume(srv->tpc, ledger, now, &bad)) < 0)
        return util_errf(err, cap, -EBADMSG,
                         "transaction %llu, left open by the log, cannot be taken back (%s): "
                         "the data directory is inconsistent",
                         (unsigned long long)bad, strerror(-r));
    after_tpc(srv);
    return 0;
}

/* Starts the peer transport (after the client listeners are bound). */
static int cluster_listen(struct server *srv, char *err, size_t cap)
{
    struct peer_config pc = {
        .self = srv->cfg.id,
        .n = srv->cfg.nreplicas,
        .secret = srv->cfg.secret,
        .nsecret = srv->cfg.nsecret,
        .epoch = srv->cfg.epoch,
        .client_port = srv->port > 0 ? (uint32_t)srv->port : 0,
        .frame_bytes_max = srv->cfg.value_bytes_max + LIMIT_PEER_FRAME_OVERHEAD_BYTES,
        .output_bytes_max = LIMIT_PEER_OUTPUT_BYTES_MAX,
        .on_msg = on_peer_msg,
        .on_link = on_peer_link,
        .on_clock = on_peer_clock,
        .state_out = state_out,
        .on_state = on_state,
        .arg = srv,
    };
    int r;

    memcpy(pc.replicas, srv->cfg.replicas, sizeof(pc.replicas));
    if ((r = peer_net_new(&srv->peers, srv->loop, &pc, err, cap)) < 0)
        return r;
    peer_net_start(srv->peers);
    uv_timer_init(srv->loop, &srv->tick);
    srv->tick.data = srv;
    srv->tick_open = true;
    uv_timer_start(&srv->tick, on_tick, TICK_INTERVAL_MS, TICK_INTERVAL_MS);
    return 0;
}

int server_peer_port(const struct server *srv)
{
    return srv->peers ? peer_net_port(srv->peers) : 0;
}

/* ---- connections (TCP and UDP) ---------------------------------------------- */

static void conn_link(struct server *srv, struct conn *c)
{
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    c->id = ++srv->next_conn_id;
    c->last_active_ms = util_mono_ns() / 1000000u;
}

/* Frees a connection that has no handle open and no write pending. */
static void conn_free(struct conn *c)
{
    struct server *srv = c->srv;

    assert(c->npending == 0 && c->cpending == NULL && c->post_w == NULL && c->post_q == NULL);
    waitlist_remove(c);
    if (c->posted) {
        struct lthread *lt = c->lt;
        struct conn *prev = NULL;
        for (struct conn *x = lt->inbox_head; x; prev = x, x = x->post_next) {
            if (x != c)
                continue;
            if (prev)
                prev->post_next = c->post_next;
            else
                lt->inbox_head = c->post_next;
            if (lt->inbox_tail == c)
                lt->inbox_tail = prev;
            break;
        }
    }
    if (c->deferred)
        c->lt->ready_conn[c->slot] = NULL;
    if (c->in_flushq) {
        struct conn **pp = &c->lt->flushq;
        while (*pp != c)
            pp = &(*pp)->flush_next;
        *pp = c->flush_next;
    }
    free(c->post_line);
    if (!c->udp) {
        c->lt->nconns--;
        if (c->lt_prev)
            c->lt_prev->lt_next = c->lt_next;
        else
            c->lt->conns = c->lt_next;
        if (c->lt_next)
            c->lt_next->lt_prev = c->lt_prev;
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (c->udp)
        srv->nudp--;
    else
        srv->nconns--;
    for (size_t i = c->keys_pos; i < c->nkeys; i++)
        item_unref(c->keys[i]);
    free(c->keys);
    outq_free(&c->out);
    free(c->rbuf);
    log_debug(MOD, "conn %llu closed", (unsigned long long)c->id);
    free(c);
}

static void conn_on_close(uv_handle_t *h)
{
    struct conn *c = (struct conn *)h;
    struct server *srv = c->srv;

    srv_lock(srv);
    c->handle_closed = true;
    /* A write in the log still points at us: wreq_done (or the 2PC outcome)
     * frees us then. */
    if (c->npending == 0 && c->cpending == NULL)
        conn_free(c);
    srv_unlock(srv);
}

static void conn_close(struct conn *c, const char *why)
{
    if (c->closing)
        return;
    c->closing = true;
    waitlist_remove(c);
    if (why)
        log_info(MOD, "conn %llu from %s closed: %s", (unsigned long long)c->id, c->peer, why);
    if (c->udp) {
        c->handle_closed = true;
        if (c->npending == 0 && c->cpending == NULL)
            conn_free(c);
        return;
    }
    uv_close((uv_handle_t *)&c->tcp, conn_on_close);
}

/* Emits queued "KEY" lines while the output queue has room (TCP), or all of
 * them (UDP: one reply). */
static void conn_stream_keys(struct conn *c)
{
    struct outq *o = &c->out;

    while (c->keys && c->keys_pos < c->nkeys &&
           (c->udp || o->bytes < c->srv->cfg.conn_output_bytes_max)) {
        struct item *it = c->keys[c->keys_pos];
        if (outq_text(o, "KEY ", 4) < 0 || outq_text(o, item_key(it), it->nkey) < 0 ||
            outq_text(o, "\r\n", 2) < 0) {
            conn_close(c, "out of memory");
            return;
        }
        item_unref(it);
        c->keys_pos++;
    }
    if (c->keys && c->keys_pos == c->nkeys) {
        free(c->keys);
        c->keys = NULL;
        c->nkeys = c->keys_pos = 0;
        if (reply(o, "END\r\n") < 0)
            conn_close(c, "out of memory");
    }
}

static void conn_on_write(uv_write_t *req, int status)
{
    struct conn *c = req->data;
    struct server *srv = c->srv;

    outq_consume(&c->out, c->in_flight);
    if (status == 0) {
        __atomic_fetch_add(&srv->st.bytes_written, c->in_flight, __ATOMIC_RELAXED);
        c->sent_bytes += c->in_flight;
    }
    c->in_flight = 0;
    if (status == UV_ECANCELED || (status == 0 && c->closing))
        return;
    srv_lock(srv);
    if (status < 0) {
        conn_close(c, uv_strerror(status));
    } else {
        /* Output drained: finish a keys listing, then any requests that waited. */
        conn_stream_keys(c);
        if (!c->closing)
            conn_process(c);
    }
    srv_unlock(srv);
    lt_flush(c->lt);
}

/* Cuts the UDP reply into datagrams and sends them; frees the request. */
static void udp_finish(struct conn *c);

/* conn_close for conn_flush, which runs without the lock. */
static void conn_close_unlocked(struct conn *c, const char *why)
{
    srv_lock(c->srv);
    conn_close(c, why);
    srv_unlock(c->srv);
}

/* Writes c's output queue: at once what the socket takes, the rest queued.
 * With threads, only c's thread calls it, without the lock (lt_flush). */
static void conn_flush(struct conn *c)
{
    struct iovec iov[IOV_BATCH];
    uv_buf_t bufs[IOV_BATCH];
    size_t n, total = 0;
    int r;

    if (c->closing || c->in_flight || c->udp)
        return;
    if (c->out.bytes == 0) {
        if (c->close_after_flush && c->npending == 0)
            conn_close_unlocked(c, NULL);
        return;
    }
    n = outq_iov(&c->out, iov, IOV_BATCH);
    for (size_t i = 0; i < n; i++) {
        bufs[i] = uv_buf_init(iov[i].iov_base, (unsigned)iov[i].iov_len);
        total += iov[i].iov_len;
    }
    /* Write at once what the socket takes: one writev, where a queued
     * uv_write costs an epoll_ctl and a loop turn more per reply. A keys
     * listing or a connection held back by --max-output takes the queued
     * path, whose callback resumes it. */
    if (c->keys == NULL && c->out.bytes < c->srv->cfg.conn_output_bytes_max) {
        r = uv_try_write((uv_stream_t *)&c->tcp, bufs, (unsigned)n);
        if (r < 0 && r != UV_EAGAIN) {
            conn_close_unlocked(c, uv_strerror(r));
            return;
        }
        if (r > 0) {
            outq_consume(&c->out, (size_t)r);
            c->sent_bytes += (uint64_t)r;
            __atomic_fetch_add(&c->srv->st.bytes_written, (uint64_t)r, __ATOMIC_RELAXED);
            if (c->out.bytes == 0) {
                if (c->close_after_flush && c->npending == 0)
                    conn_close_unlocked(c, NULL);
                return;
            }
            /* The rest waits for the socket: queue it. */
            n = outq_iov(&c->out, iov, IOV_BATCH);
            total = 0;
            for (size_t i = 0; i < n; i++) {
                bufs[i] = uv_buf_init(iov[i].iov_base, (unsigned)iov[i].iov_len);
                total += iov[i].iov_len;
            }
        }
    }
    c->wreq.data = c;
    r = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, bufs, (unsigned)n, conn_on_write);
    if (r < 0) {
        conn_close_unlocked(c, uv_strerror(r));
        return;
    }
    c->in_flight = total;
}

static void conn_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void conn_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);

static void conn_set_reading(struct conn *c, bool on)
{
    if (c->closing || c->udp || c->reading == on)
        return;
    c->reading = on;
    if (!on)
        uv_read_stop((uv_stream_t *)&c->tcp);
    else if (uv_read_start((uv_stream_t *)&c->tcp, conn_alloc, conn_on_read) < 0)
        conn_close(c, "cannot read");
}

/*
 * One request of a connection that has not authenticated (--auth-file; c's
 * thread, lock held): memcached's ASCII authentication, proto_parse_auth().
 * Right credentials: STORED, and the connection runs commands from the next
 * request on. Wrong ones: CLIENT_ERROR authentication failure, logged (the
 * user name, never the password), and the --max-auth-failures'th closes the
 * connection. Anything else: CLIENT_ERROR unauthenticated. Returns 1 with
 * *consumed bytes done, 0 when more bytes are needed (c->need set), or
 * -ENOMEM. A connection that must go gets close_after_flush.
 */
static int conn_authenticate(struct conn *c, const char *p, size_t n, size_t *consumed)
{
    struct server *srv = c->srv;
    struct proto_auth a;
    uint64_t dropped = 0;
    char name[96], note[64];
    int r = 0;

    switch (proto_parse_auth(p, n, &a, consumed)) {
    case PROTO_AUTH_NEED_MORE:
        c->need = a.need;
        return 0;
    case PROTO_AUTH_QUIT:
        c->need = 0;
        c->close_after_flush = true;
        return 1;
    case PROTO_AUTH_CLOSE:
        srv->st.protocol_closes++;
        log_info(MOD, "conn %llu from %s: %s; closing", (unsigned long long)c->id, c->peer,
                 a.error);
        if (a.reply)
            r = reply_line(&c->out, a.reply);
        c->close_after_flush = true;
        *consumed = n;
        return r < 0 ? r : 1;
    case PROTO_AUTH_REFUSE:
        c->need = 0;
        return reply_line(&c->out, a.error) < 0 ? -ENOMEM : 1;
    case PROTO_AUTH_TOKEN:
        break;
    }
    c->need = 0;
    srv->st.auth_cmds++;
    log_escape(name, sizeof(name), a.user, a.nuser);
    if (auth_check(srv->cfg.auth, a.user, a.nuser, a.pass, a.npass)) {
        c->authed = true;
        log_debug(MOD, "conn %llu from %s: authenticated as %s", (unsigned long long)c->id,
                  c->peer, name);
        return reply(&c->out, "STORED\r\n") < 0 ? -ENOMEM : 1;
    }
    srv->st.auth_errors++;
    bool last = ++c->auth_failures >= srv->cfg.auth_failures_max;
    if (last) {
        srv->st.auth_failure_closes++;
        c->close_after_flush = true;
    }
    if (ratelog_allow(&srv->rl_auth, &dropped))
        log_warn(MOD, "conn %llu from %s: authentication failed for user '%s' (attempt %u of "
                      "%u%s)%s",
                 (unsigned long long)c->id, c->peer, name, c->auth_failures,
                 srv->cfg.auth_failures_max, last ? "; closing" : "",
                 ratelog_note(note, sizeof(note), dropped));
    return reply(&c->out, "CLIENT_ERROR authentication failure\r\n") < 0 ? -ENOMEM : 1;
}

/* The requests a read completed are parsed before the lock is taken, up to
 * PREFETCH_MAX of them, their (first) keys hashed: the parse needs only the
 * connection's buffer, which is its thread's alone, and the fixed limits, and
 * it was a third of a request's time under the lock. Under the lock,
 * pipelined ones then start loading their keys' hash buckets, then the
 * buckets' first items, so their cache misses overlap (under the lock, every
 * miss a lookup waits for is a wait for every thread). The loop in
 * conn_process_parsed takes the parsed requests from here instead of parsing
 * them again. */
#define PREFETCH_MAX LIMIT_PARSE_AHEAD_COUNT
#define LT_READY_MAX LIMIT_TURN_READS_COUNT
struct parsed {
    size_t n, next; /* requests parsed; the next one conn_process takes */
    size_t nh;      /* hashes */
    size_t start[PREFETCH_MAX], consumed[PREFETCH_MAX];
    uint32_t hash[PREFETCH_MAX];
    struct proto_req req[PREFETCH_MAX];
};

/* No lock needed (see above); c's thread only. */
static void parse_batch(struct server *srv, const struct conn *c, struct parsed *p)
{
    size_t pos = 0;

    p->n = p->next = p->nh = 0;
    if (!c->authed || c->rlen <= c->need)
        return;
    while (p->n < PREFETCH_MAX && pos < c->rlen) {
        struct proto_req *req = &p->req[p->n];
        size_t consumed, kpos = 0, nk = 0;
        const char *k = NULL;

        if (proto_parse(c->rbuf + pos, c->rlen - pos, &srv->lim, req, &consumed) != PROTO_OK ||
            consumed > c->rlen - pos)
            break;
        p->start[p->n] = pos;
        p->consumed[p->n] = consumed;
        p->n++;
        pos += consumed;
        if (req->key != NULL && req->nkey > 0) {
            k = req->key;
            nk = req->nkey;
        } else if (req->keys == NULL || !proto_next_key(req, &kpos, &k, &nk)) {
            continue;
        }
        p->hash[p->nh++] = store_hash(srv->store, k, nk);
    }
}

/* Under the lock: the buckets of the keys np parsed batches hold, then
 * their first items. */
static void prefetch_parsed(struct server *srv, const struct parsed *p, size_t np)
{
    size_t nh = 0;

    for (size_t i = 0; i < np; i++)
        nh += p[i].nh;
    if (nh < 2)
        return; /* nothing to overlap a lone lookup with */
    for (size_t i = 0; i < np; i++)
        for (size_t j = 0; j < p[i].nh; j++)
            store_prefetch(srv->store, p[i].hash[j]);
    for (size_t i = 0; i < np; i++)
        for (size_t j = 0; j < p[i].nh; j++)
            store_prefetch_item(srv->store, p[i].hash[j]);
}

static void conn_process_parsed(struct conn *c, struct parsed *pre);

static void conn_process(struct conn *c)
{
    struct parsed pre; /* not zeroed: parse_batch sets what is read */

    parse_batch(c->srv, c, &pre);
    prefetch_parsed(c->srv, &pre, 1);
    conn_process_parsed(c, &pre);
}

/* Parses and executes every complete request in the read buffer, until one
 * has to wait: what pre holds (parsed from c's buffer as it is now), then
 * whatever follows it. */
static void conn_process_parsed(struct conn *c, struct parsed *pre)
{
    struct server *srv = c->srv;
    size_t pos = 0;

    assert(conn_local(c));
    /* Whatever parse waited for the turn's end is stale once this runs. */
    if (c->deferred) {
        c->deferred = false;
        c->lt->ready_conn[c->slot] = NULL;
    }
    refresh_now(srv);
    while (!c->closing && !c->close_after_flush && c->keys == NULL &&
           c->npending < srv->cfg.conn_writes_max && c->cpending == NULL && c->waiting == NULL &&
           !srv->stopping) {
        struct proto_req req;
        size_t consumed;
        enum proto_status st;
        int r = 0;

        if (!c->udp && c->out.bytes >= srv->cfg.conn_output_bytes_max)
            break; /* backpressure: resume from conn_on_write */
        if (c->rlen - pos == 0 || c->rlen - pos < c->need)
            break;
        if (!c->authed) {
            r = conn_authenticate(c, c->rbuf + pos, c->rlen - pos, &consumed);
            if (r == 0)
                break;
            if (r < 0)
                goto oom;
            pos += consumed;
            continue;
        }
        /* The buffer does not move in this loop, so what parse_batch
         * parsed at this offset is what parsing it again would give. */
        if (pre->next < pre->n && pre->start[pre->next] == pos) {
            req = pre->req[pre->next];
            consumed = pre->consumed[pre->next++];
            st = PROTO_OK;
        } else {
            st = proto_parse(c->rbuf + pos, c->rlen - pos, &srv->lim, &req, &consumed);
        }
        if (st == PROTO_NEED_MORE) {
            if (c->udp) {
                /* A UDP request must be whole in its datagram. */
                r = reply_line(&c->out, "CLIENT_ERROR incomplete request: a UDP request "
                                        "must fit one datagram");
                pos = c->rlen;
                if (r < 0)
                    goto oom;
                continue;
            }
            c->need = req.need;
            break;
        }
        /* With writes of ours in the log, only more plain writes go ahead
         * (their replies come in log order); anything else would answer
         * before them, or read around them: it waits, unconsumed, until
         * they are in. */
        if (c->npending > 0 && (st != PROTO_OK || !proto_cmd_is_write(req.cmd) ||
                                req.cmd == PROTO_CMD_FLUSH_ALL || req.too_large))
            break;
        c->need = 0;
        if (st == PROTO_CLOSE) {
            srv->st.protocol_closes++;
            if (c->udp) {
                srv->st.udp_dropped++;
            } else {
                /* Replies to earlier requests still go out, then we hang up. */
                log_info(MOD, "conn %llu from %s: %s; closing", (unsigned long long)c->id,
                         c->peer, req.error);
                c->close_after_flush = true;
            }
            pos = c->rlen;
            break;
        }
        if (st == PROTO_ERROR) {
            if (!req.noreply)
                r = reply_line(&c->out, req.error);
            if (log_enabled(LOG_LEVEL_DEBUG)) {
                char line[96];
                const char *nl = memchr(c->rbuf + pos, '\n', c->rlen - pos);
                size_t ll = nl ? (size_t)(nl - (c->rbuf + pos)) : c->rlen - pos;
                log_debug(MOD, "conn %llu: %s <- %s", (unsigned long long)c->id, req.error,
                          log_escape(line, sizeof(line), c->rbuf + pos, ll));
            }
        } else {
            /* A request that waits stays unconsumed, and so does a gat whose
             * touches are being logged (wreq_done reads it then): the buffer
             * is compacted below, so either is at its front afterwards. */
            r = execute(srv, c, &req);
            if (r == AFTER_WAIT)
                break;
            if (r == AFTER_PENDING &&
                (req.cmd == PROTO_CMD_GAT || req.cmd == PROTO_CMD_GATS))
                break;
        }
        /* A refused data block may extend past what we have: swallow the rest. */
        if (consumed > c->rlen - pos) {
            c->swallow = c->udp ? 0 : consumed - (c->rlen - pos);
            pos = c->rlen;
        } else {
            pos += consumed;
        }
        if (r < 0)
            goto oom;
        if (r == AFTER_CLOSE) {
            if (c->udp)
                pos = c->rlen; /* quit: nothing to close, drop the rest */
            else
                c->close_after_flush = true;
        } else if (r == AFTER_KEYS) {
            conn_stream_keys(c);
        }
    }
    if (c->closing)
        return;

    /* Keep the unparsed tail at the front of the buffer. */
    if (pos > 0) {
        memmove(c->rbuf, c->rbuf + pos, c->rlen - pos);
        c->rlen -= pos;
    }
    if (c->udp) {
        if (c->rlen == 0 && c->npending == 0 && c->cpending == NULL && c->waiting == NULL &&
            c->keys == NULL)
            udp_finish(c);
        return;
    }
    if (c->rlen == 0 && c->rcap > LIMIT_READ_BUF_BYTES_KEEP) {
        free(c->rbuf);
        c->rbuf = NULL;
        c->rcap = 0;
    }
    /* Busy connections read on (so their replies keep draining), but stop at
     * the output limit, or while a request waits. */
    /* A pending write does not stop reading while the buffer has room: the
     * next request is usually small and comes after the reply, and stopping
     * and restarting the socket costs two epoll_ctl calls per write. */
    bool pend = c->npending > 0 || c->cpending != NULL;
    bool blocked = c->out.bytes >= srv->cfg.conn_output_bytes_max || c->keys != NULL ||
                   c->waiting != NULL || (pend && c->rcap - c->rlen < 4096);
    conn_set_reading(c, !blocked && !c->close_after_flush);
    if (!srv->mt) {
        conn_flush(c);
    } else if (!c->in_flushq) {
        /* Written by lt_flush once the lock is let go. */
        c->in_flushq = true;
        c->flush_next = c->lt->flushq;
        c->lt->flushq = c;
    }
    return;
oom:
    conn_close(c, "out of memory");
}

static void conn_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct conn *c = (struct conn *)h;
    struct server *srv = c->srv;
    size_t want;

    (void)suggested;
    if (c->deferred) {
        /* Requests parsed in place wait for the turn's end: the buffer must
         * not move. It has room (a read that fills it is not deferred). */
        *buf = uv_buf_init(c->rbuf + c->rlen, (unsigned)(c->rcap - c->rlen));
        return;
    }
    if (c->swallow) {
        /* Reuse the buffer as a sink; what arrives is discarded. */
        want = c->rlen + LIMIT_READ_BUF_BYTES_INITIAL;
    } else if (c->need > c->rlen) {
        want = c->need; /* a data block is on its way: room for all of it */
    } else if (c->rcap - c->rlen < 4096) {
        /* A line without its newline yet: grow, up to the retrieval limit
         * plus one byte so the parser can see it is too long (or that the
         * byte is the "\r" before the newline: then it grows on). */
        want = c->rcap ? c->rcap * 2 : LIMIT_READ_BUF_BYTES_INITIAL;
        if (want > srv->cfg.get_line_bytes_max + 1 && c->rlen < srv->cfg.get_line_bytes_max + 1)
            want = srv->cfg.get_line_bytes_max + 1;
    } else {
        want = c->rcap;
    }
    if (want < LIMIT_READ_BUF_BYTES_INITIAL)
        want = LIMIT_READ_BUF_BYTES_INITIAL;
    if (want > c->rcap) {
        char *p = realloc(c->rbuf, want);
        if (p == NULL) {
            *buf = uv_buf_init(NULL, 0); /* libuv reports UV_ENOBUFS */
            return;
        }
        c->rbuf = p;
        c->rcap = want;
    }
    *buf = uv_buf_init(c->rbuf + c->rlen, (unsigned)(c->rcap - c->rlen));
}

/*
 * A connection thread's reads run at the end of their loop turn, all under
 * one hold of the lock (lt_run_ready): the lock is taken once per turn, not
 * once per read, and the lookups of requests from different connections
 * overlap their cache misses as a pipeline's do. The main loop (which holds
 * the lock anyway) runs them at once.
 */
static void lt_run_ready(struct lthread *lt)
{
    struct server *srv = lt->srv;
    size_t n = lt->nready;
    uint64_t now_ms = util_mono_ns() / 1000000u;

    srv->st.bytes_read += lt->ready_bytes;
    lt->ready_bytes = 0;
    /* A slot emptied since (its connection freed or run) costs a useless
     * prefetch at most: its hashes are only numbers. */
    prefetch_parsed(srv, lt->ready, n);
    for (size_t i = 0; i < n; i++) {
        struct conn *c = lt->ready_conn[i];
        if (c == NULL)
            continue; /* freed, or run since by another path */
        assert(c->deferred && c->slot == i);
        c->last_active_ms = now_ms;
        conn_process_parsed(c, &lt->ready[i]);
    }
    assert(lt->nready == n);
    lt->nready = 0;
}

static void conn_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = (struct conn *)s;
    struct server *srv = c->srv;
    struct lthread *lt = c->lt;

    struct parsed one, *pre = &one;

    (void)buf;
    if (nread == 0)
        return;
    if (nread > 0) {
        /* The buffer is this thread's alone: take the bytes in and parse
         * what they complete before taking the lock. */
        c->rlen += (size_t)nread;
        if (c->swallow) {
            size_t d = c->rlen < c->swallow ? c->rlen : (size_t)c->swallow;
            memmove(c->rbuf, c->rbuf + d, c->rlen - d);
            c->rlen -= d;
            c->swallow -= d;
        }
        if (c->swallow == 0) {
            bool defer = lt->ready != NULL && !c->udp && c->rlen < c->rcap &&
                         (c->deferred || lt->nready < LT_READY_MAX);
            if (defer) {
                if (!c->deferred) {
                    c->slot = (unsigned)lt->nready++;
                    lt->ready_conn[c->slot] = c;
                }
                pre = &lt->ready[c->slot];
            }
            parse_batch(srv, c, pre);
            if (defer && pre->n > 0) {
                /* lt_on_check runs it, with the turn's other reads. */
                c->deferred = true;
                lt->ready_bytes += (uint64_t)nread;
                return;
            }
            if (defer && !c->deferred)
                lt->ready_conn[--lt->nready] = NULL; /* the slot just taken */
        }
    }
    srv_lock(srv);
    if (c->deferred) {
        lt_run_ready(lt); /* what came before this, first */
        pre = &one; /* that moved the buffer: parse it anew */
        one.n = one.next = one.nh = 0;
    }
    if (nread < 0) {
        conn_close(c, nread == UV_EOF ? NULL : uv_strerror((int)nread));
        srv_unlock(srv);
        lt_flush(lt);
        return;
    }
    srv->st.bytes_read += (uint64_t)nread;
    c->last_active_ms = util_mono_ns() / 1000000u;
    if (c->swallow == 0) {
        prefetch_parsed(srv, pre, 1);
        conn_process_parsed(c, pre);
    }
    srv_unlock(srv);
    lt_flush(lt);
}

static void reject_on_close(uv_handle_t *h)
{
    free(h);
}

static void reject_on_write(uv_write_t *req, int status)
{
    (void)status;
    uv_close((uv_handle_t *)req->handle, reject_on_close);
    free(req);
}

/* Over --max-conns: say why, then hang up. */
static void reject_conn(struct server *srv, uv_tcp_t *t)
{
    static char msg[] = "SERVER_ERROR too many connections\r\n";
    uv_write_t *req = malloc(sizeof(*req));
    uv_buf_t b = uv_buf_init(msg, sizeof(msg) - 1);

    srv->st.rejected_connections++;
    if (req == NULL || uv_write(req, (uv_stream_t *)t, &b, 1, reject_on_write) < 0) {
        free(req);
        uv_close((uv_handle_t *)t, reject_on_close);
    }
}

static void addr_name(const struct sockaddr_storage *ss, char *dst, size_t cap)
{
    if (ss->ss_family == AF_INET6)
        uv_ip6_name((const struct sockaddr_in6 *)ss, dst, cap);
    else
        uv_ip4_name((const struct sockaddr_in *)ss, dst, cap);
}

static int addr_port(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
    return ntohs(((const struct sockaddr_in *)ss)->sin_port);
}

static void conn_hand_over(struct server *srv, uv_stream_t *listener);
static void conn_start(struct conn *c);

static void on_connection(uv_stream_t *listener, int status)
{
    struct server *srv = listener->data;
    struct conn *c;
    uint64_t dropped;
    char note[64];

    if (status < 0) {
        /* EMFILE: libuv accepted and closed it (its spare descriptor). */
        if (ratelog_allow(&srv->rl_accept, &dropped))
            log_warn(MOD, "accept: %s%s%s", uv_strerror(status),
                     status == UV_EMFILE ? " (the connection was closed: raise ulimit -n, "
                                           "or lower --max-conns)"
                                         : "",
                     ratelog_note(note, sizeof(note), dropped));
        return;
    }
    if (srv->nconns >= srv->cfg.max_conns) {
        uv_tcp_t *t = malloc(sizeof(*t));
        if (t == NULL)
            return;
        uv_tcp_init(srv->loop, t);
        if (uv_accept(listener, (uv_stream_t *)t) == 0) {
            if (ratelog_allow(&srv->rl_refused, &dropped))
                log_warn(MOD, "connection refused: %zu open, --max-conns is %zu%s",
                         srv->nconns, srv->cfg.max_conns,
                         ratelog_note(note, sizeof(note), dropped));
            reject_conn(srv, t);
        } else {
            uv_close((uv_handle_t *)t, reject_on_close);
        }
        return;
    }
    if (srv->mt) {
        conn_hand_over(srv, listener);
        return;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return;
    c->srv = srv;
    c->lt = &srv->lt[0];
    uv_tcp_init(srv->loop, &c->tcp);
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) < 0) {
        uv_close((uv_handle_t *)&c->tcp, reject_on_close);
        return;
    }
    srv->nconns++;
    srv->st.total_connections++;
    conn_start(c);
}

/* Accepts a connection and hands its socket to the next connection thread
 * (main thread; lt_adopt takes it there). */
static void conn_hand_over(struct server *srv, uv_stream_t *listener)
{
    struct lthread *lt = &srv->lt[1 + srv->next_lt++ % (srv->nlt - 1)];
    uv_tcp_t *t = malloc(sizeof(*t));
    uv_os_fd_t fd;
    int nfd = -1;

    if (t == NULL)
        return;
    uv_tcp_init(srv->loop, t);
    if (uv_accept(listener, (uv_stream_t *)t) == 0 && uv_fileno((uv_handle_t *)t, &fd) == 0)
        nfd = fcntl(fd, F_DUPFD_CLOEXEC, 3); /* the handle closes fd; nfd moves */
    uv_close((uv_handle_t *)t, reject_on_close);
    if (nfd < 0) {
        uint64_t dropped;
        char note[64];
        if (ratelog_allow(&srv->rl_accept, &dropped))
            log_warn(MOD, "accept: cannot hand the connection over: %s%s", strerror(errno),
                     ratelog_note(note, sizeof(note), dropped));
        return;
    }
    if (lt->nfds == lt->capfds) {
        size_t ncap = lt->capfds ? lt->capfds * 2 : 16;
        int *p = realloc(lt->fds, ncap * sizeof(*p));
        if (p == NULL) {
            close(nfd);
            return;
        }
        lt->fds = p;
        lt->capfds = ncap;
    }
    lt->fds[lt->nfds++] = nfd;
    srv->nconns++;
    srv->st.total_connections++;
    uv_async_send(&lt->async);
}

/* Takes the sockets handed to lt (lt's thread, lock held). */
static void lt_adopt(struct lthread *lt)
{
    struct server *srv = lt->srv;

    for (size_t i = 0; i < lt->nfds; i++) {
        struct conn *c = calloc(1, sizeof(*c));
        if (c == NULL) {
            close(lt->fds[i]);
            srv->nconns--;
            continue;
        }
        c->srv = srv;
        c->lt = lt;
        uv_tcp_init(lt->loop, &c->tcp);
        if (uv_tcp_open(&c->tcp, lt->fds[i]) < 0) {
            close(lt->fds[i]);
            srv->nconns--;
            uv_close((uv_handle_t *)&c->tcp, reject_on_close);
            continue;
        }
        conn_start(c);
    }
    lt->nfds = 0;
}

/* A new TCP connection on its thread: link it, name it, read. */
static void conn_start(struct conn *c)
{
    struct server *srv = c->srv;

    outq_init(&c->out, false);
    conn_link(srv, c);
    c->lt->nconns++;
    c->lt_next = c->lt->conns;
    if (c->lt->conns)
        c->lt->conns->lt_prev = c;
    c->lt->conns = c;
    c->opened_ms = c->last_active_ms;
    c->authed = srv->cfg.auth == NULL;
    uv_tcp_nodelay(&c->tcp, 1);

    struct sockaddr_storage ss;
    int len = sizeof(ss);
    char host[INET6_ADDRSTRLEN] = "?";
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0)
        addr_name(&ss, host, sizeof(host));
    snprintf(c->peer, sizeof(c->peer), "%s:%d", host, addr_port(&ss));
    log_debug(MOD, "conn %llu from %s", (unsigned long long)c->id, c->peer);
    conn_set_reading(c, true);
}

/* ---- UDP --------------------------------------------------------------------- */

struct udp_send {
    unsigned pending;
    uv_udp_send_t *reqs;
    char *data;
};

static void udp_send_free(struct udp_send *us)
{
    free(us->reqs);
    free(us->data);
    free(us);
}

static void udp_on_send(uv_udp_send_t *req, int status)
{
    struct udp_send *us = req->data;

    if (status < 0 && status != UV_ECANCELED)
        log_debug(MOD, "udp send: %s", uv_strerror(status));
    if (--us->pending == 0)
        udp_send_free(us);
}

/* Cuts reply[0..n) into datagrams for req_id and sends them to addr. */
static void udp_send_reply(struct server *srv, uint16_t req_id, const char *reply_bytes,
                           size_t n, const struct sockaddr *addr)
{
    size_t count = proto_udp_datagrams(n);
    const size_t dg = LIMIT_UDP_HEADER_BYTES + LIMIT_UDP_PAYLOAD_BYTES;
    struct udp_send *us;

    if (count == 0 || !srv->udp_open)
        return;
    if (count > LIMIT_UDP_DATAGRAMS_MAX) {
        static const char msg[] = "SERVER_ERROR reply too large for UDP\r\n";
        udp_send_reply(srv, req_id, msg, sizeof(msg) - 1, addr);
        return;
    }
    us = calloc(1, sizeof(*us));
    if (us == NULL)
        return;
    us->reqs = calloc(count, sizeof(*us->reqs));
    us->data = malloc(count * dg);
    if (us->reqs == NULL || us->data == NULL) {
        udp_send_free(us);
        return;
    }
    us->pending = (unsigned)count;
    for (size_t i = 0; i < count; i++) {
        size_t off = i * LIMIT_UDP_PAYLOAD_BYTES;
        size_t len = n - off < LIMIT_UDP_PAYLOAD_BYTES ? n - off : LIMIT_UDP_PAYLOAD_BYTES;
        char *d = us->data + i * dg;
        struct proto_udp_hdr h = {req_id, (uint16_t)i, (uint16_t)count, 0};
        proto_udp_encode(d, &h);
        memcpy(d + LIMIT_UDP_HEADER_BYTES, reply_bytes + off, len);
        uv_buf_t b = uv_buf_init(d, (unsigned)(LIMIT_UDP_HEADER_BYTES + len));
        us->reqs[i].data = us;
        if (uv_udp_send(&us->reqs[i], &srv->udp, &b, 1, addr, udp_on_send) < 0 &&
            --us->pending == 0) {
            /* Not sent: account for it as if its callback ran. */
            udp_send_free(us);
            return;
        }
    }
    srv->st.udp_replies++;
    __atomic_fetch_add(&srv->st.bytes_written, (uint64_t)n, __ATOMIC_RELAXED);
}

static void udp_finish(struct conn *c)
{
    struct server *srv = c->srv;

    if (c->out.bytes)
        udp_send_reply(srv, c->udp_req_id, c->out.flatbuf.data, c->out.flatbuf.len,
                       (const struct sockaddr *)&c->addr);
    c->closing = c->handle_closed = true;
    conn_free(c);
}

static void udp_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct server *srv = h->data;

    (void)suggested;
    *buf = uv_buf_init(srv->udp_rbuf, LIMIT_UDP_REQUEST_BYTES_MAX);
}

static void udp_on_recv(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf,
                        const struct sockaddr *addr, unsigned flags)
{
    struct server *srv = h->data;
    struct proto_udp_hdr hdr;
    struct conn *c;
    size_t n;

    if (nread == 0 && addr == NULL)
        return; /* nothing more to read */
    if (nread < 0) {
        log_warn(MOD, "udp receive: %s", uv_strerror((int)nread));
        return;
    }
    srv->st.bytes_read += (uint64_t)nread;
    if ((flags & UV_UDP_PARTIAL) || addr == NULL ||
        proto_udp_decode(buf->base, (size_t)nread, &hdr) < 0 || srv->stopping ||
        srv->nudp >= srv->cfg.max_conns) {
        srv->st.udp_dropped++;
        log_debug(MOD, "udp: dropped a datagram of %zd bytes", nread);
        return;
    }
    srv->st.udp_requests++;
    /* Run the datagram's requests as a connection of its own. */
    n = (size_t)nread - LIMIT_UDP_HEADER_BYTES;
    c = calloc(1, sizeof(*c));
    if (c == NULL || (n && (c->rbuf = malloc(n)) == NULL)) {
        free(c);
        srv->st.udp_dropped++;
        return;
    }
    c->srv = srv;
    c->udp = true;
    c->authed = true; /* no UDP with --auth-file (server_new) */
    c->lt = &srv->lt[0];
    c->rcap = c->rlen = n;
    memcpy(c->rbuf, buf->base + LIMIT_UDP_HEADER_BYTES, n);
    c->udp_req_id = hdr.req_id;
    memcpy(&c->addr, addr, addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                       : sizeof(struct sockaddr_in));
    outq_init(&c->out, true);
    conn_link(srv, c);
    srv->nudp++;
    snprintf(c->peer, sizeof(c->peer), "udp");
    conn_process(c);
}

/* ---- connection threads ----------------------------------------------------------- */

/* Writes the output of the connections lt ran (lt's thread, lock let go). */
static void lt_flush(struct lthread *lt)
{
    struct conn *c;

    while ((c = lt->flushq) != NULL) {
        lt->flushq = c->flush_next;
        c->in_flushq = false;
        conn_flush(c);
    }
}

/* Runs what other threads posted for c (c's thread, lock held). */
static void conn_run_posted(struct conn *c)
{
    unsigned what = c->post;
    struct wreq *w = c->post_w;
    struct creq *q = c->post_q;
    char *line = c->post_line;

    c->post = 0;
    c->post_w = c->post_w_tail = NULL;
    c->post_q = NULL;
    c->post_line = NULL;
    if (line) {
        if (!c->closing && reply(&c->out, line) < 0)
            c->close_after_flush = true;
        free(line);
    }
    if (what & POST_LOCK_TIMEOUT)
        lock_wait_expired(c);
    /* These may free c (the last of them); they go on with c's requests. */
    if (w) {
        while (w) {
            struct wreq *next = w->post_next;
            wreq_finish(c, w, w->post_status);
            w = next;
        }
    } else if (q)
        deliver_outcome(q);
    else if ((what & POST_RUN) || line)
        conn_process(c);
}

static void lt_run_inbox(struct lthread *lt)
{
    struct conn *c;

    while ((c = lt->inbox_head) != NULL) {
        lt->inbox_head = c->post_next;
        if (lt->inbox_head == NULL)
            lt->inbox_tail = NULL;
        c->posted = false;
        conn_run_posted(c);
    }
}

/* The log writer finished a batch (its thread): wake the connection
 * threads, the first of which runs the callbacks, so replies need not wait
 * for the main loop to wake, run them and post them. */
static void on_wal_batch(void *arg)
{
    struct server *srv = arg;

    pthread_mutex_lock(&srv->wake_mu);
    for (unsigned i = 1; i < srv->nlt; i++)
        if (srv->lt[i].async_live)
            uv_async_send(&srv->lt[i].async);
    pthread_mutex_unlock(&srv->wake_mu);
}

static void lt_async_dead(struct lthread *lt)
{
    pthread_mutex_lock(&lt->srv->wake_mu);
    lt->async_live = false;
    pthread_mutex_unlock(&lt->srv->wake_mu);
}

/* Closes the sockets handed to lt that it has not adopted (it stops). */
static void lt_drop_fds(struct lthread *lt)
{
    for (size_t i = 0; i < lt->nfds; i++) {
        close(lt->fds[i]);
        lt->srv->nconns--;
    }
    lt->nfds = 0;
}

/* A connection thread stops: close its connections and its wake-up
 * handle, so its loop runs out (lock held). */
static void lt_close(struct lthread *lt)
{
    struct server *srv = lt->srv;

    for (struct conn *c = srv->conns; c; c = c->next)
        if (c->lt == lt && !c->closing)
            conn_close(c, NULL);
    lt_drop_fds(lt);
    if (lt->async_open) {
        lt->async_open = false;
        lt_async_dead(lt);
        uv_close((uv_handle_t *)&lt->async, NULL);
        uv_close((uv_handle_t *)&lt->check, NULL);
    }
    if (lt->sweep_open) {
        lt->sweep_open = false;
        uv_close((uv_handle_t *)&lt->sweep, NULL);
    }
}

static void lt_on_async(uv_async_t *h)
{
    struct lthread *lt = h->data;
    struct server *srv = lt->srv;
    bool main = lt == &srv->lt[0]; /* the main loop runs with the lock held */

    if (!main)
        srv_lock(srv);
    if (!main && srv->wal)
        wal_deliver(srv->wal); /* on_wal_batch; runs nothing otherwise */
    lt_adopt(lt);
    lt_run_inbox(lt);
    if (lt->stop)
        lt_close(lt);
    if (!main) {
        srv_unlock(srv);
        lt_flush(lt);
    }
}

static void *lt_main(void *arg)
{
    struct lthread *lt = arg;

    uv_run(lt->loop, UV_RUN_DEFAULT);
    return NULL;
}

static int lt_start(struct server *srv, char *err, size_t cap)
{
    struct lthread *main = &srv->lt[0];
    int r;

    main->thread = pthread_self();
    if (!srv->mt)
        return 0;
    if ((r = uv_async_init(srv->loop, &main->async, lt_on_async)) < 0)
        return util_errf(err, cap, r, "cannot create the main loop's wake-up: %s", uv_strerror(r));
    main->async.data = main;
    main->async_open = true;
    for (unsigned i = 1; i < srv->nlt; i++) {
        struct lthread *lt = &srv->lt[i];
        if ((r = uv_loop_init(&lt->own)) < 0)
            return util_errf(err, cap, r, "cannot create an event loop: %s", uv_strerror(r));
        lt->loop = &lt->own;
        lt->ready = calloc(LT_READY_MAX, sizeof(*lt->ready));
        lt->ready_conn = calloc(LT_READY_MAX, sizeof(*lt->ready_conn));
        if (lt->ready == NULL || lt->ready_conn == NULL) {
            uv_loop_close(lt->loop);
            lt->loop = NULL;
            return util_errf(err, cap, -ENOMEM, "cannot create an event loop: %s", strerror(ENOMEM));
        }
        if ((r = uv_async_init(lt->loop, &lt->async, lt_on_async)) < 0) {
            uv_loop_close(lt->loop);
            lt->loop = NULL;
            return util_errf(err, cap, r, "cannot create an event loop: %s", uv_strerror(r));
        }
        lt->async.data = lt;
        lt->async_open = true;
        pthread_mutex_lock(&srv->wake_mu);
        lt->async_live = true;
        pthread_mutex_unlock(&srv->wake_mu);
        uv_check_init(lt->loop, &lt->check);
        lt->check.data = lt;
        uv_check_start(&lt->check, lt_on_check);
        uv_unref((uv_handle_t *)&lt->check);
        if (sweep_wanted(srv)) {
            /* Each thread checks its own connections' time limits: their
             * output queues and handles are its alone. */
            uv_timer_init(lt->loop, &lt->sweep);
            lt->sweep.data = lt;
            uv_timer_start(&lt->sweep, lt_on_sweep, LIMIT_CONN_SWEEP_MS, LIMIT_CONN_SWEEP_MS);
            uv_unref((uv_handle_t *)&lt->sweep);
            lt->sweep_open = true;
        }
        if ((r = pthread_create(&lt->thread, NULL, lt_main, lt)) != 0) {
            lt_async_dead(lt);
            uv_close((uv_handle_t *)&lt->async, NULL);
            uv_close((uv_handle_t *)&lt->check, NULL);
            if (lt->sweep_open)
                uv_close((uv_handle_t *)&lt->sweep, NULL);
            lt->sweep_open = false;
            lt->async_open = false;
            uv_run(lt->loop, UV_RUN_DEFAULT);
            uv_loop_close(lt->loop);
            lt->loop = NULL;
            return util_errf(err, cap, -r, "cannot start a connection thread: %s", strerror(r));
        }
        lt->started = true;
    }
    return 0;
}

/* Stops the connection threads and waits for them (main thread, lock
 * held: let go meanwhile). What they leave posted runs here. */
static void lt_stop_all(struct server *srv)
{
    for (unsigned i = 1; i < srv->nlt; i++) {
        struct lthread *lt = &srv->lt[i];
        if (lt->started && lt->async_open) {
            lt->stop = true;
            uv_async_send(&lt->async);
        }
    }
    pthread_mutex_unlock(&srv->mu);
    for (unsigned i = 1; i < srv->nlt; i++) {
        struct lthread *lt = &srv->lt[i];
        if (lt->started) {
            pthread_join(lt->thread, NULL);
            lt->started = false;
        }
    }
    pthread_mutex_lock(&srv->mu);
    for (unsigned i = 1; i < srv->nlt; i++) {
        struct lthread *lt = &srv->lt[i];
        lt->exited = true;
        if (lt->loop) {
            int r = uv_loop_close(lt->loop);
            if (r < 0)
                log_warn(MOD, "connection thread %u: loop closed with handles open: %s", i,
                         uv_strerror(r));
            lt->loop = NULL;
        }
        lt_run_inbox(lt);
        lt_drop_fds(lt);
    }
    lt_run_inbox(&srv->lt[0]);
    if (srv->lt[0].async_open) {
        srv->lt[0].async_open = false;
        uv_close((uv_handle_t *)&srv->lt[0].async, NULL);
    }
}

int server_run(struct server *srv)
{
    int alive;

    if (!srv->mt)
        return uv_run(srv->loop, UV_RUN_DEFAULT);
    srv_lock(srv);
    while ((alive = uv_run(srv->loop, UV_RUN_NOWAIT)) != 0) {
        struct pollfd p = {.fd = uv_backend_fd(srv->loop), .events = POLLIN};
        int timeout = uv_backend_timeout(srv->loop);
        srv_unlock(srv);
        if (poll(&p, 1, timeout) < 0 && errno != EINTR)
            log_warn(MOD, "poll: %s", strerror(errno));
        srv_lock(srv);
    }
    srv_unlock(srv);
    return alive;
}

/* ---- snapshots ----------------------------------------------------------------- */

/* Closes every descriptor from 3 up but keep (a forked child's). */
static void close_except(int keep)
{
    int r = 0;

    if (keep > 3)
        r = close_range(3, (unsigned)keep - 1, 0);
    if (r == 0)
        r = close_range(keep < 3 ? 3u : (unsigned)keep + 1, ~0u, 0);
    if (r < 0) { /* a kernel before 5.9 */
        long max = sysconf(_SC_OPEN_MAX);
        for (long fd = 3; fd < (max > 0 ? max : 65536); fd++)
            if (fd != keep)
                close((int)fd);
    }
}

static int start_snapshot(struct server *srv)
{
    struct snap_header h = {
        .lsn = srv->applied_lsn,
        .next_cas = srv->next_cas,
        .flush_at_ms = store_flush_at(srv->store),
    };
    pid_t pid;

    if (srv->snap_pid)
        return -EBUSY;
    if (wal_error(srv->wal))
        return wal_error(srv->wal);
    if (srv->cluster) {
        /* Every record appended is in the image or in the open
         * transactions the snapshot carries, except a coordinator's COMMIT
         * not yet durable (its effect is applied then): stop before it. */
        struct wal_stats ws;
        wal_get_stats(srv->wal, &ws);
        uint64_t unapplied = tpc_unapplied_lsn(srv->tpc);
        h.lsn = ws.next_lsn - 1;
        if (unapplied && unapplied - 1 < h.lsn)
            h.lsn = unapplied - 1;
        /* Ids this replica handed out, and the floor recovery found in the
         * log this snapshot replaces, must not come back once that log is
         * gone - even ids that left no item (a delete, an abort). */
        h.next_cas = store_max_cas(srv->store) + 1;
        if (tpc_txid_floor(srv->tpc) > h.next_cas)
            h.next_cas = tpc_txid_floor(srv->tpc);
        /* And above every txid logged so far, peers' included (a PREPARE
         * voted on and aborted leaves no item): the fence's mark at the
         * next start counts on it once the log is gone. */
        if (srv->txid_ceiling > h.next_cas)
            h.next_cas = srv->txid_ceiling;
    }
    refresh_now(srv);
    pid_t parent = getpid();
    pid = fork();
    if (pid < 0) {
        log_error(MOD, "snapshot: fork: %s", strerror(errno));
        return -errno;
    }
    if (pid == 0) {
        /* The child: a frozen copy of the store. Write it and leave without
         * running atexit handlers or touching the parent's loop. It dies
         * with its parent (a snapshot nobody waits for is useless, and an
         * orphan would hold what it inherited), and it keeps no descriptor
         * but the log's: not the data directory's lock (a restart after a
         * kill -9 would be refused until it finished), not the listening
         * sockets (clients would queue on them unanswered). */
        uint64_t items = 0;
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
            _exit(1);
        close_except(log_get_fd());
        int r = snap_write_store(srv->cfg.data_dir, srv->store, &h, &items,
                                 srv->cluster ? snap_extra : NULL, srv);
        if (r < 0)
            log_error(MOD, "snapshot %llu: %s", (unsigned long long)h.lsn, strerror(-r));
        _exit(r < 0 ? 1 : 0);
    }
    srv->snap_pid = pid;
    srv->snap_lsn = h.lsn;
    srv->snap_started_ns = util_mono_ns();
    srv->snap_appended_at = srv->appended_bytes;
    log_info(MOD, "snapshot of log position %llu started (pid %d)", (unsigned long long)h.lsn,
             (int)pid);
    return 0;
}

int server_snapshot(struct server *srv)
{
    return start_snapshot(srv);
}

/* The newest snapshot older than the one at lsn (0: none). */
static uint64_t previous_snapshot(struct server *srv, uint64_t lsn)
{
    struct datadir_file *f;
    long n = datadir_list(srv->cfg.data_dir, "snap-", ".snap", &f);
    uint64_t prev = 0;

    for (long i = 0; i < n; i++)
        if (f[i].seq < lsn && f[i].seq > prev)
            prev = f[i].seq;
    if (n > 0)
        free(f);
    return prev;
}

/* Removes snapshots older than the one at lsn. */
static void remove_old_snapshots(struct server *srv, uint64_t lsn)
{
    struct datadir_file *f;
    long n = datadir_list(srv->cfg.data_dir, "snap-", ".snap", &f);
    char path[4200];

    for (long i = 0; i < n; i++) {
        if (f[i].seq >= lsn)
            continue;
        snprintf(path, sizeof(path), "%s/%s", srv->cfg.data_dir, f[i].name);
        if (unlink(path) < 0)
            log_warn(MOD, "cannot remove %s: %s", path, strerror(errno));
    }
    if (n > 0)
        free(f);
}

/* Answers every connection on wl with line, and wakes them. Another
 * thread's connection gets the line with its wake-up (conn_run_posted). */
static void snapshot_answer(struct waitlist *wl, const char *line)
{
    for (struct conn *c = wl->head; c; c = c->wait_next) {
        if (c->closing)
            continue;
        if (conn_local(c)) {
            reply(&c->out, line);
        } else {
            free(c->post_line);
            c->post_line = strdup(line); /* NULL: the wake-up goes alone */
        }
    }
    waitlist_wake(wl);
}

/* Polled by the timer: has the snapshot child finished? */
static void snapshot_check(struct server *srv)
{
    int status;
    pid_t r;

    if (srv->snap_pid == 0)
        return;
    r = waitpid(srv->snap_pid, &status, WNOHANG);
    if (r == 0 || (r < 0 && errno == EINTR))
        return;
    srv->snap_pid = 0;
    uint64_t ms = (util_mono_ns() - srv->snap_started_ns) / 1000000u;
    if (r > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        char path[4200];
        struct stat sb;
        datadir_path(path, sizeof(path), srv->cfg.data_dir, "snap-", srv->snap_lsn, ".snap");
        srv->snap_last_bytes = stat(path, &sb) == 0 ? (uint64_t)sb.st_size : 0;
        srv->snap_last_ms = ms;
        srv->snap_last_lsn = srv->snap_lsn;
        srv->snapshots++;
        /* The previous snapshot stays, and the log back to it, so a new
         * one that does not read back (a damaged sector) is not the only
         * copy: recovery falls back to the previous and replays from it.
         * Two snapshots' worth of disk, at most. */
        uint64_t keep = previous_snapshot(srv, srv->snap_lsn);
        int removed = keep ? wal_remove_covered(srv->wal, keep) : 0;
        if (keep)
            remove_old_snapshots(srv, keep);
        log_info(MOD, "snapshot %s done: %llu bytes in %llu ms; %d log segment(s) removed",
                 path, (unsigned long long)srv->snap_last_bytes, (unsigned long long)ms,
                 removed > 0 ? removed : 0);
        snapshot_answer(&srv->snap_cur, "OK\r\n");
    } else {
        srv->snapshot_failures++;
        log_error(MOD, "snapshot of log position %llu failed (%s %d)",
                  (unsigned long long)srv->snap_lsn,
                  r > 0 && WIFSIGNALED(status) ? "signal" : "exit status",
                  r > 0 ? (WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status)) : -1);
        snapshot_answer(&srv->snap_cur, "SERVER_ERROR snapshot failed (see the server log)\r\n");
    }
    /* Commands that arrived during it want a newer one. */
    if (srv->snap_next.head) {
        srv->snap_cur = srv->snap_next;
        for (struct conn *c = srv->snap_cur.head; c; c = c->wait_next)
            c->waiting = &srv->snap_cur;
        srv->snap_next.head = srv->snap_next.tail = NULL;
        int e = start_snapshot(srv);
        if (e < 0) {
            char line[128];
            snprintf(line, sizeof(line), "SERVER_ERROR cannot snapshot: %s\r\n", strerror(-e));
            snapshot_answer(&srv->snap_cur, line);
        }
    }
}

static void on_sigchld(uv_signal_t *h, int signum)
{
    (void)signum;
    snapshot_check(h->data);
}

/* Starts a snapshot when the log has grown enough since the last one. */
static void snapshot_maybe(struct server *srv)
{
    uint64_t grown = srv->appended_bytes - srv->snap_appended_at;

    if (srv->snap_pid || srv->stopping || grown < srv->cfg.snapshot_bytes ||
        grown < srv->snap_last_bytes)
        return;
    start_snapshot(srv);
}

/* ---- timers, lifecycle ------------------------------------------------------ */

/* Bytes of c's replies the socket has taken: written, plus the part of the
 * write in flight libuv has written already (c's thread). */
static uint64_t conn_sent(struct conn *c)
{
    size_t unwritten = c->in_flight ? uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) : 0;

    return c->sent_bytes + (c->in_flight > unwritten ? c->in_flight - unwritten : 0);
}

/*
 * Closes c if it is past one of its time limits (c's thread, lock held):
 *   --output-stall-timeout  replies queued and the client has not taken a
 *                           byte of them for that long (it sends and never
 *                           reads: its queue, and the items it references,
 *                           would be held for good);
 *   --auth-timeout          not authenticated that long after connecting;
 *   --idle-timeout          silent that long, with nothing owed to it.
 */
static void conn_check_time(struct conn *c, uint64_t now)
{
    struct server *srv = c->srv;
    const struct server_config *cfg = &srv->cfg;
    uint64_t dropped;
    char note[64];

    if (c->closing || c->udp)
        return;
    if (cfg->output_stall_timeout_s && c->out.bytes > 0) {
        uint64_t sent = conn_sent(c);
        if (c->stall_since_ms == 0 || sent != c->stall_sent) {
            c->stall_sent = sent;
            c->stall_since_ms = now;
        } else if (now - c->stall_since_ms >= (uint64_t)cfg->output_stall_timeout_s * 1000) {
            srv->st.output_stall_closes++;
            log_warn(MOD, "conn %llu from %s closed: it has not read its replies for %u s "
                          "(%zu bytes queued; --output-stall-timeout)",
                     (unsigned long long)c->id, c->peer, cfg->output_stall_timeout_s,
                     c->out.bytes);
            conn_close(c, NULL);
            return;
        }
    } else {
        c->stall_since_ms = 0;
    }
    if (!c->authed && cfg->auth_timeout_s &&
        now - c->opened_ms >= (uint64_t)cfg->auth_timeout_s * 1000) {
        srv->st.auth_timeouts++;
        if (ratelog_allow(&srv->rl_auth_timeout, &dropped))
            log_info(MOD, "conn %llu from %s closed: not authenticated within %u s "
                          "(--auth-timeout)%s",
                     (unsigned long long)c->id, c->peer, cfg->auth_timeout_s,
                     ratelog_note(note, sizeof(note), dropped));
        conn_close(c, NULL);
        return;
    }
    if (cfg->idle_timeout_s && now - c->last_active_ms > (uint64_t)cfg->idle_timeout_s * 1000 &&
        c->out.bytes == 0 && c->npending == 0 && c->cpending == NULL && c->waiting == NULL) {
        srv->st.idle_kicks++;
        conn_close(c, "idle timeout");
    }
}

/* Checks the time limits of lt's connections (lt's thread, lock held). */
static void lt_sweep(struct lthread *lt)
{
    uint64_t now = util_mono_ns() / 1000000u;

    for (struct conn *c = lt->conns, *next; c; c = next) {
        next = c->lt_next;
        conn_check_time(c, now);
    }
}

/* A connection thread's sweep timer. */
static void lt_on_sweep(uv_timer_t *t)
{
    struct lthread *lt = t->data;

    srv_lock(lt->srv);
    lt_sweep(lt);
    srv_unlock(lt->srv);
}

/* Whether any connection time limit is set (lt_sweep has work). */
static bool sweep_wanted(const struct server *srv)
{
    return srv->cfg.idle_timeout_s || srv->cfg.output_stall_timeout_s ||
           (srv->cfg.auth && srv->cfg.auth_timeout_s);
}

static void on_timer(uv_timer_t *t)
{
    struct server *srv = t->data;

    refresh_now(srv);
    if (srv->cluster) {
        clock_step_check(srv);
        if (mono_ms() >= srv->clock_probe_at_ms) {
            clock_probe(srv);
            skew_changed(srv); /* samples grow old too */
        }
    }
    if (srv->cluster)
        expire_step(srv);
    else
        store_expire_step(srv->store, srv->now_ms, EXPIRE_BUCKETS_PER_TICK);
    /* Normally woken by the last pending write; this catches a barrier left
     * with nothing to wait for (its flush's connection closed). */
    if (srv->npending == 0 && srv->barrier.head)
        waitlist_wake(&srv->barrier);
    snapshot_check(srv);
    snapshot_maybe(srv);
    if (srv->cluster && srv->cfg.lock_wait_ms)
        lock_wait_timeouts(srv);
    /* Without connection threads, the main loop owns the connections. */
    if (!srv->mt && sweep_wanted(srv))
        lt_sweep(&srv->lt[0]);
    ratelog_flush(&srv->rl_refused);
    ratelog_flush(&srv->rl_accept);
    ratelog_flush(&srv->rl_auth);
    ratelog_flush(&srv->rl_auth_timeout);
    ratelog_flush(&srv->rl_ceiling);
}

void server_set_auth(struct server *srv, const struct auth *a)
{
    assert(srv->cfg.auth != NULL && a != NULL);
    srv->cfg.auth = a;
}

struct server *server_new(uv_loop_t *loop, const struct server_config *cfg, int *err)
{
    struct server *srv;
    struct store_config sc = {0};

    if (cfg->max_conns == 0 || cfg->value_bytes_max == 0 ||
        cfg->value_bytes_max > LIMIT_VALUE_BYTES_CEILING || cfg->get_keys_max == 0 ||
        cfg->get_line_bytes_max < LIMIT_LINE_BYTES_MAX || cfg->conn_output_bytes_max == 0 ||
        (!cfg->tcp && !cfg->udp) || cfg->data_dir == NULL || cfg->data_dir[0] == '\0' ||
        cfg->wal_segment_bytes < 4096 || cfg->nreplicas > LIMIT_REPLICAS_MAX ||
        cfg->threads > LIMIT_THREADS_MAX || cfg->conn_writes_max == 0 ||
        (cfg->auth && (cfg->udp || cfg->auth_failures_max == 0)) ||
        (cfg->nreplicas > 0 && (cfg->prepare_timeout_ms == 0 || cfg->epoch == 0))) {
        *err = -EINVAL;
        return NULL;
    }
    srv = calloc(1, sizeof(*srv));
    if (srv == NULL) {
        *err = -ENOMEM;
        return NULL;
    }
    srv->loop = loop;
    srv->cfg = *cfg;
    srv->mt = cfg->threads > 0;
    srv->nlt = 1 + cfg->threads;
    srv->lt = calloc(srv->nlt, sizeof(*srv->lt));
    if (srv->lt == NULL) {
        free(srv);
        *err = -ENOMEM;
        return NULL;
    }
    for (unsigned i = 0; i < srv->nlt; i++)
        srv->lt[i].srv = srv;
    srv->lt[0].loop = loop;
    /* Adaptive: the sections are short, so a waiter spins a little before
     * it sleeps (a futex sleep and wake costs more than most sections). */
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_ADAPTIVE_NP);
    pthread_mutex_init(&srv->mu, &ma);
    pthread_mutexattr_destroy(&ma);
    pthread_mutex_init(&srv->wake_mu, NULL);
    pthread_mutex_init(&srv->run_mu, NULL);
    srv->lock_fd = -1;
    srv->rl_refused.what = "refused connections (--max-conns)";
    srv->rl_ceiling.what = "failures to raise the txid ceiling";
    srv->rl_accept.what = "accept failures";
    srv->rl_auth.what = "authentication failures";
    srv->rl_auth_timeout.what = "authentication timeouts";
    freelist_init(&srv->wreqs, sizeof(struct wreq), cfg->max_conns);
    srv->lim.value_bytes_max = cfg->value_bytes_max;
    srv->lim.get_line_bytes_max = cfg->get_line_bytes_max;
    srv->lim.get_keys_max = cfg->get_keys_max;
    srv->next_cas = 1;
    srv->cluster = cfg->nreplicas > 0;
    srv->rng = util_mono_ns() ^ ((uint64_t)getpid() << 32);
    srv->log_base = log_get_level();
    srv->started_mono_ns = util_mono_ns();
    sc.max_bytes = cfg->max_memory_bytes;
    sc.value_bytes_max = cfg->value_bytes_max;
    sc.seed = cfg->hash_seed;
    sc.replicated = srv->cluster;
    if (sc.seed == 0 && getrandom(&sc.seed, sizeof(sc.seed), 0) != sizeof(sc.seed))
        sc.seed = util_mono_ns();
    srv->store = store_new(&sc);
    srv->udp_rbuf = malloc(LIMIT_UDP_REQUEST_BYTES_MAX);
    if (srv->store == NULL || srv->udp_rbuf == NULL) {
        store_free(srv->store);
        free(srv->udp_rbuf);
        pthread_mutex_destroy(&srv->mu);
        pthread_mutex_destroy(&srv->wake_mu);
        pthread_mutex_destroy(&srv->run_mu);
        free(srv->lt);
        free(srv);
        *err = -ENOMEM;
        return NULL;
    }
    return srv;
}

static int resolve(const char *host, int port, struct sockaddr_storage *ss)
{
    struct addrinfo hints = {0}, *res;
    char ps[16];
    int r;

    hints.ai_family = AF_UNSPEC;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    snprintf(ps, sizeof(ps), "%d", port);
    r = getaddrinfo(host, ps, &hints, &res);
    if (r != 0)
        return r == EAI_SYSTEM ? -errno : -EADDRNOTAVAIL;
    memset(ss, 0, sizeof(*ss));
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    return 0;
}

/* Locks the data directory, recovers the store, opens the log. */
static int open_data(struct server *srv, char *err, size_t cap)
{
    const char *dir = srv->cfg.data_dir;
    struct wal_config wc = {
        .dir = dir,
        .fsync_mode = srv->cfg.fsync_mode,
        .fsync_interval_ms = srv->cfg.fsync_interval_ms,
        .segment_bytes = srv->cfg.wal_segment_bytes,
        .prealloc_bytes = srv->cfg.wal_prealloc_bytes,
        .io = srv->cfg.wal_io,
        .on_batch = srv->mt ? on_wal_batch : NULL,
        .on_batch_arg = srv,
    };
    pid_t holder;
    int r;

    r = datadir_lock(dir, &holder, &srv->dir_created);
    if (r == -EWOULDBLOCK) {
        if (holder > 0)
            return util_errf(err, cap, r, "data directory %s is in use by another serve (pid %d); "
                                    "stop it, or give this one its own --data-dir",
                       dir, (int)holder);
        return util_errf(err, cap, r, "data directory %s is locked by another process", dir);
    }
    if (r < 0)
        return util_errf(err, cap, r, "cannot lock data directory %s: %s", dir, strerror(-r));
    srv->lock_fd = r;

    /* Whether the last run can have lost records it reported durable:
     * asked before recovery, which makes durable what it replays. */
    struct datadir_run prev;
    char boot[40];
    datadir_boot_id(boot, sizeof(boot));
    if ((r = datadir_run_read(dir, &prev)) < 0)
        return util_errf(err, cap, r,
                         "%s/RUN, which tells whether the last run may have lost records, "
                         "cannot be read (%s): refusing to start on a data directory whose "
                         "state is unknown. If it was edited by hand, restore its fields "
                         "(DESIGN.md, \"A log that lost records\")",
                         dir, strerror(-r));
    if (srv->cluster && prev.has_id && prev.id != srv->cfg.id)
        return util_errf(err, cap, -EINVAL,
                         "data directory %s belongs to replica %" PRIu32 ", not to --id %" PRIu32
                         ": give each replica its own directory",
                         dir, prev.id, srv->cfg.id);
    srv->lost_before = prev.lost_before;
    srv->hist_mark = prev.fence_mark;
    srv->run_fence_mark = prev.fence_mark;
    srv->run_behind = prev.behind;
    srv->run_behind_by = prev.behind_by;
    srv->run_behind_seen = prev.behind_seen;
    memcpy(srv->prev_seen, prev.seen, sizeof(srv->prev_seen));
    memcpy(srv->run_seen, prev.seen, sizeof(srv->run_seen));
    bool lost_now = datadir_run_lost(&prev, boot);
    srv->history_lost = lost_now || prev.lost_before != 0;

    refresh_now(srv);
    struct recover_ledger ledger = {.self = srv->cfg.id, .decided_max = LIMIT_TPC_REMEMBERED};
    struct recover_opts ro = {.unsynced_tail = lost_now};
    r = recover_cluster(dir, srv->store, srv->now_ms, srv->cluster ? &ledger : NULL, &ro,
                        &srv->rec, err, cap);
    if (r < 0) {
        recover_ledger_free(&ledger);
        return r;
    }
    srv->next_cas = srv->rec.next_cas;
    srv->applied_lsn = srv->rec.next_lsn - 1;
    /* The first snapshot waits until the log has grown past what replay
     * just had to read. */
    srv->snap_last_lsn = srv->rec.snap_lsn;

    struct store_stats ss;
    store_get_stats(srv->store, &ss);
    log_info(MOD, "recovered %s in %llu ms: snapshot at %llu (%llu items), %llu log records "
             "replayed; %llu items, %llu bytes",
             dir, (unsigned long long)srv->rec.elapsed_ms, (unsigned long long)srv->rec.snap_lsn,
             (unsigned long long)srv->rec.snap_items, (unsigned long long)srv->rec.records,
             (unsigned long long)ss.curr_items, (unsigned long long)ss.bytes);
    if (ss.bytes > srv->cfg.max_memory_bytes)
        log_warn(MOD, "the recovered data (%llu bytes) exceeds --max-memory: writes that add "
                      "data will fail until some is deleted",
                 (unsigned long long)ss.bytes);

    r = wal_open(&srv->wal, srv->loop, &wc, srv->rec.next_lsn);
    if (r < 0) {
        recover_ledger_free(&ledger);
        return util_errf(err, cap, r, "cannot open the write-ahead log in %s: %s", dir, strerror(-r));
    }
    uint64_t seq = util_now_unix_us(), held = srv->rec.next_cas >> 8;
    if (held > seq)
        seq = held;
    if (lost_now) {
        /* The lost records' txids: below the ceiling the last run kept
         * (every txid it logged was). A directory without one (a single
         * server's until now) falls back on the clock and the log: every
         * id this log holds and every one handed out by this host's clock,
         * with room for a peer's clock ahead and transactions arriving. */
        uint64_t bound = prev.txid_ceiling;
        if (bound == 0)
            bound = (seq + 60u * 1000000u + (uint64_t)srv->cfg.max_clock_skew_ms * 1000u) << 8;
        if (bound > srv->lost_before)
            srv->lost_before = bound;
    }
    if (srv->cluster) {
        /* This run's txids start above what any earlier run logged. */
        srv->txid_ceiling = ceiling_at(seq);
        if (prev.txid_ceiling > srv->txid_ceiling)
            srv->txid_ceiling = prev.txid_ceiling;
        if (srv->lost_before > srv->txid_ceiling)
            srv->txid_ceiling = ceiling_at(srv->lost_before >> 8);
    }
    if ((r = write_run(srv, false)) < 0) {
        recover_ledger_free(&ledger);
        return util_errf(err, cap, r, "cannot write %s/RUN: %s", dir, strerror(-r));
    }
    srv->run_written = true;
    if (lost_now && !srv->cluster)
        log_warn(MOD, "the last run in %s used --fsync none and ended without a clean stop "
                      "before the machine restarted: its newest acknowledged writes may be "
                      "lost (--fsync none does not survive a power cut)",
                 dir);
    if (srv->cluster)
        r = cluster_open(srv, &ledger, err, cap);
    recover_ledger_free(&ledger);
    return r;
}

int server_start(struct server *srv, char *err, size_t errcap)
{
    struct sockaddr_storage ss;
    char name[INET6_ADDRSTRLEN];
    int r, len;

    err[0] = '\0';
    if ((r = open_data(srv, err, errcap)) < 0)
        goto fail_quiet;
    if ((r = lt_start(srv, err, errcap)) < 0)
        goto fail_quiet;
    r = resolve(srv->cfg.host, srv->cfg.port, &ss);
    if (r < 0) {
        util_errf(err, errcap, r, "cannot resolve %s: %s", srv->cfg.host, strerror(-r));
        goto fail;
    }
    addr_name(&ss, name, sizeof(name));
    srv->port = srv->cfg.port;

    if (srv->cfg.tcp) {
        uv_tcp_init(srv->loop, &srv->tcp);
        srv->tcp.data = srv;
        srv->tcp_open = true;
        if ((r = uv_tcp_bind(&srv->tcp, (struct sockaddr *)&ss, 0)) < 0 ||
            (r = uv_listen((uv_stream_t *)&srv->tcp, 1024, on_connection)) < 0)
            goto fail_listen;
        len = sizeof(ss);
        uv_tcp_getsockname(&srv->tcp, (struct sockaddr *)&ss, &len);
        srv->port = addr_port(&ss);
    }
    if (srv->cfg.udp) {
        /* With port 0, UDP takes the port TCP got, so one number serves both. */
        if (ss.ss_family == AF_INET6)
            ((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)srv->port);
        else
            ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)srv->port);
        uv_udp_init(srv->loop, &srv->udp);
        srv->udp.data = srv;
        srv->udp_open = true;
        if ((r = uv_udp_bind(&srv->udp, (struct sockaddr *)&ss, 0)) < 0 ||
            (r = uv_udp_recv_start(&srv->udp, udp_alloc, udp_on_recv)) < 0)
            goto fail_listen;
        len = sizeof(ss);
        uv_udp_getsockname(&srv->udp, (struct sockaddr *)&ss, &len);
        srv->port = addr_port(&ss);
    }
    if (srv->cluster && (r = cluster_listen(srv, err, errcap)) < 0)
        goto fail_quiet;
    uv_prepare_init(srv->loop, &srv->clock_prep);
    uv_prepare_start(&srv->clock_prep, clock_on_prepare);
    uv_unref((uv_handle_t *)&srv->clock_prep);
    uv_check_init(srv->loop, &srv->clock_check);
    uv_check_start(&srv->clock_check, clock_on_check);
    uv_unref((uv_handle_t *)&srv->clock_check);
    srv->clock_open = true;
    clock_stale(); /* recovery may have taken a while */
    uv_timer_init(srv->loop, &srv->timer);
    srv->timer.data = srv;
    srv->timer_open = true;
    uv_timer_start(&srv->timer, on_timer, TIMER_INTERVAL_MS, TIMER_INTERVAL_MS);
    /* The timer also polls, in case a SIGCHLD is coalesced or missed. */
    uv_signal_init(srv->loop, &srv->sigchld);
    srv->sigchld.data = srv;
    srv->sigchld_open = true;
    uv_signal_start(&srv->sigchld, on_sigchld, SIGCHLD);
    log_info(MOD, "listening on %s%s%s %s port %d (max %zu connections, %llu MiB, values up to "
             "%zu bytes; data in %s, fsync %s)",
             srv->cfg.tcp ? "tcp" : "", srv->cfg.tcp && srv->cfg.udp ? "+" : "",
             srv->cfg.udp ? "udp" : "", name, srv->port, srv->cfg.max_conns,
             (unsigned long long)(srv->cfg.max_memory_bytes >> 20), srv->cfg.value_bytes_max,
             srv->cfg.data_dir, wal_fsync_mode_name(srv->cfg.fsync_mode));
    if (srv->cluster)
        log_info(MOD, "replica %u of %zu, peer port %d, config epoch %llu", srv->cfg.id,
                 srv->cfg.nreplicas, server_peer_port(srv), (unsigned long long)srv->cfg.epoch);
    return 0;
fail_listen:
    util_errf(err, errcap, r, "cannot listen on %s port %d: %s", srv->cfg.host, srv->cfg.port,
        uv_strerror(r));
fail:
fail_quiet:
    if (srv->mt)
        pthread_mutex_lock(&srv->mu); /* server_stop runs as if from the loop */
    server_stop(srv);
    if (srv->mt)
        pthread_mutex_unlock(&srv->mu);
    /* A data directory this start created and never got to use goes. */
    if (srv->dir_created)
        datadir_remove_new(srv->cfg.data_dir);
    return r;
}

int server_port(const struct server *srv)
{
    return srv->port;
}

void server_stop(struct server *srv)
{
    if (srv->stopping)
        return;
    srv->stopping = true;
    if (srv->tcp_open)
        uv_close((uv_handle_t *)&srv->tcp, NULL);
    if (srv->udp_open)
        uv_close((uv_handle_t *)&srv->udp, NULL);
    if (srv->timer_open)
        uv_close((uv_handle_t *)&srv->timer, NULL);
    if (srv->sigchld_open)
        uv_close((uv_handle_t *)&srv->sigchld, NULL);
    if (srv->tick_open)
        uv_close((uv_handle_t *)&srv->tick, NULL);
    if (srv->clock_open) {
        uv_close((uv_handle_t *)&srv->clock_prep, NULL);
        uv_close((uv_handle_t *)&srv->clock_check, NULL);
        srv->clock_open = false;
    }
    srv->tcp_open = srv->udp_open = srv->timer_open = srv->sigchld_open = false;
    srv->tick_open = false;
    if (srv->snap_pid) {
        /* A half-written snapshot is only a .tmp file: recovery removes it. */
        kill(srv->snap_pid, SIGKILL);
        waitpid(srv->snap_pid, NULL, 0);
        srv->snap_pid = 0;
        snapshot_answer(&srv->snap_cur, "SERVER_ERROR shutting down\r\n");
    }
    snapshot_answer(&srv->snap_next, "SERVER_ERROR shutting down\r\n");
    /* Transactions in flight: their clients are going away, prepared ones
     * stay in the log for recovery. Nothing re-enters tpc after this. */
    for (struct conn *c = srv->conns; c; c = c->next) {
        if (c->post_q) {
            free(c->post_q); /* an outcome posted to c's thread, not run yet */
            c->post_q = NULL;
            c->cpending = NULL;
        } else if (c->cpending) {
            c->cpending->c = NULL;
            c->cpending = NULL;
        }
    }
    if (srv->tpc) {
        tpc_release_all(srv->tpc);
        tpc_free(srv->tpc);
        srv->tpc = NULL;
        srv->wake.head = srv->wake.tail = NULL;
        for (struct creq *q = srv->done_head, *next; q; q = next) {
            next = q->next;
            free(q);
        }
        srv->done_head = srv->done_tail = NULL;
    }
    if (srv->peers) {
        peer_net_close(srv->peers);
        srv->peers = NULL;
    }
    /* Connection threads close their connections and exit; what they leave
     * is this thread's to finish. */
    if (srv->mt)
        lt_stop_all(srv);
    for (struct conn *c = srv->conns, *next; c; c = next) {
        next = c->next;
        conn_close(c, NULL);
    }
    /* Pending writes finish (durable or not) before the log closes; their
     * connections are gone, so nobody is told, and they free themselves. */
    if (srv->wal) {
        int e = wal_close(srv->wal);
        srv->wal = NULL;
        /* Everything is on disk: the next start need not doubt the log. */
        pthread_mutex_lock(&srv->run_mu);
        memcpy(srv->run_seen, srv->fence.seen, sizeof(srv->run_seen));
        pthread_mutex_unlock(&srv->run_mu);
        if (e == 0 && srv->run_written &&
            (e = write_run(srv, true)) < 0)
            log_warn(MOD, "cannot record the clean stop in %s/RUN: %s", srv->cfg.data_dir,
                     strerror(-e));
    }
}

void server_free(struct server *srv)
{
    if (srv == NULL)
        return;
    assert(srv->conns == NULL);
    store_free(srv->store);
    buf_free(&srv->scratch);
    buf_free(&srv->ops);
    freelist_clear(&srv->wreqs);
    free(srv->udp_rbuf);
    if (srv->lock_fd >= 0)
        close(srv->lock_fd);
    for (unsigned i = 0; i < srv->nlt; i++) {
        free(srv->lt[i].fds);
        free(srv->lt[i].ready);
        free(srv->lt[i].ready_conn);
    }
    free(srv->lt);
    pthread_mutex_destroy(&srv->mu);
    pthread_mutex_destroy(&srv->run_mu);
    pthread_mutex_destroy(&srv->wake_mu);
    free(srv);
}
