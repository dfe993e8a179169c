/*
 * bench_conn.c - bench's connections and the worker threads that drive
 * them: each worker's epoll loop over its connections, a connection's states
 * (CLOSED, CONNECTING, AUTH, OPEN), its pipeline of requests and the parsing
 * of their replies, over TCP or UDP.
 */

#include "bench_int.h"

uint64_t bench_rng_next(uint64_t *s)
{
    /* splitmix64 */
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void bench_set_first(char *dst, size_t cap, const char *msg)
{
    if (dst[0] == '\0')
        snprintf(dst, cap, "%s", msg);
}

static void relaxed_inc(_Atomic uint64_t *a)
{
    atomic_store_explicit(a, atomic_load_explicit(a, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

/* Writes key number k into the key field of a header (after "get "/"set "). */
static void put_key(const struct shared *sh, char *hdr, uint64_t k)
{
    char *p = hdr + 4 + sh->cfg->key_size; /* one past the key's last digit */

    for (unsigned i = 0; i < sh->key_digits; i++) {
        *--p = (char)('0' + k % 10);
        k /= 10;
    }
}

/* Whether an item's key is key number k. */
static bool key_is(const struct shared *sh, const char *key, size_t len, uint64_t k)
{
    const char *p;

    if (len != sh->cfg->key_size)
        return false;
    p = key + len;
    for (unsigned i = 0; i < sh->key_digits; i++) {
        if (*--p != (char)('0' + k % 10))
            return false;
        k /= 10;
    }
    return memcmp(key, sh->cfg->key_prefix, strlen(sh->cfg->key_prefix)) == 0;
}

static int conn_grow(struct conn *c, size_t need);

/* Datagrams the reply to a get of one value may take, so that reassembly
 * seldom has to grow its buffer while running. */
static unsigned udp_parts_expected(const struct bench_config *cfg)
{
    size_t reply = strlen("VALUE  4294967295 \r\n\r\nEND\r\n") + cfg->key_size +
                   bench_digits_of(cfg->value_size) + cfg->value_size;

    return (unsigned)(reply / LIMIT_UDP_PAYLOAD_BYTES + 2);
}

/* Sets c up and allocates everything it will ever need but a larger reply.
 * Returns 0 or -ENOMEM (bench_conn_free() cleans up either way). */
int bench_conn_init(struct conn *c, struct worker *w)
{
    const struct bench_config *cfg = w->sh->cfg;

    memset(c, 0, sizeof(*c));
    c->w = w;
    c->fd = -1;
    c->backoff_ms = BACKOFF_MIN_MS;
    client_reply_init(&c->r);
    c->q = calloc(cfg->pipeline, sizeof(*c->q));
    c->hdrs = malloc((size_t)cfg->pipeline * HDR_CAP);
    c->iov_cap = 2 * cfg->pipeline;
    c->iov = calloc(c->iov_cap, sizeof(*c->iov));
    if (c->q == NULL || c->hdrs == NULL || c->iov == NULL)
        return -ENOMEM;
    if (cfg->udp)
        return conn_grow(c, UDP_IN_CAP) < 0 ||
                       client_udp_asm_reserve(&c->udp, udp_parts_expected(cfg),
                                              (size_t)udp_parts_expected(cfg) *
                                                  LIMIT_UDP_PAYLOAD_BYTES) < 0
                   ? -ENOMEM
                   : 0;
    return conn_grow(c, IN_BUF_MIN);
}

void bench_conn_free(struct conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    free(c->in);
    c->in = NULL;
    free(c->q);
    c->q = NULL;
    free(c->hdrs);
    c->hdrs = NULL;
    free(c->iov);
    c->iov = NULL;
    client_udp_asm_free(&c->udp);
    client_reply_free(&c->r);
}

static void conn_fill(struct conn *c, uint64_t now);

static int conn_set_events(struct conn *c, uint32_t ev)
{
    struct epoll_event e = {.events = ev, .data.ptr = c};

    if (c->events == ev)
        return 0;
    if (epoll_ctl(c->w->ep, EPOLL_CTL_MOD, c->fd, &e) < 0)
        return -errno;
    c->events = ev;
    return 0;
}

static void conn_schedule_retry(struct conn *c, uint64_t now)
{
    c->retry_ns = now + (uint64_t)c->backoff_ms * NS_PER_MS;
    c->backoff_ms *= 2;
    if (c->backoff_ms > BACKOFF_MAX_MS)
        c->backoff_ms = BACKOFF_MAX_MS;
}

static void conn_close(struct conn *c, uint64_t now)
{
    if (c->fd >= 0)
        close(c->fd); /* also leaves the epoll set */
    c->fd = -1;
    c->st = CS_CLOSED;
    c->events = 0;
    c->w->inflight -= c->q_n;
    c->q_n = 0;
    c->q_head = 0;
    c->iov_i = c->iov_n = 0;
    c->in_len = 0;
    c->in_need = 0;
    client_udp_asm_start(&c->udp, c->udp_id);
    conn_schedule_retry(c, now);
}

/* A connection attempt failed (errno code e). */
static void conn_failed(struct conn *c, int e, uint64_t now)
{
    struct worker *w = c->w;
    char msg[160];

    w->conn_failures++;
    if (atomic_load_explicit(&w->first_conn_errno, memory_order_relaxed) == 0)
        atomic_store(&w->first_conn_errno, e);
    snprintf(msg, sizeof(msg), "connect: %s", strerror(e));
    bench_set_first(w->first_conn_err, sizeof(w->first_conn_err), msg);
    c->tried = true;
    conn_close(c, now);
}

/* An open connection is given up: its outstanding requests are lost. */
static void conn_lost(struct conn *c, const char *why, uint64_t now)
{
    struct worker *w = c->w;

    w->disconnects++;
    w->lost += c->q_n;
    bench_set_first(w->first_conn_err, sizeof(w->first_conn_err), why);
    conn_close(c, now);
}

static void conn_opened(struct conn *c, uint64_t now)
{
    if (!c->tried)
        atomic_fetch_add(&c->w->sh->conns_up, 1);
    c->tried = true;
    c->st = CS_OPEN;
    if (conn_set_events(c, EPOLLIN) < 0) {
        conn_lost(c, "epoll_ctl failed", now);
        return;
    }
    conn_fill(c, now);
}

static void conn_connect(struct conn *c, uint64_t now)
{
    const struct shared *sh = c->w->sh;
    struct epoll_event e;
    int fd, one = 1;

    fd = socket(sh->addr.ss_family,
                (sh->cfg->udp ? SOCK_DGRAM : SOCK_STREAM) | SOCK_NONBLOCK | SOCK_CLOEXEC,
                0);
    if (fd < 0) {
        conn_failed(c, errno, now);
        return;
    }
    if (sh->cfg->udp) {
        /* Room for a burst of multi-datagram replies; best effort. */
        int rcv = UDP_RCVBUF;
        (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv));
    } else {
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    c->fd = fd;
    c->st = CS_CONNECTING;
    c->deadline_ns = now + (uint64_t)sh->cfg->timeout_ms * NS_PER_MS;
    if (connect(fd, (const struct sockaddr *)&sh->addr, sh->addrlen) < 0 &&
        errno != EINPROGRESS) {
        conn_failed(c, errno, now);
        return;
    }
    /* A UDP socket is connected at once: it only sets the peer. */
    e.events = sh->cfg->udp ? EPOLLIN : EPOLLOUT;
    e.data.ptr = c;
    if (epoll_ctl(c->w->ep, EPOLL_CTL_ADD, fd, &e) < 0) {
        conn_failed(c, errno, now);
        return;
    }
    c->events = e.events;
    if (sh->cfg->udp)
        conn_opened(c, now);
}

static void conn_flush(struct conn *c, uint64_t now);

/* Queues one request of the authentication exchange and writes it. */
static void auth_send(struct conn *c, const void *p, size_t n, uint64_t now)
{
    c->iov[0].iov_base = (void *)p;
    c->iov[0].iov_len = n;
    c->iov_i = 0;
    c->iov_n = 1;
    conn_flush(c, now);
}

/* CONNECTING and writable: the attempt has ended one way or the other. */
static void conn_connected(struct conn *c, uint64_t now)
{
    int e = 0;
    socklen_t len = sizeof(e);

    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &e, &len) < 0)
        e = errno;
    if (e != 0) {
        conn_failed(c, e, now);
        return;
    }
    if (c->w->sh->auth_req == NULL) {
        conn_opened(c, now);
        return;
    }
    c->st = CS_AUTH;
    c->auth_sent = false;
    if (conn_set_events(c, EPOLLIN) < 0) {
        conn_failed(c, errno, now);
        return;
    }
    auth_send(c, "version\r\n", 9, now);
}

/* The authentication exchange failed (e: EACCES refused, EPROTO odd reply). */
static void auth_failed(struct conn *c, int e, const char *what, const char *line,
                        size_t n, uint64_t now)
{
    struct worker *w = c->w;
    char esc[100], msg[160];

    w->conn_failures++;
    /* The message first: bench_run reads it once it sees the errno. */
    snprintf(msg, sizeof(msg), "%s: %s", what, log_escape(esc, sizeof(esc), line, n));
    bench_set_first(w->first_conn_err, sizeof(w->first_conn_err), msg);
    if (atomic_load_explicit(&w->first_conn_errno, memory_order_relaxed) == 0)
        atomic_store(&w->first_conn_errno, e);
    c->tried = true;
    conn_close(c, now);
}

/* AUTH and readable: a reply to "version" or to the credentials. */
static void auth_read(struct conn *c, uint64_t now)
{
    const struct shared *sh = c->w->sh;
    ssize_t n;
    int rc;

    if (c->in_len == c->in_cap && conn_grow(c, c->in_cap + 1) < 0) {
        conn_failed(c, ENOMEM, now);
        return;
    }
    n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
    if (n == 0) {
        conn_failed(c, ECONNRESET, now);
        return;
    }
    if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            conn_failed(c, errno, now);
        return;
    }
    c->in_len += (size_t)n;
    rc = client_reply_parse(&c->r, c->in, c->in_len);
    if (rc == 0)
        return;
    if (rc < 0 || c->r.len != c->in_len) {
        auth_failed(c, EPROTO, "malformed reply while authenticating", c->in, c->in_len,
                    now);
        return;
    }
    c->in_len = 0;
    if (!c->auth_sent) {
        static const char unauth[] = "CLIENT_ERROR unauthenticated";
        if (c->r.type == CLIENT_REPLY_VERSION) {
            conn_opened(c, now); /* no authentication asked for */
        } else if (c->r.line_len == strlen(unauth) &&
                   memcmp(c->r.line, unauth, strlen(unauth)) == 0) {
            c->auth_sent = true;
            auth_send(c, sh->auth_req, sh->auth_len, now);
        } else {
            auth_failed(c, EPROTO, "unexpected reply to version", c->r.line,
                        c->r.line_len, now);
        }
    } else if (c->r.type == CLIENT_REPLY_STORED) {
        conn_opened(c, now);
    } else {
        auth_failed(c, EACCES, "authentication refused", c->r.line, c->r.line_len, now);
    }
}

/* A UDP send or receive failed (errno e): counted, and the socket goes on;
 * a request that did not go out ends as a UDP timeout. */
static void udp_error(struct conn *c, const char *what, int e)
{
    char msg[160];

    c->w->udp_errors++;
    snprintf(msg, sizeof(msg), "udp %s: %s", what, strerror(e));
    bench_set_first(c->w->first_conn_err, sizeof(c->w->first_conn_err), msg);
}

/* Writes what is left of the queued requests (over UDP, the one datagram). */
static void conn_flush(struct conn *c, uint64_t now)
{
    while (c->iov_i < c->iov_n) {
        struct msghdr m = {0};
        unsigned left = c->iov_n - c->iov_i;
        ssize_t n;

        m.msg_iov = &c->iov[c->iov_i];
        m.msg_iovlen = left < UIO_MAXIOV ? left : UIO_MAXIOV;
        n = sendmsg(c->fd, &m, MSG_NOSIGNAL);
        if (n < 0) {
            char msg[160];
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                if (conn_set_events(c, EPOLLIN | EPOLLOUT) < 0)
                    conn_lost(c, "epoll_ctl failed", now);
                return;
            }
            if (c->w->sh->cfg->udp) {
                udp_error(c, "send", errno);
                c->iov_i = c->iov_n;
                break;
            }
            snprintf(msg, sizeof(msg), "send: %s", strerror(errno));
            conn_lost(c, msg, now);
            return;
        }
        while (n > 0 && c->iov_i < c->iov_n) {
            struct iovec *v = &c->iov[c->iov_i];
            if ((size_t)n >= v->iov_len) {
                n -= (ssize_t)v->iov_len;
                c->iov_i++;
            } else {
                v->iov_base = (char *)v->iov_base + n;
                v->iov_len -= (size_t)n;
                n = 0;
            }
        }
    }
    if (c->events & EPOLLOUT) {
        if (conn_set_events(c, EPOLLIN) < 0)
            conn_lost(c, "epoll_ctl failed", now);
    }
}

