/*
 * client.c - blocking memcached text-protocol client (see client.h).
 *
 * Design
 *
 * Reply grammar. Replies are self-describing, so the parser needs no hint
 * about which command was sent: the first line's word says whether the reply
 * is one line (STORED, NOT_FOUND, "VERSION x", a number, an error...) or a
 * list ended by END (VALUE, STAT, KEY, and the ITEM/PREFIX lines of some
 * stats sub-commands). VALUE lines announce the length of their data block;
 * the data is binary (it may hold CRLF, NUL, or "\r\nEND\r\n") and is
 * skipped by that length, never scanned. Lines, on the other hand, are
 * text: at most 2048 bytes (the server's own limit), no control bytes, CRLF
 * at the end; anything else is -EPROTO, so a stream that went out of step
 * is reported instead of being misread.
 *
 * The parser is pure and restartable: it works on the bytes received so far
 * and answers complete / need more / malformed. The reader parses again only
 * once the buffer reaches the length the last parse said it needs (r->need),
 * so a large value costs nothing per refill, and it resumes after the last
 * complete list item (client_reply_parse_more) unless the buffer moved, so a
 * listing of a million keys is parsed in linear time, not quadratic.
 *
 * TCP. One request, one reply, on a non-blocking socket driven by poll(2).
 * Sending and receiving are interleaved: a server may answer (say
 * SERVER_ERROR object too large) and close before it has read a large data
 * block, and that answer is worth more than the EPIPE the send would give.
 * Any failure leaves the stream out of step (a late reply would be taken for
 * the next one), so the connection is closed.
 *
 * UDP. memcached framing: an 8-byte header (request id, sequence, count,
 * reserved; big-endian u16) in front of each datagram. A request must fit
 * one datagram, as memcached does not reassemble requests. A reply may span
 * many datagrams; they can arrive out of order, twice, or belong to an older
 * request whose reply came late, so they are collected by sequence number
 * under the current request id (client_udp_asm_*) and joined when all are
 * in. memcached 1.6 goes further: each VALUE of a multi-key get is its own
 * datagram set (sequence 0..n-1 of n) under the same request id, the last
 * one ending with END. So sets are joined one after the other, in the order
 * they complete, until the parser says the reply is complete. A set is known
 * only by (id, sequence, count), so a datagram of the next set that overtakes
 * the current one is dropped (the attempt then times out and, if allowed, is
 * retried); on a single path, as on loopback or a LAN, that does not happen.
 * The socket is connect(2)ed, so only the server's datagrams are read and
 * an ICMP port-unreachable surfaces as ECONNREFUSED instead of a timeout.
 * SO_RCVBUF is raised because a 30 KB value comes back as ~25 datagrams in a
 * burst, and a datagram dropped by a full socket buffer costs a whole retry.
 *
 * Timeouts and retries. Every attempt has a deadline of timeout_ms from its
 * start (connect; or send + whole reply), so a server trickling bytes cannot
 * hold the caller forever. Over UDP a timed-out attempt is repeated with a
 * fresh request id (late datagrams of the old one are then ignored), but only
 * for commands whose repetition is harmless: a lost reply to incr or add says
 * nothing about whether the write happened, and repeating it could apply it
 * twice, so that case is returned as a timeout with an unknown outcome.
 */
#include "client.h"

#include "limits.h"
#include "log.h"
#include "proto.h"
#include "util.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define MOD "client"

/* Longest reply line accepted (the server's own request line limit). */
#define LINE_BYTES_MAX LIMIT_LINE_BYTES_MAX
/* Asked for as SO_RCVBUF; the kernel caps it at net.core.rmem_max. */
#define UDP_RCVBUF_WANT (64 * 1024 * 1024)
/* TCP reads are done in chunks of at least this much free space. */
#define TCP_READ_CHUNK (64 * 1024)

