/*
 * unit_server.c - the whole server in-process, with faults injected into
 * its log through the wal_io seam: a client thread talks memcached to it
 * over loopback while the test thread runs the libuv loop.
 *
 * What is checked is the durability contract at the protocol level: a write
 * is answered STORED only if its record is durable; once the log fails, no
 * write is acknowledged, the failed write is never visible to a read, reads
 * go on, and a restart on the same directory has every acknowledged write.
 *
 * Then what a connection may hold and do: client authentication (--auth-file)
 * over real sockets, the table swapped under live connections (SIGHUP), and
 * the bound on a connection's pending requests: --max-conn-writes in the
 * log, and a read buffer the server stops filling (fsync held back through
 * the seam, so nothing completes while it is looked at).
 */
#include "auth.h"
#include "client.h"
#include "log.h"
#include "server.h"
#include "unit.h"
#include "wal.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- the seam ---------------------------------------------------------------- */

static atomic_int fail_write_errno; /* nonzero: writes fail with it */
static atomic_int fail_sync_errno;  /* nonzero: fdatasync fails with it */
static atomic_int short_writes;     /* nonzero: write at most 5 bytes per call */
static atomic_int syncs_after_failure;
static atomic_int hold_syncs; /* nonzero: fdatasync waits until it is cleared */

static ssize_t faulty_write(int fd, const void *p, size_t n)
{
    int e = atomic_load(&fail_write_errno);
    if (e) {
        errno = e;
        return -1;
    }
    if (atomic_load(&short_writes) && n > 5)
        n = 5;
    return write(fd, p, n);
}

static int faulty_fdatasync(int fd)
{
    while (atomic_load(&hold_syncs))
        usleep(1000);
    int e = atomic_load(&fail_sync_errno);
    if (e) {
        atomic_fetch_add(&syncs_after_failure, 1);
        errno = e;
        return -1;
    }
    return fdatasync(fd);
}

static int real_open(const char *path, int flags, mode_t mode)
{
    return open(path, flags, mode);
}

static int real_close(int fd)
{
    return close(fd);
}

static const struct wal_io faulty_io = {
    .open = real_open,
    .write = faulty_write,
    .fdatasync = faulty_fdatasync,
    .close = real_close,
};

/* ---- a server on a thread's doorstep ----------------------------------------- */

struct harness {
    uv_loop_t loop;
    uv_async_t done;
    struct server *srv;
    char dir[64];
    int port;
    void (*script)(struct harness *h);
    struct client cl;
    bool raw; /* the script talks over raw sockets, not h->cl */
    /* Configuration beyond the defaults. */
    const struct auth *auth;
    unsigned conn_writes_max;
    /* server_set_auth(swap_to) on the loop's thread, as SIGHUP does. */
    uv_async_t swap;
    const struct auth *swap_to;
    atomic_int swapped;
};

static void on_done(uv_async_t *a)
{
    struct harness *h = a->data;
    server_stop(h->srv);
    uv_close((uv_handle_t *)&h->done, NULL);
    uv_close((uv_handle_t *)&h->swap, NULL);
}

static void on_swap(uv_async_t *a)
{
    struct harness *h = a->data;
    server_set_auth(h->srv, h->swap_to);
    atomic_store(&h->swapped, 1);
}

static void *client_main(void *arg)
{
    struct harness *h = arg;
    struct client_config cc = {"127.0.0.1", (uint16_t)h->port, CLIENT_TCP, 5000, 0};

    if (h->raw) {
        h->script(h); /* the script opens sockets of its own */
    } else if (client_open(&h->cl, &cc) == 0) {
        h->script(h);
        client_close(&h->cl);
    } else {
        CU_FAIL("client cannot connect");
    }
    uv_async_send(&h->done);
    return NULL;
}

