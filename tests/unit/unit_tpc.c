/*
 * unit_tpc.c - the two-phase commit state machine, one transition at a time.
 *
 * A fake environment records what the state machine asks for (messages,
 * log records, resource manager calls, client outcomes); each test feeds it
 * inputs and checks the outputs. Replica 0 is the one under test unless
 * said otherwise; replicas 1 and 2 exist only as message senders.
 */
#include "unit.h"

#include "tpc.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define MAXREC 64

struct fake {
    struct tpc_msg sent[MAXREC];
    size_t nsent;
    int log_types[MAXREC];
    uint64_t log_txids[MAXREC];
    size_t nlog;
    int64_t next_lsn;
    bool log_fails;
    int prepare_result;
    int prepares, commits, aborts, recovered_prepares;
    int dones;
    bool done_committed;
    int done_reason;
    uint32_t done_culprit;
    void *done_client;
};

static struct fake F;

static void f_send(void *ctx, const struct tpc_msg *m)
{
    (void)ctx;
    CU_ASSERT_FATAL(F.nsent < MAXREC);
    F.sent[F.nsent++] = *m;
    F.sent[F.nsent - 1].ops = NULL; /* borrowed: do not keep */
}

static int64_t f_log(void *ctx, enum tpc_log_type type, const struct tpc_txn *t)
{
    (void)ctx;
    if (F.log_fails)
        return -EIO;
    CU_ASSERT_FATAL(F.nlog < MAXREC);
    CU_ASSERT((type == TPC_LOG_PREPARE) == (t->ops != NULL));
    F.log_types[F.nlog] = type;
    F.log_txids[F.nlog++] = t->txid;
    return ++F.next_lsn;
}

static int f_prepare(void *ctx, const struct tpc_txn *t, void **handle)
{
    (void)ctx;
    F.prepares++;
    if (t->recovered)
        F.recovered_prepares++;
    *handle = &F;
    return F.prepare_result;
}

static void f_commit(void *ctx, const struct tpc_txn *t, void *handle)
{
    (void)ctx;
    (void)t;
    CU_ASSERT_PTR_EQUAL(handle, &F);
    F.commits++;
}

static void f_abort(void *ctx, const struct tpc_txn *t, void *handle)
{
    (void)ctx;
    (void)t;
    CU_ASSERT_PTR_EQUAL(handle, &F);
    F.aborts++;
}

static void f_done(void *ctx, void *client, uint64_t txid, bool committed,
                   enum tpc_reason reason, uint32_t culprit)
{
    (void)ctx;
    (void)txid;
    F.dones++;
    F.done_client = client;
    F.done_committed = committed;
    F.done_reason = reason;
    F.done_culprit = culprit;
}

static const struct tpc_env env = {.send = f_send,
                                   .log = f_log,
                                   .prepare = f_prepare,
                                   .commit = f_commit,
                                   .abort = f_abort,
                                   .done = f_done};

#define TIMEOUT 1000
#define RESEND 500
static const char OPS[] = "opaque-ops";

/* Replica self of n (ids 0..n-1), every link up; decide_by_view: a view
 * change settles what a silent member leaves undecided. */
static struct tpc *mk_with(uint32_t self, uint32_t n, bool decide_by_view)
{
    struct tpc_config cfg = {.self = self,
                             .n = n,
                             .epoch = 7,
                             .prepare_timeout_us = TIMEOUT,
                             .resend_us = RESEND,
                             .remembered_max = 4,
                             .decide_by_view = decide_by_view};
    int err;

    memset(&F, 0, sizeof(F));
    for (uint32_t i = 0; i < n; i++)
        cfg.ids[i] = i;
    struct tpc *t = tpc_new(&cfg, &env, &err);
    CU_ASSERT_FATAL(t != NULL);
    for (uint32_t i = 0; i < n; i++)
        tpc_peer(t, i, true, 0);
    return t;
}

static struct tpc *mk(uint32_t self, uint32_t n)
{
    return mk_with(self, n, false);
}

static struct tpc_msg msg(uint8_t type, uint32_t from, uint32_t to, uint64_t txid)
{
    struct tpc_msg m = {.type = type,
                        .from = from,
                        .to = to,
                        .epoch = 7,
                        .view = 1,
                        .txid = txid,
                        .coord = (uint32_t)(txid & 0xff)};
    if (type == TPC_MSG_PREPARE) {
        m.nops = 1;
        m.ops = OPS;
        m.nbytes = sizeof(OPS);
    }
    if (type == TPC_MSG_VOTE)
        m.vote = 1;
    return m;
}

static size_t count_sent(uint8_t type)
{
    size_t n = 0;
    for (size_t i = 0; i < F.nsent; i++)
        n += F.sent[i].type == type;
    return n;
}

static uint64_t begin(struct tpc *t, void *client)
{
    uint32_t culprit;
    uint64_t txid = tpc_next_txid(t, 1000);
    CU_ASSERT_EQUAL_FATAL(tpc_begin(t, txid, 1, OPS, sizeof(OPS), client, 0, &culprit),
                          0);
    return txid;
}

/* ---- coordinator -------------------------------------------------------------- */

static void test_commit_path(void)
{
    struct tpc *t = mk(0, 3);
    int client;
    uint64_t txid = begin(t, &client);
    struct tpc_msg m;

    CU_ASSERT_EQUAL(F.prepares, 1);
    CU_ASSERT_EQUAL(F.nlog, 1);
    CU_ASSERT_EQUAL(F.log_types[0], TPC_LOG_PREPARE);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_PREPARE), 2);
    CU_ASSERT_EQUAL(F.sent[0].nops, 1);
    CU_ASSERT_EQUAL(F.sent[0].epoch, 7);

    m = msg(TPC_MSG_VOTE, 1, 0, txid);
    tpc_receive(t, &m, 1);
    CU_ASSERT_EQUAL(F.nlog, 1); /* not yet: our own vote and 2's are missing */
    tpc_durable(t, 1, 2);       /* our PREPARE: our vote */
    CU_ASSERT_EQUAL(F.nlog, 1);
    m = msg(TPC_MSG_VOTE, 2, 0, txid);
    tpc_receive(t, &m, 3);
    CU_ASSERT_EQUAL_FATAL(F.nlog, 2);
    CU_ASSERT_EQUAL(F.log_types[1], TPC_LOG_COMMIT);
    CU_ASSERT_EQUAL(F.dones, 0); /* the commit point is the durable record */
    CU_ASSERT_EQUAL(tpc_known_outcome(t, txid), TPC_O_PENDING);

    tpc_durable(t, 2, 4);
    CU_ASSERT_EQUAL(F.dones, 1);
    CU_ASSERT(F.done_committed);
    CU_ASSERT_PTR_EQUAL(F.done_client, &client);
    CU_ASSERT_EQUAL(F.commits, 1);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_COMMIT), 2);
    CU_ASSERT_EQUAL(tpc_known_outcome(t, txid), TPC_O_COMMITTED);

    m = msg(TPC_MSG_ACK, 1, 0, txid);
    tpc_receive(t, &m, 5);
    CU_ASSERT_EQUAL(F.nlog, 2);
    tpc_receive(t, &m, 5); /* duplicate ACK */
    m = msg(TPC_MSG_ACK, 2, 0, txid);
    tpc_receive(t, &m, 6);
    CU_ASSERT_EQUAL_FATAL(F.nlog, 3);
    CU_ASSERT_EQUAL(F.log_types[2], TPC_LOG_END);
    tpc_receive(t, &m, 7); /* late ACK after END */

    struct tpc_stats st;
    tpc_get_stats(t, &st);
    CU_ASSERT_EQUAL(st.committed, 1);
    CU_ASSERT_EQUAL(st.active, 0);
    CU_ASSERT_EQUAL(st.prepare_count, 1);
    CU_ASSERT(st.msgs_ignored >= 2);
    CU_ASSERT_EQUAL(F.dones, 1);
    tpc_free(t);
}

static void test_no_vote_aborts(void)
{
    struct tpc *t = mk(0, 3);
    uint64_t txid = begin(t, NULL);
    struct tpc_msg m = msg(TPC_MSG_VOTE, 2, 0, txid);

    m.vote = 0;
    m.reason = TPC_R_BUSY;
    tpc_receive(t, &m, 1);
    CU_ASSERT_EQUAL(F.dones, 1);
    CU_ASSERT(!F.done_committed);
    CU_ASSERT_EQUAL(F.done_reason, TPC_R_BUSY);
    CU_ASSERT_EQUAL(F.done_culprit, 2);
    CU_ASSERT_EQUAL(F.aborts, 1);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_ABORT), 2);
    CU_ASSERT_EQUAL(F.log_types[F.nlog - 1], TPC_LOG_ABORT);
    CU_ASSERT_EQUAL(tpc_known_outcome(t, txid), TPC_O_ABORTED);

    /* Late: our PREPARE turns durable, a YES arrives. Nothing changes. */
    size_t nlog = F.nlog, nsent = F.nsent;
    tpc_durable(t, 1, 2);
    m = msg(TPC_MSG_VOTE, 1, 0, txid);
    tpc_receive(t, &m, 3);
    CU_ASSERT_EQUAL(F.nlog, nlog);
    CU_ASSERT_EQUAL(F.nsent, nsent);
    CU_ASSERT_EQUAL(F.dones, 1);
    CU_ASSERT_EQUAL(F.commits, 0);

    struct tpc_stats st;
    tpc_get_stats(t, &st);
    CU_ASSERT_EQUAL(st.aborted[TPC_R_BUSY], 1);
    tpc_free(t);
}

