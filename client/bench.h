/*
 * bench.h - the load generator behind `clie bench`.
 *
 * A closed-loop generator for any memcached text-protocol server: `conns` TCP
 * connections or connected UDP sockets shared out over `threads` worker
 * threads, each thread one epoll loop over its connections (non-blocking
 * sockets). Every TCP connection keeps `pipeline` requests outstanding (the
 * depth, -d) and sends the next one as soon as a reply comes back; replies
 * come back in order. Each reply's latency (from when its request is queued,
 * just before the batch it is in is written, to when its last byte is
 * parsed) goes into a per-thread, per-operation histogram (lib/hist.h); the
 * histograms are merged at the end.
 *
 * UDP uses memcached's 8-byte frame (request id, sequence 0, count 1): one
 * request outstanding per socket, the request in one datagram, the reply
 * reassembled from as many datagrams as it takes. A reply not complete within
 * timeout_ms is a UDP timeout (the socket goes on with a new request id); a
 * datagram carrying an old request id is a late reply, dropped and counted.
 *
 * Nothing is allocated per request: request headers are built in per-slot
 * buffers allocated with the connection (only the key's digits change from a
 * template), the value comes from one shared read-only buffer and is sent
 * with sendmsg() iovecs, replies are parsed with client_reply_parse()
 * (lib/client.h) in a per-connection buffer, and histograms are fixed arrays.
 *
 * A run goes through phases, driven by the calling thread:
 *   connect  every connection is opened once; if none opens, the run stops
 *            (bench_run returns -ECONNREFUSED or the like: clie exits 3)
 *   preload  (optional) every key is set once, split over the threads
 *   warmup   (optional) load as in the measurement, not counted
 *   measure  for duration_s, or until `requests` requests have completed
 *   stop     no new requests; the outstanding ones are waited for (up to
 *            timeout_ms) and counted if they were sent while measuring
 * Connections that fail or are lost later are counted and reopened with a
 * backoff (100 ms doubling to 1 s). With a user, a TCP connection counts as
 * open once it has authenticated (memcached's ASCII scheme; connect and
 * authentication share timeout_ms); a refusal is a failed attempt, and when
 * every connection is refused, bench_run returns -EACCES.
 *
 * Keys are chosen uniformly or with a Zipf distribution (lib/zipf.h: key 0
 * the most frequent), from a per-thread generator seeded with `seed`.
 *
 * Meant to grow (later issue): fixed-rate (open-loop) load.
 */
#ifndef TPCKV_BENCH_H
#define TPCKV_BENCH_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "hist.h"

/* Limits of the knobs, checked by bench_config_check(). */
#define BENCH_CONNS_MAX 10000
#define BENCH_THREADS_MAX 256
#define BENCH_PIPELINE_MAX 1024 /* requests outstanding per TCP connection */
#define BENCH_VALUE_MAX (64u * 1024 * 1024)
/* A UDP request must fit one datagram: the IPv4 UDP payload maximum. */
#define BENCH_UDP_REQUEST_MAX 65507u
#define BENCH_UDP_TIMEOUT_MS 1000 /* default --timeout with --udp */
#define BENCH_ZIPF_S_DEFAULT 0.99
#define BENCH_KEY_PREFIX "bench:" /* clearly a benchmark's, in a real store */

enum bench_key_dist {
    BENCH_KEYS_UNIFORM = 0, /* every key equally likely */
    BENCH_KEYS_ZIPF,        /* key k with weight 1 / (k + 1)^zipf_s */
};

struct bench_config {
    const char *host; /* a name, or an IPv4 or IPv6 literal */
    uint16_t port;
    unsigned conns;                /* connections in all, 1..BENCH_CONNS_MAX */
    unsigned threads;              /* worker threads; no more than conns are used */
    unsigned pipeline;             /* depth: requests outstanding per connection */
    bool udp;                      /* UDP sockets (memcached framing), not TCP */
    uint64_t requests;             /* > 0: measure until this many requests completed */
    double duration_s;             /* requests == 0: measure this long (> 0) */
    double warmup_s;               /* load before measuring, not counted (>= 0) */
    unsigned ratio_set, ratio_get; /* sets:gets, not both 0 */
    unsigned key_size;             /* bytes, key_prefix + zero-padded number */
    const char *key_prefix;        /* BENCH_KEY_PREFIX unless --key-prefix */
    unsigned value_size;           /* bytes of every value set */
    uint64_t keys;                 /* key space: key numbers 0..keys-1 */
    enum bench_key_dist key_dist;
    double zipf_s;  /* BENCH_KEYS_ZIPF: the exponent, in (0, ZIPF_S_MAX] */
    bool preload;   /* set every key once before warming up */
    int timeout_ms; /* connect, and longest wait for a reply */
    uint64_t seed;  /* for the key choices */
    /* Non-NULL: every TCP connection authenticates first (client_auth()'s
     * exchange: version, then the credentials if the server asks for them). */
    const char *user;
    const char *pass;
    size_t npass;
    /* Where to print one progress line per second while measuring (and a
     * line when preloading and warming up start), or NULL for none. */
    FILE *live;
    /* Set to non-zero (from a signal handler) to end the run early; the
     * results so far are still returned. May be NULL. */
    volatile sig_atomic_t *interrupt;
};

