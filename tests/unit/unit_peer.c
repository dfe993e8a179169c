/*
 * unit_peer.c - the replica transport (lib/peer.c): the --replicas parser
 * and config hash, the frame codec (every message type, every rejection),
 * and real links between nets on one libuv loop over 127.0.0.1: the
 * handshake (and its refusals: secret, epoch, replica list), messages both
 * ways, coalescing, reconnecting, malformed input from a raw TCP client
 * that speaks the documented handshake itself, and the output limit.
 * One suite, "peer":
 *
 *   build/rel/unit peer
 *
 * Each network test makes its own loop with a 1 ms ticker, so one
 * UV_RUN_ONCE never blocks for long, and runs it until a condition holds,
 * within a step bound instead of a clock. Listening ports are picked by
 * the kernel and told to the other nets with peer_net_set_port. The
 * transport's log lines are hidden unless TPCKV_PEER_LOG is set (then they
 * go to stderr at debug level).
 */
#include "buf.h"
#include "crc32c.h"
#include "log.h"
#include "peer.h"
#include "tpc.h"
#include "unit.h"
#include "util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

/* Loop turns a test waits for a condition. With the 1 ms ticker this is at
 * least a minute: far beyond any reconnect backoff, so hitting it means a
 * lost event, not a slow machine. */
#define STEP_MAX 60000
#define TICK_MS 1
#define NETS_MAX 3
#define GOT_MAX 4096

static const unsigned char secret_a[] = "correct horse battery staple";
static const unsigned char secret_b[] = "correct horse battery stapler";

/* ---- helpers: parsing and frames ---------------------------------------- */

static uint64_t rng = 0x2545f4914f6cdd1dULL;

static uint32_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

/* Builds a frame by the documented layout, independently of the encoder. */
static size_t mk_frame(char *dst, uint8_t ver, uint8_t type, uint16_t flags,
                       uint64_t epoch, const void *body, size_t nbody)
{
    util_put_le32(dst, (uint32_t)(16 + nbody));
    dst[8] = (char)ver;
    dst[9] = (char)type;
    util_put_le16(dst + 10, flags);
    util_put_le64(dst + 12, epoch);
    if (nbody)
        memcpy(dst + 20, body, nbody);
    util_put_le32(dst + 4, crc32c(0, dst + 8, 12 + nbody));
    return 20 + nbody;
}

/* A 16-byte message body. */
/* A message body of the fixed part (PEER_MSG_FIXED_BYTES): view 7. */
static void mk_body16(char *b, uint64_t txid, uint32_t coord, uint8_t b12, uint8_t b13,
                      uint16_t pad)
{
    util_put_le64(b, txid);
    util_put_le32(b + 8, coord);
    b[12] = (char)b12;
    b[13] = (char)b13;
    util_put_le16(b + 14, pad);
    util_put_le64(b + 16, 7);
}

/* Decodes a frame body built by mk_frame; returns peer_msg_decode's result. */
static int decode_body(uint8_t type, const char *body, size_t nbody, struct tpc_msg *m)
{
    char frame[256];
    struct peer_frame f;
    size_t n = mk_frame(frame, PEER_FRAME_VERSION, type, 0, 7, body, nbody);
    long r = peer_frame_decode(frame, n, sizeof(frame), &f);

    CU_ASSERT_EQUAL_FATAL(r, (long)n);
    return peer_msg_decode(&f, m);
}

static struct tpc_msg sample_msg(uint8_t type)
{
    struct tpc_msg m;

    memset(&m, 0, sizeof(m));
    m.type = type;
    m.epoch = 42;
    m.txid = 0x0123456789abcdefULL + type;
    m.coord = 3;
    m.view = 0x1122334455667788ULL;
    switch (type) {
    case TPC_MSG_PREPARE:
        m.nops = 2;
        m.ops = "opsbytes";
        m.nbytes = 8;
        break;
    case TPC_MSG_VOTE:
        m.vote = 0;
        m.reason = TPC_R_CONFLICT;
        break;
    case TPC_MSG_ANSWER:
        m.outcome = TPC_O_PENDING;
        break;
    default:
        m.reason = type == TPC_MSG_ABORT ? TPC_R_TOO_LARGE : TPC_R_NONE;
        break;
    }
    return m;
}

static void assert_msg_equal(const struct tpc_msg *a, const struct tpc_msg *b)
{
    CU_ASSERT_EQUAL(a->type, b->type);
    CU_ASSERT_EQUAL(a->txid, b->txid);
    CU_ASSERT_EQUAL(a->coord, b->coord);
    CU_ASSERT_EQUAL(a->epoch, b->epoch);
    CU_ASSERT_EQUAL(a->view, b->view);
    switch (a->type) {
    case TPC_MSG_PREPARE:
        CU_ASSERT_EQUAL(a->resent, b->resent);
        CU_ASSERT_EQUAL(a->nops, b->nops);
        CU_ASSERT_EQUAL_FATAL(a->nbytes, b->nbytes);
        CU_ASSERT(memcmp(a->ops, b->ops, a->nbytes) == 0);
        break;
    case TPC_MSG_VOTE:
        CU_ASSERT_EQUAL(a->vote, b->vote);
        CU_ASSERT_EQUAL(a->reason, b->reason);
        break;
    case TPC_MSG_ANSWER:
        CU_ASSERT_EQUAL(a->outcome, b->outcome);
        break;
    default:
        CU_ASSERT_EQUAL(a->reason, b->reason);
        break;
    }
}

/* ---- tests: the replica list ------------------------------------------------ */

static void test_parse_replicas_good(void)
{
    struct peer_addr a[LIMIT_REPLICAS_MAX];
    char err[256] = "", spec[1024];
    size_t n = 99;

    CU_ASSERT_EQUAL(
        peer_parse_replicas("2@[::1]:7002,0@127.0.0.1:7000,1@Node-1.Example.com:7001", a,
                            LIMIT_REPLICAS_MAX, &n, err, sizeof(err)),
        0);
    CU_ASSERT_EQUAL_FATAL(n, 3);
    CU_ASSERT_EQUAL(a[0].id, 0);
    CU_ASSERT_STRING_EQUAL(a[0].host, "127.0.0.1");
    CU_ASSERT_EQUAL(a[0].port, 7000);
    CU_ASSERT_EQUAL(a[1].id, 1);
    CU_ASSERT_STRING_EQUAL(a[1].host, "node-1.example.com");
    CU_ASSERT_EQUAL(a[1].port, 7001);
    CU_ASSERT_EQUAL(a[2].id, 2);
    CU_ASSERT_STRING_EQUAL(a[2].host, "::1");
    CU_ASSERT_EQUAL(a[2].port, 7002);

    CU_ASSERT_EQUAL(peer_parse_replicas("15@localhost:65535", a, 1, &n, err, sizeof(err)),
                    0);
    CU_ASSERT_EQUAL(n, 1);
    CU_ASSERT_EQUAL(a[0].id, 15);
    CU_ASSERT_EQUAL(a[0].port, 65535);

    /* The most there may be, in reverse order. */
    spec[0] = '\0';
    for (int i = LIMIT_REPLICAS_MAX - 1; i >= 0; i--) {
        char e[32];
        snprintf(e, sizeof(e), "%s%d@10.0.0.%d:7000",
                 i == LIMIT_REPLICAS_MAX - 1 ? "" : ",", i, i + 1);
        strcat(spec, e);
    }
    CU_ASSERT_EQUAL(
        peer_parse_replicas(spec, a, LIMIT_REPLICAS_MAX, &n, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(n, LIMIT_REPLICAS_MAX);
    for (size_t i = 0; i < n; i++)
        CU_ASSERT_EQUAL(a[i].id, i);
}

static void test_parse_replicas_bad(void)
{
    static const struct {
        const char *spec;
        const char *in_err; /* a part of the sentence that names the problem */
    } cases[] = {
        {"", "empty"},
        {"0@h:1,", "empty entry"},
        {",0@h:1", "empty entry"},
        {"0@h:1,,1@h:2", "empty entry"},
        {"x@h:1", "\"x@h:1\""},
        {"-1@h:1", "from 0 to 15"},
        {"16@h:1", "\"16@h:1\""},
        {"99999999999@h:1", "from 0 to 15"},
        {"0h:1", "no '@'"},
        {"0@h", "expected :PORT"},
        {"0@h:", "port"},
        {"0@h:0", "from 1 to 65535"},
        {"0@h:65536", "\"0@h:65536\""},
        {"0@h:7x", "port"},
        {"0@h: 1", "port"},
        {"0@:1", "host is empty"},
        {"0@a b:1", "host has a character"},
        {"0@::1:7000", "brackets"},
        {"0@[::1:7000", "no ']'"},
        {"0@[]:7000", "no IPv6"},
        {"0@[zz::q]:7000", "not an IPv6"},
        {"0@[::1]7000", "expected :PORT"},
        {"0@h:1,0@g:2", "replica id 0 is listed twice"},
        {"0@h:1,1@h:1", "already replica 0's"},
        {"0@Host:1,1@host:1", "already replica 0's"},
        {"1@h:1,2@h:2,\x01@h:3", "\\x01"},
    };
    struct peer_addr a[LIMIT_REPLICAS_MAX];
    char err[256], spec[1024];
    size_t n;

    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        n = 77;
        err[0] = '\0';
        CU_ASSERT_EQUAL(peer_parse_replicas(cases[i].spec, a, LIMIT_REPLICAS_MAX, &n, err,
                                            sizeof(err)),
                        -EINVAL);
        CU_ASSERT_EQUAL(n, 0);
        if (strstr(err, cases[i].in_err) == NULL) {
            fprintf(stderr, "\nspec \"%s\": error \"%s\" lacks \"%s\"\n", cases[i].spec,
                    err, cases[i].in_err);
            CU_FAIL("error sentence does not name the problem");
        }
    }
    CU_ASSERT_EQUAL(
        peer_parse_replicas(NULL, a, LIMIT_REPLICAS_MAX, &n, err, sizeof(err)), -EINVAL);

    /* One more than the limit. */
    spec[0] = '\0';
    for (int i = 0; i <= LIMIT_REPLICAS_MAX; i++) {
        char e[32];
        snprintf(e, sizeof(e), "%s%d@h%d:7000", i ? "," : "", i % 16, i);
        strcat(spec, e);
    }
    CU_ASSERT_EQUAL(
        peer_parse_replicas(spec, a, LIMIT_REPLICAS_MAX, &n, err, sizeof(err)), -EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "more than 16"));
    /* More than the caller's room. */
    CU_ASSERT_EQUAL(peer_parse_replicas("0@a:1,1@b:1", a, 1, &n, err, sizeof(err)),
                    -EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "more than 1"));
}

