/*
 * bench_int.h - what the files of `clie bench` share (private to them):
 * bench.c (the configuration, the address, the run and its phases),
 * bench_conn.c (the connections and the worker threads' loops),
 * bench_report.c (the text and JSON reports).
 *
 * Threads. The calling thread resolves the address, starts the workers and
 * drives the phases through one atomic variable; each worker runs an epoll
 * loop over its share of the connections and never blocks elsewhere. Workers
 * share nothing writable but a few atomic counters: their tallies are their
 * own and are read after pthread_join. The live line (once a second) reads
 * the workers' histograms while they run, so those counters are relaxed
 * atomics with one writer each (a plain load and store on x86-64).
 *
 * A connection (struct conn) is CLOSED, CONNECTING, AUTH or OPEN (AUTH: with
 * a user, between connect and open: "version", then the credentials set if
 * the server answered CLIENT_ERROR unauthenticated). When OPEN it has
 * up to `pipeline` outstanding requests in a ring of slots (send time, op,
 * key, the phase it was sent in); a reply is matched to the oldest slot. Its
 * request is written straight from its header buffer and the shared value
 * buffer with sendmsg() (an iovec); a short write waits for EPOLLOUT. Replies
 * are read into a per-connection buffer and parsed with client_reply_parse();
 * the buffer only grows (a reply larger than it), never per request.
 *
 * Time: util_mono_ns() (CLOCK_MONOTONIC) just before a request is written
 * and when its reply has been parsed. Latencies are service times of a
 * closed loop: a slow reply delays the next request of its connection, and
 * that wait is not in any latency (no coordinated-omission correction).
 */
#ifndef TPCKV_BENCH_INT_H
#define TPCKV_BENCH_INT_H

#include "bench.h"

#include "client.h"
#include "limits.h"
#include "log.h"
#include "proto.h"
#include "util.h"
#include "zipf.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define NS_PER_MS 1000000ull
#define NS_PER_S 1000000000ull
#define BACKOFF_MIN_MS 100u
#define BACKOFF_MAX_MS 1000u
#define LOOP_WAIT_MS 10 /* epoll_wait timeout: how soon a phase change is seen */
#define SCAN_EVERY_NS (10 * NS_PER_MS) /* timeouts and reconnects */
#define IN_BUF_MIN 4096u
/* A UDP frame header, then "set " KEY " 0 0 N\r\n". */
#define HDR_CAP (LIMIT_UDP_HEADER_BYTES + 4 + 250 + 32)
#define UDP_IN_CAP (65536u + LIMIT_UDP_HEADER_BYTES) /* any datagram */
#define UDP_RCVBUF (1024 * 1024)

enum phase {
    PH_CONNECT = 0, /* connections are being opened; no requests */
    PH_PRELOAD,
    PH_WARMUP,
    PH_MEASURE,
    PH_STOP,
};

/* One outstanding request. */
struct slot {
    uint64_t sent_ns;
    uint64_t key;
    uint8_t op;    /* enum bench_op */
    uint8_t phase; /* enum phase when it was sent */
};

enum conn_state {
    CS_CLOSED = 0,
    CS_CONNECTING,
    CS_AUTH, /* authenticating; deadline_ns still runs */
    CS_OPEN,
};

struct worker;

struct conn {
    struct worker *w;
    int fd;
    enum conn_state st;
    uint32_t events;      /* registered with epoll */
    bool tried;           /* its first connection attempt has ended */
    bool auth_sent;       /* AUTH: the credentials are out (else "version") */
    uint64_t deadline_ns; /* CONNECTING: give up then */
    uint64_t retry_ns;    /* CLOSED: reconnect then */
    unsigned backoff_ms;
    /* Output: the queued requests not yet written, iov[iov_i..iov_n) of
     * iov_cap (two per slot: a request is a header and maybe the value). */
    struct iovec *iov;
    unsigned iov_i, iov_n, iov_cap;
    char *hdrs; /* HDR_CAP bytes per slot: the header of its request */
    /* Input. */
    char *in;
    size_t in_len, in_cap, in_need;
    struct client_reply r;
    /* Outstanding requests, oldest at q_head, a ring of `pipeline` slots. */
    struct slot *q;
    unsigned q_head, q_n;
    unsigned cycle; /* position in the set:get cycle */
    /* UDP: the request id of the outstanding request, and its reply's
     * datagrams so far (reassembled by lib/client, buffers kept). */
    uint16_t udp_id;
    struct client_udp_asm udp;
};

/* Written by its worker, read by the main thread while running. */
struct live_hist {
    _Atomic uint64_t counts[HIST_BUCKETS];
};

struct shared;

struct worker {
    struct shared *sh;
    unsigned index;
    pthread_t tid;
    bool started;
    int ep;
    struct conn *conns;
    unsigned nconns;
    uint64_t rng;
    int phase;         /* the last phase seen */
    unsigned inflight; /* requests outstanding on all its connections */
    uint64_t pre_next, pre_end;
    bool quota_mode;
    uint64_t quota; /* measured requests still to send */
    bool settled, preloaded, finished;
    uint64_t stop_deadline_ns;
    uint64_t last_scan_ns;
    uint64_t last_measured_ns; /* when the last measured reply arrived */
    /* Tallies, read after join. */
    struct bench_counts measured, preload;
    uint64_t conn_failures, disconnects, timeouts, lost, unfinished;
    uint64_t udp_timeouts, late_replies, udp_errors;
    char first_err[BENCH_ERR_COUNT][160];
    char first_conn_err[160];
    _Atomic int first_conn_errno; /* the first failed attempt's errno */
    uint64_t lat_max[BENCH_OP_COUNT], lat_min[BENCH_OP_COUNT];
    uint64_t lat_overflow[BENCH_OP_COUNT]; /* above HIST_RANGE_MAX_NS */
    double lat_sum[BENCH_OP_COUNT];
    /* Read while running. */
    _Atomic uint64_t live_replies; /* measured replies */
    _Atomic uint64_t live_errors;  /* measured error replies */
    _Atomic uint64_t progress;     /* replies of any phase */
    struct live_hist lh[BENCH_OP_COUNT];
};

struct shared {
    const struct bench_config *cfg;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    char *value;    /* value_size bytes, then CRLF */
    char *auth_req; /* "set auth 0 0 N\r\nUSER PASSWORD\r\n", with a user */
    size_t auth_len;
    unsigned key_digits;
    /* Request line templates, the key's digits all '0' (put_key). */
    char set_tpl[HDR_CAP], get_tpl[HDR_CAP];
    size_t set_tpl_len, get_tpl_len;
    struct zipf zipf; /* BENCH_KEYS_ZIPF */
    _Atomic int phase;
    _Atomic unsigned settled;   /* workers whose connections were each tried once */
    _Atomic unsigned conns_up;  /* connections whose first attempt succeeded */
    _Atomic unsigned preloaded; /* workers done with their share of the keys */
    _Atomic unsigned finished;  /* workers done with their share of -n */
};

/* bench.c */
unsigned bench_digits_of(uint64_t v);
void bench_fmt_lat(char *dst, size_t cap, uint64_t ns);

/* bench_conn.c */
uint64_t bench_rng_next(uint64_t *s);
void bench_set_first(char *dst, size_t cap, const char *msg);
int bench_conn_init(struct conn *c, struct worker *w);
void bench_conn_free(struct conn *c);
void *bench_worker_main(void *arg);

/* bench_report.c */

#endif
