/*
 * tpc.h - two-phase commit: the coordinator and the participant of one
 * replica, as one pure state machine. The state machine and its messages are
 * described at the top of tpc.c.
 *
 * Pure: no I/O, no clock, no allocation visible to the caller. Inputs are
 * calls (a client write begins, a message arrives, a log record became
 * durable, a timer tick, a peer link went up or down), each with the current
 * monotonic time; outputs go through the callbacks of struct tpc_env
 * (messages to send, records to log, the resource manager's prepare / commit
 * / abort, client outcomes). A simulator drives several of them in one
 * process with a seeded network; the server drives one with libuv.
 *
 * A transaction's operations are opaque bytes to this module (the server
 * encodes them as WAL ops; see wal.h): tpc carries them in PREPARE, logs
 * them, and hands them to the resource manager.
 */
#ifndef TPCKV_TPC_H
#define TPCKV_TPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Replica ids are 0..TPC_REPLICAS_MAX-1 (the low byte of every txid). */
#define TPC_REPLICAS_MAX 16

enum tpc_msg_type {
    TPC_MSG_PREPARE = 1, /* coordinator -> participant: txid, ops */
    TPC_MSG_VOTE = 2,    /* participant -> coordinator: yes, or no + reason */
    TPC_MSG_COMMIT = 3,  /* coordinator -> participant: the decision */
    TPC_MSG_ABORT = 4,   /* coordinator -> participant: the decision */
    TPC_MSG_ACK = 5,     /* participant -> coordinator: COMMIT is durable here */
    TPC_MSG_QUERY = 6,   /* an in-doubt participant -> anyone: what became of txid? */
    TPC_MSG_ANSWER = 7,  /* -> the querier: outcome */
};
#define TPC_MSG_TYPE_MAX 7

/* Why a transaction did not commit (a NO vote's reason, an abort's cause). */
enum tpc_reason {
    TPC_R_NONE = 0,
    TPC_R_BUSY = 1,       /* a key is locked by another transaction (retryable) */
    TPC_R_CONFLICT = 2,   /* a key's version differs from the coordinator's (retryable) */
    TPC_R_NO_MEMORY = 3,  /* a participant is out of --max-memory */
    TPC_R_LOG_FAILED = 4, /* a participant's write-ahead log failed */
    TPC_R_TIMEOUT = 5,    /* a vote did not come within --prepare-timeout-ms */
    TPC_R_PEER_DOWN = 6,  /* a replica is unreachable */
    TPC_R_BAD_OPS = 7,    /* a participant could not decode the operations */
    TPC_R_RECOVERY = 8,   /* undecided when the coordinator restarted */
    TPC_R_STOPPING = 9,   /* the coordinator is shutting down */
    TPC_R_TOO_LARGE = 10, /* a resulting value exceeds a participant's --max-value */
    TPC_R_CLOCK = 11,     /* the coordinator's clock (the CHECK's time) is too far
                             from the participant's (--max-clock-skew-ms) */
    TPC_R_UNKNOWN = 12,   /* done() only, never a vote: the coordinator's log failed
                             at the commit point and may hold the COMMIT; its
                             restart settles the outcome */
    TPC_R_VIEW = 13,      /* the replicas are changing their view (a PREPARE of
                             another view, or a participant that promised a
                             later one; retryable) */
    TPC_R_NOT_MEMBER = 14, /* begin only: this replica is not a member of the
                              current view */
};
#define TPC_REASON_MAX 14

/* The reasons a message may carry (a vote, an abort): not TPC_R_UNKNOWN nor
 * TPC_R_NOT_MEMBER; a peer that sends one is refused like any malformed
 * frame. */
static inline bool tpc_reason_on_wire(unsigned r)
{
    return r <= 11 || r == 13;
}

const char *tpc_reason_name(enum tpc_reason r);

