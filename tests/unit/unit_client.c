/*
 * unit_client.c - lib/client: reply parser, UDP reassembly, key checks, and
 * whole exchanges against an in-process loopback "server".
 *
 * The parser is fed every prefix of every reply, each copied into a buffer of
 * exactly that size so that ASan catches any read past the end. Loopback
 * exchanges need no thread: the server's reply is written into the socket
 * before client_request() runs, and it reads it from its receive buffer.
 * Nothing asserts on timing.
 */
#include "unit.h"

#include "buf.h"
#include "client.h"
#include "limits.h"
#include "log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define LIT(s) s, sizeof(s) - 1

/* Parses a private copy of buf[0..n) sized exactly n. Returns the parser's
 * answer; the copy is freed, so only r's scalar fields may be looked at. */
static int parse_copy(struct client_reply *r, const char *buf, size_t n)
{
    char *p = malloc(n ? n : 1);
    int rc;

    memcpy(p, buf, n);
    rc = client_reply_parse(r, p, n);
    free(p);
    return rc;
}

/* Two parses of the same buffer gave the same reply. */
static void check_same(const struct client_reply *a, const struct client_reply *b)
{
    CU_ASSERT_EQUAL(a->type, b->type);
    CU_ASSERT_EQUAL(a->len, b->len);
    CU_ASSERT_PTR_EQUAL(a->line, b->line);
    CU_ASSERT_EQUAL(a->line_len, b->line_len);
    CU_ASSERT_PTR_EQUAL(a->msg, b->msg);
    CU_ASSERT_EQUAL(a->msg_len, b->msg_len);
    CU_ASSERT_EQUAL(a->number, b->number);
    CU_ASSERT_EQUAL_FATAL(a->n_items, b->n_items);
    for (size_t i = 0; i < a->n_items; i++) {
        const struct client_item *x = &a->items[i], *y = &b->items[i];
        CU_ASSERT_EQUAL(x->kind, y->kind);
        CU_ASSERT_PTR_EQUAL(x->line, y->line);
        CU_ASSERT_EQUAL(x->line_len, y->line_len);
        CU_ASSERT_PTR_EQUAL(x->key, y->key);
        CU_ASSERT_EQUAL(x->key_len, y->key_len);
        CU_ASSERT_PTR_EQUAL(x->data, y->data);
        CU_ASSERT_EQUAL(x->data_len, y->data_len);
        CU_ASSERT_EQUAL(x->flags, y->flags);
        CU_ASSERT_EQUAL(x->has_cas, y->has_cas);
        CU_ASSERT_EQUAL(x->cas, y->cas);
    }
}

/*
 * A reply arriving one byte at a time into one buffer, parsed with
 * client_reply_parse_more() after each byte: "need more" until the last
 * byte, then the same reply a from-scratch parse gives.
 */
static void check_incremental(const char *buf, size_t n)
{
    struct client_reply r, full;
    char *g = malloc(n);

    memcpy(g, buf, n);
    client_reply_init(&r);
    client_reply_init(&full);
    for (size_t k = 0; k < n; k++)
        CU_ASSERT_EQUAL(client_reply_parse_more(&r, g, k), 0);
    CU_ASSERT_EQUAL(client_reply_parse_more(&r, g, n), 1);
    CU_ASSERT_EQUAL(client_reply_parse(&full, g, n), 1);
    check_same(&r, &full);
    client_reply_free(&r);
    client_reply_free(&full);
    free(g);
}

/* Every proper prefix of a complete reply needs more, with a sane hint. */
static void check_prefixes(const char *buf, size_t n)
{
    struct client_reply r;

    client_reply_init(&r);
    for (size_t k = 0; k < n; k++) {
        int rc = parse_copy(&r, buf, k);
        CU_ASSERT_EQUAL(rc, 0);
        if (rc != 0)
            fprintf(stderr, "\nprefix %zu of %zu: rc %d\n", k, n, rc);
        CU_ASSERT(r.need > k);
        CU_ASSERT(r.need <= n);
    }
    /* Complete, and bytes after the reply are not looked at. */
    CU_ASSERT_EQUAL(parse_copy(&r, buf, n), 1);
    CU_ASSERT_EQUAL(r.len, n);
    {
        char *more = malloc(n + 7);
        memcpy(more, buf, n);
        memcpy(more + n, "STORED\r", 7);
        CU_ASSERT_EQUAL(client_reply_parse(&r, more, n + 7), 1);
        CU_ASSERT_EQUAL(r.len, n);
        free(more);
    }
    client_reply_free(&r);
}

struct shape {
    const char *bytes;
    size_t len;
    enum client_reply_type type;
    size_t n_items;
};

