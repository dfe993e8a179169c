/*
 * srv_peers.c - the server's side of the peer transport: link events, the
 * replicas' clocks (--max-clock-skew-ms), the fence that keeps a replica
 * whose data is behind from serving (fence.h), the durable txid ceiling in
 * RUN, and opening the cluster at start.
 */

#include "srv.h"

static void on_peer_msg(void *arg, const struct tpc_msg *m)
{
    struct server *srv = arg;

    if (srv->tpc == NULL)
        return;
    /* A peer whose data is behind (or who is, here) does not count: its
     * votes, answers and decisions are dropped (fence.h). */
    if (!fence_peer_ok(&srv->fence, m->from) || srv->fence.behind) {
        srv->counters.fence_dropped++;
        return;
    }
    if ((m->type == TPC_MSG_VOTE && m->vote) || m->type == TPC_MSG_ACK)
        fence_voted(&srv->fence, m->from, m->txid);
    if (m->type == TPC_MSG_COMMIT) {
        /* A coordinator commits only once every replica voted YES: every
         * one of them logged it (so each replica knows what all did). */
        fence_committed(&srv->fence, srv->cfg.id, m->txid);
    }
    srv_refresh_now(srv);
    tpc_receive(srv->tpc, m, srv_now_us());
    srv_after_tpc(srv);
}

/* Says when the clocks go out of bound and when they are back (a clock not
 * measured yet is not worth a line: it is the first moments of a link). */
void srv_skew_changed(struct server *srv)
{
    struct skew_verdict v;
    bool far = !srv_clocks_allow_writes(srv, &v) && !v.unmeasured;
    bool reads = skew_read_refused(&srv->skew, srv->ids, srv_mono_ms());
    char why[256];

    if (far != srv->skew_writes_refused) {
        if (far) {
            srv_fmt_clock_verdict(srv, &v, why, sizeof(why));
            log_error(MOD, "%s: writes are refused until the clocks agree (check NTP)",
                      why);
        } else {
            log_warn(MOD,
                     "the replicas' clocks agree within --max-clock-skew-ms %u again: "
                     "writes resume",
                     srv->cfg.max_clock_skew_ms);
        }
        srv->skew_writes_refused = far;
    }
    if (reads != srv->skew_reads_refused) {
        if (reads)
            log_error(
                MOD,
                "this replica's clock is off from most other replicas' by more than "
                "--max-clock-skew-ms %u: reads are refused until it agrees (check "
                "NTP on this host)",
                srv->cfg.max_clock_skew_ms);
        else
            log_warn(MOD,
                     "this replica's clock agrees with the others' again: reads resume");
        srv->skew_reads_refused = reads;
    }
}

static void on_peer_clock(void *arg, uint32_t id, int64_t offset_us, uint64_t rtt_us)
{
    struct server *srv = arg;

    skew_note(&srv->skew, id, offset_us, rtt_us, srv_mono_ms());
    srv_skew_changed(srv);
    srv_waitlist_wake(&srv->clock_wait); /* each tries again */
}

/* Probes every peer's clock now (and then every LIMIT_CLOCK_PROBE_MS). */
void srv_clock_probe(struct server *srv)
{
    srv->clock_probe_at_ms = srv_mono_ms() + LIMIT_CLOCK_PROBE_MS;
    if (srv->peers)
        peer_clock_ping(srv->peers);
}

/* Samples taken before this host's own clock stepped measured the old
 * clock: they go, and writes wait for new ones. Called from the timer. */
void srv_clock_step_check(struct server *srv)
{
    int64_t gap = util_now_unix_ms() - (int64_t)(util_mono_ns() / 1000000u);

    if (srv->clock_gap_known && (gap - srv->clock_gap_ms > LIMIT_CLOCK_STEP_MS ||
                                 srv->clock_gap_ms - gap > LIMIT_CLOCK_STEP_MS)) {
        log_warn(MOD,
                 "this host's clock stepped by %lld ms: measuring the replicas' clocks "
                 "again before any write",
                 (long long)(gap - srv->clock_gap_ms));
        skew_forget(&srv->skew);
        srv_clock_probe(srv);
        srv_skew_changed(srv);
    }
    srv->clock_gap_ms = gap;
    srv->clock_gap_known = true;
}

static void on_peer_link(void *arg, uint32_t id, bool up)
{
    struct server *srv = arg;

    if (srv->tpc == NULL)
        return;
    srv_refresh_now(srv);
    if (!up)
        fence_link_down(&srv->fence, id);
    /* Up for two-phase commit once its data is known to be current. */
    tpc_peer(srv->tpc, id, up && fence_peer_ok(&srv->fence, id) && !srv->fence.behind,
             srv_now_us());
    srv_after_tpc(srv);
    /* A link that went down no longer needs measuring: writes fail on it. */
    if (!up)
        srv_waitlist_wake(&srv->clock_wait);
}

