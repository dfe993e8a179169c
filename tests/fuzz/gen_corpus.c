/*
 * gen_corpus.c - writes the seed inputs of the fuzz targets with the real
 * encoders (peer_msg_encode, wal_op_encode, wal_record_encode,
 * wal_segment_header_encode, proto_udp_encode), so seeds start the fuzzers
 * from valid traffic of every kind: every command of the text protocol
 * (noreply, multi-get, cas, pipelined), UDP frames, every 2PC message, log
 * segments with every record and operation type.
 *
 *   gen_corpus DIR   writes DIR/<target>/seed-<name> (make fuzz-seeds)
 */
#include "buf.h"
#include "crc32c.h"
#include "limits.h"
#include "peer.h"
#include "proto.h"
#include "tpc.h"
#include "util.h"
#include "wal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *root;

static void put(const char *target, const char *name, const void *data, size_t n)
{
    char path[1024];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", root, target);
    if (mkdir(path, 0777) < 0 && errno != EEXIST) {
        perror(path);
        exit(1);
    }
    snprintf(path, sizeof(path), "%s/%s/seed-%s", root, target, name);
    if ((f = fopen(path, "wb")) == NULL || fwrite(data, 1, n, f) != n || fclose(f) != 0) {
        perror(path);
        exit(1);
    }
}

/* ---- text protocol and UDP ------------------------------------------------ */

static const struct {
    const char *name, *text;
} requests[] = {
    {"set", "set foo 5 0 3\r\nbar\r\n"},
    {"set-noreply", "set foo 0 100 3 noreply\r\nbar\r\n"},
    {"set-lf-only", "set k 0 0 1\nx\r\n"},
    {"add", "add foo 0 0 1\r\nx\r\n"},
    {"replace", "replace foo 0 2592001 2\r\nxy\r\n"},
    {"append", "append foo 0 0 2\r\nab\r\n"},
    {"prepend-noreply", "prepend foo 0 0 2 noreply\r\nab\r\n"},
    {"cas", "cas foo 0 0 3 12345\r\nnew\r\n"},
    {"cas-noreply", "cas foo 1 -1 3 18446744073709551615 noreply\r\nnew\r\n"},
    {"get", "get foo\r\n"},
    {"get-multi", "get a bb ccc  dddd\r\n"},
    {"gets-multi", "gets a b c\r\n"},
    {"gat", "gat 100 foo bar\r\n"},
    {"gats", "gats 0 foo\r\n"},
    {"delete", "delete foo\r\n"},
    {"delete-0", "delete foo 0\r\n"},
    {"delete-noreply", "delete foo noreply\r\n"},
    {"incr", "incr n 5\r\n"},
    {"decr-noreply", "decr n 18446744073709551615 noreply\r\n"},
    {"touch", "touch foo 10\r\n"},
    {"touch-noreply", "touch foo -1 noreply\r\n"},
    {"flush_all", "flush_all\r\n"},
    {"flush_all-delay", "flush_all 10\r\n"},
    {"flush_all-noreply", "flush_all 0 noreply\r\n"},
    {"version", "version\r\n"},
    {"verbosity", "verbosity 1 noreply\r\n"},
    {"stats", "stats\r\n"},
    {"stats-arg", "stats items\r\n"},
    {"keys", "keys\r\n"},
    {"keys-prefix", "keys user:\r\n"},
    {"snapshot", "snapshot\r\n"},
    {"quit", "quit\r\n"},
    {"pipeline",
     "set a 0 0 1\r\n1\r\nget a b\r\nincr a 1\r\ndelete b noreply\r\ngets a\r\nset b 0 0 5\r\nhal"},
    {"too-large", "set big 0 0 200\r\n"},
    {"bad-chunk", "set k 0 0 2\r\nabc\r\nget k\r\n"},
    {"bad-bytes", "set k 0 0 -1\r\nget k\r\n"},
    {"bad-line-swallowed", "set k x 0 2\r\nab\r\nget k\r\n"},
    {"unknown", "bogus\r\n\r\n   \r\n"},
    {"http", "GET / HTTP/1.1\r\nHost: x\r\n\r\n"},
    {"key-control", "get a\x01 b\r\n"},
};

