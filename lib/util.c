/*
 * util.c - see util.h.
 */
#include "util.h"

#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int util_parse_u64(const char *s, size_t n, uint64_t *out)
{
    uint64_t v = 0;

    if (n == 0)
        return -EINVAL;
    for (size_t i = 0; i < n; i++) {
        unsigned d = (unsigned char)s[i] - '0';
        if (d > 9)
            return -EINVAL;
        if (v > (UINT64_MAX - d) / 10)
            return -ERANGE;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

int util_parse_u32(const char *s, size_t n, uint32_t *out)
{
    uint64_t v;
    int r = util_parse_u64(s, n, &v);

    if (r < 0)
        return r;
    if (v > UINT32_MAX)
        return -ERANGE;
    *out = (uint32_t)v;
    return 0;
}

int util_parse_i64(const char *s, size_t n, int64_t *out)
{
    uint64_t v;
    int neg = (n > 0 && s[0] == '-');
    int r = util_parse_u64(s + neg, n - (size_t)neg, &v);

    if (r < 0)
        return r;
    if (neg) {
        if (v > (uint64_t)INT64_MAX + 1)
            return -ERANGE;
        *out = (v == (uint64_t)INT64_MAX + 1) ? INT64_MIN : -(int64_t)v;
    } else {
        if (v > INT64_MAX)
            return -ERANGE;
        *out = (int64_t)v;
    }
    return 0;
}

int util_parse_size(const char *s, uint64_t *out)
{
    size_t n = strlen(s);
    unsigned shift = 0;
    uint64_t v;
    int r;

    if (n > 1) {
        switch (s[n - 1]) {
        case 'k':
        case 'K':
            shift = 10;
            break;
        case 'm':
        case 'M':
            shift = 20;
            break;
        case 'g':
        case 'G':
            shift = 30;
            break;
        }
        if (shift)
            n--;
    }
    if ((r = util_parse_u64(s, n, &v)) < 0)
        return r;
    if (v > (UINT64_MAX >> shift))
        return -ERANGE;
    *out = v << shift;
    return 0;
}

size_t util_fmt_u64(char *dst, uint64_t v)
{
    char tmp[20];
    size_t n = 0;

    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        dst[i] = tmp[n - 1 - i];
    dst[n] = '\0';
    return n;
}

int64_t util_now_unix_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t util_now_unix_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

uint64_t util_mono_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int util_errf(char *err, size_t cap, int code, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
    return code;
}

int util_write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;

    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int util_resolve(const char *host, unsigned port, int socktype, int passive,
                 struct addrinfo **res, const char **why)
{
    struct addrinfo hints;
    char ps[16];
    int r;

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = socktype;
    hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
    snprintf(ps, sizeof(ps), "%u", port);
    r = getaddrinfo(host && host[0] ? host : NULL, ps, &hints, res);
    if (r == 0) {
        *why = "";
        return 0;
    }
    *res = NULL;
    if (r == EAI_SYSTEM) {
        int e = errno ? errno : EIO;
        *why = strerror(e);
        return -e;
    }
    *why = r == EAI_NONAME ? "no such host" : gai_strerror(r);
    return r == EAI_MEMORY ? -ENOMEM : -EADDRNOTAVAIL;
}
