/*
 * server.c - serve's network side: libuv TCP and UDP on one port, and the
 * execution of parsed requests against the store.
 *
 * TCP connection life:
 *
 *   accept --> READING --(request complete)--> execute, queue reply
 *                 ^  |                              |
 *                 |  +--(reply queue > max)--> BLOCKED (not reading) --+
 *                 +--------------(client drained replies)--------------+
 *   any state --(EOF, error, quit, PROTO_CLOSE, idle)--> CLOSING --> freed
 *
 * Input is read into a per-connection buffer; every complete request in it is
 * parsed and executed in order, and their replies leave in one write. The
 * buffer grows to hold one request at most (a line, or a line and its data
 * block) and shrinks back when idle. A data block over --max-value is never
 * buffered: the connection discards ("swallows") it as it arrives.
 *
 * Replies reference stored items instead of copying values (outq.h). If a
 * client stops reading, its queue stops growing at --max-output: the server
 * stops reading that client's requests until the queue drains (backpressure,
 * other clients are unaffected).
 *
 * UDP: each datagram carries memcached's 8-byte header and whole requests;
 * the reply is cut into datagrams of at most 1392 payload bytes with the same
 * request id, numbered 0..n-1. Malformed datagrams are counted and dropped.
 *
 * Writes are executed as store_prepare + store_commit at once: this is the
 * single-replica, in-memory path. The write-ahead log and two-phase commit
 * will sit between the two calls.
 */
#include "server.h"

#include "limits.h"
#include "log.h"
#include "outq.h"
#include "proto.h"
#include "store.h"
#include "util.h"

#include <assert.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <unistd.h>

#define MOD "server"
#define IOV_BATCH 64
#define EXPIRE_INTERVAL_MS 100
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
};

struct conn;

struct server {
    uv_loop_t *loop;
    struct server_config cfg;
    struct proto_limits lim;
    struct store *store;
    uv_tcp_t tcp;
    uv_udp_t udp;
    uv_timer_t timer;
    bool tcp_open, udp_open, timer_open, stopping;
    int port;
    struct conn *conns; /* doubly linked list of open connections */
    size_t nconns;
    uint64_t next_conn_id;
    uint64_t next_cas;
    uint64_t started_mono_ns;
    int64_t now_ms; /* wall clock, read once per event */
    enum log_level log_base; /* the level serve started with ("verbosity 0") */
    struct counters st;
    char *udp_rbuf;
};

struct conn {
    uv_tcp_t tcp; /* first: the handle's address is the conn's */
    struct server *srv;
    struct conn *prev, *next;
    uint64_t id;
    char *rbuf;
    size_t rlen, rcap;
    size_t need;      /* don't parse until rlen >= need */
    uint64_t swallow; /* bytes still to discard (a refused data block) */
    struct outq out;
    uv_write_t wreq;
    size_t in_flight; /* bytes handed to uv_write */
    bool reading;
    bool closing;
    bool close_after_flush;
    uint64_t last_active_ms;
    /* keys [prefix] streams its reply: the point-in-time list and position. */
    struct item **keys;
    size_t nkeys, keys_pos;
    char peer[INET6_ADDRSTRLEN + 8];
};

/* ---- helpers ---------------------------------------------------------------- */

static void refresh_now(struct server *srv)
{
    srv->now_ms = util_now_unix_ms();
}

void server_config_defaults(struct server_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->host = "127.0.0.1";
    cfg->port = 11211;
    cfg->tcp = true;
    cfg->udp = false;
    cfg->max_conns = LIMIT_CONNS_DEFAULT;
    cfg->max_memory_bytes = (uint64_t)LIMIT_MEMORY_MB_DEFAULT * 1024 * 1024;
    cfg->value_bytes_max = LIMIT_VALUE_BYTES_DEFAULT;
    cfg->get_line_bytes_max = LIMIT_GET_LINE_BYTES_DEFAULT;
    cfg->get_keys_max = LIMIT_GET_KEYS_DEFAULT;
    cfg->conn_output_bytes_max = LIMIT_CONN_OUTPUT_BYTES_DEFAULT;
    cfg->idle_timeout_s = LIMIT_IDLE_TIMEOUT_S_DEFAULT;
}