static void gen_proto(void)
{
    for (size_t i = 0; i < ARRAY_SIZE(requests); i++)
        put("fuzz_proto", requests[i].name, requests[i].text, strlen(requests[i].text));

    /* Retrieval lines at the --max-line 2048 edge, and a plain line past it. */
    static char line[2100];
    for (size_t n = 2047; n <= 2049; n++) {
        char name[32];
        memcpy(line, "get", 3);
        for (size_t i = 3; i < n; i += 2)
            memcpy(line + i, " k", 2);
        line[n] = '\r';
        line[n + 1] = '\n';
        snprintf(name, sizeof(name), "get-line-%zu", n);
        put("fuzz_proto", name, line, n + 2);
    }
    /* A long get line after many leading spaces. */
    memset(line, ' ', 2090);
    for (size_t i = 120; i + 2 < 2090; i += 2)
        line[i] = 'k';
    memcpy(line + 110, "get", 3);
    memcpy(line + 2090, "\r\n", 2);
    put("fuzz_proto", "get-line-leading-spaces", line, 2092);
    memset(line, 'x', sizeof(line));
    memcpy(line, "set ", 4);
    put("fuzz_proto", "line-too-long", line, sizeof(line));
}

static void gen_udp(void)
{
    static const size_t pick[] = {0, 1, 7, 9, 10, 14, 19, 23, 25, 29, 31, 32, 33};
    char d[512];
    struct proto_udp_hdr h = {.req_id = 0x1234, .seq = 0, .total = 1};

    for (size_t i = 0; i < ARRAY_SIZE(pick); i++) {
        const char *t = requests[pick[i]].text;
        proto_udp_encode(d, &h);
        memcpy(d + LIMIT_UDP_HEADER_BYTES, t, strlen(t));
        put("fuzz_udp", requests[pick[i]].name, d, LIMIT_UDP_HEADER_BYTES + strlen(t));
        h.req_id++;
    }
    static const char multi[] = "get a\r\nset b 0 0 1 noreply\r\nb\r\ngets a b\r\nquit\r\nget c\r\n";
    proto_udp_encode(d, &h);
    memcpy(d + LIMIT_UDP_HEADER_BYTES, multi, sizeof(multi) - 1);
    put("fuzz_udp", "several", d, LIMIT_UDP_HEADER_BYTES + sizeof(multi) - 1);
    /* Refused frames: the second of two datagrams, and a short one. */
    struct proto_udp_hdr second = {.req_id = 9, .seq = 1, .total = 2};
    proto_udp_encode(d, &second);
    memcpy(d + LIMIT_UDP_HEADER_BYTES, "get a\r\n", 7);
    put("fuzz_udp", "seq-1-of-2", d, LIMIT_UDP_HEADER_BYTES + 7);
    put("fuzz_udp", "short", d, 5);
}

/* ---- operations, as a coordinator encodes a change ------------------------- */

static void add_op(struct buf *b, const struct wal_op *op)
{
    if (buf_reserve(b, wal_op_size(op)) < 0)
        exit(1);
    b->len += wal_op_encode(b->data + b->len, op);
}

#define NOW 1700000000000LL

/* CHECK(key, expected) then the effect: what txn_encode_change writes. */
static uint32_t ops_put(struct buf *b, const char *key, const char *val, uint64_t expected,
                        uint64_t cas)
{
    struct wal_op check = {.kind = WAL_OP_CHECK, .key = key, .nkey = strlen(key),
                           .cas = expected, .mtime_ms = NOW};
    struct wal_op put_op = {.kind = WAL_OP_PUT, .key = key, .nkey = strlen(key), .value = val,
                            .nvalue = strlen(val), .flags = 5, .exptime_ms = NOW + 60000,
                            .mtime_ms = NOW, .cas = cas};
    add_op(b, &check);
    add_op(b, &put_op);
    return 2;
}

static uint32_t ops_kind(struct buf *b, enum wal_op_kind kind, const char *key)
{
    struct wal_op check = {.kind = WAL_OP_CHECK, .key = key, .nkey = strlen(key),
                           .cas = 0, .mtime_ms = NOW};
    struct wal_op op = {.kind = kind, .key = key, .nkey = strlen(key),
                        .exptime_ms = kind == WAL_OP_TOUCH ? NOW + 1000 : 0};
    add_op(b, &check);
    add_op(b, &op);
    return 2;
}

static uint32_t ops_flush(struct buf *b, int64_t flush_at)
{
    struct wal_op op = {.kind = WAL_OP_FLUSH, .flush_at_ms = flush_at, .mtime_ms = NOW};
    add_op(b, &op);
    return 1;
}

/* ---- peer frames -------------------------------------------------------------- */

static void msg(struct buf *out, const struct tpc_msg *m)
{
    if (peer_msg_encode(out, m) < 0) {
        fprintf(stderr, "gen_corpus: peer_msg_encode refused a message\n");
        exit(1);
    }
}

