/*
 * server.c - serve's server from start to stop: configuration defaults,
 * opening the data directory and recovering, binding the listeners,
 * running the main loop and its housekeeping timer, stopping and freeing.
 * How the files of the server divide the work: srv.h.
 */

#include "server.h"
#include "srv.h"

void server_config_defaults(struct server_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->host = "127.0.0.1";
    cfg->port = 11211;
    cfg->tcp = true;
    cfg->udp = false;
    cfg->max_conns = LIMIT_CONNS_DEFAULT;
    cfg->threads = LIMIT_THREADS_DEFAULT;
    cfg->conn_writes_max = LIMIT_CONN_WRITES_DEFAULT;
    cfg->max_memory_bytes = (uint64_t)LIMIT_MEMORY_MB_DEFAULT * 1024 * 1024;
    cfg->value_bytes_max = LIMIT_VALUE_BYTES_DEFAULT;
    cfg->get_line_bytes_max = LIMIT_GET_LINE_BYTES_DEFAULT;
    cfg->get_keys_max = LIMIT_GET_KEYS_DEFAULT;
    cfg->conn_output_bytes_max = LIMIT_CONN_OUTPUT_BYTES_DEFAULT;
    cfg->output_stall_timeout_s = LIMIT_OUTPUT_STALL_TIMEOUT_S_DEFAULT;
    cfg->idle_timeout_s = LIMIT_IDLE_TIMEOUT_S_DEFAULT;
    cfg->auth_timeout_s = LIMIT_AUTH_TIMEOUT_S_DEFAULT;
    cfg->auth_failures_max = LIMIT_AUTH_FAILURES_DEFAULT;
    cfg->data_dir = LIMIT_DATA_DIR_DEFAULT;
    cfg->fsync_mode = WAL_FSYNC_ALWAYS;
    cfg->fsync_interval_ms = LIMIT_FSYNC_INTERVAL_MS_DEFAULT;
    cfg->snapshot_bytes = LIMIT_SNAPSHOT_BYTES_DEFAULT;
    cfg->wal_segment_bytes = LIMIT_WAL_SEGMENT_BYTES_DEFAULT;
    cfg->wal_prealloc_bytes = LIMIT_WAL_PREALLOC_BYTES_DEFAULT;
    cfg->epoch = 1;
    cfg->prepare_timeout_ms = LIMIT_PREPARE_TIMEOUT_MS_DEFAULT;
    cfg->lock_wait_ms = LIMIT_LOCK_WAIT_MS_DEFAULT;
    cfg->max_clock_skew_ms = LIMIT_CLOCK_SKEW_MS_DEFAULT;
}

int server_run(struct server *srv)
{
    int alive;

    if (!srv->threaded)
        return uv_run(srv->loop, UV_RUN_DEFAULT);
    srv_lock(srv);
    while ((alive = uv_run(srv->loop, UV_RUN_NOWAIT)) != 0) {
        struct pollfd p = {.fd = uv_backend_fd(srv->loop), .events = POLLIN};
        int timeout = uv_backend_timeout(srv->loop);
        srv_unlock(srv);
        if (poll(&p, 1, timeout) < 0 && errno != EINTR)
            log_warn(MOD, "poll: %s", strerror(errno));
        srv_lock(srv);
    }
    srv_unlock(srv);
    return alive;
}

static void on_housekeeping(uv_timer_t *t)
{
    struct server *srv = t->data;

    srv_refresh_now(srv);
    if (srv->cluster) {
        srv_clock_step_check(srv);
        if (srv_mono_ms() >= srv->clock_probe_at_ms) {
            srv_clock_probe(srv);
            srv_skew_changed(srv); /* samples grow old too */
        }
    }
    if (srv->cluster)
        srv_expire_step(srv);
    else
        store_expire_step(srv->store, srv->now_ms, EXPIRE_BUCKETS_PER_TICK);
    /* Normally woken by the last pending write; this catches a barrier left
     * with nothing to wait for (its flush's connection closed). */
    if (srv->npending == 0 && srv->barrier.head)
        srv_waitlist_wake(&srv->barrier);
    srv_snapshot_check(srv);
    srv_snapshot_maybe(srv);
    if (srv->cluster && srv->cfg.lock_wait_ms)
        srv_lock_wait_timeouts(srv);
    /* Without connection threads, the main loop owns the connections. */
    if (!srv->threaded && srv_sweep_wanted(srv))
        srv_lt_sweep(&srv->lt[0]);
    log_limit_flush(&srv->rl_refused, MOD);
    log_limit_flush(&srv->rl_accept, MOD);
    log_limit_flush(&srv->rl_auth, MOD);
    log_limit_flush(&srv->rl_auth_timeout, MOD);
    log_limit_flush(&srv->rl_ceiling, MOD);
}

