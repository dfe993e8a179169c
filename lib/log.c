/*
 * log.c - see log.h for the format and the rules.
 *
 * A line is formatted into a stack buffer and written with a single write(2)
 * on an O_APPEND descriptor, which keeps lines whole across threads and
 * across processes sharing one log file. Write errors are ignored: there is
 * nowhere left to report them.
 */
#include "log.h"

#include "limits.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int log__level = LOG_LEVEL_INFO;
static int log_fd = 2;
static int log_owned_fd = -1;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void log_set_level(enum log_level lvl)
{
    __atomic_store_n(&log__level, (int)lvl, __ATOMIC_RELAXED);
}

enum log_level log_get_level(void)
{
    return (enum log_level)__atomic_load_n(&log__level, __ATOMIC_RELAXED);
}

const char *log_level_name(enum log_level lvl)
{
    if ((unsigned)lvl > LOG_LEVEL_DEBUG)
        return "?";
    return level_names[lvl];
}

int log_parse_level(const char *s, enum log_level *out)
{
    static const struct {
        const char *name;
        enum log_level lvl;
    } map[] = {
        {"error", LOG_LEVEL_ERROR},  {"warn", LOG_LEVEL_WARN},
        {"warning", LOG_LEVEL_WARN}, {"info", LOG_LEVEL_INFO},
        {"debug", LOG_LEVEL_DEBUG},  {"0", LOG_LEVEL_ERROR},
        {"1", LOG_LEVEL_INFO},       {"2", LOG_LEVEL_DEBUG},
    };
    if (s == NULL)
        return -EINVAL;
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
        if (strcmp(s, map[i].name) == 0) {
            *out = map[i].lvl;
            return 0;
        }
    }
    return -EINVAL;
}

int log_get_fd(void)
{
    return log_fd;
}

void log_set_fd(int fd)
{
    log_fd = fd;
}

int log_open_file(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    log_close();
    log_owned_fd = fd;
    log_fd = fd;
    return 0;
}

void log_close(void)
{
    if (log_owned_fd >= 0) {
        close(log_owned_fd);
        log_owned_fd = -1;
    }
    log_fd = 2;
}

char *log_escape(char *dst, size_t cap, const void *src, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = src;
    size_t o = 0;

    for (size_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        size_t need = (c >= 0x20 && c < 0x7f && c != '\\') ? 1 : (c == '\\' ? 2 : 4);
        /* Keep room for "..." and the NUL. */
        if (o + need + 4 > cap) {
            if (o + 4 <= cap) {
                memcpy(dst + o, "...", 3);
                o += 3;
            }
            break;
        }
        if (need == 1) {
            dst[o++] = (char)c;
        } else if (need == 2) {
            dst[o++] = '\\';
            dst[o++] = '\\';
        } else {
            dst[o++] = '\\';
            dst[o++] = 'x';
            dst[o++] = hex[c >> 4];
            dst[o++] = hex[c & 15];
        }
    }
    dst[o < cap ? o : cap - 1] = '\0';
    return dst;
}

void log_write(enum log_level lvl, const char *mod, const char *fmt, ...)
{
    char line[LIMIT_LOG_LINE_BYTES];
    struct timespec ts;
    struct tm tm;
    size_t n;
    int r;
    va_list ap;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
    r = snprintf(line + n, sizeof(line) - n, ".%03ldZ %-5s %s: ", ts.tv_nsec / 1000000L,
                 log_level_name(lvl), mod);
    if (r > 0)
        n += (size_t)r;

    va_start(ap, fmt);
    r = vsnprintf(line + n, sizeof(line) - n, fmt, ap);
    va_end(ap);
    if (r > 0) {
        if ((size_t)r >= sizeof(line) - n) {
            /* Cut: end with "..." and leave room for the newline. */
            n = sizeof(line) - 5;
            memcpy(line + n, "...", 3);
            n += 3;
        } else {
            n += (size_t)r;
        }
    }
    line[n++] = '\n';

    ssize_t w;
    do {
        w = write(log_fd, line, n);
    } while (w < 0 && errno == EINTR);
}

static uint64_t mono_second(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec;
}

bool log_limit_allow(struct log_limit *l, uint64_t *dropped)
{
    uint64_t sec = mono_second();

    if (sec != l->second) {
        l->second = sec;
        l->n = 0;
    }
    if (l->n >= LIMIT_LOG_BURST_PER_S) {
        l->dropped++;
        return false;
    }
    l->n++;
    *dropped = l->dropped;
    l->dropped = 0;
    return true;
}

const char *log_limit_note(char *buf, size_t cap, uint64_t dropped)
{
    if (dropped == 0)
        buf[0] = '\0';
    else
        snprintf(buf, cap, " (%llu more not logged before this)",
                 (unsigned long long)dropped);
    return buf;
}

void log_limit_flush(struct log_limit *l, const char *mod)
{
    if (l->dropped == 0 || mono_second() == l->second)
        return;
    log_warn(mod, "%llu more %s not logged (at most %d a second are)",
             (unsigned long long)l->dropped, l->what, LIMIT_LOG_BURST_PER_S);
    l->dropped = 0;
}