static void gen_peer(void)
{
    struct buf ops = BUF_INIT, f = BUF_INIT, all = BUF_INIT;
    uint32_t nops;
    const uint64_t epoch = 3, txid = (77u << 8) | 2;

    nops = ops_put(&ops, "key", "value", 0, txid);
    struct tpc_msg prep = {.type = TPC_MSG_PREPARE, .epoch = epoch, .txid = txid, .coord = 2,
                           .nops = nops, .ops = ops.data, .nbytes = (uint32_t)ops.len};
    msg(&f, &prep);
    put("fuzz_peer", "prepare-put", f.data, f.len);
    buf_append(&all, f.data, f.len);

    f.len = ops.len = 0;
    nops = ops_kind(&ops, WAL_OP_DEL, "gone");
    nops += ops_kind(&ops, WAL_OP_TOUCH, "key");
    nops += ops_put(&ops, "k2", "v2", 0, txid);
    prep.nops = nops;
    prep.ops = ops.data;
    prep.nbytes = (uint32_t)ops.len;
    prep.txid = txid + 0x100;
    msg(&f, &prep);
    put("fuzz_peer", "prepare-del-touch-put", f.data, f.len);

    f.len = ops.len = 0;
    prep.nops = ops_flush(&ops, NOW + 5000);
    prep.ops = ops.data;
    prep.nbytes = (uint32_t)ops.len;
    prep.txid = txid + 0x201;
    msg(&f, &prep);
    put("fuzz_peer", "prepare-flush", f.data, f.len);

    static const struct {
        const char *name;
        struct tpc_msg m;
    } small[] = {
        {"vote-yes", {.type = TPC_MSG_VOTE, .vote = 1, .txid = (77u << 8) | 2, .coord = 2}},
        {"vote-no", {.type = TPC_MSG_VOTE, .vote = 0, .reason = TPC_R_CONFLICT, .coord = 2}},
        {"commit", {.type = TPC_MSG_COMMIT, .txid = (77u << 8) | 2, .coord = 2}},
        {"abort", {.type = TPC_MSG_ABORT, .reason = TPC_R_TIMEOUT, .coord = 2}},
        {"ack", {.type = TPC_MSG_ACK, .txid = (77u << 8) | 2, .coord = 2}},
        {"query", {.type = TPC_MSG_QUERY, .txid = (77u << 8) | 2, .coord = 2}},
        {"answer", {.type = TPC_MSG_ANSWER, .outcome = TPC_O_COMMITTED, .coord = 15}},
    };
    for (size_t i = 0; i < ARRAY_SIZE(small); i++) {
        struct tpc_msg m = small[i].m;
        m.epoch = epoch;
        f.len = 0;
        msg(&f, &m);
        put("fuzz_peer", small[i].name, f.data, f.len);
        buf_append(&all, f.data, f.len);
    }
    /* A link's stream: several frames, the last one cut short. */
    put("fuzz_peer", "stream", all.data, all.len - 7);

    /* A HELLO (handshake) frame: header, id, config hash, nonce. */
    char hello[PEER_FRAME_HEADER_BYTES + PEER_HELLO_BODY_BYTES] = {0};
    util_put_le32(hello, sizeof(hello) - 4);
    hello[8] = PEER_FRAME_VERSION;
    hello[9] = (char)PEER_FRAME_HELLO;
    util_put_le64(hello + 12, epoch);
    util_put_le32(hello + 20, 2);
    util_put_le64(hello + 24, 0x0123456789abcdefull);
    memset(hello + 32, 0x5a, PEER_NONCE_BYTES);
    util_put_le32(hello + 4, crc32c(0, hello + 8, sizeof(hello) - 8));
    put("fuzz_peer", "hello", hello, sizeof(hello));

    buf_free(&ops);
    buf_free(&f);
    buf_free(&all);
}

/* ---- log segments -------------------------------------------------------------- */

struct seg {
    struct buf b;
    uint64_t lsn;
};

static void seg_start(struct seg *s, uint64_t first_lsn)
{
    s->b.len = 0;
    s->lsn = first_lsn;
    if (buf_reserve(&s->b, WAL_SEGMENT_HEADER_BYTES) < 0)
        exit(1);
    wal_segment_header_encode(s->b.data, first_lsn);
    s->b.len = WAL_SEGMENT_HEADER_BYTES;
}

static void seg_record(struct seg *s, uint8_t type, const void *payload, size_t n)
{
    if (buf_reserve(&s->b, WAL_RECORD_HEADER_BYTES + n) < 0)
        exit(1);
    s->b.len += wal_record_encode(s->b.data + s->b.len, type, s->lsn++, payload, n);
}

