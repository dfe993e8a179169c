/*
 * srv_post.c - how work reaches a connection: what another part of the
 * server has for it (a write's outcome, a wake-up, a line to answer) is
 * posted to it, and its own thread runs it at the end of its loop turn
 * (srv_loop.c runs the inbox, srv_conn.c what is posted). Nothing here
 * runs a connection's code. Also the wait lists connections wait on, the
 * server lock, and what a thread queued during its loop turn.
 */

#include "srv.h"

/* What this thread queued during its loop's turn: log records (the main
 * loop hands them to the log writer when it turns, but it may be asleep)
 * and peer frames (written by the main loop: wake it). */
__thread bool srv_tl_wal_staged, srv_tl_kick_main;

/* Taken by connection threads around what they run; the main thread holds
 * it whenever its loop runs (server_run). */
void srv_lock(struct server *srv)
{
    srv_clock_stale();
    if (srv->threaded) {
        pthread_mutex_lock(&srv->mu);
        item_defer_frees(true);
    }
}

/* Items overwritten meanwhile are freed after the lock is let go: the
 * other threads need not wait for free(3). */
void srv_unlock(struct server *srv)
{
    if (srv->threaded) {
        item_defer_frees(false);
        pthread_mutex_unlock(&srv->mu);
        item_reap();
    }
}

/* Does the calling thread own c (or has its owner exited)? */
bool srv_conn_local(const struct conn *c)
{
    return !c->srv->threaded || c->lt->exited || pthread_equal(pthread_self(), c->lt->thread);
}

/*
 * Asks c's thread to run what was set in c (the post_ fields, POST_ bits),
 * at the end of its loop turn. From another thread, its loop is woken; from
 * its own, the loop's idle handle makes sure the turn does not sleep first
 * (a post from a timer would otherwise wait for the next event). Lock held.
 */
void srv_conn_post(struct conn *c, unsigned what)
{
    struct lthread *lt = c->lt;

    c->post |= what;
    if (c->posted)
        return;
    c->posted = true;
    c->post_next = NULL;
    if (lt->inbox_tail)
        lt->inbox_tail->post_next = c;
    else
        lt->inbox_head = c;
    lt->inbox_tail = c;
    if (srv_conn_local(c)) {
        lt->self_posted = true;
        if (lt->idle_open && !lt->exited)
            uv_idle_start(&lt->idle, lt->on_idle);
    } else if (lt->async_open) {
        uv_async_send(&lt->async);
    }
}

/* Hands a write's outcome to its connection (both write paths), after the
 * ones handed before it. */
void srv_post_done(struct conn *c, struct wdone *d)
{
    d->next = NULL;
    if (c->done_tail)
        c->done_tail->next = d;
    else
        c->done_head = d;
    c->done_tail = d;
    srv_conn_post(c, 0);
}

/* Lets c run its buffered requests again. */
void srv_conn_resume(struct conn *c)
{
    srv_conn_post(c, POST_RUN);
}

void srv_waitlist_push(struct waitlist *wl, struct conn *c)
{
    assert(c->waiting == NULL);
    c->wait_next = NULL;
    if (wl->tail)
        wl->tail->wait_next = c;
    else
        wl->head = c;
    wl->tail = c;
    c->waiting = wl;
}

/* Takes c off the list it waits on (a connection that closes). */
void srv_waitlist_remove(struct conn *c)
{
    struct waitlist *wl = c->waiting;
    struct conn *prev = NULL;

    if (wl == NULL)
        return;
    for (struct conn *x = wl->head; x; prev = x, x = x->wait_next) {
        if (x != c)
            continue;
        if (prev)
            prev->wait_next = c->wait_next;
        else
            wl->head = c->wait_next;
        if (wl->tail == c)
            wl->tail = prev;
        break;
    }
    c->waiting = NULL;
    c->wait_next = NULL;
}

/* Takes the first connection off wl (NULL if empty). */
struct conn *srv_waitlist_pop(struct waitlist *wl)
{
    struct conn *c = wl->head;

    if (c == NULL)
        return NULL;
    wl->head = c->wait_next;
    if (wl->head == NULL)
        wl->tail = NULL;
    c->waiting = NULL;
    c->wait_next = NULL;
    return c;
}

/* Moves every connection on src to the end of dst, in order. */
void srv_waitlist_move(struct waitlist *dst, struct waitlist *src)
{
    struct conn *c;

    while ((c = srv_waitlist_pop(src)) != NULL)
        srv_waitlist_push(dst, c);
}

/* Lets every connection on wl run again, in arrival order. Those still to
 * run wait on a list of our own meanwhile, so one that closes while an
 * earlier one runs leaves it properly (srv_waitlist_remove), and connections
 * that start waiting on wl again are left for the next wake. */
void srv_waitlist_wake(struct waitlist *wl)
{
    struct waitlist run = {0};
    struct conn *c;

    srv_waitlist_move(&run, wl);
    while ((c = srv_waitlist_pop(&run)) != NULL)
        srv_conn_resume(c);
}

void srv_wait_for(struct conn *c, struct waitlist *wl)
{
    if (c->wait_since_ms == 0)
        c->wait_since_ms = srv_mono_ms();
    srv_waitlist_push(wl, c);
}
