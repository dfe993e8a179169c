/*
 * srv_stats.c - the server's counters as requests change them, and the
 * replies to "stats" and its groups (settings, conns, cluster...).
 */

#include "srv.h"

static void stats_cluster(struct server *srv, struct outq *o);

void srv_count_write(struct server *srv, enum proto_cmd cmd, enum store_status st)
{
    struct counters *c = &srv->counters;
    bool ok = st == STORE_OK;

    switch (cmd) {
    case PROTO_CMD_DELETE:
        ok ? c->delete_hits++ : c->delete_misses++;
        break;
    case PROTO_CMD_INCR:
        ok ? c->incr_hits++ : c->incr_misses++;
        break;
    case PROTO_CMD_DECR:
        ok ? c->decr_hits++ : c->decr_misses++;
        break;
    case PROTO_CMD_TOUCH:
        c->cmd_touch++;
        ok ? c->touch_hits++ : c->touch_misses++;
        break;
    case PROTO_CMD_CAS:
        c->cmd_set++;
        if (ok)
            c->cas_hits++;
        else if (st == STORE_EXISTS)
            c->cas_badval++;
        else if (st == STORE_NOT_FOUND)
            c->cas_misses++;
        break;
    case PROTO_CMD_FLUSH_ALL:
        c->cmd_flush++;
        break;
    case PROTO_CMD_GAT:
    case PROTO_CMD_GATS:
        break; /* counted per key with the reads */
    default:
        c->cmd_set++;
        break;
    }
    if (st == STORE_NO_MEMORY)
        c->store_no_memory++;
    else if (st == STORE_TOO_LARGE)
        c->store_too_large++;
}

static void stat_u64(struct outq *o, const char *name, uint64_t v)
{
    char line[128];
    int n = snprintf(line, sizeof(line), "STAT %s %llu\r\n", name, (unsigned long long)v);
    outq_text(o, line, (size_t)n);
}

static void stat_str(struct outq *o, const char *name, const char *v)
{
    char line[512];
    int n = snprintf(line, sizeof(line), "STAT %s %s\r\n", name, v);
    outq_text(o, line, (size_t)(n < (int)sizeof(line) ? n : (int)sizeof(line) - 1));
}

/* stats settings: the limits and settings serve runs with. */
static void stats_settings(struct server *srv, struct outq *o)
{
    const struct server_config *cfg = &srv->cfg;

    stat_u64(o, "maxbytes", cfg->max_memory_bytes);
    stat_u64(o, "maxconns", cfg->max_conns);
    stat_u64(o, "tcpport", cfg->tcp ? (uint64_t)srv->port : 0);
    stat_u64(o, "udpport", cfg->udp ? (uint64_t)srv->port : 0);
    stat_str(o, "inter", cfg->host);
    stat_u64(o, "verbosity", (uint64_t)log_get_level());
    stat_u64(o, "item_size_max", cfg->value_bytes_max);
    stat_u64(o, "max_get_keys", cfg->get_keys_max);
    stat_u64(o, "max_line", cfg->get_line_bytes_max);
    stat_u64(o, "max_output", cfg->conn_output_bytes_max);
    stat_u64(o, "output_stall_timeout", cfg->output_stall_timeout_s);
    stat_u64(o, "max_conn_writes", cfg->conn_writes_max);
    stat_u64(o, "idle_timeout", cfg->idle_timeout_s);
    stat_str(o, "auth_enabled_ascii",
             cfg->auth ? (cfg->auth_file ? cfg->auth_file : "yes") : "no");
    stat_u64(o, "auth_timeout", cfg->auth_timeout_s);
    stat_u64(o, "max_auth_failures", cfg->auth_failures_max);
    stat_str(o, "evictions", "off");
    stat_u64(o, "num_threads",
             srv->cfg.threads ? srv->cfg.threads : 1); /* = threads */
    stat_str(o, "data_dir", cfg->data_dir);
    stat_str(o, "fsync", wal_fsync_mode_name(cfg->fsync_mode));
    stat_u64(o, "fsync_interval_ms", cfg->fsync_interval_ms);
    stat_u64(o, "snapshot_bytes", cfg->snapshot_bytes);
    stat_u64(o, "wal_segment_bytes", cfg->wal_segment_bytes);
    stat_u64(o, "wal_prealloc_bytes", cfg->wal_prealloc_bytes);
    stat_u64(o, "replica_id", cfg->id);
    stat_u64(o, "prepare_timeout_ms", cfg->prepare_timeout_ms);
    stat_u64(o, "lock_wait_ms", cfg->lock_wait_ms);
}