static void test_timeout_names_silent_peer(void)
{
    struct tpc *t = mk(0, 3);
    uint64_t txid = begin(t, NULL);
    struct tpc_msg m = msg(TPC_MSG_VOTE, 1, 0, txid);

    tpc_receive(t, &m, 1);
    tpc_durable(t, 1, 2);
    tpc_tick(t, TIMEOUT - 1);
    CU_ASSERT_EQUAL(F.dones, 0);
    tpc_tick(t, TIMEOUT);
    CU_ASSERT_EQUAL(F.dones, 1);
    CU_ASSERT_EQUAL(F.done_reason, TPC_R_TIMEOUT);
    CU_ASSERT_EQUAL(F.done_culprit, 2);
    CU_ASSERT_EQUAL(F.aborts, 1);
    tpc_free(t);
}

static void test_peer_down_fails_fast(void)
{
    struct tpc *t = mk(0, 3);
    uint32_t culprit = 99;

    tpc_peer(t, 2, false, 0);
    CU_ASSERT(!tpc_peer_is_up(t, 2));
    CU_ASSERT_EQUAL(
        tpc_begin(t, tpc_next_txid(t, 0), 1, OPS, sizeof(OPS), NULL, 0, &culprit),
        TPC_R_PEER_DOWN);
    CU_ASSERT_EQUAL(culprit, 2);
    CU_ASSERT_EQUAL(F.prepares, 0);
    CU_ASSERT_EQUAL(F.nlog, 0);
    CU_ASSERT_EQUAL(F.dones, 0);

    /* Down while a transaction waits for its vote: abort now. */
    tpc_peer(t, 2, true, 1);
    uint64_t txid = begin(t, NULL);
    struct tpc_msg m = msg(TPC_MSG_VOTE, 2, 0, txid);
    tpc_receive(t, &m, 2);
    tpc_peer(t, 2, false, 3); /* 2 voted: not the culprit */
    CU_ASSERT_EQUAL(F.dones, 0);
    tpc_peer(t, 1, false, 4);
    CU_ASSERT_EQUAL(F.dones, 1);
    CU_ASSERT_EQUAL(F.done_reason, TPC_R_PEER_DOWN);
    CU_ASSERT_EQUAL(F.done_culprit, 1);
    tpc_free(t);
}

static void test_local_no_vote(void)
{
    struct tpc *t = mk(0, 3);
    uint32_t culprit;

    F.prepare_result = TPC_R_NO_MEMORY;
    CU_ASSERT_EQUAL(
        tpc_begin(t, tpc_next_txid(t, 0), 1, OPS, sizeof(OPS), NULL, 0, &culprit),
        TPC_R_NO_MEMORY);
    CU_ASSERT_EQUAL(culprit, 0);
    CU_ASSERT_EQUAL(F.nsent, 0);
    CU_ASSERT_EQUAL(F.nlog, 0);
    CU_ASSERT_EQUAL(F.dones, 0);
    tpc_free(t);
}

static void test_log_failure(void)
{
    struct tpc *t = mk(0, 3);
    uint32_t culprit;

    F.log_fails = true;
    CU_ASSERT_EQUAL(
        tpc_begin(t, tpc_next_txid(t, 0), 1, OPS, sizeof(OPS), NULL, 0, &culprit),
        TPC_R_LOG_FAILED);
    CU_ASSERT_EQUAL(F.prepares, 1);
    CU_ASSERT_EQUAL(F.aborts, 1);
    CU_ASSERT_EQUAL(F.nsent, 0);

    /* As a participant: vote no. */
    struct tpc_msg m = msg(TPC_MSG_PREPARE, 1, 0, (5 << 8) | 1);
    tpc_receive(t, &m, 1);
    CU_ASSERT_EQUAL_FATAL(F.nsent, 1);
    CU_ASSERT_EQUAL(F.sent[0].type, TPC_MSG_VOTE);
    CU_ASSERT_EQUAL(F.sent[0].vote, 0);
    CU_ASSERT_EQUAL(F.sent[0].reason, TPC_R_LOG_FAILED);
    tpc_free(t);
}

static void test_log_fails_at_commit_point(void)
{
    struct tpc *t = mk(0, 2);
    uint64_t txid = begin(t, NULL);
    struct tpc_msg m = msg(TPC_MSG_VOTE, 1, 0, txid);

    tpc_receive(t, &m, 1);
    tpc_durable(t, 1, 2);
    CU_ASSERT_EQUAL(F.log_types[F.nlog - 1], TPC_LOG_COMMIT);
    tpc_log_failed(t, 3, false);
    /* The log could not be cut back: the client hears the outcome is
     * unknown; no ABORT goes out (the COMMIT may be on disk), and the
     * outcome stays pending for queries. */
    CU_ASSERT_EQUAL(F.dones, 1);
    CU_ASSERT(!F.done_committed);
    CU_ASSERT_EQUAL(F.done_reason, TPC_R_UNKNOWN);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_ABORT), 0);
    CU_ASSERT_EQUAL(tpc_known_outcome(t, txid), TPC_O_PENDING);
    tpc_free(t);
}

/* Found by review: a log failure at the commit point told the client "not
 * committed" while the COMMIT record could be on disk (a retried incr then
 * applied twice once the replica restarted), and left the keys locked on
 * every replica until then. Once the log is cut back to its last durable
 * record, the COMMIT is known not to be on disk: it is an abort, said so,
 * and every participant is told. */
static void test_log_fails_at_commit_point_rolled_back(void)
{
    struct tpc *t = mk(0, 3);
    uint64_t txid = begin(t, NULL);
    struct tpc_msg m = msg(TPC_MSG_VOTE, 1, 0, txid);

    tpc_receive(t, &m, 1);
    m = msg(TPC_MSG_VOTE, 2, 0, txid);
    tpc_receive(t, &m, 1);
    tpc_durable(t, 1, 2);
    CU_ASSERT_EQUAL(F.log_types[F.nlog - 1], TPC_LOG_COMMIT);
    tpc_log_failed(t, 3, true);
    CU_ASSERT_EQUAL(F.dones, 1);
    CU_ASSERT(!F.done_committed);
    CU_ASSERT_EQUAL(F.done_reason, TPC_R_LOG_FAILED);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_ABORT), 2);
    CU_ASSERT_EQUAL(F.aborts, 1); /* our own prepare released */
    CU_ASSERT_EQUAL(F.commits, 0);
    CU_ASSERT_EQUAL(tpc_known_outcome(t, txid), TPC_O_ABORTED);
    tpc_log_failed(t, 4, true); /* reported again per failed batch: nothing more */
    CU_ASSERT_EQUAL(F.dones, 1);
    tpc_free(t);
}

/* Found by tests/chaos/chaos.py (full disk): the log reports a failure once per
 * failed batch, and the second report told a committing transaction's
 * client again, with client NULL (serve crashed in env_done). */
static void test_log_failure_reported_twice(void)
{
    struct tpc *t = mk(0, 2);
    int client;
    uint64_t txid = begin(t, &client);
    struct tpc_msg m = msg(TPC_MSG_VOTE, 1, 0, txid);

    tpc_receive(t, &m, 1);
    tpc_durable(t, 1, 2);
    CU_ASSERT_EQUAL(F.log_types[F.nlog - 1], TPC_LOG_COMMIT);
    tpc_log_failed(t, 3, false);
    CU_ASSERT_EQUAL(F.dones, 1);
    CU_ASSERT_PTR_EQUAL(F.done_client, &client);
    tpc_log_failed(t, 4, false);
    tpc_log_failed(t, 5, false);
    CU_ASSERT_EQUAL(F.dones, 1);
    CU_ASSERT_PTR_EQUAL(F.done_client, &client);
    CU_ASSERT_EQUAL(tpc_known_outcome(t, txid), TPC_O_PENDING);
    tpc_free(t);
}

static void test_single_replica(void)
{
    struct tpc *t = mk(0, 1);
    uint64_t txid = begin(t, NULL);

    CU_ASSERT_EQUAL(F.nsent, 0);
    tpc_durable(t, 1, 1);
    CU_ASSERT_EQUAL(F.log_types[1], TPC_LOG_COMMIT);
    tpc_durable(t, 2, 2);
    CU_ASSERT_EQUAL(F.dones, 1);
    CU_ASSERT(F.done_committed);
    CU_ASSERT_EQUAL(F.log_types[2], TPC_LOG_END);
    CU_ASSERT_EQUAL(tpc_known_outcome(t, txid), TPC_O_COMMITTED);
    tpc_free(t);
}

static void test_txids(void)
{
    struct tpc *t = mk(3, 4);
    uint64_t a = tpc_next_txid(t, 5000);
    uint64_t b = tpc_next_txid(t, 10); /* clock went back: still increasing */
    uint64_t c = tpc_next_txid(t, 9000);

    CU_ASSERT_EQUAL(a & 0xff, 3);
    CU_ASSERT_EQUAL(a >> 8, 5000);
    CU_ASSERT(b > a);
    CU_ASSERT_EQUAL(c >> 8, 9000);
    tpc_set_min_txid(t, (100000ull << 8) | 1);
    CU_ASSERT(tpc_next_txid(t, 0) >> 8 > 100000);
    tpc_free(t);
}

/* Found by review: a snapshot recorded only the ids this process had
 * handed out (and the store's highest cas), not the floor recovery had
 * set from the log. Restart, snapshot with no write, restart: a replica
 * whose ids had run ahead of its clock (raised past a faster peer's ids)
 * could hand out an id it had logged and committed before - two writes
 * with one cas unique, so a stale cas could succeed. */
