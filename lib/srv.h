/*
 * srv.h - what the files of serve's server share; private to them (the
 * public interface is server.h). Names shared between the files carry the
 * srv_ prefix; everything else in a file is static to it.
 *
 * THE FILES, each with one job:
 *   srv_time.c     the clocks as read once per loop turn
 *   srv_stats.c    counters and the "stats" replies
 *   srv_exec.c     the dispatch of one parsed request; wait lists
 *   srv_write.c    the single-replica write path (prepare, log, commit)
 *   srv_cluster.c  the write path under two-phase commit, cluster expiry
 *   srv_peers.c    peer links, clocks, the fence, the txid ceiling
 *   srv_conn.c     a connection: read, parse, process, flush, close, auth
 *   srv_listen.c   accepting TCP connections, UDP datagrams
 *   srv_loop.c     the connection threads, their inboxes, the lock
 *   srv_snap.c     snapshots: trigger, child, completion
 *   server.c       lifecycle: new, start, run, stop, free; the timer
 *
 * Together they are serve's network side: libuv TCP and UDP on one port,
 * the execution of parsed requests against the store, and durability (the
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
 * LIMIT_CONN_SWEEP_MS (srv_lt_sweep): the output stall above, --auth-timeout and
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
 * turn to execute all those reads (srv_lt_run_ready) and hand the log its
 * records, and lets go for the system calls: the kernel's share of a
 * request (read, writev) runs in parallel. A connection
 * belongs to its thread: its read buffer, output queue and handle are
 * touched by nobody else. What another thread has for it (a write durable,
 * a 2PC outcome, a wake-up, a lock-wait timeout) is posted to the
 * connection and run by its own thread (srv_conn_post). Replies reference
 * items whose counts are atomic, so a write that completes outside the lock
 * may drop the last reference to an item the store has replaced.
 */
#ifndef TPCKV_SRV_H
#define TPCKV_SRV_H

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

struct conn;

struct log_write;

struct txn_write;

struct server;

/* An event loop and its thread: [0] is the main loop (the caller's thread),
 * then the connection threads. */
struct lthread {
    struct server *srv;
    uv_loop_t *loop; /* the main loop, or &own */
    uv_loop_t own;
    uv_async_t async;   /* posted connections, new sockets, log batches, stop */
    uv_check_t check;   /* the end of a loop turn (lt_on_check) */
    uv_idle_t idle;     /* posted by its own thread: run the inbox before sleeping */
    uv_idle_cb on_idle; /* srv_loop.c's, which runs the inbox */
    bool check_open, idle_open;
    bool self_posted; /* its own thread posted to its inbox this turn */
    bool async_open;
    pthread_t thread;
    bool started, stop, exited;
    bool async_live; /* async may be sent to from any thread (srv->wake_mu) */
    struct conn *inbox_head, *inbox_tail; /* posted connections (srv->mu) */
    struct conn *flushq;                  /* to write once the lock is let go */
    /* Connection threads: the reads of this loop turn, parsed, that run
     * together at its end (srv_lt_run_ready): LT_READY_MAX slots. */
    struct parsed *ready;
    struct conn **ready_conn;
    size_t nready;
    uint64_t ready_bytes; /* bytes those reads brought */
    int *fds;             /* accepted sockets to adopt (srv->mu) */
    size_t nfds, capfds;
    size_t nconns;
    struct conn *conns; /* its TCP connections (srv->mu), for srv_lt_sweep */
    uv_timer_t sweep;   /* connection threads: timeouts (srv_lt_sweep) */
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
    bool threaded; /* cfg.threads > 0 */
    pthread_mutex_t mu;
    pthread_mutex_t wake_mu; /* the log writer's wake-ups vs closing loops */
    unsigned nlt;            /* loops: the main one and the connection threads */
    struct lthread *lt;
    unsigned next_lt; /* the thread the next connection goes to */
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
    struct counters counters;
    struct log_limit rl_refused, rl_accept, rl_auth, rl_auth_timeout, rl_ceiling;
    char *udp_rbuf;
    struct buf scratch;    /* encodes log records */
    struct freelist log_writes; /* spare struct log_write: one per write, reused (freelist.h) */

