/*
 * buf.h - a growable byte buffer.
 *
 * The buffer owns data; len bytes are in use out of cap. Functions that grow
 * it return 0 or -ENOMEM and leave the buffer unchanged on failure.
 */
#ifndef TPCKV_BUF_H
#define TPCKV_BUF_H

#include <stddef.h>

struct buf {
    char *data;
    size_t len;
    size_t cap;
};

#define BUF_INIT {NULL, 0, 0}

/* Makes room for at least extra more bytes after len. */
int buf_reserve(struct buf *b, size_t extra);
int buf_append(struct buf *b, const void *p, size_t n);
int buf_append_str(struct buf *b, const char *s);
int buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Drops the first n bytes, moving the rest to the front. */
void buf_consume(struct buf *b, size_t n);
void buf_free(struct buf *b);

#endif /* TPCKV_BUF_H */
