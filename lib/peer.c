/*
 * peer.c - replica-to-replica transport: the --replicas list, authenticated
 * links, and the frame codec.
 *
 * FRAME (little-endian):
 *    0  4  len: bytes after this field (at least 16)
 *    4  4  CRC32C of bytes 8 .. 4+len (everything after this field)
 *    8  1  version (PEER_FRAME_VERSION; a frame of another version is
 *          refused, so replicas of different releases refuse each other's
 *          links, with a log line)
 *    9  1  type: 1..7 a tpc message (enum tpc_msg_type), 32 HELLO, 33 AUTH,
 *          34 PING, 35 PONG, 36 STATE
 *   10  2  flags: 0, but PEER_FLAG_RESENT on a PREPARE its coordinator sends
 *          again (a participant with no record of it refuses it)
 *   12  8  epoch: the sender's cluster configuration epoch
 *   20     body
 *
 * A frame whose total size (4 + len) exceeds frame_bytes_max is refused as
 * soon as its first 4 bytes arrive, before it is buffered. Before the
 * handshake completes, and on outbound links always, the limit is the size
 * of a HELLO, so an unauthenticated client cannot make us buffer more.
 *
 * BODIES:
 *   PREPARE  u64 txid | u32 coord | u32 nops (>= 1) | u64 view | ops (the
 *            rest, >= 1 byte)
 *   VOTE     u64 txid | u32 coord | u8 vote (0 no, 1 yes) | u8 reason | u16 0 |
 *            u64 view
 *   COMMIT, ABORT, ACK, QUERY
 *            u64 txid | u32 coord | u8 reason | u8 0 | u16 0 | u64 view
 *   ANSWER   u64 txid | u32 coord | u8 outcome | u8 0 | u16 0 | u64 view
 *            (view: the view the transaction was prepared in)
 *   HELLO    u32 replica id | u64 config hash | 32-byte random nonce
 *   AUTH     32-byte HMAC-SHA256
 *   PING     u64 t0: the sender's wall clock, unix microseconds
 *   PONG     u64 t0 (the PING's, echoed) | u64 t1: the answerer's wall clock
 * A PING goes out on the outbound link and its PONG comes back on the
 * peer's (our inbound link from it), like a VOTE answering a PREPARE. The
 * pinger reads its clock again at t2: the peer's clock is t1 - (t0 + t2)/2
 * off ours, give or take (t2 - t0)/2 (see skew.h for what serve does with
 * it).
 * from and to are not on the wire: the sender is the link's authenticated
 * peer, the receiver is us. Every field is range-checked on decode.
 *
 * HANDSHAKE (mutual challenge-response over the cluster secret; only HELLO
 * and AUTH are accepted until it completes, within LIMIT_PEER_HANDSHAKE_MS).
 * The dialer speaks first, so an acceptor can tell a client that came to
 * the wrong port (its first byte is a letter) and answer it in text:
 *   dialer -> acceptor   HELLO{dialer id, hash, nonce_d}
 *   acceptor checks the dialer id is another configured replica, the epoch
 *   (frame header) and the hash of the --replicas list (a mismatch: it
 *   closes, and logs why), then:
 *   acceptor -> dialer   HELLO{acceptor id, hash, nonce_a}
 *   dialer checks the epoch, the hash, and that the id is the one it
 *   dialed, then:
 *   dialer -> acceptor   AUTH{HMAC(secret, "tpckv-peer-v1 dialer" | nonce_a |
 *                                  nonce_d | u32 dialer id | u32 acceptor id)}
 *   acceptor checks the MAC (CRYPTO_memcmp), then:
 *   acceptor -> dialer   AUTH{HMAC(secret, "tpckv-peer-v1 acceptor" | nonce_d |
 *                                  nonce_a | u32 acceptor id | u32 dialer id)}
 *   dialer checks the MAC: its outbound link is up.
 * Each side's MAC covers a nonce the other side just chose, so a recorded
 * handshake cannot be replayed; the labels and id order keep one side's MAC
 * from being reflected as the other's. The secret never crosses the wire.
 * Links are not encrypted: the secret authenticates, it does not hide data.
 *
 * LINKS. Each replica dials every other one; that outbound link only sends.
 * Links it accepts only receive: after the handshake, an inbound link
 * carries tpc messages, each checked for our epoch; anything else closes it.
 * An outbound link expects nothing back after the handshake: any frame on it
 * is a protocol error and closes it (it is still read, to see EOF at once).
 * A new authenticated inbound link from replica X replaces an older one, so
 * a peer that restarted is heard through its new link at once.
 *
 * A closed outbound link is dialed again after a backoff that doubles from
 * LIMIT_PEER_RECONNECT_MS_MIN to LIMIT_PEER_RECONNECT_MS_MAX (plus up to a
 * quarter of jitter, so replicas restarted together do not dial in step),
 * and starts over from the minimum once a link comes up.
 *
 * OUTPUT. peer_send encodes into the link's queue and starts an idle handle;
 * the idle callback (next loop turn, before polling) hands each link's queue
 * to one uv_write. While a write is in flight, frames gather for the next
 * one, so a busy link coalesces more. A link whose queue (in flight
 * included) would pass output_bytes_max is closed: a peer that cannot keep
 * up is treated as down, and the transactions waiting on it time out.
 * on_link notifications go through the same idle callback, so no callback
 * ever runs from inside peer_send.
 *
 * LOGGING. A link coming up is logged at info; an up link going down at
 * warn, once per transition; each retry at debug. A failed handshake is
 * logged at warn (error for a failed authentication) once per cause and
 * direction until the link comes up again, then at debug, so a
 * misconfigured peer retrying every second does not flood the log.
 *
 * MEMORY SAFETY. A connection or the net is freed only from libuv close
 * callbacks, never while one of our callbacks may be on the stack; code that
 * runs a user callback checks the closing flags right after it.
 */
#include "peer.h"

#include "buf.h"
#include "crc32c.h"
#include "limits.h"
#include "log.h"
#include "util.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#define MOD "peer"

/* Handshake frames are at most this big; a bigger one before the handshake
 * completes is malformed. */
#define HS_FRAME_MAX (PEER_FRAME_HEADER_BYTES + PEER_HELLO_BODY_BYTES)
/* Free space a read is given. */
#define READ_CHUNK_BYTES (64 * 1024)
/* TCP keepalive probes start after this much idleness: a peer whose host
 * vanished (no RST) is noticed even when we have nothing to send. */
#define KEEPALIVE_DELAY_S 10
/* Listen backlog: replicas are few, but they may all reconnect at once. */
#define LISTEN_BACKLOG 128

static const char dialer_label[] = "tpckv-peer-v1 dialer";
static const char acceptor_label[] = "tpckv-peer-v1 acceptor";

/* ---- codec ----------------------------------------------------------------- */

/* Internal decoder: like peer_frame_decode, and says why in *why. */
static long frame_decode(const char *buf, size_t len, size_t max, struct peer_frame *f,
                         const char **why)
{
    uint32_t flen;
    size_t total;

    if (len < 4)
        return -EAGAIN;
    flen = util_get_le32(buf);
    total = (size_t)flen + 4;
    if (flen < PEER_FRAME_HEADER_BYTES - 4) {
        *why = "length under the header size";
        return -EBADMSG;
    }
    if (total > max || total > (size_t)PTRDIFF_MAX) {
        *why = "length over the limit";
        return -EBADMSG;
    }
    if (len < total)
        return -EAGAIN;
    if (crc32c(0, buf + 8, flen - 4) != util_get_le32(buf + 4)) {
        *why = "bad checksum";
        return -EBADMSG;
    }
    if ((uint8_t)buf[8] != PEER_FRAME_VERSION) {
        *why = (uint8_t)buf[8] < PEER_FRAME_VERSION
                   ? "an older frame version: every replica must run the same release"
                   : "a newer frame version: every replica must run the same release";
        return -EBADMSG;
    }
    if ((util_get_le16(buf + 10) & ~PEER_FLAG_RESENT) != 0 ||
        (util_get_le16(buf + 10) != 0 && (uint8_t)buf[9] != TPC_MSG_PREPARE)) {
        *why = "nonzero flags";
        return -EBADMSG;
    }
    f->version = (uint8_t)buf[8];
    f->type = (uint8_t)buf[9];
    f->flags = util_get_le16(buf + 10);
    f->epoch = util_get_le64(buf + 12);
    f->body = buf + PEER_FRAME_HEADER_BYTES;
    f->nbody = flen - (PEER_FRAME_HEADER_BYTES - 4);
    return (long)total;
}

long peer_frame_decode(const char *buf, size_t len, size_t frame_bytes_max,
                       struct peer_frame *f)
{
    const char *why;

    return frame_decode(buf, len, frame_bytes_max, f, &why);
}

/* Appends a frame header for a body of nbody bytes and returns where the
 * body goes; frame_seal() computes the checksum once the body is written.
 * The caller has reserved the room. */
static char *frame_start(struct buf *b, uint8_t type, uint64_t epoch, size_t nbody)
{
    char *p = b->data + b->len;

    util_put_le32(p, (uint32_t)(PEER_FRAME_HEADER_BYTES - 4 + nbody));
    util_put_le32(p + 4, 0);
    p[8] = PEER_FRAME_VERSION;
    p[9] = (char)type;
    util_put_le16(p + 10, 0);
    util_put_le64(p + 12, epoch);
    b->len += PEER_FRAME_HEADER_BYTES + nbody;
    return p + PEER_FRAME_HEADER_BYTES;
}

static void frame_seal(char *frame)
{
    uint32_t flen = util_get_le32(frame);

    util_put_le32(frame + 4, crc32c(0, frame + 8, flen - 4));
}