/* Queues one request: its header in its slot's buffer, then iovecs for the
 * header and (a set) the shared value. conn_fill() writes the batch. */
static void conn_issue(struct conn *c, enum bench_op op, uint64_t key, int phase)
{
    struct worker *w = c->w;
    const struct shared *sh = w->sh;
    unsigned idx = (c->q_head + c->q_n) % sh->cfg->pipeline;
    char *hdr = c->hdrs + (size_t)idx * HDR_CAP;
    size_t off = sh->cfg->udp ? LIMIT_UDP_HEADER_BYTES : 0;
    size_t len = op == BENCH_OP_SET ? sh->set_tpl_len : sh->get_tpl_len;
    struct slot *s = &c->q[idx];

    memcpy(hdr + off, op == BENCH_OP_SET ? sh->set_tpl : sh->get_tpl, len);
    put_key(sh, hdr + off, key);
    if (sh->cfg->udp) {
        /* A new id for every request, so a late reply is told apart. */
        struct proto_udp_hdr fh = {.req_id = ++c->udp_id, .seq = 0, .total = 1};
        proto_udp_encode(hdr, &fh);
        client_udp_asm_start(&c->udp, c->udp_id);
    }
    if (c->iov_n + 2 > c->iov_cap) {
        /* The unwritten iovecs belong to outstanding requests, at most two
         * each: moved to the front, they leave room. */
        memmove(c->iov, c->iov + c->iov_i, (c->iov_n - c->iov_i) * sizeof(*c->iov));
        c->iov_n -= c->iov_i;
        c->iov_i = 0;
    }
    c->iov[c->iov_n].iov_base = hdr;
    c->iov[c->iov_n].iov_len = off + len;
    c->iov_n++;
    if (op == BENCH_OP_SET) {
        c->iov[c->iov_n].iov_base = sh->value;
        c->iov[c->iov_n].iov_len = sh->cfg->value_size + 2;
        c->iov_n++;
    }
    c->q_n++;
    w->inflight++;
    s->sent_ns = 0; /* set when the batch is written */
    s->key = key;
    s->op = (uint8_t)op;
    s->phase = (uint8_t)phase;
}