static const struct shape shapes[] = {
    {LIT("STORED\r\n"), CLIENT_REPLY_STORED, 0},
    {LIT("NOT_STORED\r\n"), CLIENT_REPLY_NOT_STORED, 0},
    {LIT("EXISTS\r\n"), CLIENT_REPLY_EXISTS, 0},
    {LIT("NOT_FOUND\r\n"), CLIENT_REPLY_NOT_FOUND, 0},
    {LIT("DELETED\r\n"), CLIENT_REPLY_DELETED, 0},
    {LIT("TOUCHED\r\n"), CLIENT_REPLY_TOUCHED, 0},
    {LIT("OK\r\n"), CLIENT_REPLY_OK, 0},
    {LIT("VERSION 1.6.18\r\n"), CLIENT_REPLY_VERSION, 0},
    {LIT("0\r\n"), CLIENT_REPLY_NUMBER, 0},
    {LIT("18446744073709551615\r\n"), CLIENT_REPLY_NUMBER, 0},
    {LIT("18446744073709551616\r\n"), CLIENT_REPLY_OTHER, 0},
    {LIT("ERROR\r\n"), CLIENT_REPLY_ERROR, 0},
    {LIT("ERROR unknown command\r\n"), CLIENT_REPLY_ERROR, 0},
    {LIT("CLIENT_ERROR bad data chunk\r\n"), CLIENT_REPLY_CLIENT_ERROR, 0},
    {LIT("SERVER_ERROR out of memory storing object\r\n"), CLIENT_REPLY_SERVER_ERROR, 0},
    {LIT("RESET\r\n"), CLIENT_REPLY_OTHER, 0},
    {LIT("STORED extra\r\n"), CLIENT_REPLY_OTHER, 0},
    {LIT("END\r\n"), CLIENT_REPLY_LIST, 0},
    {LIT("VALUE foo 5 3\r\nbar\r\nEND\r\n"), CLIENT_REPLY_LIST, 1},
    {LIT("VALUE foo 0 3 99\r\nbar\r\nEND\r\n"), CLIENT_REPLY_LIST, 1},
    {LIT("VALUE e 0 0\r\n\r\nEND\r\n"), CLIENT_REPLY_LIST, 1},
    {LIT("VALUE a 1 1\r\nx\r\nVALUE b 2 2\r\nyz\r\nVALUE a 1 1\r\nx\r\nEND\r\n"),
     CLIENT_REPLY_LIST, 3},
    {LIT("VALUE bin 0 16\r\n\r\nEND\r\n\0VALUE \r\n\r\nEND\r\n"), CLIENT_REPLY_LIST, 1},
    {LIT("VALUE a 0 1\r\nx\r\nSERVER_ERROR out of memory\r\n"), CLIENT_REPLY_SERVER_ERROR,
     1},
    {LIT("STAT pid 1\r\nSTAT version 1.6.18\r\nSTAT libevent 2.1.12 stable\r\nEND\r\n"),
     CLIENT_REPLY_LIST, 3},
    {LIT("STAT empty\r\nEND\r\n"), CLIENT_REPLY_LIST, 1},
    {LIT("KEY a\r\nKEY user:\xc3\xa9t\xc3\xa9\r\nEND\r\n"), CLIENT_REPLY_LIST, 2},
    {LIT("ITEM foo [3 b; 0 s]\r\nITEM bar [1 b; 0 s]\r\nEND\r\n"), CLIENT_REPLY_LIST, 2},
    {LIT("PREFIX a get 1 hit 1 set 0 del 0\r\nEND\r\n"), CLIENT_REPLY_LIST, 1},
};

static void test_shapes(void)
{
    struct client_reply r;

    client_reply_init(&r);
    CU_ASSERT_EQUAL(client_reply_parse(&r, NULL, 0), 0);
    CU_ASSERT_EQUAL(r.need, 1);
    for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++) {
        const struct shape *s = &shapes[i];
        check_prefixes(s->bytes, s->len);
        check_incremental(s->bytes, s->len);
        CU_ASSERT_EQUAL(client_reply_parse(&r, s->bytes, s->len), 1);
        CU_ASSERT_EQUAL(r.type, s->type);
        CU_ASSERT_EQUAL(r.n_items, s->n_items);
        if (r.type != s->type || r.n_items != s->n_items)
            fprintf(stderr, "\nshape %zu: type %s items %zu\n", i,
                    client_reply_type_name(r.type), r.n_items);
    }
    client_reply_free(&r);
}