static void set_err(struct client *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void set_err(struct client *c, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(c->err, sizeof(c->err), fmt, ap);
    va_end(ap);
}

const char *client_error(const struct client *c)
{
    return c->err[0] ? c->err : "no error";
}

/* ------------------------------------------------------------------------ */
/* Keys and commands                                                        */

bool client_key_valid(const char *key, size_t len)
{
    /* The server's rule, so clie refuses exactly what serve would. */
    return key != NULL && proto_key_valid(key, len);
}

static bool span_is(const char *s, size_t n, const char *lit)
{
    size_t m = strlen(lit);
    return n == m && memcmp(s, lit, m) == 0;
}

bool client_cmd_idempotent(const char *line, size_t len)
{
    static const char *const safe[] = {"get",     "gets",  "set",  "delete",   "touch",
                                       "version", "stats", "keys", "flush_all"};
    const char *sp = memchr(line, ' ', len);
    size_t wl = sp ? (size_t)(sp - line) : len;

    for (size_t i = 0; i < ARRAY_SIZE(safe); i++)
        if (span_is(line, wl, safe[i]))
            return true;
    return false;
}

/* ------------------------------------------------------------------------ */
/* Reply parser                                                             */

const char *client_reply_type_name(enum client_reply_type t)
{
    static const char *const names[] = {
        [CLIENT_REPLY_LIST] = "LIST",
        [CLIENT_REPLY_STORED] = "STORED",
        [CLIENT_REPLY_NOT_STORED] = "NOT_STORED",
        [CLIENT_REPLY_EXISTS] = "EXISTS",
        [CLIENT_REPLY_NOT_FOUND] = "NOT_FOUND",
        [CLIENT_REPLY_DELETED] = "DELETED",
        [CLIENT_REPLY_TOUCHED] = "TOUCHED",
        [CLIENT_REPLY_OK] = "OK",
        [CLIENT_REPLY_VERSION] = "VERSION",
        [CLIENT_REPLY_NUMBER] = "NUMBER",
        [CLIENT_REPLY_OTHER] = "OTHER",
        [CLIENT_REPLY_ERROR] = "ERROR",
        [CLIENT_REPLY_CLIENT_ERROR] = "CLIENT_ERROR",
        [CLIENT_REPLY_SERVER_ERROR] = "SERVER_ERROR",
    };
    if ((unsigned)t >= ARRAY_SIZE(names) || names[t] == NULL)
        return "?";
    return names[t];
}

void client_reply_init(struct client_reply *r)
{
    memset(r, 0, sizeof(*r));
    r->type = CLIENT_REPLY_OTHER;
}

void client_reply_free(struct client_reply *r)
{
    free(r->items);
    buf_free(&r->raw);
    client_reply_init(r);
}

/* What the first word of a line makes of it. */
enum line_class {
    LINE_SINGLE, /* a one-line reply */
    LINE_ITEM,   /* a list item; *kind says which */
    LINE_END,
    LINE_ERROR, /* ERROR, CLIENT_ERROR, SERVER_ERROR */
};

/*
 * Finds the line starting at off. Returns 1 with [off, *end) the line and
 * *next the offset after its CRLF; 0 when the line is not complete yet (sets
 * *need); -EPROTO for a bare LF, an empty or overlong line, or control bytes.
 */
static int take_line(const char *buf, size_t len, size_t off, size_t *end, size_t *next,
                     size_t *need)
{
    size_t avail = len - off;
    size_t scan = avail < LINE_BYTES_MAX + 2 ? avail : LINE_BYTES_MAX + 2;
    const char *nl = memchr(buf + off, '\n', scan);
    size_t p;

    if (nl == NULL) {
        if (avail >= LINE_BYTES_MAX + 2)
            return -EPROTO;
        *need = len + 1;
        return 0;
    }
    p = (size_t)(nl - buf);
    if (p == off || buf[p - 1] != '\r' || p - 1 == off)
        return -EPROTO;
    for (size_t i = off; i < p - 1; i++) {
        unsigned char ch = (unsigned char)buf[i];
        if (ch < 0x20 || ch == 0x7f)
            return -EPROTO;
    }
    *end = p - 1;
    *next = p + 1;
    return 1;
}

static enum line_class classify(const char *line, size_t n, enum client_item_kind *kind)
{
    const char *sp = memchr(line, ' ', n);
    size_t wl = sp ? (size_t)(sp - line) : n;

    if (span_is(line, wl, "VALUE")) {
        *kind = CLIENT_ITEM_VALUE;
        return LINE_ITEM;
    }
    if (span_is(line, wl, "STAT")) {
        *kind = CLIENT_ITEM_STAT;
        return LINE_ITEM;
    }
    if (span_is(line, wl, "KEY")) {
        *kind = CLIENT_ITEM_KEY;
        return LINE_ITEM;
    }
    if (span_is(line, wl, "ITEM") || span_is(line, wl, "PREFIX")) {
        *kind = CLIENT_ITEM_LINE;
        return LINE_ITEM;
    }
    if (span_is(line, n, "END"))
        return LINE_END;
    if (span_is(line, wl, "ERROR") || span_is(line, wl, "CLIENT_ERROR") ||
        span_is(line, wl, "SERVER_ERROR"))
        return LINE_ERROR;
    return LINE_SINGLE;
}

/* Sets msg to what follows the first word and its space (empty if none). */
static void set_msg(struct client_reply *r, const char *line, size_t n)
{
    const char *sp = memchr(line, ' ', n);

    r->msg = sp ? sp + 1 : line + n;
    r->msg_len = sp ? n - (size_t)(sp + 1 - line) : 0;
}

static void set_error(struct client_reply *r, const char *line, size_t n)
{
    const char *sp = memchr(line, ' ', n);
    size_t wl = sp ? (size_t)(sp - line) : n;

    if (span_is(line, wl, "ERROR"))
        r->type = CLIENT_REPLY_ERROR;
    else if (span_is(line, wl, "CLIENT_ERROR"))
        r->type = CLIENT_REPLY_CLIENT_ERROR;
    else
        r->type = CLIENT_REPLY_SERVER_ERROR;
    r->line = line;
    r->line_len = n;
    set_msg(r, line, n);
}

static void set_single(struct client_reply *r, const char *line, size_t n)
{
    static const struct {
        const char *word;
        enum client_reply_type type;
    } words[] = {
        {"STORED", CLIENT_REPLY_STORED},   {"NOT_STORED", CLIENT_REPLY_NOT_STORED},
        {"EXISTS", CLIENT_REPLY_EXISTS},   {"NOT_FOUND", CLIENT_REPLY_NOT_FOUND},
        {"DELETED", CLIENT_REPLY_DELETED}, {"TOUCHED", CLIENT_REPLY_TOUCHED},
        {"OK", CLIENT_REPLY_OK},
    };
    const char *sp = memchr(line, ' ', n);
    size_t wl = sp ? (size_t)(sp - line) : n;

    r->line = line;
    r->line_len = n;
    r->type = CLIENT_REPLY_OTHER;
    for (size_t i = 0; i < ARRAY_SIZE(words); i++) {
        if (span_is(line, n, words[i].word)) {
            r->type = words[i].type;
            return;
        }
    }
    if (span_is(line, wl, "VERSION")) {
        r->type = CLIENT_REPLY_VERSION;
        set_msg(r, line, n);
        return;
    }
    /* A number too big for u64 is left as OTHER; the caller sees the text. */
    if (util_parse_u64(line, n, &r->number) == 0)
        r->type = CLIENT_REPLY_NUMBER;
}

struct tok {
    const char *p;
    size_t n;
};

/* Splits line on single spaces into at most max tokens. Returns the count, or
 * -EPROTO for an empty token (double, leading or trailing space) or too many. */
static int split(const char *line, size_t n, struct tok *t, int max)
{
    int count = 0;
    size_t i = 0;

    for (;;) {
        const char *sp = memchr(line + i, ' ', n - i);
        size_t e = sp ? (size_t)(sp - line) : n;
        if (e == i || count == max)
            return -EPROTO;
        t[count].p = line + i;
        t[count].n = e - i;
        count++;
        if (sp == NULL)
            return count;
        i = e + 1;
    }
}

static int push_item(struct client_reply *r, const struct client_item *it)
{
    if (r->n_items == r->cap_items) {
        size_t cap = r->cap_items ? r->cap_items * 2 : 8;
        struct client_item *p;
        if (cap > SIZE_MAX / sizeof(*p))
            return -ENOMEM;
        p = realloc(r->items, cap * sizeof(*p));
        if (p == NULL)
            return -ENOMEM;
        r->items = p;
        r->cap_items = cap;
    }
    r->items[r->n_items++] = *it;
    return 0;
}

/*
 * Parses the list item whose line is [off, end) and whose next line starts
 * at *next; for VALUE, moves *next past the data block. Returns 1, 0 (need
 * more), -EPROTO, -ENOMEM.
 */
static int parse_item(struct client_reply *r, enum client_item_kind kind, const char *buf,
                      size_t len, size_t off, size_t end, size_t *next)
{
    const char *line = buf + off;
    size_t n = end - off;
    struct client_item it = {.kind = kind, .line = line, .line_len = n};
    struct tok t[5];
    int nt;

    switch (kind) {
    case CLIENT_ITEM_VALUE: {
        uint64_t bytes;
        size_t d = *next;
        nt = split(line, n, t, 5);
        if (nt < 4)
            return -EPROTO;
        if (!client_key_valid(t[1].p, t[1].n) ||
            util_parse_u32(t[2].p, t[2].n, &it.flags) < 0 ||
            util_parse_u64(t[3].p, t[3].n, &bytes) < 0 ||
            bytes > LIMIT_VALUE_BYTES_CEILING)
            return -EPROTO;
        if (nt == 5) {
            if (util_parse_u64(t[4].p, t[4].n, &it.cas) < 0)
                return -EPROTO;
            it.has_cas = true;
        }
        it.key = t[1].p;
        it.key_len = t[1].n;
        it.data = buf + d;
        it.data_len = (size_t)bytes;
        /* Check the CRLF after the data as soon as its bytes are here. */
        if (len > d + bytes && buf[d + bytes] != '\r')
            return -EPROTO;
        if (len > d + bytes + 1 && buf[d + bytes + 1] != '\n')
            return -EPROTO;
        if (len < d + bytes + 2) {
            r->need = d + (size_t)bytes + 2;
            return 0;
        }
        *next = d + (size_t)bytes + 2;
        break;
    }
    case CLIENT_ITEM_STAT: {
        const char *name = line + 5, *sp;
        if (n <= 5 || line[4] != ' ')
            return -EPROTO;
        sp = memchr(name, ' ', n - 5);
        it.key = name;
        it.key_len = sp ? (size_t)(sp - name) : n - 5;
        if (it.key_len == 0)
            return -EPROTO;
        it.data = sp ? sp + 1 : line + n;
        it.data_len = sp ? (size_t)(line + n - (sp + 1)) : 0;
        break;
    }
    case CLIENT_ITEM_KEY:
        nt = split(line, n, t, 2);
        if (nt != 2 || !client_key_valid(t[1].p, t[1].n))
            return -EPROTO;
        it.key = t[1].p;
        it.key_len = t[1].n;
        break;
    case CLIENT_ITEM_LINE:
        break;
    }
    if (push_item(r, &it) < 0)
        return -ENOMEM;
    return 1;
}

/*
 * The parser proper. Lines are taken from `off` on; off == 0 is the reply's
 * first line, which alone may be a one-line reply. After each complete list
 * item the position is saved in r->res_*, so that client_reply_parse_more()
 * can start again from there instead of from byte 0.
 */
static int parse_from(struct client_reply *r, const char *buf, size_t len, size_t off,
                      enum client_item_kind list_kind)
{
    enum client_item_kind kind;
    enum line_class cls;
    size_t end, next;
    int rc;

    for (;;) {
        rc = take_line(buf, len, off, &end, &next, &r->need);
        if (rc <= 0)
            return rc;
        kind = CLIENT_ITEM_LINE;
        cls = classify(buf + off, end - off, &kind);
        if (off == 0) {
            if (cls == LINE_SINGLE) {
                set_single(r, buf, end);
                r->len = next;
                return 1;
            }
            list_kind = kind;
        }
        if (cls == LINE_END) {
            r->type = CLIENT_REPLY_LIST;
            r->line = buf + off;
            r->line_len = end - off;
            r->len = next;
            return 1;
        }
        if (cls == LINE_ERROR) {
            set_error(r, buf + off, end - off);
            r->len = next;
            return 1;
        }
        /* A one-line reply, or another kind of item, inside a list. */
        if (cls != LINE_ITEM || kind != list_kind)
            return -EPROTO;
        rc = parse_item(r, kind, buf, len, off, end, &next);
        if (rc <= 0)
            return rc;
        off = next;
        r->res_base = buf;
        r->res_off = off;
        r->res_items = r->n_items;
        r->res_kind = list_kind;
    }
}

static void parse_reset(struct client_reply *r)
{
    r->type = CLIENT_REPLY_OTHER;
    r->line = r->msg = NULL;
    r->line_len = r->msg_len = 0;
    r->number = 0;
    r->len = 0;
    r->need = 0;
}

int client_reply_parse(struct client_reply *r, const char *buf, size_t len)
{
    parse_reset(r);
    r->n_items = 0;
    r->res_base = NULL;
    r->res_off = 0;
    if (len == 0) { /* buf may be NULL: an empty buffer */
        r->need = 1;
        return 0;
    }
    return parse_from(r, buf, len, 0, CLIENT_ITEM_LINE);
}

int client_reply_parse_more(struct client_reply *r, const char *buf, size_t len)
{
    /* Items point into the buffer: if it moved, they must be found again. */
    if (r->res_off == 0 || r->res_base != buf || r->res_off > len)
        return client_reply_parse(r, buf, len);
    parse_reset(r);
    r->n_items = r->res_items;
    return parse_from(r, buf, len, r->res_off, r->res_kind);
}

/* ------------------------------------------------------------------------ */
/* UDP reassembly                                                           */

void client_udp_asm_init(struct client_udp_asm *a)
{
    memset(a, 0, sizeof(*a));
}

void client_udp_asm_free(struct client_udp_asm *a)
{
    free(a->data);
    free(a->parts);
    free(a->joined);
    client_udp_asm_init(a);
}

/* Grows the array whose pointer is at pp (*cap elements of size bytes) to
 * hold at least want. Returns 0 or -ENOMEM (the array is then unchanged). */
static int grow_to(void *pp, size_t *cap, size_t want, size_t size)
{
    void *p, *q;

    if (want <= *cap)
        return 0;
    if (want < *cap * 2)
        want = *cap * 2;
    memcpy(&p, pp, sizeof(p));
    q = realloc(p, want * size);
    if (q == NULL)
        return -ENOMEM;
    memcpy(pp, &q, sizeof(q));
    *cap = want;
    return 0;
}

int client_udp_asm_reserve(struct client_udp_asm *a, size_t parts, size_t bytes)
{
    if (grow_to(&a->parts, &a->parts_cap, parts, sizeof(*a->parts)) < 0 ||
        grow_to(&a->data, &a->data_cap, bytes, 1) < 0)
        return -ENOMEM;
    return 0;
}

void client_udp_asm_start(struct client_udp_asm *a, uint16_t id)
{
    a->id = id;
    a->total = a->received = 0;
    a->in_order = true;
    a->bytes = 0;
}

int client_udp_asm_add(struct client_udp_asm *a, const void *dgram, size_t len)
{
    struct proto_udp_hdr h;
    struct client_udp_part *part;
    size_t n;

    if (len < LIMIT_UDP_HEADER_BYTES)
        return CLIENT_UDP_BAD;
    proto_udp_read(dgram, &h);
    if (h.req_id != a->id)
        return CLIENT_UDP_OTHER;
    if (h.total == 0 || h.seq >= h.total || (a->total != 0 && h.total != a->total))
        return CLIENT_UDP_BAD;
    n = len - LIMIT_UDP_HEADER_BYTES;
    if (a->total == 0) {
        if (grow_to(&a->parts, &a->parts_cap, h.total, sizeof(*a->parts)) < 0)
            return -ENOMEM;
        for (size_t i = 0; i < h.total; i++)
            a->parts[i].have = false;
        a->total = h.total;
    }
    part = &a->parts[h.seq];
    if (part->have)
        return CLIENT_UDP_DUP;
    if (grow_to(&a->data, &a->data_cap, a->bytes + n, 1) < 0)
        return -ENOMEM;
    if (n > 0)
        memcpy(a->data + a->bytes, (const char *)dgram + LIMIT_UDP_HEADER_BYTES, n);
    part->off = a->bytes;
    part->len = n;
    part->have = true;
    a->in_order = a->in_order && h.seq == a->received;
    a->received++;
    a->bytes += n;
    return a->received == a->total ? CLIENT_UDP_DONE : CLIENT_UDP_MORE;
}

const char *client_udp_asm_payload(struct client_udp_asm *a, size_t *len)
{
    size_t off = 0;

    *len = 0;
    if (a->total == 0 || a->received != a->total)
        return NULL;
    *len = a->bytes;
    if (a->in_order)
        return a->data != NULL ? a->data : "";
    if (grow_to(&a->joined, &a->joined_cap, a->bytes, 1) < 0)
        return NULL;
    for (size_t i = 0; i < a->total; i++) {
        memcpy(a->joined + off, a->data + a->parts[i].off, a->parts[i].len);
        off += a->parts[i].len;
    }
    return a->joined != NULL ? a->joined : "";
}

/* ------------------------------------------------------------------------ */
/* Sockets                                                                  */

static uint64_t deadline_after(int ms)
{
    return util_mono_ns() + (uint64_t)ms * 1000000u;
}

/*
 * Waits until fd is ready for events or the deadline passes. Returns the
 * revents (> 0), or -ETIMEDOUT, or -errno from poll. POLLERR/POLLHUP are
 * returned as readiness: the next send/recv reports the actual error.
 */
static int wait_fd(int fd, short events, uint64_t deadline)
{
    for (;;) {
        uint64_t now = util_mono_ns();
        struct pollfd p = {.fd = fd, .events = events};
        uint64_t left_ms;
        int n;

        if (now >= deadline)
            return -ETIMEDOUT;
        /* Round up so that poll never returns early and spins. */
        left_ms = (deadline - now + 999999) / 1000000;
        n = poll(&p, 1, left_ms > INT32_MAX ? INT32_MAX : (int)left_ms);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n > 0)
            return p.revents;
    }
}