static uint64_t next_key(struct worker *w)
{
    const struct shared *sh = w->sh;

    if (sh->cfg->key_dist == BENCH_KEYS_ZIPF)
        return zipf_next(&sh->zipf, &w->rng);
    return bench_rng_next(&w->rng) % sh->cfg->keys;
}

/* Queues requests while the phase, the depth and the quotas allow, then
 * writes them in one go; their latencies start now. */
static void conn_fill(struct conn *c, uint64_t now)
{
    struct worker *w = c->w;
    const struct bench_config *cfg = w->sh->cfg;
    unsigned added = 0;

    while (c->st == CS_OPEN && c->q_n < cfg->pipeline) {
        enum bench_op op;
        bool stop = false;

        switch (w->phase) {
        case PH_PRELOAD:
            if (w->pre_next >= w->pre_end) {
                stop = true;
                break;
            }
            conn_issue(c, BENCH_OP_SET, w->pre_next++, PH_PRELOAD);
            added++;
            continue;
        case PH_MEASURE:
            if (w->quota_mode) {
                if (w->quota == 0) {
                    stop = true;
                    break;
                }
                w->quota--;
            }
            break;
        case PH_WARMUP:
            break;
        default:
            stop = true;
            break;
        }
        if (stop)
            break;
        op = c->cycle < cfg->ratio_set ? BENCH_OP_SET : BENCH_OP_GET;
        if (++c->cycle >= cfg->ratio_set + cfg->ratio_get)
            c->cycle = 0;
        conn_issue(c, op, next_key(w), w->phase);
        added++;
    }
    if (added == 0)
        return;
    now = util_mono_ns();
    for (unsigned i = c->q_n - added; i < c->q_n; i++)
        c->q[(c->q_head + i) % cfg->pipeline].sent_ns = now;
    conn_flush(c, now);
}

