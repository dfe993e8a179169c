/*
 * proto.c - memcached text protocol parser (see memcached's doc/protocol.txt).
 *
 * Grammar accepted (tokens are separated by one or more spaces; a line ends
 * in "\n", optionally preceded by "\r"; <key> is 1..250 bytes without
 * control characters; numbers are plain decimal):
 *
 *   set|add|replace|append|prepend <key> <flags:u32> <exptime:i64> <bytes> [noreply]
 *   cas <key> <flags> <exptime> <bytes> <cas:u64> [noreply]
 *       followed by <bytes> of data and "\r\n"
 *   get|gets <key>+                 gat|gats <exptime> <key>+
 *   delete <key> [0] [noreply]      touch <key> <exptime> [noreply]
 *   incr|decr <key> <delta:u64> [noreply]
 *   flush_all [<delay>] [noreply]   verbosity <level> [noreply]
 *   stats [<arg>]   version   quit  keys [<prefix>]   snapshot
 *   (version and quit ignore any arguments, as memcached 1.6 does)
 *
 * Error handling keeps the byte stream in sync whenever it can:
 *   - unknown command, empty line, missing arguments  -> "ERROR"
 *   - a malformed storage line whose <bytes> is valid -> "CLIENT_ERROR ...",
 *     and the data block that follows is swallowed (*consumed covers it)
 *   - <bytes> itself invalid (negative, over 2^31-3)  -> "CLIENT_ERROR bad
 *     command line format"; nothing is swallowed (we cannot know how much)
 *   - <bytes> above the value limit                   -> PROTO_OK with
 *     too_large; the server swallows the block and answers SERVER_ERROR
 *   - data block not followed by "\r\n"                -> "CLIENT_ERROR bad
 *     data chunk", the block and the two bytes after it are dropped
 *   - a line too long, or an HTTP request line         -> PROTO_CLOSE
 * The exact error strings are memcached's where clients or tools compare them.
 *
 * Before a connection authenticates (serve --auth-file), proto_parse_auth()
 * reads memcached's ASCII authentication form instead, and nothing else:
 *
 *   set <any> <any> <any> <bytes> [...]   followed by "USER PASSWORD" and "\r\n"
 *   quit
 *   any other line                        -> "CLIENT_ERROR unauthenticated"
 *
 * The key, flags and exptime are ignored (memcached 1.6's -Y behaviour);
 * <bytes> is bounded by LIMIT_AUTH_TOKEN_BYTES_MAX, so an unauthenticated
 * client makes the server buffer at most a line and a token.
 */
#include "proto.h"

#include "limits.h"
#include "util.h"

#include <assert.h>
#include <errno.h>
#include <string.h>

#define MAX_TOKENS 8 /* longest fixed-form line: cas with noreply is 7 */

#define E_FORMAT "CLIENT_ERROR bad command line format"
#define E_EXPTIME "CLIENT_ERROR invalid exptime argument"
#define E_DELTA "CLIENT_ERROR invalid numeric delta argument"
#define E_CHUNK "CLIENT_ERROR bad data chunk"

struct token {
    const char *p;
    size_t n;
};

/* The length is kept beside the name: lookup compares it first. */
#define CMD(name, cmd) {name, sizeof(name) - 1, cmd}
static const struct {
    const char *name;
    size_t len;
    enum proto_cmd cmd;
} commands[] = {
    CMD("get", PROTO_CMD_GET),
    CMD("gets", PROTO_CMD_GETS),
    CMD("gat", PROTO_CMD_GAT),
    CMD("gats", PROTO_CMD_GATS),
    CMD("set", PROTO_CMD_SET),
    CMD("add", PROTO_CMD_ADD),
    CMD("replace", PROTO_CMD_REPLACE),
    CMD("append", PROTO_CMD_APPEND),
    CMD("prepend", PROTO_CMD_PREPEND),
    CMD("cas", PROTO_CMD_CAS),
    CMD("delete", PROTO_CMD_DELETE),
    CMD("incr", PROTO_CMD_INCR),
    CMD("decr", PROTO_CMD_DECR),
    CMD("touch", PROTO_CMD_TOUCH),
    CMD("flush_all", PROTO_CMD_FLUSH_ALL),
    CMD("version", PROTO_CMD_VERSION),
    CMD("verbosity", PROTO_CMD_VERBOSITY),
    CMD("stats", PROTO_CMD_STATS),
    CMD("quit", PROTO_CMD_QUIT),
    CMD("keys", PROTO_CMD_KEYS),
    CMD("snapshot", PROTO_CMD_SNAPSHOT),
};
#undef CMD

