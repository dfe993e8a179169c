/*
 * peer.h - the replica-to-replica transport for two-phase commit: the
 * --replicas list, authenticated TCP links between replicas (one outbound
 * link per peer to send, inbound links to receive), and the frame codec.
 * The wire format, the handshake and the link rules are described at the
 * top of peer.c.
 *
 * Everything runs on one libuv loop thread. Errors are 0 or a negative errno
 * (or libuv code, which is the same on Linux).
 */
#ifndef TPCKV_PEER_H
#define TPCKV_PEER_H

#include "buf.h"
#include "limits.h"
#include "tpc.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* ---- the replica list --------------------------------------------------- */

struct peer_addr {
    uint32_t id;
    char host[256]; /* a name or an IP literal, without brackets */
    int port;
};

/*
 * Parses the --replicas spec "ID@HOST:PORT,ID@HOST:PORT,..." (IPv6 hosts in
 * brackets: "1@[::1]:7001") into out[0..*n), sorted by id; host names are
 * lowercased. Returns 0, or -EINVAL with a sentence in err (errcap bytes)
 * naming the bad entry: bad syntax, id over 15, a duplicate id or
 * host:port, a port outside 1..65535, more than LIMIT_REPLICAS_MAX (or cap)
 * entries, an empty spec or entry. *n is 0 on error.
 */
int peer_parse_replicas(const char *spec, struct peer_addr *out, size_t cap, size_t *n,
                        char *err, size_t errcap);

/*
 * A 64-bit hash of the canonical list "id@host:port," in id order (IPv6
 * hosts in brackets), so two replicas started with different lists refuse
 * each other. The order of a[] does not matter.
 */
uint64_t peer_config_hash(const struct peer_addr *a, size_t n);

/* ---- links --------------------------------------------------------------- */

enum peer_link_state {
    PEER_LINK_DOWN,       /* no outbound connection; waiting to retry */
    PEER_LINK_CONNECTING, /* resolving or TCP connecting */
    PEER_LINK_HANDSHAKE,  /* connected, authenticating */
    PEER_LINK_UP,         /* authenticated: peer_send works */
};

/* "down", "connecting", "handshake", "up" (or "?"). Never NULL. */
const char *peer_link_state_name(enum peer_link_state s);

/* Counters of one peer, since peer_net_new. "out" counters are of the
 * outbound link (ours, to send), "in" counters of the inbound links. */
struct peer_link_stats {
    enum peer_link_state state;     /* of the outbound link */
    bool inbound_up;                /* an authenticated inbound link exists */
    uint64_t frames_out, frames_in; /* tpc messages (handshake frames not counted) */
    uint64_t bytes_out, bytes_in;   /* every byte, handshake included */
    uint64_t writes;        /* uv_write calls on the outbound link: frames_out/writes =
                               coalescing */
    uint64_t connects;      /* outbound links that came up */
    uint64_t disconnects;   /* outbound links that went down after being up */
    uint64_t auth_failures; /* handshakes refused: wrong secret, differing
                               --replicas, or a peer answering with another id */
    uint64_t config_mismatches; /* those of auth_failures due to differing --replicas */
    uint64_t bad_frames;        /* malformed or unexpected frames */
    uint64_t epoch_mismatches;  /* handshakes or frames with another epoch */
    uint64_t queued_bytes;      /* now: bytes waiting to be written to the peer */
    uint64_t clock_probes;      /* clock probes answered */
    int64_t clock_offset_us;    /* the last: the peer's clock minus ours */
    uint64_t clock_rtt_us;      /* ... and the round trip it was measured over */
    char last_error[128];       /* the last failure with this peer, "" if none */
    bool auth_refused;          /* its last handshake, one way or the other, failed
                                   authentication (another secret) */
};

/* Counters not tied to a configured peer. */
struct peer_net_stats {
    uint64_t accepts;       /* inbound TCP connections accepted */
    uint64_t anon_failures; /* inbound connections closed before they named a
                               configured replica (malformed, unknown id, timeout) */
    uint64_t refused_busy;  /* closed at once: too many handshakes in progress */
};

