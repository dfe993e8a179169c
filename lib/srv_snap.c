/*
 * srv_snap.c - snapshots: when to take one, the forked child that writes
 * the store's copy-on-write image, and what the parent does when it exits
 * (remove the log segments and older snapshots it covers).
 */

#include "srv.h"

/* Writes the transactions still open into a snapshot (runs in its child). */
static int snap_open_txn(void *arg, const struct tpc_txn *t, bool prepared)
{
    struct snap_writer *sw = arg;
    struct buf b = {0};
    int r = txn_encode_record(&b, t);

    if (r == 0)
        r = snap_write_record(sw, prepared ? WAL_REC_PREPARE : WAL_REC_COMMIT, b.data,
                              b.len);
    buf_free(&b);
    return r;
}

static int snap_extra(void *arg, struct snap_writer *sw)
{
    struct server *srv = arg;

    return srv->tpc ? tpc_for_each_open(srv->tpc, snap_open_txn, sw) : 0;
}

/* Closes every descriptor from 3 up but keep (a forked child's). */
static void close_except(int keep)
{
    int r = 0;

    if (keep > 3)
        r = close_range(3, (unsigned)keep - 1, 0);
    if (r == 0)
        r = close_range(keep < 3 ? 3u : (unsigned)keep + 1, ~0u, 0);
    if (r < 0) { /* a kernel before 5.9 */
        long max = sysconf(_SC_OPEN_MAX);
        for (long fd = 3; fd < (max > 0 ? max : 65536); fd++)
            if (fd != keep)
                close((int)fd);
    }
}

int srv_start_snapshot(struct server *srv)
{
    struct snap_header h = {
        .lsn = srv->applied_lsn,
        .next_cas = srv->next_cas,
        .flush_at_ms = store_flush_at(srv->store),
    };
    pid_t pid;

    if (srv->snap_pid)
        return -EBUSY;
    if (wal_error(srv->wal))
        return wal_error(srv->wal);
    if (srv->cluster) {
        /* Every record appended is in the image or in the open
         * transactions the snapshot carries, except a coordinator's COMMIT
         * not yet durable (its effect is applied then): stop before it. */
        struct wal_stats ws;
        wal_get_stats(srv->wal, &ws);
        uint64_t unapplied = tpc_unapplied_lsn(srv->tpc);
        h.lsn = ws.next_lsn - 1;
        if (unapplied && unapplied - 1 < h.lsn)
            h.lsn = unapplied - 1;
        /* Ids this replica handed out, and the floor recovery found in the
         * log this snapshot replaces, must not come back once that log is
         * gone - even ids that left no item (a delete, an abort). */
        h.next_cas = store_max_cas(srv->store) + 1;
        if (tpc_txid_floor(srv->tpc) > h.next_cas)
            h.next_cas = tpc_txid_floor(srv->tpc);
        /* And above every txid logged so far, peers' included (a PREPARE
         * voted on and aborted leaves no item): the fence's mark at the
         * next start counts on it once the log is gone. */
        if (srv->txid_ceiling > h.next_cas)
            h.next_cas = srv->txid_ceiling;
    }
    srv_refresh_now(srv);
    pid_t parent = getpid();
    pid = fork();
    if (pid < 0) {
        log_error(MOD, "snapshot: fork: %s", strerror(errno));
        return -errno;
    }
    if (pid == 0) {
        /* The child: a frozen copy of the store. Write it and leave without
         * running atexit handlers or touching the parent's loop. It dies
         * with its parent (a snapshot nobody waits for is useless, and an
         * orphan would hold what it inherited), and it keeps no descriptor
         * but the log's: not the data directory's lock (a restart after a
         * kill -9 would be refused until it finished), not the listening
         * sockets (clients would queue on them unanswered). */
        uint64_t items = 0;
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
            _exit(1);
        close_except(log_get_fd());
        int r = snap_write_store(srv->cfg.data_dir, srv->store, &h, &items,
                                 srv->cluster ? snap_extra : NULL, srv);
        if (r < 0)
            log_error(MOD, "snapshot %llu: %s", (unsigned long long)h.lsn, strerror(-r));
        _exit(r < 0 ? 1 : 0);
    }
    srv->snap_pid = pid;
    srv->snap_lsn = h.lsn;
    srv->snap_started_ns = util_mono_ns();
    srv->snap_appended_at = srv->appended_bytes;
    log_info(MOD, "snapshot of log position %llu started (pid %d)",
             (unsigned long long)h.lsn, (int)pid);
    return 0;
}

int server_snapshot(struct server *srv)
{
    return srv_start_snapshot(srv);
}

/* The newest snapshot older than the one at lsn (0: none). */
static uint64_t previous_snapshot(struct server *srv, uint64_t lsn)
{
    struct datadir_file *f;
    long n = datadir_list(srv->cfg.data_dir, "snap-", ".snap", &f);
    uint64_t prev = 0;

    for (long i = 0; i < n; i++)
        if (f[i].seq < lsn && f[i].seq > prev)
            prev = f[i].seq;
    if (n > 0)
        free(f);
    return prev;
}

