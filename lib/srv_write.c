/*
 * srv_write.c - a write on a single replica: store_prepare() evaluates its
 * condition against the committed state; a failed one is answered at once.
 * Otherwise the write locks its keys, appends its record to the log, and
 * commits and answers only once the log says the record is durable
 * (log_write_done). flush_all drains the writes in flight first.
 */

#include "srv.h"

const char *srv_write_reply(enum proto_cmd cmd, enum store_status st)
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
int srv_reply_write_done(struct outq *o, enum proto_cmd cmd, bool too_large,
                         uint64_t number)
{
    if (too_large)
        return reply(o, "SERVER_ERROR object too large for cache\r\n");
    if (cmd == PROTO_CMD_INCR || cmd == PROTO_CMD_DECR) {
        char num[24];
        size_t n = util_fmt_u64(num, number);
        memcpy(num + n, "\r\n", 2);
        return outq_text(o, num, n + 2);
    }
    return reply(o, srv_write_reply(cmd, STORE_OK));
}

int srv_reply_log_failed(struct server *srv, struct outq *o)
{
    char line[160];
    snprintf(line, sizeof(line),
             "SERVER_ERROR write-ahead log failed (%s): writes are refused\r\n",
             strerror(-wal_error(srv->wal)));
    return reply(o, line);
}

/* A write whose own log record was in the batch that failed: whether it is
 * on disk depends on whether the log could be cut back (wal_rolled_back). */
