/*
 * lease.h - read leases for the members of a view (DESIGN.md, Availability:
 * "Leases: no stale read"). Pure arithmetic on one replica's monotonic
 * clock (nanoseconds; the server passes CLOCK_BOOTTIME, the simulator its
 * drifting clocks): no I/O, no clock read here.
 *
 * A member holds a lease for its view's epoch while a majority of the
 * replicas (itself included) granted one of its recent requests: it runs
 * until the request's send time + L(1 - 2 rho) on the member's clock. A
 * grantor notes how long it granted (until its clock reads the grant's
 * time + L). A view change that removes members waits, after each promise,
 * R(1 + rho)/(1 - rho) on the proposer's clock, R being the hold the
 * promiser still had; a grantor that restarted does not know what it
 * granted before and reports a hold of L(1 + rho)/(1 - rho) from its start.
 * rho is the bound on clock rate error (drift_ppm / 1e6): with it the
 * holder's lease ends, in real time, before any grantor's hold on it, and
 * every hold has ended when the new view starts.
 */
#ifndef TPCKV_LEASE_H
#define TPCKV_LEASE_H

#include "limits.h"

#include <stdbool.h>
#include <stdint.h>

/* Requests remembered by a holder: with one request per L/4 only the last
 * few can still give a lease; older grants are ignored. */
#define LEASE_WINDOW 16
/* Largest accepted rate bound: below 50%, so that 1 - 2 rho > 0. */
#define LEASE_DRIFT_PPM_MAX 200000u

struct lease_config {
    uint64_t lease_ns;  /* L (--lease-ms) */
    uint32_t drift_ppm; /* rho in parts per million (--clock-drift-ppm) */
    uint32_t n;         /* replicas in the cluster (all of --replicas) */
};

/* The holder's side: one member's requests and the grants they got. */
struct lease_holder {
    struct lease_config cfg;
    uint64_t epoch;                 /* the view the lease is for */
    uint64_t seq;                   /* the newest request's number (0: none) */
    uint64_t sent_at[LEASE_WINDOW]; /* by seq % LEASE_WINDOW */
    uint32_t granted[LEASE_WINDOW]; /* by seq % LEASE_WINDOW: replica bits */
    uint64_t until;                 /* the lease ends at this clock (0: none) */
};

/* The grantor's side: how long it promised not to help remove a holder. */
struct lease_grantor {
    struct lease_config cfg;
    uint64_t epoch;      /* grants are given for this view only */
    bool frozen;         /* promised a later view: grants nothing more */
    uint64_t hold_until; /* its latest grant holds until this clock (0: none) */
};

/* Whether cfg is usable: L > 0 and below LIMIT of 10 minutes, drift within
 * LEASE_DRIFT_PPM_MAX, 1 <= n <= LIMIT_REPLICAS_MAX. */
bool lease_config_ok(const struct lease_config *cfg);

/* How many replicas make a majority of cfg->n. */
uint32_t lease_majority(const struct lease_config *cfg);

void lease_holder_init(struct lease_holder *h, const struct lease_config *cfg,
                       uint64_t epoch);

/* A new request at now: returns its number, to send with the epoch. */
uint64_t lease_request(struct lease_holder *h, uint64_t now);

/* Replica `from` granted request seq for epoch. Grants for another epoch, an
 * unknown or forgotten request, or from an id out of range are ignored;
 * a repeated grant counts once. Returns true when the lease was extended. */
bool lease_granted(struct lease_holder *h, uint64_t epoch, uint64_t seq, uint32_t from);

/* Whether the lease holds at now. */
bool lease_valid(const struct lease_holder *h, uint64_t now);

/* Nanoseconds the lease still runs at now (0: none). */
uint64_t lease_remaining(const struct lease_holder *h, uint64_t now);

/* Holds nothing from now on, and counts no grant of earlier requests: its
 * replica promised a later view, or moved to epoch (which starts afresh). */
void lease_holder_reset(struct lease_holder *h, uint64_t epoch);

/* A grantor in epoch that started at now (a restart: its earlier grants,
 * if any, are unknown, so it holds for the restart wait from now). */
void lease_grantor_init(struct lease_grantor *g, const struct lease_config *cfg,
                        uint64_t epoch, uint64_t now);

/* A request for epoch at now: grants it (true) unless it is for another
 * epoch or this grantor promised a later view. */
bool lease_grant(struct lease_grantor *g, uint64_t epoch, uint64_t now);

/* Promised a later view: from now on it grants nothing for this epoch. */
void lease_grantor_freeze(struct lease_grantor *g);

/* The grantor moved to a new epoch: grants again (its holds on the old
 * epoch were waited out before that epoch ended). */
void lease_grantor_epoch(struct lease_grantor *g, uint64_t epoch);

/* What a promise reports: how long this grantor's holds still run at now. */
uint64_t lease_hold_remaining(const struct lease_grantor *g, uint64_t now);

/* How long a proposer waits, on its own clock, after a promise that
 * reported remaining R, so that the hold has surely ended in real time. */
uint64_t lease_wait_ns(const struct lease_config *cfg, uint64_t remaining);

#endif