static void test_config_hash(void)
{
    struct peer_addr a[LIMIT_REPLICAS_MAX], b[LIMIT_REPLICAS_MAX];
    char err[256];
    size_t na, nb;
    uint64_t h;

    CU_ASSERT_EQUAL_FATAL(
        peer_parse_replicas("0@10.0.0.1:7000,1@10.0.0.2:7000,2@[::1]:7000", a,
                            LIMIT_REPLICAS_MAX, &na, err, sizeof(err)),
        0);
    h = peer_config_hash(a, na);
    /* Same list, other order and case: same hash. */
    CU_ASSERT_EQUAL_FATAL(
        peer_parse_replicas("2@[::1]:7000,1@10.0.0.2:7000,0@10.0.0.1:7000", b,
                            LIMIT_REPLICAS_MAX, &nb, err, sizeof(err)),
        0);
    CU_ASSERT_EQUAL(peer_config_hash(b, nb), h);
    /* Order of the array itself does not matter either. */
    struct peer_addr t = b[0];
    b[0] = b[2];
    b[2] = t;
    CU_ASSERT_EQUAL(peer_config_hash(b, nb), h);
    CU_ASSERT_EQUAL(peer_config_hash(a, na), h);

    static const char *const others[] = {
        "0@10.0.0.1:7000,1@10.0.0.2:7000",
        "0@10.0.0.1:7000,1@10.0.0.2:7000,2@[::1]:7001",
        "0@10.0.0.1:7000,1@10.0.0.3:7000,2@[::1]:7000",
        "0@10.0.0.1:7000,3@10.0.0.2:7000,2@[::1]:7000",
        "0@10.0.0.1:7000,1@10.0.0.2:7000,2@[::1]:7000,3@10.0.0.4:7000",
        "0@10.0.0.2:7000,1@10.0.0.1:7000,2@[::1]:7000",
    };
    for (size_t i = 0; i < ARRAY_SIZE(others); i++) {
        CU_ASSERT_EQUAL_FATAL(
            peer_parse_replicas(others[i], b, LIMIT_REPLICAS_MAX, &nb, err, sizeof(err)),
            0);
        CU_ASSERT_NOT_EQUAL(peer_config_hash(b, nb), h);
    }
}

/* ---- tests: the codec --------------------------------------------------------- */

static void test_codec_round_trip_every_type(void)
{
    struct buf b = BUF_INIT;
    struct tpc_msg in[TPC_MSG_TYPE_MAX + 1], out;
    struct peer_frame f;
    size_t off = 0;

    /* Every type, back to back in one buffer, as they arrive on a link. */
    for (uint8_t t = 1; t <= TPC_MSG_TYPE_MAX; t++) {
        in[t] = sample_msg(t);
        CU_ASSERT_EQUAL_FATAL(peer_msg_encode(&b, &in[t]), 0);
    }
    for (uint8_t t = 1; t <= TPC_MSG_TYPE_MAX; t++) {
        size_t want = peer_msg_frame_size(&in[t]);
        long r = peer_frame_decode(b.data + off, b.len - off, 1 << 20, &f);
        CU_ASSERT_EQUAL_FATAL(r, (long)want);
        CU_ASSERT_EQUAL(f.version, PEER_FRAME_VERSION);
        CU_ASSERT_EQUAL(f.type, t);
        CU_ASSERT_EQUAL(f.flags, 0);
        CU_ASSERT_EQUAL(f.epoch, 42);
        CU_ASSERT_EQUAL(f.nbody, want - PEER_FRAME_HEADER_BYTES);
        CU_ASSERT_EQUAL_FATAL(peer_msg_decode(&f, &out), 0);
        assert_msg_equal(&in[t], &out);
        CU_ASSERT_EQUAL(out.from, 0);
        CU_ASSERT_EQUAL(out.to, 0);
        off += (size_t)r;
    }
    CU_ASSERT_EQUAL(off, b.len);

    /* Extremes of every field. */
    for (int i = 0; i < 200; i++) {
        uint8_t t = (uint8_t)(1 + rnd() % TPC_MSG_TYPE_MAX);
        char ops[64];
        struct tpc_msg m = sample_msg(t);
        m.txid = (uint64_t)rnd() << 40 ^ rnd() ^ (i == 0 ? UINT64_MAX : 0);
        m.epoch = i == 1 ? UINT64_MAX : rnd();
        m.coord = rnd() % TPC_REPLICAS_MAX;
        m.vote = (uint8_t)(rnd() % 2);
        m.view = i == 3 ? UINT64_MAX : rnd();
        do
            m.reason = (uint8_t)(rnd() % (TPC_REASON_MAX + 1));
        while (!tpc_reason_on_wire(m.reason));
        m.outcome = (uint8_t)(rnd() % (TPC_O_LOST + 1));
        if (t == TPC_MSG_PREPARE) {
            for (size_t k = 0; k < sizeof(ops); k++)
                ops[k] = (char)rnd();
            m.ops = ops;
            m.nbytes = 1 + rnd() % sizeof(ops);
            m.nops = i == 2 ? UINT32_MAX : 1 + rnd() % 100;
            m.resent = rnd() % 2; /* the frame's flag, PREPARE only */
        }
        b.len = 0;
        CU_ASSERT_EQUAL_FATAL(peer_msg_encode(&b, &m), 0);
        CU_ASSERT_EQUAL_FATAL(peer_frame_decode(b.data, b.len, b.len, &f), (long)b.len);
        CU_ASSERT_EQUAL_FATAL(peer_msg_decode(&f, &out), 0);
        assert_msg_equal(&m, &out);
    }
    buf_free(&b);
}

static void test_decode_every_prefix_is_incomplete(void)
{
    struct buf b = BUF_INIT;
    struct tpc_msg m = sample_msg(TPC_MSG_PREPARE);
    struct peer_frame f;

    CU_ASSERT_EQUAL_FATAL(peer_msg_encode(&b, &m), 0);
    for (size_t n = 0; n < b.len; n++)
        CU_ASSERT_EQUAL(peer_frame_decode(b.data, n, 1 << 20, &f), -EAGAIN);
    CU_ASSERT_EQUAL(peer_frame_decode(b.data, b.len, 1 << 20, &f), (long)b.len);
    buf_free(&b);
}

static void test_decode_rejects_bad_frames(void)
{
    struct buf b = BUF_INIT;
    struct tpc_msg m = sample_msg(TPC_MSG_COMMIT);
    struct peer_frame f;
    char frame[128], body[PEER_MSG_FIXED_BYTES];
    size_t n;

    CU_ASSERT_EQUAL_FATAL(peer_msg_encode(&b, &m), 0);
    /* Every single bit flip after the length field: the checksum catches it. */
    for (size_t i = 4 * 8; i < b.len * 8; i++) {
        b.data[i / 8] ^= (char)(1 << (i % 8));
        CU_ASSERT_EQUAL(peer_frame_decode(b.data, b.len, 1 << 20, &f), -EBADMSG);
        b.data[i / 8] ^= (char)(1 << (i % 8));
    }
    CU_ASSERT_EQUAL(peer_frame_decode(b.data, b.len, 1 << 20, &f), (long)b.len);

    /* Over the maximum: refused from the length field alone. */
    CU_ASSERT_EQUAL(peer_frame_decode(b.data, b.len, b.len - 1, &f), -EBADMSG);
    CU_ASSERT_EQUAL(peer_frame_decode(b.data, 4, b.len - 1, &f), -EBADMSG);
    CU_ASSERT_EQUAL(peer_frame_decode(b.data, b.len, b.len, &f), (long)b.len);
    util_put_le32(frame, UINT32_MAX);
    CU_ASSERT_EQUAL(peer_frame_decode(frame, 4, 1 << 30, &f), -EBADMSG);
    /* Under the header size. */
    for (uint32_t len = 0; len < 16; len++) {
        util_put_le32(frame, len);
        memset(frame + 4, 0, 40);
        CU_ASSERT_EQUAL(peer_frame_decode(frame, 44, 1 << 20, &f), -EBADMSG);
    }
    /* An empty body is a valid frame (and an invalid message). */
    n = mk_frame(frame, PEER_FRAME_VERSION, TPC_MSG_ACK, 0, 1, NULL, 0);
    CU_ASSERT_EQUAL(peer_frame_decode(frame, n, 1 << 20, &f), 20);
    CU_ASSERT_EQUAL(peer_msg_decode(&f, &m), -EBADMSG);

    /* Version and flags, with a valid checksum. */
    mk_body16(body, 1, 0, 0, 0, 0);
    n = mk_frame(frame, PEER_FRAME_VERSION, TPC_MSG_ACK, 0, 1, body,
                 PEER_MSG_FIXED_BYTES);
    CU_ASSERT_EQUAL(peer_frame_decode(frame, n, 1 << 20, &f), (long)n);
    /* Another release's version (1 was 0.1's: its CHECK read a clock). */
    n = mk_frame(frame, PEER_FRAME_VERSION + 1, TPC_MSG_ACK, 0, 1, body,
                 PEER_MSG_FIXED_BYTES);
    CU_ASSERT_EQUAL(peer_frame_decode(frame, n, 1 << 20, &f), -EBADMSG);
    n = mk_frame(frame, PEER_FRAME_VERSION - 1, TPC_MSG_ACK, 0, 1, body,
                 PEER_MSG_FIXED_BYTES);
    CU_ASSERT_EQUAL(peer_frame_decode(frame, n, 1 << 20, &f), -EBADMSG);
    n = mk_frame(frame, 0, TPC_MSG_ACK, 0, 1, body, PEER_MSG_FIXED_BYTES);
    CU_ASSERT_EQUAL(peer_frame_decode(frame, n, 1 << 20, &f), -EBADMSG);
    n = mk_frame(frame, PEER_FRAME_VERSION, TPC_MSG_ACK, 1, 1, body,
                 PEER_MSG_FIXED_BYTES);
    CU_ASSERT_EQUAL(peer_frame_decode(frame, n, 1 << 20, &f), -EBADMSG);
    buf_free(&b);
}