int srv_reply_write_failed(struct server *srv, struct outq *o)
{
    char line[256];

    if (wal_rolled_back(srv->wal))
        snprintf(line, sizeof(line),
                 "SERVER_ERROR write-ahead log failed (%s): the write was not done\r\n",
                 strerror(-wal_error(srv->wal)));
    else
        snprintf(
            line, sizeof(line),
            "SERVER_ERROR write-ahead log failed (%s): the write may or may not be on "
            "disk (known once serve restarts; do not assume either)\r\n",
            strerror(-wal_error(srv->wal)));
    return reply(o, line);
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

/* The store operation a single-key write request (or flush_all) asks for. */
void srv_op_of_request(const struct server *srv, const struct proto_req *req,
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
        op->flush_at_ms =
            req->delay > 0 ? proto_exptime_abs_ms(req->delay, srv->now_ms) : 0;
}

/* Encodes the WRITE record for w's changes into srv->scratch. */
static int encode_write(struct server *srv, struct log_write *w)
{
    struct wal_txn txn = {
        .txid = w->cas, .epoch = 0, .coordinator = 0, .nops = (uint32_t)w->nch};
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

void srv_log_write_free(struct log_write *w)
{
    if (w->ch != &w->one)
        free(w->ch);
    freelist_put(&w->srv->log_writes, w);
}

static void log_write_unlock(struct log_write *w)
{
    struct server *srv = w->srv;

    if (!w->locked)
        return;
    for (size_t i = 0; i < w->nch; i++)
        if (w->ch[i].type != STORE_FLUSH)
            store_unlock_change(srv->store, &w->ch[i], w);
    w->locked = false;
}

/* The log record of w is durable (status 0) or never will be: finish it. */
static void log_write_done(void *arg, uint64_t lsn, int status)
{
    struct log_write *w = arg;
    struct server *srv = w->srv;
    struct conn *c = w->c;

    srv_refresh_now(srv);
    if (status == 0) {
        for (size_t i = 0; i < w->nch; i++)
            store_commit(srv->store, &w->ch[i]);
        srv->applied_lsn = lsn;
    } else {
        for (size_t i = 0; i < w->nch; i++)
            store_abort(srv->store, &w->ch[i]);
        srv->counters.writes_failed++;
    }
    log_write_unlock(w);
    srv->npending--;
    if (srv->flush_write == w)
        srv->flush_write = NULL;

    struct waitlist waiters = {0};
    srv_waitlist_move(&waiters, &w->waiters);
    if (c == NULL) {
        srv_log_write_free(w);
    } else {
        /* c's thread answers, and frees w (srv_conn_run_posted). A gat's
         * request line is still at the front of c's buffer: read then. */
        w->done.ok = status == 0;
        w->done.kept = w->done.cmd == PROTO_CMD_GAT || w->done.cmd == PROTO_CMD_GATS;
        w->done.number = w->nch > 0 ? w->ch[0].number : 0;
        srv_post_done(c, &w->done);
    }
    srv_waitlist_wake(&waiters);
    if (srv->npending == 0)
        srv_waitlist_wake(&srv->barrier);
    srv_snapshot_maybe(srv);
}

/*
 * Blocks c until whatever holds one of the keys of the request finishes.
 * Returns true if c must wait.
 */
static bool write_must_wait(struct server *srv, struct conn *c, const struct proto_req *req)
{
    struct log_write *holder = NULL;

    if (srv->flush_write) {
        holder = srv->flush_write;
    } else if (srv->barrier.head ||
               (req->cmd == PROTO_CMD_FLUSH_ALL && srv->npending > 0)) {
        /* A flush waits for the writes in flight to drain, and writes that
         * come after it queue behind it (so it is not starved). */
        srv->counters.writes_waited++;
        srv_waitlist_push(&srv->barrier, c);
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
    srv->counters.writes_waited++;
    srv_waitlist_push(&holder->waiters, c);
    return true;
}

/*
 * Evaluates write request req on the local store, version its new CAS, for
 * both write paths (this one and srv_cluster.c). ch has room for
 * req->nkeys changes (gat, gats) or one.
 *   - gat: one touch per key present, each key locked by owner as it goes
 *     (a key listed twice is touched once; an absent one is unlocked
 *     again): on PREP_CHANGES, the keys of ch[0..*nch) are owner's.
 *   - a set refused for size: the delete of its old value (memcached drops
 *     it, so a reader never takes it for the new one); another command
 *     refused for size changes nothing: PREP_TOO_LARGE.
 *   - anything else: store_prepare(); a failed condition is PREP_FAILED
 *     with *st saying which (nothing to undo).
 * Counts touches and refusals for size; the caller counts the rest (it may
 * evaluate a request again). Returns an enum prep or -ENOMEM (the keys
 * locked so far, those of ch[0..*nch), still owner's).
 */
int srv_prepare_write(struct server *srv, const struct proto_req *req, uint64_t version,
                      void *owner, struct store_change *ch, size_t *nch,
                      enum store_status *st)
{
    struct store_op op;

    *nch = 0;
    *st = STORE_OK;
    if (req->cmd == PROTO_CMD_GAT || req->cmd == PROTO_CMD_GATS) {
        size_t pos = 0, nk;
        const char *k;
        memset(&op, 0, sizeof(op));
        op.type = STORE_TOUCH;
        op.exptime_ms = proto_exptime_abs_ms(req->exptime, srv->now_ms);
        while (proto_next_key(req, &pos, &k, &nk)) {
            void *holder;
            int r;
            srv->counters.cmd_touch++;
            r = store_lock(srv->store, k, nk, owner, &holder);
            if (r == -EDEADLK)
                continue; /* ours already: a repeat in the list */
            if (r < 0)
                return r;
            op.key = k;
            op.nkey = nk;
            if (store_prepare(srv->store, &op, version, srv->now_ms, &ch[*nch]) == 0) {
                (*nch)++;
                srv->counters.touch_hits++;
            } else {
                store_unlock(srv->store, k, nk, owner);
                srv->counters.touch_misses++;
            }
        }
        return *nch > 0 ? PREP_CHANGES : PREP_READ;
    }
    srv_op_of_request(srv, req, &op);
    if (req->too_large) {
        srv->counters.store_too_large++;
        srv->counters.cmd_set++;
        op.type = STORE_DELETE;
        if (req->cmd != PROTO_CMD_SET ||
            store_prepare(srv->store, &op, version, srv->now_ms, &ch[0]) < 0)
            return PREP_TOO_LARGE;
        *nch = 1;
        return PREP_CHANGES;
    }
    store_prepare(srv->store, &op, version, srv->now_ms, &ch[0]);
    *st = ch[0].status;
    if (*st != STORE_OK)
        return PREP_FAILED;
    *nch = 1;
    return PREP_CHANGES;
}

/* Runs a write: prepare, and either answer at once (condition failed) or
 * lock, log and wait for durability. */
int srv_exec_write(struct server *srv, struct conn *c, const struct proto_req *req)
{
    struct outq *o = &c->out;
    struct log_write *w;
    enum store_status st = STORE_OK;
    int r;

    if (wal_error(srv->wal)) {
        if (c->npending > 0)
            return AFTER_WAIT; /* our writes in the log are answered first */
        srv->counters.writes_failed++;
        return req->noreply ? 0 : srv_reply_log_failed(srv, o);
    }
    if (write_must_wait(srv, c, req))
        return AFTER_WAIT;

    w = freelist_get(&srv->log_writes);
    if (w == NULL)
        return -ENOMEM;
    w->srv = srv;
    memset(&w->done, 0, sizeof(w->done));
    w->done.kind = WDONE_LOG;
    w->done.cmd = req->cmd;
    w->done.noreply = req->noreply;
    w->cas = srv->next_cas++;
    w->ch = &w->one;
    w->done.too_large = req->too_large;
    if (req->nkeys > 1 && (w->ch = calloc(req->nkeys, sizeof(*w->ch))) == NULL) {
        freelist_put(&srv->log_writes, w);
        return -ENOMEM;
    }
    w->locked = req->cmd == PROTO_CMD_GAT || req->cmd == PROTO_CMD_GATS;
    r = srv_prepare_write(srv, req, w->cas, w, w->ch, &w->nch, &st);
    if (r < 0)
        goto fail;
    if (r == PREP_READ) {
        srv_log_write_free(w);
        return srv_exec_retrieval(srv, c, req);
    }
    if (r == PREP_TOO_LARGE) {
        srv_log_write_free(w);
        return req->noreply ? 0 : reply(o, "SERVER_ERROR object too large for cache\r\n");
    }
    if (r == PREP_FAILED && c->npending > 0) {
        /* Answered now, it would overtake the replies to our writes still
         * in the log: evaluate it again once they are in (their outcomes
         * run us again). */
        srv_log_write_free(w);
        return AFTER_WAIT;
    }
    if (!req->too_large && !w->locked)
        srv_count_write(srv, req->cmd, st);
    if (!w->locked && log_enabled(LOG_LEVEL_DEBUG)) {
        char k[96];
        log_debug(MOD, "conn %llu: %s %s (%zu bytes) -> %s", (unsigned long long)c->id,
                  proto_cmd_name(req->cmd), log_escape(k, sizeof(k), req->key, req->nkey),
                  req->ndata, st == STORE_OK ? "logging" : store_status_name(st));
    }
    if (r == PREP_FAILED) {
        /* Nothing changes, so nothing to log: answer now. */
        srv_log_write_free(w);
        return req->noreply ? 0 : reply(o, srv_write_reply(req->cmd, st));
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
            assert(r == 0 || r == -ENOMEM); /* write_must_wait saw every key free */
            if (r < 0)
                goto fail;
        }
    }
    if ((r = encode_write(srv, w)) < 0)
        goto fail;
    srv_tl_wal_staged = true;
    int64_t lsn = wal_append(srv->wal, WAL_REC_WRITE, srv->scratch.data, srv->scratch.len,
                             log_write_done, w);
    if (lsn < 0) {
        r = (int)lsn;
        goto fail;
    }
    srv->appended_bytes += WAL_RECORD_HEADER_BYTES + srv->scratch.len;
    srv->counters.writes_logged++;
    srv->npending++;
    if (req->cmd == PROTO_CMD_FLUSH_ALL)
        srv->flush_write = w;
    w->c = c;
    c->npending++;
    return AFTER_PENDING;
fail:
    for (size_t i = 0; i < w->nch; i++)
        store_abort(srv->store, &w->ch[i]);
    log_write_unlock(w);
    srv_log_write_free(w);
    if (r == -ENOMEM)
        return r;
    if (c->npending > 0)
        return AFTER_WAIT; /* answered after our writes in the log */
    srv->counters.writes_failed++;
    return req->noreply ? 0 : srv_reply_log_failed(srv, o);
}
