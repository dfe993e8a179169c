/*
 * crc32c.c - CRC-32C, reflected polynomial 0x82f63b78.
 *
 * The software path processes one byte per step with a 256-entry table
 * built on first use. The x86-64 path feeds eight bytes per crc32q
 * instruction; it is chosen at run time, so one binary runs everywhere.
 */
#include "crc32c.h"

#include <pthread.h>
#include <string.h>

#define POLY 0x82f63b78u

static uint32_t table[256];
static pthread_once_t table_once = PTHREAD_ONCE_INIT;

static void table_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ POLY : c >> 1;
        table[i] = c;
    }
}

uint32_t crc32c_sw(uint32_t crc, const void *p, size_t n)
{
    const unsigned char *b = p;

    pthread_once(&table_once, table_init);
    crc = ~crc;
    while (n--)
        crc = table[(crc ^ *b++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_HW_PATH 1

__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(uint32_t crc, const void *p,
                                                             size_t n)
{
    const unsigned char *b = p;
    uint64_t c = ~crc;

    while (n >= 8) {
        uint64_t w;
        memcpy(&w, b, 8);
        c = __builtin_ia32_crc32di(c, w);
        b += 8;
        n -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (n--)
        c32 = __builtin_ia32_crc32qi(c32, *b++);
    return ~c32;
}
#endif

int crc32c_hw_available(void)
{
#ifdef HAVE_HW_PATH
    return __builtin_cpu_supports("sse4.2");
#else
    return 0;
#endif
}

#ifdef HAVE_HW_PATH
static int use_hw;
static pthread_once_t hw_once = PTHREAD_ONCE_INIT;

static void hw_init(void)
{
    use_hw = crc32c_hw_available();
}
#endif

uint32_t crc32c(uint32_t crc, const void *p, size_t n)
{
#ifdef HAVE_HW_PATH
    pthread_once(&hw_once, hw_init);
    if (use_hw)
        return crc32c_hw(crc, p, n);
#endif
    return crc32c_sw(crc, p, n);
}