static void test_decode_rejects_bad_messages(void)
{
    enum { FIX = PEER_MSG_FIXED_BYTES };
    struct tpc_msg m;
    char body[64];

    /* Unknown types, including the handshake's. */
    mk_body16(body, 1, 0, 0, 0, 0);
    CU_ASSERT_EQUAL(decode_body(0, body, FIX, &m), -EBADMSG);
    CU_ASSERT_EQUAL(decode_body(TPC_MSG_TYPE_MAX + 1, body, FIX, &m), -EBADMSG);
    CU_ASSERT_EQUAL(decode_body(PEER_FRAME_HELLO, body, FIX, &m), -EBADMSG);
    CU_ASSERT_EQUAL(decode_body(PEER_FRAME_AUTH, body, FIX, &m), -EBADMSG);
    CU_ASSERT_EQUAL(decode_body(255, body, FIX, &m), -EBADMSG);

    /* Wrong body length for every type: short, and long for fixed ones. */
    for (uint8_t t = 1; t <= TPC_MSG_TYPE_MAX; t++) {
        memset(body, 0, sizeof(body));
        mk_body16(body, 9, 1, 1, 0, 0);
        util_put_le32(body + 12, 1); /* PREPARE: nops 1 */
        body[FIX] = 'x';
        size_t good = t == TPC_MSG_PREPARE ? FIX + 1 : FIX;
        CU_ASSERT_EQUAL(decode_body(t, body, good, &m), 0);
        for (size_t n = 0; n < good; n++)
            CU_ASSERT_EQUAL(decode_body(t, body, n, &m), -EBADMSG);
        if (t != TPC_MSG_PREPARE) {
            CU_ASSERT_EQUAL(decode_body(t, body, FIX + 1, &m), -EBADMSG);
            CU_ASSERT_EQUAL(decode_body(t, body, FIX + 8, &m), -EBADMSG);
        }
    }

    /* PREPARE: nops 0; coordinator out of range. */
    memset(body, 0, sizeof(body));
    util_put_le64(body, 5);
    body[FIX] = 'x';
    CU_ASSERT_EQUAL(decode_body(TPC_MSG_PREPARE, body, FIX + 1, &m), -EBADMSG);
    util_put_le32(body + 12, 3);
    CU_ASSERT_EQUAL(decode_body(TPC_MSG_PREPARE, body, FIX + 1, &m), 0);
    CU_ASSERT_EQUAL(m.nops, 3);
    CU_ASSERT_EQUAL(m.nbytes, 1);
    CU_ASSERT_EQUAL(m.ops[0], 'x');
    util_put_le32(body + 8, TPC_REPLICAS_MAX);
    CU_ASSERT_EQUAL(decode_body(TPC_MSG_PREPARE, body, FIX + 1, &m), -EBADMSG);

    /* VOTE: vote 2; reason out of range; padding. */
    mk_body16(body, 1, 0, 1, 0, 0);
    CU_ASSERT_EQUAL(decode_body(TPC_MSG_VOTE, body, FIX, &m), 0);
    CU_ASSERT_EQUAL(m.vote, 1);
    mk_body16(body, 1, 0, 0, TPC_R_VIEW, 0);
    CU_ASSERT_EQUAL(decode_body(TPC_MSG_VOTE, body, FIX, &m), 0);
    CU_ASSERT_EQUAL(m.reason, TPC_R_VIEW);
    mk_body16(body, 1, 0, 2, 0, 0);
    CU_ASSERT_EQUAL(decode_body(TPC_MSG_VOTE, body, FIX, &m), -EBADMSG);
    mk_body16(body, 1, 0, 0, TPC_R_UNKNOWN, 0);
    CU_ASSERT_EQUAL(decode_body(TPC_MSG_VOTE, body, FIX, &m), -EBADMSG);
    mk_body16(body, 1, 0, 0, 0, 1);
    CU_ASSERT_EQUAL(decode_body(TPC_MSG_VOTE, body, FIX, &m), -EBADMSG);
    mk_body16(body, 1, TPC_REPLICAS_MAX, 0, 0, 0);
    CU_ASSERT_EQUAL(decode_body(TPC_MSG_VOTE, body, FIX, &m), -EBADMSG);

    /* COMMIT, ABORT, ACK, QUERY: reason out of range; padding. */
    for (uint8_t t = TPC_MSG_COMMIT; t <= TPC_MSG_QUERY; t++) {
        mk_body16(body, 1, 2, TPC_R_VIEW, 0, 0);
        CU_ASSERT_EQUAL(decode_body(t, body, FIX, &m), 0);
        mk_body16(body, 1, 2, TPC_R_UNKNOWN, 0, 0);
        CU_ASSERT_EQUAL(decode_body(t, body, FIX, &m), -EBADMSG);
        mk_body16(body, 1, 2, 0, 1, 0);
        CU_ASSERT_EQUAL(decode_body(t, body, FIX, &m), -EBADMSG);
        mk_body16(body, 1, 2, 0, 0, 0x100);
        CU_ASSERT_EQUAL(decode_body(t, body, FIX, &m), -EBADMSG);
    }

    /* ANSWER: outcome out of range; padding. */
    mk_body16(body, 1, 2, TPC_O_LOST, 0, 0);
    CU_ASSERT_EQUAL(decode_body(TPC_MSG_ANSWER, body, FIX, &m), 0);
    CU_ASSERT_EQUAL(m.outcome, TPC_O_LOST);
    mk_body16(body, 1, 2, TPC_O_LOST + 1, 0, 0);
    CU_ASSERT_EQUAL(decode_body(TPC_MSG_ANSWER, body, FIX, &m), -EBADMSG);
    mk_body16(body, 1, 2, 0, 1, 0);
    CU_ASSERT_EQUAL(decode_body(TPC_MSG_ANSWER, body, FIX, &m), -EBADMSG);
}

static void test_encode_rejects_invalid_messages(void)
{
    struct buf b = BUF_INIT;
    struct tpc_msg m;

    m = sample_msg(TPC_MSG_ACK);
    m.type = 0;
    CU_ASSERT_EQUAL(peer_msg_encode(&b, &m), -EINVAL);
    m.type = TPC_MSG_TYPE_MAX + 1;
    CU_ASSERT_EQUAL(peer_msg_encode(&b, &m), -EINVAL);
    m = sample_msg(TPC_MSG_PREPARE);
    m.nops = 0;
    CU_ASSERT_EQUAL(peer_msg_encode(&b, &m), -EINVAL);
    m = sample_msg(TPC_MSG_PREPARE);
    m.nbytes = 0;
    CU_ASSERT_EQUAL(peer_msg_encode(&b, &m), -EINVAL);
    m = sample_msg(TPC_MSG_VOTE);
    m.vote = 2;
    CU_ASSERT_EQUAL(peer_msg_encode(&b, &m), -EINVAL);
    m = sample_msg(TPC_MSG_ABORT);
    m.reason = TPC_R_UNKNOWN;
    CU_ASSERT_EQUAL(peer_msg_encode(&b, &m), -EINVAL);
    m.reason = TPC_R_NOT_MEMBER;
    CU_ASSERT_EQUAL(peer_msg_encode(&b, &m), -EINVAL);
    m = sample_msg(TPC_MSG_ANSWER);
    m.outcome = TPC_O_LOST + 1;
    CU_ASSERT_EQUAL(peer_msg_encode(&b, &m), -EINVAL);
    m = sample_msg(TPC_MSG_QUERY);
    m.coord = TPC_REPLICAS_MAX;
    CU_ASSERT_EQUAL(peer_msg_encode(&b, &m), -EINVAL);
    CU_ASSERT_EQUAL(b.len, 0);
    CU_ASSERT_EQUAL(peer_msg_frame_size(&m), 0);
    CU_ASSERT_STRING_EQUAL(peer_link_state_name(PEER_LINK_UP), "up");
    CU_ASSERT_STRING_EQUAL(peer_link_state_name(PEER_LINK_HANDSHAKE), "handshake");
    buf_free(&b);
}

/* ---- network harness ------------------------------------------------------------ */

struct got {
    struct tpc_msg m;
    char *ops;
};

struct obs {
    struct peer_net *net;
    unsigned ups[LIMIT_REPLICAS_MAX], downs[LIMIT_REPLICAS_MAX];
    bool link[LIMIT_REPLICAS_MAX];
    struct got got[GOT_MAX];
    size_t ngot;
    bool close_on_msg; /* the callee closes the net from on_msg */
    bool reply_on_msg; /* the callee answers each message with an ACK */
    int reply_status;
    bool link_during_send; /* on_link ran while a test was inside peer_send */
};

struct harness {
    uv_loop_t loop;
    uv_timer_t ticker;
    struct obs obs[NETS_MAX];
    enum log_level saved_level;
    bool in_send;
};

static struct harness *cur; /* for on_link to see in_send */

static void on_msg(void *arg, const struct tpc_msg *m)
{
    struct obs *o = arg;

    if (o->ngot < GOT_MAX) {
        struct got *g = &o->got[o->ngot++];
        g->m = *m;
        g->ops = NULL;
        if (m->type == TPC_MSG_PREPARE) {
            g->ops = malloc(m->nbytes);
            CU_ASSERT_PTR_NOT_NULL_FATAL(g->ops);
            memcpy(g->ops, m->ops, m->nbytes);
            g->m.ops = g->ops;
        }
    }
    if (o->reply_on_msg) {
        struct tpc_msg r = sample_msg(TPC_MSG_ACK);
        r.to = m->from;
        r.txid = m->txid;
        o->reply_status = peer_send(o->net, &r);
    }
    if (o->close_on_msg) {
        peer_net_close(o->net);
        o->net = NULL;
    }
}

