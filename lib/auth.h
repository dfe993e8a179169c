/*
 * auth.h - the credentials behind client authentication (serve --auth-file):
 * memcached's ASCII authentication file, USER:PASSWORD lines, and the check
 * of what a client sends against them.
 *
 * The table keeps no password: each line becomes HMAC-SHA256 under a key
 * drawn at random when the file is read, of the user name's length, the
 * name and the password. A check computes the same for what the client sent
 * and compares it with every line, all of them, in constant time, so how
 * long it takes says nothing about which name or password came close.
 */
#ifndef TPCKV_AUTH_H
#define TPCKV_AUTH_H

#include <stdbool.h>
#include <stddef.h>

struct auth;

/*
 * Reads the auth file at path into *out (free with auth_free()). The file
 * must be a regular file that neither group nor others may read or write
 * (chmod 600), at most LIMIT_AUTH_FILE_BYTES_MAX bytes.
 *
 * Format, one line each: USER:PASSWORD, memcached's -Y format. USER is 1..250
 * bytes without spaces, ':' or control characters; PASSWORD is everything
 * after the first ':' up to the end of the line (a final CR is dropped),
 * 1..1024 bytes without control characters; spaces are part of it. Empty
 * lines and lines starting with '#' are skipped. A user may have several
 * lines (while a password is being changed, say); any of them matches. At
 * least one line, at most LIMIT_AUTH_USERS_MAX.
 *
 * Returns 0, or a negative errno with a sentence in err (cap bytes) that
 * names the file and, for a bad line, its number (never the password):
 *   -ENOENT, -EACCES...  it cannot be opened or read (open/read's errno)
 *   -EPERM    group or others may read or write it (the mode is given)
 *   -EINVAL   not a regular file, no user in it, or a malformed line
 *   -EFBIG    too large, or too many lines
 *   -ENOMEM, -EIO (no randomness for the key)
 */
int auth_load(const char *path, struct auth **out, char *err, size_t cap);

/* auth_load() on text[0..n) instead of a file (no mode or size check);
 * name is what err calls it. Same returns but the file ones. */
int auth_parse(const char *name, const char *text, size_t n, struct auth **out, char *err,
               size_t cap);

void auth_free(struct auth *a);

/* Lines (user, password pairs) in the table. */
size_t auth_count(const struct auth *a);

/*
 * Whether user[0..nuser) with pass[0..npass) is a line of the table. The
 * bytes come from the network: any bytes, any lengths. For a given table the
 * time taken does not depend on them beyond their length (which is hashed).
 */
bool auth_check(const struct auth *a, const void *user, size_t nuser, const void *pass,
                size_t npass);

#endif /* TPCKV_AUTH_H */