/* Appends a frame with the given body. Returns 0 or -ENOMEM. */
static int frame_append(struct buf *b, uint8_t type, uint64_t epoch, const void *body,
                        size_t nbody)
{
    char *frame;

    if (buf_reserve(b, PEER_FRAME_HEADER_BYTES + nbody) < 0)
        return -ENOMEM;
    frame = b->data + b->len;
    memcpy(frame_start(b, type, epoch, nbody), body, nbody);
    frame_seal(frame);
    return 0;
}

/* Checks m as a message we would send; returns its body size, or 0. */
static size_t msg_body_size(const struct tpc_msg *m)
{
    if (m->coord >= TPC_REPLICAS_MAX)
        return 0;
    switch (m->type) {
    case TPC_MSG_PREPARE:
        if (m->nops == 0 || m->nbytes == 0 || m->ops == NULL)
            return 0;
        return PEER_MSG_FIXED_BYTES + (size_t)m->nbytes;
    case TPC_MSG_VOTE:
        if (m->vote > 1 || !tpc_reason_on_wire(m->reason))
            return 0;
        return PEER_MSG_FIXED_BYTES;
    case TPC_MSG_COMMIT:
    case TPC_MSG_ABORT:
    case TPC_MSG_ACK:
    case TPC_MSG_QUERY:
        if (!tpc_reason_on_wire(m->reason))
            return 0;
        return PEER_MSG_FIXED_BYTES;
    case TPC_MSG_ANSWER:
        if (m->outcome > TPC_O_LOST)
            return 0;
        return PEER_MSG_FIXED_BYTES;
    }
    return 0;
}

size_t peer_msg_frame_size(const struct tpc_msg *m)
{
    size_t body = msg_body_size(m);

    return body ? PEER_FRAME_HEADER_BYTES + body : 0;
}

int peer_msg_encode(struct buf *b, const struct tpc_msg *m)
{
    size_t body = msg_body_size(m);
    char *frame, *p;

    if (body == 0)
        return -EINVAL;
    if (body > UINT32_MAX - PEER_FRAME_HEADER_BYTES)
        return -EMSGSIZE;
    if (buf_reserve(b, PEER_FRAME_HEADER_BYTES + body) < 0)
        return -ENOMEM;
    frame = b->data + b->len;
    p = frame_start(b, m->type, m->epoch, body);
    if (m->type == TPC_MSG_PREPARE && m->resent)
        util_put_le16(p - PEER_FRAME_HEADER_BYTES + 10, PEER_FLAG_RESENT);
    util_put_le64(p, m->txid);
    util_put_le32(p + 8, m->coord);
    util_put_le64(p + 16, m->view);
    switch (m->type) {
    case TPC_MSG_PREPARE:
        util_put_le32(p + 12, m->nops);
        memcpy(p + PEER_MSG_FIXED_BYTES, m->ops, m->nbytes);
        break;
    case TPC_MSG_VOTE:
        p[12] = (char)m->vote;
        p[13] = (char)m->reason;
        util_put_le16(p + 14, 0);
        break;
    case TPC_MSG_ANSWER:
        p[12] = (char)m->outcome;
        p[13] = 0;
        util_put_le16(p + 14, 0);
        break;
    default:
        p[12] = (char)m->reason;
        p[13] = 0;
        util_put_le16(p + 14, 0);
        break;
    }
    frame_seal(frame);
    return 0;
}

/* Internal decoder: like peer_msg_decode, and says why in *why. */
static int msg_decode(const struct peer_frame *f, struct tpc_msg *m, const char **why)
{
    const char *p = f->body;

    memset(m, 0, sizeof(*m));
    if (f->type < TPC_MSG_PREPARE || f->type > TPC_MSG_TYPE_MAX) {
        *why = "unknown message type";
        return -EBADMSG;
    }
    if (f->type == TPC_MSG_PREPARE ? f->nbody <= PEER_MSG_FIXED_BYTES
                                   : f->nbody != PEER_MSG_FIXED_BYTES) {
        *why = "wrong body length for its type";
        return -EBADMSG;
    }
    m->type = f->type;
    m->epoch = f->epoch;
    m->resent = (f->flags & PEER_FLAG_RESENT) != 0;
    m->txid = util_get_le64(p);
    m->coord = util_get_le32(p + 8);
    m->view = util_get_le64(p + 16);
    if (m->coord >= TPC_REPLICAS_MAX) {
        *why = "coordinator id out of range";
        return -EBADMSG;
    }
    if (m->type == TPC_MSG_PREPARE) {
        m->nops = util_get_le32(p + 12);
        m->ops = p + PEER_MSG_FIXED_BYTES;
        m->nbytes = f->nbody - PEER_MSG_FIXED_BYTES;
        if (m->nops == 0) {
            *why = "PREPARE with no operations";
            return -EBADMSG;
        }
        return 0;
    }
    if (util_get_le16(p + 14) != 0) {
        *why = "nonzero padding";
        return -EBADMSG;
    }
    switch (m->type) {
    case TPC_MSG_VOTE:
        m->vote = (uint8_t)p[12];
        m->reason = (uint8_t)p[13];
        if (m->vote > 1) {
            *why = "vote neither 0 nor 1";
            return -EBADMSG;
        }
        break;
    case TPC_MSG_ANSWER:
        m->outcome = (uint8_t)p[12];
        if (m->outcome > TPC_O_LOST) {
            *why = "outcome out of range";
            return -EBADMSG;
        }
        if (p[13] != 0) {
            *why = "nonzero padding";
            return -EBADMSG;
        }
        break;
    default:
        m->reason = (uint8_t)p[12];
        if (p[13] != 0) {
            *why = "nonzero padding";
            return -EBADMSG;
        }
        break;
    }
    if (!tpc_reason_on_wire(m->reason)) {
        *why = "reason out of range";
        return -EBADMSG;
    }
    return 0;
}

int peer_msg_decode(const struct peer_frame *f, struct tpc_msg *m)
{
    const char *why;

    return msg_decode(f, m, &why);
}

/* ---- the replica list ------------------------------------------------------ */

static bool host_char_ok(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
           (ch >= '0' && ch <= '9') || ch == '.' || ch == '-' || ch == '_';
}

/* Parses one entry s[0..len) into a. The entry is quoted (escaped) in the
 * error sentence. */
static int parse_entry(const char *s, size_t len, struct peer_addr *a, char *err,
                       size_t errcap)
{
    char q[128];
    const char *at, *host, *hend, *port;
    size_t nhost;
    uint32_t id, pnum;
    char tmp[256];

    log_escape(q, sizeof(q), s, len);
    memset(a, 0, sizeof(*a));
    if (len == 0)
        return util_errf(
            err, errcap, -EINVAL,
            "--replicas has an empty entry (a comma at the start or end, or two "
            "in a row)");
    at = memchr(s, '@', len);
    if (at == NULL)
        return util_errf(err, errcap, -EINVAL,
                         "--replicas entry \"%s\" is not ID@HOST:PORT (no '@')", q);
    if (util_parse_u32(s, (size_t)(at - s), &id) < 0 || id >= LIMIT_REPLICAS_MAX)
        return util_errf(err, errcap, -EINVAL,
                         "--replicas entry \"%s\": the id must be a number from 0 to %d",
                         q, LIMIT_REPLICAS_MAX - 1);
    host = at + 1;
    if (host < s + len && *host == '[') {
        host++;
        hend = memchr(host, ']', (size_t)(s + len - host));
        if (hend == NULL)
            return util_errf(
                err, errcap, -EINVAL,
                "--replicas entry \"%s\": '[' opens an IPv6 address with no ']'", q);
        port = hend + 1;
        nhost = (size_t)(hend - host);
        if (nhost == 0 || nhost >= sizeof(tmp))
            return util_errf(err, errcap, -EINVAL,
                             "--replicas entry \"%s\": the brackets hold no IPv6 address",
                             q);
        memcpy(tmp, host, nhost);
        tmp[nhost] = '\0';
        struct in6_addr a6;
        if (inet_pton(AF_INET6, tmp, &a6) != 1)
            return util_errf(err, errcap, -EINVAL,
                             "--replicas entry \"%s\": [%s] is not an IPv6 address", q,
                             tmp);
        if (port >= s + len || *port != ':')
            return util_errf(err, errcap, -EINVAL,
                             "--replicas entry \"%s\": expected :PORT after the address",
                             q);
        port++;
    } else {
        const char *colon = NULL;
        for (const char *p = host; p < s + len; p++)
            if (*p == ':')
                colon = p;
        if (colon == NULL)
            return util_errf(err, errcap, -EINVAL,
                             "--replicas entry \"%s\": expected :PORT after the host", q);
        hend = colon;
        nhost = (size_t)(hend - host);
        if (memchr(host, ':', nhost) != NULL)
            return util_errf(
                err, errcap, -EINVAL,
                "--replicas entry \"%s\": write an IPv6 address in brackets, "
                "e.g. %u@[::1]:7000",
                q, id);
        if (nhost == 0)
            return util_errf(err, errcap, -EINVAL,
                             "--replicas entry \"%s\": the host is empty", q);
        if (nhost >= sizeof(a->host))
            return util_errf(err, errcap, -EINVAL,
                             "--replicas entry \"%s\": the host is longer than %zu bytes",
                             q, sizeof(a->host) - 1);
        for (size_t i = 0; i < nhost; i++)
            if (!host_char_ok(host[i]))
                return util_errf(
                    err, errcap, -EINVAL,
                    "--replicas entry \"%s\": the host has a character a host "
                    "name cannot have",
                    q);
        memcpy(tmp, host, nhost);
        tmp[nhost] = '\0';
        port = colon + 1;
    }
    if (util_parse_u32(port, (size_t)(s + len - port), &pnum) < 0 || pnum < 1 ||
        pnum > 65535)
        return util_errf(
            err, errcap, -EINVAL,
            "--replicas entry \"%s\": the port must be a number from 1 to 65535", q);
    /* Host names are case-insensitive; one spelling keeps the config hash
     * and the duplicate check from depending on case. */
    for (size_t i = 0; i < nhost; i++)
        a->host[i] =
            (tmp[i] >= 'A' && tmp[i] <= 'Z') ? (char)(tmp[i] - 'A' + 'a') : tmp[i];
    a->host[nhost] = '\0';
    a->id = id;
    a->port = (int)pnum;
    return 0;
}