/* A QUERY's answer. */
enum tpc_outcome {
    TPC_O_UNKNOWN = 0, /* no record of txid here (from its coordinator: aborted) */
    TPC_O_COMMITTED = 1,
    TPC_O_ABORTED = 2,
    TPC_O_PENDING = 3, /* not decided yet; ask again later */
    TPC_O_LOST = 4,    /* no record here, and this replica's log may have lost the
                          txid's records (tpc_history_lost): it cannot say */
};

const char *tpc_outcome_name(enum tpc_outcome o);
const char *tpc_msg_type_name(enum tpc_msg_type t);

/* One message between replicas. The transport adds framing, the checksum,
 * authentication; from is the authenticated sender. */
struct tpc_msg {
    uint8_t type;    /* enum tpc_msg_type */
    uint8_t vote;    /* VOTE: 1 = yes, 0 = no */
    uint8_t reason;  /* VOTE no, ABORT: enum tpc_reason */
    uint8_t outcome; /* ANSWER: enum tpc_outcome */
    bool resent;     /* PREPARE: sent again after no vote came (decide_by_view): a
                        participant with no record of it refuses it, since it may
                        have refused it once and forgotten */
    uint32_t from, to;
    uint64_t epoch; /* the sender's cluster configuration epoch */
    uint64_t view;  /* the view the transaction belongs to (PREPARE: the
                       coordinator's current view) */
    uint64_t txid;
    uint32_t coord;  /* the transaction's coordinator */
    uint32_t nops;   /* PREPARE: operations in ops */
    const char *ops; /* PREPARE: nbytes of encoded operations (borrowed) */
    uint32_t nbytes;
};

/* A transaction as the resource manager and the log see it. */
struct tpc_txn {
    uint64_t txid;
    uint64_t epoch;
    uint32_t coord;
    uint32_t nops;
    const char *ops;
    uint32_t nbytes;
    bool recovered;   /* re-locked after a restart: its checks passed before */
    uint64_t view;    /* tpc_recover_prepared: the view it was prepared in (0:
                         the current one) */
    uint32_t members; /* ... and that view's members (bit per id) */
};

enum tpc_log_type {
    TPC_LOG_PREPARE = 2, /* txid, epoch, coord, ops: prepared here (forced) */
    TPC_LOG_COMMIT = 3,  /* txid committed (forced: the coordinator's commit
                            point; a participant's, before its ACK) */
    TPC_LOG_ABORT = 4,   /* txid aborted (not forced: presumed abort) */
    TPC_LOG_END = 5,     /* coordinator: every participant ACKed txid (not forced) */
};

struct tpc_env {
    void *ctx;
    /* Sends m to m->to (never to ourselves). Delivery is not assumed. */
    void (*send)(void *ctx, const struct tpc_msg *m);
    /* Appends a record. Returns its lsn (> 0), or a negative errno if the
     * log has failed. Durability is reported later by tpc_durable(). For
     * COMMIT, ABORT and END records, ops is NULL. */
    int64_t (*log)(void *ctx, enum tpc_log_type type, const struct tpc_txn *t);
    /* Resource manager. prepare locks t's keys, checks its conditions and
     * reserves what commit needs; returns 0 (vote yes; *handle is passed
     * back to commit or abort) or the reason to vote no (nothing held). */
    int (*prepare)(void *ctx, const struct tpc_txn *t, void **handle);
    void (*commit)(void *ctx, const struct tpc_txn *t, void *handle);
    void (*abort)(void *ctx, const struct tpc_txn *t, void *handle);
    /* A transaction this replica coordinates is decided. client is what
     * tpc_begin() got. committed: the commit record is durable. Otherwise
     * reason says why, and culprit names the replica that caused it. */
    void (*done)(void *ctx, void *client, uint64_t txid, bool committed,
                 enum tpc_reason reason, uint32_t culprit);
};