/* Runs script on a client thread against a server on dir with io. */
static void run_server(struct harness *h, const struct wal_io *io,
                       void (*script)(struct harness *h))
{
    struct server_config cfg;
    char err[512];
    pthread_t t;
    int e;

    server_config_defaults(&cfg);
    cfg.port = 0;
    cfg.udp = false;
    cfg.data_dir = h->dir;
    cfg.wal_io = io;
    cfg.auth = h->auth;
    if (h->conn_writes_max)
        cfg.conn_writes_max = h->conn_writes_max;
    uv_loop_init(&h->loop);
    h->srv = server_new(&h->loop, &cfg, &e);
    CU_ASSERT_PTR_NOT_NULL_FATAL(h->srv);
    CU_ASSERT_EQUAL_FATAL(server_start(h->srv, err, sizeof(err)), 0);
    h->port = server_port(h->srv);
    h->script = script;
    uv_async_init(&h->loop, &h->done, on_done);
    h->done.data = h;
    uv_async_init(&h->loop, &h->swap, on_swap);
    h->swap.data = h;
    CU_ASSERT_EQUAL_FATAL(pthread_create(&t, NULL, client_main, h), 0);
    server_run(h->srv);
    pthread_join(t, NULL);
    server_free(h->srv);
    CU_ASSERT_EQUAL(uv_loop_close(&h->loop), 0);
}

/* One request; returns the reply type, and the first value in *val. */
static enum client_reply_type req(struct harness *h, const char *line, const char *data,
                                  char *val, size_t cap)
{
    struct client_request rq = {line, strlen(line), data, data ? strlen(data) : 0, data != NULL};
    struct client_reply r;
    enum client_reply_type t;

    client_reply_init(&r);
    if (client_request(&h->cl, &rq, &r) < 0) {
        client_reply_free(&r);
        return CLIENT_REPLY_OTHER;
    }
    t = r.type;
    if (val) {
        val[0] = '\0';
        if (t == CLIENT_REPLY_LIST && r.n_items > 0 && r.items[0].data_len < cap) {
            memcpy(val, r.items[0].data, r.items[0].data_len);
            val[r.items[0].data_len] = '\0';
        }
    }
    client_reply_free(&r);
    return t;
}

static void set_ok(struct harness *h, const char *key, const char *value)
{
    char line[128];
    snprintf(line, sizeof(line), "set %s 0 0 %zu", key, strlen(value));
    CU_ASSERT_EQUAL(req(h, line, value, NULL, 0), CLIENT_REPLY_STORED);
}

static void expect_value(struct harness *h, const char *key, const char *want)
{
    char line[128], got[256];
    snprintf(line, sizeof(line), "get %s", key);
    CU_ASSERT_EQUAL(req(h, line, NULL, got, sizeof(got)), CLIENT_REPLY_LIST);
    CU_ASSERT_STRING_EQUAL(got, want);
}

static void make_dir(struct harness *h)
{
    snprintf(h->dir, sizeof(h->dir), "/tmp/tpckv-unit-srv.XXXXXX");
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(h->dir));
}

static void remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    char path[512];

    while (d && (de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        unlink(path);
    }
    if (d)
        closedir(d);
    rmdir(dir);
}

static void reset_faults(void)
{
    atomic_store(&fail_write_errno, 0);
    atomic_store(&fail_sync_errno, 0);
    atomic_store(&short_writes, 0);
    atomic_store(&syncs_after_failure, 0);
    atomic_store(&hold_syncs, 0);
}

/* ---- scripts ----------------------------------------------------------------------- */

