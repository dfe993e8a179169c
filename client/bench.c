/*
 * bench.c - the load generator behind `clie bench` (see bench.h for the
 * model: closed loop, phases, what is counted).
 *
 * Threads. The calling thread resolves the address, starts the workers and
 * drives the phases through one atomic variable; each worker runs an epoll
 * loop over its share of the connections and never blocks elsewhere. Workers
 * share nothing writable but a few atomic counters: their tallies are their
 * own and are read after pthread_join. The live line (once a second) reads
 * the workers' histograms while they run, so those counters are relaxed
 * atomics with one writer each (a plain load and store on x86-64).
 *
 * A connection (struct conn) is CLOSED, CONNECTING, AUTH or OPEN (AUTH: with
 * a user, between connect and open: "version", then the credentials set if
 * the server answered CLIENT_ERROR unauthenticated). When OPEN it has
 * up to `pipeline` outstanding requests in a ring of slots (send time, op,
 * key, the phase it was sent in); a reply is matched to the oldest slot. Its
 * request is written straight from its header buffer and the shared value
 * buffer with sendmsg() (an iovec); a short write waits for EPOLLOUT. Replies
 * are read into a per-connection buffer and parsed with client_reply_parse();
 * the buffer only grows (a reply larger than it), never per request.
 *
 * Time: util_mono_ns() (CLOCK_MONOTONIC) just before a request is written
 * and when its reply has been parsed. Latencies are service times of a
 * closed loop: a slow reply delays the next request of its connection, and
 * that wait is not in any latency (no coordinated-omission correction).
 */
#include "bench.h"

#include "client.h"
#include "limits.h"
#include "log.h"
#include "proto.h"
#include "util.h"
#include "zipf.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define NS_PER_MS 1000000ull
#define NS_PER_S 1000000000ull
#define BACKOFF_MIN_MS 100u
#define BACKOFF_MAX_MS 1000u
#define LOOP_WAIT_MS 10 /* epoll_wait timeout: how soon a phase change is seen */
#define SCAN_EVERY_NS (10 * NS_PER_MS) /* timeouts and reconnects */
#define IN_BUF_MIN 4096u
/* A UDP frame header, then "set " KEY " 0 0 N\r\n". */
#define HDR_CAP (LIMIT_UDP_HEADER_BYTES + 4 + 250 + 32)
#define UDP_IN_CAP (65536u + LIMIT_UDP_HEADER_BYTES) /* any datagram */
/* Reassembly: the payload of datagram i of a reply lands at i * UDP_STRIDE;
 * memcached and serve fill every datagram but the last to 1392 bytes. */
#define UDP_STRIDE 1400u
#define UDP_RCVBUF (1024 * 1024)

/* ------------------------------------------------------------------------ */
/* Configuration                                                            */

void bench_config_default(struct bench_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->host = "127.0.0.1";
    cfg->port = 11211;
    cfg->conns = 50;
    cfg->threads = 2;
    cfg->pipeline = 1;
    cfg->requests = 0;
    cfg->duration_s = 10;
    cfg->warmup_s = 0;
    cfg->ratio_set = 1;
    cfg->ratio_get = 0;
    cfg->key_size = 32;
    cfg->key_prefix = BENCH_KEY_PREFIX;
    cfg->value_size = 100;
    cfg->keys = 100000;
    cfg->key_dist = BENCH_KEYS_UNIFORM;
    cfg->zipf_s = BENCH_ZIPF_S_DEFAULT;
    cfg->timeout_ms = 10000;
    cfg->seed = 1;
}

static unsigned digits_of(uint64_t v)
{
    unsigned n = 1;

    while (v >= 10) {
        v /= 10;
        n++;
    }
    return n;
}