const char *proto_cmd_name(enum proto_cmd cmd)
{
    for (size_t i = 0; i < ARRAY_SIZE(commands); i++)
        if (commands[i].cmd == cmd)
            return commands[i].name;
    return "?";
}

bool proto_cmd_is_write(enum proto_cmd cmd)
{
    return cmd >= PROTO_CMD_SET && cmd <= PROTO_CMD_FLUSH_ALL;
}

static enum proto_cmd lookup(const struct token *t)
{
    for (size_t i = 0; i < ARRAY_SIZE(commands); i++)
        if (commands[i].len == t->n && memcmp(commands[i].name, t->p, t->n) == 0)
            return commands[i].cmd;
    return PROTO_CMD_NONE;
}

static bool is_retrieval(enum proto_cmd c)
{
    return c >= PROTO_CMD_GET && c <= PROTO_CMD_GATS;
}

/* Does any of the 8 bytes in w fall in 0x00..0x20, or equal 0x7f? A byte
 * b < 0x21 borrows in b - 0x21 and so sets its top bit there, and only
 * then with its own top bit clear; 0x7f is the byte that xor 0x7f makes 0.
 * The borrow may also flag the byte above a flagged one, never a clean
 * word: exact enough for "is anything wrong in these 8". */
static bool word_has_ctl(uint64_t w)
{
    const uint64_t ones = 0x0101010101010101ULL, high = 0x8080808080808080ULL;
    uint64_t x = w ^ (0x7f * ones);

    return (((w - 0x21 * ones) & ~w) | ((x - ones) & ~x)) & high;
}

bool proto_key_valid(const char *key, size_t n)
{
    size_t i = 0;

    if (n == 0 || n > LIMIT_KEY_BYTES_MAX)
        return false;
    /* 8 bytes a step: a 32-byte key took ~250 instructions a byte at a time. */
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, key + i, 8);
        if (word_has_ctl(w))
            return false;
    }
    for (; i < n; i++) {
        unsigned char c = (unsigned char)key[i];
        if (c <= 0x20 || c == 0x7f)
            return false;
    }
    return true;
}

/* Splits line[0..n) on spaces into at most max tokens; returns how many
 * there are in all (which may exceed max; only max are stored). */
static size_t tokenize(const char *line, size_t n, struct token *tok, size_t max)
{
    size_t count = 0, i = 0;

    while (i < n) {
        while (i < n && line[i] == ' ')
            i++;
        if (i == n)
            break;
        size_t s = i;
        const char *sp = memchr(line + i, ' ', n - i); /* a key is most of a line */
        i = sp ? (size_t)(sp - line) : n;
        if (count < max) {
            tok[count].p = line + s;
            tok[count].n = i - s;
        }
        count++;
    }
    return count;
}

static bool ends_with_http(const char *line, size_t n);

static bool tok_is(const struct token *t, const char *s)
{
    return t->n == strlen(s) && memcmp(t->p, s, t->n) == 0;
}

/* The start of the buffer looks like a retrieval command (for lines that are
 * still arriving): leading spaces, then "get " and friends. Any number of
 * spaces, as the tokenizer skips any number once the line is whole. */
static bool looks_like_retrieval(const char *buf, size_t len)
{
    static const char *const prefixes[] = {"get ", "gets ", "gat ", "gats "};
    size_t i = 0;

    while (i < len && buf[i] == ' ')
        i++;
    for (size_t k = 0; k < ARRAY_SIZE(prefixes); k++) {
        size_t pn = strlen(prefixes[k]);
        if (len - i >= pn && memcmp(buf + i, prefixes[k], pn) == 0)
            return true;
    }
    return false;
}

/* NULL if key[0..n) is a valid key, else what is wrong with it (for the
 * log: the reply is memcached's E_FORMAT). */
static const char *key_error(const char *key, size_t n)
{
    if (proto_key_valid(key, n))
        return NULL;
    return n > LIMIT_KEY_BYTES_MAX ? "key longer than 250 bytes" : "key has control characters";
}

static enum proto_status fail(struct proto_req *req, const char *msg, size_t consume,
                              size_t *consumed)
{
    req->error = msg;
    *consumed = consume;
    return PROTO_ERROR;
}

/* A bad key: memcached's reply, the detail for the log. */
static enum proto_status fail_key(struct proto_req *req, const char *why, size_t consume,
                                  size_t *consumed)
{
    req->detail = why;
    return fail(req, E_FORMAT, consume, consumed);
}