static enum bench_err err_kind(enum client_reply_type t)
{
    switch (t) {
    case CLIENT_REPLY_ERROR:
        return BENCH_ERR_ERROR;
    case CLIENT_REPLY_CLIENT_ERROR:
        return BENCH_ERR_CLIENT;
    case CLIENT_REPLY_SERVER_ERROR:
        return BENCH_ERR_SERVER;
    default:
        return BENCH_ERR_UNEXPECTED;
    }
}

/* c->r holds a complete reply to the oldest outstanding request. */
static void conn_reply(struct conn *c, uint64_t now)
{
    struct worker *w = c->w;
    struct slot s = c->q[c->q_head];
    const struct client_reply *r = &c->r;
    struct bench_counts *k = NULL;
    bool ok = false, hit = false;

    c->q_head = (c->q_head + 1) % w->sh->cfg->pipeline;
    c->q_n--;
    w->inflight--;
    relaxed_inc(&w->progress);

    if (s.op == BENCH_OP_SET) {
        ok = r->type == CLIENT_REPLY_STORED;
    } else if (r->type == CLIENT_REPLY_LIST) {
        if (r->n_items == 0) {
            ok = true;
        } else if (r->n_items == 1 && r->items[0].kind == CLIENT_ITEM_VALUE &&
                   key_is(w->sh, r->items[0].key, r->items[0].key_len, s.key)) {
            ok = hit = true;
        }
    }
    if (ok)
        c->backoff_ms = BACKOFF_MIN_MS;

    if (s.phase == PH_MEASURE)
        k = &w->measured;
    else if (s.phase == PH_PRELOAD)
        k = &w->preload;
    if (k == NULL)
        return; /* warm-up */
    k->replies++;
    if (ok) {
        k->ok[s.op]++;
        if (s.op == BENCH_OP_GET) {
            if (hit)
                k->hits++;
            else
                k->misses++;
        }
    } else {
        enum bench_err e = err_kind(r->type);
        const char *line = r->line;
        size_t len = r->line_len;
        char esc[140];
        k->err[e]++;
        if (r->n_items > 0 && e == BENCH_ERR_UNEXPECTED) {
            line = r->items[0].line;
            len = r->items[0].line_len;
        }
        if (w->first_err[e][0] == '\0') {
            log_escape(esc, sizeof(esc), line, len);
            snprintf(w->first_err[e], sizeof(w->first_err[e]), "%s%s",
                     e == BENCH_ERR_UNEXPECTED
                         ? (s.op == BENCH_OP_SET ? "to a set: " : "to a get: ")
                         : "",
                     esc);
        }
    }
    if (s.phase != PH_MEASURE)
        return;
    relaxed_inc(&w->live_replies);
    w->last_measured_ns = now;
    if (!ok) {
        relaxed_inc(&w->live_errors);
        return;
    }
    {
        uint64_t lat = now - s.sent_ns;
        relaxed_inc(&w->lh[s.op].counts[hist_index(lat)]);
        if (lat > HIST_RANGE_MAX_NS)
            w->lat_overflow[s.op]++;
        w->lat_sum[s.op] += (double)lat;
        if (lat > w->lat_max[s.op])
            w->lat_max[s.op] = lat;
        if (lat < w->lat_min[s.op])
            w->lat_min[s.op] = lat;
    }
}