int bench_config_check(const struct bench_config *cfg, char *err, size_t cap)
{
    unsigned need;

    if (cfg->host == NULL || cfg->host[0] == '\0' || cfg->port == 0)
        return util_errf(err, cap, -EINVAL, "no server address");
    if (cfg->conns < 1 || cfg->conns > BENCH_CONNS_MAX)
        return util_errf(err, cap, -EINVAL, "connections must be 1..%d, not %u",
                         BENCH_CONNS_MAX, cfg->conns);
    if (cfg->threads < 1 || cfg->threads > BENCH_THREADS_MAX)
        return util_errf(err, cap, -EINVAL, "threads must be 1..%d, not %u",
                         BENCH_THREADS_MAX, cfg->threads);
    if (cfg->pipeline < 1 || cfg->pipeline > BENCH_PIPELINE_MAX)
        return util_errf(err, cap, -EINVAL, "pipeline depth must be 1..%d, not %u",
                         BENCH_PIPELINE_MAX, cfg->pipeline);
    /* Over UDP, replies to requests sent together can come back in any order
     * and interleaved datagram by datagram: one at a time keeps matching and
     * reassembly simple and allocation-free. */
    if (cfg->udp && cfg->pipeline > 1)
        return util_errf(err, cap, -EINVAL,
                         "UDP keeps one request outstanding per socket: use -c for "
                         "more load, not -d %u",
                         cfg->pipeline);
    if (cfg->key_dist == BENCH_KEYS_ZIPF &&
        !(cfg->zipf_s > 0 && cfg->zipf_s <= ZIPF_S_MAX))
        return util_errf(err, cap, -EINVAL,
                         "the zipf exponent must be above 0 and at most %g", ZIPF_S_MAX);
    if (cfg->requests == 0 && !(cfg->duration_s > 0 && isfinite(cfg->duration_s)))
        return util_errf(err, cap, -EINVAL, "the duration must be more than 0 seconds");
    if (!(cfg->warmup_s >= 0 && isfinite(cfg->warmup_s)))
        return util_errf(err, cap, -EINVAL, "the warm-up must be 0 seconds or more");
    if (cfg->ratio_set == 0 && cfg->ratio_get == 0)
        return util_errf(err, cap, -EINVAL, "the ratio must not be 0:0");
    if (cfg->ratio_set > 1000000 || cfg->ratio_get > 1000000)
        return util_errf(err, cap, -EINVAL, "ratio terms must be at most 1000000");
    if (cfg->keys < 1)
        return util_errf(err, cap, -EINVAL, "there must be at least 1 key");
    for (const char *q = cfg->key_prefix; *q; q++)
        if ((unsigned char)*q <= ' ' || (unsigned char)*q == 0x7f)
            return util_errf(err, cap, -EINVAL,
                             "the key prefix must have no spaces or control characters");
    need = (unsigned)strlen(cfg->key_prefix) + digits_of(cfg->keys - 1);
    if (cfg->key_size < need || cfg->key_size > 250)
        return util_errf(err, cap, -EINVAL,
                         "with %" PRIu64 " keys the key size must be %u..250 bytes, "
                         "not %u",
                         cfg->keys, need, cfg->key_size);
    if (cfg->value_size > BENCH_VALUE_MAX)
        return util_errf(err, cap, -EINVAL, "the value size must be at most %u bytes",
                         BENCH_VALUE_MAX);
    if (cfg->udp && (cfg->ratio_set > 0 || cfg->preload)) {
        /* memcached takes a UDP request in one datagram only, and so do we. */
        uint64_t dgram = LIMIT_UDP_HEADER_BYTES + strlen("set ") + cfg->key_size +
                         strlen(" 0 0 \r\n") + digits_of(cfg->value_size) +
                         (uint64_t)cfg->value_size + 2;
        if (dgram > BENCH_UDP_REQUEST_MAX)
            return util_errf(err, cap, -EINVAL,
                             "a set of %u bytes takes a %" PRIu64
                             "-byte datagram; over UDP a request must fit one "
                             "(at most %u bytes): lower --value-size or use TCP",
                             cfg->value_size, dgram, BENCH_UDP_REQUEST_MAX);
    }
    if (cfg->timeout_ms < 1)
        return util_errf(err, cap, -EINVAL, "the timeout must be at least 1 ms");
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Run state                                                                */

enum phase {
    PH_CONNECT = 0, /* connections are being opened; no requests */
    PH_PRELOAD,
    PH_WARMUP,
    PH_MEASURE,
    PH_STOP,
};

/* One outstanding request. */
struct slot {
    uint64_t sent_ns;
    uint64_t key;
    uint8_t op;    /* enum bench_op */
    uint8_t phase; /* enum phase when it was sent */
};

enum conn_state {
    CS_CLOSED = 0,
    CS_CONNECTING,
    CS_AUTH, /* authenticating; deadline_ns still runs */
    CS_OPEN,
};

struct worker;

struct conn {
    struct worker *w;
    int fd;
    enum conn_state st;
    uint32_t events;      /* registered with epoll */
    bool tried;           /* its first connection attempt has ended */
    bool auth_sent;       /* AUTH: the credentials are out (else "version") */
    uint64_t deadline_ns; /* CONNECTING: give up then */
    uint64_t retry_ns;    /* CLOSED: reconnect then */
    unsigned backoff_ms;
    /* Output: the queued requests not yet written, iov[iov_i..iov_n) of
     * iov_cap (two per slot: a request is a header and maybe the value). */
    struct iovec *iov;
    unsigned iov_i, iov_n, iov_cap;
    char *hdrs; /* HDR_CAP bytes per slot: the header of its request */
    /* Input. */
    char *in;
    size_t in_len, in_cap, in_need;
    struct client_reply r;
    /* Outstanding requests, oldest at q_head, a ring of `pipeline` slots. */
    struct slot *q;
    unsigned q_head, q_n;
    unsigned cycle; /* position in the set:get cycle */
    /* UDP: the request id of the outstanding request, and its reply's
     * datagrams so far (udp_len[i] of datagram i, UINT32_MAX if missing). */
    uint16_t udp_id;
    uint16_t udp_total, udp_received;
    uint32_t *udp_len;
    char *udp_asm;
    unsigned udp_parts_cap; /* entries of udp_len, UDP_STRIDE-byte parts of udp_asm */
};

/* Written by its worker, read by the main thread while running. */
struct live_hist {
    _Atomic uint64_t counts[HIST_BUCKETS];
};

struct shared;

struct worker {
    struct shared *sh;
    unsigned index;
    pthread_t tid;
    bool started;
    int ep;
    struct conn *conns;
    unsigned nconns;
    uint64_t rng;
    int phase;         /* the last phase seen */
    unsigned inflight; /* requests outstanding on all its connections */
    uint64_t pre_next, pre_end;
    bool quota_mode;
    uint64_t quota; /* measured requests still to send */
    bool settled, preloaded, finished;
    uint64_t stop_deadline_ns;
    uint64_t last_scan_ns;
    uint64_t last_measured_ns; /* when the last measured reply arrived */
    /* Tallies, read after join. */
    struct bench_counts measured, preload;
    uint64_t conn_failures, disconnects, timeouts, lost, unfinished;
    uint64_t udp_timeouts, late_replies, udp_errors;
    char first_err[BENCH_ERR_COUNT][160];
    char first_conn_err[160];
    _Atomic int first_conn_errno; /* the first failed attempt's errno */
    uint64_t lat_max[BENCH_OP_COUNT], lat_min[BENCH_OP_COUNT];
    uint64_t lat_overflow[BENCH_OP_COUNT]; /* above HIST_RANGE_MAX_NS */
    double lat_sum[BENCH_OP_COUNT];
    /* Read while running. */
    _Atomic uint64_t live_replies; /* measured replies */
    _Atomic uint64_t live_errors;  /* measured error replies */
    _Atomic uint64_t progress;     /* replies of any phase */
    struct live_hist lh[BENCH_OP_COUNT];
};

struct shared {
    const struct bench_config *cfg;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    char *value; /* value_size bytes, then CRLF */
    char *auth_req; /* "set auth 0 0 N\r\nUSER PASSWORD\r\n", with a user */
    size_t auth_len;
    unsigned key_digits;
    /* Request line templates, the key's digits all '0' (put_key). */
    char set_tpl[HDR_CAP], get_tpl[HDR_CAP];
    size_t set_tpl_len, get_tpl_len;
    struct zipf zipf; /* BENCH_KEYS_ZIPF */
    _Atomic int phase;
    _Atomic unsigned settled;   /* workers whose connections were each tried once */
    _Atomic unsigned conns_up;  /* connections whose first attempt succeeded */
    _Atomic unsigned preloaded; /* workers done with their share of the keys */
    _Atomic unsigned finished;  /* workers done with their share of -n */
};

static uint64_t rng_next(uint64_t *s)
{
    /* splitmix64 */
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void set_first(char *dst, size_t cap, const char *msg)
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
static int udp_grow(struct conn *c, unsigned parts);

/* Datagrams the reply to a get of one value may take, so that reassembly
 * seldom has to grow its buffer while running. */
static unsigned udp_parts_expected(const struct bench_config *cfg)
{
    size_t reply = strlen("VALUE  4294967295 \r\n\r\nEND\r\n") + cfg->key_size +
                   digits_of(cfg->value_size) + cfg->value_size;

    return (unsigned)(reply / LIMIT_UDP_PAYLOAD_BYTES + 2);
}

/* Sets c up and allocates everything it will ever need but a larger reply.
 * Returns 0 or -ENOMEM (conn_free() cleans up either way). */
static int conn_init(struct conn *c, struct worker *w)
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
        return conn_grow(c, UDP_IN_CAP) < 0 || udp_grow(c, udp_parts_expected(cfg)) < 0
                   ? -ENOMEM
                   : 0;
    return conn_grow(c, IN_BUF_MIN);
}

static void conn_free(struct conn *c)
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
    free(c->udp_len);
    c->udp_len = NULL;
    free(c->udp_asm);
    c->udp_asm = NULL;
    client_reply_free(&c->r);
}

