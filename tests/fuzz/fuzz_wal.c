/*
 * fuzz_wal.c - what recovery does with a log segment's bytes:
 * wal_scan_segment over the image (wal_segment_header_decode, then
 * wal_record_decode record after record, and the torn-or-corrupt verdict),
 * each valid record replayed with recover_replay_payload into an in-memory
 * store and a 2PC ledger (wal_txn_decode, wal_op_next, the store loads),
 * as recover_cluster does for a file, without the file.
 *
 * Records carry a CRC32C that random bytes almost never match, so each input
 * is scanned twice: as it is, and with the header's and every record's
 * checksum (where the length fields delimit one) set right.
 *
 * Checked: the scan's verdict agrees with its offsets and counts (a clean
 * scan covers every byte, a torn or corrupt one stops where the valid bytes
 * end); each record re-encodes to its own bytes, and so do its txn head and
 * each operation (the decoders check every byte, so encodings are
 * canonical); replay returns one of its documented errors; the ledger and
 * the store are freed without leaks.
 */
#include "fuzz_util.h"

#include "crc32c.h"
#include "recover.h"
#include "store.h"
#include "util.h"
#include "wal.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>


struct scan_ctx {
    struct recover_replay rp;
    uint64_t calls;
    uint64_t prev_lsn;
};

static void check_payload(const struct wal_record *rec)
{
    struct wal_txn t;
    size_t pos = 0;
    char head[WAL_TXN_BYTES];

    if (wal_txn_decode(rec->payload, rec->len, &t, &pos) < 0) {
        FUZZ_CHECK(rec->len < WAL_TXN_BYTES);
        return;
    }
    FUZZ_CHECK(pos == WAL_TXN_BYTES);
    wal_txn_encode(head, &t);
    FUZZ_CHECK(memcmp(head, rec->payload, WAL_TXN_BYTES) == 0);
    for (;;) {
        struct wal_op op;
        size_t start = pos;
        int r = wal_op_next(rec->payload, rec->len, &pos, &op);
        if (r != 1) {
            FUZZ_CHECK(r == 0 ? pos == rec->len : r == -EBADMSG);
            break;
        }
        size_t sz = wal_op_size(&op);
        FUZZ_CHECK(sz == pos - start && pos <= rec->len);
        FUZZ_CHECK(op.nkey <= 255 && (op.kind == WAL_OP_FLUSH) == (op.nkey == 0));
        char *enc = malloc(sz);
        FUZZ_CHECK(enc != NULL);
        FUZZ_CHECK(wal_op_encode(enc, &op) == sz && memcmp(enc, rec->payload + start, sz) == 0);
        free(enc);
    }
}

static int on_record(void *arg, const struct wal_record *rec)
{
    struct scan_ctx *c = arg;
    char *enc = malloc(WAL_RECORD_HEADER_BYTES + (size_t)rec->len);
    int r;

    FUZZ_CHECK(enc != NULL);
    FUZZ_CHECK(c->calls == 0 || rec->lsn == c->prev_lsn + 1);
    c->calls++;
    c->prev_lsn = rec->lsn;
    FUZZ_CHECK(wal_record_encode(enc, rec->type, rec->lsn, rec->payload, rec->len) ==
               WAL_RECORD_HEADER_BYTES + (size_t)rec->len);
    FUZZ_CHECK((rec->flags & ~WAL_REC_FLAGS_KNOWN) == 0);
    if (rec->flags & WAL_REC_FLAG_BATCH)
        wal_record_mark_batch(enc);
    FUZZ_CHECK(memcmp(enc, rec->payload - WAL_RECORD_HEADER_BYTES,
                      WAL_RECORD_HEADER_BYTES + (size_t)rec->len) == 0);
    free(enc);
    check_payload(rec);

    r = recover_replay_payload(&c->rp, rec->type, rec->payload, rec->len);
    FUZZ_CHECK(r == 0 || r == -EBADMSG || r == -ENOTSUP || r == -ENOMEM);
    return r;
}