static void test_txid_floor_survives_a_restart_without_writes(void)
{
    struct tpc *t = mk(2, 3);
    uint64_t logged = (5000000ull << 8) | 2; /* in the log, ahead of the clock */

    tpc_set_min_txid(t, logged + 1);
    CU_ASSERT(tpc_txid_floor(t) > logged); /* what the next snapshot records */
    tpc_free(t);

    /* The next incarnation starts from that floor, its clock far behind. */
    t = mk(2, 3);
    tpc_set_min_txid(t, (5000000ull << 8) | 3);
    CU_ASSERT(tpc_next_txid(t, 1000) > logged);
    CU_ASSERT(tpc_txid_floor(t) > logged);
    tpc_free(t);

    /* And once it hands ids out, the floor is past them. */
    t = mk(2, 3);
    uint64_t id = tpc_next_txid(t, 777);
    CU_ASSERT(tpc_txid_floor(t) > id);
    tpc_free(t);
}

/* Found by review: after a participant's log failed, the ACK of a commit
 * it had applied could never become durable, the forgetting of remembered
 * decisions stopped at it, and every later decision was kept (the table
 * grew without bound). It must stay bounded, and the commit must not be
 * acknowledged: its record is not durable here. */
static void test_remembered_bounded_after_log_failure(void)
{
    struct tpc *t = mk(0, 3);
    uint64_t a = (42 << 8) | 1;
    struct tpc_msg m = msg(TPC_MSG_PREPARE, 1, 0, a);
    struct tpc_stats st;

    tpc_receive(t, &m, 0);
    tpc_durable(t, 1, 1); /* YES */
    m = msg(TPC_MSG_COMMIT, 1, 0, a);
    tpc_receive(t, &m, 2); /* applied; its COMMIT record never becomes durable */
    CU_ASSERT_EQUAL(F.commits, 1);
    tpc_log_failed(t, 3, false);
    for (uint64_t i = 100; i < 10100; i++) {
        struct tpc_msg x = msg(TPC_MSG_ABORT, 1, 0, (i << 8) | 1);
        tpc_receive(t, &x, 4 + i);
    }
    tpc_get_stats(t, &st);
    CU_ASSERT(st.remembered <= 4 + 1);
    CU_ASSERT_EQUAL(tpc_known_outcome(t, (100 << 8) | 1), TPC_O_UNKNOWN);
    /* The coordinator resends the COMMIT: no ACK from a failed log. */
    size_t acks = count_sent(TPC_MSG_ACK);
    tpc_receive(t, &m, 20000);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_ACK), acks);
    tpc_free(t);
}

/* ---- participant -------------------------------------------------------------- */

static void test_participant_commit(void)
{
    struct tpc *t = mk(0, 3);
    uint64_t txid = (42 << 8) | 1;
    struct tpc_msg m = msg(TPC_MSG_PREPARE, 1, 0, txid);

    tpc_receive(t, &m, 0);
    CU_ASSERT_EQUAL(F.prepares, 1);
    CU_ASSERT_EQUAL(F.log_types[0], TPC_LOG_PREPARE);
    CU_ASSERT_EQUAL(F.nsent, 0); /* no vote before the record is durable */
    tpc_receive(t, &m, 1);       /* duplicate while preparing */
    CU_ASSERT_EQUAL(F.prepares, 1);
    CU_ASSERT_EQUAL(F.nsent, 0);

    tpc_durable(t, 1, 2);
    CU_ASSERT_EQUAL_FATAL(F.nsent, 1);
    CU_ASSERT_EQUAL(F.sent[0].type, TPC_MSG_VOTE);
    CU_ASSERT_EQUAL(F.sent[0].vote, 1);
    CU_ASSERT_EQUAL(F.sent[0].to, 1);
    tpc_receive(t, &m, 3); /* duplicate after voting: vote again */
    CU_ASSERT_EQUAL(F.prepares, 1);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_VOTE), 2);

    m = msg(TPC_MSG_COMMIT, 1, 0, txid);
    tpc_receive(t, &m, 4);
    CU_ASSERT_EQUAL(F.commits, 1);
    CU_ASSERT_EQUAL(F.log_types[1], TPC_LOG_COMMIT);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_ACK), 0); /* forced first */
    tpc_receive(t, &m, 5);                       /* duplicate COMMIT, not durable yet */
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_ACK), 0);
    tpc_durable(t, 2, 6);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_ACK), 1);
    tpc_receive(t, &m, 7); /* duplicate COMMIT: ACK again */
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_ACK), 2);
    CU_ASSERT_EQUAL(F.commits, 1);

    /* COMMIT of a txid never seen: committed and forgotten, ACK it. */
    m = msg(TPC_MSG_COMMIT, 1, 0, (43 << 8) | 1);
    tpc_receive(t, &m, 8);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_ACK), 3);
    CU_ASSERT_EQUAL(F.commits, 1);
    tpc_free(t);
}

static void test_participant_votes_no(void)
{
    struct tpc *t = mk(0, 3);
    struct tpc_msg m = msg(TPC_MSG_PREPARE, 2, 0, (9 << 8) | 2);

    F.prepare_result = TPC_R_BUSY;
    tpc_receive(t, &m, 0);
    CU_ASSERT_EQUAL_FATAL(F.nsent, 1);
    CU_ASSERT_EQUAL(F.sent[0].vote, 0);
    CU_ASSERT_EQUAL(F.sent[0].reason, TPC_R_BUSY);
    CU_ASSERT_EQUAL(F.nlog, 0);
    /* A repeat is not prepared again (the lock may be free by now, but
     * the coordinator has aborted). */
    F.prepare_result = 0;
    tpc_receive(t, &m, 1);
    CU_ASSERT_EQUAL(F.prepares, 1);
    CU_ASSERT_EQUAL(F.nlog, 0);
    tpc_free(t);
}

static void test_abort_overtakes_prepare(void)
{
    struct tpc *t = mk(0, 3);
    uint64_t txid = (11 << 8) | 1;
    struct tpc_msg m = msg(TPC_MSG_ABORT, 1, 0, txid);

    tpc_receive(t, &m, 0);
    m = msg(TPC_MSG_PREPARE, 1, 0, txid);
    tpc_receive(t, &m, 1);
    CU_ASSERT_EQUAL(F.prepares, 0);
    CU_ASSERT_EQUAL(F.nlog, 0);
    CU_ASSERT_EQUAL(tpc_known_outcome(t, txid), TPC_O_ABORTED);
    tpc_free(t);
}

static void test_reused_txid_votes_no(void)
{
    struct tpc *t = mk(0, 3);
    uint64_t txid = (30 << 8) | 1;
    struct tpc_msg m = msg(TPC_MSG_PREPARE, 1, 0, txid);
    static const char other[] = "other-ops";

    /* Prepared and voted for the first use of the id. */
    tpc_receive(t, &m, 0);
    tpc_durable(t, 1, 0);
    CU_ASSERT_EQUAL(F.sent[F.nsent - 1].vote, 1);
    /* The coordinator restarted and reused the id for other operations. */
    m.ops = other;
    m.nbytes = sizeof(other);
    tpc_receive(t, &m, 1);
    CU_ASSERT_EQUAL(F.sent[F.nsent - 1].type, TPC_MSG_VOTE);
    CU_ASSERT_EQUAL(F.sent[F.nsent - 1].vote, 0);
    CU_ASSERT_EQUAL(F.sent[F.nsent - 1].reason, TPC_R_CONFLICT);
    CU_ASSERT_EQUAL(F.prepares, 1);
    CU_ASSERT_EQUAL(F.aborts, 0); /* voted: it waits for the outcome */

    /* Not yet voted: the old prepare is dropped, its YES never sent. */
    uint64_t txid2 = (31 << 8) | 1;
    m = msg(TPC_MSG_PREPARE, 1, 0, txid2);
    tpc_receive(t, &m, 2);
    m.ops = other;
    m.nbytes = sizeof(other);
    tpc_receive(t, &m, 3);
    CU_ASSERT_EQUAL(F.aborts, 1);
    size_t votes = count_sent(TPC_MSG_VOTE);
    tpc_durable(t, 2, 4);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_VOTE), votes);
    tpc_free(t);
}

static void test_participant_abort(void)
{
    struct tpc *t = mk(0, 3);
    uint64_t txid = (12 << 8) | 1;
    struct tpc_msg m = msg(TPC_MSG_PREPARE, 1, 0, txid);

    tpc_receive(t, &m, 0);
    tpc_durable(t, 1, 1);
    m = msg(TPC_MSG_ABORT, 1, 0, txid);
    tpc_receive(t, &m, 2);
    CU_ASSERT_EQUAL(F.aborts, 1);
    CU_ASSERT_EQUAL(F.log_types[1], TPC_LOG_ABORT);
    tpc_receive(t, &m, 3); /* duplicate */
    CU_ASSERT_EQUAL(F.aborts, 1);
    m = msg(TPC_MSG_COMMIT, 1, 0, txid); /* impossible, and ignored */
    tpc_receive(t, &m, 4);
    CU_ASSERT_EQUAL(F.commits, 0);
    tpc_free(t);
}

static void test_in_doubt_queries(void)
{
    struct tpc *t = mk(0, 3);
    uint64_t txid = (13 << 8) | 1;
    struct tpc_msg m = msg(TPC_MSG_PREPARE, 1, 0, txid);
    struct tpc_stats st;

    tpc_receive(t, &m, 0);
    tpc_durable(t, 1, 0);
    tpc_tick(t, TIMEOUT - 1);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_QUERY), 0);
    tpc_tick(t, TIMEOUT);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_QUERY), 2); /* coordinator and replica 2 */
    tpc_get_stats(t, &st);
    CU_ASSERT_EQUAL(st.in_doubt, 1);
    tpc_tick(t, TIMEOUT + RESEND);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_QUERY), 4);

    /* Replica 2 knows nothing: that decides nothing. */
    m = msg(TPC_MSG_ANSWER, 2, 0, txid);
    m.outcome = TPC_O_UNKNOWN;
    tpc_receive(t, &m, TIMEOUT + RESEND + 1);
    CU_ASSERT_EQUAL(F.aborts + F.commits, 0);
    m.outcome = TPC_O_PENDING;
    m.from = 1;
    tpc_receive(t, &m, TIMEOUT + RESEND + 2);
    CU_ASSERT_EQUAL(F.aborts + F.commits, 0);
    /* The coordinator has no record: presumed abort. */
    m.outcome = TPC_O_UNKNOWN;
    tpc_receive(t, &m, TIMEOUT + RESEND + 3);
    CU_ASSERT_EQUAL(F.aborts, 1);
    tpc_get_stats(t, &st);
    CU_ASSERT_EQUAL(st.in_doubt, 0);
    CU_ASSERT_EQUAL(st.resolved_by_query, 1);
    tpc_free(t);
}

