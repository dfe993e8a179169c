/*
 * proto.h - the memcached text protocol: request parser, reply formatting
 * helpers, exptime rules and UDP framing. Pure code: no I/O, no clock (the
 * caller passes "now"), no allocation. The grammar is in proto.c's header.
 */
#ifndef TPCKV_PROTO_H
#define TPCKV_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Reported by "version"; the 1.6 prefix tells tools the protocol level. */
#define PROTO_VERSION_STRING "1.6.0-tpckv-0.3.0"

enum proto_cmd {
    PROTO_CMD_NONE = 0,
    /* retrieval */
    PROTO_CMD_GET,
    PROTO_CMD_GETS,
    PROTO_CMD_GAT,
    PROTO_CMD_GATS,
    /* storage: line + data block */
    PROTO_CMD_SET,
    PROTO_CMD_ADD,
    PROTO_CMD_REPLACE,
    PROTO_CMD_APPEND,
    PROTO_CMD_PREPEND,
    PROTO_CMD_CAS,
    /* other writes */
    PROTO_CMD_DELETE,
    PROTO_CMD_INCR,
    PROTO_CMD_DECR,
    PROTO_CMD_TOUCH,
    PROTO_CMD_FLUSH_ALL,
    /* everything else */
    PROTO_CMD_VERSION,
    PROTO_CMD_VERBOSITY,
    PROTO_CMD_STATS,
    PROTO_CMD_QUIT,
    PROTO_CMD_KEYS,     /* extension: keys [prefix] */
    PROTO_CMD_SNAPSHOT, /* extension: snapshot (answers once it is durable) */
    PROTO_CMD__COUNT
};

/* The command's name as sent on the wire ("set", "flush_all", ...). */
const char *proto_cmd_name(enum proto_cmd cmd);

/* Bounds the parser enforces; the server fills them from its flags. */
struct proto_limits {
    size_t value_bytes_max;    /* larger data block: too_large (swallowed) */
    size_t get_line_bytes_max; /* longest retrieval line */
    size_t get_keys_max;       /* most keys in one retrieval line */
};

/*
 * One parsed request. Every pointer points into the caller's input buffer and
 * is valid as long as that buffer is unchanged.
 */
struct proto_req {
    enum proto_cmd cmd;
    bool noreply;
    /* Storage command whose data block exceeds value_bytes_max: the block is
     * being swallowed (see proto_parse) and data is NULL. */
    bool too_large;

    const char *key; /* single-key commands */
    size_t nkey;
    uint32_t flags;     /* storage */
    int64_t exptime;    /* storage, touch, gat: as sent (see proto_exptime_abs_ms) */
    uint64_t cas;       /* cas: the client's cas unique */
    uint64_t delta;     /* incr, decr */
    const char *data;   /* storage: the data block, without its \r\n */
    size_t ndata;

    /* Retrieval: the keys, separated by one or more spaces; walk them with
     * proto_next_key(). nkeys >= 1 and each key is valid. */
    const char *keys;
    size_t keys_len;
    size_t nkeys;

    /* stats [arg], keys [prefix], verbosity <level>, flush_all [delay]. */
    const char *arg;
    size_t narg;
    int64_t delay; /* flush_all: seconds (memcached exptime rules), 0 = now */
    uint32_t verbosity;

    /* PROTO_ERROR / PROTO_CLOSE: the reply line without \r\n, or for a
     * close the reason to log. Static storage. */
    const char *error;
    /* PROTO_ERROR: what exactly was wrong, for the log (the reply stays
     * memcached's, word for word), or NULL. Static storage. */
    const char *detail;
    /* PROTO_NEED_MORE: total bytes the request needs when known, else 0
     * (the line is not complete yet). */
    size_t need;
};

enum proto_status {
    /* Incomplete request: call again with more bytes (keep these). */
    PROTO_NEED_MORE = 0,
    /* A request is in *req; drop *consumed bytes. With req->too_large,
     * *consumed may exceed the input: the caller discards the excess as it
     * arrives, and answers SERVER_ERROR object too large for cache. */
    PROTO_OK,
    /* Reply req->error (unless req->noreply) and drop *consumed bytes, which
     * may exceed the input (a rejected data block is swallowed). */
    PROTO_ERROR,
    /* The stream cannot be trusted: close the connection without a reply
     * (req->error says why, for the log). */
    PROTO_CLOSE,
};

/*
 * Parses the first request in buf[0..len). Never reads past len, never
 * writes to buf. *consumed is set for PROTO_OK and PROTO_ERROR, 0 otherwise.
 *
 * Line rules: a line ends in "\n" (a "\r" before it is dropped); tokens are
 * separated by spaces. A retrieval line may be up to get_line_bytes_max
 * bytes; any other line over LIMIT_LINE_BYTES_MAX bytes closes the
 * connection, as does an unknown command ending in "HTTP/..." (a browser or
 * proxy speaking the wrong protocol).
 */
enum proto_status proto_parse(const char *buf, size_t len, const struct proto_limits *lim,
                              struct proto_req *req, size_t *consumed);