static void addr_name(const struct sockaddr *sa, socklen_t len, char *dst, size_t cap)
{
    if (getnameinfo(sa, len, dst, (socklen_t)cap, NULL, 0, NI_NUMERICHOST) != 0)
        snprintf(dst, cap, "?");
}

/* Non-blocking connect bounded by the deadline. Returns 0 or -errno. */
static int connect_tcp(int fd, const struct sockaddr *sa, socklen_t len,
                       uint64_t deadline)
{
    int err = 0;
    socklen_t elen = sizeof(err);
    int rc;

    if (connect(fd, sa, len) == 0)
        return 0;
    /* EINTR: the connect carries on asynchronously, like EINPROGRESS. */
    if (errno != EINPROGRESS && errno != EINTR)
        return -errno;
    rc = wait_fd(fd, POLLOUT, deadline);
    if (rc < 0)
        return rc;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0)
        return -errno;
    return -err;
}

static void raise_rcvbuf(int fd)
{
    int want = UDP_RCVBUF_WANT, got = 0;
    socklen_t glen = sizeof(got);

    /* Linux silently caps the value at net.core.rmem_max: asking for a lot
     * gets as much as allowed. Failure only means more lost datagrams. */
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &want, sizeof(want)) < 0)
        log_debug(MOD, "SO_RCVBUF: %s", strerror(errno));
    if (getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &got, &glen) == 0)
        log_debug(MOD, "udp receive buffer: %d bytes", got);
}