static void state_out(void *arg, uint32_t id, uint64_t *mark, uint64_t *seen_of_you,
                      uint32_t *cport)
{
    struct server *srv = arg;

    *mark = srv->fence.mark;
    *seen_of_you = id < LIMIT_REPLICAS_MAX ? srv->fence.seen[id] : 0;
    *cport = srv->port > 0 ? (uint32_t)srv->port : 0;
}

static void on_state(void *arg, uint32_t id, uint64_t mark, uint64_t seen_of_us,
                     uint32_t cport)
{
    struct server *srv = arg;
    char name[64];

    if (srv->tpc == NULL || id >= LIMIT_REPLICAS_MAX)
        return;
    srv->peer_cport[id] = cport;
    unsigned ch = fence_state_in(&srv->fence, id, mark, seen_of_us);
    srv_replica_name(srv, id, name, sizeof(name));
    srv_refresh_now(srv);
    if (ch & FENCE_SELF_BEHIND) {
        /* Kept in RUN at once: a restart must not forget it. */
        pthread_mutex_lock(&srv->run_mu);
        srv->run_behind = true;
        srv->run_behind_by = id;
        srv->run_behind_seen = seen_of_us;
        pthread_mutex_unlock(&srv->run_mu);
        int we = srv_write_run(srv, false);
        if (we < 0)
            log_error(MOD, "cannot record in %s/RUN that this replica is behind: %s",
                      srv->cfg.data_dir, strerror(-we));
        log_error(MOD,
                  "this replica's data is older than %s saw it: that replica saw it vote "
                  "on transaction %" PRIu64 ", but its data in %s ends at %" PRIu64
                  ". Its "
                  "data directory was emptied, replaced (a wrong -d?) or restored from "
                  "an older copy. It answers no client and takes no part in writes: "
                  "bringing it up to date from its peers is not in this release; see "
                  "DESIGN.md, A replica that is behind",
                  name, seen_of_us, srv->cfg.data_dir, srv->fence.mark);
        for (size_t i = 0; i < srv->cfg.nreplicas; i++)
            if (srv->ids[i] != srv->cfg.id)
                tpc_peer(srv->tpc, srv->ids[i], false, srv_now_us());
        srv_waitlist_wake(&srv->clock_wait);
    }
    if (ch & FENCE_PEER_BEHIND) {
        log_error(MOD,
                  "the data of %s is older than this replica saw it: it voted on "
                  "transaction %" PRIu64 ", its data ends at %" PRIu64
                  " (its data directory was "
                  "emptied, replaced or restored from an older copy). Its votes and "
                  "answers are refused: writes fail until it is rebuilt",
                  name, srv->fence.seen[id], mark);
        tpc_peer(srv->tpc, id, false, srv_now_us());
    }
    if ((ch & FENCE_PEER_CURRENT) && !srv->fence.behind && srv->peers &&
        peer_link_up(srv->peers, id))
        tpc_peer(srv->tpc, id, true, srv_now_us());
    if (ch & FENCE_SELF_VERIFIED) {
        log_info(MOD, "%s finds this replica's data current: serving clients", name);
        pthread_mutex_lock(&srv->run_mu);
        srv->run_verified = true;
        pthread_mutex_unlock(&srv->run_mu);
        /* The mark moves now, before any PREPARE this link brings is
         * handled (rare: once a run; an audit found the gap otherwise). */
        int we = srv_write_run(srv, false);
        if (we < 0) {
            srv->fence_mark_due = true; /* the next RUN write tries again */
            log_warn(MOD,
                     "cannot record in %s/RUN that this replica's data is current: %s",
                     srv->cfg.data_dir, strerror(-we));
        }
        srv_waitlist_wake(&srv->clock_wait);
    }
    srv_after_tpc(srv);
}

/* Brings up the 2PC core once the store and log are recovered: the
 * transactions the log left open are handed over before any message. */