/* ------------------------------------------------------------------------ */
/* Connections                                                              */

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
    c->udp_total = c->udp_received = 0;
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
    set_first(w->first_conn_err, sizeof(w->first_conn_err), msg);
    c->tried = true;
    conn_close(c, now);
}

/* An open connection is given up: its outstanding requests are lost. */
static void conn_lost(struct conn *c, const char *why, uint64_t now)
{
    struct worker *w = c->w;

    w->disconnects++;
    w->lost += c->q_n;
    set_first(w->first_conn_err, sizeof(w->first_conn_err), why);
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
static void auth_failed(struct conn *c, int e, const char *what, const char *line, size_t n,
                        uint64_t now)
{
    struct worker *w = c->w;
    char esc[100], msg[160];

    w->conn_failures++;
    /* The message first: bench_run reads it once it sees the errno. */
    snprintf(msg, sizeof(msg), "%s: %s", what, log_escape(esc, sizeof(esc), line, n));
    set_first(w->first_conn_err, sizeof(w->first_conn_err), msg);
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
        auth_failed(c, EPROTO, "malformed reply while authenticating", c->in, c->in_len, now);
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
            auth_failed(c, EPROTO, "unexpected reply to version", c->r.line, c->r.line_len,
                        now);
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
    set_first(c->w->first_conn_err, sizeof(c->w->first_conn_err), msg);
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
        c->udp_total = c->udp_received = 0;
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
    return rng_next(&w->rng) % sh->cfg->keys;
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

/* Makes room for a reply of `parts` datagrams. */
static int udp_grow(struct conn *c, unsigned parts)
{
    uint32_t *len;
    char *buf;

    if (parts <= c->udp_parts_cap)
        return 0;
    len = realloc(c->udp_len, parts * sizeof(*len));
    if (len == NULL)
        return -ENOMEM;
    c->udp_len = len;
    buf = realloc(c->udp_asm, (size_t)parts * UDP_STRIDE);
    if (buf == NULL)
        return -ENOMEM;
    c->udp_asm = buf;
    c->udp_parts_cap = parts;
    return 0;
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
    c->udp_total = c->udp_received = 0;
    relaxed_inc(&c->w->progress);
}

/* A whole UDP reply payload for the outstanding request. */
static void udp_reply(struct conn *c, const char *buf, size_t len, uint64_t now)
{
    int rc = client_reply_parse(&c->r, buf, len);

    c->udp_total = c->udp_received = 0;
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
        set_first(c->w->first_conn_err, sizeof(c->w->first_conn_err), msg);
        udp_give_up(c);
    }
}

/* One datagram of a reply (header checked to be there). */
static void udp_datagram(struct conn *c, const char *d, size_t n, uint64_t now)
{
    struct worker *w = c->w;
    struct proto_udp_hdr h;
    const char *payload = d + LIMIT_UDP_HEADER_BYTES;
    size_t plen = n - LIMIT_UDP_HEADER_BYTES;

    proto_udp_read(d, &h);
    if (c->q_n == 0 || h.req_id != c->udp_id) {
        w->late_replies++;
        return;
    }
    if (h.total == 0 || h.seq >= h.total ||
        (c->udp_total != 0 && h.total != c->udp_total)) {
        udp_error(c, "reply", EPROTO);
        return;
    }
    if (h.total == 1) {
        udp_reply(c, payload, plen, now);
        return;
    }
    if (c->udp_total == 0) {
        if (udp_grow(c, h.total) < 0) {
            udp_error(c, "reply", ENOMEM);
            return;
        }
        for (unsigned i = 0; i < h.total; i++)
            c->udp_len[i] = UINT32_MAX;
        c->udp_total = h.total;
        c->udp_received = 0;
    }
    if (c->udp_len[h.seq] != UINT32_MAX)
        return; /* a duplicate */
    if (plen > UDP_STRIDE) {
        udp_error(c, "reply", EMSGSIZE);
        return;
    }
    memcpy(c->udp_asm + (size_t)h.seq * UDP_STRIDE, payload, plen);
    c->udp_len[h.seq] = (uint32_t)plen;
    if (++c->udp_received < c->udp_total)
        return;
    {
        /* Every part is in: close the gaps of the parts shorter than the
         * stride (normally the last one only, so nothing moves). */
        size_t off = 0;
        for (unsigned i = 0; i < c->udp_total; i++) {
            if (off != (size_t)i * UDP_STRIDE)
                memmove(c->udp_asm + off, c->udp_asm + (size_t)i * UDP_STRIDE,
                        c->udp_len[i]);
            off += c->udp_len[i];
        }
        udp_reply(c, c->udp_asm, off, now);
    }
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

static void *worker_main(void *arg)
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

/* ------------------------------------------------------------------------ */
/* Address                                                                  */

/* Waits for a non-blocking connect on fd; returns 0 or an errno code. */
static int wait_connect(int fd, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    int e = 0, n;
    socklen_t len = sizeof(e);

    do
        n = poll(&p, 1, timeout_ms);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return errno;
    if (n == 0)
        return ETIMEDOUT;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len) < 0)
        return errno;
    return e;
}

/*
 * Over UDP nothing says whether a server listens but an answer: sends a
 * "version" request from a socket connected to addr and waits for a reply
 * datagram with its id. Returns 0 or an errno code (ETIMEDOUT: no answer).
 */