static uint16_t random_id(void)
{
    uint16_t v;

    if (getrandom(&v, sizeof(v), GRND_NONBLOCK) == (ssize_t)sizeof(v))
        return v;
    return (uint16_t)(util_mono_ns() ^ (uint64_t)getpid());
}

int client_open(struct client *c, const struct client_config *cfg)
{
    struct addrinfo *res = NULL, *ai;
    const char *why;
    char port[8], addr[64];
    int rc = -EHOSTUNREACH, socktype;

    memset(c, 0, sizeof(*c));
    c->fd = -1;
    if (cfg == NULL || cfg->host == NULL || cfg->host[0] == '\0' || cfg->port == 0 ||
        cfg->timeout_ms <= 0 ||
        (cfg->transport != CLIENT_TCP && cfg->transport != CLIENT_UDP)) {
        set_err(c, "invalid client configuration");
        return -EINVAL;
    }
    c->transport = cfg->transport;
    c->timeout_ms = cfg->timeout_ms;
    c->retries = cfg->retries;
    snprintf(c->peer, sizeof(c->peer), strchr(cfg->host, ':') ? "[%s]:%u" : "%s:%u",
             cfg->host, (unsigned)cfg->port);
    snprintf(port, sizeof(port), "%u", (unsigned)cfg->port);

    socktype = cfg->transport == CLIENT_TCP ? SOCK_STREAM : SOCK_DGRAM;
    if ((rc = util_resolve(cfg->host, cfg->port, socktype, 0, &res, &why)) < 0) {
        set_err(c, "cannot resolve %s: %s", cfg->host, why);
        return rc == -EADDRNOTAVAIL ? -EHOSTUNREACH : rc;
    }

    rc = -EHOSTUNREACH;
    set_err(c, "%s: no usable address", c->peer);
    for (ai = res; ai != NULL; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                        ai->ai_protocol);
        addr_name(ai->ai_addr, ai->ai_addrlen, addr, sizeof(addr));
        if (fd < 0) {
            rc = -errno;
            set_err(c, "socket for %s: %s", addr, strerror(errno));
            continue;
        }
        log_debug(MOD, "connecting to %s port %s over %s", addr, port,
                  socktype == SOCK_STREAM ? "tcp" : "udp");
        if (socktype == SOCK_STREAM) {
            rc = connect_tcp(fd, ai->ai_addr, ai->ai_addrlen,
                             deadline_after(c->timeout_ms));
            if (rc == 0) {
                int one = 1;
                /* Request and data go out in one sendmsg; no need to wait for
                 * an ACK before the last segment. */
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            }
        } else {
            raise_rcvbuf(fd);
            rc = connect(fd, ai->ai_addr, ai->ai_addrlen) == 0 ? 0 : -errno;
        }
        if (rc == 0) {
            c->fd = fd;
            break;
        }
        if (rc == -ETIMEDOUT)
            set_err(c, "connect to %s port %s: timed out after %d ms", addr, port,
                    c->timeout_ms);
        else
            set_err(c, "connect to %s port %s: %s", addr, port, strerror(-rc));
        log_debug(MOD, "%s", c->err);
        close(fd);
    }
    freeaddrinfo(res);
    if (c->fd < 0)
        return rc;

    if (c->transport == CLIENT_UDP) {
        c->dgram = malloc(LIMIT_UDP_REQUEST_BYTES_MAX + LIMIT_UDP_HEADER_BYTES);
        if (c->dgram == NULL) {
            client_close(c);
            set_err(c, "out of memory");
            return -ENOMEM;
        }
        c->next_id = random_id();
    }
    c->err[0] = '\0';
    return 0;
}

