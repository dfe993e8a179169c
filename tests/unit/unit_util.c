/*
 * unit_util.c - util's strict number parsing and formatting.
 */
#include "unit.h"
#include "util.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>

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

void unit_util_register(void)
{
    CU_pSuite s = unit_suite("util");
    unit_test(s, "strict number parsing", test_parse_numbers);
    unit_test(s, "u64 formatting", test_fmt_u64);
}
