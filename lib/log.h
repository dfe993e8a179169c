/*
 * log.h - leveled logging for both binaries.
 *
 * Levels, most to least severe: error < warn < info < debug. A message is
 * written when its level is at or below the configured one. The macros test
 * the level *before* evaluating their arguments, so a debug line costs one
 * integer compare when debug is off, however expensive its arguments are.
 *
 * Line format (one write(2) per line, so lines from threads never interleave):
 *
 *   2026-11-22T10:11:12.345Z info  server: listening on tcp 127.0.0.1:11211
 *
 * The logger is process-wide state (there is one stderr). Everything else in
 * lib/ takes its context as an argument.
 *
 * Rule: values never appear in info or lower-severity lines; keys and
 * untrusted bytes are escaped with log_escape() before they are printed.
 */
#ifndef TPCKV_LOG_H
#define TPCKV_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum log_level {
    LOG_LEVEL_ERROR = 0,
    LOG_LEVEL_WARN = 1,
    LOG_LEVEL_INFO = 2,
    LOG_LEVEL_DEBUG = 3,
};

/* Current level; read by the macros. Set it with log_set_level(). */
extern int log__level;

#define log_enabled(lvl) ((int)(lvl) <= __atomic_load_n(&log__level, __ATOMIC_RELAXED))

#define log_at(lvl, mod, ...)                                                            \
    do {                                                                                 \
        if (log_enabled(lvl))                                                            \
            log_write((lvl), (mod), __VA_ARGS__);                                        \
    } while (0)

#define log_error(mod, ...) log_at(LOG_LEVEL_ERROR, mod, __VA_ARGS__)
#define log_warn(mod, ...) log_at(LOG_LEVEL_WARN, mod, __VA_ARGS__)
#define log_info(mod, ...) log_at(LOG_LEVEL_INFO, mod, __VA_ARGS__)
#define log_debug(mod, ...) log_at(LOG_LEVEL_DEBUG, mod, __VA_ARGS__)

/* Writes one formatted line unconditionally (callers use the macros). */
void log_write(enum log_level lvl, const char *mod, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

void log_set_level(enum log_level lvl);
enum log_level log_get_level(void);

/*
 * Parses "error", "warn", "info", "debug" or the classic numbers
 * 0 = error, 1 = info, 2 = debug. Returns 0, or -EINVAL for anything else.
 */
int log_parse_level(const char *s, enum log_level *out);

const char *log_level_name(enum log_level lvl);

/*
 * Sends log lines to fd (default 2, stderr). The logger does not own fd
 * unless it came from log_open_file().
 */
void log_set_fd(int fd);

/*
 * Opens path for appending (created 0644 if missing) and sends log lines
 * there. Returns 0 or -errno; on error the previous destination stays.
 */
int log_open_file(const char *path);

/* Closes a file opened by log_open_file() and goes back to stderr. */
void log_close(void);

/* The descriptor log lines go to (2 unless log_set_fd or log_open_file). */
int log_get_fd(void);

/*
 * Copies src[0..n) into dst (capacity cap > 0) for printing: printable ASCII
 * as is, other bytes as \xHH, cut with "..." when it does not fit. Returns dst,
 * always NUL-terminated.
 */
char *log_escape(char *dst, size_t cap, const void *src, size_t n);

/*
 * Warnings of one kind that anyone can cause at will (refused connections,
 * failed logins, connections that fail their handshake): at most
 * LIMIT_LOG_BURST_PER_S lines a second, the rest counted. A log flood must
 * not follow a connection flood.
 */
struct log_limit {
    const char *what; /* "refused connections", for log_limit_flush's line */
    uint64_t second;  /* the current one-second window (monotonic) */
    unsigned n;       /* lines let through in it */
    uint64_t dropped; /* not let through since the last line that was */
};

/* Whether one more line of l's kind may be logged now. When it may,
 * *dropped is how many were not before it (log_limit_note says so). */
bool log_limit_allow(struct log_limit *l, uint64_t *dropped);

/* " (N more not logged before this)" for a line log_limit_allow() let
 * through after dropping N, or "". Returns buf. */
const char *log_limit_note(char *buf, size_t cap, uint64_t dropped);

/* Logs, under mod, how many lines of l's kind went unlogged, once their
 * second is over (call it from a timer). */
void log_limit_flush(struct log_limit *l, const char *mod);

#endif /* TPCKV_LOG_H */