static void test_cooperative_termination(void)
{
    struct tpc *t = mk(0, 3);
    uint64_t txid = (14 << 8) | 1;
    struct tpc_msg m = msg(TPC_MSG_PREPARE, 1, 0, txid);

    tpc_receive(t, &m, 0);
    tpc_durable(t, 1, 0);
    tpc_peer(t, 1, false, 1); /* the coordinator is gone */
    tpc_tick(t, TIMEOUT);
    m = msg(TPC_MSG_ANSWER, 2, 0, txid); /* replica 2 got the COMMIT */
    m.outcome = TPC_O_COMMITTED;
    tpc_receive(t, &m, TIMEOUT + 1);
    CU_ASSERT_EQUAL(F.commits, 1);
    tpc_durable(t, 2, TIMEOUT + 2);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_ACK), 1); /* to the coordinator, for later */
    tpc_free(t);
}

static void test_answers_queries(void)
{
    struct tpc *t = mk(0, 3);
    uint64_t txid = begin(t, NULL);
    struct tpc_msg q = msg(TPC_MSG_QUERY, 1, 0, txid);

    tpc_receive(t, &q, 1);
    CU_ASSERT_EQUAL(F.sent[F.nsent - 1].type, TPC_MSG_ANSWER);
    CU_ASSERT_EQUAL(F.sent[F.nsent - 1].outcome, TPC_O_PENDING);

    struct tpc_msg v = msg(TPC_MSG_VOTE, 1, 0, txid);
    tpc_receive(t, &v, 2);
    v.from = 2;
    tpc_receive(t, &v, 2);
    tpc_durable(t, 1, 3);
    tpc_durable(t, 2, 3);
    tpc_receive(t, &q, 4);
    CU_ASSERT_EQUAL(F.sent[F.nsent - 1].outcome, TPC_O_COMMITTED);

    q.txid = (999 << 8) | 0; /* never begun */
    tpc_receive(t, &q, 5);
    CU_ASSERT_EQUAL(F.sent[F.nsent - 1].outcome, TPC_O_UNKNOWN);
    tpc_free(t);
}

/* ---- a replica whose log lost records (issue 15, found 9) -------------------- */

/* The txids the tests below treat as possibly lost: all they use but the
 * ones from 1000 << 8 on. */
#define LOST_BEFORE ((uint64_t)1000 << 8)

static struct tpc_msg answer(uint32_t from, uint64_t txid, uint8_t outcome)
{
    struct tpc_msg m = msg(TPC_MSG_ANSWER, from, 0, txid);

    m.outcome = outcome;
    return m;
}

static size_t last_of(uint8_t type)
{
    for (size_t i = F.nsent; i-- > 0;)
        if (F.sent[i].type == type)
            return i;
    return SIZE_MAX;
}

/* Found by review: a participant that lost a durable record (--fsync none
 * and a power loss) ACKed a COMMIT it had no record of, as "committed and
 * forgotten"; the coordinator then forgot it, and the write was missing on
 * that replica for good. After a loss it does not, and says LOST, not
 * UNKNOWN, of txids it does not know. */
static void test_lost_history_no_ack_and_says_lost(void)
{
    struct tpc *t = mk(0, 3);
    struct tpc_msg m;
    struct tpc_stats st;

    tpc_history_lost(t, LOST_BEFORE);
    tpc_recovered(t, 0);
    m = msg(TPC_MSG_COMMIT, 1, 0, (77 << 8) | 1);
    tpc_receive(t, &m, 1);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_ACK), 0);
    tpc_get_stats(t, &st);
    CU_ASSERT_EQUAL(st.commits_refused, 1);
    m = msg(TPC_MSG_QUERY, 2, 0, (77 << 8) | 1);
    tpc_receive(t, &m, 2);
    CU_ASSERT_EQUAL_FATAL(F.nsent, 1);
    CU_ASSERT_EQUAL(F.sent[0].type, TPC_MSG_ANSWER);
    CU_ASSERT_EQUAL(F.sent[0].outcome, TPC_O_LOST);
    tpc_free(t);
}

/* Found by review: a coordinator that lost its COMMIT record presumed its
 * own prepared transaction aborted at restart, while participants that had
 * the COMMIT had applied it. After a loss it asks instead: a COMMITTED
 * answer commits (and every replica is told); an abort needs every other
 * replica to hold it prepared (PENDING). */
static void test_lost_coordinator_asks_before_deciding(void)
{
    uint64_t txid = (50 << 8) | 0;
    struct tpc_txn txn = {.txid = txid,
                          .epoch = 7,
                          .coord = 0,
                          .nops = 1,
                          .ops = OPS,
                          .nbytes = sizeof(OPS)};
    struct tpc_msg a;

    /* Everybody else still holds it prepared: nobody applied it. */
    struct tpc *t = mk(0, 3);
    tpc_history_lost(t, LOST_BEFORE);
    CU_ASSERT_EQUAL_FATAL(tpc_recover_prepared(t, &txn, 0), 0);
    tpc_recovered(t, 0);
    CU_ASSERT_EQUAL(F.aborts, 0); /* not presumed */
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_ABORT), 0);
    tpc_tick(t, 1);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_QUERY), 2);
    a = answer(1, txid, TPC_O_PENDING);
    tpc_receive(t, &a, 2);
    CU_ASSERT_EQUAL(F.aborts, 0); /* one answer is not all */
    a = answer(2, txid, TPC_O_UNKNOWN);
    tpc_receive(t, &a, 3);
    CU_ASSERT_EQUAL(F.aborts, 0); /* UNKNOWN may be a commit forgotten */
    /* Found by the third audit: LOST counted as "not applied", but that
     * replica may have applied it and lost the record, or forgotten it. */
    a = answer(2, txid, TPC_O_LOST);
    tpc_receive(t, &a, 4);
    CU_ASSERT_EQUAL(F.aborts, 0);
    a = answer(2, txid, TPC_O_PENDING);
    tpc_receive(t, &a, 5);
    CU_ASSERT_EQUAL(F.aborts, 1);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_ABORT), 2);
    CU_ASSERT_EQUAL(tpc_known_outcome(t, txid), TPC_O_ABORTED);
    tpc_free(t);

    /* Replica 2 has it committed: commit, COMMIT logged, every one told. */
    t = mk(0, 3);
    tpc_history_lost(t, LOST_BEFORE);
    CU_ASSERT_EQUAL_FATAL(tpc_recover_prepared(t, &txn, 0), 0);
    tpc_recovered(t, 0);
    a = answer(1, txid, TPC_O_PENDING);
    tpc_receive(t, &a, 2);
    a = answer(2, txid, TPC_O_COMMITTED);
    tpc_receive(t, &a, 3);
    /* Replica 2 holds the decision durably: applied at once, the record
     * logged again, every replica told; no client waits. */
    CU_ASSERT_EQUAL(F.commits, 1);
    CU_ASSERT_EQUAL(F.log_types[F.nlog - 1], TPC_LOG_COMMIT);
    CU_ASSERT_EQUAL(F.dones, 0);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_COMMIT), 2);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_ABORT), 0);
    CU_ASSERT_EQUAL(tpc_known_outcome(t, txid), TPC_O_COMMITTED);
    /* Resent until every replica ACKs, then forgotten as committed. */
    tpc_tick(t, 3 + RESEND);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_COMMIT), 4);
    struct tpc_msg k = msg(TPC_MSG_ACK, 1, 0, txid);
    tpc_receive(t, &k, 5);
    k.from = 2;
    tpc_receive(t, &k, 6);
    tpc_tick(t, 6 + 2 * RESEND);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_COMMIT), 4);
    CU_ASSERT_EQUAL(tpc_known_outcome(t, txid), TPC_O_COMMITTED);
    tpc_free(t);

    /* Found by the second audit: the log fails as the COMMIT is logged again.
     * The decision stands (replica 2 holds it): no ABORT, ever. */
    t = mk(0, 3);
    tpc_history_lost(t, LOST_BEFORE);
    CU_ASSERT_EQUAL_FATAL(tpc_recover_prepared(t, &txn, 0), 0);
    tpc_recovered(t, 0);
    F.log_fails = true;
    a = answer(2, txid, TPC_O_COMMITTED);
    tpc_receive(t, &a, 3);
    CU_ASSERT_EQUAL(F.commits, 1);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_COMMIT), 2);
    a = answer(1, txid, TPC_O_PENDING);
    tpc_receive(t, &a, 4);
    tpc_tick(t, 4 + 4 * RESEND);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_ABORT), 0);
    CU_ASSERT_EQUAL(F.aborts, 0);
    CU_ASSERT_EQUAL(tpc_known_outcome(t, txid), TPC_O_COMMITTED);
    tpc_free(t);

    /* Without a loss: presumed aborted at once, as before. */
    t = mk(0, 3);
    CU_ASSERT_EQUAL_FATAL(tpc_recover_prepared(t, &txn, 0), 0);
    tpc_recovered(t, 0);
    CU_ASSERT_EQUAL(F.aborts, 1);
    tpc_free(t);
}

