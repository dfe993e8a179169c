/*
 * unit_main.c - runs every CUnit suite linked into the binary.
 *
 *   build/rel/unit            all suites
 *   build/rel/unit SUITE...   only the named suites
 *
 * Exits 0 when every assertion passed, 1 otherwise. Ends with CUnit's
 * summary table.
 */
#include "unit.h"

#include <CUnit/Basic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

CU_pSuite unit_suite(const char *name)
{
    CU_pSuite s = CU_add_suite(name, NULL, NULL);
    if (s == NULL) {
        fprintf(stderr, "cannot add suite %s: %s\n", name, CU_get_error_msg());
        exit(2);
    }
    return s;
}

void unit_test(CU_pSuite s, const char *name, void (*fn)(void))
{
    if (CU_add_test(s, name, fn) == NULL) {
        fprintf(stderr, "cannot add test %s: %s\n", name, CU_get_error_msg());
        exit(2);
    }
}

int main(int argc, char **argv)
{
    void (*registers[])(void) = {
        unit_log_register,     unit_util_register,    unit_proto_register,
        unit_store_register,   unit_client_register,  unit_server_register,
        unit_wal_register,     unit_recover_register, unit_snap_register,
        unit_datadir_register, unit_tpc_register,     unit_peer_register,
        unit_txn_register,     unit_hist_register,    unit_freelist_register,
        unit_outq_register,    unit_auth_register,    unit_skew_register,
        unit_fence_register,   unit_zipf_register,    unit_lease_register,
        unit_view_register,
    };
    unsigned failed;

    if (CU_initialize_registry() != CUE_SUCCESS) {
        fprintf(stderr, "CUnit: %s\n", CU_get_error_msg());
        return 2;
    }
    for (size_t i = 0; i < sizeof(registers) / sizeof(registers[0]); i++)
        if (registers[i])
            registers[i]();

    CU_basic_set_mode(CU_BRM_NORMAL);
    failed = 0;
    if (argc > 1) {
        /* Each run starts its counts afresh: add them up. */
        for (int i = 1; i < argc; i++) {
            CU_pSuite s = CU_get_suite(argv[i]);
            if (s == NULL) {
                fprintf(stderr, "no suite named %s\n", argv[i]);
                CU_cleanup_registry();
                return 2;
            }
            CU_basic_run_suite(s);
            failed += CU_get_number_of_failures() + CU_get_number_of_tests_failed();
        }
    } else {
        CU_basic_run_tests();
        failed = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
    }
    CU_cleanup_registry();
    return failed ? 1 : 0;
}
