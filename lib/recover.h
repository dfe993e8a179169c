/*
 * recover.h - rebuild the store from a data directory at start: the newest
 * valid snapshot, then the write-ahead log after it.
 */
#ifndef TPCKV_RECOVER_H
#define TPCKV_RECOVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct store;

struct recover_result {
    uint64_t snap_lsn;    /* snapshot loaded (0 = none) */
    uint64_t snap_items;
    uint64_t records;     /* log records replayed after the snapshot */
    uint64_t segments;    /* log segments read */
    uint64_t next_lsn;    /* the first lsn the log may use now */
    uint64_t next_cas;    /* the first cas unique not yet handed out */
    uint64_t truncated_bytes; /* torn tail cut from the last segment */
    uint64_t elapsed_ms;
};

/*
 * Loads dir into s (which must be empty) as of now_ms. Repairs what a crash
 * can leave behind and nothing else: removes unfinished snapshot files, cuts
 * a torn record off the end of the last segment, removes a last segment
 * holding no record. Returns 0, or a negative errno with err (errcap bytes)
 * holding a sentence naming the file, the offset and what to do:
 *   -EBADMSG         corruption (a bad record with valid data after it, or
 *                    anywhere but the end of the last segment)
 *   -ENOENT          a missing segment (a gap in the log's sequence numbers)
 *   -EPROTONOSUPPORT files written by a newer serve
 *   -ENOMEM, -EIO ...
 * Warnings about repairs are logged.
 */
int recover(const char *dir, struct store *s, int64_t now_ms, struct recover_result *res,
            char *err, size_t errcap);

#endif
