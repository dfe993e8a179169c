/*
 * srv_gate.c - whether this replica may answer and write now, and what it
 * says when not: its data confirmed current by a peer (the fence, fence.h),
 * the replicas' clocks within --max-clock-skew-ms (skew.h), and the durable
 * txid ceiling kept in RUN that every txid it uses stays under. Also how a
 * replica is named in those messages.
 */

#include "srv.h"

const char *srv_replica_addr(const struct server *srv, uint32_t id, char *buf, size_t cap)
{
    for (size_t i = 0; i < srv->cfg.nreplicas; i++) {
        const struct peer_addr *a = &srv->cfg.replicas[i];
        if (a->id == id) {
            /* The peer address, and the port clients use (from its STATE):
             * the one to try with clie -p. */
            if (id < LIMIT_REPLICAS_MAX && srv->peer_cport[id])
                snprintf(buf, cap, "%s:%d, client port %u", a->host, a->port,
                         srv->peer_cport[id]);
            else
                snprintf(buf, cap, "%s:%d", a->host, a->port);
            return buf;
        }
    }
    snprintf(buf, cap, "?");
    return buf;
}

/* Did id's last link attempt fail its authentication (another secret)? */
bool srv_peer_auth_refused(const struct server *srv, uint32_t id)
{
    struct peer_link_stats ls;

    if (srv->peers == NULL)
        return false;
    peer_get_link_stats(srv->peers, id, &ls);
    return ls.state != PEER_LINK_UP && ls.auth_refused;
}

/* Records in RUN how this run stands (datadir.h), with at least ceiling
 * as the txid ceiling: never one below what RUN already holds (two writers
 * race: the job and srv_ceiling_cover). *written: the ceiling RUN now holds.
 * Any thread; after the clean stop is written nothing else is. */
static int write_run_ceiling(struct server *srv, bool clean, uint64_t ceiling,
                             uint64_t *written)
{
    struct datadir_run run = {.clean = clean,
                              .lost_before = srv->lost_before,
                              .has_id = srv->cluster,
                              .id = srv->cfg.id};
    int r = 0;

    snprintf(run.fsync, sizeof(run.fsync), "%s",
             wal_fsync_mode_name(srv->cfg.fsync_mode));
    pthread_mutex_lock(&srv->run_mu);
    memcpy(run.seen, srv->run_seen, sizeof(run.seen));
    run.txid_ceiling = ceiling > srv->run_ceiling ? ceiling : srv->run_ceiling;
    /* The fence's mark moves only in a run a peer confirmed current: a
     * refused run's fresh ceiling must not launder its data (audit). */
    run.fence_mark = srv->run_fence_mark;
    if (srv->run_verified && !srv->run_behind && run.txid_ceiling > run.fence_mark)
        run.fence_mark = run.txid_ceiling;
    run.behind = srv->run_behind;
    run.behind_by = srv->run_behind_by;
    run.behind_seen = srv->run_behind_seen;
    if (!srv->run_final) {
        r = datadir_run_write(srv->cfg.data_dir, &run);
        if (r == 0) {
            srv->run_ceiling = run.txid_ceiling;
            srv->run_fence_mark = run.fence_mark;
        }
        srv->run_final = clean && r == 0;
    }
    *written = srv->run_ceiling;
    pthread_mutex_unlock(&srv->run_mu);
    return r;
}

int srv_write_run(struct server *srv, bool clean)
{
    uint64_t written;

    return write_run_ceiling(srv, clean, srv->txid_ceiling, &written);
}

/* The txid ceiling for a clock reading (µs): that far ahead. */
uint64_t srv_ceiling_at(uint64_t seq_us)
{
    return (seq_us + (uint64_t)LIMIT_TXID_CEILING_AHEAD_MS * 1000u) << 8;
}

static void ceiling_job_run(uv_work_t *w)
{
    struct server *srv = w->data;

    srv->ceiling_err =
        write_run_ceiling(srv, false, srv->ceiling_next, &srv->ceiling_written);
}

