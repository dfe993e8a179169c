/*
 * bench_report.c - what a bench run measured, as text for a person or as
 * JSON for a script.
 */

#include "bench_int.h"

static const char *const err_names[BENCH_ERR_COUNT] = {
    [BENCH_ERR_ERROR] = "ERROR",
    [BENCH_ERR_CLIENT] = "CLIENT_ERROR",
    [BENCH_ERR_SERVER] = "SERVER_ERROR",
    [BENCH_ERR_UNEXPECTED] = "unexpected",
};

static uint64_t err_total(const struct bench_counts *k)
{
    uint64_t n = 0;

    for (unsigned i = 0; i < BENCH_ERR_COUNT; i++)
        n += k->err[i];
    return n;
}

static void print_lat_row(FILE *f, const char *name, const struct hist *h)
{
    static const double ps[] = {50, 90, 99, 99.9};
    char v[32];

    fprintf(f, "  %-9s", name);
    if (h->total == 0) {
        fputs("  (none)\n", f);
        return;
    }
    for (unsigned i = 0; i < ARRAY_SIZE(ps); i++) {
        bench_fmt_lat(v, sizeof(v), hist_percentile(h, ps[i]));
        fprintf(f, " %10s", v);
    }
    bench_fmt_lat(v, sizeof(v), h->max_ns);
    fprintf(f, " %10s", v);
    bench_fmt_lat(v, sizeof(v), (uint64_t)(h->sum_ns / (double)h->total));
    fprintf(f, " %10s\n", v);
}

void bench_print_text(FILE *f, const struct bench_config *cfg,
                      const struct bench_result *res)
{
    const struct bench_counts *m = &res->measured;
    uint64_t errs = err_total(m);
    double secs = res->elapsed_s > 0 ? res->elapsed_s : 1;

    char dist[48];

    if (cfg->key_dist == BENCH_KEYS_ZIPF)
        snprintf(dist, sizeof(dist), "zipf, s = %g", cfg->zipf_s);
    else
        snprintf(dist, sizeof(dist), "uniform");
    fprintf(f, "server      %s port %u (%s)\n", cfg->host, cfg->port,
            cfg->udp ? "UDP" : "TCP");
    fprintf(f,
            "load        %u %s%s (%u open at start) on %u thread%s, %u request%s "
            "outstanding per %s\n",
            cfg->conns, cfg->udp ? "socket" : "connection", cfg->conns == 1 ? "" : "s",
            res->conns_up, res->threads, res->threads == 1 ? "" : "s", cfg->pipeline,
            cfg->pipeline == 1 ? "" : "s", cfg->udp ? "socket" : "connection");
    fprintf(f,
            "workload    set:get %u:%u, %" PRIu64 " keys of %u bytes (%s), values of "
            "%u bytes\n",
            cfg->ratio_set, cfg->ratio_get, cfg->keys, cfg->key_size, dist,
            cfg->value_size);
    if (cfg->preload || cfg->ratio_set > 0)
        fprintf(f,
                "left        up to %" PRIu64 " keys named %s* in the store (they stay)\n",
                cfg->keys, cfg->key_prefix);
    if (cfg->preload)
        fprintf(f,
                "preload     %" PRIu64 " sets in %.2f s (%.0f sets/s), %" PRIu64
                " errors\n",
                res->preload.ok[BENCH_OP_SET], res->preload_s,
                res->preload_s > 0 ? (double)res->preload.replies / res->preload_s : 0.0,
                err_total(&res->preload));
    fprintf(f, "measured    %.2f s", res->elapsed_s);
    if (res->warmup_s > 0)
        fprintf(f, " after %.2f s of warm-up", res->warmup_s);
    if (res->interrupted)
        fputs(" (interrupted)", f);
    if (res->stalled)
        fputs(" (STOPPED EARLY: no reply for 2 x timeout + 1 s)", f);
    fputc('\n', f);
    fprintf(f,
            "requests    %" PRIu64 " (%" PRIu64 " sets, %" PRIu64 " gets, %" PRIu64
            " errors)\n",
            m->replies, m->ok[BENCH_OP_SET], m->ok[BENCH_OP_GET], errs);
    fprintf(f, "ops/s       %.0f\n", (double)m->replies / secs);
    fprintf(f, "latency     %10s %10s %10s %10s %10s %10s\n", "p50", "p90", "p99",
            "p99.9", "max", "mean");
    print_lat_row(f, "all", &res->all);
    if (cfg->ratio_set > 0 && cfg->ratio_get > 0) {
        print_lat_row(f, "set", &res->hist[BENCH_OP_SET]);
        print_lat_row(f, "get", &res->hist[BENCH_OP_GET]);
    }
    if (cfg->ratio_get > 0)
        fprintf(f, "gets        %" PRIu64 " hits, %" PRIu64 " misses (%.1f%% misses)\n",
                m->hits, m->misses,
                m->ok[BENCH_OP_GET]
                    ? 100.0 * (double)m->misses / (double)m->ok[BENCH_OP_GET]
                    : 0.0);
    fprintf(f, "errors      %" PRIu64, errs);
    for (unsigned i = 0; i < BENCH_ERR_COUNT; i++)
        fprintf(f, "%s%s %" PRIu64, i == 0 ? " (" : ", ", err_names[i], m->err[i]);
    fputs(")\n", f);
    for (unsigned i = 0; i < BENCH_ERR_COUNT; i++)
        if (res->first_err[i][0] != '\0')
            fprintf(f, "            first %s: %s\n", err_names[i], res->first_err[i]);
    fprintf(f,
            "connections %" PRIu64 " failed attempts, %" PRIu64 " dropped (%" PRIu64
            " of them after a reply timeout)\n",
            res->conn_failures, res->disconnects, res->timeouts);
    if (res->lost > 0 || res->unfinished > 0)
        fprintf(f,
                "            %" PRIu64 " requests lost with their connection, %" PRIu64
                " unanswered at the end\n",
                res->lost, res->unfinished);
    if (cfg->udp)
        fprintf(f,
                "udp         %" PRIu64
                " UDP timeouts (no whole reply within %d ms), %" PRIu64
                " late replies dropped, %" PRIu64 " send/receive errors\n",
                res->udp_timeouts, cfg->timeout_ms, res->late_replies, res->udp_errors);
    if (res->first_conn_err[0] != '\0')
        fprintf(f, "            first problem: %s\n", res->first_conn_err);
    if (res->all.overflow > 0)
        fprintf(
            f, "            %" PRIu64 " latencies above the histogram's range (68.7 s)\n",
            res->all.overflow);
    if (errs > 0)
        fprintf(f, "WARNING: %.2f%% of the replies were errors (ops/s counts them)\n",
                100.0 * (double)errs / (double)(m->replies ? m->replies : 1));
}

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20 || ch >= 0x7f)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

