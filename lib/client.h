/*
 * client.h - a small blocking client for the memcached text protocol, over TCP
 * or UDP (memcached's UDP framing).
 *
 * Used by clie and meant to be reused by a load generator: there is no global
 * state, every call takes a struct client (or a struct client_reply), and the
 * reply parser and the UDP reassembler are pure functions over bytes so they
 * can be tested without a network.
 *
 * One exchange = one request (a command line and, for storage commands, a
 * data block) and exactly one reply. Typical use:
 *
 *   struct client c;
 *   struct client_reply r;
 *   struct client_config cfg = {"127.0.0.1", 11211, CLIENT_TCP, 2000, 2};
 *   struct client_request req = {.line = "get foo", .line_len = 7};
 *   client_reply_init(&r);
 *   if (client_open(&c, &cfg) == 0) {
 *       if (client_request(&c, &req, &r) == 0)
 *           ... r.type, r.items ...
 *       client_close(&c);
 *   }
 *   client_reply_free(&r);
 *
 * Errors follow lib/'s convention: 0 (or a documented positive value) on
 * success, a negative errno code on failure. After a failure, client_error()
 * describes it in one line (with the address and the operation).
 */
#ifndef TPCKV_CLIENT_H
#define TPCKV_CLIENT_H

#include "buf.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum client_transport {
    CLIENT_TCP = 0,
    CLIENT_UDP = 1,
};

struct client_config {
    const char *host; /* a name, or an IPv4 or IPv6 literal */
    uint16_t port;
    enum client_transport transport;
    int timeout_ms;   /* per attempt, > 0: see client_open() and client_request() */
    unsigned retries; /* UDP only: extra attempts for idempotent commands */
};

/* The whole state of one connection. Fields are private to client.c. */
struct client {
    int fd; /* -1 when closed */
    enum client_transport transport;
    int timeout_ms;
    unsigned retries;
    uint16_t next_id;     /* UDP request id of the next attempt */
    unsigned char *dgram; /* UDP receive buffer, LIMIT_UDP_REQUEST_BYTES_MAX + 8 */
    struct buf out;       /* UDP: the request datagram being sent */
    char peer[80];        /* "host:port" as the user gave it, for messages */
    char err[256];        /* client_error() */
};

/*
 * What a reply is. A reply is either a single line or a list of items ended
 * by END; the first line tells which (see client_reply_parse()).
 */
enum client_reply_type {
    CLIENT_REPLY_LIST = 0, /* items..., END (zero items: a bare END) */
    CLIENT_REPLY_STORED,
    CLIENT_REPLY_NOT_STORED,
    CLIENT_REPLY_EXISTS,
    CLIENT_REPLY_NOT_FOUND,
    CLIENT_REPLY_DELETED,
    CLIENT_REPLY_TOUCHED,
    CLIENT_REPLY_OK,
    CLIENT_REPLY_VERSION,      /* msg = the version string */
    CLIENT_REPLY_NUMBER,       /* number = the value (incr/decr) */
    CLIENT_REPLY_OTHER,        /* any other well-formed line, e.g. RESET */
    CLIENT_REPLY_ERROR,        /* ERROR [msg] */
    CLIENT_REPLY_CLIENT_ERROR, /* CLIENT_ERROR msg */
    CLIENT_REPLY_SERVER_ERROR, /* SERVER_ERROR msg */
};

enum client_item_kind {
    CLIENT_ITEM_VALUE = 0, /* VALUE <key> <flags> <bytes> [<cas>] + data block */
    CLIENT_ITEM_STAT,      /* STAT <name> <value> */
    CLIENT_ITEM_KEY,       /* KEY <key> (tpckv's "keys" command) */
    CLIENT_ITEM_LINE,      /* any other list line (ITEM ..., PREFIX ...) */
};

/* One list item. Pointers refer to the bytes the reply was parsed from. */
struct client_item {
    enum client_item_kind kind;
    const char *line; /* the item's line without CRLF */
    size_t line_len;
    const char *key; /* VALUE, KEY: the key; STAT: the statistic's name */
    size_t key_len;
    const char *data; /* VALUE: the data block; STAT: the value text */
    size_t data_len;
    uint32_t flags; /* VALUE */
    bool has_cas;   /* VALUE: the line had a cas unique (gets) */
    uint64_t cas;
};

