/*
 * srv_conn.c - one client connection on its own thread: reading, parsing a
 * batch of requests, processing them in order, flushing the replies,
 * closing, logging in (--auth-file), and its limits in time.
 */

#include "srv.h"

static void conn_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void conn_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

/* Drops the request at the front of c's buffer (one that was kept while it
 * waited), after running it as a retrieval if it is a gat. */
int srv_consume_front(struct server *srv, struct conn *c, bool run_retrieval)
{
    struct proto_req req;
    size_t consumed;
    int r = 0;

    enum proto_status st = proto_parse(c->rbuf, c->rlen, &srv->lim, &req, &consumed);
    assert(st == PROTO_OK);
    (void)st;
    if (run_retrieval)
        r = srv_exec_retrieval(srv, c, &req);
    /* A set refused for size that waited: its data block may not be all
     * here (it was never going to be kept); the rest is discarded as it
     * comes. */
    assert(consumed <= c->rlen || req.too_large);
    consumed = proto_stream_consume(c->rlen, 0, consumed, &c->swallow);
    if (c->udp)
        c->swallow = 0;
    memmove(c->rbuf, c->rbuf + consumed, c->rlen - consumed);
    c->rlen -= consumed;
    c->attempts = 0;
    c->wait_since_ms = 0;
    return r;
}

void srv_conn_link(struct server *srv, struct conn *c)
{
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    c->id = ++srv->next_conn_id;
    c->last_active_ms = util_mono_ns() / 1000000u;
}

/* Frees a connection that has no handle open and no write pending. */
void srv_conn_free(struct conn *c)
{
    struct server *srv = c->srv;

    assert(c->npending == 0 && c->cpending == NULL && c->done_head == NULL);
    srv_waitlist_remove(c);
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
    /* A write in the log still points at us: log_write_done (or the 2PC outcome)
     * frees us then. */
    if (c->npending == 0 && c->cpending == NULL)
        srv_conn_free(c);
    srv_unlock(srv);
}

void srv_conn_close(struct conn *c, const char *why)
{
    if (c->closing)
        return;
    c->closing = true;
    srv_waitlist_remove(c);
    if (why)
        log_info(MOD, "conn %llu from %s closed: %s", (unsigned long long)c->id, c->peer,
                 why);
    if (c->udp) {
        c->handle_closed = true;
        if (c->npending == 0 && c->cpending == NULL)
            srv_conn_free(c);
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
            srv_conn_close(c, "out of memory");
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
            srv_conn_close(c, "out of memory");
    }
}

static void conn_on_write(uv_write_t *req, int status)
{
    struct conn *c = req->data;
    struct server *srv = c->srv;

    outq_consume(&c->out, c->in_flight);
    if (status == 0) {
        __atomic_fetch_add(&srv->counters.bytes_written, c->in_flight, __ATOMIC_RELAXED);
        c->sent_bytes += c->in_flight;
    }
    c->in_flight = 0;
    if (status == UV_ECANCELED || (status == 0 && c->closing))
        return;
    srv_lock(srv);
    if (status < 0) {
        srv_conn_close(c, uv_strerror(status));
    } else {
        /* Output drained: finish a keys listing, then any requests that waited. */
        conn_stream_keys(c);
        if (!c->closing)
            srv_conn_process(c);
    }
    srv_unlock(srv);
    srv_lt_flush(c->lt);
}

/* srv_conn_close for srv_conn_flush, which runs without the lock. */
static void conn_close_unlocked(struct conn *c, const char *why)
{
    srv_lock(c->srv);
    srv_conn_close(c, why);
    srv_unlock(c->srv);
}

/* Writes c's output queue: at once what the socket takes, the rest queued.
 * With threads, only c's thread calls it, without the lock (srv_lt_flush). */
void srv_conn_flush(struct conn *c)
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
            __atomic_fetch_add(&c->srv->counters.bytes_written, (uint64_t)r,
                               __ATOMIC_RELAXED);
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
    c->write_req.data = c;
    r = uv_write(&c->write_req, (uv_stream_t *)&c->tcp, bufs, (unsigned)n, conn_on_write);
    if (r < 0) {
        conn_close_unlocked(c, uv_strerror(r));
        return;
    }
    c->in_flight = total;
}