static void json_lat(FILE *f, const char *name, const struct hist *h)
{
    fprintf(f, ",\"%s\":", name);
    if (h->total == 0) {
        fputs("null", f);
        return;
    }
    fprintf(f,
            "{\"count\":%" PRIu64 ",\"p50\":%.1f,\"p90\":%.1f,\"p99\":%.1f,"
            "\"p99_9\":%.1f,\"max\":%.1f,\"min\":%.1f,\"mean\":%.1f}",
            h->total, (double)hist_percentile(h, 50) / 1000,
            (double)hist_percentile(h, 90) / 1000, (double)hist_percentile(h, 99) / 1000,
            (double)hist_percentile(h, 99.9) / 1000, (double)h->max_ns / 1000,
            (double)h->min_ns / 1000, h->sum_ns / (double)h->total / 1000);
}

static void json_counts(FILE *f, const struct bench_counts *k)
{
    fprintf(f,
            "{\"replies\":%" PRIu64 ",\"sets\":%" PRIu64 ",\"gets\":%" PRIu64
            ",\"hits\":%" PRIu64 ",\"misses\":%" PRIu64 ",\"errors\":{\"total\":%" PRIu64,
            k->replies, k->ok[BENCH_OP_SET], k->ok[BENCH_OP_GET], k->hits, k->misses,
            err_total(k));
    for (unsigned i = 0; i < BENCH_ERR_COUNT; i++)
        fprintf(f, ",\"%s\":%" PRIu64, err_names[i], k->err[i]);
    fputs("}}", f);
}

