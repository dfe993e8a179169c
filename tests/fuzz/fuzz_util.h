/*
 * fuzz_util.h - what the fuzz targets share.
 *
 * Each tests/fuzz/fuzz_<name>.c defines LLVMFuzzerTestOneInput. Built with
 * clang -fsanitize=fuzzer,address,undefined it is a libFuzzer binary (make
 * fuzz); built with replay_main.c under gcc's ASan+UBSan it replays corpus
 * and crash files once each (make fuzz-replay, part of make test). A target
 * checks the properties it states with FUZZ_CHECK, which aborts: to either
 * build, a broken property is a crash like any other.
 */
#ifndef TPCKV_TESTS_FUZZ_UTIL_H
#define TPCKV_TESTS_FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Prints where and what, then aborts. */
void fuzz_fail(const char *file, int line, const char *what) __attribute__((noreturn));

#define FUZZ_CHECK(cond)                                                                   \
    do {                                                                                   \
        if (!(cond))                                                                       \
            fuzz_fail(__FILE__, __LINE__, #cond);                                          \
    } while (0)

/* FNV-1a over p[0..n), folded into h (start with FUZZ_HASH_INIT). */
#define FUZZ_HASH_INIT 0xcbf29ce484222325ull
uint64_t fuzz_hash(uint64_t h, const void *p, size_t n);

/* A small deterministic generator (splitmix64), seeded from the input, for
 * choices a target makes besides the bytes themselves (chunk sizes). */
uint64_t fuzz_rand(uint64_t *state);

/* A malloc'ed copy of data[0..n) (at least 1 byte allocated), or abort. A
 * copy lets ASan see a read one byte past what the code was given. */
char *fuzz_dup(const void *data, size_t n);

/* Marks p[0..n) unreadable (or readable again) for AddressSanitizer, so a
 * target can keep one buffer and still catch reads past what it holds. No-ops
 * without ASan. */
#if defined(__SANITIZE_ADDRESS__)
#define FUZZ_HAVE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FUZZ_HAVE_ASAN 1
#endif
#endif
#ifdef FUZZ_HAVE_ASAN
#include <sanitizer/asan_interface.h>
#define fuzz_poison(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define fuzz_unpoison(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define fuzz_poison(p, n) ((void)(p), (void)(n))
#define fuzz_unpoison(p, n) ((void)(p), (void)(n))
#endif

#endif