int peer_parse_replicas(const char *spec, struct peer_addr *out, size_t cap, size_t *n,
                        char *err, size_t errcap)
{
    struct peer_addr tmp[LIMIT_REPLICAS_MAX];
    size_t count = 0, limit = cap < LIMIT_REPLICAS_MAX ? cap : LIMIT_REPLICAS_MAX;
    const char *p = spec;
    int r;

    *n = 0;
    if (spec == NULL || *spec == '\0')
        return util_errf(
            err, errcap, -EINVAL,
            "--replicas is empty: list every replica as ID@HOST:PORT, separated "
            "by commas");
    for (;;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);

        if (count == limit)
            return util_errf(err, errcap, -EINVAL,
                             "--replicas lists more than %zu replicas", limit);
        r = parse_entry(p, len, &tmp[count], err, errcap);
        if (r < 0)
            return r;
        for (size_t i = 0; i < count; i++) {
            char q[128];
            log_escape(q, sizeof(q), p, len);
            if (tmp[i].id == tmp[count].id)
                return util_errf(err, errcap, -EINVAL,
                                 "--replicas entry \"%s\": replica id %u is listed twice",
                                 q, tmp[count].id);
            if (strcmp(tmp[i].host, tmp[count].host) == 0 &&
                tmp[i].port == tmp[count].port)
                return util_errf(
                    err, errcap, -EINVAL,
                    "--replicas entry \"%s\": that address is already replica "
                    "%u's",
                    q, tmp[i].id);
        }
        count++;
        if (end == NULL)
            break;
        p = end + 1;
    }
    /* Insertion sort: at most 16 entries. */
    for (size_t i = 1; i < count; i++) {
        struct peer_addr x = tmp[i];
        size_t j = i;
        for (; j > 0 && tmp[j - 1].id > x.id; j--)
            tmp[j] = tmp[j - 1];
        tmp[j] = x;
    }
    memcpy(out, tmp, count * sizeof(tmp[0]));
    *n = count;
    return 0;
}

/* Formats "host:port", with brackets around an IPv6 host. */
static void fmt_hostport(char *dst, size_t cap, const char *host, int port)
{
    if (strchr(host, ':'))
        snprintf(dst, cap, "[%s]:%d", host, port);
    else
        snprintf(dst, cap, "%s:%d", host, port);
}

/* FNV-1a: the hash only has to tell differing lists apart (a mistake, not
 * an attack: the secret is what authenticates), and it cannot fail. */
static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;

    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

uint64_t peer_config_hash(const struct peer_addr *a, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    size_t idx[LIMIT_REPLICAS_MAX];
    char entry[300];

    if (n > LIMIT_REPLICAS_MAX)
        n = LIMIT_REPLICAS_MAX;
    for (size_t i = 0; i < n; i++) {
        size_t j = i;
        for (; j > 0 && a[idx[j - 1]].id > a[i].id; j--)
            idx[j] = idx[j - 1];
        idx[j] = i;
    }
    for (size_t i = 0; i < n; i++) {
        const struct peer_addr *e = &a[idx[i]];
        char hp[280];
        int len;

        fmt_hostport(hp, sizeof(hp), e->host, e->port);
        len = snprintf(entry, sizeof(entry), "%u@%s,", e->id, hp);
        if (len > 0)
            h = fnv1a(h, entry,
                      (size_t)len < sizeof(entry) ? (size_t)len : sizeof(entry) - 1);
    }
    return h;
}

const char *peer_link_state_name(enum peer_link_state s)
{
    switch (s) {
    case PEER_LINK_DOWN:
        return "down";
    case PEER_LINK_CONNECTING:
        return "connecting";
    case PEER_LINK_HANDSHAKE:
        return "handshake";
    case PEER_LINK_UP:
        return "up";
    }
    return "?";
}

/* ---- the transport ----------------------------------------------------------- */

/* Where a connection is in its life. */
enum phase {
    PH_CONNECTING, /* outbound: TCP connect in progress */
    PH_HELLO,      /* waiting for the peer's HELLO */
    PH_AUTH,       /* waiting for the peer's AUTH */
    PH_UP,         /* authenticated */
};

/* Why a connection failed, to log each cause once. */
enum cause {
    C_NONE,
    C_CONNECT,
    C_TIMEOUT,
    C_CLOSED,
    C_EPOCH,
    C_CONFIG,
    C_WRONG_ID,
    C_AUTH,
    C_BAD_FRAME,
    C_IO,
    C_BUSY,
    C_TEXT,
};

struct peer_node;

struct peer_conn {
    struct peer_net *net;
    /* Outbound: the peer dialed. Inbound: the replica its HELLO named (a
     * claim until AUTH checks it), NULL before. */
    struct peer_node *node;
    struct peer_conn *prev, *next; /* net->conns */
    uv_tcp_t tcp;
    uv_timer_t timer; /* handshake deadline */
    uv_connect_t creq;
    uv_write_t wreq;
    int open_handles; /* freed when both tcp and timer have closed */
    bool outbound, closing, writing;
    bool hs_counted; /* inbound, counted in net->inbound_handshakes */
    enum phase phase;
    unsigned char nonce_local[PEER_NONCE_BYTES], nonce_peer[PEER_NONCE_BYTES];
    struct buf in;    /* bytes read, not yet decoded */
    struct buf out;   /* frames queued, not yet written */
    struct buf wbuf;  /* the frames of the write in flight */
    char remote[280]; /* "host:port", for log lines */
};

struct peer_node {
    struct peer_net *net;
    bool configured;
    struct peer_addr addr;
    char name[300]; /* "peer 2 (127.0.0.1:7002)" */
    bool numeric;   /* addr.host is an IP literal, in sa */
    struct sockaddr_storage sa;
    uv_timer_t retry;
    bool retry_open;
    uv_getaddrinfo_t gai;
    bool resolving;
    unsigned backoff_ms;
    bool ever_up;
    enum peer_link_state state;
    struct peer_conn *out; /* the outbound connection, any phase */
    struct peer_conn *in;  /* the authenticated inbound connection */
    /* Outbound up/down transitions not yet reported through on_link, and
     * what was reported last. */
    unsigned events;
    bool reported_up;
    /* The last cause logged at warn/error per direction (reset once up). */
    enum cause last_out, last_in;
    struct peer_link_stats st;
};

struct peer_net {
    uv_loop_t *loop;
    struct peer_config cfg; /* cfg.secret points to secret */
    unsigned char *secret;
    uint64_t hash;
    struct peer_node nodes[LIMIT_REPLICAS_MAX];
    uv_tcp_t listener;
    uv_idle_t idle;
    bool idle_active;
    struct peer_conn *conns;
    unsigned pending;            /* handles and requests not yet given back */
    unsigned inbound_handshakes; /* inbound connections not yet up */
    enum cause last_anon;        /* the last cause logged for unnamed connections */
    struct log_limit anon_log;   /* their log lines: at most a burst a second */
    bool started, closing;
    int port;
    uint64_t rng;
    struct peer_net_stats nst;
};

static void conn_close(struct peer_conn *c, const char *why, bool logged);
static void schedule(struct peer_net *net);

static void net_unref(struct peer_net *net)
{
    if (--net->pending > 0 || !net->closing)
        return;
    free(net->secret);
    free(net);
}

static uint32_t rnd(struct peer_net *net)
{
    net->rng ^= net->rng << 13;
    net->rng ^= net->rng >> 7;
    net->rng ^= net->rng << 17;
    return (uint32_t)(net->rng >> 32);
}