static void test_fields(void)
{
    struct client_reply r;
    static const char vals[] =
        "VALUE a 1 1\r\nx\r\nVALUE b 4294967295 2 18446744073709551615"
        "\r\nyz\r\nEND\r\n";
    static const char stats[] =
        "STAT pid 1\r\nSTAT libevent 2.1.12 stable\r\nSTAT e\r\nEND\r\n";
    static const char bin[] = "VALUE bin 7 16\r\n\r\nEND\r\n\0VALUE \r\n\r\nEND\r\n";

    client_reply_init(&r);
    CU_ASSERT_EQUAL(client_reply_parse(&r, vals, sizeof(vals) - 1), 1);
    CU_ASSERT_EQUAL(r.n_items, 2);
    CU_ASSERT_EQUAL(r.items[0].kind, CLIENT_ITEM_VALUE);
    CU_ASSERT_EQUAL(r.items[0].key_len, 1);
    CU_ASSERT_EQUAL(r.items[0].key[0], 'a');
    CU_ASSERT_EQUAL(r.items[0].flags, 1);
    CU_ASSERT_FALSE(r.items[0].has_cas);
    CU_ASSERT_EQUAL(r.items[0].data_len, 1);
    CU_ASSERT_EQUAL(r.items[0].data[0], 'x');
    CU_ASSERT_EQUAL(r.items[1].flags, UINT32_MAX);
    CU_ASSERT_TRUE(r.items[1].has_cas);
    CU_ASSERT_EQUAL(r.items[1].cas, UINT64_MAX);
    CU_ASSERT_EQUAL(r.items[1].data_len, 2);
    CU_ASSERT_EQUAL(memcmp(r.items[1].data, "yz", 2), 0);
    CU_ASSERT_EQUAL(r.line_len, 3);
    CU_ASSERT_EQUAL(memcmp(r.line, "END", 3), 0);

    CU_ASSERT_EQUAL(client_reply_parse(&r, bin, sizeof(bin) - 1), 1);
    CU_ASSERT_EQUAL(r.len, sizeof(bin) - 1);
    CU_ASSERT_EQUAL(r.n_items, 1);
    CU_ASSERT_EQUAL(r.items[0].flags, 7);
    CU_ASSERT_EQUAL(r.items[0].data_len, 16);
    CU_ASSERT_EQUAL(memcmp(r.items[0].data, "\r\nEND\r\n\0VALUE \r\n", 16), 0);

    CU_ASSERT_EQUAL(client_reply_parse(&r, stats, sizeof(stats) - 1), 1);
    CU_ASSERT_EQUAL(r.n_items, 3);
    CU_ASSERT_EQUAL(r.items[1].kind, CLIENT_ITEM_STAT);
    CU_ASSERT_EQUAL(r.items[1].key_len, 8);
    CU_ASSERT_EQUAL(memcmp(r.items[1].key, "libevent", 8), 0);
    CU_ASSERT_EQUAL(r.items[1].data_len, 13);
    CU_ASSERT_EQUAL(memcmp(r.items[1].data, "2.1.12 stable", 13), 0);
    CU_ASSERT_EQUAL(r.items[2].key_len, 1);
    CU_ASSERT_EQUAL(r.items[2].data_len, 0);

    CU_ASSERT_EQUAL(client_reply_parse(&r, LIT("KEY user:1\r\nEND\r\n")), 1);
    CU_ASSERT_EQUAL(r.items[0].kind, CLIENT_ITEM_KEY);
    CU_ASSERT_EQUAL(r.items[0].key_len, 6);
    CU_ASSERT_EQUAL(memcmp(r.items[0].key, "user:1", 6), 0);

    CU_ASSERT_EQUAL(client_reply_parse(&r, LIT("VERSION 1.6.0-tpckv-0.3.0\r\n")), 1);
    CU_ASSERT_EQUAL(r.msg_len, 17);
    CU_ASSERT_EQUAL(memcmp(r.msg, "1.6.0-tpckv-0.3.0", 17), 0);

    CU_ASSERT_EQUAL(client_reply_parse(&r, LIT("12345\r\n")), 1);
    CU_ASSERT_EQUAL(r.type, CLIENT_REPLY_NUMBER);
    CU_ASSERT_EQUAL(r.number, 12345);

    CU_ASSERT_EQUAL(
        client_reply_parse(&r, LIT("CLIENT_ERROR bad command line format\r\n")), 1);
    CU_ASSERT_EQUAL(r.msg_len, 23);
    CU_ASSERT_EQUAL(memcmp(r.msg, "bad command line format", 23), 0);
    CU_ASSERT_EQUAL(client_reply_parse(&r, LIT("ERROR\r\n")), 1);
    CU_ASSERT_EQUAL(r.msg_len, 0);

    /* An error line after some values keeps them. */
    CU_ASSERT_EQUAL(
        client_reply_parse(&r, LIT("VALUE a 0 1\r\nx\r\nSERVER_ERROR oom\r\n")), 1);
    CU_ASSERT_EQUAL(r.type, CLIENT_REPLY_SERVER_ERROR);
    CU_ASSERT_EQUAL(r.n_items, 1);
    CU_ASSERT_EQUAL(r.msg_len, 3);
    client_reply_free(&r);
}

/* Longest accepted line: 2048 bytes plus CRLF; one more byte is malformed. */
static void test_long_lines(void)
{
    struct client_reply r;
    size_t max = LIMIT_LINE_BYTES_MAX;
    char *b = malloc(max + 3);

    client_reply_init(&r);
    memset(b, 'A', max + 3);
    memcpy(b + max, "\r\n", 2);
    CU_ASSERT_EQUAL(parse_copy(&r, b, max + 2), 1);
    CU_ASSERT_EQUAL(r.type, CLIENT_REPLY_OTHER);
    CU_ASSERT_EQUAL(parse_copy(&r, b, max + 1), 0);
    memset(b, 'A', max + 3);
    CU_ASSERT_EQUAL(parse_copy(&r, b, max + 1), 0);
    CU_ASSERT_EQUAL(parse_copy(&r, b, max + 2), -EPROTO);
    memcpy(b + max + 1, "\r\n", 2);
    CU_ASSERT_EQUAL(parse_copy(&r, b, max + 3), -EPROTO);
    free(b);
    client_reply_free(&r);
}

struct bad {
    const char *bytes;
    size_t len;
};

