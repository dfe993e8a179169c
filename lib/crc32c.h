/*
 * crc32c.h - CRC-32C (Castagnoli), the checksum of WAL records and
 * snapshots. Uses the SSE4.2 crc32 instruction when the CPU has it, a
 * table otherwise; both give the same values.
 */
#ifndef TPCKV_CRC32C_H
#define TPCKV_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Extends crc (0 to start) over p[0..n). crc32c("123456789") = 0xe3069283. */
uint32_t crc32c(uint32_t crc, const void *p, size_t n);

/* The portable table version, for tests to compare against. */
uint32_t crc32c_sw(uint32_t crc, const void *p, size_t n);

/* True when crc32c() uses the hardware instruction. */
int crc32c_hw_available(void);

#endif