/* Fills p with n bytes from the kernel's random source. Returns 0 or -errno. */
static int random_bytes(void *p, size_t n)
{
    unsigned char *b = p;

    while (n > 0) {
        ssize_t r = getrandom(b, n, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        b += r;
        n -= (size_t)r;
    }
    return 0;
}

/* HMAC-SHA256(secret, label | n1 | n2 | id1 | id2) into out. Returns 0 or
 * -EIO (libcrypto failed). */
static int handshake_mac(const struct peer_net *net, const char *label,
                         const unsigned char *n1, const unsigned char *n2, uint32_t id1,
                         uint32_t id2, unsigned char *out)
{
    unsigned char msg[32 + 2 * PEER_NONCE_BYTES + 8];
    size_t nl = strlen(label), len = 0;
    unsigned int mdlen = 0;

    memcpy(msg, label, nl);
    len += nl;
    memcpy(msg + len, n1, PEER_NONCE_BYTES);
    len += PEER_NONCE_BYTES;
    memcpy(msg + len, n2, PEER_NONCE_BYTES);
    len += PEER_NONCE_BYTES;
    util_put_le32(msg + len, id1);
    util_put_le32(msg + len + 4, id2);
    len += 8;
    if (HMAC(EVP_sha256(), net->secret, (int)net->cfg.nsecret, msg, len, out, &mdlen) ==
            NULL ||
        mdlen != PEER_MAC_BYTES)
        return -EIO;
    return 0;
}

static void node_set_name(struct peer_node *nd)
{
    char hp[280];

    fmt_hostport(hp, sizeof(hp), nd->addr.host, nd->addr.port);
    snprintf(nd->name, sizeof(nd->name), "peer %u (%s)", nd->addr.id, hp);
}

static void sa_set_port(struct sockaddr_storage *sa, int port)
{
    if (sa->ss_family == AF_INET6)
        ((struct sockaddr_in6 *)sa)->sin6_port = htons((uint16_t)port);
    else
        ((struct sockaddr_in *)sa)->sin_port = htons((uint16_t)port);
}

/* Counts one more transition of node's outbound link, reported later. */
static void link_event(struct peer_node *nd)
{
    nd->events++;
    schedule(nd->net);
}

/*
 * Records a failure with a peer (or, nd NULL, with an unnamed inbound
 * connection): its sentence becomes last_error and is logged at lvl the
 * first time this cause shows up in this direction, at debug after.
 */
static void note_failure(struct peer_net *net, struct peer_node *nd, const char *remote,
                         bool outbound, enum cause cause, enum log_level lvl,
                         const char *msg)
{
    enum cause *last;

    if (nd != NULL) {
        snprintf(nd->st.last_error, sizeof(nd->st.last_error), "%s", msg);
        last = outbound ? &nd->last_out : &nd->last_in;
    } else {
        net->nst.anon_failures++;
        last = &net->last_anon;
    }
    if (*last == cause)
        lvl = LOG_LEVEL_DEBUG;
    *last = cause;
    if (nd != NULL) {
        log_at(lvl, MOD, "%s: %s", nd->name, msg);
        return;
    }
    /* Anyone can open connections: at most LIMIT_LOG_BURST_PER_S lines a
     * second about them above debug, whatever their causes; the rest at
     * debug, counted in the next line let through. */
    uint64_t dropped = 0;
    char note[80] = "";
    if (lvl < LOG_LEVEL_DEBUG) {
        if (log_limit_allow(&net->anon_log, &dropped))
            log_limit_note(note, sizeof(note), dropped);
        else
            lvl = LOG_LEVEL_DEBUG;
    }
    log_at(lvl, MOD, "connection from %s: %s%s", remote, msg, note);
}

/* A connection failed for cause: note it (see note_failure) and close it. */
static void conn_fail(struct peer_conn *c, enum cause cause, enum log_level lvl,
                      const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static void conn_fail(struct peer_conn *c, enum cause cause, enum log_level lvl,
                      const char *fmt, ...)
{
    char msg[256];
    va_list ap;

    if (c->closing)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    note_failure(c->net, c->node, c->remote, c->outbound, cause, lvl, msg);
    conn_close(c, msg, true);
}

static void on_conn_handle_closed(uv_handle_t *h)
{
    struct peer_conn *c = h->data;
    struct peer_net *net = c->net;

    if (--c->open_handles > 0) {
        net_unref(net);
        return;
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        net->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    buf_free(&c->in);
    buf_free(&c->out);
    buf_free(&c->wbuf);
    free(c);
    net_unref(net);
}

static struct peer_conn *conn_new(struct peer_net *net, bool outbound,
                                  struct peer_node *nd)
{
    struct peer_conn *c = calloc(1, sizeof(*c));

    if (c == NULL)
        return NULL;
    c->net = net;
    c->node = nd;
    c->outbound = outbound;
    uv_tcp_init(net->loop, &c->tcp);
    uv_timer_init(net->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->creq.data = c;
    c->wreq.data = c;
    c->open_handles = 2;
    net->pending += 2;
    c->next = net->conns;
    if (net->conns)
        net->conns->prev = c;
    net->conns = c;
    if (nd != NULL)
        fmt_hostport(c->remote, sizeof(c->remote), nd->addr.host, nd->addr.port);
    return c;
}

static void on_retry(uv_timer_t *t);
static void dial(struct peer_node *nd);

/* Arms the reconnect timer with the current backoff, then doubles it. */
static void schedule_retry(struct peer_node *nd)
{
    struct peer_net *net = nd->net;
    unsigned d = nd->backoff_ms;
    unsigned delay = d + rnd(net) % (d / 4 + 1);

    if (net->closing || !nd->retry_open)
        return;
    nd->backoff_ms =
        d * 2 > LIMIT_PEER_RECONNECT_MS_MAX ? LIMIT_PEER_RECONNECT_MS_MAX : d * 2;
    log_debug(MOD, "%s: dialing again in %u ms", nd->name, delay);
    uv_timer_start(&nd->retry, on_retry, delay, 0);
}

/*
 * Closes c (its memory goes in the close callbacks). why is logged as the
 * reason an up outbound link went down, unless the failure was logged
 * already (logged). An outbound connection is dialed again after a backoff.
 */
static void conn_close(struct peer_conn *c, const char *why, bool logged)
{
    struct peer_net *net = c->net;
    struct peer_node *nd = c->node;

    if (c->closing)
        return;
    c->closing = true;
    if (c->hs_counted) {
        c->hs_counted = false;
        net->inbound_handshakes--;
    }
    if (c->outbound && nd->out == c) {
        nd->out = NULL;
        nd->state = PEER_LINK_DOWN;
        if (c->phase == PH_UP) {
            nd->st.disconnects++;
            if (!net->closing) {
                if (!logged) {
                    snprintf(nd->st.last_error, sizeof(nd->st.last_error), "%s", why);
                    log_warn(MOD, "%s: link down: %s; reconnecting", nd->name, why);
                }
                /* That warning covers the failed dials that follow. */
                nd->last_out = C_CONNECT;
                link_event(nd);
            }
        }
        schedule_retry(nd);
    } else if (!c->outbound && nd != NULL && nd->in == c) {
        nd->in = NULL;
        nd->st.inbound_up = false;
        if (!net->closing)
            log_at(logged ? LOG_LEVEL_DEBUG : LOG_LEVEL_INFO, MOD,
                   "%s: inbound link closed: %s", nd->name, why);
    }
    uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
}

static void on_write(uv_write_t *req, int status);

/* Hands c's queued frames to one uv_write, unless one is in flight (the
 * write callback schedules the next flush). */
static void conn_flush(struct peer_conn *c)
{
    struct buf t;
    uv_buf_t b;
    int r;

    if (c->closing || c->writing || c->out.len == 0)
        return;
    t = c->wbuf;
    c->wbuf = c->out;
    c->out = t;
    c->out.len = 0;
    b = uv_buf_init(c->wbuf.data, (unsigned int)c->wbuf.len);
    r = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_write);
    if (r < 0) {
        conn_fail(c, C_IO, LOG_LEVEL_WARN, "write failed: %s", uv_strerror(r));
        return;
    }
    c->writing = true;
    if (c->node != NULL) {
        c->node->st.bytes_out += c->wbuf.len;
        if (c->outbound)
            c->node->st.writes++;
    }
}

static void on_write(uv_write_t *req, int status)
{
    struct peer_conn *c = req->data;

    c->writing = false;
    if (c->closing)
        return;
    c->wbuf.len = 0;
    /* A burst's buffer is not kept around for good. */
    if (c->wbuf.cap > LIMIT_READ_BUF_BYTES_KEEP)
        buf_free(&c->wbuf);
    if (status < 0) {
        if (c->phase == PH_UP && c->outbound)
            conn_close(c, uv_strerror(status), false);
        else
            conn_fail(c, C_IO, LOG_LEVEL_WARN, "write failed: %s", uv_strerror(status));
        return;
    }
    if (c->out.len > 0)
        schedule(c->net);
}

/* Reports link transitions through on_link. Returns false if the net was
 * closed by a callback. */
static bool deliver_events(struct peer_net *net)
{
    for (size_t i = 0; i < LIMIT_REPLICAS_MAX; i++) {
        struct peer_node *nd = &net->nodes[i];
        unsigned n = nd->events;

        if (n == 0)
            continue;
        nd->events = 0;
        /* Transitions alternate, so the count says it all; a longer
         * flapping history is cut to its last one or two steps. */
        if (n > 2)
            n = n % 2 ? 1 : 2;
        while (n-- > 0) {
            nd->reported_up = !nd->reported_up;
            if (net->cfg.on_link)
                net->cfg.on_link(net->cfg.arg, nd->addr.id, nd->reported_up);
            if (net->closing)
                return false;
        }
    }
    return true;
}

static void on_idle(uv_idle_t *h)
{
    struct peer_net *net = h->data;
    bool more = false;

    if (!deliver_events(net))
        return;
    /* A connection closed here stays in the list until its close callback. */
    for (struct peer_conn *c = net->conns; c; c = c->next)
        conn_flush(c);
    for (size_t i = 0; i < LIMIT_REPLICAS_MAX; i++)
        more |= net->nodes[i].events > 0;
    if (!more) {
        uv_idle_stop(&net->idle);
        net->idle_active = false;
    }
}

/* Runs on_idle on the next loop turn. */
static void schedule(struct peer_net *net)
{
    if (net->idle_active || net->closing)
        return;
    uv_idle_start(&net->idle, on_idle);
    net->idle_active = true;
}

/* Queues a handshake frame and writes it at once. */
static void send_frame_now(struct peer_conn *c, uint8_t type, const void *body,
                           size_t nbody)
{
    if (frame_append(&c->out, type, c->net->cfg.epoch, body, nbody) < 0) {
        conn_fail(c, C_IO, LOG_LEVEL_WARN, "out of memory");
        return;
    }
    conn_flush(c);
}

static void put_hello(const struct peer_net *net, const unsigned char *nonce, char *body)
{
    util_put_le32(body, net->cfg.self);
    util_put_le64(body + 4, net->hash);
    memcpy(body + 12, nonce, PEER_NONCE_BYTES);
}

static void bad_frame(struct peer_conn *c, const char *why)
{
    if (c->node != NULL)
        c->node->st.bad_frames++;
    conn_fail(c, C_BAD_FRAME, LOG_LEVEL_WARN, "malformed frame (%s); closing the link",
              why);
}

/* Checks a handshake frame's epoch; on a mismatch counts, logs, closes.
 * Returns true if it matches. */
static bool epoch_ok(struct peer_conn *c, const struct peer_frame *f)
{
    struct peer_net *net = c->net;

    if (f->epoch == net->cfg.epoch)
        return true;
    if (c->node != NULL)
        c->node->st.epoch_mismatches++;
    conn_fail(c, C_EPOCH, LOG_LEVEL_WARN,
              "configuration epoch %llu differs from ours (%llu): refusing the link",
              (unsigned long long)f->epoch, (unsigned long long)net->cfg.epoch);
    return false;
}

static void refuse_config(struct peer_conn *c)
{
    if (c->node != NULL) {
        c->node->st.auth_failures++;
        c->node->st.config_mismatches++;
    }
    conn_fail(c, C_CONFIG, LOG_LEVEL_WARN,
              "its --replicas list differs from ours: refusing the link");
}

static void refuse_auth(struct peer_conn *c)
{
    if (c->node != NULL)
        c->node->st.auth_failures++;
    conn_fail(c, C_AUTH, LOG_LEVEL_ERROR,
              "authentication failed: the peers' --secret-file contents differ");
}

/* The outbound link to nd completed its handshake. */
static void send_control(struct peer_node *nd, uint8_t type, const void *body, size_t n);
static uint64_t clock_now_us(const struct peer_net *net);

/* Probes nd's clock, if both its links are up (the PONG comes back on the
 * inbound one): called as either comes up, so whichever is last probes. */
static void probe_node(struct peer_node *nd)
{
    char body[8];

    if (nd->in == NULL || nd->in->phase != PH_UP)
        return;
    util_put_le64(body, clock_now_us(nd->net));
    send_control(nd, PEER_FRAME_PING, body, sizeof(body));
}

static void outbound_up(struct peer_conn *c)
{
    struct peer_node *nd = c->node;

    c->phase = PH_UP;
    uv_timer_stop(&c->timer);
    nd->state = PEER_LINK_UP;
    nd->st.connects++;
    nd->st.last_error[0] = '\0';
    nd->backoff_ms = LIMIT_PEER_RECONNECT_MS_MIN;
    nd->last_out = C_NONE;
    nd->ever_up = true;
    log_info(MOD, "%s: link up", nd->name);
    /* Before anything else on the link: what we hold, and what we saw of
     * the peer (fence.h). */
    if (c->net->cfg.state_out) {
        uint64_t mark = 0, seen = 0;
        uint32_t cport = 0;
        char body[PEER_STATE_BODY_BYTES];
        c->net->cfg.state_out(c->net->cfg.arg, nd->addr.id, &mark, &seen, &cport);
        util_put_le64(body, mark);
        util_put_le64(body + 8, seen);
        util_put_le32(body + 16, cport);
        send_control(nd, PEER_FRAME_STATE, body, sizeof(body));
    }
    link_event(nd);
    probe_node(nd); /* its clock, as soon as the answer can come back */
}

/* An inbound connection authenticated as nd's replica. */
static void inbound_up(struct peer_conn *c)
{
    struct peer_net *net = c->net;
    struct peer_node *nd = c->node;
    struct peer_conn *old = nd->in;

    c->phase = PH_UP;
    uv_timer_stop(&c->timer);
    if (c->hs_counted) {
        c->hs_counted = false;
        net->inbound_handshakes--;
    }
    nd->in = c;
    nd->st.inbound_up = true;
    nd->last_in = C_NONE;
    if (old != NULL)
        conn_close(old, "replaced by a newer connection from the same peer", false);
    log_info(MOD, "%s: inbound link up (from %s)", nd->name, c->remote);
    probe_node(nd); /* its answers can reach us now */
    /* The peer is back (it just proved it): if our link to it is waiting
     * out a backoff, dial now, so its writes do not wait for our votes
     * until the backoff ends. */
    if (nd->out == NULL && !nd->resolving && !net->closing) {
        nd->backoff_ms = LIMIT_PEER_RECONNECT_MS_MIN;
        if (nd->retry_open)
            uv_timer_stop(&nd->retry);
        dial(nd);
    }
}

/* The acceptor's HELLO, the answer to ours: its nonce, for our AUTH. */
static void dialer_hello(struct peer_conn *c, const struct peer_frame *f)
{
    struct peer_net *net = c->net;
    struct peer_node *nd = c->node;
    unsigned char mac[PEER_MAC_BYTES];
    uint32_t id = util_get_le32(f->body);

    if (!epoch_ok(c, f))
        return;
    if (util_get_le64(f->body + 4) != net->hash) {
        refuse_config(c);
        return;
    }
    if (id == net->cfg.self &&
        memcmp(f->body + 12, c->nonce_local, PEER_NONCE_BYTES) == 0) {
        /* Our own HELLO: the kernel connected the socket to itself (the
         * peer port lies in the range it picks local ports from). */
        conn_fail(c, C_WRONG_ID, LOG_LEVEL_WARN,
                  "the connection reached itself: replica %u's port %d is in the "
                  "kernel's ephemeral range (net.ipv4.ip_local_port_range); choose peer "
                  "ports outside it",
                  nd->addr.id, nd->addr.port);
        return;
    }
    if (id != nd->addr.id) {
        nd->st.auth_failures++;
        conn_fail(
            c, C_WRONG_ID, LOG_LEVEL_WARN,
            "answered as replica %u: refusing the link (is --replicas the same on every "
            "replica?)",
            id);
        return;
    }
    memcpy(c->nonce_peer, f->body + 12, PEER_NONCE_BYTES);
    if (handshake_mac(net, dialer_label, c->nonce_peer, c->nonce_local, net->cfg.self,
                      nd->addr.id, mac) < 0) {
        conn_fail(c, C_IO, LOG_LEVEL_ERROR,
                  "cannot compute HMAC-SHA256 (libcrypto failed)");
        return;
    }
    c->phase = PH_AUTH;
    send_frame_now(c, PEER_FRAME_AUTH, mac, sizeof(mac));
}

static void dialer_auth(struct peer_conn *c, const struct peer_frame *f)
{
    struct peer_net *net = c->net;
    unsigned char mac[PEER_MAC_BYTES];

    if (!epoch_ok(c, f))
        return;
    if (handshake_mac(net, acceptor_label, c->nonce_local, c->nonce_peer,
                      c->node->addr.id, net->cfg.self, mac) < 0) {
        conn_fail(c, C_IO, LOG_LEVEL_ERROR,
                  "cannot compute HMAC-SHA256 (libcrypto failed)");
        return;
    }
    if (CRYPTO_memcmp(mac, f->body, PEER_MAC_BYTES) != 0) {
        refuse_auth(c);
        return;
    }
    outbound_up(c);
}

/* The dialer speaks first: its HELLO names the replica it claims to be;
 * ours answers with our nonce. */
static void acceptor_hello(struct peer_conn *c, const struct peer_frame *f)
{
    struct peer_net *net = c->net;
    char body[PEER_HELLO_BODY_BYTES];
    uint32_t id = util_get_le32(f->body);

    if (id >= LIMIT_REPLICAS_MAX || !net->nodes[id].configured || id == net->cfg.self) {
        conn_fail(c, C_WRONG_ID, LOG_LEVEL_WARN,
                  "it says it is replica %u, which is %s: refusing the connection", id,
                  id == net->cfg.self ? "us" : "not in our --replicas list");
        return;
    }
    /* From here on, failures are the claimed replica's (in its stats and
     * log lines); nothing is trusted until its AUTH checks out. */
    c->node = &net->nodes[id];
    if (!epoch_ok(c, f))
        return;
    if (util_get_le64(f->body + 4) != net->hash) {
        refuse_config(c);
        return;
    }
    memcpy(c->nonce_peer, f->body + 12, PEER_NONCE_BYTES);
    put_hello(net, c->nonce_local, body);
    c->phase = PH_AUTH;
    send_frame_now(c, PEER_FRAME_HELLO, body, sizeof(body));
}

static void acceptor_auth(struct peer_conn *c, const struct peer_frame *f)
{
    struct peer_net *net = c->net;
    uint32_t id = c->node->addr.id;
    unsigned char mac[PEER_MAC_BYTES];

    if (!epoch_ok(c, f))
        return;
    if (handshake_mac(net, dialer_label, c->nonce_local, c->nonce_peer, id, net->cfg.self,
                      mac) < 0) {
        conn_fail(c, C_IO, LOG_LEVEL_ERROR,
                  "cannot compute HMAC-SHA256 (libcrypto failed)");
        return;
    }
    if (CRYPTO_memcmp(mac, f->body, PEER_MAC_BYTES) != 0) {
        refuse_auth(c);
        return;
    }
    if (handshake_mac(net, acceptor_label, c->nonce_peer, c->nonce_local, net->cfg.self,
                      id, mac) < 0) {
        conn_fail(c, C_IO, LOG_LEVEL_ERROR,
                  "cannot compute HMAC-SHA256 (libcrypto failed)");
        return;
    }
    send_frame_now(c, PEER_FRAME_AUTH, mac, sizeof(mac));
    if (!c->closing)
        inbound_up(c);
}

/* A frame on an authenticated link. */
static uint64_t clock_now_us(const struct peer_net *net)
{
    return net->cfg.clock_us ? net->cfg.clock_us(net->cfg.arg) : util_now_unix_us();
}

/* Queues a small frame on the outbound link to nd, if it is up. */
static void send_control(struct peer_node *nd, uint8_t type, const void *body, size_t n)
{
    struct peer_conn *o = nd->out;

    if (o == NULL || o->closing || o->phase != PH_UP || nd->net->closing)
        return;
    if (frame_append(&o->out, type, nd->net->cfg.epoch, body, n) < 0) {
        conn_fail(o, C_IO, LOG_LEVEL_WARN, "out of memory");
        return;
    }
    schedule(nd->net);
}

void peer_clock_ping(struct peer_net *net)
{
    char body[8];

    util_put_le64(body, clock_now_us(net));
    for (size_t i = 0; i < LIMIT_REPLICAS_MAX; i++)
        if (net->nodes[i].configured && i != net->cfg.self)
            send_control(&net->nodes[i], PEER_FRAME_PING, body, sizeof(body));
}

/* A PING or PONG on an inbound link. Returns false if it is malformed. */
static bool clock_frame(struct peer_conn *c, const struct peer_frame *f)
{
    struct peer_net *net = c->net;
    struct peer_node *nd = c->node;
    char body[16];

    if (f->type == PEER_FRAME_PING) {
        if (f->nbody != 8)
            return false;
        memcpy(body, f->body, 8);
        util_put_le64(body + 8, clock_now_us(net));
        send_control(nd, PEER_FRAME_PONG, body, 16);
        return true;
    }
    if (f->nbody != 16)
        return false;
    uint64_t t0 = util_get_le64(f->body), t1 = util_get_le64(f->body + 8);
    uint64_t t2 = clock_now_us(net);
    if (t2 < t0 || t2 - t0 > (uint64_t)LIMIT_PEER_HANDSHAKE_MS * 1000u)
        return true; /* our clock stepped back, or a stale answer: no sample */
    uint64_t rtt = t2 - t0, mid = t0 + rtt / 2;
    int64_t off = t1 >= mid
                      ? (int64_t)(t1 - mid > (uint64_t)INT64_MAX ? INT64_MAX : t1 - mid)
                      : -(int64_t)(mid - t1 > (uint64_t)INT64_MAX ? INT64_MAX : mid - t1);
    nd->st.clock_probes++;
    nd->st.clock_offset_us = off;
    nd->st.clock_rtt_us = rtt;
    if (net->cfg.on_clock)
        net->cfg.on_clock(net->cfg.arg, nd->addr.id, off, rtt);
    return true;
}

static void up_frame(struct peer_conn *c, const struct peer_frame *f)
{
    struct peer_net *net = c->net;
    struct peer_node *nd = c->node;
    struct tpc_msg m;
    const char *why = "";
    char what[64];

    if (c->outbound) {
        snprintf(what, sizeof(what),
                 "type %u on our outbound link, which carries nothing back", f->type);
        bad_frame(c, what);
        return;
    }
    if (f->epoch != net->cfg.epoch) {
        nd->st.epoch_mismatches++;
        conn_fail(
            c, C_EPOCH, LOG_LEVEL_WARN,
            "a message of configuration epoch %llu differs from ours (%llu): closing the "
            "link",
            (unsigned long long)f->epoch, (unsigned long long)net->cfg.epoch);
        return;
    }
    if (f->type == PEER_FRAME_STATE) {
        if (f->nbody != PEER_STATE_BODY_BYTES) {
            snprintf(what, sizeof(what), "STATE of %u bytes", f->nbody);
            bad_frame(c, what);
        } else if (net->cfg.on_state) {
            net->cfg.on_state(net->cfg.arg, nd->addr.id, util_get_le64(f->body),
                              util_get_le64(f->body + 8), util_get_le32(f->body + 16));
        }
        return;
    }
    if (f->type == PEER_FRAME_PING || f->type == PEER_FRAME_PONG) {
        if (!clock_frame(c, f)) {
            snprintf(what, sizeof(what), "type %u: %u bytes", f->type, f->nbody);
            bad_frame(c, what);
        }
        return;
    }
    if (msg_decode(f, &m, &why) < 0) {
        snprintf(what, sizeof(what), "type %u: %s", f->type, why);
        bad_frame(c, what);
        return;
    }
    m.from = nd->addr.id;
    m.to = net->cfg.self;
    nd->st.frames_in++;
    if (net->cfg.on_msg)
        net->cfg.on_msg(net->cfg.arg, &m);
}

/* Dispatches one decoded frame by the connection's phase. */
static void handle_frame(struct peer_conn *c, const struct peer_frame *f)
{
    uint8_t want = c->phase == PH_HELLO ? PEER_FRAME_HELLO : PEER_FRAME_AUTH;
    size_t nwant = c->phase == PH_HELLO ? PEER_HELLO_BODY_BYTES : PEER_MAC_BYTES;
    char what[64];

    if (c->phase == PH_UP) {
        up_frame(c, f);
        return;
    }
    if (f->type != want || f->nbody != nwant) {
        snprintf(what, sizeof(what), "type %u, %u bytes, where the handshake expects %s",
                 f->type, f->nbody, want == PEER_FRAME_HELLO ? "HELLO" : "AUTH");
        bad_frame(c, what);
        return;
    }
    if (c->phase == PH_HELLO)
        (c->outbound ? dialer_hello : acceptor_hello)(c, f);
    else
        (c->outbound ? dialer_auth : acceptor_auth)(c, f);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    struct peer_conn *c = h->data;

    (void)hint;
    if (buf_reserve(&c->in, READ_CHUNK_BYTES) < 0) {
        *b = uv_buf_init(NULL, 0);
        return;
    }
    *b = uv_buf_init(c->in.data + c->in.len,
                     (unsigned int)(c->in.cap - c->in.len > UINT32_MAX
                                        ? UINT32_MAX
                                        : c->in.cap - c->in.len));
}

/* The peer closed c or reading failed. */
static void read_ended(struct peer_conn *c, ssize_t nread)
{
    const char *why =
        nread == UV_EOF ? "the peer closed the connection" : uv_strerror((int)nread);

    if (c->phase == PH_UP) {
        conn_close(c, why, false);
        return;
    }
    if (c->outbound && c->phase == PH_AUTH && nread == UV_EOF) {
        /* It read our AUTH and hung up: its MAC check failed. */
        conn_fail(c, C_CLOSED, LOG_LEVEL_WARN,
                  "it refused our AUTH: do the replicas' --secret-file contents differ? "
                  "(see its log)");
        return;
    }
    if (c->outbound && c->phase == PH_HELLO && nread == UV_EOF) {
        /* It read our HELLO and hung up without answering. */
        conn_fail(
            c, C_CLOSED, LOG_LEVEL_WARN,
            "it refused our HELLO: does it have another --epoch, another --replicas "
            "list, or no replica %u in it? (see its log)",
            c->net->cfg.self);
        return;
    }
    if (c->outbound) {
        conn_fail(c, C_CLOSED, LOG_LEVEL_WARN, "connection lost before the handshake: %s",
                  why);
        return;
    }
    /* An inbound connection that gave up early: the dialer logs why. */
    conn_fail(c, C_CLOSED, LOG_LEVEL_DEBUG, "connection closed during the handshake: %s",
              why);
}

/* A HELLO starts with its length, 60, in little-endian: its first byte is
 * '<'. A first byte that is a letter is a client speaking the text
 * protocol ("get k", "stats", "version") at the wrong port. */
_Static_assert(((PEER_FRAME_HEADER_BYTES - 4 + PEER_HELLO_BODY_BYTES) & 0xff) < 'A',
               "a HELLO's first byte must not look like text");

static bool looks_like_text(const char *p, size_t n)
{
    return n > 0 && isalpha((unsigned char)p[0]);
}

/* Answers a text-protocol client with one line naming the client port, and
 * closes. Nothing was sent on the connection before, so the line goes out
 * in one try; a client that does not read it loses nothing. */
static void text_client(struct peer_conn *c)
{
    char line[160];
    uv_buf_t b;
    int n;

    if (c->net->cfg.client_port > 0)
        n = snprintf(line, sizeof(line),
                     "SERVER_ERROR this is the replicas' port; clients use port %u\r\n",
                     c->net->cfg.client_port);
    else
        n = snprintf(line, sizeof(line),
                     "SERVER_ERROR this is the replicas' port, not a client port\r\n");
    b = uv_buf_init(line, (unsigned int)n);
    (void)uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    conn_fail(c, C_TEXT, LOG_LEVEL_INFO,
              "a client spoke the text protocol at the peer port: told it the client "
              "port and closed");
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct peer_conn *c = s->data;
    struct peer_net *net = c->net;
    struct peer_frame f;
    size_t off = 0;

    (void)b;
    if (c->closing || nread == 0)
        return;
    if (nread < 0) {
        read_ended(c, nread);
        return;
    }
    c->in.len += (size_t)nread;
    if (c->node != NULL)
        c->node->st.bytes_in += (uint64_t)nread;
    if (!c->outbound && c->phase == PH_HELLO && looks_like_text(c->in.data, c->in.len)) {
        text_client(c);
        return;
    }
    while (!c->closing && !net->closing) {
        /* Only an authenticated inbound link carries big frames; nothing
         * else may make us buffer more than a handshake frame. */
        size_t max =
            c->phase == PH_UP && !c->outbound ? net->cfg.frame_bytes_max : HS_FRAME_MAX;
        const char *why = "";
        long r = frame_decode(c->in.data + off, c->in.len - off, max, &f, &why);

        if (r == -EAGAIN)
            break;
        if (r < 0) {
            bad_frame(c, why);
            return;
        }
        off += (size_t)r;
        /* May call on_msg, which may close c or the whole net; c->in stays
         * allocated until the close callbacks run. */
        handle_frame(c, &f);
    }
    if (c->closing || net->closing)
        return;
    buf_consume(&c->in, off);
    if (c->in.len == 0 && c->in.cap > LIMIT_READ_BUF_BYTES_KEEP)
        buf_free(&c->in);
}

static void on_handshake_timeout(uv_timer_t *t)
{
    struct peer_conn *c = t->data;

    if (c->phase == PH_CONNECTING)
        conn_fail(c, C_TIMEOUT, c->node->ever_up ? LOG_LEVEL_WARN : LOG_LEVEL_INFO,
                  "cannot connect: no answer within %d ms; retrying",
                  LIMIT_PEER_HANDSHAKE_MS);
    else
        conn_fail(c, C_TIMEOUT, LOG_LEVEL_WARN,
                  "no handshake within %d ms: closing the connection",
                  LIMIT_PEER_HANDSHAKE_MS);
}

static void tune_socket(struct peer_conn *c)
{
    /* Messages are small and latency-bound; we coalesce them ourselves. */
    uv_tcp_nodelay(&c->tcp, 1);
    uv_tcp_keepalive(&c->tcp, 1, KEEPALIVE_DELAY_S);
}

/* A dial failed before there was a connection to a peer (resolving, or the
 * TCP connect). The first failure is logged (at info while the link has
 * never been up: the other replicas may just not be started yet); the same
 * failure again is logged at debug. */
static void dial_failed(struct peer_node *nd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void dial_failed(struct peer_node *nd, const char *fmt, ...)
{
    char msg[256];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    note_failure(nd->net, nd, NULL, true, C_CONNECT,
                 nd->ever_up ? LOG_LEVEL_WARN : LOG_LEVEL_INFO, msg);
}

static void on_connect(uv_connect_t *req, int status)
{
    struct peer_conn *c = req->data;
    struct peer_node *nd = c->node;
    char body[PEER_HELLO_BODY_BYTES];
    int r;

    if (c->closing)
        return;
    if (status < 0) {
        dial_failed(nd, "cannot connect: %s; retrying", uv_strerror(status));
        conn_close(c, uv_strerror(status), true);
        return;
    }
    tune_socket(c);
    c->phase = PH_HELLO;
    nd->state = PEER_LINK_HANDSHAKE;
    if ((r = random_bytes(c->nonce_local, PEER_NONCE_BYTES)) < 0) {
        conn_fail(c, C_IO, LOG_LEVEL_ERROR, "cannot get random bytes: %s", strerror(-r));
        return;
    }
    if ((r = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read)) < 0) {
        conn_fail(c, C_IO, LOG_LEVEL_WARN, "cannot read: %s", uv_strerror(r));
        return;
    }
    /* The dialer speaks first, so that the acceptor can tell a client that
     * came to the wrong port from a replica (text_client). */
    put_hello(c->net, c->nonce_local, body);
    send_frame_now(c, PEER_FRAME_HELLO, body, sizeof(body));
}

static void connect_to(struct peer_node *nd, const struct sockaddr_storage *sa)
{
    struct peer_net *net = nd->net;
    struct sockaddr_storage to = *sa;
    struct peer_conn *c;
    int r;

    sa_set_port(&to, nd->addr.port);
    c = conn_new(net, true, nd);
    if (c == NULL) {
        dial_failed(nd, "cannot connect: out of memory; retrying");
        nd->state = PEER_LINK_DOWN;
        schedule_retry(nd);
        return;
    }
    nd->out = c;
    nd->state = PEER_LINK_CONNECTING;
    c->phase = PH_CONNECTING;
    uv_timer_start(&c->timer, on_handshake_timeout, LIMIT_PEER_HANDSHAKE_MS, 0);
    r = uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)&to, on_connect);
    if (r < 0) {
        dial_failed(nd, "cannot connect: %s; retrying", uv_strerror(r));
        conn_close(c, uv_strerror(r), true);
    }
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct peer_node *nd = req->data;
    struct peer_net *net = nd->net;
    struct sockaddr_storage sa;

    nd->resolving = false;
    if (net->closing) {
        uv_freeaddrinfo(res);
        net_unref(net);
        return;
    }
    net_unref(net);
    if (status < 0 || res == NULL || res->ai_addrlen > sizeof(sa)) {
        uv_freeaddrinfo(res);
        dial_failed(nd, "cannot resolve %s: %s; retrying", nd->addr.host,
                    status < 0 ? uv_strerror(status) : "no address");
        nd->state = PEER_LINK_DOWN;
        schedule_retry(nd);
        return;
    }
    memset(&sa, 0, sizeof(sa));
    memcpy(&sa, res->ai_addr, res->ai_addrlen);
    uv_freeaddrinfo(res);
    connect_to(nd, &sa);
}

/* Starts one attempt at the outbound link to nd. */
static void dial(struct peer_node *nd)
{
    struct peer_net *net = nd->net;
    struct addrinfo hints;
    int r;

    if (net->closing || nd->out != NULL || nd->resolving)
        return;
    log_debug(MOD, "%s: dialing", nd->name);
    if (nd->numeric) {
        connect_to(nd, &nd->sa);
        return;
    }
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    nd->gai.data = nd;
    r = uv_getaddrinfo(net->loop, &nd->gai, on_resolved, nd->addr.host, NULL, &hints);
    if (r < 0) {
        dial_failed(nd, "cannot resolve %s: %s; retrying", nd->addr.host, uv_strerror(r));
        schedule_retry(nd);
        return;
    }
    nd->resolving = true;
    nd->state = PEER_LINK_CONNECTING;
    net->pending++;
}

static void on_retry(uv_timer_t *t)
{
    dial(t->data);
}

static void on_connection(uv_stream_t *srv, int status)
{
    struct peer_net *net = srv->data;
    struct peer_conn *c;
    struct sockaddr_storage ss;
    int len = sizeof(ss), r;
    char ip[INET6_ADDRSTRLEN] = "?";

    if (net->closing)
        return;
    if (status < 0) {
        log_warn(MOD, "cannot accept a peer connection: %s", uv_strerror(status));
        return;
    }
    c = conn_new(net, false, NULL);
    if (c == NULL) {
        log_error(MOD, "cannot accept a peer connection: out of memory");
        return;
    }
    r = uv_accept(srv, (uv_stream_t *)&c->tcp);
    if (r < 0) {
        log_warn(MOD, "cannot accept a peer connection: %s", uv_strerror(r));
        conn_close(c, "accept failed", true);
        return;
    }
    net->nst.accepts++;
    snprintf(c->remote, sizeof(c->remote), "?");
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET6) {
            uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof(ip));
            snprintf(c->remote, sizeof(c->remote), "[%s]:%d", ip,
                     ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
        } else {
            uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof(ip));
            snprintf(c->remote, sizeof(c->remote), "%s:%d", ip,
                     ntohs(((struct sockaddr_in *)&ss)->sin_port));
        }
    }
    if (net->inbound_handshakes >= LIMIT_PEER_HANDSHAKES_MAX) {
        net->nst.refused_busy++;
        conn_fail(c, C_BUSY, LOG_LEVEL_WARN,
                  "%d handshakes already in progress: refusing the connection",
                  LIMIT_PEER_HANDSHAKES_MAX);
        return;
    }
    net->inbound_handshakes++;
    c->hs_counted = true;
    tune_socket(c);
    c->phase = PH_HELLO;
    uv_timer_start(&c->timer, on_handshake_timeout, LIMIT_PEER_HANDSHAKE_MS, 0);
    if ((r = random_bytes(c->nonce_local, PEER_NONCE_BYTES)) < 0) {
        conn_fail(c, C_IO, LOG_LEVEL_ERROR, "cannot get random bytes: %s", strerror(-r));
        return;
    }
    /* Nothing is sent until the dialer's HELLO (acceptor_hello). */
    r = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (r < 0)
        conn_fail(c, C_IO, LOG_LEVEL_WARN, "cannot read: %s", uv_strerror(r));
}