/* Found by the second audit: a participant in doubt aborted when its
 * coordinator, after a loss, answered LOST and the other participant
 * PENDING; but that PENDING was sent before a COMMIT in flight reached it
 * (the coordinator committed before the loss), so the write was applied on
 * one replica and aborted on another. A participant no longer aborts on
 * such answers; only the coordinator does (its new links are the fence). */
static void test_in_doubt_after_a_loss(void)
{
    uint64_t txid = (60 << 8) | 1;
    struct tpc_txn txn = {.txid = txid,
                          .epoch = 7,
                          .coord = 1,
                          .nops = 1,
                          .ops = OPS,
                          .nbytes = sizeof(OPS)};
    struct tpc_msg a;

    struct tpc *t = mk(0, 3);
    CU_ASSERT_EQUAL_FATAL(tpc_recover_prepared(t, &txn, 0), 0);
    tpc_recovered(t, 0);
    a = answer(2, txid, TPC_O_PENDING); /* stale: the COMMIT is on its way to 2 */
    tpc_receive(t, &a, 1);
    a = answer(1, txid, TPC_O_LOST); /* the coordinator lost it */
    tpc_receive(t, &a, 2);
    tpc_tick(t, 2 + 4 * RESEND);
    CU_ASSERT_EQUAL(F.aborts, 0);
    CU_ASSERT_EQUAL(F.commits, 0);
    a = answer(2, txid, TPC_O_COMMITTED); /* 2 has it now */
    tpc_receive(t, &a, 3 + 4 * RESEND);
    CU_ASSERT_EQUAL(F.commits, 1);
    tpc_free(t);

    /* The coordinator's ABORT settles it. */
    t = mk(0, 3);
    CU_ASSERT_EQUAL_FATAL(tpc_recover_prepared(t, &txn, 0), 0);
    tpc_recovered(t, 0);
    a = answer(1, txid, TPC_O_ABORTED);
    tpc_receive(t, &a, 1);
    CU_ASSERT_EQUAL(F.aborts, 1);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_ABORT), 0); /* not ours to announce */
    tpc_free(t);

    /* One that lost its own history does not take the coordinator's UNKNOWN
     * as an abort (its lost ACK may have let the coordinator forget a
     * commit). */
    t = mk(0, 3);
    tpc_history_lost(t, LOST_BEFORE);
    CU_ASSERT_EQUAL_FATAL(tpc_recover_prepared(t, &txn, 0), 0);
    tpc_recovered(t, 0);
    a = answer(1, txid, TPC_O_UNKNOWN);
    tpc_receive(t, &a, 1);
    CU_ASSERT_EQUAL(F.aborts, 0); /* not presumed: our ACK may be the lost part */
    a = answer(2, txid, TPC_O_COMMITTED);
    tpc_receive(t, &a, 2);
    CU_ASSERT_EQUAL(F.commits, 1);
    tpc_free(t);
}

/* A coordinator after a loss, asked about one of its own txids it has no
 * record of at all (its PREPARE was lost too, while participants hold it
 * prepared): it answers LOST and settles it by asking everyone. */
static void test_lost_coordinator_settles_a_ghost(void)
{
    uint64_t txid = (80 << 8) | 0;
    struct tpc_msg q = msg(TPC_MSG_QUERY, 1, 0, txid), a;
    struct tpc_stats st;

    /* Every other replica holds it prepared: abort. */
    struct tpc *t = mk(0, 3);
    tpc_history_lost(t, LOST_BEFORE);
    tpc_recovered(t, 0);
    tpc_receive(t, &q, 1);
    CU_ASSERT_EQUAL(F.sent[last_of(TPC_MSG_ANSWER)].outcome, TPC_O_LOST);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_QUERY), 2);
    tpc_get_stats(t, &st);
    CU_ASSERT_EQUAL(st.in_doubt, 1);
    tpc_receive(t, &q, 2); /* asked again: no second settling */
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_QUERY), 2);
    CU_ASSERT_EQUAL(F.sent[last_of(TPC_MSG_ANSWER)].outcome, TPC_O_LOST);
    a = answer(1, txid, TPC_O_PENDING);
    tpc_receive(t, &a, 3);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_ABORT), 0);
    a = answer(2, txid, TPC_O_LOST); /* 2 lost its log too: it may have applied it */
    tpc_receive(t, &a, 4);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_ABORT), 0);
    CU_ASSERT_EQUAL(tpc_known_outcome(t, txid), TPC_O_LOST);
    a = answer(2, txid, TPC_O_PENDING);
    tpc_receive(t, &a, 5);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_ABORT), 2);
    CU_ASSERT_EQUAL(F.aborts, 0); /* nothing was held here */
    CU_ASSERT_EQUAL(F.nlog, 0);   /* nor logged */
    CU_ASSERT_EQUAL(tpc_known_outcome(t, txid), TPC_O_ABORTED);
    tpc_free(t);

    /* Replica 2 applied it: commit, every replica told, nothing applied or
     * logged here (no record to apply; its value comes with catch-up). */
    t = mk(0, 3);
    tpc_history_lost(t, LOST_BEFORE);
    tpc_recovered(t, 0);
    tpc_receive(t, &q, 1);
    a = answer(2, txid, TPC_O_COMMITTED);
    tpc_receive(t, &a, 2);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_COMMIT), 2);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_ABORT), 0);
    CU_ASSERT_EQUAL(F.commits, 0);
    CU_ASSERT_EQUAL(tpc_known_outcome(t, txid), TPC_O_COMMITTED);
    tpc_free(t);

    /* Not ours, or not possibly lost: plain UNKNOWN, nothing started. */
    t = mk(0, 3);
    tpc_history_lost(t, LOST_BEFORE);
    tpc_recovered(t, 0);
    q = msg(TPC_MSG_QUERY, 2, 0, (80 << 8) | 1);
    tpc_receive(t, &q, 1);
    CU_ASSERT_EQUAL(F.sent[last_of(TPC_MSG_ANSWER)].outcome, TPC_O_LOST);
    q = msg(TPC_MSG_QUERY, 1, 0, LOST_BEFORE);
    tpc_receive(t, &q, 2);
    CU_ASSERT_EQUAL(F.sent[last_of(TPC_MSG_ANSWER)].outcome, TPC_O_UNKNOWN);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_QUERY), 0);
    tpc_free(t);
}

/* Found by the third audit: with a power cut on two replicas, one that
 * recovered a PREPARE (its COMMIT record lost after it applied the write)
 * answered PENDING, which let the coordinator abort a write another replica
 * applied. It answers LOST: its record may be incomplete. And a lost txid
 * of ours is never handed out again (nor any below the bound). */
static void test_lost_history_prepared_says_lost(void)
{
    uint64_t txid = (90 << 8) | 1;
    struct tpc_txn txn = {.txid = txid,
                          .epoch = 7,
                          .coord = 1,
                          .nops = 1,
                          .ops = OPS,
                          .nbytes = sizeof(OPS)};
    struct tpc_msg q = msg(TPC_MSG_QUERY, 1, 0, txid);

    struct tpc *t = mk(0, 3);
    tpc_history_lost(t, LOST_BEFORE);
    CU_ASSERT_EQUAL_FATAL(tpc_recover_prepared(t, &txn, 0), 0);
    tpc_recovered(t, 0);
    tpc_receive(t, &q, 1);
    CU_ASSERT_EQUAL(F.sent[last_of(TPC_MSG_ANSWER)].outcome, TPC_O_LOST);
    CU_ASSERT(tpc_next_txid(t, 5) > LOST_BEFORE);
    CU_ASSERT_EQUAL(tpc_next_txid(t, 5) & 0xff, 0);
    tpc_free(t);

    /* Without a loss: PENDING, as before. */
    t = mk(0, 3);
    CU_ASSERT_EQUAL_FATAL(tpc_recover_prepared(t, &txn, 0), 0);
    tpc_recovered(t, 0);
    tpc_receive(t, &q, 1);
    CU_ASSERT_EQUAL(F.sent[last_of(TPC_MSG_ANSWER)].outcome, TPC_O_PENDING);
    tpc_free(t);
}

/* Found by the second audit: after a loss every unknown txid was LOST and
 * every unknown COMMIT refused, for good, also those decided after the
 * restart, which nothing lost. Only txids below the bound are doubted. */
static void test_lost_history_is_bounded(void)
{
    struct tpc *t = mk(0, 3);
    struct tpc_msg m;

    tpc_history_lost(t, LOST_BEFORE);
    tpc_recovered(t, 0);
    m = msg(TPC_MSG_COMMIT, 1, 0, LOST_BEFORE | 1); /* committed and forgotten here */
    tpc_receive(t, &m, 1);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_ACK), 1);
    m = msg(TPC_MSG_QUERY, 2, 0, LOST_BEFORE | 1);
    tpc_receive(t, &m, 2);
    CU_ASSERT_EQUAL(F.sent[last_of(TPC_MSG_ANSWER)].outcome, TPC_O_UNKNOWN);
    m = msg(TPC_MSG_COMMIT, 1, 0, (LOST_BEFORE - 256) | 1);
    tpc_receive(t, &m, 3);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_ACK), 1);
    tpc_free(t);

    /* A prepare recovered above the bound is settled as without a loss:
     * ours, presumed aborted at once. */
    uint64_t txid = LOST_BEFORE | 0;
    struct tpc_txn txn = {.txid = txid,
                          .epoch = 7,
                          .coord = 0,
                          .nops = 1,
                          .ops = OPS,
                          .nbytes = sizeof(OPS)};
    t = mk(0, 3);
    tpc_history_lost(t, LOST_BEFORE);
    CU_ASSERT_EQUAL_FATAL(tpc_recover_prepared(t, &txn, 0), 0);
    tpc_recovered(t, 0);
    CU_ASSERT_EQUAL(F.aborts, 1);
    tpc_free(t);
}