static void ceiling_job_done(uv_work_t *w, int status)
{
    struct server *srv = w->data;
    size_t dropped;
    char note[96];

    if (status == 0 && srv->ceiling_written > srv->txid_ceiling)
        srv->txid_ceiling = srv->ceiling_written;
    if (status == 0 && srv->ceiling_err < 0) {
        srv->ceiling_retry_ms = srv_mono_ms() + 1000; /* not at every tick */
        if (log_limit_allow(&srv->rl_ceiling, &dropped))
            log_warn(MOD,
                     "cannot raise the txid ceiling in %s/RUN: %s (retried every second; "
                     "writes are refused once the clock reaches it)%s",
                     srv->cfg.data_dir, strerror(-srv->ceiling_err),
                     log_limit_note(note, sizeof(note), dropped));
    }
    srv->ceiling_next = 0;
}

/* Keeps the ceiling ahead of the clock (srv_on_tpc_tick), off the loop: once the
 * clock is within half the lead of it, a job writes a new one. */
void srv_ceiling_refresh(struct server *srv)
{
    uint64_t now = util_now_unix_us();

    if (!srv->run_written || srv->ceiling_next || srv->stopping ||
        srv_mono_ms() < srv->ceiling_retry_ms)
        return;
    /* The fence's seen[] goes with it, at most once a second when it moved. */
    bool seen_moved =
        (srv_mono_ms() >= srv->seen_persist_ms &&
         memcmp(srv->fence.seen, srv->run_seen, sizeof(srv->run_seen)) != 0) ||
        srv->fence_mark_due;
    srv->fence_mark_due = false;
    if (!seen_moved && srv_ceiling_at(now - (uint64_t)LIMIT_TXID_CEILING_AHEAD_MS *
                                                500u) < srv->txid_ceiling)
        return;
    pthread_mutex_lock(&srv->run_mu);
    memcpy(srv->run_seen, srv->fence.seen, sizeof(srv->run_seen));
    pthread_mutex_unlock(&srv->run_mu);
    srv->seen_persist_ms = srv_mono_ms() + 1000;
    srv->ceiling_next = srv_ceiling_at(now);
    srv->ceiling_job.data = srv;
    if (uv_queue_work(srv->loop, &srv->ceiling_job, ceiling_job_run, ceiling_job_done) <
        0)
        srv->ceiling_next = 0;
}

/* Before txid is prepared here (and so logged): below the durable ceiling,
 * or the ceiling is raised past it now, on the loop (a txid that outran
 * the clock). */
int srv_ceiling_cover(struct server *srv, uint64_t txid)
{
    uint64_t written;
    size_t dropped;
    char note[96];

    if (txid < srv->txid_ceiling)
        return 0;
    uint64_t seq = util_now_unix_us();
    if ((txid >> 8) + 1 > seq)
        seq = (txid >> 8) + 1;
    int r = write_run_ceiling(srv, false, srv_ceiling_at(seq), &written);
    if (written > srv->txid_ceiling)
        srv->txid_ceiling = written;
    if (r < 0 || txid >= srv->txid_ceiling) {
        if (log_limit_allow(&srv->rl_ceiling, &dropped))
            log_error(MOD,
                      "cannot raise the txid ceiling in %s/RUN: %s: transaction %" PRIu64
                      " gets a NO vote%s",
                      srv->cfg.data_dir, strerror(r < 0 ? -r : EIO), txid,
                      log_limit_note(note, sizeof(note), dropped));
        return -EIO;
    }
    return 0;
}

/* Is our link to replica id up? (skew.h asks.) */
bool srv_link_up(void *arg, uint32_t id)
{
    struct server *srv = arg;

    return srv->peers && peer_link_up(srv->peers, id);
}

/* May writes go on as far as the clocks go? false with the reason in *v. */
bool srv_clocks_allow_writes(struct server *srv, struct skew_verdict *v)
{
    return skew_write_check(&srv->skew, srv->ids, srv_mono_ms(), srv_link_up, srv, v);
}

