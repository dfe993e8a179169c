/*
 * server.h - the network side of serve: TCP and UDP listeners on one port,
 * client connections, and the glue from parsed requests to the store.
 *
 * The main libuv loop is owned by the caller; with cfg.threads > 0 the
 * server also runs that many connection threads, each with a loop of its
 * own, and the caller must drive the main loop with server_run() (which
 * takes the server's lock around everything the loop runs). A struct server
 * is self-contained (no globals), so tests can run several in one process.
 */
#ifndef TPCKV_SERVER_H
#define TPCKV_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "auth.h"
#include "limits.h"
#include "peer.h"
#include "wal.h"

struct server_config {
    const char *host; /* address to bind (IPv4 or IPv6 literal, or a name) */
    int port;         /* one port number for TCP and UDP; 0 = let the kernel pick */
    bool tcp;
    bool udp;
    size_t max_conns;
    unsigned threads; /* connection threads; 0 = all on the main loop */
    uint64_t max_memory_bytes;
    size_t value_bytes_max;
    size_t get_line_bytes_max;
    size_t get_keys_max;
    size_t conn_output_bytes_max;
    unsigned output_stall_timeout_s; /* queued replies not taken that long: close; 0 = never */
    unsigned conn_writes_max; /* one connection's writes in the log at once */
    unsigned idle_timeout_s; /* 0 = never */
    /* Client authentication (memcached's ASCII scheme, -Y): with auth set, a
     * TCP connection must authenticate before anything else; UDP must be
     * off. Borrowed until server_free (server_set_auth replaces it). */
    const struct auth *auth;
    const char *auth_file;     /* its path, for stats settings */
    unsigned auth_timeout_s;   /* unauthenticated that long: close; 0 = never */
    unsigned auth_failures_max; /* failed attempts before the connection closes */
    uint64_t hash_seed;
    /* Durability. */
    const char *data_dir;
    enum wal_fsync_mode fsync_mode;
    unsigned fsync_interval_ms;
    uint64_t snapshot_bytes;    /* log growth that triggers a snapshot */
    uint64_t wal_segment_bytes;
    uint64_t wal_prealloc_bytes; /* 0: the log appends, growing its file */
    const struct wal_io *wal_io; /* NULL: real system calls (tests inject faults) */
    /* Replication. nreplicas 0: a single replica (one-phase commit, no
     * network). Otherwise every write runs two-phase commit on all of them. */
    uint32_t id;
    size_t nreplicas;
    struct peer_addr replicas[LIMIT_REPLICAS_MAX];
    const unsigned char *secret; /* cluster secret (borrowed until server_free) */
    size_t nsecret;
    uint64_t epoch;
    unsigned prepare_timeout_ms;
    unsigned lock_wait_ms;
    unsigned max_clock_skew_ms; /* 0: no check (see skew.h) */
};

/* Fills cfg with the defaults from limits.h (TCP on, UDP off, 127.0.0.1:11211). */
void server_config_defaults(struct server_config *cfg);

/*
 * Creates a server on loop. Returns NULL with *err set (-ENOMEM, -EINVAL for
 * a bad config). Nothing is bound until server_start().
 */
struct server *server_new(uv_loop_t *loop, const struct server_config *cfg, int *err);

/*
 * Locks the data directory, recovers the store from it (snapshot, then the
 * log), opens the log, then binds and starts listening. Returns 0 or a
 * negative errno/libuv code; err (errcap bytes) then says what failed and,
 * for a damaged data directory, what to do. -EWOULDBLOCK: another serve
 * holds the data directory. On error nothing stays bound.
 */
int server_start(struct server *srv, char *err, size_t errcap);

/*
 * Replaces the credentials connections authenticate against (SIGHUP reloads
 * the auth file). Call from the main loop's thread, which holds the server's
 * lock while its callbacks run; the caller keeps owning both tables and may
 * free the previous one once this returns. Connections already
 * authenticated stay so. Only for a server started with cfg.auth set; a is
 * not NULL.
 */
void server_set_auth(struct server *srv, const struct auth *a);

/* Starts a snapshot now (SIGUSR1). Returns 0, or -EBUSY if one is running. */
int server_snapshot(struct server *srv);

/* The TCP or UDP port actually bound (useful with port 0). */
int server_port(const struct server *srv);

/* The peer port bound (a replica in a cluster), or 0. */
int server_peer_port(const struct server *srv);

/*
 * Runs the main loop until the server has stopped and every handle is
 * closed (uv_run(UV_RUN_DEFAULT) with the server's lock held except while
 * the loop waits for events). Returns uv_run's value.
 */
int server_run(struct server *srv);

/*
 * Stops accepting, closes every connection and handle, and joins the
 * connection threads. The loop then runs out of work and server_run()
 * returns; call server_free() after that.
 */
void server_stop(struct server *srv);

void server_free(struct server *srv);

#endif /* TPCKV_SERVER_H */