/* Decisions replayed from the log are remembered across a restart, so a
 * QUERY is answered from them and a resent COMMIT is ACKed. */
static void test_replayed_decisions_are_remembered(void)
{
    struct tpc *t = mk(0, 3);
    struct tpc_msg q = msg(TPC_MSG_QUERY, 2, 0, (70 << 8) | 1);

    CU_ASSERT_EQUAL(tpc_recover_decided(t, (70 << 8) | 1, 7, 1, true, 0), 0);
    CU_ASSERT_EQUAL(tpc_recover_decided(t, (71 << 8) | 2, 7, 2, false, 0), 0);
    CU_ASSERT_EQUAL(tpc_recover_decided(t, (70 << 8) | 1, 7, 1, true, 0), -EEXIST);
    tpc_history_lost(t, LOST_BEFORE); /* even so, what the log holds is known */
    tpc_recovered(t, 0);
    tpc_receive(t, &q, 1);
    CU_ASSERT_EQUAL(F.sent[last_of(TPC_MSG_ANSWER)].outcome, TPC_O_COMMITTED);
    q = msg(TPC_MSG_QUERY, 1, 0, (71 << 8) | 2);
    tpc_receive(t, &q, 2);
    CU_ASSERT_EQUAL(F.sent[last_of(TPC_MSG_ANSWER)].outcome, TPC_O_ABORTED);
    q = msg(TPC_MSG_COMMIT, 1, 0, (70 << 8) | 1);
    tpc_receive(t, &q, 3);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_ACK), 1);
    tpc_free(t);
}

static void test_commit_resent_until_acked(void)
{
    struct tpc *t = mk(0, 3);
    uint64_t txid = begin(t, NULL);
    struct tpc_msg v = msg(TPC_MSG_VOTE, 1, 0, txid);

    tpc_receive(t, &v, 0);
    v.from = 2;
    tpc_receive(t, &v, 0);
    tpc_durable(t, 2, 0);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_COMMIT), 2);
    struct tpc_msg a = msg(TPC_MSG_ACK, 1, 0, txid);
    tpc_receive(t, &a, 1);
    tpc_tick(t, RESEND);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_COMMIT), 3); /* only to 2 */
    CU_ASSERT_EQUAL(F.sent[F.nsent - 1].to, 2);
    tpc_peer(t, 2, false, RESEND + 1);
    tpc_tick(t, 2 * RESEND + 1);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_COMMIT), 3); /* link down: nothing */
    tpc_peer(t, 2, true, 2 * RESEND + 2);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_COMMIT), 4); /* at once when it returns */
    tpc_free(t);
}

static void test_wrong_epoch_and_strangers(void)
{
    struct tpc *t = mk(0, 3);
    struct tpc_msg m = msg(TPC_MSG_PREPARE, 1, 0, (15 << 8) | 1);
    struct tpc_stats st;

    m.epoch = 8;
    tpc_receive(t, &m, 0);
    m.epoch = 7;
    m.from = 9; /* not a replica */
    tpc_receive(t, &m, 0);
    m.from = 2; /* claims to be 1's transaction */
    tpc_receive(t, &m, 0);
    m = msg(TPC_MSG_VOTE, 1, 0, 12345 << 8); /* unknown txid */
    tpc_receive(t, &m, 0);
    m = msg(TPC_MSG_ANSWER, 1, 0, 12345 << 8);
    tpc_receive(t, &m, 0);
    CU_ASSERT_EQUAL(F.prepares, 0);
    CU_ASSERT_EQUAL(F.nsent, 0);
    tpc_get_stats(t, &st);
    CU_ASSERT_EQUAL(st.bad_epoch, 1);
    CU_ASSERT(st.msgs_ignored >= 4);
    tpc_free(t);
}

static void test_recovery(void)
{
    struct tpc *t = mk(0, 3);
    struct tpc_txn mine = {.txid = (20 << 8) | 0,
                           .epoch = 7,
                           .coord = 0,
                           .nops = 1,
                           .ops = OPS,
                           .nbytes = sizeof(OPS)};
    struct tpc_txn theirs = mine;
    struct tpc_stats st;

    theirs.txid = (21 << 8) | 2;
    theirs.coord = 2;
    CU_ASSERT_EQUAL(tpc_recover_prepared(t, &mine, 0), 0);
    CU_ASSERT_EQUAL(tpc_recover_prepared(t, &theirs, 0), 0);
    CU_ASSERT_EQUAL(tpc_recover_prepared(t, &theirs, 0), -EEXIST);
    CU_ASSERT_EQUAL(tpc_recover_committed(t, (22 << 8) | 0, 7, 0), 0);
    CU_ASSERT_EQUAL(F.recovered_prepares, 2);

    tpc_recovered(t, 0);
    /* Ours, undecided: aborted and announced. */
    CU_ASSERT_EQUAL(F.aborts, 1);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_ABORT), 2);
    CU_ASSERT_EQUAL(tpc_known_outcome(t, mine.txid), TPC_O_ABORTED);
    /* Theirs: asked about at the first tick; the commit is resent. */
    tpc_tick(t, 1);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_QUERY), 2);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_COMMIT), 2);
    struct tpc_msg a = msg(TPC_MSG_ACK, 1, 0, (22 << 8) | 0);
    tpc_receive(t, &a, 2);
    a.from = 2;
    tpc_receive(t, &a, 2);
    CU_ASSERT_EQUAL(F.log_types[F.nlog - 1], TPC_LOG_END);
    struct tpc_msg c = msg(TPC_MSG_COMMIT, 2, 0, theirs.txid);
    tpc_receive(t, &c, 3);
    CU_ASSERT_EQUAL(F.commits, 1);
    tpc_get_stats(t, &st);
    CU_ASSERT_EQUAL(st.aborted[TPC_R_RECOVERY], 1);
    tpc_free(t);
}

static int count_open(void *arg, const struct tpc_txn *txn, bool prepared)
{
    int *n = arg;
    (void)txn;
    n[prepared ? 0 : 1]++;
    return 0;
}

static void test_open_for_snapshot(void)
{
    struct tpc *t = mk(0, 2);
    uint64_t a = begin(t, NULL);
    int n[2] = {0, 0};

    CU_ASSERT_EQUAL(tpc_unapplied_lsn(t), 0);
    struct tpc_msg v = msg(TPC_MSG_VOTE, 1, 0, a);
    tpc_receive(t, &v, 0);
    tpc_durable(t, 1, 0);
    CU_ASSERT_EQUAL(tpc_unapplied_lsn(t), 2); /* its COMMIT record */
    tpc_for_each_open(t, count_open, n);
    CU_ASSERT_EQUAL(n[0], 1);
    tpc_durable(t, 2, 0);
    CU_ASSERT_EQUAL(tpc_unapplied_lsn(t), 0);
    n[0] = n[1] = 0;
    tpc_for_each_open(t, count_open, n);
    CU_ASSERT_EQUAL(n[0], 0);
    CU_ASSERT_EQUAL(n[1], 1); /* committed, not acknowledged */
    tpc_free(t);
}

static void test_remembered_bounded(void)
{
    struct tpc *t = mk(0, 3);
    struct tpc_msg m;

    /* remembered_max is 4: the oldest aborts are forgotten. */
    for (uint64_t i = 1; i <= 10; i++) {
        m = msg(TPC_MSG_ABORT, 1, 0, (i << 8) | 1);
        tpc_receive(t, &m, i);
    }
    CU_ASSERT_EQUAL(tpc_known_outcome(t, (1 << 8) | 1), TPC_O_UNKNOWN);
    CU_ASSERT_EQUAL(tpc_known_outcome(t, (10 << 8) | 1), TPC_O_ABORTED);
    tpc_free(t);
}

/* Many remembered decisions, forgotten oldest first: every lookup finds
 * exactly the newest remembered_max (the table probes, grows, and closes
 * the gaps that forgetting leaves). */
static void test_remembered_many_exactly_the_newest(void)
{
    enum { KEEP = 700, TOTAL = 6000 };
    struct tpc_config cfg = {.self = 0,
                             .n = 3,
                             .ids = {0, 1, 2},
                             .epoch = 7,
                             .prepare_timeout_us = TIMEOUT,
                             .resend_us = RESEND,
                             .remembered_max = KEEP};
    static uint64_t txids[TOTAL];
    uint64_t r = 0x2545f4914f6cdd1dull;
    unsigned wrong = 0;
    int err;

    memset(&F, 0, sizeof(F));
    struct tpc *t = tpc_new(&cfg, &env, &err);
    CU_ASSERT_FATAL(t != NULL);
    for (size_t i = 0; i < TOTAL; i++) {
        r ^= r << 13;
        r ^= r >> 7;
        r ^= r << 17;
        txids[i] = ((r >> 16) << 8) | 1; /* coordinator 1, scattered ids */
        struct tpc_msg m = msg(TPC_MSG_ABORT, 1, 0, txids[i]);
        tpc_receive(t, &m, i);
        /* Now and then, check the whole window so far. */
        if (i % 997 == 0 || i == TOTAL - 1) {
            for (size_t j = 0; j <= i; j++) {
                enum tpc_outcome want = j + KEEP > i ? TPC_O_ABORTED : TPC_O_UNKNOWN;
                if (tpc_known_outcome(t, txids[j]) != want)
                    wrong++;
            }
        }
    }
    CU_ASSERT_EQUAL(wrong, 0);
    /* A late PREPARE of a remembered abort is not prepared. */
    struct tpc_msg m = msg(TPC_MSG_PREPARE, 1, 0, txids[TOTAL - 1]);
    tpc_receive(t, &m, TOTAL);
    CU_ASSERT_EQUAL(F.prepares, 0);
    tpc_free(t);
}

