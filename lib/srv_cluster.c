/*
 * srv_cluster.c - a client write in a cluster, under two-phase commit; the
 * callbacks that connect tpc.h's state machine to the log, the store and the
 * peer links (env_*); expiry decided by the cluster.
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
 * (after_tpc): nothing re-enters the state machine.
 *
 * EXPIRY. A replica never removes an item because its own clock says the
 * item is dead (store.h, STORED AND LIVE): clocks differ, and a replica
 * whose stored state differed from the others' would vote down every later
 * write of the key. Expiry is decided once and replicated, like every other
 * change: each replica walks its store as a single one does and deletes, in
 * one transaction, the dead keys it owns (txn_expire_batch). One such
 * transaction at a time; one that aborts (a key became busy, a replica is
 * down) leaves its keys to a later walk.
 */

#include "srv.h"

static void expire_done(struct txn_write *q);

/* The reply to a write that did not commit. */
int srv_reply_txn_failed(struct server *srv, struct outq *o, enum tpc_reason why,
                         uint32_t culprit, unsigned attempts)
{
    char line[512], addr[300];

    switch (why) {
    case TPC_R_BUSY:
        srv->counters.txn_busy++;
        snprintf(line, sizeof(line),
                 "SERVER_ERROR busy: the key is being written through another replica "
                 "(gave up after %u retries)\r\n",
                 attempts);
        break;
    case TPC_R_CONFLICT:
        /* Every retry read the key again here and replica culprit still
         * stored another version: not a race but replicas that differ. */
        srv->counters.txn_conflicts++;
        log_error(MOD,
                  "a write failed %u times because replica %u stores another version "
                  "of the key than this one: the replicas have diverged (stats digest "
                  "shows which)",
                  attempts + 1, culprit);
        snprintf(
            line, sizeof(line),
            "SERVER_ERROR the replicas disagree about this key's version (replica %u; "
            "gave up after %u retries)\r\n",
            culprit, attempts);
        break;
    case TPC_R_NO_MEMORY:
        srv->counters.store_no_memory++;
        if (culprit == srv->cfg.id)
            snprintf(line, sizeof(line), "SERVER_ERROR out of memory storing object\r\n");
        else
            snprintf(line, sizeof(line),
                     "SERVER_ERROR out of memory storing object on "
                     "replica %u\r\n",
                     culprit);
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
        snprintf(
            line, sizeof(line),
            "SERVER_ERROR replica %u refused the write: this replica's clock is too far "
            "from its own (more than --max-clock-skew-ms %u)\r\n",
            culprit, srv->cfg.max_clock_skew_ms);
        break;
    case TPC_R_UNKNOWN:
        snprintf(
            line, sizeof(line),
            "SERVER_ERROR write-ahead log failed on this replica while it recorded the "
            "commit: the write may or may not be applied (known once this replica "
            "restarts; do not assume either)\r\n");
        break;
    case TPC_R_TIMEOUT:
        snprintf(
            line, sizeof(line),
            "SERVER_ERROR replica %u (%s) did not answer within %u ms: the write was "
            "not applied\r\n",
            culprit, srv_replica_addr(srv, culprit, addr, sizeof(addr)),
            srv->cfg.prepare_timeout_ms);
        break;
    case TPC_R_PEER_DOWN:
        if (culprit < LIMIT_REPLICAS_MAX && srv->fence.state[culprit] == FENCE_BEHIND)
            snprintf(
                line, sizeof(line),
                "SERVER_ERROR replica %u (%s) is behind: its data is older than this "
                "replica saw it (emptied, replaced or restored from an older copy); "
                "writes need every replica; reads still work\r\n",
                culprit, srv_replica_addr(srv, culprit, addr, sizeof(addr)));
        else if (srv->fence.behind)
            snprintf(
                line, sizeof(line),
                "SERVER_ERROR this replica's data is older than its peers saw it: it "
                "serves nothing until rebuilt (see its log)\r\n");
        else if (srv_peer_auth_refused(srv, culprit))
            snprintf(
                line, sizeof(line),
                "SERVER_ERROR replica %u (%s) is not authenticated (do the replicas' "
                "--secret-file contents differ?): writes need every replica; reads "
                "still work\r\n",
                culprit, srv_replica_addr(srv, culprit, addr, sizeof(addr)));
        else
            snprintf(
                line, sizeof(line),
                "SERVER_ERROR replica %u (%s) is unreachable: writes need every replica; "
                "reads still work\r\n",
                culprit, srv_replica_addr(srv, culprit, addr, sizeof(addr)));
        break;
    case TPC_R_STOPPING:
        snprintf(line, sizeof(line),
                 "SERVER_ERROR shutting down: the write was not "
                 "acknowledged\r\n");
        break;
    default:
        snprintf(line, sizeof(line), "SERVER_ERROR write aborted by replica %u: %s\r\n",
                 culprit, tpc_reason_name(why));
        break;
    }
    return reply(o, line);
}

