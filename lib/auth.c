/*
 * auth.c - client credentials for --auth-file (see auth.h for the file
 * format and the contract).
 *
 * WHY A MAC AND NOT THE PASSWORDS. Comparing a client's password with the
 * stored one byte by byte returns sooner the sooner they differ, and that
 * difference can be timed from the network. So the table holds, per line,
 * MAC = HMAC-SHA256(key, le32(len(user)) | user | password), key being 32
 * random bytes drawn when the file is read; a check computes the MAC of what
 * the client sent and compares it with every line's, with CRYPTO_memcmp and
 * without stopping at a match. The length prefix makes (user, password)
 * pairs unambiguous ("ab" + "c" and "a" + "bc" differ). The passwords
 * themselves are not kept in memory after the file is read (the read buffer
 * is cleared).
 *
 * The file is refused rather than half-read: a bad line stops the load with
 * its number, so a typo never silently locks a user out (or lets one in).
 */
#include "auth.h"

#include "limits.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAC_BYTES 32

struct auth_line {
    unsigned char mac[MAC_BYTES];
};

struct auth {
    unsigned char key[MAC_BYTES];
    size_t n;
    struct auth_line *lines;
};

/* MAC of a (user, password) pair under a's key into out. Returns 0,
 * -E2BIG for a pair longer than any line can be (it matches nothing), or
 * -EIO if libcrypto fails. */
static int pair_mac(const struct auth *a, const void *user, size_t nuser,
                    const void *pass, size_t npass, unsigned char *out)
{
    unsigned char msg[4 + LIMIT_AUTH_TOKEN_BYTES_MAX];
    unsigned int mdlen = 0;
    int r = 0;

    if (nuser > LIMIT_AUTH_TOKEN_BYTES_MAX || npass > LIMIT_AUTH_TOKEN_BYTES_MAX - nuser)
        return -E2BIG;
    util_put_le32(msg, (uint32_t)nuser);
    memcpy(msg + 4, user, nuser);
    memcpy(msg + 4 + nuser, pass, npass);
    if (HMAC(EVP_sha256(), a->key, MAC_BYTES, msg, 4 + nuser + npass, out, &mdlen) ==
            NULL ||
        mdlen != MAC_BYTES)
        r = -EIO;
    OPENSSL_cleanse(msg, 4 + nuser + npass);
    return r;
}

static bool has_control(const char *p, size_t n, bool space_too)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c < 0x20 || c == 0x7f || (space_too && c == ' '))
            return true;
    }
    return false;
}

int auth_parse(const char *name, const char *text, size_t n, struct auth **out, char *err,
               size_t cap)
{
    struct auth *a;
    size_t pos = 0, lineno = 0, capl = 0;
    int r;

    *out = NULL;
    a = calloc(1, sizeof(*a));
    if (a == NULL)
        return util_errf(err, cap, -ENOMEM, "%s: out of memory", name);
    if (getrandom(a->key, sizeof(a->key), 0) != (ssize_t)sizeof(a->key)) {
        free(a);
        return util_errf(err, cap, -EIO, "%s: no randomness for the key (getrandom)",
                         name);
    }
    while (pos < n) {
        const char *line = text + pos, *nl = memchr(line, '\n', n - pos), *colon;
        size_t len = nl ? (size_t)(nl - line) : n - pos;
        size_t nuser, npass;

        pos += len + (nl != NULL);
        lineno++;
        if (len > 0 && line[len - 1] == '\r')
            len--;
        if (len == 0 || line[0] == '#')
            continue;
        colon = memchr(line, ':', len);
        if (colon == NULL) {
            r = util_errf(err, cap, -EINVAL,
                          "%s line %zu: no ':' (lines are USER:PASSWORD)", name, lineno);
            goto fail;
        }
        nuser = (size_t)(colon - line);
        npass = len - nuser - 1;
        if (nuser == 0 || nuser > LIMIT_AUTH_USER_BYTES_MAX ||
            has_control(line, nuser, true)) {
            r = util_errf(
                err, cap, -EINVAL,
                "%s line %zu: the user name must be 1..%d bytes without spaces or "
                "control characters",
                name, lineno, LIMIT_AUTH_USER_BYTES_MAX);
            goto fail;
        }
        if (npass == 0 || npass > LIMIT_AUTH_PASSWORD_BYTES_MAX ||
            has_control(colon + 1, npass, false)) {
            r = util_errf(err, cap, -EINVAL,
                          "%s line %zu: the password must be 1..%d bytes without control "
                          "characters",
                          name, lineno, LIMIT_AUTH_PASSWORD_BYTES_MAX);
            goto fail;
        }
        if (a->n == LIMIT_AUTH_USERS_MAX) {
            r = util_errf(err, cap, -EFBIG, "%s: more than %d USER:PASSWORD lines", name,
                          LIMIT_AUTH_USERS_MAX);
            goto fail;
        }
        if (a->n == capl) {
            size_t nc = capl ? capl * 2 : 8;
            struct auth_line *p = realloc(a->lines, nc * sizeof(*p));
            if (p == NULL) {
                r = util_errf(err, cap, -ENOMEM, "%s: out of memory", name);
                goto fail;
            }
            a->lines = p;
            capl = nc;
        }
        if ((r = pair_mac(a, line, nuser, colon + 1, npass, a->lines[a->n].mac)) < 0) {
            util_errf(err, cap, r, "%s: HMAC-SHA256 failed (libcrypto)", name);
            goto fail;
        }
        a->n++;
    }
    if (a->n == 0) {
        r = util_errf(err, cap, -EINVAL, "%s holds no USER:PASSWORD line", name);
        goto fail;
    }
    *out = a;
    return 0;
fail:
    auth_free(a);
    return r;
}