/* Makes room for at least `need` bytes of input. */
static int conn_grow(struct conn *c, size_t need)
{
    size_t cap = c->in_cap ? c->in_cap : IN_BUF_MIN;
    char *p;

    while (cap < need)
        cap *= 2;
    if (cap == c->in_cap)
        return 0;
    p = realloc(c->in, cap);
    if (p == NULL)
        return -ENOMEM;
    c->in = p;
    c->in_cap = cap;
    return 0;
}

static void conn_read(struct conn *c)
{
    size_t off = 0;
    uint64_t now;
    ssize_t n;

    if (c->in_len == c->in_cap && conn_grow(c, c->in_cap + 1) < 0) {
        conn_lost(c, "out of memory for a reply", util_mono_ns());
        return;
    }
    n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
    now = util_mono_ns();
    if (n == 0) {
        conn_lost(c, "the server closed the connection", now);
        return;
    }
    if (n < 0) {
        char msg[160];
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return;
        snprintf(msg, sizeof(msg), "recv: %s", strerror(errno));
        conn_lost(c, msg, now);
        return;
    }
    c->in_len += (size_t)n;
    if (c->in_len < c->in_need)
        return;
    c->in_need = 0;
    while (off < c->in_len) {
        int rc = client_reply_parse(&c->r, c->in + off, c->in_len - off);
        if (rc < 0 || (rc == 1 && c->q_n == 0)) {
            char esc[100], msg[160];
            const char *nl = memchr(c->in + off, '\n', c->in_len - off);
            size_t len = nl ? (size_t)(nl - (c->in + off)) : c->in_len - off;
            if (len > 0 && c->in[off + len - 1] == '\r')
                len--;
            log_escape(esc, sizeof(esc), c->in + off, len);
            snprintf(msg, sizeof(msg), "%s: %s",
                     rc < 0 ? "malformed reply" : "reply to no request", esc);
            conn_lost(c, msg, now);
            return;
        }
        if (rc == 0) {
            c->in_need = c->r.need;
            break;
        }
        off += c->r.len;
        conn_reply(c, now);
    }
    if (off > 0) {
        memmove(c->in, c->in + off, c->in_len - off);
        c->in_len -= off;
    }
    if (c->in_need > c->in_cap && conn_grow(c, c->in_need) < 0) {
        conn_lost(c, "out of memory for a reply", now);
        return;
    }
    conn_fill(c, now);
}