/*
 * Before a connection has authenticated (serve --auth-file): memcached's ASCII
 * authentication. The only request that does anything is a "set" whose data
 * block is "USER PASSWORD" (key, flags and exptime ignored); "quit" closes;
 * every other line is answered CLIENT_ERROR unauthenticated.
 */
enum proto_auth_status {
    PROTO_AUTH_NEED_MORE = 0, /* incomplete: call again with more (need: total if known) */
    PROTO_AUTH_TOKEN,         /* credentials in user/pass; drop *consumed bytes */
    PROTO_AUTH_REFUSE,        /* reply error; drop *consumed bytes */
    PROTO_AUTH_QUIT,          /* drop *consumed bytes and close */
    PROTO_AUTH_CLOSE,         /* send reply if not NULL, then close; error says why */
};

struct proto_auth {
    const char *user, *pass; /* TOKEN: point into the caller's buffer */
    size_t nuser, npass;     /* USER is before the data's first space, PASSWORD after */
    const char *error;       /* REFUSE: the reply line (no CRLF); CLOSE: the reason */
    const char *reply;       /* CLOSE: a line to send first, or NULL */
    size_t need;
};

/* Parses the first request of buf[0..len) as above. A line over
 * LIMIT_LINE_BYTES_MAX, a data block over LIMIT_AUTH_TOKEN_BYTES_MAX, or an
 * HTTP request line closes the connection. Pure, like proto_parse(). */
enum proto_auth_status proto_parse_auth(const char *buf, size_t len, struct proto_auth *a,
                                        size_t *consumed);

/*
 * Iterates the keys of a retrieval request: set *pos = 0 first; each call
 * stores the next key in *key and its length in *nkey and returns true, or returns false at the
 * end.
 */
bool proto_next_key(const struct proto_req *req, size_t *pos, const char **key, size_t *nkey);

/* True if key[0..n) is a valid memcached key: 1..250 bytes, no control
 * characters, no spaces. */
bool proto_key_valid(const char *key, size_t n);

/* True for commands that change data (set .. flush_all). */
bool proto_cmd_is_write(enum proto_cmd cmd);

/*
 * exptime rules: 0 = never; negative = already expired; up to 30 days =
 * seconds from now; larger = absolute unix time in seconds. Returns the
 * absolute expiry in unix ms, 0 for never, PROTO_EXPTIME_EXPIRED for an
 * expired one. now_ms is the caller's clock, so replicas can share one.
 */
#define PROTO_EXPTIME_EXPIRED ((int64_t)1)
int64_t proto_exptime_abs_ms(int64_t exptime, int64_t now_ms);

/*
 * Formats "VALUE <key> <flags> <bytes>[ <cas>]\r\n" into dst, which must hold
 * PROTO_VALUE_HDR_MAX bytes. Returns the length.
 */
#define PROTO_VALUE_HDR_MAX (6 + 250 + 1 + 10 + 1 + 10 + 1 + 20 + 2 + 1)
size_t proto_fmt_value_hdr(char *dst, const char *key, size_t nkey, uint32_t flags,
                           size_t nbytes, bool with_cas, uint64_t cas);

/*
 * A connection's byte stream around proto_parse, as serve runs it (and
 * fuzz_proto checks it). proto_stream_consume: a request at buf[pos..len)
 * consumed `consumed` bytes; returns the position after it. What it
 * consumed beyond len (a refused data block still arriving) is added to
 * *swallow. proto_stream_swallow: drops from the front of buf[0..*len) what
 * *swallow still owes, as bytes arrive; returns how many it dropped.
 */
size_t proto_stream_consume(size_t len, size_t pos, size_t consumed, uint64_t *swallow);
size_t proto_stream_swallow(char *buf, size_t *len, uint64_t *swallow);

/* UDP frame header (memcached): four big-endian u16. */
struct proto_udp_hdr {
    uint16_t req_id;
    uint16_t seq;
    uint16_t total;
    uint16_t reserved;
};

/*
 * Decodes and checks a request datagram's header. Returns 0, or -EINVAL if
 * shorter than 8 bytes, -EMSGSIZE if it claims to be one of several
 * datagrams (requests must fit one) or is not sequence 0.
 */
int proto_udp_decode(const void *dgram, size_t len, struct proto_udp_hdr *hdr);

/* Reads the header of any datagram, request or reply, without checking it;
 * the caller has checked that it holds at least 8 bytes. */
void proto_udp_read(const void *dgram, struct proto_udp_hdr *hdr);
void proto_udp_encode(void *dst, const struct proto_udp_hdr *hdr);

/* Datagrams needed for a reply of n bytes (0 for an empty reply). */
size_t proto_udp_datagrams(size_t n);

/*
 * Writes datagram i of the reply reply[0..n) to request req_id into dst
 * (room for LIMIT_UDP_HEADER_BYTES + LIMIT_UDP_PAYLOAD_BYTES): the header
 * (sequence i of proto_udp_datagrams(n)) and its part of the reply. Returns
 * its length. i < proto_udp_datagrams(n) <= LIMIT_UDP_DATAGRAMS_MAX.
 */
size_t proto_udp_cut(void *dst, uint16_t req_id, const char *reply, size_t n, size_t i);

#endif /* TPCKV_PROTO_H */