static enum proto_status close_conn(struct proto_req *req, const char *why)
{
    req->error = why;
    return PROTO_CLOSE;
}

/* Largest <bytes> accepted at all: the block plus "\r\n" must fit an int32
 * (memcached's rule; "set k 0 0 2147483647" is a format error). */
#define DATA_BYTES_VALID_MAX ((uint64_t)INT32_MAX - 2)

static enum proto_status parse_storage(const char *buf, size_t len, size_t line_len,
                                       const struct token *tok, size_t ntok,
                                       const struct proto_limits *lim, struct proto_req *req,
                                       size_t *consumed)
{
    bool is_cas = req->cmd == PROTO_CMD_CAS;
    size_t base = is_cas ? 6 : 5; /* tokens without noreply */
    uint64_t nbytes;

    req->noreply = ntok > 0 && tok_is(&tok[ntok - 1], "noreply");
    if (ntok < 5)
        return fail(req, "ERROR", line_len, consumed);
    /* <bytes> decides whether the stream can stay in sync. */
    if (util_parse_u64(tok[4].p, tok[4].n, &nbytes) < 0 || nbytes > DATA_BYTES_VALID_MAX)
        return fail(req, E_FORMAT, line_len, consumed);

    size_t total = line_len + (size_t)nbytes + 2;
    /* The line is bad but its data block is delimited: swallow it (where
     * memcached would run the block's bytes as commands). A wrong number of
     * arguments is memcached's "ERROR", a bad one its E_FORMAT. */
    if (!(ntok == base || (ntok == base + 1 && req->noreply))) {
        req->detail = "wrong number of arguments";
        req->noreply = false; /* memcached answers, noreply or not */
        return fail(req, "ERROR", total, consumed);
    }
    if (util_parse_u32(tok[2].p, tok[2].n, &req->flags) < 0 ||
        util_parse_i64(tok[3].p, tok[3].n, &req->exptime) < 0 ||
        (is_cas && util_parse_u64(tok[5].p, tok[5].n, &req->cas) < 0))
        return fail(req, E_FORMAT, total, consumed);
    const char *why = key_error(tok[1].p, tok[1].n);
    if (why != NULL)
        return fail_key(req, why, total, consumed);

    req->key = tok[1].p;
    req->nkey = tok[1].n;
    req->ndata = (size_t)nbytes;
    if (nbytes > lim->value_bytes_max) {
        req->too_large = true;
        *consumed = total;
        return PROTO_OK;
    }
    if (len < total) {
        req->need = total;
        return PROTO_NEED_MORE;
    }
    if (buf[line_len + nbytes] != '\r' || buf[line_len + nbytes + 1] != '\n')
        return fail(req, E_CHUNK, total, consumed);
    req->data = buf + line_len;
    *consumed = total;
    return PROTO_OK;
}

static enum proto_status parse_retrieval(const char *line, size_t n, size_t line_len,
                                         const struct proto_limits *lim, struct proto_req *req,
                                         size_t *consumed)
{
    struct token first[2];
    size_t ntok = tokenize(line, n, first, 2);
    size_t nkeys_start = req->cmd == PROTO_CMD_GAT || req->cmd == PROTO_CMD_GATS ? 2 : 1;

    /* "get" needs a key; "gat" an exptime ("gat <exptime>" without a key
     * is answered END, like memcached). */
    if (ntok < 2)
        return fail(req, "ERROR", line_len, consumed);
    if (nkeys_start == 2 && util_parse_i64(first[1].p, first[1].n, &req->exptime) < 0)
        return fail(req, E_EXPTIME, line_len, consumed);

    const char *keys = first[nkeys_start - 1].p + first[nkeys_start - 1].n;
    req->keys = keys;
    req->keys_len = (size_t)(line + n - keys);

    /* Check every key now, so the server never answers half a request. */
    size_t pos = 0, count = 0;
    const char *k;
    size_t nk;
    while (proto_next_key(req, &pos, &k, &nk)) {
        const char *why = key_error(k, nk);
        if (why != NULL)
            return fail_key(req, why, line_len, consumed);
        if (++count > lim->get_keys_max)
            return fail(req, "CLIENT_ERROR too many keys in one request", line_len, consumed);
    }
    req->nkeys = count;
    *consumed = line_len;
    return PROTO_OK;
}