/* The outstanding UDP request is given up on (no reply in time, or a reply
 * that cannot be parsed): its slot is freed and a datagram still to be sent
 * is dropped; a reply that comes later is a late one. */
static void udp_give_up(struct conn *c)
{
    c->q_head = (c->q_head + 1) % c->w->sh->cfg->pipeline;
    c->q_n--;
    c->w->inflight--;
    c->iov_i = c->iov_n = 0;
    client_udp_asm_start(&c->udp, c->udp_id);
    relaxed_inc(&c->w->progress);
}

/* A whole UDP reply payload for the outstanding request. */
static void udp_reply(struct conn *c, const char *buf, size_t len, uint64_t now)
{
    int rc = client_reply_parse(&c->r, buf, len);

    client_udp_asm_start(&c->udp, c->udp_id);
    if (rc == 1) {
        conn_reply(c, now);
        return;
    }
    {
        char esc[100], msg[160];
        const char *nl = memchr(buf, '\n', len);
        size_t n = nl ? (size_t)(nl - buf) : len;
        log_escape(esc, sizeof(esc), buf, n);
        snprintf(msg, sizeof(msg), "%s UDP reply: %s",
                 rc == 0 ? "incomplete" : "malformed", esc);
        c->w->udp_errors++;
        bench_set_first(c->w->first_conn_err, sizeof(c->w->first_conn_err), msg);
        udp_give_up(c);
    }
}

/* One datagram of a reply. */
static void udp_datagram(struct conn *c, const char *d, size_t n, uint64_t now)
{
    const char *payload;
    size_t len;
    int rc = c->q_n == 0 ? CLIENT_UDP_OTHER : client_udp_asm_add(&c->udp, d, n);

    switch (rc) {
    case CLIENT_UDP_MORE:
    case CLIENT_UDP_DUP:
        return;
    case CLIENT_UDP_OTHER:
        c->w->late_replies++;
        return;
    case CLIENT_UDP_BAD:
        udp_error(c, "reply", EPROTO);
        return;
    case CLIENT_UDP_DONE:
        payload = client_udp_asm_payload(&c->udp, &len);
        if (payload != NULL) {
            udp_reply(c, payload, len, now);
            return;
        }
        break;
    }
    udp_error(c, "reply", ENOMEM);
}

static void udp_read(struct conn *c)
{
    uint64_t now = util_mono_ns();

    /* Level-triggered: a few datagrams per wake-up, the rest next time. */
    for (int i = 0; i < 64 && c->st == CS_OPEN; i++) {
        ssize_t n = recv(c->fd, c->in, c->in_cap, MSG_TRUNC);
        now = util_mono_ns();
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                udp_error(c, "receive", errno);
            break;
        }
        if ((size_t)n > c->in_cap || n < LIMIT_UDP_HEADER_BYTES) {
            udp_error(c, "reply", EMSGSIZE);
            continue;
        }
        udp_datagram(c, c->in, (size_t)n, now);
    }
    conn_fill(c, now);
}