struct tpc_config {
    uint32_t self;                  /* our replica id */
    uint32_t n;                     /* replicas */
    uint32_t ids[TPC_REPLICAS_MAX]; /* their ids (self among them) */
    uint64_t epoch;
    uint64_t prepare_timeout_us; /* votes must come by then, or abort (but
                                    see decide_by_view) */
    uint64_t resend_us;          /* COMMIT resent, QUERY repeated this often */
    size_t remembered_max;       /* decided txids kept to answer duplicates */
    /* Views decide what a silent member leaves undecided (DESIGN.md,
     * Availability): a coordinator whose votes do not come, or whose peer's
     * link went down, waits instead of aborting, and a view change settles
     * its transaction. Off: the timeout and a link down abort, as they
     * always did. */
    bool decide_by_view;
};

struct tpc_stats {
    uint64_t begun;
    uint64_t committed;
    uint64_t aborted[TPC_REASON_MAX + 1]; /* by reason, as coordinator */
    uint64_t prepared;                    /* as participant: yes votes */
    uint64_t voted_no;
    uint64_t part_committed, part_aborted;
    uint64_t in_doubt; /* now: voted yes, undecided past the timeout */
    uint64_t active;   /* now: transactions not yet forgotten */
    uint64_t queries_sent, answers_sent;
    uint64_t resolved_by_query;
    uint64_t msgs_in[TPC_MSG_TYPE_MAX + 1], msgs_out[TPC_MSG_TYPE_MAX + 1];
    uint64_t msgs_ignored; /* duplicates, late, unknown txid */
    uint64_t bad_epoch;
    uint64_t prepare_us_total, prepare_us_max, prepare_count; /* begin to decision */
    uint64_t remembered;      /* now: decided transactions kept to answer duplicates */
    uint64_t commits_refused; /* COMMITs of txids without a record, not acknowledged
                                 (a failed or lost log) */
};

struct tpc;

/* Returns a new state machine, or NULL (bad config: -EINVAL in *err; -ENOMEM). */
struct tpc *tpc_new(const struct tpc_config *cfg, const struct tpc_env *env, int *err);
/* Frees it. Handles still held by the resource manager are not aborted
 * (a crash in the simulator); see tpc_release_all. */
void tpc_free(struct tpc *t);

/* A replica shutting down: every client still waiting is told (done with
 * TPC_R_STOPPING) and every prepared handle goes back to the resource
 * manager (abort: in memory only; nothing is logged, and the log still
 * holds what recovery needs). Call tpc_free next. */
void tpc_release_all(struct tpc *t);

/* Sets the lowest txid tpc_next_txid() may return next (after recovery:
 * past every cas in the store). */
void tpc_set_min_txid(struct tpc *t, uint64_t txid);

/*
 * A new transaction id: unique in the cluster (the low byte is our replica
 * id), greater than every one we gave before, than wall_us and than the
 * floor set by tpc_set_min_txid(). Across a restart the floor (the highest
 * id in the log and the snapshot) and the clock keep ids fresh; only a
 * clock stepped back across a crash could repeat an id that was sent but
 * never logged, and a participant holding it with other operations votes
 * no. It is also the CAS value of what the transaction writes.
 */
uint64_t tpc_next_txid(struct tpc *t, uint64_t wall_us);

/* Every id this replica handed out, and every floor it was given (the ids
 * recovery found in the log), is below this: a snapshot records it, so the
 * floor survives the log the snapshot replaces - also when this process
 * has handed out no id at all. */
uint64_t tpc_txid_floor(const struct tpc *t);

/*
 * Coordinates txid (from tpc_next_txid) with operations ops[0..nbytes).
 * The local participant prepares first, synchronously. Returns 0: the
 * transaction is under way and env->done(client, ...) will be called
 * exactly once, from a later call. Or returns a reason > 0 and nothing
 * happened (no done call): a replica is down (*culprit says which), the
 * local prepare said no, or the log failed. ops is copied.
 */