    /* Writes. */
    size_t npending;         /* writes appended and not yet durable */
    uint64_t applied_lsn;    /* last log record committed to the store */
    uint64_t appended_bytes; /* log bytes appended since start */
    struct log_write *flush_write; /* a flush_all in flight holds every key */
    struct waitlist barrier; /* a flush waiting for pending writes to drain,
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
    struct waitlist answered;  /* answered, until their own thread has the line */

    /* Replication (cfg.nreplicas > 0). */
    bool cluster;
    bool history_lost;    /* the last run may have lost records it reported durable */
    bool dir_created;     /* this start made the data directory */
    uint64_t lost_before; /* then: the txids that may have been among them (RUN) */
    bool run_written;     /* RUN says this run is under way */
    /* A cluster replica's txid ceiling (datadir.h): durable in RUN, every
     * txid logged stays below it. Raised ahead of the clock by a job on
     * the thread pool (ceiling_job), or on the spot when a txid outruns it. */
    uint64_t txid_ceiling;
    uint64_t ceiling_next;     /* the job in flight writes this one; 0: none */
    uint64_t ceiling_written;  /* what RUN holds after it */
    int ceiling_err;           /* its result */
    uint64_t ceiling_retry_ms; /* after a failure, not before (monotonic) */
    uint64_t run_ceiling;      /* under run_mu: the ceiling RUN holds */
    uint64_t run_seen[LIMIT_REPLICAS_MAX]; /* under run_mu: the fence's seen[] to write */
    uint64_t run_fence_mark;               /* under run_mu: the last confirmed mark */
    bool run_verified; /* under run_mu: confirmed current in this run */
    bool run_behind;   /* under run_mu: found behind (kept) */
    uint32_t run_behind_by;
    uint64_t run_behind_seen;
    uint64_t seen_persist_ms; /* the fence's seen[] is written again after this */
    /* Is our data, and each peer's, as recent as the others saw it (fence.h)? */
    struct fence fence;
    uint64_t hist_mark; /* the last run's txid ceiling: the fence's first mark */
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
    struct buf ops; /* encodes a write's operations */
    uv_timer_t tick;
    bool tick_open;
    struct waitlist retry;      /* writes waiting out a conflict backoff */
    struct waitlist txn_any;    /* a flush_all waiting for every transaction */
    struct waitlist clock_wait; /* writes waiting for a peer's clock to be measured */
    struct waitlist wake;       /* woken once the current tpc call returns */
    uint32_t self_idx;          /* our place in --replicas: which keys we expire */
    uint32_t ids[LIMIT_REPLICAS_MAX]; /* the replicas' ids, in --replicas order */
    struct skew skew;                 /* how far the peers' clocks are from ours */
    bool skew_writes_refused;         /* clocks found too far apart, to log changes */
    bool skew_reads_refused;          /* likewise, for our own clock */
    uint64_t clock_probe_at_ms;       /* mono: the next clock probe */
    int64_t clock_gap_ms;             /* wall minus monotonic: a change is a clock step */
    bool clock_gap_known;
    bool expiring;                      /* an expiry transaction is under way */
    bool expire_more;                   /* its walk stopped with a full batch */
    struct txn_write *done_head, *done_tail; /* outcomes to deliver, likewise */
    uint64_t rng;
};

/*
 * A client write's outcome on its way to its connection: the one route
 * both write paths take. The path fills it and posts it (srv_post_done);
 * the connection's own thread turns it into the reply and goes on with
 * the connection's requests (srv_conn_run_posted). It sits at the start of
 * the write's own record (struct log_write, struct txn_write).
 */
enum wdone_kind {
    WDONE_LOG, /* one replica: the write's log record is durable, or failed */
    WDONE_TXN, /* a cluster: the transaction committed, or aborted */
};
struct wdone {
    struct wdone *next; /* the connection's outcomes, in order */
    enum wdone_kind kind;
    enum proto_cmd cmd;
    bool noreply;
    bool too_large;  /* a refused oversized set: the reply is an error */
    bool kept;       /* the request is still at the front of the buffer */
    bool ok;         /* applied: durable and committed */
    bool busy;       /* WDONE_TXN: lost to another write; may be tried again */
    uint64_t number; /* incr/decr: the new value */
};