static void on_link(void *arg, uint32_t id, bool up)
{
    struct obs *o = arg;

    CU_ASSERT_FATAL(id < LIMIT_REPLICAS_MAX);
    CU_ASSERT_NOT_EQUAL(o->link[id], up); /* reports alternate */
    o->link[id] = up;
    if (up)
        o->ups[id]++;
    else
        o->downs[id]++;
    if (cur && cur->in_send)
        o->link_during_send = true;
}

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

static void h_init(struct harness *h)
{
    memset(h, 0, sizeof(*h));
    CU_ASSERT_EQUAL_FATAL(uv_loop_init(&h->loop), 0);
    uv_timer_init(&h->loop, &h->ticker);
    uv_timer_start(&h->ticker, on_tick, TICK_MS, TICK_MS);
    cur = h;
    /* Peer tests provoke failures on purpose; keep their lines out of the
     * runner's output. */
    h->saved_level = log_get_level();
    if (getenv("TPCKV_PEER_LOG") != NULL) {
        log_set_level(LOG_LEVEL_DEBUG);
        return;
    }
    log_set_level(LOG_LEVEL_ERROR);
    log_open_file("/dev/null");
}

static void free_got(struct obs *o)
{
    for (size_t i = 0; i < o->ngot; i++)
        free(o->got[i].ops);
    o->ngot = 0;
}

static void h_fini(struct harness *h)
{
    for (int i = 0; i < NETS_MAX; i++) {
        peer_net_close(h->obs[i].net);
        h->obs[i].net = NULL;
        free_got(&h->obs[i]);
    }
    uv_close((uv_handle_t *)&h->ticker, NULL);
    uv_run(&h->loop, UV_RUN_DEFAULT);
    CU_ASSERT_EQUAL(uv_loop_close(&h->loop), 0);
    log_close();
    log_set_level(h->saved_level);
    cur = NULL;
}

/* Runs the loop until pred(h) holds, within STEP_MAX turns. */
static bool run_until(struct harness *h, bool (*pred)(struct harness *h))
{
    for (int i = 0; i < STEP_MAX; i++) {
        if (pred(h))
            return true;
        uv_run(&h->loop, UV_RUN_ONCE);
    }
    return pred(h);
}

/* A config for replica self of n, all on 127.0.0.1 with kernel-picked ports. */
static void base_config(struct peer_config *c, struct obs *o, uint32_t self, size_t n,
                        const unsigned char *secret, uint64_t epoch)
{
    memset(c, 0, sizeof(*c));
    c->self = self;
    c->n = n;
    for (size_t i = 0; i < n; i++) {
        c->replicas[i].id = (uint32_t)i;
        snprintf(c->replicas[i].host, sizeof(c->replicas[i].host), "127.0.0.1");
        c->replicas[i].port = 0;
    }
    c->secret = secret;
    c->nsecret = strlen((const char *)secret);
    c->epoch = epoch;
    c->on_msg = on_msg;
    c->on_link = on_link;
    c->arg = o;
}

static void net_new(struct harness *h, int i, const struct peer_config *c)
{
    char err[256] = "";
    int r = peer_net_new(&h->obs[i].net, &h->loop, c, err, sizeof(err));

    if (r != 0)
        fprintf(stderr, "\npeer_net_new: %s\n", err);
    CU_ASSERT_EQUAL_FATAL(r, 0);
    CU_ASSERT(peer_net_port(h->obs[i].net) > 0);
}

/* Nets 0 and 1 from these configs, told each other's ports, dialing. */
static void pair_start(struct harness *h, const struct peer_config *c0,
                       const struct peer_config *c1)
{
    net_new(h, 0, c0);
    net_new(h, 1, c1);
    peer_net_set_port(h->obs[0].net, 1, peer_net_port(h->obs[1].net));
    peer_net_set_port(h->obs[1].net, 0, peer_net_port(h->obs[0].net));
    peer_net_start(h->obs[0].net);
    peer_net_start(h->obs[1].net);
}

static bool both_up(struct harness *h)
{
    return h->obs[0].link[1] && h->obs[1].link[0] && peer_link_up(h->obs[0].net, 1) &&
           peer_link_up(h->obs[1].net, 0);
}

/* A standard pair with both links up. */
static void pair_up(struct harness *h, size_t output_bytes_max)
{
    struct peer_config c0, c1;

    base_config(&c0, &h->obs[0], 0, 2, secret_a, 1);
    base_config(&c1, &h->obs[1], 1, 2, secret_a, 1);
    c0.output_bytes_max = output_bytes_max;
    pair_start(h, &c0, &c1);
    CU_ASSERT_FATAL(run_until(h, both_up));
}

static struct peer_link_stats stats(struct harness *h, int net, uint32_t id)
{
    struct peer_link_stats st;

    peer_get_link_stats(h->obs[net].net, id, &st);
    return st;
}

/* ---- tests: clock probes -------------------------------------------------------- */

/* Net 1's wall clock runs 7 s ahead of net 0's. */
static uint64_t clock_base(void *arg)
{
    (void)arg;
    return util_now_unix_us();
}

static uint64_t clock_ahead(void *arg)
{
    (void)arg;
    return util_now_unix_us() + 7000000u;
}

static int64_t clock_seen_offset[2];
static uint64_t clock_seen_rtt[2];
static int clock_seen[2];

static void on_clock(void *arg, uint32_t id, int64_t offset_us, uint64_t rtt_us)
{
    struct obs *o = arg;
    int side = o == &cur->obs[0] ? 0 : 1;

    CU_ASSERT_EQUAL(id, (uint32_t)(1 - side));
    clock_seen[side]++;
    clock_seen_offset[side] = offset_us;
    clock_seen_rtt[side] = rtt_us;
}

static bool both_clocked(struct harness *h)
{
    (void)h;
    return clock_seen[0] > 0 && clock_seen[1] > 0;
}

static void test_clock_probes_measure_the_offset(void)
{
    struct harness h;
    struct peer_config c0, c1;

    h_init(&h);
    clock_seen[0] = clock_seen[1] = 0;
    base_config(&c0, &h.obs[0], 0, 2, secret_a, 1);
    base_config(&c1, &h.obs[1], 1, 2, secret_a, 1);
    c0.clock_us = clock_base;
    c1.clock_us = clock_ahead;
    c0.on_clock = c1.on_clock = on_clock;
    pair_start(&h, &c0, &c1);
    CU_ASSERT_FATAL(run_until(&h, both_up));
    peer_clock_ping(h.obs[0].net);
    peer_clock_ping(h.obs[1].net);
    CU_ASSERT_FATAL(run_until(&h, both_clocked));
    /* Each sees the other's offset, within half its round trip. */
    for (int side = 0; side < 2; side++) {
        int64_t want = side == 0 ? 7000000 : -7000000;
        int64_t d = clock_seen_offset[side] - want;
        CU_ASSERT((uint64_t)(d < 0 ? -d : d) <= clock_seen_rtt[side] / 2 + 1);
        struct peer_link_stats st = stats(&h, side, (uint32_t)(1 - side));
        CU_ASSERT_EQUAL(st.clock_probes, 1);
        CU_ASSERT_EQUAL(st.clock_offset_us, clock_seen_offset[side]);
        CU_ASSERT_EQUAL(st.bad_frames, 0);
        CU_ASSERT_EQUAL(st.frames_in, 0); /* probes are not tpc messages */
    }
    h_fini(&h);
}

/* ---- tests: links ------------------------------------------------------------ */

static size_t want_got;

static bool both_got_want(struct harness *h)
{
    return h->obs[0].ngot >= want_got && h->obs[1].ngot >= want_got;
}

static void test_links_come_up_and_every_type_flows_both_ways(void)
{
    struct harness h;
    struct tpc_msg sent[TPC_MSG_TYPE_MAX + 1];
    size_t nbig = 100 * 1024;
    char *big = malloc(nbig);

    CU_ASSERT_PTR_NOT_NULL_FATAL(big);
    for (size_t i = 0; i < nbig; i++)
        big[i] = (char)rnd();
    h_init(&h);
    pair_up(&h, 0);
    CU_ASSERT_EQUAL(h.obs[0].ups[1], 1);
    CU_ASSERT_EQUAL(h.obs[1].ups[0], 1);
    CU_ASSERT(run_until(&h, both_up));

    for (uint8_t t = 1; t <= TPC_MSG_TYPE_MAX; t++) {
        sent[t] = sample_msg(t);
        sent[t].epoch = 999; /* ignored: frames carry the net's epoch */
        if (t == TPC_MSG_PREPARE) {
            sent[t].ops = big;
            sent[t].nbytes = (uint32_t)nbig;
            sent[t].nops = 77;
        }
        sent[t].to = 1;
        CU_ASSERT_EQUAL(peer_send(h.obs[0].net, &sent[t]), 0);
        sent[t].to = 0;
        CU_ASSERT_EQUAL(peer_send(h.obs[1].net, &sent[t]), 0);
    }
    want_got = TPC_MSG_TYPE_MAX;
    CU_ASSERT_FATAL(run_until(&h, both_got_want));
    for (int side = 0; side < 2; side++) {
        struct obs *o = &h.obs[side];
        CU_ASSERT_EQUAL_FATAL(o->ngot, TPC_MSG_TYPE_MAX);
        for (size_t i = 0; i < o->ngot; i++) {
            struct tpc_msg want = sent[i + 1];
            want.epoch = 1;
            assert_msg_equal(&o->got[i].m, &want);
            CU_ASSERT_EQUAL(o->got[i].m.from, (uint32_t)(1 - side));
            CU_ASSERT_EQUAL(o->got[i].m.to, (uint32_t)side);
        }
        struct peer_link_stats st = stats(&h, side, (uint32_t)(1 - side));
        CU_ASSERT_EQUAL(st.state, PEER_LINK_UP);
        CU_ASSERT(st.inbound_up);
        CU_ASSERT_EQUAL(st.frames_out, TPC_MSG_TYPE_MAX);
        CU_ASSERT_EQUAL(st.frames_in, TPC_MSG_TYPE_MAX);
        CU_ASSERT(st.bytes_out > nbig);
        CU_ASSERT(st.bytes_in > nbig);
        CU_ASSERT_EQUAL(st.connects, 1);
        CU_ASSERT_EQUAL(st.disconnects, 0);
        CU_ASSERT_EQUAL(st.auth_failures, 0);
        CU_ASSERT_EQUAL(st.bad_frames, 0);
        CU_ASSERT_EQUAL(st.queued_bytes, 0);
    }
    /* Self and unknown ids. */
    CU_ASSERT_FALSE(peer_link_up(h.obs[0].net, 0));
    CU_ASSERT_FALSE(peer_link_up(h.obs[0].net, 5));
    CU_ASSERT_FALSE(peer_link_up(h.obs[0].net, 1000));
    CU_ASSERT_EQUAL(stats(&h, 0, 0).state, PEER_LINK_DOWN);
    CU_ASSERT_EQUAL(stats(&h, 0, 9).frames_out, 0);
    h_fini(&h);
    free(big);
}