/* stats digest: the stored state's fingerprint. */
static void stats_digest(struct server *srv, struct outq *o)
{
    struct store_stats ss;
    char v[64];

    /* The stored state's fingerprint: replicas that hold the same items
     * (dead ones too) and flush_all have the same digest. It means
     * something only while no write is under way (locked_keys 0). */
    store_get_stats(srv->store, &ss);
    snprintf(v, sizeof(v), "%016llx", (unsigned long long)store_digest(srv->store));
    stat_str(o, "digest", v);
    stat_u64(o, "stored_items", ss.curr_items);
    stat_u64(o, "flush_at_ms", (uint64_t)store_flush_at(srv->store));
    stat_u64(o, "locked_keys",
             store_locks(srv->store) + (srv->rm.flush_holder != NULL));
}

/* stats: the general group, memcached's names first. */
static void stats_general(struct server *srv, struct outq *o)
{
    const struct server_config *cfg = &srv->cfg;
    struct counters *c = &srv->counters;
    struct store_stats ss;
    char v[64];

    store_get_stats(srv->store, &ss);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    stat_u64(o, "pid", (uint64_t)getpid());
    stat_u64(o, "uptime", (util_mono_ns() - srv->started_mono_ns) / 1000000000u);
    stat_u64(o, "time", (uint64_t)(srv->now_ms / 1000));
    stat_str(o, "version", PROTO_VERSION_STRING);
    stat_str(o, "libuv", uv_version_string());
    stat_u64(o, "pointer_size", sizeof(void *) * 8);
    snprintf(v, sizeof(v), "%ld.%06ld", (long)ru.ru_utime.tv_sec,
             (long)ru.ru_utime.tv_usec);
    stat_str(o, "rusage_user", v);
    snprintf(v, sizeof(v), "%ld.%06ld", (long)ru.ru_stime.tv_sec,
             (long)ru.ru_stime.tv_usec);
    stat_str(o, "rusage_system", v);
    stat_u64(o, "max_connections", cfg->max_conns);
    stat_u64(o, "curr_connections", srv->nconns);
    stat_u64(o, "total_connections", c->total_connections);
    stat_u64(o, "rejected_connections", c->rejected_connections);
    stat_u64(o, "protocol_closes", c->protocol_closes);
    stat_u64(o, "idle_kicks", c->idle_kicks);
    stat_u64(o, "output_stall_closes", c->output_stall_closes);
    stat_u64(o, "auth_cmds", c->auth_cmds);
    stat_u64(o, "auth_errors", c->auth_errors);
    stat_u64(o, "auth_timeouts", c->auth_timeouts);
    stat_u64(o, "auth_failure_closes", c->auth_failure_closes);
    stat_u64(o, "cmd_get", c->cmd_get);
    stat_u64(o, "cmd_set", c->cmd_set);
    stat_u64(o, "cmd_flush", c->cmd_flush);
    stat_u64(o, "cmd_touch", c->cmd_touch);
    stat_u64(o, "get_hits", c->get_hits);
    stat_u64(o, "get_misses", c->get_misses);
    stat_u64(o, "delete_hits", c->delete_hits);
    stat_u64(o, "delete_misses", c->delete_misses);
    stat_u64(o, "incr_hits", c->incr_hits);
    stat_u64(o, "incr_misses", c->incr_misses);
    stat_u64(o, "decr_hits", c->decr_hits);
    stat_u64(o, "decr_misses", c->decr_misses);
    stat_u64(o, "cas_hits", c->cas_hits);
    stat_u64(o, "cas_misses", c->cas_misses);
    stat_u64(o, "cas_badval", c->cas_badval);
    stat_u64(o, "touch_hits", c->touch_hits);
    stat_u64(o, "touch_misses", c->touch_misses);
    stat_u64(o, "store_too_large", c->store_too_large);
    stat_u64(o, "store_no_memory", c->store_no_memory);
    stat_u64(o, "bytes_read", c->bytes_read);
    stat_u64(o, "bytes_written", __atomic_load_n(&c->bytes_written, __ATOMIC_RELAXED));
    stat_u64(o, "udp_requests", c->udp_requests);
    stat_u64(o, "udp_replies", c->udp_replies);
    stat_u64(o, "udp_dropped", c->udp_dropped);
    stat_u64(o, "limit_maxbytes", cfg->max_memory_bytes);
    stat_u64(o, "threads", srv->cfg.threads ? srv->cfg.threads : 1);
    stat_u64(o, "curr_items", ss.curr_items);
    stat_u64(o, "total_items", ss.total_items);
    stat_u64(o, "bytes", ss.bytes);
    stat_u64(o, "expired_reclaimed", ss.expired_reclaimed);
    stat_u64(o, "store_sweeps", ss.sweeps);
    stat_u64(o, "evictions", 0);
    stat_u64(o, "hash_buckets", ss.hash_buckets);
    stat_u64(o, "hash_bytes", ss.hash_bytes);
    stat_u64(o, "hash_is_expanding", ss.hash_is_expanding);
}

