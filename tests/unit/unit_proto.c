/*
 * unit_proto.c - the memcached text parser: every command, every class of
 * bad input, pipelining, and a stream fed in pieces split at every byte
 * boundary (which must parse exactly like the stream fed whole).
 */
#include "limits.h"
#include "proto.h"
#include "unit.h"
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct proto_limits lim = {
    .value_bytes_max = 64,
    .get_line_bytes_max = 8192,
    .get_keys_max = 100,
};

/* Parses s (NUL-terminated) once. */
static enum proto_status parse(const char *s, struct proto_req *req, size_t *consumed)
{
    return proto_parse(s, strlen(s), &lim, req, consumed);
}

static void expect_error(const char *s, const char *err, size_t consumed_want)
{
    struct proto_req req;
    size_t consumed;
    enum proto_status st = parse(s, &req, &consumed);

    CU_ASSERT_EQUAL(st, PROTO_ERROR);
    if (st == PROTO_ERROR) {
        CU_ASSERT_STRING_EQUAL(req.error, err);
        CU_ASSERT_EQUAL(consumed, consumed_want);
    } else {
        fprintf(stderr, "\n  input %s: status %d\n", s, st);
    }
}

static void test_set_basic(void)
{
    struct proto_req req;
    size_t consumed;
    const char *s = "set foo 123 60 5\r\nhello\r\nget foo\r\n";

    CU_ASSERT_EQUAL(parse(s, &req, &consumed), PROTO_OK);
    CU_ASSERT_EQUAL(req.cmd, PROTO_CMD_SET);
    CU_ASSERT_EQUAL(req.nkey, 3);
    CU_ASSERT_NSTRING_EQUAL(req.key, "foo", 3);
    CU_ASSERT_EQUAL(req.flags, 123);
    CU_ASSERT_EQUAL(req.exptime, 60);
    CU_ASSERT_EQUAL(req.ndata, 5);
    CU_ASSERT_NSTRING_EQUAL(req.data, "hello", 5);
    CU_ASSERT_FALSE(req.noreply);
    CU_ASSERT_FALSE(req.too_large);
    CU_ASSERT_EQUAL(consumed, strlen("set foo 123 60 5\r\nhello\r\n"));
}

static void test_storage_commands(void)
{
    static const struct {
        const char *line;
        enum proto_cmd cmd;
    } cases[] = {
        {"set k 0 0 1\r\nx\r\n", PROTO_CMD_SET},         {"add k 0 0 1\r\nx\r\n", PROTO_CMD_ADD},
        {"replace k 0 0 1\r\nx\r\n", PROTO_CMD_REPLACE}, {"append k 0 0 1\r\nx\r\n", PROTO_CMD_APPEND},
        {"prepend k 0 0 1\r\nx\r\n", PROTO_CMD_PREPEND}, {"cas k 0 0 1 99\r\nx\r\n", PROTO_CMD_CAS},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct proto_req req;
        size_t consumed;
        CU_ASSERT_EQUAL(parse(cases[i].line, &req, &consumed), PROTO_OK);
        CU_ASSERT_EQUAL(req.cmd, cases[i].cmd);
        CU_ASSERT_EQUAL(consumed, strlen(cases[i].line));
        CU_ASSERT_TRUE(proto_cmd_is_write(req.cmd));
    }
}

static void test_cas_fields_and_noreply(void)
{
    struct proto_req req;
    size_t consumed;

    CU_ASSERT_EQUAL(parse("cas k 4294967295 -1 3 18446744073709551615 noreply\r\nabc\r\n", &req,
                          &consumed),
                    PROTO_OK);
    CU_ASSERT_EQUAL(req.flags, 4294967295u);
    CU_ASSERT_EQUAL(req.exptime, -1);
    CU_ASSERT_EQUAL(req.cas, UINT64_MAX);
    CU_ASSERT_TRUE(req.noreply);
}

static void test_line_ends_in_bare_newline(void)
{
    struct proto_req req;
    size_t consumed;

    CU_ASSERT_EQUAL(parse("get a b\n", &req, &consumed), PROTO_OK);
    CU_ASSERT_EQUAL(req.nkeys, 2);
    CU_ASSERT_EQUAL(consumed, 8);
}

static void test_retrieval(void)
{
    struct proto_req req;
    size_t consumed, pos = 0, nk;
    const char *k;

    CU_ASSERT_EQUAL(parse("gets  a  bb   ccc \r\n", &req, &consumed), PROTO_OK);
    CU_ASSERT_EQUAL(req.cmd, PROTO_CMD_GETS);
    CU_ASSERT_EQUAL(req.nkeys, 3);
    CU_ASSERT_TRUE(proto_next_key(&req, &pos, &k, &nk));
    CU_ASSERT_EQUAL(nk, 1);
    CU_ASSERT_NSTRING_EQUAL(k, "a", 1);
    CU_ASSERT_TRUE(proto_next_key(&req, &pos, &k, &nk));
    CU_ASSERT_NSTRING_EQUAL(k, "bb", 2);
    CU_ASSERT_TRUE(proto_next_key(&req, &pos, &k, &nk));
    CU_ASSERT_EQUAL(nk, 3);
    CU_ASSERT_FALSE(proto_next_key(&req, &pos, &k, &nk));

    CU_ASSERT_EQUAL(parse("gat 100 x y\r\n", &req, &consumed), PROTO_OK);
    CU_ASSERT_EQUAL(req.cmd, PROTO_CMD_GAT);
    CU_ASSERT_EQUAL(req.exptime, 100);
    CU_ASSERT_EQUAL(req.nkeys, 2);
    CU_ASSERT_EQUAL(parse("gats -1 x\r\n", &req, &consumed), PROTO_OK);
    CU_ASSERT_EQUAL(req.exptime, -1);
}