struct peer_config {
    uint32_t self;
    size_t n;
    struct peer_addr replicas[LIMIT_REPLICAS_MAX]; /* includes self */
    const unsigned char *secret; /* cluster secret (copied); at least 1 byte */
    size_t nsecret;
    uint64_t epoch;
    /* Our client port, named in the one line answered to a client that
     * speaks the text protocol at the peer port; 0 = not named. */
    uint32_t client_port;
    /* Largest frame accepted or sent, header included (value max +
     * LIMIT_PEER_FRAME_OVERHEAD_BYTES); 0 = LIMIT_VALUE_BYTES_DEFAULT +
     * LIMIT_PEER_FRAME_OVERHEAD_BYTES. */
    size_t frame_bytes_max;
    /* Bytes queued to one peer before its link is dropped; 0 =
     * LIMIT_PEER_OUTPUT_BYTES_MAX (tests use small values). */
    size_t output_bytes_max;
    /* Called on the loop thread for each message from a peer. m->from is the
     * authenticated sender, m->to is self, m->epoch the frame's epoch (ours);
     * m->ops is valid only during the call. The callee may call peer_send
     * (it only queues) and even peer_net_close. */
    void (*on_msg)(void *arg, const struct tpc_msg *m);
    /* The outbound link to id went up or down. Always called from the loop
     * (never from inside peer_send), after peer_link_up() already tells the
     * new state; a quick down-and-up is reported as both. May be NULL. */
    void (*on_link)(void *arg, uint32_t id, bool up);
    /* A clock probe (peer_clock_ping) came back from id: its wall clock is
     * offset_us from ours, give or take rtt_us / 2. May be NULL. */
    void (*on_clock)(void *arg, uint32_t id, int64_t offset_us, uint64_t rtt_us);
    /* The STATE to send to id as its link comes up (fence.h); and one
     * received from id (on the loop, before any message of that link).
     * Both may be NULL (nothing sent; STATE frames ignored). */
    void (*state_out)(void *arg, uint32_t id, uint64_t *mark, uint64_t *seen_of_you,
                      uint32_t *client_port);
    void (*on_state)(void *arg, uint32_t id, uint64_t mark, uint64_t seen_of_us,
                     uint32_t client_port);
    /* The wall clock probes read, in unix microseconds; NULL: the real one
     * (tests give replicas in one process clocks of their own). */
    uint64_t (*clock_us)(void *arg);
    void *arg;
};

struct peer_net;

/*
 * Creates the transport and binds and listens on self's host:port (port 0
 * = the kernel picks; see peer_net_port). Does not dial yet. Host names are
 * resolved here (blocking) for the listener, and at each dial (in the
 * thread pool) for peers. Returns 0 and *out, or a negative errno / libuv
 * code with a sentence in err: -EINVAL for a bad config (self not listed,
 * duplicate or out-of-range id, no secret, frame_bytes_max too small), the
 * socket error for the listener ("cannot listen on 127.0.0.1:7001 for
 * peers: address already in use"), -ENOMEM. On error nothing is left open
 * (except if libuv refuses the already bound socket, which does not happen
 * in practice: then its handles are closed and freed when the loop runs).
 */
int peer_net_new(struct peer_net **out, uv_loop_t *loop, const struct peer_config *cfg,
                 char *err, size_t errcap);

/* The bound peer port. */
int peer_net_port(const struct peer_net *net);

/* Tests only: dial peer id at port from now on (when ports were picked by
 * the kernel). The config hash keeps the configured port. */
void peer_net_set_port(struct peer_net *net, uint32_t id, int port);

/* Starts dialing every other replica (once; later calls do nothing). */
void peer_net_start(struct peer_net *net);

/*
 * Queues m for m->to on its outbound link. Frames queued in one loop turn go
 * out in one uv_write per link (flushed from an idle handle started on
 * demand; while a write is in flight, frames gather for the next). The frame
 * carries the net's epoch (m->epoch and m->from are ignored). Returns 0,
 * -EINVAL (m->to is self or not a replica, or m is not a valid message),
 * -ENOTCONN (the link is not up: m is dropped), -EMSGSIZE (the frame would
 * exceed frame_bytes_max), -ENOBUFS (the link's queue would exceed
 * output_bytes_max: the link is closed, since a peer that cannot keep up is
 * treated as down, and on_link reports it later), -ENOMEM. Never calls a
 * callback synchronously.
 */