static void script_fsync_fails(struct harness *h)
{
    char got[256];

    set_ok(h, "a", "one");
    set_ok(h, "b", "two");
    atomic_store(&fail_sync_errno, EIO);
    /* The record reached the kernel but its fsync failed: not acknowledged,
     * and never visible. */
    CU_ASSERT_EQUAL(req(h, "set c 0 0 5", "three", NULL, 0), CLIENT_REPLY_SERVER_ERROR);
    CU_ASSERT_EQUAL(req(h, "get c", NULL, got, sizeof(got)), CLIENT_REPLY_LIST);
    CU_ASSERT_STRING_EQUAL(got, "");
    /* Sticky: every later write fails too, without another fsync attempt. */
    int syncs = atomic_load(&syncs_after_failure);
    CU_ASSERT_EQUAL(req(h, "set d 0 0 4", "four", NULL, 0), CLIENT_REPLY_SERVER_ERROR);
    CU_ASSERT_EQUAL(req(h, "delete a", NULL, NULL, 0), CLIENT_REPLY_SERVER_ERROR);
    CU_ASSERT_EQUAL(req(h, "incr b 1", NULL, NULL, 0), CLIENT_REPLY_SERVER_ERROR);
    CU_ASSERT_EQUAL(atomic_load(&syncs_after_failure), syncs);
    /* Reads go on, and show only acknowledged writes. */
    expect_value(h, "a", "one");
    expect_value(h, "b", "two");
    /* Every write is refused, even one whose condition would fail. */
    CU_ASSERT_EQUAL(req(h, "add a 0 0 1", "x", NULL, 0), CLIENT_REPLY_SERVER_ERROR);
    /* One reply per request, a gat's too: the next request's reply is its
     * own. */
    CU_ASSERT_EQUAL(req(h, "gat 0 a", NULL, NULL, 0), CLIENT_REPLY_SERVER_ERROR);
    expect_value(h, "a", "one");
}

/* A gat whose own touches are in the batch whose fsync fails: one error
 * line, and the connection stays in step. */
static void script_gat_fsync_fails(struct harness *h)
{
    set_ok(h, "a", "one");
    atomic_store(&fail_sync_errno, EIO);
    CU_ASSERT_EQUAL(req(h, "gat 0 a", NULL, NULL, 0), CLIENT_REPLY_SERVER_ERROR);
    expect_value(h, "a", "one");
    CU_ASSERT_EQUAL(req(h, "gat 0 a", NULL, NULL, 0), CLIENT_REPLY_SERVER_ERROR);
    expect_value(h, "a", "one");
}

static void script_write_enospc(struct harness *h)
{
    char got[256];

    set_ok(h, "a", "one");
    atomic_store(&fail_write_errno, ENOSPC);
    CU_ASSERT_EQUAL(req(h, "set b 0 0 3", "two", NULL, 0), CLIENT_REPLY_SERVER_ERROR);
    CU_ASSERT_EQUAL(req(h, "get b", NULL, got, sizeof(got)), CLIENT_REPLY_LIST);
    CU_ASSERT_STRING_EQUAL(got, "");
    CU_ASSERT_EQUAL(req(h, "set c 0 0 5", "three", NULL, 0), CLIENT_REPLY_SERVER_ERROR);
    expect_value(h, "a", "one");
}