void srv_conn_set_reading(struct conn *c, bool on)
{
    if (c->closing || c->udp || c->reading == on)
        return;
    c->reading = on;
    if (!on)
        uv_read_stop((uv_stream_t *)&c->tcp);
    else if (uv_read_start((uv_stream_t *)&c->tcp, conn_alloc, conn_on_read) < 0)
        srv_conn_close(c, "cannot read");
}

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

        if (proto_parse(c->rbuf + pos, c->rlen - pos, &srv->lim, req, &consumed) !=
                PROTO_OK ||
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
void srv_prefetch_parsed(struct server *srv, const struct parsed *p, size_t np)
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

void srv_conn_process(struct conn *c)
{
    struct parsed pre; /* not zeroed: parse_batch sets what is read */

    parse_batch(c->srv, c, &pre);
    srv_prefetch_parsed(c->srv, &pre, 1);
    srv_conn_process_parsed(c, &pre);
}

/* A UDP request ran: its replies leave in datagrams, and its short-lived
 * connection goes. */
static void udp_finish(struct conn *c)
{
    struct server *srv = c->srv;

    if (c->out.bytes)
        srv_udp_send_reply(srv, c->udp_req_id, c->out.flatbuf.data, c->out.flatbuf.len,
                           (const struct sockaddr *)&c->addr);
    c->closing = c->handle_closed = true;
    srv_conn_free(c);
}

static void after_batch(struct conn *c, size_t pos);

/* A request that does not parse (PROTO_ERROR) at pos: memcached's error
 * line, unless noreply; what exactly was wrong goes to the debug log. */
static int answer_bad_request(struct conn *c, const struct proto_req *req, size_t pos)
{
    int r = req->noreply ? 0 : reply_line(&c->out, req->error);

    if (log_enabled(LOG_LEVEL_DEBUG)) {
        char line[96];
        const char *nl = memchr(c->rbuf + pos, '\n', c->rlen - pos);
        size_t ll = nl ? (size_t)(nl - (c->rbuf + pos)) : c->rlen - pos;
        log_debug(MOD, "conn %llu: %s%s%s <- %s", (unsigned long long)c->id, req->error,
                  req->detail ? ": " : "", req->detail ? req->detail : "",
                  log_escape(line, sizeof(line), c->rbuf + pos, ll));
    }
    return r;
}

/* Parses and executes every complete request in the read buffer, until one
 * has to wait: what pre holds (parsed from c's buffer as it is now), then
 * whatever follows it. */
void srv_conn_process_parsed(struct conn *c, struct parsed *pre)
{
    struct server *srv = c->srv;
    size_t pos = 0;

    assert(srv_conn_local(c));
    /* Whatever parse waited for the turn's end is stale once this runs. */
    if (c->deferred) {
        c->deferred = false;
        c->lt->ready_conn[c->slot] = NULL;
    }
    srv_refresh_now(srv);
    while (!c->closing && !c->close_after_flush && c->keys == NULL &&
           c->npending < srv->cfg.conn_writes_max && c->cpending == NULL &&
           c->waiting == NULL && !srv->stopping) {
        struct proto_req req;
        size_t consumed;
        enum proto_status st;
        int r = 0;

        if (!c->udp && c->out.bytes >= srv->cfg.conn_output_bytes_max)
            break; /* backpressure: resume from conn_on_write */
        if (c->rlen - pos == 0 || c->rlen - pos < c->need)
            break;
        if (!c->authed) {
            r = srv_conn_authenticate(c, c->rbuf + pos, c->rlen - pos, &consumed);
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
            srv->counters.protocol_closes++;
            if (c->udp) {
                srv->counters.udp_dropped++;
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
            r = answer_bad_request(c, &req, pos);
        } else {
            /* A request that waits stays unconsumed, and so does a gat whose
             * touches are being logged (log_write_done reads it then): the buffer
             * is compacted below, so either is at its front afterwards. */
            r = srv_execute(srv, c, &req);
            if (r == AFTER_WAIT)
                break;
            /* Done with, from here: the next request starts afresh (its
             * retries, and how long it waited). */
            c->attempts = 0;
            c->wait_since_ms = 0;
            if (r == AFTER_PENDING &&
                (req.cmd == PROTO_CMD_GAT || req.cmd == PROTO_CMD_GATS))
                break;
        }
        /* A refused data block may extend past what we have: swallow the
         * rest as it comes (a UDP request has nothing more coming). */
        pos = proto_stream_consume(c->rlen, pos, consumed, &c->swallow);
        if (c->udp)
            c->swallow = 0;
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
    if (!c->closing)
        after_batch(c, pos);
    return;
oom:
    srv_conn_close(c, "out of memory");
}

/* The requests before pos ran (or wait): keep the rest of the buffer, let
 * a UDP request go, read on or not, queue the replies for writing. */
static void after_batch(struct conn *c, size_t pos)
{
    struct server *srv = c->srv;

    /* Keep the unparsed tail at the front of the buffer. */
    if (pos > 0) {
        memmove(c->rbuf, c->rbuf + pos, c->rlen - pos);
        c->rlen -= pos;
    }
    if (c->udp) {
        if (c->rlen == 0 && c->npending == 0 && c->cpending == NULL &&
            c->waiting == NULL && c->keys == NULL)
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
    srv_conn_set_reading(c, !blocked && !c->close_after_flush);
    if (!srv->threaded) {
        srv_conn_flush(c);
    } else if (!c->in_flushq) {
        /* Written by srv_lt_flush once the lock is let go. */
        c->in_flushq = true;
        c->flush_next = c->lt->flushq;
        c->lt->flushq = c;
    }
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
        if (want > srv->cfg.get_line_bytes_max + 1 &&
            c->rlen < srv->cfg.get_line_bytes_max + 1)
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
        if (c->swallow)
            proto_stream_swallow(c->rbuf, &c->rlen, &c->swallow);
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
        srv_lt_run_ready(lt); /* what came before this, first */
        pre = &one;           /* that moved the buffer: parse it anew */
        one.n = one.next = one.nh = 0;
    }
    if (nread < 0) {
        srv_conn_close(c, nread == UV_EOF ? NULL : uv_strerror((int)nread));
        srv_unlock(srv);
        srv_lt_flush(lt);
        return;
    }
    srv->counters.bytes_read += (uint64_t)nread;
    c->last_active_ms = util_mono_ns() / 1000000u;
    if (c->swallow == 0) {
        srv_prefetch_parsed(srv, pre, 1);
        srv_conn_process_parsed(c, pre);
    }
    srv_unlock(srv);
    srv_lt_flush(lt);
}

/* c's request waited too long for a transaction's outcome: answer it with
 * an error and go on (c's thread). */
static void lock_wait_expired(struct conn *c)
{
    struct server *srv = c->srv;
    struct proto_req req;
    size_t consumed;
    char line[200];

    c->timeout_posted = false;
    if (c->closing || c->waiting == NULL)
        return; /* the wait ended meanwhile: the request runs after all */
    srv_waitlist_remove(c);
    srv->counters.lock_wait_timeouts++;
    if (c->waits_fence)
        srv->fence_gave_up = true; /* the requests behind it need not wait too */
    if (proto_parse(c->rbuf, c->rlen, &srv->lim, &req, &consumed) != PROTO_OK) {
        log_error(MOD,
                  "conn %llu: a request timed out waiting, but it is not in the "
                  "buffer any more; closing the connection",
                  (unsigned long long)c->id);
        srv_conn_close(c, NULL);
        return;
    }
    if (c->waits_fence)
        snprintf(line, sizeof(line),
                 "SERVER_ERROR timed out after %u ms waiting for a peer to confirm this "
                 "replica's data is current (is any peer up?)\r\n",
                 srv->cfg.lock_wait_ms);
    else if (c->waits_clock)
        snprintf(
            line, sizeof(line),
            "SERVER_ERROR timed out after %u ms waiting for the replicas' clocks to be "
            "measured (do their clock probes get through?)\r\n",
            srv->cfg.lock_wait_ms);
    else
        snprintf(
            line, sizeof(line),
            "SERVER_ERROR timed out after %u ms waiting for an undecided transaction "
            "on this key (is a replica down?)\r\n",
            srv->cfg.lock_wait_ms);
    c->waits_clock = c->waits_fence = false;
    if (!req.noreply && reply(&c->out, line) < 0)
        c->close_after_flush = true;
    srv_consume_front(srv, c, false);
}

/* Frees a write's record once its outcome is answered. */
static void done_free(struct wdone *d)
{
    if (d->kind == WDONE_LOG)
        srv_log_write_free((struct log_write *)d);
    else
        free(d);
}

/* What a connection does after a write's outcome (conn_done). */
enum done_next {
    DONE_GO_ON, /* answered: go on with its requests */
    DONE_WAIT,  /* closing, or waiting to try the write again */
    DONE_FREED, /* it was the last thing a closed connection waited for */
};

/*
 * A write's outcome, on c's thread: the one way a finished write reaches
 * its connection, for both write paths. Answers it (a gat: the read, now
 * that its touches are in), or, for a transaction that lost to another
 * write, schedules its retry; drops the request if it is still at the
 * front of the buffer; frees d.
 */
static enum done_next conn_done(struct conn *c, struct wdone *d)
{
    struct server *srv = c->srv;
    int r = 0;

    if (d->kind == WDONE_LOG) {
        assert(c->npending > 0);
        c->npending--;
    } else {
        c->cpending = NULL;
    }
    if (c->handle_closed || c->closing) {
        done_free(d);
        if (c->handle_closed && c->npending == 0 && c->cpending == NULL &&
            c->done_head == NULL) {
            srv_conn_free(c);
            return DONE_FREED;
        }
        return DONE_WAIT;
    }
    if (!d->ok && d->busy && d->kept && c->attempts < LIMIT_WRITE_RETRIES) {
        srv_schedule_retry(srv, c);
        done_free(d);
        return DONE_WAIT;
    }
    if (d->kind == WDONE_TXN) {
        if (d->ok)
            srv->counters.writes_logged++;
        else
            srv->counters.writes_failed++;
    }
    if (d->ok && d->kept && (d->cmd == PROTO_CMD_GAT || d->cmd == PROTO_CMD_GATS)) {
        r = srv_consume_front(srv, c, true); /* the read answers it */
        d->kept = false;
    } else if (d->ok && !d->noreply) {
        r = srv_reply_write_done(&c->out, d->cmd, d->too_large, d->number);
    } else if (!d->ok && !d->noreply) {
        struct txn_write *q = (struct txn_write *)d;
        r = d->kind == WDONE_LOG
                ? srv_reply_write_failed(srv, &c->out)
                : srv_reply_txn_failed(srv, &c->out, (enum tpc_reason)q->reason,
                                       q->culprit, c->attempts);
    }
    if (d->kept)
        srv_consume_front(srv, c, false);
    c->attempts = 0;
    if (r < 0)
        c->close_after_flush = true;
    done_free(d);
    return DONE_GO_ON;
}

/*
 * Runs what was posted to c (srv_post.c), on c's thread at the end of its
 * loop turn (lock held): a line to answer, a wait that timed out, the
 * outcomes of its writes in order; then goes on with its requests. May
 * free c.
 */
void srv_conn_run_posted(struct conn *c)
{
    unsigned what = c->post;
    char *line = c->post_line;
    bool run = (what & POST_RUN) != 0, wait = false;

    c->post = 0;
    c->post_line = NULL;
    if (line) {
        if (c->waiting == &c->srv->answered)
            srv_waitlist_remove(c);
        if (!c->closing && reply(&c->out, line) < 0)
            c->close_after_flush = true;
        free(line);
        run = true;
    }
    if (what & POST_LOCK_TIMEOUT) {
        lock_wait_expired(c);
        run = true;
    }
    while (c->done_head) {
        struct wdone *d = c->done_head;
        c->done_head = d->next;
        if (c->done_head == NULL)
            c->done_tail = NULL;
        switch (conn_done(c, d)) {
        case DONE_FREED:
            return;
        case DONE_WAIT:
            wait = true;
            break;
        case DONE_GO_ON:
            run = true;
            break;
        }
    }
    if (run && !wait && !c->closing)
        srv_conn_process(c);
}

/*
 * A connection thread's reads run at the end of their loop turn, all under
 * one hold of the lock (srv_lt_run_ready): the lock is taken once per turn, not
 * once per read, and the lookups of requests from different connections
 * overlap their cache misses as a pipeline's do. The main loop (which holds
 * the lock anyway) runs them at once.
 */
void srv_lt_run_ready(struct lthread *lt)
{
    struct server *srv = lt->srv;
    size_t n = lt->nready;
    uint64_t now_ms = util_mono_ns() / 1000000u;

    srv->counters.bytes_read += lt->ready_bytes;
    lt->ready_bytes = 0;
    /* A slot emptied since (its connection freed or run) costs a useless
     * prefetch at most: its hashes are only numbers. */
    srv_prefetch_parsed(srv, lt->ready, n);
    for (size_t i = 0; i < n; i++) {
        struct conn *c = lt->ready_conn[i];
        if (c == NULL)
            continue; /* freed, or run since by another path */
        assert(c->deferred && c->slot == i);
        c->last_active_ms = now_ms;
        srv_conn_process_parsed(c, &lt->ready[i]);
    }
    assert(lt->nready == n);
    lt->nready = 0;
}

/* Writes the output of the connections lt ran (lt's thread, lock let go). */
void srv_lt_flush(struct lthread *lt)
{
    struct conn *c;

    while ((c = lt->flushq) != NULL) {
        lt->flushq = c->flush_next;
        c->in_flushq = false;
        srv_conn_flush(c);
    }
}