static const char *esc_key(char *dst, size_t cap, const char *k, size_t n)
{
    return log_escape(dst, cap, k, n);
}

/* ---- executing requests ----------------------------------------------------- */

/* What a request asks of its connection afterwards. */
enum after {
    AFTER_CONTINUE,
    AFTER_CLOSE, /* quit: close once the replies are out */
    AFTER_KEYS,  /* stream the collected key list */
};

/* Queues reply text. An allocation failure here means the server is out of
 * memory; the connection is closed rather than sending a partial reply. */
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

/* The single-replica write path: evaluate, then commit at once. */
static enum store_status apply_op(struct server *srv, const struct store_op *op,
                                  struct store_change *ch)
{
    return store_apply(srv->store, op, srv->next_cas++, srv->now_ms, ch);
}

static int exec_write(struct server *srv, struct outq *o, const struct proto_req *req)
{
    struct store_op op = {0};
    struct store_change ch;
    enum store_status st;

    if (req->too_large) {
        /* memcached drops the old value of a set that was refused for size,
         * so a reader never mistakes it for the new one. */
        if (req->cmd == PROTO_CMD_SET) {
            op.type = STORE_DELETE;
            op.key = req->key;
            op.nkey = req->nkey;
            apply_op(srv, &op, &ch);
        }
        srv->st.store_too_large++;
        srv->st.cmd_set++;
        return req->noreply ? 0 : reply(o, "SERVER_ERROR object too large for cache\r\n");
    }

    op.type = op_type_of(req->cmd);
    op.key = req->key;
    op.nkey = req->nkey;
    op.value = req->data;
    op.nvalue = req->ndata;
    op.flags = req->flags;
    op.cas = req->cas;
    op.delta = req->delta;
    op.exptime_ms = proto_exptime_abs_ms(req->exptime, srv->now_ms);
    if (req->cmd == PROTO_CMD_FLUSH_ALL)
        op.flush_at_ms = req->delay > 0 ? proto_exptime_abs_ms(req->delay, srv->now_ms) : 0;

    st = apply_op(srv, &op, &ch);
    count_write(srv, req->cmd, st);
    if (log_enabled(LOG_LEVEL_DEBUG)) {
        char k[96];
        log_debug(MOD, "%s %s (%zu bytes) -> %s", proto_cmd_name(req->cmd),
                  esc_key(k, sizeof(k), req->key, req->nkey), req->ndata,
                  store_status_name(st));
    }
    if (req->noreply)
        return 0;
    if (st == STORE_OK && (req->cmd == PROTO_CMD_INCR || req->cmd == PROTO_CMD_DECR)) {
        char num[24];
        size_t n = util_fmt_u64(num, ch.number);
        memcpy(num + n, "\r\n", 2);
        return outq_text(o, num, n + 2);
    }
    return reply(o, write_reply(req->cmd, st));
}