static const struct bad bads[] = {
    {LIT("STORED\n")}, /* bare LF */
    {LIT("\r\n")},     /* empty line */
    {LIT("\n")},
    {LIT("STO\rRED\r\n")}, /* control byte */
    {LIT("STO\0RED\r\n")},
    {LIT("VALUE foo 0\r\n")},                          /* no length */
    {LIT("VALUE foo x 3\r\nbar\r\nEND\r\n")},          /* flags */
    {LIT("VALUE foo 4294967296 3\r\nbar\r\nEND\r\n")}, /* flags > u32 */
    {LIT("VALUE foo 0 -3\r\n")},                       /* length */
    {LIT("VALUE foo 0 3x\r\n")},
    {LIT("VALUE foo 0 3 z\r\nbar\r\nEND\r\n")},   /* cas */
    {LIT("VALUE foo 0 3 1 2\r\nbar\r\nEND\r\n")}, /* too many fields */
    {LIT("VALUE  foo 0 3\r\nbar\r\nEND\r\n")},    /* double space */
    {LIT("VALUE foo 0 3 \r\nbar\r\nEND\r\n")},    /* trailing space */
    {LIT("VALUE foo 0 99999999999\r\n")},         /* absurd length */
    {LIT("VALUE foo 0 3\r\nbarX\r\nEND\r\n")},    /* data longer than said */
    {LIT("VALUE foo 0 4\r\nbar\r\nEND\r\n")},     /* data shorter than said */
    {LIT("VALUE foo 0 3\r\nbar\n\nEND\r\n")},     /* data not followed by CRLF */
    {LIT("VALUE foo 0 3\r\nbar\r\rEND\r\n")},
    {LIT("VALUE foo 0 3\r\nbar\r\nSTORED\r\n")},          /* one-line reply in a list */
    {LIT("VALUE foo 0 3\r\nbar\r\nSTAT a b\r\nEND\r\n")}, /* mixed list */
    {LIT("STAT a b\r\nKEY k\r\nEND\r\n")},
    {LIT("STAT\r\nEND\r\n")},
    {LIT("STAT  x\r\nEND\r\n")},
    {LIT("KEY a b\r\nEND\r\n")}, /* bad key */
    {LIT("KEY\r\nEND\r\n")},
    {LIT("VALUE \x01 0 1\r\nx\r\nEND\r\n")},
};

static void test_malformed(void)
{
    struct client_reply r;

    client_reply_init(&r);
    for (size_t i = 0; i < sizeof(bads) / sizeof(bads[0]); i++) {
        const struct bad *b = &bads[i];
        int rc = parse_copy(&r, b->bytes, b->len);
        CU_ASSERT_EQUAL(rc, -EPROTO);
        if (rc != -EPROTO)
            fprintf(stderr, "\nbad %zu: rc %d\n", i, rc);
        /* No prefix may be taken for a complete reply, parsed afresh or
         * resumed as bytes arrive. */
        for (size_t k = 0; k < b->len; k++) {
            rc = parse_copy(&r, b->bytes, k);
            CU_ASSERT(rc == 0 || rc == -EPROTO);
        }
        client_reply_free(&r);
        for (size_t k = 0; k <= b->len; k++) {
            rc = client_reply_parse_more(&r, b->bytes, k);
            CU_ASSERT(k == b->len ? rc == -EPROTO : (rc == 0 || rc == -EPROTO));
        }
    }
    client_reply_free(&r);
}

/* Random bytes, and random mutations of valid replies: never a crash, and a
 * complete answer never claims more bytes than it was given. */
static void test_garbage(void)
{
    struct client_reply r;
    uint32_t seed = 12345;
    char b[96];

    client_reply_init(&r);
    for (int iter = 0; iter < 20000; iter++) {
        const struct shape *s = &shapes[iter % (sizeof(shapes) / sizeof(shapes[0]))];
        size_t n = s->len < sizeof(b) ? s->len : sizeof(b);
        int rc;
        memcpy(b, s->bytes, n);
        for (int m = 0; m < 1 + iter % 3; m++) {
            seed = seed * 1103515245u + 12345u;
            b[(seed >> 8) % n] = (char)(seed >> 16);
        }
        rc = parse_copy(&r, b, n);
        CU_ASSERT(rc == 0 || rc == 1 || rc == -EPROTO);
        if (rc == 1)
            CU_ASSERT(r.len <= n);
    }
    client_reply_free(&r);
}

/* A long KEY list arriving in chunks into a buffer that grows (and so moves),
 * as client_request() reads it: every key is found once, in order. */
static void test_long_list(void)
{
    struct buf all = BUF_INIT, got = BUF_INIT;
    struct client_reply r;
    int rc = 0;

    for (int i = 0; i < 20000; i++)
        buf_printf(&all, "KEY key:%05d\r\n", i);
    buf_append_str(&all, "END\r\n");
    client_reply_init(&r);
    for (size_t off = 0; off < all.len; off += 777) {
        size_t n = all.len - off < 777 ? all.len - off : 777;
        buf_append(&got, all.data + off, n);
        rc = client_reply_parse_more(&r, got.data, got.len);
        CU_ASSERT(rc == (off + n == all.len ? 1 : 0));
    }
    CU_ASSERT_EQUAL(rc, 1);
    CU_ASSERT_EQUAL_FATAL(r.n_items, 20000);
    for (int i = 0; i < 20000; i += 997) {
        char k[16];
        snprintf(k, sizeof(k), "key:%05d", i);
        CU_ASSERT_EQUAL(r.items[i].key_len, 9);
        CU_ASSERT_EQUAL(memcmp(r.items[i].key, k, 9), 0);
    }
    client_reply_free(&r);
    buf_free(&all);
    buf_free(&got);
}

