/*
 * srv_listen.c - where connections come from: accepting TCP connections
 * (refusing those over --max-conns with memcached's reply) and handing each
 * to a connection thread; UDP datagrams run as short-lived connections whose
 * replies are cut into datagrams.
 */

#include "srv.h"

static void conn_hand_over(struct server *srv, uv_stream_t *listener);

void srv_reject_on_close(uv_handle_t *h)
{
    free(h);
}

static void reject_on_write(uv_write_t *req, int status)
{
    (void)status;
    uv_close((uv_handle_t *)req->handle, srv_reject_on_close);
    free(req);
}

/* Over --max-conns: say why, then hang up. */
static void reject_conn(struct server *srv, uv_tcp_t *t)
{
    static char msg[] = "SERVER_ERROR too many connections\r\n";
    uv_write_t *req = malloc(sizeof(*req));
    uv_buf_t b = uv_buf_init(msg, sizeof(msg) - 1);

    srv->counters.rejected_connections++;
    if (req == NULL || uv_write(req, (uv_stream_t *)t, &b, 1, reject_on_write) < 0) {
        free(req);
        uv_close((uv_handle_t *)t, srv_reject_on_close);
    }
}

void srv_addr_name(const struct sockaddr_storage *ss, char *dst, size_t cap)
{
    if (ss->ss_family == AF_INET6)
        uv_ip6_name((const struct sockaddr_in6 *)ss, dst, cap);
    else
        uv_ip4_name((const struct sockaddr_in *)ss, dst, cap);
}

int srv_addr_port(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
    return ntohs(((const struct sockaddr_in *)ss)->sin_port);
}

void srv_on_connection(uv_stream_t *listener, int status)
{
    struct server *srv = listener->data;
    struct conn *c;
    uint64_t dropped;
    char note[64];

    if (status < 0) {
        /* EMFILE: libuv accepted and closed it (its spare descriptor). */
        if (log_limit_allow(&srv->rl_accept, &dropped))
            log_warn(MOD, "accept: %s%s%s", uv_strerror(status),
                     status == UV_EMFILE
                         ? " (the connection was closed: raise ulimit -n, "
                           "or lower --max-conns)"
                         : "",
                     log_limit_note(note, sizeof(note), dropped));
        return;
    }
    if (srv->nconns >= srv->cfg.max_conns) {
        uv_tcp_t *t = malloc(sizeof(*t));
        if (t == NULL)
            return;
        uv_tcp_init(srv->loop, t);
        if (uv_accept(listener, (uv_stream_t *)t) == 0) {
            if (log_limit_allow(&srv->rl_refused, &dropped))
                log_warn(MOD, "connection refused: %zu open, --max-conns is %zu%s",
                         srv->nconns, srv->cfg.max_conns,
                         log_limit_note(note, sizeof(note), dropped));
            reject_conn(srv, t);
        } else {
            uv_close((uv_handle_t *)t, srv_reject_on_close);
        }
        return;
    }
    if (srv->threaded) {
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
        uv_close((uv_handle_t *)&c->tcp, srv_reject_on_close);
        return;
    }
    srv->nconns++;
    srv->counters.total_connections++;
    srv_conn_start(c);
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
    if (uv_accept(listener, (uv_stream_t *)t) == 0 &&
        uv_fileno((uv_handle_t *)t, &fd) == 0)
        nfd = fcntl(fd, F_DUPFD_CLOEXEC, 3); /* the handle closes fd; nfd moves */
    uv_close((uv_handle_t *)t, srv_reject_on_close);
    if (nfd < 0) {
        uint64_t dropped;
        char note[64];
        if (log_limit_allow(&srv->rl_accept, &dropped))
            log_warn(MOD, "accept: cannot hand the connection over: %s%s",
                     strerror(errno), log_limit_note(note, sizeof(note), dropped));
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
    srv->counters.total_connections++;
    uv_async_send(&lt->async);
}

/* A new TCP connection on its thread: link it, name it, read. */
void srv_conn_start(struct conn *c)
{
    struct server *srv = c->srv;

    outq_init(&c->out, false);
    srv_conn_link(srv, c);
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
        srv_addr_name(&ss, host, sizeof(host));
    snprintf(c->peer, sizeof(c->peer), "%s:%d", host, srv_addr_port(&ss));
    log_debug(MOD, "conn %llu from %s", (unsigned long long)c->id, c->peer);
    srv_conn_set_reading(c, true);
}

void srv_udp_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct server *srv = h->data;

    (void)suggested;
    *buf = uv_buf_init(srv->udp_rbuf, LIMIT_UDP_REQUEST_BYTES_MAX);
}

void srv_udp_on_recv(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf,
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
    srv->counters.bytes_read += (uint64_t)nread;
    if ((flags & UV_UDP_PARTIAL) || addr == NULL ||
        proto_udp_decode(buf->base, (size_t)nread, &hdr) < 0 || srv->stopping ||
        srv->nudp >= srv->cfg.max_conns) {
        srv->counters.udp_dropped++;
        log_debug(MOD, "udp: dropped a datagram of %zd bytes", nread);
        return;
    }
    srv->counters.udp_requests++;
    /* Run the datagram's requests as a connection of its own. */
    n = (size_t)nread - LIMIT_UDP_HEADER_BYTES;
    c = calloc(1, sizeof(*c));
    if (c == NULL || (n && (c->rbuf = malloc(n)) == NULL)) {
        free(c);
        srv->counters.udp_dropped++;
        return;
    }
    c->srv = srv;
    c->udp = true;
    c->authed = true; /* no UDP with --auth-file (server_new) */
    c->lt = &srv->lt[0];
    c->rcap = c->rlen = n;
    memcpy(c->rbuf, buf->base + LIMIT_UDP_HEADER_BYTES, n);
    c->udp_req_id = hdr.req_id;
    memcpy(&c->addr, addr,
           addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                       : sizeof(struct sockaddr_in));
    outq_init(&c->out, true);
    srv_conn_link(srv, c);
    srv->nudp++;
    snprintf(c->peer, sizeof(c->peer), "udp");
    srv_conn_process(c);
}