static void test_other_commands(void)
{
    struct proto_req req;
    size_t consumed;

    CU_ASSERT_EQUAL(parse("delete k\r\n", &req, &consumed), PROTO_OK);
    CU_ASSERT_EQUAL(req.cmd, PROTO_CMD_DELETE);
    CU_ASSERT_EQUAL(parse("delete k 0\r\n", &req, &consumed), PROTO_OK);
    CU_ASSERT_EQUAL(parse("delete k 0 noreply\r\n", &req, &consumed), PROTO_OK);
    CU_ASSERT_TRUE(req.noreply);
    CU_ASSERT_EQUAL(parse("incr k 18446744073709551615\r\n", &req, &consumed), PROTO_OK);
    CU_ASSERT_EQUAL(req.delta, UINT64_MAX);
    CU_ASSERT_EQUAL(parse("decr k 5 noreply\r\n", &req, &consumed), PROTO_OK);
    CU_ASSERT_EQUAL(req.cmd, PROTO_CMD_DECR);
    CU_ASSERT_TRUE(req.noreply);
    CU_ASSERT_EQUAL(parse("touch k 10\r\n", &req, &consumed), PROTO_OK);
    CU_ASSERT_EQUAL(req.exptime, 10);
    CU_ASSERT_EQUAL(parse("flush_all\r\n", &req, &consumed), PROTO_OK);
    CU_ASSERT_EQUAL(req.delay, 0);
    CU_ASSERT_EQUAL(parse("flush_all 30 noreply\r\n", &req, &consumed), PROTO_OK);
    CU_ASSERT_EQUAL(req.delay, 30);
    CU_ASSERT_TRUE(req.noreply);
    CU_ASSERT_EQUAL(parse("flush_all noreply\r\n", &req, &consumed), PROTO_OK);
    CU_ASSERT_TRUE(req.noreply);
    CU_ASSERT_EQUAL(parse("version\r\n", &req, &consumed), PROTO_OK);
    CU_ASSERT_EQUAL(req.cmd, PROTO_CMD_VERSION);
    CU_ASSERT_EQUAL(parse("verbosity 1\r\n", &req, &consumed), PROTO_OK);
    CU_ASSERT_EQUAL(req.verbosity, 1);
    CU_ASSERT_EQUAL(parse("stats\r\n", &req, &consumed), PROTO_OK);
    CU_ASSERT_EQUAL(req.narg, 0);
    CU_ASSERT_EQUAL(parse("stats settings\r\n", &req, &consumed), PROTO_OK);
    CU_ASSERT_NSTRING_EQUAL(req.arg, "settings", 8);
    CU_ASSERT_EQUAL(parse("version foo bar\r\n", &req, &consumed), PROTO_OK);
    CU_ASSERT_EQUAL(req.cmd, PROTO_CMD_VERSION);
    CU_ASSERT_EQUAL(parse("quit noreply\r\n", &req, &consumed), PROTO_OK);
    CU_ASSERT_EQUAL(parse("quit\r\n", &req, &consumed), PROTO_OK);
    CU_ASSERT_EQUAL(req.cmd, PROTO_CMD_QUIT);
    CU_ASSERT_EQUAL(parse("keys user:\r\n", &req, &consumed), PROTO_OK);
    CU_ASSERT_EQUAL(req.cmd, PROTO_CMD_KEYS);
    CU_ASSERT_NSTRING_EQUAL(req.arg, "user:", 5);
    CU_ASSERT_EQUAL(parse("keys\r\n", &req, &consumed), PROTO_OK);
    CU_ASSERT_EQUAL(req.narg, 0);
    CU_ASSERT_EQUAL(parse("snapshot\r\n", &req, &consumed), PROTO_OK);
    CU_ASSERT_EQUAL(req.cmd, PROTO_CMD_SNAPSHOT);
    CU_ASSERT_FALSE(proto_cmd_is_write(req.cmd));
    expect_error("snapshot now\r\n", "CLIENT_ERROR bad command line format", 14);
}

static void test_unknown_and_missing_args(void)
{
    expect_error("bogus slkdsldkfjsd\r\n", "ERROR", 20);
    expect_error("\r\n", "ERROR", 2);
    expect_error("   \r\n", "ERROR", 5);
    expect_error("GET foo\r\n", "ERROR", 9); /* commands are case-sensitive */
    expect_error("get\r\n", "ERROR", 5);
    expect_error("gets   \r\n", "ERROR", 9);
    expect_error("gat\r\n", "ERROR", 5);
    expect_error("delete\r\n", "ERROR", 8);
    expect_error("verbosity\r\n", "ERROR", 11);
    expect_error("incr k\r\n", "ERROR", 8);
}

static void test_bad_numbers(void)
{
    const char *fmt = "CLIENT_ERROR bad command line format";

    /* A bad field with a valid <bytes>: the data block is swallowed. */
    expect_error("set k abc 0 1\r\nx\r\n", fmt, 18);
    expect_error("set k 0 x 1\r\nx\r\n", fmt, 16);
    expect_error("set k 4294967296 0 1\r\nx\r\n", fmt, 25);
    expect_error("cas bad 0 0 1 blah\r\nx\r\n", fmt, 23);
    /* A wrong number of arguments is memcached's ERROR (the block, whose
     * length is valid, is still swallowed). */
    expect_error("cas foo 0 0 6 \r\nbarva2\r\n", "ERROR", 24);
    /* <bytes> itself bad: nothing can be swallowed. */
    expect_error("set k 0 0 -1\r\n", fmt, 14);
    expect_error("set k 0 0 4294967295\r\n", fmt, 22);
    expect_error("set k 0 0 2147483647\r\nscooby", fmt, 22);
    expect_error("set k 0 0 abc\r\n", fmt, 15);
    expect_error("set k 0 0\r\n", "ERROR", 11);
    expect_error("set k 0 0 1 junk\r\nx\r\n", "ERROR", 21);
    expect_error("incr k abc\r\n", "CLIENT_ERROR invalid numeric delta argument", 12);
    expect_error("incr k -1\r\n", "CLIENT_ERROR invalid numeric delta argument", 11);
    expect_error("incr k 18446744073709551616\r\n", "CLIENT_ERROR invalid numeric delta argument",
                 29);
    expect_error("touch k soon\r\n", "CLIENT_ERROR invalid exptime argument", 14);
    expect_error("flush_all invalid\r\n", "CLIENT_ERROR invalid exptime argument", 19);
    expect_error("gat x k\r\n", "CLIENT_ERROR invalid exptime argument", 9);
    expect_error("verbosity x\r\n", fmt, 13);
    expect_error("delete a b c d e\r\n",
                 "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]", 18);
    expect_error("delete k 10\r\n",
                 "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]", 13);
    expect_error("stats a b\r\n", fmt, 11);
}

/* The error replies, byte for byte, as memcached 1.6.18 answered the same
 * lines (each was sent to it and to serve; clients and memcached's own
 * tests compare these strings). "len" is what is consumed: where a storage
 * line is bad but its <bytes> is valid, the block is swallowed (memcached
 * would run the block's bytes as commands: that second reply is the one
 * deliberate difference). */
