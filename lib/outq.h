/*
 * outq.h - a connection's queue of reply bytes.
 *
 * Replies are queued as segments: text (headers, status lines) packed into
 * shared blocks, and stored items referenced in place, so a value is never
 * copied on its way to the socket (the item's refcount keeps it alive even
 * if the key is overwritten meanwhile). Consecutive text lands in one segment
 * so a pipeline of small replies goes out in one write.
 *
 * A "flat" queue (UDP) instead copies everything into one contiguous buffer,
 * because a datagram reply is cut into fixed-size pieces.
 */
#ifndef TPCKV_OUTQ_H
#define TPCKV_OUTQ_H

#include "buf.h"

#include <stdbool.h>
#include <stddef.h>
#include <sys/uio.h>

struct item;
struct outq_block;

struct outq_seg {
    const char *p;
    size_t n;
    struct item *it;         /* referenced item, or NULL */
    struct outq_block *blk;  /* block holding text, or NULL */
};

struct outq {
    struct outq_seg *seg; /* pending segments are seg[head..tail) */
    size_t head, tail, cap;
    struct outq_block *cur; /* block text is appended to */
    size_t bytes;           /* bytes queued and not yet consumed */
    bool flat;
    struct buf flatbuf;
};

void outq_init(struct outq *q, bool flat);

/* Queues n bytes of text (copied). Returns 0 or -ENOMEM (queue unchanged). */
int outq_text(struct outq *q, const void *p, size_t n);
int outq_str(struct outq *q, const char *s);

/* Queues an item's value and its "\r\n", taking a reference (dropped when
 * consumed). Returns 0 or -ENOMEM. */
int outq_item(struct outq *q, struct item *it);

/* Fills up to max iovecs from the front of the queue; returns how many. The
 * memory stays valid until outq_consume() passes it or outq_free(). */
size_t outq_iov(const struct outq *q, struct iovec *iov, size_t max);

/* Drops the first n queued bytes (written to the socket). */
void outq_consume(struct outq *q, size_t n);

/* Drops everything, releasing blocks and item references. */
void outq_free(struct outq *q);

#endif /* TPCKV_OUTQ_H */