static void test_many_messages_in_one_turn_are_coalesced(void)
{
    struct harness h;
    struct peer_link_stats before, after;
    const size_t count = 500;

    h_init(&h);
    pair_up(&h, 0);
    before = stats(&h, 0, 1);
    for (size_t i = 0; i < count; i++) {
        struct tpc_msg m = sample_msg((uint8_t)(1 + i % TPC_MSG_TYPE_MAX));
        m.txid = i;
        m.to = 1;
        CU_ASSERT_EQUAL(peer_send(h.obs[0].net, &m), 0);
    }
    CU_ASSERT(stats(&h, 0, 1).queued_bytes > 0);
    /* Nothing was delivered synchronously. */
    CU_ASSERT_EQUAL(h.obs[1].ngot, 0);
    for (int i = 0; i < STEP_MAX && h.obs[1].ngot < count; i++)
        uv_run(&h.loop, UV_RUN_ONCE);
    CU_ASSERT_EQUAL_FATAL(h.obs[1].ngot, count);
    after = stats(&h, 0, 1);
    CU_ASSERT_EQUAL(after.frames_out - before.frames_out, count);
    CU_ASSERT(after.writes - before.writes >= 1);
    CU_ASSERT(after.writes - before.writes < count / 10);
    /* In order, nothing lost. */
    for (size_t i = 0; i < count; i++)
        CU_ASSERT_EQUAL(h.obs[1].got[i].m.txid, i);
    h_fini(&h);
}

static bool a_has_reply(struct harness *h)
{
    return h->obs[0].ngot >= 1;
}

static void test_callee_may_send_and_close_from_on_msg(void)
{
    struct harness h;
    struct tpc_msg m = sample_msg(TPC_MSG_QUERY);

    h_init(&h);
    pair_up(&h, 0);
    /* peer_send from on_msg queues a reply. */
    h.obs[1].reply_on_msg = true;
    m.to = 1;
    CU_ASSERT_EQUAL(peer_send(h.obs[0].net, &m), 0);
    CU_ASSERT_FATAL(run_until(&h, a_has_reply));
    CU_ASSERT_EQUAL(h.obs[1].reply_status, 0);
    CU_ASSERT_EQUAL(h.obs[0].got[0].m.type, TPC_MSG_ACK);
    CU_ASSERT_EQUAL(h.obs[0].got[0].m.txid, m.txid);

    /* peer_net_close from on_msg, with more frames behind in the same read:
     * no callback after it, no use after free (ASan run). */
    h.obs[1].reply_on_msg = false;
    h.obs[1].close_on_msg = true;
    size_t had = h.obs[1].ngot;
    for (int i = 0; i < 20; i++)
        CU_ASSERT_EQUAL(peer_send(h.obs[0].net, &m), 0);
    for (int i = 0; i < 2000 && h.obs[1].net != NULL; i++)
        uv_run(&h.loop, UV_RUN_ONCE);
    CU_ASSERT_PTR_NULL(h.obs[1].net);
    for (int i = 0; i < 200; i++)
        uv_run(&h.loop, UV_RUN_ONCE);
    CU_ASSERT_EQUAL(h.obs[1].ngot, had + 1);
    h_fini(&h);
}

static void test_send_errors(void)
{
    struct harness h;
    struct peer_config c0, c1;
    struct tpc_msg m = sample_msg(TPC_MSG_PREPARE);
    char ops[600];

    h_init(&h);
    base_config(&c0, &h.obs[0], 0, 2, secret_a, 1);
    base_config(&c1, &h.obs[1], 1, 2, secret_a, 1);
    c0.frame_bytes_max = 512;
    c1.frame_bytes_max = 512;
    net_new(&h, 0, &c0);
    net_new(&h, 1, &c1);
    /* Not started: not up. */
    m.to = 1;
    CU_ASSERT_EQUAL(peer_send(h.obs[0].net, &m), -ENOTCONN);
    m.to = 0;
    CU_ASSERT_EQUAL(peer_send(h.obs[0].net, &m), -EINVAL);
    m.to = 2;
    CU_ASSERT_EQUAL(peer_send(h.obs[0].net, &m), -EINVAL);
    m.to = 100;
    CU_ASSERT_EQUAL(peer_send(h.obs[0].net, &m), -EINVAL);
    peer_net_set_port(h.obs[0].net, 1, peer_net_port(h.obs[1].net));
    peer_net_set_port(h.obs[1].net, 0, peer_net_port(h.obs[0].net));
    peer_net_start(h.obs[0].net);
    peer_net_start(h.obs[1].net);
    CU_ASSERT_FATAL(run_until(&h, both_up));
    m.to = 1;
    m.nops = 0;
    CU_ASSERT_EQUAL(peer_send(h.obs[0].net, &m), -EINVAL);
    memset(ops, 'o', sizeof(ops));
    m.nops = 1;
    m.ops = ops;
    m.nbytes = 512 - PEER_FRAME_HEADER_BYTES - PEER_MSG_FIXED_BYTES + 1;
    CU_ASSERT_EQUAL(peer_send(h.obs[0].net, &m), -EMSGSIZE);
    m.nbytes = 512 - PEER_FRAME_HEADER_BYTES - PEER_MSG_FIXED_BYTES;
    CU_ASSERT_EQUAL(peer_send(h.obs[0].net, &m), 0);
    want_got = 0;
    for (int i = 0; i < STEP_MAX && h.obs[1].ngot == 0; i++)
        uv_run(&h.loop, UV_RUN_ONCE);
    CU_ASSERT_EQUAL_FATAL(h.obs[1].ngot, 1);
    CU_ASSERT_EQUAL(h.obs[1].got[0].m.nbytes,
                    512 - PEER_FRAME_HEADER_BYTES - PEER_MSG_FIXED_BYTES);
    CU_ASSERT(peer_link_up(h.obs[0].net, 1));
    h_fini(&h);
}

static void test_new_refuses_bad_config_and_busy_port(void)
{
    struct harness h;
    struct peer_config c;
    struct peer_net *net = (struct peer_net *)(uintptr_t)1;
    char err[256], want[128];

    h_init(&h);
    base_config(&c, &h.obs[0], 3, 2, secret_a, 1);
    CU_ASSERT_EQUAL(peer_net_new(&net, &h.loop, &c, err, sizeof(err)), -EINVAL);
    CU_ASSERT_PTR_NULL(net);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "our id 3"));
    base_config(&c, &h.obs[0], 0, 2, secret_a, 1);
    c.replicas[1].id = 0;
    CU_ASSERT_EQUAL(peer_net_new(&net, &h.loop, &c, err, sizeof(err)), -EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "twice"));
    base_config(&c, &h.obs[0], 0, 2, secret_a, 1);
    c.nsecret = 0;
    CU_ASSERT_EQUAL(peer_net_new(&net, &h.loop, &c, err, sizeof(err)), -EINVAL);
    base_config(&c, &h.obs[0], 0, 2, secret_a, 1);
    c.frame_bytes_max = 100;
    CU_ASSERT_EQUAL(peer_net_new(&net, &h.loop, &c, err, sizeof(err)), -EINVAL);

    /* A port another net listens on. */
    base_config(&c, &h.obs[0], 0, 2, secret_a, 1);
    net_new(&h, 0, &c);
    c.replicas[0].port = peer_net_port(h.obs[0].net);
    CU_ASSERT_EQUAL(peer_net_new(&net, &h.loop, &c, err, sizeof(err)), UV_EADDRINUSE);
    snprintf(want, sizeof(want),
             "cannot listen on 127.0.0.1:%d for peers: address already in use",
             c.replicas[0].port);
    CU_ASSERT_STRING_EQUAL(err, want);
    /* An address that is not ours. */
    base_config(&c, &h.obs[0], 0, 2, secret_a, 1);
    snprintf(c.replicas[0].host, sizeof(c.replicas[0].host), "192.0.2.1");
    CU_ASSERT(peer_net_new(&net, &h.loop, &c, err, sizeof(err)) < 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "cannot listen on 192.0.2.1:0 for peers"));
    h_fini(&h);
}

/* Counts lines of the file that contain both strings. */
static int count_lines(const char *path, const char *a, const char *b)
{
    FILE *fp = fopen(path, "r");
    char line[4096];
    int n = 0;

    if (fp == NULL)
        return -1;
    while (fgets(line, sizeof(line), fp))
        if (strstr(line, a) && strstr(line, b))
            n++;
    fclose(fp);
    return n;
}

static bool auth_failed_thrice_both(struct harness *h)
{
    return stats(h, 0, 1).auth_failures >= 3 && stats(h, 1, 0).auth_failures >= 3;
}

/* ...and replica 0's last error about its link to 1 is the authentication
 * failure (a retry in between may have ended otherwise: the other side
 * closing first). */
static bool auth_failed_thrice_both_and_said(struct harness *h)
{
    return auth_failed_thrice_both(h) &&
           strstr(stats(h, 0, 1).last_error, "authentication failed") != NULL;
}