struct client_reply {
    enum client_reply_type type;
    /* The single line, or the line that ended a list (END or an error line);
     * without CRLF. */
    const char *line;
    size_t line_len;
    /* VERSION: the version; ERROR, CLIENT_ERROR, SERVER_ERROR: the message
     * after the word (may be empty). */
    const char *msg;
    size_t msg_len;
    uint64_t number; /* NUMBER */
    /* LIST; also the items before an error line that cut a list short. */
    struct client_item *items;
    size_t n_items;
    size_t cap_items;
    /* After client_reply_parse() returned 1: the reply's length in bytes.
     * After it returned 0: the buffer length below which parsing again cannot
     * make progress (a hint; always > the length seen). */
    size_t len;
    size_t need;
    /* client_request(): request datagrams sent (UDP; 1 for TCP). More than 1
     * means an earlier attempt may also have reached the server. */
    unsigned attempts;
    /* client_request(): the reply's bytes, which the pointers refer to. */
    struct buf raw;
    /* Private to the parser: where client_reply_parse_more() resumes. */
    const char *res_base;
    size_t res_off; /* 0: nothing to resume */
    size_t res_items;
    enum client_item_kind res_kind;
};

/* One request: "line" is the command line without CRLF (it must not contain
 * CR, LF or NUL). When has_data, data[0..data_len) is sent after it as the
 * data block, followed by CRLF; the line must announce data_len itself. */
struct client_request {
    const char *line;
    size_t line_len;
    const void *data;
    size_t data_len;
    bool has_data;
};

/*
 * Resolves cfg->host (getaddrinfo, IPv4 and IPv6) and connects c.
 *   TCP: tries each address in turn, each with a non-blocking connect bounded
 *        by cfg->timeout_ms.
 *   UDP: connect(2)s a datagram socket to the first usable address, so only
 *        that peer's datagrams are read and an ICMP "port unreachable" comes
 *        back as -ECONNREFUSED; SO_RCVBUF is raised as far as the kernel allows.
 * c needs no initialisation (an open c must be closed first: it would leak);
 * on success the caller must client_close() it.
 * Returns 0, -EINVAL (bad config), -EHOSTUNREACH (name does not resolve),
 * -ENOMEM, or the last address's socket(2)/connect(2) error (-ECONNREFUSED,
 * -ETIMEDOUT, -ENETUNREACH...). On failure nothing is left open (calling
 * client_close() anyway is harmless).
 */
int client_open(struct client *c, const struct client_config *cfg);

/* Closes the socket and frees c's buffers. Safe to call twice. */
void client_close(struct client *c);

/* One line describing the last failure of a call on c (never NULL). */
const char *client_error(const struct client *c);

/*
 * Sends req and reads one whole reply into r (which must have been
 * client_reply_init()ed; its previous contents are replaced). r's pointers
 * stay valid until r is reused or freed.
 *
 * Timeout: each attempt must complete (whole request sent, whole reply
 * received) within the configured timeout_ms.
 * TCP: one attempt. Any failure (timeout, malformed reply, connection lost)
 *      leaves the byte stream out of step, so the connection is closed and
 *      later calls return -ENOTCONN until client_close() and client_open().
 *      The same happens after a success if the server replied (say
 *      SERVER_ERROR object too large) before it had read the whole request.
 * UDP: the request must fit one datagram. On timeout it is sent again with a
 *      fresh request id, up to `retries` more times, but only when
 *      client_cmd_idempotent(); otherwise a timeout means the outcome is
 *      unknown (the write may or may not have happened).
 *
 * Returns 0 when a complete reply was read, whatever it says (check r->type:
 * ERROR, CLIENT_ERROR and SERVER_ERROR are replies too). Otherwise:
 *   -EINVAL      line empty or containing CR, LF or NUL
 *   -EMSGSIZE    UDP: the request does not fit one datagram (use TCP)
 *   -ETIMEDOUT   no complete reply in time (after all retries)
 *   -ECONNREFUSED, -ECONNRESET, -EPIPE  connection refused or lost
 *   -EPROTO      malformed reply
 *   -ENOTCONN    TCP connection closed after an earlier failure
 *   -ENOMEM, or another errno from send/recv.
 */
