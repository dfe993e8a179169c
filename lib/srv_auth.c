/*
 * srv_auth.c - a connection that has not logged in (--auth-file): its
 * bytes go through proto_parse_auth (memcached's ASCII scheme) until a
 * credentials set matches; failed attempts are counted, logged at most a
 * burst a second, and close it after --max-auth-failures.
 */

#include "srv.h"

/*
 * One request of a connection that has not authenticated (--auth-file; c's
 * thread, lock held): memcached's ASCII authentication, proto_parse_auth().
 * Right credentials: STORED, and the connection runs commands from the next
 * request on. Wrong ones: CLIENT_ERROR authentication failure, logged (the
 * user name, never the password), and the --max-auth-failures'th closes the
 * connection. Anything else: CLIENT_ERROR unauthenticated. Returns 1 with
 * *consumed bytes done, 0 when more bytes are needed (c->need set), or
 * -ENOMEM. A connection that must go gets close_after_flush.
 */
int srv_conn_authenticate(struct conn *c, const char *p, size_t n, size_t *consumed)
{
    struct server *srv = c->srv;
    struct proto_auth a;
    uint64_t dropped = 0;
    char name[96], note[64];
    int r = 0;

    switch (proto_parse_auth(p, n, &a, consumed)) {
    case PROTO_AUTH_NEED_MORE:
        c->need = a.need;
        return 0;
    case PROTO_AUTH_QUIT:
        c->need = 0;
        c->close_after_flush = true;
        return 1;
    case PROTO_AUTH_CLOSE:
        srv->counters.protocol_closes++;
        log_info(MOD, "conn %llu from %s: %s; closing", (unsigned long long)c->id,
                 c->peer, a.error);
        if (a.reply)
            r = reply_line(&c->out, a.reply);
        c->close_after_flush = true;
        *consumed = n;
        return r < 0 ? r : 1;
    case PROTO_AUTH_REFUSE:
        c->need = 0;
        return reply_line(&c->out, a.error) < 0 ? -ENOMEM : 1;
    case PROTO_AUTH_TOKEN:
        break;
    }
    c->need = 0;
    srv->counters.auth_cmds++;
    log_escape(name, sizeof(name), a.user, a.nuser);
    if (auth_check(srv->cfg.auth, a.user, a.nuser, a.pass, a.npass)) {
        c->authed = true;
        log_debug(MOD, "conn %llu from %s: authenticated as %s",
                  (unsigned long long)c->id, c->peer, name);
        return reply(&c->out, "STORED\r\n") < 0 ? -ENOMEM : 1;
    }
    srv->counters.auth_errors++;
    bool last = ++c->auth_failures >= srv->cfg.auth_failures_max;
    if (last) {
        srv->counters.auth_failure_closes++;
        c->close_after_flush = true;
    }
    if (log_limit_allow(&srv->rl_auth, &dropped))
        log_warn(MOD,
                 "conn %llu from %s: authentication failed for user '%s' (attempt %u of "
                 "%u%s)%s",
                 (unsigned long long)c->id, c->peer, name, c->auth_failures,
                 srv->cfg.auth_failures_max, last ? "; closing" : "",
                 log_limit_note(note, sizeof(note), dropped));
    return reply(&c->out, "CLIENT_ERROR authentication failure\r\n") < 0 ? -ENOMEM : 1;
}