static void test_wrong_secret_refused_and_logged_once(void)
{
    struct harness h;
    struct peer_config c0, c1;
    char path[256];
    const char *t = getenv("TMPDIR");
    int fd;

    h_init(&h);
    snprintf(path, sizeof(path), "%s/tpckv-unit-peer-log.XXXXXX", t && *t ? t : "/tmp");
    fd = mkstemp(path);
    CU_ASSERT_FATAL(fd >= 0);
    close(fd);
    log_close();
    CU_ASSERT_EQUAL_FATAL(log_open_file(path), 0);
    log_set_level(LOG_LEVEL_INFO);

    base_config(&c0, &h.obs[0], 0, 2, secret_a, 1);
    base_config(&c1, &h.obs[1], 1, 2, secret_b, 1);
    pair_start(&h, &c0, &c1);
    CU_ASSERT_FATAL(run_until(&h, auth_failed_thrice_both_and_said));
    CU_ASSERT_FALSE(peer_link_up(h.obs[0].net, 1));
    CU_ASSERT_FALSE(peer_link_up(h.obs[1].net, 0));
    CU_ASSERT_EQUAL(h.obs[0].ups[1], 0);
    CU_ASSERT_EQUAL(h.obs[1].ups[0], 0);
    CU_ASSERT_FALSE(stats(&h, 0, 1).inbound_up);
    CU_ASSERT_PTR_NOT_NULL(strstr(stats(&h, 0, 1).last_error, "authentication failed"));
    log_close();
    /* Three failures on each side, one error line each. */
    CU_ASSERT_EQUAL(
        count_lines(path, " error peer: peer 1 (127.0.0.1:",
                    "authentication failed: the peers' --secret-file contents differ"),
        1);
    CU_ASSERT_EQUAL(
        count_lines(path, " error peer: peer 0 (127.0.0.1:",
                    "authentication failed: the peers' --secret-file contents differ"),
        1);
    CU_ASSERT_EQUAL(count_lines(path, " info  peer: ", "link up"), 0);
    unlink(path);
    if (getenv("TPCKV_PEER_LOG") == NULL) {
        log_open_file("/dev/null");
        log_set_level(LOG_LEVEL_ERROR);
    } else {
        log_set_level(LOG_LEVEL_DEBUG);
    }
    h_fini(&h);
}

static bool epoch_refused_both(struct harness *h)
{
    return stats(h, 0, 1).epoch_mismatches >= 1 && stats(h, 1, 0).epoch_mismatches >= 1;
}

static void test_different_epoch_refused(void)
{
    struct harness h;
    struct peer_config c0, c1;

    h_init(&h);
    base_config(&c0, &h.obs[0], 0, 2, secret_a, 1);
    base_config(&c1, &h.obs[1], 1, 2, secret_a, 3);
    pair_start(&h, &c0, &c1);
    CU_ASSERT_FATAL(run_until(&h, epoch_refused_both));
    CU_ASSERT_FALSE(peer_link_up(h.obs[0].net, 1));
    CU_ASSERT_FALSE(peer_link_up(h.obs[1].net, 0));
    CU_ASSERT_EQUAL(h.obs[0].ups[1] + h.obs[1].ups[0], 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(stats(&h, 0, 1).last_error,
                                  "configuration epoch 3 differs from ours (1)"));
    h_fini(&h);
}

static bool config_refused_both(struct harness *h)
{
    return stats(h, 0, 1).config_mismatches >= 1 && stats(h, 1, 0).config_mismatches >= 1;
}

static void test_different_replica_list_refused(void)
{
    struct harness h;
    struct peer_config c0, c1;

    h_init(&h);
    base_config(&c0, &h.obs[0], 0, 2, secret_a, 1);
    base_config(&c1, &h.obs[1], 1, 3, secret_a, 1);
    pair_start(&h, &c0, &c1);
    CU_ASSERT_FATAL(run_until(&h, config_refused_both));
    CU_ASSERT_FALSE(peer_link_up(h.obs[0].net, 1));
    CU_ASSERT_FALSE(peer_link_up(h.obs[1].net, 0));
    CU_ASSERT_EQUAL(h.obs[0].ups[1] + h.obs[1].ups[0], 0);
    CU_ASSERT(stats(&h, 0, 1).auth_failures >= 1);
    CU_ASSERT_PTR_NOT_NULL(
        strstr(stats(&h, 1, 0).last_error,
               "its --replicas list differs from ours: refusing the link"));
    h_fini(&h);
}

static bool a_saw_b_down(struct harness *h)
{
    return h->obs[0].downs[1] >= 1 && !peer_link_up(h->obs[0].net, 1);
}

static bool back_up(struct harness *h)
{
    return h->obs[0].ups[1] >= 2 && h->obs[1].link[0] && peer_link_up(h->obs[0].net, 1);
}

static void test_peer_restart_goes_down_and_reconnects(void)
{
    struct harness h;
    struct peer_config c1;
    struct tpc_msg m = sample_msg(TPC_MSG_COMMIT);

    h_init(&h);
    pair_up(&h, 0);
    peer_net_close(h.obs[1].net);
    h.obs[1].net = NULL;
    free_got(&h.obs[1]);
    CU_ASSERT_FATAL(run_until(&h, a_saw_b_down));
    CU_ASSERT_EQUAL(h.obs[0].downs[1], 1);
    CU_ASSERT_EQUAL(stats(&h, 0, 1).disconnects, 1);
    CU_ASSERT_FALSE(stats(&h, 0, 1).inbound_up);
    m.to = 1;
    CU_ASSERT_EQUAL(peer_send(h.obs[0].net, &m), -ENOTCONN);

    /* It comes back (on a new port, as the kernel picks). */
    memset(&h.obs[1], 0, sizeof(h.obs[1]));
    base_config(&c1, &h.obs[1], 1, 2, secret_a, 1);
    net_new(&h, 1, &c1);
    peer_net_set_port(h.obs[0].net, 1, peer_net_port(h.obs[1].net));
    peer_net_set_port(h.obs[1].net, 0, peer_net_port(h.obs[0].net));
    peer_net_start(h.obs[1].net);
    CU_ASSERT_FATAL(run_until(&h, back_up));
    CU_ASSERT_EQUAL(stats(&h, 0, 1).connects, 2);
    CU_ASSERT_EQUAL(h.obs[0].downs[1], 1);
    CU_ASSERT_EQUAL(peer_send(h.obs[0].net, &m), 0);
    for (int i = 0; i < STEP_MAX && h.obs[1].ngot == 0; i++)
        uv_run(&h.loop, UV_RUN_ONCE);
    CU_ASSERT_EQUAL_FATAL(h.obs[1].ngot, 1);
    CU_ASSERT_EQUAL(h.obs[1].got[0].m.txid, m.txid);
    h_fini(&h);
}

static bool a_saw_b_down_once(struct harness *h)
{
    return h->obs[0].downs[1] >= 1;
}

static void test_output_limit_closes_the_link(void)
{
    struct harness h;
    struct tpc_msg m = sample_msg(TPC_MSG_PREPARE);
    char ops[2048];
    int r = 0, sent = 0;

    memset(ops, 'v', sizeof(ops));
    m.ops = ops;
    m.nbytes = sizeof(ops);
    m.to = 1;
    h_init(&h);
    pair_up(&h, 64 * 1024);
    /* All in one turn: nothing is written until the loop runs. */
    h.in_send = true;
    for (int i = 0; i < 100 && r == 0; i++) {
        r = peer_send(h.obs[0].net, &m);
        sent += r == 0;
    }
    h.in_send = false;
    CU_ASSERT_EQUAL(r, -ENOBUFS);
    CU_ASSERT(sent >= 20 && sent < 64);
    CU_ASSERT_FALSE(peer_link_up(h.obs[0].net, 1));
    CU_ASSERT_EQUAL(peer_send(h.obs[0].net, &m), -ENOTCONN);
    /* Reported later, from the loop. */
    CU_ASSERT_EQUAL(h.obs[0].downs[1], 0);
    CU_ASSERT_FALSE(h.obs[0].link_during_send);
    CU_ASSERT_FATAL(run_until(&h, a_saw_b_down_once));
    CU_ASSERT_EQUAL(stats(&h, 0, 1).disconnects, 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(stats(&h, 0, 1).last_error, "not keeping up"));
    /* And it reconnects. */
    CU_ASSERT_FATAL(run_until(&h, back_up));
    h_fini(&h);
}

/* ---- a raw TCP client --------------------------------------------------------- */

static int raw_connect(int port)
{
    struct sockaddr_in sa;
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    CU_ASSERT_FATAL(fd >= 0);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* The kernel completes the connection from the listen backlog. */
    CU_ASSERT_EQUAL_FATAL(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

static void raw_send(int fd, const void *p, size_t n)
{
    CU_ASSERT_EQUAL(send(fd, p, n, MSG_NOSIGNAL), (ssize_t)n);
}

/* Reads up to cap bytes, until the other side closes fd, running the loop
 * meanwhile; returns the bytes read. */
static size_t raw_read_all(struct harness *h, int fd, char *dst, size_t cap)
{
    size_t got = 0;

    for (int i = 0; i < STEP_MAX && got < cap; i++) {
        ssize_t r = recv(fd, dst + got, cap - got, MSG_DONTWAIT);
        if (r > 0)
            got += (size_t)r;
        else if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK))
            break;
        else
            uv_run(&h->loop, UV_RUN_ONCE);
    }
    return got;
}

/* Reads exactly n bytes, running the loop meanwhile. */
static bool raw_read(struct harness *h, int fd, char *dst, size_t n)
{
    return raw_read_all(h, fd, dst, n) == n;
}

/* Runs the loop until the other side closes fd (reading what it sent). */
static bool raw_wait_closed(struct harness *h, int fd)
{
    char sink[4096];

    for (int i = 0; i < STEP_MAX; i++) {
        ssize_t r = recv(fd, sink, sizeof(sink), MSG_DONTWAIT);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK))
            return true;
        if (r < 0)
            uv_run(&h->loop, UV_RUN_ONCE);
    }
    return false;
}

