/*
 * srv_loop.c - the event loops: the connection threads, their inboxes (what
 * other threads post to a connection), the server lock and the log records
 * a loop turn hands to the writer.
 */

#include "srv.h"

static void lt_on_sweep(uv_timer_t *t);

static void lt_run_inbox(struct lthread *lt);

/*
 * The end of a connection thread's loop turn (uv_check, after its I/O
 * callbacks; or its idle handle, when it posted to itself from a timer):
 * run the reads of the turn, what was posted to its connections, hand its
 * log records to the writer, wake the main loop for its frames. Once per
 * turn, however many requests the turn ran.
 */
static void lt_end_turn(struct lthread *lt)
{
    struct server *srv = lt->srv;
    bool staged, kick;

    if (!srv_tl_wal_staged && !srv_tl_kick_main && lt->nready == 0 && !lt->self_posted)
        return;
    srv_lock(srv);
    if (lt->nready > 0)
        srv_lt_run_ready(lt);
    lt->self_posted = false;
    lt_run_inbox(lt);
    staged = srv_tl_wal_staged;
    kick = srv_tl_kick_main;
    srv_tl_wal_staged = srv_tl_kick_main = false;
    /* Under --fsync none this writes the batch and runs its callbacks:
     * our connections' replies are queued for srv_lt_flush, and their next
     * writes staged anew (srv_tl_wal_staged again). */
    if (staged && srv->wal)
        wal_hand_over(srv->wal);
    /* What those callbacks posted to our connections. */
    lt->self_posted = false;
    lt_run_inbox(lt);
    if ((kick || srv_tl_kick_main) && srv->lt[0].async_open)
        uv_async_send(&srv->lt[0].async);
    srv_tl_kick_main = false;
    /* Records staged meanwhile go at the next turn: make it come now. */
    if (srv_tl_wal_staged && lt->async_open)
        uv_async_send(&lt->async);
    srv_unlock(srv);
    srv_lt_flush(lt);
}

static void lt_on_check(uv_check_t *h)
{
    lt_end_turn(h->data);
}

/* The main loop's turn is over: run what was posted to its connections
 * (UDP, and TCP without --threads; the lock is held while it runs). */
static void main_end_turn(struct lthread *lt)
{
    struct server *srv = lt->srv;

    lt->self_posted = false;
    lt_run_inbox(lt);
    /* Records this turn appended (UDP writes; votes and commits on peer
     * messages) go to the writer now, not when the loop next turns: with
     * connection threads, server_run polls first, until the next timer.
     * Their callbacks (--fsync none writes inline) may run requests that
     * append more; a few rounds here, then the loop comes back for them. */
    for (int i = 0; i < 4 && srv_tl_wal_staged && srv->wal; i++) {
        srv_tl_wal_staged = false;
        wal_hand_over(srv->wal);
        lt_run_inbox(lt);
    }
    if (srv_tl_wal_staged && lt->idle_open)
        uv_idle_start(&lt->idle, lt->on_idle);
}

static void main_on_check(uv_check_t *h)
{
    main_end_turn(h->data);
}

/* A loop posted to its own connection from a timer or the like: run it
 * before the loop sleeps (srv_conn_post starts this). */
static void lt_on_idle(uv_idle_t *h)
{
    struct lthread *lt = h->data;

    uv_idle_stop(h);
    lt->self_posted = true;
    if (lt == &lt->srv->lt[0])
        main_end_turn(lt);
    else
        lt_end_turn(lt);
}

/* Takes the sockets handed to lt (lt's thread, lock held). */
static void lt_adopt(struct lthread *lt)
{
    struct server *srv = lt->srv;

    for (size_t i = 0; i < lt->nfds; i++) {
        struct conn *c = calloc(1, sizeof(*c));
        if (c == NULL) {
            close(lt->fds[i]);
            srv->nconns--;
            continue;
        }
        c->srv = srv;
        c->lt = lt;
        uv_tcp_init(lt->loop, &c->tcp);
        if (uv_tcp_open(&c->tcp, lt->fds[i]) < 0) {
            close(lt->fds[i]);
            srv->nconns--;
            uv_close((uv_handle_t *)&c->tcp, srv_reject_on_close);
            continue;
        }
        srv_conn_start(c);
    }
    lt->nfds = 0;
}

