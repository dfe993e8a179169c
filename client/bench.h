/*
 * bench.h - the load generator behind `clie bench`.
 *
 * A closed-loop generator for any memcached text-protocol server: `conns` TCP
 * connections shared out over `threads` worker threads, each thread one epoll
 * loop over its connections (non-blocking sockets). Every connection keeps
 * `pipeline` requests outstanding (1 in this version) and sends the next one
 * as soon as a reply comes back. Each reply's latency (from just before the
 * request is written to when its last byte is parsed) goes into a
 * per-thread, per-operation histogram; the histograms are merged at the end.
 *
 * Nothing is allocated per request: request headers are built in place in
 * per-connection buffers (only the key's digits change), the value comes from
 * one shared read-only buffer, replies are parsed with client_reply_parse()
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
 * backoff (100 ms doubling to 1 s).
 *
 * Meant to grow (later issue): pipeline > 1 (the per-connection ring of
 * outstanding requests is already there), UDP (a transport per connection),
 * other key distributions (enum bench_key_dist), fixed-rate (open-loop) load.
 */
#ifndef TPCKV_BENCH_H
#define TPCKV_BENCH_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Limits of the knobs, checked by bench_config_check(). */
#define BENCH_CONNS_MAX 10000
#define BENCH_THREADS_MAX 256
#define BENCH_PIPELINE_MAX 1 /* one request outstanding per connection, for now */
#define BENCH_VALUE_MAX (64u * 1024 * 1024)
#define BENCH_KEY_PREFIX "key:"

enum bench_key_dist {
    BENCH_KEYS_UNIFORM = 0, /* every key equally likely */
};

struct bench_config {
    const char *host; /* a name, or an IPv4 or IPv6 literal */
    uint16_t port;
    unsigned conns;                /* connections in all, 1..BENCH_CONNS_MAX */
    unsigned threads;              /* worker threads; no more than conns are used */
    unsigned pipeline;             /* requests outstanding per connection (1) */
    uint64_t requests;             /* > 0: measure until this many requests completed */
    double duration_s;             /* requests == 0: measure this long (> 0) */
    double warmup_s;               /* load before measuring, not counted (>= 0) */
    unsigned ratio_set, ratio_get; /* sets:gets, not both 0 */
    unsigned key_size;             /* bytes, "key:" + zero-padded number */
    unsigned value_size;           /* bytes of every value set */
    uint64_t keys;                 /* key space: key numbers 0..keys-1 */
    enum bench_key_dist key_dist;
    bool preload;   /* set every key once before warming up */
    int timeout_ms; /* connect, and longest wait for a reply */
    uint64_t seed;  /* for the key choices */
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

/*
 * Latency histogram, log-linear as in HdrHistogram: values (nanoseconds)
 * below 256 have a bucket each; above, every power-of-two range [2^k, 2^k+1)
 * is cut into 128 equal buckets, so a bucket is never wider than 1/128 of
 * its values (better than 2 significant digits) from 1 us to 2^36 ns (68.7 s).
 * Larger values are counted in the last bucket (max stays exact).
 */
#define BENCH_HIST_SUB 128u
#define BENCH_HIST_BUCKETS (2 * BENCH_HIST_SUB + 28 * BENCH_HIST_SUB) /* 3840 */

struct bench_hist {
    uint64_t counts[BENCH_HIST_BUCKETS];
    uint64_t total;
    uint64_t max_ns;
    uint64_t min_ns; /* UINT64_MAX while empty */
    double sum_ns;
};

void bench_hist_init(struct bench_hist *h);
unsigned bench_hist_index(uint64_t ns);
/* The largest value that falls in bucket i. */
uint64_t bench_hist_bucket_high(unsigned i);
void bench_hist_record(struct bench_hist *h, uint64_t ns);
void bench_hist_merge(struct bench_hist *into, const struct bench_hist *from);
/* The value at percentile p (0 < p <= 100): the highest value of the bucket
 * holding the ceil(p/100 * total)-th smallest value, at most max. 0 if empty. */
uint64_t bench_hist_percentile(const struct bench_hist *h, double p);

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
    uint64_t timeouts;      /* requests with no reply within timeout_ms */
    uint64_t lost;          /* requests whose connection was lost before a reply */
    uint64_t unfinished;    /* requests still outstanding when the run ended */
    char first_err[BENCH_ERR_COUNT][160]; /* the first such reply line, escaped */
    char first_conn_err[160];             /* the first connection problem */
    /* Latency of successful measured requests (errors are not in them). */
    struct bench_hist hist[BENCH_OP_COUNT];
    struct bench_hist all;
};

/*
 * Runs a benchmark. res is filled in (it is large: allocate it). Returns 0
 * when the run happened (errors, if any, are in res), -EINVAL for a bad
 * config, -ENOMEM, or a negative errno when no connection could be opened
 * (-ECONNREFUSED, -ETIMEDOUT, -EHOSTUNREACH for a name that does not
 * resolve...), with a sentence in err in every failure case.
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