static void test_bad_config(void)
{
    struct tpc_config cfg = {.self = 5, .n = 2, .ids = {0, 1}, .remembered_max = 1};
    int err;

    CU_ASSERT_PTR_NULL(tpc_new(&cfg, &env, &err)); /* self not listed */
    CU_ASSERT_EQUAL(err, -EINVAL);
    cfg.self = 1;
    cfg.ids[1] = 0; /* duplicate */
    CU_ASSERT_PTR_NULL(tpc_new(&cfg, &env, &err));
    cfg.ids[1] = 16; /* too large */
    CU_ASSERT_PTR_NULL(tpc_new(&cfg, &env, &err));
}

/* ---- views (DESIGN.md, Availability) ------------------------------------------ */

/* View 2 without replica 2: its link down stops nothing; PREPARE, COMMIT
 * and the ACKs waited for are the members' only. */
static void test_view_members_only(void)
{
    struct tpc *t = mk(0, 3);
    int client;
    uint64_t txid;
    struct tpc_msg m;

    tpc_set_view(t, 2, 0x3, 0);
    CU_ASSERT_EQUAL(tpc_view(t), 2);
    CU_ASSERT_EQUAL(tpc_view_members(t), 0x3);
    tpc_peer(t, 2, false, 0);
    txid = begin(t, &client);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_PREPARE), 1);
    CU_ASSERT(F.sent[0].to == 1 && F.sent[0].view == 2);
    m = msg(TPC_MSG_VOTE, 1, 0, txid);
    tpc_receive(t, &m, 1);
    tpc_durable(t, 1, 2);
    CU_ASSERT_EQUAL_FATAL(F.nlog, 2);
    tpc_durable(t, 2, 3);
    CU_ASSERT(F.dones == 1 && F.done_committed);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_COMMIT), 1);
    m = msg(TPC_MSG_ACK, 1, 0, txid);
    tpc_receive(t, &m, 4);
    CU_ASSERT_EQUAL(F.log_types[F.nlog - 1], TPC_LOG_END);
    /* A replica outside the view begins nothing. */
    tpc_set_view(t, 3, 0x6, 5);
    uint32_t culprit;
    CU_ASSERT_EQUAL(
        tpc_begin(t, tpc_next_txid(t, 2000), 1, OPS, sizeof(OPS), NULL, 6, &culprit),
        TPC_R_NOT_MEMBER);
    tpc_free(t);
}

/* A PREPARE of another view, or of this one after a promise of a later
 * view, is refused (NO, view_change), and so is a begin while frozen. */
static void test_view_refuses_other_views(void)
{
    struct tpc *t = mk(0, 3);
    struct tpc_msg m = msg(TPC_MSG_PREPARE, 1, 0, (5 << 8) | 1);
    uint32_t culprit;

    tpc_set_view(t, 2, 0x7, 0);
    tpc_receive(t, &m, 1); /* view 1 */
    CU_ASSERT_EQUAL_FATAL(F.nsent, 1);
    CU_ASSERT(F.sent[0].type == TPC_MSG_VOTE && !F.sent[0].vote &&
              F.sent[0].reason == TPC_R_VIEW);
    CU_ASSERT_EQUAL(F.prepares, 0);
    tpc_freeze(t, 3);
    CU_ASSERT_TRUE(tpc_frozen(t));
    m = msg(TPC_MSG_PREPARE, 1, 0, (6 << 8) | 1);
    m.view = 2;
    tpc_receive(t, &m, 2);
    CU_ASSERT(F.nsent == 2 && !F.sent[1].vote && F.sent[1].reason == TPC_R_VIEW);
    CU_ASSERT_EQUAL(tpc_know(t, (6 << 8) | 1), TPC_K_ABORTED);
    CU_ASSERT_EQUAL(
        tpc_begin(t, tpc_next_txid(t, 2000), 1, OPS, sizeof(OPS), NULL, 3, &culprit),
        TPC_R_VIEW);
    tpc_set_view(t, 3, 0x7, 4);
    CU_ASSERT_FALSE(tpc_frozen(t));
    tpc_free(t);
}

/* Frozen, a coordinator decides nothing itself (all YES or not), and the
 * settlement decides: abort tells its client view_change, commit applies
 * and tells it committed. A NO vote still aborts. */
static void test_view_frozen_coordinator_waits_for_settlement(void)
{
    struct tpc *t = mk(0, 3);
    int c1, c2, c3;
    uint64_t a = begin(t, &c1), b = begin(t, &c2), c = begin(t, &c3);
    struct tpc_msg m;

    tpc_durable(t, 3, 1); /* our three PREPAREs */
    tpc_freeze(t, 2);
    for (uint32_t from = 1; from <= 2; from++) {
        m = msg(TPC_MSG_VOTE, from, 0, a);
        tpc_receive(t, &m, 2);
        m = msg(TPC_MSG_VOTE, from, 0, b);
        tpc_receive(t, &m, 2);
    }
    CU_ASSERT_EQUAL(F.nlog, 3); /* no COMMIT record */
    tpc_tick(t, 10 * TIMEOUT);  /* nor a timeout */
    CU_ASSERT_EQUAL(F.dones, 0);
    CU_ASSERT_EQUAL(tpc_know(t, a), TPC_K_PREPARED);
    m = msg(TPC_MSG_VOTE, 1, 0, c);
    m.vote = 0;
    m.reason = TPC_R_BUSY;
    tpc_receive(t, &m, 3);
    CU_ASSERT(F.dones == 1 && !F.done_committed && F.done_reason == TPC_R_BUSY);
    CU_ASSERT_EQUAL(tpc_know(t, c), TPC_K_ABORTED);
    CU_ASSERT_EQUAL(tpc_settle(t, a, false, 4), 0);
    CU_ASSERT(F.dones == 2 && !F.done_committed && F.done_reason == TPC_R_VIEW);
    CU_ASSERT_PTR_EQUAL(F.done_client, &c1);
    CU_ASSERT_EQUAL(tpc_settle(t, b, true, 5), 0);
    CU_ASSERT(F.dones == 3 && F.done_committed);
    CU_ASSERT_PTR_EQUAL(F.done_client, &c2);
    CU_ASSERT_EQUAL(F.commits, 1);
    CU_ASSERT_EQUAL(tpc_known_outcome(t, b), TPC_O_COMMITTED);
    CU_ASSERT_EQUAL(tpc_settle(t, b, true, 6), 0);          /* again: nothing */
    CU_ASSERT_EQUAL(tpc_settle(t, b, false, 6), -EALREADY); /* the other way: refused */
    CU_ASSERT_EQUAL(tpc_settle(t, 0x999, true, 6), -ENOENT);
    CU_ASSERT_EQUAL(F.dones, 3);
    tpc_free(t);
}

/* Frozen, a participant applies a COMMIT but keeps an ABORT's transaction
 * prepared for the settlement; it reports what it holds. */
static void test_view_frozen_participant(void)
{
    struct tpc *t = mk(0, 3);
    uint64_t x = (7 << 8) | 1, y = (8 << 8) | 2;
    struct tpc_msg m = msg(TPC_MSG_PREPARE, 1, 0, x);

    tpc_receive(t, &m, 1);
    m = msg(TPC_MSG_PREPARE, 2, 0, y);
    tpc_receive(t, &m, 1);
    tpc_durable(t, 2, 2);
    tpc_freeze(t, 2);
    m = msg(TPC_MSG_ABORT, 1, 0, x);
    tpc_receive(t, &m, 3);
    CU_ASSERT_EQUAL(F.aborts, 0);
    CU_ASSERT_EQUAL(tpc_know(t, x), TPC_K_PREPARED);
    m = msg(TPC_MSG_COMMIT, 2, 0, y);
    tpc_receive(t, &m, 3);
    CU_ASSERT_EQUAL(F.commits, 1);
    CU_ASSERT_EQUAL(tpc_know(t, y), TPC_K_COMMITTED);
    CU_ASSERT_EQUAL(tpc_settle(t, x, false, 4), 0);
    CU_ASSERT_EQUAL(F.aborts, 1);
    CU_ASSERT_EQUAL(tpc_know(t, x), TPC_K_ABORTED);
    tpc_free(t);
}

static int collect_doubt(void *arg, uint64_t txid, uint32_t coord, uint64_t view,
                         uint32_t members)
{
    uint64_t *out = arg;

    CU_ASSERT(view == 2 && members == 0x7);
    out[0]++;
    out[out[0]] = txid ^ (uint64_t)coord << 56;
    return 0;
}

/* Undecided transactions are listed; what is known of others is told,
 * absent or unsure when a decision may have been forgotten. */
static void test_view_doubts_and_knowledge(void)
{
    struct tpc *t = mk(0, 3); /* remembered_max 4 */
    uint64_t mine, theirs = (9 << 8) | 2, out[4] = {0};
    struct tpc_msg m;

    tpc_set_view(t, 2, 0x7, 0);
    mine = begin(t, NULL);
    m = msg(TPC_MSG_PREPARE, 2, 0, theirs);
    m.view = 2;
    tpc_receive(t, &m, 1);
    CU_ASSERT_EQUAL(tpc_for_each_doubt(t, collect_doubt, out), 0);
    CU_ASSERT_EQUAL(out[0], 2);
    CU_ASSERT_EQUAL(tpc_know(t, mine), TPC_K_PREPARED);
    CU_ASSERT_EQUAL(tpc_know(t, theirs), TPC_K_PREPARED);
    CU_ASSERT_EQUAL(tpc_know(t, (10 << 8) | 1), TPC_K_ABSENT);
    /* Decide and forget a few: their sequence numbers become "unsure". */
    for (uint64_t i = 20; i < 30; i++) {
        m = msg(TPC_MSG_ABORT, 1, 0, (i << 8) | 1);
        tpc_receive(t, &m, 2);
    }
    CU_ASSERT_EQUAL(tpc_know(t, (29 << 8) | 1), TPC_K_ABORTED);
    CU_ASSERT_EQUAL(tpc_know(t, (20 << 8) | 1), TPC_K_UNSURE);
    CU_ASSERT_EQUAL(tpc_know(t, (19 << 8) | 2), TPC_K_UNSURE);
    CU_ASSERT_EQUAL(tpc_know(t, (31 << 8) | 2), TPC_K_ABSENT);
    tpc_free(t);
}