void server_set_auth(struct server *srv, const struct auth *a)
{
    assert(srv->cfg.auth != NULL && a != NULL);
    srv->cfg.auth = a;
}

struct server *server_new(uv_loop_t *loop, const struct server_config *cfg, int *err)
{
    struct server *srv;
    struct store_config sc = {0};

    if (cfg->max_conns == 0 || cfg->value_bytes_max == 0 ||
        cfg->value_bytes_max > LIMIT_VALUE_BYTES_CEILING || cfg->get_keys_max == 0 ||
        cfg->get_line_bytes_max < LIMIT_LINE_BYTES_MAX ||
        cfg->conn_output_bytes_max == 0 || (!cfg->tcp && !cfg->udp) ||
        cfg->data_dir == NULL || cfg->data_dir[0] == '\0' ||
        cfg->wal_segment_bytes < 4096 || cfg->nreplicas > LIMIT_REPLICAS_MAX ||
        cfg->threads > LIMIT_THREADS_MAX || cfg->conn_writes_max == 0 ||
        (cfg->auth && (cfg->udp || cfg->auth_failures_max == 0)) ||
        (cfg->nreplicas > 0 && (cfg->prepare_timeout_ms == 0 || cfg->epoch == 0))) {
        *err = -EINVAL;
        return NULL;
    }
    srv = calloc(1, sizeof(*srv));
    if (srv == NULL) {
        *err = -ENOMEM;
        return NULL;
    }
    srv->loop = loop;
    srv->cfg = *cfg;
    srv->threaded = cfg->threads > 0;
    srv->nlt = 1 + cfg->threads;
    srv->lt = calloc(srv->nlt, sizeof(*srv->lt));
    if (srv->lt == NULL) {
        free(srv);
        *err = -ENOMEM;
        return NULL;
    }
    for (unsigned i = 0; i < srv->nlt; i++)
        srv->lt[i].srv = srv;
    srv->lt[0].loop = loop;
    /* Adaptive: the sections are short, so a waiter spins a little before
     * it sleeps (a futex sleep and wake costs more than most sections). */
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_ADAPTIVE_NP);
    pthread_mutex_init(&srv->mu, &ma);
    pthread_mutexattr_destroy(&ma);
    pthread_mutex_init(&srv->wake_mu, NULL);
    pthread_mutex_init(&srv->run_mu, NULL);
    srv->lock_fd = -1;
    srv->rl_refused.what = "refused connections (--max-conns)";
    srv->rl_ceiling.what = "failures to raise the txid ceiling";
    srv->rl_accept.what = "accept failures";
    srv->rl_auth.what = "authentication failures";
    srv->rl_auth_timeout.what = "authentication timeouts";
    freelist_init(&srv->log_writes, sizeof(struct log_write), cfg->max_conns);
    srv->lim.value_bytes_max = cfg->value_bytes_max;
    srv->lim.get_line_bytes_max = cfg->get_line_bytes_max;
    srv->lim.get_keys_max = cfg->get_keys_max;
    srv->next_cas = 1;
    srv->cluster = cfg->nreplicas > 0;
    srv->rng = util_mono_ns() ^ ((uint64_t)getpid() << 32);
    srv->log_base = log_get_level();
    srv->started_mono_ns = util_mono_ns();
    sc.max_bytes = cfg->max_memory_bytes;
    sc.value_bytes_max = cfg->value_bytes_max;
    sc.seed = cfg->hash_seed;
    sc.replicated = srv->cluster;
    if (sc.seed == 0 && getrandom(&sc.seed, sizeof(sc.seed), 0) != sizeof(sc.seed))
        sc.seed = util_mono_ns();
    srv->store = store_new(&sc);
    srv->udp_rbuf = malloc(LIMIT_UDP_REQUEST_BYTES_MAX);
    if (srv->store == NULL || srv->udp_rbuf == NULL) {
        store_free(srv->store);
        free(srv->udp_rbuf);
        pthread_mutex_destroy(&srv->mu);
        pthread_mutex_destroy(&srv->wake_mu);
        pthread_mutex_destroy(&srv->run_mu);
        free(srv->lt);
        free(srv);
        *err = -ENOMEM;
        return NULL;
    }
    return srv;
}