static void lt_run_inbox(struct lthread *lt)
{
    struct conn *c;

    while ((c = lt->inbox_head) != NULL) {
        lt->inbox_head = c->post_next;
        if (lt->inbox_head == NULL)
            lt->inbox_tail = NULL;
        c->posted = false;
        srv_conn_run_posted(c);
    }
}

/* The log writer finished a batch (its thread): wake the connection
 * threads, the first of which runs the callbacks, so replies need not wait
 * for the main loop to wake, run them and post them. */
void srv_on_wal_batch(void *arg)
{
    struct server *srv = arg;

    pthread_mutex_lock(&srv->wake_mu);
    for (unsigned i = 1; i < srv->nlt; i++)
        if (srv->lt[i].async_live)
            uv_async_send(&srv->lt[i].async);
    pthread_mutex_unlock(&srv->wake_mu);
}

static void lt_async_dead(struct lthread *lt)
{
    pthread_mutex_lock(&lt->srv->wake_mu);
    lt->async_live = false;
    pthread_mutex_unlock(&lt->srv->wake_mu);
}

/* Closes the sockets handed to lt that it has not adopted (it stops). */
static void lt_drop_fds(struct lthread *lt)
{
    for (size_t i = 0; i < lt->nfds; i++) {
        close(lt->fds[i]);
        lt->srv->nconns--;
    }
    lt->nfds = 0;
}

/* A connection thread stops: close its connections and its wake-up
 * handle, so its loop runs out (lock held). */
static void lt_close(struct lthread *lt)
{
    struct server *srv = lt->srv;

    for (struct conn *c = srv->conns; c; c = c->next)
        if (c->lt == lt && !c->closing)
            srv_conn_close(c, NULL);
    lt_drop_fds(lt);
    if (lt->async_open) {
        lt->async_open = false;
        lt_async_dead(lt);
        uv_close((uv_handle_t *)&lt->async, NULL);
    }
    if (lt->check_open) {
        lt->check_open = lt->idle_open = false;
        uv_close((uv_handle_t *)&lt->check, NULL);
        uv_close((uv_handle_t *)&lt->idle, NULL);
    }
    if (lt->sweep_open) {
        lt->sweep_open = false;
        uv_close((uv_handle_t *)&lt->sweep, NULL);
    }
}

static void lt_on_async(uv_async_t *h)
{
    struct lthread *lt = h->data;
    struct server *srv = lt->srv;
    bool main = lt == &srv->lt[0]; /* the main loop runs with the lock held */

    if (!main)
        srv_lock(srv);
    if (!main && srv->wal)
        wal_deliver(srv->wal); /* srv_on_wal_batch; runs nothing otherwise */
    lt_adopt(lt);
    lt_run_inbox(lt);
    if (lt->stop)
        lt_close(lt);
    if (!main) {
        srv_unlock(srv);
        srv_lt_flush(lt);
    }
}

static void *lt_main(void *arg)
{
    struct lthread *lt = arg;

    uv_run(lt->loop, UV_RUN_DEFAULT);
    return NULL;
}