static void test_keys(void)
{
    char k[LIMIT_KEY_BYTES_MAX + 1];

    memset(k, 'k', sizeof(k));
    CU_ASSERT_TRUE(client_key_valid("a", 1));
    CU_ASSERT_TRUE(client_key_valid(k, LIMIT_KEY_BYTES_MAX));
    CU_ASSERT_FALSE(client_key_valid(k, LIMIT_KEY_BYTES_MAX + 1));
    CU_ASSERT_FALSE(client_key_valid("", 0));
    CU_ASSERT_FALSE(client_key_valid(NULL, 0));
    CU_ASSERT_FALSE(client_key_valid("a b", 3));
    CU_ASSERT_FALSE(client_key_valid("a\tb", 3));
    CU_ASSERT_FALSE(client_key_valid("a\r\n", 3));
    CU_ASSERT_FALSE(client_key_valid("a\0b", 3));
    CU_ASSERT_FALSE(client_key_valid("a\x7f", 2));
    CU_ASSERT_FALSE(client_key_valid("\x01", 1));
    CU_ASSERT_TRUE(client_key_valid("caf\xc3\xa9", 5));
    CU_ASSERT_TRUE(client_key_valid("user:1/x-y_z.{}", 15));
}

static void test_idempotent(void)
{
    static const char *const yes[] = {
        "get a", "gets a b",    "set a 0 0 1", "delete a", "touch a 1", "version",
        "stats", "stats items", "keys",        "keys p",   "flush_all", "flush_all 10"};
    static const char *const no[] = {
        "add a 0 0 1",     "cas a 0 0 1 5",   "incr a 1", "decr a 1", "append a 0 0 1",
        "prepend a 0 0 1", "replace a 0 0 1", "getx a",   "sets a",   "",
        "verbosity 1"};

    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
        CU_ASSERT_TRUE(client_cmd_idempotent(yes[i], strlen(yes[i])));
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
        CU_ASSERT_FALSE(client_cmd_idempotent(no[i], strlen(no[i])));
}

/* ------------------------------------------------------------------------ */
/* UDP reassembly                                                           */

/* Writes header + payload into out; returns the datagram length. */
static size_t dgram(char *out, uint16_t id, uint16_t seq, uint16_t total, const void *p,
                    size_t n)
{
    out[0] = (char)(id >> 8);
    out[1] = (char)id;
    out[2] = (char)(seq >> 8);
    out[3] = (char)seq;
    out[4] = (char)(total >> 8);
    out[5] = (char)total;
    out[6] = out[7] = 0;
    memcpy(out + 8, p, n);
    return n + 8;
}