static int udp_probe(int fd, const struct sockaddr *addr, socklen_t len, int timeout_ms)
{
    static const char req[] = "\xbe\xef\0\0\0\1\0\0version\r\n";
    uint64_t deadline = util_mono_ns() + (uint64_t)timeout_ms * NS_PER_MS;
    char buf[2048];

    if (connect(fd, addr, len) < 0)
        return errno;
    if (send(fd, req, sizeof(req) - 1, 0) < 0)
        return errno;
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        uint64_t now = util_mono_ns();
        ssize_t n;
        int r;

        if (now >= deadline)
            return ETIMEDOUT;
        r = poll(&p, 1, (int)((deadline - now + NS_PER_MS - 1) / NS_PER_MS));
        if (r < 0 && errno != EINTR)
            return errno;
        if (r <= 0)
            continue;
        n = recv(fd, buf, sizeof(buf), 0);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return errno;
        }
        if (n >= LIMIT_UDP_HEADER_BYTES && memcmp(buf, req, 2) == 0)
            return 0;
    }
}

/*
 * Resolves the server and connects once to each address in turn (over UDP:
 * asks it for its version); the first that answers is the one every
 * connection will use. Returns 0 or a negative errno code with a sentence in
 * err.
 */
static int resolve(struct shared *sh, char *err, size_t cap)
{
    const struct bench_config *cfg = sh->cfg;
    struct addrinfo *res = NULL, *ai;
    const char *why;
    int e = EHOSTUNREACH;

    if (util_resolve(cfg->host, cfg->port, cfg->udp ? SOCK_DGRAM : SOCK_STREAM, 0, &res,
                     &why) < 0)
        return util_errf(err, cap, -EHOSTUNREACH, "cannot resolve %s: %s", cfg->host, why);
    for (ai = res; ai != NULL; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                        ai->ai_protocol);
        if (fd < 0) {
            e = errno;
            continue;
        }
        if (cfg->udp)
            e = udp_probe(fd, ai->ai_addr, ai->ai_addrlen, cfg->timeout_ms);
        else if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            e = 0;
        else if (errno == EINPROGRESS)
            e = wait_connect(fd, cfg->timeout_ms);
        else
            e = errno;
        close(fd);
        if (e == 0 && ai->ai_addrlen <= sizeof(sh->addr)) {
            memcpy(&sh->addr, ai->ai_addr, ai->ai_addrlen);
            sh->addrlen = ai->ai_addrlen;
            break;
        }
    }
    freeaddrinfo(res);
    if (ai == NULL && cfg->udp)
        return util_errf(err, cap, -e,
                         "no answer over UDP from %s port %u: %s (memcached needs -U "
                         "PORT to listen on UDP)",
                         cfg->host, cfg->port,
                         e == ETIMEDOUT ? "timed out" : strerror(e));
    if (ai == NULL)
        return util_errf(err, cap, -e, "cannot connect to %s port %u: %s", cfg->host,
                         cfg->port, strerror(e));
    return 0;
}

/* ------------------------------------------------------------------------ */
/* The run                                                                  */

/* Where part i of n of total things starts (parts differ by at most 1). */
static uint64_t share_start(uint64_t total, unsigned i, unsigned n)
{
    uint64_t rem = total % n;

    return total / n * i + (i < rem ? i : rem);
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};

    nanosleep(&ts, NULL);
}

static bool interrupted(const struct bench_config *cfg)
{
    return cfg->interrupt != NULL && *cfg->interrupt != 0;
}

static void set_phase(struct shared *sh, enum phase p)
{
    atomic_store(&sh->phase, (int)p);
}

static uint64_t sum_progress(struct worker *ws, unsigned n)
{
    uint64_t s = 0;

    for (unsigned i = 0; i < n; i++)
        s += atomic_load_explicit(&ws[i].progress, memory_order_relaxed);
    return s;
}

static void fmt_lat(char *dst, size_t cap, uint64_t ns)
{
    double us = (double)ns / 1000.0;

    if (us < 10)
        snprintf(dst, cap, "%.2f us", us);
    else if (us < 100)
        snprintf(dst, cap, "%.1f us", us);
    else if (us < 1000)
        snprintf(dst, cap, "%.0f us", us);
    else if (us < 10000)
        snprintf(dst, cap, "%.2f ms", us / 1000);
    else if (us < 100000)
        snprintf(dst, cap, "%.1f ms", us / 1000);
    else if (us < 1000000)
        snprintf(dst, cap, "%.0f ms", us / 1000);
    else
        snprintf(dst, cap, "%.2f s", us / 1000000);
}

/* One live line: replies in the last second, average so far, p99 so far. */
static void live_line(const struct bench_config *cfg, struct worker *ws, unsigned nw,
                      struct hist *tmp, double secs, uint64_t *prev, double dt)
{
    uint64_t replies = 0, errors = 0;
    char p99[32];

    hist_init(tmp);
    for (unsigned i = 0; i < nw; i++) {
        replies += atomic_load_explicit(&ws[i].live_replies, memory_order_relaxed);
        errors += atomic_load_explicit(&ws[i].live_errors, memory_order_relaxed);
        for (unsigned op = 0; op < BENCH_OP_COUNT; op++)
            for (unsigned b = 0; b < HIST_BUCKETS; b++) {
                hist_add_bucket(
                    tmp, b,
                    atomic_load_explicit(&ws[i].lh[op].counts[b], memory_order_relaxed));
            }
    }
    tmp->max_ns = UINT64_MAX; /* percentiles up to the bucket's top */
    fmt_lat(p99, sizeof(p99), hist_percentile(tmp, 99));
    fprintf(cfg->live,
            "%6.0fs %10.0f ops/s now %10.0f ops/s so far   p99 so far %-9s errors "
            "%" PRIu64 "\n",
            secs, dt > 0 ? (double)(replies - *prev) / dt : 0.0,
            secs > 0 ? (double)replies / secs : 0.0, p99, errors);
    fflush(cfg->live);
    *prev = replies;
}

static void counts_add(struct bench_counts *into, const struct bench_counts *from)
{
    into->replies += from->replies;
    into->hits += from->hits;
    into->misses += from->misses;
    for (unsigned i = 0; i < BENCH_OP_COUNT; i++)
        into->ok[i] += from->ok[i];
    for (unsigned i = 0; i < BENCH_ERR_COUNT; i++)
        into->err[i] += from->err[i];
}