/* Formats why the clocks stop writes. */
void srv_fmt_clock_verdict(struct server *srv, const struct skew_verdict *v, char *dst,
                           size_t cap)
{
    if (v->unmeasured)
        snprintf(dst, cap,
                 "replica %u's clock has not been measured yet (it was just "
                 "connected, or this replica's clock stepped)",
                 v->a);
    else if (v->b == srv->cfg.id)
        snprintf(dst, cap,
                 "replica %u's clock is %lld ms off this replica's, more than "
                 "--max-clock-skew-ms %u",
                 v->a, (long long)(v->apart_us / 1000), srv->cfg.max_clock_skew_ms);
    else
        snprintf(dst, cap,
                 "the clocks of replicas %u and %u are %lld ms apart, more than "
                 "--max-clock-skew-ms %u",
                 v->a, v->b, (long long)(v->apart_us / 1000), srv->cfg.max_clock_skew_ms);
}

/* Answers a request refused because the clocks are too far apart (a write:
 * see skew_write_check; a read: ours, from most others') and returns what
 * reply() returned (0, or -ENOMEM); returns 1, answering nothing, when they
 * agree. */
int srv_reply_clock_skew(struct server *srv, struct outq *o, bool write)
{
    struct skew_verdict v;
    char line[400], why[256];

    if (write && !srv_clocks_allow_writes(srv, &v)) {
        srv_fmt_clock_verdict(srv, &v, why, sizeof(why));
        snprintf(line, sizeof(line), "SERVER_ERROR %s: writes are refused until %s\r\n",
                 why, v.unmeasured ? "it is" : "the clocks agree");
    } else if (!write && skew_read_refused(&srv->skew, srv->ids, srv_mono_ms())) {
        snprintf(
            line, sizeof(line),
            "SERVER_ERROR this replica's clock is off from the other replicas' by more "
            "than --max-clock-skew-ms %u: ask another replica\r\n",
            srv->cfg.max_clock_skew_ms);
    } else {
        return 1; /* in bound */
    }
    srv->counters.clock_skew_refused++;
    return reply(o, line);
}

/* "replica 3 (client port 11213)", or without the port if unknown. */
const char *srv_replica_name(struct server *srv, uint32_t id, char *dst, size_t cap)
{
    if (id < LIMIT_REPLICAS_MAX && srv->peer_cport[id])
        snprintf(dst, cap, "replica %u (client port %u)", id, srv->peer_cport[id]);
    else
        snprintf(dst, cap, "replica %u", id);
    return dst;
}

/* Answers a client request this replica must not serve because its data
 * is not known to be current, and returns what reply() returned; 1 when it
 * may serve. */
int srv_reply_not_current(struct server *srv, struct outq *o, bool noreply)
{
    char line[400], name[64];

    if (srv->fence.verified && !srv->fence.behind)
        return 1;
    srv->counters.not_current_refused++;
    if (noreply)
        return 0;
    if (srv->fence.behind)
        snprintf(
            line, sizeof(line),
            "SERVER_ERROR this replica's data is older than its peers saw it (%s): its "
            "data directory was emptied, replaced or restored from an older copy; it "
            "serves nothing until rebuilt (see its log)\r\n",
            srv_replica_name(srv, srv->fence.behind_by, name, sizeof(name)));
    else
        snprintf(
            line, sizeof(line),
            "SERVER_ERROR this replica has not yet heard from a peer that its data is "
            "current: it serves once one is reachable\r\n");
    return reply(o, line);
}

/* Not yet confirmed current by a peer (and not known behind): c waits for
 * one, up to --lock-wait-ms (a start: the links come up within moments). */
bool srv_fence_must_wait(struct server *srv, struct conn *c)
{
    c->waits_fence = false;
    if (srv->fence.verified || srv->fence.behind || srv->fence_gave_up)
        return false;
    c->waits_fence = true;
    srv_wait_for(c, &srv->clock_wait);
    return true;
}
