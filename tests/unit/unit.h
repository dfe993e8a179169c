/*
 * unit.h - the CUnit runner's registry.
 *
 * Each tests/unit/unit_<module>.c defines unit_<module>_register(), which adds its
 * suite(s) to the CUnit registry. The runner (unit_main.c) calls every one
 * that is linked in; they are declared weak so a module's suite can land in
 * its own commit without touching the runner.
 */
#ifndef TPCKV_TESTS_UNIT_H
#define TPCKV_TESTS_UNIT_H

#include <CUnit/CUnit.h>

#define UNIT_REGISTER(name) void unit_##name##_register(void) __attribute__((weak))

UNIT_REGISTER(log);
UNIT_REGISTER(util);
UNIT_REGISTER(proto);
UNIT_REGISTER(store);
UNIT_REGISTER(client);
UNIT_REGISTER(server);
UNIT_REGISTER(wal);
UNIT_REGISTER(recover);
UNIT_REGISTER(snap);
UNIT_REGISTER(datadir);
UNIT_REGISTER(tpc);
UNIT_REGISTER(peer);
UNIT_REGISTER(txn);
UNIT_REGISTER(hist);
UNIT_REGISTER(freelist);
UNIT_REGISTER(outq);
UNIT_REGISTER(auth);
UNIT_REGISTER(fence);
UNIT_REGISTER(skew);
UNIT_REGISTER(zipf);
UNIT_REGISTER(lease);
UNIT_REGISTER(view);

/* Adds a suite or aborts the run: a runner that cannot register is broken. */
CU_pSuite unit_suite(const char *name);
void unit_test(CU_pSuite s, const char *name, void (*fn)(void));

#endif