/* stats: the log, recovery and snapshots. */
static void stats_durability(struct server *srv, struct outq *o)
{
    const struct server_config *cfg = &srv->cfg;
    struct counters *c = &srv->counters;
    struct wal_stats ws;

    wal_get_stats(srv->wal, &ws);
    stat_str(o, "fsync", wal_fsync_mode_name(cfg->fsync_mode));
    stat_u64(o, "recovery_ms", srv->rec.elapsed_ms);
    stat_u64(o, "recovery_snapshot_lsn", srv->rec.snap_lsn);
    stat_u64(o, "recovery_snapshot_items", srv->rec.snap_items);
    stat_u64(o, "recovery_records", srv->rec.records);
    stat_u64(o, "recovery_truncated_bytes", srv->rec.truncated_bytes);
    stat_u64(o, "wal_bytes", ws.bytes);
    stat_u64(o, "wal_segments", ws.segments);
    stat_u64(o, "wal_records", ws.records);
    stat_u64(o, "wal_next_lsn", ws.next_lsn);
    stat_u64(o, "wal_durable_lsn", ws.durable_lsn);
    stat_u64(o, "wal_batches", ws.batches);
    stat_u64(o, "wal_fsyncs", ws.fsyncs);
    stat_u64(o, "wal_fsync_us_avg", ws.fsyncs ? ws.fsync_us_total / ws.fsyncs : 0);
    stat_u64(o, "wal_fsync_us_max", ws.fsync_us_max);
    stat_u64(o, "wal_fsync_us_last", ws.fsync_us_last);
    stat_str(o, "wal_error", ws.error ? strerror(-ws.error) : "none");
    stat_u64(o, "writes_logged", c->writes_logged);
    stat_u64(o, "writes_waited", c->writes_waited);
    stat_u64(o, "writes_failed", c->writes_failed);
    stat_u64(o, "writes_pending", srv->npending);
    stat_u64(o, "snapshots", srv->snapshots);
    stat_u64(o, "snapshot_failures", srv->snapshot_failures);
    stat_u64(o, "snapshot_in_progress", srv->snap_pid != 0);
    stat_u64(o, "snapshot_last_lsn", srv->snap_last_lsn);
    stat_u64(o, "snapshot_last_bytes", srv->snap_last_bytes);
    stat_u64(o, "snapshot_last_ms", srv->snap_last_ms);
}

int srv_exec_stats(struct server *srv, struct outq *o, const struct proto_req *req)
{
    struct counters *c = &srv->counters;

    if (req->narg == 5 && memcmp(req->arg, "reset", 5) == 0) {
        uint64_t total = c->total_connections;
        memset(c, 0, sizeof(*c));
        c->total_connections = total; /* memcached keeps this one too */
        return reply(o, "RESET\r\n");
    }
    if (req->narg == 8 && memcmp(req->arg, "settings", 8) == 0) {
        stats_settings(srv, o);
        return reply(o, "END\r\n");
    }
    if (req->narg == 6 && memcmp(req->arg, "digest", 6) == 0) {
        stats_digest(srv, o);
        return reply(o, "END\r\n");
    }
    if (req->narg > 0) {
        /* "items", "slabs", "sizes", "conns": tools ask for these; we have no
         * slab allocator to describe, so the answer is empty. */
        static const char *const empty[] = {"items", "slabs", "sizes", "conns"};
        for (size_t i = 0; i < ARRAY_SIZE(empty); i++)
            if (req->narg == strlen(empty[i]) &&
                memcmp(req->arg, empty[i], req->narg) == 0)
                return reply(o, "END\r\n");
        return reply(o, "ERROR\r\n"); /* memcached's answer to an unknown group */
    }
    stats_general(srv, o);
    stats_durability(srv, o);
    stats_cluster(srv, o);
    return reply(o, "END\r\n");
}