/* The request in front of c lost a lock conflict: run it again later. */
void srv_schedule_retry(struct server *srv, struct conn *c)
{
    unsigned step = c->attempts < 6 ? c->attempts : 6;
    uint64_t max = (uint64_t)LIMIT_RETRY_BACKOFF_MS_MIN << step;

    if (max > LIMIT_RETRY_BACKOFF_MS_MAX)
        max = LIMIT_RETRY_BACKOFF_MS_MAX;
    c->attempts++;
    srv->counters.txn_retries++;
    c->retry_at_ms = srv_mono_ms() + LIMIT_RETRY_BACKOFF_MS_MIN + srv_rng_next(srv) % max;
    srv_waitlist_push(&srv->retry, c);
}

/* Delivers what tpc produced during the call that just returned. */
void srv_after_tpc(struct server *srv)
{
    while (srv->done_head || srv->wake.head) {
        struct txn_write *q = srv->done_head;
        srv->done_head = srv->done_tail = NULL;
        while (q) {
            struct txn_write *next = q->next;
            if (q->expire) {
                expire_done(q);
            } else if (q->c == NULL) {
                free(q); /* its client went away */
            } else {
                /* The client's thread answers, and frees q. */
                q->done.ok = q->committed;
                q->done.busy = !q->committed &&
                               (q->reason == TPC_R_BUSY || q->reason == TPC_R_CONFLICT);
                srv_post_done(q->c, &q->done);
            }
            q = next;
        }
        srv_waitlist_wake(&srv->wake);
    }
}

/* Moves everyone waiting on from to the wake list. */
static void wake_later(struct server *srv, struct waitlist *from)
{
    srv_waitlist_move(&srv->wake, from);
}

void srv_env_send(void *ctx, const struct tpc_msg *m)
{
    struct server *srv = ctx;

    if (srv->peers && !srv->stopping) {
        srv_tl_kick_main = true; /* the main loop writes the frame */
        /* A link that is down drops it (tpc resends or times out); one too
         * big cannot be (srv_exec_write_cluster refuses such writes first). */
        if (peer_send(srv->peers, m) == -EMSGSIZE)
            log_error(MOD,
                      "a %s of txid %llu to replica %u is over the peer frame limit: "
                      "dropped",
                      tpc_msg_type_name(m->type), (unsigned long long)m->txid, m->to);
    }
}

static void on_tpc_durable(void *arg, uint64_t lsn, int status)
{
    struct server *srv = arg;

    if (srv->tpc == NULL)
        return;
    srv_refresh_now(srv);
    if (status == 0)
        tpc_durable(srv->tpc, lsn, srv_now_us());
    else
        tpc_log_failed(srv->tpc, srv_now_us(), wal_rolled_back(srv->wal));
    srv_after_tpc(srv);
    srv_snapshot_maybe(srv);
}