void client_close(struct client *c)
{
    if (c->fd >= 0)
        close(c->fd); /* not retried on EINTR: Linux has released fd anyway */
    c->fd = -1;
    free(c->dgram);
    c->dgram = NULL;
    buf_free(&c->out);
}

/* ------------------------------------------------------------------------ */
/* Requests                                                                 */

static void log_request(const struct client_request *req)
{
    char esc[1024];

    if (!log_enabled(LOG_LEVEL_DEBUG))
        return;
    log_debug(MOD, "> %s", log_escape(esc, sizeof(esc), req->line, req->line_len));
    if (req->has_data)
        log_debug(MOD, "> <%zu data bytes>", req->data_len);
}

static void log_reply(const struct client_reply *r)
{
    char esc[1024];

    if (!log_enabled(LOG_LEVEL_DEBUG))
        return;
    for (size_t i = 0; i < r->n_items; i++) {
        const struct client_item *it = &r->items[i];
        log_debug(MOD, "< %s", log_escape(esc, sizeof(esc), it->line, it->line_len));
        if (it->kind == CLIENT_ITEM_VALUE)
            log_debug(MOD, "< <%zu data bytes>", it->data_len);
    }
    log_debug(MOD, "< %s", log_escape(esc, sizeof(esc), r->line, r->line_len));
}

