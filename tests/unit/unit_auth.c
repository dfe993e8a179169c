/*
 * unit_auth.c - the --auth-file table: what a file may hold and what it is
 * refused for (with the line named), the file's mode, and the check of
 * credentials from the network, near misses included.
 */
#include "auth.h"
#include "limits.h"
#include "unit.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static struct auth *parse_ok(const char *text)
{
    struct auth *a = NULL;
    char err[256] = "";
    int r = auth_parse("f", text, strlen(text), &a, err, sizeof(err));

    CU_ASSERT_EQUAL(r, 0);
    if (r != 0)
        fprintf(stderr, "\n  %s\n", err);
    return a;
}

/* The text is refused with code, and the message holds want. */
static void parse_fails(const char *text, int code, const char *want)
{
    struct auth *a = (struct auth *)1;
    char err[256] = "";
    int r = auth_parse("f", text, strlen(text), &a, err, sizeof(err));

    CU_ASSERT_EQUAL(r, code);
    CU_ASSERT_PTR_NULL(a);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, want));
    if (r != code || strstr(err, want) == NULL)
        fprintf(stderr, "\n  %s: %d '%s'\n", text, r, err);
}

static bool check(const struct auth *a, const char *user, const char *pass)
{
    return auth_check(a, user, strlen(user), pass, strlen(pass));
}

static void test_parse_and_check(void)
{
    struct auth *a = parse_ok("# users\n"
                              "alice:s3cret\n"
                              "\n"
                              "bob:pass with spaces:and colons\r\n"
                              "carol:old\n"
                              "carol:new\n"
                              "dave:last line, no newline");

    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_EQUAL(auth_count(a), 5);
    CU_ASSERT_TRUE(check(a, "alice", "s3cret"));
    CU_ASSERT_TRUE(check(a, "bob", "pass with spaces:and colons"));
    CU_ASSERT_TRUE(check(a, "carol", "old"));
    CU_ASSERT_TRUE(check(a, "carol", "new"));
    CU_ASSERT_TRUE(check(a, "dave", "last line, no newline"));
    /* Near misses. */
    CU_ASSERT_FALSE(check(a, "alice", "s3cre"));
    CU_ASSERT_FALSE(check(a, "alice", "s3cret "));
    CU_ASSERT_FALSE(check(a, "alice", "S3cret"));
    CU_ASSERT_FALSE(check(a, "Alice", "s3cret"));
    CU_ASSERT_FALSE(check(a, "alice", "old")); /* another user's password */
    CU_ASSERT_FALSE(check(a, "bob", "pass with spaces:and colons\r")); /* CR dropped */
    CU_ASSERT_FALSE(check(a, "# users", ""));
    CU_ASSERT_FALSE(check(a, "", ""));
    CU_ASSERT_FALSE(check(a, "alices", "3cret")); /* the same bytes, split elsewhere */
    CU_ASSERT_FALSE(check(a, "alic", "es3cret"));
    CU_ASSERT_FALSE(auth_check(a, "alice\0", 6, "s3cret", 6));
    /* A token longer than any line matches nothing (and does not overflow). */
    size_t big = LIMIT_AUTH_TOKEN_BYTES_MAX + 10;
    char *p = malloc(big);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    memset(p, 'x', big);
    CU_ASSERT_FALSE(auth_check(a, p, big, p, big));
    CU_ASSERT_FALSE(auth_check(a, "alice", 5, p, big));
    free(p);
    auth_free(a);
}

static void test_refused_lines(void)
{
    parse_fails("", -EINVAL, "holds no USER:PASSWORD line");
    parse_fails("# only a comment\n\n", -EINVAL, "holds no USER:PASSWORD line");
    parse_fails("alice:ok\nbob\n", -EINVAL, "f line 2: no ':'");
    parse_fails(":nouser\n", -EINVAL, "line 1: the user name");
    parse_fails("al ice:pw\n", -EINVAL, "line 1: the user name");
    parse_fails("al\tice:pw\n", -EINVAL, "line 1: the user name");
    parse_fails("alice:\n", -EINVAL, "line 1: the password must be");
    parse_fails("x:y\nalice:pw\x01\n", -EINVAL, "line 2: the password must be");
    /* The message never carries the password. */
    char err[256];
    struct auth *a;
    CU_ASSERT_EQUAL(auth_parse("f", "alice:hunter2\x7f\n", 15, &a, err, sizeof(err)),
                    -EINVAL);
    CU_ASSERT_PTR_NULL(strstr(err, "hunter2"));

    char user[LIMIT_AUTH_USER_BYTES_MAX + 10];
    memset(user, 'u', sizeof(user));
    snprintf(user + LIMIT_AUTH_USER_BYTES_MAX + 1, 9, ":pw\n");
    parse_fails(user, -EINVAL, "line 1: the user name must be 1..250");
    snprintf(user + LIMIT_AUTH_USER_BYTES_MAX, 9, ":pw\n");
    a = parse_ok(user); /* exactly 250 bytes */
    auth_free(a);
}