int auth_load(const char *path, struct auth **out, char *err, size_t cap)
{
    struct stat sb;
    char *text = NULL;
    size_t len = 0;
    int fd, r;

    *out = NULL;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return util_errf(err, cap, -errno, "cannot open %s: %s", path, strerror(errno));
    if (fstat(fd, &sb) < 0) {
        r = util_errf(err, cap, -errno, "cannot stat %s: %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(sb.st_mode)) {
        r = util_errf(err, cap, -EINVAL, "%s is not a regular file", path);
        goto out;
    }
    if (sb.st_mode & 066) {
        r = util_errf(err, cap, -EPERM,
                      "%s may be read or written by other users (mode %03o): it holds "
                      "passwords; chmod 600 it",
                      path, (unsigned)(sb.st_mode & 0777));
        goto out;
    }
    if (sb.st_size > LIMIT_AUTH_FILE_BYTES_MAX) {
        r = util_errf(err, cap, -EFBIG, "%s is %lld bytes; at most %d are read", path,
                      (long long)sb.st_size, LIMIT_AUTH_FILE_BYTES_MAX);
        goto out;
    }
    /* Read to the end (the size may change under us): one byte more than
     * the limit tells a file that grew past it. */
    text = malloc(LIMIT_AUTH_FILE_BYTES_MAX + 1);
    if (text == NULL) {
        r = util_errf(err, cap, -ENOMEM, "%s: out of memory", path);
        goto out;
    }
    for (;;) {
        ssize_t n = read(fd, text + len, LIMIT_AUTH_FILE_BYTES_MAX + 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            r = util_errf(err, cap, -errno, "cannot read %s: %s", path, strerror(errno));
            goto out;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len > LIMIT_AUTH_FILE_BYTES_MAX) {
            r = util_errf(err, cap, -EFBIG, "%s is over %d bytes", path,
                          LIMIT_AUTH_FILE_BYTES_MAX);
            goto out;
        }
    }
    r = auth_parse(path, text, len, out, err, cap);
out:
    if (text) {
        OPENSSL_cleanse(text, len); /* the passwords */
        free(text);
    }
    close(fd);
    return r;
}

void auth_free(struct auth *a)
{
    if (a == NULL)
        return;
    free(a->lines);
    OPENSSL_cleanse(a->key, sizeof(a->key));
    free(a);
}

size_t auth_count(const struct auth *a)
{
    return a->n;
}

bool auth_check(const struct auth *a, const void *user, size_t nuser, const void *pass,
                size_t npass)
{
    unsigned char mac[MAC_BYTES];
    int match = 0;

    if (pair_mac(a, user, nuser, pass, npass, mac) < 0)
        return false;
    /* Every line, every time: no early exit on a match. */
    for (size_t i = 0; i < a->n; i++)
        match |= CRYPTO_memcmp(mac, a->lines[i].mac, MAC_BYTES) == 0;
    return match != 0;
}