bool proto_next_key(const struct proto_req *req, size_t *pos, const char **key, size_t *nkey)
{
    size_t i = *pos;

    while (i < req->keys_len && req->keys[i] == ' ')
        i++;
    if (i == req->keys_len) {
        *pos = i;
        return false;
    }
    size_t s = i;
    while (i < req->keys_len && req->keys[i] != ' ')
        i++;
    *key = req->keys + s;
    *nkey = i - s;
    *pos = i;
    return true;
}

static enum proto_status parse_other(const struct token *tok, size_t ntok, size_t line_len,
                                     struct proto_req *req, size_t *consumed)
{
    bool nr = ntok > 1 && tok_is(&tok[ntok - 1], "noreply");
    size_t args = ntok - 1 - (nr ? 1 : 0); /* arguments besides noreply */
    const char *why;

    switch (req->cmd) {
    case PROTO_CMD_DELETE:
        if (ntok < 2)
            return fail(req, "ERROR", line_len, consumed);
        req->noreply = nr;
        /* "delete <key> 0" is the legacy zero hold time; anything else is
         * rejected (memcached's wording). */
        if (args > 2 || (args == 2 && !tok_is(&tok[2], "0")))
            return fail(req, E_FORMAT ".  Usage: delete <key> [noreply]", line_len, consumed);
        if ((why = key_error(tok[1].p, tok[1].n)) != NULL)
            return fail_key(req, why, line_len, consumed);
        break;
    case PROTO_CMD_INCR:
    case PROTO_CMD_DECR:
        req->noreply = nr;
        if (args != 2)
            return fail(req, ntok < 3 ? "ERROR" : E_FORMAT, line_len, consumed);
        if ((why = key_error(tok[1].p, tok[1].n)) != NULL)
            return fail_key(req, why, line_len, consumed);
        if (util_parse_u64(tok[2].p, tok[2].n, &req->delta) < 0)
            return fail(req, E_DELTA, line_len, consumed);
        break;
    case PROTO_CMD_TOUCH:
        req->noreply = nr;
        if (args != 2)
            return fail(req, ntok < 3 ? "ERROR" : E_FORMAT, line_len, consumed);
        if ((why = key_error(tok[1].p, tok[1].n)) != NULL)
            return fail_key(req, why, line_len, consumed);
        if (util_parse_i64(tok[2].p, tok[2].n, &req->exptime) < 0)
            return fail(req, E_EXPTIME, line_len, consumed);
        break;
    case PROTO_CMD_FLUSH_ALL:
        req->noreply = nr;
        if (args > 1)
            return fail(req, E_FORMAT, line_len, consumed);
        if (args == 1 && util_parse_i64(tok[1].p, tok[1].n, &req->delay) < 0)
            return fail(req, E_EXPTIME, line_len, consumed);
        return *consumed = line_len, PROTO_OK;
    case PROTO_CMD_VERBOSITY:
        req->noreply = nr;
        if (args != 1)
            return fail(req, "ERROR", line_len, consumed);
        if (util_parse_u32(tok[1].p, tok[1].n, &req->verbosity) < 0)
            return fail(req, E_FORMAT, line_len, consumed);
        return *consumed = line_len, PROTO_OK;
    case PROTO_CMD_STATS:
    case PROTO_CMD_KEYS:
        if (ntok > 2)
            return fail(req, E_FORMAT, line_len, consumed);
        if (ntok == 2) {
            req->arg = tok[1].p;
            req->narg = tok[1].n;
        }
        return *consumed = line_len, PROTO_OK;
    case PROTO_CMD_SNAPSHOT:
        if (ntok != 1)
            return fail(req, E_FORMAT, line_len, consumed);
        return *consumed = line_len, PROTO_OK;
    case PROTO_CMD_VERSION:
    case PROTO_CMD_QUIT:
        /* memcached 1.6 ignores anything after these (and tools expect it). */
        return *consumed = line_len, PROTO_OK;
    default:
        return fail(req, "ERROR", line_len, consumed);
    }
    req->key = tok[1].p;
    req->nkey = tok[1].n;
    *consumed = line_len;
    return PROTO_OK;
}

enum proto_status proto_parse(const char *buf, size_t len, const struct proto_limits *lim,
                              struct proto_req *req, size_t *consumed)
{
    const char *nl;
    size_t line_len, n;
    struct token tok[MAX_TOKENS];
    size_t ntok;

    memset(req, 0, sizeof(*req));
    *consumed = 0;
    if (len == 0)
        return PROTO_NEED_MORE;