static void on_net_handle_closed(uv_handle_t *h)
{
    net_unref(h->data);
}

static void on_retry_closed(uv_handle_t *h)
{
    struct peer_node *nd = h->data;

    net_unref(nd->net);
}

/* Checks the config; returns 0 or -EINVAL with a sentence. */
static int check_config(const struct peer_config *cfg, char *err, size_t errcap)
{
    bool seen[LIMIT_REPLICAS_MAX] = {false}, self = false;

    if (cfg->n == 0 || cfg->n > LIMIT_REPLICAS_MAX)
        return util_errf(err, errcap, -EINVAL,
                         "peer configuration: %zu replicas (1 to %d allowed)", cfg->n,
                         LIMIT_REPLICAS_MAX);
    for (size_t i = 0; i < cfg->n; i++) {
        const struct peer_addr *a = &cfg->replicas[i];
        if (a->id >= LIMIT_REPLICAS_MAX)
            return util_errf(err, errcap, -EINVAL,
                             "peer configuration: replica id %u is over %d", a->id,
                             LIMIT_REPLICAS_MAX - 1);
        if (seen[a->id])
            return util_errf(err, errcap, -EINVAL,
                             "peer configuration: replica id %u is listed twice", a->id);
        if (a->port < 0 || a->port > 65535 || a->host[0] == '\0' ||
            memchr(a->host, '\0', sizeof(a->host)) == NULL)
            return util_errf(err, errcap, -EINVAL,
                             "peer configuration: replica %u has no valid host and port",
                             a->id);
        seen[a->id] = true;
        self |= a->id == cfg->self;
    }
    if (!self)
        return util_errf(err, errcap, -EINVAL,
                         "peer configuration: our id %u is not in the replica list",
                         cfg->self);
    if (cfg->secret == NULL || cfg->nsecret == 0 || cfg->nsecret > INT32_MAX)
        return util_errf(err, errcap, -EINVAL, "peer configuration: no cluster secret");
    if (cfg->frame_bytes_max != 0 && cfg->frame_bytes_max < PEER_FRAME_BYTES_MIN)
        return util_errf(err, errcap, -EINVAL,
                         "peer configuration: frame_bytes_max %zu is under %d",
                         cfg->frame_bytes_max, PEER_FRAME_BYTES_MIN);
    return 0;
}