int tpc_begin(struct tpc *t, uint64_t txid, uint32_t nops, const char *ops,
              uint32_t nbytes, void *client, uint64_t now_us, uint32_t *culprit);

/* A message from a peer. m->ops is borrowed for the call. */
void tpc_receive(struct tpc *t, const struct tpc_msg *m, uint64_t now_us);

/* Every record with lsn <= lsn is durable. */
void tpc_durable(struct tpc *t, uint64_t lsn, uint64_t now_us);

/*
 * The log failed: nothing more becomes durable. Pending work aborts. A
 * commit whose COMMIT record was not yet durable aborts too when rolled_back
 * says the log was cut back to its last durable record (wal_rolled_back: the
 * record is known not to be on disk; every participant is told ABORT);
 * otherwise its client is told TPC_R_UNKNOWN and it stays undecided until
 * this replica restarts and reads its log.
 */
void tpc_log_failed(struct tpc *t, uint64_t now_us, bool rolled_back);

/* Timeouts, resends, queries. Call often (every few ms). */
void tpc_tick(struct tpc *t, uint64_t now_us);

/* The link to peer id went up or down (down: prepares waiting on its vote
 * abort; up: decisions and queries it missed are sent again). */
void tpc_peer(struct tpc *t, uint32_t id, bool up, uint64_t now_us);
bool tpc_peer_is_up(const struct tpc *t, uint32_t id);

/* ---- recovery ----------------------------------------------------------------
 * After the store is rebuilt from the snapshot and log, the server hands tpc
 * what the log left open, then calls tpc_recovered(). */

/* A PREPARE with no COMMIT or ABORT after it. The resource manager's
 * prepare is called (recovered = true) to lock its keys again. */
int tpc_recover_prepared(struct tpc *t, const struct tpc_txn *txn, uint64_t now_us);
/* A COMMIT we coordinated with no END after it: participants may lack it. */
int tpc_recover_committed(struct tpc *t, uint64_t txid, uint64_t epoch, uint64_t now_us);
/* A COMMIT or ABORT replayed from the log (the newest ones, after the
 * snapshot): remembered like a decision made now, so a QUERY or a resent
 * COMMIT after the restart is answered from it. */
int tpc_recover_decided(struct tpc *t, uint64_t txid, uint64_t epoch, uint32_t coord,
                        bool committed, uint64_t now_us);

/*
 * This replica's log may have lost records it had reported durable (it ran
 * under --fsync none and the machine lost power: see datadir's run state),
 * for transactions with txids below lost_before (the caller passes a bound
 * it made durable before logging any txid at or above it: the txid
 * ceiling in RUN). For those, "I have no record of it" no longer means "it
 * never happened here", so it:
 *   - does not acknowledge a COMMIT it has no record of (its ACK would tell
 *     the coordinator a write is here that is not);
 *   - answers a QUERY about a txid it does not know, or one it recovered
 *     prepared and undecided (a COMMIT after it may be what was lost), with
 *     TPC_O_LOST, not UNKNOWN (from a coordinator: aborted) or PENDING;
 *   - does not take UNKNOWN from a coordinator as an abort for the
 *     transactions it recovered in doubt (its own ACK may have let the
 *     coordinator forget a commit), and does not presume aborted those it
 *     coordinated itself (its COMMIT record may be what was lost).
 * Those are asked about instead: a COMMITTED answer commits, ABORTED
 * aborts. Only the coordinator decides an abort for want of a decision:
 * once every other replica has answered, over links it opened after its
 * restart, that it holds the transaction prepared (PENDING), none applied
 * it and none can; LOST and UNKNOWN answers leave it in doubt. A QUERY
 * about one of its own it has no record of starts that asking. Its own
 * new txids start at lost_before. Call before the recovery hand-over.
 */
void tpc_history_lost(struct tpc *t, uint64_t lost_before);