    nl = memchr(buf, '\n', len);
    if (nl == NULL) {
        /* Still arriving: keep waiting only while it can become valid. A
         * "\r" at the end may be the one before the newline, which does not
         * count against the limits. */
        n = buf[len - 1] == '\r' ? len - 1 : len;
        if (n > LIMIT_LINE_BYTES_MAX &&
            (!looks_like_retrieval(buf, len) || n > lim->get_line_bytes_max))
            return close_conn(req, "line too long");
        return PROTO_NEED_MORE;
    }
    line_len = (size_t)(nl - buf) + 1;
    n = line_len - 1;
    if (n > 0 && buf[n - 1] == '\r')
        n--;

    ntok = tokenize(buf, n, tok, MAX_TOKENS);
    if (ntok == 0)
        return fail(req, "ERROR", line_len, consumed);
    req->cmd = lookup(&tok[0]);

    if (is_retrieval(req->cmd)) {
        if (n > lim->get_line_bytes_max)
            return close_conn(req, "line too long");
        return parse_retrieval(buf, n, line_len, lim, req, consumed);
    }
    if (n > LIMIT_LINE_BYTES_MAX)
        return close_conn(req, "line too long");
    if (req->cmd == PROTO_CMD_NONE) {
        /* "GET / HTTP/1.1": someone speaking HTTP at us; hang up. */
        if (ends_with_http(buf, n))
            return close_conn(req, "HTTP request on the memcached port");
        return fail(req, "ERROR", line_len, consumed);
    }
    if (ntok > MAX_TOKENS)
        return fail(req, E_FORMAT, line_len, consumed);
    if (req->cmd >= PROTO_CMD_SET && req->cmd <= PROTO_CMD_CAS)
        return parse_storage(buf, len, line_len, tok, ntok, lim, req, consumed);
    return parse_other(tok, ntok, line_len, req, consumed);
}

/* True if the last token of line[0..n) starts with "HTTP/". */
static bool ends_with_http(const char *line, size_t n)
{
    size_t e = n, b;

    while (e > 0 && line[e - 1] == ' ')
        e--;
    b = e;
    while (b > 0 && line[b - 1] != ' ')
        b--;
    return e - b >= 5 && memcmp(line + b, "HTTP/", 5) == 0;
}

enum proto_auth_status proto_parse_auth(const char *buf, size_t len, struct proto_auth *a,
                                        size_t *consumed)
{
    struct token tok[5];
    const char *nl, *data, *sp;
    size_t line_len, n, ntok, total;
    uint64_t nbytes;

    memset(a, 0, sizeof(*a));
    *consumed = 0;
    if (len == 0)
        return PROTO_AUTH_NEED_MORE;
    nl = memchr(buf, '\n', len < LIMIT_LINE_BYTES_MAX + 2 ? len : LIMIT_LINE_BYTES_MAX + 2);
    if (nl == NULL) {
        if (len > LIMIT_LINE_BYTES_MAX + 1) {
            a->error = "line too long before authentication";
            return PROTO_AUTH_CLOSE;
        }
        return PROTO_AUTH_NEED_MORE;
    }
    line_len = (size_t)(nl - buf) + 1;
    n = line_len - 1;
    if (n > 0 && buf[n - 1] == '\r')
        n--;
    if (n > LIMIT_LINE_BYTES_MAX) {
        a->error = "line too long before authentication";
        return PROTO_AUTH_CLOSE;
    }
    ntok = tokenize(buf, n, tok, 5);
    if (ntok >= 1 && tok_is(&tok[0], "quit")) {
        *consumed = line_len;
        return PROTO_AUTH_QUIT;
    }
    if (ntok < 5 || !tok_is(&tok[0], "set") || util_parse_u64(tok[4].p, tok[4].n, &nbytes) < 0) {
        if (ends_with_http(buf, n)) {
            a->error = "HTTP request on the memcached port";
            return PROTO_AUTH_CLOSE;
        }
        a->error = "CLIENT_ERROR unauthenticated";
        *consumed = line_len;
        return PROTO_AUTH_REFUSE;
    }
    if (nbytes > LIMIT_AUTH_TOKEN_BYTES_MAX) {
        a->error = "authentication token too long";
        a->reply = "CLIENT_ERROR auth token too long";
        return PROTO_AUTH_CLOSE;
    }
    total = line_len + (size_t)nbytes + 2;
    if (len < total) {
        a->need = total;
        return PROTO_AUTH_NEED_MORE;
    }
    *consumed = total;
    data = buf + line_len;
    if (data[nbytes] != '\r' || data[nbytes + 1] != '\n') {
        a->error = "CLIENT_ERROR bad command line termination";
        return PROTO_AUTH_REFUSE;
    }
    sp = memchr(data, ' ', (size_t)nbytes);
    if (sp == NULL) {
        a->error = "CLIENT_ERROR bad authentication token format";
        return PROTO_AUTH_REFUSE;
    }
    a->user = data;
    a->nuser = (size_t)(sp - data);
    a->pass = sp + 1;
    a->npass = (size_t)(data + nbytes - (sp + 1));
    return PROTO_AUTH_TOKEN;
}