/* Opens a listening socket on host:port. Returns the fd or -errno, with a
 * sentence in err. Done with plain system calls so a failure leaves no
 * libuv handle to close. */
static int open_listener(const char *host, int port, int *bound, char *err, size_t errcap)
{
    struct addrinfo *res = NULL;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    const char *why;
    char hp[280];
    int fd = -1, one = 1, r;

    fmt_hostport(hp, sizeof(hp), host, port);
    if ((r = util_resolve(host, (unsigned)port, SOCK_STREAM, 0, &res, &why)) < 0) {
        util_errf(err, errcap, r, "cannot listen on %s for peers: cannot resolve %s: %s",
                  hp, host, why);
        goto fail;
    }
    fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        goto fail_errno;
    /* Like libuv's uv_tcp_bind: a restarted replica can take its port back
     * while old connections sit in TIME_WAIT. */
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, LISTEN_BACKLOG) < 0 ||
        getsockname(fd, (struct sockaddr *)&ss, &sl) < 0)
        goto fail_errno;
    *bound = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                      : ntohs(((struct sockaddr_in *)&ss)->sin_port);
    freeaddrinfo(res);
    return fd;
fail_errno:
    r = -errno;
    util_errf(err, errcap, r, "cannot listen on %s for peers: %s", hp, uv_strerror(r));