int peer_send(struct peer_net *net, const struct tpc_msg *m);

/* Sends a clock probe on every outbound link that is up: the peer answers
 * at once with its own clock, and the answer reaches on_clock. */
void peer_clock_ping(struct peer_net *net);

/* True when the outbound link to id completed its handshake. */
bool peer_link_up(const struct peer_net *net, uint32_t id);

/* Fills st for peer id (all zeroes, state down, for self or an unknown id). */
void peer_get_link_stats(const struct peer_net *net, uint32_t id,
                         struct peer_link_stats *st);
void peer_get_net_stats(const struct peer_net *net, struct peer_net_stats *st);

/*
 * Closes every handle and connection; the net is freed once the loop has
 * run the close callbacks (like wal_close), so the loop must run afterwards.
 * No callbacks after this call. NULL is fine.
 */
void peer_net_close(struct peer_net *net);

/* ---- pure codec (also for fuzzing) ------------------------------------- */

#define PEER_FRAME_VERSION 5       /* 3: STATE; 4: the dialer speaks first; 5: the view */
#define PEER_FRAME_HEADER_BYTES 20 /* len, crc, version, type, flags, epoch */
#define PEER_FLAG_RESENT 1         /* a PREPARE sent again (tpc_msg.resent) */
#define PEER_FRAME_HELLO 32
#define PEER_FRAME_AUTH 33
#define PEER_FRAME_PING 34 /* u64 the sender's wall clock (us) */
#define PEER_FRAME_PONG 35 /* u64 the ping's clock, echoed | u64 the answerer's clock */
/* The first frame on every outbound link (fence.h): u64 the sender's mark |
 * u64 the highest txid it saw the receiver vote on | u32 its client port */
#define PEER_FRAME_STATE 36
#define PEER_STATE_BODY_BYTES 20
#define PEER_NONCE_BYTES 32
#define PEER_MAC_BYTES 32
#define PEER_HELLO_BODY_BYTES (4 + 8 + PEER_NONCE_BYTES)
/* The body of every 2PC message but PREPARE's ops: u64 txid | u32 coord |
 * 4 bytes by type | u64 the transaction's view. */
#define PEER_MSG_FIXED_BYTES 24
/* The smallest frame_bytes_max peer_net_new accepts. */
#define PEER_FRAME_BYTES_MIN 256

struct peer_frame {
    uint8_t version, type;
    uint16_t flags;
    uint64_t epoch;
    const char *body; /* points into the decoded buffer */
    uint32_t nbody;
};

/*
 * Decodes one frame from buf[0..len). Returns its total size (> 0), -EAGAIN
 * if buf ends before the frame does, -EBADMSG if it is invalid: a length
 * under the header size or a total over frame_bytes_max (both known from
 * the first 4 bytes, so an oversized frame is refused before it is
 * buffered), a bad checksum, a version other than 1, nonzero flags. The
 * type is not checked here (see peer_msg_decode).
 */
long peer_frame_decode(const char *buf, size_t len, size_t frame_bytes_max,
                       struct peer_frame *f);

/* Bytes peer_msg_encode() appends for m, or 0 if m is not a valid message. */
size_t peer_msg_frame_size(const struct tpc_msg *m);

/*
 * Appends m as a frame (with m->epoch) to b. Returns 0, -EINVAL if m is not
 * a valid message (what peer_msg_decode would refuse), -EMSGSIZE if it
 * cannot fit a frame, -ENOMEM (b unchanged).
 */
int peer_msg_encode(struct buf *b, const struct tpc_msg *m);

/*
 * Decodes a frame's body into m (m->ops points into the body; from and to
 * are 0: the link knows them). Returns 0 or -EBADMSG: unknown type, wrong
 * body length for the type, vote not 0/1, reason over TPC_REASON_MAX,
 * outcome over TPC_O_PENDING, coordinator id over 15, nonzero padding,
 * PREPARE with no ops or no op bytes.
 */
int peer_msg_decode(const struct peer_frame *f, struct tpc_msg *m);

#endif /* TPCKV_PEER_H */