/* Parses r->raw once it holds r->need bytes. Returns 1, 0 or -EPROTO/-ENOMEM. */
static int parse_raw(struct client *c, struct client_reply *r)
{
    int rc;

    if (r->raw.len < r->need)
        return 0;
    rc = client_reply_parse_more(r, r->raw.data, r->raw.len);
    if (rc == -EPROTO) {
        char esc[128];
        set_err(
            c, "%s: malformed reply: %s", c->peer,
            log_escape(esc, sizeof(esc), r->raw.data, r->raw.len < 60 ? r->raw.len : 60));
    } else if (rc == -ENOMEM) {
        set_err(c, "out of memory reading the reply");
    }
    return rc;
}

/* Fills iov with the request's bytes from offset `skip` on. Returns the count. */
static int request_iov(const struct client_request *req, size_t skip, struct iovec *iov)
{
    static char crlf[] = "\r\n";
    struct iovec all[4] = {
        {(void *)req->line, req->line_len},
        {crlf, 2},
        {(void *)req->data, req->data_len},
        {crlf, 2},
    };
    int n = 0, parts = req->has_data ? 4 : 2;

    for (int i = 0; i < parts; i++) {
        if (skip >= all[i].iov_len) {
            skip -= all[i].iov_len;
            continue;
        }
        iov[n].iov_base = (char *)all[i].iov_base + skip;
        iov[n].iov_len = all[i].iov_len - skip;
        skip = 0;
        n++;
    }
    return n;
}

/*
 * Sends req and reads the reply into r before the deadline. Returns 0; 1 when
 * a complete reply came before the whole request was sent (valid, but the
 * stream must not be reused); or -errno with c->err set.
 */
static int tcp_exchange(struct client *c, const struct client_request *req,
                        struct client_reply *r)
{
    uint64_t deadline = deadline_after(c->timeout_ms);
    size_t total = req->line_len + 2 + (req->has_data ? req->data_len + 2 : 0);
    size_t sent = 0;
    int send_err = 0;

    for (;;) {
        int rc;
        ssize_t n;

        if (sent < total && send_err == 0) {
            struct iovec iov[4];
            struct msghdr mh = {.msg_iov = iov};
            ssize_t w;
            mh.msg_iovlen = (size_t)request_iov(req, sent, iov);
            w = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
            if (w >= 0)
                sent += (size_t)w;
            else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                send_err = errno; /* a reply may still be waiting: read it first */
        }

        rc = buf_reserve(&r->raw, TCP_READ_CHUNK);
        if (rc < 0) {
            set_err(c, "out of memory reading the reply");
            return rc;
        }
        n = recv(c->fd, r->raw.data + r->raw.len, r->raw.cap - r->raw.len, 0);
        if (n > 0) {
            r->raw.len += (size_t)n;
            rc = parse_raw(c, r);
            if (rc < 0)
                return rc;
            if (rc == 0)
                continue;
            if (r->len != r->raw.len) {
                set_err(c, "%s: %zu unexpected bytes after the reply", c->peer,
                        r->raw.len - r->len);
                return -EPROTO;
            }
            if (sent < total) {
                /* Answered before reading all of it: the server will take the
                 * rest for a new request. The reply stands; the stream is done. */
                log_debug(MOD, "%s: replied before the whole request was sent", c->peer);
                return 1;
            }
            return 0;
        }
        if (n == 0) {
            set_err(c, "%s: connection closed by the server%s", c->peer,
                    r->raw.len ? " in the middle of the reply" : "");
            return -ECONNRESET;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            int e = errno;
            set_err(c, "%s: receive: %s", c->peer, strerror(e));
            return -e;
        }
        if (send_err != 0) {
            set_err(c, "%s: send: %s", c->peer, strerror(send_err));
            return -send_err;
        }
        rc = wait_fd(c->fd, (short)(POLLIN | (sent < total ? POLLOUT : 0)), deadline);
        if (rc == -ETIMEDOUT) {
            set_err(c, "%s: no %s within %d ms", c->peer,
                    sent < total ? "progress sending the request" : "complete reply",
                    c->timeout_ms);
            return rc;
        }
        if (rc < 0) {
            set_err(c, "poll: %s", strerror(-rc));
            return rc;
        }
    }
}

/*
 * Collects the reply to request `id` into r until the deadline: datagram
 * sets are reassembled, appended to r->raw and parsed, set after set, until
 * the reply is complete (memcached 1.6 sends each VALUE of a multi-key get
 * as its own set under the same id). Returns 1 (r parsed, c->err set if the
 * reply is malformed: then -EPROTO), -ETIMEDOUT, -ECONNREFUSED, -errno.
 */