static void collect(struct bench_result *res, struct worker *ws, unsigned nw)
{
    for (unsigned op = 0; op < BENCH_OP_COUNT; op++)
        hist_init(&res->hist[op]);
    hist_init(&res->all);
    for (unsigned i = 0; i < nw; i++) {
        struct worker *w = &ws[i];
        counts_add(&res->measured, &w->measured);
        counts_add(&res->preload, &w->preload);
        res->conn_failures += w->conn_failures;
        res->disconnects += w->disconnects;
        res->timeouts += w->timeouts;
        res->udp_timeouts += w->udp_timeouts;
        res->late_replies += w->late_replies;
        res->udp_errors += w->udp_errors;
        res->lost += w->lost;
        res->unfinished += w->unfinished;
        for (unsigned e = 0; e < BENCH_ERR_COUNT; e++)
            set_first(res->first_err[e], sizeof(res->first_err[e]), w->first_err[e]);
        set_first(res->first_conn_err, sizeof(res->first_conn_err), w->first_conn_err);
        for (unsigned op = 0; op < BENCH_OP_COUNT; op++) {
            struct hist *h = &res->hist[op];
            for (unsigned b = 0; b < HIST_BUCKETS; b++)
                hist_add_bucket(h, b, atomic_load(&w->lh[op].counts[b]));
            h->overflow += w->lat_overflow[op];
            h->sum_ns += w->lat_sum[op];
            if (w->lat_max[op] > h->max_ns)
                h->max_ns = w->lat_max[op];
            if (w->lat_min[op] < h->min_ns)
                h->min_ns = w->lat_min[op];
        }
    }
    for (unsigned op = 0; op < BENCH_OP_COUNT; op++)
        hist_merge(&res->all, &res->hist[op]);
}

/* Waits until *counter reaches target, the run is interrupted, or nothing
 * has progressed for stall_ns. Returns 0, or 1 when it stopped waiting. */
static int wait_for(struct shared *sh, _Atomic unsigned *counter, unsigned target,
                    struct worker *ws, unsigned nw, uint64_t stall_ns,
                    struct bench_result *res)
{
    uint64_t last = sum_progress(ws, nw), last_t = util_mono_ns();

    while (atomic_load(counter) < target) {
        uint64_t now, p;
        if (interrupted(sh->cfg)) {
            res->interrupted = true;
            return 1;
        }
        sleep_ms(5);
        now = util_mono_ns();
        p = sum_progress(ws, nw);
        if (p != last) {
            last = p;
            last_t = now;
        } else if (stall_ns > 0 && now - last_t >= stall_ns) {
            res->stalled = true;
            return 1;
        }
    }
    return 0;
}