/* A WRITE or PREPARE payload: the txn head, then ops. */
static void seg_txn(struct seg *s, uint8_t type, uint64_t txid, uint32_t nops,
                    const struct buf *ops)
{
    struct buf p = BUF_INIT;
    struct wal_txn t = {.txid = txid, .epoch = 1, .coordinator = (uint32_t)(txid & 0xff),
                        .nops = nops};

    if (buf_reserve(&p, WAL_TXN_BYTES + ops->len) < 0)
        exit(1);
    wal_txn_encode(p.data, &t);
    if (ops->len)
        memcpy(p.data + WAL_TXN_BYTES, ops->data, ops->len);
    p.len = WAL_TXN_BYTES + ops->len;
    seg_record(s, type, p.data, p.len);
    buf_free(&p);
}

static void seg_decision(struct seg *s, uint8_t type, uint64_t txid)
{
    char p[16];

    util_put_le64(p, txid);
    util_put_le64(p + 8, 1);
    seg_record(s, type, p, sizeof(p));
}

static void gen_wal(void)
{
    struct seg s = {BUF_INIT, 0};
    struct buf ops = BUF_INIT;
    uint32_t nops;

    seg_start(&s, 1);
    put("fuzz_wal", "empty-segment", s.b.data, s.b.len);

    /* A standalone server's writes: one op per WRITE, no CHECKs. */
    struct wal_op p1 = {.kind = WAL_OP_PUT, .key = "a", .nkey = 1, .value = "hello",
                        .nvalue = 5, .flags = 1, .mtime_ms = NOW, .cas = 1};
    struct wal_op d1 = {.kind = WAL_OP_DEL, .key = "b", .nkey = 1};
    struct wal_op t1 = {.kind = WAL_OP_TOUCH, .key = "a", .nkey = 1, .exptime_ms = NOW + 9};
    ops.len = 0;
    add_op(&ops, &p1);
    seg_txn(&s, WAL_REC_WRITE, 1, 1, &ops);
    ops.len = 0;
    add_op(&ops, &d1);
    add_op(&ops, &t1);
    seg_txn(&s, WAL_REC_WRITE, 2, 2, &ops);
    ops.len = 0;
    ops_flush(&ops, NOW + 100000);
    seg_txn(&s, WAL_REC_WRITE, 3, 1, &ops);
    ops.len = 0;
    ops_flush(&ops, NOW - 5);
    seg_txn(&s, WAL_REC_WRITE, 4, 1, &ops);
    put("fuzz_wal", "writes", s.b.data, s.b.len);
    /* The same, torn in the last record, and with a damaged record first. */
    put("fuzz_wal", "writes-torn", s.b.data, s.b.len - 3);
    s.b.data[WAL_SEGMENT_HEADER_BYTES + 25] ^= 1;
    put("fuzz_wal", "writes-corrupt", s.b.data, s.b.len);

    /* A replica's log (self = 1): prepared, committed, ended, aborted, open. */
    seg_start(&s, 100);
    ops.len = 0;
    nops = ops_put(&ops, "x", "1", 0, (5u << 8) | 1);
    seg_txn(&s, WAL_REC_PREPARE, (5u << 8) | 1, nops, &ops);
    seg_decision(&s, WAL_REC_COMMIT, (5u << 8) | 1);
    seg_decision(&s, WAL_REC_END, (5u << 8) | 1);
    ops.len = 0;
    nops = ops_kind(&ops, WAL_OP_DEL, "x");
    seg_txn(&s, WAL_REC_PREPARE, (6u << 8) | 2, nops, &ops);
    seg_decision(&s, WAL_REC_ABORT, (6u << 8) | 2);
    ops.len = 0;
    nops = ops_kind(&ops, WAL_OP_TOUCH, "x");
    nops += ops_put(&ops, "y", "22", 0, (7u << 8) | 2);
    seg_txn(&s, WAL_REC_PREPARE, (7u << 8) | 2, nops, &ops);
    seg_decision(&s, WAL_REC_COMMIT, (8u << 8) | 1);
    put("fuzz_wal", "two-phase", s.b.data, s.b.len);

    /* Record types a log does not hold (snapshot body and trailer). */
    seg_start(&s, 7);
    ops.len = 0;
    add_op(&ops, &p1);
    seg_record(&s, WAL_REC_SNAP_ITEM, ops.data, ops.len);
    seg_record(&s, WAL_REC_SNAP_END, "", 0);
    put("fuzz_wal", "snapshot-records", s.b.data, s.b.len);

    buf_free(&ops);
    buf_free(&s.b);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: gen_corpus DIR\n");
        return 2;
    }
    root = argv[1];
    if (mkdir(root, 0777) < 0 && errno != EEXIST) {
        perror(root);
        return 1;
    }
    gen_proto();
    gen_udp();
    gen_peer();
    gen_wal();
    return 0;
}