static void stats_cluster(struct server *srv, struct outq *o)
{
    struct tpc_stats ts;
    uint64_t aborted = 0;
    char name[64];

    stat_u64(o, "replica_id", srv->cfg.id);
    stat_u64(o, "replicas", srv->cfg.nreplicas ? srv->cfg.nreplicas : 1);
    if (!srv->cluster)
        return;
    stat_u64(o, "config_epoch", srv->cfg.epoch);
    tpc_get_stats(srv->tpc, &ts);
    for (int i = 1; i <= TPC_REASON_MAX; i++)
        aborted += ts.aborted[i];
    stat_u64(o, "txn_committed", ts.committed);
    stat_u64(o, "txn_aborted", aborted);
    for (int i = 1; i <= TPC_REASON_MAX; i++) {
        snprintf(name, sizeof(name), "txn_aborted_%s",
                 tpc_reason_name((enum tpc_reason)i));
        stat_u64(o, name, ts.aborted[i]);
    }
    stat_u64(o, "txn_retries", srv->counters.txn_retries);
    stat_u64(o, "expire_txns", srv->counters.expire_txns);
    stat_u64(o, "expire_keys", srv->counters.expire_keys);
    stat_u64(o, "expire_failed", srv->counters.expire_failed);
    stat_u64(o, "txn_busy", srv->counters.txn_busy);
    stat_u64(o, "txn_conflicts", srv->counters.txn_conflicts);
    stat_u64(o, "txn_active", ts.active);
    stat_u64(o, "txn_in_doubt", ts.in_doubt);
    stat_u64(o, "txn_prepare_us_avg",
             ts.prepare_count ? ts.prepare_us_total / ts.prepare_count : 0);
    stat_u64(o, "txn_prepare_us_max", ts.prepare_us_max);
    stat_u64(o, "txn_prepared", ts.prepared);
    stat_u64(o, "txn_voted_no", ts.voted_no);
    stat_u64(o, "txn_part_committed", ts.part_committed);
    stat_u64(o, "txn_part_aborted", ts.part_aborted);
    stat_u64(o, "txn_queries_sent", ts.queries_sent);
    stat_u64(o, "txn_resolved_by_query", ts.resolved_by_query);
    stat_u64(o, "txn_msgs_ignored", ts.msgs_ignored);
    stat_u64(o, "txn_bad_epoch", ts.bad_epoch);
    stat_u64(o, "reads_waited", srv->counters.reads_waited);
    stat_u64(o, "lock_wait_timeouts", srv->counters.lock_wait_timeouts);
    for (size_t i = 0; i < srv->cfg.nreplicas; i++) {
        uint32_t id = srv->cfg.replicas[i].id;
        struct peer_link_stats ls;
        char addr[300];
        if (id == srv->cfg.id || srv->peers == NULL)
            continue;
        peer_get_link_stats(srv->peers, id, &ls);
        snprintf(name, sizeof(name), "peer_%u_addr", id);
        stat_str(o, name, srv_replica_addr(srv, id, addr, sizeof(addr)));
        snprintf(name, sizeof(name), "peer_%u_link", id);
        stat_str(o, name, peer_link_state_name(ls.state));
        snprintf(name, sizeof(name), "peer_%u_inbound", id);
        stat_str(o, name, ls.inbound_up ? "up" : "down");
        snprintf(name, sizeof(name), "peer_%u_frames_out", id);
        stat_u64(o, name, ls.frames_out);
        snprintf(name, sizeof(name), "peer_%u_frames_in", id);
        stat_u64(o, name, ls.frames_in);
        snprintf(name, sizeof(name), "peer_%u_writes", id);
        stat_u64(o, name, ls.writes);
        snprintf(name, sizeof(name), "peer_%u_connects", id);
        stat_u64(o, name, ls.connects);
        snprintf(name, sizeof(name), "peer_%u_auth_failures", id);
        stat_u64(o, name, ls.auth_failures);
        snprintf(name, sizeof(name), "peer_%u_last_error", id);
        stat_str(o, name, ls.last_error[0] ? ls.last_error : "none");
        /* Its clock minus ours, as the last probe measured it (in ms, as
         * a signed number), and the probe's round trip. */
        snprintf(name, sizeof(name), "peer_%u_clock_offset_ms", id);
        snprintf(addr, sizeof(addr), "%lld", (long long)(ls.clock_offset_us / 1000));
        stat_str(o, name, skew_of(&srv->skew, id, srv_mono_ms()) >= 0 ? addr : "unknown");
        snprintf(name, sizeof(name), "peer_%u_clock_rtt_us", id);
        stat_u64(o, name, ls.clock_rtt_us);
        snprintf(name, sizeof(name), "peer_%u_data", id);
        stat_str(o, name,
                 srv->fence.state[id] == FENCE_CURRENT  ? "current"
                 : srv->fence.state[id] == FENCE_BEHIND ? "behind"
                                                        : "unknown");
    }
    stat_u64(o, "clock_skew_refused", srv->counters.clock_skew_refused);
    stat_u64(o, "history_lost", srv->history_lost);
    stat_str(o, "data_current",
             srv->fence.behind     ? "behind"
             : srv->fence.verified ? "yes"
                                   : "unknown");
    stat_u64(o, "fence_dropped", srv->counters.fence_dropped);
    stat_u64(o, "not_current_refused", srv->counters.not_current_refused);
    stat_u64(o, "txn_commits_refused", ts.commits_refused);
}