/* The address serve listens on: host's first. */
static int resolve(const char *host, int port, struct sockaddr_storage *ss)
{
    struct addrinfo *res;
    const char *why;
    int r;

    if ((r = util_resolve(host, (unsigned)port, 0, 1, &res, &why)) < 0)
        return r;
    memset(ss, 0, sizeof(*ss));
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    return 0;
}

/* Takes the data directory's lock (datadir.h), saying who holds it. */
static int lock_dir(struct server *srv, char *err, size_t cap)
{
    const char *dir = srv->cfg.data_dir;
    pid_t holder;
    int r;

    r = datadir_lock(dir, &holder, &srv->dir_created);
    if (r == -EWOULDBLOCK) {
        if (holder > 0)
            return util_errf(err, cap, r,
                             "data directory %s is in use by another serve (pid %d); "
                             "stop it, or give this one its own --data-dir",
                             dir, (int)holder);
        return util_errf(err, cap, r, "data directory %s is locked by another process",
                         dir);
    }
    if (r < 0)
        return util_errf(err, cap, r, "cannot lock data directory %s: %s", dir,
                         strerror(-r));
    srv->lock_fd = r;
    return 0;
}

/* Reads what the last run left in RUN (datadir.h) into prev and srv:
 * whether its log may have lost records (*lost_now), which replica owns
 * the directory, the fence's state. */
static int read_run(struct server *srv, struct datadir_run *prev, bool *lost_now,
                    char *err, size_t cap)
{
    const char *dir = srv->cfg.data_dir;
    char boot[40];
    int r;

    /* Whether the last run can have lost records it reported durable:
     * asked before recovery, which makes durable what it replays. */
    datadir_boot_id(boot, sizeof(boot));
    if ((r = datadir_run_read(dir, prev)) < 0)
        return util_errf(
            err, cap, r,
            "%s/RUN, which tells whether the last run may have lost records, "
            "cannot be read (%s): refusing to start on a data directory whose "
            "state is unknown. If it was edited by hand, restore its fields "
            "(DESIGN.md, \"A log that lost records\")",
            dir, strerror(-r));
    if (srv->cluster && prev->has_id && prev->id != srv->cfg.id)
        return util_errf(err, cap, -EINVAL,
                         "data directory %s belongs to replica %" PRIu32
                         ", not to --id %" PRIu32 ": give each replica its own directory",
                         dir, prev->id, srv->cfg.id);
    srv->lost_before = prev->lost_before;
    srv->hist_mark = prev->fence_mark;
    srv->run_fence_mark = prev->fence_mark;
    srv->run_behind = prev->behind;
    srv->run_behind_by = prev->behind_by;
    srv->run_behind_seen = prev->behind_seen;
    memcpy(srv->prev_seen, prev->seen, sizeof(srv->prev_seen));
    memcpy(srv->run_seen, prev->seen, sizeof(srv->run_seen));
    *lost_now = datadir_run_lost(prev, boot);
    srv->history_lost = *lost_now || prev->lost_before != 0;
    return 0;
}