static void test_udp_basic(void)
{
    struct client_udp_asm a;
    const char *p;
    char d[64];
    size_t n, len;

    client_udp_asm_init(&a);
    client_udp_asm_start(&a, 0x1234);
    CU_ASSERT_PTR_NULL(client_udp_asm_payload(&a, &len));
    /* Short, foreign, zero count, sequence out of range. */
    CU_ASSERT_EQUAL(client_udp_asm_add(&a, "\x12\x34\0\0\0\1\0", 7), CLIENT_UDP_BAD);
    n = dgram(d, 0x1235, 0, 2, "xx", 2);
    CU_ASSERT_EQUAL(client_udp_asm_add(&a, d, n), CLIENT_UDP_OTHER);
    n = dgram(d, 0x1234, 0, 0, "xx", 2);
    CU_ASSERT_EQUAL(client_udp_asm_add(&a, d, n), CLIENT_UDP_BAD);
    n = dgram(d, 0x1234, 2, 2, "xx", 2);
    CU_ASSERT_EQUAL(client_udp_asm_add(&a, d, n), CLIENT_UDP_BAD);
    /* Second half first, then a duplicate, a disagreeing count, the first. */
    n = dgram(d, 0x1234, 1, 2, "D\r\n", 3);
    CU_ASSERT_EQUAL(client_udp_asm_add(&a, d, n), CLIENT_UDP_MORE);
    CU_ASSERT_EQUAL(client_udp_asm_add(&a, d, n), CLIENT_UDP_DUP);
    CU_ASSERT_PTR_NULL(client_udp_asm_payload(&a, &len));
    n = dgram(d, 0x1234, 0, 3, "STORE", 5);
    CU_ASSERT_EQUAL(client_udp_asm_add(&a, d, n), CLIENT_UDP_BAD);
    n = dgram(d, 0x1234, 0, 2, "STORE", 5);
    CU_ASSERT_EQUAL(client_udp_asm_add(&a, d, n), CLIENT_UDP_DONE);
    CU_ASSERT_EQUAL(client_udp_asm_add(&a, d, n), CLIENT_UDP_DUP);
    p = client_udp_asm_payload(&a, &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    CU_ASSERT_EQUAL(len, 8);
    CU_ASSERT_EQUAL(memcmp(p, "STORED\r\n", 8), 0);

    /* Started again for the next set: a datagram with an empty payload counts. */
    client_udp_asm_start(&a, 7);
    n = dgram(d, 7, 1, 2, "", 0);
    CU_ASSERT_EQUAL(client_udp_asm_add(&a, d, n), CLIENT_UDP_MORE);
    n = dgram(d, 7, 0, 2, "END\r\n", 5);
    CU_ASSERT_EQUAL(client_udp_asm_add(&a, d, n), CLIENT_UDP_DONE);
    p = client_udp_asm_payload(&a, &len);
    CU_ASSERT(p != NULL && len == 5 && memcmp(p, "END\r\n", 5) == 0);
    /* A one-datagram set with no payload at all. */
    client_udp_asm_start(&a, 8);
    n = dgram(d, 8, 0, 1, "", 0);
    CU_ASSERT_EQUAL(client_udp_asm_add(&a, d, n), CLIENT_UDP_DONE);
    p = client_udp_asm_payload(&a, &len);
    CU_ASSERT(p != NULL && len == 0);
    client_udp_asm_free(&a);
    client_udp_asm_free(&a); /* twice is harmless */
}

/* Reserved once, sets that fit are reassembled in the same buffers; those
 * that arrive in order are read where they lie. */
static void test_udp_reserved_buffers_are_kept(void)
{
    struct client_udp_asm a;
    const char *p, *data;
    char d[64];
    size_t n, len;

    client_udp_asm_init(&a);
    CU_ASSERT_EQUAL_FATAL(client_udp_asm_reserve(&a, 4, 4 * LIMIT_UDP_PAYLOAD_BYTES), 0);
    data = a.data;
    for (uint16_t id = 1; id <= 50; id++) {
        client_udp_asm_start(&a, id);
        for (uint16_t seq = 0; seq < 3; seq++) {
            n = dgram(d, id, seq, 3,
                      seq == 0   ? "VALUE k 0 1\r\n"
                      : seq == 1 ? "x\r\n"
                                 : "END\r\n",
                      seq == 0   ? 13
                      : seq == 1 ? 3
                                 : 5);
            CU_ASSERT_EQUAL(client_udp_asm_add(&a, d, n),
                            seq == 2 ? CLIENT_UDP_DONE : CLIENT_UDP_MORE);
        }
        p = client_udp_asm_payload(&a, &len);
        CU_ASSERT(p == a.data && len == 21 &&
                  memcmp(p, "VALUE k 0 1\r\nx\r\nEND\r\n", 21) == 0);
    }
    CU_ASSERT_PTR_EQUAL(a.data, data);
    CU_ASSERT_PTR_NULL(a.joined); /* never gathered */
    client_udp_asm_free(&a);
}

/* A ~20 KB value split memcached-style into 1392-byte payloads, delivered in
 * a scrambled order with duplicates and foreign datagrams mixed in; the
 * joined bytes parse back to the same value. */
static void test_udp_scrambled(void)
{
    enum { VLEN = 20000, CHUNK = LIMIT_UDP_PAYLOAD_BYTES };
    struct client_udp_asm a;
    struct client_reply r;
    struct buf reply = BUF_INIT, out = BUF_INIT;
    char *val = malloc(VLEN), *d = malloc(CHUNK + 8);
    size_t total, order[32], nd = 0;
    uint32_t seed = 99;
    int rc = CLIENT_UDP_MORE;

    for (size_t i = 0; i < VLEN; i++)
        val[i] = (char)(i * 7 + (i >> 8)); /* has CR, LF and NUL bytes */
    memcpy(val + 100, "\r\nEND\r\n", 7);
    buf_printf(&reply, "VALUE big 3 %d\r\n", VLEN);
    buf_append(&reply, val, VLEN);
    buf_append(&reply, "\r\nEND\r\n", 7);
    total = (reply.len + CHUNK - 1) / CHUNK;
    CU_ASSERT(total > 1 && total < 32);
    for (size_t i = 0; i < total; i++)
        order[i] = i;
    for (size_t i = total - 1; i > 0; i--) {
        size_t j, t;
        seed = seed * 1103515245u + 12345u;
        j = (seed >> 8) % (i + 1);
        t = order[i];
        order[i] = order[j];
        order[j] = t;
    }

    client_udp_asm_init(&a);
    client_udp_asm_start(&a, 0xfffe);
    for (size_t i = 0; i < total; i++) {
        size_t s = order[i], off = s * CHUNK;
        size_t len = reply.len - off < CHUNK ? reply.len - off : CHUNK;
        size_t n = dgram(d, 0xfffe, (uint16_t)s, (uint16_t)total, reply.data + off, len);
        /* A foreign datagram that looks right otherwise. */
        char f[16];
        size_t fn = dgram(f, 0xfffd, (uint16_t)s, (uint16_t)total, "VALUE ", 6);
        CU_ASSERT_EQUAL(client_udp_asm_add(&a, f, fn), CLIENT_UDP_OTHER);
        rc = client_udp_asm_add(&a, d, n);
        CU_ASSERT_EQUAL(rc, i + 1 == total ? CLIENT_UDP_DONE : CLIENT_UDP_MORE);
        nd++;
        if (i % 3 == 0 && i + 1 < total) /* a duplicate */
            CU_ASSERT_EQUAL(client_udp_asm_add(&a, d, n), CLIENT_UDP_DUP);
    }
    CU_ASSERT_EQUAL(nd, total);
    {
        size_t plen;
        const char *p = client_udp_asm_payload(&a, &plen);
        CU_ASSERT_PTR_NOT_NULL_FATAL(p);
        CU_ASSERT_PTR_EQUAL(p, a.joined); /* out of order: gathered */
        CU_ASSERT_EQUAL(buf_append(&out, p, plen), 0);
    }
    CU_ASSERT_EQUAL(out.len, reply.len);
    CU_ASSERT_EQUAL(memcmp(out.data, reply.data, reply.len), 0);

    client_reply_init(&r);
    CU_ASSERT_EQUAL(client_reply_parse(&r, out.data, out.len), 1);
    CU_ASSERT_EQUAL(r.n_items, 1);
    if (r.n_items == 1) {
        CU_ASSERT_EQUAL(r.items[0].data_len, VLEN);
        CU_ASSERT_EQUAL(memcmp(r.items[0].data, val, VLEN), 0);
    }
    client_reply_free(&r);
    client_udp_asm_free(&a);
    buf_free(&out);
    buf_free(&reply);
    free(val);
    free(d);
}

/* ------------------------------------------------------------------------ */
/* Exchanges over loopback                                                  */

/* Opens a server socket on 127.0.0.1 with a kernel-chosen port. */
static int server_socket(int type, uint16_t *port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, type | SOCK_CLOEXEC, 0);

    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        (type == SOCK_STREAM && listen(fd, 4) < 0) ||
        getsockname(fd, (struct sockaddr *)&sa, &len) < 0) {
        CU_FAIL("server socket");
        if (fd >= 0)
            close(fd);
        return -1;
    }
    *port = ntohs(sa.sin_port);
    return fd;
}