/* A client write under two-phase commit (this replica coordinates it). */
struct txn_write {
    struct wdone done; /* first: what the client's connection is handed */
    struct server *srv;
    struct conn *c;
    struct txn_write *next; /* on the done list */
    bool committed;
    bool expire; /* the replica's own delete of expired keys (no client) */
    uint8_t reason;
    uint32_t culprit;
    uint64_t keys; /* expire: keys */
};

/* What a prepared transaction carries for the server: readers and writers
 * waiting for its outcome. */
struct txn_waiters {
    struct waitlist waiters;
};

/* A write between its log append and its commit. */
struct log_write {
    struct wdone done; /* first: what the client's connection is handed */
    struct server *srv;
    struct conn *c;
    bool locked;
    uint64_t cas;
    size_t nch;
    struct store_change *ch; /* nch prepared changes */
    struct store_change one;
    struct waitlist waiters; /* connections waiting for our keys */
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
    uv_write_t write_req;
    size_t in_flight; /* bytes handed to uv_write */
    bool reading;
    bool closing;
    bool handle_closed; /* uv_close done: free once no write is pending */
    bool close_after_flush;
    uint64_t last_active_ms;
    uint64_t opened_ms;     /* when it was accepted (--auth-timeout) */
    bool authed;            /* may run commands (always, without --auth-file) */
    unsigned auth_failures; /* failed attempts (--max-auth-failures) */
    /* Output stall (--output-stall-timeout): bytes the socket took so far;
     * what srv_lt_sweep saw last, and since when it has not moved. */
    uint64_t sent_bytes, stall_sent, stall_since_ms;
    unsigned npending;        /* our writes in the log, awaiting durability */
    struct txn_write *cpending;    /* our write under two-phase commit */
    unsigned attempts;        /* conflict retries of the request in front */
    uint64_t wait_since_ms;   /* waiting for a transaction's outcome since */
    bool waits_clock;         /* ... or for a peer's clock to be measured */
    bool waits_fence;         /* ... or for a peer to confirm our data is current */
    uint64_t retry_at_ms;     /* on the retry list until then */
    bool timeout_posted;      /* its lock wait timed out: its thread answers */
    struct waitlist *waiting; /* the list we wait on, or NULL */
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
    bool deferred; /* its parsed reads wait in lt->ready[slot] */
    unsigned slot;
    struct conn *post_next, *flush_next;
    unsigned post;                       /* POST_* */
    struct wdone *done_head, *done_tail; /* our writes' outcomes, in order */
    char *post_line;                     /* a line to answer (snapshot) */
};

/* What another thread posts to a connection. */
enum {
    POST_RUN = 1,          /* woken: go on with the buffered requests */
    POST_LOCK_TIMEOUT = 2, /* its wait for a transaction's outcome timed out */
};

/* What a request asks of its connection afterwards. */
enum after {
    AFTER_CONTINUE, /* done; go on with the next request */
    AFTER_CLOSE,    /* quit: close once the replies are out */
    AFTER_KEYS,     /* stream the collected key list */
    AFTER_PENDING,  /* a write is in the log: wait for it; request consumed */
    AFTER_WAIT,     /* blocked before starting: request NOT consumed, rerun later */
};

/* The requests a read completed are parsed before the lock is taken, up to
 * PREFETCH_MAX of them, their (first) keys hashed: the parse needs only the
 * connection's buffer, which is its thread's alone, and the fixed limits, and
 * it was a third of a request's time under the lock. Under the lock,
 * pipelined ones then start loading their keys' hash buckets, then the
 * buckets' first items, so their cache misses overlap (under the lock, every
 * miss a lookup waits for is a wait for every thread). The loop in
 * srv_conn_process_parsed takes the parsed requests from here instead of parsing
 * them again. */
#define PREFETCH_MAX LIMIT_PARSE_AHEAD_COUNT

#define LT_READY_MAX LIMIT_TURN_READS_COUNT