int client_request(struct client *c, const struct client_request *req,
                   struct client_reply *r);

/*
 * Authenticates an open TCP connection with memcached's ASCII scheme (serve
 * --auth-file, memcached -Y). First "version": a server that answers it
 * needs no authentication, and is not sent the credentials (without -Y, the
 * credentials set would store a key). If it answers CLIENT_ERROR
 * unauthenticated, "set auth 0 0 N" with the data "USER PASSWORD" follows.
 * user: 1..LIMIT_AUTH_USER_BYTES_MAX bytes without spaces or control bytes;
 * pass: 1..LIMIT_AUTH_PASSWORD_BYTES_MAX bytes without control bytes. r is
 * used for the replies (client_reply_init()ed).
 *
 * Returns 0 when authenticated, 1 when the server does not ask for it, or:
 *   -EACCES   the server refused the credentials (client_error() quotes it)
 *   -EINVAL   bad user or password, or a UDP connection
 *   -EPROTO   a reply that belongs to neither case (quoted)
 *   or client_request()'s errors (the connection is then closed).
 */
int client_auth(struct client *c, const char *user, const void *pass, size_t npass,
                struct client_reply *r);

/* Whether user[0..n) may be sent as a user name (see client_auth). */
bool client_auth_user_valid(const char *user, size_t n);

/*
 * The credentials set client_auth sends, whole, into out (emptied first):
 * "set auth 0 0 N\r\nUSER PASSWORD\r\n"; *nline is the length of its
 * line, CRLF included. For a client that sends it itself (clie bench). It
 * holds the password: zero it once sent. Returns 0, -EINVAL (the user or
 * password is not valid, as for client_auth), -ENOMEM.
 */
int client_auth_request(struct buf *out, size_t *nline, const char *user,
                        const void *pass, size_t npass);

void client_reply_init(struct client_reply *r);
/* Frees what r owns (items, raw) and re-initialises it. */
void client_reply_free(struct client_reply *r);

/*
 * Parses one reply from buf[0..len). Pure: no I/O, and parsing the same bytes
 * again (or more of them) gives the same answer, so a caller may re-parse from
 * the start whenever bytes arrive.
 *
 * Grammar (every line ends with CRLF, is at most 2048 bytes and has no
 * control bytes):
 *   - first line VALUE, STAT, KEY, ITEM or PREFIX: a list. Lines of the same
 *     kind follow (a VALUE line is followed by exactly <bytes> data bytes and
 *     CRLF; the data is binary and read by length) until END.
 *   - first line END: an empty list.
 *   - ERROR [msg], CLIENT_ERROR [msg], SERVER_ERROR [msg]: an error; also
 *     accepted in place of END, ending a list early (its items are kept).
 *   - STORED NOT_STORED EXISTS NOT_FOUND DELETED TOUCHED OK, "VERSION x",
 *     a decimal number: the named type; any other line: CLIENT_REPLY_OTHER.
 *
 * Fills r (pointers into buf; r->items is reused and grown as needed).
 * Returns 1 when the reply is complete (r->len bytes; anything after it is
 * not looked at), 0 when more bytes are needed (r->need tells how many at
 * least), -EPROTO when the bytes
 * cannot begin a valid reply (bad VALUE line, data not followed by CRLF, bare
 * LF, overlong line...), -ENOMEM.
 */
int client_reply_parse(struct client_reply *r, const char *buf, size_t len);

/*
 * Same answer as client_reply_parse(), for a caller that re-parses as bytes
 * arrive: buf[0..len) must begin with the bytes r was last parsed from (the
 * buffer may have moved or grown). Parsing resumes after the last complete
 * list item when buf has not moved, so a long list costs linear time overall.
 */
