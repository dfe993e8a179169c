/*
 * outq.c - see outq.h.
 *
 * Blocks are fixed-size once allocated (never realloc'd), so pointers handed
 * out by outq_iov() stay valid while more text is appended. A block is freed
 * when no segment refers to it and it is no longer the current block.
 */
#include "outq.h"

#include "store.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK_BYTES 16384
/* Segment slots kept while the queue is empty (more were needed by a long
 * multi-get or pipeline; they are freed once it has been sent). */
#define SEGS_KEEP 1024

struct outq_block {
    size_t len, cap;
    unsigned refs; /* segments pointing into it, +1 while current */
    char data[];
};

static void block_unref(struct outq_block *b)
{
    assert(b->refs > 0);
    if (--b->refs == 0)
        free(b);
}

void outq_init(struct outq *q, bool flat)
{
    memset(q, 0, sizeof(*q));
    q->flat = flat;
}

/* Makes room for one more segment at the tail. */
static int seg_reserve(struct outq *q)
{
    if (q->tail < q->cap)
        return 0;
    if (q->head > 0) {
        /* Slide pending segments to the front before growing. */
        memmove(q->seg, q->seg + q->head, (q->tail - q->head) * sizeof(*q->seg));
        q->tail -= q->head;
        q->head = 0;
        if (q->tail < q->cap)
            return 0;
    }
    size_t ncap = q->cap ? q->cap * 2 : 16;
    struct outq_seg *s = realloc(q->seg, ncap * sizeof(*s));
    if (s == NULL)
        return -ENOMEM;
    q->seg = s;
    q->cap = ncap;
    return 0;
}

int outq_text(struct outq *q, const void *p, size_t n)
{
    struct outq_block *b = q->cur;

    if (n == 0)
        return 0;
    if (q->flat) {
        int r = buf_append(&q->flatbuf, p, n);
        if (r == 0)
            q->bytes += n;
        return r;
    }
    if (seg_reserve(q) < 0)
        return -ENOMEM;
    if (b == NULL || b->cap - b->len < n) {
        size_t cap = n > BLOCK_BYTES ? n : BLOCK_BYTES;
        struct outq_block *nb = malloc(sizeof(*nb) + cap);
        if (nb == NULL)
            return -ENOMEM;
        nb->len = 0;
        nb->cap = cap;
        nb->refs = 1;
        if (b)
            block_unref(b);
        q->cur = b = nb;
    }
    char *dst = b->data + b->len;
    memcpy(dst, p, n);
    b->len += n;
    q->bytes += n;

    /* Extend the last segment when the new text directly follows it. */
    if (q->tail > q->head) {
        struct outq_seg *last = &q->seg[q->tail - 1];
        if (last->blk == b && last->p + last->n == dst) {
            last->n += n;
            return 0;
        }
    }
    q->seg[q->tail++] = (struct outq_seg){.p = dst, .n = n, .it = NULL, .blk = b};
    b->refs++;
    return 0;
}

int outq_str(struct outq *q, const char *s)
{
    return outq_text(q, s, strlen(s));
}

int outq_item(struct outq *q, struct item *it)
{
    size_t n = (size_t)it->nval + 2;

    if (q->flat)
        return outq_text(q, item_value(it), n);
    if (seg_reserve(q) < 0)
        return -ENOMEM;
    item_ref(it);
    q->seg[q->tail++] = (struct outq_seg){.p = item_value(it), .n = n, .it = it, .blk = NULL};
    q->bytes += n;
    return 0;
}

size_t outq_iov(const struct outq *q, struct iovec *iov, size_t max)
{
    size_t k = 0;

    if (q->flat) {
        if (q->bytes == 0 || max == 0)
            return 0;
        iov[0].iov_base = q->flatbuf.data + (q->flatbuf.len - q->bytes);
        iov[0].iov_len = q->bytes;
        return 1;
    }
    for (size_t i = q->head; i < q->tail && k < max; i++, k++) {
        iov[k].iov_base = (void *)q->seg[i].p;
        iov[k].iov_len = q->seg[i].n;
    }
    return k;
}

static void seg_release(struct outq_seg *s)
{
    if (s->it)
        item_unref(s->it);
    if (s->blk)
        block_unref(s->blk);
}

void outq_consume(struct outq *q, size_t n)
{
    assert(n <= q->bytes);
    q->bytes -= n;
    if (q->flat) {
        if (q->bytes == 0)
            q->flatbuf.len = 0;
        return;
    }
    while (n > 0) {
        struct outq_seg *s = &q->seg[q->head];
        if (n < s->n) {
            s->p += n;
            s->n -= n;
            return;
        }
        n -= s->n;
        seg_release(s);
        q->head++;
    }
    if (q->head == q->tail) {
        q->head = q->tail = 0;
        /* Empty: the current block's text is all sent, so it is refilled
         * from the start instead of being replaced by a new block once full
         * (one block per connection instead of one per BLOCK_BYTES of
         * replies, freed between stored items); one made larger for a long
         * text goes. A segment array grown for a large pipeline goes too. */
        if (q->cur && q->cur->refs == 1) {
            if (q->cur->cap > BLOCK_BYTES) {
                block_unref(q->cur);
                q->cur = NULL;
            } else {
                q->cur->len = 0;
            }
        }
        if (q->cap > SEGS_KEEP) {
            free(q->seg);
            q->seg = NULL;
            q->cap = 0;
        }
    }
}

void outq_free(struct outq *q)
{
    for (size_t i = q->head; i < q->tail; i++)
        seg_release(&q->seg[i]);
    free(q->seg);
    if (q->cur)
        block_unref(q->cur);
    buf_free(&q->flatbuf);
    memset(q, 0, sizeof(*q));
}