static void test_tcp_exchange(void)
{
    struct client c;
    struct client_reply r;
    uint16_t port;
    int lfd = server_socket(SOCK_STREAM, &port), sfd;
    struct client_config cfg = {"127.0.0.1", port, CLIENT_TCP, 5000, 0};
    static const char reply[] = "VALUE k 0 5\r\nab\r\nc\r\nEND\r\n";
    struct client_request req = {"get k", 5, NULL, 0, false};
    struct client_request set = {"set k 0 0 2", 11, "\r\n", 2, true};
    struct client_request bad_crlf = {"get a\r\nx", 8, NULL, 0, false};
    struct client_request bad_empty = {"", 0, NULL, 0, false};
    char got[64];
    ssize_t n;

    if (lfd < 0)
        return;
    client_reply_init(&r);
    CU_ASSERT_EQUAL_FATAL(client_open(&c, &cfg), 0);
    sfd = accept(lfd, NULL, NULL);
    CU_ASSERT_FATAL(sfd >= 0);

    /* Reply queued before the request: read from the receive buffer. */
    CU_ASSERT_EQUAL(write(sfd, reply, sizeof(reply) - 1), (ssize_t)sizeof(reply) - 1);
    CU_ASSERT_EQUAL(client_request(&c, &req, &r), 0);
    CU_ASSERT_EQUAL(r.type, CLIENT_REPLY_LIST);
    CU_ASSERT_EQUAL(r.n_items, 1);
    CU_ASSERT_EQUAL(r.items[0].data_len, 5);
    CU_ASSERT_EQUAL(memcmp(r.items[0].data, "ab\r\nc", 5), 0);
    n = read(sfd, got, sizeof(got));
    CU_ASSERT_EQUAL(n, 7);
    CU_ASSERT_EQUAL(memcmp(got, "get k\r\n", 7), 0);

    /* A storage command sends line, CRLF, data, CRLF. */
    CU_ASSERT_EQUAL(write(sfd, "STORED\r\n", 8), 8);
    CU_ASSERT_EQUAL(client_request(&c, &set, &r), 0);
    CU_ASSERT_EQUAL(r.type, CLIENT_REPLY_STORED);
    n = read(sfd, got, sizeof(got));
    CU_ASSERT_EQUAL(n, 17);
    CU_ASSERT_EQUAL(memcmp(got, "set k 0 0 2\r\n\r\n\r\n", 17), 0);

    /* Bad request lines are refused before anything is sent. */
    CU_ASSERT_EQUAL(client_request(&c, &bad_crlf, &r), -EINVAL);
    CU_ASSERT_EQUAL(client_request(&c, &bad_empty, &r), -EINVAL);

    /* A malformed reply fails and closes the connection. */
    CU_ASSERT_EQUAL(write(sfd, "VALUE k 0 1\r\nxy\r\n", 17), 17);
    CU_ASSERT_EQUAL(client_request(&c, &req, &r), -EPROTO);
    CU_ASSERT_EQUAL(client_request(&c, &req, &r), -ENOTCONN);
    client_close(&c);
    close(sfd);

    /* Connection closed in the middle of a reply. */
    CU_ASSERT_EQUAL_FATAL(client_open(&c, &cfg), 0);
    sfd = accept(lfd, NULL, NULL);
    CU_ASSERT_FATAL(sfd >= 0);
    CU_ASSERT_EQUAL(write(sfd, "VALUE k 0 5\r\nab", 15), 15);
    close(sfd);
    CU_ASSERT_EQUAL(client_request(&c, &req, &r), -ECONNRESET);
    client_close(&c);
    client_close(&c);

    /* Nothing listening any more. */
    close(lfd);
    CU_ASSERT_EQUAL(client_open(&c, &cfg), -ECONNREFUSED);
    CU_ASSERT(strlen(client_error(&c)) > 0);
    client_reply_free(&r);
}

static void test_open_invalid(void)
{
    struct client c;
    struct client_config cfg = {"127.0.0.1", 0, CLIENT_TCP, 1000, 0};

    CU_ASSERT_EQUAL(client_open(&c, &cfg), -EINVAL);
    cfg.port = 1;
    cfg.timeout_ms = 0;
    CU_ASSERT_EQUAL(client_open(&c, &cfg), -EINVAL);
    cfg.timeout_ms = 1000;
    cfg.host = "";
    CU_ASSERT_EQUAL(client_open(&c, &cfg), -EINVAL);
    cfg.host = "127.0.0.1";
    cfg.transport = (enum client_transport)7;
    CU_ASSERT_EQUAL(client_open(&c, &cfg), -EINVAL);
    client_close(&c);
}