/* Removes snapshots older than the one at lsn. */
static void remove_old_snapshots(struct server *srv, uint64_t lsn)
{
    struct datadir_file *f;
    long n = datadir_list(srv->cfg.data_dir, "snap-", ".snap", &f);
    char path[4200];

    for (long i = 0; i < n; i++) {
        if (f[i].seq >= lsn)
            continue;
        snprintf(path, sizeof(path), "%s/%s", srv->cfg.data_dir, f[i].name);
        if (unlink(path) < 0)
            log_warn(MOD, "cannot remove %s: %s", path, strerror(errno));
    }
    if (n > 0)
        free(f);
}

/* Answers every connection on wl with line, and wakes them. Another
 * thread's connection gets the line with its wake-up (conn_run_posted). */
void srv_snapshot_answer(struct waitlist *wl, const char *line)
{
    struct conn *c;

    /* Each connection stays on a wait list (srv->answered) until its own
     * thread has put the line in its replies: nothing may answer the
     * requests after it first. */
    while ((c = srv_waitlist_pop(wl)) != NULL) {
        free(c->post_line);
        c->post_line = strdup(line);
        if (c->post_line == NULL) {
            srv_conn_resume(c); /* out of memory: the wake-up goes alone */
            continue;
        }
        srv_waitlist_push(&c->srv->answered, c);
        srv_conn_post(c, POST_RUN);
    }
}

/* Polled by the timer: has the snapshot child finished? */
void srv_snapshot_check(struct server *srv)
{
    int status;
    pid_t r;

    if (srv->snap_pid == 0)
        return;
    r = waitpid(srv->snap_pid, &status, WNOHANG);
    if (r == 0 || (r < 0 && errno == EINTR))
        return;
    srv->snap_pid = 0;
    uint64_t ms = (util_mono_ns() - srv->snap_started_ns) / 1000000u;
    if (r > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        char path[4200];
        struct stat sb;
        datadir_path(path, sizeof(path), srv->cfg.data_dir, "snap-", srv->snap_lsn,
                     ".snap");
        srv->snap_last_bytes = stat(path, &sb) == 0 ? (uint64_t)sb.st_size : 0;
        srv->snap_last_ms = ms;
        srv->snap_last_lsn = srv->snap_lsn;
        srv->snapshots++;
        /* The previous snapshot stays, and the log back to it, so a new
         * one that does not read back (a damaged sector) is not the only
         * copy: recovery falls back to the previous and replays from it.
         * Two snapshots' worth of disk, at most. */
        uint64_t keep = previous_snapshot(srv, srv->snap_lsn);
        int removed = keep ? wal_remove_covered(srv->wal, keep) : 0;
        if (keep)
            remove_old_snapshots(srv, keep);
        log_info(MOD,
                 "snapshot %s done: %llu bytes in %llu ms; %d log segment(s) removed",
                 path, (unsigned long long)srv->snap_last_bytes, (unsigned long long)ms,
                 removed > 0 ? removed : 0);
        srv_snapshot_answer(&srv->snap_cur, "OK\r\n");
    } else {
        srv->snapshot_failures++;
        log_error(MOD, "snapshot of log position %llu failed (%s %d)",
                  (unsigned long long)srv->snap_lsn,
                  r > 0 && WIFSIGNALED(status) ? "signal" : "exit status",
                  r > 0 ? (WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status))
                        : -1);
        srv_snapshot_answer(&srv->snap_cur,
                            "SERVER_ERROR snapshot failed (see the server log)\r\n");
    }
    /* Commands that arrived during it want a newer one. */
    if (srv->snap_next.head) {
        srv->snap_cur = srv->snap_next;
        for (struct conn *c = srv->snap_cur.head; c; c = c->wait_next)
            c->waiting = &srv->snap_cur;
        srv->snap_next.head = srv->snap_next.tail = NULL;
        int e = srv_start_snapshot(srv);
        if (e < 0) {
            char line[128];
            snprintf(line, sizeof(line), "SERVER_ERROR cannot snapshot: %s\r\n",
                     strerror(-e));
            srv_snapshot_answer(&srv->snap_cur, line);
        }
    }
}

void srv_on_sigchld(uv_signal_t *h, int signum)
{
    (void)signum;
    srv_snapshot_check(h->data);
}

/* Starts a snapshot when the log has grown enough since the last one. */
void srv_snapshot_maybe(struct server *srv)
{
    uint64_t grown = srv->appended_bytes - srv->snap_appended_at;

    if (srv->snap_pid || srv->stopping || grown < srv->cfg.snapshot_bytes ||
        grown < srv->snap_last_bytes)
        return;
    srv_start_snapshot(srv);
}
