/*
 * fuzz_peer.c - what a replica does with the bytes of an inbound peer link:
 * peer_frame_decode over the stream (frames back to back, the last one
 * possibly cut short), peer_msg_decode of each 2PC frame into a struct
 * tpc_msg, and for a PREPARE, txn_prepare of its operations on a store
 * followed by txn_commit or txn_abort, as the resource manager does for a
 * message the 2PC state machine accepts.
 *
 * Frames carry a CRC32C that random bytes almost never match, so each input
 * is decoded twice: as it is (the checksum and length checks), and with
 * every checksum the input's length fields delimit set right (everything
 * behind the checksum). Each pass runs with the frame limits a link uses:
 * a handshake frame's size before authentication, PEER_FRAME_BYTES_MIN,
 * and the default for 1 MiB values.
 *
 * Checked: a decoded frame lies inside the input and within the limit; a
 * decoded message is re-encoded by peer_msg_encode into exactly the frame
 * it came from (the decoder checks every byte, so the encoding is
 * canonical), and that decodes to the same message; every PREPARE
 * operation re-encodes to its own bytes.
 */
#include "fuzz_util.h"

#include "buf.h"
#include "crc32c.h"
#include "peer.h"
#include "store.h"
#include "tpc.h"
#include "txn.h"
#include "util.h"
#include "wal.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define NOW_MS 1700000000000LL

static const size_t frame_limits[] = {
    PEER_FRAME_HEADER_BYTES + PEER_HELLO_BODY_BYTES,
    PEER_FRAME_BYTES_MIN,
    LIMIT_VALUE_BYTES_DEFAULT + LIMIT_PEER_FRAME_OVERHEAD_BYTES,
};

static bool msg_equal(const struct tpc_msg *a, const struct tpc_msg *b)
{
    return a->type == b->type && a->vote == b->vote && a->reason == b->reason &&
           a->outcome == b->outcome && a->from == b->from && a->to == b->to &&
           a->epoch == b->epoch && a->txid == b->txid && a->coord == b->coord &&
           a->nops == b->nops && a->nbytes == b->nbytes &&
           (a->nbytes == 0 || memcmp(a->ops, b->ops, a->nbytes) == 0);
}

/* Each operation of a PREPARE re-encodes to its own bytes. */
static void check_ops(const struct tpc_msg *m)
{
    size_t pos = 0;
    struct wal_op op;
    int r;

    for (uint32_t i = 0; i < m->nops; i++) {
        size_t start = pos;
        if ((r = wal_op_next(m->ops, m->nbytes, &pos, &op)) != 1) {
            FUZZ_CHECK(r == 0 || r == -EBADMSG);
            break;
        }
        size_t sz = wal_op_size(&op);
        FUZZ_CHECK(sz == pos - start && pos <= m->nbytes);
        char *enc = malloc(sz);
        FUZZ_CHECK(enc != NULL);
        FUZZ_CHECK(wal_op_encode(enc, &op) == sz);
        FUZZ_CHECK(memcmp(enc, m->ops + start, sz) == 0);
        free(enc);
    }
}

/* The participant's side of a PREPARE: lock, check, prepare; then the
 * decision (from the txid, so both paths run). */
static void prepare(struct txn_rm *rm, const struct tpc_msg *m)
{
    struct tpc_txn t = {.txid = m->txid,
                        .epoch = m->epoch,
                        .coord = m->coord,
                        .nops = m->nops,
                        .ops = m->ops,
                        .nbytes = m->nbytes,
                        .recovered = (m->txid >> 8) & 1};
    struct txn_prep *p = NULL;
    int r = txn_prepare(rm, &t, &p);

    FUZZ_CHECK(r >= 0 && tpc_reason_on_wire((unsigned)r));
    if (r != 0) {
        /* A refusal holds nothing. */
        FUZZ_CHECK(rm->flush_holder == NULL && store_locks(rm->store) == 0);
        return;
    }
    FUZZ_CHECK(p != NULL && p->nch >= 1 && p->nch <= m->nops);
    if (m->txid & 1)
        txn_commit(rm, p);
    else
        txn_abort(rm, p);
    FUZZ_CHECK(rm->flush_holder == NULL && store_locks(rm->store) == 0);
}