static int exec_retrieval(struct server *srv, struct outq *o, const struct proto_req *req)
{
    bool with_cas = req->cmd == PROTO_CMD_GETS || req->cmd == PROTO_CMD_GATS;
    bool touch = req->cmd == PROTO_CMD_GAT || req->cmd == PROTO_CMD_GATS;
    int64_t exptime_ms = touch ? proto_exptime_abs_ms(req->exptime, srv->now_ms) : 0;
    size_t pos = 0, nk;
    const char *k;
    char hdr[PROTO_VALUE_HDR_MAX];
    int r;

    while (proto_next_key(req, &pos, &k, &nk)) {
        struct item *it;
        srv->st.cmd_get++;
        if (touch) {
            struct store_op op = {.type = STORE_TOUCH, .key = k, .nkey = nk,
                                  .exptime_ms = exptime_ms};
            struct store_change ch;
            srv->st.cmd_touch++;
            if (apply_op(srv, &op, &ch) == STORE_OK)
                srv->st.touch_hits++;
            else
                srv->st.touch_misses++;
        }
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
        log_debug(MOD, "%s %zu key(s): %s", proto_cmd_name(req->cmd), req->nkeys,
                  esc_key(ks, sizeof(ks), req->keys + skip, req->keys_len - skip));
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
    char line[256];
    int n = snprintf(line, sizeof(line), "STAT %s %s\r\n", name, v);
    outq_text(o, line, (size_t)n);
}

static int exec_stats(struct server *srv, struct outq *o, const struct proto_req *req)
{
    const struct server_config *cfg = &srv->cfg;
    struct counters *c = &srv->st;
    struct store_stats ss;
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
        stat_u64(o, "idle_timeout", cfg->idle_timeout_s);
        stat_str(o, "evictions", "off");
        stat_u64(o, "num_threads", 1);
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
    stat_u64(o, "bytes_written", c->bytes_written);
    stat_u64(o, "udp_requests", c->udp_requests);
    stat_u64(o, "udp_replies", c->udp_replies);
    stat_u64(o, "udp_dropped", c->udp_dropped);
    stat_u64(o, "limit_maxbytes", cfg->max_memory_bytes);
    stat_u64(o, "threads", 1);
    stat_u64(o, "curr_items", ss.curr_items);
    stat_u64(o, "total_items", ss.total_items);
    stat_u64(o, "bytes", ss.bytes);
    stat_u64(o, "expired_reclaimed", ss.expired_reclaimed);
    stat_u64(o, "evictions", 0);
    stat_u64(o, "hash_buckets", ss.hash_buckets);
    stat_u64(o, "hash_bytes", ss.hash_bytes);
    stat_u64(o, "hash_is_expanding", ss.hash_is_expanding);
    return reply(o, "END\r\n");
}

/*
 * Executes one request, queueing its reply on o. c is NULL for UDP. Returns
 * what the connection must do next, or -ENOMEM.
 */
static int execute(struct server *srv, struct conn *c, struct outq *o,
                   const struct proto_req *req)
{
    int r = 0;

    if (proto_cmd_is_write(req->cmd))
        return exec_write(srv, o, req);

    switch (req->cmd) {
    case PROTO_CMD_GET:
    case PROTO_CMD_GETS:
    case PROTO_CMD_GAT:
    case PROTO_CMD_GATS:
        return exec_retrieval(srv, o, req);
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
    case PROTO_CMD_KEYS: {
        struct item **items;
        long n = store_collect(srv->store, req->arg, req->narg, srv->now_ms, &items);
        if (n < 0)
            return reply(o, "SERVER_ERROR out of memory listing keys\r\n");
        if (c == NULL) {
            /* UDP: the whole list goes in this reply. */
            for (long i = 0; i < n && r == 0; i++) {
                if ((r = outq_text(o, "KEY ", 4)) == 0 &&
                    (r = outq_text(o, item_key(items[i]), items[i]->nkey)) == 0)
                    r = outq_text(o, "\r\n", 2);
            }
            for (long i = 0; i < n; i++)
                item_unref(items[i]);
            free(items);
            return r ? r : reply(o, "END\r\n");
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

/* ---- TCP connections ------------------------------------------------------- */

static void conn_flush(struct conn *c);
static void conn_process(struct conn *c);

static void conn_on_close(uv_handle_t *h)
{
    struct conn *c = (struct conn *)h;
    struct server *srv = c->srv;

    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    srv->nconns--;
    for (size_t i = c->keys_pos; i < c->nkeys; i++)
        item_unref(c->keys[i]);
    free(c->keys);
    outq_free(&c->out);
    free(c->rbuf);
    log_debug(MOD, "conn %llu closed", (unsigned long long)c->id);
    free(c);
}

static void conn_close(struct conn *c, const char *why)
{
    if (c->closing)
        return;
    c->closing = true;
    if (why)
        log_info(MOD, "conn %llu from %s closed: %s", (unsigned long long)c->id, c->peer, why);
    uv_close((uv_handle_t *)&c->tcp, conn_on_close);
}

/* Emits queued "KEY" lines while the output queue has room. */
static void conn_stream_keys(struct conn *c)
{
    struct outq *o = &c->out;

    while (c->keys && c->keys_pos < c->nkeys && o->bytes < c->srv->cfg.conn_output_bytes_max) {
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

    outq_consume(&c->out, c->in_flight);
    c->srv->st.bytes_written += status == 0 ? c->in_flight : 0;
    c->in_flight = 0;
    if (status < 0) {
        if (status != UV_ECANCELED)
            conn_close(c, uv_strerror(status));
        return;
    }
    if (c->closing)
        return;
    /* Output drained: finish a keys listing, then any requests that waited. */
    conn_stream_keys(c);
    if (!c->closing)
        conn_process(c);
    if (!c->closing)
        conn_flush(c);
}

static void conn_flush(struct conn *c)
{
    struct iovec iov[IOV_BATCH];
    uv_buf_t bufs[IOV_BATCH];
    size_t n, total = 0;
    int r;

    if (c->closing || c->in_flight)
        return;
    if (c->out.bytes == 0) {
        if (c->close_after_flush)
            conn_close(c, NULL);
        return;
    }
    n = outq_iov(&c->out, iov, IOV_BATCH);
    for (size_t i = 0; i < n; i++) {
        bufs[i] = uv_buf_init(iov[i].iov_base, (unsigned)iov[i].iov_len);
        total += iov[i].iov_len;
    }
    c->wreq.data = c;
    r = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, bufs, (unsigned)n, conn_on_write);
    if (r < 0) {
        conn_close(c, uv_strerror(r));
        return;
    }
    c->in_flight = total;
}

static void conn_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void conn_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);

static void conn_set_reading(struct conn *c, bool on)
{
    if (c->closing || c->reading == on)
        return;
    c->reading = on;
    if (!on)
        uv_read_stop((uv_stream_t *)&c->tcp);
    else if (uv_read_start((uv_stream_t *)&c->tcp, conn_alloc, conn_on_read) < 0)
        conn_close(c, "cannot read");
}

/* Parses and executes every complete request in the read buffer. */
static void conn_process(struct conn *c)
{
    struct server *srv = c->srv;
    size_t pos = 0;

    refresh_now(srv);
    while (!c->closing && !c->close_after_flush && c->keys == NULL) {
        struct proto_req req;
        size_t consumed;
        enum proto_status st;
        int r = 0;

        if (c->out.bytes >= srv->cfg.conn_output_bytes_max)
            break; /* backpressure: resume from conn_on_write */
        if (c->rlen - pos == 0 || c->rlen - pos < c->need)
            break;
        st = proto_parse(c->rbuf + pos, c->rlen - pos, &srv->lim, &req, &consumed);
        if (st == PROTO_NEED_MORE) {
            c->need = req.need;
            break;
        }
        c->need = 0;
        if (st == PROTO_CLOSE) {
            srv->st.protocol_closes++;
            /* Replies to earlier requests still go out, then we hang up. */
            log_info(MOD, "conn %llu from %s: %s; closing", (unsigned long long)c->id, c->peer,
                     req.error);
            c->close_after_flush = true;
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
            r = execute(srv, c, &c->out, &req);
        }
        /* A refused data block may extend past what we have: swallow the rest. */
        if (consumed > c->rlen - pos) {
            c->swallow = consumed - (c->rlen - pos);
            pos = c->rlen;
        } else {
            pos += consumed;
        }
        if (r < 0) {
            conn_close(c, "out of memory");
            return;
        }
        if (r == AFTER_CLOSE)
            c->close_after_flush = true;
        else if (r == AFTER_KEYS)
            conn_stream_keys(c);
    }
    if (c->closing)
        return;

    /* Keep the unparsed tail at the front of the buffer. */
    if (pos > 0) {
        memmove(c->rbuf, c->rbuf + pos, c->rlen - pos);
        c->rlen -= pos;
    }
    if (c->rlen == 0 && c->rcap > LIMIT_READ_BUF_BYTES_KEEP) {
        free(c->rbuf);
        c->rbuf = NULL;
        c->rcap = 0;
    }
    bool blocked = c->out.bytes >= srv->cfg.conn_output_bytes_max || c->keys != NULL;
    conn_set_reading(c, !blocked && !c->close_after_flush);
    conn_flush(c);
}

static void conn_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct conn *c = (struct conn *)h;
    struct server *srv = c->srv;
    size_t want;

    (void)suggested;
    if (c->swallow) {
        /* Reuse the buffer as a sink; what arrives is discarded. */
        want = c->rlen + LIMIT_READ_BUF_BYTES_INITIAL;
    } else if (c->need > c->rlen) {
        want = c->need; /* a data block is on its way: room for all of it */
    } else if (c->rcap - c->rlen < 4096) {
        /* A line without its newline yet: grow, up to the retrieval limit
         * plus one byte so the parser can see it is too long. */
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

static void conn_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = (struct conn *)s;

    (void)buf;
    if (nread == 0)
        return;
    if (nread < 0) {
        conn_close(c, nread == UV_EOF ? NULL : uv_strerror((int)nread));
        return;
    }
    c->srv->st.bytes_read += (uint64_t)nread;
    c->rlen += (size_t)nread;
    c->last_active_ms = (uint64_t)(util_mono_ns() / 1000000u);
    if (c->swallow) {
        size_t d = c->rlen < c->swallow ? c->rlen : (size_t)c->swallow;
        memmove(c->rbuf, c->rbuf + d, c->rlen - d);
        c->rlen -= d;
        c->swallow -= d;
        if (c->swallow)
            return;
    }
    conn_process(c);
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

static void on_connection(uv_stream_t *listener, int status)
{
    struct server *srv = listener->data;
    struct conn *c;

    if (status < 0) {
        log_warn(MOD, "accept: %s", uv_strerror(status));
        return;
    }
    if (srv->nconns >= srv->cfg.max_conns) {
        uv_tcp_t *t = malloc(sizeof(*t));
        if (t == NULL)
            return;
        uv_tcp_init(srv->loop, t);
        if (uv_accept(listener, (uv_stream_t *)t) == 0) {
            log_warn(MOD, "connection refused: %zu open, --max-conns is %zu", srv->nconns,
                     srv->cfg.max_conns);
            reject_conn(srv, t);
        } else {
            uv_close((uv_handle_t *)t, reject_on_close);
        }
        return;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return;
    c->srv = srv;
    uv_tcp_init(srv->loop, &c->tcp);
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) < 0) {
        uv_close((uv_handle_t *)&c->tcp, reject_on_close);
        return;
    }
    outq_init(&c->out, false);
    c->id = ++srv->next_conn_id;
    c->last_active_ms = (uint64_t)(util_mono_ns() / 1000000u);
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    srv->nconns++;
    srv->st.total_connections++;
    uv_tcp_nodelay(&c->tcp, 1);

    struct sockaddr_storage ss;
    int len = sizeof(ss);
    char host[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET6) {
            uv_ip6_name((struct sockaddr_in6 *)&ss, host, sizeof(host));
            port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
        } else {
            uv_ip4_name((struct sockaddr_in *)&ss, host, sizeof(host));
            port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        }
    }
    snprintf(c->peer, sizeof(c->peer), "%s:%d", host, port);
    log_debug(MOD, "conn %llu from %s", (unsigned long long)c->id, c->peer);
    conn_set_reading(c, true);
}

/* ---- UDP --------------------------------------------------------------------- */

struct udp_send {
    struct server *srv;
    unsigned pending;
    uv_udp_send_t *reqs;
    char *data;
};

static void udp_on_send(uv_udp_send_t *req, int status)
{
    struct udp_send *us = req->data;

    if (status < 0 && status != UV_ECANCELED)
        log_debug(MOD, "udp send: %s", uv_strerror(status));
    if (--us->pending == 0) {
        free(us->reqs);
        free(us->data);
        free(us);
    }
}

/* Cuts reply[0..n) into datagrams for req_id and sends them to addr. */
static void udp_send_reply(struct server *srv, uint16_t req_id, const char *reply_bytes,
                           size_t n, const struct sockaddr *addr)
{
    size_t count = proto_udp_datagrams(n);
    const size_t dg = LIMIT_UDP_HEADER_BYTES + LIMIT_UDP_PAYLOAD_BYTES;
    struct udp_send *us;

    if (count == 0)
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
        free(us->reqs);
        free(us->data);
        free(us);
        return;
    }
    us->srv = srv;
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
        if (uv_udp_send(&us->reqs[i], &srv->udp, &b, 1, addr, udp_on_send) < 0) {
            /* Not sent: account for it as if its callback ran. */
            if (--us->pending == 0) {
                free(us->reqs);
                free(us->data);
                free(us);
                return;
            }
        }
    }
    srv->st.udp_replies++;
    srv->st.bytes_written += n;
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
    struct outq o;
    size_t pos, len;

    if (nread == 0 && addr == NULL)
        return; /* nothing more to read */
    if (nread < 0) {
        log_warn(MOD, "udp receive: %s", uv_strerror((int)nread));
        return;
    }
    srv->st.bytes_read += (uint64_t)nread;
    if ((flags & UV_UDP_PARTIAL) || addr == NULL ||
        proto_udp_decode(buf->base, (size_t)nread, &hdr) < 0) {
        srv->st.udp_dropped++;
        log_debug(MOD, "udp: dropped a malformed datagram of %zd bytes", nread);
        return;
    }
    srv->st.udp_requests++;
    refresh_now(srv);
    outq_init(&o, true);
    pos = LIMIT_UDP_HEADER_BYTES;
    len = (size_t)nread;
    while (pos < len) {
        struct proto_req req;
        size_t consumed;
        enum proto_status st = proto_parse(buf->base + pos, len - pos, &srv->lim, &req, &consumed);
        int r = 0;

        if (st == PROTO_NEED_MORE) {
            /* A UDP request must be whole in its datagram. */
            r = reply_line(&o, "CLIENT_ERROR incomplete request: a UDP request must fit one "
                               "datagram");
            pos = len;
        } else if (st == PROTO_CLOSE) {
            srv->st.udp_dropped++;
            pos = len;
        } else if (st == PROTO_ERROR) {
            if (!req.noreply)
                r = reply_line(&o, req.error);
            pos += consumed;
        } else {
            /* A refused data block cannot continue into another datagram. */
            r = execute(srv, NULL, &o, &req);
            pos += consumed;
            if (r == AFTER_CLOSE)
                pos = len; /* quit: nothing to close, drop the rest */
        }
        if (r < 0) {
            outq_free(&o);
            return;
        }
    }
    if (o.bytes)
        udp_send_reply(srv, hdr.req_id, o.flatbuf.data, o.flatbuf.len, addr);
    outq_free(&o);
}

/* ---- timers, lifecycle ------------------------------------------------------ */

static void on_timer(uv_timer_t *t)
{
    struct server *srv = t->data;

    refresh_now(srv);
    store_expire_step(srv->store, srv->now_ms, EXPIRE_BUCKETS_PER_TICK);
    if (srv->cfg.idle_timeout_s) {
        uint64_t now = util_mono_ns() / 1000000u;
        uint64_t limit = (uint64_t)srv->cfg.idle_timeout_s * 1000;
        for (struct conn *c = srv->conns, *next; c; c = next) {
            next = c->next;
            if (!c->closing && now - c->last_active_ms > limit && c->out.bytes == 0) {
                srv->st.idle_kicks++;
                conn_close(c, "idle timeout");
            }
        }
    }
}

struct server *server_new(uv_loop_t *loop, const struct server_config *cfg, int *err)
{
    struct server *srv;
    struct store_config sc = {0};

    if (cfg->max_conns == 0 || cfg->value_bytes_max == 0 ||
        cfg->value_bytes_max > LIMIT_VALUE_BYTES_CEILING || cfg->get_keys_max == 0 ||
        cfg->get_line_bytes_max < LIMIT_LINE_BYTES_MAX || cfg->conn_output_bytes_max == 0 ||
        (!cfg->tcp && !cfg->udp)) {
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
    srv->lim.value_bytes_max = cfg->value_bytes_max;
    srv->lim.get_line_bytes_max = cfg->get_line_bytes_max;
    srv->lim.get_keys_max = cfg->get_keys_max;
    srv->next_cas = 1;
    srv->log_base = log_get_level();
    srv->started_mono_ns = util_mono_ns();
    sc.max_bytes = cfg->max_memory_bytes;
    sc.value_bytes_max = cfg->value_bytes_max;
    sc.seed = cfg->hash_seed;
    if (sc.seed == 0 && getrandom(&sc.seed, sizeof(sc.seed), 0) != sizeof(sc.seed))
        sc.seed = util_mono_ns();
    srv->store = store_new(&sc);
    srv->udp_rbuf = malloc(LIMIT_UDP_REQUEST_BYTES_MAX);
    if (srv->store == NULL || srv->udp_rbuf == NULL) {
        store_free(srv->store);
        free(srv->udp_rbuf);
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
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    return 0;
}

static void addr_name(const struct sockaddr_storage *ss, char *dst, size_t cap)
{
    if (ss->ss_family == AF_INET6)
        uv_ip6_name((const struct sockaddr_in6 *)ss, dst, cap);
    else
        uv_ip4_name((const struct sockaddr_in *)ss, dst, cap);
}

static int bound_port(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
    return ntohs(((const struct sockaddr_in *)ss)->sin_port);
}

int server_start(struct server *srv)
{
    struct sockaddr_storage ss;
    char name[INET6_ADDRSTRLEN];
    int r, len;

    r = resolve(srv->cfg.host, srv->cfg.port, &ss);
    if (r < 0)
        return r;
    addr_name(&ss, name, sizeof(name));
    srv->port = srv->cfg.port;

    if (srv->cfg.tcp) {
        uv_tcp_init(srv->loop, &srv->tcp);
        srv->tcp.data = srv;
        srv->tcp_open = true;
        if ((r = uv_tcp_bind(&srv->tcp, (struct sockaddr *)&ss, 0)) < 0 ||
            (r = uv_listen((uv_stream_t *)&srv->tcp, 1024, on_connection)) < 0)
            goto fail;
        len = sizeof(ss);
        uv_tcp_getsockname(&srv->tcp, (struct sockaddr *)&ss, &len);
        srv->port = bound_port(&ss);
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
            goto fail;
        len = sizeof(ss);
        uv_udp_getsockname(&srv->udp, (struct sockaddr *)&ss, &len);
        srv->port = bound_port(&ss);
    }
    uv_timer_init(srv->loop, &srv->timer);
    srv->timer.data = srv;
    srv->timer_open = true;
    uv_timer_start(&srv->timer, on_timer, EXPIRE_INTERVAL_MS, EXPIRE_INTERVAL_MS);
    log_info(MOD, "listening on %s%s%s %s port %d (max %zu connections, %llu MiB, values up to "
             "%zu bytes)",
             srv->cfg.tcp ? "tcp" : "", srv->cfg.tcp && srv->cfg.udp ? "+" : "",
             srv->cfg.udp ? "udp" : "", name, srv->port, srv->cfg.max_conns,
             (unsigned long long)(srv->cfg.max_memory_bytes >> 20), srv->cfg.value_bytes_max);
    return 0;
fail:
    server_stop(srv);
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
    srv->tcp_open = srv->udp_open = srv->timer_open = false;
    for (struct conn *c = srv->conns; c; c = c->next)
        conn_close(c, NULL);
}

void server_free(struct server *srv)
{
    if (srv == NULL)
        return;
    assert(srv->conns == NULL);
    store_free(srv->store);
    free(srv->udp_rbuf);
    free(srv);
}