struct parsed {
    size_t n, next; /* requests parsed; the next one srv_conn_process takes */
    size_t nh;      /* hashes */
    size_t start[PREFETCH_MAX], consumed[PREFETCH_MAX];
    uint32_t hash[PREFETCH_MAX];
    struct proto_req req[PREFETCH_MAX];
};

struct udp_send {
    unsigned pending;
    uv_udp_send_t *reqs;
    char *data;
};

static inline int reply(struct outq *o, const char *s)
{
    return outq_str(o, s);
}

static inline int reply_line(struct outq *o, const char *s)
{
    int r = outq_str(o, s);
    return r ? r : outq_text(o, "\r\n", 2);
}

/* What this thread queued during its loop turn (srv_post.c). */
extern __thread bool srv_tl_wal_staged, srv_tl_kick_main;

/* What srv_prepare_write found. */
enum prep {
    PREP_CHANGES,   /* changes to make, each prepared (STORE_OK) */
    PREP_FAILED,    /* a failed condition: answer it; nothing changes */
    PREP_READ,      /* a gat none of whose keys is present: run it as a read */
    PREP_TOO_LARGE, /* refused for size, nothing to delete: answer the error */
};

/* ---- prototypes, file by file, from the bottom layer up: a file calls only
 * the files listed before it (server.c, on top, calls any) ---- */

/* srv_time.c */
void srv_clock_stale(void);
void srv_clock_on_prepare(uv_prepare_t *h);
void srv_clock_on_check(uv_check_t *h);
void srv_refresh_now(struct server *srv);
uint64_t srv_now_us(void);
uint64_t srv_mono_ms(void);
uint64_t srv_rng_next(struct server *srv);

/* srv_post.c */
void srv_lock(struct server *srv);
void srv_unlock(struct server *srv);
bool srv_conn_local(const struct conn *c);
void srv_conn_post(struct conn *c, unsigned what);
void srv_post_done(struct conn *c, struct wdone *d);
void srv_conn_resume(struct conn *c);
void srv_waitlist_push(struct waitlist *wl, struct conn *c);
void srv_waitlist_remove(struct conn *c);
struct conn *srv_waitlist_pop(struct waitlist *wl);
void srv_waitlist_move(struct waitlist *dst, struct waitlist *src);
void srv_waitlist_wake(struct waitlist *wl);
void srv_wait_for(struct conn *c, struct waitlist *wl);

/* srv_auth.c */
int srv_conn_authenticate(struct conn *c, const char *p, size_t n, size_t *consumed);

/* srv_gate.c */
const char *srv_replica_addr(const struct server *srv, uint32_t id, char *buf, size_t cap);
bool srv_peer_auth_refused(const struct server *srv, uint32_t id);
int srv_write_run(struct server *srv, bool clean);
uint64_t srv_ceiling_at(uint64_t seq_us);
void srv_ceiling_refresh(struct server *srv);
int srv_ceiling_cover(struct server *srv, uint64_t txid);
bool srv_link_up(void *arg, uint32_t id);
bool srv_clocks_allow_writes(struct server *srv, struct skew_verdict *v);
void srv_fmt_clock_verdict(struct server *srv, const struct skew_verdict *v, char *dst,
                           size_t cap);
int srv_reply_clock_skew(struct server *srv, struct outq *o, bool write);
const char *srv_replica_name(struct server *srv, uint32_t id, char *dst, size_t cap);
int srv_reply_not_current(struct server *srv, struct outq *o, bool noreply);
bool srv_fence_must_wait(struct server *srv, struct conn *c);

/* srv_stats.c */
void srv_count_write(struct server *srv, enum proto_cmd cmd, enum store_status st);
int srv_exec_stats(struct server *srv, struct outq *o, const struct proto_req *req);

/* srv_snap.c */
int srv_start_snapshot(struct server *srv);
void srv_snapshot_answer(struct waitlist *wl, const char *line);
void srv_snapshot_check(struct server *srv);
void srv_on_sigchld(uv_signal_t *h, int signum);
void srv_snapshot_maybe(struct server *srv);

/* srv_read.c */
int srv_exec_retrieval(struct server *srv, struct conn *c, const struct proto_req *req);