int client_reply_parse_more(struct client_reply *r, const char *buf, size_t len);

/* Name of a reply type ("STORED", "LIST", ...), for messages. */
const char *client_reply_type_name(enum client_reply_type t);

/* A valid key is 1..LIMIT_KEY_BYTES_MAX bytes with no space or control
 * bytes (0x00-0x20, 0x7f). Bytes >= 0x80 are allowed. */
bool client_key_valid(const char *key, size_t len);

/* Whether repeating the command (its first word) is harmless, so that a UDP
 * request may be resent after a lost reply: get gets set delete touch version
 * stats keys flush_all. add cas incr decr append prepend replace are not. */
bool client_cmd_idempotent(const char *line, size_t len);

/*
 * UDP reply reassembly (memcached framing). Every reply datagram starts with
 * 8 bytes, big-endian u16s: request id, sequence number, datagram count,
 * reserved. Payloads are joined in sequence order. One client_udp_asm
 * collects one datagram set at a time; a reply may be several sets in a row
 * under the same id (memcached 1.6 sends one per VALUE of a multi-key get):
 * after CLIENT_UDP_DONE, take the payload, then client_udp_asm_start again.
 *
 * Its buffers are kept from one set to the next and grow only for a larger
 * reply than any before, so a caller that reserves once (clie bench, per
 * connection) reassembles without allocating. Payloads are stored in the
 * order they arrive; when that is the sequence order (the usual case on one
 * path) the joined payload is read where it lies, else it is gathered into a
 * second kept buffer.
 */
struct client_udp_part {
    size_t off; /* in data */
    size_t len;
    bool have;
};

struct client_udp_asm {
    uint16_t id;       /* the request id being waited for */
    uint16_t total;    /* datagram count, 0 until the first one arrives */
    uint16_t received; /* distinct sequence numbers received */
    bool in_order;     /* each part so far arrived in sequence order */
    size_t bytes;      /* payload bytes received */
    char *data;        /* payloads in arrival order (data_cap bytes) */
    size_t data_cap;
    struct client_udp_part *parts; /* parts_cap entries, total in use */
    size_t parts_cap;
    char *joined; /* payloads gathered in order when they came out of it */
    size_t joined_cap;
};

enum client_udp_verdict {
    CLIENT_UDP_MORE = 0,  /* accepted; more datagrams needed */
    CLIENT_UDP_DONE = 1,  /* accepted; every datagram is in */
    CLIENT_UDP_OTHER = 2, /* for another request id (a late reply) */
    CLIENT_UDP_DUP = 3,   /* a sequence number already received */
    CLIENT_UDP_BAD = 4,   /* short, a zero count, a sequence past the count, or a
                             count that disagrees with the set's first datagram */
};

/* An empty assembler (owns nothing yet); then client_udp_asm_start. */
void client_udp_asm_init(struct client_udp_asm *a);

/* Makes room for a set of `parts` datagrams and `bytes` of payload, so that
 * adding one of that size does not allocate. Returns 0 or -ENOMEM. */
int client_udp_asm_reserve(struct client_udp_asm *a, size_t parts, size_t bytes);

/* Starts waiting for a datagram set of the reply to request `id`, forgetting
 * any earlier set but keeping the buffers. */
void client_udp_asm_start(struct client_udp_asm *a, uint16_t id);

/*
 * Offers one received datagram (header included). Datagrams may come in any
 * order. Copies what it keeps. Returns an enum client_udp_verdict (anything
 * but MORE and DONE leaves the set as it was), or -ENOMEM.
 */
int client_udp_asm_add(struct client_udp_asm *a, const void *dgram, size_t len);

/* The set's payloads joined in sequence order (valid until the next start or
 * add), and their length in *len; NULL when not every datagram has arrived,
 * or without memory for an out-of-order gather. */
const char *client_udp_asm_payload(struct client_udp_asm *a, size_t *len);

/* Frees the buffers; a is then as after client_udp_asm_init. */
void client_udp_asm_free(struct client_udp_asm *a);

#endif /* TPCKV_CLIENT_H */