static void hmac(const unsigned char *secret, const char *label, const unsigned char *n1,
                 const unsigned char *n2, uint32_t id1, uint32_t id2, unsigned char *out)
{
    unsigned char msg[128];
    size_t len = strlen(label);
    unsigned int mdlen = 0;

    memcpy(msg, label, len);
    memcpy(msg + len, n1, 32);
    memcpy(msg + len + 32, n2, 32);
    util_put_le32(msg + len + 64, id1);
    util_put_le32(msg + len + 68, id2);
    len += 72;
    CU_ASSERT_PTR_NOT_NULL_FATAL(HMAC(
        EVP_sha256(), secret, (int)strlen((const char *)secret), msg, len, out, &mdlen));
    CU_ASSERT_EQUAL(mdlen, 32);
}

/* Connects to net 0 and completes the handshake as replica `as` by the
 * documented protocol (the dialer speaks first), checking net 0's side of
 * it. Returns the fd. */
static int raw_handshake(struct harness *h, const struct peer_config *c0, uint32_t as,
                         uint64_t epoch)
{
    int fd = raw_connect(peer_net_port(h->obs[0].net));
    char hello[20 + 44], auth[20 + 32], out[256], body[44], early[1];
    unsigned char nonce_d[32], mac[32];
    uint64_t hash = peer_config_hash(c0->replicas, c0->n);
    struct peer_frame f;
    size_t n;

    /* The acceptor says nothing before the dialer's HELLO. */
    for (int i = 0; i < 20; i++)
        uv_run(&h->loop, UV_RUN_NOWAIT);
    CU_ASSERT_EQUAL(recv(fd, early, 1, MSG_DONTWAIT), -1);
    for (int i = 0; i < 32; i++)
        nonce_d[i] = (unsigned char)rnd();
    util_put_le32(body, as);
    util_put_le64(body + 4, hash);
    memcpy(body + 12, nonce_d, 32);
    n = mk_frame(out, PEER_FRAME_VERSION, PEER_FRAME_HELLO, 0, epoch, body, sizeof(body));
    raw_send(fd, out, n);

    CU_ASSERT_FATAL(raw_read(h, fd, hello, sizeof(hello)));
    CU_ASSERT_EQUAL_FATAL(peer_frame_decode(hello, sizeof(hello), 1024, &f),
                          (long)sizeof(hello));
    CU_ASSERT_EQUAL(f.type, PEER_FRAME_HELLO);
    CU_ASSERT_EQUAL(f.epoch, c0->epoch);
    CU_ASSERT_EQUAL(f.nbody, 44);
    CU_ASSERT_EQUAL(util_get_le32(f.body), c0->self);
    CU_ASSERT_EQUAL(util_get_le64(f.body + 4), hash);
    const unsigned char *nonce_a = (const unsigned char *)f.body + 12;

    hmac(c0->secret, "tpckv-peer-v1 dialer", nonce_a, nonce_d, as, c0->self, mac);
    raw_send(
        fd, out,
        mk_frame(out, PEER_FRAME_VERSION, PEER_FRAME_AUTH, 0, epoch, mac, sizeof(mac)));

    CU_ASSERT_FATAL(raw_read(h, fd, auth, sizeof(auth)));
    CU_ASSERT_EQUAL_FATAL(peer_frame_decode(auth, sizeof(auth), 1024, &f),
                          (long)sizeof(auth));
    CU_ASSERT_EQUAL(f.type, PEER_FRAME_AUTH);
    hmac(c0->secret, "tpckv-peer-v1 acceptor", nonce_d, nonce_a, c0->self, as, mac);
    CU_ASSERT(memcmp(f.body, mac, 32) == 0);
    return fd;
}

static bool a_inbound_from_1(struct harness *h)
{
    return stats(h, 0, 1).inbound_up;
}

static bool a_got_one(struct harness *h)
{
    return h->obs[0].ngot >= 1;
}

static void test_raw_client_handshake_frames_split_and_malformed(void)
{
    struct harness h;
    struct peer_config c0;
    struct buf b = BUF_INIT;
    struct tpc_msg m = sample_msg(TPC_MSG_PREPARE);
    int fd;

    h_init(&h);
    /* A lone net 0; replica 1 is the raw client (net 0's dials to port 0 fail). */
    base_config(&c0, &h.obs[0], 0, 2, secret_a, 5);
    net_new(&h, 0, &c0);
    peer_net_start(h.obs[0].net);
    fd = raw_handshake(&h, &c0, 1, 5);
    CU_ASSERT_FATAL(run_until(&h, a_inbound_from_1));

    /* A frame split into single bytes, then two frames in one send. */
    m.epoch = 5;
    m.txid = 1;
    CU_ASSERT_EQUAL_FATAL(peer_msg_encode(&b, &m), 0);
    for (size_t i = 0; i < b.len; i++) {
        raw_send(fd, b.data + i, 1);
        uv_run(&h.loop, UV_RUN_NOWAIT);
    }
    CU_ASSERT_FATAL(run_until(&h, a_got_one));
    assert_msg_equal(&h.obs[0].got[0].m, &m);
    CU_ASSERT_EQUAL(h.obs[0].got[0].m.from, 1);
    b.len = 0;
    m.txid = 2;
    CU_ASSERT_EQUAL(peer_msg_encode(&b, &m), 0);
    m.txid = 3;
    CU_ASSERT_EQUAL(peer_msg_encode(&b, &m), 0);
    raw_send(fd, b.data, b.len);
    for (int i = 0; i < STEP_MAX && h.obs[0].ngot < 3; i++)
        uv_run(&h.loop, UV_RUN_ONCE);
    CU_ASSERT_EQUAL_FATAL(h.obs[0].ngot, 3);
    CU_ASSERT_EQUAL(h.obs[0].got[2].m.txid, 3);
    CU_ASSERT_EQUAL(stats(&h, 0, 1).frames_in, 3);

    /* A frame with a bad checksum closes the link. */
    b.len = 0;
    CU_ASSERT_EQUAL(peer_msg_encode(&b, &m), 0);
    b.data[b.len - 1] ^= 1;
    raw_send(fd, b.data, b.len);
    CU_ASSERT(raw_wait_closed(&h, fd));
    close(fd);
    CU_ASSERT_EQUAL(stats(&h, 0, 1).bad_frames, 1);
    CU_ASSERT_FALSE(stats(&h, 0, 1).inbound_up);
    CU_ASSERT_EQUAL(h.obs[0].ngot, 3);

    /* A valid frame of another epoch, after the handshake, too. */
    fd = raw_handshake(&h, &c0, 1, 5);
    CU_ASSERT_FATAL(run_until(&h, a_inbound_from_1));
    b.len = 0;
    m.epoch = 6;
    CU_ASSERT_EQUAL(peer_msg_encode(&b, &m), 0);
    raw_send(fd, b.data, b.len);
    CU_ASSERT(raw_wait_closed(&h, fd));
    close(fd);
    CU_ASSERT_EQUAL(stats(&h, 0, 1).epoch_mismatches, 1);
    CU_ASSERT_EQUAL(h.obs[0].ngot, 3);

    /* A handshake frame after the handshake. */
    fd = raw_handshake(&h, &c0, 1, 5);
    CU_ASSERT_FATAL(run_until(&h, a_inbound_from_1));
    char junk[32] = {0}, frame[64];
    raw_send(
        fd, frame,
        mk_frame(frame, PEER_FRAME_VERSION, PEER_FRAME_AUTH, 0, 5, junk, sizeof(junk)));
    CU_ASSERT(raw_wait_closed(&h, fd));
    close(fd);
    CU_ASSERT_EQUAL(stats(&h, 0, 1).bad_frames, 2);

    /* A HELLO naming an unknown replica, or ourselves: refused before AUTH. */
    for (uint32_t id = 0; id < 3; id += 2) {
        char out[128], body[44] = {0};
        fd = raw_connect(peer_net_port(h.obs[0].net));
        util_put_le32(body, id);
        util_put_le64(body + 4, peer_config_hash(c0.replicas, c0.n));
        raw_send(fd, out,
                 mk_frame(out, PEER_FRAME_VERSION, PEER_FRAME_HELLO, 0, 5, body,
                          sizeof(body)));
        CU_ASSERT(raw_wait_closed(&h, fd));
        close(fd);
    }
    struct peer_net_stats ns;
    peer_get_net_stats(h.obs[0].net, &ns);
    CU_ASSERT(ns.anon_failures >= 2);
    CU_ASSERT(ns.accepts >= 5);
    buf_free(&b);
    h_fini(&h);
}

static void test_raw_garbage_closes_only_that_connection(void)
{
    struct harness h;
    struct peer_net_stats ns;
    struct tpc_msg m = sample_msg(TPC_MSG_ABORT);
    char junk[64], hello[64], body[44];
    int fd;

    h_init(&h);
    pair_up(&h, 0);
    /* An absurd length: refused from the first 4 bytes. */
    fd = raw_connect(peer_net_port(h.obs[0].net));
    memset(junk, 0xff, sizeof(junk));
    raw_send(fd, junk, sizeof(junk));
    CU_ASSERT(raw_wait_closed(&h, fd));
    close(fd);
    /* A plausible length with a bad checksum. */
    fd = raw_connect(peer_net_port(h.obs[0].net));
    memset(body, 0, sizeof(body));
    util_put_le32(body, 1);
    CU_ASSERT_EQUAL_FATAL(
        mk_frame(hello, PEER_FRAME_VERSION, PEER_FRAME_HELLO, 0, 5, body, sizeof(body)),
        sizeof(hello));
    hello[30] ^= 1;
    raw_send(fd, hello, sizeof(hello));
    CU_ASSERT(raw_wait_closed(&h, fd));
    close(fd);
    /* Silence, then a close mid-frame. */
    fd = raw_connect(peer_net_port(h.obs[0].net));
    raw_send(fd, hello, 10);
    for (int i = 0; i < 50; i++)
        uv_run(&h.loop, UV_RUN_ONCE);
    close(fd);

    peer_get_net_stats(h.obs[0].net, &ns);
    CU_ASSERT(ns.anon_failures >= 2);
    CU_ASSERT(ns.accepts >= 3);
    /* The links were not disturbed. */
    CU_ASSERT(both_up(&h));
    CU_ASSERT_EQUAL(h.obs[0].downs[1] + h.obs[1].downs[0], 0);
    m.to = 1;
    CU_ASSERT_EQUAL(peer_send(h.obs[0].net, &m), 0);
    m.to = 0;
    CU_ASSERT_EQUAL(peer_send(h.obs[1].net, &m), 0);
    want_got = 1;
    CU_ASSERT(run_until(&h, both_got_want));
    CU_ASSERT_EQUAL(stats(&h, 0, 1).bad_frames, 0);
    h_fini(&h);
}