static void scan(const char *data, size_t size, bool cluster)
{
    struct store_config sc = {.max_bytes = 1 << 20, .value_bytes_max = 4096, .seed = 3};
    struct recover_ledger ledger = {.self = 1};
    struct scan_ctx c = {.rp = {.s = store_new(&sc), .ledger = cluster ? &ledger : NULL}};
    struct wal_scan sc_out;

    FUZZ_CHECK(c.rp.s != NULL);
    wal_scan_segment(data, size, on_record, &c, &sc_out);
    switch (sc_out.status) {
    case WAL_SCAN_BAD_HEADER:
    case WAL_SCAN_NEWER_FORMAT:
        FUZZ_CHECK(c.calls == 0 && sc_out.records == 0);
        break;
    case WAL_SCAN_CLEAN:
        FUZZ_CHECK(sc_out.valid_bytes == size);
        break;
    case WAL_SCAN_ZERO_TAIL:
        FUZZ_CHECK(sc_out.bad_offset == sc_out.valid_bytes && sc_out.valid_bytes < size);
        for (size_t i = sc_out.valid_bytes; i < size; i++)
            FUZZ_CHECK(data[i] == 0);
        break;
    case WAL_SCAN_TORN:
    case WAL_SCAN_CORRUPT:
    case WAL_SCAN_HOLE:
    case WAL_SCAN_LSN_GAP:
        FUZZ_CHECK(sc_out.bad_offset == sc_out.valid_bytes && sc_out.valid_bytes < size);
        /* A torn tail has nothing valid after it; a hole has, and only in
         * a format that marks batches. */
        FUZZ_CHECK(sc_out.status != WAL_SCAN_TORN || sc_out.records_after == 0);
        FUZZ_CHECK(sc_out.status != WAL_SCAN_HOLE ||
                   (sc_out.records_after > 0 && sc_out.version >= 2));
        break;
    case WAL_SCAN_STOPPED:
        FUZZ_CHECK(sc_out.cb_error < 0 && sc_out.bad_offset == sc_out.valid_bytes);
        FUZZ_CHECK(c.calls == sc_out.records + 1);
        break;
    default:
        FUZZ_CHECK(!"a scan status wal.h does not list");
    }
    if (sc_out.status != WAL_SCAN_BAD_HEADER && sc_out.status != WAL_SCAN_NEWER_FORMAT) {
        FUZZ_CHECK(sc_out.valid_bytes >= WAL_SEGMENT_HEADER_BYTES &&
                   sc_out.valid_bytes <= size);
        FUZZ_CHECK(sc_out.last_lsn == sc_out.first_lsn - 1 + sc_out.records);
        if (sc_out.status != WAL_SCAN_STOPPED)
            FUZZ_CHECK(c.calls == sc_out.records);
        char hdr[WAL_SEGMENT_HEADER_BYTES];
        wal_segment_header_encode(hdr, sc_out.first_lsn);
        /* The same header but for the version (a format 1 segment reads too). */
        FUZZ_CHECK(memcmp(hdr, data, 8) == 0 && memcmp(hdr + 12, data + 12, 12) == 0 &&
                   util_get_le32(data + 8) >= 1 && util_get_le32(data + 8) <= WAL_FORMAT_VERSION);
    }
    recover_ledger_free(&ledger);
    store_free(c.rp.s);
}

/* Sets the header checksum and that of every record the lengths delimit. */
static void fix_checksums(char *p, size_t size)
{
    size_t off = WAL_SEGMENT_HEADER_BYTES;

    if (size < WAL_SEGMENT_HEADER_BYTES)
        return;
    util_put_le32(p + 28, crc32c(0, p, 28));
    while (size - off >= WAL_RECORD_HEADER_BYTES) {
        uint32_t n = util_get_le32(p + off + 4);
        if (n > size - off - WAL_RECORD_HEADER_BYTES)
            break;
        util_put_le32(p + off, crc32c(0, p + off + 4, WAL_RECORD_HEADER_BYTES - 4 + n));
        off += WAL_RECORD_HEADER_BYTES + (size_t)n;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *copy = fuzz_dup(data, size);
    uint64_t first;

    if (wal_segment_header_decode(copy, size, &first) == 0) {
        char hdr[WAL_SEGMENT_HEADER_BYTES];
        wal_segment_header_encode(hdr, first);
        /* Only the version (<= ours) and the reserved word may differ. */
        FUZZ_CHECK(memcmp(hdr, copy, 8) == 0 && memcmp(hdr + 12, copy + 12, 12) == 0);
    }
    /* A standalone server's log (2PC records refused), then a replica's. */
    scan(copy, size, false);
    scan(copy, size, true);
    fix_checksums(copy, size);
    scan(copy, size, false);
    scan(copy, size, true);
    free(copy);
    return 0;
}
