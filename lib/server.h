/*
 * server.h - the network side of serve: TCP and UDP listeners on one port,
 * client connections, and the glue from parsed requests to the store.
 *
 * Everything runs on one libuv loop, owned by the caller. A struct server is
 * self-contained (no globals), so tests can run several in one process.
 */
#ifndef TPCKV_SERVER_H
#define TPCKV_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct server_config {
    const char *host; /* address to bind (IPv4 or IPv6 literal, or a name) */
    int port;         /* one port number for TCP and UDP; 0 = let the kernel pick */
    bool tcp;
    bool udp;
    size_t max_conns;
    uint64_t max_memory_bytes;
    size_t value_bytes_max;
    size_t get_line_bytes_max;
    size_t get_keys_max;
    size_t conn_output_bytes_max;
    unsigned idle_timeout_s; /* 0 = never */
    uint64_t hash_seed;
};

/* Fills cfg with the defaults from limits.h (TCP on, UDP off, 127.0.0.1:11211). */
void server_config_defaults(struct server_config *cfg);

/*
 * Creates a server on loop. Returns NULL with *err set (-ENOMEM, -EINVAL for
 * a bad config). Nothing is bound until server_start().
 */
struct server *server_new(uv_loop_t *loop, const struct server_config *cfg, int *err);

/*
 * Binds and starts listening. Returns 0 or a negative libuv/errno code
 * (-EADDRINUSE, -EADDRNOTAVAIL, -EACCES, ...); on error nothing stays bound.
 */
int server_start(struct server *srv);

/* The TCP or UDP port actually bound (useful with port 0). */
int server_port(const struct server *srv);

/*
 * Stops accepting, closes every connection and handle. The loop then runs
 * out of work and uv_run() returns; call server_free() after that.
 */
void server_stop(struct server *srv);

void server_free(struct server *srv);

#endif /* TPCKV_SERVER_H */