static void check_msg(struct txn_rm *rm, const struct peer_frame *f, const char *frame,
                      long total)
{
    struct tpc_msg m, back;
    struct peer_frame f2;
    struct buf b = BUF_INIT;
    int r = peer_msg_decode(f, &m);

    if (r < 0) {
        FUZZ_CHECK(r == -EBADMSG);
        return;
    }
    FUZZ_CHECK(m.type >= TPC_MSG_PREPARE && m.type <= TPC_MSG_TYPE_MAX && m.type == f->type);
    FUZZ_CHECK(m.coord < TPC_REPLICAS_MAX && m.from == 0 && m.to == 0);
    FUZZ_CHECK(m.epoch == f->epoch && tpc_reason_on_wire(m.reason));
    if (m.type == TPC_MSG_PREPARE)
        FUZZ_CHECK(m.nops >= 1 && m.nbytes >= 1 && m.ops == f->body + PEER_MSG_FIXED_BYTES);
    else
        FUZZ_CHECK(m.nops == 0 && m.nbytes == 0 && m.ops == NULL);

    FUZZ_CHECK(peer_msg_frame_size(&m) == (size_t)total);
    FUZZ_CHECK(peer_msg_encode(&b, &m) == 0);
    FUZZ_CHECK(b.len == (size_t)total && memcmp(b.data, frame, b.len) == 0);
    FUZZ_CHECK(peer_frame_decode(b.data, b.len, b.len, &f2) == total);
    FUZZ_CHECK(peer_msg_decode(&f2, &back) == 0 && msg_equal(&m, &back));
    buf_free(&b);

    if (m.type == TPC_MSG_PREPARE) {
        check_ops(&m);
        prepare(rm, &m);
    }
}

/* An inbound link's read loop over data[0..size) with limit max. */
static void run_link(struct txn_rm *rm, const char *data, size_t size, size_t max)
{
    size_t off = 0;

    while (off < size) {
        struct peer_frame f;
        size_t left = size - off;
        long r = peer_frame_decode(data + off, left, max, &f);

        if (r == -EAGAIN) {
            FUZZ_CHECK(left < 4 || left < (size_t)util_get_le32(data + off) + 4);
            break; /* waits for more */
        }
        if (r < 0) {
            FUZZ_CHECK(r == -EBADMSG);
            break; /* the link is closed */
        }
        FUZZ_CHECK(r >= PEER_FRAME_HEADER_BYTES && (size_t)r <= left && (size_t)r <= max);
        FUZZ_CHECK(f.version == PEER_FRAME_VERSION &&
                   (f.flags == 0 || (f.flags == PEER_FLAG_RESENT && f.type == TPC_MSG_PREPARE)));
        FUZZ_CHECK(f.body == data + off + PEER_FRAME_HEADER_BYTES);
        FUZZ_CHECK(f.nbody == (size_t)r - PEER_FRAME_HEADER_BYTES);
        FUZZ_CHECK(f.type == (uint8_t)data[off + 9]);
        FUZZ_CHECK(f.epoch == util_get_le64(data + off + 12));
        if (f.type >= TPC_MSG_PREPARE && f.type <= TPC_MSG_TYPE_MAX)
            check_msg(rm, &f, data + off, r);
        else
            FUZZ_CHECK(peer_msg_decode(&f, &(struct tpc_msg){0}) == -EBADMSG);
        off += (size_t)r;
    }
}

/* Sets the checksum of every frame the length fields delimit. */
static void fix_checksums(char *p, size_t size)
{
    size_t off = 0;

    while (size - off >= PEER_FRAME_HEADER_BYTES) {
        uint32_t flen = util_get_le32(p + off);
        if (flen < PEER_FRAME_HEADER_BYTES - 4 || flen > size - off - 4)
            break;
        util_put_le32(p + off + 4, crc32c(0, p + off + 8, flen - 4));
        off += (size_t)flen + 4;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct store_config sc = {.max_bytes = 1 << 20, .value_bytes_max = 4096, .seed = 7};
    struct txn_rm rm = {.store = store_new(&sc)};
    char *copy = fuzz_dup(data, size);

    FUZZ_CHECK(rm.store != NULL);
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1)
            fix_checksums(copy, size);
        for (size_t i = 0; i < sizeof(frame_limits) / sizeof(frame_limits[0]); i++)
            run_link(&rm, copy, size, frame_limits[i]);
    }
    FUZZ_CHECK(rm.prepared == 0);
    store_free(rm.store);
    free(copy);
    return 0;
}