static void script_short_writes(struct harness *h)
{
    char big[200];

    atomic_store(&short_writes, 1);
    memset(big, 'v', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    for (int i = 0; i < 20; i++) {
        char key[16];
        snprintf(key, sizeof(key), "k%d", i);
        set_ok(h, key, big);
    }
    expect_value(h, "k19", big);
}

static void script_check_after_enospc(struct harness *h)
{
    char got[256];

    expect_value(h, "a", "one");
    /* The refused writes never made it to the log in a readable form. */
    CU_ASSERT_EQUAL(req(h, "get b c", NULL, got, sizeof(got)), CLIENT_REPLY_LIST);
    CU_ASSERT_STRING_EQUAL(got, "");
    set_ok(h, "d", "writable again");
}

static void script_check_after_fsync_failure(struct harness *h)
{
    char got[256];

    /* Acknowledged writes are all there. "c" got SERVER_ERROR: it may or may
     * not be (its bytes reached the kernel), which is what the error means. */
    expect_value(h, "a", "one");
    expect_value(h, "b", "two");
    CU_ASSERT_EQUAL(req(h, "get d", NULL, got, sizeof(got)), CLIENT_REPLY_LIST);
    CU_ASSERT_STRING_EQUAL(got, "");
}

static void script_check_short_writes(struct harness *h)
{
    char big[200];

    memset(big, 'v', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    expect_value(h, "k0", big);
    expect_value(h, "k19", big);
}

/* Regression: flush_all with nothing pending looked up a key lock with no
 * key (undefined behaviour, caught by UBSan under memccapable). */
static void script_flush_all(struct harness *h)
{
    char got[256];

    set_ok(h, "a", "one");
    set_ok(h, "b", "two");
    CU_ASSERT_EQUAL(req(h, "flush_all", NULL, NULL, 0), CLIENT_REPLY_OK);
    CU_ASSERT_EQUAL(req(h, "get a b", NULL, got, sizeof(got)), CLIENT_REPLY_LIST);
    CU_ASSERT_STRING_EQUAL(got, "");
    set_ok(h, "c", "after");
}

static void script_check_flush_all(struct harness *h)
{
    char got[256];

    CU_ASSERT_EQUAL(req(h, "get a b", NULL, got, sizeof(got)), CLIENT_REPLY_LIST);
    CU_ASSERT_STRING_EQUAL(got, "");
    expect_value(h, "c", "after");
}

/* ---- raw sockets: pipelining, partial reads, what the client library hides ---- */

static int raw_connect(int port)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    struct timeval tv = {.tv_sec = 5};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    CU_ASSERT_FATAL(fd >= 0);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    CU_ASSERT_FATAL(connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
    return fd;
}

static void raw_send(int fd, const char *s)
{
    CU_ASSERT_EQUAL(send(fd, s, strlen(s), MSG_NOSIGNAL), (ssize_t)strlen(s));
}

/* Reads exactly strlen(want) bytes (5 s at most) and compares. */
static void raw_expect(int fd, const char *want)
{
    char got[1024];
    size_t n = strlen(want), have = 0;

    CU_ASSERT_FATAL(n < sizeof(got));
    while (have < n) {
        ssize_t r = recv(fd, got + have, n - have, 0);
        if (r <= 0)
            break;
        have += (size_t)r;
    }
    got[have] = '\0';
    CU_ASSERT_STRING_EQUAL(got, want);
    if (strcmp(got, want) != 0)
        fprintf(stderr, "\n  got '%s'\n  want '%s'\n", got, want);
}

/* The server closed the connection (after whatever was read before). */
static void raw_expect_eof(int fd)
{
    char b;
    CU_ASSERT_EQUAL(recv(fd, &b, 1, 0), 0);
}

/* One statistic, asked for on fd (an authenticated connection). */
static uint64_t raw_stat(int fd, const char *name)
{
    char buf[16384], want[80];
    size_t have = 0;
    uint64_t v = UINT64_MAX;

    raw_send(fd, "stats\r\n");
    while (have < sizeof(buf) - 1) {
        ssize_t r = recv(fd, buf + have, sizeof(buf) - 1 - have, 0);
        if (r <= 0)
            break;
        have += (size_t)r;
        buf[have] = '\0';
        if (have >= 5 && strcmp(buf + have - 5, "END\r\n") == 0)
            break;
    }
    buf[have] = '\0';
    snprintf(want, sizeof(want), "\r\nSTAT %s ", name);
    const char *p = strstr(buf, want);
    CU_ASSERT_PTR_NOT_NULL(p);
    if (p)
        v = strtoull(p + strlen(want), NULL, 10);
    return v;
}

static const char AUTH_ALICE[] = "set auth 0 0 12\r\nalice s3cret\r\n";

static void script_auth(struct harness *h)
{
    int a = raw_connect(h->port), b, c;

    /* Nothing but the credentials set is run. */
    raw_send(a, "get k\r\nversion\r\nset k 0 0 5\r\nhello\r\n");
    raw_expect(a, "CLIENT_ERROR unauthenticated\r\nCLIENT_ERROR unauthenticated\r\n"
                  "CLIENT_ERROR bad authentication token format\r\n");
    raw_send(a, "set auth 0 0 11\r\nalice wrong\r\n");
    raw_expect(a, "CLIENT_ERROR authentication failure\r\n");
    /* The right ones, with commands pipelined behind them: they run. */
    raw_send(a, "set auth 0 0 12\r\nalice s3cret\r\nset k 0 0 5\r\nhello\r\nget k\r\n");
    raw_expect(a, "STORED\r\nSTORED\r\nVALUE k 0 5\r\nhello\r\nEND\r\n");
    /* --max-auth-failures (3): the third failure closes the connection. */
    b = raw_connect(h->port);
    raw_send(b, "set a 0 0 5\r\nbob x\r\nset a 0 0 5\r\nbob y\r\nset a 0 0 5\r\nbob z\r\n"
                "get k\r\n");
    raw_expect(b, "CLIENT_ERROR authentication failure\r\nCLIENT_ERROR authentication "
                  "failure\r\nCLIENT_ERROR authentication failure\r\n");
    raw_expect_eof(b);
    close(b);
    CU_ASSERT_EQUAL(raw_stat(a, "auth_cmds"), 5);
    CU_ASSERT_EQUAL(raw_stat(a, "auth_errors"), 4);
    CU_ASSERT_EQUAL(raw_stat(a, "auth_failure_closes"), 1);

    /* A new table under live connections (SIGHUP): a's session goes on,
     * new connections need the new password. */
    atomic_store(&h->swapped, 0);
    uv_async_send(&h->swap);
    while (!atomic_load(&h->swapped))
        usleep(1000);
    c = raw_connect(h->port);
    raw_send(c, AUTH_ALICE);
    raw_expect(c, "CLIENT_ERROR authentication failure\r\n");
    raw_send(c, "set auth 0 0 9\r\nalice new\r\nget k\r\n");
    raw_expect(c, "STORED\r\nVALUE k 0 5\r\nhello\r\nEND\r\n");
    raw_send(a, "get k\r\n");
    raw_expect(a, "VALUE k 0 5\r\nhello\r\nEND\r\n");
    /* quit needs no authentication. */
    b = raw_connect(h->port);
    raw_send(b, "quit\r\n");
    raw_expect_eof(b);
    close(b);
    close(c);
    close(a);
}

/* Sends as much of chunk, again and again, as the server takes, stopping
 * once it has taken nothing for 300 ms, or at cap bytes. Returns bytes sent. */
static size_t send_until_stuck(int fd, const char *chunk, size_t n, size_t cap)
{
    size_t sent = 0, off = 0;

    while (sent < cap) {
        ssize_t r = send(fd, chunk + off, n - off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (r > 0) {
            sent += (size_t)r;
            off = (off + (size_t)r) % n;
            continue;
        }
        if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
            break;
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        if (poll(&p, 1, 300) <= 0)
            break;
    }
    return sent;
}

/* --max-conn-writes bounds the writes one connection has in the log, and
 * what comes after them waits in a read buffer the server stops filling. */
static void script_pending_bounded(struct harness *h)
{
    int w = raw_connect(h->port), s = raw_connect(h->port);
    char batch[64 * 20], chunk[64 * 1024];
    size_t blen = 0, clen = 0, sent;
    uint64_t base = raw_stat(s, "bytes_read");

    atomic_store(&hold_syncs, 1); /* nothing becomes durable meanwhile */
    for (int i = 0; i < 50; i++)
        blen += (size_t)sprintf(batch + blen, "set k%d 0 0 1\r\nv\r\n", i);
    raw_send(w, batch);
    /* Once the server has read all of it, it has also run all it would:
     * the read and the run are one step under its lock. */
    for (int i = 0; i < 5000 && raw_stat(s, "bytes_read") - base < blen + 7 * (size_t)(i + 1);
         i++)
        usleep(1000);
    CU_ASSERT_EQUAL(raw_stat(s, "writes_pending"), 4);

    /* Many more: the server reads until its buffer is full, then stops, and
     * the kernel's buffers hold the rest back. */
    while (clen + 20 < sizeof(chunk))
        clen += (size_t)sprintf(chunk + clen, "set z 0 0 1\r\nv\r\n");
    sent = send_until_stuck(w, chunk, clen, 256u << 20);
    CU_ASSERT(sent < (256u << 20));
    uint64_t read = raw_stat(s, "bytes_read") - base;
    CU_ASSERT(read < 256 * 1024);
    if (read >= 256 * 1024)
        fprintf(stderr, "\n  the server read %llu bytes of %zu sent\n", (unsigned long long)read,
                sent);
    CU_ASSERT_EQUAL(raw_stat(s, "writes_pending"), 4);
    atomic_store(&hold_syncs, 0);
    /* The first writes complete, in order. */
    raw_expect(w, "STORED\r\nSTORED\r\nSTORED\r\nSTORED\r\nSTORED\r\n");
    close(w);
    close(s);
}

/* Connection threads run the reads of one loop turn together at its end.
 * Many connections at once (more than a turn has slots for), each with a
 * write and a read of it in one send: every reply is its own connection's.
 * Then connections that send a set and close at once: the set must still
 * run (its reply goes nowhere). 160 connections over two threads fill a
 * turn's 64 slots, so some reads run at once instead. */
#define MANY_CONNS 160
#define CLOSING_CONNS 40
static void script_many_conns(struct harness *h)
{
    int fd[MANY_CONNS];
    char line[128], want[128];

    for (int i = 0; i < MANY_CONNS; i++)
        fd[i] = raw_connect(h->port);
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < MANY_CONNS; i++) {
            snprintf(line, sizeof(line), "set m%d 0 0 7\r\nv%02d_%03d\r\nget m%d\r\n", i, round, i, i);
            raw_send(fd[i], line);
        }
        for (int i = 0; i < MANY_CONNS; i++) {
            snprintf(want, sizeof(want), "STORED\r\nVALUE m%d 0 7\r\nv%02d_%03d\r\nEND\r\n", i,
                     round, i);
            raw_expect(fd[i], want);
        }
    }
    for (int i = 0; i < MANY_CONNS; i++)
        close(fd[i]);

    for (int i = 0; i < CLOSING_CONNS; i++)
        fd[i] = raw_connect(h->port);
    for (int i = 0; i < CLOSING_CONNS; i++) {
        snprintf(line, sizeof(line), "set e%d 0 0 1\r\nx\r\n", i);
        raw_send(fd[i], line);
        close(fd[i]);
    }
    int q = raw_connect(h->port);
    for (int i = 0; i < CLOSING_CONNS; i++) {
        char got[128];
        bool found = false;
        snprintf(line, sizeof(line), "get e%d\r\n", i);
        snprintf(want, sizeof(want), "VALUE e%d 0 1\r\nx\r\nEND\r\n", i);
        /* The writes' replies were dropped with their connections: wait for
         * each to become durable (2 s at most). */
        for (int t = 0; t < 200 && !found; t++) {
            raw_send(q, line);
            ssize_t r = recv(q, got, sizeof(got) - 1, 0);
            got[r > 0 ? r : 0] = '\0';
            found = strcmp(got, want) == 0;
            if (!found && strcmp(got, "END\r\n") != 0)
                break; /* neither the value nor a miss: a short read, or worse */
            if (!found)
                usleep(10000);
        }
        CU_ASSERT(found);
        if (!found)
            fprintf(stderr, "\n  e%d: got '%s', want '%s'\n", i, got, want);
    }
    close(q);
}

/* ---- tests ------------------------------------------------------------------------ */

/* Runs script on a fresh data dir with io, then check on a restart of the
 * same dir with the real system calls. The injected errors are logged:
 * keep them out of the test output. */
static void run_then_restart(const struct wal_io *io, void (*script)(struct harness *h),
                             void (*check)(struct harness *h))
{
    struct harness h;
    enum log_level saved = log_get_level();

    log_set_level(LOG_LEVEL_ERROR);
    log_open_file("/dev/null");
    memset(&h, 0, sizeof(h));
    make_dir(&h);
    reset_faults();
    run_server(&h, io, script);
    reset_faults();
    run_server(&h, NULL, check);
    remove_dir(h.dir);
    log_close();
    log_set_level(saved);
}

static void test_fsync_failure_acknowledges_nothing(void)
{
    run_then_restart(&faulty_io, script_fsync_fails, script_check_after_fsync_failure);
}

static void script_check_a_one(struct harness *h)
{
    expect_value(h, "a", "one");
}

static void test_gat_fsync_failure_one_reply(void)
{
    run_then_restart(&faulty_io, script_gat_fsync_fails, script_check_a_one);
}

static void test_enospc_acknowledges_nothing(void)
{
    run_then_restart(&faulty_io, script_write_enospc, script_check_after_enospc);
}

static void test_short_writes_are_completed(void)
{
    run_then_restart(&faulty_io, script_short_writes, script_check_short_writes);
}

static void test_flush_all_is_durable(void)
{
    run_then_restart(NULL, script_flush_all, script_check_flush_all);
}

static void test_auth_over_the_wire(void)
{
    struct harness h;
    struct auth *a1, *a2;
    char err[256];
    enum log_level saved = log_get_level();

    CU_ASSERT_EQUAL_FATAL(auth_parse("t", "alice:s3cret\n", 13, &a1, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL_FATAL(auth_parse("t", "alice:new\n", 10, &a2, err, sizeof(err)), 0);
    log_set_level(LOG_LEVEL_ERROR); /* the failed attempts are logged */
    memset(&h, 0, sizeof(h));
    make_dir(&h);
    reset_faults();
    h.raw = true;
    h.auth = a1;
    h.swap_to = a2;
    run_server(&h, NULL, script_auth);
    remove_dir(h.dir);
    auth_free(a1);
    auth_free(a2);
    log_set_level(saved);
}

/* A script over raw sockets against a fresh server (--max-conn-writes
 * conn_writes_max, 0 for the default), its log going through io. */
static void run_raw(const struct wal_io *io, unsigned conn_writes_max,
                    void (*script)(struct harness *h))
{
    struct harness h;
    enum log_level saved = log_get_level();

    log_set_level(LOG_LEVEL_ERROR);
    memset(&h, 0, sizeof(h));
    make_dir(&h);
    reset_faults();
    h.raw = true;
    h.conn_writes_max = conn_writes_max;
    run_server(&h, io, script);
    reset_faults();
    remove_dir(h.dir);
    log_set_level(saved);
}

static void test_many_conns(void)
{
    run_raw(NULL, 0, script_many_conns);
}

static void test_pending_requests_bounded(void)
{
    run_raw(&faulty_io, 4, script_pending_bounded);
}

void unit_server_register(void)
{
    CU_pSuite s = unit_suite("server");
    unit_test(s, "fsync failure: nothing more acknowledged", test_fsync_failure_acknowledges_nothing);
    unit_test(s, "a gat whose fsync fails gets one reply",
              test_gat_fsync_failure_one_reply);
    unit_test(s, "ENOSPC: refused writes never visible", test_enospc_acknowledges_nothing);
    unit_test(s, "short writes are completed", test_short_writes_are_completed);
    unit_test(s, "flush_all with nothing pending is logged", test_flush_all_is_durable);
    unit_test(s, "auth: unauthenticated refused, failures close, table swapped live",
              test_auth_over_the_wire);
    unit_test(s, "a connection's pending requests are bounded (--max-conn-writes, read "
                 "buffer)", test_pending_requests_bounded);
    unit_test(s, "many connections in one loop turn; a set followed at once by a close runs",
              test_many_conns);
}