/* With decide_by_view, neither the vote timeout nor a member's link going
 * down aborts: the view change will settle it. */
static void test_view_decide_by_view_waits(void)
{
    struct tpc *t = mk_with(0, 3, true);
    uint64_t txid;

    txid = begin(t, NULL);
    tpc_tick(t, 5 * TIMEOUT);
    /* The silent members are asked again. */
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_PREPARE), 4);
    tpc_peer(t, 2, false, 5 * TIMEOUT);
    CU_ASSERT_EQUAL(F.dones, 0);
    CU_ASSERT_EQUAL(tpc_know(t, txid), TPC_K_PREPARED);
    /* A NO because the participant is in another view says nothing of the
     * transaction (it may have committed it and forgotten): no abort. */
    struct tpc_msg m = msg(TPC_MSG_VOTE, 1, 0, txid);
    m.vote = 0;
    m.reason = TPC_R_VIEW;
    m.view = 2; /* the participant's view: later than the transaction's */
    tpc_receive(t, &m, 6 * TIMEOUT);
    CU_ASSERT_EQUAL(F.dones, 0);
    /* Another NO still aborts (here: a replica still in the
     * transaction's view, refusing it). */
    m.view = 1;
    tpc_receive(t, &m, 6 * TIMEOUT);
    CU_ASSERT(F.dones == 1 && F.done_reason == TPC_R_VIEW);
    tpc_free(t);
}

static int check_view2(void *arg, uint64_t txid, uint32_t coord, uint64_t view,
                       uint32_t members)
{
    uint64_t *out = arg;

    (void)txid;
    (void)coord;
    CU_ASSERT(view == 2 && members == 0x7);
    out[0]++;
    return 0;
}

/* Found by the audit of issue 19: a resent PREPARE that finds no record
 * is refused (the participant may have refused it once and forgotten; a
 * YES now could follow that NO), a QUERY from outside the view about a
 * forgotten txid is answered "cannot say", a log that fails with PREPAREs
 * out tells the client the outcome is unknown and sends no ABORT, and a
 * recovered prepare keeps the view it was prepared in. */
static void test_view_audit_fixes(void)
{
    struct tpc *t = mk_with(0, 3, true);
    struct tpc_msg m = msg(TPC_MSG_PREPARE, 1, 0, (40 << 8) | 1);
    uint64_t txid;

    m.resent = true;
    tpc_receive(t, &m, 1);
    CU_ASSERT(F.nsent == 1 && !F.sent[0].vote && F.sent[0].reason == TPC_R_TIMEOUT);
    CU_ASSERT_EQUAL(F.prepares, 0);
    m = msg(TPC_MSG_PREPARE, 1, 0, (41 << 8) | 1);
    tpc_receive(t, &m, 2); /* first sending: prepared */
    tpc_durable(t, 1, 3);
    m.resent = true;
    tpc_receive(t, &m, 4); /* resent: the vote again */
    CU_ASSERT(F.sent[F.nsent - 1].vote == 1 && F.prepares == 1);

    tpc_set_view(t, 2, 0x3, 5); /* replica 2 left out */
    m = msg(TPC_MSG_QUERY, 2, 0, (42 << 8) | 0);
    tpc_receive(t, &m, 6);
    CU_ASSERT(F.sent[F.nsent - 1].type == TPC_MSG_ANSWER &&
              F.sent[F.nsent - 1].outcome == TPC_O_LOST);
    m = msg(TPC_MSG_QUERY, 1, 0, (42 << 8) | 0);
    tpc_receive(t, &m, 6);
    CU_ASSERT_EQUAL(F.sent[F.nsent - 1].outcome,
                    TPC_O_UNKNOWN); /* a member: presumed abort */

    txid = begin(t, NULL);
    size_t aborts = count_sent(TPC_MSG_ABORT);
    tpc_log_failed(t, 7, false);
    CU_ASSERT(F.dones == 1 && !F.done_committed && F.done_reason == TPC_R_UNKNOWN);
    CU_ASSERT_EQUAL(count_sent(TPC_MSG_ABORT), aborts);
    CU_ASSERT_EQUAL(tpc_know(t, txid), TPC_K_PREPARED);
    tpc_free(t);

    t = mk_with(0, 3, true);
    tpc_set_view(t, 3, 0x3, 0);
    struct tpc_txn txn = {.txid = (50 << 8) | 2,
                          .epoch = 7,
                          .coord = 2,
                          .nops = 1,
                          .ops = OPS,
                          .nbytes = sizeof(OPS),
                          .view = 2,
                          .members = 0x7};
    uint64_t out[4] = {0};
    CU_ASSERT_EQUAL(tpc_recover_prepared(t, &txn, 1), 0);
    CU_ASSERT_EQUAL(tpc_for_each_doubt(t, check_view2, out), 0);
    CU_ASSERT_EQUAL(out[0], 1);
    tpc_free(t);
}

void unit_tpc_register(void)
{
    CU_pSuite s = unit_suite("tpc");

    unit_test(s, "view: members only", test_view_members_only);
    unit_test(s,
              "view: resent PREPAREs, answers to outsiders, log failure, recovered views",
              test_view_audit_fixes);
    unit_test(s, "view: other views' PREPAREs refused, and while frozen",
              test_view_refuses_other_views);
    unit_test(s, "view: a frozen coordinator waits for the settlement",
              test_view_frozen_coordinator_waits_for_settlement);
    unit_test(s, "view: a frozen participant applies COMMITs, not ABORTs",
              test_view_frozen_participant);
    unit_test(s, "view: doubts listed, knowledge told", test_view_doubts_and_knowledge);
    unit_test(s, "view: decide_by_view asks again, waits, ignores another view's NO",
              test_view_decide_by_view_waits);

    unit_test(s, "commit path: votes, forced commit, ACKs, END", test_commit_path);
    unit_test(s, "a NO vote aborts; late votes change nothing", test_no_vote_aborts);
    unit_test(s, "prepare timeout aborts, naming the silent peer",
              test_timeout_names_silent_peer);
    unit_test(s, "a replica down fails writes fast", test_peer_down_fails_fast);
    unit_test(s, "local NO vote: begin fails, no callback", test_local_no_vote);
    unit_test(s, "log failure: begin fails, participant votes no", test_log_failure);
    unit_test(s, "log fails at the commit point: outcome unknown",
              test_log_fails_at_commit_point);
    unit_test(s, "log failure reported twice: the client is told once",
              test_log_failure_reported_twice);
    unit_test(s, "one replica commits alone", test_single_replica);
    unit_test(s, "txids unique, increasing, name the coordinator", test_txids);
    unit_test(s, "after a lost history: no ACK of an unknown COMMIT, LOST answers",
              test_lost_history_no_ack_and_says_lost);
    unit_test(s, "after a lost history the coordinator asks before deciding",
              test_lost_coordinator_asks_before_deciding);
    unit_test(s, "in doubt after a loss: a participant waits for a decision",
              test_in_doubt_after_a_loss);
    unit_test(s, "lost coordinator settles a ghost",
              test_lost_coordinator_settles_a_ghost);
    unit_test(s, "lost history is bounded", test_lost_history_is_bounded);
    unit_test(s,
              "after a loss a recovered prepare says LOST; txids start above the bound",
              test_lost_history_prepared_says_lost);
    unit_test(s, "decisions replayed from the log are remembered",
              test_replayed_decisions_are_remembered);
    unit_test(s, "a log cut back at the commit point aborts, and says so",
              test_log_fails_at_commit_point_rolled_back);
    unit_test(s, "the txid floor survives a restart without writes",
              test_txid_floor_survives_a_restart_without_writes);
    unit_test(s, "remembered decisions stay bounded after a log failure; no ACK then",
              test_remembered_bounded_after_log_failure);
    unit_test(s, "participant: prepare, vote, commit, ACK; duplicates",
              test_participant_commit);
    unit_test(s, "participant votes no and does not re-prepare",
              test_participant_votes_no);
    unit_test(s, "ABORT overtaking its PREPARE", test_abort_overtakes_prepare);
    unit_test(s, "participant abort; impossible COMMIT ignored", test_participant_abort);
    unit_test(s, "a txid reused with other operations votes no",
              test_reused_txid_votes_no);
    unit_test(s, "in doubt: queries, presumed abort from the coordinator only",
              test_in_doubt_queries);
    unit_test(s, "cooperative termination: another participant knows",
              test_cooperative_termination);
    unit_test(s, "QUERY answers: pending, committed, unknown", test_answers_queries);
    unit_test(s, "COMMIT resent until ACKed, and when a link returns",
              test_commit_resent_until_acked);
    unit_test(s, "wrong epoch, strangers, unknown txids ignored",
              test_wrong_epoch_and_strangers);
    unit_test(s, "recovery: ours aborted, theirs queried, commits resent", test_recovery);
    unit_test(s, "open transactions for a snapshot; unapplied commit lsn",
              test_open_for_snapshot);
    unit_test(s, "remembered decisions are bounded", test_remembered_bounded);
    unit_test(s, "many remembered: exactly the newest are known",
              test_remembered_many_exactly_the_newest);
    unit_test(s, "bad configurations refused", test_bad_config);
}
