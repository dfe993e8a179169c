/*
 * view.c - membership views: the settlement rules, the acceptor and the
 * proposer of one Paxos instance per epoch (view.h; DESIGN.md,
 * Availability).
 */
#include "view.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static uint32_t bit(uint32_t id)
{
    return 1u << id;
}

static uint32_t count(uint32_t set)
{
    return (uint32_t)__builtin_popcount(set);
}

uint32_t view_majority(uint32_t n)
{
    return n / 2 + 1;
}

enum view_outcome view_settle(const struct view_doubt *d, uint32_t promisers,
                              bool *conflict)
{
    bool committed = false, aborted = false, absent = false;

    *conflict = false;
    for (uint32_t id = 0; id < LIMIT_REPLICAS_MAX; id++) {
        if (!(promisers & bit(id)))
            continue;
        committed |= d->know[id] == VIEW_K_COMMITTED;
        aborted |= d->know[id] == VIEW_K_ABORTED;
        absent |= (d->members & bit(id)) && d->know[id] == VIEW_K_ABSENT;
    }
    if (committed && aborted) {
        *conflict = true;
        return VIEW_UNDECIDED;
    }
    if (committed) /* (1) */
        return VIEW_COMMIT;
    if (aborted || absent) /* (1), (2) */
        return VIEW_ABORT;
    /* (3): only from a coordinator that holds it undecided (or never had
     * it); one that cannot tell decided it and forgot. */
    if ((promisers & bit(d->coord)) &&
        (d->know[d->coord] == VIEW_K_PREPARED || d->know[d->coord] == VIEW_K_ABSENT))
        return VIEW_ABORT;
    if (promisers & bit(d->coord))
        return VIEW_UNDECIDED;
    for (uint32_t id = 0; id < LIMIT_REPLICAS_MAX; id++) /* (4) */
        if ((d->members & bit(id)) && id != d->coord &&
            (!(promisers & bit(id)) || d->know[id] != VIEW_K_PREPARED))
            return VIEW_UNDECIDED; /* (5) */
    return VIEW_COMMIT;
}

void view_value_free(struct view_value *v)
{
    free(v->settled);
    memset(v, 0, sizeof(*v));
}

int view_value_copy(struct view_value *dst, const struct view_value *src)
{
    struct view_settled *s = NULL;

    if (src->nsettled > 0) {
        s = malloc(src->nsettled * sizeof(*s));
        if (s == NULL)
            return -ENOMEM;
        memcpy(s, src->settled, src->nsettled * sizeof(*s));
    }
    view_value_free(dst);
    *dst = *src;
    dst->settled = s;
    return 0;
}

/* ---- the acceptor -------------------------------------------------------- */

void view_acceptor_init(struct view_acceptor *a, uint32_t n, uint32_t self,
                        uint64_t epoch, uint32_t members)
{
    memset(a, 0, sizeof(*a));
    a->n = n;
    a->self = self;
    a->epoch = epoch;
    a->members = members;
}

void view_acceptor_free(struct view_acceptor *a)
{
    view_value_free(&a->value);
}

bool view_is_member(const struct view_acceptor *a, uint32_t id)
{
    return id < LIMIT_REPLICAS_MAX && (a->members & bit(id));
}

/* Where new_epoch stands against the installed one. */
static enum view_verdict epoch_check(const struct view_acceptor *a, uint64_t new_epoch)
{
    if (new_epoch <= a->epoch)
        return VIEW_AHEAD;
    if (new_epoch > a->epoch + 1)
        return VIEW_BEHIND;
    return VIEW_OK;
}

enum view_verdict view_on_promise_req(struct view_acceptor *a, uint64_t new_epoch,
                                      uint64_t ballot)
{
    enum view_verdict v = epoch_check(a, new_epoch);

    if (v != VIEW_OK)
        return v;
    if (ballot <= a->promised)
        return VIEW_LOWER;
    a->promised = ballot;
    return VIEW_OK;
}

int view_on_accept(struct view_acceptor *a, const struct view_value *v, uint64_t ballot)
{
    enum view_verdict e = epoch_check(a, v->epoch);

    if (e != VIEW_OK)
        return (int)e;
    if (ballot < a->promised)
        return VIEW_LOWER;
    if (view_value_copy(&a->value, v) < 0)
        return -ENOMEM;
    a->promised = ballot;
    a->accepted = ballot;
    return VIEW_OK;
}

enum view_verdict view_install(struct view_acceptor *a, const struct view_value *v)
{
    enum view_verdict e = epoch_check(a, v->epoch);

    if (e != VIEW_OK)
        return e;
    a->epoch = v->epoch;
    a->members = v->members;
    a->promised = 0;
    a->accepted = 0;
    view_value_free(&a->value);
    return VIEW_OK;
}

/* ---- the proposer -------------------------------------------------------- */

void view_propose(struct view_proposer *p, uint32_t n, uint32_t self,
                  const struct lease_config *lease, uint64_t epoch, uint64_t round,
                  uint32_t want)
{
    view_proposer_free(p);
    p->n = n;
    p->self = self;
    p->lease = *lease;
    p->phase = VIEW_P_PROMISING;
    p->epoch = epoch;
    p->ballot = round << 8 | self;
    p->want = want;
}

void view_proposer_free(struct view_proposer *p)
{
    free(p->doubt);
    view_value_free(&p->best_value);
    view_value_free(&p->value);
    memset(p, 0, sizeof(*p));
}