void bench_print_json(FILE *f, const struct bench_config *cfg,
                      const struct bench_result *res)
{
    const struct bench_counts *m = &res->measured;
    double secs = res->elapsed_s > 0 ? res->elapsed_s : 1;
    const char *dist = cfg->key_dist == BENCH_KEYS_ZIPF ? "zipf" : "uniform";

    fputs("{\"server\":", f);
    json_str(f, cfg->host);
    fprintf(f,
            ",\"port\":%u,\"conns\":%u,\"conns_open\":%u,\"threads\":%u,"
            "\"pipeline\":%u,\"depth\":%u,\"transport\":\"%s\",\"ratio\":\"%u:%u\","
            "\"key_size\":%u,\"value_size\":%u,"
            "\"keys\":%" PRIu64 ",\"key_distribution\":\"%s\",\"dist\":\"%s\","
            "\"zipf_s\":%g,\"preload\":%s,"
            "\"requests_asked\":%" PRIu64 ",\"duration_asked_s\":%.3f,"
            "\"warmup_s\":%.3f,\"preload_s\":%.3f,\"elapsed_s\":%.3f,"
            "\"interrupted\":%s,\"stalled\":%s,",
            cfg->port, cfg->conns, res->conns_up, res->threads, cfg->pipeline,
            cfg->pipeline, cfg->udp ? "udp" : "tcp", cfg->ratio_set, cfg->ratio_get,
            cfg->key_size, cfg->value_size, cfg->keys, dist, dist,
            cfg->key_dist == BENCH_KEYS_ZIPF ? cfg->zipf_s : 0.0,
            cfg->preload ? "true" : "false", cfg->requests,
            cfg->requests ? 0.0 : cfg->duration_s, res->warmup_s, res->preload_s,
            res->elapsed_s, res->interrupted ? "true" : "false",
            res->stalled ? "true" : "false");
    fprintf(f, "\"requests\":%" PRIu64 ",\"ops_per_sec\":%.1f,\"measured\":", m->replies,
            (double)m->replies / secs);
    json_counts(f, m);
    fputs(",\"preloaded\":", f);
    json_counts(f, &res->preload);
    fputs(",\"latency_unit\":\"us\"", f);
    json_lat(f, "latency", &res->all);
    json_lat(f, "set_latency", &res->hist[BENCH_OP_SET]);
    json_lat(f, "get_latency", &res->hist[BENCH_OP_GET]);
    /* The histogram itself, so runs (e.g. parallel processes) can be merged. */
    fputs(",\"latency_histogram\":{\"unit\":\"ns\",\"bucket_top\":[", f);
    for (unsigned i = 0, n = 0; i < HIST_BUCKETS; i++)
        if (res->all.counts[i] > 0)
            fprintf(f, "%s%" PRIu64, n++ ? "," : "", hist_bucket_high(i));
    fputs("],\"count\":[", f);
    for (unsigned i = 0, n = 0; i < HIST_BUCKETS; i++)
        if (res->all.counts[i] > 0)
            fprintf(f, "%s%" PRIu64, n++ ? "," : "", res->all.counts[i]);
    fprintf(f, "],\"max\":%" PRIu64 "}", res->all.total ? res->all.max_ns : 0);
    fprintf(f,
            ",\"conn_failures\":%" PRIu64 ",\"disconnects\":%" PRIu64
            ",\"timeouts\":%" PRIu64 ",\"lost\":%" PRIu64 ",\"unfinished\":%" PRIu64
            ",\"udp_timeouts\":%" PRIu64 ",\"late_replies\":%" PRIu64
            ",\"udp_errors\":%" PRIu64 ",\"latency_overflow\":%" PRIu64,
            res->conn_failures, res->disconnects, res->timeouts, res->lost,
            res->unfinished, res->udp_timeouts, res->late_replies, res->udp_errors,
            res->all.overflow);
    fputs(",\"first_errors\":{", f);
    for (unsigned i = 0, n = 0; i < BENCH_ERR_COUNT; i++) {
        if (res->first_err[i][0] == '\0')
            continue;
        fprintf(f, "%s\"%s\":", n++ ? "," : "", err_names[i]);
        json_str(f, res->first_err[i]);
    }
    fputs("},\"first_connection_problem\":", f);
    if (res->first_conn_err[0] != '\0')
        json_str(f, res->first_conn_err);
    else
        fputs("null", f);
    fputs("}\n", f);
}