int bench_run(const struct bench_config *cfg, struct bench_result *res, char *err,
              size_t cap)
{
    struct shared sh;
    struct worker *ws = NULL;
    struct hist *tmp = NULL;
    unsigned nw;
    uint64_t stall_ns, t0 = 0, t_stop = 0, t;
    int rc;

    memset(res, 0, sizeof(*res));
    if ((rc = bench_config_check(cfg, err, cap)) < 0)
        return rc;
    memset(&sh, 0, sizeof(sh));
    sh.cfg = cfg;
    sh.key_digits = digits_of(cfg->keys - 1);
    {
        size_t plen = strlen(cfg->key_prefix);
        char key[256];
        memcpy(key, cfg->key_prefix, plen);
        memset(key + plen, '0', cfg->key_size - plen);
        key[cfg->key_size] = '\0';
        sh.set_tpl_len = (size_t)snprintf(sh.set_tpl, sizeof(sh.set_tpl),
                                          "set %s 0 0 %u\r\n", key, cfg->value_size);
        sh.get_tpl_len =
            (size_t)snprintf(sh.get_tpl, sizeof(sh.get_tpl), "get %s\r\n", key);
    }
    if (cfg->key_dist == BENCH_KEYS_ZIPF &&
        zipf_init(&sh.zipf, cfg->keys, cfg->zipf_s) < 0)
        return util_errf(err, cap, -EINVAL, "bad zipf parameters");
    if (cfg->user) {
        size_t nu = strlen(cfg->user), cap_req = 64 + nu + cfg->npass;
        int h;
        if ((sh.auth_req = malloc(cap_req)) == NULL)
            return util_errf(err, cap, -ENOMEM, "out of memory");
        h = snprintf(sh.auth_req, cap_req, "set auth 0 0 %zu\r\n", nu + 1 + cfg->npass);
        memcpy(sh.auth_req + h, cfg->user, nu);
        sh.auth_req[h + nu] = ' ';
        memcpy(sh.auth_req + h + nu + 1, cfg->pass, cfg->npass);
        memcpy(sh.auth_req + h + nu + 1 + cfg->npass, "\r\n", 2);
        sh.auth_len = (size_t)h + nu + 1 + cfg->npass + 2;
    }
    atomic_init(&sh.phase, PH_CONNECT);
    atomic_init(&sh.settled, 0);
    atomic_init(&sh.conns_up, 0);
    atomic_init(&sh.preloaded, 0);
    atomic_init(&sh.finished, 0);
    if ((rc = resolve(&sh, err, cap)) < 0)
        return rc;

    nw = cfg->threads < cfg->conns ? cfg->threads : cfg->conns;
    res->threads = nw;
    stall_ns = 2 * (uint64_t)cfg->timeout_ms * NS_PER_MS + NS_PER_S;
    sh.value = malloc((size_t)cfg->value_size + 2);
    ws = calloc(nw, sizeof(*ws));
    tmp = malloc(sizeof(*tmp));
    if (sh.value == NULL || ws == NULL || tmp == NULL) {
        rc = util_errf(err, cap, -ENOMEM, "out of memory");
        goto out;
    }
    {
        uint64_t s = cfg->seed ^ 0x5851f42d4c957f2dull;
        static const char alnum[] = "abcdefghijklmnopqrstuvwxyz0123456789";
        for (unsigned i = 0; i < cfg->value_size; i++)
            sh.value[i] = alnum[rng_next(&s) % (sizeof(alnum) - 1)];
        memcpy(sh.value + cfg->value_size, "\r\n", 2);
    }
    for (unsigned i = 0; i < nw; i++)
        ws[i].ep = -1; /* for the clean-up, should a later step fail */
    for (unsigned i = 0; i < nw; i++) {
        struct worker *w = &ws[i];
        unsigned c0 = (unsigned)((uint64_t)cfg->conns * i / nw);
        unsigned c1 = (unsigned)((uint64_t)cfg->conns * (i + 1) / nw);
        w->sh = &sh;
        w->index = i;
        w->phase = PH_CONNECT;
        w->rng = cfg->seed * 0x9e3779b97f4a7c15ull + i + 1;
        w->pre_next = share_start(cfg->keys, i, nw);
        w->pre_end = share_start(cfg->keys, i + 1, nw);
        w->quota_mode = cfg->requests > 0;
        w->quota =
            share_start(cfg->requests, i + 1, nw) - share_start(cfg->requests, i, nw);
        for (unsigned op = 0; op < BENCH_OP_COUNT; op++) {
            w->lat_min[op] = UINT64_MAX;
            for (unsigned b = 0; b < HIST_BUCKETS; b++)
                atomic_init(&w->lh[op].counts[b], 0);
        }
        atomic_init(&w->live_replies, 0);
        atomic_init(&w->live_errors, 0);
        atomic_init(&w->progress, 0);
        atomic_init(&w->first_conn_errno, 0);
        w->nconns = c1 - c0;
        w->conns = calloc(w->nconns, sizeof(*w->conns));
        w->ep = epoll_create1(EPOLL_CLOEXEC);
        if (w->conns == NULL || w->ep < 0) {
            rc = util_errf(err, cap, w->ep < 0 ? -errno : -ENOMEM,
                           "cannot set up worker %u: %s", i,
                           w->ep < 0 ? strerror(errno) : "out of memory");
            goto out;
        }
        for (unsigned j = 0; j < w->nconns; j++)
            w->conns[j].fd = -1; /* for the clean-up, should one fail */
        for (unsigned j = 0; j < w->nconns; j++) {
            if (conn_init(&w->conns[j], w) < 0) {
                rc = util_errf(err, cap, -ENOMEM, "out of memory");
                goto out;
            }
        }
    }
    for (unsigned i = 0; i < nw; i++) {
        int e = pthread_create(&ws[i].tid, NULL, worker_main, &ws[i]);
        if (e != 0) {
            rc = util_errf(err, cap, -e, "cannot start a thread: %s", strerror(e));
            goto stop;
        }
        ws[i].started = true;
    }

    /* Connect: every connection tried once (each bounded by timeout_ms). */
    if (wait_for(&sh, &sh.settled, nw, ws, nw, 0, res) != 0)
        goto stop;
    res->conns_up = atomic_load(&sh.conns_up);
    if (res->conns_up == 0) {
        int e = 0;
        unsigned wi = 0;
        for (unsigned i = 0; i < nw && e == 0; i++)
            if ((e = atomic_load(&ws[i].first_conn_errno)) != 0)
                wi = i;
        if (e == 0)
            e = ECONNREFUSED;
        if (e == EACCES || e == EPROTO)
            /* Connected, but the authentication did not go through: what
             * the server said is worth more than strerror. */
            rc = util_errf(err, cap, -e, "%s port %u: %s", cfg->host, cfg->port,
                           ws[wi].first_conn_err);
        else
            rc = util_errf(err, cap, -e, "cannot connect to %s port %u: %s", cfg->host,
                           cfg->port, strerror(e));
        goto stop;
    }

    if (cfg->preload) {
        if (cfg->live) {
            fprintf(cfg->live, "preloading %" PRIu64 " keys...\n", cfg->keys);
            fflush(cfg->live);
        }
        t = util_mono_ns();
        set_phase(&sh, PH_PRELOAD);
        rc = wait_for(&sh, &sh.preloaded, nw, ws, nw, stall_ns, res);
        res->preload_s = (double)(util_mono_ns() - t) / 1e9;
        if (rc != 0) {
            rc = 0;
            goto stop;
        }
    }
    if (cfg->warmup_s > 0) {
        uint64_t end;
        if (cfg->live) {
            fprintf(cfg->live, "warming up for %g s...\n", cfg->warmup_s);
            fflush(cfg->live);
        }
        t = util_mono_ns();
        end = t + (uint64_t)(cfg->warmup_s * 1e9);
        set_phase(&sh, PH_WARMUP);
        while (util_mono_ns() < end) {
            if (interrupted(cfg)) {
                res->interrupted = true;
                res->warmup_s = (double)(util_mono_ns() - t) / 1e9;
                rc = 0;
                goto stop;
            }
            sleep_ms(5);
        }
        res->warmup_s = (double)(util_mono_ns() - t) / 1e9;
    }

    if (cfg->live) {
        if (cfg->requests > 0)
            fprintf(cfg->live, "measuring %" PRIu64 " requests...\n", cfg->requests);
        else
            fprintf(cfg->live, "measuring for %g s...\n", cfg->duration_s);
        fflush(cfg->live);
    }
    t0 = util_mono_ns();
    set_phase(&sh, PH_MEASURE);
    {
        uint64_t next_live = t0 + NS_PER_S, prev_live_t = t0, prev_replies = 0;
        uint64_t end = t0 + (uint64_t)(cfg->duration_s * 1e9);
        uint64_t last = sum_progress(ws, nw), last_t = t0;
        for (;;) {
            uint64_t now, p;
            sleep_ms(5);
            now = util_mono_ns();
            if (interrupted(cfg)) {
                res->interrupted = true;
                break;
            }
            if (cfg->requests == 0 && now >= end)
                break;
            if (cfg->requests > 0 && atomic_load(&sh.finished) == nw)
                break;
            p = sum_progress(ws, nw);
            if (p != last) {
                last = p;
                last_t = now;
            } else if (now - last_t >= stall_ns) {
                res->stalled = true;
                break;
            }
            if (cfg->live && now >= next_live) {
                live_line(cfg, ws, nw, tmp, (double)(now - t0) / 1e9, &prev_replies,
                          (double)(now - prev_live_t) / 1e9);
                prev_live_t = now;
                next_live += NS_PER_S;
            }
        }
    }
    t_stop = util_mono_ns();
    rc = 0;

stop:
    set_phase(&sh, PH_STOP);
    for (unsigned i = 0; i < nw; i++)
        if (ws[i].started)
            pthread_join(ws[i].tid, NULL);
    if (rc == 0) {
        uint64_t last = 0;
        collect(res, ws, nw);
        for (unsigned i = 0; i < nw; i++)
            if (ws[i].last_measured_ns > last)
                last = ws[i].last_measured_ns;
        if (t0 != 0) {
            /* -n: until the last reply; a duration: at least the duration
             * (a stall at the end must not shorten the window). */
            uint64_t end = cfg->requests > 0 && !res->interrupted && !res->stalled
                               ? last
                               : (last > t_stop ? last : t_stop);
            if (end <= t0)
                end = t_stop > t0 ? t_stop : t0 + 1;
            res->elapsed_s = (double)(end - t0) / 1e9;
        }
    }
out:
    if (ws != NULL) {
        for (unsigned i = 0; i < nw; i++) {
            if (ws[i].conns != NULL)
                for (unsigned j = 0; j < ws[i].nconns; j++)
                    conn_free(&ws[i].conns[j]);
            free(ws[i].conns);
            if (ws[i].ep >= 0)
                close(ws[i].ep);
        }
    }
    free(ws);
    free(tmp);
    free(sh.value);
    if (sh.auth_req) {
        memset(sh.auth_req, 0, sh.auth_len); /* the password */
        free(sh.auth_req);
    }
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Reports                                                                  */

static const char *const err_names[BENCH_ERR_COUNT] = {
    [BENCH_ERR_ERROR] = "ERROR",
    [BENCH_ERR_CLIENT] = "CLIENT_ERROR",
    [BENCH_ERR_SERVER] = "SERVER_ERROR",
    [BENCH_ERR_UNEXPECTED] = "unexpected",
};

static uint64_t err_total(const struct bench_counts *k)
{
    uint64_t n = 0;

    for (unsigned i = 0; i < BENCH_ERR_COUNT; i++)
        n += k->err[i];
    return n;
}

static void print_lat_row(FILE *f, const char *name, const struct hist *h)
{
    static const double ps[] = {50, 90, 99, 99.9};
    char v[32];

    fprintf(f, "  %-9s", name);
    if (h->total == 0) {
        fputs("  (none)\n", f);
        return;
    }
    for (unsigned i = 0; i < ARRAY_SIZE(ps); i++) {
        fmt_lat(v, sizeof(v), hist_percentile(h, ps[i]));
        fprintf(f, " %10s", v);
    }
    fmt_lat(v, sizeof(v), h->max_ns);
    fprintf(f, " %10s", v);
    fmt_lat(v, sizeof(v), (uint64_t)(h->sum_ns / (double)h->total));
    fprintf(f, " %10s\n", v);
}

void bench_print_text(FILE *f, const struct bench_config *cfg,
                      const struct bench_result *res)
{
    const struct bench_counts *m = &res->measured;
    uint64_t errs = err_total(m);
    double secs = res->elapsed_s > 0 ? res->elapsed_s : 1;

    char dist[48];

    if (cfg->key_dist == BENCH_KEYS_ZIPF)
        snprintf(dist, sizeof(dist), "zipf, s = %g", cfg->zipf_s);
    else
        snprintf(dist, sizeof(dist), "uniform");
    fprintf(f, "server      %s port %u (%s)\n", cfg->host, cfg->port,
            cfg->udp ? "UDP" : "TCP");
    fprintf(f,
            "load        %u %s%s (%u open at start) on %u thread%s, %u request%s "
            "outstanding per %s\n",
            cfg->conns, cfg->udp ? "socket" : "connection", cfg->conns == 1 ? "" : "s",
            res->conns_up, res->threads, res->threads == 1 ? "" : "s", cfg->pipeline,
            cfg->pipeline == 1 ? "" : "s", cfg->udp ? "socket" : "connection");
    fprintf(f,
            "workload    set:get %u:%u, %" PRIu64 " keys of %u bytes (%s), values of "
            "%u bytes\n",
            cfg->ratio_set, cfg->ratio_get, cfg->keys, cfg->key_size, dist,
            cfg->value_size);
    if (cfg->preload || cfg->ratio_set > 0)
        fprintf(f, "left        up to %" PRIu64 " keys named %s* in the store (they stay)\n",
                cfg->keys, cfg->key_prefix);
    if (cfg->preload)
        fprintf(f,
                "preload     %" PRIu64 " sets in %.2f s (%.0f sets/s), %" PRIu64
                " errors\n",
                res->preload.ok[BENCH_OP_SET], res->preload_s,
                res->preload_s > 0 ? (double)res->preload.replies / res->preload_s : 0.0,
                err_total(&res->preload));
    fprintf(f, "measured    %.2f s", res->elapsed_s);
    if (res->warmup_s > 0)
        fprintf(f, " after %.2f s of warm-up", res->warmup_s);
    if (res->interrupted)
        fputs(" (interrupted)", f);
    if (res->stalled)
        fputs(" (STOPPED EARLY: no reply for 2 x timeout + 1 s)", f);
    fputc('\n', f);
    fprintf(f,
            "requests    %" PRIu64 " (%" PRIu64 " sets, %" PRIu64 " gets, %" PRIu64
            " errors)\n",
            m->replies, m->ok[BENCH_OP_SET], m->ok[BENCH_OP_GET], errs);
    fprintf(f, "ops/s       %.0f\n", (double)m->replies / secs);
    fprintf(f, "latency     %10s %10s %10s %10s %10s %10s\n", "p50", "p90", "p99",
            "p99.9", "max", "mean");
    print_lat_row(f, "all", &res->all);
    if (cfg->ratio_set > 0 && cfg->ratio_get > 0) {
        print_lat_row(f, "set", &res->hist[BENCH_OP_SET]);
        print_lat_row(f, "get", &res->hist[BENCH_OP_GET]);
    }
    if (cfg->ratio_get > 0)
        fprintf(f, "gets        %" PRIu64 " hits, %" PRIu64 " misses (%.1f%% misses)\n",
                m->hits, m->misses,
                m->ok[BENCH_OP_GET]
                    ? 100.0 * (double)m->misses / (double)m->ok[BENCH_OP_GET]
                    : 0.0);
    fprintf(f, "errors      %" PRIu64, errs);
    for (unsigned i = 0; i < BENCH_ERR_COUNT; i++)
        fprintf(f, "%s%s %" PRIu64, i == 0 ? " (" : ", ", err_names[i], m->err[i]);
    fputs(")\n", f);
    for (unsigned i = 0; i < BENCH_ERR_COUNT; i++)
        if (res->first_err[i][0] != '\0')
            fprintf(f, "            first %s: %s\n", err_names[i], res->first_err[i]);
    fprintf(f,
            "connections %" PRIu64 " failed attempts, %" PRIu64 " dropped (%" PRIu64
            " of them after a reply timeout)\n",
            res->conn_failures, res->disconnects, res->timeouts);
    if (res->lost > 0 || res->unfinished > 0)
        fprintf(f,
                "            %" PRIu64 " requests lost with their connection, %" PRIu64
                " unanswered at the end\n",
                res->lost, res->unfinished);
    if (cfg->udp)
        fprintf(f,
                "udp         %" PRIu64
                " UDP timeouts (no whole reply within %d ms), %" PRIu64
                " late replies dropped, %" PRIu64 " send/receive errors\n",
                res->udp_timeouts, cfg->timeout_ms, res->late_replies, res->udp_errors);
    if (res->first_conn_err[0] != '\0')
        fprintf(f, "            first problem: %s\n", res->first_conn_err);
    if (res->all.overflow > 0)
        fprintf(
            f, "            %" PRIu64 " latencies above the histogram's range (68.7 s)\n",
            res->all.overflow);
    if (errs > 0)
        fprintf(f, "WARNING: %.2f%% of the replies were errors (ops/s counts them)\n",
                100.0 * (double)errs / (double)(m->replies ? m->replies : 1));
}

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20 || ch >= 0x7f)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