/* Recovery is complete: transactions we coordinated and never decided are
 * aborted (presumed abort; asked about instead after tpc_history_lost), the
 * others wait for their coordinators. */
void tpc_recovered(struct tpc *t, uint64_t now_us);

/* ---- views (DESIGN.md, Availability) --------------------------------------
 * A view is an epoch and its members (a bit per replica id). Writes go to
 * the members of the current view; every transaction remembers the view it
 * was prepared in. Until tpc_set_view() is called the view is 1 with every
 * replica a member. */

/* Installs view `view` with members (bit per replica id): PREPAREs of other
 * views are refused, new transactions go to these members, and commits of
 * earlier views stop waiting for the ACKs of replicas no longer members
 * (they catch up instead). Ends a freeze. A replica left out tells the
 * clients of the transactions it coordinates and has not decided that the
 * outcome is unknown (TPC_R_UNKNOWN): the new view settles them. */
void tpc_set_view(struct tpc *t, uint64_t view, uint32_t members, uint64_t now_us);
uint64_t tpc_view(const struct tpc *t);
uint32_t tpc_view_members(const struct tpc *t);

/* This replica promised view `promised` (> the current one): it refuses
 * PREPAREs and begins, decides none of its own transactions as coordinator
 * but on a NO vote, and applies COMMITs of earlier views but not ABORTs,
 * until the settlement (tpc_settle) and tpc_set_view. */
void tpc_freeze(struct tpc *t, uint64_t promised);
bool tpc_frozen(const struct tpc *t);

/* Every transaction undecided here: prepared as a participant (voted or
 * about to), or coordinated and not decided. fn gets its txid, coordinator,
 * view and that view's members (bit per id); stops on a nonzero return. */
int tpc_for_each_doubt(const struct tpc *t,
                       int (*fn)(void *arg, uint64_t txid, uint32_t coord, uint64_t view,
                                 uint32_t members),
                       void *arg);

/* What this replica knows of txid, for a view change (the values are those
 * of enum view_know in view.h). */
enum tpc_know {
    TPC_K_ABSENT = 1,   /* never prepared here, and refused from now on (frozen) */
    TPC_K_PREPARED = 2, /* prepared, undecided */
    TPC_K_COMMITTED = 3,
    TPC_K_ABORTED = 4,
    TPC_K_UNSURE = 5, /* no record, but one may have been forgotten */
};
enum tpc_know tpc_know(const struct tpc *t, uint64_t txid);

/* A view change settled txid. An undecided transaction here commits
 * (applied; the coordinator's client is told it committed) or aborts (a
 * coordinator's client is told TPC_R_VIEW: retry). Returns 0, -ENOENT (no
 * undecided transaction txid here: nothing to do for an abort; a commit
 * must reach this replica by catch-up), or -EALREADY (decided here
 * otherwise: a bug the caller logs). */
int tpc_settle(struct tpc *t, uint64_t txid, bool commit, uint64_t now_us);

/* ---- inspection --------------------------------------------------------- */

void tpc_get_stats(const struct tpc *t, struct tpc_stats *st);

/* What a snapshot must carry so the log before it can go: every prepared,
 * undecided transaction (with its ops) and every commit we coordinated that
 * is not fully acknowledged. fn is called once per transaction; prepared
 * tells which. Stops and returns fn's value if not 0. */
int tpc_for_each_open(const struct tpc *t,
                      int (*fn)(void *arg, const struct tpc_txn *txn, bool prepared),
                      void *arg);

/* The lowest lsn of a coordinator COMMIT record not yet durable (its effect
 * is not applied yet), or 0 if none. A snapshot must not claim to cover it. */
uint64_t tpc_unapplied_lsn(const struct tpc *t);

/* Outcome of txid as this replica knows it (tests, the simulator). */
enum tpc_outcome tpc_known_outcome(const struct tpc *t, uint64_t txid);

#endif /* TPCKV_TPC_H */