/* A client speaking the text protocol at the peer port is told, in one
 * memcached-style line, which port is the clients'; a replica's link is
 * not disturbed. */
static void test_text_client_at_peer_port_told_the_client_port(void)
{
    struct harness h;
    struct peer_config c0;
    const char *cmds[] = {"get a\r\n", "version\r\n", "STATS\r\n"};
    char got[256];
    size_t n;
    int fd;

    h_init(&h);
    base_config(&c0, &h.obs[0], 0, 2, secret_a, 5);
    c0.client_port = 11211;
    net_new(&h, 0, &c0);
    peer_net_start(h.obs[0].net);
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
        fd = raw_connect(peer_net_port(h.obs[0].net));
        raw_send(fd, cmds[i], strlen(cmds[i]));
        n = raw_read_all(&h, fd, got, sizeof(got) - 1);
        got[n] = '\0';
        CU_ASSERT_STRING_EQUAL(
            got, "SERVER_ERROR this is the replicas' port; clients use port "
                 "11211\r\n");
        close(fd);
    }
    /* A replica still gets in afterwards. */
    fd = raw_handshake(&h, &c0, 1, 5);
    CU_ASSERT(run_until(&h, a_inbound_from_1));
    close(fd);
    h_fini(&h);

    /* Without a client port to name. */
    h_init(&h);
    base_config(&c0, &h.obs[0], 0, 2, secret_a, 5);
    net_new(&h, 0, &c0);
    peer_net_start(h.obs[0].net);
    fd = raw_connect(peer_net_port(h.obs[0].net));
    raw_send(fd, "get a\r\n", 7);
    n = raw_read_all(&h, fd, got, sizeof(got) - 1);
    got[n] = '\0';
    CU_ASSERT_STRING_EQUAL(
        got, "SERVER_ERROR this is the replicas' port, not a client port\r\n");
    close(fd);
    h_fini(&h);
}

/* A listening socket on a kernel-picked 127.0.0.1 port; sets *port. */
static int raw_listen(int *port)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    CU_ASSERT_FATAL(fd >= 0);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CU_ASSERT_EQUAL_FATAL(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    CU_ASSERT_EQUAL_FATAL(listen(fd, 4), 0);
    CU_ASSERT_EQUAL_FATAL(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    *port = ntohs(sa.sin_port);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

/* Accepts one connection on lfd, running the loop meanwhile; -1 if none. */
static int raw_accept(struct harness *h, int lfd)
{
    for (int i = 0; i < STEP_MAX; i++) {
        int fd = accept(lfd, NULL, NULL);
        if (fd >= 0) {
            fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
            return fd;
        }
        uv_run(&h->loop, UV_RUN_ONCE);
    }
    return -1;
}

static bool last_error_has(struct harness *h, const char *what)
{
    struct peer_link_stats st;

    peer_get_link_stats(h->obs[0].net, 1, &st);
    return strstr(st.last_error, what) != NULL;
}

static bool refused_hello_logged(struct harness *h)
{
    return last_error_has(h, "it refused our HELLO");
}

/* A real dialer speaks first, with a fresh nonce on every connection; an
 * acceptor that hangs up on its HELLO is reported as having refused it. */
static void test_dialer_speaks_first_fresh_nonce(void)
{
    struct harness h;
    struct peer_config c0;
    unsigned char nonces[3][32];
    int lfd, port;

    h_init(&h);
    lfd = raw_listen(&port);
    base_config(&c0, &h.obs[0], 0, 2, secret_a, 5);
    net_new(&h, 0, &c0);
    peer_net_set_port(h.obs[0].net, 1, port);
    peer_net_start(h.obs[0].net);
    for (int i = 0; i < 3; i++) {
        char hello[20 + 44];
        struct peer_frame f;
        int fd = raw_accept(&h, lfd);
        CU_ASSERT_FATAL(fd >= 0);
        /* We say nothing: the dialer's HELLO comes anyway. */
        CU_ASSERT_FATAL(raw_read(&h, fd, hello, sizeof(hello)));
        CU_ASSERT_EQUAL_FATAL(peer_frame_decode(hello, sizeof(hello), 1024, &f),
                              (long)sizeof(hello));
        CU_ASSERT_EQUAL(f.type, PEER_FRAME_HELLO);
        CU_ASSERT_EQUAL(f.version, PEER_FRAME_VERSION);
        CU_ASSERT_EQUAL(util_get_le32(f.body), 0);
        CU_ASSERT_EQUAL(util_get_le64(f.body + 4), peer_config_hash(c0.replicas, c0.n));
        memcpy(nonces[i], f.body + 12, 32);
        for (int j = 0; j < i; j++)
            CU_ASSERT(memcmp(nonces[i], nonces[j], 32) != 0);
        close(fd); /* refused: the dialer says so, and dials again */
        CU_ASSERT(run_until(&h, refused_hello_logged));
    }
    close(lfd);
    h_fini(&h);
}

/* Failures of connections that name no replica are logged at most 5 lines
 * a second above debug, however their causes alternate. */
static void test_unnamed_failures_rate_limited(void)
{
    struct harness h;
    struct peer_config c0;
    char path[] = "/tmp/tpckv-peer-log-XXXXXX", line[512];
    int lfd = mkstemp(path), n = 0;
    uint64_t first_s, last_s;
    FILE *f;

    CU_ASSERT_FATAL(lfd >= 0);
    h_init(&h);
    log_set_level(LOG_LEVEL_INFO);
    log_set_fd(lfd);
    base_config(&c0, &h.obs[0], 0, 2, secret_a, 5);
    c0.client_port = 11211;
    net_new(&h, 0, &c0);
    peer_net_start(h.obs[0].net);
    first_s = util_mono_ns() / 1000000000u; /* the limit's clock */
    for (int i = 0; i < 40; i++) {
        int fd = raw_connect(peer_net_port(h.obs[0].net));
        char junk[8];
        if (i % 2) {
            raw_send(fd, "get a\r\n", 7);
        } else {
            memset(junk, 0xff, sizeof(junk));
            raw_send(fd, junk, sizeof(junk));
        }
        CU_ASSERT(raw_wait_closed(&h, fd));
        close(fd);
    }
    last_s = util_mono_ns() / 1000000000u;
    log_set_level(LOG_LEVEL_ERROR);
    f = fdopen(dup(lfd), "r");
    CU_ASSERT_FATAL(f != NULL);
    rewind(f);
    while (fgets(line, sizeof(line), f))
        n += strstr(line, "connection from") != NULL;
    fclose(f);
    /* 40 failures; 5 lines in each second the run spanned at most. */
    CU_ASSERT(n >= 1);
    CU_ASSERT(n <= 5 * (int)(last_s - first_s + 1));
    if (n > 5 * (int)(last_s - first_s + 1))
        fprintf(stderr, "\n  %d lines in %llu s\n", n,
                (unsigned long long)(last_s - first_s + 1));
    h_fini(&h);
    close(lfd);
    unlink(path);
}

void unit_peer_register(void)
{
    CU_pSuite s = unit_suite("peer");

    unit_test(s, "parse replicas good", test_parse_replicas_good);
    unit_test(s, "a text client at the peer port is told the client port",
              test_text_client_at_peer_port_told_the_client_port);
    unit_test(s,
              "the dialer speaks first, a fresh nonce each time; a refused HELLO is said",
              test_dialer_speaks_first_fresh_nonce);
    unit_test(s, "failures of unnamed connections: at most 5 log lines a second",
              test_unnamed_failures_rate_limited);
    unit_test(s, "parse replicas bad, each case named", test_parse_replicas_bad);
    unit_test(s, "config hash same list same, any difference differs", test_config_hash);
    unit_test(s, "codec round trip every type", test_codec_round_trip_every_type);
    unit_test(s, "decode every prefix is incomplete",
              test_decode_every_prefix_is_incomplete);
    unit_test(s, "decode rejects bad crc, length, version, flags",
              test_decode_rejects_bad_frames);
    unit_test(s, "decode rejects bad messages of every type",
              test_decode_rejects_bad_messages);
    unit_test(s, "encode rejects invalid messages", test_encode_rejects_invalid_messages);
    unit_test(s, "links come up and every type flows both ways",
              test_links_come_up_and_every_type_flows_both_ways);
    unit_test(s, "clock probes measure the offset", test_clock_probes_measure_the_offset);
    unit_test(s, "many messages in one turn are coalesced",
              test_many_messages_in_one_turn_are_coalesced);
    unit_test(s, "callee may send and close from on_msg",
              test_callee_may_send_and_close_from_on_msg);
    unit_test(s, "send errors", test_send_errors);
    unit_test(s, "new refuses bad config and busy port",
              test_new_refuses_bad_config_and_busy_port);
    unit_test(s, "wrong secret refused and logged once",
              test_wrong_secret_refused_and_logged_once);
    unit_test(s, "different epoch refused", test_different_epoch_refused);
    unit_test(s, "different replica list refused", test_different_replica_list_refused);
    unit_test(s, "peer restart goes down and reconnects",
              test_peer_restart_goes_down_and_reconnects);
    unit_test(s, "output limit closes the link", test_output_limit_closes_the_link);
    unit_test(s, "raw client: handshake, split frames, malformed after auth",
              test_raw_client_handshake_frames_split_and_malformed);
    unit_test(s, "raw garbage closes only that connection",
              test_raw_garbage_closes_only_that_connection);
}
