/*
 * util.h - small helpers shared by every module: strict number parsing,
 * clocks, and careful system calls.
 *
 * Errors follow lib/'s convention: 0 or a negative errno code (err.h).
 */
#ifndef TPCKV_UTIL_H
#define TPCKV_UTIL_H

#include <stddef.h>
#include <stdint.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/*
 * Strict decimal parsers over s[0..n): digits only (util_parse_i64 also takes
 * one leading '-'), no spaces, no '+', at least one digit.
 * Return 0, -EINVAL (not a number) or -ERANGE (does not fit).
 */
int util_parse_u64(const char *s, size_t n, uint64_t *out);
int util_parse_u32(const char *s, size_t n, uint32_t *out);
int util_parse_i64(const char *s, size_t n, int64_t *out);

/*
 * Parses a size for a command-line flag: a decimal number with an optional
 * binary suffix k, m or g (either case), e.g. "512k" = 524288. Returns 0,
 * -EINVAL or -ERANGE.
 */
int util_parse_size(const char *s, uint64_t *out);

/* Little-endian fixed-width integers, for on-disk formats. On a
 * little-endian host they are plain unaligned moves (gcc -O2 did not merge
 * the byte loops: a logged set spent ~340 instructions in them). */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define UTIL_LE_NATIVE 1
#else
#define UTIL_LE_NATIVE 0
#endif

static inline void util_put_le16(void *p, uint16_t v)
{
    unsigned char *b = p;
    b[0] = (unsigned char)v;
    b[1] = (unsigned char)(v >> 8);
}

static inline void util_put_le32(void *p, uint32_t v)
{
    unsigned char *b = p;
    if (UTIL_LE_NATIVE) {
        __builtin_memcpy(b, &v, 4);
        return;
    }
    for (int i = 0; i < 4; i++)
        b[i] = (unsigned char)(v >> (8 * i));
}

static inline void util_put_le64(void *p, uint64_t v)
{
    unsigned char *b = p;
    if (UTIL_LE_NATIVE) {
        __builtin_memcpy(b, &v, 8);
        return;
    }
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(v >> (8 * i));
}

static inline uint16_t util_get_le16(const void *p)
{
    const unsigned char *b = p;
    return (uint16_t)(b[0] | b[1] << 8);
}

static inline uint32_t util_get_le32(const void *p)
{
    const unsigned char *b = p;
    uint32_t v = 0;
    if (UTIL_LE_NATIVE) {
        __builtin_memcpy(&v, b, 4);
        return v;
    }
    for (int i = 3; i >= 0; i--)
        v = v << 8 | b[i];
    return v;
}

static inline uint64_t util_get_le64(const void *p)
{
    const unsigned char *b = p;
    uint64_t v = 0;
    if (UTIL_LE_NATIVE) {
        __builtin_memcpy(&v, b, 8);
        return v;
    }
    for (int i = 7; i >= 0; i--)
        v = v << 8 | b[i];
    return v;
}

/* Formats v in decimal into dst (at least 21 bytes); returns the length. */
size_t util_fmt_u64(char *dst, uint64_t v);

/* Wall clock as unix milliseconds (for exptime, logs, stats "time"). */
int64_t util_now_unix_ms(void);

/* Wall clock as unix microseconds (transaction ids start above it). */
uint64_t util_now_unix_us(void);

/* Monotonic clock in nanoseconds (for durations; never jumps). */
uint64_t util_mono_ns(void);

/*
 * Formats an error sentence into err (cap bytes) and returns code, so a
 * function can fail with both in one statement: return util_errf(...).
 */
int util_errf(char *err, size_t cap, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* write(2) that retries EINTR and short writes. Returns 0 or -errno. */
/*
 * Looks up host and port (a number) for sockets of socktype (SOCK_STREAM,
 * SOCK_DGRAM); passive: for bind (a NULL or empty host: every address).
 * Sets *res, to free with freeaddrinfo. Returns 0, or -EADDRNOTAVAIL (no
 * such host), -ENOMEM, -errno; *why then says it in words. Every lookup of
 * the tree goes through here (serve's listeners, the peer listener,
 * lib/client's connections).
 */
struct addrinfo;
int util_resolve(const char *host, unsigned port, int socktype, int passive,
                 struct addrinfo **res, const char **why);

int util_write_all(int fd, const void *buf, size_t n);

#endif /* TPCKV_UTIL_H */