/* Locks the data directory, recovers the store, opens the log. */
static int open_data(struct server *srv, char *err, size_t cap)
{
    const char *dir = srv->cfg.data_dir;
    struct wal_config wc = {
        .dir = dir,
        .fsync_mode = srv->cfg.fsync_mode,
        .fsync_interval_ms = srv->cfg.fsync_interval_ms,
        .segment_bytes = srv->cfg.wal_segment_bytes,
        .prealloc_bytes = srv->cfg.wal_prealloc_bytes,
        .io = srv->cfg.wal_io,
        .on_batch = srv->threaded ? srv_on_wal_batch : NULL,
        .on_batch_arg = srv,
    };
    struct datadir_run prev;
    bool lost_now = false;
    int r;

    if ((r = lock_dir(srv, err, cap)) < 0 ||
        (r = read_run(srv, &prev, &lost_now, err, cap)) < 0)
        return r;

    srv_refresh_now(srv);
    struct recover_ledger ledger = {.self = srv->cfg.id,
                                    .decided_max = LIMIT_TPC_REMEMBERED};
    struct recover_opts ro = {.unsynced_tail = lost_now};
    r = recover_cluster(dir, srv->store, srv->now_ms, srv->cluster ? &ledger : NULL, &ro,
                        &srv->rec, err, cap);
    if (r < 0) {
        recover_ledger_free(&ledger);
        return r;
    }
    srv->next_cas = srv->rec.next_cas;
    srv->applied_lsn = srv->rec.next_lsn - 1;
    /* The first snapshot waits until the log has grown past what replay
     * just had to read. */
    srv->snap_last_lsn = srv->rec.snap_lsn;

    struct store_stats ss;
    store_get_stats(srv->store, &ss);
    log_info(MOD,
             "recovered %s in %llu ms: snapshot at %llu (%llu items), %llu log records "
             "replayed; %llu items, %llu bytes",
             dir, (unsigned long long)srv->rec.elapsed_ms,
             (unsigned long long)srv->rec.snap_lsn,
             (unsigned long long)srv->rec.snap_items,
             (unsigned long long)srv->rec.records, (unsigned long long)ss.curr_items,
             (unsigned long long)ss.bytes);
    if (ss.bytes > srv->cfg.max_memory_bytes)
        log_warn(MOD,
                 "the recovered data (%llu bytes) exceeds --max-memory: writes that add "
                 "data will fail until some is deleted",
                 (unsigned long long)ss.bytes);

    r = wal_open(&srv->wal, srv->loop, &wc, srv->rec.next_lsn);
    if (r < 0) {
        recover_ledger_free(&ledger);
        return util_errf(err, cap, r, "cannot open the write-ahead log in %s: %s", dir,
                         strerror(-r));
    }
    uint64_t seq = util_now_unix_us(), held = srv->rec.next_cas >> 8;
    if (held > seq)
        seq = held;
    if (lost_now) {
        /* The lost records' txids: below the ceiling the last run kept
         * (every txid it logged was). A directory without one (a single
         * server's until now) falls back on the clock and the log: every
         * id this log holds and every one handed out by this host's clock,
         * with room for a peer's clock ahead and transactions arriving. */
        uint64_t bound = prev.txid_ceiling;
        if (bound == 0)
            bound = (seq + 60u * 1000000u + (uint64_t)srv->cfg.max_clock_skew_ms * 1000u)
                    << 8;
        if (bound > srv->lost_before)
            srv->lost_before = bound;
    }
    if (srv->cluster) {
        /* This run's txids start above what any earlier run logged. */
        srv->txid_ceiling = srv_ceiling_at(seq);
        if (prev.txid_ceiling > srv->txid_ceiling)
            srv->txid_ceiling = prev.txid_ceiling;
        if (srv->lost_before > srv->txid_ceiling)
            srv->txid_ceiling = srv_ceiling_at(srv->lost_before >> 8);
    }
    if ((r = srv_write_run(srv, false)) < 0) {
        recover_ledger_free(&ledger);
        return util_errf(err, cap, r, "cannot write %s/RUN: %s", dir, strerror(-r));
    }
    srv->run_written = true;
    if (lost_now && !srv->cluster)
        log_warn(MOD,
                 "the last run in %s used --fsync none and ended without a clean stop "
                 "before the machine restarted: its newest acknowledged writes may be "
                 "lost (--fsync none does not survive a power cut)",
                 dir);
    if (srv->cluster)
        r = srv_cluster_open(srv, &ledger, err, cap);
    recover_ledger_free(&ledger);
    return r;
}

