/*
 * bench.c - the load generator behind `clie bench` (see bench.h for the
 * model: closed loop, phases, what is counted; bench_int.h for how its
 * files divide the work): the configuration, the server's address, and the
 * run: workers started, phases driven, results collected.
 */

#include "bench_int.h"

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

unsigned bench_digits_of(uint64_t v)
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
    need = (unsigned)strlen(cfg->key_prefix) + bench_digits_of(cfg->keys - 1);
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
                         strlen(" 0 0 \r\n") + bench_digits_of(cfg->value_size) +
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
        return util_errf(err, cap, -EHOSTUNREACH, "cannot resolve %s: %s", cfg->host,
                         why);
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

void bench_fmt_lat(char *dst, size_t cap, uint64_t ns)
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
    bench_fmt_lat(p99, sizeof(p99), hist_percentile(tmp, 99));
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
            bench_set_first(res->first_err[e], sizeof(res->first_err[e]),
                            w->first_err[e]);
        bench_set_first(res->first_conn_err, sizeof(res->first_conn_err),
                        w->first_conn_err);
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

/* The request templates, the key distribution, the credentials set and
 * the value every set sends: what the workers share. */
static int shared_init(struct shared *sh, const struct bench_config *cfg, char *err,
                       size_t cap)
{
    size_t plen = strlen(cfg->key_prefix);
    uint64_t seed = cfg->seed ^ 0x5851f42d4c957f2dull;
    static const char alnum[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    char key[256];

    memset(sh, 0, sizeof(*sh));
    sh->cfg = cfg;
    sh->key_digits = bench_digits_of(cfg->keys - 1);
    memcpy(key, cfg->key_prefix, plen);
    memset(key + plen, '0', cfg->key_size - plen);
    key[cfg->key_size] = '\0';
    sh->set_tpl_len = (size_t)snprintf(sh->set_tpl, sizeof(sh->set_tpl),
                                       "set %s 0 0 %u\r\n", key, cfg->value_size);
    sh->get_tpl_len =
        (size_t)snprintf(sh->get_tpl, sizeof(sh->get_tpl), "get %s\r\n", key);
    if (cfg->key_dist == BENCH_KEYS_ZIPF &&
        zipf_init(&sh->zipf, cfg->keys, cfg->zipf_s) < 0)
        return util_errf(err, cap, -EINVAL, "bad zipf parameters");
    if (cfg->user) {
        /* The same credentials set lib/client sends (client_auth). */
        struct buf req = BUF_INIT;
        size_t nline;
        int r = client_auth_request(&req, &nline, cfg->user, cfg->pass, cfg->npass);
        if (r < 0) {
            buf_free(&req);
            return util_errf(err, cap, r,
                             r == -ENOMEM ? "out of memory"
                                          : "invalid --user or password");
        }
        sh->auth_req = req.data; /* shared_free zeroes and frees it */
        sh->auth_len = req.len;
    }
    atomic_init(&sh->phase, PH_CONNECT);
    atomic_init(&sh->settled, 0);
    atomic_init(&sh->conns_up, 0);
    atomic_init(&sh->preloaded, 0);
    atomic_init(&sh->finished, 0);
    if ((sh->value = malloc((size_t)cfg->value_size + 2)) == NULL)
        return util_errf(err, cap, -ENOMEM, "out of memory");
    for (unsigned i = 0; i < cfg->value_size; i++)
        sh->value[i] = alnum[bench_rng_next(&seed) % (sizeof(alnum) - 1)];
    memcpy(sh->value + cfg->value_size, "\r\n", 2);
    return 0;
}

static void shared_free(struct shared *sh)
{
    free(sh->value);
    if (sh->auth_req) {
        memset(sh->auth_req, 0, sh->auth_len); /* the password */
        free(sh->auth_req);
    }
}

/* Worker i of nw: its share of the connections, keys and requests. */
static int worker_init(struct worker *w, struct shared *sh, unsigned i, unsigned nw,
                       char *err, size_t cap)
{
    const struct bench_config *cfg = sh->cfg;
    unsigned c0 = (unsigned)((uint64_t)cfg->conns * i / nw);
    unsigned c1 = (unsigned)((uint64_t)cfg->conns * (i + 1) / nw);

    w->sh = sh;
    w->index = i;
    w->phase = PH_CONNECT;
    w->rng = cfg->seed * 0x9e3779b97f4a7c15ull + i + 1;
    w->pre_next = share_start(cfg->keys, i, nw);
    w->pre_end = share_start(cfg->keys, i + 1, nw);
    w->quota_mode = cfg->requests > 0;
    w->quota = share_start(cfg->requests, i + 1, nw) - share_start(cfg->requests, i, nw);
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
    if (w->conns == NULL || w->ep < 0)
        return util_errf(err, cap, w->ep < 0 ? -errno : -ENOMEM,
                         "cannot set up worker %u: %s", i,
                         w->ep < 0 ? strerror(errno) : "out of memory");
    for (unsigned j = 0; j < w->nconns; j++)
        w->conns[j].fd = -1; /* for the clean-up, should one fail */
    for (unsigned j = 0; j < w->nconns; j++)
        if (bench_conn_init(&w->conns[j], w) < 0)
            return util_errf(err, cap, -ENOMEM, "out of memory");
    return 0;
}

/* No connection came up: why, from the first worker that knows. */
static int no_connection(const struct bench_config *cfg, struct worker *ws, unsigned nw,
                         char *err, size_t cap)
{
    int e = 0;
    unsigned wi = 0;

    for (unsigned i = 0; i < nw && e == 0; i++)
        if ((e = atomic_load(&ws[i].first_conn_errno)) != 0)
            wi = i;
    if (e == 0)
        e = ECONNREFUSED;
    if (e == EACCES || e == EPROTO)
        /* Connected, but the authentication did not go through: what the
         * server said is worth more than strerror. */
        return util_errf(err, cap, -e, "%s port %u: %s", cfg->host, cfg->port,
                         ws[wi].first_conn_err);
    return util_errf(err, cap, -e, "cannot connect to %s port %u: %s", cfg->host,
                     cfg->port, strerror(e));
}

/* The phases before the measured one: preload, warm-up. Returns 0 to go
 * on to measuring, 1 if the run ended (interrupted, stalled). */
static int before_measuring(struct shared *sh, struct worker *ws, unsigned nw,
                            uint64_t stall_ns, struct bench_result *res)
{
    const struct bench_config *cfg = sh->cfg;
    uint64_t t;

    if (cfg->preload) {
        if (cfg->live) {
            fprintf(cfg->live, "preloading %" PRIu64 " keys...\n", cfg->keys);
            fflush(cfg->live);
        }
        t = util_mono_ns();
        set_phase(sh, PH_PRELOAD);
        int rc = wait_for(sh, &sh->preloaded, nw, ws, nw, stall_ns, res);
        res->preload_s = (double)(util_mono_ns() - t) / 1e9;
        if (rc != 0)
            return 1;
    }
    if (cfg->warmup_s > 0) {
        if (cfg->live) {
            fprintf(cfg->live, "warming up for %g s...\n", cfg->warmup_s);
            fflush(cfg->live);
        }
        t = util_mono_ns();
        uint64_t end = t + (uint64_t)(cfg->warmup_s * 1e9);
        set_phase(sh, PH_WARMUP);
        while (util_mono_ns() < end) {
            if (interrupted(cfg)) {
                res->interrupted = true;
                res->warmup_s = (double)(util_mono_ns() - t) / 1e9;
                return 1;
            }
            sleep_ms(5);
        }
        res->warmup_s = (double)(util_mono_ns() - t) / 1e9;
    }
    return 0;
}

/* The measured phase, until its requests are done, its time is up, it is
 * interrupted or it stalls; a live line a second. Sets *t0 and *t_stop. */
static void measure(struct shared *sh, struct worker *ws, unsigned nw, uint64_t stall_ns,
                    struct hist *tmp, struct bench_result *res, uint64_t *t0,
                    uint64_t *t_stop)
{
    const struct bench_config *cfg = sh->cfg;

    if (cfg->live) {
        if (cfg->requests > 0)
            fprintf(cfg->live, "measuring %" PRIu64 " requests...\n", cfg->requests);
        else
            fprintf(cfg->live, "measuring for %g s...\n", cfg->duration_s);
        fflush(cfg->live);
    }
    *t0 = util_mono_ns();
    set_phase(sh, PH_MEASURE);
    uint64_t next_live = *t0 + NS_PER_S, prev_live_t = *t0, prev_replies = 0;
    uint64_t end = *t0 + (uint64_t)(cfg->duration_s * 1e9);
    uint64_t last = sum_progress(ws, nw), last_t = *t0;
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
        if (cfg->requests > 0 && atomic_load(&sh->finished) == nw)
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
            live_line(cfg, ws, nw, tmp, (double)(now - *t0) / 1e9, &prev_replies,
                      (double)(now - prev_live_t) / 1e9);
            prev_live_t = now;
            next_live += NS_PER_S;
        }
    }
    *t_stop = util_mono_ns();
}