int64_t srv_env_log(void *ctx, enum tpc_log_type type, const struct tpc_txn *t)
{
    struct server *srv = ctx;
    int r;

    if (srv->wal == NULL || srv->stopping)
        return -ESHUTDOWN;
    if ((r = srv_ceiling_cover(srv, t->txid)) < 0)
        return r;
    fence_logged(&srv->fence, t->txid);
    if ((r = txn_encode_record(&srv->scratch, t)) < 0)
        return r;
    srv_tl_wal_staged = true;
    int64_t lsn = wal_append(srv->wal, (uint8_t)type, srv->scratch.data, srv->scratch.len,
                             on_tpc_durable, srv);
    if (lsn > 0)
        srv->appended_bytes += WAL_RECORD_HEADER_BYTES + srv->scratch.len;
    return lsn;
}

int srv_env_prepare(void *ctx, const struct tpc_txn *t, void **handle)
{
    struct server *srv = ctx;
    struct txn_prep *p;
    int r;

    /* RUN must bound every txid the log holds before this one's PREPARE
     * is logged; if it cannot, a NO vote (the log itself is fine). */
    if (!t->recovered && srv_ceiling_cover(srv, t->txid) < 0)
        return TPC_R_LOG_FAILED;
    srv->rm.now_ms = srv->now_ms;
    r = txn_prepare(&srv->rm, t, &p);

    if (r != 0)
        return r;
    *handle = p; /* p->user: a zeroed struct txn_waiters (rm.user_bytes) */
    return 0;
}

static void env_release(struct server *srv, struct txn_prep *p, bool commit)
{
    struct txn_waiters *x = p->user; /* freed with p */

    wake_later(srv, &x->waiters);
    if (commit)
        txn_commit(&srv->rm, p);
    else
        txn_abort(&srv->rm, p);
    wake_later(srv, &srv->txn_any);
}

void srv_env_commit(void *ctx, const struct tpc_txn *t, void *handle)
{
    (void)t;
    env_release(ctx, handle, true);
}

void srv_env_abort(void *ctx, const struct tpc_txn *t, void *handle)
{
    (void)t;
    env_release(ctx, handle, false);
}