int srv_lt_start(struct server *srv, char *err, size_t cap)
{
    struct lthread *main = &srv->lt[0];
    int r;

    main->thread = pthread_self();
    /* The main loop runs what is posted to its connections at the end of
     * each turn too. */
    uv_check_init(srv->loop, &main->check);
    main->check.data = main;
    uv_check_start(&main->check, main_on_check);
    uv_unref((uv_handle_t *)&main->check);
    uv_idle_init(srv->loop, &main->idle);
    main->idle.data = main;
    main->on_idle = lt_on_idle;
    main->check_open = main->idle_open = true;
    if (!srv->threaded)
        return 0;
    if ((r = uv_async_init(srv->loop, &main->async, lt_on_async)) < 0)
        return util_errf(err, cap, r, "cannot create the main loop's wake-up: %s",
                         uv_strerror(r));
    main->async.data = main;
    main->async_open = true;
    for (unsigned i = 1; i < srv->nlt; i++) {
        struct lthread *lt = &srv->lt[i];
        if ((r = uv_loop_init(&lt->own)) < 0)
            return util_errf(err, cap, r, "cannot create an event loop: %s",
                             uv_strerror(r));
        lt->loop = &lt->own;
        lt->ready = calloc(LT_READY_MAX, sizeof(*lt->ready));
        lt->ready_conn = calloc(LT_READY_MAX, sizeof(*lt->ready_conn));
        if (lt->ready == NULL || lt->ready_conn == NULL) {
            uv_loop_close(lt->loop);
            lt->loop = NULL;
            return util_errf(err, cap, -ENOMEM, "cannot create an event loop: %s",
                             strerror(ENOMEM));
        }
        if ((r = uv_async_init(lt->loop, &lt->async, lt_on_async)) < 0) {
            uv_loop_close(lt->loop);
            lt->loop = NULL;
            return util_errf(err, cap, r, "cannot create an event loop: %s",
                             uv_strerror(r));
        }
        lt->async.data = lt;
        lt->async_open = true;
        pthread_mutex_lock(&srv->wake_mu);
        lt->async_live = true;
        pthread_mutex_unlock(&srv->wake_mu);
        uv_check_init(lt->loop, &lt->check);
        lt->check.data = lt;
        uv_check_start(&lt->check, lt_on_check);
        uv_unref((uv_handle_t *)&lt->check);
        uv_idle_init(lt->loop, &lt->idle);
        lt->idle.data = lt;
        lt->on_idle = lt_on_idle;
        lt->check_open = lt->idle_open = true;
        if (srv_sweep_wanted(srv)) {
            /* Each thread checks its own connections' time limits: their
             * output queues and handles are its alone. */
            uv_timer_init(lt->loop, &lt->sweep);
            lt->sweep.data = lt;
            uv_timer_start(&lt->sweep, lt_on_sweep, LIMIT_CONN_SWEEP_MS,
                           LIMIT_CONN_SWEEP_MS);
            uv_unref((uv_handle_t *)&lt->sweep);
            lt->sweep_open = true;
        }
        if ((r = pthread_create(&lt->thread, NULL, lt_main, lt)) != 0) {
            lt_async_dead(lt);
            uv_close((uv_handle_t *)&lt->async, NULL);
            uv_close((uv_handle_t *)&lt->check, NULL);
            uv_close((uv_handle_t *)&lt->idle, NULL);
            lt->check_open = lt->idle_open = false;
            if (lt->sweep_open)
                uv_close((uv_handle_t *)&lt->sweep, NULL);
            lt->sweep_open = false;
            lt->async_open = false;
            uv_run(lt->loop, UV_RUN_DEFAULT);
            uv_loop_close(lt->loop);
            lt->loop = NULL;
            return util_errf(err, cap, -r, "cannot start a connection thread: %s",
                             strerror(r));
        }
        lt->started = true;
    }
    return 0;
}

/* Stops the connection threads and waits for them (main thread, lock
 * held: let go meanwhile). What they leave posted runs here. */
void srv_lt_stop_all(struct server *srv)
{
    for (unsigned i = 1; i < srv->nlt; i++) {
        struct lthread *lt = &srv->lt[i];
        if (lt->started && lt->async_open) {
            lt->stop = true;
            uv_async_send(&lt->async);
        }
    }
    pthread_mutex_unlock(&srv->mu);
    for (unsigned i = 1; i < srv->nlt; i++) {
        struct lthread *lt = &srv->lt[i];
        if (lt->started) {
            pthread_join(lt->thread, NULL);
            lt->started = false;
        }
    }
    pthread_mutex_lock(&srv->mu);
    for (unsigned i = 1; i < srv->nlt; i++) {
        struct lthread *lt = &srv->lt[i];
        lt->exited = true;
        if (lt->loop) {
            int r = uv_loop_close(lt->loop);
            if (r < 0)
                log_warn(MOD, "connection thread %u: loop closed with handles open: %s",
                         i, uv_strerror(r));
            lt->loop = NULL;
        }
        lt_run_inbox(lt);
        lt_drop_fds(lt);
    }
    lt_run_inbox(&srv->lt[0]);
    if (srv->lt[0].async_open) {
        srv->lt[0].async_open = false;
        uv_close((uv_handle_t *)&srv->lt[0].async, NULL);
    }
}

/* Runs what is posted to every connection (the main thread, once the
 * connection threads are gone: at the stop). */