int server_start(struct server *srv, char *err, size_t errcap)
{
    struct sockaddr_storage ss;
    char name[INET6_ADDRSTRLEN];
    int r, len;

    err[0] = '\0';
    if ((r = open_data(srv, err, errcap)) < 0)
        goto fail_quiet;
    if ((r = srv_lt_start(srv, err, errcap)) < 0)
        goto fail_quiet;
    r = resolve(srv->cfg.host, srv->cfg.port, &ss);
    if (r < 0) {
        util_errf(err, errcap, r, "cannot resolve %s: %s", srv->cfg.host, strerror(-r));
        goto fail;
    }
    srv_addr_name(&ss, name, sizeof(name));
    srv->port = srv->cfg.port;

    if (srv->cfg.tcp) {
        uv_tcp_init(srv->loop, &srv->tcp);
        srv->tcp.data = srv;
        srv->tcp_open = true;
        if ((r = uv_tcp_bind(&srv->tcp, (struct sockaddr *)&ss, 0)) < 0 ||
            (r = uv_listen((uv_stream_t *)&srv->tcp, 1024, srv_on_connection)) < 0)
            goto fail_listen;
        len = sizeof(ss);
        uv_tcp_getsockname(&srv->tcp, (struct sockaddr *)&ss, &len);
        srv->port = srv_addr_port(&ss);
    }
    if (srv->cfg.udp) {
        /* With port 0, UDP takes the port TCP got, so one number serves both. */
        if (ss.ss_family == AF_INET6)
            ((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)srv->port);
        else
            ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)srv->port);
        uv_udp_init(srv->loop, &srv->udp);
        srv->udp.data = srv;
        srv->udp_open = true;
        if ((r = uv_udp_bind(&srv->udp, (struct sockaddr *)&ss, 0)) < 0 ||
            (r = uv_udp_recv_start(&srv->udp, srv_udp_alloc, srv_udp_on_recv)) < 0)
            goto fail_listen;
        len = sizeof(ss);
        uv_udp_getsockname(&srv->udp, (struct sockaddr *)&ss, &len);
        srv->port = srv_addr_port(&ss);
    }
    if (srv->cluster && (r = srv_cluster_listen(srv, err, errcap)) < 0)
        goto fail_quiet;
    uv_prepare_init(srv->loop, &srv->clock_prep);
    uv_prepare_start(&srv->clock_prep, srv_clock_on_prepare);
    uv_unref((uv_handle_t *)&srv->clock_prep);
    uv_check_init(srv->loop, &srv->clock_check);
    uv_check_start(&srv->clock_check, srv_clock_on_check);
    uv_unref((uv_handle_t *)&srv->clock_check);
    srv->clock_open = true;
    srv_clock_stale(); /* recovery may have taken a while */
    uv_timer_init(srv->loop, &srv->timer);
    srv->timer.data = srv;
    srv->timer_open = true;
    uv_timer_start(&srv->timer, on_housekeeping, TIMER_INTERVAL_MS, TIMER_INTERVAL_MS);
    /* The timer also polls, in case a SIGCHLD is coalesced or missed. */
    uv_signal_init(srv->loop, &srv->sigchld);
    srv->sigchld.data = srv;
    srv->sigchld_open = true;
    uv_signal_start(&srv->sigchld, srv_on_sigchld, SIGCHLD);
    log_info(
        MOD,
        "listening on %s%s%s %s port %d (max %zu connections, %llu MiB, values up to "
        "%zu bytes; data in %s, fsync %s)",
        srv->cfg.tcp ? "tcp" : "", srv->cfg.tcp && srv->cfg.udp ? "+" : "",
        srv->cfg.udp ? "udp" : "", name, srv->port, srv->cfg.max_conns,
        (unsigned long long)(srv->cfg.max_memory_bytes >> 20), srv->cfg.value_bytes_max,
        srv->cfg.data_dir, wal_fsync_mode_name(srv->cfg.fsync_mode));
    if (srv->cluster)
        log_info(MOD, "replica %u of %zu, peer port %d, config epoch %llu", srv->cfg.id,
                 srv->cfg.nreplicas, server_peer_port(srv),
                 (unsigned long long)srv->cfg.epoch);
    return 0;
fail_listen:
    util_errf(err, errcap, r, "cannot listen on %s port %d: %s", srv->cfg.host,
              srv->cfg.port, uv_strerror(r));
fail:
fail_quiet:
    if (srv->threaded)
        pthread_mutex_lock(&srv->mu); /* server_stop runs as if from the loop */
    server_stop(srv);
    if (srv->threaded)
        pthread_mutex_unlock(&srv->mu);
    /* A data directory this start created and never got to use goes. */
    if (srv->dir_created)
        datadir_remove_new(srv->cfg.data_dir);
    return r;
}

int server_port(const struct server *srv)
{
    return srv->port;
}

