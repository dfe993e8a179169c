/*
 * srv_udp.c - a UDP request's replies: cut into datagrams of at most 1400
 * bytes under memcached's 8-byte frame header, numbered, and sent.
 */

#include "srv.h"

static void udp_send_free(struct udp_send *us)
{
    free(us->reqs);
    free(us->data);
    free(us);
}

static void udp_on_send(uv_udp_send_t *req, int status)
{
    struct udp_send *us = req->data;

    if (status < 0 && status != UV_ECANCELED)
        log_debug(MOD, "udp send: %s", uv_strerror(status));
    if (--us->pending == 0)
        udp_send_free(us);
}

/* Cuts reply[0..n) into datagrams for req_id and sends them to addr. */
void srv_udp_send_reply(struct server *srv, uint16_t req_id, const char *reply_bytes,
                        size_t n, const struct sockaddr *addr)
{
    size_t count = proto_udp_datagrams(n);
    const size_t dg = LIMIT_UDP_HEADER_BYTES + LIMIT_UDP_PAYLOAD_BYTES;
    struct udp_send *us;

    if (count == 0 || !srv->udp_open)
        return;
    if (count > LIMIT_UDP_DATAGRAMS_MAX) {
        static const char msg[] = "SERVER_ERROR reply too large for UDP\r\n";
        srv_udp_send_reply(srv, req_id, msg, sizeof(msg) - 1, addr);
        return;
    }
    us = calloc(1, sizeof(*us));
    if (us == NULL)
        return;
    us->reqs = calloc(count, sizeof(*us->reqs));
    us->data = malloc(count * dg);
    if (us->reqs == NULL || us->data == NULL) {
        udp_send_free(us);
        return;
    }
    us->pending = (unsigned)count;
    for (size_t i = 0; i < count; i++) {
        char *d = us->data + i * dg;
        uv_buf_t b =
            uv_buf_init(d, (unsigned)proto_udp_cut(d, req_id, reply_bytes, n, i));
        us->reqs[i].data = us;
        if (uv_udp_send(&us->reqs[i], &srv->udp, &b, 1, addr, udp_on_send) < 0 &&
            --us->pending == 0) {
            /* Not sent: account for it as if its callback ran. */
            udp_send_free(us);
            return;
        }
    }
    srv->counters.udp_replies++;
    __atomic_fetch_add(&srv->counters.bytes_written, (uint64_t)n, __ATOMIC_RELAXED);
}
