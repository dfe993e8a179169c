/*
 * unit_log.c - the logger's level filter, line format and escaping.
 */
#include "log.h"
#include "unit.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int evaluated;

static int side_effect(void)
{
    return ++evaluated;
}

/* Runs fn with log output going to a pipe; returns what was written. */
static size_t capture(void (*fn)(void), char *out, size_t cap)
{
    int p[2];
    ssize_t n;

    CU_ASSERT_FATAL(pipe(p) == 0);
    log_set_fd(p[1]);
    fn();
    log_set_fd(2);
    close(p[1]);
    n = read(p[0], out, cap - 1);
    close(p[0]);
    out[n > 0 ? n : 0] = '\0';
    return n > 0 ? (size_t)n : 0;
}

static void emit_all_levels(void)
{
    log_error("mod", "e%d", side_effect());
    log_warn("mod", "w%d", side_effect());
    log_info("mod", "i%d", side_effect());
    log_debug("mod", "d%d", side_effect());
}

static void test_level_filter(void)
{
    char out[4096];
    enum log_level saved = log_get_level();

    evaluated = 0;
    log_set_level(LOG_LEVEL_WARN);
    capture(emit_all_levels, out, sizeof(out));
    /* Filtered calls do not even evaluate their arguments. */
    CU_ASSERT_EQUAL(evaluated, 2);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "error mod: e1\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "warn  mod: w2\n"));
    CU_ASSERT_PTR_NULL(strstr(out, "info"));
    CU_ASSERT_PTR_NULL(strstr(out, "debug"));

    evaluated = 0;
    log_set_level(LOG_LEVEL_DEBUG);
    capture(emit_all_levels, out, sizeof(out));
    CU_ASSERT_EQUAL(evaluated, 4);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "debug mod: d4\n"));

    evaluated = 0;
    log_set_level(LOG_LEVEL_ERROR);
    capture(emit_all_levels, out, sizeof(out));
    CU_ASSERT_EQUAL(evaluated, 1);
    CU_ASSERT_PTR_NULL(strstr(out, "warn"));
    log_set_level(saved);
}

static void emit_long(void)
{
    char big[10000];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    log_error("m", "%s", big);
}

static void test_line_format(void)
{
    char out[16384];
    size_t n = capture(emit_long, out, sizeof(out));

    /* 2026-11-22T10:11:12.345Z error m: xxx...  cut, one line. */
    CU_ASSERT(n > 30 && n < 5000);
    CU_ASSERT_EQUAL(out[4], '-');
    CU_ASSERT_EQUAL(out[10], 'T');
    CU_ASSERT_EQUAL(out[23], 'Z');
    CU_ASSERT_EQUAL(out[n - 1], '\n');
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "...\n"));
    CU_ASSERT_PTR_NULL(memchr(out, '\n', n - 1));
}

static void test_parse_level(void)
{
    enum log_level l;

    CU_ASSERT_EQUAL(log_parse_level("debug", &l), 0);
    CU_ASSERT_EQUAL(l, LOG_LEVEL_DEBUG);
    CU_ASSERT_EQUAL(log_parse_level("warn", &l), 0);
    CU_ASSERT_EQUAL(l, LOG_LEVEL_WARN);
    CU_ASSERT_EQUAL(log_parse_level("0", &l), 0);
    CU_ASSERT_EQUAL(l, LOG_LEVEL_ERROR);
    CU_ASSERT_EQUAL(log_parse_level("1", &l), 0);
    CU_ASSERT_EQUAL(l, LOG_LEVEL_INFO);
    CU_ASSERT_EQUAL(log_parse_level("2", &l), 0);
    CU_ASSERT_EQUAL(l, LOG_LEVEL_DEBUG);
    CU_ASSERT_EQUAL(log_parse_level("3", &l), -EINVAL);
    CU_ASSERT_EQUAL(log_parse_level("DEBUG", &l), -EINVAL);
    CU_ASSERT_EQUAL(log_parse_level("", &l), -EINVAL);
}

static void test_escape(void)
{
    char out[16];

    CU_ASSERT_STRING_EQUAL(log_escape(out, sizeof(out), "a\r\nb", 4), "a\\x0d\\x0ab");
    CU_ASSERT_STRING_EQUAL(log_escape(out, sizeof(out), "\\", 1), "\\\\");
    /* Cut with "..." and always terminated. */
    CU_ASSERT_STRING_EQUAL(log_escape(out, sizeof(out), "abcdefghijklmnopqrstuvwxyz", 26),
                           "abcdefghijkl...");
    CU_ASSERT_STRING_EQUAL(log_escape(out, 4, "abcdef", 6), "...");
}

void unit_log_register(void)
{
    CU_pSuite s = unit_suite("log");
    unit_test(s, "level filter skips formatting", test_level_filter);
    unit_test(s, "line format and cut", test_line_format);
    unit_test(s, "parse level names and numbers", test_parse_level);
    unit_test(s, "escape untrusted bytes", test_escape);
}

