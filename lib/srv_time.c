/*
 * srv_time.c - the clocks as the server reads them (at most once per loop
 * turn per thread), and warnings limited to a burst a second.
 */

#include "srv.h"

/*
 * The clocks, read at most once per loop turn (or hold of the server lock)
 * per thread: a replicated write used to read them a dozen times on each
 * replica (every peer message, every durable record), 3% of the CPU of a
 * 3-replica run. Stale marks the readings old; the next use reads again.
 * Stale is set when a thread takes the server lock and, on the main loop,
 * before it polls and after its I/O callbacks, so no reading outlives the
 * work of one wake-up.
 */
static __thread bool tl_wall_fresh, tl_mono_fresh;
static __thread int64_t tl_wall_ms;
static __thread uint64_t tl_mono_ns;

void srv_clock_stale(void)
{
    tl_wall_fresh = tl_mono_fresh = false;
}

static int64_t wall_ms(void)
{
    if (!tl_wall_fresh) {
        tl_wall_ms = util_now_unix_ms();
        tl_wall_fresh = true;
    }
    return tl_wall_ms;
}

static uint64_t mono_ns(void)
{
    if (!tl_mono_fresh) {
        tl_mono_ns = util_mono_ns();
        tl_mono_fresh = true;
    }
    return tl_mono_ns;
}

void srv_clock_on_prepare(uv_prepare_t *h)
{
    (void)h;
    srv_clock_stale();
}

void srv_clock_on_check(uv_check_t *h)
{
    (void)h;
    srv_clock_stale();
}

void srv_refresh_now(struct server *srv)
{
    srv->now_ms = wall_ms();
}

uint64_t srv_now_us(void)
{
    return mono_ns() / 1000u;
}

uint64_t srv_mono_ms(void)
{
    return mono_ns() / 1000000u;
}

uint64_t srv_rng_next(struct server *srv)
{
    /* splitmix64: jitter only, no need for anything stronger */
    uint64_t z = (srv->rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