/* Sets every field to the defaults of `clie bench` (host and port too). */
void bench_config_default(struct bench_config *cfg);

/* Checks the knobs against each other and the limits. Returns 0, or -EINVAL
 * with a sentence in err. */
int bench_config_check(const struct bench_config *cfg, char *err, size_t cap);

enum bench_op {
    BENCH_OP_SET = 0,
    BENCH_OP_GET,
    BENCH_OP_COUNT,
};

/* Replies that are not a success, by kind. */
enum bench_err {
    BENCH_ERR_ERROR = 0,  /* ERROR */
    BENCH_ERR_CLIENT,     /* CLIENT_ERROR ... */
    BENCH_ERR_SERVER,     /* SERVER_ERROR ... */
    BENCH_ERR_UNEXPECTED, /* well-formed but wrong: NOT_STORED to a set, another key */
    BENCH_ERR_COUNT,
};

/* What one phase's replies said. */
struct bench_counts {
    uint64_t replies;            /* every reply, errors included */
    uint64_t ok[BENCH_OP_COUNT]; /* set: STORED; get: a hit or a miss */
    uint64_t hits, misses;       /* gets */
    uint64_t err[BENCH_ERR_COUNT];
};

struct bench_result {
    struct bench_counts measured; /* requests sent while measuring */
    struct bench_counts preload;
    double elapsed_s;  /* measuring: from its start to its last reply */
    double warmup_s;   /* actually spent warming up */
    double preload_s;  /* actually spent preloading */
    bool interrupted;  /* cfg->interrupt ended the run early */
    bool stalled;      /* ended early: no reply at all for 2 x timeout + 1 s */
    unsigned threads;  /* worker threads used */
    unsigned conns_up; /* connections open after the connect phase */
    /* Whole run. */
    uint64_t conn_failures; /* connection attempts that failed */
    uint64_t disconnects;   /* open connections dropped: closed by the server, reset,
                               bad reply, or closed after a reply timeout */
    uint64_t timeouts;      /* TCP requests with no reply within timeout_ms */
    uint64_t udp_timeouts;  /* UDP requests with no whole reply within timeout_ms */
    uint64_t late_replies;  /* UDP datagrams for a request already given up on */
    uint64_t udp_errors;    /* UDP send or receive errors (e.g. ICMP refused) */
    uint64_t lost;          /* requests whose connection was lost before a reply */
    uint64_t unfinished;    /* requests still outstanding when the run ended */
    char first_err[BENCH_ERR_COUNT][160]; /* the first such reply line, escaped */
    char first_conn_err[160];             /* the first connection problem */
    /* Latency of successful measured requests (errors are not in them). */
    struct hist hist[BENCH_OP_COUNT];
    struct hist all;
};

/*
 * Runs a benchmark. res is filled in (it is large: allocate it). Returns 0
 * when the run happened (errors, if any, are in res), -EINVAL for a bad
 * config, -ENOMEM, or a negative errno when no connection could be opened
 * (-ECONNREFUSED, -ETIMEDOUT, -EHOSTUNREACH for a name that does not
 * resolve, -EACCES when the server refused the credentials...), with a
 * sentence in err in every failure case.
 */
int bench_run(const struct bench_config *cfg, struct bench_result *res, char *err,
              size_t cap);

/* The human-readable report (several lines). */
void bench_print_text(FILE *f, const struct bench_config *cfg,
                      const struct bench_result *res);
/* One JSON object on one line; latencies in microseconds. */
void bench_print_json(FILE *f, const struct bench_config *cfg,
                      const struct bench_result *res);

#endif /* TPCKV_BENCH_H */