void srv_env_done(void *ctx, void *client, uint64_t txid, bool committed,
                  enum tpc_reason reason, uint32_t culprit)
{
    struct server *srv = ctx;
    struct txn_write *q = client;

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

void srv_on_tpc_tick(uv_timer_t *h)
{
    struct server *srv = h->data;
    uint64_t now = srv_mono_ms();

    if (srv->tpc == NULL)
        return;
    srv_refresh_now(srv);
    tpc_tick(srv->tpc, srv_now_us());
    srv_ceiling_refresh(srv);
    /* Writes whose backoff is over run again. */
    if (srv->retry.head) {
        struct waitlist all = {0}, due = {0};
        struct conn *c;
        srv_waitlist_move(&all, &srv->retry);
        while ((c = srv_waitlist_pop(&all)) != NULL)
            srv_waitlist_push(now >= c->retry_at_ms ? &due : &srv->retry, c);
        srv_waitlist_wake(&due);
    }
    srv_after_tpc(srv);
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

/* The number no AFTER_* is: a write that may go ahead (may_write). */
#define GO_AHEAD 1000

/*
 * Whether c's write may be evaluated now: the log works, this replica is
 * confirmed current, the clocks are measured and within bound, and no
 * transaction holds one of its keys. Returns GO_AHEAD, or what the request
 * gets instead (AFTER_WAIT: c waits on a list, bounded by --lock-wait-ms;
 * 0 or -ENOMEM: answered).
 */
static int may_write(struct server *srv, struct conn *c, const struct proto_req *req)
{
    struct outq *o = &c->out;
    struct txn_prep *holder = NULL;
    int r;

    if (wal_error(srv->wal)) {
        srv->counters.writes_failed++;
        return req->noreply ? 0 : srv_reply_log_failed(srv, o);
    }
    if (srv_fence_must_wait(srv, c)) {
        srv->counters.writes_waited++;
        return AFTER_WAIT;
    }
    if ((r = srv_reply_not_current(srv, o, req->noreply)) <= 0) {
        srv->counters.writes_failed++;
        return r;
    }
    struct skew_verdict sv;
    c->waits_clock = false;
    if (!srv_clocks_allow_writes(srv, &sv) && sv.unmeasured) {
        /* A link just came up: its clock is measured within a round trip
         * (bounded by --lock-wait-ms, like a held key). */
        c->waits_clock = true;
        srv->counters.writes_waited++;
        srv_wait_for(c, &srv->clock_wait);
        return AFTER_WAIT;
    }
    if (!srv_clocks_allow_writes(srv, &sv)) {
        srv->counters.writes_failed++;
        if (req->noreply) {
            srv->counters.clock_skew_refused++;
            return 0;
        }
        return srv_reply_clock_skew(srv, o, true);
    }
    /* Wait while a transaction holds a key (a flush_all: any transaction). */
    if (req->cmd == PROTO_CMD_FLUSH_ALL) {
        if (srv->rm.prepared > 0) {
            srv->counters.writes_waited++;
            srv_wait_for(c, &srv->txn_any);
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
        srv->counters.writes_waited++;
        srv_wait_for(c, &((struct txn_waiters *)holder->user)->waiters);
        return AFTER_WAIT;
    }
    return GO_AHEAD;
}

int srv_exec_write_cluster(struct server *srv, struct conn *c,
                           const struct proto_req *req)
{
    struct outq *o = &c->out;
    struct txn_write *q;
    uint32_t nops = 0, culprit;
    uint64_t txid;
    int r, r2;

    if ((r = may_write(srv, c, req)) != GO_AHEAD)
        return r;
    if ((q = calloc(1, sizeof(*q))) == NULL)
        return -ENOMEM;
    q->srv = srv;
    q->done.kind = WDONE_TXN;
    q->done.cmd = req->cmd;
    q->done.noreply = req->noreply;
    txid = tpc_next_txid(srv->tpc, util_now_unix_us());
    srv->ops.len = 0;

    /* Evaluated here, then encoded as operations and dropped: every
     * replica prepares it again. A gat's keys are locked (by q) only while
     * its touches are evaluated, in this same hold of the server lock. */
    struct store_change one, *ch = &one;
    enum store_status st;
    size_t nch = 0;
    if (req->nkeys > 1 && (ch = calloc(req->nkeys, sizeof(*ch))) == NULL) {
        free(q);
        return -ENOMEM;
    }
    q->done.too_large = req->too_large;
    q->done.kept = !req->too_large; /* its data block is being swallowed: no retry */
    r = srv_prepare_write(srv, req, txid, q, ch, &nch, &st);
    /* Counted once, however many times it is evaluated (gat's touches
     * and refusals for size are counted by srv_prepare_write). */
    if ((r == PREP_FAILED || r == PREP_CHANGES) && !req->too_large &&
        req->cmd != PROTO_CMD_GAT && req->cmd != PROTO_CMD_GATS && c->attempts == 0)
        srv_count_write(srv, req->cmd, st);
    q->done.number = nch > 0 ? ch[0].number : 0;
    for (size_t i = 0; i < nch; i++) {
        if (r >= 0 && (r2 = encode_and_drop(srv, &ch[i], &nops)) < 0)
            r = r2;
        else if (r < 0)
            store_abort(srv->store, &ch[i]);
        if (req->cmd == PROTO_CMD_GAT || req->cmd == PROTO_CMD_GATS)
            store_unlock_change(srv->store, &ch[i], q);
    }
    if (ch != &one)
        free(ch);
    if (r < 0)
        goto fail;
    if (r == PREP_TOO_LARGE) {
        free(q);
        return req->noreply ? 0 : reply(o, "SERVER_ERROR object too large for cache\r\n");
    }
    if (r == PREP_FAILED) {
        free(q);
        return req->noreply ? 0 : reply(o, srv_write_reply(req->cmd, st));
    }
    if (r == PREP_READ) {
        free(q);
        return srv_exec_retrieval(srv, c, req);
    }
    if (srv->ops.len + PEER_FRAME_HEADER_BYTES + PEER_MSG_FIXED_BYTES >
        srv->cfg.value_bytes_max + LIMIT_PEER_FRAME_OVERHEAD_BYTES) {
        /* The replicas could not take the PREPARE in one frame (a gat of
         * many keys). */
        char line[200];
        free(q);
        srv->counters.writes_failed++;
        snprintf(
            line, sizeof(line),
            "SERVER_ERROR too many keys for one gat in a cluster: their touches take "
            "%zu bytes, more than --max-value plus %d\r\n",
            srv->ops.len, LIMIT_PEER_FRAME_OVERHEAD_BYTES);
        return req->noreply ? 0 : reply(o, line);
    }

    r = tpc_begin(srv->tpc, txid, nops, srv->ops.data, (uint32_t)srv->ops.len, q,
                  srv_now_us(), &culprit);
    if (r == 0) {
        q->c = c;
        c->cpending = q;
        srv_after_tpc(srv); /* a failed local prepare of another may have woken someone */
        return q->done.kept ? AFTER_WAIT : AFTER_PENDING;
    }
    srv_after_tpc(srv);
    bool kept = q->done.kept;
    free(q);
    if ((r == TPC_R_BUSY || r == TPC_R_CONFLICT) && kept &&
        c->attempts < LIMIT_WRITE_RETRIES) {
        srv_schedule_retry(srv, c);
        return AFTER_WAIT;
    }
    srv->counters.writes_failed++;
    return req->noreply
               ? 0
               : srv_reply_txn_failed(srv, o, (enum tpc_reason)r, culprit, c->attempts);
fail:
    free(q);
    return r;
}

/* Walks part of the store and, if it found expired keys this replica owns,
 * begins the transaction that deletes them (main loop, under the lock). */
void srv_expire_step(struct server *srv)
{
    uint32_t nops = 0, culprit;
    struct txn_write *q;
    bool full;
    long keys;

    struct skew_verdict sv;

    if (srv->expiring || srv->stopping || wal_error(srv->wal) ||
        !srv_clocks_allow_writes(srv, &sv))
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
    q->keys = (uint64_t)keys;
    uint64_t txid = tpc_next_txid(srv->tpc, util_now_unix_us());
    int r = tpc_begin(srv->tpc, txid, nops, srv->ops.data, (uint32_t)srv->ops.len, q,
                      srv_now_us(), &culprit);
    if (r != 0) {
        free(q);
        srv->counters.expire_failed++;
        log_debug(MOD, "expiry of %ld key(s) not begun: %s (replica %u)", keys,
                  tpc_reason_name((enum tpc_reason)r), culprit);
    } else {
        srv->expiring = true;
        srv->expire_more = full;
    }
    srv_after_tpc(srv);
}

/* An expiry transaction is decided: count it, and go on at once if its walk
 * had more to delete. */
static void expire_done(struct txn_write *q)
{
    struct server *srv = q->srv;
    bool more = q->committed && srv->expire_more;

    srv->expiring = false;
    if (q->committed) {
        srv->counters.expire_txns++;
        srv->counters.expire_keys += q->keys;
    } else {
        srv->counters.expire_failed++;
        log_debug(MOD, "expiry of %llu key(s) aborted: %s (replica %u)",
                  (unsigned long long)q->keys,
                  tpc_reason_name((enum tpc_reason)q->reason), q->culprit);
    }
    free(q);
    if (more)
        srv_expire_step(srv);
}