static int add_doubt(struct view_proposer *p, const struct view_doubt *d)
{
    if (p->ndoubt == p->cap) {
        uint32_t cap = p->cap ? p->cap * 2 : 16;
        struct view_doubt *nd = realloc(p->doubt, cap * sizeof(*nd));
        if (nd == NULL)
            return -ENOMEM;
        p->doubt = nd;
        p->cap = cap;
    }
    p->doubt[p->ndoubt] = *d;
    memset(p->doubt[p->ndoubt].know, VIEW_K_NONE, sizeof(d->know));
    p->ndoubt++;
    return 0;
}

int view_on_promise(struct view_proposer *p, uint32_t from, const struct view_promise *pr,
                    uint64_t now)
{
    uint64_t until;

    if (p->phase != VIEW_P_PROMISING || from >= p->n ||
        ((p->promised | p->amnesiacs) & bit(from)))
        return 0;
    if (pr->amnesiac) {
        /* A replacement that lost its disk: it may join (it holds a
         * member's state), but a promise or an answer from it stands for
         * nothing it once accepted or prepared. */
        p->amnesiacs |= bit(from);
        if (pr->current)
            p->current |= bit(from);
        return 0;
    }
    /* Only a current replica's doubts count: one left out of a view holds
     * what that view settled, or what its members hold in doubt too. */
    for (uint32_t i = 0; pr->current && i < pr->ndoubt; i++)
        if (add_doubt(p, &pr->doubt[i]) < 0)
            return -ENOMEM;
    if (pr->accepted > p->best && pr->value != NULL) {
        if (view_value_copy(&p->best_value, pr->value) < 0)
            return -ENOMEM;
        p->best = pr->accepted;
    }
    p->promised |= bit(from);
    if (pr->current)
        p->current |= bit(from);
    until = now + lease_wait_ns(&p->lease, pr->hold_ns);
    if (until > p->wait_until)
        p->wait_until = until;
    return 0;
}

bool view_have_majority(const struct view_proposer *p)
{
    return count(p->promised) >= view_majority(p->n);
}

static int by_txid(const void *a, const void *b)
{
    uint64_t x = ((const struct view_doubt *)a)->txid,
             y = ((const struct view_doubt *)b)->txid;
    return x < y ? -1 : x > y;
}

static enum view_phase fail(struct view_proposer *p, const char *why)
{
    p->phase = VIEW_P_FAILED;
    p->why = why;
    return p->phase;
}

/* The new value from the promises and what the promisers knew. */
static enum view_phase make_value(struct view_proposer *p)
{
    uint32_t members = p->want & p->current;
    struct view_settled *s = NULL;
    uint32_t ns = 0;

    if (count(members) < view_majority(p->n))
        return fail(p, "fewer than a majority of the replicas are current and reachable");
    if (p->ndoubt > 0) {
        s = malloc(p->ndoubt * sizeof(*s));
        if (s == NULL)
            return fail(p, "out of memory");
    }
    for (uint32_t i = 0; i < p->ndoubt; i++) {
        bool conflict;
        enum view_outcome o = view_settle(&p->doubt[i], p->knew, &conflict);
        if (conflict) {
            free(s);
            return fail(p, "replicas report both outcomes of one transaction");
        }
        if (o != VIEW_UNDECIDED)
            s[ns++] = (struct view_settled){p->doubt[i].txid, (uint8_t)o};
    }
    view_value_free(&p->value);
    p->value = (struct view_value){p->epoch, members, ns, s};
    p->phase = VIEW_P_WAITING;
    return p->phase;
}

enum view_phase view_close_promises(struct view_proposer *p)
{
    uint32_t out = 0;

    if (p->phase != VIEW_P_PROMISING)
        return p->phase;
    if (!view_have_majority(p))
        return fail(p, "no majority of the replicas promised");
    if (p->best != 0) {
        /* Paxos: a value some promiser accepted may have been chosen. */
        if (p->best_value.epoch != p->epoch)
            return fail(p, "a promiser accepted a value for another epoch");
        if (view_value_copy(&p->value, &p->best_value) < 0)
            return fail(p, "out of memory");
        p->phase = VIEW_P_WAITING;
        return p->phase;
    }
    if (p->ndoubt > 1)
        qsort(p->doubt, p->ndoubt, sizeof(*p->doubt), by_txid);
    for (uint32_t i = 0; i < p->ndoubt; i++) /* one entry per txid */
        if (out == 0 || p->doubt[out - 1].txid != p->doubt[i].txid)
            p->doubt[out++] = p->doubt[i];
    p->ndoubt = out;
    p->asked = p->promised;
    if (p->ndoubt == 0)
        return make_value(p);
    p->phase = VIEW_P_KNOWING;
    return p->phase;
}

enum view_phase view_on_know(struct view_proposer *p, uint32_t from, const uint8_t *know,
                             uint32_t nknow)
{
    if (p->phase != VIEW_P_KNOWING || from >= p->n || !(p->asked & bit(from)) ||
        (p->knew & bit(from)) || nknow != p->ndoubt)
        return p->phase;
    for (uint32_t i = 0; i < nknow; i++)
        p->doubt[i].know[from] = know[i] <= VIEW_K_UNSURE ? know[i] : VIEW_K_UNSURE;
    p->knew |= bit(from);
    if (p->knew != p->asked)
        return p->phase;
    return make_value(p);
}

bool view_may_accept(struct view_proposer *p, uint64_t now)
{
    if (p->phase != VIEW_P_WAITING || now < p->wait_until)
        return false;
    p->phase = VIEW_P_ACCEPTING;
    return true;
}

enum view_phase view_on_accepted(struct view_proposer *p, uint32_t from)
{
    if (p->phase != VIEW_P_ACCEPTING || from >= p->n || (p->amnesiacs & bit(from)))
        return p->phase;
    p->accepted_by |= bit(from);
    if (count(p->accepted_by) >= view_majority(p->n))
        p->phase = VIEW_P_CHOSEN;
    return p->phase;
}