void srv_lt_run_inboxes(struct server *srv)
{
    for (unsigned i = 0; i < srv->nlt; i++)
        lt_run_inbox(&srv->lt[i]);
}

/* The main loop's own handles go (the stop, after the last posts ran). */
void srv_lt_close_main(struct server *srv)
{
    struct lthread *main = &srv->lt[0];

    srv_lt_run_inboxes(srv);
    if (main->check_open) {
        main->check_open = main->idle_open = false;
        uv_close((uv_handle_t *)&main->check, NULL);
        uv_close((uv_handle_t *)&main->idle, NULL);
    }
}

/* Checks the time limits of lt's connections (lt's thread, lock held). */
void srv_lt_sweep(struct lthread *lt)
{
    uint64_t now = util_mono_ns() / 1000000u;

    for (struct conn *c = lt->conns, *next; c; c = next) {
        next = c->lt_next;
        srv_conn_check_time(c, now);
    }
}

/* A connection thread's sweep timer. */
static void lt_on_sweep(uv_timer_t *t)
{
    struct lthread *lt = t->data;

    srv_lock(lt->srv);
    srv_lt_sweep(lt);
    srv_unlock(lt->srv);
}

/* Whether any connection time limit is set (srv_lt_sweep has work). */
bool srv_sweep_wanted(const struct server *srv)
{
    return srv->cfg.idle_timeout_s || srv->cfg.output_stall_timeout_s ||
           (srv->cfg.auth && srv->cfg.auth_timeout_s);
}

/* Bytes of c's replies the socket has taken: written, plus the part of the
 * write in flight libuv has written already (c's thread). */
static uint64_t conn_sent(struct conn *c)
{
    size_t unwritten =
        c->in_flight ? uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) : 0;

    return c->sent_bytes + (c->in_flight > unwritten ? c->in_flight - unwritten : 0);
}

/*
 * Closes c if it is past one of its time limits (c's thread, lock held):
 *   --output-stall-timeout  replies queued and the client has not taken a
 *                           byte of them for that long (it sends and never
 *                           reads: its queue, and the items it references,
 *                           would be held for good);
 *   --auth-timeout          not authenticated that long after connecting;
 *   --idle-timeout          silent that long, with nothing owed to it.
 */
void srv_conn_check_time(struct conn *c, uint64_t now)
{
    struct server *srv = c->srv;
    const struct server_config *cfg = &srv->cfg;
    uint64_t dropped;
    char note[64];

    if (c->closing || c->udp)
        return;
    if (cfg->output_stall_timeout_s && c->out.bytes > 0) {
        uint64_t sent = conn_sent(c);
        if (c->stall_since_ms == 0 || sent != c->stall_sent) {
            c->stall_sent = sent;
            c->stall_since_ms = now;
        } else if (now - c->stall_since_ms >=
                   (uint64_t)cfg->output_stall_timeout_s * 1000) {
            srv->counters.output_stall_closes++;
            log_warn(MOD,
                     "conn %llu from %s closed: it has not read its replies for %u s "
                     "(%zu bytes queued; --output-stall-timeout)",
                     (unsigned long long)c->id, c->peer, cfg->output_stall_timeout_s,
                     c->out.bytes);
            srv_conn_close(c, NULL);
            return;
        }
    } else {
        c->stall_since_ms = 0;
    }
    if (!c->authed && cfg->auth_timeout_s &&
        now - c->opened_ms >= (uint64_t)cfg->auth_timeout_s * 1000) {
        srv->counters.auth_timeouts++;
        if (log_limit_allow(&srv->rl_auth_timeout, &dropped))
            log_info(MOD,
                     "conn %llu from %s closed: not authenticated within %u s "
                     "(--auth-timeout)%s",
                     (unsigned long long)c->id, c->peer, cfg->auth_timeout_s,
                     log_limit_note(note, sizeof(note), dropped));
        srv_conn_close(c, NULL);
        return;
    }
    if (cfg->idle_timeout_s &&
        now - c->last_active_ms > (uint64_t)cfg->idle_timeout_s * 1000 &&
        c->out.bytes == 0 && c->npending == 0 && c->cpending == NULL &&
        c->waiting == NULL) {
        srv->counters.idle_kicks++;
        srv_conn_close(c, "idle timeout");
    }
}