void server_stop(struct server *srv)
{
    if (srv->stopping)
        return;
    srv->stopping = true;
    if (srv->tcp_open)
        uv_close((uv_handle_t *)&srv->tcp, NULL);
    if (srv->udp_open)
        uv_close((uv_handle_t *)&srv->udp, NULL);
    if (srv->timer_open)
        uv_close((uv_handle_t *)&srv->timer, NULL);
    if (srv->sigchld_open)
        uv_close((uv_handle_t *)&srv->sigchld, NULL);
    if (srv->tick_open)
        uv_close((uv_handle_t *)&srv->tick, NULL);
    if (srv->clock_open) {
        uv_close((uv_handle_t *)&srv->clock_prep, NULL);
        uv_close((uv_handle_t *)&srv->clock_check, NULL);
        srv->clock_open = false;
    }
    srv->tcp_open = srv->udp_open = srv->timer_open = srv->sigchld_open = false;
    srv->tick_open = false;
    if (srv->snap_pid) {
        /* A half-written snapshot is only a .tmp file: recovery removes it. */
        kill(srv->snap_pid, SIGKILL);
        waitpid(srv->snap_pid, NULL, 0);
        srv->snap_pid = 0;
        srv_snapshot_answer(&srv->snap_cur, "SERVER_ERROR shutting down\r\n");
    }
    srv_snapshot_answer(&srv->snap_next, "SERVER_ERROR shutting down\r\n");
    /* Transactions in flight: their clients are going away, prepared ones
     * stay in the log for recovery. Nothing re-enters tpc after this. */
    for (struct conn *c = srv->conns; c; c = c->next) {
        struct wdone **link = &c->done_head, *last = NULL;
        while (*link) {
            struct wdone *d = *link;
            if (d->kind != WDONE_TXN) {
                last = d;
                link = &d->next;
                continue;
            }
            *link = d->next; /* an outcome posted to c's thread, not run yet */
            free(d);
            c->cpending = NULL;
        }
        c->done_tail = last;
        if (c->cpending) {
            c->cpending->c = NULL;
            c->cpending = NULL;
        }
    }
    if (srv->tpc) {
        tpc_release_all(srv->tpc);
        tpc_free(srv->tpc);
        srv->tpc = NULL;
        srv->wake.head = srv->wake.tail = NULL;
        for (struct txn_write *q = srv->done_head, *next; q; q = next) {
            next = q->next;
            free(q);
        }
        srv->done_head = srv->done_tail = NULL;
    }
    if (srv->peers) {
        peer_net_close(srv->peers);
        srv->peers = NULL;
    }
    /* Connection threads close their connections and exit; what they leave
     * is this thread's to finish. */
    if (srv->threaded)
        srv_lt_stop_all(srv);
    for (struct conn *c = srv->conns, *next; c; c = next) {
        next = c->next;
        /* One whose client left while its transaction was in flight waited
         * only for that outcome, dropped above: nothing will free it but
         * this. */
        if (c->handle_closed && c->npending == 0 && c->cpending == NULL &&
            c->done_head == NULL)
            srv_conn_free(c);
        else
            srv_conn_close(c, NULL);
    }
    /* Pending writes finish (durable or not) before the log closes; their
     * connections are gone, so nobody is told, and they free themselves
     * (their outcomes run here). */
    if (srv->wal) {
        int e = wal_close(srv->wal);
        srv->wal = NULL;
        /* Everything is on disk: the next start need not doubt the log. */
        pthread_mutex_lock(&srv->run_mu);
        memcpy(srv->run_seen, srv->fence.seen, sizeof(srv->run_seen));
        pthread_mutex_unlock(&srv->run_mu);
        if (e == 0 && srv->run_written && (e = srv_write_run(srv, true)) < 0)
            log_warn(MOD, "cannot record the clean stop in %s/RUN: %s", srv->cfg.data_dir,
                     strerror(-e));
    }
    srv_lt_close_main(srv); /* after the log: its last outcomes run here */
}

void server_free(struct server *srv)
{
    if (srv == NULL)
        return;
    assert(srv->conns == NULL);
    store_free(srv->store);
    buf_free(&srv->scratch);
    buf_free(&srv->ops);
    freelist_clear(&srv->log_writes);
    free(srv->udp_rbuf);
    if (srv->lock_fd >= 0)
        close(srv->lock_fd);
    for (unsigned i = 0; i < srv->nlt; i++) {
        free(srv->lt[i].fds);
        free(srv->lt[i].ready);
        free(srv->lt[i].ready_conn);
    }
    free(srv->lt);
    pthread_mutex_destroy(&srv->mu);
    pthread_mutex_destroy(&srv->run_mu);
    pthread_mutex_destroy(&srv->wake_mu);
    free(srv);
}