/* Receives a request datagram; checks its framing and returns its id. */
static uint16_t udp_take_request(int sfd, struct sockaddr_in *from, const char *want)
{
    unsigned char b[256];
    socklen_t flen = sizeof(*from);
    ssize_t n = recvfrom(sfd, b, sizeof(b), 0, (struct sockaddr *)from, &flen);
    size_t wl = strlen(want);

    CU_ASSERT_EQUAL(n, (ssize_t)(8 + wl));
    if (n < 8)
        return 0;
    CU_ASSERT_EQUAL(b[2] << 8 | b[3], 0); /* sequence */
    CU_ASSERT_EQUAL(b[4] << 8 | b[5], 1); /* one datagram */
    CU_ASSERT_EQUAL(b[6] << 8 | b[7], 0);
    CU_ASSERT_EQUAL(memcmp(b + 8, want, wl), 0);
    return (uint16_t)(b[0] << 8 | b[1]);
}

static void udp_send(int sfd, const struct sockaddr_in *to, uint16_t id, uint16_t seq,
                     uint16_t total, const char *p, size_t n)
{
    char d[256];
    size_t len = dgram(d, id, seq, total, p, n);

    CU_ASSERT_EQUAL(sendto(sfd, d, len, 0, (const struct sockaddr *)to, sizeof(*to)),
                    (ssize_t)len);
}

static void test_udp_exchange(void)
{
    struct client c;
    struct client_reply r;
    struct sockaddr_in cli;
    socklen_t clen = sizeof(cli);
    uint16_t port, id;
    int sfd = server_socket(SOCK_DGRAM, &port);
    struct client_config cfg = {"127.0.0.1", port, CLIENT_UDP, 200, 2};
    struct client_request get = {"get a b", 7, NULL, 0, false};
    struct client_request incr = {"incr n 1", 8, NULL, 0, false};
    char big[LIMIT_UDP_REQUEST_BYTES_MAX];
    enum log_level saved;

    if (sfd < 0)
        return;
    client_reply_init(&r);
    saved = log_get_level();
    CU_ASSERT_EQUAL_FATAL(client_open(&c, &cfg), 0);
    CU_ASSERT_EQUAL(getsockname(c.fd, (struct sockaddr *)&cli, &clen), 0);

    /* The reply is queued first (the id is the one the client will use):
     * two datagram sets in a row as memcached sends a multi-key get, the
     * second out of order, plus a foreign datagram and a duplicate. */
    id = c.next_id;
    udp_send(sfd, &cli, (uint16_t)(id - 1), 0, 1, "END\r\n", 5);
    udp_send(sfd, &cli, id, 0, 1, "VALUE a 0 1\r\nx\r\n", 16);
    udp_send(sfd, &cli, id, 1, 2, "\r\nEND\r\n", 7);
    udp_send(sfd, &cli, id, 1, 2, "\r\nEND\r\n", 7);
    udp_send(sfd, &cli, id, 0, 2, "VALUE b 0 2\r\nyz", 15);
    CU_ASSERT_EQUAL(client_request(&c, &get, &r), 0);
    CU_ASSERT_EQUAL(udp_take_request(sfd, &cli, "get a b\r\n"), id);
    CU_ASSERT_EQUAL(r.type, CLIENT_REPLY_LIST);
    CU_ASSERT_EQUAL(r.n_items, 2);
    CU_ASSERT_EQUAL(r.attempts, 1);

    /* No answer: an idempotent command is sent 1 + retries times, each with
     * a fresh id; incr only once. (The retries are logged at info: quiet.) */
    log_set_level(LOG_LEVEL_WARN);
    CU_ASSERT_EQUAL(client_request(&c, &get, &r), -ETIMEDOUT);
    CU_ASSERT_EQUAL(r.attempts, 3);
    id = udp_take_request(sfd, &cli, "get a b\r\n");
    CU_ASSERT_EQUAL(udp_take_request(sfd, &cli, "get a b\r\n"), (uint16_t)(id + 1));
    CU_ASSERT_EQUAL(udp_take_request(sfd, &cli, "get a b\r\n"), (uint16_t)(id + 2));
    CU_ASSERT_EQUAL(client_request(&c, &incr, &r), -ETIMEDOUT);
    CU_ASSERT_EQUAL(r.attempts, 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(client_error(&c), "unknown"));
    udp_take_request(sfd, &cli, "incr n 1\r\n");

    /* Too big for one datagram. */
    memset(big, 'x', sizeof(big));
    CU_ASSERT_EQUAL(client_request(&c,
                                   &(struct client_request){"set k 0 0 65527", 15, big,
                                                            sizeof(big), true},
                                   &r),
                    -EMSGSIZE);
    log_set_level(saved);
    client_close(&c);
    close(sfd);
    client_reply_free(&r);
}

void unit_client_register(void)
{
    CU_pSuite s = unit_suite("client");

    unit_test(s, "reply shapes, split at every byte", test_shapes);
    unit_test(s, "reply fields", test_fields);
    unit_test(s, "long list parsed as it arrives", test_long_list);
    unit_test(s, "line length limit", test_long_lines);
    unit_test(s, "malformed replies", test_malformed);
    unit_test(s, "mutated replies do not crash", test_garbage);
    unit_test(s, "key validation", test_keys);
    unit_test(s, "idempotent commands", test_idempotent);
    unit_test(s, "udp reassembly", test_udp_basic);
    unit_test(s, "udp reassembly keeps its reserved buffers",
              test_udp_reserved_buffers_are_kept);
    unit_test(s, "udp scrambled multi-datagram value", test_udp_scrambled);
    unit_test(s, "open: invalid config", test_open_invalid);
    unit_test(s, "tcp exchange over loopback", test_tcp_exchange);
    unit_test(s, "udp exchange over loopback", test_udp_exchange);
}