/* The measured window: with -n, until the last reply; with a duration, at
 * least the duration (a stall at the end must not shorten it). */
static double elapsed_s(const struct bench_config *cfg, const struct bench_result *res,
                        struct worker *ws, unsigned nw, uint64_t t0, uint64_t t_stop)
{
    uint64_t last = 0, end;

    for (unsigned i = 0; i < nw; i++)
        if (ws[i].last_measured_ns > last)
            last = ws[i].last_measured_ns;
    end = cfg->requests > 0 && !res->interrupted && !res->stalled
              ? last
              : (last > t_stop ? last : t_stop);
    if (end <= t0)
        end = t_stop > t0 ? t_stop : t0 + 1;
    return (double)(end - t0) / 1e9;
}

int bench_run(const struct bench_config *cfg, struct bench_result *res, char *err,
              size_t cap)
{
    struct shared sh;
    struct worker *ws = NULL;
    struct hist *tmp = NULL;
    unsigned nw;
    uint64_t stall_ns, t0 = 0, t_stop = 0;
    int rc;

    memset(res, 0, sizeof(*res));
    memset(&sh, 0, sizeof(sh));
    if ((rc = bench_config_check(cfg, err, cap)) < 0 ||
        (rc = shared_init(&sh, cfg, err, cap)) < 0 || (rc = resolve(&sh, err, cap)) < 0)
        goto out;
    nw = cfg->threads < cfg->conns ? cfg->threads : cfg->conns;
    res->threads = nw;
    stall_ns = 2 * (uint64_t)cfg->timeout_ms * NS_PER_MS + NS_PER_S;
    ws = calloc(nw, sizeof(*ws));
    tmp = malloc(sizeof(*tmp));
    if (ws == NULL || tmp == NULL) {
        rc = util_errf(err, cap, -ENOMEM, "out of memory");
        goto out;
    }
    for (unsigned i = 0; i < nw; i++)
        ws[i].ep = -1; /* for the clean-up, should a later step fail */
    for (unsigned i = 0; i < nw; i++)
        if ((rc = worker_init(&ws[i], &sh, i, nw, err, cap)) < 0)
            goto out;
    for (unsigned i = 0; i < nw; i++) {
        int e = pthread_create(&ws[i].tid, NULL, bench_worker_main, &ws[i]);
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
        rc = no_connection(cfg, ws, nw, err, cap);
        goto stop;
    }
    if (before_measuring(&sh, ws, nw, stall_ns, res) == 0)
        measure(&sh, ws, nw, stall_ns, tmp, res, &t0, &t_stop);
    rc = 0;
stop:
    set_phase(&sh, PH_STOP);
    for (unsigned i = 0; i < nw; i++)
        if (ws[i].started)
            pthread_join(ws[i].tid, NULL);
    if (rc == 0) {
        collect(res, ws, nw);
        if (t0 != 0)
            res->elapsed_s = elapsed_s(cfg, res, ws, nw, t0, t_stop);
    }
out:
    if (ws != NULL) {
        for (unsigned i = 0; i < nw; i++) {
            if (ws[i].conns != NULL)
                for (unsigned j = 0; j < ws[i].nconns; j++)
                    bench_conn_free(&ws[i].conns[j]);
            free(ws[i].conns);
            if (ws[i].ep >= 0)
                close(ws[i].ep);
        }
    }
    free(ws);
    free(tmp);
    shared_free(&sh);
    return rc;
}