int64_t proto_exptime_abs_ms(int64_t exptime, int64_t now_ms)
{
    if (exptime == 0)
        return 0;
    if (exptime < 0)
        return PROTO_EXPTIME_EXPIRED;
    if (exptime <= LIMIT_EXPTIME_RELATIVE_MAX_S)
        return now_ms + exptime * 1000;
    if (exptime > INT64_MAX / 1000)
        return INT64_MAX;
    return exptime * 1000;
}

size_t proto_fmt_value_hdr(char *dst, const char *key, size_t nkey, uint32_t flags,
                           size_t nbytes, bool with_cas, uint64_t cas)
{
    size_t o = 0;

    memcpy(dst, "VALUE ", 6);
    o = 6;
    memcpy(dst + o, key, nkey);
    o += nkey;
    dst[o++] = ' ';
    o += util_fmt_u64(dst + o, flags);
    dst[o++] = ' ';
    o += util_fmt_u64(dst + o, nbytes);
    if (with_cas) {
        dst[o++] = ' ';
        o += util_fmt_u64(dst + o, cas);
    }
    dst[o++] = '\r';
    dst[o++] = '\n';
    dst[o] = '\0';
    return o;
}

void proto_udp_read(const void *dgram, struct proto_udp_hdr *hdr)
{
    const unsigned char *p = dgram;

    hdr->req_id = (uint16_t)(p[0] << 8 | p[1]);
    hdr->seq = (uint16_t)(p[2] << 8 | p[3]);
    hdr->total = (uint16_t)(p[4] << 8 | p[5]);
    hdr->reserved = (uint16_t)(p[6] << 8 | p[7]);
}

int proto_udp_decode(const void *dgram, size_t len, struct proto_udp_hdr *hdr)
{
    if (len < LIMIT_UDP_HEADER_BYTES)
        return -EINVAL;
    proto_udp_read(dgram, hdr);
    if (hdr->total != 1 || hdr->seq != 0)
        return -EMSGSIZE;
    return 0;
}

void proto_udp_encode(void *dst, const struct proto_udp_hdr *hdr)
{
    unsigned char *p = dst;
    uint16_t v[4] = {hdr->req_id, hdr->seq, hdr->total, hdr->reserved};

    for (int i = 0; i < 4; i++) {
        p[2 * i] = (unsigned char)(v[i] >> 8);
        p[2 * i + 1] = (unsigned char)(v[i] & 0xff);
    }
}

size_t proto_stream_consume(size_t len, size_t pos, size_t consumed, uint64_t *swallow)
{
    if (consumed > len - pos) {
        *swallow += consumed - (len - pos);
        return len;
    }
    return pos + consumed;
}

size_t proto_stream_swallow(char *buf, size_t *len, uint64_t *swallow)
{
    size_t d = *len < *swallow ? *len : (size_t)*swallow;

    memmove(buf, buf + d, *len - d);
    *len -= d;
    *swallow -= d;
    return d;
}

size_t proto_udp_datagrams(size_t n)
{
    return (n + LIMIT_UDP_PAYLOAD_BYTES - 1) / LIMIT_UDP_PAYLOAD_BYTES;
}

size_t proto_udp_cut(void *dst, uint16_t req_id, const char *reply, size_t n, size_t i)
{
    size_t count = proto_udp_datagrams(n), off = i * LIMIT_UDP_PAYLOAD_BYTES;
    size_t len = n - off < LIMIT_UDP_PAYLOAD_BYTES ? n - off : LIMIT_UDP_PAYLOAD_BYTES;
    struct proto_udp_hdr h = {req_id, (uint16_t)i, (uint16_t)count, 0};

    assert(i < count && count <= LIMIT_UDP_DATAGRAMS_MAX);
    proto_udp_encode(dst, &h);
    memcpy((char *)dst + LIMIT_UDP_HEADER_BYTES, reply + off, len);
    return LIMIT_UDP_HEADER_BYTES + len;
}
