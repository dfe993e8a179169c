/*
 * fuzz_proto.c - the memcached text protocol parser (proto_parse,
 * proto_next_key) fed the way serve's connections feed it.
 *
 * The input is the byte stream a client sends on one TCP connection. It is
 * parsed twice, with serve's loop (conn_process: parse at the front of the
 * buffer until the parser needs more bytes, drop what each request
 * consumed, swallow a refused data block that extends past the buffer,
 * wait for req.need bytes before parsing again, stop at PROTO_CLOSE):
 *   1. all at once, as if it arrived in one read;
 *   2. in reads of random sizes (seeded from the input);
 *   3. in a first read of LIMIT_LINE_BYTES_MAX + 1 bytes, then the rest.
 * All must give the same requests: how TCP cuts the stream must not change
 * what the server does. Each pass runs with serve's default limits and with
 * the smallest ones its flags allow (--max-line 2048, a small --max-value
 * and --max-get-keys), so the edges are reachable by small inputs.
 *
 * Every result is checked against the contract in proto.h, which serve
 * relies on: consumed within bounds, need past what is there, keys valid and
 * inside the line, a data block followed by "\r\n", and a request parsed
 * again from its own bytes giving the same result (consume_front does so).
 */
#include "fuzz_util.h"

#include "limits.h"
#include "proto.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* What a request did, independent of where the buffer was. */
struct event {
    enum proto_status st;
    enum proto_cmd cmd;
    size_t consumed;
    uint64_t hash; /* of every other field, pointers as offsets or contents */
};

struct events {
    struct event *ev;
    size_t n, cap;
};

static const struct proto_limits lim_default = {
    .value_bytes_max = LIMIT_VALUE_BYTES_DEFAULT,
    .get_line_bytes_max = LIMIT_GET_LINE_BYTES_DEFAULT,
    .get_keys_max = LIMIT_GET_KEYS_DEFAULT,
};
static const struct proto_limits lim_small = {
    .value_bytes_max = 100,
    .get_line_bytes_max = LIMIT_LINE_BYTES_MAX,
    .get_keys_max = 3,
};

static bool inside(const char *p, size_t n, const char *buf, size_t len)
{
    return p >= buf && n <= len && (size_t)(p - buf) <= len - n;
}

static uint64_t req_hash(const struct proto_req *r, const char *buf)
{
    uint64_t h = FUZZ_HASH_INIT;
    uint64_t nums[] = {r->noreply,
                       r->too_large,
                       r->flags,
                       (uint64_t)r->exptime,
                       r->cas,
                       r->delta,
                       r->ndata,
                       r->nkeys,
                       r->narg,
                       (uint64_t)r->delay,
                       r->verbosity,
                       r->key ? (uint64_t)(r->key - buf) : ~0ull,
                       r->data ? (uint64_t)(r->data - buf) : ~0ull};

    h = fuzz_hash(h, nums, sizeof(nums));
    if (r->key)
        h = fuzz_hash(h, r->key, r->nkey);
    if (r->keys)
        h = fuzz_hash(h, r->keys, r->keys_len);
    if (r->arg)
        h = fuzz_hash(h, r->arg, r->narg);
    if (r->data)
        h = fuzz_hash(h, r->data, r->ndata);
    if (r->error)
        h = fuzz_hash(h, r->error, strlen(r->error));
    return h;
}

static bool is_storage(enum proto_cmd c)
{
    return c >= PROTO_CMD_SET && c <= PROTO_CMD_CAS;
}

static bool is_retrieval(enum proto_cmd c)
{
    return c >= PROTO_CMD_GET && c <= PROTO_CMD_GATS;
}