static void conn_event(struct conn *c, uint32_t ev, uint64_t now)
{
    switch (c->st) {
    case CS_CONNECTING:
        conn_connected(c, now);
        return;
    case CS_AUTH:
        if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP))
            auth_read(c, now);
        if (c->st == CS_AUTH && (ev & EPOLLOUT))
            conn_flush(c, now);
        return;
    case CS_OPEN:
        if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
            if (c->w->sh->cfg->udp)
                udp_read(c);
            else
                conn_read(c);
        }
        if (c->st == CS_OPEN && (ev & EPOLLOUT)) {
            conn_flush(c, now);
            /* A reply may have come before the request was all written. */
            conn_fill(c, now);
        }
        return;
    case CS_CLOSED:
        return;
    }
}

/* Connection timeouts, reply timeouts, reconnects. */
static void worker_scan(struct worker *w, uint64_t now)
{
    uint64_t timeout = (uint64_t)w->sh->cfg->timeout_ms * NS_PER_MS;

    for (unsigned i = 0; i < w->nconns; i++) {
        struct conn *c = &w->conns[i];
        switch (c->st) {
        case CS_CONNECTING:
        case CS_AUTH:
            if (now >= c->deadline_ns)
                conn_failed(c, ETIMEDOUT, now);
            break;
        case CS_OPEN:
            if (c->q_n > 0 && now > c->q[c->q_head].sent_ns &&
                now - c->q[c->q_head].sent_ns >= timeout && w->sh->cfg->udp) {
                w->udp_timeouts++;
                udp_give_up(c);
                conn_fill(c, now);
            } else if (c->q_n > 0 && now > c->q[c->q_head].sent_ns &&
                       now - c->q[c->q_head].sent_ns >= timeout) {
                char msg[160];
                snprintf(msg, sizeof(msg), "no reply within %d ms",
                         w->sh->cfg->timeout_ms);
                w->timeouts++;
                conn_lost(c, msg, now);
                w->lost--; /* the timed-out one is counted as such, not as lost */
            }
            break;
        case CS_CLOSED:
            if (w->phase != PH_STOP && now >= c->retry_ns)
                conn_connect(c, now);
            break;
        }
    }
}

/* What to do on a phase change. */
static void worker_phase(struct worker *w, int phase, uint64_t now)
{
    w->phase = phase;
    if (phase == PH_STOP) {
        w->stop_deadline_ns = now + (uint64_t)w->sh->cfg->timeout_ms * NS_PER_MS;
        return;
    }
    for (unsigned i = 0; i < w->nconns; i++)
        conn_fill(&w->conns[i], now);
}

void *bench_worker_main(void *arg)
{
    struct worker *w = arg;
    struct shared *sh = w->sh;
    struct epoll_event evs[64];
    uint64_t now = util_mono_ns();

    for (unsigned i = 0; i < w->nconns; i++)
        conn_connect(&w->conns[i], now);
    w->last_scan_ns = now;
    for (;;) {
        int ph = atomic_load(&sh->phase);
        int n;

        if (ph != w->phase)
            worker_phase(w, ph, now);
        if (!w->settled) {
            unsigned tried = 0;
            for (unsigned i = 0; i < w->nconns; i++)
                tried += w->conns[i].tried;
            if (tried == w->nconns) {
                w->settled = true;
                atomic_fetch_add(&sh->settled, 1);
            }
        }
        if (ph == PH_PRELOAD && !w->preloaded && w->pre_next >= w->pre_end &&
            w->inflight == 0) {
            w->preloaded = true;
            atomic_fetch_add(&sh->preloaded, 1);
        }
        if (ph == PH_MEASURE && w->quota_mode && !w->finished && w->quota == 0 &&
            w->inflight == 0) {
            w->finished = true;
            atomic_fetch_add(&sh->finished, 1);
        }
        if (ph == PH_STOP) {
            if (w->inflight == 0)
                break;
            if (now >= w->stop_deadline_ns) {
                w->unfinished = w->inflight;
                break;
            }
        }
        n = epoll_wait(w->ep, evs, (int)ARRAY_SIZE(evs), LOOP_WAIT_MS);
        now = util_mono_ns();
        for (int i = 0; i < n; i++)
            conn_event(evs[i].data.ptr, evs[i].events, now);
        if (now - w->last_scan_ns >= SCAN_EVERY_NS) {
            worker_scan(w, now);
            w->last_scan_ns = now;
        }
    }
    for (unsigned i = 0; i < w->nconns; i++) {
        struct conn *c = &w->conns[i];
        if (c->fd >= 0)
            close(c->fd);
        c->fd = -1;
    }
    return NULL;
}
