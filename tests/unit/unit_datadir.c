/*
 * unit_datadir.c - the data directory (lib/datadir.c): its lock, the run
 * state in RUN (read back field for field, a possible loss told, garbage
 * refused), the listing of numbered files, and the removal of what a
 * failed start created. One suite, "datadir":
 *
 *   build/rel/unit datadir
 */
#include "datadir.h"
#include "tdir.h"
#include "unit.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- run state: could the last run have lost records? -------------------------- */

static void write_run(const struct tdir *d, const char *text)
{
    char path[300];
    FILE *f;

    snprintf(path, sizeof(path), "%s/RUN", d->path);
    f = fopen(path, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs(text, f);
    fclose(f);
}

/* Issue 15, found 9: a replica that lost records it had reported durable
 * must know it. Under --fsync none that happens when the run did not stop
 * cleanly and the machine went down (its boot id changed); a kill alone
 * loses nothing the kernel has. */
static void test_run_state_tells_a_possible_loss(void)
{
    struct tdir d;
    struct datadir_run r, w = {.fsync = "none"};
    char boot[40], text[256];

    tdir_make(&d);
    datadir_boot_id(boot, sizeof(boot));
    CU_ASSERT_EQUAL(datadir_run_read(d.path, &r), 0);
    CU_ASSERT_FALSE(r.present); /* a data directory from before: no doubt */
    CU_ASSERT_FALSE(datadir_run_lost(&r, boot));

    CU_ASSERT_EQUAL(datadir_run_write(d.path, &w), 0);
    CU_ASSERT_EQUAL(datadir_run_read(d.path, &r), 0);
    CU_ASSERT(r.present && !r.clean && strcmp(r.fsync, "none") == 0);
    CU_ASSERT(r.lost_before == 0 && !r.has_id && r.txid_ceiling == 0);
    CU_ASSERT_STRING_EQUAL(r.boot_id, boot[0] ? boot : "unknown");
    CU_ASSERT_FALSE(datadir_run_lost(&r, boot)); /* killed, same boot: kept */
    CU_ASSERT_TRUE(datadir_run_lost(&r, "another-boot"));

    /* The machine went down under --fsync none without a clean stop. */
    snprintf(text, sizeof(text),
             "tpckv run 1\nboot %s\nfsync none\nclean no\nlost_before 0\n",
             "00000000-1111-2222-3333-444444444444");
    write_run(&d, text);
    CU_ASSERT_EQUAL(datadir_run_read(d.path, &r), 0);
    CU_ASSERT_TRUE(datadir_run_lost(&r, boot));
    /* Stopped cleanly, or synced every write: nothing lost. */
    write_run(&d, "tpckv run 1\nboot x\nfsync none\nclean yes\nlost_before 0\n");
    CU_ASSERT_EQUAL(datadir_run_read(d.path, &r), 0);
    CU_ASSERT_FALSE(datadir_run_lost(&r, boot));
    write_run(&d, "tpckv run 1\nboot x\nfsync always\nclean no\nlost_before 0\n");
    CU_ASSERT_EQUAL(datadir_run_read(d.path, &r), 0);
    CU_ASSERT_FALSE(datadir_run_lost(&r, boot));
    write_run(&d, "tpckv run 1\nboot x\nfsync batch\nclean no\nlost_before 0\n");
    CU_ASSERT_EQUAL(datadir_run_read(d.path, &r), 0);
    CU_ASSERT_FALSE(datadir_run_lost(&r, boot));
    /* A boot id we cannot read counts as another boot. */
    write_run(&d, "tpckv run 1\nboot x\nfsync none\nclean no\nlost_before 0\n");
    CU_ASSERT_EQUAL(datadir_run_read(d.path, &r), 0);
    CU_ASSERT_TRUE(datadir_run_lost(&r, ""));
    /* A loss once known is kept with its bound, and the replica id, clean
     * stops and all. */
    w = (struct datadir_run){.fsync = "always",
                             .clean = true,
                             .lost_before = 0xfedcba9876543210ull,
                             .has_id = true,
                             .id = 7,
                             .txid_ceiling = 0xfedcba9876543999ull};
    CU_ASSERT_EQUAL(datadir_run_write(d.path, &w), 0);
    CU_ASSERT_EQUAL(datadir_run_read(d.path, &r), 0);
    CU_ASSERT(r.clean && r.lost_before == 0xfedcba9876543210ull && r.has_id && r.id == 7);
    CU_ASSERT(r.txid_ceiling == 0xfedcba9876543999ull);
    CU_ASSERT_EQUAL(r.fence_mark, 0); /* written: 0 */
    CU_ASSERT_FALSE(r.behind);
    /* The fence's mark and a sticky "behind" come back. */
    w.fence_mark = 12345;
    w.behind = true;
    w.behind_by = 2;
    w.behind_seen = 999;
    w.seen[2] = 77;
    CU_ASSERT_EQUAL(datadir_run_write(d.path, &w), 0);
    CU_ASSERT_EQUAL(datadir_run_read(d.path, &r), 0);
    CU_ASSERT(r.fence_mark == 12345 && r.behind && r.behind_by == 2 &&
              r.behind_seen == 999);
    CU_ASSERT_EQUAL(r.seen[2], 77);
    w.behind = false;
    w.seen[2] = 0;
    /* Replica 0 owns its directory too (found by the third audit). */
    w.id = 0;
    CU_ASSERT_EQUAL(datadir_run_write(d.path, &w), 0);
    CU_ASSERT_EQUAL(datadir_run_read(d.path, &r), 0);
    CU_ASSERT(r.has_id && r.id == 0);
    CU_ASSERT_FALSE(datadir_run_lost(&r, boot)); /* this run lost nothing more */
    /* A file edited on another system (CRLF line ends) still reads. */
    write_run(&d, "tpckv run 1\r\nboot x\r\nfsync none\r\nclean yes\r\nlost_before 42\r\n"
                  "id 3\r\n");
    CU_ASSERT_EQUAL(datadir_run_read(d.path, &r), 0);
    CU_ASSERT(r.clean && strcmp(r.fsync, "none") == 0 && strcmp(r.boot_id, "x") == 0);
    CU_ASSERT(r.lost_before == 42 && r.has_id && r.id == 3);
    /* Garbage is refused. */
    write_run(&d, "tpckv run 2\nboot x\n");
    CU_ASSERT_EQUAL(datadir_run_read(d.path, &r), -EBADMSG);
    write_run(&d, "tpckv run 1\nboot x\nfsync none\nclean maybe\nlost_before 0\n");
    CU_ASSERT_EQUAL(datadir_run_read(d.path, &r), -EBADMSG);
    write_run(&d, "tpckv run 1\nboot x\nfsync none\nclean no\n"); /* no bound */
    CU_ASSERT_EQUAL(datadir_run_read(d.path, &r), -EBADMSG);
    write_run(&d, "tpckv run 1\nboot x\nfsync none\nclean no\nlost_before 12x\n");
    CU_ASSERT_EQUAL(datadir_run_read(d.path, &r), -EBADMSG);
    write_run(&d, "tpckv run 1\nboot x\nfsync none\nclean no\nlost_before -1\n");
    CU_ASSERT_EQUAL(datadir_run_read(d.path, &r), -EBADMSG);
    write_run(&d, "tpckv run 1\nboot x\nfsync none\nclean no\nlost_before 0\nid x\n");
    CU_ASSERT_EQUAL(datadir_run_read(d.path, &r), -EBADMSG);
    write_run(
        &d,
        "tpckv run 1\nboot x\nfsync none\nclean no\nlost_before 0\ntxid_ceiling 1e9\n");
    CU_ASSERT_EQUAL(datadir_run_read(d.path, &r), -EBADMSG);
    write_run(
        &d, "tpckv run 1\nboot x\nfsync none\nclean no\nlost_before 0\nid 4294967296\n");
    CU_ASSERT_EQUAL(datadir_run_read(d.path, &r), -EBADMSG);
    tdir_remove(&d);
}

/* The lock: the first taker makes the directory and writes its pid; a
 * second is refused and told who holds it; after a close it is free. */
static void test_lock_is_exclusive_and_names_its_holder(void)
{
    struct tdir d;
    char dir[320], path[400], *pid;
    pid_t holder = -1;
    bool created = false;
    size_t len;
    int fd, fd2;

    tdir_make(&d);
    snprintf(dir, sizeof(dir), "%s/data", d.path);
    fd = datadir_lock(dir, &holder, &created);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_TRUE(created);
    snprintf(path, sizeof(path), "%s/LOCK", dir);
    pid = tdir_read_all(path, &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(pid);
    CU_ASSERT_EQUAL(strtol(pid, NULL, 10), (long)getpid());
    free(pid);

    fd2 = datadir_lock(dir, &holder, &created);
    CU_ASSERT_EQUAL(fd2, -EWOULDBLOCK);
    CU_ASSERT_EQUAL(holder, getpid());
    CU_ASSERT_FALSE(created);
    close(fd);
    fd2 = datadir_lock(dir, &holder, &created);
    CU_ASSERT(fd2 >= 0 && !created && holder == 0);
    close(fd2);
    CU_ASSERT_EQUAL(unlink(path), 0);
    CU_ASSERT_EQUAL(rmdir(dir), 0);
    tdir_remove(&d);
}

static void touch_file(const char *dir, const char *name)
{
    char path[400];

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    tdir_write_all_file(path, "x", 1);
}

/* Only <prefix><16 lowercase hex><suffix> is listed, in numeric order. */
static void test_list_takes_only_numbered_names_in_order(void)
{
    static const char *const names[] = {
        "wal-00000000000000ff.log",
        "wal-0000000000000010.log",
        "wal-0000000000000001.log",
        "wal-000000000000000A.log", /* upper case: not ours */
        "wal-0000000000000002.log.bak",
        "wal-000000000000003.log",
        "snap-0000000000000005.log",
        "wal-0000000000000004.tmp",
        "xwal-0000000000000006.log",
    };
    struct tdir d;
    struct datadir_file *f = NULL;
    char path[400];
    long n;

    tdir_make(&d);
    n = datadir_list(d.path, "wal-", ".log", &f);
    CU_ASSERT_EQUAL(n, 0);
    free(f);
    for (size_t i = 0; i < ARRAY_SIZE(names); i++)
        touch_file(d.path, names[i]);
    n = datadir_list(d.path, "wal-", ".log", &f);
    CU_ASSERT_EQUAL_FATAL(n, 3);
    CU_ASSERT(f[0].seq == 1 && f[1].seq == 0x10 && f[2].seq == 0xff);
    CU_ASSERT_STRING_EQUAL(f[2].name, "wal-00000000000000ff.log");
    free(f);
    datadir_path(path, sizeof(path), "/x", "snap-", 0xabcdef, ".snap");
    CU_ASSERT_STRING_EQUAL(path, "/x/snap-0000000000abcdef.snap");
    snprintf(path, sizeof(path), "%s/missing", d.path);
    CU_ASSERT_EQUAL(datadir_list(path, "wal-", ".log", &f), -ENOENT);
    tdir_remove(&d);
}

/* A start that failed removes what serve put there, and the directory only
 * if that leaves it empty: a file of the user's stays, and its directory. */
static void test_remove_new_takes_only_what_serve_made(void)
{
    static const char *const ours[] = {"LOCK",
                                       "RUN",
                                       "RUN.tmp",
                                       "wal-0000000000000001.log",
                                       "snap-0000000000000002.snap",
                                       "snap-0000000000000003.tmp"};
    struct tdir d;
    char dir[320], path[400];

    tdir_make(&d);
    for (int pass = 0; pass < 2; pass++) {
        snprintf(dir, sizeof(dir), "%s/data", d.path);
        CU_ASSERT_EQUAL_FATAL(mkdir(dir, 0755), 0);
        for (size_t i = 0; i < ARRAY_SIZE(ours); i++)
            touch_file(dir, ours[i]);
        if (pass == 1)
            touch_file(dir, "notes.txt");
        datadir_remove_new(dir);
        for (size_t i = 0; i < ARRAY_SIZE(ours); i++) {
            snprintf(path, sizeof(path), "%s/%s", dir, ours[i]);
            CU_ASSERT_FALSE(tdir_file_exists(path));
        }
        CU_ASSERT_EQUAL(tdir_file_exists(dir), pass == 1);
    }
    snprintf(path, sizeof(path), "%s/notes.txt", dir);
    CU_ASSERT_EQUAL(unlink(path), 0);
    CU_ASSERT_EQUAL(rmdir(dir), 0);
    tdir_remove(&d);
}

void unit_datadir_register(void)
{
    CU_pSuite s = unit_suite("datadir");

    unit_test(s, "the run state tells a possible loss",
              test_run_state_tells_a_possible_loss);
    unit_test(s, "the lock is exclusive and names its holder",
              test_lock_is_exclusive_and_names_its_holder);
    unit_test(s, "the listing takes only numbered names, in order",
              test_list_takes_only_numbered_names_in_order);
    unit_test(s, "a failed start's removal takes only what serve made",
              test_remove_new_takes_only_what_serve_made);
}
