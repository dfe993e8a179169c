/* clockshim.c - a test-only LD_PRELOAD library that shifts a process's wall
 * clock by an offset the test can change while the process runs (the clock
 * skew nemesis of tests/chaos/chaos.py). Never linked into serve.
 *
 *   TPCKV_CLOCK_OFFSET_FILE=/tmp/x/clock-r1 LD_PRELOAD=build/rel/tests/chaos/clockshim.so ./serve ...
 *
 * The file holds one signed integer: milliseconds added to CLOCK_REALTIME and
 * CLOCK_REALTIME_COARSE as clock_gettime reports them, and to gettimeofday()
 * and time(), which read the same clock. serve's wall clock is
 * util_now_unix_ms/us (clock_gettime(CLOCK_REALTIME)); every other clock —
 * CLOCK_MONOTONIC, which libuv's uv_now and serve's timeouts use, CPU clocks —
 * passes through untouched. A missing, empty or garbled file means 0; so
 * does an unset variable. Write the file by rename (write a temporary file,
 * then rename it over), so a reader never sees half a number.
 *
 * The file is read at the first clock read and then again at most every
 * CLOCKSHIM_RECHECK_MS of monotonic time, by whichever thread reads the clock
 * first once that interval has passed (a compare-and-swap on the deadline
 * elects it; the others use the offset in force and never wait). The offset
 * is one atomic 64-bit value, so every thread sees a whole one. A read is
 * open + read + close of a small file: no lock, no allocation, errno kept.
 * Calls libc makes internally (pthread_cond_timedwait's deadline, for one)
 * do not go through this library and see the real clock.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define CLOCKSHIM_ENV "TPCKV_CLOCK_OFFSET_FILE"
#define CLOCKSHIM_RECHECK_MS 50
/* Ten years: far beyond any test, and no overflow when added to a clock. */
#define CLOCKSHIM_MAX_OFFSET_MS (10LL * 366 * 86400 * 1000)

typedef int (*clock_gettime_fn)(clockid_t, struct timespec *);
typedef int (*gettimeofday_fn)(struct timeval *restrict, void *restrict);

static _Atomic(clock_gettime_fn) real_cg;
static _Atomic(gettimeofday_fn) real_gtod;
static const char *offset_path; /* set once, by the constructor */
static _Atomic int64_t offset_ms;
static _Atomic uint64_t next_read_ns; /* monotonic; 0: read at the next call */

static int raw_clock_gettime(clockid_t id, struct timespec *ts)
{
    return (int)syscall(SYS_clock_gettime, id, ts);
}

static clock_gettime_fn clock_fn(void)
{
    clock_gettime_fn f = atomic_load_explicit(&real_cg, memory_order_acquire);

    if (f == NULL) {
        /* Two threads may both look it up: they find the same function. */
        f = (clock_gettime_fn)dlsym(RTLD_NEXT, "clock_gettime");
        if (f == NULL)
            f = raw_clock_gettime;
        atomic_store_explicit(&real_cg, f, memory_order_release);
    }
    return f;
}

/* "[spaces][+-]digits[spaces]" -> milliseconds; anything else -> 0. */
static int64_t parse_offset(const char *s, size_t n)
{
    size_t i = 0;
    int neg = 0;
    int64_t v = 0;
    size_t digits = 0;

    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
        i++;
    if (i < n && (s[i] == '-' || s[i] == '+'))
        neg = s[i++] == '-';
    for (; i < n && s[i] >= '0' && s[i] <= '9'; i++, digits++) {
        v = v * 10 + (s[i] - '0');
        if (v > CLOCKSHIM_MAX_OFFSET_MS)
            return 0;
    }
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
        i++;
    if (digits == 0 || i != n)
        return 0;
    return neg ? -v : v;
}

static int64_t read_offset(void)
{
    char b[64];
    ssize_t n;
    int fd;

    if (offset_path == NULL)
        return 0;
    fd = open(offset_path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return 0;
    do
        n = read(fd, b, sizeof(b));
    while (n < 0 && errno == EINTR);
    close(fd);
    if (n <= 0 || (size_t)n >= sizeof(b))
        return 0; /* empty, unreadable, or longer than any number we write */
    return parse_offset(b, (size_t)n);
}

static void maybe_reread(clock_gettime_fn real)
{
    struct timespec m;
    uint64_t t, due;
    int saved = errno;

    if (real(CLOCK_MONOTONIC, &m) != 0)
        return;
    t = (uint64_t)m.tv_sec * 1000000000u + (uint64_t)m.tv_nsec;
    due = atomic_load_explicit(&next_read_ns, memory_order_relaxed);
    if (t < due)
        return;
    /* One thread wins the re-read; a loser goes on with the offset in force. */
    if (!atomic_compare_exchange_strong(&next_read_ns, &due,
                                        t + (uint64_t)CLOCKSHIM_RECHECK_MS * 1000000u))
        return;
    atomic_store_explicit(&offset_ms, read_offset(), memory_order_relaxed);
    errno = saved;
}

static int64_t current_offset_ms(void)
{
    maybe_reread(clock_fn());
    return atomic_load_explicit(&offset_ms, memory_order_relaxed);
}

static void shift_ts(struct timespec *ts, int64_t ms)
{
    int64_t ns = (int64_t)ts->tv_nsec + (ms % 1000) * 1000000;
    int64_t sec = (int64_t)ts->tv_sec + ms / 1000;

    if (ns < 0) {
        ns += 1000000000;
        sec--;
    } else if (ns >= 1000000000) {
        ns -= 1000000000;
        sec++;
    }
    ts->tv_sec = (time_t)sec;
    ts->tv_nsec = (long)ns;
}

__attribute__((constructor)) static void clockshim_init(void)
{
    const char *p = getenv(CLOCKSHIM_ENV);

    offset_path = p != NULL && p[0] != '\0' ? p : NULL;
    (void)current_offset_ms();
}

int clock_gettime(clockid_t id, struct timespec *ts)
{
    clock_gettime_fn real = clock_fn();
    int r = real(id, ts);

    if (r == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) {
        int64_t off = current_offset_ms();

        if (off != 0)
            shift_ts(ts, off);
    }
    return r;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz)
{
    gettimeofday_fn real = atomic_load_explicit(&real_gtod, memory_order_acquire);
    int r;

    if (real == NULL) {
        real = (gettimeofday_fn)dlsym(RTLD_NEXT, "gettimeofday");
        if (real == NULL) {
            errno = ENOSYS;
            return -1;
        }
        atomic_store_explicit(&real_gtod, real, memory_order_release);
    }
    r = real(tv, tz);
    if (r == 0) { /* tv is nonnull, as declared */
        int64_t off = current_offset_ms();

        if (off != 0) {
            struct timespec ts = { .tv_sec = tv->tv_sec, .tv_nsec = (long)tv->tv_usec * 1000 };

            shift_ts(&ts, off);
            tv->tv_sec = ts.tv_sec;
            tv->tv_usec = (suseconds_t)(ts.tv_nsec / 1000);
        }
    }
    return r;
}

time_t time(time_t *out)
{
    struct timespec ts;
    time_t t;

    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return (time_t)-1;
    t = ts.tv_sec;
    if (out != NULL)
        *out = t;
    return t;
}