static int udp_collect(struct client *c, struct client_reply *r, uint16_t id,
                       uint64_t deadline)
{
    size_t cap = LIMIT_UDP_REQUEST_BYTES_MAX + LIMIT_UDP_HEADER_BYTES;
    struct client_udp_asm a;
    int rc;

    r->raw.len = 0;
    r->need = 0;
    r->res_off = 0; /* a new reply: nothing to resume */
    client_udp_asm_init(&a);
    client_udp_asm_start(&a, id);
    for (;;) {
        rc = wait_fd(c->fd, POLLIN, deadline);
        if (rc < 0)
            goto out;
        for (;;) {
            ssize_t n = recv(c->fd, c->dgram, cap, 0);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    break;
                rc = -errno;
                goto out;
            }
            rc = client_udp_asm_add(&a, c->dgram, (size_t)n);
            if (rc < 0)
                goto out;
            if (log_enabled(LOG_LEVEL_DEBUG)) {
                struct proto_udp_hdr h;
                if (n >= LIMIT_UDP_HEADER_BYTES) {
                    proto_udp_read(c->dgram, &h);
                    log_debug(MOD, "udp datagram id %u seq %u of %u, %zd bytes%s",
                              h.req_id, h.seq, h.total, n,
                              rc > CLIENT_UDP_DONE ? ": ignored" : "");
                } else {
                    log_debug(MOD, "udp datagram of %zd bytes: ignored", n);
                }
            }
            if (rc != CLIENT_UDP_DONE)
                continue;
            {
                size_t plen;
                const char *p = client_udp_asm_payload(&a, &plen);
                rc = p == NULL ? -ENOMEM : buf_append(&r->raw, p, plen);
            }
            client_udp_asm_start(&a, id);
            if (rc < 0)
                goto out;
            rc = parse_raw(c, r);
            if (rc != 0)
                goto out;
            log_debug(
                MOD, "reply incomplete after %zu bytes: waiting for another datagram set",
                r->raw.len);
        }
    }
out:
    client_udp_asm_free(&a);
    return rc;
}

static int udp_exchange(struct client *c, const struct client_request *req,
                        struct client_reply *r)
{
    size_t size = LIMIT_UDP_HEADER_BYTES + req->line_len + 2 +
                  (req->has_data ? req->data_len + 2 : 0);
    bool idempotent = client_cmd_idempotent(req->line, req->line_len);
    unsigned attempts = idempotent ? 1 + c->retries : 1;
    const char *sp = memchr(req->line, ' ', req->line_len);
    int cmd_len = (int)(sp ? (size_t)(sp - req->line) : req->line_len);
    int rc;

    if (size > LIMIT_UDP_REQUEST_BYTES_MAX ||
        req->line_len > LIMIT_UDP_REQUEST_BYTES_MAX) {
        set_err(
            c, "request of %zu bytes does not fit one UDP datagram (at most %d); use TCP",
            size, LIMIT_UDP_REQUEST_BYTES_MAX);
        return -EMSGSIZE;
    }
    c->out.len = 0;
    rc = buf_reserve(&c->out, size);
    if (rc < 0) {
        set_err(c, "out of memory");
        return rc;
    }
    /* Reserved above: the appends cannot fail. */
    buf_append(&c->out, "\0\0\0\0\0\1\0\0", LIMIT_UDP_HEADER_BYTES);
    buf_append(&c->out, req->line, req->line_len);
    buf_append(&c->out, "\r\n", 2);
    if (req->has_data) {
        buf_append(&c->out, req->data, req->data_len);
        buf_append(&c->out, "\r\n", 2);
    }

    for (unsigned attempt = 1;; attempt++) {
        uint16_t id = c->next_id++;
        ssize_t w;

        struct proto_udp_hdr h = {.req_id = id, .seq = 0, .total = 1, .reserved = 0};
        proto_udp_encode(c->out.data, &h);
        r->attempts = attempt;
        log_debug(MOD, "udp request id %u, attempt %u of %u, %zu bytes", id, attempt,
                  attempts, size);
        do {
            w = send(c->fd, c->out.data, c->out.len, 0);
        } while (w < 0 && errno == EINTR);
        if (w < 0) {
            int e = errno;
            if (e == EMSGSIZE)
                set_err(c,
                        "request of %zu bytes is too large for one UDP datagram; use TCP",
                        size);
            else if (e == ECONNREFUSED)
                set_err(c, "%s: connection refused (nothing listens on that UDP port)",
                        c->peer);
            else
                set_err(c, "%s: send: %s", c->peer, strerror(e));
            return -e;
        }

        rc = udp_collect(c, r, id, deadline_after(c->timeout_ms));
        if (rc == 1) {
            if (r->len != r->raw.len) {
                set_err(c, "%s: %zu unexpected bytes after the reply", c->peer,
                        r->raw.len - r->len);
                return -EPROTO;
            }
            return 0;
        }
        if (rc == -EPROTO || rc == -ENOMEM) {
            if (rc == -ENOMEM)
                set_err(c, "out of memory");
            return rc;
        }
        if (rc == -ECONNREFUSED) {
            set_err(c, "%s: connection refused (nothing listens on that UDP port)",
                    c->peer);
            return rc;
        }
        if (rc != -ETIMEDOUT) {
            set_err(c, "%s: receive: %s", c->peer, strerror(-rc));
            return rc;
        }
        if (attempt >= attempts) {
            if (idempotent)
                set_err(c, "%s: no reply within %d ms (%u attempt%s)", c->peer,
                        c->timeout_ms, attempts, attempts == 1 ? "" : "s");
            else
                set_err(
                    c,
                    "%s: no reply within %d ms; %.*s is not retried over UDP, so whether "
                    "it took effect is unknown",
                    c->peer, c->timeout_ms, cmd_len, req->line);
            return -ETIMEDOUT;
        }
        log_info(MOD, "%s: no reply within %d ms, retrying (attempt %u of %u)", c->peer,
                 c->timeout_ms, attempt + 1, attempts);
    }
}

