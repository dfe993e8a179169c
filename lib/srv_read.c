/*
 * srv_read.c - a retrieval (get, gets; a gat once its touches are in):
 * each key looked up at the reader's clock, a VALUE line per live item,
 * referencing the item's bytes instead of copying them (outq.h).
 */

#include "srv.h"

/* Answers a retrieval (get, gets; gat and gats once their touches are in). */
int srv_exec_retrieval(struct server *srv, struct conn *c, const struct proto_req *req)
{
    bool with_cas = req->cmd == PROTO_CMD_GETS || req->cmd == PROTO_CMD_GATS;
    struct outq *o = &c->out;
    size_t pos = 0, nk;
    const char *k;
    char hdr[PROTO_VALUE_HDR_MAX];
    int r;

    while (proto_next_key(req, &pos, &k, &nk)) {
        struct item *it;
        srv->counters.cmd_get++;
        it = store_get(srv->store, k, nk, srv->now_ms);
        if (it == NULL) {
            srv->counters.get_misses++;
            continue;
        }
        srv->counters.get_hits++;
        size_t n =
            proto_fmt_value_hdr(hdr, k, nk, it->flags, it->nval, with_cas, it->cas);
        if ((r = outq_text(o, hdr, n)) < 0 || (r = outq_item(o, it)) < 0)
            return r;
    }
    if (log_enabled(LOG_LEVEL_DEBUG)) {
        char ks[96];
        size_t skip = strspn(req->keys, " ");
        log_debug(MOD, "conn %llu: %s %zu key(s): %s", (unsigned long long)c->id,
                  proto_cmd_name(req->cmd), req->nkeys,
                  log_escape(ks, sizeof(ks), req->keys + skip, req->keys_len - skip));
    }
    return reply(o, "END\r\n");
}