static void test_too_many_lines(void)
{
    size_t n = LIMIT_AUTH_USERS_MAX + 1, len = 0;
    char *t = malloc(n * 16);

    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    for (size_t i = 0; i < n; i++)
        len += (size_t)sprintf(t + len, "u%zu:p%zu\n", i, i);
    parse_fails(t, -EFBIG, "more than 1024");
    /* One fewer is fine, and the last user is in. */
    t[len - strlen("u1024:p1024\n")] = '\0';
    struct auth *a = parse_ok(t);
    CU_ASSERT_PTR_NOT_NULL(a);
    if (a) {
        CU_ASSERT_TRUE(check(a, "u1023", "p1023"));
        CU_ASSERT_FALSE(check(a, "u1024", "p1024"));
    }
    auth_free(a);
    free(t);
}

/* Writes text to a new file of mode in dir; returns its path (static). */
static const char *write_file(const char *dir, const char *text, mode_t mode)
{
    static char path[128];
    int fd;

    snprintf(path, sizeof(path), "%s/users", dir);
    unlink(path);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_EQUAL((size_t)write(fd, text, strlen(text)), strlen(text));
    close(fd);
    CU_ASSERT_EQUAL(chmod(path, mode), 0);
    return path;
}

static void test_load_file(void)
{
    char dir[] = "/tmp/tpckv-unit-auth.XXXXXX", err[512], missing[160];
    struct auth *a = NULL;
    const char *path;

    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
    path = write_file(dir, "alice:s3cret\n", 0600);
    CU_ASSERT_EQUAL(auth_load(path, &a, err, sizeof(err)), 0);
    CU_ASSERT_PTR_NOT_NULL(a);
    if (a)
        CU_ASSERT_TRUE(check(a, "alice", "s3cret"));
    auth_free(a);
    /* Read-only for the owner is fine too. */
    path = write_file(dir, "alice:s3cret\n", 0400);
    CU_ASSERT_EQUAL(auth_load(path, &a, err, sizeof(err)), 0);
    auth_free(a);
    /* Group or others may read it: refused, saying what to do. */
    path = write_file(dir, "alice:s3cret\n", 0644);
    CU_ASSERT_EQUAL(auth_load(path, &a, err, sizeof(err)), -EPERM);
    CU_ASSERT_PTR_NULL(a);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "mode 644"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "chmod 600"));
    path = write_file(dir, "alice:s3cret\n", 0620);
    CU_ASSERT_EQUAL(auth_load(path, &a, err, sizeof(err)), -EPERM);
    /* Empty. */
    path = write_file(dir, "", 0600);
    CU_ASSERT_EQUAL(auth_load(path, &a, err, sizeof(err)), -EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "holds no USER:PASSWORD line"));
    /* Malformed: the file and the line are named. */
    path = write_file(dir, "alice:s3cret\nbob\n", 0600);
    CU_ASSERT_EQUAL(auth_load(path, &a, err, sizeof(err)), -EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "users line 2"));
    /* Missing, and a directory. */
    snprintf(missing, sizeof(missing), "%s/nope", dir);
    CU_ASSERT_EQUAL(auth_load(missing, &a, err, sizeof(err)), -ENOENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "cannot open"));
    CU_ASSERT_EQUAL(auth_load(dir, &a, err, sizeof(err)), -EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "not a regular file"));
    unlink(path);
    rmdir(dir);
}

void unit_auth_register(void)
{
    CU_pSuite s = unit_suite("auth");
    unit_test(s, "lines, comments, CRLF, several per user; near misses",
              test_parse_and_check);
    unit_test(s, "malformed lines refused with their number", test_refused_lines);
    unit_test(s, "at most LIMIT_AUTH_USERS_MAX lines", test_too_many_lines);
    unit_test(s, "file: mode, empty, missing, directory", test_load_file);
}