static void json_lat(FILE *f, const char *name, const struct hist *h)
{
    fprintf(f, ",\"%s\":", name);
    if (h->total == 0) {
        fputs("null", f);
        return;
    }
    fprintf(f,
            "{\"count\":%" PRIu64 ",\"p50\":%.1f,\"p90\":%.1f,\"p99\":%.1f,"
            "\"p99_9\":%.1f,\"max\":%.1f,\"min\":%.1f,\"mean\":%.1f}",
            h->total, (double)hist_percentile(h, 50) / 1000,
            (double)hist_percentile(h, 90) / 1000, (double)hist_percentile(h, 99) / 1000,
            (double)hist_percentile(h, 99.9) / 1000, (double)h->max_ns / 1000,
            (double)h->min_ns / 1000, h->sum_ns / (double)h->total / 1000);
}

static void json_counts(FILE *f, const struct bench_counts *k)
{
    fprintf(f,
            "{\"replies\":%" PRIu64 ",\"sets\":%" PRIu64 ",\"gets\":%" PRIu64
            ",\"hits\":%" PRIu64 ",\"misses\":%" PRIu64 ",\"errors\":{\"total\":%" PRIu64,
            k->replies, k->ok[BENCH_OP_SET], k->ok[BENCH_OP_GET], k->hits, k->misses,
            err_total(k));
    for (unsigned i = 0; i < BENCH_ERR_COUNT; i++)
        fprintf(f, ",\"%s\":%" PRIu64, err_names[i], k->err[i]);
    fputs("}}", f);
}