/* srv_write.c */
const char *srv_write_reply(enum proto_cmd cmd, enum store_status st);
int srv_reply_write_done(struct outq *o, enum proto_cmd cmd, bool too_large,
                         uint64_t number);
int srv_reply_log_failed(struct server *srv, struct outq *o);
int srv_reply_write_failed(struct server *srv, struct outq *o);
void srv_op_of_request(const struct server *srv, const struct proto_req *req,
                       struct store_op *op);
void srv_log_write_free(struct log_write *w);
int srv_prepare_write(struct server *srv, const struct proto_req *req, uint64_t version,
                      void *owner, struct store_change *ch, size_t *nch,
                      enum store_status *st);
int srv_exec_write(struct server *srv, struct conn *c, const struct proto_req *req);

/* srv_cluster.c */
int srv_reply_txn_failed(struct server *srv, struct outq *o, enum tpc_reason why,
                         uint32_t culprit, unsigned attempts);
void srv_schedule_retry(struct server *srv, struct conn *c);
void srv_after_tpc(struct server *srv);
void srv_env_send(void *ctx, const struct tpc_msg *m);
int64_t srv_env_log(void *ctx, enum tpc_log_type type, const struct tpc_txn *t);
int srv_env_prepare(void *ctx, const struct tpc_txn *t, void **handle);
void srv_env_commit(void *ctx, const struct tpc_txn *t, void *handle);
void srv_env_abort(void *ctx, const struct tpc_txn *t, void *handle);
void srv_env_done(void *ctx, void *client, uint64_t txid, bool committed,
                  enum tpc_reason reason, uint32_t culprit);
void srv_on_tpc_tick(uv_timer_t *h);
int srv_exec_write_cluster(struct server *srv, struct conn *c,
                           const struct proto_req *req);
void srv_expire_step(struct server *srv);

/* srv_exec.c */
int srv_execute(struct server *srv, struct conn *c, const struct proto_req *req);
void srv_lock_wait_timeouts(struct server *srv);

/* srv_peers.c */
void srv_skew_changed(struct server *srv);
void srv_clock_probe(struct server *srv);
void srv_clock_step_check(struct server *srv);
int srv_cluster_open(struct server *srv, struct recover_ledger *ledger, char *err,
                     size_t cap);
int srv_cluster_listen(struct server *srv, char *err, size_t cap);

/* srv_udp.c */
void srv_udp_send_reply(struct server *srv, uint16_t req_id, const char *reply_bytes,
                        size_t n, const struct sockaddr *addr);

/* srv_conn.c */
int srv_consume_front(struct server *srv, struct conn *c, bool run_retrieval);
void srv_conn_link(struct server *srv, struct conn *c);
void srv_conn_free(struct conn *c);
void srv_conn_close(struct conn *c, const char *why);
void srv_conn_flush(struct conn *c);
void srv_conn_set_reading(struct conn *c, bool on);
void srv_prefetch_parsed(struct server *srv, const struct parsed *p, size_t np);
void srv_conn_process(struct conn *c);
void srv_conn_process_parsed(struct conn *c, struct parsed *pre);
void srv_conn_run_posted(struct conn *c);
void srv_lt_run_ready(struct lthread *lt);
void srv_lt_flush(struct lthread *lt);

/* srv_listen.c */
void srv_reject_on_close(uv_handle_t *h);
void srv_addr_name(const struct sockaddr_storage *ss, char *dst, size_t cap);
int srv_addr_port(const struct sockaddr_storage *ss);
void srv_on_connection(uv_stream_t *listener, int status);
void srv_conn_start(struct conn *c);
void srv_udp_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
void srv_udp_on_recv(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf,
                     const struct sockaddr *addr, unsigned flags);

/* srv_loop.c */
void srv_on_wal_batch(void *arg);
int srv_lt_start(struct server *srv, char *err, size_t cap);
void srv_lt_stop_all(struct server *srv);
void srv_lt_run_inboxes(struct server *srv);
void srv_lt_close_main(struct server *srv);
void srv_lt_sweep(struct lthread *lt);
bool srv_sweep_wanted(const struct server *srv);
void srv_conn_check_time(struct conn *c, uint64_t now);

#endif