int srv_cluster_open(struct server *srv, struct recover_ledger *ledger, char *err,
                     size_t cap)
{
    struct tpc_config tc = {
        .self = srv->cfg.id,
        .n = (uint32_t)srv->cfg.nreplicas,
        .epoch = srv->cfg.epoch,
        .prepare_timeout_us = (uint64_t)srv->cfg.prepare_timeout_ms * 1000u,
        .resend_us = (uint64_t)srv->cfg.prepare_timeout_ms * 500u,
        .remembered_max = LIMIT_TPC_REMEMBERED,
    };
    struct tpc_env env = {.ctx = srv,
                          .send = srv_env_send,
                          .log = srv_env_log,
                          .prepare = srv_env_prepare,
                          .commit = srv_env_commit,
                          .abort = srv_env_abort,
                          .done = srv_env_done};
    uint64_t now = srv_now_us();
    int r;

    for (size_t i = 0; i < srv->cfg.nreplicas; i++) {
        tc.ids[i] = srv->ids[i] = srv->cfg.replicas[i].id;
        if (tc.ids[i] == srv->cfg.id)
            srv->self_idx = (uint32_t)i;
    }
    skew_init(&srv->skew, (uint32_t)srv->cfg.nreplicas, srv->cfg.id,
              srv->cfg.max_clock_skew_ms);
    /* Our history's mark: the last run's ceiling, and the log's records. */
    uint64_t mark = srv->hist_mark;
    if (srv->rec.next_cas > 0 && srv->rec.next_cas - 1 > mark)
        mark = srv->rec.next_cas - 1;
    fence_init(&srv->fence, (uint32_t)srv->cfg.nreplicas, mark, srv->prev_seen);
    if (srv->cfg.nreplicas == 1) {
        srv->fence.verified = true; /* nobody to ask */
        pthread_mutex_lock(&srv->run_mu);
        srv->run_verified = true;
        pthread_mutex_unlock(&srv->run_mu);
    }
    if (srv->run_behind) {
        /* Found behind in an earlier run: that does not wear off. */
        srv->fence.behind = true;
        srv->fence.behind_by = srv->run_behind_by;
        srv->fence.behind_seen = srv->run_behind_seen;
        log_error(
            MOD,
            "this replica's data was found behind in an earlier run (replica %u saw "
            "it vote on transaction %" PRIu64 ", which %s does not hold): it serves "
            "nothing and takes no part in writes. Bringing it up to date from its "
            "peers is not in this release; see DESIGN.md, A replica that is behind",
            srv->run_behind_by, srv->run_behind_seen, srv->cfg.data_dir);
    }
    /* The participants' backstop (txn.h): a coordinator's clock ahead by
     * more than the bound, or behind by more than the bound plus the time a
     * PREPARE may take to arrive, gets a NO vote. */
    if (srv->cfg.max_clock_skew_ms) {
        srv->rm.clock_ahead_ms = srv->cfg.max_clock_skew_ms;
        srv->rm.clock_behind_ms =
            (int64_t)srv->cfg.max_clock_skew_ms + srv->cfg.prepare_timeout_ms;
    }

    srv->rm.store = srv->store;
    srv->rm.user_bytes = sizeof(struct txn_waiters);
    if ((srv->tpc = tpc_new(&tc, &env, &r)) == NULL)
        return util_errf(err, cap, r, "cannot start two-phase commit: %s", strerror(-r));
    uint64_t min = srv->rec.next_cas;
    if (store_max_cas(srv->store) + 1 > min)
        min = store_max_cas(srv->store) + 1;
    tpc_set_min_txid(srv->tpc, min);
    if (ledger->nprepared || ledger->ncommitted)
        log_info(
            MOD,
            "two-phase commit: %zu prepared transaction(s) to resolve, %zu commit(s) "
            "to resend",
            ledger->nprepared, ledger->ncommitted);
    if (srv->history_lost) {
        tpc_history_lost(srv->tpc, srv->lost_before);
        log_error(MOD,
                  "the log in %s has lost records it had reported durable (a run under "
                  "--fsync none ended without a clean stop before the machine "
                  "restarted). This replica will not acknowledge commits it has no "
                  "record of, and what it cannot settle stays in doubt (stats "
                  "txn_in_doubt); it may lack writes the others have. There is no safe "
                  "in-place repair yet: bringing a replica up to date from its peers "
                  "is planned; until then run clusters under --fsync batch or always",
                  srv->cfg.data_dir);
    }
    uint64_t bad = 0;
    if ((r = txn_resume(srv->tpc, ledger, now, &bad)) < 0)
        return util_errf(
            err, cap, -EBADMSG,
            "transaction %llu, left open by the log, cannot be taken back (%s): "
            "the data directory is inconsistent",
            (unsigned long long)bad, strerror(-r));
    srv_after_tpc(srv);
    return 0;
}

/* Starts the peer transport (after the client listeners are bound). */
int srv_cluster_listen(struct server *srv, char *err, size_t cap)
{
    struct peer_config pc = {
        .self = srv->cfg.id,
        .n = srv->cfg.nreplicas,
        .secret = srv->cfg.secret,
        .nsecret = srv->cfg.nsecret,
        .epoch = srv->cfg.epoch,
        .client_port = srv->port > 0 ? (uint32_t)srv->port : 0,
        .frame_bytes_max = srv->cfg.value_bytes_max + LIMIT_PEER_FRAME_OVERHEAD_BYTES,
        .output_bytes_max = LIMIT_PEER_OUTPUT_BYTES_MAX,
        .on_msg = on_peer_msg,
        .on_link = on_peer_link,
        .on_clock = on_peer_clock,
        .state_out = state_out,
        .on_state = on_state,
        .arg = srv,
    };
    int r;

    memcpy(pc.replicas, srv->cfg.replicas, sizeof(pc.replicas));
    if ((r = peer_net_new(&srv->peers, srv->loop, &pc, err, cap)) < 0)
        return r;
    peer_net_start(srv->peers);
    uv_timer_init(srv->loop, &srv->tick);
    srv->tick.data = srv;
    srv->tick_open = true;
    uv_timer_start(&srv->tick, srv_on_tpc_tick, TICK_INTERVAL_MS, TICK_INTERVAL_MS);
    return 0;
}

int server_peer_port(const struct server *srv)
{
    return srv->peers ? peer_net_port(srv->peers) : 0;
}