/* The contract of one proto_parse result on buf[0..len). */
static void check_req(const char *buf, size_t len, const struct proto_limits *lim,
                      enum proto_status st, const struct proto_req *r, size_t consumed)
{
    FUZZ_CHECK(st == PROTO_NEED_MORE || st == PROTO_OK || st == PROTO_ERROR ||
               st == PROTO_CLOSE);
    if (st == PROTO_NEED_MORE || st == PROTO_CLOSE) {
        FUZZ_CHECK(consumed == 0);
        if (st == PROTO_CLOSE)
            FUZZ_CHECK(r->error != NULL);
        /* serve waits until it has need bytes: need must be past what it
         * has, or it would wait for bytes it already holds. */
        if (st == PROTO_NEED_MORE)
            FUZZ_CHECK(r->need == 0 || r->need > len);
        return;
    }
    FUZZ_CHECK(consumed > 0);
    /* The request line is whole: its newline is in the buffer. */
    const char *nl = memchr(buf, '\n', len);
    FUZZ_CHECK(nl != NULL);
    size_t line_len = (size_t)(nl - buf) + 1;
    FUZZ_CHECK(consumed >= line_len);
    if (st == PROTO_ERROR) {
        FUZZ_CHECK(r->error != NULL && r->error[0] != '\0');
        FUZZ_CHECK(strchr(r->error, '\n') == NULL && strchr(r->error, '\r') == NULL);
        /* Only a storage line swallows more than itself. */
        if (consumed > line_len)
            FUZZ_CHECK(is_storage(r->cmd));
        return;
    }
    FUZZ_CHECK(r->cmd > PROTO_CMD_NONE && r->cmd < PROTO_CMD__COUNT);
    FUZZ_CHECK(r->error == NULL);
    if (is_storage(r->cmd)) {
        FUZZ_CHECK(proto_key_valid(r->key, r->nkey));
        FUZZ_CHECK(inside(r->key, r->nkey, buf, line_len));
        FUZZ_CHECK(consumed == line_len + r->ndata + 2);
        if (r->too_large) {
            FUZZ_CHECK(r->ndata > lim->value_bytes_max && r->data == NULL);
        } else {
            FUZZ_CHECK(r->ndata <= lim->value_bytes_max && consumed <= len);
            FUZZ_CHECK(r->data == buf + line_len);
            FUZZ_CHECK(r->data[r->ndata] == '\r' && r->data[r->ndata + 1] == '\n');
        }
        return;
    }
    FUZZ_CHECK(!r->too_large && consumed == line_len);
    if (is_retrieval(r->cmd)) {
        size_t pos = 0, count = 0, nk;
        const char *k;
        /* "gat <exptime>" alone is a request without keys (memcached: END). */
        bool gat = r->cmd == PROTO_CMD_GAT || r->cmd == PROTO_CMD_GATS;
        FUZZ_CHECK((r->nkeys >= 1 || gat) && r->nkeys <= lim->get_keys_max);
        FUZZ_CHECK(inside(r->keys, r->keys_len, buf, line_len));
        while (proto_next_key(r, &pos, &k, &nk)) {
            FUZZ_CHECK(proto_key_valid(k, nk));
            FUZZ_CHECK(inside(k, nk, r->keys, r->keys_len));
            FUZZ_CHECK(pos <= r->keys_len);
            count++;
            /* What serve writes for each hit fits the header it reserves. */
            char hdr[PROTO_VALUE_HDR_MAX];
            size_t hn = proto_fmt_value_hdr(hdr, k, nk, UINT32_MAX, (size_t)INT32_MAX,
                                            true, UINT64_MAX);
            FUZZ_CHECK(hn < sizeof(hdr) && hdr[hn] == '\0');
        }
        FUZZ_CHECK(count == r->nkeys);
        /* Walking past the end stays at the end. */
        FUZZ_CHECK(!proto_next_key(r, &pos, &k, &nk) && pos == r->keys_len);
        return;
    }
    switch (r->cmd) {
    case PROTO_CMD_DELETE:
    case PROTO_CMD_INCR:
    case PROTO_CMD_DECR:
    case PROTO_CMD_TOUCH:
        FUZZ_CHECK(proto_key_valid(r->key, r->nkey));
        FUZZ_CHECK(inside(r->key, r->nkey, buf, line_len));
        break;
    case PROTO_CMD_STATS:
    case PROTO_CMD_KEYS:
        if (r->arg)
            FUZZ_CHECK(r->narg > 0 && inside(r->arg, r->narg, buf, line_len));
        break;
    default:
        FUZZ_CHECK(r->key == NULL);
        break;
    }
}

/* proto_parse plus its checks. */
static enum proto_status parse(const char *buf, size_t len,
                               const struct proto_limits *lim, struct proto_req *r,
                               size_t *consumed)
{
    enum proto_status st = proto_parse(buf, len, lim, r, consumed);

    check_req(buf, len, lim, st, r, *consumed);
    /* A whole request parses the same from its own bytes, whatever follows
     * it (serve parses a waiting request again once it can run). */
    if ((st == PROTO_OK || st == PROTO_ERROR) && *consumed <= len) {
        char *own = fuzz_dup(buf, *consumed);
        struct proto_req again;
        size_t c2;
        enum proto_status st2 = proto_parse(own, *consumed, lim, &again, &c2);
        FUZZ_CHECK(st2 == st && c2 == *consumed && again.cmd == r->cmd);
        FUZZ_CHECK(req_hash(&again, own) == req_hash(r, buf));
        free(own);
    }
    return st;
}

