/*
 * unit_log.c - the logger's level filter and line format, and util's number
 * parsing and formatting.
 */
#include "log.h"
#include "unit.h"
#include "util.h"

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

static void test_parse_numbers(void)
{
    uint64_t u;
    uint32_t u32;
    int64_t i;

    CU_ASSERT_EQUAL(util_parse_u64("18446744073709551615", 20, &u), 0);
    CU_ASSERT_EQUAL(u, UINT64_MAX);
    CU_ASSERT_EQUAL(util_parse_u64("18446744073709551616", 20, &u), -ERANGE);
    CU_ASSERT_EQUAL(util_parse_u64("", 0, &u), -EINVAL);
    CU_ASSERT_EQUAL(util_parse_u64("+1", 2, &u), -EINVAL);
    CU_ASSERT_EQUAL(util_parse_u64(" 1", 2, &u), -EINVAL);
    CU_ASSERT_EQUAL(util_parse_u64("12x", 3, &u), -EINVAL);
    CU_ASSERT_EQUAL(util_parse_u64("123456", 3, &u), 0); /* only n bytes are read */
    CU_ASSERT_EQUAL(u, 123);
    CU_ASSERT_EQUAL(util_parse_u32("4294967295", 10, &u32), 0);
    CU_ASSERT_EQUAL(util_parse_u32("4294967296", 10, &u32), -ERANGE);
    CU_ASSERT_EQUAL(util_parse_i64("-9223372036854775808", 20, &i), 0);
    CU_ASSERT_EQUAL(i, INT64_MIN);
    CU_ASSERT_EQUAL(util_parse_i64("9223372036854775808", 19, &i), -ERANGE);
    CU_ASSERT_EQUAL(util_parse_i64("-", 1, &i), -EINVAL);
    CU_ASSERT_EQUAL(util_parse_size("512k", &u), 0);
    CU_ASSERT_EQUAL(u, 524288);
    CU_ASSERT_EQUAL(util_parse_size("2M", &u), 0);
    CU_ASSERT_EQUAL(u, 2097152);
    CU_ASSERT_EQUAL(util_parse_size("k", &u), -EINVAL);
    CU_ASSERT_EQUAL(util_parse_size("99999999999999999999g", &u), -ERANGE);
    CU_ASSERT_EQUAL(util_parse_size("17179869184g", &u), -ERANGE);
}

static void test_fmt_u64(void)
{
    char b[24];

    CU_ASSERT_EQUAL(util_fmt_u64(b, 0), 1);
    CU_ASSERT_STRING_EQUAL(b, "0");
    CU_ASSERT_EQUAL(util_fmt_u64(b, UINT64_MAX), 20);
    CU_ASSERT_STRING_EQUAL(b, "18446744073709551615");
}

void unit_log_register(void)
{
    CU_pSuite s = unit_suite("log");
    unit_test(s, "level filter skips formatting", test_level_filter);
    unit_test(s, "line format and cut", test_line_format);
    unit_test(s, "parse level names and numbers", test_parse_level);
    unit_test(s, "escape untrusted bytes", test_escape);
}

void unit_util_register(void)
{
    CU_pSuite s = unit_suite("util");
    unit_test(s, "strict number parsing", test_parse_numbers);
    unit_test(s, "u64 formatting", test_fmt_u64);
}