int client_request(struct client *c, const struct client_request *req,
                   struct client_reply *r)
{
    int rc;

    c->err[0] = '\0';
    r->raw.len = 0;
    r->need = 0;
    r->res_off = 0; /* a new reply: nothing to resume */
    r->attempts = 1;
    if (req->line == NULL || req->line_len == 0 ||
        memchr(req->line, '\r', req->line_len) ||
        memchr(req->line, '\n', req->line_len) ||
        memchr(req->line, '\0', req->line_len) ||
        (req->has_data && req->data == NULL && req->data_len > 0)) {
        set_err(c, "invalid request line");
        return -EINVAL;
    }
    if (c->fd < 0) {
        set_err(c, "%s: not connected", c->peer);
        return -ENOTCONN;
    }
    log_request(req);
    if (c->transport == CLIENT_UDP) {
        rc = udp_exchange(c, req, r);
    } else {
        /* 1: a reply came before the whole request was sent; see above. */
        rc = tcp_exchange(c, req, r);
        if (rc != 0) {
            close(c->fd);
            c->fd = -1;
        }
    }
    if (rc < 0)
        return rc;
    log_reply(r);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Authentication                                                           */

bool client_auth_user_valid(const char *user, size_t n)
{
    if (n == 0 || n > LIMIT_AUTH_USER_BYTES_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)user[i];
        if (ch <= 0x20 || ch == 0x7f)
            return false;
    }
    return true;
}

static bool reply_is(const struct client_reply *r, const char *line)
{
    return span_is(r->line, r->line_len, line);
}

int client_auth_request(struct buf *out, size_t *nline, const char *user,
                        const void *pass, size_t npass)
{
    size_t nuser = strlen(user), ndata = nuser + 1 + npass;
    char line[64];
    int n;

    if (!client_auth_user_valid(user, nuser) || npass == 0 ||
        npass > LIMIT_AUTH_PASSWORD_BYTES_MAX)
        return -EINVAL;
    for (size_t i = 0; i < npass; i++) {
        unsigned char ch = ((const unsigned char *)pass)[i];
        if (ch < 0x20 || ch == 0x7f)
            return -EINVAL;
    }
    n = snprintf(line, sizeof(line), "set auth 0 0 %zu\r\n", ndata);
    out->len = 0;
    if (buf_reserve(out, (size_t)n + ndata + 2) < 0)
        return -ENOMEM;
    memcpy(out->data, line, (size_t)n);
    memcpy(out->data + n, user, nuser);
    out->data[n + nuser] = ' ';
    memcpy(out->data + n + nuser + 1, pass, npass);
    memcpy(out->data + n + ndata, "\r\n", 2);
    out->len = (size_t)n + ndata + 2;
    *nline = (size_t)n;
    return 0;
}

int client_auth(struct client *c, const char *user, const void *pass, size_t npass,
                struct client_reply *r)
{
    struct client_request req = {.line = "version", .line_len = 7};
    char line[64], esc[200];
    struct buf data = {0};
    size_t nuser = strlen(user), nline;
    int rc;

    if (c->transport != CLIENT_TCP) {
        set_err(c, "%s: authentication works over TCP only", c->peer);
        return -EINVAL;
    }
    if ((rc = client_auth_request(&data, &nline, user, pass, npass)) < 0) {
        buf_free(&data);
        set_err(c, rc == -ENOMEM
                       ? "out of memory"
                       : "invalid user name or password (or a control character in it)");
        return rc;
    }
    if ((rc = client_request(c, &req, r)) < 0) {
        memset(data.data, 0, data.len);
        buf_free(&data);
        return rc;
    }
    if (r->type == CLIENT_REPLY_VERSION || !reply_is(r, "CLIENT_ERROR unauthenticated")) {
        memset(data.data, 0, data.len);
        buf_free(&data);
        if (r->type == CLIENT_REPLY_VERSION)
            return 1; /* it runs commands: no authentication asked for */
        set_err(c, "%s: unexpected reply to version: %s", c->peer,
                log_escape(esc, sizeof(esc), r->line, r->line_len));
        return -EPROTO;
    }
    /* The line without its CRLF; the data between it and the final CRLF. */
    req.line = data.data;
    req.line_len = nline - 2;
    req.data = data.data + nline;
    req.data_len = data.len - nline - 2;
    req.has_data = true;
    rc = client_request(c, &req, r);
    memset(data.data, 0, data.len); /* the password */
    buf_free(&data);
    if (rc < 0)
        return rc;
    if (r->type == CLIENT_REPLY_STORED)
        return 0;
    log_escape(esc, sizeof(esc), r->line, r->line_len);
    if (r->type == CLIENT_REPLY_CLIENT_ERROR || r->type == CLIENT_REPLY_ERROR ||
        r->type == CLIENT_REPLY_SERVER_ERROR) {
        set_err(c, "%s refused user '%s': %s", c->peer,
                log_escape(line, sizeof(line), user, nuser), esc);
        return -EACCES;
    }
    set_err(c, "%s: unexpected reply to the credentials: %s", c->peer, esc);
    return -EPROTO;
}