void bench_print_json(FILE *f, const struct bench_config *cfg,
                      const struct bench_result *res)
{
    const struct bench_counts *m = &res->measured;
    double secs = res->elapsed_s > 0 ? res->elapsed_s : 1;
    const char *dist = cfg->key_dist == BENCH_KEYS_ZIPF ? "zipf" : "uniform";

    fputs("{\"server\":", f);
    json_str(f, cfg->host);
    fprintf(f,
            ",\"port\":%u,\"conns\":%u,\"conns_open\":%u,\"threads\":%u,"
            "\"pipeline\":%u,\"depth\":%u,\"transport\":\"%s\",\"ratio\":\"%u:%u\","
            "\"key_size\":%u,\"value_size\":%u,"
            "\"keys\":%" PRIu64 ",\"key_distribution\":\"%s\",\"dist\":\"%s\","
            "\"zipf_s\":%g,\"preload\":%s,"
            "\"requests_asked\":%" PRIu64 ",\"duration_asked_s\":%.3f,"
            "\"warmup_s\":%.3f,\"preload_s\":%.3f,\"elapsed_s\":%.3f,"
            "\"interrupted\":%s,\"stalled\":%s,",
            cfg->port, cfg->conns, res->conns_up, res->threads, cfg->pipeline,
            cfg->pipeline, cfg->udp ? "udp" : "tcp", cfg->ratio_set, cfg->ratio_get,
            cfg->key_size, cfg->value_size, cfg->keys, dist, dist,
            cfg->key_dist == BENCH_KEYS_ZIPF ? cfg->zipf_s : 0.0,
            cfg->preload ? "true" : "false", cfg->requests,
            cfg->requests ? 0.0 : cfg->duration_s, res->warmup_s, res->preload_s,
            res->elapsed_s, res->interrupted ? "true" : "false",
            res->stalled ? "true" : "false");
    fprintf(f, "\"requests\":%" PRIu64 ",\"ops_per_sec\":%.1f,\"measured\":", m->replies,
            (double)m->replies / secs);
    json_counts(f, m);
    fputs(",\"preloaded\":", f);
    json_counts(f, &res->preload);
    fputs(",\"latency_unit\":\"us\"", f);
    json_lat(f, "latency", &res->all);
    json_lat(f, "set_latency", &res->hist[BENCH_OP_SET]);
    json_lat(f, "get_latency", &res->hist[BENCH_OP_GET]);
    /* The histogram itself, so runs (e.g. parallel processes) can be merged. */
    fputs(",\"latency_histogram\":{\"unit\":\"ns\",\"bucket_top\":[", f);
    for (unsigned i = 0, n = 0; i < HIST_BUCKETS; i++)
        if (res->all.counts[i] > 0)
            fprintf(f, "%s%" PRIu64, n++ ? "," : "", hist_bucket_high(i));
    fputs("],\"count\":[", f);
    for (unsigned i = 0, n = 0; i < HIST_BUCKETS; i++)
        if (res->all.counts[i] > 0)
            fprintf(f, "%s%" PRIu64, n++ ? "," : "", res->all.counts[i]);
    fprintf(f, "],\"max\":%" PRIu64 "}", res->all.total ? res->all.max_ns : 0);
    fprintf(f,
            ",\"conn_failures\":%" PRIu64 ",\"disconnects\":%" PRIu64
            ",\"timeouts\":%" PRIu64 ",\"lost\":%" PRIu64 ",\"unfinished\":%" PRIu64
            ",\"udp_timeouts\":%" PRIu64 ",\"late_replies\":%" PRIu64
            ",\"udp_errors\":%" PRIu64 ",\"latency_overflow\":%" PRIu64,
            res->conn_failures, res->disconnects, res->timeouts, res->lost,
            res->unfinished, res->udp_timeouts, res->late_replies, res->udp_errors,
            res->all.overflow);
    fputs(",\"first_errors\":{", f);
    for (unsigned i = 0, n = 0; i < BENCH_ERR_COUNT; i++) {
        if (res->first_err[i][0] == '\0')
            continue;
        fprintf(f, "%s\"%s\":", n++ ? "," : "", err_names[i]);
        json_str(f, res->first_err[i]);
    }
    fputs("},\"first_connection_problem\":", f);
    if (res->first_conn_err[0] != '\0')
        json_str(f, res->first_conn_err);
    else
        fputs("null", f);
    fputs("}\n", f);
}
