/*
 * srv_exec.c - runs one parsed request against the store: retrievals at
 * once, writes by the single-replica path (srv_write.c) or under two-phase
 * commit (srv_cluster.c), the rest (stats, version, verbosity...) here.
 * Also the wait lists on which a request that cannot run yet waits, and the
 * bound on how long it may wait (--lock-wait-ms).
 */

#include "srv.h"

static bool read_waits_for_txn(struct server *srv, struct conn *c,
                               const struct proto_req *req);

/*
 * Executes one request, queueing its reply on c->out. Returns what the
 * connection must do next (enum after), or -ENOMEM.
 */
int srv_execute(struct server *srv, struct conn *c, const struct proto_req *req)
{
    struct outq *o = &c->out;
    int r = 0;

    if ((req->cmd == PROTO_CMD_GAT || req->cmd == PROTO_CMD_GATS) && req->nkeys == 0)
        return reply(o, "END\r\n"); /* "gat <exptime>" and no key: memcached's answer */
    if (proto_cmd_is_write(req->cmd) || req->too_large || req->cmd == PROTO_CMD_GAT ||
        req->cmd == PROTO_CMD_GATS)
        return srv->cluster ? srv_exec_write_cluster(srv, c, req)
                            : srv_exec_write(srv, c, req);

    switch (req->cmd) {
    case PROTO_CMD_GET:
    case PROTO_CMD_GETS:
        if (srv->cluster && srv_fence_must_wait(srv, c))
            return AFTER_WAIT;
        if (srv->cluster && (r = srv_reply_not_current(srv, o, false)) <= 0)
            return r;
        if (srv->cluster && (r = srv_reply_clock_skew(srv, o, false)) <= 0)
            return r;
        if (srv->cluster && read_waits_for_txn(srv, c, req))
            return AFTER_WAIT;
        c->wait_since_ms = 0;
        return srv_exec_retrieval(srv, c, req);
    case PROTO_CMD_VERSION:
        return reply(o, "VERSION " PROTO_VERSION_STRING "\r\n");
    case PROTO_CMD_VERBOSITY: {
        /* memcached's 0 is its normal level: ours is the one serve started
         * with. 1 raises it to at least info, 2 and up to debug. */
        enum log_level lvl =
            req->verbosity == 0 ? srv->log_base
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
        return srv_exec_stats(srv, o, req);
    case PROTO_CMD_QUIT:
        return AFTER_CLOSE;
    case PROTO_CMD_SNAPSHOT:
        /* Answered when a snapshot that includes every write committed so
         * far is durable. */
        if (srv->snap_pid == 0) {
            if ((r = srv_start_snapshot(srv)) < 0) {
                char line[128];
                snprintf(line, sizeof(line), "SERVER_ERROR cannot snapshot: %s\r\n",
                         strerror(-r));
                return reply(o, line);
            }
            srv_waitlist_push(&srv->snap_cur, c);
        } else {
            srv_waitlist_push(&srv->snap_next, c);
        }
        return AFTER_PENDING;
    case PROTO_CMD_KEYS: {
        struct item **items;
        if (srv->cluster && srv_fence_must_wait(srv, c))
            return AFTER_WAIT;
        if (srv->cluster && (r = srv_reply_not_current(srv, o, false)) <= 0)
            return r;
        if (srv->cluster && (r = srv_reply_clock_skew(srv, o, false)) <= 0)
            return r;
        if (srv->cluster) {
            /* As a get waits for a held key: a prepared transaction on a
             * key of the list may be one another replica acknowledged. */
            struct txn_prep *p = txn_holder_prefix(&srv->rm, req->arg, req->narg);
            if (p) {
                srv->counters.reads_waited++;
                srv_wait_for(c, &((struct txn_waiters *)p->user)->waiters);
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

/* Requests waiting for a transaction's outcome longer than --lock-wait-ms
 * get an error (the transaction's coordinator may be down). */
void srv_lock_wait_timeouts(struct server *srv)
{
    uint64_t now = srv_mono_ms();

    for (struct conn *c = srv->conns, *next; c; c = next) {
        next = c->next;
        if (c->waiting == NULL || c->waiting == &srv->retry ||
            c->waiting == &srv->snap_cur || c->waiting == &srv->snap_next ||
            c->waiting == &srv->answered || c->wait_since_ms == 0 ||
            now - c->wait_since_ms < srv->cfg.lock_wait_ms || c->closing ||
            c->timeout_posted)
            continue;
        /* c stays on its list, so nothing runs its requests before its own
         * thread answers the timeout (lock_wait_expired), unless the wait
         * ends first: then the request runs after all. */
        c->timeout_posted = true;
        srv_conn_post(c, POST_LOCK_TIMEOUT);
    }
}

static bool read_waits_for_txn(struct server *srv, struct conn *c,
                               const struct proto_req *req)
{
    size_t pos = 0, nk;
    const char *k;

    while (proto_next_key(req, &pos, &k, &nk)) {
        struct txn_prep *p = txn_holder(&srv->rm, k, nk);
        if (p) {
            srv->counters.reads_waited++;
            srv_wait_for(c, &((struct txn_waiters *)p->user)->waiters);
            return true;
        }
    }
    return false;
}