fail:
    if (fd >= 0)
        close(fd);
    if (res)
        freeaddrinfo(res);
    return r;
}

int peer_net_new(struct peer_net **out, uv_loop_t *loop, const struct peer_config *cfg,
                 char *err, size_t errcap)
{
    struct peer_net *net = NULL;
    const struct peer_addr *me = NULL;
    int fd = -1, r;

    *out = NULL;
    if (err && errcap)
        err[0] = '\0';
    if ((r = check_config(cfg, err, errcap)) < 0)
        return r;
    net = calloc(1, sizeof(*net));
    if (net == NULL)
        goto fail_nomem;
    net->secret = malloc(cfg->nsecret);
    if (net->secret == NULL)
        goto fail_nomem;
    memcpy(net->secret, cfg->secret, cfg->nsecret);
    net->loop = loop;
    net->cfg = *cfg;
    net->cfg.secret = net->secret;
    if (net->cfg.frame_bytes_max == 0)
        net->cfg.frame_bytes_max =
            LIMIT_VALUE_BYTES_DEFAULT + LIMIT_PEER_FRAME_OVERHEAD_BYTES;
    if (net->cfg.output_bytes_max == 0)
        net->cfg.output_bytes_max = LIMIT_PEER_OUTPUT_BYTES_MAX;
    /* One uv_write takes an unsigned int length. */
    if (net->cfg.output_bytes_max > UINT32_MAX)
        net->cfg.output_bytes_max = UINT32_MAX;
    net->hash = peer_config_hash(cfg->replicas, cfg->n);
    if (random_bytes(&net->rng, sizeof(net->rng)) < 0 || net->rng == 0)
        net->rng = util_mono_ns() | 1;
    for (size_t i = 0; i < cfg->n; i++) {
        const struct peer_addr *a = &cfg->replicas[i];
        struct peer_node *nd = &net->nodes[a->id];
        nd->net = net;
        nd->configured = true;
        nd->addr = *a;
        nd->backoff_ms = LIMIT_PEER_RECONNECT_MS_MIN;
        node_set_name(nd);
        if (a->id == cfg->self)
            me = a;
        memset(&nd->sa, 0, sizeof(nd->sa));
        struct sockaddr_in *s4 = (struct sockaddr_in *)&nd->sa;
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&nd->sa;
        if (inet_pton(AF_INET, a->host, &s4->sin_addr) == 1) {
            s4->sin_family = AF_INET;
            nd->numeric = true;
        } else if (inet_pton(AF_INET6, a->host, &s6->sin6_addr) == 1) {
            s6->sin6_family = AF_INET6;
            nd->numeric = true;
        }
    }
    fd = open_listener(me->host, me->port, &net->port, err, errcap);
    if (fd < 0) {
        r = fd;
        goto fail;
    }
    /* From here on nothing fails before the handles exist, and closing them
     * is asynchronous: the remaining steps cannot fail in practice, and if
     * they do, the net is closed like peer_net_close would. */
    uv_tcp_init(loop, &net->listener);
    net->listener.data = net;
    net->pending++;
    uv_idle_init(loop, &net->idle);
    net->idle.data = net;
    net->pending++;
    for (size_t i = 0; i < LIMIT_REPLICAS_MAX; i++) {
        struct peer_node *nd = &net->nodes[i];
        if (!nd->configured || i == cfg->self)
            continue;
        uv_timer_init(loop, &nd->retry);
        nd->retry.data = nd;
        nd->retry_open = true;
        net->pending++;
    }
    r = uv_tcp_open(&net->listener, fd);
    if (r < 0) {
        close(fd);
        util_errf(err, errcap, r, "cannot listen on %s:%d for peers: %s", me->host,
                  me->port, uv_strerror(r));
        peer_net_close(net);
        return r;
    }
    r = uv_listen((uv_stream_t *)&net->listener, LISTEN_BACKLOG, on_connection);
    if (r < 0) {
        util_errf(err, errcap, r, "cannot listen on %s:%d for peers: %s", me->host,
                  me->port, uv_strerror(r));
        peer_net_close(net);
        return r;
    }
    log_info(MOD, "replica %u listening for peers on port %d (%zu replicas, epoch %llu)",
             cfg->self, net->port, cfg->n, (unsigned long long)cfg->epoch);
    *out = net;
    return 0;
fail_nomem:
    r = util_errf(err, errcap, -ENOMEM,
                  "cannot set up the peer transport: out of memory");
fail:
    if (net)
        free(net->secret);
    free(net);
    return r;
}

