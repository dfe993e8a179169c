/*
 * fuzz_udp.c - a UDP request datagram as serve handles it (srv_udp_on_recv in
 * lib/srv_listen.c): proto_udp_decode on the 8-byte frame header, then the
 * requests after it parsed as one connection whose bytes all arrived at
 * once (a request must be whole in its datagram), then the reply cut into
 * datagrams by proto_udp_cut, which serve's srv_udp_send_reply uses.
 *
 * Checked: the header decodes as the frame rules say (too short, part of
 * several, not sequence 0), proto_udp_read agrees with it and
 * proto_udp_encode gives the bytes back; every parse result keeps the
 * contract serve relies on; the reply datagrams carry every byte once, in
 * order, with sequence numbers 0..total-1.
 */
#include "fuzz_util.h"

#include "limits.h"
#include "proto.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

static const struct proto_limits lim = {
    .value_bytes_max = LIMIT_VALUE_BYTES_DEFAULT,
    .get_line_bytes_max = LIMIT_GET_LINE_BYTES_DEFAULT,
    .get_keys_max = LIMIT_GET_KEYS_DEFAULT,
};

/* Cuts a reply of n bytes into datagrams for req_id, as serve does
 * (proto_udp_cut), and reads them back: every byte once, in order, with
 * sequence numbers 0..total-1. */
static void check_reply_framing(uint16_t req_id, size_t n)
{
    size_t count = proto_udp_datagrams(n);
    size_t got = 0;
    char *reply, d[LIMIT_UDP_HEADER_BYTES + LIMIT_UDP_PAYLOAD_BYTES];

    FUZZ_CHECK(n == 0 ? count == 0 : count >= 1);
    FUZZ_CHECK(count * LIMIT_UDP_PAYLOAD_BYTES >= n);
    FUZZ_CHECK(count == 0 || (count - 1) * LIMIT_UDP_PAYLOAD_BYTES < n);
    if (count > LIMIT_UDP_DATAGRAMS_MAX)
        return; /* serve answers SERVER_ERROR reply too large for UDP */
    reply = malloc(n ? n : 1);
    FUZZ_CHECK(reply != NULL);
    for (size_t i = 0; i < n; i++)
        reply[i] = (char)(i * 31 + req_id);
    for (size_t i = 0; i < count; i++) {
        struct proto_udp_hdr back;
        size_t len = proto_udp_cut(d, req_id, reply, n, i);

        FUZZ_CHECK(len > LIMIT_UDP_HEADER_BYTES && len <= sizeof(d));
        proto_udp_read(d, &back);
        FUZZ_CHECK(back.req_id == req_id && back.seq == i && back.total == count &&
                   back.reserved == 0);
        FUZZ_CHECK(memcmp(d + LIMIT_UDP_HEADER_BYTES, reply + got,
                          len - LIMIT_UDP_HEADER_BYTES) == 0);
        got += len - LIMIT_UDP_HEADER_BYTES;
    }
    FUZZ_CHECK(got == n);
    free(reply);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct proto_udp_hdr hdr, raw;
    int r;

    if (size > LIMIT_UDP_REQUEST_BYTES_MAX)
        return 0; /* serve reads at most this much of a datagram */
    r = proto_udp_decode(data, size, &hdr);
    if (size < LIMIT_UDP_HEADER_BYTES) {
        FUZZ_CHECK(r == -EINVAL);
        return 0;
    }
    proto_udp_read(data, &raw);
    unsigned char enc[LIMIT_UDP_HEADER_BYTES];
    proto_udp_encode(enc, &raw);
    FUZZ_CHECK(memcmp(enc, data, sizeof(enc)) == 0);
    if (raw.total != 1 || raw.seq != 0) {
        FUZZ_CHECK(r == -EMSGSIZE);
        return 0;
    }
    FUZZ_CHECK(r == 0 && memcmp(&hdr, &raw, sizeof(hdr)) == 0);

    /* The requests, as conn_process runs them for a UDP "connection". */
    size_t n = size - LIMIT_UDP_HEADER_BYTES, pos = 0, reply = 0;
    char *rbuf = fuzz_dup(data + LIMIT_UDP_HEADER_BYTES, n);
    while (pos < n) {
        struct proto_req req;
        size_t consumed;
        enum proto_status st = proto_parse(rbuf + pos, n - pos, &lim, &req, &consumed);

        FUZZ_CHECK(st == PROTO_NEED_MORE || st == PROTO_OK || st == PROTO_ERROR ||
                   st == PROTO_CLOSE);
        if (st == PROTO_NEED_MORE) {
            /* CLIENT_ERROR incomplete request, and the rest is dropped. */
            FUZZ_CHECK(consumed == 0 && (req.need == 0 || req.need > n - pos));
            reply += 64;
            break;
        }
        if (st == PROTO_CLOSE) {
            FUZZ_CHECK(consumed == 0 && req.error != NULL);
            break; /* dropped without a reply */
        }
        FUZZ_CHECK(consumed > 0);
        if (st == PROTO_ERROR) {
            FUZZ_CHECK(req.error != NULL);
            if (!req.noreply)
                reply += strlen(req.error) + 2;
        } else if (req.cmd >= PROTO_CMD_GET && req.cmd <= PROTO_CMD_GATS) {
            size_t kp = 0, nk, count = 0;
            const char *k;
            while (proto_next_key(&req, &kp, &k, &nk)) {
                FUZZ_CHECK(proto_key_valid(k, nk));
                FUZZ_CHECK(k >= rbuf + pos && k + nk <= rbuf + pos + consumed);
                /* Pretend every key hits with a value as long as its key. */
                reply += 6 + nk + 1 + 10 + 1 + 10 + 1 + 20 + 2 + nk + 2;
                count++;
            }
            FUZZ_CHECK(count == req.nkeys &&
                       (count >= 1 || req.cmd == PROTO_CMD_GAT || req.cmd == PROTO_CMD_GATS));
            reply += 5;
        } else {
            if (req.too_large)
                FUZZ_CHECK(req.ndata > lim.value_bytes_max && req.data == NULL);
            else if (req.data)
                FUZZ_CHECK(req.data + req.ndata + 2 <= rbuf + n);
            reply += 8;
        }
        if (st == PROTO_OK && req.cmd == PROTO_CMD_QUIT)
            break; /* the rest of the datagram is dropped */
        /* A refused data block past the datagram's end: nothing to swallow. */
        pos = consumed > n - pos ? n : pos + consumed;
    }
    free(rbuf);
    check_reply_framing(hdr.req_id, reply);
    check_reply_framing(hdr.req_id, reply * 997); /* and a long one */
    return 0;
}