static void record(struct events *e, enum proto_status st, const struct proto_req *r,
                   size_t consumed, const char *buf)
{
    if (e->n == e->cap) {
        e->cap = e->cap ? e->cap * 2 : 64;
        e->ev = realloc(e->ev, e->cap * sizeof(*e->ev));
        if (e->ev == NULL)
            abort();
    }
    e->ev[e->n++] = (struct event){st, r->cmd, consumed, req_hash(r, buf)};
}

/* serve's connection read loop over data[0..size), delivered in reads of
 * the sizes rnd picks (everything at once when rnd is NULL), after a first
 * read of first bytes if first is not 0. */
static void run_conn(const char *data, size_t size, const struct proto_limits *lim,
                     uint64_t *rnd, size_t first, struct events *out)
{
    char *rbuf = malloc(size ? size : 1);
    size_t rlen = 0, need = 0, off = 0;
    uint64_t swallow = 0;
    bool closed = false;

    if (rbuf == NULL)
        abort();
    while (off < size && !closed) {
        size_t n = size - off;
        if (off == 0 && first > 0 && first < n) {
            n = first;
        } else if (rnd) {
            uint64_t x = fuzz_rand(rnd);
            /* Small and large reads, so every cut point is tried somewhere
             * without making a long input slow. */
            size_t want = x % 2 == 0 ? 1 + (x >> 8) % 1024 : 1 + (x >> 8) % 16;
            if (want < n)
                n = want;
        }
        fuzz_unpoison(rbuf, size);
        memcpy(rbuf + rlen, data + off, n);
        off += n;
        rlen += n;
        if (swallow)
            proto_stream_swallow(rbuf, &rlen, &swallow);
        /* Bytes past rlen are not there yet: reading them is an ASan report. */
        fuzz_poison(rbuf + rlen, size - rlen);
        size_t pos = 0;
        while (rlen - pos > 0 && rlen - pos >= need) {
            struct proto_req req;
            size_t consumed;
            enum proto_status st = parse(rbuf + pos, rlen - pos, lim, &req, &consumed);
            if (st == PROTO_NEED_MORE) {
                need = req.need;
                break;
            }
            need = 0;
            record(out, st, &req, consumed, rbuf + pos);
            if (st == PROTO_CLOSE) {
                closed = true;
                break;
            }
            pos = proto_stream_consume(rlen, pos, consumed, &swallow);
        }
        fuzz_unpoison(rbuf, size);
        memmove(rbuf, rbuf + pos, rlen - pos);
        rlen -= pos;
    }
    fuzz_unpoison(rbuf, size);
    free(rbuf);
}

static void run(const char *data, size_t size, const struct proto_limits *lim)
{
    struct events whole = {0}, cut = {0};
    uint64_t rnd = fuzz_hash(FUZZ_HASH_INIT, data, size);

    run_conn(data, size, lim, NULL, 0, &whole);
    /* Random reads, and a first read that ends one byte past the line
     * limit (where serve's buffer pauses for a long line). */
    for (int k = 0; k < 2; k++) {
        cut.n = 0;
        if (k == 0)
            run_conn(data, size, lim, &rnd, 0, &cut);
        else
            run_conn(data, size, lim, NULL, LIMIT_LINE_BYTES_MAX + 1, &cut);
        /* The same requests, however the stream was cut. */
        FUZZ_CHECK(whole.n == cut.n);
        for (size_t i = 0; i < whole.n; i++) {
            FUZZ_CHECK(whole.ev[i].st == cut.ev[i].st);
            /* A line closed before its newline came has no command yet. */
            if (whole.ev[i].st != PROTO_CLOSE)
                FUZZ_CHECK(whole.ev[i].cmd == cut.ev[i].cmd);
            FUZZ_CHECK(whole.ev[i].consumed == cut.ev[i].consumed);
            FUZZ_CHECK(whole.ev[i].hash == cut.ev[i].hash);
        }
    }
    free(whole.ev);
    free(cut.ev);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    run((const char *)data, size, &lim_small);
    run((const char *)data, size, &lim_default);
    return 0;
}