static void test_error_replies_pinned_to_memcached(void)
{
    static const struct {
        const char *in, *reply;
    } cases[] = {
        {"bogus\r\n", "ERROR"},
        {"\r\n", "ERROR"},
        {"get\r\n", "ERROR"},
        {"GET k\r\n", "ERROR"},
        {"gat\r\n", "ERROR"},
        {"gat x\r\n", "CLIENT_ERROR invalid exptime argument"},
        {"set k 0 0\r\n", "ERROR"},
        {"set k 0 0 x\r\n", "CLIENT_ERROR bad command line format"},
        {"set k 0 0 -1\r\n", "CLIENT_ERROR bad command line format"},
        {"set k x 0 1\r\nx\r\n", "CLIENT_ERROR bad command line format"},
        {"set k 0 x 1\r\nx\r\n", "CLIENT_ERROR bad command line format"},
        {"set k -1 0 1\r\nx\r\n", "CLIENT_ERROR bad command line format"},
        {"set k 0 99999999999999999999 1\r\nx\r\n", "CLIENT_ERROR bad command line format"},
        {"set k 0 0 1 noreply extra\r\nx\r\n", "ERROR"},
        {"cas k 0 0 1\r\nx\r\n", "ERROR"},
        {"cas k 0 0 1 x\r\nx\r\n", "CLIENT_ERROR bad command line format"},
        {"cas k 0 0 1 99999999999999999999\r\nx\r\n", "CLIENT_ERROR bad command line format"},
        {"incr k\r\n", "ERROR"},
        {"incr k x\r\n", "CLIENT_ERROR invalid numeric delta argument"},
        {"incr k -1\r\n", "CLIENT_ERROR invalid numeric delta argument"},
        {"decr k 99999999999999999999999\r\n", "CLIENT_ERROR invalid numeric delta argument"},
        {"delete k 1\r\n", "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]"},
        {"delete k x y\r\n", "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]"},
        {"touch k\r\n", "ERROR"},
        {"touch k x\r\n", "CLIENT_ERROR invalid exptime argument"},
        {"flush_all x\r\n", "CLIENT_ERROR invalid exptime argument"},
        {"verbosity\r\n", "ERROR"},
        {"verbosity x\r\n", "CLIENT_ERROR bad command line format"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct proto_req req;
        size_t consumed;
        enum proto_status st = parse(cases[i].in, &req, &consumed);
        CU_ASSERT_EQUAL(st, PROTO_ERROR);
        if (st != PROTO_ERROR || strcmp(req.error, cases[i].reply) != 0)
            fprintf(stderr, "\n  %s: status %d, '%s', memcached answers '%s'\n",
                    cases[i].in, st, st == PROTO_ERROR ? req.error : "", cases[i].reply);
        else
            CU_ASSERT_EQUAL(consumed, strlen(cases[i].in));
    }
    /* Two that are not errors: "gat <exptime>" alone is answered END. */
    struct proto_req req;
    size_t consumed;
    CU_ASSERT_EQUAL(parse("gat 0\r\n", &req, &consumed), PROTO_OK);
    CU_ASSERT_EQUAL(req.nkeys, 0);
}

/* The stream around the parser: a refused data block past the buffer is
 * swallowed as it arrives, whatever the reads' sizes. */
static void test_stream_consume_and_swallow(void)
{
    uint64_t sw = 0;
    char buf[32] = "0123456789";
    size_t len = 10;

    CU_ASSERT_EQUAL(proto_stream_consume(10, 2, 5, &sw), 7);
    CU_ASSERT_EQUAL(sw, 0);
    CU_ASSERT_EQUAL(proto_stream_consume(10, 2, 8, &sw), 10);
    CU_ASSERT_EQUAL(sw, 0);
    CU_ASSERT_EQUAL(proto_stream_consume(10, 2, 20, &sw), 10);
    CU_ASSERT_EQUAL(sw, 12);
    /* 12 owed: a read of 10 is dropped whole, then 2 of the next. */
    CU_ASSERT_EQUAL(proto_stream_swallow(buf, &len, &sw), 10);
    CU_ASSERT_EQUAL(len, 0);
    CU_ASSERT_EQUAL(sw, 2);
    memcpy(buf, "abcdef", 6);
    len = 6;
    CU_ASSERT_EQUAL(proto_stream_swallow(buf, &len, &sw), 2);
    CU_ASSERT_EQUAL(len, 4);
    CU_ASSERT_EQUAL(sw, 0);
    CU_ASSERT_NSTRING_EQUAL(buf, "cdef", 4);
}

static void test_noreply_on_errors(void)
{
    struct proto_req req;
    size_t consumed;

    /* memcached stays silent for these: a noreply client reads nothing. */
    CU_ASSERT_EQUAL(parse("delete k 10 noreply\r\n", &req, &consumed), PROTO_ERROR);
    CU_ASSERT_TRUE(req.noreply);
    CU_ASSERT_EQUAL(parse("verbosity noreply\r\n", &req, &consumed), PROTO_ERROR);
    CU_ASSERT_TRUE(req.noreply);
    CU_ASSERT_EQUAL(parse("set k x 0 1 noreply\r\nx\r\n", &req, &consumed), PROTO_ERROR);
    CU_ASSERT_TRUE(req.noreply);
    /* An unknown command is never silent. */
    CU_ASSERT_EQUAL(parse("frob noreply\r\n", &req, &consumed), PROTO_ERROR);
    CU_ASSERT_FALSE(req.noreply);
    /* stats takes no noreply: "noreply" is just an (unknown) argument. */
    CU_ASSERT_EQUAL(parse("stats noreply\r\n", &req, &consumed), PROTO_OK);
    CU_ASSERT_FALSE(req.noreply);
}

static void test_bad_keys(void)
{
    char line[600];
    char key[252];
    /* memcached's reply; what was wrong goes to the log (req.detail). */
    const char *too_long = "CLIENT_ERROR bad command line format";
    const char *ctrl = too_long;

    memset(key, 'k', 251);
    key[251] = '\0';
    snprintf(line, sizeof(line), "get %s\r\n", key);
    expect_error(line, too_long, strlen(line));
    snprintf(line, sizeof(line), "get ok %s\r\n", key);
    expect_error(line, too_long, strlen(line));
    snprintf(line, sizeof(line), "set %s 0 0 1\r\nx\r\n", key);
    expect_error(line, too_long, strlen(line));
    snprintf(line, sizeof(line), "delete %s\r\n", key);
    expect_error(line, too_long, strlen(line));
    snprintf(line, sizeof(line), "incr %s 1\r\n", key);
    expect_error(line, too_long, strlen(line));
    expect_error("get a\x01z\r\n", ctrl, 9);
    expect_error("set a\tb 0 0 1\r\nx\r\n", ctrl, 18);
    expect_error("touch \x7f 1\r\n", ctrl, 11);

    struct proto_req req;
    size_t consumed;
    CU_ASSERT_EQUAL(parse("get a\x01z\r\n", &req, &consumed), PROTO_ERROR);
    CU_ASSERT_STRING_EQUAL(req.detail, "key has control characters");
    snprintf(line, sizeof(line), "delete %s\r\n", key);
    CU_ASSERT_EQUAL(parse(line, &req, &consumed), PROTO_ERROR);
    CU_ASSERT_STRING_EQUAL(req.detail, "key longer than 250 bytes");

    /* 250 bytes is fine. */
    key[250] = '\0';
    snprintf(line, sizeof(line), "get %s\r\n", key);
    CU_ASSERT_EQUAL(parse(line, &req, &consumed), PROTO_OK);
    CU_ASSERT_TRUE(proto_key_valid(key, 250));
    CU_ASSERT_FALSE(proto_key_valid(key, 0));
    CU_ASSERT_TRUE(proto_key_valid("\xc3\xa9t\xc3\xa9", 5)); /* UTF-8 is allowed */
}

/* The word-at-a-time check against a byte-at-a-time one: every byte value,
 * at every position of keys of lengths around the 8-byte steps, on a
 * background of allowed bytes (both below and above 0x80). */
static void test_key_valid_every_byte(void)
{
    static const size_t lens[] = {1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 250};
    char key[256];
    unsigned wrong = 0;

    for (size_t li = 0; li < ARRAY_SIZE(lens); li++) {
        size_t n = lens[li];
        for (size_t i = 0; i < n; i++)
            key[i] = (char)(i % 3 == 0 ? 0x21 + (i % 90) : 0x80 + (i % 128));
        CU_ASSERT_TRUE(proto_key_valid(key, n));
        for (size_t pos = 0; pos < n; pos++) {
            char keep = key[pos];
            for (int b = 0; b < 256; b++) {
                key[pos] = (char)b;
                bool want = !(b <= 0x20 || b == 0x7f);
                if (proto_key_valid(key, n) != want)
                    wrong++;
            }
            key[pos] = keep;
        }
    }
    CU_ASSERT_EQUAL(wrong, 0);
}

static void test_too_many_keys(void)
{
    char line[1024] = "get";
    struct proto_req req;
    size_t consumed;

    for (int i = 0; i < 100; i++)
        strcat(line, " k");
    strcat(line, "\r\n");
    CU_ASSERT_EQUAL(parse(line, &req, &consumed), PROTO_OK);
    CU_ASSERT_EQUAL(req.nkeys, 100);
    line[strlen(line) - 2] = '\0';
    strcat(line, " k\r\n");
    expect_error(line, "CLIENT_ERROR too many keys in one request", strlen(line));
}

static void test_data_block(void)
{
    struct proto_req req;
    size_t consumed;

    /* Value longer than announced, or missing its \r\n: bad data chunk, and
     * the announced block plus two bytes are dropped. */
    expect_error("set k 0 0 3\r\nabcdef\r\n", "CLIENT_ERROR bad data chunk", 18);
    expect_error("set k 0 0 3\r\nabc\n\nset", "CLIENT_ERROR bad data chunk", 18);
    /* Zero-length and binary values. */
    CU_ASSERT_EQUAL(parse("set k 0 0 0\r\n\r\n", &req, &consumed), PROTO_OK);
    CU_ASSERT_EQUAL(req.ndata, 0);
    const char bin[] = "set k 0 0 4\r\n\0\r\n\x01\r\n";
    CU_ASSERT_EQUAL(proto_parse(bin, sizeof(bin) - 1, &lim, &req, &consumed), PROTO_OK);
    CU_ASSERT_EQUAL(req.ndata, 4);
    CU_ASSERT_EQUAL(memcmp(req.data, "\0\r\n\x01", 4), 0);
    /* Incomplete block: tell the caller how much is needed. */
    CU_ASSERT_EQUAL(parse("set k 0 0 10\r\nabc", &req, &consumed), PROTO_NEED_MORE);
    CU_ASSERT_EQUAL(req.need, 14 + 12);
    CU_ASSERT_EQUAL(consumed, 0);
}

static void test_too_large_is_swallowed(void)
{
    struct proto_req req;
    size_t consumed;

    /* 65 > value_bytes_max (64): reported at once, block swallowed even
     * though none of it has arrived yet. */
    CU_ASSERT_EQUAL(parse("set big 0 0 65\r\n", &req, &consumed), PROTO_OK);
    CU_ASSERT_TRUE(req.too_large);
    CU_ASSERT_EQUAL(req.cmd, PROTO_CMD_SET);
    CU_ASSERT_NSTRING_EQUAL(req.key, "big", 3);
    CU_ASSERT_PTR_NULL(req.data);
    CU_ASSERT_EQUAL(consumed, 16 + 65 + 2);
    CU_ASSERT_EQUAL(parse("set ok 0 0 64\r\n", &req, &consumed), PROTO_NEED_MORE);
}

static void test_long_lines(void)
{
    char *buf = malloc(20000);
    struct proto_req req;
    size_t consumed;

    /* A non-retrieval line with no newline past 2048 bytes: hang up. */
    memset(buf, ' ', 3000);
    memcpy(buf, "incr ", 5);
    CU_ASSERT_EQUAL(proto_parse(buf, 3000, &lim, &req, &consumed), PROTO_CLOSE);
    CU_ASSERT_EQUAL(proto_parse(buf, 2048, &lim, &req, &consumed), PROTO_NEED_MORE);
    /* Garbage without any newline. */
    memset(buf, 'x', 3000);
    CU_ASSERT_EQUAL(proto_parse(buf, 3000, &lim, &req, &consumed), PROTO_CLOSE);
    /* Same, complete with its newline. */
    memcpy(buf + 2998, "\r\n", 2);
    CU_ASSERT_EQUAL(proto_parse(buf, 3000, &lim, &req, &consumed), PROTO_CLOSE);
    /* A get line may be longer (up to get_line_bytes_max = 8192)... */
    memset(buf, ' ', 8192);
    memcpy(buf, "get ", 4);
    CU_ASSERT_EQUAL(proto_parse(buf, 5000, &lim, &req, &consumed), PROTO_NEED_MORE);
    memcpy(buf + 5000, "k\r\n", 3);
    CU_ASSERT_EQUAL(proto_parse(buf, 5003, &lim, &req, &consumed), PROTO_OK);
    CU_ASSERT_EQUAL(req.nkeys, 1);
    CU_ASSERT_EQUAL(consumed, 5003);
    /* ...but not longer. */
    memset(buf, ' ', 9000);
    memcpy(buf, "gets ", 5);
    CU_ASSERT_EQUAL(proto_parse(buf, 9000, &lim, &req, &consumed), PROTO_CLOSE);
    free(buf);
}

/* Found by tests/fuzz/fuzz_proto.c: a line of exactly the longest length
 * allowed, whose "\r" arrived in one read and "\n" in the next, was closed
 * as too long: the "\r" counted against the limit while the line had no
 * newline yet, though it does not once the newline comes. serve's read
 * buffer stops growing at get_line_bytes_max + 1 bytes until the parser
 * has seen it, so a longest get line ending in "\r\n" was always refused. */
static void test_longest_line_split_before_its_newline(void)
{
    char *buf = malloc(8200);
    struct proto_req req;
    size_t consumed;

    /* A get line of 8192 bytes (the limit), then "\r", then "\n". */
    memset(buf, ' ', 8192);
    memcpy(buf, "get", 3);
    buf[8191] = 'k';
    buf[8192] = '\r';
    CU_ASSERT_EQUAL(proto_parse(buf, 8193, &lim, &req, &consumed), PROTO_NEED_MORE);
    buf[8193] = '\n';
    CU_ASSERT_EQUAL(proto_parse(buf, 8194, &lim, &req, &consumed), PROTO_OK);
    CU_ASSERT_EQUAL(consumed, 8194);
    /* One byte more is too long, with or without its "\r". */
    buf[8192] = 'k';
    CU_ASSERT_EQUAL(proto_parse(buf, 8193, &lim, &req, &consumed), PROTO_CLOSE);
    buf[8193] = '\r';
    CU_ASSERT_EQUAL(proto_parse(buf, 8194, &lim, &req, &consumed), PROTO_CLOSE);
    /* The same for other lines at LIMIT_LINE_BYTES_MAX (2048). */
    memset(buf, ' ', 2048);
    memcpy(buf, "incr k 1", 8);
    buf[2048] = '\r';
    CU_ASSERT_EQUAL(proto_parse(buf, 2049, &lim, &req, &consumed), PROTO_NEED_MORE);
    buf[2049] = '\n';
    CU_ASSERT_EQUAL(proto_parse(buf, 2050, &lim, &req, &consumed), PROTO_OK);
    buf[2048] = 'x';
    CU_ASSERT_EQUAL(proto_parse(buf, 2049, &lim, &req, &consumed), PROTO_CLOSE);
    free(buf);
}

/* A get line past 2048 bytes with more than 100 spaces before "get" was
 * accepted when it arrived whole, and closed as too long when its first
 * 2049 bytes arrived without the newline: the incomplete line was only
 * recognised as a retrieval after at most 100 leading spaces, while the
 * complete line's tokenizer skips any number. */
static void test_long_get_line_after_many_spaces_waits(void)
{
    char *buf = malloc(3000);
    struct proto_req req;
    size_t consumed;

    memset(buf, ' ', 3000);
    memcpy(buf + 200, "get", 3);
    buf[2500] = 'k';
    memcpy(buf + 2501, "\r\n", 2);
    CU_ASSERT_EQUAL(proto_parse(buf, 2049, &lim, &req, &consumed), PROTO_NEED_MORE);
    CU_ASSERT_EQUAL(proto_parse(buf, 2501, &lim, &req, &consumed), PROTO_NEED_MORE);
    CU_ASSERT_EQUAL(proto_parse(buf, 2503, &lim, &req, &consumed), PROTO_OK);
    CU_ASSERT_EQUAL(req.nkeys, 1);
    /* Spaces alone are no get: past 2048 bytes they are garbage. */
    CU_ASSERT_EQUAL(proto_parse(buf + 300, 2100, &lim, &req, &consumed), PROTO_CLOSE);
    free(buf);
}

static void test_http_hangs_up(void)
{
    struct proto_req req;
    size_t consumed;

    CU_ASSERT_EQUAL(parse("GET / HTTP/1.0\r\n", &req, &consumed), PROTO_CLOSE);
    CU_ASSERT_EQUAL(parse("PUT /asdf/asd/fasdfasdf/sadf HTTP/1.1\r\n", &req, &consumed),
                    PROTO_CLOSE);
    CU_ASSERT_EQUAL(parse("DELETE HTTP/1.1\r\n", &req, &consumed), PROTO_CLOSE);
    CU_ASSERT_EQUAL(parse("a b c d e f g h i j HTTP/1.1\r\n", &req, &consumed), PROTO_CLOSE);
}

/* ---- streaming: the connection's loop, fed in pieces ---------------------- */

struct event {
    enum proto_status st;
    enum proto_cmd cmd;
    bool too_large, noreply;
    char key[16];
    size_t nkeys, ndata;
    char data[32];
    const char *error;
};

#define MAX_EVENTS 64

/* Feeds stream[0..len) in pieces that end at the offsets in cuts[] (then the
 * rest), the way a connection does: buffer, parse every complete request,
 * swallow refused data blocks. Returns the number of events. */
static size_t run_stream(const char *stream, size_t len, const size_t *cuts, size_t ncuts,
                         struct event *ev)
{
    char *buf = malloc(len + 1);
    size_t blen = 0, off = 0, nev = 0, swallow = 0;
    bool closed = false;

    for (size_t piece = 0; piece <= ncuts && !closed; piece++) {
        size_t end = piece < ncuts ? cuts[piece] : len;
        size_t n = end - off;
        memcpy(buf + blen, stream + off, n);
        blen += n;
        off = end;
        size_t d = blen < swallow ? blen : swallow;
        memmove(buf, buf + d, blen - d);
        blen -= d;
        swallow -= d;
        size_t pos = 0;
        while (!closed && swallow == 0 && pos < blen) {
            struct proto_req req;
            size_t consumed;
            enum proto_status st = proto_parse(buf + pos, blen - pos, &lim, &req, &consumed);
            if (st == PROTO_NEED_MORE)
                break;
            CU_ASSERT_FATAL(nev < MAX_EVENTS);
            struct event *e = &ev[nev++];
            memset(e, 0, sizeof(*e));
            e->st = st;
            e->cmd = req.cmd;
            e->too_large = req.too_large;
            e->noreply = req.noreply;
            e->error = st == PROTO_OK ? NULL : req.error;
            if (req.key)
                memcpy(e->key, req.key, req.nkey < 15 ? req.nkey : 15);
            e->nkeys = req.nkeys;
            e->ndata = req.ndata;
            if (req.data)
                memcpy(e->data, req.data, req.ndata < 31 ? req.ndata : 31);
            if (st == PROTO_CLOSE) {
                closed = true;
                break;
            }
            CU_ASSERT(consumed > 0);
            if (consumed > blen - pos) {
                swallow = consumed - (blen - pos);
                pos = blen;
            } else {
                pos += consumed;
            }
        }
        memmove(buf, buf + pos, blen - pos);
        blen -= pos;
    }
    free(buf);
    return nev;
}

static bool same_events(const struct event *a, size_t na, const struct event *b, size_t nb)
{
    if (na != nb)
        return false;
    for (size_t i = 0; i < na; i++) {
        if (a[i].st != b[i].st || a[i].cmd != b[i].cmd || a[i].too_large != b[i].too_large ||
            a[i].noreply != b[i].noreply || a[i].nkeys != b[i].nkeys ||
            a[i].ndata != b[i].ndata || strcmp(a[i].key, b[i].key) != 0 ||
            memcmp(a[i].data, b[i].data, sizeof(a[i].data)) != 0 ||
            (a[i].error == NULL) != (b[i].error == NULL) ||
            (a[i].error && strcmp(a[i].error, b[i].error) != 0))
            return false;
    }
    return true;
}

/* Every kind of request, good and bad, back to back. */
static const char pipeline[] =
    "set a 1 0 3\r\nxyz\r\n"
    "get a b c\r\n"
    "set big 0 0 70 noreply\r\n"
    "0123456789012345678901234567890123456789012345678901234567890123456789\r\n"
    "add b 0 0 4\r\n\r\n\r\n\r\n"
    "bogus\r\n"
    "set k 0 0 2\r\nabcd\r\n"
    "incr a 5 noreply\r\n"
    "cas k x 0 3 7\r\nabc\r\n"
    "gats 10 a b\n"
    "delete a\r\n"
    "stats\r\n"
    "set c 0 0 0\r\n\r\n"
    "get c\r\n"
    "GET / HTTP/1.1\r\n"
    "get never\r\n";

static void test_pipeline_whole(void)
{
    struct event ev[MAX_EVENTS];
    size_t n = run_stream(pipeline, sizeof(pipeline) - 1, NULL, 0, ev);

    if (n != 15)
        for (size_t i = 0; i < n; i++)
            fprintf(stderr, "\n  event %zu: st %d cmd %s key %s err %s", i, ev[i].st,
                    proto_cmd_name(ev[i].cmd), ev[i].key, ev[i].error ? ev[i].error : "-");
    CU_ASSERT_EQUAL_FATAL(n, 15);
    CU_ASSERT_EQUAL(ev[0].cmd, PROTO_CMD_SET);
    CU_ASSERT_STRING_EQUAL(ev[0].data, "xyz");
    CU_ASSERT_EQUAL(ev[1].nkeys, 3);
    CU_ASSERT_TRUE(ev[2].too_large);
    CU_ASSERT_TRUE(ev[2].noreply);
    CU_ASSERT_EQUAL(ev[3].cmd, PROTO_CMD_ADD);
    CU_ASSERT_EQUAL(ev[3].ndata, 4);
    CU_ASSERT_EQUAL(ev[4].st, PROTO_ERROR); /* bogus */
    CU_ASSERT_STRING_EQUAL(ev[5].error, "CLIENT_ERROR bad data chunk");
    CU_ASSERT_EQUAL(ev[6].st, PROTO_ERROR); /* the "\r\n" left after abcd */
    CU_ASSERT_EQUAL(ev[7].cmd, PROTO_CMD_INCR);
    CU_ASSERT_EQUAL(ev[8].st, PROTO_ERROR); /* cas with bad flags, block swallowed */
    CU_ASSERT_EQUAL(ev[9].cmd, PROTO_CMD_GATS);
    CU_ASSERT_EQUAL(ev[10].cmd, PROTO_CMD_DELETE);
    CU_ASSERT_EQUAL(ev[11].cmd, PROTO_CMD_STATS);
    CU_ASSERT_EQUAL(ev[12].ndata, 0);
    CU_ASSERT_EQUAL(ev[13].cmd, PROTO_CMD_GET);
    CU_ASSERT_EQUAL(ev[14].st, PROTO_CLOSE); /* and nothing after the hang-up */
}

static void test_split_at_every_byte(void)
{
    struct event whole[MAX_EVENTS], part[MAX_EVENTS];
    size_t len = sizeof(pipeline) - 1;
    size_t nw = run_stream(pipeline, len, NULL, 0, whole);
    size_t bad = 0;

    for (size_t cut = 1; cut < len; cut++) {
        size_t np = run_stream(pipeline, len, &cut, 1, part);
        if (!same_events(whole, nw, part, np)) {
            if (bad++ == 0)
                fprintf(stderr, "\n  split at %zu differs\n", cut);
        }
    }
    CU_ASSERT_EQUAL(bad, 0);
}

static void test_byte_at_a_time(void)
{
    struct event whole[MAX_EVENTS], part[MAX_EVENTS];
    size_t len = sizeof(pipeline) - 1;
    size_t *cuts = malloc(len * sizeof(*cuts));

    for (size_t i = 0; i < len - 1; i++)
        cuts[i] = i + 1;
    size_t nw = run_stream(pipeline, len, NULL, 0, whole);
    size_t np = run_stream(pipeline, len, cuts, len - 1, part);
    CU_ASSERT_TRUE(same_events(whole, nw, part, np));
    free(cuts);
}

/* Random bytes must never crash the parser, read out of bounds (ASan), or
 * report a request that consumed nothing. */
static void test_garbage(void)
{
    unsigned seed = 12345;
    char buf[512];
    static const char alphabet[] = "set get 0 1 2 9 -\r\n \x00\xff abc noreply cas incr";

    for (int round = 0; round < 20000; round++) {
        size_t len = (size_t)(rand_r(&seed) % sizeof(buf));
        bool text = rand_r(&seed) & 1;
        for (size_t i = 0; i < len; i++)
            buf[i] = text ? alphabet[rand_r(&seed) % (sizeof(alphabet) - 1)]
                          : (char)rand_r(&seed);
        size_t pos = 0;
        while (pos < len) {
            struct proto_req req;
            size_t consumed;
            enum proto_status st = proto_parse(buf + pos, len - pos, &lim, &req, &consumed);
            if (st == PROTO_NEED_MORE || st == PROTO_CLOSE)
                break;
            CU_ASSERT_FATAL(consumed > 0);
            if (st == PROTO_ERROR)
                CU_ASSERT_PTR_NOT_NULL(req.error);
            pos += consumed;
        }
    }
}

/* ---- helpers ------------------------------------------------------------- */

static void test_exptime(void)
{
    int64_t now = 1700000000000;

    CU_ASSERT_EQUAL(proto_exptime_abs_ms(0, now), 0);
    CU_ASSERT_EQUAL(proto_exptime_abs_ms(-1, now), PROTO_EXPTIME_EXPIRED);
    CU_ASSERT_EQUAL(proto_exptime_abs_ms(10, now), now + 10000);
    CU_ASSERT_EQUAL(proto_exptime_abs_ms(LIMIT_EXPTIME_RELATIVE_MAX_S, now),
                    now + (int64_t)LIMIT_EXPTIME_RELATIVE_MAX_S * 1000);
    /* Past 30 days it is an absolute unix time (here one in the past). */
    CU_ASSERT_EQUAL(proto_exptime_abs_ms(LIMIT_EXPTIME_RELATIVE_MAX_S + 1, now),
                    (int64_t)(LIMIT_EXPTIME_RELATIVE_MAX_S + 1) * 1000);
    CU_ASSERT_EQUAL(proto_exptime_abs_ms(1800000000, now), 1800000000000);
}

static void test_value_header(void)
{
    char hdr[PROTO_VALUE_HDR_MAX];
    size_t n = proto_fmt_value_hdr(hdr, "foo", 3, 4294967295u, 0, false, 0);

    CU_ASSERT_STRING_EQUAL(hdr, "VALUE foo 4294967295 0\r\n");
    CU_ASSERT_EQUAL(n, strlen(hdr));
    n = proto_fmt_value_hdr(hdr, "k", 1, 0, 1048576, true, UINT64_MAX);
    CU_ASSERT_STRING_EQUAL(hdr, "VALUE k 0 1048576 18446744073709551615\r\n");
    CU_ASSERT_EQUAL(n, strlen(hdr));
}

/* ---- UDP framing ----------------------------------------------------------- */

static void test_udp_header(void)
{
    unsigned char d[16];
    struct proto_udp_hdr h = {0xbeef, 0, 1, 0}, out;

    proto_udp_encode(d, &h);
    CU_ASSERT_EQUAL(d[0], 0xbe);
    CU_ASSERT_EQUAL(d[1], 0xef);
    CU_ASSERT_EQUAL(d[5], 1);
    CU_ASSERT_EQUAL(proto_udp_decode(d, 8, &out), 0);
    CU_ASSERT_EQUAL(out.req_id, 0xbeef);
    CU_ASSERT_EQUAL(out.total, 1);
    CU_ASSERT_EQUAL(proto_udp_decode(d, 7, &out), -EINVAL); /* short */
    h.total = 2;
    proto_udp_encode(d, &h);
    CU_ASSERT_EQUAL(proto_udp_decode(d, 16, &out), -EMSGSIZE); /* multi-datagram */
    h.total = 1;
    h.seq = 1;
    proto_udp_encode(d, &h);
    CU_ASSERT_EQUAL(proto_udp_decode(d, 16, &out), -EMSGSIZE);
    h.total = 0;
    h.seq = 0;
    proto_udp_encode(d, &h);
    CU_ASSERT_EQUAL(proto_udp_decode(d, 16, &out), -EMSGSIZE);
}

static void test_udp_datagrams(void)
{
    CU_ASSERT_EQUAL(proto_udp_datagrams(0), 0);
    CU_ASSERT_EQUAL(proto_udp_datagrams(1), 1);
    CU_ASSERT_EQUAL(proto_udp_datagrams(LIMIT_UDP_PAYLOAD_BYTES), 1);
    CU_ASSERT_EQUAL(proto_udp_datagrams(LIMIT_UDP_PAYLOAD_BYTES + 1), 2);
    CU_ASSERT_EQUAL(proto_udp_datagrams(1048576 + 100), 754);
}

/* ---- before authentication (proto_parse_auth) ---------------------------- */

static enum proto_auth_status parse_auth(const char *s, struct proto_auth *a, size_t *consumed)
{
    return proto_parse_auth(s, strlen(s), a, consumed);
}

static void test_auth_token(void)
{
    struct proto_auth a;
    size_t consumed;
    const char *s = "set anykey 7 99 15 noreply\r\nalice my secret\r\nget k\r\n";

    CU_ASSERT_EQUAL(parse_auth(s, &a, &consumed), PROTO_AUTH_TOKEN);
    CU_ASSERT_EQUAL(consumed, strlen("set anykey 7 99 15 noreply\r\nalice my secret\r\n"));
    CU_ASSERT_EQUAL(a.nuser, 5);
    CU_ASSERT_NSTRING_EQUAL(a.user, "alice", 5);
    CU_ASSERT_EQUAL(a.npass, 9); /* everything after the first space */
    CU_ASSERT_NSTRING_EQUAL(a.pass, "my secret", 9);
    /* Key, flags and exptime are not looked at. */
    CU_ASSERT_EQUAL(parse_auth("set x y z 3\r\na b\r\n", &a, &consumed), PROTO_AUTH_TOKEN);
    CU_ASSERT_EQUAL(a.npass, 1);
}

static void test_auth_refusals(void)
{
    static const char *const unauth[] = {
        "get foo\r\n", "version\r\n", "stats\r\n", "gets a b c\r\n", "set k 0 0\r\n",
        "set k 0 0 x\r\n", "add k 0 0 3\r\n", "delete k\r\n", "\r\n", "flush_all\n",
        "GET / HTTP\r\n", "sets k 0 0 3\r\n",
    };
    struct proto_auth a;
    size_t consumed;

    for (size_t i = 0; i < sizeof(unauth) / sizeof(unauth[0]); i++) {
        CU_ASSERT_EQUAL(parse_auth(unauth[i], &a, &consumed), PROTO_AUTH_REFUSE);
        CU_ASSERT_STRING_EQUAL(a.error, "CLIENT_ERROR unauthenticated");
        CU_ASSERT_EQUAL(consumed, strlen(unauth[i]));
    }
    /* memcached's strings for a bad token; the block is consumed either way. */
    CU_ASSERT_EQUAL(parse_auth("set k 0 0 5\r\nalice\r\n", &a, &consumed), PROTO_AUTH_REFUSE);
    CU_ASSERT_STRING_EQUAL(a.error, "CLIENT_ERROR bad authentication token format");
    CU_ASSERT_EQUAL(consumed, 20);
    CU_ASSERT_EQUAL(parse_auth("set k 0 0 0\r\n\r\n", &a, &consumed), PROTO_AUTH_REFUSE);
    CU_ASSERT_STRING_EQUAL(a.error, "CLIENT_ERROR bad authentication token format");
    CU_ASSERT_EQUAL(parse_auth("set k 0 0 3\r\na bXY", &a, &consumed), PROTO_AUTH_REFUSE);
    CU_ASSERT_STRING_EQUAL(a.error, "CLIENT_ERROR bad command line termination");
    CU_ASSERT_EQUAL(consumed, 18);
    CU_ASSERT_EQUAL(parse_auth("quit\r\nget k\r\n", &a, &consumed), PROTO_AUTH_QUIT);
    CU_ASSERT_EQUAL(consumed, 6);
}

static void test_auth_closes(void)
{
    struct proto_auth a;
    size_t consumed;
    char line[LIMIT_LINE_BYTES_MAX + 10];
    char hdr[64];

    /* A line too long: no newline within the limit, or one past it. */
    memset(line, 'x', sizeof(line) - 1);
    line[sizeof(line) - 1] = '\0';
    CU_ASSERT_EQUAL(parse_auth(line, &a, &consumed), PROTO_AUTH_CLOSE);
    CU_ASSERT_PTR_NULL(a.reply);
    line[LIMIT_LINE_BYTES_MAX + 5] = '\n';
    CU_ASSERT_EQUAL(proto_parse_auth(line, LIMIT_LINE_BYTES_MAX + 6, &a, &consumed),
                    PROTO_AUTH_CLOSE);
    /* At the limit it is only unauthenticated. */
    line[LIMIT_LINE_BYTES_MAX] = '\n';
    CU_ASSERT_EQUAL(proto_parse_auth(line, LIMIT_LINE_BYTES_MAX + 1, &a, &consumed),
                    PROTO_AUTH_REFUSE);
    /* A token longer than any credential: told, then closed, not buffered. */
    snprintf(hdr, sizeof(hdr), "set k 0 0 %d\r\n", LIMIT_AUTH_TOKEN_BYTES_MAX + 1);
    CU_ASSERT_EQUAL(parse_auth(hdr, &a, &consumed), PROTO_AUTH_CLOSE);
    CU_ASSERT_STRING_EQUAL(a.reply, "CLIENT_ERROR auth token too long");
    snprintf(hdr, sizeof(hdr), "set k 0 0 %d\r\n", LIMIT_AUTH_TOKEN_BYTES_MAX);
    CU_ASSERT_EQUAL(parse_auth(hdr, &a, &consumed), PROTO_AUTH_NEED_MORE);
    CU_ASSERT_EQUAL(a.need, strlen(hdr) + LIMIT_AUTH_TOKEN_BYTES_MAX + 2);
    /* Someone speaking HTTP: hang up without a word. */
    CU_ASSERT_EQUAL(parse_auth("GET / HTTP/1.1\r\n", &a, &consumed), PROTO_AUTH_CLOSE);
    CU_ASSERT_PTR_NULL(a.reply);
}

/* Fed in two pieces split anywhere, a stream parses as when fed whole. */
static void test_auth_split_at_every_byte(void)
{
    const char *s = "set a 0 0 9\r\nbob pw 12\r\n";
    size_t n = strlen(s), consumed;
    struct proto_auth a;

    for (size_t cut = 0; cut < n; cut++) {
        enum proto_auth_status st = proto_parse_auth(s, cut, &a, &consumed);
        CU_ASSERT_EQUAL(st, PROTO_AUTH_NEED_MORE);
        CU_ASSERT_EQUAL(consumed, 0);
        /* Once the line is in, the total is known. */
        if (cut >= 13)
            CU_ASSERT_EQUAL(a.need, n);
    }
    CU_ASSERT_EQUAL(proto_parse_auth(s, n, &a, &consumed), PROTO_AUTH_TOKEN);
    CU_ASSERT_EQUAL(consumed, n);
    CU_ASSERT_NSTRING_EQUAL(a.pass, "pw 12", 5);
}

void unit_proto_register(void)
{
    CU_pSuite s = unit_suite("proto");
    unit_test(s, "set with data block", test_set_basic);
    unit_test(s, "all storage commands", test_storage_commands);
    unit_test(s, "cas fields, noreply", test_cas_fields_and_noreply);
    unit_test(s, "bare \\n line end", test_line_ends_in_bare_newline);
    unit_test(s, "get/gets/gat/gats keys", test_retrieval);
    unit_test(s, "delete incr touch flush stats ...", test_other_commands);
    unit_test(s, "unknown command, missing args", test_unknown_and_missing_args);
    unit_test(s, "bad numbers", test_bad_numbers);
    unit_test(s, "noreply silences errors", test_noreply_on_errors);
    unit_test(s, "bad keys", test_bad_keys);
    unit_test(s, "stream: consume past the buffer, swallow as it arrives",
              test_stream_consume_and_swallow);
    unit_test(s, "error replies pinned to memcached's", test_error_replies_pinned_to_memcached);
    unit_test(s, "key check: every byte at every position", test_key_valid_every_byte);
    unit_test(s, "too many keys", test_too_many_keys);
    unit_test(s, "data block framing", test_data_block);
    unit_test(s, "too large is swallowed", test_too_large_is_swallowed);
    unit_test(s, "long lines", test_long_lines);
    unit_test(s, "HTTP request hangs up", test_http_hangs_up);
    unit_test(s, "pipeline parsed whole", test_pipeline_whole);
    unit_test(s, "split at every byte boundary", test_split_at_every_byte);
    unit_test(s, "one byte at a time", test_byte_at_a_time);
    unit_test(s, "the longest line, split before its newline",
              test_longest_line_split_before_its_newline);
    unit_test(s, "a long get line after many spaces waits for its newline",
              test_long_get_line_after_many_spaces_waits);
    unit_test(s, "random garbage", test_garbage);
    unit_test(s, "exptime rules", test_exptime);
    unit_test(s, "VALUE header", test_value_header);
    unit_test(s, "auth: the credentials set", test_auth_token);
    unit_test(s, "auth: everything else refused", test_auth_refusals);
    unit_test(s, "auth: long lines, long tokens, HTTP close", test_auth_closes);
    unit_test(s, "auth: split at every byte boundary", test_auth_split_at_every_byte);

    CU_pSuite u = unit_suite("udp");
    unit_test(u, "frame header", test_udp_header);
    unit_test(u, "datagram count", test_udp_datagrams);
}