int peer_net_port(const struct peer_net *net)
{
    return net->port;
}

void peer_net_set_port(struct peer_net *net, uint32_t id, int port)
{
    struct peer_node *nd;

    if (id >= LIMIT_REPLICAS_MAX || !net->nodes[id].configured)
        return;
    nd = &net->nodes[id];
    nd->addr.port = port;
    node_set_name(nd);
}

void peer_net_start(struct peer_net *net)
{
    if (net->started || net->closing)
        return;
    net->started = true;
    for (size_t i = 0; i < LIMIT_REPLICAS_MAX; i++)
        if (net->nodes[i].configured && i != net->cfg.self)
            dial(&net->nodes[i]);
}

int peer_send(struct peer_net *net, const struct tpc_msg *m)
{
    struct peer_node *nd;
    struct peer_conn *c;
    struct tpc_msg mm;
    size_t size;
    int r;

    if (m->to >= LIMIT_REPLICAS_MAX || !net->nodes[m->to].configured ||
        m->to == net->cfg.self)
        return -EINVAL;
    nd = &net->nodes[m->to];
    c = nd->out;
    if (net->closing || c == NULL || c->closing || c->phase != PH_UP)
        return -ENOTCONN;
    size = peer_msg_frame_size(m);
    if (size == 0)
        return -EINVAL;
    if (size > net->cfg.frame_bytes_max)
        return -EMSGSIZE;
    if (c->out.len + c->wbuf.len + size > net->cfg.output_bytes_max) {
        char why[128];
        snprintf(why, sizeof(why), "over %zu bytes queued: it is not keeping up",
                 net->cfg.output_bytes_max);
        conn_close(c, why, false);
        return -ENOBUFS;
    }
    mm = *m;
    mm.epoch = net->cfg.epoch;
    r = peer_msg_encode(&c->out, &mm);
    if (r < 0)
        return r;
    nd->st.frames_out++;
    schedule(net);
    return 0;
}

bool peer_link_up(const struct peer_net *net, uint32_t id)
{
    return id < LIMIT_REPLICAS_MAX && net->nodes[id].state == PEER_LINK_UP;
}

void peer_get_link_stats(const struct peer_net *net, uint32_t id,
                         struct peer_link_stats *st)
{
    const struct peer_node *nd;

    memset(st, 0, sizeof(*st));
    st->state = PEER_LINK_DOWN;
    if (id >= LIMIT_REPLICAS_MAX || !net->nodes[id].configured || id == net->cfg.self)
        return;
    nd = &net->nodes[id];
    *st = nd->st;
    st->state = nd->state;
    st->inbound_up = nd->in != NULL;
    st->auth_refused = nd->last_out == C_AUTH || nd->last_in == C_AUTH;
    st->queued_bytes = nd->out ? nd->out->out.len + nd->out->wbuf.len : 0;
}

void peer_get_net_stats(const struct peer_net *net, struct peer_net_stats *st)
{
    *st = net->nst;
}

void peer_net_close(struct peer_net *net)
{
    if (net == NULL || net->closing)
        return;
    net->closing = true;
    for (size_t i = 0; i < LIMIT_REPLICAS_MAX; i++) {
        struct peer_node *nd = &net->nodes[i];
        if (nd->retry_open) {
            nd->retry_open = false;
            uv_close((uv_handle_t *)&nd->retry, on_retry_closed);
        }
        /* If the lookup already runs, its callback comes later all the
         * same, and gives its reference back then. */
        if (nd->resolving)
            uv_cancel((uv_req_t *)&nd->gai);
        nd->state = PEER_LINK_DOWN;
    }
    for (struct peer_conn *c = net->conns; c; c = c->next)
        conn_close(c, "shutting down", true);
    uv_close((uv_handle_t *)&net->listener, on_net_handle_closed);
    uv_close((uv_handle_t *)&net->idle, on_net_handle_closed);
}
